"""The buffered file objects of ``Volume.open_file`` against the built-in ``open``.

``open_file`` hands large ``bytes`` writes to the raw file past the buffer,
so the store keeps their blocks without a copy (``volume._PassingWrites``). The
file object must not tell the difference: any sequence of writes (small and
large, bytes and bytearray), seeks, reads, tells and flushes gives the same
results and the same file as the same calls on a file of the host.
"""

from __future__ import annotations

import io
import itertools
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mirrorfs.volume import PASS_BYTES_MIN, Volume

BS = 4096
LARGE = PASS_BYTES_MIN + BS + 17

_names = itertools.count()

sizes = st.one_of(st.integers(0, 3 * BS), st.integers(PASS_BYTES_MIN - 1, LARGE))
ops = st.one_of(
    st.tuples(st.just("write"), sizes, st.booleans()),  # (op, size, as bytes)
    st.tuples(st.just("seek"), st.integers(0, 2 * LARGE), st.sampled_from([0, 1, 2])),
    st.tuples(st.just("read"), st.integers(-1, LARGE), st.just(False)),
    st.tuples(st.just("flush"), st.just(0), st.just(False)),
)


def _apply(f: Any, op: tuple[str, int, bool], k: int) -> Any:
    """One call on a file object; returns what the caller can see of it."""
    name, n, flag = op
    if name == "write":
        data = bytes([k % 251 + 1]) * n
        return f.write(data if flag else bytearray(data)), f.tell()
    if name == "seek":
        whence = int(flag)
        off = n if whence == 0 else n // 3 - LARGE // 2
        try:
            return f.seek(off, whence)
        except OSError as e:  # a negative position, refused by both
            return ("OSError", e.errno)
    if name == "read":
        return f.read(n), f.tell()
    f.flush()
    return f.tell()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=st.sampled_from(["wb", "w+b", "r+b"]), seed=st.binary(max_size=3 * BS),
       calls=st.lists(ops, max_size=12))
def test_any_calls_match_a_host_file(volume: Volume, tmp_path: Path, mode: str,
                                     seed: bytes, calls: list[tuple[str, int, bool]]) -> None:
    path = f"/f{next(_names)}"
    host = tmp_path / path[1:]
    volume.write_bytes(path, seed)
    host.write_bytes(seed)
    with volume.open_file(path, mode) as ours, open(host, mode) as theirs:
        for k, op in enumerate(calls):
            if op[0] == "read" and "+" not in mode and "r" not in mode:
                continue
            assert _apply(ours, op, k) == _apply(theirs, op, k), (k, op)
    assert volume.read_bytes(path) == host.read_bytes()


def test_a_large_bytes_write_is_kept_without_a_copy(volume: Volume) -> None:
    """The blocks of a large ``bytes`` write are views of that object until the CP."""
    data = os.urandom(1 << 20)
    with volume.open_file("/v", "wb") as f:
        f.write(b"head")  # buffered first: it must land before the large write
        f.write(data)
        ino = volume.stat("/v").ino
        tree = volume.store.objects.tree(ino)
        whole = [leaf for lb, leaf in tree.dirty.items() if lb >= 1]
        assert len(whole) == len(data) // BS  # blocks 1..255 whole, 256 partial
        views = [leaf for leaf in whole if isinstance(leaf, memoryview)]
        assert len(views) == len(whole) - 1 and all(v.obj is data for v in views)
    assert volume.read_bytes("/v") == b"head" + data


@pytest.mark.parametrize("mode", ["ab", "a+b"])
def test_a_large_write_in_append_mode_lands_at_the_end(volume: Volume, mode: str) -> None:
    """In append mode a large write goes to the end wherever the position was, and the
    position follows it (CPython's own buffer, for small writes, needs a flush first)."""
    volume.write_bytes("/log", b"start\n")
    big = b"x" * LARGE
    with volume.open_file("/log", mode) as f:
        f.seek(0)
        f.write(b"small\n")
        f.seek(0)
        assert f.write(big) == LARGE
        assert f.tell() == len(b"start\nsmall\n") + LARGE
    assert volume.read_bytes("/log") == b"start\nsmall\n" + big


def test_text_mode_large_writes(volume: Volume) -> None:
    """Text mode encodes to bytes and writes through the same object."""
    text = "ünïcode line\n" * 20_000
    with volume.open_file("/t", "w") as f:
        f.write("first\n")
        f.write(text)
    with volume.open_file("/t", "r") as f:
        assert f.read() == "first\n" + text
    with volume.open_file("/t", "rb") as b:
        assert isinstance(b, io.BufferedReader)


@pytest.mark.parametrize("mode", ["wb", "w+b"])
def test_threads_writing_one_file_object_lose_nothing(volume: Volume, mode: str) -> None:
    """Writes from several threads, large and small, each land whole: a passed write is
    several calls on the buffered object, and no other write may slip between them."""
    pieces = {k: (bytes([65 + k]) * LARGE, bytes([65 + k]) * 1000) for k in range(4)}

    def writer(f: Any, k: int) -> None:
        big, small = pieces[k]
        for i in range(60):
            f.write(big if i % 3 == 0 else small)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often, so a gap inside a write is met
    try:
        with volume.open_file("/shared", mode) as f:
            threads = [threading.Thread(target=writer, args=(f, k)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        sys.setswitchinterval(switch)
    data = volume.read_bytes("/shared")
    each = 20 * LARGE + 40 * 1000
    assert len(data) == 4 * each
    assert [data.count(bytes([65 + k])) for k in range(4)] == [each] * 4
