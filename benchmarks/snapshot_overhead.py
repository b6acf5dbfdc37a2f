"""Snapshot overhead: teacher training with a snapshot every epoch vs none, same seed, side by side.

    python benchmarks/snapshot_overhead.py [--model timm:resnet18] [--train_samples 4000] [--epochs 4] [--repeats 2]

Runs alternate (none, snapshots, none, snapshots, ...) so that load from other processes hits
both alike; the fastest run of each kind is compared. Goal: ratio ≤ 1.03.
"""

import argparse
import tempfile
import time

import torch

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, label_names, load_fashion_mnist, with_image_transform
from hf_ckptkd.models import build_model


def train_once(model_spec, train, names, epochs, snapshots: bool) -> float:
    with tempfile.TemporaryDirectory() as out:
        config = CheckpointKDConfig(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=128,
                                    learning_rate=2e-3, seed=0, report_to="none", save_strategy="no", logging_steps=50,
                                    remove_unused_columns=False, disable_tqdm=True,
                                    snapshot_strategy="epoch" if snapshots else "no")
        torch.manual_seed(0)
        trainer = CheckpointKDTrainer(model=build_model(model_spec, 10, label_names=names), args=config,
                                      train_dataset=train, data_collator=image_collator)
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:resnet18")
    parser.add_argument("--train_samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    raw = load_fashion_mnist("train", limit=args.train_samples)
    names = label_names(raw)
    train = with_image_transform(raw, build_image_transform(ImageTransformConfig(), train=True))
    times = {False: [], True: []}
    for _ in range(args.repeats):
        for snapshots in (False, True):
            times[snapshots].append(train_once(args.model, train, names, args.epochs, snapshots))
    none, snap = min(times[False]), min(times[True])
    ratio = snap / none
    print(f"device: {'cuda' if torch.cuda.is_available() else 'cpu'} ({torch.get_num_threads()} threads); "
          f"{args.model}, {args.train_samples} images, {args.epochs} epochs, {args.repeats} repeats")
    print(f"no snapshots:         {none:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[False])})")
    print(f"snapshot every epoch: {snap:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in times[True])})")
    print(f"overhead ratio (snapshots / none): {ratio:.3f}   goal <= 1.03: {'PASS' if ratio <= 1.03 else 'MISS'}")


if __name__ == "__main__":
    main()
