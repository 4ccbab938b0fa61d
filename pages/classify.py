"""Classify: uploaded pictures or CIFAR-10 test images, with the 32x32 view the model sees and its top 5."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image

from deconv import charts, data, inference, runs
from pages import common
from pages.common import ACTIVE_RUN

common.require_app()

UPLOAD_TYPES = ["png", "jpg", "jpeg", "gif", "bmp", "webp"]
SAMPLES = 8
TOP = 5


@st.cache_data(show_spinner=False)
def test_images(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The test_batch images, labels and label names of a data folder."""
    source = data.DataSource(Path(path), "")
    x, y = data.read_test(source)
    return x, y, data.label_names(source)


def show(key: str, name: str, original: Image.Image, view: np.ndarray, prediction: inference.Prediction,
         true: str | None) -> None:
    """One image: as uploaded, as the model sees it, and the top-5 chart."""
    a, b, c = st.columns([1, 1, 3], vertical_alignment="center")
    a.image(inference.preview(original), caption=name)
    b.image(inference.enlarge(view), caption="what the model sees (32x32)", width=128)
    verdict = "" if true is None else (" ✓" if prediction.labels[0] == true else f" ✗ (true: {true})")
    c.markdown(f"**{prediction.labels[0]}** {prediction.probabilities[0]:.0%}{verdict}")
    c.plotly_chart(charts.top_k(prediction.labels[:TOP], prediction.probabilities[:TOP], true), key=f"top-{key}")
    with c.expander("All ten classes"):
        st.dataframe({"class": prediction.labels, "probability": prediction.probabilities}, hide_index=True,
                     column_config={"probability": st.column_config.ProgressColumn(format="%.4f", min_value=0.0,
                                                                                   max_value=1.0)})


st.title("Classify")
st.markdown("Upload pictures, or draw random CIFAR-10 test images, and see what the network makes of them.")

saved, broken = runs.list_runs(common.runs_dir())
if not saved:
    st.info("No trained model yet: train one on the **Train** page first.")
    st.stop()
names = [r.name for r in saved]
active = st.session_state.get(ACTIVE_RUN)
default = next((i for i, r in enumerate(saved) if str(r.path) == active), 0)
choice = st.selectbox("Model", names, index=default, help="the active model, or any saved run")
run = saved[names.index(choice)]
st.caption(common.architecture_summary(run.model_config)
           + (f"; validation accuracy {run.val_accuracy:.1%}" if run.val_accuracy is not None else ""))
try:
    model = common.model_for(run)
except runs.RunError as e:
    st.error(f"This run cannot be used: {e}.")
    st.stop()
labels = inference.label_names_of(run.meta)

upload_tab, cifar_tab = st.tabs(["Your pictures", "CIFAR-10 test images"])
with upload_tab:
    files = st.file_uploader("Images (png, jpg, gif, bmp, webp; up to 10 MB each)", type=UPLOAD_TYPES,
                             accept_multiple_files=True)
    good: list[tuple[str, object, np.ndarray]] = []
    for f in files or []:
        try:
            img = inference.open_image(f.getvalue())
            good.append((f.name, img, np.asarray(inference.model_view(img))))
        except inference.ImageError as e:
            st.error(f"**{f.name}** cannot be classified: {e}.")
    if good:
        predictions = inference.classify(model, np.stack([g[2] for g in good]), labels, k=len(labels))
        for i, ((name, img, view), pred) in enumerate(zip(good, predictions)):
            show(f"upload-{i}-{name}", name, img, view, pred, None)

with cifar_tab:
    try:
        source = data.get_data() if data.find_data() else None
    except data.DataError as e:
        source = None
        st.error(f"{e}.")
    if source is None:
        st.info("CIFAR-10 is not on this machine: see the Home page to download it.")
    else:
        if st.button("Draw new images", icon=":material/casino:") or "sample_seed" not in st.session_state:
            st.session_state["sample_seed"] = int(np.random.default_rng().integers(2**31))
        try:
            x, y, test_labels = test_images(str(source.path))
        except data.DataError as e:
            st.error(f"{e}.")
            st.stop()
        pick = np.random.default_rng(st.session_state["sample_seed"]).choice(len(x), min(SAMPLES, len(x)), replace=False)
        for i, pred in zip(pick, inference.classify(model, x[pick], labels, k=len(labels))):
            show(f"test-{i}", f"test image {i}", inference.enlarge(x[i], 150), x[i], pred, test_labels[y[i]])
