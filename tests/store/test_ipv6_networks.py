"""IPv6 attribution by index (ispd/store/ipv6_networks.py, migration 0012): a session's IPv6
prefixes and address kept as networks in integers, and ``who`` reading only the sessions that
overlap the question, for every stored length and question length 0..128."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from ispd.store import Store, open_store
from ispd.store.config import StoreConfig
from ispd.store.ipv6_networks import SHORTEST, network_text, stored_network
from ispd.store.models import AccountingRecord, AccountingStatus
from ispd.store.sqlite import connect, migrate, sqlite_migrations
from ispd.store.sqlite_attribution import ipv6_overlapping_query, who
from ispd.store.sqlite_radius import record_accounting

T0 = 1_800_000_000.0
# Bases whose halves sit at the edges of the signed 64-bit range SQLite keeps them in.
BASES = ("2001:db8:123:4567:89ab:cdef:fedc:ba98", "ffff:ffff:ffff:ffff:8000::1", "7fff:ffff:ffff:ffff:7fff:ffff:ffff:ffff",
         "8000::")


def _network(base: str, length: int, sibling: bool = False) -> IPv6Network:
    """``base``'s network of ``length`` bits, or its sibling (the last of those bits flipped)."""
    bits = int(IPv6Network(base).network_address)
    if sibling and length:
        bits ^= 1 << (128 - length)
    return IPv6Network((bits, length), strict=False)


def test_a_network_is_kept_in_integers_whose_order_is_the_addresses() -> None:
    texts = ["::/0", "::1", "7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "8000::", "8000::1", "ffff::/16",
             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    networks = [stored_network(t) for t in texts]
    assert all(n is not None for n in networks)
    halves = [(n[1], n[2]) for n in networks if n is not None]
    assert halves == sorted(halves)
    assert all(-2 ** 63 <= half < 2 ** 63 for pair in halves for half in pair)
    assert stored_network(" 2001:0DB8:0001:0000:00FF::/48 ") == stored_network("2001:db8:1::/48")
    for text in ("not-a-prefix", "2001:db8::/129", "198.18.0.0/24", ""):
        assert stored_network(text) is None, text
    for text, canonical in (("2001:DB8::1/128", "2001:db8::1"), ("::/0", "::/0"), ("2001:db8:1::ff/48", "2001:db8:1::/48"),
                            ("ffff:ffff:ffff:ffff:8000::/65", "ffff:ffff:ffff:ffff:8000::/65")):
        network = stored_network(text)
        assert network is not None and network_text(*network) == canonical


FORMS = ["::", "::/0", "::1", "::1.2.3.4", "::ffff:1.2.3.4/96", "::1.2.3.04", "::01.2.3.4", "::256.1.1.1", "1::1.2.3",
         "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:1.2.3.4", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7::",
         "::1:2:3:4:5:6:7", "1::2::3", "12345::", ":::", ":1::", "1::2:", "::00000:1", "::0000:1", "0x1::", "g::",
         "\u0661::", "1.2.3.4", "2001:DB8::/32", "2001:db8::/032", "2001:db8::/+32", "2001:db8::/ 32", "2001:db8::/32/1",
         "2001:db8:: /32", "2001:db8::/129", "2001:db8::/-1", "2001:db8::/", "/32", "fe80::1%eth0", "fe80::1%eth0/64",
         "2001:db8::1\x00", "2001:db8::1/\u0663\u0662", "  2001:db8:1:2:3:4:5:6/48  ", ""]


@pytest.mark.parametrize("text", FORMS)
def test_a_stored_text_is_read_as_the_ipaddress_module_reads_it(text: str) -> None:
    """The C library's parser reads the common forms fast; what it reads must be what ipaddress
    (which ``who`` read the texts with before they were indexed) reads, and nothing more."""
    try:
        network = IPv6Network(text.strip(), strict=False)
        expected: tuple[int, int, int] | None = (network.prefixlen, *divmod(int(network.network_address), 1 << 64))
    except ValueError:
        expected = None
    got = stored_network(text)
    assert (got if got is None else (got[0], got[1] + 2 ** 63, got[2] + 2 ** 63)) == expected


@pytest.fixture
async def every_length(tmp_path: Path) -> AsyncIterator[Path]:
    """For each base, each length 0..128: one session with that network and one with its sibling,
    as the framed prefix, the delegated prefix or (a /128) the framed address, by the accounting
    path the daemon takes."""
    store = await open_store(StoreConfig(path=tmp_path / "a.db"))
    try:
        records = []
        for b, base in enumerate(BASES):
            for length in range(129):
                for sibling in (False, True):
                    network = _network(base, length, sibling)
                    kind = {0: "framed_ipv6_prefix", 1: "delegated_ipv6_prefix"}[length % 2] if length < 128 \
                        else "framed_ipv6_address"
                    text = str(network.network_address) if length == 128 else str(network)
                    records.append(AccountingRecord(
                        at=T0, status=AccountingStatus.START, nas_address="198.18.0.1",
                        acct_session_id=f"{b}/{length}/{int(sibling)}", username="u", **{kind: text}))
        await store.record_accounting(records)
    finally:
        await store.close()
    yield tmp_path / "a.db"


def test_every_stored_length_answers_every_question_length(every_length: Path) -> None:
    conn = connect(every_length, 5)
    try:
        stored = {row[0]: IPv6Network(row[1] or row[2] or row[3]) for row in conn.execute(
            "SELECT id, framed_ipv6_prefix, delegated_ipv6_prefix, framed_ipv6_address FROM radius_sessions")}
        assert len(stored) == len(BASES) * 129 * 2
        for base in BASES:
            for length in range(129):
                for sibling in (False, True):
                    question = _network(base, length, sibling)
                    sql, parameters = ipv6_overlapping_query(question, T0, T0)
                    found = sorted(row["id"] for row in conn.execute(sql, parameters))
                    assert found == sorted(i for i, n in stored.items()
                                           if n.overlaps(question) and n.prefixlen >= SHORTEST), question
    finally:
        conn.close()


def test_the_answer_names_the_stored_network_and_kind(every_length: Path) -> None:
    conn = connect(every_length, 5)
    try:
        holdings = who(conn, "8000::/1", T0, T0)
        # Every 8000:: network of length 32..128 (and its siblings); none shorter (SHORTEST).
        assert {(h.prefix, h.prefix_kind) for h in holdings} >= {
            ("8000::/32", "framed"), ("8000::/33", "delegated"), ("8000::/64", "framed"),
            ("8000::", "framed-address"), ("8000::1", "framed-address"), ("8000:1::/32", "framed")}
        assert all(IPv6Network(h.prefix or "").overlaps(IPv6Network("8000::/1")) for h in holdings)
        assert min(IPv6Network(h.prefix or "").prefixlen for h in holdings) == SHORTEST
    finally:
        conn.close()


Session = tuple[int, str | None, str | None, str | None]  # id, framed prefix, delegated prefix, framed address


def _insert_sessions(conn: sqlite3.Connection, rows: list[Session], *, index: bool) -> None:
    conn.executemany(
        "INSERT INTO radius_sessions (id, nas_address, acct_session_id, username, started_at, updated_at,"
        " framed_ipv6_prefix, delegated_ipv6_prefix, framed_ipv6_address)"
        " VALUES (?1, '198.18.0.1', 's' || ?1, 'u', ?2, ?2, ?3, ?4, ?5)", [(i, T0, *texts) for i, *texts in rows])
    if index:  # as the accounting path would
        networks = []
        for session_id, *texts in rows:
            for kind, text in zip(("framed", "delegated", "framed-address"), texts, strict=True):
                network = stored_network(text) if text is not None else None
                if network is not None:
                    networks.append((session_id, kind, *network))
        conn.executemany("INSERT INTO radius_session_ipv6 (session_id, kind, length, net_hi, net_lo)"
                         " VALUES (?, ?, ?, ?, ?)", networks)


def _vm_steps(conn: sqlite3.Connection, question: str) -> tuple[int, list[str | None]]:
    """The SQLite virtual machine's steps (in hundreds) ``who`` takes: a measure of the rows it
    reads that no timer or load on the machine changes."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 100)
    try:
        holdings = who(conn, question, T0, T0 + 86400)
    finally:
        conn.set_progress_handler(None, 0)
    return steps, [h.acct_session_id for h in holdings]


def test_who_reads_the_sessions_that_hold_the_address_not_all(tmp_path: Path) -> None:
    """A year of sessions is millions: 200,000 IPv6 sessions near the question (in its /32, and
    addresses in its very /64) that do not hold it cost ``who`` nothing more to pass by."""
    conn = connect(tmp_path / "a.db", 5)
    try:
        migrate(conn, sqlite_migrations())
        conn.execute("BEGIN")
        _insert_sessions(conn, [(1, "2001:db8:ab:cd00::/64", "2001:db8:ab:cd00::/56", "2001:db8:ab:cd00::1")],
                         index=True)
        conn.execute("COMMIT")
        before = _vm_steps(conn, "2001:db8:ab:cd00::1")
        assert before[1] == ["s1", "s1", "s1"]
        # Generated inside SQLite (parsing 200,000 texts in Python takes seconds): delegated /56s
        # 2001:db8:<i>00::/56 but the held one's, and addresses 2001:db8:ab:cd00::<i + 2>.
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 99999)"
            " INSERT INTO radius_sessions (id, nas_address, acct_session_id, username, started_at, updated_at,"
            " delegated_ipv6_prefix, framed_ipv6_address)"
            " SELECT 2 + i, '198.18.0.1', 'd' || i, 'u', ?1, ?1, printf('2001:db8:%x:%x::/56', i >> 8, (i & 255) << 8),"
            " NULL FROM n WHERE i != 43981"
            " UNION ALL SELECT 200000 + i, '198.18.0.1', 'a' || i, 'u', ?1, ?1, NULL, printf('2001:db8:ab:cd00::%x:%x', (i + 2) >> 16, (i + 2) & 65535)"
            " FROM n", (T0,))
        conn.execute(
            "INSERT INTO radius_session_ipv6 (session_id, kind, length, net_hi, net_lo)"
            " SELECT id, 'delegated', 56, ?1 + (id - 2) * 256, ?3 FROM radius_sessions WHERE delegated_ipv6_prefix"
            " IS NOT NULL AND id > 1 UNION ALL SELECT id, 'framed-address', 128, ?2, ?3 + id - 200000 + 2"
            " FROM radius_sessions WHERE framed_ipv6_address IS NOT NULL AND id > 1",
            ((0x20010DB8 << 32) - 2 ** 63, 0x20010DB8_00AB_CD00 - 2 ** 63, -2 ** 63))
        conn.execute("COMMIT")
        for row in conn.execute("SELECT s.delegated_ipv6_prefix, s.framed_ipv6_address, n.length, n.net_hi, n.net_lo"
                                " FROM radius_session_ipv6 n JOIN radius_sessions s ON s.id = n.session_id"
                                " WHERE n.session_id IN (2, 3, 50000, 100001, 200000, 299999)"):
            assert stored_network(row[0] or row[1]) == tuple(row[2:]), row  # as the accounting path keeps them
        after = _vm_steps(conn, "2001:db8:ab:cd00::1")
        assert after[1] == before[1]
        # Reading 200,000 rows takes millions of steps; the seeks take the same few as before.
        assert after[0] <= before[0] + 2, (before, after)
    finally:
        conn.close()


def test_the_query_seeks_the_network_index_and_scans_no_table(tmp_path: Path) -> None:
    conn = connect(tmp_path / "a.db", 5)
    try:
        migrate(conn, sqlite_migrations())
        for question in ("::/0", "2001:db8::/32", "2001:db8:1:2::/64", "2001:db8:1:2:3::/80", "2001:db8::1"):
            sql, parameters = ipv6_overlapping_query(IPv6Network(question), T0, T0)
            plan = [str(row[3]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", parameters)]
            seeks = [step for step in plan if step.startswith("SEARCH n USING COVERING INDEX radius_session_ipv6_network")]
            assert seeks and all("length=? AND net_hi" in step for step in seeks), plan
            assert any(step.startswith("SEARCH s USING INTEGER PRIMARY KEY") for step in plan), plan
            assert not [step for step in plan if step.startswith("SCAN") and "CONSTANT ROWS" not in step
                        and step not in ("SCAN high", "SCAN low")], plan
    finally:
        conn.close()


async def test_an_interim_that_repeats_the_sessions_prefixes_writes_nothing_more(tmp_path: Path) -> None:
    """The accounting hot path: an interim carrying the prefixes its session already has costs
    what one of an IPv4-only session costs; a prefix the session lacked is indexed once."""
    conn = connect(tmp_path / "a.db", 5)
    try:
        migrate(conn, sqlite_migrations())

        def record(status: AccountingStatus, session: str, at: float, **ipv6: str) -> int:
            before = conn.total_changes
            record_accounting(conn, [AccountingRecord(at=at, status=status, nas_address="198.18.0.1",
                                                      acct_session_id=session, username=session, **ipv6)])
            return conn.total_changes - before

        prefixes = {"framed_ipv6_prefix": "2001:db8:1:2::/64", "delegated_ipv6_prefix": "2001:db8:1::/56"}
        assert record(AccountingStatus.START, "v6", T0, **prefixes) == 1 + 2 + 1  # session, networks, history
        record(AccountingStatus.START, "v4", T0)
        interim = AccountingStatus.INTERIM_UPDATE
        assert record(interim, "v6", T0 + 300, **prefixes) == record(interim, "v4", T0 + 300) == 2
        assert record(interim, "v6", T0 + 600, framed_ipv6_address="2001:db8:1:2::9", **prefixes) == 2 + 2
        assert record(interim, "v6", T0 + 900, framed_ipv6_address="2001:db8:1:2::9", **prefixes) == 2
        assert [(r["kind"], r["length"]) for r in conn.execute(
            "SELECT kind, length FROM radius_session_ipv6 ORDER BY kind")] == [
            ("delegated", 56), ("framed", 64), ("framed-address", 128)]
        assert [h.prefix for h in who(conn, "2001:db8:1:2::9", T0, T0)] == [
            "2001:db8:1:2::/64", "2001:db8:1::/56", "2001:db8:1:2::9"]
    finally:
        conn.close()


async def test_a_session_purged_by_retention_takes_its_networks(tmp_path: Path) -> None:
    store: Store = await open_store(StoreConfig(path=tmp_path / "a.db"))
    try:
        for name, at in (("old", T0), ("new", T0 + 86400)):
            start = AccountingRecord(at=at, status=AccountingStatus.START, nas_address="198.18.0.1",
                                     acct_session_id=name, username=name, delegated_ipv6_prefix="2001:db8:1::/56")
            await store.record_accounting([start, AccountingRecord(
                at=at + 60, status=AccountingStatus.STOP, nas_address="198.18.0.1", acct_session_id=name,
                username=name)])
        assert (await store.purge_history(T0 + 3600))["radius_sessions"] == 1
        assert [h.username for h in await store.who("2001:db8:1::1", since=T0, until=T0 + 86400 * 2)] == ["new"]
    finally:
        await store.close()
    conn = connect(tmp_path / "a.db", 5)
    try:
        assert conn.execute("SELECT COUNT(*) FROM radius_session_ipv6").fetchone()[0] == 1
    finally:
        conn.close()
