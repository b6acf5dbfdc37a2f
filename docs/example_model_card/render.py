"""Render docs/example_model_card/ (README.md + information_plane.png): the card `hf-ckptkd push` writes
for the demo's kind of teacher, a `timm:cifar_resnet20` trained on Fashion-MNIST by the demo recipe.

To stay short the run is the demo recipe (recipes/fashion_mnist.yaml) with 1,000 training and 500
validation images, one teacher, 4 epochs and a snapshot every epoch, stages `teachers` and
`select` only; the card's numbers are that run's. Usage:

    OMP_NUM_THREADS=1 python docs/example_model_card/render.py runs/example_card
"""

import shutil
import sys
from pathlib import Path

import yaml

from hf_ckptkd.hub import build_model_card
from hf_ckptkd.hub.sources import resolve_push_source
from hf_ckptkd.pipeline.stages import run
from hf_ckptkd.pipeline.recipe import recipe_from_dict
from hf_ckptkd.selection.report import PLANE_PNG

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    output = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/example_card")
    values = yaml.safe_load((ROOT / "recipes" / "fashion_mnist.yaml").read_text())
    values.update(name="fashion_mnist_short", train_samples=1000, validation_samples=500, full_ensemble=1,
                  selection={"objective": "outputs", "max_probe_samples": 500, "temperature": 4.0})
    values["teacher"].update(num_train_epochs=4, snapshot_every=1, warmup_steps=8)
    run(recipe_from_dict(values, source="recipes/fashion_mnist.yaml, shortened"), output, stages=["teachers", "select"])
    [member], report, folder = resolve_push_source(output / "selection" / "k1")
    card = build_model_card(member.snapshot, "you/fmnist-teacher", member.snapshot.name, report=report,
                            score=member.score, run="fashion_mnist_short/teacher-0", plot=True)
    (HERE / "README.md").write_text(str(card))
    shutil.copyfile(folder / PLANE_PNG, HERE / PLANE_PNG)
    print(f"wrote {HERE / 'README.md'}")
