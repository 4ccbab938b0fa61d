"""A bounded, expiring, thread-safe memo for what one server process shares among its sessions (loaded models).

Streamlit's own resource cache empties whenever any visitor sends a `clear_cache` message on the websocket;
what the server must keep (its job manager, its loaded models and their count limit) lives in a Memo instead,
which only the server's own code can clear.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class Memo(Generic[T]):
    """At most `max_entries` values, each dropped `ttl` seconds after its last use; one build per key at a time."""

    def __init__(self, max_entries: int, ttl: float = float("inf")) -> None:
        self.max_entries, self.ttl = max_entries, ttl
        self._values: OrderedDict[Hashable, tuple[T, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The value for `key`, built by `build()` if absent (others asking for the same key wait for that build)."""
        with self._lock:
            self._expire(time.monotonic())
            if key in self._values:
                return self._use(key)
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._values:  # built by the session we waited for
                    return self._use(key)
            try:
                value = build()
            finally:
                with self._lock:
                    self._building.pop(key, None)
            with self._lock:
                self._values[key] = (value, time.monotonic())
                while len(self._values) > self.max_entries:
                    self._values.popitem(last=False)
            return value

    def clear(self) -> None:
        """Forget every value (the server's own code only: no visitor's message reaches this)."""
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def _use(self, key: Hashable) -> T:
        value, _ = self._values.pop(key)
        self._values[key] = (value, time.monotonic())
        return value

    def _expire(self, now: float) -> None:
        for key in [k for k, (_, used) in self._values.items() if now - used > self.ttl]:
            del self._values[key]
