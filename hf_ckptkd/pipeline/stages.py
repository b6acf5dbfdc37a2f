"""Run a recipe end to end: teachers with snapshots → selection → students → report.

Every stage writes its outputs under the run directory and is skipped when they are complete, so
an interrupted run continues where it stopped (a teacher or student run also resumes from its
last complete checkpoint, one per epoch). Under `accelerate launch` every process runs the same
stages; training is data-parallel through `Trainer`, and only the main process selects, writes results and reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import TrainerCallback, set_seed

from ..config import ConfigError
from ..data.config import carved_splits
from ..data.record import dataset_record
from ..hub import push_teachers_to_hub
from ..files import write_json_atomic
from ..metrics import load_metric
from ..models.build import model_inputs
from .recipe import PIPELINE_STAGES, Recipe, section_config
from .resume import drop_checkpoints, resumable, train_resumably
from .results import NO_TEACHER, RESULT_NAME, StudentCell, best_other_teacher, is_close, write_report
from .runlog import RUN_LOG, log_to_file, say, stage_bar
from ..selection import SelectionReport, select_teachers
from ..selection.report import memorisation_signs
from ..selection.online import run_probe_settings
from ..snapshots.folders import SnapshotIndex
from ..tasks import RunData, perplexity, prepare_run_data, task_for
from ..training.trainer import CheckpointKDTrainer

RECIPE_RECORD = "recipe.json"


def _say(state: PartialState, message: str) -> None:
    say(message, state.is_main_process)


def _bar(state: PartialState, total: int, desc: str, unit: str):
    return stage_bar(total, desc, unit, state.is_main_process)


def check_run_dir(recipe: Recipe, output_dir: Path) -> None:
    """Refuse to mix two recipes' outputs in one run directory."""
    record = output_dir / RECIPE_RECORD
    if record.is_file():
        previous = json.loads(record.read_text())
        if previous.get("fingerprint") != recipe.fingerprint:
            raise ConfigError(
                f"{output_dir} holds a run of a different recipe ({previous.get('source')}, fingerprint "
                f"{previous.get('fingerprint')}; this one is {recipe.fingerprint}). Use another --output_dir, or delete "
                f"{output_dir} to start fresh.")


def _write_recipe_record(recipe: Recipe, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / RECIPE_RECORD, {"fingerprint": recipe.fingerprint, "source": recipe.source,
                                                   "recipe": recipe.to_dict()}, default=str)


def load_run_data(recipe: Recipe) -> RunData:
    """The recipe's splits (validation carved from training, see `carved_splits`), prepared by its task."""
    splits = carved_splits(recipe, train_samples=recipe.train_samples, validation_samples=recipe.validation_samples,
                           test_samples=recipe.test_samples, label_noise=recipe.label_noise,
                           labelled=task_for(recipe).labelled)
    return prepare_run_data(recipe, splits, where=f"recipe {recipe.source or recipe.name}")


def _build(section, run: RunData, seed: int):
    set_seed(seed)  # the initial weights too: students of one seed start alike whatever teaches them
    return run.build_model(section.model, section.model_kwargs)


def _trainer(run: RunData, model, config, train, *, run_log: Path, unit: str, **kwargs):
    trainer = CheckpointKDTrainer(model=model, args=config, train_dataset=train, data_collator=run.collator,
                                  label_names=run.label_names,
                                  **run.trainer_kwargs(distilling=bool(config.teachers)), **kwargs)
    log_to_file(trainer, run_log, unit)  # the terminal keeps the stage lines; per-step logs go to the run's log
    return trainer


def teacher_dataset_record(recipe: Recipe, run: RunData) -> dict[str, Any]:
    """What the teachers train on (the training split less the validation carve) and are evaluated on."""
    return dataset_record(
        recipe.dataset, config=recipe.dataset_config, train_split=recipe.train_split, train_examples=len(run.train),
        eval_split=recipe.train_split, eval_examples=len(run.validation), eval_held_out=True,
        test_split=recipe.test_split,
        image_column=recipe.image_column, label_column=recipe.label_column, text_column=recipe.text_column,
        tokenizer=recipe.tokenizer, max_length=recipe.max_length, label_noise=recipe.label_noise)


# --- stage 1: teachers ------------------------------------------------------------------------
def train_teachers(recipe: Recipe, run: RunData, output_dir: Path, state: PartialState) -> list[SnapshotIndex]:
    train, validation, _ = run.model_ready()
    indexes = []
    bar = _bar(state, recipe.full_ensemble, "teachers", "teacher")
    for i in range(recipe.full_ensemble):
        teacher_dir = output_dir / "teachers" / f"teacher-{i}"
        if finished_teacher(teacher_dir):
            _say(state, f"  teacher-{i}: done, skipped")
        else:
            start = time.time()
            training = resumable({"snapshot_strategy": "epoch", "eval_strategy": "epoch", **recipe.teacher.training})
            config = section_config(training, teacher_dir, seed=i)
            # snapshot_keep_top scores on the selection stage's probe set: the validation carve.
            keep_top = {"probe_dataset": run.validation, "probe_settings": run_probe_settings(run)} \
                if config.snapshot_keep_top is not None else {}
            trainer = _trainer(run, _build(recipe.teacher, run, seed=i), config, train, eval_dataset=validation,
                               dataset_record=teacher_dataset_record(recipe, run),
                               run_log=output_dir / RUN_LOG, unit=f"teachers/teacher-{i}", **keep_top)
            resume = train_resumably(trainer, teacher_dir, state)
            drop_checkpoints(teacher_dir, state)  # the final snapshot marks the teacher finished
            _say(state, f"  teacher-{i}: trained in {time.time() - start:.0f}s"
                        f"{' (resumed)' if resume else ''}, final validation accuracy "
                        f"{SnapshotIndex.load(teacher_dir).final.accuracy}")
        indexes.append(SnapshotIndex.load(teacher_dir))
        bar.update()
    bar.close()
    return indexes


def finished_teacher(teacher_dir: Path) -> bool:
    try:
        return SnapshotIndex.load(teacher_dir).final is not None
    except Exception:  # no index yet, or no final snapshot: not finished
        return False


# --- stage 2: selection -----------------------------------------------------------------------
def select(recipe: Recipe, run: RunData, output_dir: Path, index: SnapshotIndex, state: PartialState) -> dict[int, Any]:
    reports = {}
    for k in sorted({1, recipe.ensemble_k}):
        folder = output_dir / "selection" / f"k{k}"
        if not (folder / "selection.json").is_file():
            # Every process selects: they share the snapshots (see selection.processes); the main one saves.
            start = time.time()
            options = dict(recipe.selection)
            # The training split as a second probe: the report then shows the signs of memorisation.
            report = select_teachers(index, run.validation, k=k, image_column=recipe.image_column,
                                     label_column=run.label_column, progress=False, transform=run.transform,
                                     training_probe=run.train, **options)
            if state.is_main_process:
                report.extra["run"] = f"{recipe.name}/teacher-0"  # how a pushed teacher's card names its run
                report.save(folder)
                _say(state, f"  k={k}: selected {', '.join(report.selected)} in {time.time() - start:.0f}s")
                signs = memorisation_signs(report.scores)
                if signs:
                    _say(state, f"  memorisation: {signs}")
                for warning in report.warnings:
                    _say(state, f"  warning: {warning}")
        state.wait_for_everyone()
        reports[k] = SelectionReport.load(folder)
    return reports


# --- stage 3: students ------------------------------------------------------------------------
class EvaluateLastEpochs(TrainerCallback):
    """Evaluate at the end of each of the last `n` epochs only (the paper reports the best test
    accuracy of the last 10 epochs; evaluating every epoch would cost a test pass each)."""

    def __init__(self, n: int):
        self.n = n

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.epoch is not None and state.epoch > args.num_train_epochs - self.n + 1e-6:
            control.should_evaluate = True
        return control


def student_cells(recipe: Recipe, indexes: list[SnapshotIndex], reports: dict[int, Any]) -> list[StudentCell]:
    index = indexes[0]
    final = index.final
    halfway = min((s for s in index if not s.final), key=lambda s: abs(s.global_step - final.global_step / 2),
                  default=final)
    cells = [StudentCell(NO_TEACHER, (), "no teacher"),
             StudentCell("final", (final.reference,), f"final teacher ({final.name})"),
             StudentCell("halfway", (halfway.reference,), f"halfway snapshot ({halfway.name})")]
    selected = reports[1].selected[0]
    how = reports[1].objective  # what chose it: an information objective or a trivial baseline
    cells.append(StudentCell("selected", (index[selected].reference,), f"selected snapshot ({selected}; {how})"))
    if recipe.ensemble_k > 1:
        members = reports[recipe.ensemble_k].selected
        cells.append(StudentCell("selected_ensemble", tuple(index[m].reference for m in members),
                                 f"selected {len(members)}-snapshot ensemble ({', '.join(members)}; "
                                 f"{reports[recipe.ensemble_k].objective})"))
    if len(indexes) > 1:
        cells.append(StudentCell("full_ensemble", tuple(ix.final.reference for ix in indexes),
                                 f"{len(indexes)} independently trained final teachers"))
    if recipe.oracle:
        cells += [StudentCell(f"snapshot:{s.name}", (s.reference,), f"snapshot {s.name}") for s in index]
    return cells


def _run_slug(teachers: tuple[str, ...]) -> str:
    if not teachers:
        return NO_TEACHER
    parts = []
    for ref in teachers:
        folder, _, name = ref.rpartition(":")
        parts.append(f"{Path(folder).parent.name}-{name}")
    return "+".join(parts)


def train_students(recipe: Recipe, run: RunData, output_dir: Path, cells: list[StudentCell], seeds: int,
                   state: PartialState) -> dict[str, list[dict]]:
    """Train each distinct (teachers, seed) once; cells that share teachers share the run."""
    train, validation, test = run.model_ready()
    results: dict[str, list[dict]] = {}
    runs = sorted({(c.teachers, s) for c in cells for s in range(seeds)}, key=lambda r: (len(r[0]), r[0], r[1]))
    bar = _bar(state, len(runs), "student runs", "run")
    for n, (teachers, seed) in enumerate(runs, 1):
        run_dir = output_dir / "students" / _run_slug(teachers) / f"seed-{seed}"
        if not (run_dir / RESULT_NAME).is_file():
            start = time.time()
            config = section_config(resumable(recipe.student.training), run_dir, seed=seed,
                                    teachers=list(teachers) or None)
            last = recipe.best_of_last_epochs
            extra = {"eval_dataset": test, "callbacks": [EvaluateLastEpochs(last)]} if last else {}
            trainer = _trainer(run, _build(recipe.student, run, seed=seed), config, train, **extra,
                               run_log=output_dir / RUN_LOG, unit=f"students/{_run_slug(teachers)}/seed-{seed}")
            resumed = train_resumably(trainer, run_dir, state)
            val = trainer.evaluate(validation, metric_key_prefix="validation")
            tst = trainer.evaluate(test, metric_key_prefix="test")
            result = {"teachers": list(teachers), "seed": seed, "validation_accuracy": val["validation_accuracy"],
                      "test_accuracy": tst["test_accuracy"], "test_loss": tst["test_loss"],
                      "seconds": round(time.time() - start, 1)}
            if resumed:  # `seconds` then counts only what this process trained
                result["resumed"] = True
            if run.task.token_level:  # a causal LM: its test loss is the mean next-token cross-entropy
                result["test_perplexity"] = perplexity(tst["test_loss"])
            if last:
                per_epoch = {f"{h['epoch']:g}": h["eval_accuracy"] for h in trainer.state.log_history
                             if "eval_accuracy" in h}
                result.update(best_of_last_epochs=last, test_accuracy_by_epoch=per_epoch,
                              test_accuracy_best_of_last=max([*per_epoch.values(), tst["test_accuracy"]]))
            if state.is_main_process:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_json_atomic(run_dir / RESULT_NAME, result)  # a run killed mid-write leaves no half result
            drop_checkpoints(run_dir, state)
            _say(state, f"  student {n}/{len(runs)} [{_run_slug(teachers)}, seed {seed}]: test accuracy "
                        f"{tst['test_accuracy']:.4f} ({time.time() - start:.0f}s{', resumed' if resumed else ''})")
        result = json.loads((run_dir / RESULT_NAME).read_text())
        for cell in cells:
            if cell.teachers == teachers:
                results.setdefault(cell.name, []).append(result)
        bar.update()
    bar.close()
    return results


def teacher_test_accuracy(run: RunData, snapshots, output_dir: Path) -> dict[str, float]:
    """Test accuracy of each snapshot used as a teacher (cached in teachers/test_accuracy.json); next-token
    accuracy for causal LMs."""
    cache_path = output_dir / "teachers" / "test_accuracy.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    _, _, test = run.model_ready()
    accuracy = load_metric("accuracy")
    state = PartialState()
    device = state.device
    todo = [s for s in snapshots if s.reference not in cache]
    bar = _bar(state, len(todo), "teacher test accuracy", "snapshot")
    for snapshot in todo:
        model = snapshot.load_model(device=device).eval()
        predictions, references = [], []
        with torch.inference_mode():
            for start in range(0, len(test), 512):
                batch = run.collator([test[i] for i in range(start, min(start + 512, len(test)))])
                inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
                predicted, true = run.task.predictions(model(**inputs).logits, batch["labels"])
                predictions += predicted.tolist()
                references += true.tolist()
        cache[snapshot.reference] = accuracy.compute(predictions=predictions, references=references)["accuracy"]
        cache_path.write_text(json.dumps(cache, indent=2))
        bar.update()
    bar.close()
    return cache


# --- the whole run ----------------------------------------------------------------------------
def run(recipe: Recipe, output_dir: str | Path, *, stages: list[str] | None = None, seeds: int | None = None,
        oracle: bool | None = None, push_to_hub: str | None = None) -> dict[str, Any] | None:
    """Run the recipe's stages under `output_dir`; returns the results (None if the report stage did not run)."""
    stages = list(stages or PIPELINE_STAGES)
    unknown = [s for s in stages if s not in PIPELINE_STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; the stages are {', '.join(PIPELINE_STAGES)}")
    if seeds is not None:
        recipe.seeds = seeds
    if oracle is not None:
        recipe.oracle = oracle
    output_dir = Path(output_dir)
    state = PartialState()
    check_run_dir(recipe, output_dir)
    state.wait_for_everyone()  # every process has read the old record before the main one replaces it
    if state.is_main_process:
        _write_recipe_record(recipe, output_dir)
    state.wait_for_everyone()
    started = time.time()
    run_data = load_run_data(recipe)
    _say(state, f"[{recipe.name}] {len(run_data.train)} training, {len(run_data.validation)} validation, "
                f"{len(run_data.test)} test examples; run directory {output_dir} (training logs in {RUN_LOG})")

    def stage(name: str) -> bool:
        selected = name in stages
        _say(state, f"stage {name}{'' if selected else ': not requested, using existing outputs'}")
        return selected

    def later(name: str) -> bool:
        return any(s in stages for s in PIPELINE_STAGES[PIPELINE_STAGES.index(name) + 1:])

    indexes = train_teachers(recipe, run_data, output_dir, state) if stage("teachers") else \
        [SnapshotIndex.load(output_dir / "teachers" / f"teacher-{i}") for i in range(recipe.full_ensemble)]
    results = summary = None
    if later("teachers"):
        reports = select(recipe, run_data, output_dir, indexes[0], state) if stage("select") else \
            _load_reports(recipe, output_dir)
    if later("select"):
        cells = student_cells(recipe, indexes, reports)
        results = train_students(recipe, run_data, output_dir, cells, recipe.seeds, state) if stage("students") else None
        best = best_other_teacher(cells, results) if results is not None and recipe.seeds_if_close else None
        if best and recipe.seeds_if_close > recipe.seeds and is_close(best["paired_vs_final"]):
            # Every process reads the same result files, so all of them take this branch together.
            _say(state, f"  {best['teacher']} is within two standard errors of the final teacher: "
                        f"{recipe.seeds_if_close} seeds")
            recipe.seeds = recipe.seeds_if_close
            results = train_students(recipe, run_data, output_dir, cells, recipe.seeds, state)
    if stage("report") and state.is_main_process:
        if results is None:
            results = _load_student_results(output_dir, cells, recipe.seeds)
        used = {ref for c in cells for ref in c.teachers}
        # Every snapshot's own accuracy is plotted with the oracle; otherwise only the teachers used.
        snapshots = [s for ix in indexes for s in ix if s.reference in used or (recipe.oracle and ix is indexes[0])]
        teacher_acc = teacher_test_accuracy(run_data, snapshots, output_dir)
        summary = write_report(recipe, output_dir, cells, results, indexes, reports, teacher_acc)
        print(summary["table"], flush=True)
        if push_to_hub:
            for k, report in reports.items():
                pushed = push_teachers_to_hub(report, f"{push_to_hub}-k{k}")
                _say(state, f"  pushed k={k}: {pushed}")
    _say(state, f"total time {time.time() - started:.0f}s")
    return summary


def _load_reports(recipe: Recipe, output_dir: Path) -> dict[int, Any]:
    reports = {}
    for k in sorted({1, recipe.ensemble_k}):
        folder = output_dir / "selection" / f"k{k}"
        if not (folder / "selection.json").is_file():
            raise ConfigError(f"{folder} has no selection yet; run the 'select' stage first")
        reports[k] = SelectionReport.load(folder)
    return reports


def _load_student_results(output_dir: Path, cells: list[StudentCell], seeds: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for cell in cells:
        for seed in range(seeds):
            path = output_dir / "students" / _run_slug(cell.teachers) / f"seed-{seed}" / RESULT_NAME
            if path.is_file():
                results.setdefault(cell.name, []).append(json.loads(path.read_text()))
    return results
