"""`ispd store backup` beside a running daemon that writes, and `ispd store restore` with it stopped."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path

from ispd.store import StoreConfig, open_store
from tests.lab.process import ISPD, IspdProcess, base_config, interrupted_at_first_line


def usernames(daemon: IspdProcess) -> list[str]:
    return [s["username"] for s in json.loads(daemon.cli("subscriber", "list", "--json").stdout)]


def rows(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT username FROM subscribers ORDER BY id")]
    finally:
        conn.close()


def test_a_backup_beside_a_writing_daemon_is_whole_and_a_restore_puts_it_back(tmp_path: Path) -> None:
    with IspdProcess(tmp_path, base_config(tmp_path)) as daemon:
        daemon.start()
        for name in ("alice", "bob"):
            daemon.cli("subscriber", "add", name)
        # The daemon holds the store open: what it has committed may still be in the -wal file
        # alone, which a plain copy of ispd.db would miss.
        backups = tmp_path / "backups"
        backups.mkdir()
        first = daemon.cli("store", "backup", str(backups / "first.db")).stdout
        assert first.startswith(f"backed up {tmp_path / 'ispd.db'} (schema ") and "first.db: " in first, first
        assert rows(backups / "first.db") == ["alice", "bob"]
        mode = os.stat(backups / "first.db").st_mode
        assert stat.S_IMODE(mode) == 0o600  # password verifiers inside
        assert sorted(p.name for p in backups.iterdir()) == ["first.db"]  # one file, nothing left beside it

        # Backups while another process writes: each one whole, a prefix of what was written.
        stop = threading.Event()
        added: list[str] = []

        def writer() -> None:  # (through the store's own API: many more writes a second than CLI calls)
            async def write() -> None:
                store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
                try:
                    for number in range(2000):
                        if stop.is_set():
                            return
                        await store.add_subscriber(f"user{number}", actor="test")
                        added.append(f"user{number}")
                finally:
                    await store.close()

            asyncio.run(write())

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            for number in range(3):
                daemon.cli("store", "backup", str(backups / f"busy{number}.db"))
        finally:
            stop.set()
            thread.join(timeout=120)
        counts = []
        for number in range(3):
            copied = rows(backups / f"busy{number}.db")
            assert copied == ["alice", "bob", *added[: len(copied) - 2]], copied
            counts.append(len(copied))
        assert counts == sorted(counts) and counts[-1] > 2, counts  # taken while the writes went on

        refused = daemon.cli("store", "backup", str(backups / "first.db"), check=False)
        assert (refused.returncode, refused.stderr) == (
            1, f"ispd: {backups / 'first.db'} exists already: give a new name (a backup never overwrites one)\n")
        refused = daemon.cli("store", "restore", str(backups / "first.db"), check=False)
        assert refused.returncode == 1 and "is running on the store" in refused.stderr
        assert "systemctl stop ispd" in refused.stderr
        daemon.cli("subscriber", "add", "carol")  # after the backup: gone once it is restored
        assert daemon.terminate() == 0

        restoring, restored = daemon.cli("store", "restore", str(backups / "first.db")).stdout.splitlines()
        assert restoring == f"restoring {backups / 'first.db'} into {tmp_path / 'ispd.db'}"
        assert restored.startswith(f"restored {backups / 'first.db'} (schema ")
        aside = Path(restored.rsplit("the store it replaced is ", 1)[1].strip())
        assert "carol" in rows(aside)  # kept, with what its -wal held
        assert not any(Path(f"{tmp_path / 'ispd.db'}{suffix}").exists() for suffix in ("-wal", "-shm"))
        assert stat.S_IMODE(os.stat(tmp_path / "ispd.db").st_mode) == 0o640  # as the store it replaced
        daemon.start()
        assert usernames(daemon) == ["alice", "bob"]
        assert "Traceback" not in daemon.log_text()


def test_what_is_no_backup_is_refused_and_the_store_stays(tmp_path: Path) -> None:
    daemon = IspdProcess(tmp_path, base_config(tmp_path))
    daemon.write_config()
    daemon.cli("subscriber", "add", "alice")
    store = tmp_path / "ispd.db"

    def refused(*args: str) -> str:
        result = daemon.cli("store", *args, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        return result.stderr

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    assert refused("restore", str(text)) == f"ispd: {text} is not an SQLite database\n"
    assert refused("restore", str(tmp_path / "missing.db")) == f"ispd: no backup at {tmp_path / 'missing.db'}\n"
    assert refused("restore", str(store)) == f"ispd: {store} is the store itself\n"
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    assert refused("restore", str(other)) == f"ispd: {other} is no ispd store (it has no schema_migrations table)\n"
    newer = tmp_path / "newer.db"
    daemon.cli("store", "backup", str(newer))
    conn = sqlite3.connect(newer)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'from the future', 0)")
    conn.commit()
    conn.close()
    assert "is at schema version 999, newer than this ispd knows" in refused("restore", str(newer))
    # (the README's backup into /var/backups/ispd, which Debian does not have: what to do, not a riddle)
    assert refused("backup", str(tmp_path / "nowhere" / "b.db")) == (
        f"ispd: no directory {tmp_path / 'nowhere'}: make it first, writable by whoever runs the backup "
        f"(install -d -o ispd -m 0700 {tmp_path / 'nowhere'})\n")
    assert refused("backup", str(text / "b.db")) == f"ispd: {text} is not a directory\n"
    assert [p.name for p in tmp_path.iterdir() if "replaced" in p.name or p.name.startswith(".")] == []
    assert usernames(daemon) == ["alice"]


def test_a_restore_into_a_store_that_is_gone_makes_it(tmp_path: Path) -> None:
    daemon = IspdProcess(tmp_path, base_config(tmp_path))
    daemon.write_config()
    daemon.cli("subscriber", "add", "alice")
    backup = tmp_path / "b.db"
    daemon.cli("store", "backup", str(backup))
    shutil.move(tmp_path / "ispd.db", tmp_path / "lost.db")  # the disk that held it, replaced
    out = daemon.cli("store", "restore", str(backup)).stdout
    assert "the store it replaced" not in out
    assert usernames(daemon) == ["alice"]


def test_ctrl_c_stops_a_restore_and_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    """Before, the restore's thread went on behind the KeyboardInterrupt with the daemon's lock
    released: a daemon started meanwhile would open the store being replaced."""
    daemon = IspdProcess(tmp_path, base_config(tmp_path))
    daemon.write_config()
    daemon.cli("subscriber", "add", "alice")
    backup = tmp_path / "big.db"
    daemon.cli("store", "backup", str(backup))
    conn = sqlite3.connect(backup)  # 200 MB to copy: the Ctrl-C comes while it does
    conn.execute("CREATE TABLE ballast (b BLOB)")
    conn.executemany("INSERT INTO ballast VALUES (zeroblob(1000000))", [()] * 200)
    conn.commit()
    conn.close()
    code, stderr = interrupted_at_first_line([ISPD, "store", "restore", str(backup), "-c", str(daemon.config_path)],
                                             "restoring ")
    assert code == 1, stderr
    assert stderr == f"ispd: stopped: {tmp_path / 'ispd.db'} was left as it was\n"
    assert usernames(daemon) == ["alice"]
    assert [p.name for p in tmp_path.iterdir() if "replaced" in p.name or p.name.startswith(".")] == []


def test_a_term_or_ctrl_c_stops_a_backup_and_leaves_nothing(tmp_path: Path) -> None:
    """Before, a TERM left a hidden copy as large as the store (its password verifiers too) until
    the next backup into that directory, and Ctrl-C exited 130 while the copy went on behind it
    and took its name."""
    daemon = IspdProcess(tmp_path, base_config(tmp_path))
    daemon.write_config()
    daemon.cli("subscriber", "add", "alice")
    conn = sqlite3.connect(tmp_path / "ispd.db")  # 300 MB to copy: the signal comes while it does
    conn.execute("CREATE TABLE ballast (b BLOB)")
    conn.executemany("INSERT INTO ballast VALUES (randomblob(1000000))", [()] * 300)
    conn.commit()
    conn.close()
    backups = tmp_path / "backups"
    backups.mkdir()
    for signum in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen([ISPD, "store", "backup", str(backups / "b.db"), "-c", str(daemon.config_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while not any(p.name.endswith(".partial") for p in backups.iterdir()):  # the copy under way
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.005)
            proc.send_signal(signum)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert (proc.returncode, stderr) == (1, f"ispd: stopped: no backup was made ({backups / 'b.db'} was not "
                                                "written)\n"), signum
        assert list(backups.iterdir()) == [], signum
    assert usernames(daemon) == ["alice"]
