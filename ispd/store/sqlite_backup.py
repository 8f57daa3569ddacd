"""A consistent copy of the SQLite store while the daemon runs, and putting one back.

Copying ``ispd.db`` with ``cp`` while the daemon writes gives a file without the changes still
in ``ispd.db-wal`` (every recent lease, accounting record and subscriber), or a torn one. A
backup here is SQLite's online backup of one read snapshot, in one step: the daemon goes on
writing meanwhile (WAL readers block no writer), and the copy holds every transaction committed
when it began. It is made under a temporary name, checked (``PRAGMA quick_check``), turned into a
single self-contained file (rollback journal mode, no -wal beside it), fsynced with mode 0600 (it
holds password verifiers) and only then renamed to the name asked for. Nothing is migrated: a
backup taken before an upgrade has the old schema, as it should.

A restore must not leave the old store's -wal and -shm beside the new file: SQLite would apply
the old log to the new database. So it runs with the daemon stopped (it takes the daemon's
lock), folds the old store's log into it and sets the old files aside under one name
(``ispd.db.replaced-<time>``), then puts a checked copy of the backup in place with the old
file's owner and mode (0600 where there was none, owned like its directory: root restoring into
the daemon's /var/lib/ispd must not lock the daemon out). The store's name never goes empty on
the way: the old file is set aside by a second name (a hard link), and the checked, synced copy
replaces it in one rename. A crash or an error half way leaves the old store where it was (a
daemon started on an empty name makes a new, empty store and runs on it). A backup of an older
schema is migrated by the next start. A copy that a kill -9, the OOM killer or a power cut
stopped half way stays under its temporary name (as large as the store, hidden, holding its
password verifiers): the next backup into that directory, or restore of that store, removes it
once the process that made it is gone, and says so. Asked to stop (``stop``: Ctrl-C, a TERM), a backup
stops and removes its copy (read in steps then, all within one read transaction: one snapshot
still); a restore stops
while it copies, or once the copy is made, and leaves the old store as it was; once the old store
is being set aside it finishes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ispd.store.errors import StoreError
from ispd.store.sqlite import directory_owner_for_root, sqlite_migrations

_HEADER = b"SQLite format 3\x00"
_SIDE_FILES = ("-wal", "-shm", "-journal")
# A stoppable copy copies this many pages at a time (16 MB of SQLite's 4 kB pages), looking for a stop between.
_COPY_STEP_PAGES = 4096
# The temporary names of a copy under way, ``.<name>.<pid>.partial`` (backup) and
# ``.<name>.<pid>.restoring`` (restore), and what SQLite makes beside them.
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]+)\.(?P<kind>partial|restoring)(?P<side>-wal|-shm|-journal)?")


class RestoreStopped(Exception):
    """The restore was asked to stop before it touched the store: the store is as it was."""


class BackupStopped(Exception):
    """The backup was asked to stop: no backup was made, nothing of it is left."""


@dataclass(frozen=True, slots=True)
class Copied:
    path: Path
    bytes: int
    schema_version: int
    seconds: float
    # What copies interrupted before (killed half way) left behind and this one removed.
    removed: tuple[Path, ...] = ()


def backup(store: Path, destination: Path, busy_timeout: float, stop: threading.Event | None = None) -> Copied:
    """A consistent copy of ``store`` at ``destination``, which must not exist yet; ``stop`` set
    (Ctrl-C, a TERM): BackupStopped, the copy under way removed, until it has its name."""
    began = time.monotonic()
    if not store.is_file():
        raise StoreError(f"no store at {store}")
    if destination.exists() or destination.is_symlink():
        raise StoreError(f"{destination} exists already: give a new name (a backup never overwrites one)")
    if not destination.parent.is_dir():
        if not destination.parent.exists():  # (or not ours to look into: the same for the operator)
            raise StoreError(f"no directory {destination.parent}: make it first, writable by whoever runs "
                             f"the backup (install -d -o ispd -m 0700 {destination.parent})")
        raise StoreError(f"{destination.parent} is not a directory")
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.partial")
    removed = remove_interrupted(destination.parent, "partial")
    try:
        version = _copy(store, temporary, busy_timeout, destination, stop)
        _fsync(temporary)
        if stop is not None and stop.is_set():
            raise RestoreStopped()
        os.rename(temporary, destination)
        _fsync(destination.parent)
    except RestoreStopped:
        raise BackupStopped() from None
    except sqlite3.Error as exc:
        if _full(exc):  # the copy's disk, not the store's
            raise StoreError(f"cannot write {destination}: {exc}") from None
        raise StoreError(f"cannot back up {store}: {exc}") from None
    except OSError as exc:
        raise StoreError(f"cannot write {destination}: {exc.strerror or exc}") from None
    finally:
        _remove_partial(temporary)
    return Copied(destination, destination.stat().st_size, version, time.monotonic() - began, removed)


def restore(backup_file: Path, store: Path, newest_schema: int, busy_timeout: float,
            stop: threading.Event | None = None) -> tuple[Copied, Path | None]:
    """Put a copy of ``backup_file`` in place of ``store`` (its real file, through symlinks);
    the old store and its side files are set aside under one name, returned. The caller holds
    the daemon's lock. RestoreStopped once ``stop`` is set, until the old store is touched."""
    began = time.monotonic()
    real = Path(os.path.realpath(store))
    if not backup_file.is_file():
        raise StoreError(f"no backup at {backup_file}")
    if os.path.realpath(backup_file) == str(real):
        raise StoreError(f"{backup_file} is the store itself")
    with backup_file.open("rb") as file:
        if file.read(len(_HEADER)) != _HEADER:
            raise StoreError(f"{backup_file} is not an SQLite database")
    temporary = real.with_name(f".{real.name}.{os.getpid()}.restoring")
    aside: Path | None = None
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        removed = remove_interrupted(real.parent, "restoring", real.name)
        version = _copy(backup_file, temporary, busy_timeout, backup_file, stop)
        if version > newest_schema:
            raise StoreError(f"{backup_file} is at schema version {version}, newer than this ispd knows "
                             f"({newest_schema}): restore it with the ispd that wrote it")
        if real.exists():  # its owner and mode (0640 as ispd makes it; never more than 0660)
            old = real.stat()
            with contextlib.suppress(OSError):
                os.chown(temporary, old.st_uid, old.st_gid)
            os.chmod(temporary, old.st_mode & 0o660)
        else:  # as the daemon makes its store (the copy was made private until now)
            if (owner := directory_owner_for_root(temporary)) is not None:
                os.chown(temporary, *owner)
            os.chmod(temporary, 0o640)
        _fsync(temporary)  # (all that can fail before the old store is touched)
        if stop is not None and stop.is_set():
            raise RestoreStopped()
        moved: list[tuple[str, str]] = []
        if real.exists():
            aside, moved = _set_aside(real, busy_timeout)
        try:
            os.rename(temporary, real)  # replaces the old file in one step: the name never goes empty
        except OSError:
            for source, target in reversed(moved):  # the old store's side files back beside it
                with contextlib.suppress(OSError):
                    os.rename(target, source)
            if aside is not None:
                with contextlib.suppress(OSError):
                    aside.unlink()  # (a second name of the store still in place)
            raise
        _fsync(real.parent)
    except sqlite3.Error as exc:
        if _full(exc):  # the store's disk, not the backup's
            raise StoreError(f"cannot restore into {real}: {exc}") from None
        raise StoreError(f"cannot restore {backup_file}: {exc}") from None
    except OSError as exc:
        raise StoreError(f"cannot restore into {real}: {exc.strerror or exc}") from None
    finally:
        _remove_partial(temporary)
    return Copied(real, real.stat().st_size, version, time.monotonic() - began, removed), aside


def remove_interrupted(directory: Path, kind: str, name: str | None = None) -> tuple[Path, ...]:
    """Removes from ``directory`` the temporary files of copies (``kind``: "partial" for a
    backup's, "restoring" for a restore's; of the file ``name`` only, if given) whose process is
    gone: killed half way, they would stay forever. One whose process still runs (a backup made
    at the same moment) is left alone. Returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return ()
    for entry in entries:
        found = _TEMPORARY.fullmatch(entry.name)
        if found is None or found["kind"] != kind or (name is not None and found["name"] != name):
            continue
        if _running(int(found["pid"])) or not _made_by_sqlite(entry.path, side=found["side"] is not None):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return tuple(sorted(removed))


def _made_by_sqlite(path: str, *, side: bool) -> bool:
    """Whether a file of a temporary's name is one of ours: a database (or one not yet written
    to), or a side file beside one of those names. The directory a backup goes to may be any
    (/var/backups), and another program's files are not ours to remove."""
    if side:
        return True
    try:
        with open(path, "rb") as file:
            header = file.read(len(_HEADER))
    except OSError:
        return False
    return header in (b"", _HEADER)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process (or no PID at all: keep it)
        return True
    return True


def _set_aside(real: Path, busy_timeout: float) -> tuple[Path, list[tuple[str, str]]]:
    """The old store, its log folded in where it can be (a damaged store, the reason for many a
    restore, is set aside as it is), given a second name, and its side files moved beside that;
    the name, and the side files moved (from, to). ``real`` stays in place until the copy
    replaces it. A name taken already (a restore a second ago) is never overwritten."""
    with contextlib.suppress(sqlite3.Error):
        conn = sqlite3.connect(real, timeout=busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    stem = f"{real.name}.replaced-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    for attempt in range(1000):
        aside = real.with_name(stem if attempt == 0 else f"{stem}.{attempt}")
        try:
            os.link(real, aside)
            break
        except FileExistsError:
            continue
    else:
        raise StoreError(f"cannot name the old store aside: {real.with_name(stem)} and 999 more exist")
    moved: list[tuple[str, str]] = []
    for suffix in _SIDE_FILES:  # (normally gone with the last connection; never left to the new file)
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{real}{suffix}", f"{aside}{suffix}")
            moved.append((f"{real}{suffix}", f"{aside}{suffix}"))
    return aside, moved


def _copy(source_path: Path, temporary: Path, busy_timeout: float, name: Path,
          stop: threading.Event | None = None) -> int:
    """``source_path`` copied into the new private file ``temporary``: all its pages in one step
    (one snapshot: a daemon may go on writing), as one file (no -wal to carry along), checked;
    its schema version. With ``stop``, in steps, RestoreStopped once it is set; the steps read
    within one read transaction of the source's, one snapshot still (without it a write between
    steps, a live store's daemon's, would start the copy over, again and again)."""

    def stopping(status: int, remaining: int, total: int) -> None:
        if stop is not None and stop.is_set():
            raise RestoreStopped()  # (SQLite's backup ends when its progress call raises)

    _create_private(temporary)
    source = sqlite3.connect(source_path, timeout=busy_timeout)  # (read only by use: a WAL reader needs its -shm)
    try:
        target = sqlite3.connect(temporary, isolation_level=None)
        try:
            if stop is None:
                source.backup(target)
            else:
                source.execute("BEGIN")
                source.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # (the snapshot begins)
                source.backup(target, pages=_COPY_STEP_PAGES, progress=stopping)
                # The snapshot's pages are copied: let the store's WAL go before the check of the
                # copy (minutes on a large store), as the copy in one step does.
                source.execute("COMMIT")
            target.execute("PRAGMA journal_mode = DELETE")
            return _checked(target, name)
        finally:
            target.close()
    finally:
        source.close()


def _checked(conn: sqlite3.Connection, name: Path) -> int:
    """The copy's schema version, once SQLite finds nothing wrong with it."""
    verdict = conn.execute("PRAGMA quick_check").fetchone()[0]
    if verdict != "ok":
        raise StoreError(f"the copy of {name} fails SQLite's check: {verdict}")
    has_schema = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
    if has_schema.fetchone() is None:
        raise StoreError(f"{name} is no ispd store (it has no schema_migrations table)")
    # Other programs keep a table of that name too (golang-migrate's version and dirty, Rails'
    # text versions): a store is ispd's when each migration it records is ispd's, by number and
    # name (none was ever renamed). A newer ispd's, past those this one knows, cannot be judged.
    try:
        applied = conn.execute("SELECT version, name FROM schema_migrations").fetchall()
    except sqlite3.OperationalError:  # (no name column)
        applied = []
    known = {step.version: step.name for step in sqlite_migrations()}
    newest = max(known)
    if not applied or any(version.__class__ is not int or (version <= newest and known.get(version) != step)
                          for version, step in applied):
        raise StoreError(f"{name} is no ispd store (its schema_migrations table is not ispd's)")
    return int(max(version for version, _ in applied))


def _full(exc: sqlite3.Error) -> bool:
    """SQLite's "database or disk is full": only the copy being written can be (the source is
    only read), so the error must name it, not the file copied."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL


def _remove_partial(temporary: Path) -> None:
    """A copy under way, and what SQLite made beside it, gone (after its rename, nothing is left)."""
    for leftover in (temporary, *(Path(f"{temporary}{suffix}") for suffix in _SIDE_FILES)):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _create_private(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
