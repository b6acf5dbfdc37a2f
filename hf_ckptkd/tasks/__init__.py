"""Tasks: what differs between kinds of model and data, one module each.

A task says which models are its own, how the selector draws their probe, how its data is prepared
and its models built, and how they distil (see `base.Task`). The pipeline, the CLI, the trainer and
the selector ask `task_for(data)` (from a data configuration) or `task_of_model(model)` (from a
model), or the registry of probe sources, and never branch on the kind of data.

**A new task** is a new module here with a `Task` subclass, and one `register_task(...)` line below.
"""

from __future__ import annotations

from torch import nn

from ..config import ConfigError
from ..data.config import DataConfig, Splits
from ..selection.probe_sources import register_probe_source
from .base import KDTerm, RunData, Task
from .causal_lm import CausalLanguageModeling, perplexity
from .image_classification import ImageClassification
from .text_classification import TextClassification

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make `task` available by its name (`task:` in a recipe, --task), to `task_of_model`, and to the
    selector as the probe source of its models."""
    TASKS[task.name] = task
    register_probe_source(task)
    return task


register_task(ImageClassification())
register_task(TextClassification())
register_task(CausalLanguageModeling())


def task_for(data: DataConfig) -> Task:
    """The task a data configuration names (`task`), else the one its columns imply (text
    classification when it names a text column, else image classification)."""
    if data.task is not None:
        if data.task not in TASKS:
            raise ConfigError(f"task={data.task!r} is not one of {', '.join(TASKS)}")
        return TASKS[data.task]
    return next(task for task in TASKS.values() if task.inferred_from(data))


def task_of_model(model: nn.Module) -> Task:
    """The task a model serves: a causal LM, a text classifier or an image classifier. The tasks are asked
    newest first, so a task registered later can claim models that a more general one would take (image
    classification takes every model that reads no tokens)."""
    return next(task for task in reversed(TASKS.values()) if task.handles(model))


def prepare_run_data(data: DataConfig, splits: Splits, *, where: str) -> RunData:
    """The run's data as its task prepares it (transforms for images, tokenisation for text, blocks for LMs)."""
    return task_for(data).prepare(data, splits, where=where)


__all__ = ["CausalLanguageModeling", "ImageClassification", "KDTerm", "RunData", "TASKS", "Task", "TextClassification",
           "perplexity", "prepare_run_data", "register_task", "task_for", "task_of_model"]
