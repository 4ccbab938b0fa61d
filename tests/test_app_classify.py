"""The Classify page's look inside a saved run, through AppTest: every block's feature maps and Grad-CAM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from deconv import runs
from deconv.config import ModelConfig, TrainConfig
from deconv.model import build_model
from tests import images
from tests.conftest import synthetic_images
from tests.test_app import app_env, page  # noqa: F401  (app_env is a fixture)

CONFIG = ModelConfig(widths=(8, 16), deconv_stride=2)  # each deconv doubles its map: 16 -> 32 -> 16 -> 32


@pytest.fixture(scope="module")
def saved_run(app_env: Path) -> Path:  # noqa: F811
    """A run of CONFIG trained for a moment on the synthetic colours, saved where the app looks."""
    keras.utils.set_random_seed(0)
    y = np.repeat(np.arange(10), 20)
    x = synthetic_images(y, seed=0).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    model = build_model(CONFIG)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=20, verbose=0)
    return runs.save_run(app_env / "look-inside", model, CONFIG, TrainConfig(), [], {})


def charts(at: AppTest, prefix: str) -> dict[str, dict[str, Any]]:
    """The plotly charts whose key starts with prefix, by key."""
    return {c.key: json.loads(c.proto.spec) for c in at.get("plotly_chart") if c.key.startswith(prefix)}


def expected_blocks() -> list[tuple[str, str]]:
    """(name, chart title) of each block of CONFIG: its output shape and how many channels are drawn."""
    sizes, widths = CONFIG.feature_sizes(), [w for w in CONFIG.widths for _ in range(2)]
    names = [f"block{i // 2 + 1}_{('conv', 'deconv')[i % 2]}" for i in range(len(sizes))]
    return [(n, f"{n} {s}x{s}x{w}<br><sup>{w} most active of {w} channels</sup>")
            for n, s, w in zip(names, sizes, widths)]


def test_look_inside_an_upload_shows_every_block_and_the_class_evidence(saved_run: Path) -> None:
    at = page("pages/classify.py")
    at.file_uploader[0].set_value([("photo.png", images.good()["photo.png"], "image/png")]).run()
    key = "upload-0-photo.png"
    assert not charts(at, f"maps-{key}")  # nothing computed until asked
    at.toggle(key=f"inside-{key}").set_value(True).run()
    assert not at.exception
    maps = charts(at, f"maps-{key}-")
    assert list(maps) == [f"maps-{key}-{name}" for name, _ in expected_blocks()]
    assert [spec["layout"]["title"]["text"] for spec in maps.values()] == [title for _, title in expected_blocks()]
    assert all([t["type"] for t in spec["data"]] == ["heatmap"] for spec in maps.values())
    cam, saliency = charts(at, f"cam-{key}")[f"cam-{key}"], charts(at, f"saliency-{key}")[f"saliency-{key}"]
    for spec in (cam, saliency):
        assert [t["type"] for t in spec["data"]] == ["image", "heatmap"]
    assert "raise the" in " ".join(c.value for c in at.caption)


def test_evidence_for_another_class_of_a_cifar_image(saved_run: Path) -> None:
    at = page("pages/classify.py")
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
