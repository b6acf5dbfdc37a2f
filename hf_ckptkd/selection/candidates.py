"""What the selector chooses among: models it can load, named, in training order.

A `ModelCandidate` is anything with a name, a teacher reference, a place in training order and a
`load_model()`: a snapshot of a local run (`SnapshotCandidate`) or a model in a Hub repo
(`hf_ckptkd.hub.candidates.HubCandidate`: a revision, a folder or a commit). The selector only
asks these questions, so it never branches on where a candidate comes from.

`resolve_candidates(source, token=..., revisions=..., subfolders=..., commits=...)` turns what the
user passed to `select_teachers` into a `CandidateSet`. Sources are a registry: `hf_ckptkd.hub`
registers the Hub repo source (it sits above this package, which therefore never imports it); the
local forms (a `SnapshotIndex`, a snapshot dir, `Snapshot`s, `ModelCandidate`s) are the fallback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import nn

from ..snapshots.folders import Snapshot, SnapshotIndex
from .errors import SelectionError


@runtime_checkable
class ModelCandidate(Protocol):
    """A model the selector can score.

    Attributes:
        name: unique among the candidates; the report names the candidate so.
        reference: the teacher reference that loads it again (`load_teachers`, `distill --teachers`).
        epoch, step: its place in training, if known (either may be None).
        is_init: whether it is the initialisation (scored, never chosen).
        path: the local folder holding its files once loaded (for e.g. `preprocessor_config.json`).
        metadata: carried into the report's scores (`SnapshotScore.metadata`).
        notes: sentences the report should carry about this candidate (e.g. how it was verified).

    `load_model()` returns the model; it may fill in `path`, `epoch`, `step`, `metadata` and
    `notes`, which the selector reads after loading. It raises `UnloadableCandidateError` when
    this one candidate cannot be loaded (the selector skips it with a warning), anything else when
    no candidate could be (the selector stops).
    """

    name: str
    reference: str
    epoch: float | None
    step: int | None
    path: str | None
    metadata: dict[str, Any]
    notes: list[str]

    @property
    def is_init(self) -> bool: ...

    def load_model(self) -> nn.Module: ...


@dataclass
class SnapshotCandidate:
    """A snapshot of a local run as a `ModelCandidate`; its weights are checked against snapshot.json."""

    snapshot: Snapshot
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.snapshot.name

    @property
    def reference(self) -> str:
        return self.snapshot.reference

    @property
    def epoch(self) -> float:
        return float(self.snapshot.epoch)

    @property
    def step(self) -> int:
        return int(self.snapshot.global_step)

    @property
    def is_init(self) -> bool:
        return self.snapshot.global_step == 0

    @property
    def path(self) -> str:
        return str(self.snapshot.path)

    @property
    def metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"final": bool(self.snapshot.final)}
        if self.snapshot.accuracy is not None:
            metadata["eval_accuracy"] = float(self.snapshot.accuracy)
        return metadata

    def load_model(self) -> nn.Module:
        return self.snapshot.load_model(verify=True)


@dataclass
class CandidateSet:
    """The candidates of one selection, in training order, and where they come from.

    `snapshot_dir` is the local folder they share (None for other sources); `source` describes the
    source for the report's `extra["source"]` (e.g. the Hub repo, the pattern and the commits).
    """

    candidates: list[ModelCandidate]
    snapshot_dir: str | None = None
    source: dict[str, Any] = field(default_factory=dict)


# A source takes (what the user passed, the request: {"revisions": ..., "subfolders": ..., "commits": ...}
# with None for what was not asked, token) and returns its candidates, or None when the input is not
# of its kind. The first source that answers wins.
CandidateSource = Callable[[Any, dict[str, Any], Any], "CandidateSet | None"]
CANDIDATE_SOURCES: list[CandidateSource] = []


def register_candidate_source(source: CandidateSource) -> CandidateSource:
    """Add a candidate source (idempotent, so re-importing a module does not register it twice)."""
    if source not in CANDIDATE_SOURCES:
        CANDIDATE_SOURCES.append(source)
    return source


def resolve_candidates(source: Any, *, token: Any = None, **request: Any) -> CandidateSet:
    """The `CandidateSet` that `source` names (see `select_teachers` for the forms); `request` holds
    `revisions`, `subfolders` and `commits`, which pick candidates inside a Hub repo."""
    for resolver in CANDIDATE_SOURCES:
        found = resolver(source, request, token)
        if found is not None:
            return found
    asked = [f"{key}={value!r}" for key, value in request.items() if value is not None]
    if asked:
        raise SelectionError(f"{', '.join(asked)} selects among the checkpoints of a Hub model repo, so the source must "
                             f"be 'owner/name', got {source!r}; drop {asked[0].split('=')[0]}= to select among a local "
                             "run's snapshots")
    return _local_candidates(source)


def _local_candidates(source: Any) -> CandidateSet:
    if isinstance(source, (str, os.PathLike)):
        source = SnapshotIndex.load(source)
    if isinstance(source, SnapshotIndex):
        return CandidateSet([SnapshotCandidate(s) for s in source], str(source.snapshot_dir))
    if isinstance(source, (Snapshot, ModelCandidate)):
        source = [source]
    items = list(source) if isinstance(source, Iterable) else None
    if items is None or not all(isinstance(s, (Snapshot, ModelCandidate)) for s in items):
        raise TypeError("snapshots must be a SnapshotIndex, a snapshot dir path, a list of Snapshot objects (or of "
                        "ModelCandidates), or a Hub repo 'owner/name' with revisions=")
    candidates = [SnapshotCandidate(s) if isinstance(s, Snapshot) else s for s in items]
    parents = {str(s.path.parent) for s in items if isinstance(s, Snapshot)}
    shared = parents.pop() if len(parents) == 1 and all(isinstance(s, Snapshot) for s in items) else None
    return CandidateSet(candidates, shared)


__all__ = ["CANDIDATE_SOURCES", "CandidateSet", "CandidateSource", "ModelCandidate", "SnapshotCandidate",
           "register_candidate_source", "resolve_candidates"]
