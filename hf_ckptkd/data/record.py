"""What a teacher was trained on, as its snapshots record it, and how to name that dataset publicly.

A run that knows its data (the pipeline, `hf-ckptkd train-teacher`, or a script that passes
`dataset_record=` to `CheckpointKDTrainer` / `SnapshotCallback`) writes a record like

    {"name": "fashion_mnist", "train": {"split": "train", "num_examples": 4000},
     "eval": {"split": "train", "num_examples": 2000, "held_out": true}, "image_column": "image", ...}

into every snapshot's `snapshot.json` (key `dataset`). Model cards take the dataset's identity,
split and size from it; a run that records nothing gets a card that says nothing about its data.
The built-in datasets are named by what they really are (Debian packages read offline), not by the
package's short names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loading import FASHION_MNIST_HUB_ID


@dataclass(frozen=True)
class DatasetIdentity:
    """A dataset as a model card names it."""

    display: str  # what a reader is told, e.g. "Fashion-MNIST (Debian dataset-fashion-mnist)"
    model_index_type: str  # model-index `dataset.type`: a Hub dataset id where there is one
    hub_ids: tuple[str, ...] = ()  # the card's `datasets:` metadata (Hub datasets it was made from)
    loadable: bool = True  # whether a card reader can load it by `name` with hf-ckptkd (not a local folder)


BUILTIN_IDENTITIES = {
    "fashion_mnist": DatasetIdentity("Fashion-MNIST (Debian dataset-fashion-mnist)", FASHION_MNIST_HUB_ID,
                                     (FASHION_MNIST_HUB_ID,)),
    "fashion_mnist_rot40": DatasetIdentity(
        "Fashion-MNIST garment × rotation, 40 classes (hf-ckptkd's `fashion_mnist_rot40`, made from Fashion-MNIST, "
        "Debian dataset-fashion-mnist)", "fashion_mnist_rot40", (FASHION_MNIST_HUB_ID,)),
    "fortunes_topics": DatasetIdentity(
        "fortunes topics, 16 classes (hf-ckptkd's `fortunes_topics`, made from Debian's fortunes package)",
        "fortunes_topics"),
}


def dataset_record(name: str, *, train_split: str, train_examples: int, config: str | None = None,
                   eval_split: str | None = None, eval_examples: int | None = None, eval_held_out: bool = False,
                   test_split: str | None = None,
                   image_column: str | None = None, label_column: str | None = None, text_column: str | None = None,
                   tokenizer: str | None = None, max_length: int | None = None,
                   label_noise: float | None = None) -> dict[str, Any]:
    """The record of a run's data that snapshots keep (see the module docstring); None values are left out.

    `eval_held_out`: the evaluation examples were carved from `eval_split` (the pipeline's validation
    set, held out of the training split), not a split of their own. `test_split`: the dataset's
    test split, where a student distilled from the teacher is evaluated.
    """
    record: dict[str, Any] = {"name": str(name)}
    if Path(str(name)).expanduser().exists() and name not in BUILTIN_IDENTITIES:
        record["local"] = True  # a folder on the training machine: nothing a card reader can load
    if config:
        record["config"] = config
    record["train"] = {"split": train_split, "num_examples": int(train_examples)}
    if eval_split is not None and eval_examples is not None:
        record["eval"] = {"split": eval_split, "num_examples": int(eval_examples),
                          **({"held_out": True} if eval_held_out else {})}
    extra = {"test_split": test_split, "image_column": image_column if not text_column else None, "label_column": label_column,
             "text_column": text_column, "tokenizer": tokenizer, "max_length": max_length if text_column else None,
             "label_noise": label_noise or None}
    record.update({k: v for k, v in extra.items() if v is not None})
    return record


def identity(name: str, record: dict[str, Any] | None = None) -> DatasetIdentity:
    """How a card names the dataset `name` (a built-in, a Hub id, or a local folder the record marks)."""
    if name in BUILTIN_IDENTITIES:
        return BUILTIN_IDENTITIES[name]
    if (record or {}).get("local"):
        return DatasetIdentity(f"a local dataset folder (`{Path(name).name}`) on the machine that trained it", "local",
                               loadable=False)
    config = (record or {}).get("config")
    shown = f"`{name}`" + (f" (config `{config}`)" if config else "")
    return DatasetIdentity(f"[{shown}](https://huggingface.co/datasets/{name})", name, (name,))


def split_phrase(part: dict[str, Any] | None) -> str | None:
    """'4,000 examples of the train split', or None when the record holds no such part."""
    if not part:
        return None
    count = part.get("num_examples")
    split = part.get("split")
    if part.get("held_out"):
        return f"{count:,} examples held out from the {split} split (not trained on)"
    return f"{count:,} examples of the {split} split" if count is not None else f"the {split} split"


__all__ = ["BUILTIN_IDENTITIES", "DatasetIdentity", "dataset_record", "identity",
           "split_phrase"]
