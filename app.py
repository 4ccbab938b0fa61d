"""Deconv Lab: declares the pages and the shared sidebar; each page lives in pages/."""

import os
from pathlib import Path

import streamlit as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is imported lazily, by the pages that need it

from pages.parts import first_visit, server, settings, sidebar, state  # noqa: E402

# A local icon file (sent inline): a :material/ icon is fetched from Google's font servers, which fails offline.
st.set_page_config(page_title="Deconv Lab", page_icon=str(Path(__file__).parent / "assets" / "favicon.svg"), layout="wide")
state.init_state()
settings.apply_pending_change()  # a widget value the browser kept over a server restart
state.sync_url()
server.keep_alive()
page = first_visit.navigation()
sidebar.sidebar()
with st.sidebar:
    state.remember_browser()
state.url_notes()
if page.url_path in server.KERAS_PAGES:
    server.import_keras()
try:
    with first_visit.app_script():
        page.run()
finally:
    server.freeze_heavy_imports()  # after the run that first imported TensorFlow, not on every rerun
