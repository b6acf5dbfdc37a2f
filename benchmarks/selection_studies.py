"""The selector's quality at scale: both objectives over every study cell that has 3 seeds.

Reads the runs that `hf-ckptkd study recipes/studies/<name>.yaml` leaves under `runs/` (it trains
nothing) for every shipped study, and prints, per distinct cell, the oracle (the snapshot whose
students were best, mean over seeds), the snapshot each objective picks, its regret (oracle -
picked, pp) and the Spearman correlation between J and student accuracy over the snapshots; then
each objective's mean and worst figures. The objective with the lower regret and the higher
Spearman over the cells is the default (`selection.objective`). A cell is counted once however
many studies share it (the base recipe is a cell of most), and only when its run is of the
study's current recipe and has every student for `--min_seeds` seeds. Goal: regret <= 0.3 pp.

    python benchmarks/selection_studies.py [--min_seeds 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_ckptkd.selection.objective import OBJECTIVES
from hf_ckptkd.study import is_run_of, study_cells, summarise_cell

STUDIES = Path(__file__).resolve().parent.parent / "recipes" / "studies"


def measured_cells(min_seeds: int) -> dict[str, dict]:
    found = {}
    for study in sorted(STUDIES.glob("*.yaml")):
        for name, recipe, run_dir in study_cells(study)[2]:
            results = run_dir / "results.json"
            if str(run_dir) in found or not is_run_of(recipe, run_dir) or not results.is_file():
                continue
            if min(r["seeds"] for r in json.loads(results.read_text())["rows"]) < min_seeds:
                print(f"not yet {min_seeds} seeds: {study.stem} {name}")
                continue
            found[str(run_dir)] = summarise_cell(run_dir)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min_seeds", type=int, default=3)
    args = parser.parse_args()
    found = measured_cells(args.min_seeds)
    if not found:
        raise SystemExit(f"no study cell under runs/ has {args.min_seeds} seeds yet; run "
                         "`hf-ckptkd study recipes/studies/<name>.yaml` first (from the repository root)")
    print("| cell | oracle | " + " | ".join(f"{o} picks | regret (pp) | Spearman" for o in OBJECTIVES) + " |")
    print("|---|---|" + "---|---|---|" * len(OBJECTIVES))
    for name, c in found.items():
        picks = " | ".join(f"{c[f'{o}_selected']} | {c[f'{o}_regret_pp']:.2f} | {c[f'{o}_spearman']:+.2f}"
                           for o in OBJECTIVES)
        print(f"| {name} | {c['oracle_snapshot']} | {picks} |")
    n = len(found)
    print()
    for o in OBJECTIVES:
        regret = [c[f"{o}_regret_pp"] for c in found.values()]
        rho = [c[f"{o}_spearman"] for c in found.values()]
        print(f"{o:9s} regret mean {sum(regret) / n:.2f} pp, worst {max(regret):.2f} pp "
              f"({'PASS' if max(regret) <= 0.3 else 'MISS'} goal <= 0.3), zero in {sum(r == 0 for r in regret)}/{n} "
              f"cells; Spearman mean {sum(rho) / n:+.2f}, lowest {min(rho):+.2f}")


if __name__ == "__main__":
    main()
