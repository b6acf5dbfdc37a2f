"""Keeping only the best snapshots of a run (`keep_top`): which to delete, and deleting them safely.

A keep-top run scores every snapshot once, when it is written, with a score that does not depend
on the other snapshots (the scorer is injected: `hf_ckptkd.selection.online.SnapshotScorer` is
the one `SnapshotCallback` uses), so scores written at different times compare. After each
snapshot, the run keeps on disk the newest snapshot (the final one, once training ends) and the
`keep_top` best of the others, and deletes the rest. The best M of a growing set only ever loses
members, so the snapshots a finished run kept are exactly the M best of all its non-final
snapshots, as scoring the whole run afterwards would choose them (`best_names`). Ties go to the
earlier snapshot, as in the selector.

Deleting a snapshot takes three steps, and a kill between any two leaves a consistent state:

1. `mark_removed`: its index entry becomes `"removed": true` (keeping its score), written
   atomically. From here on every reader skips it (`SnapshotIndex.load` and `scan` alike), whether
   or not its folder is still there;
2. `_rename_away`: its folder is renamed to a temporary `.tmp-removed-…` name (one atomic rename),
   so a folder with a snapshot's name is never half deleted;
3. the temporary folder is deleted.

`recover` finishes what a kill interrupted: it deletes folders the index marks removed and the
temporary folders. `SnapshotCallback` runs it when training begins. Only the main process scores
and deletes.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..files import TEMP_PREFIX, write_json_atomic
from ..snapshots.folders import METADATA_NAME, Snapshot, SnapshotError, SnapshotIndex, remove_partial_snapshots

# A scorer maps a snapshot to {"value": <higher is better>, ...anything else worth recording}.
Scorer = Callable[[Snapshot], dict[str, Any]]


def check_keep_top(keep_top: Any, probe_dataset: Any, *, where: str = "SnapshotCallback") -> int | None:
    """`keep_top` as given when it is None or a positive integer with a probe set; else a clear error."""
    if keep_top is None:
        if probe_dataset is not None:
            raise SnapshotError(f"{where}: probe_dataset is only used to score snapshots for keep_top; pass keep_top=M "
                                "(keep the M best snapshots and the final one) or drop probe_dataset")
        return None
    if isinstance(keep_top, bool) or not isinstance(keep_top, int) or keep_top < 1:
        raise SnapshotError(f"{where}: keep_top={keep_top!r} must be a positive integer, the number of snapshots to "
                            "keep besides the final one (e.g. keep_top=3); leave it None to keep every snapshot")
    if probe_dataset is None:
        raise SnapshotError(f"{where}: keep_top={keep_top} needs probe_dataset=..., the data every snapshot is scored "
                            "on (the dataset you would give select_teachers: raw images and labels, or tokenized "
                            "text); pass one, or drop keep_top to keep every snapshot")
    return keep_top


def score_value(snapshot: Snapshot) -> float:
    return float(snapshot.score["value"])


def protected(index: SnapshotIndex) -> set[str]:
    """The snapshots never deleted: the final ones and the newest (the final one until training ends)."""
    return {s.name for s in index if s.final} | ({index.snapshots[-1].name} if len(index) else set())


def best_names(scores: Iterable[tuple[str, float]], keep_top: int) -> list[str]:
    """The `keep_top` best of (name, score) pairs given in training order, best first; ties to the earlier."""
    ranked = sorted(enumerate(scores), key=lambda item: (-item[1][1], item[0]))
    return [name for _, (name, _) in ranked[:keep_top]]


def over_limit(index: SnapshotIndex, keep_top: int) -> list[Snapshot]:
    """The scored snapshots beyond the `keep_top` best of those that are not protected."""
    keep = protected(index)
    candidates = [s for s in index if s.name not in keep and s.score]
    best = set(best_names([(s.name, score_value(s)) for s in candidates], keep_top))
    return [s for s in candidates if s.name not in best]


def record_score(snapshot: Snapshot, score: dict[str, Any]) -> None:
    """Write the score into the snapshot's `snapshot.json` (atomically), then into the index."""
    if not isinstance(score, dict) or not isinstance(score.get("value"), (int, float)):
        raise SnapshotError(f"the keep_top scorer returned {score!r} for snapshot {snapshot.name}; it must return a "
                            "dict with a numeric 'value'")
    snapshot.score = dict(score)
    write_json_atomic(snapshot.path / METADATA_NAME, snapshot.metadata())
    SnapshotIndex.scan(snapshot.path.parent).write()


def mark_removed(snapshot_dir: str | Path, names: Iterable[str]) -> None:
    """Step 1 of a deletion: the index lists these snapshots as removed (with their scores), atomically."""
    names = set(names)
    index = SnapshotIndex.scan(snapshot_dir)
    index.removed += [{**index.entry(s), "removed": True} for s in index if s.name in names]
    index.snapshots = [s for s in index if s.name not in names]
    index.write()


def _rename_away(folder: Path) -> Path:
    """Step 2: the folder under a temporary name (never a snapshot name), by one atomic rename."""
    away = folder.parent / f"{TEMP_PREFIX}removed-{folder.name}-{uuid.uuid4().hex[:8]}"
    os.replace(folder, away)
    return away


def delete_removed(snapshot_dir: str | Path) -> list[str]:
    """Steps 2 and 3 for every snapshot the index marks removed whose folder is still there."""
    snapshot_dir = Path(snapshot_dir)
    deleted = []
    for entry in SnapshotIndex.scan(snapshot_dir).removed:
        folder = snapshot_dir / entry["name"]
        if folder.exists():
            shutil.rmtree(_rename_away(folder))
            deleted.append(entry["name"])
    return deleted


def recover(snapshot_dir: str | Path) -> list[str]:
    """Finish interrupted writes and deletions: the names of the folders deleted."""
    return remove_partial_snapshots(snapshot_dir) + delete_removed(snapshot_dir)


def keep_top_pass(snapshot_dir: str | Path, keep_top: int, scorer: Scorer) -> list[str]:
    """Score every snapshot on disk that has no score yet, then delete those beyond the `keep_top` best.

    Returns the names deleted. Scoring every unscored snapshot (not only the newest) makes the pass
    whole again after a kill between writing a snapshot and scoring it.
    """
    index = SnapshotIndex.scan(snapshot_dir)
    for snapshot in index:
        if not snapshot.score:
            record_score(snapshot, scorer(snapshot))
    victims = [s.name for s in over_limit(SnapshotIndex.scan(snapshot_dir), keep_top)]
    if victims:
        mark_removed(snapshot_dir, victims)
        delete_removed(snapshot_dir)
    return victims


__all__ = ["Scorer", "best_names", "check_keep_top", "delete_removed", "keep_top_pass", "mark_removed", "over_limit",
           "protected", "record_score", "recover"]
