from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ispd.store import SchemaTooNew, StoreConfig, open_store
from ispd.store.models import ReservationKind
from ispd.store.sqlite import Migration, connect, migrate, schema_version, sqlite_migrations

MIGRATIONS = sqlite_migrations()


def schema_of(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    )
    return [(r[0], r[1], r[2]) for r in rows]


def fresh_schema(tmp_path: Path) -> list[tuple[str, str, str]]:
    conn = connect(tmp_path / "fresh.db", 5)
    migrate(conn, MIGRATIONS)
    return schema_of(conn)


def test_migrations_are_numbered_without_gaps() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def test_from_empty_reaches_the_newest_version(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.db", 5)
    assert migrate(conn, MIGRATIONS) == [m.version for m in MIGRATIONS]
    assert schema_version(conn) == MIGRATIONS[-1].version
    assert migrate(conn, MIGRATIONS) == []  # idempotent


@pytest.mark.parametrize("start", range(len(MIGRATIONS) + 1))
def test_from_every_earlier_version(tmp_path: Path, start: int) -> None:
    """A store left at any earlier version reaches the same schema as a fresh one, and the
    rows written at that version survive."""
    conn = connect(tmp_path / "old.db", 5)
    migrate(conn, MIGRATIONS, target=start)
    assert schema_version(conn) == start
    if start >= 1:
        conn.execute("INSERT INTO plans (name, created_at) VALUES ('legacy', 1)")
        conn.execute("INSERT INTO subscribers (id, username, plan_id, created_at, updated_at) VALUES (1, 'old', 1, 1, 1)")
    applied = migrate(conn, MIGRATIONS)
    assert applied == [m.version for m in MIGRATIONS[start:]]
    assert schema_of(conn) == fresh_schema(tmp_path)
    if start >= 1:
        assert conn.execute("SELECT username FROM subscribers").fetchall()[0][0] == "old"


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    conn = connect(tmp_path / "b.db", 5)
    broken = [*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "broken", "CREATE TABLE t (x);\nNOT SQL;\n")]
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken)
    assert schema_version(conn) == len(MIGRATIONS)
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 't'").fetchone()


def test_statement_splitting_keeps_triggers_whole() -> None:
    sql = "CREATE TABLE a (x);\nCREATE TRIGGER t AFTER INSERT ON a BEGIN\n  SELECT 1;\n  SELECT 2;\nEND;\n-- end\n"
    assert len(list(Migration(1, "t", sql).statements())) == 2


async def test_a_store_newer_than_this_ispd_is_refused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "new.db", 5)
    migrate(conn, MIGRATIONS)
    conn.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade ispd"):
        await open_store(StoreConfig(path=tmp_path / "new.db"))


async def test_ids_of_subscribers_deleted_before_the_upgrade_are_not_given_again(tmp_path: Path) -> None:
    """A store from before migration 10: the newest subscribers are gone, and only their
    sessions, usage or the audit log still name them; the next subscriber comes after all."""
    path = tmp_path / "old.db"
    conn = connect(path, 5)
    migrate(conn, MIGRATIONS, target=9)
    conn.execute("INSERT INTO subscribers (id, username, created_at, updated_at) VALUES (1, 'alice', 1, 1)")
    conn.execute("INSERT INTO usage_daily (subscriber_id, day, input_octets, output_octets, session_seconds)"
                 " VALUES (3, 1, 1000, 1000, 10)")
    conn.execute("INSERT INTO audit_log (at, actor, action, subject_kind, subject_id, subject_name)"
                 " VALUES (1, 't', 'subscriber.deleted', 'subscriber', 4, 'dave')")
    conn.execute("INSERT INTO audit_log (at, actor, action, subject_kind, subject_id, subject_name)"
                 " VALUES (1, 't', 'plan.added', 'plan', 9, 'home')")  # a plan's id is not a subscriber's
    conn.commit()
    conn.close()
    store = await open_store(StoreConfig(path=path))
    try:
        assert (await store.add_subscriber("newguy", actor="t")).id == 5
        assert (await store.get_subscriber("alice")).id == 1  # the rows already there keep theirs
    finally:
        await store.close()
    raw = connect(path, 5)
    with pytest.raises(sqlite3.IntegrityError, match="never reused"):  # whoever inserts
        raw.execute("INSERT INTO subscribers (username, created_at, updated_at) VALUES ('raw', 1, 1)")


async def test_numbers_of_reservations_deleted_before_the_upgrade_are_not_given_again(tmp_path: Path) -> None:
    """A store from before migration 17: reservation #3, the newest, was deleted (only the audit
    log names it), and SQLite would give its number to the next one added, another subscriber's
    maybe, which a script or RADIUS holding #3 would then change or delete."""
    path = tmp_path / "old.db"
    conn = connect(path, 5)
    migrate(conn, MIGRATIONS, target=16)
    conn.execute("INSERT INTO subscriber_ids (singleton, highest) VALUES (1, 0) ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO subscribers (id, username, created_at, updated_at) VALUES (1, 'alice', 1, 1)")
    conn.execute("INSERT INTO reservations (id, subscriber_id, kind, key, created_at) VALUES (2, 1, 'mac', 'm', 1)")
    conn.execute("INSERT INTO audit_log (at, actor, action, subject_kind, subject_id, subject_name, details)"
                 " VALUES (1, 't', 'reservation.deleted', 'subscriber', 1, 'alice', '{\"reservation_id\": 3}')")
    conn.commit()
    conn.close()
    store = await open_store(StoreConfig(path=path))
    try:
        added = await store.add_reservation("alice", ReservationKind.USERNAME, "alice@pppoe", actor="t")
        assert added.id == 4
        await store.delete_reservation(added.id, actor="t")
        assert (await store.add_reservation("alice", ReservationKind.USERNAME, "alice@pppoe", actor="t")).id == 5
    finally:
        await store.close()
    raw = connect(path, 5)
    with pytest.raises(sqlite3.IntegrityError, match="never reused"):  # whoever inserts
        raw.execute("INSERT INTO reservations (subscriber_id, kind, key, created_at) VALUES (1, 'mac', 'n', 1)")


async def test_sessions_kept_before_the_ipv6_index_are_indexed_by_the_upgrade(tmp_path: Path) -> None:
    """A store from before migration 12: its sessions' IPv6 texts, in whatever form the NAS or an
    importer wrote them, are read into networks by the migration, and ``who`` finds them."""
    path = tmp_path / "old.db"
    conn = connect(path, 5)
    migrate(conn, MIGRATIONS, target=11)
    sessions = [  # framed prefix, delegated prefix, framed address
        ("2001:0DB8:FFFF:0001:0000:0000:0000:0000/64", "2001:db8:1:0:ff::/48", None),
        (None, " 2001:db8:2:100::/56 ", "2001:DB8:FFFF:2::0009"),
        ("not-a-prefix", "198.18.0.0/24", "2001:db8::/129"),  # answer nothing, as before
        (None, None, None),  # IPv4 only
        ("::/0", None, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")]
    conn.executemany(
        "INSERT INTO radius_sessions (nas_address, acct_session_id, username, started_at, updated_at,"
        " framed_ipv6_prefix, delegated_ipv6_prefix, framed_ipv6_address) VALUES ('198.18.0.1', ?, 'u', 1, 1, ?, ?, ?)",
        [(f"s{i}", *texts) for i, texts in enumerate(sessions, 1)])
    conn.commit()
    conn.close()
    store = await open_store(StoreConfig(path=path))
    try:
        async def held(question: str) -> list[tuple[str | None, str | None, str | None]]:
            return [(h.acct_session_id, h.prefix, h.prefix_kind) for h in await store.who(question, since=1, until=1)]

        # (s5's ::/0 is indexed as well, and names nobody: ipv6_networks.SHORTEST.)
        assert await held("2001:db8:1:2::5") == [("s1", "2001:db8:1::/48", "delegated")]
        assert await held("2001:db8:ffff::/48") == [
            ("s1", "2001:db8:ffff:1::/64", "framed"), ("s2", "2001:db8:ffff:2::9", "framed-address")]
        assert await held("2001:db8:2:1ff::/64") == [("s2", "2001:db8:2:100::/56", "delegated")]
        assert await held("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == [
            ("s5", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "framed-address")]
    finally:
        await store.close()
    raw = connect(path, 5)
    try:
        assert [(r[0], r[1], r[2]) for r in raw.execute(
            "SELECT session_id, kind, length FROM radius_session_ipv6 ORDER BY session_id, kind")] == [
            (1, "delegated", 48), (1, "framed", 64), (2, "delegated", 56), (2, "framed-address", 128),
            (5, "framed", 0), (5, "framed-address", 128)]
    finally:
        raw.close()


def test_a_day_s_usage_left_past_the_most_is_held_at_it_by_the_upgrade(tmp_path: Path) -> None:
    """Before migration 20 a day's usage that overflowed became a REAL (2^63): it is the most an
    INTEGER holds again, so its sums and a copy to PostgreSQL (BIGINT) take it."""
    conn = connect(tmp_path / "old.db", 5)
    migrate(conn, MIGRATIONS, target=19)
    conn.execute("INSERT INTO usage_daily (subscriber_id, day, input_octets, output_octets, session_seconds)"
                 " VALUES (1, 20000, 9223372036854775807, 5, 60)")
    conn.execute("UPDATE usage_daily SET input_octets = input_octets + 1")
    assert conn.execute("SELECT typeof(input_octets) FROM usage_daily").fetchone()[0] == "real"
    migrate(conn, MIGRATIONS)
    assert tuple(conn.execute("SELECT input_octets, typeof(input_octets), output_octets FROM usage_daily")
                 .fetchone()) == ((1 << 63) - 1, "integer", 5)
