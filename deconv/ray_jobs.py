"""Trainings on a Ray cluster: each job is one Ray actor that runs `deconv.experiment.run`, placed by Ray's scheduler.

deconv.jobs imports this module only when DECONV_JOBS names a cluster, so the local path never imports ray. On a
node, a `Trainer` actor runs the experiment in a thread with a stop Event and keeps its events. On the app server, a
`RemoteTraining` follows it: about once a second it fetches the new events and appends them to the job's progress
file (what the pages read, as for a local job), Stop sets the actor's Event (the trainer stops after its batch and
saves), and a finished run comes back as a zip (`runs.export_zip`, logs included) through `run_import.import_run`,
the checks an uploaded run gets. Actors belong to this server's connection: Ray ends them when it closes or the server dies.

What a cluster sends back is checked before the app uses it, as if a node could be anyone's: only events of the kinds
a trainer sends, with the fields the pages read of the types they read, reach the progress file (others are left out
and counted), within bounds of size; an end of an unknown status ends the job as an error; a run comes back in
parts, no larger in all than an import may be; an answer of another shape ends the job as an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")  # a lost connection must not start a Ray of its own here
import ray  # noqa: E402
from ray.exceptions import GetTimeoutError, RayActorError, RayError  # noqa: E402

import deconv  # noqa: E402
from deconv.config import NUM_CLASSES, ModelConfig, TrainConfig  # noqa: E402
from deconv.cost import describe  # noqa: E402
from deconv.experiment import Event, Experiment, first_line, run  # noqa: E402
from deconv.jobs import MemoryCheck, give_back  # noqa: E402
from deconv.run_import import MAX_IMPORT_BYTES, import_run  # noqa: E402
from deconv.runs import RunError, export_zip  # noqa: E402

CPUS_ENV = "DECONV_RAY_CPUS"  # CPUs one training asks of Ray; its TensorFlow uses as many threads
DEFAULT_CPUS = 2
CONNECT_SECONDS = 3.0  # a cluster address that accepts no connection within this is unreachable
# Ray Client starts a server process for each connection; on a loaded machine that start failed now and then
# ("Initialization failure from server", the forked process dying at once: 1 in 5 tries at load 10 here).
CONNECT_ATTEMPTS = 3
FOLLOW_SECONDS = 1.0  # how often a job's new events are fetched from its actor
WATCH_SECONDS = 5.0  # how often the cluster's nodes are counted
CALL_SECONDS = 60.0  # a cluster that answers no call for this long is taken as lost
ARCHIVE_SECONDS = 600.0  # the most a finished run may take to come back (the article's is 1 GB)
OBJECT_STORE_BYTES = 512 * 2**20  # a LocalCluster's shared memory for objects (runs coming back, mostly)
ARCHIVE_PART_BYTES = 64 * 2**20  # a run comes back in parts of this size, one Ray object each
MAX_EVENT_CHARS = 16_384  # one event from a cluster as JSON: an epoch's, with its confusion matrix, takes about 700
MAX_POLL_EVENTS = 1_000  # events in one answer: a trainer sends a few a second (batches every 0.5 s)
MAX_PROGRESS_BYTES = 32 * 2**20  # what a cluster may write to a job's progress file: a 2-hour training about 4 MB
EVENT_WHOLE = {  # the whole numbers (at least 1) each kind of event a trainer sends must have (deconv.train)
    "start": ("epochs", "batches"), "status": (), "download": (), "batch": ("epoch", "epochs", "batch", "batches"),
    "epoch": ("epoch", "epochs"), "end": (),
}
EVENT_NUMBERS = ("time", "loss", "accuracy", "val_loss", "val_accuracy", "images_per_second", "elapsed", "eta",
                 "seconds", "done", "total", "train_size", "val_size", "params", "replicas", "train_seconds")
EVENT_TEXTS = ("message", "status", "run_dir", "data")
END_STATUSES = ("finished", "stopped", "nan", "cancelled", "error")  # how an experiment ends (experiment.Summary)
PACKAGE = Path(deconv.__file__).resolve().parent  # shipped to the nodes with each connection (Ray's py_modules)


class ClusterUnreachable(Exception):
    """The Ray cluster cannot be reached; the message says which and why."""


def cpus_per_job_from_env(default: int = DEFAULT_CPUS) -> int:
    """DECONV_RAY_CPUS, at least 1; the default if unset or not a whole number."""
    try:
        return max(1, int(os.environ.get(CPUS_ENV, default)))
    except ValueError:
        return default


def _endpoint(address: str) -> tuple[str, int] | None:
    """The host and port an address names (ray://HOST:PORT or HOST:PORT), or None ("auto": Ray looks it up)."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]]+?)\]?:(\d{1,5})", address)
    return (match.group(1), int(match.group(2))) if match else None


def _unreachable(address: str) -> str | None:
    """Why nothing accepts a connection at the address's host and port, or None (Ray's own connect waits 30 s)."""
    endpoint = _endpoint(address)
    if endpoint is None:
        return None
    try:
        with socket.create_connection(endpoint, timeout=CONNECT_SECONDS):
            return None
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__


class Garbled(Exception):
    """A cluster sent an answer of another shape than a trainer's; the message says which."""


def _is_number(value: Any) -> bool:
    """A JSON number (not a bool), or null."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _is_whole(value: Any, low: int) -> bool:
    """A whole number of at least `low` (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def clean_event(event: Any) -> Event | None:
    """An event from a cluster as the progress file may hold it, or None: of a kind a trainer sends, with the whole
    numbers its kind needs, the fields the pages read of their types, at most MAX_EVENT_CHARS as JSON. An end of
    a status no experiment ends with becomes an error end."""
    if not isinstance(event, dict) or not isinstance(event.get("event"), str) or event["event"] not in EVENT_WHOLE:
        return None
    try:
        size = len(json.dumps(event))
    except (TypeError, ValueError, RecursionError):  # not JSON: an object, a circular list, nesting past Python's
        return None
    if size > MAX_EVENT_CHARS or not all(_is_whole(event.get(k), 1) for k in EVENT_WHOLE[event["event"]]):
        return None
    if not (all(_is_number(event.get(k)) for k in EVENT_NUMBERS)
            and all(isinstance(event.get(k, ""), (str, type(None))) for k in EVENT_TEXTS)
            and isinstance(event.get("partial", False), bool)):
        return None
    confusion, labels = event.get("val_confusion"), event.get("labels")
    if confusion is not None and not (isinstance(confusion, list) and len(confusion) == NUM_CLASSES and all(
            isinstance(row, list) and len(row) == NUM_CLASSES and all(_is_whole(n, 0) for n in row)
            for row in confusion)):
        return None
    if labels is not None and not (isinstance(labels, list) and len(labels) == NUM_CLASSES
                                   and all(isinstance(name, str) for name in labels)):
        return None
    if event["event"] == "end" and event.get("status") not in END_STATUSES:
        return {"event": "end", "time": time.time(), "status": "error",
                "message": f"the training on the cluster ended with a status this server does not know "
                           f"({str(event.get('status'))[:40]!r})"}
    return event


def _reason(e: BaseException) -> str:
    """An exception's message on one line, shortened (Ray's own put the cause on the lines after the first)."""
    return " ".join(str(e).split())[:300] or type(e).__name__


class Cluster:
    """This app server's connection to a Ray cluster: its size, counted every few seconds, and the jobs it runs."""

    def __init__(self, address: str, cpus_per_job: int | None = None) -> None:
        self.address = os.environ.get("RAY_ADDRESS", "auto") if address == "auto" else address
        self.where = self.address if self.address != "auto" else "the address Ray finds on this machine"
        self.cpus_per_job = cpus_per_job or cpus_per_job_from_env()
        self.lost = ""  # why the cluster was given up on; empty while it answers
        problem = _unreachable(self.address)
        if problem:
            raise ClusterUnreachable(f"the Ray cluster at {self.where} cannot be reached ({problem})")
        if ray.is_initialized():  # one connection per process: a new manager (a cleared cache) takes it over
            ray.shutdown()
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                ray.init(self.address, runtime_env={"py_modules": [str(PACKAGE)]}, log_to_driver=False,
                         logging_level=logging.WARNING)
                break
            except (ConnectionError, RuntimeError, ValueError, RayError) as e:
                if ray.is_initialized():
                    ray.shutdown()
                if attempt == CONNECT_ATTEMPTS:
                    raise ClusterUnreachable(f"the Ray cluster at {self.where} cannot be reached ({_reason(e)})") \
                        from None
        self.slots, self.largest_memory = 0, 0
        self._count_nodes()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="deconv-ray-cluster", daemon=True)
        self._thread.start()

    def memory_check(self, model_config: ModelConfig, train_config: TrainConfig) -> MemoryCheck:
        """The training's estimated peak memory (deconv.cost) against the largest node's."""
        return MemoryCheck(describe(model_config).train_memory_bytes(train_config), self.largest_memory,
                           "the largest node of the Ray cluster has")

    def submit(self, experiment: Experiment, progress: Path, memory: int) -> RemoteTraining:
        """Send one training to the cluster, asking for cpus_per_job CPUs and `memory` bytes; it waits in Ray's
        queue until a node has them."""
        return RemoteTraining(self, experiment, progress, memory)

    def mark_lost(self, reason: str) -> None:
        """Give the cluster up (the job manager then trains on its own server)."""
        self.lost = self.lost or reason

    def close(self) -> None:
        """Stop counting nodes and close the connection (Ray then ends this server's actors)."""
        self._closing.set()
        self._thread.join(timeout=10)
        if ray.is_initialized():
            ray.shutdown()

    def _count_nodes(self) -> None:
        """Trainings the live nodes can run at once, and the largest node's memory."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        self.slots = sum(int(n.get("CPU", 0) // self.cpus_per_job) for n in nodes)
        self.largest_memory = int(max((n.get("memory", 0) for n in nodes), default=0))

    def _watch(self) -> None:
        """Count the nodes every few seconds; a cluster that stops answering is marked lost."""
        failing_since = 0.0
        while not self._closing.wait(WATCH_SECONDS) and not self.lost:
            if not ray.is_initialized():  # Ray Client closes the connection when it cannot get it back
                self.mark_lost(f"the connection to the Ray cluster at {self.where} was closed")
                return
            try:
                self._count_nodes()
                failing_since = 0.0
            except (ConnectionError, ValueError, RayError) as e:  # Ray Client: ConnectionError once its reconnects
                failing_since = failing_since or time.time()  # fail, ValueError on the channel it closed then
                if not isinstance(e, RayError) or time.time() - failing_since > CALL_SECONDS:
                    self.mark_lost(f"the Ray cluster at {self.where} stopped answering ({_reason(e)})")


@ray.remote(max_restarts=0, max_task_retries=0)
class Trainer:
    """One training on a node: `experiment.run` in a thread with a stop Event; its events wait here for the app."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._folder = Path(tempfile.mkdtemp(prefix="deconv-ray-"))
        self._run_dir: Path | None = None
        self._archive: bytes | None = None
        self._failure = ""

    def start(self, experiment: dict[str, Any], threads: int) -> dict[str, Any]:
        """Begin training (its run is saved in a folder of this node's own); which process and node run it."""
        job = Experiment.from_json({**experiment, "out": str(self._folder / Path(experiment["out"]).name)})
        threading.Thread(target=self._train, args=(job, threads), name="deconv-train", daemon=True).start()
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address()}

    def poll(self) -> dict[str, Any]:
        """The events since the last poll, whether training has ended, and why if it failed."""
        done = self._done.is_set()  # read first: every event sent before the end is in this answer
        with self._lock:
            events, self._events = self._events, []
        return {"events": events, "done": done, "failure": self._failure}

    def stop(self) -> None:
        """Stop after the current batch and save the run as it is."""
        self._stop.set()

    def archive_size(self) -> int:
        """Zip the saved run (once; this node's copy is then deleted) and say its bytes (0: nothing was saved)."""
        if self._archive is None:
            try:
                self._archive = export_zip(self._run_dir) if self._run_dir else b""
            finally:
                shutil.rmtree(self._folder, ignore_errors=True)
        return len(self._archive)

    def archive_part(self, start: int, size: int) -> bytes:
        """`size` bytes of the zipped run from `start` (after archive_size): it comes back in parts."""
        return (self._archive or b"")[start:start + size]

    def _sink(self, event: Event) -> None:
        with self._lock:
            self._events.append({"time": time.time(), **event})

    def _train(self, experiment: Experiment, threads: int) -> None:
        try:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)  # the CPUs Ray gave this job, not the node's
            tf.config.threading.set_inter_op_parallelism_threads(threads)
            self._run_dir = run(experiment, self._sink, self._stop).run_dir
        except Exception as e:  # noqa: BLE001  (a bug must reach the app as an ended job, not die with this thread)
            self._failure = f"the trainer failed on its node: {type(e).__name__}: {first_line(e)}"
        finally:
            self._done.set()


class RemoteTraining:
    """A job on the cluster as the app server sees it: its actor, and the thread that follows it to its end."""

    def __init__(self, cluster: Cluster, experiment: Experiment, progress: Path, memory: int) -> None:
        self.cluster, self.experiment, self.progress, self.memory = cluster, experiment, progress, memory
        self.placed = threading.Event()  # Ray has started its actor on a node
        self.ended = threading.Event()  # followed to the end: its events are in the progress file, its run is back
        self.error = ""  # why it ended without an end event
        self.lost_cluster = ""  # set when the cluster was lost while following it
        self.run_dir: Path | None = None  # where its run was imported
        self.pid, self.node = 0, ""
        self.dropped = 0  # events the cluster sent that were not what a trainer sends, left out
        self._written = 0  # bytes of the cluster's events in the progress file
        self._stop, self._wake = threading.Event(), threading.Event()
        self._cancelled, self._killed = False, ""
        self._actor: Any = None
        self._thread = threading.Thread(target=self._follow, name="deconv-ray-job", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the trainer to stop after its current batch and save."""
        self._stop.set()
        self._wake.set()

    def cancel(self) -> None:
        """Take it out of Ray's queue (or end it, if Ray started it meanwhile); nothing is saved."""
        self._cancelled = True
        self._wake.set()

    def kill(self, why: str) -> None:
        """End its actor now; `why` becomes the job's error."""
        self._killed = why
        self._wake.set()

    def join(self, timeout: float) -> None:
        """Wait for the follower to finish (its run back), at most `timeout` seconds."""
        self._thread.join(timeout)

    def _follow(self) -> None:
        try:
            self._run()
        except Garbled as e:
            self.error = (f"the Ray cluster sent {e}, which no trainer sends; the training was ended and nothing was "
                          "saved")
        except RayActorError as e:
            detail = re.search(r"exit detail: ([^\n]+)", str(e))
            self.error = self._killed or (
                f"the Ray worker training this job{f' on {self.node}' if self.node else ''} died (its process was "
                f"killed, it ran out of memory, or its node was lost{f': {detail.group(1)[:200]}' if detail else ''})"
                "; nothing was saved. Press Train to train it again")
        except (ConnectionError, GetTimeoutError, RayError) as e:
            if isinstance(e, (ConnectionError, GetTimeoutError)) or not ray.is_initialized():
                self.lost_cluster = f"the connection to the Ray cluster at {self.cluster.where} was lost ({_reason(e)})"
                self.error = f"{self.lost_cluster}; nothing was saved. Press Train to train it again on this server"
                self.cluster.mark_lost(self.lost_cluster)
            else:  # its runtime environment could not be set up on the node, say
                self.error = f"the Ray cluster could not run this training: {_reason(e)}"
        finally:
            try:
                self._end_actor()
            finally:
                self.ended.set()

    def _end_actor(self) -> None:
        """Give the actor's CPUs and memory back to Ray at once (Ray ends it anyway when the connection closes)."""
        if self._actor is None or not ray.is_initialized():
            return
        try:
            ray.kill(self._actor)
        except (ConnectionError, ValueError, RuntimeError, RayError) as e:  # gone already, or the connection is
            logging.getLogger(__name__).warning("could not end a Ray actor: %s", first_line(e))

    def _run(self) -> None:
        """Start the actor, wait while Ray queues it, follow its events, bring its run back."""
        if self._cancelled:
            return
        self._actor = Trainer.options(num_cpus=self.cluster.cpus_per_job, memory=max(1, self.memory)).remote()
        started = self._actor.start.remote(self.experiment.to_json(), self.cluster.cpus_per_job)
        while True:  # in Ray's queue until a node has the CPUs and memory
            if self._cancelled or self._killed:
                self.error = self._killed
                return
            try:
                where = ray.get(started, timeout=FOLLOW_SECONDS)
                break
            except GetTimeoutError:
                continue
        if not (isinstance(where, dict) and _is_whole(where.get("pid"), 1) and isinstance(where.get("node"), str)):
            raise Garbled("an answer to its start of another shape")
        self.pid, self.node = where["pid"], where["node"][:100]
        self.placed.set()
        end, asked = None, False
        while True:
            if self._killed or self._cancelled:
                self.error = self._killed or "cancelled"
                return
            if self._stop.is_set() and not asked:
                self._actor.stop.remote()
                asked = True
            news = ray.get(self._actor.poll.remote(), timeout=CALL_SECONDS)
            if not (isinstance(news, dict) and isinstance(news.get("events"), list)
                    and isinstance(news.get("done"), bool) and isinstance(news.get("failure"), str)):
                raise Garbled("an answer of another shape")
            first = self._write(news["events"])
            end = end or first  # the first end counts; any other is left out
            if news["done"]:
                break
            self._wake.wait(FOLLOW_SECONDS)
            self._wake.clear()
        if end is None:
            self.error = news["failure"][:300] or "the trainer on the cluster ended without a result"
            return
        self._append(self._bring_back(end))

    def _bring_back(self, end: Event) -> Event:
        """Import the saved run into the app's runs folder; the end event, naming where it now is."""
        if not end.get("run_dir"):
            return end
        self._append({"event": "status", "message": "bringing the run back from the cluster"})
        wanted = self.experiment.out
        try:
            data = self._fetch_archive()
            give_back(wanted)  # the empty folder that reserved the name: import_run reserves it again, atomically
            self.run_dir = import_run(data, wanted.parent, wanted.name, self.experiment.owner)
        except RunError as e:
            return {"event": "end", "status": "error",
                    "message": f"{end.get('message') or 'trained'}, but the run could not be brought back from the "
                               f"cluster: {e}"}
        return {**end, "run_dir": str(self.run_dir)}

    def _fetch_archive(self) -> bytes:
        """The saved run's zip, in parts of ARCHIVE_PART_BYTES; RunError if it is larger than an import may be or
        comes in parts of other sizes than asked, before more than was asked is taken."""
        deadline = time.monotonic() + ARCHIVE_SECONDS
        size = ray.get(self._actor.archive_size.remote(), timeout=ARCHIVE_SECONDS)
        if not _is_whole(size, 0):
            raise RunError("the cluster gave no size for it")
        if size == 0:
            raise RunError("nothing was saved on the node")
        if size > MAX_IMPORT_BYTES:
            raise RunError(f"it takes {size / 2**30:,.1f} GiB, more than an import may "
                           f"({MAX_IMPORT_BYTES // 2**30} GiB)")
        parts, got = [], 0
        while got < size:
            want = min(ARCHIVE_PART_BYTES, size - got)
            part = ray.get(self._actor.archive_part.remote(got, want), timeout=max(0.0, deadline - time.monotonic()))
            if not isinstance(part, bytes) or len(part) != want:
                raise RunError(f"the cluster sent a part of it of another size than asked ({want:,} bytes)")
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def _write(self, events: list[Any]) -> Event | None:
        """Append the events a trainer sends (`clean_event`) to the progress file, within MAX_POLL_EVENTS and
        MAX_PROGRESS_BYTES, all but the end (held until the run is back); the first end, if any. The rest is left
        out and counted in `dropped`, and the first time the file says so."""
        end, lines, dropped = None, [], max(0, len(events) - MAX_POLL_EVENTS)
        for event in events[:MAX_POLL_EVENTS]:
            clean = clean_event(event)
            line = json.dumps(clean) + "\n" if clean is not None else ""
            if clean is None or (clean["event"] != "end" and self._written + len(line) > MAX_PROGRESS_BYTES):
                dropped += 1
            elif clean["event"] == "end":
                end = end or clean
            else:
                lines.append(line)
                self._written += len(line)
        if dropped and not self.dropped:
            lines.append(json.dumps({"time": time.time(), "event": "status", "message": "the cluster sent events no "
                                     "trainer sends, or more than a training writes: they were left out"}) + "\n")
        self.dropped += dropped
        if lines:
            with open(self.progress, "a") as f:
                f.write("".join(lines))
        return end

    def _append(self, event: Event) -> None:
        """Add one event of the app's own to the progress file."""
        with open(self.progress, "a") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")


class LocalCluster:
    """A one-node Ray cluster on loopback: `ray start --head --block` in its own process group, every port free.

    For the tests, the benchmark and trying the Ray backend on one machine; `close()` ends this cluster's
    processes only (never `ray stop`, which ends every cluster on the machine).
    """

    PORTS = ("dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port", "node-manager-port", "object-manager-port")

    def __init__(self, cpus: int, env: dict[str, str] | None = None, start_seconds: float = 120.0) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="deconv-ray-"))  # short: Ray's socket paths must fit 107 bytes
        gcs, client, *others = _free_ports(2 + len(self.PORTS))
        self.address, self.gcs = f"ray://127.0.0.1:{client}", f"127.0.0.1:{gcs}"
        log = open(self.folder / "ray.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--num-cpus={cpus}",
             "--include-dashboard=false", f"--port={gcs}", f"--ray-client-server-port={client}",
             f"--object-store-memory={OBJECT_STORE_BYTES}",
             f"--temp-dir={self.folder / 'ray'}", "--disable-usage-stats",
             *(f"--{name}={port}" for name, port in zip(self.PORTS, others))],
            env={**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {}), "RAY_USAGE_STATS_ENABLED": "0"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # loopback only: no token needed
        log.close()
        deadline = time.time() + start_seconds
        while _unreachable(self.address):  # its client server listens last
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"the local Ray cluster did not start: {self.log()[-3000:]}")
            time.sleep(0.5)

    def log(self) -> str:
        """What `ray start` printed."""
        try:
            return (self.folder / "ray.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """End the cluster: its head's process group (the workers end with their raylet), then its files."""
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # what did not end by itself
        except ProcessLookupError:
            pass
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _free_ports(n: int) -> list[int]:
    """n loopback ports nothing listens on now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
