"""Train a network with Keras `fit`: the input pipeline, the compiled model, progress events and stop requests."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from deconv import distribute
from deconv.config import IMAGE_SIZE, NUM_CLASSES, ModelConfig, TrainConfig, epoch_batches
from deconv.cost import describe
from deconv.data import Dataset
from deconv.inference import even_batch
from deconv.model import build_model

Event = dict[str, Any]
EventSink = Callable[[Event], None]

PIPELINE_THREADS = 2  # batches gathered and augmented at once
REPORT_INTERVAL = 0.5  # seconds between batch progress events: enough for the eye, no host sync per batch
MEASURE_SECONDS = 1.0  # the speed (and time left) is reported once this many seconds of steps were timed
TRAIN_OVER_EVAL = 3.0  # a training step costs about three forward passes: validation runs about 3x faster per image


@dataclass
class TrainResult:
    """The trained model (last good weights), per-epoch metrics, and how training ended."""

    model: keras.Model
    history: list[dict[str, float]]
    status: str  # "finished", "stopped" or "nan"
    message: str
    train_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def shift_and_flip(images: tf.Tensor, seed: tf.Tensor, shift: int) -> tf.Tensor:
    """Each image shifted by up to `shift` pixels (edges reflected) and flipped left-right with probability 1/2.

    The random draws are stateless, keyed by `seed` (the run's seed and the batch's number): the same run
    augments the same way however the pipeline's threads interleave. Every output pixel's source (shifted,
    reflected at the edge, mirrored) is computed as an index, and one gather moves the pixels: 3.5x faster
    than padding and gathering rows, then columns, then flipping, with the same result.
    """
    n, size = tf.shape(images)[0], images.shape[1]
    offsets = tf.random.stateless_uniform((n, 2), seed, 0, 2 * shift + 1, dtype=tf.int32) - shift
    flip = tf.random.stateless_uniform((n, 1, 1), seed + [0, 1]) < 0.5
    window = tf.range(size)

    def reflect(index: tf.Tensor) -> tf.Tensor:
        """Indices past an edge mirrored back inside, the edge itself not repeated (as tf.pad's REFLECT)."""
        return (size - 1) - tf.abs((size - 1) - tf.abs(index))

    rows = reflect(offsets[:, :1, None] + window[None, :, None])  # (n, size, 1)
    cols = reflect(tf.where(flip, size - 1 - window, window) + offsets[:, 1:, None])  # (n, 1, size)
    pixels = (tf.range(n)[:, None, None] * size + rows) * size + cols  # (n, size, size) into all pixels
    return tf.gather(tf.reshape(images, (-1, images.shape[3])), pixels)


def batches(x: np.ndarray, y: np.ndarray | None, batch_size: int, shuffle: bool = False, seed: int = 0,
            augment: bool = False, whole: bool = False, shift: int = 0) -> tf.data.Dataset:
    """A tf.data pipeline over uint8 images: shuffled indices, gathered, cast (and augmented: flips, shifts by up to
    `shift` pixels) per batch.

    With `whole`, a last smaller batch is dropped (the shuffle brings those images back next epoch):
    every step then has one shape, and XLA compiles the step once instead of twice.
    """
    images = tf.constant(x)
    labels = tf.constant(y) if y is not None else None

    @tf.autograph.experimental.do_not_convert  # plain tensor code: nothing for AutoGraph to convert
    def gather(idx: tf.Tensor, key: tf.Tensor) -> Any:
        xb = tf.gather(images, idx)
        if augment:
            xb = shift_and_flip(xb, tf.stack([tf.constant(seed, tf.int64), key]), shift)
        xb = tf.cast(xb, tf.float32)  # the model's Rescaling layer scales to [0, 1]
        if labels is None:
            return xb
        return xb, tf.one_hot(tf.gather(labels, idx), NUM_CLASSES)

    ds = tf.data.Dataset.range(len(x))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    # One random key per batch, drawn in order (a new sequence each epoch, the same in every run of this seed):
    # the augmentation is keyed by it, not by a random state the parallel map calls would share in any order.
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(lambda r: r // 2)
    ds = tf.data.Dataset.zip(ds.batch(batch_size, drop_remainder=whole), keys)
    # Fixed parallelism instead of tf.data's autotuner: deleting an autotuned iterator waited 2-9 s for the tuning
    # thread at the end of every `fit` (Keras opens the next epoch's iterator when an epoch ends), and the gathers
    # are about 10x faster than the training step, so two batches in flight keep it fed.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.map(gather, num_parallel_calls=PIPELINE_THREADS).prefetch(2).with_options(options)


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate, or Keras' warmup-cosine schedule over the whole run."""
    if config.schedule == "constant":
        return config.learning_rate
    total = config.epochs * steps_per_epoch
    warmup = max(1, total // 10)
    return keras.optimizers.schedules.CosineDecay(config.learning_rate / 10, decay_steps=max(1, total - warmup),
                                                  warmup_target=config.learning_rate, warmup_steps=warmup)


class ConfusionMatrix(keras.metrics.Metric):
    """Counts of (true class, predicted class) over an epoch, summed inside the compiled step: no extra pass."""

    def __init__(self, name: str = "confusion", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.counts = self.add_variable((NUM_CLASSES, NUM_CLASSES), "zeros", name="counts")

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        """Add a batch: one-hot true rows times one-hot predicted columns."""
        predicted = keras.ops.one_hot(keras.ops.argmax(y_pred, axis=-1), NUM_CLASSES, dtype=self.dtype)
        self.counts.assign_add(keras.ops.matmul(keras.ops.transpose(keras.ops.cast(y_true, self.dtype)), predicted))

    def result(self) -> Any:
        """The (10, 10) counts: row = true class, column = predicted class."""
        return keras.ops.convert_to_tensor(self.counts)


def compile_model(model: keras.Model, config: TrainConfig, steps_per_epoch: int = 1, confusion: bool = False,
                  optimizer: keras.optimizers.Optimizer | None = None) -> keras.Model:
    """Adam and categorical cross-entropy, as in the article; optionally XLA-compiled and counting a confusion matrix."""
    model.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate(config, steps_per_epoch)),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy", *([ConfusionMatrix()] if confusion else [])], jit_compile=config.xla)
    return model


class ProgressCallback(keras.callbacks.Callback):
    """Sends batch and epoch events to a sink, honours a stop request within one batch, catches NaN losses.

    Speed and time left are sent only once measured after warm-up (the first step also compiles):
    until then a batch event carries None for both.
    """

    async_safe = True  # Keras may run the batch hooks on its callback thread: no host sync in the training loop

    def __init__(self, sink: EventSink, stop: threading.Event, epochs: int, steps: int, batch_size: int,
                 interval: float = REPORT_INTERVAL, agree: Callable[[bool], bool] | None = None,
                 val_images: int = 0) -> None:
        super().__init__()
        self.sink, self.stop, self.epochs, self.steps, self.batch_size = sink, stop, epochs, steps, batch_size
        self.interval = interval
        self.agree = agree  # several workers: they stop together at an epoch's end, if any of them asked
        self.val_images = val_images
        self.nan = False
        self.stopped = False
        self.good_weights: list[np.ndarray] | None = None
        self.history: list[dict[str, float]] = []
        self.timed_images, self.timed_seconds = 0, 0.0  # training steps after the first one, for the speed
        self.val_seconds: float | None = None  # the latest validation pass, measured

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = time.perf_counter()
        self.good_weights = self.model.get_weights()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch
        self.epoch_start = self.last_report = self.last_step_end = time.perf_counter()

    def _check_stop(self, epoch_end: bool = False) -> None:
        if self.agree is not None and not epoch_end:
            return  # a worker that stopped alone would leave the others waiting for it in the next step
        if self.stop.is_set() and not self.stopped and self.agree is None:
            self.stopped = True
        if self.stopped or self.nan:
            self.model.stop_training = True
            self.model.stop_evaluating = True

    def speed(self) -> float | None:
        """Training images per second, once at least a second of steps after the first one was timed."""
        return self.timed_images / self.timed_seconds if self.timed_seconds >= MEASURE_SECONDS else None

    def seconds_left(self, steps_done: int) -> float | None:
        """Time left: the training steps at the measured speed, and a validation pass per epoch still to come."""
        rate = self.speed()
        if rate is None:
            return None
        left = (self.steps - steps_done) + (self.epochs - self.epoch - 1) * self.steps
        validation = self.val_seconds if self.val_seconds is not None else self.val_images / (TRAIN_OVER_EVAL * rate)
        return left * self.batch_size / rate + (self.epochs - self.epoch) * validation

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._check_stop()
        now = time.perf_counter()
        if self.epoch > 0 or batch > 0:  # the very first step also traces and compiles: not timed
            self.timed_images += self.batch_size
            self.timed_seconds += now - self.last_step_end
        self.last_step_end = now
        if now - self.last_report < self.interval and batch + 1 < self.steps and batch > 0:
            return
        self.last_report = now
        logs = logs or {}
        loss = float(logs.get("loss", math.nan))
        if not math.isfinite(loss):
            self.nan = True
            self._check_stop()
            return
        self.sink({"event": "batch", "epoch": self.epoch + 1, "epochs": self.epochs, "batch": batch + 1,
                   "batches": self.steps, "loss": loss, "accuracy": float(logs.get("accuracy", math.nan)),
                   "images_per_second": self.speed(), "elapsed": now - self.start, "eta": self.seconds_left(batch + 1)})

    def on_test_begin(self, logs: dict | None = None) -> None:
        self.val_start = time.perf_counter()
        if self.val_images and not self.stopped:
            self.sink({"event": "status", "message": f"epoch {self.epoch + 1}: checking it on {self.val_images:,} "
                                                     "validation images"})

    def on_test_end(self, logs: dict | None = None) -> None:
        self.val_seconds = time.perf_counter() - self.val_start  # the first pass also compiles: a little pessimistic

    def on_test_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self._check_stop()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        now = time.perf_counter()
        if not math.isfinite(float(logs.get("loss", math.nan))):  # the same on every worker: the loss is all-reduced
            self.nan = True
            self._check_stop(epoch_end=True)
            return
        record = {"epoch": epoch + 1, "seconds": now - self.epoch_start, "elapsed": now - self.start}
        record.update({k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs})
        if self.stopped:  # validation was cut short: its figures would mislead
            record = {k: v for k, v in record.items() if not k.startswith("val_")}
            record["partial"] = True
        self.history.append(record)
        self.good_weights = self.model.get_weights()
        event = {"event": "epoch", "epochs": self.epochs, **record}
        if "val_confusion" in logs and not self.stopped:  # the validation confusion matrix, for the live charts
            event["val_confusion"] = np.rint(np.asarray(logs["val_confusion"])).astype(int).tolist()
        self.sink(event)
        if self.agree is not None and self.agree(self.stop.is_set()):
            self.stopped = True
            self._check_stop(epoch_end=True)


@dataclass
class WarmModel:
    """A compiled network whose training and validation steps were traced ahead (with XLA: compiled), for one setting."""

    key: tuple[Any, ...]
    model: keras.Model


def warm_key(model_config: ModelConfig, train_config: TrainConfig, train_images: int, val_images: int) -> tuple[Any, ...]:
    """What a warm model must share with a training to serve it: everything its compiled steps depend on (not the seed)."""
    batch_size, steps = epoch_batches(train_images, train_config.batch_size)
    return model_config, train_config.replace(seed=0), batch_size, steps, _val_batch(model_config, batch_size, val_images)


def _val_batch(model_config: ModelConfig, batch_size: int, val_images: int) -> int:
    """The validation batch: one shape that divides the images, smaller for a big network."""
    return even_batch(val_images, min(max(batch_size, 100), describe(model_config).eval_batch()))


def warm_up(model_config: ModelConfig, train_config: TrainConfig, train_images: int, val_images: int) -> WarmModel:
    """Build and compile the network and run one step of training and of validation on blank images, so that a
    training with these settings starts at once (the app's workers do this while they wait for a job)."""
    key = warm_key(model_config, train_config, train_images, val_images)
    batch_size, steps, val_batch = key[2], key[3], key[4]
    model = compile_model(build_model(model_config), train_config, steps, confusion=True)
    distribute.build_from_shapes(model)
    blank = np.zeros((batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    labels = np.zeros(batch_size, np.uint8)
    model.fit(batches(blank, labels, batch_size, shuffle=True, augment=train_config.augment, whole=True,
                      shift=train_config.shift),
              validation_data=batches(blank[:val_batch], labels[:val_batch], val_batch), epochs=1, verbose=0,
              shuffle=False)
    return WarmModel(key, model)


def _fresh(model: keras.Model, model_config: ModelConfig) -> keras.Model:
    """A warm model reset to the weights a new build would get now (the seed was just set), its optimizer to zero."""
    model.set_weights(build_model(model_config).get_weights())
    for variable in model.optimizer.variables:  # the step count and the moments
        variable.assign(tf.zeros_like(variable))
    return model


def train(model_config: ModelConfig, train_config: TrainConfig, data: Dataset,
          sink: EventSink | None = None, stop: threading.Event | None = None,
          callbacks: list[keras.callbacks.Callback] | None = None,
          strategy: tf.distribute.Strategy | None = None, warm: WarmModel | None = None) -> TrainResult:
    """Build and fit the network on `data` (under `strategy` if given); `stop.set()` ends it after the current batch.

    A `warm` model made by `warm_up` with the same settings (but any seed) is used instead of a new one: its steps
    are compiled already, and it starts from the same weights a new one would.
    """
    sink = sink or (lambda event: None)
    stop = stop or threading.Event()
    keras.utils.set_random_seed(train_config.seed)
    batch_size, steps = epoch_batches(len(data.x_train), train_config.batch_size)  # the global batch, split by a strategy
    replicas = distribute.replicas(strategy)
    # Measured with TF 2.21: an XLA step fails over several local devices (a variable on another device) and
    # across CPU workers (no XLA collectives on CPU); one replica compiles as without a strategy.
    xla = train_config.xla and replicas == 1
    if xla != train_config.xla:
        sink({"event": "status", "message": f"XLA is off: one XLA-compiled step cannot span the {replicas} replicas"})
    ready = (warm is not None and strategy is None
             and warm.key == warm_key(model_config, train_config, len(data.x_train), len(data.x_val)))
    if ready:
        model = _fresh(warm.model, model_config)
    else:
        with distribute.scope(strategy):
            model = compile_model(build_model(model_config), train_config.replace(xla=xla), steps,
                                  confusion=not strategy)
    train_data = batches(data.x_train, data.y_train, batch_size, shuffle=True, seed=train_config.seed,
                         augment=train_config.augment, whole=True, shift=train_config.shift)
    val_data = batches(data.x_val, data.y_val, _val_batch(model_config, batch_size, len(data.x_val)))
    start = time.perf_counter()  # building the optimizer and metrics counts as training time
    train_data, val_data, agree = distribute.prepare(model, strategy, train_data, val_data)
    progress = ProgressCallback(sink, stop, train_config.epochs, steps, batch_size, agree=agree,
                                val_images=len(data.x_val))
    sink({"event": "start", "epochs": train_config.epochs, "batches": steps, "train_size": len(data.x_train),
          "val_size": len(data.x_val), "params": model.count_params(), "replicas": replicas,
          "labels": list(data.label_names)})
    sink({"event": "status", "message": f"running the first batch of {batch_size} images" if ready else
                                        f"compiling the training step{' with XLA' if xla else ''} and running the "
                                        f"first batch of {batch_size} images"})
    model.fit(train_data, validation_data=val_data, epochs=train_config.epochs,
              callbacks=[*(callbacks or []), progress], shuffle=False, verbose=0)  # the pipeline shuffles
    # (the caller's callbacks first: at an epoch's end they see model.stop_training as the epoch left it, before
    # ProgressCallback's end-of-epoch agreement between workers)
    seconds = time.perf_counter() - start
    if strategy:
        model = distribute.single_device_copy(
            model, lambda: compile_model(build_model(model_config), train_config.replace(xla=xla), steps))
    else:  # the saved model's compile config then names Keras' own objects only: plain Keras loads it
        compile_model(model, train_config, steps, optimizer=model.optimizer)
    return _result(model, progress, train_config, seconds, {"replicas": replicas, "xla": xla})


def _result(model: keras.Model, progress: ProgressCallback, config: TrainConfig, seconds: float,
            extra: dict[str, Any]) -> TrainResult:
    """How the training ended, with the last good weights after a NaN loss."""
    if progress.nan:
        if progress.good_weights is not None:
            model.set_weights(progress.good_weights)
        return TrainResult(model, progress.history, "nan",
                           f"the loss became NaN in epoch {progress.epoch + 1}; kept the weights from before it. "
                           f"Try a smaller learning rate than {config.learning_rate:g}.", seconds, extra)
    if progress.stopped:
        return TrainResult(model, progress.history, "stopped",
                           f"stopped by request in epoch {progress.epoch + 1} of {config.epochs}", seconds, extra)
    return TrainResult(model, progress.history, "finished",
                       f"trained {config.epochs} epoch{'s' if config.epochs > 1 else ''}", seconds, extra)
