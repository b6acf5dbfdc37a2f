"""The probe set of a causal LM: seeded segments of held-out text, every position of each read from one forward.

A position (row, t) of a tokenized dataset (rows of `input_ids`: blocks of a grouped corpus, or
texts of any length) is a prediction the LM makes: the next token ids[t + 1] from what comes before.
Every row is cut into consecutive segments of at most `context` tokens, and a segment is one
causal forward: the causal mask gives each of its positions its own context (the segment's tokens
up to it, 1 to `context` of them, as a block of that length gives in training), so a single
forward reads all of them. The probe is a seeded sample of whole segments (their order shuffled,
whole segments taken until `size` positions, the last one cut short), in dataset order: every
position is equally likely to be in it, the same dataset, size, context and seed give the same
probe, and its cost per snapshot is one forward over about `size` tokens. For the estimator:

- X: each position's context as a bag of tokens hashed into buckets (as for text classifiers:
  token ids carry no geometry, so the input kernel compares which tokens two contexts share);
- Y: the next token id (the labels are the vocabulary: thousands of classes, most of them seen once
  or twice in a probe, which the label terms are built for, see `token_information`);
- the segments are right-padded into batches of at most `batch_size` positions (and at least one
  segment), so `forward_with_features` gives one (last hidden state, next-token logits) pair per
  real token: F and, softened at T, P;
- the next-token counts of the whole dataset (every real token but each row's first), the label
  terms' unigram baseline.

Next tokens are not stratified (a class-balanced sample of next tokens would describe no text).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.loading import DataError, resolve_label_column
from .errors import ClassCountMismatchError, EmptyProbeError, SelectionError, SingleClassProbeError
from .kernels import single_class
from .probe import TEXT_INPUT_BUCKETS, padded_batches


def _real_tokens(ids, mask) -> np.ndarray:
    """A row's real tokens: those its attention mask marks (all of them when there is no mask)."""
    ids = np.asarray(ids, dtype=np.int64)
    return ids if mask is None else ids[np.asarray(mask, dtype=bool)]


def _flat_column(dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a list column, read from Arrow in one go (rows one by one take seconds per
    thousand rows); a dataset that is not a `datasets.Dataset` is read row by row."""
    if not hasattr(dataset, "with_format"):
        rows = [np.asarray(r, dtype=np.int64) for r in dataset[column]]
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        return offsets, np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    values = dataset.with_format("arrow")[column]
    values = values.combine_chunks() if hasattr(values, "combine_chunks") else values
    offsets = np.asarray(values.offsets, dtype=np.int64)
    flat = np.asarray(values.values, dtype=np.int64)[offsets[0]:offsets[-1]]
    return offsets - offsets[0], flat


def _real_flat_tokens(dataset) -> tuple[np.ndarray, np.ndarray]:
    """(row of each real token, the real tokens), every row's in order, over the whole dataset."""
    offsets, ids = _flat_column(dataset, "input_ids")
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    if "attention_mask" in (getattr(dataset, "column_names", None) or []):
        mask_offsets, mask = _flat_column(dataset, "attention_mask")
        if not np.array_equal(mask_offsets, offsets):
            raise DataError("every row's attention_mask must be as long as its input_ids; tokenize the probe text "
                            "with the teachers' tokenizer (e.g. hf_ckptkd.data.lm_blocks)")
        keep = mask.astype(bool)
        rows, ids = rows[keep], ids[keep]
    return rows, ids


def _following_tokens(dataset) -> np.ndarray:
    """Every token that follows a position of the dataset: every real token but each row's first."""
    rows, ids = _real_flat_tokens(dataset)
    return ids[np.concatenate([[False], rows[1:] == rows[:-1]])] if rows.size else ids


def next_token_counts(dataset, vocabulary: int) -> torch.Tensor:
    """How often each token id follows a position of the dataset (V counts): the unigram baseline's counts."""
    following = _following_tokens(dataset)
    if following.size and int(following.max()) >= vocabulary:
        raise ClassCountMismatchError(
            f"the probe text holds token id {int(following.max())} but the snapshots' vocabulary has {vocabulary} "
            "tokens; tokenize the probe text with the teachers' tokenizer (on the command line: --tokenizer, or leave "
            "it out to use the one saved in the snapshots)")
    return torch.from_numpy(np.bincount(following, minlength=vocabulary))


def _row_lengths(dataset) -> np.ndarray:
    """The number of real tokens of every row."""
    rows, _ = _real_flat_tokens(dataset)
    return np.bincount(rows, minlength=len(dataset)).astype(np.int64)


def probe_segments(lengths: np.ndarray, size: int | None, seed: int, context: int) -> list[tuple[int, int, int]]:
    """(row, start, positions) of the probe's segments, in dataset order.

    A row of L real tokens is cut at 0, context, 2·context, …; the segment starting at s holds the
    positions s … min(s + context, L − 1) − 1 (those with a next token). A seeded permutation of all
    segments is taken whole until `size` positions, the last one cut to its first positions;
    `size=None` or a size at least the number of positions takes them all.
    """
    lengths = np.asarray(lengths, dtype=np.int64).tolist()
    segments = [(r, s, min(s + context, n - 1) - s) for r, n in enumerate(lengths) for s in range(0, max(n - 1, 0), context)]
    total = sum(k for _, _, k in segments)
    if size is None or size >= total:
        return segments
    chosen, taken = [], 0
    for i in np.random.default_rng(seed).permutation(len(segments)):
        r, s, k = segments[i]
        chosen.append((r, s, min(k, size - taken)))
        taken += chosen[-1][2]
        if taken >= size:
            break
    return sorted(chosen)


def context_bags(segment: torch.Tensor) -> torch.Tensor:
    """Each position's context (the segment's tokens up to it) as counts of token ids hashed into buckets."""
    one_hot = torch.zeros(segment.numel(), TEXT_INPUT_BUCKETS)
    one_hot[torch.arange(segment.numel()), segment % TEXT_INPUT_BUCKETS] = 1.0
    return one_hot.cumsum(dim=0)


def _segment_batches(segments: list[torch.Tensor], batch_size: int, pad_token_id: int) -> list[dict[str, torch.Tensor]]:
    """Segments right-padded into batches of at most `batch_size` positions (at least one segment each)."""
    groups: list[list[torch.Tensor]] = [[]]
    for segment in segments:
        if groups[-1] and sum(len(x) for x in groups[-1]) + len(segment) > batch_size:
            groups.append([])
        groups[-1].append(segment)
    return [batch for group in groups for batch in padded_batches(group, len(group), pad_token_id)]


def draw_lm_probe(dataset, size: int | None, seed: int, context: int, batch_size: int, pad_token_id: int,
                  ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """A causal LM's probe: (right-padded batches of segments, each position's bag of tokens X, next tokens Y).

    Read with `forward_with_features`, the batches give one prediction per real token, in the order
    of X and Y.
    """
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        raise SelectionError(f"probe_context must be a positive number of tokens, got {context!r} (e.g. 64)")
    columns = list(getattr(dataset, "column_names", None) or [])
    if "input_ids" not in columns:
        raise DataError(f"a causal LM's probe set must be tokenized text (an input_ids column, e.g. from "
                        f"hf_ckptkd.data.lm_blocks); its columns are {columns}. Tokenize it with the teachers' "
                        "tokenizer first (on the command line: --text_column and --tokenizer).")
    segments = probe_segments(_row_lengths(dataset), size, seed, context)
    if not segments:
        raise EmptyProbeError(f"the probe set is empty: none of the dataset's {len(dataset)} rows has two tokens, so "
                              "no position has a next token to predict; pass tokenized text (e.g. blocks of "
                              "--max_length tokens)")
    wanted = sorted({r for r, _, _ in segments})
    selected = dataset.select(wanted)
    masks = selected["attention_mask"] if "attention_mask" in columns else [None] * len(wanted)
    tokens = {r: _real_tokens(ids, m) for r, ids, m in zip(wanted, selected["input_ids"], masks)}
    inputs = [torch.from_numpy(tokens[r][s:s + k].copy()) for r, s, k in segments]
    labels = torch.cat([torch.from_numpy(tokens[r][s + 1:s + k + 1].copy()) for r, s, k in segments])
    only = single_class(labels)
    if only is not None:
        raise SingleClassProbeError(
            f"every one of the {labels.numel()} probe positions is followed by the same token (id {only}), "
            "so H(Y) = 0 and the label terms Ĩ(Y;·) are undefined; draw the probe from varied held-out text (the "
            "teachers' corpus), not from a constant or padded sequence")
    bags = torch.cat([context_bags(x) for x in inputs])
    return _segment_batches(inputs, batch_size, pad_token_id), bags, labels


def is_token_text(dataset, label_column: str) -> bool:
    """Whether a probe dataset is text for a causal LM: token ids without an integer label per row
    (no label column, or one that holds token sequences, as transformers' `run_clm` copies them)."""
    if "input_ids" not in (getattr(dataset, "column_names", None) or []):
        return False
    try:
        column = resolve_label_column(dataset, label_column)
    except DataError:
        return True
    return hasattr(getattr(dataset, "features", {}).get(column), "feature")  # a List / Sequence of ids


def check_token_text(dataset) -> None:
    """Refuse, before any training, text whose positions are all followed by one token (or by none)."""
    following = _following_tokens(dataset)
    distinct = np.unique(following)
    if distinct.size < 2:
        raise SelectionError(f"the probe text's {following.size} positions with a next token are followed by "
                             f"{distinct.size} distinct token(s); the label information needs at least two: pass the "
                             "teachers' training text")


__all__ = ["check_token_text", "context_bags", "draw_lm_probe", "is_token_text", "next_token_counts", "probe_segments"]
