"""The sidebar every page shows: the active model, this browser's training, a link to share the settings."""

from __future__ import annotations

import streamlit as st

from pages.parts import server, state, text


def sidebar() -> None:
    """The active model and this session's training, on every page."""
    server.adopt_finished_run()
    with st.sidebar:
        run = state.active_run()
        st.caption("Active model")
        if run and state.is_reference(run):
            acc = run.val_accuracy
            st.markdown("**Reference model** (shipped with the app)  \n"
                        + (f"{acc:.1%} right on unseen CIFAR-10 test images" if acc is not None else ""),
                        help="Trained by the command in the README (Reference model); it is the active model until you train one "
                             "or pick a saved run.")
        elif run:
            acc = run.val_accuracy
            st.markdown(f"**{text.plain(run.name)}**  \n" + (f"validation accuracy {acc:.1%}" if acc is not None else "not validated"))
        else:
            st.markdown("none yet: train one or pick a saved run")
        job = server.job_manager().latest_job(state.owner())
        if job and job.active:
            st.caption("Training")
            st.markdown("waiting for a slot" if job.state == "queued" else "in progress: follow it on **Train**")
        with st.expander("Share these settings", icon=":material/link:"):
            st.caption("This link opens the app with the current architecture and training settings.")
            st.code(state.share_url(), language=None, wrap_lines=True)
