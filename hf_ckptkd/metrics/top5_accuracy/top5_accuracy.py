"""Top-5 accuracy: the fraction of examples whose true class is among the five highest logits."""

import evaluate
import numpy as np

from hf_ckptkd.metrics.class_metrics import CLASS_SCORES, class_metric_info


class Top5Accuracy(evaluate.Metric):
    def _info(self):
        return class_metric_info(
            "Fraction of examples whose reference is among the k highest-scoring classes (k=5, fewer if there are "
            "fewer classes).", "predictions: per-class scores (logits); references: true class ids.", CLASS_SCORES)

    def _compute(self, predictions, references, k=5):
        scores = np.asarray(predictions)
        top = np.argsort(-scores, axis=1)[:, : min(k, scores.shape[1])]
        return {"top5_accuracy": float(np.mean((top == np.asarray(references)[:, None]).any(axis=1)))}
