"""The information-plane figure of a selection (matplotlib, Agg backend; nothing is shown).

The figure is a bare `matplotlib.figure.Figure` drawn on an Agg canvas, so rendering neither uses
nor changes pyplot's global backend (safe inside notebooks and GUI sessions).

Left: Î(X;F) against Ĩ(Y;F), one point per snapshot joined in training order and coloured by epoch,
the chosen teachers ringed and labelled with their rank, the initialisation marked apart.
Right: the objective J of every candidate and the probe accuracy of every snapshot against epoch
(accuracy on a twin axis), the chosen teachers ringed, the ensemble's J as a dashed line when k > 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .objectives import OBJECTIVES

# The report is passed in, never imported: report.py imports this module to draw its plot.
CHOSEN_COLOR = "#d62728"
J_COLOR = "#1f77b4"
ACC_COLOR = "#ff7f0e"


def _training_axis(report: Any) -> tuple[list[float], str]:
    """Epochs when every snapshot has one; else global steps; else the position in training order."""
    if all(s.epoch is not None for s in report.scores):
        return [float(s.epoch) for s in report.scores], "epoch"
    if all(s.step is not None for s in report.scores):
        return [float(s.step) for s in report.scores], "global step"
    return [float(i) for i in range(len(report.scores))], "snapshot (training order)"


def _padded(values: list[float], pad: float = 0.08, minimum: float = 0.05) -> tuple[float, float]:
    """Axis limits around normalised values: padded, at least `minimum` wide, kept near [0, 1]."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, minimum)
    mid = min(max((lo + hi) / 2, span / 2), 1 - span / 2)
    return max(mid - span / 2 - pad * span, -0.02), min(mid + span / 2 + pad * span, 1.02)


def plot_information_plane(report: Any, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Render `report` to a PNG at `path`; returns the path."""
    # One figure drawn top to bottom (the plane, then J and accuracy against training): long, but
    # each block only adds artists to the axes above it, and splitting it would pass them all around.
    scores = report.scores
    t, t_label = _training_axis(report)
    xs = [s.i_xf for s in scores]
    ys = [s.i_yf for s in scores]
    candidates = [i for i, s in enumerate(scores) if not s.init]
    inits = [i for i, s in enumerate(scores) if s.init]
    chosen = [i for i, s in enumerate(scores) if s.chosen]

    fig = Figure(figsize=(14, 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax, ax_j = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1]})

    # -- left: the information plane ---------------------------------------------------------------
    ax.plot(xs, ys, color="0.6", lw=1.2, zorder=1)
    every = max(1, len(scores) // 25)
    for i in range(0, len(scores) - 1, every):  # small arrowheads show the direction of training
        ax.annotate("", xy=((xs[i] + xs[i + 1]) / 2, (ys[i] + ys[i + 1]) / 2), xytext=(xs[i], ys[i]),
                    arrowprops={"arrowstyle": "-|>", "color": "0.6", "lw": 1.0, "mutation_scale": 10},
                    zorder=1).set_in_layout(False)
    norm = Normalize(min(t), max(t) if max(t) > min(t) else min(t) + 1)
    sc = ax.scatter([xs[i] for i in candidates], [ys[i] for i in candidates], c=[t[i] for i in candidates],
                    cmap="viridis", norm=norm, s=55, edgecolors="white", linewidths=0.6, zorder=3)
    if inits:
        ax.scatter([xs[i] for i in inits], [ys[i] for i in inits], c=[t[i] for i in inits], cmap="viridis",
                   norm=norm, marker="s", s=60, edgecolors="black", linewidths=0.9, zorder=3)
    if chosen:
        ax.scatter([xs[i] for i in chosen], [ys[i] for i in chosen], s=260, facecolors="none",
                   edgecolors=CHOSEN_COLOR, linewidths=2.2, zorder=4)
        x_mid = (min(xs) + max(xs)) / 2
        for i in chosen:  # labels point inwards (inside the axes), alternately above and below
            right, above = xs[i] > x_mid, (scores[i].rank or 1) % 2 == 1
            label = ax.annotate(f"#{scores[i].rank} {scores[i].name}", (xs[i], ys[i]),
                                xytext=(-12 if right else 12, 11 if above else -11), textcoords="offset points",
                                ha="right" if right else "left", va="bottom" if above else "top",
                                color=CHOSEN_COLOR, fontsize=9, fontweight="bold", zorder=3.5,
                                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.8})
            label.set_in_layout(False)
    for i, text in ((0, "start"), (len(scores) - 1, "end")):
        if len(scores) > 1 and not scores[i].chosen:
            ax.annotate(text, (xs[i], ys[i]), xytext=(-8, -14), textcoords="offset points", fontsize=8,
                        color="0.35", ha="right").set_in_layout(False)
    ax.set_xlim(*_padded(xs))
    ax.set_ylim(*_padded(ys))
    fig.colorbar(sc, ax=ax, pad=0.01).set_label(t_label)
    ax.set_xlabel("Î(X;F): information the features keep about the input (normalised)")
    ax.set_ylabel("Ĩ(Y;F): label information of the features (share of H(Y))")
    ax.set_title("Information plane of the penultimate features")
    ax.grid(alpha=0.25)
    handles = [
        Line2D([], [], color="0.6", marker="o", markerfacecolor="tab:green", markeredgecolor="white", lw=1.2,
               label="snapshots (training order)"),
        Line2D([], [], ls="none", marker="o", markersize=13, markerfacecolor="none", markeredgecolor=CHOSEN_COLOR,
               markeredgewidth=2.2, label="chosen (#rank)"),
    ]
    if inits:
        handles.append(Line2D([], [], ls="none", marker="s", markerfacecolor="0.8", markeredgecolor="black",
                              label="initialisation (excluded)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=9, frameon=False)

    # -- right: J and accuracy against training time ------------------------------------------------
    tj = [t[i] for i in candidates]
    jj = [scores[i].j for i in candidates]
    ax_j.plot(tj, jj, color=J_COLOR, marker="o", ms=4, lw=1.6, label=f"J ({report.objective} objective)")
    if chosen:
        ax_j.scatter([t[i] for i in chosen], [scores[i].j for i in chosen], s=200, facecolors="none",
                     edgecolors=CHOSEN_COLOR, linewidths=2.2, zorder=4, label="chosen teacher")
    if report.k > 1 and report.ensemble.get("j") is not None:
        ax_j.axhline(report.ensemble["j"], color=J_COLOR, ls="--", lw=1.2,
                     label=f"J of the {report.k}-teacher ensemble")
    ax_j.set_xlabel(t_label)
    if all(v.is_integer() for v in t):
        ax_j.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_j.set_ylabel("J (" + report.objective + ")", color=J_COLOR)
    ax_j.tick_params(axis="y", colors=J_COLOR)
    ax_j.grid(alpha=0.25)
    ax_acc = ax_j.twinx()
    ax_acc.plot(t, [100 * s.accuracy for s in scores], color=ACC_COLOR, marker="s", ms=3.5, lw=1.4, ls="--",
                label="probe accuracy")
    ax_acc.set_ylabel("accuracy on the probe set (%)", color=ACC_COLOR)
    ax_acc.tick_params(axis="y", colors=ACC_COLOR)
    title = "Objective and accuracy during training"
    if inits:
        title += "\n(J of the initialisation not shown: it is excluded)"
    ax_j.set_title(title)
    h1, l1 = ax_j.get_legend_handles_labels()
    h2, l2 = ax_acc.get_legend_handles_labels()
    ax_j.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9,
                frameon=False)

    objective = OBJECTIVES.get(report.objective)
    where = objective.plot_label(report.temperature, report.beta) if objective else report.objective
    fig.suptitle(f"Teacher selection: {', '.join(report.selected)}  —  {where}, "
                 f"k={report.k}, estimator {report.estimator} (κ={report.kappa:g}), probe N={report.probe_size}",
                 fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
