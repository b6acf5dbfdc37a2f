"""Losses a user brings to their own Trainer, for the tests (and test scripts) that distil with them.

Each is a `Trainer(compute_loss_func=...)` in transformers' convention: it receives the model's
outputs, the labels and `num_items_in_batch` (Trainer's count of labelled items over the whole
optimizer step and every process) and, when that count is given, divides its sum by it.
"""

import torch
import torch.nn.functional as F

CLASS_WEIGHTS = torch.linspace(0.2, 2.0, 10)  # a classifier's 10 classes weighed unequally


def class_weighted_loss(outputs, labels, num_items_in_batch=None):
    """Class-weighted cross-entropy of a 10-class classifier."""
    weights = CLASS_WEIGHTS.to(outputs.logits.device)
    total = F.cross_entropy(outputs.logits.float(), labels, weight=weights, reduction="sum")
    return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


def smoothed_token_loss(outputs, labels, num_items_in_batch=None):
    """A causal LM's next-token cross-entropy with label smoothing 0.1 (position i predicts label i+1)."""
    logits = outputs.logits[:, :-1].flatten(0, 1).float()
    targets = labels[:, 1:].flatten().to(logits.device)
    total = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum", label_smoothing=0.1)
    return total / (num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum())


USER_LOSSES = {"model": None, "class_weighted": class_weighted_loss, "smoothed_tokens": smoothed_token_loss}
