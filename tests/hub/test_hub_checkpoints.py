"""Checkpoints that a plain `Trainer(push_to_hub=True, hub_strategy=...)` pushed, as selection candidates:
folders (`subfolders=`, hf_ckptkd.hub.subfolders) and commits (`commits=`, hf_ckptkd.hub.commits), the
teacher references that name them (`owner/name@rev:folder`, `owner/name@<short sha>`), and bad input.

Each run is a real Trainer run of a tiny ViT on Fashion-MNIST that pushes to the local Hub server of
conftest.py through the real huggingface_hub client; the server object is only read to count requests.
"""

import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModelForImageClassification, Trainer, TrainerCallback, TrainingArguments

from hf_ckptkd import load_teachers, select_teachers
from hf_ckptkd.cli import main
from hf_ckptkd.data import (
    ImageTransformConfig,
    build_image_transform,
    image_collator,
    label_names,
    load_fashion_mnist,
    with_image_transform,
)
from hf_ckptkd.hub import HubInputError, hub_commits, hub_subfolders, load_hub_teacher
from hf_ckptkd.metrics import compute_metrics
from hf_ckptkd.models.folders import save_model
from hf_ckptkd.models import build_model
from hf_ckptkd.references import TeacherReferenceError
from hf_ckptkd.selection import SelectionError

ROOT = Path(__file__).resolve().parents[2]
PROBE = 200
SAVES = (2, 4, 6)  # the steps at which each run saves (and pushes) a checkpoint
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 7}
# What a Trainer checkpoint holds that loading a model does not need; selection never downloads it.
TRAINING_STATE = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"}


@pytest.fixture(scope="module")
def fmnist():
    train = load_fashion_mnist("train", limit=128)
    test = load_fashion_mnist("test", limit=64)
    transform = ImageTransformConfig()
    return (label_names(train), with_image_transform(train, build_image_transform(transform, True)),
            with_image_transform(test, build_image_transform(transform, False)))


@pytest.fixture(scope="module")
def probe():
    return load_fashion_mnist("train", limit=300)


class UploadBeforeNextSave(TrainerCallback):
    """Waits for each save's upload, as a real run does by taking longer between saves than an upload takes.

    Without it, saves two steps apart race the Trainer's own background uploads of the same output_dir
    (an upload may read files the next save already replaced), and the commits say less than they should.
    """

    def __init__(self):
        self.trainer = None

    def on_save(self, args, state, control, **kwargs):
        if self.trainer.push_in_progress is not None:
            self.trainer.push_in_progress.wait_until_done()


def _pushed_run(hub, root, fmnist, strategy: str) -> dict:
    """A plain Trainer run that saves at SAVES and pushes with `strategy`, then `trainer.push_to_hub()` as
    users end a run; returns the repo, the output dir and the eval accuracy logged at each save."""
    names, train, test = fmnist
    repo = hub.new_repo_id(f"vit-{strategy.replace('_', '-')}")
    torch.manual_seed(0)
    model = build_model("transformers:ViTConfig", 10, label_names=names, model_kwargs=TINY_VIT)
    args = TrainingArguments(
        output_dir=str(root / strategy), max_steps=SAVES[-1], per_device_train_batch_size=32, learning_rate=3e-3,
        save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2, logging_steps=1,
        push_to_hub=True, hub_model_id=repo, hub_strategy=strategy, hub_token=hub.write_token,
        hub_always_push=True,  # every save reaches the Hub, even while the previous upload is still running
        report_to="none", remove_unused_columns=False, disable_tqdm=True, seed=0)
    waiting = UploadBeforeNextSave()
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=test, data_collator=image_collator,
                      compute_metrics=compute_metrics, callbacks=[waiting])
    waiting.trainer = trainer
    trainer.train()
    trainer.push_to_hub()
    evals = {e["step"]: e["eval_accuracy"] for e in trainer.state.log_history if "eval_accuracy" in e}
    return {"repo": repo, "output_dir": root / strategy, "eval_accuracy": evals}


@pytest.fixture(scope="module")
def runs(hub, tmp_path_factory, fmnist):
    root = tmp_path_factory.mktemp("pushed")
    return {strategy: _pushed_run(hub, root, fmnist, strategy)
            for strategy in ("all_checkpoints", "every_save", "checkpoint")}


def _resolves(server, since: int) -> list[str]:
    return [path for method, path, _ in server.requests[since:] if method == "GET" and "/resolve/" in path]


def _logits(model, seed: int = 0) -> torch.Tensor:
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(pixel_values=x).logits


def _local_checkpoint(run: dict, step: int):
    return AutoModelForImageClassification.from_pretrained(run["output_dir"] / f"checkpoint-{step}")


@pytest.mark.slow
def test_all_checkpoints_folders_are_found_ordered_downloaded_lean_and_scored(hub, runs, probe, fresh_hf_cache,
                                                                            capsys):
    run = runs["all_checkpoints"]
    repo = run["repo"]
    api = HfApi()
    # The Trainer pushed folders into one branch: no branches or tags to select among.
    refs = api.list_repo_refs(repo)
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []

    before = len(hub.server.requests)
    report = select_teachers(repo, probe, subfolders="checkpoint-*", max_probe_samples=PROBE, objective="outputs",
                             progress=False)
    names = [f"{repo}:checkpoint-{s}" for s in SAVES]
    assert [s.name for s in report.scores] == names  # by the step in the folder name
    # trainer_state.json gave each one its step, epoch and the evaluation the run logged at that step.
    assert [s.step for s in report.scores] == list(SAVES)
    assert [s.epoch for s in report.scores] == pytest.approx([s / 4 for s in SAVES])
    for score in report.scores:
        assert score.metadata["eval_accuracy"] == pytest.approx(run["eval_accuracy"][score.step])
        assert "eval_loss" in score.metadata and score.metadata["trainer_state"] is True
        assert score.metadata["subfolder"] == f"checkpoint-{score.step}"
        assert score.metadata["commit"] == hub.head(repo)
    assert all("without the SHA-256 check" in n for n in report.notes) and len(report.notes) == len(SAVES)

    # Only what loading needs came down: never the optimizer, scheduler, RNG states or training arguments.
    # (A file identical to one already cached, such as the same config.json, is not fetched again.)
    needed = {f"checkpoint-{s}/{f}" for s in SAVES for f in ("config.json", "model.safetensors", "trainer_state.json")}
    downloaded = {path.split("/resolve/", 1)[1].split("/", 1)[1] for path in _resolves(hub.server, before)}
    assert downloaded <= needed and {f"checkpoint-{s}/model.safetensors" for s in SAVES} <= downloaded
    commit = fresh_hf_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / hub.head(repo)
    assert {f"{p.parent.name}/{p.name}" for p in commit.glob("*/*")} == needed
    assert TRAINING_STATE <= {os.path.basename(e.path) for e in api.list_repo_tree(repo, "checkpoint-2")}

    # `accuracy` chooses by the recorded evaluation (ties to the earlier checkpoint), not by the probe.
    by_accuracy = select_teachers(repo, probe, subfolders=["checkpoint-2", "checkpoint-4", "checkpoint-6"],
                                  max_probe_samples=PROBE, objective="accuracy", progress=False)
    best = max(SAVES, key=lambda s: (run["eval_accuracy"][s], -s))
    assert by_accuracy.selected == [f"{repo}:checkpoint-{best}"]

    # The chosen name is a teacher reference: it loads exactly the weights the run saved in that folder.
    chosen_step = report.score(report.selected[0]).step
    assert torch.allclose(load_teachers(report.selected)(pixel_values=torch.randn(3, 1, 28, 28,
                          generator=torch.Generator().manual_seed(0))), _logits(_local_checkpoint(run, chosen_step)),
                          atol=1e-6)
    pinned = f"{repo}@{hub.head(repo)}:checkpoint-2"  # at a revision too
    assert torch.allclose(_logits(load_hub_teacher(pinned)), _logits(_local_checkpoint(run, 2)), atol=1e-6)
    # hub_scripts/pull_teacher.py takes the same reference and evaluates the teacher in that folder.
    pull = importlib.util.spec_from_file_location("pull_teacher", ROOT / "hub_scripts" / "pull_teacher.py")
    module = importlib.util.module_from_spec(pull)
    pull.loader.exec_module(module)
    assert module.main([f"{repo}:checkpoint-4", "--max_samples", "64", "--json"]) == 0
    pulled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pulled["reference"] == f"{repo}:checkpoint-4" and pulled["examples"] == 64 and 0 <= pulled["accuracy"] <= 1


@pytest.mark.slow
def test_cli_selects_among_folders_and_distill_takes_the_reference(hub, runs, probe, tmp_path, capsys):
    repo = runs["all_checkpoints"]["repo"]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    probe.to_parquet(str(data_dir / "train.parquet"))
    out = tmp_path / "selection"
    code = main(["select", f"{repo}@main", "--subfolders", "checkpoint-*", "--dataset", str(data_dir),
                 "--max_probe_samples", str(PROBE), "--output", str(out), "--disable_tqdm"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads((out / "selection.json").read_text())
    assert [s["name"] for s in saved["scores"]] == [f"{repo}@main:checkpoint-{s}" for s in SAVES]
    chosen = saved["selected"][0]
    assert f"distil from it: hf-ckptkd distill --model SPEC --teachers {chosen}" in captured.out
    assert saved["extra"]["source"]["hub"]["pinned"] == {f"main:checkpoint-{s}": hub.head(repo) for s in SAVES}

    code = main(["distill", "--model", "timm:test_resnet", "--teachers", chosen, "--max_train_samples", "64",
                 "--max_eval_samples", "64", "--output_dir", str(tmp_path / "student"), "--max_steps", "1",
                 "--per_device_train_batch_size", "32", "--report_to", "none"])
    assert code == 0, capsys.readouterr().err
    assert "test accuracy:" in capsys.readouterr().out

    # A glob no folder matches: exit 2, one sentence that lists the folders there are.
    assert main(["select", repo, "--subfolders", "ckpt-*", "--dataset", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert f"no folder of {repo} matches 'ckpt-*'; it has checkpoint-2, checkpoint-4, checkpoint-6" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_every_save_commits_are_candidates_named_by_short_sha(hub, runs, probe, tmp_path, capsys):
    run = runs["every_save"]
    repo = run["repo"]
    history = HfApi().list_repo_commits(repo)  # newest first: End of training, step 6, 4, 2, initial commit
    by_title = {c.title: c.commit_id for c in history}
    report = select_teachers(repo, probe, commits="all", max_probe_samples=PROBE, objective="final", progress=False)
    # The initial commit holds no weights and "End of training" the same weights as step 6: both skipped.
    expected = [by_title[f"Training in progress, step {s}"] for s in SAVES]
    assert [s.metadata["commit"] for s in report.scores] == expected
    assert [s.name for s in report.scores] == [f"{repo}@{c[:7]}" for c in expected]
    assert [s.step for s in report.scores] == list(SAVES)  # from the commit titles
    assert report.selected == [f"{repo}@{expected[-1][:7]}"]
    # The short sha is a teacher reference that loads that commit's weights.
    assert torch.allclose(_logits(load_hub_teacher(f"{repo}@{expected[1][:7]}")), _logits(_local_checkpoint(run, 4)),
                          atol=1e-6)
    # The N most recent.
    assert [c.step for c in hub_commits(repo, 2)] == [4, 6]
    assert [c.step for c in hub_commits(repo, "1")] == [6]
    # The command line: --commits N (or all), and its default report folder is named after the repo.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    probe.to_parquet(str(data_dir / "train.parquet"))
    code = main(["select", repo, "--commits", "2", "--dataset", str(data_dir), "--max_probe_samples", str(PROBE),
                 "--objective", "final", "--output", str(tmp_path / "sel"), "--disable_tqdm"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert [s["name"] for s in saved["scores"]] == [f"{repo}@{c[:7]}" for c in expected[1:]]
    assert saved["extra"]["source"]["hub"]["commits"] == "2"
    assert main(["select", repo, "--commits", "0", "--dataset", str(data_dir)]) == 2
    assert f"commits=0 for {repo}: give 'all'" in capsys.readouterr().err


@pytest.mark.slow
def test_checkpoint_strategy_commits_and_its_last_checkpoint_folder(hub, runs, probe):
    run = runs["checkpoint"]
    repo = run["repo"]
    # Each save makes two commits (the root model, then last-checkpoint/): only the first changes the root weights.
    titles = [c.metadata["title"] for c in hub_commits(repo, "all")]
    assert titles == [f"Training in progress, step {s}" for s in SAVES]
    [last] = hub_subfolders(repo, "last-checkpoint")
    report = select_teachers(repo, probe, subfolders="all", max_probe_samples=PROBE, progress=False)
    assert [s.name for s in report.scores] == [f"{repo}:last-checkpoint"] and last.name == report.scores[0].name
    assert report.scores[0].step == SAVES[-1]  # no number in its name: trainer_state.json says which step
    assert report.scores[0].metadata["eval_accuracy"] == pytest.approx(run["eval_accuracy"][SAVES[-1]])


@pytest.mark.slow
def test_folders_at_each_revision_and_conflicting_requests(hub, runs, probe):
    api = HfApi(token=hub.write_token)
    repo = runs["all_checkpoints"]["repo"]
    api.create_tag(repo, tag="run-a")
    api.create_branch(repo, branch="run-b")
    api.delete_folder("checkpoint-6", repo_id=repo, revision="run-b")
    listed = [c.name for c in hub_subfolders(repo, ["checkpoint-4", "checkpoint-6"], revision="run-a")]
    assert listed == [f"{repo}@run-a:checkpoint-4", f"{repo}@run-a:checkpoint-6"]
    report = select_teachers(repo, probe, revisions="run-*", subfolders="checkpoint-[46]", max_probe_samples=PROBE,
                             progress=False)
    assert [s.name for s in report.scores] == [f"{repo}@run-a:checkpoint-4", f"{repo}@run-a:checkpoint-6",
                                               f"{repo}@run-b:checkpoint-4"]
    # A folder one of the revisions lacks: the error names that revision and what it has.
    with pytest.raises(HubInputError, match=rf"{repo} at run-b has no folder 'checkpoint-6'; it has checkpoint-2, "
                                            "checkpoint-4"):
        select_teachers(repo, probe, revisions=["run-a", "run-b"], subfolders=["checkpoint-6"])
    with pytest.raises(HubInputError, match=r"both name revisions; give the repo as"):
        select_teachers(f"{repo}@run-a", probe, revisions="run-*", subfolders="checkpoint-*")
    with pytest.raises(HubInputError, match=r"commits= scores the history of one branch .* does not combine with "
                                            r"subfolders="):
        select_teachers(repo, probe, subfolders="checkpoint-*", commits="all")
    with pytest.raises(HubInputError, match=r"does not combine with revisions="):
        select_teachers(repo, probe, revisions="run-*", commits=3)
    with pytest.raises(HubInputError, match=r"commits=0 .* give 'all' .* or a positive number"):
        select_teachers(repo, probe, commits=0)
    with pytest.raises(HubInputError, match=rf"give the repo without ':checkpoint-2' and name folders with subfolders="):
        select_teachers(f"{repo}:checkpoint-2", probe, subfolders="checkpoint-*")
    with pytest.raises(HubInputError, match=rf"{repo} has no revision 'nope'"):
        hub_subfolders(f"{repo}@nope", "checkpoint-*")
    with pytest.raises(SelectionError, match=r"subfolders='checkpoint-\*' selects among the checkpoints of a Hub model "
                                             "repo, so the source must be 'owner/name'"):
        select_teachers([], probe, subfolders="checkpoint-*")


def test_folders_without_weights_are_skipped_and_none_loading_stops(hub, probe, tmp_path, caplog):
    """What a Trainer run of a model saved without safetensors, or a half-pushed folder, leaves on the Hub."""
    api = HfApi(token=hub.write_token)
    repo = hub.new_repo_id("weightless")
    api.create_repo(repo)
    torch.manual_seed(0)
    model = build_model("transformers:ViTConfig", 10, label_names=label_names(probe), model_kwargs=TINY_VIT)
    model.save_pretrained(tmp_path / "checkpoint-3")
    for step in (1, 2):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "config.json").write_text((tmp_path / "checkpoint-3" / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "checkpoint-1" / "pytorch_model.bin")  # pickled weights only
    (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(os.urandom(64))  # no weights at all
    api.upload_folder(repo_id=repo, folder_path=str(tmp_path))
    caplog.set_level(logging.WARNING)
    report = select_teachers(repo, probe, subfolders="checkpoint-*", max_probe_samples=PROBE, progress=False)
    assert [s.name for s in report.scores] == [f"{repo}:checkpoint-3"]
    skipped = [n for n in report.notes if "was skipped" in n]
    assert len(skipped) == 2 and all("holds no safetensors weights" in n for n in skipped)
    assert "it holds config.json, pytorch_model.bin" in skipped[0] and "optimizer.pt" in skipped[1]
    assert any(f"{repo}:checkpoint-1" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    with pytest.raises(SelectionError, match=r"none of the 2 candidates could be loaded"):
        select_teachers(repo, probe, subfolders=["checkpoint-1", "checkpoint-2"], max_probe_samples=PROBE,
                        progress=False)
    # A repo whose commits never put weights at the root.
    with pytest.raises(HubInputError, match=r"changes safetensors weights at the repo's root; for checkpoints pushed "
                                            r"as folders use subfolders="):
        hub_commits(repo)
    # A reference to a folder that is not there, and malformed ones.
    with pytest.raises(TeacherReferenceError, match=rf"holds no model at main in checkpoint-9/ \(no config.json\)"):
        load_teachers([f"{repo}:checkpoint-9"])
    with pytest.raises(TeacherReferenceError, match=r"invalid subfolder '\.\./x'"):
        load_hub_teacher(f"{repo}:../x")


def test_private_repo_folders_need_a_token(hub, probe, tmp_path, fresh_hf_cache):
    api = HfApi(token=hub.write_token)
    repo = hub.new_repo_id("private-run")
    api.create_repo(repo, private=True)
    save_model(build_model("timm:test_resnet", 10, label_names=label_names(probe)), tmp_path / "checkpoint-1")
    api.upload_folder(repo_id=repo, folder_path=str(tmp_path))
    with pytest.raises(HubInputError, match=rf"there is no model repo {repo} on .*pass a token"):
        select_teachers(repo, probe, subfolders="checkpoint-*", token=False)
    with pytest.raises(HubInputError, match=rf"there is no model repo {repo} on .*pass a token"):
        hub_commits(repo, token=False)
    assert [c.name for c in hub_subfolders(repo, "all", token=hub.write_token)] == [f"{repo}:checkpoint-1"]


DOC = ROOT / "docs" / "hub-checkpoints.md"
# The page's sizes, shrunk so its code runs in a minute; each must still be found there.
DOC_TINY = [('load_fashion_mnist("train", limit=2000)', 'load_fashion_mnist("train", limit=256)'),
            ('load_fashion_mnist("test", limit=500)', 'load_fashion_mnist("test", limit=64)'),
            ("num_train_epochs=2,", "num_train_epochs=1,"), ("num_train_epochs=4", "num_train_epochs=2"),
            ("max_probe_samples=1000", "max_probe_samples=200")]


@pytest.mark.slow
def test_the_docs_page_runs_as_written_against_the_hub(hub, tmp_path):
    """docs/hub-checkpoints.md: train with push_to_hub, select, distil, and push while training."""
    import re
    import subprocess
    import sys

    blocks = re.findall(r"^( *)```python\n(.*?)^\1```", DOC.read_text(), flags=re.M | re.S)
    script = "\n\n".join("\n".join(line[len(indent):] for line in body.splitlines()) for indent, body in blocks)
    for old, new in DOC_TINY:
        assert old in script, f"the page's code no longer contains {old!r}: update DOC_TINY"
        script = script.replace(old, new)
    owner = hub.new_repo_id("doc")  # a namespace of alice's repos no other test uses
    script = script.replace('"you/', f'"{owner}-')
    (tmp_path / "doc.py").write_text(script)
    env = {**os.environ, "HF_TOKEN": hub.write_token, "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "doc.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    api = HfApi()
    folders = {e.path for e in api.list_repo_tree(f"{owner}-vit-fmnist") if not e.path.startswith(".")}
    assert {"checkpoint-4", "checkpoint-8", "model.safetensors"} <= folders
    assert sorted(t.name for t in api.list_repo_refs(f"{owner}-vit-snapshots").tags) == ["epoch-0001"]
    assert (tmp_path / "runs" / "vit-student").is_dir() and f"{owner}-vit-fmnist:checkpoint-" in done.stdout
