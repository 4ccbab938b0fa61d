"""The training script to take home: plain Keras, the same network as the app builds, and it runs."""

from __future__ import annotations

import ast
import re
import runpy
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from deconv import data, samples
from deconv.config import PRESETS, ModelConfig, TrainConfig
from deconv.model import build_model
from deconv.script import SCRIPT_NAME, standalone_script

SETTINGS = {
    "default": (ModelConfig(), TrainConfig()),
    "article": (PRESETS["article"], TrainConfig(epochs=3, batch_size=32)),
    "resize upsampling, flatten head, no skips, plain training": (
        ModelConfig(upsample="resize", head="flatten", skips=False, widths=(16, 32), mirror_predict=False),
        TrainConfig(schedule="constant", augment=False, xla=False, label_smoothing=0.0)),
    "block deconvs, no skips, two decoder blocks": (
        ModelConfig(widths=(16, 24, 32), block_deconvs=True, deconv_kernel=4, skips=False, up_blocks=2,
                    downsample="stride", pool_size=1),
        TrainConfig(batch_size=32)),
    "resize block deconvs of stride 2, skips": (
        ModelConfig(widths=(16, 32), block_deconvs=True, deconv_stride=2, upsample="resize", up_blocks=1),
        TrainConfig(xla=False)),
}
TRAINED = ["default", "resize upsampling, flatten head, no skips, plain training"]  # every training option both ways
# keras.datasets.cifar10.load_data checks the sha256 of the whole 163 MB archive before it reads its cache, and
# wants all five training batches of 10,000 images: a small made-up cache cannot stand in for it. The script runs
# unchanged with that one function answering small synthetic CIFAR-10 arrays in its shapes.
RUNNER = """import runpy, sys
import keras, numpy as np
d = np.load(sys.argv[1])
keras.datasets.cifar10.load_data = lambda: ((d["x_train"], d["y_train"]), (d["x_test"], d["y_test"]))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def script_module(path: Path) -> dict:
    """The script's functions and constants, as importing it gives them (its training runs only as __main__)."""
    return runpy.run_path(str(path), run_name="deconv_lab_train")


@pytest.mark.parametrize("name", SETTINGS)
def test_the_script_is_plain_keras_and_builds_the_apps_network(name: str, tmp_path: Path) -> None:
    model_config, train_config = SETTINGS[name]
    text = standalone_script(model_config, train_config)
    tree = ast.parse(text)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"argparse", "keras", "numpy", "tensorflow"} and "deconv." not in text
    path = tmp_path / SCRIPT_NAME
    path.write_text(text)
    module = script_module(path)
    assert module["WIDTHS"] == model_config.widths and module["EPOCHS"] == train_config.epochs
    theirs, ours = module["build_model"](), build_model(model_config)
    assert [(layer.name, layer.output.shape) for layer in theirs.layers] == [
        (layer.name, layer.output.shape) for layer in ours.layers]
    assert theirs.count_params() == ours.count_params()


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic CIFAR-10 (300 training, 100 test images) as arrays in keras.datasets.cifar10's shapes."""
    tmp = tmp_path_factory.mktemp("cifar")
    source = data.DataSource(samples.write_cifar(tmp), "directory")
    (x_train, y_train), (x_test, y_test) = data.read_train(source), data.read_test(source)
    path = tmp / "cifar10.npz"
    np.savez(path, x_train=x_train, y_train=y_train[:, None], x_test=x_test, y_test=y_test[:, None])
    return path


@pytest.mark.parametrize("name", TRAINED)
def test_the_script_trains_prints_its_accuracy_and_saves_a_model(name: str, small_cifar: Path, tmp_path: Path) -> None:
    model_config, train_config = SETTINGS[name]
    path = tmp_path / SCRIPT_NAME
    path.write_text(standalone_script(model_config, train_config))
    out = tmp_path / "model.keras"
    done = subprocess.run([sys.executable, "-c", RUNNER, str(small_cifar), str(path), "--epochs", "1",
                           "--train-size", "300", "--val-size", "100", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr[-3000:]
    params = int(re.search(r"^parameters: (\d+)$", done.stdout, re.M).group(1))
    assert params == build_model(model_config).count_params()
    accuracy = float(re.search(r"^validation accuracy: ([\d.]+) on 100 images$", done.stdout, re.M).group(1))
    assert 0 <= accuracy <= 1 and "val_accuracy" in done.stdout  # a line per epoch
    mirrored = re.search(r"^validation accuracy with the mirror images: ([\d.]+) on 100 images$", done.stdout, re.M)
    assert bool(mirrored) == model_config.mirror_predict and (not mirrored or 0 <= float(mirrored.group(1)) <= 1)
    saved = keras.models.load_model(out)  # plain Keras loads what it saved
    assert saved.count_params() == params
    assert saved.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0).shape == (2, 10)
