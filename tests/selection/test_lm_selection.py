"""`select_teachers` on causal-LM snapshots: the token-position probe, the label terms over a
vocabulary of next tokens, the choice among snapshots of a tiny trained LM, and `hf-ckptkd select`.

Known answers: a teacher whose next-token distribution puts its mass on the true next token
keeps about all of H(Y) (Ĩ(Y;P) near 1), a uniform or random one about none of it; features that
identify the next token beat noise; a 1-layer GPT-2 trained on a sequence whose next token is a
function of the current one gains Ĩ(Y;P) from initialisation to the end of training, and the end is
chosen. Models are built from configs (nothing downloads) and tiny.
"""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_ckptkd.cli.main import main
from hf_ckptkd.data import DataError, lm_blocks
from hf_ckptkd.data.fortunes import FORTUNES_DIR
from hf_ckptkd.models import build_causal_lm
from hf_ckptkd.selection import (
    Candidate,
    ClassCountMismatchError,
    EmptyProbeError,
    ProbeTooSmallError,
    SelectionError,
    SingleClassProbeError,
    SparseClassError,
    select_from_candidates,
    select_teachers,
)
from hf_ckptkd.selection.label_information import random_halves, shannon_entropy_bits, token_features_label_bits
from hf_ckptkd.selection.lm_probe import draw_lm_probe, probe_positions
from hf_ckptkd.selection.selector import extract_candidates
from hf_ckptkd.snapshots import SnapshotIndex, write_snapshot

VOCAB = 32  # the synthetic corpus's tokens
TINY_GPT2 = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 32}


def next_of(token: int) -> int:
    """The synthetic corpus's rule: the next token is a function of the current one (a cycle over all 32)."""
    return (5 * token + 3) % VOCAB


def synthetic_blocks(rows: int, length: int = 24, seed: int = 0) -> Dataset:
    """Blocks of the rule's sequence, each starting at a random token."""
    rng = np.random.default_rng(seed)
    blocks = []
    for start in rng.integers(VOCAB, size=rows):
        seq = [int(start)]
        while len(seq) < length:
            seq.append(next_of(seq[-1]))
        blocks.append(seq)
    return Dataset.from_dict({"input_ids": blocks, "attention_mask": [[1] * length for _ in blocks]})


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """Snapshots of a 1-layer GPT-2 trained on the rule: at initialisation, after 3 steps and after 60."""
    folder = tmp_path_factory.mktemp("lm") / "snapshots"
    torch.manual_seed(0)
    model = build_causal_lm("transformers:GPT2Config", vocab_size=VOCAB, model_kwargs=TINY_GPT2)
    write_snapshot(model, folder, "step-0000", epoch=0, global_step=0)
    train = torch.tensor(synthetic_blocks(64, seed=1)["input_ids"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(1, 61):
        model(input_ids=train, labels=train).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step in (3, 60):
            write_snapshot(model, folder, f"step-{step:04d}", epoch=step / 60, global_step=step, final=step == 60)
    return SnapshotIndex.load(folder)


# ---------------------------------------------------------------------------------------------
# The probe


def test_positions_cover_every_prediction_in_dataset_order_and_are_seeded():
    rows, t = probe_positions(np.array([5, 1, 3, 0]), None, seed=0)
    # A row of L tokens has L - 1 positions with a next token; rows of 0 or 1 token have none.
    assert rows.tolist() == [0, 0, 0, 0, 2, 2] and t.tolist() == [0, 1, 2, 3, 0, 1]
    lengths = np.array([40, 2, 17, 64, 9])
    a, b = probe_positions(lengths, 30, seed=3), probe_positions(lengths, 30, seed=3)
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
    other = probe_positions(lengths, 30, seed=4)
    assert (a[0].tolist(), a[1].tolist()) != (other[0].tolist(), other[1].tolist())
    flat = [(r, p) for r, p in zip(*a)]
    assert flat == sorted(set(flat)) and len(flat) == 30  # distinct, in dataset order
    assert all(0 <= p <= lengths[r] - 2 for r, p in flat)


def test_each_probe_item_is_the_window_before_a_position_and_its_next_token():
    ids = [[10, 11, 12, 13, 14, 15], [20, 21, 22, 0, 0], [30, 31]]
    masks = [[1] * 6, [1, 1, 1, 0, 0], [1, 1]]  # the second row is right-padded: its padding is no token
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": masks})
    batches, bags, labels = draw_lm_probe(data, None, seed=0, context=3, batch_size=4, pad_token_id=0)
    windows = [b["input_ids"][i][b["attention_mask"][i].bool()].tolist() for b in batches for i in range(len(b["input_ids"]))]
    assert windows == [[10], [10, 11], [10, 11, 12], [11, 12, 13], [12, 13, 14], [20], [20, 21], [30]]
    assert labels.tolist() == [11, 12, 13, 14, 15, 21, 22, 31]
    # X: each window's bag of tokens, as many counts as tokens in the window.
    assert bags.sum(dim=1).tolist() == [len(w) for w in windows]
    assert [len(b["input_ids"]) for b in batches] == [4, 4]
    # Right-padded: the attention mask marks a prefix of each row.
    for b in batches:
        m = b["attention_mask"]
        assert torch.equal(m, torch.sort(m, dim=1, descending=True).values)


def test_the_same_seed_gives_the_same_probe_and_scores(lm_run):
    data = synthetic_blocks(40, seed=7)
    first = draw_lm_probe(data, 200, seed=5, context=8, batch_size=64, pad_token_id=0)
    again = draw_lm_probe(data, 200, seed=5, context=8, batch_size=64, pad_token_id=0)
    other = draw_lm_probe(data, 200, seed=6, context=8, batch_size=64, pad_token_id=0)
    assert torch.equal(first[1], again[1]) and torch.equal(first[2], again[2])
    assert not torch.equal(first[1], other[1])
    a = select_teachers(lm_run, data, max_probe_samples=200, probe_context=8, objective="outputs", progress=False)
    b = select_teachers(lm_run, data, max_probe_samples=200, probe_context=8, objective="outputs", progress=False)
    assert [dataclasses.asdict(s) for s in a.scores] == [dataclasses.asdict(s) for s in b.scores]


def test_one_probe_row_is_one_prediction_of_the_model(lm_run):
    """The logits the selector scores for a probe item are the model's next-token logits after its window."""
    data = synthetic_blocks(20, seed=8)
    pc = extract_candidates(lm_run, data, max_probe_samples=50, probe_context=6, batch_size=16, progress=False)
    assert pc.token_labels and pc.info["probe"]["labels"] == "next tokens"
    batches, _, labels = draw_lm_probe(data, 50, seed=0, context=6, batch_size=16, pad_token_id=0)
    assert torch.equal(pc.labels.cpu(), labels)
    model = lm_run["step-0060"].load_model().eval()
    end = next(c for c in pc.candidates if c.name == "step-0060")
    item = 0
    window = batches[0]["input_ids"][item][batches[0]["attention_mask"][item].bool()]
    with torch.inference_mode():
        direct = model(input_ids=window[None]).logits[0, -1]
    assert torch.allclose(end.logits[item], direct, atol=1e-4)
    # The probe accuracy in the report is next-token accuracy.
    accuracy = float((end.logits.argmax(dim=1) == pc.labels.cpu()).float().mean())
    report = select_from_candidates(pc.candidates, pc.inputs, pc.labels, token_labels=True, objective="outputs")
    assert next(s for s in report.scores if s.name == "step-0060").accuracy == pytest.approx(accuracy)


# ---------------------------------------------------------------------------------------------
# The label terms over a vocabulary (known answers)


def sparse_tokens(n: int, vocabulary: int, seed: int) -> torch.Tensor:
    """Next tokens with a Zipf-like law: a few frequent tokens and a long tail seen once or twice."""
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, vocabulary + 1, dtype=torch.float64)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def test_outputs_label_term_over_a_vocabulary_has_the_known_answers():
    n, vocabulary = 600, 2000
    y = sparse_tokens(n, vocabulary, seed=0)
    counts = torch.bincount(y)
    assert int((counts == 1).sum()) > 100  # the sparse case: many tokens seen once
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(n, 16, generator=g)

    def candidate(name, logits):
        return Candidate(name, features=torch.randn(n, 8, generator=g), logits=logits, step=1)

    oracle = torch.randn(n, vocabulary, generator=g)
    oracle[torch.arange(n), y] += 12.0  # the true next token carries the mass
    uniform = torch.zeros(n, vocabulary)
    uniform[:, 0] = 1e-3  # not exactly constant (a constant output is refused as carrying nothing)
    random = torch.randn(n, vocabulary, generator=g) * 3.0
    report = select_from_candidates([candidate("oracle", oracle), candidate("uniform", uniform),
                                     candidate("random", random)], inputs, y, token_labels=True,
                                    objective="outputs", temperature=1.0)
    scores = {s.name: s for s in report.scores}
    assert scores["oracle"].i_yp > 0.95
    assert scores["uniform"].i_yp == pytest.approx(0.0, abs=0.02)
    assert scores["random"].i_yp < 0.05
    assert report.selected == ["oracle"]
    assert report.label_entropy_bits == pytest.approx(shannon_entropy_bits(y))
    assert scores["oracle"].accuracy == 1.0


def test_classifier_guards_refuse_the_sparse_probe_that_next_tokens_accept():
    n, vocabulary = 300, 1000
    y = sparse_tokens(n, vocabulary, seed=2)
    g = torch.Generator().manual_seed(3)
    candidates = [Candidate("a", torch.randn(n, 8, generator=g), torch.randn(n, vocabulary, generator=g), step=1)]
    inputs = torch.randn(n, 4, generator=g)
    with pytest.raises(ProbeTooSmallError, match="max_probe_samples"):
        select_from_candidates(candidates, inputs, y)
    # With fewer classes than examples, the classifier guard against single-example classes speaks.
    y_small = sparse_tokens(n, 200, seed=6)
    assert int((torch.bincount(y_small) == 1).sum()) > 0
    small = [Candidate("a", candidates[0].features, candidates[0].logits[:, :200], step=1)]
    with pytest.raises(SparseClassError, match="single example"):
        select_from_candidates(small, inputs, y_small)
    assert select_from_candidates(small, inputs, y_small, token_labels=True).selected == ["a"]
    report = select_from_candidates(candidates, inputs, y, token_labels=True, objective="features")
    assert report.selected == ["a"] and report.estimator_options["token_labels"] is True


def perfect_pooled_bits(y: torch.Tensor, vocabulary: int, seed: int) -> float:
    """The features' bound for features that give the next token away: every token with a class of its own
    predicted with certainty, every rarer one known to be rarer and spread over the V - m others."""
    fold, total = random_halves(y.numel(), seed), 0.0
    for part in (fold, ~fold):
        own = torch.bincount(y[~part], minlength=vocabulary) >= 2
        total += math.log2(vocabulary - int(own.sum())) * int((~own[y[part]]).sum())
    return shannon_entropy_bits(y) - total / y.numel()


def test_features_that_identify_the_next_token_reach_the_pooled_bound_and_noise_does_not():
    n, vocabulary, d = 800, 3000, 16
    y = sparse_tokens(n, vocabulary, seed=4)
    g = torch.Generator().manual_seed(5)
    codebook = torch.randn(vocabulary, d, generator=g)
    informative = codebook[y] + 0.1 * torch.randn(n, d, generator=g)
    noise = torch.randn(n, d, generator=g)
    h = shannon_entropy_bits(y)
    best = perfect_pooled_bits(y, vocabulary, seed=0)
    good = token_features_label_bits(informative, y, vocabulary, seed=0)
    bad = token_features_label_bits(noise, y, vocabulary, seed=0)
    # The tail of tokens seen once costs every representation the same log2(V - m) bits per position,
    # so the bound is far below H(Y) even for a perfect representation, and the same for all snapshots.
    assert 0 < best < h
    assert best - 0.5 < good <= best + 1e-9
    assert bad < 0  # noise predicts no better than the frequencies, and pays for the tail too
    # Every half's predictor is a distribution over the vocabulary: the cross-entropy is at most log2 V.
    assert bad >= h - math.log2(vocabulary) - 1e-9
    assert token_features_label_bits(informative, y, vocabulary, seed=0) == good  # seeded halves


def test_a_probe_whose_next_tokens_are_all_one_token_is_a_clear_error():
    constant = Dataset.from_dict({"input_ids": [[7] * 10, [7] * 6]})
    with pytest.raises(SingleClassProbeError, match=r"same token \(id 7\).*H\(Y\) = 0"):
        draw_lm_probe(constant, 100, seed=0, context=4, batch_size=8, pad_token_id=0)
    y = torch.full((50,), 3)
    candidates = [Candidate("a", torch.randn(50, 4), torch.randn(50, 10), step=1)]
    with pytest.raises(SingleClassProbeError):
        select_from_candidates(candidates, torch.randn(50, 4), y, token_labels=True)


# ---------------------------------------------------------------------------------------------
# Choosing among the snapshots of a trained LM


def test_training_raises_the_label_information_and_the_end_is_chosen(lm_run):
    data = synthetic_blocks(60, seed=9)
    report = select_teachers(lm_run, data, objective="outputs", max_probe_samples=400, probe_context=12,
                             held_out_probe=synthetic_blocks(20, seed=10), progress=False)
    scores = {s.name: s for s in report.scores}
    assert scores["step-0000"].i_yp < scores["step-0003"].i_yp < scores["step-0060"].i_yp
    assert scores["step-0060"].i_yp > 0.9 and scores["step-0060"].accuracy > 0.95
    assert report.selected == ["step-0060"] and scores["step-0000"].init
    assert scores["step-0060"].metadata["held_out_accuracy"] > 0.95
    assert scores["step-0000"].metadata["held_out_accuracy"] < 0.5
    probe = report.extra["probe"]
    assert probe["labels"] == "next tokens" and probe["size"] == 400 and probe["probe_context"] == 12
    assert probe["vocabulary"] == VOCAB and probe["held_out_size"] > 0
    # The last hidden state says more about the next token after training too. (Even at initialisation it
    # holds the current token, from which the rule gives the next one, so the gain is small; the features
    # objective's input term may then prefer an earlier snapshot, as the information plane does.)
    features = {s.name: s for s in select_teachers(lm_run, data, objective="features", max_probe_samples=400,
                                                   probe_context=12, progress=False).scores}
    assert features["step-0000"].i_yf < features["step-0060"].i_yf


def test_report_files_for_lm_snapshots(lm_run, tmp_path):
    report = select_teachers(lm_run, synthetic_blocks(30, seed=11), k=2, objective="outputs",
                             max_probe_samples=200, probe_context=8, progress=False)
    report.save(tmp_path / "selection")
    saved = json.loads((tmp_path / "selection" / "selection.json").read_text())
    assert saved["selected"] == report.selected and len(saved["selected"]) == 2
    assert "step-0060" in (tmp_path / "selection" / "table.md").read_text()
    assert (tmp_path / "selection" / "information_plane.png").stat().st_size > 0


def test_bad_lm_probe_inputs_are_clear_errors(lm_run):
    data = synthetic_blocks(10, seed=12)
    with pytest.raises(DataError, match=r"input_ids.*lm_blocks.*--text_column"):
        select_teachers(lm_run, Dataset.from_dict({"text": ["a b c"]}), progress=False)
    with pytest.raises(SelectionError, match=r"probe_context=64 is longer than the snapshots' 32 positions.*<= 32"):
        select_teachers(lm_run, data, probe_context=64, progress=False)
    with pytest.raises(SelectionError, match=r"probe_context must be a positive number of tokens, got 0"):
        draw_lm_probe(data, 10, seed=0, context=0, batch_size=8, pad_token_id=0)
    with pytest.raises(EmptyProbeError, match="none of the dataset's 2 rows has two tokens"):
        select_teachers(lm_run, Dataset.from_dict({"input_ids": [[1], [2]]}), probe_context=8, progress=False)
    with pytest.raises(EmptyProbeError, match="max_probe_samples=0"):
        select_teachers(lm_run, data, max_probe_samples=0, probe_context=8, progress=False)
    outside = Dataset.from_dict({"input_ids": [[1, 2, VOCAB + 5, 3, 4]]})
    with pytest.raises(ClassCountMismatchError, match=rf"token id {VOCAB + 5}.*vocabulary has {VOCAB} tokens.*tokenizer"):
        select_teachers(lm_run, outside, probe_context=8, progress=False)


# ---------------------------------------------------------------------------------------------
# Text into blocks, and the command line


class CharTokenizer:
    """A stand-in with the tokenizer call the helper uses: one id per character, optionally an EOS."""

    def __init__(self, eos_token_id=None):
        self.eos_token_id = eos_token_id

    def __call__(self, texts, verbose=True):
        return {"input_ids": [[ord(c) - 96 for c in t] for t in texts]}


def test_lm_blocks_concatenates_texts_and_cuts_whole_blocks():
    data = Dataset.from_dict({"text": ["abc", "de", "fghij"]})
    blocks = lm_blocks(data, CharTokenizer(), "text", 4)
    assert blocks["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 10 tokens: two whole blocks, the rest dropped
    assert blocks["attention_mask"] == [[1] * 4, [1] * 4]
    with_eos = lm_blocks(data, CharTokenizer(eos_token_id=0), "text", 4)
    assert with_eos["input_ids"] == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 10]]
    with pytest.raises(DataError, match=r"block_size must be an integer >= 2.*--max_length"):
        lm_blocks(data, CharTokenizer(), "text", 1)
    with pytest.raises(DataError, match=r"no text column 'sentence'.*\['text'\].*--text_column"):
        lm_blocks(data, CharTokenizer(), "sentence", 4)
    with pytest.raises(DataError, match=r"10 tokens, fewer than one block of block_size=64.*--max_length"):
        lm_blocks(data, CharTokenizer(), "text", 64)


@pytest.mark.slow
@pytest.mark.skipif(not (FORTUNES_DIR / "art").is_file(),
                    reason=f"Debian's fortunes package is not installed ({FORTUNES_DIR}); `make` installs it")
def test_cli_select_on_lm_snapshots_of_fortunes_text(tmp_path, capsys):
    from hf_ckptkd.data.fortunes import fortunes_tokenizer

    tokenizer = fortunes_tokenizer()
    for step in (0, 10, 20):
        torch.manual_seed(step)
        model = build_causal_lm("transformers:GPT2Config", vocab_size=len(tokenizer),
                                pad_token_id=tokenizer.pad_token_id, model_kwargs=TINY_GPT2)
        write_snapshot(model, tmp_path / "run" / "snapshots", f"step-{step:04d}", epoch=step / 20, global_step=step,
                       processing_class=tokenizer)
    out = tmp_path / "selection"
    args = ["select", str(tmp_path / "run" / "snapshots"), "--dataset", "fortunes_topics", "--split", "test",
            "--text_column", "text", "--max_length", "32", "--probe_context", "16", "--max_probe_samples", "300",
            "--objective", "outputs", "--held_out_split", "test", "--disable_tqdm", "--output", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "selection.json").read_text())
    assert saved["selected"][0] in ("step-0010", "step-0020") and f"chosen: {saved['selected'][0]}" in printed
    assert saved["extra"]["probe"]["labels"] == "next tokens" and saved["extra"]["probe"]["size"] == 300
    assert saved["extra"]["probe"]["vocabulary"] == len(tokenizer)
    assert (out / "table.md").is_file()
    # A window longer than the model's positions is refused with the flag to change.
    assert main([*args[:-2], "--output", str(tmp_path / "x"), "--probe_context", "33"]) == 2
    assert "probe_context=33 is longer than the snapshots' 32 positions" in capsys.readouterr().err
