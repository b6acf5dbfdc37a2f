"""Distillation losses: the paper's `alpha*CE + (1-alpha)*T^2*KL(teacher || student)` and variants.

`kd_per_row` is the one definition of every soft-label term, per row of (rows, classes) logits.
Classifiers (`distillation_loss`) take its batch mean, so the loss of a micro-batch does not depend
on its size and Trainer averages it under gradient accumulation and several processes as it does
any mean loss. Causal LMs (`token_distillation_loss`) sum it over the positions that carry a label
and divide by the number of labelled tokens Trainer counted over the whole optimizer step
(`num_items_in_batch`), so long and short micro-batches weigh by their tokens.
`topk_losses` builds the same loss against a teacher kept as its top-k tokens per position on
`chunked_token_loss` and `autograd_chunk_terms`.
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
    ce_sum: torch.Tensor           # the student's next-token CE summed over this batch's labelled tokens (no grad)
    kd_sum: torch.Tensor           # the KD term summed the same way (no grad)
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


def _forward_kl_terms(student_flat: torch.Tensor, teacher_flat: torch.Tensor, part: torch.Tensor, alpha: float,
                      temperature: float):
    """(logsumexp of s, T^2 * KL(p_t || p_s) per row, d(alpha*CE + (1-alpha)*T^2*KL)/ds without the one-hot
    part, the teacher's top token) of the rows `part` of the logits.

    Written with softmax from its parts (max, exp, sum) so that `torch.compile` fuses it, the rows'
    gather included, into a few passes over the chunk; KL(p_t || p_s) = sum p_t * (v - u) + lse(u) -
    lse(v) for u = s/T, v = t/T.
    """
    s = student_flat[part].float()
    t = teacher_flat[part].float()
    m = s.amax(-1, keepdim=True)
    e = (s - m).exp()
    z = e.sum(-1, keepdim=True)
    lse_s = m + z.log()
    p_s = e / z
    u, v = (s, t) if temperature == 1.0 else (s / temperature, t / temperature)
    mv = v.amax(-1, keepdim=True)
    ev = (v - mv).exp()
    zv = ev.sum(-1, keepdim=True)
    p_t = ev / zv
    if temperature == 1.0:
        p_u, lse_u = p_s, lse_s
    else:
        mu = u.amax(-1, keepdim=True)
        eu = (u - mu).exp()
        zu = eu.sum(-1, keepdim=True)
        p_u, lse_u = eu / zu, mu + zu.log()
    kl_rows = (p_t * (v - u)).sum(-1) + (lse_u - mv - zv.log()).squeeze(-1)
    grad = alpha * p_s + ((1 - alpha) * temperature) * (p_u - p_t)
    return lse_s.squeeze(-1), kl_rows * temperature**2, grad, t.argmax(-1)


_COMPILED: dict[str, object] = {}


def _compiled_forward_kl_terms():
    """`_forward_kl_terms` under torch.compile, built once (a failure shows at the first call: see `_chunk_terms`)."""
    if "forward_kl" not in _COMPILED:
        _COMPILED["forward_kl"] = torch.compile(_forward_kl_terms, dynamic=None)
    return _COMPILED["forward_kl"]


def _chunk_terms(student_flat: torch.Tensor, part: torch.Tensor, targets: torch.Tensor, wants_grad: bool, *,
                 teacher_flat: torch.Tensor, alpha: float, temperature: float, kind: str, beta: float,
                 compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(CE sum, KD sum, d(alpha*CE + (1-alpha)*KD)/ds or None, the teacher's correct next tokens) of the
    logits' rows `part`, one chunk of positions.

    The two KL directions have closed-form gradients (CE: softmax(s) - onehot; T^2*KL(p_t||p_s):
    T*(p_s - p_t); T^2*KL(p_s||p_t): T*p_s*(log p_s - log p_t - KL)), computed here without an
    autograd graph, which saves a third of the passes over the chunk; jsd and mse go through autograd.
    """
    forward = kind == "kl" or (kind == "jsd" and beta == 0.0)
    if compiled and forward and _COMPILED.get("failed") is None:
        try:
            lse_s, kl_rows, grad, top = _compiled_forward_kl_terms()(student_flat, teacher_flat, part, float(alpha),
                                                                     float(temperature))
        except Exception as e:  # no C++ compiler, an unsupported platform: the eager path gives the same values
            _COMPILED["failed"] = e
            warnings.warn(f"torch.compile of the token-level KD loss failed ({type(e).__name__}: {e}); using the "
                          "eager computation", RuntimeWarning, stacklevel=2)
        else:
            ce = (lse_s - student_flat[part, targets].float()).sum()
            grad.scatter_add_(1, targets[:, None], torch.full((targets.numel(), 1), -alpha, dtype=grad.dtype,
                                                               device=grad.device))
            return ce, kl_rows.sum(), grad if wants_grad else None, (top == targets).sum()
    s = student_flat.index_select(0, part).float()
    t = teacher_flat.index_select(0, part).float()
    correct = (t.argmax(-1) == targets).sum()
    if kind in ("jsd", "mse") and not (kind == "jsd" and beta in (0.0, 1.0)):
        ce, kd, grad = autograd_chunk_terms(s, targets, alpha, wants_grad,
                                            lambda s: kd_per_row(s, t, temperature, kind, beta).sum())
        return ce, kd, grad, correct
    ce, kd, grad = _kl_terms(s, t, targets, alpha, temperature, reverse=not forward, wants_grad=wants_grad)
    return ce, kd, grad, correct


def autograd_chunk_terms(s: torch.Tensor, targets: torch.Tensor, alpha: float, wants_grad: bool,
                         kd_sum: Callable[[torch.Tensor], torch.Tensor]):
    """(CE sum, KD sum, d(alpha*CE + (1-alpha)*KD)/ds or None) of a chunk's float32 student logits `s`, the
    gradient by a local autograd pass over the chunk alone; `kd_sum(s)` is the chunk's summed KD term."""
    with torch.enable_grad():
        s = s.requires_grad_(wants_grad)
        ce = F.cross_entropy(s, targets, reduction="sum")
        kd = kd_sum(s)
        grad = torch.autograd.grad(alpha * ce + (1 - alpha) * kd, s)[0] if wants_grad else None
    return ce.detach(), kd.detach(), grad


def _kl_terms(s, t, targets, alpha, temperature, *, reverse: bool, wants_grad: bool):
    """`_chunk_terms` of the two KL directions, eager, on gathered (positions, vocab) logits."""
    log_ps = F.log_softmax(s, dim=-1)
    ce = -log_ps.gather(1, targets[:, None]).sum()
    log_ps_t = log_ps if temperature == 1.0 else F.log_softmax(s / temperature, dim=-1)
    log_pt_t = F.log_softmax(t if temperature == 1.0 else t / temperature, dim=-1)
    # Row sums of products as batched dot products: no (positions, vocab) product is written.
    if reverse:
        ps_t = log_ps_t.exp()
        kl_rows = _row_dot(ps_t, log_ps_t) - _row_dot(ps_t, log_pt_t)
    else:
        pt_t = log_pt_t.exp()
        kl_rows = _row_dot(pt_t, log_pt_t) - _row_dot(pt_t, log_ps_t)
    kd = kl_rows.sum() * temperature**2
    if not wants_grad:
        return ce, kd, None
    if reverse:  # T * p_s * (log p_s - log p_t - KL), in the memory of log p_s - log p_t
        kd_grad = log_ps_t.sub(log_pt_t).sub_(kl_rows[:, None]).mul_(ps_t).mul_(temperature)
        grad = (ps_t if temperature == 1.0 else log_ps.exp()).mul_(alpha).add_(kd_grad, alpha=1 - alpha)
    elif temperature == 1.0:  # alpha*(p_s - onehot) + (1-alpha)*(p_s - p_t) = p_s - (1-alpha)*p_t - alpha*onehot
        grad = log_ps.exp_().sub_(pt_t, alpha=1 - alpha)
    else:
        kd_grad = log_ps_t.exp().sub_(pt_t).mul_(temperature * (1 - alpha))
        grad = log_ps.exp_().mul_(alpha).add_(kd_grad)
    grad.scatter_add_(1, targets[:, None], torch.full((targets.numel(), 1), -alpha, dtype=grad.dtype,
                                                       device=grad.device))
    return ce, kd, grad


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class _ChunkedTokenTerms(torch.autograd.Function):
    """(alpha*CE + (1-alpha)*KD, CE, KD, teacher's correct next tokens) summed over labelled positions, one
    chunk of positions at a time.

    `chunk_terms(student_flat, part, targets, wants_grad)` gives one chunk's sums and its gradient
    (`_chunk_terms` against full teacher logits, `topk_losses` against a top-k teacher). Each
    chunk's gradient is computed in the forward pass (a local backward over that chunk alone)
    and written into one gradient buffer the size of the logits, which backward scales and returns.
    So beyond the logits, the teacher's logits and that buffer (the logits' gradient, which any
    backward allocates), only one chunk's (positions, vocab) probabilities exist at a time, and
    nothing is recomputed: each chunk runs forward and backward once.
    """

    @staticmethod
    def forward(ctx, student_flat, index, targets, alpha, chunk_terms, chunk_size):
        wants_grad = ctx.needs_input_grad[0]
        grad = None
        if wants_grad:  # every labelled row is written below; only the others need zeros
            grad = torch.empty_like(student_flat)
            unlabelled = torch.ones(student_flat.shape[0], dtype=torch.bool, device=grad.device)
            unlabelled[index] = False
            grad.index_fill_(0, unlabelled.nonzero().view(-1), 0.0)
        ce_sum = torch.zeros((), dtype=torch.float32, device=student_flat.device)
        kd_sum = torch.zeros((), dtype=torch.float32, device=student_flat.device)
        correct = torch.zeros((), dtype=torch.long, device=student_flat.device)
        for start in range(0, index.numel(), chunk_size):
            part = index[start:start + chunk_size]
            ce, kd, g, right = chunk_terms(student_flat, part, targets[start:start + chunk_size], wants_grad)
            correct += right  # the teacher's next-token accuracy, while the chunk is at hand
            if wants_grad:
                grad.index_copy_(0, part, g.to(grad.dtype))  # each position occurs once
            ce_sum += ce
            kd_sum += kd
        ctx.grad = grad
        ctx.mark_non_differentiable(ce_sum, kd_sum, correct)
        return alpha * ce_sum + (1 - alpha) * kd_sum, ce_sum, kd_sum, correct

    @staticmethod
    def backward(ctx, grad_total, grad_ce, grad_kd, grad_correct):
        grad, ctx.grad = ctx.grad, None
        return grad.mul_(grad_total.to(grad.dtype)), None, None, None, None, None


def chunked_token_loss(student_logits: torch.Tensor, labels: torch.Tensor, alpha: float, chunk_terms, chunk_size: int,
                       num_items_in_batch: int | torch.Tensor | None) -> TokenDistillation:
    """`_ChunkedTokenTerms` over the labelled positions of `labels`, divided by the step's labelled tokens."""
    index, targets = labelled_positions(labels)
    tokens = int(index.numel())
    if tokens == 0:
        raise NoLabelledTokensError(
            f"a batch of {labels.shape[0]} sequences has no labelled token (every label after the shift is -100): "
            "set labels to the input_ids (DataCollatorForLanguageModeling(tokenizer, mlm=False) does) and keep "
            "sequences of at least 2 tokens")
    student_flat = student_logits.reshape(-1, student_logits.shape[-1])
    total, ce_sum, kd_sum, correct = _ChunkedTokenTerms.apply(student_flat, index, targets, float(alpha), chunk_terms,
                                                              max(1, int(chunk_size)))
    normaliser = num_items_in_batch if num_items_in_batch is not None else tokens
    if torch.is_tensor(normaliser):
        normaliser = normaliser.to(ce_sum.device)
    return TokenDistillation(total / normaliser, ce_sum, kd_sum, correct, tokens)


def token_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                            alpha: float, temperature: float, kind: str = "kl", beta: float = 0.5,
                            num_items_in_batch: int | torch.Tensor | None = None,
                            chunk_size: int = 256, compiled: bool = False) -> TokenDistillation:
    """Token-level distillation of a causal LM over the positions that carry a label.

    student_logits and teacher_logits are (batch, seq, vocab); labels (batch, seq) as transformers'
    causal LMs take them (unshifted, -100 where no loss). The loss is
    `(alpha * sum CE + (1-alpha) * sum KD) / N` with N = `num_items_in_batch` (Trainer's count of
    labelled tokens over every micro-batch of the optimizer step, and over processes) or, when not
    given, this batch's labelled tokens. Both terms are computed `chunk_size` positions at a time,
    with their gradient (`_ChunkedTokenTerms`), so beyond the logits themselves (and their
    gradient) only one chunk's (positions, vocab) probabilities are alive. With `compiled`, the
    forward-KL chunk math runs under `torch.compile` (fused into a few passes; the same values).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; teachers and student must share the tokenizer "
                         "and read the same batch")
    teacher_flat = teacher_logits.reshape(-1, teacher_logits.shape[-1]).detach()
    terms = partial(_chunk_terms, teacher_flat=teacher_flat, alpha=float(alpha), temperature=float(temperature),
                    kind=kind, beta=float(beta), compiled=bool(compiled))
    return chunked_token_loss(student_logits, labels, alpha, terms, chunk_size, num_items_in_batch)
