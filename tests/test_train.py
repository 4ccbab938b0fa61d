"""Training: events, stop within a batch, NaN handling, and real learning on CIFAR-10."""

from __future__ import annotations

import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from deconv import analysis, data, train
from deconv.config import PRESETS, ModelConfig, TrainConfig

SMALL = ModelConfig(widths=(8,))


def small_run(cifar_dir: Path, **changes: object) -> tuple[TrainConfig, data.Dataset]:
    config = TrainConfig(**{"train_size": 300, "val_size": 100, "epochs": 3, "batch_size": 20, **changes})
    return config, data.load_dataset(config, cifar_dir)


def test_events_and_history(cifar_dir: Path) -> None:
    config, ds = small_run(cifar_dir)
    events: list[dict] = []
    result = train.train(SMALL, config, ds, events.append)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds.count("epoch") == 3 and "batch" in kinds
    assert result.status == "finished" and [h["epoch"] for h in result.history] == [1, 2, 3]
    for h in result.history:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(h)
    batch = next(e for e in events if e["event"] == "batch")
    assert batch["batches"] == 15 and batch["images_per_second"] > 0 and batch["eta"] >= 0
    assert result.history[-1]["val_accuracy"] > 0.3  # chance is 0.1; the synthetic classes differ by colour
    assert events[0]["labels"] == ds.label_names


def test_every_epoch_reports_the_validation_confusion_matrix(cifar_dir: Path) -> None:
    config, ds = small_run(cifar_dir)
    events: list[dict] = []
    result = train.train(SMALL, config, ds, events.append)
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 3
    for e in epochs:
        matrix = np.array(e["val_confusion"])
        assert matrix.shape == (10, 10) and matrix.sum() == 100
        assert np.trace(matrix) / 100 == pytest.approx(e["val_accuracy"], abs=1e-6)
        assert np.bincount(ds.y_val, minlength=10).tolist() == matrix.sum(1).tolist()  # row = true class
    # the last epoch's counts are those of the returned model's predictions
    predicted = train.predict(result.model, ds.x_val).argmax(1)
    assert epochs[-1]["val_confusion"] == analysis.confusion_matrix(ds.y_val, predicted).tolist()
    assert "val_confusion" not in result.history[-1]  # the saved history stays scalar
    assert result.model.get_compile_config()["metrics"] == ["accuracy"]  # plain Keras loads the saved model


def test_stop_takes_effect_within_one_batch_and_keeps_the_model(cifar_dir: Path) -> None:
    config, ds = small_run(cifar_dir, epochs=50)
    stop = threading.Event()
    batches_seen = []

    class CountBatches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            batches_seen.append(batch)
            if len(batches_seen) == 20:
                stop.set()

    result = train.train(SMALL, config, ds, stop=stop, callbacks=[CountBatches()])
    assert result.status == "stopped" and "epoch 2 of 50" in result.message
    assert len(batches_seen) <= 21
    assert result.history[-1].get("partial") and "val_accuracy" not in result.history[-1]
    assert train.predict(result.model, ds.x_val[:4]).shape == (4, 10)


def test_nan_loss_ends_training_and_restores_the_last_good_weights(cifar_dir: Path) -> None:
    config, ds = small_run(cifar_dir, epochs=5)

    class PoisonEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            if epoch == 1:
                kernel = self.model.get_layer("block1_conv").kernel
                kernel.assign(np.full(kernel.shape, np.nan, "float32"))

    result = train.train(SMALL, config, ds, callbacks=[PoisonEpoch2()])
    assert result.status == "nan" and "smaller learning rate" in result.message
    assert len(result.history) == 1
    assert all(np.isfinite(w).all() for w in result.model.get_weights())
    assert np.isfinite(train.predict(result.model, ds.x_val[:4])).all()


def test_evaluate_and_confusion_matrix(cifar_dir: Path) -> None:
    config, ds = small_run(cifar_dir)
    result = train.train(SMALL, config, ds)
    metrics = train.evaluate(result.model, ds.x_val, ds.y_val)
    assert metrics["n"] == 100 and abs(metrics["accuracy"] - result.history[-1]["val_accuracy"]) < 1e-6
    rep = analysis.report(train.predict(result.model, ds.x_val), ds.y_val, ds.label_names)
    assert rep.matrix.shape == (10, 10) and rep.matrix.sum() == 100
    assert abs(rep.accuracy - metrics["accuracy"]) < 1e-9
    assert np.allclose(rep.per_class, np.diag(rep.matrix) / rep.matrix.sum(1))
    wrong = rep.confidently_wrong(3)
    assert all(p != ds.y_val[i] for i, p, _ in wrong) and [c for *_, c in wrong] == sorted([c for *_, c in wrong], reverse=True)


def test_default_preset_learns_real_cifar10_in_one_epoch(real_cifar_dir: Path) -> None:
    config = TrainConfig(train_size=2000, val_size=1000, epochs=1, batch_size=32, learning_rate=1e-3)
    ds = data.load_dataset(config, real_cifar_dir)
    result = train.train(PRESETS["default"], config, ds)
    assert result.status == "finished"
    assert result.history[-1]["val_accuracy"] >= 0.25  # chance is 0.10
