"""A small teacher run for the subprocess tests: `python teacher_run.py OUT [--kill_at_step N] [--resume]
[--push_to_hub OWNER/NAME [--kill_after_tag TAG]]`.

Trains `timm:test_resnet` on 192 Fashion-MNIST images with snapshots every epoch and checkpoints
every 2 steps. With --kill_at_step the process SIGKILLs itself right after that optimizer step,
like a machine that dies mid-epoch (with --kill_after_tag, once the Hub holds that tag, so that
the kill falls after that snapshot's push). With --push_to_hub each snapshot is pushed while
training (the token comes from HF_TOKEN). Under `accelerate launch` it records the world size.
"""

import argparse
import json
import os
import signal
import time
from pathlib import Path

from huggingface_hub import HfApi
from transformers import TrainerCallback

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, exit_launched_process
from hf_ckptkd.data import ImageTransformConfig, build_image_transform, image_collator, label_names, load_fashion_mnist, with_image_transform
from hf_ckptkd.models import build_model


class KillAt(TrainerCallback):
    def __init__(self, step, after_tag=None):
        self.step, self.after_tag = step, after_tag

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            deadline = time.time() + 60
            while self.after_tag and time.time() < deadline and self.after_tag not in {
                    t.name for t in HfApi().list_repo_refs(args.snapshot_push_to_hub).tags}:
                time.sleep(0.1)
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill_at_step", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--push_to_hub", default=None)
    parser.add_argument("--kill_after_tag", default=None)
    args = parser.parse_args()
    train = load_fashion_mnist("train", limit=192)
    names = label_names(train)
    transform = ImageTransformConfig()
    config = CheckpointKDConfig(
        output_dir=args.output_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=1e-3, save_strategy="steps", save_steps=2, save_total_limit=1, logging_steps=1,
        snapshot_strategy="epoch", snapshot_every=1, snapshot_push_to_hub=args.push_to_hub, report_to="none",
        remove_unused_columns=False,
        seed=0, data_seed=0, disable_tqdm=True)
    model = build_model("timm:test_resnet", 10, label_names=names)
    trainer = CheckpointKDTrainer(model=model, args=config, data_collator=image_collator,
                                  train_dataset=with_image_transform(train, build_image_transform(transform, True)),
                                  callbacks=[KillAt(args.kill_at_step, args.kill_after_tag)] if args.kill_at_step else None)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    Path(args.output_dir, f"world-rank{trainer.args.process_index}.json").write_text(
        json.dumps({"world_size": trainer.args.world_size, "rank": trainer.args.process_index}))


if __name__ == "__main__":
    main()
    exit_launched_process()
