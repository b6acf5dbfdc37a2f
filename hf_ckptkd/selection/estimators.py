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
order of 1e-6), which `unit` clips.

The label terms Ĩ(Y;F), Ĩ(Y;P) are not kernel estimates: Y is discrete, so they are variational
lower bounds in bits, normalised by the Shannon entropy H(Y) of the probe labels (see
`label_information`), or for a causal LM's next tokens by the bits per token of a unigram baseline
(see `token_information`). A kernel estimate of I(Y;P) barely moved between a 79 % and a 99 % snapshot;
these bounds move with what the representation says about the label.

A second, plug-in estimator on k-means cells (`BinningEstimator`, name "binning") has the same
interface for cross-checks; `ESTIMATORS` maps names to classes and `build_estimator` builds one.
All computation is torch, float32 by default, on the device of the probe inputs (or `device`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import (
    ClassCountMismatchError,
    DegenerateProbeError,
    UnknownEstimatorError,
)
from .kernels import (
    DEFAULT_KAPPA,
    MAX_MEDIAN_PAIRS,
    OUTPUT_KERNEL_WIDTH,
    FeatureInput,
    GaussianKernel,
    InformationEstimator,
    MutualInformation,
    block_rows,
    check_probe,
    check_probs,
    check_rows,
    entropy_from_sum,
    feature_matrix,
    median_distance,
    resolve_device,
    shannon,
    unit,
)
from .label_information import ClassLabelTerms, LabelTerms, shannon_entropy_bits


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
        label_terms: the label terms over these labels; default `ClassLabelTerms` (a classifier's),
            for a causal LM's next tokens `token_information.NextTokenLabelTerms`.

    Only the squares K∘K of the kernels ever enter the sums (sum_ij A_ij^2), so they are computed
    directly as exp(-d^2 / width^2). The examples are reordered by label once, which makes K_Y block
    diagonal: the label terms are sums over contiguous class blocks, and no N × N label matrix exists.
    """

    name = "renyi2"

    def __init__(self, inputs: Tensor, labels: Tensor, *, kappa: float = DEFAULT_KAPPA,
                 output_width: float = OUTPUT_KERNEL_WIDTH, max_pairs: int = MAX_MEDIAN_PAIRS, seed: int = 0,
                 chunk_size: int | None = None, dtype: torch.dtype = torch.float32, device=None,
                 num_classes: int | None = None, label_terms: LabelTerms | None = None):
        if kappa <= 0:
            raise ValueError(f"kappa must be positive, got {kappa}")
        if output_width <= 0:
            raise ValueError(f"output_width must be positive, got {output_width}")
        x, y = check_probe(inputs, labels)
        x = check_rows(x, y.numel(), "probe inputs")
        self.device = resolve_device(inputs, device)
        self.dtype = dtype
        self.kappa, self.output_width = float(kappa), float(output_width)
        self.max_pairs, self.seed, self.chunk_size = int(max_pairs), int(seed), chunk_size
        self.n = n = y.numel()
        self.num_classes = _num_classes(y, num_classes)
        self._block = block_rows(n, chunk_size)
        self._member_scales: dict = {}

        self.labels = y.to(self.device)  # the probe's labels, for label terms outside
        self.label_terms = label_terms if label_terms is not None else ClassLabelTerms(y, self.num_classes, self.seed)
        self.entropy_y = self.label_terms.entropy_bits  # H(Y) (H_u(Y) for next tokens), the label terms' scale
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
        self.entropy_x = entropy_from_sum(total, n)  # S2(K_X)
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
                "seed": self.seed, "chunk_size": self.chunk_size, "dtype": str(self.dtype).replace("torch.", ""),
                **self.label_terms.options()}

    def _sorted(self, t: Tensor) -> Tensor:
        return t.index_select(0, self._order)

    def _relative_kernel(self, z: Tensor) -> GaussianKernel:
        """Gaussian kernel of width kappa × (median pairwise distance of z)."""
        kernel = GaussianKernel(z, dense=self.dense)
        median = median_distance(kernel.z, max_pairs=self.max_pairs, seed=self.seed, sq_dists=kernel.dense_sq_dists)
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
        each by its own median pairwise distance (see `feature_matrix`).
        """
        z = feature_matrix(features, self.n, device=self.device, dtype=self.dtype,
                            max_pairs=self.max_pairs, seed=self.seed, scales=self._member_scales)
        kernel = self._relative_kernel(self._sorted(z))
        s_f = s_xf = 0.0
        for a, b in self._blocks():
            kf2 = kernel.rows(a, b, power=2)
            s_f += float(kf2.sum())
            s_xf += float(kf2.mul_(self._kx2_rows(a, b)).sum())
        n = self.n
        i_x = self.entropy_x + entropy_from_sum(s_f, n) - entropy_from_sum(s_xf, n)
        i_y, share = self.label_terms.features(z)
        return MutualInformation(x=unit(i_x / self.entropy_x), y=share, x_bits=i_x, y_bits=i_y)

    def outputs(self, probs: Tensor) -> MutualInformation:
        """Î(X;P) = S2(K_P)/log2 N on s = sqrt(P) with absolute width 0.25, and Ĩ(Y;P) (recalibrated P)."""
        p = check_probs(probs, self.n, self.num_classes, self.device, self.dtype)
        kernel = GaussianKernel(self._sorted(p).clamp(min=0).sqrt(), self.output_width)
        s_p = 0.0
        for a, b in self._blocks():
            s_p += float(kernel.rows(a, b, power=2).sum())
        h_p = entropy_from_sum(s_p, self.n)
        i_y, share = self.label_terms.outputs(p)
        return MutualInformation(x=unit(h_p / math.log2(self.n)), y=share, x_bits=h_p, y_bits=i_y)


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
    into `n_bins` k-means cells (default max(2 C, sqrt N), sqrt N for next tokens; at most N);
    then, with Shannon entropies of the empirical distributions in bits, I(X;T) = H(T) (deterministic network, distinct inputs)
    and I(Y;T) = H(Y) + H(T) - H(Y,T). Normalised: Î(X;T) = H(T) / log2(n_bins) (its largest
    value), Î(Y;T) = I(Y;T) / H(Y). Its values are not on the Rényi estimator's scale; compare
    orderings across snapshots, not numbers. Accepts (and ignores) the Rényi-only options.
    """

    name = "binning"

    def __init__(self, inputs: Tensor, labels: Tensor, *, n_bins: int | None = None, seed: int = 0,
                 max_pairs: int = MAX_MEDIAN_PAIRS, dtype: torch.dtype = torch.float32, device=None,
                 num_classes: int | None = None, label_terms: LabelTerms | None = None, **_ignored):
        _, y = check_probe(inputs, labels)
        self.device = resolve_device(inputs, device)
        self.dtype, self.seed, self.max_pairs = dtype, int(seed), int(max_pairs)
        self.n = n = y.numel()
        self.num_classes = _num_classes(y, num_classes)
        # Two cells per class would give a vocabulary of next tokens a cell per example (every I(Y;T) = H(Y)).
        next_tokens = label_terms is not None and label_terms.next_tokens
        default_bins = math.ceil(math.sqrt(n)) if next_tokens else max(2 * self.num_classes, math.ceil(math.sqrt(n)))
        self.n_bins = int(min(n, n_bins if n_bins is not None else default_bins))
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be at least 2, got {n_bins}")
        self._y = self.labels = y.to(self.device)
        self.entropy_y = shannon_entropy_bits(y)  # its own plug-in terms' unit
        # The label terms of the outputs as they are (the held-out objective), as the Rényi estimator's.
        self.label_terms = label_terms if label_terms is not None else ClassLabelTerms(y, self.num_classes, self.seed)

    def options(self) -> dict:
        return {"n_bins": self.n_bins, "seed": self.seed}

    def _score(self, z: Tensor) -> MutualInformation:
        scale = z.std(dim=0, unbiased=False).norm()
        z = (z - z.mean(dim=0)) / scale if scale > 0 else torch.zeros_like(z)
        codes = kmeans(z, self.n_bins, seed=self.seed)
        h_t = shannon(torch.bincount(codes))
        joint = codes * (self.num_classes) + self._y
        i_y = self.entropy_y + h_t - shannon(torch.bincount(joint))
        return MutualInformation(x=unit(h_t / math.log2(self.n_bins)), y=unit(i_y / self.entropy_y),
                                 x_bits=h_t, y_bits=i_y)

    def features(self, features: FeatureInput) -> MutualInformation:
        return self._score(feature_matrix(features, self.n, device=self.device, dtype=self.dtype,
                                           max_pairs=self.max_pairs, seed=self.seed))

    def outputs(self, probs: Tensor) -> MutualInformation:
        p = check_probs(probs, self.n, self.num_classes, self.device, self.dtype)
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
