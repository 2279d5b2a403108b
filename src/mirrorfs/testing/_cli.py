"""Running the ``mirrorfs`` command and waiting for what it starts, as tests do.

Owns nothing. The command runs as ``python -m mirrorfs`` of the interpreter
running the tests, so a test sees the code under test, not an installed copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MIRRORFS = [sys.executable, "-m", "mirrorfs"]


def run_cli(*args: str | os.PathLike[str], timeout: float = 120, cwd: Path | None = None,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``mirrorfs ARGS...``, its output captured; never raises on a non-zero exit."""
    return subprocess.run([*MIRRORFS, *map(str, args)], capture_output=True, timeout=timeout,
                          cwd=cwd, input=input)


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "it",
             interval: float = 0.05) -> None:
    """Poll ``cond`` until it holds; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
