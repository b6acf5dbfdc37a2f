"""Teacher outputs computed once for a training set (`cache_teacher_logits`), and read back into batches.

Classifiers: the teachers' logits for every training example, gathered from all processes into
one table in memory (`cache_classifier_logits`); an example's row travels with it as
`teacher_logits`. Causal LMs: (batch, seq, vocab) per example is too large to keep, so the
teachers' top-k log-probabilities of every token go to disk (`topk_cache`, written by
`topk_cache_writer`), keyed by the data, the teachers and the settings; `topk_key` computes that
key from the teacher references alone, so a run whose cache is complete never loads the teachers,
and `check_student_against_cache` does the checks the teachers would otherwise do.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..models.build import model_inputs, num_labels_of
from ..references import is_hub_reference
from ..tasks.topk_losses import TopKTeacher
from .teacher_checks import LabelSpaceError, check_finite, describe_module
from .topk_cache import (
    TOPK_IDS,
    TOPK_LOGPROBS,
    TopKLogitsCache,
    cache_key,
    check_key,
    dataset_fingerprint,
    read_manifest,
    teacher_fingerprint,
    tokenizer_fingerprint,
)

TEACHER_LOGITS = "teacher_logits"
# What a training batch may carry from a cache; Trainer's removal of unused columns must keep them.
TEACHER_KEYS = (TEACHER_LOGITS, TOPK_LOGPROBS, TOPK_IDS)


class CachedLogitsError(ValueError):
    """`cache_teacher_logits` asked for where it cannot work (augmented examples, a loss the cache cannot serve)."""


def cached_teacher(inputs: dict[str, Any]) -> torch.Tensor | TopKTeacher | None:
    """The teacher's output a cached batch carries (a classifier's logits or an LM's top-k), or None."""
    if TEACHER_LOGITS in inputs:
        return inputs[TEACHER_LOGITS]
    if TOPK_IDS in inputs:
        return TopKTeacher(inputs[TOPK_LOGPROBS], inputs[TOPK_IDS])
    return None


def without_teacher(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in inputs.items() if k not in TEACHER_KEYS}


# --- classifiers: a table in memory --------------------------------------------------------------

def cache_classifier_logits(teachers, dataset, collate, accelerator, batch_size: int):
    """(the training set with each example's teacher logits, the collator that batches them)."""
    if not _is_deterministic(dataset):
        raise CachedLogitsError(
            "cache_teacher_logits=True needs a deterministic training transform, but the training set returns "
            "different inputs for the same example on two reads (random augmentation). Turn augmentation off "
            "(e.g. --crop_padding 0 --hflip false) or set cache_teacher_logits=False.")
    indices = list(range(len(dataset)))
    shard_logits, shard_indices = [], []
    # Each process computes the logits of its shard once; the gathered table serves every epoch.
    with accelerator.split_between_processes(indices, apply_padding=True) as shard:
        for start in range(0, len(shard), batch_size):
            chunk = shard[start:start + batch_size]
            batch = collate([dataset[i] for i in chunk])
            batch = {k: v.to(accelerator.device) for k, v in model_inputs(batch).items()}
            logits = teachers(**batch)
            check_finite(logits, batch_index=start // batch_size)
            shard_logits.append(logits)
            shard_indices.append(torch.tensor(chunk, device=accelerator.device))
    all_logits = accelerator.gather(torch.cat(shard_logits)).cpu()
    all_indices = accelerator.gather(torch.cat(shard_indices)).cpu()
    table = torch.empty(len(dataset), all_logits.shape[-1], dtype=all_logits.dtype)
    table[all_indices] = all_logits  # padding repeats an index with its own logits: harmless
    return _WithTeacherLogits(dataset, table), _TeacherLogitsCollator(collate)


def _is_deterministic(dataset: Dataset, probe: int = 4) -> bool:
    for i in range(min(probe, len(dataset))):
        a, b = dataset[i], dataset[i]
        for key, value in a.items():
            if isinstance(value, torch.Tensor) and not torch.equal(value, b[key]):
                return False
    return True


class _WithTeacherLogits(Dataset):
    def __init__(self, dataset, logits: torch.Tensor):
        self.dataset, self.logits = dataset, logits

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {**self.dataset[i], TEACHER_LOGITS: self.logits[i]}


class _TeacherLogitsCollator:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        batch = self.collate([{k: v for k, v in e.items() if k != TEACHER_LOGITS} for e in examples])
        if TEACHER_LOGITS in examples[0]:  # training batches; evaluation sets have no cached logits
            batch[TEACHER_LOGITS] = torch.stack([e[TEACHER_LOGITS] for e in examples])
        return batch


# --- causal LMs: top-k on disk -------------------------------------------------------------------

def topk_key(teachers, dataset, args) -> dict[str, Any]:
    """The top-k cache key of a run: `teachers` a `TeacherEnsemble` or the references it would be loaded from."""
    if dataset is None:
        raise CachedLogitsError("cache_teacher_logits=True needs the training set when the trainer is built "
                                "(CheckpointKDTrainer(..., train_dataset=...)): the cache is keyed by its examples")
    if args.kd_loss == "mse":
        raise CachedLogitsError("kd_loss='mse' compares raw logits, which the top-k teacher-logit cache of a causal LM "
                                "does not keep; use kd_loss 'kl', 'reverse_kl' or 'jsd', or cache_teacher_logits=False")
    if hasattr(teachers, "members"):  # an ensemble: fingerprint the folders it was loaded from, else its tensors
        named = [(ref, folder if folder is not None else (ref if is_hub_reference(ref) else member))
                 for ref, folder, member in zip(teachers.references, teachers.source_folders, teachers.members)]
        mode, weights, dtype = teachers.mode, teachers.weights, teachers.dtype
    else:
        named = [(describe_module(ref) if isinstance(ref, nn.Module) else str(ref), ref) for ref in teachers]
        raw = args.teacher_weights or [1.0] * len(named)
        mode, weights, dtype = args.ensemble_mode, [w / sum(raw) for w in raw], args.teacher_dtype
    fingerprints = [(str(ref), teacher_fingerprint(source)) for ref, source in named]
    return cache_key(dataset=dataset_fingerprint(dataset), teachers=fingerprints, mode=mode, weights=weights,
                     dtype=dtype, temperature=args.temperature, top_k=args.teacher_logits_top_k)


def complete_topk_cache(folder, key: dict[str, Any]) -> TopKLogitsCache | None:
    """The cache in `folder` if it is complete for `key`; None if there is none yet or it is unfinished
    (a stale one is refused with what differs)."""
    manifest = read_manifest(folder)
    if manifest is None or not manifest["complete"]:
        if manifest is not None:
            check_key(folder, manifest, key)
        return None
    return TopKLogitsCache(folder, key)


def check_student_against_cache(cache: TopKLogitsCache, student: nn.Module, student_tokenizer=None) -> None:
    """What `check_label_space` checks of teachers, against the cache they wrote (they are not loaded)."""
    scored = num_labels_of(student)
    if scored != cache.vocab_size:
        raise LabelSpaceError(
            f"the teacher-logit cache {cache.folder} was written by teachers scoring {cache.vocab_size} tokens but the "
            f"student scores {scored}; build the student with the teachers' tokenizer (vocab_size={cache.vocab_size})")
    stored = cache.manifest.get("tokenizer_sha256")
    student_sha = tokenizer_fingerprint(student_tokenizer)
    if stored is not None and student_sha is not None and stored != student_sha:
        raise LabelSpaceError(
            f"the student's tokenizer differs from the one the teachers of the teacher-logit cache {cache.folder} "
            "were saved with (the same number of tokens, another vocabulary); the student must use the teachers' "
            "tokenizer, since both read the same input_ids")


__all__ = ["TEACHER_KEYS", "TEACHER_LOGITS", "CachedLogitsError", "cache_classifier_logits", "cached_teacher",
           "check_student_against_cache", "complete_topk_cache", "topk_key", "without_teacher"]
