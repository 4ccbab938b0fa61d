"""Inside a saved run through AppTest: the deconvnet projection and top patches on Classify, and on Runs the
confusion matrix whose cells open their validation images."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import keras
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from deconv import analysis, cost, data, runs
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


@contextlib.contextmanager
def replaced_report(run: Path, content: dict[str, Any]) -> Iterator[None]:
    """The run's report.json replaced by `content` (as a visitor's imported run could hold it), then restored."""
    old = analysis.read_report(run)
    (run / analysis.REPORT_FILE).write_text(json.dumps(content))
    try:
        yield
    finally:
        analysis.save_report(old, run)


def click_cell(page, run: Path, cell: tuple[int, int]) -> AppTest:
    """The Runs page on `run`, with one cell of its confusion matrix clicked."""
    at = page("pages/runs.py")
    at = next(s for s in at.selectbox if s.label == "Run").set_value(run.name).run()
    at.session_state[f"cm-run-{run.name}.chosen"] = cell  # what a click on that cell stores
    return at.run()


def test_a_report_whose_label_names_are_a_link_and_an_image_is_refused_and_neither_is_rendered(checked_run: Path,
                                                                                                page) -> None:
    old = analysis.read_report(checked_run).to_json()
    hostile = ["[x](http://evil.invalid)", "<img src=http://evil.invalid/x.png>", *old["labels"][2:]]
    with replaced_report(checked_run, {**old, "labels": hostile}):
        at = click_cell(page, checked_run, (0, 1))  # the cell of the two names
        assert not at.exception
        assert "No confusion matrix: the report's labels must be 10 different plain class names" in captions(at)
        shown = [e.value for e in (*at.markdown, *at.caption, *at.error)]
        assert not any("](http" in v or "<img" in v for v in shown)  # no link, no image fetched from outside
        assert f"cm-run-{checked_run.name}" not in [c.key for c in at.get("plotly_chart")]


def test_a_report_longer_than_the_runs_validation_set_gets_a_message_not_an_exception(checked_run: Path,
                                                                                       page) -> None:
    old = analysis.read_report(checked_run)
    true, predicted = np.tile(old.true, 2), np.tile(old.predicted, 2)  # 200 images for the run's 100, adding up
    longer = {**old.to_json(), "true": true.tolist(), "predicted": predicted.tolist(),
              "matrix": analysis.confusion_matrix(true, predicted).tolist()}
    with replaced_report(checked_run, longer):
        at = click_cell(page, checked_run, (int(true[-1]), int(predicted[-1])))  # a cell that holds image 199
        assert not at.exception
        assert "the report counts 200 validation images, but the run has 100" in captions(at)


def test_a_clicked_cell_names_its_classes_as_written_not_as_markdown(checked_run: Path, page) -> None:
    old = analysis.read_report(checked_run).to_json()
    labels = ["big _cat_", *old["labels"][1:]]  # a plain class name that markdown would set in italics
    with replaced_report(checked_run, {**old, "labels": labels}):
        at = click_cell(page, checked_run, (0, 0))
        said = [m.value for m in at.markdown if m.value.startswith("true **")]
        assert not at.exception and said[0].startswith("true **big \\_cat\\_**, predicted **big \\_cat\\_**")


def test_top_patches_of_a_costlier_network_search_as_many_images_as_the_budget_leaves(checked_run: Path, page,
                                                                                     monkeypatch) -> None:
    crops = cost.patch_work(CONFIG, TRAIN.train_size, "block2_conv").bounded
    per_image = cost.describe(CONFIG).flops_through("block2_conv")
    # as if each image cost as much as the budget allows for 40 and a half: 40 images, fewer than the run's 200
    monkeypatch.setattr(cost, "PATCH_SECONDS", (crops + 40.5 * per_image) / cost.CPU_TRAIN_FLOPS_PER_SECOND)
    at, key = look_inside(page, checked_run)
    assert at.toggle(key=f"patch-go-{key}").label.startswith("Search up to 40 training images")
    at.toggle(key=f"patch-go-{key}").set_value(True).run()
    assert not at.exception and "of 40 training images that excite one channel most" in captions(at)


def test_a_block_whose_top_patches_cost_more_than_the_budget_says_so_instead(checked_run: Path, page,
                                                                            monkeypatch) -> None:
    crops = cost.patch_work(CONFIG, TRAIN.train_size, "block2_conv").bounded
    monkeypatch.setattr(cost, "PATCH_SECONDS", 0.9 * crops / cost.CPU_TRAIN_FLOPS_PER_SECOND)
    at, key = look_inside(page, checked_run)
    assert not at.exception and not [t for t in at.toggle if t.key == f"patch-go-{key}"]
    said = [w.value for w in at.warning if "top patches of block2_conv" in w.value]
    assert len(said) == 1 and said[0].startswith("Not computed here: cropping the top patches of block2_conv")
    assert said[0].endswith("An earlier block costs less.")
    at.selectbox(key=f"patch-block-{key}").set_value("block1_conv").run()  # fewer layers to go through
    assert at.toggle(key=f"patch-go-{key}").label.startswith("Search up to 200 training images")
