"""The local Hub server (tests/hubserver.py) against the real huggingface_hub, transformers and timm.

Every test talks HTTP through the real clients; the server object is only read to check that a
refused request changed nothing.
"""

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    BadRequestError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session, hf_raise_for_status
from hubserver import HubServer

CONFIG = b'{"hidden_size": 32}\n'


def make_folder(path, files: dict) -> str:
    for name, data in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return str(path)


def weights(seed: int, size: int = 4096) -> bytes:
    """Deterministic binary content (holds NUL bytes, so the server picks LFS for it)."""
    return b"".join(hashlib.sha256(f"{seed}-{i}".encode()).digest() for i in range(size // 32))


def status_of(excinfo) -> int:
    return excinfo.value.response.status_code


@pytest.fixture
def alice(hub) -> HfApi:
    return HfApi(token=hub.write_token)


@pytest.fixture
def repo_id(hub, alice) -> str:
    repo_id = hub.new_repo_id()
    alice.create_repo(repo_id)
    return repo_id


def test_create_repo_urls_and_exist_ok(hub, alice):
    repo_id = hub.new_repo_id()
    url = alice.create_repo(repo_id)
    assert url == f"{hub.url}/{repo_id}" and url.repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as excinfo:
        alice.create_repo(repo_id)
    assert status_of(excinfo) == 409
    assert alice.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    # A new repo has one initial commit with the Hub's default .gitattributes, like the real Hub.
    info = alice.model_info(repo_id)
    assert len(info.sha) == 40 and [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert alice.whoami()["name"] == "alice"


def test_regular_and_lfs_files_round_trip(hub, alice, repo_id, tmp_path, fresh_hf_cache):
    files = {"config.json": CONFIG, "model.safetensors": weights(1), "sub/dir/notes.txt": b"hello\n"}
    commit = alice.upload_folder(repo_id=repo_id, folder_path=make_folder(tmp_path / "up", files))
    assert any(path.startswith("/__lfs/") for method, path, _ in hub.server.requests if method == "PUT")

    info = alice.model_info(repo_id, revision=commit.oid, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings}
    assert info.sha == commit.oid
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert siblings["config.json"].lfs is None and siblings["config.json"].size == len(CONFIG)
    assert sorted(alice.list_repo_files(repo_id)) == [".gitattributes", *sorted(files)]
    tree = {f.path for f in alice.list_repo_tree(repo_id, path_in_repo="sub")}
    assert tree == {"sub/dir"}

    lfs_meta = get_hf_file_metadata(hf_hub_url(repo_id, "model.safetensors"))
    assert (lfs_meta.commit_hash, lfs_meta.size) == (commit.oid, len(files["model.safetensors"]))
    assert lfs_meta.etag == siblings["model.safetensors"].lfs.sha256  # X-Linked-Etag, unquoted
    assert get_hf_file_metadata(hf_hub_url(repo_id, "config.json")).etag == siblings["config.json"].blob_id

    for name, data in files.items():
        path = hf_hub_download(repo_id, name)
        assert path.startswith(str(fresh_hf_cache)) and open(path, "rb").read() == data
    snapshot = snapshot_download(repo_id, revision=commit.oid)
    assert snapshot.endswith(commit.oid)
    for name, data in files.items():
        assert open(os.path.join(snapshot, name), "rb").read() == data


def test_same_content_twice_makes_no_new_commit(hub, alice, repo_id, tmp_path):
    folder = make_folder(tmp_path, {"config.json": CONFIG, "model.safetensors": weights(2)})
    first = alice.upload_folder(repo_id=repo_id, folder_path=folder)
    second = alice.upload_folder(repo_id=repo_id, folder_path=folder)
    again = alice.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=repo_id)
    assert first.oid == second.oid == again.oid == hub.head(repo_id)
    assert len(alice.list_repo_commits(repo_id)) == 2  # initial commit + one upload

    # The client skips unchanged files itself; the server must also make no commit when a client
    # does send an unchanged file (or nothing at all).
    for ops in ([{"key": "file", "value": {"path": "config.json", "encoding": "base64",
                                           "content": base64.b64encode(CONFIG).decode()}}], []):
        lines = [{"key": "header", "value": {"summary": "same again", "description": ""}}, *ops]
        response = get_session().post(
            f"{hub.url}/api/models/{repo_id}/commit/main",
            content=b"".join(json.dumps(line).encode() + b"\n" for line in lines),
            headers={"Authorization": f"Bearer {hub.write_token}", "Content-Type": "application/x-ndjson"},
        )
        assert response.status_code == 200 and response.json()["commitOid"] == first.oid
    assert hub.head(repo_id) == first.oid


def test_changed_content_new_commit_old_revisions_still_load(hub, alice, repo_id, tmp_path):
    old = alice.upload_file(path_or_fileobj=weights(3), path_in_repo="model.safetensors", repo_id=repo_id)
    alice.create_tag(repo_id, tag="v1")
    new = alice.upload_file(path_or_fileobj=weights(4), path_in_repo="model.safetensors", repo_id=repo_id)
    assert new.oid != old.oid and hub.head(repo_id) == new.oid

    assert open(hf_hub_download(repo_id, "model.safetensors"), "rb").read() == weights(4)
    for revision in (old.oid, "v1"):
        assert open(hf_hub_download(repo_id, "model.safetensors", revision=revision), "rb").read() == weights(3)
    assert [c.commit_id for c in alice.list_repo_commits(repo_id)][:2] == [new.oid, old.oid]

    alice.create_branch(repo_id, branch="old-weights", revision=old.oid)
    refs = alice.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": new.oid, "old-weights": old.oid}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": old.oid}
    with pytest.raises(HfHubHTTPError) as excinfo:
        alice.create_tag(repo_id, tag="v1")
    assert status_of(excinfo) == 409
    alice.create_tag(repo_id, tag="v1", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as excinfo:
        alice.create_branch(repo_id, branch="old-weights")
    assert status_of(excinfo) == 409
    alice.delete_tag(repo_id, tag="v1")
    with pytest.raises(RevisionNotFoundError):
        alice.model_info(repo_id, revision="v1")
    # Commits go to branches only, and only to existing ones.
    with pytest.raises(RevisionNotFoundError):
        alice.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, revision="nope")


def test_write_refused_without_rights_and_nothing_changes(hub, repo_id, tmp_path):
    before = hub.head(repo_id)
    folder = make_folder(tmp_path, {"model.safetensors": weights(5), "config.json": CONFIG})
    refusals = [
        (HfApi(token=False), 401),  # no token
        (HfApi(token="hf_not_a_token"), 401),  # wrong token
        (HfApi(token=hub.read_token), 403),  # alice, but read-only
        (HfApi(token=hub.other_token), 403),  # bob, another namespace
    ]
    for api, status in refusals:
        with pytest.raises(HfHubHTTPError) as excinfo:
            api.upload_folder(repo_id=repo_id, folder_path=folder)
        assert status_of(excinfo) == status
        with pytest.raises(HfHubHTTPError) as excinfo:
            api.create_tag(repo_id, tag="refused")
        assert status_of(excinfo) == status
    assert hub.head(repo_id) == before and hub.server.get_repo(repo_id).tags == {}
    assert not hub.server.get_repo(repo_id).lfs_objects

    # A wrong token is refused on reads too; a read-only token reads.
    with pytest.raises(HfHubHTTPError) as excinfo:
        HfApi(token="hf_not_a_token").model_info(repo_id)
    assert status_of(excinfo) == 401
    assert HfApi(token=hub.read_token).model_info(repo_id).sha == before

    # Creating repos: only in one's own namespace, only with a write token.
    for token, repo in ((hub.read_token, hub.new_repo_id()), (hub.other_token, hub.new_repo_id())):
        with pytest.raises(HfHubHTTPError) as excinfo:
            HfApi(token=token).create_repo(repo)
        assert status_of(excinfo) == 403 and hub.server.get_repo(repo) is None
    # The client validates names itself; a bad one sent anyway is a 400 -> BadRequestError.
    response = get_session().post(f"{hub.url}/api/repos/create", json={"name": "bad name"},
                                  headers={"Authorization": f"Bearer {hub.write_token}"})
    with pytest.raises(BadRequestError):
        hf_raise_for_status(response)


def test_not_found_errors_are_mapped(hub, alice, repo_id, fresh_hf_cache):
    missing = hub.new_repo_id()
    with pytest.raises(RepositoryNotFoundError):
        alice.model_info(missing)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(missing, "config.json")
    with pytest.raises(RevisionNotFoundError):
        alice.model_info(repo_id, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "config.json")
    assert alice.file_exists(repo_id, ".gitattributes") and not alice.file_exists(repo_id, "config.json")
    assert not alice.repo_exists(missing)


def test_private_repo_is_invisible_to_others(hub, alice, tmp_path, fresh_hf_cache):
    repo_id = hub.new_repo_id("private")
    alice.create_repo(repo_id, private=True)
    alice.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=repo_id)
    assert alice.model_info(repo_id).private
    assert HfApi(token=hub.read_token).model_info(repo_id).sha == hub.head(repo_id)
    for api in (HfApi(token=hub.other_token), HfApi(token=False)):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info(repo_id)
        with pytest.raises(RepositoryNotFoundError):
            api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "config.json", token=hub.other_token)
    assert open(hf_hub_download(repo_id, "config.json", token=hub.write_token), "rb").read() == CONFIG


def test_branches_take_commits_list_as_refs_and_download_at_their_revision(hub, alice, repo_id, tmp_path,
                                                                           fresh_hf_cache):
    """What a training run publishing one branch per checkpoint (Pythia's step1000, ...) does."""
    commits = {}
    for step in (0, 10, 20):
        branch = f"step{step}"
        alice.create_branch(repo_id, branch=branch)  # from main, as the client does by default
        folder = make_folder(tmp_path / branch, {"config.json": CONFIG, "model.safetensors": weights(step),
                                                 "optimizer.pt": weights(100 + step), "notes/log.txt": b"log\n"})
        commits[branch] = alice.upload_folder(repo_id=repo_id, folder_path=folder, revision=branch).oid
    main = hub.head(repo_id)
    assert main not in commits.values()  # the uploads went to the branches, not to main
    refs = alice.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": main, **commits}
    assert [b.ref for b in refs.branches if b.name == "step10"] == ["refs/heads/step10"]
    assert len({c.commit_id for c in alice.list_repo_commits(repo_id, revision="step20")}) == 2  # initial + upload

    # A download at a branch (by name, full ref or commit) gets that branch's files; allow_patterns
    # keeps what loading needs.
    for revision in ("step10", "refs/heads/step10", commits["step10"]):
        assert open(hf_hub_download(repo_id, "model.safetensors", revision=revision), "rb").read() == weights(10)
    folder = snapshot_download(repo_id, revision="step20", allow_patterns=["config.json", "*.safetensors"])
    assert folder.endswith(commits["step20"])
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert open(os.path.join(folder, "model.safetensors"), "rb").read() == weights(20)

    # Deleting a branch drops it from the refs; its commit still downloads by id.
    alice.delete_branch(repo_id, branch="step0")
    assert "step0" not in {b.name for b in alice.list_repo_refs(repo_id).branches}
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "config.json", revision="step0")
    assert open(hf_hub_download(repo_id, "model.safetensors", revision=commits["step0"]), "rb").read() == weights(0)


def test_folders_short_commit_ids_and_injected_failures(hub, alice, repo_id, tmp_path, fresh_hf_cache):
    """What a Trainer pushing checkpoint-N/ folders to main, and a client reading them by short commit id, need."""
    commits = []
    for step in (2, 4):
        folder = make_folder(tmp_path / f"checkpoint-{step}", {"config.json": CONFIG, "model.safetensors": weights(step),
                                                               "optimizer.pt": weights(50 + step)})
        commits.append(alice.upload_folder(repo_id=repo_id, folder_path=folder, path_in_repo=f"checkpoint-{step}").oid)
    files = {e.path for e in alice.list_repo_tree(repo_id, recursive=True)}
    assert {"checkpoint-2/model.safetensors", "checkpoint-4/optimizer.pt", "checkpoint-4/config.json"} <= files
    inside = alice.list_repo_tree(repo_id, "checkpoint-2", revision=commits[0])
    assert sorted(e.path for e in inside) == ["checkpoint-2/config.json", "checkpoint-2/model.safetensors",
                                              "checkpoint-2/optimizer.pt"]
    with pytest.raises(RemoteEntryNotFoundError):  # checkpoint-4 did not exist at the first commit
        list(alice.list_repo_tree(repo_id, "checkpoint-4", revision=commits[0]))
    # A unique prefix of 7+ characters resolves like the full id (as on the Hub); a shorter one does not.
    assert alice.model_info(repo_id, revision=commits[0][:7]).sha == commits[0]
    path = hf_hub_download(repo_id, "checkpoint-2/model.safetensors", revision=commits[1][:9])
    assert open(path, "rb").read() == weights(2) and commits[1] in path
    with pytest.raises(RevisionNotFoundError):
        alice.model_info(repo_id, revision=commits[0][:6])

    # inject: the next matching request fails (or waits), later ones are served again.
    fault = hub.server.inject("POST", rf"/api/models/{repo_id}/commit/.*", status=503)
    with pytest.raises(HfHubHTTPError) as e:
        alice.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=repo_id)
    assert status_of(e) == 503 and fault.hits == 1 and hub.head(repo_id) == commits[1]
    assert alice.upload_file(path_or_fileobj=b"x", path_in_repo="a.txt", repo_id=repo_id).oid == hub.head(repo_id)
    slow = hub.server.inject("GET", rf"/api/models/{repo_id}/refs", status=None, delay=0.5)
    started = time.perf_counter()
    alice.list_repo_refs(repo_id)
    assert time.perf_counter() - started >= 0.5 and slow.hits == 1


def test_gated_repo_lists_for_everyone_and_downloads_for_granted_users(hub, alice, repo_id, fresh_hf_cache):
    alice.upload_file(path_or_fileobj=CONFIG, path_in_repo="config.json", repo_id=repo_id)
    alice.update_repo_settings(repo_id, gated="auto")
    assert alice.model_info(repo_id).gated == "auto"
    bob = HfApi(token=hub.other_token)
    for api in (bob, HfApi(token=False)):
        assert {b.name for b in api.list_repo_refs(repo_id).branches} == {"main"}
        assert api.model_info(repo_id).sha == hub.head(repo_id)
    for token, status in ((False, 401), (hub.other_token, 403)):
        with pytest.raises(GatedRepoError) as excinfo:
            hf_hub_download(repo_id, "config.json", token=token)
        assert status_of(excinfo) == status
    assert open(hf_hub_download(repo_id, "config.json", token=hub.write_token), "rb").read() == CONFIG
    hub.server.grant_access(repo_id, "bob")
    assert open(hf_hub_download(repo_id, "config.json", token=hub.other_token), "rb").read() == CONFIG
    with pytest.raises(HfHubHTTPError) as excinfo:  # only the owner changes the settings
        bob.update_repo_settings(repo_id, gated=False)
    assert status_of(excinfo) == 403 and alice.model_info(repo_id).gated == "auto"


def test_transformers_model_round_trip(hub, fresh_hf_cache):
    import torch
    from transformers import AutoModelForImageClassification, ViTConfig

    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=28, patch_size=7, num_channels=1, num_labels=10)
    model = AutoModelForImageClassification.from_config(config).eval()
    repo_id = hub.new_repo_id("vit")
    commit = model.push_to_hub(repo_id, token=hub.write_token)
    assert commit.oid == hub.head(repo_id)
    # push_to_hub also writes a model card; pushing the same model again makes no new commit.
    assert model.push_to_hub(repo_id, token=hub.write_token).oid == commit.oid

    loaded = AutoModelForImageClassification.from_pretrained(repo_id, revision=commit.oid).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, loaded(pixel_values=x).logits)


def test_timm_model_round_trip(hub, alice, tmp_path, fresh_hf_cache):
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10, in_chans=1).eval()
    folder = tmp_path / "timm"
    timm.models.save_for_hf(model, folder, model_args={"in_chans": 1, "num_classes": 10}, safe_serialization=True)
    repo_id = hub.new_repo_id("resnet")
    alice.create_repo(repo_id)
    alice.upload_folder(repo_id=repo_id, folder_path=folder)

    loaded = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_server_down_fails_fast_and_warm_cache_still_loads(hub, tmp_path, fresh_hf_cache, monkeypatch):
    from hf_ckptkd.hub.errors import TRANSPORT_ERRORS

    # A server of its own, so stopping it does not disturb the session's server.
    server = HubServer(tokens={hub.write_token: ("alice", "write")}).start()
    api = HfApi(endpoint=server.url, token=hub.write_token)
    repo_id = hub.new_repo_id("down")
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=make_folder(tmp_path, {"a.txt": b"a", "b.txt": b"b"}))
    cached = hf_hub_download(repo_id, "a.txt", endpoint=server.url)
    server.stop()
    try:
        start = time.monotonic()
        with pytest.raises(TRANSPORT_ERRORS):
            api.model_info(repo_id)
        assert time.monotonic() - start < 2
        # A warm cache still loads (the failed HEAD falls back to the cache, quietly).
        assert hf_hub_download(repo_id, "a.txt", endpoint=server.url) == cached
        # An uncached file: the client retries 5 times with back-off (1+2+4+8+8 = 23 s), then gives up.
        # The sleeps are recorded instead of waited for.
        sleeps = []
        with monkeypatch.context() as patch, pytest.raises(LocalEntryNotFoundError):
            patch.setattr("huggingface_hub.utils._http.time.sleep", sleeps.append)
            hf_hub_download(repo_id, "b.txt", endpoint=server.url)
        assert sleeps == [1, 2, 4, 8, 8]
    finally:
        server.start()  # same port, same repos
    assert api.model_info(repo_id).sha == server.head(repo_id)
    server.stop()


def test_storage_folder_survives_restart(hub, tmp_path):
    tokens = {hub.write_token: ("alice", "write")}
    first = HubServer(tokens=tokens, storage=str(tmp_path / "hub")).start()
    api = HfApi(endpoint=first.url, token=hub.write_token)
    api.create_repo("alice/kept")
    commit = api.upload_file(path_or_fileobj=weights(6), path_in_repo="w.safetensors", repo_id="alice/kept")
    first.stop()
    second = HubServer(tokens=tokens, storage=str(tmp_path / "hub")).start()
    try:
        assert second.head("alice/kept") == commit.oid
        with urllib.request.urlopen(f"{second.url}/alice/kept/resolve/main/w.safetensors") as response:
            assert response.read() == weights(6) and response.headers["X-Repo-Commit"] == commit.oid
    finally:
        second.stop()


def test_runs_by_hand():
    script = os.path.join(os.path.dirname(__file__), "hubserver.py")
    proc = subprocess.Popen([sys.executable, script, "--port", "0", "--token", "carol:write:hf_carol"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        assert f"HF_ENDPOINT={url}" in proc.stdout.readline() + proc.stdout.readline()
        request = urllib.request.Request(f"{url}/api/whoami-v2", headers={"Authorization": "Bearer hf_carol"})
        with urllib.request.urlopen(request) as response:
            assert json.load(response)["name"] == "carol"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
