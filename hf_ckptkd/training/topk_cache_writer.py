"""One pass of a causal LM's teachers over its training set, writing their top-k log-probabilities (`topk_cache`).

Each example's rows are its teachers' output for it alone: batches are padded on the right, which
a causal LM's real tokens never attend to, whatever padding training uses later. The shards are
shared out among the processes (shard s to process s mod N), each written under a
temporary name and renamed when whole, so an interrupted pass resumes at the shards it had not
finished; the main process marks the manifest complete once every shard is on disk. Sharded
teachers (FSDP, ZeRO-3) run collectives in every forward, so then every process runs as many
forwards as the busiest one, the idle ones on a batch whose result is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import TEMP_PREFIX
from .teacher_checks import check_finite
from .topk_cache import (
    FORMAT,
    SHARD_NAME,
    SHARD_POSITIONS,
    TeacherLogitsCacheError,
    TopKLogitsCache,
    check_key,
    new_manifest,
    read_manifest,
    shard_is_written,
    shard_range,
    write_manifest,
)

IDS_DTYPES = {"uint16": torch.uint16, "int32": torch.int32}


def write_topk_cache(folder: str | Path, key: dict[str, Any], teachers, dataset, *, batch_size: int,
                     accelerator=None, tokenizer: str | None = None,
                     shard_positions: int = SHARD_POSITIONS) -> TopKLogitsCache:
    """Run `teachers` (a `TeacherEnsemble` of causal LMs) over `dataset` and write the top-k cache `key`
    describes into `folder`, or finish one an interrupted run began; returns it opened.

    `tokenizer` is the teachers' tokenizer fingerprint, kept for checking students against the cache
    when the teachers are not loaded; a shard holds about `shard_positions` positions (whole examples).
    Every process of `accelerator` must call this together.
    """
    folder = Path(folder)
    vocab = int(teachers.num_labels)
    if key["top_k"] > vocab:
        raise TeacherLogitsCacheError(f"teacher_logits_top_k={key['top_k']} is larger than the teachers' vocabulary "
                                      f"of {vocab} tokens; use at most {vocab}")
    if len(dataset) == 0:
        raise TeacherLogitsCacheError("the training set is empty: there is nothing to cache teacher logits for")
    main = accelerator is None or accelerator.is_main_process
    manifest = read_manifest(folder)
    if manifest is not None:
        check_key(folder, manifest, key)
        if manifest["complete"]:
            return TopKLogitsCache(folder, key)
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(f"{TEMP_PREFIX}*"):  # what an interrupted writer left unfinished
            leftover.unlink()
        if manifest is None:
            positions = max(1, len(dataset[0]["input_ids"]))
            write_manifest(folder, new_manifest(key, num_examples=len(dataset),
                                                examples_per_shard=max(1, shard_positions // positions),
                                                vocab_size=vocab, tokenizer=tokenizer))
    _wait(accelerator)
    manifest = read_manifest(folder)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    lockstep = world > 1 and teachers.sharding is not None
    for first in range(0, manifest["num_shards"], world):
        shard = first + rank
        todo = shard < manifest["num_shards"] and not shard_is_written(folder, manifest, shard)
        examples = list(shard_range(manifest, shard)) if todo else []
        batches = [examples[i:i + batch_size] for i in range(0, len(examples), batch_size)]
        forwards = _most_over_processes(len(batches), accelerator) if lockstep else len(batches)
        rows = []
        for j in range(forwards):
            if j < len(batches):
                rows += _topk_rows(teachers, dataset, batches[j], key, IDS_DTYPES[manifest["ids_dtype"]])
            else:  # keeps a sharded teacher's collectives in step with the processes that still have batches
                teachers(**_right_padded(dataset, [0])[0])
        if todo:
            _write_shard(folder / SHARD_NAME.format(shard), examples[0], rows)
    _wait(accelerator)
    if main:
        _mark_complete(folder, manifest)
    _wait(accelerator)
    return TopKLogitsCache(folder, key)


def _wait(accelerator) -> None:
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _most_over_processes(count: int, accelerator) -> int:
    counts = accelerator.gather(torch.tensor([count], device=accelerator.device))
    return int(counts.max())


def _right_padded(dataset, indices: list[int]) -> tuple[dict[str, torch.Tensor], list[int]]:
    """(input_ids and attention_mask of the examples, padded on the right, their lengths)."""
    rows = [dataset[i] for i in indices]
    ids = [torch.as_tensor(row["input_ids"], dtype=torch.long) for row in rows]
    masks = [torch.as_tensor(row["attention_mask"], dtype=torch.long) if "attention_mask" in row
             else torch.ones_like(i) for row, i in zip(rows, ids)]
    batch = {"input_ids": torch.nn.utils.rnn.pad_sequence(ids, batch_first=True),
             "attention_mask": torch.nn.utils.rnn.pad_sequence(masks, batch_first=True)}
    return batch, [i.numel() for i in ids]


def _topk_rows(teachers, dataset, indices: list[int], key: dict[str, Any], ids_dtype: torch.dtype):
    """(logprobs (n, k + 1) float16, ids (n, k)) per example of `indices`, on the CPU."""
    batch, lengths = _right_padded(dataset, indices)
    logits = teachers(**batch)
    rows = []
    for row, length in enumerate(lengths):
        # One example at a time: a (positions, vocab) float32 copy, not the batch's.
        logprobs = F.log_softmax(logits[row, :length].float() / key["temperature"], dim=-1)
        top, top_ids = logprobs.topk(key["top_k"], dim=-1)
        # A NaN or inf logit makes its row's log-softmax non-finite, so the top k show it (a cheaper check).
        check_finite(top, batch_index=indices[row], references=teachers.references)
        tail = logprobs.scatter(-1, top_ids, float("-inf")).logsumexp(-1, keepdim=True)
        rows.append((torch.cat([top, tail], -1).to(torch.float16).cpu(), top_ids.to(ids_dtype).cpu()))
    return rows


def _write_shard(path: Path, first: int, rows) -> None:
    """Write one shard under a temporary name, flush it to disk, then rename it: whole or absent."""
    lengths = torch.tensor([0] + [ids.shape[0] for _, ids in rows], dtype=torch.int64)
    tensors = {"logprobs": torch.cat([lp for lp, _ in rows]), "ids": torch.cat([ids for _, ids in rows]),
               "offsets": lengths.cumsum(0)}
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "first": str(first)})
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _mark_complete(folder: Path, manifest: dict[str, Any]) -> None:
    shard_bytes, positions = {}, 0
    for shard in range(manifest["num_shards"]):
        name = SHARD_NAME.format(shard)
        if not shard_is_written(folder, manifest, shard):
            raise TeacherLogitsCacheError(f"teacher-logit cache {folder}: {name} was not written; run again to "
                                          "finish the cache")
        shard_bytes[name] = (folder / name).stat().st_size
        with safe_open(str(folder / name), framework="pt") as f:
            positions += int(f.get_tensor("offsets")[-1])
    write_manifest(folder, {**manifest, "complete": True, "shard_bytes": shard_bytes, "num_positions": positions})


__all__ = ["write_topk_cache"]
