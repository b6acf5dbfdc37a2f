"""Top-1 accuracy: the fraction of predictions equal to the references."""

import evaluate

from hf_ckptkd.metrics.class_metrics import class_metric_info, fraction_equal


class Accuracy(evaluate.Metric):
    def _info(self):
        return class_metric_info("Fraction of predictions that equal the references.",
                                 "predictions: predicted class ids; references: true class ids.")

    def _compute(self, predictions, references):
        return {"accuracy": fraction_equal(predictions, references)}
