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


@pytest.mark.parametrize("content, words", [
    (None, "saved without a validation report"),
    ("{not json", "cannot be read"),
    (json.dumps({"labels": LABELS, "matrix": [[1, 2]], "mistakes": []}), "wrong shape"),
    (json.dumps({"labels": LABELS, "matrix": "[[1]]", "mistakes": []}), "wrong shape"),
    (json.dumps({"labels": LABELS, "matrix": np.eye(10, dtype=int).tolist(), "mistakes": [[0, 0, 12, 0.5]]}),
     "wrong shape"),
    (" " * (analysis.MAX_REPORT_BYTES + 1), "larger than"),
])
def test_a_missing_or_damaged_report_gets_a_report_error(tmp_path: Path, content: str | None, words: str) -> None:
    if content is not None:
        (tmp_path / analysis.REPORT_FILE).write_text(content)
    with pytest.raises(analysis.ReportError, match=words):
        analysis.read_report(tmp_path)
