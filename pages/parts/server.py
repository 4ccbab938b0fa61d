"""What one server process shares among its sessions: the job manager, loaded models, the heavy imports.

They live in this module, not in Streamlit's resource cache: any visitor can empty that cache with a `clear_cache`
message on the websocket, and a second job manager would bypass the training-slot cap, lose the running jobs and
(with Ray) shut the cluster connection down. Here there is one of each per server process, whatever a visitor sends.
"""

from __future__ import annotations

import atexit
import gc
import sys
import threading
from pathlib import Path
from typing import Any

import streamlit as st

import numpy as np

from deconv import runs
from deconv.computations import Computations
from deconv.memo import Memo
from pages.parts import state

MODEL_TTL_SECONDS = 900  # a loaded model nobody has used for this long is released (the article's holds 340 MB)
KERAS_PAGES = {"train", "classify", "runs"}  # url paths of the pages that import Keras
_keras_import = threading.Lock()
_manager_lock = threading.Lock()
_manager: Any = None  # the one JobManager of this server process (see job_manager)
_models: Memo[Any] = Memo(max_entries=2, ttl=MODEL_TTL_SECONDS)  # loaded models, per run file version
# What one visitor's page computed on a run (answers, maps, top patches) serves the next (deconv.computations).
COMPUTED = Computations()
TRAINING_IMAGES: Memo[np.ndarray] = Memo(max_entries=2)  # the top-patch search images of the last two runs (6 MB each)


def import_keras() -> None:
    """Import Keras (and TensorFlow) one session thread at a time.

    Two sessions importing it for the first time at once can hit a deadlock inside its circular
    imports, which leaves the module half-initialised for the server's whole life (seen under load:
    every later model load failed). Once imported, this is an uncontended lock and a dict lookup.
    """
    with _keras_import:
        import keras  # noqa: F401


def freeze_heavy_imports() -> None:
    """Exclude TensorFlow's objects from garbage collection once it is imported in the server.

    Streamlit runs a full collection, and Keras' clear_session another, after every script run,
    fragment reruns included; with TensorFlow loaded each took about 0.3 s here, so a live view
    refreshing every second cost most of a core. After gc.freeze() they take milliseconds.
    """
    if "tensorflow" in sys.modules and not getattr(freeze_heavy_imports, "done", False):
        gc.collect()
        gc.freeze()
        freeze_heavy_imports.done = True  # type: ignore[attr-defined]


def session_id() -> str:
    """This browser session's id (owner of its training job)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx else "local"


def _session_alive(owner: str) -> bool:
    """Whether a browser session still exists (always true outside a running server)."""
    from streamlit import runtime

    return not runtime.exists() or runtime.get_instance().is_active_session(owner)


def job_manager() -> Any:
    """The one JobManager of this server, shared by all sessions on purpose: it holds the training-slot cap and,
    with DECONV_JOBS naming a Ray cluster, the server's one connection to it."""
    global _manager
    with _manager_lock:
        if _manager is None:
            from deconv.jobs import JobManager, jobs_backend_from_env, max_jobs_from_env

            runs.sweep_leftovers(runs_dir())  # saves and imports a crash left half-done
            _manager = JobManager(runs_dir() / ".jobs", max_jobs=max_jobs_from_env(), is_alive=_session_alive,
                                  backend=jobs_backend_from_env())  # DECONV_JOBS: local workers, or a Ray cluster
            atexit.register(_manager.shutdown)
        return _manager


def close_server_objects() -> None:
    """Stop the job manager and forget it, the loaded models and what was computed (the server's own code: tests,
    shutdown)."""
    global _manager
    with _manager_lock:
        if _manager is not None:
            _manager.shutdown()
            atexit.unregister(_manager.shutdown)
        _manager = None
    _models.clear()
    TRAINING_IMAGES.clear()
    COMPUTED.close()  # its worker ends after its task; a later heavy task starts another
    COMPUTED.clear()


def runs_dir() -> Path:
    """Where runs are saved."""
    return runs.default_runs_dir()


def keep_alive() -> None:
    """Tell the job manager this session of its browser is open (its training lives while one is)."""
    job_manager().touch(state.owner(), session_id())


def start_training() -> None:
    """Queue a training job for this browser with the session's settings (one job at a time)."""
    model_config = st.session_state[state.MODEL]
    st.session_state.pop(state.SAVE_PROBLEM, None)
    if problem := runs.room_problem(runs_dir(), runs.run_bytes(model_config), owner=state.owner()):
        st.session_state[state.SAVE_PROBLEM] = f"Not started: {problem}"
        return
    try:
        run_dir = runs.new_run_dir(runs_dir(), model_config)
    except runs.RunError as e:  # train anyway: the result is shown even if the model cannot be kept
        st.session_state[state.SAVE_PROBLEM] = f"{e}. The network trains and its result is shown, but it cannot be saved"
        run_dir = Path(runs_dir()) / runs.run_name(model_config)
    from deconv.jobs import JobRefused

    try:
        job_manager().submit(state.owner(), model_config, st.session_state[state.TRAIN], run_dir, state.address())
    except JobRefused as e:  # too big, too long, or too many waiting: the page says which
        st.session_state[state.SAVE_PROBLEM] = f"Not started: {str(e).rstrip('.')}"


def adopt_finished_run() -> None:
    """A run this session just finished training becomes the active model (once per job)."""
    job = job_manager().latest_job(state.owner())
    if job and not job.active and st.session_state.get("adopted_job") != job.id:
        st.session_state["adopted_job"] = job.id
        if (job.run_dir / "model.keras").exists():
            state.set_active_run(job.run_dir)


def load_model(path: str, mtime: float) -> Any:
    """A run's Keras model, kept per file version (the two last used, for MODEL_TTL_SECONDS)."""
    def load() -> Any:
        with st.spinner("Loading the model..."):
            return runs.load_model(path)

    return _models.get((path, mtime), load)


def model_for(run: runs.RunInfo) -> Any:
    """The cached model of a run."""
    return load_model(str(run.path), run.version)
