"""The label term of the objective: how much a representation says about the label, in bits.

Y is discrete, so the label information of a snapshot's outputs or features can be bounded from
below by how well Y can be predicted from them (the variational bound of Barber & Agakov 2003):
for any predictor q(y | r) computed from a representation R,

    I(Y;R) = H(Y) - H(Y|R) >= H(Y) - E[-log2 q(Y | R)]

with equality when q is the true posterior p(y | r). Two predictors are used:

- outputs P: q = softmax(s · log P), the snapshot's own probabilities recalibrated by one scale s
  fitted on the probe (the convex one-dimensional minimum of the cross-entropy; s = 1 keeps P as
  it is). How sharp P is at the distillation temperature is the input term's business; this term
  asks only what P says about Y, so a confident and an unconfident snapshot that rank the classes
  alike get the same label term;
- features F: a multinomial logistic regression on the standardised features, cross-fitted on two
  label-stratified halves of the probe (each half is scored by the model fitted on the other), its
  held-out logits recalibrated the same way. Held-out scoring keeps the bound honest: a model that
  memorises noise predicts the other half no better than the class frequencies, and scores 0.

Next-token labels (a causal LM's probe) have thousands of classes, most seen once or twice in a
probe, so a class of its own for every token cannot be fitted on one half and tested on the other.
For them the feature probe's halves are plain seeded random halves (stratifying next tokens
describes no text), and each fitted model gives a class of its own only to the tokens seen at least
twice in the half it is fitted on; all other tokens share one class, "a rarer token", whose
probability is spread evenly over the rest of the vocabulary:

    q(y | f) = softmax(s · z(f))[y]                       for a token with its own class
    q(y | f) = softmax(s · z(f))[rarer] / (V - m)         for each of the V - m others

which is a distribution over the whole vocabulary fitted on the other half only, so the bound
stays honest (each half is recalibrated with its own scale s; the uniform distribution over the
vocabulary is always available, so the cross-entropy is at most log2 V). The outputs' term needs
nothing of the kind: P is already a distribution over the vocabulary.

H(Y) is the Shannon entropy of the probe's label frequencies. The normalised term is
Ĩ(Y;R) = max(0, bound) / H(Y) in [0, 1]: the share of the label entropy the representation
recovers. Unlike the kernel estimate it replaces, it moves with accuracy (a 10-class predictor at
79 % keeps about 0.6 of H(Y), one at 99 % about 0.97) and needs no rescaling over candidates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG2E = 1.0 / math.log(2.0)
# The recalibration scale s is searched on log s in [2^-12, 2^12] (golden section; the cross-entropy
# is convex in s, hence unimodal in log s). 40 steps narrow log s to 1e-7, and the cross-entropy is
# flat to second order at its minimum, so more steps change it by less than 1e-12: each step is a
# pass over N × C scores, which for a causal LM's vocabulary is the cost of the whole term.
_LOG_SCALE_RANGE = (-12 * math.log(2.0), 12 * math.log(2.0))
_GOLDEN_STEPS = 40
PROBE_L2 = 1e-3          # ridge penalty of the cross-fitted feature probe (on standardised features)
PROBE_MAX_ITER = 200


def shannon_entropy_bits(labels: Tensor) -> float:
    """H(Y) in bits of the empirical label distribution."""
    counts = torch.bincount(labels.reshape(-1).cpu()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())


class _ScaledCrossEntropy:
    """s ↦ mean cross-entropy of softmax(s · scores) in nats: mean_i logsumexp(s · z_i) - s · mean_i z_i[y_i]
    (the labels' scores are gathered once; each call is one logsumexp over the N × C scores)."""

    def __init__(self, scores: Tensor, labels: Tensor):
        self.scores = scores
        self.target = float(scores.gather(1, labels.reshape(-1, 1)).mean())

    def __call__(self, scale: float) -> float:
        return float(torch.logsumexp(self.scores * scale, dim=1).mean()) - scale * self.target


def calibrated_cross_entropy_bits(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """min over s > 0 of the mean cross-entropy of softmax(s · scores) in bits, and the minimising s.

    `scores` are N × C log-probabilities or logits (float64 is used); the minimum is at most
    log2 C (s → 0 gives the uniform predictor).
    """
    scores = scores.detach().double()
    cross_entropy = _ScaledCrossEntropy(scores, labels.reshape(-1).to(scores.device))
    lo, hi = _LOG_SCALE_RANGE
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = cross_entropy(math.exp(a)), cross_entropy(math.exp(b))
    for _ in range(_GOLDEN_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = cross_entropy(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = cross_entropy(math.exp(b))
    log_s = (lo + hi) / 2
    ce = cross_entropy(math.exp(log_s))
    uniform = math.log(scores.shape[1])
    if ce >= uniform - 1e-12:  # no scale beats s → 0, the uniform predictor
        return uniform * LOG2E, 0.0
    return ce * LOG2E, math.exp(log_s)


def outputs_label_bits(probs: Tensor, labels: Tensor) -> float:
    """H(Y) - min_s CE(softmax(s · log P)) in bits: a lower bound on I(Y;P) (may be negative)."""
    log_p = probs.detach().double().clamp(min=1e-300).log()
    ce, _ = calibrated_cross_entropy_bits(log_p, labels)
    return shannon_entropy_bits(labels) - ce


def predictive_label_bits(logits: Tensor, labels: Tensor) -> float:
    """H(Y) - CE(softmax(logits)) in bits: the bound with q = the outputs as they are (may be negative).

    The same variational bound as `outputs_label_bits` with the snapshot's own probabilities at
    T = 1 as the predictor, not recalibrated. Recalibration (the fitted scale s) divides out exactly
    what marks a memorising teacher: outputs that have become near one-hot, confident where they are
    wrong, so that the held-out cross-entropy rises while the ranking of the classes (and the
    accuracy) barely moves. On held-out data this term falls as that happens; on the data the
    snapshot was trained on it would not, so the probe must be held out (the pipeline's probe is
    the validation split). A bound below zero means the outputs predict held-out labels worse than
    the class frequencies do; it is kept as it is, so that such snapshots still rank among themselves.
    """
    z = logits.detach().double()
    y = labels.reshape(-1).to(z.device)
    cross_entropy = float(torch.nn.functional.cross_entropy(z, y)) * LOG2E
    return shannon_entropy_bits(y) - cross_entropy


def two_fold_split(labels: Tensor, seed: int) -> Tensor:
    """A bool mask of the first fold: every class split in two alternating halves of a seeded shuffle."""
    labels = labels.reshape(-1).cpu()
    g = torch.Generator().manual_seed(seed)
    fold = torch.zeros(labels.numel(), dtype=torch.bool)
    for c in torch.unique(labels):
        members = torch.nonzero(labels == c).flatten()
        members = members[torch.randperm(members.numel(), generator=g)]
        fold[members[0::2]] = True
    return fold


def _fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float) -> tuple[Tensor, Tensor]:
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=PROBE_MAX_ITER, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()


def features_label_bits(features: Tensor, labels: Tensor, *, seed: int = 0, l2: float = PROBE_L2,
                        num_classes: int | None = None) -> float:
    """H(Y) - CE of a cross-fitted, recalibrated logistic regression on F, in bits (a lower bound on I(Y;F)).

    Every class needs at least two examples (one per half); callers check that first.
    """
    x = features.detach().reshape(features.shape[0], -1).double()
    y = labels.reshape(-1).to(x.device)
    num_classes = int(num_classes if num_classes is not None else int(y.max()) + 1)
    fold = two_fold_split(y, seed).to(x.device)
    held_out = torch.empty(x.shape[0], num_classes, dtype=x.dtype, device=x.device)
    with torch.inference_mode(False):
        for part in (fold, ~fold):
            train = ~part
            mean = x[train].mean(dim=0)
            std = x[train].std(dim=0, unbiased=False).clamp(min=1e-8)
            # Standardised in float64 (exact invariance to scale and shift), fitted in float32 (twice as fast).
            w, b = _fit_logistic(((x[train] - mean) / std).float(), y[train].clone(), num_classes, l2)
            held_out[part] = ((x[part] - mean) / std) @ w.double() + b.double()
    ce, _ = calibrated_cross_entropy_bits(held_out, y)
    return shannon_entropy_bits(y) - ce


def random_halves(n: int, seed: int) -> Tensor:
    """A bool mask of the first fold: a seeded random half of n examples (no stratification)."""
    fold = torch.zeros(n, dtype=torch.bool)
    fold[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: (n + 1) // 2]] = True
    return fold


OWN_CLASS_MIN_COUNT = 2  # next tokens seen at least this often in the fitting half get a class of their own


def token_features_label_bits(features: Tensor, labels: Tensor, vocabulary: int, *, seed: int = 0,
                              l2: float = PROBE_L2) -> float:
    """H(Y) - CE of a cross-fitted logistic regression on F over next tokens, rare tokens pooled (see the
    module docstring), in bits: a lower bound on I(Y;F) for labels over a vocabulary of `vocabulary` tokens."""
    x = features.detach().reshape(features.shape[0], -1).double()
    y = labels.reshape(-1).to(x.device)
    n = y.numel()
    fold = random_halves(n, seed).to(x.device)
    total_bits = 0.0
    with torch.inference_mode(False):
        for part in (fold, ~fold):
            train, n_part = ~part, int(part.sum())
            if n_part == 0:
                continue
            own = torch.nonzero(torch.bincount(y[train], minlength=vocabulary) >= OWN_CLASS_MIN_COUNT).flatten()
            m = own.numel()
            code = torch.full((vocabulary,), m, dtype=torch.long, device=x.device)  # m: "a rarer token"
            code[own] = torch.arange(m, device=x.device)
            target = code[y[part]]
            bits = 0.0
            if m > 0:
                mean = x[train].mean(dim=0)
                std = x[train].std(dim=0, unbiased=False).clamp(min=1e-8)
                w, b = _fit_logistic(((x[train] - mean) / std).float(), code[y[train]].clone(), m + 1, l2)
                held_out = ((x[part] - mean) / std) @ w.double() + b.double()
                ce, _ = calibrated_cross_entropy_bits(held_out, target)
                bits = ce * n_part
            if vocabulary > m:  # a rarer token: its share of the pooled class
                bits += float((target == m).sum()) * math.log2(vocabulary - m)
            total_bits += min(bits, n_part * math.log2(vocabulary))
    return shannon_entropy_bits(y) - total_bits / n


def normalised(bits: float, entropy_y: float) -> float:
    """max(0, bits) / H(Y), clipped to [0, 1]."""
    return min(1.0, max(0.0, bits) / entropy_y) if entropy_y > 0 else 0.0


__all__ = ["calibrated_cross_entropy_bits", "features_label_bits", "normalised", "outputs_label_bits",
           "predictive_label_bits",
           "random_halves", "shannon_entropy_bits", "token_features_label_bits", "two_fold_split"]
