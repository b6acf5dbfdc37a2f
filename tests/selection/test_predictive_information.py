"""The label information of the outputs as they are (`predictive_label_bits`): the term that sees a
memorising teacher, where the recalibrated term (`outputs_label_bits`) cannot, on controlled cases."""

import math

import pytest
import torch

from hf_ckptkd.selection.label_information import outputs_label_bits, predictive_label_bits, shannon_entropy_bits

N, C = 4000, 10


def _posterior(seed: int = 0, concentration: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities p(y|x) of N examples and labels drawn from them: a known Bayes posterior."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.distributions.Dirichlet(torch.full((C,), concentration)).sample((N,))
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return probs, labels


def test_the_bayes_posterior_keeps_what_the_recalibrated_bound_finds():
    probs, labels = _posterior()
    as_is = predictive_label_bits(probs.log(), labels)
    recalibrated = outputs_label_bits(probs, labels)
    assert as_is == pytest.approx(recalibrated, abs=0.01)  # the posterior is calibrated: s ≈ 1
    assert 0.5 < as_is < shannon_entropy_bits(labels)


@pytest.mark.parametrize("sharpening", [2.0, 4.0, 8.0])
def test_overconfidence_lowers_it_while_the_recalibrated_term_does_not_move(sharpening):
    # The same argmax (same accuracy) with logits scaled up: a teacher whose outputs have become
    # near one-hot. Recalibration divides the scale back out; the term as it is does not.
    probs, labels = _posterior()
    calibrated = predictive_label_bits(probs.log(), labels)
    sharp = probs.log() * sharpening
    assert predictive_label_bits(sharp, labels) < calibrated - 0.1
    assert outputs_label_bits(torch.softmax(sharp, dim=1), labels) == pytest.approx(
        outputs_label_bits(probs, labels), abs=1e-6)


def test_it_falls_as_the_sharpening_grows():
    probs, labels = _posterior(seed=1)
    values = [predictive_label_bits(probs.log() * s, labels) for s in (1.0, 2.0, 4.0, 8.0, 16.0)]
    assert values == sorted(values, reverse=True)


def test_uniform_outputs_carry_nothing_and_confident_mistakes_go_below_zero():
    labels = torch.arange(N) % C
    assert predictive_label_bits(torch.zeros(N, C), labels) == pytest.approx(0.0, abs=1e-9)
    wrong = torch.nn.functional.one_hot((labels + 1) % C, C).double() * 20.0
    assert predictive_label_bits(wrong, labels) < -10.0  # the bound is honest: worse than the class frequencies


def test_monotone_in_a_growing_share_of_corrupted_labels():
    probs, labels = _posterior(seed=2)
    g = torch.Generator().manual_seed(3)
    values = []
    for share in (0.0, 0.2, 0.4, 0.6):
        noisy = labels.clone()
        hit = torch.rand(N, generator=g) < share
        noisy[hit] = torch.randint(0, C, (int(hit.sum()),), generator=g)
        values.append(predictive_label_bits(probs.log(), noisy))
    assert values == sorted(values, reverse=True)


def test_in_bits_against_a_hand_computed_case():
    logits = torch.tensor([[math.log(0.5), math.log(0.5)], [math.log(0.75), math.log(0.25)]])
    labels = torch.tensor([0, 1])  # H(Y) = 1 bit
    cross_entropy = (-math.log2(0.5) - math.log2(0.25)) / 2
    assert predictive_label_bits(logits, labels) == pytest.approx(1.0 - cross_entropy)
