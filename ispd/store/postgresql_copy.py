"""Moving a store from SQLite to PostgreSQL: every row of every table, in one transaction.

An operator who outgrows the embedded store (or wants it on the database server with the rest of
the ISP's data) stops the daemon, runs ``ispd store copy-to-postgresql URL``, points ``[store]``
at the database and starts again. The copy:

- reads one snapshot of the SQLite store, at the schema this ispd knows (an older one is refused
  with the hint to migrate it first: the copy never changes the source);
- creates the schema in the PostgreSQL database, which must be empty of ispd's tables;
- copies the tables in an order that satisfies their foreign keys, with COPY, their triggers off
  (the rows are history already counted: the usage triggers must not count them again, the
  append-only and ids-never-reused ones judge new writes, not a copy of old ones);
- sets each identity sequence past the highest id copied, so a new row never takes an old id;
- counts the rows on both sides before it commits; nothing is committed unless all of it is.

A SQLite INTEGER column may hold a REAL that PostgreSQL's BIGINT cannot: such a value is
rounded as PostgreSQL rounds it on an INSERT (half to even), which is what the live store
would have kept had it been on PostgreSQL from the start. Likewise a text with a NUL (a NAS's
User-Name ending in a C string's terminator, which SQLite keeps and PostgreSQL's text cannot)
gets U+FFFD for it, as the live PostgreSQL backend writes it; a BLOB in a text column is read as
UTF-8, U+FFFD for what is not.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import psycopg
except ImportError:  # connect() says what to install before any of it is used
    psycopg = None  # type: ignore[assignment]

from ispd.store.config import StoreConfig
from ispd.store.errors import Conflict, InvalidValue, StoreUnavailable
from ispd.store.postgresql import (
    apply_migration,
    connect,
    describe,
    first_line,
    lock_for_migrating,
    postgresql_migrations,
    schema_version,
    storable_text,
    translate,
)
from ispd.store.sqlite import sqlite_migrations

# Tables the copy leaves alone: the migration runner's own.
_NOT_COPIED = {"schema_migrations"}
_COPY_BATCH = 10_000


class CopyStopped(Exception):
    """The copy was asked to stop (Ctrl-C, a TERM): rolled back, the database left empty."""


@dataclass(frozen=True, slots=True)
class Copied:
    schema_version: int
    rows: dict[str, int]
    seconds: float


def _tables_in_dependency_order(source: sqlite3.Connection) -> list[str]:
    """Every table after the tables its foreign keys name."""
    names = [row[0] for row in source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    needs = {name: {row[2] for row in source.execute(f'PRAGMA foreign_key_list("{name}")')} - {name}
             for name in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [name for name in names if name not in ordered and needs[name] <= set(ordered)]
        if not ready:
            raise RuntimeError(f"foreign keys in a cycle among {sorted(set(names) - set(ordered))}")
        ordered.extend(ready)
    return [name for name in ordered if name not in _NOT_COPIED]


def _column_types(target: Any, table: str) -> dict[str, str]:
    return {row[0]: row[1] for row in target.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ?", (table,))}


def _as_integer(value: Any) -> Any:
    return round(value) if value.__class__ is float else value


def _as_text(value: Any) -> Any:
    if value.__class__ is bytes:
        value = value.decode("utf-8", "replace")
    return storable_text(value) if value.__class__ is str else value


_CONVERSIONS = {"bigint": _as_integer, "integer": _as_integer, "smallint": _as_integer, "text": _as_text}


def copy_to_postgresql(source_path: Path, target: StoreConfig,
                       progress: Callable[[str, int], None] | None = None,
                       stop: threading.Event | None = None) -> Copied:
    """Copy the SQLite store at ``source_path`` into the empty PostgreSQL database of ``target``;
    ``stop`` set: CopyStopped before the commit, nothing kept."""
    began = time.monotonic()
    newest = sqlite_migrations()[-1].version
    if not source_path.exists():
        raise StoreUnavailable(f"there is no SQLite store at {source_path}")
    source = sqlite3.connect(source_path, isolation_level=None)
    try:
        source.execute("BEGIN")  # one snapshot of everything
        version = source.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        if version != newest:
            raise Conflict(f"the store at {source_path} is at schema {version}, this ispd copies schema {newest}: "
                           + ("run `ispd store migrate` first" if version < newest else "upgrade ispd"))
        tables = _tables_in_dependency_order(source)
        conn = connect(target)
        try:
            rows = _copy_tables(source, conn, tables, target, progress, stop or threading.Event())
        except Exception as exc:
            raise translate(exc, target) from None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot read the store at {source_path}: {exc}") from None
    finally:
        source.close()
    return Copied(version, rows, time.monotonic() - began)


def _copy_tables(source: sqlite3.Connection, conn: Any, tables: list[str], target: StoreConfig,
                 progress: Callable[[str, int], None] | None, stop: threading.Event) -> dict[str, int]:
    """The schema and the rows in one transaction: a copy that fails leaves the database empty."""
    rows: dict[str, int] = {}
    raw = conn.raw
    conn.execute("BEGIN")
    try:
        lock_for_migrating(conn)
        if schema_version(conn) != 0:
            raise Conflict(f"{describe(target)} already holds an ispd store; copy into an empty database")
        for step in postgresql_migrations():
            apply_migration(conn, step, time.time())
        for table in tables:
            columns = [row[1] for row in source.execute(f'PRAGMA table_info("{table}")')]
            types = _column_types(conn, table)
            convert = [_CONVERSIONS.get(types.get(column, "")) for column in columns]
            quoted = ", ".join(f'"{column}"' for column in columns)
            conn.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER USER')
            if table in ("subscriber_ids", "reservation_ids"):  # the one row the schema seeded
                conn.execute(f'DELETE FROM "{table}"')
            count = 0
            cursor = source.execute(f'SELECT {quoted} FROM "{table}"')
            try:
                with raw.cursor().copy(f'COPY "{table}" ({quoted}) FROM STDIN') as copy:
                    while batch := cursor.fetchmany(_COPY_BATCH):
                        if stop.is_set():
                            raise CopyStopped
                        for row in batch:
                            copy.write_row([value if fix is None or value is None else fix(value)
                                            for value, fix in zip(row, convert, strict=True)])
                        count += len(batch)
            except (psycopg.DataError, psycopg.IntegrityError, OverflowError) as exc:
                # Which table, row and column: the operator looks at that row in the SQLite store.
                context = (getattr(getattr(exc, "diag", None), "context", None) or "").strip().splitlines()
                raise InvalidValue(f"{table}: a row PostgreSQL refuses: {first_line(exc)}"
                                   + (f" ({context[0]})" if context else "")) from None
            conn.execute(f'ALTER TABLE "{table}" ENABLE TRIGGER USER')
            copied = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            if copied != count:
                raise RuntimeError(f"{table}: {count} rows read, {copied} written")
            rows[table] = count
            if progress is not None:
                progress(table, count)
        # An identity goes on after the highest id copied, or after the highest SQLite ever gave
        # (AUTOINCREMENT's sqlite_sequence: audit_log's, whose newest rows retention may have
        # removed). setval's false: the next value is the one given.
        given = dict(source.execute("SELECT name, seq FROM sqlite_sequence").fetchall())
        for table, column in conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND is_identity = 'YES'").fetchall():
            conn.execute(f"SELECT setval(pg_get_serial_sequence(?, ?), GREATEST(COALESCE((SELECT MAX(\"{column}\")"
                         f" FROM \"{table}\"), 0), ?) + 1, false)", (table, column, int(given.get(table, 0))))
        if stop.is_set():
            raise CopyStopped
        conn.execute("COMMIT")
    except BaseException:
        if conn.usable and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return rows
