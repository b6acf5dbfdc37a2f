"""The commits of a Hub model repo's branch as selection candidates: `select_teachers("owner/name", probe,
commits="all")` (or the 5 most recent: `commits=5`).

`Trainer(push_to_hub=True)` with `hub_strategy="every_save"` (the default) or `"checkpoint"`
commits the model to the repo's root at every save ("Training in progress, step 500"), so the
branch's history is the run's checkpoints. `hub_commits` lists it (`HfApi.list_repo_commits`,
newest first), lists the root of each commit (`list_repo_tree`) and keeps the commits that change
the safetensors weights there: a commit that only adds a model card, the `last-checkpoint/`
folder or logs is skipped, and so is one whose weights equal its parent's. The step (or epoch)
comes from the commit title. Each candidate is pinned to its commit and named
`owner/name@<short commit id>`, a teacher reference the Hub resolves.
"""

from __future__ import annotations

import re
from typing import Any

from huggingface_hub import HfApi, RepoFile
from huggingface_hub.errors import RevisionNotFoundError

from .candidates import ALL, HubCandidate
from .errors import HubInputError, repo_errors
from .revisions import repo_of

# "Training in progress, step 500" / "epoch 3" (Trainer), "Teacher epoch-0003 (epoch 3, step 12)" (hf-ckptkd).
TITLE_POSITION_RE = re.compile(r"\b(?P<kind>step|epoch)[\s_-]*(?P<n>\d+)", re.IGNORECASE)
SHORT_SHA = 7


def _limit(commits: Any, repo_id: str) -> int | None:
    if commits in ALL:
        return None
    if isinstance(commits, str) and commits.isdigit():
        commits = int(commits)
    if isinstance(commits, bool) or not isinstance(commits, int) or commits < 1:
        raise HubInputError(f"commits={commits!r} for {repo_id}: give 'all' (every commit that changes the weights) or "
                            "a positive number of the most recent ones")
    return commits


def _weights(files: list) -> tuple:
    """What identifies the root's safetensors weights of one commit (empty when it has none)."""
    return tuple(sorted((f.path, f.lfs.sha256 if f.lfs else f.blob_id) for f in files
                        if isinstance(f, RepoFile) and "/" not in f.path and f.path.endswith(".safetensors")))


def short_ids(ids: list[str]) -> dict[str, str]:
    """The shortest prefix of at least 7 characters that tells each commit id from the others."""
    length = SHORT_SHA
    while len({i[:length] for i in ids}) < len(set(ids)):
        length += 1
    return {i: i[:length] for i in ids}


def hub_commits(repo_id: str, commits: Any = "all", *, token: str | bool | None = None) -> list[HubCandidate]:
    """The commits of `repo_id`'s branch (`owner/name@branch`, default main) that change the weights at the
    repo's root, oldest first: all of them, or the `commits` most recent."""
    repo_id, branch = repo_of(repo_id)
    limit = _limit(commits, repo_id)
    branch = branch or "main"
    api = HfApi(token=token)
    with repo_errors(repo_id, token, f"listing the commits of {repo_id}@{branch}"):
        try:
            history = api.list_repo_commits(repo_id, revision=branch)  # newest first
        except RevisionNotFoundError:
            raise HubInputError(f"{repo_id} has no branch {branch!r}; commits= walks the history of one branch "
                                "(default main)") from None
        trees = {}
        chosen = []
        for i, commit in enumerate(history):
            if limit is not None and len(chosen) == limit:
                break
            for c in history[i:i + 2]:  # this commit and its parent
                if c.commit_id not in trees:
                    trees[c.commit_id] = list(api.list_repo_tree(repo_id, revision=c.commit_id))
            weights = _weights(trees[commit.commit_id])
            parent = _weights(trees[history[i + 1].commit_id]) if i + 1 < len(history) else ()
            if weights and weights != parent:
                chosen.append(commit)
    if not chosen:
        raise HubInputError(f"none of the {len(history)} commits of {repo_id}@{branch} changes safetensors weights at "
                            "the repo's root; for checkpoints pushed as folders use subfolders=, as branches or tags "
                            "revisions=")
    short = short_ids([c.commit_id for c in history])
    candidates = []
    for c in reversed(chosen):
        position = TITLE_POSITION_RE.search(c.title or "")
        step = int(position["n"]) if position and position["kind"].lower() == "step" else None
        epoch = float(position["n"]) if position and position["kind"].lower() == "epoch" else None
        candidates.append(HubCandidate(
            repo_id, c.commit_id, short[c.commit_id], kind="commit", date=c.created_at.isoformat(), token=token,
            step=step, epoch=epoch, metadata={"branch": branch, "title": c.title},
            files={f.path: f.size for f in trees[c.commit_id] if isinstance(f, RepoFile) and "/" not in f.path}))
    return candidates


__all__ = ["hub_commits", "short_ids"]
