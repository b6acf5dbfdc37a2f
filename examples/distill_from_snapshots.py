"""Keep a teacher's snapshots in a plain `Trainer`, choose one, and distil a student from it.

    python examples/distill_from_snapshots.py                       # a few minutes on a CPU
    python examples/distill_from_snapshots.py --train_samples 256 --epochs 2   # seconds

Offline: Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package.
"""

import argparse

from transformers import Trainer, TrainingArguments

from hf_ckptkd import CheckpointKDConfig, CheckpointKDTrainer, SnapshotCallback, select_teachers
from hf_ckptkd.data import (ImageTransformConfig, build_image_transform, image_collator, load_fashion_mnist,
                            with_image_transform)
from hf_ckptkd.metrics import compute_metrics
from hf_ckptkd.models import build_model

parser = argparse.ArgumentParser()
parser.add_argument("--train_samples", type=int, default=4000)
parser.add_argument("--epochs", type=int, default=6)
parser.add_argument("--output_dir", default="runs/example")
args = parser.parse_args()

# Data: raw images stay in the dataset; tensors are made on the fly (augmented for training only).
transform = ImageTransformConfig()  # 28×28, one channel, Fashion-MNIST mean and std
raw_train = load_fashion_mnist("train", limit=args.train_samples)
train = with_image_transform(raw_train, build_image_transform(transform, train=True))
test = with_image_transform(load_fashion_mnist("test", limit=1000), build_image_transform(transform, train=False))


def classifier(spec: str):
    """A timm network behind the transformers classifier interface (pixel_values, labels → loss, logits),
    recording the data's input size, mean, std and class names in its config, so that every snapshot
    says how its inputs were made. `cifar_resnet*` are small-image ResNets that hf_ckptkd registers with timm."""
    return build_model(spec, num_labels=10, label_names=raw_train.features["label"].names, in_chans=1,
                       image_size=transform.image_size, mean=transform.mean, std=transform.std)


common = dict(per_device_train_batch_size=128, per_device_eval_batch_size=512, learning_rate=0.05, optim="sgd",
              weight_decay=5e-4, eval_strategy="epoch", logging_strategy="epoch", report_to="none",
              remove_unused_columns=False)  # keep the raw image column for the on-the-fly transform

# 1. The teacher: an ordinary Trainer; the callback keeps a snapshot at the end of every epoch.
teacher_args = TrainingArguments(output_dir=f"{args.output_dir}/teacher", num_train_epochs=args.epochs,
                                 save_strategy="no", **common)
Trainer(model=classifier("timm:cifar_resnet20"), args=teacher_args, train_dataset=train, eval_dataset=test,
        data_collator=image_collator, compute_metrics=compute_metrics,
        callbacks=[SnapshotCallback("epoch", every=1)]).train()

# 2. Choose the teacher on a probe drawn from the training images (the default objective is the
#    snapshot with the best validation accuracy; objective="outputs" maximises the information J).
report = select_teachers(f"{args.output_dir}/teacher/snapshots", raw_train, k=1, max_probe_samples=500)
report.save(f"{args.output_dir}/teacher/selection")
print("selected:", report.selected)

# 3. The student learns from the chosen snapshot: alpha * CE + (1 - alpha) * T^2 * KL (CE: the model's own loss).
student_args = CheckpointKDConfig(output_dir=f"{args.output_dir}/student", num_train_epochs=args.epochs,
                                  teachers=[f"{args.output_dir}/teacher/snapshots:{report.selected[0]}"],
                                  temperature=4.0, alpha=0.5, max_grad_norm=0.0, **common)
student = CheckpointKDTrainer(model=classifier("timm:cifar_resnet8"), args=student_args, train_dataset=train,
                              eval_dataset=test, data_collator=image_collator, compute_metrics=compute_metrics)
student.train()
print("student test accuracy:", student.evaluate()["eval_accuracy"])
