"""Mutual-information estimators for the information plane of a training run.

The default estimator is the matrix-based Rényi entropy of order alpha = 2 (Giraldo, Rao &
Principe 2014; Yu et al. 2019), which needs no eigendecomposition: for a Gram matrix K over N
examples with A = K / trace(K),

    S2(K) = -log2(sum_ij A_ij^2)                      (bits; 0 <= S2 <= log2 N)
    I(U;V) = S2(K_U) + S2(K_V) - S2(K_U ∘ K_V)         (∘ = elementwise product)

Every kernel used here has a unit diagonal (trace = N) and entries in [0, 1], so
S2(K) = -log2(sum_ij K_ij^2 / N^2), and the three sums a mutual information needs can be
accumulated over row blocks of K without ever holding an N × N matrix.

Kernels, per snapshot (see `Renyi2Estimator`), for the input terms:

- features F: Gaussian, width kappa × (median pairwise distance of that snapshot's features),
  so every value is invariant to scaling and rotating F (and to translating it);
- inputs X:   the same kernel on the flattened inputs (its own median);
- outputs P at temperature T: embed s_i = sqrt(softmax(z_i / T)) (unit vectors, distances in
  [0, √2]) and use a Gaussian of absolute width 0.25.

Normalised input terms, each divided by a fixed bound of the probe set (never by the candidates'
range), so equal differences mean equal amounts of information across snapshots:

    Î(X;F) = I(X;F) / S2(K_X)        Î(X;P) = S2(K_P) / log2 N

(For a deterministic network I(X;P) = H(P), estimated by S2(K_P) whose largest value is log2 N.)
The kernels are positive semi-definite with unit diagonal and entries in [0, 1], so
max(S2(K_U), S2(K_V)) <= S2(K_U ∘ K_V) <= S2(K_U) + S2(K_V) (Giraldo et al.'s subadditivity), hence
0 <= I(U;V) <= min(S2(K_U), S2(K_V)) and both ratios lie in [0, 1] up to float rounding (of the
order of 1e-6), which `_unit` clips.

The label terms Ĩ(Y;F), Ĩ(Y;P) are not kernel estimates: Y is discrete, so they are variational
lower bounds in bits, normalised by the Shannon entropy H(Y) of the probe labels (see
`label_information`). A kernel estimate of I(Y;P) barely moved between a 79 % and a 99 % snapshot;
these bounds move with what the representation says about the label.

A second, plug-in estimator on k-means cells (`BinningEstimator`, name "binning") has the same
interface for cross-checks; `ESTIMATORS` maps names to classes and `build_estimator` builds one.
All computation is torch, float32 by default, on the device of the probe inputs (or `device`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence, Union

import torch
from torch import Tensor

from .errors import (
    ClassCountMismatchError,
    DegenerateProbeError,
    EmptyProbeError,
    NonFiniteError,
    ProbeTooSmallError,
    ShapeMismatchError,
    SingleClassProbeError,
    SparseClassError,
    UnknownEstimatorError,
)
from .label_information import features_label_bits, normalised, outputs_label_bits, shannon_entropy_bits

DEFAULT_KAPPA = 0.25
OUTPUT_KERNEL_WIDTH = 0.25
MAX_MEDIAN_PAIRS = 200_000
DENSE_MAX_EXAMPLES = 20_000
DENSE_MEDIAN_MAX_EXAMPLES = 8192
BLOCK_ELEMENTS = 1 << 25  # entries of one row block of a Gram matrix on the chunked path (128 MiB in float32)

FeatureInput = Union[Tensor, Sequence[Tensor]]


def check_probe_classes(labels: Tensor, num_classes: int) -> None:
    """A probe the label terms can use: at least one example per class, and no class with exactly one."""
    n = labels.numel()
    if n < num_classes:
        raise ProbeTooSmallError(
            f"the probe set has {n} examples but the snapshots predict {num_classes} classes; the label terms need "
            f"at least as many examples as classes, so raise max_probe_samples (--max_probe_samples) to "
            f"{num_classes} or more (e.g. {max(2000, 10 * num_classes)})")
    counts = torch.bincount(labels.reshape(-1).cpu(), minlength=num_classes)
    single = torch.nonzero(counts == 1).flatten().tolist()
    if single:
        shown = ", ".join(map(str, single[:10])) + (" ..." if len(single) > 10 else "")
        raise SparseClassError(
            f"class(es) {shown} have a single example in the probe set of {n}; the features' label term is "
            "cross-fitted on two halves of the probe, which needs two examples of every class present. Raise "
            "max_probe_samples (--max_probe_samples), or drop those classes from the probe dataset")


# ---------------------------------------------------------------------------------------------
# The estimator's functional core (dense, for small matrices and for checking by hand).


def renyi2_entropy(gram: Tensor) -> Tensor:
    """S2(K) = -log2(sum_ij A_ij^2) with A = K / trace(K), in bits, of a dense Gram matrix."""
    a = gram / torch.diagonal(gram).sum()
    return -torch.log2((a * a).sum())


def renyi2_mutual_information(gram_u: Tensor, gram_v: Tensor) -> Tensor:
    """I(U;V) = S2(K_U) + S2(K_V) - S2(K_U ∘ K_V), in bits, of two dense Gram matrices."""
    return renyi2_entropy(gram_u) + renyi2_entropy(gram_v) - renyi2_entropy(gram_u * gram_v)


def label_gram(labels: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """K_Y[i, j] = 1[y_i = y_j] (dense)."""
    labels = labels.reshape(-1)
    return (labels[:, None] == labels[None, :]).to(dtype)


def gaussian_gram(z: Tensor, width: float) -> Tensor:
    """Dense Gaussian kernel exp(-|z_i - z_j|^2 / (2 width^2)) over the rows of `z` (all ones if width is 0)."""
    return _GaussianKernel(z.reshape(z.shape[0], -1), width).rows(0, z.shape[0])


def median_pairwise_distance(z: Tensor, *, max_pairs: int = MAX_MEDIAN_PAIRS, seed: int = 0) -> float:
    """The median Euclidean distance between distinct rows of `z`, over non-coincident pairs.

    All N(N-1)/2 pairs are used when there are at most `max_pairs`; otherwise `max_pairs` random
    pairs (i != j) drawn with a generator seeded by `seed`, so every snapshot of a run is measured
    on the same pairs. Pairs at distance exactly 0 (duplicated or collapsed examples) are left
    out, which keeps the width positive for collapsed features and makes it exactly invariant to
    duplicating the probe set. Returns the lower median; 0.0 only when every row is identical.
    """
    z = z.reshape(z.shape[0], -1)
    if z.shape[0] <= DENSE_MEDIAN_MAX_EXAMPLES:  # one matrix product beats gathering 2 × max_pairs rows
        kernel = _GaussianKernel(z, dense=True)
        return _median_distance(kernel.z, max_pairs=max_pairs, seed=seed, sq_dists=kernel.dense_sq_dists)
    return _median_distance(z, max_pairs=max_pairs, seed=seed)


def _median_distance(z: Tensor, *, max_pairs: int, seed: int, sq_dists: Tensor | None = None) -> float:
    """`median_pairwise_distance`, reading squared distances from a dense matrix when one is given.

    Entries of `sq_dists` (computed as |a|^2 + |b|^2 - 2 a.b, fast but inexact for near-coincident
    points) that are small next to the points' squared norms are recomputed exactly from the
    differences, so coincident points still give exactly 0.
    """
    n = z.shape[0]
    if n < 2:
        return 0.0
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
    else:
        g = torch.Generator().manual_seed(seed)
        i = torch.randint(n, (max_pairs,), generator=g)
        j = torch.randint(n - 1, (max_pairs,), generator=g)
        j = j + (j >= i).long()
    i, j = i.to(z.device), j.to(z.device)

    def exact(ii: Tensor, jj: Tensor) -> Tensor:
        step = max(1, (1 << 22) // max(1, z.shape[1]))
        parts = [(z[ii[a:a + step]] - z[jj[a:a + step]]).square().sum(dim=1) for a in range(0, ii.numel(), step)]
        return torch.cat(parts) if parts else z.new_zeros(0)

    if sq_dists is None:
        d2 = exact(i, j)
    else:
        d2 = sq_dists[i, j].clamp(min=0)
        sq = (z * z).sum(dim=1)
        near = d2 <= 1e-4 * (sq[i] + sq[j])
        if bool(near.any()):
            d2[near] = exact(i[near], j[near])
    d2 = d2[d2 > 0]
    if d2.numel() > 0:
        return float(d2.median().sqrt())
    if bool((z == z[:1]).all()):
        return 0.0
    # The sampled pairs all coincide but some other pair does not: fall back to the root-mean-square
    # pairwise distance, sqrt(2 * total variance), which is equally scale- and rotation-invariant.
    return float(torch.sqrt(2 * z.double().var(dim=0, unbiased=False).sum()))


def output_embedding(logits: Tensor, temperature: float) -> Tensor:
    """Softened probabilities softmax(z / T) of logits (computed in float32 at least)."""
    return torch.softmax(logits.float() / temperature, dim=-1)


# ---------------------------------------------------------------------------------------------
# Helpers


class _GaussianKernel:
    """Row blocks of a Gaussian Gram matrix exp(-d^2 / (2 width^2)), with an exact unit diagonal.

    With `dense=True` the N × N squared distances are computed once and kept (the dense path), so
    the median width can be read from them; otherwise every `rows` call recomputes its block.
    A width of 0 (every row identical) gives the all-ones kernel.
    """

    def __init__(self, z: Tensor, width: float | None = None, *, dense: bool = False):
        z = z - z.mean(dim=0, keepdim=True)  # distances are translation-invariant; centring reduces rounding
        self.z = z
        self.sq = (z * z).sum(dim=1)
        self.dense_sq_dists = self.sq_dists(0, z.shape[0]) if dense else None
        self.gamma = 0.0
        if width is not None:
            self.set_width(width)

    def set_width(self, width: float) -> None:
        self.width = width
        self.gamma = 0.0 if width <= 0 else 1.0 / (2.0 * width * width)

    def sq_dists(self, a: int, b: int) -> Tensor:
        d2 = torch.addmm(self.sq[a:b, None], self.z[a:b], self.z.T, alpha=-2.0).add_(self.sq[None, :]).clamp_(min=0.0)
        r = torch.arange(b - a, device=d2.device)
        d2[r, r + a] = 0.0
        return d2

    def rows(self, a: int, b: int, power: int = 1) -> Tensor:
        """Rows a:b of K∘K∘...∘K (`power` factors): exp(-power · d^2 / (2 width^2))."""
        if self.dense_sq_dists is not None:
            return torch.exp(self.dense_sq_dists[a:b] * (-power * self.gamma))
        return torch.exp_(self.sq_dists(a, b).mul_(-power * self.gamma))


def _unit(value: float) -> float:
    """Clip a normalised information value into [0, 1].

    Applied only to the four normalised ratios, which lie in [0, 1] in exact arithmetic (see the
    module docstring); float rounding can push them out by ~1e-6, and this removes exactly that.
    """
    return min(1.0, max(0.0, value))


def _entropy_from_sum(sum_sq: float, n: int) -> float:
    """S2 of a unit-diagonal kernel from sum_ij K_ij^2."""
    return -math.log2(sum_sq / (n * n))


def _block_rows(n: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return min(n, chunk_size)
    if n <= DENSE_MAX_EXAMPLES:
        return n
    return max(1, BLOCK_ELEMENTS // n)


def _shannon(counts: Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * torch.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def check_probe(inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a probe set; returns (inputs flattened to N × d, labels as int64 of length N)."""
    if not isinstance(inputs, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("the probe inputs and labels must be torch tensors")
    n = labels.numel()
    if n == 0 or inputs.dim() == 0 or inputs.shape[0] == 0:
        raise EmptyProbeError(
            "the probe set is empty; pass a probe set drawn from the training data with examples of at "
            "least two classes (e.g. --max_probe_samples 2000)")
    if labels.dim() != 1:
        raise ShapeMismatchError(
            f"probe labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}; "
            "pass integer labels, not one-hot vectors")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ShapeMismatchError(f"probe labels must be integer class indices, got dtype {labels.dtype}")
    if inputs.shape[0] != n:
        raise ShapeMismatchError(
            f"the probe set has {inputs.shape[0]} inputs but {n} labels; pass one label per input")
    if bool((labels < 0).any()):
        raise ShapeMismatchError(
            "probe labels must be non-negative class indices (found a negative label such as the -100 "
            "'ignore' index); drop unlabelled examples from the probe set")
    classes = torch.unique(labels)
    if classes.numel() < 2:
        raise SingleClassProbeError(
            f"the probe set holds a single class (label {int(classes[0])}), so S2(Y) = 0 and the "
            "normalised Î(Y;F), Î(Y;P) are undefined; draw the probe set as a shuffled (or stratified) "
            "sample of the training data with at least two classes")
    return inputs.reshape(n, -1), labels.long()


def _check_rows(t: Tensor, n: int, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{what} must be a torch tensor, got {type(t).__name__}")
    if t.dim() == 0 or t.shape[0] != n:
        shape = tuple(t.shape)
        raise ShapeMismatchError(
            f"{what} has shape {shape} but the probe set has {n} examples; extract it on exactly the "
            "probe inputs, in the same order")
    t = t.reshape(n, -1)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"{what} hold NaN or infinite values; a snapshot that diverged cannot be scored, so "
                             "leave it out of the candidates")
    return t


def _feature_matrix(features: FeatureInput, n: int, *, device, dtype, max_pairs: int, seed: int,
                    scales: dict | None = None) -> Tensor:
    """One feature matrix, or the concatenation of several, each divided by its own median distance.

    A single tensor is returned as is (flattened); for a list (an ensemble) every member is put on
    the same scale first (median pairwise distance 1), so each member weighs equally in the
    concatenation and a one-member list gives the same values as the member alone. `scales`, if
    given, caches each member's median by tensor identity across calls (the greedy and exhaustive
    searches score the same members many times).
    """
    if isinstance(features, Tensor):
        return _check_rows(features, n, "features").to(device=device, dtype=dtype)
    parts = []
    for m, f in enumerate(features):
        z = _check_rows(f, n, f"features of ensemble member {m}").to(device=device, dtype=dtype)
        cached = scales.get(id(f)) if scales is not None else None
        if cached is not None and cached[0] is f:
            med = cached[1]
        else:
            med = median_pairwise_distance(z, max_pairs=max_pairs, seed=seed)
            if scales is not None:
                scales[id(f)] = (f, med)  # holding `f` keeps its id from being reused
        parts.append(z / med if med > 0 else torch.zeros_like(z))
    if not parts:
        raise ValueError("an ensemble needs at least one member's features")
    return torch.cat(parts, dim=1)


def _check_probs(probs: Tensor, n: int, num_classes: int | None, device, dtype) -> Tensor:
    p = _check_rows(probs, n, "output probabilities")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ClassCountMismatchError(
            f"the outputs have {p.shape[1]} classes but the snapshots have {num_classes}; "
            "select snapshots of a model trained on the probe set's label space")
    p = p.to(device=device, dtype=dtype)
    if bool((p < 0).any()) or not torch.allclose(p.sum(dim=1), torch.ones((), dtype=dtype, device=p.device), atol=1e-3):
        raise ShapeMismatchError("output probabilities must be non-negative with rows summing to 1; pass "
                                 "softmax(logits / T) (e.g. `output_embedding(logits, T)`), not logits")
    return p


def _resolve_device(inputs: Tensor, device) -> torch.device:
    return torch.device(device) if device is not None else inputs.device


# ---------------------------------------------------------------------------------------------
# Estimators


@dataclass(frozen=True)
class MutualInformation:
    """Normalised Î(X;·) = `x` and Ĩ(Y;·) = `y`, both in [0, 1], with the raw values in bits.

    `x_bits` is I(X;F) for features and H(P) (= I(X;P) for a deterministic network) for outputs;
    `y_bits` is the label term's lower bound on I(Y;F) or I(Y;P) (negative when the representation
    predicts the label worse than the class frequencies; `y` is then 0).
    """

    x: float
    y: float
    x_bits: float
    y_bits: float


class InformationEstimator(Protocol):
    """What the objective needs of an estimator; built once per probe set, used for every snapshot."""

    name: str
    n: int
    num_classes: int

    def features(self, features: FeatureInput) -> MutualInformation:
        """Î(X;F), Î(Y;F) of an N × D feature matrix (or a list: an ensemble's features)."""

    def outputs(self, probs: Tensor) -> MutualInformation:
        """Î(X;P), Î(Y;P) of N × C probabilities (already softened at the temperature)."""

    def options(self) -> dict:
        """The estimator's settings, for the report."""


class Renyi2Estimator:
    """Matrix-based Rényi alpha = 2 estimator over one probe set (see the module docstring).

    Build it once per probe set (this computes S2(Y), the input kernel and S2(K_X)); then
    `features(F)` and `outputs(P)` score one snapshot each.

    Args:
        inputs: the probe inputs, N × ... (flattened to N × d); their device is where everything runs
            unless `device` is given.
        labels: N integer class indices.
        kappa: Gaussian width of features and inputs, as a fraction of the median pairwise distance.
        output_width: absolute Gaussian width on the sqrt-probability embedding of the outputs.
        max_pairs: the median distance uses all pairs up to this many, else this many random pairs.
        seed: seeds the random pairs.
        chunk_size: rows per block of the Gram matrices; None = dense up to `DENSE_MAX_EXAMPLES`
            examples, blocks of about `BLOCK_ELEMENTS` entries beyond. Results do not depend on it
            beyond float rounding.
        dtype: float32 by default (each block is summed in `dtype`, blocks are added in float64).
        device: where to compute; default the device of `inputs`.
        num_classes: the number of classes of the outputs, if known (checked against the labels).

    Only the squares K∘K of the kernels ever enter the sums (sum_ij A_ij^2), so they are computed
    directly as exp(-d^2 / width^2). The examples are reordered by label once, which makes K_Y block
    diagonal: the label terms are sums over contiguous class blocks, and no N × N label matrix exists.
    """

    name = "renyi2"

    def __init__(self, inputs: Tensor, labels: Tensor, *, kappa: float = DEFAULT_KAPPA,
                 output_width: float = OUTPUT_KERNEL_WIDTH, max_pairs: int = MAX_MEDIAN_PAIRS, seed: int = 0,
                 chunk_size: int | None = None, dtype: torch.dtype = torch.float32, device=None,
                 num_classes: int | None = None):
        if kappa <= 0:
            raise ValueError(f"kappa must be positive, got {kappa}")
        if output_width <= 0:
            raise ValueError(f"output_width must be positive, got {output_width}")
        x, y = check_probe(inputs, labels)
        x = _check_rows(x, y.numel(), "probe inputs")
        self.device = _resolve_device(inputs, device)
        self.dtype = dtype
        self.kappa, self.output_width = float(kappa), float(output_width)
        self.max_pairs, self.seed, self.chunk_size = int(max_pairs), int(seed), chunk_size
        self.n = n = y.numel()
        self.num_classes = _num_classes(y, num_classes)
        self._block = _block_rows(n, chunk_size)
        self._member_scales: dict = {}

        self._y = y.to(self.device)
        self.entropy_y = shannon_entropy_bits(y)  # H(Y), the label terms' scale
        self._order = torch.argsort(y.cpu(), stable=True).to(self.device)  # examples sorted by label

        self._kx = self._relative_kernel(self._sorted(x.to(device=self.device, dtype=dtype)))
        self.width_x = self._kx.width
        self._kx2_dense = None
        total = 0.0
        for a, b in self._blocks():
            kx2 = self._kx.rows(a, b, power=2)
            total += float(kx2.sum())
            if self.dense:
                self._kx2_dense, self._kx = kx2, None  # dense path: keep K_X∘K_X for every snapshot
        self.entropy_x = _entropy_from_sum(total, n)  # S2(K_X)
        if self.entropy_x <= 1e-12:
            raise DegenerateProbeError(
                "every probe input is identical, so S2(K_X) = 0 and Î(X;F) is undefined; draw the probe "
                "set from the training data")

    @property
    def dense(self) -> bool:
        """Whether Gram matrices are held whole (N <= DENSE_MAX_EXAMPLES, or chunk_size >= N)."""
        return self._block >= self.n

    def options(self) -> dict:
        return {"kappa": self.kappa, "output_width": self.output_width, "max_pairs": self.max_pairs,
                "seed": self.seed, "chunk_size": self.chunk_size, "dtype": str(self.dtype).replace("torch.", "")}

    def _sorted(self, t: Tensor) -> Tensor:
        return t.index_select(0, self._order)

    def _relative_kernel(self, z: Tensor) -> _GaussianKernel:
        """Gaussian kernel of width kappa × (median pairwise distance of z)."""
        kernel = _GaussianKernel(z, dense=self.dense)
        median = _median_distance(kernel.z, max_pairs=self.max_pairs, seed=self.seed, sq_dists=kernel.dense_sq_dists)
        kernel.set_width(self.kappa * median)
        return kernel

    def _blocks(self):
        for a in range(0, self.n, self._block):
            yield a, min(self.n, a + self._block)

    def _kx2_rows(self, a: int, b: int) -> Tensor:
        if self._kx2_dense is not None:
            return self._kx2_dense[a:b]
        return self._kx.rows(a, b, power=2)

    def features(self, features: FeatureInput) -> MutualInformation:
        """Î(X;F) = I(X;F)/S2(K_X) (width kappa × median distance of F) and Ĩ(Y;F) (cross-fitted probe).

        A list of feature matrices (an ensemble) is scored as their concatenation after dividing
        each by its own median pairwise distance (see `_feature_matrix`).
        """
        z = _feature_matrix(features, self.n, device=self.device, dtype=self.dtype,
                            max_pairs=self.max_pairs, seed=self.seed, scales=self._member_scales)
        kernel = self._relative_kernel(self._sorted(z))
        s_f = s_xf = 0.0
        for a, b in self._blocks():
            kf2 = kernel.rows(a, b, power=2)
            s_f += float(kf2.sum())
            s_xf += float(kf2.mul_(self._kx2_rows(a, b)).sum())
        n = self.n
        i_x = self.entropy_x + _entropy_from_sum(s_f, n) - _entropy_from_sum(s_xf, n)
        i_y = features_label_bits(z, self._y, seed=self.seed, num_classes=self.num_classes)
        return MutualInformation(x=_unit(i_x / self.entropy_x), y=normalised(i_y, self.entropy_y), x_bits=i_x,
                                 y_bits=i_y)

    def outputs(self, probs: Tensor) -> MutualInformation:
        """Î(X;P) = S2(K_P)/log2 N on s = sqrt(P) with absolute width 0.25, and Ĩ(Y;P) (recalibrated P)."""
        p = _check_probs(probs, self.n, self.num_classes, self.device, self.dtype)
        kernel = _GaussianKernel(self._sorted(p).clamp(min=0).sqrt(), self.output_width)
        s_p = 0.0
        for a, b in self._blocks():
            s_p += float(kernel.rows(a, b, power=2).sum())
        h_p = _entropy_from_sum(s_p, self.n)
        i_y = outputs_label_bits(p, self._y)
        return MutualInformation(x=_unit(h_p / math.log2(self.n)), y=normalised(i_y, self.entropy_y), x_bits=h_p,
                                 y_bits=i_y)


def _num_classes(y: Tensor, num_classes: int | None) -> int:
    top = int(y.max()) + 1
    if num_classes is None:
        return top
    if top > num_classes:
        raise ClassCountMismatchError(
            f"the probe labels go up to class {top - 1} but the snapshots have {num_classes} classes; "
            "use a probe set from the dataset the snapshots were trained on")
    return int(num_classes)


def kmeans(z: Tensor, k: int, *, seed: int = 0, iters: int = 50) -> Tensor:
    """Cluster the rows of `z` into at most `k` cells (k-means++ seeding, Lloyd steps); returns codes."""
    n = z.shape[0]
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=g))
    centers = [z[first:first + 1]]
    d2 = ((z - centers[0]) ** 2).sum(dim=1)
    for _ in range(1, min(k, n)):
        w = d2.double().cpu()
        if float(w.sum()) <= 0:
            break
        c = int(torch.multinomial(w, 1, generator=g))
        centers.append(z[c:c + 1])
        d2 = torch.minimum(d2, ((z - z[c:c + 1]) ** 2).sum(dim=1))
    c = torch.cat(centers)
    codes = torch.cdist(z, c).argmin(dim=1)
    for _ in range(iters):
        counts = torch.bincount(codes, minlength=c.shape[0]).to(z.dtype)
        sums = torch.zeros_like(c).index_add_(0, codes, z)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], c)
        new = torch.cdist(z, c).argmin(dim=1)
        if torch.equal(new, codes):
            break
        codes = new
    return codes


class BinningEstimator:
    """Plug-in Shannon estimator on k-means cells, for cross-checking the Rényi estimator's trends.

    A representation T (features, or the sqrt-probability embedding of the outputs) is discretised
    into `n_bins` k-means cells (default max(2 C, sqrt N), at most N); then, with Shannon entropies
    of the empirical distributions in bits, I(X;T) = H(T) (deterministic network, distinct inputs)
    and I(Y;T) = H(Y) + H(T) - H(Y,T). Normalised: Î(X;T) = H(T) / log2(n_bins) (its largest
    value), Î(Y;T) = I(Y;T) / H(Y). Its values are not on the Rényi estimator's scale; compare
    orderings across snapshots, not numbers. Accepts (and ignores) the Rényi-only options.
    """

    name = "binning"

    def __init__(self, inputs: Tensor, labels: Tensor, *, n_bins: int | None = None, seed: int = 0,
                 max_pairs: int = MAX_MEDIAN_PAIRS, dtype: torch.dtype = torch.float32, device=None,
                 num_classes: int | None = None, **_ignored):
        _, y = check_probe(inputs, labels)
        self.device = _resolve_device(inputs, device)
        self.dtype, self.seed, self.max_pairs = dtype, int(seed), int(max_pairs)
        self.n = n = y.numel()
        self.num_classes = _num_classes(y, num_classes)
        self.n_bins = int(min(n, n_bins if n_bins is not None else max(2 * self.num_classes, math.ceil(math.sqrt(n)))))
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be at least 2, got {n_bins}")
        self._y = y.to(self.device)
        self.entropy_y = shannon_entropy_bits(y)

    def options(self) -> dict:
        return {"n_bins": self.n_bins, "seed": self.seed}

    def _score(self, z: Tensor) -> MutualInformation:
        scale = z.std(dim=0, unbiased=False).norm()
        z = (z - z.mean(dim=0)) / scale if scale > 0 else torch.zeros_like(z)
        codes = kmeans(z, self.n_bins, seed=self.seed)
        h_t = _shannon(torch.bincount(codes))
        joint = codes * (self.num_classes) + self._y
        i_y = self.entropy_y + h_t - _shannon(torch.bincount(joint))
        return MutualInformation(x=_unit(h_t / math.log2(self.n_bins)), y=_unit(i_y / self.entropy_y),
                                 x_bits=h_t, y_bits=i_y)

    def features(self, features: FeatureInput) -> MutualInformation:
        return self._score(_feature_matrix(features, self.n, device=self.device, dtype=self.dtype,
                                           max_pairs=self.max_pairs, seed=self.seed))

    def outputs(self, probs: Tensor) -> MutualInformation:
        p = _check_probs(probs, self.n, self.num_classes, self.device, self.dtype)
        return self._score(p.clamp(min=0).sqrt())


ESTIMATORS: dict[str, type] = {"renyi2": Renyi2Estimator, "binning": BinningEstimator}
DEFAULT_ESTIMATOR = "renyi2"


def build_estimator(name: str, inputs: Tensor, labels: Tensor, **options) -> InformationEstimator:
    """Build the estimator registered as `name` over a probe set (options go to its constructor)."""
    try:
        cls = ESTIMATORS[name]
    except KeyError:
        raise UnknownEstimatorError(
            f"unknown estimator {name!r}; choose one of {', '.join(sorted(ESTIMATORS))} "
            f"(default {DEFAULT_ESTIMATOR!r})") from None
    return cls(inputs, labels, **options)
