"""The scripts in examples/ run as a user would run them, on a tiny setting."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.slow
def test_distill_from_snapshots_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "distill_from_snapshots.py"), "--train_samples", "256", "--epochs", "2",
         "--output_dir", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # The plain Trainer kept one snapshot per epoch, the last one final.
    index = json.loads((out / "teacher" / "snapshots" / "index.json").read_text())
    names = [s["name"] for s in index["snapshots"]]
    assert names == ["epoch-0001", "epoch-0002"] and index["snapshots"][-1]["final"]
    # The selection was saved and named one of them; the student learnt from it.
    selection = json.loads((out / "teacher" / "selection" / "selection.json").read_text())
    selected = re.search(r"selected: \['(epoch-\d+)'\]", done.stdout).group(1)
    assert selection["selected"] == [selected] and selected in names
    accuracy = float(re.search(r"student test accuracy: ([0-9.]+)", done.stdout).group(1))
    assert 0.0 <= accuracy <= 1.0
    # The student's logs carry the distillation term: it learnt from a teacher, not from labels alone.
    state = json.loads((out / "student" / "checkpoint-4" / "trainer_state.json").read_text())
    assert any("loss_kd" in entry for entry in state["log_history"])
