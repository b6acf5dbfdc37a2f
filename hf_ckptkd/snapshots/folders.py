"""Teacher snapshots: the folder format, `write_snapshot`, and `SnapshotIndex`, which reads them back.

A snapshot is `<snapshot_dir>/<name>/` (`epoch-0012` or `step-000500`) holding exactly what the
model family's own loader reads (so it is already a Hub-ready model repo) plus `snapshot.json`
with its metadata. `<snapshot_dir>/index.json` lists the snapshots in training order.
`SnapshotCallback` (in `snapshot_callback`) writes them during training.

A run that keeps only its best snapshots (`keep_top`, see `snapshot_pruning`) records each
snapshot's `score`, and lists the snapshots it deleted in the index as `"removed": true` with
their score, so the index stays the complete record of the run; `SnapshotIndex` iterates over the
snapshots on disk only and keeps the removed entries in `.removed`.

Writes are atomic: a snapshot is written to a hidden temporary folder and renamed into place, so
a folder with a snapshot name is always complete; the index is rebuilt from those folders after
each snapshot, so a run killed anywhere leaves a valid index (at worst missing the snapshot being
written, which the resumed run writes again). Snapshot folders are outside the `checkpoint-*`
pattern, so `save_total_limit` never deletes them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from ..files import TEMP_PREFIX, sha256_of, write_json_atomic
from ..models.folders import load_model, save_model
from ..models.build import model_family

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
METADATA_NAME = "snapshot.json"
FORMAT_VERSION = 1


class SnapshotError(RuntimeError):
    """A snapshot that cannot be written, found, verified or loaded."""


def snapshot_name(strategy: str, epoch: float, global_step: int) -> str:
    """`epoch-0012` at whole epochs of an epoch schedule, `step-000500` otherwise."""
    if strategy == "epoch" and math.isclose(epoch, round(epoch), abs_tol=1e-6):
        return f"epoch-{round(epoch):04d}"
    return f"step-{global_step:06d}"


@dataclass
class Snapshot:
    """One snapshot folder and its metadata (`snapshot.json`)."""

    name: str
    path: Path
    epoch: float
    global_step: int
    family: str
    sha256: dict[str, str]
    learning_rate: float | None = None
    train_loss: float | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    final: bool = False
    created: str = ""
    # What the run trained and evaluated on, when it recorded it (see hf_ckptkd.data.record).
    dataset: dict[str, Any] = field(default_factory=dict)
    # The keep-top score, when the run kept only its best snapshots: {"value": ..., and its terms}.
    score: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: str | Path) -> "Snapshot":
        folder = Path(folder)
        meta_path = folder / METADATA_NAME
        if not meta_path.is_file():
            raise SnapshotError(f"{folder} is not a snapshot: it has no {METADATA_NAME}")
        try:
            meta = json.loads(meta_path.read_text())
            return cls(path=folder, **{k: meta[k] for k in cls.__dataclass_fields__ if k != "path" and k in meta})
        except (json.JSONDecodeError, TypeError) as e:
            raise SnapshotError(f"{meta_path} is not valid snapshot metadata ({e})") from e

    def metadata(self) -> dict[str, Any]:
        meta = asdict(self)
        meta.pop("path")
        for optional in ("dataset", "score"):  # what a run did not record, it writes nothing about
            if not meta[optional]:
                meta.pop(optional)
        return {"format_version": FORMAT_VERSION, **meta}

    @property
    def reference(self) -> str:
        """`<snapshot_dir>:<name>`: how a teacher reference names this snapshot."""
        return f"{self.path.parent}:{self.name}"

    @property
    def accuracy(self) -> float | None:
        return self.eval_metrics.get("eval_accuracy")

    def verify(self) -> None:
        """Raise `SnapshotError` naming the snapshot and file if any weight file's SHA-256 has changed."""
        if not self.sha256:
            raise SnapshotError(f"snapshot {self.name} ({self.path}) records no weight files")
        for filename, expected in self.sha256.items():
            path = self.path / filename
            if not path.is_file():
                raise SnapshotError(f"snapshot {self.name}: weight file {path} is missing")
            if sha256_of(path) != expected:
                raise SnapshotError(f"snapshot {self.name}: {path} does not match the SHA-256 recorded in "
                                    f"{self.path / METADATA_NAME}; the weights were altered after the snapshot was "
                                    "written. Restore the file or retrain; it will not be loaded as is.")

    def load_model(self, device=None, verify: bool = True):
        """The snapshot's model (timm wrapped for Trainer, or a transformers model), hashes checked first."""
        if verify:
            self.verify()
        return load_model(self.path, device=device)


def _order(entry: Snapshot | dict) -> tuple[int, str]:
    return (entry.global_step, entry.name) if isinstance(entry, Snapshot) else (entry.get("global_step", 0), entry["name"])


class SnapshotIndex:
    """The snapshots of one run on disk, in training order; `removed`: the index entries of deleted ones."""

    def __init__(self, snapshot_dir: str | Path, snapshots: list[Snapshot], removed: list[dict] | None = None):
        self.snapshot_dir = Path(snapshot_dir)
        self.snapshots = sorted(snapshots, key=_order)
        self.removed = sorted(removed or [], key=_order)

    @classmethod
    def load(cls, path: str | Path) -> "SnapshotIndex":
        """Read `<path>/index.json`; `path` is a snapshot dir or a run's output dir holding `snapshots/`."""
        path = Path(path)
        if not (path / INDEX_NAME).is_file() and (path / "snapshots" / INDEX_NAME).is_file():
            path = path / "snapshots"
        index_path = path / INDEX_NAME
        if not index_path.is_file():
            raise SnapshotError(f"{path} holds no snapshot index ({INDEX_NAME}); give the snapshot_dir of a teacher "
                                "run (by default <output_dir>/snapshots)")
        entries = _index_entries(index_path)
        live = [e["name"] for e in entries if not e.get("removed")]
        return cls(path, [Snapshot.read(path / name) for name in live], [e for e in entries if e.get("removed")])

    @classmethod
    def scan(cls, snapshot_dir: str | Path, revived: str | None = None) -> "SnapshotIndex":
        """The complete snapshot folders found on disk (temporary folders of interrupted writes ignored),
        with the removed entries of the index there. A folder the index marks removed is one whose
        deletion was interrupted: it stays removed, unless it is `revived` (written again since)."""
        snapshot_dir = Path(snapshot_dir)
        index_path = snapshot_dir / INDEX_NAME
        removed = [e for e in (_index_entries(index_path) if index_path.is_file() else [])
                   if e.get("removed") and e["name"] != revived]
        gone = {e["name"] for e in removed}
        found = []
        if snapshot_dir.is_dir():
            for folder in snapshot_dir.iterdir():
                if folder.is_dir() and not folder.name.startswith(TEMP_PREFIX) and folder.name not in gone \
                        and (folder / METADATA_NAME).is_file():
                    found.append(Snapshot.read(folder))
        return cls(snapshot_dir, found, removed)

    def entry(self, snapshot: Snapshot) -> dict[str, Any]:
        """A snapshot's entry in `index.json` (its score only when it has one)."""
        entry = {"name": snapshot.name, "epoch": snapshot.epoch, "global_step": snapshot.global_step,
                 "final": snapshot.final, "eval_metrics": snapshot.eval_metrics}
        return {**entry, "score": snapshot.score} if snapshot.score else entry

    def write(self) -> None:
        """Write `index.json` atomically: the snapshots on disk and the removed ones, in training order."""
        entries = sorted([self.entry(s) for s in self.snapshots] + self.removed, key=_order)
        write_json_atomic(self.snapshot_dir / INDEX_NAME, {"format_version": FORMAT_VERSION, "snapshots": entries})

    def __iter__(self) -> Iterator[Snapshot]:
        return iter(self.snapshots)

    def __len__(self) -> int:
        return len(self.snapshots)

    def __getitem__(self, key: int | str) -> Snapshot:
        if isinstance(key, int):
            return self.snapshots[key]
        return self.get(name=key)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.snapshots]

    @property
    def final(self) -> Snapshot:
        finals = [s for s in self.snapshots if s.final]
        if not finals:
            raise SnapshotError(f"{self.snapshot_dir} has no final snapshot yet (the run has not finished)")
        return finals[-1]

    def get(self, name: str | None = None, epoch: float | None = None, step: int | None = None) -> Snapshot:
        """The snapshot with this name, epoch or global step."""
        for s in self.snapshots:
            if (name is not None and s.name == name) or (epoch is not None and math.isclose(s.epoch, epoch)) \
                    or (step is not None and s.global_step == step):
                return s
        wanted = name if name is not None else (f"epoch {epoch}" if epoch is not None else f"step {step}")
        gone = next((e for e in self.removed if e["name"] == name), None)
        if gone is not None:
            raise SnapshotError(f"snapshot {name} of {self.snapshot_dir} was removed to keep only the best snapshots "
                                f"(keep_top; its score {gone.get('score', {}).get('value')}); the snapshots on disk "
                                f"are {', '.join(self.names) or 'none'}")
        raise SnapshotError(f"{self.snapshot_dir} has no snapshot {wanted}; it has {', '.join(self.names) or 'none'}")

    def verify(self) -> None:
        for s in self.snapshots:
            s.verify()


def resolve_snapshot_reference(reference: str) -> Snapshot | None:
    """A local teacher reference as a `Snapshot`: a snapshot folder or `<snapshot_dir>:<name>`.

    Returns None when the reference is not local (e.g. a Hub repo id).
    """
    path = Path(reference)
    if (path / METADATA_NAME).is_file():
        return Snapshot.read(path)
    snapshot_dir, sep, name = reference.rpartition(":")
    if sep and snapshot_dir and name and Path(snapshot_dir).is_dir():
        return SnapshotIndex.load(snapshot_dir).get(name=name)
    return None


def write_snapshot(model, snapshot_dir: str | Path, name: str, *, epoch: float, global_step: int,
                   learning_rate: float | None = None, train_loss: float | None = None,
                   eval_metrics: dict[str, float] | None = None, final: bool = False,
                   processing_class=None, dataset: dict[str, Any] | None = None) -> Snapshot:
    """Write one snapshot atomically and rebuild the index. On any error the folder is left as before.

    `processing_class` (a tokenizer, image processor or processor) is saved beside the weights, so the
    folder loads with `AutoTokenizer` / `AutoImageProcessor` too; `dataset` is the run's data record.
    """
    snapshot_dir = Path(snapshot_dir)
    snapshot_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{name}-", dir=snapshot_dir))
    target = snapshot_dir / name
    try:
        if processing_class is not None and hasattr(processing_class, "save_pretrained"):
            processing_class.save_pretrained(tmp)  # before the model, whose config.json must win
        weight_files = save_model(model, tmp)
        snapshot = Snapshot(
            name=name, path=target, epoch=round(float(epoch), 4), global_step=int(global_step),
            family=model_family(model), sha256={f: sha256_of(tmp / f) for f in weight_files},
            learning_rate=learning_rate, train_loss=train_loss,
            eval_metrics={k: float(v) for k, v in (eval_metrics or {}).items() if isinstance(v, (int, float))},
            final=final, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), dataset=dict(dataset or {}),
        )
        write_json_atomic(tmp / METADATA_NAME, snapshot.metadata())
        if target.exists():  # a resumed run redoing this snapshot: swap, so a complete folder always exists
            old = snapshot_dir / f"{TEMP_PREFIX}old-{name}-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        SnapshotIndex.scan(snapshot_dir, revived=name).write()  # a removed snapshot written again is back
    except (OSError, SafetensorError) as e:  # disk full, permissions, file size limits
        shutil.rmtree(tmp, ignore_errors=True)
        raise SnapshotError(
            f"could not write snapshot {name} to {snapshot_dir}: {e}. The earlier snapshots and {INDEX_NAME} are "
            "unchanged; free disk space or fix the folder's permissions, then resume from the last checkpoint "
            "(resume_from_checkpoint=True).") from e
    return snapshot


def _index_entries(index_path: Path) -> list[dict[str, Any]]:
    try:
        entries = json.loads(index_path.read_text())["snapshots"]
        if not all(isinstance(e["name"], str) for e in entries):
            raise TypeError("an entry whose name is not a string")
        return entries
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SnapshotError(f"{index_path} is not a valid snapshot index ({e})") from e


def mark_final(snapshot: Snapshot) -> Snapshot:
    snapshot.final = True
    write_json_atomic(snapshot.path / METADATA_NAME, snapshot.metadata())
    SnapshotIndex.scan(snapshot.path.parent).write()
    return snapshot


def remove_partial_snapshots(snapshot_dir: str | Path) -> list[str]:
    """Delete temporary folders left by a write that was killed; return their names."""
    snapshot_dir = Path(snapshot_dir)
    removed = []
    if snapshot_dir.is_dir():
        for path in snapshot_dir.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
                removed.append(path.name)
    return removed
