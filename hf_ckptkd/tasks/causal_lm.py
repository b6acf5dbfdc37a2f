"""Causal language modelling: a corpus cut into blocks of tokens, decoder-only transformers LMs.

Every position predicts the next token, so a batch has (batch, seq, vocab) logits and the loss
counts the positions that carry a label (`labels != -100`, shifted as transformers shifts them).
Teachers and student share the tokenizer; the KD term is token-level (`losses.token_kd`, or
`topk_losses.topk_token_kd` against the top-k teacher of a teacher-logit cache).
Accuracy is next-token accuracy; the held-out loss is the mean next-token cross-entropy, whose
exponential is the perplexity.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import DataCollatorForLanguageModeling

from ..config import MODEL_LABEL_COLUMN, ConfigError
from ..data.loading import DataError, lm_blocks
from ..data.config import DataConfig, Splits
from .losses import IGNORE_INDEX, token_kd
from .topk_losses import TopKTeacher, topk_token_kd
from ..models.build import build_causal_lm, is_causal_lm, num_labels_of, unwrap
from ..selection.errors import ClassCountMismatchError, SelectionError
from ..selection.lm_probe import draw_lm_probe, next_token_counts
from ..selection.probe_sources import DrawnProbe, pad_token_id
from ..selection.settings import DEFAULT_PROBE_CONTEXT, SelectionSettings
from .base import KDTerm, RunData, Task, shared_tokenizer, tokenized_probe


def next_token_predictions(predicted: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) next tokens at the labelled positions: position i's prediction against label i+1."""
    predicted, labels = predicted[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    return predicted[keep], labels[keep]


def argmax_logits(logits, labels):
    """`preprocess_logits_for_metrics`: keep the argmax token, not the (batch, seq, vocab) logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits.argmax(-1)


def next_token_metrics(eval_pred) -> dict[str, float]:
    """`compute_metrics` of a causal LM: next-token accuracy over the labelled positions."""
    predicted, true = next_token_predictions(np.asarray(eval_pred.predictions), np.asarray(eval_pred.label_ids))
    return {"accuracy": float((predicted == true).mean()) if true.size else float("nan")}


def perplexity(mean_token_loss: float) -> float:
    """exp of the mean next-token cross-entropy (inf where it overflows)."""
    try:
        return math.exp(mean_token_loss)
    except OverflowError:
        return float("inf")


class TokenProbe:
    """Seeded segments of tokenized text for a causal LM: every position of each, and the token after it."""

    def __init__(self, settings: SelectionSettings, first_model: nn.Module):
        self.settings = settings
        self.pad_token_id = pad_token_id(first_model)
        self.vocabulary = num_labels_of(first_model)
        config = unwrap(first_model).config
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        context = settings.probe_context
        if context is None:  # the default segment, shortened for a model with fewer positions
            context = min(DEFAULT_PROBE_CONTEXT, positions or DEFAULT_PROBE_CONTEXT)
        elif positions is not None and isinstance(context, int) and context > positions:
            raise SelectionError(f"probe_context={context} is longer than the snapshots' {positions} positions; pass "
                                 f"probe_context <= {positions} (e.g. {min(positions, DEFAULT_PROBE_CONTEXT)})")
        self.context = context

    def label_space(self, dataset) -> tuple[list[str] | None, int]:
        # The labels are token ids, checked against the vocabulary when the probe is drawn.
        self._source_rows = len(dataset)
        return None, 0

    def draw(self, dataset) -> DrawnProbe:
        s = self.settings
        probe = DrawnProbe(*draw_lm_probe(dataset, s.max_probe_samples, s.seed, self.context, s.batch_size,
                                          self.pad_token_id))
        top = max(int(probe.labels.max()), max(int(b["input_ids"].max()) for b in probe.batches))
        if top >= self.vocabulary:
            raise ClassCountMismatchError(
                f"the probe holds token id {top} but the snapshots' vocabulary has {self.vocabulary} tokens; tokenize "
                "the probe text with the teachers' tokenizer (on the command line: --tokenizer, or leave it out to use "
                "the one saved in the snapshots)")
        probe.token_counts = next_token_counts(dataset, self.vocabulary)
        return probe

    def describe(self, probe: DrawnProbe) -> dict[str, Any]:
        return {"labels": "next tokens", "source_rows": self._source_rows,
                "source_tokens": int(probe.token_counts.sum()) if probe.token_counts is not None else None,
                "segments": sum(len(b["input_ids"]) for b in probe.batches),
                "distinct_next_tokens": int(torch.unique(probe.labels).numel()),
                "probe_context": self.context, "vocabulary": self.vocabulary}


class CausalLanguageModeling(Task):
    name = "causal-lm"
    model_description = "a causal LM"
    token_level = True
    labelled = False

    def handles(self, model: nn.Module) -> bool:
        return is_causal_lm(model)

    def probe_source(self, settings: SelectionSettings, dataset, first_model: nn.Module, first_path) -> TokenProbe:
        return TokenProbe(settings, first_model)

    def probe_dataset(self, dataset, data: DataConfig, tokenizer):
        return tokenized_probe(dataset, data, lambda ds: lm_blocks(ds, tokenizer, data.text_column, data.max_length))

    def prepare(self, data: DataConfig, splits: Splits, *, where: str) -> RunData:
        if not data.text_column or not data.tokenizer:
            raise ConfigError(f"{where}: task causal-lm needs text_column (the corpus column) and tokenizer (a folder, "
                              "Hub id or 'fortunes') that teachers and student share")
        tokenizer = shared_tokenizer(data, where)
        try:
            train, validation, test = (lm_blocks(ds, tokenizer, data.text_column, data.max_length)
                                       for ds in (splits.train, splits.validation, splits.test))
        except DataError as e:
            raise ConfigError(f"{where}: {e}") from e
        return RunData(self, train, validation, test, [], MODEL_LABEL_COLUMN, data, tokenizer=tokenizer)

    def model_ready(self, run: RunData) -> tuple[Any, Any, Any]:
        return run.train, run.validation, run.test

    def collator(self, run: RunData):
        return DataCollatorForLanguageModeling(run.tokenizer, mlm=False)

    def build_model(self, spec: str, run: RunData, model_kwargs: dict[str, Any]) -> nn.Module:
        tok = run.tokenizer
        # The tokenizer's own markers of a text's start and end (GPT-2's bos/eos, BERT-style [CLS]/[SEP]).
        special = {"bos_token_id": tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id,
                   "eos_token_id": tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id}
        kwargs = {**{k: v for k, v in special.items() if v is not None}, **model_kwargs}
        return build_causal_lm(spec, vocab_size=len(tok), pad_token_id=tok.pad_token_id, model_kwargs=kwargs)

    def trainer_kwargs(self, run: RunData, distilling: bool) -> dict[str, Any]:
        shared = {"teacher_tokenizer": run.tokenizer, "student_tokenizer": run.tokenizer} if distilling else {}
        return {"processing_class": run.tokenizer, **shared}

    def metric_kwargs(self) -> dict[str, Any]:
        return {"compute_metrics": next_token_metrics, "preprocess_logits_for_metrics": argmax_logits}

    def kd_term(self, student_logits, teacher_logits, labels, *, args) -> KDTerm:
        """The batch's soft-label term, summed over its labelled tokens (in chunks of `args.kd_chunk_size` positions);
        against a `TopKTeacher` (read from a teacher-logit cache) the term over its top-k bins."""
        common = dict(temperature=args.temperature, kind=args.kd_loss, beta=args.jsd_beta, chunk_size=args.kd_chunk_size)
        if isinstance(teacher_logits, TopKTeacher):
            kd = topk_token_kd(student_logits, teacher_logits, labels, missing_mass=args.teacher_logits_missing_mass,
                               **common)
        else:  # torch_compile: the term's chunk math too
            kd = token_kd(student_logits, teacher_logits, labels, compiled=args.torch_compile, **common)
        logs = {"loss_kd": kd.total.detach() / kd.tokens, "teacher_accuracy": kd.teacher_correct.float() / kd.tokens}
        return KDTerm(kd.total, kd.tokens, logs)

    def predictions(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        return next_token_predictions(logits.argmax(-1).cpu().numpy(), labels.cpu().numpy())
