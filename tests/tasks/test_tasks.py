"""The task layer: each task prepares its data, builds models for it and sets up the trainer."""

import pytest
import torch
from torch import nn

from hf_ckptkd.config import ConfigError
from hf_ckptkd.data.loading import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from hf_ckptkd.data.config import DataConfig, cli_splits
from hf_ckptkd.models import build_causal_lm, build_model, label_names_of
from hf_ckptkd.metrics import compute_metrics
from hf_ckptkd.selection import SelectionSettings
from hf_ckptkd.selection.probe_sources import _KINDS, probe_source
from hf_ckptkd.tasks import (
    TASKS,
    CausalLanguageModeling,
    ImageClassification,
    TextClassification,
    prepare_run_data,
    register_task,
    task_for,
    task_of_model,
)
from text_data import write_tiny_text_set


def test_the_data_configuration_names_its_task():
    assert isinstance(task_for(DataConfig()), ImageClassification)
    assert isinstance(task_for(DataConfig(text_column="sentence", tokenizer="fortunes")), TextClassification)
    assert isinstance(task_for(DataConfig(text_column="text", tokenizer="fortunes", task="causal-lm")),
                      CausalLanguageModeling)
    assert set(TASKS) == {"image-classification", "text-classification", "causal-lm"}
    with pytest.raises(ConfigError, match="task='translation' is not one of"):
        task_for(DataConfig(task="translation"))


def test_image_run_data_feeds_normalised_tensors_and_builds_a_model_that_records_them():
    data = DataConfig(crop_padding=0, hflip=False)
    run = prepare_run_data(data, cli_splits(data, 32, 16), where="test")
    assert run.transform.mean == FASHION_MNIST_MEAN and run.transform.std == FASHION_MNIST_STD
    train, validation, test = run.model_ready()
    batch = run.collator([train[0], train[1]])
    assert batch["pixel_values"].shape == (2, 1, 28, 28) and batch["labels"].dtype == torch.long
    # Normalised with Fashion-MNIST's statistics: a black background pixel becomes -mean/std.
    black = -FASHION_MNIST_MEAN[0] / FASHION_MNIST_STD[0]
    assert batch["pixel_values"].min().item() == pytest.approx(black, abs=1e-4)
    model = run.build_model("timm:cifar_resnet8")
    assert label_names_of(model) == run.label_names and len(run.label_names) == 10
    assert model.model.pretrained_cfg["mean"] == FASHION_MNIST_MEAN
    assert run.trainer_kwargs(distilling=False) == {"compute_metrics": compute_metrics}  # accuracy, top-5
    spec = run.trainer_kwargs(distilling=True)["student_input"]
    assert spec.in_chans == 1 and spec.image_size == (28, 28) and spec.mean == FASHION_MNIST_MEAN
    assert run.task.cache_safe(run)  # no crop, no flip: the same tensors every epoch
    augmented = prepare_run_data(DataConfig(), cli_splits(DataConfig(), 8, 8), where="test")
    assert not augmented.task.cache_safe(augmented)


def test_text_run_data_is_tokenized_once_and_its_models_take_the_vocabulary(tmp_path):
    write_tiny_text_set(tmp_path)
    data = DataConfig(dataset=str(tmp_path / "data"), text_column="sentence", tokenizer=str(tmp_path / "tokenizer"))
    run = prepare_run_data(data, cli_splits(data, 40, 20), where="test")
    assert run.label_column == "labels" and "input_ids" in run.train.column_names
    batch = run.collator([run.train[0], run.train[1]])
    assert batch["input_ids"].shape[0] == 2
    model = run.build_model("transformers:BertConfig", {"hidden_size": 16, "num_hidden_layers": 1,
                                                         "num_attention_heads": 2, "intermediate_size": 32})
    assert model.config.vocab_size == len(run.tokenizer)
    kwargs = run.trainer_kwargs(distilling=True)
    assert kwargs["processing_class"] is run.tokenizer and kwargs["teacher_tokenizer"] is run.tokenizer


def test_a_text_dataset_without_a_tokenizer_names_what_to_pass(tmp_path):
    write_tiny_text_set(tmp_path)
    data = DataConfig(dataset=str(tmp_path / "data"), text_column="sentence")
    with pytest.raises(ConfigError, match="--text_column needs --tokenizer"):
        prepare_run_data(data, cli_splits(data, 8, 8), where="the command line")


def test_each_model_has_exactly_one_task_and_its_probe_source():
    image = build_model("timm:test_resnet", 3)
    text = build_model("transformers:BertConfig", 3, model_kwargs={"vocab_size": 50, "hidden_size": 8,
                                                                   "num_hidden_layers": 1, "num_attention_heads": 2,
                                                                   "intermediate_size": 8})
    lm = build_causal_lm("transformers:GPT2Config", vocab_size=50, model_kwargs={"n_layer": 1, "n_embd": 8, "n_head": 2})
    for model, task in ((image, ImageClassification), (text, TextClassification), (lm, CausalLanguageModeling)):
        assert isinstance(task_of_model(model), task)
        assert [t.name for t in TASKS.values() if t.handles(model)] == [task.name]
    source = probe_source(SelectionSettings(), None, lm, None)
    assert type(source).__name__ == "TokenProbe"


def test_a_new_task_is_one_class_and_one_registration():
    """What ARCHITECTURE.md shows: a Task subclass, `register_task`, and the trainer's and the selector's
    lookups find it; nothing else changes."""
    class Tabular(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

    class TabularClassification(ImageClassification):
        name = "tabular-classification"
        model_description = "a tabular classifier"

        def handles(self, model):
            return isinstance(model, Tabular)

        def probe_source(self, settings, dataset, first_model, first_path):
            return ("tabular probe", settings.max_probe_samples)

    assert isinstance(task_of_model(Tabular()), ImageClassification)  # before: the general image task takes it
    register_task(TabularClassification())
    try:
        assert task_of_model(Tabular()).name == "tabular-classification"
        assert task_for(DataConfig(task="tabular-classification")).model_description == "a tabular classifier"
        assert probe_source(SelectionSettings(max_probe_samples=7), None, Tabular(), None) == ("tabular probe", 7)
        assert task_of_model(build_model("timm:test_resnet", 3)).name == "image-classification"
    finally:
        TASKS.pop("tabular-classification")
        _KINDS.pop("tabular-classification")
