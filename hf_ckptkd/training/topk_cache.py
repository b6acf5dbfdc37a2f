"""A causal LM teacher's top-k log-probabilities over a training set, on disk: the format, its key, reading it.

A cache folder holds

    manifest.json             the key (what the cache was computed from), k, the vocabulary, the shard
                              size, and, once every shard is written, "complete": true with each
                              shard's size in bytes
    shard-00000.safetensors   examples [0, S): `logprobs` (positions, k + 1) float16, the k largest
                              log-probabilities at the distillation temperature in descending order and,
                              last, the log of the mass of all other tokens (the tail); `ids` (positions,
                              k) uint16 (vocabularies up to 65,536) or int32; `offsets` (examples + 1)
                              int64, where each example's positions start
    shard-00001.safetensors   examples [S, 2S), ...

Every position of every example is kept (its input_ids, as the dataset holds them, before
padding; the teachers' output for the example alone), so a shard is 2 * (k + 1) + 2 * k bytes per token (4 * k more with int32 ids).
A shard is written under a temporary name and renamed once complete, so a shard under its own
name is whole, and the manifest is marked complete only after every shard is. A cache is read
only when its manifest is complete and every shard has the size it records: a truncated copy is
refused, naming the shard.

The key is SHA-256 of the inputs the teachers read (every example's input_ids and attention_mask,
in order), each teacher's SHA-256 (`teacher_fingerprint`: its config and weight files, or the
tensors of an in-memory model), how the ensemble combines them (mode, weights, dtype), the
temperature and k. A folder whose key differs from the run's is refused with what differs, never
overwritten. `topk_cache_writer` writes a cache; this module reads one into training batches.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

from ..files import sha256_of, write_json_atomic
from ..hub.load import hub_teacher_folder
from ..references import is_hub_reference
from ..tasks.topk_losses import TopKTeacher
from .teacher_loading import teacher_folder

FORMAT = "hf-ckptkd-topk-teacher-logits/1"
MANIFEST = "manifest.json"
SHARD_NAME = "shard-{:05d}.safetensors"
# About this many positions per shard (a shard holds whole examples): ~70 MB at k = 64.
SHARD_POSITIONS = 1 << 18
# What a training batch carries from the cache (the trainer keeps these keys from Trainer's column removal).
TOPK_LOGPROBS, TOPK_IDS = "teacher_topk_logprobs", "teacher_topk_ids"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class TeacherLogitsCacheError(ValueError):
    """A top-k teacher-logit cache that does not belong to this run, is incomplete or damaged, or a bad k."""


# --- the key ------------------------------------------------------------------------------------

def dataset_fingerprint(dataset) -> str:
    """SHA-256 of what the teachers read from a training set: each example's input_ids and attention_mask, in order."""
    digest = hashlib.sha256(f"{len(dataset)} examples".encode())
    for example in _teacher_inputs(dataset):
        for name, values in example.items():
            values = np.asarray(values, dtype=np.int64)
            digest.update(f"{name}:{values.size};".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()


def _teacher_inputs(dataset):
    """Each example's input_ids (and attention_mask), read in batches from a `datasets.Dataset`."""
    names = ("input_ids", "attention_mask")
    if hasattr(dataset, "select_columns") and hasattr(dataset, "iter"):
        for batch in dataset.select_columns([n for n in names if n in dataset.column_names]).iter(batch_size=1024):
            yield from ({n: batch[n][j] for n in names if n in batch} for j in range(len(batch["input_ids"])))
        return
    for i in range(len(dataset)):
        yield {n: dataset[i][n] for n in names if n in dataset[i]}


def teacher_fingerprint(reference: str | Path | nn.Module) -> str:
    """SHA-256 of a teacher: of its config and weight files (a local folder, a Hub repo at its pinned commit)
    or, for an in-memory model, of its tensors."""
    digest = hashlib.sha256()
    if isinstance(reference, nn.Module):
        for name, tensor in sorted(reference.state_dict().items()):
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
    folder = teacher_folder(reference)
    if folder is None and is_hub_reference(str(reference)):
        folder, commit = hub_teacher_folder(str(reference))
        digest.update(f"commit:{commit};".encode())
    if folder is None:
        raise TeacherLogitsCacheError(f"teacher {reference!r} is neither a model folder nor a Hub repo, so its "
                                      "weights cannot be fingerprinted for the teacher-logit cache")
    files = sorted(p for p in Path(folder).iterdir()
                   if p.is_file() and (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES)))
    for path in files:
        digest.update(f"{path.name}:{sha256_of(path)};".encode())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str | None:
    """SHA-256 of a tokenizer's vocabulary (what teachers and student must share), or None without one."""
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def cache_key(*, dataset: str, teachers: Sequence[tuple[str, str]], mode: str, weights: Sequence[float], dtype: str,
              temperature: float, top_k: int) -> dict[str, Any]:
    """What a cache was computed from; `teachers` is (reference, fingerprint) per member, in order."""
    return {"dataset_sha256": dataset, "teachers": [{"reference": r, "sha256": h} for r, h in teachers],
            "ensemble_mode": mode if len(teachers) > 1 else "single",
            "teacher_weights": [round(float(w), 12) for w in weights], "teacher_dtype": str(dtype).replace("torch.", ""),
            "temperature": float(temperature), "top_k": int(top_k)}


def key_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What differs between two keys, in words (empty when they agree). Teachers compare by their SHA-256 only:
    one snapshot may be named in several ways."""
    differences = []
    for field in wanted:
        if field == "teachers":
            refs, shas = ([[t[part] for t in key.get("teachers", [])] for key in (stored, wanted)]
                          for part in ("reference", "sha256"))
            if shas[0] != shas[1]:
                differences.append(f"teachers {refs[0]} (not the weights of {refs[1]})")
        elif stored.get(field) != wanted[field]:
            differences.append("another training set (the examples' input_ids differ)" if field == "dataset_sha256"
                               else f"{field}={stored.get(field)!r}, not {wanted[field]!r}")
    return differences


# --- the folder --------------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TeacherLogitsCacheError(f"teacher-logit cache {folder}: {MANIFEST} is not valid JSON ({e}); delete the "
                                      "folder to rebuild the cache") from None
    if manifest.get("format") != FORMAT:
        raise TeacherLogitsCacheError(f"{folder} holds a {MANIFEST} of another format ({manifest.get('format')!r}, "
                                      f"expected {FORMAT!r}); give teacher_logits_dir a folder of its own")
    return manifest


def check_key(folder: Path, manifest: dict[str, Any], key: dict[str, Any]) -> None:
    """Refuse a cache computed from anything else than `key`, naming what differs and the fix."""
    differences = key_differences(manifest["key"], key)
    if differences:
        raise TeacherLogitsCacheError(
            f"teacher-logit cache {folder} was written for {'; '.join(differences)}, so it is stale for this run; "
            "point teacher_logits_dir at a new folder (or delete this one) to compute the teachers' logits again")


def new_manifest(key: dict[str, Any], *, num_examples: int, examples_per_shard: int, vocab_size: int,
                 tokenizer: str | None) -> dict[str, Any]:
    return {"format": FORMAT, "key": key, "num_examples": int(num_examples),
            "examples_per_shard": int(examples_per_shard),
            "num_shards": -(-int(num_examples) // int(examples_per_shard)), "vocab_size": int(vocab_size),
            "ids_dtype": "uint16" if vocab_size <= 1 << 16 else "int32", "tokenizer_sha256": tokenizer,
            "complete": False, "shard_bytes": {}}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / MANIFEST, manifest)


def shard_range(manifest: dict[str, Any], shard: int) -> range:
    size = manifest["examples_per_shard"]
    return range(shard * size, min((shard + 1) * size, manifest["num_examples"]))


def shard_is_written(folder: Path, manifest: dict[str, Any], shard: int) -> bool:
    """Whether shard `shard` is on disk whole, with this cache's examples (a damaged one is refused)."""
    path = Path(folder) / SHARD_NAME.format(shard)
    if not path.is_file():
        return False
    _check_shard(path, manifest, shard, expected_bytes=None)
    return True


def _check_shard(path: Path, manifest: dict[str, Any], shard: int, expected_bytes: int | None) -> None:
    size = path.stat().st_size
    fix = f"delete {path.name} and run again with the same teachers and data to write it anew"
    if expected_bytes is not None and size != expected_bytes:
        raise TeacherLogitsCacheError(f"teacher-logit cache shard {path} holds {size} bytes but the manifest records "
                                      f"{expected_bytes}: it is truncated or was replaced; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            offsets = f.get_tensor("offsets")
            rows = f.get_slice("ids").get_shape()[0]
    except Exception as e:  # safetensors reports a cut header or data as a generic error
        raise TeacherLogitsCacheError(f"teacher-logit cache shard {path} cannot be read ({e}); {fix}") from None
    examples = shard_range(manifest, shard)
    if metadata.get("first") != str(examples.start) or len(offsets) != len(examples) + 1 or offsets[-1] != rows:
        raise TeacherLogitsCacheError(f"teacher-logit cache shard {path} does not hold examples {examples.start}.."
                                      f"{examples.stop - 1} of this cache; {fix}")


class TopKLogitsCache:
    """A complete cache, read lazily: `cache[i]` is example i's `TopKTeacher` of (positions, k + 1) / (positions, k)."""

    def __init__(self, folder: str | Path, key: dict[str, Any] | None = None):
        self.folder = Path(folder)
        manifest = read_manifest(self.folder)
        if manifest is None:
            raise TeacherLogitsCacheError(f"{self.folder} holds no teacher-logit cache ({MANIFEST} is missing)")
        if key is not None:
            check_key(self.folder, manifest, key)
        if not manifest["complete"]:
            raise TeacherLogitsCacheError(
                f"teacher-logit cache {self.folder} is incomplete (its writing stopped before every shard was "
                "written); run with cache_teacher_logits=True and the same teachers and data to finish it")
        for shard in range(manifest["num_shards"]):
            name = SHARD_NAME.format(shard)
            if not (self.folder / name).is_file():
                raise TeacherLogitsCacheError(f"teacher-logit cache {self.folder} lacks {name}, which its manifest "
                                              "lists; delete the manifest and run again to write the missing shard")
            _check_shard(self.folder / name, manifest, shard, manifest["shard_bytes"].get(name))
        self.manifest = manifest
        self.top_k = manifest["key"]["top_k"]
        self.vocab_size = manifest["vocab_size"]
        self._offsets: dict[int, torch.Tensor] = {}
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.manifest["num_examples"]

    def __getstate__(self):  # DataLoader workers open their own handles
        return {**self.__dict__, "_handles": {}}

    def __getitem__(self, i: int) -> TopKTeacher:
        shard, first = divmod(i, self.manifest["examples_per_shard"])
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.folder / SHARD_NAME.format(shard)), framework="pt")
            self._offsets[shard] = self._handles[shard].get_tensor("offsets")
        handle, offsets = self._handles[shard], self._offsets[shard]
        start, stop = int(offsets[first]), int(offsets[first + 1])
        ids = handle.get_slice("ids")[start:stop]
        return TopKTeacher(handle.get_slice("logprobs")[start:stop], ids.to(torch.int32) if ids.dtype == torch.uint16
                           else ids)

    @property
    def bytes_per_token(self) -> float:
        """The cache's size on disk per position it holds."""
        return sum(self.manifest["shard_bytes"].values()) / max(1, self.manifest["num_positions"])


def placement(padded_ids: torch.Tensor, ids: torch.Tensor) -> int:
    """Where an example's `ids` sit in its padded batch row: 0 (right padding) or the left padding's length."""
    n, length = ids.numel(), padded_ids.numel()
    for offset in (0, length - n):
        if 0 <= offset and torch.equal(padded_ids[offset:offset + n], ids):
            return offset
    raise TeacherLogitsCacheError(
        "the data collator changes an example's input_ids beyond padding them (truncation, masking or "
        "added tokens), so the cached teacher positions cannot be matched to the batch; cache_teacher_logits needs "
        "a collator that only pads (DataCollatorForLanguageModeling(tokenizer, mlm=False) or default_data_collator)")


class WithTopKTeacher(Dataset):
    """A training set whose examples carry their cached top-k teacher rows."""

    def __init__(self, dataset, cache: TopKLogitsCache):
        self.dataset, self.cache = dataset, cache

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        rows = self.cache[i]
        return {**self.dataset[i], TOPK_LOGPROBS: rows.logprobs, TOPK_IDS: rows.ids}


class TopKTeacherCollator:
    """The run's collator, then the examples' cached rows placed where the collator put their tokens."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        batch = self.collate([{k: v for k, v in e.items() if k not in (TOPK_LOGPROBS, TOPK_IDS)} for e in examples])
        if TOPK_IDS not in examples[0]:  # evaluation sets carry no cached rows
            return batch
        padded = batch["input_ids"]
        first = examples[0]
        logprobs = first[TOPK_LOGPROBS].new_zeros(*padded.shape, first[TOPK_LOGPROBS].shape[-1])
        ids = first[TOPK_IDS].new_zeros(*padded.shape, first[TOPK_IDS].shape[-1])
        for row, example in enumerate(examples):
            offset = placement(padded[row], torch.as_tensor(example["input_ids"], dtype=padded.dtype))
            n = example[TOPK_IDS].shape[0]
            logprobs[row, offset:offset + n] = example[TOPK_LOGPROBS]
            ids[row, offset:offset + n] = example[TOPK_IDS]
        batch[TOPK_LOGPROBS], batch[TOPK_IDS] = logprobs, ids
        return batch


__all__ = ["TOPK_IDS", "TOPK_LOGPROBS", "TeacherLogitsCacheError", "TopKLogitsCache", "TopKTeacherCollator",
           "WithTopKTeacher", "cache_key", "dataset_fingerprint", "placement", "teacher_fingerprint",
           "tokenizer_fingerprint"]
