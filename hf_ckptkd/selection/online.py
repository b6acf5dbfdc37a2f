"""Scoring one snapshot at a time, as it is written: the score behind `SnapshotCallback(keep_top=M)`.

A run that deletes snapshots as it goes must compare a new snapshot with ones scored hours earlier
and long since gone, so its score has to mean the same thing whenever it is computed and whichever
snapshots exist. The score is the information objective's own J of the one snapshot,

    score = Ĩ(Y;·) + β · Î(X;·)        (on the softened outputs P, or the penultimate features F)

with both terms on the fixed scales `objective` documents (a share of H(Y) of the probe labels, a
share of a fixed bound of the probe set) and no rescaling over the candidates. The probe is drawn
from `probe_dataset` exactly as `select_teachers` draws it (same size, seed and transform), so a
snapshot's recorded score is the `j` that `select_teachers(run, probe_dataset, objective=...)`
reports for it afterwards, and the snapshots a run keeps are the ones that selector ranks best.
(A min–max rescaling over the candidates, as J was first defined, would change every score each
time a snapshot arrives or is deleted, and could not be computed online.)

Only the information objectives have such a score: "final" is the newest snapshot, which the
run keeps anyway, and "accuracy" reads the evaluation each snapshot happened to record.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import DEFAULT_KEEP_TOP_OBJECTIVE, DEFAULT_KEEP_TOP_PROBE_SAMPLES
from ..data.loading import resolve_label_column
from ..snapshots.folders import Snapshot
from .errors import ClassCountMismatchError, SelectionError
from .estimators import build_estimator
from .forward import run_model
from .lm_probe import check_token_text, is_token_text
from .objectives import OBJECTIVES, Objective, objective_named, objective_value
from .probe import labels_of
from .selector import extract_candidates
from .settings import SelectionSettings
from .token_information import next_token_terms


def keep_top_settings(objective: str = DEFAULT_KEEP_TOP_OBJECTIVE,
                      max_probe_samples: int | None = DEFAULT_KEEP_TOP_PROBE_SAMPLES, **overrides: Any) -> SelectionSettings:
    """The `SelectionSettings` a keep-top run scores with by default (any field may be overridden)."""
    return SelectionSettings.of(objective=objective, max_probe_samples=max_probe_samples, **overrides)


def keep_top_objective(name: str) -> Objective:
    """The registered objective `name`, if it can score one snapshot alone (what keep-top needs)."""
    objective = objective_named(name)
    if not objective.scores_alone:
        alone = [o.name for o in OBJECTIVES.values() if o.scores_alone]
        raise SelectionError(
            f"keep_top scores snapshots with an information objective, not objective={name!r}: only "
            f"{', '.join(map(repr, alone))} give a score that compares across the run "
            "(the newest snapshot is kept anyway, and recorded accuracies are not on one probe); use "
            f"objective={DEFAULT_KEEP_TOP_OBJECTIVE!r} (the default) or another of them")
    return objective


def run_probe_settings(run, **overrides: Any) -> SelectionSettings:
    """The probe settings of a run's data (a `tasks.RunData`): its image transform and its columns."""
    return SelectionSettings.of(transform=run.transform, label_column=run.label_column,
                                image_column=run.data.image_column, **overrides)


class SnapshotScorer:
    """Score single snapshots on a fixed probe set: `scorer(snapshot) -> {"value": J, ...}`.

    Args:
        probe_dataset: what `select_teachers` takes: raw images and integer labels, tokenized
            labelled text, or for a causal LM tokenized text (its next tokens are the labels),
            normally the teachers' training data.
        settings: the probe's and the objective's `SelectionSettings`; default `keep_top_settings()`
            ("outputs", 1,000 probe examples, T = 4, β = 1). The objective must score one snapshot
            alone ("outputs", "features" or "held_out"; `keep_top_objective` checks it).
        device: where the snapshot and the estimator run; default the accelerator, if any.

    The returned dict is what the index records: `value` (J), `objective`, `i_x`, `i_y` (its
    terms), `probe_accuracy`, and the settings that make it reproducible.

    The probe is drawn once, at the first snapshot, and the estimator built once over it (its input
    kernel, and for a causal LM the unigram baseline of the probe text, are the same for every
    snapshot); each later snapshot costs one forward pass over the probe (for a causal LM, one per
    segment of text) and the objective's two terms only. The values are those `select_teachers` computes (the
    same probe tensors, batches, eval mode and estimator calls); tests/test_keep_top.py checks it.
    A scorer serves the snapshots of one run: they must share the first one's label space.
    """

    def __init__(self, probe_dataset, settings: SelectionSettings | None = None, *,
                 device: str | torch.device | None = None, **overrides: Any):
        self.settings = SelectionSettings.of(settings if settings is not None else keep_top_settings(), k=1, **overrides)
        s = self.settings
        self.objective = keep_top_objective(s.objective)
        # Fail before training on a probe set that cannot be scored, not at the first snapshot.
        if is_token_text(probe_dataset, s.label_column):
            check_token_text(probe_dataset)
        else:
            labels = labels_of(probe_dataset, resolve_label_column(probe_dataset, s.label_column))
            if len(set(labels.tolist())) < 2:
                raise SelectionError(f"the keep_top probe_dataset holds {len(labels)} examples of "
                                     f"{len(set(labels.tolist()))} class(es); the label information needs at least "
                                     "two classes: pass the teachers' training data")
        self.probe_dataset, self.device = probe_dataset, device
        self._probe: dict[str, Any] | None = None  # drawn at the first snapshot, then reused

    def __call__(self, snapshot: Snapshot) -> dict[str, Any]:
        s = self.settings
        if self._probe is None:
            # The first snapshot draws the probe (its model fixes the kind of probe, the transform and the
            # label space) as select_teachers does; its batches serve every later snapshot.
            probe = extract_candidates([snapshot], self.probe_dataset, s, device=self.device, progress=False)
            features, logits = probe.candidates[0].features, probe.candidates[0].logits
            self._probe = {"labels": probe.labels, "device": probe.device, "batches": probe.batches,
                           "estimator": build_estimator(
                               s.estimator, probe.inputs, probe.labels, kappa=s.kappa, seed=s.seed,
                               chunk_size=s.chunk_size, dtype=s.dtype, device=probe.device,
                               num_classes=int(logits.shape[1]),
                               label_terms=next_token_terms(probe.labels, probe.token_counts, int(logits.shape[1]),
                                                            s.temperature, s.seed),
                               **(s.estimator_options or {}))}
        else:
            features, logits = run_model(snapshot.load_model(verify=True), self._probe["batches"],
                                         self._probe["device"])
        return self._score(features, logits)

    def _score(self, features: torch.Tensor, logits: torch.Tensor) -> dict[str, Any]:
        """Only the objective's own terms, computed as `objective.score_candidates` computes them."""
        s, probe = self.settings, self._probe
        estimator, labels = probe["estimator"], probe["labels"]
        if logits.shape[1] != estimator.num_classes:
            raise ClassCountMismatchError(f"the snapshot has {logits.shape[1]} classes but the run's first scored "
                                          f"snapshot has {estimator.num_classes}; keep_top scores the snapshots of one run")
        info = self.objective.score_snapshot(estimator, features, logits, s.temperature, probe["device"])
        accuracy = float((logits.argmax(dim=1).cpu() == labels.cpu()).float().mean())
        return {"value": objective_value(info, s.beta), "objective": s.objective, "i_x": info.x, "i_y": info.y,
                "probe_accuracy": accuracy, "beta": float(s.beta), "temperature": float(s.temperature),
                "estimator": s.estimator, "probe_size": int(labels.numel()), "seed": int(s.seed)}


__all__ = ["SnapshotScorer", "keep_top_objective", "keep_top_settings",
           "run_probe_settings"]
