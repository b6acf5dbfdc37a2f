"""Training: the distilling trainer (`trainer`), its frozen teachers (`teachers`, `teacher_loading`,
`teacher_checks`, `fused_teachers`) and the snapshots it keeps while it trains (`snapshot_callback`,
`snapshot_pruning`, and `snapshot_push`, which pushes them to the Hub as they are written)."""

from .snapshot_callback import SnapshotCallback
from .teachers import TeacherEnsemble, load_teachers
from .trainer import CheckpointKDMixin, CheckpointKDTrainer

__all__ = ["CheckpointKDMixin", "CheckpointKDTrainer", "SnapshotCallback", "TeacherEnsemble", "load_teachers"]
