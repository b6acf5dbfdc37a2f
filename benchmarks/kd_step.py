"""What distillation costs per step, and which teacher-ensemble path is faster on this device.

Side by side in one run (GPU when there is one, CPU otherwise):
  (a) student step alone, (b) teacher forward alone, (c) KD step with one teacher
      -> (c) / ((a) + (b)), goal <= 1.05;
  (d) a k=4 snapshot ensemble: the fused path (stacked weights, vmap(functional_call)), the same
      under torch.compile, and a Python loop over the members -> loop/fused, the path
      teacher_fusion='auto' chose, and the ensemble's forward / the sum of its members' single
      forwards, goal <= 1.05 (and, on a GPU, fused >= 1.5x the loop);
  (e) a KD epoch with cached teacher logits vs a plain student epoch -> goal <= 1.10.
The KD step is `CheckpointKDTrainer.compute_loss` as training calls it (the teachers' forward, the
student's own loss from its one forward, plus (1-alpha)*T^2*KL on the logits of that same forward),
then backward and the optimizer step; (a) is the student's own loss alone (the same forward,
backward and step). Inputs are Fashion-MNIST-shaped random tensors (1x28x28, 10 classes): the
timings do not depend on the pixel values. Cases are timed interleaved (one repetition of each in
turn, alternating the order); a ratio is the median over rounds of the ratio within one round, so
load from other processes on a shared machine hits numerator and denominator alike. Times shown
are medians.

    python benchmarks/kd_step.py                       # the full run (~2-3 minutes on 2 CPU cores)
    python benchmarks/kd_step.py --repeats 3 --no_compile --batch_size 64   # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer
from hf_ckptkd.models import build_model
from hf_ckptkd.snapshots import write_snapshot
from hf_ckptkd.training.teachers import load_teachers

NUM_LABELS = 10
ALPHA, TEMPERATURE = 0.5, 4.0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timings:
    """Seconds per call of each case, one list entry per round (each round runs every case once, in turn)."""

    def __init__(self, rounds: dict[str, list[float]]):
        self.rounds = rounds

    def __getitem__(self, name: str) -> float:
        """The median time of a case."""
        return statistics.median(self.rounds[name])

    def ratio(self, numerator: list[str], denominator: list[str]) -> float:
        """Median over rounds of sum(numerator cases) / sum(denominator cases) within one round.

        Cases of one round run seconds apart, so slowly changing load from other processes
        cancels in the ratio; the median drops rounds that a burst of load hit unevenly.
        """
        per_round = [sum(self.rounds[n][i] for n in numerator) / sum(self.rounds[d][i] for d in denominator)
                     for i in range(len(self.rounds[numerator[0]]))]
        return statistics.median(per_round)


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1) -> Timings:
    """Time every case `repeats` times, one repetition of each case in turn (after `warmup` calls each)."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(repeats):
        names = list(cases) if round_ % 2 == 0 else list(reversed(cases))  # no case always runs first
        for name in names:
            sync(device)
            start = time.perf_counter()
            cases[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return Timings(times)


def line(label: str, ratio: float, goal: str, ok: bool | None, detail: str = "") -> None:
    status = "INFO" if ok is None else ("PASS" if ok else "MISS")
    print(f"{label:<58} ratio {ratio:6.3f}   goal {goal:<14} {status}   {detail}", flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


class Batches(Dataset):
    """Per-example dicts, as a Trainer's dataset gives them (optionally with cached teacher logits)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None):
        self.x, self.y, self.logits = x, y, logits

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        example = {"pixel_values": self.x[i], "labels": self.y[i]}
        if self.logits is not None:
            example["teacher_logits"] = self.logits[i]
        return example


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs every case once)")
    parser.add_argument("--student", default="timm:resnet10t")
    parser.add_argument("--teacher", default="timm:resnet18")
    parser.add_argument("--members", type=int, default=4, help="k of the snapshot ensemble in (d)")
    parser.add_argument("--epoch_batches", type=int, default=6, help="batches per epoch in (e)")
    parser.add_argument("--no_compile", action="store_true", help="skip torch.compile of the fused path in (d)")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args()

    started = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    load = f"; load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"device: {device} ({name}{load}); torch {torch.__version__}; batch {args.batch_size}; student "
          f"{args.student}; teacher {args.teacher}; rounds {args.repeats}", flush=True)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, NUM_LABELS, (args.batch_size,), device=device)

    student = build_model(args.student, NUM_LABELS, in_chans=1).to(device).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    teacher = load_teachers([build_model(args.teacher, NUM_LABELS, in_chans=1)], device=device)

    def student_step():
        optimizer.zero_grad(set_to_none=True)
        student(pixel_values=x, labels=y).loss.backward()
        optimizer.step()

    def teacher_forward():
        return teacher(pixel_values=x)

    kd_trainer = CheckpointKDTrainer(
        model=student, teachers=teacher,
        args=CheckpointKDConfig(output_dir=tempfile.mkdtemp(prefix="kd-step-"), report_to="none", alpha=ALPHA,
                                temperature=TEMPERATURE, use_cpu=device.type == "cpu"))

    def kd_train_step(inputs):
        """One optimizer step on the loss the trainer computes (it checks the teachers' logits, as training does)."""
        optimizer.zero_grad(set_to_none=True)
        kd_trainer.compute_loss(student, inputs).backward()
        optimizer.step()

    def kd_step():
        kd_train_step({"pixel_values": x, "labels": y})

    # --- (a) (b) (c) -----------------------------------------------------------------------
    t = interleaved({"a": student_step, "b": teacher_forward, "c": kd_step}, args.repeats, device)
    print(f"(a) student step {ms(t['a'])}   (b) teacher forward {ms(t['b'])}   (c) KD step {ms(t['c'])}")
    ratio = t.ratio(["c"], ["a", "b"])
    line("(c) KD step / (student step + teacher forward)", ratio, "<= 1.05", ratio <= 1.05)

    # --- (d) k-member snapshot ensemble ------------------------------------------------------
    with tempfile.TemporaryDirectory(prefix="kd-step-snapshots-") as snapshot_dir:
        refs = []
        for i in range(args.members):
            torch.manual_seed(100 + i)
            snap = write_snapshot(build_model(args.teacher, NUM_LABELS, in_chans=1), snapshot_dir,
                                  f"epoch-{i + 1:04d}", epoch=i + 1, global_step=10 * (i + 1))
            refs.append(snap.reference)
        ensembles = {fusion: load_teachers(refs, device=device, fusion=fusion) for fusion in ("loop", "fused", "auto")}
        compiled = None
        if not args.no_compile:
            compiled = load_teachers(refs, device=device, fusion="fused", compile=True)
    auto = ensembles["auto"]
    auto(pixel_values=x)  # the one-off measurement on the first real batch
    compile_seconds = None
    if compiled is not None:
        start = time.perf_counter()
        compiled(pixel_values=x)
        sync(device)
        compile_seconds = time.perf_counter() - start
    members = ensembles["loop"].members

    def single(member):
        def run():
            with torch.inference_mode():
                return member(pixel_values=x).logits
        return run

    cases = {f"single{i}": single(m) for i, m in enumerate(members)}
    cases.update({"loop": lambda: ensembles["loop"](pixel_values=x),
                  "fused": lambda: ensembles["fused"](pixel_values=x),
                  "auto": lambda: auto(pixel_values=x)})
    if compiled is not None:
        cases["compiled"] = lambda: compiled(pixel_values=x)
    t = interleaved(cases, args.repeats, device)
    single_names = [f"single{i}" for i in range(len(members))]
    singles = sum(t[n] for n in single_names)
    print(f"(d) k={len(members)} {args.teacher}: sum of single forwards {ms(singles)}   loop {ms(t['loop'])}   "
          f"fused {ms(t['fused'])}" + (f"   fused+compile {ms(t['compiled'])} (compilation {compile_seconds:.1f} s)"
                                       if compiled is not None else ""))
    gpu = device.type == "cuda"
    speedup = t.ratio(["loop"], ["fused"])
    line("(d) loop / fused (>1: the fused path is faster)", speedup, ">= 1.5 on GPU",
         speedup >= 1.5 if gpu else None, "(CPU: informative only)" if not gpu else "")
    if compiled is not None:
        speedup_compiled = t.ratio(["loop"], ["compiled"])
        gain = t.ratio(["fused"], ["compiled"])
        line("(d) loop / fused+torch.compile", speedup_compiled, ">= 1.5 on GPU",
             speedup_compiled >= 1.5 if gpu else None,
             f"compile helps the fused path: {'yes' if gain > 1.05 else 'no'} (fused / fused+compile {gain:.2f})")
    times = auto.fusion_times or {}
    print(f"(d) teacher_fusion='auto' chose {auto.fusion_used!r} (its start-up measurement: "
          + ", ".join(f"{k} {v:.2f}" if "/" in k else f"{k} {ms(v)}" for k, v in times.items()) + ")")
    ratio = t.ratio(["auto"], single_names)
    line("(d) ensemble forward (auto) / sum of members' single forwards", ratio, "<= 1.05", ratio <= 1.05)
    del ensembles, compiled, auto, members

    # --- (e) an epoch with cached teacher logits vs a plain student epoch ------------------------
    n = args.epoch_batches * args.batch_size
    xs = torch.randn(n, 1, 28, 28)
    ys = torch.randint(0, NUM_LABELS, (n,))
    start = time.perf_counter()
    cache = torch.cat([teacher(pixel_values=xs[i:i + args.batch_size].to(device)).cpu()
                       for i in range(0, n, args.batch_size)])
    cache_seconds = time.perf_counter() - start
    plain_loader = DataLoader(Batches(xs, ys), batch_size=args.batch_size, shuffle=True)
    cached_loader = DataLoader(Batches(xs, ys, cache), batch_size=args.batch_size, shuffle=True)

    def plain_epoch():
        for batch in plain_loader:
            optimizer.zero_grad(set_to_none=True)
            student(pixel_values=batch["pixel_values"].to(device), labels=batch["labels"].to(device)).loss.backward()
            optimizer.step()

    def cached_epoch():
        for batch in cached_loader:
            kd_train_step({k: v.to(device) for k, v in batch.items()})  # teacher_logits: no teacher forward

    t = interleaved({"plain": plain_epoch, "cached": cached_epoch}, 3, device, warmup=0)
    print(f"(e) {args.epoch_batches} batches: plain epoch {ms(t['plain'])}   KD epoch with cached logits "
          f"{ms(t['cached'])}   (building the cache once: {ms(cache_seconds)})")
    ratio = t.ratio(["cached"], ["plain"])
    line("(e) KD epoch with cached logits / plain student epoch", ratio, "<= 1.10", ratio <= 1.10)
    load = f" (load average {os.getloadavg()[0]:.1f})" if hasattr(os, "getloadavg") else ""
    print(f"total {time.perf_counter() - started:.0f} s{load}")


if __name__ == "__main__":
    main()
