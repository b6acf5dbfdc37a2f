"""`SnapshotCallback(keep_top=M, probe_dataset=...)` and `snapshot_keep_top` on real teacher runs, scored by
the real estimator: what a run keeps, what its index records, and what the selector sees afterwards."""

import json

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, SnapshotCallback, SnapshotIndex, select_teachers
from hf_ckptkd.cli.main import main
from hf_ckptkd.config import ConfigError
from hf_ckptkd.data import (
    ImageTransformConfig,
    build_image_transform,
    image_collator,
    label_names,
    load_fashion_mnist,
    with_image_transform,
)
from hf_ckptkd.models.folders import load_model
from hf_ckptkd.models import build_model
from hf_ckptkd.selection import SelectionError, UnknownObjectiveError
from hf_ckptkd.selection.online import SnapshotScorer, keep_top_settings
from hf_ckptkd.training.snapshot_pruning import best_names
from hf_ckptkd.snapshots import SnapshotError

PROBE = 200  # probe examples: every class, and small enough for 2 shared cores
KEEP = 2


@pytest.fixture(scope="module")
def data():
    raw = load_fashion_mnist("train", limit=256)
    # Random augmentation, drawn from the global generator: a keep-top run must still train exactly as a run
    # that keeps everything (scoring must not move that stream), which the tests below compare.
    transform = build_image_transform(ImageTransformConfig(), train=True)
    return raw, with_image_transform(raw, transform), label_names(raw)


def _train(out, data, **keep_top):
    """6 epochs of 4 steps; a snapshot every 5 steps (5, 10, 15, 20) and the final model at step 24."""
    raw, train, names = data
    config = CheckpointKDConfig(output_dir=str(out), num_train_epochs=6, per_device_train_batch_size=64,
                                learning_rate=3e-3, save_strategy="no", logging_steps=50, snapshot_strategy="steps",
                                snapshot_every=5, report_to="none", remove_unused_columns=False, disable_tqdm=True,
                                seed=0, use_cpu=True, snapshot_probe_samples=PROBE, **keep_top)
    torch.manual_seed(0)
    model = build_model("timm:test_resnet", 10, label_names=names)
    probe = {"probe_dataset": raw} if keep_top else {}
    CheckpointKDTrainer(model=model, args=config, train_dataset=train, data_collator=image_collator, **probe).train()
    return SnapshotIndex.load(out / "snapshots")


@pytest.fixture(scope="module")
def pruned(tmp_path_factory, data):
    return _train(tmp_path_factory.mktemp("pruned"), data, snapshot_keep_top=KEEP)


@pytest.fixture(scope="module")
def complete(tmp_path_factory, data):
    """The same run keeping every snapshot."""
    return _train(tmp_path_factory.mktemp("complete"), data)


@pytest.fixture(scope="module")
def scorer(data):
    return SnapshotScorer(data[0], keep_top_settings(max_probe_samples=PROBE))


ALL = ["step-000005", "step-000010", "step-000015", "step-000020", "step-000024"]


def test_the_index_records_every_snapshot_its_score_and_what_was_removed(pruned):
    on_disk = json.loads((pruned.snapshot_dir / "index.json").read_text())["snapshots"]
    assert [e["name"] for e in on_disk] == ALL
    assert all(isinstance(e["score"]["value"], float) and e["score"]["objective"] == "outputs" for e in on_disk)
    assert all(e["score"]["probe_size"] == PROBE for e in on_disk)
    removed = [e["name"] for e in on_disk if e.get("removed")]
    assert len(removed) == len(ALL) - KEEP - 1 and "step-000024" not in removed
    assert pruned.names == [n for n in ALL if n not in removed]
    assert [e["name"] for e in pruned.removed] == removed
    assert pruned.final.name == "step-000024"
    assert not [p for p in pruned.snapshot_dir.iterdir() if p.name not in pruned.names + ["index.json"]]
    pruned.verify()
    # What stayed: the KEEP best of the non-final snapshots by the recorded score, and the final one.
    scores = [(e["name"], e["score"]["value"]) for e in on_disk if e["name"] != "step-000024"]
    assert set(pruned.names) == set(best_names(scores, KEEP)) | {"step-000024"}


def test_online_keeps_what_scoring_the_whole_run_afterwards_keeps(pruned, complete, scorer):
    assert complete.names == ALL and not complete.removed
    afterwards = [(s.name, scorer(s)["value"]) for s in complete if not s.final]
    assert set(pruned.names) == set(best_names(afterwards, KEEP)) | {"step-000024"}
    # The same score, whenever it is computed: the online scores equal those of the whole run afterwards.
    recorded = {e["name"]: e["score"]["value"] for e in json.loads((pruned.snapshot_dir / "index.json").read_text())
                ["snapshots"]}
    assert recorded == pytest.approx({s.name: scorer(s)["value"] for s in complete}, rel=1e-6)


def test_the_selector_skips_removed_snapshots_and_reports_the_recorded_scores(pruned, data):
    report = select_teachers(pruned.snapshot_dir, data[0], objective="outputs", max_probe_samples=PROBE,
                             progress=False)
    assert [s.name for s in report.scores] == pruned.names
    assert {s.name: s.j for s in report.scores} == pytest.approx({s.name: s.score["value"] for s in pruned}, rel=1e-6)
    assert report.selected == [max(pruned, key=lambda s: (s.score["value"], -s.global_step)).name]
    # A removed snapshot named as a teacher reference fails with the reason.
    with pytest.raises(SnapshotError, match=r"was removed to keep only the best snapshots"):
        SnapshotIndex.load(pruned.snapshot_dir).get(name=pruned.removed[0]["name"])


def test_snapshots_cli_lists_removed_snapshots_with_their_scores(pruned, capsys):
    assert main(["snapshots", str(pruned.snapshot_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "epoch", "step", "lr", "train", "loss", "eval", "acc", "score", "final"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(rows) == ALL
    for entry in pruned.removed:
        assert rows[entry["name"]][-1] == "removed"
        assert float(rows[entry["name"]][-2]) == pytest.approx(entry["score"]["value"], abs=1e-4)
    assert rows["step-000024"][-1] == "yes"


def test_plain_trainer_callback_keeps_the_best_epoch_snapshots(tmp_path, data):
    raw, train, names = data
    torch.manual_seed(0)
    model = build_model("timm:test_resnet", 10, label_names=names)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=64,
                             learning_rate=3e-3, save_strategy="no", report_to="none", remove_unused_columns=False,
                             disable_tqdm=True, use_cpu=True)
    callback = SnapshotCallback("epoch", 1, keep_top=1, probe_dataset=raw,
                                probe_settings=keep_top_settings(max_probe_samples=PROBE, objective="features"))
    Trainer(model=model, args=args, train_dataset=train, data_collator=image_collator, callbacks=[callback]).train()
    index = SnapshotIndex.load(tmp_path)
    assert len(index) == 2 and len(index.removed) == 1 and index.final.name == "epoch-0003"
    assert {s.score["objective"] for s in index} == {"features"}
    kept = next(s for s in index if not s.final)
    assert kept.score["value"] >= index.removed[0]["score"]["value"]


def test_train_teacher_cli_keeps_the_best_snapshots(tmp_path, capsys):
    code = main(["train-teacher", "--model", "timm:test_resnet", "--max_train_samples", "128", "--max_eval_samples",
                 "32", "--num_train_epochs", "3", "--per_device_train_batch_size", "64", "--snapshot_strategy", "epoch",
                 "--snapshot_keep_top", "1", "--snapshot_probe_samples", "100", "--report_to", "none",
                 "--output_dir", str(tmp_path / "t")])
    assert code == 0, capsys.readouterr().err
    index = SnapshotIndex.load(tmp_path / "t")
    assert len(index) == 2 and [e["name"] for e in index.removed] != [] and index.final.name == "epoch-0003"
    assert all(s.score["probe_size"] == 100 for s in index)


# --- bad input --------------------------------------------------------------------------------


def test_keep_top_without_a_probe_set_is_refused_before_training(tmp_path, data):
    raw, train, names = data
    config = CheckpointKDConfig(output_dir=str(tmp_path), snapshot_strategy="epoch", snapshot_keep_top=2,
                                report_to="none", use_cpu=True)
    model = build_model("timm:test_resnet", 10, label_names=names)
    with pytest.raises(ConfigError, match=r"snapshot_keep_top=2 needs a probe set to score snapshots on: pass "
                                          r"CheckpointKDTrainer\(\.\.\., probe_dataset=\.\.\.\)"):
        CheckpointKDTrainer(model=model, args=config, train_dataset=train, data_collator=image_collator)
    plain = CheckpointKDConfig(output_dir=str(tmp_path), snapshot_strategy="epoch", report_to="none", use_cpu=True)
    with pytest.raises(ConfigError, match=r"probe_dataset is only used to score snapshots for snapshot_keep_top"):
        CheckpointKDTrainer(model=model, args=plain, train_dataset=train, data_collator=image_collator,
                            probe_dataset=raw)
    with pytest.raises(SnapshotError, match=r"keep_top=2 needs probe_dataset="):
        SnapshotCallback("epoch", keep_top=2)


@pytest.mark.parametrize("value,message", [
    (0, r"snapshot_keep_top=0 must be a positive integer, the number of snapshots to keep besides the final one"),
    (-3, r"snapshot_keep_top=-3 must be a positive integer"),
    (1.5, r"snapshot_keep_top=1.5 must be a positive integer"),
    (True, r"snapshot_keep_top=True must be a positive integer"),
])
def test_bad_snapshot_keep_top(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        CheckpointKDConfig(output_dir=str(tmp_path), snapshot_strategy="epoch", snapshot_keep_top=value)


def test_other_bad_keep_top_settings(tmp_path, data, capsys):
    with pytest.raises(ConfigError, match=r"snapshot_keep_top=2 keeps the best snapshots, but snapshot_strategy='no'"):
        CheckpointKDConfig(output_dir=str(tmp_path), snapshot_keep_top=2)
    with pytest.raises(ConfigError, match=r"snapshot_probe_samples=1 must be an integer of at least 2"):
        CheckpointKDConfig(output_dir=str(tmp_path), snapshot_strategy="epoch", snapshot_keep_top=2,
                           snapshot_probe_samples=1)
    with pytest.raises(ConfigError, match=r"snapshot_score_temperature=0 must be > 0"):
        CheckpointKDConfig(output_dir=str(tmp_path), snapshot_strategy="epoch", snapshot_keep_top=2,
                           snapshot_score_temperature=0)
    # The objective is looked up in the selection's registry when the trainer builds the scorer, before training.
    raw, train, names = data
    model = build_model("timm:test_resnet", 10, label_names=names)
    for objective, error, message in (("accuracy", SelectionError, r"only 'outputs', 'features', 'held_out' give a score"),
                                      ("outptus", UnknownObjectiveError, r"unknown objective 'outptus'; choose one of "
                                                                         r"outputs, features, final, accuracy")):
        config = CheckpointKDConfig(output_dir=str(tmp_path), snapshot_strategy="epoch", snapshot_keep_top=2,
                                    snapshot_score_objective=objective, report_to="none", use_cpu=True)
        with pytest.raises(error, match=message):
            CheckpointKDTrainer(model=model, args=config, train_dataset=train, data_collator=image_collator,
                                probe_dataset=raw)
    with pytest.raises(SelectionError, match=r"keep_top scores snapshots with an information objective, not "
                                             r"objective='accuracy'"):
        SnapshotCallback("epoch", keep_top=2, probe_dataset=data[0], probe_settings=keep_top_settings(objective="accuracy"))
    one_class = data[0].filter(lambda e: e["label"] == 0)
    with pytest.raises(SelectionError, match=r"probe_dataset holds \d+ examples of 1 class\(es\)"):
        SnapshotCallback("epoch", keep_top=2, probe_dataset=one_class)
    # From the command line: a clear message and exit status 2.
    assert main(["train-teacher", "--model", "timm:test_resnet", "--snapshot_keep_top", "0", "--snapshot_strategy",
                 "epoch", "--output_dir", str(tmp_path), "--max_train_samples", "32"]) == 2
    assert "snapshot_keep_top=0 must be a positive integer" in capsys.readouterr().err


def test_keep_top_trains_exactly_as_a_run_that_keeps_everything_under_random_augmentation(pruned, complete):
    """Scoring loads each snapshot as a new model, whose random initial weights are drawn from the global
    generator that the training augmentation draws from: a keep-top run must not move that stream."""
    final = load_model(pruned.final.path).state_dict()
    for key, value in load_model(complete.final.path).state_dict().items():
        assert torch.equal(value, final[key]), key
