"""Snapshots pushed to the Hub while training (`SnapshotCallback(push_to_hub=...)`, `snapshot_push_to_hub`):
in the background, retried, awaited at the end, never twice (also across a kill and resume), checked
before training, and with keep_top deleting local copies only. Real Trainer runs against the local Hub.
"""

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, SnapshotCallback, SnapshotIndex, select_teachers
from hf_ckptkd.cli import main
from hf_ckptkd.config import ConfigError
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, label_names, load_fashion_mnist, with_image_transform
from hf_ckptkd.hub import HubError, HubInputError
from hf_ckptkd.models import build_model
from hf_ckptkd.snapshots import write_snapshot
from hf_ckptkd.training import snapshot_push

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "teacher_run.py"
EPOCHS = ("epoch-0001", "epoch-0002", "epoch-0003")


@pytest.fixture(scope="module")
def fmnist():
    raw = load_fashion_mnist("train", limit=128)
    return raw, label_names(raw), with_image_transform(raw, build_image_transform(ImageTransformConfig(), True))


class Watch(TrainerCallback):
    """Records, at every step's end, which snapshots the Hub already holds as tags."""

    def __init__(self, server, repo):
        self.server, self.repo, self.seen = server, repo, []

    def on_step_end(self, args, state, control, **kwargs):
        written = [p.name for p in Path(args.output_dir, "snapshots").glob("epoch-*")]
        tags = set(self.server.get_repo(self.repo).tags)
        self.seen.append((state.global_step, sorted(written), sorted(tags)))


@pytest.mark.slow
def test_snapshots_are_pushed_in_the_background_retried_and_the_last_awaited(hub, fmnist, tmp_path, monkeypatch,
                                                                             caplog):
    raw, names, train = fmnist
    monkeypatch.setattr(snapshot_push, "FIRST_RETRY_S", 0.2)
    repo = hub.new_repo_id("pushed-while-training")
    commit = rf"/api/models/{repo}/commit/main"
    failed = hub.server.inject("POST", commit, status=503)  # the first upload fails once (a transient 503)...
    slow = hub.server.inject("POST", commit, status=None, delay=2.0)  # ...and its retry takes 2 s
    caplog.set_level(logging.INFO)
    model = build_model("timm:test_resnet", 10, label_names=names)
    args = TrainingArguments(output_dir=str(tmp_path / "run"), num_train_epochs=3, per_device_train_batch_size=32,
                             report_to="none", remove_unused_columns=False, save_strategy="no", disable_tqdm=True,
                             logging_steps=50, seed=0)
    callback = SnapshotCallback("epoch", 1, keep_top=1, probe_dataset=raw, push_to_hub=repo,
                                hub_token=hub.write_token)
    watch = Watch(hub.server, repo)
    Trainer(model=model, args=args, train_dataset=train, data_collator=image_collator,
            callbacks=[callback, watch]).train()

    # Training went on while the first snapshot was being pushed: steps ended with it written but not on the Hub.
    waiting = [step for step, written, tags in watch.seen if "epoch-0001" in written and "epoch-0001" not in tags]
    assert waiting, watch.seen
    # The failed upload was retried, and train() returned only once the last snapshot was on the Hub.
    assert failed.hits == 1 and slow.hits == 1
    assert any("retrying in" in r.getMessage() and "epoch-0001" in r.getMessage() for r in caplog.records)
    api = HfApi()
    tags = {t.name: t.target_commit for t in api.list_repo_refs(repo).tags}
    assert sorted(tags) == list(EPOCHS) and len(set(tags.values())) == 3
    assert [c.title.split(" (")[0] for c in api.list_repo_commits(repo)][:3] == [f"Teacher {e}" for e in
                                                                                  reversed(EPOCHS)]
    # keep_top=1 deleted local copies only, and said so; every snapshot stays on the Hub and loads verified.
    local = SnapshotIndex.load(tmp_path / "run")
    assert len(local.names) <= 2 and local.names[-1] == "epoch-0003"  # the best one and the final one
    removed = sorted(set(EPOCHS) - set(local.names))
    assert any("removed the local copies" in r.getMessage() and f"{repo}@{removed[0]}" in r.getMessage()
               for r in caplog.records)
    report = select_teachers(repo, raw, revisions="epoch-*", max_probe_samples=100, progress=False)
    assert [s.name for s in report.scores] == [f"{repo}@{e}" for e in EPOCHS]
    assert all(s.metadata["verified"] for s in report.scores)
    assert not [p for p in (tmp_path / "run" / "snapshots").iterdir() if p.name.startswith(".tmp-")]


def test_a_pusher_sends_once_and_a_push_that_keeps_failing_is_raised_at_the_end(hub, fmnist, tmp_path, monkeypatch):
    _, names, _ = fmnist
    monkeypatch.setattr(snapshot_push, "FIRST_RETRY_S", 0.01)
    repo = hub.new_repo_id("pusher")
    pusher = snapshot_push.SnapshotPusher(repo, token=hub.write_token)
    assert hub.head(repo) is not None  # made (and checked) at once, before anything is pushed
    snapshot = write_snapshot(build_model("timm:test_resnet", 10, label_names=names), tmp_path / "snaps", "epoch-0001",
                              epoch=1, global_step=4)
    pusher.submit(snapshot)
    assert pusher.wait() == ["epoch-0001"]
    pusher.submit(snapshot)  # the same weights again: nothing is sent
    assert pusher.wait() == [] and len(hub.server.history(repo)) == 2
    # A Hub that fails every try: retried PUSH_ATTEMPTS times, then one error naming the snapshot and the way out.
    other = write_snapshot(build_model("timm:test_resnet", 10, label_names=names), tmp_path / "snaps", "epoch-0002",
                           epoch=2, global_step=8)
    failing = hub.server.inject("GET", r"/api/whoami-v2", times=snapshot_push.PUSH_ATTEMPTS)
    pusher.submit(other)
    with pytest.raises(HubError, match=rf"(?s)pushing snapshot epoch-0002 to {repo} failed 4 times .*`hf-ckptkd push "
                                       rf"<snapshot_dir> --repo_id {repo} --as_revisions --names epoch-0002"):
        pusher.wait()
    assert failing.hits == snapshot_push.PUSH_ATTEMPTS and len(hub.server.history(repo)) == 2
    assert not [p for p in (tmp_path / "snaps").iterdir() if p.name.startswith(".tmp-")]  # staging cleared


def test_a_push_target_the_token_cannot_write_is_refused_before_training(hub, fmnist, tmp_path, capsys):
    _, names, train = fmnist
    mine = hub.new_repo_id("mine")
    with pytest.raises(HubInputError, match=r"read-only; pushing to .* needs a write token"):
        SnapshotCallback("epoch", push_to_hub=mine, hub_token=hub.read_token)
    with pytest.raises(HubInputError, match=r"the token belongs to alice, who cannot write to bob/"):
        SnapshotCallback("epoch", push_to_hub=hub.new_repo_id("theirs", owner="bob"), hub_token=hub.write_token)
    with pytest.raises(HubInputError, match=r"needs a Hub token with write access, and none was found"):
        SnapshotCallback("epoch", push_to_hub=mine)  # no token anywhere (conftest unsets HF_TOKEN)
    with pytest.raises(HubInputError, match=r"is not a valid Hub repo id"):
        SnapshotCallback("epoch", push_to_hub="not a repo")
    assert hub.head(mine) is None  # nothing was created
    # The config path: refused when the trainer is built, before the first step.
    config = CheckpointKDConfig(output_dir=str(tmp_path / "run"), snapshot_strategy="epoch", report_to="none",
                                snapshot_push_to_hub=mine, hub_token=hub.read_token, remove_unused_columns=False)
    with pytest.raises(HubInputError, match="read-only"):
        CheckpointKDTrainer(model=build_model("timm:test_resnet", 10, label_names=names), args=config,
                            train_dataset=train, data_collator=image_collator)
    with pytest.raises(ConfigError, match=r"snapshot_push_to_hub='alice/x@v1' must be a Hub repo id"):
        CheckpointKDConfig(output_dir=str(tmp_path), snapshot_strategy="epoch", snapshot_push_to_hub="alice/x@v1")
    with pytest.raises(ConfigError, match=r"snapshot_strategy='no' keeps none"):
        CheckpointKDConfig(output_dir=str(tmp_path), snapshot_push_to_hub=mine)
    # The command line: exit 2 and one sentence, and no training happened.
    code = main(["train-teacher", "--model", "timm:test_resnet", "--max_train_samples", "64", "--max_eval_samples",
                 "64", "--output_dir", str(tmp_path / "cli"), "--snapshot_strategy", "epoch", "--snapshot_push_to_hub",
                 mine, "--hub_token", hub.read_token, "--report_to", "none"])
    assert code == 2 and "read-only" in capsys.readouterr().err
    assert not (tmp_path / "cli" / "snapshots").exists()


@pytest.mark.slow
def test_kill_and_resume_push_each_snapshot_once(hub, tmp_path):
    repo = hub.new_repo_id("resumed")
    env = {**os.environ, "HF_TOKEN": hub.write_token, "OMP_NUM_THREADS": "1"}

    def run(*extra):
        return subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "run"), "--push_to_hub", repo, *extra],
                              capture_output=True, text=True, timeout=300, env=env)

    # 6 steps an epoch: killed mid-epoch 3 (after checkpoint-14), once epoch-0001 is on the Hub and while the
    # push of epoch-0002 hangs (the token check it starts with waits a minute, then fails): written, not pushed.
    # (The run checks the token once before training and once per push: the third check is epoch-0002's.)
    hanging = hub.server.inject("GET", r"/api/whoami-v2", delay=60, after=2)
    killed = run("--kill_at_step", "15", "--kill_after_tag", "epoch-0001")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert hanging.hits == 1
    api = HfApi()
    before = {t.name: t.target_commit for t in api.list_repo_refs(repo).tags}
    assert sorted(before) == ["epoch-0001"]
    assert SnapshotIndex.load(tmp_path / "run").names == ["epoch-0001", "epoch-0002"]
    resumed = run("--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    tags = {t.name: t.target_commit for t in api.list_repo_refs(repo).tags}
    assert sorted(tags) == ["epoch-0001", "epoch-0002", "epoch-0003", "epoch-0004"]
    assert {k: tags[k] for k in before} == before  # the snapshot pushed before the kill was not pushed again...
    titles = [c.title.split(" (")[0] for c in api.list_repo_commits(repo)]
    assert titles == ["Teacher epoch-0004", "Teacher epoch-0003", "Teacher epoch-0002", "Teacher epoch-0001",
                      "initial commit"]  # ...and the one the kill interrupted was pushed by the resumed run
    assert SnapshotIndex.load(tmp_path / "run").names == sorted(tags)
