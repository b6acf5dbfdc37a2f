"""The functional core of the estimators: Gram matrices, Rényi α=2 entropies, median distances,
the output embedding, probe checks, and the `MutualInformation` result and estimator protocol.

Everything here is a plain function of tensors, so it can be checked by hand on small matrices;
`estimators` builds the estimators on top (see its docstring for the definitions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence, Union

import torch
from torch import Tensor

from .errors import (
    ClassCountMismatchError,
    EmptyProbeError,
    NonFiniteError,
    ProbeTooSmallError,
    ShapeMismatchError,
    SingleClassProbeError,
    SparseClassError,
)
from .label_information import LabelTerms

DEFAULT_KAPPA = 0.25
OUTPUT_KERNEL_WIDTH = 0.25
MAX_MEDIAN_PAIRS = 200_000
DENSE_MAX_EXAMPLES = 20_000
DENSE_MEDIAN_MAX_EXAMPLES = 8192
BLOCK_ELEMENTS = 1 << 25  # entries of one row block of a Gram matrix on the chunked path (128 MiB in float32)

FeatureInput = Union[Tensor, Sequence[Tensor]]


def check_probe_classes(labels: Tensor, num_classes: int, *, token_labels: bool = False) -> None:
    """A probe the label terms can use: at least one example per class, and no class with exactly one.

    Next-token labels (`token_labels`, a causal LM's probe) are exempt: a vocabulary of thousands of
    tokens is larger than any probe, and most tokens occur once or twice in one, which is what the
    label terms then expect (a unigram baseline of the whole text, and a feature term over the most
    frequent tokens, see `token_information`). They still need two distinct tokens, as every probe needs two classes
    (`check_probe`).
    """
    if token_labels:
        return
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
    return GaussianKernel(z.reshape(z.shape[0], -1), width).rows(0, z.shape[0])


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
        kernel = GaussianKernel(z, dense=True)
        return median_distance(kernel.z, max_pairs=max_pairs, seed=seed, sq_dists=kernel.dense_sq_dists)
    return median_distance(z, max_pairs=max_pairs, seed=seed)


def median_distance(z: Tensor, *, max_pairs: int, seed: int, sq_dists: Tensor | None = None) -> float:
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


class GaussianKernel:
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


def unit(value: float) -> float:
    """Clip a normalised information value into [0, 1].

    Applied only to the four normalised ratios, which lie in [0, 1] in exact arithmetic (see the
    module docstring); float rounding can push them out by ~1e-6, and this removes exactly that.
    """
    return min(1.0, max(0.0, value))


def entropy_from_sum(sum_sq: float, n: int) -> float:
    """S2 of a unit-diagonal kernel from sum_ij K_ij^2."""
    return -math.log2(sum_sq / (n * n))


def block_rows(n: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")
        return min(n, chunk_size)
    if n <= DENSE_MAX_EXAMPLES:
        return n
    return max(1, BLOCK_ELEMENTS // n)


def shannon(counts: Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * torch.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def single_class(labels: Tensor) -> int | None:
    """The one label of a probe whose labels are all the same (its label terms are undefined), else None."""
    classes = torch.unique(labels)
    return int(classes[0]) if classes.numel() == 1 else None


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
    only = single_class(labels)
    if only is not None:
        raise SingleClassProbeError(
            f"the probe set holds a single class (label {only}), so S2(Y) = 0 and the "
            "normalised Ĩ(Y;F), Ĩ(Y;P) are undefined; draw the probe set as a shuffled (or stratified) "
            "sample of the training data with at least two classes")
    return inputs.reshape(n, -1), labels.long()


def check_rows(t: Tensor, n: int, what: str) -> Tensor:
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


def feature_matrix(features: FeatureInput, n: int, *, device, dtype, max_pairs: int, seed: int,
                    scales: dict | None = None) -> Tensor:
    """One feature matrix, or the concatenation of several, each divided by its own median distance.

    A single tensor is returned as is (flattened); for a list (an ensemble) every member is put on
    the same scale first (median pairwise distance 1), so each member weighs equally in the
    concatenation and a one-member list gives the same values as the member alone. `scales`, if
    given, caches each member's median by tensor identity across calls (the greedy and exhaustive
    searches score the same members many times).
    """
    if isinstance(features, Tensor):
        return check_rows(features, n, "features").to(device=device, dtype=dtype)
    parts = []
    for m, f in enumerate(features):
        z = check_rows(f, n, f"features of ensemble member {m}").to(device=device, dtype=dtype)
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


def check_probs(probs: Tensor, n: int, num_classes: int | None, device, dtype) -> Tensor:
    p = check_rows(probs, n, "output probabilities")
    if num_classes is not None and p.shape[1] != num_classes:
        raise ClassCountMismatchError(
            f"the outputs have {p.shape[1]} classes but the snapshots have {num_classes}; "
            "select snapshots of a model trained on the probe set's label space")
    p = p.to(device=device, dtype=dtype)
    if bool((p < 0).any()) or not torch.allclose(p.sum(dim=1), torch.ones((), dtype=dtype, device=p.device), atol=1e-3):
        raise ShapeMismatchError("output probabilities must be non-negative with rows summing to 1; pass "
                                 "softmax(logits / T) (e.g. `output_embedding(logits, T)`), not logits")
    return p


def resolve_device(inputs: Tensor, device) -> torch.device:
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
    labels: Tensor      # the probe's labels, on the estimator's device
    entropy_y: float    # H(Y) of the probe's labels in bits, the label terms' unit
    label_terms: LabelTerms  # the label terms over the probe's labels (`label_information`)

    def features(self, features: FeatureInput) -> MutualInformation:
        """Î(X;F), Ĩ(Y;F) of an N × D feature matrix (or a list: an ensemble's features)."""

    def outputs(self, probs: Tensor) -> MutualInformation:
        """Î(X;P), Ĩ(Y;P) of N × C probabilities (already softened at the temperature)."""

    def options(self) -> dict:
        """The estimator's settings, for the report."""
