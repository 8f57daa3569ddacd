"""The PostgreSQL backend: the store on a database server, for operators who keep their data there.

Theory of operation
-------------------
The store's logic and its SQL are the SQLite backend's (``sqlite.py`` and its ``sqlite_*``
modules): the same writer thread with group commit, the same reader threads, the same
statements. What differs lives here:

- ``PgConnection`` gives a psycopg connection the few sqlite3 manners the shared code uses
  (``execute`` returning a cursor, rows read by name or position, ``in_transaction``; no
  ``lastrowid``: the shared SQL asks for new ids with RETURNING) and turns SQLite's spellings
  into PostgreSQL's: ``?`` and ``?N`` placeholders, the two-argument scalar ``MAX``/``MIN``
  (``GREATEST``/``LEAST``). Booleans go as 0 and 1, as SQLite stores them.
- Writes: SQLite lets one writer in at a time (``BEGIN IMMEDIATE``), and the store's checks rest
  on it (a name is free, then it is inserted; the next id is the highest plus one). Here every
  write transaction first takes one transaction-scoped advisory lock, so writers — this daemon's
  writer thread, an admin command, a second process — still take turns, and wait for it at most
  ``busy_timeout_seconds`` (``lock_timeout``). Group commit makes that one lock per batch.
- Reads run in REPEATABLE READ transactions: one snapshot for a read of several queries.
- A connection the server closed (a restart, a failover) is opened again at the next batch or
  read; the writes of a batch whose commit was cut are answered with StoreUnavailable.
- The schema: ``migrations/postgresql/`` starts with the whole schema of one version at once
  (a new PostgreSQL store is created at that version); later migrations come in both folders.

Not here (yet): several daemons writing one database. One daemon per store holds as with SQLite:
the daemon's lock is a session advisory lock (``DaemonLock`` in ``ispd/daemonlock.py`` for a
file, ``PostgresDaemonLock`` below for a database).
"""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ispd.logs import get_logger
from ispd.store.config import StoreConfig
from ispd.store.errors import Conflict, InvalidValue, SchemaTooNew, StoreError, StoreUnavailable
from ispd.store.sqlite import Clock, Connector, Migration, MigrationStarting, SQLiteStore, read_migrations

log = get_logger("ispd.store")

try:
    import psycopg
    import psycopg.adapt
    import psycopg.conninfo
    import psycopg.errors
    import psycopg.pq
    import psycopg.types.string
except ImportError:  # an install that left the dependency out
    psycopg = None  # type: ignore[assignment]

# Advisory lock keys (per database): "ispd" in ASCII, then what the lock guards.
_WRITE_LOCK = 0x69737064_0001
_MIGRATION_LOCK = 0x69737064_0002
_DAEMON_LOCK = 0x69737064_0003


def _require_psycopg() -> None:
    if psycopg is None:
        raise StoreUnavailable("the postgresql backend needs psycopg: pip install 'psycopg[binary]'")


# --- SQLite's SQL, as PostgreSQL reads it ------------------------------------------------------

_SCALAR_EXTREMES = re.compile(r"\b(MAX|MIN)\(", re.IGNORECASE)


def _has_two_arguments(sql: str, opening: int) -> bool:
    """Whether a comma stands at the top level of the parentheses opened at ``opening``."""
    depth, comma, i, quote = 0, False, opening, ""
    while i < len(sql):
        c = sql[i]
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return comma
        elif c == "," and depth == 1:
            comma = True
        i += 1
    raise ValueError(f"unbalanced parentheses in {sql!r}")


@functools.lru_cache(maxsize=2048)
def postgresql_sql(sql: str) -> tuple[str, bool]:
    """The statement in PostgreSQL's spelling, and whether its placeholders are numbered (``?N``:
    the parameters go as a mapping then). The store's SQL is a finite set of strings: cached."""
    # MAX(a, b) is SQLite's scalar maximum; PostgreSQL's MAX takes one argument.
    parts, last = [], 0
    for match in _SCALAR_EXTREMES.finditer(sql):
        if _has_two_arguments(sql, match.end() - 1):
            parts.append(sql[last:match.start()])
            parts.append("GREATEST(" if match.group(1).upper() == "MAX" else "LEAST(")
            last = match.end()
    sql = "".join(parts) + sql[last:]
    # Placeholders as SQLite numbers them: ?N is N, a bare ? the one after the highest so far.
    out: list[str | int] = []
    numbered, highest, i, quote = False, 0, 0, ""
    while i < len(sql):
        c = sql[i]
        if quote:
            out.append("%%" if c == "%" else c)
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
            out.append(c)
        elif sql.startswith("--", i) or sql.startswith("/*", i):
            # A comment is copied as it is (psycopg still reads a % there as its own).
            end = sql.find("\n" if c == "-" else "*/", i)
            end = len(sql) if end < 0 else end + (1 if c == "-" else 2)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        elif c == "%":
            out.append("%%")
        elif c == "?":
            j = i + 1
            while j < len(sql) and sql[j].isdigit():
                j += 1
            if j > i + 1:
                numbered = True
                highest = max(highest, int(sql[i + 1:j]))
            else:
                highest += 1
            out.append(highest if j == i + 1 else int(sql[i + 1:j]))
            i = j
            continue
        else:
            out.append(c)
        i += 1
    text = "".join((f"%(p{part})s" if numbered else "%s") if isinstance(part, int) else part for part in out)
    return text, numbered


def _bound(params: Sequence[Any], numbered: bool) -> Any:
    values = [int(v) if v.__class__ is bool else storable_text(v) if v.__class__ is str else v for v in params]
    return {f"p{n}": v for n, v in enumerate(values, 1)} if numbered else values


def storable_text(text: str) -> str:
    """PostgreSQL's text cannot hold a NUL, which SQLite keeps: U+FFFD stands for it, as for bytes
    that are not UTF-8 where the services decode. Texts the services take from clients may carry
    one (a NAS's User-Name or Acct-Session-Id ending in a C string's terminator): refused, such a
    record would never be answered and its NAS would send it forever. A lookup by the same text
    is replaced alike, and finds it; operators' input is refused earlier (no control characters)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class Row(tuple):  # type: ignore[type-arg]
    """A result row read by position or by column name, as ``sqlite3.Row`` is."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if key.__class__ is str:
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    names: dict[str, int] = {}
    for index, column in enumerate(cursor.description or ()):
        names.setdefault(column.name, index)  # sqlite3.Row: the first of two columns of one name

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._names = names
        return row

    return make


if psycopg is not None:
    class _NumericLoader(psycopg.adapt.Loader):
        """SUM() of a bigint is numeric in PostgreSQL, an integer in SQLite: give the store's
        callers the int (or float) they get from SQLite, never a Decimal."""

        def load(self, data: Any) -> int | float:
            text = bytes(data).decode()
            return int(text) if text.lstrip("-").isdigit() else float(text)


class PgConnection:
    """A psycopg connection in autocommit mode (the store says BEGIN and COMMIT itself)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """A psycopg cursor: fetchone, fetchall, iteration and rowcount as sqlite3's."""
        text, numbered = postgresql_sql(sql)
        return self.raw.execute(text, _bound(params, numbered))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        text, numbered = postgresql_sql(sql)
        cursor = self.raw.cursor()
        cursor.executemany(text, [_bound(params, numbered) for params in rows])
        return cursor

    def execute_script(self, script: str) -> None:
        """A migration: several statements, no parameters, PostgreSQL's own spelling."""
        self.raw.execute(script.encode(), prepare=False)

    @property
    def in_transaction(self) -> bool:
        return bool(self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)

    @property
    def usable(self) -> bool:
        return not self.raw.closed and not self.raw.broken

    def close(self) -> None:
        self.raw.close()


_TCP_DEFAULTS = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                 "tcp_user_timeout": 30_000}


def connect(config: StoreConfig) -> PgConnection:
    _require_psycopg()
    assert config.url is not None
    # A server gone without closing its connections (a failover that leaves the old address dead)
    # must not hold a query for TCP's retries, some 15 minutes: keepalives and a user timeout,
    # unless the url says otherwise. (Unix sockets ignore them.)
    try:
        given = psycopg.conninfo.conninfo_to_dict(config.url)  # a url that does not parse: the except below
        options: dict[str, Any] = {key: value for key, value in _TCP_DEFAULTS.items() if key not in given}
        if "connect_timeout" not in given:  # (the url's own: a URL of several hosts gives up on each sooner)
            options["connect_timeout"] = max(1, round(config.busy_timeout_seconds))
        raw = psycopg.connect(
            config.url, autocommit=True, row_factory=_row_factory,
            application_name=application_name(),
            # The text psycopg reads and sends is UTF-8 whatever PGCLIENTENCODING or the url say:
            # SQL_ASCII reads every text as bytes, LATIN1 refuses a ☃ (as a database in them would).
            client_encoding="UTF8", **options,
        )
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to {describe(config)}: {first_line(exc)}") from None
    # The store's text is Unicode: a database of another encoding cannot keep it (LATIN1 refuses
    # a hostname's ☃ and the U+FFFD that stands for a NUL; on SQL_ASCII psycopg reads every text
    # as bytes, and the first read fails). Said before anything is created there.
    encoding = raw.info.parameter_status("server_encoding")
    if encoding is not None and encoding != "UTF8":
        raw.close()
        raise StoreUnavailable(
            f"{describe(config)} has the encoding {encoding}; ispd keeps Unicode text and needs a UTF8 database: "
            "create it with CREATE DATABASE ... OWNER ... ENCODING 'UTF8' TEMPLATE template0")
    raw.adapters.register_loader("numeric", _NumericLoader)
    # A str goes as text, not psycopg's default "unknown": SQLite's SQL tests parameters alone
    # (``?2 IS NOT NULL``), where PostgreSQL cannot tell the type of an unknown.
    raw.adapters.register_dumper(str, psycopg.types.string.StrDumper)
    try:
        # A writer waiting for another's turn (the advisory lock) or a row lock waits this long at most.
        raw.execute(f"SET lock_timeout = {max(1, round(config.busy_timeout_seconds * 1000))}")  # 0: no limit
    except psycopg.Error as exc:  # the server went away at once
        raw.close()
        raise StoreUnavailable(f"cannot connect to {describe(config)}: {first_line(exc)}") from None
    return PgConnection(raw)


def url_connect_seconds(config: StoreConfig) -> float | None:
    """How long a new connection may wait for the server by the url's own connect_timeout (per
    host of the url, as libpq tries each in turn); None when the url gives none (connect() asks
    for busy_timeout_seconds then) or no limit (0)."""
    if psycopg is None or config.url is None:
        return None
    try:
        given = psycopg.conninfo.conninfo_to_dict(config.url)
        timeout = float(str(given.get("connect_timeout") or 0))
    except (psycopg.Error, ValueError):
        return None
    if timeout <= 0:
        return None
    hosts = len(str(given.get("hostaddr") or given.get("host") or "").split(","))
    return max(2.0, timeout) * hosts  # (libpq takes 1 s as 2)


def application_name() -> str:
    """"ispd HOST pid N", as the daemon lock's refusal and a standby name the holder: within the
    63 bytes PostgreSQL keeps (it cuts the rest), a long host name shortened, never the PID."""
    tail = f" pid {os.getpid()}"
    host = socket.gethostname().encode("ascii", "replace")[:63 - len("ispd ") - len(tail)].decode()
    return f"ispd {host}{tail}"


def describe(config: StoreConfig) -> str:
    """The database as messages and logs name it: never its password."""
    if psycopg is None or config.url is None:
        return "the PostgreSQL store"
    try:
        parts = psycopg.conninfo.conninfo_to_dict(config.url)
    except psycopg.Error:
        return "the PostgreSQL store (its url does not parse)"
    where = parts.get("host") or "the local socket"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"the PostgreSQL store {parts.get('dbname') or parts.get('user') or ''} on {where}{port}".replace("  ", " ")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


_KEY_IN_DETAIL = re.compile(r"Key \(([^)]*)\)")


def translate(exc: BaseException, config: StoreConfig) -> BaseException:
    """A driver error as the store's: the same classes and wording as the SQLite backend's."""
    if isinstance(exc, StoreError):
        return exc
    if psycopg is None or not isinstance(exc, psycopg.Error):
        if isinstance(exc, OverflowError):
            return InvalidValue("a number is too large for the store")
        if isinstance(exc, UnicodeError):
            return InvalidValue("a text value is not valid Unicode")
        return exc
    errors = psycopg.errors
    diag = exc.diag
    if isinstance(exc, errors.UniqueViolation):
        key = _KEY_IN_DETAIL.search(diag.message_detail or "")
        return Conflict(f"already exists ({diag.table_name}.{key.group(1) if key else diag.constraint_name})")
    if isinstance(exc, errors.ForeignKeyViolation):
        return Conflict("still referenced by other records")
    if isinstance(exc, errors.CheckViolation):
        return Conflict("a value is out of range")
    if isinstance(exc, errors.IntegrityError):  # NOT NULL, and the schema's triggers' refusals
        return Conflict(diag.message_primary or first_line(exc))
    if isinstance(exc, errors.LockNotAvailable):
        return StoreUnavailable(
            f"the store stayed locked by another process for more than {config.busy_timeout_seconds:g} s")
    if isinstance(exc, errors.InsufficientPrivilege):
        # A database the role does not own (PostgreSQL 15 lets only the owner create in public).
        return StoreUnavailable(f"{first_line(exc)} in {describe(config)}: the role ispd connects as must own "
                                "the database (CREATE DATABASE ... OWNER ...) or be granted what it names")
    if isinstance(exc, errors.NumericValueOutOfRange):
        return InvalidValue("a number is too large for the store")
    if isinstance(exc, psycopg.DataError):  # a value of the wrong form for its column
        return InvalidValue(f"a value the store cannot keep: {first_line(exc)}")
    return StoreUnavailable(f"store error: {first_line(exc)}")


# --- migrations -------------------------------------------------------------------------------


def postgresql_migrations() -> list[Migration]:
    """The schema's first version at once, then each later migration."""
    return read_migrations("postgresql")


def schema_version(conn: PgConnection) -> int:
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])


_SCHEMA_MIGRATIONS = ("CREATE TABLE IF NOT EXISTS schema_migrations ("
                      " version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")


def apply_migration(conn: PgConnection, step: Migration, at: float) -> None:
    """One step, in the caller's transaction, under the migration lock the caller took."""
    conn.execute_script(step.sql)
    conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                 (step.version, step.name, at))


def lock_for_migrating(conn: PgConnection) -> None:
    """In the caller's transaction: one process migrates at a time; the table of versions exists."""
    conn.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
    conn.execute(_SCHEMA_MIGRATIONS)


def migrate(conn: PgConnection, migrations: list[Migration], now: Clock = time.time,
            starting: MigrationStarting | None = None) -> list[int]:
    """Bring the schema to the newest version, each step in its own transaction under the
    migration lock (two processes starting at once apply each step once); see sqlite.migrate."""
    newest = migrations[-1].version
    applied: list[int] = []
    if schema_version(conn) == newest:
        return applied
    while True:
        conn.execute("BEGIN")
        try:
            lock_for_migrating(conn)
            current = schema_version(conn)
            if current > newest:
                raise SchemaTooNew(f"the store is at schema version {current}, newer than this ispd knows "
                                   f"({newest}); upgrade ispd")
            if current == newest:
                conn.execute("COMMIT")
                return applied
            # A new store gets the first script, the whole schema of its version at once.
            step = migrations[0] if current == 0 else next(m for m in migrations if m.version == current + 1)
            if starting is not None:
                starting(step, newest)
            log.info("store.migration.started", version=step.version, name=step.name, target=newest)
            began = time.monotonic()
            apply_migration(conn, step, now())
            conn.execute("COMMIT")
            applied.append(step.version)
            log.info("store.migration.finished", version=step.version, name=step.name,
                     seconds=round(time.monotonic() - began, 3))
        except BaseException:
            if conn.usable and conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


# --- the store --------------------------------------------------------------------------------


class PostgreSQLConnector(Connector):
    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        _require_psycopg()
        self.errors = (psycopg.Error,)

    def connect(self) -> PgConnection:
        return connect(self.config)

    def still_there(self) -> None:
        """(A server's database has no file of ours to lose.)"""

    def usable(self, conn: PgConnection) -> bool:
        return conn.usable

    def begin_write(self, conn: PgConnection) -> None:
        # One round trip for both (no parameters: psycopg sends them as one simple query).
        conn.execute_script(f"BEGIN; SELECT pg_advisory_xact_lock({_WRITE_LOCK})")

    def begin_read(self, conn: PgConnection) -> None:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")

    def translate(self, exc: BaseException) -> BaseException:
        return translate(exc, self.config)

    def newest_schema(self) -> int:
        return postgresql_migrations()[-1].version

    def prepare(self, clock: Clock, starting: MigrationStarting | None) -> None:
        conn = connect(self.config)
        began = time.monotonic()
        try:
            applied = migrate(conn, postgresql_migrations(), now=clock, starting=starting)
        except psycopg.Error as exc:
            raise translate(exc, self.config) from None
        finally:
            conn.close()
        if applied:
            log.info("store.migrated", store=describe(self.config), versions=applied,
                     seconds=round(time.monotonic() - began, 3))

    def describe(self) -> str:
        return describe(self.config)


class PostgreSQLStore(SQLiteStore):
    """The SQLite backend's logic over a PostgreSQL connection (see the module's docstring)."""

    @staticmethod
    def _connector_for(config: StoreConfig) -> Connector:
        return PostgreSQLConnector(config)


# --- one daemon per store ---------------------------------------------------------------------


class PostgresDaemonLock:
    """``DaemonLock`` for a store on PostgreSQL: a session advisory lock, held on a connection of
    its own for the daemon's life. The server drops it when that connection ends, however the
    daemon ends; ``pg_stat_activity`` names the holder (host and PID) for the refusal's message.
    The file lock beside ``path`` is taken too: the daemon's local files are there."""

    def __init__(self, config: StoreConfig) -> None:
        from ispd.daemonlock import DaemonLock

        self.config = config
        self._file = DaemonLock(config.path)
        self._conn: PgConnection | None = None
        self._backend_pid: int | None = None  # the server session that holds the lock
        # keep() runs in a thread of the supervisor's while release() may run at shutdown: a lock
        # taken again after the release would outlive it.
        self._guard = threading.Lock()
        self._released = False
        # A standby's look at the lock, on a connection it keeps: when that connection too was
        # ended, every session was (a server restart, a backend's crash), the holder's with it.
        self._probe_conn: PgConnection | None = None
        self._probe_connections = 0
        # The store's schema version as the probe last saw it: one newer than this ispd knows
        # (the active daemon is newer, or migrated it since) is a store this one cannot take over.
        self._schema_seen: int | None = None
        self._newest_schema = postgresql_migrations()[-1].version

    def acquire(self) -> None:
        from ispd.daemonlock import DaemonLockError

        self._file.acquire()
        try:
            conn = self._connect_and_take()
        except BaseException:
            self._file.release()
            raise
        with self._guard:
            if not self._released:
                self._conn = conn
                self._close_probe()
                return
            # Released meanwhile: a TERM came while a standby's thread took the lock.
            conn.close()
            self._file.release()  # (under the guard: release() closes it too, once)
        raise DaemonLockError("the daemon is stopping: the lock was let go as soon as it was taken")

    def release(self) -> None:
        with self._guard:
            self._released = True
            if self._conn is not None:
                self._conn.close()  # the server drops the lock with the session
                self._conn = None
            self._close_probe()
            self._file.release()

    def _close_probe(self) -> None:
        if self._probe_conn is not None:
            self._probe_conn.close()
            self._probe_conn = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def previous_holder(self) -> int | None:
        """The file lock's (``DaemonLock.previous_holder``): a daemon on this host that was
        killed is found there as on SQLite."""
        return self._file.previous_holder

    def keep(self) -> bool:
        """Check that the lock's connection lives; after a server restart, take the lock again
        (True), or raise DaemonLockError (``in_use``: another daemon has it now; else the server
        could not be asked, and the caller asks again later). Nothing else: a driver's error
        would end the supervisor's keeper for good."""
        from ispd.daemonlock import DaemonLockError

        with self._guard:
            if self._released:
                return False
            conn = self._conn
            if conn is not None and conn.usable:
                try:
                    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                except psycopg.Error:
                    pass
                else:
                    if backend == self._backend_pid:
                        return False
                    # Another server session answered: the lock's may be gone (a pooler closed
                    # it) or be handed to another client, who holds it then. Stop rather than
                    # answer clients beside a second daemon.
                    raise DaemonLockError(_shared_session(self.config), in_use=True)
            if conn is not None:
                conn.close()
            self._conn = None
            self._conn = self._connect_and_take()
            return True

    def _connect_and_take(self) -> PgConnection:
        """A new connection holding the lock, or DaemonLockError (the server's errors included)."""
        from ispd.daemonlock import DaemonLockError

        try:
            conn = connect(self.config)
        except StoreUnavailable as exc:
            raise DaemonLockError(str(exc)) from None
        try:
            self._take(conn)
        except psycopg.Error as exc:  # the server went away again: the keeper tries again later
            conn.close()
            raise DaemonLockError(f"cannot take the daemon lock on {describe(self.config)}: {first_line(exc)}") \
                from None
        except BaseException:
            conn.close()
            raise
        return conn

    def probe(self) -> tuple[bool, str | None, str]:
        """Without taking it: whether the lock is held, by whom ("ispd HOST pid N", if it says),
        and the run of the server and of this probe's connection it was seen on. When that run
        changes, every session has ended since (a restart of the server, or a backend's crash,
        after which PostgreSQL ends them all), the holder's too, and its keeper takes the lock
        again within DAEMON_LOCK_CHECK_SECONDS. DaemonLockError when the server cannot be asked."""
        from ispd.daemonlock import DaemonLockError

        looked: list[Any] = []

        def look(conn: PgConnection) -> None:
            looked[:] = [*_holder(conn), conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()[0],
                         schema_version(conn)]

        # Only the probe's thread touches its connection; release() closes it, under the guard,
        # which is never held across a connect (release() runs on the event loop).
        conn = self._probe_conn
        try:
            # A connection whose session was ended (a restart, a crash) is replaced, once.
            live = PostgreSQLConnector(self.config).begun(conn if conn is not None else connect(self.config), look)
        except StoreUnavailable as exc:
            raise DaemonLockError(str(exc)) from None
        except psycopg.Error as exc:
            with self._guard:
                self._close_probe()
            raise DaemonLockError(f"cannot ask {describe(self.config)} about the daemon lock: {first_line(exc)}") \
                from None
        with self._guard:
            if live is not self._probe_conn:
                self._close_probe()
                if self._released:
                    live.close()
                    raise DaemonLockError("the daemon is stopping")
                self._probe_conn = live
                self._probe_connections += 1
        held, holder, started, self._schema_seen = looked
        return held, holder, f"{started}, probe connection {self._probe_connections}"

    def cannot_take_over(self) -> str | None:
        """Why this ispd could not serve the store if it took the lock now (its schema is newer
        than this ispd knows: the takeover would fail its start), as the last probe saw it."""
        newest = self._newest_schema
        if self._schema_seen is None or self._schema_seen <= newest:
            return None
        return (f"the store is at schema version {self._schema_seen}, newer than this ispd knows ({newest}); "
                "upgrade ispd")

    def _take(self, conn: PgConnection) -> None:
        from ispd.daemonlock import DaemonLockError

        backend, held_here = conn.execute(
            "SELECT pg_backend_pid(), EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND"
            " locktype = 'advisory' AND objsubid = 1 AND (classid::bigint << 32) + objid::bigint = ?)",
            (_DAEMON_LOCK,)).fetchone()
        if held_here:  # a new connection's session holds it already: another client's session
            raise DaemonLockError(_shared_session(self.config), in_use=True)
        if conn.execute(f"SELECT pg_try_advisory_lock({_DAEMON_LOCK})").fetchone()[0]:
            self._backend_pid = backend
            # The server's side of the lock's connection: a holder whose host vanished (no FIN, no
            # RST) must not keep the lock for the kernel's two idle hours, its standby waiting.
            conn.execute_script(_HOLDER_KEEPALIVES)
            return
        _, holder = _holder(conn)
        who = holder or "another ispd"
        raise DaemonLockError(
            f"another ispd ({who}) is running on {describe(self.config)}; stop it first: two daemons "
            "on one store would both answer every client", _pid_in(who), in_use=True, holder=holder)


def _shared_session(config: StoreConfig) -> str:
    """Why the daemon lock cannot be held through a pooler that shares server sessions: a session
    advisory lock stays with the session, which the pooler hands to other clients (a second
    daemon among them, which then holds it too) and closes when it likes."""
    return (f"the daemon lock needs a server session of its own on {describe(config)}, and this connection "
            "shares its session with other clients (a pooler such as PgBouncer in transaction or statement "
            "mode?): connect ispd to PostgreSQL directly, or through PgBouncer in session mode")


def _holder(conn: PgConnection) -> tuple[bool, str | None]:
    """Whether a session holds the daemon lock, and its application_name (None if it set none)."""
    row = conn.execute(
        "SELECT a.application_name FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database"
        " WHERE datname = current_database()) AND l.objsubid = 1 AND (l.classid::bigint << 32) + l.objid::bigint = ?",
        (_DAEMON_LOCK,)).fetchone()
    return row is not None, (row[0] or None) if row is not None else None


# About 25 s from the holder's last packet to the server's closing its session, freeing the lock
# (keepalive after 10 s idle, 3 probes 5 s apart; 25 s for data never acknowledged). Unix
# sockets ignore them.
_HOLDER_KEEPALIVES = ("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; "
                      "SET tcp_keepalives_count = 3; SET tcp_user_timeout = 25000")


def _pid_in(application_name: str) -> int | None:
    match = re.search(r"pid (\d+)$", application_name)
    return int(match.group(1)) if match else None
