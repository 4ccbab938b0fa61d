"""Importing a run a visitor sends (a .zip) or an operator allows (a folder): checked, bounded, and all or nothing.

Its JSON files are checked against the run schema, its model.keras may hold only what Keras writes, and
its weights are loaded into the network its config.json describes in a child process with a memory limit
and a timeout, which writes the model.keras that is kept. Its logs (history.csv and TensorBoard event files,
which the app never reads but `tensorboard --logdir` on the runs folder does) must hold only what a training
writes: numbers in the CSV; scalars, the confusion images and the Keras graph in the event files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

from deconv.config import ModelConfig
from deconv.cost import describe
from deconv.runs import (FILES, HISTORY_CSV, MAX_JSON_BYTES, OPTIONAL_FILES, RunError, _write_json, is_log_file,
                         log_files, read_run, room_problem)

CHECK_SECONDS = 300  # an uploaded run's weights must load within this (the article's take about 10 s)
FOLDER_IMPORT_ENV = "DECONV_ALLOW_FOLDER_IMPORT"  # folders (separated by ':') a run may be imported from; unset: none
MAX_IMPORT_BYTES = 2**30  # an imported run may unpack to at most 1 GiB (the article's model is about 1 GB with Adam)
MAX_ZIP_MEMBERS = 64
MAX_EVENT_FILES = 8  # TensorBoard event files in a run: a training writes 3 (train, validation, confusion images)
MAX_EVENT_BYTES = 8 << 20  # one event file; a 200-epoch run's confusion images take about 2 MB
EVENT_PLUGINS = ("scalars", "images", "graph_keras_model")  # the summaries a training writes (deconv.training_logs)
MAX_EVENT_RECORDS = 10_000  # events in one file, which bounds the time its check takes
MAX_IMAGE_SIDE = 1024  # pixels of a confusion image (they are about 370 wide)
MAX_CSV_ROWS = 1000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_CONTENTS = (f"a run is {', '.join(FILES)}, maybe with {', '.join(OPTIONAL_FILES)}, {HISTORY_CSV} and TensorBoard "
                "event files in tensorboard/train and tensorboard/validation")


def _run_path(parts: tuple[str, ...]) -> tuple[str, ...] | None:
    """A zip member's path inside the run: as it is, or without its one top folder; None if neither is a run's."""
    for rel in (parts, parts[1:]):
        if rel and ((len(rel) == 1 and rel[0] in (*FILES, *OPTIONAL_FILES)) or is_log_file(rel)):
            return rel
    return None


def _size_limit(rel: str) -> int | None:
    """The most bytes a run's file may take unpacked (None: model.keras, bounded by the run's own limits)."""
    if rel == "model.keras":
        return None
    return MAX_EVENT_BYTES if rel.endswith(".v2") else MAX_JSON_BYTES


def _zip_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The run files of a zip (at its top or inside one folder) by their path in the run, checked for unsafe names,
    other files and sizes."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise RunError(f"the zip holds {len(infos)} files: {RUN_CONTENTS} (zip one run folder)")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        parts = Path(info.filename).parts
        if info.filename.startswith("/") or ".." in parts or "\\" in info.filename:
            raise RunError(f"the zip holds an unsafe path: {info.filename[:80]}")
        if info.is_dir():
            continue
        found = _run_path(parts)
        if found is None:
            raise RunError(f"the zip holds a file a run does not have: {info.filename[:80]} ({RUN_CONTENTS})")
        rel = "/".join(found)
        if rel in members:
            raise RunError(f"the zip holds more than one {rel}: zip one run folder")
        if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise RunError(f"{rel} in the zip is encrypted or compressed in a way this app does not read")
        most = _size_limit(rel)
        if most is not None and info.file_size > most:
            raise RunError(f"{rel} in the zip is larger than {most // 1024} kB")
        members[rel] = info
    if sum(rel.endswith(".v2") for rel in members) > MAX_EVENT_FILES:
        raise RunError(f"the zip holds more than {MAX_EVENT_FILES} TensorBoard event files: a run writes 3")
    missing = [f for f in FILES if f not in members]
    if missing:
        raise RunError(f"the zip is not a run: {', '.join(missing)} missing")
    if sum(m.file_size for m in members.values()) > MAX_IMPORT_BYTES:
        raise RunError(f"the run unpacks to more than {MAX_IMPORT_BYTES // 2**30} GiB")
    return members


def folder_import_roots() -> list[Path]:
    """The folders on this server a visitor may import runs from (DECONV_ALLOW_FOLDER_IMPORT); none by default."""
    return [Path(p).resolve() for p in os.environ.get(FOLDER_IMPORT_ENV, "").split(os.pathsep) if p.strip()]


def _allowed_folder(folder: str | os.PathLike[str]) -> Path:
    """The folder to import from, if it lies under an allowed root; one message for every other case (no probing)."""
    refused = RunError("that folder cannot be imported: folder import is off on this server, or the folder is not "
                       "under the folders its operator allowed")
    roots = folder_import_roots()
    if not roots or not str(folder).startswith("/"):
        raise refused
    path = Path(folder).resolve()
    if not any(path == root or root in path.parents for root in roots) or not path.is_dir():
        raise refused
    return path


def _unpack(source: str | os.PathLike[str] | bytes, tmp: Path, name: str) -> None:
    """Write a run's files from a zip's bytes or an allowed folder into tmp, bounded in number and size."""
    if isinstance(source, (bytes, bytearray)):
        try:
            with zipfile.ZipFile(io.BytesIO(source)) as archive:
                for file, info in _zip_members(archive).items():
                    (tmp / file).parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as src, open(tmp / file, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError,
                RuntimeError, ValueError) as e:  # a damaged zip, an unknown method, an encrypted member
            raise RunError(f"{name} is not a readable zip file ({str(e)[:200]})") from None
        return
    folder = _allowed_folder(source)
    for file in (*FILES, *OPTIONAL_FILES):
        src = folder / file
        if src.is_symlink():
            raise RunError(f"{file} in that folder is a link: copy the run folder itself")
        if src.is_file():
            if src.stat().st_size > (MAX_IMPORT_BYTES if file == "model.keras" else MAX_JSON_BYTES):
                raise RunError(f"{file} in that folder is too large for a run")
            shutil.copyfile(src, tmp / file)
    missing = [f for f in FILES if not (tmp / f).is_file()]
    if missing:
        raise RunError(f"that folder is not a run: {', '.join(missing)} missing")
    logs = log_files(folder)  # links are left out
    if sum(p.suffix == ".v2" for p in logs) > MAX_EVENT_FILES:
        raise RunError(f"that folder holds more than {MAX_EVENT_FILES} TensorBoard event files: a run writes 3")
    for src in logs:
        rel = src.relative_to(folder).as_posix()
        if src.stat().st_size > (_size_limit(rel) or 0):
            raise RunError(f"{rel} in that folder is too large for a run")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp / rel)


def _check_logs(run_dir: Path) -> None:
    """RunError if a log file of the unpacked run holds anything a training does not write."""
    for path in log_files(run_dir):
        problem = _csv_problem(path) if path.name == HISTORY_CSV else _event_file_problem(path)
        if problem:
            raise RunError(f"{path.relative_to(run_dir).as_posix()} {problem}")


def _csv_problem(path: Path) -> str | None:
    """What is wrong with a history.csv (a header of metric names from epoch on, rows of numbers), or None."""
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    except (UnicodeDecodeError, csv.Error) as e:
        return f"is not a CSV table ({str(e)[:100]})"
    header = rows[0] if rows else []
    if (not header or header[0] != "epoch" or len(header) > 20 or len(set(header)) < len(header)
            or not all(re.fullmatch(r"[a-z][a-z0-9_]{0,39}", name) for name in header)):
        return "has no header of metric names starting with epoch"
    if len(rows) - 1 > MAX_CSV_ROWS:
        return f"has more than {MAX_CSV_ROWS} rows"
    for row in rows[1:]:
        if len(row) != len(header) or not all(_is_number(cell) for cell in row):
            return "holds a row that is not one number per column"
    return None


def _is_number(cell: str) -> bool:
    """A CSV cell Keras' CSVLogger writes: a number, nan, or NA (a metric the epoch did not have)."""
    if cell in ("", "NA"):
        return True
    try:
        float(cell)
    except ValueError:
        return False
    return len(cell) <= 40


def _event_file_problem(path: Path) -> str | None:
    """What is wrong with a TensorBoard event file, or None: TFRecord frames of Events holding the summaries a
    training writes. (The records' CRCs guard against damage, not against a crafted file; TensorBoard checks them.)"""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    size = path.stat().st_size
    plugins: dict[str, str] = {}  # tag -> plugin (TensorBoard may give the metadata with a tag's first value only)
    with open(path, "rb") as f:
        for _ in range(MAX_EVENT_RECORDS + 1):
            header = f.read(12)  # the record's length (8 bytes) and its CRC (4), then the record and its CRC (4)
            if not header:
                return None
            length = int.from_bytes(header[:8], "little")
            if len(header) < 12 or length > size:
                return "is not a TensorBoard event file (a record runs past its end)"
            body, crc = f.read(length), f.read(4)
            if len(body) < length or len(crc) < 4:
                return "is not a TensorBoard event file (a record runs past its end)"
            try:
                event = event_pb2.Event.FromString(body)
            except DecodeError:
                return "is not a TensorBoard event file (a record is not an event)"
            what = event.WhichOneof("what")
            if what == "file_version":
                continue
            if what != "summary":
                return f"holds a {what or 'blank'} event: a run's logs hold summaries only"
            for value in event.summary.value:
                problem = _summary_problem(value, plugins)
                if problem:
                    return problem
    return f"holds more than {MAX_EVENT_RECORDS:,} events: a run of 200 epochs writes about 1,000"


def _summary_problem(value: Any, plugins: dict[str, str]) -> str | None:
    """What is wrong with one summary value (a tensorboard Summary.Value) of an event file, or None."""
    tag: str = value.tag
    plugin = value.metadata.plugin_data.plugin_name or plugins.get(tag, "")
    tensor = value.tensor
    if value.WhichOneof("value") != "tensor" or plugin not in EVENT_PLUGINS or len(tag) > 200:
        return f"holds a summary a training does not write ({tag[:40]!r}, {plugin or 'no plugin'})"
    plugins[tag] = plugin
    shape = [d.size for d in tensor.tensor_shape.dim]
    if plugin == "scalars" and (shape or tensor.ByteSize() > 64):
        return f"holds a scalar {tag[:40]!r} that is not one number"
    if plugin == "graph_keras_model" and (shape or len(tensor.string_val) != 1):
        return "holds a Keras graph that is not one JSON text"
    if plugin == "images":
        values = list(tensor.string_val)
        if len(shape) != 1 or len(values) < 3 or not all(v.isdigit() and len(v) < 6 and int(v) <= MAX_IMAGE_SIDE
                                                           for v in values[:2]):
            return f"holds an image summary {tag[:40]!r} of an unexpected shape"
        for png in values[2:]:
            if not png.startswith(PNG_SIGNATURE) or len(png) < 24 or max(
                    int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) > MAX_IMAGE_SIDE:
                return f"holds an image {tag[:40]!r} that is not a PNG of at most {MAX_IMAGE_SIDE} pixels a side"
    return None


_one_check = threading.Lock()  # shared by every session of the server on purpose: one import check at a time


def check_memory_limit(model_config: ModelConfig) -> int:
    """Address space a child checking an uploaded run may use: TensorFlow's own, and room for the weights."""
    return 6 * 2**30 + 8 * describe(model_config).param_bytes


def check_in_child(run_dir: Path, model_config: ModelConfig) -> None:
    """Load the run's weights into its rebuilt network in a child process (memory limit, timeout), which then
    writes a clean model.keras of its own; RunError with the child's reason if it cannot."""
    limit = check_memory_limit(model_config)  # the child sets it on itself first: a hostile file runs out there
    try:
        with _one_check:  # each check is a TensorFlow process of about 700 MB: visitors' imports take turns
            done = subprocess.run([sys.executable, "-m", "deconv.runcheck", str(run_dir), str(limit)],
                                  capture_output=True, text=True, timeout=CHECK_SECONDS,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    except subprocess.TimeoutExpired:
        raise RunError(f"its weights did not load within {CHECK_SECONDS} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        why = lines[-1].removeprefix("error: ") if lines else (
            "it ran out of memory" if done.returncode < 0 or "MemoryError" in done.stderr else
            f"the check ended with exit code {done.returncode}")
        raise RunError(why)


def import_run(source: str | os.PathLike[str] | bytes, root: str | os.PathLike[str], name: str,
               owner: str = "") -> Path:
    """Add a run (the bytes of a .zip of one, or a folder under an allowed root) under root, checked first.

    Its JSON files are checked against the schema; its model.keras must hold only what Keras writes; the
    weights are loaded into the network its config.json describes in a child process, which writes the
    model.keras that is kept. Whatever fails, nothing is left behind.
    """
    root = Path(root)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).name.removesuffix(".zip"))[:80].strip(".-") or "imported"
    size = len(source) if isinstance(source, (bytes, bytearray)) else 0
    try:
        root.mkdir(parents=True, exist_ok=True)
        problem = room_problem(root, size)
        if problem:
            raise RunError(problem)
        tmp = Path(tempfile.mkdtemp(prefix=".import.", dir=root))
    except OSError as e:
        raise RunError(f"cannot create the run in {root}: {e.strerror or e}") from None
    try:
        _unpack(source, tmp, name)
        info = read_run(tmp)
        _check_logs(tmp)
        problem = room_problem(root, 0)  # the unpacked files are under root already
        if problem:
            raise RunError(problem)
        check_in_child(tmp, info.model_config)
        meta = json.loads((tmp / "meta.json").read_text())
        meta["owner"] = owner  # who imported it may delete it
        _write_json(tmp / "meta.json", meta)
        for n in range(1, 1000):
            target = root / (stem if n == 1 else f"{stem}_{n}")
            try:
                target.mkdir()  # reserve the name atomically (another server may share the folder) ...
            except FileExistsError:
                continue
            tmp.rename(target)  # ... and take its place: renaming onto an empty folder replaces it
            return target
        raise RunError(f"no free run directory name under {root}")
    except RunError as e:
        raise RunError(str(e).replace(tmp.name, name)) from None
    except OSError as e:
        raise RunError(f"could not import {name}: {e.strerror or e}") from None
    except RecursionError:
        raise RunError(f"{name}: a JSON file is nested too deeply") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the import succeeded (renamed into place)
