"""A Hub model repo's published revisions as selection candidates: `select_teachers("owner/name", probe,
revisions="step*")`.

Many repos publish a training run's intermediate checkpoints as branches or tags (Pythia's
`step1000` … `step143000`, `checkpoint-*` branches of fine-tuning runs, hf-ckptkd's own
`push_teachers_to_hub(..., as_revisions=True)`). `hub_revisions(repo_id, revisions)` lists the
repo's refs (`HfApi.list_repo_refs`), keeps those the request names, and orders them by the number
in their names (`step1000`, `checkpoint-500`, `epoch-0012`), else by commit date. Refs that point
to one commit are one candidate (named after the first in that order; the others are recorded as
its aliases), since scoring the same weights twice says nothing.

Each `HubRevision` is pinned to the commit its ref pointed to when listed, downloads only the files
loading needs (`LOAD_PATTERNS`: config, safetensors weights, snapshot.json, image processor and
tokenizer files) into the ordinary Hub cache, and loads with the family's own loader
(`hf_ckptkd.models.folders.load_model`). With a `snapshot.json` (a repo pushed by hf-ckptkd) the weights are
checked against its SHA-256 and its epoch, step and metrics are used; a third-party revision has
none, so it is loaded without that check and the report records its commit id instead and says so.

Importing this module registers the Hub source with the selector (`register_candidate_source`),
which is how `select_teachers` reaches it without importing the Hub layer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import RevisionNotFoundError
from safetensors import SafetensorError
from torch import nn

from ..models.folders import load_model
from ..models.build import ModelSpecError
from ..references import TeacherReferenceError, parse_hub_reference
from ..selection.candidates import CandidateSet, register_candidate_source
from ..selection.errors import UnloadableCandidateError
from ..snapshots.folders import METADATA_NAME, Snapshot, SnapshotError
from .errors import HubInputError, endpoint, repo_errors

# What loading a model needs, and nothing else a checkpoint repo may hold (optimizer states,
# pickled weights, other formats, logs, images).
LOAD_PATTERNS = (
    "config.json", "*.safetensors", "model.safetensors.index.json", METADATA_NAME, "preprocessor_config.json",
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "added_tokens.json",
)
# The training position a ref's name gives: `step1000`, `global_step500`, `checkpoint-500`,
# `iter_2000`, `epoch-0012`, also inside longer names such as OLMo's `step1000-tokens4B`.
POSITION_RE = re.compile(r"(?:^|[^a-z])(?P<kind>epoch|step|checkpoint|ckpt|iter|iteration)[-_]?(?P<n>\d+)",
                         re.IGNORECASE)
ALL_REVISIONS = ("all", True)


@dataclass
class HubRevision:
    """One revision of a Hub repo, pinned to its commit, as a selection candidate (`ModelCandidate`).

    `revision` is the branch or tag name, `commit` the commit it pointed to when listed, `aliases`
    the other refs at that commit. `epoch` and `step` come from the name until loading reads them
    from `snapshot.json`, when the revision has one.
    """

    repo_id: str
    revision: str
    commit: str
    kind: str = "branch"  # or "tag"
    aliases: list[str] = field(default_factory=list)
    date: str | None = None
    token: str | bool | None = field(default=None, repr=False)  # never shown
    epoch: float | None = None
    step: int | None = None
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        match = POSITION_RE.search(self.revision)
        if match and self.epoch is None and self.step is None:
            n = int(match["n"])
            if match["kind"].lower() == "epoch":
                self.epoch = float(n)
            else:
                self.step = n
        self.metadata = {"reference": self.reference, "repo_id": self.repo_id, "revision": self.revision,
                         "commit": self.commit, **({"aliases": list(self.aliases)} if self.aliases else {}),
                         **self.metadata}

    @property
    def name(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    @property
    def reference(self) -> str:
        """`owner/name@revision`: what `load_teachers` and `distill --teachers` take."""
        return self.name

    @property
    def position(self) -> float | None:
        """The number in the name that orders revisions (a step, or an epoch), if any."""
        return self.step if self.step is not None else self.epoch

    @property
    def is_init(self) -> bool:
        if self.step is not None:
            return self.step == 0
        return self.epoch is not None and self.epoch == 0

    def download(self) -> Path:
        """The files loading needs, at the pinned commit, from the cache or the Hub."""
        with repo_errors(self.repo_id, self.token, f"downloading {self.name}"):
            try:
                folder = snapshot_download(self.repo_id, revision=self.commit, allow_patterns=list(LOAD_PATTERNS),
                                           token=self.token)
            except RevisionNotFoundError:  # the commit is gone: the repo's history was rewritten since listing
                raise UnloadableCandidateError(f"commit {self.commit} is no longer on {endpoint()}") from None
        self.path = folder
        return Path(folder)

    def load_model(self) -> nn.Module:
        folder = self.download()
        if not (folder / "config.json").is_file():
            raise UnloadableCandidateError(f"it holds no model (no config.json at commit {self.commit})")
        if (folder / METADATA_NAME).is_file():
            try:
                snapshot = Snapshot.read(folder)
                snapshot.verify()
            except SnapshotError as e:
                raise UnloadableCandidateError(f"its {METADATA_NAME} does not match its weights ({e})") from None
            self.epoch, self.step = float(snapshot.epoch), int(snapshot.global_step)
            self.metadata.update(verified=True, final=bool(snapshot.final))
            if snapshot.accuracy is not None:
                self.metadata["eval_accuracy"] = float(snapshot.accuracy)
        else:
            self.metadata["verified"] = False
            self.notes = [f"no {METADATA_NAME} (a third-party checkpoint), so its weights were loaded without the "
                          f"SHA-256 check; it is pinned to commit {self.commit} instead"]
        try:
            return load_model(folder)
        except (ModelSpecError, SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
            raise UnloadableCandidateError(f"its model could not be loaded ({type(e).__name__}: {e}); hf-ckptkd loads "
                                           "timm and transformers models saved with safetensors") from None


def _wanted(names: list[str], revisions: Any, repo_id: str) -> list[str]:
    """The ref names `revisions` asks for (a glob, a list of names, or all), in the listing's order."""
    if revisions in ALL_REVISIONS:
        return list(names)
    if isinstance(revisions, str):
        chosen = [n for n in names if fnmatchcase(n, revisions)]
        if not chosen:
            raise HubInputError(f"no revision of {repo_id} matches {revisions!r}; it has {_listing(names)}. Pass a "
                                "glob that matches some of them (e.g. 'step*'), a list of names, or revisions='all'")
        return chosen
    if isinstance(revisions, (list, tuple)) and revisions and all(isinstance(r, str) for r in revisions):
        missing = [r for r in revisions if r not in names]
        if missing:
            raise HubInputError(f"{repo_id} has no revision {', '.join(map(repr, missing))}; it has {_listing(names)}")
        return list(dict.fromkeys(revisions))
    raise HubInputError(f"revisions={revisions!r} for {repo_id}: give a glob such as 'step*', a non-empty list of "
                        "branch or tag names, or 'all' (every branch and tag)")


def _listing(names: list[str], limit: int = 30) -> str:
    if not names:
        return "no branches or tags"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def hub_revisions(repo_id: str, revisions: Any = "all", *, token: str | bool | None = None) -> list[HubRevision]:
    """The revisions of the model repo `repo_id` that `revisions` names, in training order.

    `revisions` is a glob over branch and tag names (`"step*"`), a list of names, or `"all"` /
    True. Ordered by the number in each name (`step1000`, `checkpoint-500`, `epoch-0012`), the
    others after them by commit date; refs at the same commit are one candidate.
    """
    try:
        parsed, pinned = parse_hub_reference(repo_id)
    except TeacherReferenceError as e:
        raise HubInputError(str(e)) from None
    if pinned is not None:
        raise HubInputError(f"{repo_id!r}: with revisions= give the repo without '@{pinned}' (e.g. "
                            f"select_teachers({parsed!r}, probe, revisions=[{pinned!r}]))")
    api = HfApi(token=token)
    with repo_errors(repo_id, token, f"listing the revisions of {repo_id}"):
        refs = api.list_repo_refs(repo_id)
    found = [(b.name, b.target_commit, "branch") for b in refs.branches] + \
        [(t.name, t.target_commit, "tag") for t in refs.tags]
    names = [name for name, _, _ in found]
    wanted = set(_wanted(names, revisions, repo_id))
    listed: list[HubRevision] = []
    for name, commit, kind in found:
        if name in wanted:
            # A tag named like a branch would load the branch: name it by its full ref instead.
            revision = f"refs/tags/{name}" if kind == "tag" and names.count(name) > 1 else name
            listed.append(HubRevision(repo_id, revision, commit, kind, token=token))
    for r in listed:
        if r.position is None:
            with repo_errors(repo_id, token, f"reading the date of {r.name}"):
                r.date = api.list_repo_commits(repo_id, revision=r.commit)[0].created_at.isoformat()
    listed.sort(key=lambda r: (r.position is None, r.position or 0, r.date or "", r.revision))
    by_commit: dict[str, HubRevision] = {}
    for r in listed:
        if r.commit in by_commit:
            by_commit[r.commit].aliases.append(r.revision)
            by_commit[r.commit].metadata["aliases"] = list(by_commit[r.commit].aliases)
        else:
            by_commit[r.commit] = r
    return list(by_commit.values())


def hub_candidate_source(source: Any, revisions: Any, token: Any) -> CandidateSet | None:
    """The selector's Hub source: `"owner/name"` with `revisions` (None: not a Hub request)."""
    if revisions is None or not isinstance(source, str):
        return None
    candidates = hub_revisions(source, revisions, token=token)
    described = {"hub": {"endpoint": endpoint(), "repo_id": source, "revisions": revisions if revisions is not True
                         else "all", "commits": {c.revision: c.commit for c in candidates}}}
    return CandidateSet(list(candidates), None, described)


register_candidate_source(hub_candidate_source)

__all__ = ["ALL_REVISIONS", "HubRevision", "LOAD_PATTERNS", "hub_candidate_source", "hub_revisions"]
