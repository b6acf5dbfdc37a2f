"""hf-ckptkd: knowledge distillation from intermediate checkpoints and snapshot ensembles."""

from .config import CheckpointKDConfig
from .snapshots import SnapshotCallback, SnapshotIndex
from .teachers import TeacherEnsemble, load_teachers
from .trainer import CheckpointKDTrainer

__all__ = ["CheckpointKDConfig", "CheckpointKDTrainer", "SnapshotCallback", "SnapshotIndex", "TeacherEnsemble",
           "load_teachers"]
