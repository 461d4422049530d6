"""The server's clock, injectable so tests can cross midnight and month ends."""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to (thread-safe: tests run the
    server on another thread)."""

    def __init__(self, start_ms: int) -> None:
        self._ms = start_ms
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            return self._ms

    def set_ms(self, ms: int) -> None:
        with self._lock:
            self._ms = ms

    def advance_s(self, seconds: float) -> None:
        with self._lock:
            self._ms += int(seconds * 1000)
