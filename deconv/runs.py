"""A trained run is a directory: model.keras, config.json, history.json, meta.json (and report.json).

Saving writes a sibling temporary directory and renames it into place, so a failed save (a full
disk, a read-only folder) leaves no half-written run. Reading the small JSON files lists runs
without TensorFlow, each checked against a typed schema: a run a visitor uploaded can be refused
or listed as broken, never break a page. A model is never deserialised from its file's own
architecture: it is rebuilt from the run's config.json (bounded by ModelConfig) and only the
weights are read, and an uploaded run's weights are read first in a child process with a memory
limit and a timeout.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import tempfile
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deconv.config import CIFAR10_LABELS, NUM_CLASSES, ModelConfig, TrainConfig
from deconv.cost import describe

RUNS_DIR_ENV = "DECONV_RUNS_DIR"
QUOTA_ENV = "DECONV_RUNS_QUOTA"  # bytes the runs folder may hold (suffixes K, M, G), stopped runs included
DEFAULT_QUOTA = 5 * 2**30
OWNER_QUOTA_ENV = "DECONV_OWNER_QUOTA"  # bytes the runs of one owner (a browser) may hold; see owner_quota_bytes
DEFAULT_OWNER_SHARES = 4  # unset: an owner may hold a quarter of the runs folder's quota ...
MOST_OWNER_SHARE = 2  # ... and never more than half of it, whatever DECONV_OWNER_QUOTA says
FILES = ("model.keras", "config.json", "history.json", "meta.json")
OPTIONAL_FILES = ("report.json",)
HISTORY_CSV = "history.csv"  # the epochs as Keras' CSVLogger wrote them
TENSORBOARD_DIR = "tensorboard"  # the event files of Keras' TensorBoard callback: train/ and validation/
TENSORBOARD_RUNS = ("train", "validation")
EVENT_FILE = re.compile(r"events\.out\.tfevents\.\d{1,12}\.[A-Za-z0-9._-]{1,160}\.v2")  # time, host, pid, count
MAX_JSON_BYTES = 1 << 20  # a run's JSON files are a few kB; larger ones are not parsed
MODEL_MEMBERS = {"config.json": 1 << 20, "metadata.json": 1 << 16}  # what Keras writes in model.keras, capped;
WEIGHTS_MEMBER = "model.weights.h5"  # ... and the weights, capped by what the run's network can hold
LEFTOVER_SECONDS = 15 * 60  # a hidden temporary folder older than this is a crashed save or import: swept
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,31}")  # label names shown to every visitor: plain words only


class RunError(Exception):
    """A run directory is missing, incomplete or corrupt; the message names the file."""


def _text(data: dict[str, Any], key: str, default: str = "", most: int = 300) -> str:
    """A string field, shortened; RunError if it has another type."""
    value = data.get(key, default)
    if not isinstance(value, str):
        raise RunError(f"meta.json: {key} must be text, not {type(value).__name__}")
    return value[:most]


def _number(data: dict[str, Any], key: str, typ: type = float, low: float = 0.0, high: float = math.inf,
            default: Any = None) -> Any:
    """A finite number field within [low, high], or the default when absent or null; RunError otherwise."""
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high or (typ is int and not float(value).is_integer()):
        raise RunError(f"meta.json: {key}={str(value)[:40]!r} must be a {'whole ' if typ is int else ''}number "
                       f"from {low:g} to {high:g}")
    return typ(value)


@dataclass(frozen=True)
class DataInfo:
    """Where a run's images came from."""

    path: str = ""
    found_by: str = ""
    train_size: int = 0
    val_size: int = 0


@dataclass(frozen=True)
class RunMeta:
    """meta.json, typed and checked: how training ended, what it cost, what it was trained on, by whom."""

    status: str = "finished"
    message: str = ""
    saved_at: str = ""
    train_seconds: float = 0.0
    wall_seconds: float | None = None
    epochs_completed: int | None = None
    params: int | None = None
    flops: int | None = None
    label_names: tuple[str, ...] = CIFAR10_LABELS
    data: DataInfo = field(default_factory=DataInfo)
    seed: int | None = None
    val_accuracy: float | None = None
    strategy: str = "none"
    replicas: int = 1
    xla: bool = True
    versions: dict[str, str] = field(default_factory=dict)
    owner: str = ""  # the browser id that trained or imported the run; empty: the operator's (the command line)

    @classmethod
    def from_json(cls, data: Any) -> "RunMeta":
        """Check a parsed meta.json; RunError names the first field that is wrong."""
        if not isinstance(data, dict):
            raise RunError("meta.json has the wrong shape: it must be a JSON object")
        labels = data.get("label_names", list(CIFAR10_LABELS))
        if not (isinstance(labels, list) and len(labels) == NUM_CLASSES
                and all(isinstance(v, str) and CLASS_NAME.fullmatch(v) for v in labels)):
            raise RunError(f"meta.json: label_names must be {NUM_CLASSES} plain class names (letters, digits, "
                           "spaces, _ and -)")
        versions = data.get("versions", {})
        if not isinstance(versions, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in versions.items()) or len(versions) > 20:
            raise RunError("meta.json: versions must map library names to version text")
        found = data.get("data") or {}
        if not isinstance(found, dict):
            raise RunError("meta.json: data must be a JSON object")
        xla = data.get("xla", True)
        if not isinstance(xla, bool):
            raise RunError("meta.json: xla must be true or false")
        saved_at = _text(data, "saved_at", most=40)
        if saved_at and _parse_time(saved_at) is None:
            raise RunError(f"meta.json: saved_at={saved_at!r} is not a date and time")
        return cls(status=_text(data, "status", "finished", 20), message=_text(data, "message"), saved_at=saved_at,
                   train_seconds=_number(data, "train_seconds", default=0.0),
                   wall_seconds=_number(data, "wall_seconds"),
                   epochs_completed=_number(data, "epochs_completed", int, 0, 10_000),
                   params=_number(data, "params", int), flops=_number(data, "flops", int),
                   label_names=tuple(labels),
                   data=DataInfo(_text(found, "path", most=4096), _text(found, "found_by", most=100),
                                 _number(found, "train_size", int, default=0), _number(found, "val_size", int, default=0)),
                   seed=_number(data, "seed", int), val_accuracy=_number(data, "val_accuracy", high=1.0),
                   strategy=_text(data, "strategy", "none", 20), replicas=_number(data, "replicas", int, 1, 1e6, 1),
                   xla=xla, versions={k[:40]: v[:40] for k, v in versions.items()}, owner=_text(data, "owner", most=64))


HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "seconds", "elapsed")


def _history(data: Any) -> list[dict[str, Any]]:
    """Check a parsed history.json: one object per epoch with numeric figures; other keys are dropped."""
    if not isinstance(data, list) or len(data) > 1000 or not all(isinstance(e, dict) for e in data):
        raise RunError("history.json has the wrong shape: it must be a list of epochs")
    out = []
    for entry in data:
        epoch = _number(entry, "epoch", int, 1, 1000)
        if epoch is None:
            raise RunError("history.json: every entry needs its epoch number")
        record: dict[str, Any] = {"epoch": epoch}
        for key in HISTORY_KEYS:
            value = entry.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise RunError(f"history.json: {key} of epoch {epoch} must be a number")
                record[key] = float(value)
        if entry.get("partial") is True:
            record["partial"] = True
        out.append(record)
    return out


def _parse_time(text: str) -> datetime | None:
    """A saved_at time (ISO 8601 as save_run writes it), or None."""
    for form in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            moment = datetime.strptime(text, form)
            return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


@dataclass
class RunInfo:
    """What a run directory says about itself, read and checked without loading the model."""

    path: Path
    model_config: ModelConfig
    train_config: TrainConfig
    history: list[dict[str, Any]]
    meta: RunMeta

    @property
    def name(self) -> str:
        """The directory name."""
        return self.path.name

    @property
    def model_path(self) -> Path:
        """The model file."""
        return self.path / "model.keras"

    @property
    def version(self) -> float:
        """The model file's modification time: a new value whenever the model is replaced (for caches)."""
        return self.model_path.stat().st_mtime

    @property
    def saved(self) -> float:
        """When the run was saved (seconds since the epoch): saved_at, never later than the model file itself."""
        moment = _parse_time(self.meta.saved_at)
        stamp = self.version
        return min(moment.timestamp(), stamp) if moment else stamp

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
        return self.meta.val_accuracy

    @property
    def epochs_completed(self) -> int:
        """Complete epochs trained."""
        return self.meta.epochs_completed if self.meta.epochs_completed is not None else len(self.history)

    @property
    def model_bytes(self) -> int:
        """Size of model.keras on disk."""
        return self.model_path.stat().st_size

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


REFERENCE_DIR = Path(__file__).resolve().parent.parent / "assets" / "reference-run"  # see docs/command-line.md to retrain it


def reference_run() -> RunInfo | None:
    """The small run shipped with the app, the active model until a visitor trains or picks another; None if absent
    or unreadable (a checkout without it still works)."""
    try:
        return _read_cached(REFERENCE_DIR)  # every Classify rerun asks: parsed again only when its files change
    except (RunError, OSError):
        return None


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
    if not name or len(name) > 255 or name != Path(name).name or name.startswith(".") or "\x00" in name:
        return None
    path = Path(root) / name
    try:
        return path if (path / "model.keras").is_file() else None
    except OSError:  # a name the file system refuses
        return None


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
             history: list[dict[str, Any]], meta: RunMeta, extra: dict[str, Any] | None = None,
             optimizer_state: bool = True, logs: Path | None = None) -> Path:
    """Write a run directory atomically (with `extra` JSON files beside it); refuses to overwrite a non-empty one.

    Without `optimizer_state`, model.keras holds the network and its weights only (a third of the size with Adam):
    what a shipped model needs, since a run is never trained further. `logs` is the folder the training wrote its
    history.csv and TensorBoard files into (deconv.training_logs): they are copied into the run.
    """
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
        if logs is not None:
            shutil.copytree(logs, tmp, dirs_exist_ok=True)
        if not optimizer_state:
            from deconv.model import build_model

            bare = build_model(model_config)
            bare.set_weights(model.get_weights())
            model = bare
        model.save(tmp / "model.keras")
        _write_json(tmp / "config.json", {"model": model_config.to_dict(), "train": train_config.to_dict()})
        _write_json(tmp / "history.json", history)
        _write_json(tmp / "meta.json", dataclasses.asdict(dataclasses.replace(
            meta, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), versions=library_versions())))
        for file, content in (extra or {}).items():
            _write_json(tmp / file, content)
        tmp.rename(run_dir)  # one step: replaces the empty folder that reserved the name, never a saved run
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another server sharing the folder saved there meanwhile
            raise RunError(f"{run_dir} already exists and is not empty: choose another --out") from None
        raise RunError(f"could not save the run to {run_dir}: {e.strerror or e}") from None
    return run_dir


def is_log_file(parts: tuple[str, ...]) -> bool:
    """Whether a path inside a run folder, as its parts, names one of the run's logs: history.csv or a TensorBoard
    event file in tensorboard/train or tensorboard/validation."""
    return parts == (HISTORY_CSV,) or (len(parts) == 3 and parts[0] == TENSORBOARD_DIR
                                       and parts[1] in TENSORBOARD_RUNS and bool(EVENT_FILE.fullmatch(parts[2])))


def log_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The run's log files (see `is_log_file`), history.csv first: plain files, reached through no link."""
    path = Path(run_dir)
    found = [path / HISTORY_CSV] + sorted((path / TENSORBOARD_DIR).glob("*/events.out.tfevents.*"))
    return [p for p in found if is_log_file(p.relative_to(path).parts) and p.is_file()
            and not any(step.is_symlink() for step in (p, *p.parents[:len(p.relative_to(path).parts) - 1]))]


def tensorboard_command(root: str | os.PathLike[str]) -> str:
    """The shell command that opens every run under the runs folder `root` in TensorBoard."""
    return f"tensorboard --logdir {shlex.quote(str(Path(root).resolve()))}"


def export_zip(run_dir: str | os.PathLike[str]) -> bytes:
    """A .zip of the run folder as the Runs page's import takes it: its files and logs under a folder of its name."""
    path = Path(run_dir)
    files = [path / f for f in (*FILES, *OPTIONAL_FILES) if (path / f).is_file()] + log_files(path)
    out = io.BytesIO()
    try:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in files:
                name = f"{path.name}/{file.relative_to(path).as_posix()}"
                if file.name == "meta.json":  # who owns it stays on this server: an import is its importer's
                    meta = _read_json(file)
                    if isinstance(meta, dict):
                        meta.pop("owner", None)
                    archive.writestr(name, json.dumps(meta, indent=2), zipfile.ZIP_DEFLATED)
                    continue
                stored = file.suffix == ".keras"  # a zip already: deflating it again gains little and takes long
                archive.write(file, name, zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    except OSError as e:
        raise RunError(f"cannot read the run {path.name}: {e.strerror or e}") from None
    return out.getvalue()


def _read_json(path: Path) -> Any:
    """Parse a run's JSON file (at most MAX_JSON_BYTES), or RunError naming it."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise RunError(f"{path.parent.name}: {path.name} is larger than {MAX_JSON_BYTES // 1024} kB")
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path.parent.name}: {path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RunError(f"{path.parent.name}: {path.name} is not valid JSON ({str(e)[:200]})") from None


def weights_limit(model_config: ModelConfig) -> int:
    """The most bytes the weights file of this network may take: its weights, Adam's two moments, and room."""
    return 3 * describe(model_config).param_bytes + (1 << 20)


def model_file_problem(path: Path, model_config: ModelConfig) -> str | None:
    """What is wrong with a model.keras as a zip of what Keras writes (sizes within bounds), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        return f"model.keras is not a readable Keras file ({str(e)[:200]})"
    caps = {**MODEL_MEMBERS, WEIGHTS_MEMBER: weights_limit(model_config)}
    unexpected = sorted(set(members) - set(caps))
    if unexpected:
        return f"model.keras holds files Keras does not write: {', '.join(n[:60] for n in unexpected[:3])}"
    if WEIGHTS_MEMBER not in members or "config.json" not in members:
        return "model.keras has no weights"
    for name, info in members.items():
        if info.file_size > caps[name] or info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED,
                                                                                            zipfile.ZIP_DEFLATED):
            return f"model.keras: {name} is too large for this network, encrypted or compressed in an unknown way"
    return None


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
        raise RunError(f"{path.name}: config.json is invalid ({str(e)[:300]})") from None
    try:
        history = _history(_read_json(path / "history.json"))
        meta = RunMeta.from_json(_read_json(path / "meta.json"))
    except RunError as e:
        raise RunError(str(e) if str(e).startswith(path.name) else f"{path.name}: {e}") from None
    problem = model_file_problem(path / "model.keras", model_config)
    if problem:
        raise RunError(f"{path.name}: {problem}")
    return RunInfo(path, model_config, train_config, history, meta)


def load_model(run_dir: str | os.PathLike[str]) -> Any:
    """The run's network, rebuilt from its config.json, with the weights of its model.keras (no other part read)."""
    from deconv.model import build_model

    info = read_run(run_dir)
    model = build_model(info.model_config)
    try:
        model.load_weights(info.model_path)
    except (ValueError, OSError, TypeError, KeyError, AttributeError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RunError(f"{info.name}: model.keras cannot be loaded: its weights do not fit the network its "
                       f"config.json describes ({first[:300]})") from None
    return model


_listed: dict[Path, tuple[Any, RunInfo | RunError]] = {}  # shared by every session on purpose: a cache by file times
_listed_lock = threading.Lock()


def _stamp(path: Path) -> tuple[tuple[int, int], ...]:
    """Modification times and sizes of a run's files: a new value whenever one of them changes."""
    stamps = []
    for file in (*FILES, *OPTIONAL_FILES):
        try:
            st = (path / file).stat()
            stamps.append((st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stamps.append((0, -1))
    return tuple(stamps)


def _read_cached(path: Path) -> RunInfo:
    """read_run, parsed again only when one of the run's files changed."""
    stamp = _stamp(path)
    with _listed_lock:
        hit = _listed.get(path)
    if hit is None or hit[0] != stamp:
        try:
            result: RunInfo | RunError = read_run(path)
        except RunError as e:
            result = e
        with _listed_lock:
            _listed[path] = (stamp, result)
            for gone in [p for p in _listed if not p.exists()]:
                del _listed[gone]
        hit = (stamp, result)
    if isinstance(hit[1], RunError):
        raise hit[1]
    return hit[1]


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
            good.append(_read_cached(path))
        except RunError as e:
            bad.append((path, str(e)))
        except OSError as e:
            bad.append((path, f"cannot be read: {e.strerror or e}"))
    good.sort(key=lambda r: r.saved, reverse=True)
    return good, bad


def delete_run(run_dir: str | os.PathLike[str]) -> None:
    """Remove a run directory (only one that looks like a run)."""
    path = Path(run_dir)
    if not (path / "config.json").exists() and not (path / "model.keras").exists():
        raise RunError(f"{path} does not look like a run directory; not deleted")
    shutil.rmtree(path)


def may_delete(info: RunInfo, visitor: str) -> bool:
    """Whether a visitor may delete a run: their own, or any when the operator allows it (DECONV_ALLOW_DELETE_ALL=1)."""
    return os.environ.get("DECONV_ALLOW_DELETE_ALL") == "1" or (bool(info.meta.owner) and info.meta.owner == visitor)


# ---- the runs folder's size


def _size_from_env(name: str) -> int | None:
    """The bytes an environment variable gives (a number, or with a K, M or G suffix); None if unset or no size."""
    text = os.environ.get(name, "").strip().upper()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)I?B?", text)
    if not match:
        return None
    return int(float(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)])


def quota_bytes() -> int:
    """DECONV_RUNS_QUOTA (bytes, or with a K, M or G suffix), or DEFAULT_QUOTA."""
    size = _size_from_env(QUOTA_ENV)
    return DEFAULT_QUOTA if size is None else size


def owner_quota_bytes() -> int:
    """The share of the runs folder one owner's runs may hold: DECONV_OWNER_QUOTA (bytes, or with a K, M or G suffix),
    or a quarter of DECONV_RUNS_QUOTA; never more than half of it, so that no one visitor can fill the folder.

    The operator's runs (no owner: trained on the command line) count towards the folder's quota only.
    """
    size, most = _size_from_env(OWNER_QUOTA_ENV), quota_bytes() // MOST_OWNER_SHARE
    return min(quota_bytes() // DEFAULT_OWNER_SHARES if size is None else size, most)


def folder_bytes(root: str | os.PathLike[str]) -> int:
    """Bytes of every file under the runs folder (hidden work folders included)."""
    total = 0
    for folder, _, files in os.walk(root):
        for file in files:
            try:
                total += os.lstat(os.path.join(folder, file)).st_size
            except OSError:
                continue
    return total


def owner_bytes(root: str | os.PathLike[str], owner: str) -> int:
    """Bytes of the runs under root whose meta.json names `owner` (runs that cannot be read count for nobody)."""
    total = 0
    try:
        folders = [p for p in Path(root).iterdir() if not p.name.startswith(".") and p.is_dir() and not p.is_symlink()]
    except OSError:
        return 0
    for folder in folders:
        try:
            meta = _read_json(folder / "meta.json")
        except RunError:  # missing (a training's reserved folder), too large or not JSON
            continue
        if isinstance(meta, dict) and meta.get("owner") == owner:
            total += folder_bytes(folder)
    return total


def room_problem(root: str | os.PathLike[str], needed: int, *, owner: str = "") -> str | None:
    """Why the runs folder cannot take `needed` more bytes, or None: its quota (DECONV_RUNS_QUOTA), and for a visitor
    (`owner` not empty) their share of it (`owner_quota_bytes`); the message says which limit and what to do."""
    used, quota = folder_bytes(root), quota_bytes()
    if used + needed > quota:
        return (f"the runs folder is full: {used / 2**20:,.0f} MiB used of its {quota / 2**20:,.0f} MiB, and this "
                f"needs about {needed / 2**20:,.0f} MiB more; delete runs you no longer need on the Runs page")
    if not owner:
        return None
    share = owner_quota_bytes()
    if needed > share:
        return (f"this needs about {needed / 2**20:,.0f} MiB, more than the {share / 2**20:,.0f} MiB share of the runs "
                "folder each visitor has; choose a smaller network")
    mine = owner_bytes(root, owner)
    if mine + needed > share:
        return (f"your runs hold {mine / 2**20:,.0f} MiB of your {share / 2**20:,.0f} MiB share of the runs folder, "
                f"and this needs about {needed / 2**20:,.0f} MiB more; delete one on the Runs page")
    return None


def run_bytes(model_config: ModelConfig) -> int:
    """About how many bytes a saved run of this network takes (weights and optimizer state dominate)."""
    return weights_limit(model_config)


def sweep_leftovers(root: str | os.PathLike[str], older_than: float = LEFTOVER_SECONDS) -> list[Path]:
    """Remove hidden temporary folders of saves and imports that crashed (older than `older_than` seconds)."""
    swept = []
    try:
        candidates = [p for p in Path(root).iterdir() if p.name.startswith(".") and p.name != ".jobs" and p.is_dir()]
    except OSError:
        return swept
    for path in candidates:
        try:
            if time.time() - path.stat().st_mtime > older_than:
                shutil.rmtree(path, ignore_errors=True)
                swept.append(path)
        except OSError:
            continue
    return swept


# ---- importing a run from a visitor


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula (OWASP)


def _csv_cell(value: Any) -> Any:
    """A value for a CSV cell: text that a spreadsheet would run as a formula gets a leading ' (numbers stay)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_START) else value


def runs_csv(infos: list[RunInfo]) -> str:
    """A table of runs as CSV text: what each trained, how, on what, and how well (run files' text never a formula)."""
    out = io.StringIO()
    writer = csv.writer(out)
    model_keys = [f.name for f in dataclasses.fields(ModelConfig)]
    train_keys = [f.name for f in dataclasses.fields(TrainConfig)]
    writer.writerow(["run", "status", "val_accuracy", "best_val_accuracy", "epochs_completed", "train_seconds",
                     "params", *model_keys, *train_keys, "data", "saved_at"])
    for r in infos:
        model, train = r.model_config.to_dict(), r.train_config.to_dict()
        writer.writerow(map(_csv_cell, [r.name, r.meta.status, r.val_accuracy, r.best_val_accuracy,
                                        r.epochs_completed, r.meta.train_seconds, r.meta.params,
                                        *("-".join(map(str, v)) if isinstance(v, list) else v for v in model.values()),
                                        *train.values(), r.meta.data.found_by, r.meta.saved_at]))
    return out.getvalue()
