"""How long selecting among causal-LM snapshots takes: 10 snapshots, a probe of 2,000 token positions.

The models are of the size a small fortunes LM recipe uses: GPT-2 with 4 layers, 128 hidden units,
4 heads, 128 positions and the fortunes WordPiece vocabulary of 8,000 tokens. One such model is
trained briefly on blocks of 128 tokens of the fortunes training split (`--steps_per_snapshot`
AdamW steps of 8 blocks between snapshots; the first snapshot is the initialisation), giving
`--snapshots` (10) snapshots. The probe is `--probe_samples` (2,000) positions of the test split's
text with `--probe_context` (64) tokens of context each. Printed, per snapshot: the model forward
over the probe (loading the snapshot included) and the scoring (Î(X;F), Ĩ(Y;F), Î(X;P), Ĩ(Y;P) on
2,000 × 8,000 next-token distributions), and the whole `select_teachers` call. Nothing is asserted.

    OMP_NUM_THREADS=1 python benchmarks/lm_selection.py        # about 3 minutes on 1 shared CPU core
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from hf_ckptkd.data import lm_blocks
from hf_ckptkd.data.fortunes import FORTUNES_DIR, fortunes_tokenizer, load_fortunes_topics
from hf_ckptkd.models import build_causal_lm
from hf_ckptkd.selection import select_from_candidates
from hf_ckptkd.selection.selector import extract_candidates
from hf_ckptkd.snapshots import SnapshotIndex, write_snapshot

RECIPE_GPT2 = {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 128}
BLOCK = 128


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshots", type=int, default=10)
    parser.add_argument("--steps_per_snapshot", type=int, default=3)
    parser.add_argument("--probe_samples", type=int, default=2000)
    parser.add_argument("--probe_context", type=int, default=64)
    parser.add_argument("--objective", default="outputs")
    args = parser.parse_args(argv)
    if not (FORTUNES_DIR / "art").is_file():
        print(f"Debian's fortunes package is not installed ({FORTUNES_DIR}); `make` installs it", file=sys.stderr)
        return 1
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    tokenizer = fortunes_tokenizer()
    train = lm_blocks(load_fortunes_topics("train"), tokenizer, "text", BLOCK)
    probe_text = lm_blocks(load_fortunes_topics("test"), tokenizer, "text", BLOCK)
    model = build_causal_lm("transformers:GPT2Config", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            model_kwargs=RECIPE_GPT2)
    blocks = torch.tensor(train["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with tempfile.TemporaryDirectory() as folder:
        snapshot_dir = Path(folder) / "snapshots"
        t0 = time.perf_counter()
        step = 0
        for i in range(args.snapshots):
            if i:
                for _ in range(args.steps_per_snapshot):
                    batch = blocks[torch.randint(len(blocks), (8,))]
                    model(input_ids=batch, labels=batch).loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    step += 1
            write_snapshot(model, snapshot_dir, f"step-{step:04d}", epoch=step / 100, global_step=step,
                           processing_class=tokenizer)
        print(f"{args.snapshots} snapshots of GPT-2 {RECIPE_GPT2}, vocabulary {len(tokenizer)}: trained and written in "
              f"{time.perf_counter() - t0:.1f} s; probe text: {len(probe_text)} blocks of {BLOCK} tokens", flush=True)
        index = SnapshotIndex.load(snapshot_dir)

        started = time.perf_counter()
        probe = extract_candidates(index, probe_text, max_probe_samples=args.probe_samples,
                                   probe_context=args.probe_context, progress=False)
        print(f"probe drawn and {len(probe.candidates)} snapshots run in {time.perf_counter() - started:.1f} s",
              flush=True)
        t0 = time.perf_counter()
        report = select_from_candidates(probe.candidates, probe.inputs, probe.labels, objective=args.objective,
                                        token_labels=probe.token_labels)
        scoring = time.perf_counter() - t0
        total = time.perf_counter() - started
    n = len(probe.candidates)
    forward = probe.info["timing_s"]["forward"]
    print(f"probe: {probe.info['probe']['size']} positions, {probe.info['probe']['distinct_next_tokens']} distinct next "
          f"tokens, context {probe.info['probe']['probe_context']}; drawn in {probe.info['timing_s']['probe']:.2f} s")
    print(f"per snapshot: model forward (load + {probe.info['probe']['size']} windows) {forward / n:6.2f} s")
    print(f"per snapshot: scoring Î(X;F), Ĩ(Y;F), Î(X;P), Ĩ(Y;P)        {scoring / n:6.2f} s")
    print(f"select among {n} snapshots (probe, forwards, scoring, choice): {total:.1f} s, "
          f"{total / n:.2f} s per snapshot; torch threads: {torch.get_num_threads()}")
    print(report.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
