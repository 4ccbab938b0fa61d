"""Shared fixtures: tiny CIFAR-10 folders in the official python format, the real subset when present, and the
Streamlit app opened on synthetic data (the sample data itself is in deconv.samples)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from deconv.samples import write_cifar

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

APP = str(Path(__file__).resolve().parent.parent / "app.py")


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


@pytest.fixture(scope="module")
def app_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The app's server-wide state, fresh for each test module: synthetic data, an empty runs folder (yielded)."""
    import streamlit as st

    from pages.parts import server

    tmp = tmp_path_factory.mktemp("app")
    with pytest.MonkeyPatch.context() as env:  # monkeypatch itself lives for one test only
        env.setenv("DECONV_DATA_DIR", str(write_cifar(tmp / "data", test_per_class=30)))
        env.setenv("DECONV_RUNS_DIR", str(tmp / "runs"))
        st.cache_resource.clear()
        st.cache_data.clear()
        yield tmp / "runs"
        server.job_manager().shutdown()
        st.cache_resource.clear()
        st.cache_data.clear()


@pytest.fixture
def page(app_env: Path) -> Callable[[str], AppTest]:
    """Opens the app in app_env's state and switches to a page: `page("pages/train.py")`."""
    from streamlit.testing.v1 import AppTest

    def open_page(name: str) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=120).run()
        return at.switch_page(name).run()

    return open_page
