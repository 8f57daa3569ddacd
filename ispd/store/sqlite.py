"""The SQLite backend: the embedded default.

Theory of operation
-------------------
One *writer thread* owns the only write connection. Write methods turn into jobs (a function of
a connection) on its queue and await a future. The thread takes every job waiting (up to
``group_commit_max_batch``), runs each inside its own SAVEPOINT within one ``BEGIN IMMEDIATE``
transaction, commits once, and only then resolves the futures: a caller is told "done" only
after the change is durable (WAL with ``synchronous=FULL``: the commit is fsynced). A failing job
rolls back its savepoint alone; the others in the batch still commit (a job alone in its batch
needs no savepoint: its transaction is one). While one batch is being synced the next one
collects, so throughput grows with concurrency instead of fsyncs.

Reads run on a small thread pool, each thread with its own connection; WAL lets them proceed
while the writer writes. Nothing touches SQLite on the event loop.

Other processes (the admin CLI, a second daemon on the same file) are serialised by SQLite's
own lock: ``BEGIN IMMEDIATE`` takes the write lock up front and waits ``busy_timeout_seconds``
for it, which avoids the read-to-write upgrade deadlock that makes WAL return "database is
locked" at once.

The PostgreSQL backend (``postgresql.py``) is this store over another connection: ``Connector``
holds what differs (connections, how a transaction begins, the driver's errors, migrations), so
the SQL here is written to run on both (``RETURNING`` rather than ``lastrowid`` where it costs
nothing, ``ON CONFLICT`` rather than ``OR IGNORE``, no parameter tested alone for NULL).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from ispd.logs import RepeatedFailure, get_logger
from ispd.store import (
    ipv6_networks,
    sqlite_addresses,
    sqlite_attribution,
    sqlite_dhcp6,
    sqlite_mail,
    sqlite_radius,
    sqlite_reservations6,
)
from ispd.store.base import Store, SubscriberRef
from ispd.store.config import StoreConfig
from ispd.store.errors import Conflict, InvalidValue, NotFound, SchemaTooNew, StoreError, StoreUnavailable
from ispd.store.metrics import StoreMetrics
from ispd.store.models import (
    IPV6_RESERVATION_KINDS,
    MAX_ALIAS_TARGETS,
    UNCHANGED,
    AccountingRecord,
    AccountingResult,
    AddressClaim,
    AuditEntry,
    ClaimResult,
    CoARecord,
    CredentialPolicy,
    DailyUsage,
    Holding,
    Lease,
    Lease6,
    Lease6HistoryEntry,
    LeaseHistoryEntry,
    LeaseService,
    MailAlias,
    Mailbox,
    MailRecipient,
    OverQuota,
    Plan,
    QueuedMail,
    QueuedRecipientState,
    QuotaCrossing,
    RadiusSession,
    Reservation,
    ReservationKind,
    StoredCredentials,
    Subscriber,
    SubscriberOverview,
    SubscriberStatus,
    SuspendedMail,
    TrustAnchorKey,
    Unchanged,
    Usage,
)
from ispd.store.sqlite_addresses import lease_from_row, session_of_the_reserved, username_of
from ispd.store.sqlite_mail import (
    alias_from_row,
    find_alias,
    find_mailbox,
    insert_alias,
    insert_mailbox,
    mail_recipient,
    mailbox_from_row,
)
from ispd.store.sqlite_radius import (
    SESSION_COLUMNS,
    close_sessions,
    coa_from_row,
    month_start,
    record_accounting,
    session_from_row,
    usage_between,
    utc_day,
)
from ispd.store.validation import (
    attributable_text,
    dhcp6_prefix_text,
    forward_address,
    hostname_text,
    ipv4_text,
    mail_address,
    reservable_address,
    reservable_address6,
    reservable_prefix6,
    reservation_key,
    usable_text,
    username_text,
)

T = TypeVar("T")
log = get_logger("ispd.store")

# A parameter that is not exactly an int, float or str goes through sqlite3's adaptation protocol,
# which misses in its adapter table and then looks for __adapt__ and __conform__: some thousands
# of instructions per None in an accounting insert. These adapters are C callables that return
# what sqlite3 would bind anyway (NULL, an integer, a blob), found in one dictionary lookup.
_NONE: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NONE.get)  # _NONE.get(None) is None: a C callable that gives NULL
sqlite3.register_adapter(bool, int)
sqlite3.register_adapter(bytes, bytes)

Clock = Callable[[], float]


# --- migrations -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> Iterator[str]:
        """Split the script into statements the way SQLite itself would (triggers included)."""
        pending = ""
        for line in self.sql.splitlines(keepends=True):
            pending += line
            if sqlite3.complete_statement(pending):
                if pending.strip():
                    yield pending
                pending = ""
        if pending.strip() and not all(
            ln.strip().startswith("--") or not ln.strip() for ln in pending.splitlines()
        ):
            raise ValueError(f"migration {self.version} ends with an incomplete statement")


def read_migrations(backend: str) -> list[Migration]:
    """``migrations/<backend>/NNNN_name.sql`` in order; the numbers follow each other without gaps
    (SQLite's from 1; PostgreSQL's from the version its first script creates at once)."""
    folder = resources.files("ispd.store") / "migrations" / backend
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    first = found[0].version if found else 1
    if [m.version for m in found] != list(range(first, first + len(found))):
        raise RuntimeError(f"migration numbers must follow each other without gaps: {[m.version for m in found]}")
    return found


def sqlite_migrations() -> list[Migration]:
    found = read_migrations("sqlite")
    if found and found[0].version != 1:
        raise RuntimeError(f"SQLite's migrations start at 1, not {found[0].version}")
    return found


def schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


MigrationStarting = Callable[[Migration, int], None]


class MigrationStopped(Exception):
    """Raised by a ``MigrationStarting`` hook: a stop was asked for, ``step`` is not begun."""

    def __init__(self, step: Migration) -> None:
        super().__init__(f"stopped before migration {step.version} {step.name}")
        self.step = step


def migrate(conn: sqlite3.Connection, migrations: list[Migration], target: int | None = None,
            now: Clock = time.time, starting: MigrationStarting | None = None) -> list[int]:
    """Bring the schema to ``target`` (default: the newest); returns the versions applied.

    Each migration commits on its own, under the write lock, and re-reads the version first, so
    two processes starting at once apply each migration exactly once. ``starting(step, target)``
    is called (in this thread) just before a step runs: on a store of tens of millions of rows a
    step takes minutes, and the daemon tells systemd so (EXTEND_TIMEOUT_USEC) instead of being
    killed mid-step, rolled back and restarted into the same step forever.
    """
    target = migrations[-1].version if target is None else target
    applied: list[int] = []
    # The common case, a current schema, must not wait for the write lock: a read-only admin
    # command would otherwise queue behind a busy daemon.
    if schema_version(conn) == target == migrations[-1].version:
        return applied
    # A migration that derives a column SQL cannot compute (0012: IPv6 texts as integers) calls
    # ispd's own function; any connection that migrates has it.
    conn.create_function("ispd_ipv6_network", 2, ipv6_networks.network_part, deterministic=True)
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = schema_version(conn)
            if current > migrations[-1].version:
                raise SchemaTooNew(
                    f"the store is at schema version {current}, newer than this ispd knows "
                    f"({migrations[-1].version}); upgrade ispd"
                )
            if current >= target:
                conn.execute("COMMIT")
                return applied
            step = migrations[current]
            if starting is not None:
                starting(step, target)  # (it may refuse: a stop asked for)
            log.info("store.migration.started", version=step.version, name=step.name, target=target)
            began = time.monotonic()
            for statement in step.statements():
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (step.version, step.name, now()),
            )
            conn.execute("COMMIT")
            applied.append(step.version)
            log.info("store.migration.finished", version=step.version, name=step.name,
                     seconds=round(time.monotonic() - began, 3))
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _create_store_file(path: Path) -> None:
    """Create a new database file readable by its owner and group only, owned like its directory.

    It holds password verifiers and, by policy, NT hashes and cleartext passwords; SQLite gives
    the -wal and -shm files the database file's mode. When an admin command run as root is the
    first to open the store in a directory that belongs to the daemon's user (/var/lib/ispd
    under systemd), a root-owned file would lock the daemon out; SQLite already gives the -wal
    and -shm files the database file's owner when it runs as root, so this file is the one to
    care for.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        return
    try:
        owner = directory_owner_for_root(path)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def directory_owner_for_root(path: Path) -> tuple[int, int] | None:
    """Who a new store file at ``path`` must belong to: run as root in a directory of another
    user's (the daemon's /var/lib/ispd), that user and group, or the daemon is locked out; else
    None (the creator's own)."""
    directory = path.parent.stat()
    return (directory.st_uid, directory.st_gid) if os.geteuid() == 0 and directory.st_uid != 0 else None


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a commit is fsynced before it returns; the durability promise rests on this.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


# --- the writer thread ----------------------------------------------------------------------


@dataclass(slots=True)
class _WriteJob:
    operation: str
    run: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any] = field(repr=False)


_STOP = object()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _fail(job: _WriteJob) -> None:
    job.loop.call_soon_threadsafe(_settle, job.future, None, StoreUnavailable("the store writer stopped"))


def _translate(exc: BaseException, busy_timeout: float) -> BaseException:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.IntegrityError):
        text = str(exc)
        if "UNIQUE" in text:
            return Conflict(f"already exists ({text.split(':', 1)[-1].strip()})")
        if "FOREIGN KEY" in text:
            return Conflict("still referenced by other records")
        if "CHECK" in text:
            return Conflict("a value is out of range")
        return Conflict(text)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return StoreUnavailable(
            f"the store stayed locked by another process for more than {busy_timeout:g} s"
        )
    if isinstance(exc, sqlite3.Error):
        return StoreUnavailable(f"store error: {exc}")
    if isinstance(exc, OverflowError):
        return InvalidValue("a number is too large for the store")
    if isinstance(exc, UnicodeError):
        return InvalidValue("a text value is not valid Unicode")
    return exc


class Connector:
    """What differs between the backends under one store: connections, the transactions' start,
    the driver's errors and the schema's migrations. The SQL and the store's logic are shared."""

    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file prepare() opened

    def connect(self) -> Any:
        # (A reader's first connection, opened late, would otherwise create an empty store where
        # the file was deleted, and answer reads from it.)
        self.still_there()
        return connect(self.config.path, self.config.busy_timeout_seconds)

    def still_there(self) -> None:
        """Raise ``StoreUnavailable`` once the store's path no longer names the file opened (deleted,
        or replaced by another while the daemon runs): SQLite goes on writing to the file it has
        open, and a write said durable there is lost when the daemon stops."""
        if self._identity is None:
            return
        try:
            info = os.stat(self.config.path)
        except OSError:
            info = None
        if info is None or (info.st_dev, info.st_ino) != self._identity:
            raise StoreUnavailable(
                f"the store file {self.config.path} was deleted or replaced since ispd opened it: writes are "
                "refused (they would go to the old file, gone once ispd stops); stop ispd, put the store back "
                "(`ispd store restore` a backup) and start it again")

    def usable(self, conn: Any) -> bool:
        """False for a connection the server closed (PostgreSQL's restart): open another."""
        return True

    def begun(self, conn: Any, begin: Callable[[Any], None]) -> Any:
        """``conn`` (or a new one, if the server closed it) inside a transaction ``begin`` began.
        A connection closed while idle is found out only at its next statement, the BEGIN:
        nothing of the caller's was sent yet, so it is safe to begin again on a new one."""
        if not self.usable(conn):
            conn.close()
            return self._begun_on_a_new_one(begin)
        try:
            begin(conn)
        except self.errors:
            if self.usable(conn):
                raise
            conn.close()
            return self._begun_on_a_new_one(begin)
        return conn

    def _begun_on_a_new_one(self, begin: Callable[[Any], None]) -> Any:
        conn = self.connect()
        try:
            begin(conn)
        except BaseException:
            # Whatever the failure (the write lock's wait timed out too), the caller keeps its
            # closed one and opens another next time: this one is closed, not left to the GC.
            conn.close()
            raise
        return conn

    def begin_write(self, conn: Any) -> None:
        # IMMEDIATE: the write lock up front, waiting busy_timeout for another process's.
        conn.execute("BEGIN IMMEDIATE")

    def begin_read(self, conn: Any) -> None:
        # One snapshot for multi-query reads (the overview), then let WAL checkpoints go.
        conn.execute("BEGIN")

    def translate(self, exc: BaseException) -> BaseException:
        return _translate(exc, self.config.busy_timeout_seconds)

    def newest_schema(self) -> int:
        return sqlite_migrations()[-1].version

    def prepare(self, clock: Clock, starting: MigrationStarting | None) -> None:
        """Create the store if needed and bring its schema to this ispd's."""
        path = self.config.path
        try:
            # (0750 as the unit's StateDirectoryMode gives /var/lib/ispd: an admin command that
            # makes it first must not leave the store's directory open to every user)
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            _create_store_file(path)
            conn = connect(path, self.config.busy_timeout_seconds)
            info = os.stat(path)
            self._identity = (info.st_dev, info.st_ino)
        except (OSError, ValueError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open the store at {path}: {exc}") from None
        began = time.monotonic()
        try:
            applied = migrate(conn, sqlite_migrations(), now=clock, starting=starting)
        except sqlite3.Error as exc:
            raise _translate(exc, self.config.busy_timeout_seconds) from None
        finally:
            conn.close()
        if applied:
            log.info("store.migrated", path=str(path), versions=applied, seconds=round(time.monotonic() - began, 3))

    def describe(self) -> str:
        """The store as messages name it."""
        return f"the store at {self.config.path}"


FAILED_COMMIT_LOG_SECONDS = 30.0
# A batch still not committed this long past the write lock's longest wait is stuck (a PostgreSQL
# COMMIT waiting for a synchronous replica that is gone, a disk that hangs): commits_failing says so.
STALLED_COMMIT_SECONDS = 5.0
# A current lease or binding (list_leases, list_leases6 without include_ended): one that holds its
# address now, bound or declined and in quarantine (kept from its pool until expires_at: an
# operator asking why a pool runs out must see those, as Kea's lease4-get-all shows them).
CURRENT_LEASE = "state IN ('bound', 'declined') AND expires_at > ?"


class _Writer(threading.Thread):
    def __init__(self, connector: Connector, config: StoreConfig, metrics: StoreMetrics | None) -> None:
        super().__init__(name="ispd-store-writer", daemon=True)
        self.connector, self.config, self.metrics = connector, config, metrics
        self.jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.broken: BaseException | None = None
        self.failing: str | None = None  # why the last commit failed, until one succeeds
        self.committing_since: float | None = None  # (monotonic) when the batch under way began
        # While the server is down every batch fails alike: a line when it starts, when its
        # error changes and every FAILED_COMMIT_LOG_SECONDS, and one when it is over.
        self._failures = RepeatedFailure(FAILED_COMMIT_LOG_SECONDS)
        self.ready = threading.Event()
        self.conn: Any = None
        # A batch fails as a whole on the driver's errors, and on a connection that cannot be made again.
        self._batch_errors: tuple[type[BaseException], ...] = (*connector.errors, StoreUnavailable)

    def run(self) -> None:
        try:
            self.conn = self.connector.connect()
        except BaseException as exc:
            self.broken = exc
            self.ready.set()
            self.fail_queued()
            return
        self.ready.set()
        batch: list[_WriteJob] = []
        try:
            stopping = False
            while not stopping:
                first = self.jobs.get()
                if first is _STOP:
                    break
                batch = [first]
                while len(batch) < self.config.group_commit_max_batch:
                    try:
                        job = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is _STOP:
                        stopping = True
                        break
                    batch.append(job)
                self.committing_since = time.monotonic()
                try:
                    self._commit(batch)
                finally:
                    self.committing_since = None
                batch = []
        except BaseException as exc:  # the writer itself failed (a bug, a broken disk): fail every waiter
            self.broken = exc
            log.error("store.writer.crashed", exc_info=True)
            for job in batch:
                _fail(job)
            self.fail_queued()
        finally:
            self.conn.close()

    def _commit(self, batch: list[_WriteJob]) -> None:
        connector = self.connector
        outcomes: list[tuple[_WriteJob, Any, BaseException | None]] = []
        try:
            connector.still_there()
            conn = self.conn = connector.begun(self.conn, connector.begin_write)
            # A job alone needs no savepoint: its transaction is one (two round trips fewer on
            # PostgreSQL, where each statement is one).
            alone = len(batch) == 1
            for job in batch:
                if not alone:
                    conn.execute("SAVEPOINT job")
                try:
                    result = job.run(conn)
                except Exception as exc:
                    if isinstance(exc, self._batch_errors) and not (connector.usable(conn) and conn.in_transaction):
                        # SQLite rolled the whole transaction back itself (a full disk or an I/O
                        # error mid-statement), or the server went away: the batch fails with it,
                        # told why, not that a ROLLBACK found no transaction, its savepoint gone or
                        # the connection closed.
                        raise
                    if alone:
                        conn.execute("ROLLBACK")
                    else:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    outcomes.append((job, None, connector.translate(exc)))
                else:
                    if not alone:
                        conn.execute("RELEASE job")
                    outcomes.append((job, result, None))
            if conn.in_transaction:
                conn.execute("COMMIT")
            self.failing = None
            if (ended := self._failures.ended(time.monotonic())) is not None:
                log.info("store.commit.restored", failed_batches=ended[0], seconds=round(ended[1], 1))
        except self._batch_errors as exc:
            if connector.usable(self.conn) and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            batch_error = connector.translate(exc)
            self.failing = str(exc) or type(exc).__name__
            if (held := self._failures.failed(self.failing, time.monotonic())) is not None:
                log.warning("store.commit.failed", error=str(exc), batch=len(batch), held_back=held)
            outcomes = [(job, None, batch_error) for job in batch]
            if self.metrics is not None:
                self.metrics.commit_failures.inc(self.metrics.backend)
        else:
            if self.metrics is not None:  # (a batch that failed was committed by no transaction)
                self.metrics.commit_batch_size.observe(len(batch))
        self.committing_since = None  # (before the callers hear: one that asks next sees it over)
        for job, result, job_error in outcomes:
            job.loop.call_soon_threadsafe(_settle, job.future, result, job_error)

    def fail_queued(self) -> None:
        """Answer every queued job with an error; safe from any thread, each job is taken once."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                _fail(job)


# --- row mapping ----------------------------------------------------------------------------


def _plan(row: sqlite3.Row) -> Plan:
    return Plan(
        id=row["id"], name=row["name"], download_kbps=row["download_kbps"], upload_kbps=row["upload_kbps"],
        session_timeout_seconds=row["session_timeout_seconds"], idle_timeout_seconds=row["idle_timeout_seconds"],
        max_sessions=row["max_sessions"], mail_quota_bytes=row["mail_quota_bytes"],
        credential_policy=CredentialPolicy(row["credential_policy"]),
        suspended_mail=SuspendedMail(row["suspended_mail"]), monthly_quota_bytes=row["monthly_quota_bytes"],
        over_quota=OverQuota(row["over_quota"]), over_quota_download_kbps=row["over_quota_download_kbps"],
        over_quota_upload_kbps=row["over_quota_upload_kbps"], created_at=row["created_at"],
    )


def _subscriber(row: sqlite3.Row) -> Subscriber:
    policy = row["credential_policy"]
    return Subscriber(
        id=row["id"], username=row["username"], status=SubscriberStatus(row["status"]), plan_id=row["plan_id"],
        full_name=row["full_name"], account_ref=row["account_ref"], status_reason=row["status_reason"],
        credential_policy=CredentialPolicy(policy) if policy else None,
        created_at=row["created_at"], updated_at=row["updated_at"], radius_reply=_text_list(row["radius_reply"]),
    )


def _addresses_of(conn: sqlite3.Connection, table: str, subscriber: SubscriberRef | None) -> sqlite3.Cursor:
    """The rows of ``table`` (mailboxes, mail_aliases) by address: all, or one subscriber's."""
    if subscriber is None:
        return conn.execute(f"SELECT * FROM {table} ORDER BY address")
    sid = _find_subscriber(conn, subscriber)["id"]
    return conn.execute(f"SELECT * FROM {table} WHERE subscriber_id = ? ORDER BY address", (sid,))


def _text_list(stored: str) -> tuple[str, ...]:
    """A JSON array of strings as the store keeps it; anything else (a hand edit) is no list."""
    try:
        value = json.loads(stored)
    except ValueError:
        return ()
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _audited_reply(lines: Sequence[str], hidden: Collection[str]) -> list[str]:
    """Reply attribute lines as the audit keeps them: a hidden attribute's value left out."""
    names = {name.lower() for name in hidden}
    audited = []
    for line in lines:
        assigned = line.split("=", 1)[0]
        audited.append(f"{assigned.strip()} = (hidden)" if assigned.split(":", 1)[0].strip().lower() in names
                       else line)
    return audited


def _lease_history_entry(row: sqlite3.Row) -> LeaseHistoryEntry:
    return LeaseHistoryEntry(
        id=row["id"], at=row["at"], event=row["event"], address=row["address"], starts_at=row["starts_at"],
        expires_at=row["expires_at"], hw_address=row["hw_address"], client_id=row["client_id"],
        hostname=row["hostname"], subscriber_id=row["subscriber_id"], username=row["username"],
        circuit_id=row["circuit_id"], remote_id=row["remote_id"], pool=row["pool"],
        service=LeaseService(row["service"]),
    )


def _reservation(row: sqlite3.Row) -> Reservation:
    return Reservation(
        id=row["id"], subscriber_id=row["subscriber_id"], kind=ReservationKind(row["kind"]), key=row["key"],
        address=row["address"], hostname=row["hostname"], created_at=row["created_at"], address6=row["address6"],
        prefix6=row["prefix6"],
    )


def _reservation_details(r: Reservation) -> dict[str, Any]:
    """What the audit log keeps of a reservation: enough for a daemon to apply the change."""
    return {"reservation_id": r.id, "kind": r.kind.value, "key": r.key, "address": r.address,
            "hostname": r.hostname, "address6": r.address6, "prefix6": r.prefix6}


# The lease column that holds each kind of device key, as DHCP writes it.
_DEVICE_COLUMNS = {ReservationKind.MAC: "hw_address", ReservationKind.CLIENT_ID: "client_id",
                   ReservationKind.CIRCUIT_ID: "circuit_id", ReservationKind.REMOTE_ID: "remote_id"}


def _refuse_an_address_in_use(conn: sqlite3.Connection, address: str, subscriber_id: int, now: float,
                              kind: ReservationKind, key: str) -> None:
    """A fixed address must not be another device's, line's or login's right now (a DHCP lease, a
    RADIUS session's claim), the subscriber's own included: RADIUS hands a reserved address out
    as it is, and would give it twice (to a second line's session beside the first line's, to a
    login beside the router DHCP gave it to). The device, line or login being reserved (making
    the address it has fixed) is not another."""
    lease = conn.execute("SELECT l.*, s.username FROM leases l LEFT JOIN subscribers s ON s.id = l.subscriber_id"
                         " WHERE l.address = ? AND l.state = 'bound' AND l.expires_at > ?", (address, now)).fetchone()
    if lease is not None and not _held_by_the_reserved(conn, lease, subscriber_id, kind, key):
        holder = lease["username"] or lease["hw_address"] or "a client"
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(lease["expires_at"]))
        raise Conflict(f"address {address} is in use: {lease['service'].upper()} gave it to {holder} until {until}; "
                       f"reserve it once that ends, or choose another address")
    if lease is not None:
        return
    # A session's address outside every pool has no lease row (a fixed address its reservation
    # no longer fixes: the session keeps it until it logs in again; a NAS's own choice): DHCP
    # would give it to the device reserved now while that session still has it.
    sessions = conn.execute(
        "SELECT s.id, s.username AS login, s.subscriber_id, s.calling_station_id, s.nas_port_id,"
        " s.nas_address, u.username FROM radius_sessions s LEFT JOIN subscribers u ON u.id = s.subscriber_id"
        " WHERE s.framed_ip = ? AND s.stopped_at IS NULL ORDER BY s.id", (address,)).fetchall()
    # (Sessions of the login or line being reserved may have it: one whose Stop was lost and its
    # redial, both open on the address.)
    if sessions and (any(row["subscriber_id"] != subscriber_id for row in sessions)
                     or not any(session_of_the_reserved(row, kind, key) for row in sessions)):
        session = next((row for row in sessions if row["subscriber_id"] != subscriber_id), sessions[0])
        raise Conflict(f"address {address} is in use: RADIUS session #{session['id']} of "
                       f"{session['username'] or session['login']} on {session['nas_address']} has it; "
                       f"reserve it once that ends (`ispd session disconnect {session['id']}` ends it now), "
                       "or choose another address")


def _held_by_the_reserved(conn: sqlite3.Connection, lease: sqlite3.Row, subscriber_id: int, kind: ReservationKind,
                          key: str) -> bool:
    """Whether ``lease`` is held by what the reservation of ``kind`` and ``key`` names: the DHCP
    client by that key, or a RADIUS claim of the subscriber on that line (the CPE's MAC, its
    port) or under that login (its username, or the login an open session on it used)."""
    if lease["service"] == "dhcp":
        column = _DEVICE_COLUMNS.get(kind)
        return column is not None and lease[column] == key
    if lease["subscriber_id"] != subscriber_id:
        return False
    if kind == ReservationKind.USERNAME:
        # The login an open session on it used; the subscriber's username (``lease["username"]``,
        # not the claim's login) only while no session says which login holds it.
        logins = {row[0] for row in conn.execute(
            "SELECT username FROM radius_sessions WHERE framed_ip = ? AND subscriber_id = ? AND stopped_at IS NULL",
            (lease["address"], subscriber_id))}
        return key in logins if logins else key == lease["username"]
    # (A claim's circuit_id is its line: the MAC, else the NAS-Port-Id.)
    return kind in (ReservationKind.MAC, ReservationKind.CIRCUIT_ID, ReservationKind.REMOTE_ID) and (
        lease["hw_address"] == key or lease["circuit_id"] == key)


def _refuse_a_reserved_address(conn: sqlite3.Connection, address: str) -> None:
    taken = _reservation_where(conn, "r.address = ?", (address,))
    if taken is not None:
        raise Conflict(f"address {address} is already reserved for {taken['username']}"
                       f" ({taken['kind']} {taken['key']}, reservation #{taken['id']})")


def _refuse_another_subscribers_name(conn: sqlite3.Connection, hostname: str, subscriber_id: int) -> None:
    """A reserved host name is one subscriber's: its first label is the lease's name in DNS
    (``cpe-alice.<lease domain>``), which two subscribers' devices would take from each other at
    every renewal. One subscriber's reservations may share one (a router's MAC and its DUID)."""
    label = hostname.split(".", 1)[0]
    taken = _reservation_where(conn, "(r.hostname = ? OR r.hostname LIKE ?) AND r.subscriber_id != ?",
                               (label, f"{label}.%", subscriber_id))
    if taken is not None:
        raise Conflict(f"host name {taken['hostname']} is already reserved for {taken['username']}"
                       f" ({taken['kind']} {taken['key']}, reservation #{taken['id']})")


def _refuse_the_wrong_family(kind: ReservationKind, address: str | None, address6: str | None,
                             prefix6: str | None) -> None:
    """A reservation's fixed addresses must be ones its kind's server can give: IPv4 from DHCPv4 or
    RADIUS, IPv6 from RADIUS or DHCPv6, which matches only a DUID or the relay's Interface-ID and
    Remote-ID."""
    if (address6 is not None or prefix6 is not None) and kind not in IPV6_RESERVATION_KINDS:
        raise InvalidValue(f"a {kind.value} reservation holds no IPv6 address or prefix ({kind.value} is a DHCPv4 "
                           "client's key): reserve them by the DHCPv6 client's DUID, by its line's circuit-id or "
                           "remote-id, or by a RADIUS login")
    if address is not None and kind == ReservationKind.DUID:
        raise InvalidValue("a duid reservation holds no IPv4 address (a DUID is DHCPv6's): reserve the IPv4 "
                           "address by the client's MAC, client-id or line, or give address6 or prefix6")


def _reservation_where(conn: sqlite3.Connection, condition: str, params: tuple[Any, ...]) -> sqlite3.Row | None:
    """The one reservation matching ``condition`` (on columns of ``r``), with its holder's username."""
    row: sqlite3.Row | None = conn.execute(
        f"SELECT r.*, s.username FROM reservations r JOIN subscribers s ON s.id = r.subscriber_id WHERE {condition}"
        " ORDER BY r.id",
        params,
    ).fetchone()
    return row


def _checked(check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None


def _checked_quota(quota_bytes: int | None) -> int | None:
    if quota_bytes == 0:  # (Dovecot's 0 is "no limit": say what ours would do)
        raise InvalidValue("a quota of 0 bytes takes no mail: give a size, or leave it to the plan")
    if quota_bytes is not None and not 0 < quota_bytes < 2**63:
        raise InvalidValue(f"a quota of {quota_bytes} bytes is out of range")
    return quota_bytes


def _audit_entry(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"], at=row["at"], actor=row["actor"], action=row["action"], subject_kind=row["subject_kind"],
        subject_id=row["subject_id"], subject_name=row["subject_name"], details=json.loads(row["details"]),
    )


# What a plan's figures go out as: RADIUS integers (Session-Timeout, Idle-Timeout, rate VSAs in
# kbps) are 32 bits, and the store's sizes are 64-bit integers.
_PLAN_LIMITS = {"download_kbps": 2**32 - 1, "upload_kbps": 2**32 - 1, "session_timeout_seconds": 2**32 - 1,
                "idle_timeout_seconds": 2**32 - 1, "max_sessions": 2**32 - 1, "mail_quota_bytes": 2**63 - 1,
                "monthly_quota_bytes": 2**63 - 1, "over_quota_download_kbps": 2**32 - 1,
                "over_quota_upload_kbps": 2**32 - 1}


def _check_plan_ranges(values: dict[str, Any]) -> None:
    for name, limit in _PLAN_LIMITS.items():
        value = values.get(name)
        if value is not None and not 0 < value <= limit:
            raise InvalidValue(f"{name} must be between 1 and {limit}, not {value}")


def _is_row_id(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 18  # below 2**63: an SQLite INTEGER


def _find_subscriber(conn: sqlite3.Connection, ref: SubscriberRef) -> sqlite3.Row:
    row = None
    if isinstance(ref, str) and ref.startswith("#") and _is_row_id(ref[1:]):  # "#ID": the id, always
        row = conn.execute("SELECT * FROM subscribers WHERE id = ?", (int(ref[1:]),)).fetchone()
    elif isinstance(ref, str):
        row = conn.execute("SELECT * FROM subscribers WHERE username = ?", (ref,)).fetchone()
        # Usernames may be digits (account numbers). Where one is also another subscriber's id,
        # guessing which was meant could delete or suspend the wrong one: the caller says.
        if _is_row_id(ref):
            by_id = conn.execute("SELECT * FROM subscribers WHERE id = ?", (int(ref),)).fetchone()
            if row is None:
                row = by_id
            elif by_id is not None and by_id["id"] != row["id"]:
                raise Conflict(f"{ref!r} names two subscribers, the username of #{row['id']} and the id of "
                               f"{by_id['username']!r}: write #{row['id']} or #{ref}")
    else:
        row = conn.execute("SELECT * FROM subscribers WHERE id = ?", (ref,)).fetchone()
    if row is None:
        raise NotFound(f"no subscriber {ref!r}")
    found: sqlite3.Row = row
    return found


def _find_login(conn: sqlite3.Connection, ref: SubscriberRef) -> sqlite3.Row:
    """The subscriber whose username ``ref`` is, as a login names it: never by its id."""
    row: sqlite3.Row | None = conn.execute("SELECT * FROM subscribers WHERE username = ?", (str(ref),)).fetchone()
    if row is None:
        raise NotFound(f"no subscriber {ref!r}")
    return row


def _history_subscriber_id(conn: sqlite3.Connection, ref: SubscriberRef) -> int:
    """The id whose history (usage, sessions, CoA outcomes) is asked for: a subscriber's, or,
    named ``#ID``, one deleted since. Its history stays under that id, which is never given to
    another (migration 0010), and ``ispd usage`` lists it as ``#ID (deleted)``."""
    try:
        return int(_find_subscriber(conn, ref)["id"])
    except NotFound:
        if isinstance(ref, str) and ref.startswith("#") and _is_row_id(ref[1:]):
            given = conn.execute("SELECT highest FROM subscriber_ids").fetchone()
            if given is not None and 0 < int(ref[1:]) <= given[0]:
                return int(ref[1:])
        raise


def _find_plan(conn: sqlite3.Connection, ref: int | str) -> sqlite3.Row:
    """A plan by its name, or by its id: an int is the id (a subscriber's plan_id), never the
    name of a plan that is called by another one's number; a text of digits names a plan by
    that name first (what an operator typed)."""
    row = None if isinstance(ref, int) else conn.execute("SELECT * FROM plans WHERE name = ?", (ref,)).fetchone()
    if row is None and _is_row_id(str(ref)):
        row = conn.execute("SELECT * FROM plans WHERE id = ?", (int(ref),)).fetchone()
    if row is None:
        raise NotFound(f"no plan {ref!r}")
    found: sqlite3.Row = row
    return found


def _append_audit(conn: sqlite3.Connection, at: float, actor: str, action: str, kind: str,
                  subject_id: int | None, subject_name: str | None, details: dict[str, Any] | None = None) -> None:
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, subject_kind, subject_id, subject_name, details)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (at, actor, action, kind, subject_id, subject_name, json.dumps(details or {}, sort_keys=True)),
    )


def _store_credentials(conn: sqlite3.Connection, subscriber_id: int, username: str,
                       credentials: StoredCredentials, actor: str, now: float) -> None:
    conn.execute(
        "INSERT INTO credentials (subscriber_id, verifier, nt_hash, cleartext, updated_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (subscriber_id) DO UPDATE SET verifier = excluded.verifier,"
        " nt_hash = excluded.nt_hash, cleartext = excluded.cleartext, updated_at = excluded.updated_at",
        (subscriber_id, credentials.verifier, credentials.nt_hash, credentials.cleartext, now),
    )
    # The audit says which forms are kept, never anything derived from the password.
    _append_audit(conn, now, actor, "subscriber.password_set", "subscriber", subscriber_id, username,
                  {"forms": credentials.forms})


# --- the store ------------------------------------------------------------------------------


def _page(clauses: list[str], params: list[object], column: str, after: str | None) -> None:
    """A page's condition (keyset pagination: the rows after ``after`` in ``column`` order)."""
    if after is not None:
        clauses.append(f"{column} > ?")
        params.append(after)


def _where(clauses: list[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def _limit(limit: int | None) -> str:
    return f" LIMIT {int(limit)}" if limit is not None else ""


class SQLiteStore(Store):
    def __init__(self, config: StoreConfig, metrics: StoreMetrics | None = None, clock: Clock = time.time,
                 migration_starting: MigrationStarting | None = None) -> None:
        self.config, self.metrics, self.clock = config, metrics, clock
        self._migration_starting = migration_starting
        self.path = config.path
        self._connector = self._connector_for(config)
        self._writer = _Writer(self._connector, config, metrics)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ispd-store-reader")
        self._local = threading.local()
        self._reader_conns: list[Any] = []
        self._reader_lock = threading.Lock()
        self._closed = False

    @classmethod
    async def open(cls, config: StoreConfig, metrics: StoreMetrics | None = None, clock: Clock = time.time,
                   migration_starting: MigrationStarting | None = None) -> SQLiteStore:
        """Create the file if needed, migrate it (``migration_starting``: see ``migrate``), start the writer."""
        store = cls(config, metrics, clock, migration_starting)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(store._readers, store._connector.prepare, clock, migration_starting)
            store._writer.start()
            await loop.run_in_executor(store._readers, store._writer.ready.wait)
            if store._writer.broken is not None:
                raise StoreUnavailable(f"cannot open {store._connector.describe()}: {store._writer.broken}")
        except BaseException:
            await store.close()
            raise
        return store

    @staticmethod
    def _connector_for(config: StoreConfig) -> Connector:
        return Connector(config)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._writer.is_alive():
            self._writer.jobs.put(_STOP)
            await loop.run_in_executor(None, self._writer.join)
        # Waiting for the reader threads (one may be mid-query) must not block the event loop.
        await loop.run_in_executor(None, self._readers.shutdown)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def writer_alive(self) -> bool:
        return self._writer.is_alive() and self._writer.broken is None

    def commits_failing(self) -> str | None:
        writer = self._writer
        if writer.failing is not None:
            return writer.failing
        # A commit that never returns fails nothing: without this, /healthz said ok while every
        # write waited behind it (a synchronous replica gone: PostgreSQL's COMMIT waits for ever).
        since = writer.committing_since
        waited = time.monotonic() - since if since is not None else 0.0
        if waited > self.config.busy_timeout_seconds + STALLED_COMMIT_SECONDS:
            return f"a write has waited {waited:.0f} s for {self._connector.describe()} to commit it"
        return None

    # --- plumbing

    async def _write(self, operation: str, run: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or not self.writer_alive():
            raise StoreUnavailable("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        started = time.perf_counter()
        self._writer.jobs.put(_WriteJob(operation, run, loop, future))
        if not self.writer_alive():
            # It died between the check above and the put: nobody else will answer this job.
            self._writer.fail_queued()
        try:
            return await future
        finally:
            if self.metrics is not None:
                self.metrics.observe(operation, time.perf_counter() - started)

    def _reader_conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connector.connect()
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, operation: str, run: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreUnavailable("the store is closed")

        connector = self._connector
        caught: tuple[type[BaseException], ...] = (*connector.errors, OverflowError, UnicodeError)

        def in_thread() -> T:
            try:
                conn = self._began_reading(self._reader_conn())
                try:
                    return run(conn)
                finally:
                    # (On a connection the server ended under the read, the COMMIT would fail
                    # too, and its "the connection is closed" would hide why the read failed.)
                    if connector.usable(conn):
                        conn.execute("COMMIT")
            except caught as exc:
                raise connector.translate(exc) from None

        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, in_thread)
        finally:
            if self.metrics is not None:
                self.metrics.observe(operation, time.perf_counter() - started)

    def _began_reading(self, conn: Any) -> Any:
        """This thread's connection in a read transaction; one the server closed is replaced."""
        began = self._connector.begun(conn, self._connector.begin_read)
        if began is not conn:
            self._local.conn = began
            with self._reader_lock:
                self._reader_conns.remove(conn)
                self._reader_conns.append(began)
        return began

    async def ping(self) -> None:
        await self._read("ping", lambda conn: conn.execute("SELECT 1").fetchone())

    async def check_writes(self) -> None:
        # A row written again as it is: an empty transaction commits on a full disk (SQLite has
        # no page to append to its WAL, PostgreSQL no WAL record), and said writes worked.
        await self._write("check_writes", lambda conn: conn.execute(
            "UPDATE schema_migrations SET version = version"
            " WHERE version = (SELECT MAX(version) FROM schema_migrations)"))

    async def check_schema(self) -> None:
        """SchemaTooNew when a newer ispd migrated the store since this one opened it."""
        newest = self._connector.newest_schema()
        current = await self._read("schema", lambda conn: conn.execute(
            "SELECT MAX(version) FROM schema_migrations").fetchone()[0])
        if int(current or 0) > newest:
            raise SchemaTooNew(f"the store is at schema version {current}, newer than this ispd knows "
                               f"({newest}); upgrade ispd")

    # --- plans

    async def add_plan(
        self,
        name: str,
        *,
        actor: str,
        download_kbps: int | None = None,
        upload_kbps: int | None = None,
        session_timeout_seconds: int | None = None,
        idle_timeout_seconds: int | None = None,
        max_sessions: int | None = None,
        mail_quota_bytes: int | None = None,
        credential_policy: CredentialPolicy = CredentialPolicy.VERIFIER,
        suspended_mail: SuspendedMail = SuspendedMail.READ,
        monthly_quota_bytes: int | None = None,
        over_quota: OverQuota = OverQuota.THROTTLE,
        over_quota_download_kbps: int | None = None,
        over_quota_upload_kbps: int | None = None,
    ) -> Plan:
        name = _checked(usable_text, name)
        values = {
            "name": name, "download_kbps": download_kbps, "upload_kbps": upload_kbps,
            "session_timeout_seconds": session_timeout_seconds, "idle_timeout_seconds": idle_timeout_seconds,
            "max_sessions": max_sessions, "mail_quota_bytes": mail_quota_bytes,
            "credential_policy": str(credential_policy), "suspended_mail": str(suspended_mail),
            "monthly_quota_bytes": monthly_quota_bytes, "over_quota": str(over_quota),
            "over_quota_download_kbps": over_quota_download_kbps, "over_quota_upload_kbps": over_quota_upload_kbps,
        }
        _check_plan_ranges(values)
        if monthly_quota_bytes is None and (over_quota_download_kbps is not None or over_quota_upload_kbps is not None
                                            or OverQuota(over_quota) is not OverQuota.THROTTLE):
            raise InvalidValue("the over-quota settings take effect past a monthly quota: give one too")
        if (monthly_quota_bytes is not None and OverQuota(over_quota) is OverQuota.THROTTLE
                and not (over_quota_download_kbps and over_quota_upload_kbps)):
            # Without both, a throttled subscriber would get no rate limit at all (faster than
            # the plan), or "0k" (unlimited on MikroTik) one way.
            raise InvalidValue("a monthly quota that throttles needs the over-quota download and upload rates")
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Plan:
            if conn.execute("SELECT 1 FROM plans WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"plan {name!r} already exists")
            columns = ", ".join(values)
            added = _plan(conn.execute(
                f"INSERT INTO plans ({columns}, created_at) VALUES ({', '.join('?' * len(values))}, ?) RETURNING *",
                (*values.values(), now),
            ).fetchone())
            _append_audit(conn, now, actor, "plan.added", "plan", added.id, name,
                          {k: v for k, v in values.items() if v is not None and k != "name"})
            return added

        return await self._write("add_plan", run)

    async def get_plan(self, ref: int | str) -> Plan:
        return await self._read("get_plan", lambda conn: _plan(_find_plan(conn, ref)))

    async def list_plans(self) -> list[Plan]:
        return await self._read(
            "list_plans", lambda conn: [_plan(r) for r in conn.execute("SELECT * FROM plans ORDER BY name")]
        )

    # --- subscribers

    async def add_subscriber(
        self,
        username: str,
        *,
        actor: str,
        plan: int | str | None = None,
        full_name: str | None = None,
        account_ref: str | None = None,
        credential_policy: CredentialPolicy | None = None,
        credentials: StoredCredentials | None = None,
    ) -> Subscriber:
        # The same rules however it comes (CLI, admin API): what a helpdesk screen, a log line and
        # a CSV export show as it is.
        username = _checked(username_text, username)
        if username.startswith("#") and _is_row_id(username[1:]):
            raise InvalidValue(f"{username!r} reads as a subscriber's id (#ID): choose another username")
        full_name = _checked(usable_text, full_name) if full_name else None  # ("": none, as a form sends it)
        account_ref = _checked(usable_text, account_ref) if account_ref else None
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Subscriber:
            if conn.execute("SELECT 1 FROM subscribers WHERE username = ?", (username,)).fetchone():
                raise Conflict(f"subscriber {username!r} already exists")
            # One login, one subscriber: RADIUS looks both up by the same name.
            reserved = _reservation_where(conn, "r.kind = ? AND r.key = ?", (ReservationKind.USERNAME.value, username))
            if reserved is not None:
                raise Conflict(f"{username!r} is a login reserved for {reserved['username']}"
                               f" (reservation #{reserved['id']})")
            plan_row = _find_plan(conn, plan) if plan is not None else None
            # The id after the highest ever given, never a deleted subscriber's: its sessions,
            # usage and history stay under that id (migration 0010).
            subscriber_id = int(conn.execute(
                "INSERT INTO subscribers (id, username, full_name, account_ref, plan_id, status, credential_policy,"
                " created_at, updated_at) VALUES ((SELECT highest + 1 FROM subscriber_ids), ?, ?, ?, ?, 'active', ?,"
                " ?, ?) RETURNING id",
                (username, full_name, account_ref, plan_row["id"] if plan_row else None,
                 str(credential_policy) if credential_policy else None, now, now),
            ).fetchone()[0])
            details: dict[str, Any] = {"plan": plan_row["name"] if plan_row else None}
            if credential_policy:
                details["credential_policy"] = str(credential_policy)
            _append_audit(conn, now, actor, "subscriber.added", "subscriber", subscriber_id, username, details)
            if credentials is not None:
                _store_credentials(conn, subscriber_id, username, credentials, actor, now)
            return _subscriber(_find_subscriber(conn, subscriber_id))

        return await self._write("add_subscriber", run)

    async def get_subscriber(self, ref: SubscriberRef, *, login: bool = False) -> Subscriber:
        find = _find_login if login else _find_subscriber
        return await self._read("get_subscriber", lambda conn: _subscriber(find(conn, ref)))

    async def list_subscribers(self, status: SubscriberStatus | None = None, *, after: str | None = None,
                               limit: int | None = None) -> list[Subscriber]:
        def run(conn: sqlite3.Connection) -> list[Subscriber]:
            clauses: list[str] = []
            params: list[object] = []
            if status is not None:
                clauses.append("status = ?")
                params.append(str(status))
            _page(clauses, params, "username", after)
            rows = conn.execute(f"SELECT * FROM subscribers{_where(clauses)} ORDER BY username{_limit(limit)}", params)
            return [_subscriber(r) for r in rows]

        return await self._read("list_subscribers", run)

    async def set_subscriber_status(
        self, ref: SubscriberRef, status: SubscriberStatus, *, actor: str, reason: str | None = None
    ) -> Subscriber:
        reason = _checked(usable_text, reason) if reason else None
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Subscriber:
            row = _find_subscriber(conn, ref)
            if row["status"] == str(status):
                raise Conflict(f"subscriber {row['username']!r} is already {status}")
            if row["status"] == str(SubscriberStatus.CLOSED) and status == SubscriberStatus.SUSPENDED:
                # Closed is the stronger state; only `resume` reopens an account.
                raise Conflict(f"subscriber {row['username']!r} is closed: resume it first")
            conn.execute(
                "UPDATE subscribers SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?",
                (str(status), reason, now, row["id"]),
            )
            _append_audit(conn, now, actor, f"subscriber.{_STATUS_ACTIONS[status]}", "subscriber", row["id"],
                          row["username"], {"from": row["status"], "to": str(status), "reason": reason})
            return _subscriber(_find_subscriber(conn, int(row["id"])))

        return await self._write("set_subscriber_status", run)

    async def delete_subscriber(self, ref: SubscriberRef, *, actor: str) -> Subscriber:
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Subscriber:
            row = _find_subscriber(conn, ref)
            # The reservations go with the subscriber (ON DELETE CASCADE); say so one by one, so
            # a daemon that follows reservation events alone forgets them too.
            for r in conn.execute("SELECT * FROM reservations WHERE subscriber_id = ? ORDER BY id", (row["id"],)):
                _append_audit(conn, now, actor, "reservation.deleted", "subscriber", row["id"], row["username"],
                              _reservation_details(_reservation(r)))
            for table, action in (("mailboxes", "mailbox.deleted"), ("mail_aliases", "mail_alias.deleted")):
                for (address,) in conn.execute(f"SELECT address FROM {table} WHERE subscriber_id = ? ORDER BY id",
                                               (row["id"],)).fetchall():
                    _append_audit(conn, now, actor, action, "subscriber", row["id"], row["username"],
                                  {"address": address})
            conn.execute("DELETE FROM subscribers WHERE id = ?", (row["id"],))
            _append_audit(conn, now, actor, "subscriber.deleted", "subscriber", row["id"], row["username"])
            return _subscriber(row)

        return await self._write("delete_subscriber", run)

    async def set_credentials(self, ref: SubscriberRef, credentials: StoredCredentials, *, actor: str) -> None:
        now = self.clock()

        def run(conn: sqlite3.Connection) -> None:
            row = _find_subscriber(conn, ref)
            _store_credentials(conn, row["id"], row["username"], credentials, actor, now)

        await self._write("set_credentials", run)

    async def get_credentials(self, ref: SubscriberRef) -> StoredCredentials:
        def run(conn: sqlite3.Connection) -> StoredCredentials:
            row = _find_subscriber(conn, ref)
            cred = conn.execute("SELECT * FROM credentials WHERE subscriber_id = ?", (row["id"],)).fetchone()
            if cred is None:
                return StoredCredentials()
            return StoredCredentials(
                verifier=cred["verifier"], nt_hash=cred["nt_hash"], cleartext=cred["cleartext"],
                updated_at=cred["updated_at"],
            )

        return await self._read("get_credentials", run)

    async def list_credentials(self) -> dict[int, StoredCredentials]:
        return await self._read("list_credentials", lambda conn: {
            int(r["subscriber_id"]): StoredCredentials(verifier=r["verifier"], nt_hash=r["nt_hash"],
                                                       cleartext=r["cleartext"], updated_at=r["updated_at"])
            for r in conn.execute("SELECT * FROM credentials")})

    async def set_subscriber_plan(self, ref: SubscriberRef, plan: int | str | None, *, actor: str) -> Subscriber:
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Subscriber:
            row = _find_subscriber(conn, ref)
            plan_row = _find_plan(conn, plan) if plan is not None else None
            plan_id = plan_row["id"] if plan_row is not None else None
            if row["plan_id"] == plan_id:
                raise Conflict(f"subscriber {row['username']!r} is already on that plan")
            old = conn.execute("SELECT name FROM plans WHERE id = ?", (row["plan_id"],)).fetchone()
            conn.execute("UPDATE subscribers SET plan_id = ?, updated_at = ? WHERE id = ?", (plan_id, now, row["id"]))
            _append_audit(conn, now, actor, "subscriber.plan_changed", "subscriber", row["id"], row["username"],
                          {"from": old["name"] if old else None,
                           "to": plan_row["name"] if plan_row is not None else None, "plan_id": plan_id})
            return _subscriber(_find_subscriber(conn, int(row["id"])))

        return await self._write("set_subscriber_plan", run)

    async def set_radius_reply(self, ref: SubscriberRef, attributes: Sequence[str], *, actor: str,
                               hidden: Collection[str] = ()) -> Subscriber:
        now = self.clock()
        lines = [line.strip() for line in attributes]
        if any(not line or "\n" in line or len(line) > 1000 for line in lines):
            raise InvalidValue("a reply attribute is one line of at most 1000 characters")

        def run(conn: sqlite3.Connection) -> Subscriber:
            row = _find_subscriber(conn, ref)
            before = list(_text_list(row["radius_reply"]))
            if before == lines:
                raise Conflict(f"subscriber {row['username']!r} has those reply attributes already")
            conn.execute("UPDATE subscribers SET radius_reply = ?, updated_at = ? WHERE id = ?",
                         (json.dumps(lines), now, row["id"]))
            _append_audit(conn, now, actor, "subscriber.radius_reply_set", "subscriber", row["id"], row["username"],
                          {"from": _audited_reply(before, hidden), "to": _audited_reply(lines, hidden)})
            return _subscriber(_find_subscriber(conn, int(row["id"])))

        return await self._write("set_radius_reply", run)

    async def subscriber_overview(self, ref: SubscriberRef, *, audit_limit: int = 20) -> SubscriberOverview:
        def run(conn: sqlite3.Connection) -> SubscriberOverview:
            row = _find_subscriber(conn, ref)
            sid = row["id"]
            plan_row = conn.execute("SELECT * FROM plans WHERE id = ?", (row["plan_id"],)).fetchone()
            cred = conn.execute(
                "SELECT verifier IS NOT NULL AS v, nt_hash IS NOT NULL AS n, cleartext IS NOT NULL AS c,"
                " updated_at FROM credentials WHERE subscriber_id = ?", (sid,)
            ).fetchone()
            # Only which forms exist leaves the store here: the helpdesk view never needs the values.
            present = StoredCredentials(
                verifier="present" if cred and cred["v"] else None,
                nt_hash=b"present" if cred and cred["n"] else None,
                cleartext="present" if cred and cred["c"] else None,
                updated_at=cred["updated_at"] if cred else 0.0,
            )
            reservations = [_reservation(r) for r in conn.execute(
                "SELECT * FROM reservations WHERE subscriber_id = ? ORDER BY id", (sid,))]
            leases = [lease_from_row(r) for r in conn.execute(
                "SELECT * FROM leases WHERE subscriber_id = ? ORDER BY expires_at DESC", (sid,))]
            bindings6 = [sqlite_dhcp6.lease6_from_row(r) for r in conn.execute(
                "SELECT * FROM dhcp6_leases WHERE subscriber_id = ? ORDER BY expires_at DESC", (sid,))]
            sessions = [session_from_row(r) for r in conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM radius_sessions WHERE subscriber_id = ? ORDER BY started_at DESC"
                " LIMIT 20", (sid,))]
            now = self.clock()
            usage = usage_between(conn, sid, month_start(now), now)
            coa = [coa_from_row(r) for r in conn.execute(
                "SELECT * FROM coa_requests WHERE subscriber_id = ? ORDER BY id DESC LIMIT 10", (sid,))]
            mailboxes = [mailbox_from_row(r) for r in conn.execute(
                "SELECT * FROM mailboxes WHERE subscriber_id = ? ORDER BY address", (sid,))]
            aliases = [alias_from_row(r) for r in conn.execute(
                "SELECT * FROM mail_aliases WHERE subscriber_id = ? ORDER BY address", (sid,))]
            audit = [_audit_entry(r) for r in conn.execute(
                "SELECT * FROM audit_log WHERE subject_kind = 'subscriber' AND subject_id = ?"
                " ORDER BY id DESC LIMIT ?", (sid, audit_limit))]
            # Its last change of status, else its creation (a subscriber starts active).
            since = conn.execute(
                "SELECT at FROM audit_log WHERE subject_kind = 'subscriber' AND subject_id = ? AND action IN"
                f" ({', '.join('?' * len(_STATUS_ACTIONS))}, 'subscriber.added') ORDER BY id DESC LIMIT 1",
                (sid, *(f"subscriber.{action}" for action in _STATUS_ACTIONS.values()))).fetchone()
            return SubscriberOverview(
                subscriber=_subscriber(row), plan=_plan(plan_row) if plan_row else None, credentials=present,
                reservations=reservations, leases=leases, sessions=sessions, mailboxes=mailboxes, audit=audit,
                usage_this_month=usage, coa=coa, status_since=since["at"] if since else None, aliases=aliases,
                bindings6=bindings6,
            )

        return await self._read("subscriber_overview", run)

    # --- DHCP reservations

    async def add_reservation(
        self,
        subscriber: SubscriberRef,
        kind: ReservationKind,
        key: str,
        *,
        actor: str,
        address: str | None = None,
        hostname: str | None = None,
        address6: str | None = None,
        prefix6: str | None = None,
    ) -> Reservation:
        # Checked before queueing: a bad value costs no write slot, and the message is the same in
        # every backend.
        try:
            checked_kind, checked_key = reservation_key(str(kind), key)
        except ValueError as exc:
            raise InvalidValue(str(exc)) from None
        checked_address = _checked(reservable_address, address) if address is not None else None
        checked_hostname = _checked(hostname_text, hostname) if hostname is not None else None
        checked_address6 = _checked(reservable_address6, address6) if address6 is not None else None
        checked_prefix6 = _checked(reservable_prefix6, prefix6) if prefix6 is not None else None
        _refuse_the_wrong_family(checked_kind, checked_address, checked_address6, checked_prefix6)
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Reservation:
            row = _find_subscriber(conn, subscriber)
            # Looked up first (the write lock is held) for a message that names the holder, rather
            # than the bare UNIQUE violation.
            taken = _reservation_where(conn, "r.kind = ? AND r.key = ?", (checked_kind.value, checked_key))
            if taken is not None:
                raise Conflict(f"{checked_kind.value} {checked_key} is already reserved for {taken['username']}"
                               f" (reservation #{taken['id']})")
            if checked_kind == ReservationKind.USERNAME:
                # Written composed (NFC), as a username: another spelling of a name that shows the
                # same. Unless the subscriber's own username is written decomposed, stored before
                # that rule: its NAS sends its logins spelled so, and no composed key would match.
                if unicodedata.is_normalized("NFC", row["username"]):
                    _checked(username_text, checked_key)
                holder = conn.execute("SELECT id FROM subscribers WHERE username = ? AND id != ?",
                                      (checked_key, row["id"])).fetchone()
                if holder is not None:
                    raise Conflict(f"username {checked_key} is the login of subscriber {checked_key} (#{holder['id']})")
            if checked_address is not None:
                _refuse_a_reserved_address(conn, checked_address)
                _refuse_an_address_in_use(conn, checked_address, row["id"], now, checked_kind, checked_key)
            if checked_hostname is not None:
                _refuse_another_subscribers_name(conn, checked_hostname, row["id"])
            sqlite_reservations6.refuse_ipv6_conflicts(conn, row["id"], checked_address6, checked_prefix6, now=now,
                                                       kind=checked_kind, key=checked_key)
            added = _reservation(conn.execute(
                "INSERT INTO reservations (id, subscriber_id, kind, key, address, hostname, created_at, address6,"
                " prefix6, address6_net_hi, address6_net_lo, prefix6_length, prefix6_net_hi, prefix6_net_lo)"
                " VALUES ((SELECT highest + 1 FROM reservation_ids), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " RETURNING *",
                (row["id"], checked_kind.value, checked_key, checked_address, checked_hostname, now, checked_address6,
                 checked_prefix6, *sqlite_reservations6.network_columns(checked_address6, checked_prefix6)),
            ).fetchone())
            _append_audit(conn, now, actor, "reservation.added", "subscriber", row["id"], row["username"],
                          _reservation_details(added))
            return added

        return await self._write("add_reservation", run)

    async def get_reservation(self, reservation_id: int) -> Reservation:
        def run(conn: sqlite3.Connection) -> Reservation:
            row = _reservation_where(conn, "r.id = ?", (reservation_id,))
            if row is None:
                raise NotFound(f"no reservation #{reservation_id}")
            return _reservation(row)

        return await self._read("get_reservation", run)

    async def update_reservation(
        self,
        reservation_id: int,
        *,
        actor: str,
        address: str | Unchanged | None = UNCHANGED,
        hostname: str | Unchanged | None = UNCHANGED,
        address6: str | Unchanged | None = UNCHANGED,
        prefix6: str | Unchanged | None = UNCHANGED,
        fill_only: bool = False,
        expected: Reservation | None = None,
    ) -> Reservation:
        checks: dict[str, Callable[[str], str]] = {"address": reservable_address, "hostname": hostname_text,
                                                    "address6": reservable_address6, "prefix6": reservable_prefix6}
        given = {"address": address, "hostname": hostname, "address6": address6, "prefix6": prefix6}
        changes = {name: value if value is None else _checked(checks[name], value)
                   for name, value in given.items() if not isinstance(value, Unchanged)}
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Reservation:
            row = _reservation_where(conn, "r.id = ?", (reservation_id,))
            if row is None:
                raise NotFound(f"no reservation #{reservation_id}")
            if expected is not None and (row["subscriber_id"], row["kind"], row["key"]) != (
                    expected.subscriber_id, expected.kind.value, expected.key):
                raise NotFound(f"no reservation #{reservation_id} of {expected.kind.value} {expected.key} any more")
            old = _reservation(row)
            previous = {name: getattr(old, name) for name, value in changes.items() if getattr(old, name) != value}
            if not previous:
                return old

            def after(name: str) -> str | None:
                return changes[name] if name in previous else getattr(old, name)

            new = dataclasses.replace(old, address=after("address"), hostname=after("hostname"),
                                      address6=after("address6"), prefix6=after("prefix6"))
            if fill_only:
                for name, value in previous.items():
                    if value is not None:
                        raise Conflict(f"reservation #{old.id} has {name} {value} already")
            _refuse_the_wrong_family(old.kind, new.address, new.address6, new.prefix6)
            if "address" in previous and new.address is not None:
                _refuse_a_reserved_address(conn, new.address)
                _refuse_an_address_in_use(conn, new.address, old.subscriber_id, now, old.kind, old.key)
            if "hostname" in previous and new.hostname is not None:
                _refuse_another_subscribers_name(conn, new.hostname, old.subscriber_id)
            if "address6" in previous or "prefix6" in previous:
                # Checked as a new reservation's would be: this one's own IPv6 out of the way first
                # (the savepoint puts it back if they are refused).
                conn.execute("UPDATE reservations SET address6 = NULL, prefix6 = NULL, address6_net_hi = NULL,"
                             " address6_net_lo = NULL, prefix6_length = NULL, prefix6_net_hi = NULL,"
                             " prefix6_net_lo = NULL WHERE id = ?", (old.id,))
                sqlite_reservations6.refuse_ipv6_conflicts(
                    conn, old.subscriber_id, new.address6 if "address6" in previous else None,
                    new.prefix6 if "prefix6" in previous else None, now=now, kind=old.kind, key=old.key)
            conn.execute(
                "UPDATE reservations SET address = ?, hostname = ?, address6 = ?, prefix6 = ?, address6_net_hi = ?,"
                " address6_net_lo = ?, prefix6_length = ?, prefix6_net_hi = ?, prefix6_net_lo = ? WHERE id = ?",
                (new.address, new.hostname, new.address6, new.prefix6,
                 *sqlite_reservations6.network_columns(new.address6, new.prefix6), old.id))
            _append_audit(conn, now, actor, "reservation.changed", "subscriber", old.subscriber_id, row["username"],
                          {**_reservation_details(new), "previous": previous})
            return new

        return await self._write("update_reservation", run)

    async def list_reservations(self, *, subscriber: SubscriberRef | None = None) -> list[Reservation]:
        def run(conn: sqlite3.Connection) -> list[Reservation]:
            if subscriber is None:
                rows = conn.execute("SELECT * FROM reservations ORDER BY id")
            else:
                sid = _find_subscriber(conn, subscriber)["id"]
                rows = conn.execute("SELECT * FROM reservations WHERE subscriber_id = ? ORDER BY id", (sid,))
            return [_reservation(r) for r in rows]

        return await self._read("list_reservations", run)

    async def delete_reservation(self, reservation_id: int, *, actor: str) -> Reservation:
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Reservation:
            row = _reservation_where(conn, "r.id = ?", (reservation_id,))
            if row is None:
                raise NotFound(f"no reservation #{reservation_id}")
            deleted = _reservation(row)
            conn.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))
            _append_audit(conn, now, actor, "reservation.deleted", "subscriber", deleted.subscriber_id,
                          row["username"], _reservation_details(deleted))
            return deleted

        return await self._write("delete_reservation", run)

    # --- mailboxes

    async def add_mailbox(self, subscriber: SubscriberRef, address: str, *, actor: str,
                          quota_bytes: int | None = None) -> Mailbox:
        checked = _checked(mail_address, address)
        quota = _checked_quota(quota_bytes)
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Mailbox:
            row = _find_subscriber(conn, subscriber)
            added = insert_mailbox(conn, row["id"], checked, quota, now)
            _append_audit(conn, now, actor, "mailbox.added", "subscriber", row["id"], row["username"],
                          {"address": checked, "quota_bytes": quota})
            return added

        return await self._write("add_mailbox", run)

    async def list_mailboxes(self, *, subscriber: SubscriberRef | None = None) -> list[Mailbox]:
        def run(conn: sqlite3.Connection) -> list[Mailbox]:
            return [mailbox_from_row(r) for r in _addresses_of(conn, "mailboxes", subscriber)]

        return await self._read("list_mailboxes", run)

    async def delete_mailbox(self, address: str, *, actor: str) -> Mailbox:
        checked = _checked(mail_address, address)
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Mailbox:
            row = find_mailbox(conn, checked)
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (row["id"],))
            _append_audit(conn, now, actor, "mailbox.deleted", "subscriber", row["subscriber_id"], row["username"],
                          {"address": checked})
            return mailbox_from_row(row)

        return await self._write("delete_mailbox", run)

    async def set_mailbox_quota(self, address: str, quota_bytes: int | None, *, actor: str) -> Mailbox:
        checked = _checked(mail_address, address)
        quota = _checked_quota(quota_bytes)
        now = self.clock()

        def run(conn: sqlite3.Connection) -> Mailbox:
            row = find_mailbox(conn, checked)
            conn.execute("UPDATE mailboxes SET quota_bytes = ? WHERE id = ?", (quota, row["id"]))
            _append_audit(conn, now, actor, "mailbox.quota_changed", "subscriber", row["subscriber_id"],
                          row["username"], {"address": checked, "quota_bytes": quota,
                                            "previous_quota_bytes": row["quota_bytes"]})
            return dataclasses.replace(mailbox_from_row(row), quota_bytes=quota)

        return await self._write("set_mailbox_quota", run)

    async def mail_recipient(self, address: str) -> MailRecipient | None:
        return await self._read("mail_recipient", lambda conn: mail_recipient(conn, address))

    async def add_mail_alias(self, subscriber: SubscriberRef, address: str, targets: Sequence[str], *,
                             local_domains: Collection[str], actor: str) -> MailAlias:
        checked = _checked(mail_address, address)
        domains = frozenset(local_domains)

        def target(text: str) -> str:  # a mailbox here, or an address elsewhere as its server takes it
            here = text.strip().rpartition("@")[2].lower().removesuffix(".") in domains
            return _checked(mail_address if here else forward_address, text)

        wanted = list(dict.fromkeys(target(t) for t in targets))
        if not 1 <= len(wanted) <= MAX_ALIAS_TARGETS:
            raise InvalidValue(f"an alias has 1 to {MAX_ALIAS_TARGETS} targets")
        if checked in wanted:
            raise InvalidValue(f"{checked} cannot be its own target")
        now = self.clock()

        def run(conn: sqlite3.Connection) -> MailAlias:
            row = _find_subscriber(conn, subscriber)
            added = insert_alias(conn, row["id"], checked, wanted, domains, now)
            _append_audit(conn, now, actor, "mail_alias.added", "subscriber", row["id"], row["username"],
                          {"address": checked, "targets": wanted})
            return added

        return await self._write("add_mail_alias", run)

    async def list_mail_aliases(self, *, subscriber: SubscriberRef | None = None) -> list[MailAlias]:
        def run(conn: sqlite3.Connection) -> list[MailAlias]:
            return [alias_from_row(r) for r in _addresses_of(conn, "mail_aliases", subscriber)]

        return await self._read("list_mail_aliases", run)

    async def delete_mail_alias(self, address: str, *, actor: str) -> MailAlias:
        checked = _checked(mail_address, address)
        now = self.clock()

        def run(conn: sqlite3.Connection) -> MailAlias:
            row = find_alias(conn, checked)
            if row is None:
                raise NotFound(f"no alias {checked}")
            conn.execute("DELETE FROM mail_aliases WHERE id = ?", (row["id"],))
            _append_audit(conn, now, actor, "mail_alias.deleted", "subscriber", row["subscriber_id"], row["username"],
                          {"address": checked})
            return alias_from_row(row)

        return await self._write("delete_mail_alias", run)

    async def mail_alias(self, address: str) -> tuple[MailAlias, SubscriberStatus] | None:
        def run(conn: sqlite3.Connection) -> tuple[MailAlias, SubscriberStatus] | None:
            row = find_alias(conn, address)
            return None if row is None else (alias_from_row(row), SubscriberStatus(row["status"]))

        return await self._read("mail_alias", run)

    # --- the outbound mail queue

    async def enqueue_mail(self, mail: QueuedMail) -> None:
        now = self.clock()
        await self._write("enqueue_mail", lambda conn: sqlite_mail.enqueue(conn, mail, now))

    async def due_mail(self, now: float, *, limit: int = 100, after: float | None = None) -> list[QueuedMail]:
        if after is None:
            return await self._read("due_mail", lambda conn: sqlite_mail.queued_mail(
                conn, "WHERE next_attempt_at <= ?", (now,), limit))
        return await self._read("due_mail", lambda conn: sqlite_mail.queued_mail(
            conn, "WHERE next_attempt_at <= ? OR next_attempt_at > ?", (now, after), limit))

    async def list_mail_queue(self) -> list[QueuedMail]:
        return await self._read("list_mail_queue", sqlite_mail.queued_mail)

    async def get_queued_mail(self, queue_id: str) -> QueuedMail | None:
        found = await self._read("get_queued_mail", lambda conn: sqlite_mail.queued_mail(
            conn, "WHERE id = ?", (queue_id,)))
        return found[0] if found else None

    async def mail_queue_summary(self) -> tuple[int, float | None]:
        def run(conn: sqlite3.Connection) -> tuple[int, float | None]:
            count, oldest = conn.execute("SELECT COUNT(*), MIN(created_at) FROM mail_queue").fetchone()
            return int(count), oldest

        return await self._read("mail_queue_summary", run)

    async def record_mail_attempt(self, queue_id: str, outcomes: dict[str, tuple[QueuedRecipientState, str | None]],
                                  *, next_attempt_at: float, error: str | None) -> QueuedMail | None:
        now = self.clock()
        return await self._write("record_mail_attempt", lambda conn: sqlite_mail.record_attempt(
            conn, queue_id, outcomes, next_attempt_at, error, now))

    async def record_mail_delivered(self, queue_id: str, delivered: dict[str, str]) -> None:
        now = self.clock()
        await self._write("record_mail_delivered", lambda conn: sqlite_mail.record_delivered(
            conn, queue_id, delivered, now))

    async def delete_queued_mail(self, queue_id: str, *, actor: str) -> QueuedMail:
        now = self.clock()

        def run(conn: sqlite3.Connection) -> QueuedMail:
            mail = sqlite_mail.find_queued(conn, queue_id)
            conn.execute("DELETE FROM mail_queue WHERE id = ?", (queue_id,))
            _append_audit(conn, now, actor, "mail.queue.deleted", "mail_queue", None, queue_id,
                          {"sender": mail.sender, "recipients": mail.pending})
            return mail

        return await self._write("delete_queued_mail", run)

    async def reschedule_mail(self, queue_id: str | None, at: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            if queue_id is None:
                return conn.execute("UPDATE mail_queue SET next_attempt_at = ?", (at,)).rowcount
            sqlite_mail.find_queued(conn, queue_id)
            return conn.execute("UPDATE mail_queue SET next_attempt_at = ? WHERE id = ?", (at, queue_id)).rowcount

        return await self._write("reschedule_mail", run)

    # --- leases

    async def record_lease(self, lease: Lease, *, event: str) -> None:
        refused = await self.record_leases([(lease, event)])
        if refused:
            raise Conflict(f"{lease.address} is held by a RADIUS session until {refused[lease.address]:.0f}")

    async def record_leases(self, changes: Sequence[tuple[Lease, str]]) -> dict[str, float]:
        if not changes:
            return {}
        now = self.clock()

        def run(conn: sqlite3.Connection) -> dict[str, float]:
            refused = sqlite_addresses.refused_dhcp_writes(
                conn, [lease.address for lease, _ in changes if lease.service == LeaseService.DHCP], now)
            sqlite_addresses.record_leases(conn, [c for c in changes if c[0].address not in refused], now)
            return refused

        return await self._write("record_lease", run)

    async def claim_address(self, claim: AddressClaim) -> ClaimResult:
        now = self.clock()
        return await self._write("claim_address", lambda conn: sqlite_addresses.claim_address(conn, claim, now))

    async def renew_claims(self, holds: Sequence[tuple[str, str]], expires_at: float) -> list[str]:
        if not holds:
            return []
        return await self._write("renew_claims", lambda conn: sqlite_addresses.renew_claims(conn, holds, expires_at))

    async def release_claims(self, holds: Sequence[tuple[str, str]]) -> list[Lease]:
        if not holds:
            return []
        now = self.clock()
        return await self._write("release_claims", lambda conn: sqlite_addresses.release_claims(conn, holds, now))

    async def list_leases(
        self, *, subscriber: SubscriberRef | None = None, include_ended: bool = False, after: str | None = None,
        limit: int | None = None
    ) -> list[Lease]:
        now = self.clock()

        def run(conn: sqlite3.Connection) -> list[Lease]:
            clauses: list[str] = []
            params: list[object] = []
            if subscriber is not None:
                clauses.append("subscriber_id = ?")
                params.append(_find_subscriber(conn, subscriber)["id"])
            if not include_ended:
                clauses.append(CURRENT_LEASE)
                params.append(now)
            _page(clauses, params, "address", after)
            return [lease_from_row(r) for r in conn.execute(
                f"SELECT * FROM leases{_where(clauses)} ORDER BY address{_limit(limit)}", params)]

        return await self._read("list_leases", run)

    async def get_lease(self, address: str) -> Lease:
        canonical = _checked(ipv4_text, address)

        def run(conn: sqlite3.Connection) -> Lease:
            row = conn.execute("SELECT * FROM leases WHERE address = ?", (canonical,)).fetchone()
            if row is None:
                raise NotFound(f"no lease for {canonical}")
            return lease_from_row(row)

        return await self._read("get_lease", run)

    async def who(self, address: str, *, since: float, until: float) -> list[Holding]:
        canonical = _checked(attributable_text, address)
        if until < since:
            raise InvalidValue("the end of the span comes before its start")
        return await self._read("who", lambda conn: sqlite_attribution.who(conn, canonical, since, until))

    async def lease_history(self, address: str, *, limit: int = 50) -> list[LeaseHistoryEntry]:
        canonical = _checked(ipv4_text, address)
        if limit < 1:
            raise InvalidValue(f"the history limit must be at least 1, not {limit}")
        # Newest first in the order recorded: ids only grow, and a clock stepped back (NTP) or
        # two entries in one clock tick cannot reorder them.
        return await self._read("lease_history", lambda conn: [_lease_history_entry(r) for r in conn.execute(
            "SELECT * FROM lease_history WHERE address = ? ORDER BY id DESC LIMIT ?", (canonical, limit))])

    # --- DHCPv6 bindings

    async def record_leases6(self, changes: Sequence[tuple[Lease6, str]]) -> None:
        if not changes:
            return
        now = self.clock()
        await self._write("record_leases6", lambda conn: sqlite_dhcp6.record_leases6(conn, changes, now))

    async def list_leases6(
        self, *, subscriber: SubscriberRef | None = None, include_ended: bool = False
    ) -> list[Lease6]:
        now = self.clock()

        def run(conn: sqlite3.Connection) -> list[Lease6]:
            clauses, params = [], []
            if subscriber is not None:
                clauses.append("subscriber_id = ?")
                params.append(_find_subscriber(conn, subscriber)["id"])
            if not include_ended:
                clauses.append(CURRENT_LEASE)
                params.append(now)
            where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
            leases = [sqlite_dhcp6.lease6_from_row(r)
                      for r in conn.execute(f"SELECT * FROM dhcp6_leases {where}", params)]
            return sorted(leases, key=sqlite_dhcp6.listing_order)

        return await self._read("list_leases6", run)

    async def get_lease6(self, prefix: str) -> Lease6:
        canonical = _checked(dhcp6_prefix_text, prefix)

        def run(conn: sqlite3.Connection) -> Lease6:
            row = conn.execute("SELECT * FROM dhcp6_leases WHERE prefix = ?", (canonical,)).fetchone()
            if row is None:
                raise NotFound(f"no DHCPv6 binding for {canonical}")
            return sqlite_dhcp6.lease6_from_row(row)

        return await self._read("get_lease6", run)

    async def lease6_history(self, prefix: str, *, limit: int = 50) -> list[Lease6HistoryEntry]:
        canonical = _checked(dhcp6_prefix_text, prefix)
        if limit < 1:
            raise InvalidValue(f"the history limit must be at least 1, not {limit}")
        return await self._read("lease6_history", lambda conn: [
            sqlite_dhcp6.history_entry_from_row(r) for r in conn.execute(
                "SELECT * FROM dhcp6_lease_history WHERE prefix = ? ORDER BY id DESC LIMIT ?", (canonical, limit))])

    # --- RADIUS sessions and accounting

    async def record_accounting(self, records: Sequence[AccountingRecord]) -> list[AccountingResult]:
        return await self._write("record_accounting", lambda conn: record_accounting(conn, records))

    async def list_sessions(self, *, open_only: bool = False, subscriber: SubscriberRef | None = None,
                            nas_address: str | None = None, limit: int = 1000) -> list[RadiusSession]:
        def run(conn: sqlite3.Connection) -> list[RadiusSession]:
            conditions: list[str] = []
            params: list[Any] = []
            if open_only:
                conditions.append("stopped_at IS NULL")
            if subscriber is not None:
                conditions.append("subscriber_id = ?")
                params.append(_history_subscriber_id(conn, subscriber))
            if nas_address is not None:
                conditions.append("nas_address = ?")
                params.append(nas_address)
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            return [session_from_row(r) for r in conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM radius_sessions{where} ORDER BY id DESC LIMIT ?", (*params, limit))]

        return await self._read("list_sessions", run)

    async def get_session(self, session_id: int) -> RadiusSession:
        def run(conn: sqlite3.Connection) -> RadiusSession:
            row = conn.execute(f"SELECT {SESSION_COLUMNS} FROM radius_sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise NotFound(f"no session #{session_id}")
            return session_from_row(row)

        return await self._read("get_session", run)

    async def close_sessions(self, session_ids: Sequence[int], *, at: float, cause: str,
                             actor: str | None = None) -> list[RadiusSession]:
        ids = list(session_ids)

        def run(conn: sqlite3.Connection) -> list[RadiusSession]:
            closed = close_sessions(conn, ids, at, cause)
            if actor is None:  # ispd's own closing (stale sessions): not an operator's change
                return closed
            for session in closed:
                # In the subscriber's history (ispd subscriber show) when it has one.
                kind, subject = ("subscriber", session.subscriber_id) if session.subscriber_id is not None \
                    else ("session", session.id)
                _append_audit(conn, at, actor, "session.closed", kind, subject, session.username,
                              {"session_id": session.id, "nas_address": session.nas_address,
                               "acct_session_id": session.acct_session_id, "cause": cause})
            return closed

        return await self._write("close_sessions", run)

    async def record_coa(self, *, kind: str, nas_address: str, result: str, attempts: int, at: float,
                         completed_at: float, session_id: int | None = None, subscriber_id: int | None = None,
                         reason: str | None = None, error_cause: int | None = None) -> CoARecord:
        def run(conn: sqlite3.Connection) -> CoARecord:
            return coa_from_row(conn.execute(
                "INSERT INTO coa_requests (at, kind, session_id, subscriber_id, nas_address, reason, result,"
                " error_cause, attempts, completed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
                (at, kind, session_id, subscriber_id, nas_address, reason, result, error_cause, attempts,
                 completed_at),
            ).fetchone())

        return await self._write("record_coa", run)

    async def list_coa(self, *, session_id: int | None = None, subscriber: SubscriberRef | None = None,
                       limit: int = 50) -> list[CoARecord]:
        def run(conn: sqlite3.Connection) -> list[CoARecord]:
            conditions, params = [], []
            if session_id is not None:
                conditions.append("session_id = ?")
                params.append(session_id)
            if subscriber is not None:
                conditions.append("subscriber_id = ?")
                params.append(_history_subscriber_id(conn, subscriber))
            where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
            return [coa_from_row(r) for r in conn.execute(
                f"SELECT * FROM coa_requests{where} ORDER BY id DESC LIMIT ?", (*params, limit))]

        return await self._read("list_coa", run)

    async def usage(self, subscriber: SubscriberRef, *, since: float, until: float) -> Usage:
        return await self._read("usage", lambda conn: usage_between(
            conn, _history_subscriber_id(conn, subscriber), since, until))

    async def usage_totals(self, *, since: float, until: float) -> dict[int, Usage]:
        return await self._read("usage_totals", lambda conn: sqlite_radius.usage_totals(conn, since, until))

    async def usage_by_day(self, subscriber: SubscriberRef | None, *, since: float, until: float,
                           after: tuple[int, str] | None = None, limit: int | None = None) -> list[DailyUsage]:
        if until < since:  # (as `who` says; an empty answer would read as "no usage")
            raise InvalidValue("the end of the span comes before its start")

        def run(conn: sqlite3.Connection) -> list[DailyUsage]:
            subscriber_id = _history_subscriber_id(conn, subscriber) if subscriber is not None else None
            return sqlite_radius.usage_by_day(conn, subscriber_id, since, until, after=after, limit=limit)

        return await self._read("usage_by_day", run)

    # --- fair-use quotas

    async def record_quota_crossing(self, crossing: QuotaCrossing) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO quota_crossings (subscriber_id, month, crossed_at, used_octets, quota_bytes)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (crossing.subscriber_id, crossing.month, crossing.crossed_at, crossing.used_octets,
                 crossing.quota_bytes))
            if not cursor.rowcount:
                return False
            _append_audit(conn, crossing.crossed_at, "ispd", "subscriber.over_quota", "subscriber",
                          crossing.subscriber_id, username_of(conn, crossing.subscriber_id),
                          {"month": crossing.month, "used": crossing.used_octets, "quota": crossing.quota_bytes})
            return True

        return await self._write("record_quota_crossing", run)

    async def quota_crossings(self, subscriber: SubscriberRef) -> list[QuotaCrossing]:
        def run(conn: sqlite3.Connection) -> list[QuotaCrossing]:
            sid = _find_subscriber(conn, subscriber)["id"]
            return [QuotaCrossing(*r) for r in conn.execute(
                "SELECT subscriber_id, month, crossed_at, used_octets, quota_bytes FROM quota_crossings"
                " WHERE subscriber_id = ? ORDER BY month DESC", (sid,))]

        return await self._read("quota_crossings", run)

    # --- DNSSEC trust anchors (RFC 5011)

    async def trust_anchor_keys(self, zone: str) -> list[TrustAnchorKey]:
        def run(conn: sqlite3.Connection) -> list[TrustAnchorKey]:
            return [TrustAnchorKey(*row) for row in conn.execute(
                "SELECT zone, key, state, since, hold_down_until, source FROM dnssec_trust_anchor_keys"
                " WHERE zone = ? ORDER BY since, key", (zone,))]

        return await self._read("trust_anchor_keys", run)

    async def save_trust_anchor_keys(self, zone: str, keys: Sequence[TrustAnchorKey]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM dnssec_trust_anchor_keys WHERE zone = ?", (zone,))
            conn.executemany(
                "INSERT INTO dnssec_trust_anchor_keys (zone, key, state, since, hold_down_until, source)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(zone, k.key, k.state, k.since, k.hold_down_until, k.source) for k in keys])

        await self._write("save_trust_anchor_keys", run)

    # --- retention

    async def purge_history(self, before: float) -> dict[str, int]:
        deleted: dict[str, int] = {}
        # usage_daily's rows are days: those wholly before the cut, but never this month's or
        # last month's, whatever the retention: the plan's monthly quota and the month's usage
        # read this month's, and a bill last month's.
        last_month = month_start(month_start(self.clock()) - 1)
        before_day = min(utc_day(before), utc_day(last_month))
        # A quota crossing is its month's: kept while any day of that month is.
        before_month = time.strftime("%Y-%m", time.gmtime(min(before, last_month)))
        cuts: dict[str, object] = {"usage_daily": before_day, "quota_crossings": before_month}
        for kind, table, key, condition in _HISTORY:
            total = 0
            while True:
                def run(conn: sqlite3.Connection, table: str = table, key: str = key,
                        condition: str = condition) -> int:
                    cursor = conn.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN"
                        f" (SELECT {key} FROM {table} WHERE {condition} LIMIT {_PURGE_BATCH})",
                        (cuts.get(table, before),) * condition.count("?")
                    )
                    return int(cursor.rowcount)

                count = await self._write("purge_history", run)
                total += count
                if count < _PURGE_BATCH:
                    break
            deleted[kind] = total
        return deleted

    # --- audit

    async def audit_since(self, after_id: int, *, limit: int = 1000) -> list[AuditEntry]:
        return await self._read("audit_since", lambda conn: [_audit_entry(r) for r in conn.execute(
            "SELECT * FROM audit_log WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))])

    async def last_audit_id(self) -> int:
        return await self._read(
            "last_audit_id", lambda conn: int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM audit_log").fetchone()[0])
        )


# What retention removes; each kind is deleted in batches of _PURGE_BATCH rows per transaction,
# the other writes getting in between. A batch of 5,000 lease history rows held the writer for
# 0.3-0.6 s (a million-row backlog, after retention was lowered or a long stop), and a lease
# write waited up to 0.7 s behind it; a batch a fifth the size holds it about a fifth as long.
_PURGE_BATCH = 1000
# (kind, table, its primary key, which rows: each ? is the cut)
_HISTORY = (
    # A lease row written before the cut goes once it was valid no more at the cut, or once a later
    # row of its lease (its address's of one starts_at) says what it said: not as soon as it was
    # written, for a lease granted or renewed before the cut and held after it is shown (`ispd
    # who`) by its last row alone, which the purge kept until it ends.
    ("lease_history", "lease_history", "id",
     "at < ? AND (expires_at < ? OR EXISTS (SELECT 1 FROM lease_history lease"
     " WHERE lease.address = lease_history.address AND lease.starts_at = lease_history.starts_at"
     " AND lease.id > lease_history.id))"),
    ("accounting_records", "accounting_records", "id", "at < ?"),
    ("radius_sessions", "radius_sessions", "id", "stopped_at IS NOT NULL AND stopped_at < ?"),
    ("leases", "leases", "address", "state != 'bound' AND expires_at < ?"),
    ("dhcp6_lease_history", "dhcp6_lease_history", "id",  # as lease_history's
     "at < ? AND (expires_at < ? OR EXISTS (SELECT 1 FROM dhcp6_lease_history lease"
     " WHERE lease.prefix = dhcp6_lease_history.prefix AND lease.starts_at = dhcp6_lease_history.starts_at"
     " AND lease.id > dhcp6_lease_history.id))"),
    ("dhcp6_leases", "dhcp6_leases", "prefix", "state != 'bound' AND expires_at < ?"),
    ("audit_log", "audit_log", "id", "at < ?"),
    ("coa_requests", "coa_requests", "id", "at < ?"),
    ("usage_daily", "usage_daily", "subscriber_id, day", "day < ?"),
    ("quota_crossings", "quota_crossings", "subscriber_id, month", "month < ?"),
)

_STATUS_ACTIONS = {
    SubscriberStatus.ACTIVE: "resumed",
    SubscriberStatus.SUSPENDED: "suspended",
    SubscriberStatus.CLOSED: "closed",
}
