"""A throwaway PostgreSQL cluster for tests: the store's tests on its PostgreSQL backend and the
integration tests that run ispd on PostgreSQL each get a fresh empty database from it.

``PostgresCluster`` runs Debian's own server binaries (the newest /usr/lib/postgresql/*/bin;
``tools/setup --test`` installs the ``postgresql`` package, whose system service is never started
or used) on a data directory of its own, made by ``initdb`` in a fresh directory under /tmp:

- no TCP at all (``listen_addresses=''``): clients reach it only on its unix socket, in the
  cluster's own directory, so two clusters (one per pytest-xdist worker, or two test runs) can
  never meet; the port only names the socket file (``.s.PGSQL.<port>``);
- ``trust`` authentication for the superuser ``postgres``, no password;
- durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``): the cluster is thrown
  away with the test run, and the tests are faster without;
- the C locale and UTF-8, so text sorts by bytes as in SQLite;
- ``max_connections=200``: a daemon's pools and several test processes at once.

PostgreSQL refuses to run as root, and the tests run as root: then the data and socket
directories belong to the ``postgres`` system user (made by Debian's package) and initdb and the
server run as that user; run by anyone else, they run as that user. The directory holding them
is 0755 (not pytest's 0700 tmp_path, which the ``postgres`` user could not enter).

``start()`` runs ``postgres`` itself as our child (no pg_ctl, which would detach it), so the PID
is the server's, and returns once it accepts a connection. ``stop()`` asks for a fast shutdown
(SIGINT: open connections are cut, rather than waited for as SIGTERM's smart shutdown does),
SIGKILLs the server and its processes if that takes too long, and removes the directory. A test
process that dies without stopping it takes the server with it (parent-death signal), though then
the directory stays behind in /tmp.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.lab.dnshier import _gone, _tail, descendants

POSTGRESQL_LIB = Path("/usr/lib/postgresql")
DEFAULT_PORT = 55432
SUPERUSER = "postgres"
SETUP_HINT = "run tools/setup --test (it installs Debian's postgresql package and psycopg)"

_prctl: Callable[..., int] | None
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child
except (OSError, AttributeError):
    _prctl = None


class PostgresNotInstalled(RuntimeError):
    pass


def postgres_bindir() -> Path:
    """The bin directory of the newest PostgreSQL installed (/usr/lib/postgresql/15/bin on
    Debian 12)."""
    found = [bindir for bindir in POSTGRESQL_LIB.glob("*/bin")
             if (bindir / "postgres").is_file() and (bindir / "initdb").is_file()]
    if not found:
        raise PostgresNotInstalled(f"PostgreSQL is not installed (no {POSTGRESQL_LIB}/*/bin/postgres): {SETUP_HINT}")
    return max(found, key=lambda bindir: _version_key(bindir.parent.name))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))


def _kill_on_parent_death() -> None:
    """In the child before exec, after the switch to the ``postgres`` user (which clears a death
    signal set earlier): a fast shutdown when the test process dies. Only a call into libc
    happens between fork and exec, which is safe with threads."""
    if _prctl is not None:
        _prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def _death_signal() -> Callable[[], None] | None:
    """The death signal follows the thread that forks: only the main thread's children get one
    (a server started from another thread would die with that thread)."""
    return _kill_on_parent_death if threading.current_thread() is threading.main_thread() else None


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresNotInstalled(f"psycopg is not installed: {SETUP_HINT}") from exc
    return psycopg


class PostgresCluster:
    """One throwaway PostgreSQL cluster (see the module's docstring); a context manager that
    starts it and stops it."""

    def __init__(self, port: int = DEFAULT_PORT, *, durable: bool = False, parent: Path | None = None) -> None:
        """``durable``: fsync as a production server does (the store benchmark's, not the
        tests'); ``parent``: the directory the cluster's goes under (default /tmp)."""
        self.port = port
        self.durable, self.parent = durable, parent
        self.bindir = postgres_bindir()
        self.directory: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(SUPERUSER)
            except KeyError:
                raise PostgresNotInstalled(f"no {SUPERUSER!r} system user to run PostgreSQL as: {SETUP_HINT}") from None
            self._uid, self._gid = user.pw_uid, user.pw_gid
            # Set in C between fork and exec (no Python in the child until preexec_fn).
            self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        else:
            self._uid, self._gid = os.getuid(), os.getgid()

    # --- where it is

    @property
    def data_dir(self) -> Path:
        assert self.directory is not None, "the cluster is not started"
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.directory is not None, "the cluster is not started"
        return self.directory / "socket"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None, "the cluster is not started"
        return self.directory / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        """The libpq URL of database ``dbname`` as the superuser, e.g.
        ``postgresql://postgres@/test_1?host=/tmp/ispd-pg-x/socket&port=55432``."""
        host = urllib.parse.quote(str(self.socket_dir), safe="/")
        return f"postgresql://{SUPERUSER}@/{urllib.parse.quote(dbname, safe='')}?host={host}&port={self.port}"

    # --- running

    def start(self, timeout: float = 15.0) -> PostgresCluster:
        self.directory = Path(tempfile.mkdtemp(prefix="ispd-pg-", dir=self.parent or "/tmp"))
        try:
            self.directory.chmod(0o755)
            for inner in (self.data_dir, self.socket_dir):
                inner.mkdir(mode=0o700)
                os.chown(inner, self._uid, self._gid)
            self.socket_dir.chmod(0o755)
            self._initdb()
            self._start_server(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        result = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER, "--no-sync",
             "-E", "UTF8", "--locale=C", "--no-instructions"],
            capture_output=True, text=True, cwd=self.directory, stdin=subprocess.DEVNULL, timeout=60,
            check=False, **self._run_as)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def _start_server(self, timeout: float) -> None:
        command = [
            str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=",
            *(() if self.durable else
              ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")),
            "-c", "max_connections=200",
            "-c", "shared_buffers=32MB",  # one cluster per test process: the default 128 MB each adds up
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.directory, preexec_fn=_death_signal(),  # noqa: PLW1509
                                         **self._run_as)
        psycopg = _psycopg()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}) before accepting connections:\n"
                                   f"{self.log_tail()}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections within {timeout:.0f} s ({exc}):\n"
                                       f"{self.log_tail()}") from None
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGKILL for the server and its processes after ``timeout``), then the
        directory goes."""
        if self.proc is not None:
            _shut_down(self.proc, timeout)
            self.proc = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def restart(self, timeout: float = 15.0) -> None:
        """Stop the server (fast shutdown: every session ends) and start it again on the same data."""
        assert self.proc is not None, "the cluster is not started"
        _shut_down(self.proc, timeout)
        self._start_server(timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    # --- databases

    def create_database(self) -> str:
        """A new empty database with a name no other in this cluster has had; its URL."""
        psycopg = _psycopg()
        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, url_or_name: str) -> None:
        """Drop a database (by its URL or its name), cutting any connection still open to it."""
        psycopg = _psycopg()
        name = url_or_name
        if "://" in url_or_name:
            name = psycopg.conninfo.conninfo_to_dict(url_or_name)["dbname"]
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                psycopg.sql.Identifier(name)))


def _shut_down(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGINT is PostgreSQL's fast shutdown; if the server is not gone within ``timeout``, SIGKILL
    it and every process it forked (they would notice their postmaster's death, but not at once)."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        pass
    children = descendants(proc.pid)
    proc.kill()
    proc.wait(10)
    for child in children:
        if not _gone(child):
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
