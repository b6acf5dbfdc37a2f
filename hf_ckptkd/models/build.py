"""The one place that knows timm from transformers: build, inspect, features (on disk: `model_folders`).

A model spec is `timm:<timm model name>` or `transformers:<config class name or Hub id>`.
timm models are wrapped in `TimmForImageClassification` so that `transformers.Trainer` trains
them unchanged (forward takes `pixel_values` and `labels`, returns `loss` and `logits`).
Saving and loading model folders is `hf_ckptkd.models.folders`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import timm
import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from ..config import LABEL_COLUMN_ALIASES
from . import architectures  # noqa: F401  (registers the small-image networks with timm)

TIMM, TRANSFORMERS = "timm", "transformers"


class ModelSpecError(ValueError):
    """A model spec or saved model folder that cannot be turned into a model."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: family (`timm` | `transformers`) and name."""

    family: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> "ModelSpec":
        family, sep, name = spec.partition(":")
        if not sep or family not in (TIMM, TRANSFORMERS) or not name:
            raise ModelSpecError(
                f"unknown model spec {spec!r}: write 'timm:<timm model name>' (e.g. timm:resnet18) or "
                "'transformers:<config class or Hub id>' (e.g. transformers:ViTConfig)")
        return cls(family, name)

    def check(self) -> "ModelSpec":
        """This spec, after what can be checked without building or downloading: a timm name timm knows."""
        if self.family == TIMM and not timm.is_model(self.name):
            close = difflib.get_close_matches(self.name, timm.list_models(), n=5)
            hint = f" Similar names: {', '.join(close)}." if close else " See timm.list_models()."
            raise ModelSpecError(f"timm does not know a model named {self.name!r}.{hint}")
        return self

    def __str__(self) -> str:
        return f"{self.family}:{self.name}"


class TimmForImageClassification(nn.Module):
    """A timm model behind the transformers image-classification interface."""

    # The loss is a batch mean: Trainer scales it for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def num_labels(self) -> int:
        return self.model.num_classes

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.model(pixel_values)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def build_model(spec: str | ModelSpec, num_labels: int, *, label_names: list[str] | None = None, in_chans: int = 1,
                image_size: int = 28, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                model_kwargs: dict[str, Any] | None = None, pretrained: bool = False) -> nn.Module:
    """A model for `num_labels` classes from a spec, randomly initialised unless `pretrained`.

    timm models get `in_chans`, and a `pretrained_cfg` whose input size, mean and std match the
    data. transformers models get `num_labels`, `id2label`, and for vision configs
    `num_channels`/`image_size`; `model_kwargs` override config fields (e.g. a small `hidden_size`).
    """
    spec = (ModelSpec.parse(spec) if isinstance(spec, str) else spec).check()
    model_kwargs = dict(model_kwargs or {})
    if spec.family == TIMM:
        return _build_timm(spec.name, num_labels, label_names, in_chans, image_size, mean, std, model_kwargs, pretrained)
    return _build_transformers(spec.name, num_labels, label_names, in_chans, image_size, model_kwargs, pretrained)


def _build_timm(name, num_labels, label_names, in_chans, image_size, mean, std, model_kwargs, pretrained) -> nn.Module:
    pretrained_cfg_overlay = {"input_size": (in_chans, image_size, image_size), "num_classes": num_labels}
    if mean is not None:
        pretrained_cfg_overlay["mean"] = tuple(mean)
    if std is not None:
        pretrained_cfg_overlay["std"] = tuple(std)
    if label_names is not None:
        pretrained_cfg_overlay["label_names"] = list(label_names)
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_labels, in_chans=in_chans,
                              pretrained_cfg_overlay=pretrained_cfg_overlay, **model_kwargs)
    return TimmForImageClassification(model)


def _is_image_config(config: PretrainedConfig) -> bool:
    return config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES


def _config_class(name: str) -> type[PretrainedConfig] | None:
    cls = getattr(transformers, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, PretrainedConfig) else None


def _build_transformers(name, num_labels, label_names, in_chans, image_size, model_kwargs, pretrained) -> nn.Module:
    label_names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    labels = {"num_labels": num_labels, "id2label": dict(enumerate(label_names)),
              "label2id": {n: i for i, n in enumerate(label_names)}}
    config_cls = _config_class(name)
    if config_cls is not None:
        config = config_cls(**model_kwargs)
        if pretrained:
            raise ModelSpecError(f"{name} is a config class and has no weights; give a Hub id to start from pretrained weights")
    else:
        try:
            config = AutoConfig.from_pretrained(name, **model_kwargs)
        except (OSError, ValueError) as e:
            raise ModelSpecError(f"transformers:{name} is neither a transformers config class (e.g. ViTConfig) nor a "
                                 f"Hub id or folder whose config could be loaded ({e})") from e
    if config.model_type not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES | MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ModelSpecError(f"transformers:{name} ({config.model_type}) has no image or sequence classification model")
    image = _is_image_config(config)
    if image:
        for key, value in (("num_channels", in_chans), ("image_size", image_size)):
            if hasattr(config, key) and key not in model_kwargs:
                setattr(config, key, value)
    for key, value in labels.items():
        setattr(config, key, value)
    auto = AutoModelForImageClassification if image else AutoModelForSequenceClassification
    if pretrained:
        return auto.from_pretrained(name, config=config, ignore_mismatched_sizes=True)
    return auto.from_config(config)


def build_causal_lm(spec: str | ModelSpec, *, vocab_size: int | None = None, pad_token_id: int | None = None,
                    model_kwargs: dict[str, Any] | None = None, pretrained: bool = False) -> PreTrainedModel:
    """A decoder-only LM from `transformers:<CausalLM config class or Hub id/folder>`.

    A config class (e.g. `GPT2Config`, `LlamaConfig`) gives a randomly initialised model with
    `model_kwargs` as its config fields and `vocab_size`/`pad_token_id` from the tokenizer; a Hub id
    or folder gives its config (and, with `pretrained`, its weights).
    """
    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.family != TRANSFORMERS:
        raise ModelSpecError(f"{spec} is a timm model; a causal LM is 'transformers:<config class or Hub id>' "
                             "(e.g. transformers:GPT2Config or transformers:LlamaConfig)")
    kwargs = dict(model_kwargs or {})
    if vocab_size is not None:
        kwargs.setdefault("vocab_size", vocab_size)
    if pad_token_id is not None:
        kwargs.setdefault("pad_token_id", pad_token_id)
    config_cls = _config_class(spec.name)
    if config_cls is not None:
        if pretrained:
            raise ModelSpecError(f"{spec.name} is a config class and has no weights; give a Hub id or folder to start "
                                 "from pretrained weights")
        config = config_cls(**kwargs)
    else:
        try:
            config = AutoConfig.from_pretrained(spec.name, **({} if pretrained else kwargs))
        except (OSError, ValueError) as e:
            raise ModelSpecError(f"transformers:{spec.name} is neither a transformers config class (e.g. GPT2Config) "
                                 f"nor a Hub id or folder whose config could be loaded ({e})") from e
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelSpecError(f"transformers:{spec.name} ({config.model_type}) has no causal-LM model; use a decoder "
                             "config such as GPT2Config or LlamaConfig")
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
    if pretrained:
        return AutoModelForCausalLM.from_pretrained(spec.name, config=config)
    return AutoModelForCausalLM.from_config(config)


CAUSAL_LM_CLASSES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is a transformers decoder-only LM (its class is a causal-LM class of its model type)."""
    model = unwrap(model)
    return isinstance(model, PreTrainedModel) and type(model).__name__ in CAUSAL_LM_CLASSES


def is_text_model(model: nn.Module) -> bool:
    """Whether `model` reads token ids (a transformers model with a vocabulary and no image channels)."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    return not isinstance(inner, TimmForImageClassification) and config is not None \
        and getattr(config, "vocab_size", None) is not None and not hasattr(config, "num_channels")


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, without DDP/compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def model_family(model: nn.Module) -> str:
    model = unwrap(model)
    if isinstance(model, TimmForImageClassification):
        return TIMM
    if isinstance(model, PreTrainedModel):
        return TRANSFORMERS
    raise ModelSpecError(f"{type(model).__name__} is neither a timm model wrapped by hf_ckptkd nor a transformers "
                         "PreTrainedModel; build it with hf_ckptkd.models.build_model")


def num_labels_of(model: nn.Module) -> int:
    """How many outputs the model scores: its classes, or for a causal LM its vocabulary (the next-token classes)."""
    model = unwrap(model)
    if isinstance(model, TimmForImageClassification):
        return model.num_labels
    if is_causal_lm(model):
        return model.get_output_embeddings().out_features
    return model.config.num_labels


def label_names_of(model: nn.Module) -> list[str] | None:
    """The class names a model was built with, or None when it carries none: transformers'
    placeholders `LABEL_0`, `LABEL_1`, … and the indices "0", "1", … (what `build_model` gives a model
    built without names) are no names."""
    model = unwrap(model)
    if is_causal_lm(model):
        return None  # its "labels" are the tokenizer's tokens
    if isinstance(model, TimmForImageClassification):
        names = list(model.model.pretrained_cfg.get("label_names") or [])
    else:
        id2label = getattr(model.config, "id2label", None) or {}
        names = [id2label[i] for i in sorted(id2label)]
    placeholders = ([f"LABEL_{i}" for i in range(len(names))], [str(i) for i in range(len(names))])
    return None if not names or names in placeholders else names


def _classifier_linear(model: PreTrainedModel) -> nn.Linear:
    """The last Linear layer that produces the class logits: its input is what the classifier reads."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == model.config.num_labels]
    if not heads:
        raise ModelSpecError(f"{type(model).__name__} has no Linear layer with {model.config.num_labels} outputs")
    return heads[-1]


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without labels: what a model's forward takes."""
    return {k: v for k, v in batch.items() if k not in LABEL_COLUMN_ALIASES}


def forward_with_features(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features, logits) in one forward pass, for both families.

    timm: `forward_head(forward_features(x), pre_logits=True)`; transformers: the input of the
    final classification Linear layer (the pooled representation the head reads); a causal LM:
    the last hidden state and the next-token logits at every real token (`attention_mask` marks
    them; all tokens without one), row by row: every real token is one prediction, its context the
    tokens before it in its row (the causal mask), so one forward reads a whole row's predictions.
    """
    model = unwrap(model)
    if is_causal_lm(model):
        out = model(**model_inputs(batch), output_hidden_states=True)
        mask = batch.get("attention_mask")
        real = mask.bool() if mask is not None else torch.ones(out.logits.shape[:2], dtype=torch.bool,
                                                                 device=out.logits.device)
        return out.hidden_states[-1][real], out.logits[real]
    if isinstance(model, TimmForImageClassification):
        inner = model.model
        feature_map = inner.forward_features(batch["pixel_values"])
        return inner.forward_head(feature_map, pre_logits=True).flatten(1), inner.forward_head(feature_map)
    captured: list[torch.Tensor] = []
    handle = _classifier_linear(model).register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = model(**model_inputs(batch)).logits
    finally:
        handle.remove()
    features = captured[-1]
    if features.dim() > 2:  # a head applied per token: take the first token, as the pooled heads do
        features = features[:, 0]
    return features.flatten(1), logits


def penultimate_features(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The representation the classifier reads, shape (batch, features)."""
    return forward_with_features(model, batch)[0]
