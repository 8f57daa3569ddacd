"""The supervisor in-process, for what is hard to provoke from outside (a broken store)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ispd import supervisor as supervisor_module
from ispd.config import Config, DaemonConfig
from ispd.configtypes import SocketAddress
from ispd.daemonlock import DaemonLockError
from ispd.metrics.config import MetricsConfig
from ispd.sdnotify import Notifier
from ispd.store import open_store
from ispd.store.config import StoreConfig
from ispd.store.errors import StoreError
from ispd.store.postgresql import _DAEMON_LOCK, PostgresDaemonLock
from ispd.store.sqlite import Migration, connect, migrate, schema_version, sqlite_migrations
from ispd.supervisor import Supervisor

# A start, DNS's included, takes a second or two alone; under the whole suite's load on a
# 2-core machine it has taken past 10 s.
READY_WITHIN = 30


class RecordingNotifier(Notifier):
    def __init__(self) -> None:
        super().__init__("")
        self.sent: list[tuple[str, ...]] = []
        self.ready_event = asyncio.Event()

    def notify(self, *fields: str) -> bool:
        self.sent.append(fields)
        if "READY=1" in fields:
            self.ready_event.set()
        return True


def config_for(tmp_path: Path, **store: Any) -> Config:
    return Config(daemon=DaemonConfig(control_socket=tmp_path / "control.sock"),
                  store=StoreConfig(path=tmp_path / "s.db", **store),
                  metrics=MetricsConfig(listen=SocketAddress("127.0.0.1", 0)))


@asynccontextmanager
async def running(config: Config, config_path: Path) -> AsyncIterator[tuple[Supervisor, RecordingNotifier]]:
    """A supervisor serving in this event loop; on exit it must stop cleanly (exit code 0)."""
    notifier = RecordingNotifier()
    supervisor = Supervisor(config_path, config, notifier)
    task = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(notifier.ready_event.wait(), READY_WITHIN)
    yield supervisor, notifier
    supervisor.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert ("STOPPING=1",) in notifier.sent


async def test_health_turns_503_when_the_store_breaks_and_stop_is_clean(tmp_path: Path) -> None:
    async with running(config_for(tmp_path), tmp_path / "unused.toml") as (supervisor, _):
        ok, report = await supervisor.health_report()
        assert ok and report["store"] == {"ok": True, "detail": ""}

        assert supervisor.store is not None
        await supervisor.store.close()
        ok, report = await supervisor.health_report()
        assert not ok and report["store"] == {"ok": False, "detail": "the store is closed"}
        assert report["metrics"]["ok"] is True


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another connection holds the store's write lock: commits fail once the busy timeout runs out."""
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        yield
    finally:
        blocker.close()


async def test_health_fails_while_commits_fail_and_recovers_with_the_next_one(tmp_path: Path) -> None:
    """From a bug hunt: on a full disk every commit failed while /healthz said the store was ok
    (its probe is a read). Here the write lock is held by another connection past the busy
    timeout, which fails commits the same way."""
    async with running(config_for(tmp_path, busy_timeout_seconds=0.3), tmp_path / "unused.toml") as (supervisor, _):
        store = supervisor.store
        assert store is not None
        with write_lock_held(tmp_path / "s.db"):
            with pytest.raises(StoreError):
                await store.add_subscriber("alice", actor="t")
            ok, report = await supervisor.health_report()
            assert not ok and report["store"] == {"ok": False, "detail": "writes are failing: database is locked"}
        await store.add_subscriber("alice", actor="t")
        ok, report = await supervisor.health_report()
        assert ok and report["store"] == {"ok": True, "detail": ""}


async def test_health_recovers_when_commits_work_again_with_no_write_since(tmp_path: Path) -> None:
    """From a bug hunt (ispd on PostgreSQL, the server stopped then started again): one
    Accounting-Request failed while it was down, none came after, and /healthz said "writes are
    failing: ... No such file or directory" (503) 28 s after the server was back, until some
    client's write succeeded: a quiet node stayed unhealthy. It now tries a write itself."""
    async with running(config_for(tmp_path, busy_timeout_seconds=0.3), tmp_path / "unused.toml") as (supervisor, _):
        store = supervisor.store
        assert store is not None
        with write_lock_held(tmp_path / "s.db"), pytest.raises(StoreError):
            await store.add_subscriber("alice", actor="t")
        ok, report = await supervisor.health_report()  # no write since
        assert ok and report["store"] == {"ok": True, "detail": ""}


async def test_reload_of_a_missing_file_is_rejected_and_ready_again(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    async with running(config, tmp_path / "missing.toml") as (supervisor, notifier):
        assert await supervisor.reload() is False
        assert supervisor.config == config
        assert notifier.sent[-1][0] == "READY=1"
        assert any(f[0] == "RELOADING=1" for f in notifier.sent)


async def test_the_daemon_purges_history_past_its_retention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hourly, the first time an hour after the start (here a second): a host that boots
    with its clock years ahead deleted at once every row younger than the step (the wall-clock
    bug hunt: the audit log and the accounting history gone before NTP set the clock right)."""
    import time

    import ispd.supervisor
    from ispd.store import open_store
    from ispd.store.models import Lease, LeaseState

    config = config_for(tmp_path, history_retention_days=1)
    two_days_ago = time.time() - 2 * 86400
    old = await open_store(config.store, clock=lambda: two_days_ago)
    await old.record_lease(Lease("198.18.0.5", LeaseState.EXPIRED, two_days_ago, two_days_ago + 60), event="expired")
    await old.add_subscriber("kept", actor="t")
    await old.close()

    monkeypatch.setattr(ispd.supervisor, "HISTORY_PURGE_INTERVAL_SECONDS", 1.0)
    async with running(config, tmp_path / "unused.toml") as (supervisor, _):
        assert supervisor.store is not None
        await asyncio.sleep(0.4)
        assert await supervisor.store.audit_since(0) != []  # not at the start
        # Each kind of history goes in its own transactions, the audit log after the leases:
        # wait for the last one.
        for _ in range(250):
            if not await supervisor.store.audit_since(0):
                break
            await asyncio.sleep(0.02)
        assert await supervisor.store.audit_since(0) == []
        assert await supervisor.store.list_leases(include_ended=True) == []
        assert (await supervisor.store.get_subscriber("kept")).username == "kept"


async def test_a_stuck_event_handler_cannot_stretch_the_shutdown_past_the_grace(tmp_path: Path) -> None:
    from ispd.events import SubscriberAdded

    config = config_for(tmp_path).model_copy(update={"daemon": DaemonConfig(
        shutdown_grace_seconds=0.5, control_socket=tmp_path / "control.sock")})
    notifier = RecordingNotifier()
    supervisor = Supervisor(tmp_path / "unused.toml", config, notifier)
    task = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(notifier.ready_event.wait(), READY_WITHIN)

    async def stuck(event: SubscriberAdded) -> None:
        await asyncio.sleep(3600)

    supervisor.bus.subscribe(SubscriberAdded, stuck)
    supervisor.bus.publish(SubscriberAdded(0.0, 1, "a"))
    started = asyncio.get_running_loop().time()
    supervisor.request_stop()
    assert await asyncio.wait_for(task, 10) == 1  # work was cut off: say so
    assert asyncio.get_running_loop().time() - started < 2


@asynccontextmanager
async def notified(tmp_path: Path, config: Config) -> AsyncIterator[tuple[Supervisor, asyncio.Task[int], socket.socket]]:
    """A supervisor running on ``config``, its notifications to systemd coming to ``listener``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify.sock"))
        listener.setblocking(False)
        supervisor = Supervisor(tmp_path / "unused.toml", config, Notifier(str(tmp_path / "notify.sock")))
        yield supervisor, asyncio.create_task(supervisor.run()), listener


class SlowMigration(Migration):
    """A real migration that takes its time, as one does on tens of millions of rows."""

    __slots__ = ()

    def statements(self) -> Iterator[str]:
        time.sleep(0.8)
        yield from super().statements()


async def test_systemd_is_asked_for_more_start_time_while_a_migration_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations = sqlite_migrations()
    newest = migrations[-1]
    config = config_for(tmp_path)
    conn = connect(config.store.path, 5)
    migrate(conn, migrations, target=newest.version - 1)
    conn.close()
    monkeypatch.setattr("ispd.store.sqlite.sqlite_migrations",
                        lambda: [*migrations[:-1], SlowMigration(newest.version, newest.name, newest.sql)])
    monkeypatch.setattr("ispd.supervisor.MIGRATION_EXTEND_INTERVAL_SECONDS", 0.2, raising=False)

    loop = asyncio.get_running_loop()
    async with notified(tmp_path, config) as (supervisor, task, listener):
        received: list[str] = []
        while not received or not received[-1].startswith("READY=1"):
            received.append((await asyncio.wait_for(loop.sock_recv(listener, 4096), 10)).decode())
        supervisor.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    extensions = [m for m in received if m.startswith("EXTEND_TIMEOUT_USEC=")]
    # One as the migration begins, then one per interval while it runs; all before READY=1.
    assert len(extensions) >= 3, received
    assert all(m.split("\n")[0] == "EXTEND_TIMEOUT_USEC=30000000" for m in extensions)
    assert f"STATUS=migrating the store to schema {newest.version}: {newest.version} {newest.name}" in extensions[0]
    assert received.index(extensions[-1]) < len(received) - 1


async def test_a_new_store_s_quick_migrations_ask_systemd_once(tmp_path: Path) -> None:
    """From CI: a message per migration step filled the notify socket's queue (10 datagrams),
    and with a reader not draining it the start blocked on the eleventh send."""
    loop = asyncio.get_running_loop()
    async with notified(tmp_path, config_for(tmp_path)) as (supervisor, task, listener):
        received: list[str] = []
        while not received or not received[-1].startswith("READY=1"):
            received.append((await asyncio.wait_for(loop.sock_recv(listener, 4096), 10)).decode())
        supervisor.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
    assert len(sqlite_migrations()) > 10
    assert len([m for m in received if m.startswith("EXTEND_TIMEOUT_USEC=")]) == 1, received


def two_slow_steps_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Config, list[Migration]]:
    """A store two migrations behind, and those two slow (as on tens of millions of rows)."""
    migrations = sqlite_migrations()
    config = config_for(tmp_path)
    conn = connect(config.store.path, 5)
    migrate(conn, migrations, target=migrations[-3].version)
    conn.close()
    slow: list[Migration] = [SlowMigration(m.version, m.name, m.sql) for m in migrations[-2:]]
    monkeypatch.setattr("ispd.store.sqlite.sqlite_migrations", lambda: [*migrations[:-2], *slow])
    return config, slow


def schema_of(config: Config) -> int:
    conn = connect(config.store.path, 5)
    try:
        return schema_version(conn)
    finally:
        conn.close()


async def test_a_stop_during_a_migration_begins_no_further_step(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """From the verification: a SIGTERM during one migration still ran every step after it,
    sending EXTEND_TIMEOUT_USEC all the while (which systemd applies to its stop timeout)."""
    config, slow = two_slow_steps_behind(tmp_path, monkeypatch)
    loop = asyncio.get_running_loop()
    async with notified(tmp_path, config) as (supervisor, task, listener):
        first = (await asyncio.wait_for(loop.sock_recv(listener, 4096), 10)).decode()
        assert first.startswith("EXTEND_TIMEOUT_USEC=") and f": {slow[0].version} " in first
        supervisor.request_stop()  # during the first slow step
        assert await asyncio.wait_for(task, 10) == 0
        after: list[str] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                after.append(listener.recv(4096).decode())
    assert not [m for m in after if m.startswith("EXTEND_TIMEOUT_USEC=")], after
    assert schema_of(config) == slow[0].version  # the step under way finished; the next never began


def test_the_lock_is_the_store_files_whatever_path_names_it(tmp_path: Path) -> None:
    """From the verification: the lock was beside the path as written, so a config naming the
    store through a symlink (or a symlinked directory) locked another file, and two daemons ran
    on one store."""
    from ispd.daemonlock import DaemonLock, DaemonLockError

    real = tmp_path / "real"
    real.mkdir()
    (real / "ispd.db").touch()
    (tmp_path / "link.db").symlink_to(real / "ispd.db")
    (tmp_path / "dir").symlink_to(real)
    first = DaemonLock(real / "ispd.db")
    first.acquire()
    try:
        for other in (tmp_path / "link.db", tmp_path / "dir" / "ispd.db"):
            with pytest.raises(DaemonLockError, match="another ispd"):
                DaemonLock(other).acquire()
    finally:
        first.release()


def test_a_lock_left_by_a_killed_daemon_that_had_this_pid_is_found(tmp_path: Path) -> None:
    """In a container the daemon is PID 1 at every start: the lock file a kill -9 left names the
    PID the next start has, and "not my own PID" took it for this process's and said nothing
    (proved by running ispd twice under unshare --pid, the first killed with SIGKILL)."""
    import os

    from ispd.daemonlock import DaemonLock

    lock = DaemonLock(tmp_path / "ispd.db")
    lock.path.write_text(f"{os.getpid()}\n")  # by an earlier life that had this PID
    lock.acquire()
    try:
        assert lock.previous_holder == os.getpid()
    finally:
        lock.release()
    again = DaemonLock(tmp_path / "ispd.db")
    again.acquire()  # after a clean stop: nothing found
    try:
        assert again.previous_holder is None
    finally:
        again.release()


async def test_store_migrate_stopped_by_ctrl_c_begins_no_further_step(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """From the second verification: Ctrl-C on `ispd store migrate` let the next step begin."""
    import argparse
    import os
    import signal

    from ispd.cli import CommandFailed, cmd_store_migrate

    config, slow = two_slow_steps_behind(tmp_path, monkeypatch)
    asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGINT)
    with pytest.raises(CommandFailed, match=f"stopped before migration {slow[1].version} {slow[1].name}"):
        await cmd_store_migrate(config, argparse.Namespace())
    assert schema_of(config) == slow[0].version


class ScriptedLock(PostgresDaemonLock):
    """The daemon lock as another node's daemon holds it: ``looks`` are what each probe sees
    (held?, the server's start time); the last repeats. Taking it always succeeds."""

    def __init__(self, config: StoreConfig, looks: list[tuple[bool, str]]) -> None:
        super().__init__(config)
        self.looks = looks
        self.freed_at: float | None = None  # when a probe first found it free
        self.taken_at: float | None = None
        self.tries = 0

    def acquire(self) -> None:
        self.tries += 1
        if self.tries == 1:
            raise DaemonLockError("held", in_use=True, holder="ispd other pid 1")
        self.taken_at = time.monotonic()

    def probe(self) -> tuple[bool, str | None, str]:
        held, started = self.looks.pop(0) if len(self.looks) > 1 else self.looks[0]
        if not held and self.freed_at is None:
            self.freed_at = time.monotonic()
        return held, "ispd other pid 1" if held else None, started

    def keep(self) -> bool:
        return False

    def release(self) -> None:
        pass


@pytest.mark.parametrize(("looks", "grace"), [
    ([(True, "run 1"), (True, "run 1"), (False, "run 1")], 0.0),  # the holder let it go: at once
    ([(True, "run 1"), (True, "run 1"), (False, "run 2")], 0.6),  # every session ended since: later
    ([(False, "run 1")], 0.6),  # never seen held by the probe: later
], ids=["released", "sessions-ended", "never-seen-held"])
async def test_a_standby_leaves_a_lock_freed_with_every_session_to_its_holder_for_a_while(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch, looks: list[tuple[bool, str]],
        grace: float) -> None:
    monkeypatch.setattr(supervisor_module, "STANDBY_POLL_SECONDS", 0.05)
    monkeypatch.setattr(supervisor_module, "DAEMON_LOCK_CHECK_SECONDS", 0.1)
    monkeypatch.setattr(supervisor_module, "RESTART_GRACE_SECONDS", 0.6)
    config = standby_config(tmp_path, postgres_url)
    notifier = RecordingNotifier()
    supervisor = Supervisor(tmp_path / "unused.toml", config, notifier)
    lock = ScriptedLock(config.store, looks)
    supervisor.lock = lock
    task = asyncio.create_task(supervisor.run())
    try:
        # READY=1 twice: as a standby, then serving.
        for _ in range(100):
            if sum("READY=1" in sent for sent in notifier.sent) == 2:
                break
            await asyncio.sleep(0.05)
        assert lock.freed_at is not None and lock.taken_at is not None, notifier.sent
        waited = lock.taken_at - lock.freed_at
        assert grace <= waited < grace + 0.5, waited
        assert notifier.sent[0] == ("READY=1", "STATUS=standby: ispd other pid 1 holds the store; taking over "
                                    "when it stops")
    finally:
        supervisor.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


def standby_config(tmp_path: Path, url: str) -> Config:
    return Config(daemon=DaemonConfig(control_socket=tmp_path / "control.sock", standby=True),
                  store=StoreConfig(path=tmp_path / "s.db", backend="postgresql", url=url, busy_timeout_seconds=0.1),
                  metrics=MetricsConfig(listen=SocketAddress("127.0.0.1", 0)))


async def test_health_says_a_standby_is_taking_over_while_it_opens_the_store(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening the store may take minutes (a migration): /healthz answers meanwhile (it raised)."""
    monkeypatch.setattr(supervisor_module, "STANDBY_POLL_SECONDS", 0.05)
    real_open = supervisor_module.open_store
    opening = asyncio.Event()

    async def slow_open(*args: Any, **kwargs: Any) -> Any:
        opening.set()
        await asyncio.sleep(1.0)
        return await real_open(*args, **kwargs)

    monkeypatch.setattr(supervisor_module, "open_store", slow_open)
    config = standby_config(tmp_path, postgres_url)
    supervisor = Supervisor(tmp_path / "unused.toml", config, RecordingNotifier())
    supervisor.lock = ScriptedLock(config.store, [(True, "run 1"), (False, "run 1")])
    task = asyncio.create_task(supervisor.run())
    try:
        await asyncio.wait_for(opening.wait(), 10)
        assert await supervisor.health_report() == (False, {"daemon": {
            "ok": False, "detail": "taking over the store from ispd other pid 1"}})
    finally:
        supervisor.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


class SlowToTake(PostgresDaemonLock):
    """Held by another at first; then free, and taking it takes a while, during which a TERM comes."""

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.tries = 0
        self.taking = threading.Event()

    def acquire(self) -> None:
        self.tries += 1
        if self.tries == 1:
            raise DaemonLockError("held", in_use=True, holder="ispd other pid 1")
        self.taking.set()
        time.sleep(0.5)
        super().acquire()

    def probe(self) -> tuple[bool, str | None, str]:
        return False, None, "run 1"


async def test_a_term_while_a_standby_takes_the_lock_lets_it_go(tmp_path: Path, postgres_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread that takes the lock finishes after the daemon released it at its stop: it must
    not keep it (before, it did until the process ended)."""
    monkeypatch.setattr(supervisor_module, "STANDBY_POLL_SECONDS", 0.05)
    monkeypatch.setattr(supervisor_module, "RESTART_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(supervisor_module, "DAEMON_LOCK_CHECK_SECONDS", 0.0)
    config = standby_config(tmp_path, postgres_url)
    supervisor = Supervisor(tmp_path / "unused.toml", config, RecordingNotifier())
    lock = SlowToTake(config.store)
    supervisor.lock = lock
    task = asyncio.create_task(supervisor.run())
    assert await asyncio.to_thread(lock.taking.wait, 10)
    supervisor.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    await asyncio.sleep(1.0)  # the thread's acquire ends meanwhile
    assert lock._conn is None
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT pg_try_advisory_lock(%s)", (_DAEMON_LOCK,)).fetchone()[0] is True


async def test_a_standby_that_cannot_serve_the_store_s_schema_waits_all_the_same(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older ispd on standby, once the active one upgraded the store: it serves no DNS (it
    cannot read the schema) but stands by, rather than exit into a restart loop."""
    from ispd.dns.config import DNSConfig
    from ispd.store.errors import SchemaTooNew

    monkeypatch.setattr(supervisor_module, "STANDBY_POLL_SECONDS", 0.05)

    async def newer(*args: Any, **kwargs: Any) -> Any:
        raise SchemaTooNew("the store is at schema version 99, newer than this ispd knows (17); upgrade ispd")

    monkeypatch.setattr(supervisor_module, "open_store", newer)
    config = Config(daemon=DaemonConfig(control_socket=tmp_path / "control.sock", standby=True,
                                        standby_serves=["dns"]),
                    store=StoreConfig(path=tmp_path / "s.db", backend="postgresql", url=postgres_url),
                    dns=DNSConfig(enabled=True, listen=[SocketAddress("127.0.0.1", 0)]),
                    metrics=MetricsConfig(listen=SocketAddress("127.0.0.1", 0)))
    notifier = RecordingNotifier()
    supervisor = Supervisor(tmp_path / "unused.toml", config, notifier)
    supervisor.lock = ScriptedLock(config.store, [(True, "run 1")])
    task = asyncio.create_task(supervisor.run())
    try:
        await asyncio.wait_for(notifier.ready_event.wait(), READY_WITHIN)
        assert notifier.sent[-1][1].startswith("STATUS=standby: "), notifier.sent
        assert sorted(supervisor.running) == ["metrics"]
        assert (await supervisor.health_report())[0] is True
    finally:
        supervisor.request_stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_a_standby_refuses_to_take_over_a_store_a_newer_ispd_migrated_meanwhile(
        tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its store was opened as it stood by (to resolve); `ispd store migrate` of a newer ispd ran
    since: at its takeover it refuses that schema, as any start would."""
    from ispd.dns.config import DNSConfig

    monkeypatch.setattr(supervisor_module, "STANDBY_POLL_SECONDS", 0.05)
    config = standby_config(tmp_path, postgres_url).model_copy(update={
        "daemon": DaemonConfig(control_socket=tmp_path / "control.sock", standby=True, standby_serves=["dns"]),
        "dns": DNSConfig(enabled=True, listen=[SocketAddress("127.0.0.1", 0)])})
    await (await open_store(config.store)).close()  # the active daemon's, at the schema this ispd knows
    notifier = RecordingNotifier()
    supervisor = Supervisor(tmp_path / "unused.toml", config, notifier)
    supervisor.lock = ScriptedLock(config.store, [(True, "run 1")] * 20 + [(False, "run 1")])
    task = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(notifier.ready_event.wait(), READY_WITHIN)
    assert sorted(supervisor.running) == ["dns", "metrics"]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)")
    assert await asyncio.wait_for(task, 10) == 1
    assert sum("READY=1" in sent for sent in notifier.sent) == 1  # never serving


async def test_a_term_during_a_reload_ends_it_and_sends_no_ready_after_stopping(tmp_path: Path) -> None:
    """SIGTERM while a reload is under way (a service slow to take its change, or a worker
    starting): the stop cancels the reload and waits for it, and systemd never hears READY=1
    after STOPPING=1. The reload ran on in the background and, cancelled as the services closed,
    sent READY=1 after STOPPING=1, or died with "Task exception was never retrieved" on a
    listener closed under it."""
    config_path = tmp_path / "ispd.toml"
    config_path.write_text(f'[daemon]\ncontrol_socket = "{tmp_path / "control.sock"}"\n'
                           f'[store]\npath = "{tmp_path / "s.db"}"\n'
                           '[metrics]\nlisten = "127.0.0.1:0"\n')
    notifier = RecordingNotifier()
    supervisor = Supervisor(config_path, config_for(tmp_path), notifier)
    task = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(notifier.ready_event.wait(), READY_WITHIN)
    reloading, cancelled = asyncio.Event(), asyncio.Event()

    async def slow_reload(old: Config, new: Config) -> None:
        reloading.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    supervisor.running["metrics"].service.reload = slow_reload  # type: ignore[method-assign]
    unhandled: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: unhandled.append(context))
    supervisor._hangup()
    await asyncio.wait_for(reloading.wait(), 10)
    supervisor.request_stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert cancelled.is_set()
    stopping = notifier.sent.index(("STOPPING=1",))
    assert not [fields for fields in notifier.sent[stopping:] if "READY=1" in fields]
    await asyncio.sleep(0)
    gc.collect()  # a task that died with an exception nobody took says so as it goes
    assert unhandled == []


async def test_a_reload_slow_to_unwind_and_the_drain_share_one_grace(tmp_path: Path) -> None:
    """The stop's grace bounds the whole stop: a reload that took its cancellation slowly and
    the services' drain after it each had a full grace, twice what systemd was told (from a
    review)."""
    config_path = tmp_path / "ispd.toml"
    config_path.write_text(f'[daemon]\ncontrol_socket = "{tmp_path / "control.sock"}"\n'
                           'shutdown_grace_seconds = 1\n'
                           f'[store]\npath = "{tmp_path / "s.db"}"\n'
                           '[metrics]\nlisten = "127.0.0.1:0"\n')
    config = config_for(tmp_path).model_copy(update={"daemon": DaemonConfig(
        control_socket=tmp_path / "control.sock", shutdown_grace_seconds=1)})
    notifier = RecordingNotifier()
    supervisor = Supervisor(config_path, config, notifier)
    task = asyncio.create_task(supervisor.run())
    await asyncio.wait_for(notifier.ready_event.wait(), READY_WITHIN)
    reloading = asyncio.Event()
    service = supervisor.running["metrics"].service

    async def slow_reload(old: Config, new: Config) -> None:
        reloading.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.8)  # unwinding takes most of the grace
            raise

    async def slow_stop() -> None:
        await asyncio.sleep(0.8)  # so does the drain

    service.reload = slow_reload  # type: ignore[method-assign]
    service.stop = slow_stop  # type: ignore[method-assign]
    supervisor._hangup()
    await asyncio.wait_for(reloading.wait(), 10)
    started = time.monotonic()
    supervisor.request_stop()
    assert await asyncio.wait_for(task, 10) == 1  # the grace ran out: said so
    assert time.monotonic() - started < 1.5


def test_a_standby_leaves_the_holder_the_urls_own_connect_timeout_to_take_the_lock_again(tmp_path: Path) -> None:
    """ef7ef8c let the url's connect_timeout win over busy_timeout_seconds, which the standby's
    grace for a holder reconnecting after a server restart was still reckoned from: with
    ``connect_timeout=30`` the holder's keeper could still be connecting when the standby took
    the lock over (12 s), and the holder then stopped (daemon.lock.lost)."""
    from ispd.supervisor import standby_grace_seconds

    def grace(url: str) -> float:
        store = StoreConfig(path=tmp_path / "s.db", backend="postgresql", url=url, busy_timeout_seconds=10)
        return standby_grace_seconds(config_for(tmp_path).model_copy(update={"store": store}))

    assert grace("postgresql://ispd@db.example.net/ispd") == 12
    assert grace("postgresql://ispd@db.example.net/ispd?connect_timeout=30") == 32
    assert grace("postgresql://ispd@db1.example.net,db2.example.net/ispd?connect_timeout=30") == 62
    assert grace("postgresql://ispd@db.example.net/ispd?connect_timeout=2") == 12
