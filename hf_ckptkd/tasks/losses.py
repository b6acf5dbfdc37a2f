"""Distillation losses: the soft-label term `T^2 * D(teacher, student)` and its variants.

The trainer adds it to the student's own loss, `alpha * loss + (1 - alpha) * T^2 * D`. Every term
here is a *sum* over what the batch predicts (a classifier's rows, a causal LM's labelled tokens):
the trainer divides it by whatever the student's own loss was divided by (the batch's rows or
tokens, or Trainer's count over the whole optimizer step), so both terms are reduced alike under
gradient accumulation and several processes. `kd_per_row` is the one definition of every
soft-label term, per row of (rows, classes) logits; `token_kd` sums it over a causal LM's labelled
positions in chunks, with its gradient in the same pass. `topk_losses` builds the same term
against a teacher kept as its top-k tokens per position on `chunked_token_kd` and
`autograd_chunk_kd`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from ..config import KD_LOSSES

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


@dataclass
class TokenKD:
    """What `token_kd` returns."""

    total: torch.Tensor            # T^2 * D summed over the batch's labelled tokens (differentiable)
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


def _forward_kl_terms(student_flat: torch.Tensor, teacher_flat: torch.Tensor, part: torch.Tensor,
                      temperature: float):
    """(T^2 * KL(p_t || p_s) per row, its gradient T * (p_s - p_t) with respect to s, the teacher's top token) of
    the rows `part` of the logits, with p = softmax(logits / T).

    Written with softmax from its parts (max, exp, sum) so that `torch.compile` fuses it, the rows'
    gather included, into a few passes over the chunk; KL(p_t || p_s) = sum p_t * (v - u) + lse(u) -
    lse(v) for u = s/T, v = t/T.
    """
    s = student_flat[part].float()
    t = teacher_flat[part].float()
    u, v = (s, t) if temperature == 1.0 else (s / temperature, t / temperature)
    mu = u.amax(-1, keepdim=True)
    eu = (u - mu).exp()
    zu = eu.sum(-1, keepdim=True)
    mv = v.amax(-1, keepdim=True)
    ev = (v - mv).exp()
    zv = ev.sum(-1, keepdim=True)
    p_t = ev / zv
    kl_rows = (p_t * (v - u)).sum(-1) + (mu + zu.log() - mv - zv.log()).squeeze(-1)
    return kl_rows * temperature**2, (eu / zu - p_t) * temperature, t.argmax(-1)


_COMPILED: dict[str, object] = {}


def _compiled_forward_kl_terms():
    """`_forward_kl_terms` under torch.compile, built once (a failure shows at the first call: see `_chunk_terms`)."""
    if "forward_kl" not in _COMPILED:
        _COMPILED["forward_kl"] = torch.compile(_forward_kl_terms, dynamic=None)
    return _COMPILED["forward_kl"]


def _chunk_terms(student_flat: torch.Tensor, part: torch.Tensor, targets: torch.Tensor, wants_grad: bool, *,
                 teacher_flat: torch.Tensor, temperature: float, kind: str, beta: float, compiled: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(KD sum, its gradient with respect to s or None, the teacher's correct next tokens) of the logits' rows
    `part`, one chunk of positions.

    The two KL directions have closed-form gradients (T^2*KL(p_t||p_s): T*(p_s - p_t); T^2*KL(p_s||p_t):
    T*p_s*(log p_s - log p_t - KL)), computed here without an autograd graph, which saves a third of
    the passes over the chunk; jsd and mse go through autograd.
    """
    forward = kind == "kl" or (kind == "jsd" and beta == 0.0)
    if compiled and forward and _COMPILED.get("failed") is None:
        try:
            kl_rows, grad, top = _compiled_forward_kl_terms()(student_flat, teacher_flat, part, float(temperature))
        except Exception as e:  # no C++ compiler, an unsupported platform: the eager path gives the same values
            _COMPILED["failed"] = e
            warnings.warn(f"torch.compile of the token-level KD loss failed ({type(e).__name__}: {e}); using the "
                          "eager computation", RuntimeWarning, stacklevel=2)
        else:
            return kl_rows.sum(), grad if wants_grad else None, (top == targets).sum()
    s = student_flat.index_select(0, part).float()
    t = teacher_flat.index_select(0, part).float()
    correct = (t.argmax(-1) == targets).sum()
    if kind in ("jsd", "mse") and not (kind == "jsd" and beta in (0.0, 1.0)):
        kd, grad = autograd_chunk_kd(s, wants_grad, lambda s: kd_per_row(s, t, temperature, kind, beta).sum())
        return kd, grad, correct
    kd, grad = _kl_terms(s, t, temperature, reverse=not forward, wants_grad=wants_grad)
    return kd, grad, correct


def autograd_chunk_kd(s: torch.Tensor, wants_grad: bool, kd_sum: Callable[[torch.Tensor], torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(KD sum, its gradient with respect to s or None) of a chunk's float32 student logits `s`, the gradient by a
    local autograd pass over the chunk alone; `kd_sum(s)` is the chunk's summed KD term."""
    with torch.enable_grad():
        s = s.requires_grad_(wants_grad)
        kd = kd_sum(s)
        grad = torch.autograd.grad(kd, s)[0] if wants_grad else None
    return kd.detach(), grad


def _kl_terms(s, t, temperature, *, reverse: bool, wants_grad: bool):
    """(KD sum, its gradient or None) of the two KL directions, eager, on gathered (positions, vocab) logits."""
    log_ps = F.log_softmax(s if temperature == 1.0 else s / temperature, dim=-1)
    log_pt = F.log_softmax(t if temperature == 1.0 else t / temperature, dim=-1)
    # Row sums of products as batched dot products: no (positions, vocab) product is written.
    if reverse:
        ps = log_ps.exp()
        kl_rows = _row_dot(ps, log_ps) - _row_dot(ps, log_pt)
    else:
        pt = log_pt.exp()
        kl_rows = _row_dot(pt, log_pt) - _row_dot(pt, log_ps)
    kd = kl_rows.sum() * temperature**2
    if not wants_grad:
        return kd, None
    if reverse:  # T * p_s * (log p_s - log p_t - KL), in the memory of log p_s
        return kd, log_ps.sub_(log_pt).sub_(kl_rows[:, None]).mul_(ps).mul_(temperature)
    return kd, log_ps.exp_().sub_(pt).mul_(temperature)  # T * (p_s - p_t)


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class _ChunkedTokenKD(torch.autograd.Function):
    """(KD, teacher's correct next tokens) summed over labelled positions, one chunk of positions at a time.

    `chunk_terms(student_flat, part, targets, wants_grad)` gives one chunk's KD sum, its gradient and
    the teacher's correct next tokens (`_chunk_terms` against full teacher logits, `topk_losses`
    against a top-k teacher). Each chunk's gradient is computed in the forward pass (a local backward over that chunk alone)
    and written into one gradient buffer the size of the logits, which backward scales and returns.
    So beyond the logits, the teacher's logits and that buffer (the logits' gradient, which any
    backward allocates), only one chunk's (positions, vocab) probabilities exist at a time, and
    nothing is recomputed: each chunk runs forward and backward once.
    """

    @staticmethod
    def forward(ctx, student_flat, index, targets, chunk_terms, chunk_size):
        wants_grad = ctx.needs_input_grad[0]
        grad = None
        if wants_grad:  # every labelled row is written below; only the others need zeros
            grad = torch.empty_like(student_flat)
            unlabelled = torch.ones(student_flat.shape[0], dtype=torch.bool, device=grad.device)
            unlabelled[index] = False
            grad.index_fill_(0, unlabelled.nonzero().view(-1), 0.0)
        kd_sum = torch.zeros((), dtype=torch.float32, device=student_flat.device)
        correct = torch.zeros((), dtype=torch.long, device=student_flat.device)
        for start in range(0, index.numel(), chunk_size):
            part = index[start:start + chunk_size]
            kd, g, right = chunk_terms(student_flat, part, targets[start:start + chunk_size], wants_grad)
            correct += right  # the teacher's next-token accuracy, while the chunk is at hand
            if wants_grad:
                grad.index_copy_(0, part, g.to(grad.dtype))  # each position occurs once
            kd_sum += kd
        ctx.grad = grad
        ctx.mark_non_differentiable(correct)
        return kd_sum, correct

    @staticmethod
    def backward(ctx, grad_kd, grad_correct):
        grad, ctx.grad = ctx.grad, None
        return grad.mul_(grad_kd.to(grad.dtype)), None, None, None, None


def chunked_token_kd(student_logits: torch.Tensor, labels: torch.Tensor, chunk_terms, chunk_size: int) -> TokenKD:
    """`_ChunkedTokenKD` over the labelled positions of `labels` with one chunk's math `chunk_terms`."""
    index, targets = labelled_positions(labels)
    tokens = int(index.numel())
    if tokens == 0:
        raise NoLabelledTokensError(
            f"a batch of {labels.shape[0]} sequences has no labelled token (every label after the shift is -100): "
            "set labels to the input_ids (DataCollatorForLanguageModeling(tokenizer, mlm=False) does) and keep "
            "sequences of at least 2 tokens")
    student_flat = student_logits.reshape(-1, student_logits.shape[-1])
    total, correct = _ChunkedTokenKD.apply(student_flat, index, targets, chunk_terms, max(1, int(chunk_size)))
    return TokenKD(total, correct, tokens)


def token_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *, temperature: float,
             kind: str = "kl", beta: float = 0.5, chunk_size: int = 256, compiled: bool = False) -> TokenKD:
    """A causal LM's soft-label term, `T^2 * D(teacher, student)` summed over the positions that carry a label.

    student_logits and teacher_logits are (batch, seq, vocab); labels (batch, seq) as transformers'
    causal LMs take them (unshifted, -100 where no loss). The term is computed `chunk_size`
    positions at a time, with its gradient (`_ChunkedTokenKD`), so beyond the logits themselves
    (and their gradient) only one chunk's (positions, vocab) probabilities are alive. With
    `compiled`, the forward-KL chunk math runs under `torch.compile` (fused into a few passes; the
    same values).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; teachers and student must share the tokenizer "
                         "and read the same batch")
    teacher_flat = teacher_logits.reshape(-1, teacher_logits.shape[-1]).detach()
    terms = partial(_chunk_terms, teacher_flat=teacher_flat, temperature=float(temperature), kind=kind,
                    beta=float(beta), compiled=bool(compiled))
    return chunked_token_kd(student_logits, labels, terms, chunk_size)
