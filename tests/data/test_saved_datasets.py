"""Folders written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk` work wherever a dataset path does."""

import pytest
import yaml
from datasets import DatasetDict

from hf_ckptkd.cli.main import main
from hf_ckptkd.data import DataError, load_dataset_split, load_fashion_mnist
from hf_ckptkd.snapshots import SnapshotIndex


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DatasetDict folder (train + test) and a single-Dataset folder, both of real Fashion-MNIST images."""
    root = tmp_path_factory.mktemp("saved")
    train, test = load_fashion_mnist("train", limit=400), load_fashion_mnist("test", limit=100)
    DatasetDict({"train": train, "test": test}).save_to_disk(root / "dict")
    train.save_to_disk(root / "single")
    return root


def test_dataset_dict_folder_gives_its_splits(saved):
    train = load_dataset_split(str(saved / "dict"), "train")
    test = load_dataset_split(str(saved / "dict"), "test", limit=30)
    assert (len(train), len(test)) == (400, 30)
    assert train[0]["label"] == load_fashion_mnist("train", limit=1)[0]["label"]
    assert train.features["label"].names == load_fashion_mnist("test", limit=1).features["label"].names
    with pytest.raises(DataError, match=r"dict \(a DatasetDict saved with save_to_disk\) has no split 'validation'; "
                                        r"its splits are \['test', 'train'\]"):
        load_dataset_split(str(saved / "dict"), "validation")


def test_single_dataset_folder_is_the_training_split(saved):
    assert len(load_dataset_split(str(saved / "single"), "train", limit=50)) == 50
    with pytest.raises(DataError, match=r"single Dataset saved with save_to_disk, which serves as the 'train' split "
                                        r"only, so it has no split 'test'\. Save a DatasetDict with a 'test' split"):
        load_dataset_split(str(saved / "single"), "test")
    with pytest.raises(DataError, match="has no configurations; drop dataset_config='plain'"):
        load_dataset_split(str(saved / "single"), "train", config_name="plain")


@pytest.mark.parametrize("folder,eval_split", [("dict", "test"), ("single", "train")])
def test_cli_trains_on_a_saved_folder(saved, tmp_path, capsys, folder, eval_split):
    code = main(["train-teacher", "--model", "timm:test_resnet", "--dataset", str(saved / folder),
                 "--eval_split", eval_split, "--max_train_samples", "64", "--max_eval_samples", "32",
                 "--max_steps", "2", "--per_device_train_batch_size", "32", "--snapshot_strategy", "epoch",
                 "--report_to", "none", "--output_dir", str(tmp_path / "t")])
    assert code == 0, capsys.readouterr().err
    assert f"{eval_split} accuracy:" in capsys.readouterr().out
    assert SnapshotIndex.load(tmp_path / "t").final is not None
    # The selector takes the same folder (its probe comes from the training split).
    assert main(["select", str(tmp_path / "t"), "--dataset", str(saved / folder), "--max_probe_samples", "60",
                 "--objective", "accuracy", "--disable_tqdm", "--output", str(tmp_path / "sel")]) == 0
    assert "chosen: " in capsys.readouterr().out and (tmp_path / "sel" / "selection.json").is_file()


def test_cli_names_the_missing_split_of_a_single_dataset_folder(saved, tmp_path, capsys):
    code = main(["train-teacher", "--model", "timm:test_resnet", "--dataset", str(saved / "single"),
                 "--max_train_samples", "64", "--output_dir", str(tmp_path / "t")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{saved / 'single'} holds a single Dataset" in err and "no split 'test'" in err and "Traceback" not in err


def _recipe(tmp_path, dataset) -> str:
    values = {"name": "saved", "dataset": str(dataset), "train_samples": 128, "validation_samples": 100,
              "test_samples": 50, "full_ensemble": 1, "ensemble_k": 1,
              "teacher": {"model": "timm:test_resnet", "num_train_epochs": 1, "per_device_train_batch_size": 64},
              "student": {"model": "timm:test_resnet", "num_train_epochs": 1, "per_device_train_batch_size": 64}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.mark.slow
def test_recipe_runs_on_a_saved_dataset_dict(saved, tmp_path, capsys):
    code = main(["run", _recipe(tmp_path, saved / "dict"), "--output_dir", str(tmp_path / "run"),
                 "--stages", "teachers"])
    assert code == 0, capsys.readouterr().err
    assert "128 training, 100 validation, 50 test examples" in capsys.readouterr().out
    assert SnapshotIndex.load(tmp_path / "run" / "teachers" / "teacher-0").final is not None


def test_recipe_on_a_single_dataset_folder_asks_for_a_test_split(saved, tmp_path, capsys):
    code = main(["run", _recipe(tmp_path, saved / "single"), "--output_dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "serves as the 'train' split only, so it has no split 'test'" in err and "Traceback" not in err
