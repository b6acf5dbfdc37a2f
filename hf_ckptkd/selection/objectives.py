"""The selection objectives: one class each, in one registry.

An objective says how it scores a candidate (its J), whether it is trivial (a baseline that reads
no information), whether it can score one snapshot alone (what keep-top needs), and how reports,
plots and model cards describe it. The selector, the report, the plot, the model card, keep-top,
the command line and recipes look objectives up here (`objective_named`, `OBJECTIVES`) and ask
them; none of them branches on an objective's name.

The information objectives maximise the total task-related information

    J(t) = Ĩ(Y;·_t) + β · Î(X;·_t)          (β = 1 by default)

on the outputs P softened at the distillation temperature T ("outputs": what the student is
taught) or on the penultimate features F ("features": the paper's information plane). Both terms
are already on fixed scales: the label term is a share of the label entropy H(Y), the input term a
share of a fixed bound of the probe set (log2 N for P, S2(K_X) for F), so a difference of 0.1 in
either means the same amount of information whichever snapshots are compared, and β says how many
units of input information one unit of label information is worth. (The first version rescaled
each term min–max over the candidates, which stretched a 0.03 difference to the range of a 0.4 one
and let an uncertain, weak snapshot win on its input term.) For k > 1 they score an ensemble as a
whole with the same J: on the mean of its members' probabilities at T ("outputs"), or on the
concatenation of its members' features, each first divided by its own median pairwise distance so
that every member weighs equally ("features"; a one-member ensemble scores exactly like the member).

Two trivial objectives stand beside them, with the same interface, so that every report and study
can say whether the information is worth its cost: "final" takes the last snapshot(s) in training
order (J = the position in training order), "accuracy" the snapshot(s) with the best validation
accuracy (J = that accuracy: the `eval_accuracy` the run recorded at each snapshot when every
candidate has one, else the accuracy on the probe set).

**A new objective** is a subclass of `InformationObjective` or `TrivialObjective` in this module and
one `register_objective(...)` line at its end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .errors import UnknownObjectiveError
from .kernels import MutualInformation, output_embedding

# How many units of input information one unit of label information is worth in J.
DEFAULT_BETA = 1.0


@dataclass
class ScoredCandidates:
    """Every candidate's information and probe accuracy, and what scoring an ensemble needs: what an
    objective reads to score candidates."""

    candidates: Sequence[Any]    # `choice.Candidate`s: name, features, metadata, is_init
    eligible: list[int]          # the candidates that may be chosen (not the initialisation)
    features: list[MutualInformation]
    outputs: list[MutualInformation]
    accuracy: list[float]
    probs: list[Tensor]          # output embeddings at the temperature, for an ensemble's mean
    estimator: Any
    labels: Tensor               # the probe's labels
    predictive: list[float]      # Ĩ(Y;P₁): the outputs' label information as they are (T = 1), a share of H(Y)
    probe_loss: list[float]      # the probe's mean cross-entropy at T = 1, in nats


def objective_value(info: MutualInformation, beta: float = DEFAULT_BETA) -> float:
    """J = Ĩ(Y;·) + beta · Î(X;·) of an information objective."""
    return info.y + beta * info.x


class Objective:
    """What every objective says: its `name`, whether it is `trivial`, whether it `scores_alone`
    (one snapshot's J does not depend on the other snapshots, so keep-top can score with it), a
    `summary` for reports and cards, and how it scores candidates and sets of them."""

    name: str
    summary: str
    trivial = False
    scores_alone = False
    # Whether J reads the probe's labels as held-out data: on examples the snapshots trained on it
    # would reward memorising them.
    needs_held_out_probe = False
    # What an ensemble's information terms are measured on (reports show them for every objective).
    ensemble_representation = "the mean of the members' probabilities"

    def plot_label(self, temperature: float, beta: float) -> str:
        """How the information plane's title names the objective."""
        raise NotImplementedError

    def values(self, scored: ScoredCandidates, beta: float) -> list[float]:
        """J of every candidate alone."""
        raise NotImplementedError

    def set_value(self, info: MutualInformation, member_values: Sequence[float], beta: float) -> float:
        """J of a set of candidates, given its information and its members' own J."""
        raise NotImplementedError

    def values_from_scores(self, scores: Sequence[dict[str, Any]], beta: float = DEFAULT_BETA) -> dict[str, float]:
        """J of each non-initial snapshot from a saved report's scores (`selection.json`'s "scores"),
        as the selector computes it: for recomputing a run's choice under every objective."""
        raise NotImplementedError

    def notes(self, scored: ScoredCandidates) -> list[str]:
        """Sentences for the report about how this objective had to score these candidates."""
        return []

    def information(self, scored: ScoredCandidates, members: tuple[int, ...]) -> MutualInformation:
        """The information of one candidate or of a set of them, here on the (mean) softened outputs."""
        if len(members) == 1:
            return scored.outputs[members[0]]
        return scored.estimator.outputs(torch.stack([scored.probs[i] for i in members]).mean(dim=0))


class InformationObjective(Objective):
    """J = Ĩ(Y;·) + β·Î(X;·) on one representation; `x_score` and `y_score` name its terms in a
    report's scores."""

    scores_alone = True
    x_score: str
    y_score: str

    def terms(self, scored: ScoredCandidates) -> list[MutualInformation]:
        """Every candidate's information on this objective's representation."""
        raise NotImplementedError

    def score_snapshot(self, estimator, features: Tensor, logits: Tensor, temperature: float,
                       device: torch.device | str | None) -> MutualInformation:
        """One snapshot's information from its probe features and logits (keep-top's score)."""
        raise NotImplementedError

    def values(self, scored: ScoredCandidates, beta: float) -> list[float]:
        return [objective_value(info, beta) for info in self.terms(scored)]

    def set_value(self, info: MutualInformation, member_values: Sequence[float], beta: float) -> float:
        return objective_value(info, beta)

    def values_from_scores(self, scores: Sequence[dict[str, Any]], beta: float = DEFAULT_BETA) -> dict[str, float]:
        # A report written before a term existed has None for it: those snapshots cannot be rescored.
        return {s["name"]: s[self.y_score] + beta * s[self.x_score] for s in scores
                if not s.get("init") and s.get(self.y_score) is not None}


class OutputsObjective(InformationObjective):
    """J on the outputs softened at temperature T: what a student is taught."""

    name = "outputs"
    summary = "J = Ĩ(Y;P) + β·Î(X;P) on the outputs softened at temperature T"
    x_score, y_score = "i_xp", "i_yp"

    def plot_label(self, temperature: float, beta: float) -> str:
        return f"objective on the outputs P at T={temperature:g}, β={beta:g}"

    def terms(self, scored: ScoredCandidates) -> list[MutualInformation]:
        return scored.outputs

    def score_snapshot(self, estimator, features, logits, temperature, device) -> MutualInformation:
        return estimator.outputs(output_embedding(logits.to(device), temperature))


class FeaturesObjective(InformationObjective):
    """J on the penultimate features: the paper's information plane. An ensemble is the
    concatenation of its members' features, each scaled to unit median pairwise distance."""

    name = "features"
    summary = "J = Ĩ(Y;F) + β·Î(X;F) on the penultimate features"
    x_score, y_score = "i_xf", "i_yf"
    ensemble_representation = "the members' concatenated features (each scaled to unit median pairwise distance)"

    def plot_label(self, temperature: float, beta: float) -> str:
        return f"objective on the features F, β={beta:g}"

    def terms(self, scored: ScoredCandidates) -> list[MutualInformation]:
        return scored.features

    def information(self, scored: ScoredCandidates, members: tuple[int, ...]) -> MutualInformation:
        if len(members) == 1:
            return scored.features[members[0]]
        return scored.estimator.features([scored.candidates[i].features for i in members])

    def score_snapshot(self, estimator, features, logits, temperature, device) -> MutualInformation:
        return estimator.features(features)


class TrivialObjective(Objective):
    """A baseline that reads no information: J ranks the candidates, and the k best are taken (a
    set's J is its members' mean)."""

    trivial = True

    def ranking(self, metadata: Sequence[dict[str, Any]], init: Sequence[bool],
                probe_accuracy: Sequence[float], probe_loss: Sequence[float | None]) -> list[float]:
        """J of every candidate from what the run recorded of it and its probe accuracy and loss."""
        raise NotImplementedError

    def values(self, scored: ScoredCandidates, beta: float) -> list[float]:
        return self.ranking([c.metadata for c in scored.candidates], [c.is_init for c in scored.candidates],
                            scored.accuracy, scored.probe_loss)

    def set_value(self, info: MutualInformation, member_values: Sequence[float], beta: float) -> float:
        return sum(member_values) / len(member_values)

    def values_from_scores(self, scores: Sequence[dict[str, Any]], beta: float = DEFAULT_BETA) -> dict[str, float]:
        values = self.ranking([s.get("metadata") or {} for s in scores], [bool(s.get("init")) for s in scores],
                              [s["accuracy"] for s in scores], [s.get("probe_loss") for s in scores])
        return {s["name"]: v for s, v in zip(scores, values) if not s.get("init")}


class FinalObjective(TrivialObjective):
    """The last snapshot(s) in training order: J is the position in training order."""

    name = "final"
    summary = "the last snapshot(s) in training order (a trivial baseline; J = position in training order)"

    def plot_label(self, temperature: float, beta: float) -> str:
        return "the last snapshot (trivial baseline)"

    def ranking(self, metadata, init, probe_accuracy, probe_loss) -> list[float]:
        return [float(i) for i in range(len(metadata))]


class AccuracyObjective(TrivialObjective):
    """The best validation accuracy: the `eval_accuracy` the run recorded at each snapshot when every
    candidate has one, else the accuracy on the probe set."""

    name = "accuracy"
    summary = "the best validation accuracy (a trivial baseline; J = that accuracy)"

    def plot_label(self, temperature: float, beta: float) -> str:
        return "the best validation accuracy (trivial baseline)"

    def ranking(self, metadata, init, probe_accuracy, probe_loss) -> list[float]:
        return recorded_or_probe(metadata, init, "eval_accuracy", probe_accuracy)


def recorded_or_probe(metadata: Sequence[dict[str, Any]], init: Sequence[bool], key: str,
                      on_probe: Sequence[float | None]) -> list[float]:
    """The metric `key` the run recorded at each snapshot when every chosen-from candidate has one,
    else the same metric measured on the probe (the initialisation, never chosen, usually has no
    recorded value: its probe value stands in)."""
    if recorded_everywhere(metadata, init, key):
        return [float(m.get(key, p if p is not None else math.nan)) for m, p in zip(metadata, on_probe)]
    return [float(p) if p is not None else math.nan for p in on_probe]


def recorded_everywhere(metadata: Sequence[dict[str, Any]], init: Sequence[bool], key: str) -> bool:
    """Whether every candidate but the initialisation has the metric `key` recorded."""
    recorded = [m.get(key) for m, is_init in zip(metadata, init) if not is_init]
    return bool(recorded) and all(isinstance(v, (int, float)) for v in recorded)


class HeldOutLossObjective(TrivialObjective):
    """The lowest held-out loss: the `eval_loss` the run recorded at each snapshot when every candidate
    has one, else the probe's cross-entropy (which the report says). It can prefer a less accurate
    snapshot: a memorising teacher's held-out loss rises while its accuracy still creeps up."""

    name = "loss"
    needs_held_out_probe = True
    summary = ("the lowest held-out loss (a trivial baseline; J = minus the recorded eval_loss, else minus the "
               "probe's cross-entropy)")

    def plot_label(self, temperature: float, beta: float) -> str:
        return "the lowest held-out loss (trivial baseline)"

    def ranking(self, metadata, init, probe_accuracy, probe_loss) -> list[float]:
        return [-v for v in recorded_or_probe(metadata, init, "eval_loss", probe_loss)]

    def notes(self, scored: ScoredCandidates) -> list[str]:
        if recorded_everywhere([c.metadata for c in scored.candidates], [c.is_init for c in scored.candidates],
                               "eval_loss"):
            return []
        return ["objective 'loss': not every snapshot recorded an eval_loss (train with an evaluation split and "
                "eval_strategy='epoch', or save_strategy matching it), so the snapshots were ranked by the probe's "
                "cross-entropy instead; that is a held-out loss only if the probe set was not trained on"]


class HeldOutInformationObjective(InformationObjective):
    """J = Ĩ(Y;P₁) + β·Î(X;P): the label information of the outputs as they are (T = 1, not
    recalibrated) on the held-out probe, with the input information of the outputs softened at T.
    Where the recalibrated Ĩ(Y;P) divides out a memorising teacher's overconfidence, this term pays
    for it; an ensemble is scored on the mean of its members' probabilities at T = 1."""

    name = "held_out"
    needs_held_out_probe = True
    summary = "J = Ĩ(Y;P₁) + β·Î(X;P): the outputs' label information as they are (T = 1) on the held-out probe"
    x_score, y_score = "i_xp", "i_yp1"

    def plot_label(self, temperature: float, beta: float) -> str:
        return f"objective on the outputs as they are (T=1) and at T={temperature:g}, β={beta:g}"

    def terms(self, scored: ScoredCandidates) -> list[MutualInformation]:
        entropy = scored.estimator.label_terms.entropy_bits
        return [_with_label_term(o, y * entropy, entropy) for o, y in zip(scored.outputs, scored.predictive)]

    def information(self, scored: ScoredCandidates, members: tuple[int, ...]) -> MutualInformation:
        if len(members) == 1:
            return self.terms(scored)[members[0]]
        mean = torch.stack([torch.softmax(scored.candidates[i].logits.double(), dim=1) for i in members]).mean(dim=0)
        terms = scored.estimator.label_terms
        bits = terms.predictive(mean.clamp(min=1e-300).log())
        return _with_label_term(super().information(scored, members), bits, terms.entropy_bits)

    def score_snapshot(self, estimator, features, logits, temperature, device) -> MutualInformation:
        softened = estimator.outputs(output_embedding(logits.to(device), temperature))
        bits = estimator.label_terms.predictive(logits.to(device))
        return _with_label_term(softened, bits, estimator.label_terms.entropy_bits)


def _with_label_term(info: MutualInformation, bits: float, entropy_y: float) -> MutualInformation:
    """`info` with its label term replaced by Ĩ(Y;P₁) = bits / H(Y), kept below zero (see
    `predictive_label_bits`) so that snapshots worse than the class frequencies still rank."""
    return MutualInformation(x=info.x, y=bits / entropy_y if entropy_y > 0 else 0.0, x_bits=info.x_bits, y_bits=bits)


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Make `objective` available by its name everywhere an objective is named."""
    OBJECTIVES[objective.name] = objective
    return objective


def objective_named(name: str, *, setting: str = "objective") -> Objective:
    """The registered objective called `name`; an `UnknownObjectiveError` naming `setting` and the choices."""
    if name not in OBJECTIVES:
        raise UnknownObjectiveError(f"unknown {setting} {name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def describe(name: str) -> str:
    """An objective's summary, or its bare name for one this installation does not know (an older
    or newer report)."""
    return OBJECTIVES[name].summary if name in OBJECTIVES else name


register_objective(OutputsObjective())
register_objective(FeaturesObjective())
register_objective(FinalObjective())
register_objective(AccuracyObjective())
register_objective(HeldOutLossObjective())
register_objective(HeldOutInformationObjective())
