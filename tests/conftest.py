"""Shared fixtures: tiny CIFAR-10 folders in the official python format (from deconv.samples), and the real subset
when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deconv.samples import write_cifar

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
