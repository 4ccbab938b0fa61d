"""Train: training settings, Train and Stop, and a live view of this session's training job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from deconv import analysis, charts, data, glossary, images, runs
from deconv.cost import describe
from pages.parts import confusion, first_visit, server, settings, state, take_home, text
from pages.parts.settings import config_widget
from pages.parts.state import MODEL, SAVE_PROBLEM, TRAIN

first_visit.require_app()

GALLERY = 8  # confidently wrong images shown after training
PROGRESS_REFRESH = 1.0  # seconds between progress bar updates while training
# Seconds between redraws of the live charts: a browser on the same machine redraws plotly charts with the CPU that
# trains (measured: the default run took 51 s with the Train page closed, 64-76 s with the charts redrawn every second).
CHARTS_REFRESH = 2.5
UNUSED_WORTH_SAYING = 0.95  # say how many images an epoch uses when whole batches leave more than 5% out


@st.cache_data(show_spinner=False)
def image_counts(path: str) -> tuple[int, int]:
    """Training and test images in a data folder."""
    source = data.DataSource(Path(path), "")
    return (data.count_train_images(source) if source.has_train else 0), len(data.read_test(source)[1])


STARTED = "train.started"  # session key: the Train button's callback ran in this script run


def start() -> None:
    """on_click Train: queue a job for this session with the current settings."""
    server.start_training()
    st.session_state[STARTED] = True


def progress_block(job: Any) -> None:
    """Progress bar with what the trainer does now: loading, compiling, training (speed, time left), checking."""
    latest, batch = job.newest("batch", "status", "download"), job.newest("batch")
    done = job.fraction_done()
    if job.stop_requested:
        where = f" (epoch {batch['epoch']}, batch {batch['batch']})" if batch else ""
        st.progress(done, text=f"Stopping after the current batch{where}; the model will be saved as it is...")
    elif latest is None:
        st.progress(0.0, text="Starting the trainer...")
    elif latest["event"] == "download" and latest["total"] > 0:
        st.progress(min(latest["done"] / latest["total"], 1.0),
                    text=f"Downloading CIFAR-10: {latest['done'] / 2**20:.0f} of {latest['total'] / 2**20:.0f} MB")
    elif latest["event"] == "batch":
        speed = (f"{batch['images_per_second']:,.0f} images/s · about {text.fmt_seconds(batch['eta'])} left"
                 if batch.get("images_per_second") else "measuring the speed...")
        st.progress(done, text=f"Epoch {batch['epoch']}/{batch['epochs']}, batch {batch['batch']}/{batch['batches']}"
                               f" · {speed}")
    else:  # a status line: say what it is doing and for how long, so a slow step is not a silent one
        since = max(0.0, time.time() - latest.get("time", time.time()))
        message = str(latest.get("message", "working"))
        st.progress(done, text=f"{message[:1].upper()}{message[1:]}... {since:.0f} s")


def curves(job: Any) -> None:
    """Live loss and accuracy curves."""
    epochs, current = job.epochs(), job.current_batches()
    if epochs or current:
        st.plotly_chart(charts.learning_curves(epochs, current), key=f"curves-{job.id}")


def live_confusion(job: Any) -> None:
    """The validation confusion matrix and per-class accuracy of the latest epoch, while training runs."""
    epoch = next((e for e in reversed(job.epochs()) if "val_confusion" in e), None)
    start = job.newest("start") or {}
    if epoch is None or "labels" not in start:
        return
    confusion.confusion_charts(np.asarray(epoch["val_confusion"]), start["labels"], f" after epoch {epoch['epoch']} of "
                     f"{epoch['epochs']}", f"live-{job.id}")


def settings_changed(job: Any) -> None:
    """Say so when the results below come from other settings than the ones on the page now."""
    changed = (job.model_config.differences(st.session_state[MODEL])
               + job.train_config.differences(st.session_state[TRAIN]))
    if changed:
        st.info("**Your previous run**, trained with other settings than those on the page now: "
                + "; ".join(changed) + ". Press **Train** to train the current settings.", icon=":material/history:")


def finished(job: Any) -> None:
    """What the user gets after training: the verdict, metrics, confusion matrix, per-class accuracy, mistakes."""
    ok = {"finished": st.success, "stopped": st.info, "nan": st.error, "error": st.error, "cancelled": st.info}
    ok.get(job.state, st.info)(job.message[:1].upper() + job.message[1:] + ".")
    settings_changed(job)
    if not (job.run_dir / "model.keras").exists():
        unsaved(job)
        return
    try:
        info = runs.read_run(job.run_dir)
    except runs.RunError as e:  # deleted or damaged since it was saved
        st.warning(f"The saved run cannot be read any more: {text.plain(str(e))}.")
        return
    server.adopt_finished_run()  # the sidebar did this already when the app script ran first
    last = info.history[-1] if info.history else {}
    m = st.columns(4)
    m[0].metric("Validation accuracy", f"{info.val_accuracy:.1%}" if info.val_accuracy is not None else "—",
                help="of the saved model, on the validation images, answering as the app does"
                     + (": each image's answer averaged with its mirror image's, which the per-epoch curve below "
                        "(one view) does not do" if info.model_config.mirror_predict else ""))
    m[1].metric("Training accuracy", f"{last['accuracy']:.1%}" if "accuracy" in last else "—",
                help="averaged over the last epoch, with augmentation")
    m[2].metric("Epochs completed", f"{info.epochs_completed} of {info.train_config.epochs}")
    m[3].metric("Training time", text.fmt_seconds(info.meta.train_seconds))
    curves(job)
    st.caption(f"Saved as **{text.plain(info.name)}** in {info.path.parent} and made the active model.")
    try:
        rep = analysis.read_report(info.path)
    except analysis.ReportError as e:
        st.caption(f"No confusion matrix: {text.plain(str(e))}.")
        return
    part = f" (the first {rep.images} validation images)" if rep.images < info.train_config.val_size else ""
    pictures = confusion.run_pictures(info)
    confusion.confusion_charts(rep.matrix, rep.labels, part, job.id, rep, pictures)
    mistakes(rep, pictures)


def mistakes(rep: analysis.ValidationReport, pictures: np.ndarray | None) -> None:
    """The validation images the model got wrong with the highest confidence."""
    wrong = rep.confidently_wrong(GALLERY)
    if not wrong or pictures is None:
        return
    st.markdown("**Most confidently wrong** validation images: what the model was surest about, and missed")
    for row in range(0, len(wrong), GALLERY // 2):
        cols = st.columns(GALLERY // 2)
        for col, m in zip(cols, wrong[row:row + GALLERY // 2]):
            col.image(images.enlarge(pictures[m.index], 112), width=112,
                      caption=f"{rep.labels[m.predicted]} {m.confidence:.0%} (is {rep.labels[m.true]})")


def unsaved(job: Any) -> None:
    """What a job that trained but could not save still tells: its last epoch's figures and its curves."""
    epochs = job.epochs()
    if not epochs:
        return
    last = epochs[-1]
    m = st.columns(3)
    m[0].metric("Validation accuracy", f"{last['val_accuracy']:.1%}" if "val_accuracy" in last else "—",
                help="after the last complete epoch; the model itself was not saved")
    m[1].metric("Training accuracy", f"{last['accuracy']:.1%}" if "accuracy" in last else "—")
    m[2].metric("Epochs completed", f"{sum(not e.get('partial') for e in epochs)} of {last['epochs']}")
    curves(job)


def job_view(job_id: str, page_saw_active: bool) -> None:
    """The job's state; reruns the whole page once when it ends so the buttons come back."""
    manager = server.job_manager()
    job = manager.get(job_id)
    if job is None:
        return
    if job.state == "queued":
        eta = manager.estimated_start(job)
        st.info(f"Waiting for a training slot: number {manager.queue_position(job)} in the queue "
                f"({len(manager.running())} training now, at most {manager.max_jobs} at a time)"
                + (f"; it should start in about {text.fmt_seconds(eta)}." if eta is not None else "."),
                icon=":material/hourglass_empty:")
    elif job.active:
        progress_block(job)
    elif page_saw_active:
        st.rerun()
    else:
        finished(job)


def live_charts(job_id: str) -> None:
    """The growing curves and the latest epoch's confusion matrix of a running job."""
    job = server.job_manager().get(job_id)
    if job is not None and job.active:
        curves(job)
        live_confusion(job)


st.title("Train")
st.markdown("Train the network from **Architecture** on a CIFAR-10 subset and watch it learn; "
            "you can switch pages while it trains and come back.")
settings.config_error(TRAIN)

manager = server.job_manager()
job = manager.latest_job(state.owner())
busy = bool(job and job.active)

try:
    source = data.find_data()
    n_train, n_test = image_counts(str(source.path)) if source else (None, None)
except data.DataError as e:
    source, n_train, n_test = None, None, None
    st.error(f"{e}.")

left, right = st.columns([1, 2], gap="large")
with left:
    config_widget(TRAIN, "train_size", "Training images", high=n_train or None, disabled=busy)
    config_widget(TRAIN, "val_size", "Validation images", high=n_test or None, disabled=busy)
    config_widget(TRAIN, "epochs", "Epochs", disabled=busy)
    config_widget(TRAIN, "batch_size", "Batch size", disabled=busy)
    config_widget(TRAIN, "learning_rate", "Learning rate", disabled=busy)
    config_widget(TRAIN, "seed", "Seed", disabled=busy)
    with st.expander("More training settings"):
        config_widget(TRAIN, "schedule", "Learning-rate schedule", disabled=busy)
        config_widget(TRAIN, "augment", "Augment (flips and shifts)", disabled=busy)
        if st.session_state[TRAIN].augment:
            config_widget(TRAIN, "shift", "Largest shift (pixels)", disabled=busy)
        config_widget(TRAIN, "label_smoothing", "Label smoothing", disabled=busy)
        config_widget(TRAIN, "xla", "Compile with XLA", disabled=busy)
    with st.expander("What do these words mean?", icon=":material/school:"):
        st.markdown("\n\n".join(f"**{term.capitalize()}.** {meaning}" for term, meaning in glossary.TERMS.items()))
    if source:
        st.caption(f"Data: {source.describe()}, {n_train:,} training and {n_test:,} test images.")
    else:
        st.caption(f"CIFAR-10 is not on this machine: the first training downloads it ({data.ARCHIVE_MB} MB).")
    take_home.script_button()

with right:
    model_config, train_config = st.session_state[MODEL], st.session_state[TRAIN]
    cost = describe(model_config)
    estimate = cost.train_seconds(train_config)
    memory = manager.memory_check(model_config, train_config)  # this machine's, or the Ray cluster's largest node
    st.markdown(f"**Network:** {text.architecture_summary(model_config)}.  \n"
                f"**Estimated training time:** about {text.fmt_seconds(estimate)} for {train_config.epochs} "
                f"epoch{'s' if train_config.epochs > 1 else ''} of {train_config.train_size:,} images; "
                f"peak memory about {memory.needed / 2**30:.1f} GiB.")
    if train_config.images_per_epoch < UNUSED_WORTH_SAYING * train_config.train_size:
        st.caption(f"Each epoch uses {train_config.images_per_epoch:,} of the {train_config.train_size:,} training "
                   f"images: whole batches of {train_config.batch_size} only (the shuffle draws other images each "
                   "epoch). A batch size that divides the number of images uses them all.")
    if not memory.fits:
        st.error(f"**Not enough memory for this training:** it would need {memory.describe()}. Use a smaller batch "
                 "size, fewer or narrower blocks, or the fast default.", icon=":material/memory:")
    elif memory.tight:
        st.warning(f"**This training takes much of the machine's memory:** {memory.describe()}. It may fail if "
                   "anything else needs memory; a smaller batch size needs less.", icon=":material/memory:")
    a, b, _ = st.columns([1, 1, 2])
    clicked = a.button("Train", type="primary", icon=":material/play_arrow:", disabled=busy or not memory.fits,
                       on_click=start, width="stretch")
    if clicked and not st.session_state.pop(STARTED, False):  # a click that reached a session without its widgets
        start()  # (the server restarted while the tab stayed open): Streamlit ran no callback for it
        st.session_state.pop(STARTED)
        st.rerun()
    if busy:
        label = "Cancel" if job.state == "queued" else "Stop"
        b.button(label, icon=":material/stop:", on_click=manager.stop, args=(job,), disabled=bool(job.stop_requested),
                 width="stretch", help="stops after the current batch and keeps the model as it is")
    if SAVE_PROBLEM in st.session_state:
        st.warning(st.session_state[SAVE_PROBLEM] + ".")
    if job is None:
        st.info("Press **Train** to start. The curves appear here after the first batches.")
    else:
        st.fragment(job_view, run_every=PROGRESS_REFRESH if busy else None)(job.id, busy)
        if busy:
            st.fragment(live_charts, run_every=CHARTS_REFRESH)(job.id)
