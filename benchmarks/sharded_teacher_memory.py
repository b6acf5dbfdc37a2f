"""Peak GPU memory per rank of a KD step with the teacher whole or sharded (FSDP2, FSDP1, ZeRO-3), and the
full CheckpointKDTrainer path under accelerate's FSDP2 plugin or a DeepSpeed ZeRO-3 config.

Run under torchrun on GPUs (benchmarks/gpu_sharded_teacher.sh does):

    torchrun --nproc_per_node N benchmarks/sharded_teacher_memory.py OUT_DIR step  MODE [--offload]
    python benchmarks/sharded_teacher_memory.py OUT_DIR teacher        # once, before the trainer runs
    torchrun --nproc_per_node N benchmarks/sharded_teacher_memory.py OUT_DIR trainer fsdp2|zero3 [--offload]

`step` MODE is whole, fsdp2, fsdp1 or zero3: a GPT-2-style teacher (24 layers x 1024, 32,000 tokens, bfloat16)
is built on every rank, sharded by `shard_teachers` with the plugin a student run would have (or kept
whole), and one KD step (teacher forward, a 4 x 512 student's forward with its own loss, the token-level
KD term, composed as the trainer composes them, backward) runs on 4 x 512 tokens per rank. Each rank
writes OUT_DIR/<case>-rank<r>.json: the teacher's memory at rest, the step's peak
(`torch.cuda.max_memory_allocated`), the share of the teacher it holds and the largest difference of its
logits from the whole teacher's. With one GPU the sharded teacher can only be
offloaded (`--offload`: its shards live in host memory and one layer at a time comes to the GPU), since
two ranks cannot share one GPU under NCCL.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer
from hf_ckptkd.models import build_causal_lm
from hf_ckptkd.tasks import TASKS
from hf_ckptkd.training.teacher_sharding import local_fraction, shard_teachers, sharding_of
from hf_ckptkd.training.teachers import TeacherEnsemble

VOCAB, SEQ, BATCH = 32000, 512, 4
TEACHER = {"n_layer": 24, "n_embd": 1024, "n_head": 16, "n_positions": SEQ}
STUDENT = {"n_layer": 4, "n_embd": 512, "n_head": 8, "n_positions": SEQ}


def lm(kwargs: dict, seed: int):
    torch.manual_seed(seed)
    return build_causal_lm("transformers:GPT2Config", vocab_size=VOCAB, pad_token_id=0,
                           model_kwargs={**kwargs, "bos_token_id": 1, "eos_token_id": 2})


def batch(device) -> dict:
    ids = torch.randint(3, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1)).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def plugin_sharding(mode: str, offload: bool):
    if mode == "zero3":
        zero = {"stage": 3, **({"offload_param": {"device": "cpu"}} if offload else {})}
        return sharding_of(DistributedType.DEEPSPEED, deepspeed_plugin=DeepSpeedPlugin(
            hf_ds_config={"zero_optimization": zero, "train_micro_batch_size_per_gpu": 1}))
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2 if mode == "fsdp2" else 1, cpu_offload=offload,
                                            auto_wrap_policy="transformer_based_wrap")
    return sharding_of(DistributedType.FSDP, plugin)


def step_case(out: Path, mode: str, offload: bool) -> None:
    accelerator = Accelerator()
    device = accelerator.device
    inputs = batch(device)
    whole = TeacherEnsemble([lm(TEACHER, 0)], dtype="bfloat16", device=device)
    reference = whole(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    del whole
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    teachers = TeacherEnsemble([lm(TEACHER, 0)], dtype="bfloat16", device=None if mode != "whole" else device)
    if mode != "whole":
        shard_teachers(teachers, plugin_sharding(mode, offload), device=device)
    at_rest = torch.cuda.memory_allocated() - base
    student = lm(STUDENT, 1).to(device).train()
    args = CheckpointKDConfig(output_dir=str(out / "unused"), alpha=0.5, temperature=1.0, report_to="none")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    logits = teachers(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    own = student(**inputs)  # the student's own next-token loss L, and the logits of that forward
    kd = TASKS["causal-lm"].kd_term(own.logits, logits, inputs["labels"], args=args)
    loss = args.alpha * own.loss + (1 - args.alpha) * kd.total / kd.items  # as the trainer composes them
    loss.backward()
    torch.cuda.synchronize()
    case = mode + ("-offload" if offload else "")
    result = {"case": case, "world": accelerator.num_processes, "device": torch.cuda.get_device_name(),
              "teacher_at_rest_MiB": at_rest / 2**20, "step_peak_over_start_MiB": (torch.cuda.max_memory_allocated() - before) / 2**20,
              "step_peak_MiB": torch.cuda.max_memory_allocated() / 2**20,
              "teacher_share": local_fraction(teachers.members[0]), "sharding": teachers.sharding,
              "max_logit_difference": float((logits - reference).abs().max()), "loss": float(loss)}
    (out / f"step-{case}-rank{accelerator.process_index}.json").write_text(json.dumps(result, indent=2))


def trainer_case(out: Path, mode: str, offload: bool) -> None:
    """CheckpointKDTrainer as a user runs it: the student under FSDP2 or ZeRO-3 from the training arguments."""
    ids = torch.randint(3, VOCAB, (16, SEQ), generator=torch.Generator().manual_seed(2))
    data = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()} for row in ids]
    teacher_dir = out / "teacher"  # written beforehand by `... OUT_DIR teacher`
    if mode == "fsdp2":
        parallel = {"fsdp": "full_shard" + (" offload" if offload else ""),
                    "fsdp_config": {"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["GPT2Block"]}}
    else:
        zero = {"stage": 3, **({"offload_param": {"device": "cpu"}} if offload else {})}
        parallel = {"deepspeed": {"zero_optimization": zero, "bf16": {"enabled": True},
                                  "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}}
    args = CheckpointKDConfig(output_dir=str(out / f"trainer-{mode}"), max_steps=3, per_device_train_batch_size=BATCH,
                              bf16=True, report_to="none", save_strategy="no", logging_steps=1, max_grad_norm=0.0,
                              teachers=[str(teacher_dir)], teacher_dtype="bfloat16", temperature=1.0, **parallel)
    trainer = CheckpointKDTrainer(model=lm(STUDENT, 1), args=args, train_dataset=data)
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss_kd" in h]
    result = {"case": f"trainer-{mode}" + ("-offload" if offload else ""), "world": trainer.accelerator.num_processes,
              "distributed_type": str(trainer.accelerator.distributed_type), "sharding": trainer.teachers.sharding,
              "teacher_share": local_fraction(trainer.teachers.members[0]),
              "peak_MiB": torch.cuda.max_memory_allocated() / 2**20, "loss_kd": [h["loss_kd"] for h in logs]}
    (out / f"{result['case']}-rank{trainer.accelerator.process_index}.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("what", choices=["teacher", "step", "trainer"])
    parser.add_argument("mode", nargs="?", default="whole", choices=["whole", "fsdp2", "fsdp1", "zero3"])
    parser.add_argument("--offload", action="store_true")
    a = parser.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if a.what == "teacher":  # the trainer runs load it as a user's teacher folder
        lm(TEACHER, 0).to(torch.bfloat16).save_pretrained(out / "teacher")
    else:
        (step_case if a.what == "step" else trainer_case)(out, a.mode, a.offload)


if __name__ == "__main__":
    main()
