"""The errors of scoring and selecting teacher snapshots: each names what is wrong and how to fix it.

All are `SelectionError`s, a `ValueError`, so a caller can catch the family or one case.
"""


class SelectionError(ValueError):
    """Base class of the errors raised while scoring and selecting teacher snapshots."""


class EmptyProbeError(SelectionError):
    """The probe set has no examples (or too few to estimate anything)."""


class SingleClassProbeError(SelectionError):
    """The probe set holds one class only, so H(Y) = 0 and Ĩ(Y;·) is undefined."""


class ShapeMismatchError(SelectionError):
    """Inputs, labels, features or logits do not describe the same probe examples."""


class DegenerateProbeError(SelectionError):
    """Every probe input is identical, so S2(K_X) = 0 and Î(X;F) is undefined."""


class UnknownEstimatorError(SelectionError):
    """No estimator is registered under the requested name."""


class ClassCountMismatchError(SelectionError):
    """Candidate snapshots (or the probe labels) disagree on the number of classes."""


class TooManyTeachersError(SelectionError):
    """More teachers were requested than there are candidate snapshots."""


class UnknownObjectiveError(SelectionError):
    """The requested selection objective does not exist."""


class NonFiniteError(SelectionError):
    """Inputs, features or outputs hold NaN or infinite values (e.g. a diverged snapshot)."""


class ProbeTooSmallError(SelectionError):
    """The probe set has fewer examples than the snapshots have classes."""


class SparseClassError(SelectionError):
    """A class has a single example in the probe set, too few for the cross-fitted label term."""


class TemperatureTooHighError(SelectionError):
    """At this temperature every snapshot's softened outputs are uniform to float precision."""


class LabelSpaceMismatchError(SelectionError):
    """Snapshots (or the probe set) that do not share one label space: different label names."""


class UnloadableCandidateError(SelectionError):
    """One candidate's model cannot be loaded (e.g. a Hub revision without safetensors weights).

    The selector skips such a candidate with a warning naming it, and stops only when none loads.
    Sources raise it for failures that concern one candidate; a failure that concerns them all
    (the Hub is down, a token is refused) is another error and stops the selection.
    """
