"""What token-level distillation of a causal LM costs per step, in time and in memory, beside its anchors.

Time, side by side in one run, with recipes/fortunes_lm.yaml's models (teacher GPT-2 3 layers x 96,
student 1 layer x 64, the fortunes tokenizer's 8,000 tokens), sequence length 256, batch 8:
  (a) student step alone (its own next-token loss), (b) teacher forward alone,
  (c) the KD step as the trainer runs it: `CheckpointKDTrainer.compute_loss` (the teachers' forward,
      the student's forward with its own next-token loss, the causal-LM task's token-level KD term
      on the logits of that forward), backward -> (c) / ((a) + (b)), goal <= 1.10; and the same with
      the KD term's chunk math under torch.compile (what `torch_compile=True` does to it);
  and three KD steps with one loss, the generalised JSD (beta 0.5, T = 1, no hard-label term):
  (j) ours (`kd_loss="jsd"`, chunked, through `compute_loss` with alpha 0: the student's own loss
      is still computed by its forward, weighted 0), (t) TRL's `generalized_jsd_loss` math written
      out as TRL's GKD trainer computes it (log-softmax of both full (batch, seq, vocab) logits, the
      mixture by logsumexp, `F.kl_div` per element, masked, summed over the labelled tokens), (l)
      Liger's chunked fused linear JSD (`liger_kernel.chunked_loss.LigerFusedLinearJSDLoss`, pure
      torch: it takes the last hidden states and the output layers' weights, so no logits are ever
      whole), when liger-kernel is importable (else left out, and said so).
Cases are timed interleaved (one repetition of each in turn); the ratio is the median over rounds
of the ratio within a round, so load from other processes hits both sides alike.

Memory, with a vocabulary of 32,000 and sequence length 512 (batch 4): the peak of (d) the
student step, (e) the teacher forward, (f) the KD step with the default chunk of 256 positions
and (g) the KD step in one chunk (every position at once) -> (f) / ((d) + (e)), goal <= 1.2, with
(g) beside it, and the three JSD steps (j), (t), (l). On a GPU the peaks are
`torch.cuda.max_memory_allocated`; on the CPU each case runs in a fresh process and its peak is
the rise of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) over its
resident set after set-up, with glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_) so that
freed tensors leave the process at once.

The cached path (`cache_teacher_logits=True`, top-k log-probabilities on disk), with the same models
and CheckpointKDTrainer over 64 sequences of 256 tokens (batch 8, one epoch each, interleaved
rounds): the time to write the cache (one teacher pass, as the first cached student runs it), its
bytes per token, and the epoch time of a student reading it against a plain student epoch (goal
<= 1.05) and one with the live teacher; each epoch is `Trainer.train()` from start to end.

    python benchmarks/lm_kd_step.py                 # all three parts (about ten minutes on 2 CPU cores)
    python benchmarks/lm_kd_step.py --repeats 3 --skip_memory --skip_cache     # or --skip_time
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import default_data_collator

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer
from hf_ckptkd.models import build_causal_lm
from hf_ckptkd.pipeline.recipe import load_recipe
from hf_ckptkd.training.teacher_logits import topk_key
from hf_ckptkd.training.teachers import TeacherEnsemble, load_teachers
from hf_ckptkd.training.topk_cache import TopKLogitsCache
from hf_ckptkd.training.topk_cache_writer import write_topk_cache

# The fortunes recipe's teacher and student (their position count follows the benchmark's sequence length).
RECIPE = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "fortunes_lm.yaml")
TEACHER = {k: v for k, v in RECIPE.teacher.model_kwargs.items() if k != "n_positions"}
STUDENT = {k: v for k, v in RECIPE.student.model_kwargs.items() if k != "n_positions"}


def models(vocab: int, seq: int):
    torch.manual_seed(0)
    teacher = build_causal_lm("transformers:GPT2Config", vocab_size=vocab, pad_token_id=0,
                              model_kwargs={**TEACHER, "n_positions": seq, "bos_token_id": 1, "eos_token_id": 2})
    student = build_causal_lm("transformers:GPT2Config", vocab_size=vocab, pad_token_id=0,
                              model_kwargs={**STUDENT, "n_positions": seq, "bos_token_id": 1, "eos_token_id": 2})
    return TeacherEnsemble([teacher]), student


def batch(vocab: int, seq: int, size: int, device) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, vocab, (size, seq), generator=torch.Generator().manual_seed(1)).to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def student_step(student, inputs) -> None:
    student(**inputs).loss.backward()
    student.zero_grad(set_to_none=True)


def teacher_forward(teachers, inputs) -> None:
    teachers(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


def kd_trainer(student, teachers, device, **settings) -> CheckpointKDTrainer:
    config = CheckpointKDConfig(output_dir=tempfile.mkdtemp(prefix="lm-kd-step-"), report_to="none",
                                use_cpu=device.type == "cpu", **{"alpha": 0.5, "temperature": 1.0, **settings})
    return CheckpointKDTrainer(model=student, args=config, teachers=teachers)


def kd_step(trainer, inputs) -> None:
    trainer.compute_loss(trainer.model, dict(inputs)).backward()
    trainer.model.zero_grad(set_to_none=True)


def trl_gkd_jsd(student_logits, teacher_logits, labels, beta: float = 0.5, temperature: float = 1.0):
    """TRL's GKD `generalized_jsd_loss` (0 < beta < 1), written out as TRL computes it, summed over labelled tokens
    and divided by their count; labels shifted as transformers shifts them."""
    student_logits, teacher_logits, labels = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    beta = torch.tensor(beta, dtype=s.dtype, device=s.device)
    mixture = torch.logsumexp(torch.stack([s + torch.log1p(-beta), t + torch.log(beta)]), dim=0)
    jsd = beta * F.kl_div(mixture, t, reduction="none", log_target=True) + \
        (1 - beta) * F.kl_div(mixture, s, reduction="none", log_target=True)
    mask = labels != -100
    return jsd[mask].sum() / mask.sum()


def jsd_step(kind: str, student, teachers, inputs, liger=None) -> None:
    """One anchor KD step with the generalised JSD (beta 0.5, T = 1, no hard-label term): TRL's math or Liger's."""
    model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    if kind == "liger":  # hidden states and output weights in, the loss chunked over positions inside
        teacher = teachers.members[0]
        with torch.no_grad():
            t_hidden = teacher.transformer(**model_inputs).last_hidden_state[:, :-1]
        s_hidden = student.transformer(**model_inputs).last_hidden_state[:, :-1]
        loss = liger(s_hidden.reshape(-1, s_hidden.shape[-1]), student.lm_head.weight,
                     t_hidden.reshape(-1, t_hidden.shape[-1]), teacher.lm_head.weight,
                     inputs["labels"][:, 1:].reshape(-1))
    else:
        loss = trl_gkd_jsd(student(**model_inputs).logits, teachers(**model_inputs), inputs["labels"])
    loss.backward()
    student.zero_grad(set_to_none=True)


def liger_jsd():
    """Liger's chunked fused linear JSD (no hard-label term), or None when liger-kernel is not importable."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    return LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, temperature=1.0,
                                   compiled=False, chunk_size=256)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_cases(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teachers, student = models(args.vocab, args.seq)
    teachers.to(device)
    student.to(device).train()
    inputs = batch(args.vocab, args.seq, args.batch_size, device)
    eager, compiled = kd_trainer(student, teachers, device), kd_trainer(student, teachers, device, torch_compile=True)
    jsd = kd_trainer(student, teachers, device, alpha=0.0, kd_loss="jsd")
    liger = liger_jsd()
    cases = {"student": lambda: student_step(student, inputs), "teacher": lambda: teacher_forward(teachers, inputs),
             "kd": lambda: kd_step(eager, inputs), "kd_compiled_loss": lambda: kd_step(compiled, inputs),
             "jsd_ours": lambda: kd_step(jsd, inputs),
             "jsd_trl_math": lambda: jsd_step("trl", student, teachers, inputs)}
    if liger is not None:
        cases["jsd_liger_chunked"] = lambda: jsd_step("liger", student, teachers, inputs, liger)
    for run in cases.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases)
    for round_ in range(args.repeats):
        for name in (order if round_ % 2 == 0 else order[::-1]):
            synchronize(device)
            start = time.perf_counter()
            cases[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    def ratio(kd: str) -> float:
        return statistics.median(k / (s + t) for s, t, k in zip(times["student"], times["teacher"], times[kd]))

    return {"device": str(device), "vocab": args.vocab, "seq": args.seq, "batch": args.batch_size,
            "seconds": {name: statistics.median(ts) for name, ts in times.items()},
            **{f"{kd}/(student+teacher)": ratio(kd) for kd in cases if kd not in ("student", "teacher")},
            "liger": "measured" if liger is not None else "liger-kernel not installed: left out"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure_one(case: str, vocab: int, seq: int, size: int, chunk: int) -> int:
    """Peak bytes of one case in this (fresh) process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teachers, student = models(vocab, seq)
    teachers.to(device)
    student.to(device).train()
    inputs = batch(vocab, seq, size, device)
    trainer = kd_trainer(student, teachers, device, kd_chunk_size=chunk)
    jsd = kd_trainer(student, teachers, device, alpha=0.0, kd_loss="jsd", kd_chunk_size=chunk)
    run = {"student": lambda: student_step(student, inputs), "teacher": lambda: teacher_forward(teachers, inputs),
           "kd": lambda: kd_step(trainer, inputs),
           "jsd_ours": lambda: kd_step(jsd, inputs),
           "jsd_trl_math": lambda: jsd_step("trl", student, teachers, inputs),
           "jsd_liger_chunked": lambda: jsd_step("liger", student, teachers, inputs, liger_jsd())}[case]
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    base = _status_kib("VmRSS")
    run()
    return (_status_kib("VmHWM") - base) * 1024


def memory_cases(args) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    positions = args.mem_batch_size * args.mem_seq
    chunk = CheckpointKDConfig.__dataclass_fields__["kd_chunk_size"].default
    cases = {"student": ("student", chunk), "teacher": ("teacher", chunk), "kd_chunked": ("kd", chunk),
             "kd_one_chunk": ("kd", positions), "jsd_ours": ("jsd_ours", chunk), "jsd_trl_math": ("jsd_trl_math", chunk)}
    if liger_jsd() is not None:
        cases["jsd_liger_chunked"] = ("jsd_liger_chunked", chunk)
    peaks = {}
    for name, (case, chunk) in cases.items():
        out = subprocess.run([sys.executable, __file__, "--_measure", case, "--vocab", str(args.mem_vocab), "--seq",
                              str(args.mem_seq), "--batch_size", str(args.mem_batch_size), "--_chunk", str(chunk)],
                             capture_output=True, text=True, env=env, check=True)
        peaks[name] = int(out.stdout.strip().splitlines()[-1])
    base = peaks["student"] + peaks["teacher"]
    return {"vocab": args.mem_vocab, "seq": args.mem_seq, "batch": args.mem_batch_size,
            "peak_MiB": {k: round(v / 2**20, 1) for k, v in peaks.items()},
            **{f"{name}/(student+teacher)": peaks[name] / base for name in cases if name not in ("student", "teacher")}}


def cache_cases(args) -> dict:
    """The top-k cache: its writing time and size, and a student epoch reading it against a plain and a live one."""
    torch.manual_seed(2)
    ids = torch.randint(3, args.vocab, (args.cache_sequences, args.seq))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                              "labels": ids.tolist()})
    folder = Path(tempfile.mkdtemp(prefix="lm-kd-cache-"))
    teachers, _ = models(args.vocab, args.seq)
    teacher_dir = folder / "teacher"
    teachers.members[0].save_pretrained(teacher_dir)

    def epoch(name: str, **distil) -> float:
        _, student = models(args.vocab, args.seq)
        config = CheckpointKDConfig(output_dir=str(folder / name), num_train_epochs=1, report_to="none",
                                    per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
                                    save_strategy="no", logging_strategy="no", max_grad_norm=0.0, temperature=1.0,
                                    disable_tqdm=True, **distil)
        trainer = CheckpointKDTrainer(model=student, args=config, train_dataset=data, data_collator=default_data_collator)
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start

    live = {"teachers": [str(teacher_dir)]}
    cached = {**live, "cache_teacher_logits": True, "teacher_logits_dir": str(folder / "cache"),
              "teacher_logits_top_k": args.top_k}
    # The cache as the first cached student writes it: its key from the same settings, one pass of the teacher.
    settings = CheckpointKDConfig(output_dir=str(folder / "key"), temperature=1.0, report_to="none", **cached)
    start = time.perf_counter()
    write_topk_cache(folder / "cache", topk_key([str(teacher_dir)], data, settings), load_teachers([str(teacher_dir)]),
                     data, batch_size=args.batch_size)
    build = time.perf_counter() - start
    times: dict[str, list[float]] = {"plain": [], "live": [], "cached": []}
    for round_ in range(args.cache_repeats):
        order = [("plain", {}), ("live", live), ("cached", cached)]
        for name, distil in (order if round_ % 2 == 0 else order[::-1]):
            times[name].append(epoch(name, **distil))
    cache = TopKLogitsCache(folder / "cache")
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    return {"sequences": args.cache_sequences, "seq": args.seq, "vocab": args.vocab, "top_k": args.top_k,
            "epoch_seconds": {name: statistics.median(ts) for name, ts in times.items()},
            "cache_write_seconds": build, "cache_write/plain_epoch": build / statistics.median(times["plain"]),
            "bytes_per_token": cache.bytes_per_token,
            "cached_epoch/plain_epoch": ratio("cached", "plain"), "live_epoch/plain_epoch": ratio("live", "plain"),
            "cached_epoch/live_epoch": ratio("cached", "live")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--mem_vocab", type=int, default=32000)
    parser.add_argument("--mem_seq", type=int, default=512)
    parser.add_argument("--mem_batch_size", type=int, default=4)
    parser.add_argument("--cache_sequences", type=int, default=64)
    parser.add_argument("--cache_repeats", type=int, default=3)
    parser.add_argument("--top_k", type=int, default=CheckpointKDConfig.__dataclass_fields__["teacher_logits_top_k"].default)
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--skip_time", action="store_true")
    parser.add_argument("--skip_cache", action="store_true")
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    parser.add_argument("--_chunk", type=int, default=1024, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(measure_one(args._measure, args.vocab, args.seq, args.batch_size, args._chunk))
        return
    out = Path(__file__).parent / "results" / "lm_kd_step.json"
    result = json.loads(out.read_text()) if out.is_file() else {}  # a part skipped keeps its last figures
    if not args.skip_time:
        result["time"] = time_cases(args)
        print(json.dumps(result["time"], indent=2), flush=True)
    if not args.skip_memory:
        result["memory"] = memory_cases(args)
        print(json.dumps(result["memory"], indent=2), flush=True)
    if not args.skip_cache:
        result["cache"] = cache_cases(args)
        print(json.dumps(result["cache"], indent=2))
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
