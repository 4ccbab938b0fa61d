"""The page list, and the workaround that keeps a first visitor out of Streamlit's old pages-folder mode."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import streamlit as st

PAGES = [("pages/home.py", "Home", ":material/home:"), ("pages/architecture.py", "Architecture", ":material/account_tree:"),
         ("pages/train.py", "Train", ":material/model_training:"), ("pages/classify.py", "Classify", ":material/image_search:"),
         ("pages/runs.py", "Runs", ":material/history:")]
_script = threading.local()  # per script thread: is app.py running the page now?


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
