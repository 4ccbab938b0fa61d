"""Runs: every saved run, curves of several side by side, and download, activate or delete one."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from deconv import analysis, charts, run_import, runs
from pages.parts import confusion, first_visit, inside, server, settings, state, text
from pages.parts.state import ACTIVE_RUN, MODEL, TRAIN

first_visit.require_app()

METRICS = {"validation accuracy": "val_accuracy", "validation loss": "val_loss", "training accuracy": "accuracy",
           "training loss": "loss"}


def run_row(r: runs.RunInfo) -> dict[str, object]:
    """One table row for a run."""
    return {"run": r.name, "status": r.meta.status, "blocks": "-".join(map(str, r.model_config.widths)),
            "head": r.model_config.head, "parameters": r.meta.params,
            "epochs": r.epochs_completed, "train images": r.train_config.train_size,
            "saved model val acc": r.val_accuracy, "best epoch": r.best_epoch,
            "best epoch val acc": r.best_val_accuracy,
            "training time": r.meta.train_seconds, "model size": r.model_bytes / 2**20,
            "saved": time.strftime("%Y-%m-%d %H:%M", time.localtime(r.saved))}


COLUMNS = {
    "parameters": st.column_config.NumberColumn(format="localized"),
    "train images": st.column_config.NumberColumn(format="localized"),
    "saved model val acc": st.column_config.NumberColumn(
        format="percent", help="validation accuracy of the weights in model.keras, answering as the app does: "
                               "those of the last complete epoch, or, when training was stopped mid-epoch, measured "
                               "on all validation images at the stop; with mirror prediction on, each answer is "
                               "averaged with the mirror image's (the epochs' figures are one view), so it can be "
                               "above every epoch's figure"),
    "best epoch": st.column_config.NumberColumn(
        format="%d", help="the epoch that ended with the highest validation accuracy; the saved model is the last "
                          "epoch's weights, not this epoch's"),
    "best epoch val acc": st.column_config.NumberColumn(
        format="percent", help="validation accuracy at the end of the best epoch; above the saved model's when later "
                               "epochs got worse, below it when training went on after its last complete epoch"),
    "training time": st.column_config.NumberColumn(format="%.0f s"),
    "model size": st.column_config.NumberColumn(format="%.1f MiB", width=100, help="model.keras on disk"),
}


def delete(path: str) -> None:
    """on_click: delete a run (after the confirmation box was ticked), if this visitor may."""
    try:
        if not runs.may_delete(runs.read_run(path), state.owner()):
            raise runs.RunError("only whoever trained or imported a run can delete it")
        runs.delete_run(path)
        st.toast(f"Deleted {text.plain(Path(path).name)}.", icon=":material/delete:")
    except (runs.RunError, OSError) as e:
        st.session_state["runs.error"] = str(e)
    if st.session_state.get(ACTIVE_RUN) == path:
        st.session_state[ACTIVE_RUN] = None


def reuse(run: runs.RunInfo) -> None:
    """on_click: make a saved run's settings the session's, start training them, and go to Train."""
    st.session_state[MODEL], st.session_state[TRAIN] = run.model_config, run.train_config
    for key in (MODEL, TRAIN):
        st.session_state.pop(f"{key}.error", None)
        settings.sync_widgets(key)
    server.start_training()
    st.session_state["runs.goto_train"] = True


def import_run() -> None:
    """on_click: import the uploaded zip or the named folder into the runs folder."""
    upload, folder = st.session_state.get("import.zip"), st.session_state.get("import.folder", "").strip()
    try:
        source = upload.getvalue() if upload else folder
        added = run_import.import_run(source, server.runs_dir(), upload.name if upload else Path(folder).name,
                                owner=state.owner())
        st.session_state["import.outcome"] = f"Imported as **{text.plain(added.name)}**."
    except runs.RunError as e:
        st.session_state["import.outcome"] = f"Not imported: {text.plain(str(e))}."


if st.session_state.pop("runs.goto_train", False):
    st.switch_page("pages/train.py")

st.title("Runs")
st.markdown(f"Every training saved in `{server.runs_dir()}`: compare them, make one the active model, download or delete.")
if message := st.session_state.pop("runs.error", None):
    st.error(text.plain(message))  # it names the run

saved, broken = runs.list_runs(server.runs_dir())
for path, why in broken:
    st.error(text.plain(f"{path.name} cannot be read and is left out: {why}."), icon=":material/error:")
with st.expander("Import a run", icon=":material/upload:"):
    roots = run_import.folder_import_roots()
    st.markdown("A run trained elsewhere (`python -m deconv train --out DIR` on a bigger machine): upload a `.zip` "
                "of its folder" + (", or give the path of a run folder on this server" if roots else "") + ". "
                "Its files are checked, and its weights are loaded into the network its `config.json` describes "
                "before it is added; the uploaded file's own architecture is never used.")
    upload = st.file_uploader("Zipped run folder", type=["zip"], key="import.zip")
    folder = st.text_input("or a run folder on this server", key="import.folder", placeholder=str(roots[0]),
                           help="allowed under: " + ", ".join(map(str, roots))) if roots else ""
    st.button("Import", icon=":material/input:", disabled=not (upload or folder.strip()), on_click=import_run)
    if outcome := st.session_state.pop("import.outcome", None):
        (st.success if outcome.startswith("Imported") else st.error)(outcome)

if not saved:
    st.info("No saved runs yet: train one on the **Train** page, or import one above.")
    st.stop()

st.dataframe([run_row(r) for r in saved], hide_index=True, width="stretch", column_config=COLUMNS)
st.download_button("Runs table (CSV)", data=runs.runs_csv(saved), file_name="deconv-runs.csv", mime="text/csv",
                   icon=":material/download:", on_click="ignore")

st.subheader("Compare")
names = [r.name for r in saved]
chosen = st.multiselect("Runs to overlay", names, default=names[: min(3, len(names))])
metric = st.radio("Metric", list(METRICS), horizontal=True)
weight = st.slider("Smoothing", 0.0, 0.95, 0.0, 0.05, help="exponential moving average, as in TensorBoard")
if chosen:
    histories = [(r.name, r.history) for r in saved if r.name in chosen]
    st.plotly_chart(charts.overlay(histories, METRICS[metric], metric, weight), theme=None)

st.subheader("One run")
pick = st.selectbox("Run", names)
run = saved[names.index(pick)]
left, right = st.columns(2)
left.markdown("**Architecture**")
left.dataframe([{"setting": k, "value": str(v)} for k, v in run.model_config.to_dict().items()], hide_index=True,
               width="stretch")
right.markdown("**Training**")
right.dataframe([{"setting": k, "value": str(v)} for k, v in run.train_config.to_dict().items()], hide_index=True,
                width="stretch")
st.text(f"{run.meta.message}; trained with " + ", ".join(f"{k} {v}" for k, v in run.meta.versions.items())
        + (f"; by {'you' if run.meta.owner == state.owner() else 'another visitor'}" if run.meta.owner else ""))
job = server.job_manager().latest_job(state.owner())
busy = bool(job and job.active)
st.button("Train again with these settings", icon=":material/replay:", disabled=busy, on_click=reuse, args=(run,),
          help="training is already under way for you" if busy else "the same architecture, data, seed and schedule")
a, b, c, d = st.columns(4)
is_active = st.session_state.get(ACTIVE_RUN) == str(run.path)
a.button("Active model" if is_active else "Make active", disabled=is_active, icon=":material/check_circle:",
         on_click=lambda: st.session_state.update({ACTIVE_RUN: str(run.path)}), width="stretch")
b.download_button("model.keras", data=lambda: (run.path / "model.keras").read_bytes(), file_name=f"{run.name}.keras",
                  icon=":material/download:", width="stretch", on_click="ignore")
c.download_button("History (CSV)", data=run.history_csv(), file_name=f"{run.name}-history.csv", mime="text/csv",
                  icon=":material/table:", width="stretch", on_click="ignore")
with d.popover("Delete", icon=":material/delete:", width="stretch"):
    if runs.may_delete(run, state.owner()):
        sure = st.checkbox(f"Yes, delete {text.plain(run.name)} for good")
        st.button("Delete this run", type="primary", disabled=not sure, on_click=delete, args=(str(run.path),))
    else:
        st.caption("Only whoever trained or imported this run can delete it.")
st.download_button("Run folder (zip)", data=lambda: runs.export_zip(run.path), file_name=f"{run.name}.zip",
                   mime="application/zip", icon=":material/folder_zip:", on_click="ignore",
                   help="model.keras, the settings, the history (also as history.csv) and the TensorBoard logs: "
                        "what Import above takes")
st.markdown("**In TensorBoard:** every run's loss, accuracy and learning rate per epoch, the network's graph, and "
            "each epoch's validation confusion matrix (under Images). Run this on the machine that holds the runs "
            "folder:")
st.code(runs.tensorboard_command(server.runs_dir()), language="bash")

st.markdown("**On its validation images**")
try:
    rep = analysis.read_report(run.path, run.train_config.val_size)
except analysis.ReportError as e:
    st.caption(f"No confusion matrix: {text.plain(str(e))}.")  # it may quote the file
else:
    pictures = confusion.run_pictures(run)
    confusion.confusion_charts(rep.matrix, rep.labels, "", f"run-{run.name}", rep, pictures)
    if rep.true is None:
        st.caption("This run's report was saved before the app kept each image's prediction: train it again to "
                   "open the cells.")
    elif pictures is None:
        st.caption("The validation images of this run are not on this server: its cells cannot be opened.")
st.markdown("**What its channels respond to**")
inside.top_patches_panel(f"run-{run.name}", run, inside.block_names(run))
