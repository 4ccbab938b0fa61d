"""What a trained model gets right and wrong on its validation images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deconv.config import NUM_CLASSES
from deconv.runs import RunInfo


@dataclass
class ValidationReport:
    """Confusion matrix, per-class accuracy and the most confidently wrong images of one model."""

    labels: list[str]
    matrix: np.ndarray  # (10, 10) counts, row = true class
    probabilities: np.ndarray  # (N, 10)
    y_true: np.ndarray

    @property
    def accuracy(self) -> float:
        """Fraction of images classified correctly."""
        return float(np.trace(self.matrix) / max(self.matrix.sum(), 1))

    @property
    def per_class(self) -> np.ndarray:
        """Accuracy of each true class."""
        return class_accuracy(self.matrix)

    def confidently_wrong(self, k: int = 8) -> list[tuple[int, int, float]]:
        """(index, predicted class, confidence) of the k wrong predictions made with the highest probability."""
        pred = self.probabilities.argmax(1)
        wrong = np.flatnonzero(pred != self.y_true)
        conf = self.probabilities[wrong, pred[wrong]]
        order = wrong[np.argsort(conf)[::-1][:k]]
        return [(int(i), int(pred[i]), float(self.probabilities[i, pred[i]])) for i in order]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts (10, 10): row = true class, column = predicted class."""
    idx = y_true.astype(np.int64) * NUM_CLASSES + y_pred.astype(np.int64)
    return np.bincount(idx, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def class_accuracy(matrix: np.ndarray | list[list[int]]) -> np.ndarray:
    """Accuracy of each true class from a confusion matrix (row = true class)."""
    matrix = np.asarray(matrix)
    return np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)


def report(probabilities: np.ndarray, y_true: np.ndarray, labels: list[str]) -> ValidationReport:
    """A ValidationReport from predicted probabilities and true labels."""
    return ValidationReport(labels, confusion_matrix(y_true, probabilities.argmax(1)), probabilities, y_true)


def run_report(model: Any, info: RunInfo, limit: int | None = None) -> tuple[ValidationReport, np.ndarray]:
    """The report of a saved run on the validation images it was trained with (the first `limit` of them)."""
    from deconv import data
    from deconv.train import predict

    source = data.get_data(info.meta.get("data", {}).get("path") if _exists(info) else None)
    x, y = data.validation_subset(info.train_config, source)
    if limit:
        x, y = x[:limit], y[:limit]
    return report(predict(model, x), y, data.label_names(source)), x


def _exists(info: RunInfo) -> bool:
    """Whether the data folder the run recorded is still there."""
    path = info.meta.get("data", {}).get("path")
    return bool(path) and Path(path).is_dir()
