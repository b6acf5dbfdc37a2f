"""Built-in datasets, image transforms and the collator shared by both model families.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package (IDX files under
/usr/share/datasets/fashion-mnist), so the default path needs no network. Any other image
classification `datasets.Dataset` works the same way once its image and label columns are named.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import struct
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset, load_from_disk
from transformers import AutoTokenizer

from ..config import DEFAULT_LABEL_COLUMN, LABEL_COLUMN_ALIASES, MODEL_LABEL_COLUMN
from .fortunes import FortunesMissingError, fortunes_tokenizer, load_fortunes_topics
from .wordnet import WordnetMissingError, load_wordnet_glosses
from ..references import is_hub_reference, parse_hub_reference

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path(os.environ.get("HF_CKPTKD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
_FILES = {"train": "train", "test": "t10k"}


class DataError(ValueError):
    """A dataset is missing, truncated or lacks the columns a model needs."""


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST format: big-endian header, then uint8 data)."""
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable gzip file ({e}); reinstall it with "
                        "`apt-get install --reinstall dataset-fashion-mnist`") from e
    header = 4 + 4 * dims
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        raise DataError(f"{path} is not an IDX file (bad header); reinstall it with "
                        "`apt-get install --reinstall dataset-fashion-mnist`")
    shape = struct.unpack(">" + "I" * dims, raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path} is truncated: {len(raw) - header} of {expected} bytes; reinstall it with "
                        "`apt-get install --reinstall dataset-fashion-mnist`")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _fashion_mnist_features() -> Features:
    return Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_LABELS)})


def _fashion_mnist_arrays(split: str, data_dir: str | Path | None) -> tuple[np.ndarray, np.ndarray] | Path:
    """(images N × 28 × 28, labels N) from Debian's IDX files, or the path of the missing file."""
    if split not in _FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    root = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    images_path = root / f"{_FILES[split]}-images-idx3-ubyte.gz"
    labels_path = root / f"{_FILES[split]}-labels-idx1-ubyte.gz"
    try:
        images = _read_idx(images_path, 2051, 3)
        labels = _read_idx(labels_path, 2049, 1)
    except FileNotFoundError as missing:
        return Path(missing.args[0])
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; "
                        "reinstall with `apt-get install --reinstall dataset-fashion-mnist`")
    return images, labels


def load_fashion_mnist(split: str = "train", limit: int | None = None, data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST as a `datasets.Dataset` with `image` (PIL) and `label` (ClassLabel).

    Reads Debian's IDX files; when the package is not installed, falls back to the Hub copy
    (`zalando-datasets/fashion_mnist`) and says so. `limit` keeps the first N examples.
    """
    arrays = _fashion_mnist_arrays(split, data_dir)
    if isinstance(arrays, Path):
        return _load_fashion_mnist_from_hub(split, limit, arrays)
    images, labels = arrays
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    # Arrays go in as-is; datasets encodes them as PNG images once, when the table is built.
    return Dataset.from_dict({"image": list(images), "label": labels.astype(np.int64)},
                             features=_fashion_mnist_features(), split=split)


ROTATIONS = (0, 90, 180, 270)


def load_fashion_mnist_rotations(split: str = "train", limit: int | None = None,
                                 data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST garment × rotation: 40 classes made from the real images (`fashion_mnist_rot40`).

    Each image of the split is turned counter-clockwise by 0, 90, 180 or 270 degrees, drawn with a
    generator seeded by the split (train 0, test 1), and labelled `4 * garment + rotation index`
    ("Sandal @90", ...): one example per source image, so the splits keep Fashion-MNIST's sizes and
    the classes are balanced up to the draw. Classes share structure (the four rotations of a
    garment, and similar garments at one rotation), which gives soft labels something to say.
    Horizontal flips swap 90 and 270 degrees: train on it with `hflip: false`.
    """
    arrays = _fashion_mnist_arrays(split, data_dir)
    if isinstance(arrays, Path):
        source = _load_fashion_mnist_from_hub(split, None, arrays)
        arrays = (np.stack([np.asarray(im) for im in source["image"]]), np.asarray(source["label"]))
    images, labels = arrays
    turns = np.random.default_rng(0 if split == "train" else 1).integers(len(ROTATIONS), size=len(labels))
    if limit is not None:
        images, labels, turns = images[:limit], labels[:limit], turns[:limit]
    rotated = [np.ascontiguousarray(np.rot90(im, k=int(t))) for im, t in zip(images, turns)]
    names = [f"{garment} @{angle}" for garment in FASHION_MNIST_LABELS for angle in ROTATIONS]
    return Dataset.from_dict({"image": rotated, "label": (labels.astype(np.int64) * len(ROTATIONS) + turns)},
                             features=Features({"image": Image(), "label": ClassLabel(names=names)}), split=split)


def _load_fashion_mnist_from_hub(split: str, limit: int | None, missing: Path) -> Dataset:
    logger.warning("%s not found (Debian package dataset-fashion-mnist is not installed); "
                   "loading %s from the Hub instead", missing, FASHION_MNIST_HUB_ID)
    try:
        ds = load_dataset(FASHION_MNIST_HUB_ID, split=split)
    except Exception as e:  # offline, no cache: the user needs one of the two sources
        raise DataError(f"Fashion-MNIST is not available: {missing} does not exist and the Hub dataset "
                        f"{FASHION_MNIST_HUB_ID} could not be loaded ({type(e).__name__}). Install it with "
                        "`apt-get install dataset-fashion-mnist` or allow network access.") from e
    return ds.select(range(min(limit, len(ds)))) if limit is not None else ds


def _fortunes_topics(split: str, limit: int | None = None) -> Dataset:
    try:
        return load_fortunes_topics(split, limit)
    except (FortunesMissingError, ValueError) as e:
        raise DataError(str(e)) from None


def _wordnet_glosses(split: str, limit: int | None = None) -> Dataset:
    try:
        return load_wordnet_glosses(split, limit)
    except (WordnetMissingError, ValueError) as e:
        raise DataError(str(e)) from None


# The datasets that need no network: name -> loader(split, limit).
BUILTIN_DATASETS = {
    "fashion_mnist": load_fashion_mnist,
    "fashion_mnist_rot40": load_fashion_mnist_rotations,
    "fortunes_topics": _fortunes_topics,
    "wordnet_glosses": _wordnet_glosses,
}
# Built-in image datasets made from Fashion-MNIST's pixels, which are normalised with its statistics.
FASHION_MNIST_PIXELS = ("fashion_mnist", "fashion_mnist_rot40")


def default_normalisation(dataset: str, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for a dataset: Fashion-MNIST's statistics for its own pixels, else 0.5 per channel."""
    if dataset in FASHION_MNIST_PIXELS and in_chans == 1:
        return FASHION_MNIST_MEAN, FASHION_MNIST_STD
    return (0.5,) * in_chans, (0.5,) * in_chans


def load_tokenizer(name_or_path: str):
    """`fortunes` (built in: WordPiece trained on the fortunes training split), a folder (e.g. a text
    teacher's snapshot, which holds its tokenizer), a Hub id, or a Hub teacher reference
    `owner/name@revision[:subfolder]` (a pushed teacher's tag, or a Trainer checkpoint's folder, so
    the tokenizer is exactly the one saved with that teacher)."""
    if name_or_path == "fortunes":
        try:
            return fortunes_tokenizer()
        except FortunesMissingError as e:
            raise DataError(str(e)) from None
    if not Path(name_or_path).exists() and is_hub_reference(name_or_path):
        repo_id, revision, subfolder = parse_hub_reference(name_or_path)
        return AutoTokenizer.from_pretrained(repo_id, revision=revision, subfolder=subfolder or "")
    return AutoTokenizer.from_pretrained(name_or_path)


@functools.lru_cache(maxsize=8)
def _builtin_split(name: str, split: str, limit: int | None) -> Dataset:
    # Building a built-in split encodes every image once (17 s for Fashion-MNIST's 60,000); a process that
    # loads it again (a study's cells, a test session) gets the same immutable table.
    return BUILTIN_DATASETS[name](split, limit)


def load_dataset_split(name_or_path: str, split: str, limit: int | None = None, config_name: str | None = None) -> Dataset:
    """A built-in dataset (`BUILTIN_DATASETS`, offline), a folder written by `save_to_disk`, or anything
    `datasets.load_dataset` accepts."""
    if name_or_path in BUILTIN_DATASETS:
        return _builtin_split(name_or_path, split, limit)
    saved = _load_saved_split(name_or_path, split, config_name)
    if saved is not None:
        return saved.select(range(min(limit, len(saved)))) if limit is not None else saved
    try:
        ds = load_dataset(name_or_path, config_name, split=split)
    except Exception as e:
        raise DataError(f"could not load dataset {name_or_path!r} split {split!r}: {e}. Use 'fashion_mnist' "
                        "or a `datasets` id / local path that `datasets.load_dataset` accepts.") from e
    if isinstance(ds, DatasetDict):  # pragma: no cover - load_dataset with split returns a Dataset
        ds = ds[split]
    return ds.select(range(min(limit, len(ds)))) if limit is not None else ds


# What `save_to_disk` leaves in a folder: a DatasetDict writes dataset_dict.json beside one folder per
# split, a single Dataset its state.json beside the arrow files. `load_dataset` refuses both.
SAVED_DATASET_DICT_FILE, SAVED_DATASET_FILE = "dataset_dict.json", "state.json"
# The split a single saved Dataset stands for: it holds the training examples.
SAVED_DATASET_SPLIT = "train"


def _load_saved_split(name_or_path: str, split: str, config_name: str | None) -> Dataset | None:
    """The split `split` of a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or None
    when `name_or_path` is no such folder.

    A DatasetDict folder gives each of its splits; a single Dataset folder is the training split
    (`SAVED_DATASET_SPLIT`), so asking it for another split is a `DataError` that says how to save one.
    """
    folder = Path(name_or_path).expanduser()
    kind = "dict" if (folder / SAVED_DATASET_DICT_FILE).is_file() else \
        "dataset" if (folder / SAVED_DATASET_FILE).is_file() else None
    if kind is None:
        return None
    if config_name is not None:
        raise DataError(f"{folder} is a dataset saved with save_to_disk, which has no configurations; drop "
                        f"dataset_config={config_name!r}")
    try:
        saved = load_from_disk(str(folder))
    except Exception as e:  # a half-written or damaged folder: the user needs to know which one
        raise DataError(f"{folder} looks like a dataset saved with save_to_disk but could not be loaded "
                        f"({type(e).__name__}: {e}); save it again") from e
    if isinstance(saved, DatasetDict):
        if split not in saved:
            raise DataError(f"{folder} (a DatasetDict saved with save_to_disk) has no split {split!r}; its splits are "
                            f"{sorted(saved)}. Name one of them (train_split / test_split in a recipe, --split or "
                            "--eval_split on the command line)")
        return saved[split]
    if split != SAVED_DATASET_SPLIT:
        raise DataError(f"{folder} holds a single Dataset saved with save_to_disk, which serves as the "
                        f"{SAVED_DATASET_SPLIT!r} split only, so it has no split {split!r}. Save a DatasetDict with a "
                        f"{split!r} split instead (DatasetDict({{'train': ..., {split!r}: ...}}).save_to_disk(...)), or "
                        f"ask for the {SAVED_DATASET_SPLIT!r} split")
    return saved


def tokenize_text_dataset(dataset: Dataset, tokenizer, text_column: str, label_column: str = DEFAULT_LABEL_COLUMN,
                          max_length: int = 128) -> Dataset:
    """Tokenize `text_column` (truncating to `max_length`); the result has the model's inputs and `labels`."""
    if text_column in dataset.column_names:
        label_column = resolve_label_column(dataset, label_column)
    missing = [c for c in (text_column, label_column) if c not in dataset.column_names]
    if missing:
        raise DataError(f"dataset has no column(s) {missing}; its columns are {dataset.column_names}. "
                        "Name the text and label columns (text_column / label_column in the recipe).")
    keep = {label_column}
    tokenized = dataset.map(lambda batch: tokenizer(batch[text_column], truncation=True, max_length=max_length),
                            batched=True, remove_columns=[c for c in dataset.column_names if c not in keep])
    return tokenized.rename_column(label_column, MODEL_LABEL_COLUMN) if label_column != MODEL_LABEL_COLUMN else tokenized


def lm_blocks(dataset: Dataset, tokenizer, text_column: str, block_size: int) -> Dataset:
    """Causal-LM rows from a text column: every text tokenized, all of them concatenated in order and
    cut into blocks of `block_size` tokens (`input_ids`, and an all-ones `attention_mask`).

    Texts keep the special tokens the tokenizer adds (a BERT-style tokenizer wraps each in
    [CLS] … [SEP]); a tokenizer that adds none but has an EOS token gets one after each text, so
    texts stay separated. The tokens after the last whole block are dropped, as transformers'
    `run_clm` example does.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise DataError(f"block_size must be an integer >= 2 (a block holds a context and the token after it), got "
                        f"{block_size!r} (on the command line: --max_length)")
    if text_column not in dataset.column_names:
        raise DataError(f"dataset has no text column {text_column!r}; its columns are {dataset.column_names}. Name the "
                        "column that holds the texts (text_column, or --text_column on the command line)")
    encoded = tokenizer(list(dataset[text_column]), verbose=False)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and encoded and not (encoded[0] and encoded[0][-1] == eos):
        encoded = [ids + [eos] for ids in encoded]
    tokens = np.fromiter((t for ids in encoded for t in ids), dtype=np.int64)
    n_blocks = tokens.size // block_size
    if n_blocks == 0:
        raise DataError(f"the {len(dataset)} texts hold {tokens.size} tokens, fewer than one block of block_size="
                        f"{block_size}; give more text or a smaller block_size (--max_length)")
    blocks = tokens[:n_blocks * block_size].reshape(n_blocks, block_size)
    return Dataset.from_dict({"input_ids": blocks.tolist(), "attention_mask": np.ones_like(blocks).tolist()})


def stratified_split(dataset: Dataset, fraction: float, seed: int, label_column: str = DEFAULT_LABEL_COLUMN) -> tuple[Dataset, Dataset]:
    """Carve a stratified held-out part (e.g. a validation split) from `dataset`: (rest, held_out)."""
    if not isinstance(dataset.features[label_column], ClassLabel):  # stratifying needs a ClassLabel column
        dataset = dataset.class_encode_column(label_column)
    return _stratified_split(dataset, fraction, seed, label_column)


_STRATIFIED: dict[tuple, tuple[Dataset, Dataset]] = {}


def _stratified_split(dataset: Dataset, fraction: float, seed: int, label_column: str) -> tuple[Dataset, Dataset]:
    # Stratifying 60,000 examples takes about as long as loading them; the same carve of the same table
    # (datasets' fingerprint names its content and history) is reused within a process.
    key = (dataset._fingerprint, len(dataset), fraction, seed, label_column)
    if key not in _STRATIFIED:
        if len(_STRATIFIED) >= 8:
            _STRATIFIED.pop(next(iter(_STRATIFIED)))
        parts = dataset.train_test_split(test_size=fraction, seed=seed, stratify_by_column=label_column)
        _STRATIFIED[key] = parts["train"], parts["test"]
    return _STRATIFIED[key]


def with_label_noise(dataset, column: str, rate: float, num_classes: int, seed: int = 0):
    """Symmetric label noise: a seeded `rate` share of the examples get a different class, drawn uniformly.

    The pipeline corrupts only the training examples (the validation split is carved before, the test split is
    another split), so choices and reported accuracy stay on clean labels.
    """
    if not 0 <= rate < 1:
        raise DataError(f"label_noise={rate} must lie in [0, 1): the share of training labels replaced")
    rng = np.random.default_rng(seed)
    noisy = rng.permutation(len(dataset))[:int(round(rate * len(dataset)))]
    offsets = dict(zip(noisy.tolist(), rng.integers(1, num_classes, size=len(noisy)).tolist()))

    def corrupt(example, index):
        if index in offsets:
            example[column] = (example[column] + offsets[index]) % num_classes
        return example

    return dataset.map(corrupt, with_indices=True, desc="label noise")


def resolve_label_column(dataset, column: str, argument: str = "label_column") -> str:
    """The dataset's label column: `column`, or its alias (`label` <-> `labels`) when only that one exists.

    A dataset tokenised by `tokenize_text_dataset` carries `labels`, a raw one usually `label`; either
    name works wherever the package takes a dataset. Anything else missing is a `DataError` that
    names the column, the dataset's columns and the argument that sets it.
    """
    names = list(getattr(dataset, "column_names", None) or [])
    if column in names:
        return column
    if column in LABEL_COLUMN_ALIASES:
        alias = next(a for a in LABEL_COLUMN_ALIASES if a != column)
        if alias in names:
            return alias
    raise DataError(f"the dataset has no label column {column!r}; its columns are {names}. Name the column that "
                    f"holds the integer class labels with {argument}")
