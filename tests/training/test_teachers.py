"""Teachers: the frozen ensemble (fused and loop paths, modes, weights, dtypes), references, label spaces."""


import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from hf_ckptkd.models.folders import save_model
from hf_ckptkd.models import build_model
from hf_ckptkd.snapshots import SnapshotError, write_snapshot
from hf_ckptkd.training.teachers import (
    LabelSpaceError,
    TeacherEnsemble,
    TeacherFusionError,
    TeacherOutputError,
    TeacherReferenceError,
    check_finite,
    check_label_space,
    load_teachers,
    parse_hub_reference,
)

NAMES = ["tee", "trouser", "pullover"]
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 7}
TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 50, "max_position_embeddings": 32}


def _timm(seed, spec="timm:resnet10t", num_labels=3, label_names=NAMES):
    torch.manual_seed(seed)
    model = build_model(spec, num_labels, label_names=label_names, in_chans=1)
    # Random running statistics, so eval-mode BatchNorm (what vmap must get right) is not the identity.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


def _vit(seed, num_labels=3, label_names=NAMES):
    torch.manual_seed(seed)
    return build_model("transformers:ViTConfig", num_labels, label_names=label_names, in_chans=1,
                       model_kwargs=TINY_VIT)


def _bert(seed, vocab_size=50, num_labels=3):
    torch.manual_seed(seed)
    return build_model("transformers:BertConfig", num_labels, model_kwargs={**TINY_BERT, "vocab_size": vocab_size})


@pytest.fixture(scope="module")
def resnets():
    return [_timm(seed) for seed in range(3)]


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(123)
    return torch.randn(8, 1, 28, 28)


def _single(model, x):
    with torch.no_grad():
        return model.eval()(pixel_values=x).logits


# --- fused vs loop ------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["timm", "vit"])
def test_fused_and_loop_give_the_same_logits(family, resnets, pixels):
    members = resnets if family == "timm" else [_vit(seed) for seed in range(3)]
    fused = TeacherEnsemble(members, fusion="fused")
    loop = TeacherEnsemble(members, fusion="loop")
    assert fused.fusion_used == "fused" and loop.fusion_used == "loop"
    expected = torch.stack([_single(m, pixels) for m in members])
    assert (expected[0] - expected[1]).abs().max() > 1e-2  # the members really differ
    torch.testing.assert_close(fused.member_logits(pixel_values=pixels), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused(pixel_values=pixels), loop(pixel_values=pixels), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loop(pixel_values=pixels), expected.mean(0), atol=1e-5, rtol=1e-5)


def test_auto_measures_both_paths_and_records_the_choice(resnets, pixels, caplog):
    ensemble = TeacherEnsemble(resnets[:2], fusion="auto", auto_repeats=2)
    assert ensemble.fusion_used is None and ensemble.fusion_times is None
    with caplog.at_level("INFO", logger="hf_ckptkd.training.teachers"):
        out = ensemble(pixel_values=pixels, labels=torch.zeros(8, dtype=torch.long))  # labels are ignored
    assert ensemble.fusion_used in ("fused", "loop")
    times = ensemble.fusion_times
    assert set(times) == {"fused", "loop", "fused/loop"} and all(t > 0 for t in times.values())
    assert "auto chose" in caplog.text
    assert ensemble.fusion_used == ("fused" if times["fused/loop"] < 0.95 else "loop")
    torch.testing.assert_close(out, (_single(resnets[0], pixels) + _single(resnets[1], pixels)) / 2,
                               atol=1e-5, rtol=1e-5)
    # Later batches use the chosen path without measuring again.
    times = ensemble.fusion_times
    ensemble(pixel_values=pixels)
    assert ensemble.fusion_times is times


def test_to_restacks_the_fused_weights(resnets, pixels):
    ensemble = TeacherEnsemble(resnets, fusion="fused")
    before = ensemble(pixel_values=pixels)
    assert ensemble._fused is not None
    ensemble.to("cpu")
    assert ensemble._fused is None  # rebuilt from the moved members on the next call
    torch.testing.assert_close(ensemble(pixel_values=pixels), before)


def test_mixed_architectures_loop_and_fused_is_refused(resnets, pixels):
    members = [resnets[0], _timm(7, spec="timm:resnet18"), _vit(0)]
    ensemble = TeacherEnsemble(members, fusion="auto")
    assert ensemble.fusion_used == "loop" and ensemble.fusion_times is None
    assert "resnet18" in ensemble.fusion_reason
    expected = torch.stack([_single(m, pixels) for m in members]).mean(0)
    torch.testing.assert_close(ensemble(pixel_values=pixels), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(TeacherFusionError, match="one architecture"):
        TeacherEnsemble(members, fusion="fused")


# --- modes, weights, dtypes ---------------------------------------------------------------

def test_weighted_mean_logits(resnets, pixels):
    ensemble = TeacherEnsemble(resnets, weights=[1, 2, 1], fusion="loop")
    assert ensemble.weights == [0.25, 0.5, 0.25]
    z = [_single(m, pixels) for m in resnets]
    torch.testing.assert_close(ensemble(pixel_values=pixels), 0.25 * z[0] + 0.5 * z[1] + 0.25 * z[2],
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one weight per teacher"):
        TeacherEnsemble(resnets, weights=[1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        TeacherEnsemble(resnets, weights=[1, -1, 1])


@pytest.mark.parametrize("fusion", ["loop", "fused"])
@pytest.mark.parametrize("weights", [None, [3.0, 1.0, 0.0]])
def test_mean_probs_is_the_mean_of_tempered_probabilities(resnets, pixels, fusion, weights):
    temperature = 3.0
    ensemble = TeacherEnsemble(resnets, mode="mean_probs", temperature=temperature, weights=weights, fusion=fusion)
    out = ensemble(pixel_values=pixels)
    w = torch.tensor(ensemble.weights)
    probs = torch.stack([F.softmax(_single(m, pixels) / temperature, -1) for m in resnets])
    expected = (w[:, None, None] * probs).sum(0)
    torch.testing.assert_close(F.softmax(out / temperature, -1), expected, atol=1e-6, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_members_are_frozen_and_the_output_is_an_ordinary_tensor(resnets, pixels):
    ensemble = TeacherEnsemble(resnets, fusion="loop")
    ensemble.train()  # the trainer may call train() on anything: teachers stay in eval mode
    assert not ensemble.training and all(not m.training for m in ensemble.modules())
    assert all(not p.requires_grad for p in ensemble.parameters())
    out = ensemble(pixel_values=pixels)
    assert out.dtype == torch.float32 and not out.requires_grad and not out.is_inference()
    # The KD loss saves the teacher logits for backward; that must work.
    student = torch.randn(8, 3, requires_grad=True)
    F.kl_div(F.log_softmax(student, -1), F.softmax(out, -1), reduction="batchmean").backward()
    assert student.grad is not None
    # The ensemble's persistent state is only its members' weights (it is never saved with a student).
    assert all(key.startswith("members.") for key in ensemble.state_dict())


@pytest.mark.parametrize("fusion", ["loop", "fused"])
def test_bfloat16_teachers_run_and_return_float32(resnets, pixels, fusion):
    members = [_timm(seed) for seed in range(2)]  # own copies: the ensemble casts its members
    ensemble = TeacherEnsemble(members, dtype="bfloat16", fusion=fusion)
    assert all(p.dtype == torch.bfloat16 for p in ensemble.parameters())
    out = ensemble(pixel_values=pixels)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    reference = torch.stack([_single(m, pixels) for m in resnets[:2]]).mean(0)
    assert (out - reference).abs().max() < 0.1 * (1 + reference.abs().max())


def test_teacher_dtype_holds_inside_an_autocast_step(resnets, pixels):
    ensemble = TeacherEnsemble(resnets[:2], fusion="loop")
    expected = ensemble(pixel_values=pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ensemble(pixel_values=pixels), expected)


def test_check_finite():
    check_finite(torch.zeros(2, 3), batch_index=0)
    bad = torch.zeros(2, 3)
    bad[1, 2] = float("nan")
    bad[0, 0] = float("inf")
    with pytest.raises(TeacherOutputError, match=r"NaN/inf at batch 7.*1 NaN and 1 inf"):
        check_finite(bad, batch_index=7)


def test_a_diverged_teacher_is_caught(pixels):
    member = _timm(0)
    with torch.no_grad():
        next(member.parameters()).fill_(float("nan"))
    out = TeacherEnsemble([member])(pixel_values=pixels)
    with pytest.raises(TeacherOutputError, match="batch 3"):
        check_finite(out, batch_index=3)


# --- label spaces -------------------------------------------------------------------------

def test_members_with_different_label_spaces_are_refused(resnets):
    with pytest.raises(LabelSpaceError, match=r"'b'.*predicts 4 labels.*'a'.*predicts 3"):
        TeacherEnsemble([resnets[0], _timm(1, num_labels=4, label_names=None)], references=["a", "b"])
    renamed = _timm(1, label_names=["tee", "dress", "pullover"])
    with pytest.raises(LabelSpaceError, match=r"'a' and 'b'.*label 1 is 'trouser'.*'dress'"):
        TeacherEnsemble([resnets[0], renamed], references=["a", "b"])
    # A member without names adopts the others' names.
    unnamed = _timm(2, label_names=None)
    assert TeacherEnsemble([unnamed, resnets[1]]).label_names == NAMES


def test_check_label_space_against_the_student(resnets):
    ensemble = TeacherEnsemble(resnets[:2])
    assert ensemble.num_labels == 3 and ensemble.label_names == NAMES
    check_label_space(ensemble, _vit(0))  # same count and names, other architecture: fine
    check_label_space(ensemble, _timm(5, label_names=None))  # a student without names: count only
    with pytest.raises(LabelSpaceError, match=r"predict 3 labels but the student.*predicts 5.*num_labels=3"):
        check_label_space(ensemble, _timm(5, num_labels=5, label_names=None))
    with pytest.raises(LabelSpaceError, match=r"label 0 is 'tee' for the teachers and 'shirt' for the student"):
        check_label_space(ensemble, _timm(5, label_names=None), student_label_names=["shirt", "trouser", "pullover"])
    with pytest.raises(LabelSpaceError, match="image models but the student"):
        check_label_space(ensemble, _bert(0))


def _tokenizer(words):
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")), unk_token="[UNK]")


def test_text_teachers_and_student_must_share_the_vocabulary():
    teachers = TeacherEnsemble([_bert(0), _bert(1)])
    assert teachers.vocab_size == 50
    check_label_space(teachers, _bert(2))
    with pytest.raises(LabelSpaceError, match="vocabulary of 50 tokens but the student.*has 60"):
        check_label_space(teachers, _bert(2, vocab_size=60))
    check_label_space(teachers, _bert(2), teacher_tokenizer=_tokenizer(["a", "b"]),
                      student_tokenizer=_tokenizer(["a", "b"]))
    with pytest.raises(LabelSpaceError, match=r"tokenizer \(3 tokens\).*\(3 tokens\) differ in 2 tokens"):
        check_label_space(teachers, _bert(2), teacher_tokenizer=_tokenizer(["a", "b"]),
                          student_tokenizer=_tokenizer(["b", "a"]))
    with pytest.raises(LabelSpaceError, match="vocabulary of 60 tokens"):
        TeacherEnsemble([_bert(0), _bert(1, vocab_size=60)])
    ids = torch.randint(0, 50, (4, 12))
    fused = TeacherEnsemble([_bert(0), _bert(1)], fusion="fused")
    torch.testing.assert_close(fused(input_ids=ids), teachers(input_ids=ids), atol=1e-5, rtol=1e-5)


# --- references -------------------------------------------------------------------------------

def test_load_teachers_from_snapshots_folders_and_modules(tmp_path, resnets, pixels):
    snapshot_dir = tmp_path / "snapshots"
    write_snapshot(resnets[0], snapshot_dir, "epoch-0001", epoch=1, global_step=10)
    write_snapshot(resnets[1], snapshot_dir, "epoch-0002", epoch=2, global_step=20)
    save_model(resnets[2], tmp_path / "plain")
    refs = [f"{snapshot_dir}:epoch-0001", str(snapshot_dir / "epoch-0002"), str(tmp_path / "plain"), resnets[0]]
    ensemble = load_teachers(refs, fusion="loop", weights=[1, 1, 1, 1])
    assert ensemble.references[:3] == [str(r) for r in refs[:3]] and "resnet10t" in ensemble.references[3]
    assert ensemble.label_names == NAMES
    members = [resnets[0], resnets[1], resnets[2], resnets[0]]
    expected = torch.stack([_single(m, pixels) for m in members]).mean(0)
    torch.testing.assert_close(ensemble(pixel_values=pixels), expected, atol=1e-5, rtol=1e-5)
    assert load_teachers(f"{snapshot_dir}:epoch-0001").references == [f"{snapshot_dir}:epoch-0001"]


def test_altered_snapshot_weights_are_refused(tmp_path, resnets):
    snapshot = write_snapshot(resnets[0], tmp_path / "snapshots", "epoch-0001", epoch=1, global_step=10)
    weights = snapshot.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])
    weights.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match=r"snapshot epoch-0001.*altered"):
        load_teachers([str(snapshot.path)])
    with pytest.raises(SnapshotError, match=r"snapshot epoch-0001.*altered"):
        load_teachers([f"{tmp_path / 'snapshots'}:epoch-0001"])


def test_bad_references_are_refused(tmp_path):
    with pytest.raises(TeacherReferenceError, match="no teacher references"):
        load_teachers([])
    with pytest.raises(TeacherReferenceError, match=r"'/no/such/folder' is not a local path.*Hub repo 'owner/name'"):
        load_teachers(["/no/such/folder"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherReferenceError, match="neither a snapshot folder.*nor a saved model folder"):
        load_teachers([str(tmp_path / "empty")])
    (tmp_path / "snapshots").mkdir()
    write_snapshot(_timm(0), tmp_path / "snapshots", "epoch-0001", epoch=1, global_step=10)
    with pytest.raises(TeacherReferenceError, match="has no snapshot epoch-0009; it has epoch-0001"):
        load_teachers([f"{tmp_path / 'snapshots'}:epoch-0009"])
    with pytest.raises(TeacherReferenceError, match="not a local path"):
        load_teachers(["not a reference"])
    with pytest.raises(TeacherReferenceError, match="<Linear> is not a model hf-ckptkd can distil from"):
        load_teachers([torch.nn.Linear(2, 3)])
    with pytest.raises(TeacherReferenceError, match="not an nn.Module|is not an nn.Module, a snapshot"):
        load_teachers([42])


def test_parse_hub_reference():
    assert parse_hub_reference("alice/teacher") == ("alice/teacher", None, None)
    assert parse_hub_reference("alice/teacher-epoch_12.v2@v1.0") == ("alice/teacher-epoch_12.v2", "v1.0", None)
    assert parse_hub_reference("alice/t@refs/pr/1") == ("alice/t", "refs/pr/1", None)
    assert parse_hub_reference("alice/t@" + "a" * 40) == ("alice/t", "a" * 40, None)
    # A folder inside the repo (a Trainer checkpoint), at the default branch or at a revision; str() writes it back.
    assert parse_hub_reference("alice/t:checkpoint-500") == ("alice/t", None, "checkpoint-500")
    assert parse_hub_reference("alice/t@v1:runs/a/checkpoint-5/") == ("alice/t", "v1", "runs/a/checkpoint-5")
    assert str(parse_hub_reference("alice/t@v1:checkpoint-5")) == "alice/t@v1:checkpoint-5"
    for bad in ["teacher", "a/b/c", "/abs/path", "./rel/x", "alice/", "alice/te--acher", "alice/t..x", "alice/-t",
                "alice/t@", "alice/t@bad rev", "alice/t@a..b", "alice/" + "x" * 97, "runs/t/snapshots:epoch-0001",
                "alice/t:", "alice/t:../up", "alice/t@v1:a//b", "alice/t:check point"]:
        with pytest.raises(TeacherReferenceError):
            parse_hub_reference(bad)
