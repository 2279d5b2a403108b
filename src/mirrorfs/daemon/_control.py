"""The daemon's control socket and its snapshot timer: a mounted volume's own commands.

Owns the Unix socket of one mount (``mount-<hash>.sock`` next to its state
file), the protocol spoken on it, both ends of that protocol, and the timer
that takes and prunes scheduled snapshots. Keeps: while a volume is
mounted, ``status``, ``snapshot create|delete|list``, ``resync``, ``scrub``
and ``plex ...`` reach its plexes only through the daemon that holds them;
no request can take the daemon down (whatever a handler meets becomes an
error reply), and the timer deletes only snapshots of kind ``scheduled``.

Protocol. One request per connection: the client sends one JSON object
``{"command": NAME, "args": {...}}`` and shuts down its writing side; the
daemon answers with one JSON object, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": MESSAGE, "exit_code": N}``, and closes. The
result is the very document the offline command prints with ``--json``,
so the command prints the same either way.

Threads. The socket is served by a thread of its own, and each request runs
in a thread of its own, never on the trio thread: a resync or a scrub takes
minutes, and FUSE requests go on meanwhile. Every ``Volume`` call takes the
store lock itself, so the control threads, the FUSE handlers, the CP timer
and the snapshot timer interleave at its grain.

Access. The socket is created mode 0600 in the 0700 runtime directory, and
each connection's peer credentials are checked as well: only root and the
daemon's own user are served.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import MirrorfsError, UsageError
from ..ondisk import SnapKind, SnapshotRecord
from ..store._clock import Clock, SystemClock
from ..volume import Volume, parse_size

log = logging.getLogger("mirrorfs.daemon")

REQUEST_MAX_BYTES = 1 << 16  # largest request a client may send
CLIENT_TIMEOUT_S = 5.0  # most seconds a client waits to connect and send
STOP_WAIT_S = 60.0  # most seconds an unmount waits for running control requests
SCHEDULE_MIN_S = 1.0  # shortest --snapshot-every
SCHEDULE_TICK_S = 0.25  # how often the snapshot timer looks at its clock (seconds)
SCHED_PREFIX = "sched-"


class ControlUnavailable(MirrorfsError):
    """the daemon of {0} does not answer on its control socket {1}: {2}"""

    exit_code = 1


def socket_path(state_file: Path) -> Path:
    """The control socket of a mount: its state file with the suffix ``.sock``."""
    return state_file.with_suffix(".sock")


# -- the client ----------------------------------------------------------------------


def request(path: str | os.PathLike[str], command: str, args: dict[str, Any] | None = None,
            *, mountpoint: str = "?", timeout: float | None = None) -> dict[str, Any]:
    """Send one request and return the daemon's reply document.

    Raises ``ControlUnavailable`` when nothing answers; the reply's own
    ``ok: false`` is returned as it is (the caller turns it into its error).
    ``timeout`` bounds the wait for the reply (None: as long as the command runs).
    """
    data = json.dumps({"command": command, "args": args or {}}).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(CLIENT_TIMEOUT_S)
            s.connect(os.fspath(path))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(timeout)
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
    except OSError as e:
        raise ControlUnavailable(mountpoint, path, e.strerror or str(e)) from None
    try:
        reply = json.loads(b"".join(chunks).decode())
    except ValueError:
        raise ControlUnavailable(mountpoint, path, "the reply is not JSON (did the daemon "
                                                   "end mid-request? see its log)") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlUnavailable(mountpoint, path, f"unexpected reply {reply!r:.80}")
    return reply


# -- the server ----------------------------------------------------------------------

Handler = Callable[[Volume, dict[str, Any]], Any]


class ControlServer:
    """Serves the control socket of one mounted volume until ``stop``."""

    def __init__(self, vol: Volume, path: Path, handlers: dict[str, Handler] | None = None
                 ) -> None:
        self.vol = vol
        self.path = path
        self.handlers = handlers if handlers is not None else HANDLERS
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._running: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):  # one a killed daemon left: ours now
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s", self.path)

    def stop(self, wait: float = STOP_WAIT_S) -> None:
        """Stop accepting, wait (boundedly) for requests under way, remove the socket."""
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5.0)
        deadline = time.monotonic() + wait
        with self._lock:
            running = list(self._running)
        if running:
            log.info("waiting for %d control request(s) to finish", len(running))
        for t in running:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.warning("a control request (%s) is still running at unmount", t.name)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                time.sleep(0.1)
                continue
            t = threading.Thread(target=self._serve_one, args=(conn,), name="control-request",
                                 daemon=True)
            with self._lock:
                self._running.add(t)
            t.start()

    def _serve_one(self, conn: socket.socket) -> None:
        try:
            with conn:
                reply = self._answer(conn)
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply, default=str).encode())
        finally:
            with self._lock:
                self._running.discard(threading.current_thread())

    def _answer(self, conn: socket.socket) -> dict[str, Any]:
        try:
            uid = _peer_uid(conn)
            if uid not in (0, os.geteuid()):
                return _error(f"user {uid} may not control this mount", 2)
            conn.settimeout(CLIENT_TIMEOUT_S)
            data = b""
            while chunk := conn.recv(1 << 16):
                data += chunk
                if len(data) > REQUEST_MAX_BYTES:
                    return _error("request too large", 2)
            conn.settimeout(None)
            req = json.loads(data.decode())
            command, args = req["command"], req.get("args") or {}
            if not isinstance(command, str) or not isinstance(args, dict):
                raise ValueError("command must be a string and args an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            return _error(f"bad control request: {e}", 2)
        handler = self.handlers.get(command)
        if handler is None:
            return _error(f"unknown control command {command!r} (known: "
                          f"{', '.join(sorted(self.handlers))})", 2)
        log.info("control: %s %s", command, json.dumps(args, default=str))
        try:
            return {"ok": True, "result": handler(self.vol, args)}
        except MirrorfsError as e:
            log.info("control: %s: %s", command, e)
            return _error(str(e), e.exit_code)
        except Exception as e:
            log.exception("control: %s failed (this is a bug)", command)
            return _error(f"internal error in the daemon ({e!r}); this is a bug, see the "
                          "daemon's log", 3)


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _error(message: str, code: int) -> dict[str, Any]:
    return {"ok": False, "error": message, "exit_code": code}


# -- the commands --------------------------------------------------------------------


def _status(vol: Volume, args: dict[str, Any]) -> Any:
    from ..cli._volume_cmd import status_doc

    assert vol.volume_file is not None
    return status_doc(vol.volume_file, vol=vol)


def _snapshot_create(vol: Volume, args: dict[str, Any]) -> Any:
    from ..cli._snapshot_cmd import snap_dict

    t0 = time.perf_counter()
    rec = vol.snapshot(str(args["name"]))
    ms = (time.perf_counter() - t0) * 1000
    return {**snap_dict(rec), "milliseconds": round(ms, 2)}


def _snapshot_list(vol: Volume, args: dict[str, Any]) -> Any:
    from ..cli._snapshot_cmd import snap_dict

    return [snap_dict(r) for r in vol.snapshots()]


def _snapshot_delete(vol: Volume, args: dict[str, Any]) -> Any:
    with vol.store.lock:
        before = vol.store.alloc.free_blocks()
        vol.delete_snapshot(str(args["name"]))
        freed = vol.store.alloc.free_blocks() - before
    return {"name": args["name"], "freed_blocks": freed}


def _scrub(vol: Volume, args: dict[str, Any]) -> Any:
    from ..fs import scrub

    t0 = time.perf_counter()
    report = scrub(vol.store, repair=not args.get("read_only"))
    doc = report.as_scrub_dict()
    doc["seconds"] = round(time.perf_counter() - t0, 3)
    return doc


def _resync(vol: Volume, args: dict[str, Any]) -> Any:
    rate = parse_size(str(args["rate"])) if args.get("rate") else None
    report = vol.resync(dry_run=bool(args.get("dry_run")), verify=bool(args.get("verify")),
                        rate=rate, prefer=args.get("prefer"),
                        discard_divergent=bool(args.get("discard_divergent")))
    return report.as_dict()


def _plex(action: str) -> Handler:
    def handle(vol: Volume, args: dict[str, Any]) -> Any:
        target = str(args["target"])
        if action == "remove":
            vol.plex_remove(target)
            return {"plex": target, "action": "removed", "state": "removed"}
        fn = {"offline": vol.plex_offline, "online": vol.plex_online, "add": vol.plex_add}[action]
        slot = fn(target)
        return {"plex": slot.spec, "action": "added" if action == "add" else action,
                "state": slot.state.label}
    return handle


HANDLERS: dict[str, Handler] = {
    "status": _status,
    "snapshot create": _snapshot_create,
    "snapshot list": _snapshot_list,
    "snapshot delete": _snapshot_delete,
    "scrub": _scrub,
    "resync": _resync,
    "plex offline": _plex("offline"),
    "plex online": _plex("online"),
    "plex add": _plex("add"),
    "plex remove": _plex("remove"),
}


# -- scheduled snapshots -------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds; at least SCHEDULE_MIN_S."""
    m = _DURATION.match(text)
    if m is None:
        raise UsageError(f"snapshot interval {text!r}: give a number with s, m, h or d, "
                         "e.g. 15m")
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if seconds < SCHEDULE_MIN_S:
        raise UsageError(f"snapshot interval {text!r}: at least {SCHEDULE_MIN_S:.0f} s")
    return seconds


class SnapshotSchedule:
    """When the next scheduled snapshot is due, its name, and which ones to prune.

    Pure: reads time only through ``clock`` and keeps no volume. The first
    snapshot is due one interval after the mount; a late tick does not bunch
    snapshots up (the next is due one interval after the one just taken).
    """

    def __init__(self, every: float, keep: int | None, clock: Clock | None = None) -> None:
        assert every > 0 and (keep is None or keep >= 1)
        self.every = every
        self.keep = keep
        self.clock: Clock = clock or SystemClock()
        self.next_due = self.clock.monotonic() + every

    def due(self, now: float) -> bool:
        return now >= self.next_due

    def taken(self, now: float) -> None:
        """Record a snapshot taken (or attempted) at ``now``: the next is one interval on."""
        self.next_due = max(self.next_due + self.every, now + self.every / 2)

    def name(self, existing: Sequence[str] = ()) -> str:
        """``sched-YYYYmmdd-HHMMSS`` in UTC, with ``-N`` added if that name is taken."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.clock.time_ns() / 1e9))
        name, n = f"{SCHED_PREFIX}{stamp}", 2
        taken = set(existing)
        while name in taken:
            name = f"{SCHED_PREFIX}{stamp}-{n}"
            n += 1
        return name

    def prune(self, snapshots: Sequence[SnapshotRecord]) -> list[str]:
        """The scheduled snapshots beyond ``keep``, oldest first; never any other kind."""
        if self.keep is None:
            return []
        sched = sorted((r for r in snapshots if r.kind == SnapKind.SCHEDULED),
                       key=lambda r: (r.cp, r.ctime_ns))
        return [r.name for r in sched[:max(0, len(sched) - self.keep)]]


class SnapshotTimer:
    """The thread that takes scheduled snapshots of a mounted volume and prunes old ones."""

    def __init__(self, vol: Volume, schedule: SnapshotSchedule) -> None:
        self.vol = vol
        self.schedule = schedule
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="snapshot-timer", daemon=True)

    def start(self) -> None:
        log.info("scheduled snapshots every %.0f s, keeping %s", self.schedule.every,
                 self.schedule.keep if self.schedule.keep is not None else "all")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(min(SCHEDULE_TICK_S, self.schedule.every)):
            self.tick()

    def tick(self) -> str | None:
        """Take a snapshot if one is due, then prune; returns its name. Never raises."""
        sched = self.schedule
        now = sched.clock.monotonic()
        if not sched.due(now):
            return None
        sched.taken(now)
        try:
            name = sched.name([r.name for r in self.vol.snapshots()])
            self.vol.snapshot(name, SnapKind.SCHEDULED)
            log.info("scheduled snapshot %s", name)
            for old in sched.prune(self.vol.snapshots()):
                self.vol.delete_snapshot(old)
                log.info("pruned scheduled snapshot %s", old)
            return name
        except MirrorfsError as e:  # e.g. a full volume: try again next interval
            log.error("scheduled snapshot failed: %s", e)
        except Exception:
            log.exception("scheduled snapshot failed (this is a bug)")
        return None
