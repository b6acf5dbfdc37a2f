"""One DataConfig for the command line and recipes, and the two ways of drawing splits."""

import dataclasses

import pytest
from transformers import HfArgumentParser

from hf_ckptkd.cli.main import DataArguments
from hf_ckptkd.config import ConfigError
from hf_ckptkd.data.config import DataConfig, carved_splits, cli_splits
from hf_ckptkd.pipeline.recipe import Recipe, load_recipe


def test_recipes_and_the_command_line_share_every_data_field():
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    assert data_fields <= {f.name for f in dataclasses.fields(Recipe)}
    assert data_fields <= {f.name for f in dataclasses.fields(DataArguments)}
    recipe = load_recipe("recipes/fashion_mnist.yaml")
    assert isinstance(recipe, DataConfig) and recipe.dataset == "fashion_mnist"


def test_eval_split_is_the_command_line_name_of_the_test_split():
    (args,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        ["--model", "timm:resnet18", "--eval_split", "validation", "--mean", "0.5", "--std", "0.25"])
    assert args.test_split == "validation" and args.mean == [0.5] and args.std == [0.25]


def test_cli_splits_take_the_first_examples_and_evaluate_on_one_split():
    splits = cli_splits(DataConfig(), 20, 10)
    assert len(splits.train) == 20 and len(splits.validation) == 10 and splits.test is splits.validation
    assert splits.label_column == "label" and len(splits.label_names) == 10


def test_carved_validation_does_not_depend_on_the_training_subset():
    a = carved_splits(DataConfig(), train_samples=50, validation_samples=100, test_samples=10)
    b = carved_splits(DataConfig(), train_samples=80, validation_samples=100, test_samples=10)
    assert len(a.train) == 50 and len(b.train) == 80 and len(a.test) == 10
    assert a.validation["label"] == b.validation["label"]
    assert sorted(set(a.validation["label"])) == list(range(10))  # stratified: every class


def test_a_training_subset_larger_than_what_remains_is_refused():
    with pytest.raises(ConfigError, match="train_samples=60000 but only 59900"):
        carved_splits(DataConfig(), train_samples=60000, validation_samples=100, test_samples=10)
