"""Images as models read them: which columns hold them, the transform that turns them into normalised
tensors (with train-time augmentation), and the collator that batches them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import ClassLabel, Dataset
from PIL import Image as PILImage
from torchvision.transforms import v2 as T

from ..config import DEFAULT_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN, MODEL_LABEL_COLUMN
from .loading import FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataError, resolve_label_column


@dataclass
class ImageColumns:
    """Names of a dataset's image and label columns."""

    image: str = DEFAULT_IMAGE_COLUMN
    label: str = DEFAULT_LABEL_COLUMN


def label_names(dataset: Dataset, columns: ImageColumns | None = None) -> list[str]:
    """The class names of the label column (a `ClassLabel`), or the sorted label values."""
    columns = columns or ImageColumns()
    check_image_columns(dataset, columns)
    feature = dataset.features[columns.label]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(v) for v in sorted(set(dataset[columns.label]))]


def check_image_columns(dataset: Dataset, columns: ImageColumns) -> None:
    missing = [c for c in (columns.image, columns.label) if c not in dataset.column_names]
    if missing:
        raise DataError(f"dataset has no column(s) {missing}; its columns are {dataset.column_names}. "
                        "Name the image and label columns (ImageColumns(image=..., label=...), "
                        "or --image_column / --label_column).")


@dataclass
class ImageTransformConfig:
    """How images are turned into tensors: size, channels, normalisation and train-time augmentation."""

    image_size: int = 28
    in_chans: int = 1
    mean: tuple[float, ...] = FASHION_MNIST_MEAN
    std: tuple[float, ...] = FASHION_MNIST_STD
    crop_padding: int = field(default=4, metadata={"help": "Random crop with this padding at train time (0 = off)."})
    hflip: bool = field(default=True, metadata={"help": "Random horizontal flip at train time."})


def build_image_transform(config: ImageTransformConfig, train: bool) -> T.Compose:
    """A PIL image → float tensor (C, H, W). Train: random crop with padding and flip; eval: deterministic."""
    mode = "L" if config.in_chans == 1 else "RGB"
    steps: list = [T.Lambda(lambda im: im.convert(mode)), T.PILToTensor(), T.Resize((config.image_size, config.image_size), antialias=True)]
    if train and config.crop_padding > 0:
        steps.append(T.RandomCrop(config.image_size, padding=config.crop_padding))
    if train and config.hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(config.mean, config.std)]
    return T.Compose(steps)


def is_random_transform(config: ImageTransformConfig, train: bool) -> bool:
    """Whether the transform gives different tensors for the same image on different calls."""
    return train and (config.crop_padding > 0 or config.hflip)


def with_image_transform(dataset: Dataset, transform: T.Compose, columns: ImageColumns | None = None) -> Dataset:
    """Apply `transform` lazily: each example becomes `pixel_values` (tensor) and `labels` (int)."""
    columns = columns or ImageColumns()
    if columns.image in dataset.column_names:
        columns = ImageColumns(columns.image, resolve_label_column(dataset, columns.label))
    check_image_columns(dataset, columns)

    def apply(batch):
        images = batch[columns.image]
        return {"pixel_values": [transform(_as_pil(im)) for im in images], MODEL_LABEL_COLUMN: batch[columns.label]}

    return dataset.with_transform(apply)


def _as_pil(image) -> PILImage.Image:
    if isinstance(image, PILImage.Image):
        return image
    return PILImage.fromarray(np.asarray(image))


def image_collator(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack `pixel_values` and `labels` into a batch; works for timm (via the adapter) and transformers."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        MODEL_LABEL_COLUMN: torch.tensor([int(e[MODEL_LABEL_COLUMN]) for e in examples], dtype=torch.long),
    }
