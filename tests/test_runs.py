"""Run directories: save, list, load in safe mode, and every way one can be broken."""

from __future__ import annotations

import csv
import errno
import io
import json
import shutil
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from deconv import runs
from deconv.config import ModelConfig, TrainConfig
from deconv.model import build_model

MODEL_CONFIG = ModelConfig(widths=(8,))
HISTORY = [{"epoch": 1, "loss": 2.0, "accuracy": 0.3, "val_loss": 2.1, "val_accuracy": 0.25, "seconds": 1.0},
           {"epoch": 2, "loss": 1.5, "accuracy": 0.4, "val_loss": 1.9, "val_accuracy": 0.35, "seconds": 1.0}]


def save(path: Path, model: keras.Model | None = None) -> Path:
    return runs.save_run(path, model or build_model(MODEL_CONFIG), MODEL_CONFIG, TrainConfig(epochs=2), HISTORY,
                         {"status": "finished"})


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = build_model(MODEL_CONFIG)
    run = save(tmp_path / "run1", model)
    assert sorted(p.name for p in run.iterdir()) == sorted(runs.FILES)
    info = runs.read_run(run)
    assert info.model_config == MODEL_CONFIG and info.train_config.epochs == 2
    assert info.best_val_accuracy == 0.35 and info.meta["versions"]["keras"] == keras.__version__
    assert info.history_csv().splitlines()[0] == "epoch,loss,accuracy,val_loss,val_accuracy,seconds,elapsed"
    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(runs.load_model(run)(x), model(x), atol=1e-6)


def test_a_non_empty_directory_is_never_overwritten(tmp_path: Path) -> None:
    save(tmp_path / "run1")
    before = (tmp_path / "run1" / "history.json").read_text()
    with pytest.raises(runs.RunError, match="already exists"):
        save(tmp_path / "run1")
    assert (tmp_path / "run1" / "history.json").read_text() == before


def test_an_unwritable_place_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(runs.RunError, match="cannot create the run"):
        save(tmp_path / "afile" / "run1")
    with pytest.raises(runs.RunError, match="it is a file, not a folder"):
        runs.new_run_dir(tmp_path / "afile", ModelConfig())
    assert runs.list_runs(tmp_path / "afile") == ([], [])


def test_a_full_disk_leaves_no_half_written_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "_write_json", full)
    with pytest.raises(runs.RunError, match="No space left on device"):
        save(tmp_path / "run1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage, words", [
    (lambda p: (p / "model.keras").unlink(), "model.keras is missing"),
    (lambda p: (p / "config.json").unlink(), "config.json is missing"),
    (lambda p: (p / "history.json").write_text("[{"), "history.json is not valid JSON"),
    (lambda p: (p / "config.json").write_text(json.dumps({"model": {"widths": [9999]}, "train": {}})), "widths=9999"),
    (lambda p: (p / "config.json").write_text(json.dumps({"model": {"depth": 3}, "train": {}})), "unknown ModelConfig"),
    (lambda p: (p / "meta.json").write_text("[]"), "wrong shape"),
])
def test_damaged_runs_are_listed_as_errors_beside_the_good_ones(tmp_path: Path, damage, words: str) -> None:
    save(tmp_path / "good")
    bad = save(tmp_path / "bad")
    damage(bad)
    good, broken = runs.list_runs(tmp_path)
    assert [r.name for r in good] == ["good"]
    assert broken[0][0] == bad and words in broken[0][1]


@pytest.mark.parametrize("cut", [0, 100, 0.5])
def test_a_truncated_model_file_cannot_be_loaded(tmp_path: Path, cut: float) -> None:
    run = save(tmp_path / "run1")
    blob = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(blob[: int(len(blob) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(runs.RunError, match="model.keras cannot be loaded"):
        runs.load_model(run)


def test_a_model_with_a_lambda_layer_is_refused_by_safe_mode(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    evil = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    run = save(tmp_path / "run1", evil)
    with pytest.raises(runs.RunError, match="cannot be loaded safely"):
        runs.load_model(run)


def test_delete_only_deletes_runs(tmp_path: Path) -> None:
    run = save(tmp_path / "run1")
    (tmp_path / "other").mkdir()
    with pytest.raises(runs.RunError, match="does not look like a run"):
        runs.delete_run(tmp_path / "other")
    runs.delete_run(run)
    assert not run.exists() and (tmp_path / "other").exists()


def test_default_runs_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(runs.RUNS_DIR_ENV, str(tmp_path))
    assert runs.default_runs_dir() == tmp_path
    monkeypatch.delenv(runs.RUNS_DIR_ENV)
    assert runs.default_runs_dir().name == "runs"
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert runs.list_runs(tmp_path / "missing") == ([], [])


def zipped(run: Path, folder: str | None = "run1", extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for file in runs.FILES:
            z.write(run / file, f"{folder}/{file}" if folder else file)
        for name, content in (extra or {}).items():
            z.writestr(name, content)
    return buf.getvalue()


def test_import_a_run_folder_or_a_zip_of_one(tmp_path: Path) -> None:
    run = save(tmp_path / "elsewhere" / "cluster-run")
    root = tmp_path / "runs"
    copied = runs.import_run(run, root, run.name)
    assert copied == root / "cluster-run" and runs.read_run(copied).history == HISTORY
    from_zip = runs.import_run(zipped(run), root, "cluster-run.zip")
    assert from_zip == root / "cluster-run_2" and runs.load_model(from_zip) is not None
    flat = runs.import_run(zipped(run, folder=None, extra={"notes.txt": b"x"}), root, "flat.zip")
    assert sorted(p.name for p in flat.iterdir()) == sorted(runs.FILES)
    assert len(runs.list_runs(root)[0]) == 3 and not runs.list_runs(root)[1]


@pytest.mark.parametrize("content, words", [
    (b"not a zip", "is not a readable zip file"),
    ("partial", "model.keras missing"),
    ("escape", "unsafe path"),
    ("lambda", "cannot be loaded safely"),
])
def test_a_bad_import_is_refused_and_leaves_nothing_behind(tmp_path: Path, content, words: str) -> None:
    run = save(tmp_path / "src" / "run1")
    if content == "partial":
        content = zipped(run)
        with zipfile.ZipFile(io.BytesIO(content)) as z:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as out:
                for info in z.infolist():
                    if not info.filename.endswith("model.keras"):
                        out.writestr(info, z.read(info))
        content = buf.getvalue()
    elif content == "escape":
        content = zipped(run, extra={"../../evil.txt": b"x"})
    elif content == "lambda":
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: t * 2)(inputs))
        content = zipped(save(tmp_path / "src" / "evil", keras.Model(inputs, keras.layers.Dense(10)(x))))
    root = tmp_path / "runs"
    with pytest.raises(runs.RunError, match=words):
        runs.import_run(content, root, "upload.zip")
    assert not any(root.iterdir()) and not (tmp_path / "evil.txt").exists()


def test_the_runs_table_as_csv(tmp_path: Path) -> None:
    save(tmp_path / "run1")
    rows = list(csv.DictReader(io.StringIO(runs.runs_csv(runs.list_runs(tmp_path)[0]))))
    assert len(rows) == 1 and rows[0]["run"] == "run1" and rows[0]["widths"] == "8"
    assert rows[0]["best_val_accuracy"] == "0.35" and rows[0]["epochs"] == "2" and rows[0]["seed"] == "0"
