"""The confusion matrix beside per-class accuracy, whose cells open the validation images they count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from deconv import analysis, charts, data, images, runs
from deconv.config import TrainConfig
from pages.parts import text

CELL_IMAGES = 24  # images shown for a clicked cell


@st.cache_data(show_spinner=False, max_entries=4)
def validation_images(path: str, val_size: int, seed: int) -> np.ndarray:
    """The validation images a run was checked on (its report's indices point into them)."""
    source = data.DataSource(Path(path), "")
    return data.validation_subset(TrainConfig(val_size=val_size, seed=seed), source)[0]


def run_pictures(info: runs.RunInfo) -> np.ndarray | None:
    """A run's validation images, if the data it was trained with is this server's."""
    path = data.own_folder(info.meta.data.path)
    if path is None:
        return None
    try:
        return validation_images(path, info.train_config.val_size, info.train_config.seed)
    except data.DataError:
        return None


def confusion_charts(matrix: np.ndarray, labels: list[str], when: str, key: str,
                     report: analysis.ValidationReport | None = None, pictures: np.ndarray | None = None) -> None:
    """A confusion matrix beside the per-class accuracy it implies; with a report that kept its per-image classes
    and the validation images, a click on a cell shows that cell's images."""
    clickable = (report is not None and report.true is not None and pictures is not None
                 and len(report.true) <= len(pictures))  # its indices point into these images
    left, right = st.columns([3, 2])
    left.markdown(f"**Confusion matrix**{when} ({int(matrix.sum())} validation images)")
    chosen_key = f"cm-{key}.chosen"
    fig = charts.confusion(matrix, labels, clickable, st.session_state.get(chosen_key))
    if clickable:
        event = left.plotly_chart(fig, key=f"cm-{key}", on_select="rerun", selection_mode="points")
        points = [p for p in (event.selection.points if event else [])
                  if p.get("curve_number") == 1 and "point_index" in p]
        if points:  # the cell markers run row by row: the point's number is its cell (names may look like numbers)
            st.session_state[chosen_key] = divmod(int(points[0]["point_index"]), len(labels))
        left.caption("Click a cell to see its images.")
    else:
        left.plotly_chart(fig, key=f"cm-{key}")
    right.markdown(f"**Accuracy per class**{when}")
    right.plotly_chart(charts.per_class(analysis.class_accuracy(matrix), labels), key=f"pc-{key}")
    if clickable and (chosen := st.session_state.get(chosen_key)):
        cell_images(report, pictures, *chosen)


def cell_images(report: analysis.ValidationReport, pictures: np.ndarray, true: int, predicted: int) -> None:
    """The validation images of one confusion-matrix cell, as many as fit."""
    found = report.cell(true, predicted)
    t, p = text.plain(report.labels[true]), text.plain(report.labels[predicted])  # the run's files: shown as written
    what = f"true **{t}**, predicted **{p}**" + (" (right)" if true == predicted else "")
    if found is None or not len(found):
        st.markdown(f"{what}: no validation images.")
        return
    st.markdown(f"{what}: {len(found)} validation image{'s' if len(found) > 1 else ''}"
                + (f", the first {CELL_IMAGES} shown" if len(found) > CELL_IMAGES else ""))
    per_row = 12
    shown = found[:CELL_IMAGES]
    for row in range(0, len(shown), per_row):
        for col, i in zip(st.columns(per_row), shown[row:row + per_row]):
            col.image(images.enlarge(pictures[i], 64), caption=f"#{i}")
