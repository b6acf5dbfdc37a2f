"""Offline English text from Debian's `fortunes` package: a topic-classification set and a tokenizer.

The package installs some 40 topic files under /usr/share/games/fortunes, each a list of quips
separated by lines holding a single `%`. `load_fortunes_topics(split)` turns the files named in
`FORTUNES_TOPICS` into a `datasets.Dataset` with `text` and `label` (a `ClassLabel` of the topic
names): every fortune is one example, its topic the file it came from. The split is fixed: within
each topic the fortunes are shuffled with a seeded generator and the first 20 % are the test split,
so every topic is in both in proportion and no entry of a file is in both. (The files themselves
repeat six fortunes, five of them under two topics: those six texts occur in both splits.)

`fortunes_tokenizer()` is a WordPiece tokenizer (8,000 tokens, lower-cased, BERT's special
tokens) trained with `tokenizers` on the training split only, saved once under
`~/.cache/hf_ckptkd/tokenizers/` (or `$HF_CKPTKD_CACHE`) and loaded from there afterwards as a
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained(folder)` reads it too. Recipes and the
CLI name it `tokenizer: fortunes`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

FORTUNES_DIR = Path(os.environ.get("HF_CKPTKD_FORTUNES_DIR", "/usr/share/games/fortunes"))
# Topic files with at least 200 fortunes whose name says what they are about (the catch-all files
# `fortunes`, `cookie`, `miscellaneous`, `wisdom`, `platitudes`, `zippy` and `people` are left out).
FORTUNES_TOPICS = ("art", "computers", "definitions", "drugs", "education", "food", "law", "linux", "literature",
                   "men-women", "perl", "politics", "science", "songs-poems", "startrek", "work")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
TOKENIZER_NAME = "fortunes"
TOKENIZER_VOCAB = 8000
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class FortunesMissingError(FileNotFoundError):
    """Debian's fortunes package is not installed (or a topic file is missing)."""


def read_fortunes(path: Path) -> list[str]:
    """The fortunes of one topic file: the `%`-separated entries, stripped, empty ones dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [entry.strip() for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE) if entry.strip()]


def _topic_path(topic: str, root: Path) -> Path:
    path = root / topic
    if not path.is_file():
        raise FortunesMissingError(
            f"{path} does not exist; install Debian's fortunes package (`apt-get install fortunes`), "
            "or point HF_CKPTKD_FORTUNES_DIR at a folder of fortune files")
    return path


def load_fortunes_topics(split: str = "train", limit: int | None = None, root: str | Path | None = None,
                         topics: tuple[str, ...] = FORTUNES_TOPICS) -> Dataset:
    """Topic classification of fortunes: `text` and `label` (the topic file's name as a ClassLabel)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown fortunes split {split!r}; use 'train' or 'test'")
    root = Path(root) if root is not None else FORTUNES_DIR
    texts: list[str] = []
    labels: list[int] = []
    for label, topic in enumerate(topics):
        entries = read_fortunes(_topic_path(topic, root))
        order = np.random.default_rng([SPLIT_SEED, label]).permutation(len(entries))
        n_test = int(round(TEST_FRACTION * len(entries)))
        keep = order[:n_test] if split == "test" else order[n_test:]
        texts += [entries[i] for i in sorted(keep)]
        labels += [label] * len(keep)
    # Interleave the topics (seeded), so that a `limit` keeps every topic.
    order = np.random.default_rng([SPLIT_SEED, 1 if split == "test" else 0]).permutation(len(texts))
    if limit is not None:
        order = order[:limit]
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(topics))})
    return Dataset.from_dict({"text": [texts[i] for i in order], "label": [labels[i] for i in order]},
                             features=features, split=split)


def _cache_dir() -> Path:
    return Path(os.environ.get("HF_CKPTKD_CACHE", Path.home() / ".cache" / "hf_ckptkd")) / "tokenizers"


def fortunes_tokenizer(cache_dir: str | Path | None = None, vocab_size: int = TOKENIZER_VOCAB):
    """The WordPiece tokenizer of the fortunes training split (trained once, then loaded from the cache);
    `vocab_size` tokens (the recipes' `tokenizer: fortunes` is the default 8,000)."""
    folder = Path(cache_dir) if cache_dir is not None else _cache_dir()
    folder = folder / f"fortunes-wordpiece-{vocab_size}"
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL)
    tok.train_from_iterator(load_fortunes_topics("train")["text"], trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]")
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    wrapped.save_pretrained(str(tmp))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)  # atomic: a concurrent first use keeps whichever copy landed first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


__all__ = ["FORTUNES_DIR", "FORTUNES_TOPICS", "FortunesMissingError", "fortunes_tokenizer", "load_fortunes_topics",
           "read_fortunes"]
