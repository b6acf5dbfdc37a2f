"""A causal LM's top-k teacher-logit cache: the sparse loss, the format on disk, resuming, stale and damaged
caches, and students trained from it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer
from hf_ckptkd.config import ConfigError
from hf_ckptkd.data import lm_blocks
from hf_ckptkd.models import build_causal_lm
from hf_ckptkd.models.folders import save_model
from hf_ckptkd.tasks.losses import kd_per_row, token_kd
from hf_ckptkd.tasks.topk_losses import MISSING_MASS, TopKTeacher, topk_token_kd
from hf_ckptkd.training.teacher_checks import LabelSpaceError
from hf_ckptkd.training.teacher_logits import CachedLogitsError
from hf_ckptkd.training.teachers import TeacherEnsemble
from hf_ckptkd.training.topk_cache import (
    MANIFEST,
    TOPK_IDS,
    TOPK_LOGPROBS,
    TeacherLogitsCacheError,
    TopKLogitsCache,
    TopKTeacherCollator,
    WithTopKTeacher,
    cache_key,
    dataset_fingerprint,
    teacher_fingerprint,
)
from hf_ckptkd.training.topk_cache_writer import write_topk_cache

TINY_GPT2 = dict(n_layer=1, n_embd=16, n_head=2, n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


# --- the loss over a top-k teacher ------------------------------------------------------------------

def _topk_of(teacher_logits, temperature, k):
    logprobs = F.log_softmax(teacher_logits / temperature, dim=-1)
    top, ids = logprobs.topk(k, dim=-1)
    tail = logprobs.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    return TopKTeacher(torch.cat([top, tail], -1), ids)


@pytest.mark.parametrize("missing_mass", ["tail", "renormalize"])
@pytest.mark.parametrize("kind,beta", [("kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
def test_with_k_equal_to_the_vocabulary_the_topk_term_is_the_full_term(kind, beta, missing_mass):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 6, 9, generator=g, requires_grad=True)
    t = 3 * torch.randn(2, 6, 9, generator=g)
    labels = torch.randint(0, 9, (2, 6), generator=g)
    labels[1, :3] = -100
    full = token_kd(s, t, labels, temperature=2.0, kind=kind, beta=beta, chunk_size=4)
    sparse = topk_token_kd(s, _topk_of(t, 2.0, 9), labels, temperature=2.0, kind=kind, beta=beta,
                           missing_mass=missing_mass, chunk_size=3)
    assert sparse.tokens == full.tokens
    torch.testing.assert_close(sparse.total, full.total)
    torch.testing.assert_close(torch.autograd.grad(sparse.total, s)[0], torch.autograd.grad(full.total, s)[0])
    assert int(sparse.teacher_correct) == int(full.teacher_correct)


def _reference_topk_kl(s, teacher, labels, temperature, missing_mass):
    """T^2*KL(teacher || student) over the bins MISSING_MASS makes, through autograd, summed over the labelled
    tokens."""
    logits, targets = s[:, :-1].reshape(-1, s.shape[-1]), labels[:, 1:].reshape(-1)
    lp = teacher.logprobs[:, :-1].reshape(-1, teacher.logprobs.shape[-1]).float()
    ids = teacher.ids[:, :-1].reshape(-1, teacher.ids.shape[-1]).long()
    keep = targets != -100
    logits, targets, lp, ids = logits[keep], targets[keep], lp[keep], ids[keep]
    student_bins, teacher_bins = MISSING_MASS[missing_mass](F.log_softmax(logits / temperature, -1), lp, ids)
    kd = kd_per_row(student_bins, teacher_bins, 1.0, "kl") * temperature**2
    return kd.sum()


@pytest.mark.parametrize("missing_mass", ["tail", "renormalize"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_closed_form_forward_kl_over_the_top_k_is_its_autograd_definition(missing_mass, temperature):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 6, 30, generator=g, requires_grad=True)
    t = 2 * torch.randn(2, 6, 30, generator=g)
    labels = torch.randint(0, 30, (2, 6), generator=g)
    labels[0, :2] = -100
    teacher = _topk_of(t, temperature, 5)
    teacher = TopKTeacher(teacher.logprobs.half(), teacher.ids)  # as the cache stores it
    fast = topk_token_kd(s, teacher, labels, temperature=temperature, missing_mass=missing_mass, chunk_size=4)
    expected = _reference_topk_kl(s, teacher, labels, temperature, missing_mass)
    torch.testing.assert_close(fast.total, expected)
    torch.testing.assert_close(torch.autograd.grad(fast.total, s)[0], torch.autograd.grad(expected, s)[0])


def test_a_smaller_k_keeps_the_tail_as_one_bin_or_renormalises():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 2, 30, generator=g), 2 * torch.randn(1, 2, 30, generator=g)
    labels = torch.tensor([[5, 7]])  # one labelled position: position 0 predicts token 7
    full = token_kd(s, t, labels, temperature=1.0).total
    teacher = _topk_of(t, 1.0, 5)
    tail = topk_token_kd(s, teacher, labels, temperature=1.0, missing_mass="tail").total
    renormalised = topk_token_kd(s, teacher, labels, temperature=1.0, missing_mass="renormalize").total
    # Merging the tokens outside the top k into one bin can only lose divergence (the data-processing inequality).
    assert 0 < tail < full
    p_t = F.softmax(t[0, 0, teacher.ids[0, 0]], -1)
    log_q = F.log_softmax(s[0, 0, teacher.ids[0, 0]], -1)
    torch.testing.assert_close(renormalised, (p_t * (p_t.log() - log_q)).sum())
    with pytest.raises(ValueError, match="mse.*compares raw logits"):
        topk_token_kd(s, teacher, labels, temperature=1.0, kind="mse")


# --- the cache on disk ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from text_data import write_tiny_text_set

    folder = tmp_path_factory.mktemp("text")
    write_tiny_text_set(folder)
    return AutoTokenizer.from_pretrained(folder / "tokenizer")


def _lm(tokenizer, seed, **kwargs):
    torch.manual_seed(seed)
    return build_causal_lm("transformers:GPT2Config", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           model_kwargs={**TINY_GPT2, **kwargs})


def _examples(n=9):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(4, 16, (int(length),), generator=g).tolist()}
            for length in torch.randint(3, 13, (n,), generator=g)]


def _key(dataset, teacher, **changes):
    values = dict(dataset=dataset_fingerprint(dataset), teachers=[("t", teacher_fingerprint(teacher))],
                  mode="mean_logits", weights=[1.0], dtype="float32", temperature=2.0, top_k=4)
    return cache_key(**{**values, **changes})


def test_cached_rows_are_each_examples_own_and_placed_where_the_collator_puts_its_tokens(tmp_path, tokenizer):
    teacher = _lm(tokenizer, 1)
    teachers, data = TeacherEnsemble([teacher], temperature=2.0), _examples()
    cache = write_topk_cache(tmp_path / "c", _key(data, teacher), teachers, data, batch_size=4, shard_positions=20)
    assert cache.manifest["num_shards"] > 2 and cache.manifest["ids_dtype"] == "uint16"
    for i in (0, 4, 8):  # the teacher's output for the example alone, whatever it was batched with
        alone = _topk_of(teachers(input_ids=torch.tensor([data[i]["input_ids"]])), 2.0, 4)
        assert torch.equal(cache[i].ids.long(), alone.ids[0])
        torch.testing.assert_close(cache[i].logprobs.float(), alone.logprobs[0], atol=2e-2, rtol=1e-3)
    left = AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side="left")
    reader = WithTopKTeacher(data, cache)
    for collate in (DataCollatorForLanguageModeling(tokenizer, mlm=False), DataCollatorForLanguageModeling(left, mlm=False)):
        batch = TopKTeacherCollator(collate)([reader[i] for i in (3, 0, 5)])
        for row, i in enumerate((3, 0, 5)):
            real = batch["attention_mask"][row].bool()
            assert torch.equal(batch["input_ids"][row, real], torch.tensor(data[i]["input_ids"]))
            assert torch.equal(batch[TOPK_IDS][row, real], cache[i].ids)
            assert torch.equal(batch[TOPK_LOGPROBS][row, real], cache[i].logprobs)
    assert not batch["attention_mask"][:, 0].all()  # the left-padding collator did pad on the left
    def truncating(examples):  # a collator that cuts sequences: the cached positions no longer match
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)([{"input_ids": e["input_ids"][:5]} for e in examples])

    with pytest.raises(TeacherLogitsCacheError, match="collator changes an example's input_ids beyond padding"):
        TopKTeacherCollator(truncating)([reader[i] for i in range(len(data))])
    # float16 log-probabilities and uint16 ids: 2 * (k + 1) + 2 * k bytes per token, plus each shard's header
    assert 18 <= cache.bytes_per_token < 40


class _FailsAt(list):
    """A training set whose reads fail once at one example, as a run killed there would stop."""

    def __init__(self, items, at):
        super().__init__(items)
        self.at = at

    def __getitem__(self, i):
        if i == self.at:
            self.at = None
            raise RuntimeError("the run was stopped here")
        return super().__getitem__(i)


def test_an_interrupted_cache_is_refused_then_resumed_at_its_missing_shards(tmp_path, tokenizer):
    teacher = _lm(tokenizer, 1)
    teachers, data = TeacherEnsemble([teacher], temperature=2.0), _examples()
    key = _key(data, teacher)
    with pytest.raises(RuntimeError, match="stopped here"):
        write_topk_cache(tmp_path / "c", key, teachers, _FailsAt(data, 7), batch_size=2, shard_positions=20)
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("shard-*")}
    assert written and not json.loads((tmp_path / "c" / MANIFEST).read_text())["complete"]
    (tmp_path / "c" / ".tmp-shard-00009.safetensors").write_bytes(b"half a shard")  # what a killed writer leaves
    with pytest.raises(TeacherLogitsCacheError, match="is incomplete.*cache_teacher_logits=True"):
        TopKLogitsCache(tmp_path / "c", key)
    cache = write_topk_cache(tmp_path / "c", key, teachers, data, batch_size=2, shard_positions=20)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "c").glob("shard-*") if p.name in written} == written
    assert not list((tmp_path / "c").glob(".tmp-*"))
    fresh = write_topk_cache(tmp_path / "fresh", key, teachers, data, batch_size=3, shard_positions=20)
    for i in range(len(data)):
        assert torch.equal(cache[i].logprobs, fresh[i].logprobs) and torch.equal(cache[i].ids, fresh[i].ids)


def test_a_truncated_shard_is_never_read_as_complete(tmp_path, tokenizer):
    teacher = _lm(tokenizer, 1)
    teachers, data = TeacherEnsemble([teacher], temperature=2.0), _examples()
    key = _key(data, teacher)
    write_topk_cache(tmp_path / "c", key, teachers, data, batch_size=4, shard_positions=20)
    shard = tmp_path / "c" / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(TeacherLogitsCacheError, match=r"shard-00001.safetensors holds \d+ bytes but the manifest "
                                                      r"records \d+: it is truncated.*delete shard-00001"):
        TopKLogitsCache(tmp_path / "c", key)
    manifest = json.loads((tmp_path / "c" / MANIFEST).read_text())
    (tmp_path / "c" / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(TeacherLogitsCacheError, match="shard-00001.safetensors cannot be read"):
        write_topk_cache(tmp_path / "c", key, teachers, data, batch_size=4, shard_positions=20)


def test_a_cache_of_other_data_teachers_or_settings_is_refused_naming_what_differs(tmp_path, tokenizer):
    teacher, other = _lm(tokenizer, 1), _lm(tokenizer, 2)
    teachers, data = TeacherEnsemble([teacher], temperature=2.0), _examples()
    write_topk_cache(tmp_path / "c", _key(data, teacher), teachers, data, batch_size=4)
    stale = {"another training set": _key(data[:-1], teacher), r"teachers \['t'\] \(not the weights": _key(data, other),
             "temperature=2.0, not 1.0": _key(data, teacher, temperature=1.0), "top_k=4, not 8": _key(data, teacher, top_k=8)}
    for message, key in stale.items():
        with pytest.raises(TeacherLogitsCacheError, match=f"written for {message}.*stale.*new folder"):
            TopKLogitsCache(tmp_path / "c", key)
        with pytest.raises(TeacherLogitsCacheError, match=message):
            write_topk_cache(tmp_path / "c", key, teachers, data, batch_size=4)


def test_k_above_the_vocabulary_is_refused(tmp_path, tokenizer):
    teacher = _lm(tokenizer, 1)
    teachers, data = TeacherEnsemble([teacher], temperature=2.0), _examples()
    with pytest.raises(TeacherLogitsCacheError, match="teacher_logits_top_k=17 is larger than the teachers' vocabulary "
                                                      "of 16 tokens; use at most 16"):
        write_topk_cache(tmp_path / "a", _key(data, teacher, top_k=17), teachers, data, batch_size=4)
    assert not (tmp_path / "a").exists()


def test_the_cache_settings_are_checked():
    with pytest.raises(ConfigError, match="teacher_logits_dir='x' is where cache_teacher_logits writes"):
        CheckpointKDConfig(output_dir="unused", teacher_logits_dir="x")
    with pytest.raises(ConfigError, match="teacher_logits_top_k=0 must be a positive integer"):
        CheckpointKDConfig(output_dir="unused", teacher_logits_top_k=0)
    with pytest.raises(ConfigError, match="teacher_logits_missing_mass='drop' is not one of 'tail', 'renormalize'"):
        CheckpointKDConfig(output_dir="unused", teacher_logits_missing_mass="drop")


# --- students trained from a cache ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm_data(tmp_path_factory, tokenizer):
    """A teacher folder (weights and tokenizer) and the tiny corpus cut into 16-token blocks."""
    from datasets import Dataset

    from text_data import write_tiny_text_set

    folder = tmp_path_factory.mktemp("corpus")
    write_tiny_text_set(folder)
    lines = (folder / "data" / "train.csv").read_text().splitlines()[1:41]
    blocks = lm_blocks(Dataset.from_dict({"text": [line.rsplit(",", 1)[0] for line in lines]}), tokenizer, "text", 16)
    teacher = folder / "teacher"
    save_model(_lm(tokenizer, 5, n_layer=2), teacher)
    tokenizer.save_pretrained(teacher)
    return {"teacher": teacher, "blocks": blocks}


def _student(tmp_path, tokenizer, lm_data, name, seed=0, **config):
    values = dict(output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
                  report_to="none", save_strategy="no", max_grad_norm=0.0, seed=seed, logging_steps=3,
                  teachers=[str(lm_data["teacher"])], temperature=2.0, kd_loss="jsd")
    args = CheckpointKDConfig(**{**values, **config})
    return CheckpointKDTrainer(model=_lm(tokenizer, 10 + seed), args=args, train_dataset=lm_data["blocks"],
                               processing_class=tokenizer,
                               data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))


@pytest.mark.slow
def test_students_learn_from_one_cache_as_from_the_live_teacher(tmp_path, tokenizer, lm_data):
    cached = dict(cache_teacher_logits=True, teacher_logits_dir=str(tmp_path / "cache"), teacher_logits_top_k=16)
    first = _student(tmp_path, tokenizer, lm_data, "first", **cached)
    assert first.teachers is not None  # no cache yet: the teachers are loaded to write it
    first.train()
    assert first.teachers is None  # freed once the cache is written
    live = _student(tmp_path, tokenizer, lm_data, "live")
    live.train()
    for name, value in live.model.state_dict().items():  # k = vocabulary: the cached student is the live one
        torch.testing.assert_close(first.model.state_dict()[name], value, atol=2e-4, rtol=1e-3)
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    second = _student(tmp_path, tokenizer, lm_data, "second", seed=1, **cached)
    assert second.teachers is None  # a complete cache: the teachers are never loaded
    second.train()
    assert [h["loss_kd"] > 0 for h in second.state.log_history if "loss_kd" in h] == [True]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == written
    with pytest.raises(TeacherLogitsCacheError, match="written for temperature=2.0, not 1.0.*new folder"):
        _student(tmp_path, tokenizer, lm_data, "hotter", **{**cached, "temperature": 1.0})
    with pytest.raises(CachedLogitsError, match="kd_loss='mse' compares raw logits"):
        _student(tmp_path, tokenizer, lm_data, "mse", **{**cached, "kd_loss": "mse"})
    with pytest.raises(LabelSpaceError, match="cache .* was written by teachers scoring 16 tokens but the student "
                                              "scores 17"):
        CheckpointKDTrainer(model=build_causal_lm("transformers:GPT2Config", vocab_size=17, model_kwargs=TINY_GPT2),
                            args=second.args, train_dataset=lm_data["blocks"],
                            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))


def test_a_cached_teacher_composes_with_the_users_own_loss(tmp_path, tokenizer, lm_data):
    """alpha * L + (1 - alpha) * T^2 * D with L the user's loss (compute_loss_func) and D over the cached top-k: with
    k = vocabulary the step's loss and its terms are those of the live teacher."""
    from user_losses import smoothed_token_loss

    def trainer(name, **config):
        values = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=4, report_to="none",
                      teachers=[str(lm_data["teacher"])], temperature=2.0, alpha=0.3, max_grad_norm=0.0)
        return CheckpointKDTrainer(model=_lm(tokenizer, 10), args=CheckpointKDConfig(**{**values, **config}),
                                   train_dataset=lm_data["blocks"], processing_class=tokenizer,
                                   compute_loss_func=smoothed_token_loss,
                                   data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))

    cached = trainer("cached", cache_teacher_logits=True, teacher_logits_dir=str(tmp_path / "cache"),
                     teacher_logits_top_k=16)
    batch = next(iter(cached.get_train_dataloader()))
    assert TOPK_IDS in batch and cached.teachers is None
    live = trainer("live")
    plain = {k: v for k, v in batch.items() if k not in (TOPK_IDS, TOPK_LOGPROBS)}
    tokens = int((batch["labels"][:, 1:] != -100).sum())
    losses = {}
    for name, run, inputs in (("cached", cached, batch), ("live", live, plain)):
        run.model.train()
        losses[name] = run.compute_loss(run.model, dict(inputs), num_items_in_batch=torch.tensor(tokens))
    torch.testing.assert_close(losses["cached"], losses["live"], atol=2e-4, rtol=1e-3)
    # the composition itself: L is the user's smoothed loss, not the model's own cross-entropy
    with torch.no_grad():
        outputs = live.model(**{k: v for k, v in plain.items() if k != "labels"})
        teacher = live.teachers(**{k: v for k, v in plain.items() if k != "labels"})
    user = smoothed_token_loss(outputs, plain["labels"], tokens)
    kd = token_kd(outputs.logits, teacher, plain["labels"], temperature=2.0).total / tokens
    torch.testing.assert_close(losses["live"].detach(), 0.3 * user + 0.7 * kd, atol=2e-4, rtol=1e-3)
    assert set(cached._kd_sums) >= {"loss_task", "loss_kd"}
    torch.testing.assert_close(cached._kd_sums["loss_task"], live._kd_sums["loss_task"], atol=2e-4, rtol=1e-3)
