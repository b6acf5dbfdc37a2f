"""The Fashion-MNIST reader, transforms and collator, on the real Debian files."""

import gzip
import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value

from hf_ckptkd.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    DataError,
    ImageColumns,
    ImageTransformConfig,
    build_image_transform,
    image_collator,
    label_names,
    load_fashion_mnist,
    with_image_transform,
)


def test_fashion_mnist_reads_debian_files():
    ds = load_fashion_mnist("test", limit=100)
    assert len(ds) == 100
    assert isinstance(ds.features["label"], ClassLabel)
    assert ds.features["label"].names == FASHION_MNIST_LABELS
    first = ds[0]
    assert first["image"].size == (28, 28) and first["image"].mode == "L"
    # The first test image of Fashion-MNIST is an ankle boot (label 9).
    assert first["label"] == 9
    assert set(ds["label"]) <= set(range(10)) and len(set(ds["label"])) > 5


def test_full_splits_have_the_published_sizes():
    assert len(load_fashion_mnist("test")) == 10_000


def test_transforms_and_collator_produce_model_inputs():
    ds = load_fashion_mnist("train", limit=8)
    config = ImageTransformConfig()
    train = with_image_transform(ds, build_image_transform(config, train=True))
    evaluation = with_image_transform(ds, build_image_transform(config, train=False))
    batch = image_collator([evaluation[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 1, 28, 28) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == ds["label"][:4]
    # Evaluation is deterministic; training augmentation (crop with padding, flip) is not.
    assert torch.equal(evaluation[0]["pixel_values"], evaluation[0]["pixel_values"])
    torch.manual_seed(0)
    draws = [train[1]["pixel_values"] for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    # Normalised with the Fashion-MNIST statistics: roughly zero mean over many images.
    many = torch.stack([evaluation[i]["pixel_values"] for i in range(8)])
    assert abs(many.mean().item()) < 0.5


def test_rgb_resize_transform_for_imagenet_style_models():
    ds = load_fashion_mnist("train", limit=2)
    config = ImageTransformConfig(image_size=32, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = with_image_transform(ds, build_image_transform(config, train=False))[0]["pixel_values"]
    assert out.shape == (3, 32, 32)


def test_users_own_dataset_with_other_column_names():
    rng = np.random.default_rng(0)
    ds = Dataset.from_dict(
        {"img": [rng.integers(0, 255, (28, 28), dtype=np.uint8) for _ in range(6)], "target": [0, 1, 2, 0, 1, 2]},
        features=Features({"img": Image(), "target": ClassLabel(names=["a", "b", "c"])}),
    )
    columns = ImageColumns(image="img", label="target")
    assert label_names(ds, columns) == ["a", "b", "c"]
    out = with_image_transform(ds, build_image_transform(ImageTransformConfig(), train=False), columns)
    batch = image_collator([out[i] for i in range(6)])
    assert batch["labels"].tolist() == [0, 1, 2, 0, 1, 2]


def test_dataset_without_expected_columns_is_refused():
    ds = Dataset.from_dict({"picture": [np.zeros((28, 28), dtype=np.uint8)], "y": [0]},
                           features=Features({"picture": Image(), "y": Value("int64")}))
    with pytest.raises(DataError, match=r"no column\(s\) \['image', 'label'\].*picture.*ImageColumns"):
        with_image_transform(ds, build_image_transform(ImageTransformConfig(), train=False))


def test_truncated_fashion_mnist_file_is_named(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FASHION_MNIST_DIR / name, tmp_path / name)
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz is truncated.*apt-get install --reinstall"):
        load_fashion_mnist("test", data_dir=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    shutil.copy(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is not a readable gzip file"):
        load_fashion_mnist("test", data_dir=tmp_path)


def test_missing_files_without_network_say_how_to_install(tmp_path, monkeypatch):
    # No package and no reachable Hub: the fallback fails and the error says what to install.
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(DataError, match=r"does not exist.*zalando-datasets/fashion_mnist.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", data_dir=tmp_path)


def test_unknown_split():
    with pytest.raises(DataError, match="unknown Fashion-MNIST split 'validation'"):
        load_fashion_mnist("validation")
