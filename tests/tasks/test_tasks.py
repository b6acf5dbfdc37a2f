"""The task layer: each task prepares its data, builds models for it and sets up the trainer."""

import pytest
import torch

from hf_ckptkd.config import ConfigError
from hf_ckptkd.data.loading import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from hf_ckptkd.data.config import DataConfig, cli_splits
from hf_ckptkd.models import label_names_of
from hf_ckptkd.metrics import compute_metrics
from hf_ckptkd.tasks import (
    TASKS,
    CausalLanguageModeling,
    ImageClassification,
    TextClassification,
    prepare_run_data,
    task_for,
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
