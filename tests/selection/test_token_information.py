"""The label terms of a causal LM's probe (`hf_ckptkd.selection.token_information`): bits per token
over a leave-one-out unigram baseline of the probe text, as shares of that baseline's H_u(Y).

Controlled cases with known answers: text drawn from a Zipf law over a vocabulary four times the
probe, so that the plug-in entropy of the probe collapses while H_u(Y) stays near the true entropy;
an oracle LM (and features that give the next token away) near 1, an LM that knows only the token
frequencies near 0, and both terms falling strictly as a growing share of the predictions is
replaced by tokens drawn from the frequencies (nested shares). Seeded and small.
"""

import math

import pytest
import torch

from hf_ckptkd.selection import (
    Candidate,
    ClassCountMismatchError,
    SelectionError,
    SelectionSettings,
    select_from_candidates,
)
from hf_ckptkd.selection.choice import choose, report_choice, score_candidates
from hf_ckptkd.selection.label_information import shannon_entropy_bits
from hf_ckptkd.selection.objectives import OBJECTIVES
from hf_ckptkd.selection.token_information import (
    NextTokenLabelTerms,
    UnigramBaseline,
    interpolated_cross_entropy_bits,
)

V = 4000          # the vocabulary: four times the probe
TEXT = 30000      # tokens of the probe text
N = 1000          # probe positions
ZIPF = 1.0 / torch.arange(1, V + 1, dtype=torch.float64) ** 1.1
SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def text():
    """(probe next tokens, counts of the whole text they come from, an independent draw for a unigram LM)."""
    tokens = torch.multinomial(ZIPF, TEXT, replacement=True, generator=_gen(0))
    probe = tokens[torch.randperm(TEXT, generator=_gen(1))[:N]]
    other = torch.multinomial(ZIPF, TEXT, replacement=True, generator=_gen(2))
    return probe, torch.bincount(tokens, minlength=V), other


@pytest.fixture(scope="module")
def terms(text):
    return NextTokenLabelTerms(text[0], text[1], V)


def _corrupted(y: torch.Tensor, share: float) -> torch.Tensor:
    """y with its first `share` of positions replaced by tokens drawn from the text's frequencies (nested)."""
    out = y.clone()
    k = round(share * y.numel())
    out[:k] = torch.multinomial(ZIPF, max(k, 1), replacement=True, generator=_gen(3))[:k]
    return out


def _oracle_probs(tokens: torch.Tensor) -> torch.Tensor:
    logits = torch.randn(tokens.numel(), V, generator=_gen(4))
    logits[torch.arange(tokens.numel()), tokens] += 12.0
    return torch.softmax(logits, dim=1)


def _strictly_decreasing(values) -> bool:
    return all(a > b for a, b in zip(values, values[1:]))


def test_the_unigram_baseline_does_not_collapse_with_a_vocabulary_larger_than_the_probe(text, terms):
    probe, _, _ = text
    p = ZIPF / ZIPF.sum()
    true_entropy = float(-(p * torch.log2(p)).sum())
    plug_in = shannon_entropy_bits(probe)
    assert plug_in < true_entropy - 0.7  # most tokens seen once: the plug-in H(Y) collapses
    assert abs(terms.entropy_bits - true_entropy) < 0.35  # H_u(Y): within a few tenths of a bit
    assert 0 < terms.top_entropy_bits < terms.entropy_bits and terms.top_classes == 33


def test_the_baseline_is_the_leave_one_out_unigram_with_the_best_pseudo_count():
    counts = torch.tensor([5, 3, 1, 1, 0, 0])
    baseline = UnigramBaseline(counts)
    a, total, v = baseline.pseudo_count, 10, 6
    expected = torch.log2((torch.tensor([5., 3, 1, 1]) - 1 + a) / (total - 1 + a * v))
    assert torch.allclose(baseline.held_out_log2(torch.tensor([0, 1, 2, 3])), expected.double())

    def held_out(a):
        c = counts[counts > 0].double()
        return -float((c * torch.log((c - 1 + a) / (total - 1 + a * v))).sum())

    assert held_out(a) <= min(held_out(a * 1.2), held_out(a / 1.2))
    # Grouped into classes {0}, {1, ..., 5}: a class of g tokens and C counts gets (C - 1 + a g) / (T - 1 + a V).
    code = torch.tensor([0, 1, 1, 1, 1, 1])
    grouped = baseline.held_out_log2(torch.tensor([0, 3]), code)
    assert torch.allclose(grouped, torch.log2(torch.tensor([4 + a, 4 + 5 * a]) / (9 + 6 * a)).double())


def test_outputs_term_is_near_one_for_an_oracle_and_near_zero_for_the_token_frequencies(text, terms):
    probe, _, other = text
    _, oracle = terms.outputs(_oracle_probs(probe))
    assert oracle > 0.97
    unigram = (torch.bincount(other, minlength=V).double() + 0.5)
    unigram = (unigram / unigram.sum()).float().expand(N, V)
    bits, share = terms.outputs(unigram)
    assert share < 0.02 and bits >= 0
    assert terms.outputs(torch.full((N, V), 1.0 / V)) == (pytest.approx(0.0, abs=1e-9), 0.0)  # never below 0


def test_outputs_term_falls_strictly_with_a_growing_share_of_corrupted_predictions(text, terms):
    probe, _, _ = text
    values = [terms.outputs(_oracle_probs(_corrupted(probe, share)))[1] for share in SHARES]
    assert _strictly_decreasing(values), values
    assert values[0] > 0.97 and values[-1] < 0.02, values


def test_outputs_term_reads_the_snapshots_own_distribution_whatever_the_temperature(text):
    probe, counts, _ = text
    logits = torch.log(_oracle_probs(_corrupted(probe, 0.5)))
    at_1 = NextTokenLabelTerms(probe, counts, V, temperature=1.0).outputs(torch.softmax(logits, dim=1))
    at_4 = NextTokenLabelTerms(probe, counts, V, temperature=4.0).outputs(torch.softmax(logits / 4, dim=1))
    assert at_4[0] == pytest.approx(at_1[0], abs=1e-4)


def test_features_term_is_near_one_for_features_that_give_the_next_token_away_and_falls_strictly(text, terms):
    probe, _, _ = text
    codebook = torch.randn(V, 48, generator=_gen(5))
    values = [terms.features(codebook[_corrupted(probe, share)] + 0.1 * torch.randn(N, 48, generator=_gen(6)))[1]
              for share in SHARES]
    assert _strictly_decreasing(values), values
    assert values[0] > 0.9 and values[-1] < 0.02, values
    noise = terms.features(torch.randn(N, 48, generator=_gen(7)))
    assert noise[1] < 0.02 and noise[0] >= 0


def test_interpolating_with_the_baseline_never_costs_bits():
    baseline = torch.log(torch.rand(200, generator=_gen(8)).double())
    assert interpolated_cross_entropy_bits(baseline, baseline) == pytest.approx(-float(baseline.mean()) / math.log(2))
    worse = baseline - 5.0
    assert interpolated_cross_entropy_bits(worse, baseline) == pytest.approx(-float(baseline.mean()) / math.log(2))
    better = torch.zeros(200, dtype=torch.float64)  # certain of every token
    assert interpolated_cross_entropy_bits(better, baseline) == pytest.approx(0.0, abs=1e-9)


def test_select_from_candidates_reports_the_next_token_terms(text):
    probe, counts, _ = text
    g = _gen(9)
    candidates = [Candidate(f"s{i}", torch.randn(N, 16, generator=g), torch.log(_oracle_probs(_corrupted(probe, share))),
                            step=i + 1) for i, share in enumerate((0.75, 0.25))]
    report = select_from_candidates(candidates, torch.randn(N, 8, generator=g), probe, token_counts=counts,
                                    objective="outputs", temperature=1.0)
    terms = NextTokenLabelTerms(probe, counts, V)
    assert report.label_entropy_bits == pytest.approx(terms.entropy_bits)
    assert report.scores[0].i_yp < report.scores[1].i_yp
    assert report.scores[1].i_yp == pytest.approx(terms.outputs(torch.exp(candidates[1].logits))[1], abs=1e-5)
    assert report.estimator_options["next_tokens"]["top_tokens"] == 32
    assert "unigram" in report.to_markdown()


def test_the_held_out_objective_reads_next_tokens_as_they_are_over_the_baseline(text, terms):
    """Ĩ(Y;P₁), the outputs as they are: H_u(Y) minus the snapshot's own cross-entropy, not interpolated, so an
    over-confident LM pays for its confidence (below 0 when worse than the unigram); the probe loss is that
    cross-entropy in nats."""
    probe, counts, _ = text
    g = _gen(10)
    right = torch.log(_oracle_probs(_corrupted(probe, 0.25)))  # right on three positions in four
    overconfident = right * 4  # the same ranking of the tokens, four times as sharp
    candidates = [Candidate(name, torch.randn(N, 16, generator=g), logits, step=i + 1)
                  for i, (name, logits) in enumerate((("right", right), ("overconfident", overconfident)))]
    report = select_from_candidates(candidates, torch.randn(N, 8, generator=g), probe, token_counts=counts,
                                    objective="held_out", temperature=1.0)
    scores = {s.name: s for s in report.scores}
    own = -float(torch.log_softmax(right.double(), dim=1)[torch.arange(N), probe].mean())  # nats
    assert scores["right"].probe_loss == pytest.approx(own, rel=1e-6)
    assert scores["right"].i_yp1 == pytest.approx((terms.entropy_bits - own / math.log(2)) / terms.entropy_bits,
                                                   rel=1e-6)
    assert scores["overconfident"].i_yp1 < 0 < scores["right"].i_yp1
    assert scores["overconfident"].i_yp > 0.3  # interpolated with the baseline, it keeps its right positions' bits
    assert report.selected == ["right"]


def test_held_out_ranks_next_token_lms_by_their_outputs_as_they_are_over_the_same_unigram_unit(text, terms):
    """Ĩ(Y;P₁) and the probe loss on next tokens, in the unit of Ĩ(Y;P) (H_u(Y)): an LM that is right almost
    everywhere scores near 1, one that predicts the token frequencies (from other text) near 0, and one that
    is sharp on a token everywhere but right on a quarter of the positions (a memorising LM on held-out text)
    below 0, although its accuracy is above the unigram's and its interpolated Ĩ(Y;P) too. The loss objective
    and the label term of held_out rank the three alike; accuracy prefers the sharp, wrong one. Keep-top's score
    of one snapshot (`score_snapshot`) is the selector's."""
    probe, counts, other = text
    g = _gen(11)
    frequencies = torch.bincount(other, minlength=V).double() + 0.5
    lms = {"oracle": torch.log(_oracle_probs(probe)),
           "unigram": torch.log(frequencies / frequencies.sum()).float().expand(N, V).clone(),
           "sharp_wrong": torch.log(_oracle_probs(_corrupted(probe, 0.75))) * 2}
    candidates = [Candidate(name, torch.randn(N, 16, generator=g), logits, step=i + 1)
                  for i, (name, logits) in enumerate(lms.items())]
    settings = SelectionSettings.of(objective="held_out", temperature=1.0)
    scored = score_candidates(candidates, torch.randn(N, 8, generator=g), probe, settings, token_counts=counts)
    report = report_choice(scored, settings, *choose(scored, settings))
    scores = {s.name: s for s in report.scores}
    assert report.label_entropy_bits == pytest.approx(terms.entropy_bits)  # one unit, H_u(Y), for both terms
    for name, logits in lms.items():
        own = -float(torch.log_softmax(logits.double(), dim=1)[torch.arange(N), probe].mean())  # nats per token
        assert scores[name].probe_loss == pytest.approx(own, rel=1e-6)
        assert scores[name].i_yp1 == pytest.approx(1 - own / math.log(2) / terms.entropy_bits, rel=1e-6)
    assert scores["oracle"].i_yp1 > 0.95
    assert abs(scores["unigram"].i_yp1) < 0.03
    assert scores["sharp_wrong"].i_yp1 < -0.5
    assert scores["sharp_wrong"].accuracy > scores["unigram"].accuracy
    assert scores["sharp_wrong"].i_yp > scores["unigram"].i_yp  # the interpolated term keeps its right positions
    assert report.selected == ["oracle"]
    saved = report.to_dict()["scores"]
    assert max(OBJECTIVES["loss"].values_from_scores(saved).items(), key=lambda kv: kv[1])[0] == "oracle"
    label_only = OBJECTIVES["held_out"].values_from_scores(saved, beta=0.0)
    by_loss = OBJECTIVES["loss"].values_from_scores(saved)
    assert sorted(label_only, key=label_only.get) == sorted(by_loss, key=by_loss.get) == ["sharp_wrong", "unigram",
                                                                                          "oracle"]
    by_accuracy = OBJECTIVES["accuracy"].values_from_scores(saved)
    assert by_accuracy["sharp_wrong"] > by_accuracy["unigram"]
    for i, name in enumerate(lms):
        alone = OBJECTIVES["held_out"].score_snapshot(scored.estimator, candidates[i].features, candidates[i].logits,
                                                      1.0, "cpu")
        assert alone.y == pytest.approx(scores[name].i_yp1, rel=1e-6)
        assert alone.x == pytest.approx(scores[name].i_xp, rel=1e-6)


def test_bad_token_counts_are_clear_errors(text):
    probe, counts, _ = text
    missing = counts.clone()
    missing[int(probe[0])] = 0
    with pytest.raises(SelectionError, match=rf"token {int(probe[0])} follows \d+ probe position.*counted 0 time"):
        NextTokenLabelTerms(probe, missing, V)
    beyond = torch.cat([counts, torch.tensor([0, 3])])
    with pytest.raises(ClassCountMismatchError, match=rf"token id {V + 1} but the snapshots' vocabulary has {V}"):
        NextTokenLabelTerms(probe, beyond, V)
    with pytest.raises(SelectionError, match="non-negative whole counts"):
        NextTokenLabelTerms(probe, counts - 100, V)
    with pytest.raises(SelectionError, match="top_tokens must be a positive number of tokens, got 0"):
        NextTokenLabelTerms(probe, counts, V, top_tokens=0)
