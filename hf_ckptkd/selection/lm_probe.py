"""The probe set of a causal LM: a fixed, seeded sample of token positions from held-out text.

A position (row, t) of a tokenized dataset (rows of `input_ids`: blocks of a grouped corpus, or
texts of any length) is a prediction the LM makes: from the window of at most `context` tokens
ending at t (at least one token), the next token ids[t + 1]. Every position with a next token is
equally likely to be drawn; the draw is a seeded sample without replacement, in dataset order, so
the same dataset, size, context and seed give the same probe. For the estimator:

- X: each window's bag of tokens hashed into buckets (as for text classifiers: token ids carry no
  geometry, so the input kernel compares which tokens two windows share);
- Y: the next token id (the labels are the vocabulary: thousands of classes, most of them seen once
  or twice in a probe, which the label terms are built for, see `label_information`);
- the windows are right-padded into batches, so `forward_with_features` gives one (last hidden
  state, next-token logits) pair per position: F and, softened at T, P.

Next tokens are not stratified (a class-balanced sample of next tokens would describe no text).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.loading import DataError
from .errors import EmptyProbeError, SelectionError, SingleClassProbeError
from .kernels import single_class
from .probe import bag_of_tokens, padded_batches


def _real_tokens(ids, mask) -> np.ndarray:
    """A row's real tokens: those its attention mask marks (all of them when there is no mask)."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids if mask is None else ids[np.asarray(mask, dtype=bool)]


def _row_lengths(dataset) -> np.ndarray:
    """The number of real tokens of every row: the sums of the attention masks, else the rows' lengths.

    Read from the Arrow list column's offsets in one go (formatting rows one by one takes seconds per
    thousand rows); a dataset that is not a `datasets.Dataset` is read row by row.
    """
    column = "attention_mask" if "attention_mask" in dataset.column_names else "input_ids"
    if not hasattr(dataset, "with_format"):
        return np.asarray([int(np.sum(r)) if column == "attention_mask" else len(r) for r in dataset[column]],
                          dtype=np.int64)
    values = dataset.with_format("arrow")[column]
    values = values.combine_chunks() if hasattr(values, "combine_chunks") else values
    offsets = np.asarray(values.offsets, dtype=np.int64)
    if column == "input_ids":
        return np.diff(offsets)
    running = np.concatenate([[0], np.cumsum(np.asarray(values.values, dtype=np.int64))])
    return running[offsets[1:]] - running[offsets[:-1]]


def probe_positions(lengths: np.ndarray, size: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, positions t) of a seeded sample of `size` positions with a next token, in dataset order.

    A row of L real tokens has L - 1 such positions (t = 0 … L - 2); `size=None` or a size at least
    their number takes them all.
    """
    per_row = np.maximum(np.asarray(lengths, dtype=np.int64) - 1, 0)
    total = int(per_row.sum())
    if size is None or size >= total:
        flat = np.arange(total)
    else:
        flat = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    ends = np.cumsum(per_row)
    rows = np.searchsorted(ends, flat, side="right")
    t = flat - (ends[rows] - per_row[rows])
    return rows, t


def draw_lm_probe(dataset, size: int | None, seed: int, context: int, batch_size: int, pad_token_id: int,
                  ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """A causal LM's probe: (right-padded batches of context windows, bags of tokens X, next tokens Y)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise SelectionError(f"probe_context must be a positive number of tokens, got {context!r} (e.g. 64)")
    columns = list(getattr(dataset, "column_names", None) or [])
    if "input_ids" not in columns:
        raise DataError(f"a causal LM's probe set must be tokenized text (an input_ids column, e.g. from "
                        f"hf_ckptkd.data.lm_blocks); its columns are {columns}. Tokenize it with the teachers' "
                        "tokenizer first (on the command line: --text_column and --tokenizer).")
    rows, positions = probe_positions(_row_lengths(dataset), size, seed)
    if rows.size == 0:
        raise EmptyProbeError(f"the probe set is empty: none of the dataset's {len(dataset)} rows has two tokens, so "
                              "no position has a next token to predict; pass tokenized text (e.g. blocks of "
                              "--max_length tokens)")
    wanted = np.unique(rows)
    selected = dataset.select(wanted.tolist())
    masks = selected["attention_mask"] if "attention_mask" in columns else [None] * len(wanted)
    tokens = {int(r): _real_tokens(ids, m) for r, ids, m in zip(wanted, selected["input_ids"], masks)}
    windows, next_tokens = [], []
    for r, t in zip(rows.tolist(), positions.tolist()):
        ids = tokens[r]
        windows.append(torch.from_numpy(ids[max(0, t + 1 - context):t + 1].copy()))
        next_tokens.append(int(ids[t + 1]))
    labels = torch.tensor(next_tokens, dtype=torch.long)
    only = single_class(labels)
    if only is not None:
        raise SingleClassProbeError(
            f"every one of the {labels.numel()} probe positions is followed by the same token (id {only}), "
            "so H(Y) = 0 and the label terms Î(Y;·) are undefined; draw the probe from varied held-out text (the "
            "teachers' corpus), not from a constant or padded sequence")
    return padded_batches(windows, batch_size, pad_token_id), bag_of_tokens(windows), labels


__all__ = ["draw_lm_probe", "probe_positions"]
