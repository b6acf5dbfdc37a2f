"""Push teacher snapshots to the Hub with model cards: `push_teachers_to_hub`.

The push is idempotent: a member whose files the Hub already holds (under its tag, or on `main`)
makes no commit, and a tag already on the right commit is left alone. A tag on another commit
(the snapshot was rewritten) is moved, with a warning naming the old commit, which still loads.
Before anything is sent, every snapshot's weights are checked against its manifest and the token
is checked for write access to every target namespace. Only the main process pushes.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.state import PartialState
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from ..files import file_hashes
from ..selection.plot import plot_information_plane
from ..selection.report import PLANE_PNG, SelectionReport, format_epoch
from ..snapshots.folders import Snapshot
from .card import CARD_NAME, build_model_card
from .errors import HubInputError, endpoint, push_errors
from .sources import PushMember, plan_targets, resolve_push_source

logger = logging.getLogger(__name__)

Files = dict[str, bytes | Path]  # path in the repo -> its content, or the local file holding it
Hashes = dict[str, tuple[str, str]]  # path in the repo -> (SHA-256, git blob SHA-1)


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


def is_main_process() -> bool:
    """True on the process that may push: accelerate's main process if a state exists, else RANK 0."""
    if PartialState._shared_state:  # initialised in this process (by Trainer or the user)
        return PartialState().is_main_process
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))
    return rank.strip() in ("", "0")


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
    members, report, folder = _members_to_push(source, names)
    plan_targets(members, repo_id, as_revisions, revision_prefix)
    api = HfApi(token=token)
    check_write_access(api, [m.repo_id for m in members])
    with tempfile.TemporaryDirectory(prefix="hf-ckptkd-push-") as tmp:
        plot = _plane_plot(report, folder, Path(tmp))
        ensemble = [f"{m.repo_id}@{m.tag}" for m in members]
        for repo in dict.fromkeys(m.repo_id for m in members):
            with push_errors(repo):
                api.create_repo(repo, private=private, exist_ok=True)
                if private and not api.model_info(repo).private:
                    logger.warning("%s already exists and is public; it stays public (change its visibility in its "
                                   "settings on the Hub)", repo)
        order = list(reversed(members)) if as_revisions else members  # main ends on the first member
        pushed: dict[str, PushedTeacher] = {}
        files_of: dict[str, tuple[Files, Hashes]] = {}
        for m in order:
            card = build_model_card(m.snapshot, m.repo_id, m.tag, report=report, score=m.score, ensemble=ensemble,
                                    run=run_name, dataset=dataset, plot=plot is not None)
            files: Files = {**_snapshot_files(m.snapshot), CARD_NAME: str(card).encode()}
            if plot is not None:
                files[PLANE_PNG] = Path(plot)
            files_of[m.snapshot.name] = files, {path: file_hashes(data) for path, data in files.items()}
            with push_errors(m.repo_id):
                pushed[m.snapshot.name] = _push_member(api, m, *files_of[m.snapshot.name], tag_first=as_revisions)
        if as_revisions:  # a changed member may have moved main: put the first member back on it
            first = members[0]
            with push_errors(first.repo_id):
                _commit_if_changed(api, first, *files_of[first.snapshot.name])
    return [pushed[m.snapshot.name] for m in members]


def _members_to_push(source: Any, names: Sequence[str] | None
                     ) -> tuple[list[PushMember], SelectionReport | None, Path | None]:
    """The source's members (narrowed to `names`), their weights verified: nothing is sent otherwise."""
    members, report, folder = resolve_push_source(source)
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
    return members, report, folder


def _plane_plot(report: SelectionReport | None, folder: Path | None, tmp: Path) -> Path | None:
    """The selection's information-plane plot: the one saved beside it, else drawn into `tmp`."""
    if report is None:
        return None
    if folder is not None and (folder / PLANE_PNG).is_file():
        return folder / PLANE_PNG
    return Path(plot_information_plane(report, tmp / PLANE_PNG))


def check_write_access(api: HfApi, repo_ids: Iterable[str]) -> None:
    """Refuse before any upload when the token cannot write every target (a read-only token's
    `create_repo(exist_ok=True)` can look successful, so ask whoami first)."""
    repo_ids = sorted(set(repo_ids))
    with push_errors(repo_ids[0]):
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


def _snapshot_files(snapshot: Snapshot) -> dict[str, Path]:
    return {p.relative_to(snapshot.path).as_posix(): p for p in sorted(snapshot.path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(snapshot.path).parts)}


def _matches(info, files: Files, hashes: Hashes) -> bool:
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


def _commit_if_changed(api: HfApi, m: PushMember, files: Files, hashes: Hashes) -> tuple[str, bool]:
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
        commit_message=f"Teacher {snapshot.name} (epoch {format_epoch(snapshot.epoch)}, step {snapshot.global_step})",
        commit_description=f"Pushed with hf-ckptkd; tag {m.tag}.")
    return info.oid, info.oid != head.sha


def _push_member(api: HfApi, m: PushMember, files: Files, hashes: Hashes, tag_first: bool) -> PushedTeacher:
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
    url = f"{endpoint()}/{m.repo_id}"
    logger.info("%s: %s@%s commit %s (%s)", m.snapshot.name, m.repo_id, m.tag, commit,
                "new commit" if created else "unchanged")
    return PushedTeacher(m.snapshot.name, m.repo_id, m.tag, commit, url, created)


__all__ = ["PushedTeacher", "check_write_access", "is_main_process", "push_teachers_to_hub"]
