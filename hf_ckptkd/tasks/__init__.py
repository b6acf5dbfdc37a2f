"""Tasks: what differs between kinds of model and data, one module each.

A new kind (say, causal language modelling) is one new module with a `Task` subclass and one line
in `TASKS`; the pipeline, the CLI and the trainer set-up ask `task_for(data)` and need no change.
"""

from __future__ import annotations

from ..data_config import DataConfig, Splits
from .base import RunData, Task
from .image_classification import ImageClassification
from .text_classification import TOKENIZED_LABEL_COLUMN, TextClassification

TASKS: dict[str, Task] = {task.name: task for task in (ImageClassification(), TextClassification())}


def task_for(data: DataConfig) -> Task:
    """The task a data configuration describes: text classification when it names a text column."""
    return TASKS["text-classification" if data.text_column else "image-classification"]


def prepare_run_data(data: DataConfig, splits: Splits, *, where: str) -> RunData:
    """The run's data as its task prepares it (transforms for images, tokenisation for text)."""
    return task_for(data).prepare(data, splits, where=where)


__all__ = ["ImageClassification", "RunData", "TASKS", "TOKENIZED_LABEL_COLUMN", "Task", "TextClassification",
           "prepare_run_data", "task_for"]
