"""One daemon per store: ``ispd run`` holds an exclusive lock beside the store for its lifetime.

Two daemons on one store file (their control and admin sockets set apart) would both reach
READY and both answer: DHCP binds 0.0.0.0:67 with SO_REUSEADDR, so a DISCOVER got two OFFERs
and a REQUEST two ACKs from two lease tables. The lock is ``flock(2)`` on ``<store path>.lock``,
taken without waiting: a second daemon fails its start at once, naming the first one's PID
(which the holder writes into the file) and the store.

The kernel drops the lock when the holder's descriptor closes, however the process ends
(SIGKILL included), so a stale file never blocks a start and is never removed (removing it
would let two daemons lock two different files of the same name). A holder that stops empties
the file; one that was killed (or crashed, or its host lost power) leaves its PID there, and the
next holder reads it (``previous_holder``) before writing its own, so a start can say that the
last one ended without stopping. The descriptor is
close-on-exec: the worker processes ``ispd run`` starts (fork and exec) neither hold nor need
it. Admin commands do not take it; they work beside the running daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ispd.store.config import StoreConfig
    from ispd.store.postgresql import PostgresDaemonLock


class DaemonLockError(Exception):
    """Another daemon holds the store's lock (``held_by``: its PID, if known; ``holder``: how
    it names itself, "ispd HOST pid N", if known), or the lock file cannot be opened."""

    def __init__(self, message: str, held_by: int | None = None, *, in_use: bool = False,
                 holder: str | None = None) -> None:
        super().__init__(message)
        self.held_by, self.in_use, self.holder = held_by, in_use, holder


# The lock files this process has written its PID into. Its own PID found in one of those is its
# own; in any other it is a previous life's that had the same PID: in a container the daemon is
# PID 1 (or another fixed low PID) at every start, so "not my PID" hid every kill -9 there.
_WRITTEN_BY_THIS_PROCESS: set[Path] = set()


def lock_path(store_path: Path) -> Path:
    """Beside the store's real file: two configs that name it by different paths (a symlink, a
    symlinked directory, relative and absolute) must meet at one lock."""
    real = Path(os.path.realpath(store_path))
    return real.with_name(real.name + ".lock")


class DaemonLock:
    def __init__(self, store_path: Path) -> None:
        self.store_path = store_path
        self.path = lock_path(store_path)
        self._fd: int | None = None
        # The PID the file named when this lock was taken: a holder that ended without releasing it.
        self.previous_holder: int | None = None

    def acquire(self) -> None:
        """Take the lock and write this process's PID into the file, or raise DaemonLockError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise DaemonLockError(f"cannot open the lock file {self.path}: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                who = f"pid {holder}" if holder else "its pid unknown"
                raise DaemonLockError(
                    f"another ispd ({who}) is running on the store {self.store_path} (it holds {self.path}); "
                    f"stop it first: two daemons on one store would both answer every client",
                    holder, in_use=True) from None
            _own_like_its_directory(fd, self.path)
            previous = _read_pid(fd)
            ours = previous == os.getpid() and self.path in _WRITTEN_BY_THIS_PROCESS
            self.previous_holder = None if ours else previous
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _WRITTEN_BY_THIS_PROCESS.add(self.path)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # no PID left behind to mislead anyone reading the file
            os.close(self._fd)  # closing drops the lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def keep(self) -> bool:
        """A file lock lasts as long as its descriptor: nothing to take again."""
        return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _own_like_its_directory(fd: int, path: Path) -> None:
    # As for the store file: root (an operator's `ispd store migrate` under sudo) creating it in
    # the daemon's /var/lib/ispd must not lock the daemon out of it.
    if os.geteuid() != 0:
        return
    directory = path.parent.stat()
    if directory.st_uid != 0 and os.fstat(fd).st_uid == 0:
        with contextlib.suppress(OSError):
            os.fchown(fd, directory.st_uid, directory.st_gid)


def daemon_lock_for(store: StoreConfig) -> DaemonLock | PostgresDaemonLock:
    """The lock of the store ``[store]`` names: its file's, or its PostgreSQL database's."""
    if store.backend == "postgresql":
        from ispd.store.postgresql import PostgresDaemonLock

        return PostgresDaemonLock(store)
    return DaemonLock(store.path)
