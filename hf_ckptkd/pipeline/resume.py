"""What makes a pipeline stage resumable: a checkpoint at every epoch, resumption from the last
complete one, and the checkpoints dropped once what the run is for has been written."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

logger = logging.getLogger(__name__)


def train_resumably(trainer, folder: Path, state: PartialState) -> bool:
    """Train, resuming from the last complete checkpoint in `folder` if there is one; returns whether it
    resumed. Call `drop_checkpoints` once what the run is for has been written.

    `Trainer` writes a checkpoint's files in place and its `trainer_state.json` last, so a run killed while
    saving leaves a folder without it (or with it cut short), which `resume_from_checkpoint=True` would pick
    and fail on: such folders are discarded, and the run resumes from the complete one before (or starts
    afresh)."""
    if state.is_main_process:
        for partial in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            if not _complete_checkpoint(partial):
                logger.warning("discarded partially written checkpoint %s", partial)
                shutil.rmtree(partial, ignore_errors=True)
    state.wait_for_everyone()
    last = get_last_checkpoint(folder) if folder.is_dir() else None
    trainer.train(resume_from_checkpoint=last)
    return last is not None


def _complete_checkpoint(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
        return True
    except (OSError, ValueError):  # missing, or cut short by the kill
        return False


def drop_checkpoints(folder: Path, state: PartialState) -> None:
    """Delete a finished run's checkpoints: they only served resumption."""
    state.wait_for_everyone()
    if state.is_main_process:
        for checkpoint in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)


def resumable(training: dict[str, Any]) -> dict[str, Any]:
    """A section's training settings with a checkpoint at every epoch (one kept), unless it says otherwise."""
    return {"save_strategy": "epoch", "save_total_limit": 1, **training}


__all__ = ["drop_checkpoints", "resumable", "train_resumably"]
