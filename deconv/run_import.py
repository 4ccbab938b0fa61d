"""Importing a run a visitor sends (a .zip) or an operator allows (a folder): checked, bounded, and all or nothing.

Its JSON files are checked against the run schema, its model.keras may hold only what Keras writes, and
its weights are loaded into the network its config.json describes in a child process with a memory limit
and a timeout, which writes the model.keras that is kept.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path

from deconv.config import ModelConfig
from deconv.cost import describe
from deconv.runs import FILES, MAX_JSON_BYTES, OPTIONAL_FILES, RunError, _write_json, read_run, room_problem

CHECK_SECONDS = 300  # an uploaded run's weights must load within this (the article's take about 10 s)
FOLDER_IMPORT_ENV = "DECONV_ALLOW_FOLDER_IMPORT"  # folders (separated by ':') a run may be imported from; unset: none
MAX_IMPORT_BYTES = 2**30  # an imported run may unpack to at most 1 GiB (the article's model is about 1 GB with Adam)
MAX_ZIP_MEMBERS = 64


def _zip_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The run files of a zip (at its top or inside one folder), checked for unsafe names, other files and sizes."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_MEMBERS:
        raise RunError(f"the zip holds {len(infos)} files: a run has {len(FILES)} (zip one run folder)")
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        parts = Path(info.filename).parts
        if info.filename.startswith("/") or ".." in parts or "\\" in info.filename:
            raise RunError(f"the zip holds an unsafe path: {info.filename[:80]}")
        if info.is_dir():
            continue
        if parts[-1] not in (*FILES, *OPTIONAL_FILES) or len(parts) > 2:
            raise RunError(f"the zip holds a file a run does not have: {info.filename[:80]} (a run is "
                           f"{', '.join(FILES)})")
        if parts[-1] in members:
            raise RunError(f"the zip holds more than one {parts[-1]}: zip one run folder")
        if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise RunError(f"{parts[-1]} in the zip is encrypted or compressed in a way this app does not read")
        if parts[-1] != "model.keras" and info.file_size > MAX_JSON_BYTES:
            raise RunError(f"{parts[-1]} in the zip is larger than {MAX_JSON_BYTES // 1024} kB")
        members[parts[-1]] = info
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


_one_check = threading.Lock()  # shared by every session of the server on purpose: one import check at a time


def check_memory_limit(model_config: ModelConfig) -> int:
    """Address space a child checking an uploaded run may use: TensorFlow's own, and room for the weights."""
    return 6 * 2**30 + 8 * describe(model_config).param_bytes


def check_in_child(run_dir: Path, model_config: ModelConfig) -> None:
    """Load the run's weights into its rebuilt network in a child process (memory limit, timeout), which then
    writes a clean model.keras of its own; RunError with the child's reason if it cannot."""
    limit = check_memory_limit(model_config)

    def bounded() -> None:  # in the child, before it runs: a hostile file runs out of memory there, not here
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        with _one_check:  # each check is a TensorFlow process of about 700 MB: visitors' imports take turns
            done = subprocess.run([sys.executable, "-m", "deconv.runcheck", str(run_dir)], capture_output=True,
                                  text=True, timeout=CHECK_SECONDS, preexec_fn=bounded,
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
