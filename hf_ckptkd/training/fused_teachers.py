"""Members of one architecture run as one batched forward: their weights and buffers stacked with
`torch.func.stack_module_state`, a weightless ("meta") copy of the first member called with
`torch.func.functional_call` under `torch.vmap` (the model-ensembling recipe of the PyTorch docs).
`TeacherEnsemble` decides when to use it (see teachers.py)."""

from __future__ import annotations

import copy
import itertools
import json
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


__all__ = ["FUSED_MARGIN", "FUSION_CHECK_TOL", "FusedForward", "architecture_signature", "logits_of", "synchronize"]
