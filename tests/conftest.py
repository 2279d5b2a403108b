"""Shared test fixtures.

A test fails if mirrorfs logs a WARNING or worse that the test did not
declare with ``expect_log`` (like s3ql's pytest_checklogs): a warning nobody
expected is a bug nobody saw.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from mirrorfs.testing import NbdkitFailed, NbdkitServer, start_nbdkit
from mirrorfs.volume import Volume

# CI replays the same examples every run (a red CI must mean a change broke
# something); local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


class _Expected:
    def __init__(self) -> None:
        self.patterns: list[re.Pattern[str]] = []

    def __call__(self, pattern: str) -> None:
        """Declare that a warning or error matching ``pattern`` is expected."""
        self.patterns.append(re.compile(pattern))


@pytest.fixture(autouse=True)
def expect_log(caplog: pytest.LogCaptureFixture) -> Iterator[_Expected]:
    expected = _Expected()
    caplog.set_level(logging.WARNING, logger="mirrorfs")
    yield expected
    records = caplog.get_records("setup") + caplog.get_records("call") + caplog.records
    unexpected = [
        r for r in records
        if r.name.startswith("mirrorfs") and r.levelno >= logging.WARNING
        and not any(p.search(r.getMessage()) for p in expected.patterns)
    ]
    if unexpected:
        lines = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in unexpected)
        pytest.fail(f"unexpected log records:\n{lines}")


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Volume]:
    """A fresh one-plex volume of 256 MiB on an image file, no CP timer."""
    vol = Volume.create([str(tmp_path / "p0.img")], 256 << 20,
                        volume_file=tmp_path / "v.toml", cp_interval=None)
    try:
        yield vol
    finally:
        vol.close()


@pytest.fixture
def nbdkit(tmp_path: Path) -> Iterator[Callable[..., NbdkitServer]]:
    """Start nbdkit servers on loopback: ``nbdkit(*args)``; all are killed at the end."""
    if shutil.which("nbdkit") is None:
        pytest.skip("this machine lacks nbdkit (Debian package nbdkit)")
    servers: list[NbdkitServer] = []

    def start(*args: str) -> NbdkitServer:
        try:
            server = start_nbdkit(tmp_path, *args)
        except NbdkitFailed as e:
            pytest.fail(str(e))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
