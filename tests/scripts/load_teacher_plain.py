"""Load Hub teachers with only timm / transformers (no hf_ckptkd) and print their logits.

Usage: `python load_teacher_plain.py owner/name@rev [...]` with HF_ENDPOINT/HF_HOME set. For each
reference it reads config.json to tell the family, loads with the family's own loader
(`timm.create_model("hf-hub:owner/name@rev", pretrained=True)` or
`AutoModelForImageClassification.from_pretrained(repo, revision=rev)`), runs it on a fixed input
(seed 0, shape 2x1x28x28) and prints one JSON object {reference: logits}.
"""

import json
import sys

import timm
import torch
from huggingface_hub import hf_hub_download
from transformers import AutoModelForImageClassification


def logits_of(reference: str) -> list:
    repo_id, _, revision = reference.partition("@")
    config = json.load(open(hf_hub_download(repo_id, "config.json", revision=revision or None)))
    if "architecture" in config:
        model = timm.create_model(f"hf-hub:{reference}", pretrained=True).eval()
        forward = model
    else:
        model = AutoModelForImageClassification.from_pretrained(repo_id, revision=revision or None).eval()
        forward = lambda x: model(pixel_values=x).logits  # noqa: E731
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        return forward(x).tolist()


if __name__ == "__main__":
    result = {ref: logits_of(ref) for ref in sys.argv[1:]}
    assert not any(name == "hf_ckptkd" or name.startswith("hf_ckptkd.") for name in sys.modules)
    print(json.dumps(result))
