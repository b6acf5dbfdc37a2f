"""Distillation of a causal LM from a teacher kept as its top-k tokens per position (a teacher-logit cache).

A `TopKTeacher` holds, at every position, the teacher's k most likely tokens with their
log-probabilities at the distillation temperature, and the log of the mass left to all other
tokens. `topk_token_kd` is `losses.token_kd` against it: the same soft-label term `T^2 * D`
summed over the labelled tokens, in the same chunks, with the divergence taken over the bins that
`MISSING_MASS` makes of the two distributions. The trainer adds it to the student's own loss
exactly as it adds the term against live teachers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..config import DEFAULT_TOPK_MISSING_MASS, TOPK_MISSING_MASS
from .losses import TokenKD, autograd_chunk_kd, chunked_token_kd, kd_per_row

# The log-probability a bin with no mass is given, so that KL terms stay finite (a tail of k = vocabulary is empty).
LOG_FLOOR = math.log(1e-30)


@dataclass
class TopKTeacher:
    """A teacher's distribution at every position, kept as its k most likely tokens.

    logprobs: (..., k + 1) float log-probabilities at the distillation temperature, the k largest in
        descending order, then the log of the mass of all other tokens together (the tail; -inf when
        k is the vocabulary).
    ids: (..., k) integer token ids of those k.
    """

    logprobs: torch.Tensor
    ids: torch.Tensor

    @property
    def top_k(self) -> int:
        return self.ids.shape[-1]


def _tail_bins(log_ps: torch.Tensor, teacher_lp: torch.Tensor, ids: torch.Tensor):
    """k + 1 bins: the teacher's top-k tokens and one bin for all others, on both sides."""
    top = log_ps.gather(1, ids)
    tail = log_ps.scatter(1, ids, float("-inf")).logsumexp(1, keepdim=True).clamp_min(LOG_FLOOR)
    return torch.cat([top, tail], 1), torch.cat([teacher_lp[:, :-1], teacher_lp[:, -1:].clamp_min(LOG_FLOOR)], 1)


def _renormalised_bins(log_ps: torch.Tensor, teacher_lp: torch.Tensor, ids: torch.Tensor):
    """The teacher's top-k tokens only, both distributions renormalised over them (kd_per_row's log-softmax does)."""
    return log_ps.gather(1, ids), teacher_lp[:, :-1]


# How the mass outside the teacher's top-k enters the divergence: "tail" keeps it as one more bin on both
# sides (so the student is taught how much mass the teacher leaves to all other tokens together; the
# divergence over k + 1 bins is a lower bound of the full one, equal when k is the vocabulary);
# "renormalize" drops it and compares the two distributions restricted to the k tokens, each renormalised.
MISSING_MASS = {"tail": _tail_bins, "renormalize": _renormalised_bins}
assert tuple(MISSING_MASS) == TOPK_MISSING_MASS


def _topk_chunk_terms(student_flat: torch.Tensor, part: torch.Tensor, targets: torch.Tensor, wants_grad: bool, *,
                      teacher_lp: torch.Tensor, teacher_ids: torch.Tensor, temperature: float, kind: str,
                      beta: float, missing_mass: str):
    """`losses._chunk_terms` against a top-k teacher: (KD sum, its gradient or None, the teacher's correct next
    tokens), the divergence taken over the bins `MISSING_MASS[missing_mass]` makes."""
    s = student_flat.index_select(0, part).float()
    lp = teacher_lp.index_select(0, part).float()
    ids = teacher_ids.index_select(0, part).long()
    if kind == "kl" or (kind == "jsd" and beta == 0.0):
        kd, grad = _forward_kl_terms(s, lp, ids, temperature, missing_mass, wants_grad)
        return kd, grad, (ids[:, 0] == targets).sum()
    bins = MISSING_MASS[missing_mass]

    def kd_sum(s):
        student_bins, teacher_bins = bins(F.log_softmax(s / temperature, dim=-1), lp, ids)
        return kd_per_row(student_bins, teacher_bins, 1.0, kind, beta).sum() * temperature**2

    kd, grad = autograd_chunk_kd(s, wants_grad, kd_sum)
    return kd, grad, (ids[:, 0] == targets).sum()


def _forward_kl_terms(s, lp, ids, temperature, missing_mass, wants_grad):
    """(T^2 * KL(teacher || student) summed over the bins, its gradient or None) with the gradient in closed form
    and as few passes over the (positions, vocab) chunk as the full-logit `losses._kl_terms` (the default term).

    With u = s/T, p = softmax(u) and teacher bin probabilities q, d(T^2 KL)/ds = T * g: over k + 1 bins
    (tail) g = p - q_j at the j-th top token and p * (1 - q_tail / p_tail) at every other token; over the
    k tokens renormalised g = p~ - q at the top tokens (p~ = p renormalised over them) and 0 elsewhere.
    So outside the top k the gradient is p times one number per row, and the top k are written over.
    The student's tail mass is 1 minus its top-k mass, summed in float64 (no pass over the vocabulary).
    """
    log_pu = F.log_softmax(s if temperature == 1.0 else s / temperature, dim=-1)
    top = log_pu.gather(1, ids)
    if missing_mass == "tail":
        p_tail = (1 - top.double().exp().sum(1, keepdim=True)).clamp_min(math.exp(LOG_FLOOR)).float()
        log_student = torch.cat([top, p_tail.log()], 1)
        log_teacher = F.log_softmax(torch.cat([lp[:, :-1], lp[:, -1:].clamp_min(LOG_FLOOR)], 1), dim=-1)
    else:
        log_student, log_teacher = F.log_softmax(top, dim=-1), F.log_softmax(lp[:, :-1], dim=-1)
    q = log_teacher.exp()
    kd = (q * (log_teacher - log_student)).sum() * temperature**2
    if not wants_grad:
        return kd, None
    k = ids.shape[1]
    kd_top = (log_student[:, :k].exp() - q[:, :k]).mul_(temperature)
    if missing_mass == "tail":
        grad = log_pu.exp_().mul_((1 - q[:, -1:] / p_tail) * temperature)
    else:
        grad = torch.zeros_like(log_pu)
    return kd, grad.scatter_(1, ids, kd_top)


def topk_token_kd(student_logits: torch.Tensor, teacher: TopKTeacher, labels: torch.Tensor, *, temperature: float,
                  kind: str = "kl", beta: float = 0.5, missing_mass: str = DEFAULT_TOPK_MISSING_MASS,
                  chunk_size: int = 256) -> TokenKD:
    """`losses.token_kd` against a teacher kept as its top-k tokens per position (a teacher-logit cache).

    The teacher's log-probabilities are already at `temperature` (the cache was written at it); the
    student's are `log_softmax(student_logits / temperature)`. The divergence (kl, reverse_kl or
    jsd) is taken over the bins `MISSING_MASS[missing_mass]` builds; with k equal to the vocabulary
    both ways give the full-vocabulary loss. mse compares raw logits, which a top-k teacher does not keep.
    """
    if kind == "mse":
        raise ValueError("kd_loss='mse' compares raw logits, which a top-k teacher (a teacher-logit cache) does not "
                         "keep; use kd_loss 'kl', 'reverse_kl' or 'jsd', or distil from live teachers")
    if missing_mass not in MISSING_MASS:
        raise ValueError(f"missing_mass={missing_mass!r} is not one of {', '.join(map(repr, MISSING_MASS))}")
    if teacher.logprobs.shape[:-1] != student_logits.shape[:-1] or teacher.ids.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(f"the top-k teacher's positions {tuple(teacher.ids.shape[:-1])} differ from the student's "
                         f"{tuple(student_logits.shape[:-1])}; the cache must be read with the batch it was written for")
    k = teacher.top_k
    terms = partial(_topk_chunk_terms, teacher_lp=teacher.logprobs.reshape(-1, k + 1),
                    teacher_ids=teacher.ids.reshape(-1, k), temperature=float(temperature), kind=kind,
                    beta=float(beta), missing_mass=missing_mass)
    return chunked_token_kd(student_logits, labels, terms, chunk_size)
