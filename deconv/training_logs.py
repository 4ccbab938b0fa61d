"""A run's logs for tools outside the app, written by Keras' own callbacks while `fit` runs: TensorBoard event files
(the epoch scalars, the learning rate, the network's graph, the validation confusion matrix of each epoch as an image)
and history.csv.

`tensorboard --logdir runs` then shows every saved run. The files are written into a temporary folder that
`runs.save_run` copies into the run, so a run folder is still complete or absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from deconv.runs import HISTORY_CSV, TENSORBOARD_DIR

CONFUSION_TAG = "confusion_matrix"
CELL = 32  # pixels per cell of the confusion image (room for a count of 1,000)
LABEL_WIDTH = 100  # pixels for the class names left of the rows


def scalar_logs(logs: dict[str, Any] | None) -> dict[str, Any]:
    """The logs without values that are not single numbers (the 10x10 confusion counts)."""
    return {k: v for k, v in (logs or {}).items() if np.ndim(v) == 0}


def epoch_logs(model: keras.Model, logs: dict[str, Any] | None) -> dict[str, Any]:
    """An epoch's numbers as the run's history records them: no validation figures for an epoch cut short by a stop
    request or a NaN loss (its validation pass was cut short too)."""
    numbers = scalar_logs(logs)
    if model.stop_training:
        numbers = {k: v for k, v in numbers.items() if not k.startswith("val_")}
    return numbers


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras' TensorBoard callback, given only single numbers (the confusion matrix is written as an image)."""

    async_safe = True  # with update_freq "epoch" its batch hook only writes the graph, once: no sync per batch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_train_batch_end(batch, scalar_logs(logs))

    def on_test_end(self, logs: dict | None = None) -> None:
        super().on_test_end({} if self.model.stop_training else scalar_logs(logs))  # a cut-short pass: no figures

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch, epoch_logs(self.model, logs))


class HistoryCSV(keras.callbacks.CSVLogger):
    """Keras' CSVLogger with the rows of the run's history: epochs counted from 1, no confusion counts."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        super().on_epoch_end(epoch + 1, epoch_logs(self.model, logs))


class ConfusionImages(keras.callbacks.Callback):
    """Writes each epoch's validation confusion matrix (the `val_confusion` counts) as a TensorBoard image."""

    def __init__(self, log_dir: Path, label_names: Sequence[str]) -> None:
        super().__init__()
        self.log_dir, self.label_names = log_dir, list(label_names)
        self.writer: Any = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        counts = (logs or {}).get("val_confusion")
        if counts is None or self.model.stop_training:  # no matrix (a strategy), or one of a cut-short pass
            return
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(str(self.log_dir))
        image = confusion_image(np.asarray(counts), self.label_names)
        with self.writer.as_default():
            tf.summary.image(CONFUSION_TAG, image[None], step=epoch,
                             description="validation images: row = true class, column = predicted class; "
                                         "the shade is the share of the row, the number its count")

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.writer is not None:
            self.writer.close()


def confusion_image(counts: np.ndarray, label_names: Sequence[str]) -> np.ndarray:
    """A (H, W, 3) uint8 picture of a confusion matrix: class names, each cell shaded by its share of the row and
    labelled with its count."""
    n = len(counts)
    counts = np.rint(counts).astype(int)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    top = CELL
    img = Image.new("RGB", (LABEL_WIDTH + n * CELL + 2, top + n * CELL + 2), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=11)
    draw.text((LABEL_WIDTH - 4, top // 2), "true \\ predicted", fill="grey", font=font, anchor="rm")
    for j in range(n):  # predicted classes: the first letters of each name above its column
        draw.text((LABEL_WIDTH + j * CELL + CELL // 2, top // 2), label_names[j][:4], fill="black", font=font,
                  anchor="mm")
    for i in range(n):
        draw.text((LABEL_WIDTH - 4, top + i * CELL + CELL // 2), label_names[i][:12], fill="black", font=font,
                  anchor="rm")
        for j in range(n):
            x, y, share = LABEL_WIDTH + j * CELL, top + i * CELL, float(shares[i, j])
            fill = tuple(int(255 - share * (255 - c)) for c in (31, 119, 180))  # white to blue
            draw.rectangle((x, y, x + CELL, y + CELL), fill=fill, outline=(220, 220, 220))
            draw.text((x + CELL // 2, y + CELL // 2), str(counts[i, j]), font=font, anchor="mm",
                      fill="white" if share > 0.5 else "black")
    return np.asarray(img)


def callbacks(log_dir: Path, label_names: Sequence[str]) -> list[keras.callbacks.Callback]:
    """The callbacks that write a run's logs into `log_dir`: TensorBoard event files and history.csv."""
    board = log_dir / TENSORBOARD_DIR
    return [TensorBoard(str(board)), ConfusionImages(board / "validation", label_names),
            HistoryCSV(str(log_dir / HISTORY_CSV))]
