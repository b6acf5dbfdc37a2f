"""Members of one architecture run as one batched forward: their weights and buffers stacked with
`torch.func.stack_module_state`, a weightless ("meta") copy of the first member called with
`torch.func.functional_call` under `torch.vmap` (the model-ensembling recipe of the PyTorch docs).
BatchNorm in eval mode reads its running statistics, so it vmaps. On an idle 2-core CPU this ran at 0.75x
the speed of a plain loop over the members (k=4 resnet18, batch 128; benchmarks/kd_step.py), and
torch.compile made it slower still; on the same CPU under heavy load from other processes the fused path,
which runs fewer and larger kernels, came out ahead. So `TeacherEnsemble` (teachers.py) decides by timing."""

from __future__ import annotations

import copy
import itertools
import json
import statistics
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..models.build import unwrap

# Relative difference (to the largest logit) above which the fused path is taken to disagree with the loop.
# It only catches gross errors (members that are not really one architecture): TF32/half kernels differ far less.
FUSION_CHECK_TOL = 5e-2
# "auto" keeps the fused path only when it takes less than this fraction of the loop's time.
FUSED_MARGIN = 0.95

_CONFIG_KEYS_IGNORED = {"id2label", "label2id", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
                        "architectures", "num_labels", "finetuning_task"}


def architecture_signature(model: nn.Module) -> tuple:
    """What must be equal for two models to run as one vmapped forward.

    The class, the module tree with its hyperparameters (`repr`, e.g. activation, eps, stride),
    every parameter and buffer name with shape and dtype, and for transformers models the config
    apart from labels and bookkeeping fields.
    """
    inner = unwrap(model)
    tensors = tuple((name, tuple(t.shape), t.dtype) for name, t in
                    itertools.chain(inner.named_parameters(), inner.named_buffers()))
    config = getattr(inner, "config", None)
    config_sig = None
    if config is not None and hasattr(config, "to_dict"):
        config_sig = json.dumps({k: v for k, v in config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED},
                                sort_keys=True, default=str)
    return type(inner), repr(inner), tensors, config_sig


def logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits
    return output[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize()


class FusedForward:
    """Stacked weights and buffers of k same-architecture members and the vmapped forward over them."""

    def __init__(self, members: Sequence[nn.Module], compile: bool):
        self.params, self.buffers = torch.func.stack_module_state(list(members))
        first = members[0]
        memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=False)
                for p in first.parameters()}
        memo.update({id(b): torch.empty_like(b, device="meta") for b in first.buffers()})
        self.base = copy.deepcopy(first, memo)  # the module tree without weights: functional_call supplies them
        base = self.base

        def one(params, buffers, inputs):
            return logits_of(torch.func.functional_call(base, (params, buffers), (), inputs))

        self.eager = torch.vmap(one, in_dims=(0, 0, None))
        self.compiled = torch.compile(self.eager) if compile else None
        self.compile_error: str | None = None

    def __call__(self, inputs: dict[str, Any]) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(self.params, self.buffers, inputs)
            except Exception as e:  # e.g. no C++ compiler for inductor on this machine
                self.compile_error = f"{type(e).__name__}: {e}"
                self.compiled = None
                warnings.warn(f"torch.compile of the fused teacher forward failed ({self.compile_error}); running "
                              "the fused path eagerly", RuntimeWarning, stacklevel=3)
        return self.eager(self.params, self.buffers, inputs)


def time_fusion(run, inputs: dict[str, Any], device: torch.device, repeats: int):
    """(the faster path, {"fused": s, "loop": s, "fused/loop": median ratio} or None, that path's output) of
    `run(path, inputs)` on one batch: one warm-up, then `repeats` rounds timing both paths back to back.

    The fused path is kept only when its output agrees with the loop's and it takes under FUSED_MARGIN
    of the loop's time: it holds a second, stacked copy of the weights, so it must win clearly.
    """
    loop_out = run("loop", inputs)
    try:
        fused_out = run("fused", inputs)  # warm-up (and compilation)
    except Exception as e:  # an architecture whose forward does not vmap
        warnings.warn(f"teacher fusion: the fused forward failed on this model ({type(e).__name__}: {e}); "
                      "using the loop over the teachers", RuntimeWarning, stacklevel=4)
        return "loop", None, loop_out
    scale = 1.0 + loop_out.float().abs().max().item()
    error = (fused_out.float() - loop_out.float()).abs().max().item()
    if not error <= FUSION_CHECK_TOL * scale:
        warnings.warn(f"teacher fusion: the fused forward disagrees with the loop (max difference {error:.3g}); "
                      "using the loop over the teachers", RuntimeWarning, stacklevel=4)
        return "loop", None, loop_out
    times: dict[str, list[float]] = {"fused": [], "loop": []}
    for round_ in range(repeats):
        # Alternate which path goes first, so neither always runs right after the other.
        for path in (("fused", "loop") if round_ % 2 == 0 else ("loop", "fused")):
            synchronize(device)
            start = time.perf_counter()
            run(path, inputs)
            synchronize(device)
            times[path].append(time.perf_counter() - start)
    # Paired comparison: each round times both paths back to back, so load that changes slowly (other
    # processes on a shared machine) cancels in the per-round ratio; the median discards outlier rounds.
    ratio = statistics.median(f / max(lp, 1e-12) for f, lp in zip(times["fused"], times["loop"]))
    summary = {**{path: statistics.median(ts) for path, ts in times.items()}, "fused/loop": ratio}
    path = "fused" if ratio < FUSED_MARGIN else "loop"
    return path, summary, fused_out if path == "fused" else loop_out


__all__ = ["FUSED_MARGIN", "FUSION_CHECK_TOL", "FusedForward", "architecture_signature", "logits_of", "synchronize",
           "time_fusion"]
