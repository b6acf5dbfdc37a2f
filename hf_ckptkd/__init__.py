"""hf-ckptkd: knowledge distillation from intermediate checkpoints and snapshot ensembles."""

from .config import CheckpointKDConfig
from .hub import push_teachers_to_hub
from .launch import exit_launched_process
from .selection import SelectionReport, select_teachers
from .snapshots import SnapshotIndex
from .training import CheckpointKDMixin, CheckpointKDTrainer, SnapshotCallback, TeacherEnsemble, load_teachers

__all__ = ["CheckpointKDConfig", "CheckpointKDMixin", "CheckpointKDTrainer", "SelectionReport", "SnapshotCallback", "SnapshotIndex",
           "TeacherEnsemble", "exit_launched_process", "load_teachers", "push_teachers_to_hub", "select_teachers"]
