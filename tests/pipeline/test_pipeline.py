"""The recipe pipeline: a tiny recipe end to end, resumption, two processes, and bad recipes."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hf_ckptkd.cli.main import main
from hf_ckptkd.config import ConfigError
from hf_ckptkd.pipeline.stages import run
from text_data import write_tiny_text_set
from hf_ckptkd.pipeline.recipe import load_recipe, recipe_from_dict
from hf_ckptkd.snapshots import SnapshotIndex

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "recipes" / "tiny.yaml"


def _tiny(**changes):
    values = yaml.safe_load(TINY.read_text())
    values.update(changes)
    return recipe_from_dict(values, source="tiny")


@pytest.mark.slow
def test_tiny_recipe_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    # Interrupted after the first stage: only the teachers exist.
    run(_tiny(), out, stages=["teachers"])
    assert (out / "teachers" / "teacher-0" / "snapshots" / "index.json").is_file()
    record = SnapshotIndex.load(out / "teachers" / "teacher-0").final.dataset  # what the card will say
    assert record["name"] == _tiny().dataset and record["train"]["num_examples"] == _tiny().train_samples
    assert record["eval"] == {"split": "train", "num_examples": _tiny().validation_samples, "held_out": True}
    assert not (out / "selection").exists()
    capsys.readouterr()
    summary = run(_tiny(), out, oracle=True)
    printed = capsys.readouterr().out
    assert "teacher-0: done, skipped" in printed and "teacher-1: done, skipped" in printed
    cells = [r["cell"] for r in summary["rows"]]
    assert cells[:6] == ["no_kd", "final", "halfway", "selected", "selected_ensemble", "full_ensemble"]
    assert [c for c in cells if c.startswith("snapshot:")] == ["snapshot:epoch-0001", "snapshot:epoch-0002",
                                                               "snapshot:epoch-0003"]
    for row in summary["rows"]:
        assert 0.0 <= row["student_test_accuracy"] <= 1.0 and row["seeds"] == 1
    final = next(r for r in summary["rows"] if r["cell"] == "final")
    same_teacher = next(r for r in summary["rows"] if r["cell"] == "snapshot:epoch-0003")
    assert final["student_test_accuracy"] == same_teacher["student_test_accuracy"], "one run serves both cells"
    oracle = max(r["student_test_accuracy"] for r in summary["rows"] if r["cell"].startswith("snapshot:"))
    assert summary["oracle"]["student_test_accuracy"] == oracle
    for name in ("results.md", "results.json", "student_vs_teacher_epoch.png", "information_plane.png"):
        assert (out / name).is_file(), name
    assert "| how the student is taught |" in (out / "results.md").read_text()
    # Everything is complete: a third run trains nothing and reports the same numbers.
    again = run(_tiny(), out, oracle=True)
    printed = capsys.readouterr().out
    assert "student 1/" not in printed
    assert [r["student_test_accuracy"] for r in again["rows"]] == [r["student_test_accuracy"] for r in summary["rows"]]
    # More seeds add runs without redoing the old ones.
    run(_tiny(), out, stages=["students"], seeds=2)
    assert "seed 1" in capsys.readouterr().out
    assert (out / "students" / "no_kd" / "seed-1" / "result.json").is_file()
    # The report pairs the selected snapshot ensemble with the independently trained teachers' ensemble by seed.
    rows = {r["cell"]: r for r in run(_tiny(), out, stages=["report"], seeds=2)["rows"]}
    accuracy = {}
    for path in (out / "students").glob("*/seed-*/result.json"):
        r = json.loads(path.read_text())
        accuracy[(tuple(r["teachers"]), r["seed"])] = r["test_accuracy"]
    ensemble, full = tuple(rows["selected_ensemble"]["teachers"]), tuple(rows["full_ensemble"]["teachers"])
    expected = 50 * sum(accuracy[(ensemble, s)] - accuracy[(full, s)] for s in (0, 1))
    assert rows["selected_ensemble"]["paired_vs_full_ensemble"]["mean_pp"] == pytest.approx(expected)
    assert "independently trained teachers' ensemble, paired by student seed" in (out / "results.md").read_text()


def test_best_of_last_epochs_and_paired_differences(tmp_path, capsys):
    tiny = yaml.safe_load(TINY.read_text())
    # One seed gives no interval, so seeds_if_close adds the second before the report.
    recipe = _tiny(full_ensemble=1, ensemble_k=1, best_of_last_epochs=2, seeds_if_close=2,
                   student={**tiny["student"], "num_train_epochs": 3})
    summary = run(recipe, tmp_path / "run")
    assert "is within two standard errors of the final teacher: 2 seeds" in capsys.readouterr().out
    assert all(row["seeds"] == 2 for row in summary["rows"])
    result = json.loads((tmp_path / "run" / "students" / "no_kd" / "seed-1" / "result.json").read_text())
    assert sorted(result["test_accuracy_by_epoch"]) == ["2", "3"]  # the last two epochs only
    assert result["test_accuracy_by_epoch"]["3"] == pytest.approx(result["test_accuracy"])
    assert result["test_accuracy_best_of_last"] == max(result["test_accuracy_by_epoch"].values())
    rows = {r["cell"]: r for r in summary["rows"]}
    assert rows["final"]["paired_vs_final"] is None
    paired = rows["no_kd"]["paired_vs_final"]
    by_teachers = {}
    for path in (tmp_path / "run" / "students").glob("*/seed-*/result.json"):
        r = json.loads(path.read_text())
        by_teachers[(tuple(r["teachers"]), r["seed"])] = r["test_accuracy"]
    final = tuple(rows["final"]["teachers"])
    expected = 50 * sum(by_teachers[((), s)] - by_teachers[(final, s)] for s in (0, 1))  # mean of 2, in points
    assert paired["seeds"] == 2 and paired["mean_pp"] == pytest.approx(expected)
    assert "student_test_best_of_last" in rows["no_kd"] and "paired_vs_final_best_of_last" in rows["halfway"]
    table = (tmp_path / "run" / "results.md").read_text()
    assert "paired vs final, 95% CI (pp)" in table and "best of last epochs" in table
    # A recipe without the key keeps the fingerprint it had before the key existed; setting it retrains.
    assert _tiny().fingerprint == _tiny(best_of_last_epochs=0).fingerprint != _tiny(best_of_last_epochs=2).fingerprint
    assert _tiny(seeds_if_close=5).fingerprint == _tiny().fingerprint  # like seeds, it only adds runs


def test_symmetric_label_noise_changes_an_exact_seeded_share_of_training_labels():
    from datasets import ClassLabel, Dataset, Features, Value

    from hf_ckptkd.data import with_label_noise

    clean = Dataset.from_dict({"x": list(range(200)), "label": [i % 5 for i in range(200)]},
                              features=Features({"x": Value("int64"), "label": ClassLabel(num_classes=5)}))
    noisy = with_label_noise(clean, "label", 0.2, 5)
    changed = [i for i, (a, b) in enumerate(zip(clean["label"], noisy["label"])) if a != b]
    assert len(changed) == 40  # exactly 20 %, each to a different class
    assert with_label_noise(clean, "label", 0.2, 5)["label"] == noisy["label"]  # seeded
    assert sorted(set(noisy["label"])) == [0, 1, 2, 3, 4]
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="label_noise"):
            _tiny(label_noise=bad)
    with pytest.raises(ConfigError, match="best_of_last_epochs"):
        _tiny(best_of_last_epochs=-1)


def test_run_dir_of_another_recipe_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.json").write_text(json.dumps({"fingerprint": "0123", "source": "other.yaml"}))
    with pytest.raises(ConfigError, match=r"holds a run of a different recipe \(other.yaml.*delete .* to start fresh"):
        run(_tiny(), out)


def test_fingerprints_say_what_a_change_retrains():
    base, tiny = _tiny(), yaml.safe_load(TINY.read_text())
    student_change = _tiny(student={**tiny["student"], "learning_rate": 0.01})
    teacher_change = _tiny(teacher={**tiny["teacher"], "num_train_epochs": 4})
    assert _tiny(seeds=3, oracle=True).fingerprint == base.fingerprint  # seeds and the oracle only add runs
    assert student_change.fingerprint != base.fingerprint and student_change.teacher_fingerprint == base.teacher_fingerprint
    assert teacher_change.teacher_fingerprint != base.teacher_fingerprint
    # Teacher i is seeded with i whatever the ensemble's size: fewer teachers are a prefix of the same ones.
    assert _tiny(full_ensemble=1).teacher_fingerprint == base.teacher_fingerprint
    assert _tiny(train_samples=150).teacher_fingerprint != base.teacher_fingerprint
    # A student without a teacher depends on neither the teachers nor the distillation settings.
    kd_change = _tiny(student={**tiny["student"], "alpha": 0.9, "temperature": 2.0})
    assert kd_change.no_teacher_fingerprint == teacher_change.no_teacher_fingerprint == base.no_teacher_fingerprint
    assert student_change.no_teacher_fingerprint != base.no_teacher_fingerprint
    assert _tiny(train_samples=150).no_teacher_fingerprint != base.no_teacher_fingerprint
    assert _tiny(student={**tiny["student"], "model": "timm:cifar_resnet8"}).no_teacher_fingerprint != base.no_teacher_fingerprint


def test_distillation_fields_are_config_fields():
    from hf_ckptkd.config import DISTILLATION_FIELDS, CheckpointKDConfig

    names = [f.name for f in dataclasses.fields(CheckpointKDConfig)]
    # They are the fields declared from `teachers` on; a new one there must be listed (or moved).
    assert list(DISTILLATION_FIELDS) == names[names.index("teachers"):]


@pytest.mark.parametrize("changes,message", [
    ({"train_sampels": 100}, r"unknown key 'train_sampels'; did you mean 'train_samples'\?"),
    ({"seeds": "three"}, r"seeds='three' has the wrong type"),
    ({"seeds": 3, "seeds_if_close": 3}, r"seeds_if_close=3 must be above seeds \(3\)"),
    ({"teacher": {"model": "timm:test_resnet", "num_train_epoch": 2}},
     r"teacher: unknown key 'num_train_epoch'; did you mean 'num_train_epochs'\?"),
    ({"student": {"model": "timm:test_resnet", "learning_rate": "fast"}}, r"student: learning_rate='fast' has the wrong type"),
    ({"selection": {"objectiv": "features"}}, r"unknown selection key 'objectiv'; did you mean 'objective'\?"),
    ({"student": {"num_train_epochs": 1}}, r"student must be a mapping with at least a 'model' key"),
])
def test_bad_recipes_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        _tiny(**changes)


def test_unknown_stage_and_missing_dataset(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown stage\(s\) \['distil'\]; the stages are teachers, select"):
        run(_tiny(), tmp_path / "a", stages=["distil"])
    bad = tmp_path / "bad.yaml"
    values = yaml.safe_load(TINY.read_text())
    values["dataset"] = str(tmp_path / "no-such-dataset")
    bad.write_text(yaml.safe_dump(values))
    assert main(["run", str(bad), "--output_dir", str(tmp_path / "b")]) == 2
    assert "could not load dataset" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err


def test_shipped_recipes_parse():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe.teacher.model and recipe.student.model, path


@pytest.mark.slow
def test_tiny_recipe_under_two_processes(tmp_path, accelerate_launch):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.run(
        [*accelerate_launch, "-m", "hf_ckptkd.cli", "run", str(TINY), "--output_dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=900, env=env)
    assert launch.returncode == 0, launch.stderr[-3000:]
    assert launch.stdout.count("stage report") == 1, "only the main process prints"
    summary = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {r["cell"] for r in summary["rows"]} >= {"no_kd", "final", "selected", "full_ensemble"}
    snapshots = json.loads((tmp_path / "run" / "teachers" / "teacher-0" / "snapshots" / "index.json").read_text())
    assert [s["name"] for s in snapshots["snapshots"]] == ["epoch-0001", "epoch-0002", "epoch-0003"]


@pytest.mark.slow
def test_a_killed_student_run_resumes_from_its_last_complete_checkpoint(tmp_path):
    """A run killed in the middle of a student (a session ending, SIGKILL) resumes that student from its
    last per-epoch checkpoint, ignores one a kill left half written, and reports what an uninterrupted
    run reports; no checkpoint is left behind."""
    values = yaml.safe_load(TINY.read_text())
    values.update(full_ensemble=1, ensemble_k=1, best_of_last_epochs=3)
    values["student"].update(num_train_epochs=6)
    recipe = tmp_path / "resume.yaml"
    recipe.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(out):  # the report is not under test
        return [sys.executable, "-m", "hf_ckptkd.cli", "run", str(recipe), "--output_dir", str(out),
                "--stages", "teachers", "select", "students"]

    student = tmp_path / "run" / "students" / "no_kd" / "seed-0"  # the first student run

    def epochs_checkpointed():  # a checkpoint is complete once its trainer_state.json, written last, reads
        done = []
        for state in student.glob("checkpoint-*/trainer_state.json"):
            try:
                done.append(json.loads(state.read_text())["epoch"])
            except ValueError:
                pass
        return done

    killed = subprocess.Popen(command(tmp_path / "run"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 600
        while not epochs_checkpointed() and killed.poll() is None:
            assert time.time() < deadline, "no student checkpoint appeared"
            time.sleep(0.05)
    finally:
        killed.kill()
        killed.wait()
    assert not (student / "result.json").exists(), "the student finished before it could be killed"
    assert 1 <= max(epochs_checkpointed()) < 6
    # What kills while saving leave: a folder without trainer_state.json, and one with it cut short.
    for partial, state in ((student / "checkpoint-99998", None), (student / "checkpoint-99999", '{"epoch": 5')):
        partial.mkdir()
        (partial / "model.safetensors").write_bytes(b"\0" * 100)
        if state:
            (partial / "trainer_state.json").write_text(state)

    resumed = subprocess.run(command(tmp_path / "run"), capture_output=True, text=True, timeout=900, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[no_kd, seed 0]: test accuracy" in resumed.stdout and "resumed)" in resumed.stdout
    assert "discarded partially written checkpoint" in resumed.stderr
    assert not list((tmp_path / "run").rglob("checkpoint-*"))
    result = json.loads((student / "result.json").read_text())
    assert result["resumed"] is True and sorted(result["test_accuracy_by_epoch"]) == ["4", "5", "6"]

    # The same student uninterrupted, beside the same teachers and selection (copied: they are not under test).
    for done in ("teachers", "selection", "recipe.json"):
        copy = shutil.copytree if (tmp_path / "run" / done).is_dir() else shutil.copy
        copy(tmp_path / "run" / done, tmp_path / "whole" / done)
    uninterrupted = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True, timeout=900, env=env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "students" / "no_kd" / "seed-0" / "result.json").read_text())
    assert "resumed" not in whole
    assert result["test_accuracy_by_epoch"] == whole["test_accuracy_by_epoch"]
    assert result["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-5)


@pytest.mark.slow
def test_text_recipe_end_to_end(tmp_path):
    write_tiny_text_set(tmp_path)
    values = yaml.safe_load((ROOT / "recipes" / "sst2_text.yaml").read_text())
    bert = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    values.update(dataset=str(tmp_path / "data"), dataset_config=None, test_split="test", tokenizer=str(tmp_path / "tokenizer"),
                  train_samples=None, validation_samples=40, selection={"max_probe_samples": 40})
    values["teacher"].update(model_kwargs=bert, num_train_epochs=3, per_device_train_batch_size=32, warmup_steps=0)
    values["student"].update(model_kwargs=bert, num_train_epochs=1, per_device_train_batch_size=32, warmup_steps=0)
    summary = run(recipe_from_dict(values, source="sst2-local"), tmp_path / "run")
    cells = {r["cell"]: r for r in summary["rows"]}
    assert set(cells) == {"no_kd", "final", "halfway", "selected", "selected_ensemble", "full_ensemble"}
    assert all(0 <= r["student_test_accuracy"] <= 1 for r in cells.values())
    assert (tmp_path / "run" / "selection" / "k1" / "information_plane.png").is_file()
    # The teachers' snapshots carry the shared tokenizer and what they were trained on, for their cards.
    from transformers import AutoTokenizer

    for snapshot in SnapshotIndex.load(tmp_path / "run" / "teachers" / "teacher-0"):
        assert AutoTokenizer.from_pretrained(snapshot.path).get_vocab() == \
            AutoTokenizer.from_pretrained(tmp_path / "tokenizer").get_vocab()
        assert snapshot.dataset["train"] == {"split": "train", "num_examples": 120}
        assert snapshot.dataset["eval"] == {"split": "train", "num_examples": 40, "held_out": True}
        assert snapshot.dataset["text_column"] == "sentence" and snapshot.dataset["test_split"] == "test"


def test_shipped_studies_parse():
    from hf_ckptkd.pipeline.study import _cell_recipe, load_study

    for path in sorted((ROOT / "recipes" / "studies").glob("*.yaml")):
        study = load_study(path)
        base = yaml.safe_load(study["base_path"].read_text())
        (key, values), = study["vary"].items()
        for value in values:
            recipe = _cell_recipe(base, key, value, source=str(path), fixed=study["fixed"])
            assert recipe.oracle, path
            for dotted, fixed in study["fixed"].items():  # e.g. full_ensemble: 1
                assert getattr(recipe, dotted) == fixed, (path, dotted)


def test_study_cell_varies_a_section(tmp_path):
    from hf_ckptkd.pipeline.study import _cell_name, _cell_recipe

    base = yaml.safe_load((ROOT / "recipes" / "fashion_mnist_full.yaml").read_text())
    value = {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}}
    recipe = _cell_recipe(base, "teacher", value, source="study")
    assert recipe.teacher.training["lr_scheduler_type"] == "cosine_with_min_lr"
    assert recipe.teacher.training["lr_scheduler_kwargs"] == {"min_lr_rate": 0.1}
    assert recipe.student.training["lr_scheduler_type"] == "cosine"
    assert _cell_name("teacher", value) == ("teacher.lr_scheduler_type=cosine_with_min_lr,"
                                            "teacher.lr_scheduler_kwargs.min_lr_rate=0.1")
    # One key in a section names the cell as the dotted key would: both spellings share a run.
    assert _cell_name("teacher", {"lr_scheduler_type": "constant"}) == _cell_name("teacher.lr_scheduler_type", "constant")
    with pytest.raises(ConfigError, match=r"vary key 'teacher' is a section: each value must be a mapping"):
        _cell_recipe(base, "teacher", "cosine", source="study")
    with pytest.raises(ConfigError, match=r"vary key 'optimizer.lr': the sections are teacher, student, selection"):
        _cell_recipe(base, "optimizer.lr", 0.1, source="study")
    with pytest.raises(ConfigError, match=r"fixed key 'optimizer.lr': the sections are teacher, student, selection"):
        _cell_recipe(base, "student.alpha", 0.5, source="study", fixed={"optimizer.lr": 0.1})
    # Fixed keys apply to every cell; where the vary key sets the same key, the vary value wins.
    both = _cell_recipe(base, "student.alpha", 0.5, source="study", fixed={"student.alpha": 0.9, "full_ensemble": 1})
    assert both.student.training["alpha"] == 0.5 and both.full_ensemble == 1


def test_a_difference_within_two_standard_errors_is_close():
    from hf_ckptkd.pipeline.results import is_close, paired_difference

    final = [{"seed": s, "test_accuracy": a} for s, a in enumerate([0.80, 0.81, 0.79])]
    clear = paired_difference([{"seed": s, "test_accuracy": a + 0.01 + 0.001 * s} for s, a in enumerate([0.80, 0.81, 0.79])], final)
    noisy = paired_difference([{"seed": s, "test_accuracy": a} for s, a in enumerate([0.81, 0.80, 0.80])], final)
    assert clear["se_pp"] == pytest.approx(0.1 / 3 ** 0.5) and not is_close(clear)  # +1.1 pp, SE 0.06 pp
    assert noisy["mean_pp"] == pytest.approx(1 / 3) and is_close(noisy)  # +0.33 pp, SE 0.67 pp
    assert is_close(None)  # one seed: no interval yet


def test_bad_study_files(tmp_path):
    from hf_ckptkd.pipeline.study import load_study

    bad = tmp_path / "s.yaml"
    bad.write_text("base: tiny.yaml\nvary: {seeds: [1], oracle: [true]}\n")
    with pytest.raises(ConfigError, match=r"exactly one key"):
        load_study(bad)
    bad.write_text("base: tiny.yaml\nvary: {seeds: [1]}\nvariations: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['variations'\]"):
        load_study(bad)
    bad.write_text("base: tiny.yaml\nvary: {seeds: [1]}\nfixed: [full_ensemble, 1]\n")
    with pytest.raises(ConfigError, match=r"`fixed` must map recipe keys to the value every cell takes"):
        load_study(bad)


@pytest.mark.slow
def test_tiny_study_table(tmp_path, capsys, monkeypatch):
    from hf_ckptkd.pipeline.study import run_study

    monkeypatch.chdir(tmp_path)
    cells = run_study(ROOT / "tests" / "recipes" / "tiny_study.yaml", tmp_path / "study")
    assert list(cells) == ["student.alpha=0.5", "student.alpha=0.2"]
    # The cell equal to the base recipe is the base's own run, where `hf-ckptkd run` puts it.
    assert (tmp_path / "runs" / "tiny" / "results.json").is_file()
    assert not (tmp_path / "study" / "student.alpha=0.5").exists()
    assert (tmp_path / "study" / "student.alpha=0.2" / "results.json").is_file()
    # Only the student varies: the second cell distils from the base's teachers, not retrained ones.
    base_teachers = tmp_path / "runs" / "tiny" / "teachers"
    cell_teachers = tmp_path / "study" / "student.alpha=0.2" / "teachers"
    weights = sorted(p.relative_to(base_teachers) for p in base_teachers.rglob("*.safetensors"))
    assert weights and weights == sorted(p.relative_to(cell_teachers) for p in cell_teachers.rglob("*.safetensors"))
    assert all((base_teachers / w).read_bytes() == (cell_teachers / w).read_bytes() for w in weights)
    for cell in cells.values():
        assert cell["oracle"] >= max(cell["final"], cell["halfway"], cell["selected"]) - 1e-12
        for objective in ("outputs", "features"):
            assert cell[f"{objective}_regret_pp"] >= 0
            assert -1 <= cell[f"{objective}_spearman"] <= 1 or cell[f"{objective}_spearman"] != cell[f"{objective}_spearman"]
    table = (tmp_path / "study" / "study.md").read_text()
    main_table = table.split("\n\n")[1]  # then the paired differences and the snapshots' own accuracy
    assert main_table.count("| student.alpha=") == 2 and table.count("| student.alpha=") == 6
    out = capsys.readouterr().out
    assert "regret outputs / features" in out
    assert f"teachers copied from {Path('runs') / 'tiny'}" in out
    assert out.count("teacher-0: trained in") == 1 and out.count("teacher-0: done, skipped") == 1
    # The student without a teacher does not see alpha: trained once, copied, the same result.
    assert f"1 no-teacher student(s) copied from {Path('runs') / 'tiny'}" in out
    assert out.count("[no_kd, seed 0]") == 1 and cells["student.alpha=0.5"]["no_kd"] == cells["student.alpha=0.2"]["no_kd"]
    assert out.count("[teacher-0-epoch-0003, seed 0]") == 2  # the distilled students do see it: trained in each cell
    # Teachers left by an older version of the base recipe are never copied into a cell.
    from hf_ckptkd.pipeline.recipe import load_recipe
    from hf_ckptkd.pipeline.study import _finished_teachers

    base_recipe, record = load_recipe(ROOT / "tests" / "recipes" / "tiny.yaml"), tmp_path / "runs" / "tiny" / "recipe.json"
    assert _finished_teachers(base_recipe, tmp_path / "runs" / "tiny")
    # `fixed` settings apply to every cell; with no cell equal to the base, the finished base run heads
    # the table, and a one-teacher cell copies only the first of the base's two teachers.
    study = tmp_path / "fixed.yaml"
    study.write_text(f"base: {ROOT / 'tests' / 'recipes' / 'tiny.yaml'}\nseeds: 1\n"
                     "fixed: {full_ensemble: 1, ensemble_k: 1}\nvary:\n  student.alpha: [0.3]\n")
    capsys.readouterr()
    fixed = run_study(study, tmp_path / "fixed")
    assert list(fixed) == ["base (tiny)", "student.alpha=0.3"]
    assert fixed["base (tiny)"]["final"] == cells["student.alpha=0.5"]["final"]
    copied = tmp_path / "fixed" / "student.alpha=0.3" / "teachers"
    assert sorted(p.name for p in copied.iterdir() if p.is_dir()) == ["teacher-0"]
    assert "teacher-0: done, skipped" in capsys.readouterr().out
    assert fixed["student.alpha=0.3"]["full_ensemble"] is None and fixed["student.alpha=0.3"]["selected_ensemble"] is None
    table = (tmp_path / "fixed" / "study.md").read_text()
    assert "| base (tiny) |" in table and "Each intermediate snapshot's student − the final teacher's student" in table
    assert set(fixed["student.alpha=0.3"]["paired_vs_final"]) == {"epoch-0001", "epoch-0002"}
    # benchmarks/selection_studies.py rescores the finished run with every selector, the trivial ones too.
    bench = _load_benchmark("selection_studies")
    run_dir = tmp_path / "runs" / "tiny"
    scored = bench.score_cell("tiny", base_recipe, run_dir, [0])
    assert scored["student"][scored["oracle"]] == max(scored["student"].values())
    assert scored["selectors"]["final"]["pick"] == SnapshotIndex.load(run_dir / "teachers" / "teacher-0").final.name
    probe_accuracy = {s["name"]: s["probe_accuracy"] for s in scored["snapshots"] if s["student"] is not None}
    assert probe_accuracy[scored["selectors"]["accuracy"]["pick"]] == max(probe_accuracy.values())
    for selector in scored["selectors"].values():
        assert selector["pick"] in scored["student"] and selector["regret_pp"] >= 0
        assert (selector["regret_pp"] == 0) == (scored["student"][selector["pick"]] == scored["student"][scored["oracle"]])
    verdict = bench.against_baselines([scored])
    for objective in ("outputs", "features"):
        mine = scored["selectors"][objective]["regret_pp"]
        trivial = [scored["selectors"][b]["regret_pp"] for b in ("final", "accuracy", "loss")]
        assert (verdict[objective]["beats_every_trivial"] == ["tiny"]) == (mine < min(trivial))
        assert (verdict[objective]["loses_to_a_trivial"] == ["tiny"]) == (mine > min(trivial))
    record.write_text(json.dumps({**json.loads(record.read_text()), "fingerprint": "an-older-recipe"}))
    assert not _finished_teachers(base_recipe, tmp_path / "runs" / "tiny")


def test_selector_against_both_trivial_baselines():
    """An information objective is credited with a cell only where its regret is below both trivial
    selectors', and blamed where it is above either's; a tie with both counts as neither."""
    bench = _load_benchmark("selection_studies")

    def cell(name, outputs, features, held_out, final, accuracy, loss):
        regrets = {"outputs": outputs, "features": features, "held_out": held_out, "final": final,
                   "accuracy": accuracy, "loss": loss}
        return {"name": name, "selectors": {o: {"regret_pp": r} for o, r in regrets.items()}}

    verdict = bench.against_baselines([cell("wins", 0.0, 0.5, 0.0, 0.3, 0.2, 0.1), cell("ties", *[0.0] * 6),
                                       cell("between", 0.25, 0.3, 0.0, 0.3, 0.2, 0.0)])
    assert verdict["outputs"] == {"beats_every_trivial": ["wins"], "loses_to_a_trivial": ["between"]}
    assert verdict["features"] == {"beats_every_trivial": [], "loses_to_a_trivial": ["wins", "between"]}
    assert verdict["held_out"] == {"beats_every_trivial": ["wins"], "loses_to_a_trivial": []}


def _load_benchmark(name: str):
    """A script under benchmarks/ as a module (they are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
