"""The label terms of a causal LM's probe, where Y is the next token: bits per token over a unigram baseline.

A vocabulary of thousands of tokens is larger than any probe, so the plug-in entropy of a probe's
next tokens (the classifiers' H(Y)) falls far below the entropy of the text: most tokens are seen
once, and a snapshot's bound H(Y) − CE stayed at zero until its perplexity fell below 2^H(Y). Both
terms here measure instead what a snapshot predicts beyond the frequencies of the tokens, that is
beyond a context-free (unigram) predictor estimated from the probe text itself:

- the unigram baseline q_u: the next-token counts c_v of the whole probe text (every real token of
  every row but its first: T tokens over a vocabulary of V), smoothed by a pseudo-count a, each
  probe position's own token left out of the counts that predict it:

      q_u(y_i) = (c_{y_i} − 1 + a) / (T − 1 + a · V)

  with a the pseudo-count that minimises this leave-one-out cross-entropy over the whole text.
  H_u(Y), the mean of −log2 q_u(y_i) over the probe positions, is the bits per token of the best
  such predictor on tokens it did not count, and stands where H(Y) stands for classifiers: it does
  not collapse however large the vocabulary, and estimates H(Y) from above.

- outputs: Ĩ(Y;P) = (H_u(Y) − CE_P) / H_u(Y), where CE_P is the cross-entropy in bits of the
  snapshot's own next-token distribution q_P = softmax(T · log P) (P softened at temperature T,
  so q_P is the softmax of its logits: CE_P is the log2 of its perplexity on the probe),
  interpolated with the baseline as LMs are smoothed:

      CE_P = min over λ in [0, 1] of mean_i −log2(λ · q_P(y_i) + (1 − λ) · q_u(y_i))

  λ = 0 is the baseline itself, so the term is never negative, and a snapshot that is right on
  some positions and confidently wrong on others keeps the bits of the former: an LM that knows
  every next token scores 1, one that knows only the token frequencies 0 (mixing it with the
  baseline adds nothing), one that knows less (at initialisation, say) 0 too. Unlike a
  classifier's outputs, P is not rescaled by a fitted s: the LM's own perplexity is what it
  teaches, an over-confident snapshot is meant to pay for its confidence here, and a fitted scale
  would cost several passes over the N × V probabilities for every snapshot.

- features: a logistic regression from F cannot be fitted over thousands of classes from a few
  hundred examples per half, so the feature term is restricted to the `top_tokens` (32) most
  frequent tokens of the probe text: Y_N is the next token when it is one of them and "another
  token" otherwise (N + 1 classes, each seen often enough to be fitted on one half and tested on
  the other). Ĩ(Y;F) = (H_u(Y_N) − CE_F) / H_u(Y_N), with CE_F the cross-fitted, recalibrated
  logistic regression of `label_information` on Y_N (with a stronger ridge than the classifiers',
  below), interpolated with the baseline as above, and
  H_u(Y_N) the same baseline summed over the classes of Y_N. Y_N is a function of Y, so this is a lower bound on I(Y;F) too; its share is that
  of the frequent-token information the features hold, not of all of H_u(Y).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import ClassCountMismatchError, SelectionError
from .label_information import (
    LOG2E,
    features_log_likelihoods,
    golden_section_minimum,
    normalised,
)

# The feature term's classes: the 32 most frequent tokens and "another token". A probe of 1,000
# positions of English text sees each of them about 8 times or more, enough for each half.
TOP_TOKENS = 32
# The feature term's logistic regression: a ridge 10 times the classifiers' and 50 L-BFGS steps. On two
# snapshots of benchmarks/lm_selection.py's teacher (500 positions a half, 33 classes, 128 features) it
# kept more held-out bits than the classifiers' 1e-3 (0.08 and 0.10 of H_u(Y_N) against 0.06 and 0.07),
# while features that give the next token away still reach 0.98 (a ridge of 0.1 kept 0.10 and 0.12 there
# but cut those to 0.79); 50 steps came within 0.002 of 200 at a quarter of the time.
FEATURE_PROBE_L2 = 0.01
FEATURE_PROBE_MAX_ITER = 50
# The unigram's pseudo-count a is searched on log a in [2^-16, 2^4] (golden section).
_LOG_PSEUDO_COUNT_RANGE = (-16 * math.log(2.0), 4 * math.log(2.0))


class UnigramBaseline:
    """The leave-one-out unigram q_u of a text's next-token counts (see the module docstring).

    Args:
        counts: V next-token counts of the whole probe text (float or integer).
    """

    def __init__(self, counts: Tensor):
        self.counts = counts.reshape(-1).double().cpu()
        self.vocabulary = self.counts.numel()
        self.total = float(self.counts.sum())
        seen = self.counts[self.counts > 0]
        log_a = golden_section_minimum(lambda u: self._held_out_nats(seen, math.exp(u)), *_LOG_PSEUDO_COUNT_RANGE)
        self.pseudo_count = math.exp(log_a)

    def _held_out_nats(self, seen: Tensor, a: float) -> float:
        """The mean leave-one-out cross-entropy over every counted token, in nats."""
        return -float((seen * torch.log((seen - 1 + a) / (self.total - 1 + a * self.vocabulary))).sum()) / self.total

    def held_out_log2(self, tokens: Tensor, code: Tensor | None = None) -> Tensor:
        """log2 q_u of each given position's token, its own occurrence left out of the counts.

        With `code` (V → class index) the vocabulary is grouped into classes first: a class of g
        tokens and C counts has q_u = (C − 1 + a · g) / (T − 1 + a · V), the baseline of Y's class.
        """
        tokens = tokens.reshape(-1).cpu()
        if code is None:
            counts, sizes, classes = self.counts, torch.ones_like(self.counts), tokens
        else:
            code = code.cpu()
            n = int(code.max()) + 1
            counts = torch.zeros(n, dtype=torch.float64).index_add_(0, code, self.counts)
            sizes = torch.bincount(code, minlength=n).double()
            classes = code[tokens]
        a = self.pseudo_count
        return torch.log2((counts[classes] - 1 + a * sizes[classes]) / (self.total - 1 + a * self.vocabulary))


def own_log_likelihoods(probs: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """log q_P(y_i) in nats of every position under q_P = softmax(T · log P): the next-token distribution
    of the logits behind P = softmax(logits / T) (one pass over the N × V probabilities, in their dtype)."""
    labels = labels.reshape(-1).to(probs.device)
    out = []
    rows = max(1, (1 << 22) // max(1, probs.shape[1]))
    for a in range(0, probs.shape[0], rows):
        scores = probs[a:a + rows].detach().clamp(min=torch.finfo(probs.dtype).tiny).log().mul_(temperature)
        out.append((scores.gather(1, labels[a:a + rows, None]).flatten() - torch.logsumexp(scores, dim=1)).double())
    return torch.cat(out)


def interpolated_cross_entropy_bits(log_q: Tensor, baseline_log_q: Tensor) -> float:
    """min over λ in [0, 1] of the mean −log2(λ · q + (1 − λ) · q_u), from the per-position log q and
    log q_u in nats: the cross-entropy of a predictor interpolated with the baseline (convex in λ)."""
    log_q, baseline = log_q.double().cpu(), baseline_log_q.double().cpu()

    def cross_entropy(lam: float) -> float:
        mixed = torch.logaddexp(log_q + math.log(lam) if lam > 0 else torch.full_like(log_q, -math.inf),
                                baseline + math.log1p(-lam) if lam < 1 else torch.full_like(baseline, -math.inf))
        return -float(mixed.mean())

    best = golden_section_minimum(cross_entropy, 0.0, 1.0)
    return min(cross_entropy(best), cross_entropy(0.0), cross_entropy(1.0)) * LOG2E


def _checked_counts(labels: Tensor, token_counts: Tensor, vocabulary: int) -> Tensor:
    counts = torch.as_tensor(token_counts).reshape(-1).cpu()
    if (counts.is_floating_point() and not torch.equal(counts, counts.round())) or bool((counts < 0).any()):
        raise SelectionError("token_counts must be non-negative whole counts of the probe text's next tokens "
                             "(e.g. torch.bincount(next_tokens, minlength=vocabulary))")
    counts = counts.long()
    if counts.numel() > vocabulary:
        if bool(counts[vocabulary:].any()):
            raise ClassCountMismatchError(
                f"token_counts counts token id {int(torch.nonzero(counts).max())} but the snapshots' vocabulary has "
                f"{vocabulary} tokens; count the text tokenized with the teachers' tokenizer")
        counts = counts[:vocabulary]
    counts = torch.nn.functional.pad(counts, (0, vocabulary - counts.numel()))
    short = torch.nonzero(torch.bincount(labels, minlength=vocabulary) > counts).flatten()
    if short.numel():
        v = int(short[0])
        raise SelectionError(
            f"token_counts must count the next tokens of the whole probe text, the probe positions' among them: token "
            f"{v} follows {int((labels == v).sum())} probe position(s) but is counted {int(counts[v])} time(s); count "
            "the text the probe is drawn from")
    return counts


class NextTokenLabelTerms:
    """The label terms of a causal LM's probe: bits per token over the unigram baseline (module docstring).

    Args:
        labels: the N next tokens of the probe positions.
        token_counts: V next-token counts of the whole text the probe is drawn from (its positions
            among them); `torch.bincount(labels, minlength=V)` when only the probe is at hand.
        vocabulary: V, the snapshots' number of next-token classes.
        temperature: T of the softened outputs `outputs` is given (undone: q_P is softmax(T · log P)).
        seed: seeds the halves of the feature term's cross-fitting.
        top_tokens: N, the feature term's frequent tokens.

    `outputs(P)` and `features(F)` return (bits, share), like `label_information.ClassLabelTerms`.
    """

    next_tokens = True

    def __init__(self, labels: Tensor, token_counts: Tensor, vocabulary: int, temperature: float = 1.0, seed: int = 0,
                 top_tokens: int = TOP_TOKENS):
        if isinstance(top_tokens, bool) or not isinstance(top_tokens, int) or top_tokens < 1:
            raise SelectionError(f"top_tokens must be a positive number of tokens, got {top_tokens!r} (e.g. "
                                 f"{TOP_TOKENS})")
        self.labels, self.temperature, self.seed = labels.reshape(-1).cpu(), float(temperature), int(seed)
        counts = _checked_counts(self.labels, token_counts, int(vocabulary))
        self.baseline = UnigramBaseline(counts)
        self._baseline = self.baseline.held_out_log2(self.labels)  # log2 q_u(y_i) of each probe position
        self.entropy_bits = float(-self._baseline.mean())  # H_u(Y)
        # Y_N: the N most frequent tokens of the text (ties to the lower id) each a class, every other token one more.
        n = min(top_tokens, int((counts > 0).sum()))
        top = torch.sort(-counts, stable=True).indices[:n]
        code = torch.full((int(vocabulary),), n, dtype=torch.long)
        code[top] = torch.arange(n)
        self.top_tokens, self.top_classes = n, n + int(vocabulary > n)
        self.top_labels = code[self.labels]
        self._top_baseline = self.baseline.held_out_log2(self.labels, code)
        self.top_entropy_bits = float(-self._top_baseline.mean())  # H_u(Y_N)

    def outputs(self, probs: Tensor) -> tuple[float, float]:
        """H_u(Y) − CE of the snapshot's own next-token distribution interpolated with the baseline, in
        bits, and its share of H_u(Y)."""
        log_q = own_log_likelihoods(probs, self.labels, self.temperature)
        bits = self.entropy_bits - interpolated_cross_entropy_bits(log_q, self._baseline / LOG2E)
        return bits, normalised(bits, self.entropy_bits)

    def features(self, features: Tensor) -> tuple[float, float]:
        """H_u(Y_N) − CE of the cross-fitted logistic regression on Y_N interpolated with the baseline, in
        bits, and its share of H_u(Y_N)."""
        log_q = features_log_likelihoods(features, self.top_labels.to(features.device), seed=self.seed,
                                         num_classes=self.top_classes, l2=FEATURE_PROBE_L2,
                                         max_iter=FEATURE_PROBE_MAX_ITER)
        bits = self.top_entropy_bits - interpolated_cross_entropy_bits(log_q, self._top_baseline / LOG2E)
        return bits, normalised(bits, self.top_entropy_bits)

    def predictive(self, logits: Tensor) -> float:
        """H_u(Y) − the cross-entropy of softmax(logits) in bits: the next-token distribution as it is, not
        interpolated with the baseline (below 0 when it predicts worse than the unigram; see
        `label_information.predictive_label_bits`)."""
        log_q = torch.log_softmax(logits.detach().double(), dim=1).gather(1, self.labels.to(logits.device)[:, None])
        return self.entropy_bits + float(log_q.mean()) * LOG2E

    def options(self) -> dict:
        return {"next_tokens": {"baseline": "leave-one-out unigram of the probe text", "text_tokens": int(self.baseline.total),
                                "pseudo_count": self.baseline.pseudo_count, "top_tokens": self.top_tokens,
                                "top_token_entropy_bits": self.top_entropy_bits}}


def next_token_terms(labels: Tensor, token_counts: Tensor | None, vocabulary: int, temperature: float,
                     seed: int) -> NextTokenLabelTerms | None:
    """The label terms of next-token labels given their text's counts; None for a classifier's labels
    (`token_counts=None`), which the estimators' default `ClassLabelTerms` serves."""
    return None if token_counts is None else NextTokenLabelTerms(labels, token_counts, vocabulary, temperature, seed)


__all__ = ["NextTokenLabelTerms", "TOP_TOKENS", "UnigramBaseline", "interpolated_cross_entropy_bits", "next_token_terms",
           "own_log_likelihoods"]
