"""How fast the selector is, and whether the snapshot it picks teaches the best student.

Speed: a short run of `--speed_teacher` (timm:resnet18, in_chans=1, 10 classes) on the first
`--speed_train_samples` (2,000) Fashion-MNIST training images, a snapshot every
`--speed_steps_per_snapshot` optimizer steps, `--snapshots` (10) snapshots. Then the selection
as `select_teachers` runs it (probe draw, one forward pass per snapshot, scoring and choice) with a
probe of `--probe_samples` (2,000) examples of the teacher's training data: total time (goal
<= 30 s for 10 snapshots on 2 CPU cores) and the estimator alone per snapshot, Î(X;F), Î(Y;F),
Î(X;P), Î(Y;P) (goal <= 1 s). The dataset load is timed apart (it is the same for any selection).

Quality, the real test: one run of `--teacher` (timm:cifar_resnet20, a full-resolution network
clearly stronger than the student) on the first `--train_samples` training images for
`--teacher_epochs` epochs (rounded up to a multiple of `--snapshots` optimizer steps), with
`--snapshots` snapshots evenly spaced over its steps, the last one the final model. The same
`--student` (same seed) is distilled from every snapshot for `--student_epochs` epochs on the
teacher's training images and evaluated on the first `--test_samples` test images; for each
objective (outputs, features) the script prints the Spearman correlation between J and the
student's accuracy, the selected snapshot's student accuracy, the oracle's (the best over all
snapshots), the final teacher's, and the regret (oracle - selected). Goal: regret <= 0.3 pp and
selected >= final. With `--seeds N` every student is trained N times (seeds 0..N-1) and the
accuracies are averaged; a student trained without a teacher is the baseline, and each teacher
snapshot's own accuracy on 2,000 test images is shown beside it. Students see no augmentation and
the teachers' logits are cached once per student (`cache_teacher_logits`), which keeps the run
short. Figures are printed, nothing is asserted.

Run it with OMP_NUM_THREADS=1 on a machine that other processes share: with more torch threads
than free cores every operation waits on a busy thread, and a resnet18 forward pass over 2,000
probe images measured 8.5 s with 2 threads against 1.3 s with 1 thread on 2 shared cores.

    OMP_NUM_THREADS=1 python benchmarks/selection.py        # both parts, ~10 minutes on 1 CPU core
    OMP_NUM_THREADS=1 python benchmarks/selection.py --skip_quality     # speed only, ~1 minute
    python benchmarks/selection.py --train_samples 8000 --teacher_epochs 20 --student_epochs 8 --seeds 3
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
from hf_ckptkd.data.loading import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from hf_ckptkd.data.images import (
    ImageTransformConfig,
    build_image_transform,
    image_collator,
    label_names,
    with_image_transform,
)
from hf_ckptkd.models import build_model
from hf_ckptkd.selection import OBJECTIVES, build_estimator, select_from_candidates
from hf_ckptkd.selection.kernels import output_embedding
from hf_ckptkd.selection import extract_candidates

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


def train_teacher(spec: str, train, names, out: Path, *, max_steps: int, every: int, batch_size: int,
                  lr: float) -> SnapshotIndex:
    """A teacher run with a snapshot every `every` optimizer steps; the last one is the final model."""
    model = build_model(spec, 10, label_names=names, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    trainer = CheckpointKDTrainer(
        model=model, data_collator=image_collator,
        args=config(out, max_steps=max_steps, per_device_train_batch_size=batch_size, learning_rate=lr,
                    weight_decay=0.05, lr_scheduler_type="cosine", warmup_steps=min(20, max_steps // 10), seed=0,
                    data_seed=0, snapshot_strategy="steps", snapshot_every=every),
        train_dataset=with_image_transform(train, build_image_transform(ImageTransformConfig(), train=True)))
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
    print(f"\n== speed: {n} snapshots of {args.speed_teacher}, probe {probe.labels.numel()} examples, "
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


NO_TEACHER = "no teacher"


def distil_students(args, index: SnapshotIndex, train, test, names, out: Path) -> tuple[dict, dict]:
    """Each snapshot's student test accuracy (mean over seeds; plus a student without a teacher) and
    each teacher snapshot's own accuracy on the first 2,000 test images."""
    transform = ImageTransformConfig(crop_padding=0, hflip=False)
    train_ds = with_image_transform(train, build_image_transform(transform, train=False))
    test_ds = with_image_transform(test, build_image_transform(transform, train=False))
    # Evaluated here rather than with trainer.evaluate(): the cached-logits collator expects teacher logits in
    # every batch, evaluation batches included.
    test_x = torch.stack([test_ds[i]["pixel_values"] for i in range(len(test_ds))])
    test_y = torch.tensor(test["label"], dtype=torch.long)
    teachers = {s.name: test_accuracy(s.load_model(), test_x[:2000], test_y[:2000]) for s in index}
    accuracy: dict[str, list[float]] = {NO_TEACHER: [], **{s.name: [] for s in index}}
    for seed in range(args.seeds):
        for s in [None, *index]:
            t0 = time.perf_counter()
            torch.manual_seed(seed)
            name = NO_TEACHER if s is None else s.name
            student = build_model(args.student, 10, label_names=names, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
            trainer = CheckpointKDTrainer(
                model=student, data_collator=image_collator,
                args=config(out / f"student-{name.replace(' ', '-')}-seed{seed}", teachers=[s.reference] if s else None,
                            num_train_epochs=args.student_epochs, per_device_train_batch_size=args.student_batch_size,
                            per_device_eval_batch_size=512, learning_rate=args.student_lr, seed=seed, data_seed=seed,
                            temperature=4.0, alpha=0.5, cache_teacher_logits=s is not None),
                train_dataset=train_ds)
            trainer.remove_callback(PrinterCallback)
            trainer.train()
            acc = test_accuracy(student, test_x, test_y)
            accuracy[name].append(acc)
            print(f"  student from {name} (seed {seed}): test accuracy {acc:.4f}  [{time.perf_counter() - t0:.0f} s]",
                  flush=True)
    return {name: statistics.mean(values) for name, values in accuracy.items()}, teachers


def quality(args, index: SnapshotIndex, probe, students: dict[str, float], teachers: dict[str, float]) -> None:
    final = index.final.name
    reports = {o: select_from_candidates(probe.candidates, probe.inputs, probe.labels, objective=o, seed=0)
               for o in OBJECTIVES}
    print(f"\n== quality: {args.student} distilled from each snapshot of {args.teacher} "
          f"({args.student_epochs} epochs, {args.seeds} seed(s), {args.test_samples} test images) ==")
    print(f"  {'snapshot':<13}{'step':>6}{'teacher probe acc':>19}{'teacher test acc':>18}{'J outputs':>11}"
          f"{'J features':>12}{'student acc':>13}")
    print(f"  {NO_TEACHER:<13}{'':>6}{'':>19}{'':>18}{'':>11}{'':>12}{students[NO_TEACHER]:>13.4f}")
    for i, s in enumerate(index):
        so, sf = reports["outputs"].scores[i], reports["features"].scores[i]
        marks = "".join(m for m, r in (("  <- outputs", reports["outputs"]), ("  <- features", reports["features"]))
                        if s.name == r.selected[0])
        print(f"  {s.name:<13}{s.global_step:>6}{so.accuracy:>19.4f}{teachers[s.name]:>18.4f}{so.j:>11.3f}{sf.j:>12.3f}"
              f"{students[s.name]:>13.4f}{'  (final)' if s.final else ''}{marks}")
    oracle_name = max(index.names, key=lambda n: students[n])
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
    parser.add_argument("--teacher", default="timm:cifar_resnet20", help="The quality run's teacher.")
    parser.add_argument("--student", default="timm:test_resnet")
    parser.add_argument("--train_samples", type=int, default=4000, help="The quality run's training images.")
    parser.add_argument("--teacher_epochs", type=int, default=10)
    parser.add_argument("--teacher_batch_size", type=int, default=128)
    parser.add_argument("--teacher_lr", type=float, default=2e-3)
    parser.add_argument("--snapshots", type=int, default=10, help="Snapshots per teacher run (evenly spaced).")
    parser.add_argument("--speed_teacher", default="timm:resnet18")
    parser.add_argument("--speed_train_samples", type=int, default=2000)
    parser.add_argument("--speed_steps_per_snapshot", type=int, default=3)
    parser.add_argument("--student_epochs", type=int, default=5)
    parser.add_argument("--student_batch_size", type=int, default=64)
    parser.add_argument("--student_lr", type=float, default=2e-3)
    parser.add_argument("--seeds", type=int, default=2, help="Students per snapshot (seeds 0..N-1), averaged.")
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
    train = load_fashion_mnist("train", limit=max(args.train_samples, args.speed_train_samples))
    test = load_fashion_mnist("test", limit=args.test_samples)
    names = label_names(train)
    print(f"dataset load: {time.perf_counter() - t0:.1f} s ({len(train)} train, {len(test)} test images)")

    # Speed: a short run of the speed teacher, a snapshot every few steps.
    speed_train = train.select(range(min(len(train), args.speed_train_samples)))
    t0 = time.perf_counter()
    speed_index = train_teacher(args.speed_teacher, speed_train, names, out / "speed-teacher",
                                max_steps=args.speed_steps_per_snapshot * args.snapshots,
                                every=args.speed_steps_per_snapshot, batch_size=args.teacher_batch_size,
                                lr=args.teacher_lr)
    print(f"speed teacher: {len(speed_index)} snapshots of {args.speed_teacher} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    speed(args, speed_index, speed_train)

    if not args.skip_quality:
        quality_train = train.select(range(min(len(train), args.train_samples)))
        steps_per_epoch = math.ceil(len(quality_train) / args.teacher_batch_size)
        every = max(1, math.ceil(steps_per_epoch * args.teacher_epochs / args.snapshots))
        t0 = time.perf_counter()
        index = train_teacher(args.teacher, quality_train, names, out / "teacher", max_steps=every * args.snapshots,
                              every=every, batch_size=args.teacher_batch_size, lr=args.teacher_lr)
        print(f"\nquality teacher: {len(index)} snapshots of {args.teacher} ({', '.join(index.names)}) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        probe = extract_candidates(index, quality_train, max_probe_samples=args.probe_samples, seed=0,
                                   batch_size=args.batch_size, progress=False)
        print("distilling one student per snapshot ...", flush=True)
        students, teachers = distil_students(args, index, quality_train, test, names, out / "students")
        quality(args, index, probe, students, teachers)
    print(f"\nbenchmark wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
