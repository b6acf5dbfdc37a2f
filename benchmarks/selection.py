"""How fast the selector is, and whether the snapshot it picks teaches the best student.

One teacher run serves both parts: `--teacher` (timm:resnet18, in_chans=1, 10 classes) trained
on the first `--train_samples` Fashion-MNIST training images for `--teacher_epochs` epochs, with
`--snapshots` snapshots evenly spaced over its optimizer steps (the last one is the final model).

Speed: `select_teachers` on those snapshots with a probe of `--probe_samples` (2,000) examples
drawn from the teacher's training data: total time (goal <= 30 s on 2 CPU cores, for 10
snapshots) and the estimator alone per snapshot, Î(X;F), Î(Y;F), Î(X;P), Î(Y;P) (goal <= 1 s).
The dataset load is timed apart (it is the same for any selection).

Quality, the real test: distil the same `--student` (same seed) from every snapshot for
`--student_epochs` epochs on the teacher's training images, evaluate each student on the first
`--test_samples` test images, and, for each objective (outputs, features), print the Spearman
correlation between J and the student's accuracy, the selected snapshot's student accuracy, the
oracle's (the best over all snapshots), the final teacher's, and the regret (oracle - selected).
Goal: regret <= 0.3 pp and selected >= final. With `--seeds N` every student is trained N times
(seeds 0..N-1) and accuracies are averaged. Students see no augmentation and the teachers'
logits are cached once per student (`cache_teacher_logits`), which keeps the run short.

Figures are printed, nothing is asserted.

    python benchmarks/selection.py                          # both parts, ~10-15 minutes on 2 CPU cores
    python benchmarks/selection.py --skip_quality           # speed only
    python benchmarks/selection.py --train_samples 4000 --teacher_epochs 8 --student_epochs 5 --seeds 3
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import PrinterCallback

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, SnapshotIndex
from hf_ckptkd.data import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    ImageTransformConfig,
    build_image_transform,
    image_collator,
    label_names,
    load_fashion_mnist,
    with_image_transform,
)
from hf_ckptkd.models import build_model
from hf_ckptkd.selection import OBJECTIVES, build_estimator, select_from_candidates
from hf_ckptkd.selection.estimators import output_embedding
from hf_ckptkd.selection.selector import extract_candidates

SPEED_TOTAL_GOAL_S, SPEED_ESTIMATOR_GOAL_S = 30.0, 1.0
REGRET_GOAL_PP = 0.3


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho (scipy if installed, else Pearson's r of average ranks)."""
    try:
        from scipy.stats import spearmanr

        with warnings.catch_warnings():  # a constant input gives nan, which is printed as such
            warnings.simplefilter("ignore")
            return float(spearmanr(x, y).statistic)
    except ImportError:
        def ranks(v: list[float]) -> torch.Tensor:
            t = torch.tensor(v, dtype=torch.float64)
            order = torch.argsort(t)
            r = torch.empty_like(t)
            r[order] = torch.arange(len(v), dtype=torch.float64)
            for value in torch.unique(t):  # ties share their average rank
                tied = t == value
                r[tied] = r[tied].mean()
            return r

        a, b = ranks(x), ranks(y)
        a, b = a - a.mean(), b - b.mean()
        denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
        return float((a * b).sum()) / denominator if denominator > 0 else float("nan")


def config(output_dir: Path, **values) -> CheckpointKDConfig:
    base = dict(output_dir=str(output_dir), report_to="none", remove_unused_columns=False, save_strategy="no",
                eval_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
                dataloader_num_workers=0)
    base.update(values)
    return CheckpointKDConfig(**base)


def train_teacher(args, train, names, out: Path) -> SnapshotIndex:
    transform = ImageTransformConfig()
    steps_per_epoch = math.ceil(len(train) / args.teacher_batch_size)
    total = steps_per_epoch * args.teacher_epochs
    every = max(1, math.ceil(total / args.snapshots))  # the final model is the last snapshot
    model = build_model(args.teacher, 10, label_names=names, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    trainer = CheckpointKDTrainer(
        model=model, data_collator=image_collator,
        args=config(out, num_train_epochs=args.teacher_epochs, per_device_train_batch_size=args.teacher_batch_size,
                    learning_rate=args.teacher_lr, weight_decay=5e-4, warmup_steps=0, seed=0, data_seed=0,
                    snapshot_strategy="steps", snapshot_every=every),
        train_dataset=with_image_transform(train, build_image_transform(transform, train=True)))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return SnapshotIndex.load(out / "snapshots")


def speed(args, index: SnapshotIndex, probe_data) -> tuple:
    """Time the selection the way `select_teachers` runs it (extraction, then scoring), and the estimator alone."""
    t0 = time.perf_counter()
    probe = extract_candidates(index, probe_data, max_probe_samples=args.probe_samples, seed=0,
                               batch_size=args.batch_size, progress=False)
    extract_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = select_from_candidates(probe.candidates, probe.inputs, probe.labels, objective="outputs", seed=0)
    scoring_s = time.perf_counter() - t0
    total_s = extract_s + scoring_s

    t0 = time.perf_counter()
    est = build_estimator("renyi2", probe.inputs, probe.labels, seed=0, device=probe.device, num_classes=10)
    build_s = time.perf_counter() - t0
    per_snapshot = []
    for c in probe.candidates:
        t0 = time.perf_counter()
        est.features(c.features)
        est.outputs(output_embedding(c.logits, 4.0))
        per_snapshot.append(time.perf_counter() - t0)
    est_s = statistics.median(per_snapshot)
    n = len(probe.candidates)
    goal_total = SPEED_TOTAL_GOAL_S * n / 10
    print(f"\n== speed: {n} snapshots of {args.teacher}, probe {probe.labels.numel()} examples, "
          f"device {probe.device}, {torch.get_num_threads()} threads, batch size {args.batch_size} ==")
    print(f"  probe draw + transform      {probe.info['timing_s']['probe']:7.2f} s")
    print(f"  forward passes              {probe.info['timing_s']['forward']:7.2f} s "
          f"({probe.info['timing_s']['forward'] / n:.2f} s per snapshot)")
    print(f"  scoring + choice            {scoring_s:7.2f} s")
    print(f"  total selection             {total_s:7.2f} s   goal <= {goal_total:.0f} s  "
          f"ratio {total_s / goal_total:.2f}  {verdict(total_s <= goal_total)}")
    print(f"  estimator, once per probe   {build_s:7.2f} s (input kernel, S2(Y))")
    print(f"  estimator per snapshot      {est_s:7.3f} s (median; max {max(per_snapshot):.3f})   goal <= "
          f"{SPEED_ESTIMATOR_GOAL_S:.0f} s  ratio {est_s / SPEED_ESTIMATOR_GOAL_S:.2f}  "
          f"{verdict(est_s <= SPEED_ESTIMATOR_GOAL_S)}")
    return probe, report


@torch.inference_mode()
def test_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(pixel_values=x[start:start + batch_size].to(device)).logits
        correct += int((logits.argmax(dim=1).cpu() == y[start:start + batch_size]).sum())
    return correct / len(y)


def distil_students(args, index: SnapshotIndex, train, test, names, out: Path) -> dict[str, float]:
    transform = ImageTransformConfig(crop_padding=0, hflip=False)
    train_ds = with_image_transform(train, build_image_transform(transform, train=False))
    test_ds = with_image_transform(test, build_image_transform(transform, train=False))
    # Evaluated here rather than with trainer.evaluate(): the cached-logits collator expects teacher logits in
    # every batch, evaluation batches included.
    test_x = torch.stack([test_ds[i]["pixel_values"] for i in range(len(test_ds))])
    test_y = torch.tensor(test["label"], dtype=torch.long)
    accuracy: dict[str, list[float]] = {s.name: [] for s in index}
    for seed in range(args.seeds):
        for s in index:
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            student = build_model(args.student, 10, label_names=names, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
            trainer = CheckpointKDTrainer(
                model=student, data_collator=image_collator,
                args=config(out / f"student-{s.name}-seed{seed}", teachers=[s.reference], num_train_epochs=args.student_epochs,
                            per_device_train_batch_size=args.student_batch_size, per_device_eval_batch_size=512,
                            learning_rate=args.student_lr, seed=seed, data_seed=seed, temperature=4.0, alpha=0.5,
                            cache_teacher_logits=True),
                train_dataset=train_ds)
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            acc = test_accuracy(student, test_x, test_y)
            accuracy[s.name].append(acc)
            print(f"  student from {s.name} (seed {seed}): test accuracy {acc:.4f}  [{time.perf_counter() - t0:.0f} s]",
                  flush=True)
    return {name: statistics.mean(values) for name, values in accuracy.items()}


def quality(args, index: SnapshotIndex, probe, students: dict[str, float]) -> None:
    final = index.final.name
    reports = {o: select_from_candidates(probe.candidates, probe.inputs, probe.labels, objective=o, seed=0)
               for o in OBJECTIVES}
    print(f"\n== quality: {args.student} distilled from each snapshot of {args.teacher} "
          f"({args.student_epochs} epochs, {args.seeds} seed(s), {args.test_samples} test images) ==")
    print(f"  {'snapshot':<13}{'step':>6}{'teacher probe acc':>19}{'J outputs':>11}{'J features':>12}"
          f"{'student acc':>13}")
    for i, s in enumerate(index):
        so, sf = reports["outputs"].scores[i], reports["features"].scores[i]
        marks = "".join(m for m, r in (("  <- outputs", reports["outputs"]), ("  <- features", reports["features"]))
                        if s.name == r.selected[0])
        print(f"  {s.name:<13}{s.global_step:>6}{so.accuracy:>19.4f}{so.j:>11.3f}{sf.j:>12.3f}"
              f"{students[s.name]:>13.4f}{'  (final)' if s.final else ''}{marks}")
    oracle_name = max(students, key=lambda n: students[n])
    oracle, final_acc = students[oracle_name], students[final]
    for objective, report in reports.items():
        eligible = [s for s in report.scores if not s.init]
        rho = spearman([s.j for s in eligible], [students[s.name] for s in eligible])
        chosen = report.selected[0]
        selected = students[chosen]
        regret_pp = 100 * (oracle - selected)
        print(f"\n  objective {objective}:")
        print(f"    Spearman(J, student accuracy)   {rho:+.3f}")
        print(f"    selected ({chosen})         {selected:.4f}")
        print(f"    oracle   ({oracle_name})         {oracle:.4f}")
        print(f"    final    ({final})         {final_acc:.4f}")
        print(f"    regret (oracle - selected)      {regret_pp:.2f} pp   goal <= {REGRET_GOAL_PP} pp  "
              f"{verdict(regret_pp <= REGRET_GOAL_PP)}")
        print(f"    selected - final                {100 * (selected - final_acc):+.2f} pp   goal >= 0  "
              f"{verdict(selected >= final_acc)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="timm:resnet18")
    parser.add_argument("--student", default="timm:test_resnet")
    parser.add_argument("--train_samples", type=int, default=2000)
    parser.add_argument("--teacher_epochs", type=int, default=4)
    parser.add_argument("--teacher_batch_size", type=int, default=128)
    parser.add_argument("--teacher_lr", type=float, default=2e-3)
    parser.add_argument("--snapshots", type=int, default=10, help="Snapshots over the teacher run (evenly spaced).")
    parser.add_argument("--student_epochs", type=int, default=3)
    parser.add_argument("--student_batch_size", type=int, default=64)
    parser.add_argument("--student_lr", type=float, default=2e-3)
    parser.add_argument("--seeds", type=int, default=1, help="Students per snapshot (seeds 0..N-1), averaged.")
    parser.add_argument("--test_samples", type=int, default=10000)
    parser.add_argument("--probe_samples", type=int, default=2000)
    parser.add_argument("--batch_size", type=int, default=256, help="select_teachers' forward batch size.")
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument("--output_dir", default=None, help="Keep the runs here (default: a temporary folder).")
    args = parser.parse_args(argv)
    logging.getLogger("hf_ckptkd").setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    started = time.perf_counter()
    out = Path(args.output_dir) if args.output_dir else Path(tempfile.mkdtemp(prefix="hf-ckptkd-bench-selection-"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; runs in {out}")
    t0 = time.perf_counter()
    train = load_fashion_mnist("train", limit=args.train_samples)
    test = load_fashion_mnist("test", limit=args.test_samples)
    names = label_names(train)
    print(f"dataset load: {time.perf_counter() - t0:.1f} s ({len(train)} train, {len(test)} test images)")

    t0 = time.perf_counter()
    index = train_teacher(args, train, names, out / "teacher")
    print(f"teacher: {len(index)} snapshots ({', '.join(index.names)}) in {time.perf_counter() - t0:.0f} s", flush=True)

    probe, _ = speed(args, index, train)
    if not args.skip_quality:
        print("\ndistilling one student per snapshot ...", flush=True)
        students = distil_students(args, index, train, test, names, out / "students")
        quality(args, index, probe, students)
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
