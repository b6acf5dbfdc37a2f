"""Teachers sharded as the student is: the decision from accelerate's plugins, the FSDP units and ZeRO-3 config of
a teacher, and sharded teachers over two gloo processes giving what whole ones give."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

from hf_ckptkd.models import build_causal_lm, build_model
from hf_ckptkd.training.teacher_sharding import TeacherShardingError, fsdp_units, sharding_of, zero3_inference_config

ROOT = Path(__file__).resolve().parents[2]
DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


def _fsdp(**kwargs):
    return FullyShardedDataParallelPlugin(**kwargs)


@pytest.mark.parametrize("distributed,plugins,kind,why", [
    (DistributedType.FSDP, {"fsdp_plugin": _fsdp(fsdp_version=2)}, "fsdp2", "FSDP2"),
    (DistributedType.FSDP, {"fsdp_plugin": _fsdp(fsdp_version=1)}, "fsdp1", "FULL_SHARD"),
    (DistributedType.FSDP, {"fsdp_plugin": _fsdp(fsdp_version=1, sharding_strategy="HYBRID_SHARD")}, "fsdp1",
     "HYBRID_SHARD"),
    (DistributedType.FSDP, {"fsdp_plugin": _fsdp(fsdp_version=1, sharding_strategy="SHARD_GRAD_OP")}, None,
     "SHARD_GRAD_OP keeps the student's parameters whole"),
    (DistributedType.FSDP, {"fsdp_plugin": _fsdp(fsdp_version=1, sharding_strategy="NO_SHARD")}, None, "NO_SHARD"),
    (DistributedType.DEEPSPEED, {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=3)}, "zero3", "ZeRO-3"),
    (DistributedType.DEEPSPEED, {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=2)}, None,
     "ZeRO-2 keeps the student's parameters whole"),
    (DistributedType.DEEPSPEED, {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=1)}, None, "ZeRO-1"),
    (DistributedType.MULTI_GPU, {}, None, "MULTI_GPU keeps whole models"),
    (DistributedType.NO, {}, None, "whole copy"),
])
def test_teachers_are_sharded_exactly_when_the_students_parameters_are(distributed, plugins, kind, why):
    sharding = sharding_of(distributed, **plugins)
    assert sharding.kind == kind and why in sharding.reason


def test_a_teacher_is_split_into_its_own_layers_or_refused_naming_the_option():
    gpt2 = build_causal_lm("transformers:GPT2Config", vocab_size=32, model_kwargs={"n_layer": 3, "n_embd": 16,
                                                                                   "n_head": 2, "n_positions": 8})
    names = lambda units: [type(u).__name__ for u in units]  # noqa: E731
    # the student's layer class is not in this teacher: its own transformer blocks are its units
    plugin = _fsdp(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                   transformer_cls_names_to_wrap=["LlamaDecoderLayer"])
    assert names(fsdp_units(gpt2, plugin, "gpt2")) == ["GPT2Block"] * 3
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]  # the student's plugin is left as it was
    assert names(fsdp_units(gpt2, _fsdp(fsdp_version=2), "gpt2")) == ["GPT2Block"] * 3  # NO_WRAP: still per layer
    by_size = fsdp_units(gpt2, _fsdp(fsdp_version=1, auto_wrap_policy="size_based_wrap", min_num_params=2000), "gpt2")
    assert by_size and all(sum(p.numel() for p in u.parameters()) > 2000 for u in by_size)
    resnet = build_model("timm:resnet10t", num_labels=3)  # declares no layers to split into
    with pytest.raises(TeacherShardingError, match=r"teacher resnet has none of the layer classes that "
                                                   r"fsdp_transformer_layer_cls_to_wrap names \(LlamaDecoderLayer\).*"
                                                   r"add its block class.*SIZE_BASED_WRAP"):
        fsdp_units(resnet, plugin, "resnet")


def test_a_zero3_teacher_gets_a_forward_only_config_from_the_students():
    plugin = DeepSpeedPlugin(hf_ds_config={"zero_optimization": {
        "stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"},
        "stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto", "sub_group_size": "auto"}})
    teacher = build_causal_lm("transformers:GPT2Config", vocab_size=32, model_kwargs={"n_layer": 1, "n_embd": 16,
                                                                                      "n_head": 2, "n_positions": 8})
    config = zero3_inference_config(teacher.to(torch.bfloat16), sharding_of(DistributedType.DEEPSPEED,
                                                                             deepspeed_plugin=plugin).zero_config)
    assert config["zero_optimization"] == {"stage": 3, "offload_param": {"device": "cpu"},
                                           "stage3_prefetch_bucket_size": int(0.9 * 16 * 16),
                                           "stage3_param_persistence_threshold": 160}
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert "optimizer" not in config and "auto" not in json.dumps(config)


@pytest.mark.slow
def test_sharded_teachers_give_what_whole_ones_give_over_two_processes(tmp_path):
    """FSDP2 and FSDP1 (and ZeRO-3 where deepspeed is installed) on two gloo processes."""
    from text_data import write_tiny_text_set

    write_tiny_text_set(tmp_path)
    kinds = ["fsdp2", "fsdp1"] + (["zero3"] if DEEPSPEED else [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(ROOT / "tests" / "scripts" / "sharded_teachers_run.py"), str(tmp_path), str(tmp_path / "tokenizer"),
               *kinds]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for kind in kinds:
        for rank in (0, 1):
            result = json.loads((tmp_path / f"{kind}-rank{rank}.json").read_text())
            assert result["kind"] == kind and result["world"] == 2 and result["fusion"] == "loop"
            assert result["fractions"] == [pytest.approx(0.5, abs=0.02)] * 2  # each process holds half of each teacher
            assert result["logits_error"] < 1e-5 and result["grad_error"] < 1e-6
            assert result["loss"] == pytest.approx(result["reference_loss"], rel=1e-6)
            # the top-k cache the sharded teachers wrote in step, from shards of unequal lengths
            assert result["cache_shards"] == 2 and result["cache_error"] == 0.0 and result["cache_same_ids"]
            refused = result["refused"]
            assert "the teachers' tokenizer (16 tokens) and the student's (16 tokens) differ" in refused["tokenizer"]
            assert ("teachers t1 are already wrapped by FSDP or DeepSpeed but whole are not; an ensemble runs one way"
                    in refused["mixed"])
            assert f"teacher_fusion='fused' stacks whole copies" in refused["fused"] and kind in refused["fused"]
