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
probe: their H(Y) and their feature term are those of `token_information`, built from the same
pieces (`outputs_cross_entropy_bits`, `features_cross_entropy_bits`).

For classifiers, H(Y) is the Shannon entropy of the probe's label frequencies (`ClassLabelTerms`).
The normalised term is Ĩ(Y;R) = max(0, bound) / H(Y) in [0, 1]: the share of the label entropy the
representation recovers. Unlike the kernel estimate it replaces, it moves with accuracy (a 10-class predictor at
79 % keeps about 0.6 of H(Y), one at 99 % about 0.97) and needs no rescaling over candidates.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

LOG2E = 1.0 / math.log(2.0)
# The recalibration scale s is found by Newton's method, safeguarded by bisection, on [0, 2^12]: the
# cross-entropy is convex in s, and each step costs a few passes over the N × C scores (for a causal
# LM's vocabulary, the cost of the whole term), so the 6 to 10 steps it takes to reach the minimum to
# float64 precision cost a third of what 40 golden-section steps to 1e-7 cost.
_MAX_SCALE = 2.0 ** 12
_MIN_BISECTION_SCALE = 2.0 ** -12
_NEWTON_STEPS = 60
_GOLDEN_STEPS = 40
_CHUNK_ELEMENTS = 1 << 22  # scores per pass held at once: a few such float64 blocks, whatever N × C is
PROBE_L2 = 1e-3          # ridge penalty of the cross-fitted feature probe (on standardised features)
PROBE_MAX_ITER = 200


def shannon_entropy_bits(labels: Tensor) -> float:
    """H(Y) in bits of the empirical label distribution."""
    counts = torch.bincount(labels.reshape(-1).cpu()).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * torch.log2(p)).sum())


class _ScaledCrossEntropy:
    """s ↦ the mean cross-entropy of softmax(s · scores) in nats with its first two derivatives in s:
    CE(s) = mean_i logsumexp(s · z_i) - s · z_i[y_i], CE'(s) = mean_i E[z_i] - z_i[y_i] and
    CE''(s) = mean_i Var[z_i] >= 0 (moments under softmax(s · z_i)), computed over blocks of rows."""

    def __init__(self, scores: Tensor, labels: Tensor):
        self.scores = scores
        self.target = scores.gather(1, labels.reshape(-1, 1)).flatten()
        self.rows = max(1, _CHUNK_ELEMENTS // max(1, scores.shape[1]))

    def __call__(self, scale: float) -> tuple[float, float, float]:
        ce = grad = curvature = 0.0
        for a in range(0, self.scores.shape[0], self.rows):
            z = self.scores[a:a + self.rows]
            scaled = z * scale
            lse = torch.logsumexp(scaled, dim=1, keepdim=True)
            p = scaled.sub_(lse).exp_()
            mean = (p * z).sum(dim=1)
            second = p.mul_(z).mul_(z).sum(dim=1)
            target = self.target[a:a + self.rows]
            ce += float((lse.flatten() - scale * target).sum())
            grad += float((mean - target).sum())
            curvature += float((second - mean * mean).clamp(min=0).sum())
        n = self.scores.shape[0]
        return ce / n, grad / n, curvature / n

    def log_likelihoods(self, scale: float) -> Tensor:
        """log softmax(s · z_i)[y_i] of every row, in nats."""
        return torch.cat([scale * self.target[a:a + self.rows]
                          - torch.logsumexp(self.scores[a:a + self.rows] * scale, dim=1)
                          for a in range(0, self.scores.shape[0], self.rows)])

    def minimising_scale(self) -> float:
        """The s in [0, 2^12] of the smallest CE(s): 0 when no s > 0 beats the uniform predictor."""
        if float((self.scores.mean(dim=1) - self.target).mean()) >= 0:  # CE'(0) >= 0: s → 0 is best
            return 0.0
        lo, hi, s = 0.0, _MAX_SCALE, 1.0
        for _ in range(_NEWTON_STEPS):
            _, grad, curvature = self(s)
            if grad > 0:
                hi = s
            else:
                lo = s
            # Convex: CE(s) - min CE <= |CE'(s)| · (hi - lo), so s is as good as the minimum to 1e-12 nats.
            if abs(grad) * (hi - lo) <= 1e-12:
                return s
            step = s - grad / curvature if curvature > 0 else math.inf
            new = step if lo < step < hi else math.sqrt(max(lo, _MIN_BISECTION_SCALE) * hi)  # bisect in log s
            if abs(new - s) <= 1e-12 * s:
                return new
            s = new
        return s


def golden_section_minimum(f, lo: float, hi: float, steps: int = _GOLDEN_STEPS) -> float:
    """The argument in [lo, hi] where a unimodal f is smallest (golden-section search, `steps` narrowings)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    for _ in range(steps):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return (lo + hi) / 2


def calibrated_log_likelihoods(scores: Tensor, labels: Tensor) -> tuple[Tensor, float]:
    """log q(y_i) in nats of every row under q = softmax(s · scores) at the s > 0 of the smallest mean
    cross-entropy, and that s (0 when the uniform predictor, s → 0, is best: then -log C for each row).

    `scores` are N × C log-probabilities or logits (float64 is used).
    """
    scores = scores.detach().double()
    cross_entropy = _ScaledCrossEntropy(scores, labels.reshape(-1).to(scores.device))
    scale = cross_entropy.minimising_scale()
    if scale == 0.0:
        return torch.full((scores.shape[0],), -math.log(scores.shape[1]), dtype=scores.dtype,
                          device=scores.device), 0.0
    return cross_entropy.log_likelihoods(scale), scale


def calibrated_cross_entropy_bits(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """min over s > 0 of the mean cross-entropy of softmax(s · scores) in bits, and the minimising s.

    `scores` are N × C log-probabilities or logits (float64 is used); the minimum is at most
    log2 C (s → 0 gives the uniform predictor).
    """
    log_q, scale = calibrated_log_likelihoods(scores, labels)
    return min(-float(log_q.mean()), math.log(scores.shape[1])) * LOG2E, scale


def outputs_log_likelihoods(probs: Tensor, labels: Tensor) -> Tensor:
    """log q(y_i) in nats of every row under the recalibrated outputs q = softmax(s · log P)."""
    return calibrated_log_likelihoods(probs.detach().double().clamp(min=1e-300).log(), labels)[0]


def outputs_cross_entropy_bits(probs: Tensor, labels: Tensor) -> float:
    """min_s CE(softmax(s · log P)) in bits: the cross-entropy of the recalibrated outputs on the labels."""
    return -float(outputs_log_likelihoods(probs, labels).mean()) * LOG2E


def outputs_label_bits(probs: Tensor, labels: Tensor) -> float:
    """H(Y) - min_s CE(softmax(s · log P)) in bits: a lower bound on I(Y;P) (may be negative)."""
    return shannon_entropy_bits(labels) - outputs_cross_entropy_bits(probs, labels)


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


def _fit_logistic(x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int) -> tuple[Tensor, Tensor]:
    w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, device=x.device)
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    optimizer = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-6, tolerance_change=1e-9)
    one_hot = torch.nn.functional.one_hot(y, num_classes).to(x.dtype)

    def closure():
        # The gradient of the mean cross-entropy written out (softmax minus one-hot): a fit is a few hundred
        # evaluations of a small problem, for which autograd's bookkeeping cost more than the arithmetic.
        log_p = torch.log_softmax(x @ w + b, dim=1)
        residual = (log_p.exp() - one_hot) / x.shape[0]
        w.grad = x.T @ residual + l2 * w
        b.grad = residual.sum(dim=0)
        return float(-(log_p * one_hot).sum() / x.shape[0] + 0.5 * l2 * (w * w).sum())

    optimizer.step(closure)
    return w, b


def features_log_likelihoods(features: Tensor, labels: Tensor, *, seed: int = 0, l2: float = PROBE_L2,
                              num_classes: int | None = None, max_iter: int = PROBE_MAX_ITER) -> Tensor:
    """log q(y_i | f_i) in nats of every example under a cross-fitted, recalibrated logistic regression
    on F (ridge `l2`, at most `max_iter` L-BFGS steps): each label-stratified half of the probe scored
    by the model fitted on the other half."""
    x = features.detach().reshape(features.shape[0], -1).double()
    y = labels.reshape(-1).to(x.device)
    num_classes = int(num_classes if num_classes is not None else int(y.max()) + 1)
    fold = two_fold_split(y, seed).to(x.device)
    held_out = torch.empty(x.shape[0], num_classes, dtype=x.dtype, device=x.device)
    for part in (fold, ~fold):
        train = ~part
        mean = x[train].mean(dim=0)
        std = x[train].std(dim=0, unbiased=False).clamp(min=1e-8)
        # Standardised in float64 (exact invariance to scale and shift), fitted in float32 (twice as fast).
        w, b = _fit_logistic(((x[train] - mean) / std).float(), y[train], num_classes, l2, max_iter)
        held_out[part] = ((x[part] - mean) / std) @ w.double() + b.double()
    return calibrated_log_likelihoods(held_out, y)[0]


def features_cross_entropy_bits(features: Tensor, labels: Tensor, *, seed: int = 0, l2: float = PROBE_L2,
                                num_classes: int | None = None) -> float:
    """The cross-entropy in bits of the cross-fitted, recalibrated logistic regression on F."""
    return -float(features_log_likelihoods(features, labels, seed=seed, l2=l2, num_classes=num_classes).mean()) * LOG2E


def features_label_bits(features: Tensor, labels: Tensor, *, seed: int = 0, l2: float = PROBE_L2,
                        num_classes: int | None = None) -> float:
    """H(Y) - CE of a cross-fitted, recalibrated logistic regression on F, in bits (a lower bound on I(Y;F)).

    Every class needs at least two examples (one per half); callers check that first.
    """
    return shannon_entropy_bits(labels) - features_cross_entropy_bits(features, labels, seed=seed, l2=l2,
                                                                      num_classes=num_classes)


def normalised(bits: float, entropy_y: float) -> float:
    """max(0, bits) / H(Y), clipped to [0, 1]."""
    return min(1.0, max(0.0, bits) / entropy_y) if entropy_y > 0 else 0.0


class LabelTerms(Protocol):
    """What an estimator asks of its label terms: their unit H(Y) (`entropy_bits`, the report's
    `label_entropy_bits`), (bits, share of the unit) of a snapshot's outputs and features, and the
    bits of its outputs as they are (`predictive`: the unit minus the cross-entropy of softmax(logits),
    not recalibrated, may be negative)."""

    next_tokens: bool
    entropy_bits: float

    def outputs(self, probs: Tensor) -> tuple[float, float]: ...

    def features(self, features: Tensor) -> tuple[float, float]: ...

    def predictive(self, logits: Tensor) -> float: ...

    def options(self) -> dict: ...


class ClassLabelTerms:
    """The label terms of a classifier's probe: bounds on I(Y;P) and I(Y;F) as shares of the plug-in H(Y).

    `outputs(P)` and `features(F)` return (bits, share): the lower bound in bits and
    `normalised(bits, H(Y))`. `token_information.NextTokenLabelTerms` is the same for next tokens.
    """

    next_tokens = False

    def __init__(self, labels: Tensor, num_classes: int, seed: int = 0):
        self.labels, self.num_classes, self.seed = labels.reshape(-1), int(num_classes), int(seed)
        self.entropy_bits = shannon_entropy_bits(labels)

    def outputs(self, probs: Tensor) -> tuple[float, float]:
        bits = self.entropy_bits - outputs_cross_entropy_bits(probs, self.labels)
        return bits, normalised(bits, self.entropy_bits)

    def features(self, features: Tensor) -> tuple[float, float]:
        bits = self.entropy_bits - features_cross_entropy_bits(features, self.labels, seed=self.seed,
                                                               num_classes=self.num_classes)
        return bits, normalised(bits, self.entropy_bits)

    def predictive(self, logits: Tensor) -> float:
        return predictive_label_bits(logits, self.labels)

    def options(self) -> dict:
        return {}


__all__ = ["ClassLabelTerms", "LabelTerms", "calibrated_cross_entropy_bits", "calibrated_log_likelihoods",
           "features_cross_entropy_bits", "features_label_bits", "features_log_likelihoods", "golden_section_minimum",
           "normalised", "outputs_cross_entropy_bits", "outputs_label_bits", "outputs_log_likelihoods",
           "predictive_label_bits", "shannon_entropy_bits", "two_fold_split"]
