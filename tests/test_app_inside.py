"""Inside a saved run through AppTest: the deconvnet projection and top patches on Classify, and on Runs the
confusion matrix whose cells open their validation images."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from deconv import analysis, data, runs
from deconv.config import ModelConfig, TrainConfig
from deconv.inference import predict
from deconv.model import build_model
from deconv.samples import synthetic_images

CONFIG = ModelConfig(widths=(8, 16))  # encoder 16x16x8, 8x8x16; decoder up1 back to 16x16x8
TRAIN = TrainConfig(train_size=200, val_size=100)


@pytest.fixture(scope="module")
def checked_run(app_env: Path) -> Path:
    """A run trained for a moment on the synthetic colours, with the report the trainer writes: every validation
    image's class and prediction, on the data folder the app uses."""
    keras.utils.set_random_seed(0)
    y = np.repeat(np.arange(10), 20)
    model = build_model(CONFIG)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(synthetic_images(y, seed=0).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y, epochs=2, verbose=0)
    source = data.get_data()
    x_val, y_val = data.validation_subset(TRAIN, source)
    meta = runs.RunMeta(data=runs.DataInfo(str(source.path), "test", TRAIN.train_size, TRAIN.val_size))
    path = runs.save_run(app_env / "inside", model, CONFIG, TRAIN, [], meta)
    analysis.save_report(analysis.report(predict(model, x_val, 50), y_val, data.label_names(source)), path)
    return path


def look_inside(page, run: Path) -> tuple[AppTest, str]:
    """Classify with `run`, the first CIFAR-10 test image's Look inside turned on; and that image's key."""
    at = page("pages/classify.py")
    at = next(s for s in at.selectbox if s.label == "Model").set_value(run.name).run()
    key = next(c.key for c in at.get("plotly_chart") if c.key.startswith("top-test-")).removeprefix("top-")
    return at.toggle(key=f"inside-{key}").set_value(True).run(), key


def captions(at: AppTest) -> str:
    """Every image caption and st.caption of the page, as one text."""
    images = [c for el in at.get("image") for c in el.captions]
    return " | ".join(images + [c.value for c in at.caption])


def test_the_deconvnet_projection_of_the_strongest_then_a_chosen_channel(checked_run: Path, page) -> None:
    at, key = look_inside(page, checked_run)
    assert not at.exception
    blocks = at.selectbox(key=f"proj-block-{key}")
    assert blocks.options == ["block1_conv", "block2_conv", "up1_deconv", "up1_conv"]
    assert blocks.value == "block2_conv"  # the deepest encoder block first
    text = captions(at)
    assert "deconvnet projection (grey: nothing came back)" in text and "guided backpropagation" in text
    assert "block2_conv channel" in text and "8x8 map" in text
    blocks.set_value("up1_deconv").run()
    at.number_input(key=f"proj-channel-{key}").set_value(5).run()
    assert not at.exception
    assert "up1_deconv channel 5 at (" in captions(at) and "16x16 map" in captions(at)


def test_top_patches_show_a_grid_per_channel_once_asked(checked_run: Path, page) -> None:
    at, key = look_inside(page, checked_run)
    assert "channel 0" not in captions(at)  # nothing searched until asked
    at.toggle(key=f"patch-go-{key}").set_value(True).run()
    assert not at.exception
    grids = [c for c in captions(at).split(" | ") if c.startswith("channel ")]
    assert len(grids) == 16 and len(set(grids)) == 16  # block2_conv's 16 channels, each once
    assert "of 200 training images that excite one channel most" in captions(at)


def test_the_runs_page_opens_a_confusion_cell(checked_run: Path, page) -> None:
    at = page("pages/runs.py")
    at = next(s for s in at.selectbox if s.label == "Run").set_value(checked_run.name).run()
    key = f"cm-run-{checked_run.name}"
    assert key in [c.key for c in at.get("plotly_chart")] and not at.exception
    rep = analysis.read_report(checked_run)
    row, col = np.unravel_index(int(rep.matrix.argmax()), rep.matrix.shape)
    at.session_state[f"{key}.chosen"] = (int(row), int(col))  # what a click on that cell stores
    at.run()
    count = int(rep.matrix[row, col])
    said = [m.value for m in at.markdown if m.value.startswith(f"true **{rep.labels[row]}**")]
    assert said and f"{count} validation image" in said[0]
    shown = [c for c in captions(at).split(" | ") if c.startswith("#")]
    assert shown == [f"#{i}" for i in rep.cell(row, col)[:24]]


def test_a_report_without_per_image_classes_says_why_its_cells_do_not_open(checked_run: Path, page) -> None:
    old = analysis.read_report(checked_run)
    (checked_run / analysis.REPORT_FILE).write_text(
        json.dumps({k: v for k, v in old.to_json().items() if k not in ("true", "predicted")}))
    try:
        at = page("pages/runs.py")
        at = next(s for s in at.selectbox if s.label == "Run").set_value(checked_run.name).run()
        assert "train it again to open the cells" in captions(at)
    finally:
        analysis.save_report(old, checked_run)
