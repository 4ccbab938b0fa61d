"""`train --strategy`: mirrored over two logical CPUs, two local workers, and TF_CONFIG errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deconv import runs
from deconv.distribute import tf_config_problem
from deconv.samples import write_cifar

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh process: the CPU is split into two logical devices before TensorFlow starts, so that
# MirroredStrategy has two replicas; the test process's own TensorFlow state stays untouched. One strategy
# serves both mirrored runs: a second MirroredStrategy in one process reuses its collective keys.
MIRRORED = """
import json, sys, threading
import keras
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from deconv import data, distribute, inference, train
from deconv.config import ModelConfig, TrainConfig

class Losses(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.losses = []
    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))

config = TrainConfig.from_dict(json.loads(sys.argv[2]))
dataset, strategy, out = data.load_dataset(config, sys.argv[1]), distribute.make_strategy("mirrored"), {}
for name in ("none", "mirrored"):  # both without XLA: asked for, the mirrored run turns it off and says so
    events, losses = [], Losses()
    # one view when predicting: the evaluation below is then the last epoch's validation, recomputed
    result = train.train(ModelConfig(widths=(8, 16), mirror_predict=False), config.replace(xla=name == "mirrored"), dataset,
                         events.append, callbacks=[losses], strategy=strategy if name == "mirrored" else None)
    start = next(e for e in events if e["event"] == "start")
    out[name] = {"status": result.status, **result.extra, "val_accuracy": result.history[-1]["val_accuracy"],
                 "evaluated": inference.evaluate(result.model, dataset.x_val, dataset.y_val)["accuracy"],
                 "losses": losses.losses, "epoch_losses": [h["loss"] for h in result.history],
                 "kinds": [e["event"] for e in events], "batches": start["batches"],
                 "messages": [e["message"] for e in events if e["event"] == "status"]}

stop, seen = threading.Event(), []
class StopAtBatch3(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        seen.append(batch)
        if len(seen) == 3:
            stop.set()
result = train.train(ModelConfig(widths=(8,)), config.replace(epochs=50), dataset, stop=stop,
                     callbacks=[StopAtBatch3()], strategy=strategy)
rows = len(inference.predict(result.model, dataset.x_val[:5]))  # Keras repeats rows under a strategy; not here
out["stopped"] = {"status": result.status, "batches_seen": len(seen), "rows": rows}
print(json.dumps(out))
"""


def python(code: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_mirrored_on_two_cpus_learns_as_well_as_one_device(tmp_path: Path) -> None:
    real = os.environ.get("DECONV_DATA_DIR")  # real CIFAR-10 is the harder test; else the synthetic colours
    data_dir = real or str(write_cifar(tmp_path / "data"))
    sizes = {"train_size": 1000, "val_size": 500} if real else {"train_size": 300, "val_size": 100}
    r = python(MIRRORED, data_dir, json.dumps({**sizes, "epochs": 2, "batch_size": 32, "augment": False}))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    one, two = out["none"], out["mirrored"]
    assert (one["replicas"], one["xla"], two["replicas"], two["xla"]) == (1, False, 2, False)
    assert not any("XLA" in m for m in one["messages"]) and any("XLA is off" in m for m in two["messages"])  # said
    assert one["status"] == two["status"] == "finished"
    # The same batches, weights and global batch statistics: the two replicas train as the one device does.
    assert one["losses"][:5] == pytest.approx(two["losses"][:5], rel=1e-3)
    assert one["epoch_losses"] == pytest.approx(two["epoch_losses"], rel=0.01)
    assert one["val_accuracy"] > 0.2 and two["val_accuracy"] > 0.2  # chance is 0.1
    assert abs(one["val_accuracy"] - two["val_accuracy"]) <= 0.05, (one["val_accuracy"], two["val_accuracy"])
    assert abs(two["evaluated"] - two["val_accuracy"]) < 0.01  # the returned model holds the trained weights
    assert one["batches"] == two["batches"] == sizes["train_size"] // 32  # a global batch, split over replicas
    assert two["kinds"].count("epoch") == 2 and "batch" in two["kinds"]
    stopped = out["stopped"]
    assert stopped.pop("batches_seen") in (3, 4)  # the stop is seen at the end of the batch after it was asked
    assert stopped == {"status": "stopped", "rows": 5}


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_local_workers_stop_together_and_only_the_chief_saves(tmp_path: Path) -> None:
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
    data_dir = write_cifar(tmp_path / "data")
    procs = []
    for index in (0, 1):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "deconv", "train", "--strategy", "multiworker", "--data-dir", str(data_dir),
             "--widths", "8", "--train-size", "300", "--val-size", "100", "--batch-size", "20", "--epochs", "200",
             "--out", str(tmp_path / "runs" / f"worker{index}"), "--progress", str(tmp_path / f"{index}.jsonl")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        progress, deadline = tmp_path / "1.jsonl", time.time() + 180
        while time.time() < deadline and (not progress.exists() or '"start"' not in progress.read_text()):
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)  # one worker asks during epoch 1: both stop at its end
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "Traceback" not in outputs[0][1] + outputs[1][1]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["worker0"]  # no run, nor a temporary one, from worker 1
    info = runs.read_run(tmp_path / "runs" / "worker0")
    assert (info.meta.strategy, info.meta.replicas, info.meta.status) == ("multiworker", 2, "stopped")
    assert len(info.history) == 1 and "val_accuracy" in info.history[0]  # the whole epoch, validated
    assert runs.load_model(info.path).output_shape == (None, 10)
    chief, other = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert chief["run_dir"] == str(info.path) and chief["epochs"] == len(info.history)
    assert other["run_dir"] is None and "chief" in other["message"] and other["status"] == "stopped"


@pytest.mark.parametrize("value, words", [
    (None, "TF_CONFIG is not set"),
    ("{cluster", "not valid JSON"),
    ('{"cluster": {"ps": ["a:1"]}}', 'no "cluster" with a "worker" list'),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}', 'a "ps" job'),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', '"host:port"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', '"task" must name this worker'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "from 0 to 1"),
])
def test_tf_config_problems_are_named(value: str | None, words: str) -> None:
    assert words in (tf_config_problem(value) or "")


def test_tf_config_for_a_chief_and_a_worker_is_accepted() -> None:
    text = '{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}}'
    assert tf_config_problem(text) is None


@pytest.mark.parametrize("value", [None, '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 5}}'])
def test_multiworker_without_a_usable_tf_config_exits_2_and_says_what_to_set(value: str | None, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | ({"TF_CONFIG": value} if value else {})
    r = subprocess.run([sys.executable, "-m", "deconv", "train", "--strategy", "multiworker", "--out",
                        str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: TF_CONFIG") and '"task": {"type": "worker", "index": 0}' in r.stderr
    assert not (tmp_path / "run").exists()
