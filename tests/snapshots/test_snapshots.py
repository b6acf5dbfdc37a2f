"""Teacher snapshots: the callback, the index, the format, and what happens when things go wrong."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from transformers import AutoModelForImageClassification, HfArgumentParser, Trainer, TrainingArguments

from capabilities import TIMM_ALONE_LOADS_LOCAL_FOLDERS
from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, SnapshotCallback, SnapshotIndex
from hf_ckptkd.config import ConfigError
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, label_names, load_fashion_mnist, with_image_transform
from hf_ckptkd.metrics import compute_metrics
from hf_ckptkd.models import build_model
from hf_ckptkd.snapshots import SnapshotError, resolve_snapshot_reference, write_snapshot

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "teacher_run.py"
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 7}


@pytest.fixture(scope="module")
def fmnist():
    train = load_fashion_mnist("train", limit=128)
    test = load_fashion_mnist("test", limit=64)
    transform = ImageTransformConfig()
    return (label_names(train), with_image_transform(train, build_image_transform(transform, True)),
            with_image_transform(test, build_image_transform(transform, False)))


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "run"), num_train_epochs=3, per_device_train_batch_size=32,
                  learning_rate=1e-3, report_to="none", remove_unused_columns=False, save_strategy="no",
                  logging_steps=50, disable_tqdm=True, seed=0)
    values.update(overrides)
    return values


def test_callback_on_plain_trainer_keeps_loadable_snapshots(tmp_path, fmnist):
    names, train, test = fmnist
    model = build_model("timm:test_resnet", 10, label_names=names)
    args = TrainingArguments(**_args(tmp_path, eval_strategy="epoch"))
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=test, data_collator=image_collator,
                      compute_metrics=compute_metrics, callbacks=[SnapshotCallback("epoch", 1)])
    trainer.train()
    index = SnapshotIndex.load(tmp_path / "run")  # the run's output_dir finds snapshots/ inside it
    assert index.names == ["epoch-0001", "epoch-0002", "epoch-0003"]
    assert [s.global_step for s in index] == [4, 8, 12]
    assert [s.final for s in index] == [False, False, True]
    assert index.final.name == "epoch-0003"
    evals = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    assert len(evals) == 3, "the callback must not run extra evaluations"
    for snapshot, logged in zip(index, evals):
        assert snapshot.eval_metrics["eval_accuracy"] == pytest.approx(logged["eval_accuracy"])
        assert snapshot.train_loss is not None and snapshot.learning_rate is not None
        assert snapshot.family == "timm" and set(snapshot.sha256) == {"model.safetensors"}
        assert snapshot.created.endswith("Z")
    index.verify()
    # The final snapshot is the trained model; timm loads it alone (weights only with pretrained=True).
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(index.final.load_model().eval()(pixel_values=x).logits, model.eval()(pixel_values=x).logits)
    if TIMM_ALONE_LOADS_LOCAL_FOLDERS:
        plain = timm.create_model(f"local-dir:{index.final.path}", pretrained=True).eval()
        with torch.no_grad():
            assert torch.equal(plain(x), model.eval()(pixel_values=x).logits)
    on_disk = json.loads((index.snapshot_dir / "index.json").read_text())
    assert [e["name"] for e in on_disk["snapshots"]] == index.names


def test_trainer_with_transformers_model_and_step_snapshots(tmp_path, fmnist):
    names, train, _ = fmnist
    model = build_model("transformers:ViTConfig", 10, label_names=names, model_kwargs=TINY_VIT)
    config = CheckpointKDConfig(**_args(tmp_path, num_train_epochs=2, snapshot_strategy="steps", snapshot_every=3))
    CheckpointKDTrainer(model=model, args=config, train_dataset=train, data_collator=image_collator).train()
    index = SnapshotIndex.load(config.snapshot_dir)
    # 8 steps: snapshots at 3 and 6, and the final model at step 8 is always kept.
    assert index.names == ["step-000003", "step-000006", "step-000008"]
    assert [s.final for s in index] == [False, False, True]
    assert index.get(step=6).name == "step-000006" and index.get(epoch=index[0].epoch).name == "step-000003"
    loaded = AutoModelForImageClassification.from_pretrained(index.final.path).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded(pixel_values=x).logits, model.eval()(pixel_values=x).logits)
    assert loaded.config.id2label[0] == names[0]
    assert resolve_snapshot_reference(f"{config.snapshot_dir}:step-000006").global_step == 6
    assert resolve_snapshot_reference(str(index.final.path)).final
    with pytest.raises(SnapshotError, match=r"has no snapshot step-000004; it has step-000003, step-000006"):
        resolve_snapshot_reference(f"{config.snapshot_dir}:step-000004")


def test_save_total_limit_never_deletes_snapshots(tmp_path, fmnist):
    names, train, _ = fmnist
    config = CheckpointKDConfig(**_args(tmp_path, num_train_epochs=10, max_steps=10, snapshot_strategy="steps",
                                        snapshot_every=1, save_strategy="steps", save_steps=1, save_total_limit=1,
                                        per_device_train_batch_size=64))
    model = build_model("timm:test_resnet", 10, label_names=names)
    CheckpointKDTrainer(model=model, args=config, train_dataset=train, data_collator=image_collator).train()
    index = SnapshotIndex.load(config.snapshot_dir)
    assert len(index) == 10 and index.names[-1] == "step-000010"
    index.verify()
    assert len(list(Path(config.output_dir).glob("checkpoint-*"))) == 1


def test_write_failure_keeps_earlier_snapshots_and_index(tmp_path):
    model = build_model("timm:test_resnet", 10)
    snapshot_dir = tmp_path / "snapshots"
    write_snapshot(model, snapshot_dir, "epoch-0001", epoch=1, global_step=5)
    index_before = (snapshot_dir / "index.json").read_bytes()
    # A real write error: the kernel refuses to grow a file past RLIMIT_FSIZE (EFBIG), as a full disk would.
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, old_limit[1]))
    try:
        with pytest.raises(SnapshotError, match=r"could not write snapshot epoch-0002 to .*snapshots.*resume"):
            write_snapshot(model, snapshot_dir, "epoch-0002", epoch=2, global_step=10)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert (snapshot_dir / "index.json").read_bytes() == index_before
    assert sorted(p.name for p in snapshot_dir.iterdir()) == ["epoch-0001", "index.json"]
    SnapshotIndex.load(snapshot_dir).verify()


def test_altered_weights_are_named_and_refused(tmp_path):
    model = build_model("timm:test_resnet", 10)
    write_snapshot(model, tmp_path, "epoch-0001", epoch=1, global_step=5)
    write_snapshot(model, tmp_path, "epoch-0002", epoch=2, global_step=10)
    weights = tmp_path / "epoch-0002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    index = SnapshotIndex.load(tmp_path)
    index[0].verify()
    with pytest.raises(SnapshotError, match=r"snapshot epoch-0002: .*model.safetensors does not match the SHA-256"):
        index.verify()
    with pytest.raises(SnapshotError, match=r"snapshot epoch-0002: .*altered"):
        index["epoch-0002"].load_model()


@pytest.mark.parametrize("overrides,message", [
    ({"snapshot_strategy": "steps", "snapshot_every": 0}, r"snapshot_every=0 must be a positive integer"),
    ({"snapshot_strategy": "steps", "snapshot_every": -2}, r"snapshot_every=-2 must be a positive integer"),
    ({"snapshot_strategy": "hourly"}, r"snapshot_strategy='hourly' is not one of 'no', 'epoch', 'steps'"),
])
def test_bad_snapshot_settings_fail_at_config_time(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        CheckpointKDConfig(output_dir=str(tmp_path), **overrides)


def test_snapshot_dir_that_is_a_file(tmp_path):
    (tmp_path / "snaps").write_text("x")
    with pytest.raises(ConfigError, match=r"snapshot_dir=.*snaps' is a file, not a folder"):
        CheckpointKDConfig(output_dir=str(tmp_path), snapshot_strategy="epoch", snapshot_dir=str(tmp_path / "snaps"))
    with pytest.raises(SnapshotError, match=r"is a file, not a folder"):
        SnapshotCallback("epoch", 1, tmp_path / "snaps")


def test_config_parses_from_command_line_and_yaml(tmp_path):
    parser = HfArgumentParser(CheckpointKDConfig)
    (config,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--snapshot_strategy", "steps", "--snapshot_every", "50",
         "--teachers", "a/b@v1", "runs/t/snapshots:epoch-0003", "--alpha", "0.3"])
    assert (config.snapshot_strategy, config.snapshot_every, config.alpha) == ("steps", 50, 0.3)
    assert config.teachers == ["a/b@v1", "runs/t/snapshots:epoch-0003"]
    assert config.snapshot_dir == str(tmp_path / "snapshots")
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(f"output_dir: {tmp_path}\nsnapshot_strategy: epoch\nsnapshot_every: 2\ntemperature: 2.0\n")
    (config,) = parser.parse_yaml_file(str(yaml_file))
    assert (config.snapshot_strategy, config.snapshot_every, config.temperature) == ("epoch", 2, 2.0)
    for field_name in ("snapshot_strategy", "teachers", "alpha", "cache_teacher_logits", "teacher_fusion"):
        assert CheckpointKDConfig.__dataclass_fields__[field_name].metadata["help"]


def _run_script(out, *extra, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *extra], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_snapshots(tmp_path):
    reference = _run_script(tmp_path / "uninterrupted")
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = SnapshotIndex.load(tmp_path / "uninterrupted").names
    assert expected == ["epoch-0001", "epoch-0002", "epoch-0003", "epoch-0004"]

    # 6 steps an epoch: step 15 is mid-epoch 3, after checkpoint-14.
    killed = _run_script(tmp_path / "run", "--kill_at_step", "15")
    assert killed.returncode == -signal.SIGKILL
    snapshots = tmp_path / "run" / "snapshots"
    assert SnapshotIndex.load(snapshots).names == ["epoch-0001", "epoch-0002"]
    # What a kill during a snapshot write leaves behind: a temporary folder with partial weights.
    partial = snapshots / ".tmp-epoch-0003-dead"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 100)
    resumed = _run_script(tmp_path / "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "discarded partially written snapshot" in resumed.stderr
    index = SnapshotIndex.load(snapshots)
    assert index.names == expected
    assert [s.final for s in index] == [False, False, False, True]
    index.verify()
    assert not partial.exists()
    assert sorted(p.name for p in snapshots.iterdir()) == sorted(expected + ["index.json"])


@pytest.mark.slow
def test_two_processes_write_once_with_the_single_process_schedule(tmp_path, accelerate_launch):
    single = _run_script(tmp_path / "single", "--batch_size", "32")
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.run(
        [*accelerate_launch, str(SCRIPT), str(tmp_path / "ddp"), "--batch_size", "16"],
        capture_output=True, text=True, timeout=600, env=env)
    assert launch.returncode == 0, launch.stderr[-3000:]
    ranks = [json.loads((tmp_path / "ddp" / f"world-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    single_index, ddp_index = SnapshotIndex.load(tmp_path / "single"), SnapshotIndex.load(tmp_path / "ddp")
    # Same global batch (2 x 16 = 32), so the same steps and the same snapshot schedule.
    assert ddp_index.names == single_index.names
    assert [s.global_step for s in ddp_index] == [s.global_step for s in single_index]
    ddp_index.verify()
    assert not list((tmp_path / "ddp" / "snapshots").glob(".tmp-*"))


@pytest.mark.parametrize("code", [0, 3])
def test_exit_launched_process_flushes_and_keeps_the_exit_status(tmp_path, code):
    # A gloo process leaves through os._exit (no interpreter teardown): what it printed must still
    # come out, the status must be the script's, and the group is destroyed only after success.
    script = (
        "import torch.distributed as dist\n"
        "from hf_ckptkd import exit_launched_process\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path / 'store'}', rank=0, world_size=1)\n"
        "destroy = dist.destroy_process_group\n"
        "dist.destroy_process_group = lambda: (destroy(), print('destroyed'))\n"
        "print('trained', end='')\n"
        f"exit_launched_process({code})\n"
        "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stdout == ("traineddestroyed\n" if code == 0 else "trained")


def test_train_teacher_and_snapshots_cli(tmp_path, capsys):
    from hf_ckptkd.cli.main import main

    config = tmp_path / "teacher.yaml"
    config.write_text("num_train_epochs: 2\nper_device_train_batch_size: 32\nlearning_rate: 0.003\n"
                      "snapshot_strategy: epoch\neval_strategy: epoch\nreport_to: none\n")
    code = main(["train-teacher", "--model", "timm:test_resnet", "--max_train_samples", "64", "--max_eval_samples", "64",
                 "--config", str(config), "--num_train_epochs", "3", "--output_dir", str(tmp_path / "t")])
    assert code == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out
    # The flag given on the command line wins over the YAML file.
    assert SnapshotIndex.load(tmp_path / "t").names == ["epoch-0001", "epoch-0002", "epoch-0003"]
    assert main(["snapshots", str(tmp_path / "t" / "snapshots")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["name", "epoch", "step"]
    assert [line.split()[0] for line in table[1:]] == ["epoch-0001", "epoch-0002", "epoch-0003"]
    assert table[-1].rstrip().endswith("yes")


@pytest.mark.parametrize("argv,message", [
    (["--model", "timm:test_resnet", "--snapshot_every", "0"], "snapshot_every=0 must be a positive integer"),
    (["--model", "timm:resnet19"], "timm does not know a model named 'resnet19'"),
    (["--model", "timm:test_resnet", "--snapshot_strategi", "epoch"], "unknown flag --snapshot_strategi; did you mean --snapshot_strategy?"),
    (["--model", "timm:test_resnet", "--config", "missing.yaml"], "--config missing.yaml: no such file"),
])
def test_train_teacher_bad_input_exits_2(tmp_path, capsys, argv, message):
    from hf_ckptkd.cli.main import main

    assert main(["train-teacher", *argv, "--output_dir", str(tmp_path), "--max_train_samples", "32"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_snapshots_cli_on_a_folder_without_snapshots(tmp_path, capsys):
    from hf_ckptkd.cli.main import main

    assert main(["snapshots", str(tmp_path)]) == 2
    assert "holds no snapshot index" in capsys.readouterr().err
