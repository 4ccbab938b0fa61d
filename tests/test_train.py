"""Training: events, stop within a batch, NaN handling, and real learning on CIFAR-10."""

from __future__ import annotations

import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from deconv import analysis, data, inference, train
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
    assert batch["batches"] == 15 and batch["images_per_second"] is None and batch["eta"] is None  # compiling
    measured = [e for e in events if e["event"] == "batch" and e["images_per_second"] is not None]
    assert all(e["images_per_second"] > 0 and e["eta"] >= 0 for e in measured)
    compiling = next(i for i, e in enumerate(events) if "compiling the training step" in e.get("message", ""))
    assert compiling < kinds.index("batch")  # the page says what the first, slow step is doing
    assert result.history[-1]["val_accuracy"] > 0.3  # chance is 0.1; the synthetic classes differ by colour
    assert events[0]["labels"] == ds.label_names


class FakeModel:
    stop_training = stop_evaluating = False

    def get_weights(self) -> list:
        return []


def test_speed_and_time_left_are_sent_only_once_measured_after_the_first_step(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: clock[0])
    events: list[dict] = []
    progress = train.ProgressCallback(events.append, threading.Event(), epochs=2, steps=10, batch_size=10,
                                      interval=0.0, val_images=300)
    progress.set_model(FakeModel())
    progress.on_train_begin()
    progress.on_epoch_begin(0)
    clock[0] = 60.0  # the first step compiles: a minute
    progress.on_train_batch_end(0, {"loss": 2.0, "accuracy": 0.1})
    clock[0] += 0.5
    progress.on_train_batch_end(1, {"loss": 2.0, "accuracy": 0.1})
    assert [e["images_per_second"] for e in events] == [None, None] and events[-1]["eta"] is None
    clock[0] += 0.5
    progress.on_train_batch_end(2, {"loss": 2.0, "accuracy": 0.1})
    # 20 images in 1 s of timed steps; 17 steps of 10 images left, and two validation passes of 300 images
    # estimated at 3x the training speed (5 s each) until one is measured
    assert events[-1]["images_per_second"] == pytest.approx(20.0)
    assert events[-1]["eta"] == pytest.approx(17 * 10 / 20 + 2 * 300 / 60)
    progress.on_test_begin()
    clock[0] += 2.0
    progress.on_test_end()
    assert events[-1]["event"] == "status" and "300 validation images" in events[-1]["message"]
    progress.on_epoch_begin(1)
    clock[0] += 0.5
    progress.on_train_batch_end(0, {"loss": 1.0, "accuracy": 0.5})
    assert events[-1]["eta"] == pytest.approx(9 * 10 / 20 + 1 * 2.0)  # the measured validation pass


def test_the_same_seed_trains_the_same_network(cifar_dir: Path) -> None:
    config, ds = small_run(cifar_dir, epochs=2)
    first, second = (train.train(SMALL, config, ds).history for _ in range(2))
    figures = ("loss", "accuracy", "val_loss", "val_accuracy")
    assert [[e[k] for k in figures] for e in first] == [[e[k] for k in figures] for e in second]
    other = train.train(SMALL, config.replace(seed=1), ds).history
    assert [e["loss"] for e in other] != [e["loss"] for e in first]


def test_a_warm_model_trains_as_a_new_one_would_and_only_for_its_own_settings(cifar_dir: Path) -> None:
    config, ds = small_run(cifar_dir, epochs=2, seed=3)
    warm = train.warm_up(SMALL, config.replace(seed=0), len(ds.x_train), len(ds.x_val))  # another seed: still used
    figures = ("loss", "accuracy", "val_loss", "val_accuracy")
    for _ in range(2):  # and used again: each training starts from a fresh network
        events: list[dict] = []
        warmed = train.train(SMALL, config, ds, events.append, warm=warm)
        assert not any("compiling" in e.get("message", "") for e in events)
        assert warmed.model is warm.model
    cold = train.train(SMALL, config, ds)
    assert np.allclose([[e[k] for k in figures] for e in warmed.history], [[e[k] for k in figures] for e in cold.history],
                       rtol=1e-4)
    events = []
    other = train.train(SMALL, config.replace(epochs=1), ds, events.append, warm=warm)  # another schedule: not warm
    assert other.model is not warm.model and any("compiling" in e.get("message", "") for e in events)


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
    # the last epoch's counts are those of the returned network's own (one-view) answers
    predicted = np.asarray(result.model(ds.x_val.astype(np.float32), training=False)).argmax(1)
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
    assert inference.predict(result.model, ds.x_val[:4]).shape == (4, 10)


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
    assert np.isfinite(inference.predict(result.model, ds.x_val[:4])).all()


def test_evaluate_and_confusion_matrix(cifar_dir: Path) -> None:
    config, ds = small_run(cifar_dir)
    result = train.train(SMALL, config, ds)
    metrics = inference.evaluate(result.model, ds.x_val, ds.y_val)
    one_view = np.asarray(result.model(ds.x_val.astype(np.float32), training=False))
    assert abs((one_view.argmax(1) == ds.y_val).mean() - result.history[-1]["val_accuracy"]) < 1e-6
    mirrored = (one_view + np.asarray(result.model(ds.x_val[:, :, ::-1].astype(np.float32), training=False))) / 2
    assert metrics["n"] == 100 and abs(metrics["accuracy"] - (mirrored.argmax(1) == ds.y_val).mean()) < 1e-6
    rep = analysis.report(inference.predict(result.model, ds.x_val), ds.y_val, ds.label_names)
    assert rep.matrix.shape == (10, 10) and rep.matrix.sum() == 100
    assert abs(rep.accuracy - metrics["accuracy"]) < 1e-9
    assert np.allclose(rep.per_class, np.diag(rep.matrix) / rep.matrix.sum(1))
    wrong = rep.confidently_wrong(3)
    assert all(m.predicted != ds.y_val[m.index] == m.true for m in wrong)
    assert [m.confidence for m in wrong] == sorted([m.confidence for m in wrong], reverse=True)


def test_default_preset_learns_real_cifar10_in_one_epoch(real_cifar_dir: Path) -> None:
    config = TrainConfig(train_size=2000, val_size=1000, epochs=1, batch_size=32, learning_rate=1e-3)
    ds = data.load_dataset(config, real_cifar_dir)
    result = train.train(PRESETS["default"], config, ds)
    assert result.status == "finished"
    assert result.history[-1]["val_accuracy"] >= 0.25  # chance is 0.10


@pytest.mark.parametrize("shift", [0, 2, 5])
def test_augmentation_shifts_with_reflected_edges_and_flips(shift: int) -> None:
    """Every augmented image is its original shifted by at most `shift` pixels (edges mirrored, as np.pad's
    "reflect"), flipped left-right or not; both flips and several shifts occur; the same key gives the same batch."""
    images = np.random.default_rng(0).integers(0, 256, (48, 32, 32, 3), dtype=np.uint8)
    key = np.array([7, 3], np.int64)
    out = train.shift_and_flip(images, key, shift).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="reflect")
    seen = set()
    for i in range(len(images)):
        found = [(dy, dx, flip) for dy in range(2 * shift + 1) for dx in range(2 * shift + 1) for flip in (False, True)
                 if np.array_equal(out[i], (lambda c: c[:, ::-1] if flip else c)(padded[i, dy:dy + 32, dx:dx + 32]))]
        assert found, f"image {i} is not a shifted or flipped copy of its original"
        seen.add(found[0])
    assert {flip for _, _, flip in seen} == {False, True}
    shifts = {(dy, dx) for dy, dx, _ in seen}
    assert shifts == {(0, 0)} if shift == 0 else len(shifts) > 5
    assert np.array_equal(out, train.shift_and_flip(images, key, shift).numpy())
    assert not np.array_equal(out, train.shift_and_flip(images, key + [0, 1], shift).numpy())
