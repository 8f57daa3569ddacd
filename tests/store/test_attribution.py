"""Attribution from the history: who held an address at a moment, with known answers, an
address that went from one subscriber to another, and a RADIUS session holding it later; and
IPv6 addresses and prefixes, held by the sessions whose framed or delegated prefix overlaps them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ispd.store import Store, open_store
from ispd.store.config import StoreConfig
from ispd.store.errors import Conflict, InvalidValue
from ispd.store.models import AccountingRecord, AccountingStatus, Lease, LeaseState
from tests.store.conftest import execute

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
ADDRESS = "198.18.5.10"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def history(store_config: StoreConfig) -> AsyncIterator[Store]:
    """alice's router leases ADDRESS at T0, renews it, releases it at +3000; bob's gets it at
    +4000 and lets it expire at +7600; a client declines it at +8000; carol's PPPoE session
    has it from +10000 to +12000."""
    clock = Clock()
    store = await open_store(store_config, clock=clock)
    for name in ("alice", "bob", "carol"):
        await store.add_subscriber(name, actor="t")
    alice = Lease(ADDRESS, LeaseState.BOUND, T0, T0 + 3600, hw_address="02:00:00:00:00:aa", subscriber_id=1,
                  circuit_id="olt1/1/1", remote_id="ont-aa", pool="home", hostname="alice-router")
    bob = Lease(ADDRESS, LeaseState.BOUND, T0 + 4000, T0 + 7600, hw_address="02:00:00:00:00:bb", subscriber_id=2,
                pool="home")
    for at, lease, event in (
            (T0, alice, "granted"),
            (T0 + 1800, _with(alice, T0 + 5400), "renewed"),
            (T0 + 3000, _with(alice, T0 + 3000, LeaseState.RELEASED), "released"),
            (T0 + 4000, bob, "granted"),
            (T0 + 7600, _with(bob, T0 + 7600, LeaseState.EXPIRED), "expired"),
            (T0 + 8000, Lease(ADDRESS, LeaseState.DECLINED, T0 + 8000, T0 + 9000, hw_address="02:00:00:00:00:dd"),
             "declined")):
        clock.now = at
        await store.record_leases([(lease, event)])
    start = AccountingRecord(at=T0 + 10000, status=AccountingStatus.START, nas_address="198.18.0.1",
                             acct_session_id="s9", username="carol", subscriber_id=3, framed_ip=ADDRESS,
                             calling_station_id="02:00:00:00:00:cc", nas_identifier="bng1", nas_port_id="eth0.100",
                             interim_interval=300)
    records = [start] + [AccountingRecord(**{**_fields(start), "at": T0 + 10000 + 300 * n,
                                              "status": AccountingStatus.INTERIM_UPDATE}) for n in (1, 2, 3)]
    records.append(AccountingRecord(**{**_fields(start), "at": T0 + 12000, "status": AccountingStatus.STOP,
                                       "terminate_cause": "User-Request"}))
    clock.now = T0 + 12000
    for record in records:
        await store.record_accounting([record])
    try:
        yield store
    finally:
        await store.close()


def _with(lease: Lease, expires_at: float, state: LeaseState = LeaseState.BOUND) -> Lease:
    return Lease(lease.address, state, lease.starts_at, expires_at, lease.hw_address, lease.client_id,
                 lease.hostname, lease.subscriber_id, lease.circuit_id, lease.remote_id, lease.pool, lease.service)


def _fields(record: AccountingRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


async def names_at(store: Store, at: float) -> list[tuple[str | None, str]]:
    return [(h.username, h.source) for h in await store.who(ADDRESS, since=at, until=at)]


async def test_each_moment_names_whoever_held_the_address_then(history: Store) -> None:
    assert await names_at(history, T0 - 1) == []
    assert await names_at(history, T0 + 100) == [("alice", "dhcp")]
    assert await names_at(history, T0 + 2999) == [("alice", "dhcp")]  # the renewal held it
    assert await names_at(history, T0 + 3500) == []  # released at +3000, bob not yet
    assert await names_at(history, T0 + 5000) == [("bob", "dhcp")]
    assert await names_at(history, T0 + 8500) == []  # a decline holds nothing
    assert await names_at(history, T0 + 11000) == [("carol", "radius-session")]
    assert await names_at(history, T0 + 13000) == []


async def test_a_span_names_everyone_in_it_in_order_with_the_evidence(history: Store) -> None:
    holdings = await history.who(ADDRESS, since=T0 + 2000, until=T0 + 11000)
    assert [h.username for h in holdings] == ["alice", "bob", "carol"]
    alice, bob, carol = holdings
    assert (alice.starts_at, alice.ends_at) == (T0, T0 + 3000)
    assert (alice.hw_address, alice.circuit_id, alice.remote_id, alice.hostname, alice.pool) == (
        "02:00:00:00:00:aa", "olt1/1/1", "ont-aa", "alice-router", "home")
    assert [(e.table, e.event) for e in alice.evidence] == [("lease_history", "granted"), ("lease_history", "renewed"),
                                                           ("lease_history", "released")]
    assert (bob.starts_at, bob.ends_at, bob.subscriber_id) == (T0 + 4000, T0 + 7600, 2)
    assert (carol.nas_address, carol.nas_identifier, carol.acct_session_id, carol.hw_address) == (
        "198.18.0.1", "bng1", "s9", "02:00:00:00:00:cc")
    assert (carol.starts_at, carol.ends_at, carol.terminate_cause) == (T0 + 10000, T0 + 12000, "User-Request")
    assert [e.event for e in carol.evidence] == ["session", "start", "stop", "interim-update x3"]


async def test_an_open_session_holds_the_address_until_now(history: Store) -> None:
    record = AccountingRecord(at=T0 + 20000, status=AccountingStatus.START, nas_address="198.18.0.1",
                              acct_session_id="s10", username="carol", subscriber_id=3, framed_ip=ADDRESS)
    await history.record_accounting([record])
    [open_] = await history.who(ADDRESS, since=T0 + 90000, until=T0 + 90000)
    assert open_.acct_session_id == "s10" and open_.ends_at is None


async def test_bad_questions_are_refused(history: Store) -> None:
    with pytest.raises(InvalidValue):
        await history.who("not-an-address", since=T0, until=T0)
    with pytest.raises(InvalidValue):
        await history.who(ADDRESS, since=T0 + 1, until=T0)


async def test_the_history_cannot_be_rewritten(history: Store) -> None:
    for table in ("lease_history", "accounting_records", "audit_log"):
        with pytest.raises(Conflict, match="append-only"):
            await execute(history, f"UPDATE {table} SET at = 0")
    assert [h.username for h in await history.who(ADDRESS, since=T0, until=T0)] == ["alice"]


async def test_a_grant_the_client_declined_holds_the_address_only_until_the_decline(history: Store) -> None:
    address = "198.18.5.11"
    granted = Lease(address, LeaseState.BOUND, T0, T0 + 86400, hw_address="02:00:00:00:00:ee", subscriber_id=2)
    await history.record_leases([(granted, "granted")])
    await history.record_leases([(Lease(address, LeaseState.DECLINED, T0, T0 + 600, hw_address="02:00:00:00:00:ee",
                                        subscriber_id=2), "declined")])
    [held] = await history.who(address, since=T0 - 10, until=T0 + 86400)
    assert held.ends_at is not None and held.ends_at <= T0 + 12000  # the decline's time (the store's clock)
    assert [e.event for e in held.evidence] == ["granted", "declined"]
    assert await history.who(address, since=T0 + 50000, until=T0 + 50000) == []


# --- IPv6: the session's framed or delegated prefix holds the address -------------------------

V6_START = T0 + 20000


@pytest.fixture
async def dual_stack(history: Store) -> Store:
    """dave's session on bng2 from +20000 to +30000: its link's prefix written long-hand in
    upper case, its delegated /48 with bits set past the length (both as a NAS or an importer may
    write them); erin's session, still open from +25000, with only a delegated /56."""
    await history.add_subscriber("dave", actor="t")
    await history.add_subscriber("erin", actor="t")
    dave = AccountingRecord(at=V6_START, status=AccountingStatus.START, nas_address="198.18.0.2",
                            acct_session_id="d1", username="dave", subscriber_id=4, framed_ip="198.18.5.20",
                            framed_ipv6_prefix="2001:0DB8:FFFF:0001:0000:0000:0000:0000/64",
                            delegated_ipv6_prefix="2001:db8:1:0:ff::/48", calling_station_id="02:00:00:00:00:d1")
    await history.record_accounting([dave])
    await history.record_accounting([AccountingRecord(**{**_fields(dave), "at": V6_START + 10000,
                                                         "status": AccountingStatus.STOP})])
    await history.record_accounting([AccountingRecord(
        at=V6_START + 5000, status=AccountingStatus.START, nas_address="198.18.0.2", acct_session_id="e1",
        username="erin", subscriber_id=5, delegated_ipv6_prefix="2001:db8:2:100::/56")])
    return history


Held = tuple[str | None, str | None, str | None]  # username, prefix, prefix kind


async def held_by(store: Store, question: str, since: float, until: float | None = None) -> list[Held]:
    holdings = await store.who(question, since=since, until=since if until is None else until)
    return [(h.username, h.prefix, h.prefix_kind) for h in holdings]


async def test_an_ipv6_address_is_held_by_the_session_whose_prefix_contains_it(dual_stack: Store) -> None:
    at = V6_START + 100
    # Inside the delegated /48, read whatever form it was stored in; named in its canonical form.
    assert await held_by(dual_stack, "2001:db8:1:2::5", at) == [("dave", "2001:db8:1::/48", "delegated")]
    assert await held_by(dual_stack, "2001:db8:1:ffff:ffff:ffff:ffff:ffff", at) == [
        ("dave", "2001:db8:1::/48", "delegated")]
    # On the link: the framed /64 written long-hand in upper case.
    assert await held_by(dual_stack, "2001:db8:ffff:1::9", at) == [("dave", "2001:db8:ffff:1::/64", "framed")]
    for outside in ("2001:db8:0:ffff::1", "2001:db8:ffff:2::1", "2001:db8:2::1"):
        assert await held_by(dual_stack, outside, at) == [], outside


async def test_an_ipv6_question_is_read_in_any_form(dual_stack: Store) -> None:
    at = V6_START + 100
    [holding] = await dual_stack.who(" 2001:0DB8:0001:0002:0000:0000:0000:0005 ", since=at, until=at)
    assert holding.address == "2001:db8:1:2::5" and holding.prefix == "2001:db8:1::/48"
    assert holding.source == "radius-session" and holding.acct_session_id == "d1"
    assert holding.hw_address == "02:00:00:00:00:d1" and holding.subscriber_id == 4
    assert [e.event for e in holding.evidence] == ["session", "start", "stop"]


async def test_an_ipv6_prefix_asked_about_overlaps_the_sessions_prefixes(dual_stack: Store) -> None:
    at = V6_START + 6000  # dave's and erin's sessions both open
    # An abuse report's /64 inside a delegated prefix; the bits past its length do not matter.
    assert await held_by(dual_stack, "2001:db8:1:2::/64", at) == [("dave", "2001:db8:1::/48", "delegated")]
    assert await held_by(dual_stack, "2001:db8:2:1ab::1/64", at) == [("erin", "2001:db8:2:100::/56", "delegated")]
    # A prefix wider than the sessions': every prefix inside it, each a holding of its own.
    assert await held_by(dual_stack, "2001:db8::/32", at) == [
        ("dave", "2001:db8:ffff:1::/64", "framed"), ("dave", "2001:db8:1::/48", "delegated"),
        ("erin", "2001:db8:2:100::/56", "delegated")]
    assert await held_by(dual_stack, "2001:db8:3::/48", at) == []
    # The same prefix, and a /128 as the address it is.
    assert await held_by(dual_stack, "2001:db8:2:100::/56", at) == [("erin", "2001:db8:2:100::/56", "delegated")]
    [one] = await dual_stack.who("2001:db8:2:100::1/128", since=at, until=at)
    assert one.address == "2001:db8:2:100::1"


async def test_an_ipv6_holding_lasts_as_long_as_the_session(dual_stack: Store) -> None:
    address = "2001:db8:1:2::5"
    assert await held_by(dual_stack, address, V6_START - 1) == []
    assert [h[0] for h in await held_by(dual_stack, address, V6_START)] == ["dave"]
    assert [h[0] for h in await held_by(dual_stack, address, V6_START + 10000)] == ["dave"]  # the stop's moment
    assert await held_by(dual_stack, address, V6_START + 10001) == []
    assert [h[0] for h in await held_by(dual_stack, address, T0, V6_START)] == ["dave"]  # a span touching it
    assert await held_by(dual_stack, address, T0, V6_START - 1) == []
    # erin's session is open: it holds its prefix until now, whatever moment is asked about.
    assert [h[0] for h in await held_by(dual_stack, "2001:db8:2:1ff::1", V6_START + 10 ** 6)] == ["erin"]
    assert await held_by(dual_stack, "2001:db8:2:1ff::1", V6_START + 4999) == []


async def test_ipv6_questions_leave_ipv4_answers_alone(dual_stack: Store) -> None:
    [v4] = await dual_stack.who("198.18.5.20", since=V6_START + 100, until=V6_START + 100)
    assert v4.username == "dave" and v4.prefix is None and v4.prefix_kind is None
    assert await names_at(dual_stack, T0 + 11000) == [("carol", "radius-session")]


async def test_a_stored_prefix_that_is_not_one_answers_nothing(dual_stack: Store) -> None:
    await dual_stack.record_accounting([AccountingRecord(
        at=V6_START + 100, status=AccountingStatus.START, nas_address="198.18.0.2", acct_session_id="bad",
        username="dave", framed_ipv6_prefix="not-a-prefix", delegated_ipv6_prefix="2001:db8:1::/129")])
    assert await held_by(dual_stack, "2001:db8:1:2::5", V6_START + 200) == [("dave", "2001:db8:1::/48", "delegated")]


async def test_a_framed_ipv6_address_holds_itself_kept_from_the_start_or_learnt_later(dual_stack: Store) -> None:
    """Framed-IPv6-Address (RFC 6911), an IA_NA on the link with no prefix reported: kept on the
    session from the Start, or from the first interim that brings it when the Start did not."""
    start = AccountingRecord(at=V6_START, status=AccountingStatus.START, nas_address="198.18.0.3",
                             acct_session_id="f1", username="frank", framed_ipv6_address="2001:DB8:AAAA::0001")
    await dual_stack.record_accounting([start, AccountingRecord(
        at=V6_START, status=AccountingStatus.START, nas_address="198.18.0.3", acct_session_id="g1", username="gina")])
    await dual_stack.record_accounting([AccountingRecord(
        at=V6_START + 300, status=AccountingStatus.INTERIM_UPDATE, nas_address="198.18.0.3", acct_session_id="g1",
        username="gina", framed_ipv6_address="2001:db8:aaaa::2")])
    at = V6_START + 600
    assert await held_by(dual_stack, "2001:db8:aaaa::1", at) == [("frank", "2001:db8:aaaa::1", "framed-address")]
    assert await held_by(dual_stack, "2001:db8:aaaa::2", at) == [("gina", "2001:db8:aaaa::2", "framed-address")]
    assert await held_by(dual_stack, "2001:db8:aaaa::3", at) == []
    assert [h[0] for h in await held_by(dual_stack, "2001:db8:aaaa::/64", at)] == ["frank", "gina"]
    sessions = await dual_stack.list_sessions(nas_address="198.18.0.3")
    assert {s.acct_session_id: s.framed_ipv6_address for s in sessions} == {
        "f1": "2001:DB8:AAAA::0001", "g1": "2001:db8:aaaa::2"}  # kept as reported


@pytest.mark.parametrize("question", ["2001:db8::/129", "2001:db8::g", "fe80::1%eth0", ":::", "nonsense"])
async def test_bad_ipv6_questions_are_refused(history: Store, question: str) -> None:
    with pytest.raises(InvalidValue, match="is not an IPv4 or IPv6 address or an IPv6 prefix"):
        await history.who(question, since=T0, until=T0)


async def test_an_ipv4_prefix_is_refused_with_what_to_give_instead(history: Store) -> None:
    with pytest.raises(InvalidValue, match="give one IPv4 address, not a prefix"):
        await history.who("198.18.0.0/24", since=T0, until=T0)


async def test_an_ipv4_mapped_ipv6_address_is_its_ipv4_address(history: Store) -> None:
    """As a dual-stack server logs an IPv4 client: from a review, it was answered "nobody held"."""
    [held] = await history.who(f"::ffff:{ADDRESS}", since=T0 + 100, until=T0 + 100)
    assert (held.username, held.address) == ("alice", ADDRESS)



async def test_a_prefix_shorter_than_an_isps_allocation_names_nobody(dual_stack: Store) -> None:
    """From a review: a NAS that sends ::/0 (two zero octets) would have its session named as
    the holder of every IPv6 address; no subscriber's prefix is shorter than a /32."""
    at = V6_START + 600
    await dual_stack.record_accounting([AccountingRecord(
        at=at - 1, status=AccountingStatus.START, nas_address="198.18.0.9", acct_session_id="z1", username="zed",
        framed_ipv6_prefix="::/0", delegated_ipv6_prefix="2a00::/31", framed_ipv6_address="2a00:1::1")])
    assert await held_by(dual_stack, "2a00:1::1", at) == [("zed", "2a00:1::1", "framed-address")]
    assert await held_by(dual_stack, "2a00:1::2", at) == []


async def test_retention_keeps_the_rows_of_a_lease_held_past_its_cut(store_config: StoreConfig) -> None:
    """From a bug hunt: retention deleted each lease row written before its cut, held or not: a
    30-day lease granted 10 days ago, with a retention of 7 days, lost its grant, and `ispd who`
    said nobody held the address (now, and 3 days ago) while `lease show` had it bound. A row
    goes once it was valid no more at the cut or a later row of its lease says what it said."""
    day = 86400.0
    clock = Clock()
    store = await open_store(store_config, clock=clock)
    try:
        await store.add_subscriber("alice", actor="t")
        held = Lease("198.18.6.1", LeaseState.BOUND, T0 - 40 * day, T0 - 10 * day, hw_address="02:00:00:00:06:01",
                     subscriber_id=1)
        released = Lease("198.18.6.2", LeaseState.BOUND, T0 - 20 * day, T0 + 10 * day, hw_address="02:00:00:00:06:02")
        ended = Lease("198.18.6.3", LeaseState.BOUND, T0 - 30 * day, T0 - 29 * day, hw_address="02:00:00:00:06:03")
        for at, lease, event in (
                (T0 - 40 * day, held, "granted"),
                (T0 - 30 * day, ended, "granted"),
                (T0 - 29 * day, _with(ended, T0 - 29 * day, LeaseState.EXPIRED), "expired"),
                (T0 - 25 * day, _with(held, T0 + 5 * day), "renewed"),
                (T0 - 20 * day, released, "granted"),
                (T0 - 19 * day, _with(released, T0 - 19 * day, LeaseState.RELEASED), "released"),
                (T0 - 10 * day, _with(held, T0 + 20 * day), "renewed")):
            clock.now = at
            await store.record_leases([(lease, event)])
        clock.now = T0
        deleted = await store.purge_history(T0 - 7 * day)
        assert deleted["lease_history"] == 6  # all but held's last renewal
        for at in (T0 - 3 * day, T0):
            [holding] = await store.who("198.18.6.1", since=at, until=at)
            assert holding.username == "alice" and [e.event for e in holding.evidence] == ["renewed"]
            assert (holding.starts_at, holding.ends_at) == (T0 - 40 * day, T0 + 20 * day)
            assert await store.who("198.18.6.2", since=at, until=at) == []
        assert await store.who("198.18.6.3", since=T0 - 30 * day, until=T0) == []
        clock.now = T0 + 30 * day
        assert (await store.purge_history(T0 + 23 * day))["lease_history"] == 1  # held ended at +20 days
    finally:
        await store.close()
