"""Publishing teachers to the Hub and loading them back: hf_ckptkd.hub, `hf-ckptkd push`, hub_scripts/.

Everything talks HTTP to the local Hub server of conftest.py through the real huggingface_hub,
timm and transformers clients; the server object is only read to check what a push changed.
"""

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from transformers import PreTrainedModel

from hf_ckptkd.data import FASHION_MNIST_LABELS as LABELS
from hf_ckptkd.files import sha256_of
from hf_ckptkd.hub import (
    CITATION,
    HubError,
    HubInputError,
    HubReferenceError,
    HubUnavailableError,
    load_hub_teacher,
    push_teachers_to_hub,
)
from hf_ckptkd.models import TimmForImageClassification, build_model
from hf_ckptkd.selection.report import SelectionReport, SnapshotScore
from hf_ckptkd.snapshots import Snapshot, SnapshotError, write_snapshot
from hf_ckptkd.training.teachers import TeacherReferenceError, load_teachers

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 7}
SNAPSHOT_FILES = {"config.json", "model.safetensors", "snapshot.json", "README.md", "information_plane.png"}


def _logits(model) -> torch.Tensor:
    """Logits on a fixed input (the same one tests/scripts/load_teacher_plain.py uses)."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        return model.eval()(pixel_values=x).logits


def _train_a_little(model, seed: int, steps: int = 2) -> None:
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        loss = model(pixel_values=torch.randn(8, 1, 28, 28), labels=torch.randint(0, 10, (8,))).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def _score(name, epoch, j, chosen=False, rank=None, path=None) -> SnapshotScore:
    return SnapshotScore(name=name, epoch=epoch, step=epoch * 10, accuracy=0.5 + epoch / 100, i_xf=0.1 * epoch / 4,
                         i_yf=0.05 * epoch / 4, i_xp=0.3 + epoch / 100, i_yp=0.2 + epoch / 50, j=j, chosen=chosen,
                         rank=rank, path=path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A timm teacher run (test_resnet, snapshots at epochs 4, 8, 12), a tiny-ViT run (epoch 10), and
    a saved selection of three: epoch-0008 (rank 1), epoch-0012 and the ViT's epoch-0010."""
    root = tmp_path_factory.mktemp("runs")
    timm_dir, vit_dir = root / "fmnist-resnet" / "snapshots", root / "fmnist-vit" / "snapshots"
    torch.manual_seed(0)
    resnet = build_model("timm:test_resnet", 10, label_names=LABELS)
    for epoch in (4, 8, 12):
        _train_a_little(resnet, seed=epoch)
        write_snapshot(resnet, timm_dir, f"epoch-{epoch:04d}", epoch=epoch, global_step=epoch * 10,
                       learning_rate=0.05, train_loss=2.0 - epoch / 10,
                       eval_metrics={"eval_accuracy": 0.5 + epoch / 100, "eval_loss": 1.5})
    torch.manual_seed(1)
    vit = build_model("transformers:ViTConfig", 10, label_names=LABELS, model_kwargs=TINY_VIT)
    _train_a_little(vit, seed=10)
    write_snapshot(vit, vit_dir, "epoch-0010", epoch=10, global_step=100, eval_metrics={"eval_accuracy": 0.55})
    scores = [_score("epoch-0004", 4, 0.4), _score("epoch-0008", 8, 1.6, True, 1),
              _score("epoch-0012", 12, 1.2, True, 2), _score("epoch-0010", 10, 1.1, True, 3, str(vit_dir / "epoch-0010"))]
    report = SelectionReport(
        selected=["epoch-0008", "epoch-0012", "epoch-0010"], scores=scores, objective="outputs", k=3, temperature=4.0,
        beta=1.0, kappa=0.25, estimator="renyi2", probe_size=64, seed=0, search="greedy",
        ensemble={"members": ["epoch-0008", "epoch-0012", "epoch-0010"], "i_x": 0.5, "i_y": 0.6, "j": 1.7},
        snapshot_dir=str(timm_dir), extra={"run": "fmnist-resnet", "dataset": "fashion_mnist"})
    selection_dir = report.save(root / "fmnist-resnet" / "selection")
    snapshots = {s.name: s for s in [*map(Snapshot.read, sorted(timm_dir.glob("epoch-*"))), Snapshot.read(vit_dir / "epoch-0010")]}
    logits = {name: _logits(s.load_model()) for name, s in snapshots.items()}
    return SimpleNamespace(root=root, timm_dir=timm_dir, vit_dir=vit_dir, selection_dir=selection_dir, report=report,
                           snapshots=snapshots, logits=logits)


def _file_hashes(folder: Path) -> dict:
    return {p: sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# --- pushing ---------------------------------------------------------------------------------

def test_ensemble_as_revisions_each_tag_loads_exactly_its_member(hub, run, fresh_hf_cache):
    repo = hub.new_repo_id("fmnist-teacher")
    pushed = push_teachers_to_hub(run.selection_dir, repo, as_revisions=True, token=hub.write_token)
    assert [p.name for p in pushed] == ["epoch-0008", "epoch-0012", "epoch-0010"]
    assert [p.reference for p in pushed] == [f"{repo}@{n}" for n in ("epoch-0008", "epoch-0012", "epoch-0010")]
    assert all(p.repo_id == repo and p.created and p.url == f"{hub.url}/{repo}" for p in pushed)
    assert len({p.commit for p in pushed}) == 3  # each member its own commit
    assert hub.server.get_repo(repo).tags == {p.revision: p.commit for p in pushed}
    assert hub.head(repo) == pushed[0].commit  # main holds the rank-1 teacher
    commits = len(hub.server.history(repo))

    again = push_teachers_to_hub(run.selection_dir, repo, as_revisions=True, token=hub.write_token)
    assert again == [replace(p, created=False) for p in pushed]
    assert len(hub.server.history(repo)) == commits and hub.head(repo) == pushed[0].commit
    # The same selection given as a report object (its plot rendered again) is the same content too.
    assert push_teachers_to_hub(run.report, repo, as_revisions=True, token=hub.write_token) == again

    for p in pushed:
        teacher = load_hub_teacher(p.reference)
        expected_type = PreTrainedModel if p.name == "epoch-0010" else TimmForImageClassification
        assert isinstance(teacher, expected_type)
        assert torch.equal(_logits(teacher), run.logits[p.name]), p.reference
    assert torch.equal(_logits(load_hub_teacher(f"{repo}@{pushed[1].commit}")), run.logits["epoch-0012"])
    assert torch.equal(_logits(load_hub_teacher(repo)), run.logits["epoch-0008"])


def test_one_repo_per_member_cards_and_the_token_is_nowhere(hub, run, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    repo = hub.new_repo_id("fmnist")
    pushed = push_teachers_to_hub(run.selection_dir, repo, token=hub.write_token)
    names = ["epoch-0008", "epoch-0012", "epoch-0010"]
    assert [(p.repo_id, p.revision) for p in pushed] == [(f"{repo}-{n}", n) for n in names]
    api = HfApi()
    for p in pushed:
        assert set(api.list_repo_files(p.repo_id)) == SNAPSHOT_FILES | {".gitattributes"}
        assert hub.head(p.repo_id) == hub.head(p.repo_id, p.revision) == p.commit
    found = api.list_models(author=hub.user, search=repo.split("/")[1], filter="checkpoint-kd")
    assert sorted(m.id for m in found) == sorted(p.repo_id for p in pushed)

    card = ModelCard.load(hf_hub_download(pushed[0].repo_id, "README.md", revision=pushed[0].commit))
    meta = card.data.to_dict()
    assert meta["library_name"] == "timm" and {"knowledge-distillation", "checkpoint-kd", "teacher"} <= set(meta["tags"])
    assert meta["datasets"] == ["zalando-datasets/fashion_mnist"]
    # model-index holds the task metrics; the selection's scores stay in the checkpoint_kd block.
    metrics = {r.metric_name: r.metric_value for r in card.data.eval_results}
    score = run.report.score("epoch-0008")
    assert metrics == {"accuracy": 0.58, "loss": 1.5}
    selection = meta["checkpoint_kd"]["selection"]
    assert selection["i_yp"] == round(score.i_yp, 6) and selection["j"] == 1.6 and selection["rank"] == 1
    assert meta["checkpoint_kd"]["epoch"] == 8
    refs = " ".join(p.reference for p in pushed)
    for text in (run.report.explain("epoch-0008"), "run `fmnist-resnet`", "epoch 8 (global step 80)",
                 f'timm.create_model("hf-hub:{pushed[0].reference}", pretrained=True)',
                 f"hf-ckptkd distill --model timm:cifar_resnet8 --image_size 28 --in_chans 1 --teachers {refs} \\\n"
                 "    --dataset fashion_mnist",
                 "](information_plane.png)", CITATION, "Wang, Chaofei and Yang, Qisen and Huang, Rui"):
        assert text in card.text, text
    vit_card = ModelCard.load(hf_hub_download(pushed[2].repo_id, "README.md"))
    assert vit_card.data.library_name == "transformers"
    assert (f'AutoModelForImageClassification.from_pretrained("{pushed[2].repo_id}", revision="epoch-0010")'
            in vit_card.text)

    # The token: not in logs, output, cards or any file the project or the client wrote.
    captured = capsys.readouterr()
    token = hub.write_token
    assert token not in caplog.text + captured.out + captured.err
    for p in pushed:
        for name in ("README.md", "snapshot.json", "config.json"):
            assert token not in Path(hf_hub_download(p.repo_id, name)).read_text()
    for folder in (run.root, Path(os.environ["HF_HOME"])):
        for path in folder.rglob("*"):
            assert not path.is_file() or token.encode() not in path.read_bytes(), path


def test_repush_changed_snapshot_makes_a_new_commit_and_old_revisions_still_load(hub, run, tmp_path, caplog,
                                                                                fresh_hf_cache):
    shutil.copytree(run.timm_dir / "epoch-0012", tmp_path / "snapshots" / "epoch-0012")
    folder = tmp_path / "snapshots" / "epoch-0012"
    repo = hub.new_repo_id("single")
    [first] = push_teachers_to_hub(folder, repo, token=hub.write_token)
    assert (first.repo_id, first.revision, first.created) == (repo, "epoch-0012", True)
    assert push_teachers_to_hub(folder, repo, token=hub.write_token) == [replace(first, created=False)]
    assert len(hub.server.history(repo)) == 2  # the initial commit and this one

    meta = json.loads((folder / "snapshot.json").read_text())
    meta["train_loss"] = 0.123  # changed training metadata: a new commit, the tag follows it
    (folder / "snapshot.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="hf_ckptkd.hub"):
        [second] = push_teachers_to_hub(folder, repo, token=hub.write_token)
    assert second.created and second.commit != first.commit
    assert hub.head(repo) == hub.head(repo, "epoch-0012") == second.commit
    assert f"moving tag epoch-0012 of {repo} from commit {first.commit}" in caplog.text

    [third] = push_teachers_to_hub(run.timm_dir / "epoch-0004", repo, token=hub.write_token)  # other weights
    assert third.created and hub.head(repo) == third.commit and hub.head(repo, "epoch-0012") == second.commit
    assert torch.equal(_logits(load_hub_teacher(repo)), run.logits["epoch-0004"])
    for old in (f"{repo}@epoch-0012", f"{repo}@{first.commit}", f"{repo}@{second.commit}"):
        assert torch.equal(_logits(load_hub_teacher(old)), run.logits["epoch-0012"]), old


def test_as_revisions_changed_member_moves_its_tag_and_main_stays_on_the_first(hub, run, tmp_path, fresh_hf_cache):
    for name in ("epoch-0004", "epoch-0008"):
        shutil.copytree(run.timm_dir / name, tmp_path / name)
    folders, repo = [tmp_path / "epoch-0008", tmp_path / "epoch-0004"], hub.new_repo_id("revisions")
    first = push_teachers_to_hub(folders, repo, as_revisions=True, revision_prefix="run1-", token=hub.write_token)
    assert [p.revision for p in first] == ["run1-epoch-0008", "run1-epoch-0004"] and hub.head(repo) == first[0].commit
    meta = json.loads((folders[1] / "snapshot.json").read_text())
    meta["eval_metrics"]["eval_accuracy"] = 0.99
    (folders[1] / "snapshot.json").write_text(json.dumps(meta))
    second = push_teachers_to_hub(folders, repo, as_revisions=True, revision_prefix="run1-", token=hub.write_token)
    assert second[0] == replace(first[0], created=False) and second[1].created
    assert hub.server.get_repo(repo).tags == {"run1-epoch-0008": first[0].commit, "run1-epoch-0004": second[1].commit}
    assert torch.equal(_logits(load_hub_teacher(repo)), run.logits["epoch-0008"])  # main: the first member again
    assert hf_hub_download(repo, "snapshot.json") != hf_hub_download(repo, "snapshot.json", revision="run1-epoch-0004")
    assert json.loads(Path(hf_hub_download(repo, "snapshot.json", revision="run1-epoch-0004")).read_text()) == meta
    third = push_teachers_to_hub(folders, repo, as_revisions=True, revision_prefix="run1-", token=hub.write_token)
    assert third == [replace(p, created=False) for p in second] and len(hub.server.history(repo)) == 5


@pytest.mark.parametrize("who", ["no token", "wrong token", "read-only token", "another user's token"])
def test_push_without_write_access_is_refused_and_changes_nothing(hub, run, who):
    token = {"no token": None, "wrong token": "hf_not_a_token", "read-only token": hub.read_token,
             "another user's token": hub.other_token}[who]
    fix = {"no token": "HF_TOKEN", "wrong token": "valid write token", "read-only token": "write token",
           "another user's token": "token of alice"}[who]
    existing = hub.new_repo_id("existing")
    HfApi(token=hub.write_token).create_repo(existing)
    before = _file_hashes(run.root)
    for repo, as_revisions in ((hub.new_repo_id("refused"), False), (existing, True)):
        head = hub.head(repo)
        with pytest.raises(HubInputError) as excinfo:
            push_teachers_to_hub(run.selection_dir, repo, as_revisions=as_revisions, token=token)
        message = str(excinfo.value)
        assert repo in message and fix in message, message
        assert hub.head(repo) == head
        for name in ("epoch-0008", "epoch-0012", "epoch-0010"):
            assert hub.server.get_repo(f"{repo}-{name}") is None
    assert hub.server.get_repo(existing).tags == {} and len(hub.server.history(existing)) == 1
    assert _file_hashes(run.root) == before
    if token:
        assert token not in message


@pytest.mark.parametrize("repo_id", ["no-owner", "alice/bad name", "alice/a--b", "alice/x/y", "alice/x@main", "",
                                     "alice/" + "x" * 90])
def test_malformed_repo_id_is_refused_before_any_request(hub, run, repo_id):
    requests = len(hub.server.requests)
    with pytest.raises(HubInputError, match="not a valid Hub repo id"):
        push_teachers_to_hub(run.selection_dir, repo_id, token=hub.write_token)  # an ensemble: <repo_id>-<name>
    assert len(hub.server.requests) == requests


def test_tampered_snapshot_is_refused_before_any_upload(hub, run, tmp_path):
    for name in ("epoch-0008", "epoch-0012"):
        shutil.copytree(run.timm_dir / name, tmp_path / name)
    weights = tmp_path / "epoch-0012" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    repo, requests = hub.new_repo_id("tampered"), len(hub.server.requests)
    with pytest.raises(SnapshotError, match="snapshot epoch-0012: .* does not match the SHA-256"):
        push_teachers_to_hub([tmp_path / "epoch-0008", tmp_path / "epoch-0012"], repo, as_revisions=True,
                             token=hub.write_token)
    assert len(hub.server.requests) == requests and hub.server.get_repo(repo) is None


def test_only_the_main_process_pushes(hub, run, monkeypatch):
    from accelerate.state import PartialState

    monkeypatch.setattr(PartialState, "_shared_state", {})  # no accelerate state: RANK decides
    monkeypatch.setenv("RANK", "1")
    requests = len(hub.server.requests)
    assert push_teachers_to_hub(run.selection_dir, hub.new_repo_id("rank1"), token=hub.write_token) == []
    assert len(hub.server.requests) == requests


def test_cli_push(hub, run, capsys):
    from hf_ckptkd.cli.main import main

    repo = hub.new_repo_id("cli")
    argv = ["push", str(run.selection_dir), "--repo_id", repo, "--as_revisions", "--token", hub.write_token]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("new commit") == 3 and f"--teachers {repo}@epoch-0008 {repo}@epoch-0012 {repo}@epoch-0010" in out
    assert main(argv) == 0 and capsys.readouterr().out.count("unchanged") == 3
    single = hub.new_repo_id("cli-one")  # a snapshot dir, narrowed to one snapshot: pushed to the repo itself
    assert main(["push", str(run.timm_dir), "--repo_id", single, "--names", "epoch-0004", "--token", hub.write_token]) == 0
    assert f"epoch-0004: {hub.url}/{single} tag epoch-0004" in capsys.readouterr().out
    assert main(["push", str(run.selection_dir), "--repo_id", "bad id", "--token", hub.write_token]) == 2
    assert "not a valid Hub repo id" in capsys.readouterr().err
    assert main(["push", str(run.selection_dir), "--repo_id", hub.new_repo_id(), "--token", "hf_wrong_secret"]) == 2
    err = capsys.readouterr().err
    assert "refused the token" in err and "hf_wrong_secret" not in err and err.count("\n") == 1


# --- loading: faults -------------------------------------------------------------------------

def test_load_errors_name_the_reference(hub, run, fresh_hf_cache):
    api = HfApi(token=hub.write_token)
    missing = hub.new_repo_id("missing")
    with pytest.raises(HubReferenceError, match=f"teacher '{missing}': there is no model repo {missing}"):
        load_hub_teacher(missing)
    with pytest.raises(TeacherReferenceError, match=re.escape(missing)):  # the same through load_teachers
        load_teachers([missing])

    empty = hub.new_repo_id("no-model")
    api.create_repo(empty)
    api.upload_file(path_or_fileobj=b"# not a model\n", path_in_repo="README.md", repo_id=empty)
    with pytest.raises(HubReferenceError, match=f"teacher '{empty}': {empty} holds no model .*no config.json"):
        load_hub_teacher(empty)
    with pytest.raises(HubReferenceError, match="has no revision 'no-such-tag' .*; it has main"):
        load_hub_teacher(f"{empty}@no-such-tag")
    api.upload_file(path_or_fileobj=str(run.timm_dir / "epoch-0004" / "config.json"), path_in_repo="config.json",
                    repo_id=empty)
    with pytest.raises(HubReferenceError, match="holds no safetensors weights"):
        load_hub_teacher(empty)
    with pytest.raises(TeacherReferenceError, match="not a Hub reference"):
        load_hub_teacher("alice/bad name")

    # Weights that no longer match the repo's snapshot.json are refused.
    altered = hub.new_repo_id("altered")
    api.create_repo(altered)
    api.upload_folder(repo_id=altered, folder_path=str(run.timm_dir / "epoch-0004"))
    api.upload_file(path_or_fileobj=str(run.timm_dir / "epoch-0008" / "model.safetensors"),
                    path_in_repo="model.safetensors", repo_id=altered)
    with pytest.raises(HubReferenceError, match="model.safetensors does not match the SHA-256"):
        load_hub_teacher(altered)


def test_hub_down_clear_errors_and_a_warm_cache_still_loads(hub, run, fresh_hf_cache, monkeypatch):
    repo = hub.new_repo_id("down")
    [pushed] = push_teachers_to_hub(run.timm_dir / "epoch-0012", repo, token=hub.write_token)
    warm = _logits(load_hub_teacher(pushed.reference))  # fills the cache
    _logits(load_hub_teacher(repo))
    hub.server.stop()
    try:
        start = time.monotonic()
        with pytest.raises(HubUnavailableError, match=f"could not reach the Hub at {hub.url} to push {repo}"):
            push_teachers_to_hub(run.timm_dir / "epoch-0004", repo, token=hub.write_token)
        assert time.monotonic() - start < 5
        for reference in (pushed.reference, repo, f"{repo}@{pushed.commit}"):  # HF_HUB_OFFLINE is unset
            assert torch.equal(_logits(load_hub_teacher(reference)), warm), reference
        sleeps = []  # the client retries an uncached download (1+2+4+8+8 s): record the sleeps instead
        monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", sleeps.append)
        with pytest.raises(HubUnavailableError, match=f"teacher '{repo}@epoch-0004': the Hub at {hub.url} could "
                                                      "not be reached"):
            load_hub_teacher(f"{repo}@epoch-0004")
        assert sleeps
    finally:
        hub.server.start()
    assert isinstance(HubUnavailableError("x"), HubError) and not isinstance(HubUnavailableError("x"), ValueError)


# --- end to end ------------------------------------------------------------------------------

def _start(path: str, *args, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / path), *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{proc.args[1]} failed:\n{out}\n{err}"
    return out


def _script(path: str, *args, env: dict) -> str:
    return _finish(_start(path, *args, env=env))


@pytest.mark.slow
def test_end_to_end_push_list_pull_distil_and_load_without_hf_ckptkd(hub, run, tmp_path, fresh_hf_cache):
    from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer
    from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, load_fashion_mnist, \
        with_image_transform

    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_TOKEN")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN=hub.write_token)
    repo = hub.new_repo_id("e2e")

    # Publish the selection (two timm snapshots, one transformers) with the script, one tag per member.
    out = _script("hub_scripts/push_selection.py", run.selection_dir, "--repo_id", repo, "--as_revisions", "--json",
                  env=env)
    pushed = [json.loads(line) for line in out.splitlines()]
    refs = [p["reference"] for p in pushed]
    assert refs == [f"{repo}@epoch-0008", f"{repo}@epoch-0012", f"{repo}@epoch-0010"]

    # Three independent processes at once: list the run's teacher revisions with their card metrics;
    # load each teacher with only timm / transformers; pull and evaluate one teacher with hf-ckptkd.
    listing = _start("hub_scripts/list_teachers.py", "--author", hub.user, "--search", repo.split("/")[1], "--json",
                     env=env)
    plain = _start("tests/scripts/load_teacher_plain.py", *refs, env=env)
    online = json.loads(_script("hub_scripts/pull_teacher.py", refs[2], "--max_samples", 32, "--json", env=env))
    assert online["examples"] == 32 and 0 <= online["accuracy"] <= 1

    rows = {row["reference"]: row for row in map(json.loads, _finish(listing).splitlines())}
    assert set(rows) == {*refs, f"{repo}@main"}
    assert rows[refs[0]]["eval_metrics"]["eval_accuracy"] == 0.58 and rows[refs[0]]["scores"]["rank"] == 1
    assert rows[f"{repo}@main"]["snapshot"] == "epoch-0008" and rows[refs[2]]["family"] == "transformers"

    plain = json.loads(_finish(plain))  # the same logits as the local snapshots
    for p in pushed:
        assert torch.allclose(torch.tensor(plain[p["reference"]]), run.logits[p["name"]], atol=1e-5), p["reference"]

    # The pulled teacher again, offline, from the same (now warm) cache.
    offline = json.loads(_script("hub_scripts/pull_teacher.py", refs[2], "--max_samples", 32, "--json",
                                 env={**env, "HF_HUB_OFFLINE": "1"}))
    assert offline == online

    # Distil a student from the Hub references, starting from an empty cache.
    transform = build_image_transform(ImageTransformConfig(crop_padding=0, hflip=False), train=True)
    train = with_image_transform(load_fashion_mnist("train", 64), transform)
    torch.manual_seed(0)
    student = build_model("timm:test_resnet", 10, label_names=LABELS)
    config = CheckpointKDConfig(output_dir=str(tmp_path / "student"), teachers=refs, max_steps=2,
                                per_device_train_batch_size=16, logging_steps=1, save_strategy="no", report_to=[],
                                remove_unused_columns=False, use_cpu=True, teacher_fusion="loop")
    trainer = CheckpointKDTrainer(model=student, args=config, train_dataset=train, data_collator=image_collator,
                                  label_names=LABELS)
    assert len(trainer.teachers.members) == 3
    for member, p in zip(trainer.teachers.members, pushed):
        assert torch.equal(_logits(member), run.logits[p["name"]])
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss_kd" in h]
    assert len(logged) == 2 and all(math.isfinite(h["loss_kd"]) for h in logged)
    assert any(fresh_hf_cache.rglob("model.safetensors"))  # the teachers came from the Hub, through the cache
