"""`CheckpointKDConfig`: `TrainingArguments` plus snapshot and distillation settings.

Parses with `HfArgumentParser` from the command line, a dict, a JSON or a YAML file, like any
`TrainingArguments`. Bad values stop at construction time with a message naming the field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
import torch
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType

SNAPSHOT_STRATEGIES = ("no", "epoch", "steps")
# What keep-top scores each snapshot by, and on how many probe examples: the forward pass costs in
# proportion to the probe and the estimator with its square, and the overhead goal
# (benchmarks/keep_top.py) is set for 1,000. The objective must be one whose score of one snapshot
# does not depend on the others (`scores_alone` in selection.objectives), which keep-top checks.
DEFAULT_KEEP_TOP_OBJECTIVE = "outputs"
DEFAULT_KEEP_TOP_PROBE_SAMPLES = 1000
KD_LOSSES = ("kl", "reverse_kl", "jsd", "mse")
# The distillation temperature of the paper (T = 4), the default wherever a temperature is asked for.
DEFAULT_TEMPERATURE = 4.0
# Each list's first value is its default.
ENSEMBLE_MODES = ("mean_logits", "mean_probs")
TEACHER_FUSIONS = ("auto", "fused", "loop")
TEACHER_DTYPES = ("float32", "float16", "bfloat16")
# How a causal LM's top-k teacher-logit cache treats the mass outside the top k (topk_losses.MISSING_MASS).
TOPK_MISSING_MASS = ("tail", "renormalize")
DEFAULT_ENSEMBLE_MODE, DEFAULT_TEACHER_FUSION, DEFAULT_TEACHER_DTYPE = ENSEMBLE_MODES[0], TEACHER_FUSIONS[0], TEACHER_DTYPES[0]
DEFAULT_TOPK_MISSING_MASS = TOPK_MISSING_MASS[0]
# The teacher's most likely tokens a causal LM's top-k teacher-logit cache keeps per position (~4*k bytes a token).
DEFAULT_TEACHER_LOGITS_TOP_K = 64
# A dataset's columns unless told otherwise. Trainer's models take their labels as "labels", which is
# what tokenising and the collators name the column; either name is found wherever a label column is read.
DEFAULT_LABEL_COLUMN = "label"
MODEL_LABEL_COLUMN = "labels"
LABEL_COLUMN_ALIASES = (DEFAULT_LABEL_COLUMN, MODEL_LABEL_COLUMN)
DEFAULT_IMAGE_COLUMN = "image"
DEFAULT_TEXT_COLUMN = "text"


class ConfigError(ValueError):
    """A `CheckpointKDConfig` field with a value that cannot work."""


def launched_distributed_without_accelerator() -> bool:
    """Whether this process is one of several (`accelerate launch`, torchrun) on a machine without an
    accelerator: then accelerate must be told to use the CPU (gloo), or it sees a single process."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return distributed and not torch.cuda.is_available() and not (hasattr(torch, "xpu") and torch.xpu.is_available())


def accelerator_available() -> bool:
    """Whether torch sees a device that pinned host memory could feed (CUDA, XPU, MPS, ...)."""
    return torch.accelerator.is_available()  # what the DataLoader's pin_memory warning asks too


def help_field(default, help: str):
    """A dataclass field with its `--help` text (default a plain value, not a list or dict)."""
    return field(default=default, metadata={"help": help})


def choice_field(default: str, choices: tuple[str, ...], help: str):
    """A dataclass field whose value is one of `choices` (HfArgumentParser turns them into the flag's choices)."""
    return field(default=default, metadata={"help": help, "choices": list(choices)})


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in choices)}")


# The fields that act only when a student has teachers: a student trained without one ignores them.
DISTILLATION_FIELDS = ("teachers", "temperature", "alpha", "kd_loss", "jsd_beta", "kd_chunk_size", "ensemble_mode",
                       "teacher_weights", "teacher_dtype", "teacher_fusion", "cache_teacher_logits", "teacher_logits_dir",
                       "teacher_logits_top_k", "teacher_logits_missing_mass")


@dataclass
class CheckpointKDConfig(TrainingArguments):
    """Training arguments for teachers that keep snapshots and students that learn from them."""

    # --- step-decay learning rate (teacher and student runs alike) ---
    lr_decay_epochs: list[float] | None = help_field(None,
        "Step-decay (multistep) schedule: the epochs at which the learning rate is multiplied by "
        "`lr_decay_factor`, e.g. 18 36 54 for a 60-epoch run. Values all in (0, 1) are fractions of "
        "training instead (0.3 0.6 0.9), which scale with the run's length. Increasing; one convention "
        "per list. After the usual linear warm-up (warmup_steps) the rate is "
        "learning_rate * lr_decay_factor^(milestones passed). With max_steps set, epochs count as "
        "fractions epoch/num_train_epochs of max_steps. Replaces lr_scheduler_type (leave it 'linear'). "
        "Unset (the default): no step decay.")
    lr_decay_factor: float = help_field(0.1,
        "What each `lr_decay_epochs` milestone multiplies the learning rate by, in (0, 1].")
    # --- snapshots (teacher runs) ---
    snapshot_strategy: str = choice_field("no", SNAPSHOT_STRATEGIES,
        "When to keep a teacher snapshot: 'no', 'epoch' (every `snapshot_every` epochs) or "
        "'steps' (every `snapshot_every` optimizer steps). The final model is always kept too.")
    snapshot_every: int = field(
        default=1, metadata={"help": "Epochs or steps between snapshots (a positive integer)."}
    )
    snapshot_dir: str | None = help_field(None,
        "Folder for snapshots; defaults to <output_dir>/snapshots. Kept outside the checkpoint-* "
        "pattern, so save_total_limit never deletes snapshots.")
    snapshot_keep_top: int | None = help_field(None,
        "Keep only this many best snapshots on disk, plus the final one. Each snapshot is scored when it is "
        "written, on a probe set, by J = I(Y;.) + beta*I(X;.) of that snapshot alone (fixed scales, no "
        "rescaling over the run, so scores written hours apart compare); the rest are deleted, and "
        "index.json keeps every score and lists the deleted snapshots as removed. Needs a probe set: "
        "CheckpointKDTrainer(probe_dataset=...) (train-teacher and recipes pass one). Unset: keep every snapshot.")
    snapshot_score_objective: str = help_field(DEFAULT_KEEP_TOP_OBJECTIVE,
        "What snapshot_keep_top scores: 'outputs' (the outputs softened at snapshot_score_temperature, what a "
        "student is taught) or 'features' (the penultimate features); any selection objective that scores "
        "one snapshot alone.")
    snapshot_score_temperature: float = help_field(DEFAULT_TEMPERATURE,
        "Temperature T at which snapshot_keep_top softens the outputs it scores (> 0).")
    snapshot_probe_samples: int = help_field(DEFAULT_KEEP_TOP_PROBE_SAMPLES,
        "Probe examples snapshot_keep_top scores each snapshot on (a label-stratified, seeded sample of "
        "the probe set, drawn as select_teachers draws it).")
    snapshot_push_to_hub: str | None = help_field(None,
        "Hub repo 'owner/name' to push each snapshot to as it is written, as a commit tagged with the snapshot's "
        "name (epoch-0006; what push --as_revisions makes, so select --revisions 'epoch-*' finds them): from the "
        "main process, in the background, retried on transient Hub errors, never twice (snapshot.json's "
        "SHA-256 decides, also after a resume); training ends once the last push is done. The token is "
        "hub_token (else HF_TOKEN / `hf auth login`), checked for write access before training starts; "
        "hub_private_repo makes a new repo private. With snapshot_keep_top, pruning deletes local copies only.")
    # --- distillation (student runs) ---
    teachers: list[str] | None = help_field(None,
        "Teacher references: a snapshot folder, '<snapshot_dir>:<name>' or a Hub repo "
        "'owner/name[@revision]'. Several make a snapshot ensemble. Empty: train without a teacher.")
    temperature: float = field(default=DEFAULT_TEMPERATURE, metadata={"help": "Softmax temperature T of the distillation loss (> 0)."})
    alpha: float = help_field(0.5,
        "Weight of the student's own loss L in [0, 1] (what the Trainer computes without teachers: the model's "
        "cross-entropy, label smoothing, compute_loss_func or a compute_loss override): loss = alpha*L + "
        "(1-alpha)*T^2*KD.")
    kd_loss: str = choice_field("kl", KD_LOSSES,
        "Distillation loss: 'kl' (KL(teacher||student), the paper's), 'reverse_kl' "
        "(KL(student||teacher)), 'jsd' (the generalised Jensen-Shannon divergence of GKD, see jsd_beta) "
        "or 'mse' (on logits).")
    jsd_beta: float = help_field(0.5,
        "beta of kd_loss='jsd', in [0, 1], as TRL's GKD defines it: 0 is KL(teacher||student), 1 is "
        "KL(student||teacher), between them the divergence to the mixture beta*teacher + (1-beta)*student.")
    kd_chunk_size: int = help_field(256,
        "Causal LMs: the KD term is computed over this many token positions at a time (and recomputed "
        "in backward), so only one chunk's (positions, vocab) probabilities exist beyond the logits.")
    ensemble_mode: str = choice_field(DEFAULT_ENSEMBLE_MODE, ENSEMBLE_MODES,
        "How teacher members are combined: 'mean_logits' (the paper's) or 'mean_probs' "
        "(mean of the tempered probabilities).")
    teacher_weights: list[float] | None = field(
        default=None, metadata={"help": "Optional weight per teacher (same order as `teachers`); default equal."}
    )
    teacher_dtype: str = choice_field(DEFAULT_TEACHER_DTYPE, TEACHER_DTYPES,
        "dtype the frozen teachers run in: float32, float16 or bfloat16.")
    teacher_fusion: str = choice_field(DEFAULT_TEACHER_FUSION, TEACHER_FUSIONS,
        "Run same-architecture teachers as one batched forward ('fused', stacked weights with "
        "torch.func.vmap), one after another ('loop'), or pick the faster on this device ('auto').")
    cache_teacher_logits: bool = help_field(False,
        "Compute the teachers' outputs for the training set once and reuse them every epoch. Classifiers: "
        "their logits, kept in memory (needs a deterministic training transform, no random augmentation). "
        "Causal LMs: the top-k log-probabilities of every token (teacher_logits_top_k), written to "
        "teacher_logits_dir in one pass of the teachers; a later run with the same teachers, training set, "
        "temperature and k reads them from there without loading the teachers.")
    teacher_logits_dir: str | None = help_field(None,
        "Causal LMs with cache_teacher_logits: the folder of the top-k cache (default "
        "<output_dir>/teacher-logits). Point several students (seeds, sizes) at one folder to run the "
        "teachers once; a folder written for other teachers, data, temperature or k is refused, never overwritten.")
    teacher_logits_top_k: int = help_field(DEFAULT_TEACHER_LOGITS_TOP_K,
        "Causal LMs with cache_teacher_logits: how many of the teacher's most likely tokens are kept per "
        "position (at most the vocabulary size); about 4*k bytes per token on disk.")
    teacher_logits_missing_mass: str = choice_field(DEFAULT_TOPK_MISSING_MASS, TOPK_MISSING_MASS,
        "Causal LMs with cache_teacher_logits: what the KD term does with the teacher's mass outside its top k. "
        "'tail': one more bin holding all other tokens on both sides (the student learns how much mass the "
        "teacher leaves to them); 'renormalize': both distributions restricted to the k tokens and renormalised.")

    def __post_init__(self):
        if launched_distributed_without_accelerator():
            # Trainer would otherwise see no distributed setup and run N independent copies racing over
            # output_dir; gloo over CPU processes is what `accelerate launch --multi_gpu` means here.
            self.use_cpu = True
        if self.dataloader_pin_memory and (self.use_cpu or not accelerator_available()):
            # Pinned memory only speeds copies to an accelerator; without one torch warns on every epoch.
            self.dataloader_pin_memory = False
        super().__post_init__()
        _choice("snapshot_strategy", self.snapshot_strategy, SNAPSHOT_STRATEGIES)
        _choice("kd_loss", self.kd_loss, KD_LOSSES)
        _choice("ensemble_mode", self.ensemble_mode, ENSEMBLE_MODES)
        _choice("teacher_fusion", self.teacher_fusion, TEACHER_FUSIONS)
        _choice("teacher_dtype", self.teacher_dtype, TEACHER_DTYPES)
        _choice("teacher_logits_missing_mass", self.teacher_logits_missing_mass, TOPK_MISSING_MASS)
        if not isinstance(self.snapshot_every, int) or self.snapshot_every <= 0:
            raise ConfigError(f"snapshot_every={self.snapshot_every!r} must be a positive integer (epochs or steps "
                              "between snapshots)")
        _check_keep_top(self)
        _check_snapshot_push(self)
        if self.snapshot_dir is None:
            self.snapshot_dir = str(Path(self.output_dir) / "snapshots")
        if Path(self.snapshot_dir).exists() and not Path(self.snapshot_dir).is_dir():
            raise ConfigError(f"snapshot_dir={self.snapshot_dir!r} is a file, not a folder; choose another path "
                              "or remove the file")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha={self.alpha} must lie in [0, 1] (the weight of the student's own loss)")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature} must be > 0")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ConfigError(f"jsd_beta={self.jsd_beta} must lie in [0, 1] (0: KL(teacher||student), 1: "
                              "KL(student||teacher), as GKD's beta)")
        if isinstance(self.kd_chunk_size, bool) or not isinstance(self.kd_chunk_size, int) or self.kd_chunk_size < 1:
            raise ConfigError(f"kd_chunk_size={self.kd_chunk_size!r} must be a positive integer (token positions "
                              "per chunk of the KD term)")
        _check_lr_decay(self)
        _check_teacher_logits_cache(self)
        if self.teacher_weights is not None:
            if not self.teachers or len(self.teacher_weights) != len(self.teachers):
                raise ConfigError(f"teacher_weights has {len(self.teacher_weights)} values but there are "
                                  f"{len(self.teachers or [])} teachers; give one weight per teacher")
            if any(w < 0 for w in self.teacher_weights) or sum(self.teacher_weights) <= 0:
                raise ConfigError(f"teacher_weights={self.teacher_weights} must be non-negative with a positive sum")


def _check_teacher_logits_cache(config: CheckpointKDConfig) -> None:
    k = config.teacher_logits_top_k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"teacher_logits_top_k={k!r} must be a positive integer (the teacher's most likely tokens "
                          f"kept per position, e.g. {DEFAULT_TEACHER_LOGITS_TOP_K})")
    if config.teacher_logits_dir is not None and not config.cache_teacher_logits:
        raise ConfigError(f"teacher_logits_dir={config.teacher_logits_dir!r} is where cache_teacher_logits writes and "
                          "reads a causal LM's top-k teacher logits; set cache_teacher_logits=True "
                          "(--cache_teacher_logits) or drop teacher_logits_dir")
    if config.teacher_logits_dir is not None and Path(config.teacher_logits_dir).is_file():
        raise ConfigError(f"teacher_logits_dir={config.teacher_logits_dir!r} is a file, not a folder; choose another path")


def _check_keep_top(config: CheckpointKDConfig) -> None:
    keep, probe = config.snapshot_keep_top, config.snapshot_probe_samples
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ConfigError(f"snapshot_keep_top={keep!r} must be a positive integer, the number of snapshots to keep "
                          "besides the final one (e.g. 3); leave it unset to keep every snapshot")
    if keep is not None and config.snapshot_strategy == "no":
        raise ConfigError(f"snapshot_keep_top={keep} keeps the best snapshots, but snapshot_strategy='no' keeps none; "
                          "set snapshot_strategy to 'epoch' or 'steps', or unset snapshot_keep_top")
    if not config.snapshot_score_temperature > 0:
        raise ConfigError(f"snapshot_score_temperature={config.snapshot_score_temperature} must be > 0 (the "
                          f"temperature keep-top softens the outputs at; {DEFAULT_TEMPERATURE:g} is the default)")
    if isinstance(probe, bool) or not isinstance(probe, int) or probe < 2:
        raise ConfigError(f"snapshot_probe_samples={probe!r} must be an integer of at least 2 (probe examples each "
                          "snapshot is scored on; 1000 is the default)")


def _check_snapshot_push(config: CheckpointKDConfig) -> None:
    repo = config.snapshot_push_to_hub
    if repo is None:
        return
    if config.snapshot_strategy == "no":
        raise ConfigError(f"snapshot_push_to_hub={repo!r} pushes snapshots, but snapshot_strategy='no' keeps none; set "
                          "snapshot_strategy to 'epoch' or 'steps', or unset snapshot_push_to_hub")
    try:
        valid = isinstance(repo, str) and repo.count("/") == 1 and validate_repo_id(repo) is None
    except HFValidationError:
        valid = False
    if not valid:
        raise ConfigError(f"snapshot_push_to_hub={repo!r} must be a Hub repo id 'owner/name' (no '@revision' or "
                          "':folder': each snapshot becomes its own tag there)")


def _check_lr_decay(config: CheckpointKDConfig) -> None:
    factor = config.lr_decay_factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
        raise ConfigError(f"lr_decay_factor={factor!r} must lie in (0, 1] (what each lr_decay_epochs milestone multiplies "
                          "the learning rate by; 0.1 is the usual step decay)")
    milestones = config.lr_decay_epochs
    if milestones is None:
        return
    if not isinstance(milestones, (list, tuple)) or not milestones:
        raise ConfigError(f"lr_decay_epochs={milestones!r} must be a non-empty list of epochs (e.g. [18, 36, 54]) or of "
                          "fractions of training (e.g. [0.3, 0.6, 0.9]); leave it unset for no step decay")
    if any(isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) for m in milestones):
        raise ConfigError(f"lr_decay_epochs={milestones!r} must hold numbers only: epochs (e.g. [18, 36, 54]) or "
                          "fractions of training (e.g. [0.3, 0.6, 0.9])")
    if any(m <= 0 for m in milestones):
        raise ConfigError(f"lr_decay_epochs={milestones!r} must be positive: epochs (e.g. [18, 36, 54]) or fractions of "
                          "training in (0, 1) (e.g. [0.3, 0.6, 0.9])")
    if any(m < 1 for m in milestones) and any(m >= 1 for m in milestones):
        raise ConfigError(f"lr_decay_epochs={milestones!r} mixes fractions of training (values below 1) with epochs "
                          "(values of 1 or more); use one convention for the whole list, e.g. all epochs [18, 36, 54] "
                          "or all fractions [0.3, 0.6, 0.9]")
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ConfigError(f"lr_decay_epochs={milestones!r} must be strictly increasing; sort them and drop repeats "
                          f"(e.g. {sorted(set(milestones))})")
    if milestones[-1] >= 1 and milestones[-1] >= config.num_train_epochs:
        length = (f", which the max_steps={config.max_steps} run counts as its whole length (it reads an epoch as "
                  "the fraction epoch/num_train_epochs of max_steps)" if config.max_steps > 0 else ", the end of training")
        raise ConfigError(f"lr_decay_epochs={milestones!r} has milestones at or after num_train_epochs="
                          f"{config.num_train_epochs}{length}; they would never decay the learning rate. Give epochs "
                          "below num_train_epochs, or fractions of training (e.g. [0.3, 0.6, 0.9]) that scale with the run")
    scheduler = SchedulerType(config.lr_scheduler_type)
    if scheduler != SchedulerType.LINEAR:
        raise ConfigError(f"lr_decay_epochs={milestones!r} and lr_scheduler_type={scheduler.value!r} "
                          "cannot be combined: lr_decay_epochs is itself the schedule (linear warm-up, then step "
                          "decay). Leave lr_scheduler_type at its default 'linear', or unset lr_decay_epochs")


def lr_decay_milestone_steps(config: CheckpointKDConfig, num_training_steps: int) -> list[int]:
    """The optimizer steps at which `config.lr_decay_epochs` decay the learning rate, in a run of `num_training_steps`.

    Fractions are fractions of `num_training_steps`. Epochs use the run's steps per epoch,
    `num_training_steps / num_train_epochs` (exact when `num_train_epochs` is a whole number, as
    Trainer then trains `num_train_epochs * steps_per_epoch` steps); with `max_steps` set, the same
    ratio makes an epoch a fraction `epoch / num_train_epochs` of `max_steps`.
    """
    milestones = config.lr_decay_epochs or []
    fractions = milestones and milestones[-1] < 1
    scale = num_training_steps if fractions else num_training_steps / config.num_train_epochs
    return [math.floor(m * scale + 0.5) for m in milestones]
