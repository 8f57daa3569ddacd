"""``ispd store copy-to-postgresql``: a SQLite store moved into PostgreSQL, every row, at once.

The SQLite store is filled through the store's API (every table the services write), the CLI
copies it as an operator runs it, and then every table is compared row by row; the PostgreSQL
store must go on where SQLite left off (ids after the highest, usage counted once)."""

from __future__ import annotations

import sqlite3
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ispd.store import Store, StoreConfig, open_store
from ispd.store.models import (
    AccountingRecord,
    AccountingStatus,
    Lease,
    Lease6,
    Lease6Kind,
    LeaseState,
    QueuedMail,
    QueuedRecipient,
    QuotaCrossing,
    ReservationKind,
    StoredCredentials,
    TrustAnchorKey,
)
from tests.lab import toml
from tests.lab.process import ISPD, interrupted_at_first_line

T0 = 1_800_000_000.0
START = AccountingRecord(at=T0, status=AccountingStatus.START, nas_address="198.18.0.1", acct_session_id="s1",
                         username="alice", subscriber_id=1, framed_ip="198.18.7.7", interim_interval=300,
                         delegated_ipv6_prefix="2001:db8:100::/56")


async def fill(store: Store) -> None:
    """A little of everything the services write."""
    await store.add_plan("gold", actor="t", download_kbps=50_000, upload_kbps=10_000, monthly_quota_bytes=10**9,
                         over_quota_download_kbps=1000, over_quota_upload_kbps=500)
    alice = await store.add_subscriber("alice", actor="t", plan="gold", credentials=StoredCredentials(
        verifier="scrypt$x", nt_hash=b"\x01" * 16, cleartext=None))
    bob = await store.add_subscriber("bob", actor="t")
    gone = await store.add_subscriber("gone", actor="t")
    await store.delete_subscriber(gone.id, actor="t")  # its id is never given again, on either backend
    await store.add_reservation(alice.id, ReservationKind.MAC, "02:00:5e:10:00:01", actor="t",
                                address="198.18.0.10", hostname="gw")
    extra = await store.add_reservation(bob.id, ReservationKind.USERNAME, "bob@pppoe", actor="t",
                                        prefix6="2001:db8:200::/48")
    await store.delete_reservation(extra.id, actor="t")
    await store.add_mailbox(alice.id, "alice@isp.example", actor="t", quota_bytes=10**8)
    await store.add_mail_alias(alice.id, "info@isp.example", ["alice@isp.example", "x@elsewhere.example"],
                               actor="t", local_domains=frozenset({"isp.example"}))
    await store.record_leases([(Lease("198.18.0.50", LeaseState.BOUND, T0, T0 + 3600.5, hw_address="02:00:00:00:00:05",
                                      hostname="laptop", subscriber_id=bob.id, pool="home"), "granted")])
    await store.record_leases6([(Lease6("2001:db8:300::/56", Lease6Kind.PREFIX, LeaseState.BOUND,
                                        "00:03:00:01:02:00:00:00:00:05", 7, T0, T0 + 1800, T0 + 3600,
                                        subscriber_id=bob.id), "granted")])
    await store.record_accounting([START])
    await store.record_accounting([replace(START, at=T0 + 300, status=AccountingStatus.INTERIM_UPDATE,
                                           input_octets=5 * 2**32 + 7, output_octets=1000, session_time_seconds=300)])
    await store.record_accounting([replace(START, at=T0 + 600, status=AccountingStatus.STOP, input_octets=6 * 2**32,
                                           output_octets=2000, session_time_seconds=600,
                                           terminate_cause="User-Request")])
    await store.record_coa(kind="disconnect", nas_address="198.18.0.1", result="ack", attempts=1, at=T0 + 700,
                           completed_at=T0 + 700.25, subscriber_id=alice.id)
    await store.record_quota_crossing(QuotaCrossing(alice.id, "2027-01", T0 + 600, 6 * 2**32, 10**9))
    await store.enqueue_mail(QueuedMail(id="q1", created_at=T0, sender="alice@isp.example", size=42,
                                        next_attempt_at=T0 + 60, recipients=(QueuedRecipient("x@elsewhere.example"),),
                                        subscriber_id=alice.id))
    await store.save_trust_anchor_keys(".", [TrustAnchorKey(".", b"\x01\x01\x03\x08key", "valid", T0, T0 + 30 * 86400,
                                                            "config")])


def all_rows(tables: list[str], read: Any) -> dict[str, list[tuple[Any, ...]]]:
    return {table: sorted((tuple(row) for row in read(f'SELECT * FROM "{table}"')), key=repr) for table in tables}


def copy_command(config: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ISPD, "store", "copy-to-postgresql", url, "-c", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.fixture
async def sqlite_config(tmp_path: Path) -> Path:
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"), clock=lambda: T0)
    try:
        await fill(store)
    finally:
        await store.close()
    config = tmp_path / "ispd.toml"
    config.write_text(toml.dumps({"store": {"path": str(tmp_path / "ispd.db")}}))
    return config


async def test_every_row_is_copied_and_the_store_goes_on_where_sqlite_left_off(
        sqlite_config: Path, tmp_path: Path, postgres_url: str) -> None:
    with sqlite3.connect(tmp_path / "ispd.db") as source:  # the newest entry gone, as retention would take it
        source.execute("DELETE FROM audit_log WHERE id = (SELECT MAX(id) FROM audit_log)")
    result = copy_command(sqlite_config, postgres_url)
    assert result.returncode == 0, result.stderr
    assert "accounting_records: 3 rows" in result.stdout and "set in [store] backend" in result.stdout
    source = sqlite3.connect(tmp_path / "ispd.db")
    tables = [name for (name,) in source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " AND name != 'schema_migrations'")]
    before = all_rows(tables, lambda sql: source.execute(sql).fetchall())
    with psycopg.connect(postgres_url) as target:
        after = all_rows(tables, lambda sql: target.execute(sql).fetchall())
        # audit_log is AUTOINCREMENT in SQLite: its next id is after the highest ever given, even
        # one retention has removed.
        [(given,)] = source.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'").fetchall()
        assert target.execute("SELECT nextval(pg_get_serial_sequence('audit_log', 'id'))").fetchone() == (given + 1,)
    source.close()
    assert {t: len(r) for t, r in after.items()} == {t: len(r) for t, r in before.items()}
    assert after == before  # usage_daily too: the usage triggers did not count the sessions again
    assert sum(len(rows) for rows in before.values()) > 25

    store = await open_store(StoreConfig(path=tmp_path / "pg.db", backend="postgresql", url=postgres_url),
                             clock=lambda: T0 + 86400)
    try:
        carol = await store.add_subscriber("carol", actor="t")
        assert carol.id == 4  # after "gone" (#3), deleted before the copy
        again = await store.add_reservation(carol.id, ReservationKind.MAC, "02:00:5e:10:00:03", actor="t")
        assert again.id == 3  # after the deleted reservation #2
        plan = await store.add_plan("silver", actor="t")
        assert plan.id == 2  # the identity goes on after the copied ids
        overview = await store.subscriber_overview("alice")
        assert overview.usage_this_month.input_octets == 6 * 2**32  # counted once
        [record] = await store.record_accounting([replace(START, acct_session_id="s2", at=T0 + 86400)])
        assert record.session is not None and record.session.id == 2
        assert [h.username for h in await store.who("198.18.7.7", since=T0 + 100, until=T0 + 100)] == ["alice"]
    finally:
        await store.close()


async def test_a_database_that_holds_a_store_is_refused_and_a_failed_copy_leaves_nothing(
        sqlite_config: Path, postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as target:
        target.execute("CREATE TABLE plans (id BIGINT)")  # somebody else's table of that name
    failed = copy_command(sqlite_config, postgres_url)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "plans" in failed.stderr and "already exists" in failed.stderr
    with psycopg.connect(postgres_url, autocommit=True) as target:
        assert target.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
        assert target.execute("SELECT to_regclass('subscribers')").fetchone() == (None,)
        target.execute("DROP TABLE plans")
    assert copy_command(sqlite_config, postgres_url).returncode == 0
    refused = copy_command(sqlite_config, postgres_url)
    assert refused.returncode == 1 and "already holds an ispd store" in refused.stderr


def test_a_nul_or_bytes_in_a_text_are_kept_as_the_live_store_keeps_them(sqlite_config: Path, tmp_path: Path,
                                                                          postgres_url: str) -> None:
    """SQLite keeps a NUL (a NAS's User-Name with a C string's terminator), PostgreSQL's text
    cannot: the copy writes U+FFFD as the live PostgreSQL backend does, rather than refusing the
    whole store. A BLOB in a text column (a hand edit) is read as UTF-8."""
    source = sqlite3.connect(tmp_path / "ispd.db")
    source.execute("UPDATE subscribers SET full_name = 'Bob' || char(0) || 'by', account_ref = x'41ff'"
                   " WHERE username = 'bob'")
    source.commit()
    source.close()
    result = copy_command(sqlite_config, postgres_url)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(postgres_url) as target:
        assert target.execute("SELECT full_name, account_ref FROM subscribers WHERE username = 'bob'").fetchone() \
            == ("Bob\ufffdby", "A\ufffd")


def test_a_row_postgresql_refuses_is_named_and_nothing_is_kept(sqlite_config: Path, tmp_path: Path,
                                                               postgres_url: str) -> None:
    source = sqlite3.connect(tmp_path / "ispd.db")
    source.execute("UPDATE plans SET download_kbps = 'fast'")  # an old hand edit SQLite let in
    source.commit()
    source.close()
    failed = copy_command(sqlite_config, postgres_url)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "plans: a row PostgreSQL refuses" in failed.stderr and "column download_kbps" in failed.stderr
    with psycopg.connect(postgres_url) as target:
        assert target.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_ctrl_c_stops_the_copy_and_leaves_the_database_empty(sqlite_config: Path, tmp_path: Path,
                                                             postgres_url: str) -> None:
    """Before, the copy's thread went on to its commit behind the KeyboardInterrupt: exit 130
    and a full database the operator believed stopped."""
    source = sqlite3.connect(tmp_path / "ispd.db")
    source.executemany("INSERT INTO lease_history (at, event, address, starts_at, expires_at) VALUES (?, 'granted', ?,"
                       " 0, 1)", ((T0 + i, f"198.18.{i // 256 % 256}.{i % 256}") for i in range(100_000)))
    source.commit()
    source.close()
    code, stderr = interrupted_at_first_line([ISPD, "store", "copy-to-postgresql", postgres_url, "-c",
                                              str(sqlite_config)], "copying the store")
    assert code == 1 and "stopped: nothing was copied" in stderr, stderr
    with psycopg.connect(postgres_url) as target:
        assert target.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)


def test_a_url_that_does_not_parse_is_refused_with_its_reason(sqlite_config: Path) -> None:
    failed = copy_command(sqlite_config, "postgresql://[bad")
    assert failed.returncode == 1 and "unexpected" not in failed.stderr
    assert "not a libpq connection URL" in failed.stderr


@pytest.mark.parametrize("url", ["postgresql://ispd:pw-never-shown@[bad/ispd", "host=db password=pw-never-shown bogus=1"])
def test_a_url_that_does_not_parse_is_refused_without_its_password(sqlite_config: Path, url: str) -> None:
    failed = copy_command(sqlite_config, url)
    assert failed.returncode == 1 and "not a libpq connection URL" in failed.stderr, failed.stderr
    assert "pw-never-shown" not in failed.stdout + failed.stderr
