"""The selection objective, the choice of teachers, and the report (JSON, Markdown, PNG)."""

import dataclasses
import json
import math
from pathlib import Path

import matplotlib
import pytest
import torch
import torch.nn.functional as nnf

from hf_ckptkd.selection import (
    Candidate,
    ProbeTooSmallError,
    SelectionError,
    SelectionReport,
    SnapshotScore,
    SparseClassError,
    TemperatureTooHighError,
    UnknownObjectiveError,
    choose_members,
    select_from_candidates,
)
from hf_ckptkd.selection.objectives import OBJECTIVES, TrivialObjective, objective_named, register_objective


def synthetic_run(n=240, classes=6, epochs=10, d_in=96, d=12, seed=0):
    """A training run in miniature: label information rises early, the features compress later,
    and the outputs sharpen, so an intermediate snapshot carries the most information."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.5 * torch.randn(classes, d_in, generator=g)[y] + torch.randn(n, d_in, generator=g)
    proj = torch.randn(d_in, d, generator=g) / math.sqrt(d_in)
    directions = torch.randn(classes, d, generator=g)
    noise = torch.randn(n, d, generator=g)
    candidates = []
    for e in range(epochs + 1):
        a = e / epochs
        fit, squeeze = 1 - math.exp(-3 * a), max(0.0, a - 0.35) / 0.65
        f = (1 - 0.9 * squeeze) * (x @ proj) + 2.5 * fit * directions[y] + 0.2 * noise
        candidates.append(Candidate(name=f"epoch-{e:04d}", features=f, logits=(0.3 + 0.7 * a) * f @ directions.T,
                                    epoch=e, step=100 * e, path=f"/runs/t/snapshots/epoch-{e:04d}"))
    return x, y, candidates


@pytest.fixture(scope="module")
def run():
    return synthetic_run()


@pytest.fixture(scope="module")
def report(run):
    x, y, candidates = run
    return select_from_candidates(candidates, x, y, k=2, objective="outputs")


# -- the objective ------------------------------------------------------------------------------


def test_init_is_inferred_from_the_flag_the_step_or_the_epoch():
    t = torch.zeros(1, 1)
    assert Candidate("a", t, t, epoch=0, step=0).is_init
    assert Candidate("a", t, t, epoch=0).is_init
    assert not Candidate("a", t, t, epoch=0, step=50).is_init  # a step snapshot within the first epoch
    assert not Candidate("a", t, t, epoch=3, init=False).is_init
    assert Candidate("a", t, t, epoch=3, init=True).is_init
    assert not Candidate("a", t, t).is_init


def test_j_is_the_label_term_plus_beta_times_the_input_term_on_fixed_scales(run, report):
    for s in report.scores:
        assert s.j == pytest.approx(s.i_yp + report.beta * s.i_xp, abs=1e-12)
        assert 0.0 <= s.i_yp <= 1.0 and 0.0 <= s.i_xp <= 1.0
    # No rescaling over the candidates: dropping candidates leaves every other snapshot's J as it was.
    x, y, candidates = run
    fewer = select_from_candidates([c for i, c in enumerate(candidates) if i % 2 == 0], x, y, objective="outputs")
    for s in fewer.scores:
        assert s.j == pytest.approx(report.score(s.name).j, abs=1e-9)
    init = report.score("epoch-0000")
    assert init.init and not init.chosen


def test_the_init_is_never_chosen_even_when_it_scores_best():
    x, y, candidates = synthetic_run()
    candidates[0].logits = 50 * nnf.one_hot(y).float()  # a perfect, confident "initialisation"
    best = max((s for s in select_from_candidates(candidates, x, y).scores), key=lambda s: s.i_yp)
    assert best.name == "epoch-0000"
    report = select_from_candidates(candidates, x, y, beta=0.0, objective="outputs")
    assert "epoch-0000" not in report.selected
    # The exclusion is what keeps it out.
    candidates[0].init = False
    assert select_from_candidates(candidates, x, y, beta=0.0, objective="outputs").selected == ["epoch-0000"]


def test_k1_picks_the_best_candidate_for_each_objective_and_beta(run):
    x, y, candidates = run
    for objective, (ix, iy) in {"outputs": ("i_xp", "i_yp"), "features": ("i_xf", "i_yf")}.items():
        for beta in (0.0, 1.0, 3.0):
            r = select_from_candidates(candidates, x, y, objective=objective, beta=beta)
            eligible = [s for s in r.scores if not s.init]
            best = max(eligible, key=lambda s: s.j)
            assert r.selected == [best.name] and best.chosen and best.rank == 1
            if beta == 0.0:
                assert r.selected == [max(eligible, key=lambda s: getattr(s, iy)).name]
            assert r.ensemble["j"] == pytest.approx(best.j)
            assert (r.ensemble["i_x"], r.ensemble["i_y"]) == (getattr(best, ix), getattr(best, iy))


def test_the_intermediate_snapshot_wins_on_the_synthetic_run(report):
    # The last snapshot is the most accurate, but not the most informative.
    assert report.selected[0] not in ("epoch-0000", "epoch-0010")
    assert report.score("epoch-0010").accuracy >= report.score(report.selected[0]).accuracy


def test_ensembles_score_the_mean_probabilities_with_the_same_j(run, report):
    x, y, candidates = run
    assert report.k == 2 and len(set(report.selected)) == 2 and report.search == "exhaustive"
    assert [s.rank for s in report.selected_scores] == [1, 2]
    assert sum(s.chosen for s in report.scores) == 2
    # Recompute the chosen pair's J by hand from the estimator.
    from hf_ckptkd.selection import Renyi2Estimator
    from hf_ckptkd.selection.kernels import output_embedding

    est = Renyi2Estimator(x, y, num_classes=6)
    members = [c for c in candidates if c.name in report.selected]
    info = est.outputs(torch.stack([output_embedding(c.logits, 4.0) for c in members]).mean(0))
    assert report.ensemble["j"] == pytest.approx(info.y + info.x, abs=1e-6)
    # The exhaustive search found the best pair.
    singles = [c for c in candidates if not c.is_init]
    for i, a in enumerate(singles):
        for b in singles[i + 1:]:
            pair = est.outputs((output_embedding(a.logits, 4.0) + output_embedding(b.logits, 4.0)) / 2)
            assert pair.y + pair.x <= report.ensemble["j"] + 1e-6


def test_greedy_search_beyond_the_exhaustive_limit(run):
    x, y, candidates = run
    exhaustive = select_from_candidates(candidates, x, y, k=3, objective="features")
    greedy = select_from_candidates(candidates, x, y, k=3, objective="features", exhaustive_limit=10)
    assert (exhaustive.search, greedy.search) == ("exhaustive", "greedy")
    assert len(set(greedy.selected)) == 3
    best_single = max((s for s in greedy.scores if not s.init), key=lambda s: s.j)
    assert greedy.selected[0] == best_single.name  # greedy starts from the best single
    assert greedy.ensemble["j"] <= exhaustive.ensemble["j"] + 1e-9


def test_choose_members_greedy_and_exhaustive_on_a_known_function():
    # Pairs score by a table; greedy from the best single (0) cannot reach the best pair (1, 2).
    single = [1.0, 0.9, 0.8, 0.1]
    table = {(0, 1): 1.0, (0, 2): 1.1, (0, 3): 1.2, (1, 2): 2.0, (1, 3): 0.0, (2, 3): 0.0}
    members, search, j = choose_members(single, [0, 1, 2, 3], 2, table.__getitem__)
    assert (members, search, j) == ([1, 2], "exhaustive", 2.0)
    members, search, j = choose_members(single, [0, 1, 2, 3], 2, table.__getitem__, exhaustive_limit=1)
    assert (members, search, j) == ([0, 3], "greedy", 1.2)
    # Eligibility is respected (index 1 plays the excluded initialisation) and members are distinct.
    members, _, _ = choose_members(single, [0, 2, 3], 2, table.__getitem__)
    assert members == [0, 3]
    assert choose_members(single, [2, 3], 1, table.__getitem__)[0] == [2]


def test_unknown_objective(run):
    x, y, candidates = run
    with pytest.raises(UnknownObjectiveError, match="unknown objective 'lowest_loss'; choose one of outputs, features"):
        select_from_candidates(candidates, x, y, objective="lowest_loss")


def test_selection_is_invariant_to_duplicating_the_probe_set():
    # The outputs' label term is a mean cross-entropy, unchanged by duplication; Î(X;P) shrinks by the
    # same factor log2 N / log2 2N for every snapshot, which here leaves the choice as it was.
    x, y, candidates = synthetic_run(n=150)
    doubled = [Candidate(c.name, c.features.repeat(2, 1), c.logits.repeat(2, 1), epoch=c.epoch, step=c.step)
               for c in candidates]
    one = select_from_candidates(candidates, x, y, k=2, objective="outputs")
    two = select_from_candidates(doubled, x.repeat(2, 1), y.repeat(2), k=2, objective="outputs")
    assert two.selected == one.selected
    assert [s.i_yp for s in two.scores] == pytest.approx([s.i_yp for s in one.scores], abs=1e-6)
    factor = math.log2(150) / math.log2(300)
    assert [s.i_xp for s in two.scores] == pytest.approx([factor * s.i_xp for s in one.scores], abs=1e-4)


# -- the report -----------------------------------------------------------------------------------


def test_report_fields(report, run):
    assert report.objective == "outputs" and report.temperature == 4.0 and report.beta == 1.0
    assert report.kappa == 0.25 and report.estimator == "renyi2" and report.probe_size == 240 and report.seed == 0
    assert [s.name for s in report.scores] == [c.name for c in run[2]]
    s = report.scores[3]
    assert (s.epoch, s.step, s.path) == (3, 300, "/runs/t/snapshots/epoch-0003")
    assert 0 <= s.accuracy <= 1
    for s in report.scores:
        assert all(0.0 <= v <= 1.0 for v in (s.i_xf, s.i_yf, s.i_xp, s.i_yp))
    assert report.estimator_options["kappa"] == 0.25
    with pytest.raises(KeyError, match="no snapshot named 'epoch-9999'"):
        report.score("epoch-9999")


def test_save_and_load_round_trip(report, tmp_path):
    report.extra["run"] = "runs/t"
    out = report.save(tmp_path / "selection")
    assert sorted(p.name for p in out.iterdir()) == ["information_plane.png", "selection.json", "table.md"]
    data = json.loads((out / "selection.json").read_text())
    assert data["format_version"] == 2 and data["selected"] == report.selected
    assert data["scores"][0]["name"] == "epoch-0000" and set(data["scores"][0]) >= {
        "epoch", "step", "accuracy", "i_xf", "i_yf", "i_xp", "i_yp", "j", "chosen"}
    loaded = SelectionReport.load(out)
    assert loaded == report
    assert SelectionReport.load(out / "selection.json") == report
    assert isinstance(loaded.scores[0], SnapshotScore)
    with pytest.raises(FileNotFoundError, match="hf-ckptkd select"):
        SelectionReport.load(tmp_path / "nowhere")


def test_newer_format_is_refused(report, tmp_path):
    report.save(tmp_path, plot=False)
    data = json.loads((tmp_path / "selection.json").read_text())
    data["format_version"] = 99
    (tmp_path / "selection.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="upgrade hf-ckptkd"):
        SelectionReport.load(tmp_path)


def test_markdown_table_has_a_row_per_snapshot(report):
    md = report.to_markdown()
    assert ("| snapshot | epoch | step | accuracy | held-out loss | training accuracy | Î(X;F) | Ĩ(Y;F) | Î(X;P) "
            "| Ĩ(Y;P) | Ĩ(Y;P₁) | J | chosen |") in md
    rows = [line for line in md.splitlines() if line.startswith("| epoch-")]
    assert len(rows) == len(report.scores)
    first = report.score(report.selected[0])
    row = next(r for r in rows if r.startswith(f"| {first.name} |"))
    assert "✓ (1)" in row and f"{first.i_xf:.4f}" in row and f"{first.j:.4f}" in row
    assert "init, excluded" in rows[0]
    assert "temperature T = 4" in md and "probe set of 240 examples" in md


def test_information_plane_png(report, tmp_path):
    backend = matplotlib.get_backend()
    path = tmp_path / "plane.png"
    from hf_ckptkd.selection.plot import plot_information_plane

    plot_information_plane(report, path)
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert width > 1500 and height > 600
    assert matplotlib.get_backend() == backend  # drawing leaves pyplot's backend alone


def test_plot_without_epochs_or_init(tmp_path):
    x, y, candidates = synthetic_run(n=120, epochs=4)
    for c in candidates[1:]:
        c.epoch = c.step = None
    report = select_from_candidates(candidates[1:], x, y, k=2, objective="features")
    report.save(tmp_path)
    assert (tmp_path / "information_plane.png").stat().st_size > 10_000


def test_explain(report):
    first = report.selected[0]
    assert first in report.explain(first) and "member 1 of 2" in report.explain(first)
    assert "initialisation" in report.explain("epoch-0000")
    other = next(s.name for s in report.scores if not s.chosen and not s.init)
    assert "was not chosen" in report.explain(other)


# -- the trivial objectives -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run():
    """A shorter synthetic run (init + 5 snapshots on 120 examples) for the trivial objectives."""
    return synthetic_run(n=120, epochs=5)


def _with_eval_accuracy(candidates, values):
    """Copies of the candidates with `metadata["eval_accuracy"]` set from `values` (name -> accuracy)."""
    return [dataclasses.replace(c, metadata={**c.metadata, "eval_accuracy": values[c.name]} if c.name in values
                                else dict(c.metadata)) for c in candidates]


def _assert_every_snapshot_is_scored(report, reference):
    """Whatever the objective, every snapshot has the same information scores as under `reference`."""
    assert [s.name for s in report.scores] == [s.name for s in reference.scores]
    for s, r in zip(report.scores, reference.scores):
        assert (s.i_xf, s.i_yf, s.i_xp, s.i_yp, s.accuracy) == (r.i_xf, r.i_yf, r.i_xp, r.i_yp, r.accuracy)
        assert all(0.0 <= v <= 1.0 for v in (s.i_xf, s.i_yf, s.i_xp, s.i_yp))


def test_final_objective_takes_the_last_snapshots_latest_first(small_run):
    x, y, candidates = small_run
    reference = select_from_candidates(candidates, x, y)
    one = select_from_candidates(candidates, x, y, objective="final")
    two = select_from_candidates(candidates, x, y, k=2, objective="final")
    assert one.selected == ["epoch-0005"] and one.search == "top-k" and one.objective == "final"
    assert two.selected == ["epoch-0005", "epoch-0004"] and two.search == "top-k"
    assert [s.rank for s in two.selected_scores] == [1, 2] and sum(s.chosen for s in two.scores) == 2
    assert not two.score("epoch-0000").chosen
    # J is the position in training order; the ensemble's J is the members' mean.
    assert [s.j for s in one.scores] == [float(i) for i in range(len(candidates))]
    assert two.ensemble["members"] == two.selected and two.ensemble["j"] == pytest.approx(4.5)
    for report in (one, two):
        _assert_every_snapshot_is_scored(report, reference)
    assert "chosen by the last snapshot(s) in training order" in one.explain("epoch-0005")


def test_final_objective_never_takes_the_init_even_when_it_is_last(small_run):
    x, y, candidates = small_run
    reordered = candidates[1:] + candidates[:1]  # the initialisation last in the list
    assert select_from_candidates(reordered, x, y, objective="final").selected == ["epoch-0005"]


def test_accuracy_objective_prefers_the_recorded_eval_accuracy(small_run):
    x, y, candidates = small_run
    reference = select_from_candidates(candidates, x, y)
    probe_best = max((s for s in reference.scores if not s.init), key=lambda s: s.accuracy).name
    assert probe_best == "epoch-0005"
    # Recorded validation accuracies (the initialisation has none, as in a real run) that rank another snapshot first.
    recorded = {"epoch-0001": 0.50, "epoch-0002": 0.93, "epoch-0003": 0.71, "epoch-0004": 0.80, "epoch-0005": 0.85}
    report = select_from_candidates(_with_eval_accuracy(candidates, recorded), x, y, objective="accuracy")
    assert report.selected == ["epoch-0002"] != [probe_best]
    assert report.search == "top-k" and report.objective == "accuracy"
    assert {s.name: s.j for s in report.scores if not s.init} == recorded
    _assert_every_snapshot_is_scored(report, reference)
    two = select_from_candidates(_with_eval_accuracy(candidates, recorded), x, y, k=2, objective="accuracy")
    assert two.selected == ["epoch-0002", "epoch-0005"]
    assert two.ensemble["j"] == pytest.approx((0.93 + 0.85) / 2)

    # One snapshot without a recorded accuracy: every J falls back to the probe accuracy.
    partial = dict(recorded)
    del partial["epoch-0003"]
    fallback = select_from_candidates(_with_eval_accuracy(candidates, partial), x, y, objective="accuracy")
    assert fallback.selected == [probe_best]
    assert [s.j for s in fallback.scores] == [s.accuracy for s in fallback.scores]
    # No recorded accuracies at all: the same.
    assert select_from_candidates(candidates, x, y, objective="accuracy").selected == [probe_best]


def test_values_from_scores_reproduce_every_objectives_j(small_run):
    x, y, candidates = small_run
    recorded = {"epoch-0001": 0.50, "epoch-0002": 0.93, "epoch-0003": 0.71, "epoch-0004": 0.80, "epoch-0005": 0.85}
    with_eval = _with_eval_accuracy(candidates, recorded)
    runs = [("outputs", candidates, 1.0), ("outputs", candidates, 2.5), ("features", candidates, 1.0),
            ("features", candidates, 0.5), ("accuracy", candidates, 1.0), ("accuracy", with_eval, 1.0),
            ("final", candidates, 1.0)]
    for objective, cands, beta in runs:
        report = select_from_candidates(cands, x, y, objective=objective, beta=beta)
        scores = json.loads(json.dumps(report.to_dict()))["scores"]  # as read back from selection.json
        j = OBJECTIVES[objective].values_from_scores(scores, beta=beta)
        assert list(j) == [s.name for s in report.scores if not s.init]
        best = max(j, key=lambda name: (j[name], -list(j).index(name)))
        assert best == report.selected[0], (objective, beta)
        assert j == pytest.approx({s.name: s.j for s in report.scores if not s.init}, abs=1e-12), (objective, beta)


def test_values_from_scores_reproduce_the_final_objectives_values(small_run):
    x, y, candidates = small_run
    report = select_from_candidates(candidates, x, y, objective="final")
    j = objective_named("final").values_from_scores(report.to_dict()["scores"])
    assert j == {s.name: s.j for s in report.scores if not s.init}


class EarliestObjective(TrivialObjective):
    """A new objective as a user adds one: the earliest snapshot(s)."""

    name = "earliest"
    summary = "the earliest snapshot(s) in training order (J = minus the position)"

    def plot_label(self, temperature, beta):
        return "the earliest snapshot"

    def ranking(self, metadata, init, probe_accuracy, probe_loss):
        return [-float(i) for i in range(len(metadata))]


def test_a_registered_objective_is_used_everywhere_an_objective_is_named(small_run, tmp_path):
    x, y, candidates = small_run
    with pytest.raises(UnknownObjectiveError, match="unknown objective 'earliest'"):
        select_from_candidates(candidates, x, y, objective="earliest")
    register_objective(EarliestObjective())
    try:
        report = select_from_candidates(candidates, x, y, objective="earliest", k=2)
        assert report.selected == ["epoch-0001", "epoch-0002"] and report.search == "top-k"
        assert "the earliest snapshot(s) in training order" in report.to_markdown()
        assert "is chosen by the earliest snapshot(s)" in report.explain("epoch-0001")
        report.save(tmp_path)  # the plot names it too
        assert (tmp_path / "information_plane.png").is_file()
        scores = report.to_dict()["scores"]
        assert OBJECTIVES["earliest"].values_from_scores(scores) == {s.name: s.j for s in report.scores if not s.init}
    finally:
        OBJECTIVES.pop("earliest")


# -- the accuracy warning -------------------------------------------------------------------------


def _poor_last_snapshot(candidates):
    """The run with its last snapshot's outputs replaced by the initialisation's (an inaccurate final)."""
    return candidates[:-1] + [dataclasses.replace(candidates[-1], logits=candidates[0].logits.clone())]


def test_a_chosen_snapshot_far_below_the_best_accuracy_is_flagged(small_run):
    x, y, candidates = small_run
    poor = _poor_last_snapshot(candidates)
    report = select_from_candidates(poor, x, y, k=2, objective="final")
    assert report.selected == ["epoch-0005", "epoch-0004"] and report.accuracy_margin == 0.05
    chosen, best = report.score("epoch-0005"), max((s for s in report.scores if not s.init), key=lambda s: s.accuracy)
    assert best.name == "epoch-0004" and best.accuracy - chosen.accuracy > 0.5
    assert len(report.warnings) == 1  # epoch-0004, the best, is chosen too but not flagged
    warning = report.warnings[0]
    assert warning.startswith(f"epoch-0005 has probe accuracy {chosen.accuracy:.1%}, ")
    assert f"{100 * (best.accuracy - chosen.accuracy):.1f} points below the best candidate" in warning
    assert f"(epoch-0004, {best.accuracy:.1%}; margin 5 points)" in warning
    assert "objective='accuracy'" in warning
    md = report.to_markdown()
    assert f"> **Warning:** {warning}" in md.splitlines()
    assert md.index("> **Warning:**") < md.index("| snapshot |")  # above the table
    # The warnings are part of the saved report.
    assert SelectionReport.from_dict(json.loads(json.dumps(report.to_dict()))).warnings == report.warnings


def test_the_warning_follows_the_margin(small_run):
    x, y, candidates = small_run
    poor = _poor_last_snapshot(candidates)
    relaxed = select_from_candidates(poor, x, y, objective="final", accuracy_margin=1.0)
    assert relaxed.selected == ["epoch-0005"] and relaxed.warnings == [] and relaxed.accuracy_margin == 1.0
    assert "**Warning:**" not in relaxed.to_markdown()
    # A margin of 0 flags any choice below the best accuracy; the best itself never is.
    assert select_from_candidates(candidates, x, y, objective="accuracy", accuracy_margin=0.0).warnings == []
    strict = select_from_candidates(candidates, x, y, k=2, objective="final", accuracy_margin=0.0)
    assert strict.selected == ["epoch-0005", "epoch-0004"]
    assert [w.split(" ")[0] for w in strict.warnings] == ["epoch-0004"]
    assert "margin 0 points" in strict.warnings[0]
    for margin in (-0.01, 1.5, math.nan):
        with pytest.raises(SelectionError, match=r"accuracy_margin must lie in \[0, 1\]"):
            select_from_candidates(candidates, x, y, accuracy_margin=margin)


def test_an_information_objective_is_flagged_too(small_run):
    # On the features, the early snapshot whose features have not yet compressed wins, 10 points below the best.
    x, y, candidates = small_run
    report = select_from_candidates(candidates, x, y, objective="features")
    chosen = report.score(report.selected[0])
    best = max((s for s in report.scores if not s.init), key=lambda s: s.accuracy)
    assert best.accuracy - chosen.accuracy > report.accuracy_margin
    assert [w.split(" ")[0] for w in report.warnings] == [chosen.name]


# -- bad probes and temperatures ------------------------------------------------------------------


def _random_candidates(n, classes, count=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Candidate(f"epoch-{e:04d}", torch.randn(n, 4, generator=g), torch.randn(n, classes, generator=g),
                      epoch=e, step=10 * e) for e in range(1, count + 1)]


def test_a_probe_with_fewer_examples_than_classes_is_refused():
    x, y = torch.randn(8, 16), torch.arange(8)
    with pytest.raises(ProbeTooSmallError,
                       match=r"the probe set has 8 examples but the snapshots predict 10 classes.*max_probe_samples"):
        select_from_candidates(_random_candidates(8, 10), x, y)
    assert issubclass(ProbeTooSmallError, SelectionError)


def test_a_class_with_a_single_probe_example_is_named():
    x, y, candidates = synthetic_run(n=60, epochs=2)
    keep = [i for i in range(60) if int(y[i]) != 3] + [3]  # class 3 keeps one example (index 3)
    keep = torch.tensor(sorted(keep))
    subset = [dataclasses.replace(c, features=c.features[keep], logits=c.logits[keep]) for c in candidates]
    with pytest.raises(SparseClassError, match=r"class\(es\) 3 have a single example in the probe set of 51.*"
                                               r"max_probe_samples"):
        select_from_candidates(subset, x[keep], y[keep])
    keep = torch.tensor([i for i in range(60) if int(y[i]) not in (2, 4)] + [2, 4])
    subset = [dataclasses.replace(c, features=c.features[keep], logits=c.logits[keep]) for c in candidates]
    with pytest.raises(SparseClassError, match=r"class\(es\) 2, 4 have a single example"):
        select_from_candidates(subset, x[keep], y[keep])
    assert issubclass(SparseClassError, SelectionError)


def test_a_temperature_that_flattens_every_output_is_refused(small_run):
    x, y, candidates = small_run
    with pytest.raises(TemperatureTooHighError, match=r"temperature T=1e\+12 is too high.*uniform"):
        select_from_candidates(candidates, x, y, temperature=1e12)
    with pytest.raises(TemperatureTooHighError, match="too high"):
        select_from_candidates(candidates, x, y, objective="final", temperature=1e12)
    assert issubclass(TemperatureTooHighError, SelectionError)
    # A high but usable temperature still works.
    assert select_from_candidates(candidates, x, y, temperature=100.0).selected


def test_the_default_is_the_selector_with_the_lowest_worst_case_regret_measured(run):
    # docs/evidence.md, "Memorisation cells": over the rescored cells "held_out" has the lowest worst-case
    # regret (benchmarks/results/selection_studies.json says which); a change of default must come with new
    # evidence there.
    from hf_ckptkd.selection import DEFAULT_OBJECTIVE

    measured = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" /
                           "selection_studies.json").read_text())
    worst = {o: max(c["selectors"][o]["regret_pp"] for c in measured["cells"] if c.get("rescored"))
             for o in measured["cells"][0]["selectors"]}
    assert DEFAULT_OBJECTIVE == measured["lowest_worst_case"] == min(worst, key=worst.get) == "held_out"
    x, y, candidates = run
    report = select_from_candidates(candidates, x, y)
    trained = [s for s in report.scores if not s.init]
    assert report.objective == "held_out"
    assert report.selected == [max(trained, key=lambda s: (s.i_yp1 + s.i_xp, -s.step)).name]
