"""Shard a two-member causal-LM ensemble over the processes of `torchrun` (gloo, CPU) and compare it with the
whole ensemble: logits, the KD term and its gradient, the share of weights each process holds, and a top-k
cache written by the sharded teachers in step; and what is refused: a student with another tokenizer, an
ensemble of sharded and whole members, the fused forward over sharded members.

usage: torchrun --nproc_per_node 2 sharded_teachers_run.py OUT_DIR TOKENIZER_DIR KIND [KIND ...]
(KIND: fsdp1, fsdp2, zero3)

Each process writes OUT_DIR/<kind>-rank<r>.json.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.device_mesh import init_device_mesh
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from hf_ckptkd import exit_launched_process
from hf_ckptkd.models import build_causal_lm
from hf_ckptkd.tasks.losses import token_kd
from hf_ckptkd.training.teacher_checks import LabelSpaceError, check_label_space
from hf_ckptkd.training.teacher_sharding import (
    TeacherShardingError,
    check_one_way,
    local_fraction,
    shard_teachers,
    sharding_of,
)
from hf_ckptkd.training.teachers import TeacherEnsemble
from hf_ckptkd.training.topk_cache import cache_key
from hf_ckptkd.training.topk_cache_writer import write_topk_cache

VOCAB = 16  # the tiny text set's word-level tokenizer


def lm(seed: int, **kwargs):
    torch.manual_seed(seed)
    return build_causal_lm("transformers:GPT2Config", vocab_size=VOCAB, pad_token_id=0,
                           model_kwargs={"n_layer": 2, "n_embd": 16, "n_head": 2, "n_positions": 16, "bos_token_id": 1,
                                         "eos_token_id": 2, **kwargs})


def ensemble(fusion="auto"):
    return TeacherEnsemble([lm(1), lm(2)], mode="mean_probs", temperature=2.0, references=["t1", "t2"], fusion=fusion)


def permuted(tokenizer):
    """A tokenizer with the same tokens under other ids."""
    vocab = tokenizer.get_vocab()
    ids = dict(zip(sorted(vocab), sorted(vocab.values(), reverse=True)))
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(ids, unk_token="[UNK]")),
                                   unk_token="[UNK]", pad_token="[PAD]")


def refusal(check) -> str:
    try:
        check()
    except (LabelSpaceError, TeacherShardingError) as e:
        return str(e)
    return ""


def sharding(kind: str):
    if kind == "zero3":
        return sharding_of(DistributedType.DEEPSPEED, deepspeed_plugin=DeepSpeedPlugin(zero_stage=3))
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2 if kind == "fsdp2" else 1,
                                            auto_wrap_policy="transformer_based_wrap")
    return sharding_of(DistributedType.FSDP, plugin)


def examples():
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(4, VOCAB, (int(n),), generator=g).tolist()} for n in (9, 12, 5, 12, 7, 3, 11)]


def main() -> None:
    out, tokenizer, kinds = Path(sys.argv[1]), AutoTokenizer.from_pretrained(sys.argv[2]), sys.argv[3:]
    assert len(tokenizer) == VOCAB
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    batch = collate(examples()[:4])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    whole = ensemble()
    reference = whole(**inputs)
    student = lm(3, n_layer=1).eval()  # no dropout: both losses see one student
    ref_terms = token_kd(student(**inputs).logits, reference, batch["labels"], temperature=2.0, kind="jsd", chunk_size=7)
    ref_grad = torch.autograd.grad(ref_terms.total, student.lm_head.weight)[0]
    key = cache_key(dataset="d", teachers=[("t1", "a"), ("t2", "b")], mode="mean_probs", weights=[0.5, 0.5],
                    dtype="float32", temperature=2.0, top_k=8)
    whole_cache = write_topk_cache(out / f"whole-cache-{rank}", key, whole, examples(), batch_size=2)
    for kind in kinds:
        plan = sharding(kind)
        teachers = shard_teachers(ensemble(), plan, device=torch.device("cpu"),
                                  mesh=init_device_mesh("cpu", (accelerator.num_processes,)))
        logits = teachers(**inputs)
        terms = token_kd(student(**inputs).logits, logits, batch["labels"], temperature=2.0, kind="jsd", chunk_size=7)
        grad = torch.autograd.grad(terms.total, student.lm_head.weight)[0]
        refused = {
            "tokenizer": refusal(lambda: check_label_space(teachers, student, teacher_tokenizer=tokenizer,
                                                           student_tokenizer=permuted(tokenizer))),
            "mixed": refusal(lambda: check_one_way([teachers.members[0], lm(5)], ["t1", "whole"])),
            "fused": refusal(lambda: shard_teachers(ensemble("fused"), plan, device=torch.device("cpu"))),
        }
        # Two shards, of 4 and 3 examples, one per process, a batch per example: the processes run different
        # numbers of batches, and the writer must keep the sharded forwards in step.
        cache = write_topk_cache(out / f"{kind}-cache", key, teachers, examples(), batch_size=1,
                                 accelerator=accelerator, shard_positions=40)
        cache_error = max(float((cache[i].logprobs.float() - whole_cache[i].logprobs.float()).abs().max())
                          for i in range(len(cache)))
        same_ids = all(torch.equal(cache[i].ids, whole_cache[i].ids) for i in range(len(cache)))
        result = {"kind": teachers.sharding, "world": accelerator.num_processes,
                  "logits_error": float((logits - reference).abs().max()),
                  "loss": float(terms.total), "reference_loss": float(ref_terms.total),
                  "grad_error": float((grad - ref_grad).abs().max()),
                  "fractions": [local_fraction(m) for m in teachers.members], "fusion": teachers.fusion_used,
                  "refused": refused, "cache_error": cache_error, "cache_same_ids": same_ids,
                  "cache_shards": cache.manifest["num_shards"]}
        (out / f"{kind}-rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    # A gloo worker left to the interpreter's teardown can abort ("terminate called without an active exception").
    exit_launched_process()


if __name__ == "__main__":
    main()
