"""Model cards of pushed teachers: what they state, and that their code runs as written.

Each kind of teacher hf-ckptkd can push (a timm built-in, a timm network hf-ckptkd registers, a
transformers vision model, a text classifier with its tokenizer) is pushed to the local Hub server;
the card's fenced code blocks are taken from the card text and each is run in a fresh process
pointed at that server.
"""

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download

from hf_ckptkd.data import FASHION_MNIST_LABELS as LABELS
from hf_ckptkd.data.record import dataset_record
from hf_ckptkd.hub import push_teachers_to_hub
from hf_ckptkd.hub.card import build_model_card, other_selectors
from hf_ckptkd.models import build_model
from hf_ckptkd.selection.objectives import OBJECTIVES
from hf_ckptkd.selection.report import SelectionReport, SnapshotScore
from hf_ckptkd.snapshots import Snapshot, write_snapshot

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 7}
TINY_BERT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
# What Trainer records beside the task metrics; none of it belongs in a card's metrics.
TIMINGS = {"eval_runtime": 2.5, "eval_samples_per_second": 400.0, "eval_steps_per_second": 1.6, "epoch": 1.0}
FMNIST = dataset_record("fashion_mnist", train_split="train", train_examples=4000, eval_split="train",
                        eval_examples=2000, eval_held_out=True, test_split="test", image_column="image",
                        label_column="label")


def _blocks(card_text: str) -> list[tuple[str, str]]:
    """The card's fenced code blocks that are meant to run: (language, code)."""
    return [(lang, code) for lang, code in re.findall(r"```(python|bash)\n(.*?)```", card_text, flags=re.S)]


def _run_block(lang: str, code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    # The venv's scripts (hf-ckptkd) first on PATH, as after `pip install`; one thread on a shared machine.
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _timm_teacher(folder: Path, spec: str, name: str = "epoch-0001", epoch: int = 1, seed: int = 0) -> Snapshot:
    torch.manual_seed(seed)
    model = build_model(spec, 10, label_names=LABELS, in_chans=1, image_size=28, mean=(0.286,), std=(0.353,))
    return write_snapshot(model, folder, name, epoch=epoch, global_step=10 * epoch, train_loss=1.0, final=epoch == 2,
                          eval_metrics={"eval_accuracy": 0.5 + epoch / 100, "eval_loss": 1.4,
                                        "eval_top5_accuracy": 0.9, **TIMINGS}, dataset=FMNIST)


def _text_teacher(folder: Path) -> Snapshot:
    from hf_ckptkd.data import load_dataset_split, load_tokenizer

    tokenizer = load_tokenizer("fortunes")
    names = load_dataset_split("fortunes_topics", "train", limit=8).features["label"].names
    torch.manual_seed(0)
    model = build_model("transformers:BertConfig", len(names), label_names=names, model_kwargs={
        **TINY_BERT, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id})
    record = dataset_record("fortunes_topics", train_split="train", train_examples=1200, eval_split="test",
                            eval_examples=300, test_split="test", label_column="label", text_column="text",
                            tokenizer="fortunes", max_length=128)
    return write_snapshot(model, folder, "epoch-0001", epoch=1, global_step=10, processing_class=tokenizer,
                          eval_metrics={"eval_accuracy": 0.2, "eval_loss": 2.5, **TIMINGS}, dataset=record)


def _lm_teacher(folder: Path) -> Snapshot:
    from hf_ckptkd.data import load_tokenizer
    from hf_ckptkd.models import build_causal_lm

    tokenizer = load_tokenizer("fortunes")
    torch.manual_seed(0)
    model = build_causal_lm("transformers:GPT2Config", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            model_kwargs={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32})
    record = dataset_record("fortunes_topics", train_split="train", train_examples=1200, eval_split="test",
                            eval_examples=300, test_split="test", text_column="text", tokenizer="fortunes",
                            max_length=32)
    return write_snapshot(model, folder, "epoch-0001", epoch=1, global_step=10, processing_class=tokenizer,
                          eval_metrics={"eval_accuracy": 0.1, "eval_loss": 6.5, **TIMINGS}, dataset=record)


def _score(name, epoch, j, chosen=False, rank=None, accuracy=0.5, final=False, eval_accuracy=None) -> SnapshotScore:
    metadata = {"final": final, **({"eval_accuracy": eval_accuracy} if eval_accuracy is not None else {})}
    return SnapshotScore(name=name, epoch=epoch, step=epoch * 10, accuracy=accuracy, i_xf=0.1 * epoch, i_yf=0.2,
                         i_xp=0.3 - 0.1 * epoch, i_yp=0.4 + 0.01 * epoch, j=j, chosen=chosen, rank=rank,
                         metadata=metadata)


# --- what a card states ----------------------------------------------------------------------

def test_card_states_facts_as_facts_and_the_papers_claim_as_the_papers(tmp_path):
    final = _timm_teacher(tmp_path / "snapshots", "timm:test_resnet", "epoch-0002", epoch=2)
    middle = _timm_teacher(tmp_path / "snapshots", "timm:test_resnet", "epoch-0001", epoch=1)
    # `outputs` picked the middle snapshot; `accuracy` (validation 0.52 vs 0.51) and `final` pick the last one.
    scores = [_score("epoch-0000", 0, 0.1, accuracy=0.1), _score("epoch-0001", 1, 0.9, True, 1, eval_accuracy=0.51),
              _score("epoch-0002", 2, 0.8, final=True, eval_accuracy=0.52)]
    scores[0] = replace(scores[0], init=True, step=0)
    report = SelectionReport(selected=["epoch-0001"], scores=scores, objective="outputs", k=1, temperature=4.0,
                             beta=1.0, kappa=0.25, estimator="renyi2", probe_size=2000, seed=0)
    card = build_model_card(middle, "alice/fmnist-teacher", "epoch-0001", report=report, score=scores[1])
    text, meta = card.text, card.data.to_dict()

    # The paper's claim is the paper's; the project's own measurements are pointed to, not restated.
    assert "often the better teacher" not in text and "carries more information" not in text
    assert "Wang et al., NeurIPS 2022 (*Efficient Knowledge Distillation from Model Checkpoints*) report that" in text
    assert "That is the paper's finding, not a measurement of this teacher" in text
    assert 'the hf-ckptkd documentation, pages "Selection evidence" (docs/evidence.md) and "Studies" (docs/studies.md)' in text
    assert "http" not in text.split("## The method")[1].split("## Snapshot")[0]  # the pointer is link-free
    # This teacher's facts: which snapshot, not the final one, what chose it, and what the others pick.
    assert "taken at epoch 1 (global step 10)" in text and "(not its final model)" in text
    assert "Chosen by hf-ckptkd's `outputs` selector" in text and "T = 4, β = 1" in text
    assert "probe set of 2000 examples" in text and "among the 2 snapshots of the run" in text
    others = other_selectors(report)
    assert [name for name, _, _ in others] == [name for name in OBJECTIVES if name != "outputs"]
    assert others[:3] == [
        ("features", "J = Ĩ(Y;F) + β·Î(X;F) on the penultimate features", ["epoch-0002"]),
        ("final", "the last snapshot(s) in training order (a trivial baseline; J = position in training order)",
         ["epoch-0002"]),
        ("accuracy", "the best validation accuracy (a trivial baseline; J = that accuracy)", ["epoch-0002"])]
    assert "| `final` | the last snapshot(s) in training order" in text and "| `epoch-0002` |" in text
    # The data it was trained and evaluated on, by its real name, split and size.
    assert ("Trained on 4,000 examples of the train split of Fashion-MNIST (Debian dataset-fashion-mnist); evaluated "
            "on 2,000 examples held out from the train split (not trained on).") in text
    assert meta["datasets"] == ["zalando-datasets/fashion_mnist"]
    [result] = meta["model-index"][0]["results"]
    assert result["dataset"] == {"name": "Fashion-MNIST (Debian dataset-fashion-mnist)",
                                 "type": "zalando-datasets/fashion_mnist", "split": "train (held-out 2000 examples)"}
    # Task metrics only, in model-index, the table and the metadata block.
    assert {(m["name"], m["value"]) for m in result["metrics"]} == {("accuracy", 0.51), ("loss", 1.4),
                                                                    ("top-5 accuracy", 0.9)}
    assert set(meta["checkpoint_kd"]["eval_metrics"]) == {"eval_accuracy", "eval_loss", "eval_top5_accuracy"}
    for timing in ("runtime", "per_second", "samples per second", "steps per second"):
        assert timing not in text, timing
    assert "| accuracy 0.5100, loss 1.4000, top-5 accuracy 0.9000 |" in text
    assert meta["checkpoint_kd"]["selection"]["j"] == 0.9  # the scores stay machine-readable, outside model-index

    final_card = build_model_card(final, "alice/fmnist-teacher", "epoch-0002")
    assert "the run's final model" in final_card.text
    assert "published without a selection report: nothing here says it teaches better" in final_card.text


@pytest.mark.parametrize("name, shown, datasets", [
    ("fashion_mnist_rot40", "Fashion-MNIST garment × rotation, 40 classes", ["zalando-datasets/fashion_mnist"]),
    ("fortunes_topics", "fortunes topics, 16 classes (hf-ckptkd's `fortunes_topics`, made from Debian's fortunes "
                        "package)", None),
    ("nyu-mll/glue", "[`nyu-mll/glue` (config `sst2`)](https://huggingface.co/datasets/nyu-mll/glue)", ["nyu-mll/glue"]),
])
def test_each_dataset_is_named_by_what_it_is(tmp_path, name, shown, datasets):
    record = dataset_record(name, config="sst2" if "/" in name else None, train_split="train", train_examples=100)
    snapshot = write_snapshot(build_model("timm:test_resnet", 10, in_chans=1, image_size=28), tmp_path, "epoch-0001",
                              epoch=1, global_step=1, eval_metrics={"eval_accuracy": 0.5}, dataset=record)
    card = build_model_card(snapshot, "alice/t", "epoch-0001")
    assert f"Trained on 100 examples of the train split of {shown}" in card.text
    assert card.data.to_dict().get("datasets") == datasets


def test_a_run_that_recorded_no_data_gets_a_card_that_invents_none(tmp_path):
    """A plain Trainer script without dataset_record: no dataset in the text, the metadata or model-index."""
    snapshot = write_snapshot(build_model("timm:test_resnet", 10, in_chans=1, image_size=28), tmp_path, "epoch-0001",
                              epoch=1, global_step=1, eval_metrics={"eval_accuracy": 0.5, **TIMINGS})
    card = build_model_card(snapshot, "alice/t", "epoch-0001")
    meta = card.data.to_dict()
    assert "datasets" not in meta and "model-index" not in meta and "dataset" not in meta["checkpoint_kd"]
    assert "Trained on" not in card.text and "evaluation set" not in card.text
    assert "its dataset was not recorded" in card.text
    assert "```bash" not in card.text  # no command that would need the unknown data
    assert [lang for lang, _ in _blocks(card.text)] == ["python"]  # loading it still works as written
    # A selection made by `hf-ckptkd select` names the dataset (not its split or size): the card says that much.
    report = SelectionReport(selected=["epoch-0001"], scores=[_score("epoch-0001", 1, 0.5, True, 1)],
                             objective="accuracy", k=1, temperature=4.0, beta=1.0, kappa=0.25, estimator="renyi2",
                             probe_size=64, seed=0, extra={"dataset": {"name": "fashion_mnist", "split": "train"}})
    named = build_model_card(snapshot, "alice/t", "epoch-0001", report=report, score=report.scores[0])
    assert "Trained on Fashion-MNIST (Debian dataset-fashion-mnist)." in named.text
    assert named.data.to_dict()["datasets"] == ["zalando-datasets/fashion_mnist"]
    assert "split" not in named.data.to_dict()["model-index"][0]["results"][0]["dataset"]
    local = dataset_record(str(tmp_path), train_split="train", train_examples=3)  # a folder on the training machine
    snapshot = write_snapshot(build_model("timm:test_resnet", 10, in_chans=1, image_size=28), tmp_path / "s",
                              "epoch-0001", epoch=1, global_step=1, dataset=local)
    text = build_model_card(snapshot, "alice/t", "epoch-0001").text
    assert "a local dataset folder" in text and "it was trained on a local dataset" in text and "```bash" not in text


# --- the card's code runs, for every kind of teacher -----------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("kind", ["timm built-in", "timm registered by hf-ckptkd", "transformers vision", "text",
                                  "causal LM"])
def test_every_code_block_of_the_card_runs_as_written(hub, tmp_path, kind, fresh_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_CKPTKD_CACHE", str(tmp_path / "cache"))  # the built-in tokenizer is trained there
    folder = tmp_path / "run" / "snapshots"
    repo = hub.new_repo_id("card")
    if kind == "timm built-in":
        source = _timm_teacher(folder, "timm:test_resnet").path
    elif kind == "timm registered by hf-ckptkd":  # an ensemble of two, one repo with a tag per member
        members = [_timm_teacher(folder, "timm:cifar_resnet8", f"epoch-000{e}", epoch=e, seed=e) for e in (1, 2)]
        scores = [_score("epoch-0001", 1, 0.9, True, 2), _score("epoch-0002", 2, 1.0, True, 1, final=True)]
        report = SelectionReport(selected=["epoch-0002", "epoch-0001"], scores=scores, objective="outputs", k=2,
                                 temperature=4.0, beta=1.0, kappa=0.25, estimator="renyi2", probe_size=64, seed=0,
                                 snapshot_dir=str(folder))
        source = report.save(tmp_path / "run" / "selection")
        assert [m.name for m in members] == ["epoch-0001", "epoch-0002"]
    elif kind == "transformers vision":
        torch.manual_seed(0)
        vit = build_model("transformers:ViTConfig", 10, label_names=LABELS, in_chans=1, image_size=28,
                          model_kwargs=TINY_VIT)
        source = write_snapshot(vit, folder, "epoch-0001", epoch=1, global_step=10, dataset=FMNIST,
                                eval_metrics={"eval_accuracy": 0.5, **TIMINGS}).path
    elif kind == "text":
        source = _text_teacher(folder).path
    else:
        source = _lm_teacher(folder).path
    pushed = push_teachers_to_hub(source, repo, as_revisions=True, token=hub.write_token)
    card = ModelCard.load(hf_hub_download(repo, "README.md", revision=pushed[0].revision))
    blocks = _blocks(card.text)
    assert [lang for lang, _ in blocks] == ["python", "bash", "python"], card.text  # load; distil twice

    load, command, script = (code for _, code in blocks)
    assert ("import hf_ckptkd" in load) == (kind == "timm registered by hf-ckptkd")
    if kind in ("text", "causal LM"):  # the teacher's own tokenizer, text in, no image pipeline anywhere
        assert "AutoTokenizer.from_pretrained" in load and "AutoTokenizer.from_pretrained" in script
        assert f"--tokenizer {repo}@{pushed[0].revision}" in command and "--text_column text" in command
        assert "image" not in card.text.split("## Load it")[1]
        assert "tokenizer.json" in {Path(f).name for f in _repo_files(repo, pushed[0].revision)}
    for reference in (p.reference for p in pushed):
        assert reference in command and reference in script

    outputs = []
    for lang, code in blocks:
        done = _run_block(lang, code, tmp_path)
        assert done.returncode == 0, f"{kind}: this {lang} block of the card failed:\n{code}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    if kind == "causal LM":  # the prompt and the continuation the teacher generates; an LM's accuracy is per token
        assert outputs[0].strip().splitlines()[-1].startswith("the computer")
        assert "--task causal-lm" in command and "next-token accuracy:" in outputs[1]
        assert card.data.to_dict()["pipeline_tag"] == "text-generation"
    else:
        predicted = json.loads(outputs[0].strip().splitlines()[-1].replace("'", '"'))
        labels = LABELS if kind != "text" else json.loads(Path(source / "config.json").read_text())["id2label"].values()
        assert len(predicted) == 2 and set(predicted) <= set(labels)
        assert "test accuracy:" in outputs[1]
    assert (tmp_path / "runs" / "student").is_dir()

    if kind == "timm registered by hf-ckptkd":  # why the import is there: timm alone does not know the network
        without = _run_block("python", load.replace("import hf_ckptkd", "pass"), tmp_path)
        assert without.returncode != 0 and "Unknown model (cifar_resnet8)" in without.stderr


def _repo_files(repo: str, revision: str) -> list[str]:
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo, revision=revision)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["timm:test_resnet", "transformers:ViTConfig"])
def test_a_card_for_a_teacher_in_a_folder_loads_and_distils_as_written(hub, tmp_path, spec, fresh_hf_cache):
    """A teacher kept in a folder of a repo (as Trainer checkpoints are): its card names it `owner/name@rev:folder`."""
    from huggingface_hub import HfApi

    from capabilities import TIMM_ALONE_LOADS_LOCAL_FOLDERS

    if spec.startswith("timm") and not TIMM_ALONE_LOADS_LOCAL_FOLDERS:
        pytest.skip("timm's local-dir loader needs a torch.load that reads safetensors")
    folder = tmp_path / "run" / "snapshots"
    if spec.startswith("timm"):
        snapshot = _timm_teacher(folder, spec)
    else:
        torch.manual_seed(0)
        vit = build_model(spec, 10, label_names=LABELS, in_chans=1, image_size=28, model_kwargs=TINY_VIT)
        snapshot = write_snapshot(vit, folder, "epoch-0001", epoch=1, global_step=10, dataset=FMNIST)
    repo = hub.new_repo_id("card-folder")
    card = build_model_card(snapshot, repo, "v1", subfolder="checkpoint-10")
    api = HfApi(token=hub.write_token)
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=str(snapshot.path), path_in_repo="checkpoint-10")
    api.upload_file(path_or_fileobj=str(card).encode(), path_in_repo="checkpoint-10/README.md", repo_id=repo)
    api.create_tag(repo, tag="v1")
    reference = f"{repo}@v1:checkpoint-10"
    assert f"load `{reference}`" in card.text and card.data.to_dict()["checkpoint_kd"]["reference"] == reference
    load, command, script = (code for _, code in _blocks(card.text))
    # (The distil command runs as written in the test above; a folder reference in it runs in test_hub_checkpoints.)
    assert f"--teachers {reference}" in command and f'teachers = ["{reference}"]' in script
    done = _run_block("python", load, tmp_path)
    assert done.returncode == 0, f"the card's loading code failed:\n{load}\n{done.stderr[-3000:]}"
    assert set(json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))) <= set(LABELS)
