"""ispd.store.sqlite_backup on its own: what a restore leaves when it fails half way, and who owns
what it makes."""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from ispd.store import sqlite_backup
from ispd.store.errors import StoreError
from ispd.store.sqlite_backup import backup, restore


def make_store(path: Path, names: list[str]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER, name TEXT, applied_at REAL)")
        conn.execute("CREATE TABLE IF NOT EXISTS subscribers (username TEXT)")
        conn.execute("DELETE FROM schema_migrations")
        conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial', 0)")
        conn.execute("DELETE FROM subscribers")
        conn.executemany("INSERT INTO subscribers VALUES (?)", [(n,) for n in names])
    finally:
        conn.close()


def names_in(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT username FROM subscribers ORDER BY rowid")]
    finally:
        conn.close()


def test_a_restore_that_fails_as_it_puts_the_copy_in_place_leaves_the_old_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between setting the old store aside and naming the copy (a crash, an I/O error), the store
    path must never be empty: a daemon started then makes a new, empty store and runs on it."""
    store, saved = tmp_path / "ispd.db", tmp_path / "saved.db"
    make_store(store, ["alice"])
    backup(store, saved, 5.0)
    make_store(store, ["alice", "bob"])
    real_rename = os.rename

    def failing_rename(source: object, target: object) -> None:
        if str(source).endswith(".restoring"):
            raise OSError(errno.EIO, "Input/output error")
        real_rename(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_backup.os, "rename", failing_rename)
    with pytest.raises(StoreError):
        restore(saved, store, 1, 5.0)
    assert names_in(store) == ["alice", "bob"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_restore_whose_copy_cannot_be_synced_leaves_the_old_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, saved = tmp_path / "ispd.db", tmp_path / "saved.db"
    make_store(store, ["alice"])
    backup(store, saved, 5.0)
    make_store(store, ["alice", "bob"])
    real_fsync = sqlite_backup._fsync

    def failing_fsync(path: Path) -> None:
        if str(path).endswith(".restoring"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(path)

    monkeypatch.setattr(sqlite_backup, "_fsync", failing_fsync)
    with pytest.raises(StoreError):
        restore(saved, store, 1, 5.0)
    assert names_in(store) == ["alice", "bob"]
    assert not [p for p in tmp_path.iterdir() if "replaced" in p.name]


def test_a_restore_still_sets_the_old_store_aside_with_its_log(tmp_path: Path) -> None:
    store, saved = tmp_path / "ispd.db", tmp_path / "saved.db"
    make_store(store, ["alice"])
    backup(store, saved, 5.0)
    make_store(store, ["alice", "bob"])
    daemon = sqlite3.connect(store)  # a connection left open keeps the -wal (a daemon that died)
    daemon.execute("PRAGMA journal_mode = WAL")
    daemon.execute("INSERT INTO subscribers VALUES ('carol')")
    daemon.commit()
    _, aside = restore(saved, store, 1, 5.0)
    daemon.close()
    assert aside is not None and names_in(aside) == ["alice", "bob", "carol"]
    assert names_in(store) == ["alice"]
    assert not Path(f"{store}-wal").exists() or Path(f"{store}-wal").stat().st_size == 0


@pytest.mark.parametrize(("table", "row"), [
    ("version INTEGER PRIMARY KEY, dirty BOOLEAN NOT NULL", (5, 0)),  # golang-migrate's
    ("version TEXT PRIMARY KEY", ("20240101120000",)),  # Rails'
    ("version INTEGER PRIMARY KEY, name TEXT, applied_at REAL", (1, "create_users", 0)),
])
def test_another_program_s_schema_migrations_is_no_ispd_store(tmp_path: Path, table: str,
                                                               row: tuple[object, ...]) -> None:
    """A database of another program that keeps its own schema_migrations, given by mistake,
    must not replace the store (ispd would then fail to start on it, at "no such table")."""
    store, other = tmp_path / "ispd.db", tmp_path / "other.db"
    make_store(store, ["alice"])
    conn = sqlite3.connect(other)
    conn.execute(f"CREATE TABLE schema_migrations ({table})")
    conn.execute(f"INSERT INTO schema_migrations VALUES ({', '.join('?' * len(row))})", row)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"is no ispd store \(its schema_migrations table is not ispd's\)"):
        restore(other, store, 21, 5.0)
    assert names_in(store) == ["alice"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ispd.db")) == ["ispd.db"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_restore_by_root_where_the_store_is_gone_gives_it_to_the_directory_owner(tmp_path: Path) -> None:
    """As the daemon's own store is made (ispd/store/sqlite.py): root restoring into the daemon's
    /var/lib/ispd must not leave a root-owned 0600 file the daemon (user ispd) cannot open. And
    0640, as ispd makes it: it was left 0600, which the group that reads the store could not."""
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 4321, 4321)
    saved = tmp_path / "saved.db"
    make_store(tmp_path / "old.db", ["alice"])
    backup(tmp_path / "old.db", saved, 5.0)
    restore(saved, state / "ispd.db", 1, 5.0)
    made = (state / "ispd.db").stat()
    assert (made.st_uid, made.st_gid) == (4321, 4321)
    assert stat.S_IMODE(made.st_mode) == 0o640
    assert names_in(state / "ispd.db") == ["alice"]


class StopAtLook(threading.Event):
    """Set from its ``at``-th look on: a Ctrl-C that comes while the restore copies."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.looks = at, 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.at


@pytest.mark.parametrize("at", [1, 3])
def test_a_restore_asked_to_stop_leaves_the_store_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             at: int) -> None:
    store, saved = tmp_path / "ispd.db", tmp_path / "saved.db"
    make_store(saved, [f"from-the-backup-{i:04}" * 10 for i in range(2000)])
    make_store(store, ["alice"])
    monkeypatch.setattr(sqlite_backup, "_COPY_STEP_PAGES", 1)
    assert saved.stat().st_size > 20 * 4096  # more steps than the looks before the stop
    stop = StopAtLook(at)
    with pytest.raises(sqlite_backup.RestoreStopped):
        restore(saved, store, 1, 5.0, stop)
    assert stop.looks == at  # it stopped at once
    assert names_in(store) == ["alice"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ispd.db", "saved.db"]


@pytest.mark.parametrize("at", [1, 3])
def test_a_backup_asked_to_stop_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    store, saved = tmp_path / "ispd.db", tmp_path / "saved.db"
    make_store(store, [f"subscriber-{i:04}" * 10 for i in range(2000)])
    monkeypatch.setattr(sqlite_backup, "_COPY_STEP_PAGES", 1)
    stop = StopAtLook(at)
    with pytest.raises(sqlite_backup.BackupStopped):
        backup(store, saved, 5.0, stop)
    assert stop.looks == at  # it stopped at once
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ispd.db")) == []


def test_a_backup_in_steps_beside_a_writer_is_one_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The steps a stop is looked for between read one snapshot: a write of the daemon's between
    two of them neither tears the copy nor starts it over (forever, under a steady load)."""
    store, saved = tmp_path / "ispd.db", tmp_path / "saved.db"
    make_store(store, [f"subscriber-{i:04}" * 10 for i in range(2000)])
    monkeypatch.setattr(sqlite_backup, "_COPY_STEP_PAGES", 1)
    writer = sqlite3.connect(store, isolation_level=None, check_same_thread=False)
    writes = 0

    class WriteAtEachLook(threading.Event):
        def is_set(self) -> bool:
            nonlocal writes
            writer.execute("INSERT INTO subscribers VALUES ('late')")
            writes += 1
            assert writes < 1000, "the copy starts over at each write"
            return False

    try:
        copied = backup(store, saved, 5.0, WriteAtEachLook())
    finally:
        writer.close()
    assert writes > 20  # one look per page, each after a write
    assert names_in(saved) == [f"subscriber-{i:04}" * 10 for i in range(2000)]
    assert copied.schema_version == 1


def fill_up_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The new file a backup or restore writes holds two pages at most: SQLite's own "database
    or disk is full", as from a full disk under it."""
    real_connect = sqlite3.connect

    def connect(path: str | os.PathLike[str], *args: object, **kwargs: object) -> sqlite3.Connection:
        conn = real_connect(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path).endswith((".partial", ".restoring")):
            conn.execute("PRAGMA max_page_count = 2")
        return conn

    monkeypatch.setattr(sqlite_backup.sqlite3, "connect", connect)


def test_a_backup_to_a_full_disk_names_the_backup_not_the_store(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """From the disk-full hunt: a backup onto a full disk said "cannot back up
    /…/store/ispd.db: database or disk is full", sending the operator to the store's disk."""
    store = tmp_path / "store" / "ispd.db"
    store.parent.mkdir()
    make_store(store, [f"user{n:05}" for n in range(5000)])
    (tmp_path / "backups").mkdir()
    destination = tmp_path / "backups" / "ispd.db"
    fill_up_copies(monkeypatch)
    with pytest.raises(StoreError) as raised:
        backup(store, destination, 5.0)
    assert str(raised.value) == f"cannot write {destination}: database or disk is full"
    assert os.listdir(tmp_path / "backups") == []


def test_a_restore_onto_a_full_disk_names_the_store_not_the_backup(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store" / "ispd.db"
    store.parent.mkdir()
    make_store(store, ["old"])
    saved = tmp_path / "backup.db"
    make_store(saved, [f"user{n:05}" for n in range(5000)])
    fill_up_copies(monkeypatch)
    with pytest.raises(StoreError) as raised:
        restore(saved, store, 1, 5.0)
    assert str(raised.value) == f"cannot restore into {store}: database or disk is full"
    monkeypatch.undo()
    assert names_in(store) == ["old"]


def a_dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_copies_a_kill_left_half_made_are_removed_by_the_next_backup_and_restore(tmp_path: Path) -> None:
    """kill -9 (the OOM killer, a cron job's timeout) of a backup or a restore left its copy under
    the temporary name, as large as the store and holding its password verifiers, hidden, for
    good: every interrupted run added one. The next backup into that directory and the next
    restore of that store remove those whose process is gone, and say which; a copy another
    process is making at that moment stays."""
    store, backups = tmp_path / "ispd.db", tmp_path / "backups"
    backups.mkdir()
    make_store(store, ["alice"])
    dead, alive = a_dead_pid(), os.getppid()
    killed = [backups / f".monday.db.{dead}.partial", backups / f".monday.db.{dead}.partial-journal"]
    restoring = [tmp_path / f".ispd.db.{dead}.restoring", tmp_path / f".ispd.db.{dead}.restoring-journal"]
    running = [backups / f".tuesday.db.{alive}.partial", tmp_path / f".ispd.db.{alive}.restoring"]
    others = [backups / ".notes.partial", tmp_path / f".other.db.{dead}.restoring"]
    for path in [*killed, *restoring, *running, *others]:
        path.write_bytes(b"SQLite format 3\x00 half a copy")
    not_ours = backups / f".thursday.db.{dead}.partial"  # another program's name alike: not SQLite's
    not_ours.write_bytes(b"someone else's download")
    others.append(not_ours)

    copied = backup(store, backups / "wednesday.db", busy_timeout=5)

    assert copied.removed == tuple(sorted(killed))
    assert not any(path.exists() for path in killed)
    copied, _ = restore(backups / "wednesday.db", store, newest_schema=1, busy_timeout=5)
    assert copied.removed == tuple(sorted(restoring))
    assert not any(path.exists() for path in restoring)
    assert all(path.exists() for path in [*running, *others])
    assert names_in(store) == ["alice"]


@pytest.mark.parametrize("stop", [None, threading.Event()], ids=["in-one-step", "in-steps"])
def test_a_backup_lets_the_stores_wal_go_once_its_pages_are_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: threading.Event | None) -> None:
    """The copy in steps read within a transaction of the store's that stayed open through the
    check of the copy (PRAGMA quick_check: minutes for a large store): meanwhile the daemon's
    WAL could not be checkpointed to its start and grew with every write, which the copy in one
    step, ended before the check, never made it do."""
    store, saved = tmp_path / "ispd.db", tmp_path / "saved.db"
    make_store(store, [f"subscriber-{i:04}" for i in range(500)])
    real_checked = sqlite_backup._checked
    checkpoints: list[tuple[int, int, int]] = []

    def checked_while_the_daemon_writes(conn: sqlite3.Connection, name: Path) -> int:
        daemon = sqlite3.connect(store, isolation_level=None, timeout=0)
        try:
            daemon.execute("INSERT INTO subscribers VALUES ('late')")
            checkpoints.append(daemon.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
        finally:
            daemon.close()
        return real_checked(conn, name)

    monkeypatch.setattr(sqlite_backup, "_checked", checked_while_the_daemon_writes)
    backup(store, saved, 5.0, stop)
    assert [busy for busy, _, _ in checkpoints] == [0]  # no reader of the store's left
    assert len(names_in(saved)) == 500
