"""The PostgreSQL backend's connection: SQLite's SQL as PostgreSQL reads it, and its settings."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ispd.store import open_store
from ispd.store.config import StoreConfig
from ispd.store.postgresql import postgresql_sql
from tests.store.conftest import query


async def test_a_busy_timeout_below_a_millisecond_still_bounds_the_wait(postgres_url: str, tmp_path: Path) -> None:
    """lock_timeout is whole milliseconds, and 0 is no limit at all: a writer would wait for
    another's turn forever where the operator asked for the shortest wait."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db", backend="postgresql", url=postgres_url,
                                         busy_timeout_seconds=0.0004))
    try:
        assert await query(store, "SHOW lock_timeout") == [("1ms",)]
    finally:
        await store.close()


def test_placeholders_are_numbered_as_sqlite_numbers_them() -> None:
    assert postgresql_sql("SELECT ?, ?") == ("SELECT %s, %s", False)
    assert postgresql_sql("SELECT ?1, ?2, ?1") == ("SELECT %(p1)s, %(p2)s, %(p1)s", True)
    # A bare ? after ?N is the one after the highest so far, as in SQLite.
    assert postgresql_sql("SELECT ?2, ?, ?1") == ("SELECT %(p2)s, %(p3)s, %(p1)s", True)
    assert postgresql_sql("SELECT ?, ?1") == ("SELECT %(p1)s, %(p1)s", True)


def test_quotes_and_comments_hold_no_placeholders() -> None:
    assert postgresql_sql("SELECT '?', \"a?\" FROM t WHERE x LIKE '5%' AND y = ?") == (
        "SELECT '?', \"a?\" FROM t WHERE x LIKE '5%%' AND y = %s", False)
    assert postgresql_sql("SELECT 'it''s ?', ?") == ("SELECT 'it''s ?', %s", False)
    # A comment's apostrophe opens no string, its ? is no placeholder, its % is psycopg's %%.
    assert postgresql_sql("SELECT a -- isn't it? 100%\n FROM t WHERE b = ?") == (
        "SELECT a -- isn't it? 100%%\n FROM t WHERE b = %s", False)
    assert postgresql_sql("SELECT /* why? */ a FROM t WHERE b = ? -- last?") == (
        "SELECT /* why? */ a FROM t WHERE b = %s -- last?", False)


def test_the_scalar_max_and_min_only() -> None:
    assert postgresql_sql("SELECT MAX(MAX(a, b), c), MIN(x), max_sessions FROM t") == (
        "SELECT GREATEST(GREATEST(a, b), c), MIN(x), max_sessions FROM t", False)
    assert postgresql_sql("UPDATE t SET n = MAX(n, COALESCE(?1, 0))") == (
        "UPDATE t SET n = GREATEST(n, COALESCE(%(p1)s, 0))", True)


def test_a_dead_server_is_given_up_on_by_tcp_unless_the_url_says_otherwise(postgres_url: str) -> None:
    """Keepalives and a TCP user timeout: a query to a server gone without closing its
    connections must not wait for TCP's retries (some 15 minutes). The url's own win."""
    from ispd.store.postgresql import connect

    conn = connect(StoreConfig(backend="postgresql", url=postgres_url))
    try:
        parameters = conn.raw.info.get_parameters()
        assert (parameters["keepalives_idle"], parameters["tcp_user_timeout"]) == ("10", "30000")
    finally:
        conn.close()
    conn = connect(StoreConfig(backend="postgresql", url=f"{postgres_url}&tcp_user_timeout=5000"))
    try:
        assert conn.raw.info.get_parameters()["tcp_user_timeout"] == "5000"
    finally:
        conn.close()


def test_the_urls_connect_timeout_wins_over_busy_timeout(postgres_url: str) -> None:
    """connect_timeout=busy_timeout_seconds overrode the url's own: an operator's
    ``connect_timeout=2`` (a URL of two hosts, giving up on a dead primary sooner) waited 10 s
    per host. busy_timeout_seconds is the default only."""
    from ispd.store.postgresql import connect

    for url, expected in ((postgres_url, "10"), (f"{postgres_url}&connect_timeout=2", "2")):
        conn = connect(StoreConfig(backend="postgresql", url=url))
        try:
            assert conn.raw.info.get_parameters()["connect_timeout"] == expected
        finally:
            conn.close()


def test_a_url_that_does_not_parse_is_the_store_unavailable_not_a_driver_error() -> None:
    """``ispd run`` and every admin command say why (the url), not "unexpected error: ProgrammingError"."""
    from ispd.store.errors import StoreUnavailable
    from ispd.store.postgresql import connect

    with pytest.raises(StoreUnavailable, match=r"its url does not parse.*IPv6 host address"):
        # as a config made before this check was (check-config refuses such a url now)
        connect(StoreConfig.model_construct(backend="postgresql", url="postgresql://[bad", busy_timeout_seconds=10.0))


def test_check_config_refuses_a_url_that_does_not_parse(tmp_path: Path) -> None:
    from ispd.cli import main

    config = tmp_path / "ispd.toml"
    config.write_text(f'[store]\nbackend = "postgresql"\nurl = "postgresql://[bad"\npath = "{tmp_path / "ispd.db"}"\n')
    assert main(["check-config", "-c", str(config)]) != 0
    config.write_text(f'[store]\nbackend = "postgresql"\nurl = "host=/run/postgresql dbname=ispd"\n'
                      f'path = "{tmp_path / "ispd.db"}"\n')
    assert main(["check-config", "-c", str(config)]) == 0


def test_both_backends_know_the_same_newest_schema() -> None:
    """A migration added to one folder and not the other would leave one backend behind (and
    `ispd store migrate` names the newest from SQLite's)."""
    from ispd.store.postgresql import postgresql_migrations
    from ispd.store.sqlite import sqlite_migrations

    assert postgresql_migrations()[-1].version == sqlite_migrations()[-1].version


async def test_the_health_checks_write_is_a_write_on_postgresql_too(postgres_url: str, tmp_path: Path) -> None:
    """check_writes rewrites a row (an empty transaction writes no WAL, so commits on a server
    that can write nothing); on PostgreSQL that statement runs too, and a working store says so."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db", backend="postgresql", url=postgres_url))
    try:
        store._writer.failing = "connection refused"  # as an outage left it
        await store.check_writes()
        assert store.commits_failing() is None
    finally:
        await store.close()


async def test_a_server_that_goes_away_mid_batch_fails_it_saying_so(postgres_url: str, tmp_path: Path) -> None:
    """The server's connection ended under a job (a restart, an administrator): the writer's
    ROLLBACK (or ROLLBACK TO its savepoint) then failed on the closed connection, and callers,
    the log and /healthz said "the connection is closed" rather than why it closed."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db", backend="postgresql", url=postgres_url))
    try:
        for size in (1, 2):  # a job alone, and one of a batch
            busy = asyncio.ensure_future(store._write("busy", lambda c: time.sleep(0.3)))  # the next ones wait
            await asyncio.sleep(0.1)
            jobs = [store._write("kill", lambda c: c.execute("SELECT pg_terminate_backend(pg_backend_pid())"))]
            jobs += [store._write("small", lambda c: c.execute("UPDATE subscriber_ids SET highest = highest"))
                     for _ in range(size - 1)]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            await busy
            assert all("terminating connection due to administrator command" in str(r) for r in results), results
            assert "terminating connection" in (store.commits_failing() or "")
        await store.add_subscriber("alice", actor="t")  # a new connection
        assert store.commits_failing() is None
    finally:
        await store.close()


@pytest.mark.parametrize("encoding", ["SQL_ASCII", "LATIN1"])
async def test_a_database_not_in_utf8_is_refused_before_anything_is_created(
        postgres_cluster: Any, tmp_path: Path, encoding: str) -> None:
    """On SQL_ASCII psycopg read every text as bytes: the store was created, then its first read
    failed with a ValueError (b'verifier' is not a valid CredentialPolicy); on LATIN1 a plan named
    "Grün ☃" was refused as "a text value is not valid Unicode". Refused at the start, saying why."""
    import psycopg

    from ispd.store.errors import StoreUnavailable

    name = f"enc_{encoding.lower()}_{os.getpid()}"
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    try:
        with pytest.raises(StoreUnavailable, match=f"has the encoding {encoding}; .* needs a UTF8 database"):
            await open_store(StoreConfig(path=tmp_path / "ispd.db", backend="postgresql",
                                         url=postgres_cluster.url(name)))
        with psycopg.connect(postgres_cluster.url(name)) as conn:  # nothing was created there
            assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone()[0] is None
    finally:
        postgres_cluster.drop_database(name)


async def test_a_read_cut_by_the_server_says_why(postgres_url: str, tmp_path: Path) -> None:
    """The reader's COMMIT after a read whose connection the server ended failed in its turn,
    and the caller (and /healthz, whose ping is a read) was told "the connection is closed",
    not why it closed. The next read opens a new connection."""
    from ispd.store.errors import StoreUnavailable

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db", backend="postgresql", url=postgres_url))
    try:
        with pytest.raises(StoreUnavailable, match="terminating connection due to administrator command"):
            await store._read("kill", lambda c: c.execute(  # type: ignore[attr-defined]
                "SELECT pg_terminate_backend(pg_backend_pid())").fetchall())
        assert await query(store, "SELECT 1") == [(1,)]
    finally:
        await store.close()


async def test_a_role_that_may_not_create_the_tables_is_told_what_to_do(
        postgres_cluster: Any, tmp_path: Path) -> None:
    """A database the role does not own (PostgreSQL 15: no CREATE on public for others) failed
    the start with "store error: permission denied for schema public": which database, and what
    to change, unsaid."""
    import psycopg

    from ispd.store.errors import StoreUnavailable

    name, role = f"notowned_{os.getpid()}", f"ispd_notowner_{os.getpid()}"
    with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"CREATE DATABASE {name}")
    try:
        url = postgres_cluster.url(name).replace("postgres@", f"{role}@", 1)
        with pytest.raises(StoreUnavailable, match=rf"permission denied for schema public in the PostgreSQL store "
                                                   rf"{name} on .*: the role ispd connects as must own the database"):
            await open_store(StoreConfig(path=tmp_path / "ispd.db", backend="postgresql", url=url))
    finally:
        postgres_cluster.drop_database(name)
        with psycopg.connect(postgres_cluster.url(), autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize("client_encoding", ["SQL_ASCII", "LATIN1"])
async def test_a_client_encoding_from_the_environment_is_no_other_encoding_for_the_store(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_encoding: str) -> None:
    """d97ffdc refused a database not in UTF8, but psycopg decodes by the client_encoding, which
    libpq takes from PGCLIENTENCODING (a legacy host's profile, a unit's Environment=): on a
    UTF8 database it gave the same failures (SQL_ASCII: every text read as bytes, "b'verifier'
    is not a valid CredentialPolicy"; LATIN1: "Grün ☃" refused)."""
    monkeypatch.setenv("PGCLIENTENCODING", client_encoding)
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db", backend="postgresql", url=postgres_url))
    try:
        plan = await store.add_plan("Grün \u2603", actor="t")
        subscriber = await store.add_subscriber(f"enc-{client_encoding.lower()}-{os.getpid()}", actor="t",
                                                plan="Grün \u2603")
        found = await store.get_subscriber(subscriber.id)
        assert (found.username, found.plan_id) == (subscriber.username, plan.id)
        assert [p.name for p in await store.list_plans()] == ["Grün \u2603"]
    finally:
        await store.close()
