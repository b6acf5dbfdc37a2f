"""Studies: one recipe varied along one axis, each cell a full pipeline run, one table at the end.

A study file names a base recipe, the seeds and a `vary` mapping from a recipe key (dotted for
the sections, e.g. `teacher.num_train_epochs`) to the values to try:

    base: ../fashion_mnist_full.yaml
    seeds: 3
    vary:
      train_samples: [2000, 4000, 10000]

Settings that only make sense together vary as one: the key is a section and each value a mapping
of that section's keys (`teacher: [{lr_scheduler_type: cosine_with_min_lr, lr_scheduler_kwargs:
{min_lr_rate: 0.1}}]`); such a cell is named by its dotted keys, `teacher.lr_scheduler_type=...`.

`fixed` (optional) sets keys in every cell, beside its vary value, e.g. `fixed: {full_ensemble: 1,
ensemble_k: 1}` for cells that only ask about single snapshots and should not pay for a second
teacher and the ensemble students.

The cell whose recipe is the base recipe itself runs in the base's own run directory
(`runs/<name>`, where `hf-ckptkd run` puts it), so a study and the base run share that work. When
no cell is the base recipe, a finished base run (with the oracle) heads the table as its reference
row, so a study of "what changes if ..." can leave the unchanged case to the base run.
Cells whose teachers would be trained alike (a study of a student setting) train them once: a
later cell starts from a copy of an earlier cell's finished teachers. Likewise the students trained
without a teacher, which depend on neither the teachers nor `alpha` and `temperature`.

Every cell runs with the oracle (every snapshot teaches a student), so the table can say whether
the best intermediate snapshot beats the final teacher, and the selector's regret and the
Spearman correlation between J and student accuracy are computed for both objectives from the
same runs (J is recomputed from the scores the selector saved).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError
from .stages import RECIPE_RECORD, finished_teacher, run
from .results import NO_TEACHER, RESULT_NAME, paired_text
from .recipe import recipe_from_dict
from ..selection.objectives import OBJECTIVES


def load_study(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study {path} does not exist; the studies that ship are in recipes/studies/")
    study = yaml.safe_load(path.read_text()) or {}
    unknown = set(study) - {"base", "seeds", "vary", "fixed", "name"}
    if unknown:
        raise ConfigError(f"study {path}: unknown key(s) {sorted(unknown)}; a study has base, seeds, vary, fixed and name")
    if "base" not in study or not isinstance(study.get("vary"), dict) or len(study["vary"]) != 1:
        raise ConfigError(f"study {path} needs `base` (a recipe path) and `vary` with exactly one key and its values")
    if not isinstance(study.setdefault("fixed", {}), dict):
        raise ConfigError(f"study {path}: `fixed` must map recipe keys to the value every cell takes, "
                          f"e.g. {{full_ensemble: 1}}; got {study['fixed']!r}")
    study["base_path"] = (path.parent / study["base"]).resolve()
    study.setdefault("name", path.stem)
    return study


_SECTIONS = ("teacher", "student", "selection")


def _settings(key: str, value: Any) -> dict[str, Any]:
    """The dotted recipe keys one vary value sets: one, or a section's several."""
    if key in _SECTIONS:
        if not isinstance(value, dict) or not value:
            raise ConfigError(f"vary key {key!r} is a section: each value must be a mapping of its keys, "
                              f"e.g. {{lr_scheduler_type: cosine}}; got {value!r}")
        return {f"{key}.{field}": v for field, v in value.items()}
    return {key: value}


def _cell_name(key: str, value: Any) -> str:
    parts = []
    for k, v in _settings(key, value).items():
        if isinstance(v, dict):  # a nested mapping reads as dotted keys too: ...kwargs.min_lr_rate=0.1
            parts += [f"{k}.{inner}={w}" for inner, w in v.items()]
        else:
            parts.append(f"{k}={v}")
    return ",".join(parts)


def _cell_recipe(base: dict[str, Any], key: str, value: Any, source: str, fixed: dict[str, Any] | None = None):
    values = copy.deepcopy(base)
    # The fixed keys first, so that the vary value wins where both set a key.
    for where, k, v in [*(("fixed key", k, v) for k, v in (fixed or {}).items()), ("vary key", key, value)]:
        for dotted, setting in _settings(k, v).items():
            section, _, field = dotted.rpartition(".")
            if section and section not in _SECTIONS:
                raise ConfigError(f"{where} {k!r}: the sections are {', '.join(_SECTIONS)}")
            (values.setdefault(section, {}) if section else values)[field] = setting
    values["oracle"] = True
    return recipe_from_dict(values, source=source)


def is_run_of(recipe, run_dir: Path) -> bool:
    """run_dir holds a run of this recipe (not of an older version of it)."""
    record = run_dir / RECIPE_RECORD
    return record.is_file() and json.loads(record.read_text()).get("fingerprint") == recipe.fingerprint


def _finished_teachers(recipe, run_dir: Path) -> bool:
    """The teachers in run_dir are finished and were trained for this recipe."""
    return is_run_of(recipe, run_dir) and all(
        finished_teacher(run_dir / "teachers" / f"teacher-{i}") for i in range(recipe.full_ensemble))


def _copy_teachers(source: Path, cell_dir: Path, count: int) -> None:
    """Copy the cell's first `count` teachers (teacher i is seeded with i, whatever the ensemble's size);
    those the source lacks, the cell trains."""
    print(f"   teachers copied from {source} (same teacher settings)", flush=True)
    for i in range(count):
        teacher = source / "teachers" / f"teacher-{i}"
        if finished_teacher(teacher):
            # The test-accuracy cache is keyed by snapshot paths, which differ in the copy: recomputed.
            shutil.copytree(teacher, cell_dir / "teachers" / teacher.name,
                            ignore=shutil.ignore_patterns("test_accuracy.json"))


def _copy_no_teacher_students(source: Path, cell_dir: Path) -> None:
    # A student without a teacher does not see what the cells vary (teachers, alpha, T): same seed, same run.
    finished = [d for d in sorted((source / "students" / NO_TEACHER).glob("seed-*")) if (d / RESULT_NAME).is_file()]
    missing = [d for d in finished if not (cell_dir / "students" / NO_TEACHER / d.name).exists()]
    if missing:
        print(f"   {len(missing)} no-teacher student(s) copied from {source} (same student settings)", flush=True)
    for d in missing:
        shutil.copytree(d, cell_dir / "students" / NO_TEACHER / d.name)


def _has_oracle_report(recipe, run_dir: Path) -> bool:
    """run_dir holds a finished run of this recipe that distilled from every snapshot."""
    report = run_dir / "results.json"
    return is_run_of(recipe, run_dir) and report.is_file() and any(
        r["cell"].startswith("snapshot:") for r in json.loads(report.read_text())["rows"])


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for t in range(i, j + 1):
                r[order[t]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((p - ma) * (q - mb) for p, q in zip(ra, rb))
    den = (sum((p - ma) ** 2 for p in ra) * sum((q - mb) ** 2 for q in rb)) ** 0.5
    return cov / den if den else float("nan")


def summarise_cell(run_dir: Path) -> dict[str, Any]:
    results = json.loads((run_dir / "results.json").read_text())
    rows = {r["cell"]: r for r in results["rows"]}
    scores = json.loads((run_dir / "selection" / "k1" / "selection.json").read_text())["scores"]
    snap_acc = {c.split(":", 1)[1]: r["student_test_accuracy"] for c, r in rows.items() if c.startswith("snapshot:")}
    final_name = rows["final"]["description"].split("(")[1].rstrip(")")
    oracle_name = max(snap_acc, key=snap_acc.get)
    intermediate = {n: a for n, a in snap_acc.items() if n != final_name}
    cell = {
        "no_kd": rows["no_kd"]["student_test_accuracy"], "final": rows["final"]["student_test_accuracy"],
        "halfway": rows["halfway"]["student_test_accuracy"], "selected": rows["selected"]["student_test_accuracy"],
        "oracle": snap_acc[oracle_name], "oracle_snapshot": oracle_name,
        "best_intermediate_minus_final_pp": 100 * (max(intermediate.values()) - rows["final"]["student_test_accuracy"])
        if intermediate else float("nan"),
        "selected_ensemble": rows.get("selected_ensemble", {}).get("student_test_accuracy"),
        "full_ensemble": rows.get("full_ensemble", {}).get("student_test_accuracy"),
        "final_teacher_test_accuracy": rows["final"]["teacher_test_accuracy"],
        "std": {c: rows[c]["student_test_std"] for c in ("no_kd", "final", "selected") if c in rows},
        # The best intermediate snapshot against the final teacher, paired by student seed (95 % t interval).
        "best_intermediate_paired": rows[f"snapshot:{max(intermediate, key=intermediate.get)}"].get("paired_vs_final")
        if intermediate else None,
    }
    # Every intermediate snapshot against the final teacher, paired by student seed (95 % t intervals),
    # on the final-epoch accuracy and on the paper's best of the last epochs.
    cell["paired_vs_final"] = {n: rows[f"snapshot:{n}"].get("paired_vs_final") for n in intermediate}
    cell["paired_vs_final_best_of_last"] = {n: rows[f"snapshot:{n}"].get("paired_vs_final_best_of_last")
                                            for n in intermediate}
    # Whether a winning snapshot is itself the more accurate model (early stopping) or a better teacher only.
    cell["snapshot_test_accuracy"] = {c.split(":", 1)[1]: r["teacher_test_accuracy"] for c, r in rows.items()
                                      if c.startswith("snapshot:")}
    cell["ensemble_vs_full_ensemble"] = rows.get("selected_ensemble", {}).get("paired_vs_full_ensemble")
    for objective, selector in OBJECTIVES.items():
        j = selector.values_from_scores(scores)
        names = [n for n in j if n in snap_acc]
        chosen = max(names, key=lambda n: j[n])
        cell[f"{objective}_selected"] = chosen
        cell[f"{objective}_regret_pp"] = 100 * (snap_acc[oracle_name] - snap_acc[chosen])
        cell[f"{objective}_spearman"] = spearman([j[n] for n in names], [snap_acc[n] for n in names])
    return cell


def study_cells(path: str | Path, output_dir: str | Path | None = None):
    """The study's base recipe and its base run directory, and each cell as (name, recipe, run directory).

    A cell equal to the base recipe runs in the base's own directory, `runs/<name>`."""
    study = load_study(path)
    base = yaml.safe_load(study["base_path"].read_text())
    (key, values), = study["vary"].items()
    output_dir = Path(output_dir or f"runs/studies/{study['name']}")
    base_recipe = recipe_from_dict(copy.deepcopy(base), source=str(study["base_path"]))
    base_dir = Path("runs") / base_recipe.name
    cells = []
    for value in values:
        name = _cell_name(key, value)
        recipe = _cell_recipe(base, key, value, source=f"{path} [{name}]", fixed=study["fixed"])
        cell_dir = base_dir if recipe.fingerprint == base_recipe.fingerprint else output_dir / name.replace("/", "_")
        cells.append((name, recipe, cell_dir))
    return base_recipe, base_dir, cells


def run_study(path: str | Path, output_dir: str | Path | None = None, seeds: int | None = None) -> dict[str, Any]:
    study = load_study(path)
    output_dir = Path(output_dir or f"runs/studies/{study['name']}")
    base_recipe, base_dir, cells = study_cells(path, output_dir)
    trained = {}  # teacher fingerprint -> a run directory whose teachers are finished
    alone = {}  # no-teacher fingerprint -> a run directory that trained the students without a teacher
    if _finished_teachers(base_recipe, base_dir):
        trained[base_recipe.teacher_fingerprint] = base_dir
    if is_run_of(base_recipe, base_dir):
        alone[base_recipe.no_teacher_fingerprint] = base_dir
    summaries = {}
    for name, recipe, cell_dir in cells:
        print(f"== {study['name']}: {name}", flush=True)
        source = trained.get(recipe.teacher_fingerprint)
        if source is not None and source != cell_dir and not (cell_dir / "teachers").exists():
            _copy_teachers(source, cell_dir, recipe.full_ensemble)
        source = alone.get(recipe.no_teacher_fingerprint)
        if source is not None and source != cell_dir:
            _copy_no_teacher_students(source, cell_dir)
        run(recipe, cell_dir, seeds=seeds or study.get("seeds"), oracle=True)
        trained.setdefault(recipe.teacher_fingerprint, cell_dir)
        alone.setdefault(recipe.no_teacher_fingerprint, cell_dir)
        summaries[name] = summarise_cell(cell_dir)
    if base_dir not in [d for _, _, d in cells] and _has_oracle_report(base_recipe, base_dir):
        summaries = {f"base ({base_recipe.name})": summarise_cell(base_dir), **summaries}
    table = study_table(study["name"], summaries)
    (output_dir / "study.json").write_text(json.dumps(summaries, indent=2))
    (output_dir / "study.md").write_text(table + "\n")
    print(table, flush=True)
    return summaries


def study_table(name: str, cells: dict[str, dict]) -> str:
    def pp(v):
        return "–" if v is None else f"{100 * v:.2f}"

    lines = [f"Study {name}: student test accuracy (%), mean over seeds",
             "", "| cell | teacher | no KD | final | halfway | selected | oracle (snapshot) | best inter − final (pp) | "
                 "2-snap ens. | 2-teacher ens. | regret " + " / ".join(OBJECTIVES) + " (pp) | Spearman "
                 + " / ".join(OBJECTIVES) + " |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell, c in cells.items():
        regret = " / ".join(f"{c[f'{o}_regret_pp']:.2f}" for o in OBJECTIVES)
        rho = " / ".join(f"{c[f'{o}_spearman']:+.2f}" for o in OBJECTIVES)
        lines.append(
            f"| {cell} | {pp(c['final_teacher_test_accuracy'])} | {pp(c['no_kd'])} | {pp(c['final'])} | {pp(c['halfway'])} | "
            f"{pp(c['selected'])} | {pp(c['oracle'])} ({c['oracle_snapshot']}) | {c['best_intermediate_minus_final_pp']:+.2f} | "
            f"{pp(c['selected_ensemble'])} | {pp(c['full_ensemble'])} | {regret} | {rho} |")
    lines += _paired_table(cells, "paired_vs_final", "final-epoch test accuracy")
    if any(any(c.get("paired_vs_final_best_of_last", {}).values()) for c in cells.values()):
        lines += _paired_table(cells, "paired_vs_final_best_of_last", "best test accuracy of the last epochs")
    snapshots = sorted({n for c in cells.values() for n in c.get("snapshot_test_accuracy", {})})
    lines += ["", "Each snapshot's own test accuracy (%), as a model:", "",
              "| cell | " + " | ".join(snapshots) + " |", "|---|" + "---|" * len(snapshots)]
    lines += [f"| {cell} | " + " | ".join(pp(c.get("snapshot_test_accuracy", {}).get(n)) for n in snapshots) + " |"
              for cell, c in cells.items()]
    ensembles = {cell: c["ensemble_vs_full_ensemble"] for cell, c in cells.items() if c.get("ensemble_vs_full_ensemble")}
    if ensembles:
        lines += ["", "Selected snapshot ensemble − independently trained teachers' ensemble (pp, paired, 95% CI):", "",
                  "| cell | difference |", "|---|---|"]
        lines += [f"| {cell} | {paired_text(p)} |" for cell, p in ensembles.items()]
    return "\n".join(lines)


def _paired_table(cells: dict[str, dict], key: str, measure: str) -> list[str]:
    snapshots = sorted({n for c in cells.values() for n in c.get(key, {})})
    lines = ["", f"Each intermediate snapshot's student − the final teacher's student, {measure} (pp, mean over "
                 "student seeds paired by seed, 95% t interval; better/worse only where it excludes 0):", "",
             "| cell | " + " | ".join(snapshots) + " |", "|---|" + "---|" * len(snapshots)]
    for cell, c in cells.items():
        lines.append(f"| {cell} | " + " | ".join(paired_text(c.get(key, {}).get(n)) for n in snapshots) + " |")
    return lines


__all__ = ["load_study", "study_cells", "is_run_of", "run_study", "spearman", "summarise_cell", "study_table"]
