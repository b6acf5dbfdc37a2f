"""Distil a tiny causal LM for two steps and write its final weights' sums: run alone or under `accelerate launch`.

usage: lm_distill_run.py OUT_DIR TEACHER_DIR --batch_size B [--grad_accum G] [--losses L ...]

The sequences carry different numbers of labelled tokens (the rest -100), so a loss averaged per
micro-batch or per process would weigh tokens unequally; averaged per labelled token of the whole
optimizer step, every layout of the same 8 sequences gives the same update. One run per user loss
named, each from the same initial student: `model` is the model's own loss, `smoothed_tokens` a
`compute_loss_func` (tests/user_losses.py); the KD term must be reduced as that loss is.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, default_data_collator

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, exit_launched_process
from hf_ckptkd.models import build_causal_lm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for user_losses
from user_losses import USER_LOSSES  # noqa: E402


def sequences(vocab: int, n: int = 8, length: int = 12) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(4, vocab, (length,), generator=g)
        labels = ids.clone()
        labels[2 + (i * 5) % (length - 2):] = -100  # from 2 to 11 labelled positions
        rows.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("teacher")
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--grad_accum", type=int, default=1)
    parser.add_argument("--losses", nargs="+", choices=["model", "smoothed_tokens"], default=["model"])
    a = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(a.teacher)
    sums = {}
    for loss in a.losses:
        torch.manual_seed(0)
        student = build_causal_lm("transformers:GPT2Config", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  model_kwargs=dict(n_layer=1, n_embd=16, n_head=2, n_positions=16, resid_pdrop=0.0,
                                                    embd_pdrop=0.0, attn_pdrop=0.0))
        args = CheckpointKDConfig(output_dir=f"{a.out_dir}/{loss}", per_device_train_batch_size=a.batch_size,
                                  gradient_accumulation_steps=a.grad_accum, max_steps=2, learning_rate=0.5, optim="sgd",
                                  lr_scheduler_type="constant", max_grad_norm=0.0, report_to="none", save_strategy="no",
                                  logging_steps=1, teachers=[a.teacher], alpha=0.5, temperature=2.0, kd_chunk_size=5,
                                  dataloader_drop_last=True, seed=0)
        trainer = CheckpointKDTrainer(model=student, args=args, train_dataset=sequences(len(tokenizer)) * 2,
                                      data_collator=default_data_collator, processing_class=tokenizer,
                                      compute_loss_func=USER_LOSSES[loss])
        trainer.train()
        sums[loss] = {name: float(p.detach().double().sum()) for name, p in trainer.model.named_parameters()}
    if trainer.is_world_process_zero():
        Path(a.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(a.out_dir) / "weights.json").write_text(json.dumps({"world_size": trainer.args.world_size, "sums": sums}))
    # A gloo worker left to the interpreter's teardown can abort ("terminate called without an active exception").
    exit_launched_process()


if __name__ == "__main__":
    main()
