"""`select_teachers`: score the snapshots of a run on a probe set and choose the teachers.

The probe set is a fixed, seeded sample of the (training) dataset, turned into model inputs once
and shared by every snapshot: a label-stratified sample of images (through the deterministic
evaluation transform) or texts for classifiers, token positions of held-out text for causal LMs
(Y the next token); the first snapshot's model decides which (`probe_sources`). Each
snapshot is loaded (weight hashes verified), put in `eval()` mode (so BatchNorm uses its running
statistics and the scores are reproducible) and run once over the probe under
`torch.inference_mode()`, giving its penultimate features and logits (`forward_with_features`).
Those become `Candidate`s for `select_from_candidates`, which estimates the information terms and
makes the choice (see `objective` for J and the search). Snapshots at global step 0 are the
initialisation: scored and reported, never chosen.

The estimator computes every term, the task terms Î(Y;·) included, on one probe set (the kernels
of inputs, labels, features and outputs are over the same examples), so a `held_out_probe` cannot
feed the task terms; when given it is used for each snapshot's held-out accuracy
(`SnapshotScore.metadata["held_out_accuracy"]`, saved in selection.json; table.md shows the probe
accuracy only). `extract_candidates` is the first half of `select_teachers` on its own: the probe
and every snapshot's features and logits, to score under several objectives without rerunning the
models.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models import forward_with_features, label_names_of, num_labels_of
from ..snapshots import Snapshot, SnapshotIndex
from .errors import (
    ClassCountMismatchError,
    LabelSpaceMismatchError,
    SelectionError,
    TooManyTeachersError,
)
from .kernels import check_probe_classes
from .objective import Candidate, check_request, select_from_candidates
from .probe_sources import probe_source
from .report import SelectionReport
from .settings import SelectionSettings

# ---------------------------------------------------------------------------------------------
# Snapshots


def _as_snapshots(snapshots) -> tuple[list[Snapshot], str | None]:
    if isinstance(snapshots, (str, os.PathLike)):
        snapshots = SnapshotIndex.load(snapshots)
    if isinstance(snapshots, SnapshotIndex):
        return list(snapshots), str(snapshots.snapshot_dir)
    if isinstance(snapshots, Snapshot):
        snapshots = [snapshots]
    snapshots = list(snapshots) if isinstance(snapshots, Iterable) else snapshots
    if not isinstance(snapshots, list) or not all(isinstance(s, Snapshot) for s in snapshots):
        raise TypeError("snapshots must be a SnapshotIndex, a snapshot dir path or a list of Snapshot objects")
    parents = {str(s.path.parent) for s in snapshots}
    return snapshots, (parents.pop() if len(parents) == 1 else None)


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    k = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
    return f"label {k} is {a[k] if k < len(a) else None!r} vs {b[k] if k < len(b) else None!r}"


class _LabelSpace:
    """The label space every snapshot must share: the first snapshot's, checked against the probe."""

    def __init__(self, probe_names: list[str] | None, probe_classes: int):
        self.probe_names, self.probe_classes = probe_names, probe_classes
        self.first: tuple[str, int, list[str] | None] | None = None

    def check(self, name: str, model: nn.Module) -> None:
        n, names = num_labels_of(model), label_names_of(model)
        if self.first is None:
            if self.probe_classes > n:
                raise ClassCountMismatchError(
                    f"the probe set has labels up to {self.probe_classes - 1} but snapshot {name!r} predicts {n} "
                    "classes; draw the probe from the dataset the teacher was trained on")
            if names is not None and self.probe_names is not None and names != self.probe_names:
                raise LabelSpaceMismatchError(
                    f"snapshot {name!r} and the probe dataset name their labels differently "
                    f"({_first_difference(names, self.probe_names)}); draw the probe from the dataset the teacher "
                    "was trained on")
            self.first = (name, n, names)
            return
        first, n0, names0 = self.first
        if n != n0:
            raise ClassCountMismatchError(
                f"snapshot {name!r} has {n} classes but {first!r} has {n0}; every snapshot must share one label "
                "space, so select among the snapshots of one run (or of runs on the same dataset)")
        if names is not None and names0 is not None and names != names0:
            raise LabelSpaceMismatchError(
                f"snapshots {first!r} and {name!r} name their labels differently ({_first_difference(names0, names)}); "
                "every snapshot must share one label space, so select among the snapshots of one run (or of runs on "
                "the same dataset)")


def default_device() -> torch.device:
    """The accelerator if there is one (CUDA, then XPU), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    return torch.device("cpu")


@torch.inference_mode()
def _run(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device,
         bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    features, logits = [], []
    for batch in batches:
        f, z = forward_with_features(model, {k: v.to(device, non_blocking=True) for k, v in batch.items()})
        features.append(f.float())
        logits.append(z.float())
        if bar is not None:
            bar.update(1)
    return torch.cat(features), torch.cat(logits)


# ---------------------------------------------------------------------------------------------
# The entry points


@dataclass
class ProbeCandidates:
    """Every snapshot's features and logits on one probe set: what `select_from_candidates` takes.

    `inputs` and `labels` are the probe (on `device`); `candidates` are in training order;
    `info` describes the probe (size, seed, class counts, transform) and the time taken;
    `token_labels` says the labels are next tokens (a causal LM's probe; see `lm_probe`).
    """

    candidates: list[Candidate]
    inputs: torch.Tensor
    labels: torch.Tensor
    snapshot_dir: str | None
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
    token_labels: bool = False


def _run_snapshots(snapshot_list: list[Snapshot], first_model: nn.Module, batches, held_out, space: "_LabelSpace",
                   device: torch.device, progress: bool) -> list[Candidate]:
    """Each snapshot loaded in turn (the first is already), checked against the label space, and run
    over the probe (and the held-out probe) in eval mode: its features, logits and accuracies."""
    candidates: list[Candidate] = []
    n_batches = len(batches) + (len(held_out[0]) if held_out else 0)
    outer: Iterable[Snapshot] = tqdm(snapshot_list, desc="snapshots", unit="snapshot") if progress else snapshot_list
    bar = tqdm(total=n_batches, desc="probe batches", unit="batch", leave=False) if progress else None
    try:
        for i, snapshot in enumerate(outer):
            model = first_model if i == 0 else snapshot.load_model(verify=True)
            first_model = None  # one model in memory at a time
            space.check(snapshot.name, model)
            model.to(device).eval()
            if bar is not None:
                bar.reset(total=n_batches)
                bar.set_description(snapshot.name)
            features, logits = _run(model, batches, device, bar)
            metadata: dict[str, Any] = {"final": bool(snapshot.final)}
            if snapshot.accuracy is not None:
                metadata["eval_accuracy"] = float(snapshot.accuracy)
            if held_out is not None:
                _, h_logits = _run(model, held_out[0], device, bar)
                metadata["held_out_accuracy"] = float((h_logits.argmax(dim=1) == held_out[1]).float().mean())
            del model
            candidates.append(Candidate(
                name=snapshot.name, features=features, logits=logits, epoch=float(snapshot.epoch),
                step=int(snapshot.global_step), init=snapshot.global_step == 0, path=str(snapshot.path),
                metadata=metadata))
    finally:
        if bar is not None:
            bar.close()
    return candidates


def extract_candidates(
    snapshots: SnapshotIndex | str | os.PathLike | Sequence[Snapshot],
    probe_dataset,
    settings: SelectionSettings | None = None,
    *,
    held_out_probe=None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **overrides: Any,
) -> ProbeCandidates:
    """Draw the probe set and run every snapshot over it (the first half of `select_teachers`).

    The arguments mean what they mean for `select_teachers`. Useful to score the same snapshots
    under several objectives or settings without running the models again:
    `select_from_candidates(pc.candidates, pc.inputs, pc.labels, objective=...,
    token_labels=pc.token_labels)`.
    """
    settings = SelectionSettings.of(settings, **overrides)
    batch_size = settings.batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SelectionError(f"batch_size must be a positive integer, got {batch_size!r}")
    snapshot_list, snapshot_dir = _as_snapshots(snapshots)
    if not snapshot_list:
        raise SelectionError("there are no snapshots to select from; train with snapshot_strategy='epoch' (or "
                             "'steps') so that the run keeps snapshots")
    device = torch.device(device) if device is not None else default_device()

    # The first snapshot's model fixes the kind of probe (images, text, token positions) and the label space.
    first_model = snapshot_list[0].load_model(verify=True)
    source = probe_source(settings, probe_dataset, first_model, snapshot_list[0].path)
    space = _LabelSpace(*source.label_space(probe_dataset))

    t0 = time.perf_counter()
    probe = source.draw(probe_dataset)
    batches, inputs, labels = probe.batches, probe.inputs, probe.labels
    check_probe_classes(labels, max(num_labels_of(first_model), int(labels.max()) + 1),
                        token_labels=source.token_labels)
    held_out = None
    if held_out_probe is not None:
        h = source.draw(held_out_probe)
        held_out = (h.batches, h.labels.to(device))
    probe_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    candidates = _run_snapshots(snapshot_list, first_model, batches, held_out, space, device, progress)
    forward_s = time.perf_counter() - t0

    info = {
        "probe": {"size": int(labels.numel()), "seed": int(settings.seed),
                  "max_probe_samples": settings.max_probe_samples, **source.describe(probe),
                  "held_out_size": int(held_out[1].numel()) if held_out else None},
        "device": str(device),
        "timing_s": {"probe": round(probe_s, 3), "forward": round(forward_s, 3)},
    }
    return ProbeCandidates(candidates, inputs.to(device), labels.to(device), snapshot_dir, device, info,
                           token_labels=source.token_labels)


def select_teachers(
    snapshots: SnapshotIndex | str | os.PathLike | Sequence[Snapshot],
    probe_dataset,
    k: int | None = None,
    *,
    settings: SelectionSettings | None = None,
    held_out_probe=None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **overrides: Any,
) -> SelectionReport:
    """Score every snapshot of a teacher run on a probe set and choose `k` teachers.
    Args:
        snapshots: a `SnapshotIndex`, a snapshot dir (or a run's output dir holding `snapshots/`),
            or a list of `Snapshot`s, in training order. Snapshots at global step 0 are the
            initialisation: scored, never chosen.
        probe_dataset: a `datasets.Dataset` with raw images and integer labels (e.g.
            `load_fashion_mnist("train")`), normally the teachers' training data; for text
            classifiers tokenized texts with labels; for causal LMs tokenized text (`input_ids`,
            e.g. `lm_blocks(...)`), whose seeded positions are the probe (`probe_context` tokens of
            context each, Y the next token).
        k: how many teachers (1 <= k <= number of non-initial snapshots); default `settings.k` (1).
        settings: a `SelectionSettings`: the probe (max_probe_samples, seed, batch_size,
            label_column, image_column; `label` and `labels` stand for each other when the dataset
            has only the other, as after `tokenize_text_dataset`) and the choice (objective,
            temperature, beta, kappa, estimator, accuracy_margin, …) and, for images, `transform` and
            `default_transform` (see `SelectionSettings`). Any of its fields may also
            be given as a keyword argument, which wins: `select_teachers(run, data, k=2,
            objective="outputs", max_probe_samples=1000)`.
        device: where models run and the estimator computes; default the accelerator, if any.
        label_column, image_column: the dataset's columns (`label` and `labels` stand for each other
            when the dataset has only the other, as after `tokenize_text_dataset`).
        held_out_probe: an optional dataset like `probe_dataset` (e.g. the test split), drawn the
            same way; each snapshot's accuracy on it goes into `metadata["held_out_accuracy"]`.
            It does not enter J: the estimator computes every term on one probe set.
        progress: tqdm bars over the snapshots and their batches.

    Returns:
        the `SelectionReport`, with `snapshot_dir` set (when the snapshots share one folder) and
        `extra` holding the probe's description and the time taken.

    Raises:
        `SelectionError` subclasses (a `ValueError`) for a bad request: `TooManyTeachersError`,
        `EmptyProbeError`, `SingleClassProbeError`, `ProbeTooSmallError`, `SparseClassError`,
        `TemperatureTooHighError`, `ClassCountMismatchError`,
        `LabelSpaceMismatchError`, `UnknownObjectiveError`, `UnknownEstimatorError`;
        `SnapshotError` for a missing or altered snapshot; `DataError` for a dataset without the
        named columns.
    """
    started = time.perf_counter()
    settings = SelectionSettings.of(settings, **overrides, **({} if k is None else {"k": k}))
    k = settings.k
    check_request(settings.objective, settings.estimator, settings.temperature)
    snapshot_list, _ = _as_snapshots(snapshots)
    # Requests that cannot succeed fail here, before any model runs.
    n_init = sum(s.global_step == 0 for s in snapshot_list)
    n_candidates = len(snapshot_list) - n_init
    if snapshot_list and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_candidates):
        note = f" ({n_init} initialisation snapshot excluded)" if n_init else ""
        raise TooManyTeachersError(
            f"k={k!r} teachers requested but there are {n_candidates} candidate snapshots{note}; use "
            f"1 <= k <= {n_candidates}, or keep more snapshots (e.g. a smaller snapshot_every)")
    probe = extract_candidates(
        snapshots if isinstance(snapshots, SnapshotIndex) else snapshot_list, probe_dataset, settings,
        held_out_probe=held_out_probe, device=device, progress=progress)

    t0 = time.perf_counter()
    report = select_from_candidates(probe.candidates, probe.inputs, probe.labels, settings, device=probe.device,
                                    progress=progress, token_labels=probe.token_labels)
    report.snapshot_dir = probe.snapshot_dir
    report.extra.update(probe.info)
    report.extra["timing_s"].update({"scoring": round(time.perf_counter() - t0, 3),
                                     "total": round(time.perf_counter() - started, 3)})
    return report


__all__ = ["ProbeCandidates", "extract_candidates", "select_teachers"]
