"""The offline text dataset and tokenizer built from Debian's `fortunes` package (/usr/share/games/fortunes)."""

import collections
import os
import time

import pytest
from datasets import ClassLabel, Value

from hf_ckptkd.data import fortunes
from hf_ckptkd.data import DataError, load_dataset_split, load_tokenizer
from hf_ckptkd.data.fortunes import (
    FORTUNES_DIR,
    FORTUNES_TOPICS,
    TOKENIZER_VOCAB,
    FortunesMissingError,
    fortunes_tokenizer,
    load_fortunes_topics,
    read_fortunes,
)

TOKENIZER_FOLDER = f"fortunes-wordpiece-{TOKENIZER_VOCAB}"


@pytest.fixture(scope="module")
def splits():
    return load_fortunes_topics("train"), load_fortunes_topics("test")


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    """A private hf_ckptkd cache ($HF_CKPTKD_CACHE) holding the trained tokenizer under tokenizers/."""
    return tmp_path_factory.mktemp("hf_ckptkd-cache")


@pytest.fixture(scope="module")
def trained(cache_root):
    """The tokenizer, trained once for the module: (tokenizer, its folder)."""
    return fortunes_tokenizer(cache_dir=cache_root / "tokenizers"), cache_root / "tokenizers" / TOKENIZER_FOLDER


# -- the topic dataset ----------------------------------------------------------------------------


def test_topics_have_text_and_a_topic_label(splits):
    assert len(FORTUNES_TOPICS) == 16
    for ds, split in zip(splits, ("train", "test")):
        assert set(ds.column_names) == {"text", "label"} and str(ds.split) == split
        assert ds.features["text"] == Value("string")
        assert isinstance(ds.features["label"], ClassLabel)
        assert ds.features["label"].names == list(FORTUNES_TOPICS)
        assert all(isinstance(t, str) and t.strip() == t and t for t in ds["text"])
    train, test = splits
    assert len(train) > 5000 and len(test) > 1000


def test_every_topic_is_in_both_splits_with_a_fifth_held_out(splits):
    train, test = splits
    n_train, n_test = collections.Counter(train["label"]), collections.Counter(test["label"])
    assert set(n_train) == set(n_test) == set(range(16))
    for label, topic in enumerate(FORTUNES_TOPICS):
        total = len(read_fortunes(FORTUNES_DIR / topic))
        assert n_train[label] + n_test[label] == total, topic
        assert n_test[label] / total == pytest.approx(0.2, abs=0.01), topic


def test_the_splits_partition_each_topic_file(splits):
    # Within a topic, train and test are disjoint draws that together give back the file's fortunes.
    columns = [(list(ds["text"]), list(ds["label"])) for ds in splits]
    for label, topic in enumerate(FORTUNES_TOPICS):
        a, b = (collections.Counter(t for t, y in zip(texts, labels) if y == label) for texts, labels in columns)
        assert a + b == collections.Counter(read_fortunes(FORTUNES_DIR / topic)), topic


def test_train_and_test_share_only_the_texts_the_files_repeat(splits):
    train, test = splits
    shared = set(train["text"]) & set(test["text"])
    # The package's files repeat six fortunes (five under two topics, one twice in men-women).
    assert len(shared) <= 6
    from hf_ckptkd.data.fortunes import FORTUNES_DIR, FORTUNES_TOPICS, read_fortunes

    occurrences = {}
    for topic in FORTUNES_TOPICS:
        for text in read_fortunes(FORTUNES_DIR / topic):
            occurrences[text] = occurrences.get(text, 0) + 1
    assert all(occurrences[t] > 1 for t in shared)


def test_the_split_is_deterministic_and_limit_keeps_every_topic(splits):
    train, test = splits
    again = load_fortunes_topics("train")
    assert again["text"] == train["text"] and again["label"] == train["label"]
    assert load_fortunes_topics("test")["text"] == test["text"]
    head = load_fortunes_topics("train", limit=400)
    assert head["text"] == train["text"][:400]  # the interleaving is seeded, a limit keeps its prefix
    assert set(head["label"]) == set(range(16))
    via_data = load_dataset_split("fortunes_topics", "test", limit=50)
    assert via_data["text"] == test["text"][:50] and via_data.features["label"].names == list(FORTUNES_TOPICS)


def test_a_missing_fortunes_folder_says_how_to_install(tmp_path, monkeypatch):
    missing = tmp_path / "no-fortunes"
    with pytest.raises(FortunesMissingError, match=rf"{missing / 'art'} does not exist.*apt-get install fortunes"):
        load_fortunes_topics("train", root=missing)
    assert issubclass(FortunesMissingError, FileNotFoundError)
    # A folder with some topics but not all: the first missing file is named.
    (tmp_path / "art").write_text((FORTUNES_DIR / "art").read_text(encoding="utf-8", errors="replace"))
    with pytest.raises(FortunesMissingError, match=rf"{tmp_path / 'computers'} does not exist"):
        load_fortunes_topics("test", root=tmp_path)
    # Through the built-in dataset registry it is a DataError, as the CLI expects.
    monkeypatch.setattr(fortunes, "FORTUNES_DIR", missing)
    with pytest.raises(DataError, match=rf"{missing / 'art'} does not exist.*apt-get install fortunes"):
        load_dataset_split("fortunes_topics", "train")


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown fortunes split 'validation'"):
        load_fortunes_topics("validation")


# -- the tokenizer --------------------------------------------------------------------------------


def test_tokenizer_is_trained_once_then_loaded(trained, cache_root, monkeypatch):
    tokenizer, folder = trained
    assert (folder / "tokenizer.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name != TOKENIZER_FOLDER]  # no temporary folder left
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_training(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again instead of loaded")

    monkeypatch.setattr(fortunes, "load_fortunes_topics", no_training)
    started = time.perf_counter()
    again = fortunes_tokenizer(cache_dir=cache_root / "tokenizers")
    assert time.perf_counter() - started < 5
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    text = "Computers are useless. They can only give you answers."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_tokenizer_vocabulary_and_special_tokens(trained):
    tokenizer, folder = trained
    assert tokenizer.vocab_size == TOKENIZER_VOCAB == 8000
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 0
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.unk_token, tokenizer.mask_token) == (
        "[CLS]", "[SEP]", "[UNK]", "[MASK]")
    ids = tokenizer("The Linux kernel")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and len(ids) > 2
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the linux kernel"  # lower-cased
    pair = tokenizer("a question", "an answer")["input_ids"]
    assert pair[0] == tokenizer.cls_token_id and pair.count(tokenizer.sep_token_id) == 2


def test_saved_tokenizer_loads_with_autotokenizer(trained):
    from transformers import AutoTokenizer

    tokenizer, folder = trained
    auto = AutoTokenizer.from_pretrained(str(folder))
    text = "Perl: the only language that looks the same before and after encryption."
    ids = auto(text)["input_ids"]
    assert ids == tokenizer(text)["input_ids"]
    assert ids[0] == auto.cls_token_id == tokenizer.cls_token_id and ids[-1] == auto.sep_token_id
    assert auto.vocab_size == 8000 and auto.pad_token == "[PAD]"
    batch = auto(["short", "a somewhat longer sentence"], padding=True)["input_ids"]
    assert len(batch[0]) == len(batch[1]) and batch[0][-1] == auto.pad_token_id


def test_load_tokenizer_fortunes_uses_the_cache_from_the_environment(trained, cache_root, monkeypatch):
    tokenizer, folder = trained
    monkeypatch.setenv("HF_CKPTKD_CACHE", str(cache_root))
    monkeypatch.setattr(fortunes, "load_fortunes_topics", lambda *a, **k: pytest.fail("trained again"))
    loaded = load_tokenizer("fortunes")
    assert loaded.vocab_size == 8000 and loaded.pad_token == "[PAD]"
    assert loaded("hello")["input_ids"] == tokenizer("hello")["input_ids"]
    assert sorted(os.listdir(cache_root / "tokenizers")) == [TOKENIZER_FOLDER]


def test_load_tokenizer_fortunes_without_the_package_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_CKPTKD_CACHE", str(tmp_path / "cache"))  # empty: it would have to train
    monkeypatch.setattr(fortunes, "FORTUNES_DIR", tmp_path / "no-fortunes")
    with pytest.raises(DataError, match=r"does not exist.*apt-get install fortunes"):
        load_tokenizer("fortunes")
    assert not (tmp_path / "cache" / "tokenizers" / TOKENIZER_FOLDER).exists()
