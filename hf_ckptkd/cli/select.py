"""`hf-ckptkd select`: score a teacher run's snapshots (or a Hub repo's revisions, folders or commits) on a
probe set drawn from the training data and choose the teacher(s); the command line over `select_teachers`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..config import (DEFAULT_IMAGE_COLUMN, DEFAULT_LABEL_COLUMN, DEFAULT_TEMPERATURE, MODEL_LABEL_COLUMN,
                      ConfigError)
from ..data.config import DEFAULT_MAX_LENGTH, DataConfig
from ..data.loading import DataError, default_normalisation, load_dataset_split, load_tokenizer
from ..data.images import ImageTransformConfig
from ..hub import hub_candidates
from ..models.folders import folder_holds_causal_lm, has_saved_tokenizer
from ..selection import DEFAULT_ESTIMATOR, ESTIMATORS, OBJECTIVES, objective_named, select_teachers
from ..selection.processes import selection_state
from ..selection.settings import (
    DEFAULT_ACCURACY_MARGIN,
    DEFAULT_BATCH_SIZE,
    DEFAULT_BETA,
    DEFAULT_MAX_PROBE_SAMPLES,
    DEFAULT_OBJECTIVE,
    DEFAULT_PROBE_CONTEXT,
    SelectionSettings,
)
from ..snapshots.folders import SnapshotIndex
from ..tasks import CausalLanguageModeling, task_for


def select_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-ckptkd select",
        description="Score every snapshot of a teacher run (or the checkpoints a Hub model repo publishes as "
                    "revisions, folders or commits) on a probe set drawn from the training data and choose the "
                    "teacher(s) with the most task-related information. Under `accelerate launch` the processes "
                    "share the snapshots.")
    parser.add_argument("snapshot_dir", metavar="SOURCE",
                        help="A run's snapshot folder (or its output_dir holding snapshots/), or with --revisions, "
                             "--subfolders or --commits a Hub model repo OWNER/NAME (OWNER/NAME@REVISION for the "
                             "folders at, or the commits of, another revision than main).")
    parser.add_argument("--revisions", nargs="+", default=None, metavar="REVISION",
                        help="Select among the branches and tags of the Hub repo SOURCE: one glob ('step*'), several "
                             "names, or 'all'.")
    parser.add_argument("--subfolders", nargs="+", default=None, metavar="FOLDER",
                        help="Select among the folders of the Hub repo SOURCE, as Trainer(push_to_hub=True, "
                             "hub_strategy='all_checkpoints') pushes them: one glob ('checkpoint-*'), several folders, "
                             "or 'all' (every folder holding a model). With --revisions: the folders at each revision.")
    parser.add_argument("--commits", default=None, metavar="N|all",
                        help="Select among the commits of the Hub repo SOURCE's main branch (or SOURCE's @branch) "
                             "that change its weights, as hub_strategy='every_save' makes them: 'all', or the N most "
                             "recent.")
    parser.add_argument("--token", default=None, help="A Hub token for a private or gated repo (default: HF_TOKEN or "
                                                      "`hf auth login`; prefer those, a flag shows in the process list).")
    parser.add_argument("--dataset", required=True,
                        help="'fashion_mnist' (built in) or a datasets id/path: the teachers' training data.")
    parser.add_argument("--split", default=None,
                        help="Split the probe set is drawn from (default: train; test instead when the objective reads "
                             "the probe as held-out data, held_out or loss, and the snapshots record that they trained "
                             "on train). Give a validation split where the dataset has one.")
    parser.add_argument("--max_probe_samples", type=int, default=DEFAULT_MAX_PROBE_SAMPLES,
                        help="Probe set size: a label-stratified sample seeded by --seed (causal LMs: token "
                             "positions, each predicting the token after it).")
    parser.add_argument("--k", type=int, default=1, help="How many teachers to choose.")
    parser.add_argument("--estimator", default=DEFAULT_ESTIMATOR, choices=sorted(ESTIMATORS), help="Information estimator.")
    parser.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=list(OBJECTIVES),
                        help="What chooses the teachers: "
                             + "; ".join(f"'{o.name}': {o.summary}" for o in OBJECTIVES.values()) + ".")
    parser.add_argument("--accuracy_margin", type=float, default=DEFAULT_ACCURACY_MARGIN,
                        help="Warn when a chosen snapshot's probe accuracy is more than this below the best one's.")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="Distillation temperature T.")
    parser.add_argument("--beta", type=float, default=DEFAULT_BETA,
                        help="Weight β of the input information in J = Ĩ(Y;·) + β·Î(X;·) (a number >= 0; the "
                             "information objectives only).")
    parser.add_argument("--output", default=None, help="Report folder (default: <snapshot_dir>/../selection, or "
                                                       "selections/OWNER--NAME for a Hub repo).")
    parser.add_argument("--seed", type=int, default=0, help="Seeds the probe draw and the estimator.")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="Probe examples per forward pass.")
    parser.add_argument("--held_out_split", default=None,
                        help="Also report each snapshot's accuracy on this split (e.g. test); it does not enter J.")
    parser.add_argument("--image_column", default=DEFAULT_IMAGE_COLUMN, help="The dataset's image column.")
    parser.add_argument("--label_column", default=DEFAULT_LABEL_COLUMN, help="The dataset's label column.")
    parser.add_argument("--text_column", default=None,
                        help="For text teachers: the dataset's text column (the probe is tokenised with --tokenizer).")
    parser.add_argument("--tokenizer", default=None,
                        help="Tokenizer of the text teachers (a folder, Hub id, owner/name@revision or 'fortunes'); "
                             "default: the one saved in the snapshots.")
    parser.add_argument("--max_length", type=int, default=DEFAULT_MAX_LENGTH,
                        help="Truncate probe texts to this many tokens (causal LMs: the probe text is cut into "
                             "blocks of this many tokens).")
    parser.add_argument("--probe_context", type=int, default=None,
                        help=f"Causal LMs: the probe text is cut into segments of this many tokens, each read in one "
                             f"forward, a position's context its segment up to it (default {DEFAULT_PROBE_CONTEXT}, "
                             "or the snapshots' positions if fewer; at most those).")
    parser.add_argument("--disable_tqdm", action="store_true", help="No progress bars.")
    return parser


def _select_tokenizer(args, first: Path | str | None, where: str):
    """The text teachers' tokenizer: --tokenizer, else the one saved with the first candidate (a
    snapshot folder, or the first Hub revision's `owner/name@revision`)."""
    source = args.tokenizer
    if source is None:
        holds = first is not None and (not isinstance(first, Path) or has_saved_tokenizer(first))
        if not holds:
            raise ConfigError(f"--text_column needs --tokenizer: the snapshots in {where} hold no tokenizer "
                              "(they were written before snapshots saved one, or by a run without processing_class); "
                              "pass the tokenizer the teachers were trained with (a folder, Hub id or 'fortunes')")
        source = str(first)
    try:
        tokenizer = load_tokenizer(source)
    except (OSError, ValueError, DataError) as e:
        raise ConfigError(f"--tokenizer {source}: could not be loaded ({e}); give a tokenizer folder, a Hub id, "
                          "owner/name@revision or 'fortunes'") from e
    config = first / "config.json" if isinstance(first, Path) else None
    vocab = json.loads(config.read_text()).get("vocab_size") if config is not None and config.is_file() else None
    if vocab and len(tokenizer) > vocab:  # its ids would index past the teachers' embeddings
        raise ConfigError(f"--tokenizer {source} has {len(tokenizer)} tokens but the teachers' vocabulary has {vocab}; "
                          "pass the tokenizer the teachers were trained with")
    return tokenizer


def _one_or_list(values: list[str] | None):
    return values if values is None or len(values) > 1 else values[0]


def _select_source(args):
    """(what select_teachers takes, the Hub request {revisions, subfolders, commits} or {}, the first
    candidate's folder or reference, where the candidates are, the default report folder)."""
    request = {key: value for key, value in (("revisions", _one_or_list(args.revisions)),
                                             ("subfolders", _one_or_list(args.subfolders)),
                                             ("commits", args.commits)) if value is not None}
    if not request:
        index = SnapshotIndex.load(args.snapshot_dir)
        first = index.snapshots[0].path if len(index) else None
        return index, {}, first, str(index.snapshot_dir), index.snapshot_dir.parent / "selection"
    first = None
    if args.text_column and args.tokenizer is None:  # the tokenizer saved with the first candidate
        listed = hub_candidates(args.snapshot_dir, token=args.token, **request)
        first = listed[0].reference if listed else None
    folder = args.snapshot_dir.replace("/", "--").replace("@", "--").replace(":", "--")
    return args.snapshot_dir, request, first, args.snapshot_dir, Path("selections") / folder


def _select_settings(args) -> SelectionSettings:
    # What a model does not record of its input normalisation follows the training command's convention.
    mean, std = default_normalisation(args.dataset, 1)
    return SelectionSettings.of(
        k=args.k, temperature=args.temperature, objective=args.objective, estimator=args.estimator,
        max_probe_samples=args.max_probe_samples, seed=args.seed, batch_size=args.batch_size,
        accuracy_margin=args.accuracy_margin, beta=args.beta, probe_context=args.probe_context,
        label_column=MODEL_LABEL_COLUMN if args.text_column else args.label_column, image_column=args.image_column,
        default_transform=ImageTransformConfig(mean=mean, std=std))


def _trained_on(args, source) -> bool:
    """Whether the objective reads the probe as held-out data (`held_out`, `loss`: on examples the
    snapshots trained on it would reward memorising them) and the data record the snapshots keep says
    they trained on the probe's dataset and split. Known before anything is loaded."""
    if not objective_named(args.objective).needs_held_out_probe or not isinstance(source, SnapshotIndex):
        return False
    return any(s.dataset.get("name") == args.dataset and (s.dataset.get("train") or {}).get("split") == args.split
               for s in source)


def cmd_select(args) -> int:
    if args.tokenizer is not None and args.text_column is None:
        raise ConfigError("--tokenizer is for text teachers: add --text_column NAME (the dataset's text column), or "
                          "drop --tokenizer for image teachers")
    started = time.perf_counter()
    settings = _select_settings(args)  # bad settings fail before any data is read
    source, request, first, where, default_output = _select_source(args)
    if args.split is None:
        args.split = "train"
        if _trained_on(args, source):
            args.split = "test"
            print(f"probe: the test split of {args.dataset} (the snapshots trained on its train split, and objective "
                  f"{args.objective!r} reads the probe as held-out data; --split names another)")
    elif _trained_on(args, source):
        raise ConfigError(
            f"--objective {args.objective} scores the snapshots' outputs on held-out data, but --split {args.split} of "
            f"{args.dataset} is what they were trained on; pass a split they did not train on (e.g. --split test or a "
            "validation split), or --objective accuracy, which reads the evaluation the run recorded")
    tokenizer = _select_tokenizer(args, first, where) if args.text_column else None
    # The task of the snapshots turns the raw split into the probe: a causal LM's corpus, or the classifiers' data.
    causal_lm = isinstance(first, Path) and folder_holds_causal_lm(first)
    data = DataConfig(dataset=args.dataset, image_column=args.image_column, label_column=args.label_column,
                      text_column=args.text_column, max_length=args.max_length,
                      task=CausalLanguageModeling.name if causal_lm else None)
    task = task_for(data)
    probe = task.probe_dataset(load_dataset_split(args.dataset, args.split), data, tokenizer)
    held_out = task.probe_dataset(load_dataset_split(args.dataset, args.held_out_split), data, tokenizer) \
        if args.held_out_split else None
    report = select_teachers(source, probe, **request, token=args.token, settings=settings, held_out_probe=held_out,
                             progress=not args.disable_tqdm)
    report.extra["dataset"] = {"name": args.dataset, "split": args.split, "held_out_split": args.held_out_split,
                               **({"text_column": args.text_column} if args.text_column else {})}
    if not selection_state().is_main_process:  # every process has the report; one writes and prints it
        return 0
    output = Path(args.output) if args.output else default_output
    report.save(output)
    print(report.to_markdown())
    for name in report.selected:
        print(report.explain(name))
    for warning in report.warnings:
        print(f"warning: {warning}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"chosen: {', '.join(report.selected)}")
    if request:
        print("distil from it: hf-ckptkd distill --model SPEC --teachers " + " ".join(report.selected))
    print(f"report: {output} (selection.json, table.md, information_plane.png); "
          f"took {time.perf_counter() - started:.1f} s")
    return 0
