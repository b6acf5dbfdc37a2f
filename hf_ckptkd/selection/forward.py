"""Running the candidates over the probe: each loaded in turn, checked, run in eval mode.

`run_candidates` is what each process does with its share (see `processes`): it loads every
candidate it is given (the first loadable one is already loaded, since it fixed the probe's
transform), checks it against the label space, and runs it over the probe batches under
`torch.inference_mode()`, one model in memory at a time. A candidate whose `load_model` raises
`UnloadableCandidateError` is skipped with a warning naming it; the outcome records why, and the
report says so in its notes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from tqdm.auto import tqdm

from ..models.build import forward_with_features
from .candidates import ModelCandidate
from .errors import SelectionError, UnloadableCandidateError
from .choice import Candidate

logger = logging.getLogger(__name__)


@torch.inference_mode()
def run_model(model: nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device,
              bar=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of a model over the probe batches, on `device` in eval mode (float32, in the
    probe's order); `bar` is advanced by one per batch."""
    model.to(device).eval()
    features, logits = [], []
    for batch in batches:
        f, z = forward_with_features(model, {k: v.to(device, non_blocking=True) for k, v in batch.items()})
        features.append(f.float())
        logits.append(z.float())
        if bar is not None:
            bar.update(1)
    return torch.cat(features), torch.cat(logits)


@dataclass
class Outcome:
    """What running one candidate gave: its `Candidate` (None when skipped), the notes the report
    should carry about it, and why it was skipped. Picklable, so processes can exchange it."""

    name: str
    candidate: Candidate | None = None
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


def first_loadable(candidates: Sequence[ModelCandidate]) -> tuple[int, nn.Module, dict[int, str]]:
    """(index, model) of the first candidate that loads, and why each one before it did not.

    The first loaded model fixes the probe's transform and the label space, so every process
    finds the same one (a candidate that cannot be loaded is skipped, see `run_candidates`)."""
    failed: dict[int, str] = {}
    for i, candidate in enumerate(candidates):
        try:
            return i, candidate.load_model(), failed
        except UnloadableCandidateError as e:
            failed[i] = str(e)
    reasons = "; ".join(f"{candidates[i].name}: {why}" for i, why in failed.items())
    raise SelectionError(f"none of the {len(candidates)} candidates could be loaded ({reasons}); fix or choose other "
                         "revisions or snapshots")


def run_candidates(candidates: Sequence[ModelCandidate], indices: Sequence[int], first: tuple[int, nn.Module, dict],
                    batches, extra_probes, space, device: torch.device, progress: bool) -> list[Outcome]:
    """The candidates at `indices` (this process's share) loaded in turn, checked against the label
    space, and run over the probe in eval mode: their features and logits. `extra_probes` maps a
    name (`held_out`, `training`) to (batches, labels) of another probe: each candidate's accuracy
    on it goes into its `metadata[f"{name}_accuracy"]`. One that cannot be loaded is skipped with a
    warning naming it."""
    first_index, first_model, failed = first
    outcomes: list[Outcome] = []
    n_batches = len(batches) + sum(len(b) for b, _ in extra_probes.values())
    outer: Iterable[int] = tqdm(indices, desc="candidates", unit="model") if progress else indices
    bar = tqdm(total=n_batches, desc="probe batches", unit="batch", leave=False) if progress else None
    try:
        for i in outer:
            source = candidates[i]
            try:
                if i in failed:
                    raise UnloadableCandidateError(failed[i])
                model = first_model if i == first_index else source.load_model()
            except UnloadableCandidateError as e:
                logger.warning("skipping candidate %s: %s", source.name, e)
                outcomes.append(Outcome(source.name, skipped=str(e)))
                continue
            space.check(source.name, model)
            if bar is not None:
                bar.reset(total=n_batches)
                bar.set_description(source.name)
            features, logits = run_model(model, batches, device, bar)
            metadata = dict(source.metadata)
            for name, (extra_batches, extra_labels) in extra_probes.items():
                _, extra_logits = run_model(model, extra_batches, device, bar)
                metadata[f"{name}_accuracy"] = float((extra_logits.argmax(dim=1) == extra_labels).float().mean())
            del model
            if i == first_index:
                first_model = None  # one model in memory at a time
            outcomes.append(Outcome(source.name, Candidate(
                name=source.name, features=features, logits=logits, epoch=source.epoch, step=source.step,
                init=source.is_init, path=source.path, metadata=metadata), list(source.notes)))
    finally:
        if bar is not None:
            bar.close()
    return outcomes


def outcome_to_cpu(outcome: Outcome) -> Outcome:
    c = outcome.candidate
    if c is not None:
        outcome.candidate = replace(c, features=c.features.cpu(), logits=c.logits.cpu())
    return outcome


def notes_of(outcomes: Sequence[Outcome]) -> list[str]:
    """The report's notes: each candidate's own, then one line per skipped candidate."""
    notes = [f"{o.name}: {note}" for o in outcomes for note in o.notes]
    return notes + [f"{o.name} was skipped: it could not be loaded ({o.skipped})" for o in outcomes if o.skipped]


__all__ = ["Outcome", "first_loadable", "notes_of", "outcome_to_cpu", "run_candidates", "run_model"]
