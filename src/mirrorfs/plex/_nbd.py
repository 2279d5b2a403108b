"""NbdPlex: a plex on an NBD export (nbdkit, qemu-nbd), named ``nbd://host[:port]/export``.

Owns one libnbd handle and the lock that guards it. Keeps: every request is at
most ``MAX_REQUEST`` bytes (and at most the server's advertised maximum), no
call waits longer than its timeout, and every libnbd failure leaves as
PlexError (cannot open) or PlexIOError (cannot read, write or flush) naming
the plex, so a vanished or hung server makes the mirror drop this plex
instead of crashing or hanging the volume.

Requests. A read or write is cut into requests of at most ``MAX_REQUEST``
bytes. A read's requests are all issued at once and awaited together, so a
large extent costs one round trip plus its transfer time. A write's come in
windows of WRITE_WINDOW requests: a request made of several buffers (a CP's
blocks) is first copied into one of WRITE_WINDOW staging buffers that the
plex keeps, and a window is awaited before its buffers take the next one.
Joining into a fresh buffer per request instead made every copy fault in
new pages: on this VM, whose host backs memory lazily, an 8 MiB join took
30 ms and two NBD plexes spent 6-9 s of CPU per GiB written where one spent
2. Requests go out in offset order on one connection, but the server may
complete them in any order: writes that overlap must not be given in one
``writev`` (they never are: a CP writes each block once).

Durability. A write that returns has reached the server; ``flush`` sends NBD
FLUSH, after which the server has made it durable. A server that cannot flush
but honours FUA gets every write with FUA instead; one that offers neither
gives no durability guarantee, and we log a warning when connecting.

Timeouts. Connecting waits at most ``CONNECT_TIMEOUT_S``; each batch of
requests waits at most ``IO_TIMEOUT_S`` for its replies. On an I/O timeout
the connection is dropped (its requests are abandoned) and every later call
raises PlexIOError: the plex is gone until it is opened again.

Locking. ``_lock`` guards ``_h``; it is a leaf lock, held for the whole of
one call (so a batch's requests never interleave with another caller's).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import nbd

from ..errors import PlexError, PlexIOError
from ._base import Buffer, check_read, read_by_readinto

log = logging.getLogger(__name__)

DEFAULT_PORT = 10809  # the NBD port registered with IANA
MAX_REQUEST = 8 * 1024 * 1024  # most bytes per NBD request (see "Requests")
WRITE_WINDOW = 4  # write requests in flight at once, each with its staging buffer
CONNECT_TIMEOUT_S = 10.0  # most seconds for the TCP connect and NBD handshake
IO_TIMEOUT_S = 60.0  # most seconds to wait for the replies to one read, write or flush


def parse_nbd_spec(spec: str) -> tuple[str, int, str]:
    """Split ``nbd://host[:port]/export`` into (host, port, export); PlexError if malformed."""
    try:
        u = urlsplit(spec)
        port = u.port
    except ValueError as e:
        raise PlexError(spec, f"not a valid nbd://host[:port]/export address: {e}") from None
    if u.scheme != "nbd":
        raise PlexError(spec, "not an nbd://host[:port]/export address")
    if not u.hostname:
        raise PlexError(spec, "no host in the address (use nbd://host[:port]/export)")
    if u.username is not None or u.query or u.fragment:
        raise PlexError(spec, "only nbd://host[:port]/export is supported (no user, ?query, #)")
    export = unquote(u.path[1:] if u.path.startswith("/") else u.path)
    return u.hostname, DEFAULT_PORT if port is None else port, export


def _why(e: Exception) -> str:
    """libnbd's message without the name of the libnbd call ("nbd_pread: ...")."""
    text = str(e)
    head, sep, rest = text.partition(": ")
    return rest if sep and head.startswith("nbd_") else text


class NbdPlex:
    """A plex on an NBD export, reached over TCP."""

    read_ahead = True  # no cache below us: the mirror reads ahead (``Plex.read_ahead``)

    def __init__(self, spec: str, *, read_only: bool = False) -> None:
        self.spec = spec
        self.read_only = read_only
        host, port, export = parse_nbd_spec(spec)
        self._lock = threading.Lock()
        self._gone = ""  # why the connection was dropped, once it was
        h = nbd.NBD()
        try:
            h.set_export_name(export)
            h.set_pread_initialize(False)  # we raise on a failed read, never return its buffer
            h.aio_connect_tcp(host, str(port))
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while not h.aio_is_ready():
                if h.aio_is_dead() or h.aio_is_closed():
                    raise PlexError(spec, f"cannot connect to {spec}: the server hung up")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PlexError(
                        spec, f"cannot connect to {spec}: no answer in {CONNECT_TIMEOUT_S:g} s"
                    )
                h.poll(max(1, int(left * 1000)))
            self._size = int(h.get_size())
            server_ro = bool(h.is_read_only())
            self._can_flush = bool(h.can_flush())
            self._write_flags = nbd.CMD_FLAG_FUA if not self._can_flush and h.can_fua() else 0
            server_max = int(h.get_block_size(nbd.SIZE_MAXIMUM))
        except nbd.Error as e:
            raise PlexError(spec, f"cannot connect to {spec}: {_why(e)}") from None
        if server_ro and not read_only:
            _disconnect(h)
            raise PlexError(spec, "the server exports it read-only; open the plex read-only")
        self._max = min(MAX_REQUEST, server_max) if server_max > 0 else MAX_REQUEST
        if not read_only and not self._can_flush and not self._write_flags:
            log.warning(
                "%s: the server offers neither FLUSH nor FUA; writes may not be durable", spec
            )
        self._h: Any = h  # nbd.NBD; None once closed or dropped
        self._staging: list[bytearray] = []  # write requests' staging buffers (WRITE_WINDOW)

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        return read_by_readinto(self, offset, length)

    def readinto(self, offset: int, buf: memoryview) -> None:
        length = len(buf)
        check_read(self.spec, offset, length, self._size)
        if length == 0:
            return
        what = f"reading {length} bytes at {offset}"
        with self._lock:
            h = self._handle(what)
            bufs = []
            cookies = []
            try:
                for start in range(0, length, self._max):
                    nb = nbd.Buffer.from_buffer(buf[start : start + self._max])
                    bufs.append(nb)  # libnbd writes into it until the reply comes
                    cookies.append(h.aio_pread(nb, offset + start))
            except nbd.Error as e:
                self._wait(h, cookies, what)
                raise PlexIOError(self.spec, f"{what}: {_why(e)}") from None
            self._wait(h, cookies, what)

    def writev(self, offset: int, bufs: Sequence[Buffer]) -> None:
        if self.read_only:
            raise PlexIOError(self.spec, "write to a plex opened read-only")
        total = sum(memoryview(b).nbytes for b in bufs)
        if offset < 0 or offset + total > self._size:
            raise PlexIOError(self.spec, f"write past the end ({offset + total} > {self._size})")
        if total == 0:
            return
        what = f"writing {total} bytes at {offset}"
        groups = _requests(bufs, self._max)
        with self._lock:
            h = self._handle(what)
            pos = offset
            for w0 in range(0, len(groups), WRITE_WINDOW):
                keep = []
                cookies = []
                try:
                    for k, group in enumerate(groups[w0 : w0 + WRITE_WINDOW]):
                        data = self._staged(group, k)
                        buf = nbd.Buffer.from_buffer(data)
                        keep.append(buf)  # libnbd reads from it until the reply comes
                        cookies.append(h.aio_pwrite(buf, pos, flags=self._write_flags))
                        pos += data.nbytes
                except nbd.Error as e:
                    self._wait(h, cookies, what)
                    raise PlexIOError(self.spec, f"{what}: {_why(e)}") from None
                self._wait(h, cookies, what)

    def _staged(self, group: list[memoryview], k: int) -> memoryview:
        """One request's bytes: its one buffer, or its buffers copied into staging buffer k.

        Caller holds ``_lock``: a staging buffer is reused only once the
        window that used it has been awaited.
        """
        if len(group) == 1:
            return group[0]
        while len(self._staging) <= k:
            self._staging.append(bytearray(self._max))
        out = memoryview(self._staging[k])
        at = 0
        for part in group:
            out[at : at + part.nbytes] = part
            at += part.nbytes
        return out[:at]

    def flush(self) -> None:
        if self.read_only or not self._can_flush:
            return
        with self._lock:
            h = self._handle("flush")
            try:
                cookie = h.aio_flush()
            except nbd.Error as e:
                raise PlexIOError(self.spec, f"flush: {_why(e)}") from None
            self._wait(h, [cookie], "flush")

    def close(self) -> None:
        with self._lock:
            h, self._h = self._h, None
            if not self._gone:
                self._gone = "the plex is closed"
        if h is not None:
            _disconnect(h)

    def _handle(self, what: str) -> Any:
        """The live handle; PlexIOError if it was closed, dropped, or the server hung up."""
        h = self._h
        if h is None:
            raise PlexIOError(self.spec, f"{what}: {self._gone}")
        if h.aio_is_closed() or h.aio_is_dead():
            self._h = None  # freeing the handle closes its socket
            self._gone = "the NBD server closed the connection"
            raise PlexIOError(self.spec, f"{what}: {self._gone}")
        return h

    def _wait(self, h: Any, cookies: list[int], what: str) -> None:
        """Retire every request in ``cookies``; PlexIOError naming the first failure.

        Waits for all of them even after one fails, so that no request is left
        in flight with a buffer the caller may reuse. Caller holds ``_lock``.
        """
        deadline = time.monotonic() + IO_TIMEOUT_S
        pending = list(cookies)
        failure = ""
        while pending:
            still = []
            for cookie in pending:
                try:
                    if not h.aio_command_completed(cookie):
                        still.append(cookie)
                except nbd.Error as e:
                    failure = failure or _why(e)
            pending = still
            if not pending:
                break
            if h.aio_is_closed() or h.aio_is_dead():
                # libnbd fails the requests of a dead connection, and the
                # pass above has retired them; nothing more will come.
                failure = failure or "the NBD server closed the connection"
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self._h = None  # abandons the requests; freeing the handle closes its socket
                self._gone = f"no reply from the NBD server in {IO_TIMEOUT_S:g} s; dropped it"
                raise PlexIOError(self.spec, f"{what}: {self._gone}")
            try:
                h.poll(max(1, int(left * 1000)))
            except nbd.Error as e:  # the connection is broken: drop it
                self._h = None
                self._gone = f"connection dropped after an error: {_why(e)}"
                raise PlexIOError(self.spec, f"{what}: {_why(e)}") from None
        if failure:
            raise PlexIOError(self.spec, f"{what}: {failure}")

    def __repr__(self) -> str:
        return f"NbdPlex({self.spec!r})"


def _requests(bufs: Sequence[Buffer], limit: int) -> list[list[memoryview]]:
    """The bytes of ``bufs`` cut into requests of at most ``limit`` bytes, as lists of views.

    Every request but the last holds exactly ``limit`` bytes. Whole buffers
    are grouped by their lengths alone, so a CP's thousands of blocks cost
    one view each; only a buffer that straddles a request boundary is cut.
    """
    out: list[list[memoryview]] = []
    group: list[memoryview] = []
    size = 0
    for b in bufs:
        mv = memoryview(b).cast("B")
        n = mv.nbytes
        if n == 0:
            continue
        if size + n <= limit:
            group.append(mv)
            size += n
            if size == limit:
                out.append(group)
                group, size = [], 0
            continue
        while mv:  # straddles: cut it
            take = mv[: limit - size]
            group.append(take)
            size += len(take)
            mv = mv[len(take) :]
            if size == limit:
                out.append(group)
                group, size = [], 0
    if group:
        out.append(group)
    return out


def _disconnect(h: Any) -> None:
    """Tell the server we leave, waiting at most a moment; never raises."""
    try:
        if h.aio_is_ready():
            h.aio_disconnect(0)
            deadline = time.monotonic() + 2.0
            while not (h.aio_is_closed() or h.aio_is_dead()) and time.monotonic() < deadline:
                h.poll(100)
    except nbd.Error:
        pass  # the handle is freed by our caller, which closes its socket
