"""Recipes: one YAML file describing a whole checkpoint-distillation experiment.

A recipe has the pipeline's own few keys at the top level and two sections, `teacher` and
`student`, whose keys are `CheckpointKDConfig` fields (plus `model` and `model_kwargs`).
Unknown keys and wrong types are errors that name the key and the nearest valid one. Every value
is checked when the recipe is loaded, before the first stage runs: the sections by building their
training configurations, the selection keys by building its settings, the model specs and the
task by looking them up, so a bad value costs seconds, not a trained teacher stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import DISTILLATION_FIELDS, CheckpointKDConfig, ConfigError
from ..data.config import DataConfig
from ..models.build import ModelSpec, ModelSpecError
from ..selection import SelectionError, SelectionSettings
from ..selection.online import keep_top_objective
from ..tasks import task_for

PIPELINE_STAGES = ("teachers", "select", "students", "report")


@dataclass
class ModelSection:
    """A model spec and the training settings (`CheckpointKDConfig` fields) used to train it."""

    model: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class Recipe(DataConfig):
    """The pipeline's own keys beside the data's (`DataConfig`: dataset, columns, image size,
    normalisation, text column, tokenizer …). See recipes/fashion_mnist.yaml for a commented example."""

    teacher: ModelSection
    student: ModelSection
    name: str = "experiment"
    train_samples: int | None = None      # a subset of the training split (None = all)
    validation_samples: int = 2000        # carved from the training data, stratified: selection probe, choices
    test_samples: int | None = None       # None = the whole test split; accuracy is reported on it
    seeds: int = 1                        # student seeds per cell
    seeds_if_close: int | None = None     # more seeds when the best other snapshot is within 2 SE of the final one
    full_ensemble: int = 2                # independently trained teachers in the "full ensemble"
    ensemble_k: int = 2                   # members of the selected snapshot ensemble
    oracle: bool = False                  # distil from every snapshot too
    best_of_last_epochs: int = 0          # also report each student's best test accuracy of its last N epochs
    label_noise: float = 0.0              # share of training labels replaced by another class (validation, test clean)
    selection: dict[str, Any] = field(default_factory=lambda: {"max_probe_samples": 2000})  # + SELECTION_KEYS
    source: str | None = None

    @property
    def fingerprint(self) -> str:
        """A hash of everything that changes results (not seeds/oracle, which only add runs)."""
        return self._hash_without("seeds", "seeds_if_close", "oracle", "source")

    @property
    def teacher_fingerprint(self) -> str:
        """A hash of what the teachers depend on: everything but the student, the selection and the seeds.

        Not the number of teachers either: teacher i is trained with seed i however many there are."""
        return self._hash_without("student", "selection", "full_ensemble", "ensemble_k", "seeds", "seeds_if_close",
                                  "oracle", "source")

    @property
    def no_teacher_fingerprint(self) -> str:
        """A hash of what a student trained without a teacher depends on: the data and the student's own settings."""
        student = self.to_dict()["student"]
        student["training"] = {k: v for k, v in student["training"].items() if k not in DISTILLATION_FIELDS}
        return self._hash_without("teacher", "selection", "full_ensemble", "ensemble_k", "seeds", "seeds_if_close",
                                  "oracle", "source",
                                  student=student)

    def _hash_without(self, *keys: str, **replaced: Any) -> str:
        payload = {k: v for k, v in {**self.to_dict(), **replaced}.items() if k not in keys}
        # Keys added after runs were made hash only when set, so those runs keep their fingerprints.
        payload = {k: v for k, v in payload.items() if not (k in _HASHED_WHEN_SET and not v)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_HASHED_WHEN_SET = ("best_of_last_epochs", "label_noise", "task")

# Resolved annotations (fields of classes using `from __future__ import annotations` hold strings).
_TOP_KEYS = {name: hint for name, hint in typing.get_type_hints(Recipe).items() if name not in ("teacher", "student")}
_CONFIG_FIELDS = {f.name: typing.get_type_hints(CheckpointKDConfig)[f.name]
                  for f in dataclasses.fields(CheckpointKDConfig) if f.init}
_SECTION_KEYS = ("model", "model_kwargs")
SELECTION_KEYS = ("objective", "max_probe_samples", "estimator", "temperature", "beta", "kappa", "seed",
                  "accuracy_margin")


def _nearest(key: str, valid) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, __import__("types").UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is Any:
        return True
    if origin in (list, dict):
        return isinstance(value, origin)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):  # e.g. optim: OptimizerNames
        return value in {member.value for member in annotation} or isinstance(value, annotation)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _check_type(where: str, key: str, value: Any, annotation: Any) -> None:
    if not _type_ok(value, annotation):
        shown = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", annotation)
        raise ConfigError(f"{where}: {key}={value!r} has the wrong type; expected {shown}")


def _section(where: str, values: Any) -> ModelSection:
    if not isinstance(values, dict) or "model" not in values:
        raise ConfigError(f"{where} must be a mapping with at least a 'model' key (e.g. model: timm:resnet18)")
    training = {}
    for key, value in values.items():
        if key in _SECTION_KEYS:
            continue
        if key not in _CONFIG_FIELDS:
            raise ConfigError(f"{where}: unknown key {key!r}{_nearest(key, [*_CONFIG_FIELDS, *_SECTION_KEYS])}")
        _check_type(where, key, value, _CONFIG_FIELDS[key])
        training[key] = value
    if not isinstance(values.get("model_kwargs", {}), dict):
        raise ConfigError(f"{where}: model_kwargs must be a mapping of config fields to values")
    return ModelSection(model=str(values["model"]), model_kwargs=dict(values.get("model_kwargs") or {}), training=training)


def recipe_from_dict(values: dict[str, Any], source: str | None = None) -> Recipe:
    where = source or "recipe"
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a YAML mapping of keys to values")
    for section in ("teacher", "student"):
        if section not in values:
            raise ConfigError(f"{where} has no {section!r} section (a mapping with 'model' and training settings)")
    top = {}
    for key, value in values.items():
        if key in ("teacher", "student"):
            continue
        if key not in _TOP_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}{_nearest(key, [*_TOP_KEYS, 'teacher', 'student'])}")
        _check_type(where, key, value, _TOP_KEYS[key])
        top[key] = value
    for key in top.get("selection", {}) or {}:
        if key not in SELECTION_KEYS:
            raise ConfigError(f"{where}: unknown selection key {key!r}{_nearest(key, SELECTION_KEYS)}")
    recipe = Recipe(teacher=_section(f"{where} teacher", values["teacher"]),
                    student=_section(f"{where} student", values["student"]), **top)
    recipe.source = source
    if recipe.seeds < 1 or recipe.full_ensemble < 1 or recipe.ensemble_k < 1:
        raise ConfigError(f"{where}: seeds, full_ensemble and ensemble_k must be at least 1")
    if recipe.seeds_if_close is not None and recipe.seeds_if_close <= recipe.seeds:
        raise ConfigError(f"{where}: seeds_if_close={recipe.seeds_if_close} must be above seeds ({recipe.seeds}), "
                          "e.g. 5 (or leave it out)")
    if not 0 <= recipe.label_noise < 1:
        raise ConfigError(f"{where}: label_noise={recipe.label_noise} must lie in [0, 1) (the share of training "
                          "labels replaced by another class, e.g. 0.2)")
    if recipe.best_of_last_epochs < 0:
        raise ConfigError(f"{where}: best_of_last_epochs={recipe.best_of_last_epochs} must be 0 (off) or a number "
                          "of final epochs, e.g. 10")
    check_recipe(recipe, where)
    return recipe


def section_config(training: dict[str, Any], output_dir: str | Path, seed: int, **fixed) -> CheckpointKDConfig:
    """The training configuration of a recipe section, as the pipeline runs it (`fixed` wins over the section)."""
    values = {"report_to": "none", "disable_tqdm": True, "logging_steps": 50, "save_strategy": "no",
              **training, **fixed}
    values.update(output_dir=str(output_dir), seed=seed, data_seed=seed, remove_unused_columns=False)
    return CheckpointKDConfig(**values)


def check_recipe(recipe: Recipe, where: str) -> None:
    """Every value of a recipe that can be checked without data: a `ConfigError` naming the key."""
    try:
        task_for(recipe)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    # Built where nothing is written: the checks only read the path.
    nowhere = Path(tempfile.gettempdir()) / "hf-ckptkd-recipe-check"
    for name, section in (("teacher", recipe.teacher), ("student", recipe.student)):
        try:
            ModelSpec.parse(section.model).check()
        except ModelSpecError as e:
            raise ConfigError(f"{where} {name}: model: {e}") from None
        # The student's teachers are chosen by the pipeline; a weight per teacher needs as many of them.
        teachers = {"teachers": ["teacher"] * len(section.training["teacher_weights"])} \
            if name == "student" and section.training.get("teacher_weights") else {}
        try:
            config = section_config(section.training, nowhere, seed=0, **teachers)
            if config.snapshot_keep_top is not None:
                keep_top_objective(config.snapshot_score_objective)
        except (ValueError, SelectionError) as e:  # ConfigError, and TrainingArguments' own ValueErrors
            raise ConfigError(f"{where} {name}: {e}") from None
    try:
        for k in (1, recipe.ensemble_k):
            SelectionSettings.of(**recipe.selection, k=k)
    except SelectionError as e:
        raise ConfigError(f"{where}: selection: {e}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist; the recipes that ship are in recipes/")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML ({e})") from e
    return recipe_from_dict(values, source=str(path))
