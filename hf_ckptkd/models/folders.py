"""Models on disk: `save_model`, `load_model`, and what a saved model folder holds.

A saved folder is its family's own format, so it is already a Hub-ready model repo: timm's Hub
format (`config.json` with `architecture`, loadable with
`timm.create_model("local-dir:<folder>", pretrained=True)` where torch.load reads safetensors;
`load_model` reads the weights itself) or transformers' `save_pretrained` files. Weights are
safetensors only; nothing is unpickled.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)
from transformers.utils import logging as hf_logging

from .build import CAUSAL_LM_CLASSES, TIMM, TRANSFORMERS, ModelSpecError, TimmForImageClassification, model_family, unwrap

WEIGHTS_NAME = "model.safetensors"
# What a saved tokenizer leaves in a model folder (any one of them): text models keep theirs beside the weights.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
PICKLE_WEIGHT_NAMES = ("pytorch_model.bin", "model.bin", "open_clip_pytorch_model.bin", "model.pt", "model.pth")


@contextmanager
def _without_progress_bars():
    """transformers 5 draws a bar for every save and load, even of a one-file model: not for snapshots."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def save_model(model: nn.Module, folder: str | Path) -> list[str]:
    """Write `model` to `folder` in its family's own format; return the weight file names."""
    model, folder = unwrap(model), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if model_family(model) == TIMM:
        inner = model.model
        model_args = {"in_chans": _timm_in_chans(inner), "num_classes": inner.num_classes}
        timm.models.save_for_hf(inner, folder, model_args=model_args, safe_serialization=True)
    else:
        with _without_progress_bars():
            model.save_pretrained(folder, safe_serialization=True)
    return sorted(p.name for p in folder.glob("*.safetensors"))


def _timm_in_chans(model: nn.Module) -> int:
    return int(model.pretrained_cfg.get("input_size", (3,))[0])


def saved_family(config: dict) -> str:
    """The family of a saved model from its config.json: timm's Hub format names an `architecture`,
    anything else is a transformers config. The one place that tells the two apart on disk."""
    return TIMM if "architecture" in config else TRANSFORMERS


def load_hub_model(repo_id: str, commit: str | None, config: dict, *, subfolder: str | None = None,
                   local: str | Path | None = None) -> nn.Module:
    """The model of a Hub repo at `commit` (in `subfolder`) with its family's own loader (`config` is its
    config.json; `local` the cached folder its verified files were downloaded to)."""
    if saved_family(config) == TIMM:
        if subfolder:  # timm's hf-hub: loader reads a repo's root only; the folder's files are already here
            return load_model(local)
        hub_id = f"{repo_id}@{commit}" if commit else repo_id
        return TimmForImageClassification(timm.create_model(f"hf-hub:{hub_id}", pretrained=True))
    auto = transformers_auto_class(config, f"config.json of {repo_id}@{commit or 'main'}")
    return auto.from_pretrained(repo_id, revision=commit, subfolder=subfolder or "", use_safetensors=True)


def load_model(folder: str | Path, *, device: str | torch.device | None = None) -> nn.Module:
    """Load a model saved by `save_model` (or any timm / transformers model folder with safetensors)."""
    folder = Path(folder)
    config = _read_folder_config(folder)
    if not (folder / WEIGHTS_NAME).is_file() and not list(folder.glob("model-*.safetensors")):
        raise ModelSpecError(f"{folder} has a config.json but no {WEIGHTS_NAME}; save the model with safetensors")
    if saved_family(config) == TIMM:
        model = TimmForImageClassification(_load_timm_folder(folder))
    else:
        with _without_progress_bars():
            auto_class = transformers_auto_class(config, folder / "config.json")
            model = auto_class.from_pretrained(folder, use_safetensors=True)
        normalisation = read_processor_normalisation(folder)
        if normalisation is not None:  # the config does not hold it: keep it for the teacher/student input check
            setattr(model, RECORDED_NORMALISATION, normalisation)
    return model.to(device) if device is not None else model


# A transformers model loaded from a folder with an image processor carries its (mean, std) here.
RECORDED_NORMALISATION = "_hf_ckptkd_normalisation"
PROCESSOR_CONFIG = "preprocessor_config.json"


def read_processor_normalisation(folder: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(image_mean, image_std) of a saved image processor in `folder`, or None when it has none."""
    path = Path(folder) / PROCESSOR_CONFIG
    if not path.is_file():
        return None
    values = json.loads(path.read_text())
    mean, std = values.get("image_mean"), values.get("image_std")
    if mean is None or std is None:
        return None

    def as_tuple(v):
        return (float(v),) if isinstance(v, (int, float)) else tuple(float(x) for x in v)

    return as_tuple(mean), as_tuple(std)


def _load_timm_folder(folder: Path) -> nn.Module:
    """A timm model from its Hub-format folder: architecture and config from config.json, weights read
    with safetensors here. (timm's own `pretrained=True` reads a local folder with `torch.load`, which
    reads safetensors only in recent torch releases and would unpickle anything else.)"""
    model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    state_dict = {}
    for weights in sorted(folder.glob("model*.safetensors")):
        state_dict.update(load_file(weights))
    model.load_state_dict(state_dict)
    return model


def transformers_auto_class(config: dict, where: str | Path):
    """The Auto class a transformers model is loaded with, from its config's `architectures` (what
    save_pretrained wrote); `where` names the config in the error.

    A config that does not name its architecture and whose model type has both a causal-LM and a
    classification model is refused: loading an LM through a classification head (or the reverse)
    would give new random weights for the head without a word.
    """
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return AutoModelForImageClassification
    if any(a in CAUSAL_LM_CLASSES for a in architectures):
        return AutoModelForCausalLM
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return AutoModelForSequenceClassification
    kinds = [kind for kind, names in (("a causal LM", MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
                                      ("a sequence classifier", MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES))
             if model_type in names]
    if len(kinds) == 1:
        return AutoModelForCausalLM if kinds[0] == "a causal LM" else AutoModelForSequenceClassification
    raise ModelSpecError(
        f"{where} does not say which model it holds (architectures: {architectures or 'none'}; "
        f"model_type {model_type!r} can be {' or '.join(kinds) or 'neither a causal LM nor a classifier'}); add "
        f"\"architectures\": [\"{MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type, '<Model>ForCausalLM')}\"] (or the "
        "...ForSequenceClassification class) to config.json, as save_pretrained writes it")


def has_saved_tokenizer(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def _read_folder_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise ModelSpecError(f"{folder} is not a folder; give the folder a model was saved to")
    pickles = [n for n in PICKLE_WEIGHT_NAMES if (folder / n).exists()]
    if pickles and not (folder / WEIGHTS_NAME).exists():
        raise ModelSpecError(
            f"{folder / pickles[0]} is a pickle weight file, which hf-ckptkd refuses to load because unpickling can "
            "run arbitrary code. Convert it to safetensors (load it yourself, then `save_pretrained(..., "
            "safe_serialization=True)` or `safetensors.torch.save_file(state_dict, 'model.safetensors')`).")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelSpecError(f"{folder} is not a saved model: it has no config.json (expected a timm or transformers "
                             "model folder written by save_pretrained / timm's save_for_hf / hf-ckptkd)")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelSpecError(f"{config_path} is not valid JSON ({e})") from e


def folder_holds_causal_lm(folder: str | Path) -> bool:
    """Whether a saved model folder holds a causal LM, read from its config.json (no weights are loaded)."""
    config = _read_folder_config(Path(folder))
    return saved_family(config) == TRANSFORMERS and any(a in CAUSAL_LM_CLASSES for a in config.get("architectures") or [])

