"""The measurements bench/run.py makes, each in a fresh child process: `python -m bench.measure NAME [JSON]`.

NAME is a function below and JSON its keyword arguments; the figures come back as one JSON line, printed last.
Every import is inside the function that needs it, so a child loads only what its measurement uses.
"""

from __future__ import annotations

import json
import sys
import time


def throughput(preset_name: str, batch: int, steps: int, warm: int) -> dict:
    """Training images per second and achieved GFLOP/s of a preset, over one epoch of random images after a warm-up."""
    import numpy as np

    from deconv.config import TrainConfig, preset
    from deconv.cost import describe
    from deconv.model import build_model
    from deconv.train import batches, compile_model

    cfg = preset(preset_name)
    tc = TrainConfig(batch_size=batch, epochs=1)
    n = batch * steps
    x = np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 10, n).astype(np.uint8)
    model = compile_model(build_model(cfg), tc, steps)
    ds = batches(x, y, batch, shuffle=True, augment=tc.augment, shift=tc.shift)
    model.fit(ds.take(warm), verbose=0)  # compile and warm up
    t = time.perf_counter()
    model.fit(ds, verbose=0)
    s = time.perf_counter() - t
    return {"images_per_second": n / s, "train_gflops": n * 3 * describe(cfg).flops / s / 1e9}


def plain_keras(batch: int, steps: int) -> dict:
    """The default network trained the plain Keras way, for comparison: `model.fit` on numpy arrays, one-hot labels,
    Adam and Keras' own defaults for the rest (no tf.data pipeline, no step built ahead, no augmentation)."""
    import keras
    import numpy as np

    from deconv.config import preset
    from deconv.model import build_model

    n = batch * steps
    x = np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3)).astype(np.float32)
    y = keras.utils.to_categorical(np.random.default_rng(1).integers(0, 10, n), 10)
    model = build_model(preset("default"))
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[: batch * 3], y[: batch * 3], batch_size=batch, epochs=1, verbose=0)  # compile and warm up
    t = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    return {"images_per_second": n / (time.perf_counter() - t)}


def matmul() -> dict:
    """The machine's fp32 GFLOP/s on a 2048x2048 matrix product, best of 5."""
    import tensorflow as tf

    a = tf.random.normal((2048, 2048))
    b = tf.random.normal((2048, 2048))
    (a @ b).numpy()
    best = 0
    for _ in range(5):
        t = time.perf_counter()
        (a @ b).numpy()
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t) / 1e9)
    return {"gflops": best}


def latency() -> dict:
    """Milliseconds to classify one image (p50, p95 of 100) and a batch of 64 (median of 20), model loaded."""
    import numpy as np

    from deconv.config import preset
    from deconv.model import build_model
    from deconv.inference import predict

    model = build_model(preset("default"))
    one = np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    many = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    for _ in range(5):
        predict(model, one)
        predict(model, many)
    ones, batch = [], []
    for _ in range(100):
        t = time.perf_counter()
        predict(model, one)
        ones.append(time.perf_counter() - t)
    for _ in range(20):
        t = time.perf_counter()
        predict(model, many)
        batch.append(time.perf_counter() - t)
    ones.sort()
    batch.sort()
    return {"p50_ms": ones[50] * 1e3, "p95_ms": ones[95] * 1e3, "batch64_ms": batch[10] * 1e3}


def peak_rss() -> dict:
    """This process's peak RSS in MB after 60 training batches on 50,000 random CIFAR-shaped images."""
    import resource
    import threading
    from pathlib import Path

    import numpy as np

    from deconv.config import ModelConfig, TrainConfig
    from deconv.data import DataSource, Dataset
    from deconv.train import train

    n = 50_000
    rng = np.random.default_rng(0)
    ds = Dataset(rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8),
                 rng.integers(0, 255, (2000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 2000).astype(np.uint8),
                 [str(i) for i in range(10)], DataSource(Path("."), "synthetic"))
    stop = threading.Event()
    seen = []

    def sink(e: dict) -> None:
        seen.append(e)
        if e["event"] == "batch" and e["batch"] >= 60:
            stop.set()

    train(ModelConfig(), TrainConfig(train_size=n, epochs=1), ds, sink, stop)
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "dataset_mb": (ds.x_train.nbytes + ds.x_val.nbytes) / 2**20}


def checkerboard(run_dir: str, images: int = 64) -> dict:
    """The median checkerboard score of each upsampling block of a trained run, over its first validation images."""
    import numpy as np

    from deconv import data, explain, runs

    info = runs.read_run(run_dir)
    probe = explain.probe(runs.load_model(run_dir))
    x = data.validation_subset(info.train_config, data.get_data())[0][:images]
    scores = [explain.checkerboards(probe, image) for image in x]
    return {name: float(np.median([s[name] for s in scores])) for name in explain.upsampled_blocks(probe)}


MEASUREMENTS = {"throughput": throughput, "plain_keras": plain_keras, "matmul": matmul, "latency": latency,
                "peak_rss": peak_rss, "checkerboard": checkerboard}


if __name__ == "__main__":
    name, kwargs = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(MEASUREMENTS[name](**kwargs)))
