"""`hf-ckptkd` command line: thin subcommands over the library's functions.

Every `CheckpointKDConfig` field is a flag (Hugging Face's underscore style); `--config FILE.yaml`
supplies defaults that flags override. Errors are one sentence on stderr, exit status 2 for bad
input and 1 for failures; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser, set_seed

from ..config import CheckpointKDConfig, ConfigError
from ..data.loading import DataError
from ..data.config import DataConfig, cli_splits
from ..data.record import dataset_record
from ..hub import HubInputError, push_teachers_to_hub
from ..models.inputs import InputMismatchError
from ..launch import exit_launched_process
from ..models.build import ModelSpecError
from ..pipeline.stages import run
from ..pipeline.recipe import PIPELINE_STAGES, load_recipe
from ..references import TeacherReferenceError
from .select import cmd_select, select_parser
from ..selection import SelectionError
from ..selection.online import run_probe_settings
from ..snapshots.folders import SnapshotError, SnapshotIndex
from ..pipeline.study import run_study
from ..tasks import perplexity, prepare_run_data, task_for
from ..training.teacher_checks import LabelSpaceError
from ..training.teacher_logits import CachedLogitsError
from ..training.teacher_sharding import TeacherShardingError
from ..training.topk_cache import TeacherLogitsCacheError
from ..training.trainer import CheckpointKDTrainer

EXIT_BAD_INPUT, EXIT_FAILURE = 2, 1


@dataclass(kw_only=True)
class DataArguments(DataConfig):
    """What to train on (the `DataConfig` flags recipes share) and which model to build."""

    model: str = field(metadata={"help": "Model spec: timm:<name> or transformers:<config class or Hub id>."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation examples."})
    model_kwargs: str | None = field(default=None, metadata={"help": "JSON dict of model/config overrides, e.g. "
                                                                     "'{\"hidden_size\": 64}'."})
    config: str | None = field(default=None, metadata={"help": "YAML/JSON file of defaults for any flag."})


def _config_file_args(argv: list[str]) -> list[str]:
    """Turn `--config FILE` into flags placed before the command line's own (which then win)."""
    if "--config" not in argv:
        return argv
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise ConfigError("--config needs a file name")
    path = Path(argv[i + 1])
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path} is not valid YAML ({e})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a mapping of flag names to values")
    flags: list[str] = []
    for key, value in values.items():
        values_list = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *[json.dumps(v) if isinstance(v, dict) else str(v) for v in values_list]]
    return flags + argv[:i] + argv[i + 2:]


def _parse(dataclass_types, argv: list[str], prog: str):
    parser = HfArgumentParser(dataclass_types, prog=prog)
    try:
        *parsed, rest = parser.parse_args_into_dataclasses(_config_file_args(argv), return_remaining_strings=True)
    except SystemExit as e:  # argparse already printed the message
        raise SystemExit(EXIT_BAD_INPUT if e.code else 0) from None
    if rest:
        known = sorted(a.lstrip("-") for a in parser._option_string_actions if a.startswith("--"))
        bad = rest[0].lstrip("-")
        close = difflib.get_close_matches(bad, known, n=1)
        raise ConfigError(f"unknown flag {rest[0]}" + (f"; did you mean --{close[0]}?" if close else ""))
    return parsed


def _train(argv: list[str], prog: str, distill: bool) -> int:
    data_args, config = _parse((DataArguments, CheckpointKDConfig), argv, prog)
    if distill and not config.teachers:
        raise ConfigError("distill needs --teachers REF [REF ...] (snapshot folders, <snapshot_dir>:<name> or owner/name@rev)")
    if not distill and config.teachers:
        raise ConfigError("train-teacher trains without teachers; use `hf-ckptkd distill` to distil from --teachers")
    config.remove_unused_columns = False  # the image transform produces the model's inputs on the fly
    kwargs = json.loads(data_args.model_kwargs) if data_args.model_kwargs else {}
    splits = cli_splits(data_args, data_args.max_train_samples, data_args.max_eval_samples,
                        labelled=task_for(data_args).labelled)
    run = prepare_run_data(data_args, splits, where="the command line")
    if config.cache_teacher_logits and not run.task.cache_safe(run):
        raise ConfigError("--cache_teacher_logits needs a deterministic training transform: add --crop_padding 0 "
                          "--hflip false, or drop --cache_teacher_logits")
    train_ds, eval_ds, _ = run.model_ready()
    set_seed(config.seed)  # reproducible initial weights, as in transformers' example scripts
    model = run.build_model(data_args.model, kwargs)
    record = dataset_record(data_args.dataset, train_split=data_args.train_split, train_examples=len(train_ds),
                            eval_split=data_args.test_split, eval_examples=len(eval_ds), test_split=data_args.test_split,
                            image_column=data_args.image_column, label_column=data_args.label_column,
                            text_column=data_args.text_column, tokenizer=data_args.tokenizer,
                            max_length=data_args.max_length)
    # --snapshot_keep_top scores snapshots on the run's training data, where `hf-ckptkd select` draws its probe.
    keep_top = {"probe_dataset": run.train, "probe_settings": run_probe_settings(run)} \
        if config.snapshot_keep_top is not None else {}
    trainer = CheckpointKDTrainer(model=model, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                                  data_collator=run.collator, label_names=run.label_names, dataset_record=record,
                                  **keep_top,
                                  **run.trainer_kwargs(distilling=bool(config.teachers)))
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    # Reuse the evaluation the run already made at its last step instead of evaluating twice.
    last = trainer.state.log_history[-2] if len(trainer.state.log_history) > 1 else {}
    metrics = last if last.get("step") == trainer.state.global_step and "eval_accuracy" in last else trainer.evaluate()
    if trainer.is_world_process_zero():
        if run.task.token_level:
            print(f"{data_args.test_split} next-token accuracy: {metrics['eval_accuracy']:.4f}, perplexity: "
                  f"{perplexity(metrics['eval_loss']):.2f}")
        else:
            print(f"{data_args.test_split} accuracy: {metrics['eval_accuracy']:.4f}")
        if config.snapshot_strategy != "no":
            print(f"snapshots: {config.snapshot_dir}")
    return 0


def cmd_snapshots(args) -> int:
    index = SnapshotIndex.load(args.snapshot_dir)
    scored = any(s.score for s in index) or bool(index.removed)
    print(f"{'name':<14}{'epoch':>8}{'step':>9}{'lr':>11}{'train loss':>12}{'eval acc':>10}"
          + (f"{'score':>9}" if scored else "") + "  final")
    rows = [(s.global_step, s.name, s) for s in index] + [(e.get("global_step", 0), e["name"], e) for e in index.removed]
    for _, _, s in sorted(rows, key=lambda row: row[:2]):
        if isinstance(s, dict):  # a snapshot keep_top removed: only its index entry is left
            acc = s.get("eval_metrics", {}).get("eval_accuracy")
            acc = f"{acc:.4f}" if acc is not None else "-"
            print(f"{s['name']:<14}{s.get('epoch', 0):>8.2f}{s.get('global_step', 0):>9}{'-':>11}{'-':>12}{acc:>10}"
                  f"{s.get('score', {}).get('value', 0):>9.4f}  removed")
            continue
        lr = f"{s.learning_rate:.2e}" if s.learning_rate is not None else "-"
        loss = f"{s.train_loss:.4f}" if s.train_loss is not None else "-"
        acc = f"{s.accuracy:.4f}" if s.accuracy is not None else "-"
        score = (f"{s.score['value']:>9.4f}" if s.score else f"{'-':>9}") if scored else ""
        print(f"{s.name:<14}{s.epoch:>8.2f}{s.global_step:>9}{lr:>11}{loss:>12}{acc:>10}{score}  {'yes' if s.final else ''}")
    return 0


def _push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-ckptkd push", description="Publish teacher snapshots to the Hugging Face Hub with model cards.")
    parser.add_argument("source", help="A selection folder (pushes its selected snapshots), a snapshot folder, or a "
                                       "snapshot dir (pushes all its snapshots).")
    parser.add_argument("--repo_id", required=True, help="OWNER/NAME. Several snapshots go to OWNER/NAME-<snapshot> "
                                                         "each, or with --as_revisions to OWNER/NAME as tags.")
    parser.add_argument("--as_revisions", action="store_true", help="Push an ensemble to one repo, one tag per member.")
    parser.add_argument("--private", action="store_true", help="Create new repos private.")
    parser.add_argument("--token", default=None, help="A write token (default: HF_TOKEN or `hf auth login`; prefer "
                                                      "those, since a flag is visible in the process list).")
    parser.add_argument("--revision_prefix", default="", help="Prefix of the tags (<prefix><snapshot name>).")
    parser.add_argument("--names", nargs="+", default=None, help="Push only these snapshots of the source.")
    parser.add_argument("--dataset", default=None, help="The run's dataset for the card (fashion_mnist or a Hub id), when "
                                                          "neither the snapshots nor the selection record it.")
    parser.add_argument("--run_name", default=None, help="The run's name for the card (default: the run folder's).")
    return parser


def cmd_push(args) -> int:
    pushed = push_teachers_to_hub(args.source, args.repo_id, private=args.private, as_revisions=args.as_revisions,
                                  token=args.token, revision_prefix=args.revision_prefix, names=args.names,
                                  dataset=args.dataset, run_name=args.run_name)
    for p in pushed:
        print(f"{p.name}: {p.url} tag {p.revision} commit {p.commit} ({'new commit' if p.created else 'unchanged'})")
    if pushed:
        print("distil from them: hf-ckptkd distill --model SPEC --teachers " + " ".join(p.reference for p in pushed))
    return 0


# The errors that mean "the input is wrong" (exit status 2), as opposed to a failure while running (1).
BAD_INPUT_ERRORS = (ConfigError, DataError, ModelSpecError, SnapshotError, TeacherReferenceError, LabelSpaceError,
                    InputMismatchError, SelectionError, HubInputError, CachedLogitsError, TeacherLogitsCacheError,
                    TeacherShardingError)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    commands = {
        "train-teacher": lambda rest: _train(rest, "hf-ckptkd train-teacher", distill=False),
        "distill": lambda rest: _train(rest, "hf-ckptkd distill", distill=True),
        "snapshots": lambda rest: cmd_snapshots(_simple_parser("snapshots").parse_args(rest)),
        "run": lambda rest: cmd_run(_run_parser().parse_args(rest)),
        "study": lambda rest: cmd_study(_study_parser().parse_args(rest)),
        "select": lambda rest: cmd_select(select_parser().parse_args(rest)),
        "push": lambda rest: cmd_push(_push_parser().parse_args(rest)),
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: hf-ckptkd {" + ",".join(commands) + "} ...", file=sys.stderr if argv else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"hf-ckptkd: unknown command {argv[0]!r}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0
    try:
        return commands[argv[0]]([a for a in argv[1:] if a != "--debug"])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    except Exception as e:
        if debug:
            raise
        bad_input = isinstance(e, BAD_INPUT_ERRORS)
        print(f"hf-ckptkd {argv[0]}: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT if bad_input else EXIT_FAILURE


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-ckptkd run", description="Run a recipe end to end (resumable).")
    parser.add_argument("recipe", help="A recipe YAML file (see recipes/).")
    parser.add_argument("--output_dir", "--output", default=None, help="Run directory (default runs/<recipe name>).")
    parser.add_argument("--seeds", type=int, default=None, help="Student seeds per cell (overrides the recipe).")
    parser.add_argument("--stages", nargs="+", default=None, metavar="STAGE",
                        help=f"Stages to run, from {', '.join(PIPELINE_STAGES)} (default all).")
    parser.add_argument("--oracle", action="store_true", default=None, help="Also distil from every snapshot.")
    parser.add_argument("--push_to_hub", "--push-to-hub", default=None, metavar="REPO_PREFIX",
                        help="Publish the chosen teachers to <REPO_PREFIX>-k1 / -k2 after the report.")
    return parser


def cmd_run(args) -> int:
    recipe = load_recipe(args.recipe)
    output_dir = args.output_dir or f"runs/{recipe.name}"
    run(recipe, output_dir, stages=args.stages, seeds=args.seeds, oracle=args.oracle, push_to_hub=args.push_to_hub)
    return 0


def _study_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-ckptkd study", description="Run a study: one recipe varied along one "
                                     "axis, every cell with the oracle; prints one table.")
    parser.add_argument("study", help="A study YAML file (see recipes/studies/).")
    parser.add_argument("--output_dir", "--output", default=None, help="Default runs/studies/<study name>.")
    parser.add_argument("--seeds", type=int, default=None, help="Student seeds per cell (overrides the study).")
    return parser


def cmd_study(args) -> int:
    run_study(args.study, args.output_dir, args.seeds)
    return 0


def _simple_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"hf-ckptkd {command}")
    if command == "snapshots":
        parser.add_argument("snapshot_dir", help="A run's snapshot folder (or its output_dir).")
    return parser


def console_main() -> None:
    """The `hf-ckptkd` command; under `accelerate launch` a gloo process must not exit normally."""
    exit_launched_process(main())

