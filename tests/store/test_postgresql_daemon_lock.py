"""The daemon lock of a store on PostgreSQL (``PostgresDaemonLock``): one daemon per database,
and the lock taken again after the server ended its connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from ispd.daemonlock import DaemonLockError
from ispd.store.config import StoreConfig
from ispd.store.postgresql import PostgresDaemonLock


def lock_on(url: str, directory: Path) -> PostgresDaemonLock:
    """A daemon's lock: its own local directory (another host's), the one database."""
    directory.mkdir()
    return PostgresDaemonLock(StoreConfig(path=directory / "ispd.db", backend="postgresql", url=url))


def end_its_connection(url: str, lock: PostgresDaemonLock) -> None:
    """What a restart of the server does to the lock's connection."""
    held: Any = lock._conn
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (held.raw.info.backend_pid,))


def test_a_second_daemon_is_refused_and_the_lock_taken_again_after_a_restart(postgres_url: str,
                                                                               tmp_path: Path) -> None:
    first, second = lock_on(postgres_url, tmp_path / "a"), lock_on(postgres_url, tmp_path / "b")
    first.acquire()
    try:
        with pytest.raises(DaemonLockError) as refused:
            second.acquire()
        assert refused.value.in_use and "another ispd" in str(refused.value)
        assert first.keep() is False  # alive: nothing to do
        end_its_connection(postgres_url, first)
        assert first.keep() is True and first.held
        end_its_connection(postgres_url, first)
        second.acquire()  # the other daemon was quicker
        try:
            with pytest.raises(DaemonLockError) as lost:
                first.keep()
            assert lost.value.in_use
        finally:
            second.release()
    finally:
        first.release()


def test_keep_fails_only_with_daemon_lock_error(postgres_url: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's keeper catches DaemonLockError and tries again; a driver error from
    the server going away again while the lock is taken (after the connect) must be one too,
    not end the keeper for the rest of the daemon's life."""
    lock = lock_on(postgres_url, tmp_path / "a")
    lock.acquire()
    try:
        end_its_connection(postgres_url, lock)

        def cut(conn: Any) -> None:
            raise psycopg.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(lock, "_take", cut)
        with pytest.raises(DaemonLockError) as unchecked:
            lock.keep()
        assert not unchecked.value.in_use and not lock.held
        monkeypatch.undo()
        assert lock.keep() is True and lock.held
    finally:
        lock.release()



def test_a_long_host_name_leaves_the_holders_pid_in_the_refusal(postgres_url: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL keeps 63 bytes of application_name: "ispd HOST pid N" with a host name of 55
    characters was cut to "... pi", and the refusal (and a standby's /healthz) named no PID."""
    import os
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "radius-dhcp-node-a.datacenter-east.prod.example-isp.net")
    first, second = lock_on(postgres_url, tmp_path / "a"), lock_on(postgres_url, tmp_path / "b")
    first.acquire()
    try:
        with pytest.raises(DaemonLockError) as refused:
            second.acquire()
        assert refused.value.held_by == os.getpid()
        holder = refused.value.holder or ""
        assert holder.startswith("ispd radius-dhcp-node-a.datacenter-east.") and holder.endswith(f" pid {os.getpid()}")
        assert len(holder) == 63 and f"({holder})" in str(refused.value)
    finally:
        first.release()


def test_a_session_shared_by_a_pooler_is_no_daemon_lock(postgres_url: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through PgBouncer in transaction mode a second daemon's connection got the first one's
    server session, whose session lock pg_try_advisory_lock took again: both daemons held it
    and both served. And the holder's own next statement may run on another session. Both are
    refused, naming the pooler."""
    import ispd.store.postgresql as pg

    first, second = lock_on(postgres_url, tmp_path / "a"), lock_on(postgres_url, tmp_path / "b")
    first.acquire()
    try:
        held: Any = first._conn
        # What the pooler does: the second client's statements run in the first's server session.
        monkeypatch.setattr(pg, "connect", lambda config: pg.PgConnection(held.raw))
        with pytest.raises(DaemonLockError, match=r"shares its session with other clients .*PgBouncer"):
            second.acquire()
        assert not second.held
        monkeypatch.undo()
        # The holder's statement answered by another session (the pooler gave it another).
        first._conn = pg.connect(first.config)
        with pytest.raises(DaemonLockError, match="shares its session") as lost:
            first.keep()
        assert lost.value.in_use  # the daemon stops (daemon.lock.lost)
    finally:
        first.release()
