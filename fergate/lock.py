"""One writer per directory: the lock every command that writes a workdir (or an output
directory) holds while it runs, so that a second run started on it (a SLURM requeue while
the first job still runs, a command started twice) is refused instead of mixing its
checkpoints with the first's.

The lock is the file `DIR/.fergate.lock`, created atomically (a hard link of a complete
temporary file, else O_EXCL), holding JSON: the host, the pid (with the process's start
time, so that a reused pid is told apart, and its pid namespace), since when, and the
command. The holder refreshes its mtime every `HEARTBEAT_S` seconds and removes it when it
ends, exceptions and the signals that save a checkpoint included. A lock whose holder is gone
is taken over, with a line saying so: on the same host (and pid namespace) when its pid no
longer runs; from another host (multi-host jobs on a shared filesystem) or container when
its heartbeat is older than `STALE_S`.

Multi-process runs hold it once: process 0 takes it and tells the others whether it could.
A parent that runs a child command on the directory it holds (`fergate sweep` and its
cells) passes the lock down (`child_env`); nested holds of one directory by one process
(a cv fold, then the training in it) count as one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator

from fergate.errors import UserError

log = logging.getLogger(__name__)

NAME = ".fergate.lock"
#: how often the holder refreshes the lock file's mtime (its heartbeat), in seconds
HEARTBEAT_S = 30.0
#: a lock of another host whose heartbeat is older than this is taken over, in seconds
STALE_S = 300.0
#: the environment variable through which a parent passes the locks it holds to its child
ENV = "FERGATE_HELD_LOCKS"


class WorkdirBusy(UserError):
    """Another live process holds the directory's lock."""


class Lock:
    """A held lock (`hold`): its directory, file, and what it says."""

    def __init__(self, directory: str, path: str, info: dict, owned: bool):
        self.directory, self.path, self.info = directory, path, info
        self.owned = owned  # False: a parent holds it for this process
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def start_heartbeat(self) -> None:
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock {self.path}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if read(self.path)[0] != self.info:  # removed by hand, or taken over while this process was stopped
                log.warning(f"[lock] {self.path} is no longer this run's: a second writer may be in "
                            f"{self.directory}")
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def moved(self, directory: str) -> None:
        """The directory was renamed to `directory` (an export's finished temporary one)."""
        self._stop.set()
        self.directory, self.path = directory, os.path.join(directory, NAME)

    def release(self) -> None:
        self._stop.set()
        if self.owned and read(self.path)[0] == self.info:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


#: the locks this process holds, by real path of their directory
_held: dict[str, Lock] = {}


@contextlib.contextmanager
def hold(directory: str, command: str, shown: str | None = None) -> Iterator[Lock | None]:
    """Holds `directory`'s lock for the block (creating the directory; one it created and
    leaves empty is removed again); `command` says who holds it, `shown` how the refusal
    names the directory (default: itself). A live holder: `WorkdirBusy`, one line naming it.
    In a multi-process run only process 0 holds it (the others get None)."""
    key = os.path.realpath(directory)
    if key in _held:  # nested: a cv fold's lock, then its training's
        yield _held[key]
        return
    created = not os.path.isdir(directory)
    os.makedirs(directory, exist_ok=True)
    lock, error = None, None
    lead, many = _process()
    if lead:
        try:
            lock = _acquire(directory, command, shown or directory)
        except WorkdirBusy as e:
            error = e
    taken = error is None
    if many:  # every process learns whether process 0 could take it
        import numpy as np
        from jax.experimental import multihost_utils

        taken = bool(int(multihost_utils.broadcast_one_to_all(np.int32(taken))))
    if not taken:
        if created and lead:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        raise error or WorkdirBusy(f"{shown or directory} is in use by another run (process 0 names it)")
    if lock is not None:
        _held[key] = lock
    try:
        yield lock
    finally:
        if lock is not None:
            _held.pop(key, None)
            lock.release()
        if created and lead:
            with contextlib.suppress(OSError):  # not empty: what the run wrote stays
                os.rmdir(directory)


def child_env(lock: Lock | None, env: dict | None = None) -> dict:
    """The environment for a child process that writes `lock`'s directory on this process's
    behalf (a sweep cell's `fergate train`): it uses the lock instead of being refused."""
    env = dict(os.environ if env is None else env)
    if lock is not None:
        held = json.loads(env.get(ENV) or "{}")
        held[os.path.realpath(lock.directory)] = lock.info["token"]
        env[ENV] = json.dumps(held)
    return env


def _process() -> tuple[bool, bool]:
    """(whether this process takes locks, whether the run has several processes)."""
    jax = sys.modules.get("jax")  # several processes only through jax.distributed (never started by sweep)
    if jax is None or not jax.distributed.is_initialized():
        return True, False
    return jax.process_index() == 0, jax.process_count() > 1


def _acquire(directory: str, command: str, shown: str) -> Lock:
    path = os.path.join(directory, NAME)
    host, pid = socket.gethostname(), os.getpid()
    info = {"host": host, "pid": pid, "pid_start": _start_ticks(pid), "pid_ns": _pid_namespace(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command, "token": uuid.uuid4().hex}
    for _ in range(5):
        if _create(path, info):
            lock = Lock(directory, path, info, owned=True)
            lock.start_heartbeat()
            return lock
        held, age = read(path)
        if held is None and age is None:  # gone between the two calls
            continue
        if held is not None and _passed_down(directory, held):
            return Lock(directory, path, held, owned=False)
        gone = _gone(held, age)
        if gone is None:
            raise WorkdirBusy(f"{shown} is in use by {_holder(held, age)}: a second writer would mix its files with "
                              f"that run's; wait for it to end or stop it (if that process is gone for certain, delete "
                              f"{path})")
        if _take_over(path, held):
            log.warning(f"[lock] {path} was left by {_holder(held, age)}, {gone}: taken over")
    raise WorkdirBusy(f"{shown}: could not take {path} (other processes keep taking it); try again")


def _create(path: str, info: dict) -> bool:
    """Creates the lock file holding `info`, atomically: False when it exists."""
    data = json.dumps(info).encode()
    tmp = f"{path}.{info['token']}"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)  # appears whole, or not at all
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links
        pass
    finally:
        os.unlink(tmp)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def read(path: str) -> tuple[dict | None, float | None]:
    """(what the lock file says, or None when it is unreadable; its heartbeat's age in
    seconds), (None, None) when there is no lock file."""
    try:
        age = time.time() - os.stat(path).st_mtime
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None, None
    try:
        held = json.loads(raw)
        return (held if isinstance(held, dict) else None), age
    except ValueError:  # being written (O_EXCL on a filesystem without links), or damaged
        return None, age


def _passed_down(directory: str, held: dict) -> bool:
    """Whether this process's parent holds the lock and passed it down (`child_env`)."""
    token = json.loads(os.environ.get(ENV) or "{}").get(os.path.realpath(directory))
    return token is not None and held.get("token") == token and held.get("pid") == os.getppid() and \
        held.get("host") == socket.gethostname()


def _gone(held: dict | None, age: float) -> str | None:
    """Why the lock's holder is gone (so that it may be taken over), None while it may live."""
    if not _here(held):  # its pid means nothing here: the heartbeat says whether it lives
        return f"no heartbeat for {_duration(age)}" if age > STALE_S else None
    pid = held.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():  # this process's pid, not its lock: a former process's
        return "which is gone"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "which is gone"
    except PermissionError:
        pass
    start = _start_ticks(pid)
    if start is not None and held.get("pid_start") is not None and start != held["pid_start"]:
        return "which is gone (its pid now runs another process)"
    if _zombie(pid):
        return "which is gone"
    return None


def _take_over(path: str, held: dict | None) -> bool:
    """Replaces the stale lock `held`; False when another process got there first (the
    caller looks again)."""
    aside = f"{path}.stale-{uuid.uuid4().hex}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if read(aside)[0] == held:
        os.unlink(aside)
        return True
    # another process took it over in between: its lock goes back
    with contextlib.suppress(OSError):
        os.link(aside, path)
    os.unlink(aside)
    return False


def _holder(held: dict | None, age: float) -> str:
    if held is None:
        return f"a process whose lock file is unreadable (heartbeat {_duration(age)} ago)"
    where = f"pid {held.get('pid')} on {held.get('host')}"
    beat = f", heartbeat {_duration(age)} ago" if not _here(held) else ""
    return f"{held.get('command', 'fergate')} ({where} since {held.get('since')}{beat})"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _here(held: dict | None) -> bool:
    """Whether the lock's pid is one of this host's and this pid namespace's (containers on
    one host may share its name but not their pids)."""
    if held is None or held.get("host") != socket.gethostname():
        return False
    ns = _pid_namespace()
    return held.get("pid_ns") is None or ns is None or held["pid_ns"] == ns


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (Linux), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_ticks(pid: int) -> int | None:
    """When the process started (clock ticks since boot), to tell a reused pid apart."""
    fields = _stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def _zombie(pid: int) -> bool:
    fields = _stat(pid)
    return bool(fields) and fields[0] in ("Z", "X")

