"""Loading one teacher from a reference, and what lies beside it on disk.

A teacher reference is an `nn.Module` (used as is), a snapshot folder, `<snapshot_dir>:<name>`, a
saved model folder, or a Hub repo `owner/name[@revision]` (the forms: `hf_ckptkd.references`).
`load_teacher` resolves one into a model the project can distil from; `teachers.load_teachers`
builds the ensemble from several.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import AutoTokenizer

from ..hub.load import load_hub_teacher
from ..models.folders import has_saved_tokenizer, load_model
from ..models.build import ModelSpecError, TimmForImageClassification, model_family, unwrap
from ..references import REFERENCE_FORMS, TeacherReferenceError, is_hub_reference
from ..snapshots.folders import SnapshotError, resolve_snapshot_reference
from .teacher_checks import describe_module


def as_teacher_model(model: nn.Module, reference: str) -> nn.Module:
    """A teacher model in a form the project understands (a bare timm model gets the project's wrapper)."""
    inner = unwrap(model)
    if not isinstance(inner, TimmForImageClassification) and hasattr(inner, "forward_features") \
            and hasattr(inner, "num_classes") and hasattr(inner, "pretrained_cfg"):
        inner = TimmForImageClassification(inner)
    try:
        model_family(inner)
    except ModelSpecError as e:
        raise TeacherReferenceError(f"teacher {reference} is not a model hf-ckptkd can distil from: {e}") from e
    return inner


def load_teacher(reference: str | Path | nn.Module) -> nn.Module:
    """One teacher model from a reference (see the module docstring); weights of snapshots are verified.

    A snapshot whose weight files no longer match the SHA-256 in its `snapshot.json` raises the
    snapshot's own `SnapshotError` (naming the snapshot): it is refused, not loaded.
    """
    if isinstance(reference, nn.Module):
        return as_teacher_model(reference, describe_module(reference))
    if not isinstance(reference, (str, Path)):
        raise TeacherReferenceError(f"teacher reference {reference!r} ({type(reference).__name__}) is not "
                                    f"{REFERENCE_FORMS}")
    ref = str(reference)
    path = Path(ref).expanduser()
    try:
        snapshot = resolve_snapshot_reference(str(path) if path.exists() else ref)
    except SnapshotError as e:
        raise TeacherReferenceError(f"teacher reference {ref!r} looks like a snapshot reference but cannot be "
                                    f"resolved: {e}") from e
    if snapshot is not None:
        return as_teacher_model(snapshot.load_model(verify=True), ref)  # SnapshotError if the weights were altered
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise TeacherReferenceError(
                f"teacher reference {ref!r} exists but is neither a snapshot folder (no snapshot.json) nor a saved "
                f"model folder (no config.json); a teacher reference is {REFERENCE_FORMS}")
        try:
            return as_teacher_model(load_model(path), ref)
        except ModelSpecError as e:
            raise TeacherReferenceError(f"teacher reference {ref!r}: {e}") from e
    if is_hub_reference(ref):
        return as_teacher_model(load_hub_teacher(ref), ref)
    raise TeacherReferenceError(f"teacher reference {ref!r} is not a local path that exists, nor a snapshot "
                                f"'<snapshot_dir>:<name>' whose snapshot_dir exists, nor a Hub repo; a teacher "
                                f"reference is {REFERENCE_FORMS}")


def teacher_folder(reference: str | Path | nn.Module) -> Path | None:
    """The local folder a teacher reference loads from (a snapshot or saved model), or None (a module, a Hub repo)."""
    if isinstance(reference, nn.Module):
        return None
    path = Path(str(reference)).expanduser()
    try:
        snapshot = resolve_snapshot_reference(str(path) if path.exists() else str(reference))
    except SnapshotError:
        return None
    if snapshot is not None:
        return Path(snapshot.path)
    return path if path.is_dir() else None


def saved_tokenizer(folder: Path):
    """The tokenizer saved beside a teacher's weights, or None when the folder holds none."""
    if not has_saved_tokenizer(folder):
        return None
    return AutoTokenizer.from_pretrained(str(folder))
