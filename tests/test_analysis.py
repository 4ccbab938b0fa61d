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
