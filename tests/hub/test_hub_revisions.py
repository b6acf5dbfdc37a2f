"""Selecting teachers among a Hub repo's published revisions: hf_ckptkd.hub.revisions, `select_teachers(repo,
probe, revisions=...)` and `hf-ckptkd select OWNER/NAME --revisions ...`.

Everything talks HTTP to the local Hub server of conftest.py through the real huggingface_hub client;
the server object is only read to count requests and find commit ids.
"""

import json
import logging
import math
import os
import subprocess

import pytest
import torch
from huggingface_hub import HfApi

from hf_ckptkd import SnapshotIndex, load_teachers, select_teachers
from hf_ckptkd.cli.main import main
from hf_ckptkd.data import FASHION_MNIST_LABELS as LABELS
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, load_fashion_mnist, tokenize_text_dataset
from hf_ckptkd.hub import HubInputError, hub_revisions
from hf_ckptkd.models.folders import save_model
from hf_ckptkd.models import build_model
from hf_ckptkd.selection import SelectionError
from hf_ckptkd.snapshots import write_snapshot
from selection_reports import assert_same_report

PROBE = 200
STEPS = (0, 4, 8, 12)  # checkpoints of one run, the first the initialisation
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 7}


def _train(model, images: torch.Tensor, labels: torch.Tensor, steps: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for step in range(steps):
        batch = slice(64 * (step % 4), 64 * (step % 4 + 1))
        loss = model(pixel_values=images[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _upload(api: HfApi, repo_id: str, folder, branch: str, **kwargs) -> str:
    api.create_branch(repo_id, branch=branch, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=branch, **kwargs).oid


@pytest.fixture(scope="module")
def probe():
    return load_fashion_mnist("train", limit=300)


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory, probe):
    """One short timm:test_resnet run kept as local snapshots and published twice: by hf-ckptkd (each snapshot
    folder, snapshot.json included, on a branch `step<N>`), and as a third-party repo would (only config and
    weights, beside files loading does not need, on branches `checkpoint-<N>`, the last also tagged `final`)."""
    root = tmp_path_factory.mktemp("revisions")
    data = load_fashion_mnist("train", limit=256)
    transform = build_image_transform(ImageTransformConfig(), train=False)
    images, labels = torch.stack([transform(image) for image in data["image"]]), torch.tensor(data["label"])
    torch.manual_seed(0)
    model = build_model("timm:test_resnet", 10, label_names=LABELS)
    for previous, step in zip((0, *STEPS), STEPS):
        _train(model, images, labels, step - previous)
        write_snapshot(model, root / "snapshots", f"epoch-{STEPS.index(step):04d}", epoch=STEPS.index(step),
                       global_step=step, eval_metrics={"eval_accuracy": 0.1 + step / 100}, final=step == STEPS[-1])
    index = SnapshotIndex.load(root / "snapshots")
    api = HfApi(token=hub.write_token)
    ours, third = hub.new_repo_id("ours"), hub.new_repo_id("third-party")
    api.create_repo(ours)
    api.create_repo(third)
    for snapshot in index:
        _upload(api, ours, snapshot.path, f"step{snapshot.global_step}")
        plain = root / "plain" / snapshot.name
        plain.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            (plain / name).write_bytes((snapshot.path / name).read_bytes())
        (plain / "optimizer.pt").write_bytes(os.urandom(4096))  # a checkpoint's extra state: never downloaded
        (plain / "README.md").write_text("a checkpoint\n")
        _upload(api, third, plain, f"checkpoint-{snapshot.global_step}")
    api.create_tag(third, tag="final", revision=f"checkpoint-{STEPS[-1]}")
    api.upload_file(path_or_fileobj=b"# no weights on main\n", path_in_repo="README.md", repo_id=third)
    local = select_teachers(index, probe, max_probe_samples=PROBE, objective="outputs", progress=False)
    return {"index": index, "ours": ours, "third": third, "local": local, "root": root}


def _resolves(server, since: int) -> list[str]:
    return [path for method, path, _ in server.requests[since:] if method == "GET" and "/resolve/" in path]


def test_revisions_score_exactly_like_the_local_snapshots_they_were_pushed_from(hub, published, probe):
    repo, local = published["ours"], published["local"]
    report = select_teachers(repo, probe, revisions="step*", max_probe_samples=PROBE, objective="outputs",
                             progress=False)
    assert [s.name for s in report.scores] == [f"{repo}@step{n}" for n in STEPS]
    for hub_score, local_score in zip(report.scores, local.scores):
        for key in ("i_xf", "i_yf", "i_xp", "i_yp", "j", "accuracy", "epoch", "step", "init", "chosen", "rank"):
            assert getattr(hub_score, key) == pytest.approx(getattr(local_score, key), abs=1e-6), key
        # Pushed by hf-ckptkd: checked against snapshot.json, its metrics read from there, pinned to a commit.
        assert hub_score.metadata["verified"] is True
        assert hub_score.metadata["eval_accuracy"] == local_score.metadata["eval_accuracy"]
        assert hub_score.metadata["commit"] == hub.head(repo, hub_score.metadata["revision"])
        assert hub_score.metadata["reference"] == hub_score.name
    assert report.selected == [f"{repo}@step{local.score(local.selected[0]).step}"]
    assert report.notes == [] and report.snapshot_dir is None
    assert report.extra["source"]["hub"]["repo_id"] == repo
    assert report.extra["source"]["hub"]["pinned"] == {f"step{n}": hub.head(repo, f"step{n}") for n in STEPS}

    # The chosen name is a teacher reference: it loads the weights of the snapshot it was pushed from.
    chosen = published["index"].snapshots[STEPS.index(report.score(report.selected[0]).step)]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        pulled = load_teachers(report.selected)(pixel_values=x)
        assert torch.allclose(pulled, chosen.load_model().eval()(pixel_values=x).logits, atol=1e-6)


def test_third_party_revisions_are_ordered_pinned_downloaded_lean_and_noted(hub, published, probe, fresh_hf_cache,
                                                                           caplog):
    repo, local = published["third"], published["local"]
    caplog.set_level(logging.WARNING)
    before = len(hub.server.requests)
    report = select_teachers(repo, probe, revisions="all", max_probe_samples=PROBE, objective="outputs",
                             progress=False)
    # By the number in the name (checkpoint-12 after checkpoint-8), the tag at checkpoint-12's commit folded into it.
    names = [f"{repo}@checkpoint-{n}" for n in STEPS]
    assert [s.name for s in report.scores] == names
    assert report.score(names[-1]).metadata["aliases"] == ["final"]
    assert [s.j for s in report.scores] == pytest.approx([s.j for s in local.scores], abs=1e-6)
    assert report.scores[0].init and not report.scores[0].chosen  # checkpoint-0 is the initialisation

    # No snapshot.json: loaded without the SHA-256 check, which the report says, with each commit id.
    commits = {s.name: s.metadata["commit"] for s in report.scores}
    assert commits == {f"{repo}@checkpoint-{n}": hub.head(repo, f"checkpoint-{n}") for n in STEPS}
    assert all(s.metadata["verified"] is False for s in report.scores)
    unverified = [n for n in report.notes if "without the SHA-256 check" in n]
    assert len(unverified) == len(STEPS) and all(commits[n.split(":")[0]] in n for n in unverified)
    assert "> **Note:**" in report.to_markdown() and commits[names[1]] in report.to_markdown()
    # main holds no model: skipped with a warning that names it, and a note.
    skipped = [n for n in report.notes if "was skipped" in n]
    assert len(skipped) == 1 and skipped[0].startswith(f"{repo}@main was skipped") and "no config.json" in skipped[0]
    assert any(f"{repo}@main" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

    # Only what loading needs was downloaded (a file identical to one already cached is not fetched again).
    downloaded = {path.rsplit("/", 1)[-1] for path in _resolves(hub.server, before)}
    assert downloaded == {"config.json", "model.safetensors"}
    cached = fresh_hf_cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    for commit in commits.values():
        assert sorted(os.listdir(cached / commit)) == ["config.json", "model.safetensors"]
    # A second call with a warm cache downloads nothing (it only lists the refs again).
    before = len(hub.server.requests)
    again = select_teachers(repo, probe, revisions="checkpoint-*", max_probe_samples=PROBE, objective="outputs",
                            progress=False)
    assert _resolves(hub.server, before) == [] and again.selected == report.selected


def test_cli_selects_among_revisions_and_distill_takes_the_choice(hub, published, probe, tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    probe.to_parquet(str(data_dir / "train.parquet"))
    out = tmp_path / "selection"
    code = main(["select", published["ours"], "--revisions", "step4", "step12", "--dataset", str(data_dir),
                 "--max_probe_samples", str(PROBE), "--output", str(out), "--disable_tqdm", "--objective", "final"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    saved = json.loads((out / "selection.json").read_text())
    chosen = f"{published['ours']}@step12"
    assert saved["selected"] == [chosen] and [s["name"] for s in saved["scores"]] == [f"{published['ours']}@step4",
                                                                                       chosen]
    assert f"distil from it: hf-ckptkd distill --model SPEC --teachers {chosen}" in captured.out

    code = main(["distill", "--model", "timm:test_resnet", "--teachers", chosen, "--max_train_samples", "64",
                 "--max_eval_samples", "64", "--output_dir", str(tmp_path / "student"), "--max_steps", "1",
                 "--per_device_train_batch_size", "32", "--report_to", "none"])
    assert code == 0, capsys.readouterr().err
    assert "test accuracy:" in capsys.readouterr().out

    # A pattern nothing matches: exit 2, one sentence naming the repo and listing its revisions.
    assert main(["select", published["ours"], "--revisions", "epoch*", "--dataset", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert f"no revision of {published['ours']} matches 'epoch*'" in err and "main, step0, step12" in err
    assert "Traceback" not in err


def test_requests_that_name_no_revision_are_clear_errors(hub, published, probe, tmp_path):
    repo = published["ours"]
    with pytest.raises(HubInputError, match=r"no revision of .* matches 'epoch\*'; it has main, step0, step12, step4, "
                                            r"step8\. Pass a glob"):
        select_teachers(repo, probe, revisions="epoch*")
    with pytest.raises(HubInputError, match=rf"{repo} has no revision 'step5'; it has main"):
        select_teachers(repo, probe, revisions=["step4", "step5"])
    with pytest.raises(HubInputError, match="give a glob such as 'step\\*', a non-empty list"):
        select_teachers(repo, probe, revisions=[])
    with pytest.raises(HubInputError, match=r"without '@step4'.*revisions=\['step4'\]"):
        select_teachers(f"{repo}@step4", probe, revisions="step*")
    with pytest.raises(SelectionError, match="revisions=.* the source must be 'owner/name'"):
        select_teachers(published["index"], probe, revisions="step*")
    with pytest.raises(HubInputError, match=f"there is no model repo {hub.user}/missing-repo on"):
        select_teachers(f"{hub.user}/missing-repo", probe, revisions="all")


def test_an_unloadable_revision_is_skipped_and_none_loading_stops(hub, published, probe, tmp_path, caplog):
    api = HfApi(token=hub.write_token)
    repo = hub.new_repo_id("broken")
    api.create_repo(repo)
    good = published["index"].snapshots[2]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((good.path / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes(b"these are not safetensors")
    _upload(api, repo, broken, "step1")
    _upload(api, repo, good.path, "step2")
    caplog.set_level(logging.WARNING)
    report = select_teachers(repo, probe, revisions="step*", max_probe_samples=PROBE, progress=False)
    assert [s.name for s in report.scores] == [f"{repo}@step2"] and report.selected == [f"{repo}@step2"]
    assert any(f"skipping candidate {repo}@step1" in r.getMessage() for r in caplog.records)
    assert len(report.notes) == 1 and report.notes[0].startswith(f"{repo}@step1 was skipped: it could not be loaded")
    with pytest.raises(SelectionError, match=rf"none of the 1 candidates could be loaded \({repo}@step1: its model "):
        select_teachers(repo, probe, revisions=["step1"], max_probe_samples=PROBE, progress=False)


def test_revisions_of_different_architectures_are_scored_together(hub, probe, tmp_path):
    api = HfApi(token=hub.write_token)
    repo = hub.new_repo_id("mixed")
    api.create_repo(repo)
    torch.manual_seed(0)
    models = {"step1": build_model("timm:test_resnet", 10, label_names=LABELS),
              "step2": build_model("transformers:ViTConfig", 10, label_names=LABELS, model_kwargs=TINY_VIT)}
    for branch, model in models.items():
        save_model(model, tmp_path / branch)
        _upload(api, repo, tmp_path / branch, branch)
    report = select_teachers(repo, probe, revisions="step*", max_probe_samples=PROBE, progress=False, k=2)
    assert [s.name for s in report.scores] == [f"{repo}@step1", f"{repo}@step2"]
    assert sorted(report.selected) == [f"{repo}@step1", f"{repo}@step2"]
    assert all(math.isfinite(v) for s in report.scores for v in (s.i_xf, s.i_yf, s.i_xp, s.i_yp))


def test_private_and_gated_repos_need_a_token(hub, published, probe, fresh_hf_cache):
    api = HfApi(token=hub.write_token)
    snapshot = published["index"].snapshots[1]
    private, gated = hub.new_repo_id("private"), hub.new_repo_id("gated")
    api.create_repo(private, private=True)
    api.create_repo(gated)
    for repo in (private, gated):
        _upload(api, repo, snapshot.path, "step4")
    api.update_repo_settings(gated, gated="auto")

    with pytest.raises(HubInputError, match=rf"there is no model repo {private} on .*pass a token"):
        select_teachers(private, probe, revisions="step*", token=False)
    # A gated repo lists its revisions to anyone but serves its files only to users with access.
    assert [r.revision for r in hub_revisions(gated, "step*", token=False)] == ["step4"]
    with pytest.raises(HubInputError, match=rf"{gated} is a gated repo on .* no token was sent.*accept its conditions"):
        select_teachers(gated, probe, revisions="step*", token=False)
    with pytest.raises(HubInputError, match="has not been granted access"):
        select_teachers(gated, probe, revisions="step*", token=hub.other_token)
    for repo in (private, gated):
        report = select_teachers(repo, probe, revisions="step*", token=hub.read_token, max_probe_samples=PROBE,
                                 progress=False)
        assert report.selected == [f"{repo}@step4"]


def test_text_classifier_revisions(hub, tmp_path):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from text_data import write_tiny_text_set

    write_tiny_text_set(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    api = HfApi(token=hub.write_token)
    repo = hub.new_repo_id("text")
    api.create_repo(repo)
    bert = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
            "vocab_size": len(tokenizer)}
    for step in (10, 20):
        torch.manual_seed(step)
        model = build_model("transformers:BertConfig", 2, model_kwargs=bert)
        snapshot = write_snapshot(model, tmp_path / "snapshots", f"step-{step:06d}", epoch=step / 10, global_step=step,
                                  processing_class=tokenizer)
        _upload(api, repo, snapshot.path, f"step{step}")
    raw = load_dataset("csv", data_files=str(tmp_path / "data" / "train.csv"), split="train")
    probe = tokenize_text_dataset(raw, tokenizer, "sentence")
    report = select_teachers(repo, probe, revisions="all", max_probe_samples=100, progress=False)
    assert [s.name for s in report.scores] == [f"{repo}@step10", f"{repo}@step20"]  # main (no model) skipped
    assert report.extra["probe"]["transform"].startswith("tokenized text")
    assert all(s.metadata["verified"] for s in report.scores)
    # The command tokenises the probe with the tokenizer saved with the first revision.
    out = tmp_path / "selection"
    assert main(["select", repo, "--revisions", "step*", "--dataset", str(tmp_path / "data"), "--text_column",
                 "sentence", "--max_probe_samples", "100", "--output", str(out), "--disable_tqdm"]) == 0
    assert json.loads((out / "selection.json").read_text())["selected"][0] in (f"{repo}@step10", f"{repo}@step20")


@pytest.mark.slow
def test_two_processes_share_the_revisions_and_write_the_single_process_report(hub, published, probe, tmp_path,
                                                                               accelerate_launch, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    probe.to_parquet(str(data_dir / "train.parquet"))
    flags = ["select", published["third"], "--revisions", "checkpoint-*", "--dataset", str(data_dir),
             "--max_probe_samples", str(PROBE), "--objective", "outputs", "--disable_tqdm"]
    assert main([*flags, "--output", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    launch = subprocess.run([*accelerate_launch, "-m", "hf_ckptkd.cli", *flags, "--output", str(tmp_path / "two")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launch.returncode == 0, launch.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "selection.json").read_text())
    two = json.loads((tmp_path / "two" / "selection.json").read_text())
    assert two["extra"]["processes"] == {"count": 2, "candidates_per_process": [2, 2]}
    assert_same_report(one, two)
    assert len(two["notes"]) == len(STEPS) and two["notes"] == one["notes"]  # gathered from both processes
