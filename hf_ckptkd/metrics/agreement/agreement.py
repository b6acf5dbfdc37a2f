"""Student-teacher agreement: the fraction of examples on which both predict the same class."""

import datasets
import evaluate
import numpy as np


class Agreement(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of examples where the student's predicted class equals the teacher's.",
            citation="",
            inputs_description="predictions: the student's class ids; references: the teacher's class ids.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"agreement": float(np.mean(np.asarray(predictions) == np.asarray(references)))}
