"""The mutual-information estimators: known values, invariances, closed forms, chunking, errors."""

import math

import pytest
import torch
import torch.nn.functional as nnf

from hf_ckptkd.selection import (
    ESTIMATORS,
    BinningEstimator,
    Candidate,
    ClassCountMismatchError,
    EmptyProbeError,
    MutualInformation,
    NonFiniteError,
    Renyi2Estimator,
    SelectionError,
    ShapeMismatchError,
    SingleClassProbeError,
    TooManyTeachersError,
    UnknownEstimatorError,
    build_estimator,
    gaussian_gram,
    label_gram,
    median_pairwise_distance,
    renyi2_entropy,
    renyi2_mutual_information,
    select_from_candidates,
)
from hf_ckptkd.selection.kernels import output_embedding

E8 = math.exp(-8.0)  # a Gaussian at width kappa * d = d / 4, evaluated at distance d: exp(-d^2 / (2 d^2 / 16))


def probe(n=150, classes=5, d_in=64, d=16, seed=1):
    """Class-structured inputs, features and logits (a half-trained network, roughly)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, d_in, generator=g) + torch.randn(classes, d_in, generator=g)[y]
    f = torch.randn(n, d, generator=g) + 1.5 * torch.randn(classes, d, generator=g)[y]
    z = torch.randn(n, classes, generator=g) + 3 * nnf.one_hot(y, classes)
    return x, y, f, z


def values(info: MutualInformation) -> list[float]:
    return [info.x, info.y, info.x_bits, info.y_bits]


def close(a: MutualInformation, b: MutualInformation, tol: float) -> bool:
    return all(abs(u - v) <= tol for u, v in zip(values(a), values(b)))


# -- known values -------------------------------------------------------------------------------


def test_one_hot_labels_as_features_carry_all_label_information():
    x, y, f, _ = probe()
    est = Renyi2Estimator(x, y)
    assert est.features(nnf.one_hot(y).float()).y == pytest.approx(1.0, abs=1e-4)
    # Confident one-hot outputs likewise carry all of it; noisy features do not.
    assert est.outputs(output_embedding(30 * nnf.one_hot(y).float(), 1.0)).y == pytest.approx(1.0, abs=1e-4)
    noisy = torch.randn(f.shape, generator=torch.Generator().manual_seed(9)) + 0.2 * f
    assert est.features(noisy[:, :2]).y < 0.9


def test_entropy_of_labels_is_exact():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    expected = -sum((c / 10) * math.log2(c / 10) for c in (3, 2, 4, 1))  # Shannon H(Y), the label terms' unit
    assert Renyi2Estimator(x, y).entropy_y == pytest.approx(expected, abs=1e-12)


def test_inputs_as_features_keep_all_input_information():
    # Î(X;X) = (2 S2(K_X) - S2(K_X∘K_X)) / S2(K_X) is exactly 1 only for a 0/1-valued kernel; with the
    # kappa = 0.25 Gaussian it is ~1 when pairwise distances concentrate (high-dimensional inputs).
    x = torch.randn(200, 256, generator=torch.Generator().manual_seed(3))
    y = torch.arange(200) % 4
    est = Renyi2Estimator(x, y)
    assert est.features(x).x == pytest.approx(1.0, abs=1e-3)
    # A two-dimensional projection of the inputs keeps much less of them.
    assert est.features(x[:, :2]).x < 0.8


def test_constant_maps_carry_no_information():
    x, y, _, _ = probe()
    est = Renyi2Estimator(x, y)
    feats = est.features(torch.full((150, 7), 3.0))
    assert [feats.x, feats.y, feats.x_bits] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert feats.y_bits <= 1e-9  # a constant predicts no better than the class frequencies
    outs = est.outputs(output_embedding(torch.zeros(150, 5), 4.0))
    assert [outs.x, outs.y, outs.x_bits] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert outs.y_bits <= 1e-9


def test_all_values_lie_in_the_unit_interval():
    x, y, f, z = probe()
    g = torch.Generator().manual_seed(5)
    feature_maps = [f, x, torch.ones(150, 3), nnf.one_hot(y).float(), 1e-6 * f, 1e6 * f,
                    torch.randn(150, 1, generator=g), f.round(), torch.randn(150, 512, generator=g)]
    for name, cls in ESTIMATORS.items():
        est = cls(x, y)
        infos = [est.features(m) for m in feature_maps]
        infos += [est.outputs(output_embedding(l, t)) for l in (z, 100 * z, torch.zeros_like(z)) for t in (0.5, 4.0, 50.0)]
        for info in infos:
            assert 0.0 <= info.x <= 1.0 and 0.0 <= info.y <= 1.0, (name, info)


# -- closed forms computed by hand ------------------------------------------------------------


def test_closed_form_entropy_and_mutual_information_of_small_gram_matrices():
    a = 0.5
    assert float(renyi2_entropy(torch.tensor([[1.0, a], [a, 1.0]]))) == pytest.approx(1 - math.log2(1 + a * a), abs=1e-6)
    # Two clusters of two, an exactly block-diagonal kernel: sum A^2 = 8 / 16, so S2 = 1 bit.
    blocks = label_gram(torch.tensor([0, 0, 1, 1]))
    assert float(renyi2_entropy(blocks)) == pytest.approx(1.0, abs=1e-7)
    assert float(renyi2_entropy(torch.eye(4))) == pytest.approx(2.0, abs=1e-7)
    assert float(renyi2_mutual_information(blocks, blocks)) == pytest.approx(1.0, abs=1e-7)
    # Labels orthogonal to the clusters: K_U∘K_V is the identity, I = 1 + 1 - 2 = 0.
    assert float(renyi2_mutual_information(blocks, label_gram(torch.tensor([0, 1, 0, 1])))) == pytest.approx(0.0, abs=1e-7)
    # The label kernel's entropy is -log2(sum_c p_c^2), and trace normalisation ignores the kernel's scale.
    assert float(renyi2_entropy(3 * label_gram(torch.tensor([0, 0, 0, 1])))) == pytest.approx(-math.log2(0.75**2 + 0.25**2), abs=1e-6)


def test_estimator_matches_hand_computed_values_on_four_points():
    # Features: two pairs of identical points at distance L. The median non-zero distance is L, the
    # width L/4, so the kernel is 1 within a pair and e^-8 across: sum K_F^2 = 8 + 8 e^-16.
    f = torch.tensor([[0.0], [0.0], [5.0], [5.0]])
    # Inputs: the 4 corners of a simplex, all at distance √2: K_X = (1 - e^-8) I + e^-8 11^T.
    x = torch.eye(4)
    s2_f = -math.log2((8 + 8 * E8**2) / 16)
    s2_x = -math.log2((4 + 12 * E8**2) / 16)
    s2_xf = -math.log2((4 + 4 * E8**2 + 8 * E8**4) / 16)  # (K_X∘K_F)_ij: e^-8 within a pair, e^-16 across
    i_xf = s2_x + s2_f - s2_xf

    matching = Renyi2Estimator(x, torch.tensor([0, 0, 1, 1]))
    info = matching.features(f)
    assert matching.entropy_x == pytest.approx(s2_x, abs=1e-6)
    assert info.x_bits == pytest.approx(i_xf, abs=1e-6)
    assert info.x == pytest.approx(i_xf / s2_x, abs=1e-6)  # ≈ 0.5: one bit of two
    # The label term: F separates the classes, so the cross-fitted probe recovers all of H(Y) = 1 bit ...
    assert info.y == pytest.approx(1.0, abs=1e-3)
    # ... and nothing when the labels cut across the pairs of F.
    crossing = Renyi2Estimator(x, torch.tensor([0, 1, 0, 1]))
    assert crossing.features(f).y == pytest.approx(0.0, abs=1e-6)

    # Outputs: two groups of identical one-hot distributions; sqrt-embeddings √2 apart, width 0.25,
    # so the cross-group kernel is e^-16: S2(K_P) = 1 - log2(1 + e^-32), Î(X;P) = S2 / log2 4 ≈ 0.5.
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    out = matching.outputs(p)
    assert out.x_bits == pytest.approx(1 - math.log2(1 + math.exp(-32)), abs=1e-6)
    assert out.x == pytest.approx(0.5, abs=1e-6)
    assert out.y == pytest.approx(1.0, abs=1e-6)
    assert crossing.outputs(p).y == pytest.approx(0.0, abs=1e-6)


def test_median_distance_ignores_coincident_pairs_and_samples_reproducibly():
    z = torch.tensor([[0.0], [0.0], [0.0], [1.0], [3.0]])
    # Non-zero distances, sorted: 1, 1, 1, 2, 3, 3, 3 (the three zero pairs are left out): median 2.
    assert median_pairwise_distance(z) == pytest.approx(2.0)
    assert median_pairwise_distance(torch.ones(6, 3)) == 0.0
    big = torch.randn(900, 8, generator=torch.Generator().manual_seed(0))
    exact = median_pairwise_distance(big, max_pairs=10**6)
    sampled = median_pairwise_distance(big, max_pairs=5000, seed=1)
    assert sampled == median_pairwise_distance(big, max_pairs=5000, seed=1)
    assert sampled != exact and sampled == pytest.approx(exact, rel=0.05)
    # The dense shortcut (N <= 8192) and the pairwise differences agree.
    from hf_ckptkd.selection.kernels import median_distance

    assert median_distance(big, max_pairs=5000, seed=1) == pytest.approx(sampled, rel=1e-5)


def test_gaussian_gram_has_unit_diagonal_and_the_requested_width():
    z = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    k = gaussian_gram(z, width=5.0)
    assert torch.allclose(k, torch.tensor([[1.0, math.exp(-0.5)], [math.exp(-0.5), 1.0]]))


# -- invariances --------------------------------------------------------------------------------


def test_feature_values_are_invariant_to_scale_rotation_and_translation():
    x, y, f, _ = probe()
    est = Renyi2Estimator(x, y)
    base = est.features(f)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(7)))
    # The label term's logistic probe standardises each dimension, so it is invariant to scale and
    # translation, and to a rotation up to what the ridge penalty sees.
    for moved, label_tolerance in ((10 * f, 1e-5), (f @ q, 0.02), (f + 100.0, 1e-5), (0.001 * f @ q, 0.02)):
        info = est.features(moved)
        assert (info.x, info.x_bits) == pytest.approx((base.x, base.x_bits), abs=1e-5)
        assert info.y == pytest.approx(base.y, abs=label_tolerance)
    # The estimator would notice a genuine change of the features.
    assert not close(est.features(f + torch.randn(f.shape, generator=torch.Generator().manual_seed(8))), base, 1e-3)


def test_input_kernel_is_invariant_to_scaling_and_rotating_the_inputs():
    x, y, f, _ = probe()
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(2)))
    base = Renyi2Estimator(x, y)
    for moved in (10 * x, x @ q):
        est = Renyi2Estimator(moved, y)
        assert est.entropy_x == pytest.approx(base.entropy_x, abs=1e-5)
        assert close(est.features(f), base.features(f), 1e-5)


def test_duplicating_the_probe_set():
    """Every S2 and I (bits) is unchanged, so Î(X;F) and Ĩ(Y;P) are; Î(X;P) = S2(K_P) / log2 N is not.

    Duplicating keeps S2(K_P) but adds one bit to log2 N, so Î(X;P) shrinks by log2 N / log2 2N
    (0.88 at N = 150), alike for every snapshot. (Ĩ(Y;F) is not invariant either: the copies of an
    example can land in both halves of the cross-fitted probe.)
    """
    x, y, f, z = probe(n=150)  # 300 examples after doubling: all 44 850 pairs enter the median
    p = output_embedding(z, 4.0)
    one, two = Renyi2Estimator(x, y), Renyi2Estimator(x.repeat(2, 1), y.repeat(2))
    assert two.entropy_x == pytest.approx(one.entropy_x, abs=1e-4)
    fa, fb = one.features(f), two.features(f.repeat(2, 1))
    assert (fb.x, fb.x_bits) == pytest.approx((fa.x, fa.x_bits), abs=1e-3)
    a, b = one.outputs(p), two.outputs(p.repeat(2, 1))
    assert b.y == pytest.approx(a.y, abs=1e-3)
    assert b.x_bits == pytest.approx(a.x_bits, abs=1e-3)  # S2(K_P), i.e. H(P), is invariant
    assert b.x == pytest.approx(a.x * math.log2(150) / math.log2(300), abs=1e-5)
    assert a.x - b.x > 0.01  # ... and the normalised Î(X;P) really is not


def test_duplication_with_a_sampled_median_moves_values_by_sampling_noise_only():
    # 800 examples: 319 600 pairs > 200 000, so the median comes from random pairs (measured: ~1e-3).
    x, y, f, _ = probe(n=800)
    one, two = Renyi2Estimator(x, y), Renyi2Estimator(x.repeat(2, 1), y.repeat(2))
    a, b = one.features(f), two.features(f.repeat(2, 1))
    assert b.x == pytest.approx(a.x, abs=5e-3)


# -- the chunked path ---------------------------------------------------------------------------


def test_chunked_and_dense_paths_agree():
    x, y, f, z = probe(n=100)
    p = output_embedding(z, 4.0)
    dense, chunked = Renyi2Estimator(x, y), Renyi2Estimator(x, y, chunk_size=7)
    assert dense.dense and not chunked.dense
    assert chunked.entropy_x == pytest.approx(dense.entropy_x, abs=1e-5)
    assert close(chunked.features(f), dense.features(f), 1e-5)
    assert close(chunked.outputs(p), dense.outputs(p), 1e-5)
    assert close(chunked.features([f, 2 * f + 1]), dense.features([f, 2 * f + 1]), 1e-5)
    # Blocks cut across class boundaries (the label term sums over class blocks per row block).
    assert close(Renyi2Estimator(x, y, chunk_size=33).outputs(p), dense.outputs(p), 1e-5)


def test_float64_and_float32_agree():
    x, y, f, z = probe(n=120)
    a, b = Renyi2Estimator(x, y), Renyi2Estimator(x, y, dtype=torch.float64)
    assert close(a.features(f), b.features(f), 1e-5)
    assert close(a.outputs(output_embedding(z, 4.0)), b.outputs(output_embedding(z, 4.0)), 1e-5)


def test_an_ensemble_of_one_scores_like_its_member():
    x, y, f, _ = probe()
    est = Renyi2Estimator(x, y)
    assert close(est.features([f]), est.features(f), 1e-5)
    twice, once = est.features([f, f]), est.features(f)  # the same member twice adds nothing
    assert (twice.x, twice.x_bits) == pytest.approx((once.x, once.x_bits), abs=1e-5)
    assert twice.y == pytest.approx(once.y, abs=5e-3)  # up to the ridge penalty on a duplicated column


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_device_of_the_inputs():
    x, y, f, z = probe()
    cpu = Renyi2Estimator(x, y)
    gpu = Renyi2Estimator(x.cuda(), y.cuda())
    assert gpu.device.type == "cuda"
    assert close(gpu.features(f.cuda()), cpu.features(f), 1e-4)
    assert close(gpu.outputs(output_embedding(z.cuda(), 4.0)), cpu.outputs(output_embedding(z, 4.0)), 1e-4)


# -- the second estimator -------------------------------------------------------------------------


def test_registry_and_binning_estimator():
    x, y, f, z = probe()
    assert set(ESTIMATORS) >= {"renyi2", "binning"}
    est = build_estimator("binning", x, y, kappa=0.25, chunk_size=None)  # Rényi-only options are ignored
    assert isinstance(est, BinningEstimator)
    assert est.features(nnf.one_hot(y).float()).y == pytest.approx(1.0, abs=1e-9)
    assert values(est.features(torch.ones(150, 4))) == pytest.approx([0.0] * 4, abs=1e-9)
    assert est.features(f).y > est.features(torch.randn(150, 16, generator=torch.Generator().manual_seed(4))).y
    assert est.outputs(output_embedding(z, 4.0)).y > 0.3
    assert isinstance(build_estimator("renyi2", x, y), Renyi2Estimator)


# -- errors -------------------------------------------------------------------------------------


def _candidates(n, classes=5, count=3, first_init=True):
    g = torch.Generator().manual_seed(0)
    return [Candidate(name=f"epoch-{e:04d}", features=torch.randn(n, 8, generator=g),
                      logits=torch.randn(n, classes, generator=g), epoch=e, step=e * 10)
            for e in range(0 if first_init else 1, count + (0 if first_init else 1))]


def test_error_k_larger_than_the_number_of_candidates():
    x, y, _, _ = probe(n=40)
    cands = _candidates(40, count=4)  # epoch 0 is the initialisation: 3 candidates
    with pytest.raises(TooManyTeachersError, match=r"k=4 .*only 3 candidate snapshots.*initialisation.*lower k"):
        select_from_candidates(cands, x, y, k=4)
    with pytest.raises(TooManyTeachersError, match="positive integer"):
        select_from_candidates(cands, x, y, k=0)
    assert issubclass(TooManyTeachersError, ValueError)
    assert len(select_from_candidates(cands, x, y, k=3).selected) == 3


def test_error_empty_probe_set():
    cands = _candidates(0)
    with pytest.raises(EmptyProbeError, match="probe set is empty.*at least two classes"):
        select_from_candidates(cands, torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long))
    with pytest.raises(EmptyProbeError):
        Renyi2Estimator(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert issubclass(EmptyProbeError, ValueError)


def test_error_probe_set_with_one_class():
    x = torch.randn(20, 6)
    with pytest.raises(SingleClassProbeError, match=r"single class \(label 3\).*S2\(Y\) = 0.*at least two classes"):
        Renyi2Estimator(x, torch.full((20,), 3))
    with pytest.raises(SingleClassProbeError):
        select_from_candidates(_candidates(20), x, torch.full((20,), 3))
    with pytest.raises(SingleClassProbeError):
        BinningEstimator(x, torch.zeros(20, dtype=torch.long))
    assert issubclass(SingleClassProbeError, ValueError)


def test_error_candidates_with_different_numbers_of_classes():
    x, y, _, _ = probe(n=40)
    cands = _candidates(40)
    cands[2].logits = torch.randn(40, 7)
    with pytest.raises(ClassCountMismatchError, match=r"'epoch-0002' has 7 classes but 'epoch-0000' has 5.*one label space"):
        select_from_candidates(cands, x, y)
    # Probe labels beyond the snapshots' classes are the same mistake seen from the other side.
    with pytest.raises(ClassCountMismatchError, match="probe labels go up to class 4 but the snapshots have 3"):
        select_from_candidates(_candidates(40, classes=3), x, y)
    assert issubclass(ClassCountMismatchError, ValueError)


def test_error_shapes_and_names():
    x, y, f, _ = probe(n=40)
    est = Renyi2Estimator(x, y)
    with pytest.raises(ShapeMismatchError, match="features has shape \\(39, 16\\) but the probe set has 40"):
        est.features(f[:39])
    with pytest.raises(ShapeMismatchError, match="40 inputs but 39 labels"):
        Renyi2Estimator(x, y[:39])
    with pytest.raises(ShapeMismatchError, match="1-D tensor of class indices"):
        Renyi2Estimator(x, nnf.one_hot(y))
    with pytest.raises(UnknownEstimatorError, match="unknown estimator 'ksg'.*binning, renyi2"):
        select_from_candidates(_candidates(40), x, y, estimator="ksg")
    with pytest.raises(UnknownEstimatorError):
        build_estimator("ksg", x, y)
    with pytest.raises(SelectionError, match="no candidate snapshots"):
        select_from_candidates([], x, y)
    with pytest.raises(ShapeMismatchError, match="rows summing to 1.*not logits"):
        est.outputs(torch.randn(40, 5))


def test_error_diverged_snapshot():
    x, y, _, _ = probe(n=40)
    cands = _candidates(40)
    cands[1].features[3, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="snapshot 'epoch-0001': features hold NaN or infinite values.*leave it out"):
        select_from_candidates(cands, x, y)
    cands = _candidates(40)
    cands[2].logits[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="snapshot 'epoch-0002'"):
        select_from_candidates(cands, x, y)
