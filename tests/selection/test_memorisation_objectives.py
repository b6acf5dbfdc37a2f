"""The objectives that can prefer a less accurate snapshot: `held_out` (the outputs' label
information as they are) and the `loss` baseline, on snapshots built to look like a memorising run."""

import pytest
import torch

from hf_ckptkd.selection import Candidate, SelectionReport, select_from_candidates
from hf_ckptkd.selection.report import SnapshotScore, memorisation_signs

N, C, D = 600, 6, 16


def _probe():
    g = torch.Generator().manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.full((C,), 0.7)).sample((N,))
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    inputs = torch.randn(N, D, generator=g) + torch.nn.functional.one_hot(labels, C).repeat(1, D // C + 1)[:, :D]
    return inputs, labels, probs


def _snapshot(name, epoch, logits, metadata=None):
    features = torch.cat([logits, torch.randn(N, 4, generator=torch.Generator().manual_seed(epoch))], dim=1)
    return Candidate(name, features.float(), logits.float(), epoch=epoch, step=10 * epoch, metadata=metadata or {})


def _memorising_run(metadata=True):
    """epoch 2: the Bayes posterior; epoch 4: the same ranking of classes made near one-hot (what a
    memorising teacher's outputs become) and a little more accurate. Its held-out loss is far higher."""
    inputs, labels, probs = _probe()
    calibrated = probs.log()
    sharp = calibrated * 8.0
    # One more right answer for the sharp snapshot: higher accuracy, as a memorising teacher's creeps up.
    wrong = torch.nonzero(sharp.argmax(dim=1) != labels).flatten()[:5]
    sharp[wrong, labels[wrong]] = sharp[wrong].max(dim=1).values + 1.0
    early = _snapshot("epoch-0002", 2, calibrated, {"eval_loss": 1.1, "eval_accuracy": 0.60} if metadata else None)
    late = _snapshot("epoch-0004", 4, sharp, {"eval_loss": 2.9, "eval_accuracy": 0.61} if metadata else None)
    return inputs, labels, [early, late]


def test_held_out_prefers_the_calibrated_snapshot_that_accuracy_and_the_recalibrated_terms_pass_over():
    inputs, labels, candidates = _memorising_run()
    picks = {o: select_from_candidates(candidates, inputs, labels, objective=o).selected[0]
             for o in ("held_out", "loss", "accuracy", "final")}
    assert picks == {"held_out": "epoch-0002", "loss": "epoch-0002", "accuracy": "epoch-0004",
                     "final": "epoch-0004"}
    report = select_from_candidates(candidates, inputs, labels, objective="held_out")
    early, late = report.scores
    assert early.i_yp1 > 0 > late.i_yp1            # the sharp outputs predict held-out labels worse than frequencies
    assert late.accuracy > early.accuracy
    assert early.probe_loss < late.probe_loss
    # The recalibrated label term cannot tell them apart by calibration: within 0.05 of each other.
    assert abs(early.i_yp - late.i_yp) < 0.05


def test_held_out_scores_an_ensemble_on_its_mean_probabilities():
    inputs, labels, candidates = _memorising_run()
    report = select_from_candidates(candidates, inputs, labels, objective="held_out", k=2)
    assert sorted(report.selected) == ["epoch-0002", "epoch-0004"]
    # The mean of a calibrated and an overconfident member is better calibrated than the overconfident one alone.
    assert report.scores[1].i_yp1 < report.ensemble["i_y"]


def test_loss_reads_the_recorded_eval_loss():
    inputs, labels, candidates = _memorising_run()
    # Recorded losses that disagree with the probe: the recorded ones decide.
    candidates[0].metadata["eval_loss"], candidates[1].metadata["eval_loss"] = 3.0, 1.0
    report = select_from_candidates(candidates, inputs, labels, objective="loss")
    assert report.selected == ["epoch-0004"]
    assert not any("objective 'loss'" in w for w in report.warnings)


def test_loss_without_recorded_losses_ranks_by_the_probe_and_says_so(tmp_path):
    inputs, labels, candidates = _memorising_run(metadata=False)
    report = select_from_candidates(candidates, inputs, labels, objective="loss")
    assert report.selected == ["epoch-0002"]
    note = [w for w in report.warnings if "objective 'loss'" in w]
    assert note and "eval_strategy" in note[0] and "probe's cross-entropy" in note[0]
    report.save(tmp_path)
    assert "eval_strategy" in (tmp_path / "table.md").read_text()
    assert SelectionReport.load(tmp_path).scores[1].probe_loss == pytest.approx(report.scores[1].probe_loss)


def _scores(final_loss, final_training_accuracy, final_accuracy=0.40):
    """Two snapshots' scores as a report holds them: epoch 6 at the lowest held-out loss, then epoch 30."""
    def score(name, epoch, accuracy, loss, training):
        return SnapshotScore(name, epoch, 10 * epoch, accuracy, 0.5, 0.5, 0.1, 0.4, 0.5,
                             metadata={"eval_loss": loss, "training_accuracy": training})
    return [score("epoch-0006", 6, 0.52, 1.50, 0.51), score("epoch-0030", 30, final_accuracy, final_loss,
                                                          final_training_accuracy)]


@pytest.mark.parametrize("training_accuracy", [1.0, 0.925])
def test_the_signs_of_memorisation_name_the_lowest_loss_and_the_training_fit(training_accuracy, tmp_path):
    # 92.5 % is what a teacher reaches on labels 40 % of which are wrong: it has learnt them by heart too.
    scores = _scores(3.16, training_accuracy)
    signs = memorisation_signs(scores)
    assert signs and "1.500 (epoch-0006)" in signs and "3.160 (epoch-0030)" in signs and f"{training_accuracy:.1%}" in signs
    report = SelectionReport(selected=["epoch-0006"], scores=scores, objective="held_out", k=1, temperature=4.0,
                             beta=1.0, kappa=0.25, estimator="renyi2", probe_size=100, seed=0)
    report.save(tmp_path)
    assert "**Memorisation:**" in (tmp_path / "table.md").read_text()


@pytest.mark.parametrize("final_loss, training_accuracy", [
    (1.60, 1.0),    # the held-out loss rose by less than 10 %
    (3.16, 0.60),   # the training error (40 %) is not below half the held-out error (60 %): it has not fitted its data
])
def test_no_signs_of_memorisation_without_both_a_loss_rise_and_a_training_fit(final_loss, training_accuracy):
    assert memorisation_signs(_scores(final_loss, training_accuracy)) is None


def test_without_a_training_probe_the_loss_rise_alone_is_the_sign():
    scores = _scores(3.16, None)
    assert memorisation_signs(scores) and "training accuracy" not in memorisation_signs(scores)
