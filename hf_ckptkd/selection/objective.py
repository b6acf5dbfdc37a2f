"""The selection objective and the choice of k teachers among the snapshots of a run.

Every candidate snapshot is scored on the probe set (see `estimators`): Î(X;F), Î(Y;F) of its
penultimate features and Î(X;P), Î(Y;P) of its outputs softened at the distillation temperature T.
The objective is the total task-related information

    J(t) = m(Î(Y;·_t)) + beta · m(Î(X;·_t))          (beta = 1 by default)

on the outputs P (`objective="outputs"`, the default: what the student is taught) or on the
features F (`objective="features"`: the paper's information plane), where m is the min–max
rescaling over the candidate snapshots: m(v) = (v - min) / (max - min) (v - min when all candidates
tie). The initialisation (`Candidate.is_init`) is left out of the rescaling and can never be
chosen; it is still scored and reported, and its J (which may fall outside [0, 1 + beta]) is
computed with the candidates' ranges. This exclusion is done in `select_from_candidates`, and
nowhere else.

For k > 1 teachers an ensemble is scored as a whole with the same J and the same min–max ranges
(those of the single candidates, so an ensemble can score above 1 + beta):

- `objective="outputs"`: the ensemble's soft labels are the mean of its members' probabilities at
  temperature T, scored like one snapshot's outputs;
- `objective="features"`: the ensemble's representation is the concatenation of its members'
  features, each first divided by its own median pairwise distance so that every member weighs
  equally (the Gaussian width is then kappa × the median distance of the concatenation, as for a
  single snapshot, and a one-member ensemble scores exactly like the member).

Members are distinct. The search is exhaustive when C(n, k) <= `exhaustive_limit` (500), where n is
the number of candidates; otherwise greedy: start from the best single candidate and repeatedly add
the candidate that raises the ensemble's J most. Ties go to the earlier snapshot in training order.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .estimators import (
    DEFAULT_ESTIMATOR,
    DEFAULT_KAPPA,
    ESTIMATORS,
    ClassCountMismatchError,
    MutualInformation,
    NonFiniteError,
    SelectionError,
    ShapeMismatchError,
    TooManyTeachersError,
    UnknownEstimatorError,
    UnknownObjectiveError,
    build_estimator,
    check_probe,
    output_embedding,
)
from .report import SelectionReport, SnapshotScore

OBJECTIVES = ("outputs", "features")
DEFAULT_OBJECTIVE = "outputs"
DEFAULT_TEMPERATURE = 4.0
DEFAULT_BETA = 1.0
DEFAULT_EXHAUSTIVE_LIMIT = 500


@dataclass
class Candidate:
    """One snapshot as the selector sees it: its outputs on the probe set and where it comes from.

    Args:
        name: the snapshot's name (e.g. `epoch-0012`), unique among the candidates.
        features: N × D penultimate features on the probe inputs (any float dtype or device).
        logits: N × C logits on the probe inputs, in the probe set's order.
        epoch: training epoch of the snapshot (may be fractional), if known.
        step: global step, if known.
        init: whether this is the initialisation; None = infer (see `is_init`).
        path: the snapshot folder, carried into the report.
        metadata: anything else, carried into the report's scores (`SnapshotScore.metadata`).
    """

    name: str
    features: Tensor
    logits: Tensor
    epoch: float | None = None
    step: int | None = None
    init: bool | None = None
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_init(self) -> bool:
        """The explicit `init` flag if set; else step 0 if the step is known; else epoch 0."""
        if self.init is not None:
            return bool(self.init)
        if self.step is not None:
            return int(self.step) == 0
        return self.epoch is not None and float(self.epoch) == 0.0


@dataclass(frozen=True)
class MinMax:
    """The min–max rescaling m(v) = (v - lo) / (hi - lo); v - lo when hi == lo (all candidates tie)."""

    lo: float
    hi: float

    @classmethod
    def over(cls, values: Sequence[float]) -> "MinMax":
        return cls(float(min(values)), float(max(values)))

    def __call__(self, value: float) -> float:
        span = self.hi - self.lo
        return (value - self.lo) / span if span > 1e-12 else value - self.lo


def objective_value(info: MutualInformation, x_range: MinMax, y_range: MinMax, beta: float = DEFAULT_BETA) -> float:
    """J = m(Î(Y;·)) + beta · m(Î(X;·))."""
    return y_range(info.y) + beta * x_range(info.x)


def choose_members(single_j: Sequence[float], eligible: Sequence[int], k: int,
                   ensemble_j: Callable[[tuple[int, ...]], float], *,
                   exhaustive_limit: int = DEFAULT_EXHAUSTIVE_LIMIT) -> tuple[list[int], str, float]:
    """Choose k distinct members among `eligible` (indices) maximising `ensemble_j`.

    `single_j[i]` is candidate i's own J; `ensemble_j(members)` scores a sorted tuple of indices.
    Returns (members in rank order, search, J of the chosen set), search being "exhaustive" or
    "greedy". Exhaustive when C(len(eligible), k) <= exhaustive_limit, members then ranked by their
    own J; greedy otherwise, members ranked in the order they were added. Ties go to lower indices.
    """
    eligible = list(eligible)
    if not 1 <= k <= len(eligible):
        raise TooManyTeachersError(
            f"cannot choose k={k} teachers among {len(eligible)} candidate snapshots; use 1 <= k <= {len(eligible)}")
    first = max(eligible, key=lambda i: (single_j[i], -i))
    if k == 1:
        return [first], "exhaustive", single_j[first]
    if math.comb(len(eligible), k) <= exhaustive_limit:
        best, best_j = None, -math.inf
        for members in itertools.combinations(sorted(eligible), k):
            j = ensemble_j(members)
            if j > best_j:
                best, best_j = members, j
        return sorted(best, key=lambda i: (-single_j[i], i)), "exhaustive", best_j
    chosen, chosen_j = [first], single_j[first]
    while len(chosen) < k:
        best, best_j = None, -math.inf
        for i in sorted(set(eligible) - set(chosen)):
            j = ensemble_j(tuple(sorted(chosen + [i])))
            if j > best_j:
                best, best_j = i, j
        chosen.append(best)
        chosen_j = best_j
    return chosen, "greedy", chosen_j


def _check_candidates(candidates: Sequence[Candidate]) -> int:
    if not candidates:
        raise SelectionError("there are no candidate snapshots; train with snapshot_strategy='epoch' (or 'steps') "
                             "so that the run keeps snapshots to select from")
    names = [c.name for c in candidates]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SelectionError(f"candidate names must be unique; {', '.join(map(repr, duplicates))} appear more than once")
    first = candidates[0]
    for c in candidates:
        if not isinstance(c.logits, Tensor) or c.logits.dim() != 2:
            shape = tuple(c.logits.shape) if isinstance(c.logits, Tensor) else type(c.logits).__name__
            raise SelectionError(f"snapshot {c.name!r}: logits must be an N × C tensor, got {shape}")
        if c.logits.shape[1] != first.logits.shape[1]:
            raise ClassCountMismatchError(
                f"snapshot {c.name!r} has {c.logits.shape[1]} classes but {first.name!r} has "
                f"{first.logits.shape[1]}; every candidate must share one label space, so select among the "
                "snapshots of one run (or of runs on the same dataset)")
    return int(first.logits.shape[1])


def _pick_device(inputs: Tensor, candidates: Sequence[Candidate], device) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in (inputs, candidates[0].features, candidates[0].logits):
        if isinstance(t, Tensor) and t.device.type != "cpu":
            return t.device
    return inputs.device


def check_request(objective: str, estimator: str, temperature: float) -> None:
    """Fail on a selection request that cannot succeed, before any work is done."""
    if objective not in OBJECTIVES:
        raise UnknownObjectiveError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if estimator not in ESTIMATORS:
        raise UnknownEstimatorError(f"unknown estimator {estimator!r}; choose one of {', '.join(sorted(ESTIMATORS))}")
    if not temperature > 0:
        raise SelectionError(f"the temperature must be positive, got {temperature}")


def select_from_candidates(
    candidates: Sequence[Candidate],
    inputs: Tensor,
    labels: Tensor,
    *,
    k: int = 1,
    objective: str = DEFAULT_OBJECTIVE,
    temperature: float = DEFAULT_TEMPERATURE,
    beta: float = DEFAULT_BETA,
    kappa: float = DEFAULT_KAPPA,
    estimator: str = DEFAULT_ESTIMATOR,
    seed: int = 0,
    chunk_size: int | None = None,
    exhaustive_limit: int = DEFAULT_EXHAUSTIVE_LIMIT,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    estimator_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> SelectionReport:
    """Score every candidate snapshot on the probe set and choose `k` teachers.

    Args:
        candidates: the snapshots in training order (see `Candidate`); the initialisation among
            them is scored but excluded from the min–max ranges and from the choice.
        inputs: the probe inputs, N × ... (flattened for the input kernel K_X).
        labels: the probe labels, N integer class indices.
        k: how many teachers; 1 <= k <= number of non-initial candidates.
        objective: "outputs" (J on Î(X;P), Î(Y;P); default) or "features" (J on Î(X;F), Î(Y;F)).
            An ensemble (k > 1) is scored on the mean of its members' probabilities ("outputs") or
            on the concatenation of its members' features, each scaled to unit median pairwise
            distance ("features").
        temperature: the distillation temperature T at which outputs are softened.
        beta: weight of the input term in J.
        kappa: feature/input kernel width as a fraction of the median pairwise distance.
        estimator: a name in `ESTIMATORS` ("renyi2", default, or "binning").
        seed: seeds the random pairs of the median distance (and the k-means of "binning").
        chunk_size: rows per Gram block (None: dense up to 20k examples, chunked beyond).
        exhaustive_limit: search all C(n, k) ensembles when there are at most this many.
        dtype: compute dtype (float32 by default).
        device: where to compute; default the first accelerator among the inputs and the first
            candidate's tensors, else the inputs' device.
        estimator_options: further keyword arguments for the estimator's constructor.
        progress: show a progress bar over the candidates.

    Returns:
        a `SelectionReport` (`.selected` in rank order, `.scores` in the candidates' order).

    Raises (all subclasses of `SelectionError`, a `ValueError`): `EmptyProbeError`,
    `SingleClassProbeError`, `ClassCountMismatchError`, `TooManyTeachersError`, `ShapeMismatchError`,
    `NonFiniteError`, `DegenerateProbeError`, `UnknownEstimatorError`, `UnknownObjectiveError`.
    """
    check_request(objective, estimator, temperature)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TooManyTeachersError(f"k must be a positive integer number of teachers, got {k!r}")
    _, y = check_probe(inputs, labels)
    num_classes = _check_candidates(candidates)
    eligible = [i for i, c in enumerate(candidates) if not c.is_init]
    if k > len(eligible):
        n_init = len(candidates) - len(eligible)
        note = f" ({n_init} initialisation snapshot excluded)" if n_init else ""
        raise TooManyTeachersError(
            f"k={k} teachers requested but there are only {len(eligible)} candidate snapshots{note}; lower k "
            "or keep more snapshots (e.g. a smaller snapshot_every)")

    device = _pick_device(inputs, candidates, device)
    est = build_estimator(estimator, inputs, labels, kappa=kappa, seed=seed, chunk_size=chunk_size, dtype=dtype,
                          device=device, num_classes=num_classes, **(estimator_options or {}))
    y_cpu = y.cpu()

    feats: list[MutualInformation] = []
    outs: list[MutualInformation] = []
    accuracy: list[float] = []
    probs: list[Tensor] = []
    iterator: Any = candidates
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(candidates, desc="scoring snapshots", unit="snapshot")
    for c in iterator:
        try:
            p = output_embedding(c.logits.to(device), temperature)
            outs.append(est.outputs(p))
            feats.append(est.features(c.features))
        except NonFiniteError as e:
            raise NonFiniteError(f"snapshot {c.name!r}: {e}") from None
        except ShapeMismatchError as e:
            raise ShapeMismatchError(f"snapshot {c.name!r}: {e}") from None
        probs.append(p)
        accuracy.append(float((c.logits.argmax(dim=1).cpu() == y_cpu).float().mean()))

    infos = outs if objective == "outputs" else feats
    x_range = MinMax.over([infos[i].x for i in eligible])
    y_range = MinMax.over([infos[i].y for i in eligible])
    single_j = [objective_value(info, x_range, y_range, beta) for info in infos]

    cache: dict[tuple[int, ...], tuple[MutualInformation, float]] = {}

    def score(members: tuple[int, ...]) -> tuple[MutualInformation, float]:
        if members not in cache:
            if len(members) == 1:
                info = infos[members[0]]
            elif objective == "outputs":
                info = est.outputs(torch.stack([probs[i] for i in members]).mean(dim=0))
            else:
                info = est.features([candidates[i].features for i in members])
            cache[members] = (info, objective_value(info, x_range, y_range, beta))
        return cache[members]

    chosen, search, ensemble_j = choose_members(single_j, eligible, k, lambda m: score(m)[1],
                                                exhaustive_limit=exhaustive_limit)
    ensemble_info, _ = score(tuple(sorted(chosen)))
    rank = {i: r + 1 for r, i in enumerate(chosen)}
    scores = [
        SnapshotScore(
            name=c.name, epoch=c.epoch, step=c.step, accuracy=accuracy[i],
            i_xf=feats[i].x, i_yf=feats[i].y, i_xp=outs[i].x, i_yp=outs[i].y, j=single_j[i],
            chosen=i in rank, rank=rank.get(i), init=c.is_init, path=c.path, metadata=dict(c.metadata))
        for i, c in enumerate(candidates)
    ]
    return SelectionReport(
        selected=[candidates[i].name for i in chosen],
        scores=scores,
        objective=objective,
        k=k,
        temperature=float(temperature),
        beta=float(beta),
        kappa=float(kappa),
        estimator=estimator,
        probe_size=est.n,
        seed=int(seed),
        search=search,
        ensemble={"members": [candidates[i].name for i in chosen], "i_x": ensemble_info.x,
                  "i_y": ensemble_info.y, "j": ensemble_j},
        ranges={"i_x": [x_range.lo, x_range.hi], "i_y": [y_range.lo, y_range.hi]},
        estimator_options=est.options(),
    )
