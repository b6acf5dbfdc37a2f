"""The probe set: a fixed, seeded, label-stratified sample of a dataset, turned into model inputs once.

Images get the deterministic evaluation transform (derived from what the first snapshot records,
`probe_transform_config`); tokenized text is padded per batch and summarised as a bag of tokens for
the input kernel (`draw_text_probe`). Every snapshot is then run over the same tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.loading import DataError
from ..data.images import ImageColumns, ImageTransformConfig, _as_pil, check_image_columns
from ..models.build import TimmForImageClassification, unwrap
from .errors import (
    EmptyProbeError,
    SingleClassProbeError,
)

Transform = Callable[[Any], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# The probe set


def stratified_probe_indices(labels: Sequence[int], size: int | None, seed: int) -> list[int]:
    """Indices of a seeded sample of `size` examples with every class in proportion (sorted).

    Each class gets its share of `size` by largest remainder, at least one example per class when
    `size` allows; within a class the examples are a seeded random draw. `size=None` or a size at
    least the dataset's keeps every example. The same labels, size and seed give the same indices.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if size is None or size >= n:
        return list(range(n))
    if size <= 0:
        return []
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(int)
    if size >= len(classes):
        take = np.maximum(take, 1)
    # Hand out what is left by largest remainder (ties to the larger class, then the lower label),
    # or take back the excess the minimum of one per class caused from the classes over their quota.
    order = sorted(range(len(classes)), key=lambda c: (-(quota[c] - take[c]), -counts[c], c))
    i = 0
    while take.sum() < size:
        c = order[i % len(order)]
        if take[c] < counts[c]:
            take[c] += 1
        i += 1
    while take.sum() > size:
        c = max((c for c in range(len(classes)) if take[c] > 1), key=lambda c: (take[c] - quota[c], take[c], -c))
        take[c] -= 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, t in zip(classes, take):
        members = np.flatnonzero(labels == c)
        chosen += rng.choice(members, size=int(t), replace=False).tolist()
    return sorted(chosen)


def labels_of(dataset, column: str) -> np.ndarray:
    """The label column as an int64 array (read from Arrow in one go for a `datasets.Dataset`)."""
    if hasattr(dataset, "with_format"):
        values = dataset.with_format("arrow")[column].to_numpy(zero_copy_only=False)
    else:
        values = np.asarray(list(dataset[column]))
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"the label column {column!r} must hold integer class indices, found {values.dtype} values such "
                        f"as {values[0]!r}; cast it to a ClassLabel (dataset.class_encode_column) first")
    return values.astype(np.int64)


def dataset_label_names(dataset, column: str) -> list[str] | None:
    feature = getattr(dataset, "features", {}).get(column) if hasattr(dataset, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def draw_probe(dataset, size: int | None, seed: int, transform: Transform,
               columns: ImageColumns) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The probe set as tensors: (inputs N × C × H × W, labels N, dataset indices)."""
    check_image_columns(dataset, columns)
    labels = labels_of(dataset, columns.label)
    indices = stratified_probe_indices(labels, size, seed)
    if not indices:
        raise EmptyProbeError(
            f"the probe set is empty (the dataset has {len(labels)} examples, max_probe_samples={size}); pass a "
            "dataset with examples of at least two classes and max_probe_samples > 0 (e.g. 2000)")
    probe_labels = torch.from_numpy(labels[indices])
    classes = torch.unique(probe_labels)
    if classes.numel() < 2:
        raise SingleClassProbeError(
            f"the probe set holds a single class (label {int(classes[0])}), so the label terms Ĩ(Y;·) are undefined; "
            "draw the probe from a dataset with at least two classes (the training split of the teachers' dataset)")
    images = dataset.select(indices)[columns.image] if hasattr(dataset, "select") else [dataset[i][columns.image]
                                                                                        for i in indices]
    inputs = torch.stack([transform(_as_pil(im)) for im in images])
    return inputs, probe_labels, indices


def probe_transform_config(model: nn.Module, snapshot_path: str | Path | None = None,
                           default: ImageTransformConfig | None = None) -> ImageTransformConfig:
    """The evaluation transform a model expects: what it records of its input, `default` for the rest.

    timm models record `pretrained_cfg` input_size (channels, height, width), mean and std (a mean
    or std whose length is not the number of channels is ignored); transformers vision configs
    record `num_channels` and `image_size`, and a `preprocessor_config.json` in the snapshot folder,
    if any, `image_mean` and `image_std`. Augmentation is off (the eval transform never uses it).
    """
    config = replace(default or ImageTransformConfig(), crop_padding=0, hflip=False)
    inner = unwrap(model)
    if isinstance(inner, TimmForImageClassification):
        cfg = getattr(inner.model, "pretrained_cfg", None) or {}
        input_size = cfg.get("input_size")
        if input_size and len(input_size) == 3:
            config.in_chans, config.image_size = int(input_size[0]), int(input_size[-1])
        mean, std = cfg.get("mean"), cfg.get("std")
    else:
        cfg = getattr(inner, "config", None)
        if getattr(cfg, "num_channels", None):
            config.in_chans = int(cfg.num_channels)
        size = getattr(cfg, "image_size", None)
        if size:
            config.image_size = int(size[-1] if isinstance(size, (list, tuple)) else size)
        mean = std = None
        processor = Path(snapshot_path) / "preprocessor_config.json" if snapshot_path is not None else None
        if processor is not None and processor.is_file():
            values = json.loads(processor.read_text())
            mean, std = values.get("image_mean"), values.get("image_std")
    if mean is not None and std is not None and len(mean) == config.in_chans and len(std) == config.in_chans:
        config.mean, config.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    elif len(config.mean) != config.in_chans:
        config.mean, config.std = (config.mean[0],) * config.in_chans, (config.std[0],) * config.in_chans
    return config


def image_batches(inputs: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [{"pixel_values": inputs[start:start + batch_size]} for start in range(0, inputs.shape[0], batch_size)]


TEXT_INPUT_BUCKETS = 1024


def draw_text_probe(dataset, size: int | None, seed: int, label_column: str, batch_size: int, pad_token_id: int,
                    ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """A tokenized text probe: (padded model-input batches, inputs X for the kernel, labels).

    X is each text's bag of tokens hashed into 1024 buckets: token ids carry no geometry, so the
    Gaussian kernel on the inputs compares which tokens two texts share.
    """
    if "input_ids" not in dataset.column_names:
        raise DataError(f"a text probe set must be tokenized (columns input_ids, attention_mask, {label_column}); its "
                        f"columns are {dataset.column_names}. Tokenize it with the teachers' tokenizer first.")
    labels = labels_of(dataset, label_column)
    indices = stratified_probe_indices(labels, size, seed)
    if not indices:
        raise EmptyProbeError(f"the probe set is empty (the dataset has {len(labels)} examples, max_probe_samples={size})")
    probe_labels = torch.from_numpy(labels[indices])
    if torch.unique(probe_labels).numel() < 2:
        raise SingleClassProbeError("the probe set holds a single class, so the label terms Ĩ(Y;·) are undefined; "
                                    "draw the probe from a dataset with at least two classes")
    rows = dataset.select(indices)
    ids = [torch.tensor(x, dtype=torch.long) for x in rows["input_ids"]]
    return padded_batches(ids, batch_size, pad_token_id), bag_of_tokens(ids), probe_labels


def bag_of_tokens(ids: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each token sequence as counts of its token ids hashed into `TEXT_INPUT_BUCKETS` buckets (N × 1024)."""
    bags = torch.zeros(len(ids), TEXT_INPUT_BUCKETS)
    for i, x in enumerate(ids):
        bags[i].index_add_(0, x % TEXT_INPUT_BUCKETS, torch.ones(len(x)))
    return bags


def padded_batches(ids: Sequence[torch.Tensor], batch_size: int, pad_token_id: int) -> list[dict[str, torch.Tensor]]:
    """Token sequences right-padded per batch, with the attention mask marking the real tokens."""
    batches = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True, padding_value=pad_token_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(x) for x in chunk], batch_first=True)
        batches.append({"input_ids": padded, "attention_mask": mask})
    return batches


__all__ = ["TEXT_INPUT_BUCKETS", "Transform", "bag_of_tokens", "dataset_label_names", "draw_probe", "draw_text_probe",
           "image_batches", "labels_of", "padded_batches", "probe_transform_config",
           "stratified_probe_indices"]
