"""The model card of a pushed teacher: what it is, why it was chosen, and code that runs as written.

A card is read on the Hub, often by someone who does not know hf-ckptkd, so it keeps three kinds of
statement apart: the paper's claim (attributed to the paper), this teacher's facts (which snapshot,
what chose it and on which scores, what it was trained and evaluated on, as its `snapshot.json`
records them), and a pointer to where the package measured the effect. It states nothing it has no
record of: a run that recorded no dataset gets a card without one.

Every fenced code block of a card runs as written against the Hub the teacher was pushed to (the
tests push each kind of teacher and run them): loading it with its family's own library (timm, or
transformers with the teacher's own tokenizer for text), and distilling from it with hf-ckptkd on a
small slice of its dataset when that dataset can be loaded by name.

The text is `card_template.md`, rendered by `huggingface_hub.ModelCard.from_template` (Jinja2):
the prose lives in the template, and this module works out what it states (the model's facts
from its own files, the data from the snapshot's record, the selection's scores), formatted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from ..config import DEFAULT_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN, DEFAULT_TEMPERATURE, DEFAULT_TEXT_COLUMN
from ..models.architectures import REGISTERED_ARCHITECTURES
from ..data.loading import default_normalisation
from ..data.record import DatasetIdentity, identity, split_phrase
from ..models.folders import has_saved_tokenizer, saved_family
from ..models.build import CAUSAL_LM_CLASSES, TIMM
from ..references import format_hub_reference
from ..selection.objectives import OBJECTIVES, describe
from ..selection.report import PLANE_PNG, SelectionReport, SnapshotScore, format_epoch
from ..snapshots.folders import METADATA_NAME, Snapshot

TEMPLATE = Path(__file__).with_name("card_template.md")  # the card's Markdown, with Jinja2 fields
CARD_NAME = "README.md"  # the file the Hub shows as a repo's card
TAGS = ["knowledge-distillation", "checkpoint-kd", "teacher"]
CITATION = """@inproceedings{wang2022efficient,
  title     = {Efficient Knowledge Distillation from Model Checkpoints},
  author    = {Wang, Chaofei and Yang, Qisen and Huang, Rui and Song, Shiji and Huang, Gao},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2022}
}"""
# Files a saved tokenizer leaves in a snapshot folder (any one of them means it holds one).
# How many training examples the card's distillation commands use: enough to see it work, quick.
TRY_EXAMPLES = 500
SAMPLE_TEXTS = ["An example sentence to classify.", "Another, rather different one."]
# Small students for the card's commands (any student with the teacher's labels works).
IMAGE_STUDENT = "timm:cifar_resnet8"
TEXT_STUDENT = "transformers:BertConfig"
TEXT_STUDENT_KWARGS = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
LM_STUDENT = "transformers:GPT2Config"
LM_STUDENT_KWARGS = {"n_layer": 1, "n_embd": 64, "n_head": 2}
LM_PROMPT = "the computer"
POINTER = ('the hf-ckptkd documentation, pages "Selection evidence" (docs/evidence.md) and "Studies" (docs/studies.md)')


# --- what a card says about the model, its data and its metrics --------------------------------

def is_task_metric(key: str) -> bool:
    """Accuracy, top-5 accuracy and loss; not a run's timings (eval_runtime, *_per_second) or epoch."""
    name = key.removeprefix("eval_")
    return name.endswith("accuracy") or name == "loss" or name.endswith("_loss")


def task_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in sorted(metrics.items()) if is_task_metric(k)}


def _metric_label(key: str) -> tuple[str, str]:
    """(model-index metric type, readable name) of an evaluation key."""
    name = key.removeprefix("eval_")
    if name in ("top5_accuracy", "top_5_accuracy"):
        return "accuracy", "top-5 accuracy"
    return ("accuracy" if name.endswith("accuracy") else "loss"), name.replace("_", " ")


def _registered_by_hf_ckptkd(architecture: str) -> bool:
    return architecture in REGISTERED_ARCHITECTURES


def model_facts(snapshot: Snapshot) -> dict[str, Any]:
    """Family, architecture, labels and inputs of a snapshot, from its own files."""
    config = json.loads((snapshot.path / "config.json").read_text())
    has_tokenizer = has_saved_tokenizer(snapshot.path)
    if saved_family(config) == TIMM:
        cfg = config.get("pretrained_cfg") or {}
        labels = cfg.get("label_names") or config.get("label_names")
        input_size = cfg.get("input_size") or (3, 224, 224)
        return {"family": "timm", "architecture": config["architecture"], "num_labels": config.get("num_classes"),
                "label_names": list(labels) if labels else None, "auto": None, "text": False,
                "pipeline_tag": "image-classification", "registered": _registered_by_hf_ckptkd(config["architecture"]),
                "lm": False,
                "in_chans": int(input_size[0]), "image_size": int(input_size[-1]),
                "mean": cfg.get("mean"), "std": cfg.get("std"), "has_tokenizer": has_tokenizer}
    image = config.get("model_type") in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    if any(a in CAUSAL_LM_CLASSES for a in config.get("architectures") or []):
        return {"family": "transformers", "architecture": config["architectures"][0], "num_labels": None,
                "label_names": None, "text": True, "lm": True, "auto": "AutoModelForCausalLM",
                "pipeline_tag": "text-generation", "registered": False, "has_tokenizer": has_tokenizer,
                "n_positions": config.get("n_positions") or config.get("max_position_embeddings")}
    id2label = config.get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    if labels and labels in ([f"LABEL_{i}" for i in range(len(labels))], [str(i) for i in range(len(labels))]):
        labels = None
    facts = {"family": "transformers", "architecture": (config.get("architectures") or [config.get("model_type")])[0],
             "num_labels": len(id2label) or config.get("num_labels"), "label_names": labels, "text": not image,
             "auto": "AutoModelForImageClassification" if image else "AutoModelForSequenceClassification",
             "pipeline_tag": "image-classification" if image else "text-classification", "registered": False,
             "has_tokenizer": has_tokenizer, "lm": False}
    if image:
        size = config.get("image_size", 224)
        processor = snapshot.path / "preprocessor_config.json"
        values = json.loads(processor.read_text()) if processor.is_file() else {}
        facts.update(in_chans=int(config.get("num_channels", 3)),
                     image_size=int(size[-1] if isinstance(size, (list, tuple)) else size),
                     mean=values.get("image_mean"), std=values.get("image_std"))
    return facts


def _report_dataset_name(report: SelectionReport | None) -> str | None:
    recorded = report.extra.get("dataset") if report is not None else None
    if isinstance(recorded, dict):  # `hf-ckptkd select` records {"name", "split", ...}
        recorded = recorded.get("name")
    return str(recorded) if recorded else None


def dataset_facts(snapshot: Snapshot, report: SelectionReport | None, dataset: str | None
                  ) -> tuple[str | None, dict[str, Any], DatasetIdentity | None]:
    """(name, record, identity) of the teacher's data: the snapshot's own record first, then what the
    pusher or the selection names; (None, {}, None) when nothing recorded it."""
    record = dict(snapshot.dataset or {})
    name = record.get("name") or dataset or _report_dataset_name(report)
    if not name:
        return None, {}, None
    return name, record if record.get("name") == name else {}, identity(name, record)


def _inputs(facts: dict[str, Any], dataset: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the teacher's inputs are normalised with (what it records, else the training default)."""
    mean, std = facts.get("mean"), facts.get("std")
    if mean is not None and std is not None and len(mean) == len(std) == facts["in_chans"]:
        return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
    mean, std = default_normalisation(dataset or "", facts["in_chans"])
    return tuple(round(v, 4) for v in mean), tuple(round(v, 4) for v in std)


def _round(value: Any) -> Any:
    return round(float(value), 6) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _run_name(snapshot: Snapshot, report: SelectionReport | None) -> str:
    if report is not None and report.extra.get("run"):
        return str(report.extra["run"])
    snapshot_dir = snapshot.path.resolve().parent
    return snapshot_dir.parent.name if snapshot_dir.name == "snapshots" else snapshot_dir.name


def other_selectors(report: SelectionReport) -> list[tuple[str, str, list[str]]]:
    """(objective, description, its pick) for each selector on the report's own scores.

    With one teacher every objective's pick follows from the per-snapshot scores; with several,
    the information objectives score the ensemble as a whole, which the report does not hold for
    other objectives, so only the trivial baselines (the last k, the k most accurate) are given.
    """
    scores = [asdict(s) for s in report.scores]
    picks = []
    for objective in OBJECTIVES.values():
        if objective.name == report.objective or (report.k > 1 and not objective.trivial):
            continue
        values = objective.values_from_scores(scores, report.beta)
        order = sorted(values, key=lambda name: -values[name])  # stable: ties go to the earlier snapshot
        picks.append((objective.name, objective.summary, order[:report.k]))
    return picks


# --- the card --------------------------------------------------------------------------------

def build_model_card(snapshot: Snapshot, repo_id: str, revision: str, *, report: SelectionReport | None = None,
                     score: SnapshotScore | None = None, ensemble: Sequence[str] = (), run: str | None = None,
                     dataset: str | None = None, plot: bool = False, subfolder: str | None = None) -> ModelCard:
    """The model card of one pushed teacher (deterministic: the same inputs give the same text).

    `revision` is the tag naming this member; `subfolder` the folder of the repo holding it, if it
    is not at the root (its teacher reference is then `owner/name@revision:subfolder`, and the
    loading code passes `subfolder=`); `ensemble` the references of all members pushed together
    (this one included); `plot` whether `information_plane.png` is uploaded beside it; `dataset`
    names the run's data when neither the snapshot nor the selection records it. The text is
    `card_template.md` filled in with what the snapshot and the selection record.
    """
    facts = model_facts(snapshot)
    run = run or _run_name(snapshot, report)
    name, record, ident = dataset_facts(snapshot, report, dataset)
    reference = format_hub_reference(repo_id, revision, subfolder)
    hub_args = f'revision="{revision}"' + (f', subfolder="{subfolder}"' if subfolder else "")
    ensemble = list(ensemble) or [reference]
    metrics = task_metrics(snapshot.eval_metrics)
    data = _card_data(snapshot, facts, run, record, ident, metrics, reference, ensemble,
                      _selection_block(report, score))
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE), repo_id=repo_id, repo_name=repo_id.split("/")[1], revision=revision,
        subfolder=subfolder, hub_args=hub_args, reference=reference, ensemble=ensemble, run=run, snapshot=snapshot, model=facts, epoch=format_epoch(snapshot.epoch),
        data=_data_context(name, record, ident), selection=_selection_context(snapshot, report, score), plot=plot,
        plane_png=PLANE_PNG, metadata_name=METADATA_NAME, pointer=POINTER, citation=CITATION,
        sha256=sorted(snapshot.sha256.items()), has_metrics=bool(metrics),
        metrics_shown=", ".join(f"{_metric_label(k)[1]} {v:.4f}" for k, v in metrics.items()) or "none recorded",
        learning_rate=f"{snapshot.learning_rate:.3g}" if snapshot.learning_rate is not None else "-",
        train_loss=f"{snapshot.train_loss:.4f}" if snapshot.train_loss is not None else "-",
        inputs=_inputs_context(facts, name), sample_texts=SAMPLE_TEXTS,
        distil=_distil_context(facts, report, record, ident))


def _selection_block(report: SelectionReport | None, score: SnapshotScore | None) -> dict[str, Any]:
    """The selection's settings and this snapshot's scores, for the card's metadata."""
    if score is None or report is None:
        return {}
    return {"rank": score.rank, "k": report.k, "objective": report.objective, "temperature": report.temperature,
            "beta": report.beta, "estimator": report.estimator, "probe_size": report.probe_size,
            **{key: _round(getattr(score, key)) for key in ("accuracy", "i_xf", "i_yf", "i_xp", "i_yp", "j")}}


def _card_data(snapshot: Snapshot, facts: dict[str, Any], run: str, record: dict[str, Any],
               ident: DatasetIdentity | None, metrics: dict[str, float], reference: str, ensemble: list[str],
               selection: dict[str, Any]) -> ModelCardData:
    """The card's metadata: the Hub's fields, model-index results when the data is known, and `checkpoint_kd`."""
    task = facts["pipeline_tag"]
    eval_results = None
    if ident is not None and metrics:  # model-index needs the dataset: without a record, the text only
        evaluated = record.get("eval") or {}
        where = dict(dataset_type=ident.model_index_type, dataset_name=_plain(ident.display),
                     dataset_config=record.get("config"), dataset_split=_split_label(evaluated))
        eval_results = [EvalResult(task_type=task, metric_type=_metric_label(key)[0], metric_name=_metric_label(key)[1],
                                   metric_value=_round(value), **where) for key, value in metrics.items()]
    checkpoint_kd = {
        "run": run, "snapshot": snapshot.name, "epoch": snapshot.epoch, "global_step": snapshot.global_step,
        "final": snapshot.final, "family": facts["family"], "architecture": facts["architecture"],
        "eval_metrics": {k: _round(v) for k, v in metrics.items()},
        "sha256": dict(sorted(snapshot.sha256.items())), "reference": reference, "ensemble": ensemble,
        **({"dataset": record} if record else {}), **({"selection": selection} if selection else {}),
    }
    return ModelCardData(
        library_name=facts["family"], tags=[*TAGS, task], pipeline_tag=task,
        datasets=list(ident.hub_ids) if ident is not None and ident.hub_ids else None,
        metrics=sorted({_metric_label(k)[0] for k in metrics}) or None,
        model_name=reference, eval_results=eval_results, checkpoint_kd=checkpoint_kd,
    )


def _plain(display: str) -> str:
    """A display name without markdown (model-index holds plain text)."""
    return display.replace("`", "").replace("[", "").split("](")[0]


def _split_label(part: dict[str, Any]) -> str | None:
    if not part:
        return None
    if part.get("held_out"):
        return f"{part['split']} (held-out {part['num_examples']} examples)"
    return str(part["split"])


def _data_context(name: str | None, record: dict[str, Any], ident: DatasetIdentity | None) -> dict[str, Any]:
    """What the card says about the data (a record that names nothing leaves every field empty)."""
    eval_split = record.get("test_split")
    return {
        "name": name, "display": ident.display if ident is not None else None, "config": record.get("config"),
        "trained": split_phrase(record.get("train")), "evaluated": split_phrase(record.get("eval")),
        "label_noise": f"{record['label_noise']:.0%}" if record.get("label_noise") else None,
        "tokenizer": record.get("tokenizer"), "label_column": record.get("label_column", DEFAULT_LABEL_COLUMN),
        "text_column": record.get("text_column", DEFAULT_TEXT_COLUMN),
        "image_column": record.get("image_column", DEFAULT_IMAGE_COLUMN),
        "eval_split": eval_split if eval_split and eval_split != "test" else None,  # the command's default: test
    }


def _selection_context(snapshot: Snapshot, report: SelectionReport | None,
                       score: SnapshotScore | None) -> dict[str, Any] | None:
    """Why this snapshot: the selector, its settings and this snapshot's scores, formatted; None without a selection."""
    if report is None or score is None:
        return None
    return {
        "objective": report.objective, "how": describe(report.objective),
        "temperature": f"{report.temperature:g}", "beta": f"{report.beta:g}", "rank": score.rank, "k": report.k,
        "snapshots": sum(not s.init for s in report.scores), "probe_size": report.probe_size,
        "estimator": report.estimator, "explanation": report.explain(snapshot.name),
        "accuracy": f"{score.accuracy:.2%}", **{key: f"{getattr(score, key):.4f}"
                                                for key in ("i_xf", "i_yf", "i_xp", "i_yp", "j")},
        "other_picks": other_selectors(report), "warnings": list(report.warnings),
    }


def _inputs_context(facts: dict[str, Any], dataset: str | None) -> dict[str, Any]:
    if facts["text"]:
        return {}
    mean, std = _inputs(facts, dataset)
    return {"mean": mean, "std": std}


def _distil_context(facts: dict[str, Any], report: SelectionReport | None, record: dict[str, Any],
                    ident: DatasetIdentity | None) -> dict[str, Any]:
    """The distillation commands' settings; `unavailable` says why no command can load the data, if so."""
    unavailable = None
    if ident is None:
        unavailable = "its dataset was not recorded"
    elif not ident.loadable:
        unavailable = "it was trained on a local dataset"
    elif facts["text"] and not facts["has_tokenizer"]:
        unavailable = "it holds no tokenizer"
    student, kwargs = ((LM_STUDENT, {**LM_STUDENT_KWARGS, "n_positions": facts["n_positions"]}) if facts["lm"] else
                       (TEXT_STUDENT, TEXT_STUDENT_KWARGS) if facts["text"] else (IMAGE_STUDENT, {}))
    return {
        "unavailable": unavailable, "student": student, "student_kwargs": kwargs, "student_kwargs_json": json.dumps(kwargs),
        "max_length": record.get("max_length") or 64, "prompt": LM_PROMPT,
        "examples": TRY_EXAMPLES, "temperature": f"{report.temperature if report is not None else DEFAULT_TEMPERATURE:g}",
        "labels": repr(facts["label_names"]) if facts["label_names"] else "None",
    }


__all__ = ["CARD_NAME", "CITATION", "TAGS", "TEMPLATE", "build_model_card", "dataset_facts", "is_task_metric",
           "model_facts", "other_selectors", "task_metrics"]
