"""Frozen teachers: `TeacherEnsemble`, `load_teachers` and label-space checks.

A teacher reference is an `nn.Module` (used as is), a snapshot folder, `<snapshot_dir>:<name>`
(e.g. `runs/t/snapshots:epoch-0012`), a saved model folder, or a Hub repo `owner/name` with an
optional `@revision` (the forms: `hf_ckptkd.references`; one reference loads through
`hf_ckptkd.training.teacher_loading`). `load_teachers(refs)` turns references into one `TeacherEnsemble`, whose
forward returns ONE float32 logits tensor, (batch, labels) for classifiers and (batch, seq, vocab)
for causal LMs (the same combination per token): the weighted mean of the members'
logits (`mean_logits`, the paper's) or `T * log(sum_i w_i softmax(z_i / T))` (`mean_probs`, so
that `softmax(out / T)` is exactly the weighted mean of the members' tempered probabilities).

Members that share one architecture can run as one batched forward (`fused_teachers`);
`fusion="auto"` times both paths on the first real batch and keeps the faster one on that device
(`.fusion_used`, `.fusion_times`).

The ensemble is a separate object the trainer holds: never a submodule of the student, never
wrapped by DDP, never saved with the student; under an FSDP or ZeRO-3 student its members are
sharded the same way (`teacher_sharding`, `mark_sharded`). It always stays in eval mode.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import (DEFAULT_ENSEMBLE_MODE, DEFAULT_TEACHER_DTYPE, DEFAULT_TEACHER_FUSION, DEFAULT_TEMPERATURE,
                      ENSEMBLE_MODES, TEACHER_DTYPES, TEACHER_FUSIONS)
from .fused_teachers import FusedForward, architecture_signature, logits_of, time_fusion
from ..models.inputs import describe_remap, match_inputs, recorded_input
from ..models.build import model_inputs
# The reference forms and their error are defined in references.py and re-exported here, where
# callers of load_teachers look for them.
from ..references import REFERENCE_FORMS, TeacherReferenceError, is_hub_reference, parse_hub_reference
# The checks are re-exported here, where callers of load_teachers look for them.
from .teacher_checks import (
    LabelSpaceError,
    TeacherOutputError,
    check_finite,
    check_label_space,
    describe_module,
    members_kind,
    members_label_space,
    members_vocab_size,
)
from .teacher_loading import as_teacher_model, load_teacher, teacher_folder

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
assert set(DTYPES) == set(TEACHER_DTYPES)

class TeacherFusionError(ValueError):
    """`fusion="fused"` asked for with members that cannot run as one batched forward."""


# --- the ensemble ------------------------------------------------------------------------

class TeacherEnsemble(nn.Module):
    """Frozen teachers producing one float32 logits tensor per batch.

    Args:
        members: the teacher models (`TimmForImageClassification` or transformers models; a bare
            timm model is wrapped). Use `load_teachers` to build them from references.
        mode: "mean_logits" (weighted mean of the members' logits, the paper's) or "mean_probs"
            (`T * log(sum_i w_i softmax(z_i / T))`: `softmax(out / T)` is the weighted mean of the
            members' tempered probabilities).
        temperature: T of "mean_probs" (the distillation temperature); unused by "mean_logits".
        weights: one non-negative weight per member (normalised to sum 1); default equal.
        dtype: the dtype the members run in ("float32", "float16", "bfloat16" or a torch dtype).
            Floating inputs are cast to it; the output is always float32. The forward runs with
            autocast disabled, so this dtype holds inside a mixed-precision training step too.
        fusion: "fused" (one vmapped forward over stacked weights; needs one architecture, else
            `TeacherFusionError`), "loop" (one member after another) or "auto" (mixed
            architectures loop; same-architecture members are timed both ways on the first batch
            and the faster path is kept: `.fusion_used`, `.fusion_times`; the fused path must take
            under 0.95x the loop's time (median of paired rounds), since it holds a second, stacked
            copy of the weights).
        compile: `torch.compile` the fused path.
        references: how each member was named (for messages); default a description of each.
        device: move the members there.
        auto_repeats: timed rounds of the "auto" measurement (after one warm-up); each round runs
            both paths back to back, and the median of the per-round fused/loop ratios decides.

    Call it like the student: `ensemble(**model_inputs(batch))` (labels are ignored). The result
    is a normal (not inference-mode) float32 tensor that does not require grad.
    """

    def __init__(self, members: Sequence[nn.Module], *, mode: str = DEFAULT_ENSEMBLE_MODE,
                 temperature: float = DEFAULT_TEMPERATURE, weights: Sequence[float] | None = None,
                 dtype: str | torch.dtype = DEFAULT_TEACHER_DTYPE, fusion: str = DEFAULT_TEACHER_FUSION,
                 compile: bool = False, references: Sequence[str] | None = None,
                 device: str | torch.device | None = None, auto_repeats: int = 5):
        super().__init__()
        # How the members are split over the processes ("fsdp1", "fsdp2", "zero3": teacher_sharding), or None.
        self.sharding: str | None = None
        self._sharded_device: torch.device | None = None
        members = list(members)
        if not members:
            raise TeacherReferenceError("a TeacherEnsemble needs at least one teacher")
        if references is None:
            references = [describe_module(m) for m in members]
        self.references: list[str] = [str(r) for r in references]
        if len(self.references) != len(members):
            raise ValueError(f"{len(self.references)} references for {len(members)} teachers")
        _require_one_of("ensemble mode", mode, ENSEMBLE_MODES)
        _require_one_of("teacher fusion", fusion, TEACHER_FUSIONS)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        self.mode, self.temperature, self.fusion = mode, float(temperature), fusion
        self.compile_fused = bool(compile)  # (not `self.compile`: that would hide nn.Module.compile)
        self.auto_repeats = max(1, int(auto_repeats))
        self.dtype = _resolve_dtype(dtype)
        self.weights: list[float] = _normalise_weights(weights, len(members))
        self.members = nn.ModuleList([as_teacher_model(m, r) for m, r in zip(members, self.references)])
        for member in self.members:
            member.eval().requires_grad_(False).to(self.dtype)
        if device is not None:
            self.members.to(device)
        self.register_buffer("_weight_tensor", torch.tensor(self.weights, dtype=torch.float32,
                                                            device=self.device), persistent=False)
        self.kind = members_kind(self.members, self.references)
        self.num_labels, self.label_names = members_label_space(self.members, self.references)
        self.vocab_size = members_vocab_size(self.members, self.references)
        # Per member: how the student's pixel values are turned into the member's own normalisation.
        self.input_remaps: list = [None] * len(self.members)

        # The local folder each member was loaded from (set by load_teachers), for the tokenizer saved there.
        self.source_folders: list[Path | None] = [None] * len(self.members)
        self.fusable, self.fusion_reason = self._fusability()
        self.fusion_used: str | None = None  # "fused" | "loop"; None until "auto" has measured
        self.fusion_times: dict[str, float] | None = None  # {"fused": s, "loop": s, "fused/loop": median ratio}
        self._fused: FusedForward | None = None
        if fusion == "fused" and not self.fusable:
            raise TeacherFusionError(f"teacher_fusion='fused' needs teachers of one architecture, but "
                                     f"{self.fusion_reason}; use teacher_fusion='auto' or 'loop'")
        if fusion == "loop" or len(self.members) == 1 or not self.fusable:
            self.fusion_used = "loop"
            if fusion == "auto" and len(self.members) > 1:
                logger.info("teacher fusion: auto uses the loop because %s", self.fusion_reason)
        elif fusion == "fused":
            self.fusion_used = "fused"

    # -- construction helpers --
    def _fusability(self) -> tuple[bool, str]:
        if len(self.members) == 1:
            return True, "there is one teacher"
        signatures = [architecture_signature(m) for m in self.members]
        for i, sig in enumerate(signatures[1:], 1):
            if sig != signatures[0]:
                what = "class" if sig[0] is not signatures[0][0] else \
                    "module structure" if sig[1] != signatures[0][1] else \
                    "parameter/buffer names, shapes or dtypes" if sig[2] != signatures[0][2] else "config"
                return False, (f"teacher {self.references[i]!r} ({describe_module(self.members[i])}) differs from "
                               f"teacher {self.references[0]!r} ({describe_module(self.members[0])}) in its {what}")
        return True, f"all {len(self.members)} teachers share one architecture"

    def match_student_inputs(self, student: nn.Module, student_input=None) -> None:
        """Check that every member reads the images the student is fed, and remap what differs.

        A channel or image size mismatch is an `InputMismatchError` naming both values; a member
        trained with another mean/std gets the student's pixel values remapped to its own
        normalisation (`inputs.match_inputs`). `student_input` (an `inputs.InputSpec`) overrides
        what the student records.
        """
        self.input_remaps = match_inputs(list(zip(self.references, self.members)), student, student_input)
        s_spec = student_input or recorded_input(student)
        for reference, member, remap in zip(self.references, self.members, self.input_remaps):
            if remap is not None:
                logger.warning(describe_remap(reference, s_spec, recorded_input(member)))
        if any(self.input_remaps) and len(set(self.input_remaps)) > 1:
            # Members that need different inputs cannot share one batched forward.
            self.fusion_used, self._fused = "loop", None

    # -- properties --
    @property
    def device(self) -> torch.device:
        if self._sharded_device is not None:  # sharded (and perhaps offloaded) weights may sit elsewhere
            return self._sharded_device
        return next(itertools.chain(self.members.parameters(), self.members.buffers())).device

    def mark_sharded(self, kind: str, device: torch.device) -> None:
        """Record that `teacher_sharding` split the members (`kind`) to compute on `device`: they run one after
        another from now on (the fused path stacks whole copies of the weights)."""
        self.sharding, self._sharded_device = kind, torch.device(device)
        self.fusion_used, self._fused = "loop", None

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        """Teachers are frozen: the ensemble and its members stay in eval mode whatever `mode` says."""
        return super().train(False)

    def _apply(self, fn, recurse: bool = True):
        before = self.device
        result = super()._apply(fn, recurse)
        self._fused = None  # the stacked weights are rebuilt from the moved members on next use
        floating = [p.dtype for p in self.members.parameters() if p.is_floating_point()]
        if floating:
            self.dtype = floating[0]
        one_input = len(set(getattr(self, "input_remaps", [None]))) == 1  # members fed differently always loop
        if self.fusion == "auto" and self.fusable and one_input and len(self.members) > 1 and self.device != before:
            self.fusion_used, self.fusion_times = None, None  # the faster path depends on the device: measure again
        return result

    # -- forward --
    def forward(self, **inputs: Any) -> torch.Tensor:
        inputs = self._prepare(model_inputs(inputs))
        # teacher_dtype decides the teachers' precision, not an autocast region the trainer's step may be in.
        # no_grad rather than inference_mode: the result is a normal tensor the loss may save for backward,
        # without a copy (a causal LM's logits are (batch, seq, vocab)).
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            if self.fusion_used is None:
                stacked = self._choose_fusion(inputs)
            else:
                stacked = self._run(self.fusion_used, inputs)
            return self._combine(stacked).float()

    def member_logits(self, **inputs: Any) -> torch.Tensor:
        """Each member's float32 logits, shape (members, batch, labels) (or (members, batch, seq, vocab) for LMs)."""
        inputs = self._prepare(model_inputs(inputs))
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            return self._run(self.fusion_used or "loop", inputs).float()

    def _prepare(self, inputs: dict[str, Any]) -> dict[str, Any]:
        device = self.device
        inputs = {k: (v.to(device=device, dtype=self.dtype if v.is_floating_point() else v.dtype)
                      if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        shared = self.input_remaps[0] if len(set(self.input_remaps)) == 1 else None
        if shared is not None and "pixel_values" in inputs:  # every member wants the same remap: apply it once
            inputs["pixel_values"] = shared(inputs["pixel_values"])
        return inputs

    def _member_inputs(self, i: int, inputs: dict[str, Any]) -> dict[str, Any]:
        remap = self.input_remaps[i]
        if remap is None or len(set(self.input_remaps)) == 1 or "pixel_values" not in inputs:
            return inputs  # nothing to do, or already remapped once for all members by _prepare
        return {**inputs, "pixel_values": remap(inputs["pixel_values"])}

    def _run(self, path: str, inputs: dict[str, Any]) -> torch.Tensor:
        if path == "fused":
            if self._fused is None:
                self._fused = FusedForward(list(self.members), self.compile_fused)
            return self._fused(inputs)
        if len(self.members) == 1:  # a view, not a copy of what may be an LM's (batch, seq, vocab) logits
            return logits_of(self.members[0](**self._member_inputs(0, inputs))).unsqueeze(0)
        return torch.stack([logits_of(m(**self._member_inputs(i, inputs))) for i, m in enumerate(self.members)])

    def _combine(self, stacked: torch.Tensor) -> torch.Tensor:
        if self.mode == "mean_logits" and stacked.shape[0] == 1:
            return stacked[0]
        stacked = stacked.float()
        w = self._weight_tensor.to(stacked.device).view(-1, *([1] * (stacked.dim() - 1)))
        if self.mode == "mean_logits":
            return (w * stacked).sum(0)
        t = self.temperature
        return t * torch.logsumexp(torch.log_softmax(stacked / t, dim=-1) + torch.log(w), dim=0)

    def _choose_fusion(self, inputs: dict[str, Any]) -> torch.Tensor:
        """Time the fused and the loop path on this batch (`fused_teachers.time_fusion`); keep the faster."""
        self.fusion_used, self.fusion_times, out = time_fusion(self._run, inputs, self.device, self.auto_repeats)
        if self.fusion_used == "loop":
            self._fused = None  # free the stacked copy of the weights
        if self.fusion_times is not None:
            batch = next((v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim()), "?")
            logger.info("teacher fusion: auto chose %r on %s for %d teachers (per batch of %s: fused %.4f s%s, "
                        "loop %.4f s, median fused/loop %.2f)", self.fusion_used, self.device, len(self.members),
                        batch, self.fusion_times["fused"], " compiled" if self.compile_fused else "",
                        self.fusion_times["loop"], self.fusion_times["fused/loop"])
        return out

    def __repr__(self) -> str:  # compact: the members' module trees would fill a log
        return f"TeacherEnsemble({len(self.members)} teachers, {self.extra_repr()})"

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, temperature={self.temperature}, weights={self.weights}, dtype={self.dtype}, "
                f"fusion={self.fusion!r}, fusion_used={self.fusion_used!r}, references={self.references}")


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"teacher dtype {dtype} is not one of {', '.join(DTYPES)}")
        return dtype
    _require_one_of("teacher dtype", dtype, DTYPES)
    return DTYPES[dtype]


def _require_one_of(what: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{what} {value!r} is not one of {', '.join(map(repr, choices))}")


def _normalise_weights(weights: Sequence[float] | None, k: int) -> list[float]:
    if weights is None:
        return [1.0 / k] * k
    weights = [float(w) for w in weights]
    if len(weights) != k:
        raise ValueError(f"{len(weights)} teacher weights for {k} teachers; give one weight per teacher")
    if any(not (w >= 0) or w == float("inf") for w in weights) or sum(weights) <= 0:
        raise ValueError(f"teacher weights {weights} must be finite, non-negative and have a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


# --- building the ensemble from references ------------------------------------------------

def load_teachers(refs: str | Path | nn.Module | Sequence[str | Path | nn.Module], *,
                  device: str | torch.device | None = None, dtype: str | torch.dtype = DEFAULT_TEACHER_DTYPE,
                  mode: str = DEFAULT_ENSEMBLE_MODE, temperature: float = DEFAULT_TEMPERATURE,
                  weights: Sequence[float] | None = None, fusion: str = DEFAULT_TEACHER_FUSION,
                  compile: bool = False) -> TeacherEnsemble:
    """A frozen `TeacherEnsemble` from teacher references (see `load_teacher` for the accepted forms)."""
    if isinstance(refs, (str, Path, nn.Module)):
        refs = [refs]
    refs = list(refs)
    if not refs:
        raise TeacherReferenceError(f"no teacher references given; a teacher reference is {REFERENCE_FORMS}")
    members = [load_teacher(ref) for ref in refs]
    references = [describe_module(r) if isinstance(r, nn.Module) else str(r) for r in refs]
    ensemble = TeacherEnsemble(members, mode=mode, temperature=temperature, weights=weights, dtype=dtype,
                               fusion=fusion, compile=compile, references=references, device=device)
    ensemble.source_folders = [teacher_folder(r) for r in refs]
    return ensemble


__all__ = ["TeacherEnsemble", "load_teachers", "parse_hub_reference", "is_hub_reference",
           "check_finite", "check_label_space", "architecture_signature", "TeacherReferenceError",
           "TeacherFusionError", "LabelSpaceError", "TeacherOutputError", "REFERENCE_FORMS"]
