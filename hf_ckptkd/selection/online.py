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

from dataclasses import replace
from typing import Any

import torch

from ..data import resolve_label_column
from ..snapshots import Snapshot
from .errors import SelectionError
from .objective import INFORMATION_OBJECTIVES, check_request, objective_value, score_candidates
from .probe import labels_of
from .selector import extract_candidates
from .settings import SelectionSettings

DEFAULT_KEEP_TOP_OBJECTIVE = "outputs"
# 1,000 probe examples: the estimator's cost grows with the square of the probe, and a 1,000-example
# probe ranks the demo teacher's snapshots as a 2,000-example one does (README, "Keep only the best").
DEFAULT_KEEP_TOP_PROBE_SAMPLES = 1000


def keep_top_settings(objective: str = DEFAULT_KEEP_TOP_OBJECTIVE,
                      max_probe_samples: int | None = DEFAULT_KEEP_TOP_PROBE_SAMPLES, **overrides: Any) -> SelectionSettings:
    """The `SelectionSettings` a keep-top run scores with by default (any field may be overridden)."""
    return SelectionSettings.of(objective=objective, max_probe_samples=max_probe_samples, **overrides)


def run_probe_settings(run, **overrides: Any) -> SelectionSettings:
    """The probe settings of a run's data (a `tasks.RunData`): its image transform and its columns."""
    return SelectionSettings.of(transform=run.transform, label_column=run.label_column,
                                image_column=run.data.image_column, **overrides)


class SnapshotScorer:
    """Score single snapshots on a fixed probe set: `scorer(snapshot) -> {"value": J, ...}`.

    Args:
        probe_dataset: what `select_teachers` takes: raw images and integer labels, or tokenized
            text, normally the teachers' training data.
        settings: the probe's and the objective's `SelectionSettings`; default `keep_top_settings()`
            ("outputs", 1,000 probe examples, T = 4, β = 1). The objective must be "outputs" or
            "features".
        device: where the snapshot and the estimator run; default the accelerator, if any.

    The returned dict is what the index records: `value` (J), `objective`, `i_x`, `i_y` (its
    terms), `probe_accuracy`, and the settings that make it reproducible.
    """

    def __init__(self, probe_dataset, settings: SelectionSettings | None = None, *,
                 device: str | torch.device | None = None, **overrides: Any):
        self.settings = SelectionSettings.of(settings if settings is not None else keep_top_settings(), k=1, **overrides)
        s = self.settings
        if s.objective not in INFORMATION_OBJECTIVES:
            raise SelectionError(
                f"keep_top scores snapshots with an information objective, not objective={s.objective!r}: only "
                f"{' and '.join(map(repr, INFORMATION_OBJECTIVES))} give a score that compares across the run "
                "(the newest snapshot is kept anyway, and recorded accuracies are not on one probe); use "
                "objective='outputs' (the default) or 'features'")
        check_request(s.objective, s.estimator, s.temperature)
        # Fail before training on a probe set that cannot be scored, not at the first snapshot.
        labels = labels_of(probe_dataset, resolve_label_column(probe_dataset, s.label_column))
        if len(set(labels.tolist())) < 2:
            raise SelectionError(f"the keep_top probe_dataset holds {len(labels)} examples of "
                                 f"{len(set(labels.tolist()))} class(es); the label information needs at least two "
                                 "classes: pass the teachers' training data")
        self.probe_dataset, self.device = probe_dataset, device

    def __call__(self, snapshot: Snapshot) -> dict[str, Any]:
        s = self.settings
        probe = extract_candidates([snapshot], self.probe_dataset, s, device=self.device, progress=False)
        # A snapshot alone is its own candidate, even at step 0 (the selector only ever skips choosing those).
        candidate = replace(probe.candidates[0], init=False)
        scored = score_candidates([candidate], probe.inputs, probe.labels, s, device=probe.device)
        info = scored.features[0] if s.objective == "features" else scored.outputs[0]
        return {"value": objective_value(info, s.beta), "objective": s.objective, "i_x": info.x, "i_y": info.y,
                "probe_accuracy": scored.accuracy[0], "beta": float(s.beta), "temperature": float(s.temperature),
                "estimator": s.estimator, "probe_size": int(probe.labels.numel()), "seed": int(s.seed)}


__all__ = ["DEFAULT_KEEP_TOP_OBJECTIVE", "DEFAULT_KEEP_TOP_PROBE_SAMPLES", "SnapshotScorer", "keep_top_settings",
           "run_probe_settings"]
