"""WordNet definitions by semantic category (`wordnet_glosses`), from Debian's wordnet-base."""

from __future__ import annotations

from collections import Counter

import pytest

from hf_ckptkd.data import DataError, load_dataset_split
from hf_ckptkd.data.wordnet import (TEST_PER_CLASS, TRAIN_PER_CLASS, WORDNET_CATEGORIES, WORDNET_DIR,
                                    WordnetMissingError, load_wordnet_glosses, read_definitions)

pytestmark = pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(),
                                reason="Debian's wordnet-base is not installed (make test installs it)")


@pytest.fixture(scope="module")
def splits():
    return load_wordnet_glosses("train"), load_wordnet_glosses("test")


def test_every_category_is_balanced_in_both_splits(splits):
    train, test = splits
    names = train.features["label"].names
    assert names == list(WORDNET_CATEGORIES.values()) and len(names) == 24
    assert Counter(train["label"]) == {label: TRAIN_PER_CLASS for label in range(24)}
    assert Counter(test["label"]) == {label: TEST_PER_CLASS for label in range(24)}


def test_texts_are_definitions_without_their_quoted_examples(splits):
    train, _ = splits
    assert all(text and '"' not in text and not text.endswith(";") for text in train["text"])
    by_category = read_definitions(WORDNET_DIR)
    animal = names_index(train)["noun.animal"]
    animals = {t for t, label in zip(train["text"], train["label"]) if label == animal}
    assert animals <= set(by_category[5])


def names_index(dataset):
    return {name: i for i, name in enumerate(dataset.features["label"].names)}


def test_the_splits_are_disjoint_synsets(splits):
    train, test = splits
    # A few synsets share a definition word for word; no synset is in both splits.
    shared = set(train["text"]) & set(test["text"])
    assert len(shared) < 0.005 * len(test)


def test_limit_keeps_an_equal_share_of_every_category_and_the_split_is_fixed():
    first = load_wordnet_glosses("train", limit=24 * 3)
    assert Counter(first["label"]) == {label: 3 for label in range(24)}
    assert first["text"] == load_wordnet_glosses("train", limit=24 * 3)["text"]
    assert load_dataset_split("wordnet_glosses", "test", 48)["text"] == load_wordnet_glosses("test", 48)["text"]


def test_a_missing_wordnet_folder_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(WordnetMissingError, match=rf"{tmp_path / 'data.noun'} does not exist.*apt-get install wordnet-base"):
        load_wordnet_glosses("train", root=tmp_path)
    monkeypatch.setattr("hf_ckptkd.data.wordnet.WORDNET_DIR", tmp_path)
    with pytest.raises(DataError, match="wordnet-base"):
        load_dataset_split("wordnet_glosses", "train", 24)


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="use 'train' or 'test'"):
        load_wordnet_glosses("validation")
