"""Causal LMs end to end: token-level losses, LM teachers and snapshots, the mixin, the CLI, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from hf_ckptkd import CheckpointKDConfig, CheckpointKDMixin, CheckpointKDTrainer, SnapshotIndex, load_teachers
from hf_ckptkd.cli.main import main
from hf_ckptkd.config import ConfigError
from hf_ckptkd.data import lm_blocks
from hf_ckptkd.tasks.losses import NoLabelledTokensError, kd_per_row, labelled_positions, token_kd
from hf_ckptkd.models.folders import load_model, save_model
from hf_ckptkd.models import ModelSpecError, build_causal_lm, build_model, is_causal_lm
from hf_ckptkd.snapshots import write_snapshot
from hf_ckptkd.tasks import TASKS, task_of_model
from hf_ckptkd.training.teacher_checks import LabelSpaceError, TeacherOutputError
from hf_ckptkd.training.teachers import TeacherReferenceError

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = dict(n_layer=1, n_embd=16, n_head=2, n_positions=16)


# --- the token-level loss --------------------------------------------------------------------

def _reference_token_kd(s, t, labels, temperature, kind, beta):
    """The KD term written out directly: shift, mask, full (tokens, vocab) tensors, sum over labelled tokens."""
    s, t, y = s[:, :-1].reshape(-1, s.shape[-1]), t[:, :-1].reshape(-1, t.shape[-1]), labels[:, 1:].reshape(-1)
    keep = y != -100
    s, t, y = s[keep], t[keep], y[keep]
    p_s, p_t = F.softmax(s / temperature, -1), F.softmax(t / temperature, -1)
    if kind == "kl":
        kd = (p_t * (p_t.log() - p_s.log())).sum(-1)
    elif kind == "reverse_kl":
        kd = (p_s * (p_s.log() - p_t.log())).sum(-1)
    elif beta == 1.0:  # GKD's jsd at beta 1 is the reverse KL
        kd = (p_s * (p_s.log() - p_t.log())).sum(-1)
    else:  # GKD's generalised JSD, from its definition with the mixture of probabilities
        m = beta * p_t + (1 - beta) * p_s
        kd = beta * (p_t * (p_t.log() - m.log())).sum(-1) + (1 - beta) * (p_s * (p_s.log() - m.log())).sum(-1)
    return (kd * temperature**2).sum()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("kind,beta", [("kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3), ("jsd", 0.9), ("jsd", 1.0)])
def test_token_loss_matches_its_definition_for_every_chunk_size(kind, beta, temperature):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 7, 11, generator=g, requires_grad=True)
    t = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, 4:] = -100
    labels[2, :2] = -100
    expected = _reference_token_kd(s, t, labels, temperature, kind, beta)
    (expected_grad,) = torch.autograd.grad(expected, s)
    for chunk in (1, 4, 1000):
        result = token_kd(s, t, labels, temperature=temperature, kind=kind, beta=beta, chunk_size=chunk)
        (grad,) = torch.autograd.grad(result.total, s)
        assert result.total.item() == pytest.approx(expected.item(), rel=1e-5)
        assert torch.allclose(grad, expected_grad, atol=1e-6), chunk
        assert result.tokens == int((labels[:, 1:] != -100).sum())
        keep = labels[:, 1:] != -100
        assert result.teacher_correct.item() == int((t[:, :-1].argmax(-1) == labels[:, 1:])[keep].sum())


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_compiled_forward_kl_gives_the_eager_loss_and_gradient(temperature):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 9, 50, generator=g, requires_grad=True)
    t, labels = torch.randn(2, 9, 50, generator=g), torch.randint(0, 50, (2, 9), generator=g)
    labels[1, 4:] = -100
    runs = [token_kd(s, t, labels, temperature=temperature, chunk_size=4, compiled=c) for c in (False, True)]
    (eager, compiled), grads = runs, [torch.autograd.grad(r.total, s)[0] for r in runs]
    assert compiled.total.item() == pytest.approx(eager.total.item(), rel=1e-5)
    assert compiled.teacher_correct.item() == eager.teacher_correct.item()
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_jsd_ends_are_the_two_kl_directions_and_identical_distributions_cost_nothing():
    s, t = torch.randn(5, 9), torch.randn(5, 9)
    assert torch.allclose(kd_per_row(s, t, 2.0, "jsd", beta=0.0), kd_per_row(s, t, 2.0, "kl"))
    assert torch.allclose(kd_per_row(s, t, 2.0, "jsd", beta=1.0), kd_per_row(s, t, 2.0, "reverse_kl"))
    for kind in ("kl", "reverse_kl", "jsd"):
        assert kd_per_row(s, s.clone(), 3.0, kind).abs().max() < 1e-5
        assert (kd_per_row(s, t, 3.0, kind) > 0).all()


def test_positions_are_shifted_as_transformers_shifts_them():
    labels = torch.tensor([[5, 6, -100, 7], [-100, 8, 9, -100]])
    index, targets = labelled_positions(labels)
    # position i predicts label i+1: row 0 predicts 6 at 0 and 7 at 2; row 1 predicts 8 at 0 and 9 at 1
    assert index.tolist() == [0, 2, 4, 5]
    assert targets.tolist() == [6, 7, 8, 9]


def test_a_batch_without_labelled_tokens_is_refused():
    labels = torch.full((2, 5), -100)
    labels[0, 0] = 3  # position 0's label is never a target
    with pytest.raises(NoLabelledTokensError, match="no labelled token.*DataCollatorForLanguageModeling"):
        token_kd(torch.randn(2, 5, 7), torch.randn(2, 5, 7), labels, temperature=1.0)


def test_jsd_beta_and_chunk_size_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"jsd_beta=1.5 must lie in \[0, 1\]"):
        CheckpointKDConfig(output_dir=str(tmp_path), jsd_beta=1.5)
    with pytest.raises(ConfigError, match="kd_chunk_size=0 must be a positive integer"):
        CheckpointKDConfig(output_dir=str(tmp_path), kd_chunk_size=0)


# --- models and data ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The tiny tokenizer of the text tests and its sentences cut into 16-token blocks."""
    from text_data import tiny_corpus

    folder = tmp_path_factory.mktemp("corpus")
    tokenizer, texts = tiny_corpus(folder)
    return {"folder": folder, "tokenizer": tokenizer, "blocks": lm_blocks(texts, tokenizer, "text", 16)}


def _lm(tokenizer, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_causal_lm("transformers:GPT2Config", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           model_kwargs={**TINY_GPT2, **kwargs})


def test_lm_blocks_cut_the_corpus_into_full_blocks(corpus):
    blocks, tokenizer = corpus["blocks"], corpus["tokenizer"]
    assert len(blocks) > 10 and all(len(ids) == 16 for ids in blocks["input_ids"])
    first = tokenizer("the movie was bad")["input_ids"]  # the first text, with its [CLS] ... [SEP]
    assert blocks[0]["input_ids"][:len(first)] == first


def test_a_causal_lm_folder_loads_as_a_causal_lm_and_an_unlabelled_config_is_refused(tmp_path, corpus):
    model = _lm(corpus["tokenizer"])
    save_model(model, tmp_path / "lm")
    loaded = load_model(tmp_path / "lm")
    assert is_causal_lm(loaded) and task_of_model(loaded) is TASKS["causal-lm"]
    torch.testing.assert_close(loaded.state_dict()["lm_head.weight"], model.state_dict()["lm_head.weight"])
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    del config["architectures"]
    (tmp_path / "lm" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSpecError, match=r'does not say which model.*"architectures": \["GPT2LMHeadModel"\]'):
        load_model(tmp_path / "lm")
    with pytest.raises(ModelSpecError, match="has no causal-LM model"):
        build_causal_lm("transformers:ViTConfig")


# --- training: snapshots, distillation, ensembles ------------------------------------------------

@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, corpus):
    """A tiny GPT-2 teacher trained 3 epochs with a snapshot each epoch and the tokenizer in each snapshot."""
    out = tmp_path_factory.mktemp("lm_teacher")
    args = CheckpointKDConfig(output_dir=str(out), num_train_epochs=3, per_device_train_batch_size=8, learning_rate=5e-3,
                              snapshot_strategy="epoch", report_to="none", save_strategy="no", logging_steps=5)
    trainer = CheckpointKDTrainer(model=_lm(corpus["tokenizer"]), args=args, train_dataset=corpus["blocks"],
                                  data_collator=DataCollatorForLanguageModeling(corpus["tokenizer"], mlm=False),
                                  processing_class=corpus["tokenizer"])
    trainer.train()
    return SnapshotIndex.load(out)


def test_an_lm_snapshot_loads_with_the_auto_classes_alone(lm_run, corpus):
    final = lm_run.final.path
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.get_vocab() == corpus["tokenizer"].get_vocab()
    ids = tokenizer("the movie was", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def _student_args(tmp_path, teachers, **kw):
    values = dict(output_dir=str(tmp_path / "student"), max_steps=4, per_device_train_batch_size=4, learning_rate=5e-3,
                  report_to="none", save_strategy="no", logging_steps=2, max_grad_norm=0.0, teachers=teachers)
    return CheckpointKDConfig(**{**values, **kw})


@pytest.mark.parametrize("kind", ["kl", "jsd"])
def test_an_lm_student_distils_from_snapshots_and_logs_its_terms(tmp_path, lm_run, corpus, kind):
    teachers = [f"{lm_run.snapshot_dir}:{lm_run.names[-1]}", str(lm_run[0].path)]
    trainer = CheckpointKDTrainer(model=_lm(corpus["tokenizer"], seed=1, n_embd=8),
                                  args=_student_args(tmp_path, teachers, kd_loss=kind),
                                  train_dataset=corpus["blocks"], processing_class=corpus["tokenizer"],
                                  data_collator=DataCollatorForLanguageModeling(corpus["tokenizer"], mlm=False))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss_kd" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["loss_kd"] > 0 and h["loss_task"] > 0 and 0 <= h["teacher_accuracy"] <= 1
        assert h["loss"] == pytest.approx(0.5 * h["loss_task"] + 0.5 * h["loss_kd"], rel=0.25)
    assert any(not torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_the_teachers_next_token_accuracy_is_what_it_predicts(lm_run, corpus):
    teachers = load_teachers([str(lm_run.final.path)])
    batch = DataCollatorForLanguageModeling(corpus["tokenizer"], mlm=False)([corpus["blocks"][i] for i in range(4)])
    logits = teachers(**batch)
    term = TASKS["causal-lm"].kd_term(torch.zeros_like(logits), logits, batch["labels"],
                                      args=CheckpointKDConfig(output_dir="unused"))
    direct = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]).float().mean()
    assert term.logs["teacher_accuracy"].item() == pytest.approx(direct.item())


@pytest.mark.parametrize("mode", ["mean_logits", "mean_probs"])
def test_lm_snapshot_ensembles_combine_per_token_and_fused_equals_loop(lm_run, corpus, mode):
    refs = [str(s.path) for s in lm_run][-2:]
    batch = DataCollatorForLanguageModeling(corpus["tokenizer"], mlm=False)([corpus["blocks"][i] for i in range(3)])
    loop = load_teachers(refs, mode=mode, temperature=2.0, fusion="loop")
    members = loop.member_logits(**batch)
    assert members.shape == (2, 3, 16, len(corpus["tokenizer"]))
    out = loop(**batch)
    if mode == "mean_logits":
        torch.testing.assert_close(out, members.mean(0))
    else:
        torch.testing.assert_close(F.softmax(out / 2.0, -1), F.softmax(members / 2.0, -1).mean(0))
    fused = load_teachers(refs, mode=mode, temperature=2.0, fusion="fused")
    torch.testing.assert_close(fused(**batch), out, atol=1e-5, rtol=1e-5)


class _OwnTrainer(Trainer):
    """A user's own Trainer subclass, with an extra behaviour of its own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.own_logs = 0

    def log(self, logs, start_time=None):
        self.own_logs += 1
        super().log(logs, start_time)


class _DistillingOwnTrainer(CheckpointKDMixin, _OwnTrainer):
    pass


def test_the_mixin_gives_a_users_own_trainer_distillation(tmp_path, lm_run, corpus):
    trainer = _DistillingOwnTrainer(model=_lm(corpus["tokenizer"], seed=2),
                                    args=_student_args(tmp_path, [str(lm_run.final.path)]),
                                    train_dataset=corpus["blocks"], processing_class=corpus["tokenizer"],
                                    data_collator=DataCollatorForLanguageModeling(corpus["tokenizer"], mlm=False))
    trainer.train()
    assert trainer.own_logs >= 2  # its own override still runs
    assert any("loss_kd" in h for h in trainer.state.log_history)
    with pytest.raises(TypeError, match="args must be a CheckpointKDConfig"):
        _DistillingOwnTrainer(model=_lm(corpus["tokenizer"]), args=TrainingArguments(output_dir=str(tmp_path / "x")))


# --- bad input ------------------------------------------------------------------------------------

def test_a_classifier_teacher_for_an_lm_student_and_the_reverse_are_refused(tmp_path, lm_run, corpus):
    tok = corpus["tokenizer"]
    classifier = build_model("transformers:GPT2Config", 2, model_kwargs={**TINY_GPT2, "vocab_size": len(tok),
                                                                        "pad_token_id": tok.pad_token_id})
    write_snapshot(classifier, tmp_path / "cls", "epoch-0001", epoch=1, global_step=1, processing_class=tok)
    with pytest.raises(LabelSpaceError, match="are a text classifier but the student .* is a causal LM"):
        CheckpointKDTrainer(model=_lm(tok), args=_student_args(tmp_path, [f"{tmp_path / 'cls'}:epoch-0001"]))
    with pytest.raises(LabelSpaceError, match="are a causal LM but the student .* is a text classifier"):
        CheckpointKDTrainer(model=classifier, args=_student_args(tmp_path, [str(lm_run.final.path)]))


def test_a_teacher_with_another_tokenizer_is_refused_naming_both(tmp_path, lm_run, corpus):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "bad", "good", "the", "movie", "plot", "was", "very", "fine", "poor",
             "great", "awful", "acting"]  # the same 16 words in another order
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    with pytest.raises(LabelSpaceError, match=r"tokenizer \(16 tokens\) and the student's \(16 tokens\) differ"):
        CheckpointKDTrainer(model=_lm(other), args=_student_args(tmp_path, [str(lm_run.final.path)]),
                            processing_class=other)


def test_an_lm_teacher_folder_without_a_tokenizer_is_refused(tmp_path, lm_run, corpus):
    write_snapshot(AutoModelForCausalLM.from_pretrained(lm_run.final.path), tmp_path / "bare", "epoch-0003", epoch=3,
                   global_step=30)
    with pytest.raises(TeacherReferenceError, match="holds no tokenizer.*processing_class=tokenizer"):
        CheckpointKDTrainer(model=_lm(corpus["tokenizer"]), args=_student_args(tmp_path, [f"{tmp_path / 'bare'}:epoch-0003"]),
                            processing_class=corpus["tokenizer"])


def test_nan_lm_teacher_logits_stop_training_before_a_step(tmp_path, corpus):
    broken = _lm(corpus["tokenizer"])
    with torch.no_grad():
        broken.lm_head.weight[3].fill_(float("nan"))  # (tied to the embedding: token 3's logit and embedding)
    write_snapshot(broken, tmp_path / "nan", "epoch-0001", epoch=1, global_step=1, processing_class=corpus["tokenizer"])
    student = _lm(corpus["tokenizer"], seed=3)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = CheckpointKDTrainer(model=student, args=_student_args(tmp_path, [f"{tmp_path / 'nan'}:epoch-0001"]),
                                  train_dataset=corpus["blocks"], processing_class=corpus["tokenizer"],
                                  data_collator=DataCollatorForLanguageModeling(corpus["tokenizer"], mlm=False))
    with pytest.raises(TeacherOutputError, match="NaN/inf at batch 0"):
        trainer.train()
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


# --- the step's token count: gradient accumulation and two processes --------------------------------

@pytest.fixture(scope="module")
def lm_teacher_folder(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("lm_teacher_folder")
    save_model(_lm(corpus["tokenizer"], seed=5), folder)
    corpus["tokenizer"].save_pretrained(folder)
    return folder


def _run_script(out, teacher, *args, launch=None):
    command = [*(launch or [sys.executable]), str(ROOT / "tests" / "scripts" / "lm_distill_run.py"), str(out),
               str(teacher), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "weights.json").read_text())


def _assert_same_weights(a, b):
    for loss, sums in a["sums"].items():
        for name, value in sums.items():
            assert b["sums"][loss][name] == pytest.approx(value, rel=1e-4, abs=1e-4), (loss, name)


# The model's own loss, or a user's compute_loss_func: either is divided by the step's labelled tokens, and the KD
# term must be divided by the same count.
LOSSES = ["--losses", "model", "smoothed_tokens"]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory, lm_teacher_folder):
    """The whole batch in one process, what both equivalence tests compare against."""
    return _run_script(tmp_path_factory.mktemp("whole"), lm_teacher_folder, "--batch_size", "8", *LOSSES)


@pytest.mark.slow
def test_gradient_accumulation_weighs_every_labelled_token_alike(tmp_path, lm_teacher_folder, one_process_run):
    accumulated = _run_script(tmp_path / "accumulated", lm_teacher_folder, "--batch_size", "4", "--grad_accum", "2",
                              *LOSSES)
    _assert_same_weights(one_process_run, accumulated)


@pytest.mark.slow
def test_two_processes_update_as_one_process(tmp_path, lm_teacher_folder, one_process_run, accelerate_launch):
    two = _run_script(tmp_path / "two", lm_teacher_folder, "--batch_size", "4", *LOSSES, launch=accelerate_launch)
    assert one_process_run["world_size"] == 1 and two["world_size"] == 2
    _assert_same_weights(one_process_run, two)


# --- the command line ------------------------------------------------------------------------------

def test_an_lm_teacher_and_student_from_the_command_line(tmp_path, corpus, capsys):
    common = ["--dataset", str(corpus["folder"] / "data"), "--text_column", "sentence", "--task", "causal-lm",
              "--tokenizer", str(corpus["folder"] / "tokenizer"), "--max_length", "16", "--model",
              "transformers:GPT2Config", "--model_kwargs", json.dumps(TINY_GPT2), "--per_device_train_batch_size", "8",
              "--report_to", "none", "--learning_rate", "0.005"]
    assert main(["train-teacher", *common, "--num_train_epochs", "2", "--snapshot_strategy", "epoch",
                 "--output_dir", str(tmp_path / "t")]) == 0
    assert main(["distill", *common, "--max_steps", "3", "--kd_loss", "reverse_kl",
                 "--teachers", f"{tmp_path / 't' / 'snapshots'}:epoch-0002", "--output_dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert out.count("next-token accuracy:") == 2
    ppl = [float(line.rsplit(" ", 1)[1]) for line in out.splitlines() if "perplexity" in line]
    assert all(1 < p < 16 for p in ppl)  # better than uniform over the 16 tokens
    assert main(["distill", *common, "--max_steps", "1", "--jsd_beta", "2", "--kd_loss", "jsd",
                 "--teachers", f"{tmp_path / 't' / 'snapshots'}:epoch-0002", "--output_dir", str(tmp_path / "x")]) == 2
    assert "jsd_beta=2.0 must lie in [0, 1]" in capsys.readouterr().err


def test_the_perplexity_is_the_exponential_of_the_mean_token_loss():
    from hf_ckptkd.tasks import perplexity

    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(1e6) == float("inf")
