"""DHCPv6 bindings in the store: the current row of each prefix, its append-only history, one
durable write per batch, and attribution (``who``) of the addresses and prefixes they hold."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ispd.store import Store
from ispd.store.errors import Conflict, InvalidValue, NotFound
from ispd.store.models import AccountingRecord, AccountingStatus, Lease6, Lease6Kind, LeaseState
from tests.store.conftest import FakeClock, execute, query

T0 = 1_800_000_000.0
DUID = "00:01:00:01:2c:1f:aa:bb:02:00:00:00:00:0a"
PD = "2001:db8:100:ff00::/56"
NA = "2001:db8:1::10/128"


def binding(prefix: str = PD, kind: Lease6Kind = Lease6Kind.PREFIX, *, starts_at: float = T0,
            expires_at: float = T0 + 7200, state: LeaseState = LeaseState.BOUND, duid: str = DUID, iaid: int = 1,
            subscriber_id: int | None = 1, **more: object) -> Lease6:
    return Lease6(prefix, kind, state, duid, iaid, starts_at, starts_at + 3600, expires_at,
                  subscriber_id=subscriber_id, **more)  # type: ignore[arg-type]


@pytest.fixture
async def alice(store: Store) -> Store:
    await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("bob", actor="t")
    return store


async def test_a_binding_is_kept_current_and_its_history_grows(alice: Store, clock: FakeClock) -> None:
    clock.now = T0
    pd = binding(hostname="cpe-alice", link="olt1", pool="pd-home", remote_id="3561:ont-aa",
                 interface_id="olt1/1/1")
    na = binding(NA, Lease6Kind.ADDRESS, iaid=7)
    await alice.record_leases6([(pd, "granted"), (na, "granted")])
    clock.now = T0 + 1800
    renewed = replace(pd, preferred_until=T0 + 5400, expires_at=T0 + 9000)
    await alice.record_leases6([(renewed, "renewed")])

    assert await alice.get_lease6(PD) == renewed
    assert await alice.get_lease6("2001:DB8:1:0:0:0:0:10") == na  # an address is its /128, in any form
    assert await alice.list_leases6() == [na, renewed]
    history = await alice.lease6_history(PD)
    assert [(h.event, h.at, h.expires_at, h.username) for h in history] == [
        ("renewed", T0 + 1800, T0 + 9000, "alice"), ("granted", T0, T0 + 7200, "alice")]
    assert (history[0].kind, history[0].duid, history[0].iaid, history[0].interface_id, history[0].link) == (
        Lease6Kind.PREFIX, DUID, 1, "olt1/1/1", "olt1")
    assert len(await alice.lease6_history(PD, limit=1)) == 1
    assert await alice.lease6_history("2001:db8:9::/56") == []
    with pytest.raises(NotFound, match="no DHCPv6 binding for 2001:db8:9::/56"):
        await alice.get_lease6("2001:db8:9::/56")


async def test_ended_bindings_are_listed_only_when_asked(alice: Store, clock: FakeClock) -> None:
    clock.now = T0 + 100
    released = binding(NA, Lease6Kind.ADDRESS, state=LeaseState.RELEASED, expires_at=T0 + 100)
    lapsed = binding("2001:db8:1::11/128", Lease6Kind.ADDRESS, expires_at=T0 + 50, subscriber_id=2)
    await alice.record_leases6([(binding(), "granted"), (released, "released"), (lapsed, "granted")])
    assert [b.prefix for b in await alice.list_leases6()] == [PD]
    assert {b.prefix for b in await alice.list_leases6(include_ended=True)} == {PD, NA, "2001:db8:1::11/128"}
    assert [b.prefix for b in await alice.list_leases6(subscriber="bob", include_ended=True)] == [
        "2001:db8:1::11/128"]
    assert await alice.list_leases6(subscriber="bob") == []
    with pytest.raises(NotFound):
        await alice.list_leases6(subscriber="nobody")


async def test_a_declined_address_in_quarantine_is_current(alice: Store, clock: FakeClock) -> None:
    """Kept from its pool until its quarantine ends (its expires_at): the current listing shows
    it (`ispd lease list`), as it shows what DHCPv4 clients declined; then it is ended."""
    clock.now = T0 + 100
    declined = binding(NA, Lease6Kind.ADDRESS, state=LeaseState.DECLINED, expires_at=T0 + 700)
    await alice.record_leases6([(binding(), "granted"), (declined, "declined")])
    assert [(b.prefix, b.state) for b in await alice.list_leases6()] == [
        (NA, LeaseState.DECLINED), (PD, LeaseState.BOUND)]
    clock.now = T0 + 701
    assert [b.prefix for b in await alice.list_leases6()] == [PD]


async def test_prefixes_are_kept_canonical_and_a_wrong_one_writes_nothing(alice: Store) -> None:
    await alice.record_leases6([(binding("2001:0DB8:0100:FF00::/56"), "granted")])
    assert [b.prefix for b in await alice.list_leases6()] == [PD]
    for wrong, message in (("2001:db8:100:ff01::/56", "bits set past its length"),
                           ("198.18.0.1/32", "not an IPv6 address or prefix"),
                           ("2001:db8::/129", "not an IPv6 address or prefix")):
        with pytest.raises(InvalidValue, match=message):
            await alice.record_leases6([(binding("2001:db8:200::/56"), "granted"), (binding(wrong), "granted")])
    assert [b.prefix for b in await alice.list_leases6(include_ended=True)] == [PD]
    with pytest.raises(InvalidValue):
        await alice.get_lease6("not-a-prefix")


async def test_a_batch_is_one_write_all_or_nothing(alice: Store) -> None:
    """The server's batch of one receive loop: every change of it in one transaction (a change
    the database refuses takes the others with it, so nothing is half-written)."""
    batch = [(binding(f"2001:db8:100:{n:x}00::/56", iaid=n), "granted") for n in range(1, 200)]
    await alice.record_leases6(batch)
    assert len(await alice.list_leases6()) == 199
    with pytest.raises(Conflict, match="out of range"):
        await alice.record_leases6([(binding("2001:db8:300::/56"), "granted"),
                                    (binding("2001:db8:301::/56", iaid=2**32), "granted")])
    with pytest.raises(NotFound):
        await alice.get_lease6("2001:db8:300::/56")
    assert await query(alice, "SELECT COUNT(*) FROM dhcp6_lease_history") == [(199,)]


async def test_a_deleted_subscriber_neither_fails_the_batch_nor_loses_the_history(alice: Store) -> None:
    await alice.record_leases6([(binding(subscriber_id=1), "granted")])
    await alice.delete_subscriber("alice", actor="t")
    assert (await alice.get_lease6(PD)).subscriber_id is None  # ON DELETE SET NULL
    # The server's view lagged: it still names the deleted subscriber.
    await alice.record_leases6([(binding(NA, Lease6Kind.ADDRESS, subscriber_id=1), "granted"),
                                (binding(PD, expires_at=T0 + 9000, subscriber_id=1), "renewed")])
    assert [b.subscriber_id for b in await alice.list_leases6()] == [None, None]
    assert [(h.event, h.subscriber_id, h.username) for h in await alice.lease6_history(PD)] == [
        ("renewed", None, None), ("granted", 1, "alice")]


async def test_the_history_cannot_be_rewritten(alice: Store) -> None:
    await alice.record_leases6([(binding(), "granted")])
    with pytest.raises(Conflict, match="append-only"):
        await execute(alice, "UPDATE dhcp6_lease_history SET subscriber_id = 2")
    with pytest.raises(Conflict, match="out of range"):
        await execute(alice, "UPDATE dhcp6_leases SET kind = 'ta'")
    assert [h.subscriber_id for h in await alice.lease6_history(PD)] == [1]


async def test_retention_purges_old_history_and_ended_bindings(alice: Store, clock: FakeClock) -> None:
    clock.now = T0
    await alice.record_leases6([(binding(NA, Lease6Kind.ADDRESS, state=LeaseState.EXPIRED, expires_at=T0), "expired"),
                                (binding(expires_at=T0 + 10 ** 6), "granted")])
    clock.now = T0 + 86400
    await alice.record_leases6([(binding(expires_at=T0 + 10 ** 6), "renewed")])
    deleted = await alice.purge_history(T0 + 3600)
    assert (deleted["dhcp6_lease_history"], deleted["dhcp6_leases"]) == (2, 1)
    assert [b.prefix for b in await alice.list_leases6(include_ended=True)] == [PD]  # bound: kept
    assert [h.event for h in await alice.lease6_history(PD)] == ["renewed"]
    # Attribution answers from what is left: the renewal still names the binding from its start.
    [held] = await alice.who(PD, since=T0 + 86400, until=T0 + 86400)
    assert (held.starts_at, [e.event for e in held.evidence]) == (T0, ["renewed"])



async def test_retention_keeps_the_last_row_of_a_binding_held_past_its_cut(alice: Store, clock: FakeClock) -> None:
    """From a bug hunt: a binding granted before the cut and not renewed since (a long valid
    lifetime) lost its only row, and `ispd who` named nobody while the binding was held."""
    clock.now = T0
    await alice.record_leases6([(binding(expires_at=T0 + 30 * 86400), "granted")])
    clock.now = T0 + 10 * 86400
    assert (await alice.purge_history(T0 + 3 * 86400))["dhcp6_lease_history"] == 0
    [held] = await alice.who(PD, since=clock.now, until=clock.now)
    assert [e.event for e in held.evidence] == ["granted"]

# --- who: the bindings whose address or delegated prefix overlaps the question ----------------


@pytest.fixture
async def bindings(alice: Store, clock: FakeClock) -> Store:
    """alice's router holds PD from T0 (renewed at +1800, released at +3000), and the address
    NA from T0 until it expires at +7200; bob's router gets PD at +4000 and holds it; a client
    declines 2001:db8:1::99 when granted it at +100. carol's RADIUS session has a framed /64
    inside the same /48 from +4000."""
    await alice.add_subscriber("carol", actor="t")
    pd = binding(interface_id="olt1/1/1", remote_id="3561:ont-aa", pool="pd-home", hostname="cpe-alice")
    na = binding(NA, Lease6Kind.ADDRESS, iaid=7, pool="na-home")
    bad = binding("2001:db8:1::99/128", Lease6Kind.ADDRESS, duid="00:03:00:01:02:00:00:00:00:0d", subscriber_id=None)
    bob = binding(starts_at=T0 + 4000, expires_at=T0 + 100_000, duid="00:03:00:01:02:00:00:00:00:0b", iaid=3,
                  subscriber_id=2)
    for at, changes in (
            (T0, [(pd, "granted"), (na, "granted")]),
            (T0 + 100, [(bad, "granted")]),
            (T0 + 150, [(replace(bad, state=LeaseState.DECLINED, expires_at=T0 + 150 + 86400), "declined")]),
            (T0 + 1800, [(replace(pd, expires_at=T0 + 9000), "renewed")]),
            (T0 + 3000, [(replace(pd, state=LeaseState.RELEASED, expires_at=T0 + 3000), "released")]),
            (T0 + 4000, [(bob, "granted")]),
            (T0 + 7200, [(replace(na, state=LeaseState.EXPIRED), "expired")])):
        clock.now = at
        await alice.record_leases6(changes)
    await alice.record_accounting([AccountingRecord(
        at=T0 + 4000, status=AccountingStatus.START, nas_address="198.18.0.2", acct_session_id="c1",
        username="carol", subscriber_id=3, framed_ipv6_prefix="2001:db8:100:ab::/64")])
    return alice


Held = tuple[str | None, str, str | None, str | None]  # username, source, prefix, prefix kind


async def held_by(store: Store, question: str, since: float, until: float | None = None) -> list[Held]:
    holdings = await store.who(question, since=since, until=since if until is None else until)
    return [(h.username, h.source, h.prefix, h.prefix_kind) for h in holdings]


async def test_an_address_inside_a_delegated_prefix_is_held_by_its_binding(bindings: Store) -> None:
    inside = "2001:db8:100:ff12::5"
    assert await held_by(bindings, inside, T0 + 100) == [("alice", "dhcp6", PD, "delegated")]
    assert await held_by(bindings, "2001:db8:100:ffff:ffff:ffff:ffff:ffff", T0 + 2999) == [
        ("alice", "dhcp6", PD, "delegated")]  # the renewal held it
    assert await held_by(bindings, inside, T0 - 1) == []
    assert await held_by(bindings, inside, T0 + 3500) == []  # released at +3000, bob not yet
    assert await held_by(bindings, inside, T0 + 5000) == [("bob", "dhcp6", PD, "delegated")]
    assert await held_by(bindings, "2001:db8:100:fe00::1", T0 + 100) == []  # just outside the /56
    [held] = await bindings.who(inside, since=T0 + 100, until=T0 + 100)
    assert (held.address, held.client_id, held.circuit_id, held.remote_id, held.pool, held.hostname) == (
        inside, DUID, "olt1/1/1", "3561:ont-aa", "pd-home", "cpe-alice")
    assert (held.starts_at, held.ends_at, held.subscriber_id) == (T0, T0 + 3000, 1)
    assert [(e.table, e.event) for e in held.evidence] == [
        ("dhcp6_lease_history", "granted"), ("dhcp6_lease_history", "renewed"), ("dhcp6_lease_history", "released")]


async def test_an_address_binding_holds_itself(bindings: Store) -> None:
    assert await held_by(bindings, "2001:db8:1::10", T0 + 7200) == [("alice", "dhcp6", "2001:db8:1::10", "address")]
    assert await held_by(bindings, "2001:db8:1::10", T0 + 7201) == []
    assert await held_by(bindings, "2001:db8:1::11", T0 + 100) == []
    # A declined address was never held past the decline, and nobody's but an unknown client's.
    assert await held_by(bindings, "2001:db8:1::99", T0 + 120) == [(None, "dhcp6", "2001:db8:1::99", "address")]
    assert await held_by(bindings, "2001:db8:1::99", T0 + 200) == []


async def test_a_wide_question_names_every_binding_and_session_inside_it(bindings: Store) -> None:
    at = T0 + 2000
    assert await held_by(bindings, "2001:db8::/32", at) == [
        ("alice", "dhcp6", PD, "delegated"), ("alice", "dhcp6", "2001:db8:1::10", "address")]
    # A /48 over a span: alice's binding, then bob's of the same prefix, and carol's session.
    assert await held_by(bindings, "2001:db8:100::/48", T0, T0 + 5000) == [
        ("alice", "dhcp6", PD, "delegated"), ("bob", "dhcp6", PD, "delegated"),
        ("carol", "radius-session", "2001:db8:100:ab::/64", "framed")]
    assert await held_by(bindings, "2001:db8:100::/48", T0 + 3100, T0 + 3900) == []
    assert await held_by(bindings, "2001:db8:200::/48", T0, T0 + 5000) == []
    # The prefix itself, and a /64 inside it, asked about.
    assert [h[0] for h in await held_by(bindings, PD, T0 + 5000)] == ["bob"]
    assert [h[0] for h in await held_by(bindings, "2001:db8:100:ff80::/64", T0 + 5000)] == ["bob"]


async def test_ipv4_questions_leave_dhcp6_alone(bindings: Store) -> None:
    assert await bindings.who("198.18.0.10", since=T0, until=T0 + 10 ** 6) == []
