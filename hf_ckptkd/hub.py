"""Publish teacher snapshots to the Hugging Face Hub, and load teachers back from it.

`push_teachers_to_hub(source, repo_id, ...)` uploads snapshot folders (each already a Hub-ready
model repo in its family's own format, plus `snapshot.json`, and a text teacher's tokenizer) with a
model card (`hf_ckptkd.model_card`) and the selection's information-plane plot. `load_hub_teacher("owner/name@revision")` loads one back
through the family's own loader (`timm.create_model("hf-hub:…")` or transformers'
`AutoModelFor….from_pretrained`), after checking the weights against the repo's `snapshot.json`.
`hub_scripts/list_teachers.py` lists an owner's teacher repos and revisions with their card metrics
(the card's `checkpoint_kd` metadata block).

Where the members go:
- one snapshot: to `repo_id`;
- several (an ensemble): one repo per member, `<repo_id>-<snapshot name>` (e.g.
  `alice/fmnist-teacher-epoch-0012`);
- `as_revisions=True`: all members to `repo_id`, each as its own commit on `main`, tagged with
  its snapshot name (`epoch-0012`); `main` ends on the first member (a selection's rank-1 teacher).
Every pushed commit is also tagged with `<revision_prefix><snapshot name>`, so
`owner/name@epoch-0012` loads exactly that member's weights even after later pushes.

The push is idempotent: a member whose files the Hub already holds (under its tag, or on `main`)
makes no commit, and a tag already on the right commit is left alone. A tag on another commit
(the snapshot was rewritten) is moved, with a warning naming the old commit, which still loads.
Before anything is sent, every snapshot's weights are checked against its manifest and the token
is checked for write access to every target namespace. Only the main process pushes. Tokens are
passed to `huggingface_hub` as given (or read by it from `HF_TOKEN` / `hf auth login`), and are
never logged, written to disk or put in a card.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .model_card import CITATION, TAGS, _fmt_epoch, build_model_card
from .selection.report import PLANE_PNG, SELECTION_JSON, SelectionReport, SnapshotScore
from .snapshots import INDEX_NAME, METADATA_NAME, Snapshot, SnapshotIndex, resolve_snapshot_reference, sha256_of
from .teachers import TeacherReferenceError, parse_hub_reference

logger = logging.getLogger(__name__)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The connection errors the Hub client lets through unwrapped (a refused or dropped connection).

    The client raises its own classes for HTTP answers, but not for a connection that never got
    one: those come from its transport, `httpx` in huggingface_hub 1.x and `httpx2` in 2.x. Both are
    looked up, so the package imports whichever of the two the installed client brings.
    """
    errors = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except ImportError:
            continue
    return tuple(errors)


_TRANSPORT_ERRORS = _transport_errors()
CARD_NAME = "README.md"
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_CHUNK = 1 << 20


class HubError(RuntimeError):
    """A push or pull that failed on the Hub's side (e.g. the Hub cannot be reached)."""


class HubInputError(HubError, ValueError):
    """A push or pull the user must change: repo id, token, reference, or what is pushed."""


class HubReferenceError(HubInputError, TeacherReferenceError):
    """A Hub teacher reference that names no loadable teacher (missing repo, revision or model)."""


class HubUnavailableError(HubError):
    """The Hub cannot be reached (or offline mode is on) and what is needed is not in the cache."""


@dataclass(frozen=True)
class PushedTeacher:
    """One pushed member: where it is, and whether this push made a commit."""

    name: str  # the snapshot's name, e.g. epoch-0012
    repo_id: str
    revision: str  # the tag naming exactly this member
    commit: str  # the commit holding this member's files
    url: str  # the repo's URL
    created: bool  # False when the Hub already held these files (no new commit)

    @property
    def reference(self) -> str:
        """The teacher reference to distil from: `owner/name@tag`."""
        return f"{self.repo_id}@{self.revision}"


@dataclass
class _Member:
    snapshot: Snapshot
    score: SnapshotScore | None = None
    repo_id: str = ""
    tag: str = ""


# --- processes -------------------------------------------------------------------------------

def is_main_process() -> bool:
    """True on the process that may push: accelerate's main process if a state exists, else RANK 0."""
    try:
        from accelerate.state import PartialState

        if PartialState._shared_state:  # initialised in this process (by Trainer or the user)
            return PartialState().is_main_process
    except ImportError:  # pragma: no cover - accelerate ships with transformers' Trainer
        pass
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return rank.strip() in ("", "0")


# --- what to push ----------------------------------------------------------------------------

def _snapshot_at(path: Path) -> Snapshot | None:
    return Snapshot.read(path) if (path / METADATA_NAME).is_file() else None


def _report_members(report: SelectionReport, folder: Path | None) -> list[_Member]:
    members = []
    for name in report.selected:
        score = report.score(name)
        candidates = []
        if score.path:
            candidates += [Path(score.path)] + ([folder / score.path] if folder else [])
        if report.snapshot_dir:
            candidates += [Path(report.snapshot_dir) / name] + ([folder / report.snapshot_dir / name] if folder else [])
        if folder:
            candidates.append(folder.parent / "snapshots" / name)
        snapshot = next((s for s in map(_snapshot_at, candidates) if s is not None), None)
        if snapshot is None:
            raise HubInputError(
                f"the selection's snapshot {name} was not found (looked in {', '.join(str(c) for c in candidates) or 'no path'}); "
                "give the selection folder of a run whose snapshots are still on disk, or the snapshot folders")
        members.append(_Member(snapshot, score))
    return members


def _resolve_source(source: Any) -> tuple[list[_Member], SelectionReport | None, Path | None]:
    """(members in order, the selection report if any, the selection folder if any)."""
    if isinstance(source, SelectionReport):
        return _report_members(source, None), source, None
    if isinstance(source, Snapshot):
        return [_Member(source)], None, None
    if isinstance(source, SnapshotIndex):
        return [_Member(s) for s in source], None, None
    if isinstance(source, (list, tuple)):
        members = []
        for item in source:
            found, _, _ = _resolve_source(item)
            members += found
        return members, None, None
    if not isinstance(source, (str, os.PathLike)):
        raise HubInputError(f"cannot push {type(source).__name__}: give a SelectionReport, a selection folder, a "
                            "snapshot folder, a snapshot dir (with index.json), or a list of snapshots")
    path = Path(source).expanduser()
    if path.is_file() and path.name == SELECTION_JSON:
        path = path.parent
    if (path / SELECTION_JSON).is_file():
        report = SelectionReport.load(path)
        return _report_members(report, path), report, path
    if (path / METADATA_NAME).is_file():
        return [_Member(Snapshot.read(path))], None, None
    if (path / INDEX_NAME).is_file() or (path / "snapshots" / INDEX_NAME).is_file():
        return [_Member(s) for s in SnapshotIndex.load(path)], None, None
    snapshot = resolve_snapshot_reference(str(source)) if not path.exists() else None
    if snapshot is not None:
        return [_Member(snapshot)], None, None
    raise HubInputError(f"{source} is neither a selection folder ({SELECTION_JSON}), a snapshot folder "
                        f"({METADATA_NAME}), a snapshot dir ({INDEX_NAME}) nor '<snapshot_dir>:<name>'")


def _check_repo_id(repo_id: str) -> None:
    try:
        if not isinstance(repo_id, str) or repo_id.count("/") != 1:
            raise HFValidationError("it must be 'owner/name'")
        validate_repo_id(repo_id)
        parse_hub_reference(repo_id)
    except (HFValidationError, TeacherReferenceError) as e:
        raise HubInputError(f"{repo_id!r} is not a valid Hub repo id ({e}); write OWNER/NAME with letters, digits, "
                            "'-', '_' and '.', no '--' or '..', at most 96 characters") from None


def _plan(members: list[_Member], repo_id: str, as_revisions: bool, revision_prefix: str) -> None:
    _check_repo_id(repo_id)
    names = [m.snapshot.name for m in members]
    if len(set(names)) != len(names):
        raise HubInputError(f"two snapshots to push share a name ({names}); push them to different repos")
    for m in members:
        m.repo_id = repo_id if as_revisions or len(members) == 1 else f"{repo_id}-{m.snapshot.name}"
        m.tag = f"{revision_prefix}{m.snapshot.name}"
        _check_repo_id(m.repo_id)
        if not re.fullmatch(r"[\w.\-/]+", m.tag) or m.tag.startswith("refs/") or _COMMIT_RE.fullmatch(m.tag):
            raise HubInputError(f"revision_prefix {revision_prefix!r} makes an invalid tag {m.tag!r}")


# --- errors and access -----------------------------------------------------------------------

def _endpoint() -> str:
    return constants.ENDPOINT


@contextmanager
def _push_errors(repo_id: str):
    """Turn the client's errors into one sentence naming the repo and what to fix (never the token)."""
    try:
        yield
    except HubError:
        raise
    except LocalTokenNotFoundError:
        raise HubInputError(f"pushing to {repo_id} needs a Hub token with write access, and none was found: pass "
                            "token=... (or --token), set HF_TOKEN, or run `hf auth login`") from None
    except HFValidationError as e:
        raise HubInputError(f"{repo_id!r} is not a valid Hub repo id ({e})") from None
    except RepositoryNotFoundError:
        raise HubInputError(f"{repo_id} cannot be found or written on {_endpoint()} with this token; check the "
                            "repo id and that the token's user owns its namespace") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise HubInputError(f"the Hub at {_endpoint()} refused the token while pushing to {repo_id} (401: missing "
                                "or invalid token); pass a valid write token (token=..., --token, HF_TOKEN or "
                                "`hf auth login`)") from None
        if status == 403:
            raise HubInputError(f"the token may not write to {repo_id} (403: read-only token, or another user's "
                                "namespace); use a write token of the repo's owner") from None
        if status == 412:
            raise HubError(f"{repo_id} changed on the Hub while pushing (someone else pushed); push again") from None
        raise HubError(f"the Hub at {_endpoint()} failed while pushing to {repo_id}: {e}") from None
    except (*_TRANSPORT_ERRORS, OfflineModeIsEnabled) as e:
        raise HubUnavailableError(f"could not reach the Hub at {_endpoint()} to push {repo_id} ({type(e).__name__}: {e}); "
                       "check the connection and HF_ENDPOINT, and that HF_HUB_OFFLINE is not set") from None


def _check_write_access(api: HfApi, repo_ids: Iterable[str]) -> None:
    """Refuse before any upload when the token cannot write every target (a read-only token's
    `create_repo(exist_ok=True)` can look successful, so ask whoami first)."""
    repo_ids = sorted(set(repo_ids))
    with _push_errors(repo_ids[0]):
        me = api.whoami()
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubInputError(f"the token for {me.get('name')} is read-only; pushing to {repo_ids[0]} needs a write "
                            "token (create one in the Hub's settings, then pass it as token=... / --token / HF_TOKEN)")
    namespaces = {me.get("name")} | {org.get("name") for org in me.get("orgs") or []}
    for repo_id in repo_ids:
        owner = repo_id.split("/")[0]
        if role != "fineGrained" and owner not in namespaces:
            raise HubInputError(f"the token belongs to {me.get('name')}, who cannot write to {repo_id} (namespace "
                                f"{owner}); push to {me.get('name')}/... or use a token of {owner}")


# --- files and comparison --------------------------------------------------------------------

def _hashes(data: bytes | Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of bytes or a file, streamed."""
    sha256 = hashlib.sha256()
    if isinstance(data, bytes):
        sha1 = hashlib.sha1(b"blob %d\0" % len(data))
        sha256.update(data)
        sha1.update(data)
    else:
        sha1 = hashlib.sha1(b"blob %d\0" % data.stat().st_size)
        with open(data, "rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                sha256.update(block)
                sha1.update(block)
    return sha256.hexdigest(), sha1.hexdigest()


def _snapshot_files(snapshot: Snapshot) -> dict[str, Path]:
    return {p.relative_to(snapshot.path).as_posix(): p for p in sorted(snapshot.path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(snapshot.path).parts)}


def _matches(info, files: dict[str, bytes | Path], hashes: dict[str, tuple[str, str]]) -> bool:
    """Whether the revision described by `info` (model_info with files metadata) holds exactly `files`."""
    remote = {s.rfilename: s for s in info.siblings or [] if s.rfilename != ".gitattributes"}
    if set(remote) != set(files):
        return False
    for path in files:
        sha256, sha1 = hashes[path]
        sibling = remote[path]
        if sibling.lfs is not None:
            if sibling.lfs.sha256 != sha256:
                return False
        elif sibling.blob_id != sha1:
            return False
    return True


# --- push ----------------------------------------------------------------------------------

def push_teachers_to_hub(source: Any, repo_id: str, *, private: bool = False, as_revisions: bool = False,
                         token: str | None = None, revision_prefix: str = "", names: Sequence[str] | None = None,
                         dataset: str | None = None, run_name: str | None = None) -> list[PushedTeacher]:
    """Push teacher snapshots with model cards; returns one `PushedTeacher` per member, in order.

    Args:
        source: a `SelectionReport` or selection folder (its `.selected` snapshots, in rank order),
            a snapshot folder, a snapshot dir (all its snapshots), `<snapshot_dir>:<name>`, a
            `Snapshot`, a `SnapshotIndex`, or a list of these.
        repo_id: `owner/name`. One snapshot goes there; several go to `<repo_id>-<snapshot name>`
            each, or with `as_revisions` all to `repo_id`, tagged by snapshot name.
        private: create new repos private (existing repos keep their visibility).
        token: a write token; None lets `huggingface_hub` find one (`HF_TOKEN`, `hf auth login`).
        revision_prefix: prefix of the tags (`<prefix><snapshot name>`).
        names: push only these snapshots of `source`.
        dataset: the run's dataset (`fashion_mnist` or a Hub dataset id) for the card, when neither
            the snapshots (`snapshot.json`'s `dataset`) nor the selection record it.
        run_name: the run's name for the card (default: the selection's `extra["run"]`, else the
            run folder's name).

    Raises `SnapshotError` (a snapshot's weights do not match its manifest), `HubInputError` (bad
    repo id, missing or insufficient token, nothing to push) before anything is uploaded, and
    `HubError` when the Hub fails or cannot be reached. On processes other than the main one it
    does nothing and returns [].
    """
    if not is_main_process():
        logger.debug("not the main process: push_teachers_to_hub does nothing here")
        return []
    members, report, folder = _resolve_source(source)
    if names is not None:
        unknown = sorted(set(names) - {m.snapshot.name for m in members})
        if unknown:
            raise HubInputError(f"{', '.join(unknown)} not among the snapshots to push ({[m.snapshot.name for m in members]})")
        members = [m for m in members if m.snapshot.name in set(names)]
    if not members:
        what = "the selection" if isinstance(source, SelectionReport) else str(source)
        raise HubInputError(f"{what} holds no snapshot to push")
    for m in members:  # refuse altered weights before anything is sent
        m.snapshot.verify()
    _plan(members, repo_id, as_revisions, revision_prefix)
    api = HfApi(token=token)
    _check_write_access(api, [m.repo_id for m in members])

    with tempfile.TemporaryDirectory(prefix="hf-ckptkd-push-") as tmp:
        plot = None
        if report is not None:
            plot = folder / PLANE_PNG if folder is not None and (folder / PLANE_PNG).is_file() else None
            if plot is None:
                from .selection.plot import plot_information_plane

                plot = plot_information_plane(report, Path(tmp) / PLANE_PNG)
        ensemble = [f"{m.repo_id}@{m.tag}" for m in members]
        for repo in dict.fromkeys(m.repo_id for m in members):
            with _push_errors(repo):
                api.create_repo(repo, private=private, exist_ok=True)
                if private and not api.model_info(repo).private:
                    logger.warning("%s already exists and is public; it stays public (change its visibility in its "
                                   "settings on the Hub)", repo)
        order = list(reversed(members)) if as_revisions else members  # main ends on the first member
        pushed: dict[str, PushedTeacher] = {}
        files_of: dict[str, tuple[dict, dict]] = {}
        for m in order:
            card = build_model_card(m.snapshot, m.repo_id, m.tag, report=report, score=m.score, ensemble=ensemble,
                                    run=run_name, dataset=dataset, plot=plot is not None)
            files: dict[str, bytes | Path] = {**_snapshot_files(m.snapshot), CARD_NAME: str(card).encode()}
            if plot is not None:
                files[PLANE_PNG] = Path(plot)
            files_of[m.snapshot.name] = files, {path: _hashes(data) for path, data in files.items()}
            with _push_errors(m.repo_id):
                pushed[m.snapshot.name] = _push_member(api, m, *files_of[m.snapshot.name], tag_first=as_revisions)
        if as_revisions:  # a changed member may have moved main: put the first member back on it
            first = members[0]
            with _push_errors(first.repo_id):
                _commit_if_changed(api, first, *files_of[first.snapshot.name])
    return [pushed[m.snapshot.name] for m in members]


def _commit_if_changed(api: HfApi, m: _Member, files: dict[str, bytes | Path],
                       hashes: dict[str, tuple[str, str]]) -> tuple[str, bool]:
    """Make `main` hold exactly `files`: (commit, whether a new commit was made)."""
    head = api.model_info(m.repo_id, revision="main", files_metadata=True)
    if _matches(head, files, hashes):
        return head.sha, False
    snapshot = m.snapshot
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data if isinstance(data, bytes) else str(data))
                  for path, data in files.items()]
    operations += [CommitOperationDelete(path_in_repo=s.rfilename) for s in head.siblings or []
                   if s.rfilename not in files and s.rfilename != ".gitattributes"]
    info = api.create_commit(
        m.repo_id, operations, revision="main", parent_commit=head.sha,
        commit_message=f"Teacher {snapshot.name} (epoch {_fmt_epoch(snapshot.epoch)}, step {snapshot.global_step})",
        commit_description=f"Pushed with hf-ckptkd; tag {m.tag}.")
    return info.oid, info.oid != head.sha


def _push_member(api: HfApi, m: _Member, files: dict[str, bytes | Path], hashes: dict[str, tuple[str, str]],
                 tag_first: bool) -> PushedTeacher:
    refs = api.list_repo_refs(m.repo_id)
    tags = {t.name: t.target_commit for t in refs.tags}
    commit, created = None, False
    if tag_first and m.tag in tags:
        tagged = api.model_info(m.repo_id, revision=tags[m.tag], files_metadata=True)
        if _matches(tagged, files, hashes):
            commit = tagged.sha
    if commit is None:
        commit, created = _commit_if_changed(api, m, files, hashes)
    old = tags.get(m.tag)
    if old != commit:
        if old is not None:
            logger.warning("moving tag %s of %s from commit %s to %s (the snapshot's files changed); the old commit "
                           "still loads as %s@%s", m.tag, m.repo_id, old, commit, m.repo_id, old)
            api.delete_tag(m.repo_id, tag=m.tag)
        api.create_tag(m.repo_id, tag=m.tag, revision=commit)
    url = f"{_endpoint()}/{m.repo_id}"
    logger.info("%s: %s@%s commit %s (%s)", m.snapshot.name, m.repo_id, m.tag, commit,
                "new commit" if created else "unchanged")
    return PushedTeacher(m.snapshot.name, m.repo_id, m.tag, commit, url, created)


# --- load ----------------------------------------------------------------------------------

def _cache_hint() -> str:
    return f"the local cache ({constants.HF_HUB_CACHE})"


def _fetch(reference: str, repo_id: str, filename: str, revision: str | None) -> str:
    """`hf_hub_download` with errors that name the reference and what to fix."""
    at = f" at revision {revision!r}" if revision else ""
    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except RepositoryNotFoundError:
        raise HubReferenceError(
            f"teacher {reference!r}: there is no model repo {repo_id} on {_endpoint()} (or it is private and the "
            "token cannot read it); check the name, or log in / set HF_TOKEN for a private repo") from None
    except RevisionNotFoundError:
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} has no revision {revision!r} (branch, tag or "
                                f"commit){_known_revisions(repo_id)}") from None
    except LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else \
            f"the Hub at {_endpoint()} could not be reached"
        raise HubUnavailableError(f"teacher {reference!r}: {why} and {filename}{at} of {repo_id} is not in "
                       f"{_cache_hint()}; check the connection and HF_ENDPOINT (or unset HF_HUB_OFFLINE), "
                       "or load it once while online") from None
    except EntryNotFoundError:  # the repo and revision exist, the file does not
        raise
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise HubReferenceError(f"teacher {reference!r}: the Hub at {_endpoint()} refused the token ({status}); "
                                    "fix or unset HF_TOKEN (public repos need none)") from None
        raise HubError(f"teacher {reference!r}: the Hub at {_endpoint()} failed: {e}") from None


def _known_revisions(repo_id: str) -> str:
    try:
        refs = HfApi().list_repo_refs(repo_id)
    except Exception:  # the listing is only a hint
        return ""
    names = [b.name for b in refs.branches] + [t.name for t in refs.tags]
    return f"; it has {', '.join(names)}" if names else ""


def _verify_weights(reference: str, repo_id: str, commit: str) -> None:
    """Check the weights against the repo's snapshot.json; without one, require safetensors weights."""
    try:
        manifest = json.loads(Path(_fetch(reference, repo_id, METADATA_NAME, commit)).read_text())
    except HubUnavailableError:
        logger.warning("teacher %s: cannot fetch its %s (the Hub is unreachable); loading the cached weights "
                       "without checking their SHA-256", reference, METADATA_NAME)
        return
    except EntryNotFoundError:
        manifest = None
    if manifest is None:
        for weights in ("model.safetensors", "model.safetensors.index.json"):
            try:
                _fetch(reference, repo_id, weights, commit)
                return
            except EntryNotFoundError:
                continue
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} holds no safetensors weights (no model.safetensors) "
                                "at that revision; hf-ckptkd loads safetensors only")
    for filename, expected in (manifest.get("sha256") or {}).items():
        try:
            path = Path(_fetch(reference, repo_id, filename, commit))
        except EntryNotFoundError:
            raise HubReferenceError(f"teacher {reference!r}: {METADATA_NAME} lists {filename}, which the repo does "
                                    "not hold at that revision") from None
        if sha256_of(path) != expected:
            raise HubReferenceError(f"teacher {reference!r}: {filename} does not match the SHA-256 in the repo's "
                                    f"{METADATA_NAME}; the weights were changed after the snapshot was written, so "
                                    "they are not loaded")


def load_hub_teacher(reference: str):
    """A teacher from a Hub reference `owner/name[@revision]` (branch, tag or commit).

    Reads `config.json` to tell the family, pins the revision to the commit it resolves to, checks
    the weights against `snapshot.json` when the repo has one, then loads with the family's own
    loader: `timm.create_model("hf-hub:owner/name@commit", pretrained=True)` (wrapped in
    `TimmForImageClassification`) or `AutoModelFor…Classification.from_pretrained(repo_id,
    revision=commit, use_safetensors=True)`. `HF_HOME`, `HF_HUB_OFFLINE` and tokens work as in
    `huggingface_hub`; a warm cache loads while the Hub is down.
    """
    repo_id, revision = parse_hub_reference(reference)
    try:
        config_path = _fetch(reference, repo_id, "config.json", revision)
    except EntryNotFoundError:
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} holds no model at "
                                f"{repr(revision) if revision else 'main'} (no config.json); push a timm or "
                                "transformers model folder there, e.g. with push_teachers_to_hub") from None
    folder = Path(config_path).parent.name
    commit = folder if _COMMIT_RE.fullmatch(folder) else revision
    try:
        config = json.loads(Path(config_path).read_text())
    except json.JSONDecodeError as e:
        raise HubReferenceError(f"teacher {reference!r}: its config.json is not valid JSON ({e})") from None
    _verify_weights(reference, repo_id, commit)
    try:
        if "architecture" in config:  # timm's Hub format
            import timm

            from .models import TimmForImageClassification

            hub_id = f"{repo_id}@{commit}" if commit else repo_id
            return TimmForImageClassification(timm.create_model(f"hf-hub:{hub_id}", pretrained=True))
        from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

        auto = AutoModelForImageClassification if config.get("model_type") in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES \
            else AutoModelForSequenceClassification
        return auto.from_pretrained(repo_id, revision=commit, use_safetensors=True)
    except HubError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} holds a config.json but its model could not be "
                                f"loaded ({type(e).__name__}: {e})") from e


__all__ = ["push_teachers_to_hub", "load_hub_teacher", "build_model_card", "PushedTeacher",
           "HubError", "HubInputError", "HubReferenceError", "HubUnavailableError", "is_main_process", "TAGS", "CITATION"]
