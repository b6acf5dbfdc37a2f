"""`select_teachers` on causal-LM snapshots: the probe of text segments (every position of a segment
read from one forward), the label terms over a vocabulary of next tokens, the choice among snapshots
of a tiny trained LM, keep-top scoring of LM snapshots, and `hf-ckptkd select`.

Known answers: one forward over a segment gives at every position the logits the model gives to
that position's context alone; a teacher whose next-token distribution puts its mass on the true
next token keeps about all of the unigram baseline's bits (Ĩ(Y;P) near 1), a uniform or random
one none of them; a 1-layer GPT-2 trained on a sequence whose next token is a function of the
current one gains Ĩ(Y;P) from initialisation to the end of training, and the end is chosen. The
label terms' controlled cases are in test_token_information.py. Models are built from configs
(nothing downloads) and tiny.
"""

import dataclasses
import json

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer
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
from hf_ckptkd.selection.label_information import shannon_entropy_bits
from hf_ckptkd.selection.lm_probe import draw_lm_probe, next_token_counts, probe_segments
from hf_ckptkd.selection.online import SnapshotScorer, keep_top_settings
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


def _positions(segments):
    return [(r, s + i) for r, s, k in segments for i in range(k)]


def test_segments_cover_every_prediction_once_in_dataset_order_and_are_seeded():
    # Rows of 5, 1, 3 and 0 tokens cut every 3 tokens: a row of L tokens has L - 1 positions with a next token.
    assert probe_segments(np.array([5, 1, 3, 0]), None, seed=0, context=3) == [(0, 0, 3), (0, 3, 1), (2, 0, 2)]
    lengths = np.array([40, 2, 17, 64, 9])
    a, b = probe_segments(lengths, 30, seed=3, context=8), probe_segments(lengths, 30, seed=3, context=8)
    assert a == b and a != probe_segments(lengths, 30, seed=4, context=8)
    positions = _positions(a)
    assert len(positions) == 30 and positions == sorted(set(positions))  # distinct, in dataset order
    assert all(0 <= t <= lengths[r] - 2 for r, t in positions)
    # Whole segments (they start on the cuts, and all but the one cut short hold every position they have).
    whole = {(r, s): k for r, s, k in probe_segments(lengths, None, seed=0, context=8)}
    assert all(s % 8 == 0 for _, s, _ in a) and sum(k < whole[(r, s)] for r, s, k in a) <= 1
    assert len(_positions(probe_segments(lengths, None, seed=0, context=8))) == int((lengths - 1).sum())


def test_each_probe_position_reads_its_segment_up_to_it_and_predicts_the_next_token():
    ids = [[10, 11, 12, 13, 14, 15], [20, 21, 22, 0, 0], [30, 31]]
    masks = [[1] * 6, [1, 1, 1, 0, 0], [1, 1]]  # the second row is right-padded: its padding is no token
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": masks})
    batches, bags, labels = draw_lm_probe(data, None, seed=0, context=3, batch_size=4, pad_token_id=0)
    segments = [b["input_ids"][i][b["attention_mask"][i].bool()].tolist() for b in batches
                for i in range(len(b["input_ids"]))]
    assert segments == [[10, 11, 12], [13, 14], [20, 21], [30]]  # one forward each, every token a position
    assert labels.tolist() == [11, 12, 13, 14, 15, 21, 22, 31]
    # X: each position's context (its segment up to it) as a bag: as many counts as tokens in that context.
    assert bags.sum(dim=1).tolist() == [1, 2, 3, 1, 2, 1, 2, 1]
    assert bags[2].nonzero().flatten().tolist() == [10, 11, 12]
    # Batches of at most 4 positions (a segment is never split), right-padded.
    assert [int(b["attention_mask"].sum()) for b in batches] == [3, 4, 1]
    for b in batches:
        m = b["attention_mask"]
        assert torch.equal(m, torch.sort(m, dim=1, descending=True).values)
    # The baseline's counts: every real token of the text but each row's first.
    assert next_token_counts(data, 40).tolist() == torch.bincount(torch.tensor([11, 12, 13, 14, 15, 21, 22, 31]),
                                                                  minlength=40).tolist()


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


def test_one_forward_per_segment_gives_each_position_the_prediction_of_its_context_alone(lm_run):
    """The logits the selector scores for a probe position are the model's next-token logits after its context
    (the segment up to it), as a forward over that context alone gives them: the causal mask at work."""
    data = synthetic_blocks(20, seed=8)
    pc = extract_candidates(lm_run, data, max_probe_samples=50, probe_context=6, batch_size=16, progress=False)
    assert pc.token_counts is not None and pc.info["probe"]["labels"] == "next tokens"
    assert pc.info["probe"]["segments"] == len(probe_segments(np.full(20, 24), 50, seed=0, context=6))
    batches, _, labels = draw_lm_probe(data, 50, seed=0, context=6, batch_size=16, pad_token_id=0)
    assert torch.equal(pc.labels.cpu(), labels)
    model = lm_run["step-0060"].load_model().eval()
    end = next(c for c in pc.candidates if c.name == "step-0060")
    contexts = [row[mask.bool()][:t + 1] for b in batches for row, mask in zip(b["input_ids"], b["attention_mask"])
                for t in range(int(mask.sum()))]
    assert len(contexts) == 50
    with torch.inference_mode():
        for item in (0, 3, 5, 6, 49):
            direct = model(input_ids=contexts[item][None]).logits[0, -1]
            assert torch.allclose(end.logits[item], direct, atol=1e-4)
    # The probe accuracy in the report is next-token accuracy.
    accuracy = float((end.logits.argmax(dim=1) == pc.labels.cpu()).float().mean())
    report = select_from_candidates(pc.candidates, pc.inputs, pc.labels, token_counts=pc.token_counts,
                                    objective="outputs")
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
                                     candidate("random", random)], inputs, y,
                                    token_counts=torch.bincount(y, minlength=vocabulary),
                                    objective="outputs", temperature=1.0)
    scores = {s.name: s for s in report.scores}
    assert scores["oracle"].i_yp > 0.95
    assert scores["uniform"].i_yp == pytest.approx(0.0, abs=0.02)
    assert scores["random"].i_yp < 0.05
    assert report.selected == ["oracle"]
    assert report.label_entropy_bits > shannon_entropy_bits(y)  # the unigram's held-out bits, not the plug-in H(Y)
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
    assert select_from_candidates(small, inputs, y_small, token_counts=torch.bincount(y_small)).selected == ["a"]
    report = select_from_candidates(candidates, inputs, y, token_counts=torch.bincount(y, minlength=vocabulary),
                                    objective="features")
    assert report.selected == ["a"] and report.estimator_options["next_tokens"]["top_tokens"] == 32


def test_a_probe_whose_next_tokens_are_all_one_token_is_a_clear_error():
    constant = Dataset.from_dict({"input_ids": [[7] * 10, [7] * 6]})
    with pytest.raises(SingleClassProbeError, match=r"same token \(id 7\).*H\(Y\) = 0"):
        draw_lm_probe(constant, 100, seed=0, context=4, batch_size=8, pad_token_id=0)
    y = torch.full((50,), 3)
    candidates = [Candidate("a", torch.randn(50, 4), torch.randn(50, 10), step=1)]
    with pytest.raises(SingleClassProbeError):
        select_from_candidates(candidates, torch.randn(50, 4), y, token_counts=torch.bincount(y, minlength=10))


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
# Keep-top: LM snapshots scored as they are written


def _collate_blocks(rows):
    ids = torch.tensor([r["input_ids"] for r in rows])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_keep_top_scores_lm_snapshots_with_the_selectors_probe_and_terms(tmp_path):
    out = tmp_path / "run"
    config = CheckpointKDConfig(output_dir=str(out), num_train_epochs=4, per_device_train_batch_size=8,
                                learning_rate=1e-2, save_strategy="no", logging_steps=100, snapshot_strategy="epoch",
                                snapshot_every=1, snapshot_keep_top=1, snapshot_probe_samples=200, report_to="none",
                                remove_unused_columns=False, disable_tqdm=True, seed=0, use_cpu=True)
    torch.manual_seed(0)
    model = build_causal_lm("transformers:GPT2Config", vocab_size=VOCAB, model_kwargs=TINY_GPT2)
    probe = synthetic_blocks(16, seed=14)
    CheckpointKDTrainer(model=model, args=config, train_dataset=synthetic_blocks(32, seed=13),
                        data_collator=_collate_blocks, probe_dataset=probe).train()
    entries = json.loads((out / "snapshots" / "index.json").read_text())["snapshots"]
    assert [e["name"] for e in entries] == [f"epoch-{i:04d}" for i in range(1, 5)]
    assert all(e["score"]["objective"] == "outputs" and e["score"]["probe_size"] == 200 for e in entries)
    index = SnapshotIndex.load(out / "snapshots")
    assert len(index.names) == 2 and len(index.removed) == 2 and index.final.name == "epoch-0004"
    # The recorded score is the selector's J on the same probe, with the next-token terms.
    report = select_teachers(index, probe, objective="outputs", max_probe_samples=200, progress=False)
    assert {s.name: s.j for s in report.scores} == pytest.approx({s.name: s.score["value"] for s in index}, rel=1e-6)
    assert {s.name: s.i_yp for s in report.scores} == pytest.approx({s.name: s.score["i_y"] for s in index}, rel=1e-6)
    assert report.estimator_options["next_tokens"]["top_tokens"] == VOCAB
    kept = next(s for s in index if not s.final)
    assert kept.score["value"] >= max(e["score"]["value"] for e in index.removed)


def test_keep_top_refuses_lm_probe_text_of_one_token_before_training():
    with pytest.raises(SelectionError, match=r"followed by 1 distinct token.*at least two"):
        SnapshotScorer(Dataset.from_dict({"input_ids": [[7] * 10, [7] * 6]}), keep_top_settings())
    # Text with a label column of token sequences (as transformers' run_clm copies input_ids) is next-token text too.
    ids = [[1, 2, 3, 4], [4, 3, 2, 1]]
    assert SnapshotScorer(Dataset.from_dict({"input_ids": ids, "labels": ids}), keep_top_settings()) is not None


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
