"""Distillation with CheckpointKDTrainer: both families, mixed, text, ensembles, cached logits,
gradient accumulation, two processes, and the bad inputs that must stop before the first step;
and the trainer's step-decay learning-rate schedule (teachers and students alike)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, Features, Value
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import DataCollatorWithPadding, HfArgumentParser, PreTrainedTokenizerFast, TrainerCallback

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, SnapshotIndex
from hf_ckptkd.cli.main import main
from hf_ckptkd.config import DISTILLATION_FIELDS, ConfigError
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, label_names, load_fashion_mnist, with_image_transform
from hf_ckptkd.tasks.losses import kd_per_row
from hf_ckptkd.models import build_model
from hf_ckptkd.pipeline.recipe import recipe_from_dict
from hf_ckptkd.snapshots import write_snapshot
from hf_ckptkd.tasks import TASKS
from hf_ckptkd.training.teachers import LabelSpaceError, TeacherOutputError, TeacherReferenceError
from hf_ckptkd.training.teacher_logits import CachedLogitsError
from hf_ckptkd.training.trainer import step_decay_schedule
from user_losses import USER_LOSSES

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 7,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


@pytest.fixture(scope="module")
def data():
    raw = load_fashion_mnist("train", limit=128)
    names = label_names(raw)
    augmented = with_image_transform(raw, build_image_transform(ImageTransformConfig(), train=True))
    plain = with_image_transform(raw, build_image_transform(ImageTransformConfig(crop_padding=0, hflip=False), train=True))
    return names, augmented, plain


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, data):
    """Snapshots of a timm and a transformers teacher (a real short run each)."""
    names, augmented, _ = data
    root = tmp_path_factory.mktemp("teachers")
    for spec, kwargs in (("timm:test_resnet", None), ("transformers:ViTConfig", TINY_VIT)):
        out = root / spec.split(":")[1]
        config = CheckpointKDConfig(output_dir=str(out), num_train_epochs=2, per_device_train_batch_size=32,
                                    learning_rate=3e-3, snapshot_strategy="epoch", report_to="none", save_strategy="no",
                                    remove_unused_columns=False, disable_tqdm=True)
        CheckpointKDTrainer(model=build_model(spec, 10, label_names=names, model_kwargs=kwargs), args=config,
                            train_dataset=augmented, data_collator=image_collator).train()
    return {"timm": root / "test_resnet" / "snapshots", "transformers": root / "ViTConfig" / "snapshots"}


def _student_args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path / "student"), max_steps=4, per_device_train_batch_size=32, learning_rate=1e-3,
                  logging_steps=2, report_to="none", remove_unused_columns=False, save_strategy="no", disable_tqdm=True)
    values.update(overrides)
    return CheckpointKDConfig(**values)


def test_the_kd_term_matches_the_papers_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    T = 4.0
    term = TASKS["image-classification"].kd_term(s, t, y, args=CheckpointKDConfig(output_dir="unused", temperature=T))
    p_t, log_p_s = torch.softmax(t / T, -1), torch.log_softmax(s / T, -1)
    expected = (p_t * (p_t.log() - log_p_s)).sum(-1) * T * T
    assert term.items == 8 and term.total.item() == pytest.approx(expected.sum().item(), rel=1e-5)
    assert term.logs["loss_kd"].item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert term.logs["teacher_accuracy"].item() == pytest.approx((t.argmax(-1) == y).float().mean().item())
    assert kd_per_row(s, s.clone(), T).abs().max().item() == pytest.approx(0, abs=1e-5)
    p_s = torch.softmax(s / T, -1)
    assert torch.allclose(kd_per_row(s, t, T, "reverse_kl"),
                          (p_s * (p_s.log() - torch.log_softmax(t / T, -1))).sum(-1) * T * T, rtol=1e-5)
    assert kd_per_row(s, t, T, "mse").mean().item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)


@pytest.mark.parametrize("teacher_family,student_spec", [
    ("timm", "timm:test_resnet"), ("transformers", "transformers:ViTConfig"),
    ("timm", "transformers:ViTConfig"), ("transformers", "timm:test_resnet")])
def test_distil_from_a_snapshot(tmp_path, data, snapshots, teacher_family, student_spec):
    names, augmented, _ = data
    index = SnapshotIndex.load(snapshots[teacher_family])
    teacher_ref = f"{index.snapshot_dir}:epoch-0001"
    student = build_model(student_spec, 10, label_names=names, model_kwargs=TINY_VIT if "ViT" in student_spec else None)
    trainer = CheckpointKDTrainer(model=student, args=_student_args(tmp_path, teachers=[teacher_ref],
                                                                  save_strategy="steps", save_steps=4),
                                  train_dataset=augmented, data_collator=image_collator, label_names=names)
    member = trainer.teachers.members[0]
    before = {k: v.clone() for k, v in member.state_dict().items()}
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss_kd" in e]
    assert len(logs) == 2
    for e in logs:
        assert math.isfinite(e["loss_task"]) and e["loss_kd"] >= 0 and 0 <= e["teacher_accuracy"] <= 1
        assert e["loss"] == pytest.approx(0.5 * e["loss_task"] + 0.5 * e["loss_kd"], rel=1e-4)
    # The teacher stayed frozen and out of the student's checkpoint.
    assert all(torch.equal(v, before[k]) for k, v in member.state_dict().items())
    assert not member.training and not any(p.requires_grad for p in member.parameters())
    saved = load_file(tmp_path / "student" / "checkpoint-4" / "model.safetensors")
    assert len(saved) == len(student.state_dict())


@pytest.mark.parametrize("mode", ["mean_logits", "mean_probs"])
def test_snapshot_ensemble(tmp_path, data, snapshots, mode):
    names, augmented, _ = data
    refs = [f"{snapshots['timm']}:epoch-0001", f"{snapshots['timm']}:epoch-0002"]
    trainer = CheckpointKDTrainer(model=build_model("timm:test_resnet", 10, label_names=names),
                                  args=_student_args(tmp_path, teachers=refs, ensemble_mode=mode, teacher_fusion="loop"),
                                  train_dataset=augmented, data_collator=image_collator)
    assert len(trainer.teachers.members) == 2
    trainer.train()
    assert all(math.isfinite(e["loss_kd"]) for e in trainer.state.log_history if "loss_kd" in e)


def test_clipping_a_temperature_scaled_kd_loss_warns(tmp_path, data, snapshots, caplog):
    names, augmented, _ = data
    ref = f"{snapshots['timm']}:epoch-0002"

    def warnings_for(**overrides):
        caplog.clear()
        with caplog.at_level("WARNING", logger="hf_ckptkd.training.trainer"):
            CheckpointKDTrainer(model=build_model("timm:test_resnet", 10, label_names=names),
                                args=_student_args(tmp_path, teachers=[ref], temperature=4.0, **overrides),
                                train_dataset=augmented, data_collator=image_collator)
        return [r.getMessage() for r in caplog.records if "max_grad_norm" in r.getMessage()]

    (warning,) = warnings_for(max_grad_norm=1.0, alpha=0.5)
    assert "(1-alpha)*T^2 = 8" in warning and "max_grad_norm=0.0" in warning
    assert warnings_for(max_grad_norm=0.0, alpha=0.5) == []
    assert warnings_for(max_grad_norm=1.0, alpha=1.0) == []  # hard labels only: no KD term to clip


def test_cached_teacher_logits_give_the_same_training(tmp_path, data, snapshots):
    names, _, plain = data
    ref = f"{snapshots['timm']}:epoch-0002"
    runs = {}
    for cached in (False, True):
        torch.manual_seed(0)  # the same student initialisation for both runs
        trainer = CheckpointKDTrainer(
            model=build_model("timm:test_resnet", 10, label_names=names),
            args=_student_args(tmp_path / str(cached), teachers=[ref], cache_teacher_logits=cached, num_train_epochs=2,
                               max_steps=-1, seed=1, logging_steps=1, per_device_eval_batch_size=128),
            train_dataset=plain, data_collator=image_collator)
        calls = []
        trainer.teachers.members[0].register_forward_hook(lambda *a: calls.append(1))
        trainer.train()
        runs[cached] = ([e["loss"] for e in trainer.state.log_history if "loss_kd" in e], len(calls))
        assert math.isfinite(trainer.evaluate(plain)["eval_loss"])  # evaluation batches carry no cached logits
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-4)
    assert runs[False][1] == 8, "uncached: one teacher forward per step"
    assert runs[True][1] == 1, "cached: one pass over the 128 examples, reused in both epochs"


@pytest.mark.parametrize("loss", ["model", "class_weighted"])
def test_gradient_accumulation_matches_the_larger_batch(tmp_path, data, snapshots, loss):
    """The model's batch-mean loss, or a compute_loss_func normalised by Trainer's count over the step: the KD
    term must be reduced as the user's loss is, or accumulating two half batches takes another step."""
    names, _, plain = data
    ref = f"{snapshots['timm']}:epoch-0002"
    weights = []
    for batch, accumulation in ((32, 1), (16, 2)):
        torch.manual_seed(0)
        student = build_model("transformers:ViTConfig", 10, label_names=names, model_kwargs=TINY_VIT)
        CheckpointKDTrainer(model=student, args=_student_args(tmp_path / str(batch), teachers=[ref], max_steps=1,
                                                              per_device_train_batch_size=batch, seed=3,
                                                              gradient_accumulation_steps=accumulation),
                            train_dataset=plain, data_collator=image_collator, compute_loss_func=USER_LOSSES[loss]).train()
        weights.append(student.classifier.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


def _text_setup(tmp_path, vocab_words):
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *vocab_words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def test_text_teacher_and_student_sharing_a_tokenizer(tmp_path):
    words = ["good", "bad", "movie", "plot", "great", "awful", "the", "was"]
    tokenizer = _text_setup(tmp_path, words)
    sentences = [("the movie was good", 1), ("the plot was awful", 0), ("great movie", 1), ("bad plot", 0)] * 16
    ds = Dataset.from_dict({"text": [s for s, _ in sentences], "label": [y for _, y in sentences]},
                           features=Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}))
    ds = ds.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"]).rename_column("label", "labels")
    bert = {"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64}
    teacher = build_model("transformers:BertConfig", 2, label_names=["neg", "pos"], model_kwargs=bert)
    write_snapshot(teacher, tmp_path / "snaps", "epoch-0001", epoch=1, global_step=1)
    student = build_model("transformers:BertConfig", 2, label_names=["neg", "pos"],
                          model_kwargs={**bert, "num_hidden_layers": 1, "hidden_size": 16, "intermediate_size": 32})
    collator = DataCollatorWithPadding(tokenizer)
    trainer = CheckpointKDTrainer(model=student, args=_student_args(tmp_path, teachers=[f"{tmp_path / 'snaps'}:epoch-0001"]),
                                  train_dataset=ds, data_collator=collator, teacher_tokenizer=tokenizer,
                                  student_tokenizer=tokenizer)
    trainer.train()
    assert [e for e in trainer.state.log_history if "loss_kd" in e]
    other = _text_setup(tmp_path, list(reversed(words)))
    with pytest.raises(LabelSpaceError, match=r"tokenizer .* differ"):
        CheckpointKDTrainer(model=student, args=_student_args(tmp_path, teachers=[f"{tmp_path / 'snaps'}:epoch-0001"]),
                            train_dataset=ds, data_collator=collator, teacher_tokenizer=tokenizer, student_tokenizer=other)
    small_vocab = build_model("transformers:BertConfig", 2, label_names=["neg", "pos"], model_kwargs={**bert, "vocab_size": 50})
    with pytest.raises(LabelSpaceError, match=r"vocabulary of 12 tokens but .* has 50"):
        CheckpointKDTrainer(model=small_vocab, args=_student_args(tmp_path, teachers=[f"{tmp_path / 'snaps'}:epoch-0001"]),
                            train_dataset=ds, data_collator=collator)


def test_label_space_mismatches_stop_before_training(tmp_path, data, snapshots):
    names, augmented, _ = data
    ref = f"{snapshots['timm']}:epoch-0001"
    with pytest.raises(LabelSpaceError, match=r"predict 10 labels but the student .* predicts 5"):
        CheckpointKDTrainer(model=build_model("timm:test_resnet", 5), args=_student_args(tmp_path, teachers=[ref]),
                            train_dataset=augmented, data_collator=image_collator)
    renamed = list(reversed(names))
    with pytest.raises(LabelSpaceError, match=r"name their labels differently: label 0 is 'T-shirt/top'"):
        CheckpointKDTrainer(model=build_model("timm:test_resnet", 10, label_names=renamed),
                            args=_student_args(tmp_path, teachers=[ref]), train_dataset=augmented,
                            data_collator=image_collator)
    five = build_model("timm:test_resnet", 5)
    write_snapshot(five, tmp_path / "five", "epoch-0001", epoch=1, global_step=1)
    with pytest.raises(LabelSpaceError, match=r"label"):
        CheckpointKDTrainer(model=build_model("timm:test_resnet", 10, label_names=names),
                            args=_student_args(tmp_path, teachers=[ref, f"{tmp_path / 'five'}:epoch-0001"]),
                            train_dataset=augmented, data_collator=image_collator)


def test_bad_teacher_references(tmp_path, data):
    names, augmented, _ = data
    for ref in (str(tmp_path / "nowhere"), f"{tmp_path}:epoch-0001"):
        with pytest.raises((TeacherReferenceError, Exception), match=r"nowhere|epoch-0001|snapshot"):
            CheckpointKDTrainer(model=build_model("timm:test_resnet", 10), args=_student_args(tmp_path, teachers=[ref]),
                                train_dataset=augmented, data_collator=image_collator)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherReferenceError, match=r"empty"):
        CheckpointKDTrainer(model=build_model("timm:test_resnet", 10),
                            args=_student_args(tmp_path, teachers=[str(tmp_path / "empty")]),
                            train_dataset=augmented, data_collator=image_collator)


@pytest.mark.parametrize("overrides,message", [
    ({"alpha": 1.5}, r"alpha=1.5 must lie in \[0, 1\]"), ({"alpha": -0.1}, r"alpha=-0.1 must lie in \[0, 1\]"),
    ({"temperature": 0}, r"temperature=0 must be > 0"), ({"temperature": -2.0}, r"temperature=-2.0 must be > 0"),
    ({"kd_loss": "js"}, r"kd_loss='js' is not one of"), ({"teacher_fusion": "magic"}, r"teacher_fusion='magic'"),
])
def test_bad_distillation_settings(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        CheckpointKDConfig(output_dir=str(tmp_path), **overrides)


def test_cached_logits_refuse_random_augmentation(tmp_path, data, snapshots):
    names, augmented, _ = data
    trainer = CheckpointKDTrainer(model=build_model("timm:test_resnet", 10, label_names=names),
                                  args=_student_args(tmp_path, teachers=[f"{snapshots['timm']}:epoch-0001"],
                                                     cache_teacher_logits=True),
                                  train_dataset=augmented, data_collator=image_collator)
    with pytest.raises(CachedLogitsError, match=r"deterministic training transform.*random augmentation"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_nan_teacher_logits_stop_at_the_batch(tmp_path, data):
    names, augmented, _ = data
    broken = build_model("timm:test_resnet", 10, label_names=names)
    with torch.no_grad():
        broken.model.get_classifier().bias.fill_(float("nan"))
    write_snapshot(broken, tmp_path / "broken", "epoch-0001", epoch=1, global_step=1)
    student = build_model("timm:test_resnet", 10, label_names=names)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = CheckpointKDTrainer(model=student, args=_student_args(tmp_path, teachers=[f"{tmp_path / 'broken'}:epoch-0001"]),
                                  train_dataset=augmented, data_collator=image_collator)
    with pytest.raises(TeacherOutputError, match=r"NaN/inf at batch 0"):
        trainer.train()
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items()), "trained on a NaN batch"


def test_distill_cli(tmp_path, snapshots, capsys):
    code = main(["distill", "--model", "timm:test_resnet", "--teachers", f"{snapshots['timm']}:epoch-0002",
                 "--max_train_samples", "64", "--max_eval_samples", "64", "--output_dir", str(tmp_path / "s"),
                 "--max_steps", "2", "--per_device_train_batch_size", "32", "--report_to", "none"])
    assert code == 0
    assert "test accuracy:" in capsys.readouterr().out
    assert main(["distill", "--model", "timm:test_resnet", "--output_dir", str(tmp_path / "x")]) == 2
    assert "distill needs --teachers" in capsys.readouterr().err
    assert main(["distill", "--model", "timm:test_resnet", "--teachers", str(tmp_path / "none"),
                 "--output_dir", str(tmp_path / "y"), "--max_train_samples", "32"]) == 2
    assert "none" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_distillation_matches_one_process(tmp_path, snapshots, accelerate_launch):
    """With the model's own batch-mean loss and with a compute_loss_func normalised by the step's count (which
    Trainer multiplies by the processes): the KD term must follow either, or two processes take another step."""
    script = ROOT / "tests" / "scripts" / "distill_run.py"
    ref = f"{snapshots['timm']}:epoch-0002"
    losses = ["--losses", "model", "class_weighted"]
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), ref, "--batch_size", "32", *losses],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    launch = subprocess.run(
        [*accelerate_launch, str(script), str(tmp_path / "two"), ref, "--batch_size", "16", *losses],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert launch.returncode == 0, launch.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "losses-rank0.json").read_text())
    two = json.loads((tmp_path / "two" / "losses-rank0.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    for loss in ("model", "class_weighted"):
        assert len(one["logs"][loss]) == len(two["logs"][loss]) == 4
        for a, b in zip(one["logs"][loss], two["logs"][loss]):
            for key in ("loss", "loss_task", "loss_kd"):
                assert b[key] == pytest.approx(a[key], rel=2e-3, abs=1e-4), (loss, a, b)


def test_text_teacher_and_student_from_the_command_line(tmp_path, capsys):
    from text_data import write_tiny_text_set

    write_tiny_text_set(tmp_path)
    common = ["--dataset", str(tmp_path / "data"), "--text_column", "sentence", "--tokenizer", str(tmp_path / "tokenizer"),
              "--per_device_train_batch_size", "32", "--report_to", "none", "--learning_rate", "0.001"]
    bert = '{"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}'
    assert main(["train-teacher", "--model", "transformers:BertConfig", "--model_kwargs", bert, *common,
                 "--num_train_epochs", "2", "--snapshot_strategy", "epoch", "--output_dir", str(tmp_path / "t")]) == 0
    assert main(["distill", "--model", "transformers:BertConfig", "--model_kwargs", bert, *common, "--max_steps", "3",
                 "--teachers", f"{tmp_path / 't' / 'snapshots'}:epoch-0002", "--output_dir", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.count("test accuracy:") == 2
    assert main(["distill", "--model", "transformers:BertConfig", "--dataset", str(tmp_path / "data"), "--text_column",
                 "sentence", "--teachers", f"{tmp_path / 't' / 'snapshots'}:epoch-0002", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--text_column needs --tokenizer" in capsys.readouterr().err


# --- the step-decay learning rate ---------------------------------------------------------------

class _TinyClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x, labels=None):
        logits = self.fc(x)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class _LearningRates(TrainerCallback):
    """The learning rate each optimizer step used, by step number (1, 2, ...)."""

    def __init__(self, stop_at: int | None = None):
        self.by_step, self.stop_at = {}, stop_at

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.by_step[state.global_step + 1] = optimizer.param_groups[0]["lr"]

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.stop_at:
            control.should_training_stop = True  # an interrupted run (after the checkpoint of this step is saved)


# 16 random examples in batches of 4: 4 optimizer steps per epoch, 12 in the 3 epochs below.
_RANDOM_SET = [{"x": torch.randn(4, generator=torch.Generator().manual_seed(i)), "labels": torch.tensor(i % 3)}
               for i in range(16)]
BASE = 0.1
# Warm-up over 2 steps from 0, then x0.5 at the end of epoch 1 (after step 4) and of epoch 2 (after step 8).
EXPECTED = [BASE * m for m in (0, 0.5, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25)]


def _lr_run(tmp_path, resume_from_checkpoint=None, stop_at=None, **overrides) -> dict[int, float]:
    values = dict(output_dir=str(tmp_path), num_train_epochs=3, per_device_train_batch_size=4, learning_rate=BASE,
                  optim="sgd", warmup_steps=2, lr_decay_epochs=[1, 2], lr_decay_factor=0.5, save_strategy="no",
                  report_to="none", disable_tqdm=True, logging_steps=100, use_cpu=True, seed=0)
    values.update(overrides)
    recorder = _LearningRates(stop_at)
    torch.manual_seed(0)
    trainer = CheckpointKDTrainer(model=_TinyClassifier(), args=CheckpointKDConfig(**values), train_dataset=_RANDOM_SET,
                                  callbacks=[recorder])
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)
    return recorder.by_step


@pytest.mark.parametrize("overrides,expected", [
    ({}, EXPECTED),
    # warm-up as a ratio (3 of 12 steps, rounded up as Trainer does), factor 0.1
    ({"warmup_steps": 0.25, "lr_decay_factor": 0.1}, [BASE * m for m in (0, 1 / 3, 2 / 3, 1, 0.1, 0.1, 0.1, 0.1,
                                                                           0.01, 0.01, 0.01, 0.01)]),
    # gradient accumulation: still 4 optimizer steps per epoch
    ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}, EXPECTED),
])
def test_step_decay_learning_rate_at_every_step(tmp_path, overrides, expected):
    lrs = _lr_run(tmp_path, **overrides)
    assert list(lrs) == list(range(1, 13))
    assert list(lrs.values()) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("overrides", [
    {"lr_decay_epochs": [1 / 3, 2 / 3]},  # fractions of training
    {"max_steps": 12},  # a max_steps run: epochs are fractions epoch/num_train_epochs of max_steps
    {"max_steps": 12, "num_train_epochs": 6, "lr_decay_epochs": [2, 4]},
    {"max_steps": 12, "lr_decay_epochs": [1 / 3, 2 / 3]},
])
def test_fractions_and_max_steps_give_the_epoch_schedule(tmp_path, overrides):
    assert list(_lr_run(tmp_path, **overrides).values()) == pytest.approx(EXPECTED, rel=1e-9, abs=1e-12)


def test_a_resumed_run_continues_the_step_decay(tmp_path):
    uninterrupted = _lr_run(tmp_path / "full")
    first = _lr_run(tmp_path / "cut", save_strategy="steps", save_steps=6, stop_at=6)
    assert list(first) == list(range(1, 7))
    resumed = _lr_run(tmp_path / "cut", resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-6"))
    assert list(resumed) == list(range(7, 13))
    assert list({**first, **resumed}.values()) == pytest.approx(list(uninterrupted.values()), rel=1e-9, abs=1e-12)
    assert list(uninterrupted.values()) == pytest.approx(EXPECTED, rel=1e-9, abs=1e-12)


def test_step_decay_schedule_reads_its_milestones_as_steps_done():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = step_decay_schedule(optimizer, num_warmup_steps=0, milestones=[2, 2, 5], factor=0.1)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    # two milestones on one step decay twice there
    assert lrs == pytest.approx([1, 1, 0.01, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("overrides,message", [
    ({"lr_decay_epochs": [36, 18]}, r"lr_decay_epochs=\[36, 18\] must be strictly increasing; .* \[18, 36\]"),
    ({"lr_decay_epochs": [18, 18, 36]}, r"lr_decay_epochs=\[18, 18, 36\] must be strictly increasing"),
    ({"lr_decay_epochs": [-5, 18]}, r"lr_decay_epochs=\[-5, 18\] must be positive"),
    ({"lr_decay_epochs": [0, 18]}, r"lr_decay_epochs=\[0, 18\] must be positive"),
    ({"lr_decay_epochs": [0.3, 18]}, r"lr_decay_epochs=\[0.3, 18\] mixes fractions of training .* one convention"),
    ({"lr_decay_epochs": [0.5, 1.0]}, r"mixes fractions of training \(values below 1\) with epochs"),
    ({"lr_decay_epochs": [18, 0.5]}, r"lr_decay_epochs=\[18, 0.5\] mixes fractions"),
    ({"lr_decay_epochs": [0.6, 0.3]}, r"lr_decay_epochs=\[0.6, 0.3\] must be strictly increasing; .* \[0.3, 0.6\]"),
    ({"lr_decay_epochs": []}, r"lr_decay_epochs=\[\] must be a non-empty list .* leave it unset"),
    ({"lr_decay_epochs": ["18"]}, r"lr_decay_epochs=\['18'\] must hold numbers only"),
    ({"lr_decay_epochs": [18, 60]}, r"lr_decay_epochs=\[18, 60\] has milestones at or after num_train_epochs=60"),
    ({"lr_decay_epochs": [18, 36], "max_steps": 1000, "num_train_epochs": 3},
     r"at or after num_train_epochs=3, which the max_steps=1000 run counts as its whole length"),
    ({"lr_decay_factor": 0}, r"lr_decay_factor=0 must lie in \(0, 1\]"),
    ({"lr_decay_factor": 1.5}, r"lr_decay_factor=1.5 must lie in \(0, 1\]"),
    ({"lr_decay_factor": -0.1}, r"lr_decay_factor=-0.1 must lie in \(0, 1\]"),
    ({"lr_decay_epochs": [18, 36], "lr_scheduler_type": "cosine"},
     r"lr_decay_epochs=\[18, 36\] and lr_scheduler_type='cosine' cannot be combined.*Leave lr_scheduler_type"),
    ({"lr_decay_epochs": [0.3], "lr_scheduler_type": "constant_with_warmup"}, r"cannot be combined"),
])
def test_bad_step_decay_settings(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        CheckpointKDConfig(output_dir=str(tmp_path), **{"num_train_epochs": 60, **overrides})


def test_step_decay_settings_parse_from_flags_and_recipes(tmp_path):
    (config,) = HfArgumentParser(CheckpointKDConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--num_train_epochs", "60", "--lr_decay_epochs", "18", "36", "54",
         "--lr_decay_factor", "0.2"])
    assert config.lr_decay_epochs == [18, 36, 54] and config.lr_decay_factor == 0.2
    (config,) = HfArgumentParser(CheckpointKDConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--lr_decay_epochs", "0.3", "0.6", "0.9"])
    assert config.lr_decay_epochs == [0.3, 0.6, 0.9] and config.lr_decay_factor == 0.1
    assert CheckpointKDConfig(output_dir=str(tmp_path)).lr_decay_epochs is None
    with pytest.raises(ConfigError, match=r"lr_decay_epochs=\[36.0, 18.0\] must be strictly increasing"):
        HfArgumentParser(CheckpointKDConfig).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--num_train_epochs", "60", "--lr_decay_epochs", "36", "18"])

    recipe = recipe_from_dict(yaml.safe_load("""
        teacher: {model: timm:test_resnet, num_train_epochs: 60, lr_decay_epochs: [18, 36], lr_decay_factor: 0.2}
        student: {model: timm:test_resnet, lr_decay_epochs: [0.3, 0.6]}
    """))
    teacher = CheckpointKDConfig(output_dir=str(tmp_path), **recipe.teacher.training)
    student = CheckpointKDConfig(output_dir=str(tmp_path), **recipe.student.training)
    assert (teacher.lr_decay_epochs, teacher.lr_decay_factor) == ([18, 36], 0.2)
    assert (student.lr_decay_epochs, student.lr_decay_factor) == ([0.3, 0.6], 0.1)
    with pytest.raises(ConfigError, match=r"student: lr_decay_epochs='18 36' has the wrong type"):
        recipe_from_dict({"teacher": {"model": "timm:test_resnet"},
                          "student": {"model": "timm:test_resnet", "lr_decay_epochs": "18 36"}})
    # A schedule matters to a student trained without a teacher too.
    assert not {"lr_decay_epochs", "lr_decay_factor"} & set(DISTILLATION_FIELDS)
    plain = recipe_from_dict({"teacher": {"model": "timm:test_resnet"}, "student": {"model": "timm:test_resnet"}})
    assert recipe.no_teacher_fingerprint != plain.no_teacher_fingerprint
