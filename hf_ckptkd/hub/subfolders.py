"""The folders of a Hub model repo as selection candidates: `select_teachers("owner/name", probe,
subfolders="checkpoint-*")`.

`Trainer(push_to_hub=True, hub_strategy="all_checkpoints")` uploads every checkpoint it saves as a
folder `checkpoint-<step>/` of one repo's main branch (model, config, and the optimizer, scheduler
and RNG states that resuming needs). `hub_subfolders(repo_id, subfolders, revision=...)` lists the
repo's tree once at the revision's commit (`HfApi.list_repo_tree(recursive=True)`), keeps the
folders the request names (a glob over folder paths, a list, or "all": every folder holding a
`config.json` or safetensors weights) and orders them by the step in their names. Each is a
`HubCandidate` named `owner/name[@revision]:<folder>`, pinned to that commit, which downloads only
what loading needs and reads the step, epoch and recorded evaluation metrics from the folder's
`trainer_state.json` (see `candidates.py`).
"""

from __future__ import annotations

import posixpath
from typing import Any

from huggingface_hub import HfApi, RepoFile
from huggingface_hub.errors import RevisionNotFoundError

from .candidates import ALL, HubCandidate, in_training_order, pick_names, position_in
from .errors import HubInputError, repo_errors
from .revisions import repo_of


def hub_subfolders(repo_id: str, subfolders: Any = "all", *, revision: str | None = None, commit: str | None = None,
                   token: str | bool | None = None) -> list[HubCandidate]:
    """The folders of the model repo `repo_id` (at `revision`, default its main branch) that `subfolders`
    names, in training order.

    `subfolders` is a glob over folder paths (`"checkpoint-*"`), a list of folder paths, or `"all"` /
    True (every folder that holds a `config.json` or safetensors weights). `repo_id` may carry the
    revision itself (`owner/name@v1`). `commit` pins a revision already resolved (by `hub_revisions`).
    """
    repo_id, at = repo_of(repo_id)
    if at is not None and revision is not None and at != revision:
        raise HubInputError(f"{repo_id}@{at} and revision={revision!r} name two revisions; give one")
    revision = revision or at
    api = HfApi(token=token)
    where = f" at {revision}" if revision else ""
    with repo_errors(repo_id, token, f"listing the folders of {repo_id}{where}"):
        try:
            commit = commit or api.model_info(repo_id, revision=revision).sha
            files = {e.path: e.size for e in api.list_repo_tree(repo_id, revision=commit, recursive=True)
                     if isinstance(e, RepoFile)}
        except RevisionNotFoundError:
            raise HubInputError(f"{repo_id} has no revision {revision!r} (branch, tag or commit); give one it has, "
                                "or leave the revision out for its main branch") from None
    by_folder: dict[str, dict[str, int]] = {}
    for path, size in files.items():
        folder = posixpath.dirname(path)
        by_folder.setdefault(folder, {})[path] = size
        while folder:  # the folders above it can be named too
            folder = posixpath.dirname(folder)
            by_folder.setdefault(folder, {})
    folders = sorted((f for f in by_folder if f), key=_folder_order)
    models = [f for f in folders if any(p.endswith(("/config.json", ".safetensors")) for p in by_folder[f])]
    request = subfolders
    if request in ALL:
        if not models:
            raise HubInputError(f"{repo_id}{where} has no folder holding a model (config.json or safetensors weights); "
                                f"its folders: {', '.join(folders[:30]) or 'none'}. For checkpoints pushed as "
                                "branches use revisions=, as commits of one branch commits=")
        request = models
    elif isinstance(request, (list, tuple)):
        request = [str(s).strip("/") for s in request]
    chosen = pick_names(folders, request, what="folder", argument="subfolders", example="checkpoint-*",
                        repo_id=repo_id, where=where)
    return in_training_order([HubCandidate(repo_id, commit, revision, subfolder=folder, kind="subfolder", token=token,
                                           files=by_folder[folder]) for folder in chosen])


def _folder_order(folder: str) -> tuple:
    """Folders listed in training order (checkpoint-500 before checkpoint-1000), the others by name."""
    position = position_in(folder)
    return (position is None, position[1] if position else 0, folder)


__all__ = ["hub_subfolders"]
