"""The PostgreSQL baseline (migrations/postgresql/0017_schema.sql) is the SQLite schema at version 17,
and each later migration keeps the two alike.

The same Python SQL runs on both stores, so the tables, their columns in order, what may be NULL
and the indexes must be the same, and the triggers that guard history and ids must refuse what
SQLite's refuse, with the same words (the store turns them into the errors a person reads).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from ispd.store.postgresql import postgresql_migrations
from ispd.store.sqlite import migrate, sqlite_migrations

psycopg = pytest.importorskip("psycopg")

SQLITE_TYPES = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text", "BLOB": "bytea"}


@pytest.fixture
def sqlite_store() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, sqlite_migrations())
    yield conn
    conn.close()


@pytest.fixture
def postgresql_store(postgres_url: str) -> Iterator[Any]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for step in postgresql_migrations():  # the baseline, then the later ones
            with conn.transaction():  # as the migration runner applies it: one script, one transaction
                conn.execute(step.sql)
        yield conn


def sqlite_columns(conn: sqlite3.Connection) -> dict[str, list[tuple[str, str, bool]]]:
    """Each table's columns in order: name, type, NOT NULL. A primary key column counts as NOT
    NULL (PostgreSQL makes it so; SQLite's INTEGER PRIMARY KEY is, and no store code writes a
    NULL key into the others)."""
    tables = [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name != 'schema_migrations'")]
    return {table: [(name, SQLITE_TYPES[kind], bool(notnull or pk))
                    for _, name, kind, notnull, _, pk in conn.execute(f"PRAGMA table_info({table})")]
            for table in tables}


def postgresql_columns(conn: Any) -> dict[str, list[tuple[str, str, bool]]]:
    columns: dict[str, list[tuple[str, str, bool]]] = {}
    for table, name, kind, nullable in conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"):
        columns.setdefault(table, []).append((name, kind, nullable == "NO"))
    return columns


def test_tables_columns_and_indexes_are_sqlites(sqlite_store: sqlite3.Connection, postgresql_store: Any) -> None:
    assert postgresql_columns(postgresql_store) == sqlite_columns(sqlite_store)
    # The named indexes (those of UNIQUE and PRIMARY KEY are the constraints' own in both).
    sqlite_indexes = {(name, table) for name, table in sqlite_store.execute(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    postgresql_indexes = {(name, table) for name, table in postgresql_store.execute(
        "SELECT indexname, tablename FROM pg_indexes i WHERE schemaname = 'public' AND NOT EXISTS"
        " (SELECT 1 FROM pg_constraint c WHERE c.conindid = format('%I', i.indexname)::regclass)")}
    assert postgresql_indexes == sqlite_indexes
    sqlite_triggers = {(name, table) for name, table in sqlite_store.execute(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger'")}
    postgresql_triggers = {(name, table) for name, table in postgresql_store.execute(
        "SELECT tgname, tgrelid::regclass::text FROM pg_trigger WHERE NOT tgisinternal")}
    assert postgresql_triggers == sqlite_triggers


def refusal(sqlite_store: sqlite3.Connection, postgresql_store: Any, statement: str) -> str:
    """The statement is refused by both stores, as an integrity error with the same text: returns it."""
    with pytest.raises(sqlite3.IntegrityError) as on_sqlite:
        sqlite_store.execute(statement)
    with pytest.raises(psycopg.IntegrityError) as on_postgresql, postgresql_store.transaction():
        postgresql_store.execute(statement)
    assert on_postgresql.value.diag.message_primary == str(on_sqlite.value)
    return str(on_sqlite.value)


def on_both(sqlite_store: sqlite3.Connection, postgresql_store: Any, statement: str) -> None:
    sqlite_store.execute(statement)
    postgresql_store.execute(statement)


def test_history_is_append_only(sqlite_store: sqlite3.Connection, postgresql_store: Any) -> None:
    for statement in (
            "INSERT INTO lease_history (at, event, address, starts_at, expires_at)"
            " VALUES (1, 'granted', '192.0.2.1', 1, 2)",
            "INSERT INTO accounting_records (at, nas_address, status_type, outcome) VALUES (1, '192.0.2.9', 'start', 'ok')",
            "INSERT INTO audit_log (at, actor, action, subject_kind) VALUES (1, 'admin', 'plan.added', 'plan')",
            "INSERT INTO dhcp6_lease_history (at, event, prefix, kind, state, duid, iaid, starts_at, preferred_until,"
            " expires_at, length, net_hi, net_lo) VALUES (1, 'granted', '2001:db8::1/128', 'na', 'bound', '00:01', 1,"
            " 1, 2, 3, 128, 0, 1)"):
        on_both(sqlite_store, postgresql_store, statement)
    for table in ("lease_history", "accounting_records", "audit_log", "dhcp6_lease_history"):
        assert refusal(sqlite_store, postgresql_store, f"UPDATE {table} SET at = 5") == f"{table} is append-only"
        # Retention deletes whole rows.
        on_both(sqlite_store, postgresql_store, f"DELETE FROM {table}")


# The store's own inserts (sqlite.py add_subscriber, add_reservation): the id after the highest given.
ADD_SUBSCRIBER = ("INSERT INTO subscribers (id, username, created_at, updated_at)"
                  " VALUES ((SELECT highest + 1 FROM subscriber_ids), '{}', 1, 1)")
ADD_RESERVATION = ("INSERT INTO reservations (id, subscriber_id, kind, key, created_at)"
                   " VALUES ((SELECT highest + 1 FROM reservation_ids), 1, 'mac', '{}', 1)")


def test_subscriber_and_reservation_ids_are_never_reused(
        sqlite_store: sqlite3.Connection, postgresql_store: Any) -> None:
    for username in ("alice", "bob"):
        on_both(sqlite_store, postgresql_store, ADD_SUBSCRIBER.format(username))
    for key in ("02:00:00:00:00:01", "02:00:00:00:00:02"):
        on_both(sqlite_store, postgresql_store, ADD_RESERVATION.format(key))
    on_both(sqlite_store, postgresql_store, "DELETE FROM reservations WHERE id = 2")
    on_both(sqlite_store, postgresql_store, "DELETE FROM subscribers WHERE id = 2")

    subscriber_refused = "subscriber ids are never reused: insert with the id after subscriber_ids.highest"
    assert refusal(sqlite_store, postgresql_store, "INSERT INTO subscribers (id, username, created_at, updated_at)"
                   " VALUES (2, 'carol', 1, 1)") == subscriber_refused
    assert refusal(sqlite_store, postgresql_store, "INSERT INTO subscribers (username, created_at, updated_at)"
                   " VALUES ('carol', 1, 1)") == subscriber_refused
    reservation_refused = "reservation ids are never reused: insert with the id after reservation_ids.highest"
    assert refusal(sqlite_store, postgresql_store, "INSERT INTO reservations (id, subscriber_id, kind, key, created_at)"
                   " VALUES (2, 1, 'mac', '02:00:00:00:00:03', 1)") == reservation_refused
    assert refusal(sqlite_store, postgresql_store, "INSERT INTO reservations (subscriber_id, kind, key, created_at)"
                   " VALUES (1, 'mac', '02:00:00:00:00:03', 1)") == reservation_refused

    on_both(sqlite_store, postgresql_store, ADD_SUBSCRIBER.format("carol"))
    on_both(sqlite_store, postgresql_store, ADD_RESERVATION.format("02:00:00:00:00:03"))
    for query in ("SELECT id, username FROM subscribers ORDER BY id", "SELECT id, key FROM reservations ORDER BY id",
                  "SELECT highest FROM subscriber_ids", "SELECT highest FROM reservation_ids"):
        assert postgresql_store.execute(query).fetchall() == sqlite_store.execute(query).fetchall()
    assert sqlite_store.execute("SELECT id FROM subscribers WHERE username = 'carol'").fetchone() == (3,)


def test_usage_triggers_count_growth_by_utc_day_as_sqlite(
        sqlite_store: sqlite3.Connection, postgresql_store: Any) -> None:
    # updated_at is REAL: SQLite divides as floats and its CAST truncates toward zero (-0.5 s is
    # day 0, -86400.5 s day -1), which the PostgreSQL triggers must do too.
    insert = ("INSERT INTO radius_sessions (nas_address, acct_session_id, username, subscriber_id, started_at,"
              " updated_at, input_octets, output_octets, session_time_seconds) VALUES ('192.0.2.9', '{}', 'u', {}, 0,"
              " {}, {}, 20, 30)")
    for session, subscriber, updated_at, octets in (("a", 1, 86399.9, 10), ("b", 1, 86400.0, 0), ("c", 3, -0.5, 5),
                                                    ("d", 3, -86400.5, 7), ("e", "NULL", 5, 7)):
        on_both(sqlite_store, postgresql_store, insert.format(session, subscriber, updated_at, octets))
    on_both(sqlite_store, postgresql_store,
            "UPDATE radius_sessions SET input_octets = input_octets + 100, updated_at = 172800.25 WHERE acct_session_id = 'a'")
    on_both(sqlite_store, postgresql_store,  # counters that fall add nothing; one that grows adds its growth
            "UPDATE radius_sessions SET input_octets = input_octets - 1, output_octets = output_octets + 1")
    on_both(sqlite_store, postgresql_store, "UPDATE radius_sessions SET updated_at = 1800000000")
    query = "SELECT * FROM usage_daily ORDER BY subscriber_id, day"
    assert postgresql_store.execute(query).fetchall() == sqlite_store.execute(query).fetchall()
    assert sqlite_store.execute("SELECT day FROM usage_daily WHERE subscriber_id = 3 ORDER BY day").fetchall() == [
        (-1,), (0,)]
