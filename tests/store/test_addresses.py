"""The address ledger that DHCP and RADIUS share: the store decides who holds an address."""

from __future__ import annotations

import pytest

from ispd.store import Conflict, Store
from ispd.store.models import AddressClaim, Lease, LeaseService, LeaseState, ReservationKind
from tests.store.conftest import FakeClock

POOL = ("198.18.0.100", "198.18.0.101", "198.18.0.102")


def claim(holder: str, clock: FakeClock, candidates: tuple[str, ...] = POOL, **fields: object) -> AddressClaim:
    return AddressClaim("shared", candidates, holder, clock.now + 600, **fields)  # type: ignore[arg-type]


def dhcp_lease(address: str, clock: FakeClock, seconds: float = 3600) -> Lease:
    return Lease(address, LeaseState.BOUND, clock.now, clock.now + seconds, hw_address="02:00:00:00:00:01",
                 pool="shared")


async def test_a_claim_takes_the_first_candidate_nobody_holds(store: Store, clock: FakeClock) -> None:
    alice = await store.add_subscriber("alice", actor="t")
    assert await store.record_leases([(dhcp_lease("198.18.0.100", clock), "granted")]) == {}
    result = await store.claim_address(claim("alice 02:00:00:00:01:01", clock, subscriber_id=alice.id,
                                             hw_address="02:00:00:00:01:01"))
    assert result.taken == (("198.18.0.100", clock.now + 3600),)  # the view learns who has it
    assert result.lease == Lease("198.18.0.101", LeaseState.BOUND, clock.now, clock.now + 600,
                                 hw_address="02:00:00:00:01:01", client_id="alice 02:00:00:00:01:01",
                                 subscriber_id=alice.id, pool="shared", service=LeaseService.RADIUS)
    assert await store.get_lease("198.18.0.101") == result.lease
    [entry] = await store.lease_history("198.18.0.101")
    assert (entry.event, entry.username, entry.service) == ("granted", "alice", LeaseService.RADIUS)


async def test_the_same_holder_keeps_its_address_and_its_start(store: Store, clock: FakeClock) -> None:
    first = await store.claim_address(claim("alice", clock))
    clock.now += 100
    again = await store.claim_address(claim("alice", clock, candidates=("198.18.0.100",)))
    assert again.lease is not None and first.lease is not None
    assert (again.lease.address, again.lease.starts_at) == ("198.18.0.100", first.lease.starts_at)
    assert again.lease.expires_at == clock.now + 600
    # Another holder gets nothing from a candidate list of held addresses only.
    other = await store.claim_address(claim("bob", clock, candidates=("198.18.0.100",)))
    assert other.lease is None and other.taken == (("198.18.0.100", clock.now + 600),)


async def test_dhcp_cannot_lease_an_address_a_session_holds(store: Store, clock: FakeClock) -> None:
    held = (await store.claim_address(claim("alice", clock))).lease
    assert held is not None
    ok = dhcp_lease("198.18.0.101", clock)
    refused = await store.record_leases([(dhcp_lease(held.address, clock), "granted"), (ok, "granted")])
    assert refused == {held.address: held.expires_at}
    assert (await store.get_lease(held.address)).service == LeaseService.RADIUS  # untouched
    assert await store.get_lease("198.18.0.101") == ok  # the rest of the batch went in
    assert [e.event for e in await store.lease_history(held.address)] == ["granted"]
    with pytest.raises(Conflict, match="held by a RADIUS session"):
        await store.record_lease(dhcp_lease(held.address, clock), event="granted")
    # Once the hold has run out, DHCP may have it.
    clock.now += 601
    assert await store.record_leases([(dhcp_lease(held.address, clock), "granted")]) == {}


async def test_renewal_and_release_touch_only_the_holders_own_claim(store: Store, clock: FakeClock) -> None:
    held = (await store.claim_address(claim("alice", clock))).lease
    assert held is not None
    assert await store.renew_claims([(held.address, "alice"), (held.address, "bob")], clock.now + 3600) \
        == [held.address]  # bob never had it
    assert (await store.get_lease(held.address)).expires_at == clock.now + 3600
    assert await store.release_claims([(held.address, "bob")]) == []
    clock.now += 10
    [released] = await store.release_claims([(held.address, "alice")])
    assert (released.state, released.expires_at) == (LeaseState.RELEASED, clock.now)
    assert [e.event for e in await store.lease_history(held.address)] == ["released", "granted"]
    # Released: no renewal brings it back, and DHCP may lease it at once.
    assert await store.renew_claims([(held.address, "alice")], clock.now + 3600) == [held.address]
    assert await store.record_leases([(dhcp_lease(held.address, clock), "granted")]) == {}
    result = await store.claim_address(claim("alice", clock, candidates=(held.address,)))
    assert result.lease is None  # now DHCP's


async def test_declined_addresses_are_not_claimed(store: Store, clock: FakeClock) -> None:
    declined = Lease("198.18.0.100", LeaseState.DECLINED, clock.now, clock.now + 86400, pool="shared")
    await store.record_leases([(declined, "declined")])
    result = await store.claim_address(claim("alice", clock))
    assert result.lease is not None and result.lease.address == "198.18.0.101"


async def test_a_claim_passes_over_another_subscriber_s_reserved_address(store: Store, clock: FakeClock) -> None:
    """RADIUS learns of a reservation at its next poll of the store: a login just after
    `reservation add` proposes the newly fixed address still, and the store must not give it."""
    alice = await store.add_subscriber("alice", actor="t")
    bob = await store.add_subscriber("bob", actor="t")
    await store.add_reservation("bob", ReservationKind.MAC, "02:00:00:00:0b:0b", actor="t", address="198.18.0.100")
    result = await store.claim_address(claim("alice", clock, subscriber_id=alice.id))
    assert result.lease is not None and result.lease.address == "198.18.0.101"
    # Only that candidate: nothing (a NAS that reports it gets a conflict logged, not the claim).
    alone = await store.claim_address(claim("alice 2", clock, candidates=("198.18.0.100",), subscriber_id=alice.id))
    assert alone.lease is None
    # Bob's own session on it (his PPPoE line reporting his router's fixed address) is his.
    own = await store.claim_address(claim("bob", clock, candidates=("198.18.0.100",), subscriber_id=bob.id))
    assert own.lease is not None and own.lease.address == "198.18.0.100"
