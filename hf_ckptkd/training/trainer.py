"""`CheckpointKDTrainer`: a `Trainer` that keeps teacher snapshots and distils from them.

Without teachers it trains like `Trainer` (keeping snapshots when `snapshot_strategy` says so).
With teachers (references in `CheckpointKDConfig.teachers` or a `teachers=` argument) the loss is
`alpha * L + (1 - alpha) * T^2 * D(teacher, student)`, where L is the loss the next class's own
`compute_loss` returns (a user's override, `compute_loss_func`, label smoothing or the model's own
loss) and D is computed on the student outputs that same call returned: one student forward per
step. D is per example for classifiers and per labelled token for causal LMs (the student's task
says which), reduced exactly as L is. Logs carry `loss_task` (L), `loss_kd` and the teachers'
accuracy beside `loss`. Everything else — gradient accumulation, mixed precision, `accelerate
launch` on several processes — is `Trainer`'s own.
All of it lives in `CheckpointKDMixin`, so a user's own `Trainer` subclass gains it by listing the
mixin first: `class MyTrainer(CheckpointKDMixin, MyTrainerBase)`.
The teachers are a separate frozen object, never in a checkpoint and never wrapped by DDP: each
process holds a whole copy, except when the student runs under FSDP or DeepSpeed ZeRO-3, where
they are sharded the same way (`teacher_sharding`). With `cache_teacher_logits` their outputs are
computed once for the training set (`teacher_logits`); a causal LM's top-k cache on disk serves
later students without loading the teachers at all.
With `lr_decay_epochs` set, `create_scheduler` builds a step-decay `LambdaLR` (linear warm-up, then
`lr_decay_factor` per milestone), saved in and restored from checkpoints like any other schedule.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer

from ..config import CheckpointKDConfig, ConfigError, lr_decay_milestone_steps
from ..models.inputs import InputSpec
from ..models.folders import TOKENIZER_FILES
from ..models.build import model_inputs, unwrap
from ..selection.settings import SelectionSettings
from .snapshot_callback import SnapshotCallback
from ..tasks import task_of_model
from ..tasks.topk_losses import TopKTeacher
from .teacher_checks import check_finite, check_label_space
from .teacher_loading import saved_tokenizer
from .teacher_logits import (
    TEACHER_KEYS,
    CachedLogitsError,
    cache_classifier_logits,
    cached_teacher,
    check_student_against_cache,
    complete_topk_cache,
    topk_key,
    without_teacher,
)
from .teacher_sharding import check_one_way, shard_teachers, sharding_for
from .teachers import TeacherEnsemble, TeacherReferenceError, load_teachers
from .topk_cache import TeacherLogitsCacheError, TopKTeacherCollator, WithTopKTeacher, tokenizer_fingerprint
from .topk_cache_writer import write_topk_cache

logger = logging.getLogger(__name__)

LOSS_TASK = "loss_task"  # the log key of the student's own loss while distilling
TEACHER_LOGITS_DIR = "teacher-logits"  # the top-k cache's folder in output_dir unless teacher_logits_dir names one


class StudentOutputError(ValueError):
    """The student outputs a Trainer's `compute_loss` returned cannot be distilled (no logits, or another shape)."""


class CheckpointKDMixin:
    """Snapshots and distillation for any `Trainer` subclass: `class MyTrainer(CheckpointKDMixin, Trainer)`.

    Takes the `Trainer` arguments (with `args` a `CheckpointKDConfig`) plus `teachers`,
    `label_names`, `teacher_tokenizer`/`student_tokenizer` (checked to agree), `dataset_record` and
    `student_input`. It overrides `compute_loss`, `log`, `get_train_dataloader` and
    `create_scheduler`, each calling the next class's own; `compute_loss` adds the distillation term
    to the loss the next class computes.
    """

    def __init__(self, model: nn.Module | None = None, args: CheckpointKDConfig | None = None, *,
                 teachers: TeacherEnsemble | Sequence[str | nn.Module] | None = None,
                 label_names: list[str] | None = None, teacher_tokenizer=None, student_tokenizer=None,
                 dataset_record: dict | None = None, student_input: InputSpec | None = None, probe_dataset=None,
                 probe_settings: SelectionSettings | None = None, **kwargs):
        if args is not None and not isinstance(args, CheckpointKDConfig):
            raise TypeError(f"args must be a CheckpointKDConfig (got {type(args).__name__}); it is a TrainingArguments "
                            "with the snapshot and distillation fields")
        super().__init__(model=model, args=args, **kwargs)
        self.task = task_of_model(unwrap(self.model))
        if not self.task.token_level:
            # Never hand a classifier num_items_in_batch: some divide their loss by it (ViT), others ignore it and
            # return a batch mean (BERT), and Trainer would scale both as the former. Without it every classifier's
            # loss is a batch mean, which Trainer divides by the accumulation steps. (A causal LM's loss per
            # labelled token of the whole step is what Trainer's count is for.)
            self.model_accepts_loss_kwargs = False
        if self.args.snapshot_strategy != "no":
            # dataset_record: what the run trains on, kept in every snapshot for its model card.
            self.add_callback(SnapshotCallback(self.args.snapshot_strategy, self.args.snapshot_every, self.args.snapshot_dir,
                                               dataset_record=dataset_record,
                                               push_to_hub=self.args.snapshot_push_to_hub, hub_token=self.args.hub_token,
                                               hub_private=bool(self.args.hub_private_repo),
                                               **_keep_top_options(self.args, probe_dataset, probe_settings)))
        teachers = teachers if teachers is not None else self.args.teachers
        self.teachers: TeacherEnsemble | None = None
        self.distilling = bool(teachers)
        self._topk = None  # a causal LM's top-k cache: its key, then the opened cache
        if teachers:
            if student_tokenizer is None and hasattr(self.processing_class, "get_vocab"):
                student_tokenizer = self.processing_class
            if self.task.token_level and self.args.cache_teacher_logits:
                self._topk = _TopKRun(self.args, topk_key(teachers, self.train_dataset, self.args))
                self._topk.cache = complete_topk_cache(self._topk.folder, self._topk.key)
            if self._topk is not None and self._topk.cache is not None:  # the teachers are not needed at all
                check_student_against_cache(self._topk.cache, unwrap(self.model), student_tokenizer)
            else:
                self.teachers = self._load_teachers(teachers)
                if teacher_tokenizer is None and student_tokenizer is not None and self.task.token_level:
                    teacher_tokenizer = _saved_teacher_tokenizer(self.teachers)
                check_label_space(self.teachers, unwrap(self.model), student_label_names=label_names,
                                  teacher_tokenizer=teacher_tokenizer, student_tokenizer=student_tokenizer)
                # Before the first step: channels and image size must agree, normalisation is remapped per teacher.
                self.teachers.match_student_inputs(unwrap(self.model), student_input)
                if self._topk is not None:
                    self._topk.check_top_k(self.teachers.num_labels)
                    self._topk.tokenizer = tokenizer_fingerprint(
                        teacher_tokenizer if teacher_tokenizer is not None else student_tokenizer)
                shard_teachers(self.teachers, self._sharding, device=self.accelerator.device,
                               mesh=_fsdp_mesh(self.accelerator))
            _warn_if_clipping_kd(self.args)
        self._kd_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.accelerator.device))
        self._kd_batches = 0
        self._logits_cache_built = False

    def _load_teachers(self, teachers) -> TeacherEnsemble:
        """The frozen teachers; on this process's device, or on the CPU until `shard_teachers` places their shards."""
        self._sharding = sharding_for(self.accelerator)
        logger.info("teachers: %s", self._sharding.reason)
        if isinstance(teachers, TeacherEnsemble):
            return teachers if self._sharding.kind else teachers.to(self.accelerator.device)
        modules = [t for t in teachers if isinstance(t, nn.Module)]
        check_one_way(modules, [type(m).__name__ for m in modules])
        return load_teachers(list(teachers), device=None if self._sharding.kind else self.accelerator.device,
                             dtype=self.args.teacher_dtype, mode=self.args.ensemble_mode,
                             temperature=self.args.temperature, weights=self.args.teacher_weights,
                             fusion=self.args.teacher_fusion)

    # --- the step-decay schedule -------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if self.lr_scheduler is not None or not self.args.lr_decay_epochs:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        self.lr_scheduler = step_decay_schedule(optimizer, num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                                                milestones=lr_decay_milestone_steps(self.args, num_training_steps),
                                                factor=self.args.lr_decay_factor)
        self._created_lr_scheduler = True  # Trainer rebuilds it (for a new step count) on the next train()
        return self.lr_scheduler

    # --- the loss -------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The next class's loss L; while distilling, `alpha * L + (1 - alpha) * T^2 * D` on the outputs L came from.

        The teachers' side of D is their live logits or, with `cache_teacher_logits`, what the batch carries
        from the cache (a classifier's logits, or a causal LM's top-k log-probabilities, `TopKTeacher`)."""
        teacher_logits = cached_teacher(inputs)  # a cache's outputs were checked when it was computed
        inputs = without_teacher(inputs)
        if not self.distilling or not model.training:
            # Evaluation reports the student's own loss, the L of training; without teachers this is the next class.
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if teacher_logits is None:
            teacher_logits = self.teachers(**model_inputs(inputs))
            # Before the student's forward, which would already update its BatchNorm statistics on a bad batch.
            check_finite(teacher_logits, batch_index=self.state.global_step, references=self.teachers.references)
        # A copy: Trainer.compute_loss pops the labels (and other Trainers add keys) in the dict it is given.
        own = super().compute_loss(model, dict(inputs), return_outputs=True, num_items_in_batch=num_items_in_batch)
        own_loss, outputs, student_logits = self._own_loss_and_logits(own)
        self._check_teacher_shape(student_logits, teacher_logits)
        kd = self.task.kd_term(student_logits, teacher_logits, inputs.get("labels"), args=self.args)
        scale = self._kd_scale(kd.items, num_items_in_batch)
        loss = self.args.alpha * own_loss + (1 - self.args.alpha) * (kd.total * scale)
        # Logged per item of this batch (undoing the scale), the quantity evaluation reports as eval_loss.
        for key, value in {LOSS_TASK: own_loss.detach() / (scale * kd.items), **kd.logs}.items():
            self._kd_sums[key] += value.detach().float()
        self._kd_batches += 1
        return (loss, outputs) if return_outputs else loss

    def _check_teacher_shape(self, student_logits: torch.Tensor, teacher) -> None:
        """The student's logits must cover the teachers' positions (and, for live logits, their classes)."""
        if isinstance(teacher, TopKTeacher):  # a cache's top-k: the vocabulary was checked against the cache
            student_shape, teacher_shape = tuple(student_logits.shape[:-1]), tuple(teacher.ids.shape[:-1])
            what = "the cached top-k teacher's positions"
        else:
            student_shape, teacher_shape = tuple(student_logits.shape), tuple(teacher.shape)
            what = "the teachers' logits of the same batch"
        if student_shape != teacher_shape:
            raise StudentOutputError(
                f"the student logits {self._loss_owner()}.compute_loss returned have shape {tuple(student_logits.shape)} "
                f"but {what} have shape {teacher_shape}; distilling "
                "compares them item by item, so compute_loss(..., return_outputs=True) must return the outputs of "
                "the model's forward on the whole batch (not a slice of them, nor logits_to_keep)")

    def _kd_scale(self, items: int, num_items_in_batch) -> float | torch.Tensor:
        """What the KD term's sum over this batch's `items` is multiplied by so that it is reduced as Trainer reduces
        the student's own loss: a mean of this micro-batch (Trainer then divides by the accumulation steps), or, when
        Trainer counts that loss as already scaled, a sum divided by its count of labelled items over the whole
        optimizer step, times the processes where Trainer multiplies the loss by them (DDP's mean divides again)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)  # a Trainer subclass's own declaration first
        if scaled is None:  # else Trainer.training_step's rule
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        if not scaled:
            return 1.0 / items
        if num_items_in_batch is None:  # scaled by the accumulation steps alone
            return 1.0 / (items * self.current_gradient_accumulation_steps)
        scale = 1.0 / num_items_in_batch
        if self.args.average_tokens_across_devices and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None):
            scale = scale * self.accelerator.num_processes  # as Trainer.compute_loss does to the loss it returns
        return scale

    def _own_loss_and_logits(self, own) -> tuple[torch.Tensor, object, torch.Tensor]:
        """(loss, outputs, the student's logits) of what the next class's compute_loss returned, or a clear error."""
        if not (isinstance(own, tuple) and len(own) == 2):
            raise StudentOutputError(
                f"{self._loss_owner()}.compute_loss(..., return_outputs=True) returned {type(own).__name__}, not "
                "(loss, outputs): distilling adds its term to that loss and reads the student's logits from those "
                "outputs, so compute_loss must return (loss, outputs) when return_outputs=True")
        loss, outputs = own
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
        if not isinstance(logits, torch.Tensor):
            held = f" (it holds {', '.join(outputs.keys())})" if isinstance(outputs, Mapping) else ""
            raise StudentOutputError(
                f"the student outputs {self._loss_owner()}.compute_loss returned, a {type(outputs).__name__}{held}, "
                "have no logits: distilling needs the logits of the forward its loss was computed from (one student "
                "forward per step). Return the model's own outputs, a ModelOutput with `logits`, from "
                "compute_loss(..., return_outputs=True)")
        if torch.is_grad_enabled() and not logits.requires_grad:
            raise StudentOutputError(
                f"the student logits {self._loss_owner()}.compute_loss returned carry no gradient (computed under "
                "torch.no_grad or detached, as TRL's SFTTrainer from 1.15 does: its loss comes from a fused LM head "
                "and the logits it returns are recomputed without gradient), so the distillation term would not "
                "train the student. Return the outputs of the forward the loss was computed from")
        return loss, outputs, logits

    def _loss_owner(self) -> str:
        """The class whose compute_loss the mixin calls through super(), for error messages."""
        mro = type(self).__mro__
        after = mro[mro.index(CheckpointKDMixin) + 1:]
        return next((c.__name__ for c in after if "compute_loss" in vars(c)), "Trainer")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every process logs at the same steps, so the means can be reduced across processes here.
        if "loss" in logs and self._kd_batches:
            for key, total in self._kd_sums.items():
                logs[key] = self.accelerator.reduce(total / self._kd_batches, reduction="mean").item()
            self._kd_sums.clear()
            self._kd_batches = 0
        super().log(logs, start_time)

    # --- cached teacher logits ------------------------------------------------------------
    def get_train_dataloader(self):
        if self.distilling and self.args.cache_teacher_logits and not self._logits_cache_built:
            if self._topk is not None:
                self._read_topk_cache()
            else:
                self.train_dataset, self.data_collator = cache_classifier_logits(
                    self.teachers, self.train_dataset, self.data_collator, self.accelerator,
                    self.args.per_device_eval_batch_size)
            self._logits_cache_built = True
        return super().get_train_dataloader()

    def _read_topk_cache(self) -> None:
        if self._topk.cache is None:  # one pass of the teachers writes it (or finishes an interrupted one)
            self._topk.cache = write_topk_cache(
                self._topk.folder, self._topk.key, self.teachers, self.train_dataset,
                batch_size=self.args.per_device_eval_batch_size, accelerator=self.accelerator,
                tokenizer=self._topk.tokenizer)
            self.teachers = None  # every step reads the cache from now on: free the teachers' memory
        self.train_dataset = WithTopKTeacher(self.train_dataset, self._topk.cache)
        self.data_collator = TopKTeacherCollator(self.data_collator)

    def _set_signature_columns_if_needed(self):
        # Trainer keeps only the columns the model's forward takes; a cached batch's teacher outputs must survive.
        super()._set_signature_columns_if_needed()
        self._signature_columns += [k for k in TEACHER_KEYS if k not in self._signature_columns]


class CheckpointKDTrainer(CheckpointKDMixin, Trainer):
    """A `Trainer` for teacher runs with snapshots and for students distilled from snapshots."""


def _step_decay_lr_lambda(current_step: int, *, num_warmup_steps: int, milestones: list[int], factor: float) -> float:
    warmup = float(current_step) / float(max(1, num_warmup_steps)) if current_step < num_warmup_steps else 1.0
    return warmup * factor ** bisect.bisect_right(milestones, current_step)


def step_decay_schedule(optimizer: torch.optim.Optimizer, *, num_warmup_steps: int, milestones: list[int],
                        factor: float, last_epoch: int = -1) -> LambdaLR:
    """Linear warm-up from 0 over `num_warmup_steps` (as transformers' schedules), times `factor` per milestone passed.

    The rate of the optimizer step after `current_step` steps is
    `lr * min(1, current_step / num_warmup_steps) * factor ** (milestones <= current_step)`.
    A `partial` of a module-level function, as transformers' own, so the state dict keeps only the step count.
    """
    lr_lambda = partial(_step_decay_lr_lambda, num_warmup_steps=num_warmup_steps, milestones=sorted(milestones),
                        factor=factor)
    return LambdaLR(optimizer, lr_lambda, last_epoch=last_epoch)


def _saved_teacher_tokenizer(teachers: TeacherEnsemble):
    """The tokenizer saved with the LM teachers' folders (all must hold one, and the same), or None for in-memory
    teachers. An LM teacher is only usable with the tokenizer it was trained with, so a folder without one is
    refused rather than assumed to match."""
    found = None
    for reference, folder in zip(teachers.references, teachers.source_folders):
        if folder is None:
            continue
        tokenizer = saved_tokenizer(folder)
        if tokenizer is None:
            raise TeacherReferenceError(
                f"teacher {reference!r} ({folder}) holds no tokenizer ({' or '.join(TOKENIZER_FILES)}), so hf-ckptkd "
                "cannot check that it reads the student's input_ids; save the teacher with its tokenizer (a Trainer "
                "with processing_class=tokenizer does, for its snapshots too) or pass teacher_tokenizer=...")
        if found is not None and tokenizer.get_vocab() != found.get_vocab():
            raise TeacherReferenceError(f"teacher {reference!r} was saved with another tokenizer than "
                                        f"{teachers.references[0]!r}; an ensemble's LMs must share one tokenizer")
        found = found or tokenizer
    return found


def _keep_top_options(args: CheckpointKDConfig, probe_dataset, probe_settings: SelectionSettings | None) -> dict:
    """SnapshotCallback's keep_top arguments from the config. The probe set is never guessed: the
    Trainer's eval_dataset holds transformed model inputs, and the scores must be those select_teachers
    computes later on the dataset it is given."""
    if args.snapshot_keep_top is None:
        if probe_dataset is not None:
            raise ConfigError("probe_dataset is only used to score snapshots for snapshot_keep_top; set "
                              "snapshot_keep_top=M (keep the M best snapshots and the final one) or drop probe_dataset")
        return {}
    if probe_dataset is None:
        raise ConfigError(
            f"snapshot_keep_top={args.snapshot_keep_top} needs a probe set to score snapshots on: pass "
            "CheckpointKDTrainer(..., probe_dataset=...), the dataset select_teachers would take (raw images and "
            "labels, e.g. the training split before with_image_transform, or tokenized text); the eval_dataset is not "
            "used by default. Or unset snapshot_keep_top to keep every snapshot")
    settings = SelectionSettings.of(probe_settings, objective=args.snapshot_score_objective,
                                    temperature=args.snapshot_score_temperature,
                                    max_probe_samples=args.snapshot_probe_samples)
    return {"keep_top": args.snapshot_keep_top, "probe_dataset": probe_dataset, "probe_settings": settings}


def _warn_if_clipping_kd(args: CheckpointKDConfig) -> None:
    # Trainer clips at 1.0 by default; the KD term is scaled by T^2, so its gradient norm is
    # typically several times that and clipping silently divides the student's learning rate.
    kd_weight = (1 - args.alpha) * args.temperature ** 2
    if (args.max_grad_norm or 0) > 0 and kd_weight > 1:
        logger.warning("distilling with max_grad_norm=%s while the KD term is weighted (1-alpha)*T^2 = %.3g: clipping "
                       "cuts the student's effective learning rate (it cost a ResNet-8 student about 4 points on "
                       "Fashion-MNIST); pass max_grad_norm=0.0 (--max_grad_norm 0) unless you want clipping",
                       args.max_grad_norm, kd_weight)


class _TopKRun:
    """A causal LM run's top-k cache: where it lives, its key, and once opened the cache itself."""

    def __init__(self, args: CheckpointKDConfig, key: dict):
        self.folder = Path(args.teacher_logits_dir or Path(args.output_dir) / TEACHER_LOGITS_DIR)
        self.key, self.cache, self.tokenizer = key, None, None

    def check_top_k(self, vocab: int) -> None:
        if self.key["top_k"] > vocab:
            raise TeacherLogitsCacheError(f"teacher_logits_top_k={self.key['top_k']} is larger than the teachers' "
                                          f"vocabulary of {vocab} tokens; use at most {vocab}")


def _fsdp_mesh(accelerator):
    """The FSDP dimensions of accelerate's device mesh when it has one (else FSDP2 spans every process)."""
    mesh = getattr(accelerator, "torch_device_mesh", None)
    return mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None
