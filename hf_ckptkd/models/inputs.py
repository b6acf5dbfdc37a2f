"""What an image model records of its inputs, and how a teacher's inputs are made to match the student's.

A timm model records `pretrained_cfg` input size, mean and std (`build_model` writes the data's
own there); its channels are read from its first convolution, which is what its forward really
takes. A transformers vision model records `num_channels` and `image_size` in its config, and a
saved folder's `preprocessor_config.json` (an image processor) `image_mean` and `image_std`.

Teachers see the student's batches. Inputs normalised with another mean/std than the teacher was
trained with are remapped for it, as timm's distillation teacher does with `normalize_input`:
`x_teacher = (x * std_s + mean_s - mean_t) / std_t`, i.e. one scale and shift per channel. A
channel or image size mismatch cannot be remapped and stops before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .folders import RECORDED_NORMALISATION
from .build import TimmForImageClassification, _is_image_config, unwrap


class InputMismatchError(ValueError):
    """Teachers and student that read images of different channels or size."""


@dataclass(frozen=True)
class InputSpec:
    """What a model records of its image inputs; None where it records nothing."""

    in_chans: int | None = None
    image_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) when both are recorded and have one value per channel."""
        if self.mean is None or self.std is None or len(self.mean) != len(self.std):
            return None
        if self.in_chans is not None and len(self.mean) != self.in_chans:
            return None  # e.g. a library default for RGB on a grey model: not what the model was trained with
        return self.mean, self.std


def _first_conv_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(conv.in_channels) if conv is not None else None


def _square(size) -> tuple[int, int] | None:
    if not size:
        return None
    if isinstance(size, (list, tuple)):
        return (int(size[-2]), int(size[-1])) if len(size) >= 2 else (int(size[0]), int(size[0]))
    return int(size), int(size)


def _floats(values) -> tuple[float, ...] | None:
    return tuple(float(v) for v in values) if values is not None else None


def recorded_input(model: nn.Module) -> InputSpec | None:
    """The image inputs `model` records (see the module docstring); None for a text model."""
    inner = unwrap(model)
    if isinstance(inner, TimmForImageClassification):
        cfg = getattr(inner.model, "pretrained_cfg", None) or {}
        input_size = cfg.get("input_size")
        chans = _first_conv_channels(inner.model) or (int(input_size[0]) if input_size else None)
        return InputSpec(chans, _square(input_size[1:] if input_size else None), _floats(cfg.get("mean")),
                         _floats(cfg.get("std")))
    config = getattr(inner, "config", None)
    if config is None or not _is_image_config(config):
        return None
    mean, std = getattr(inner, RECORDED_NORMALISATION, None) or (None, None)
    chans = getattr(config, "num_channels", None)
    return InputSpec(int(chans) if chans else None, _square(getattr(config, "image_size", None)), mean, std)


@dataclass(frozen=True)
class InputRemap:
    """Per-channel `x * scale + shift`: the student's normalisation turned into a teacher's."""

    scale: tuple[float, ...]
    shift: tuple[float, ...]

    @classmethod
    def between(cls, student: tuple[tuple[float, ...], tuple[float, ...]],
                teacher: tuple[tuple[float, ...], tuple[float, ...]]) -> "InputRemap | None":
        """None when the two normalisations agree (to float precision)."""
        (mean_s, std_s), (mean_t, std_t) = student, teacher
        if all(abs(a - b) < 1e-6 for a, b in zip((*mean_s, *std_s), (*mean_t, *std_t))):
            return None
        scale = tuple(ss / st for ss, st in zip(std_s, std_t))
        shift = tuple((ms - mt) / st for ms, mt, st in zip(mean_s, mean_t, std_t))
        return cls(scale, shift)

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (pixel_values.dim() - 2)
        scale = torch.tensor(self.scale, device=pixel_values.device, dtype=pixel_values.dtype).view(shape)
        shift = torch.tensor(self.shift, device=pixel_values.device, dtype=pixel_values.dtype).view(shape)
        return pixel_values * scale + shift


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def match_inputs(teachers: list[tuple[str, nn.Module]], student: nn.Module,
                 student_input: InputSpec | None = None) -> list[InputRemap | None]:
    """One remap (or None) per teacher, so that each sees inputs normalised its own way.

    `student_input` overrides what the student records (e.g. the data's normalisation, which a
    transformers student does not record). Raises `InputMismatchError`, naming both values, when a
    teacher reads another number of channels or another image size than the student is fed.
    Values either side does not record are not compared.
    """
    s_spec = student_input or recorded_input(student)
    remaps: list[InputRemap | None] = []
    for reference, teacher in teachers:
        t_spec = recorded_input(teacher)
        if s_spec is None or t_spec is None:
            remaps.append(None)
            continue
        if s_spec.in_chans and t_spec.in_chans and s_spec.in_chans != t_spec.in_chans:
            raise InputMismatchError(
                f"teacher {reference!r} reads {t_spec.in_chans}-channel images but the student is fed "
                f"{s_spec.in_chans}-channel ones; set in_chans to {t_spec.in_chans} (recipe in_chans, --in_chans) "
                "and build the student for it, or use teachers trained on the student's images")
        if s_spec.image_size and t_spec.image_size and s_spec.image_size != t_spec.image_size:
            t_size, s_size = "x".join(map(str, t_spec.image_size)), "x".join(map(str, s_spec.image_size))
            raise InputMismatchError(
                f"teacher {reference!r} was trained on {t_size} images but the student is fed {s_size} ones; set "
                f"image_size to {t_spec.image_size[-1]} (recipe image_size, --image_size) or use teachers trained "
                "at the student's size")
        s_norm, t_norm = s_spec.normalisation, t_spec.normalisation
        remaps.append(InputRemap.between(s_norm, t_norm) if s_norm and t_norm and len(s_norm[0]) == len(t_norm[0])
                      else None)
    return remaps


def describe_remap(reference: str, student: InputSpec, teacher: InputSpec) -> str:
    return (f"teacher {reference!r} was trained on inputs normalised with mean {_fmt(teacher.mean)}, std "
            f"{_fmt(teacher.std)}; the student's use mean {_fmt(student.mean)}, std {_fmt(student.std)}: its "
            "inputs are remapped to its own normalisation")
