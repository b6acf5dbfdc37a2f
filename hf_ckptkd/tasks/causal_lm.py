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

from ..config import ConfigError
from ..data.loading import DataError, lm_blocks
from ..data.config import DataConfig, Splits
from .losses import IGNORE_INDEX, token_kd
from .topk_losses import TopKTeacher, topk_token_kd
from ..models.build import build_causal_lm
from .base import KDTerm, RunData, Task, shared_tokenizer

LM_LABEL_COLUMN = "labels"  # made by the collator from input_ids


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


class CausalLanguageModeling(Task):
    name = "causal-lm"
    token_level = True

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
        return RunData(self, train, validation, test, [], LM_LABEL_COLUMN, data, tokenizer=tokenizer)

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
