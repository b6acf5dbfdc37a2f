"""Tasks: what differs between kinds of model and data, one module each.

A new kind is one new module with a `Task` subclass and one line in `TASKS`; the pipeline, the CLI
and the trainer ask `task_for(data)` (from a data configuration) or `task_of_model(model)` (from a
model) and need no change.
"""

from __future__ import annotations

from torch import nn

from ..config import ConfigError
from ..data.config import DataConfig, Splits
from ..models.build import is_causal_lm, is_text_model
from .base import KDTerm, RunData, Task
from .causal_lm import CausalLanguageModeling, perplexity
from .image_classification import ImageClassification
from .text_classification import TOKENIZED_LABEL_COLUMN, TextClassification

TASKS: dict[str, Task] = {task.name: task for task in (ImageClassification(), TextClassification(),
                                                       CausalLanguageModeling())}


def task_for(data: DataConfig) -> Task:
    """The task a data configuration names (`task`), else text classification when it names a text column,
    else image classification."""
    if data.task is not None:
        if data.task not in TASKS:
            raise ConfigError(f"task={data.task!r} is not one of {', '.join(TASKS)}")
        return TASKS[data.task]
    return TASKS["text-classification" if data.text_column else "image-classification"]


def task_of_model(model: nn.Module) -> Task:
    """The task a model serves: a causal LM, a text classifier or an image classifier."""
    if is_causal_lm(model):
        return TASKS["causal-lm"]
    return TASKS["text-classification" if is_text_model(model) else "image-classification"]


def prepare_run_data(data: DataConfig, splits: Splits, *, where: str) -> RunData:
    """The run's data as its task prepares it (transforms for images, tokenisation for text, blocks for LMs)."""
    return task_for(data).prepare(data, splits, where=where)


__all__ = ["CausalLanguageModeling", "ImageClassification", "KDTerm", "RunData", "TASKS", "TOKENIZED_LABEL_COLUMN",
           "Task", "TextClassification", "perplexity", "prepare_run_data", "task_for", "task_of_model"]
