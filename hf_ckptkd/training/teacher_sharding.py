"""Teachers split over the processes as the student is: FSDP (1 or 2, accelerate's plugin) or DeepSpeed ZeRO-3.

`sharding_of` decides from what accelerate was launched with (`sharding_for(accelerator)` reads it
from a live `Accelerator`): the teachers are sharded exactly when the student's parameters are
sharded between steps, i.e. under FSDP2, FSDP1's FULL_SHARD or HYBRID_SHARD, and ZeRO-3. Under
DDP, FSDP1's SHARD_GRAD_OP or NO_SHARD and ZeRO-1/2 every process holds the student's whole
parameters, and the teachers stay whole copies too.

`shard_teachers` then makes every member of a `TeacherEnsemble` its own FSDP root (FSDP1 wrapper,
or FSDP2 `fully_shard` in place) or ZeRO-3 engine, with the student's plugin settings (mesh,
sharding strategy, CPU offload), its transformer layers units of their own, in eval mode, without
gradients. Two things differ from the student, on purpose: a teacher reshards after every forward
(it has no backward, so nothing gathered would ever be used again), and it runs in `teacher_dtype`
with no mixed-precision policy. Its layer classes are those of the plugin's
`transformer_cls_names_to_wrap` that it has, else its own `_no_split_modules` (a teacher may be
another architecture than the student); the student's plugin is never modified. The teachers
never go through `Accelerator.prepare`, so checkpoints never hold them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel, MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.wrap import ModuleWrapPolicy, size_based_auto_wrap_policy

logger = logging.getLogger(__name__)

# FSDP1 strategies that keep parameters sharded between steps; the others keep whole copies in each process.
FSDP1_SHARDED_STRATEGIES = ("FULL_SHARD", "HYBRID_SHARD")


class TeacherShardingError(ValueError):
    """Teachers that cannot be sharded the way the student is, named with the option to change."""


@dataclass(frozen=True)
class TeacherSharding:
    """How each process holds the teachers: `kind` None (whole copies), "fsdp1", "fsdp2" or "zero3", and why."""

    kind: str | None
    reason: str
    fsdp_plugin: Any = None        # accelerate's FullyShardedDataParallelPlugin (fsdp1, fsdp2)
    zero_config: dict | None = None  # the student's DeepSpeed "zero_optimization" section (zero3)


def sharding_of(distributed_type, fsdp_plugin=None, deepspeed_plugin=None) -> TeacherSharding:
    """How to hold the teachers for a student run under `distributed_type` (accelerate's `DistributedType`)."""
    kind = getattr(distributed_type, "value", str(distributed_type)).upper()
    if kind == "FSDP":
        if fsdp_plugin.fsdp_version == 2:
            return TeacherSharding("fsdp2", "the student runs under FSDP2: teachers are fully_shard-ed like it",
                                   fsdp_plugin=fsdp_plugin)
        strategy = fsdp_plugin.sharding_strategy or fsdp_plugin.reshard_after_forward
        name = getattr(strategy, "name", str(strategy))
        if name in FSDP1_SHARDED_STRATEGIES:
            return TeacherSharding("fsdp1", f"the student runs under FSDP with {name}: teachers are wrapped like it",
                                   fsdp_plugin=fsdp_plugin)
        return TeacherSharding(None, f"FSDP's {name} keeps the student's parameters whole in every process during a "
                                     "step, so the teachers stay whole copies too")
    if kind == "DEEPSPEED":
        stage = int(deepspeed_plugin.zero_stage)
        if stage == 3:
            zero = dict(deepspeed_plugin.deepspeed_config.get("zero_optimization", {}))
            return TeacherSharding("zero3", "the student runs under DeepSpeed ZeRO-3: teachers are partitioned like it",
                                   zero_config=zero)
        return TeacherSharding(None, f"DeepSpeed ZeRO-{stage} keeps the student's parameters whole in every process, "
                                     "so the teachers stay whole copies too")
    return TeacherSharding(None, f"{kind} keeps whole models in every process; each holds a whole copy of the teachers")


def sharding_for(accelerator) -> TeacherSharding:
    """`sharding_of` what `accelerator` runs under."""
    state = accelerator.state
    return sharding_of(state.distributed_type, getattr(state, "fsdp_plugin", None),
                       getattr(state, "deepspeed_plugin", None))


# --- which modules become units of their own -----------------------------------------------------

def _layer_classes(member: nn.Module, names: Sequence[str] | None, reference: str) -> set[type]:
    """The classes of `member` that the plugin's layer names name, else those of its own `_no_split_modules`."""
    present = {type(m).__name__: type(m) for m in member.modules()}
    named = {present[n] for n in names or () if n in present}
    if named:
        return named
    own = {present[n] for n in getattr(member, "_no_split_modules", None) or () if n in present}
    if names and not own:
        raise TeacherShardingError(
            f"teacher {reference} has none of the layer classes that fsdp_transformer_layer_cls_to_wrap names "
            f"({', '.join(names)}) and does not declare its own (_no_split_modules), so FSDP cannot split it into "
            "layers; add its block class to fsdp_transformer_layer_cls_to_wrap in the accelerate FSDP config "
            f"(its largest repeated modules: {', '.join(_repeated_classes(member)) or 'none'}), or set "
            "fsdp_auto_wrap_policy: SIZE_BASED_WRAP")
    if names:
        logger.info("teacher %s: none of fsdp_transformer_layer_cls_to_wrap (%s) is in it; its own layers %s are its "
                    "FSDP units", reference, ", ".join(names), ", ".join(sorted(c.__name__ for c in own)))
    return own


def _repeated_classes(member: nn.Module) -> list[str]:
    counts: dict[str, int] = {}
    for module in member.modules():
        if list(module.children()):
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
    return [name for name, n in sorted(counts.items(), key=lambda item: -item[1]) if n > 1][:3]


def fsdp_units(member: nn.Module, plugin, reference: str) -> list[nn.Module]:
    """The submodules that get their own FSDP unit, innermost first (the member itself is always the root unit)."""
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is size_based_auto_wrap_policy and plugin.min_num_params:
        found = [m for m in member.modules() if m is not member
                 and sum(p.numel() for p in m.parameters()) > plugin.min_num_params]
    else:  # the transformer policy or none: a forward-only teacher is never better off as one unit
        classes = _layer_classes(member, plugin.transformer_cls_names_to_wrap if policy is not None else None,
                                 reference)
        found = [m for m in member.modules() if m is not member and isinstance(m, tuple(classes))]
    if not found:
        logger.warning("teacher %s is one FSDP unit (no layers to split it into): each forward gathers all of its "
                       "weights at once", reference)
    return sorted(found, key=lambda m: -_depth(member, m))


def _depth(root: nn.Module, module: nn.Module) -> int:
    for name, m in root.named_modules():
        if m is module:
            return name.count(".") + 1
    return 0


# --- the sharders -----------------------------------------------------------------------------

def _shard_fsdp2(member: nn.Module, sharding: TeacherSharding, device: torch.device, mesh, reference: str):
    plugin = sharding.fsdp_plugin
    options = {"mesh": mesh, "reshard_after_forward": True, "offload_policy": plugin.cpu_offload,
               "mp_policy": MixedPrecisionPolicy()}
    for unit in fsdp_units(member, plugin, reference):
        fully_shard(unit, **options)
    fully_shard(member, **options)
    return member


def _shard_fsdp1(member: nn.Module, sharding: TeacherSharding, device: torch.device, mesh, reference: str):
    plugin = sharding.fsdp_plugin
    units = fsdp_units(member, plugin, reference)
    return FullyShardedDataParallel(
        member, sharding_strategy=plugin.sharding_strategy or plugin.reshard_after_forward,
        cpu_offload=plugin.cpu_offload, auto_wrap_policy=ModuleWrapPolicy({type(u) for u in units}) if units else None,
        device_id=device, limit_all_gathers=plugin.limit_all_gathers, forward_prefetch=plugin.forward_prefetch,
        sync_module_states=plugin.sync_module_states, use_orig_params=True)


def _shard_zero3(member: nn.Module, sharding: TeacherSharding, device: torch.device, mesh, reference: str):
    try:
        import deepspeed  # optional: the `deepspeed` extra; a ZeRO-3 student run has it
    except ImportError:
        raise TeacherShardingError("the student runs under DeepSpeed ZeRO-3, which needs deepspeed: pip install "
                                   "'hf-ckptkd[deepspeed]'") from None
    engine, *_ = deepspeed.initialize(model=member, config=zero3_inference_config(member, sharding.zero_config))
    return engine


def zero3_inference_config(member: nn.Module, zero: dict | None) -> dict:
    """A forward-only DeepSpeed config from the student's "zero_optimization": stage 3, its parameter offload and
    limits; "auto" values set from the teacher's hidden size as transformers sets them for a model."""
    zero = {k: v for k, v in (zero or {}).items() if k not in ("offload_optimizer", "stage")}
    hidden = getattr(getattr(member, "config", None), "hidden_size", None)
    sized = {"reduce_bucket_size": lambda h: h * h, "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
             "stage3_param_persistence_threshold": lambda h: 10 * h}
    for name, value in list(zero.items()):
        if value == "auto":
            if hidden is not None and name in sized:
                zero[name] = sized[name](hidden)
            else:
                del zero[name]
    dtype = next(member.parameters()).dtype
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "zero_optimization": {**zero, "stage": 3},
            "bf16": {"enabled": dtype == torch.bfloat16}, "fp16": {"enabled": dtype == torch.float16}}


SHARDERS = {"fsdp1": _shard_fsdp1, "fsdp2": _shard_fsdp2, "zero3": _shard_zero3}


def is_sharded(module: nn.Module) -> bool:
    """Whether a model is already wrapped or partitioned by FSDP (1 or 2) or DeepSpeed ZeRO-3."""
    if isinstance(module, (FSDPModule, FullyShardedDataParallel)) or type(module).__name__ == "DeepSpeedEngine":
        return True
    return any(hasattr(p, "ds_id") for p in module.parameters())


def check_one_way(members: Sequence[nn.Module], references: Sequence[str]) -> None:
    """Refuse an ensemble of which some members are sharded already and others are not."""
    sharded = [r for m, r in zip(members, references) if is_sharded(m)]
    if sharded and len(sharded) != len(members):
        whole = [r for m, r in zip(members, references) if not is_sharded(m)]
        raise TeacherShardingError(
            f"teachers {', '.join(sharded)} are already wrapped by FSDP or DeepSpeed but {', '.join(whole)} are not; "
            "an ensemble runs one way: pass every teacher unwrapped (the trainer shards them the way the student "
            "is sharded) or wrap all of them yourself")


def shard_teachers(ensemble, sharding: TeacherSharding, *, device: torch.device, mesh=None):
    """Shard every member of `ensemble` (a `TeacherEnsemble`) as `sharding` says, in place; returns it.

    `device` is this process's device (the teachers compute there); `mesh` the FSDP2 device mesh
    (default: all processes on `device`'s type).
    """
    check_one_way(list(ensemble.members), ensemble.references)
    if sharding.kind is None or any(is_sharded(m) for m in ensemble.members):
        return ensemble
    if ensemble.fusion == "fused" and len(ensemble.members) > 1:
        raise TeacherShardingError(
            f"teacher_fusion='fused' stacks whole copies of the teachers' weights, which sharded teachers ({sharding.kind}"
            f") do not have; use teacher_fusion='auto' or 'loop' (both run sharded teachers one after another)")
    if sharding.kind == "fsdp2" and mesh is None:
        mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for i, member in enumerate(ensemble.members):
        sharded = SHARDERS[sharding.kind](member, sharding, device, mesh, ensemble.references[i])
        sharded.eval()  # (DeepSpeed's engine returns None from eval)
        ensemble.members[i] = sharded.requires_grad_(False)
    ensemble.mark_sharded(sharding.kind, device)
    logger.info("teachers sharded (%s): %s", sharding.kind, sharding.reason)
    return ensemble


def local_fraction(module: nn.Module) -> float:
    """The fraction of a sharded model's parameters this process holds (1.0 for a whole model)."""
    flat = [m._flat_param for m in FullyShardedDataParallel.fsdp_modules(module) if m._flat_param is not None]
    if flat:  # FSDP1: each unit's parameters are one flat tensor, of which this process holds a slice
        return sum(f.numel() for f in flat) / sum(f._unpadded_unsharded_size.numel() for f in flat)
    local = total = 0
    for p in module.parameters():
        if hasattr(p, "ds_numel"):  # ZeRO-3: this process's partition is ds_tensor
            local, total = local + p.ds_tensor.numel(), total + p.ds_numel
        elif hasattr(p, "to_local"):  # FSDP2: a DTensor
            local, total = local + p.to_local().numel(), total + p.numel()
        else:
            local, total = local + p.numel(), total + p.numel()
    return local / max(1, total)


__all__ = ["SHARDERS", "TeacherSharding", "TeacherShardingError", "check_one_way", "fsdp_units", "is_sharded",
           "local_fraction", "shard_teachers", "sharding_for", "sharding_of", "zero3_inference_config"]
