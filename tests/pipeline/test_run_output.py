"""What a pipeline run prints: stage lines and progress bars on the terminal, Trainer's logs in run.log."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hf_ckptkd.config import CheckpointKDConfig, accelerator_available
from hf_ckptkd.pipeline.runlog import RUN_LOG

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "recipes" / "tiny.yaml"


def test_no_pinned_memory_without_an_accelerator(tmp_path):
    config = CheckpointKDConfig(output_dir=str(tmp_path), report_to="none")
    assert config.dataloader_pin_memory is accelerator_available()
    assert CheckpointKDConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True).dataloader_pin_memory is False


@pytest.mark.slow
def test_pipeline_terminal_has_stage_lines_and_bars_and_the_log_file_has_trainer_logs(tmp_path):
    values = yaml.safe_load(TINY.read_text())
    values.update(full_ensemble=1, ensemble_k=1)
    values["teacher"].update(num_train_epochs=2, logging_steps=1)
    values["student"].update(logging_steps=1)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}  # every warning would show
    done = subprocess.run([sys.executable, "-m", "hf_ckptkd.cli", "run", str(recipe), "--output_dir", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    terminal = done.stdout + done.stderr
    assert "pin_memory" not in terminal
    assert "'loss'" not in terminal and "'eval_loss'" not in terminal and "'train_runtime'" not in terminal
    for stage in ("teachers", "select", "students", "report"):
        assert f"stage {stage}" in done.stdout
    # One bar per stage over its units, ending at all done (count shown), with the time left while running.
    assert "teachers: 100%" in done.stderr and "1/1 [" in done.stderr
    runs = len(list((out / "students").glob("*/seed-*")))
    assert runs == 3 and "student runs: 100%" in done.stderr and f"{runs}/{runs} [" in done.stderr
    assert "<" in done.stderr.split("student runs:")[1]  # tqdm's [elapsed<remaining]
    # The selection stage keeps to its stage lines: no per-snapshot or per-batch bars of the selector.
    assert "scoring snapshots" not in terminal and "probe batches" not in terminal and "k=1: selected" in done.stdout
    # The per-step logs are in the run's log file, one JSON line each, tagged with the unit that wrote them.
    records = [json.loads(line) for line in (out / RUN_LOG).read_text().splitlines()]
    units = {r["unit"] for r in records}
    assert "teachers/teacher-0" in units and "students/no_kd/seed-0" in units and len(units) == 1 + runs
    teacher_steps = [r for r in records if r["unit"] == "teachers/teacher-0" and "loss" in r]
    assert [r["step"] for r in teacher_steps] == list(range(1, len(teacher_steps) + 1)) and len(teacher_steps) == 6
    assert any("eval_accuracy" in r for r in records) and any("loss_kd" in r for r in records)
    assert all("total_flos" not in r for r in records)
    assert f"training logs in {RUN_LOG}" in done.stdout
