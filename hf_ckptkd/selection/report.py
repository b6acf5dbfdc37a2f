"""The selection report: machine-readable (`selection.json`), human-readable (`table.md`) and
visual (`information_plane.png`).

`SelectionReport.save(dir)` writes all three; `SelectionReport.load(dir)` reads the JSON back into
an equal report. The JSON holds every field of the report and its per-snapshot scores, plus
`format_version`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..files import write_text_atomic
from .objectives import OBJECTIVES, Objective, describe
from .plot import plot_information_plane

SELECTION_JSON = "selection.json"
TABLE_MD = "table.md"
PLANE_PNG = "information_plane.png"
# 2: Ĩ(Y;·) became a variational bound normalised by H(Y), J lost its min–max rescaling, and the
# report gained `warnings`, `accuracy_margin` and `label_entropy_bits`.
FORMAT_VERSION = 2


@dataclass
class SnapshotScore:
    """One snapshot's scores on the probe set. Information values are normalised to [0, 1].

    `i_yf`, `i_yp` are the label terms Ĩ(Y;F), Ĩ(Y;P) (shares of H(Y)); `i_xf`, `i_xp` the input
    terms Î(X;F), Î(X;P). `j` is the snapshot's own objective value. `rank` is its 1-based position
    in `SelectionReport.selected`, None when not chosen.
    """

    name: str
    epoch: float | None
    step: int | None
    accuracy: float
    i_xf: float
    i_yf: float
    i_xp: float
    i_yp: float
    j: float
    chosen: bool = False
    rank: int | None = None
    # Ĩ(Y;P₁): the label information of the outputs as they are (T = 1, not recalibrated; may be
    # negative), and the probe's cross-entropy in nats; None in reports written before they existed.
    i_yp1: float | None = None
    probe_loss: float | None = None
    init: bool = False
    path: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# A final snapshot whose held-out loss is this much above the run's lowest shows the sign of memorisation,
# when its training error is at most this share of its held-out error. A share, not an accuracy near
# 100 %: a teacher that learns wrong labels by heart (40 % noise, 92 % training accuracy) has memorised
# as surely as one at 100 % on clean labels.
MEMORISATION_LOSS_RISE = 0.10
MEMORISED_ERROR_SHARE = 0.5


def held_out_loss(score: SnapshotScore) -> float | None:
    """The held-out loss the run recorded at the snapshot (`eval_loss`), else the probe's cross-entropy."""
    recorded = score.metadata.get("eval_loss")
    return float(recorded) if isinstance(recorded, (int, float)) else score.probe_loss


def memorisation_signs(scores: list[SnapshotScore]) -> str | None:
    """A sentence when the run shows the signs of a memorising teacher: the last snapshot's held-out
    loss well above the run's lowest (and, where a training probe was run, a training error at most
    half its held-out error); None otherwise. Then a less accurate, earlier snapshot can teach better
    than the final one."""
    rows = [(s, held_out_loss(s)) for s in scores if not s.init]
    rows = [(s, loss) for s, loss in rows if loss is not None]
    if len(rows) < 2:
        return None
    best, lowest = min(rows, key=lambda r: r[1])
    last, final_loss = rows[-1]
    if best is last or final_loss < (1 + MEMORISATION_LOSS_RISE) * lowest:
        return None
    trained = last.metadata.get("training_accuracy")
    training = (f" while its training accuracy is {trained:.1%}" if isinstance(trained, (int, float)) else "")
    if isinstance(trained, (int, float)) and 1 - trained > MEMORISED_ERROR_SHARE * (1 - last.accuracy):
        return None
    return (f"the held-out loss rose from {lowest:.3f} ({best.name}) to {final_loss:.3f} ({last.name}){training}, "
            f"with held-out accuracy {best.accuracy:.1%} → {last.accuracy:.1%}: the teacher memorises its training "
            "set, and an earlier snapshot may teach better than the final one (objectives `held_out` and `loss` "
            "can prefer it; `accuracy` and `final` cannot)")


@dataclass
class SelectionReport:
    """The outcome of a selection: the chosen snapshots and every snapshot's scores.

    Attributes:
        selected: names of the chosen snapshots, in rank order.
        scores: one `SnapshotScore` per snapshot, in training order (the initialisation included).
        objective: "outputs", "features", "final" or "accuracy".
        k, temperature, beta, kappa, estimator, probe_size, seed: the settings it ran with.
        search: "exhaustive", "greedy" or "top-k" (the trivial selectors).
        ensemble: {"members", "i_x", "i_y", "j"}: the chosen set scored as a whole under the
            objective (i_x, i_y are Î(X;·), Ĩ(Y;·) of its mean probabilities or joint features).
        label_entropy_bits: H(Y) of the probe labels, the label terms' unit.
        accuracy_margin: chosen snapshots more than this below the best probe accuracy are flagged.
        warnings: one sentence per flagged choice (also in table.md and the CLI's output).
        notes: sentences about the candidates themselves (also in table.md and the CLI's output):
            Hub revisions loaded without a SHA-256 check, candidates skipped because they could not
            be loaded.
        estimator_options: the estimator's own settings.
        snapshot_dir: where the snapshots live, if the selector knows it.
        extra: free-form metadata (e.g. the run, the probe set's source).
    """

    selected: list[str]
    scores: list[SnapshotScore]
    objective: str
    k: int
    temperature: float
    beta: float
    kappa: float
    estimator: str
    probe_size: int
    seed: int
    search: str = "exhaustive"
    ensemble: dict[str, Any] = field(default_factory=dict)
    label_entropy_bits: float | None = None
    accuracy_margin: float | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    estimator_options: dict[str, Any] = field(default_factory=dict)
    snapshot_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # -- access ----------------------------------------------------------------------------------

    def score(self, name: str) -> SnapshotScore:
        """The scores of the snapshot called `name` (KeyError if there is none)."""
        for s in self.scores:
            if s.name == name:
                return s
        raise KeyError(f"no snapshot named {name!r} in this selection; it has {[s.name for s in self.scores]}")

    @property
    def selected_scores(self) -> list[SnapshotScore]:
        """The chosen snapshots' scores, in rank order."""
        return [self.score(name) for name in self.selected]

    def explain(self, name: str) -> str:
        """One or two sentences on why `name` was (or was not) chosen, e.g. for a model card."""
        s = self.score(name)
        n_candidates = sum(not t.init for t in self.scores)
        values = (f"Î(X;F)={s.i_xf:.3f}, Ĩ(Y;F)={s.i_yf:.3f}, Î(X;P)={s.i_xp:.3f}, Ĩ(Y;P)={s.i_yp:.3f}, "
                  f"J={s.j:.3f}, probe accuracy {s.accuracy:.1%}")
        if s.init:
            return f"{name} is the initialisation, excluded from the selection ({values})."
        if not s.chosen:
            return f"{name} was not chosen ({values})."
        what = describe(self.objective)
        objective = OBJECTIVES.get(self.objective)
        if objective is None or objective.trivial:
            return f"{name} is chosen by {what} ({values})."
        if self.k == 1:
            order = sorted((t for t in self.scores if not t.init), key=lambda t: -t.j)
            return (f"{name} maximises the task-related information {what} (T={self.temperature:g}, "
                    f"β={self.beta:g}) among {n_candidates} snapshots ({values}; next best "
                    f"{order[1].name if len(order) > 1 else 'none'}).")
        return (f"{name} is member {s.rank} of {self.k} of the snapshot ensemble chosen ({self.search} search over "
                f"{n_candidates} snapshots) to maximise {what}, scored on {self._ensemble_representation()} "
                f"(ensemble J={self.ensemble.get('j', float('nan')):.3f}; {values}).")

    def _ensemble_representation(self) -> str:
        return OBJECTIVES.get(self.objective, Objective).ensemble_representation

    # -- serialisation ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SelectionReport":
        data = dict(data)
        version = data.pop("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise ValueError(f"selection.json has format_version {version}, newer than this hf-ckptkd reads "
                             f"({FORMAT_VERSION}); upgrade hf-ckptkd")
        known = {f.name for f in fields(SnapshotScore)}
        data["scores"] = [SnapshotScore(**{k: v for k, v in s.items() if k in known}) for s in data.get("scores", [])]
        own = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in own})

    def to_markdown(self) -> str:
        """The table.md text: settings, then one row per snapshot."""
        what = describe(self.objective)
        lines = [
            "# Teacher selection",
            "",
            f"Selected ({self.k}): " + ", ".join(f"**{n}**" for n in self.selected),
            "",
            f"- objective: `{self.objective}`: {what}; {self._label_unit()}, Î(X;·) a share of a fixed bound of the "
            "probe set; the initialisation is never chosen",
            f"- temperature T = {self.temperature:g}, β = {self.beta:g}, κ = {self.kappa:g}, "
            f"estimator `{self.estimator}`, probe set of {self.probe_size} examples, seed {self.seed}, "
            f"{self.search} search",
        ]
        if self.k > 1 and self.ensemble:
            lines.append(f"- the ensemble, scored as a whole on {self._ensemble_representation()}: "
                         f"Î(X;·) = {self.ensemble['i_x']:.4f}, Ĩ(Y;·) = {self.ensemble['i_y']:.4f}, "
                         f"J = {self.ensemble['j']:.4f}")
        signs = memorisation_signs(self.scores)
        if signs:
            lines += ["", f"> **Memorisation:** {signs}"]
        if self.warnings:
            lines += [""] + [f"> **Warning:** {w}" for w in self.warnings]
        if self.notes:
            lines += [""] + [f"> **Note:** {n}" for n in self.notes]
        lines += [
            "",
            "| snapshot | epoch | step | accuracy | held-out loss | training accuracy | Î(X;F) | Ĩ(Y;F) | Î(X;P) "
            "| Ĩ(Y;P) | Ĩ(Y;P₁) | J | chosen |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for s in self.scores:
            chosen = f"✓ ({s.rank})" if s.chosen else ("init, excluded" if s.init else "")
            loss, trained = held_out_loss(s), s.metadata.get("training_accuracy")
            lines.append(
                f"| {s.name} | {format_epoch(s.epoch)} | {'' if s.step is None else s.step} | {s.accuracy:.2%} | "
                f"{'' if loss is None else f'{loss:.4f}'} | {'' if trained is None else f'{trained:.2%}'} | "
                f"{s.i_xf:.4f} | {s.i_yf:.4f} | {s.i_xp:.4f} | {s.i_yp:.4f} | "
                f"{'' if s.i_yp1 is None else f'{s.i_yp1:.4f}'} | {s.j:.4f} | {chosen} |")
        return "\n".join(lines) + "\n"

    def _label_unit(self) -> str:
        """What the label terms are shares of, for table.md."""
        bits = f" = {self.label_entropy_bits:.3f} bits" if self.label_entropy_bits is not None else ""
        tokens = self.estimator_options.get("next_tokens")
        if not tokens:
            return f"Ĩ(Y;·) is a share of H(Y){bits}"
        return (f"the labels are next tokens: Ĩ(Y;P) and Ĩ(Y;P₁) are shares of H_u(Y){bits} per token, the "
                f"cross-entropy of a leave-one-out unigram of the probe text (the held-out loss is nats per token), "
                f"and Ĩ(Y;F) of H_u(Y_N) = "
                f"{tokens['top_token_entropy_bits']:.3f} bits, Y_N the next token among the text's "
                f"{tokens['top_tokens']} most frequent or 'another token'")

    def save(self, directory: str | os.PathLike, *, plot: bool = True) -> Path:
        """Write selection.json, table.md and (with `plot`) information_plane.png; returns the folder."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / SELECTION_JSON, json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n")
        write_text_atomic(out / TABLE_MD, self.to_markdown())
        if plot:
            plot_information_plane(self, out / PLANE_PNG)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SelectionReport":
        """Read a report saved with `save` (give the folder or the selection.json path)."""
        path = Path(directory)
        if path.is_dir():
            path = path / SELECTION_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; run `hf-ckptkd select` to write a selection first")
        return cls.from_dict(json.loads(path.read_text()))


def format_epoch(epoch: float | None) -> str:
    """An epoch as tables and cards show it: `3` for a whole epoch, `2.50` otherwise, empty when unknown."""
    if epoch is None:
        return ""
    return f"{int(epoch)}" if float(epoch).is_integer() else f"{epoch:.2f}"


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
