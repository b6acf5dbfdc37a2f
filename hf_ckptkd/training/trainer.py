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
The teachers are a separate frozen object: never wrapped by DDP/FSDP, never in a checkpoint.
With `lr_decay_epochs` set, `create_scheduler` builds a step-decay `LambdaLR` (linear warm-up, then
`lr_decay_factor` per milestone), saved in and restored from checkpoints like any other schedule.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import Dataset
from transformers import Trainer

from ..config import CheckpointKDConfig, ConfigError, lr_decay_milestone_steps
from ..models.inputs import InputSpec
from ..models.folders import TOKENIZER_FILES
from ..models.build import model_inputs, unwrap
from ..selection.settings import SelectionSettings
from .snapshot_callback import SnapshotCallback
from ..tasks import task_of_model
from .teacher_checks import check_finite, check_label_space
from .teacher_loading import saved_tokenizer
from .teachers import TeacherEnsemble, TeacherReferenceError, load_teachers

logger = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits"
LOSS_TASK = "loss_task"  # the log key of the student's own loss while distilling


class StudentOutputError(ValueError):
    """The student outputs a Trainer's `compute_loss` returned cannot be distilled (no logits, or another shape)."""


class CachedLogitsError(ValueError):
    """`cache_teacher_logits` asked for with a training set whose examples change between epochs."""


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
                                               **_keep_top_options(self.args, probe_dataset, probe_settings)))
        teachers = teachers if teachers is not None else self.args.teachers
        self.teachers: TeacherEnsemble | None = None
        if teachers:
            self.teachers = teachers if isinstance(teachers, TeacherEnsemble) else load_teachers(
                list(teachers), device=self.accelerator.device, dtype=self.args.teacher_dtype,
                mode=self.args.ensemble_mode, temperature=self.args.temperature,
                weights=self.args.teacher_weights, fusion=self.args.teacher_fusion)
            self.teachers.to(self.accelerator.device)
            if student_tokenizer is None and hasattr(self.processing_class, "get_vocab"):
                student_tokenizer = self.processing_class
            if teacher_tokenizer is None and student_tokenizer is not None and self.task.token_level:
                teacher_tokenizer = _saved_teacher_tokenizer(self.teachers)
            check_label_space(self.teachers, unwrap(self.model), student_label_names=label_names,
                              teacher_tokenizer=teacher_tokenizer, student_tokenizer=student_tokenizer)
            # Before the first step: channels and image size must agree, normalisation is remapped per teacher.
            self.teachers.match_student_inputs(unwrap(self.model), student_input)
            _warn_if_clipping_kd(self.args)
        self._kd_sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.accelerator.device))
        self._kd_batches = 0
        self._logits_cache_built = False

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
        """The next class's loss L; while distilling, `alpha * L + (1 - alpha) * T^2 * D` on the outputs L came from."""
        teacher_logits = inputs.get(TEACHER_LOGITS)
        inputs = {k: v for k, v in inputs.items() if k != TEACHER_LOGITS}
        if self.teachers is None or not model.training:
            # Evaluation reports the student's own loss, the L of training; without teachers this is the next class.
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if teacher_logits is None:
            teacher_logits = self.teachers(**model_inputs(inputs))
        # Before the student's forward, which would already update its BatchNorm statistics on a bad batch.
        check_finite(teacher_logits, batch_index=self.state.global_step, references=self.teachers.references)
        # A copy: Trainer.compute_loss pops the labels (and other Trainers add keys) in the dict it is given.
        own = super().compute_loss(model, dict(inputs), return_outputs=True, num_items_in_batch=num_items_in_batch)
        own_loss, outputs, student_logits = self._own_loss_and_logits(own)
        if student_logits.shape != teacher_logits.shape:
            raise StudentOutputError(
                f"the student logits {self._loss_owner()}.compute_loss returned have shape {tuple(student_logits.shape)} "
                f"but the teachers' logits of the same batch have shape {tuple(teacher_logits.shape)}; distilling "
                "compares them item by item, so compute_loss(..., return_outputs=True) must return the outputs of "
                "the model's forward on the whole batch (not a slice of them, nor logits_to_keep)")
        kd = self.task.kd_term(student_logits, teacher_logits, inputs.get("labels"), args=self.args)
        scale = self._kd_scale(kd.items, num_items_in_batch)
        loss = self.args.alpha * own_loss + (1 - self.args.alpha) * (kd.total * scale)
        # Logged per item of this batch (undoing the scale), the quantity evaluation reports as eval_loss.
        for key, value in {LOSS_TASK: own_loss.detach() / (scale * kd.items), **kd.logs}.items():
            self._kd_sums[key] += value.detach().float()
        self._kd_batches += 1
        return (loss, outputs) if return_outputs else loss

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
        if self.teachers is not None and self.args.cache_teacher_logits and not self._logits_cache_built:
            self._cache_teacher_logits()
        return super().get_train_dataloader()

    def _cache_teacher_logits(self) -> None:
        if self.task.token_level:
            raise CachedLogitsError(
                f"cache_teacher_logits=True is for classifiers; a {self.task.name} student's teacher logits are "
                "(tokens x vocabulary) per example, too large to keep for a training set. Set "
                "cache_teacher_logits=False (the teachers then run on every batch, in teacher_dtype).")
        dataset = self.train_dataset
        if not _is_deterministic(dataset):
            raise CachedLogitsError(
                "cache_teacher_logits=True needs a deterministic training transform, but the training set returns "
                "different inputs for the same example on two reads (random augmentation). Turn augmentation off "
                "(e.g. --crop_padding 0 --hflip false) or set cache_teacher_logits=False.")
        collate = self.data_collator
        indices = list(range(len(dataset)))
        batch_size = self.args.per_device_eval_batch_size
        shard_logits, shard_indices = [], []
        # Each process computes the logits of its shard once; the gathered table serves every epoch.
        with self.accelerator.split_between_processes(indices, apply_padding=True) as shard:
            for start in range(0, len(shard), batch_size):
                chunk = shard[start:start + batch_size]
                batch = collate([dataset[i] for i in chunk])
                batch = {k: v.to(self.accelerator.device) for k, v in model_inputs(batch).items()}
                logits = self.teachers(**batch)
                check_finite(logits, batch_index=start // batch_size)
                shard_logits.append(logits)
                shard_indices.append(torch.tensor(chunk, device=self.accelerator.device))
        all_logits = self.accelerator.gather(torch.cat(shard_logits)).cpu()
        all_indices = self.accelerator.gather(torch.cat(shard_indices)).cpu()
        table = torch.empty(len(dataset), all_logits.shape[-1], dtype=all_logits.dtype)
        table[all_indices] = all_logits  # padding repeats an index with its own logits: harmless
        self.train_dataset = _WithTeacherLogits(dataset, table)
        self.data_collator = _TeacherLogitsCollator(collate)
        self._logits_cache_built = True


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


def _is_deterministic(dataset: Dataset, probe: int = 4) -> bool:
    for i in range(min(probe, len(dataset))):
        a, b = dataset[i], dataset[i]
        for key, value in a.items():
            if isinstance(value, torch.Tensor) and not torch.equal(value, b[key]):
                return False
    return True


class _WithTeacherLogits(Dataset):
    def __init__(self, dataset, logits: torch.Tensor):
        self.dataset, self.logits = dataset, logits

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return {**self.dataset[i], TEACHER_LOGITS: self.logits[i]}


class _TeacherLogitsCollator:
    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        batch = self.collate([{k: v for k, v in e.items() if k != TEACHER_LOGITS} for e in examples])
        if TEACHER_LOGITS in examples[0]:  # training batches; evaluation sets have no cached logits
            batch[TEACHER_LOGITS] = torch.stack([e[TEACHER_LOGITS] for e in examples])
        return batch
