"""Image classification: raw images transformed on the fly, timm or transformers vision models."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..data.loading import (
    ImageColumns,
    ImageTransformConfig,
    build_image_transform,
    default_normalisation,
    image_collator,
    is_random_transform,
    with_image_transform,
)
from ..data.config import DataConfig, Splits
from ..models.inputs import InputSpec
from ..models.build import build_model
from .base import RunData, Task


class ImageClassification(Task):
    name = "image-classification"

    def prepare(self, data: DataConfig, splits: Splits, *, where: str) -> RunData:
        # Fashion-MNIST's own statistics for its pixels, else 0.5 per channel, unless the data says otherwise.
        default_mean, default_std = default_normalisation(data.dataset, data.in_chans)
        transform = ImageTransformConfig(
            image_size=data.image_size, in_chans=data.in_chans, mean=tuple(data.mean) if data.mean else default_mean,
            std=tuple(data.std) if data.std else default_std, crop_padding=data.crop_padding, hflip=data.hflip)
        return RunData(self, splits.train, splits.validation, splits.test, splits.label_names, splits.label_column,
                       data, transform=transform)

    def model_ready(self, run: RunData) -> tuple[Any, Any, Any]:
        columns = ImageColumns(run.data.image_column, run.label_column)
        evaluation = build_image_transform(run.transform, train=False)
        return (with_image_transform(run.train, build_image_transform(run.transform, train=True), columns),
                with_image_transform(run.validation, evaluation, columns),
                with_image_transform(run.test, evaluation, columns))

    def collator(self, run: RunData):
        return image_collator

    def build_model(self, spec: str, run: RunData, model_kwargs: dict[str, Any]) -> nn.Module:
        t = run.transform
        return build_model(spec, len(run.label_names), label_names=run.label_names, in_chans=t.in_chans,
                           image_size=t.image_size, mean=t.mean, std=t.std, model_kwargs=model_kwargs)

    def trainer_kwargs(self, run: RunData, distilling: bool) -> dict[str, Any]:
        # What the student is really fed: teachers trained on other inputs are checked or remapped against it.
        t = run.transform
        spec = InputSpec(t.in_chans, (t.image_size, t.image_size), tuple(t.mean), tuple(t.std))
        return {"student_input": spec} if distilling else {}

    def cache_safe(self, run: RunData) -> bool:
        return not is_random_transform(run.transform, train=True)
