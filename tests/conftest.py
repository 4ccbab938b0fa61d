"""Shared fixtures: tiny CIFAR-10 folders in the official python format, the real subset when present, and the
Streamlit app opened on synthetic data (the sample data itself is in deconv.samples)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from deconv.samples import write_cifar

if TYPE_CHECKING:
    from streamlit.testing.v1 import AppTest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")


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
        server.close_server_objects()
        st.cache_resource.clear()
        st.cache_data.clear()
        yield tmp / "runs"
        server.close_server_objects()
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


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, port: int | None = None, **settings: str) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free port with synthetic data, an empty runs folder and `settings` (DECONV_MAX_JOBS=
    "1", ...) in its environment, once healthy."""
    port = port or free_port()
    data = tmp / "data" / "cifar-10-batches-py"
    env = {**os.environ, "DECONV_DATA_DIR": str(data if data.is_dir() else write_cifar(tmp / "data", test_per_class=30)),
           "DECONV_RUNS_DIR": str(tmp / "runs"), **settings}
    log = open(tmp / "streamlit.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()  # the child has its own copy
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return proc, url
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError((tmp / "streamlit.log").read_text()[-2000:])
            time.sleep(0.2)


def stop_server(proc: subprocess.Popen) -> None:
    """End a server started by start_server."""
    proc.terminate()
    proc.wait(timeout=30)
