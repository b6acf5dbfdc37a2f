"""A model inside a Hub repo as a selection candidate: `HubCandidate`, pinned to one commit.

Three sources make them (`revisions.py`, `subfolders.py`, `commits.py`): a branch or tag
(`owner/name@step1000`), a folder at a revision (`owner/name:checkpoint-500`, what
`Trainer(push_to_hub=True, hub_strategy="all_checkpoints")` uploads), and a commit of a branch's
history (`owner/name@1a2b3c4`, one per save with `hub_strategy="every_save"`). Each is named by
the teacher reference that loads it again (`hf_ckptkd.references`).

A candidate downloads only the files of its folder that loading needs (`LOAD_PATTERNS`: config,
safetensors weights, snapshot.json, a Trainer's trainer_state.json, image processor and tokenizer;
never optimizer or scheduler states, RNG states, `training_args.bin` or other weight formats), at
its pinned commit, into the ordinary Hub cache. With a `snapshot.json` (pushed by hf-ckptkd) the
weights are checked against its SHA-256 and its epoch, step and metrics are used; a `Trainer`
checkpoint's `trainer_state.json` gives its step, epoch and the evaluation metrics recorded at
that step; a checkpoint with neither is loaded without a check, which the report notes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, RepoFile, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError
from safetensors import SafetensorError
from torch import nn

from ..models.folders import load_model
from ..models.build import ModelSpecError
from ..references import format_hub_reference
from ..selection.errors import UnloadableCandidateError
from ..snapshots.folders import METADATA_NAME, Snapshot, SnapshotError
from .errors import HubInputError, endpoint, repo_errors

# What loading a model needs (file names inside its folder), and nothing else a checkpoint holds.
LOAD_PATTERNS = (
    "config.json", "*.safetensors", "model.safetensors.index.json", METADATA_NAME, "trainer_state.json",
    "preprocessor_config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model",
    "spiece.model", "added_tokens.json",
)
TRAINER_STATE = "trainer_state.json"
# The training position a name gives: `step1000`, `global_step500`, `checkpoint-500`, `iter_2000`,
# `epoch-0012`, also inside longer names such as OLMo's `step1000-tokens4B`.
POSITION_RE = re.compile(r"(?:^|[^a-z])(?P<kind>epoch|step|checkpoint|ckpt|iter|iteration)[-_]?(?P<n>\d+)",
                         re.IGNORECASE)
ALL = ("all", True)


def position_in(name: str | None) -> tuple[str, int] | None:
    """("epoch" or "step", the number) that a revision's or folder's name gives, or None."""
    match = POSITION_RE.search((name or "").rsplit("/", 1)[-1])
    if match is None:
        return None
    return ("epoch" if match["kind"].lower() == "epoch" else "step"), int(match["n"])


def loads_with(filename: str) -> bool:
    """Whether a file of a model's folder is one that loading needs."""
    return any(fnmatchcase(filename, pattern) for pattern in LOAD_PATTERNS)


@dataclass
class HubCandidate:
    """A model in a Hub repo, pinned to a commit, as a selection candidate (`ModelCandidate`).

    `revision` is how the candidate names where it is (a branch or tag, a short commit id, or None
    for the default branch), `commit` the full commit it is pinned to, `subfolder` the folder
    holding the model (None: the repo's root), `aliases` other refs at the same commit. `epoch` and
    `step` come from the name until loading reads them from `snapshot.json` or `trainer_state.json`.
    `files` (path in the repo -> size) is the folder's listing when the source already has it.
    """

    repo_id: str
    commit: str
    revision: str | None = None
    subfolder: str | None = None
    kind: str = "branch"  # "tag", "commit" or "subfolder"
    aliases: list[str] = field(default_factory=list)
    date: str | None = None
    token: str | bool | None = field(default=None, repr=False)  # never shown
    epoch: float | None = None
    step: int | None = None
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: dict[str, int] | None = field(default=None, repr=False)

    def __post_init__(self):
        position = position_in(self.subfolder or self.revision)
        if position and self.epoch is None and self.step is None:
            if position[0] == "epoch":
                self.epoch = float(position[1])
            else:
                self.step = position[1]
        self.metadata = {"reference": self.reference, "repo_id": self.repo_id, "revision": self.revision,
                         "commit": self.commit, **({"subfolder": self.subfolder} if self.subfolder else {}),
                         **({"aliases": list(self.aliases)} if self.aliases else {}), **self.metadata}

    @property
    def name(self) -> str:
        return format_hub_reference(self.repo_id, self.revision, self.subfolder)

    @property
    def reference(self) -> str:
        """`owner/name[@revision][:subfolder]`: what `load_teachers` and `distill --teachers` take."""
        return self.name

    @property
    def position(self) -> float | None:
        """The number in the name that orders candidates (a step, or an epoch), if any."""
        return self.step if self.step is not None else self.epoch

    @property
    def is_init(self) -> bool:
        if self.step is not None:
            return self.step == 0
        return self.epoch is not None and self.epoch == 0

    def _where(self) -> str:
        return f"{self.subfolder}/ at commit {self.commit}" if self.subfolder else f"commit {self.commit}"

    def listing(self) -> dict[str, int]:
        """The files directly in the candidate's folder (path in the repo -> size), listed once."""
        if self.files is None:
            with repo_errors(self.repo_id, self.token, f"listing the files of {self.name}"):
                try:
                    entries = HfApi(token=self.token).list_repo_tree(self.repo_id, self.subfolder, revision=self.commit)
                    self.files = {e.path: e.size for e in entries if isinstance(e, RepoFile)}
                except (RevisionNotFoundError, EntryNotFoundError):  # history rewritten, or the folder is gone
                    raise UnloadableCandidateError(f"{self._where()} is no longer on {endpoint()}") from None
        return self.files

    def needed_files(self) -> list[str]:
        """The paths in the repo that loading downloads; `UnloadableCandidateError` when no model is there."""
        files = self.listing()
        names = sorted(p.rsplit("/", 1)[-1] for p in files)
        held = f"it holds {', '.join(names[:12])}{' …' if len(names) > 12 else ''}" if names else "it is empty"
        if "config.json" not in names:
            raise UnloadableCandidateError(f"it holds no model (no config.json in {self._where()}; {held})")
        if not any(n.endswith(".safetensors") for n in names):
            raise UnloadableCandidateError(f"it holds no safetensors weights ({self._where()}; {held}); hf-ckptkd "
                                           "loads safetensors only (Trainer writes them unless save_safetensors=False)")
        return sorted(p for p in files if loads_with(p.rsplit("/", 1)[-1]))

    def download(self) -> Path:
        """The files loading needs, at the pinned commit, from the cache or the Hub; their folder."""
        wanted = self.needed_files()
        with repo_errors(self.repo_id, self.token, f"downloading {self.name}"):
            try:
                root = snapshot_download(self.repo_id, revision=self.commit, allow_patterns=wanted, token=self.token)
            except RevisionNotFoundError:  # the commit is gone: the repo's history was rewritten since listing
                raise UnloadableCandidateError(f"commit {self.commit} is no longer on {endpoint()}") from None
        folder = Path(root) / self.subfolder if self.subfolder else Path(root)
        self.path = str(folder)
        return folder

    def load_model(self) -> nn.Module:
        folder = self.download()
        if (folder / METADATA_NAME).is_file():
            self._read_snapshot(folder)
        else:
            trainer_state = self._read_trainer_state(folder)
            self.metadata["verified"] = False
            self.notes = [f"no {METADATA_NAME} (a third-party checkpoint{', Trainer-saved' if trainer_state else ''}), "
                          f"so its weights were loaded without the SHA-256 check; it is pinned to commit "
                          f"{self.commit} instead"]
        try:
            return load_model(folder)
        except (ModelSpecError, SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
            raise UnloadableCandidateError(f"its model could not be loaded ({type(e).__name__}: {e}); hf-ckptkd loads "
                                           "timm and transformers models saved with safetensors") from None

    def _read_snapshot(self, folder: Path) -> None:
        try:
            snapshot = Snapshot.read(folder)
            snapshot.verify()
        except SnapshotError as e:
            raise UnloadableCandidateError(f"its {METADATA_NAME} does not match its weights ({e})") from None
        self.epoch, self.step = float(snapshot.epoch), int(snapshot.global_step)
        self.metadata.update(verified=True, final=bool(snapshot.final))
        if snapshot.accuracy is not None:
            self.metadata["eval_accuracy"] = float(snapshot.accuracy)

    def _read_trainer_state(self, folder: Path) -> bool:
        """Step, epoch and the evaluation metrics at that step from a Trainer checkpoint's trainer_state.json."""
        path = folder / TRAINER_STATE
        if not path.is_file():
            return False
        try:
            state = json.loads(path.read_text())
            step, epoch = int(state["global_step"]), state.get("epoch")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            self.notes.append(f"its {TRAINER_STATE} could not be read, so its step comes from its name")
            return False
        self.step, self.epoch = step, float(epoch) if epoch is not None else self.epoch
        for entry in state.get("log_history") or []:
            if entry.get("step") == step:
                self.metadata.update({k: float(v) for k, v in entry.items()
                                      if k.startswith("eval_") and isinstance(v, (int, float))})
        self.metadata["trainer_state"] = True
        return True


def pick_names(names: list[str], request: Any, *, what: str, argument: str, example: str, repo_id: str,
               where: str = "") -> list[str]:
    """The names `request` asks for among `names` (a glob, a list of names, or all), in the listing's order.

    `what` says what the names are ("revision", "folder"), `argument` the argument's name, `example` a
    glob to suggest, `where` where they were listed (e.g. " at main"); the errors list what there is.
    """
    if request in ALL:
        return list(names)
    if isinstance(request, str):
        chosen = [n for n in names if fnmatchcase(n, request)]
        if not chosen:
            raise HubInputError(f"no {what} of {repo_id}{where} matches {request!r}; it has {listing(names, what)}. Pass "
                                f"a glob that matches some of them (e.g. {example!r}), a list of names, or "
                                f"{argument}='all'")
        return chosen
    if isinstance(request, (list, tuple)) and request and all(isinstance(r, str) for r in request):
        missing = [r for r in request if r not in names]
        if missing:
            raise HubInputError(f"{repo_id}{where} has no {what} {', '.join(map(repr, missing))}; it has "
                                f"{listing(names, what)}")
        return list(dict.fromkeys(request))
    raise HubInputError(f"{argument}={request!r} for {repo_id}: give a glob such as {example!r}, a non-empty list of "
                        f"{what} names, or 'all'")


def listing(names: list[str], what: str, limit: int = 30) -> str:
    if not names:
        return "no branches or tags" if what == "revision" else f"no {what}s"
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def in_training_order(candidates: list[HubCandidate]) -> list[HubCandidate]:
    """By the step (or epoch) in each name, those without one after them by date, then by name."""
    return sorted(candidates, key=lambda c: (c.position is None, c.position or 0, c.date or "", c.name))


__all__ = ["ALL", "HubCandidate", "LOAD_PATTERNS", "POSITION_RE", "in_training_order", "listing", "loads_with",
           "pick_names", "position_in"]
