"""Snapshots: the folder format a run's snapshots are written in, and `SnapshotIndex`, which reads it back."""

from .folders import (INDEX_NAME, METADATA_NAME, Snapshot, SnapshotError, SnapshotIndex, mark_final,
                      resolve_snapshot_reference, snapshot_name, write_snapshot)

__all__ = ["INDEX_NAME", "METADATA_NAME", "Snapshot", "SnapshotError", "SnapshotIndex", "mark_final",
           "resolve_snapshot_reference", "snapshot_name", "write_snapshot"]
