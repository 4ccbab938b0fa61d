"""Finding, downloading and reading CIFAR-10, and stratified subsets."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from deconv import data
from deconv.config import TrainConfig
from deconv.samples import LABELS, write_cifar


def test_reads_the_official_layout(cifar_dir: Path) -> None:
    source = data.find_data()
    assert source is not None and source.path == cifar_dir and source.how == "DECONV_DATA_DIR"
    assert data.label_names(source) == LABELS
    x, y = data.read_train(source)
    assert x.shape == (300, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.uint8
    assert np.bincount(y).tolist() == [30] * 10


def test_parent_folder_is_accepted_too(cifar_dir: Path) -> None:
    assert data.find_data(cifar_dir.parent).path == cifar_dir


@pytest.mark.parametrize("n", [100, 101, 109, 250])
def test_stratified_subset_is_balanced_and_deterministic(cifar_dir: Path, n: int) -> None:
    _, y = data.read_train(data.find_data())
    idx = data.stratified_indices(y, n, seed=3)
    counts = np.bincount(y[idx], minlength=10)
    assert len(set(idx.tolist())) == n and counts.max() - counts.min() <= 1
    assert (idx == data.stratified_indices(y, n, seed=3)).all()
    assert not (idx == data.stratified_indices(y, n, seed=4)).all()


def test_too_large_a_subset_names_the_field_and_the_limit(cifar_dir: Path) -> None:
    with pytest.raises(data.DataError, match="train_size=400 needs 40 images of every class.*up to 300"):
        data.load_dataset(TrainConfig(train_size=400, val_size=100))


def test_load_dataset_keeps_uint8_and_validates_on_test_batch(cifar_dir: Path) -> None:
    ds = data.load_dataset(TrainConfig(train_size=200, val_size=100, seed=1))
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape == (200, 32, 32, 3)
    assert ds.x_val.shape == (100, 32, 32, 3)
    xt, _ = data.read_test(ds.source)
    train_rows = {r.tobytes() for r in ds.x_train}
    assert all(r.tobytes() in {t.tobytes() for t in xt} for r in ds.x_val)  # validation comes from test_batch
    assert not any(r.tobytes() in train_rows for r in ds.x_val)


def test_a_test_only_folder_is_valid_for_evaluation(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path, train=False)
    source = data.find_data(folder)
    assert not source.has_train and data.read_test(source)[0].shape == (100, 32, 32, 3)
    with pytest.raises(data.DataError, match="can evaluate a model but not train"):
        data.read_train(source)


class Evil:
    def __reduce__(self):  # noqa: D105
        return (os.system, ("echo pwned > /tmp/deconv-pwned",))


def test_a_pickle_that_loads_another_global_is_refused(cifar_dir: Path) -> None:
    (cifar_dir / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    with pytest.raises(data.DataError, match="data_batch_1 is not a CIFAR-10 batch file.*Refusing"):
        data.read_train(data.find_data())
    assert not Path("/tmp/deconv-pwned").exists()


@pytest.mark.parametrize("content", [b"", b"hello, not a pickle", pickle.dumps({b"data": [1, 2]}, protocol=4),
                                     pickle.dumps([1, 2, 3], protocol=4)])
def test_a_batch_that_is_not_cifar_gets_a_clear_error(cifar_dir: Path, content: bytes) -> None:
    (cifar_dir / "test_batch").write_bytes(content)
    with pytest.raises(data.DataError, match="test_batch is not a CIFAR-10 batch file"):
        data.read_test(data.find_data())


def test_search_order_explicit_then_env_then_keras_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write_cifar(tmp_path / "a")
    env = write_cifar(tmp_path / "b")
    cache = write_cifar(tmp_path / "keras" / "datasets" / data.KERAS_CACHE_NAME)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(env))
    assert data.find_data(explicit).path == explicit
    assert data.find_data().path == env
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert data.find_data() == data.DataSource(cache, "Keras cache")
    with pytest.raises(data.DataError, match="does not hold CIFAR-10"):
        data.find_data(tmp_path / "nothing")


def test_offline_with_nothing_local_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)

    def offline(*args: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(data.urllib.request, "urlretrieve", offline)
    with pytest.raises(data.DataError) as err:
        data.get_data()
    assert "could not be downloaded" in str(err.value) and "DECONV_DATA_DIR" in str(err.value)
    assert str(err.value).endswith("folder") and "--data-dir" not in str(err.value)  # the app shows it as a sentence
    assert not list((tmp_path / "keras" / "datasets").glob("*archive*"))  # no half file left behind


def test_download_goes_through_keras_get_file_with_hash_and_progress(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_cifar(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(buf.getvalue())
    monkeypatch.setattr(data, "ORIGIN", archive.as_uri())
    monkeypatch.setattr(data, "FILE_HASH", hashlib.sha256(buf.getvalue()).hexdigest())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    seen: list[tuple[int, int]] = []
    source = data.get_data(progress=lambda done, total: seen.append((done, total)))
    assert source.how == "downloaded" and data.label_names(source) == LABELS
    assert seen and seen[-1][0] == seen[-1][1] == len(buf.getvalue())
    assert data.find_data() == data.DataSource(source.path, "Keras cache")  # cached for next time


def test_a_damaged_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tarball")
    monkeypatch.setattr(data, "ORIGIN", bad.as_uri())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    with pytest.raises(data.DataError, match="damaged"):
        data.get_data()


def test_two_downloads_at_once_download_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    folder = write_cifar(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    monkeypatch.setattr(data, "ORIGIN", (tmp_path / "cifar-10-python.tar.gz").as_uri())
    monkeypatch.setattr(data, "FILE_HASH", hashlib.sha256(buf.getvalue()).hexdigest())
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    fetched, results = [], []
    real = data.urllib.request.urlretrieve

    def slow(*args: object) -> object:
        fetched.append(1)
        time.sleep(0.5)  # long enough for the other download to start meanwhile
        return real(*args)

    monkeypatch.setattr(data.urllib.request, "urlretrieve", slow)
    threads = [threading.Thread(target=lambda: results.append(data.download())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(fetched) == 1 and len(results) == 2 and results[0].path == results[1].path
    assert data.label_names(results[0]) == LABELS


def test_a_runs_recorded_data_folder_is_read_only_when_it_is_this_servers_own(cifar_dir: Path, tmp_path: Path) -> None:
    from deconv.samples import write_cifar

    elsewhere = write_cifar(tmp_path / "elsewhere")  # real CIFAR files, but not the folder this server reads
    assert data.own_folder(str(cifar_dir)) == str(data.find_data().path)
    assert data.own_folder(str(cifar_dir.parent / "." / cifar_dir.name)) == str(data.find_data().path)
    for recorded in (str(elsewhere), "/etc", "", "/no/such/folder", "a\0b"):
        assert data.own_folder(recorded) is None
