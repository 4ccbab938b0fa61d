"""Training jobs for a shared server: child processes, warm workers, a slot cap and a queue.

Each job runs one `deconv.experiment.Experiment` (what `python -m deconv train` runs) in a worker process
that writes the run directory and a JSON-lines progress file; callers follow that file. TensorFlow's
import takes seconds, so each slot keeps a warm worker process that has imported it already and
waits for its job on stdin. Stop is SIGTERM: the trainer finishes its batch, saves and exits.

A JobManager is meant to be shared by every browser session of one server: it holds the training
slot limit and the queue, refuses trainings the machine cannot take, and deletes the job folders of
earlier server lives when it starts. Its one background thread belongs to it, only watches processes
and files, and ends with `shutdown()`. Every child holds a lifeline to the server (see `Lifeline`)
and ends itself when the server is gone, even after a SIGKILL.

DECONV_JOBS chooses where trainings run: `local` (the default: the worker processes above) or a Ray cluster
(`ray://HOST:10001`, or `auto` for RAY_ADDRESS), where each job is an actor placed by Ray's scheduler (see
deconv.ray_jobs, imported only then). A cluster that cannot be reached, at start-up or later, sends trainings back
to the local workers, and the manager's `notice` and each such job's messages say so.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from deconv.config import ModelConfig, TrainConfig
from deconv.cost import classify_work, describe
from deconv.experiment import Experiment
from deconv.lifeline import Lifeline, spawn

log = logging.getLogger(__name__)  # diagnostics for the operator's log

MAX_JOBS_ENV = "DECONV_MAX_JOBS"
MAX_QUEUE_ENV = "DECONV_MAX_QUEUE"
MAX_JOB_SECONDS_ENV = "DECONV_MAX_JOB_SECONDS"
JOBS_ENV = "DECONV_JOBS"  # local (default), auto (the Ray cluster at RAY_ADDRESS) or ray://HOST:PORT
MAX_PER_ADDRESS_ENV = "DECONV_MAX_JOBS_PER_ADDRESS"  # trainings one network address may have running or waiting
PROXY_HEADER_ENV = "DECONV_PROXY_HEADER"  # behind a reverse proxy: the header that names the visitor's address
DEFAULT_MAX_QUEUE = 20
DEFAULT_MAX_JOB_SECONDS = 2 * 3600.0  # by the estimate of deconv.cost: longer trainings are refused
JOB_ID = re.compile(r"[0-9a-f]{12}")  # a job's id and the name of its folder in jobs_dir
ACTIVE = ("queued", "starting", "running")
OWNER_GRACE_SECONDS = 15.0  # a job whose browser session has been gone this long is stopped
STOP_GRACE_SECONDS = 60.0  # a job still running this long after Stop is killed
TOUCH_SECONDS = 120.0  # a waiting job's folder is touched this often, so no server sweeps it
KEEP_ENDED_SECONDS = 24 * 3600  # an ended job is forgotten (and its logs deleted) after this long


@dataclass(frozen=True)
class MemoryCheck:
    """A training's estimated peak memory against what the machine can give now."""

    needed: int
    available: int
    where: str = "this machine has free"  # whose memory `available` is

    @property
    def fits(self) -> bool:
        """Whether the estimate fits in the memory available."""
        return self.needed <= self.available

    @property
    def tight(self) -> bool:
        """More than half of what is available: it may fail if anything else grows."""
        return self.needed > self.available / 2

    def describe(self) -> str:
        """'about 18.2 GiB of the 21.4 GiB this machine has free'."""
        return f"about {self.needed / 2**30:.1f} GiB of the {self.available / 2**30:.1f} GiB {self.where}"


def available_memory_bytes() -> int:
    """Memory this machine can give now: MemAvailable, within the container's limit (cgroup v2) if it has one."""
    sizes = []
    try:
        meminfo = Path("/proc/meminfo").read_text()
        sizes += [int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        sizes.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            sizes.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, min(sizes))


def memory_check(model_config: ModelConfig, train_config: TrainConfig) -> MemoryCheck:
    """The training's estimated peak memory (deconv.cost) against what this machine has free now."""
    return MemoryCheck(describe(model_config).train_memory_bytes(train_config), available_memory_bytes())


QUIET_SECONDS = 600  # a job folder nothing wrote to for this long belongs to no running trainer
XLA_CACHE_DIR = "xla-cache"  # in jobs_dir: compiled training steps, kept for the next training of the same network
XLA_CACHE_BYTES = 512 * 2**20  # a cache grown past this (about 300 networks) is emptied when a server starts


def with_xla_cache(env: dict[str, str], cache: Path) -> dict[str, str]:
    """The environment with TensorFlow's persistent XLA cache in `cache` (emptied first when it grew too big).

    A training step XLA compiled once (about 5 s for the default network, when XLA is turned on) is then loaded from
    disk by the next trainer of the same network and settings.
    """
    try:
        if sum(f.stat().st_size for f in cache.iterdir()) > XLA_CACHE_BYTES:
            shutil.rmtree(cache, ignore_errors=True)
    except OSError:
        pass
    cache.mkdir(parents=True, exist_ok=True)
    flags = env.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" not in flags:
        env["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={cache}".strip()
    return env


def _last_written(folder: Path) -> float:
    """The newest modification time of a folder and the files in it."""
    times = [folder.stat().st_mtime]
    for file in folder.iterdir():
        try:
            times.append(file.stat().st_mtime)
        except OSError:
            continue
    return max(times)


def max_jobs_from_env(default: int = 1) -> int:
    """The training-slot cap: DECONV_MAX_JOBS, at least 1."""
    try:
        return max(1, int(os.environ.get(MAX_JOBS_ENV, default)))
    except ValueError:
        return default


def max_per_address_from_env(max_jobs: int, max_queue: int) -> int:
    """DECONV_MAX_JOBS_PER_ADDRESS (at least 1); unset: a quarter of what the server takes at once (slots + queue).

    A quarter, so that one machine (a script opening many sessions) can never hold the whole queue; a class behind
    one NAT address needs it raised to the class's size.
    """
    try:
        return max(1, int(os.environ[MAX_PER_ADDRESS_ENV]))
    except (KeyError, ValueError):
        return max(1, (max_jobs + max_queue) // 4)


def proxy_header_from_env() -> str:
    """DECONV_PROXY_HEADER: the header a trusted reverse proxy sets to the visitor's address ("" : none, use the
    connection's own address). Set it only behind a proxy that overwrites the header: a visitor can send any."""
    return os.environ.get(PROXY_HEADER_ENV, "").strip()


def jobs_backend_from_env() -> str:
    """DECONV_JOBS as given: "local" when unset or empty (checked by `backend_address`)."""
    return os.environ.get(JOBS_ENV, "").strip() or "local"


def backend_address(value: str) -> str | None:
    """None for the local workers, or the Ray address to connect to; ValueError says what is allowed."""
    if value == "local":
        return None
    if value == "auto" or re.fullmatch(r"ray://[A-Za-z0-9.\-\[\]:]+:\d{1,5}", value):
        return value
    raise ValueError(f"{JOBS_ENV}={value[:80]!r} is not a place to run trainings: use local, auto (the Ray cluster "
                     "at RAY_ADDRESS) or ray://HOST:10001")


def max_queue_from_env(default: int = DEFAULT_MAX_QUEUE) -> int:
    """How many trainings may wait for a slot: DECONV_MAX_QUEUE, 0 or more (0: none waits); the default if not."""
    try:
        value = int(os.environ.get(MAX_QUEUE_ENV, default))
    except ValueError:
        return default
    return value if value >= 0 else default


def max_job_seconds_from_env(default: float = DEFAULT_MAX_JOB_SECONDS) -> float:
    """The longest estimated training accepted: DECONV_MAX_JOB_SECONDS, above 0 (inf: no limit); the default if not."""
    try:
        value = float(os.environ.get(MAX_JOB_SECONDS_ENV, default))
    except ValueError:
        return default
    return value if value > 0 and not math.isnan(value) else default


class JobRefused(Exception):
    """A training this server will not take; the message says why and what to do, `reason` is memory, time, answer
    (one image's answer costs too much), queue or address."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def fmt_duration(seconds: float) -> str:
    """Seconds as s, min or h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.1f} h"


def cost_refusal(model_config: ModelConfig, train_config: TrainConfig, memory: MemoryCheck,
                 max_job_seconds: float) -> JobRefused | None:
    """Why this server would not train the network with these settings, by the cost model, or None: its memory
    (`memory`, where it would run), its time against `max_job_seconds`, or one image's answer past the pages' budget
    (deconv.cost.classify_work). Imported runs are held to it too (deconv.run_import)."""
    if not memory.fits:
        return JobRefused(f"Not enough memory for this training: it would need {memory.describe()}. Use a smaller "
                          "batch size or fewer or narrower blocks, or try again when other trainings have ended.",
                          "memory")
    seconds = describe(model_config).train_seconds(train_config)
    if seconds > max_job_seconds:
        return JobRefused(f"This training would take about {fmt_duration(seconds)} by the estimate, longer than "
                          f"this server allows one training ({fmt_duration(max_job_seconds)}). Use fewer "
                          "epochs or training images, or a smaller network.", "time")
    answer = classify_work(model_config, 1)
    if not answer.allowed:
        return JobRefused(f"This network would take about {fmt_duration(answer.bounded_seconds)} to classify one "
                          "image by the estimate, longer than this server allows "
                          f"({fmt_duration(answer.budget_seconds)}). Use fewer or narrower blocks or smaller kernels.",
                          "answer")
    return None


class Worker:
    """A `python -m deconv worker` process that has imported TensorFlow and waits for one job."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.proc, self.lifeline = spawn(["worker"], env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, text=True)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def start(self, experiment: Experiment, progress: Path, stdout: Path, stderr: Path) -> subprocess.Popen:
        """Hand the worker its experiment as one JSON line; it redirects its output to the given files."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"experiment": experiment.to_json(), "progress": str(progress),
                                          "stdout": str(stdout), "stderr": str(stderr)}) + "\n")
        self.proc.stdin.close()
        return self.proc

    def kill(self) -> None:
        """End an idle worker (or forget a dead one) and close its lifeline."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.lifeline.close()


@dataclass
class Job:
    """One training request: its configs, files, process and what its progress file says so far."""

    id: str
    owner: str  # the owner key (deconv.owners) of the browser that asked
    model_config: ModelConfig
    train_config: TrainConfig
    run_dir: Path
    dir: Path
    state: str = "queued"  # queued, starting, running, finished, stopped, nan, error, cancelled
    message: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    proc: subprocess.Popen | None = None
    lifeline: Lifeline | None = None  # held while the trainer runs; closing it ends the trainer
    remote: Any = None  # a deconv.ray_jobs.RemoteTraining while the job is on a Ray cluster (then proc is None)
    address: str = ""  # the network address it was asked from (the per-address cap counts it)
    note: str = ""  # where it ran when that is not where DECONV_JOBS says: added to its final message
    stop_requested: float = 0.0  # when Stop was asked (0: not asked)
    touched: float = field(default_factory=time.time)  # when its folder was last marked as in use
    _events: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def progress_path(self) -> Path:
        """The JSON-lines file the trainer appends to."""
        return self.dir / "progress.jsonl"

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.state in ACTIVE

    def events(self) -> list[dict[str, Any]]:
        """Every event so far (reads only what was appended since the last call)."""
        with self._lock:
            try:
                with open(self.progress_path, "rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except FileNotFoundError:
                return list(self._events)
            end = chunk.rfind(b"\n") + 1  # only whole lines
            for line in chunk[:end].splitlines():
                try:
                    self._events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
            self._offset += end
            return list(self._events)

    def epochs(self) -> list[dict[str, Any]]:
        """The per-epoch metrics reported so far."""
        return [e for e in self.events() if e["event"] == "epoch"]

    def current_batches(self) -> list[dict[str, Any]]:
        """The batch progress events of the epoch under way."""
        epoch = len(self.epochs()) + 1
        return [e for e in self.events() if e["event"] == "batch" and e["epoch"] == epoch]

    def fraction_done(self) -> float:
        """How much of all the training steps is done, 0 to 1."""
        batch = self.newest("batch")
        if batch is None:
            return 0.0
        return ((batch["epoch"] - 1) * batch["batches"] + batch["batch"]) / (batch["epochs"] * batch["batches"])

    def newest(self, *kinds: str) -> dict[str, Any] | None:
        """The last event of any of these kinds ("batch", "download", "status", "end", ...)."""
        return next((e for e in reversed(self.events()) if e["event"] in kinds), None)

    def stderr_tail(self, lines: int = 5) -> str:
        """The last lines the trainer wrote to stderr, without TensorFlow's log noise."""
        try:
            text = (self.dir / "stderr.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join([t for t in text if t.strip() and not t.startswith(("WARNING", "I0000", "E0000", "W0000"))][-lines:])


class JobManager:
    """Runs at most `max_jobs` trainings at once for all sessions, queues the rest, reaps and cleans up."""

    # is_alive(session): whether a browser session is still open. max_queue and max_job_seconds bound what submit
    # accepts; None reads them from DECONV_MAX_QUEUE and DECONV_MAX_JOB_SECONDS. backend: "local", "auto" or
    # "ray://HOST:PORT" (None reads DECONV_JOBS); with a cluster, max_jobs becomes the trainings it can run at once.

    def __init__(self, jobs_dir: Path, max_jobs: int = 1, is_alive: Callable[[str], bool] | None = None,
                 warm: bool = True, poll_seconds: float = 0.25, env: dict[str, str] | None = None,
                 max_queue: int | None = None, max_job_seconds: float | None = None,
                 backend: str | None = None, max_per_address: int | None = None) -> None:
        self.jobs_dir = Path(jobs_dir)
        self.max_jobs = self.local_max_jobs = max_jobs
        self.max_queue = max_queue_from_env() if max_queue is None else max_queue
        self.max_job_seconds = max_job_seconds_from_env() if max_job_seconds is None else max_job_seconds
        self.max_per_address = max_per_address_from_env(max_jobs, self.max_queue) if max_per_address is None \
            else max_per_address
        self.is_alive = is_alive or (lambda session: True)
        self.warm = warm
        self.env = with_xla_cache(dict(os.environ if env is None else env), self.jobs_dir / XLA_CACHE_DIR)
        self.jobs: list[Job] = []
        self.workers: list[Worker] = []
        self._gone_since: dict[str, float] = {}
        self._sessions: dict[str, set[str]] = {}  # owner -> its open browser sessions (one per tab)
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self.cluster: Any = None  # a deconv.ray_jobs.Cluster while trainings go to Ray
        self._lost_clusters: list[Any] = []  # clusters given up on, closed at shutdown
        self.notice = ""  # why trainings run on this server although DECONV_JOBS names a cluster
        self.sweep()
        self._connect(jobs_backend_from_env() if backend is None else backend)
        if warm and self.cluster is None:
            self._top_up_workers()
        self._thread = threading.Thread(target=self._loop, args=(poll_seconds,), name="deconv-jobs", daemon=True)
        self._thread.start()

    # ---- requests from sessions

    def submit(self, owner: str, model_config: ModelConfig, train_config: TrainConfig, run_dir: Path,
               address: str = "") -> Job:
        """Queue a training for `owner` asked from network `address` (JobRefused if too big, too long, the queue is
        full or the address has its share); an owner with an active job gets that job back, not a second one."""
        with self._lock:
            current = self.active_job(owner)
            if current:
                return current
            try:
                self._admit(model_config, train_config, address)
            except JobRefused:
                give_back(Path(run_dir))  # the caller reserved it for this job
                raise
            job_id = uuid.uuid4().hex[:12]
            job = Job(job_id, owner, model_config, train_config, Path(run_dir), self.jobs_dir / job_id,
                      address=address)
            job.dir.mkdir(parents=True, exist_ok=True)
            self.jobs.append(job)
            self._dispatch()
            return job

    def touch(self, owner: str, session: str) -> None:
        """Record a browser session of an owner (a refreshed page or another tab is a new session)."""
        with self._lock:
            self._sessions.setdefault(owner, set()).add(session)

    def sweep(self) -> None:
        """Delete the job folders in jobs_dir that no job of this manager owns and nothing has written to for a
        while; leave anything else there alone."""
        # They hold logs of earlier server lives, whose trainers ended with that server (see Lifeline). A folder
        # written to lately may belong to another server sharing the runs folder: its trainer appends every second.
        with self._lock:
            owned = {j.dir.name for j in self.jobs}
            try:
                entries = list(self.jobs_dir.iterdir())
            except FileNotFoundError:
                return
            for path in entries:
                if JOB_ID.fullmatch(path.name) and path.name not in owned and path.is_dir() and not path.is_symlink() \
                        and time.time() - _last_written(path) > QUIET_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)

    def active_job(self, owner: str) -> Job | None:
        """The owner's queued or running job."""
        with self._lock:
            return next((j for j in self.jobs if j.owner == owner and j.active), None)

    def latest_job(self, owner: str) -> Job | None:
        """The owner's most recent job, active or ended."""
        with self._lock:
            return next((j for j in reversed(self.jobs) if j.owner == owner), None)

    def get(self, job_id: str) -> Job | None:
        """A job by id."""
        with self._lock:
            return next((j for j in self.jobs if j.id == job_id), None)

    def queue_position(self, job: Job) -> int:
        """1 for the next job to start, 0 if the job is not queued."""
        with self._lock:
            queued = [j for j in self.jobs if j.state == "queued"]
            return queued.index(job) + 1 if job in queued else 0

    def running(self) -> list[Job]:
        """Jobs holding a slot."""
        with self._lock:
            return [j for j in self.jobs if j.state in ("starting", "running")]

    def estimated_start(self, job: Job) -> float | None:
        """Seconds until a queued job should start, by the cost model's estimates of the jobs ahead of it in this
        app's order (with Ray: of those Ray has not started yet); None if it is not queued or no slot exists."""
        with self._lock:
            queued = [j for j in self.jobs if j.state == "queued"]
            if job not in queued or self.max_jobs < 1:
                return None
            busy = sorted(_estimate(j) * (1 - j.fraction_done()) for j in self.running())
            slots = sorted(busy + [0.0] * max(0, self.max_jobs - len(busy)))[:self.max_jobs]
            for ahead in queued[:queued.index(job)]:  # each takes the slot that frees first
                heapq.heapreplace(slots, slots[0] + _estimate(ahead))
            return slots[0]

    def stop(self, job: Job) -> None:
        """Cancel a queued job, or ask a running one to stop after its current batch and save."""
        with self._lock:
            if job.state == "queued":
                if job.remote is not None:  # submitted, but Ray has not placed it yet
                    job.remote.cancel()
                self._end(job, "cancelled", "cancelled while waiting for a training slot")
            elif job.active and job.remote is not None and not job.stop_requested:
                job.stop_requested = time.time()
                job.remote.stop()
            elif job.active and job.proc is not None and not job.stop_requested:
                job.stop_requested = time.time()
                try:
                    os.killpg(job.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def shutdown(self) -> None:
        """Stop every job and worker and end the watcher thread."""
        self._stopping.set()
        with self._lock:
            for job in self.jobs:
                if job.active:
                    self.stop(job)
            for w in self.workers:
                w.kill()
            self.workers.clear()
        deadline = time.time() + 30
        for job in list(self.jobs):
            if job.remote is not None:  # its run comes back and is imported, as a local one saves
                job.remote.join(timeout=max(0.0, deadline - time.time()))
                job.remote.kill("the app server stopped")
            if job.proc is not None:
                try:
                    job.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    job.proc.kill()
            if job.lifeline is not None:
                job.lifeline.close()
        self._thread.join(timeout=5)
        for cluster in [self.cluster, *self._lost_clusters]:
            if cluster is not None:
                cluster.close()

    # ---- the watcher

    def _loop(self, poll_seconds: float) -> None:
        while not self._stopping.wait(poll_seconds):
            try:
                self.poll()
            except OSError as e:  # a process or file that vanished: report it, keep watching the others
                log.warning("%s", e)

    def poll(self) -> None:
        """Reap ended processes, stop jobs whose session is gone, start queued jobs in free slots."""
        with self._lock:
            now = time.time()
            if self.cluster is not None:
                self._follow_cluster()
            for job in self.jobs:
                if job.active:
                    self._check_owner(job, now)
                    self._touch(job, now)
                if job.remote is not None and job.active:
                    self._follow_remote(job, now)
                elif job.state in ("starting", "running") and job.proc is not None:
                    if job.state == "starting" and job.newest("start"):
                        job.state = "running"
                    if job.proc.poll() is not None:
                        self._reap(job)
                    elif job.stop_requested and now - job.stop_requested > STOP_GRACE_SECONDS:
                        os.killpg(job.proc.pid, signal.SIGKILL)  # it did not stop by itself: free the slot
            self._dispatch()
            old = [j for j in self.jobs if not j.active and now - (j.ended or now) >= KEEP_ENDED_SECONDS]
            for job in old:  # its run, if any, is saved elsewhere; the logs and progress file can go
                shutil.rmtree(job.dir, ignore_errors=True)
            self.jobs = [j for j in self.jobs if j not in old]
            for owner in list(self._sessions):  # forget owners whose tabs are all closed, unless a job waits on them
                if not self._owner_alive(owner) and self.active_job(owner) is None:
                    del self._sessions[owner]
                    self._gone_since.pop(owner, None)

    def memory_check(self, model_config: ModelConfig, train_config: TrainConfig) -> MemoryCheck:
        """The training's estimated peak memory against where it would run: this machine, or the cluster's largest
        node."""
        return self.cluster.memory_check(model_config, train_config) if self.cluster else \
            memory_check(model_config, train_config)

    def _admit(self, model_config: ModelConfig, train_config: TrainConfig, address: str = "") -> None:
        """Raise JobRefused if this server should not take the training (what the user can change is checked first)."""
        refused = cost_refusal(model_config, train_config, self.memory_check(model_config, train_config),
                               self.max_job_seconds)
        if refused is not None:
            raise refused
        queued = sum(j.state == "queued" for j in self.jobs)
        if len(self.running()) + queued >= self.max_jobs and queued >= self.max_queue:
            waiting = (f"{queued} training{' is' if queued == 1 else 's are'} already waiting for a slot, as many as "
                       "this server queues" if self.max_queue else "every training slot is busy and this server keeps "
                       "no queue")
            raise JobRefused(f"The server is full: {waiting}. Try again in a few minutes.", "queue")
        from_there = sum(j.active and j.address == address for j in self.jobs)
        if address and from_there >= self.max_per_address:  # "": not asked from a page (tests, the operator)
            raise JobRefused(f"Your network address already has {from_there} training{'s' if from_there > 1 else ''} "
                             "running or waiting, as many as this server gives one address. Try again when one has "
                             "ended.", "address")

    # ---- where trainings run: the local workers, or a Ray cluster

    def _connect(self, value: str) -> None:
        """Send trainings to the Ray cluster DECONV_JOBS names, or keep them here and say why."""
        try:
            address = backend_address(value)
        except ValueError as e:
            self._fall_back(str(e))
            return
        if address is None:
            return
        try:
            from deconv import ray_jobs  # only here: the local path never imports ray
        except ImportError:
            self._fall_back(f"{JOBS_ENV}={value} needs Ray, which is not installed on this server (pip install -r "
                            "requirements-ray.txt)")
            return
        try:
            self.cluster = ray_jobs.Cluster(address)
        except ray_jobs.ClusterUnreachable as e:
            self._fall_back(str(e))
            return
        self.max_jobs = self.cluster.slots

    def _fall_back(self, reason: str) -> None:
        """Train on this server from now on, and say why (the notice, and each such job's messages)."""
        log.warning("%s; trainings run on this server", reason)
        self.notice = reason
        if self.cluster is not None:  # kept until shutdown: jobs it runs still end through it, with an error
            self._lost_clusters.append(self.cluster)
            self.cluster = None
            for job in self.jobs:  # those Ray has not started run here instead
                if job.state == "queued" and job.remote is not None:
                    job.remote.cancel()
                    job.remote = None
        self.max_jobs = self.local_max_jobs
        if self.warm:
            self._top_up_workers()

    def _follow_cluster(self) -> None:
        """Take up a cluster that was lost, or its size as it is now."""
        if self.cluster.lost:
            self._fall_back(self.cluster.lost)
        else:
            self.max_jobs = self.cluster.slots

    def _follow_remote(self, job: Job, now: float) -> None:
        """A Ray job's state from its follower: placed, started, ended; killed if it outlives its Stop."""
        remote = job.remote
        if job.state == "queued" and remote.placed.is_set():
            job.state, job.started = "starting", now
        if job.state == "starting" and job.newest("start"):
            job.state = "running"
        if remote.ended.is_set():
            self._reap(job)
        elif job.stop_requested and now - job.stop_requested > STOP_GRACE_SECONDS:
            remote.kill(f"it did not stop within {STOP_GRACE_SECONDS:.0f} s of Stop; nothing was saved")

    def _reap_remote(self, job: Job) -> None:
        remote = job.remote
        if not remote.placed.is_set() and remote.lost_cluster and not job.stop_requested:
            if self.cluster is not None:  # the cluster went away before Ray started it: it runs here instead
                self._fall_back(remote.lost_cluster)
            job.remote, job.state = None, "queued"
            return
        if remote.run_dir is not None:  # the run came back, under this name or a free one next to it
            job.run_dir = remote.run_dir
        end = job.newest("end")
        if end:
            self._end(job, end.get("status", "error"), end.get("message", ""))
        elif remote.error:
            self._end(job, "error", remote.error)
        elif job.stop_requested:
            self._end(job, "cancelled", "stopped before training began; nothing was saved")
        else:
            self._end(job, "error", "the training on the Ray cluster ended without a result")

    def _touch(self, job: Job, now: float) -> None:
        """Mark an active job's folder as in use, so another server sharing the runs folder never sweeps it."""
        if now - job.touched > TOUCH_SECONDS:
            job.touched = now
            try:
                os.utime(job.dir)
            except OSError as e:
                log.warning("cannot mark %s as in use: %s", job.dir, e.strerror or e)

    def _owner_alive(self, owner: str) -> bool:
        """Whether any browser session of the owner is open; closed ones are forgotten."""
        sessions = self._sessions.get(owner)
        if sessions is None:  # never touched (a caller outside the app): ask about the owner itself
            return self.is_alive(owner)
        sessions.difference_update([s for s in sessions if not self.is_alive(s)])
        return bool(sessions)

    def _check_owner(self, job: Job, now: float) -> None:
        if self._owner_alive(job.owner):
            self._gone_since.pop(job.owner, None)
            return
        since = self._gone_since.setdefault(job.owner, now)
        if now - since >= OWNER_GRACE_SECONDS:
            self.stop(job)

    def _reap(self, job: Job) -> None:
        if job.remote is not None:
            self._reap_remote(job)
            return
        assert job.proc is not None
        code = job.proc.returncode
        end = job.newest("end")
        if end:
            self._end(job, end.get("status", "error"), end.get("message", ""))
        elif job.stop_requested:
            self._end(job, "cancelled", "stopped before training began; nothing was saved")
        elif code == -signal.SIGKILL:
            self._end(job, "error", "the training process was killed (out of memory?); try a smaller model or batch size")
        else:
            tail = job.stderr_tail()
            self._end(job, "error", f"the training process ended unexpectedly (exit code {code})" + (f": {tail}" if tail else ""))
        if job.lifeline is not None:
            job.lifeline.close()
        if self.warm:
            self._top_up_workers()

    def _end(self, job: Job, state: str, message: str) -> None:
        job.state, job.message, job.ended = state, message + (f"; {job.note}" if job.note else ""), time.time()
        give_back(job.run_dir)

    def _top_up_workers(self) -> None:
        for w in [w for w in self.workers if not w.alive()]:
            w.kill()  # closes its lifeline
            self.workers.remove(w)
        while not self._stopping.is_set() and len(self.workers) + len(self.running()) < self.max_jobs:
            self.workers.append(Worker(self.env))

    def _dispatch(self) -> None:
        if self.cluster is not None:  # every job goes to Ray at once; its scheduler starts each when a node has room
            for job in [j for j in self.jobs if j.state == "queued" and j.remote is None]:
                experiment = Experiment(job.model_config, job.train_config, job.run_dir, owner=job.owner)
                job.remote = self.cluster.submit(experiment, job.progress_path,
                                                 self.memory_check(job.model_config, job.train_config).needed)
            return
        free = self.max_jobs - len(self.running())
        for job in [j for j in self.jobs if j.state == "queued"][:max(free, 0)]:
            if self.notice and not job.note:  # DECONV_JOBS names a cluster that cannot be reached
                job.note = f"trained on this server because {self.notice}"
                _append_event(job.progress_path, {"event": "status", "message": f"{self.notice}: training on this "
                                                                                  "server instead"})
            experiment = Experiment(job.model_config, job.train_config, job.run_dir, owner=job.owner)
            worker = next((w for w in self.workers if w.alive()), None)
            try:
                if worker is not None:
                    self.workers.remove(worker)
                else:  # no warm one (warm=False, or it died): a fresh worker imports TensorFlow first
                    worker = Worker(self.env)
                job.proc = worker.start(experiment, job.progress_path, job.dir / "stdout.log", job.dir / "stderr.log")
                job.lifeline = worker.lifeline
            except OSError as e:  # the worker died just now, or no process could be started
                if worker is not None:
                    worker.kill()
                self._end(job, "error", f"the trainer could not be started: {e.strerror or e}")
                continue
            job.state, job.started = "starting", time.time()


def _estimate(job: Job) -> float:
    """A job's training time by the cost model, start-up included."""
    return describe(job.model_config).train_seconds(job.train_config)


def give_back(run_dir: Path) -> None:
    """Remove a reserved run folder that nothing was saved in, so its name can be used again."""
    try:
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
    except OSError:  # filled or removed meanwhile (another server shares the runs folder): not ours to remove
        pass


def _append_event(progress: Path, event: dict[str, Any]) -> None:
    """Add one event to a job's progress file, as a trainer writes it."""
    with open(progress, "a") as f:
        f.write(json.dumps({"time": time.time(), **event}) + "\n")
