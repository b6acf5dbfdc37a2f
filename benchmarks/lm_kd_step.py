"""What token-level distillation of a causal LM costs per step, in time and in memory.

Time, side by side in one run, with recipes/fortunes_lm.yaml's models (teacher GPT-2 3 layers x 96,
student 1 layer x 64, the fortunes tokenizer's 8,000 tokens), sequence length 256, batch 8:
  (a) student step alone (its own next-token loss), (b) teacher forward alone,
  (c) the KD step as the trainer runs it: `CheckpointKDTrainer.compute_loss` (the teachers' forward,
      the student's forward with its own next-token loss, the causal-LM task's token-level KD term
      on the logits of that forward), backward -> (c) / ((a) + (b)), goal <= 1.10; and the same with
      the KD term's chunk math under torch.compile (what `torch_compile=True` does to it).
Cases are timed interleaved (one repetition of each in turn); the ratio is the median over rounds
of the ratio within a round, so load from other processes hits both sides alike.

Memory, with a vocabulary of 32,000 and sequence length 512 (batch 4): the peak of (d) the
student step, (e) the teacher forward, (f) the KD step with the default chunk of 256 positions
and (g) the KD step in one chunk (every position at once) -> (f) / ((d) + (e)), goal <= 1.2, with
(g) beside it. On a GPU the peaks are `torch.cuda.max_memory_allocated`; on the CPU each case runs
in a fresh process and its peak is the rise of the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs) over its resident set after set-up, with glibc's mmap threshold
fixed (MALLOC_MMAP_THRESHOLD_) so that freed tensors leave the process at once.

    python benchmarks/lm_kd_step.py                 # both parts (a few minutes on 2 CPU cores)
    python benchmarks/lm_kd_step.py --repeats 3 --skip_memory     # or --skip_time
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer
from hf_ckptkd.models import build_causal_lm
from hf_ckptkd.pipeline.recipe import load_recipe
from hf_ckptkd.training.teachers import TeacherEnsemble

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
    config = CheckpointKDConfig(output_dir=tempfile.mkdtemp(prefix="lm-kd-step-"), alpha=0.5, temperature=1.0,
                                report_to="none", use_cpu=device.type == "cpu", **settings)
    return CheckpointKDTrainer(model=student, args=config, teachers=teachers)


def kd_step(trainer, inputs) -> None:
    trainer.compute_loss(trainer.model, dict(inputs)).backward()
    trainer.model.zero_grad(set_to_none=True)


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
    cases = {"student": lambda: student_step(student, inputs), "teacher": lambda: teacher_forward(teachers, inputs),
             "kd": lambda: kd_step(eager, inputs), "kd_compiled_loss": lambda: kd_step(compiled, inputs)}
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
            "kd/(student+teacher)": ratio("kd"), "kd_compiled_loss/(student+teacher)": ratio("kd_compiled_loss")}


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
    run = {"student": lambda: student_step(student, inputs), "teacher": lambda: teacher_forward(teachers, inputs),
           "kd": lambda: kd_step(trainer, inputs)}[case]
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
             "kd_one_chunk": ("kd", positions)}
    peaks = {}
    for name, (case, chunk) in cases.items():
        out = subprocess.run([sys.executable, __file__, "--_measure", case, "--vocab", str(args.mem_vocab), "--seq",
                              str(args.mem_seq), "--batch_size", str(args.mem_batch_size), "--_chunk", str(chunk)],
                             capture_output=True, text=True, env=env, check=True)
        peaks[name] = int(out.stdout.strip().splitlines()[-1])
    base = peaks["student"] + peaks["teacher"]
    return {"vocab": args.mem_vocab, "seq": args.mem_seq, "batch": args.mem_batch_size,
            "peak_MiB": {k: round(v / 2**20, 1) for k, v in peaks.items()},
            "kd_chunked/(student+teacher)": peaks["kd_chunked"] / base,
            "kd_one_chunk/(student+teacher)": peaks["kd_one_chunk"] / base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--mem_vocab", type=int, default=32000)
    parser.add_argument("--mem_seq", type=int, default=512)
    parser.add_argument("--mem_batch_size", type=int, default=4)
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--skip_time", action="store_true")
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
        print(json.dumps(result["memory"], indent=2))
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
