"""This session's state and its URL: the two configs, the browser's id, the active run, notes from the link."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import urlencode

import streamlit as st

from deconv import runs
from deconv.config import ModelConfig, TrainConfig

MODEL, TRAIN, ACTIVE_RUN, CLIENT = "model_config", "train_config", "active_run", "client"
URL_NOTES = "url_notes"  # session key: what was clamped in the link this session was opened with
SAVE_PROBLEM = "save_problem"  # session key: why the runs folder cannot take the next run
CONFIG_CLASSES = {MODEL: ModelConfig, TRAIN: TrainConfig}


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
    if CLIENT not in st.session_state:
        given = st.query_params.get(CLIENT, "")
        st.session_state[CLIENT] = given if re.fullmatch(r"[0-9a-f]{16}", given) else uuid.uuid4().hex[:16]
    if ACTIVE_RUN not in st.session_state:  # the run in the link, else the reference model shipped with the app
        path = runs.run_in(runs.default_runs_dir(), st.query_params.get("model", "")) or reference_path()
        st.session_state[ACTIVE_RUN] = str(path) if path else None



def sync_url() -> None:
    """Write the settings, the browser's id and the active run's name into the URL, if they changed."""
    wanted = {CLIENT: st.session_state[CLIENT], **settings_query()}
    active = st.session_state[ACTIVE_RUN]
    if active and Path(active).parent == runs.default_runs_dir():  # not the reference: it is the default anyway
        wanted["model"] = Path(active).name
    if st.query_params.to_dict() != wanted:
        st.query_params.from_dict(wanted)


def settings_query() -> dict[str, str]:
    """This session's architecture and training settings as URL query parameters (defaults left out)."""
    return {**st.session_state[MODEL].to_query(), **st.session_state[TRAIN].to_query()}


def share_url() -> str:
    """A link to the current page with these settings and nothing private (no browser id)."""
    query = urlencode(settings_query(), safe=",")
    return (st.context.url or "") + (f"?{query}" if query else "")


def url_notes() -> None:
    """Say once which settings from the link were out of range and how they were changed."""
    notes = st.session_state.pop(URL_NOTES, None)
    if notes:
        st.warning("Some settings in the link were not allowed and were changed:\n\n"
                   + "\n".join(f"- {n}" for n in notes), icon=":material/link:")


def owner() -> str:
    """Who owns training jobs: this browser (its id survives a refresh through the URL)."""
    return st.session_state[CLIENT]


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


def reference_path() -> Path | None:
    """The reference run's folder, if the app has one."""
    reference = runs.reference_run()
    return reference.path if reference else None


def is_reference(run: runs.RunInfo) -> bool:
    """Whether a run is the reference model shipped with the app."""
    return run.path.resolve() == runs.REFERENCE_DIR.resolve()


def set_active_run(run_dir: Path | None) -> None:
    """Make a run the active model (None: none), in the session and the URL."""
    st.session_state[ACTIVE_RUN] = str(run_dir) if run_dir else None
    if run_dir:
        st.query_params["model"] = run_dir.name
    else:
        st.query_params.pop("model", None)
