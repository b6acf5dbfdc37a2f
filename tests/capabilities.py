"""What the installed libraries can do, for assertions that hold only with recent releases."""

import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file


def _torch_load_reads_safetensors() -> bool:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.safetensors"
        save_file({"x": torch.zeros(1)}, path)
        try:
            return "x" in torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # older torch unpickles it and fails
            return False


# `timm.create_model("local-dir:<folder>", pretrained=True)` reads the weights with `torch.load`, which reads
# safetensors in recent torch only (2.13 does, 2.6 does not). hf-ckptkd's own loader does not depend on it.
TIMM_ALONE_LOADS_LOCAL_FOLDERS = _torch_load_reads_safetensors()
