"""Classify: uploaded pictures or CIFAR-10 test images, the 32x32 view the model sees, its top 5, and a look inside."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st
from PIL import Image
from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager
from streamlit.runtime.scriptrunner import get_script_run_ctx

from deconv import charts, data, images, inference, runs
from deconv.computations import Progress, digest, in_chunks
from deconv.cost import classify_work, describe, inside_work
from pages.parts import first_visit, inside, server, state, text
from pages.parts.state import ACTIVE_RUN

if TYPE_CHECKING:
    from streamlit.typing import UploadedFile

first_visit.require_app()

SAMPLES = 8
TOP = 5
PICTURES = "classify.pictures"  # this session's uploaded pictures (images.Pictures): they outlive page switches
UPLOADER = "classify.uploader"  # the uploader's generation: a new key empties it once its files are kept


def forget_files(files: list[UploadedFile]) -> None:
    """Drop uploaded files from Streamlit's store once read, as st.chat_input does with its own: the store keeps
    an uploader's files until the session ends, also after the uploader is replaced by a new key."""
    ctx = get_script_run_ctx()
    if ctx is not None and isinstance(ctx.uploaded_file_mgr, MemoryUploadedFileManager):
        for f in files:
            ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=f.file_id)


@st.cache_data(show_spinner=False)
def test_images(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The test_batch images, labels and label names of a data folder."""
    source = data.DataSource(Path(path), "")
    x, y = data.read_test(source)
    return x, y, data.label_names(source)


def answers(run: runs.RunInfo, model: Any, views: np.ndarray, labels: list[str]) -> list[inference.Prediction] | None:
    """Each view's answer over all the classes: kept per run and view, computed now or beside the page (a progress
    line, None until done); None with a message when one image costs more than a page may spend on it."""
    batch = describe(run.model_config).eval_batch()  # the article's network classifies a few images at a time
    work = classify_work(run.model_config, len(views))
    keys = [(str(run.path), run.version, "answer", digest(view)) for view in views]
    def classify(chunk: list[int]) -> list[inference.Prediction]:
        return inference.classify(model, views[chunk], labels, k=len(labels), batch_size=batch)

    return inside.computed_each(
        keys, work, f"Classifying {len(views)} image{'s' if len(views) > 1 else ''}", in_chunks(classify, batch),
        inside.too_costly(work, "classifying one image", "Classify with the command line on a bigger machine: "
                                                         "`python -m deconv classify RUN_FOLDER IMAGE`."))


def look_inside(key: str, run: runs.RunInfo, view: np.ndarray, prediction: inference.Prediction,
                labels: list[str]) -> None:
    """Where the evidence for a class lies, beside the feature maps of every conv and deconv block; the deconvnet
    projection of one activation; the top patches of a block's channels."""
    maps_tab, projection_tab, patches_tab = st.tabs(["Feature maps and evidence", "Deconvnet projection",
                                                     "Top patches"])
    blocks = inside.block_names(run)
    with projection_tab:
        inside.projection_panel(key, run, view, digest(view), blocks)
    with patches_tab:
        inside.top_patches_panel(key, run, blocks)
    with maps_tab:
        maps_and_evidence(key, run, view, prediction, labels)


def maps_and_evidence(key: str, run: runs.RunInfo, view: np.ndarray, prediction: inference.Prediction,
                      labels: list[str]) -> None:
    """Grad-CAM and saliency for a chosen class beside every block's most active channels."""
    from deconv import explain

    chance = dict(zip(prediction.labels, prediction.probabilities))
    left, right = st.columns([1, 3], border=True)
    chosen = left.selectbox("Evidence for", prediction.labels, key=f"class-{key}",
                            format_func=lambda label: f"{label} ({chance[label]:.0%})")
    probe = explain.probe(server.model_for(run))
    seen, index = (str(run.path), run.version, digest(view)), labels.index(chosen)

    def maps_of(progress: Progress) -> tuple[list[explain.BlockMaps], dict[str, float]]:
        return explain.feature_maps(probe, view), explain.checkerboards(probe, view)

    def evidence_of(progress: Progress) -> explain.Evidence:
        return explain.evidence(probe, view, index)

    maps_work, evidence_work = inside_work(run.model_config, "maps"), inside_work(run.model_config, "evidence")
    drawn = inside.computed((*seen, "maps"), maps_work, "Drawing every block's feature maps", maps_of,
                            inside.too_costly(maps_work, "drawing the feature maps of one image"))
    found = inside.computed((*seen, "evidence", index), evidence_work, f"Finding the evidence for {chosen}",
                            evidence_of, inside.too_costly(evidence_work, "finding the evidence in one image"))
    if drawn is None or found is None:
        return
    maps, uneven = drawn
    if found.grad_cam.any():
        left.plotly_chart(charts.heat_overlay(view, found.grad_cam, "Grad-CAM"), key=f"cam-{key}")
        left.caption(f"Where the last block found features that raise the **{chosen}** score.")
    else:
        left.info(f"Grad-CAM: nothing in the last block raises the **{chosen}** score for this image.")
    left.plotly_chart(charts.heat_overlay(view, found.saliency, "Gradient saliency"), key=f"saliency-{key}")
    left.caption(f"The pixels whose slightest change would move the **{chosen}** score most.")
    right.caption("What each block outputs for this image: its most active channels, each on its own scale (yellow "
                  "is the channel's peak), in network order; a deconv with stride 2 maps the features back up to a "
                  "larger map. Its **checkerboard score** is the spread of its mean activation over the 2x2 "
                  "positions of the stride, over the mean: 0 is even, higher means the upsampling paints a grid.")
    for conv, deconv in itertools.zip_longest(maps[::2], maps[1::2]):
        for column, block in zip(right.columns(2), (conv, deconv)):
            if block is None:
                continue
            score = f", checkerboard score {uneven[block.name]:.2f}" if block.name in uneven else ""
            title = f"{block.label}<br><sup>{block.summary}{score}</sup>"
            column.plotly_chart(charts.feature_grid(block.tiles, block.channels, title), key=f"maps-{key}-{block.name}")


def show(key: str, name: str, preview: Image.Image | np.ndarray, view: np.ndarray, prediction: inference.Prediction,
         true: str | None, run: runs.RunInfo, labels: list[str]) -> None:
    """One image: its preview, as the model sees it, the top-5 chart, and on request a look inside."""
    a, b, c = st.columns([1, 1, 3], vertical_alignment="center")
    a.image(preview, caption=text.plain(name))
    b.image(images.enlarge(view), caption="what the model sees (32x32)", width=128)
    verdict = "" if true is None else (" ✓" if prediction.labels[0] == true else f" ✗ (true: {true})")
    unsure = prediction.confidence_note(maybe_other=true is None)
    c.markdown(f"**{prediction.labels[0]}** {prediction.probabilities[0]:.0%}{verdict}"
               + (f" — :orange[{unsure}]" if unsure else ""))
    c.plotly_chart(charts.top_k(prediction.labels[:TOP], prediction.probabilities[:TOP], true), key=f"top-{key}")
    with c.expander("All ten classes"):
        st.dataframe({"class": prediction.labels, "probability": prediction.probabilities}, hide_index=True,
                     column_config={"probability": st.column_config.ProgressColumn(format="%.4f", min_value=0.0,
                                                                                   max_value=1.0)})
    if c.toggle("Look inside", key=f"inside-{key}", help="the feature maps of every block, and where the evidence "
                "for a class lies in the image"):
        look_inside(key, run, view, prediction, labels)


st.title("Classify")
st.markdown("Upload pictures, or draw random CIFAR-10 test images, and see which of its ten classes the network "
            "gives them. **Look inside** a result to see what every block outputs and where the evidence for a class "
            "lies.")

saved, broken = runs.list_runs(server.runs_dir())
reference = runs.reference_run()
saved = ([reference] if reference else []) + saved
if not saved:
    st.info("No trained model yet: train one on the **Train** page first.")
    st.stop()
names = ["Reference model (shipped with the app)" if state.is_reference(r) else r.name for r in saved]
active = st.session_state.get(ACTIVE_RUN)
default = next((i for i, r in enumerate(saved) if str(r.path) == active), 0)
choice = st.selectbox("Model", names, index=default, help="the active model, the reference model, or any saved run")
run = saved[names.index(choice)]  # run names have no spaces: none is taken for the reference's label
st.caption(text.architecture_summary(run.model_config)
           + (f"; validation accuracy {run.val_accuracy:.1%}" if run.val_accuracy is not None else ""))
try:
    model = server.model_for(run)
except runs.RunError as e:
    st.error(f"This run cannot be used: {text.plain(str(e))}.")
    st.stop()
labels = inference.label_names_of(run.meta)

upload_tab, cifar_tab = st.tabs(["Your pictures", "CIFAR-10 test images"])
pictures: images.Pictures = st.session_state.setdefault(PICTURES, images.Pictures())
with upload_tab:
    generation = st.session_state.setdefault(UPLOADER, 0)
    mb = images.MAX_BYTES // 2**20
    files = st.file_uploader(f"Images ({', '.join(images.FORMATS.values())}; up to {mb} MB each, "
                             f"{images.MAX_FILES_PER_UPLOAD} at a time)", type=list(images.FILE_TYPES),
                             accept_multiple_files=True, max_upload_size=mb, key=f"upload-{generation}")
    if files:
        pictures.upload([(f.name, f.getvalue()) for f in files])  # keeps a preview and the 32x32 view, not the file
        forget_files(files)
        st.session_state[UPLOADER] = generation + 1
        st.rerun()  # with an empty uploader: each picture is shown once, from the kept ones
    if st.toggle(":material/photo_camera: Take a picture with the camera", key="classify.camera"):
        photo = st.camera_input("Camera (the picture is classified, kept while this tab is open, never saved)",
                                key=f"camera-{generation}")
        if photo is not None:
            pictures.upload([("camera photo", photo.getvalue())])  # checked and bounded like any uploaded file
            forget_files([photo])
            st.session_state[UPLOADER] = generation + 1
            st.rerun()  # a fresh camera widget: the same photo is not classified twice
    for name, problem in pictures.problems:
        st.error(f"**{text.plain(name)}** cannot be classified: {problem}.")  # the name is the visitor's
    if pictures.left_out:
        st.warning(f"{pictures.left_out} more file{'s were' if pictures.left_out > 1 else ' was'} left out: one "
                   f"upload takes {images.MAX_FILES_PER_UPLOAD} files at most. Upload the others on their own.")
    if pictures:
        st.info(f"The network knows ten classes only: {', '.join(labels)}. It answers every picture with one of "
                "them, so a picture of anything else (a coffee cup, a rocket) still gets one of these labels. An "
                f"answer is marked **unsure** when {inference.UNSURE_RULE}; a confident answer is no proof that "
                "the picture shows one of the ten either.", icon=":material/info:")
        note, clear = st.columns([4, 1], vertical_alignment="center")
        note.caption(f"Your last {pictures.limit} pictures stay here while this tab is open, also when you visit "
                     "other pages; older ones are dropped.")
        clear.button("Clear pictures", icon=":material/delete:", on_click=pictures.clear)
        for picture, pred in zip(pictures, answers(run, model, pictures.views(), labels) or []):
            show(f"upload-{picture.number}-{picture.name}", picture.name, picture.preview, picture.view, pred, None,
                 run, labels)

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
        for i, pred in zip(pick, answers(run, model, x[pick], labels) or []):
            show(f"test-{i}", f"test image {i}", images.enlarge(x[i], 150), x[i], pred, test_labels[y[i]], run,
                 labels)
