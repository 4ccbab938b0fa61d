"""A trained run is a directory: model.keras, config.json, history.json, meta.json.

Saving writes a sibling temporary directory and renames it into place, so a failed save (a full
disk, a read-only folder) leaves no half-written run. Reading the small JSON files lists runs
without TensorFlow; loading the model uses Keras' safe mode.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import platform
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deconv.config import ModelConfig, TrainConfig

RUNS_DIR_ENV = "DECONV_RUNS_DIR"
FILES = ("model.keras", "config.json", "history.json", "meta.json")


class RunError(Exception):
    """A run directory is missing, incomplete or corrupt; the message names the file."""


@dataclass
class RunInfo:
    """What a run directory says about itself, read without loading the model."""

    path: Path
    model_config: ModelConfig
    train_config: TrainConfig
    history: list[dict[str, Any]]
    meta: dict[str, Any]

    @property
    def name(self) -> str:
        """The directory name."""
        return self.path.name

    @property
    def best_val_accuracy(self) -> float | None:
        """The best validation accuracy over the epochs, if any epoch was validated."""
        accs = [e["val_accuracy"] for e in self.history if e.get("val_accuracy") is not None]
        return max(accs) if accs else None

    @property
    def best_epoch(self) -> int | None:
        """The epoch that ended with the best validation accuracy, if any epoch was validated."""
        validated = [e for e in self.history if e.get("val_accuracy") is not None]
        return max(validated, key=lambda e: e["val_accuracy"])["epoch"] if validated else None

    @property
    def val_accuracy(self) -> float | None:
        """Validation accuracy of the saved weights (None if they were not validated)."""
        value = self.meta.get("val_accuracy")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def model_bytes(self) -> int:
        """Size of model.keras on disk."""
        return (self.path / "model.keras").stat().st_size

    def history_csv(self) -> str:
        """The per-epoch history as CSV text."""
        keys = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "elapsed"]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.history)
        return out.getvalue()


def default_runs_dir() -> Path:
    """DECONV_RUNS_DIR, or runs/ beside the app."""
    return Path(os.environ.get(RUNS_DIR_ENV) or Path(__file__).resolve().parent.parent / "runs")


def run_name(model_config: ModelConfig) -> str:
    """A run's name: date, time and block widths."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}_w{'-'.join(map(str, model_config.widths))}"


def new_run_dir(root: str | os.PathLike[str], model_config: ModelConfig) -> Path:
    """A fresh run directory under root, named by run_name, created empty to reserve it."""
    base = run_name(model_config)
    if Path(root).exists() and not Path(root).is_dir():
        raise RunError(f"cannot create a run folder in {root}: it is a file, not a folder")
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            path = Path(root) / (base if n == 1 else f"{base}_{n}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as e:
        raise RunError(f"cannot create a run folder in {root}: {e.strerror or e}") from None
    raise RunError(f"no free run directory name under {root}")


def run_in(root: str | os.PathLike[str], name: str) -> Path | None:
    """The run called `name` directly under root, or None (names from a URL are not trusted)."""
    if not name or name != Path(name).name or name.startswith("."):
        return None
    path = Path(root) / name
    return path if (path / "model.keras").is_file() else None


def library_versions() -> dict[str, str]:
    """Versions of what trained the run."""
    import keras
    import numpy
    import tensorflow

    return {"python": platform.python_version(), "tensorflow": tensorflow.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__}


def _write_json(path: Path, data: Any) -> None:
    """Write pretty JSON."""
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_run(run_dir: str | os.PathLike[str], model: Any, model_config: ModelConfig, train_config: TrainConfig,
             history: list[dict[str, Any]], meta: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a run directory atomically (with `extra` JSON files beside it); refuses to overwrite a non-empty one."""
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunError(f"{run_dir} already exists and is not empty: choose another --out")
    parent = run_dir.parent
    if parent.exists() and not parent.is_dir():
        raise RunError(f"cannot create the run in {parent}: it is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=parent))
    except OSError as e:
        raise RunError(f"cannot create the run in {parent}: {e.strerror or e}") from None
    try:
        model.save(tmp / "model.keras")
        _write_json(tmp / "config.json", {"model": model_config.to_dict(), "train": train_config.to_dict()})
        _write_json(tmp / "history.json", history)
        _write_json(tmp / "meta.json", {"saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "versions": library_versions(), **meta})
        for file, content in (extra or {}).items():
            _write_json(tmp / file, content)
        if run_dir.exists():
            run_dir.rmdir()
        tmp.rename(run_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"could not save the run to {run_dir}: {e.strerror or e}") from None
    return run_dir


def _read_json(path: Path) -> Any:
    """Parse a JSON file, or RunError naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path.parent.name}: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path.parent.name}: {path.name} is not valid JSON ({e})") from None


def read_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """A run's configs, history and meta, checked, without loading the model."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory")
    if not (path / "model.keras").is_file():
        raise RunError(f"{path.name}: model.keras is missing")
    config = _read_json(path / "config.json")
    try:
        model_config = ModelConfig.from_dict(config["model"])
        train_config = TrainConfig.from_dict(config["train"])
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{path.name}: config.json is invalid ({e})") from None
    history = _read_json(path / "history.json")
    meta = _read_json(path / "meta.json")
    if not isinstance(history, list) or not all(isinstance(e, dict) for e in history) or not isinstance(meta, dict):
        raise RunError(f"{path.name}: history.json or meta.json has the wrong shape")
    return RunInfo(path, model_config, train_config, history, meta)


def load_model(run_dir: str | os.PathLike[str]) -> Any:
    """The run's Keras model, loaded in safe mode (no arbitrary code such as Lambda layers)."""
    import keras

    info = read_run(run_dir)
    try:
        return keras.saving.load_model(info.path / "model.keras", safe_mode=True)
    except (ValueError, OSError, TypeError, KeyError, AttributeError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{info.name}: model.keras cannot be loaded safely ({first[:300]})") from None


def list_runs(root: str | os.PathLike[str] | None = None) -> tuple[list[RunInfo], list[tuple[Path, str]]]:
    """All runs under root, newest first, and the directories that could not be read with why."""
    root = Path(root) if root else default_runs_dir()
    good, bad = [], []
    if not root.is_dir():
        return good, bad
    try:
        paths = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        return good, [(root, f"the runs folder cannot be read: {e.strerror or e}")]
    for path in paths:
        try:
            if not any(path.iterdir()):
                continue  # a name reserved by new_run_dir for a training still under way
            good.append(read_run(path))
        except RunError as e:
            bad.append((path, str(e)))
        except OSError as e:
            bad.append((path, f"cannot be read: {e.strerror or e}"))
    good.sort(key=lambda r: str(r.meta.get("saved_at", "")), reverse=True)
    return good, bad


def delete_run(run_dir: str | os.PathLike[str]) -> None:
    """Remove a run directory (only one that looks like a run)."""
    path = Path(run_dir)
    if not (path / "config.json").exists() and not (path / "model.keras").exists():
        raise RunError(f"{path} does not look like a run directory; not deleted")
    shutil.rmtree(path)


MAX_IMPORT_BYTES = 2**30  # an imported run may unpack to at most 1 GiB (the article's model is about 340 MB)


def _zip_members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The run files of a zip (at its top or inside one folder), checked for unsafe names and sizes."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        parts = Path(info.filename).parts
        if info.filename.startswith("/") or ".." in parts:
            raise RunError(f"the zip holds an unsafe path: {info.filename}")
        if info.is_dir() or parts[-1] not in FILES or len(parts) > 2:
            continue
        if parts[-1] in members:
            raise RunError(f"the zip holds more than one {parts[-1]}: zip one run folder")
        members[parts[-1]] = info
    missing = [f for f in FILES if f not in members]
    if missing:
        raise RunError(f"the zip is not a run: {', '.join(missing)} missing")
    if sum(m.file_size for m in members.values()) > MAX_IMPORT_BYTES:
        raise RunError(f"the run unpacks to more than {MAX_IMPORT_BYTES // 2**30} GiB")
    return members


def import_run(source: str | os.PathLike[str] | bytes, root: str | os.PathLike[str], name: str) -> Path:
    """Copy a run (a run folder, or the bytes of a .zip of one) under root, checked and loaded in safe mode first."""
    root = Path(root)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name).name.removesuffix(".zip")).strip(".-") or "imported"
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".import.", dir=root))
    except OSError as e:
        raise RunError(f"cannot create the run in {root}: {e.strerror or e}") from None
    try:
        if isinstance(source, (bytes, bytearray)):
            try:
                with zipfile.ZipFile(io.BytesIO(source)) as archive:
                    for file, info in _zip_members(archive).items():
                        with archive.open(info) as src, open(tmp / file, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
                raise RunError(f"{name} is not a readable zip file ({e})") from None
        else:
            folder = Path(source)
            info = read_run(folder)  # before copying anything big
            for file in FILES:
                shutil.copyfile(info.path / file, tmp / file)
        load_model(tmp)  # refuses what safe mode refuses (a Lambda layer), and damaged files
        for n in range(1, 1000):
            target = root / (stem if n == 1 else f"{stem}_{n}")
            if not target.exists():
                tmp.rename(target)
                return target
        raise RunError(f"no free run directory name under {root}")
    except RunError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(str(e).replace(tmp.name, name)) from None
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(f"could not import {name}: {e.strerror or e}") from None


def runs_csv(infos: list[RunInfo]) -> str:
    """A table of runs as CSV text: what each trained, how, on what, and how well."""
    out = io.StringIO()
    writer = csv.writer(out)
    model_keys = [f.name for f in dataclasses.fields(ModelConfig)]
    train_keys = [f.name for f in dataclasses.fields(TrainConfig)]
    writer.writerow(["run", "status", "val_accuracy", "best_val_accuracy", "epochs_completed", "train_seconds",
                     "params", *model_keys, *train_keys, "data", "saved_at"])
    for r in infos:
        model, train = r.model_config.to_dict(), r.train_config.to_dict()
        writer.writerow([r.name, r.meta.get("status", ""), r.val_accuracy, r.best_val_accuracy,
                         r.meta.get("epochs_completed", len(r.history)), r.meta.get("train_seconds"),
                         r.meta.get("params"), *("-".join(map(str, v)) if isinstance(v, list) else v for v in model.values()),
                         *train.values(), (r.meta.get("data") or {}).get("found_by", ""), r.meta.get("saved_at", "")])
    return out.getvalue()
