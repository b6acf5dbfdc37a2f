"""What every task provides, and `RunData`, a run's data as its task prepared it.

A task turns raw splits into what its models read, builds a model for them, collates batches and
says what the trainer must be told so that teachers and student agree (tokenizers for text, the
student's input normalisation for images). The pipeline and the CLI ask the task; they do not
branch on the kind of data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from ..data.loading import DataError, load_tokenizer
from ..data.config import DataConfig, Splits
from .losses import kd_per_row
from ..metrics import compute_metrics


@dataclass
class KDTerm:
    """A batch's soft-label term `T^2 * D(teacher, student)`, for the trainer to add to the student's own loss."""

    total: torch.Tensor             # summed over the batch's items (differentiable); the trainer divides it
    items: int                      # what it is summed over: a classifier's rows, a causal LM's labelled tokens
    logs: dict[str, torch.Tensor]   # per-item means of this batch for the logs: loss_kd, teacher_accuracy


@dataclass
class RunData:
    """A run's splits, ready for its task: raw images (transformed on the fly) or tokenized text."""

    task: "Task"
    train: Any
    validation: Any
    test: Any
    label_names: list[str]
    label_column: str            # the label column of train/validation/test as they are held here
    data: DataConfig
    transform: Any = None        # ImageTransformConfig, for images
    tokenizer: Any = None        # the tokenizer teachers and student share, for text

    @property
    def collator(self):
        return self.task.collator(self)

    def model_ready(self) -> tuple[Any, Any, Any]:
        """(train, validation, test) as the models read them (train augmented where the task augments)."""
        return self.task.model_ready(self)

    def build_model(self, spec: str, model_kwargs: dict[str, Any] | None = None) -> nn.Module:
        """A fresh model for this data: its label names, and its inputs' shape and normalisation or vocabulary."""
        return self.task.build_model(spec, self, dict(model_kwargs or {}))

    def trainer_kwargs(self, distilling: bool) -> dict[str, Any]:
        """What `CheckpointKDTrainer` needs beyond model, args and data, for this task (its metrics included)."""
        return {**self.task.metric_kwargs(), **self.task.trainer_kwargs(self, distilling)}


def shared_tokenizer(data: DataConfig, where: str):
    """The tokenizer `data` names, which teachers and student share; `where` names the source of `data` in errors."""
    try:
        return load_tokenizer(data.tokenizer)
    except (OSError, ValueError, DataError) as e:
        raise ConfigError(f"{where}: tokenizer {data.tokenizer!r} could not be loaded ({e})") from e


def tokenized_probe(dataset, data: DataConfig, tokenize):
    """`tokenize(dataset)` after checking that `dataset` has the text column; a `ConfigError` naming the flags."""
    if data.text_column not in dataset.column_names:
        raise ConfigError(f"--text_column {data.text_column!r} is not a column of {data.dataset} (its columns: "
                          f"{', '.join(dataset.column_names)}); name the column that holds the texts")
    try:
        return tokenize(dataset)
    except DataError as e:
        raise ConfigError(f"{e} (on the command line: --text_column / --label_column)") from None


class Task(ABC):
    """One kind of model and data: image classification, text classification, causal LM.

    A task says which models are its own (`handles`; the trainer, the selector and the checks of
    teachers against the student ask it), how the selector draws a probe for them (`probe_source`),
    how its data is prepared, collated and its models built, and how it distils. The methods below
    `trainer_kwargs` have the classifiers' behaviour; a task whose models predict something else (a
    causal LM predicts a token at every position) overrides them.
    """

    name: str
    model_description: str  # its models in words, for error messages: "an image classifier"
    labelled = True  # its data has a label column (a causal LM's corpus need not: the labels are the next tokens)
    # Whether the model predicts at every token (a causal LM: (batch, seq, vocab) logits, a loss per labelled
    # token) rather than once per example (a classifier: (batch, classes) logits, a loss per example).
    token_level: bool = False

    @abstractmethod
    def handles(self, model: nn.Module) -> bool:
        """Whether `model` is one of this task's models (exactly one task handles any model)."""

    def inferred_from(self, data: DataConfig) -> bool:
        """Whether a data configuration that names no `task` is this task's (by its columns)."""
        return False

    @abstractmethod
    def probe_source(self, settings, dataset, first_model: nn.Module, first_path):
        """The selector's `ProbeSource` for this task's models (`selection.probe_sources`)."""

    @abstractmethod
    def probe_dataset(self, dataset, data: DataConfig, tokenizer):
        """A raw split as `select_teachers` takes it for this task's models (the `hf-ckptkd select` command's
        probe): images as they are, text tokenized with the teachers' `tokenizer`."""

    @abstractmethod
    def prepare(self, data: DataConfig, splits: Splits, *, where: str) -> RunData:
        """The run's data for this task; `where` names the source of `data` in errors (a flag, a recipe)."""

    @abstractmethod
    def model_ready(self, run: RunData) -> tuple[Any, Any, Any]:
        ...

    @abstractmethod
    def collator(self, run: RunData):
        ...

    @abstractmethod
    def build_model(self, spec: str, run: RunData, model_kwargs: dict[str, Any]) -> nn.Module:
        ...

    @abstractmethod
    def trainer_kwargs(self, run: RunData, distilling: bool) -> dict[str, Any]:
        ...

    def cache_safe(self, run: RunData) -> bool:
        """Whether the training inputs are the same every epoch (so teacher logits can be cached)."""
        return True

    def metric_kwargs(self) -> dict[str, Any]:
        """The `Trainer` metric arguments that report this task's accuracy as `eval_accuracy`."""
        return {"compute_metrics": compute_metrics}

    def kd_term(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels, *, args) -> KDTerm:
        """The batch's soft-label term, summed over its rows; `args` is the run's `CheckpointKDConfig`."""
        total = kd_per_row(student_logits, teacher_logits, args.temperature, args.kd_loss, args.jsd_beta).sum()
        rows = student_logits.shape[0]
        logs = {"loss_kd": total.detach() / rows}
        if labels is not None:
            logs["teacher_accuracy"] = (teacher_logits.argmax(-1) == labels).float().mean()
        return KDTerm(total, rows, logs)

    def predictions(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, true) labels of a batch, flat, for accuracy: a classifier predicts one label per row."""
        return logits.argmax(-1).cpu().numpy(), labels.cpu().numpy()
