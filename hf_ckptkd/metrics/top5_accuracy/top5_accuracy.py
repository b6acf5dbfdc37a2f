"""Top-5 accuracy: the fraction of examples whose true class is among the five highest logits."""

import datasets
import evaluate
import numpy as np


class Top5Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of examples whose reference is among the k highest-scoring classes (k=5, fewer if there are fewer classes).",
            citation="",
            inputs_description="predictions: per-class scores (logits); references: true class ids.",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, k=5):
        scores = np.asarray(predictions)
        top = np.argsort(-scores, axis=1)[:, : min(k, scores.shape[1])]
        return {"top5_accuracy": float(np.mean((top == np.asarray(references)[:, None]).any(axis=1)))}
