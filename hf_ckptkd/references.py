"""Teacher references: the forms a teacher can be named in, and the parsing of Hub references.

A teacher reference is an `nn.Module` (used as is), a snapshot folder, `<snapshot_dir>:<name>`
(e.g. `runs/t/snapshots:epoch-0012`), a saved model folder, or a Hub repo `owner/name` with an
optional `@revision`. This module knows the forms and their errors only; loading lives in
`hf_ckptkd.training.teachers` (local references) and `hf_ckptkd.hub.load` (Hub references), which both
build on it.
"""

from __future__ import annotations

import re

REFERENCE_FORMS = ("an nn.Module, a snapshot folder (holding snapshot.json), '<snapshot_dir>:<name>' (e.g. "
                   "runs/t/snapshots:epoch-0012), a saved model folder (config.json + model.safetensors), or a "
                   "Hub repo 'owner/name' with an optional '@revision'")

# The Hub's rules for owner and name: letters, digits, '-', '_', '.'; not starting or ending with
# '-' or '.'; at most 96 characters. ('--', '..' and '.git' are refused separately.)
HUB_NAME_PATTERN = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
HUB_REPO_RE = re.compile(rf"^(?P<owner>{HUB_NAME_PATTERN})/(?P<name>{HUB_NAME_PATTERN})$")
# What git refuses in a ref name (and the Hub in a revision): whitespace, '..', ':~^?*[\', '@{'.
BAD_REVISION_RE = re.compile(r"\s|\.\.|[:~^?*\[\\]|@\{")
# A full commit SHA: a revision that pins exactly one commit (and so cannot also be a tag's name).
COMMIT_SHA_RE = re.compile(r"[0-9a-f]{40}")


class TeacherReferenceError(ValueError):
    """A teacher reference that names no loadable teacher."""


def parse_hub_reference(reference: str) -> tuple[str, str | None]:
    """`owner/name[@revision]` -> `(repo_id, revision or None)`; `TeacherReferenceError` for another shape.

    Owner and name follow the Hub's rules (letters, digits, `-`, `_`, `.`; no `--` or `..`; at most
    96 characters); a revision is a branch, tag or commit (`main`, `v1.0`, `refs/pr/1`, a SHA).
    """
    if not isinstance(reference, str):
        raise TeacherReferenceError(f"Hub reference {reference!r} is not a string 'owner/name[@revision]'")
    repo_id, sep, revision = reference.partition("@")
    match = HUB_REPO_RE.match(repo_id)
    if match is None or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise TeacherReferenceError(
            f"{reference!r} is not a Hub reference: write 'owner/name' or 'owner/name@revision' (letters, digits, "
            "'-', '_' and '.' in owner and name, no '--' or '..', at most 96 characters each)")
    if sep and (not revision or BAD_REVISION_RE.search(revision) or revision.endswith(("/", "."))):
        raise TeacherReferenceError(
            f"{reference!r} has an invalid revision {revision!r}: after '@' give a branch, tag or commit "
            "(e.g. main, v1.0, refs/pr/1 or a commit SHA)")
    return repo_id, (revision if sep else None)


def is_hub_reference(reference: str) -> bool:
    """Whether `reference` has the shape `owner/name[@revision]` (nothing is asked of the Hub)."""
    try:
        parse_hub_reference(reference)
    except TeacherReferenceError:
        return False
    return True


__all__ = ["BAD_REVISION_RE", "COMMIT_SHA_RE", "HUB_NAME_PATTERN", "HUB_REPO_RE", "REFERENCE_FORMS", "TeacherReferenceError",
           "is_hub_reference", "parse_hub_reference"]
