"""Choosing teacher snapshots by their information: estimators, the objective, the report.

- `errors`: the `SelectionError` family, one class per way a request can fail.
- `estimators`: matrix-based Rényi alpha=2 mutual information (default) and a k-means plug-in
  estimator for cross-checks, behind one interface (`ESTIMATORS`, `build_estimator`).
- `label_information`: the label terms Ĩ(Y;P), Ĩ(Y;F), variational lower bounds in bits.
- `token_information`: the same for a causal LM's next tokens, in bits per token over a unigram
  baseline of the probe text.
- `settings`: `SelectionSettings`, the probe's and the objective's settings in one dataclass.
- `objectives`: the registry of objectives (`OBJECTIVES`), one class each: J of a candidate and of
  a set, whether the objective is trivial, how reports describe it.
- `choice`: `Candidate`, scoring the candidates and choosing k teachers (`select_from_candidates`).
- `report`: `SelectionReport` (`selection.json`, `table.md`, `information_plane.png`).
- `probe`, `lm_probe`: drawing the probe set of images, texts or (for causal LMs) text segments,
  every position of each read from one forward; `probe_sources`: the registry in which each task
  (`hf_ckptkd.tasks`) registers how its models' probe is drawn, asked once with the first snapshot's model.
- `candidates`: `ModelCandidate`, what the selector chooses among (local snapshots, Hub revisions),
  and the registry of candidate sources.
- `processes`: the split of the candidates between processes under `accelerate launch`.
- `selector`: `select_teachers`, which loads the candidates, extracts their features and logits
  on the probe set (`extract_candidates`) and calls `select_from_candidates`.
"""

from .errors import (
    ClassCountMismatchError,
    DegenerateProbeError,
    EmptyProbeError,
    LabelSpaceMismatchError,
    NonFiniteError,
    ProbeTooSmallError,
    SelectionError,
    ShapeMismatchError,
    SingleClassProbeError,
    SparseClassError,
    TemperatureTooHighError,
    TooManyTeachersError,
    UnknownEstimatorError,
    UnknownObjectiveError,
    UnloadableCandidateError,
)
from .candidates import ModelCandidate, SnapshotCandidate, register_candidate_source
from .estimators import (
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    BinningEstimator,
    Renyi2Estimator,
    build_estimator,
)
from .kernels import (
    DEFAULT_KAPPA,
    InformationEstimator,
    MutualInformation,
    gaussian_gram,
    label_gram,
    median_pairwise_distance,
    renyi2_entropy,
    renyi2_mutual_information,
)
from .label_information import (
    features_label_bits,
    outputs_label_bits,
    shannon_entropy_bits,
)
from .choice import Candidate, choose_members, select_from_candidates
from .objectives import (
    OBJECTIVES,
    InformationObjective,
    Objective,
    TrivialObjective,
    objective_named,
    objective_value,
    register_objective,
)
from .report import SelectionReport, SnapshotScore
from .selector import extract_candidates, select_teachers
from .settings import DEFAULT_OBJECTIVE, SelectionSettings

__all__ = [
    "BinningEstimator", "Candidate", "ClassCountMismatchError", "DEFAULT_ESTIMATOR", "DEFAULT_KAPPA",
    "DEFAULT_OBJECTIVE", "DegenerateProbeError", "ESTIMATORS", "EmptyProbeError", "InformationEstimator",
    "InformationObjective", "Objective", "LabelSpaceMismatchError", "MutualInformation", "NonFiniteError", "OBJECTIVES", "ProbeTooSmallError",
    "Renyi2Estimator", "SelectionError", "SelectionReport", "SelectionSettings", "ShapeMismatchError", "SingleClassProbeError",
    "SnapshotScore", "SparseClassError", "TemperatureTooHighError", "TrivialObjective", "TooManyTeachersError",
    "UnknownEstimatorError", "UnknownObjectiveError", "UnloadableCandidateError", "ModelCandidate", "SnapshotCandidate",
    "register_candidate_source", "build_estimator", "choose_members", "features_label_bits",
    "gaussian_gram", "label_gram", "median_pairwise_distance", "objective_named", "objective_value", "register_objective",
    "outputs_label_bits", "renyi2_entropy", "renyi2_mutual_information", "extract_candidates", "select_from_candidates", "select_teachers",
    "shannon_entropy_bits",
]

