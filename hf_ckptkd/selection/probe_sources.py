"""How the probe is drawn: by the task of the first snapshot's model, from a registry.

Each task (`hf_ckptkd.tasks`: images, tokenized text for sequence classifiers, causal LMs) owns its
probe source and registers here with `register_probe_source`; `probe_source` asks the registered
tasks which one handles the first snapshot's model, so the selector never branches on the kind of
model. A `ProbeSource` draws a probe from a dataset (the probe set and the held-out probe alike),
says what labels the data has (checked against the snapshots before they run), gives next-token
labels (a causal LM's: seeded segments of text, every position read, see `lm_probe`) the counts of
the text they come from, and describes itself for the report. `ClassifierProbe` is what the
classifiers' sources share: a label-stratified sample whose label space is the dataset's labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..data.loading import resolve_label_column
from ..models.build import unwrap
from .errors import SelectionError
from .probe import dataset_label_names, labels_of
from .settings import SelectionSettings


@dataclass
class DrawnProbe:
    """A probe as model inputs (`batches`), the inputs X of the kernel, and the labels Y (one per example);
    for next tokens, `token_counts`: how often each token follows a position of the whole text drawn from."""

    batches: list[dict[str, torch.Tensor]]
    inputs: torch.Tensor
    labels: torch.Tensor
    token_counts: torch.Tensor | None = None


class ProbeSource(Protocol):
    """What the selector asks of a task's probe (its labels are next tokens when `draw` gives `token_counts`)."""

    def label_space(self, dataset) -> tuple[list[str] | None, int]:
        """(the dataset's label names or None, the number of classes its labels span)."""

    def draw(self, dataset) -> DrawnProbe:
        """The probe drawn from `dataset` as model inputs, kernel inputs and labels."""

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        """What the report records of the probe."""


class ProbeKind(Protocol):
    """What a task registers: which models it handles, and the probe source for them."""

    name: str

    def handles(self, model: nn.Module) -> bool:
        ...

    def probe_source(self, settings: SelectionSettings, dataset, first_model: nn.Module, first_path) -> ProbeSource:
        ...


_KINDS: dict[str, ProbeKind] = {}


def register_probe_source(kind: ProbeKind) -> None:
    """Let `kind` draw the probe for the models it handles (`hf_ckptkd.tasks` registers every task)."""
    _KINDS[kind.name] = kind


def probe_source(settings: SelectionSettings, dataset, first_model: nn.Module, first_path) -> ProbeSource:
    """The probe source of the task that handles the first snapshot's model (every snapshot must be of its kind);
    asked newest first, as `tasks.task_of_model` asks them."""
    for kind in reversed(_KINDS.values()):
        if kind.handles(first_model):
            return kind.probe_source(settings, dataset, first_model, first_path)
    raise SelectionError(f"no task draws a probe for {type(unwrap(first_model)).__name__} (the tasks: "
                         f"{', '.join(_KINDS) or 'none registered; import hf_ckptkd'})")


def pad_token_id(model: nn.Module) -> int:
    """The id that pads a text probe's batches: any id will do, padded positions are masked and come after
    the position that is read."""
    return getattr(unwrap(model).config, "pad_token_id", None) or 0


class ClassifierProbe:
    """A label-stratified sample of a labelled dataset; the label space is the dataset's labels."""

    def __init__(self, settings: SelectionSettings, dataset):
        self.settings = settings
        self.label_column = resolve_label_column(dataset, settings.label_column)

    def label_space(self, dataset) -> tuple[list[str] | None, int]:
        labels = labels_of(dataset, self.label_column)
        self._source_size = int(labels.size)
        return dataset_label_names(dataset, self.label_column), int(labels.max()) + 1 if labels.size else 0

    def label_column_of(self, dataset) -> str:
        return resolve_label_column(dataset, self.settings.label_column)

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        return {"source_size": self._source_size, "class_counts": torch.bincount(probe.labels).tolist(),
                "label_column": self.label_column, "image_column": self.settings.image_column}


__all__ = ["ClassifierProbe", "DrawnProbe", "ProbeKind", "ProbeSource", "pad_token_id", "probe_source",
           "register_probe_source"]
