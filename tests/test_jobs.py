"""Training jobs as the app runs them: child processes, progress files, stop, slot cap, queue, owners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deconv import runs
from deconv.config import ModelConfig, TrainConfig, preset
from deconv.experiment import Experiment
from deconv.jobs import (QUIET_SECONDS, JobManager, JobRefused, max_job_seconds_from_env, max_per_address_from_env,
                         max_queue_from_env)
from deconv.lifeline import spawn

ROOT = Path(__file__).resolve().parent.parent

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


def test_an_experiment_reaches_the_worker_as_json_unchanged() -> None:
    experiment = Experiment(ModelConfig(widths=(16, 24), head="flatten"), TrainConfig(learning_rate=3e-4, seed=7),
                            Path("runs/x"), owner="-abc", strategy="mirrored")
    assert Experiment.from_json(json.loads(json.dumps(experiment.to_json()))) == experiment
    with pytest.raises(ValueError, match="widths"):
        Experiment.from_json({**experiment.to_json(), "model": {"widths": [1000]}})


def test_a_job_trains_writes_progress_and_saves_a_run(manager: JobManager, tmp_path: Path) -> None:
    job = manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r1")
    wait_for(lambda: not job.active)
    assert job.state == "finished", job.message
    assert len(job.epochs()) == 2 and job.newest("end")["status"] == "finished" and job.fraction_done() == 1.0
    info = runs.read_run(job.run_dir)
    assert info.model_config == SMALL_MODEL and len(info.history) == 2 and info.meta.owner == "a"
    assert runs.list_runs(tmp_path / "runs")[1] == []  # the jobs folder is not taken for a broken run


def test_stop_ends_a_running_job_and_keeps_the_model(manager: JobManager, tmp_path: Path) -> None:
    job = manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r1")
    wait_for(lambda: job.newest("batch") is not None)
    manager.stop(job)
    asked = time.time()
    wait_for(lambda: not job.active, timeout=30)
    assert time.time() - asked < 15
    assert job.state == "stopped" and (job.run_dir / "model.keras").exists()


def test_one_job_per_owner_and_a_capped_queue(manager: JobManager, tmp_path: Path) -> None:
    first = manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r1")
    assert manager.submit("a", SMALL_MODEL, LONG_TRAIN, tmp_path / "runs" / "r2") is first  # a second click
    second = manager.submit("b", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r3")
    wait_for(lambda: first.newest("batch") is not None)
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
    wait_for(lambda: job.newest("batch") is not None)
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
    wait_for(lambda: job.newest("batch") is not None)
    job.proc.kill()  # what the kernel's out-of-memory killer does
    wait_for(lambda: not job.active, timeout=30)
    assert job.state == "error" and "out of memory" in job.message and manager.running() == []
    after = manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "r2")
    wait_for(lambda: not after.active)
    assert after.state == "finished"


# ---- a shared server: children end with it, old logs go, oversized or surplus jobs are refused, tabs share a job

# A server as `streamlit run` holds one: a JobManager with a long training under way and one more warm worker.
SERVER = """
import json, sys, time
from deconv.config import ModelConfig, TrainConfig
from deconv.jobs import JobManager

jobs_dir, run_dir, model, train = sys.argv[1:]
manager = JobManager(jobs_dir, max_jobs=2, poll_seconds=0.1)
job = manager.submit("a", ModelConfig.from_dict(json.loads(model)), TrainConfig.from_dict(json.loads(train)), run_dir)
deadline = time.time() + 180
while job.active and job.newest("batch") is None and time.time() < deadline:
    time.sleep(0.1)
print(json.dumps({"batch": job.newest("batch") is not None, "trainer": job.proc.pid,
                  "workers": [w.proc.pid for w in manager.workers]}), flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """Ended: no such process, or a zombie nobody reaps (a container's init may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def lifeline_writers(pids: list[int]) -> list[tuple[int, int]]:
    """(holder, child) for each of `pids` that holds the write end of a child's lifeline: none should."""
    inodes = {}
    for pid in pids:
        env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
        inodes[os.stat(f"/proc/{pid}/fd/{env['DECONV_LIFELINE_FD']}").st_ino] = pid
    found = []
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                flags = next(line for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                             if line.startswith("flags:"))
            except FileNotFoundError:  # closed while we looked (TensorFlow opens and closes files)
                continue
            inode = int(target[len("pipe:["):-1]) if target.startswith("pipe:[") else None
            if inode in inodes and int(flags.split()[1], 8) & os.O_ACCMODE == os.O_WRONLY:
                found.append((pid, inodes[inode]))
    return found


def test_trainers_and_warm_workers_end_when_the_server_is_killed(tmp_path: Path, cifar_dir: Path) -> None:
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "jobs"), str(tmp_path / "runs" / "r1"),
                               json.dumps(SMALL_MODEL.to_dict()), json.dumps(LONG_TRAIN.to_dict())],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        started = json.loads(server.stdout.readline())
        children = [started["trainer"], *started["workers"]]
        assert started["batch"] and len(children) == 2 and not any(map(gone, children))
        assert lifeline_writers(children) == []  # only the server holds them: its death is every child's end-of-file
        server.kill()
        server.wait()
        killed = time.time()
        wait_for(lambda: all(map(gone, children)), timeout=10)
        assert time.time() - killed < 10
    finally:
        server.kill()
        server.wait()
        for pid in children:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_child_ends_as_soon_as_its_lifeline_is_closed(tmp_path: Path) -> None:
    proc, lifeline = spawn(["worker"], None, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # it is importing TensorFlow: the lifeline is watched from the very start
        assert proc.poll() is None
        lifeline.close()
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
        lifeline.close()


def test_job_folders_of_earlier_server_lives_are_deleted_at_start_and_nothing_else(tmp_path: Path) -> None:
    jobs_dir = tmp_path / ".jobs"
    for job_id in ("0123456789ab", "fedcba987654"):
        (jobs_dir / job_id).mkdir(parents=True)
        (jobs_dir / job_id / "progress.jsonl").write_text("{}\n")
    old = time.time() - 2 * QUIET_SECONDS
    for path in (jobs_dir / "0123456789ab", jobs_dir / "0123456789ab" / "progress.jsonl"):
        os.utime(path, (old, old))
    for other in ("notes", "0123456789abc", "0123456789AB"):
        (jobs_dir / other).mkdir()
    (jobs_dir / "abcdefabcdef").write_text("a file, not a job folder")
    manager = JobManager(jobs_dir, max_jobs=0, warm=False, poll_seconds=0.1)
    try:  # the quiet one goes; one written to just now may be another server's running job, and stays
        assert sorted(p.name for p in jobs_dir.iterdir()) == ["0123456789AB", "0123456789abc", "abcdefabcdef",
                                                              "fedcba987654", "notes", "xla-cache"]
        job = manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "r1")
        manager.sweep()
        assert job.dir.is_dir()  # a job of this manager keeps its folder
    finally:
        manager.shutdown()


@pytest.fixture
def full_manager(tmp_path: Path):
    """A manager whose slots are all taken (none), so submitted jobs wait; no process is started."""
    alive: dict[str, bool] = {}
    m = JobManager(tmp_path / ".jobs", max_jobs=0, warm=False, poll_seconds=0.05, max_queue=2,
                   is_alive=lambda session: alive.get(session, True))
    m.alive = alive
    yield m
    m.shutdown()


def test_a_training_that_does_not_fit_in_memory_is_refused(full_manager: JobManager, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deconv.jobs.available_memory_bytes", lambda: 64 * 2**30)
    run_dir = tmp_path / "runs" / "big"
    run_dir.mkdir(parents=True)  # reserved as the app does
    with pytest.raises(JobRefused, match="Not enough memory.*smaller batch size") as refused:
        full_manager.submit("a", preset("article"), TrainConfig(batch_size=1024), run_dir)  # about 200 GiB
    assert refused.value.reason == "memory" and full_manager.jobs == [] and not run_dir.exists()
    monkeypatch.setattr("deconv.jobs.available_memory_bytes", lambda: 2**29)
    with pytest.raises(JobRefused, match="Not enough memory"):
        full_manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "runs" / "small")


def test_a_training_estimated_longer_than_the_limit_is_refused(full_manager: JobManager, tmp_path: Path) -> None:
    with pytest.raises(JobRefused, match=r"about [0-9.]+ h .*\(2\.0 h\)\. Use fewer epochs") as refused:
        full_manager.submit("a", ModelConfig(), TrainConfig(train_size=50_000, epochs=200), tmp_path / "r1")
    assert refused.value.reason == "time" and full_manager.jobs == []
    full_manager.max_job_seconds = 5.0  # the tiny network still pays the start-up estimate
    with pytest.raises(JobRefused, match="longer than this server allows one training"):
        full_manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "r2")


def test_a_full_queue_refuses_new_jobs_but_an_owner_gets_its_own_job_back(full_manager: JobManager,
                                                                         tmp_path: Path) -> None:
    first = full_manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "r1")
    full_manager.submit("b", SMALL_MODEL, SMALL_TRAIN, tmp_path / "r2")
    with pytest.raises(JobRefused, match="2 trainings are already waiting.*Try again") as refused:
        full_manager.submit("c", SMALL_MODEL, SMALL_TRAIN, tmp_path / "r3")
    assert refused.value.reason == "queue"
    too_long = TrainConfig(train_size=50_000, epochs=200)
    assert full_manager.submit("a", ModelConfig(), too_long, tmp_path / "r4") is first  # before any check
    full_manager.stop(first)
    assert full_manager.submit("c", SMALL_MODEL, SMALL_TRAIN, tmp_path / "r3").state == "queued"
    full_manager.max_queue = 0
    with pytest.raises(JobRefused, match="keeps no queue"):
        full_manager.submit("d", SMALL_MODEL, SMALL_TRAIN, tmp_path / "r5")


def test_one_address_gets_at_most_its_share_of_the_queue_and_others_still_get_in(full_manager: JobManager,
                                                                                 tmp_path: Path) -> None:
    full_manager.max_queue, full_manager.max_per_address = 10, 2
    for owner in ("a", "b"):
        full_manager.submit(owner, SMALL_MODEL, SMALL_TRAIN, tmp_path / owner, address="192.0.2.1")
    with pytest.raises(JobRefused, match="Your network address already has 2 trainings") as refused:
        full_manager.submit("c", SMALL_MODEL, SMALL_TRAIN, tmp_path / "c", address="192.0.2.1")
    assert refused.value.reason == "address" and not (tmp_path / "c").exists()
    assert full_manager.submit("d", SMALL_MODEL, SMALL_TRAIN, tmp_path / "d", address="192.0.2.2").state == "queued"
    full_manager.stop(full_manager.active_job("a"))  # one ends: the address may queue another
    assert full_manager.submit("c", SMALL_MODEL, SMALL_TRAIN, tmp_path / "c", address="192.0.2.1").state == "queued"


def test_the_per_address_share_is_a_quarter_of_what_the_server_takes_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert max_per_address_from_env(1, 20) == 5 and max_per_address_from_env(1, 0) == 1
    monkeypatch.setenv("DECONV_MAX_JOBS_PER_ADDRESS", "30")  # a class behind one NAT address
    assert max_per_address_from_env(1, 20) == 30
    monkeypatch.setenv("DECONV_MAX_JOBS_PER_ADDRESS", "many")
    assert max_per_address_from_env(1, 20) == 5


def test_limits_come_from_the_environment_and_a_bad_value_means_the_default(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert max_queue_from_env() == 20 and max_job_seconds_from_env() == 7200
    monkeypatch.setenv("DECONV_MAX_QUEUE", "3")
    monkeypatch.setenv("DECONV_MAX_JOB_SECONDS", "600")
    manager = JobManager(tmp_path / ".jobs", warm=False)
    manager.shutdown()
    assert (manager.max_queue, manager.max_job_seconds) == (3, 600.0)
    for queue, seconds in (("many", "soon"), ("-1", "0"), ("2.5", "nan")):
        monkeypatch.setenv("DECONV_MAX_QUEUE", queue)
        monkeypatch.setenv("DECONV_MAX_JOB_SECONDS", seconds)
        assert (max_queue_from_env(), max_job_seconds_from_env()) == (20, 7200)
    monkeypatch.setenv("DECONV_MAX_QUEUE", "0")
    monkeypatch.setenv("DECONV_MAX_JOB_SECONDS", "inf")
    assert (max_queue_from_env(), max_job_seconds_from_env()) == (0, float("inf"))


def test_a_job_lives_while_any_tab_of_its_owner_is_open(full_manager: JobManager, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deconv.jobs.OWNER_GRACE_SECONDS", 0.2)
    full_manager.touch("a", "older tab")
    full_manager.touch("a", "newer tab")
    job = full_manager.submit("a", SMALL_MODEL, SMALL_TRAIN, tmp_path / "r1")
    full_manager.alive["newer tab"] = False
    time.sleep(1.0)  # many polls, well past the grace time
    assert job.active and full_manager._sessions["a"] == {"older tab"}  # the closed tab is forgotten
    full_manager.alive["older tab"] = False
    wait_for(lambda: not job.active, timeout=10)
    assert job.state == "cancelled"
    wait_for(lambda: "a" not in full_manager._sessions, timeout=10)  # an owner with no tab and no job is forgotten


def test_a_network_whose_answers_cost_more_than_the_pages_allow_is_refused_before_training(
        full_manager: JobManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("deconv.jobs.available_memory_bytes", lambda: 64 * 2**30)  # it needs about 13 GiB
    largest = ModelConfig(widths=(256, 256, 256, 256), conv_kernel=7, conv_stride=1, deconv_kernel=7,
                          upsample="resize", up_blocks=3, head="flatten", pool_size=1)
    shortest = TrainConfig(train_size=100, val_size=100, epochs=1, batch_size=8)  # within the time limit (1.4 h)
    full_manager.max_job_seconds = float("inf")
    with pytest.raises(JobRefused, match=r"This network would take about \d+ s to classify one image by the estimate, "
                                         r"longer than this server allows") as refused:
        full_manager.submit("a", largest, shortest, tmp_path / "r1")
    assert refused.value.reason == "answer" and full_manager.jobs == []
