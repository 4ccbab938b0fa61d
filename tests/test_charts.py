"""The charts stay readable: counts fit their cells, labels show in full, nothing is clipped or drawn over."""

from __future__ import annotations

import json

import numpy as np
import pytest
import streamlit  # noqa: F401  Streamlit makes its own plotly template the default, as it does in the app

from deconv import charts
from deconv.samples import LABELS


def matrix(per_class: int, right: float = 0.65, seed: int = 0) -> np.ndarray:
    """A 10x10 confusion matrix of `per_class` images per class, about `right` of them on the diagonal."""
    rng = np.random.default_rng(seed)
    m = rng.multinomial(int(per_class * (1 - right)), [1 / 9] * 9, size=10)
    return np.stack([np.insert(row, i, per_class - row.sum()) for i, row in enumerate(m)])


def cell_text(fig) -> dict[tuple[str, str], tuple[str, float, str]]:
    """(true, predicted) -> (text, font size, colour) of each count written in the confusion matrix."""
    return {(a.y, a.x): (a.text, a.font.size, a.font.color) for a in fig.layout.annotations}


def test_the_streamlit_template_is_the_default_here_as_in_the_app() -> None:
    import plotly.io as pio

    assert pio.templates.default == "streamlit"  # its axes have no automargin: the charts must set it themselves


def test_every_count_is_written_in_its_cell() -> None:
    m = matrix(200)
    text = cell_text(charts.confusion(m, LABELS))
    assert len(text) == 100
    assert all(text[(t, p)][0] == str(m[i, j]) for i, t in enumerate(LABELS) for j, p in enumerate(LABELS))


def test_counts_of_four_digits_get_a_smaller_font_than_three() -> None:
    three, four = matrix(200), matrix(1200, right=0.9)
    assert three.max() < 1000 <= four.max()
    size3 = {s for _, s, _ in cell_text(charts.confusion(three, LABELS)).values()}
    size4 = {s for _, s, _ in cell_text(charts.confusion(four, LABELS)).values()}
    assert len(size3) == len(size4) == 1 and size4.pop() < size3.pop()
    assert charts.count_font_size(99_999) < charts.count_font_size(9_999) < charts.count_font_size(999)


def test_dark_cells_get_white_text_and_light_cells_dark_text() -> None:
    m = matrix(200)
    text = cell_text(charts.confusion(m, LABELS))
    for i, label in enumerate(LABELS):
        assert text[(label, label)][2] == charts.ON_DARK  # the diagonal: the largest counts, the darkest blue
        j = int(np.argmin(m[i]))
        assert text[(label, LABELS[j])][2] == charts.INK  # the smallest count of the row: a pale cell


def test_confusion_shows_every_class_name_angled_with_room_for_it() -> None:
    fig = charts.confusion(matrix(200), LABELS)
    x, y = fig.layout.xaxis, fig.layout.yaxis
    assert list(fig.data[0].x) == list(fig.data[0].y) == LABELS
    assert x.tickmode == y.tickmode == "linear"  # one tick per class, none skipped
    assert x.tickangle not in (None, 0) and x.automargin is True and y.automargin is True
    assert x.title.text and y.title.text
    assert y.scaleanchor == "x"  # square cells
    assert tuple(y.range) == (9.5, -0.5) and tuple(x.range) == (-0.5, 9.5)  # the first class on top, as in a table


def test_a_clickable_confusion_matrix_has_one_selectable_marker_per_cell_outlining_the_chosen_one() -> None:
    m = matrix(200)
    assert len(charts.confusion(m, LABELS).data) == 1  # the live matrix: nothing to click
    fig = charts.confusion(m, LABELS, clickable=True, chosen=(3, 5))
    heat, cells = fig.data
    assert heat.hoverinfo == "skip" and cells.mode == "markers" and len(cells.x) == 100
    assert (cells.y[3 * 10 + 5], cells.x[3 * 10 + 5]) == (LABELS[3], LABELS[5])  # row = true, column = predicted
    assert cells.customdata[3 * 10 + 5][0] == m[3, 5]  # its hover names the count
    assert list(cells.selectedpoints) == [35] and cells.marker.opacity == 0 and cells.selected.marker.opacity == 1


def test_confusion_hover_gives_the_share_of_the_true_class() -> None:
    m = matrix(200)
    m[3] = 0  # a class with no images must not divide by zero
    fig = charts.confusion(m, LABELS)
    share = np.asarray(fig.data[0].customdata)[..., 1]
    assert np.allclose(share[[0, 1, 2, 4]].sum(axis=1), 1) and not share[3].any()
    assert "customdata" in fig.data[0].hovertemplate


def test_per_class_writes_each_percentage_beside_its_class_without_overlap() -> None:
    accuracy = np.linspace(0.04, 1.0, 10)
    fig = charts.per_class(accuracy, LABELS)
    bar = fig.data[0]
    assert bar.orientation == "h" and list(bar.y) == LABELS  # names on their own lines, not slanted under bars
    assert bar.text[-1] == "100%" and bar.text[0] == "4%" and bar.textposition == "outside"
    assert fig.layout.xaxis.range[1] > 1.1  # room beside the longest bar for its label
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis.automargin is True


HOSTILE = ["[x](http://evil.invalid)", "<img src=http://evil.invalid/x.png>", "<a href='http://evil.invalid'>cat</a>",
           "a & b", *LABELS[4:]]  # label names as a hostile report.json could give them


def test_label_names_with_tags_are_drawn_as_text_in_every_class_chart() -> None:
    m = matrix(20)
    for fig in (charts.confusion(m, HOSTILE, clickable=True), charts.per_class(np.full(10, 0.5), HOSTILE),
                charts.top_k(HOSTILE[:5], [0.5, 0.2, 0.1, 0.1, 0.1], true_label=HOSTILE[1])):
        drawn = json.dumps(json.loads(fig.to_json()))  # every string of the figure, as the browser gets it
        assert "<img" not in drawn and "<a href" not in drawn  # no tag Plotly would fetch or link, anywhere
        assert "&lt;img src=http://evil.invalid/x.png&gt;" in drawn and "a &amp; b" in drawn  # shown as written
    fig = charts.confusion(m, HOSTILE, clickable=True)
    assert fig.data[0].x[1] == fig.data[0].y[1] == fig.data[1].x[1] == "&lt;img src=http://evil.invalid/x.png&gt;"
    assert fig.layout.annotations[1].x == fig.data[0].x[1]  # each count still sits in its cell


def test_class_names_that_look_like_numbers_stay_names_on_the_axes() -> None:
    names = [str(i) for i in range(1, 11)]
    fig = charts.confusion(matrix(20), names)
    assert fig.layout.xaxis.type == fig.layout.yaxis.type == "category"  # "1" is a class, not the position 1
    assert charts.per_class(np.full(10, 0.5), names).layout.yaxis.type == "category"
    assert charts.top_k(names[:5], [0.5, 0.2, 0.1, 0.1, 0.1]).layout.yaxis.type == "category"


def test_a_run_name_with_a_link_is_a_plain_legend_entry() -> None:
    fig = charts.overlay([("<a href='http://evil.invalid'>run</a>", history(0.3))], "val_accuracy", "acc")
    assert fig.data[0].name == "&lt;a href='http://evil.invalid'&gt;run&lt;/a&gt;"


def history(start: float, epochs: int = 5) -> list[dict[str, float]]:
    return [{"epoch": e, "val_accuracy": start + 0.08 * e, "val_loss": 2 - 0.2 * e} for e in range(1, epochs + 1)]


@pytest.mark.parametrize("key", ["val_accuracy", "val_loss"])
def test_overlay_has_axis_titles_that_push_the_margins_instead_of_covering_labels(key: str) -> None:
    runs = [("deconv-32-64-128-20250101-120000", history(0.3)), ("deconv-8-20250103-090000", history(0.2))]
    fig = charts.overlay(runs, key, "the metric")
    x, y = fig.layout.xaxis, fig.layout.yaxis
    assert x.title.text == "epoch" and y.title.text == "the metric"
    assert x.automargin is True and y.automargin is True
    assert fig.layout.legend.yanchor == "bottom" and fig.layout.legend.y >= 1  # above the plot, not over it
    assert [t.name for t in fig.data] == [name for name, _ in runs]


def test_overlay_ticks_whole_epochs() -> None:
    assert charts.overlay([("a", history(0.3, 5))], "val_accuracy", "acc").layout.xaxis.dtick == 1
    assert charts.overlay([("a", history(0.3, 60))], "val_accuracy", "acc").layout.xaxis.dtick == 6


def test_learning_curves_push_the_margins_too() -> None:
    fig = charts.learning_curves(history(0.3))
    assert fig.layout.xaxis.automargin is True and fig.layout.xaxis2.automargin is True


def test_runs_table_names_the_best_epoch_and_keeps_each_accuracy_in_its_own_column(app_env, page) -> None:
    import json

    from deconv.config import ModelConfig, TrainConfig

    run = app_env / "stopped-run"
    run.mkdir(parents=True)
    from deconv.model import build_model

    build_model(ModelConfig()).save(run / "model.keras")
    (run / "config.json").write_text(json.dumps({"model": ModelConfig().to_dict(), "train": TrainConfig().to_dict()}))
    # Stopped in epoch 4: the saved weights were measured after the stop and beat every complete epoch.
    history = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.656},
               {"epoch": 3, "val_accuracy": 0.61}, {"epoch": 4, "partial": True}]
    (run / "history.json").write_text(json.dumps(history))
    (run / "meta.json").write_text(json.dumps({"status": "stopped", "val_accuracy": 0.663, "epochs_completed": 3}))
    at = page("pages/runs.py")
    assert not at.exception
    row = at.dataframe[0].value.iloc[0]
    assert row["best epoch"] == 2 and row["best epoch val acc"] == pytest.approx(0.656)
    assert row["saved model val acc"] == pytest.approx(0.663)
    assert row["model size"] == pytest.approx((run / "model.keras").stat().st_size / 2**20)
    columns = json.loads(at.dataframe[0].proto.columns)
    assert columns["model size"]["width"] >= 90 and "MiB" in columns["model size"]["type_config"]["format"]
    assert columns["best epoch"]["type_config"]["format"] == "%d"  # an epoch number, not a percentage
    assert "stopped" in columns["saved model val acc"]["help"]  # says why it can beat every epoch
