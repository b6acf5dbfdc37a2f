"""Choosing teacher snapshots by their information: estimators, the objective, the report.

- `estimators`: matrix-based Rényi alpha=2 mutual information (default) and a k-means plug-in
  estimator for cross-checks, behind one interface (`ESTIMATORS`, `build_estimator`).
- `objective`: `Candidate`, the objective J, the choice of k teachers (`select_from_candidates`).
- `report`: `SelectionReport` (`selection.json`, `table.md`, `information_plane.png`).
- `selector`: `select_teachers`, which loads the snapshots, extracts their features and logits
  on the probe set and calls `select_from_candidates` (imported lazily on first access, since it
  loads model code; not in `__all__`).
"""

from .estimators import (
    DEFAULT_ESTIMATOR,
    DEFAULT_KAPPA,
    ESTIMATORS,
    BinningEstimator,
    ClassCountMismatchError,
    DegenerateProbeError,
    EmptyProbeError,
    InformationEstimator,
    MutualInformation,
    NonFiniteError,
    Renyi2Estimator,
    SelectionError,
    ShapeMismatchError,
    SingleClassProbeError,
    TooManyTeachersError,
    UnknownEstimatorError,
    UnknownObjectiveError,
    build_estimator,
    gaussian_gram,
    label_gram,
    median_pairwise_distance,
    renyi2_entropy,
    renyi2_mutual_information,
)
from .objective import (
    OBJECTIVES,
    Candidate,
    MinMax,
    choose_members,
    objective_value,
    select_from_candidates,
)
from .report import SelectionReport, SnapshotScore

__all__ = [
    "BinningEstimator", "Candidate", "ClassCountMismatchError", "DEFAULT_ESTIMATOR", "DEFAULT_KAPPA",
    "DegenerateProbeError", "ESTIMATORS", "EmptyProbeError", "InformationEstimator", "MinMax", "MutualInformation",
    "NonFiniteError", "OBJECTIVES", "Renyi2Estimator", "SelectionError", "SelectionReport", "ShapeMismatchError",
    "SingleClassProbeError", "SnapshotScore", "TooManyTeachersError", "UnknownEstimatorError",
    "UnknownObjectiveError", "build_estimator", "choose_members", "gaussian_gram", "label_gram",
    "median_pairwise_distance", "objective_value", "renyi2_entropy", "renyi2_mutual_information",
    "select_from_candidates",
]


def __getattr__(name: str):
    if name == "select_teachers":
        from .selector import select_teachers

        return select_teachers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
