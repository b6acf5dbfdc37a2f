"""The shipped recipes build and take a training step (the GPU-sized ones on tiny CPU data)."""

from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image

from hf_ckptkd.data import ImageColumns, ImageTransformConfig, build_image_transform, image_collator, with_image_transform
from hf_ckptkd.models import build_model
from hf_ckptkd.pipeline.recipe import load_recipe, section_config
from hf_ckptkd.snapshots import write_snapshot
from hf_ckptkd.training.trainer import CheckpointKDTrainer

ROOT = Path(__file__).resolve().parents[2]


def _cifar_like(n=8, classes=100):
    rng = np.random.default_rng(0)
    return Dataset.from_dict({"img": [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(n)],
                              "fine_label": [i % classes for i in range(n)]},
                             features=Features({"img": Image(), "fine_label": ClassLabel(num_classes=classes)}))


def test_cifar100_paper_recipe_takes_one_step(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "cifar100_paper.yaml")
    assert (recipe.teacher.model, recipe.student.model) == ("timm:wrn_40_2", "timm:wrn_16_2")
    assert recipe.teacher.training["snapshot_every"] == 20 and recipe.teacher.training["num_train_epochs"] == 200
    transform = ImageTransformConfig(image_size=32, in_chans=3, mean=tuple(recipe.mean), std=tuple(recipe.std))
    data = with_image_transform(_cifar_like(), build_image_transform(transform, train=True),
                                ImageColumns(recipe.image_column, recipe.label_column))
    tiny = {"max_steps": 1, "per_device_train_batch_size": 4, "dataloader_num_workers": 0, "save_strategy": "no", "logging_steps": 1}
    teacher = build_model(recipe.teacher.model, 100, in_chans=3, image_size=32)
    config = section_config(recipe.teacher.training, tmp_path / "t", seed=0, **tiny)
    assert config.optim == "sgd" and config.learning_rate == 0.05
    CheckpointKDTrainer(model=teacher, args=config, train_dataset=data, data_collator=image_collator).train()
    snapshots = sorted(p.name for p in (tmp_path / "t" / "snapshots").iterdir())
    assert snapshots == ["index.json", "step-000001"]
    write_snapshot(teacher, tmp_path / "s", "epoch-0020", epoch=20, global_step=1)
    student = build_model(recipe.student.model, 100, in_chans=3, image_size=32)
    config = section_config(recipe.student.training, tmp_path / "st", seed=0, teachers=[f"{tmp_path / 's'}:epoch-0020"], **tiny)
    trainer = CheckpointKDTrainer(model=student, args=config, train_dataset=data, data_collator=image_collator)
    trainer.train()
    assert any("loss_kd" in e for e in trainer.state.log_history)
