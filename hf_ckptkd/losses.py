"""Distillation losses: the paper's `alpha*CE + (1-alpha)*T^2*KL(teacher || student)` and variants.

All reductions are batch means, so the loss of a micro-batch does not depend on its size and
gradient accumulation / several processes average it as `Trainer` does for any mean loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import KD_LOSSES


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, kind: str = "kl") -> torch.Tensor:
    """The soft-label term, already multiplied by T^2 for the KL kinds (so its gradients keep their scale).

    kl: KL(softmax(t/T) || softmax(s/T)); reverse_kl: KL(softmax(s/T) || softmax(t/T));
    mse: mean squared error between the raw logits (no temperature).
    """
    teacher_logits = teacher_logits.to(student_logits.dtype)
    if kind == "mse":
        return F.mse_loss(student_logits, teacher_logits)
    s = F.log_softmax(student_logits / temperature, dim=-1)
    t = F.log_softmax(teacher_logits / temperature, dim=-1)
    if kind == "kl":
        kl = F.kl_div(s, t, reduction="batchmean", log_target=True)
    elif kind == "reverse_kl":
        kl = F.kl_div(t, s, reduction="batchmean", log_target=True)
    else:
        raise ValueError(f"unknown kd_loss {kind!r}; use one of {', '.join(KD_LOSSES)}")
    return kl * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, *,
                      alpha: float, temperature: float, kind: str = "kl") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, loss_ce, loss_kd) with loss = alpha * loss_ce + (1 - alpha) * loss_kd.

    Without labels the hard-label term is zero and only the soft labels teach.
    """
    loss_kd = kd_term(student_logits, teacher_logits, temperature, kind)
    if labels is None:
        loss_ce = torch.zeros((), device=student_logits.device, dtype=loss_kd.dtype)
        return loss_kd, loss_ce, loss_kd
    loss_ce = F.cross_entropy(student_logits, labels)
    return alpha * loss_ce + (1 - alpha) * loss_kd, loss_ce, loss_kd
