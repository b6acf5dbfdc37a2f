"""A recipe is checked whole when it is loaded: every bad value fails before the first stage, with a
message naming the section, the key and what it takes."""

import copy

import pytest
import yaml

from hf_ckptkd.cli.main import main
from hf_ckptkd.config import ConfigError
from hf_ckptkd.pipeline.recipe import recipe_from_dict

TINY = {
    "name": "tiny", "train_samples": 64, "validation_samples": 32, "test_samples": 32,
    "teacher": {"model": "timm:test_resnet", "num_train_epochs": 2, "snapshot_strategy": "epoch"},
    "student": {"model": "timm:test_resnet", "num_train_epochs": 1},
}


def _with(path: str, value):
    """TINY with `value` at the dotted `path` (e.g. "selection.objective")."""
    recipe = copy.deepcopy(TINY)
    *parents, key = path.split(".")
    place = recipe
    for parent in parents:
        place = place.setdefault(parent, {})
    place[key] = value
    return recipe


def test_the_tiny_recipe_itself_loads():
    recipe = recipe_from_dict(TINY, source="tiny.yaml")
    assert recipe.teacher.training["snapshot_strategy"] == "epoch"


@pytest.mark.parametrize("path,value,message", [
    ("selection.objective", "outptus",
     r"tiny.yaml: selection: unknown objective 'outptus'; choose one of outputs, features, final, accuracy, loss, "
     r"held_out"),
    ("selection.estimator", "renyi", r"tiny.yaml: selection: unknown estimator 'renyi'; choose one of binning, renyi2"),
    ("selection.temperature", 0, r"tiny.yaml: selection: the temperature must be a positive number, got 0"),
    ("selection.beta", -1, r"tiny.yaml: selection: beta=-1: .* must be a finite number >= 0"),
    ("selection.accuracy_margin", 5, r"tiny.yaml: selection: accuracy_margin must lie in \[0, 1\]"),
    ("selection.max_probe_samples", 0, r"tiny.yaml: selection: max_probe_samples=0 draws no probe examples"),
    ("selection.kappa", -2.0, r"tiny.yaml: selection: the kappa must be a positive number, got -2.0"),
    ("teacher.kd_loss", "klx", r"tiny.yaml teacher: kd_loss='klx' is not one of 'kl', 'reverse_kl', 'jsd', 'mse'"),
    ("teacher.snapshot_every", 0, r"tiny.yaml teacher: snapshot_every=0 must be a positive integer"),
    ("teacher.lr_decay_epochs", [36, 18], r"tiny.yaml teacher: lr_decay_epochs=\[36, 18\] must be strictly increasing"),
    ("student.alpha", 2, r"tiny.yaml student: alpha=2 must lie in \[0, 1\]"),
    ("student.temperature", -4, r"tiny.yaml student: temperature=-4 must be > 0"),
    ("student.teacher_logits_top_k", 0, r"tiny.yaml student: teacher_logits_top_k=0 must be a positive integer"),
    ("student.teacher_logits_missing_mass", "drop",
     r"tiny.yaml student: teacher_logits_missing_mass='drop' is not one of 'tail', 'renormalize'"),
    ("student.model", "timm:resnett", r"tiny.yaml student: model: timm does not know a model named 'resnett'"),
    ("teacher.model", "resnet18", r"tiny.yaml teacher: model: unknown model spec 'resnet18': write 'timm:"),
    ("task", "segmentation", r"tiny.yaml: task='segmentation' is not one of image-classification"),
])
def test_a_bad_value_fails_at_load_naming_its_key(path, value, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_dict(_with(path, value), source="tiny.yaml")


def test_keep_top_objectives_and_temperature_are_checked_at_load():
    keep_top = _with("teacher.snapshot_keep_top", 1)
    keep_top["teacher"]["snapshot_score_objective"] = "loss"
    with pytest.raises(ConfigError, match=r"tiny.yaml teacher: keep_top scores snapshots with an information "
                                          r"objective, not objective='loss': only 'outputs', 'features', 'held_out'"):
        recipe_from_dict(keep_top, source="tiny.yaml")
    keep_top["teacher"]["snapshot_score_objective"] = "features"
    keep_top["teacher"]["snapshot_score_temperature"] = 0
    with pytest.raises(ConfigError, match=r"tiny.yaml teacher: snapshot_score_temperature=0 must be > 0"):
        recipe_from_dict(keep_top, source="tiny.yaml")
    keep_top["teacher"]["snapshot_score_temperature"] = 2.0
    assert recipe_from_dict(keep_top, source="tiny.yaml").teacher.training["snapshot_score_temperature"] == 2.0


@pytest.mark.parametrize("objective", ["outputs", "features", "final", "accuracy", "loss", "held_out"])
def test_every_registered_objective_loads_as_the_selection_objective(objective):
    recipe = recipe_from_dict(_with("selection.objective", objective), source="tiny.yaml")
    assert recipe.selection["objective"] == objective


def test_keep_top_takes_the_held_out_objective_which_scores_one_snapshot_alone():
    keep_top = _with("teacher.snapshot_keep_top", 1)
    keep_top["teacher"]["snapshot_score_objective"] = "held_out"
    assert recipe_from_dict(keep_top, source="tiny.yaml").teacher.training["snapshot_score_objective"] == "held_out"


def test_teacher_weights_are_checked_against_the_ensemble_they_weigh():
    weighted = _with("student.teacher_weights", [1.0, -1.0])
    with pytest.raises(ConfigError, match=r"tiny.yaml student: teacher_weights=\[1.0, -1.0\] must be non-negative"):
        recipe_from_dict(weighted, source="tiny.yaml")


def test_the_run_command_stops_before_the_first_stage(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_with("selection.objective", "outptus")))
    out = tmp_path / "run"
    assert main(["run", str(path), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "selection: unknown objective 'outptus'; choose one of outputs, features, final, accuracy, loss, held_out" in err
    assert not out.exists()  # no stage started
