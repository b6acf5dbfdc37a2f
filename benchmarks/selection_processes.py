"""Selection of 20 snapshots by two processes against one: wall time, and the same report.

    OMP_NUM_THREADS=1 python benchmarks/selection_processes.py [--model timm:cifar_resnet20] [--snapshots 20]
                                                                [--probe_samples 1000] [--repeats 1]

Writes `--snapshots` snapshots of the demo's teacher (each a few SGD steps on Fashion-MNIST after the
last), then runs `hf-ckptkd select` on them as one process (`python -m hf_ckptkd.cli select`) and
as two (`accelerate launch --multi_gpu --num_processes 2 -m hf_ckptkd.cli select`; on a machine
without GPUs these are two CPU processes with gloo, each with OMP_NUM_THREADS=1), alternating, and
compares the fastest wall time of each, process start and imports included. It also prints the
forward time the report records (loading and running the share of this process, the main one)
and checks that both reports chose the same snapshots with the same scores.

The ratio can only approach 2 with two free cores: on a machine that other jobs share, the two
processes compete with them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hf_ckptkd.data import ImageTransformConfig, build_image_transform, label_names, load_fashion_mnist
from hf_ckptkd.models import build_model
from hf_ckptkd.snapshots import write_snapshot


def write_run(folder: Path, model_spec: str, n: int, steps_between: int) -> None:
    raw = load_fashion_mnist("train", limit=512)
    transform = build_image_transform(ImageTransformConfig(), train=False)
    images, labels = torch.stack([transform(im) for im in raw["image"]]), torch.tensor(raw["label"])
    torch.manual_seed(0)
    model = build_model(model_spec, 10, label_names=label_names(raw))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(n):
        model.train()
        for s in range(steps_between):
            batch = slice(64 * (s % 8), 64 * (s % 8 + 1))
            loss = model(pixel_values=images[batch], labels=labels[batch]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        write_snapshot(model.eval(), folder, f"step-{(i + 1) * steps_between:06d}", epoch=(i + 1) / n,
                       global_step=(i + 1) * steps_between, final=i == n - 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(prefix: list[str], snapshot_dir: Path, data_dir: Path, probe: int, out: Path) -> tuple[float, dict]:
    command = [*prefix, "-m", "hf_ckptkd.cli", "select", str(snapshot_dir), "--dataset", str(data_dir),
               "--max_probe_samples", str(probe), "--objective", "outputs", "--disable_tqdm", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:8])} … failed:\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "selection.json").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:cifar_resnet20")
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--steps_between", type=int, default=2)
    parser.add_argument("--probe_samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="selection-processes-"))
    write_run(root / "snapshots", args.model, args.snapshots, args.steps_between)
    (root / "data").mkdir()
    load_fashion_mnist("train", limit=4 * args.probe_samples).to_parquet(str(root / "data" / "train.parquet"))
    single = [sys.executable]
    times: dict[int, list[float]] = {1: [], 2: []}
    reports: dict[int, dict] = {}
    for r in range(args.repeats):
        for processes in (1, 2):
            prefix = single if processes == 1 else [
                sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--main_process_port", str(free_port()), "--mixed_precision", "no",
                "--dynamo_backend", "no"]
            wall, reports[processes] = run(prefix, root / "snapshots", root / "data", args.probe_samples,
                                           root / f"selection-{processes}-{r}")
            times[processes].append(wall)
    one, two = min(times[1]), min(times[2])
    same = reports[1]["selected"] == reports[2]["selected"] and all(
        abs(a["j"] - b["j"]) < 1e-6 for a, b in zip(reports[1]["scores"], reports[2]["scores"]))
    print(f"{args.model}, {args.snapshots} snapshots, probe {reports[1]['probe_size']} examples, "
          f"{os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f}), OMP_NUM_THREADS=1 per process, "
          f"{args.repeats} repeat(s)")
    for processes, wall in ((1, one), (2, two)):
        timing = reports[processes]["extra"]["timing_s"]
        print(f"{processes} process(es): {wall:7.2f} s wall (runs: {', '.join(f'{t:.2f}' for t in times[processes])}); "
              f"main process forward {timing['forward']:.2f} s, scoring {timing['scoring']:.2f} s, shares "
              f"{reports[processes]['extra']['processes']['candidates_per_process']}")
    print(f"speed-up (one / two processes): {one / two:.2f}x   same report: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
