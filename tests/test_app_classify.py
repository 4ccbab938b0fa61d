"""The Classify page through AppTest: kept uploads, what an upload may hold, the ten-classes note, a look inside a
saved run, and what the page computes: kept, within its budget, the heavy part beside the page."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from deconv import cost, inference, runs, samples
from deconv.config import ModelConfig, TrainConfig
from deconv.model import build_model
from deconv.samples import LABELS, synthetic_images
from pages.parts import server

# each deconv doubles its map: 16 -> 32 -> 16 -> 32
CONFIG = ModelConfig(widths=(8, 16), deconv_stride=2, block_deconvs=True, up_blocks=0)


@pytest.fixture(scope="module")
def saved_run(app_env: Path) -> Path:
    """A run of CONFIG trained for a moment on the synthetic colours, saved where the app looks."""
    keras.utils.set_random_seed(0)
    y = np.repeat(np.arange(10), 20)
    x = synthetic_images(y, seed=0).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    model = build_model(CONFIG)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=20, verbose=0)
    return runs.save_run(app_env / "look-inside", model, CONFIG, TrainConfig(), [], runs.RunMeta())


@pytest.fixture(scope="module")
def untrained_run(app_env: Path) -> Path:
    """A run that never trained: its answers are near uniform over the ten classes."""
    keras.utils.set_random_seed(0)
    return runs.save_run(app_env / "untrained", build_model(CONFIG), CONFIG, TrainConfig(), [], runs.RunMeta())


def charts(at: AppTest, prefix: str) -> dict[str, dict[str, Any]]:
    """The plotly charts whose key starts with prefix, by key."""
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key.startswith(prefix)}


def classify_with(page, run: Path):
    """The Classify page with `run` chosen as its model (the reference model shipped with the app is the default)."""
    at = page("pages/classify.py")
    return next(s for s in at.selectbox if s.label == "Model").set_value(run.name).run()


def expected_blocks() -> list[tuple[str, str]]:
    """(name, chart title) of each block of CONFIG: its output shape and how many channels are drawn."""
    sizes, widths = CONFIG.feature_sizes(), [w for w in CONFIG.widths for _ in range(2)]
    names = [f"block{i // 2 + 1}_{('conv', 'deconv')[i % 2]}" for i in range(len(sizes))]
    return [(n, f"{n} {s}x{s}x{w}<br><sup>{w} most active of {w} channels</sup>")
            for n, s, w in zip(names, sizes, widths)]


def test_look_inside_an_upload_shows_every_block_and_the_class_evidence(saved_run: Path, page) -> None:
    at = classify_with(page, saved_run)
    at.file_uploader[0].set_value([("photo.png", samples.good()["photo.png"], "image/png")]).run()
    key = "upload-0-photo.png"
    assert not charts(at, f"maps-{key}")  # nothing computed until asked
    at.toggle(key=f"inside-{key}").set_value(True).run()
    assert not at.exception
    maps = charts(at, f"maps-{key}-")
    assert list(maps) == [f"maps-{key}-{name}" for name, _ in expected_blocks()]
    titles = [spec["layout"]["title"]["text"] for spec in maps.values()]
    scored = [re.search(r", checkerboard score (\d+\.\d\d)</sup>", t) for t in titles]
    assert [bool(m) for m in scored] == [False, True, False, True]  # the stride-2 deconvs map up: their score
    assert [re.sub(r", checkerboard score [\d.]+", "", t) for t in titles] == [title for _, title in expected_blocks()]
    assert all([t["type"] for t in spec["data"]] == ["heatmap"] for spec in maps.values())
    cam, saliency = charts(at, f"cam-{key}")[f"cam-{key}"], charts(at, f"saliency-{key}")[f"saliency-{key}"]
    for spec in (cam, saliency):
        assert [t["type"] for t in spec["data"]] == ["image", "heatmap"]
    assert "raise the" in " ".join(c.value for c in at.caption)


def test_evidence_for_another_class_of_a_cifar_image(saved_run: Path, page) -> None:
    at = classify_with(page, saved_run)
    key = next(c.key for c in at.get("plotly_chart") if c.key.startswith("top-test-")).removeprefix("top-")
    at.toggle(key=f"inside-{key}").set_value(True).run()
    chooser = at.selectbox(key=f"class-{key}")
    first = chooser.value
    assert len(chooser.options) == 10 and not at.exception
    before = charts(at, f"saliency-{key}")[f"saliency-{key}"]["data"][1]["z"]
    chooser.select_index(9).run()
    assert not at.exception and at.selectbox(key=f"class-{key}").value != first
    assert charts(at, f"saliency-{key}")[f"saliency-{key}"]["data"][1]["z"] != before  # the least likely class
    assert len(charts(at, f"maps-{key}-")) == len(expected_blocks())


PHOTO = ("photo.png", samples.good()["photo.png"], "image/png")


def upload_charts(at: AppTest) -> list[str]:
    """The keys of the uploaded pictures' top-5 charts, in the order shown."""
    return [c.key for c in at.get("plotly_chart") if c.key.startswith("top-upload-")]


def colour_png(i: int) -> tuple[str, bytes, str]:
    """An upload of its own colour, so that no two are the same file."""
    content = samples.encode(Image.new("RGB", (40, 30), (i * 10, 255 - i * 10, 128)), "PNG")
    return f"colour{i:02d}.png", content, "image/png"


def test_uploads_are_told_the_ten_classes_and_an_untrained_models_answer_is_unsure(untrained_run: Path, page) -> None:
    at = page("pages/classify.py")
    next(s for s in at.selectbox if s.label == "Model").set_value(untrained_run.name).run()
    assert not at.info  # nothing to explain before a picture is shown
    at.file_uploader[0].set_value([PHOTO]).run()
    assert not at.exception and upload_charts(at) == ["top-upload-0-photo.png"]
    note = " ".join(i.value for i in at.info)
    assert "ten classes only" in note and all(label in note for label in LABELS) and "unsure" in note
    lines = [m.value for m in at.markdown if "it may not be one of its ten classes" in m.value]
    assert len(lines) == 1 and "unsure: the model is not confident" in lines[0]  # the upload's, not the test images'


def test_uploaded_pictures_survive_a_visit_to_another_page(saved_run: Path, page) -> None:
    at = classify_with(page, saved_run)
    at.file_uploader[0].set_value([PHOTO]).run()
    assert upload_charts(at) == ["top-upload-0-photo.png"]
    assert not at.file_uploader[0].value  # taken: the picture is shown once, from the kept ones
    at.switch_page("pages/home.py").run()
    assert not upload_charts(at)
    at.switch_page("pages/classify.py").run()
    assert not at.exception and upload_charts(at) == ["top-upload-0-photo.png"]
    assert at.dataframe[0].value["probability"].sum() > 0.999


def test_the_same_file_uploaded_twice_is_shown_once(saved_run: Path, page) -> None:
    at = classify_with(page, saved_run)
    at.file_uploader[0].set_value([PHOTO]).run()
    at.file_uploader[0].set_value([PHOTO]).run()
    assert not at.exception and upload_charts(at) == ["top-upload-0-photo.png"]


def test_at_most_twenty_pictures_are_kept_and_clear_forgets_them(saved_run: Path, page) -> None:
    at = classify_with(page, saved_run)
    at.file_uploader[0].set_value([colour_png(i) for i in range(12)]).run()
    at.file_uploader[0].set_value([colour_png(i) for i in range(12, 22)]).run()
    assert not at.exception
    assert upload_charts(at) == [f"top-upload-{i}-colour{i:02d}.png" for i in range(2, 22)]  # the oldest two dropped
    assert any("last 20 pictures" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Clear pictures").click().run()
    assert not upload_charts(at) and not at.info and not at.exception


def test_an_upload_of_more_than_twenty_files_reads_twenty_and_says_how_many_were_left_out(saved_run: Path,
                                                                                          page) -> None:
    at = classify_with(page, saved_run)
    assert "20 at a time" in at.file_uploader[0].label
    at.file_uploader[0].set_value([colour_png(i) for i in range(23)]).run()
    assert not at.exception
    assert upload_charts(at) == [f"top-upload-{i}-colour{i:02d}.png" for i in range(20)]
    assert [w.value for w in at.warning if "left out" in w.value] == [
        "3 more files were left out: one upload takes 20 files at most. Upload the others on their own."]
    at.file_uploader[0].set_value([colour_png(i) for i in range(20, 23)]).run()
    assert not [w for w in at.warning if "left out" in w.value]  # the message was the last upload's


def test_the_files_of_an_upload_leave_streamlits_store_once_read(saved_run: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, page) -> None:
    from streamlit.runtime.memory_uploaded_file_manager import MemoryUploadedFileManager

    removed: list[str] = []
    remove = MemoryUploadedFileManager.remove_file

    def recorded(self: MemoryUploadedFileManager, session_id: str, file_id: str) -> None:
        if file_id in self.file_storage.get(session_id, {}):
            removed.append(file_id)
        remove(self, session_id, file_id)

    monkeypatch.setattr(MemoryUploadedFileManager, "remove_file", recorded)
    at = classify_with(page, saved_run)
    at.file_uploader[0].set_value([colour_png(i) for i in range(22)]).run()  # two of them left out, unread
    assert not at.exception and len(upload_charts(at)) == 20
    assert len(set(removed)) == 22  # kept as a preview and a view, the files themselves gone


def test_a_tiff_named_png_is_refused_with_the_formats_the_page_takes(saved_run: Path, page) -> None:
    at = page("pages/classify.py")  # the uploader refuses a .tiff name itself; a stranger can rename the file
    assert "PNG, JPEG, GIF, BMP, WebP" in at.file_uploader[0].label
    at.file_uploader[0].set_value([("scan.png", samples.other_formats()["photo.tiff"], "image/png"), PHOTO]).run()
    assert not at.exception and upload_charts(at) == ["top-upload-0-photo.png"]
    assert [e.value for e in at.error] == ["**scan.png** cannot be classified: it is in TIFF format, not one of the "
                                           "formats taken here: PNG, JPEG, GIF, BMP, WebP."]


def counted_predictions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Each call of deconv.inference.predict from now on (the page's every prediction): its images and its thread.
    Nothing is kept from earlier tests."""
    calls: list[tuple[int, str]] = []
    predict = inference.predict

    def counted(model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        calls.append((len(x), threading.current_thread().name))
        return predict(model, x, batch_size)

    monkeypatch.setattr(inference, "predict", counted)
    server.COMPUTED.clear()
    return calls


def test_a_rerun_with_the_same_pictures_predicts_nothing_again(saved_run: Path, page,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    calls = counted_predictions(monkeypatch)
    at = classify_with(page, saved_run)
    at.file_uploader[0].set_value([PHOTO]).run()
    assert not at.exception and upload_charts(at) == ["top-upload-0-photo.png"]
    assert [n for n, _ in calls][-1] == 1 and sum(n for n, _ in calls) >= 8 + 1  # test images, then the upload
    before = list(calls)
    at.run()
    at.toggle(key="inside-upload-0-photo.png").set_value(True).run()  # a look inside predicts nothing either
    st.cache_data.clear()  # what any visitor's clear_cache message does: the answers are kept elsewhere
    st.cache_resource.clear()
    at.run()
    assert not at.exception and upload_charts(at) == ["top-upload-0-photo.png"] and len(charts(at, "top-test-")) == 8
    assert calls == before


def test_a_network_that_costs_more_per_image_than_the_page_budget_is_not_run(saved_run: Path, page,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counted_predictions(monkeypatch)
    monkeypatch.setattr(cost, "PAGE_SECONDS", cost.classify_work(CONFIG, 1).bounded_seconds / 2)
    at = classify_with(page, saved_run)
    at.file_uploader[0].set_value([PHOTO]).run()
    assert not at.exception and not calls and not upload_charts(at) and not charts(at, "top-test-")
    said = [w.value for w in at.warning]
    assert len(said) == 2 and said[0] == said[1]  # the upload's tab and the test images' tab
    assert said[0].startswith("Not computed here: classifying one image would take about 0 s on this server")
    assert "python -m deconv classify" in said[0]


def test_heavy_answers_are_computed_beside_the_page_with_a_progress_line(saved_run: Path, page,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counted_predictions(monkeypatch)
    monkeypatch.setattr(cost, "LIVE_SECONDS", 0.0)  # every computation is heavy
    at = classify_with(page, saved_run)
    assert not at.exception and not charts(at, "top-test-")
    lines = [p.proto.text for p in at.get("progress")]
    assert lines and lines[-1].startswith("Classifying 8 images: about 0 s of computing by the cost model")
    assert server.COMPUTED.wait(120)  # what the page's progress line waits for, asking every second
    assert calls and {thread for _, thread in calls} == {"deconv-computations"}  # not the page's script thread
    at.run()
    assert not at.exception and len(charts(at, "top-test-")) == 8 and not at.get("progress")
    key = next(iter(charts(at, "top-test-"))).removeprefix("top-")
    at.toggle(key=f"inside-{key}").set_value(True).run()  # the feature maps, the evidence and the projection
    assert not at.exception and not charts(at, f"maps-{key}") and len(at.get("progress")) == 3
    assert server.COMPUTED.wait(120)
    at.run()
    assert not at.exception and len(charts(at, f"maps-{key}-")) == len(expected_blocks()) and not at.get("progress")
