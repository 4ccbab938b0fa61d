"""Runs: every saved run, curves of several side by side, and download, activate or delete one."""

from __future__ import annotations

import streamlit as st

from deconv import charts, runs
from pages import common
from pages.common import ACTIVE_RUN

METRICS = {"validation accuracy": "val_accuracy", "validation loss": "val_loss", "training accuracy": "accuracy",
           "training loss": "loss"}


def run_row(r: runs.RunInfo) -> dict[str, object]:
    """One table row for a run."""
    acc = r.best_val_accuracy
    return {"run": r.name, "status": r.meta.get("status", "?"), "blocks": "-".join(map(str, r.model_config.widths)),
            "head": r.model_config.head, "parameters": r.meta.get("params"),
            "epochs": r.meta.get("epochs_completed", len(r.history)), "train images": r.train_config.train_size,
            "best val accuracy": None if acc is None else round(acc, 4),
            "training time (s)": round(r.meta.get("train_seconds", 0), 1), "size (MB)": round(r.model_bytes / 2**20, 2),
            "saved": r.meta.get("saved_at", "")}


def delete(path: str) -> None:
    """on_click: delete a run (after the confirmation box was ticked)."""
    try:
        runs.delete_run(path)
    except (runs.RunError, OSError) as e:
        st.session_state["runs.error"] = str(e)
    if st.session_state.get(ACTIVE_RUN) == path:
        st.session_state[ACTIVE_RUN] = None


st.title("Runs")
st.markdown(f"Every training saved in `{common.runs_dir()}`: compare them, make one the active model, download or delete.")
if message := st.session_state.pop("runs.error", None):
    st.error(message)

saved, broken = runs.list_runs(common.runs_dir())
for path, why in broken:
    st.error(f"**{path.name}** cannot be read and is left out: {why}.")
if not saved:
    st.info("No saved runs yet: train one on the **Train** page.")
    st.stop()

st.dataframe([run_row(r) for r in saved], hide_index=True, width="stretch")

st.subheader("Compare")
names = [r.name for r in saved]
chosen = st.multiselect("Runs to overlay", names, default=names[: min(3, len(names))])
metric = st.radio("Metric", list(METRICS), horizontal=True)
weight = st.slider("Smoothing", 0.0, 0.95, 0.0, 0.05, help="exponential moving average, as in TensorBoard")
if chosen:
    histories = [(r.name, r.history) for r in saved if r.name in chosen]
    st.plotly_chart(charts.overlay(histories, METRICS[metric], weight))

st.subheader("One run")
pick = st.selectbox("Run", names)
run = saved[names.index(pick)]
st.json({"model": run.model_config.to_dict(), "train": run.train_config.to_dict(), "status": run.meta.get("status"),
         "message": run.meta.get("message"), "versions": run.meta.get("versions")}, expanded=False)
a, b, c, d = st.columns(4)
is_active = st.session_state.get(ACTIVE_RUN) == str(run.path)
a.button("Active model" if is_active else "Make active", disabled=is_active, icon=":material/check_circle:",
         on_click=lambda: st.session_state.update({ACTIVE_RUN: str(run.path)}), width="stretch")
b.download_button("model.keras", data=lambda: (run.path / "model.keras").read_bytes(), file_name=f"{run.name}.keras",
                  icon=":material/download:", width="stretch", on_click="ignore")
c.download_button("History (CSV)", data=run.history_csv(), file_name=f"{run.name}-history.csv", mime="text/csv",
                  icon=":material/table:", width="stretch", on_click="ignore")
with d.popover("Delete", icon=":material/delete:", width="stretch"):
    sure = st.checkbox(f"Yes, delete {run.name} for good")
    st.button("Delete this run", type="primary", disabled=not sure, on_click=delete, args=(str(run.path),))
