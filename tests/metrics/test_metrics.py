"""The project's own evaluate modules load by path, offline, and compute the right numbers."""

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_ckptkd.metrics import compute_metrics, load_metric


def test_accuracy_and_top5_from_logits():
    logits = np.array([[0.9, 0.1, 0, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0, 0], [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                       [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]], dtype=np.float32)
    labels = np.array([0, 0, 0, 2])
    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels))
    assert metrics["accuracy"] == pytest.approx(0.25)
    # Row 3's true class is ranked 7th (outside the top 5); the others are inside.
    assert metrics["top5_accuracy"] == pytest.approx(0.75)


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        load_metric("f1")
