"""What a pipeline run shows on the terminal, and what it writes to its log file instead.

The terminal gets the pipeline's own stage lines and one progress bar per stage over its units
(teachers, snapshots, student runs), with the count done and the time left. Trainer's per-step
log dictionaries (loss, learning rate, evaluation metrics) go to `<run directory>/run.log`, one
JSON line each, tagged with the unit that wrote it; `report_to` integrations still get them too.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

RUN_LOG = "run.log"


def say(message: str, main_process: bool = True) -> None:
    """Print a stage line above any progress bar that is showing (the bar is redrawn below it)."""
    if main_process:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()


def stage_bar(total: int, desc: str, unit: str, main_process: bool = True) -> tqdm:
    """A progress bar over a stage's units: `desc: 1/3 [00:10<00:20, ...]`, on stderr like Trainer's bars."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not main_process, file=sys.stderr, dynamic_ncols=True)


class RunLogCallback(TrainerCallback):
    """Append each of Trainer's log dictionaries to the run's log file as `{"unit": ..., "time": ..., **logs}`."""

    def __init__(self, path: str | Path, unit: str):
        self.path, self.unit = Path(path), unit

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"unit": self.unit, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": state.global_step,
                  **{k: v for k, v in logs.items() if k != "total_flos"}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")


class _BarsWithoutLogs(ProgressCallback):
    """Trainer's own progress bars (when a recipe sets `disable_tqdm: false`) without the log dictionaries."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def log_to_file(trainer, run_log: str | Path, unit: str) -> None:
    """Send `trainer`'s log dictionaries to `run_log` instead of the terminal."""
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_BarsWithoutLogs)
    trainer.add_callback(RunLogCallback(run_log, unit))
