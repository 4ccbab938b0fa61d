"""Shared fixtures: tiny CIFAR-10 folders in the official python format, and the real subset when present."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def synthetic_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, 3072) rows in CIFAR's channel-first layout; each class has its own colour, so it can be learnt."""
    rng = np.random.default_rng(seed)
    colours = np.stack([np.linspace(20, 235, 10)[np.roll(np.arange(10), k)] for k in (0, 3, 7)], axis=1)
    img = colours[labels][:, :, None, None] + rng.normal(0, 25, (len(labels), 3, 32, 32))
    return np.clip(img, 0, 255).astype(np.uint8).reshape(len(labels), -1)


def write_batch(path: Path, labels: np.ndarray, seed: int) -> None:
    """One batch file as the official dataset writes it (bytes keys, numpy data)."""
    d = {b"batch_label": b"synthetic", b"labels": [int(v) for v in labels],
         b"data": synthetic_images(labels, seed), b"filenames": [b"img_%d.png" % i for i in range(len(labels))]}
    path.write_bytes(pickle.dumps(d, protocol=4))


def write_cifar(root: Path, train_per_class: int = 30, test_per_class: int = 10, train: bool = True) -> Path:
    """A cifar-10-batches-py folder under root with shuffled synthetic images; returns the folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    if train:
        write_batch(folder / "data_batch_1", rng.permutation(np.repeat(np.arange(10), train_per_class)), 1)
    write_batch(folder / "test_batch", rng.permutation(np.repeat(np.arange(10), test_per_class)), 2)
    meta = {b"num_cases_per_batch": 10000, b"label_names": [n.encode() for n in LABELS], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=4))
    return folder


@pytest.fixture
def cifar_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small synthetic CIFAR folder, made the default data source."""
    folder = write_cifar(tmp_path / "data")
    monkeypatch.setenv("DECONV_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def real_cifar_dir() -> Path:
    """The real CIFAR-10 folder named by DECONV_DATA_DIR (skips when unset)."""
    env = os.environ.get("DECONV_DATA_DIR")
    if not env:
        pytest.skip("DECONV_DATA_DIR is not set: point it at a CIFAR-10 cifar-10-batches-py folder to run this test")
    return Path(env)
