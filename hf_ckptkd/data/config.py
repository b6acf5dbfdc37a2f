"""`DataConfig`: what a run trains on, as one dataclass for the command line and for recipes.

The CLI parses it with `HfArgumentParser` (each field a flag: `--dataset`, `--text_column`, …) and
a recipe has the same keys at its top level (`Recipe` is a `DataConfig`). How the splits are then
drawn differs by purpose, so there are two functions:

- `cli_splits`: the first N examples of the training split and of the evaluation split, as
  transformers' example scripts take them (`--max_train_samples`, `--max_eval_samples`);
- `carved_splits`: the pipeline's protocol: a stratified validation set carved from the training
  split with a fixed seed (the selection probe and every choice use it), the training subset taken
  from the rest, the test split kept for the reported accuracy.

Either gives raw splits and label names; the task (`hf_ckptkd.tasks`) turns them into model inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset

from ..config import DEFAULT_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN, LABEL_COLUMN_ALIASES, ConfigError
from .loading import DataError, load_dataset_split, resolve_label_column, stratified_split, with_label_noise
from .images import ImageColumns, label_names


# Tokens a text is truncated to (a causal LM's corpus: the length of the blocks it is cut into).
DEFAULT_MAX_LENGTH = 128


@dataclass(kw_only=True)
class DataConfig:
    """The dataset, its columns, and how its examples become model inputs."""

    dataset: str = field(default="fashion_mnist", metadata={"help": "A built-in dataset (fashion_mnist, "
                         "fashion_mnist_rot40, fortunes_topics), a save_to_disk folder, or a datasets id/path."})
    dataset_config: str | None = field(default=None, metadata={"help": "A datasets config name (e.g. sst2 of "
                                                                       "nyu-mll/glue)."})
    train_split: str = field(default="train", metadata={"help": "The split trained on."})
    test_split: str = field(default="test", metadata={"help": "The split evaluated on.", "aliases": ["--eval_split"]})
    image_column: str = field(default=DEFAULT_IMAGE_COLUMN, metadata={"help": "The dataset's image column."})
    label_column: str = field(default=DEFAULT_LABEL_COLUMN, metadata={"help": "The dataset's label column (label and labels "
                                                                 "stand for each other)."})
    image_size: int = field(default=28, metadata={"help": "Square input size the images are resized to."})
    in_chans: int = field(default=1, metadata={"help": "Input channels (1 = grey, 3 = RGB)."})
    mean: list[float] | None = field(default=None, metadata={"help": "Per-channel mean (default: Fashion-MNIST's "
                                                                     "for its images, else 0.5)."})
    std: list[float] | None = field(default=None, metadata={"help": "Per-channel std (default as for --mean)."})
    crop_padding: int = field(default=4, metadata={"help": "Train-time random crop padding (0 = no crop)."})
    hflip: bool = field(default=True, metadata={"help": "Train-time random horizontal flip."})
    text_column: str | None = field(default=None, metadata={"help": "For text datasets: the text column (then "
                                                                    "--tokenizer is required)."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer folder, Hub id or 'fortunes' that "
                                                                  "teachers and student share (text only)."})
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={"help": "Truncate texts to this many tokens (causal-lm: the "
                                                               "block length the corpus is cut into)."})
    task: str | None = field(default=None, metadata={"help": "image-classification, text-classification or "
                             "causal-lm; default: text-classification when --text_column is set, else "
                             "image-classification."})

    @property
    def input_column(self) -> str:
        """The column holding what the model reads: the text column for text, else the image column."""
        return self.text_column or self.image_column


@dataclass
class Splits:
    """Raw splits (before any transform or tokenisation) and what their labels are called."""

    train: Dataset
    validation: Dataset
    test: Dataset
    label_names: list[str]
    label_column: str | None  # None for an unlabelled corpus (causal LMs)


def _label_column(config: DataConfig, dataset: Dataset, argument: str, labelled: bool) -> str | None:
    if not labelled and config.label_column not in dataset.column_names \
            and not set(LABEL_COLUMN_ALIASES) & set(dataset.column_names):
        return None  # a plain corpus, for a task that needs no labels (a language model)
    try:
        return resolve_label_column(dataset, config.label_column, argument)
    except DataError as e:
        raise ConfigError(f"dataset {config.dataset!r}: {e}") from None


def cli_splits(config: DataConfig, max_train_samples: int | None, max_eval_samples: int | None, *,
               labelled: bool = True) -> Splits:
    """The first `max_train_samples` of the training split; the evaluation split serves as validation and test.
    `labelled=False` (a task that needs no labels, `Task.labelled`) accepts a corpus without a label column."""
    train = load_dataset_split(config.dataset, config.train_split, max_train_samples, config_name=config.dataset_config)
    label = _label_column(config, train, "--label_column", labelled)
    evaluation = load_dataset_split(config.dataset, config.test_split, max_eval_samples,
                                    config_name=config.dataset_config)
    names = label_names(train, ImageColumns(config.input_column, label)) if label else []
    return Splits(train, evaluation, evaluation, names, label)


def carved_splits(config: DataConfig, *, train_samples: int | None, validation_samples: int,
                  test_samples: int | None, label_noise: float = 0.0, labelled: bool = True) -> Splits:
    """Validation carved (stratified, seed 0) from the whole training split, so it is the same whatever
    `train_samples` says; the training subset is then taken from the rest, and its labels noised if asked.
    `labelled` as in `cli_splits`."""
    full = load_dataset_split(config.dataset, config.train_split, config_name=config.dataset_config)
    label = _label_column(config, full, "label_column in the recipe", labelled)
    names = label_names(full, ImageColumns(config.input_column, label)) if label else []
    if label:
        rest, validation = stratified_split(full, validation_samples, seed=0, label_column=label)
    else:
        parts = full.train_test_split(test_size=validation_samples, seed=0)
        rest, validation = parts["train"], parts["test"]
    if train_samples is not None:
        if train_samples > len(rest):
            raise ConfigError(f"train_samples={train_samples} but only {len(rest)} training examples remain after "
                              f"carving {validation_samples} for validation")
        rest = rest.select(range(train_samples))
    if label_noise:
        rest = with_label_noise(rest, label, label_noise, len(names))
    test = load_dataset_split(config.dataset, config.test_split, test_samples, config_name=config.dataset_config)
    return Splits(rest, validation, test, names, label)


__all__ = ["DataConfig", "Splits", "carved_splits", "cli_splits"]
