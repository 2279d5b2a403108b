"""Clocks: the time source of every timer, so tests of timers never sleep.

Owns nothing. Keeps: code that schedules work reads time only through a
Clock; ``mirrorfs.testing.FakeClock`` replaces it in tests.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        return time.time_ns()
