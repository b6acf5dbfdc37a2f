"""Image classification: raw images transformed on the fly, timm or transformers vision models."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from torch import nn

from ..config import ConfigError
from ..data.config import DataConfig, Splits
from ..data.loading import default_normalisation
from ..data.images import (
    ImageColumns,
    ImageTransformConfig,
    build_image_transform,
    check_image_columns,
    image_collator,
    is_random_transform,
    with_image_transform,
)
from ..models.build import build_model, is_text_model
from ..models.inputs import InputSpec
from ..selection.probe import draw_probe, image_batches, probe_transform_config
from ..selection.probe_sources import ClassifierProbe, DrawnProbe
from ..selection.settings import SelectionSettings
from .base import RunData, Task


class ImageProbe(ClassifierProbe):
    """Images through the evaluation transform: the one given, or the one the first model records."""

    def __init__(self, settings: SelectionSettings, dataset, first_model: nn.Module, first_path):
        super().__init__(settings, dataset)
        transform = settings.transform
        self.transform_config = None
        if transform is None:
            self.transform_config = probe_transform_config(first_model, first_path, settings.default_transform)
            transform = build_image_transform(self.transform_config, train=False)
        elif isinstance(transform, ImageTransformConfig):
            self.transform_config, transform = transform, build_image_transform(transform, train=False)
        self.transform = transform

    def draw(self, dataset) -> DrawnProbe:
        columns = ImageColumns(image=self.settings.image_column, label=self.label_column_of(dataset))
        check_image_columns(dataset, columns)
        images, labels, _ = draw_probe(dataset, self.settings.max_probe_samples, self.settings.seed, self.transform,
                                       columns)
        return DrawnProbe(image_batches(images, self.settings.batch_size), images, labels)

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        config = self.transform_config
        return {**super().describe(probe), "transform": asdict(config) if config is not None else repr(self.transform)}


class ImageClassification(Task):
    name = "image-classification"
    model_description = "an image classifier"

    def handles(self, model: nn.Module) -> bool:
        return not is_text_model(model)

    def inferred_from(self, data: DataConfig) -> bool:
        return not data.text_column  # a run without a text column trains on images

    def probe_source(self, settings: SelectionSettings, dataset, first_model: nn.Module, first_path) -> ImageProbe:
        return ImageProbe(settings, dataset, first_model, first_path)

    def probe_dataset(self, dataset, data: DataConfig, tokenizer):
        if data.image_column not in dataset.column_names:
            texts = [c for c, f in dataset.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
            hint = (f"; for text teachers add --text_column {texts[0]} (and --tokenizer unless the snapshots hold "
                    "theirs)") if texts else ""
            raise ConfigError(f"--image_column {data.image_column!r} is not a column of {data.dataset} (its columns: "
                              f"{', '.join(dataset.column_names)}); name the image column with --image_column{hint}")
        return dataset

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
