"""Trainings on a real Ray cluster: `ray start --head` on loopback, the app's JobManager connected by address."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from deconv import runs
from deconv.config import CIFAR10_LABELS, ModelConfig, TrainConfig
from deconv.jobs import JobManager, backend_address
from deconv.samples import write_cifar

os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # as deconv.ray_jobs sets it: Ray is imported here first
MISSING = "Ray is not installed: pip install -r requirements-ray.txt to run these tests"
if os.environ.get("DECONV_REQUIRE_RAY") and importlib.util.find_spec("ray") is None:  # CI installs it: never skip
    raise RuntimeError(MISSING)
ray = pytest.importorskip("ray", reason=MISSING)
from deconv.ray_jobs import LocalCluster  # noqa: E402  (needs ray)

ROOT = Path(__file__).resolve().parent.parent
SMALL_MODEL = ModelConfig(widths=(8,))
SMALL_TRAIN = TrainConfig(train_size=200, val_size=100, epochs=2, batch_size=20)
LONG_TRAIN = SMALL_TRAIN.replace(epochs=200)  # stopped by the test, never run to its end
CLUSTER_CPUS = 2  # one CPU per training: two trainings at once, a third waits in Ray's queue


def wait_for(condition, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A one-node Ray cluster on loopback for the module's tests, with synthetic CIFAR-10 as its nodes' data."""
    data = write_cifar(tmp_path_factory.mktemp("ray-data"))
    with LocalCluster(CLUSTER_CPUS, {"DECONV_DATA_DIR": str(data), "TF_CPP_MIN_LOG_LEVEL": "2"}) as started:
        yield started


@pytest.fixture
def manager(tmp_path: Path, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobManager]:
    monkeypatch.setenv("DECONV_RAY_CPUS", "1")
    alive: dict[str, bool] = {}
    m = JobManager(tmp_path / "runs" / ".jobs", max_jobs=1, is_alive=lambda owner: alive.get(owner, True),
                   poll_seconds=0.1, backend=cluster.address)
    m.alive = alive  # the test closes owners' tabs
    assert m.cluster is not None, m.notice
    yield m
    m.shutdown()


def submit(manager: JobManager, owner: str, train: TrainConfig):
    """Queue a training as the app does: its run folder reserved under the runs folder first."""
    return manager.submit(owner, SMALL_MODEL, train, runs.new_run_dir(manager.jobs_dir.parent, SMALL_MODEL))


def test_two_owners_trainings_run_on_the_cluster_and_come_back_as_checked_runs(manager: JobManager) -> None:
    assert manager.max_jobs == CLUSTER_CPUS and manager.workers == []  # the cluster's slots; no local worker
    a, b = submit(manager, "a", SMALL_TRAIN), submit(manager, "b", SMALL_TRAIN)
    wait_for(lambda: not a.active and not b.active)
    assert (a.state, b.state) == ("finished", "finished"), (a.message, b.message)
    assert a.run_dir != b.run_dir
    for job, owner in ((a, "a"), (b, "b")):
        info = runs.read_run(job.run_dir)  # in the app's runs folder, as import_run checked and wrote it
        assert job.run_dir.parent == manager.jobs_dir.parent and info.meta.owner == owner and len(info.history) == 2
        assert len(job.epochs()) == 2 and job.newest("batch") and job.fraction_done() == 1.0  # events reached the page
        assert job.newest("end")["run_dir"] == str(job.run_dir) and job.remote.pid not in (0, os.getpid())
    assert [r.name for r in runs.list_runs(manager.jobs_dir.parent)[0]] != [] and runs.list_runs(
        manager.jobs_dir.parent)[1] == []


def test_stop_and_a_closed_tab_end_cluster_trainings_with_their_models_and_a_third_waits(
        manager: JobManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deconv.jobs.OWNER_GRACE_SECONDS", 0.5)
    a, b = submit(manager, "a", LONG_TRAIN), submit(manager, "b", LONG_TRAIN)
    wait_for(lambda: a.newest("batch") is not None and b.newest("batch") is not None)
    c = submit(manager, "c", SMALL_TRAIN)  # both CPUs are taken: Ray cannot place it yet
    time.sleep(1.0)
    assert c.state == "queued" and manager.queue_position(c) == 1 and manager.estimated_start(c) > 0
    manager.stop(a)  # Stop
    manager.alive["b"] = False  # b's last tab is closed
    wait_for(lambda: not a.active and not b.active, timeout=120)
    for job in (a, b):
        assert job.state == "stopped", job.message
        assert runs.read_run(job.run_dir).meta.status == "stopped" and (job.run_dir / "model.keras").is_file()
    wait_for(lambda: not c.active)
    assert c.state == "finished", c.message


def test_a_killed_worker_fails_only_its_own_job_with_a_clear_message(manager: JobManager) -> None:
    a, b = submit(manager, "a", LONG_TRAIN), submit(manager, "b", LONG_TRAIN)
    wait_for(lambda: a.newest("batch") is not None and b.newest("batch") is not None)
    os.kill(a.remote.pid, signal.SIGKILL)  # the actor's process, as a node's out-of-memory killer would
    wait_for(lambda: not a.active, timeout=60)
    assert a.state == "error" and "Ray worker training this job" in a.message and "died" in a.message
    assert "nothing was saved" in a.message and not a.run_dir.exists()
    seen = len(b.events())
    assert b.state == "running"
    wait_for(lambda: len(b.events()) > seen + 2, timeout=60)  # b trains on
    manager.stop(b)
    wait_for(lambda: not b.active, timeout=120)
    assert b.state == "stopped" and (b.run_dir / "model.keras").is_file()


def test_auto_finds_the_cluster_through_ray_address(cluster: LocalCluster, tmp_path: Path) -> None:
    code = ("from deconv.jobs import JobManager; "
            f"m = JobManager({str(tmp_path / '.jobs')!r}, warm=False); "
            "print(m.cluster is not None, m.max_jobs, m.notice); m.shutdown()")
    env = {**os.environ, "DECONV_JOBS": "auto", "RAY_ADDRESS": cluster.gcs, "DECONV_RAY_CPUS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # a server of its own: one Ray connection per process
    assert done.stdout.split() == ["True", str(CLUSTER_CPUS)], done.stdout + done.stderr[-2000:]


def test_an_unreachable_cluster_sends_trainings_to_this_server_and_says_so(tmp_path: Path, cifar_dir: Path) -> None:
    address = f"ray://127.0.0.1:{free_port()}"
    started = time.time()
    manager = JobManager(tmp_path / "runs" / ".jobs", max_jobs=1, warm=False, poll_seconds=0.1, backend=address)
    try:
        assert time.time() - started < 20  # not Ray's own 30 s of retries
        assert manager.cluster is None and f"the Ray cluster at {address} cannot be reached" in manager.notice
        job = manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r1")
        wait_for(lambda: not job.active)
        assert job.state == "finished" and f"trained on this server because the Ray cluster at {address}" in job.message
        statuses = [e["message"] for e in job.events() if e["event"] == "status"]
        assert statuses[0].endswith("training on this server instead")
        assert runs.read_run(job.run_dir).meta.owner == "a"
    finally:
        manager.shutdown()


def test_the_backend_setting_is_checked_and_a_bad_one_means_local_with_a_message(tmp_path: Path) -> None:
    assert backend_address("local") is None and backend_address("auto") == "auto"
    assert backend_address("ray://head.example:10001") == "ray://head.example:10001"
    for bad in ("ray://", "http://head:10001", "ray://head", "yes"):
        with pytest.raises(ValueError, match="use local, auto .* or ray://HOST:10001"):
            backend_address(bad)
    manager = JobManager(tmp_path / ".jobs", max_jobs=1, warm=False, backend="ray:/head:10001")
    manager.shutdown()
    assert manager.cluster is None and "DECONV_JOBS='ray:/head:10001' is not a place to run trainings" in manager.notice


def test_the_local_pool_never_imports_ray(tmp_path: Path) -> None:
    code = ("import sys; from deconv.jobs import JobManager; "
            f"m = JobManager({str(tmp_path / '.jobs')!r}, warm=False, backend='local'); m.shutdown(); "
            "import pages.parts.server; print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


# ---- what a cluster sends back, checked: a node answering from a script (no Ray), as a compromised one could


class Call:
    """An actor method as the app calls it: `.remote(...)` gives the answer itself (the tests pass ray.get through)."""

    def __init__(self, answer) -> None:
        self.answer = answer

    def remote(self, *args):
        return self.answer(*args)


class ScriptedTrainer:
    """A Trainer actor whose polls answer from a script (the last answer repeats) and whose run is `archive`."""

    def __init__(self, polls: list, archive: bytes = b"", size: int | None = None) -> None:
        self.polls, self.archive, self.parts = list(polls), archive, []
        self.start = Call(lambda experiment, threads: {"pid": 4242, "node": "10.0.0.9"})
        self.poll = Call(lambda: self.polls.pop(0) if len(self.polls) > 1 else self.polls[0])
        self.stop = Call(lambda: None)
        self.archive_size = Call(lambda: len(archive) if size is None else size)
        self.archive_part = Call(self._part)

    def _part(self, start: int, size: int) -> bytes:
        self.parts.append((start, size))
        return self.archive[start:start + size]


def answer(*events, done: bool = True) -> dict:
    return {"events": list(events), "done": done, "failure": ""}


START = {"event": "start", "epochs": 1, "batches": 2, "labels": list(CIFAR10_LABELS)}
BATCH = {"event": "batch", "epoch": 1, "epochs": 1, "batch": 1, "batches": 2, "loss": 2.0, "accuracy": 0.1}
FINISHED = {"event": "end", "status": "finished", "message": "trained 1 epoch"}


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A JobManager on a one-slot cluster whose trainers follow the scripts the test appends to `trainers`."""
    from deconv import ray_jobs
    from deconv.jobs import MemoryCheck

    trainers: list[ScriptedTrainer] = []

    class Cluster:
        def __init__(self, address: str) -> None:
            self.address = self.where = address
            self.cpus_per_job, self.slots, self.lost = 1, 1, ""

        def memory_check(self, model_config, train_config) -> MemoryCheck:
            return MemoryCheck(1, 2**40, "the scripted node has")

        def submit(self, experiment, progress, memory):
            return ray_jobs.RemoteTraining(self, experiment, progress, memory)

        def mark_lost(self, reason: str) -> None:
            self.lost = self.lost or reason

        def close(self) -> None:
            pass

    class Trainer:
        @staticmethod
        def options(**resources):
            return Trainer

        @staticmethod
        def remote() -> ScriptedTrainer:
            return trainers.pop(0)

    monkeypatch.setattr(ray_jobs, "Cluster", Cluster)
    monkeypatch.setattr(ray_jobs, "Trainer", Trainer)
    monkeypatch.setattr(ray_jobs.ray, "get", lambda value, timeout=None: value)
    monkeypatch.setattr(ray_jobs.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_jobs, "FOLLOW_SECONDS", 0.01)
    m = JobManager(tmp_path / "runs" / ".jobs", max_jobs=1, warm=False, poll_seconds=0.02,
                   backend="ray://10.0.0.9:10001")
    assert m.cluster is not None and m.max_jobs == 1, m.notice
    m.trainers = trainers
    yield m
    m.shutdown()


@pytest.mark.parametrize("status", ["pwned", "running", None])
def test_an_end_of_an_unknown_status_ends_the_job_as_an_error_and_frees_its_slot(scripted: JobManager,
                                                                                 status) -> None:
    scripted.trainers += [ScriptedTrainer([answer(START, BATCH, done=False), answer({**FINISHED, "status": status})]),
                          ScriptedTrainer([answer(START, FINISHED)])]
    a = submit(scripted, "a", SMALL_TRAIN)
    wait_for(lambda: not a.active, timeout=30)
    assert a.state == "error" and "ended with a status this server does not know" in a.message
    assert scripted.running() == [] and a.newest("batch") is not None
    b = submit(scripted, "b", SMALL_TRAIN)  # the slot is free
    wait_for(lambda: not b.active, timeout=30)
    assert b.state == "finished" and b.message == "trained 1 epoch"


MALFORMED = [5, "end", None, [], {"no": "event"}, {"event": "pwn"}, {"event": ["batch"]},
             {"event": "batch", "epoch": "1"}, {**BATCH, "batches": 0}, {**BATCH, "loss": "a lot"},
             {**BATCH, "batch": True}, {"event": "status", "message": "x" * 100_000},
             {"event": "status", "message": ["not", "text"]},
             {"event": "epoch", "epoch": 1, "epochs": 1, "val_confusion": [[1, 2]]},
             {**START, "labels": ["cat"]}, {"event": "status", "message": object()}]


def test_malformed_events_from_a_cluster_are_left_out_and_its_trainings_go_on(scripted: JobManager) -> None:
    from deconv import ray_jobs

    scripted.trainers.append(ScriptedTrainer([answer(START, *MALFORMED, done=False), answer(BATCH, FINISHED)]))
    a = submit(scripted, "a", SMALL_TRAIN)
    wait_for(lambda: not a.active, timeout=30)
    assert a.state == "finished" and a.remote.dropped == len(MALFORMED) and a.remote.error == ""
    events = a.events()
    assert all(isinstance(e, dict) and e["event"] in ray_jobs.EVENT_WHOLE for e in events)
    assert [e["event"] for e in events if e["event"] != "status"] == ["start", "batch", "end"]
    assert a.fraction_done() == 0.5 and "left out" in events[1]["message"]
    assert scripted._thread.is_alive()  # the manager's watcher reads on
    assert ray_jobs.clean_event({**BATCH, "eta": None, "extra": [1, {"a": 2}]}) is not None  # as trainers send


def test_an_answer_of_another_shape_ends_the_job_as_an_error(scripted: JobManager) -> None:
    scripted.trainers.append(ScriptedTrainer([answer(START, done=False), {"events": "all of them", "done": True}]))
    a = submit(scripted, "a", SMALL_TRAIN)
    wait_for(lambda: not a.active, timeout=30)
    assert a.state == "error" and "the Ray cluster sent an answer of another shape" in a.message
    assert scripted.running() == [] and scripted._thread.is_alive()


def test_a_run_larger_than_an_import_may_be_is_refused_before_any_of_it_comes_back(scripted: JobManager) -> None:
    from deconv.run_import import MAX_IMPORT_BYTES

    trainer = ScriptedTrainer([answer(START, {**FINISHED, "run_dir": "/on/the/node"})], size=MAX_IMPORT_BYTES + 1)
    scripted.trainers.append(trainer)
    a = submit(scripted, "a", SMALL_TRAIN)
    wait_for(lambda: not a.active, timeout=30)
    assert a.state == "error" and "could not be brought back from the cluster: it takes 1.0 GiB, more than an " \
                                  "import may (1 GiB)" in a.message
    assert trainer.parts == [] and not a.run_dir.exists()


def test_a_run_comes_back_in_parts_of_the_size_asked(scripted: JobManager, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from deconv import ray_jobs
    from deconv.model import build_model

    saved = runs.save_run(tmp_path / "node" / "run1", build_model(SMALL_MODEL), SMALL_MODEL, SMALL_TRAIN, [],
                          runs.RunMeta())
    archive = runs.export_zip(saved)
    monkeypatch.setattr(ray_jobs, "ARCHIVE_PART_BYTES", 20_000)
    end = {**FINISHED, "run_dir": "/on/the/node"}
    good = ScriptedTrainer([answer(START, end)], archive)
    scripted.trainers.append(good)
    a = submit(scripted, "a", SMALL_TRAIN)
    wait_for(lambda: not a.active, timeout=120)
    assert a.state == "finished", a.message
    assert len(good.parts) == -(-len(archive) // 20_000) and runs.read_run(a.run_dir).meta.owner == "a"
    short = ScriptedTrainer([answer(START, end)], archive, size=len(archive) + 1)  # says more than it sends
    scripted.trainers.append(short)
    b = submit(scripted, "b", SMALL_TRAIN)
    wait_for(lambda: not b.active, timeout=30)
    assert b.state == "error" and "a part of it of another size than asked" in b.message
