"""How long selecting among causal-LM snapshots takes, beside one epoch of the teacher's training, before and
after the probe read every position of a segment from one causal forward.

The setting of a small causal-LM case tried as a new user would: a WordPiece tokenizer of 4,000 tokens
trained on the fortunes training split, a GPT-2 teacher of 2 layers × 128 (4 heads, 128 positions)
trained `--epochs` (6) epochs on blocks of 128 tokens of `--train_fortunes` fortunes (AdamW, batches of
32), a snapshot at the end of every epoch, and `select_teachers` over the six with a probe of
`--probe_samples` (1,000) token positions of the test split's text, objective `--objective`.

The epoch is timed here (the plain loop: forward, backward and step over every block, no evaluation,
so it is shorter than `hf-ckptkd train-teacher`'s epoch and the ratio below is on the safe side).
Selection is timed in fresh processes on the same snapshots and probe text, once with the package as
it is (AFTER) and once with the package at `--before` (BEFORE: commit d71df3c, whose probe ran every
position's window of 64 tokens as its own forward; `git archive` extracts it into a temporary folder),
each with its own default probe settings. Printed side by side: seconds per snapshot (the forwards,
loading included, and the scoring of the four terms), the whole `select_teachers` call, and the ratio
(selection among the six) / (the quickest teacher epoch). Nothing is asserted.

    OMP_NUM_THREADS=1 python benchmarks/lm_selection.py     # about 4 minutes on a quiet core
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from hf_ckptkd.data import lm_blocks
from hf_ckptkd.data.fortunes import FORTUNES_DIR, fortunes_tokenizer, load_fortunes_topics
from hf_ckptkd.models import build_causal_lm
from hf_ckptkd.snapshots import write_snapshot

ROOT = Path(__file__).resolve().parents[1]
TEACHER = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128}
BLOCK = 128
VOCABULARY = 4000
BEFORE = "d71df3c"
# Run in a fresh process against one copy of the package: only public calls that every version has.
SELECT = """
import json, sys, time, warnings
warnings.filterwarnings("ignore")
from datasets import load_from_disk
from hf_ckptkd.selection import select_teachers
snapshots, probe, size, objective = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
text = load_from_disk(probe)
started = time.perf_counter()
report = select_teachers(snapshots, text, max_probe_samples=size, objective=objective, progress=False)
total = time.perf_counter() - started
print(json.dumps({"package": __import__("hf_ckptkd").__file__, "total": total, "timing": report.extra["timing_s"], "selected": report.selected,
                  "i_yp": [s.i_yp for s in report.scores], "i_yf": [s.i_yf for s in report.scores],
                  "accuracy": [s.accuracy for s in report.scores], "names": [s.name for s in report.scores]}))
"""


def train_teacher(blocks: torch.Tensor, tokenizer, snapshot_dir: Path, epochs: int) -> list[float]:
    """Train the teacher, a snapshot after every epoch; the seconds of each epoch (its steps only)."""
    torch.manual_seed(0)
    model = build_causal_lm("transformers:GPT2Config", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            model_kwargs={**TEACHER, "bos_token_id": tokenizer.cls_token_id,
                                          "eos_token_id": tokenizer.sep_token_id})
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    seconds = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(blocks))
        t0 = time.perf_counter()
        model.train()
        for start in range(0, len(blocks), 32):
            batch = blocks[order[start:start + 32]]
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        seconds.append(time.perf_counter() - t0)
        write_snapshot(model, snapshot_dir, f"epoch-{epoch:04d}", epoch=epoch, global_step=epoch * len(blocks) // 32,
                       processing_class=tokenizer, final=epoch == epochs)
    return seconds


def select_with(package_root: Path, snapshot_dir: Path, probe_dir: Path, size: int, objective: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    # From another folder: `python -c` puts the working directory first on sys.path, before PYTHONPATH.
    out = subprocess.run([sys.executable, "-c", SELECT, str(snapshot_dir), str(probe_dir), str(size), objective],
                         env=env, capture_output=True, text=True, check=True, cwd=snapshot_dir.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train_fortunes", type=int, default=1500)
    parser.add_argument("--probe_samples", type=int, default=1000)
    parser.add_argument("--objective", default="outputs")
    parser.add_argument("--before", default=BEFORE, help="the commit to time as BEFORE ('' to skip it)")
    args = parser.parse_args(argv)
    if not (FORTUNES_DIR / "art").is_file():
        print(f"Debian's fortunes package is not installed ({FORTUNES_DIR}); `make` installs it", file=sys.stderr)
        return 1
    warnings.filterwarnings("ignore")
    tokenizer = fortunes_tokenizer(vocab_size=VOCABULARY)
    blocks = torch.tensor(lm_blocks(load_fortunes_topics("train", limit=args.train_fortunes), tokenizer, "text",
                                    BLOCK)["input_ids"])
    probe_text = lm_blocks(load_fortunes_topics("test"), tokenizer, "text", BLOCK)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        epochs = train_teacher(blocks, tokenizer, folder / "snapshots", args.epochs)
        # The quickest epoch: on a shared machine load can only lengthen an epoch, so the ratios below err
        # on the side of selection costing more.
        epoch = min(epochs)
        probe_text.save_to_disk(str(folder / "probe"))
        runs = {"AFTER": ROOT}
        if args.before:
            before = folder / "before"
            before.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "hf_ckptkd"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
            runs = {"BEFORE": before, **runs}
        results = {name: select_with(root, folder / "snapshots", folder / "probe", args.probe_samples, args.objective)
                   for name, root in runs.items()}
    n = args.epochs
    print(f"teacher: GPT-2 {TEACHER}, vocabulary {len(tokenizer)}, {len(blocks)} blocks of {BLOCK} tokens "
          f"({len(blocks) * BLOCK} tokens) from {args.train_fortunes} fortunes; epochs {', '.join(f'{s:.1f}' for s in epochs)}"
          f" s (quickest {epoch:.1f} s); torch threads {torch.get_num_threads()}")
    print(f"selection among {n} snapshots, probe of {args.probe_samples} positions of the test split "
          f"({len(probe_text)} blocks), objective {args.objective!r}")
    print(f"{'':28}" + "".join(f"{name:>12}" for name in results))
    rows = [("probe drawn (s)", lambda r: r["timing"]["probe"]),
            ("forward per snapshot (s)", lambda r: r["timing"]["forward"] / n),
            ("scoring per snapshot (s)", lambda r: r["timing"]["scoring"] / n),
            ("select_teachers (s)", lambda r: r["total"]),
            ("per snapshot (s)", lambda r: r["total"] / n),
            ("selection / quickest epoch", lambda r: r["total"] / epoch)]
    for label, value in rows:
        print(f"{label:28}" + "".join(f"{value(r):12.2f}" for r in results.values()))
    if "BEFORE" in results:
        print(f"AFTER is {results['BEFORE']['total'] / results['AFTER']['total']:.1f}x faster than BEFORE")
    for name, r in results.items():
        print(f"{name}: chosen {r['selected']}; per snapshot (accuracy, Ĩ(Y;P), Ĩ(Y;F)): "
              + ", ".join(f"{s} ({a:.3f}, {p:.3f}, {f:.3f})" for s, a, p, f in zip(r["names"], r["accuracy"],
                                                                                    r["i_yp"], r["i_yf"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
