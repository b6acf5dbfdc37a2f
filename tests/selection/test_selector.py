"""`select_teachers` and `hf-ckptkd select` on real snapshots of a small teacher run."""

import collections
import json
import shutil
from pathlib import Path

import pytest
import torch

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, SnapshotIndex
from hf_ckptkd.cli.main import main
from hf_ckptkd.data.loading import FASHION_MNIST_LABELS, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from hf_ckptkd.data.images import (
    ImageTransformConfig,
    build_image_transform,
    image_collator,
    label_names,
    with_image_transform,
)
from hf_ckptkd.metrics import compute_metrics
from hf_ckptkd.models import build_model
from hf_ckptkd.selection import (
    ClassCountMismatchError,
    EmptyProbeError,
    SelectionError,
    SelectionReport,
    SingleClassProbeError,
    TooManyTeachersError,
    select_teachers,
)
from hf_ckptkd.selection import LabelSpaceMismatchError
from hf_ckptkd.selection.probe import probe_transform_config, stratified_probe_indices
from hf_ckptkd.snapshots import write_snapshot

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 7}
PROBE = 300  # probe examples: enough for every class, small enough for 2 shared cores


@pytest.fixture(scope="module")
def probe_data():
    return load_fashion_mnist("train", limit=1000)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real teacher run: timm:test_resnet (with BatchNorm) on 256 Fashion-MNIST images, a snapshot every
    epoch for 3 epochs, plus the initialisation as a step-0 snapshot written before training."""
    out = tmp_path_factory.mktemp("teacher")
    train = load_fashion_mnist("train", limit=256)
    test = load_fashion_mnist("test", limit=64)
    names = label_names(train)
    transform = ImageTransformConfig()
    torch.manual_seed(0)  # a reproducible initialisation (the trainer seeds only what comes after it)
    model = build_model("timm:test_resnet", 10, label_names=names, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    write_snapshot(model, out / "snapshots", "epoch-0000", epoch=0, global_step=0)
    config = CheckpointKDConfig(
        output_dir=str(out), num_train_epochs=3, per_device_train_batch_size=64, learning_rate=2e-3,
        save_strategy="no", eval_strategy="epoch", logging_steps=50, snapshot_strategy="epoch", report_to="none",
        remove_unused_columns=False, disable_tqdm=True, seed=0, use_cpu=True)
    trainer = CheckpointKDTrainer(
        model=model, args=config, data_collator=image_collator, compute_metrics=compute_metrics,
        train_dataset=with_image_transform(train, build_image_transform(transform, True)),
        eval_dataset=with_image_transform(test, build_image_transform(transform, False)))
    trainer.train()
    index = SnapshotIndex.load(out / "snapshots")
    assert index.names == ["epoch-0000", "epoch-0001", "epoch-0002", "epoch-0003"]
    return index


@pytest.fixture(scope="module")
def report(run, probe_data):
    return select_teachers(run, probe_data, k=2, max_probe_samples=PROBE, progress=False, objective="outputs")


def test_scores_cover_every_snapshot_in_order(run, report):
    assert [s.name for s in report.scores] == run.names
    assert [s.step for s in report.scores] == [s.global_step for s in run]
    for s in report.scores:
        for value in (s.i_xf, s.i_yf, s.i_xp, s.i_yp, s.accuracy):
            assert 0.0 <= value <= 1.0
        assert s.path == str(run[s.name].path)
    assert len(report.selected) == 2 == len(set(report.selected))
    assert set(report.selected) <= set(run.names) - {"epoch-0000"}
    init = report.score("epoch-0000")
    assert init.init and not init.chosen  # the initialisation is scored, never chosen
    assert report.snapshot_dir == str(run.snapshot_dir)
    assert report.probe_size == PROBE and report.extra["probe"]["size"] == PROBE
    assert report.score("epoch-0003").metadata["final"] is True
    assert "eval_accuracy" in report.score("epoch-0001").metadata
    # The trained snapshots are far better than chance on the probe; the initialisation is not.
    assert report.score("epoch-0003").accuracy > init.accuracy


def test_report_saves_three_files(report, tmp_path):
    report.save(tmp_path)
    assert {"selection.json", "table.md", "information_plane.png"} <= {p.name for p in tmp_path.iterdir()}
    again = SelectionReport.load(tmp_path)
    assert again.selected == report.selected and again.snapshot_dir == report.snapshot_dir
    assert [s.j for s in again.scores] == [s.j for s in report.scores]


def test_same_call_gives_identical_scores(run, report, probe_data):
    """BatchNorm teachers are scored in eval mode, so nothing about the call changes the scores."""
    again = select_teachers(run, probe_data, k=2, max_probe_samples=PROBE, progress=False, objective="outputs")
    assert again.to_dict()["scores"] == report.to_dict()["scores"]
    assert again.selected == report.selected
    run.verify()  # the snapshots are read, never written


def test_probe_is_stratified_and_seeded():
    labels = [0] * 600 + [1] * 300 + [2] * 100
    idx = stratified_probe_indices(labels, 100, seed=3)
    assert idx == stratified_probe_indices(labels, 100, seed=3) != stratified_probe_indices(labels, 100, seed=4)
    assert len(idx) == len(set(idx)) == 100 and idx == sorted(idx)
    assert collections.Counter(labels[i] for i in idx) == {0: 60, 1: 30, 2: 10}
    rare = stratified_probe_indices([0] * 998 + [1, 2], 10, seed=0)  # every class gets one when it can
    assert len(rare) == 10 and {998, 999} <= set(rare)
    assert stratified_probe_indices(labels, None, 0) == list(range(1000))


def test_bad_requests_are_clear_errors(run, probe_data):
    with pytest.raises(TooManyTeachersError, match="3 candidate snapshots .*1 initialisation"):
        select_teachers(run, probe_data, k=4, progress=False)
    with pytest.raises(EmptyProbeError, match="probe set is empty"):
        select_teachers(run, probe_data.select([]), progress=False)
    with pytest.raises(EmptyProbeError):
        select_teachers(run, probe_data, max_probe_samples=0, progress=False)
    one_class = probe_data.select([i for i, y in enumerate(probe_data["label"]) if y == 3])
    with pytest.raises(SingleClassProbeError, match="single class"):
        select_teachers(run, one_class, max_probe_samples=50, progress=False)
    with pytest.raises(SelectionError, match="objective"):
        select_teachers(run, probe_data, objective="weights", progress=False)
    assert issubclass(SelectionError, ValueError)


def _vit_snapshots(directory, names=None, steps=(5, 10)):
    snapshots = []
    for i, step in enumerate(steps):
        torch.manual_seed(i)
        model = build_model("transformers:ViTConfig", 10, label_names=names, model_kwargs=TINY_VIT)
        snapshots.append(write_snapshot(model, directory, f"epoch-{i + 1:04d}", epoch=i + 1, global_step=step))
    return snapshots


def test_transformers_snapshots(tmp_path, probe_data):
    _vit_snapshots(tmp_path / "vit")
    index = SnapshotIndex.load(tmp_path / "vit")
    report = select_teachers(tmp_path / "vit", probe_data, max_probe_samples=200, objective="features", progress=False)
    assert [s.name for s in report.scores] == index.names
    assert len(report.selected) == 1 and report.selected[0] in index.names
    assert all(0.0 <= v <= 1.0 for s in report.scores for v in (s.i_xf, s.i_yf, s.i_xp, s.i_yp))
    config = probe_transform_config(index[0].load_model(), index[0].path)
    assert (config.in_chans, config.image_size, config.mean) == (1, 28, FASHION_MNIST_MEAN)
    # A held-out probe gives each snapshot's held-out accuracy, beside (not in) J.
    held_out = load_fashion_mnist("test", limit=100)
    with_held_out = select_teachers(index, probe_data, max_probe_samples=200, objective="features",
                                    held_out_probe=held_out, progress=False)
    assert [s.j for s in with_held_out.scores] == [s.j for s in report.scores]
    assert all(0.0 <= s.metadata["held_out_accuracy"] <= 1.0 for s in with_held_out.scores)


def test_probe_transform_follows_the_model(run):
    config = probe_transform_config(run[0].load_model(), run[0].path)
    assert (config.in_chans, config.image_size) == (1, 28)
    assert config.mean == pytest.approx(FASHION_MNIST_MEAN) and config.std == pytest.approx(FASHION_MNIST_STD)
    assert (config.crop_padding, config.hflip) == (0, False)
    # A timm model built without the data's statistics records ImageNet's 3-channel mean for a 1-channel
    # input: that is not what it was trained with, so the default (Fashion-MNIST) statistics are used.
    bare = build_model("timm:test_resnet", 10)
    assert probe_transform_config(bare).mean == FASHION_MNIST_MEAN
    rgb = probe_transform_config(build_model("timm:test_resnet", 10, in_chans=3, image_size=32))
    assert (rgb.in_chans, rgb.image_size, len(rgb.mean)) == (3, 32, 3)


def test_different_label_spaces_are_refused(tmp_path, run, probe_data):
    five = build_model("timm:test_resnet", 5)
    other = write_snapshot(five, tmp_path / "five", "epoch-0001", epoch=1, global_step=4)
    with pytest.raises(ClassCountMismatchError, match="5 classes"):
        select_teachers([run[1], other], probe_data, max_probe_samples=100, progress=False)
    a = _vit_snapshots(tmp_path / "a", names=FASHION_MNIST_LABELS, steps=(5,))
    b = _vit_snapshots(tmp_path / "b", names=FASHION_MNIST_LABELS[::-1], steps=(5,))
    with pytest.raises(LabelSpaceMismatchError, match="name their labels differently"):
        select_teachers([a[0], b[0]], probe_data, max_probe_samples=100, progress=False)
    # A probe drawn from a dataset with other label names than the teachers'.
    with pytest.raises(LabelSpaceMismatchError, match="probe dataset"):
        select_teachers(b, probe_data, max_probe_samples=100, progress=False)


def test_cli_select_end_to_end(run, probe_data, tmp_path, capsys):
    # A local dataset folder (parquet) exercises the `datasets.load_dataset` path without a network.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    probe_data.to_parquet(str(data_dir / "train.parquet"))
    out = tmp_path / "selection"
    code = main(["select", str(run.snapshot_dir), "--dataset", str(data_dir), "--max_probe_samples", "200",
                 "--k", "2", "--output", str(out), "--disable_tqdm"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert {"selection.json", "table.md", "information_plane.png"} <= {p.name for p in out.iterdir()}
    saved = json.loads((out / "selection.json").read_text())
    assert len(saved["selected"]) == 2 and saved["probe_size"] == 200
    assert "| epoch-0003 |" in captured.out and "chosen: " in captured.out and " s" in captured.out
    # The default output folder is <snapshot_dir>/../selection.
    assert main(["select", str(run.snapshot_dir), "--dataset", str(data_dir), "--max_probe_samples", "100",
                 "--disable_tqdm"]) == 0
    assert (Path(run.snapshot_dir).parent / "selection" / "selection.json").is_file()


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["select", str(tmp_path / "missing"), "--dataset", "fashion_mnist"]) == 2
    err = capsys.readouterr().err
    assert "hf-ckptkd select" in err and "snapshot" in err and "Traceback" not in err
    assert main(["select", str(tmp_path)]) == 2  # --dataset is required


# -- the CLI: trivial objectives, bad probes and temperatures, the accuracy warning ----------------


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory, probe_data):
    """The probe data as a local parquet dataset folder (the `datasets.load_dataset` path, offline)."""
    folder = tmp_path_factory.mktemp("probe-data")
    probe_data.to_parquet(str(folder / "train.parquet"))
    return folder


def _select(snapshot_dir, probe_dir, *flags):
    return main(["select", str(snapshot_dir), "--dataset", str(probe_dir), "--disable_tqdm", *flags])


@pytest.mark.parametrize("objective", ["final", "accuracy"])
def test_cli_select_trivial_objectives(run, probe_dir, tmp_path, capsys, objective):
    out = tmp_path / "selection"
    code = _select(run.snapshot_dir, probe_dir, "--objective", objective, "--max_probe_samples", "100",
                   "--output", str(out))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    trained = [s for s in run if s.global_step > 0]
    expected = trained[-1] if objective == "final" else max(trained, key=lambda s: (s.accuracy, -s.global_step))
    assert f"chosen: {expected.name}\n" in captured.out
    saved = json.loads((out / "selection.json").read_text())
    assert (saved["objective"], saved["search"], saved["selected"]) == (objective, "top-k", [expected.name])
    # Every snapshot is scored all the same.
    assert [s["name"] for s in saved["scores"]] == run.names
    assert all(0.0 <= s[key] <= 1.0 for s in saved["scores"] for key in ("i_xf", "i_yf", "i_xp", "i_yp"))
    assert f"`{objective}`" in (out / "table.md").read_text()


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("hf-ckptkd select: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "chosen:" not in captured.out
    return err


def test_cli_select_probe_smaller_than_the_label_space_exits_2(run, probe_dir, tmp_path, capsys):
    code = _select(run.snapshot_dir, probe_dir, "--max_probe_samples", "5", "--output", str(tmp_path / "s"))
    assert code == 2
    err = _one_line_error(capsys)
    assert "5 examples" in err and "10 classes" in err and "max_probe_samples" in err
    assert not (tmp_path / "s").exists()
    # 15 examples over 10 classes: five classes get a single example, too few for the label term.
    assert _select(run.snapshot_dir, probe_dir, "--max_probe_samples", "15", "--output", str(tmp_path / "s")) == 2
    err = _one_line_error(capsys)
    assert "single example" in err and "max_probe_samples" in err


def test_cli_select_temperature_too_high_exits_2(run, probe_dir, tmp_path, capsys):
    code = _select(run.snapshot_dir, probe_dir, "--temperature", "1e12", "--max_probe_samples", "100",
                   "--output", str(tmp_path / "s"))
    assert code == 2
    err = _one_line_error(capsys)
    assert "temperature T=1e+12 is too high" in err
    assert not (tmp_path / "s").exists()


def test_cli_select_warns_when_the_choice_is_far_below_the_best_accuracy(run, probe_dir, tmp_path, capsys):
    # A copy of the run whose last snapshot (after the final one) holds the untrained weights again, as
    # a diverged run's would: objective "final" must choose it, far below the trained snapshots.
    snapshots = tmp_path / "snapshots"
    shutil.copytree(run.snapshot_dir, snapshots)
    last = run[-1]
    write_snapshot(run[0].load_model(), snapshots, "epoch-0004", epoch=last.epoch + 1,
                   global_step=2 * last.global_step)
    out = tmp_path / "selection"
    code = _select(snapshots, probe_dir, "--objective", "final", "--max_probe_samples", "100",
                   "--output", str(out))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads((out / "selection.json").read_text())
    assert saved["selected"] == ["epoch-0004"]
    accuracy = {s["name"]: s["accuracy"] for s in saved["scores"]}
    best = max((name for name in accuracy if name != "epoch-0000"), key=accuracy.get)
    assert accuracy[best] - accuracy["epoch-0004"] > saved["accuracy_margin"] == 0.05  # the premise
    assert accuracy["epoch-0004"] == pytest.approx(accuracy["epoch-0000"])  # the same weights as the init
    assert len(saved["warnings"]) == 1
    lines = captured.out.splitlines()
    warning = next(i for i, line in enumerate(lines) if line.startswith("warning: "))
    assert lines[warning] == f"warning: {saved['warnings'][0]}"
    assert lines[warning].startswith(f"warning: epoch-0004 has probe accuracy {accuracy['epoch-0004']:.1%}")
    assert f"best candidate ({best}, {accuracy[best]:.1%}" in lines[warning]
    assert warning < next(i for i, line in enumerate(lines) if line.startswith("chosen: epoch-0004"))
    assert f"> **Warning:** {saved['warnings'][0]}" in (out / "table.md").read_text()
    # A margin wide enough silences it.
    assert _select(snapshots, probe_dir, "--objective", "final", "--max_probe_samples", "100",
                   "--accuracy_margin", "1", "--output", str(tmp_path / "relaxed")) == 0
    assert "warning:" not in capsys.readouterr().out


def test_the_packages_own_tokenised_text_is_accepted_with_default_arguments(tmp_path, monkeypatch):
    """`tokenize_text_dataset` names the label `labels`; `select_teachers` takes it without label_column."""
    from hf_ckptkd.data import DataError, load_dataset_split, load_tokenizer, tokenize_text_dataset

    monkeypatch.setenv("HF_CKPTKD_CACHE", str(tmp_path / "cache"))
    raw = load_dataset_split("fortunes_topics", "train", limit=160)
    tokenizer = load_tokenizer("fortunes")
    tokenised = tokenize_text_dataset(raw, tokenizer, "text", "label", max_length=32)
    assert "labels" in tokenised.column_names and "label" not in tokenised.column_names
    names = raw.features["label"].names
    bert = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, "hidden_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    for epoch in (1, 2):
        torch.manual_seed(epoch)
        model = build_model("transformers:BertConfig", len(names), label_names=names, model_kwargs=bert)
        write_snapshot(model, tmp_path / "snapshots", f"epoch-{epoch:04d}", epoch=epoch, global_step=10 * epoch)
    report = select_teachers(tmp_path / "snapshots", tokenised, k=1, progress=False)
    assert report.selected[0] in ("epoch-0001", "epoch-0002") and report.probe_size == 160
    assert report.extra["probe"]["label_column"] == "labels"
    # The reverse too: a raw-style `label` column when `labels` is asked for.
    renamed = tokenised.rename_column("labels", "label")
    assert select_teachers(tmp_path / "snapshots", renamed, k=1, label_column="labels", progress=False).selected
    # A column that is not there is the package's own error, naming it, the columns and the argument.
    with pytest.raises(DataError, match=r"no label column 'topic'.*\['labels', 'input_ids', 'attention_mask'\].*label_column"):
        select_teachers(tmp_path / "snapshots", tokenised, k=1, label_column="topic", progress=False)


def test_selection_settings_take_keyword_overrides_and_name_unknown_ones():
    from hf_ckptkd.selection import SelectionError, SelectionSettings

    base = SelectionSettings(k=2, objective="outputs")
    merged = SelectionSettings.of(base, temperature=2.0)
    assert (merged.k, merged.objective, merged.temperature) == (2, "outputs", 2.0) and base.temperature == 4.0
    with pytest.raises(SelectionError, match="unknown selection setting 'max_probe_sample'; did you mean "
                                             "'max_probe_samples'"):
        SelectionSettings.of(max_probe_sample=100)


def test_cli_held_out_objectives_refuse_the_split_the_snapshots_trained_on(run, probe_dir, tmp_path, capsys):
    # Snapshots that record training on this dataset's train split: held_out (the default) and loss
    # read the probe as held-out data, so that split is refused before anything is loaded, and with
    # no --split the probe comes from the test split.
    copied = tmp_path / "snapshots"
    shutil.copytree(run.snapshot_dir, copied)
    for meta in copied.glob("*/snapshot.json"):
        record = json.loads(meta.read_text())
        record["dataset"] = {"name": str(probe_dir), "train": {"split": "train", "num_examples": 256}}
        meta.write_text(json.dumps(record))
    for objective in ("held_out", "loss"):
        assert _select(copied, probe_dir, "--objective", objective, "--split", "train",
                       "--output", str(tmp_path / "s")) == 2
        err = _one_line_error(capsys)
        assert f"--objective {objective}" in err and "--split train" in err and "--split test" in err
    assert not (tmp_path / "s").exists()
    # Objectives that do not read the probe as held out take the training split as before.
    assert _select(copied, probe_dir, "--objective", "accuracy", "--split", "train", "--max_probe_samples", "100",
                   "--output", str(tmp_path / "a")) == 0
    capsys.readouterr()
    # With no --split the default objective draws its probe from the test split (here missing: a clear error).
    assert _select(copied, probe_dir, "--output", str(tmp_path / "t")) == 2
    captured = capsys.readouterr()
    assert "probe: the test split" in captured.out and "test" in captured.err
