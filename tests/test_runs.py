"""Run directories: save, list, load in safe mode, and every way one can be broken."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import shutil
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from deconv import run_import, runs
from deconv.config import ModelConfig, TrainConfig
from deconv.cost import describe
from deconv.model import build_model

ROOT = Path(__file__).resolve().parent.parent
MODEL_CONFIG = ModelConfig(widths=(8,))
HISTORY = [{"epoch": 1, "loss": 2.0, "accuracy": 0.3, "val_loss": 2.1, "val_accuracy": 0.25, "seconds": 1.0},
           {"epoch": 2, "loss": 1.5, "accuracy": 0.4, "val_loss": 1.9, "val_accuracy": 0.35, "seconds": 1.0}]


def save(path: Path, model: keras.Model | None = None) -> Path:
    return runs.save_run(path, model or build_model(MODEL_CONFIG), MODEL_CONFIG, TrainConfig(epochs=2), HISTORY,
                         runs.RunMeta())


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = build_model(MODEL_CONFIG)
    run = save(tmp_path / "run1", model)
    assert sorted(p.name for p in run.iterdir()) == sorted(runs.FILES)
    info = runs.read_run(run)
    assert info.model_config == MODEL_CONFIG and info.train_config.epochs == 2
    assert info.best_val_accuracy == 0.35 and info.meta.versions["keras"] == keras.__version__
    assert info.history_csv().splitlines()[0] == "epoch,loss,accuracy,val_loss,val_accuracy,seconds,elapsed"
    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(runs.load_model(run)(x), model(x), atol=1e-6)


def test_a_non_empty_directory_is_never_overwritten(tmp_path: Path) -> None:
    save(tmp_path / "run1")
    before = (tmp_path / "run1" / "history.json").read_text()
    with pytest.raises(runs.RunError, match="already exists"):
        save(tmp_path / "run1")
    assert (tmp_path / "run1" / "history.json").read_text() == before


def test_a_name_stays_reserved_while_its_run_is_saved_so_another_server_never_takes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs, "run_name", lambda config: "same-second")  # two servers, one clock second
    mine = runs.new_run_dir(tmp_path, MODEL_CONFIG)
    theirs: list[Path] = []
    rename = Path.rename

    def other_server_reserves_first(self: Path, target: Path) -> Path:  # at the last moment of the save
        if not theirs:
            theirs.append(runs.new_run_dir(tmp_path, MODEL_CONFIG))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", other_server_reserves_first)
    save(mine)
    assert theirs == [tmp_path / "same-second_2"] and list(theirs[0].iterdir()) == []
    assert runs.read_run(mine).history == HISTORY


def test_two_processes_reserving_names_in_one_runs_folder_at_once_get_distinct_folders(tmp_path: Path) -> None:
    code = ("import sys, time; from deconv import runs; from deconv.config import ModelConfig; "
            "time.sleep(max(0.0, float(sys.argv[1]) - time.time())); "
            "print(*[runs.new_run_dir(sys.argv[2], ModelConfig(widths=(8,))).name for _ in range(40)])")
    start = str(time.time() + 3)  # both begin together, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", code, start, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    names = [name for proc in procs for name in proc.communicate(timeout=60)[0].split()]
    assert len(names) == 80 and len(set(names)) == 80 and sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


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
def test_a_truncated_model_file_is_a_broken_run_not_a_default_model(tmp_path: Path, cut: float) -> None:
    good = save(tmp_path / "older")
    run = save(tmp_path / "run1")
    blob = (run / "model.keras").read_bytes()
    (run / "model.keras").write_bytes(blob[: int(len(blob) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(runs.RunError, match="model.keras"):
        runs.load_model(run)
    listed, broken = runs.list_runs(tmp_path)
    assert [r.path for r in listed] == [good] and broken[0][0] == run  # the newest readable run is the default


def test_a_model_file_of_another_architecture_is_never_used(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    evil = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))
    run = save(tmp_path / "run1", evil)
    with pytest.raises(runs.RunError, match="weights do not fit the network its config.json describes"):
        runs.load_model(run)  # rebuilt from config.json: the Lambda layer in the file is never built


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


def test_import_a_run_folder_or_a_zip_of_one(tmp_path: Path, monkeypatch) -> None:
    run = save(tmp_path / "elsewhere" / "cluster-run")
    root = tmp_path / "runs"
    monkeypatch.setenv(run_import.FOLDER_IMPORT_ENV, str(tmp_path / "elsewhere"))
    copied = run_import.import_run(str(run), root, run.name)
    assert copied == root / "cluster-run" and runs.read_run(copied).history == HISTORY
    from_zip = run_import.import_run(zipped(run), root, "cluster-run.zip")
    assert from_zip == root / "cluster-run_2" and runs.load_model(from_zip) is not None
    flat = run_import.import_run(zipped(run, folder=None), root, "flat.zip", owner="0123456789abcdef")
    assert sorted(p.name for p in flat.iterdir()) == sorted(runs.FILES)
    assert runs.read_run(flat).meta.owner == "0123456789abcdef"
    assert len(runs.list_runs(root)[0]) == 3 and not runs.list_runs(root)[1]


@pytest.mark.parametrize("content, words", [
    (b"not a zip", "is not a readable zip file"),
    ("partial", "model.keras missing"),
    ("escape", "unsafe path"),
    ("lambda", "weights do not fit"),
    ("extra", "a file a run does not have: run1/notes.txt"),
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
    elif content == "extra":
        content = zipped(run, extra={"run1/notes.txt": b"x"})
    elif content == "lambda":
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: t * 2)(inputs))
        content = zipped(save(tmp_path / "src" / "evil", keras.Model(inputs, keras.layers.Dense(10)(x))))
    root = tmp_path / "runs"
    with pytest.raises(runs.RunError, match=words):
        run_import.import_run(content, root, "upload.zip")
    assert not any(root.iterdir()) and not (tmp_path / "evil.txt").exists()


def test_the_runs_table_as_csv(tmp_path: Path) -> None:
    save(tmp_path / "run1")
    rows = list(csv.DictReader(io.StringIO(runs.runs_csv(runs.list_runs(tmp_path)[0]))))
    assert len(rows) == 1 and rows[0]["run"] == "run1" and rows[0]["widths"] == "8"
    assert rows[0]["best_val_accuracy"] == "0.35" and rows[0]["epochs"] == "2" and rows[0]["seed"] == "0"


def test_the_runs_csv_writes_a_formula_in_a_run_name_or_its_notes_as_text(tmp_path: Path) -> None:
    name = '=HYPERLINK("evil.invalid","x")'  # a folder name cannot hold the URL's slashes; the formula is the point
    meta = runs.RunMeta(status="@SUM(A1)", data=runs.DataInfo(found_by="\t=1+1"))
    runs.save_run(tmp_path / name, build_model(MODEL_CONFIG), MODEL_CONFIG, TrainConfig(epochs=2), HISTORY, meta)
    row = next(csv.DictReader(io.StringIO(runs.runs_csv(runs.list_runs(tmp_path)[0]))))
    assert row["run"] == f"'{name}" and row["status"] == "'@SUM(A1)" and row["data"] == "'\t=1+1"
    assert row["widths"] == "8" and row["best_val_accuracy"] == "0.35" and row["epochs"] == "2"  # numbers as they are


def rewrite_json(run: Path, file: str, **changes) -> None:
    data = json.loads((run / file).read_text())
    data.update(changes)
    (run / file).write_text(json.dumps(data))


@pytest.mark.parametrize("file, changes, words", [
    ("meta.json", {"val_accuracy": "high"}, "val_accuracy"),
    ("meta.json", {"saved_at": 20261202}, "saved_at must be text"),
    ("meta.json", {"versions": ["keras"]}, "versions must map"),
    ("meta.json", {"label_names": ["![x](http://example.invalid/x.png)"] + ["cat"] * 9}, "plain class names"),
    ("meta.json", {"val_accuracy": 7.0}, "from 0 to 1"),
])
def test_a_run_whose_files_have_the_wrong_types_is_listed_as_broken_with_why(tmp_path: Path, file, changes,
                                                                              words: str) -> None:
    save(tmp_path / "good")
    bad = save(tmp_path / "bad")
    rewrite_json(bad, file, **changes)
    good, broken = runs.list_runs(tmp_path)
    assert [r.name for r in good] == ["good"] and broken[0][0] == bad and words in broken[0][1]


def test_history_entries_of_the_wrong_type_and_oversized_json_are_refused(tmp_path: Path) -> None:
    run = save(tmp_path / "run1")
    (run / "history.json").write_text(json.dumps([{"epoch": 1, "val_accuracy": "0.9"}]))
    with pytest.raises(runs.RunError, match="val_accuracy of epoch 1 must be a number"):
        runs.read_run(run)
    (run / "history.json").write_text(" " * (runs.MAX_JSON_BYTES + 1))
    with pytest.raises(runs.RunError, match="history.json is larger than"):
        runs.read_run(run)


def test_a_run_dated_in_the_future_is_not_newer_than_its_files(tmp_path: Path) -> None:
    older = save(tmp_path / "older")
    rewrite_json(older, "meta.json", saved_at="9999-12-31T00:00:00+0000")
    newer = save(tmp_path / "newer")
    import os
    os.utime(older / "model.keras", (1_000_000_000, 1_000_000_000))
    assert [r.path for r in runs.list_runs(tmp_path)[0]] == [newer, older]


def test_runs_are_parsed_again_only_when_their_files_change(tmp_path: Path, monkeypatch) -> None:
    run = save(tmp_path / "run1")
    reads = []
    real = runs.read_run
    monkeypatch.setattr(runs, "read_run", lambda path: reads.append(path) or real(path))
    for _ in range(3):
        runs.list_runs(tmp_path)
    rewrite_json(run, "meta.json", message="changed")
    assert runs.list_runs(tmp_path)[0][0].meta.message == "changed" and len(reads) <= 2


def test_a_name_from_a_link_never_raises(tmp_path: Path) -> None:
    save(tmp_path / "run1")
    assert runs.run_in(tmp_path, "run1") == tmp_path / "run1"
    for name in ("x" * 300, "../run1", ".jobs", "a\x00b", ""):
        assert runs.run_in(tmp_path, name) is None


def test_only_the_owner_may_delete_unless_the_operator_allows_all(tmp_path: Path, monkeypatch) -> None:
    mine = run_import.import_run(zipped(save(tmp_path / "src" / "r")), tmp_path / "runs", "r.zip", owner="a" * 16)
    info = runs.read_run(mine)
    assert runs.may_delete(info, "a" * 16) and not runs.may_delete(info, "b" * 16)
    assert not runs.may_delete(runs.read_run(save(tmp_path / "cli-run")), "a" * 16)  # no owner: the operator's
    monkeypatch.setenv("DECONV_ALLOW_DELETE_ALL", "1")
    assert runs.may_delete(info, "b" * 16)


@contextlib.contextmanager
def traced():
    """Python's allocations while the block runs: yields a list whose one value is their peak in bytes, at the end."""
    peak = [0]
    tracemalloc.start()
    try:
        yield peak
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def model_keras_with(run: Path, extra: dict[str, bytes] | None = None, config: bytes | None = None) -> bytes:
    """The run's model.keras rewritten with extra members or another config.json."""
    buf = io.BytesIO()
    with zipfile.ZipFile(run / "model.keras") as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, config if config is not None and info.filename == "config.json"
                         else src.read(info))
        for name, content in (extra or {}).items():
            out.writestr(name, content)
    return buf.getvalue()


@pytest.mark.parametrize("case, words", [
    ("padding member", "holds files Keras does not write"),
    ("padded config", "too large for this network"),
])
def test_a_model_file_with_more_than_keras_writes_is_refused_before_keras_reads_it(tmp_path: Path, case,
                                                                                   words: str) -> None:
    run = save(tmp_path / "src" / "run1")
    if case == "padding member":
        (run / "model.keras").write_bytes(model_keras_with(run, {"pad.bin": bytes(50 * 2**20)}))
    elif case == "padded config":
        (run / "model.keras").write_bytes(model_keras_with(run, config=b"{}" + b" " * (2 * 2**20)))
    content = zipped(run)
    with traced() as peak, pytest.raises(runs.RunError, match=words):
        run_import.import_run(content, tmp_path / "runs", "upload.zip")
    assert peak[0] < 20 * 2**20  # bytes this process allocated: the padding was never read
    assert not any((tmp_path / "runs").iterdir())


def test_an_uploaded_architecture_is_never_built_and_the_kept_file_is_written_anew(tmp_path: Path) -> None:
    run = save(tmp_path / "src" / "run1")
    config = json.loads(zipfile.ZipFile(run / "model.keras").read("config.json"))
    config["config"]["layers"][-1]["config"]["units"] = 16384 * 16384  # a Dense layer of 10 TiB, if it were built
    (run / "model.keras").write_bytes(model_keras_with(run, config=json.dumps(config).encode()))
    content = zipped(run)
    with traced() as peak:
        added = run_import.import_run(content, tmp_path / "runs", "upload.zip")  # the weights fit its config.json's network
    assert peak[0] < 20 * 2**20  # bytes this process allocated: the weights were loaded in the child
    kept = json.loads(zipfile.ZipFile(added / "model.keras").read("config.json"))
    assert kept["config"]["layers"][-1]["config"]["units"] == 10  # rewritten from the rebuilt network
    assert runs.load_model(added).count_params() == describe(MODEL_CONFIG).params


def raw_zip(run: Path, patch) -> bytes:
    """A zip of the run with one member's header patched by `patch(info)` before it is written."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for file in runs.FILES:
            info = zipfile.ZipInfo(f"run1/{file}")
            info.compress_type = zipfile.ZIP_DEFLATED
            patch(info, file)
            z.writestr(info, (run / file).read_bytes())
    return buf.getvalue()


def encrypted(run: Path) -> bytes:
    """A zip whose meta.json says it is encrypted (the flag bit in its local and central headers)."""
    content = bytearray(zipped(run))
    name = b"run1/meta.json"
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = 0
        while (at := content.find(signature, at)) >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if content[name_at:name_at + len(name)] == name:
                content[at + flags_at] |= 0x1
            at += 4
    return bytes(content)


def lzma(info, file) -> None:
    if file == "config.json":
        info.compress_type = zipfile.ZIP_LZMA


@pytest.mark.parametrize("make, words", [
    (encrypted, "encrypted or compressed"),
    (lambda run: raw_zip(run, lzma), "encrypted or compressed"),
    (lambda run: zipped(run).replace(b'"status"', b'"st\xffus"'), "not a readable zip file"),  # CRC / zlib error
    (lambda run: None, "nested too deeply|not valid JSON"),
])
def test_archives_that_break_the_zip_reader_are_refused_and_leave_nothing(tmp_path: Path, make, words: str) -> None:
    run = save(tmp_path / "src" / "run1")
    content = make(run)
    if content is None:  # a meta.json nested far deeper than Python's recursion limit
        (run / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
        content = zipped(run)
    with pytest.raises(runs.RunError, match=words):
        run_import.import_run(content, tmp_path / "runs", "upload.zip")
    assert not any((tmp_path / "runs").iterdir())


def test_a_full_runs_folder_refuses_an_import_with_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    run = save(tmp_path / "src" / "run1")
    monkeypatch.setenv(runs.QUOTA_ENV, "10K")
    assert runs.quota_bytes() == 10 * 1024
    with pytest.raises(runs.RunError, match="the runs folder is full: .* delete runs"):
        run_import.import_run(zipped(run), tmp_path / "runs", "upload.zip")
    assert not any((tmp_path / "runs").iterdir())
    monkeypatch.setenv(runs.QUOTA_ENV, "not a size")
    assert runs.quota_bytes() == runs.DEFAULT_QUOTA


def test_folder_import_is_off_unless_allowed_and_then_only_under_its_roots(tmp_path: Path, monkeypatch) -> None:
    run = save(tmp_path / "allowed" / "run1")
    outside = save(tmp_path / "outside" / "run2")
    messages = []
    for folder in (str(run), "/root", "/nonexistent", "~"):
        with pytest.raises(runs.RunError) as e:
            run_import.import_run(folder, tmp_path / "runs", "x")
        messages.append(str(e.value))
    assert len(set(messages)) == 1 and "folder import is off" in messages[0]  # nothing to probe the disk with
    monkeypatch.setenv(run_import.FOLDER_IMPORT_ENV, str(tmp_path / "allowed"))
    assert run_import.import_run(str(run), tmp_path / "runs", "run1") == tmp_path / "runs" / "run1"
    for folder in (str(outside), str(tmp_path / "allowed" / ".." / "outside" / "run2")):
        with pytest.raises(runs.RunError, match="not under the folders"):
            run_import.import_run(folder, tmp_path / "runs", "x")


def test_leftovers_of_crashed_saves_and_imports_are_swept(tmp_path: Path) -> None:
    import os

    old, new, jobs = tmp_path / ".import.abc", tmp_path / ".run1.xyz", tmp_path / ".jobs"
    for folder in (old, new, jobs):
        folder.mkdir()
        (folder / "f").write_bytes(b"x")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    os.utime(jobs, (1_000_000_000, 1_000_000_000))
    assert runs.sweep_leftovers(tmp_path) == [old]
    assert not old.exists() and new.exists() and jobs.exists()


@pytest.fixture(scope="module")
def run_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    run = save(tmp_path_factory.mktemp("hypothesis") / "run1")
    return {file: (run / file).read_bytes() for file in runs.FILES}


def test_generated_archives_are_imported_and_loadable_or_refused_leaving_nothing(run_files, tmp_path_factory) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=12)
    methods = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
    members = st.fixed_dictionaries({
        "drop": st.lists(st.sampled_from(runs.FILES), max_size=2, unique=True),
        "json": st.dictionaries(st.sampled_from(["config.json", "history.json", "meta.json"]), values, max_size=2),
        "extra": st.dictionaries(st.sampled_from(["notes.txt", "run1/../x", "a/b/c", "report.json", "run1/"]),
                                 st.binary(max_size=64), max_size=2),
        "method": methods,
        "cut": st.one_of(st.none(), st.integers(0, 4000)),
        "folder": st.booleans(),
    })
    peaks = []

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(members)
    def one(case: dict) -> None:
        root = tmp_path_factory.mktemp("root")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for file, content in run_files.items():
                if file in case["drop"]:
                    continue
                if file in case["json"]:
                    content = json.dumps(case["json"][file]).encode()
                if file == "model.keras" and case["cut"] is not None:
                    content = content[: case["cut"]]
                z.writestr(f"run1/{file}" if case["folder"] else file, content, compress_type=case["method"])
            for name, content in case["extra"].items():
                z.writestr(name, content)
        content = buf.getvalue()
        try:
            with traced() as peak:
                try:
                    added = run_import.import_run(content, root, "upload.zip")
                finally:
                    peaks.append(peak)
        except runs.RunError:
            assert list(root.iterdir()) == []  # nothing left behind
            return
        assert runs.load_model(added) is not None and [p.name for p in root.iterdir()] == [added.name]

    one()
    assert max(p[0] for p in peaks) < 50 * 2**20  # bytes the importing process allocated for any one archive


def test_a_run_saved_without_its_optimizer_state_is_a_third_of_the_size_and_loads(tmp_path: Path) -> None:
    model = build_model(ModelConfig(widths=(32, 64)))
    model.compile(keras.optimizers.Adam(), "categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    full = runs.save_run(tmp_path / "full", model, ModelConfig(widths=(32, 64)), TrainConfig(), HISTORY, runs.RunMeta())
    slim = runs.save_run(tmp_path / "slim", model, ModelConfig(widths=(32, 64)), TrainConfig(), HISTORY, runs.RunMeta(),
                         optimizer_state=False)
    assert (slim / "model.keras").stat().st_size < 0.45 * (full / "model.keras").stat().st_size
    x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    assert np.allclose(runs.load_model(slim)(x), model(x), atol=1e-6)


def test_the_reference_model_is_small_loads_safely_and_scores_what_it_claims(real_cifar_dir: Path) -> None:
    from deconv import data, inference

    info = runs.reference_run()
    assert info is not None and info.model_path.stat().st_size < 2 * 2**20
    assert runs.model_file_problem(info.model_path, info.model_config) is None
    model = runs.load_model(info.path)  # rebuilt from config.json, weights only
    subset = data.validation_subset(info.train_config, data.get_data(real_cifar_dir))
    accuracy = inference.evaluate(model, *subset)["accuracy"]
    assert accuracy == pytest.approx(info.val_accuracy, abs=0.005) and accuracy > 0.6


def test_the_import_check_limits_its_own_memory_before_it_reads_the_run(tmp_path: Path) -> None:
    shutil.copytree(runs.REFERENCE_DIR, tmp_path / "run")
    ok = subprocess.run([sys.executable, "-m", "deconv.runcheck", str(tmp_path / "run"),
                         str(run_import.check_memory_limit(runs.read_run(tmp_path / "run").model_config))],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-500:]
    starved = subprocess.run([sys.executable, "-m", "deconv.runcheck", str(tmp_path / "run"), str(200 * 2**20)],
                             capture_output=True, text=True, timeout=300)  # 200 MB: TensorFlow cannot even load
    assert starved.returncode != 0


def test_the_readmes_command_for_the_reference_model_gives_the_settings_it_was_trained_with() -> None:
    """The README's reproduce command, parsed by the CLI, asks for exactly the configs the shipped run records (a
    changed default would otherwise train another network or another way without anyone noticing)."""
    import shlex

    from deconv import cli

    doc = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    command = doc.split("```bash\nrm -rf assets/reference-run && ", 1)[1].split("```", 1)[0]
    words = shlex.split(command.replace("\\\n", " "))
    args = cli.build_parser().parse_args(words[words.index("train"):])
    info = runs.reference_run()
    assert info is not None and args.out == "assets/reference-run"
    assert cli.configs_from_args(args) == (info.model_config, info.train_config)


# ---- what an import may take: the owner's share, the network's cost, its logs, its check's life

LARGEST = ModelConfig(widths=(256, 256, 256, 256), conv_kernel=7, conv_stride=1, deconv_kernel=7, upsample="resize",
                      up_blocks=3, head="flatten", pool_size=1)  # 1.15 TFLOPs per image, twice with mirror_predict
WIDE_HEAD = ModelConfig(widths=(64,), conv_stride=1, block_deconvs=True, deconv_stride=2, up_blocks=2, head="flatten",
                        pool_size=1)  # cheap to run, but 160 MiB of weights in its Dense layer


def config_zip(model_config: ModelConfig, model_keras: bytes = b"not read") -> bytes:
    """A zip of a run of that network whose model.keras is never read: what a tiny upload can claim."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("run1/model.keras", model_keras)
        z.writestr("run1/config.json", json.dumps({"model": model_config.to_dict(), "train": TrainConfig().to_dict()}))
        z.writestr("run1/history.json", "[]")
        z.writestr("run1/meta.json", "{}")
    return buf.getvalue()


@pytest.fixture
def no_check(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fails the test if an import starts its check child (the refusal must come first); the calls it would have had."""
    calls: list = []

    def spawn(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the import check child was started")

    monkeypatch.setattr(run_import, "spawn", spawn)
    return calls


def test_an_owner_at_their_share_is_refused_while_another_can_still_import_and_train(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    run = save(tmp_path / "src" / "run1")
    root = tmp_path / "runs"
    monkeypatch.setenv(runs.QUOTA_ENV, "100M")
    monkeypatch.setenv(runs.OWNER_QUOTA_ENV, "3M")
    mine = run_import.import_run(zipped(run), root, "mine.zip", owner="a")
    (mine / "filler").write_bytes(bytes(2 * 2**20))  # a's runs now hold 2 MB of a's 3 MB
    assert runs.owner_bytes(root, "a") > 2 * 2**20 and runs.owner_bytes(root, "b") == 0
    with pytest.raises(runs.RunError, match=r"your runs hold 2 MiB of your 3 MiB share of the runs folder, and this "
                                            r"needs about 1 MiB more; delete one on the Runs page"):
        run_import.import_run(zipped(run), root, "again.zip", owner="a")
    assert runs.room_problem(root, runs.run_bytes(MODEL_CONFIG), owner="a").startswith("your runs hold")  # training
    assert runs.room_problem(root, runs.run_bytes(MODEL_CONFIG), owner="b") is None
    assert runs.room_problem(root, runs.run_bytes(MODEL_CONFIG)) is None  # the operator: the folder's quota only
    theirs = run_import.import_run(zipped(run), root, "theirs.zip", owner="b")
    assert runs.read_run(theirs).meta.owner == "b" and sorted(p.name for p in root.iterdir()) == ["mine", "theirs"]


def test_an_owners_share_is_a_quarter_of_the_quota_and_never_more_than_half(monkeypatch) -> None:
    monkeypatch.setenv(runs.QUOTA_ENV, "8G")
    assert runs.owner_quota_bytes() == 2 * 2**30
    monkeypatch.setenv(runs.OWNER_QUOTA_ENV, "100M")
    assert runs.owner_quota_bytes() == 100 * 2**20
    monkeypatch.setenv(runs.OWNER_QUOTA_ENV, "8G")  # all of it: one visitor could fill the folder for everyone
    assert runs.owner_quota_bytes() == 4 * 2**30
    monkeypatch.setenv(runs.OWNER_QUOTA_ENV, "a lot")
    assert runs.owner_quota_bytes() == 2 * 2**30


def test_a_tiny_zip_is_bounded_by_what_its_check_would_write_before_anything_is_written(tmp_path: Path, monkeypatch,
                                                                                       no_check: list) -> None:
    monkeypatch.setattr("deconv.jobs.available_memory_bytes", lambda: 64 * 2**30)  # it needs about 2.3 GiB to train
    upload = config_zip(WIDE_HEAD)
    plan = run_import.plan_import(upload, "wide.zip")
    assert run_import.cost_problem(WIDE_HEAD) is None  # a network this server would train ...
    assert plan.bytes > 160 * 2**20 > 1000 * len(upload)  # ... whose rewritten model.keras is 1000 times the zip
    monkeypatch.setenv(runs.OWNER_QUOTA_ENV, "100M")
    with pytest.raises(runs.RunError, match="this needs about 162 MiB, more than the 100 MiB share of the runs folder "
                                            "each visitor has"):
        run_import.import_run(upload, tmp_path / "runs", "wide.zip", owner="a")
    assert not any((tmp_path / "runs").iterdir()) and no_check == []


def test_a_zip_of_the_largest_network_is_refused_before_its_check_starts(tmp_path: Path, monkeypatch,
                                                                        no_check: list) -> None:
    monkeypatch.setattr("deconv.jobs.available_memory_bytes", lambda: 64 * 2**30)  # memory is not what refuses it
    upload = config_zip(LARGEST)
    assert len(upload) < 2000
    with pytest.raises(runs.RunError, match=r"its network would take about \d+ s to classify one image by the "
                                            r"estimate, longer than this server allows .*networks it would train"):
        run_import.import_run(upload, tmp_path / "runs", "largest.zip", owner="a")
    assert not any((tmp_path / "runs").iterdir()) and no_check == []


def test_a_model_file_larger_than_its_networks_weights_can_be_is_refused_before_anything_is_written(
        tmp_path: Path, no_check: list) -> None:
    upload = config_zip(MODEL_CONFIG, bytes(runs.weights_limit(MODEL_CONFIG) + sum(runs.MODEL_MEMBERS.values()) + 1))
    with pytest.raises(runs.RunError, match="model.keras in the zip takes .* more than the weights of the network its "
                                            "config.json describes can"):
        run_import.import_run(upload, tmp_path / "runs", "padded.zip")
    assert not any((tmp_path / "runs").iterdir()) and no_check == []


def event_file(records: int) -> bytes:
    """A TensorBoard event file of `records` records (the file-version event a writer starts with)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    buf = io.BytesIO()
    writer = RecordWriter(buf)
    body = event_pb2.Event(wall_time=1.0, file_version="brain.Event:2").SerializeToString()
    for _ in range(records):
        writer.write(body)
    return buf.getvalue()


def test_event_files_past_the_runs_bounds_are_refused_inside_the_one_import_lock(tmp_path: Path, monkeypatch,
                                                                                 no_check: list) -> None:
    run = save(tmp_path / "src" / "run1")
    events = "run1/tensorboard/train/events.out.tfevents.1.host.1.{}.v2"
    held = []
    check = run_import._event_file_problem

    def watched(path: Path, budget) -> str | None:
        held.append(run_import._one_check.locked())
        return check(path, budget)

    monkeypatch.setattr(run_import, "_event_file_problem", watched)
    half = run_import.MAX_EVENT_RECORDS // 2 + 1  # each file within the bound, the two together past it
    with pytest.raises(runs.RunError, match="holds more than 10,000 events or summary values, with the run's other "
                                            "event files"):
        run_import.import_run(zipped(run, extra={events.format(n): event_file(half) for n in (1, 2)}),
                              tmp_path / "runs", "upload.zip")
    assert held == [True, True] and not any((tmp_path / "runs").iterdir()) and no_check == []
    big = bytes(run_import.MAX_EVENT_BYTES // 2 + 1)  # by their bytes: refused from the zip's listing, unread
    with pytest.raises(runs.RunError, match="the TensorBoard event files in the zip take more than 8 MB together"):
        run_import.import_run(zipped(run, extra={events.format(1): big, events.format(2): big}), tmp_path / "runs",
                              "upload.zip")
    assert held == [True, True] and not any((tmp_path / "runs").iterdir())


IMPORT_SERVER = """
import sys
from pathlib import Path
from deconv import run_import
from deconv.config import ModelConfig

spawn = run_import.spawn
def spawned(*args, **kwargs):
    proc, lifeline = spawn(*args, **kwargs)
    print(proc.pid, flush=True)
    return proc, lifeline
run_import.spawn = spawned
run_import.check_in_child(Path(sys.argv[1]), ModelConfig(widths=(8,)))
"""


def test_an_import_check_ends_when_its_server_is_killed(tmp_path: Path) -> None:
    import os
    import signal

    from tests.test_jobs import gone, wait_for

    run = save(tmp_path / "run1")
    (run / "config.json").unlink()
    os.mkfifo(run / "config.json")  # nobody writes it: the check blocks reading its config until it is ended
    server = subprocess.Popen([sys.executable, "-c", IMPORT_SERVER, str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    child = 0
    try:
        child = int(server.stdout.readline())
        assert not gone(child)
        server.kill()  # as an out-of-memory killer would: no cleanup of its own
        server.wait()
        wait_for(lambda: gone(child), timeout=60)
    finally:
        server.kill()
        server.wait()
        if child and not gone(child):
            os.kill(child, signal.SIGKILL)


def test_an_imports_network_is_held_to_what_this_server_would_train(monkeypatch) -> None:
    monkeypatch.setattr("deconv.jobs.available_memory_bytes", lambda: 64 * 2**30)
    assert run_import.cost_problem(MODEL_CONFIG) is None and run_import.cost_problem(WIDE_HEAD) is None
    monkeypatch.setenv("DECONV_MAX_JOB_SECONDS", "20")  # its shortest training: 8 s; the wide head's: 38 s
    assert run_import.cost_problem(MODEL_CONFIG) is None
    assert "too slow for this server: even 1 epoch of 100 images would take about" in run_import.cost_problem(WIDE_HEAD)
    monkeypatch.setattr("deconv.jobs.available_memory_bytes", lambda: 2**30)
    assert "does not have the memory for its network: even 1 epoch of 100 images would need about" in \
        run_import.cost_problem(MODEL_CONFIG)
