"""Online top-M (`snapshot_keep_top`): its training-time overhead, and what it keeps against the selector.

    python benchmarks/keep_top.py [--train_samples 4000] [--epochs 12] [--every 3] [--probe 1000] [--repeats 1]
                                  [--keep_top 2] [--reports runs/*/selection/k1/selection.json ...]

1. Overhead. The demo's teacher (recipes/fashion_mnist.yaml: timm:cifar_resnet20, SGD, a snapshot
   every 3 epochs) trained twice with the same seed, side by side: keeping every snapshot, and with
   `snapshot_keep_top` (2) scoring each snapshot on a `--probe`-example probe as it is written. Runs
   alternate (plain, keep-top, ...) so load from other processes hits both alike; the fastest of
   each kind is compared. Goal: ratio <= 1.10. Then where one score's time goes.
2. Same choice. The keep-top run's kept snapshots against scoring the plain run's snapshots
   afterwards with the same score (they must agree: same seed, same score).
3. Against the selector's other objectives. For finished runs' selection reports (every snapshot
   scored; benchmarks/results/selection_studies.json and any `--reports`), and every M: does the
   snapshot `select_teachers` would choose survive keep-top? Its J is the keep-top score itself, so
   the "outputs" choice always does; checked too for J with the first version's min–max rescaling
   over the candidates, and for the library's default objective, the best accuracy.
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
import time
from pathlib import Path

import torch

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, SnapshotIndex
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, label_names, load_fashion_mnist, with_image_transform
from hf_ckptkd.models import build_model
from hf_ckptkd.selection import extract_candidates
from hf_ckptkd.selection.online import SnapshotScorer, keep_top_settings
from hf_ckptkd.training.snapshot_pruning import best_names

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "benchmarks" / "results" / "selection_studies.json"
# recipes/fashion_mnist.yaml's teacher section.
TEACHER = dict(per_device_train_batch_size=128, optim="sgd", optim_args="momentum=0.9,nesterov=true", learning_rate=0.1,
               weight_decay=5e-4, lr_scheduler_type="cosine", warmup_steps=64)


def train_once(out: Path, raw, train, names, args, keep_top: bool) -> float:
    config = CheckpointKDConfig(output_dir=str(out), num_train_epochs=args.epochs, seed=0, report_to="none",
                                save_strategy="no", logging_steps=50, remove_unused_columns=False, disable_tqdm=True,
                                snapshot_strategy="epoch", snapshot_every=args.every, use_cpu=not torch.cuda.is_available(),
                                snapshot_keep_top=args.keep_top if keep_top else None, snapshot_probe_samples=args.probe, **TEACHER)
    torch.manual_seed(0)
    trainer = CheckpointKDTrainer(model=build_model("timm:cifar_resnet20", 10, label_names=names), args=config,
                                  train_dataset=train, data_collator=image_collator,
                                  **({"probe_dataset": raw} if keep_top else {}))
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def where_one_score_goes(raw, snapshots, probe: int) -> str:
    """The first snapshot draws the probe and builds the estimator; every later one runs the probe only."""
    settings = keep_top_settings(max_probe_samples=probe)
    scorer = SnapshotScorer(raw, settings)
    start = time.perf_counter()
    scorer(snapshots[0])
    first = time.perf_counter() - start
    parts = extract_candidates([snapshots[0]], raw, settings, progress=False).info["timing_s"]
    start = time.perf_counter()
    for snapshot in snapshots[1:]:
        scorer(snapshot)
    later = (time.perf_counter() - start) / max(1, len(snapshots) - 1)
    return (f"first score {first:.2f} s (probe draw + transform {parts['probe']:.2f} s, forward {parts['forward']:.2f} s, "
            f"the rest loading and the estimator); each later score {later:.2f} s (loading, forward, two terms)")


def minmax(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in values]


def stored_runs(report_globs: list[str]) -> list[tuple[str, list[dict]]]:
    """(name, scores in training order, the last one final) of every finished run's report."""
    runs = []
    if STUDIES.is_file():
        for cell in json.loads(STUDIES.read_text())["cells"]:
            runs.append((cell["name"], [{"name": s["name"], "i_yp": s["i_yp"], "i_xp": s["i_xp"],
                                         "accuracy": s["probe_accuracy"]} for s in cell["snapshots"]]))
    for pattern in report_globs:
        for path in sorted(glob.glob(pattern)):
            report = json.loads(Path(path).read_text())
            runs.append((path, [{"name": s["name"], "i_yp": s["i_yp"], "i_xp": s["i_xp"],
                                 "accuracy": s["metadata"].get("eval_accuracy", s["accuracy"])}
                                for s in report["scores"] if not s.get("init")]))
    return runs


def survival(runs: list[tuple[str, list[dict]]], beta: float = 1.0) -> list[str]:
    """For every run and M: which objectives' single choice over the whole run keep-top keeps."""
    counts = {"outputs (the keep-top score)": 0, "outputs, min-max rescaled": 0, "accuracy (library default)": 0}
    cases = differing_sets = 0
    for name, scores in runs:
        names = [s["name"] for s in scores]
        raw_j = [s["i_yp"] + beta * s["i_xp"] for s in scores]
        mm_j = [a + beta * b for a, b in zip(minmax([s["i_yp"] for s in scores]), minmax([s["i_xp"] for s in scores]))]
        acc = [s["accuracy"] for s in scores]
        for m in range(1, len(scores) - 1):  # M >= number of non-final snapshots keeps everything
            kept = set(best_names(list(zip(names[:-1], raw_j[:-1])), m)) | {names[-1]}
            cases += 1
            for label, values in zip(counts, (raw_j, mm_j, acc)):
                counts[label] += best_names(list(zip(names, values)), 1)[0] in kept
            differing_sets += kept != set(best_names(list(zip(names[:-1], mm_j[:-1])), m)) | {names[-1]}
    lines = [f"{len(runs)} finished runs, {cases} (run, M) cases (M = 1 .. non-final snapshots - 1)"]
    lines += [f"  select_teachers' choice by {label:<28} kept: {n}/{cases}" for label, n in counts.items()]
    lines.append(f"  kept set differs from top-M by min-max J:      {differing_sets}/{cases}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--probe", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--keep_top", type=int, default=2)
    parser.add_argument("--reports", nargs="*", default=[], help="Globs of selection.json files of finished runs.")
    args = parser.parse_args()
    raw = load_fashion_mnist("train", limit=args.train_samples)
    names = label_names(raw)
    train = with_image_transform(raw, build_image_transform(ImageTransformConfig(), train=True))
    probe = load_fashion_mnist("train", limit=args.train_samples)
    times = {False: [], True: []}
    with tempfile.TemporaryDirectory() as out:
        for r in range(args.repeats):
            for keep_top in (False, True):
                times[keep_top].append(train_once(Path(out) / f"{'keep' if keep_top else 'plain'}-{r}", probe, train,
                                                  names, args, keep_top))
        plain, pruned = SnapshotIndex.load(Path(out) / "plain-0"), SnapshotIndex.load(Path(out) / "keep-0")
        scorer = SnapshotScorer(probe, keep_top_settings(max_probe_samples=args.probe))
        afterwards = [(s.name, scorer(s)["value"]) for s in plain if not s.final]
        offline = set(best_names(afterwards, args.keep_top)) | {plain.final.name}
        timing = where_one_score_goes(probe, list(plain), args.probe)
    base, keep = min(times[False]), min(times[True])
    ratio = keep / base
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'} ({torch.get_num_threads()} threads); "
          f"timm:cifar_resnet20, {args.train_samples} images, {args.epochs} epochs, a snapshot every {args.every}, "
          f"probe {args.probe}, keep_top={args.keep_top}, {args.repeats} repeats")
    print(f"every snapshot kept:  {base:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"keep_top={args.keep_top} scoring:   {keep:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"overhead ratio (keep_top / every snapshot): {ratio:.3f}   goal <= 1.10: {'PASS' if ratio <= 1.10 else 'MISS'}")
    print(f"  {timing}")
    print(f"online kept {sorted(pruned.names)} (removed {[e['name'] for e in pruned.removed]}); scoring the whole run "
          f"afterwards keeps {sorted(offline)}: {'same' if set(pruned.names) == offline else 'DIFFERENT'}")
    for line in survival(stored_runs(args.reports)):
        print(line)


if __name__ == "__main__":
    main()
