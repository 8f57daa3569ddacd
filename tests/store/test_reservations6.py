"""DHCPv6 reservations in the store: the duid kind, a fixed IPv6 address (address6) and delegated
prefix (prefix6), what each kind may hold, conflicts and overlap, the audit and its events."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ispd.events import ReservationAdded, ReservationDeleted, event_from_audit
from ispd.store import Conflict, InvalidValue, Store, StoreConfig, open_store
from ispd.store.models import Lease6, Lease6Kind, LeaseState, Reservation, ReservationKind
from ispd.store.sqlite import connect, migrate, sqlite_migrations
from tests.store.conftest import FakeClock

DUID = "00:03:00:01:02:00:5e:10:00:01"


async def test_ipv6_reservations_round_trip_in_canonical_form(store: Store, clock: FakeClock) -> None:
    acme = await store.add_subscriber("acme", actor="t")
    line = await store.add_reservation("acme", ReservationKind.CIRCUIT_ID, "bng1 ge-0/0/1:100", actor="t",
                                       prefix6=" 2001:DB8:200:0::/48 ", address6="2001:0db8:1::0010",
                                       address="198.18.0.10", hostname="acme-gw")
    assert line == Reservation(id=line.id, subscriber_id=acme.id, kind=ReservationKind.CIRCUIT_ID,
                               key="bng1 ge-0/0/1:100", address="198.18.0.10", hostname="acme-gw",
                               created_at=clock.now, address6="2001:db8:1::10", prefix6="2001:db8:200::/48")
    # Any of the usual spellings of a DUID is the one the DHCPv6 server writes (bytes.hex(":")).
    for number, spelling in enumerate(["00:03:00:01:02:00:5E:10:00:02", "000300010200" "5e100003",
                                       "00-03-00-01-02-00-5e-10-00-04"], start=2):
        by_duid = await store.add_reservation("acme", ReservationKind.DUID, spelling, actor="t",
                                              prefix6=f"2001:db8:300:{number}00::/56")
        assert by_duid.key == bytes.fromhex(f"0003000102005e10000{number}").hex(":")
    remote = await store.add_reservation("acme", "remote-id", "cpe-7", actor="t",  # type: ignore[arg-type]
                                         address6="2001:db8:1::11")
    # A DUID alone names the client's subscriber: allowed, as a MAC without an address is.
    alone = await store.add_reservation("acme", ReservationKind.DUID, DUID, actor="t", hostname="acme-pc")
    assert (alone.address, alone.address6, alone.prefix6, alone.hostname) == (None, None, None, "acme-pc")
    listed = await store.list_reservations()
    assert listed[0] == line and listed[-2:] == [remote, alone]
    assert [r.prefix6 for r in listed] == ["2001:db8:200::/48", "2001:db8:300:200::/56", "2001:db8:300:300::/56",
                                           "2001:db8:300:400::/56", None, None]
    assert (await store.subscriber_overview("acme")).reservations == listed


@pytest.mark.parametrize(
    ("kind", "key", "fields", "message"),
    [
        ("duid", "00:03", {}, "'00:03' is not a DUID (hex bytes, type first, 3 to 130 of them"),
        ("duid", "0:3:0:1:2", {}, "is not a DUID"),
        ("duid", "00:03:zz", {}, "is not a DUID"),
        ("duid", "00:02:" + ":".join(["ab"] * 129), {}, "it has 131"),
        ("duid", DUID, {"address": "198.18.0.10"}, "a duid reservation holds no IPv4 address"),
        ("mac", "02:00:5e:10:00:01", {"address6": "2001:db8::1"},
         "a mac reservation holds no IPv6 address or prefix (mac is a DHCPv4 client's key)"),
        ("client-id", "0102005e100001", {"prefix6": "2001:db8:200::/48"}, "a client-id reservation holds no IPv6"),
        ("duid", DUID, {"address6": "2001:db8::/64"}, "give one IPv6 address here; a delegated prefix is"),
        ("duid", DUID, {"address6": "198.18.0.10"}, "'198.18.0.10' is not an IPv6 address"),
        ("duid", DUID, {"address6": "fe80::1"}, "fe80::1 is link-local"),
        ("duid", DUID, {"address6": "fe80::1%eth0"}, "is not an IPv6 address"),
        ("duid", DUID, {"address6": "::1"}, "::1 is the loopback address"),
        ("duid", DUID, {"address6": "::"}, ":: is the unspecified address"),
        ("duid", DUID, {"address6": "ff02::1:2"}, "ff02::1:2 is multicast"),
        ("duid", DUID, {"address6": "::ffff:198.18.0.10"}, "is an IPv4-mapped address"),
        ("duid", DUID, {"prefix6": "2001:db8:200::"}, "is not an IPv6 prefix (write it like 2001:db8:200::/48)"),
        ("duid", DUID, {"prefix6": "2001:db8:200::1/48"},
         "'2001:db8:200::1/48' has bits set past its length: the network is 2001:db8:200::/48"),
        ("duid", DUID, {"prefix6": "2001:db8::/0"}, "a prefix length is 1 to 128"),
        ("duid", DUID, {"prefix6": "2001:db8::/129"}, "a prefix length is 1 to 128"),
        ("duid", DUID, {"prefix6": "2001:db8::/48x"}, "a prefix length is 1 to 128"),
        ("duid", DUID, {"prefix6": "2001::/16"}, "a subscriber's prefix is no shorter than /32"),
        ("duid", DUID, {"prefix6": "fe80::/64"}, "fe80::/64 is link-local"),
        ("duid", DUID, {"prefix6": "198.18.0.0/24"}, "is not an IPv6 prefix"),
    ],
)
async def test_ipv6_values_that_cannot_be_reserved_are_invalid(store: Store, kind: str, key: str,
                                                               fields: dict[str, str], message: str) -> None:
    await store.add_subscriber("alice", actor="t")
    before = await store.last_audit_id()
    with pytest.raises(InvalidValue, match=re.escape(message)):
        await store.add_reservation("alice", kind, key, actor="t", **fields)  # type: ignore[arg-type]
    assert await store.list_reservations() == [] and await store.last_audit_id() == before


async def test_a_radius_login_holds_ipv6_in_the_same_space_as_dhcpv6(store: Store) -> None:
    """A PPPoE login's fixed IPv6 (RADIUS Framed-IPv6-Address, Delegated-IPv6-Prefix) is one IPAM
    with DHCPv6's: a DUID or line cannot take it, nor the login a DUID's."""
    await store.add_subscriber("acme", actor="t")
    await store.add_subscriber("bob", actor="t")
    login = await store.add_reservation("acme", ReservationKind.USERNAME, "acme@pppoe", actor="t",
                                        address="198.18.0.10", address6="2001:DB8:1::10", prefix6="2001:db8:200::/48")
    assert (login.address, login.address6, login.prefix6) == ("198.18.0.10", "2001:db8:1::10", "2001:db8:200::/48")
    with pytest.raises(Conflict, match=re.escape(f"overlaps 2001:db8:200::/48, reserved for acme (username "
                                                 f"acme@pppoe, reservation #{login.id})")):
        await store.add_reservation("bob", ReservationKind.DUID, DUID, actor="t", prefix6="2001:db8:200:100::/56")
    by_duid = await store.add_reservation("bob", ReservationKind.DUID, DUID, actor="t", prefix6="2001:db8:300::/48")
    with pytest.raises(Conflict, match=re.escape(f"is already reserved for bob (duid {DUID}, reservation "
                                                 f"#{by_duid.id})")):
        await store.add_reservation("bob", ReservationKind.USERNAME, "bob@pppoe", actor="t",
                                    prefix6="2001:db8:300::/48")


async def test_what_dhcpv6_has_given_someone_else_now_cannot_be_reserved(store: Store, clock: FakeClock) -> None:
    """RADIUS hands a reserved IPv6 address or prefix out as it is, while the DHCPv6 client that
    has it keeps it until its next renewal: reserving what another client's binding holds now
    (another subscriber's, a stranger's, the subscriber's own router's) would give it twice, as
    for IPv4."""
    alice = await store.add_subscriber("alice", actor="t")
    await store.add_subscriber("dave", actor="t")
    stranger = "00:01:00:01:32:a9:30:72:02:00:5e:66:00:01"
    live = [Lease6("2001:db8:100:4200::/56", Lease6Kind.PREFIX, LeaseState.BOUND, stranger, 1, clock.now,
                   clock.now + 1800, clock.now + 3600),
            Lease6("2001:db8:1::1000/128", Lease6Kind.ADDRESS, LeaseState.BOUND, stranger, 2, clock.now,
                   clock.now + 1800, clock.now + 3600),
            Lease6("2001:db8:100:4300::/56", Lease6Kind.PREFIX, LeaseState.BOUND, DUID, 1, clock.now,
                   clock.now + 1800, clock.now + 3600, subscriber_id=alice.id, interface_id="bng1 ge-0/0/2")]
    await store.record_leases6([(lease, "granted") for lease in live])
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(clock.now + 3600))
    for fields, message in [
            ({"prefix6": "2001:db8:100:4200::/56"},  # the prefix itself
             f"prefix 2001:db8:100:4200::/56 is in use: DHCPv6 gave 2001:db8:100:4200::/56 to DUID {stranger} "
             f"until {until}"),
            ({"prefix6": "2001:db8:100:4200::/64"},  # a part of it
             "prefix 2001:db8:100:4200::/64 is in use: DHCPv6 gave 2001:db8:100:4200::/56"),
            ({"prefix6": "2001:db8:100::/48"},  # a prefix around it
             "prefix 2001:db8:100::/48 is in use: DHCPv6 gave 2001:db8:100:4200::/56"),
            ({"address6": "2001:db8:1::1000"},
             f"IPv6 address 2001:db8:1::1000 is in use: DHCPv6 gave 2001:db8:1::1000 to DUID {stranger}"),
            ({"prefix6": "2001:db8:100:4300::/56"},  # another subscriber's router has it
             "prefix 2001:db8:100:4300::/56 is in use: DHCPv6 gave 2001:db8:100:4300::/56 to alice until")]:
        with pytest.raises(Conflict, match=re.escape(message)):
            await store.add_reservation("dave", ReservationKind.USERNAME, "dave@pppoe", actor="t",
                                        **fields)  # type: ignore[arg-type]
    login = await store.add_reservation("dave", ReservationKind.USERNAME, "dave@pppoe", actor="t")
    with pytest.raises(Conflict, match="is in use: DHCPv6 gave 2001:db8:100:4200::/56"):
        await store.update_reservation(login.id, actor="t", prefix6="2001:db8:100:4200::/56")
    # Nor the subscriber's own router's, for its login: its session would get it beside the router.
    with pytest.raises(Conflict, match=re.escape("prefix 2001:db8:100:4300::/56 is in use: DHCPv6 gave "
                                                 "2001:db8:100:4300::/56 to alice until")):
        await store.add_reservation("alice", ReservationKind.USERNAME, "alice@pppoe", actor="t",
                                    prefix6="2001:db8:100:4300::/56")
    # The device or line being reserved may have it made fixed; a binding that has ended holds nothing.
    await store.add_reservation("alice", ReservationKind.CIRCUIT_ID, "bng1 ge-0/0/2", actor="t",
                                prefix6="2001:db8:100:4300::/56")
    await store.add_reservation("dave", ReservationKind.DUID, stranger, actor="t", address6="2001:db8:1::1000")
    clock.now += 3601
    await store.update_reservation(login.id, actor="t", prefix6="2001:db8:100:4200::/56")


async def test_a_taken_duid_address6_or_prefix6_is_a_conflict_naming_its_holder(store: Store) -> None:
    await store.add_subscriber("acme", actor="t")
    await store.add_subscriber("bob", actor="t")
    held = await store.add_reservation("acme", ReservationKind.DUID, DUID, actor="t", address6="2001:db8:1::10",
                                       prefix6="2001:db8:200::/48")
    holder = f"acme (duid {DUID}, reservation #{held.id})"
    before = await store.last_audit_id()
    refusals = [
        (ReservationKind.DUID, "0003000102005E100001", {}, f"duid {DUID} is already reserved for acme (reservation #{held.id})"),
        (ReservationKind.REMOTE_ID, "r1", {"address6": "2001:db8:1::10"},
         f"IPv6 address 2001:db8:1::10 is already reserved for {holder}"),
        (ReservationKind.REMOTE_ID, "r1", {"prefix6": "2001:db8:200::/48"},
         f"prefix 2001:db8:200::/48 is already reserved for {holder}"),
    ]
    for kind, key, fields, message in refusals:
        with pytest.raises(Conflict) as caught:
            await store.add_reservation("bob", kind, key, actor="t", **fields)  # type: ignore[arg-type]
        assert str(caught.value) == message
    # The same subscriber cannot have one prefix delegated twice either.
    with pytest.raises(Conflict, match="is already reserved for acme"):
        await store.add_reservation("acme", ReservationKind.CIRCUIT_ID, "c1", actor="t", prefix6="2001:db8:200::/48")
    assert await store.list_reservations() == [held] and await store.last_audit_id() == before
    # Once deleted, they are free again.
    await store.delete_reservation(held.id, actor="t")
    await store.add_reservation("bob", ReservationKind.REMOTE_ID, "r1", actor="t", address6="2001:db8:1::10",
                                prefix6="2001:db8:200::/48")


@pytest.mark.parametrize(
    ("kept", "asked"),
    [
        ("2001:db8:200::/48", "2001:db8:200:ff00::/56"),  # inside the one kept
        ("2001:db8:200:ff00::/56", "2001:db8:200::/48"),  # holding the one kept
        ("2001:db8:200:ff00::/56", "2001:db8::/32"),  # the shortest there is, over one far inside
        ("2001:db8:200:ff00::/56", "2001:db8:200:ff42::1/128"),  # a /128 prefix inside
        ("2001:db8:200:ff42::1/128", "2001:db8:200:ff42::/64"),  # past 64 bits, both ways
        ("2001:db8:200:ff42::/64", "2001:db8:200:ff42:8000::/65"),
    ],
)
async def test_overlapping_prefixes_conflict_whichever_is_reserved_first(store: Store, kept: str, asked: str) -> None:
    await store.add_subscriber("acme", actor="t")
    await store.add_subscriber("bob", actor="t")
    held = await store.add_reservation("acme", ReservationKind.CIRCUIT_ID, "bng1 ge-0/0/1:100", actor="t",
                                       prefix6=kept)
    with pytest.raises(Conflict) as caught:
        await store.add_reservation("bob", ReservationKind.DUID, DUID, actor="t", prefix6=asked)
    assert str(caught.value) == (f"prefix {asked} overlaps {kept}, reserved for acme "
                                 f"(circuit-id bng1 ge-0/0/1:100, reservation #{held.id})")
    with pytest.raises(Conflict, match="overlaps"):  # (the subscriber's own: delegated twice)
        await store.add_reservation("acme", ReservationKind.DUID, DUID, actor="t", prefix6=asked)


async def test_neighbouring_prefixes_do_not_conflict(store: Store) -> None:
    await store.add_subscriber("acme", actor="t")
    await store.add_subscriber("bob", actor="t")
    await store.add_reservation("acme", ReservationKind.CIRCUIT_ID, "c1", actor="t", prefix6="2001:db8:200::/48",
                                address6="2001:db8:1::10")
    for number, prefix in enumerate(["2001:db8:1ff:ff00::/56", "2001:db8:201::/48", "2001:db8:202::/56",
                                     "2001:db9::/32", "2001:db8:1::11/128"]):
        await store.add_reservation("bob", ReservationKind.REMOTE_ID, f"r{number}", actor="t", prefix6=prefix)
    assert len(await store.list_reservations()) == 6


async def test_an_address_inside_another_subscribers_prefix_conflicts_both_ways(store: Store) -> None:
    """A DHCPv6 server routes a delegated prefix to its client: a fixed address of someone else
    inside it would reach the wrong subscriber."""
    await store.add_subscriber("acme", actor="t")
    await store.add_subscriber("bob", actor="t")
    prefix = await store.add_reservation("acme", ReservationKind.CIRCUIT_ID, "c1", actor="t",
                                         prefix6="2001:db8:200::/48")
    with pytest.raises(Conflict) as caught:
        await store.add_reservation("bob", ReservationKind.DUID, DUID, actor="t", address6="2001:db8:200:5::1")
    assert str(caught.value) == ("IPv6 address 2001:db8:200:5::1 lies inside prefix 2001:db8:200::/48, reserved for "
                                 f"acme (circuit-id c1, reservation #{prefix.id})")
    address = await store.add_reservation("bob", ReservationKind.DUID, DUID, actor="t", address6="2001:db8:300::1")
    for asked in ("2001:db8:300::/48", "2001:db8:300::/64", "2001:db8:300::/40"):
        with pytest.raises(Conflict) as caught:
            await store.add_reservation("acme", ReservationKind.REMOTE_ID, "r1", actor="t", prefix6=asked)
        assert str(caught.value) == (f"prefix {asked} holds IPv6 address 2001:db8:300::1, reserved for bob "
                                     f"(duid {DUID}, reservation #{address.id})")
    # A subscriber's own address inside its own prefix is its business.
    await store.add_reservation("acme", ReservationKind.DUID, "00:03:00:01:02:00:5e:10:00:02", actor="t",
                                address6="2001:db8:200::1")
    await store.add_reservation("bob", ReservationKind.REMOTE_ID, "r2", actor="t", prefix6="2001:db8:300::/56")


async def test_the_audit_and_its_events_carry_address6_and_prefix6(store: Store, clock: FakeClock) -> None:
    acme = await store.add_subscriber("acme", actor="t")
    start = await store.last_audit_id()
    added = await store.add_reservation("acme", ReservationKind.DUID, DUID, actor="cli:root",
                                        address6="2001:db8:1::10", prefix6="2001:db8:200::/48")
    line = await store.add_reservation("acme", ReservationKind.CIRCUIT_ID, "c1", actor="t",
                                       prefix6="2001:db8:201::/48")
    clock.now += 60
    await store.delete_reservation(added.id, actor="cli:ops")
    await store.delete_subscriber("acme", actor="t")  # its reservations go, each announced
    entries = await store.audit_since(start)
    assert entries[0].details == {"reservation_id": added.id, "kind": "duid", "key": DUID, "address": None,
                                  "hostname": None, "address6": "2001:db8:1::10", "prefix6": "2001:db8:200::/48"}
    events = [event_from_audit(e) for e in entries]
    fields = dict(reservation_id=added.id, kind="duid", key=DUID, address=None, hostname=None,
                  address6="2001:db8:1::10", prefix6="2001:db8:200::/48")
    assert events[0] == ReservationAdded(clock.now - 60, acme.id, "acme", **fields)  # type: ignore[arg-type]
    assert events[2] == ReservationDeleted(clock.now, acme.id, "acme", **fields)  # type: ignore[arg-type]
    assert isinstance(events[3], ReservationDeleted)
    assert (events[3].reservation_id, events[3].prefix6) == (line.id, "2001:db8:201::/48")


def test_an_entry_from_before_ipv6_reservations_reads_as_none() -> None:
    from ispd.store.models import AuditEntry

    old = AuditEntry(1, 1.0, "x", "reservation.added", "subscriber", 3, "alice",
                     {"reservation_id": 7, "kind": "mac", "key": "k", "address": None, "hostname": None})
    odd = AuditEntry(2, 1.0, "x", "reservation.added", "subscriber", 3, "alice",
                     {"reservation_id": 8, "kind": "duid", "key": "k", "address6": 5, "prefix6": ["p"]})
    for entry in (old, odd):
        event = event_from_audit(entry)
        assert isinstance(event, ReservationAdded) and (event.address6, event.prefix6) == (None, None)


async def test_an_upgrade_from_version_15_keeps_every_reservation(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = connect(path, 5)
    migrate(conn, sqlite_migrations(), target=15)
    conn.execute("INSERT INTO subscriber_ids (singleton, highest) VALUES (1, 0) ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO subscribers (id, username, created_at, updated_at) VALUES (1, 'alice', 1, 1)")
    rows = [(4, 1, "mac", "02:00:5e:10:00:01", "198.18.0.10", "cpe", 10.0),
            (9, 1, "circuit-id", "bng1 ge-0/0/1:100", None, None, 11.0),
            (12, 1, "username", "alice@pppoe", "198.18.0.11", None, 12.0)]
    conn.executemany("INSERT INTO reservations (id, subscriber_id, kind, key, address, hostname, created_at)"
                     " VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()
    store = await open_store(StoreConfig(path=path))
    try:
        assert [(r.id, r.subscriber_id, r.kind.value, r.key, r.address, r.hostname, r.created_at, r.address6,
                 r.prefix6) for r in await store.list_reservations()] == [(*row, None, None) for row in rows]
        # The table takes the new kind and columns, and its constraints and cascade still hold.
        added = await store.add_reservation("alice", ReservationKind.DUID, DUID, actor="t",
                                            prefix6="2001:db8:200::/48")
        assert added.id == 13
        with pytest.raises(Conflict, match=r"198\.18\.0\.10 is already reserved for alice"):
            await store.add_reservation("alice", ReservationKind.MAC, "02:00:5e:10:00:02", actor="t",
                                        address="198.18.0.10")
        await store.delete_subscriber("alice", actor="t")
        assert await store.list_reservations() == []
    finally:
        await store.close()
    raw = connect(path, 5)
    indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index'"
                                         " AND tbl_name = 'reservations' AND sql IS NOT NULL")}
    assert indexes == {"reservations_subscriber", "reservations_address6_network", "reservations_prefix6_network"}
    assert raw.execute("PRAGMA foreign_key_check").fetchall() == []


async def test_a_prefix_an_open_session_has_cannot_be_reserved_for_another(store: Store, clock: FakeClock) -> None:
    """From a bug hunt: a session keeps its delegated prefix after its reservation is deleted (until
    it logs in again, as `reservation delete` says), yet a [[radius.prefix_pool]] reserved that
    /56 at once for the next login, and `reservation add --prefix6` took it for anyone: two
    subscribers delegated the same prefix. Refused, as an IPv4 address an open session has is."""
    from ispd.store.models import AccountingRecord, AccountingStatus

    bob = await store.add_subscriber("bob", actor="t")
    await store.add_subscriber("dave", actor="t")
    await store.record_accounting([AccountingRecord(
        at=clock.now, status=AccountingStatus.START, nas_address="198.18.0.1", acct_session_id="s1",
        username="bob@pppoe", subscriber_id=bob.id, delegated_ipv6_prefix="2001:db8:1000:300::/56",
        framed_ipv6_address="2001:db8:ffff::7", calling_station_id="02-00-00-00-02-02", nas_port_id="eth0/1/2")])
    [session] = await store.list_sessions(open_only=True)
    in_use = rf"is in use: RADIUS session #{session.id} of bob on 198.18.0.1 has it"
    for subscriber, kind, key, where in [
            ("dave", ReservationKind.USERNAME, "dave", {"prefix6": "2001:db8:1000:300::/56"}),  # a pool's next login
            ("dave", ReservationKind.DUID, DUID, {"prefix6": "2001:db8:1000::/48"}),  # holding it
            ("dave", ReservationKind.USERNAME, "dave", {"prefix6": "2001:db8:1000:300::/64"}),  # inside it
            ("dave", ReservationKind.USERNAME, "dave", {"address6": "2001:db8:ffff::7"}),
            ("bob", ReservationKind.USERNAME, "bob@line2", {"prefix6": "2001:db8:1000:300::/56"})]:  # bob's other login
        with pytest.raises(Conflict, match=re.escape(f"{where.get('prefix6', where.get('address6'))} ") + in_use):
            await store.add_reservation(subscriber, kind, key, actor="t", **where)
    other = await store.add_reservation("dave", ReservationKind.USERNAME, "dave", actor="t")
    with pytest.raises(Conflict, match=in_use):
        await store.update_reservation(other.id, actor="t", prefix6="2001:db8:1000:300::/56")
    # The login that has it may have it made fixed; once the session has stopped, anyone may.
    mine = await store.add_reservation("bob", ReservationKind.USERNAME, "bob@pppoe", actor="t",
                                       prefix6="2001:db8:1000:300::/56")
    await store.delete_reservation(mine.id, actor="t")
    await store.record_accounting([AccountingRecord(
        at=clock.now + 60, status=AccountingStatus.STOP, nas_address="198.18.0.1", acct_session_id="s1",
        username="bob@pppoe", subscriber_id=bob.id, session_time_seconds=60)])
    assert (await store.update_reservation(other.id, actor="t", prefix6="2001:db8:1000:300::/56")).prefix6 == \
        "2001:db8:1000:300::/56"
