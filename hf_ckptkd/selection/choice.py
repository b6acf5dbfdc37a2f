"""Scoring the candidates and choosing k teachers among the snapshots of a run.

Every candidate snapshot is scored on the probe set (see `estimators`): Î(X;F), Ĩ(Y;F) of its
penultimate features and Î(X;P), Ĩ(Y;P) of its outputs softened at the distillation temperature T.
The objective (`objectives`: J of a candidate and of a set, whether it is trivial) then makes the
choice. The initialisation (`Candidate.is_init`) is scored and reported but never chosen.

Members are distinct. For an information objective the search over sets of k is exhaustive when
C(n, k) <= `exhaustive_limit` (500), where n is the number of candidates; otherwise greedy: start
from the best single candidate and repeatedly add the candidate that raises the ensemble's J most.
Ties go to the earlier snapshot in training order. The trivial objectives take the k best by their
own J.

Whatever the objective, a chosen snapshot whose probe accuracy is more than `accuracy_margin`
(5 points by default) below the best candidate's is flagged in `SelectionReport.warnings`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import (
    ClassCountMismatchError,
    NonFiniteError,
    SelectionError,
    ShapeMismatchError,
    TemperatureTooHighError,
    TooManyTeachersError,
)
from .estimators import build_estimator
from .label_information import LOG2E
from .kernels import (
    MutualInformation,
    check_probe,
    check_probe_classes,
    output_embedding,
)
from .objectives import ScoredCandidates, objective_named
from .report import SelectionReport, SnapshotScore
from .settings import (
    DEFAULT_EXHAUSTIVE_LIMIT,
    SelectionSettings,
)
from .token_information import next_token_terms

# Softened outputs whose largest and smallest probability differ by less than this are uniform to
# float precision: the temperature has washed out everything the snapshot says.
UNIFORM_SPREAD = 1e-6


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


def choose_members(single_j: Sequence[float], eligible: Sequence[int], k: int,
                   ensemble_j: Callable[[tuple[int, ...]], float], *,
                   exhaustive_limit: int = DEFAULT_EXHAUSTIVE_LIMIT) -> tuple[list[int], str, float]:
    """Choose k distinct members among `eligible` (indices) maximising `ensemble_j`.

    `single_j[i]` is candidate i's own J; `ensemble_j(members)` scores a sorted tuple of indices;
    1 <= k <= len(eligible) (`check_teacher_count`).
    Returns (members in rank order, search, J of the chosen set), search being "exhaustive" or
    "greedy". Exhaustive when C(len(eligible), k) <= exhaustive_limit, members then ranked by their
    own J; greedy otherwise, members ranked in the order they were added. Ties go to lower indices.
    """
    eligible = list(eligible)
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


def check_teacher_count(k: int, n_candidates: int, n_init: int) -> None:
    """There are at least k candidates that may be chosen (`n_candidates`, the `n_init` initialisation
    snapshots not counted); `SelectionSettings` has already checked that k is a positive integer."""
    if k > n_candidates:
        note = f" ({n_init} initialisation snapshot excluded)" if n_init else ""
        raise TooManyTeachersError(
            f"k={k} teachers requested but there are only {n_candidates} candidate snapshots{note}; lower k "
            "or keep more snapshots (e.g. a smaller snapshot_every)")


def _eligible(candidates: Sequence[Candidate], k: int) -> list[int]:
    """Indices of the candidates that may be chosen (all but the initialisation); at least k of them."""
    eligible = [i for i, c in enumerate(candidates) if not c.is_init]
    check_teacher_count(k, len(eligible), len(candidates) - len(eligible))
    return eligible


def _softened_outputs(candidates: Sequence[Candidate], eligible: Sequence[int], temperature: float,
                      device: torch.device) -> list[Tensor]:
    """Each candidate's output embedding at temperature T; refuses a T at which every output is uniform."""
    probs: list[Tensor] = []
    for c in candidates:
        try:
            probs.append(output_embedding(c.logits.to(device), temperature))
        except NonFiniteError as e:
            raise NonFiniteError(f"snapshot {c.name!r}: {e}") from None
    spread = [float((p.max(dim=1).values - p.min(dim=1).values).max()) for p in probs]
    if max(spread[i] for i in eligible) < UNIFORM_SPREAD:
        raise TemperatureTooHighError(
            f"the temperature T={temperature:g} is too high for the estimator: softened at T, every snapshot's "
            f"outputs are uniform to float precision (largest spread between classes {max(spread):.1e}), so they "
            "carry no information to score; use the distillation temperature (e.g. 4)")
    return probs


def _information(candidates: Sequence[Candidate], probs: Sequence[Tensor], est, labels: Tensor,
                 progress: bool) -> tuple[list[MutualInformation], list[MutualInformation], list[float], list[float],
                                          list[float]]:
    """(features' information, outputs' information, probe accuracy, the outputs' label information as
    they are, probe loss) of every candidate."""
    feats: list[MutualInformation] = []
    outs: list[MutualInformation] = []
    accuracy: list[float] = []
    predictive: list[float] = []
    probe_loss: list[float] = []
    iterator: Any = candidates
    if progress:
        iterator = tqdm(candidates, desc="scoring snapshots", unit="snapshot")
    for c, p in zip(iterator, probs):
        try:
            outs.append(est.outputs(p))
            feats.append(est.features(c.features))
        except NonFiniteError as e:
            raise NonFiniteError(f"snapshot {c.name!r}: {e}") from None
        except ShapeMismatchError as e:
            raise ShapeMismatchError(f"snapshot {c.name!r}: {e}") from None
        accuracy.append(float((c.logits.argmax(dim=1).cpu() == labels).float().mean()))
        unit, bits = est.label_terms.entropy_bits, est.label_terms.predictive(c.logits)
        predictive.append(bits / unit if unit > 0 else 0.0)
        probe_loss.append((unit - bits) / LOG2E)  # nats, as Trainer's eval_loss
    return feats, outs, accuracy, predictive, probe_loss


def accuracy_warnings(candidates: Sequence[Candidate], accuracy: Sequence[float], eligible: Sequence[int],
                      chosen: Sequence[int], margin: float) -> list[str]:
    """One line per chosen snapshot whose probe accuracy is more than `margin` below the best candidate's."""
    best = max(eligible, key=lambda i: (accuracy[i], -i))
    return [
        f"{candidates[i].name} has probe accuracy {accuracy[i]:.1%}, {100 * (accuracy[best] - accuracy[i]):.1f} "
        f"points below the best candidate ({candidates[best].name}, {accuracy[best]:.1%}; margin "
        f"{100 * margin:g} points): check this choice, or compare objective='accuracy'"
        for i in chosen if accuracy[i] < accuracy[best] - margin]


def score_candidates(candidates: Sequence[Candidate], inputs: Tensor, labels: Tensor, settings: SelectionSettings, *,
                     device=None, progress: bool = False, token_counts: Tensor | None = None) -> ScoredCandidates:
    """Check the probe and the candidates, then estimate every candidate's information terms (the
    settings checked themselves when they were made)."""
    s = settings
    _, y = check_probe(inputs, labels)
    num_classes = _check_candidates(candidates)
    check_probe_classes(y, num_classes, token_labels=token_counts is not None)
    eligible = _eligible(candidates, s.k)
    device = _pick_device(inputs, candidates, device)
    est = build_estimator(s.estimator, inputs, labels, kappa=s.kappa, seed=s.seed, chunk_size=s.chunk_size,
                          dtype=s.dtype, device=device, num_classes=num_classes,
                          label_terms=next_token_terms(y, token_counts, num_classes, s.temperature, s.seed),
                          **(s.estimator_options or {}))
    probs = _softened_outputs(candidates, eligible, s.temperature, device)
    feats, outs, accuracy, predictive, probe_loss = _information(candidates, probs, est, y.cpu(), progress)
    return ScoredCandidates(candidates, eligible, feats, outs, accuracy, probs, est, y, predictive, probe_loss)


def choose(scored: ScoredCandidates, settings: SelectionSettings) -> tuple[list[int], str, MutualInformation, float,
                                                                           list[float]]:
    """(chosen indices in rank order, search, the chosen set's information and J, every candidate's own J).

    An information objective searches the sets of k for the best J of the set as a whole; a trivial
    one takes its k best."""
    s, c = settings, scored
    objective = objective_named(s.objective)
    single_j = objective.values(c, s.beta)
    cache: dict[tuple[int, ...], tuple[MutualInformation, float]] = {}

    def score(members: tuple[int, ...]) -> tuple[MutualInformation, float]:
        """(information, J) of a set of members."""
        if members not in cache:
            info = objective.information(c, members)
            cache[members] = (info, objective.set_value(info, [single_j[i] for i in members], s.beta))
        return cache[members]

    if objective.trivial:
        chosen = sorted(c.eligible, key=lambda i: (-single_j[i], i))[:s.k]
        search, ensemble_j = "top-k", score(tuple(sorted(chosen)))[1]
    else:
        chosen, search, ensemble_j = choose_members(single_j, c.eligible, s.k, lambda m: score(m)[1],
                                                    exhaustive_limit=s.exhaustive_limit)
    return chosen, search, score(tuple(sorted(chosen)))[0], ensemble_j, single_j


def report_choice(scored: ScoredCandidates, settings: SelectionSettings, chosen: list[int], search: str,
                  ensemble_info: MutualInformation, ensemble_j: float, single_j: list[float]) -> SelectionReport:
    """The `SelectionReport` of a choice: every candidate's scores, the chosen set, the warnings."""
    s, c = settings, scored
    rank = {i: r + 1 for r, i in enumerate(chosen)}
    scores = [
        SnapshotScore(
            name=cand.name, epoch=cand.epoch, step=cand.step, accuracy=c.accuracy[i],
            i_xf=c.features[i].x, i_yf=c.features[i].y, i_xp=c.outputs[i].x, i_yp=c.outputs[i].y, j=single_j[i],
            i_yp1=c.predictive[i], probe_loss=c.probe_loss[i],
            chosen=i in rank, rank=rank.get(i), init=cand.is_init, path=cand.path, metadata=dict(cand.metadata))
        for i, cand in enumerate(c.candidates)
    ]
    names = [c.candidates[i].name for i in chosen]
    return SelectionReport(
        selected=names, scores=scores, objective=s.objective, k=s.k, temperature=float(s.temperature),
        beta=float(s.beta), kappa=float(s.kappa), estimator=s.estimator, probe_size=c.estimator.n, seed=int(s.seed),
        search=search, ensemble={"members": names, "i_x": ensemble_info.x, "i_y": ensemble_info.y, "j": ensemble_j},
        label_entropy_bits=float(c.estimator.entropy_y), accuracy_margin=float(s.accuracy_margin),
        warnings=accuracy_warnings(c.candidates, c.accuracy, c.eligible, chosen, s.accuracy_margin)
        + objective_named(s.objective).notes(c),
        estimator_options=c.estimator.options())


def select_from_candidates(candidates: Sequence[Candidate], inputs: Tensor, labels: Tensor,
                           settings: SelectionSettings | None = None, *, device: torch.device | str | None = None,
                           progress: bool = False, token_counts: Tensor | None = None, **overrides: Any) -> SelectionReport:
    """Score every candidate snapshot on the probe set and choose `settings.k` teachers.

    Args:
        candidates: the snapshots in training order (see `Candidate`); the initialisation among
            them is scored but never chosen.
        inputs: the probe inputs, N × ... (flattened for the input kernel K_X).
        labels: the probe labels, N integer class indices.
        settings: a `SelectionSettings` (k, objective, temperature, beta, kappa, estimator, seed,
            chunk_size, exhaustive_limit, accuracy_margin, dtype, estimator_options); any of them
            may also be given as a keyword argument, which wins. Every snapshot is scored whatever
            the objective. An ensemble (k > 1) is scored on the mean of its members' probabilities
            ("outputs") or on the concatenation of its members' features, each scaled to unit
            median pairwise distance ("features"); the trivial objectives take their k best.
        device: where to compute; default the first accelerator among the inputs and the first
            candidate's tensors, else the inputs' device.
        progress: show a progress bar over the candidates.
        token_counts: for a causal LM's next-token labels, the next-token counts of the text the
            probe is drawn from (`ProbeCandidates.token_counts`, or `torch.bincount(labels, minlength=V)`):
            sparse classes are then accepted, and the label terms are those of `token_information`.

    Returns:
        a `SelectionReport` (`.selected` in rank order, `.scores` in the candidates' order,
        `.warnings` for chosen snapshots far below the best probe accuracy).

    Raises (all subclasses of `SelectionError`, a `ValueError`): `EmptyProbeError`,
    `SingleClassProbeError`, `ProbeTooSmallError`, `SparseClassError`, `ClassCountMismatchError`,
    `TooManyTeachersError`, `ShapeMismatchError`, `NonFiniteError`, `TemperatureTooHighError`,
    `DegenerateProbeError`, `UnknownEstimatorError`, `UnknownObjectiveError`, and a plain
    `SelectionError` for an unknown setting.
    """
    settings = SelectionSettings.of(settings, **overrides)
    scored = score_candidates(candidates, inputs, labels, settings, device=device, progress=progress,
                              token_counts=token_counts)
    return report_choice(scored, settings, *choose(scored, settings))
