"""The mixin composes with the user's own loss.

With teachers, the hard-label term L is whatever the next class's `compute_loss` returns (a
Trainer subclass's override, `compute_loss_func`, label smoothing, the model's own loss) and the
distillation term is added on the student outputs L came from; evaluation reports the same L.
Third-party Trainer subclasses (transformers' Seq2SeqTrainer, TRL's SFTTrainer) and losses that
cannot be combined (no logits, another shape, no gradient: a clear error before the first step).
The gradient-accumulation and multi-process equivalence of the two terms' reductions is tested
beside the trainer's (test_distill.py, test_causal_lm.py).
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import DataCollatorForLanguageModeling, Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer
from user_losses import CLASS_WEIGHTS, class_weighted_loss

from hf_ckptkd import CheckpointKDConfig, CheckpointKDMixin, CheckpointKDTrainer
from hf_ckptkd.data import (
    ImageTransformConfig,
    build_image_transform,
    image_collator,
    label_names,
    lm_blocks,
    load_fashion_mnist,
    with_image_transform,
)
from hf_ckptkd.models import build_causal_lm, build_model
from hf_ckptkd.snapshots import write_snapshot
from hf_ckptkd.training.trainer import StudentOutputError

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 7,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
ALPHA, T = 0.3, 2.0


# --- a classifier: a ViT (no BatchNorm, no dropout: a batch gives the same outputs in training and evaluation) ----

@pytest.fixture(scope="module")
def images():
    raw = load_fashion_mnist("train", limit=32)
    plain = build_image_transform(ImageTransformConfig(crop_padding=0, hflip=False), train=True)
    return label_names(raw), with_image_transform(raw, plain)


@pytest.fixture(scope="module")
def image_teacher(tmp_path_factory, images):
    names, _ = images
    folder = tmp_path_factory.mktemp("image_teacher")
    write_snapshot(_vit(names, seed=7), folder, "epoch-0001", epoch=1, global_step=1)
    return f"{folder}:epoch-0001"


def _vit(names, seed=0):
    torch.manual_seed(seed)
    return build_model("transformers:ViTConfig", 10, label_names=names, model_kwargs=TINY_VIT)


def _args(tmp_path, teacher, **overrides):
    values = dict(output_dir=str(tmp_path / "student"), max_steps=1, per_device_train_batch_size=32,
                  per_device_eval_batch_size=32, learning_rate=1e-3, logging_steps=1, report_to="none",
                  remove_unused_columns=False, save_strategy="no", disable_tqdm=True, teachers=[teacher], alpha=ALPHA,
                  temperature=T, max_grad_norm=0.0)
    return CheckpointKDConfig(**{**values, **overrides})


def _whole_batch(data):
    return image_collator([data[i] for i in range(len(data))])


def _kd_logs(trainer):
    return [e for e in trainer.state.log_history if "loss_kd" in e]


class ClassWeightedTrainer(Trainer):
    """A user's own Trainer: a class-weighted cross-entropy, and a count of its calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_calls = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.loss_calls += 1
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits, labels, weight=CLASS_WEIGHTS)
        return (loss, outputs) if return_outputs else loss


class ClassWeightedKDTrainer(CheckpointKDMixin, ClassWeightedTrainer):
    pass


def _gradient(model, loss_of) -> torch.Tensor:
    model.zero_grad()
    loss_of().backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_a_custom_compute_loss_runs_at_every_step_and_shapes_the_gradient(tmp_path, images, image_teacher):
    names, data = images
    trainer = ClassWeightedKDTrainer(model=_vit(names), args=_args(tmp_path, image_teacher, max_steps=3,
                                                                   per_device_train_batch_size=16,
                                                                   gradient_accumulation_steps=2),
                                     train_dataset=data, data_collator=image_collator)
    trainer.train()
    assert trainer.loss_calls == 6  # each micro-batch of each of the 3 steps
    assert len(_kd_logs(trainer)) == 3
    # One batch's gradient is alpha * d(the user's weighted CE) + (1 - alpha) * d(T^2 KL(teacher || student)).
    model, batch = trainer.model.train(), _whole_batch(data)

    def by_hand():
        logits = model(pixel_values=batch["pixel_values"]).logits
        p_t = torch.softmax(trainer.teachers(pixel_values=batch["pixel_values"]) / T, -1)
        kl = (p_t * (p_t.log() - torch.log_softmax(logits / T, -1))).sum(-1).mean() * T * T
        return ALPHA * F.cross_entropy(logits, batch["labels"], weight=CLASS_WEIGHTS) + (1 - ALPHA) * kl

    composed = _gradient(model, lambda: trainer.compute_loss(model, dict(batch)))
    torch.testing.assert_close(composed, _gradient(model, by_hand), rtol=1e-4, atol=1e-7)
    plain = CheckpointKDTrainer(model=model, args=_args(tmp_path / "plain", image_teacher), train_dataset=data,
                                data_collator=image_collator)  # the model's own, unweighted, loss
    assert not torch.allclose(_gradient(model, lambda: plain.compute_loss(model, dict(batch))), composed, rtol=1e-3)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_label_smoothing_is_the_hard_label_term_and_evaluation_reports_it(tmp_path, images, image_teacher, smoothing):
    names, data = images
    trainer = CheckpointKDTrainer(model=_vit(names), args=_args(tmp_path, image_teacher, learning_rate=0.0,
                                                                label_smoothing_factor=smoothing),
                                  train_dataset=data, eval_dataset=data, data_collator=image_collator)
    trainer.train()  # one step over the 32 examples, learning rate 0: the model stays as it was
    (log,) = _kd_logs(trainer)
    batch = _whole_batch(data)
    with torch.no_grad():
        logits = trainer.model(pixel_values=batch["pixel_values"]).logits
    expected = F.cross_entropy(logits, batch["labels"], label_smoothing=smoothing).item()
    assert smoothing == 0 or abs(expected - F.cross_entropy(logits, batch["labels"]).item()) > 1e-3
    assert log["loss_task"] == pytest.approx(expected, rel=1e-5)
    assert log["loss"] == pytest.approx(ALPHA * log["loss_task"] + (1 - ALPHA) * log["loss_kd"], rel=1e-5)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(log["loss_task"], rel=1e-5)


def test_compute_loss_func_is_the_hard_label_term(tmp_path, images, image_teacher):
    names, data = images
    counts = []

    def counted(outputs, labels, num_items_in_batch=None):
        counts.append(num_items_in_batch)
        return class_weighted_loss(outputs, labels, num_items_in_batch)

    trainer = CheckpointKDTrainer(model=_vit(names), args=_args(tmp_path, image_teacher, learning_rate=0.0,
                                                                per_device_train_batch_size=16,
                                                                gradient_accumulation_steps=2),
                                  train_dataset=data, eval_dataset=data, data_collator=image_collator,
                                  compute_loss_func=counted)
    trainer.train()
    assert [int(n) for n in counts] == [32, 32]  # both micro-batches, with Trainer's count over the whole step
    (log,) = _kd_logs(trainer)
    batch = _whole_batch(data)
    with torch.no_grad():
        outputs = trainer.model(pixel_values=batch["pixel_values"])
    assert log["loss_task"] == pytest.approx(class_weighted_loss(outputs, batch["labels"]).item(), rel=1e-5)
    assert log["loss"] == pytest.approx(ALPHA * log["loss_task"] + (1 - ALPHA) * log["loss_kd"], rel=1e-5)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(log["loss_task"], rel=1e-5)


class ScaledByItselfTrainer(Trainer):
    """A Trainer that scales its loss for gradient accumulation itself, and says so."""

    loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        loss = loss / self.current_gradient_accumulation_steps
        return (loss, outputs) if return_outputs else loss


class ScaledByItselfKDTrainer(CheckpointKDMixin, ScaledByItselfTrainer):
    pass


def test_a_loss_scaled_for_accumulation_by_its_trainer_gets_a_kd_term_scaled_alike(tmp_path, images, image_teacher):
    names, data = images
    weights, logs = [], []
    for batch, accumulation in ((32, 1), (16, 2)):
        trainer = ScaledByItselfKDTrainer(model=_vit(names), args=_args(tmp_path / str(batch), image_teacher,
                                                                        per_device_train_batch_size=batch,
                                                                        gradient_accumulation_steps=accumulation),
                                          train_dataset=data, data_collator=image_collator)
        trainer.train()
        weights.append(trainer.model.classifier.weight.detach().clone())
        logs.append(_kd_logs(trainer)[0])
    torch.testing.assert_close(weights[0], weights[1], atol=1e-6, rtol=1e-5)
    assert logs[1]["loss_task"] == pytest.approx(logs[0]["loss_task"], rel=1e-5)  # the batch mean, unscaled


# --- what cannot be combined: stopped before the first step -----------------------------------------------------

class _LossOnly(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)  # ignores return_outputs


class _OutputsOfItsOwn(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        return (loss, {"loss": loss, "confidence": outputs.logits.softmax(-1).amax(-1)}) if return_outputs else loss


class _SomeClasses(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        outputs.logits = outputs.logits[:, :5]
        return (loss, outputs) if return_outputs else loss


class _DetachedLogits(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        outputs.logits = outputs.logits.detach()
        return (loss, outputs) if return_outputs else loss


@pytest.mark.parametrize("base,message", [
    (_LossOnly, r"_LossOnly.compute_loss\(..., return_outputs=True\) returned Tensor, not \(loss, outputs\)"),
    (_OutputsOfItsOwn, r"_OutputsOfItsOwn.compute_loss returned, a dict \(it holds loss, confidence\), have no logits.*"
                       r"Return the model's own outputs"),
    (_SomeClasses, r"_SomeClasses.compute_loss returned have shape \(32, 5\) but the teachers' logits of the same batch "
                   r"have shape \(32, 10\)"),
    (_DetachedLogits, r"_DetachedLogits.compute_loss returned carry no gradient.*would not train the student"),
])
def test_a_loss_that_cannot_be_combined_stops_before_the_first_step(tmp_path, images, image_teacher, base, message):
    names, data = images
    student = _vit(names)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = type("KD" + base.__name__, (CheckpointKDMixin, base), {})(
        model=student, args=_args(tmp_path, image_teacher), train_dataset=data, data_collator=image_collator)
    with pytest.raises(StudentOutputError, match=message):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


# --- causal LMs and third-party Trainer subclasses ---------------------------------------------------------------

@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """The tiny tokenizer of the text tests, its sentences, and a GPT-2 teacher snapshot saved with the tokenizer."""
    from text_data import tiny_corpus

    folder = tmp_path_factory.mktemp("lm")
    tokenizer, sentences = tiny_corpus(folder)
    sentences = sentences.select(range(64))
    write_snapshot(_gpt2(tokenizer, seed=5), folder / "snapshots", "epoch-0001", epoch=1, global_step=1,
                   processing_class=tokenizer)
    return {"tokenizer": tokenizer, "sentences": sentences, "blocks": lm_blocks(sentences, tokenizer, "text", 16),
            "teacher": f"{folder / 'snapshots'}:epoch-0001"}


def _gpt2(tokenizer, seed=0):
    torch.manual_seed(seed)
    return build_causal_lm("transformers:GPT2Config", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           model_kwargs=dict(n_layer=1, n_embd=16, n_head=2, n_positions=32, resid_pdrop=0.0,
                                             embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.cls_token_id,
                                             eos_token_id=tokenizer.sep_token_id))


def _llama(tokenizer, seed=0):
    """A Llama-style student. (transformers' Trainer counts GPT-2's labels without the shift, since GPT2LMHeadModel
    names no loss_type, so its `loss` and `eval_loss` are (n-1)/n of the per-token mean; a Llama's are exact.)"""
    torch.manual_seed(seed)
    return build_causal_lm("transformers:LlamaConfig", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           model_kwargs=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                             bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))


def _lm_args(cls, tmp_path, teacher, **overrides):
    values = dict(output_dir=str(tmp_path / "lm_student"), max_steps=2, per_device_train_batch_size=4,
                  per_device_eval_batch_size=4, learning_rate=5e-3, logging_steps=1, report_to="none",
                  save_strategy="no", disable_tqdm=True, teachers=[teacher], alpha=ALPHA, temperature=T,
                  max_grad_norm=0.0)
    return cls(**{**values, **overrides})


def test_an_lm_reports_the_same_token_loss_in_training_and_evaluation(tmp_path, text):
    """The model's loss is divided by Trainer's count of the step's labelled tokens (two micro-batches here): the
    log undoes that, so loss_task is the batch's mean token loss, which evaluation reports as eval_loss."""
    blocks = text["blocks"].select(range(8))  # full blocks: every micro-batch has the same number of labelled tokens
    collator = DataCollatorForLanguageModeling(text["tokenizer"], mlm=False)
    trainer = CheckpointKDTrainer(model=_llama(text["tokenizer"]),
                                  args=_lm_args(CheckpointKDConfig, tmp_path, text["teacher"], max_steps=1,
                                                learning_rate=0.0, gradient_accumulation_steps=2),
                                  train_dataset=blocks, eval_dataset=blocks, processing_class=text["tokenizer"],
                                  data_collator=collator)
    trainer.train()
    (log,) = _kd_logs(trainer)
    batch = collator([blocks[i] for i in range(8)])
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"]).logits
    by_hand = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten())
    assert log["loss_task"] == pytest.approx(by_hand.item(), rel=1e-5)
    assert log["loss_task"] == pytest.approx(trainer.evaluate()["eval_loss"], rel=1e-5)
    assert log["loss"] == pytest.approx(ALPHA * log["loss_task"] + (1 - ALPHA) * log["loss_kd"], rel=1e-5)


@dataclass
class Seq2SeqKDConfig(CheckpointKDConfig, Seq2SeqTrainingArguments):
    """Seq2SeqTrainer's arguments (generation settings) and the distillation fields."""


class Seq2SeqKDTrainer(CheckpointKDMixin, Seq2SeqTrainer):
    pass


def test_transformers_seq2seq_trainer_distils_with_the_mixin(tmp_path, text):
    tokenizer = text["tokenizer"]
    args = _lm_args(Seq2SeqKDConfig, tmp_path, text["teacher"], max_steps=3, predict_with_generate=True,
                    generation_max_length=20)
    trainer = Seq2SeqKDTrainer(model=_llama(tokenizer), args=args, train_dataset=text["blocks"],
                               eval_dataset=text["blocks"].select(range(8)), processing_class=tokenizer,
                               data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logs = _kd_logs(trainer)
    assert len(logs) == 3
    for log in logs:  # full blocks: every batch has the same labelled tokens, so the logged means combine exactly
        assert log["loss_kd"] > 0 and log["loss"] == pytest.approx(ALPHA * log["loss_task"] + (1 - ALPHA) * log["loss_kd"],
                                                                    rel=1e-5)
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())
    # Seq2SeqTrainer's own evaluation (generating) and the plain one report the same student loss.
    generated = trainer.evaluate(max_new_tokens=2)["eval_loss"]
    trainer.args.predict_with_generate = False
    assert generated == pytest.approx(trainer.evaluate()["eval_loss"], rel=1e-5)


def test_trl_sft_trainer_is_refused_before_the_first_step(tmp_path, text):
    """TRL's SFTTrainer (1.15 on) computes its loss through a fused LM head and recomputes the logits it returns
    without gradient: a KD term on them would not train the student, so the mixin stops with the reason."""
    from trl import SFTConfig, SFTTrainer

    @dataclass
    class SFTKDConfig(CheckpointKDConfig, SFTConfig):
        pass

    class SFTKDTrainer(CheckpointKDMixin, SFTTrainer):
        pass

    tokenizer = text["tokenizer"]
    args = _lm_args(SFTKDConfig, tmp_path, text["teacher"], max_length=16, eos_token=tokenizer.sep_token)
    trainer = SFTKDTrainer(model=_gpt2(tokenizer), args=args, train_dataset=text["sentences"], processing_class=tokenizer)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(StudentOutputError, match=r"SFTTrainer.compute_loss returned carry no gradient.*fused LM head"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


# --- the documented example ---------------------------------------------------------------------------------------

DOC = ROOT / "docs" / "distillation_mixin_section.md"


@pytest.mark.slow
def test_the_documented_custom_loss_example_runs(tmp_path):
    (example,) = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.M | re.S)
    (tmp_path / "example.py").write_text(example)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    loss, task, kd = (float(v) for v in done.stdout.split()[-3:])
    assert loss == pytest.approx(0.5 * task + 0.5 * kd, rel=1e-4)
    assert kd > 0
