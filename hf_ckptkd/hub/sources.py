"""What a push sends: the snapshots a source names, in order, and where each one goes.

A source is a `SelectionReport` or selection folder (its selected snapshots, in rank order), a
snapshot folder, a snapshot dir (all its snapshots), `<snapshot_dir>:<name>`, a `Snapshot`, a
`SnapshotIndex`, or a list of these. `plan_targets` then gives each member its repo and tag.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..references import COMMIT_SHA_RE, TeacherReferenceError, parse_hub_reference
from ..selection.report import SELECTION_JSON, SelectionReport, SnapshotScore
from ..snapshots.folders import INDEX_NAME, METADATA_NAME, Snapshot, SnapshotIndex, resolve_snapshot_reference
from .errors import HubInputError


@dataclass
class PushMember:
    """One snapshot to push, its selection score if a selection chose it, and (once planned) its target."""

    snapshot: Snapshot
    score: SnapshotScore | None = None
    repo_id: str = ""
    tag: str = ""


def resolve_push_source(source: Any) -> tuple[list[PushMember], SelectionReport | None, Path | None]:
    """(members in order, the selection report if any, the selection folder if any) of a push source."""
    if isinstance(source, SelectionReport):
        return _report_members(source, None), source, None
    if isinstance(source, Snapshot):
        return [PushMember(source)], None, None
    if isinstance(source, SnapshotIndex):
        return [PushMember(s) for s in source], None, None
    if isinstance(source, (list, tuple)):
        members = []
        for item in source:
            found, _, _ = resolve_push_source(item)
            members += found
        return members, None, None
    if not isinstance(source, (str, os.PathLike)):
        raise HubInputError(f"cannot push {type(source).__name__}: give a SelectionReport, a selection folder, a "
                            "snapshot folder, a snapshot dir (with index.json), or a list of snapshots")
    return _path_members(source)


def _path_members(source: str | os.PathLike) -> tuple[list[PushMember], SelectionReport | None, Path | None]:
    path = Path(source).expanduser()
    if path.is_file() and path.name == SELECTION_JSON:
        path = path.parent
    if (path / SELECTION_JSON).is_file():
        report = SelectionReport.load(path)
        return _report_members(report, path), report, path
    if (path / METADATA_NAME).is_file():
        return [PushMember(Snapshot.read(path))], None, None
    if (path / INDEX_NAME).is_file() or (path / "snapshots" / INDEX_NAME).is_file():
        return [PushMember(s) for s in SnapshotIndex.load(path)], None, None
    snapshot = resolve_snapshot_reference(str(source)) if not path.exists() else None
    if snapshot is not None:
        return [PushMember(snapshot)], None, None
    raise HubInputError(f"{source} is neither a selection folder ({SELECTION_JSON}), a snapshot folder "
                        f"({METADATA_NAME}), a snapshot dir ({INDEX_NAME}) nor '<snapshot_dir>:<name>'")


def _snapshot_at(path: Path) -> Snapshot | None:
    return Snapshot.read(path) if (path / METADATA_NAME).is_file() else None


def _report_members(report: SelectionReport, folder: Path | None) -> list[PushMember]:
    """The selected snapshots, found where the report says, relative to its folder, or beside the run's selection."""
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
        members.append(PushMember(snapshot, score))
    return members


def check_repo_id(repo_id: str) -> None:
    """Refuse a repo id the Hub would refuse, before any request."""
    try:
        if not isinstance(repo_id, str) or repo_id.count("/") != 1:
            raise HFValidationError("it must be 'owner/name'")
        validate_repo_id(repo_id)
        if parse_hub_reference(repo_id).repo_id != repo_id:
            raise HFValidationError("it must be 'owner/name', without '@revision' or ':subfolder'")
    except (HFValidationError, TeacherReferenceError) as e:
        raise HubInputError(f"{repo_id!r} is not a valid Hub repo id ({e}); write OWNER/NAME with letters, digits, "
                            "'-', '_' and '.', no '--' or '..', at most 96 characters") from None


def plan_targets(members: list[PushMember], repo_id: str, as_revisions: bool, revision_prefix: str) -> None:
    """Set each member's repo and tag: one snapshot to `repo_id`; several to `<repo_id>-<name>` each, or
    with `as_revisions` all to `repo_id`; tags `<revision_prefix><name>`."""
    check_repo_id(repo_id)
    names = [m.snapshot.name for m in members]
    if len(set(names)) != len(names):
        raise HubInputError(f"two snapshots to push share a name ({names}); push them to different repos")
    for m in members:
        m.repo_id = repo_id if as_revisions or len(members) == 1 else f"{repo_id}-{m.snapshot.name}"
        m.tag = f"{revision_prefix}{m.snapshot.name}"
        check_repo_id(m.repo_id)
        if not re.fullmatch(r"[\w.\-/]+", m.tag) or m.tag.startswith("refs/") or COMMIT_SHA_RE.fullmatch(m.tag):
            raise HubInputError(f"revision_prefix {revision_prefix!r} makes an invalid tag {m.tag!r}")


__all__ = ["PushMember", "check_repo_id", "plan_targets", "resolve_push_source"]
