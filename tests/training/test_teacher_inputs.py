"""Teachers read the images the student is fed: channels and size must agree, normalisation is remapped."""

import logging

import numpy as np
import pytest
import torch
from transformers import ViTImageProcessor

from hf_ckptkd.cli.main import main
from hf_ckptkd.config import CheckpointKDConfig
from hf_ckptkd.data.loading import FASHION_MNIST_LABELS, FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist
from hf_ckptkd.models.inputs import InputMismatchError, InputSpec, recorded_input
from hf_ckptkd.models.folders import load_model, save_model
from hf_ckptkd.models import build_model
from hf_ckptkd.training.teachers import load_teachers
from hf_ckptkd.training.trainer import CheckpointKDTrainer

NAMES = list(FASHION_MNIST_LABELS)
TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "patch_size": 7}
# A teacher trained on inputs scaled to [-1, 1]; the student uses Fashion-MNIST's own statistics.
TEACHER_MEAN, TEACHER_STD = (0.5,), (0.5,)


def _args(tmp_path):
    return CheckpointKDConfig(output_dir=str(tmp_path / "student"), max_steps=1, report_to="none",
                              remove_unused_columns=False, save_strategy="no", disable_tqdm=True, teacher_fusion="loop")


def _student(**kwargs):
    return build_model("timm:test_resnet", 10, label_names=NAMES, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
                       **kwargs)


@pytest.fixture(scope="module")
def pixels():
    """Eight real Fashion-MNIST images as (8, 1, 28, 28) floats in [0, 1], before any normalisation."""
    images = load_fashion_mnist("test", limit=8)["image"]
    return torch.tensor(np.stack([np.asarray(im) for im in images]), dtype=torch.float32)[:, None] / 255


def _normalised(x, mean, std):
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def test_channel_mismatch_stops_before_the_first_step(tmp_path):
    rgb_teacher = build_model("timm:test_resnet", 10, label_names=NAMES, in_chans=3)
    with pytest.raises(InputMismatchError, match=r"reads 3-channel images but the student is fed 1-channel ones; set "
                                                 r"in_chans to 3"):
        CheckpointKDTrainer(model=_student(), args=_args(tmp_path), teachers=[rgb_teacher], label_names=NAMES)


def test_channel_mismatch_of_a_saved_teacher_through_the_cli(tmp_path, capsys):
    folder = tmp_path / "rgb-teacher"
    save_model(build_model("transformers:ViTConfig", 10, label_names=NAMES, in_chans=3, model_kwargs=TINY_VIT), folder)
    code = main(["distill", "--model", "timm:test_resnet", "--teachers", str(folder), "--max_train_samples", "32",
                 "--max_steps", "1", "--report_to", "none", "--output_dir", str(tmp_path / "s")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"teacher '{folder}' reads 3-channel images but the student is fed 1-channel ones" in err
    assert "Traceback" not in err
    assert not (tmp_path / "s" / "snapshots").exists() and not list((tmp_path / "s").glob("checkpoint-*"))


def test_image_size_mismatch_names_both_sizes(tmp_path):
    big = build_model("timm:test_resnet", 10, label_names=NAMES, image_size=32)
    with pytest.raises(InputMismatchError, match=r"trained on 32x32 images but the student is fed 28x28 ones; set "
                                                 r"image_size to 32"):
        CheckpointKDTrainer(model=_student(), args=_args(tmp_path), teachers=[big], label_names=NAMES)


def test_other_normalisation_is_remapped_for_the_teacher(tmp_path, pixels, caplog):
    torch.manual_seed(0)
    teacher = build_model("timm:test_resnet", 10, label_names=NAMES, mean=TEACHER_MEAN, std=TEACHER_STD).eval()
    with caplog.at_level(logging.WARNING, logger="hf_ckptkd.training.teachers"):
        trainer = CheckpointKDTrainer(model=_student(), args=_args(tmp_path), teachers=[teacher], label_names=NAMES)
    assert "mean (0.5), std (0.5); the student's use mean (0.286), std (0.353)" in caplog.text
    student_batch = _normalised(pixels, FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    with torch.no_grad():
        own_way = teacher(pixel_values=_normalised(pixels, TEACHER_MEAN, TEACHER_STD)).logits
        unmapped = teacher(pixel_values=student_batch).logits
    seen = trainer.teachers(pixel_values=student_batch)
    torch.testing.assert_close(seen, own_way, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(unmapped, own_way, atol=1e-3), "without the remap the teacher would see other inputs"


def test_teachers_with_different_normalisations_each_get_their_own(tmp_path, pixels):
    torch.manual_seed(0)
    a = build_model("timm:test_resnet", 10, label_names=NAMES, mean=TEACHER_MEAN, std=TEACHER_STD).eval()
    b = build_model("timm:test_resnet", 10, label_names=NAMES, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD).eval()
    ensemble = load_teachers([a, b], fusion="auto")
    ensemble.match_student_inputs(_student())
    assert ensemble.input_remaps[0] is not None and ensemble.input_remaps[1] is None
    assert ensemble.fusion_used == "loop"  # the two need different inputs: no shared batched forward
    with torch.no_grad():
        expected = (a(pixel_values=_normalised(pixels, TEACHER_MEAN, TEACHER_STD)).logits
                    + b(pixel_values=_normalised(pixels, FASHION_MNIST_MEAN, FASHION_MNIST_STD)).logits) / 2
    seen = ensemble(pixel_values=_normalised(pixels, FASHION_MNIST_MEAN, FASHION_MNIST_STD))
    torch.testing.assert_close(seen, expected, rtol=1e-4, atol=1e-4)


def test_transformers_teacher_normalisation_comes_from_its_image_processor(tmp_path, pixels):
    folder = tmp_path / "vit"
    torch.manual_seed(0)
    save_model(build_model("transformers:ViTConfig", 10, label_names=NAMES, model_kwargs=TINY_VIT), folder)
    ViTImageProcessor(image_mean=list(TEACHER_MEAN), image_std=list(TEACHER_STD), size=28).save_pretrained(folder)
    vit = load_model(folder).eval()
    assert recorded_input(vit) == InputSpec(1, (28, 28), TEACHER_MEAN, TEACHER_STD)
    trainer = CheckpointKDTrainer(model=_student(), args=_args(tmp_path), teachers=[str(folder)], label_names=NAMES)
    with torch.no_grad():
        own_way = vit(pixel_values=_normalised(pixels, TEACHER_MEAN, TEACHER_STD)).logits
    seen = trainer.teachers(pixel_values=_normalised(pixels, FASHION_MNIST_MEAN, FASHION_MNIST_STD))
    torch.testing.assert_close(seen, own_way, rtol=1e-4, atol=1e-4)


def test_what_the_data_feeds_overrides_what_the_student_records(tmp_path):
    # A transformers student records no mean/std; the pipeline and the CLI pass the data's own.
    vit_student = build_model("transformers:ViTConfig", 10, label_names=NAMES, model_kwargs=TINY_VIT)
    teacher = build_model("timm:test_resnet", 10, label_names=NAMES, mean=TEACHER_MEAN, std=TEACHER_STD)
    fed = InputSpec(1, (28, 28), FASHION_MNIST_MEAN, FASHION_MNIST_STD)
    trainer = CheckpointKDTrainer(model=vit_student, args=_args(tmp_path), teachers=[teacher], label_names=NAMES,
                                  student_input=fed)
    assert trainer.teachers.input_remaps[0] is not None
    same = CheckpointKDTrainer(model=_student(), args=_args(tmp_path), teachers=[teacher], label_names=NAMES,
                               student_input=InputSpec(1, (28, 28), TEACHER_MEAN, TEACHER_STD))
    assert same.teachers.input_remaps == [None]


def test_teachers_of_one_run_share_one_remap_and_keep_the_batched_forward(pixels):
    torch.manual_seed(0)
    members = [build_model("timm:test_resnet", 10, label_names=NAMES, mean=TEACHER_MEAN, std=TEACHER_STD).eval()
               for _ in range(2)]
    ensemble = load_teachers(members, fusion="fused")
    ensemble.match_student_inputs(_student())
    assert ensemble.input_remaps[0] == ensemble.input_remaps[1] is not None and ensemble.fusion_used == "fused"
    with torch.no_grad():
        own_way = _normalised(pixels, TEACHER_MEAN, TEACHER_STD)
        expected = sum(m(pixel_values=own_way).logits for m in members) / 2
    seen = ensemble(pixel_values=_normalised(pixels, FASHION_MNIST_MEAN, FASHION_MNIST_STD))
    torch.testing.assert_close(seen, expected, rtol=1e-4, atol=1e-4)
