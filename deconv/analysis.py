"""What a trained model gets right and wrong on its validation images.

The trainer computes this report in its own process, right after training, and saves it with the run
as `report.json`: the app's server reads the counts and never loads the model to draw them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deconv.config import NUM_CLASSES, TrainConfig, field_spec
from deconv.runs import CLASS_NAME

REPORT_FILE = "report.json"
MAX_REPORT_BYTES = 1 << 20  # a report is a few kB; a larger file is not read
MISTAKES_KEPT = 32  # the most confidently wrong images a report keeps
MOST_IMAGES = int(field_spec(TrainConfig, "val_size").high)  # a report counts at most a validation set


class ReportError(Exception):
    """A report file that is missing, too large or malformed; the message says which."""


@dataclass(frozen=True)
class Mistake:
    """One validation image the model got wrong: its index in the validation subset, the classes, the confidence."""

    index: int
    true: int
    predicted: int
    confidence: float


@dataclass(frozen=True)
class ValidationReport:
    """Confusion matrix, per-class accuracy and the most confidently wrong images of one model."""

    labels: list[str]
    matrix: np.ndarray  # (10, 10) counts, row = true class
    mistakes: tuple[Mistake, ...]  # most confident first
    true: np.ndarray | None = None  # each validation image's class, in the validation subset's order
    predicted: np.ndarray | None = None  # and the class the model gave it (reports saved before these: None)

    @property
    def images(self) -> int:
        """How many validation images the report counts."""
        return int(self.matrix.sum())

    @property
    def accuracy(self) -> float:
        """Fraction of images classified correctly."""
        return float(np.trace(self.matrix) / max(self.matrix.sum(), 1))

    @property
    def per_class(self) -> np.ndarray:
        """Accuracy of each true class."""
        return class_accuracy(self.matrix)

    def confidently_wrong(self, k: int = 8) -> list[Mistake]:
        """The k wrong predictions made with the highest probability."""
        return list(self.mistakes[:k])

    def cell(self, true: int, predicted: int) -> np.ndarray | None:
        """Indices (into the validation subset) of the images of one true class given one predicted class, or None
        when the report kept no per-image predictions."""
        if self.true is None or self.predicted is None:
            return None
        return np.flatnonzero((self.true == true) & (self.predicted == predicted))

    def to_json(self) -> dict[str, Any]:
        """A plain JSON-ready dict."""
        data = {"labels": list(self.labels), "matrix": self.matrix.astype(int).tolist(),
                "mistakes": [[m.index, m.true, m.predicted, round(m.confidence, 6)] for m in self.mistakes]}
        if self.true is not None and self.predicted is not None:
            data.update(true=self.true.astype(int).tolist(), predicted=self.predicted.astype(int).tolist())
        return data

    @classmethod
    def from_json(cls, data: Any, val_size: int | None = None) -> "ValidationReport":
        """Read back what to_json wrote, within a validation set of `val_size` images; ReportError if it is not."""
        try:
            labels = data["labels"]
            matrix = np.asarray(data["matrix"], dtype=np.int64)
            mistakes = tuple(Mistake(int(i), int(t), int(p), float(c)) for i, t, p, c in data["mistakes"])
            classes = [np.asarray(data[k], dtype=np.int64) if k in data else None for k in ("true", "predicted")]
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise ReportError(f"the report has the wrong shape ({type(e).__name__}: {str(e)[:200]})") from None
        if not (isinstance(labels, list) and len(labels) == NUM_CLASSES  # shown to every visitor: plain words
                and all(isinstance(v, str) and CLASS_NAME.fullmatch(v) for v in labels)
                and len(set(labels)) == NUM_CLASSES):
            raise ReportError(f"the report's labels must be {NUM_CLASSES} different plain class names (letters, "
                              "digits, spaces, _ and -): import the run with the report.json its training wrote")
        most = MOST_IMAGES if val_size is None else val_size
        if matrix.shape != (NUM_CLASSES, NUM_CLASSES) or (matrix < 0).any() or (matrix > most).any() or not all(
                0 <= v < NUM_CLASSES for m in mistakes for v in (m.true, m.predicted)):
            raise ReportError("the report has the wrong shape (a 10x10 matrix of counts and ten labels)")
        images = int(matrix.sum())
        if images > most:
            raise ReportError(f"the report counts {images:,} validation images, but the run has {most:,}: it is "
                              "another run's report or was altered; import the run with the report.json its "
                              "training wrote, or without one")
        if not all(0 <= m.index < images and 0.0 <= m.confidence <= 1.0 for m in mistakes):
            raise ReportError("the report's mistakes name images it does not count, or a confidence outside 0 to 1")
        true, predicted = classes
        if (true is None) != (predicted is None) or true is not None and (
                true.shape != predicted.shape or true.ndim != 1 or (true < 0).any() or (predicted < 0).any()
                or (true >= NUM_CLASSES).any() or (predicted >= NUM_CLASSES).any()
                or not np.array_equal(confusion_matrix(true, predicted), matrix)):
            raise ReportError("the report's per-image classes do not add up to its confusion matrix")
        return cls(labels, matrix, mistakes, true, predicted)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts (10, 10): row = true class, column = predicted class."""
    idx = y_true.astype(np.int64) * NUM_CLASSES + y_pred.astype(np.int64)
    return np.bincount(idx, minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)


def class_accuracy(matrix: np.ndarray | list[list[int]]) -> np.ndarray:
    """Accuracy of each true class from a confusion matrix (row = true class)."""
    matrix = np.asarray(matrix)
    return np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)


def report(probabilities: np.ndarray, y_true: np.ndarray, labels: list[str],
           keep: int = MISTAKES_KEPT) -> ValidationReport:
    """A ValidationReport from predicted probabilities and true labels."""
    pred = probabilities.argmax(1)
    wrong = np.flatnonzero(pred != y_true)
    conf = probabilities[wrong, pred[wrong]]
    order = wrong[np.argsort(-conf, kind="stable")[:keep]]
    mistakes = tuple(Mistake(int(i), int(y_true[i]), int(pred[i]), float(probabilities[i, pred[i]])) for i in order)
    return ValidationReport(list(labels), confusion_matrix(y_true, pred), mistakes, np.asarray(y_true, np.int64), pred)


def save_report(rep: ValidationReport, run_dir: str | Path) -> None:
    """Write the report beside a run's model."""
    (Path(run_dir) / REPORT_FILE).write_text(json.dumps(rep.to_json()) + "\n")


def read_report(run_dir: str | Path, val_size: int | None = None) -> ValidationReport:
    """A run's saved report, within its `val_size` validation images; ReportError if it is absent or does not fit."""
    path = Path(run_dir) / REPORT_FILE
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise ReportError(f"{REPORT_FILE} is larger than {MAX_REPORT_BYTES // 1024} kB")
        return ValidationReport.from_json(json.loads(path.read_text()), val_size)
    except FileNotFoundError:
        raise ReportError("this run was saved without a validation report") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ReportError(f"{REPORT_FILE} cannot be read ({str(e)[:200]})") from None
