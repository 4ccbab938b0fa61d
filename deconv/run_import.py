"""Importing a run a visitor sends (a .zip) or an operator allows (a folder): checked, bounded, and all or nothing.

Before anything is written, the zip's listing (or the folder's) and its config.json say what the run will take:
its network must be one this server would train (`deconv.jobs.cost_refusal` for the shortest training), and its
files, with the model.keras the check writes, must fit the runs folder's quota and the visitor's share of it
(`runs.room_problem`). Then, one import at a time: its JSON files are checked against the run schema, its
model.keras may hold only what Keras writes, its logs (history.csv and TensorBoard event files, which the app never
reads but `tensorboard --logdir` on the runs folder does) only what a training writes (numbers in the CSV; scalars,
the confusion images and the Keras graph in the event files, bounded in bytes, events and values), and its weights
are loaded into the network its config.json describes in a child process with a memory limit, a timeout and a
lifeline to the server, which writes the model.keras that is kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deconv.config import ModelConfig, TrainConfig, field_spec
from deconv.cost import classify_work, describe
from deconv.jobs import cost_refusal, fmt_duration, max_job_seconds_from_env, memory_check
from deconv.lifeline import spawn
from deconv.runs import (FILES, HISTORY_CSV, MAX_JSON_BYTES, MODEL_MEMBERS, OPTIONAL_FILES, RunError, _write_json,
                         is_log_file, log_files, read_run, room_problem, weights_limit)

CHECK_SECONDS = 300  # an uploaded run's weights must load within this (the article's take about 10 s)
FOLDER_IMPORT_ENV = "DECONV_ALLOW_FOLDER_IMPORT"  # folders (separated by ':') a run may be imported from; unset: none
MAX_IMPORT_BYTES = 2**30  # an imported run may unpack to at most 1 GiB (the article's model is about 1 GB with Adam)
MAX_ZIP_MEMBERS = 64
MAX_EVENT_FILES = 8  # TensorBoard event files in a run: a training writes 3 (train, validation, confusion images)
MAX_EVENT_BYTES = 8 << 20  # a run's event files together; a 200-epoch run's confusion images take about 2.7 MB
EVENT_PLUGINS = ("scalars", "images", "graph_keras_model")  # the summaries a training writes (deconv.training_logs)
# Events, and summary values, in a run's event files together, which bounds the time their check takes (measured:
# 8 files of 10,000 records of 53 values each took 9.8 s of CPU, inside no lock). A training writes one value per
# event, about 8 an epoch: 1,600 for 200 epochs.
MAX_EVENT_RECORDS = 10_000
MAX_SUMMARY_IMAGES = 3  # PNGs in one image summary (tf.summary.image's max_outputs; a training writes 1)
MAX_IMAGE_SIDE = 1024  # pixels of a confusion image (they are about 370 wide)
MAX_CSV_ROWS = 1000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_CONTENTS = (f"a run is {', '.join(FILES)}, maybe with {', '.join(OPTIONAL_FILES)}, {HISTORY_CSV} and TensorBoard "
                "event files in tensorboard/train and tensorboard/validation")
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError,
               ValueError)  # a damaged zip, an unknown method, an encrypted member
SHORTEST_TRAINING = TrainConfig(**{name: field_spec(TrainConfig, name).low  # what an import's network is held to
                                   for name in ("train_size", "val_size", "epochs", "batch_size")})


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
        members[rel] = info
    _check_listing({rel: info.file_size for rel, info in members.items()}, "the zip")
    return members


def _check_listing(sizes: dict[str, int], where: str) -> None:
    """RunError if a run's files, by their path in the run and their bytes, are not a run or are too large (`where`:
    'the zip' or 'that folder')."""
    for rel, size in sizes.items():
        most = _size_limit(rel)
        if most is not None and size > most:
            raise RunError(f"{rel} in {where} is larger than {most // 1024} kB")
    events = [size for rel, size in sizes.items() if rel.endswith(".v2")]
    if len(events) > MAX_EVENT_FILES:
        raise RunError(f"{where} holds more than {MAX_EVENT_FILES} TensorBoard event files: a run writes 3")
    if sum(events) > MAX_EVENT_BYTES:
        raise RunError(f"the TensorBoard event files in {where} take more than {MAX_EVENT_BYTES // 2**20} MB together: "
                       "a run of 200 epochs writes about 3 MB")
    missing = [f for f in FILES if f not in sizes]
    if missing:
        raise RunError(f"{where} is not a run: {', '.join(missing)} missing")
    if sum(sizes.values()) > MAX_IMPORT_BYTES:
        raise RunError(f"the run unpacks to more than {MAX_IMPORT_BYTES // 2**30} GiB")


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


def _folder_files(folder: Path) -> dict[str, int]:
    """A run folder's files by their path in the run, with their bytes (links refused, other files left out)."""
    sizes = {}
    for file in (*FILES, *OPTIONAL_FILES):
        src = folder / file
        if src.is_symlink():
            raise RunError(f"{file} in that folder is a link: copy the run folder itself")
        if src.is_file():
            sizes[file] = src.stat().st_size
    for src in log_files(folder):  # links are left out
        sizes[src.relative_to(folder).as_posix()] = src.stat().st_size
    return sizes


def rewritten_bytes(model_config: ModelConfig) -> int:
    """The most bytes of the model.keras the import check writes: the network's weights alone (no optimizer state)
    and Keras' own small files (measured: 54 to 175 kB above the weights)."""
    return describe(model_config).param_bytes + sum(MODEL_MEMBERS.values())


@dataclass(frozen=True)
class ImportPlan:
    """What an import will write, known before anything is: the run's files and their bytes, and its configs."""

    source: bytes | bytearray | Path  # the zip's bytes, or the allowed folder
    sizes: dict[str, int]  # bytes of each file by its path in the run
    model_config: ModelConfig
    train_config: TrainConfig

    @property
    def bytes(self) -> int:
        """The most the run takes in the runs folder: its files as unpacked, or with the model.keras the check
        writes in place of the uploaded one when that is larger (the two lie side by side only for a moment)."""
        return sum(self.sizes.values()) + max(0, rewritten_bytes(self.model_config) - self.sizes["model.keras"])


def plan_import(source: str | os.PathLike[str] | bytes | bytearray, name: str) -> ImportPlan:
    """Read a run's listing and config.json from a zip's bytes or an allowed folder, writing nothing; RunError if it is
    not a run, holds what a run does not, or its model.keras is larger than its network's weights can be."""
    if isinstance(source, (bytes, bytearray)):
        try:
            with zipfile.ZipFile(io.BytesIO(source)) as archive:
                members = _zip_members(archive)
                config = archive.read(members["config.json"])
        except _ZIP_ERRORS as e:
            raise RunError(f"{name} is not a readable zip file ({str(e)[:200]})") from None
        sizes = {rel: info.file_size for rel, info in members.items()}
        where = "the zip"
    else:
        source = _allowed_folder(source)
        sizes = _folder_files(source)
        _check_listing(sizes, "that folder")
        with open(source / "config.json", "rb") as f:
            config = f.read(MAX_JSON_BYTES)
        where = "that folder"
    model_config, train_config = _configs(config)
    most = weights_limit(model_config) + sum(MODEL_MEMBERS.values())
    if sizes["model.keras"] > most:
        raise RunError(f"model.keras in {where} takes {sizes['model.keras'] / 2**20:,.1f} MiB, more than the weights "
                       f"of the network its config.json describes can ({most / 2**20:,.1f} MiB)")
    return ImportPlan(source, sizes, model_config, train_config)


def _configs(text: bytes) -> tuple[ModelConfig, TrainConfig]:
    """The network and training a run's config.json describes; RunError says what is wrong."""
    try:
        config = json.loads(text)
        return ModelConfig.from_dict(config["model"]), TrainConfig.from_dict(config["train"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, RecursionError) as e:
        raise RunError(f"config.json is invalid ({str(e)[:300]})") from None


def cost_problem(model_config: ModelConfig) -> str | None:
    """Why this server does not take a run of this network, or None: it would not train it, even for the shortest
    training (deconv.jobs.cost_refusal: memory, time, and one image's answer), so its pages could not use it."""
    memory = memory_check(model_config, SHORTEST_TRAINING)
    refused = cost_refusal(model_config, SHORTEST_TRAINING, memory, max_job_seconds_from_env())
    if refused is None:
        return None
    shortest = f"{SHORTEST_TRAINING.epochs} epoch of {SHORTEST_TRAINING.train_size} images"
    if refused.reason == "memory":
        why = f"this server does not have the memory for its network: even {shortest} would need {memory.describe()}"
    elif refused.reason == "time":
        why = (f"its network is too slow for this server: even {shortest} would take about "
               f"{fmt_duration(describe(model_config).train_seconds(SHORTEST_TRAINING))} by the estimate, longer "
               f"than one training may take here ({fmt_duration(max_job_seconds_from_env())})")
    else:
        answer = classify_work(model_config, 1)
        why = (f"its network would take about {fmt_duration(answer.bounded_seconds)} to classify one image by the "
               f"estimate, longer than this server allows ({fmt_duration(answer.budget_seconds)})")
    return f"{why}; this server takes runs of the networks it would train itself"


def _unpack(plan: ImportPlan, tmp: Path, name: str) -> None:
    """Write the planned run files into tmp, each at most its planned bytes."""
    if not isinstance(plan.source, Path):
        try:
            with zipfile.ZipFile(io.BytesIO(plan.source)) as archive:
                for rel, info in _zip_members(archive).items():
                    with archive.open(info) as src:
                        _copy(src, tmp / rel, plan.sizes[rel], rel)
        except _ZIP_ERRORS as e:  # a member whose data is damaged (its CRC, its deflate stream)
            raise RunError(f"{name} is not a readable zip file ({str(e)[:200]})") from None
        return
    for rel, size in plan.sizes.items():
        src = plan.source / rel
        if src.is_symlink():
            raise RunError(f"{rel} in that folder is a link: copy the run folder itself")
        with open(src, "rb") as f:
            _copy(f, tmp / rel, size, rel)


def _copy(src: IO[bytes], dst: Path, size: int, rel: str) -> None:
    """Copy `size` bytes of src to dst; RunError if src holds more (it changed since it was listed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        left = size
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
    if src.read(1):
        raise RunError(f"{rel} changed while it was imported: import it again")


@dataclass
class _EventBudget:
    """What a run's event files may still hold together: events and summary values (what their check's time takes)."""

    records: int = MAX_EVENT_RECORDS
    values: int = MAX_EVENT_RECORDS


def _check_logs(run_dir: Path) -> None:
    """RunError if a log file of the unpacked run holds anything a training does not write, or more than it does."""
    budget = _EventBudget()
    for path in log_files(run_dir):
        problem = _csv_problem(path) if path.name == HISTORY_CSV else _event_file_problem(path, budget)
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


def _event_file_problem(path: Path, budget: _EventBudget) -> str | None:
    """What is wrong with a TensorBoard event file, or None: TFRecord frames of Events holding the summaries a
    training writes, within what is left of the run's `budget`. (The records' CRCs guard against damage, not against
    a crafted file; TensorBoard checks them.)"""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    size = path.stat().st_size
    plugins: dict[str, str] = {}  # tag -> plugin (TensorBoard may give the metadata with a tag's first value only)
    too_many = f"holds more than {MAX_EVENT_RECORDS:,} events or summary values, with the run's other event files: " \
               "a run of 200 epochs writes about 1,600"
    with open(path, "rb") as f:
        while header := f.read(12):  # the record's length (8 bytes) and its CRC (4), then the record and its CRC (4)
            budget.records -= 1
            if budget.records < 0:
                return too_many
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
            budget.values -= len(event.summary.value)
            if budget.values < 0:
                return too_many
            for value in event.summary.value:
                problem = _summary_problem(value, plugins)
                if problem:
                    return problem
    return None


def _summary_problem(value: Any, plugins: dict[str, str]) -> str | None:
    """What is wrong with one summary value (a tensorboard Summary.Value) of an event file, or None."""
    tag: str = value.tag
    plugin = value.metadata.plugin_data.plugin_name or plugins.get(tag, "")
    tensor = value.tensor
    if value.WhichOneof("value") != "tensor" or plugin not in EVENT_PLUGINS or len(tag) > 200:
        return f"holds a summary a training does not write ({tag[:40]!r}, {plugin or 'no plugin'})"
    plugins[tag] = plugin
    dims, strings = len(tensor.tensor_shape.dim), len(tensor.string_val)  # counted before any is read
    if plugin == "scalars" and (dims or tensor.ByteSize() > 64):
        return f"holds a scalar {tag[:40]!r} that is not one number"
    if plugin == "graph_keras_model" and (dims or strings != 1):
        return "holds a Keras graph that is not one JSON text"
    if plugin == "images":
        if dims != 1 or not 3 <= strings <= 2 + MAX_SUMMARY_IMAGES or not all(
                v.isdigit() and len(v) < 6 and int(v) <= MAX_IMAGE_SIDE for v in tensor.string_val[:2]):
            return f"holds an image summary {tag[:40]!r} of an unexpected shape"
        for png in tensor.string_val[2:]:
            if not png.startswith(PNG_SIGNATURE) or len(png) < 24 or max(
                    int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) > MAX_IMAGE_SIDE:
                return f"holds an image {tag[:40]!r} that is not a PNG of at most {MAX_IMAGE_SIDE} pixels a side"
    return None


# Shared by every session of the server on purpose: one import at a time, from its room check to its rename into
# place. Each check is a TensorFlow process of about 700 MB, and each import's bytes are counted against the quota
# only once the one before it is in place (or gone).
_one_check = threading.Lock()


def check_memory_limit(model_config: ModelConfig) -> int:
    """Address space a child checking an uploaded run may use: TensorFlow's own, and room for the weights."""
    return 6 * 2**30 + 8 * describe(model_config).param_bytes


def check_in_child(run_dir: Path, model_config: ModelConfig) -> None:
    """Load the run's weights into its rebuilt network in a child process (memory limit, timeout, a lifeline: it ends
    when this server does), which then writes a clean model.keras of its own; RunError with the child's reason if it
    cannot."""
    limit = check_memory_limit(model_config)  # the child sets it on itself first: a hostile file runs out there
    proc, lifeline = spawn([str(run_dir), str(limit)], {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                           module="deconv.runcheck", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, errors="replace")
    try:
        _, stderr = proc.communicate(timeout=CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group (spawn): helpers it started go too
        proc.communicate()
        raise RunError(f"its weights did not load within {CHECK_SECONDS} s") from None
    finally:
        lifeline.close()  # the child has ended; or this thread is leaving by an exception, and the child ends too
    if proc.returncode != 0:
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        why = lines[-1].removeprefix("error: ") if lines else (
            "it ran out of memory" if proc.returncode < 0 or "MemoryError" in stderr else
            f"the check ended with exit code {proc.returncode}")
        raise RunError(why)


def import_run(source: str | os.PathLike[str] | bytes | bytearray, root: str | os.PathLike[str], name: str,
               owner: str = "") -> Path:
    """Add a run (the bytes of a .zip of one, or a folder under an allowed root) under root for `owner` (the
    importer's owner key; empty: the operator's), checked first.

    Refused before anything is written: a network this server would not train (`cost_problem`), a run larger than
    the runs folder's room or the owner's share of it (`runs.room_problem` of `ImportPlan.bytes`). Then, one import
    at a time: its JSON files are checked against the schema, its model.keras must hold only what Keras writes, its
    logs only what a training writes, and the weights are loaded into the network its config.json describes in a
    child process, which writes the model.keras that is kept. Whatever fails, nothing is left behind.
    """
    root = Path(root)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).name.removesuffix(".zip"))[:80].strip(".-") or "imported"
    try:
        root.mkdir(parents=True, exist_ok=True)  # the runs folder itself: nothing of the run yet
    except OSError as e:
        raise RunError(f"cannot create the run in {root}: {e.strerror or e}") from None
    try:
        plan = plan_import(source, name)
    except RunError as e:
        raise RunError(f"{name}: {e}" if str(e).startswith("config.json") else str(e)) from None
    except OSError as e:
        raise RunError(f"could not import {name}: {e.strerror or e}") from None
    problem = cost_problem(plan.model_config)
    if problem:
        raise RunError(problem)
    with _one_check:
        return _import(plan, root, stem, name, owner)


def _import(plan: ImportPlan, root: Path, stem: str, name: str, owner: str) -> Path:
    """import_run's writing part, holding the one-import lock: room, unpack, checks, rename into place."""
    try:
        problem = room_problem(root, plan.bytes, owner=owner)
        if problem:
            raise RunError(problem)
        tmp = Path(tempfile.mkdtemp(prefix=".import.", dir=root))
    except OSError as e:
        raise RunError(f"cannot create the run in {root}: {e.strerror or e}") from None
    try:
        _unpack(plan, tmp, name)
        info = read_run(tmp)
        if info.model_config != plan.model_config:
            raise RunError(f"{name} changed while it was imported: import it again")
        _check_logs(tmp)
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
