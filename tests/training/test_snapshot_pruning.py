"""Keeping the best snapshots: which ones stay, and deletions that a kill at any point leaves consistent.

The snapshots here are real folders written by `write_snapshot`; the score is a fixed table per
snapshot name (an injected scorer), so the policy is tested apart from the estimator, which
tests/test_keep_top.py runs for real.
"""

import json
import random
import shutil

import pytest

from hf_ckptkd.models import build_model
from hf_ckptkd.training.snapshot_pruning import (
    _rename_away,
    best_names,
    check_keep_top,
    delete_removed,
    keep_top_pass,
    mark_removed,
    over_limit,
    recover,
)
from hf_ckptkd.snapshots import INDEX_NAME, SnapshotError, SnapshotIndex, mark_final, write_snapshot


@pytest.fixture(scope="module")
def model():
    return build_model("timm:test_resnet", 10)


def _name(i: int) -> str:
    return f"step-{i:06d}"


def _scorer(table: dict[str, float], calls: list[str] | None = None):
    def score(snapshot):
        if calls is not None:
            calls.append(snapshot.name)
        return {"value": table[snapshot.name], "objective": "table"}
    return score


def _write(model, snapshot_dir, i: int, final: bool = False):
    return write_snapshot(model, snapshot_dir, _name(i), epoch=i / 10, global_step=i, final=final)


def _expected_kept(values: list[float], keep_top: int) -> set[str]:
    """Offline, written out independently of the module: the keep_top best of all but the last
    (ties to the earlier), plus the last."""
    earlier = sorted(range(len(values) - 1), key=lambda i: (-values[i], i))[:keep_top]
    return {_name(i + 1) for i in earlier} | {_name(len(values))}


def _live(snapshot_dir) -> list[str]:
    return sorted(p.name for p in snapshot_dir.iterdir() if p.name.startswith("step-"))


def test_online_keeps_what_offline_scoring_of_the_whole_run_keeps(tmp_path, model):
    rng = random.Random(0)
    runs = differing = 0
    for trial in range(12):
        n, keep_top = rng.randint(2, 7), rng.randint(1, 3)
        # Rounded to one decimal so that ties happen; ties go to the earlier snapshot.
        values = [round(rng.random(), 1) for _ in range(n)]
        table = {_name(i + 1): v for i, v in enumerate(values)}
        snapshot_dir = tmp_path / f"run-{trial}"
        for i in range(1, n + 1):
            _write(model, snapshot_dir, i, final=i == n)
            keep_top_pass(snapshot_dir, keep_top, _scorer(table))
            # At every point: the newest, and the keep_top best of those before it.
            assert set(_live(snapshot_dir)) == _expected_kept(values[:i], keep_top)
        runs += 1
        differing += set(SnapshotIndex.load(snapshot_dir).names) != _expected_kept(values, keep_top)
        on_disk = json.loads((snapshot_dir / INDEX_NAME).read_text())["snapshots"]
        # The index is the whole run: every snapshot with its score, the deleted ones marked removed.
        assert [e["name"] for e in on_disk] == [_name(i + 1) for i in range(n)]
        assert [e["score"]["value"] for e in on_disk] == values
        assert {e["name"] for e in on_disk if e.get("removed")} == set(table) - _expected_kept(values, keep_top)
    assert (runs, differing) == (12, 0)


def test_best_names_ranks_by_score_then_training_order():
    assert best_names([("a", 0.5), ("b", 0.9), ("c", 0.5), ("d", 0.1)], 2) == ["b", "a"]
    assert best_names([("a", 0.5), ("b", 0.9)], 5) == ["b", "a"]


def test_each_snapshot_is_scored_once_and_the_final_one_is_never_removed(tmp_path, model):
    table = {_name(1): 0.9, _name(2): 0.8, _name(3): 0.1}
    calls: list[str] = []
    for i in (1, 2, 3):
        _write(model, tmp_path, i, final=i == 3)
        keep_top_pass(tmp_path, 1, _scorer(table, calls))
    assert calls == [_name(1), _name(2), _name(3)]
    index = SnapshotIndex.load(tmp_path)
    assert index.names == [_name(1), _name(3)] and index.final.name == _name(3)  # the worst, but final
    assert [e["name"] for e in index.removed] == [_name(2)]
    assert index.removed[0]["score"]["value"] == 0.8
    assert SnapshotIndex.load(tmp_path)[_name(3)].score == {"value": 0.1, "objective": "table"}
    with pytest.raises(SnapshotError, match=r"snapshot step-000002 .* was removed to keep only the best snapshots "
                                            r"\(keep_top; its score 0.8\)"):
        index.get(name=_name(2))


def test_a_final_snapshot_marked_late_leaves_the_others_ranked(tmp_path, model):
    """Early stopping: the newest snapshot becomes final after it was written; it was never ranked."""
    table = {_name(1): 0.5, _name(2): 0.7, _name(3): 0.1}
    for i in (1, 2, 3):
        _write(model, tmp_path, i)
        keep_top_pass(tmp_path, 2, _scorer(table))
    mark_final(SnapshotIndex.load(tmp_path)[_name(3)])
    keep_top_pass(tmp_path, 2, _scorer(table))
    assert SnapshotIndex.load(tmp_path).names == [_name(1), _name(2), _name(3)]


def _three_scored(tmp_path, model):
    """Three scored snapshots where keep_top=1 must delete step-000001 (0.2 < 0.6; step-000003 is the newest)."""
    table = {_name(1): 0.2, _name(2): 0.6, _name(3): 0.4}
    for i in (1, 2, 3):
        _write(model, tmp_path, i)
        keep_top_pass(tmp_path, 5, _scorer(table))  # score only: 5 keeps everything
    return table


def _assert_finished(tmp_path, model, table):
    """What an uninterrupted pass leaves, and a later snapshot still works on top of it."""
    assert _live(tmp_path) == [_name(2), _name(3)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    index = SnapshotIndex.load(tmp_path)
    assert index.names == [_name(2), _name(3)] and [e["name"] for e in index.removed] == [_name(1)]
    index.verify()
    table[_name(4)] = 0.5
    _write(model, tmp_path, 4)
    assert keep_top_pass(tmp_path, 1, _scorer(table)) == [_name(3)]
    assert SnapshotIndex.load(tmp_path).names == [_name(2), _name(4)]


def test_uninterrupted_removal(tmp_path, model):
    table = _three_scored(tmp_path, model)
    assert over_limit(SnapshotIndex.scan(tmp_path), 1)[0].name == _name(1)
    assert keep_top_pass(tmp_path, 1, _scorer(table)) == [_name(1)]
    _assert_finished(tmp_path, model, table)


def test_kill_after_marking_removed(tmp_path, model):
    table = _three_scored(tmp_path, model)
    mark_removed(tmp_path, [_name(1)])
    # Killed here: the folder is complete and on disk, but every reader already skips it.
    assert (tmp_path / _name(1) / "model.safetensors").is_file()
    assert SnapshotIndex.load(tmp_path).names == [_name(2), _name(3)]
    assert SnapshotIndex.scan(tmp_path).names == [_name(2), _name(3)]
    assert recover(tmp_path) == [_name(1)]
    _assert_finished(tmp_path, model, table)


def test_kill_after_renaming_away(tmp_path, model):
    table = _three_scored(tmp_path, model)
    mark_removed(tmp_path, [_name(1)])
    away = _rename_away(tmp_path / _name(1))
    assert away.name.startswith(".tmp-removed-step-000001-") and away.is_dir()
    assert SnapshotIndex.load(tmp_path).names == [_name(2), _name(3)]
    assert recover(tmp_path) == [away.name]
    _assert_finished(tmp_path, model, table)


def test_kill_half_way_through_deleting(tmp_path, model):
    table = _three_scored(tmp_path, model)
    mark_removed(tmp_path, [_name(1)])
    away = _rename_away(tmp_path / _name(1))
    (away / "model.safetensors").unlink()  # the deletion got this far
    assert SnapshotIndex.load(tmp_path).names == [_name(2), _name(3)]
    recover(tmp_path)
    _assert_finished(tmp_path, model, table)


def test_kill_half_way_through_deleting_a_folder_under_its_own_name(tmp_path, model):
    """The pass never deletes under a snapshot's name, but a user's `rm -r` interrupted might."""
    table = _three_scored(tmp_path, model)
    mark_removed(tmp_path, [_name(1)])
    (tmp_path / _name(1) / "snapshot.json").unlink()
    assert SnapshotIndex.load(tmp_path).names == [_name(2), _name(3)]
    assert delete_removed(tmp_path) == [_name(1)]
    _assert_finished(tmp_path, model, table)


def test_kill_between_writing_and_scoring(tmp_path, model):
    table = {_name(1): 0.2, _name(2): 0.6, _name(3): 0.4}
    for i in (1, 2):
        _write(model, tmp_path, i)
        keep_top_pass(tmp_path, 1, _scorer(table))
    _write(model, tmp_path, 3)  # killed before its pass: step-000003 has no score
    assert not SnapshotIndex.load(tmp_path)[_name(3)].score
    calls: list[str] = []
    assert keep_top_pass(tmp_path, 1, _scorer(table, calls)) == [_name(1)]
    assert calls == [_name(3)]  # the pass scores what is missing, and only that
    _assert_finished(tmp_path, model, table)


def test_a_removed_snapshot_written_again_by_a_resumed_run_is_back(tmp_path, model):
    table = _three_scored(tmp_path, model)
    keep_top_pass(tmp_path, 1, _scorer(table))
    # A run resumed from a checkpoint before step 1 writes step-000001 again: it is a new snapshot.
    _write(model, tmp_path, 1)
    index = SnapshotIndex.load(tmp_path)
    assert index.names == [_name(1), _name(2), _name(3)] and not index.removed
    assert not index[_name(1)].score
    table[_name(1)] = 0.9
    assert keep_top_pass(tmp_path, 1, _scorer(table)) == [_name(2)]


def test_writing_a_snapshot_keeps_the_removed_entries(tmp_path, model):
    table = _three_scored(tmp_path, model)
    keep_top_pass(tmp_path, 1, _scorer(table))
    shutil.rmtree(tmp_path / _name(3))  # gone outside the package: the index forgets it, not the removed one
    _write(model, tmp_path, 4)
    index = SnapshotIndex.load(tmp_path)
    assert index.names == [_name(2), _name(4)] and [e["name"] for e in index.removed] == [_name(1)]


@pytest.mark.parametrize("keep_top,probe,message", [
    (2, None, r"keep_top=2 needs probe_dataset=\.\.\., the data every snapshot is scored on"),
    (0, "probe", r"keep_top=0 must be a positive integer, the number of snapshots to keep besides the final one"),
    (-1, "probe", r"keep_top=-1 must be a positive integer"),
    (2.5, "probe", r"keep_top=2.5 must be a positive integer"),
    ("3", "probe", r"keep_top='3' must be a positive integer"),
    (True, "probe", r"keep_top=True must be a positive integer"),
    (None, "probe", r"probe_dataset is only used to score snapshots for keep_top; pass keep_top=M"),
])
def test_bad_keep_top_arguments(keep_top, probe, message):
    with pytest.raises(SnapshotError, match=message):
        check_keep_top(keep_top, probe)
    assert check_keep_top(3, "probe") == 3 and check_keep_top(None, None) is None
