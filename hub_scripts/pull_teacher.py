"""Download a teacher from the Hub by reference and measure its accuracy on a dataset.

Usage::

    python hub_scripts/pull_teacher.py alice/fmnist-teacher@epoch-0012 \
        [--dataset fashion_mnist] [--split test] [--max_samples 1000] [--batch_size 256] [--json]
    python hub_scripts/pull_teacher.py alice/vit-run:checkpoint-500     # a folder a Trainer pushed

The reference is `owner/name`, `owner/name@revision` (branch, tag or commit), or either with
`:subfolder` for a model in a folder of the repo (`owner/name@main:checkpoint-500`). The teacher is
loaded with its family's own loader through `hf_ckptkd.hub.load_hub_teacher`, which checks the
weights against the repo's `snapshot.json`. Images are resized to the teacher's input size and
normalised with its mean/std (timm's `pretrained_cfg`; for transformers models Fashion-MNIST's
statistics on `fashion_mnist`, else 0.5). `HF_HOME`, `HF_HUB_OFFLINE`, `HF_ENDPOINT` and
`HF_TOKEN` work as in huggingface_hub: a teacher already in the cache loads offline.
"""

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reference", help="owner/name[@revision][:subfolder]")
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (built in) or a datasets id/path.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max_samples", type=int, default=None, help="Evaluate on the first N examples.")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--json", action="store_true", help="Print the result as one JSON object.")
    args = parser.parse_args(argv)

    import torch

    from hf_ckptkd import data
    from hf_ckptkd.hub import HubError, load_hub_teacher
    from hf_ckptkd.models import TimmForImageClassification
    from hf_ckptkd.references import TeacherReferenceError

    try:
        model = load_hub_teacher(args.reference).eval()
        dataset = data.load_dataset_split(args.dataset, args.split, args.max_samples)
    except (HubError, TeacherReferenceError, data.DataError) as e:
        print(f"pull_teacher: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    if isinstance(model, TimmForImageClassification):
        cfg = model.model.pretrained_cfg
        in_chans, size = cfg["input_size"][0], cfg["input_size"][-1]
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    else:
        in_chans, size = model.config.num_channels, model.config.image_size
        mean, std = data.default_normalisation(args.dataset, 1)
    if len(mean) != in_chans:  # e.g. a one-value mean for a three-channel model
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    transform = data.build_image_transform(
        data.ImageTransformConfig(image_size=size, in_chans=in_chans, mean=mean, std=std), train=False)
    examples = data.with_image_transform(dataset, transform)
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(examples), args.batch_size):
            batch = data.image_collator([examples[i] for i in range(start, min(start + args.batch_size, len(examples)))])
            logits = model(pixel_values=batch["pixel_values"]).logits
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
    result = {"reference": args.reference, "dataset": args.dataset, "split": args.split, "examples": len(examples),
              "accuracy": correct / max(len(examples), 1)}
    print(json.dumps(result) if args.json else
          f"{args.reference}: accuracy {result['accuracy']:.4f} on {len(examples)} examples of {args.dataset}/{args.split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
