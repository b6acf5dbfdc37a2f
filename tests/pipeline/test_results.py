"""The pipeline's report: paired differences between teachers, with 95 % intervals over seeds."""

import math

import pytest

from hf_ckptkd.pipeline.results import _table, paired_difference


def runs(*accuracies, start_seed=0):
    return [{"seed": start_seed + i, "test_accuracy": a} for i, a in enumerate(accuracies)]


def test_paired_difference_is_the_mean_per_seed_difference_with_a_t_interval():
    final = runs(0.80, 0.70, 0.90)
    other = runs(0.81, 0.72, 0.90)  # +1, +2, 0 points
    d = paired_difference(other, final)
    assert d["seeds"] == 3 and d["mean_pp"] == pytest.approx(1.0)
    sd = math.sqrt(((1 - 1) ** 2 + (2 - 1) ** 2 + (0 - 1) ** 2) / 2)
    half = 4.303 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert d["ci95_pp"] == pytest.approx([1.0 - half, 1.0 + half])
    assert d["verdict"] == "no difference"  # the interval [-1.48, 3.48] holds zero


def test_pairing_removes_the_seed_effect_that_unpaired_means_keep():
    # Seeds differ by 10 points, the teacher adds exactly 0.5 to each: paired, that is certain.
    final = runs(0.60, 0.70, 0.80, 0.90)
    better = runs(0.605, 0.705, 0.8051, 0.9049)
    d = paired_difference(better, final)
    assert d["verdict"] == "better" and d["ci95_pp"][0] > 0
    worse = paired_difference(final, better)
    assert worse["verdict"] == "worse" and worse["ci95_pp"][1] < 0


def test_only_shared_seeds_count_and_one_seed_has_no_interval():
    final = runs(0.8, 0.8)
    assert paired_difference(runs(0.9), final) is None
    d = paired_difference(runs(0.9, 0.9, 0.9, start_seed=1), final)  # seeds 1, 2, 3 against 0, 1: one shared
    assert d is None
    d = paired_difference(runs(0.85, 0.86, 0.9), runs(0.8, 0.8, 0.8, 0.8))
    assert d["seeds"] == 3


def _row(description: str, seeds: int, std: float) -> dict:
    return {"description": description, "teacher_epochs": [], "teacher_test_accuracy": None, "seeds": seeds,
            "student_test_accuracy": 0.786, "student_test_std": std, "gain_vs_final_pp": 0.0,
            "student_test_best_of_last": 0.79, "student_test_best_of_last_std": std}


def test_one_seed_shows_no_spread_instead_of_zero():
    table = _table([_row("one seed", 1, 0.0), _row("two seeds", 2, 0.0123)], {})
    one = [line for line in table.splitlines() if line.startswith("| one seed |")]
    two = [line for line in table.splitlines() if line.startswith("| two seeds |")]
    # Both the final-epoch table and the best-of-last table: a single seed has no standard deviation to show.
    assert len(one) == 2 and all("78.60 ± –" in line or "79.00 ± –" in line for line in one)
    assert "± 0.00" not in table
    assert "78.60 ± 1.23" in two[0] and "79.00 ± 1.23" in two[1]
