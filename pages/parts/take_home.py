"""The download of the standalone training script, offered on the Architecture and Train pages."""

from __future__ import annotations

from typing import Any

import streamlit as st

from deconv import script
from pages.parts.state import MODEL, TRAIN


def script_button(container: Any = st) -> None:
    """A download button for the Keras script that trains the session's current network with its current settings."""
    container.download_button(
        "Training script (.py)", data=script.standalone_script(st.session_state[MODEL], st.session_state[TRAIN]),
        file_name=script.SCRIPT_NAME, mime="text/x-python", icon=":material/code:", on_click="ignore",
        help="a standalone Keras script that trains this network with these settings on CIFAR-10, prints its "
             f"validation accuracy and saves model.keras: `python {script.SCRIPT_NAME}` on any machine with "
             "TensorFlow")
