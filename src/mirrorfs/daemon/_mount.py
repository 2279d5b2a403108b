"""Mounting a volume: the daemon's life from open to final CP, and unmounting it.

Owns the daemon process of a mount, its state file and its log. Keeps: a
mount command returns only once the mount answers requests (or fails with
one line and a non-zero exit); a clean end of the daemon — ``mirrorfs
umount``, ``fusermount3 -u``, SIGTERM, SIGINT or SIGHUP — releases every
open handle, commits a final CP and closes the plexes before the process
exits; and ``mirrorfs umount`` returns only after that final CP.

Starting. In the background (the default) the command starts a fresh
``python -m mirrorfs mount --foreground`` in its own session, with stdin on
/dev/null, stdout and stderr on the log file, and one end of a pipe. That
child opens the volume, mounts, and writes "ok" (or the error) on the pipe;
the command waits for that line, checks the mount answers a stat, and
exits. A fresh process, not a fork of the command: the volume starts its CP
timer thread when it opens, and a thread does not survive a fork.

State file. Each mount has ``RUNTIME_DIR/mount-<hash of mountpoint>.json``
(pid, volume, mountpoint, log, state, and ``socket``: the control socket
``mount-<hash>.sock`` through which other commands reach the volume, see
``_control``). The daemon holds an exclusive
``flock`` on it for its whole life, so a held lock means a live daemon,
with no pid to reuse; it writes the outcome of its final CP into the file,
removes it, and exits. ``umount`` runs ``fusermount3 -u`` and then waits for
that lock, so when it returns the final CP is on every plex. A daemon killed
with SIGKILL leaves the file behind unlocked; the plexes hold its last
committed CP and nothing else needs doing.

Control and schedule. Before reporting "ok" the daemon listens on its
control socket, so a mount command that returned means the socket answers;
with ``--snapshot-every`` (``-o snapshot_every=``) it also starts the
snapshot timer. At the end both stop before the final CP: the timer first,
then the socket, which waits (boundedly) for requests under way.

Signals. SIGTERM, SIGINT and SIGHUP are blocked from the start of ``serve``
until trio's signal receiver runs, so one arriving while the volume opens
is not lost and never kills the daemon half-way: it ends the main loop,
and the daemon unmounts (lazily, if files are still open) and closes the
volume as after ``umount``. A second signal during the final CP takes the
default action (a forced exit; the plexes stay at the last committed CP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import MirrorfsError, UsageError
from ..volume import CP_INTERVAL_S, Volume

log = logging.getLogger("mirrorfs.daemon")

FSTYPE = "fuse.mirrorfs"  # how /proc/self/mountinfo names our mounts (subtype=mirrorfs)
UNMOUNT_TIMEOUT_S = 300.0  # most seconds `umount` waits for the daemon's final CP
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
READAHEAD_KIB = 4096  # the kernel's read-ahead window on a mount (see set_readahead)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)

# -o options a user may give; anything else is refused before mounting.
FLAG_OPTIONS = frozenset({"allow_other", "allow_root", "default_permissions", "ro", "rw",
                          "nosuid", "suid", "nodev", "dev", "noexec", "exec"})
VALUE_OPTIONS = frozenset({"fsname", "max_read"})
SCHEDULE_OPTIONS = frozenset({"snapshot_every", "keep"})  # ours: never passed to FUSE
CONTRADICTIONS = (("allow_other", "allow_root"), ("ro", "rw"), ("nosuid", "suid"),
                  ("nodev", "dev"), ("noexec", "exec"))


class MountError(MirrorfsError):
    """mount on {0}: {1}"""

    exit_code = 1


class UnmountError(MirrorfsError):
    """umount {0}: {1}"""

    exit_code = 1


def runtime_dir() -> Path:
    """Where state files live: /run/mirrorfs for root, else the user's runtime directory."""
    if os.geteuid() == 0:
        return Path("/run/mirrorfs")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        return Path(xdg) / "mirrorfs"
    return Path(tempfile.gettempdir()) / f"mirrorfs-{os.geteuid()}"


def state_path(mountpoint: str | os.PathLike[str]) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:20]
    return runtime_dir() / f"mount-{key}.json"


def default_log_file(volume: str | os.PathLike[str]) -> Path:
    """The log of a background mount: next to the volume file, ``v.toml`` -> ``v.log``."""
    return Path(os.path.abspath(volume)).with_suffix(".log")


# -- options --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MountOptions:
    """Parsed ``-o`` options: what goes to FUSE, and whether the volume opens read-only."""

    fuse: tuple[str, ...] = ()
    read_only: bool = False
    snapshot_every: float | None = None  # seconds between scheduled snapshots
    keep: int | None = None  # most scheduled snapshots kept (None: all)
    schedule_spec: tuple[str, ...] = ()  # the schedule options as given, for the daemon

    @classmethod
    def parse(cls, specs: Sequence[str]) -> MountOptions:
        from ._control import parse_duration

        seen: list[str] = []
        sched: dict[str, str] = {}
        for spec in specs:
            for opt in spec.split(","):
                opt = opt.strip()
                if not opt:
                    continue
                key, eq, value = opt.partition("=")
                if key in SCHEDULE_OPTIONS and eq and value:
                    if sched.get(key, value) != value:
                        raise UsageError(f"-o {key}={sched[key]} and -o {opt} contradict "
                                         "each other; give one")
                    sched[key] = value
                    continue
                if key in FLAG_OPTIONS and not eq:
                    pass
                elif key in VALUE_OPTIONS and eq and value:
                    if key == "max_read" and not value.isdigit():
                        raise UsageError(f"-o max_read={value}: not a number of bytes")
                    if not value.isascii() or "," in value:
                        raise UsageError(f"-o {opt}: use ASCII without commas")
                else:
                    accepted = sorted(FLAG_OPTIONS) + [f"{k}=..." for k in
                                                       sorted(VALUE_OPTIONS | SCHEDULE_OPTIONS)]
                    raise UsageError(f"unknown mount option -o {opt} (accepted: "
                                     f"{', '.join(accepted)})")
                if opt not in seen:
                    seen.append(opt)
        for a, b in CONTRADICTIONS:
            if a in seen and b in seen:
                raise UsageError(f"-o {a} and -o {b} contradict each other; give one")
        every = parse_duration(sched["snapshot_every"]) if "snapshot_every" in sched else None
        keep: int | None = None
        if "keep" in sched:
            if not sched["keep"].isdigit() or int(sched["keep"]) < 1:
                raise UsageError(f"--keep {sched['keep']}: give a whole number, at least 1")
            if every is None:
                raise UsageError("--keep needs --snapshot-every (it counts scheduled snapshots)")
            keep = int(sched["keep"])
        if every is not None and "ro" in seen:
            raise UsageError("--snapshot-every and -o ro contradict each other; give one")
        return cls(tuple(seen), "ro" in seen, every, keep,
                   tuple(f"{k}={v}" for k, v in sorted(sched.items())))

    def for_fuse(self, volume: Path) -> set[str]:
        """The option set for ``pyfuse3.init``: ours, plus a source name and our subtype."""
        opts = set(self.fuse)
        opts.discard("rw")
        if not any(o.startswith("fsname=") for o in opts):
            name = "".join(c if c.isascii() and c.isprintable() and c not in ", \\" else "_"
                           for c in str(volume))
            opts.add(f"fsname={name}")
        opts.add("subtype=mirrorfs")
        return opts

    def as_arg(self) -> str:
        return ",".join(self.fuse + self.schedule_spec)


# -- /proc/self/mountinfo --------------------------------------------------------


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 4 <= len(field):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mountinfo(mountpoint: str | os.PathLike[str]) -> tuple[list[str], str] | None:
    """The topmost /proc/self/mountinfo line for ``mountpoint``: its fields and fs type."""
    want = os.path.abspath(mountpoint)
    found: tuple[list[str], str] | None = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) >= 5 and _unescape(fields[4]) == want:
                    found = fields, (right.split()[0] if right else "?")
    except OSError:
        return None
    return found


def mount_type(mountpoint: str | os.PathLike[str]) -> str | None:
    """The file system type mounted on ``mountpoint`` (the topmost), or None."""
    info = _mountinfo(mountpoint)
    return info[1] if info else None


def set_readahead(mountpoint: str | os.PathLike[str], kib: int = READAHEAD_KIB) -> bool:
    """Let the kernel read ahead ``kib`` KiB on this mount (its bdi); False if it may not.

    FUSE starts a mount with the kernel's default of 128 KiB, which makes a
    sequential read a string of small synchronous requests; a larger window
    lets the kernel send 1 MiB reads ahead of the reader. Only root may
    change it (/sys/class/bdi is root's); anyone else keeps the default.
    """
    info = _mountinfo(mountpoint)
    if info is None:
        return False
    path = Path("/sys/class/bdi") / info[0][2] / "read_ahead_kb"
    try:
        path.write_text(f"{kib}\n")
    except OSError as e:
        log.info("read-ahead stays at the kernel's default (%s: %s)", path, e.strerror)
        return False
    return True


def tune_malloc() -> None:
    """Keep freed buffers of up to 32 MiB in the heap instead of returning them to the kernel.

    Every FUSE request brings or takes a buffer of up to 1 MiB. glibc serves
    such sizes with mmap and unmaps them on free, so each request paid
    256 page faults for fresh zeroed pages: measured, that doubled the CPU
    time of a sequential read through the mount. A daemon owns its process,
    so it may set the allocator's thresholds; a library must not.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):  # not glibc: its defaults stay
        pass


# -- the state file --------------------------------------------------------------


class _StateFile:
    """A mount's state file, locked by its daemon for the daemon's whole life."""

    def __init__(self, path: Path, fd: int, doc: dict[str, Any]) -> None:
        self.path = path
        self.fd = fd
        self.doc = doc

    @classmethod
    def claim(cls, mountpoint: Path, doc: dict[str, Any]) -> _StateFile:
        path = state_path(mountpoint)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = _read_doc(fd)
                os.close(fd)
                raise MountError(mountpoint, f"already mounted by mirrorfs (pid "
                                 f"{other.get('pid', '?')}); `mirrorfs umount` it first"
                                 ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file a dying daemon unlinked between our open and our lock
                break
            os.close(fd)
        state = cls(path, fd, dict(doc))
        state.update()
        return state

    def update(self, **changes: Any) -> None:
        self.doc.update(changes)
        data = (json.dumps(self.doc, indent=1) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def close(self) -> None:
        """Remove the file, then drop the lock (an umount waiting on it reads the outcome)."""
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        os.close(self.fd)


def _read_doc(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 1 << 16, 0)
        doc = json.loads(raw.decode()) if raw else {}
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def live_mounts() -> list[dict[str, Any]]:
    """The state of every mount whose daemon is alive (its lock is held)."""
    out: list[dict[str, Any]] = []
    d = runtime_dir()
    if not d.is_dir():
        return out
    for p in sorted(d.glob("mount-*.json")):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                out.append(_read_doc(fd))
        finally:
            os.close(fd)
    return out


# -- mounting --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MountRequest:
    """Everything a mount needs, with paths made absolute (the daemon runs in /)."""

    volume: Path
    mountpoint: Path
    options: MountOptions = MountOptions()
    degraded: bool = False
    log_file: Path | None = None

    @classmethod
    def make(cls, volume: str | os.PathLike[str], mountpoint: str | os.PathLike[str],
             options: MountOptions = MountOptions(), degraded: bool = False,
             log_file: str | os.PathLike[str] | None = None) -> MountRequest:
        return cls(Path(os.path.abspath(volume)), Path(os.path.realpath(mountpoint)),
                   options, degraded, Path(os.path.abspath(log_file)) if log_file else None)


def check_mountable(req: MountRequest) -> None:
    """Refuse, before anything starts, a mount that cannot work (one clear line each)."""
    mp = req.mountpoint
    try:
        st = os.stat(mp)
    except FileNotFoundError:
        raise MountError(mp, "no such directory; create the mount point first") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise MountError(mp, "a dead FUSE mount is still there; clear it with "
                                 f"`fusermount3 -u -z {mp}`") from None
        raise MountError(mp, e.strerror or str(e)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(mp, "not a directory")
    if mount_type(mp) == FSTYPE:
        raise MountError(mp, "a mirrorfs volume is already mounted here; `mirrorfs umount` "
                             "it first")
    if not os.path.exists("/dev/fuse"):
        raise MountError(mp, "/dev/fuse is missing; load the fuse module (`modprobe fuse`)")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise MountError(mp, "fusermount3 is not installed (Debian package fuse3)")
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as e:
        raise MountError(mp, f"{e.name} is not installed; install mirrorfs[fuse]") from None
    if not req.volume.is_file():
        raise UsageError(f"{req.volume}: no such volume file (create one with `mirrorfs mkfs`)")
    for other in live_mounts():
        if other.get("volume") == str(req.volume):
            raise MountError(mp, f"volume {req.volume} is already mounted on "
                                 f"{other.get('mountpoint')} (pid {other.get('pid')})")


def mount(req: MountRequest, *, foreground: bool = False, verbose: bool = False,
          ready_fd: int | None = None) -> int:
    """Mount a volume: in the foreground (until unmounted) or as a background daemon.

    A failed start raises; a foreground mount returns the daemon's exit code
    (non-zero when its final CP failed, which it has logged). ``ready_fd`` is
    for the daemon a background mount starts: it reports there instead.
    """
    if ready_fd is not None:
        return serve(req, ready_fd)
    check_mountable(req)
    if foreground:
        return serve(req, ready_fd=None)
    _start_daemon(req, verbose)
    return 0


def _start_daemon(req: MountRequest, verbose: bool) -> None:
    log_file = req.log_file or default_log_file(req.volume)
    try:
        log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except OSError as e:
        raise MountError(req.mountpoint, f"cannot write the log {log_file}: {e.strerror}; "
                                         "choose another with --log") from None
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "mirrorfs", *(["-v"] if verbose else []), "mount",
           "--foreground", "--ready-fd", str(w), "--log", str(log_file)]
    if req.options.as_arg():
        cmd += ["-o", req.options.as_arg()]
    if req.degraded:
        cmd.append("--degraded")
    cmd += ["--", str(req.volume), str(req.mountpoint)]
    try:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                 pass_fds=(w,), cwd="/", start_new_session=True)
    finally:
        os.close(w)
        os.close(log_fd)
    with os.fdopen(r, "rb") as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    if line == "ok":
        try:
            os.stat(req.mountpoint)  # answered by the daemon: the mount works
        except OSError as e:
            raise MountError(req.mountpoint, f"mounted, but the mount does not answer "
                                             f"({e.strerror}); see {log_file}") from None
        return
    if line.startswith("error "):
        _, code, message = line.split(" ", 2)
        err = MountError(req.mountpoint, message)
        err.exit_code = int(code)
        raise err
    status = child.wait()
    raise MountError(req.mountpoint, f"the daemon exited ({status}) before the mount was "
                                     f"ready; see {log_file}")


class _Ready:
    """The daemon's report to the waiting mount command: one line, sent once."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def send(self, line: str) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = None

    def failed(self, exc: MirrorfsError) -> int:
        """Report a failed start: raise it in the foreground, send it up from a daemon."""
        if self.fd is None:
            raise exc
        log.error("%s", exc)
        self.send(f"error {exc.exit_code} {exc}")
        return exc.exit_code


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what libfuse and fusermount3 print on fd 2 (replayed to the log afterwards)."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(x.strip() for x in tmp.read().decode(errors="replace").splitlines()
                         if x.strip())
            for x in lines:
                log.warning("fuse: %s", x)


def _setup_logging(log_file: Path | None) -> None:
    """Log INFO and up with times: to ``log_file``, or to stderr (the daemon's log file)."""
    fmt = "%(asctime)s mirrorfs[%(process)d] %(levelname)s %(name)s: %(message)s"
    if log_file is not None:
        logging.basicConfig(force=True, filename=log_file, level=logging.INFO, format=fmt)
    else:
        logging.basicConfig(force=True, stream=sys.stderr, level=logging.INFO, format=fmt)


def serve(req: MountRequest, ready_fd: int | None) -> int:
    """Open, mount, serve until unmounted or signalled, then close: the daemon's body.

    Returns the exit code: 0 after a clean final CP, else the error's code.
    """
    import pyfuse3

    from ._control import ControlServer, SnapshotSchedule, SnapshotTimer, socket_path
    from ._fuse import FuseOperations

    if ready_fd is not None:  # stderr is the log file already
        _setup_logging(None)
    elif req.log_file is not None:
        _setup_logging(req.log_file)
    ready = _Ready(ready_fd)
    tune_malloc()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    mp = req.mountpoint
    try:
        state = _StateFile.claim(mp, {
            "pid": os.getpid(), "volume": str(req.volume), "mountpoint": str(mp),
            "log": str(req.log_file) if req.log_file else None, "state": "mounting",
            "options": list(req.options.fuse), "socket": str(socket_path(state_path(mp)))})
    except MirrorfsError as e:
        return ready.failed(e)
    try:
        try:
            vol = Volume.open(req.volume, read_only=req.options.read_only,
                              degraded=req.degraded, cp_interval=CP_INTERVAL_S)
        except MirrorfsError as e:
            return ready.failed(e)
        ops = FuseOperations(vol.fs)
        try:
            with _stderr_captured() as said:
                pyfuse3.init(ops, str(mp), req.options.for_fuse(req.volume))
        except Exception as e:
            _close_volume(vol, state)
            return ready.failed(MountError(mp, said[-1] if said else str(e)))
        control = ControlServer(vol, socket_path(state.path))
        timer = None
        if req.options.snapshot_every is not None:
            timer = SnapshotTimer(vol, SnapshotSchedule(req.options.snapshot_every,
                                                        req.options.keep))
        try:
            control.start()
        except OSError as e:
            log.error("control socket %s: %s", control.path, e)
            pyfuse3.close(unmount=True)
            _close_volume(vol, state)
            return ready.failed(MountError(mp, f"cannot listen on {control.path}: {e}"))
        if timer is not None:
            timer.start()
        state.update(state="mounted")
        log.info("mounted %s on %s (%s)", req.volume, mp,
                 ",".join(sorted(req.options.for_fuse(req.volume))))
        ready.send("ok")
        try:
            import trio

            trio.run(_main_loop, mp)
        except BaseException:
            log.exception("the FUSE main loop failed; unmounting")
        finally:
            try:
                pyfuse3.close(unmount=True)
            except Exception:
                log.exception("unmounting failed")
            if timer is not None:
                timer.stop()
            control.stop()
            ops.close_all()
        return _close_volume(vol, state)
    finally:
        state.close()


async def _main_loop(mountpoint: Path) -> None:
    """pyfuse3's loop, ended by an unmount or by the first stop signal."""
    import pyfuse3
    import trio

    async def on_signal(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            task_status.started()
            async for signum in signals:
                log.info("%s: unmounting", signal.Signals(signum).name)
                pyfuse3.terminate()
                return

    async def after_init() -> None:
        """Widen the read-ahead once the kernel has applied FUSE's INIT reply (which sets it).

        A stat of the mount point is answered only after INIT, from this loop,
        so the stat runs in a thread.
        """
        with contextlib.suppress(OSError):
            await trio.to_thread.run_sync(os.stat, mountpoint, abandon_on_cancel=True)
            set_readahead(mountpoint)

    async with trio.open_nursery() as nursery:
        await nursery.start(on_signal)
        nursery.start_soon(after_init)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _close_volume(vol: Volume, state: _StateFile) -> int:
    """The final CP and the plexes' release; the outcome goes into the state file."""
    try:
        vol.close()
    except MirrorfsError as e:
        log.error("the final CP failed: %s", e)
        state.update(state="failed", error=str(e))
        return e.exit_code
    except Exception as e:
        log.exception("the final CP failed (this is a bug)")
        state.update(state="failed", error=repr(e))
        return 3
    log.info("closed %s at CP %d", vol.volume_file.path if vol.volume_file else "volume",
             vol.store.cp)
    state.update(state="closed", cp=vol.store.cp)
    return 0


# -- unmounting ------------------------------------------------------------------


def unmount(mountpoint: str | os.PathLike[str], *, lazy: bool = False,
            timeout: float = UNMOUNT_TIMEOUT_S) -> dict[str, Any]:
    """Unmount and wait for the daemon's final CP; returns its final state document."""
    mp = Path(os.path.realpath(mountpoint))
    if mount_type(mp) != FSTYPE:
        raise UnmountError(mp, "not a mirrorfs mount point")
    path = state_path(mp)
    fd: int | None = None
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        tool = shutil.which("fusermount3")
        if tool is None:
            raise UnmountError(mp, "fusermount3 is not installed (Debian package fuse3)")
        res = subprocess.run([tool, "-u", *(["-z"] if lazy else []), str(mp)],
                             capture_output=True, timeout=60)
        if res.returncode != 0:
            why = (res.stderr.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
            why = why.removeprefix("fusermount3: ")
            if "busy" in why:
                why += " (files are open; close them, or use --lazy)"
            raise UnmountError(mp, why)
        if fd is None:
            return {"mountpoint": str(mp), "state": "unknown"}
        if lazy:  # the daemon ends when the last open file closes, maybe much later
            return {**_read_doc(fd), "state": "detached"}
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    doc = _read_doc(fd)
                    raise UnmountError(mp, f"the daemon (pid {doc.get('pid')}) has not "
                                           f"finished its final CP after {timeout:.0f} s; "
                                           f"see {doc.get('log') or 'its log'}") from None
                time.sleep(0.05)
        doc = _read_doc(fd)
        if doc.get("state") == "failed":
            raise UnmountError(mp, f"the final CP failed: {doc.get('error')}; run "
                                   "`mirrorfs status` and `mirrorfs fsck`")
        if doc.get("state") != "closed":  # a killed daemon left it: its last CP stands
            with contextlib.suppress(OSError):
                os.unlink(path)
        return doc
    finally:
        if fd is not None:
            os.close(fd)
