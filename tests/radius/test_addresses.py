"""RADIUS's view of its address pools: which addresses a claim should try, best first.

The store has the last word on who holds an address; these tests pin down that the view's
proposals are good ones (free addresses, a reconnecting holder's old address first) so that a
claim rarely has to try more than one.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from ispd.radius.addresses import CANDIDATES, SEVERAL, AddressPools, Claim, holder_of
from ispd.store.models import Lease, LeaseService, LeaseState

T0 = 1_800_000_000.0
ALICE = holder_of("alice", "02:00:5e:10:00:01")
BOB = holder_of("bob", "02:00:5e:10:00:02")


def small() -> AddressPools:
    """Three addresses: fewer than CANDIDATES, so every call looks at the whole pool, in order."""
    return AddressPools([("p", 0x0A000001, 0x0A000003)])  # 10.0.0.1 - 10.0.0.3


def session(address: str, holder: str, expires_at: float, subscriber_id: int | None = 7) -> Lease:
    return Lease(address, LeaseState.BOUND, T0, expires_at, client_id=holder, subscriber_id=subscriber_id,
                 pool="p", service=LeaseService.RADIUS)


def dhcp_lease(address: str, expires_at: float, state: LeaseState = LeaseState.BOUND) -> Lease:
    return Lease(address, state, T0, expires_at, hw_address="02:00:5e:10:00:09", pool="p")


def test_holder_is_the_login_on_its_line() -> None:
    # Two routers logging in as one user on different lines must not swap addresses.
    assert holder_of("alice", "eth0/1") == "alice eth0/1"
    assert holder_of("alice", None) == "alice"


def test_candidates_walk_the_pool_from_the_cursor_and_wrap_around() -> None:
    # Successive claims spread over the pool instead of all trying the first address.
    pools = AddressPools([("p", 0x0A000001, 0x0A00000A)])  # ten addresses
    assert CANDIDATES == 8
    assert pools.candidates("p", ALICE, T0) == tuple(f"10.0.0.{i}" for i in range(1, 9))
    assert pools.candidates("p", BOB, T0) == ("10.0.0.9", "10.0.0.10", *(f"10.0.0.{i}" for i in range(1, 7)))


def test_held_addresses_are_skipped() -> None:
    pools = small()
    pools.taken("10.0.0.2", T0 + 60)
    assert pools.candidates("p", ALICE, T0) == ("10.0.0.1", "10.0.0.3")


def test_a_full_pool_gives_no_candidates() -> None:
    # Empty means "don't even ask the store": the session gets no pool address.
    pools = small()
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        pools.taken(address, T0 + 60)
    assert pools.candidates("p", ALICE, T0) == ()


def test_taken_holds_an_address_only_until_it_expires() -> None:
    pools = small()
    pools.taken("10.0.0.1", T0 + 60)
    assert "10.0.0.1" not in pools.candidates("p", ALICE, T0 + 59)
    assert pools.candidates("p", ALICE, T0 + 61) == ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def test_a_dhcp_lease_on_the_bus_holds_its_address_until_it_expires() -> None:
    # A pool shared with DHCP: the client's lease keeps the address out of RADIUS's proposals.
    pools = small()
    pools.learn(dhcp_lease("10.0.0.2", T0 + 60), T0)
    assert pools.candidates("p", ALICE, T0) == ("10.0.0.1", "10.0.0.3")
    assert pools.candidates("p", ALICE, T0 + 61) == ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def test_a_dhcp_lease_that_ended_frees_its_address_at_once() -> None:
    pools = small()
    pools.learn(dhcp_lease("10.0.0.2", T0 + 60), T0)
    pools.learn(dhcp_lease("10.0.0.2", T0 + 10, LeaseState.RELEASED), T0 + 10)
    assert pools.candidates("p", ALICE, T0 + 10) == ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def test_addresses_outside_every_pool_are_ignored() -> None:
    # Leases of other DHCP pools come over the bus too; they must not disturb this view.
    pools = small()
    pools.learn(dhcp_lease("10.0.0.9", T0 + 60), T0)
    pools.learn(dhcp_lease("not an address", T0 + 60), T0)
    assert pools.held == {}


def test_ended_frees_an_address_before_its_expiry() -> None:
    pools = small()
    pools.claimed(session("10.0.0.1", BOB, T0 + 3600), T0)
    pools.ended("10.0.0.1")
    assert pools.candidates("p", ALICE, T0) == ("10.0.0.1", "10.0.0.2", "10.0.0.3")
    assert pools.claim_for("10.0.0.1", 7) is None


def test_a_returning_holder_gets_its_previous_address_first_when_it_is_free() -> None:
    # A reconnecting router keeps its address, even though the cursor is elsewhere.
    pools = small()
    pools.claimed(session("10.0.0.3", ALICE, T0 + 60), T0)
    pools.ended("10.0.0.3")
    assert pools.candidates("p", ALICE, T0) == ("10.0.0.3", "10.0.0.1", "10.0.0.2")


def test_a_returning_holder_gets_its_previous_address_first_while_it_still_holds_it() -> None:
    # The router re-authenticated before its old session ended: same address, not a second one.
    pools = small()
    pools.claimed(session("10.0.0.3", ALICE, T0 + 3600), T0)
    assert pools.candidates("p", ALICE, T0) == ("10.0.0.3", "10.0.0.1", "10.0.0.2")
    assert pools.candidates("p", BOB, T0) == ("10.0.0.1", "10.0.0.2")


def test_a_previous_address_someone_else_holds_now_is_not_proposed() -> None:
    pools = small()
    pools.claimed(session("10.0.0.3", ALICE, T0 + 60), T0)
    pools.taken("10.0.0.3", T0 + 3600)  # the store said: another holder has it
    assert pools.candidates("p", ALICE, T0 + 120) == ("10.0.0.1", "10.0.0.2")


def test_a_previous_address_a_dhcp_client_holds_now_is_not_proposed() -> None:
    pools = small()
    pools.claimed(session("10.0.0.3", ALICE, T0 + 60), T0)
    pools.learn(dhcp_lease("10.0.0.3", T0 + 3600), T0 + 120)
    assert pools.candidates("p", ALICE, T0 + 120) == ("10.0.0.1", "10.0.0.2")


def test_claim_for_matches_only_the_subscriber_it_was_given_to() -> None:
    # A Stop or an interim update from another subscriber naming the address must not free or
    # renew this one's claim.
    pools = small()
    pools.claimed(session("10.0.0.2", ALICE, T0 + 60, subscriber_id=7), T0)
    assert pools.claim_for("10.0.0.2", 7) == Claim(ALICE, 7, T0 + 60, granted_at=T0)
    assert pools.claim_for("10.0.0.2", 8) is None
    assert pools.claim_for("10.0.0.2", None) is None
    assert pools.claim_for("10.0.0.1", 7) is None
    assert pools.claim_for(None, 7) is None
    assert pools.claim_for("garbage", 7) is None


def test_claim_for_a_session_without_a_subscriber() -> None:
    pools = small()
    pools.claimed(session("10.0.0.2", ALICE, T0 + 60, subscriber_id=None), T0)
    assert pools.claim_for("10.0.0.2", None) == Claim(ALICE, None, T0 + 60, granted_at=T0)
    assert pools.claim_for("10.0.0.2", 7) is None


def test_a_dhcp_event_cannot_end_a_claim() -> None:
    # The store refuses DHCP an address a session holds, so a DHCP lease or its end on an address
    # claimed (and live) at the time is an event older than the claim (late across a worker's
    # bridge): ignored. Once the hold has lapsed, DHCP's word counts (the test above).
    pools = small()
    pools.claimed(session("10.0.0.2", ALICE, T0 + 60), T0)
    pools.learn(dhcp_lease("10.0.0.2", T0 + 3600), T0 + 1)
    pools.ended("10.0.0.2", elsewhere_at=T0 + 1)
    assert pools.claim_for("10.0.0.2", 7) == Claim(ALICE, 7, T0 + 60, granted_at=T0)
    pools.ended("10.0.0.2")  # a release of ours does end it
    assert pools.claim_for("10.0.0.2", 7) is None


def test_renewed_extends_the_hold_of_a_claim() -> None:
    pools = small()
    pools.claimed(session("10.0.0.2", ALICE, T0 + 60), T0)
    pools.renewed("10.0.0.2", T0 + 600)
    assert pools.claim_for("10.0.0.2", 7) == Claim(ALICE, 7, T0 + 600, granted_at=T0)
    assert pools.candidates("p", BOB, T0 + 120) == ("10.0.0.1", "10.0.0.3")


def test_renewed_leaves_an_address_held_by_someone_else_alone() -> None:
    # A late interim update for an address DHCP now has must not extend (or make) a claim.
    pools = small()
    pools.learn(dhcp_lease("10.0.0.2", T0 + 60), T0)
    pools.renewed("10.0.0.2", T0 + 600)
    assert pools.claim_for("10.0.0.2", 7) is None
    assert pools.candidates("p", BOB, T0 + 61) == ("10.0.0.1", "10.0.0.2", "10.0.0.3")


def test_load_takes_the_live_leases_from_the_store() -> None:
    pools = small()
    pools.load([session("10.0.0.1", ALICE, T0 + 60), dhcp_lease("10.0.0.2", T0 + 60),
                dhcp_lease("10.0.0.3", T0 - 1)], T0)  # the last one expired while ispd was down
    assert pools.candidates("p", BOB, T0) == ("10.0.0.3",)
    assert pools.claim_for("10.0.0.1", 7) == Claim(ALICE, 7, T0 + 60, granted_at=T0)  # the lease's start


def test_reserved_addresses_are_never_proposed() -> None:
    # A subscriber's fixed address inside a pool is theirs alone, whoever asks the pool.
    pools = small()
    assert pools.candidates("p", BOB, T0, reserved={"10.0.0.1", "10.0.0.3"}) == ("10.0.0.2",)


def test_a_claim_held_long_enough_is_given_again_without_the_store() -> None:
    pools = small()
    pools.claimed(session("10.0.0.2", ALICE, T0 + 3600), T0)
    assert pools.reuse(ALICE, "p", T0 + 10, until=T0 + 1800) == "10.0.0.2"
    # Given again naming no session: for another session, maybe (a Stop then waits before it frees it).
    assert pools.claim_for("10.0.0.2", 7) == Claim(ALICE, 7, T0 + 3600, granted_at=T0 + 10, regiven_for=SEVERAL)
    assert pools.reuse(ALICE, "p", T0 + 2000, until=T0 + 3800) is None  # too little left: renew in the store
    assert pools.reuse(BOB, "p", T0 + 10, until=T0 + 1800) is None
    assert pools.reuse(ALICE, "other", T0 + 10, until=T0 + 1800) is None  # the plan's pool changed


def test_a_claim_remembers_whether_every_re_give_named_one_session() -> None:
    """Only re-authentications of one session (each naming it) let that session's Stop free the
    address at once: a redial's Accept among them means another session may be about to use it."""
    pools = small()
    pools.claimed(session("10.0.0.2", ALICE, T0 + 3600), T0)
    pools.reuse(ALICE, "p", T0 + 10, until=T0 + 1800, session_id="s1")
    pools.reuse(ALICE, "p", T0 + 20, until=T0 + 1800, session_id="s1")
    claim = pools.claim_for("10.0.0.2", 7)
    assert claim is not None and claim.regiven_for == "s1"
    pools.reuse(ALICE, "p", T0 + 30, until=T0 + 1800, session_id="s2")
    claim = pools.claim_for("10.0.0.2", 7)
    assert claim is not None and claim.regiven_for == SEVERAL
    pools.reuse(ALICE, "p", T0 + 40, until=T0 + 1800, session_id="s1")
    claim = pools.claim_for("10.0.0.2", 7)
    assert claim is not None and claim.regiven_for == SEVERAL  # once several, until claimed anew


def test_unclaimable_addresses_are_never_proposed_nor_given_again() -> None:
    # A DHCP pool's router inside a RADIUS pool (Config.radius_pool_routers): a session that
    # held it before keeps it, but a reconnect goes through the store to another address.
    pools = AddressPools([("p", 0x0A000001, 0x0A000003)], unclaimable=[0x0A000001])
    assert pools.candidates("p", BOB, T0) == ("10.0.0.2", "10.0.0.3")
    pools.claimed(session("10.0.0.1", ALICE, T0 + 3600), T0)
    assert pools.reuse(ALICE, "p", T0 + 10, until=T0 + 1800) is None
    pools.ended("10.0.0.1")
    assert "10.0.0.1" not in pools.candidates("p", ALICE, T0 + 20)


def test_a_run_of_reserved_addresses_does_not_make_the_pool_look_full() -> None:
    # Static customers' fixed addresses at the start of a pool, more of them than one claim's
    # candidates: the free ones after them are proposed all the same (the login was refused as
    # pool_exhausted).
    pools = AddressPools([("p", int(IPv4Address("10.0.0.1")), int(IPv4Address("10.0.0.20")))])
    reserved = {f"10.0.0.{n}" for n in range(1, CANDIDATES + 3)}
    assert pools.candidates("p", BOB, T0, reserved=reserved)[:2] == (f"10.0.0.{CANDIDATES + 3}",
                                                                     f"10.0.0.{CANDIDATES + 4}")
