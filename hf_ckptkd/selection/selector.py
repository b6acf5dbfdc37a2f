"""`select_teachers`: score the snapshots of a run on a probe set and choose the teachers.

The probe set is a fixed, seeded, label-stratified sample of the (training) dataset, turned into
tensors once with the deterministic evaluation transform and shared by every snapshot. Each
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

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import (
    DataError,
    ImageColumns,
    ImageTransformConfig,
    _as_pil,
    build_image_transform,
    check_image_columns,
    resolve_label_column,
)
from ..models import TimmForImageClassification, forward_with_features, label_names_of, num_labels_of, unwrap
from ..snapshots import Snapshot, SnapshotIndex
from .errors import (
    ClassCountMismatchError,
    EmptyProbeError,
    LabelSpaceMismatchError,
    SelectionError,
    SingleClassProbeError,
    TooManyTeachersError,
)
from .estimators import check_probe_classes
from .objective import Candidate, check_request, select_from_candidates
from .settings import SelectionSettings
from .report import SelectionReport


Transform = Callable[[Any], torch.Tensor]


# ---------------------------------------------------------------------------------------------
# The probe set


def stratified_probe_indices(labels: Sequence[int], size: int | None, seed: int) -> list[int]:
    """Indices of a seeded sample of `size` examples with every class in proportion (sorted).

    Each class gets its share of `size` by largest remainder, at least one example per class when
    `size` allows; within a class the examples are a seeded random draw. `size=None` or a size at
    least the dataset's keeps every example. The same labels, size and seed give the same indices.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if size is None or size >= n:
        return list(range(n))
    if size <= 0:
        return []
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / n
    take = np.floor(quota).astype(int)
    if size >= len(classes):
        take = np.maximum(take, 1)
    # Hand out what is left by largest remainder (ties to the larger class, then the lower label),
    # or take back the excess the minimum of one per class caused from the classes over their quota.
    order = sorted(range(len(classes)), key=lambda c: (-(quota[c] - take[c]), -counts[c], c))
    i = 0
    while take.sum() < size:
        c = order[i % len(order)]
        if take[c] < counts[c]:
            take[c] += 1
        i += 1
    while take.sum() > size:
        c = max((c for c in range(len(classes)) if take[c] > 1), key=lambda c: (take[c] - quota[c], take[c], -c))
        take[c] -= 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, t in zip(classes, take):
        members = np.flatnonzero(labels == c)
        chosen += rng.choice(members, size=int(t), replace=False).tolist()
    return sorted(chosen)


def _labels_of(dataset, column: str) -> np.ndarray:
    """The label column as an int64 array (read from Arrow in one go for a `datasets.Dataset`)."""
    if hasattr(dataset, "with_format"):
        values = dataset.with_format("arrow")[column].to_numpy(zero_copy_only=False)
    else:
        values = np.asarray(list(dataset[column]))
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"the label column {column!r} must hold integer class indices, found {values.dtype} values such "
                        f"as {values[0]!r}; cast it to a ClassLabel (dataset.class_encode_column) first")
    return values.astype(np.int64)


def _dataset_label_names(dataset, column: str) -> list[str] | None:
    feature = getattr(dataset, "features", {}).get(column) if hasattr(dataset, "features") else None
    names = getattr(feature, "names", None)
    return list(names) if names else None


def draw_probe(dataset, size: int | None, seed: int, transform: Transform,
               columns: ImageColumns) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The probe set as tensors: (inputs N × C × H × W, labels N, dataset indices)."""
    check_image_columns(dataset, columns)
    labels = _labels_of(dataset, columns.label)
    indices = stratified_probe_indices(labels, size, seed)
    if not indices:
        raise EmptyProbeError(
            f"the probe set is empty (the dataset has {len(labels)} examples, max_probe_samples={size}); pass a "
            "dataset with examples of at least two classes and max_probe_samples > 0 (e.g. 2000)")
    probe_labels = torch.from_numpy(labels[indices])
    classes = torch.unique(probe_labels)
    if classes.numel() < 2:
        raise SingleClassProbeError(
            f"the probe set holds a single class (label {int(classes[0])}), so the label terms Î(Y;·) are undefined; "
            "draw the probe from a dataset with at least two classes (the training split of the teachers' dataset)")
    images = dataset.select(indices)[columns.image] if hasattr(dataset, "select") else [dataset[i][columns.image]
                                                                                        for i in indices]
    inputs = torch.stack([transform(_as_pil(im)) for im in images])
    return inputs, probe_labels, indices


def probe_transform_config(model: nn.Module, snapshot_path: str | Path | None = None,
                           default: ImageTransformConfig | None = None) -> ImageTransformConfig:
    """The evaluation transform a model expects: what it records of its input, `default` for the rest.

    timm models record `pretrained_cfg` input_size (channels, height, width), mean and std (a mean
    or std whose length is not the number of channels is ignored); transformers vision configs
    record `num_channels` and `image_size`, and a `preprocessor_config.json` in the snapshot folder,
    if any, `image_mean` and `image_std`. Augmentation is off (the eval transform never uses it).
    """
    config = replace(default or ImageTransformConfig(), crop_padding=0, hflip=False)
    inner = unwrap(model)
    if isinstance(inner, TimmForImageClassification):
        cfg = getattr(inner.model, "pretrained_cfg", None) or {}
        input_size = cfg.get("input_size")
        if input_size and len(input_size) == 3:
            config.in_chans, config.image_size = int(input_size[0]), int(input_size[-1])
        mean, std = cfg.get("mean"), cfg.get("std")
    else:
        cfg = getattr(inner, "config", None)
        if getattr(cfg, "num_channels", None):
            config.in_chans = int(cfg.num_channels)
        size = getattr(cfg, "image_size", None)
        if size:
            config.image_size = int(size[-1] if isinstance(size, (list, tuple)) else size)
        mean = std = None
        processor = Path(snapshot_path) / "preprocessor_config.json" if snapshot_path is not None else None
        if processor is not None and processor.is_file():
            values = json.loads(processor.read_text())
            mean, std = values.get("image_mean"), values.get("image_std")
    if mean is not None and std is not None and len(mean) == config.in_chans and len(std) == config.in_chans:
        config.mean, config.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    elif len(config.mean) != config.in_chans:
        config.mean, config.std = (config.mean[0],) * config.in_chans, (config.std[0],) * config.in_chans
    return config


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


def _image_batches(inputs: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    return [{"pixel_values": inputs[start:start + batch_size]} for start in range(0, inputs.shape[0], batch_size)]


def _is_text_model(model: nn.Module) -> bool:
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    return not isinstance(inner, TimmForImageClassification) and config is not None \
        and getattr(config, "vocab_size", None) is not None and not hasattr(config, "num_channels")


TEXT_INPUT_BUCKETS = 1024


def draw_text_probe(dataset, size: int | None, seed: int, label_column: str, batch_size: int, pad_token_id: int,
                    ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """A tokenized text probe: (padded model-input batches, inputs X for the kernel, labels).

    X is each text's bag of tokens hashed into 1024 buckets: token ids carry no geometry, so the
    Gaussian kernel on the inputs compares which tokens two texts share.
    """
    if "input_ids" not in dataset.column_names:
        raise DataError(f"a text probe set must be tokenized (columns input_ids, attention_mask, {label_column}); its "
                        f"columns are {dataset.column_names}. Tokenize it with the teachers' tokenizer first.")
    labels = _labels_of(dataset, label_column)
    indices = stratified_probe_indices(labels, size, seed)
    if not indices:
        raise EmptyProbeError(f"the probe set is empty (the dataset has {len(labels)} examples, max_probe_samples={size})")
    probe_labels = torch.from_numpy(labels[indices])
    if torch.unique(probe_labels).numel() < 2:
        raise SingleClassProbeError("the probe set holds a single class, so the label terms Î(Y;·) are undefined; "
                                    "draw the probe from a dataset with at least two classes")
    rows = dataset.select(indices)
    ids = [torch.tensor(x, dtype=torch.long) for x in rows["input_ids"]]
    bags = torch.zeros(len(ids), TEXT_INPUT_BUCKETS)
    for i, x in enumerate(ids):
        bags[i].index_add_(0, x % TEXT_INPUT_BUCKETS, torch.ones(len(x)))
    batches = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        padded = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True, padding_value=pad_token_id)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(x) for x in chunk], batch_first=True)
        batches.append({"input_ids": padded, "attention_mask": mask})
    return batches, bags, probe_labels


# ---------------------------------------------------------------------------------------------
# The entry points


@dataclass
class ProbeCandidates:
    """Every snapshot's features and logits on one probe set: what `select_from_candidates` takes.

    `inputs` and `labels` are the probe (on `device`); `candidates` are in training order;
    `info` describes the probe (size, seed, class counts, transform) and the time taken.
    """

    candidates: list[Candidate]
    inputs: torch.Tensor
    labels: torch.Tensor
    snapshot_dir: str | None
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)


def extract_candidates(
    snapshots: SnapshotIndex | str | os.PathLike | Sequence[Snapshot],
    probe_dataset,
    settings: SelectionSettings | None = None,
    *,
    device: str | torch.device | None = None,
    transform: ImageTransformConfig | Transform | None = None,
    held_out_probe=None,
    progress: bool = True,
    default_transform: ImageTransformConfig | None = None,
    **overrides: Any,
) -> ProbeCandidates:
    """Draw the probe set and run every snapshot over it (the first half of `select_teachers`).

    The arguments mean what they mean for `select_teachers`. Useful to score the same snapshots
    under several objectives or settings without running the models again:
    `select_from_candidates(pc.candidates, pc.inputs, pc.labels, objective=...)`.
    """
    settings = SelectionSettings.of(settings, **overrides)
    max_probe_samples, seed, batch_size = settings.max_probe_samples, settings.seed, settings.batch_size
    label_column, image_column = settings.label_column, settings.image_column
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SelectionError(f"batch_size must be a positive integer, got {batch_size!r}")
    snapshot_list, snapshot_dir = _as_snapshots(snapshots)
    if not snapshot_list:
        raise SelectionError("there are no snapshots to select from; train with snapshot_strategy='epoch' (or "
                             "'steps') so that the run keeps snapshots")
    device = torch.device(device) if device is not None else default_device()
    label_column = resolve_label_column(probe_dataset, label_column)
    columns = ImageColumns(image=image_column, label=label_column)
    labels_all = _labels_of(probe_dataset, label_column)
    probe_classes = int(labels_all.max()) + 1 if labels_all.size else 0

    # The first snapshot's model fixes the transform and the label space.
    first_model = snapshot_list[0].load_model(verify=True)
    text = _is_text_model(first_model)
    if text:
        transform_config, transform_fn = None, "tokenized text (bag of tokens for X)"
    elif transform is None:
        transform_config = probe_transform_config(first_model, snapshot_list[0].path, default_transform)
        transform_fn: Transform = build_image_transform(transform_config, train=False)
    elif isinstance(transform, ImageTransformConfig):
        transform_config = transform
        transform_fn = build_image_transform(transform, train=False)
    else:
        transform_config, transform_fn = None, transform

    t0 = time.perf_counter()

    def probe_of(dataset):
        """(model-input batches, inputs X for the kernel, labels) of a probe drawn from `dataset`."""
        own_columns = replace(columns, label=resolve_label_column(dataset, label_column))
        if text:
            pad = getattr(unwrap(first_model).config, "pad_token_id", None) or 0
            return draw_text_probe(dataset, max_probe_samples, seed, own_columns.label, batch_size, pad)
        check_image_columns(dataset, own_columns)
        images, image_labels, _ = draw_probe(dataset, max_probe_samples, seed, transform_fn, own_columns)
        return _image_batches(images, batch_size), images, image_labels

    batches, inputs, labels = probe_of(probe_dataset)
    check_probe_classes(labels, max(num_labels_of(first_model), int(labels.max()) + 1))
    held_out = None
    if held_out_probe is not None:
        h_batches, _, h_labels = probe_of(held_out_probe)
        held_out = (h_batches, h_labels.to(device))
    probe_s = time.perf_counter() - t0

    space = _LabelSpace(_dataset_label_names(probe_dataset, label_column), probe_classes)
    candidates: list[Candidate] = []
    n_batches = len(batches) + (len(held_out[0]) if held_out else 0)
    outer: Iterable[Snapshot] = snapshot_list
    bar = None
    if progress:
        from tqdm.auto import tqdm

        outer = tqdm(snapshot_list, desc="snapshots", unit="snapshot")
        bar = tqdm(total=n_batches, desc="probe batches", unit="batch", leave=False)
    t0 = time.perf_counter()
    try:
        for i, snapshot in enumerate(outer):
            model = first_model if i == 0 else snapshot.load_model(verify=True)
            first_model = None
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
    forward_s = time.perf_counter() - t0

    info = {
        "probe": {
            "size": int(labels.numel()), "seed": int(seed), "max_probe_samples": max_probe_samples,
            "source_size": int(labels_all.size), "class_counts": torch.bincount(labels).tolist(),
            "label_column": label_column, "image_column": image_column,
            "held_out_size": int(held_out[1].numel()) if held_out else None,
            "transform": asdict(transform_config) if transform_config is not None else repr(transform_fn),
        },
        "device": str(device),
        "timing_s": {"probe": round(probe_s, 3), "forward": round(forward_s, 3)},
    }
    return ProbeCandidates(candidates, inputs.to(device), labels.to(device), snapshot_dir, device, info)


def select_teachers(
    snapshots: SnapshotIndex | str | os.PathLike | Sequence[Snapshot],
    probe_dataset,
    k: int | None = None,
    *,
    settings: SelectionSettings | None = None,
    device: str | torch.device | None = None,
    transform: ImageTransformConfig | Transform | None = None,
    held_out_probe=None,
    progress: bool = True,
    default_transform: ImageTransformConfig | None = None,
    **overrides: Any,
) -> SelectionReport:
    """Score every snapshot of a teacher run on a probe set and choose `k` teachers.
    Args:
        snapshots: a `SnapshotIndex`, a snapshot dir (or a run's output dir holding `snapshots/`),
            or a list of `Snapshot`s, in training order. Snapshots at global step 0 are the
            initialisation: scored, never chosen.
        probe_dataset: a `datasets.Dataset` with raw images and integer labels (e.g.
            `load_fashion_mnist("train")`), normally the teachers' training data.
        k: how many teachers (1 <= k <= number of non-initial snapshots); default `settings.k` (1).
        settings: a `SelectionSettings`: the probe (max_probe_samples, seed, batch_size,
            label_column, image_column; `label` and `labels` stand for each other when the dataset
            has only the other, as after `tokenize_text_dataset`) and the choice (objective,
            temperature, beta, kappa, estimator, accuracy_margin, …). Any of its fields may also
            be given as a keyword argument, which wins: `select_teachers(run, data, k=2,
            objective="outputs", max_probe_samples=1000)`.
        device: where models run and the estimator computes; default the accelerator, if any.
        label_column, image_column: the dataset's columns (`label` and `labels` stand for each other
            when the dataset has only the other, as after `tokenize_text_dataset`).
        transform: an `ImageTransformConfig` (its evaluation transform is used) or a callable
            PIL image → tensor; default derived from the first snapshot's model (see
            `probe_transform_config`), with `default_transform` for what the model does not record
            (transformers models record channels and size, not the normalisation; the library's
            default is the Fashion-MNIST mean and std).
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
        snapshots if isinstance(snapshots, SnapshotIndex) else snapshot_list, probe_dataset, settings, device=device,
        transform=transform, held_out_probe=held_out_probe, progress=progress, default_transform=default_transform)

    t0 = time.perf_counter()
    report = select_from_candidates(probe.candidates, probe.inputs, probe.labels, settings, device=probe.device,
                                    progress=progress)
    report.snapshot_dir = probe.snapshot_dir
    report.extra.update(probe.info)
    report.extra["timing_s"].update({"scoring": round(time.perf_counter() - t0, 3),
                                     "total": round(time.perf_counter() - started, 3)})
    return report


__all__ = ["ProbeCandidates", "draw_probe", "extract_candidates", "probe_transform_config",
           "select_teachers", "stratified_probe_indices"]
