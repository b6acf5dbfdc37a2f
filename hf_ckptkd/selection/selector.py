"""`select_teachers`: score the snapshots of a run on a probe set and choose the teachers.

The probe set is a fixed, seeded sample of the (training) dataset, turned into model inputs once
and shared by every candidate: a label-stratified sample of images (through the deterministic
evaluation transform) or texts for classifiers, token positions of held-out text for causal LMs
(Y the next token); the first candidate's model decides which (`probe_sources`). Each
candidate (a snapshot of a local run, or a revision of a Hub repo: see `candidates`) is loaded
(weight hashes verified where it records them; one that cannot be loaded is skipped with a
warning), put in `eval()` mode (so BatchNorm uses its running
statistics and the scores are reproducible) and run once over the probe under
`torch.inference_mode()`, giving its penultimate features and logits (`forward_with_features`).
Those become `Candidate`s for `select_from_candidates`, which estimates the information terms and
makes the choice (see `objective` for J and the search). Snapshots at global step 0 are the
initialisation: scored and reported, never chosen.

The estimator computes every term, the label terms Ĩ(Y;·) included, on one probe set (the kernels
of inputs, labels, features and outputs are over the same examples), so a `held_out_probe` cannot
feed the task terms; when given it is used for each snapshot's held-out accuracy
(`SnapshotScore.metadata["held_out_accuracy"]`, saved in selection.json; table.md shows the probe
accuracy only). `extract_candidates` is the first half of `select_teachers` on its own: the probe
and every snapshot's features and logits, to score under several objectives without rerunning the
models. Under `accelerate launch` each process runs its share of the candidates and the main
process scores them all (`processes`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..models.build import label_names_of, num_labels_of
from ..snapshots.folders import Snapshot, SnapshotIndex
from .candidates import CandidateSet, ModelCandidate, resolve_candidates
from .errors import (
    ClassCountMismatchError,
    LabelSpaceMismatchError,
    SelectionError,
)
from .forward import first_loadable, notes_of, outcome_to_cpu, run_candidates
from .kernels import check_probe_classes
from .choice import Candidate, check_teacher_count, select_from_candidates
from .processes import from_main, gather_in_order, process_device, selection_state, share_of
from .probe_sources import probe_source
from .report import SelectionReport
from .settings import SelectionSettings

# ---------------------------------------------------------------------------------------------
# Label spaces


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


# ---------------------------------------------------------------------------------------------
# The entry points


@dataclass
class ProbeCandidates:
    """Every snapshot's features and logits on one probe set: what `select_from_candidates` takes.

    `inputs` and `labels` are the probe (on `device`), `batches` the same probe as model inputs (on
    the CPU); `candidates` are in training order;
    `info` describes the probe (size, seed, class counts, transform) and the time taken;
    `token_counts` is given when the labels are next tokens (a causal LM's probe; see `lm_probe`): how
    often each token follows a position of the whole probe text, the label terms' unigram baseline.
    """

    candidates: list[Candidate]
    inputs: torch.Tensor
    labels: torch.Tensor
    snapshot_dir: str | None
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    token_counts: torch.Tensor | None = None
    batches: list[dict[str, torch.Tensor]] = field(default_factory=list)


# What the selector chooses among, and which revisions, folders or commits of a Hub repo.
Snapshots = SnapshotIndex | str | os.PathLike | Sequence[Snapshot] | Sequence[ModelCandidate]
Revisions = str | Sequence[str] | bool | None  # also the type of `subfolders`
Commits = int | str | bool | None


def extract_candidates(snapshots: Snapshots, probe_dataset, settings: SelectionSettings | None = None, *,
                       revisions: Revisions = None, subfolders: Revisions = None, commits: Commits = None,
                       token: str | bool | None = None, held_out_probe=None, training_probe=None,
                       device: str | torch.device | None = None, progress: bool = True,
                       **overrides: Any) -> ProbeCandidates:
    """Draw the probe set and run every candidate over it (the first half of `select_teachers`).

    The arguments mean what they mean for `select_teachers`. Useful to score the same snapshots
    under several objectives or settings without running the models again:
    `select_from_candidates(pc.candidates, pc.inputs, pc.labels, objective=..., token_counts=pc.token_counts)`. Under
    `accelerate launch` each process runs its share and every process gets all the candidates.
    """
    settings = SelectionSettings.of(settings, **overrides)
    source = resolve_candidates(snapshots, revisions=revisions, subfolders=subfolders, commits=commits, token=token)
    return _extract(source, probe_dataset, settings, held_out_probe, training_probe, device, progress)


def _extract(source: CandidateSet, probe_dataset, settings: SelectionSettings, held_out_probe, training_probe,
             device, progress: bool) -> ProbeCandidates:
    candidates = source.candidates
    if not candidates:
        raise SelectionError("there are no snapshots to select from; train with snapshot_strategy='epoch' (or "
                             "'steps') so that the run keeps snapshots")
    state = selection_state()
    device = process_device(state, device, default_device())
    progress = progress and state.is_main_process

    # The first model that loads fixes the kind of probe (images, text, token positions) and the label
    # space, on every process alike.
    first = first_loadable(candidates)
    first_index, first_model, _ = first
    drawing = probe_source(settings, probe_dataset, first_model, candidates[first_index].path)
    space = _LabelSpace(*drawing.label_space(probe_dataset))

    t0 = time.perf_counter()
    probe = drawing.draw(probe_dataset)
    batches, inputs, labels = probe.batches, probe.inputs, probe.labels
    check_probe_classes(labels, max(num_labels_of(first_model), int(labels.max()) + 1),
                        token_labels=probe.token_counts is not None)
    extra_probes = {}
    for name, dataset in (("held_out", held_out_probe), ("training", training_probe)):
        if dataset is not None:
            drawn = drawing.draw(dataset)
            extra_probes[name] = (drawn.batches, drawn.labels.to(device))
    probe_s = time.perf_counter() - t0

    space.check(candidates[first_index].name, first_model)  # every process checks against the same first model
    t0 = time.perf_counter()
    mine = share_of(list(range(len(candidates))), state)
    if first_index not in mine:
        first = (first_index, None, first[2])
        first_model = None
    outcomes = run_candidates(candidates, mine, first, batches, extra_probes, space, device, progress)
    forward_s = time.perf_counter() - t0
    outcomes = gather_in_order(outcomes, state, outcome_to_cpu)
    shares = gather_in_order([len(mine)], state, lambda n: n)

    info = {
        "probe": {"size": int(labels.numel()), "seed": int(settings.seed),
                  "max_probe_samples": settings.max_probe_samples, **drawing.describe(probe),
                  **{f"{name}_size": int(labels.numel()) for name, (_, labels) in extra_probes.items()}},
        "device": str(device),
        "processes": {"count": state.num_processes, "candidates_per_process": shares},
        "timing_s": {"probe": round(probe_s, 3), "forward": round(forward_s, 3)},
    }
    if source.source:
        info["source"] = source.source
    loaded = [o.candidate for o in outcomes if o.candidate is not None]
    return ProbeCandidates(loaded, inputs.to(device), labels.to(device), source.snapshot_dir, device, info,
                           notes_of(outcomes), token_counts=probe.token_counts, batches=batches)


def select_teachers(snapshots: Snapshots, probe_dataset, k: int | None = None, *, revisions: Revisions = None,
                    subfolders: Revisions = None, commits: Commits = None, token: str | bool | None = None,
                    settings: SelectionSettings | None = None, held_out_probe=None, training_probe=None,
                    device: str | torch.device | None = None, progress: bool = True,
                    **overrides: Any) -> SelectionReport:
    """Score every snapshot of a teacher run (or every chosen revision of a Hub repo) on a probe set
    and choose `k` teachers.

    Args:
        snapshots: a `SnapshotIndex`, a snapshot dir (or a run's output dir holding `snapshots/`),
            a list of `Snapshot`s (or of `ModelCandidate`s), in training order; or, with
            `revisions`, `subfolders` or `commits`, a Hub model repo `owner/name` (`owner/name@rev`
            for the folders at, or the commits of, another revision than main). Snapshots at
            global step 0 (revisions named `step0`) are the initialisation: scored, never chosen.
        probe_dataset: a `datasets.Dataset` with raw images and integer labels (e.g.
            `load_fashion_mnist("train")`), normally the teachers' training data.
        k: how many teachers (1 <= k <= number of non-initial snapshots); default `settings.k` (1).
        revisions: which revisions (branches and tags) of the Hub repo `snapshots` to score: a glob
            (`"step*"`), a list of names, or True / `"all"`. They are ordered by the step number in
            their names (else by commit date), pinned to the commits they point to, and only the
            files loading needs are downloaded; each is named `owner/name@revision` in the report,
            which is the teacher reference `distill --teachers` takes (see
            `hf_ckptkd.hub.revisions`).
        subfolders: which folders of the Hub repo to score, as `Trainer(push_to_hub=True,
            hub_strategy="all_checkpoints")` uploads them: a glob over folder paths
            (`"checkpoint-*"`), a list, or True / `"all"` (every folder holding a model), at main,
            at `owner/name@rev`, or at each revision `revisions` names. Ordered by the step in their
            names; each folder's `trainer_state.json` gives its step, epoch and recorded evaluation
            metrics; named `owner/name[@rev]:<folder>` (see `hf_ckptkd.hub.subfolders`).
        commits: `"all"` / True or a number N: the commits of main (or of the branch in
            `owner/name@branch`) that change the weights at the repo's root, all or the N most
            recent, as `hub_strategy="every_save"` makes them; named `owner/name@<short commit id>`
            (see `hf_ckptkd.hub.commits`).
        token: a Hub token for a private or gated repo (default: `HF_TOKEN` or `hf auth login`).
        settings: a `SelectionSettings`: the probe (max_probe_samples, seed, batch_size,
            label_column, image_column; `label` and `labels` stand for each other when the dataset
            has only the other, as after `tokenize_text_dataset`) and the choice (objective,
            temperature, beta, kappa, estimator, accuracy_margin, …) and, for images, `transform` and
            `default_transform` (see `SelectionSettings`). Any of its fields may also
            be given as a keyword argument, which wins: `select_teachers(run, data, k=2,
            objective="outputs", max_probe_samples=1000)`.
        device: where models run and the estimator computes; default the accelerator, if any (under
            `accelerate launch`, each process's own).
        held_out_probe: an optional dataset like `probe_dataset` (e.g. the test split), drawn the
            same way; each snapshot's accuracy on it goes into `metadata["held_out_accuracy"]`.
            It does not enter J: the estimator computes every term on one probe set.
        training_probe: an optional sample of the data the teacher trained on, drawn the same way;
            each snapshot's accuracy on it goes into `metadata["training_accuracy"]`, which the
            report shows beside the held-out loss: near 100 % with a rising held-out loss is the
            sign of a memorising teacher (`table.md` then says so). It does not enter J either.
        progress: tqdm bars over the snapshots and their batches (main process only).

    Under `accelerate launch` the candidates are split between the processes, each runs its share
    over the probe, and the main process scores them all: every process returns the same report as
    one process would (see `hf_ckptkd.selection.processes`).

    A candidate that cannot be loaded (a Hub revision without safetensors weights, say) is skipped
    with a warning naming it and a line in `report.notes`; if none loads, `SelectionError`.

    Returns:
        the `SelectionReport`, with `snapshot_dir` set (when the snapshots share one folder),
        `notes` (e.g. which Hub revisions were loaded without a SHA-256 check) and `extra`
        holding the probe's description, the source, the processes and the time taken.

    Raises:
        SelectionError: (a `ValueError`, through its subclasses) for a bad request:
            `TooManyTeachersError`, `EmptyProbeError`, `SingleClassProbeError`, `ProbeTooSmallError`,
            `SparseClassError`, `TemperatureTooHighError`, `ClassCountMismatchError`,
            `LabelSpaceMismatchError`, `UnknownObjectiveError`, `UnknownEstimatorError`.
        SnapshotError: for a missing or altered snapshot.
        DataError: for a dataset without the named columns.
        hf_ckptkd.hub.HubInputError: for a Hub repo that does not exist, cannot be read with this
            token, has no revision matching `revisions` or folder matching `subfolders`, or a
            request that combines `commits` with either.
    """
    started = time.perf_counter()
    settings = SelectionSettings.of(settings, **overrides, **({} if k is None else {"k": k}))
    source = resolve_candidates(snapshots, revisions=revisions, subfolders=subfolders, commits=commits, token=token)
    # Requests that cannot succeed fail here, before any model runs (the settings checked themselves).
    if source.candidates:
        n_init = sum(c.is_init for c in source.candidates)
        check_teacher_count(settings.k, len(source.candidates) - n_init, n_init)
    probe = _extract(source, probe_dataset, settings, held_out_probe, training_probe, device, progress)
    state = selection_state()

    def score() -> SelectionReport:
        t0 = time.perf_counter()
        report = select_from_candidates(probe.candidates, probe.inputs, probe.labels, settings, device=probe.device,
                                        progress=progress and state.is_main_process, token_counts=probe.token_counts)
        report.snapshot_dir = probe.snapshot_dir
        report.notes = list(probe.notes)
        report.extra.update(probe.info)
        report.extra["timing_s"].update({"scoring": round(time.perf_counter() - t0, 3),
                                         "total": round(time.perf_counter() - started, 3)})
        return report

    return from_main(score, state)


__all__ = ["ProbeCandidates", "extract_candidates", "select_teachers"]
