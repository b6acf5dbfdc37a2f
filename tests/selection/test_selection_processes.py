"""`select_teachers` under `accelerate launch`: the processes share the snapshots, the report is the one a single
process writes (hf_ckptkd.selection.processes)."""

import json
import os
import subprocess

import pytest
import torch

from hf_ckptkd.cli.main import main
from hf_ckptkd.data import FASHION_MNIST_LABELS as LABELS
from hf_ckptkd.data import load_fashion_mnist
from hf_ckptkd.models import build_model
from hf_ckptkd.selection.processes import gather_in_order, selection_state, share_of
from hf_ckptkd.snapshots import write_snapshot
from selection_reports import assert_same_report

SNAPSHOTS = 5
PROBE = "150"


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory):
    """Five snapshots of one timm:test_resnet, each a small step away from the last (no training needed)."""
    folder = tmp_path_factory.mktemp("run") / "snapshots"
    torch.manual_seed(0)
    model = build_model("timm:test_resnet", 10, label_names=LABELS)
    for i in range(SNAPSHOTS):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        write_snapshot(model, folder, f"epoch-{i + 1:04d}", epoch=i + 1, global_step=10 * (i + 1),
                       eval_metrics={"eval_accuracy": 0.5 + i / 100}, final=i == SNAPSHOTS - 1)
    return folder


@pytest.fixture(scope="module")
def probe_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("probe")
    load_fashion_mnist("train", limit=200).to_parquet(str(folder / "train.parquet"))
    return folder


def test_one_process_is_the_identity():
    state = selection_state()
    assert state.num_processes == 1
    assert share_of([3, 1, 2], state) == [3, 1, 2]
    assert gather_in_order(["a"], state, lambda x: x.upper()) == ["a"]  # nothing travels, nothing is moved


@pytest.mark.slow
def test_two_processes_share_the_snapshots_and_write_the_single_process_report(snapshot_dir, probe_dir, tmp_path,
                                                                                 accelerate_launch, capsys):
    flags = ["--dataset", str(probe_dir), "--max_probe_samples", PROBE, "--k", "2", "--objective", "outputs",
             "--disable_tqdm"]
    assert main(["select", str(snapshot_dir), *flags, "--output", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    launch = subprocess.run(
        [*accelerate_launch, "-m", "hf_ckptkd.cli", "select", str(snapshot_dir), *flags, "--output",
         str(tmp_path / "two")], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launch.returncode == 0, launch.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "selection.json").read_text())
    two = json.loads((tmp_path / "two" / "selection.json").read_text())
    assert one["extra"]["processes"] == {"count": 1, "candidates_per_process": [SNAPSHOTS]}
    assert two["extra"]["processes"] == {"count": 2, "candidates_per_process": [3, 2]}  # each ran its share
    assert_same_report(one, two)
    assert launch.stdout.count("chosen: ") == 1  # only the main process prints and writes
