"""A run's logs for TensorBoard and spreadsheets: what a training writes, and what an import of them accepts."""

from __future__ import annotations

import csv
import io
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.util import tensor_util

from deconv import data, run_import, runs, samples, training_logs
from deconv.config import ModelConfig, TrainConfig
from deconv.experiment import Experiment, run
from deconv.train import train

SMALL = ModelConfig(widths=(8,))
CONFIG = TrainConfig(train_size=300, val_size=100, batch_size=20, epochs=2)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with one run of 2 epochs, trained as the CLI and the app's workers train."""
    tmp = tmp_path_factory.mktemp("logs")
    folder = samples.write_cifar(tmp / "data")
    summary = run(Experiment(SMALL, CONFIG, tmp / "runs" / "run1", str(folder)), lambda e: None, threading.Event())
    assert summary.status == "finished", summary.message
    return tmp / "runs"


def tensorboard_runs(root: Path) -> EventMultiplexer:
    """The runs folder as `tensorboard --logdir` reads it."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    return multiplexer


def scalars(multiplexer: EventMultiplexer, run_name: str, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar tag."""
    return [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in multiplexer.Tensors(run_name, tag)]


def test_tensorboard_finds_every_epochs_scalars_and_the_graph_in_the_runs_folder(runs_root: Path) -> None:
    history = runs.read_run(runs_root / "run1").history
    board = tensorboard_runs(runs_root)
    assert set(board.Runs()) == {"run1/tensorboard/train", "run1/tensorboard/validation"}
    for tag, key in (("epoch_loss", "loss"), ("epoch_accuracy", "accuracy")):
        assert scalars(board, "run1/tensorboard/train", tag) == [(i, pytest.approx(e[key], rel=1e-6))
                                                                  for i, e in enumerate(history)]
        assert scalars(board, "run1/tensorboard/validation", tag) == [(i, pytest.approx(e[f"val_{key}"], rel=1e-6))
                                                                       for i, e in enumerate(history)]
    rates = [v for _, v in scalars(board, "run1/tensorboard/train", "epoch_learning_rate")]
    assert len(rates) == 2 and rates[0] != rates[1]  # the warmup-cosine schedule, as TensorBoard plots it
    assert board.SummaryMetadata("run1/tensorboard/train", "keras").plugin_data.plugin_name == "graph_keras_model"


def test_every_epoch_has_a_confusion_matrix_image(runs_root: Path) -> None:
    board = tensorboard_runs(runs_root)
    images = board.Tensors("run1/tensorboard/validation", training_logs.CONFUSION_TAG)
    assert [e.step for e in images] == [0, 1]
    width, height, png = images[-1].tensor_proto.string_val
    picture = Image.open(io.BytesIO(png))
    assert picture.size == (int(width), int(height)) and picture.mode == "RGB"


def test_a_confusion_image_shades_each_cell_by_its_share_of_the_row() -> None:
    counts = np.diag(np.full(10, 7))
    counts[3, 5], counts[3, 3] = 7, 0  # every cat taken for a dog
    img = training_logs.confusion_image(counts, samples.LABELS)
    cell = lambda i, j: img[training_logs.CELL + i * training_logs.CELL + 3,  # noqa: E731
                            training_logs.LABEL_WIDTH + j * training_logs.CELL + 3]
    assert cell(0, 0).sum() < cell(0, 1).sum() == 3 * 255  # a full row share is dark, an empty one white
    assert cell(3, 5).sum() < cell(3, 3).sum()


def test_history_csv_has_the_rows_of_the_runs_history(runs_root: Path) -> None:
    history = runs.read_run(runs_root / "run1").history
    rows = list(csv.DictReader(io.StringIO((runs_root / "run1" / runs.HISTORY_CSV).read_text())))
    assert [int(r["epoch"]) for r in rows] == [e["epoch"] for e in history] == [1, 2]
    for row, epoch in zip(rows, history):
        assert {k: float(v) for k, v in row.items() if k != "epoch"} == pytest.approx(
            {k: epoch[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}, rel=1e-6)


def test_an_epoch_cut_short_by_a_stop_has_no_validation_figures_in_the_logs(tmp_path: Path) -> None:
    config = CONFIG.replace(epochs=5)
    dataset = data.load_dataset(config, samples.write_cifar(tmp_path / "data"))
    stop = threading.Event()
    result = train(SMALL, config, dataset, lambda e: stop.set() if e.get("epoch") == 2 else None, stop,
                   callbacks=training_logs.callbacks(tmp_path / "logs", dataset.label_names))
    assert result.status == "stopped" and result.history[-1].get("partial")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "logs" / runs.HISTORY_CSV).read_text())))
    assert len(rows) == len(result.history) and rows[-1]["val_accuracy"] == "NA" and rows[0]["val_accuracy"] != "NA"
    board = tensorboard_runs(tmp_path / "logs")
    assert len(board.Tensors("tensorboard/validation", "epoch_accuracy")) == len(result.history) - 1
    assert len(board.Tensors("tensorboard/validation", training_logs.CONFUSION_TAG)) == len(result.history) - 1


def test_an_exported_run_imports_with_its_logs(runs_root: Path, tmp_path: Path) -> None:
    source = runs_root / "run1"
    archive = runs.export_zip(source)
    added = run_import.import_run(archive, tmp_path / "runs", "run1.zip")
    files = lambda root: sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())  # noqa: E731
    assert files(added) == files(source) and len(runs.log_files(added)) == 4  # history.csv and 3 event files
    for log in runs.log_files(source):
        assert (added / log.relative_to(source)).read_bytes() == log.read_bytes()
    assert set(tensorboard_runs(tmp_path / "runs").Runs()) == {"run1/tensorboard/train", "run1/tensorboard/validation"}


def test_a_run_folder_imports_with_its_logs_but_none_reached_through_a_link(runs_root: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(runs_root / "run1", elsewhere / "run1")
    (elsewhere / "linked").mkdir()
    for file in runs.FILES:
        shutil.copy(runs_root / "run1" / file, elsewhere / "linked" / file)
    (elsewhere / "linked" / runs.TENSORBOARD_DIR).symlink_to(runs_root / "run1" / runs.TENSORBOARD_DIR)
    monkeypatch.setenv(run_import.FOLDER_IMPORT_ENV, str(elsewhere))
    assert len(runs.log_files(run_import.import_run(str(elsewhere / "run1"), tmp_path / "runs", "run1"))) == 4
    assert runs.log_files(run_import.import_run(str(elsewhere / "linked"), tmp_path / "runs", "linked")) == []


def framed(*events: event_pb2.Event) -> bytes:
    """Events as an event file frames them (TFRecord: length, its CRC, the record, its CRC; CRCs left blank)."""
    out = b""
    for event in events:
        body = event.SerializeToString()
        out += len(body).to_bytes(8, "little") + bytes(4) + body + bytes(4)
    return out


def summary_event(tag: str, plugin: str, tensor: dict) -> event_pb2.Event:
    """An event with one tensor summary of a plugin."""
    value = summary_pb2.Summary.Value(tag=tag, tensor=tensor)
    value.metadata.plugin_data.plugin_name = plugin
    return event_pb2.Event(step=0, summary=summary_pb2.Summary(value=[value]))


VALIDATION = "tensorboard/validation/events.out.tfevents.1700000000.host.1.2.v2"
BAD_LOGS = {
    "text in the csv": ("history.csv", b"epoch,loss\n1,=HYPERLINK(\"http://x\")\n", "not one number per column"),
    "a csv that is not text": ("history.csv", b"epoch,loss\n\xff\xfe\n", "not a CSV table"),
    "a csv without epochs": ("history.csv", b"name,loss\n1,2\n", "header of metric names"),
    "noise as events": (VALIDATION, bytes(range(256)) * 4, "not a TensorBoard event file"),
    "a record longer than its file": (VALIDATION, (10**9).to_bytes(8, "little") + bytes(20), "runs past its end"),
    "a text summary": (VALIDATION, framed(summary_event("notes", "text", {"dtype": 7, "string_val": [b"<b>hi</b>"]})),
                       "a summary a training does not write"),
    "an image that declares 30000 pixels": (VALIDATION, framed(summary_event(
        "confusion_matrix", "images", {"dtype": 7, "tensor_shape": {"dim": [{"size": 3}]},
                                       "string_val": [b"16", b"16", samples.bomb_png()]})), "at most 1024 pixels"),
    "a log message": (VALIDATION, framed(event_pb2.Event(step=0, log_message={"message": "hi"})), "summaries only"),
    "an event file in another folder": ("tensorboard/plugins/events.out.tfevents.1.host.1.2.v2", framed(),
                                        "a file a run does not have"),
    "an event file of another name": ("tensorboard/train/events.out.tfevents.1.host.1.2.v2.html", framed(),
                                      "a file a run does not have"),
}


@pytest.mark.parametrize("case", BAD_LOGS)
def test_a_bad_log_file_in_an_uploaded_run_is_refused_and_leaves_nothing(runs_root: Path, tmp_path: Path,
                                                                        case: str) -> None:
    name, content, words = BAD_LOGS[case]
    good = zipfile.ZipFile(io.BytesIO(runs.export_zip(runs_root / "run1")))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for member in good.namelist():
            if member != f"run1/{name}":
                archive.writestr(member, good.read(member))
        archive.writestr(f"run1/{name}", content)
    root = tmp_path / "runs"
    with pytest.raises(runs.RunError, match=words):
        run_import.import_run(buf.getvalue(), root, "upload.zip")
    assert not any(root.iterdir())


def test_too_many_event_files_are_refused(runs_root: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for file in runs.FILES:
            archive.write(runs_root / "run1" / file, f"run1/{file}")
        for n in range(run_import.MAX_EVENT_FILES + 1):
            archive.writestr(f"run1/tensorboard/train/events.out.tfevents.1.host.1.{n}.v2", framed())
    with pytest.raises(runs.RunError, match="more than 8 TensorBoard event files"):
        run_import.import_run(buf.getvalue(), tmp_path / "runs", "upload.zip")
