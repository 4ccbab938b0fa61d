"""Training under a tf.distribute strategy: choosing it, readying a model and its data for it, and Keras' workarounds.

Without a strategy every function here is a no-op or a plain pass-through, so `deconv.train.train`
reads the same either way. TensorFlow is imported only by the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
from typing import TYPE_CHECKING, Any, Callable, ContextManager

from deconv.config import IMAGE_SIZE, NUM_CLASSES

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multiworker")
TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def tf_config_problem(text: str | None) -> str | None:
    """What is wrong with TF_CONFIG for multi-worker training, or None when it names a cluster and this worker in it."""
    if not text or not text.strip():
        return "TF_CONFIG is not set"
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        return f"TF_CONFIG is not valid JSON ({e})"
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or ("worker" not in cluster and "chief" not in cluster):
        return 'TF_CONFIG has no "cluster" with a "worker" list'
    for job, hosts in cluster.items():
        if job not in ("chief", "worker"):
            return f'TF_CONFIG cluster has a "{job}" job: multi-worker training uses only "chief" and "worker"'
        addresses = hosts if isinstance(hosts, list) else []
        if not addresses or not all(isinstance(a, str) and re.fullmatch(r"\S+:\d+", a) for a in addresses):
            return f'TF_CONFIG cluster "{job}" must be a list of "host:port" addresses'
    if len(cluster.get("chief", [])) > 1:
        return 'TF_CONFIG cluster "chief" must hold one address'
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        types = " or ".join(map(json.dumps, cluster))
        return f'TF_CONFIG "task" must name this worker: {{"type": {types}, "index": N}}'
    index, count = task.get("index", 0), len(cluster[task["type"]])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        return f'TF_CONFIG task index {json.dumps(index)} is not a whole number from 0 to {count - 1}'
    return None


def make_strategy(name: str) -> tf.distribute.Strategy | None:
    """TensorFlow's distribution strategy called `name`, or None for "none"."""
    import tensorflow as tf

    if name == "mirrored":  # all local GPUs, else all local CPUs (MirroredStrategy() alone would take only CPU:0)
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multiworker":  # the cluster and this worker's place in it come from TF_CONFIG
        on_term = signal.getsignal(signal.SIGTERM)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        finally:  # its runtime takes SIGTERM for its own preemption notice: a stop request must still reach us
            if on_term is not None and threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, on_term)
    return None


def replicas(strategy: tf.distribute.Strategy | None) -> int:
    """How many copies of the model train in step: 1 without a strategy."""
    return strategy.num_replicas_in_sync if strategy else 1


def scope(strategy: tf.distribute.Strategy | None) -> ContextManager[Any]:
    """The strategy's scope (variables made in it are mirrored), or a context that does nothing."""
    return strategy.scope() if strategy else contextlib.nullcontext()


def saves(strategy: tf.distribute.Strategy | None) -> bool:
    """Whether this process saves the run: TensorFlow's rule, only the chief worker does."""
    return strategy is None or strategy.extended.should_checkpoint


def build_from_shapes(model: keras.Model) -> None:
    """Build the compiled model's metrics and optimizer from the input shapes, before Keras' `fit` would."""
    # Without a strategy, Keras 3.15 creates them while tracing the first step, and a tf.function that created variables
    # is traced a second time: building them first saves that trace (about 1.5 s of the default's first step).
    # Under a strategy, Keras 3.15's `fit` reads a first batch to build them, then restarts the pipeline, whose shuffle
    # moves on to its next order: the run would see other batches than without a strategy. Under a multi-worker
    # strategy it fails outright, reducing the (x, y) batch as one nest (keras-team/keras#20585).
    import keras

    inputs = (keras.KerasTensor((None, IMAGE_SIZE, IMAGE_SIZE, 3)), keras.KerasTensor((None, NUM_CLASSES)))
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=inputs)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def _sharded_by_element(ds: tf.data.Dataset) -> tf.data.Dataset:
    """The pipeline sharded by element: every worker builds the same global batches and keeps its share of each."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _metrics_as_vectors(model: keras.Model) -> None:
    """Let Keras 3.15 average the steps' metrics across workers: it reduces over axis 0, which a scalar lacks."""
    import tensorflow as tf

    for name in ("train_step", "test_step"):
        step = getattr(model, name)
        setattr(model, name, lambda data, step=step: {k: tf.reshape(v, [1]) for k, v in step(data).items()})


def _any_worker_asks(strategy: tf.distribute.Strategy) -> Callable[[bool], bool]:
    """A vote across workers: whether any of them asks (a collective, so every worker votes at the same point)."""
    import tensorflow as tf

    def vote(asked: bool) -> bool:
        return float(strategy.reduce("SUM", strategy.run(lambda: tf.constant(float(asked))), axis=None)) > 0
    return vote


def prepare(model: keras.Model, strategy: tf.distribute.Strategy | None, train_data: tf.data.Dataset,
            val_data: tf.data.Dataset) -> tuple[tf.data.Dataset, tf.data.Dataset, Callable[[bool], bool] | None]:
    """Ready a compiled model and its pipelines for `fit`; the third value is a stop vote when workers must agree."""
    import keras

    build_from_shapes(model)
    if strategy is None:
        return train_data, val_data, None
    if strategy.num_replicas_in_sync > 1:  # batch statistics over the global batch, as on one device
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    if strategy.num_replicas_in_sync <= len(strategy.extended.worker_devices):  # all replicas in this process
        return train_data, val_data, None
    _metrics_as_vectors(model)
    return _sharded_by_element(train_data), _sharded_by_element(val_data), _any_worker_asks(strategy)


def single_device_copy(trained: keras.Model, rebuild: Callable[[], keras.Model]) -> keras.Model:
    """A model trained under a strategy, rebuilt outside it (`rebuild` makes it compiled) with its weights and
    optimizer state: under a strategy, Keras' predict_on_batch repeats each row once per replica."""
    model = rebuild()
    model.set_weights(trained.get_weights())
    model.optimizer.build(model.trainable_variables)
    model.optimizer.set_weights([v.numpy() for v in trained.optimizer.variables])
    return model
