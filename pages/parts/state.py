"""This session's state and its URL: the two configs, who the browser is, the active run, notes from the link."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

import streamlit as st

from deconv import owners, runs
from deconv.config import ModelConfig, TrainConfig

MODEL, TRAIN, ACTIVE_RUN = "model_config", "train_config", "active_run"
TOKEN, OWNER = "browser_token", "owner"  # session keys: the browser's secret token, and its owner key (deconv.owners)
COOKIE = "deconv_owner"  # the cookie that keeps the token over a refresh; never in a URL, page text or download
COOKIE_SENT = "cookie_sent"  # session key: the page was asked to set the cookie
COOKIE_SECONDS = 365 * 24 * 3600
URL_NOTES = "url_notes"  # session key: what was clamped in the link this session was opened with
SAVE_PROBLEM = "save_problem"  # session key: why the runs folder cannot take the next run
CONFIG_CLASSES = {MODEL: ModelConfig, TRAIN: TrainConfig}


def init_state() -> None:
    """Plain session-state keys that outlive page switches (widget keys do not), and the URL's part.

    The settings that differ from the defaults live in the URL, so a copied link reproduces an
    experiment (values out of range are clamped, with a note). The active run's name is kept there
    too, so that a refresh finds its active model again; `share_url` leaves it out. Who the browser
    is comes from its cookie (see `remember_browser`), so a refresh or another tab finds its training
    job and its runs; a link never carries it.
    """
    if MODEL not in st.session_state or TRAIN not in st.session_state:
        params = st.query_params.to_dict()
        (model_config, model_notes), (train_config, train_notes) = (ModelConfig.from_query(params),
                                                                    TrainConfig.from_query(params))
        st.session_state[MODEL], st.session_state[TRAIN] = model_config, train_config
        if model_notes or train_notes:
            st.session_state[URL_NOTES] = model_notes + train_notes
    if TOKEN not in st.session_state or OWNER not in st.session_state:
        given = browser_cookie()
        token = given if owners.is_token(given) else owners.new_token()
        st.session_state[TOKEN] = token
        st.session_state[OWNER] = owners.owner_key(token, owners.server_secret(runs.default_runs_dir()))
        st.session_state[COOKIE_SENT] = token == given  # the browser has it already
    if ACTIVE_RUN not in st.session_state:  # the run in the link, else the reference model shipped with the app
        path = runs.run_in(runs.default_runs_dir(), st.query_params.get("model", "")) or reference_path()
        st.session_state[ACTIVE_RUN] = str(path) if path else None


def browser_cookie() -> str | None:
    """The token cookie the browser sent when this session connected, if any."""
    return st.context.cookies.get(COOKIE)


def remember_browser() -> None:
    """Ask the browser, once per session, to keep this session's token in a cookie for the next visit.

    The token reaches only this browser's own page, as the value of a cookie that is sent back with the next
    websocket connection (`st.context.cookies`); it is never shown, put in a link or written to a run.
    """
    if st.session_state.get(COOKIE_SENT):
        return
    st.session_state[COOKIE_SENT] = True
    cookie = f"{COOKIE}={st.session_state[TOKEN]}; Path=/; Max-Age={COOKIE_SECONDS}; SameSite=Strict"
    st.html(f"<script>document.cookie = {json.dumps(cookie)} + (location.protocol === 'https:' ? '; Secure' : '');"
            "</script>", unsafe_allow_javascript=True)


def sync_url() -> None:
    """Write the settings and the active run's name into the URL, if they changed (any other parameter goes)."""
    wanted = settings_query()
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
    """This browser's owner key: what its jobs and runs record (it survives a refresh through the cookie)."""
    return st.session_state[OWNER]


def address() -> str:
    """The visitor's network address, as the per-address training cap counts it.

    The connection's own address, or the last entry of the header DECONV_PROXY_HEADER names (the one a trusted
    reverse proxy appended). Streamlit gives no address for a local connection: "localhost".
    """
    from deconv.jobs import proxy_header_from_env

    if header := proxy_header_from_env():
        given = (st.context.headers.get(header) or "").split(",")[-1].strip()
        if given:
            return given[:64]
    return st.context.ip_address or "localhost"


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
