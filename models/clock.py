"""The session's media clock.

Every message carries a timestamp in milliseconds on one clock per session. Anything that
paces, measures or times out takes a clock as a parameter, so tests can run in virtual time.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Milliseconds since the session started."""

    def now_ms(self) -> float: ...


class MediaClock:
    """Monotonic wall clock anchored at the session's start."""

    def __init__(self, start_ns: int | None = None) -> None:
        self._start_ns = time.monotonic_ns() if start_ns is None else start_ns

    def now_ms(self) -> float:
        return (time.monotonic_ns() - self._start_ns) / 1e6


class ManualClock:
    """A clock that moves only when told to: for deterministic tests and offline rendering."""

    def __init__(self, start_ms: float = 0.0) -> None:
        self._now_ms = start_ms

    def now_ms(self) -> float:
        return self._now_ms

    def advance(self, ms: float) -> None:
        if ms < 0:
            raise ValueError("a clock never goes back")
        self._now_ms += ms
