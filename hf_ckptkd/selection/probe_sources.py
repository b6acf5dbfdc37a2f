"""How the probe is drawn for each kind of model, chosen once from the first snapshot's model.

Three kinds: images (a label-stratified sample through the deterministic evaluation transform),
tokenized text for sequence classifiers (a label-stratified sample; X its bag of tokens), and
causal LMs (seeded segments of text, every position read; Y the next token, see `lm_probe`). A
`ProbeSource` draws a probe from a dataset (the probe set and the held-out probe alike), says what
labels the data has (checked against the snapshots before they run), gives next-token labels the
counts of the text they come from, and describes itself for the report. `selector` asks it and never branches on the kind of model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..data.loading import ImageColumns, ImageTransformConfig, build_image_transform, check_image_columns, resolve_label_column
from ..models.build import is_causal_lm, num_labels_of, unwrap
from .errors import ClassCountMismatchError, SelectionError
from .lm_probe import draw_lm_probe, next_token_counts
from .probe import (
    dataset_label_names,
    draw_probe,
    draw_text_probe,
    image_batches,
    is_text_model,
    labels_of,
    probe_transform_config,
)
from .settings import DEFAULT_PROBE_CONTEXT, SelectionSettings


@dataclass
class DrawnProbe:
    """A probe as model inputs (`batches`), the inputs X of the kernel, and the labels Y (one per example);
    for next tokens, `token_counts`: how often each token follows a position of the whole text drawn from."""

    batches: list[dict[str, torch.Tensor]]
    inputs: torch.Tensor
    labels: torch.Tensor
    token_counts: torch.Tensor | None = None


def _pad_token_id(model: nn.Module) -> int:
    # Any id will do: padded positions are masked and come after the position that is read.
    return getattr(unwrap(model).config, "pad_token_id", None) or 0


class _ClassifierProbe:
    """A label-stratified sample of a labelled dataset; the label space is the dataset's labels."""

    def __init__(self, settings: SelectionSettings, dataset):
        self.settings = settings
        self.label_column = resolve_label_column(dataset, settings.label_column)

    def label_space(self, dataset) -> tuple[list[str] | None, int]:
        """(the dataset's label names or None, the number of classes its labels span)."""
        labels = labels_of(dataset, self.label_column)
        self._source_size = int(labels.size)
        return dataset_label_names(dataset, self.label_column), int(labels.max()) + 1 if labels.size else 0

    def _label_column_of(self, dataset) -> str:
        return resolve_label_column(dataset, self.settings.label_column)

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        return {"source_size": self._source_size, "class_counts": torch.bincount(probe.labels).tolist(),
                "label_column": self.label_column, "image_column": self.settings.image_column}


class ImageProbe(_ClassifierProbe):
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
        columns = ImageColumns(image=self.settings.image_column, label=self._label_column_of(dataset))
        check_image_columns(dataset, columns)
        images, labels, _ = draw_probe(dataset, self.settings.max_probe_samples, self.settings.seed, self.transform,
                                       columns)
        return DrawnProbe(image_batches(images, self.settings.batch_size), images, labels)

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        config = self.transform_config
        return {**super().describe(probe), "transform": asdict(config) if config is not None else repr(self.transform)}


class TextProbe(_ClassifierProbe):
    """Tokenized texts of a sequence classifier, right-padded per batch; X is each text's bag of tokens."""

    def __init__(self, settings: SelectionSettings, dataset, first_model: nn.Module):
        super().__init__(settings, dataset)
        self.pad_token_id = _pad_token_id(first_model)

    def draw(self, dataset) -> DrawnProbe:
        s = self.settings
        return DrawnProbe(*draw_text_probe(dataset, s.max_probe_samples, s.seed, self._label_column_of(dataset),
                                           s.batch_size, self.pad_token_id))

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        return {**super().describe(probe), "transform": "tokenized text (bag of tokens for X)"}


class TokenProbe:
    """Seeded segments of tokenized text for a causal LM: every position of each, and the token after it."""

    def __init__(self, settings: SelectionSettings, first_model: nn.Module):
        self.settings = settings
        self.pad_token_id = _pad_token_id(first_model)
        self.vocabulary = num_labels_of(first_model)
        config = unwrap(first_model).config
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        context = settings.probe_context
        if context is None:  # the default segment, shortened for a model with fewer positions
            context = min(DEFAULT_PROBE_CONTEXT, positions or DEFAULT_PROBE_CONTEXT)
        elif positions is not None and isinstance(context, int) and context > positions:
            raise SelectionError(f"probe_context={context} is longer than the snapshots' {positions} positions; pass "
                                 f"probe_context <= {positions} (e.g. {min(positions, DEFAULT_PROBE_CONTEXT)})")
        self.context = context

    def label_space(self, dataset) -> tuple[list[str] | None, int]:
        # The labels are token ids, checked against the vocabulary when the probe is drawn.
        self._source_rows = len(dataset)
        return None, 0

    def draw(self, dataset) -> DrawnProbe:
        s = self.settings
        probe = DrawnProbe(*draw_lm_probe(dataset, s.max_probe_samples, s.seed, self.context, s.batch_size,
                                          self.pad_token_id))
        top = max(int(probe.labels.max()), max(int(b["input_ids"].max()) for b in probe.batches))
        if top >= self.vocabulary:
            raise ClassCountMismatchError(
                f"the probe holds token id {top} but the snapshots' vocabulary has {self.vocabulary} tokens; tokenize "
                "the probe text with the teachers' tokenizer (on the command line: --tokenizer, or leave it out to use "
                "the one saved in the snapshots)")
        probe.token_counts = next_token_counts(dataset, self.vocabulary)
        return probe

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        return {"labels": "next tokens", "source_rows": self._source_rows,
                "source_tokens": int(probe.token_counts.sum()) if probe.token_counts is not None else None,
                "segments": sum(len(b["input_ids"]) for b in probe.batches),
                "distinct_next_tokens": int(torch.unique(probe.labels).numel()),
                "probe_context": self.context, "vocabulary": self.vocabulary}


ProbeSource = ImageProbe | TextProbe | TokenProbe


def probe_source(settings: SelectionSettings, dataset, first_model: nn.Module, first_path) -> ProbeSource:
    """The probe source for the kind of the first snapshot's model (every snapshot must be of that kind)."""
    if is_causal_lm(first_model):
        return TokenProbe(settings, first_model)
    if is_text_model(first_model):
        return TextProbe(settings, dataset, first_model)
    return ImageProbe(settings, dataset, first_model, first_path)


__all__ = ["DrawnProbe", "ImageProbe", "ProbeSource", "TextProbe", "TokenProbe", "probe_source"]
