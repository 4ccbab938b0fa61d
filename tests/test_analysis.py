"""The validation report the trainer saves with a run: counts, mistakes, and what a damaged file gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deconv import analysis
from deconv.samples import LABELS


def a_report() -> analysis.ValidationReport:
    y = np.repeat(np.arange(10), 5)
    probs = np.full((50, 10), 0.01)
    probs[np.arange(50), y] = 0.91  # right ...
    probs[[3, 7], :] = 0.01
    probs[3, 9], probs[7, 2] = 0.9, 0.6  # ... but for two images, wrong with 90% and 60%
    return analysis.report(probs, y, LABELS)


def test_a_report_counts_every_image_and_lists_mistakes_most_confident_first() -> None:
    rep = a_report()
    assert rep.images == 50 and rep.accuracy == pytest.approx(48 / 50)
    assert rep.per_class.tolist() == pytest.approx([0.8, 0.8] + [1.0] * 8)
    assert [(m.index, m.true, m.predicted) for m in rep.confidently_wrong(5)] == [(3, 0, 9), (7, 1, 2)]


def test_a_saved_report_reads_back_the_same(tmp_path: Path) -> None:
    rep = a_report()
    analysis.save_report(rep, tmp_path)
    back = analysis.read_report(tmp_path)
    assert back.labels == rep.labels and (back.matrix == rep.matrix).all() and back.mistakes == rep.mistakes
    assert back.cell(0, 9).tolist() == [3] and back.cell(1, 2).tolist() == [7]  # a clicked cell's images
    assert back.cell(4, 4).tolist() == list(range(20, 25)) and back.cell(4, 5).tolist() == []


def test_a_report_saved_before_per_image_classes_still_reads_but_has_no_cells(tmp_path: Path) -> None:
    data = a_report().to_json()
    del data["true"], data["predicted"]
    (tmp_path / analysis.REPORT_FILE).write_text(json.dumps(data))
    back = analysis.read_report(tmp_path)
    assert back.accuracy == pytest.approx(48 / 50) and back.cell(0, 9) is None


@pytest.mark.parametrize("content, words", [
    (None, "saved without a validation report"),
    ("{not json", "cannot be read"),
    (json.dumps({"labels": LABELS, "matrix": [[1, 2]], "mistakes": []}), "wrong shape"),
    (json.dumps({"labels": LABELS, "matrix": "[[1]]", "mistakes": []}), "wrong shape"),
    (json.dumps({"labels": LABELS, "matrix": np.eye(10, dtype=int).tolist(), "mistakes": [[0, 0, 12, 0.5]]}),
     "wrong shape"),
    (" " * (analysis.MAX_REPORT_BYTES + 1), "larger than"),
    (json.dumps({**a_report().to_json(), "predicted": [0] * 50}), "do not add up"),
    (json.dumps({**a_report().to_json(), "predicted": [12] * 50}), "do not add up"),
    (json.dumps({**a_report().to_json(), "true": None}), "wrong shape"),
    (json.dumps({**a_report().to_json(), "true": 3, "predicted": 3}), "do not add up"),
    (json.dumps({**a_report().to_json(), "true": "abc"}), "wrong shape"),
])
def test_a_missing_or_damaged_report_gets_a_report_error(tmp_path: Path, content: str | None, words: str) -> None:
    if content is not None:
        (tmp_path / analysis.REPORT_FILE).write_text(content)
    with pytest.raises(analysis.ReportError, match=words):
        analysis.read_report(tmp_path)


@pytest.mark.parametrize("labels", [
    ["[x](http://evil.invalid)"] + LABELS[1:],
    ["<img src=http://evil.invalid/x.png>"] + LABELS[1:],
    ["cat"] * 10,
    "abcdefghij",
    [1] + LABELS[1:],
])
def test_a_report_whose_label_names_are_not_plain_words_is_refused(tmp_path: Path, labels) -> None:
    (tmp_path / analysis.REPORT_FILE).write_text(json.dumps({**a_report().to_json(), "labels": labels}))
    with pytest.raises(analysis.ReportError, match="10 different plain class names"):
        analysis.read_report(tmp_path)


def test_a_report_counting_more_images_than_the_runs_validation_set_is_refused(tmp_path: Path) -> None:
    data = a_report().to_json()
    analysis.save_report(a_report(), tmp_path)
    assert analysis.read_report(tmp_path, val_size=50).images == 50  # its own validation set
    assert analysis.read_report(tmp_path, val_size=80).images == 50  # a report of the first images of a larger one
    longer = {**data, "true": data["true"] * 2, "predicted": data["predicted"] * 2}  # 100 images, adding up
    longer["matrix"] = analysis.confusion_matrix(np.array(longer["true"]), np.array(longer["predicted"])).tolist()
    (tmp_path / analysis.REPORT_FILE).write_text(json.dumps(longer))
    with pytest.raises(analysis.ReportError, match="counts 100 validation images, but the run has 50"):
        analysis.read_report(tmp_path, val_size=50)


@pytest.mark.parametrize("change, words", [
    ({"mistakes": [[50, 0, 9, 0.9]]}, "mistakes name images it does not count"),
    ({"mistakes": [[3, 0, 9, 7.0]]}, "confidence outside 0 to 1"),
    ({"matrix": [[10**30] * 10] * 10}, "wrong shape"),
    ({"matrix": (np.eye(10, dtype=int) * 20_000).tolist(), "true": None, "predicted": None}, "wrong shape"),
])
def test_a_report_whose_numbers_point_outside_its_images_is_refused(tmp_path: Path, change, words: str) -> None:
    data = {**a_report().to_json(), **change}
    (tmp_path / analysis.REPORT_FILE).write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    with pytest.raises(analysis.ReportError, match=words):
        analysis.read_report(tmp_path)
