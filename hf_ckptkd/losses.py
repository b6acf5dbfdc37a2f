"""Distillation losses: the paper's `alpha*CE + (1-alpha)*T^2*KL(teacher || student)` and variants.

`kd_per_row` is the one definition of every soft-label term, per row of (rows, classes) logits.
Classifiers (`distillation_loss`) take its batch mean, so the loss of a micro-batch does not depend
on its size and Trainer averages it under gradient accumulation and several processes as it does
any mean loss. Causal LMs (`token_distillation_loss`) sum it over the positions that carry a label
and divide by the number of labelled tokens Trainer counted over the whole optimizer step
(`num_items_in_batch`), so long and short micro-batches weigh by their tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import KD_LOSSES

IGNORE_INDEX = -100  # transformers' label for a position that is not a target


class NoLabelledTokensError(ValueError):
    """A causal-LM batch in which no position carries a label, so there is nothing to distil."""


def kd_per_row(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, kind: str = "kl",
               beta: float = 0.5) -> torch.Tensor:
    """The soft-label term of each row, shape (rows,), already multiplied by T^2 for the divergences.

    kl: KL(p_t || p_s) with p = softmax(logits / T); reverse_kl: KL(p_s || p_t);
    jsd: the generalised Jensen-Shannon divergence of GKD (TRL's `generalized_jsd_loss`: beta 0 is
    kl, beta 1 is reverse_kl, otherwise beta*KL(p_t || m) + (1-beta)*KL(p_s || m) with
    m = beta*p_t + (1-beta)*p_s); mse: mean squared difference of the raw logits (no temperature).
    """
    teacher_logits = teacher_logits.to(student_logits.dtype)
    if kind == "mse":
        return (student_logits - teacher_logits).pow(2).mean(-1)
    if kind not in KD_LOSSES:
        raise ValueError(f"unknown kd_loss {kind!r}; use one of {', '.join(KD_LOSSES)}")
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if kind == "jsd" and beta == 0.0:
        kind = "kl"
    elif kind == "jsd" and beta == 1.0:
        kind = "reverse_kl"
    if kind == "kl":
        divergence = _kl(t, s)
    elif kind == "reverse_kl":
        divergence = _kl(s, t)
    else:
        mixture = torch.logaddexp(s + math.log(1 - beta), t + math.log(beta))
        divergence = beta * _kl(t, mixture) + (1 - beta) * _kl(s, mixture)
    return divergence * temperature**2


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, kind: str = "kl",
            beta: float = 0.5) -> torch.Tensor:
    """The batch mean of `kd_per_row` (mse: the mean over every logit, as `F.mse_loss`)."""
    return kd_per_row(student_logits, teacher_logits, temperature, kind, beta).mean()


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
                      alpha: float, temperature: float, kind: str = "kl",
                      beta: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, loss_ce, loss_kd) of a classifier's batch, with loss = alpha * loss_ce + (1 - alpha) * loss_kd.

    Without labels the hard-label term is zero and only the soft labels teach.
    """
    loss_kd = kd_term(student_logits, teacher_logits, temperature, kind, beta)
    if labels is None:
        loss_ce = torch.zeros((), device=student_logits.device, dtype=loss_kd.dtype)
        return loss_kd, loss_ce, loss_kd
    loss_ce = F.cross_entropy(student_logits, labels)
    return alpha * loss_ce + (1 - alpha) * loss_kd, loss_ce, loss_kd


@dataclass
class TokenDistillation:
    """What `token_distillation_loss` returns: the loss to back-propagate and what the trainer logs."""

    loss: torch.Tensor             # alpha*CE + (1-alpha)*KD, summed over labelled tokens / the normaliser
    ce_sum: torch.Tensor           # the student's next-token CE summed over this batch's labelled tokens (detached)
    kd_sum: torch.Tensor           # the KD term summed the same way (detached)
    teacher_correct: torch.Tensor  # labelled tokens whose next token the teacher ranks first
    tokens: int                    # labelled tokens in this batch


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat indices into the (batch*seq) logits, their target token ids) for every position that predicts a label.

    As in transformers' causal-LM loss, the logits at position i predict the label at i+1: the last
    position predicts nothing, and a label of -100 is no target.
    """
    batch, seq = labels.shape
    targets = labels[:, 1:]
    rows, cols = torch.nonzero(targets != IGNORE_INDEX, as_tuple=True)
    return rows * seq + cols, targets[rows, cols]


def _chunk_terms(student_flat, teacher_flat, index, targets, temperature, kind, beta):
    """(CE sum, KD sum) of the positions `index`: only this chunk's (tokens, vocab) values exist at once."""
    s = student_flat.index_select(0, index)
    t = teacher_flat.index_select(0, index)
    ce = F.cross_entropy(s.float(), targets, reduction="sum")
    kd = kd_per_row(s.float(), t.float(), temperature, kind, beta).sum()
    return ce, kd


def token_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                            alpha: float, temperature: float, kind: str = "kl", beta: float = 0.5,
                            num_items_in_batch: int | torch.Tensor | None = None,
                            chunk_size: int = 1024) -> TokenDistillation:
    """Token-level distillation of a causal LM over the positions that carry a label.

    student_logits and teacher_logits are (batch, seq, vocab); labels (batch, seq) as transformers'
    causal LMs take them (unshifted, -100 where no loss). The loss is
    `(alpha * sum CE + (1-alpha) * sum KD) / N` with N = `num_items_in_batch` (Trainer's count of
    labelled tokens over every micro-batch of the optimizer step, and over processes) or, when not
    given, this batch's labelled tokens. The KD term is computed `chunk_size` positions at a time
    and each chunk is recomputed in backward (activation checkpointing), so beyond the logits
    themselves (and their gradient) only one chunk's (positions, vocab) probabilities are alive.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; teachers and student must share the tokenizer "
                         "and read the same batch")
    index, targets = labelled_positions(labels)
    tokens = int(index.numel())
    if tokens == 0:
        raise NoLabelledTokensError(
            f"a batch of {labels.shape[0]} sequences has no labelled token (every label after the shift is -100): "
            "set labels to the input_ids (DataCollatorForLanguageModeling(tokenizer, mlm=False) does) and keep "
            "sequences of at least 2 tokens")
    vocab = student_logits.shape[-1]
    student_flat = student_logits.reshape(-1, vocab)
    teacher_flat = teacher_logits.reshape(-1, vocab)
    ce_sum = student_flat.new_zeros((), dtype=torch.float32)
    kd_sum = student_flat.new_zeros((), dtype=torch.float32)
    for start in range(0, tokens, max(1, int(chunk_size))):
        part = slice(start, start + chunk_size)
        args = (student_flat, teacher_flat, index[part], targets[part], temperature, kind, beta)
        if torch.is_grad_enabled() and student_flat.requires_grad:
            ce, kd = checkpoint(_chunk_terms, *args, use_reentrant=False)
        else:
            ce, kd = _chunk_terms(*args)
        ce_sum, kd_sum = ce_sum + ce, kd_sum + kd
    normaliser = num_items_in_batch if num_items_in_batch is not None else tokens
    if torch.is_tensor(normaliser):
        normaliser = normaliser.to(ce_sum.device)
    loss = (alpha * ce_sum + (1 - alpha) * kd_sum) / normaliser
    with torch.no_grad():
        correct = (teacher_flat.index_select(0, index).argmax(-1) == targets).sum()
    return TokenDistillation(loss, ce_sum.detach(), kd_sum.detach(), correct, tokens)
