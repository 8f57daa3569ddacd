"""DHCP reservations and lease history in the store: canonical forms, conflicts, audit, events."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from ispd.events import ReservationAdded, ReservationDeleted, SubscriberDeleted, event_from_audit
from ispd.store import Conflict, InvalidValue, NotFound, Store
from ispd.store.models import AuditEntry, Lease, LeaseState, Reservation, ReservationKind, Subscriber
from tests.store.conftest import FakeClock


async def test_reservations_are_kept_in_canonical_form(store: Store, clock: FakeClock) -> None:
    alice = await store.add_subscriber("alice", actor="t")
    by_mac = await store.add_reservation("alice", ReservationKind.MAC, " 02-00-5E-10-00-01 ", actor="t",
                                         address=" 198.18.0.10", hostname="CPE-Alice.")
    assert by_mac == Reservation(id=by_mac.id, subscriber_id=alice.id, kind=ReservationKind.MAC,
                                 key="02:00:5e:10:00:01", address="198.18.0.10", hostname="cpe-alice",
                                 created_at=clock.now)
    by_client_id = await store.add_reservation(alice.id, ReservationKind.CLIENT_ID, "01:02:00:5E:10:00:02", actor="t")
    assert (by_client_id.key, by_client_id.address, by_client_id.hostname) == ("0102005e100002", None, None)
    by_circuit = await store.add_reservation("alice", ReservationKind.CIRCUIT_ID, "0x657468302f31", actor="t")
    assert by_circuit.key == "eth0/1"  # printable bytes written in hex come back as text
    # A plain string names the kind as well as the enum does.
    by_remote = await store.add_reservation("alice", "remote-id", "bng1", actor="t")  # type: ignore[arg-type]
    assert by_remote.kind is ReservationKind.REMOTE_ID

    assert await store.list_reservations() == [by_mac, by_client_id, by_circuit, by_remote]
    assert await store.list_reservations(subscriber="alice") == [by_mac, by_client_id, by_circuit, by_remote]
    assert (await store.subscriber_overview("alice")).reservations == [by_mac, by_client_id, by_circuit, by_remote]


async def test_list_is_by_id_and_can_be_narrowed_to_one_subscriber(store: Store) -> None:
    await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("bob", actor="t")
    first = await store.add_reservation("bob", ReservationKind.MAC, "02:00:00:00:00:01", actor="t")
    second = await store.add_reservation("alice", ReservationKind.MAC, "02:00:00:00:00:02", actor="t")
    third = await store.add_reservation("bob", ReservationKind.MAC, "02:00:00:00:00:03", actor="t")
    assert [r.id for r in await store.list_reservations()] == [first.id, second.id, third.id]
    assert await store.list_reservations(subscriber="bob") == [first, third]
    with pytest.raises(NotFound, match="no subscriber 'carol'"):
        await store.list_reservations(subscriber="carol")


async def test_a_key_or_address_taken_is_a_conflict_naming_its_holder(store: Store) -> None:
    await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("bob", actor="t")
    held = await store.add_reservation("alice", ReservationKind.MAC, "02:00:5e:10:00:01", actor="t",
                                       address="198.18.0.10")
    before = await store.last_audit_id()
    with pytest.raises(Conflict) as caught:
        await store.add_reservation("bob", ReservationKind.MAC, "02005E100001", actor="t")
    assert str(caught.value) == f"mac 02:00:5e:10:00:01 is already reserved for alice (reservation #{held.id})"
    with pytest.raises(Conflict) as caught:
        await store.add_reservation("bob", ReservationKind.CIRCUIT_ID, "eth0/2", actor="t", address="198.18.0.10")
    assert str(caught.value) == ("address 198.18.0.10 is already reserved for alice"
                                 f" (mac 02:00:5e:10:00:01, reservation #{held.id})")
    with pytest.raises(Conflict, match="already reserved for alice"):  # the same subscriber twice, too
        await store.add_reservation("alice", ReservationKind.MAC, "02:00:5e:10:00:01", actor="t")
    # Nothing of the refused writes was kept, not even in the audit log.
    assert await store.list_reservations() == [held]
    assert await store.last_audit_id() == before
    # The same text under another kind is another key; reservations without an address never clash.
    await store.add_reservation("bob", ReservationKind.CIRCUIT_ID, "02:00:5e:10:00:01", actor="t")
    await store.add_reservation("bob", ReservationKind.REMOTE_ID, "r1", actor="t")
    await store.add_reservation("bob", ReservationKind.REMOTE_ID, "r2", actor="t")
    # Once deleted, the key and the address are free again.
    await store.delete_reservation(held.id, actor="t")
    again = await store.add_reservation("bob", ReservationKind.MAC, "02:00:5e:10:00:01", actor="t",
                                        address="198.18.0.10")
    assert again.subscriber_id == (await store.get_subscriber("bob")).id


@pytest.mark.parametrize(
    ("kind", "key", "address", "hostname", "message"),
    [
        ("mac", "02:00:5e:10:00", None, None, "'02:00:5e:10:00' is not a MAC address"),
        ("mac", "zz:00:5e:10:00:01", None, None, "is not a MAC address"),
        ("client-id", "0", None, None, "is not a client identifier"),
        ("circuit-id", "", None, None, "the circuit-id is empty"),
        ("remote-id", "0xzz", None, None, "after 0x, write the bytes in hex"),
        ("circuit-id", "0x", None, None, "'0x': a circuit-id has 1 to 255 bytes, not 0"),
        ("remote-id", "0x" + "ab" * 256, None, None, "a remote-id has 1 to 255 bytes, not 256"),
        ("serial", "x", None, None, "unknown reservation kind 'serial'"),
        ("mac", "02:00:5e:10:00:01", "198.18.0.300", None, "'198.18.0.300' is not an IPv4 address"),
        ("mac", "02:00:5e:10:00:01", "198.18.0.0/24", None, "is not an IPv4 address"),
        ("mac", "02:00:5e:10:00:01", "198.018.0.1", None, "is not an IPv4 address"),
        ("mac", "02:00:5e:10:00:01", "2001:db8::1", None, "is not an IPv4 address"),
        ("mac", "02:00:5e:10:00:01", "0.0.0.0", None, "0.0.0.0 is the unspecified address"),
        ("mac", "02:00:5e:10:00:01", "127.0.0.2", None, "127.0.0.2 is a loopback address"),
        ("mac", "02:00:5e:10:00:01", "169.254.1.1", None, "is a link-local address"),
        ("mac", "02:00:5e:10:00:01", "224.0.0.1", None, "is a multicast address"),
        ("mac", "02:00:5e:10:00:01", "255.255.255.255", None, "is a reserved or broadcast address"),
        ("mac", "02:00:5e:10:00:01", None, "under_score", "'under_score' is not a host name"),
        ("mac", "02:00:5e:10:00:01", None, "-leading", "is not a host name"),
        ("mac", "02:00:5e:10:00:01", None, "a" * 64, "is not a host name"),
        ("mac", "02:00:5e:10:00:01", None, "", "is not a host name"),
        ("mac", "02:00:5e:10:00:01", None, "café", "is not a host name"),
    ],
)
async def test_values_that_cannot_be_reserved_are_invalid(store: Store, kind: str, key: str, address: str | None,
                                                          hostname: str | None, message: str) -> None:
    await store.add_subscriber("alice", actor="t")
    before = await store.last_audit_id()
    with pytest.raises(InvalidValue, match=re.escape(message)):
        await store.add_reservation("alice", kind, key, actor="t", address=address,  # type: ignore[arg-type]
                                    hostname=hostname)
    assert await store.list_reservations() == [] and await store.last_audit_id() == before


async def test_a_reservation_needs_a_subscriber(store: Store) -> None:
    with pytest.raises(NotFound, match="no subscriber 'nobody'"):
        await store.add_reservation("nobody", ReservationKind.MAC, "02:00:5e:10:00:01", actor="t")


async def test_a_login_is_one_subscribers_username_or_reservation(store: Store) -> None:
    """RADIUS finds a subscriber by its username or by a login reserved for it: neither may take
    the other's name."""
    await store.add_subscriber("alice", actor="t")
    bob = await store.add_subscriber("bob", actor="t")
    with pytest.raises(Conflict, match=r"^username alice is the login of subscriber alice \(#1\)$"):
        await store.add_reservation("bob", ReservationKind.USERNAME, "alice", actor="t")
    reserved = await store.add_reservation("bob", ReservationKind.USERNAME, "carol@pppoe", actor="t")
    with pytest.raises(Conflict, match=rf"^'carol@pppoe' is a login reserved for bob \(reservation #{reserved.id}\)$"):
        await store.add_subscriber("carol@pppoe", actor="t")
    # A subscriber's own username as a login of its own changes nothing, and is not refused.
    await store.add_reservation("bob", ReservationKind.USERNAME, "bob", actor="t", address="198.18.0.9")
    assert {r.key for r in await store.list_reservations(subscriber=bob.id)} == {"carol@pppoe", "bob"}


async def test_deleting_an_unknown_reservation_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match=r"^no reservation #42$"):
        await store.delete_reservation(42, actor="t")


async def test_changes_are_audited_and_announced_as_events(store: Store, clock: FakeClock) -> None:
    alice = await store.add_subscriber("alice", actor="t")
    start = await store.last_audit_id()
    added = await store.add_reservation("alice", ReservationKind.MAC, "02:00:5e:10:00:01", actor="cli:root",
                                        address="198.18.0.10", hostname="cpe")
    clock.now += 60
    deleted = await store.delete_reservation(added.id, actor="cli:ops")
    assert deleted == added
    assert await store.list_reservations() == []

    entries = await store.audit_since(start)
    details = {"reservation_id": added.id, "kind": "mac", "key": "02:00:5e:10:00:01", "address": "198.18.0.10",
               "hostname": "cpe", "address6": None, "prefix6": None}
    assert entries == [
        AuditEntry(entries[0].id, clock.now - 60, "cli:root", "reservation.added", "subscriber", alice.id, "alice",
                   details),
        AuditEntry(entries[1].id, clock.now, "cli:ops", "reservation.deleted", "subscriber", alice.id, "alice",
                   details),
    ]
    assert [event_from_audit(e) for e in entries] == [
        ReservationAdded(clock.now - 60, alice.id, "alice", reservation_id=added.id, kind="mac",
                         key="02:00:5e:10:00:01", address="198.18.0.10", hostname="cpe"),
        ReservationDeleted(clock.now, alice.id, "alice", reservation_id=added.id, kind="mac",
                           key="02:00:5e:10:00:01", address="198.18.0.10", hostname="cpe"),
    ]
    # The helpdesk view shows the changes among the subscriber's recent ones.
    assert [a.action for a in (await store.subscriber_overview("alice")).audit][:2] == [
        "reservation.deleted", "reservation.added"]


async def test_deleting_a_subscriber_announces_each_of_its_reservations_gone(store: Store) -> None:
    alice = await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("bob", actor="t")
    first = await store.add_reservation("alice", ReservationKind.MAC, "02:00:00:00:00:01", actor="t",
                                        address="198.18.0.10")
    second = await store.add_reservation("alice", ReservationKind.CIRCUIT_ID, "eth0/1", actor="t")
    kept = await store.add_reservation("bob", ReservationKind.MAC, "02:00:00:00:00:02", actor="t")
    start = await store.last_audit_id()
    await store.delete_subscriber("alice", actor="t")
    assert await store.list_reservations() == [kept]
    events = [event_from_audit(e) for e in await store.audit_since(start)]
    assert [(type(e).__name__, getattr(e, "reservation_id", None)) for e in events] == [
        ("ReservationDeleted", first.id), ("ReservationDeleted", second.id), ("SubscriberDeleted", None)]
    assert isinstance(events[0], ReservationDeleted) and events[0].address == "198.18.0.10"
    assert isinstance(events[2], SubscriberDeleted) and events[2].subscriber_id == alice.id
    # The address is free for someone else.
    await store.add_reservation("bob", ReservationKind.MAC, "02:00:00:00:00:01", actor="t", address="198.18.0.10")


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"reservation_id": "1", "kind": "mac", "key": "02:00:00:00:00:01"},
        {"reservation_id": 1, "kind": None, "key": "02:00:00:00:00:01"},
        {"reservation_id": 1, "kind": "serial", "key": "02:00:00:00:00:01"},
        {"reservation_id": 1, "kind": "mac"},
    ],
)
def test_an_unreadable_reservation_entry_announces_nothing(details: dict[str, object]) -> None:
    """Raising would stall the audit relay on this entry for good."""
    entry = AuditEntry(1, 1.0, "x", "reservation.added", "subscriber", 3, "alice", details)
    assert event_from_audit(entry) is None


def test_odd_optional_fields_in_an_entry_are_dropped() -> None:
    entry = AuditEntry(1, 1.0, "x", "reservation.deleted", "subscriber", 3, "alice",
                       {"reservation_id": 7, "kind": "mac", "key": "k", "address": 5, "hostname": ["h"]})
    assert event_from_audit(entry) == ReservationDeleted(1.0, 3, "alice", reservation_id=7, kind="mac", key="k",
                                                         address=None, hostname=None)


# --- lease lookup and history


async def test_get_lease_returns_the_current_state_of_an_address(store: Store, clock: FakeClock) -> None:
    alice = await store.add_subscriber("alice", actor="t")
    now = clock.now
    with pytest.raises(NotFound, match=r"^no lease for 198.18.0.10$"):
        await store.get_lease("198.18.0.10")
    granted = Lease("198.18.0.10", LeaseState.BOUND, now, now + 3600, hw_address="02:00:00:00:00:01",
                    subscriber_id=alice.id, pool="home")
    await store.record_lease(granted, event="granted")
    assert await store.get_lease("198.18.0.10") == granted
    assert await store.get_lease(" 198.18.0.10 ") == granted  # the same canonical form as everywhere
    released = Lease("198.18.0.10", LeaseState.RELEASED, now, now + 60, hw_address="02:00:00:00:00:01")
    await store.record_lease(released, event="released")
    assert await store.get_lease("198.18.0.10") == released  # ended leases are still the address's state
    with pytest.raises(InvalidValue, match=r"'198\.18\.0' is not an IPv4 address"):
        await store.get_lease("198.18.0")


async def test_history_is_newest_first_limited_and_outlives_the_subscriber(store: Store, clock: FakeClock) -> None:
    alice = await store.add_subscriber("alice", actor="t")
    start = clock.now
    events = ["granted", "renewed", "renewed", "released"]
    for i, event in enumerate(events):
        clock.now = start + 600 * i
        state = LeaseState.RELEASED if event == "released" else LeaseState.BOUND
        await store.record_lease(Lease("198.18.0.10", state, start, clock.now + 1200, hw_address="02:00:00:00:00:01",
                                       hostname="cpe", subscriber_id=alice.id, circuit_id="eth0/1",
                                       remote_id="bng1", pool="home", client_id="0102"), event=event)
    await store.record_lease(Lease("198.18.0.11", LeaseState.BOUND, start, start + 60), event="granted")
    await store.delete_subscriber("alice", actor="t")

    history = await store.lease_history("198.18.0.10")
    assert [h.event for h in history] == ["released", "renewed", "renewed", "granted"]
    newest = history[0]
    assert (newest.at, newest.address, newest.starts_at, newest.expires_at) == (
        start + 1800, "198.18.0.10", start, start + 3000)
    assert (newest.hw_address, newest.client_id, newest.hostname, newest.circuit_id, newest.remote_id,
            newest.pool) == ("02:00:00:00:00:01", "0102", "cpe", "eth0/1", "bng1", "home")
    assert (newest.subscriber_id, newest.username) == (alice.id, "alice")  # "who had it" survives the account
    assert history[0].id > history[1].id > history[2].id > history[3].id
    assert [h.event for h in await store.lease_history("198.18.0.10", limit=2)] == ["released", "renewed"]
    assert [h.address for h in await store.lease_history("198.18.0.11")] == ["198.18.0.11"]
    assert await store.lease_history("198.18.0.12") == []


async def test_history_in_recording_order_even_when_the_clock_steps_back(store: Store, clock: FakeClock) -> None:
    await store.record_lease(Lease("198.18.0.10", LeaseState.BOUND, 0, 10), event="granted")
    clock.now -= 30  # NTP stepped the clock back
    await store.record_lease(Lease("198.18.0.10", LeaseState.RELEASED, 0, 10), event="released")
    assert [h.event for h in await store.lease_history("198.18.0.10")] == ["released", "granted"]


async def test_history_rejects_a_bad_address_or_limit(store: Store) -> None:
    with pytest.raises(InvalidValue, match="is not an IPv4 address"):
        await store.lease_history("nope")
    with pytest.raises(InvalidValue, match="limit must be at least 1"):
        await store.lease_history("198.18.0.10", limit=0)


async def test_an_address_someone_else_holds_cannot_be_reserved(store: Store, clock: FakeClock) -> None:
    """RADIUS hands a reserved address out as it is: reserving one that another subscriber's
    session (or a stranger's DHCP lease) holds would give it twice."""
    from ispd.store.models import AddressClaim

    alice = await store.add_subscriber("alice", actor="t")
    dave = await store.add_subscriber("dave", actor="t")
    claimed = await store.claim_address(AddressClaim("shared", ("198.18.60.100",), "alice", clock.now + 600,
                                                     subscriber_id=alice.id))
    assert claimed.lease is not None and claimed.lease.address == "198.18.60.100"
    with pytest.raises(Conflict, match=r"198.18.60.100 is in use: RADIUS gave it to alice until"):
        await store.add_reservation("dave", ReservationKind.USERNAME, "dave-a", actor="t", address="198.18.60.100")
    # Nor may the subscriber's other login: its session would get the address beside the first
    # line's. The login that holds it may have it made fixed, and anyone once the hold has lapsed.
    with pytest.raises(Conflict, match=r"198.18.60.100 is in use: RADIUS gave it to alice until"):
        await store.add_reservation("alice", ReservationKind.USERNAME, "alice-a", actor="t", address="198.18.60.100")
    await store.add_reservation("alice", ReservationKind.USERNAME, "alice", actor="t", address="198.18.60.100")
    await store.delete_reservation((await store.list_reservations(subscriber="alice"))[0].id, actor="t")
    clock.now += 601
    await store.add_reservation("dave", ReservationKind.USERNAME, "dave-a", actor="t", address="198.18.60.100")
    assert dave.id != alice.id
    stranger = Lease("198.18.60.101", LeaseState.BOUND, clock.now, clock.now + 3600, hw_address="02:00:00:00:00:09")
    await store.record_leases([(stranger, "granted")])
    with pytest.raises(Conflict, match=r"198.18.60.101 is in use: DHCP gave it to 02:00:00:00:00:09 until"):
        await store.add_reservation("dave", ReservationKind.MAC, "02:00:00:00:00:04", actor="t", address="198.18.60.101")
    # The device (or line) that has it may have it made fixed, whatever key names it.
    await store.add_reservation("dave", ReservationKind.MAC, "02:00:00:00:00:09", actor="t", address="198.18.60.101")
    for number, (kind, key, fields) in enumerate([
            (ReservationKind.CLIENT_ID, "0152540000aabb01", {"client_id": "0152540000aabb01"}),
            (ReservationKind.CIRCUIT_ID, "eth0/1/7", {"circuit_id": "eth0/1/7"}),
            (ReservationKind.REMOTE_ID, "cpe-0003", {"remote_id": "cpe-0003"})]):
        address = f"198.18.60.{110 + number}"
        device = Lease(address, LeaseState.BOUND, clock.now, clock.now + 3600, hw_address=f"02:00:00:00:01:0{number}",
                       **fields)  # type: ignore[arg-type]
        await store.record_leases([(device, "granted")])
        await store.add_reservation("dave", kind, key, actor="t", address=address)


LINE1 = "02:00:00:00:02:02"


async def _bob_online_on_line1(store: Store, clock: FakeClock, *, login: str) -> Subscriber:
    """bob, whose session on LINE1 under ``login`` holds 198.18.60.101 from a shared pool."""
    from ispd.store.models import AccountingRecord, AccountingStatus, AddressClaim

    bob = await store.add_subscriber("bob", actor="t")
    claim = AddressClaim("shared", ("198.18.60.101",), f"bob {LINE1}", clock.now + 600, subscriber_id=bob.id,
                         hw_address=LINE1, circuit_id=LINE1)
    assert (await store.claim_address(claim)).lease is not None
    await store.record_accounting([AccountingRecord(
        at=clock.now, status=AccountingStatus.START, nas_address="198.18.0.1", acct_session_id="s1",
        username=login, subscriber_id=bob.id, framed_ip="198.18.60.101", calling_station_id=LINE1)])
    return bob


async def test_an_address_the_subscriber_s_other_line_or_device_holds_cannot_be_reserved(
        store: Store, clock: FakeClock) -> None:
    """RADIUS hands a login's or a line's fixed address out as it is: fixing, for a second line
    or login of one subscriber, the address its first line's session (or its router's DHCP lease)
    holds now would put one address on both at once. The line, device or login that holds it
    may have it made fixed."""
    from ispd.store.models import AccountingRecord, AccountingStatus

    bob = await _bob_online_on_line1(store, clock, login="bob")
    router = Lease("198.18.60.102", LeaseState.BOUND, clock.now, clock.now + 3600, hw_address="02:00:5e:00:00:07",
                   subscriber_id=bob.id)
    await store.record_leases([(router, "granted")])
    for kind, key, address, holder in [
            (ReservationKind.USERNAME, "bob@line2", "198.18.60.101", "RADIUS gave it to bob"),
            (ReservationKind.MAC, "02:00:00:00:02:03", "198.18.60.101", "RADIUS gave it to bob"),
            (ReservationKind.USERNAME, "bob@line2", "198.18.60.102", "DHCP gave it to bob"),
            (ReservationKind.CIRCUIT_ID, "eth0/1/9", "198.18.60.102", "DHCP gave it to bob")]:
        with pytest.raises(Conflict, match=f"{address} is in use: {holder} until"):
            await store.add_reservation("bob", kind, key, actor="t", address=address)
    login2 = await store.add_reservation("bob", ReservationKind.USERNAME, "bob@line2", actor="t")
    with pytest.raises(Conflict, match=r"198.18.60.101 is in use: RADIUS gave it to bob until"):
        await store.update_reservation(login2.id, actor="t", address="198.18.60.101")
    # What holds it: the first line (its MAC, the login it used, the subscriber's username), the router.
    for kind, key, address in [(ReservationKind.MAC, LINE1, "198.18.60.101"),
                               (ReservationKind.USERNAME, "bob", "198.18.60.101"),
                               (ReservationKind.MAC, "02:00:5e:00:00:07", "198.18.60.102")]:
        added = await store.add_reservation("bob", kind, key, actor="t", address=address)
        await store.delete_reservation(added.id, actor="t")
    # A session that logged in under the second login has it: that login may have it fixed.
    await store.record_accounting([AccountingRecord(
        at=clock.now, status=AccountingStatus.START, nas_address="198.18.0.1", acct_session_id="s2",
        username="bob@line2", subscriber_id=bob.id, framed_ip="198.18.60.101", calling_station_id=LINE1)])
    await store.update_reservation(login2.id, actor="t", address="198.18.60.101")


async def test_the_subscriber_s_username_may_not_fix_an_address_another_of_its_logins_holds(
        store: Store, clock: FakeClock) -> None:
    """The subscriber's own username is a login like the others: with bob's session under
    bob@line1 holding the address, fixing it for the login "bob" would have bob's session on a
    second line get it beside the first (the claim's subscriber username is not the login)."""
    await _bob_online_on_line1(store, clock, login="bob@line1")
    with pytest.raises(Conflict, match=r"198.18.60.101 is in use: RADIUS gave it to bob until"):
        await store.add_reservation("bob", ReservationKind.USERNAME, "bob", actor="t", address="198.18.60.101")
    await store.add_reservation("bob", ReservationKind.USERNAME, "bob@line1", actor="t", address="198.18.60.101")


# --- changing a reservation


async def test_a_change_sets_and_clears_fields_in_place_and_is_audited(store: Store, clock: FakeClock) -> None:
    from ispd.events import ReservationChanged

    alice = await store.add_subscriber("alice", actor="t")
    added = await store.add_reservation("alice", ReservationKind.CIRCUIT_ID, "eth0/1", actor="t",
                                        address="198.18.0.10", hostname="gw")
    start = await store.last_audit_id()
    clock.now += 60
    changed = await store.update_reservation(added.id, actor="cli:ops", address=" 198.18.0.11", hostname=None,
                                             prefix6="2001:DB8:200::/48")
    assert changed == Reservation(id=added.id, subscriber_id=alice.id, kind=ReservationKind.CIRCUIT_ID,
                                  key="eth0/1", address="198.18.0.11", hostname=None, created_at=added.created_at,
                                  prefix6="2001:db8:200::/48")
    assert await store.list_reservations() == [changed]
    # What is not named stays; a change to the values it has already is no change, and not audited.
    assert await store.update_reservation(added.id, actor="t", address="198.18.0.11") == changed
    assert await store.update_reservation(added.id, actor="t") == changed
    entries = await store.audit_since(start)
    assert [(e.action, e.actor) for e in entries] == [("reservation.changed", "cli:ops")]
    assert entries[0].details == {
        "reservation_id": added.id, "kind": "circuit-id", "key": "eth0/1", "address": "198.18.0.11",
        "hostname": None, "address6": None, "prefix6": "2001:db8:200::/48",
        "previous": {"address": "198.18.0.10", "hostname": "gw", "prefix6": None}}
    assert event_from_audit(entries[0]) == ReservationChanged(
        clock.now, alice.id, "alice", reservation_id=added.id, kind="circuit-id", key="eth0/1",
        address="198.18.0.11", hostname=None, prefix6="2001:db8:200::/48")
    with pytest.raises(NotFound, match=r"^no reservation #999$"):
        await store.update_reservation(999, actor="t", address="198.18.0.12")


async def test_a_change_is_checked_as_a_new_reservation_is(store: Store, clock: FakeClock) -> None:
    from ispd.store.models import AddressClaim

    await store.add_subscriber("alice", actor="t")
    bob = await store.add_subscriber("bob", actor="t")
    mac = await store.add_reservation("alice", ReservationKind.MAC, "02:00:00:00:00:01", actor="t",
                                      address="198.18.0.10")
    login = await store.add_reservation("alice", ReservationKind.USERNAME, "alice@pppoe", actor="t",
                                        prefix6="2001:db8:200::/48", address6="2001:db8:1::1")
    theirs = await store.add_reservation("bob", ReservationKind.USERNAME, "bob@pppoe", actor="t",
                                         address="198.18.0.20", prefix6="2001:db8:300::/48")
    await store.claim_address(AddressClaim("shared", ("198.18.60.100",), "bob", clock.now + 600, subscriber_id=bob.id))
    refused = [
        (mac.id, {"address": "198.18.0.20"}, Conflict, r"^address 198.18.0.20 is already reserved for bob \(username"),
        (mac.id, {"address": "198.18.60.100"}, Conflict, r"198.18.60.100 is in use: RADIUS gave it to bob until"),
        (mac.id, {"prefix6": "2001:db8:400::/48"}, InvalidValue, r"a mac reservation holds no IPv6"),
        (mac.id, {"address": "198.18.0"}, InvalidValue, r"198.18.0"),
        (login.id, {"prefix6": "2001:db8:300:100::/56"}, Conflict, r"overlaps 2001:db8:300::/48, reserved for bob"),
        (login.id, {"address6": "2001:db8:300::1"}, Conflict, r"lies inside prefix 2001:db8:300::/48, reserved for bob"),
        (theirs.id, {"prefix6": "2001:db8:200::/40"}, Conflict, r"overlaps 2001:db8:200::/48, reserved for alice"),
    ]
    for reservation_id, change, error, message in refused:
        with pytest.raises(error, match=message):
            await store.update_reservation(reservation_id, actor="t", **change)  # type: ignore[arg-type]
    # Refused changes leave everything as it was.
    assert await store.list_reservations() == [mac, login, theirs]
    # A reservation's own values are no conflict with themselves: its prefix may move inside the
    # room it had, its address6 stay inside it.
    moved = await store.update_reservation(login.id, actor="t", prefix6="2001:db8:200::/56")
    assert (moved.prefix6, moved.address6) == ("2001:db8:200::/56", "2001:db8:1::1")
    widened = await store.update_reservation(login.id, actor="t", prefix6="2001:db8:200::/47")
    assert widened.prefix6 == "2001:db8:200::/47"
    # The overlap index follows the change: the new room is taken, and free again once left.
    with pytest.raises(Conflict, match=r"overlaps 2001:db8:200::/47"):
        await store.add_reservation("bob", ReservationKind.DUID, "00:03:00:01:02:00:5e:10:00:09", actor="t",
                                    prefix6="2001:db8:201::/48")
    await store.update_reservation(login.id, actor="t", prefix6="2001:db8:200::/56")
    await store.add_reservation("bob", ReservationKind.DUID, "00:03:00:01:02:00:5e:10:00:09", actor="t",
                                prefix6="2001:db8:201::/48")


async def test_fill_only_sets_only_what_is_empty(store: Store) -> None:
    await store.add_subscriber("alice", actor="t")
    login = await store.add_reservation("alice", ReservationKind.USERNAME, "alice@pppoe", actor="t",
                                        address="198.18.0.10")
    filled = await store.update_reservation(login.id, actor="radius", prefix6="2001:db8:200::/56", fill_only=True)
    assert (filled.address, filled.prefix6) == ("198.18.0.10", "2001:db8:200::/56")
    with pytest.raises(Conflict, match=r"^reservation #\d+ has prefix6 2001:db8:200::/56 already$"):
        await store.update_reservation(login.id, actor="radius", prefix6="2001:db8:300::/56", fill_only=True)
    assert await store.update_reservation(login.id, actor="radius", prefix6="2001:db8:200::/56",
                                          fill_only=True) == filled


async def test_a_deleted_reservations_number_is_not_given_again_and_a_change_names_the_one_it_read(
        store: Store) -> None:
    """SQLite numbers a new row past the highest there is, so a deleted newest reservation's
    number went to the next one added: a writer that held it (RADIUS filling a login's
    reservation with a pool's prefix, a script's `reservation set N`) changed another's. Numbers
    are never given again now (migration 17), and a writer that read a reservation also names it
    as read, so that not even a store copied in behind it changes another."""
    await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("bob", actor="t")
    read = await store.add_reservation("alice", ReservationKind.USERNAME, "alice@pppoe", actor="t")
    assert await store.update_reservation(read.id, actor="radius", hostname="a", expected=read) == replace(
        read, hostname="a")
    await store.delete_reservation(read.id, actor="t")
    bobs = await store.add_reservation("bob", ReservationKind.USERNAME, "bob@pppoe", actor="t")
    assert bobs.id == read.id + 1
    with pytest.raises(NotFound, match=rf"^no reservation #{read.id}$"):
        await store.update_reservation(read.id, actor="radius", prefix6="2001:db8:200::/56", fill_only=True,
                                       expected=read)
    with pytest.raises(NotFound, match=rf"^no reservation #{bobs.id} of username alice@pppoe any more$"):
        await store.update_reservation(bobs.id, actor="radius", prefix6="2001:db8:200::/56", fill_only=True,
                                       expected=replace(read, id=bobs.id))
    assert await store.list_reservations() == [bobs]


async def test_a_host_name_is_one_subscribers(store: Store) -> None:
    """Its first label is the lease's name in DNS: two subscribers' devices would take it from
    each other at every renewal. One subscriber's router may have it by MAC and by DUID."""
    await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("bob", actor="t")
    await store.add_reservation("alice", ReservationKind.MAC, "02:00:5e:10:00:01", actor="t", hostname="gw")
    await store.add_reservation("alice", ReservationKind.DUID, "00:03:00:01:02:00:5e:10:00:01", actor="t",
                                hostname="GW.")
    for name in ("gw", "gw.home.arpa"):
        with pytest.raises(Conflict, match=r"^host name gw is already reserved for alice \(mac 02:00:5e:10:00:01"):
            await store.add_reservation("bob", ReservationKind.MAC, "02:00:5e:10:00:02", actor="t", hostname=name)
    bobs = await store.add_reservation("bob", ReservationKind.MAC, "02:00:5e:10:00:02", actor="t", hostname="gw2")
    with pytest.raises(Conflict, match=r"host name gw is already reserved for alice"):
        await store.update_reservation(bobs.id, actor="t", hostname="gw")
    assert (await store.update_reservation(bobs.id, actor="t", hostname="gw2.lan")).hostname == "gw2.lan"


async def test_an_address_an_open_session_has_outside_the_pools_cannot_be_reserved_for_another(
        store: Store, clock: FakeClock) -> None:
    """A session's address outside every pool has no lease row (its login's fixed address,
    since moved or deleted: the session keeps it until it logs in again; or the NAS's own
    choice). Fixing it for another device would have DHCP give it out beside that session."""
    from ispd.store.models import AccountingRecord, AccountingStatus

    bob = await store.add_subscriber("bob", actor="t")
    await store.add_subscriber("dave", actor="t")
    await store.record_accounting([AccountingRecord(
        at=clock.now, status=AccountingStatus.START, nas_address="198.18.0.1", acct_session_id="s1",
        username="bob@pppoe", subscriber_id=bob.id, framed_ip="198.18.0.200", calling_station_id="02-00-00-00-02-02",
        nas_port_id="eth0/1/2")])
    [session] = await store.list_sessions(open_only=True)
    for subscriber, kind, key in [("dave", ReservationKind.MAC, "02:00:5e:00:00:35"),
                                  ("dave", ReservationKind.USERNAME, "dave"),
                                  ("bob", ReservationKind.USERNAME, "bob@line2"),  # bob's other login
                                  ("bob", ReservationKind.MAC, "02:00:5e:00:00:36")]:  # bob's router
        with pytest.raises(Conflict, match=rf"198.18.0.200 is in use: RADIUS session #{session.id} of bob on "
                                           r"198.18.0.1 has it"):
            await store.add_reservation(subscriber, kind, key, actor="t", address="198.18.0.200")
    other = await store.add_reservation("dave", ReservationKind.MAC, "02:00:5e:00:00:35", actor="t")
    with pytest.raises(Conflict, match=r"198.18.0.200 is in use: RADIUS session"):
        await store.update_reservation(other.id, actor="t", address="198.18.0.200")
    # The login or line that has it may have it made fixed.
    for kind, key in [(ReservationKind.USERNAME, "bob@pppoe"), (ReservationKind.MAC, "02:00:00:00:02:02"),
                      (ReservationKind.CIRCUIT_ID, "eth0/1/2")]:
        added = await store.add_reservation("bob", kind, key, actor="t", address="198.18.0.200")
        await store.delete_reservation(added.id, actor="t")
    # Once the session has stopped, anyone's.
    await store.record_accounting([AccountingRecord(
        at=clock.now + 60, status=AccountingStatus.STOP, nas_address="198.18.0.1", acct_session_id="s1",
        username="bob@pppoe", subscriber_id=bob.id, framed_ip="198.18.0.200", calling_station_id="02-00-00-00-02-02",
        nas_port_id="eth0/1/2")])
    await store.update_reservation(other.id, actor="t", address="198.18.0.200")
