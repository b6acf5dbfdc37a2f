"""The label terms Ĩ(Y;P), Ĩ(Y;F) of `hf_ckptkd.selection.label_information`.

They are variational lower bounds on I(Y;P) and I(Y;F) in bits, normalised by H(Y). These tests
check them where the answer is known: they fall as labels are corrupted, they reach the exact
mutual information of a noisy channel and of a two-Gaussian mixture, they give ~0 for pure noise,
they do not see the scale of the logits or of the features, and through `Renyi2Estimator` they
separate a 99 %-accurate snapshot from a 79 %-accurate one (the defect that motivated the module).
Everything is seeded and small (the whole file runs in a few seconds on one thread).
"""

import math

import numpy as np
import pytest
import torch

from hf_ckptkd.selection import Renyi2Estimator
from hf_ckptkd.selection.label_information import (
    calibrated_cross_entropy_bits,
    features_label_bits,
    normalised,
    outputs_label_bits,
    shannon_entropy_bits,
    two_fold_split,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _binary_entropy(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _noisy_logits(n: int, c: int, seed: int, margin: float = 3.0):
    """Labels, and logits = N(0, 1) noise with the true class raised by `margin` (float64)."""
    g = _gen(seed)
    y = torch.randint(c, (n,), generator=g)
    z = torch.randn(n, c, generator=g, dtype=torch.float64)
    z[torch.arange(n), y] += margin
    return y, z


def _normalised_outputs_term(probs, labels) -> float:
    return outputs_label_bits(probs, labels) / shannon_entropy_bits(labels)


def _strictly_decreasing(values) -> bool:
    return all(a > b for a, b in zip(values, values[1:]))


# ---------------------------------------------------------------------------------------------
# 1. Monotone in accuracy


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_outputs_term_falls_strictly_as_labels_are_corrupted(temperature):
    n, c = 2000, 10
    y, z = _noisy_logits(n, c, seed=0)
    probs = torch.softmax(z / temperature, dim=-1)
    order = torch.randperm(n, generator=_gen(1))  # nested corrupted sets: prefixes of one permutation
    values = []
    for share in (0.0, 0.2, 0.4, 0.6, 0.8):
        corrupted = y.clone()
        idx = order[:round(share * n)]
        corrupted[idx] = (corrupted[idx] + 1) % c
        values.append(_normalised_outputs_term(probs, corrupted))
    assert _strictly_decreasing(values), values
    assert values[0] > 0.8, values  # a 3-logit margin over unit noise is a strong predictor
    assert values[-1] < 0.05, values  # 20 % accuracy keeps almost nothing


def test_outputs_term_does_not_depend_on_the_temperature_of_the_snapshot():
    # The recalibration scale absorbs 1/T: softmax(z / T) carries what softmax(z) carries about Y.
    y, z = _noisy_logits(2000, 10, seed=0)
    at_1 = outputs_label_bits(torch.softmax(z, dim=-1), y)
    at_4 = outputs_label_bits(torch.softmax(z / 4.0, dim=-1), y)
    assert at_4 == pytest.approx(at_1, abs=1e-9)


def test_features_term_falls_strictly_as_labels_are_corrupted():
    # Corrupted labels are moved to a uniformly random *other* class (a fixed offset per example).
    # With the deterministic shift label -> label + 1 the features would still tell the corrupted
    # label (a linear probe learns the shift: I(Y';F) = H(Y') - h(share), equal at 25 % and 75 %),
    # so that corruption is not a monotone control for a learned probe; the outputs term above has
    # no such freedom (one scale only) and uses the shift.
    n, c, d = 2000, 10, 16
    g = _gen(2)
    y = torch.randint(c, (n,), generator=g)
    means = 2.0 * torch.randn(c, d, generator=g, dtype=torch.float64)
    features = means[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    offset = torch.randint(1, c, (n,), generator=g)
    order = torch.randperm(n, generator=g)
    values = []
    for share in (0.0, 0.25, 0.5, 0.75):
        corrupted = y.clone()
        idx = order[:round(share * n)]
        corrupted[idx] = (corrupted[idx] + offset[idx]) % c
        values.append(features_label_bits(features, corrupted) / shannon_entropy_bits(corrupted))
    assert _strictly_decreasing(values), values
    assert values[0] > 0.95, values
    # Exact normalised values for perfectly separable features: 1, 0.45, 0.19, 0.04 (noisy channel).
    for share, value in zip((0.25, 0.5, 0.75), values[1:]):
        exact = (math.log2(c) - _binary_entropy(share) - share * math.log2(c - 1)) / math.log2(c)
        assert value <= exact + 0.02, (share, value, exact)


# ---------------------------------------------------------------------------------------------
# 2. Close to the exact value where it is known


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.6])
def test_outputs_term_matches_the_mutual_information_of_a_noisy_channel(eps):
    # Y uniform over C classes; the observation Ŷ equals Y with probability 1 - eps, else one of
    # the other C - 1 classes uniformly. The outputs are the exact posterior p(y | ŷ), softened at
    # T = 4; the recalibration must undo the temperature. Labels are exactly balanced and exactly
    # round(eps N) observations are wrong, so the probe's empirical channel is the ideal one and the
    # bound should sit on I(Y;P) = log2 C - h(eps) - eps log2(C - 1) (random sampling would add
    # ~0.03 bits of sampling noise at eps = 0.1).
    n, c, temperature = 4000, 10, 4.0
    g = _gen(3)
    y = torch.arange(n) % c
    wrong = torch.zeros(n, dtype=torch.bool)
    wrong[torch.randperm(n, generator=g)[:round(eps * n)]] = True
    offset = torch.randint(1, c, (n,), generator=g)
    observed = torch.where(wrong, (y + offset) % c, y)
    posterior = torch.full((n, c), eps / (c - 1), dtype=torch.float64)
    posterior[torch.arange(n), observed] = 1.0 - eps
    probs = torch.softmax(posterior.log() / temperature, dim=-1)  # log 0 = -inf -> probability 0
    if eps > 0:
        assert not torch.allclose(probs, posterior)  # really softened (a one-hot posterior stays one-hot)

    exact = math.log2(c) - _binary_entropy(eps) - eps * math.log2(c - 1)
    bound = outputs_label_bits(probs, y)
    assert bound == pytest.approx(exact, abs=0.05)
    assert normalised(bound, shannon_entropy_bits(y)) == pytest.approx(exact / math.log2(c), abs=0.05 / math.log2(c))


def test_features_term_matches_the_mutual_information_of_two_gaussians():
    # Y uniform over {0, 1}, F | Y ~ N(2Y - 1, 1) in 1-D: p(Y=1 | f) = sigmoid(2 f), so
    # I(Y;F) = 1 - E_f[h(sigmoid(2 f))], integrated numerically. The logistic probe is well specified.
    n = 8000
    y = torch.arange(n) % 2
    features = (2.0 * y - 1.0).double()[:, None] + torch.randn(n, 1, generator=_gen(4), dtype=torch.float64)

    grid = np.linspace(-12.0, 12.0, 200_001)
    density = 0.5 * (np.exp(-(grid - 1) ** 2 / 2) + np.exp(-(grid + 1) ** 2 / 2)) / np.sqrt(2 * np.pi)
    q = 1.0 / (1.0 + np.exp(-2.0 * grid))
    conditional = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    exact = 1.0 - float(np.sum(0.5 * (density[1:] * conditional[1:] + density[:-1] * conditional[:-1]) * np.diff(grid)))
    assert 0.4 < exact < 0.6  # ~0.486 bits

    assert features_label_bits(features, y) == pytest.approx(exact, abs=0.03)


@pytest.mark.parametrize("dim", [64, 256])
def test_features_term_gives_nothing_for_pure_noise(dim):
    # 500 training examples in up to 256 dimensions can be memorised; held-out scoring must not
    # reward it.
    n, c = 1000, 10
    g = _gen(5)
    y = torch.randint(c, (n,), generator=g)
    noise = torch.randn(n, dim, generator=g)
    bits = features_label_bits(noise, y)
    assert bits < 0.02 * shannon_entropy_bits(y)
    assert normalised(bits, shannon_entropy_bits(y)) < 0.02


# ---------------------------------------------------------------------------------------------
# 3. Invariances


@pytest.mark.parametrize("dtype, factors, tol", [
    (torch.float64, (0.25, 2.5, 4.0), 1e-6),
    (torch.float32, (0.5, 2.0), 1e-4),
])
def test_outputs_term_ignores_the_scale_of_the_logits(dtype, factors, tol):
    y, z = _noisy_logits(2000, 10, seed=6)
    reference = outputs_label_bits(torch.softmax(z, dim=-1).to(dtype), y)
    assert reference > 1.0
    for factor in factors:
        scaled = outputs_label_bits(torch.softmax(factor * z, dim=-1).to(dtype), y)
        assert scaled == pytest.approx(reference, abs=tol), factor


def test_outputs_term_ignores_the_order_of_the_probe():
    y, z = _noisy_logits(2000, 10, seed=7)
    probs = torch.softmax(z / 2.0, dim=-1)
    perm = torch.randperm(y.numel(), generator=_gen(8))
    assert outputs_label_bits(probs[perm], y[perm]) == pytest.approx(outputs_label_bits(probs, y), abs=1e-9)


def test_features_term_ignores_a_per_dimension_affine_rescaling():
    n, c, d = 1000, 10, 12
    g = _gen(9)
    y = torch.randint(c, (n,), generator=g)
    means = torch.randn(c, d, generator=g, dtype=torch.float64)
    features = means[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    # Scales over four orders of magnitude, some negative (a sign flip of a standardised feature is
    # matched by flipping its weights, which the L2 penalty does not see), and large shifts.
    scale = torch.exp(torch.empty(d, dtype=torch.float64).uniform_(-4.6, 4.6, generator=g))
    scale = scale * torch.where(torch.rand(d, generator=g) < 0.3, -1.0, 1.0).double()
    shift = 100.0 * torch.randn(d, generator=g, dtype=torch.float64)
    reference = features_label_bits(features, y)
    assert reference > 0.5
    assert features_label_bits(features * scale + shift, y) == pytest.approx(reference, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# 4. The calibrated cross-entropy and the two-fold split


def test_calibrated_cross_entropy_never_exceeds_log2_c():
    n, c = 1500, 10
    g = _gen(10)
    y = torch.randint(c, (n,), generator=g)
    informative = torch.randn(n, c, generator=g, dtype=torch.float64)
    informative[torch.arange(n), y] += 2.0
    misleading = torch.randn(n, c, generator=g, dtype=torch.float64)
    misleading[torch.arange(n), y] -= 5.0  # the true class is (nearly) always the least likely
    random = 30.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    log2_c = math.log2(c)
    results = {name: calibrated_cross_entropy_bits(scores, y)
               for name, scores in (("informative", informative), ("misleading", misleading), ("random", random))}
    for name, (ce, scale) in results.items():
        assert ce <= log2_c + 1e-12, name  # ce is log(C) / log(2), which may round 1 ulp above math.log2(C)
        assert ce >= 0.0 and scale >= 0.0, name
    ce, scale = results["informative"]
    assert ce < log2_c - 0.5 and scale > 0.0
    # With any positive scale the misleading scores do worse than chance: the uniform predictor wins.
    assert results["misleading"] == (pytest.approx(log2_c, abs=1e-12), 0.0)
    # The fitted scale really is the minimiser: nearby scales do no better.
    ce_nats = ce * math.log(2.0)
    for factor in (0.8, 1.25):
        other = float(torch.nn.functional.cross_entropy(informative * scale * factor, y))
        assert other >= ce_nats - 1e-12


@pytest.mark.parametrize("n", [
    10, 200, 2000, 4000,
    20, 50, 100, 1000,
])
def test_calibrated_cross_entropy_of_uniform_outputs_is_log2_c_with_scale_zero(n):
    c = 10
    y = torch.arange(n) % c
    uniform = torch.full((n, c), 1.0 / c, dtype=torch.float64)
    ce, scale = calibrated_cross_entropy_bits(uniform.log(), y)
    assert ce == pytest.approx(math.log2(c), abs=1e-12)
    assert scale == 0.0


def test_uniform_outputs_carry_no_label_information():
    y = torch.randint(10, (1000,), generator=_gen(11))
    bits = outputs_label_bits(torch.full((1000, 10), 0.1), y)
    assert bits <= 1e-12
    assert normalised(bits, shannon_entropy_bits(y)) == 0.0


def test_two_fold_split_halves_every_class_deterministically():
    sizes = [1, 2, 7, 10, 33, 100]
    labels = torch.cat([torch.full((s,), k) for k, s in enumerate(sizes)])
    labels = labels[torch.randperm(labels.numel(), generator=_gen(12))]
    fold = two_fold_split(labels, seed=3)
    assert fold.dtype == torch.bool and fold.shape == labels.shape
    for k, s in enumerate(sizes):
        in_fold = int(fold[labels == k].sum())
        assert in_fold == (s + 1) // 2, (k, s, in_fold)  # half of each class, rounded (up) ...
        assert s - in_fold == s // 2                     # ... and the rest in the other fold
    assert torch.equal(two_fold_split(labels, seed=3), fold)
    assert torch.equal(two_fold_split(labels.clone(), seed=3), fold)
    assert not torch.equal(two_fold_split(labels, seed=4), fold)


def test_features_term_is_deterministic_for_a_seed():
    y, z = _noisy_logits(600, 6, seed=13, margin=1.0)
    first = features_label_bits(z, y, seed=5)
    assert features_label_bits(z.clone(), y.clone(), seed=5) == first


# ---------------------------------------------------------------------------------------------
# 5. Through the estimator


def _snapshot_logits(y: torch.Tensor, accuracy: float, num_classes: int, seed: int) -> torch.Tensor:
    """Logits whose argmax is right on exactly round(accuracy * N) probe examples."""
    n = y.numel()
    g = _gen(seed)
    right = torch.zeros(n, dtype=torch.bool)
    right[torch.randperm(n, generator=g)[:round(accuracy * n)]] = True
    predicted = torch.where(right, y, (y + torch.randint(1, num_classes, (n,), generator=g)) % num_classes)
    logits = torch.rand(n, num_classes, generator=g)  # in [0, 1): the raised class always wins
    logits[torch.arange(n), predicted] += 3.0
    return logits


def test_estimator_outputs_label_term_is_the_normalised_bound_and_moves_with_accuracy():
    n, c, temperature = 2000, 10, 4.0
    g = _gen(14)
    inputs = torch.randn(n, 8, generator=g)
    y = torch.randint(c, (n,), generator=g)
    estimator = Renyi2Estimator(inputs, y)
    scores = {}
    for accuracy in (0.99, 0.79):
        logits = _snapshot_logits(y, accuracy, c, seed=15)
        assert float((logits.argmax(dim=1) == y).double().mean()) == pytest.approx(accuracy, abs=1e-9)
        probs = torch.softmax(logits / temperature, dim=-1)
        mi = estimator.outputs(probs)
        expected_bits = outputs_label_bits(probs, y)
        assert mi.y_bits == pytest.approx(expected_bits, abs=1e-9)
        assert mi.y == pytest.approx(normalised(expected_bits, shannon_entropy_bits(y)), abs=1e-9)
        assert 0.0 <= mi.y <= 1.0
        scores[accuracy] = mi.y
    assert scores[0.99] - scores[0.79] > 0.2, scores
    assert scores[0.99] > 0.9, scores


def test_estimator_features_label_term_is_the_normalised_cross_fitted_bound():
    n, c = 600, 6
    g = _gen(16)
    inputs = torch.randn(n, 8, generator=g)
    y = torch.arange(n) % c
    features = torch.randn(c, 16, generator=g)[y] + torch.randn(n, 16, generator=g)
    mi = Renyi2Estimator(inputs, y).features(features)
    expected_bits = features_label_bits(features, y, seed=0, num_classes=c)
    assert mi.y_bits == pytest.approx(expected_bits, abs=1e-6)
    assert mi.y == pytest.approx(normalised(expected_bits, shannon_entropy_bits(y)), abs=1e-6)
    assert mi.y > 0.3
