"""The selection objective, the choice of teachers, and the report (JSON, Markdown, PNG)."""

import json
import math

import matplotlib
import pytest
import torch
import torch.nn.functional as nnf

from hf_ckptkd.selection import (
    Candidate,
    SelectionReport,
    SnapshotScore,
    UnknownObjectiveError,
    choose_members,
    select_from_candidates,
)


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
    return select_from_candidates(candidates, x, y, k=2)


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
    fewer = select_from_candidates([c for i, c in enumerate(candidates) if i % 2 == 0], x, y)
    for s in fewer.scores:
        assert s.j == pytest.approx(report.score(s.name).j, abs=1e-9)
    init = report.score("epoch-0000")
    assert init.init and not init.chosen


def test_the_init_is_never_chosen_even_when_it_scores_best():
    x, y, candidates = synthetic_run()
    candidates[0].logits = 50 * nnf.one_hot(y).float()  # a perfect, confident "initialisation"
    best = max((s for s in select_from_candidates(candidates, x, y).scores), key=lambda s: s.i_yp)
    assert best.name == "epoch-0000"
    report = select_from_candidates(candidates, x, y, beta=0.0)
    assert "epoch-0000" not in report.selected
    # The exclusion is what keeps it out.
    candidates[0].init = False
    assert select_from_candidates(candidates, x, y, beta=0.0).selected == ["epoch-0000"]


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
    from hf_ckptkd.selection.estimators import output_embedding

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
    with pytest.raises(UnknownObjectiveError, match="unknown objective 'loss'; choose one of outputs, features"):
        select_from_candidates(candidates, x, y, objective="loss")


def test_selection_is_invariant_to_duplicating_the_probe_set():
    # The outputs' label term is a mean cross-entropy, unchanged by duplication; Î(X;P) shrinks by the
    # same factor log2 N / log2 2N for every snapshot, which here leaves the choice as it was.
    x, y, candidates = synthetic_run(n=150)
    doubled = [Candidate(c.name, c.features.repeat(2, 1), c.logits.repeat(2, 1), epoch=c.epoch, step=c.step)
               for c in candidates]
    one = select_from_candidates(candidates, x, y, k=2)
    two = select_from_candidates(doubled, x.repeat(2, 1), y.repeat(2), k=2)
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
    assert "| snapshot | epoch | step | accuracy | Î(X;F) | Ĩ(Y;F) | Î(X;P) | Ĩ(Y;P) | J | chosen |" in md
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
