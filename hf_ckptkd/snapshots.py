"""Teacher snapshots: `SnapshotCallback` keeps them, `SnapshotIndex` reads them back.

A snapshot is `<snapshot_dir>/<name>/` (`epoch-0012` or `step-000500`) holding exactly what the
model family's own loader reads (so it is already a Hub-ready model repo) plus `snapshot.json`
with its metadata. `<snapshot_dir>/index.json` lists the snapshots in training order.

Writes are atomic: a snapshot is written to a hidden temporary folder and renamed into place, so
a folder with a snapshot name is always complete; the index is rebuilt from those folders after
each snapshot, so a run killed anywhere leaves a valid index (at worst missing the snapshot being
written, which the resumed run writes again). Snapshot folders are outside the `checkpoint-*`
pattern, so `save_total_limit` never deletes them.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .files import TEMP_PREFIX, sha256_of, write_json_atomic
from .models import load_model, model_family, save_model, unwrap

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
    # What the run trained and evaluated on, when it recorded it (see hf_ckptkd.dataset_record).
    dataset: dict[str, Any] = field(default_factory=dict)

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
        if not meta["dataset"]:  # a run that recorded nothing about its data writes nothing about it
            meta.pop("dataset")
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


class SnapshotIndex:
    """The snapshots of one run, in training order."""

    def __init__(self, snapshot_dir: str | Path, snapshots: list[Snapshot]):
        self.snapshot_dir = Path(snapshot_dir)
        self.snapshots = sorted(snapshots, key=lambda s: (s.global_step, s.name))

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
        try:
            names = [entry["name"] for entry in json.loads(index_path.read_text())["snapshots"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SnapshotError(f"{index_path} is not a valid snapshot index ({e})") from e
        return cls(path, [Snapshot.read(path / name) for name in names])

    @classmethod
    def scan(cls, snapshot_dir: str | Path) -> "SnapshotIndex":
        """The complete snapshot folders found on disk (temporary folders of interrupted writes ignored)."""
        snapshot_dir = Path(snapshot_dir)
        found = []
        if snapshot_dir.is_dir():
            for folder in snapshot_dir.iterdir():
                if folder.is_dir() and not folder.name.startswith(TEMP_PREFIX) and (folder / METADATA_NAME).is_file():
                    found.append(Snapshot.read(folder))
        return cls(snapshot_dir, found)

    def write(self) -> None:
        """Write `index.json` atomically."""
        entries = [{"name": s.name, "epoch": s.epoch, "global_step": s.global_step, "final": s.final,
                    "eval_metrics": s.eval_metrics} for s in self.snapshots]
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
        SnapshotIndex.scan(snapshot_dir).write()
    except (OSError, SafetensorError) as e:  # disk full, permissions, file size limits
        shutil.rmtree(tmp, ignore_errors=True)
        raise SnapshotError(
            f"could not write snapshot {name} to {snapshot_dir}: {e}. The earlier snapshots and {INDEX_NAME} are "
            "unchanged; free disk space or fix the folder's permissions, then resume from the last checkpoint "
            "(resume_from_checkpoint=True).") from e
    return snapshot


def mark_final(snapshot: Snapshot) -> Snapshot:
    snapshot.final = True
    write_json_atomic(snapshot.path / METADATA_NAME, snapshot.metadata())
    SnapshotIndex.scan(snapshot.path.parent).write()
    return snapshot


def _cpu_copy(model: nn.Module) -> nn.Module:
    """The model with its own CPU copy of every weight and buffer (the module tree is shared code only)."""
    memo = {id(p): nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=False) for p in model.parameters()}
    memo.update({id(b): b.detach().to("cpu", copy=True) for b in model.buffers()})
    return copy.deepcopy(model, memo)


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


class SnapshotCallback(TrainerCallback):
    """Keep teacher snapshots during any `Trainer` run: `trainer.add_callback(SnapshotCallback("epoch"))`.

    At each due epoch/step the main process writes a snapshot after that step's logging and
    evaluation (so the snapshot carries the metrics the run computed there, without evaluating
    twice) and before its checkpoint is saved (so a resumed run never misses one). The final
    model is always a snapshot, flagged `final`.

    Writing happens in a background thread from a CPU copy of the weights, so training goes on
    meanwhile; every pending write is finished before any checkpoint is saved and at the end of
    training, which keeps the resume guarantee. A failed write raises `SnapshotError` there.

    The Trainer's `processing_class` (a text model's tokenizer), when it has one, is saved in every
    snapshot, so a snapshot is a complete artefact: `AutoTokenizer.from_pretrained(folder)` loads.
    `dataset_record` (see `hf_ckptkd.dataset_record.dataset_record`) goes into every `snapshot.json`,
    where model cards read the dataset's identity, split and size.
    """

    def __init__(self, strategy: str = "epoch", every: int = 1, snapshot_dir: str | Path | None = None,
                 dataset_record: dict[str, Any] | None = None):
        if strategy not in ("epoch", "steps"):
            raise SnapshotError(f"snapshot strategy {strategy!r} is not 'epoch' or 'steps'")
        if not isinstance(every, int) or every <= 0:
            raise SnapshotError(f"snapshot every={every!r} must be a positive integer")
        if snapshot_dir is not None and Path(snapshot_dir).exists() and not Path(snapshot_dir).is_dir():
            raise SnapshotError(f"snapshot_dir {snapshot_dir} is a file, not a folder; choose another path")
        self.strategy, self.every = strategy, every
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self.dataset_record = dict(dataset_record or {})
        self._processing_class = None
        self._pending: dict[str, Any] | None = None
        self._model = None
        self._writer: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []

    def _dir(self, args: TrainingArguments) -> Path:
        return self.snapshot_dir or Path(args.output_dir) / "snapshots"

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._model = model
        self._processing_class = processing_class
        if state.is_world_process_zero:
            removed = remove_partial_snapshots(self._dir(args))
            if removed:
                logger.warning("discarded partially written snapshot(s) %s in %s", removed, self._dir(args))

    def _due(self, state: TrainerState, at_epoch_end: bool) -> bool:
        if self.strategy == "epoch":
            return at_epoch_end and round(state.epoch) % self.every == 0
        return not at_epoch_end and state.global_step % self.every == 0

    def _schedule(self, args, state: TrainerState, control: TrainerControl, at_epoch_end: bool) -> None:
        if not self._due(state, at_epoch_end):
            return
        logged_here = bool(state.log_history) and state.log_history[-1].get("step") == state.global_step \
            and "loss" in state.log_history[-1]
        self._pending = {"need_loss": not logged_here, "need_eval": bool(control.should_evaluate), "eval": {},
                         "checkpoint_due": bool(control.should_save)}
        # Log the training loss at the snapshot so its metadata holds the loss at that point.
        control.should_log = control.should_log or not logged_here
        self._maybe_write(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:  # a checkpoint follows: earlier snapshots must be on disk before it
            self._wait()
        self._schedule(args, state, control, at_epoch_end=False)

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._wait()
        self._schedule(args, state, control, at_epoch_end=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is not None and logs and "loss" in logs:
            self._pending["need_loss"] = False
            self._maybe_write(args, state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._pending is not None:
            self._pending["eval"] = dict(metrics or {})
            self._pending["need_eval"] = False
            self._maybe_write(args, state)

    def on_save(self, args, state, control, **kwargs):
        self._maybe_write(args, state, force=True)  # whatever was not logged by now will not be

    def on_step_begin(self, args, state, control, **kwargs):
        self._maybe_write(args, state, force=True)

    def _maybe_write(self, args, state: TrainerState, force: bool = False) -> None:
        pending = self._pending
        if pending is None or (not force and (pending["need_loss"] or pending["need_eval"])):
            return
        self._pending = None
        final = state.max_steps > 0 and state.global_step >= state.max_steps
        self._write(args, state, pending["eval"], final, background=not (final or pending["checkpoint_due"]))

    def _write(self, args, state: TrainerState, eval_metrics: dict, final: bool, background: bool = False) -> None:
        if not state.is_world_process_zero:
            return
        loss_entry = next((e for e in reversed(state.log_history) if "loss" in e), {})
        name = snapshot_name(self.strategy, state.epoch or 0.0, state.global_step)
        kwargs = dict(epoch=state.epoch or 0.0, global_step=state.global_step, learning_rate=loss_entry.get("learning_rate"),
                      train_loss=loss_entry.get("loss"), eval_metrics=eval_metrics, final=final,
                      processing_class=self._processing_class, dataset=self.dataset_record)
        model = unwrap(self._model)
        if background:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-writer")
            self._writes.append(self._writer.submit(write_snapshot, _cpu_copy(model), self._dir(args), name, **kwargs))
        else:
            self._wait()
            write_snapshot(model, self._dir(args), name, **kwargs)
        logger.info("snapshot %s %s %s", name, "being written to" if background else "written to", self._dir(args))

    def _wait(self) -> None:
        """Finish every pending background write; a failed one raises its `SnapshotError` here."""
        writes, self._writes = self._writes, []
        for write in writes:
            write.result()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._model = model if model is not None else self._model
        self._maybe_write(args, state, force=True)
        self._wait()
        if not state.is_world_process_zero:
            return
        index = SnapshotIndex.scan(self._dir(args))
        last = index.snapshots[-1] if len(index) else None
        if last is not None and last.global_step == state.global_step:
            if not last.final:  # training stopped early at a scheduled snapshot
                mark_final(last)
            return
        eval_entry = next((e for e in reversed(state.log_history) if e.get("step") == state.global_step
                           and any(k.startswith("eval_") for k in e)), {})
        self._write(args, state, {k: v for k, v in eval_entry.items() if k.startswith("eval_")}, final=True)
