"""Load a teacher from the Hub: `load_hub_teacher("owner/name@revision")`, its weights verified first.

The revision (branch, tag or commit) is pinned to the commit it resolves to; the weights are
checked against the repo's `snapshot.json` when it has one (safetensors are required when it has
none), then the family's own loader reads them: `timm.create_model("hf-hub:…")` or transformers'
`AutoModelFor….from_pretrained`. `HF_HOME`, `HF_HUB_OFFLINE` and tokens work as in
`huggingface_hub`; a warm cache loads while the Hub is down.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import timm
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from torch import nn

from ..files import sha256_of
from ..models.folders import transformers_auto_class
from ..models.build import TimmForImageClassification
from ..references import COMMIT_SHA_RE, parse_hub_reference
from ..snapshots.folders import METADATA_NAME
from .errors import HubError, HubReferenceError, HubUnavailableError, download_errors

logger = logging.getLogger(__name__)

SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def load_hub_teacher(reference: str) -> nn.Module:
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
    folder = Path(config_path).parent.name  # the cache keeps each commit's files in a folder named by its SHA
    commit = folder if COMMIT_SHA_RE.fullmatch(folder) else revision
    try:
        config = json.loads(Path(config_path).read_text())
    except json.JSONDecodeError as e:
        raise HubReferenceError(f"teacher {reference!r}: its config.json is not valid JSON ({e})") from None
    _verify_weights(reference, repo_id, commit)
    try:
        return _load_model(repo_id, commit, config)
    except HubError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} holds a config.json but its model could not be "
                                f"loaded ({type(e).__name__}: {e})") from e


def hub_teacher_folder(reference: str) -> Path:
    """The folder of the Hub cache holding a Hub teacher's config and verified weights at its pinned commit
    (downloaded when missing); the folder's name is the commit."""
    repo_id, revision = parse_hub_reference(reference)
    config_path = Path(_fetch(reference, repo_id, "config.json", revision))
    commit = config_path.parent.name if COMMIT_SHA_RE.fullmatch(config_path.parent.name) else revision
    _verify_weights(reference, repo_id, commit)  # downloads the weight files it checks
    return config_path.parent


def _load_model(repo_id: str, commit: str | None, config: dict) -> nn.Module:
    """The model at `repo_id@commit` with its family's own loader (told apart by its `config.json`)."""
    if "architecture" in config:  # timm's Hub format
        hub_id = f"{repo_id}@{commit}" if commit else repo_id
        return TimmForImageClassification(timm.create_model(f"hf-hub:{hub_id}", pretrained=True))
    auto = transformers_auto_class(config, f"config.json of {repo_id}@{commit or 'main'}")
    return auto.from_pretrained(repo_id, revision=commit, use_safetensors=True)


def _fetch(reference: str, repo_id: str, filename: str, revision: str | None) -> str:
    """`hf_hub_download` with errors that name the reference and what to fix."""
    with download_errors(reference, repo_id, filename, revision):
        return hf_hub_download(repo_id, filename, revision=revision)


def _verify_weights(reference: str, repo_id: str, commit: str | None) -> None:
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
        for weights in SAFETENSORS_WEIGHTS:
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


__all__ = ["hub_teacher_folder", "load_hub_teacher"]
