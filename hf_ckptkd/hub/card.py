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
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

from .. import architectures
from ..data import default_normalisation
from ..dataset_record import DatasetIdentity, identity, split_phrase
from ..selection.objective import INFORMATION_OBJECTIVES, OBJECTIVES, j_from_scores
from ..selection.report import OBJECTIVE_DESCRIPTIONS, PLANE_PNG, SelectionReport, SnapshotScore, format_epoch
from ..snapshots import METADATA_NAME, Snapshot

CARD_NAME = "README.md"  # the file the Hub shows as a repo's card
TAGS = ["knowledge-distillation", "checkpoint-kd", "teacher"]
CITATION = """@inproceedings{wang2022efficient,
  title     = {Efficient Knowledge Distillation from Model Checkpoints},
  author    = {Wang, Chaofei and Yang, Qisen and Huang, Rui and Song, Shiji and Huang, Gao},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2022}
}"""
# Files a saved tokenizer leaves in a snapshot folder (any one of them means it holds one).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
# How many training examples the card's distillation commands use: enough to see it work, quick.
TRY_EXAMPLES = 500
SAMPLE_TEXTS = ["An example sentence to classify.", "Another, rather different one."]
# Small students for the card's commands (any student with the teacher's labels works).
IMAGE_STUDENT = "timm:cifar_resnet8"
TEXT_STUDENT = "transformers:BertConfig"
TEXT_STUDENT_KWARGS = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
POINTER = ('the hf-ckptkd README, sections "Results on Fashion-MNIST (CPU)", "Selector across tasks" and "Studies"')


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
    return architecture in architectures._VARIANTS


def model_facts(snapshot: Snapshot) -> dict[str, Any]:
    """Family, architecture, labels and inputs of a snapshot, from its own files."""
    config = json.loads((snapshot.path / "config.json").read_text())
    has_tokenizer = any((snapshot.path / name).is_file() for name in TOKENIZER_FILES)
    if "architecture" in config:  # timm's Hub format
        cfg = config.get("pretrained_cfg") or {}
        labels = cfg.get("label_names") or config.get("label_names")
        input_size = cfg.get("input_size") or (3, 224, 224)
        return {"family": "timm", "architecture": config["architecture"], "num_labels": config.get("num_classes"),
                "label_names": list(labels) if labels else None, "auto": None, "text": False,
                "pipeline_tag": "image-classification", "registered": _registered_by_hf_ckptkd(config["architecture"]),
                "in_chans": int(input_size[0]), "image_size": int(input_size[-1]),
                "mean": cfg.get("mean"), "std": cfg.get("std"), "has_tokenizer": has_tokenizer}
    image = config.get("model_type") in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    id2label = config.get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    if labels and labels in ([f"LABEL_{i}" for i in range(len(labels))], [str(i) for i in range(len(labels))]):
        labels = None
    facts = {"family": "transformers", "architecture": (config.get("architectures") or [config.get("model_type")])[0],
             "num_labels": len(id2label) or config.get("num_labels"), "label_names": labels, "text": not image,
             "auto": "AutoModelForImageClassification" if image else "AutoModelForSequenceClassification",
             "pipeline_tag": "image-classification" if image else "text-classification", "registered": False,
             "has_tokenizer": has_tokenizer}
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
    for objective in OBJECTIVES:
        if objective == report.objective or (report.k > 1 and objective in INFORMATION_OBJECTIVES):
            continue
        values = j_from_scores(scores, objective, report.beta)
        order = sorted(values, key=lambda name: -values[name])  # stable: ties go to the earlier snapshot
        picks.append((objective, OBJECTIVE_DESCRIPTIONS.get(objective, objective), order[:report.k]))
    return picks


# --- the card --------------------------------------------------------------------------------

def build_model_card(snapshot: Snapshot, repo_id: str, revision: str, *, report: SelectionReport | None = None,
                     score: SnapshotScore | None = None, ensemble: Sequence[str] = (), run: str | None = None,
                     dataset: str | None = None, plot: bool = False) -> ModelCard:
    """The model card of one pushed teacher (deterministic: the same inputs give the same text).

    `revision` is the tag naming this member; `ensemble` the references of all members pushed
    together (this one included); `plot` whether `information_plane.png` is uploaded beside it;
    `dataset` names the run's data when neither the snapshot nor the selection records it.
    """
    facts = model_facts(snapshot)
    run = run or _run_name(snapshot, report)
    name, record, ident = dataset_facts(snapshot, report, dataset)
    reference = f"{repo_id}@{revision}"
    ensemble = list(ensemble) or [reference]
    task = facts["pipeline_tag"]
    metrics = task_metrics(snapshot.eval_metrics)

    eval_results = None
    if ident is not None and metrics:  # model-index needs the dataset: without a record, the text only
        evaluated = record.get("eval") or {}
        where = dict(dataset_type=ident.model_index_type, dataset_name=_plain(ident.display),
                     dataset_config=record.get("config"), dataset_split=_split_label(evaluated))
        eval_results = [EvalResult(task_type=task, metric_type=_metric_label(key)[0], metric_name=_metric_label(key)[1],
                                   metric_value=_round(value), **where) for key, value in metrics.items()]
    selection: dict[str, Any] = {}
    if score is not None and report is not None:
        selection = {"rank": score.rank, "k": report.k, "objective": report.objective, "temperature": report.temperature,
                     "beta": report.beta, "estimator": report.estimator, "probe_size": report.probe_size,
                     **{key: _round(getattr(score, key)) for key in ("accuracy", "i_xf", "i_yf", "i_xp", "i_yp", "j")}}
    checkpoint_kd = {
        "run": run, "snapshot": snapshot.name, "epoch": snapshot.epoch, "global_step": snapshot.global_step,
        "final": snapshot.final, "family": facts["family"], "architecture": facts["architecture"],
        "eval_metrics": {k: _round(v) for k, v in metrics.items()},
        "sha256": dict(sorted(snapshot.sha256.items())), "reference": reference, "ensemble": ensemble,
        **({"dataset": record} if record else {}), **({"selection": selection} if selection else {}),
    }
    data = ModelCardData(
        library_name=facts["family"], tags=[*TAGS, task], pipeline_tag=task,
        datasets=list(ident.hub_ids) if ident is not None and ident.hub_ids else None,
        metrics=sorted({_metric_label(k)[0] for k in metrics}) or None,
        model_name=reference, eval_results=eval_results, checkpoint_kd=checkpoint_kd,
    )
    text = "\n".join([
        *_intro(snapshot, facts, repo_id, revision, ensemble, run, name, record, ident),
        *_why(snapshot, report, score, plot),
        *_claim(),
        *_snapshot_table(snapshot, run, metrics, record),
        *_load_section(facts, repo_id, revision, reference, name),
        *_distil_section(facts, repo_id, revision, ensemble, report, name, record, ident),
        "## Citation", "", "```bibtex", CITATION, "```", "",
    ])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{text}")


def _plain(display: str) -> str:
    """A display name without markdown (model-index holds plain text)."""
    return display.replace("`", "").replace("[", "").split("](")[0]


def _split_label(part: dict[str, Any]) -> str | None:
    if not part:
        return None
    if part.get("held_out"):
        return f"{part['split']} (held-out {part['num_examples']} examples)"
    return str(part["split"])


def _intro(snapshot, facts, repo_id, revision, ensemble, run, name, record, ident) -> list[str]:
    epoch = format_epoch(snapshot.epoch)
    lines = [
        f"# {repo_id.split('/')[1]}: teacher `{snapshot.name}` of run `{run}`", "",
        f"A **knowledge-distillation teacher** published with hf-ckptkd: the `{facts['architecture']}` "
        f"({facts['family']}) snapshot `{snapshot.name}`, taken at epoch {epoch} (global step "
        f"{snapshot.global_step}) of the teacher run `{run}`"
        + (", the run's final model." if snapshot.final else ", before the end of that run (not its final model)."),
    ]
    if ident is not None:
        trained = split_phrase(record.get("train"))
        evaluated = split_phrase(record.get("eval"))
        sentence = f"Trained on {trained + ' of ' if trained else ''}{ident.display}"
        if record.get("label_noise"):
            sentence += f", with {record['label_noise']:.0%} of the training labels replaced by another class"
        sentence += f"; evaluated on {evaluated}." if evaluated else "."
        lines += ["", sentence]
    if facts["text"]:
        lines += ["", "Its tokenizer is saved with it (load it with `AutoTokenizer`, below)." if facts["has_tokenizer"]
                  else "This snapshot holds no tokenizer: use the one it was trained with"
                  + (f" (`{record['tokenizer']}`)." if record.get("tokenizer") else ".")]
    lines += ["", f"The tag `{revision}` pins exactly these weights: load `{repo_id}@{revision}`."]
    if len(ensemble) > 1:
        lines += ["", f"It is one of {len(ensemble)} teachers published together as a snapshot ensemble: "
                      + ", ".join(f"`{r}`" for r in ensemble) + "."]
    return lines + [""]


def _why(snapshot, report, score, plot) -> list[str]:
    lines = ["## Why this snapshot", ""]
    if report is None or score is None:
        return lines + ["It was published without a selection report: nothing here says it teaches better than "
                        "the run's other snapshots.", ""]
    n = sum(not s.init for s in report.scores)
    how = OBJECTIVE_DESCRIPTIONS.get(report.objective, report.objective)
    lines += [
        f"Chosen by hf-ckptkd's `{report.objective}` selector ({how}; T = {report.temperature:g}, "
        f"β = {report.beta:g}) as teacher {score.rank} of {report.k}, among the {n} snapshots of the run. Every "
        f"snapshot was scored on the same probe set of {report.probe_size} examples with the `{report.estimator}` "
        "estimator (information on a fixed [0, 1] scale).", "",
        report.explain(snapshot.name), "",
        "| rank | probe accuracy | Î(X;F) | Ĩ(Y;F) | Î(X;P) | Ĩ(Y;P) | J |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {score.rank} of {report.k} | {score.accuracy:.2%} | {score.i_xf:.4f} | {score.i_yf:.4f} | "
        f"{score.i_xp:.4f} | {score.i_yp:.4f} | {score.j:.4f} |", "",
    ]
    picks = other_selectors(report)
    if picks:
        lines += ["On the same scores, hf-ckptkd's other selectors pick:", "",
                  "| selector | what it maximises | picks |", "|---|---|---|"]
        lines += [f"| `{objective}` | {what} | {', '.join(f'`{p}`' for p in pick)} |" for objective, what, pick in picks]
        lines.append("")
    if report.warnings:
        lines += [f"> **Warning:** {w}" for w in report.warnings] + [""]
    if plot:
        lines += [f"![The information plane of the run: Î(X;F) against Ĩ(Y;F) per snapshot, chosen teachers "
                  f"ringed; J and accuracy against epoch]({PLANE_PNG})", ""]
    return lines


def _claim() -> list[str]:
    return [
        "## The method, and what it was measured to do", "",
        "Wang et al., NeurIPS 2022 (*Efficient Knowledge Distillation from Model Checkpoints*) report that an "
        "intermediate checkpoint of a teacher's training run can teach a student better than the fully converged "
        "teacher, and that such checkpoints can be chosen by maximising the task-related mutual information of their "
        "representations. That is the paper's finding, not a measurement of this teacher: no student distilled from "
        "it is evaluated on this card. How far the effect held in hf-ckptkd's own runs (every snapshot teaching "
        f"students over several seeds, beside the final teacher and the trivial selectors) is measured in {POINTER}.",
        "",
    ]


def _snapshot_table(snapshot, run, metrics, record) -> list[str]:
    epoch = format_epoch(snapshot.epoch)
    shown = ", ".join(f"{_metric_label(k)[1]} {v:.4f}" for k, v in metrics.items()) or "none recorded"
    evaluated = split_phrase(record.get("eval"))
    lr = f"{snapshot.learning_rate:.3g}" if snapshot.learning_rate is not None else "-"
    loss = f"{snapshot.train_loss:.4f}" if snapshot.train_loss is not None else "-"
    weights = "; ".join(f"`{f}` `{h}`" for f, h in sorted(snapshot.sha256.items()))
    return [
        "## Snapshot", "",
        "| run | snapshot | epoch | global step | learning rate | training loss | evaluation |",
        "|---|---|---:|---:|---:|---:|---|",
        f"| `{run}` | `{snapshot.name}` | {epoch} | {snapshot.global_step} | {lr} | {loss} | {shown} |", "",
        *([f"The evaluation is on {evaluated}.", ""] if evaluated and metrics else []),
        f"SHA-256 of the weights (also in `{METADATA_NAME}`, checked by hf-ckptkd when it loads the teacher): {weights}.",
        "",
    ]


def _labels_literal(facts) -> str:
    return repr(facts["label_names"]) if facts["label_names"] else "None"


def _load_section(facts, repo_id, revision, reference, dataset) -> list[str]:
    lines = ["## Load it", ""]
    if facts["family"] == "timm":
        mean, std = _inputs(facts, dataset)
        c, s = facts["in_chans"], facts["image_size"]
        if facts["registered"]:
            lines += [f"`{facts['architecture']}` is one of hf-ckptkd's CIFAR-style networks, which timm knows only "
                      "once `hf_ckptkd` is imported, so this needs the hf-ckptkd package installed (`pip install .` "
                      "in a clone of its source); timm alone raises `RuntimeError: Unknown model`.", ""]
        lines += ["```python"]
        if facts["registered"]:
            lines += [f"import hf_ckptkd  # registers {facts['architecture']} with timm (without it: Unknown model)"]
        lines += [
            "import timm", "import torch", "",
            f'model = timm.create_model("hf-hub:{reference}", pretrained=True).eval()',
            f"images = torch.randn(2, {c}, {s}, {s})  # stand-in for {c}×{s}×{s} images normalised with "
            f"mean {mean} and std {std}",
            "with torch.no_grad():", "    predicted = model(images).argmax(-1)",
            'print([model.pretrained_cfg["label_names"][i] for i in predicted])' if facts["label_names"]
            else "print(predicted.tolist())",
            "```", "",
        ]
        return lines
    auto = facts["auto"]
    if facts["text"] and facts["has_tokenizer"]:
        lines += ["```python", "import torch", f"from transformers import {auto}, AutoTokenizer", "",
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", revision="{revision}")  # saved with the teacher',
                  f'model = {auto}.from_pretrained("{repo_id}", revision="{revision}").eval()',
                  f"inputs = tokenizer({SAMPLE_TEXTS!r}, padding=True, truncation=True, return_tensors=\"pt\")",
                  "with torch.no_grad():", "    predicted = model(**inputs).logits.argmax(-1)"]
    elif facts["text"]:
        lines += ["```python", "import torch", f"from transformers import {auto}", "",
                  f'model = {auto}.from_pretrained("{repo_id}", revision="{revision}").eval()',
                  "input_ids = torch.tensor([[2, 5, 6, 3]])  # token ids from the tokenizer it was trained with",
                  "with torch.no_grad():", "    predicted = model(input_ids=input_ids).logits.argmax(-1)"]
    else:
        mean, std = _inputs(facts, dataset)
        c, s = facts["in_chans"], facts["image_size"]
        lines += ["```python", "import torch", f"from transformers import {auto}", "",
                  f'model = {auto}.from_pretrained("{repo_id}", revision="{revision}").eval()',
                  f"pixel_values = torch.randn(2, {c}, {s}, {s})  # stand-in for {c}×{s}×{s} images normalised with "
                  f"mean {mean} and std {std}",
                  "with torch.no_grad():", "    predicted = model(pixel_values=pixel_values).logits.argmax(-1)"]
    lines += ["print([model.config.id2label[int(i)] for i in predicted])", "```", ""]
    return lines


def _distil_section(facts, repo_id, revision, ensemble, report, name, record, ident) -> list[str]:
    refs = " ".join(ensemble)
    temperature = report.temperature if report is not None else 4.0
    n = facts["num_labels"]
    lines = ["## Distil from it", ""]
    text_without_tokenizer = facts["text"] and not facts["has_tokenizer"]
    if ident is None or not ident.loadable or text_without_tokenizer:
        why = ("its dataset was not recorded" if ident is None else
               "it was trained on a local dataset" if not ident.loadable else "it holds no tokenizer")
        return lines + [
            f"With hf-ckptkd, from a student with the same {n} labels and your copy of the teacher's data ({why}, so "
            f"no command here can load it for you): `hf-ckptkd distill --model SPEC --teachers {refs} --dataset "
            "YOUR_DATA --output_dir runs/student`.", ""]
    student = TEXT_STUDENT if facts["text"] else IMAGE_STUDENT
    lines += [
        f"With hf-ckptkd (`pip install .` in a clone of its source), into a small student with the same {n} labels "
        f"(`{student}`; any model spec works). Both versions train on the first {TRY_EXAMPLES} training examples for "
        "one epoch, to see it work; drop `--max_train_samples` (`limit=`) and train longer for a real student.", "",
    ]
    label_column = record.get("label_column", "label")
    config = record.get("config")
    common = (f" --teachers {refs} \\\n    --dataset {name} --max_train_samples {TRY_EXAMPLES} --max_eval_samples "
              f"{TRY_EXAMPLES} --num_train_epochs 1 \\\n    --temperature {temperature:g} --alpha 0.5 --max_grad_norm 0 "
              "--output_dir runs/student")
    if label_column != "label":
        common = common.replace("--dataset", f"--label_column {label_column} --dataset")
    eval_split = record.get("test_split")
    if eval_split and eval_split != "test":
        common += f" --eval_split {eval_split}"
    labels = _labels_literal(facts)
    teachers = "[" + ", ".join(f'"{r}"' for r in ensemble) + "]"
    kd = (f"config = CheckpointKDConfig(output_dir=\"runs/student\", teachers=teachers, num_train_epochs=1,\n"
          f"                            temperature={temperature:g}, alpha=0.5, max_grad_norm=0.0, "
          "remove_unused_columns=False)")
    load = f'load_dataset_split("{name}", "train", limit={TRY_EXAMPLES}' + (f', config_name="{config}"' if config else "") + ")"
    if facts["text"]:
        text_column = record.get("text_column", "text")
        kwargs = json.dumps(TEXT_STUDENT_KWARGS)
        if not config:  # the command line takes no dataset config
            lines += ["```bash",
                      f"hf-ckptkd distill --model {student} --model_kwargs '{kwargs}'{common.replace('--dataset', f'--text_column {text_column} --tokenizer {repo_id}@{revision} --dataset', 1)}",
                      "```", ""]
        lines += [
            "```python",
            "from transformers import AutoTokenizer, DataCollatorWithPadding", "",
            "from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer",
            "from hf_ckptkd.data import load_dataset_split, tokenize_text_dataset",
            "from hf_ckptkd.models import build_model", "",
            f"teachers = {teachers}",
            f"labels = {labels}",
            f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", revision="{revision}")  # the teacher\'s own: '
            "the student must share it",
            f'train = tokenize_text_dataset({load}, tokenizer, "{text_column}", "{label_column}")  # limit=None: all',
            f'student = build_model("{student}", {n}, label_names=labels, model_kwargs={{',
            '    "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, '
            + ", ".join(f'"{k}": {v}' for k, v in TEXT_STUDENT_KWARGS.items()) + "})",
            kd,
            "trainer = CheckpointKDTrainer(model=student, args=config, train_dataset=train, label_names=labels,",
            "                              data_collator=DataCollatorWithPadding(tokenizer), teacher_tokenizer=tokenizer,",
            "                              student_tokenizer=tokenizer)",
            "trainer.train()",
            "```", "",
        ]
        return lines
    mean, std = _inputs(facts, name)
    c, s = facts["in_chans"], facts["image_size"]
    image_column = record.get("image_column", "image")
    if not config:
        flags = f" --image_size {s} --in_chans {c}" + (f" --image_column {image_column}" if image_column != "image" else "")
        lines += ["```bash", f"hf-ckptkd distill --model {student}{flags}{common}", "```", ""]
    lines += [
        "```python",
        "from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer",
        "from hf_ckptkd.data import (ImageColumns, ImageTransformConfig, build_image_transform, image_collator,",
        "                            load_dataset_split, with_image_transform)",
        "from hf_ckptkd.models import build_model", "",
        f"teachers = {teachers}",
        f"labels = {labels}",
        f"inputs = ImageTransformConfig(image_size={s}, in_chans={c}, mean={mean}, std={std})  # as the teacher's",
        f"train = with_image_transform({load},  # limit=None: all",
        f'                             build_image_transform(inputs, train=True), ImageColumns("{image_column}", "{label_column}"))',
        f'student = build_model("{student}", {n}, label_names=labels, in_chans={c}, image_size={s},',
        "                      mean=inputs.mean, std=inputs.std)",
        kd,
        "trainer = CheckpointKDTrainer(model=student, args=config, train_dataset=train, data_collator=image_collator,",
        "                              label_names=labels)",
        "trainer.train()",
        "```", "",
    ]
    return lines


__all__ = ["CARD_NAME", "CITATION", "TAGS", "build_model_card", "dataset_facts", "is_task_metric", "model_facts", "other_selectors",
           "task_metrics"]
