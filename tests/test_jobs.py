"""Training jobs as the app runs them: child processes, progress files, stop, slot cap, queue, owners."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from deconv import runs
from deconv.config import ModelConfig, TrainConfig
from deconv.jobs import JobManager, config_argv
from deconv.cli import build_parser, configs_from_args

SMALL_MODEL = ModelConfig(widths=(8,))
SMALL_TRAIN = TrainConfig(train_size=300, val_size=100, epochs=2, batch_size=20)
LONG_TRAIN = SMALL_TRAIN.replace(epochs=200)


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.fixture
def manager(tmp_path: Path, cifar_dir: Path):
    alive = {"a": True, "b": True}
    m = JobManager(tmp_path / "runs" / ".jobs", max_jobs=1, is_alive=lambda owner: alive.get(owner, True),
                   poll_seconds=0.1)
    m.alive = alive  # the test flips owners off
    yield m
    m.shutdown()


def test_config_argv_round_trips_through_the_cli_parser() -> None:
    model, train = ModelConfig(widths=(16, 24), head="flatten"), TrainConfig(learning_rate=3e-4, seed=7)
    args = build_parser().parse_args(["train", *config_argv(model, train), "--out", "x"])
    assert configs_from_args(args) == (model, train)


def test_a_job_trains_writes_progress_and_saves_a_run(manager: JobManager, tmp_path: Path) -> None:
    job = manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r1")
    wait_for(lambda: not job.active)
    assert job.state == "finished", job.message
    assert len(job.epochs()) == 2 and job.latest("end")["status"] == "finished" and job.fraction_done() == 1.0
    info = runs.read_run(job.run_dir)
    assert info.model_config == SMALL_MODEL and len(info.history) == 2
    assert runs.list_runs(tmp_path / "runs")[1] == []  # the jobs folder is not taken for a broken run


def test_stop_ends_a_running_job_and_keeps_the_model(manager: JobManager, tmp_path: Path) -> None:
    job = manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r1")
    wait_for(lambda: job.latest("batch") is not None)
    manager.stop(job)
    asked = time.time()
    wait_for(lambda: not job.active, timeout=30)
    assert time.time() - asked < 15
    assert job.state == "stopped" and (job.run_dir / "model.keras").exists()


def test_one_job_per_owner_and_a_capped_queue(manager: JobManager, tmp_path: Path) -> None:
    first = manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r1")
    assert manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r2") is first  # a second click
    second = manager.submit("b", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r3")
    wait_for(lambda: first.latest("batch") is not None)
    assert second.state == "queued" and manager.queue_position(second) == 1 and len(manager.running()) == 1
    manager.stop(first)
    wait_for(lambda: second.state in ("starting", "running"), timeout=60)
    wait_for(lambda: not second.active)
    assert first.state == "stopped" and second.state == "finished"


def test_a_queued_job_can_be_cancelled(manager: JobManager, tmp_path: Path) -> None:
    first = manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r1")
    second = manager.submit("b", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r2")
    (tmp_path / "runs" / "r2").mkdir(parents=True)  # reserved as the app does
    manager.stop(second)
    assert second.state == "cancelled" and manager.queue_position(second) == 0
    assert not (tmp_path / "runs" / "r2").exists() and runs.list_runs(tmp_path / "runs")[1] == []
    manager.stop(first)
    wait_for(lambda: not first.active)


def test_a_job_whose_session_is_gone_is_stopped(manager: JobManager, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("deconv.jobs.OWNER_GRACE_SECONDS", 0.5)
    job = manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r1")
    wait_for(lambda: job.latest("batch") is not None)
    manager.alive["a"] = False
    wait_for(lambda: not job.active, timeout=30)
    assert job.state == "stopped" and manager.running() == []


def test_a_failing_job_reports_why_and_frees_the_slot(tmp_path: Path) -> None:
    env = {**os.environ, "DECONV_DATA_DIR": str(tmp_path / "nowhere")}
    manager = JobManager(tmp_path / "jobs", max_jobs=1, warm=False, poll_seconds=0.1, env=env)
    try:
        job = manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r1")
        wait_for(lambda: not job.active)
        assert job.state == "error" and "DECONV_DATA_DIR" in job.message and manager.running() == []
    finally:
        manager.shutdown()


def test_a_killed_trainer_is_reported_and_the_server_side_carries_on(manager: JobManager, tmp_path: Path) -> None:
    job = manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r1")
    wait_for(lambda: job.latest("batch") is not None)
    job.proc.kill()  # what the kernel's out-of-memory killer does
    wait_for(lambda: not job.active, timeout=30)
    assert job.state == "error" and "out of memory" in job.message and manager.running() == []
    after = manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r2")
    wait_for(lambda: not after.active)
    assert after.state == "finished"
