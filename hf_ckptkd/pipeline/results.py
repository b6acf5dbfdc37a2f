"""The pipeline's report: results.json, results.md and the student-vs-teacher-epoch plot."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULT_NAME = "result.json"
NO_TEACHER = "no_kd"  # the cell and the students/ folder of the students trained without a teacher


@dataclass(frozen=True)
class StudentCell:
    """One row of the results table: how the student is taught."""

    name: str
    teachers: tuple[str, ...]  # teacher references; empty = no KD
    description: str


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return mean, std


def _pp(value: float) -> str:
    return f"{100 * value:.2f}"


def mean_std_text(mean: float, std: float, seeds: int, scale: float = 100.0) -> str:
    """`mean ± std` over seeds; one seed has no spread to show, so its std reads "–", not a made-up 0.00."""
    return f"{scale * mean:.2f} ± " + (f"{scale * std:.2f}" if seeds > 1 else "–")


# Two-sided 95 % quantiles of Student's t distribution, t_{0.975, df}, for df = 1..30 (beyond: 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_difference(runs: list[dict], baseline: list[dict], key: str = "test_accuracy", *, scale: float = 100.0,
                      lower_is_better: bool = False) -> dict[str, Any] | None:
    """Mean paired difference (pp) of `runs` against `baseline` over the seeds both have, with a 95 % t interval.

    `scale` turns the values' difference into the reported unit (100: fractions into percentage
    points; 1 for a perplexity, where `lower_is_better` also turns the verdict round).

    Students of one seed share their initialisation whatever teaches them, so the difference per seed
    removes the seed's own luck. The verdict is "better" or "worse" only when the interval excludes
    zero, else "no difference"; with fewer than two shared seeds there is no interval (None).
    """
    base = {r["seed"]: r[key] for r in baseline}
    diffs = [scale * (r[key] - base[r["seed"]]) for r in runs if r["seed"] in base]
    if len(diffs) < 2:
        return None
    n = len(diffs)
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / n ** 0.5
    lo, hi = mean - half, mean + half
    higher, lower = ("worse", "better") if lower_is_better else ("better", "worse")
    verdict = higher if lo > 0 else lower if hi < 0 else "no difference"
    return {"mean_pp": mean, "ci95_pp": [lo, hi], "se_pp": sd / n ** 0.5, "seeds": n, "verdict": verdict}


def is_close(paired: dict[str, Any] | None) -> bool:
    """A paired difference within two standard errors of zero, or too few seeds for an interval."""
    return paired is None or abs(paired["mean_pp"]) < 2 * paired["se_pp"]


def best_other_teacher(cells: list[StudentCell], results: dict[str, list[dict]]) -> dict[str, Any] | None:
    """The single teacher other than the final one whose students did best on average, paired with the
    final teacher's students by seed (None when there is no such teacher)."""
    final = next((c for c in cells if c.name == "final"), None)
    others = {c.teachers: results[c.name] for c in cells
              if final and len(c.teachers) == 1 and c.teachers != final.teachers and results.get(c.name)}
    if not others:
        return None
    teachers, runs = max(others.items(), key=lambda kv: mean_std([r["test_accuracy"] for r in kv[1]])[0])
    return {"teacher": teachers[0], "paired_vs_final": paired_difference(runs, results.get("final", []))}


def paired_text(paired: dict[str, Any] | None) -> str:
    if not paired:
        return "–"
    lo, hi = paired["ci95_pp"]
    return f"{paired['mean_pp']:+.2f} [{lo:+.2f}, {hi:+.2f}] {paired['verdict']}"


def write_report(recipe, output_dir: Path, cells: list[StudentCell], results: dict[str, list[dict]], indexes,
                 reports: dict[int, Any], teacher_acc: dict[str, float]) -> dict[str, Any]:
    index = indexes[0]
    by_ref = {s.reference: s for ix in indexes for s in ix}
    rows = []
    for cell in cells:
        runs = results.get(cell.name, [])
        test_mean, test_std = mean_std([r["test_accuracy"] for r in runs])
        val_mean, _ = mean_std([r["validation_accuracy"] for r in runs])
        members = [teacher_acc.get(ref) for ref in cell.teachers]
        teacher = sum(members) / len(members) if members and None not in members else None
        epochs = [by_ref[ref].epoch for ref in cell.teachers if ref in by_ref]
        row = {"cell": cell.name, "description": cell.description, "teachers": list(cell.teachers),
               "teacher_epochs": epochs, "teacher_test_accuracy": teacher, "seeds": len(runs),
               "student_test_accuracy": test_mean, "student_test_std": test_std,
               "student_validation_accuracy": val_mean}
        if runs and all("test_perplexity" in r for r in runs):
            row["student_test_perplexity"], row["student_test_perplexity_std"] = mean_std(
                [r["test_perplexity"] for r in runs])
        if runs and all("test_accuracy_best_of_last" in r for r in runs):
            row["student_test_best_of_last"], row["student_test_best_of_last_std"] = mean_std(
                [r["test_accuracy_best_of_last"] for r in runs])
        rows.append(row)
    final = next(r for r in rows if r["cell"] == "final")
    for row in rows:
        row["gain_vs_final_pp"] = 100 * (row["student_test_accuracy"] - final["student_test_accuracy"])
        other = row["cell"] != "final" and tuple(row["teachers"]) != tuple(final["teachers"])
        row["paired_vs_final"] = paired_difference(results.get(row["cell"], []), results.get("final", [])) \
            if other else None
        if other and "student_test_perplexity" in row and "student_test_perplexity" in final:
            row["paired_vs_final_perplexity"] = paired_difference(
                results.get(row["cell"], []), results.get("final", []), key="test_perplexity", scale=1.0,
                lower_is_better=True)
        if other and "student_test_best_of_last" in row and "student_test_best_of_last" in final:
            row["paired_vs_final_best_of_last"] = paired_difference(
                results.get(row["cell"], []), results.get("final", []), key="test_accuracy_best_of_last")
    # The paper's second claim: a snapshot ensemble of one run against independently trained teachers.
    ensemble = next((r for r in rows if r["cell"] == "selected_ensemble"), None)
    if ensemble and "full_ensemble" in results:
        ensemble["paired_vs_full_ensemble"] = paired_difference(results.get("selected_ensemble", []),
                                                                results["full_ensemble"])
        if "student_test_best_of_last" in ensemble:
            ensemble["paired_vs_full_ensemble_best_of_last"] = paired_difference(
                results.get("selected_ensemble", []), results["full_ensemble"], key="test_accuracy_best_of_last")
    summary: dict[str, Any] = {"recipe": recipe.source, "name": recipe.name, "rows": rows,
                               "selected": {k: r.selected for k, r in reports.items()},
                               "objective": reports[1].objective}
    snapshot_rows = [r for r in rows if r["cell"].startswith("snapshot:")]
    if snapshot_rows:
        oracle = max(snapshot_rows, key=lambda r: r["student_test_accuracy"])
        selected = next(r for r in rows if r["cell"] == "selected")
        summary["oracle"] = {"cell": oracle["cell"], "student_test_accuracy": oracle["student_test_accuracy"],
                             "regret_pp": 100 * (oracle["student_test_accuracy"] - selected["student_test_accuracy"])}
    summary["table"] = _table(rows, summary)
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2))
    (output_dir / "results.md").write_text(f"# Results: {recipe.name}\n\nRecipe: `{recipe.source}`; student test accuracy "
                                           f"(%) as mean ± std over seeds.\n\n{summary['table']}\n")
    selection_plot = output_dir / "selection" / "k1" / "information_plane.png"
    if selection_plot.is_file():
        shutil.copy(selection_plot, output_dir / "information_plane.png")
    plot_student_vs_teacher_epoch(rows, index, teacher_acc, output_dir / "student_vs_teacher_epoch.png",
                                  selected=reports[1].selected[0])
    return summary


def _table(rows: list[dict], summary: dict) -> str:
    lines = ["| how the student is taught | teacher epoch(s) | teacher test acc | student test acc | vs final (pp) | "
             "paired vs final, 95% CI (pp) | seeds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        teacher = _pp(r["teacher_test_accuracy"]) if r["teacher_test_accuracy"] is not None else "–"
        epochs = ", ".join(f"{e:g}" for e in r["teacher_epochs"]) or "–"
        student = mean_std_text(r["student_test_accuracy"], r["student_test_std"], r["seeds"])
        lines.append(f"| {r['description']} | {epochs} | {teacher} | {student} | {r['gain_vs_final_pp']:+.2f} | "
                     f"{paired_text(r.get('paired_vs_final'))} | {r['seeds']} |")
    lm = [r for r in rows if "student_test_perplexity" in r]
    if lm:
        lines += ["", "Held-out perplexity of the students (lower is better; the accuracies above are next-token "
                  "accuracies):", "", "| how the student is taught | student test perplexity | paired vs final, 95% CI |",
                  "|---|---|---|"]
        for r in lm:
            lines.append(f"| {r['description']} | "
                         f"{mean_std_text(r['student_test_perplexity'], r['student_test_perplexity_std'], r['seeds'], 1.0)} | "
                         f"{paired_text(r.get('paired_vs_final_perplexity'))} |")
    last = [r for r in rows if "student_test_best_of_last" in r]
    if last:
        lines += ["", "Best test accuracy of the last epochs (the paper's measure; the table above is the final epoch):",
                  "", "| how the student is taught | student test acc, best of last epochs | paired vs final, 95% CI (pp) |",
                  "|---|---|---|"]
        for r in last:
            lines.append(f"| {r['description']} | "
                         f"{mean_std_text(r['student_test_best_of_last'], r['student_test_best_of_last_std'], r['seeds'])} | "
                         f"{paired_text(r.get('paired_vs_final_best_of_last'))} |")
    ensemble = next((r for r in rows if r.get("paired_vs_full_ensemble")), None)
    if ensemble:
        lines.append(f"\nSelected snapshot ensemble − independently trained teachers' ensemble, paired by student seed: "
                     f"{paired_text(ensemble['paired_vs_full_ensemble'])} pp (final epoch)"
                     + (f", {paired_text(ensemble['paired_vs_full_ensemble_best_of_last'])} pp (best of last epochs)"
                        if ensemble.get("paired_vs_full_ensemble_best_of_last") else "") + ".")
    if "oracle" in summary:
        o = summary["oracle"]
        lines.append(f"\nOracle (best snapshot as teacher, by test accuracy): {o['cell']} at "
                     f"{_pp(o['student_test_accuracy'])}; selector regret {o['regret_pp']:.2f} pp.")
    return "\n".join(lines)


def plot_student_vs_teacher_epoch(rows: list[dict], index, teacher_acc: dict[str, float], path: Path,
                                  selected: str) -> None:
    """Student accuracy when taught by each snapshot, with that snapshot's own accuracy beside it."""
    points = {}
    for r in rows:
        if len(r["teachers"]) == 1 and r["teacher_epochs"]:
            points[r["teacher_epochs"][0]] = (r["student_test_accuracy"], r["student_test_std"], r["teachers"][0])
    epochs = sorted(points)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.errorbar(epochs, [100 * points[e][0] for e in epochs], yerr=[100 * points[e][1] for e in epochs], marker="o",
                color="tab:blue", capsize=3, label="student taught by the snapshot")
    no_kd = next((r for r in rows if r["cell"] == "no_kd"), None)
    if no_kd:
        ax.axhline(100 * no_kd["student_test_accuracy"], color="tab:gray", ls="--", label="student without KD")
    sel = next((s for s in index if s.name == selected), None)
    if sel is not None and sel.epoch in points:
        ax.plot([sel.epoch], [100 * points[sel.epoch][0]], "o", ms=14, mfc="none", mec="tab:red", mew=2,
                label=f"selected ({selected})")
    ax.set_xlabel("teacher snapshot epoch")
    ax.set_ylabel("student test accuracy (%)", color="tab:blue")
    twin = ax.twinx()
    t_epochs = [s.epoch for s in index if s.reference in teacher_acc]
    twin.plot(t_epochs, [100 * teacher_acc[s.reference] for s in index if s.reference in teacher_acc], "s-",
              color="tab:orange", alpha=0.7, label="snapshot's own test accuracy")
    twin.set_ylabel("teacher test accuracy (%)", color="tab:orange")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    ax.set_title("Which snapshot teaches best?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
