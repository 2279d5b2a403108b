"""Helpers for tests of mirrorfs and of programs that use it (like ``trio.testing``)."""

from ._cli import MIRRORFS as MIRRORFS
from ._cli import run_cli as run_cli
from ._cli import wait_for as wait_for
from ._clock import FakeClock as FakeClock
from ._nbdkit import NbdkitFailed as NbdkitFailed
from ._nbdkit import NbdkitServer as NbdkitServer
from ._nbdkit import free_port as free_port
from ._nbdkit import start_nbdkit as start_nbdkit
from ._plexes import CountingPlex as CountingPlex
from ._plexes import FaultyPlex as FaultyPlex
from ._plexes import Op as Op
from ._plexes import RecordingPlex as RecordingPlex
from ._plexes import apply_ops as apply_ops
