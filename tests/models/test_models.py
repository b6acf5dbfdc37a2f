"""Both model families: build from a spec, round-trip through each family's own format, features,
and one epoch under a plain `transformers.Trainer` through the adapter."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import AutoModelForImageClassification, Trainer, TrainingArguments

from capabilities import TIMM_ALONE_LOADS_LOCAL_FOLDERS
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, label_names, load_fashion_mnist, with_image_transform
from hf_ckptkd.models.folders import load_model, save_model
from hf_ckptkd.models import (
    ModelSpecError,
    build_model,
    forward_with_features,
    label_names_of,
    model_family,
    num_labels_of,
    penultimate_features,
)

LABELS = [f"class-{i}" for i in range(10)]
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 7}
TINY_BERT = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
IMAGE_SPECS = [("timm:resnet18", None), ("transformers:ViTConfig", TINY_VIT),
               ("transformers:ResNetConfig", {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1]})]


def _batch(spec):
    torch.manual_seed(0)
    if "Bert" in spec:
        return {"input_ids": torch.randint(0, 120, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long)}
    return {"pixel_values": torch.randn(4, 1, 28, 28)}


@pytest.mark.parametrize("spec,kwargs", IMAGE_SPECS + [("transformers:BertConfig", TINY_BERT)])
def test_round_trip_gives_identical_logits(tmp_path, spec, kwargs):
    model = build_model(spec, 10, label_names=LABELS, model_kwargs=kwargs).eval()
    batch = _batch(spec)
    weights = save_model(model, tmp_path)
    assert weights == ["model.safetensors"]
    assert not list(tmp_path.glob("*.bin"))
    loaded = load_model(tmp_path).eval()
    assert model_family(loaded) == spec.split(":")[0]
    assert num_labels_of(loaded) == 10 and label_names_of(loaded) == LABELS
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_timm_folder_loads_with_timm_alone(tmp_path):
    model = build_model("timm:resnet18", 10, label_names=LABELS, mean=(0.286,), std=(0.353,)).eval()
    save_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"] == "resnet18"
    assert config["model_args"] == {"in_chans": 1, "num_classes": 10, "global_pool": "avg"} or \
        {"in_chans": 1, "num_classes": 10}.items() <= config["model_args"].items()
    assert config["pretrained_cfg"]["input_size"] == [1, 28, 28]
    assert config["pretrained_cfg"]["mean"] == [0.286] and config["pretrained_cfg"]["std"] == [0.353]
    if not TIMM_ALONE_LOADS_LOCAL_FOLDERS:
        pytest.skip("this torch's torch.load does not read safetensors, which timm's local-dir loader needs")
    plain = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain(x), model(pixel_values=x).logits)


def test_transformers_folder_loads_with_auto_class(tmp_path):
    model = build_model("transformers:ViTConfig", 10, label_names=LABELS, model_kwargs=TINY_VIT).eval()
    save_model(model, tmp_path)
    plain = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(plain(pixel_values=x).logits, model(pixel_values=x).logits)
    assert plain.config.num_channels == 1 and plain.config.image_size == 28


@pytest.mark.parametrize("spec,kwargs", IMAGE_SPECS + [("transformers:BertConfig", TINY_BERT)])
def test_penultimate_features_feed_the_classifier(spec, kwargs):
    model = build_model(spec, 10, model_kwargs=kwargs).eval()
    batch = _batch(spec)
    with torch.no_grad():
        features, logits = forward_with_features(model, batch)
        assert torch.allclose(logits, model(**batch).logits, atol=1e-6)
        assert features.shape[0] == 4 and features.dim() == 2
        assert torch.equal(features, penultimate_features(model, batch))
        # The features are what the final Linear layer reads: applying it gives the logits back.
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 10][-1]
        assert torch.allclose(head(features), logits, atol=1e-5)


def test_timm_features_are_pre_logits():
    model = build_model("timm:resnet18", 10).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        features = penultimate_features(model, {"pixel_values": x})
    assert features.shape == (3, model.model.num_features)


def test_unknown_spec_and_unknown_timm_name():
    with pytest.raises(ModelSpecError, match=r"unknown model spec 'resnet18'.*timm:<timm model name>"):
        build_model("resnet18", 10)
    with pytest.raises(ModelSpecError, match=r"unknown model spec 'keras:resnet'"):
        build_model("keras:resnet", 10)
    with pytest.raises(ModelSpecError, match=r"timm does not know a model named 'resnet19'.*resnet"):
        build_model("timm:resnet19", 10)
    with pytest.raises(ModelSpecError, match=r"NotAConfig is neither a transformers config class"):
        build_model("transformers:NotAConfig", 10)


def test_folder_that_is_not_a_saved_model(tmp_path):
    with pytest.raises(ModelSpecError, match=r"is not a folder"):
        load_model(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelSpecError, match=r"is not a saved model: it has no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelSpecError, match=r"config.json is not valid JSON"):
        load_model(tmp_path)


def test_pickle_weights_are_refused(tmp_path):
    model = build_model("transformers:ViTConfig", 10, model_kwargs=TINY_VIT)
    save_model(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelSpecError, match=r"pytorch_model.bin is a pickle weight file.*safetensors"):
        load_model(tmp_path)


def test_config_without_weights(tmp_path):
    model = build_model("timm:resnet18", 10)
    save_model(model, tmp_path)
    save_file({}, tmp_path / "other.safetensors")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ModelSpecError, match=r"has a config.json but no model.safetensors"):
        load_model(tmp_path)


@pytest.mark.parametrize("spec,kwargs", [("timm:resnet18", None), ("transformers:ViTConfig", TINY_VIT)])
def test_one_epoch_under_plain_trainer(tmp_path, spec, kwargs):
    train = load_fashion_mnist("train", limit=256)
    names = label_names(train)
    config = ImageTransformConfig()
    model = build_model(spec, 10, label_names=names, model_kwargs=kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=32,
                             learning_rate=1e-3, report_to="none", remove_unused_columns=False, use_cpu=True,
                             save_strategy="no", logging_steps=2)
    trainer = Trainer(model=model, args=args, data_collator=image_collator,
                      train_dataset=with_image_transform(train, build_image_transform(config, train=True)))
    result = trainer.train()
    assert result.global_step == 8
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) >= 3 and all(torch.isfinite(torch.tensor(losses)))
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "training changed no weight"


@pytest.mark.parametrize("name,params", [("cifar_resnet8", 77_754), ("cifar_resnet20", 272_186), ("wrn_16_2", 691_386)])
def test_small_image_networks_are_timm_models(tmp_path, name, params):
    model = build_model(f"timm:{name}", 10, label_names=LABELS).eval()
    assert sum(p.numel() for p in model.parameters()) == params
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        features, logits = forward_with_features(model, {"pixel_values": x})
        # Full resolution in the first stage: the last stage still has a 7×7 map for a 28×28 input.
        assert model.model.forward_features(x).shape[-2:] == (7, 7)
    assert features.shape == (2, model.model.num_features) and logits.shape == (2, 10)
    save_model(model, tmp_path)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path).eval()(pixel_values=x).logits, logits)
    if TIMM_ALONE_LOADS_LOCAL_FOLDERS:  # the folder is timm's own format: timm alone loads it too
        plain = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
        with torch.no_grad():
            assert torch.equal(plain(x), logits)
