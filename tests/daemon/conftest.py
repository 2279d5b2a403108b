"""What every test through a real mount needs: FUSE on this machine."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture
def need_fuse() -> None:
    """Skip, naming what this machine lacks, when a FUSE mount cannot be made here."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("this machine lacks /dev/fuse (the FUSE kernel device)")
    if shutil.which("fusermount3") is None:
        pytest.skip("this machine lacks fusermount3 (Debian fuse3; make test installs it)")
