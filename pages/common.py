"""What the pages share: session state, config widgets driven by the config Specs, cached resources."""

from __future__ import annotations

import atexit
import dataclasses
import gc
import os
import re
import sys
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import streamlit as st

from deconv import glossary, runs
from deconv.config import ModelConfig, TrainConfig, field_spec
from deconv.cost import describe
from deconv.jobs import fmt_duration

MODEL, TRAIN, ACTIVE_RUN, CLIENT = "model_config", "train_config", "active_run", "client"
URL_NOTES = "url_notes"  # session key: what was clamped in the link this session was opened with
SAVE_PROBLEM = "save_problem"  # session key: why the runs folder cannot take the next run
MODEL_TTL_SECONDS = 900  # a loaded model nobody has used for this long is released (the article's holds 340 MB)
PENDING_CHANGE = "pending_change"  # session key: a widget change to apply before the widgets are drawn
CONFIG_CLASSES = {MODEL: ModelConfig, TRAIN: TrainConfig}
CONFIG_FIELDS = {k: {f.name for f in dataclasses.fields(cls)} for k, cls in CONFIG_CLASSES.items()}


PAGES = [("pages/home.py", "Home", ":material/home:"), ("pages/architecture.py", "Architecture", ":material/account_tree:"),
         ("pages/train.py", "Train", ":material/model_training:"), ("pages/classify.py", "Classify", ":material/image_search:"),
         ("pages/runs.py", "Runs", ":material/history:")]
_script = threading.local()  # per script thread: is app.py running the page now?
KERAS_PAGES = {"train", "classify", "runs"}  # url paths of the pages that import Keras
_keras_import = threading.Lock()


def import_keras() -> None:
    """Import Keras (and TensorFlow) one session thread at a time.

    Two sessions importing it for the first time at once can hit a deadlock inside its circular
    imports, which leaves the module half-initialised for the server's whole life (seen under load:
    every later model load failed). Once imported, this is an uncontended lock and a dict lookup.
    """
    with _keras_import:
        import keras  # noqa: F401


def navigation() -> Any:
    """The app's pages for st.navigation (Home first and default)."""
    return st.navigation([st.Page(path, title=title, icon=icon, default=i == 0)
                          for i, (path, title, icon) in enumerate(PAGES)])


@contextmanager
def app_script() -> Iterator[None]:
    """Marks the page run as coming from app.py (see `require_app`)."""
    _script.in_app = True
    try:
        yield
    finally:
        _script.in_app = False


def require_app() -> None:
    """First call of every page: when it was not run through app.py, rerun it through app.py.

    Because this project has a pages/ folder, Streamlit starts each server in its old pages-folder
    mode and leaves it only at the first st.navigation call. Until then, a first visitor who opens
    a link to a page (/train, or a shared settings link) gets that page run alone: no session state,
    no sidebar. Declaring the navigation here switches the mode off, and the rerun goes through app.py.
    """
    if not getattr(_script, "in_app", False):
        navigation()
        st.rerun()


def init_state() -> None:
    """Plain session-state keys that outlive page switches (widget keys do not), and the URL's part.

    The settings that differ from the defaults live in the URL, so a copied link reproduces an
    experiment (values out of range are clamped, with a note). The browser's id and the active run's
    name are kept there too, so that a refresh (a new session) finds its training job and its active
    model again; `share_url` leaves them out.
    """
    if MODEL not in st.session_state or TRAIN not in st.session_state:
        params = st.query_params.to_dict()
        (model_config, model_notes), (train_config, train_notes) = (ModelConfig.from_query(params),
                                                                    TrainConfig.from_query(params))
        st.session_state[MODEL], st.session_state[TRAIN] = model_config, train_config
        if model_notes or train_notes:
            st.session_state[URL_NOTES] = model_notes + train_notes
    apply_pending_change()
    if CLIENT not in st.session_state:
        given = st.query_params.get(CLIENT, "")
        st.session_state[CLIENT] = given if re.fullmatch(r"[0-9a-f]{16}", given) else uuid.uuid4().hex[:16]
    if ACTIVE_RUN not in st.session_state:
        path = runs.run_in(runs_dir(), st.query_params.get("model", ""))
        st.session_state[ACTIVE_RUN] = str(path) if path else None
    wanted = {CLIENT: st.session_state[CLIENT], **settings_query()}
    if st.session_state[ACTIVE_RUN]:
        wanted["model"] = Path(st.session_state[ACTIVE_RUN]).name
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)
    job_manager().touch(st.session_state[CLIENT], session_id())


def settings_query() -> dict[str, str]:
    """This session's architecture and training settings as URL query parameters (defaults left out)."""
    return {**st.session_state[MODEL].to_query(), **st.session_state[TRAIN].to_query()}


def share_url() -> str:
    """A link to the current page with these settings and nothing private (no browser id)."""
    from urllib.parse import urlencode

    query = urlencode(settings_query(), safe=",")
    return (st.context.url or "") + (f"?{query}" if query else "")


def url_notes() -> None:
    """Say once which settings from the link were out of range and how they were changed."""
    notes = st.session_state.pop(URL_NOTES, None)
    if notes:
        st.warning("Some settings in the link were not allowed and were changed:\n\n"
                   + "\n".join(f"- {n}" for n in notes), icon=":material/link:")


def start_training() -> None:
    """Queue a training job for this browser with the session's settings (one job at a time)."""
    model_config = st.session_state[MODEL]
    st.session_state.pop(SAVE_PROBLEM, None)
    if problem := runs.room_problem(runs_dir(), runs.run_bytes(model_config)):
        st.session_state[SAVE_PROBLEM] = f"Not started: {problem}"
        return
    try:
        run_dir = runs.new_run_dir(runs_dir(), model_config)
    except runs.RunError as e:  # train anyway: the result is shown even if the model cannot be kept
        st.session_state[SAVE_PROBLEM] = f"{e}. The network trains and its result is shown, but it cannot be saved"
        run_dir = Path(runs_dir()) / runs.run_name(model_config)
    from deconv.jobs import JobRefused

    try:
        job_manager().submit(owner(), model_config, st.session_state[TRAIN], run_dir)
    except JobRefused as e:  # too big, too long, or too many waiting: the page says which
        st.session_state[SAVE_PROBLEM] = f"Not started: {str(e).rstrip('.')}"


def owner() -> str:
    """Who owns training jobs: this browser (its id survives a refresh through the URL)."""
    return st.session_state[CLIENT]


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


@st.cache_resource
def job_manager() -> Any:
    """The one JobManager of this server, shared by all sessions on purpose: it holds the training-slot cap."""
    from deconv.jobs import JobManager, max_jobs_from_env

    runs.sweep_leftovers(runs_dir())  # saves and imports a crash left half-done
    manager = JobManager(runs_dir() / ".jobs", max_jobs=max_jobs_from_env(), is_alive=_session_alive)
    atexit.register(manager.shutdown)
    return manager


def runs_dir() -> Path:
    """Where runs are saved."""
    return runs.default_runs_dir()


# ---- config widgets: every bound and default comes from the config classes


def _widget_key(state_key: str, name: str) -> str:
    return f"w.{state_key}.{name}"


def _widget_value(config: Any, name: str) -> Any:
    """The value a widget shows: a config field, the number of blocks, or one block's width."""
    if name == "blocks":
        return config.blocks
    if name.startswith("width"):
        return config.widths[int(name[5:])]
    return getattr(config, name)


def _widget_names(config: Any) -> list[str]:
    """Every widget name of a config."""
    names = [f.name for f in dataclasses.fields(config) if f.name != "widths"]
    return names + (["blocks"] + [f"width{i}" for i in range(config.blocks)] if isinstance(config, ModelConfig) else [])


def sync_widgets(state_key: str) -> None:
    """Set every widget of a config to the config's values (call from callbacks, before widgets exist).

    Only widgets that show another value are set: setting a widget's state makes the browser take that value,
    and for the slider being moved it would undo key presses made while this run was on its way.
    """
    config = st.session_state[state_key]
    for name in _widget_names(config):
        key, value = _widget_key(state_key, name), _widget_value(config, name)
        if key not in st.session_state or st.session_state[key] != value:
            st.session_state[key] = value


def _apply(state_key: str, name: str) -> None:
    """on_change: put a widget's value into the config; an invalid combination is refused and explained."""
    config = st.session_state[state_key]
    value = st.session_state[_widget_key(state_key, name)]
    try:
        if name == "blocks":
            new = config.with_blocks(value)
        elif name.startswith("width"):
            widths = list(config.widths)
            widths[int(name[5:])] = value
            new = config.adjusted(widths=tuple(widths))
        elif isinstance(config, ModelConfig):
            new = config.adjusted(**{name: value})  # keeps the pooling valid as the map shrinks
        else:
            new = config.replace(**{name: value})
    except ValueError as e:
        st.session_state[f"{state_key}.error"] = str(e)
        sync_widgets(state_key)  # put the widget back where the config is
        return
    st.session_state.pop(f"{state_key}.error", None)
    st.session_state[state_key] = new
    sync_widgets(state_key)


def config_widget(state_key: str, name: str, label: str | None = None, high: float | None = None,
                  disabled: bool = False, container: Any = st) -> None:
    """The widget for one config field: its range and help text come from the field's Spec."""
    cls = CONFIG_CLASSES[state_key]
    spec_name = "widths" if name == "blocks" or name.startswith("width") else name
    s = field_spec(cls, spec_name)
    key = _widget_key(state_key, name)
    config = st.session_state[state_key]
    if high is not None and name in CONFIG_FIELDS[state_key] and getattr(config, name) > high >= s.low:
        st.session_state[state_key] = config.replace(**{name: type(getattr(config, name))(high)})  # what fits here
        st.session_state[key] = getattr(st.session_state[state_key], name)
    current = _widget_value(st.session_state[state_key], name)
    # First show on this page visit, or in a session the server does not know (it restarted while the tab stayed
    # open): the widget starts from the config, unless the browser sends a value it kept, which wins (below).
    first = key not in st.session_state
    start: dict[str, Any] = {"value": current} if first else {}
    label = label or name.replace("_", " ").capitalize()
    common = dict(key=key, on_change=_apply, args=(state_key, name), disabled=disabled,
                  help=glossary.BLOCKS_HELP if name == "blocks" else s.help)
    if isinstance(current, bool):
        shown = container.toggle(label, **start, **common)
    elif name == "blocks":
        shown = container.slider(label, s.min_len, s.max_len, **start, **common)
    elif name.startswith("width"):
        shown = container.slider(label, int(s.low), int(s.high), step=s.step, **start, **common)
    elif s.choices:
        shown = container.radio(label, s.choices, horizontal=True, index=s.choices.index(current) if first else None,
                                **common)
    elif s.log:
        options = sorted(set(s.grid()) | {current})
        shown = container.select_slider(label, options, format_func=lambda v: f"{v:g}", **start, **common)
    elif isinstance(current, float):
        shown = container.slider(label, float(s.low), float(s.high), step=0.05, **start, **common)
    elif isinstance(current, int) and (high or s.high) - s.low <= 100_000:
        top = int(min(high, s.high)) if high is not None else int(s.high)
        if top <= s.low:
            container.caption(f"{label}: {top} (no other value fits)")
            return
        shown = container.slider(label, int(s.low), top, step=s.step, **start, **common)
    else:
        shown = container.number_input(label, int(s.low), int(s.high), **start, **common)
    if first and shown is not None and shown != current:  # a value the browser kept across a server restart: apply it
        st.session_state[PENDING_CHANGE] = (state_key, name, shown)
        st.rerun()


def apply_pending_change() -> None:
    """Apply a widget change that arrived before this session had its widgets (see `config_widget`)."""
    pending = st.session_state.pop(PENDING_CHANGE, None)
    if pending:
        state_key, name, value = pending
        st.session_state[_widget_key(state_key, name)] = value
        _apply(state_key, name)


def config_error(state_key: str) -> None:
    """Show why the last change was refused, if it was."""
    message = st.session_state.get(f"{state_key}.error")
    if message:
        st.error(f"That change was not applied: {message}.")


# ---- models and runs


@st.cache_resource(max_entries=2, ttl=MODEL_TTL_SECONDS, show_spinner="Loading the model...")
def load_model(path: str, mtime: float) -> Any:
    """A run's Keras model, cached per file version."""
    return runs.load_model(path)


def model_for(run: runs.RunInfo) -> Any:
    """The cached model of a run."""
    return load_model(str(run.path), run.version)


def active_run() -> runs.RunInfo | None:
    """The run chosen as the active model, if it still exists and reads."""
    path = st.session_state.get(ACTIVE_RUN)
    if not path:
        return None
    try:
        return runs.read_run(path)
    except runs.RunError:
        st.session_state[ACTIVE_RUN] = None
        return None


MARKDOWN = re.compile(r"([\\`*_{}\[\]()#!|$~<>:])")  # what starts emphasis, a link (http: too), an image, code


def plain(text: str) -> str:
    """Text that came from a file or a visitor, escaped so that Streamlit's markdown shows it as written."""
    return MARKDOWN.sub(r"\\\1", text)


def fmt_count(n: float) -> str:
    """1234567 -> 1.23 M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


fmt_seconds = fmt_duration  # seconds as s, min or h, as the job manager words its refusals


def architecture_summary(config: ModelConfig) -> str:
    """One line: widths, head, parameters, FLOPs."""
    cost = describe(config)
    return (f"blocks {'-'.join(map(str, config.widths))}, {config.head} head: {cost.params:,} parameters, "
            f"{fmt_count(cost.flops)}FLOPs per image")


def adopt_finished_run() -> None:
    """A run this session just finished training becomes the active model (once per job)."""
    job = job_manager().latest_job(owner())
    if job and not job.active and st.session_state.get("adopted_job") != job.id:
        st.session_state["adopted_job"] = job.id
        if (job.run_dir / "model.keras").exists():
            st.session_state[ACTIVE_RUN] = str(job.run_dir)
            st.query_params["model"] = job.run_dir.name


def sidebar() -> None:
    """The active model and this session's training, on every page."""
    adopt_finished_run()
    with st.sidebar:
        run = active_run()
        st.caption("Active model")
        if run:
            acc = run.val_accuracy
            st.markdown(f"**{run.name}**  \n" + (f"validation accuracy {acc:.1%}" if acc is not None else "not validated"))
        else:
            st.markdown("none yet: train one or pick a saved run")
        job = job_manager().latest_job(owner())
        if job and job.active:
            st.caption("Training")
            st.markdown("waiting for a slot" if job.state == "queued" else "in progress: follow it on **Train**")
        with st.expander("Share these settings", icon=":material/link:"):
            st.caption("This link opens the app with the current architecture and training settings.")
            st.code(share_url(), language=None, wrap_lines=True)


if __name__ == "__main__":  # run as a page by Streamlit's pages-folder mode: go through app.py instead
    require_app()
