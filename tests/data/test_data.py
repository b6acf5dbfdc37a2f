"""The Fashion-MNIST reader, transforms and collator, on the real Debian files."""

import gzip
import shutil

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value

from hf_ckptkd.data.loading import (
    BUILTIN_DATASETS,
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    DataError,
    default_normalisation,
    load_dataset_split,
    load_fashion_mnist,
    load_fashion_mnist_rotations,
)
from hf_ckptkd.data.images import (
    ImageColumns,
    ImageTransformConfig,
    build_image_transform,
    image_collator,
    label_names,
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


# -- fashion_mnist_rot40: garment × rotation ------------------------------------------------------


@pytest.fixture(scope="module")
def rot40_train():
    return load_dataset_split("fashion_mnist_rot40", "train", limit=200)


def test_rot40_is_a_builtin_dataset():
    assert {"fashion_mnist", "fashion_mnist_rot40", "fortunes_topics"} <= set(BUILTIN_DATASETS)
    assert BUILTIN_DATASETS["fashion_mnist_rot40"] is load_fashion_mnist_rotations


def test_rot40_labels_are_garment_times_rotation(rot40_train):
    ds = rot40_train
    assert len(ds) == 200
    names = ds.features["label"].names
    assert isinstance(ds.features["label"], ClassLabel) and len(names) == 40 == len(set(names))
    assert names[:4] == ["T-shirt/top @0", "T-shirt/top @90", "T-shirt/top @180", "T-shirt/top @270"]
    assert names[4 * 5 + 1] == "Sandal @90" and names[-1] == "Ankle boot @270"
    labels = np.asarray(ds["label"])
    assert labels.min() >= 0 and labels.max() < 40
    original = load_fashion_mnist("train", limit=200)
    assert (labels // 4).tolist() == original["label"]
    assert set((labels % 4).tolist()) == {0, 1, 2, 3}  # every rotation occurs in 200 draws
    for i in range(len(ds)):
        image, source = np.asarray(ds[i]["image"]), np.asarray(original[i]["image"])
        assert image.shape == (28, 28)
        assert np.array_equal(image, np.rot90(source, k=int(labels[i]) % 4)), i


def test_rot40_draw_is_seeded_per_split(rot40_train):
    again = load_dataset_split("fashion_mnist_rot40", "train", limit=200)
    assert again["label"] == rot40_train["label"]
    # A shorter limit keeps the same draw for the examples it keeps.
    assert load_fashion_mnist_rotations("train", limit=50)["label"] == rot40_train["label"][:50]
    # The test split is its own draw (another seed), over the test images.
    test = load_dataset_split("fashion_mnist_rot40", "test", limit=200)
    original = load_fashion_mnist("test", limit=200)
    test_labels = np.asarray(test["label"])
    assert (test_labels // 4).tolist() == original["label"]
    assert not np.array_equal(test_labels % 4, np.asarray(rot40_train["label"]) % 4)
    assert np.array_equal(np.asarray(test[0]["image"]), np.rot90(np.asarray(original[0]["image"]), k=int(test_labels[0]) % 4))
    assert load_dataset_split("fashion_mnist_rot40", "test", limit=200)["label"] == test["label"]


def test_default_normalisation_follows_the_pixels():
    assert default_normalisation("fashion_mnist", 1) == (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    assert default_normalisation("fashion_mnist_rot40", 1) == (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    assert default_normalisation("fortunes_topics", 1) == ((0.5,), (0.5,))
    assert default_normalisation("some/hub-dataset", 1) == ((0.5,), (0.5,))
    assert default_normalisation("some/hub-dataset", 3) == ((0.5,) * 3, (0.5,) * 3)
    # Fashion-MNIST resized to 3 channels has no single-channel statistics to reuse.
    assert default_normalisation("fashion_mnist", 3) == ((0.5,) * 3, (0.5,) * 3)


@pytest.mark.parametrize("name", ["fashion_mnist", "fashion_mnist_rot40", "fortunes_topics"])
def test_unknown_builtin_split_is_a_data_error(name):
    with pytest.raises(DataError, match="unknown .*split 'validation'.*'train' or 'test'"):
        load_dataset_split(name, "validation")
