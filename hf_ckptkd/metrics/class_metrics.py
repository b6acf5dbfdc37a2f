"""What the project's `evaluate` modules share: their inputs (class ids or per-class scores against
class ids) and the fraction of matches. Each module stays a standalone `evaluate` script that
`evaluate.load(<folder>)` runs; they import this from the installed package."""

import datasets
import evaluate
import numpy as np

CLASS_IDS = datasets.Value("int64")
CLASS_SCORES = datasets.Sequence(datasets.Value("float32"))


def class_metric_info(description: str, inputs_description: str, predictions=CLASS_IDS) -> evaluate.MetricInfo:
    """The `MetricInfo` of a metric of predictions (class ids or scores) against class-id references."""
    return evaluate.MetricInfo(description=description, citation="", inputs_description=inputs_description,
                               features=datasets.Features({"predictions": predictions, "references": CLASS_IDS}))


def fraction_equal(predictions, references) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(references)))
