"""What the pages compute on a run for their visitors (answers, feature maps, projections, top patches): each value
kept per key, the light ones computed in the page's own thread, the heavy ones in one worker thread while the page
shows their progress.

The values live here, not in Streamlit's caches: any visitor can empty those with a `clear_cache` message on the
websocket, and every heavy value (up to a minute of CPU by cost.PAGE_SECONDS and PATCH_SECONDS) would then be
computed again for whoever asks next. One Computations is shared by all the sessions of a server on purpose: a value
one visitor's page computed serves the next one, and its one worker computes one heavy task at a time, so that the
pages of every visitor together keep at most one computation of that size running. A task nobody has asked about for
`abandon_after` seconds (its page was closed or moved on) stops at its next step.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np

Progress = Callable[[float], None]  # told the share done (0 to 1); raises Abandoned once nobody waits for the task
Compute = Callable[[list[int], Progress], Iterable[tuple[int, Any]]]  # missing positions -> (position, value)...

MAX_BYTES = 256 << 20  # the kept values' arrays (a look inside one image of a 14-block network holds about 4 MB)
ABANDON_SECONDS = 30.0  # a page asks every second while it waits; a hidden browser tab may ask less often


class Abandoned(Exception):
    """Nobody asked for a task for `abandon_after` seconds: it stops."""


@dataclass(frozen=True)
class Failed:
    """What a heavy task raised instead of computing a key's value: kept in its place, so it is said once."""

    error: Exception


@dataclass
class Task:
    """A heavy computation in the worker thread: how far it got (its values are kept under their keys as they come)."""

    keys: tuple[Hashable, ...]
    compute: Callable[[Progress], Iterable[tuple[Hashable, Any]]] = field(repr=False)  # yields (key, value)...
    fraction: float = 0.0
    started: bool = False
    asked: float = field(default_factory=time.monotonic)
    finished: threading.Event = field(default_factory=threading.Event)

    def ask(self) -> None:
        """A page still waits for it."""
        self.asked = time.monotonic()


def digest(array: np.ndarray) -> str:
    """A short fingerprint of an array's bytes, to key a value computed from it (an image the model sees)."""
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).hexdigest()


def nbytes(value: Any) -> int:
    """About how many bytes a value holds: its arrays, in dataclasses, lists, tuples and dicts (a few hundred else)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if is_dataclass(value) and not isinstance(value, type):
        return 256 + sum(nbytes(getattr(value, f.name)) for f in fields(value))
    if isinstance(value, (list, tuple)):
        return 64 + sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return 64 + sum(nbytes(v) for v in value.values())
    return 256


def in_chunks(compute: Callable[[list[int]], list[Any]], size: int) -> Compute:
    """A Compute that takes the missing positions `size` at a time (one predict call each), telling the progress."""
    def run(positions: list[int], progress: Progress) -> Iterator[tuple[int, Any]]:
        for start in range(0, len(positions), size):
            chunk = positions[start:start + size]
            yield from zip(chunk, compute(chunk))
            progress((start + len(chunk)) / len(positions))
    return run


def alone(compute: Callable[[Progress], Any]) -> Compute:
    """A Compute for one value that tells its own progress."""
    def run(positions: list[int], progress: Progress) -> Iterator[tuple[int, Any]]:
        yield positions[0], compute(progress)
    return run


def _quiet(fraction: float) -> None:
    """The progress of a light computation: nobody watches it."""


class Computations:
    """Values kept per key (least recently used dropped beyond `max_bytes`), and one worker thread for heavy tasks."""

    def __init__(self, max_bytes: int = MAX_BYTES, abandon_after: float = ABANDON_SECONDS) -> None:
        self.max_bytes, self.abandon_after = max_bytes, abandon_after
        self._values: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._tasks: dict[Hashable, Task] = {}  # the unfinished task of each key it computes
        self._queue: queue.Queue[Task | None] = queue.Queue()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def get(self, keys: Sequence[Hashable], compute: Compute, heavy: bool) -> tuple[list[Any], list[Task]]:
        """The value of each key: kept ones at once; the missing ones (their positions in `keys` go to `compute`)
        computed here when light, or by the worker when heavy. Then the tasks computing them are returned, and their
        values are None until kept; a value is a Failed when its heavy task raised instead."""
        with self._lock:
            values = [self._use(k) for k in keys]
            waiting = {id(t): t for k, v in zip(keys, values) if v is None and (t := self._tasks.get(k)) is not None}
            missing = [i for i, k in enumerate(keys) if values[i] is None and k not in self._tasks]
            if missing and heavy:
                task = Task(tuple(keys[i] for i in missing), self._by_key(keys, missing, compute))
                self._tasks.update(dict.fromkeys(task.keys, task))
                waiting[id(task)] = task
                self._queue.put(task)
                self._start_worker()
            for task in waiting.values():
                task.ask()
        if missing and not heavy:
            for i, value in compute(missing, _quiet):
                values[i] = value
                self._keep(keys[i], value)
        return values, list(waiting.values())

    def wait(self, timeout: float) -> bool:
        """Whether every task asked for so far finished within `timeout` seconds (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            tasks = list({id(t): t for t in self._tasks.values()}.values())
        return all(task.finished.wait(max(0.0, deadline - time.monotonic())) for task in tasks)

    def clear(self) -> None:
        """Forget every kept value (the server's own code: no visitor's message reaches this)."""
        with self._lock:
            self._values.clear()
            self._bytes = 0

    def close(self) -> None:
        """Stop the worker once its task is done (tasks still waiting are left)."""
        with self._lock:
            if self._worker is not None:
                self._queue.put(None)
                self._worker = None

    @staticmethod
    def _by_key(keys: Sequence[Hashable], missing: list[int],
                compute: Compute) -> Callable[[Progress], Iterator[tuple[Hashable, Any]]]:
        """A task's computation: `compute` of the missing positions, each value with its key."""
        def run(progress: Progress) -> Iterator[tuple[Hashable, Any]]:
            for i, value in compute(missing, progress):
                yield keys[i], value
        return run

    def _use(self, key: Hashable) -> Any:
        """The kept value of key, now the most recently used; None if none (the lock held)."""
        if key not in self._values:
            return None
        self._values.move_to_end(key)
        return self._values[key][0]

    def _keep(self, key: Hashable, value: Any) -> None:
        """Keep a value, dropping the least recently used beyond max_bytes."""
        size = nbytes(value)
        with self._lock:
            if key in self._values:
                self._bytes -= self._values.pop(key)[1]
            self._values[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._values) > 1:
                self._bytes -= self._values.popitem(last=False)[1][1]

    def _start_worker(self) -> None:
        """Start the worker thread if it is not running (the lock held)."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="deconv-computations", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        """The worker: one task at a time, until close()."""
        while (task := self._queue.get()) is not None:
            self._run(task)

    def _run(self, task: Task) -> None:
        """Compute a task's values and keep them as they come; on an error keep a Failed for those still missing."""
        def progress(fraction: float) -> None:
            task.fraction = fraction
            if time.monotonic() - task.asked > self.abandon_after:
                raise Abandoned

        kept: set[Hashable] = set()
        try:
            progress(0.0)
            task.started = True
            for key, value in task.compute(progress):
                self._keep(key, value)
                kept.add(key)
        except Abandoned:
            pass  # its values so far are kept; a page that asks again starts a task for the others
        except Exception as e:  # any error of the computation (TensorFlow's too): the page shows it, the worker lives
            for key in task.keys:
                if key not in kept:
                    self._keep(key, Failed(e))
        finally:
            with self._lock:
                for key in task.keys:
                    if self._tasks.get(key) is task:
                        del self._tasks[key]
            task.finished.set()
