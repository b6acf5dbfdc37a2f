"""A Hub model repo's published revisions as selection candidates: `select_teachers("owner/name", probe,
revisions="step*")`.

Many repos publish a training run's intermediate checkpoints as branches or tags (Pythia's
`step1000` … `step143000`, `checkpoint-*` branches of fine-tuning runs, hf-ckptkd's own
`push_teachers_to_hub(..., as_revisions=True)` and snapshots pushed while training).
`hub_revisions(repo_id, revisions)` lists the repo's refs (`HfApi.list_repo_refs`), keeps those the
request names, and orders them by the number in their names (`step1000`, `checkpoint-500`,
`epoch-0012`), else by commit date. Refs that point to one commit are one candidate (named after
the first in that order; the others are recorded as its aliases), since scoring the same weights
twice says nothing. Each is a `HubCandidate` pinned to the commit its ref pointed to when listed.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import HfApi

from ..references import TeacherReferenceError, parse_hub_reference
from .candidates import HubCandidate, in_training_order, pick_names
from .errors import HubInputError, repo_errors


def repo_of(source: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of `owner/name[@revision]`; a subfolder is refused (the request names them)."""
    try:
        reference = parse_hub_reference(source)
    except TeacherReferenceError as e:
        raise HubInputError(str(e)) from None
    if reference.subfolder is not None:
        raise HubInputError(f"{source!r}: give the repo without ':{reference.subfolder}' and name folders with "
                            f"subfolders= (e.g. subfolders=[{reference.subfolder!r}])")
    return reference.repo_id, reference.revision


def hub_revisions(repo_id: str, revisions: Any = "all", *, token: str | bool | None = None) -> list[HubCandidate]:
    """The revisions of the model repo `repo_id` that `revisions` names, in training order.

    `revisions` is a glob over branch and tag names (`"step*"`), a list of names, or `"all"` /
    True. Ordered by the number in each name (`step1000`, `checkpoint-500`, `epoch-0012`), the
    others after them by commit date; refs at the same commit are one candidate.
    """
    parsed, pinned = repo_of(repo_id)
    if pinned is not None:
        raise HubInputError(f"{repo_id!r}: with revisions= give the repo without '@{pinned}' (e.g. "
                            f"select_teachers({parsed!r}, probe, revisions=[{pinned!r}]))")
    api = HfApi(token=token)
    with repo_errors(repo_id, token, f"listing the revisions of {repo_id}"):
        refs = api.list_repo_refs(repo_id)
    found = [(b.name, b.target_commit, "branch") for b in refs.branches] + \
        [(t.name, t.target_commit, "tag") for t in refs.tags]
    names = [name for name, _, _ in found]
    wanted = set(pick_names(names, revisions, what="revision", argument="revisions", example="step*", repo_id=repo_id))
    listed: list[HubCandidate] = []
    for name, commit, kind in found:
        if name in wanted:
            # A tag named like a branch would load the branch: name it by its full ref instead.
            revision = f"refs/tags/{name}" if kind == "tag" and names.count(name) > 1 else name
            listed.append(HubCandidate(repo_id, commit, revision, kind=kind, token=token))
    for r in listed:
        if r.position is None:
            with repo_errors(repo_id, token, f"reading the date of {r.name}"):
                r.date = api.list_repo_commits(repo_id, revision=r.commit)[0].created_at.isoformat()
    by_commit: dict[str, HubCandidate] = {}
    for r in in_training_order(listed):
        if r.commit in by_commit:
            by_commit[r.commit].aliases.append(r.revision)
            by_commit[r.commit].metadata["aliases"] = list(by_commit[r.commit].aliases)
        else:
            by_commit[r.commit] = r
    return list(by_commit.values())


__all__ = ["hub_revisions", "repo_of"]
