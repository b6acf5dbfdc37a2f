"""Text teachers are complete artefacts: snapshots carry the tokenizer, the Hub gets it, and
`hf-ckptkd select` scores raw text with it (--text_column, --tokenizer, --beta)."""

import json
import shutil

import pytest
from huggingface_hub import HfApi
from transformers import AutoTokenizer

from hf_ckptkd.cli.main import main
from hf_ckptkd.hub import push_teachers_to_hub
from hf_ckptkd.selection import SelectionReport
from hf_ckptkd.snapshots import SnapshotIndex

BERT = '{"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}'


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """The tiny sentiment set of the pipeline tests and a 2-epoch BERT teacher trained on it by the CLI."""
    from text_data import write_tiny_text_set

    root = tmp_path_factory.mktemp("text")
    write_tiny_text_set(root)
    assert main(["train-teacher", "--model", "transformers:BertConfig", "--model_kwargs", BERT, "--dataset",
                 str(root / "data"), "--text_column", "sentence", "--tokenizer", str(root / "tokenizer"),
                 "--per_device_train_batch_size", "32", "--report_to", "none", "--learning_rate", "0.001",
                 "--num_train_epochs", "2", "--snapshot_strategy", "epoch", "--eval_strategy", "epoch",
                 "--output_dir", str(root / "teacher")]) == 0
    return root


def test_a_text_snapshot_holds_its_tokenizer_and_what_it_was_trained_on(text_run):
    index = SnapshotIndex.load(text_run / "teacher")
    assert index.names == ["epoch-0001", "epoch-0002"]
    original = AutoTokenizer.from_pretrained(text_run / "tokenizer")
    for snapshot in index:
        saved = AutoTokenizer.from_pretrained(snapshot.path)  # the folder alone is enough
        assert saved.get_vocab() == original.get_vocab() and saved.pad_token == "[PAD]"
        assert saved("the movie was good")["input_ids"] == original("the movie was good")["input_ids"]
        record = json.loads((snapshot.path / "snapshot.json").read_text())["dataset"]
        assert record["name"] == str(text_run / "data") and record["local"] is True
        assert record["train"] == {"split": "train", "num_examples": 160}
        assert record["eval"] == {"split": "test", "num_examples": 40}
        assert (record["text_column"], record["label_column"], record["max_length"]) == ("sentence", "label", 128)
        assert "image_column" not in record
        snapshot.verify()  # the tokenizer files are beside the weights, not among them


def test_pushing_a_text_teacher_uploads_its_tokenizer(hub, text_run, fresh_hf_cache):
    repo = hub.new_repo_id("text-teacher")
    [pushed] = push_teachers_to_hub(text_run / "teacher" / "snapshots" / "epoch-0002", repo, token=hub.write_token)
    files = set(HfApi().list_repo_files(repo, revision=pushed.revision))
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors", "config.json"} <= files
    from_hub = AutoTokenizer.from_pretrained(repo, revision=pushed.revision)
    assert from_hub.get_vocab() == AutoTokenizer.from_pretrained(text_run / "tokenizer").get_vocab()
    from hf_ckptkd.data import load_tokenizer

    assert load_tokenizer(pushed.reference).get_vocab() == from_hub.get_vocab()  # owner/name@tag, as --tokenizer


def test_select_scores_raw_text_with_the_snapshots_tokenizer(text_run, tmp_path, capsys):
    snapshots, data = str(text_run / "teacher" / "snapshots"), str(text_run / "data")
    common = ["select", snapshots, "--dataset", data, "--text_column", "sentence", "--max_probe_samples", "64",
              "--objective", "outputs", "--disable_tqdm"]
    assert main([*common, "--output", str(tmp_path / "own")]) == 0  # the tokenizer saved in the snapshots
    out = capsys.readouterr().out
    own = SelectionReport.load(tmp_path / "own")
    assert f"chosen: {own.selected[0]}" in out and own.probe_size == 64 and own.beta == 1.0
    assert own.extra["dataset"]["text_column"] == "sentence" and own.extra["probe"]["label_column"] == "labels"

    assert main([*common, "--tokenizer", str(text_run / "tokenizer"), "--beta", "0.5", "--output",
                 str(tmp_path / "given")]) == 0
    given = SelectionReport.load(tmp_path / "given")
    assert given.beta == 0.5
    for a, b in zip(own.scores, given.scores):  # the same tokenizer, so the same information terms
        assert (a.name, round(a.i_yp, 6), round(a.i_xp, 6)) == (b.name, round(b.i_yp, 6), round(b.i_xp, 6))
        assert b.j == pytest.approx(b.i_yp + 0.5 * b.i_xp, abs=1e-6)


def test_select_bad_text_input_says_which_argument_fixes_it(text_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_CKPTKD_CACHE", str(tmp_path / "cache"))  # the built-in tokenizer is trained there
    snapshots, data = str(text_run / "teacher" / "snapshots"), str(text_run / "data")
    base = ["select", snapshots, "--dataset", data, "--max_probe_samples", "64", "--disable_tqdm", "--output",
            str(tmp_path / "x")]
    bare = tmp_path / "bare"  # snapshots written before snapshots kept their tokenizer
    shutil.copytree(snapshots, bare)
    for folder in bare.glob("epoch-*"):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    cases = [
        (base, ["--image_column 'image' is not a column", "its columns: sentence, label",
                "add --text_column sentence"]),
        ([*base, "--tokenizer", str(text_run / "tokenizer")], ["--tokenizer is for text teachers", "--text_column"]),
        ([*base, "--text_column", "review"], ["--text_column 'review' is not a column", "sentence, label"]),
        ([*base, "--text_column", "sentence", "--beta", "-1"], ["beta=-1.0", "finite number >= 0"]),
        ([*base, "--text_column", "sentence", "--beta", "nan"], ["beta=nan"]),
        ([*base, "--text_column", "sentence", "--tokenizer", str(tmp_path / "missing")], ["--tokenizer", "could not be "
                                                                                          "loaded"]),
        ([*base, "--text_column", "sentence", "--tokenizer", "fortunes"], ["--tokenizer fortunes has",
                                                                         "teachers' vocabulary has 16"]),
        (["select", str(bare), *base[2:], "--text_column", "sentence"], ["--text_column needs --tokenizer",
                                                                         "hold no tokenizer"]),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err  # one sentence
        for text in expected:
            assert text in err, (argv, err)
    assert not (tmp_path / "x").exists()


def test_a_plain_trainer_snapshot_keeps_its_processing_class_and_dataset_record(text_run, tmp_path):
    """SnapshotCallback on transformers' own Trainer: the tokenizer comes from `processing_class`."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_ckptkd import SnapshotCallback
    from hf_ckptkd.data import load_dataset_split, tokenize_text_dataset
    from hf_ckptkd.data.record import dataset_record
    from hf_ckptkd.models import build_model

    tokenizer = AutoTokenizer.from_pretrained(text_run / "tokenizer")
    train = tokenize_text_dataset(load_dataset_split(str(text_run / "data"), "train", 64), tokenizer, "sentence")
    model = build_model("transformers:BertConfig", 2, model_kwargs={**json.loads(BERT), "vocab_size": len(tokenizer),
                                                                    "pad_token_id": tokenizer.pad_token_id})
    record = dataset_record("my-org/reviews", train_split="train", train_examples=len(train))
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=32,
                             report_to="none", save_strategy="no", use_cpu=True)
    Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer, callbacks=[SnapshotCallback("epoch", dataset_record=record)]).train()
    [snapshot] = SnapshotIndex.load(tmp_path)
    assert AutoTokenizer.from_pretrained(snapshot.path).get_vocab() == tokenizer.get_vocab()
    assert snapshot.dataset == {"name": "my-org/reviews", "train": {"split": "train", "num_examples": 64}}
    # Without a processing_class or a record, the snapshot holds neither (and snapshot.json no `dataset`).
    Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "bare"), num_train_epochs=1,
                                                per_device_train_batch_size=32, report_to="none", save_strategy="no",
                                                use_cpu=True),
            train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer),
            callbacks=[SnapshotCallback("epoch")]).train()
    [bare] = SnapshotIndex.load(tmp_path / "bare")
    assert not (bare.path / "tokenizer.json").exists() and "dataset" not in json.loads((bare.path / "snapshot.json")
                                                                                          .read_text())
