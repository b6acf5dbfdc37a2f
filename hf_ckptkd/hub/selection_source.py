"""What `select_teachers("owner/name", probe, ...)` scores in a Hub repo: its revisions, the folders at a
revision, or the commits of a branch; registered with the selector when `hf_ckptkd.hub` is imported.

- `revisions="step*"`: branches and tags (`revisions.py`);
- `subfolders="checkpoint-*"`: folders at the repo's main branch, at `owner/name@revision`, or at
  each revision `revisions=` names (`subfolders.py`);
- `commits="all"` or `commits=N`: the commits of main (or of `owner/name@branch`) that change the
  weights at the root (`commits.py`); a branch's history, so not combined with the other two.
"""

from __future__ import annotations

from typing import Any

from ..selection.candidates import CandidateSet, register_candidate_source
from .candidates import HubCandidate
from .commits import hub_commits
from .errors import HubInputError, endpoint
from .revisions import hub_revisions, repo_of
from .subfolders import hub_subfolders

REQUESTS = ("revisions", "subfolders", "commits")


def hub_candidates(source: str, *, revisions: Any = None, subfolders: Any = None, commits: Any = None,
                   token: str | bool | None = None) -> list[HubCandidate]:
    """The candidates of the Hub repo `source` (`owner/name[@revision]`) that the request names."""
    repo_id, at = repo_of(source)
    if commits is not None:
        if revisions is not None or subfolders is not None:
            raise HubInputError(f"commits= scores the history of one branch of {repo_id}, so it does not combine with "
                                f"{'revisions=' if revisions is not None else 'subfolders='}: give the branch as "
                                f"'{repo_id}@<branch>' with commits=, or drop commits=")
        return hub_commits(source, commits, token=token)
    if subfolders is None:
        return hub_revisions(source, revisions, token=token)
    if revisions is None:
        return hub_subfolders(source, subfolders, token=token)
    if at is not None:
        raise HubInputError(f"{source!r} and revisions={revisions!r} both name revisions; give the repo as "
                            f"{repo_id!r} with revisions=, or {source!r} alone with subfolders=")
    candidates = []
    for r in hub_revisions(repo_id, revisions, token=token):  # the folders at each revision, revision by revision
        candidates += hub_subfolders(repo_id, subfolders, revision=r.revision, commit=r.commit, token=token)
    return candidates


def hub_candidate_source(source: Any, request: dict[str, Any], token: Any) -> CandidateSet | None:
    """The selector's Hub source: `"owner/name[@revision]"` with revisions=, subfolders= or commits= (None:
    not a Hub request)."""
    asked = {key: request.get(key) for key in REQUESTS if request.get(key) is not None}
    if not asked or not isinstance(source, str):
        return None
    candidates = hub_candidates(source, token=token, **asked)
    repo_id, _ = repo_of(source)
    described = {"hub": {"endpoint": endpoint(), "repo_id": repo_id, "source": source,
                         **{key: "all" if value is True else value for key, value in asked.items()},
                         "pinned": {c.name[len(repo_id):].lstrip("@:"): c.commit for c in candidates}}}
    return CandidateSet(list(candidates), None, described)


register_candidate_source(hub_candidate_source)

__all__ = ["REQUESTS", "hub_candidate_source", "hub_candidates"]
