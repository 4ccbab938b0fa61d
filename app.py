"""Deconv Lab: declares the pages and the shared sidebar; each page lives in pages/."""

import os
from pathlib import Path

import streamlit as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow is imported lazily, by the pages that need it

from pages import common  # noqa: E402

# A local icon file (sent inline): a :material/ icon is fetched from Google's font servers, which fails offline.
st.set_page_config(page_title="Deconv Lab", page_icon=str(Path(__file__).parent / "assets" / "favicon.svg"), layout="wide")
common.init_state()
page = common.navigation()
common.sidebar()
common.url_notes()
if page.url_path in common.KERAS_PAGES:
    common.import_keras()
try:
    with common.app_script():
        page.run()
finally:
    common.freeze_heavy_imports()  # after the run that first imported TensorFlow, not on every rerun
