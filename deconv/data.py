"""Find, download and read CIFAR-10 in its official python layout, and draw stratified subsets.

Batch files are read through Keras' CIFAR helper and its restricted unpickler, never a plain
pickle.load. Keras is imported only when a file is read or downloaded, so finding the data
(for the Home page) stays fast.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from deconv.config import IMAGE_SIZE, NUM_CLASSES, TrainConfig

BATCHES_DIR = "cifar-10-batches-py"
# The same file, cache name and hash as keras.datasets.cifar10.load_data.
ORIGIN = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
KERAS_CACHE_NAME = "cifar-10-batches-py-target"
ARCHIVE_MB = 163  # the size of the download, for people
FILE_HASH = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
DATA_DIR_ENV = "DECONV_DATA_DIR"

DownloadProgress = Callable[[int, int], None]  # (bytes done, bytes in all or -1)
PROGRESS_SECONDS = 0.25  # download progress is reported at most this often, and once at the end


class DataError(Exception):
    """The dataset is missing, unreadable or too small for what was asked; the message says what to do."""


@dataclass(frozen=True)
class DataSource:
    """Where the CIFAR-10 files are, and how they were found."""

    path: Path  # the cifar-10-batches-py folder
    how: str  # "directory", "DECONV_DATA_DIR", "Keras cache" or "downloaded"

    @property
    def train_files(self) -> list[Path]:
        """The data_batch_* files, in order."""
        return sorted(self.path.glob("data_batch_*"))

    @property
    def has_train(self) -> bool:
        """Whether this folder holds training batches (a test-only folder is valid for evaluation)."""
        return bool(self.train_files)

    def describe(self) -> str:
        """One line for people: where the data is and how it was found."""
        return f"{self.path} ({self.how})"


@dataclass
class Dataset:
    """A training subset and validation images, uint8 NHWC, with the label names."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    label_names: list[str]
    source: DataSource


def _batches_dir(path: Path) -> Path:
    """The cifar-10-batches-py folder given it or the folder above it."""
    return path / BATCHES_DIR if (path / BATCHES_DIR).is_dir() else path


def _is_cifar_dir(path: Path) -> bool:
    """Whether `path` holds at least test_batch and batches.meta."""
    return (path / "test_batch").is_file() and (path / "batches.meta").is_file()


def keras_cache_dirs() -> list[Path]:
    """Where keras.datasets.cifar10 keeps (or kept, in older Keras) the extracted files."""
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"
    return [base / KERAS_CACHE_NAME / BATCHES_DIR, base / BATCHES_DIR,
            Path("/tmp/.keras/datasets") / KERAS_CACHE_NAME / BATCHES_DIR]


def find_data(data_dir: str | os.PathLike[str] | None = None) -> DataSource | None:
    """The local CIFAR-10 folder: explicit dir, then DECONV_DATA_DIR, then the Keras cache; None if none."""
    if data_dir is not None:
        path = _batches_dir(Path(data_dir).expanduser())
        if not _is_cifar_dir(path):
            raise DataError(f"{data_dir} does not hold CIFAR-10 in the official python layout "
                            f"(a {BATCHES_DIR} folder with test_batch, batches.meta and data_batch_* files)")
        return DataSource(path, "directory")
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = _batches_dir(Path(env).expanduser())
        if not _is_cifar_dir(path):
            raise DataError(f"{DATA_DIR_ENV}={env} does not hold CIFAR-10 in the official python layout "
                            f"(test_batch, batches.meta and data_batch_* files); fix it or unset it")
        return DataSource(path, DATA_DIR_ENV)
    for path in keras_cache_dirs():
        if _is_cifar_dir(path):
            return DataSource(path, "Keras cache")
    return None


def own_folder(recorded: str) -> str | None:
    """A run's recorded data folder if it is this server's own (`find_data`), else None.

    A run's meta.json may come from a visitor: the folder it names is never read unless the server reads it anyway.
    """
    try:
        source = find_data()
    except DataError:
        return None
    if source is None or not recorded:
        return None
    try:
        return str(source.path) if Path(recorded).resolve() == source.path.resolve() else None
    except (OSError, RuntimeError, ValueError):  # a path that cannot be resolved (a loop, a NUL byte)
        return None


def download(progress: DownloadProgress | None = None) -> DataSource:
    """Download and extract CIFAR-10 into the Keras cache as keras.datasets.cifar10 does (hash-checked)."""
    cache = keras_cache_dirs()[0].parent.parent
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{KERAS_CACHE_NAME}.lock", "w") as lock:  # one download at a time, across processes
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _download(cache, progress)


def _download(cache: Path, progress: DownloadProgress | None) -> DataSource:
    """The body of download(), run under its lock."""
    import keras

    archive = cache / f"{KERAS_CACHE_NAME}_archive"  # the name keras.utils.get_file uses
    if not archive.exists():
        partial = archive.with_suffix(".part")
        last = [0.0]

        def hook(blocks: int, size: int, total: int) -> None:
            done = min(blocks * size, total) if total > 0 else blocks * size
            if progress and (done == total or time.monotonic() - last[0] >= PROGRESS_SECONDS):
                last[0] = time.monotonic()
                progress(done, total)

        try:
            urllib.request.urlretrieve(ORIGIN, partial, hook)
        except (urllib.error.URLError, OSError) as e:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"CIFAR-10 is not on this machine and could not be downloaded from {ORIGIN} ({e}). "
                f"Download and extract cifar-10-python.tar.gz, then set {DATA_DIR_ENV} to its "
                f"{BATCHES_DIR} folder") from None
        partial.rename(archive)
    try:  # finds the archive in place, checks its hash, extracts it
        path = keras.utils.get_file(KERAS_CACHE_NAME, ORIGIN, extract=True, file_hash=FILE_HASH,
                                    cache_dir=str(cache.parent), cache_subdir=cache.name)
    except (ValueError, OSError, tarfile.TarError) as e:  # a hash mismatch or a broken archive
        raise DataError(f"the CIFAR-10 download in {cache} is damaged ({e}); delete {archive} and try again") from None
    return DataSource(_batches_dir(Path(path)), "downloaded")


def get_data(data_dir: str | os.PathLike[str] | None = None, progress: DownloadProgress | None = None) -> DataSource:
    """The local CIFAR-10 folder, downloading it into the Keras cache when there is none."""
    return find_data(data_dir) or download(progress)


def _unpickle(path: Path) -> dict[str, object]:
    """A CIFAR pickle through Keras' restricted unpickler: only plain data, never another global."""
    from keras.src.datasets.npz_utils import RestrictedUnpickler

    try:
        with open(path, "rb") as f:
            raw = RestrictedUnpickler(f, encoding="bytes").load()
        return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in raw.items()}
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a CIFAR-10 batch file: {e}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def label_names(source: DataSource) -> list[str]:
    """The ten class names from batches.meta."""
    meta = _unpickle(source.path / "batches.meta")
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        raise DataError(f"{source.path / 'batches.meta'} has no list of {NUM_CLASSES} label_names")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) uint8 of one batch file."""
    d = _unpickle(path)
    try:
        data = np.asarray(d["data"])
        labels = np.asarray(d["labels"], dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * IMAGE_SIZE**2 or len(labels) != len(data):
            raise ValueError(f"data is {data.dtype} {data.shape}, labels {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"labels outside 0..{NUM_CLASSES - 1}")
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(f"{path} is not a CIFAR-10 batch file: {e}") from None
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.uint8)


def read_train(source: DataSource) -> tuple[np.ndarray, np.ndarray]:
    """All training images and labels of the folder."""
    if not source.has_train:
        raise DataError(f"{source.path} holds no data_batch_* files: it can evaluate a model but not train one")
    parts = [read_batch(p) for p in source.train_files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_test(source: DataSource) -> tuple[np.ndarray, np.ndarray]:
    """The test_batch images and labels."""
    return read_batch(source.path / "test_batch")


def stratified_indices(labels: np.ndarray, n: int, seed: int, what: str = "train_size") -> np.ndarray:
    """Indices of n images, equal counts per class (differing by at most one), fixed by the seed."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    per_class = np.full(NUM_CLASSES, n // NUM_CLASSES)
    per_class[rng.permutation(NUM_CLASSES)[: n % NUM_CLASSES]] += 1
    if (per_class > counts).any():
        most = NUM_CLASSES * int(counts.min())
        raise DataError(f"{what}={n} needs {per_class.max()} images of every class, but the data has only "
                        f"{counts.min()} of one class: allowed up to {most} here")
    picks = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in enumerate(per_class)]
    return rng.permutation(np.concatenate(picks))


def validation_subset(config: TrainConfig, source: DataSource) -> tuple[np.ndarray, np.ndarray]:
    """The validation images and labels a TrainConfig uses: a stratified draw from test_batch."""
    xt, yt = read_test(source)
    val = stratified_indices(yt, config.val_size, config.seed + 1, "val_size")
    return xt[val], yt[val]


def count_train_images(source: DataSource) -> int:
    """How many training images the folder holds, for limits shown before training."""
    return sum(len(read_batch(p)[1]) for p in source.train_files)


def load_dataset(config: TrainConfig, data_dir: str | os.PathLike[str] | None = None,
                 progress: DownloadProgress | None = None) -> Dataset:
    """The stratified training subset and validation images (from test_batch) for a TrainConfig."""
    source = get_data(data_dir, progress)
    names = label_names(source)
    x, y = read_train(source)
    train = stratified_indices(y, config.train_size, config.seed, "train_size")
    x_val, y_val = validation_subset(config, source)
    return Dataset(x[train], y[train], x_val, y_val, names, source)
