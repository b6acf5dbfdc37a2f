"""`SnapshotCallback`: keep teacher snapshots during any `Trainer` run, optionally only the best ones, and
optionally push each one to the Hub as it is written.

The snapshot format, the index and the atomic write are `snapshots`; keeping only the best
(`keep_top`) is `snapshot_pruning`, with the score of `selection.online`; pushing while training
(`push_to_hub`) is `snapshot_push`. This module sits above selection so that
`SnapshotCallback(..., keep_top=M, probe_dataset=...)` can build its scorer.
"""

from __future__ import annotations

import copy
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..models.build import unwrap
from ..selection.online import SnapshotScorer
from ..selection.settings import SelectionSettings
from ..snapshots.folders import SnapshotError, SnapshotIndex, mark_final, snapshot_name, write_snapshot
from .snapshot_pruning import check_keep_top, keep_top_pass, recover
from .snapshot_push import SnapshotPusher

logger = logging.getLogger(__name__)


def _cpu_copy(model: nn.Module) -> nn.Module:
    """The model with its own CPU copy of every weight and buffer (the module tree is shared code only)."""
    memo = {id(p): nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=False) for p in model.parameters()}
    memo.update({id(b): b.detach().to("cpu", copy=True) for b in model.buffers()})
    return copy.deepcopy(model, memo)



class SnapshotCallback(TrainerCallback):
    """Keep teacher snapshots during any `Trainer` run: `trainer.add_callback(SnapshotCallback("epoch"))`.

    At each due epoch/step the main process writes a snapshot after that step's logging and
    evaluation (so the snapshot carries the metrics the run computed there, without evaluating
    twice) and before its checkpoint is saved (so a resumed run never misses one). The final
    model is always a snapshot, flagged `final`.

    Writing happens in a background thread from a CPU copy of the weights, so training goes on
    meanwhile (with `keep_top`, writing and scoring happen in the main thread instead: see `_write`); every pending write is finished before any checkpoint is saved and at the end of
    training, which keeps the resume guarantee. A failed write raises `SnapshotError` there.

    The Trainer's `processing_class` (a text model's tokenizer), when it has one, is saved in every
    snapshot, so a snapshot is a complete artefact: `AutoTokenizer.from_pretrained(folder)` loads.
    `dataset_record` (see `hf_ckptkd.data.record.dataset_record`) goes into every `snapshot.json`,
    where model cards read the dataset's identity, split and size.

    With `keep_top=M` the run keeps only the M best snapshots on disk, plus the newest (at the end,
    the final one): each snapshot is scored on `probe_dataset` when it is written, right after the
    write and in the same thread, with `SnapshotScorer` (J = Ĩ(Y;P) + β·Î(X;P) of that snapshot
    alone, on the fixed scales of `selection.objectives`; `probe_settings` changes the probe and
    the objective, default `selection.online.keep_top_settings()`: "outputs", 1,000 examples). The
    others are deleted crash-safely (see `snapshot_pruning`), and `index.json` keeps every
    snapshot's score and lists the deleted ones as removed. `probe_dataset` is what
    `select_teachers` takes (raw images and labels, or tokenized text), not the Trainer's
    transformed `eval_dataset`.

    With `push_to_hub="owner/name"` every snapshot is also pushed to that repo as it is written, as
    a commit tagged with its name (`epoch-0006`, the layout of `push_teachers_to_hub(...,
    as_revisions=True)`), from the main process, in the background (see `snapshot_push`): the token
    (`hub_token`, else `HF_TOKEN` or `hf auth login`) is checked for write access here, before
    training; a transient Hub error is retried; a snapshot already on the Hub (same weight SHA-256)
    is not pushed again, and a resumed run pushes the snapshots the killed one had not; `train()`
    returns once the last push is done. `hub_private` makes a new repo private. With `keep_top`,
    pruning then deletes only the local copies of the snapshots that fall out of the best.
    """

    def __init__(self, strategy: str = "epoch", every: int = 1, snapshot_dir: str | Path | None = None,
                 dataset_record: dict[str, Any] | None = None, *, keep_top: int | None = None, probe_dataset=None,
                 probe_settings: SelectionSettings | None = None, push_to_hub: str | None = None,
                 hub_token: str | None = None, hub_private: bool = False):
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
        self.keep_top = check_keep_top(keep_top, probe_dataset)
        self._scorer = SnapshotScorer(probe_dataset, probe_settings) if self.keep_top is not None else None
        self._pusher = SnapshotPusher(push_to_hub, token=hub_token, private=hub_private) if push_to_hub else None

    def _dir(self, args: TrainingArguments) -> Path:
        return self.snapshot_dir or Path(args.output_dir) / "snapshots"

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._model = model
        self._processing_class = processing_class
        if state.is_world_process_zero:
            removed = recover(self._dir(args))
            if removed:
                logger.warning("discarded partially written snapshot(s) and unfinished deletions %s in %s", removed,
                               self._dir(args))
            if self._pusher is not None and state.global_step > 0:  # resumed: push what the earlier run had not
                for snapshot in SnapshotIndex.scan(self._dir(args)):
                    self._pusher.submit(snapshot)

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
        # Scoring loads the snapshot as a new model, whose construction draws random initial weights from the
        # global generator that training's augmentation and dropout draw from: a keep-top run scores in the main
        # thread with that generator forked (see _store), so it trains exactly as it would without keep_top.
        if background and self.keep_top is None:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-writer")
            self._writes.append(self._writer.submit(self._store, _cpu_copy(model), self._dir(args), name, **kwargs))
        else:
            self._wait()
            self._store(model, self._dir(args), name, **kwargs)
        logger.info("snapshot %s %s %s", name, "being written to" if background else "written to", self._dir(args))

    def _store(self, model: nn.Module, snapshot_dir: Path, name: str, **kwargs) -> None:
        """Write the snapshot (and queue its push); with keep_top, score it and delete what falls out of the best."""
        snapshot = write_snapshot(model, snapshot_dir, name, **kwargs)
        if self._pusher is not None:
            self._pusher.submit(snapshot)
        if self.keep_top is not None:
            with torch.random.fork_rng():
                removed = keep_top_pass(snapshot_dir, self.keep_top, self._scorer)
            if removed and self._pusher is not None:
                logger.info("keep_top=%d: removed the local copies of snapshot(s) %s from %s; they stay on the Hub "
                            "as %s", self.keep_top, removed, snapshot_dir,
                            ", ".join(f"{self._pusher.repo_id}@{r}" for r in removed))
            elif removed:
                logger.info("keep_top=%d: removed snapshot(s) %s from %s", self.keep_top, removed, snapshot_dir)

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
        self._write_final(args, state)
        if self._pusher is not None:
            sent = self._pusher.wait()
            logger.info("pushed snapshot(s) %s to %s", sent, self._pusher.repo_id)

    def _write_final(self, args, state: TrainerState) -> None:
        index = SnapshotIndex.scan(self._dir(args))
        last = index.snapshots[-1] if len(index) else None
        if last is not None and last.global_step == state.global_step:
            if not last.final:  # training stopped early at a scheduled snapshot
                mark_final(last)
                if self._pusher is not None:  # its pushed snapshot.json says otherwise
                    self._pusher.submit(last)
            return
        # Training stopped between scheduled snapshots: the final model is written now, and with keep_top
        # the snapshot that was newest until now joins the ranking.
        eval_entry = next((e for e in reversed(state.log_history) if e.get("step") == state.global_step
                           and any(k.startswith("eval_") for k in e)), {})
        self._write(args, state, {k: v for k, v in eval_entry.items() if k.startswith("eval_")}, final=True)
