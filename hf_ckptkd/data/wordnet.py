"""Offline short-text classification from Debian's `wordnet-base`: a definition's semantic category.

WordNet files every synset under one of 45 lexicographer files (`noun.animal`, `noun.artifact`,
`verb.motion`, ...), and gives each synset a gloss: a one-sentence definition, often followed by
quoted examples. `load_wordnet_glosses(split)` turns the definitions of `WORDNET_CATEGORIES` (the 21
noun categories with at least 600 synsets and the 3 largest verb categories: 24 classes) into a
`datasets.Dataset` with `text` (the definition, without its examples, so the defined word rarely
appears) and `label` (a `ClassLabel` of the category names).

The split is fixed and balanced: within each category the synsets are shuffled with a seeded
generator; the first `TEST_PER_CLASS` are the test split and the next `TRAIN_PER_CLASS` the training
split. The examples are interleaved class by class (one of each category, then the next of each,
...), so a `limit` of k x 24 keeps k per category. Recipes name it `dataset: wordnet_glosses` and
tokenize it with the fortunes WordPiece (`tokenizer: fortunes`): both are English.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value

WORDNET_DIR = Path(os.environ.get("HF_CKPTKD_WORDNET_DIR", "/usr/share/wordnet"))
# Lexicographer file numbers (WordNet's lexnames(5WN)) of the categories kept, and their names.
WORDNET_CATEGORIES = {
    4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute", 8: "noun.body",
    9: "noun.cognition", 10: "noun.communication", 11: "noun.event", 13: "noun.food", 14: "noun.group",
    15: "noun.location", 17: "noun.object", 18: "noun.person", 19: "noun.phenomenon", 20: "noun.plant",
    21: "noun.possession", 22: "noun.process", 23: "noun.quantity", 26: "noun.state", 27: "noun.substance",
    28: "noun.time", 30: "verb.change", 32: "verb.communication", 35: "verb.contact",
}
TEST_PER_CLASS = 100
TRAIN_PER_CLASS = 500
SPLIT_SEED = 0


class WordnetMissingError(FileNotFoundError):
    """Debian's wordnet-base package is not installed."""


def read_definitions(root: Path) -> dict[int, list[str]]:
    """Each kept category's definitions, in file order: the gloss up to its first quoted example."""
    by_category: dict[int, list[str]] = {number: [] for number in WORDNET_CATEGORIES}
    for part in ("noun", "verb"):
        path = root / f"data.{part}"
        if not path.is_file():
            raise WordnetMissingError(
                f"{path} does not exist; install Debian's wordnet-base package (`apt-get install wordnet-base`), "
                "or point HF_CKPTKD_WORDNET_DIR at a folder holding WordNet 3.0's data.noun and data.verb")
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith("  "):  # the licence header
                    continue
                fields, _, gloss = line.partition(" | ")
                number = int(fields.split(" ", 2)[1])
                definition = gloss.split('; "', 1)[0].split(' "', 1)[0].strip().rstrip(";").strip()
                if number in by_category and definition:
                    by_category[number].append(definition)
    return by_category


def load_wordnet_glosses(split: str = "train", limit: int | None = None, root: str | Path | None = None) -> Dataset:
    """Semantic category of a WordNet definition: `text` and `label` (24 balanced classes)."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown wordnet_glosses split {split!r}; use 'train' or 'test'")
    by_category = read_definitions(Path(root) if root is not None else WORDNET_DIR)
    per_class = TEST_PER_CLASS if split == "test" else TRAIN_PER_CLASS
    columns: list[list[str]] = []
    for label, number in enumerate(WORDNET_CATEGORIES):
        definitions = by_category[number]
        order = np.random.default_rng([SPLIT_SEED, number]).permutation(len(definitions))
        start = 0 if split == "test" else TEST_PER_CLASS
        columns.append([definitions[i] for i in order[start:start + per_class]])
    texts = [column[rank] for rank in range(per_class) for column in columns]
    labels = [label for _ in range(per_class) for label in range(len(columns))]
    if limit is not None:
        texts, labels = texts[:limit], labels[:limit]
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(WORDNET_CATEGORIES.values()))})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features, split=split)


__all__ = ["WORDNET_CATEGORIES", "WORDNET_DIR", "WordnetMissingError", "load_wordnet_glosses", "read_definitions"]
