"""`SelectionSettings`: everything that decides a selection besides the snapshots and the probe data.

One dataclass is passed from `select_teachers` through `extract_candidates` to
`select_from_candidates`, so the probe's and the objective's settings are written once. Every
function also takes them as keyword arguments (`select_teachers(..., k=2, objective="outputs")`),
which override the given settings; an unknown name is a `SelectionError` naming the nearest one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..config import DEFAULT_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN, DEFAULT_TEMPERATURE
from .errors import EmptyProbeError, SelectionError, TooManyTeachersError, UnknownEstimatorError
from .estimators import DEFAULT_ESTIMATOR, ESTIMATORS
from .kernels import DEFAULT_KAPPA
from .objectives import DEFAULT_BETA, objective_named

# The default is the selector with the lowest worst-case regret over the selector-evidence cells
# (docs/evidence.md; benchmarks/selection_studies.py), whichever it is.
DEFAULT_OBJECTIVE = "held_out"
DEFAULT_EXHAUSTIVE_LIMIT = 500
DEFAULT_ACCURACY_MARGIN = 0.05
DEFAULT_MAX_PROBE_SAMPLES = 2000
DEFAULT_BATCH_SIZE = 256
# Tokens per segment of a causal LM's probe (one forward each; a position's context is the segment
# up to it): a small LM's training block (the fortunes recipe trains on blocks of 64), and short
# enough that 2,000 positions come from some 30 places in the text rather than a handful.
DEFAULT_PROBE_CONTEXT = 64


@dataclass
class SelectionSettings:
    """How the probe is drawn and the teachers are chosen.

    Probe: `max_probe_samples` (a label-stratified sample seeded by `seed`; None: all), `batch_size`
    (examples per forward pass), `label_column`, `image_column`; for images `transform` (an
    `ImageTransformConfig`, whose evaluation transform is used, or a callable PIL image → tensor;
    default derived from the first snapshot's model) and `default_transform` (what to assume for
    what the model does not record: transformers models record channels and size, not the
    normalisation); for causal LMs `probe_context` (the text is cut into segments of at most this
    many tokens, each run as one forward, and every position of a drawn segment predicts the token
    after it from the segment's tokens up to it; None: 64, or the snapshots' number of positions
    when that is smaller), and `max_probe_samples` counts positions.
    Choice: `k` teachers by `objective` (a name in `objectives.OBJECTIVES`: "outputs", "features",
    "held_out", or the trivial "final", "accuracy", "loss") at `temperature`, with `beta` weighing the input term, `kappa` the kernel width, `estimator`
    ("renyi2" or "binning"); `chunk_size` rows per Gram block (None: dense up to 20k examples);
    ensembles searched exhaustively up to `exhaustive_limit` combinations; a chosen snapshot more
    than `accuracy_margin` below the best probe accuracy is flagged; `dtype` of the estimator;
    `estimator_options` for its constructor.

    Settings are checked when they are made (a `SelectionError` names the setting and what it
    takes), so a request that cannot succeed fails before any model runs.
    """

    k: int = 1
    objective: str = DEFAULT_OBJECTIVE
    temperature: float = DEFAULT_TEMPERATURE
    beta: float = DEFAULT_BETA
    kappa: float = DEFAULT_KAPPA
    estimator: str = DEFAULT_ESTIMATOR
    seed: int = 0
    max_probe_samples: int | None = DEFAULT_MAX_PROBE_SAMPLES
    batch_size: int = DEFAULT_BATCH_SIZE
    label_column: str = DEFAULT_LABEL_COLUMN
    image_column: str = DEFAULT_IMAGE_COLUMN
    transform: Any = None
    probe_context: int | None = None
    default_transform: Any = None
    chunk_size: int | None = None
    exhaustive_limit: int = DEFAULT_EXHAUSTIVE_LIMIT
    accuracy_margin: float = DEFAULT_ACCURACY_MARGIN
    dtype: torch.dtype = torch.float32
    estimator_options: dict[str, Any] | None = None

    def __post_init__(self):
        objective_named(self.objective)
        if self.estimator not in ESTIMATORS:
            raise UnknownEstimatorError(f"unknown estimator {self.estimator!r}; choose one of "
                                        f"{', '.join(sorted(ESTIMATORS))}")
        if _not_positive_int(self.k):
            raise TooManyTeachersError(f"k must be a positive integer number of teachers, got {self.k!r}")
        if self.max_probe_samples is not None and _not_positive_int(self.max_probe_samples):
            raise EmptyProbeError(f"max_probe_samples={self.max_probe_samples!r} draws no probe examples; pass a "
                                  f"positive number (e.g. {DEFAULT_MAX_PROBE_SAMPLES}), or None for the whole dataset")
        for name in ("batch_size", "exhaustive_limit"):
            if _not_positive_int(getattr(self, name)):
                raise SelectionError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise SelectionError(f"seed must be an integer, got {self.seed!r}")
        for name in ("temperature", "kappa"):
            if not _finite_number(getattr(self, name)) or not getattr(self, name) > 0:
                raise SelectionError(f"the {name} must be a positive number, got {getattr(self, name)!r}")
        if not _finite_number(self.beta) or self.beta < 0:
            raise SelectionError(f"beta={self.beta!r}: β weighs the input information in J and must be a finite "
                                 f"number >= 0 ({DEFAULT_BETA:g} is the default; 0 scores the label information alone)")
        if not _finite_number(self.accuracy_margin) or not 0 <= self.accuracy_margin <= 1:
            raise SelectionError(f"accuracy_margin must lie in [0, 1] (a fraction of accuracy), got {self.accuracy_margin}")

    @classmethod
    def of(cls, settings: "SelectionSettings | None" = None, **overrides: Any) -> "SelectionSettings":
        """`settings` (default: the defaults) with `overrides` applied; unknown names are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        for name in overrides:
            if name not in names:
                close = difflib.get_close_matches(name, names, n=1)
                raise SelectionError(f"unknown selection setting {name!r}" + (f"; did you mean {close[0]!r}?" if close
                                     else f"; the settings are {', '.join(names)}"))
        return dataclasses.replace(settings or cls(), **overrides)


def _not_positive_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int) or value < 1


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["DEFAULT_ACCURACY_MARGIN", "DEFAULT_BATCH_SIZE", "DEFAULT_BETA", "DEFAULT_EXHAUSTIVE_LIMIT",
           "DEFAULT_MAX_PROBE_SAMPLES", "DEFAULT_OBJECTIVE", "DEFAULT_PROBE_CONTEXT", "SelectionSettings"]
