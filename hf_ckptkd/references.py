"""Teacher references: the forms a teacher can be named in, and the parsing of Hub references.

A teacher reference is an `nn.Module` (used as is), a snapshot folder, `<snapshot_dir>:<name>`
(e.g. `runs/t/snapshots:epoch-0012`), a saved model folder, or a Hub reference
`owner/name[@revision][:subfolder]`: a model repo, optionally at a branch, tag or commit, and
optionally a folder inside it (`alice/run:checkpoint-500`, the folder a `Trainer` with
`hub_strategy="all_checkpoints"` pushed; `alice/run@v1:checkpoint-500` at the tag `v1`). A path
on disk wins over the Hub: `t/snapshots:epoch-0012` names the local snapshot when the folder
`t/snapshots` exists. This module knows the forms and their errors only; loading lives in
`hf_ckptkd.training.teachers` (local references) and `hf_ckptkd.hub.load` (Hub references), which both
build on it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

REFERENCE_FORMS = ("an nn.Module, a snapshot folder (holding snapshot.json), '<snapshot_dir>:<name>' (e.g. "
                   "runs/t/snapshots:epoch-0012), a saved model folder (config.json + model.safetensors), or a "
                   "Hub repo 'owner/name' with an optional '@revision' and ':subfolder' (e.g. "
                   "alice/run@main:checkpoint-500)")

# The Hub's rules for owner and name: letters, digits, '-', '_', '.'; not starting or ending with
# '-' or '.'; at most 96 characters. ('--', '..' and '.git' are refused separately.)
HUB_NAME_PATTERN = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
HUB_REPO_RE = re.compile(rf"^(?P<owner>{HUB_NAME_PATTERN})/(?P<name>{HUB_NAME_PATTERN})$")
# What git refuses in a ref name (and the Hub in a revision): whitespace, '..', ':~^?*[\', '@{'.
BAD_REVISION_RE = re.compile(r"\s|\.\.|[:~^?*\[\\]|@\{")
# A full commit SHA: a revision that pins exactly one commit (and so cannot also be a tag's name).
COMMIT_SHA_RE = re.compile(r"[0-9a-f]{40}")
# A folder inside a repo: path segments of letters, digits, '.', '_', '-', never '.' or '..' alone.
SUBFOLDER_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")


class TeacherReferenceError(ValueError):
    """A teacher reference that names no loadable teacher."""


class HubReference(NamedTuple):
    """A parsed `owner/name[@revision][:subfolder]`; `str()` of it writes the reference back."""

    repo_id: str
    revision: str | None = None
    subfolder: str | None = None

    def __str__(self) -> str:
        return format_hub_reference(self.repo_id, self.revision, self.subfolder)


def format_hub_reference(repo_id: str, revision: str | None = None, subfolder: str | None = None) -> str:
    """`owner/name[@revision][:subfolder]`, the teacher reference of a model in a Hub repo."""
    return repo_id + (f"@{revision}" if revision else "") + (f":{subfolder}" if subfolder else "")


def parse_hub_reference(reference: str) -> HubReference:
    """`owner/name[@revision][:subfolder]` -> `HubReference`; `TeacherReferenceError` for another shape.

    Owner and name follow the Hub's rules (letters, digits, `-`, `_`, `.`; no `--` or `..`; at most
    96 characters); a revision is a branch, tag or commit (`main`, `v1.0`, `refs/pr/1`, a SHA); a
    subfolder is a relative path inside the repo (`checkpoint-500`, `runs/a/checkpoint-500`).
    """
    if not isinstance(reference, str):
        raise TeacherReferenceError(f"Hub reference {reference!r} is not a string 'owner/name[@revision][:subfolder]'")
    # Neither a repo id nor a revision may hold ':', so the first one starts the subfolder.
    located, colon, subfolder = reference.partition(":")
    repo_id, sep, revision = located.partition("@")
    match = HUB_REPO_RE.match(repo_id)
    if match is None or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise TeacherReferenceError(
            f"{reference!r} is not a Hub reference: write 'owner/name', 'owner/name@revision' or "
            "'owner/name@revision:subfolder' (letters, digits, '-', '_' and '.' in owner and name, no '--' or "
            "'..', at most 96 characters each)")
    if sep and (not revision or BAD_REVISION_RE.search(revision) or revision.endswith(("/", "."))):
        raise TeacherReferenceError(
            f"{reference!r} has an invalid revision {revision!r}: after '@' give a branch, tag or commit "
            "(e.g. main, v1.0, refs/pr/1 or a commit SHA)")
    if colon and not _valid_subfolder(subfolder):
        raise TeacherReferenceError(
            f"{reference!r} has an invalid subfolder {subfolder!r}: after ':' give a folder of the repo such as "
            "checkpoint-500 (letters, digits, '.', '_', '-', separated by '/', no '..')")
    return HubReference(repo_id, revision if sep else None, subfolder.strip("/") if colon else None)


def _valid_subfolder(subfolder: str) -> bool:
    parts = subfolder.strip("/").split("/")
    return bool(subfolder.strip("/")) and all(SUBFOLDER_SEGMENT_RE.fullmatch(p) and p not in (".", "..")
                                              for p in parts)


def is_hub_reference(reference: str) -> bool:
    """Whether `reference` has the shape `owner/name[@revision][:subfolder]` (nothing is asked of the Hub)."""
    try:
        parse_hub_reference(reference)
    except TeacherReferenceError:
        return False
    return True


__all__ = ["BAD_REVISION_RE", "COMMIT_SHA_RE", "HUB_NAME_PATTERN", "HUB_REPO_RE", "REFERENCE_FORMS", "HubReference",
           "TeacherReferenceError", "format_hub_reference", "is_hub_reference", "parse_hub_reference"]
