"""A short distillation for the two-process test: `python distill_run.py OUT TEACHER_REF --batch_size B [--losses L ...]`.

A tiny ViT student (LayerNorm, no BatchNorm, so per-process batch size does not change the
forward) learns from a snapshot on 32 Fashion-MNIST images without augmentation: with a global
batch of 32 every step sees all of them, whatever order each process draws, so one process and
two must take the same steps. One run per user loss named (in the same processes, each from the
same initial student): `model` is the model's own batch-mean loss, `class_weighted` a
`compute_loss_func` normalised by Trainer's count over the step (tests/user_losses.py). The logged
losses of each and the world size go to OUT/losses-rank<r>.json.
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import set_seed

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, exit_launched_process
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, label_names, load_fashion_mnist, with_image_transform
from hf_ckptkd.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for user_losses
from user_losses import USER_LOSSES  # noqa: E402

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "patch_size": 7,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("teacher")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--losses", nargs="+", choices=["model", "class_weighted"], default=["model"])
    args = parser.parse_args()
    train = load_fashion_mnist("train", limit=32)
    names = label_names(train)
    data = with_image_transform(train, build_image_transform(ImageTransformConfig(crop_padding=0, hflip=False), train=True))
    logs = {}
    for loss in args.losses:
        config = CheckpointKDConfig(output_dir=f"{args.output_dir}/{loss}", max_steps=4, logging_steps=1, seed=0,
                                    per_device_train_batch_size=args.batch_size, learning_rate=1e-3, report_to="none",
                                    remove_unused_columns=False, save_strategy="no", teachers=[args.teacher],
                                    disable_tqdm=True)
        set_seed(0)  # the same initial student in every process and in the single-process run
        model = build_model("transformers:ViTConfig", 10, label_names=names, model_kwargs=TINY_VIT)
        trainer = CheckpointKDTrainer(model=model, args=config, train_dataset=data, data_collator=image_collator,
                                      compute_loss_func=USER_LOSSES[loss])
        trainer.train()
        logs[loss] = [{k: e[k] for k in ("step", "loss", "loss_task", "loss_kd")}
                      for e in trainer.state.log_history if "loss_kd" in e]
    Path(args.output_dir, f"losses-rank{trainer.args.process_index}.json").write_text(
        json.dumps({"world_size": trainer.args.world_size, "logs": logs}))


if __name__ == "__main__":
    main()
    exit_launched_process()
