"""Load a teacher from the Hub: `load_hub_teacher("owner/name@revision")`, its weights verified first.

The revision (branch, tag or commit) is pinned to the commit it resolves to; the weights are
checked against the repo's `snapshot.json` when it has one (safetensors are required when it has
none), then the family's own loader reads them: `timm.create_model("hf-hub:…")` or transformers'
`AutoModelFor….from_pretrained`. A reference with a subfolder (`owner/name@revision:checkpoint-500`,
a folder a `Trainer` pushed) loads the model in that folder the same way (transformers'
`subfolder=`; timm from the downloaded folder). `HF_HOME`, `HF_HUB_OFFLINE` and tokens work as in
`huggingface_hub`; a warm cache loads while the Hub is down.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from torch import nn

from ..files import sha256_of
from ..models.folders import load_hub_model
from ..references import COMMIT_SHA_RE, parse_hub_reference
from ..snapshots.folders import METADATA_NAME
from .errors import HubError, HubReferenceError, HubUnavailableError, download_errors

logger = logging.getLogger(__name__)

SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def load_hub_teacher(reference: str) -> nn.Module:
    """A teacher from a Hub reference `owner/name[@revision][:subfolder]` (branch, tag or commit; a folder).

    Reads `config.json` to tell the family, pins the revision to the commit it resolves to, checks
    the weights against `snapshot.json` when the repo (or the folder) has one, then loads with the
    family's own loader: `timm.create_model("hf-hub:owner/name@commit", pretrained=True)` (wrapped
    in `TimmForImageClassification`) or `AutoModelFor…Classification.from_pretrained(repo_id,
    revision=commit, subfolder=..., use_safetensors=True)`. `HF_HOME`, `HF_HUB_OFFLINE` and tokens
    work as in `huggingface_hub`; a warm cache loads while the Hub is down.
    """
    repo_id, revision, subfolder = parse_hub_reference(reference)
    where = f"{repr(revision) if revision else 'main'}{f' in {subfolder}/' if subfolder else ''}"
    try:
        config_path = Path(_fetch(reference, repo_id, "config.json", revision, subfolder))
    except EntryNotFoundError:
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} holds no model at {where} (no config.json); push a "
                                "timm or transformers model folder there, e.g. with push_teachers_to_hub") from None
    # The cache keeps each commit's files in a folder named by its SHA (the subfolder inside it).
    folder = config_path.parents[len(subfolder.split("/")) if subfolder else 0]
    commit = folder.name if COMMIT_SHA_RE.fullmatch(folder.name) else revision
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise HubReferenceError(f"teacher {reference!r}: its config.json is not valid JSON ({e})") from None
    _verify_weights(reference, repo_id, commit, subfolder)
    try:
        return load_hub_model(repo_id, commit, config, subfolder=subfolder, local=config_path.parent)
    except HubError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} holds a config.json at {where} but its model could "
                                f"not be loaded ({type(e).__name__}: {e})") from e


def hub_teacher_folder(reference: str) -> tuple[Path, str | None]:
    """(the folder of the Hub cache holding a Hub teacher's config and verified weights, in its subfolder when the
    reference names one; the commit its revision resolved to), downloading what is missing."""
    repo_id, revision, subfolder = parse_hub_reference(reference)
    config_path = Path(_fetch(reference, repo_id, "config.json", revision, subfolder))
    folder = config_path.parents[len(subfolder.split("/")) if subfolder else 0]
    commit = folder.name if COMMIT_SHA_RE.fullmatch(folder.name) else revision
    _verify_weights(reference, repo_id, commit, subfolder)  # downloads the weight files it checks
    return config_path.parent, commit


def _fetch(reference: str, repo_id: str, filename: str, revision: str | None, subfolder: str | None = None) -> str:
    """`hf_hub_download` with errors that name the reference and what to fix."""
    with download_errors(reference, repo_id, filename, revision):
        return hf_hub_download(repo_id, filename, subfolder=subfolder, revision=revision)


def _verify_weights(reference: str, repo_id: str, commit: str | None, subfolder: str | None) -> None:
    """Check the weights against the folder's snapshot.json; without one, require safetensors weights."""
    try:
        manifest = json.loads(Path(_fetch(reference, repo_id, METADATA_NAME, commit, subfolder)).read_text())
    except HubUnavailableError:
        logger.warning("teacher %s: cannot fetch its %s (the Hub is unreachable); loading the cached weights "
                       "without checking their SHA-256", reference, METADATA_NAME)
        return
    except EntryNotFoundError:
        manifest = None
    if manifest is None:
        for weights in SAFETENSORS_WEIGHTS:
            try:
                _fetch(reference, repo_id, weights, commit, subfolder)
                return
            except EntryNotFoundError:
                continue
        raise HubReferenceError(f"teacher {reference!r}: {repo_id} holds no safetensors weights (no model.safetensors) "
                                "at that revision; hf-ckptkd loads safetensors only")
    for filename, expected in (manifest.get("sha256") or {}).items():
        try:
            path = Path(_fetch(reference, repo_id, filename, commit, subfolder))
        except EntryNotFoundError:
            raise HubReferenceError(f"teacher {reference!r}: {METADATA_NAME} lists {filename}, which the repo does "
                                    "not hold at that revision") from None
        if sha256_of(path) != expected:
            raise HubReferenceError(f"teacher {reference!r}: {filename} does not match the SHA-256 in the repo's "
                                    f"{METADATA_NAME}; the weights were changed after the snapshot was written, so "
                                    "they are not loaded")


__all__ = ["hub_teacher_folder", "load_hub_teacher"]
