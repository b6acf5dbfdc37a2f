"""The project's own `evaluate` modules, loaded by path so that nothing fetches a metric script.

`load_metric("accuracy")` is `evaluate.load(<this folder>/accuracy)`. `compute_metrics` is a
`Trainer` metric function reporting accuracy and top-5 accuracy from logits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import evaluate
import numpy as np

METRICS_DIR = Path(__file__).parent
METRIC_NAMES = ("accuracy", "top5_accuracy")


@lru_cache(maxsize=None)
def load_metric(name: str) -> evaluate.EvaluationModule:
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; hf-ckptkd ships {', '.join(METRIC_NAMES)}")
    return evaluate.load(str(METRICS_DIR / name))


def compute_metrics(eval_pred) -> dict[str, float]:
    """For `Trainer(compute_metrics=...)`: accuracy and top-5 accuracy of the logits."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    predictions = np.argmax(logits, axis=-1)
    results = load_metric("accuracy").compute(predictions=predictions, references=labels)
    results.update(load_metric("top5_accuracy").compute(predictions=logits, references=labels))
    return results
