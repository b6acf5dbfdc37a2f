"""The selector against the oracle and the trivial baselines, over cells that differ in dataset.

For every finished run of a selector-evidence recipe (`recipes/selector_cells/*.yaml`, run with
`hf-ckptkd run <recipe> --output_dir runs/cells/<name>`) and of every shipped study cell under
`runs/`, it rescores the teacher's snapshots with every registered objective (`selection.OBJECTIVES`:
the information objectives `held_out`, `outputs`, `features` and the trivial `final`, `accuracy`,
`loss`) on the run's validation split (the probe the pipeline uses) and reports, for each, the
snapshot it picks, its regret against the oracle (the snapshot whose students reached the best mean
test accuracy, in points) and the Spearman correlation between its J and the students' accuracy over
the snapshots. A causal LM's cell is also judged by its students' test perplexity (its own oracle,
paired interval and regret). Then each selector's mean and worst regret: the default objective is
the one with the lowest worst-case regret.

The oracle and the regrets use the student seeds that every snapshot of the cell has (paired; a
run still going is read as far as it got). Training is done by the runs; this only loads snapshots
and scores them (about a minute a cell).

    python benchmarks/selection_studies.py [--min_seeds 1] [--only paper] [--json benchmarks/results/selection_studies.json]

`--only` scores only the cells whose name contains the text (`paper`: the paper-regime runs). Then each
information objective's regret at β = 0 … 4 (J recomputed from the saved terms). Last, for
each information objective, the cells where it beats both trivial selectors (lower regret than each)
and those where it loses to either: the selector is only worth its cost where it beats both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hf_ckptkd.pipeline.stages import load_run_data
from hf_ckptkd.pipeline.recipe import load_recipe
from hf_ckptkd.pipeline.results import paired_difference
from hf_ckptkd.selection import OBJECTIVES, select_from_candidates
from hf_ckptkd.selection import extract_candidates
from hf_ckptkd.selection.objectives import InformationObjective
from hf_ckptkd.selection.report import held_out_loss, memorisation_signs
from hf_ckptkd.snapshots import SnapshotError, SnapshotIndex
from hf_ckptkd.pipeline.study import spearman, is_run_of, study_cells

ROOT = Path(__file__).resolve().parent.parent
CELLS = ROOT / "recipes" / "selector_cells"
STUDIES = ROOT / "recipes" / "studies"


def students_by_snapshot(run_dir: Path, key: str = "test_accuracy") -> dict[str, dict[int, float]]:
    """`key` (test accuracy, or a causal LM's test perplexity) of the students taught by each single
    snapshot of teacher-0, by student seed."""
    teacher0 = (run_dir / "teachers" / "teacher-0").resolve()
    found: dict[str, dict[int, float]] = {}
    for path in (run_dir / "students").glob("*/seed-*/result.json"):
        result = json.loads(path.read_text())
        refs = result["teachers"]
        if len(refs) == 1 and Path(refs[0].rpartition(":")[0]).resolve().is_relative_to(teacher0) and key in result:
            found.setdefault(refs[0].rpartition(":")[2], {})[result["seed"]] = result[key]
    return found


def no_teacher(run_dir: Path, seeds: list[int], key: str = "test_accuracy") -> float | None:
    """Mean `key` of the students trained without a teacher, over `seeds`."""
    found = {}
    for path in (run_dir / "students" / "no_kd").glob("seed-*/result.json"):
        result = json.loads(path.read_text())
        found[result["seed"]] = result.get(key)
    values = [found[s] for s in seeds if found.get(s) is not None]
    return sum(values) / len(values) if values else None


def finished_runs(min_seeds: int, only: str = "",
                  missing: list[dict] | None = None) -> list[tuple[str, object, Path, list[int]]]:
    """(name, recipe, run directory, seeds) of every run whose every snapshot taught students of `min_seeds`
    common seeds (only seeds that every snapshot has are used, so comparisons stay paired); with `only`,
    just the runs whose name contains it. Each evidence cell (a selector cell or a paper-regime study's)
    without such a run is added to `missing`, with why."""
    found: dict[str, tuple[str, object, Path, list[int]]] = {}
    candidates = [(p.stem, load_recipe(p), Path("runs/cells") / p.stem) for p in sorted(CELLS.glob("*.yaml"))]
    for study in sorted(STUDIES.glob("*.yaml")):
        base_recipe, base_dir, cells = study_cells(study)
        # A study whose cells all differ from its base (`fixed:`) still has the base run as its reference.
        candidates += [(f"{study.stem}: {name}", recipe, run_dir) for name, recipe, run_dir in cells]
        candidates.append((f"{base_recipe.name} (base)", base_recipe, base_dir))

    def unscored(name: str, run_dir: Path, why: str) -> None:
        if missing is not None and (run_dir.parent == Path("runs/cells") or "paper" in name) \
                and name not in [m["name"] for m in missing]:
            missing.append({"name": name, "run_dir": str(run_dir), "rescored": False, "why": why})

    for name, recipe, run_dir in candidates:
        if only not in name or str(run_dir) in found:
            continue
        if not is_run_of(recipe, run_dir):
            unscored(name, run_dir, "no run of this recipe under runs/ (its teacher's snapshots are needed)")
            continue
        try:
            index = SnapshotIndex.load(run_dir / "teachers" / "teacher-0")
        except Exception:  # teachers not trained yet, or not kept
            unscored(name, run_dir, "the run keeps no snapshots of its teacher")
            continue
        names = [s.name for s in index if s.global_step > 0]
        students = students_by_snapshot(run_dir)
        seeds = set.intersection(*(set(students.get(n, {})) for n in names)) if names else set()
        if len(seeds) < min_seeds:
            print(f"not yet {min_seeds} common seed(s) over every snapshot: {name} ({len(seeds)})")
            unscored(name, run_dir, f"not yet {min_seeds} student seed(s) for every snapshot")
            continue
        found[str(run_dir)] = (name, recipe, run_dir, sorted(seeds))
    return list(found.values())


def score_cell(name: str, recipe, run_dir: Path, seeds: list[int]) -> dict:
    per_seed = students_by_snapshot(run_dir)
    student = {n: sum(acc[s] for s in seeds) / len(seeds) for n, acc in per_seed.items() if set(seeds) <= set(acc)}
    oracle = max(student, key=student.get)
    run = load_run_data(recipe)
    options = dict(recipe.selection)
    index = SnapshotIndex.load(run_dir / "teachers" / "teacher-0")
    probe = extract_candidates(
        index, run.validation,
        max_probe_samples=options.pop("max_probe_samples", 2000), seed=options.pop("seed", 0), progress=False,
        label_column=run.label_column, image_column=recipe.image_column,
        transform=run.transform, training_probe=run.train)
    options.pop("objective", None)
    final = index.final.name
    as_runs = {n: [{"seed": s, "test_accuracy": per_seed[n][s]} for s in seeds] for n in student}
    cell = {"name": name, "run_dir": str(run_dir), "rescored": True, "seeds": seeds, "oracle": oracle, "student": student,
            "final": final, "oracle_vs_final": paired_difference(as_runs[oracle], as_runs[final]) if oracle != final
            else None, "no_teacher": no_teacher(run_dir, seeds), "selectors": {}}
    # A causal LM's students are also judged by perplexity, the LM's own measure: its oracle can differ.
    per_seed_ppl = students_by_snapshot(run_dir, "test_perplexity")
    ppl = {n: sum(v[s] for s in seeds) / len(seeds) for n, v in per_seed_ppl.items() if set(seeds) <= set(v)}
    if ppl:
        best = min(ppl, key=ppl.get)
        runs_ppl = {n: [{"seed": s, "test_perplexity": per_seed_ppl[n][s]} for s in seeds] for n in ppl}
        cell.update(student_perplexity=ppl, oracle_perplexity=best,
                    no_teacher_perplexity=no_teacher(run_dir, seeds, "test_perplexity"),
                    oracle_vs_final_perplexity=paired_difference(
                        runs_ppl[best], runs_ppl[final], "test_perplexity", scale=1.0, lower_is_better=True)
                    if best != final else None)
    for objective in OBJECTIVES:
        report = select_from_candidates(probe.candidates, probe.inputs, probe.labels, objective=objective,
                                        token_counts=probe.token_counts, **options)
        scored = [s for s in report.scores if not s.init and s.name in student]
        pick = report.selected[0]
        cell["selectors"][objective] = {
            "pick": pick, "regret_pp": 100 * (student[oracle] - student[pick]),
            "spearman": spearman([s.j for s in scored], [student[s.name] for s in scored]),
            "warnings": report.warnings}
        if ppl:
            cell["selectors"][objective]["regret_perplexity"] = ppl[pick] - ppl[cell["oracle_perplexity"]]
        if objective == "outputs":
            cell["snapshots"] = [{"name": s.name, "init": s.init, "probe_accuracy": s.accuracy, "i_yp": s.i_yp, "i_xp": s.i_xp,
                                  "i_yf": s.i_yf, "i_xf": s.i_xf, "j_outputs": s.j, "i_yp1": s.i_yp1,
                                  "held_out_loss": held_out_loss(s),
                                  "training_accuracy": s.metadata.get("training_accuracy"),
                                  "student": student.get(s.name)} for s in report.scores]
            # A teacher memorises when its final held-out loss is well above the run's lowest while it
            # fits its training data (see `memorisation_signs`); every other cell is regular.
            cell["regime"] = "memorisation" if memorisation_signs(report.scores) else "regular"
    return cell


def print_cell(cell: dict) -> None:
    print(f"\n### {cell['name']} (oracle {cell['oracle']}, {100 * cell['student'][cell['oracle']]:.2f} %; student "
          f"seed(s) {', '.join(map(str, cell['seeds']))})\n")
    print("| snapshot | probe acc. | Ĩ(Y;P) | Î(X;P) | Ĩ(Y;F) | Î(X;F) | student test acc. |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in cell["snapshots"]:
        acc = "–" if s["student"] is None else f"{100 * s['student']:.2f}"
        print(f"| {s['name']} | {100 * s['probe_accuracy']:.1f} | {s['i_yp']:.3f} | {s['i_xp']:.3f} | "
              f"{s['i_yf']:.3f} | {s['i_xf']:.3f} | {acc} |")


def against_baselines(cells: list[dict]) -> dict[str, dict[str, list[str]]]:
    """For each information objective, the cells where its regret is below every trivial selector's
    and those where it is above any one's (a cell where it ties with them all is in neither list)."""
    verdicts = {}
    for objective in [o.name for o in OBJECTIVES.values() if not o.trivial]:
        beats, loses = [], []
        for c in cells:
            mine = c["selectors"][objective]["regret_pp"]
            theirs = [c["selectors"][b]["regret_pp"] for b in OBJECTIVES if OBJECTIVES[b].trivial]
            if all(mine < r - 1e-9 for r in theirs):
                beats.append(c["name"])
            elif any(mine > r + 1e-9 for r in theirs):
                loses.append(c["name"])
        verdicts[objective] = {"beats_every_trivial": beats, "loses_to_a_trivial": loses}
    return verdicts


BETAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


def beta_sensitivity(cells: list[dict]) -> dict[str, dict[str, dict]]:
    """Each information objective's regret at every β of `BETAS`, recomputed from the cells' saved terms
    (J = Ĩ(Y;·) + β·Î(X;·) over the snapshots that taught students): how much the default β matters."""
    found = {}
    for objective in [o for o in OBJECTIVES.values() if isinstance(o, InformationObjective)]:
        found[objective.name] = {}
        for beta in BETAS:
            regret, regret_perplexity = {}, {}
            for c in cells:
                values = objective.values_from_scores([s for s in c["snapshots"] if s["name"] in c["student"]], beta)
                if values:
                    pick = max(values, key=values.get)
                    regret[c["name"]] = 100 * (c["student"][c["oracle"]] - c["student"][pick])
                    if "student_perplexity" in c:
                        ppl = c["student_perplexity"]
                        regret_perplexity[c["name"]] = ppl[pick] - ppl[c["oracle_perplexity"]]
            found[objective.name][f"{beta:g}"] = {"worst_pp": max(regret.values()), "mean_pp": sum(regret.values())
                                                  / len(regret), "regret_pp": regret,
                                                  "regret_perplexity": regret_perplexity}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min_seeds", type=int, default=1)
    parser.add_argument("--only", default="", help="Score only the cells whose name contains this text.")
    parser.add_argument("--json", default=None, help="Also write every figure to this JSON file.")
    args = parser.parse_args()
    missing: list[dict] = []
    runs = finished_runs(args.min_seeds, args.only, missing)
    if not runs:
        named = f" named *{args.only}*" if args.only else ""
        raise SystemExit(f"no run{named} under runs/ has students of {args.min_seeds} seed(s) for every snapshot; run "
                         "`hf-ckptkd run recipes/selector_cells/<name>.yaml --output_dir runs/cells/<name>` first "
                         "(from the repository root)")
    cells = []
    for r in runs:
        try:
            cells.append(score_cell(*r))
        except SnapshotError as e:  # a committed study whose teacher's weights are not all kept
            print(f"cannot rescore {r[0]}: {e}")
            missing.append({"name": r[0], "run_dir": str(r[2]), "rescored": False, "why": f"cannot rescore: {e}"})
    for cell in cells:
        print_cell(cell)
    print("\n| cell | seeds | oracle (paired vs final, 95% CI, pp) | "
          + " | ".join(f"{o}: pick, regret (pp), Spearman" for o in OBJECTIVES) + " |")
    print("|---|---|---|" + "---|" * len(OBJECTIVES))
    for c in cells:
        parts = [f"{c['selectors'][o]['pick']}, {c['selectors'][o]['regret_pp']:.2f}, "
                 f"{c['selectors'][o]['spearman']:+.2f}" for o in OBJECTIVES]
        d = c["oracle_vs_final"]
        versus = "the final snapshot" if c["oracle"] == c["final"] else (
            f"{c['oracle']} ({d['mean_pp']:+.2f} [{d['ci95_pp'][0]:+.2f}, {d['ci95_pp'][1]:+.2f}])" if d
            else f"{c['oracle']} (one seed: no interval)")
        print(f"| {c['name']} ({c['regime']}) | {len(c['seeds'])} | {versus} | " + " | ".join(parts) + " |")
    for c in cells:
        if "oracle_perplexity" in c:
            d = c["oracle_vs_final_perplexity"]
            versus = "the final snapshot" if d is None else (
                f"{c['oracle_perplexity']} ({d['mean_pp']:+.2f} [{d['ci95_pp'][0]:+.2f}, {d['ci95_pp'][1]:+.2f}])")
            print(f"{c['name']}: by student test perplexity the oracle is {versus}; regret in perplexity: "
                  + ", ".join(f"{o} {c['selectors'][o]['regret_perplexity']:.2f}" for o in OBJECTIVES))
    print()
    worst = {}
    for o in OBJECTIVES:
        regret = [c["selectors"][o]["regret_pp"] for c in cells]
        rho = [c["selectors"][o]["spearman"] for c in cells]
        worst[o] = max(regret)
        print(f"{o:9s} regret mean {sum(regret) / len(cells):.2f} pp, worst {max(regret):.2f} pp, zero in "
              f"{sum(r == 0 for r in regret)}/{len(cells)} cells; Spearman mean {sum(rho) / len(rho):+.2f}, "
              f"lowest {min(rho):+.2f}")
    best = min(OBJECTIVES, key=lambda o: (worst[o], list(OBJECTIVES).index(o)))
    print(f"\nlowest worst-case regret over {len(cells)} cells: {best} ({worst[best]:.2f} pp)")
    against = against_baselines(cells)
    for objective, verdict in against.items():
        print(f"{objective:9s} beats every trivial selector in: {', '.join(verdict['beats_every_trivial']) or 'no cell'}; "
              f"loses to one in: {', '.join(verdict['loses_to_a_trivial']) or 'no cell'}")
    betas = beta_sensitivity(cells)
    print("\nregret (pp) at each β, worst / mean over the cells:")
    for objective, by_beta in betas.items():
        print(f"{objective:9s} " + "; ".join(f"β {b}: {r['worst_pp']:.2f} / {r['mean_pp']:.2f}" for b, r in by_beta.items()))
        for name in next(iter(by_beta.values()))["regret_perplexity"]:
            print(f"{'':9s} {name}, regret in perplexity: "
                  + "; ".join(f"β {b}: {r['regret_perplexity'][name]:.1f}" for b, r in by_beta.items()))
    for cell in missing:
        print(f"not rescored: {cell['name']} ({cell['why']})")
    if args.json:
        Path(args.json).write_text(json.dumps({"cells": cells, "lowest_worst_case": best, "against_baselines": against,
                                               "beta_sensitivity": betas, "not_rescored": missing}, indent=2) + "\n")


if __name__ == "__main__":
    main()
