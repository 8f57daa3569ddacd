"""The DHCPv6 engine alone: messages in, decisions out, with a clock we move by hand."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address, IPv6Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispd.dhcp6.codec import (
    IA,
    DHCP6DecodeError,
    IAAddress,
    IAPrefix,
    Message,
    MessageType,
    Option,
    OptionCode,
    RelayForward,
    StatusCode,
    decode,
    decode_ia,
    encode,
    encode_ia,
    encode_options,
    option,
)
from ispd.dhcp6.config import DHCP6Config
from ispd.dhcp6.engine import MAX_IAS_PER_KIND, SCAN_LIMIT, DHCP6Engine, Ignored6, Outcome6, Received6
from ispd.store.models import Lease6, Lease6Kind, LeaseState, Reservation, ReservationKind, SubscriberStatus

SERVER_DUID = bytes.fromhex("0004") + bytes(range(16))
DUID_A = bytes.fromhex("0003000102005e100001")
DUID_B = bytes.fromhex("0003000102005e100002")
T0 = 1_800_000_000.0


def config(**overrides: Any) -> DHCP6Config:
    base: dict[str, Any] = {
        "enabled": True, "interfaces": ["eth1", "uplink"], "decline_quarantine_seconds": 600,
        "preferred_lifetime_seconds": 3600, "valid_lifetime_seconds": 7200,
        "dns_servers": ["2001:db8::53"], "domain_search": ["isp.example"],
        "subnet": [
            {"name": "access", "prefix": "2001:db8:1::/64", "interface": "eth1",
             "pool": [{"name": "hosts", "range": "2001:db8:1::100 - 2001:db8:1::101"}],
             "prefix_pool": [{"name": "homes", "prefix": "2001:db8:100::/54", "delegated_length": 56},
                             {"name": "business", "prefix": "2001:db8:200::/46", "delegated_length": 48}]},
            {"name": "bng", "prefix": "2001:db8:2::/64", "relay_addresses": ["2001:db8:ff::1"],
             "pool": [{"name": "bng-hosts", "range": "2001:db8:2::100 - 2001:db8:2::1ff"}]},
        ],
    }
    base.update(overrides)
    return DHCP6Config.model_validate(base)


def engine(**overrides: Any) -> DHCP6Engine:
    return DHCP6Engine(config(**overrides), SERVER_DUID)


def ia_na(iaid: int = 1, *addresses: str) -> Option:
    return encode_ia(IA(OptionCode.IA_NA, iaid, 0, 0, tuple(IAAddress(IPv6Address(a), 0, 0) for a in addresses)))


def ia_pd(iaid: int = 2, *prefixes: str) -> Option:
    return encode_ia(IA(OptionCode.IA_PD, iaid, 0, 0, tuple(IAPrefix(IPv6Network(p), 0, 0) for p in prefixes)))


def message(kind: MessageType, *options: Option, client: bytes | None = DUID_A, server: bytes | None = None,
            oro: tuple[int, ...] = (23, 24)) -> Message:
    head = []
    if client is not None:
        head.append(option(OptionCode.CLIENTID, client))
    if server is not None:
        head.append(option(OptionCode.SERVERID, server))
    if oro:
        head.append(option(OptionCode.ORO, struct.pack(f"!{len(oro)}H", *oro)))
    decoded = decode(bytes([kind]) + b"\x00\x00\x2a" + encode_options([*head, *options]))
    assert isinstance(decoded, Message)
    return decoded


def handle(eng: DHCP6Engine, msg: Message, now: float = T0, interface: str = "eth1",
           relays: tuple[RelayForward, ...] = (), multicast: bool = True) -> Outcome6:
    return eng.handle(Received6(msg, interface, relays, multicast), now)


def reply_ias(outcome: Outcome6) -> list[IA]:
    assert outcome.reply is not None
    return [decode_ia(o.code, o.data) for o in outcome.reply.options if o.code in (OptionCode.IA_NA, OptionCode.IA_PD)]


def status_of(outcome: Outcome6) -> int | None:
    assert outcome.reply is not None
    raw = next((o.data for o in outcome.reply.options if o.code == OptionCode.STATUS_CODE), None)
    return None if raw is None else int.from_bytes(raw[:2], "big")


def bind(eng: DHCP6Engine, *options: Option, client: bytes = DUID_A, now: float = T0, **kw: Any) -> Outcome6:
    """Solicit, then Request what was advertised; the Request's outcome."""
    advertise = handle(eng, message(MessageType.SOLICIT, *options, client=client), now, **kw)
    assert advertise.reply is not None and advertise.reply.type == MessageType.ADVERTISE and not advertise.writes
    offered = [o for o in advertise.reply.options if o.code in (OptionCode.IA_NA, OptionCode.IA_PD)]
    return handle(eng, message(MessageType.REQUEST, *offered, client=client, server=SERVER_DUID), now, **kw)


def test_solicit_request_gives_an_address_and_a_prefix() -> None:
    eng = engine()
    outcome = bind(eng, ia_na(1), ia_pd(2))
    assert outcome.reply is not None and outcome.reply.type == MessageType.REPLY
    na, pd = reply_ias(outcome)
    assert (na.t1, na.t2) == (1800, 2880)
    assert na.leases == (IAAddress(IPv6Address("2001:db8:1::100"), 3600, 7200),)
    assert pd.leases == (IAPrefix(IPv6Network("2001:db8:100::/56"), 3600, 7200),)
    written = {lease.prefix: (lease.kind, lease.state, event) for lease, event in outcome.writes}
    assert written == {"2001:db8:1::100/128": (Lease6Kind.ADDRESS, LeaseState.BOUND, "granted"),
                       "2001:db8:100::/56": (Lease6Kind.PREFIX, LeaseState.BOUND, "granted")}
    lease = outcome.writes[0][0]
    assert (lease.duid, lease.iaid, lease.link, lease.pool) == (DUID_A.hex(":"), 1, "access", "hosts")
    assert lease.expires_at == T0 + 7200 and lease.preferred_until == T0 + 3600
    options = {o.code: o.data for o in outcome.reply.options}
    assert options[OptionCode.SERVERID] == SERVER_DUID and options[OptionCode.CLIENTID] == DUID_A
    assert options[OptionCode.DNS_SERVERS] == IPv6Address("2001:db8::53").packed
    assert options[OptionCode.DOMAIN_LIST] == b"\x03isp\x07example\x00"
    assert encode(outcome.reply)  # it encodes


def test_options_go_only_to_clients_that_ask() -> None:
    outcome = handle(engine(), message(MessageType.SOLICIT, ia_na(), oro=()))
    assert outcome.reply is not None
    assert {o.code for o in outcome.reply.options} == {OptionCode.SERVERID, OptionCode.CLIENTID, OptionCode.IA_NA}


def test_an_advertised_address_is_held_for_its_client() -> None:
    eng = engine()
    first = reply_ias(handle(eng, message(MessageType.SOLICIT, ia_na())))[0]
    second = reply_ias(handle(eng, message(MessageType.SOLICIT, ia_na(), client=DUID_B)))[0]
    assert first.leases[0] != second.leases[0]  # type: ignore[union-attr]
    again = reply_ias(handle(eng, message(MessageType.SOLICIT, ia_na())))[0]
    assert again.leases == first.leases


def test_a_full_pool_says_no_addresses_and_a_returning_client_gets_its_own() -> None:
    eng = engine()
    bind(eng, ia_na(1))
    bind(eng, ia_na(1), client=DUID_B)
    third = handle(eng, message(MessageType.SOLICIT, ia_na(1), client=bytes.fromhex("00030001020000000003")))
    (ia,) = reply_ias(third)
    assert ia.leases == () and ia.status is not None and ia.status[0] == StatusCode.NO_ADDRS_AVAIL
    again = bind(eng, ia_na(1), now=T0 + 100)
    assert reply_ias(again)[0].leases[0].address == IPv6Address("2001:db8:1::100")  # type: ignore[union-attr]
    assert again.writes[0][1] == "renewed" and again.writes[0][0].starts_at == T0


def test_renew_extends_and_rebind_too() -> None:
    eng = engine()
    bind(eng, ia_na(1, ), ia_pd(2))
    renew = handle(eng, message(MessageType.RENEW, ia_na(1, "2001:db8:1::100"), ia_pd(2, "2001:db8:100::/56"),
                                server=SERVER_DUID), T0 + 1800)
    na, _pd = reply_ias(renew)
    assert na.leases == (IAAddress(IPv6Address("2001:db8:1::100"), 3600, 7200),)
    assert [(lease.expires_at, event) for lease, event in renew.writes] == [(T0 + 1800 + 7200, "renewed")] * 2
    rebind = handle(eng, message(MessageType.REBIND, ia_na(1, "2001:db8:1::100")), T0 + 2900)
    assert reply_ias(rebind)[0].leases[0].valid == 7200  # type: ignore[union-attr]


def test_an_address_from_elsewhere_comes_back_with_lifetimes_zero() -> None:
    eng = engine()
    outcome = handle(eng, message(MessageType.REBIND, ia_na(1, "2001:db8:9::5")))
    (ia,) = reply_ias(outcome)
    assert IAAddress(IPv6Address("2001:db8:9::5"), 0, 0) in ia.leases
    assert IAAddress(IPv6Address("2001:db8:1::100"), 3600, 7200) in ia.leases


def test_a_prefix_hint_picks_the_pool_of_that_length_and_a_free_exact_hint_is_honoured() -> None:
    eng = engine()
    business = reply_ias(bind(eng, ia_pd(2, "::/48")))[0]
    assert business.leases == (IAPrefix(IPv6Network("2001:db8:200::/48"), 3600, 7200),)
    exact = reply_ias(bind(eng, ia_pd(2, "2001:db8:100:300::/56"), client=DUID_B))[0]
    assert exact.leases == (IAPrefix(IPv6Network("2001:db8:100:300::/56"), 3600, 7200),)


def test_rapid_commit_only_where_allowed() -> None:
    plain = handle(engine(), message(MessageType.SOLICIT, ia_na(), option(OptionCode.RAPID_COMMIT)))
    assert plain.reply is not None and plain.reply.type == MessageType.ADVERTISE and not plain.writes
    rapid = handle(engine(rapid_commit=True), message(MessageType.SOLICIT, ia_na(), option(OptionCode.RAPID_COMMIT)))
    assert rapid.reply is not None and rapid.reply.type == MessageType.REPLY and len(rapid.writes) == 1
    assert rapid.reply.has(OptionCode.RAPID_COMMIT)


def test_preference_is_sent_when_set() -> None:
    outcome = handle(engine(preference=255), message(MessageType.SOLICIT, ia_na()))
    assert outcome.reply is not None
    assert next(o.data for o in outcome.reply.options if o.code == OptionCode.PREFERENCE) == b"\xff"


def test_release_ends_the_binding_and_says_no_binding_for_an_unknown_ia() -> None:
    eng = engine()
    bind(eng, ia_na(1))
    outcome = handle(eng, message(MessageType.RELEASE, ia_na(1, "2001:db8:1::100"), ia_na(9, "2001:db8:1::101"),
                                  server=SERVER_DUID), T0 + 10)
    assert status_of(outcome) == StatusCode.SUCCESS
    assert [(lease.state, event, lease.expires_at) for lease, event in outcome.writes] == [
        (LeaseState.RELEASED, "released", T0 + 10)]
    (refused,) = reply_ias(outcome)
    assert refused.iaid == 9 and refused.status is not None and refused.status[0] == StatusCode.NO_BINDING
    other = bind(eng, ia_na(1), client=DUID_B, now=T0 + 20)  # the released address is free again
    assert other.writes[0][0].prefix in ("2001:db8:1::100/128", "2001:db8:1::101/128")


def test_decline_quarantines_the_address_from_everyone() -> None:
    eng = engine()
    bind(eng, ia_na(1))
    outcome = handle(eng, message(MessageType.DECLINE, ia_na(1, "2001:db8:1::100"), server=SERVER_DUID))
    assert outcome.declined == 1 and outcome.writes[0][0].state is LeaseState.DECLINED
    assert outcome.writes[0][0].expires_at == T0 + 600
    again = bind(eng, ia_na(1), now=T0 + 1)
    assert reply_ias(again)[0].leases[0].address == IPv6Address("2001:db8:1::101")  # type: ignore[union-attr]


def test_a_delegated_prefix_is_not_declined() -> None:
    """Decline is for addresses found in use on the link (RFC 8415 §18.2.8): a prefix in it is
    left bound, and no prefix of the pool goes into quarantine for it."""
    eng = engine()
    bind(eng, ia_na(1), ia_pd(2))
    outcome = handle(eng, message(MessageType.DECLINE, ia_pd(2, "2001:db8:100::/56"), server=SERVER_DUID), T0 + 5)
    assert outcome.declined == 0 and outcome.writes == []
    assert eng.leases["2001:db8:100::/56"].state is LeaseState.BOUND
    assert not any(declined for *_, declined in eng.pool_usage(T0 + 5))
    renew = handle(eng, message(MessageType.RENEW, ia_pd(2, "2001:db8:100::/56"), server=SERVER_DUID), T0 + 10)
    assert reply_ias(renew)[0].leases == (IAPrefix(IPv6Network("2001:db8:100::/56"), 3600, 7200),)


def test_confirm_says_whether_the_addresses_are_on_link() -> None:
    eng = engine()
    on = handle(eng, message(MessageType.CONFIRM, ia_na(1, "2001:db8:1::100")))
    assert on.reply is not None and status_of(on) == StatusCode.SUCCESS and not on.writes
    off = handle(eng, message(MessageType.CONFIRM, ia_na(1, "2001:db8:7::100")))
    assert status_of(off) == StatusCode.NOT_ON_LINK
    assert handle(eng, message(MessageType.CONFIRM, ia_na(1))).ignored is Ignored6.NOTHING_TO_CONFIRM


def test_confirm_of_a_reserved_address_of_no_link_is_success() -> None:
    """A device's fixed address outside every link (inside its own reserved prefix) is given on
    the link it asks from: a Confirm of it there is Success, not NotOnLink (dhclient would drop
    the address at each start, solicit, and get the same one back). Another client's Confirm of
    it, or this client's from another link, is still NotOnLink."""
    eng = engine()
    _reserve(eng, 1, ReservationKind.DUID, DUID_A.hex(":"), address6="2001:db8:ffff::1", prefix6="2001:db8:ffff::/48")
    given = bind(eng, ia_na(1))
    assert given.writes[0][0].prefix == "2001:db8:ffff::1/128"
    confirm = message(MessageType.CONFIRM, ia_na(1, "2001:db8:ffff::1"))
    assert status_of(handle(eng, confirm)) == StatusCode.SUCCESS
    assert status_of(handle(eng, message(MessageType.CONFIRM, ia_na(1, "2001:db8:ffff::1", "2001:db8:7::1")))) \
        == StatusCode.NOT_ON_LINK
    other = message(MessageType.CONFIRM, ia_na(1, "2001:db8:ffff::1"), client=DUID_B)
    assert status_of(handle(eng, other)) == StatusCode.NOT_ON_LINK


def test_information_request_gets_the_options_alone() -> None:
    outcome = handle(engine(), message(MessageType.INFORMATION_REQUEST, client=None))
    assert outcome.reply is not None and not outcome.writes
    assert {o.code for o in outcome.reply.options} == {OptionCode.SERVERID, OptionCode.DNS_SERVERS,
                                                       OptionCode.DOMAIN_LIST}


def test_information_request_from_a_link_no_subnet_names_gets_the_section_s_options() -> None:
    """Stateless DHCPv6 (RFC 8415 §18.3.6) needs no link: a client doing SLAAC on a link that no
    subnet names (relayed from it, or on a served interface without a subnet) still gets
    [dhcp6]'s DNS servers and search list, as from Kea; a subnet's own are for its link only.
    Stateful messages from there are still dropped."""
    eng = engine(subnet=[{"name": "access", "prefix": "2001:db8:1::/64", "interface": "eth1",
                          "dns_servers": ["2001:db8:1::53"],
                          "pool": [{"name": "hosts", "range": "2001:db8:1::100 - 2001:db8:1::101"}]}])
    relays = (_relay(message(MessageType.INFORMATION_REQUEST), "2001:db8:77::1"),)
    for interface, via in (("uplink", relays), ("uplink", ())):
        outcome = handle(eng, message(MessageType.INFORMATION_REQUEST), interface=interface, relays=via)
        assert outcome.ignored is None and outcome.reply is not None and outcome.reply.type == MessageType.REPLY
        got = {o.code: o.data for o in outcome.reply.options}
        assert got[OptionCode.DNS_SERVERS] == IPv6Address("2001:db8::53").packed
        assert got[OptionCode.DOMAIN_LIST] == b"\x03isp\x07example\x00"
        assert got[OptionCode.CLIENTID] == DUID_A and not outcome.writes
    assert handle(eng, message(MessageType.SOLICIT, ia_na()), relays=relays,
                  interface="uplink").ignored is Ignored6.NO_SUBNET
    strict = engine(unknown_clients="ignore")
    assert handle(strict, message(MessageType.INFORMATION_REQUEST), relays=relays,
                  interface="uplink").ignored is Ignored6.NO_SUBNET


@pytest.mark.parametrize(("msg", "reason"), [
    (message(MessageType.SOLICIT, ia_na(), server=SERVER_DUID), Ignored6.SERVER_ID_PRESENT),
    (message(MessageType.REBIND, ia_na(), server=SERVER_DUID), Ignored6.SERVER_ID_PRESENT),
    (message(MessageType.REQUEST, ia_na(), server=DUID_B), Ignored6.NOT_FOR_US),
    (message(MessageType.RENEW, ia_na()), Ignored6.NOT_FOR_US),
    (message(MessageType.SOLICIT, ia_na(), client=None), Ignored6.NO_CLIENT_ID),
    (message(MessageType.ADVERTISE, ia_na()), Ignored6.NOT_A_REQUEST),
    (message(MessageType.REPLY, ia_na()), Ignored6.NOT_A_REQUEST),
    (message(MessageType.INFORMATION_REQUEST, ia_na()), Ignored6.IA_IN_INFORMATION_REQUEST),
    (message(MessageType.INFORMATION_REQUEST, option(OptionCode.IA_TA, bytes(4)), client=None),
     Ignored6.IA_IN_INFORMATION_REQUEST),
])
def test_messages_the_rfc_says_to_drop(msg: Message, reason: Ignored6) -> None:
    outcome = handle(engine(), msg)
    assert outcome.reply is None and outcome.ignored is reason and not outcome.writes


def test_a_client_on_an_unserved_interface_gets_nothing() -> None:
    assert handle(engine(), message(MessageType.SOLICIT, ia_na()), interface="uplink").ignored is Ignored6.NO_SUBNET


def test_unicast_from_a_client_is_told_to_multicast_or_dropped() -> None:
    eng = engine()
    told = handle(eng, message(MessageType.REQUEST, ia_na(), server=SERVER_DUID), multicast=False)
    assert status_of(told) == StatusCode.USE_MULTICAST and not told.writes
    dropped = handle(eng, message(MessageType.SOLICIT, ia_na()), multicast=False)
    assert dropped.reply is None and dropped.ignored is Ignored6.UNICAST


def _relay(msg: Message, link: str, interface_id: bytes | None = None, remote_id: bytes | None = None) -> RelayForward:
    options = []
    if interface_id is not None:
        options.append(option(OptionCode.INTERFACE_ID, interface_id))
    if remote_id is not None:
        options.append(option(OptionCode.REMOTE_ID, remote_id))
    return RelayForward(0, IPv6Address(link), IPv6Address("fe80::1"), tuple(options), msg)


def test_relayed_clients_are_placed_by_link_address_or_relay_address() -> None:
    eng = engine()
    by_prefix = bind(eng, ia_na(), interface="uplink",
                     relays=(_relay(message(MessageType.SOLICIT), "2001:db8:1::1"),))
    assert by_prefix.writes[0][0].link == "access"
    listed = bind(eng, ia_na(), client=DUID_B, interface="uplink",
                  relays=(_relay(message(MessageType.SOLICIT), "2001:db8:ff::1", b"port 7"),))
    assert listed.writes[0][0].link == "bng" and listed.writes[0][0].interface_id == "port 7"
    unknown = handle(eng, message(MessageType.SOLICIT, ia_na()), interface="uplink",
                     relays=(_relay(message(MessageType.SOLICIT), "2001:db8:77::1"),))
    assert unknown.ignored is Ignored6.NO_SUBNET


def _homes_cut_to(length: int) -> DHCP6Config:
    subnets = config().model_dump()["subnet"]
    subnets[0]["prefix_pool"][0]["delegated_length"] = length
    return config(subnet=subnets)


@pytest.mark.parametrize(("before", "after"), [(56, 60), (60, 56)])
def test_a_prefix_bound_before_its_pool_was_cut_another_way_is_not_given_in_part(before: int, after: int) -> None:
    """The homes pool cut into /60s instead of /56s (or back) at a reload or a restart: a router
    holds its old prefix until its next renewal, and no other home gets a prefix inside it or
    around it meanwhile (the same addresses routed to two homes)."""
    eng = DHCP6Engine(_homes_cut_to(before), SERVER_DUID)
    held = IPv6Network(bind(eng, ia_pd(2)).writes[0][0].prefix)
    eng.reconfigure(_homes_cut_to(after))
    others = [IPv6Network(bind(eng, ia_pd(2), client=bytes.fromhex(f"0003000102005e2000{n:02x}"),
                               now=T0 + n).writes[0][0].prefix) for n in range(3)]
    assert [p for p in others if p.overlaps(held)] == [], held
    assert all(p.prefixlen == after for p in others)
    restarted = DHCP6Engine(_homes_cut_to(after), SERVER_DUID)
    restarted.load([lease for lease in eng.leases.values() if lease.prefix == str(held)], [], {})
    again = IPv6Network(bind(restarted, ia_pd(2), client=DUID_B).writes[0][0].prefix)
    assert not again.overlaps(held), (again, held)
    renewed = handle(eng, message(MessageType.RENEW, ia_pd(2, str(held)), server=SERVER_DUID), T0 + 100)
    assert [(lease.prefix, event) for lease, event in renewed.writes][-1] == (str(held), "released")
    assert IPv6Network(renewed.writes[0][0].prefix).prefixlen == after  # at its renewal, one of the new cut


def test_a_reserved_prefix_inside_a_pool_is_not_given_in_part_after_its_reservation_is_deleted() -> None:
    """A /55 reserved inside the homes pool (of /56s), bound; the reservation deleted: its router
    holds the /55 until its next renewal, and the pool does not give the /56s inside it meanwhile."""
    eng = engine()
    _reserve(eng, 1, ReservationKind.DUID, DUID_A.hex(":"), prefix6="2001:db8:100::/55")
    assert bind(eng, ia_pd(2)).writes[0][0].prefix == "2001:db8:100::/55"
    eng.remove_reservation(1)
    given = IPv6Network(bind(eng, ia_pd(2), client=DUID_B, now=T0 + 1).writes[0][0].prefix)
    assert not given.overlaps(IPv6Network("2001:db8:100::/55")), given


def test_a_line_reservation_names_the_subscriber_and_suspension_takes_ipv6_away() -> None:
    eng = engine()
    eng.load([], [Reservation(id=1, subscriber_id=42, kind=ReservationKind.CIRCUIT_ID, key="olt1 1/1/3"),
                  Reservation(id=2, subscriber_id=43, kind=ReservationKind.REMOTE_ID, key="line-9")],
             {42: SubscriberStatus.ACTIVE, 43: SubscriberStatus.ACTIVE})
    relays = (_relay(message(MessageType.SOLICIT), "2001:db8:1::1", b"olt1 1/1/3"),)
    outcome = bind(eng, ia_na(), ia_pd(), interface="uplink", relays=relays)
    assert {lease.subscriber_id for lease, _ in outcome.writes} == {42}
    by_remote = bind(eng, ia_pd(), client=DUID_B, interface="uplink",
                     relays=(_relay(message(MessageType.SOLICIT), "2001:db8:1::1", None, b"\x00\x00\x0d\xe9line-9"),))
    assert by_remote.writes[0][0].subscriber_id == 43 and by_remote.writes[0][0].remote_id == "line-9"
    eng.set_subscriber_status(42, SubscriberStatus.SUSPENDED)
    renew = handle(eng, message(MessageType.RENEW, ia_na(1, "2001:db8:1::100"), ia_pd(2, "2001:db8:100::/56"),
                                server=SERVER_DUID), T0 + 1800, interface="uplink", relays=relays)
    na, pd = reply_ias(renew)
    assert na.leases == (IAAddress(IPv6Address("2001:db8:1::100"), 0, 0),)
    assert na.status is not None and na.status[0] == StatusCode.NO_ADDRS_AVAIL
    assert pd.status is not None and pd.status[0] == StatusCode.NO_PREFIX_AVAIL
    assert {lease.state for lease, _ in renew.writes} == {LeaseState.RELEASED}


def test_reclaim_expires_bindings_past_their_valid_lifetime() -> None:
    eng = engine()
    bind(eng, ia_na(1))
    assert not eng.reclaim(T0 + 7199).writes
    expired = eng.reclaim(T0 + 7200)
    assert [(lease.state, event) for lease, event in expired.writes] == [(LeaseState.EXPIRED, "expired")]
    assert not eng.reclaim(T0 + 7300).writes


def test_bindings_loaded_from_the_store_are_kept() -> None:
    first = engine()
    outcome = bind(first, ia_na(1), ia_pd(2))
    second = engine()
    second.load([lease for lease, _ in outcome.writes], [], {})
    renew = handle(second, message(MessageType.RENEW, ia_na(1), ia_pd(2), server=SERVER_DUID), T0 + 100)
    assert {lease.prefix for lease, _ in renew.writes} == {"2001:db8:1::100/128", "2001:db8:100::/56"}
    usage = {row[0]: row[1:] for row in second.pool_usage(T0 + 100)}
    assert usage["hosts"] == ("na", 2, 1, 0) and usage["homes"] == ("pd", 4, 1, 0)


def test_ia_ta_is_refused() -> None:
    ia_ta = option(OptionCode.IA_TA, struct.pack("!I", 5))
    outcome = handle(engine(), message(MessageType.SOLICIT, ia_ta))
    assert outcome.reply is not None
    ta = next(o.data for o in outcome.reply.options if o.code == OptionCode.IA_TA)
    assert ta[:4] == struct.pack("!I", 5) and int.from_bytes(ta[8:10], "big") == StatusCode.NO_ADDRS_AVAIL


@pytest.mark.parametrize(("change", "error"), [
    ({"subnet": [{"name": "a", "prefix": "2001:db8:1::/64", "pool": [{"name": "p", "range": "2001:db8:2::1 - 2001:db8:2::9"}]}],
      "interfaces": ["eth1"]}, "is not inside"),
    ({"subnet": [{"name": "a", "prefix": "2001:db8:1::/64",
                  "prefix_pool": [{"name": "p", "prefix": "2001:db8:100::/56", "delegated_length": 48}]}]},
     "shorter than"),
    ({"subnet": [{"name": "a", "prefix": "2001:db8:1::/64"}]}, "give it a"),
    ({"subnet": [{"name": "a", "prefix": "2001:db8:1::/64", "prefix_pool": [
        {"name": "p", "prefix": "2001:db8:100::/40", "delegated_length": 56}]},
                 {"name": "b", "prefix": "2001:db8:2::/64", "prefix_pool": [
                     {"name": "q", "prefix": "2001:db8:180::/48", "delegated_length": 56}]}]}, "overlaps"),
    ({"renew_seconds": 3000, "rebind_seconds": 2000}, "after rebind_seconds"),
    ({"preferred_lifetime_seconds": 7200, "valid_lifetime_seconds": 3600}, "longer than the valid"),
    ({"server_duid": "zz"}, "hex bytes"),
    ({"interfaces": []}, "at least one interface"),
    ({"subnet": [{"name": "a", "prefix": "2001:db8:1::/64", "interface": "eth1",
                  "pool": [{"name": "p", "range": "2001:db8:1::100 - 2001:db8:1::1ff"}]},
                 {"name": "b", "prefix": "2001:db8:3::/64", "interface": "eth1",
                  "pool": [{"name": "q", "range": "2001:db8:3::100 - 2001:db8:3::1ff"}]}]},
     "interface 'eth1' already serves subnet 'a'"),
])
def test_config_mistakes_are_explained(change: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        config(**change)


@pytest.mark.parametrize(("change", "warning"), [
    ({"subnet": [{"name": "a", "prefix": "2001:db8:1::/64", "relay_addresses": ["2001:db8:ff::1"],
                  "pool": [{"name": "p", "range": "2001:db8:1::100 - 2001:db8:1::1ff"}]},
                 {"name": "b", "prefix": "2001:db8:3::/64", "relay_addresses": ["2001:db8:ff::1"],
                  "pool": [{"name": "q", "range": "2001:db8:3::100 - 2001:db8:3::1ff"}]}]},
     "relay address 2001:db8:ff::1 is claimed by subnets 'a', 'b' (a prefix that holds it, or relay_addresses): "
     "its relay's clients are served from 'a'"),
    ({"subnet": [{"name": "a", "prefix": "2001:db8:1::/64",
                  "pool": [{"name": "p", "range": "2001:db8:1::100 - 2001:db8:1::1ff"}]},
                 {"name": "b", "prefix": "2001:db8:3::/64", "relay_addresses": ["2001:db8:1::2"],
                  "pool": [{"name": "q", "range": "2001:db8:3::100 - 2001:db8:3::1ff"}]}]},
     "relay address 2001:db8:1::2 is claimed by subnets 'a', 'b'"),
])
def test_a_relay_address_two_subnets_claim_is_warned_of_naming_the_one_that_serves(change: dict[str, Any],
                                                                                  warning: str) -> None:
    """From a DHCPv6 check with dhcrelay: which subnet served a relay's clients depended on the
    order of the subnets in the file. A config that ran must still start (docs/DESIGN.md): a
    warning, naming the subnet that serves them."""
    [said] = config(**change).warnings()
    assert said.event == "dhcp6.subnet.relay_address_ambiguous" and said.detail.startswith(warning), said


def test_a_relay_that_leaves_its_link_address_empty_is_placed_by_its_own_address() -> None:
    eng = engine()
    relayed = Received6(message(MessageType.SOLICIT, ia_na()), "uplink",
                        (_relay(message(MessageType.SOLICIT), "::"),), True, IPv6Address("2001:db8:ff::1"))
    outcome = eng.handle(relayed, T0)
    assert outcome.reply is not None and reply_ias(outcome)[0].leases[0].address in IPv6Network("2001:db8:2::/64")  # type: ignore[union-attr]
    stranger = Received6(relayed.message, "uplink", relayed.relays, True, IPv6Address("2001:db8:ff::9"))
    assert eng.handle(stranger, T0).ignored is Ignored6.NO_SUBNET


def test_a_request_without_the_advertised_address_still_gets_it() -> None:
    """dhcpcd and others may send the Request (or a rapid-commit Solicit) without repeating what
    was advertised: they get the prefix held for them, not the next one."""
    eng = engine()
    offered = reply_ias(handle(eng, message(MessageType.SOLICIT, ia_pd(2))))[0].leases
    request = handle(eng, message(MessageType.REQUEST, ia_pd(2), server=SERVER_DUID), T0 + 1)
    assert reply_ias(request)[0].leases == offered


def _held_run(count: int) -> list[Lease6]:
    """``count`` live bindings from the start of a /110 pool (256k addresses), one client each."""
    first = int(IPv6Address("2001:db8:1::1:0"))
    return [Lease6(prefix=f"{IPv6Address(first + i)}/128", kind=Lease6Kind.ADDRESS, state=LeaseState.BOUND,
                   duid=f"00:03:00:01:{i >> 8:02x}:{i & 0xff:02x}", iaid=1, starts_at=T0 - 100,
                   preferred_until=T0 + 3600, expires_at=T0 + 7200, link="access", pool="big")
            for i in range(count)]


def test_a_pool_with_a_long_run_of_bindings_still_allocates_after_a_restart_and_a_reload() -> None:
    # More bindings in a row than one allocation scans: a cursor back at the pool's start after a
    # restart (or a reload) read the pool as full for every new client.
    big = [{"name": "access", "prefix": "2001:db8:1::/64", "interface": "eth1",
            "pool": [{"name": "big", "range": "2001:db8:1::1:0 - 2001:db8:1::4:ffff"}]}]
    eng = engine(subnet=big)
    eng.load(_held_run(SCAN_LIMIT + 10), [], {})
    first = reply_ias(handle(eng, message(MessageType.SOLICIT, ia_na(1))))[0]
    assert first.status is None and first.leases[0].address == IPv6Address("2001:db8:1::1:0") + SCAN_LIMIT + 10
    eng.reconfigure(config(subnet=[{**big[0], "pool": [{"name": "big", "range": "2001:db8:1::1:0 - 2001:db8:1::5:ffff"}]}]))
    again = reply_ias(handle(eng, message(MessageType.SOLICIT, ia_na(1), client=DUID_B)))[0]
    assert again.status is None


def test_a_scan_that_finds_a_stretch_full_moves_on_for_the_next_client() -> None:
    big = [{"name": "access", "prefix": "2001:db8:1::/64", "interface": "eth1",
            "pool": [{"name": "big", "range": "2001:db8:1::1:0 - 2001:db8:1::4:ffff"}]}]
    eng = engine(subnet=big)
    eng.load(_held_run(SCAN_LIMIT + 10), [], {})
    eng.cursors["big"] = 0  # as a cursor that has come round to a held stretch
    unlucky = reply_ias(handle(eng, message(MessageType.SOLICIT, ia_na(1))))[0]
    assert unlucky.status is not None  # one scan's worth held: this one is refused...
    later = reply_ias(handle(eng, message(MessageType.SOLICIT, ia_na(1), client=DUID_B)))[0]
    assert later.status is None  # ...but the pool is not called full for ever


def test_one_message_of_many_ias_cannot_take_a_pool() -> None:
    eng = engine()
    many = [ia_na(iaid) for iaid in range(MAX_IAS_PER_KIND + 50)]
    solicit = reply_ias(handle(eng, message(MessageType.SOLICIT, *many), interface="uplink",
                               relays=(_relay(message(MessageType.SOLICIT, *many), "2001:db8:2::1"),)))
    given = [ia for ia in solicit if ia.leases]
    assert len(given) == MAX_IAS_PER_KIND
    assert all(ia.status is not None and ia.status[0] == StatusCode.NO_ADDRS_AVAIL for ia in solicit[len(given):])
    assert len(eng.offers) == MAX_IAS_PER_KIND


def _fuzz_option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


_FUZZ_OPTIONS = st.one_of(
    st.tuples(st.sampled_from([1, 2, 4, 6, 7, 8, 13, 14, 18, 37, 39, 200]), st.binary(max_size=24))
    .map(lambda t: _fuzz_option(*t)),
    st.tuples(st.sampled_from([3, 25]), st.integers(0, 2**32 - 1),
              st.lists(st.tuples(st.sampled_from([5, 26, 13]), st.binary(min_size=24, max_size=30)), max_size=3))
    .map(lambda t: _fuzz_option(t[0], struct.pack("!III", t[1], 0, 0) + b"".join(_fuzz_option(*o) for o in t[2]))),
    st.sampled_from([_fuzz_option(1, DUID_A), _fuzz_option(1, DUID_B), _fuzz_option(2, SERVER_DUID),
                     _fuzz_option(14, b"")]),
    # Leasequery's question: any bytes, or a query type, a link and an address or DUID to ask by.
    st.binary(max_size=40).map(lambda data: _fuzz_option(44, data)),
    st.tuples(st.integers(0, 3), st.sampled_from(["::", "2001:db8:1::1", "2001:db8:9::1"]),
              st.sampled_from([_fuzz_option(5, IPv6Address("2001:db8:1::100").packed + bytes(8)),
                               _fuzz_option(5, IPv6Address("2001:db8:100::1").packed), _fuzz_option(1, DUID_A),
                               _fuzz_option(1, b"")]))
    .map(lambda t: _fuzz_option(44, bytes((t[0],)) + IPv6Address(t[1]).packed + t[2])),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 15), st.lists(_FUZZ_OPTIONS, max_size=6), st.booleans(),
                          st.booleans(), st.integers(0, 4000)), max_size=8))
def test_decoded_messages_never_make_the_engine_raise_and_every_reply_encodes(
        steps: list[tuple[int, list[bytes], bool, bool, int]]) -> None:
    eng, now = engine(rapid_commit=True, leasequery_requesters=["::/0"]), T0
    for kind, options, relayed, multicast, later in steps:
        now += later
        try:
            msg = decode(bytes([kind, 0, 0, 1]) + b"".join(options))
        except DHCP6DecodeError:
            continue
        assert isinstance(msg, Message)
        relays = (_relay(msg, "2001:db8:2::1", b"port 1"),) if relayed else ()
        outcome = eng.handle(Received6(msg, "uplink" if relayed else "eth1", relays, multicast,
                                       IPv6Address("2001:db8:ff::1")), now)
        if outcome.reply is not None:
            assert decode(encode(outcome.reply)).transaction_id == 1  # type: ignore[union-attr]
        eng.reclaim(now)


def test_a_renewed_binding_is_not_expired_at_its_first_end_and_ended_ones_are_forgotten_in_time() -> None:
    eng = engine(remember_ended_seconds=3600)
    bind(eng, ia_na(1))
    handle(eng, message(MessageType.RENEW, ia_na(1, "2001:db8:1::100"), server=SERVER_DUID), T0 + 3000)
    assert not eng.reclaim(T0 + 7200).writes  # renewed until T0 + 10200
    expired = eng.reclaim(T0 + 10200)
    assert [(lease.prefix, lease.state) for lease, _ in expired.writes] == [("2001:db8:1::100/128", LeaseState.EXPIRED)]
    eng.reclaim(T0 + 10200 + 3599)
    assert "2001:db8:1::100/128" in eng.leases  # a client back within the hour gets it again
    eng.reclaim(T0 + 10200 + 3600)
    assert eng.leases == {} and eng.by_ia == {}


def test_a_returning_client_within_the_memory_gets_its_old_address() -> None:
    eng = engine(remember_ended_seconds=86400)
    bind(eng, ia_na(1))
    bind(eng, ia_na(1), client=DUID_B)
    eng.reclaim(T0 + 7200)  # both expired
    later = bind(eng, ia_na(1), client=DUID_B, now=T0 + 8000)
    assert later.writes[0][0].prefix == "2001:db8:1::101/128"


def test_a_relay_forward_from_a_link_of_direct_clients_is_ignored_unless_told() -> None:
    """A subscriber's device on eth1 writes a Relay-forward naming another line's Interface-ID."""
    relays = (_relay(message(MessageType.SOLICIT), "2001:db8:2::1", b"olt1 1/1/3"),)
    spoofed = handle(engine(), message(MessageType.SOLICIT, ia_pd()), interface="eth1", relays=relays)
    assert spoofed.reply is None and spoofed.ignored is Ignored6.RELAY_ON_CLIENT_LINK
    ldra = handle(engine(relays_on_client_links="use"), message(MessageType.SOLICIT, ia_na()), interface="eth1",
                  relays=relays)
    assert ldra.reply is not None and ldra.reply.type == MessageType.ADVERTISE


def test_a_lightweight_relay_s_client_is_on_the_link_it_came_in_on() -> None:
    """An LDRA (RFC 6221 §5.3.1) always sends the link-address ::, from the client's own link:
    with relays_on_client_links = "use", its client is served from that link's subnet (Kea
    does the same), by its line's Interface-ID."""
    eng = engine(relays_on_client_links="use")
    eng.load([], [Reservation(id=1, subscriber_id=42, kind=ReservationKind.CIRCUIT_ID, key="switch1 port3")],
             {42: SubscriberStatus.ACTIVE})
    relays = (_relay(message(MessageType.SOLICIT), "::", b"switch1 port3"),)
    outcome = handle(eng, message(MessageType.SOLICIT, ia_na(), ia_pd(), oro=(), server=None), interface="eth1",
                     relays=relays)
    assert outcome.ignored is None and outcome.reply is not None and outcome.reply.type == MessageType.ADVERTISE
    [na, pd] = reply_ias(outcome)
    assert [str(lease.address) for lease in na.leases if isinstance(lease, IAAddress)] == ["2001:db8:1::100"]
    assert pd.leases and pd.status is None
    # Elsewhere (a relay's uplink, where no subnet serves direct clients) :: still names no link.
    uplink = handle(eng, message(MessageType.SOLICIT, ia_na()), interface="uplink", relays=relays)
    assert uplink.reply is None and uplink.ignored is Ignored6.NO_SUBNET


def test_unknown_clients_may_be_ignored() -> None:
    eng = engine(unknown_clients="ignore")
    eng.load([], [Reservation(id=1, subscriber_id=42, kind=ReservationKind.CIRCUIT_ID, key="olt1 1/1/3")],
             {42: SubscriberStatus.ACTIVE})
    known = (_relay(message(MessageType.SOLICIT), "2001:db8:1::1", b"olt1 1/1/3"),)
    stranger = (_relay(message(MessageType.SOLICIT), "2001:db8:1::1", b"olt1 1/1/4"),)
    assert handle(eng, message(MessageType.SOLICIT, ia_pd()), interface="uplink", relays=known).reply is not None
    ignored = handle(eng, message(MessageType.SOLICIT, ia_pd()), interface="uplink", relays=stranger)
    assert ignored.reply is None and ignored.ignored is Ignored6.UNKNOWN_CLIENT


def _reserve(eng: DHCP6Engine, rid: int, kind: ReservationKind, key: str, *, prefix6: str | None = None,
             address6: str | None = None, subscriber: int = 42) -> None:
    eng.subscriber_status.setdefault(subscriber, SubscriberStatus.ACTIVE)
    eng.add_reservation(Reservation(id=rid, subscriber_id=subscriber, kind=kind, key=key, prefix6=prefix6,
                                    address6=address6))


def test_a_line_s_static_prefix_and_a_device_s_static_address() -> None:
    """A business line's /48 outside every pool, by its Interface-ID; a device's fixed address
    inside a pool, by its DUID: each goes to its client, with its subscriber."""
    eng = engine()
    _reserve(eng, 1, ReservationKind.CIRCUIT_ID, "bng1 ge-0/0/1:100", prefix6="2001:db8:ffff::/48")
    _reserve(eng, 2, ReservationKind.DUID, DUID_B.hex(":"), address6="2001:db8:1::100", subscriber=43)
    line = (_relay(message(MessageType.SOLICIT), "2001:db8:1::1", b"bng1 ge-0/0/1:100"),)
    business = bind(eng, ia_pd(2), interface="uplink", relays=line)
    assert reply_ias(business)[0].leases == (IAPrefix(IPv6Network("2001:db8:ffff::/48"), 3600, 7200),)
    assert business.writes[0][0].subscriber_id == 42 and business.writes[0][0].pool is None
    first = bind(eng, ia_na(1))  # DUID_A, unreserved: the pool's first address is B's
    assert first.writes[0][0].prefix == "2001:db8:1::101/128"
    device = bind(eng, ia_na(1), client=DUID_B)
    assert device.writes[0][0].prefix == "2001:db8:1::100/128" and device.writes[0][0].subscriber_id == 43


def test_a_device_s_reserved_address_is_given_on_its_own_link_only() -> None:
    """A device reserved by its DUID with an address of the access link, plugged in behind a
    BNG: an address of the BNG's link (the reserved one is routed to the access link, and the
    server's own Confirm says NotOnLink of it there), and its reserved address back at home."""
    eng = engine()
    _reserve(eng, 1, ReservationKind.DUID, DUID_A.hex(":"), address6="2001:db8:1::100")
    bng = (_relay(message(MessageType.SOLICIT), "2001:db8:2::1"),)
    elsewhere = bind(eng, ia_na(1), interface="uplink", relays=bng)
    (ia,) = reply_ias(elsewhere)
    assert [lease.address for lease in ia.leases] == [IPv6Address("2001:db8:2::100")]  # type: ignore[union-attr]
    home = bind(eng, ia_na(1), now=T0 + 10)
    assert home.writes[0][0].prefix == "2001:db8:1::100/128"


def test_a_device_reserved_by_its_duid_still_gets_its_line_s_prefix() -> None:
    """A DUID reservation for the router's host name only, on a business line whose
    reservation holds the /48: the router gets the /48, the DUID's subscriber being the line's.
    Another subscriber's device on that line does not."""
    eng = engine()
    _reserve(eng, 1, ReservationKind.CIRCUIT_ID, "bng1 ge-0/0/1:100", prefix6="2001:db8:ffff::/48")
    _reserve(eng, 2, ReservationKind.DUID, DUID_A.hex(":"))
    line = (_relay(message(MessageType.SOLICIT), "2001:db8:1::1", b"bng1 ge-0/0/1:100"),)
    router = bind(eng, ia_pd(2), interface="uplink", relays=line)
    assert reply_ias(router)[0].leases == (IAPrefix(IPv6Network("2001:db8:ffff::/48"), 3600, 7200),)
    assert router.writes[0][0].subscriber_id == 42
    _reserve(eng, 3, ReservationKind.DUID, DUID_B.hex(":"), subscriber=43)
    visitor = bind(eng, ia_pd(2), client=DUID_B, interface="uplink",
                   relays=(_relay(message(MessageType.SOLICIT, client=DUID_B), "2001:db8:1::1", b"bng1 ge-0/0/1:100"),))
    assert visitor.writes[0][0].prefix != "2001:db8:ffff::/48" and visitor.writes[0][0].subscriber_id == 43


def test_a_prefix_holding_a_reserved_one_is_not_handed_out() -> None:
    eng = engine()
    _reserve(eng, 1, ReservationKind.DUID, DUID_B.hex(":"), prefix6="2001:db8:100:10::/60")
    got = reply_ias(bind(eng, ia_pd(2)))[0].leases[0]
    assert got == IAPrefix(IPv6Network("2001:db8:100:100::/56"), 3600, 7200)  # not the first /56: it holds B's /60
    hint = reply_ias(bind(eng, ia_pd(2, "2001:db8:100::/56"), client=bytes.fromhex("00030001020000000009")))[0]
    assert hint.leases[0].prefix == IPv6Network("2001:db8:100:200::/56")  # type: ignore[union-attr]
    owner = reply_ias(bind(eng, ia_pd(2), client=DUID_B))[0]
    assert owner.leases[0].prefix == IPv6Network("2001:db8:100:10::/60")  # type: ignore[union-attr]


def test_a_radius_login_s_reserved_prefix_and_address_are_skipped_by_the_pools() -> None:
    """A PPPoE login's fixed IPv6 (the NAS gets it by RADIUS) is one IPAM with DHCPv6: no
    DHCPv6 client gets it, nor a prefix holding it."""
    eng = engine()
    _reserve(eng, 1, ReservationKind.USERNAME, "acme@pppoe", prefix6="2001:db8:100::/56", address6="2001:db8:1::100")
    assert reply_ias(bind(eng, ia_pd(2)))[0].leases[0].prefix == IPv6Network("2001:db8:100:100::/56")  # type: ignore[union-attr]
    assert bind(eng, ia_na(1)).writes[0][0].prefix == "2001:db8:1::101/128"


def test_a_prefix_an_open_radius_session_has_is_skipped_by_the_pools() -> None:
    """From a bug hunt: a session keeps the prefix its deleted reservation gave it until it logs in
    again, but DHCPv6 delegated that /56 to the next router that asked (`ispd who` named both). A
    session's networks in a pool are skipped until its Stop; one a DHCPv6 binding has (a BNG
    that relays DHCPv6 reports its client's prefix in its accounting) stays its client's."""
    eng = engine()
    eng.session_opened(7, ["2001:db8:100::/56", "2001:db8:1::100/128", "2001:db8:ffff:1::/64"])
    assert list(eng.in_sessions) == [7] and eng.in_sessions[7][-1] == IPv6Network("2001:db8:1::100/128")
    first = bind(eng, ia_pd(2), ia_na(1))
    assert sorted(write[0].prefix for write in first.writes) == ["2001:db8:100:100::/56", "2001:db8:1::101/128"]
    eng.session_opened(8, ["2001:db8:100:100::/56"])  # the binding's own prefix, reported by its relay
    renewed = handle(eng, message(MessageType.RENEW, *[o for o in first.reply.options  # type: ignore[union-attr]
                                                       if o.code in (OptionCode.IA_NA, OptionCode.IA_PD)],
                                  server=SERVER_DUID), T0 + 100)
    assert "2001:db8:100:100::/56" in [w[0].prefix for w in renewed.writes]
    hinted = handle(eng, message(MessageType.SOLICIT, ia_pd(2, "2001:db8:100::/56"), client=DUID_B))
    assert reply_ias(hinted)[0].leases[0].prefix == IPv6Network("2001:db8:100:200::/56")  # type: ignore[union-attr]
    eng.session_closed(7)  # its Stop: anyone's
    third = bytes.fromhex("0003000102005e100003")
    hinted = handle(eng, message(MessageType.SOLICIT, ia_pd(2, "2001:db8:100::/56"), client=third))
    assert reply_ias(hinted)[0].leases[0].prefix == IPv6Network("2001:db8:100::/56")  # type: ignore[union-attr]


def test_a_binding_reserved_since_goes_to_its_owner_at_the_holder_s_next_renewal() -> None:
    eng = engine()
    bind(eng, ia_na(1))  # DUID_A has 2001:db8:1::100
    _reserve(eng, 2, ReservationKind.DUID, DUID_B.hex(":"), address6="2001:db8:1::100", subscriber=43)
    meanwhile = bind(eng, ia_na(1), client=DUID_B, now=T0 + 10)
    assert meanwhile.writes[0][0].prefix == "2001:db8:1::101/128"  # the owner waits
    renew = handle(eng, message(MessageType.RENEW, ia_na(1, "2001:db8:1::100"), server=SERVER_DUID), T0 + 1800)
    (ia,) = reply_ias(renew)
    assert IAAddress(IPv6Address("2001:db8:1::100"), 0, 0) in ia.leases  # taken back
    owner = handle(eng, message(MessageType.RENEW, ia_na(1, "2001:db8:1::101"), client=DUID_B, server=SERVER_DUID),
                   T0 + 1900)
    assert IAAddress(IPv6Address("2001:db8:1::100"), 3600, 7200) in reply_ias(owner)[0].leases
    eng.remove_reservation(2)
    assert eng.reserved.networks == {} and not eng.reserved.taken(IPv6Network("2001:db8:1::100/128"), None)


def test_renewals_do_not_grow_the_expiry_heap() -> None:
    """A client renewing every second: one entry for its binding, not one per Renew."""
    eng = engine()
    bind(eng, ia_na(1))
    for second in range(1, 1001):
        handle(eng, message(MessageType.RENEW, ia_na(1, "2001:db8:1::100"), server=SERVER_DUID), T0 + second)
        eng.reclaim(T0 + second)
    assert len(eng._timeline) <= 2
    expired = eng.reclaim(T0 + 1000 + 7200)
    assert [(lease.prefix, lease.state) for lease, _ in expired.writes] == [("2001:db8:1::100/128", LeaseState.EXPIRED)]


@pytest.mark.parametrize(("before", "after", "forgotten_at"), [(100, 1000, T0 + 10 + 1000), (100_000, 100, T0 + 110)])
def test_a_reload_changing_the_memory_of_ended_bindings_forgets_them_on_the_new_time(
        before: int, after: int, forgotten_at: float) -> None:
    eng = engine(remember_ended_seconds=before)
    bind(eng, ia_na(1))
    handle(eng, message(MessageType.RELEASE, ia_na(1, "2001:db8:1::100"), server=SERVER_DUID), T0 + 10)
    eng.reconfigure(config(remember_ended_seconds=after))
    eng.reclaim(min(T0 + 200, forgotten_at - 1))  # (past the old due time when the memory was made longer)
    eng.reclaim(forgotten_at - 1)
    assert "2001:db8:1::100/128" in eng.leases
    eng.reclaim(forgotten_at)
    assert eng.leases == {} and eng.by_ia == {}


def test_a_prefix_taken_by_another_client_is_forgotten_by_both() -> None:
    """A releases, B gets the address, B's ended binding is forgotten: A's history must not keep
    naming it (memory that grew with every reuse of an address)."""
    eng = engine(remember_ended_seconds=100)
    bind(eng, ia_na(1))
    handle(eng, message(MessageType.RELEASE, ia_na(1, "2001:db8:1::100"), server=SERVER_DUID), T0 + 10)
    assert bind(eng, ia_na(1, "2001:db8:1::100"), client=DUID_B, now=T0 + 20).writes[0][0].duid == DUID_B.hex(":")
    handle(eng, message(MessageType.RELEASE, ia_na(1, "2001:db8:1::100"), client=DUID_B, server=SERVER_DUID), T0 + 30)
    eng.reclaim(T0 + 1000)
    assert eng.leases == {} and eng.by_ia == {}


@pytest.mark.parametrize("reserved", ["2001:db8:100::/55", "2001:db8:100::/60", "2001:db8:200::/47"])
def test_a_reserved_prefix_is_not_given_while_another_holds_a_part_of_it_or_a_prefix_around_it(
        reserved: str) -> None:
    """A holds the homes pool's first /56 (and the business pool's first /48); a reservation
    made since for B covers A's /56 (a /55), lies inside it (a /60), or covers A's /48 and the
    next (a /47): B waits for A's next renewal, which takes A's away."""
    eng = engine()
    held = {lease.prefix for lease, _ in bind(eng, ia_pd(2), ia_pd(3, "::/48")).writes}
    assert held == {"2001:db8:100::/56", "2001:db8:200::/48"}
    _reserve(eng, 1, ReservationKind.DUID, DUID_B.hex(":"), prefix6=reserved)
    waiting = bind(eng, ia_pd(2), client=DUID_B, now=T0 + 10)
    assert waiting.writes[0][0].prefix != reserved
    renew = handle(eng, message(MessageType.RENEW, ia_pd(2, "2001:db8:100::/56"), ia_pd(3, "2001:db8:200::/48"),
                                server=SERVER_DUID), T0 + 1800)
    kept = {lease.prefix for lease, event in renew.writes if event != "released"}
    assert not any(IPv6Network(prefix).overlaps(IPv6Network(reserved)) for prefix in kept)
    owner = handle(eng, message(MessageType.RENEW, ia_pd(2, waiting.writes[0][0].prefix), client=DUID_B,
                                server=SERVER_DUID), T0 + 1900)
    assert IAPrefix(IPv6Network(reserved), 3600, 7200) in reply_ias(owner)[0].leases


def test_a_reserved_prefix_over_many_of_a_pool_s_prefixes_looks_at_the_bindings() -> None:
    """A /48 reserved over a pool of /64s (65536 of them, more than one scan): the bindings held
    in it are found all the same."""
    eng = DHCP6Engine(DHCP6Config.model_validate({
        "enabled": True, "interfaces": ["eth1"], "subnet": [
            {"name": "lan", "prefix": "2001:db8:1::/64", "interface": "eth1",
             "prefix_pool": [{"name": "small", "prefix": "2001:db8:300::/44", "delegated_length": 64}]}]}),
        SERVER_DUID)
    assert bind(eng, ia_pd(2)).writes[0][0].prefix == "2001:db8:300::/64"
    _reserve(eng, 1, ReservationKind.DUID, DUID_B.hex(":"), prefix6="2001:db8:300::/48")
    waiting = bind(eng, ia_pd(2), client=DUID_B, now=T0 + 10)
    assert "2001:db8:300::/48" not in {lease.prefix for lease, _ in waiting.writes}


def test_a_subscriber_s_fixed_address_inside_its_own_fixed_prefix_keeps_neither_from_its_client() -> None:
    """The store lets a subscriber reserve an address inside its own prefix (its business)."""
    eng = engine()
    _reserve(eng, 1, ReservationKind.DUID, DUID_A.hex(":"), prefix6="2001:db8:200::/48")  # a business pool prefix
    _reserve(eng, 2, ReservationKind.DUID, DUID_B.hex(":"), address6="2001:db8:200::1")
    assert bind(eng, ia_pd(2)).writes[0][0].prefix == "2001:db8:200::/48"
    assert bind(eng, ia_na(1), client=DUID_B).writes[0][0].prefix == "2001:db8:200::1/128"
    stranger = bind(eng, ia_pd(2, "2001:db8:200::/48"), client=bytes.fromhex("00030001020000000009"))
    assert stranger.writes[0][0].prefix == "2001:db8:201::/48"
    eng.remove_reservation(2)
    eng.add_reservation(Reservation(id=2, subscriber_id=43, kind=ReservationKind.DUID, key=DUID_B.hex(":"),
                                    address6="2001:db8:200::1"))  # (another subscriber's: the store refuses it)
    assert eng.reserved.taken(IPv6Network("2001:db8:200::/48"), 1, 42)


def test_the_reserved_space_answers_lengths_that_are_no_pool_s_without_a_walk() -> None:
    eng = engine()
    _reserve(eng, 1, ReservationKind.DUID, DUID_A.hex(":"), prefix6="2001:db8:ffff:10::/60")
    _reserve(eng, 2, ReservationKind.DUID, DUID_B.hex(":"), prefix6="2001:db8:fffe::/52")
    space = eng.reserved
    assert {52, 60} <= space.lengths and space.inside[52][int(IPv6Address("2001:db8:ffff::")) >> 76] == {1}
    space.networks[99] = [IPv6Network("2001:db8:ffff:10::/60")]  # (what a walk over all would find)
    assert not space.taken(IPv6Network("2001:db8:ffff::/52"), 1)
    del space.networks[99]
    assert space.taken(IPv6Network("2001:db8:ffff::/52"), 2) and not space.taken(IPv6Network("2001:db8:ffff::/52"), 1)
    space.remove(1)
    assert not space.taken(IPv6Network("2001:db8:ffff::/52"), 2)
    _reserve(eng, 1, ReservationKind.DUID, DUID_A.hex(":"), prefix6="2001:db8:ffff:10::/60")
    assert space.taken(IPv6Network("2001:db8:ffff::/52"), 2)
    eng.reconfigure(config(subnet=[{"name": "access", "prefix": "2001:db8:1::/64", "interface": "eth1",
                                    "prefix_pool": [{"name": "homes", "prefix": "2001:db8:ff00::/40",
                                                     "delegated_length": 58}]}]))
    assert eng.reserved.taken(IPv6Network("2001:db8:ffff::/58"), 2)


def test_a_reservation_found_again_by_its_id_when_it_changes_or_goes() -> None:
    """Removal finds a reservation by its id (at start each of thousands comes through it): one
    added again under another key leaves its old key, and removing it leaves nothing behind."""
    eng = engine()
    _reserve(eng, 7, ReservationKind.CIRCUIT_ID, "old line", prefix6="2001:db8:ffff::/48")
    _reserve(eng, 7, ReservationKind.CIRCUIT_ID, "new line", prefix6="2001:db8:fffe::/48")
    assert set(eng.reservations) == {("circuit-id", "new line")}
    assert not eng.reserved.taken(IPv6Network("2001:db8:ffff::/48"), None)
    _reserve(eng, 8, ReservationKind.CIRCUIT_ID, "old line")  # another reservation takes the old key
    eng.remove_reservation(7)
    assert set(eng.reservations) == {("circuit-id", "old line")} and eng.reserved.networks == {}


# --- leasequery (RFC 5007)

REQUESTER = IPv6Address("2001:db8:ff::1")  # the BNG
REQUESTER_DUID = bytes.fromhex("000300010200005eff01")


def leasequery(query_type: int, *query_options: Option, link: str = "::", server: bytes | None = None) -> Message:
    lq = bytes((query_type,)) + IPv6Address(link).packed + encode_options(list(query_options))
    return message(MessageType.LEASEQUERY, option(OptionCode.LQ_QUERY, lq), client=REQUESTER_DUID, server=server,
                   oro=())


def ask(eng: DHCP6Engine, msg: Message, now: float, source: IPv6Address = REQUESTER,
        relays: tuple[RelayForward, ...] = ()) -> Outcome6:
    return eng.handle(Received6(msg, "uplink", relays, False, source), now)


def by_address(address: str) -> Option:
    return option(OptionCode.IAADDR, IPv6Address(address).packed + bytes(8))


def client_data(outcome: Outcome6) -> list[Option]:
    assert outcome.reply is not None and outcome.reply.type == MessageType.LEASEQUERY_REPLY
    assert outcome.reply.transaction_id == 0x2A and not outcome.writes
    raw = next((o.data for o in outcome.reply.options if o.code == OptionCode.CLIENT_DATA), None)
    if raw is None:
        return []
    decoded = decode(bytes([MessageType.REPLY]) + b"\0\0\0" + raw)
    assert isinstance(decoded, Message)
    return list(decoded.options)


def test_leasequery_by_address_finds_the_binding_or_the_delegated_prefix_holding_it() -> None:
    eng = engine(leasequery_requesters=["2001:db8:ff::/64"])
    bind(eng, ia_na(1), ia_pd(2))  # 2001:db8:1::100 and 2001:db8:100::/56
    now = T0 + 1000
    found = ask(eng, leasequery(1, by_address("2001:db8:1::100")), now)
    assert status_of(found) == StatusCode.SUCCESS
    assert found.reply is not None
    on_the_wire = decode(encode(found.reply))
    assert isinstance(on_the_wire, Message)
    assert (on_the_wire.server_id, on_the_wire.client_id) == (SERVER_DUID, REQUESTER_DUID)
    data = client_data(found)
    # With the prefix delegated to the same client on the link (RFC 5007 §4.1.2.2).
    assert [o.code for o in data] == [OptionCode.CLIENTID, OptionCode.IAADDR, OptionCode.IAPREFIX, OptionCode.CLT_TIME]
    assert data[0].data == DUID_A
    assert data[1].data == IPv6Address("2001:db8:1::100").packed + struct.pack("!II", 2600, 6200)
    assert struct.unpack("!I", data[3].data) == (1000,)
    # An address inside the delegated prefix: the prefix's binding (the route a BNG must put back).
    inside = client_data(ask(eng, leasequery(1, by_address("2001:db8:100:12::1")), now))
    assert [o.code for o in inside] == [OptionCode.CLIENTID, OptionCode.IAADDR, OptionCode.IAPREFIX,
                                        OptionCode.CLT_TIME]
    assert inside[2].data == struct.pack("!IIB", 2600, 6200, 56) + IPv6Address("2001:db8:100::").packed
    # Ours but free; not ours at all; on another link than asked.
    free = ask(eng, leasequery(1, by_address("2001:db8:1::101")), now)
    assert (status_of(free), client_data(free)) == (StatusCode.SUCCESS, [])
    assert status_of(ask(eng, leasequery(1, by_address("2001:db8:99::1")), now)) == StatusCode.NOT_CONFIGURED
    elsewhere = ask(eng, leasequery(1, by_address("2001:db8:1::100"), link="2001:db8:2::1"), now)
    assert (status_of(elsewhere), client_data(elsewhere)) == (StatusCode.SUCCESS, [])
    assert status_of(ask(eng, leasequery(1, by_address("2001:db8:1::100"), link="2001:db8:77::1"), now)) \
        == StatusCode.NOT_CONFIGURED
    # Expired: no active lease.
    assert client_data(ask(eng, leasequery(1, by_address("2001:db8:1::100")), T0 + 7201)) == []


@pytest.mark.parametrize("valid", [1200, 86400])
def test_leasequery_tells_the_last_renewal_after_the_lifetimes_changed(valid: int) -> None:
    """OPTION_CLT_TIME was counted back from the binding's end by the link's valid lifetime as
    configured now: after a reload lowered it, a client last heard of 40 minutes ago was said to
    have renewed a moment ago (0); raised, to have been silent since its first Request."""
    eng = engine(leasequery_requesters=[str(REQUESTER)])
    bind(eng, ia_na(1), ia_pd(2))
    renew = handle(eng, message(MessageType.RENEW, ia_na(1, "2001:db8:1::100"), ia_pd(2, "2001:db8:100::/56"),
                                server=SERVER_DUID), T0 + 1000)
    assert renew.reply is not None and [w[1] for w in renew.writes] == ["renewed", "renewed"]
    eng.reconfigure(config(leasequery_requesters=[str(REQUESTER)], preferred_lifetime_seconds=600,
                           valid_lifetime_seconds=valid))
    data = client_data(ask(eng, leasequery(1, by_address("2001:db8:1::100")), T0 + 3400))
    assert [o.code for o in data] == [OptionCode.CLIENTID, OptionCode.IAADDR, OptionCode.IAPREFIX, OptionCode.CLT_TIME]
    assert data[1].data == IPv6Address("2001:db8:1::100").packed + struct.pack("!II", 1200, 4800)  # as given
    assert struct.unpack("!I", data[3].data) == (2400,)


def test_leasequery_knows_a_link_by_its_relay_address() -> None:
    """A BNG whose link-address is one of a subnet's relay_addresses (its clients are placed in
    that subnet by it) asks about one of them on that link: the link is ours."""
    eng = engine(leasequery_requesters=[str(REQUESTER)])
    bng = (_relay(message(MessageType.SOLICIT), "2001:db8:ff::1"),)
    assert bind(eng, ia_na(1), interface="uplink", relays=bng).writes[0][0].link == "bng"
    on_link = ask(eng, leasequery(1, by_address("2001:db8:2::100"), link="2001:db8:ff::1"), T0 + 10)
    assert status_of(on_link) == StatusCode.SUCCESS
    assert [o.code for o in client_data(on_link)] == [OptionCode.CLIENTID, OptionCode.IAADDR, OptionCode.CLT_TIME]
    by_client = ask(eng, leasequery(2, option(OptionCode.CLIENTID, DUID_A), link="2001:db8:ff::1"), T0 + 10)
    assert len(client_data(by_client)) == 3


def test_leasequery_finds_a_prefix_whose_reservation_is_gone() -> None:
    """A business line's reserved /52 (a length no pool has), bound; the reservation deleted and ispd restarted (the
    store's bindings loaded, no reservation of that length any more): the router holds the /52
    until its next renewal, and a BNG asking by an address inside it must learn so."""
    eng = engine(leasequery_requesters=[str(REQUESTER)])
    _reserve(eng, 1, ReservationKind.CIRCUIT_ID, "bng1 ge-0/0/1:100", prefix6="2001:db8:ffff::/52")
    line = (_relay(message(MessageType.SOLICIT), "2001:db8:1::1", b"bng1 ge-0/0/1:100"),)
    business = bind(eng, ia_pd(2), interface="uplink", relays=line)
    restarted = engine(leasequery_requesters=[str(REQUESTER)])
    restarted.load([lease for lease, _ in business.writes], [], {42: SubscriberStatus.ACTIVE})
    inside = client_data(ask(restarted, leasequery(1, by_address("2001:db8:ffff:12::1")), T0 + 10))
    assert [o.code for o in inside] == [OptionCode.CLIENTID, OptionCode.IAPREFIX, OptionCode.CLT_TIME]
    assert inside[1].data[8:] == bytes([52]) + IPv6Address("2001:db8:ffff::").packed


def test_leasequery_by_client_id_gives_everything_the_client_holds() -> None:
    eng = engine(leasequery_requesters=[str(REQUESTER)])
    bind(eng, ia_na(1), ia_pd(2))
    bind(eng, ia_na(1), client=DUID_B)
    data = client_data(ask(eng, leasequery(2, option(OptionCode.CLIENTID, DUID_A)), T0 + 10))
    assert [o.code for o in data] == [OptionCode.CLIENTID, OptionCode.IAADDR, OptionCode.IAPREFIX, OptionCode.CLT_TIME]
    nobody = ask(eng, leasequery(2, option(OptionCode.CLIENTID, bytes.fromhex("00030001020000000009"))), T0)
    assert (status_of(nobody), client_data(nobody)) == (StatusCode.SUCCESS, [])
    # The same client on a second link: which links, and then one link's bindings when asked on it.
    relay = RelayForward(0, IPv6Address("2001:db8:2::1"), IPv6Address("fe80::1"), (), message(MessageType.SOLICIT))
    bind(eng, ia_na(3), interface="uplink", relays=(relay,))
    two = ask(eng, leasequery(2, option(OptionCode.CLIENTID, DUID_A)), T0 + 10)
    assert client_data(two) == [] and two.reply is not None
    links = next(o.data for o in two.reply.options if o.code == OptionCode.LQ_CLIENT_LINK)
    assert links == IPv6Address("2001:db8:1::").packed + IPv6Address("2001:db8:2::").packed
    on_bng = client_data(ask(eng, leasequery(2, option(OptionCode.CLIENTID, DUID_A), link="2001:db8:2::1"), T0 + 10))
    assert [o.code for o in on_bng] == [OptionCode.CLIENTID, OptionCode.IAADDR, OptionCode.CLT_TIME]
    assert on_bng[1].data[:16] == IPv6Address("2001:db8:2::100").packed


@pytest.mark.parametrize(("query", "status"), [
    (leasequery(1), StatusCode.MALFORMED_QUERY),  # no address to ask by
    (leasequery(1, option(OptionCode.IAADDR, b"\x20\x01")), StatusCode.MALFORMED_QUERY),
    (leasequery(2), StatusCode.MALFORMED_QUERY),  # no DUID to ask by
    (leasequery(9, by_address("2001:db8:1::100")), StatusCode.UNKNOWN_QUERY_TYPE),
    (message(MessageType.LEASEQUERY, option(OptionCode.LQ_QUERY, b"\x01"), client=REQUESTER_DUID, oro=()),
     StatusCode.MALFORMED_QUERY),
    (message(MessageType.LEASEQUERY, client=REQUESTER_DUID, oro=()), StatusCode.MALFORMED_QUERY),
])
def test_a_leasequery_that_cannot_be_answered_says_why(query: Message, status: StatusCode) -> None:
    outcome = ask(engine(leasequery_requesters=[str(REQUESTER)]), query, T0)
    assert status_of(outcome) == status and client_data(outcome) == []


def test_leasequery_only_from_the_requesters_sent_to_us() -> None:
    query = leasequery(1, by_address("2001:db8:1::100"))
    assert ask(engine(), query, T0).ignored is Ignored6.LEASEQUERY_REFUSED  # off by default
    eng = engine(leasequery_requesters=[str(REQUESTER)])
    assert ask(eng, query, T0, source=IPv6Address("2001:db8:ff::2")).ignored is Ignored6.LEASEQUERY_REFUSED
    relay = RelayForward(0, IPv6Address("2001:db8:2::1"), IPv6Address("fe80::1"), (), query)
    assert ask(eng, query, T0, relays=(relay,)).ignored is Ignored6.LEASEQUERY_REFUSED
    other_server = leasequery(1, by_address("2001:db8:1::100"), server=bytes.fromhex("000400") + bytes(16))
    assert ask(eng, other_server, T0).ignored is Ignored6.NOT_FOR_US
    anonymous = message(MessageType.LEASEQUERY, option(OptionCode.LQ_QUERY, bytes(17)), client=None, oro=())
    assert ask(eng, anonymous, T0).ignored is Ignored6.NO_CLIENT_ID


def test_leasequery_by_address_gives_all_the_client_holds_on_the_link() -> None:
    """RFC 5007 §4.1.2.2: the client data holds all of the client's addresses and delegated
    prefixes with a valid lifetime left, on the link. A BNG asking of a subscriber's WAN address
    (the one it sees) must learn the prefix delegated to it too, or its home network stays cut off."""
    eng = engine(leasequery_requesters=[str(REQUESTER)])
    bind(eng, ia_na(1), ia_pd(2))  # 2001:db8:1::100 and 2001:db8:100::/56
    bind(eng, ia_na(1), client=DUID_B)  # another client on the link: not in the answer
    relay = RelayForward(0, IPv6Address("2001:db8:2::1"), IPv6Address("fe80::1"), (), message(MessageType.SOLICIT))
    bind(eng, ia_na(3), interface="uplink", relays=(relay,))  # the same client on another link: neither
    for asked in ("2001:db8:1::100", "2001:db8:100:12::1"):
        data = client_data(ask(eng, leasequery(1, by_address(asked)), T0 + 10))
        assert [o.code for o in data] == [OptionCode.CLIENTID, OptionCode.IAADDR, OptionCode.IAPREFIX,
                                          OptionCode.CLT_TIME], asked
        assert data[0].data == DUID_A
        assert data[1].data[:16] == IPv6Address("2001:db8:1::100").packed
        assert data[2].data[8:] == bytes((56,)) + IPv6Address("2001:db8:100::").packed


def test_the_leasequery_index_of_clients_forgets_what_the_engine_forgets() -> None:
    eng = engine(leasequery_requesters=[str(REQUESTER)], remember_ended_seconds=60)
    bind(eng, ia_na(1), ia_pd(2))
    assert set(eng.ias_of) == {DUID_A.hex(":")}
    eng.reclaim(T0 + 7201)  # expired
    eng.reclaim(T0 + 7201 + 61)  # and forgotten
    assert eng.by_ia == {} and eng.ias_of == {}


def test_a_session_s_prefix_that_dhcpv6_once_gave_is_still_skipped_by_the_pools() -> None:
    """A binding's own prefix is exempt from the open sessions' (a BNG relaying DHCPv6 reports
    its client's in its accounting), but the exemption went by any binding DHCPv6 remembers,
    an ended one too: a session that kept that /56 (its deleted reservation gave it; the router
    had it from DHCPv6 before) saw it delegated to the next router that asked for it."""
    eng = engine()
    first = bind(eng, ia_pd(2))
    [given] = [write[0].prefix for write in first.writes]
    released = handle(eng, message(MessageType.RELEASE, ia_pd(2, given), server=SERVER_DUID), T0 + 10)
    assert {lease.state for lease, _ in released.writes} == {LeaseState.RELEASED}
    eng.session_opened(7, [given])  # a RADIUS session has it now
    hinted = handle(eng, message(MessageType.SOLICIT, ia_pd(2, given), client=DUID_B), T0 + 20)
    assert reply_ias(hinted)[0].leases[0].prefix != IPv6Network(given)  # type: ignore[union-attr]


def _fqdn_of(outcome: Outcome6) -> bytes | None:
    assert outcome.reply is not None
    return next((o.data for o in outcome.reply.options if o.code == OptionCode.CLIENT_FQDN), None)


def _bind_named(eng: DHCP6Engine, ia: Option, fqdn: Option | None, client: bytes = DUID_A) -> Outcome6:
    """Solicit, then Request what was advertised, both with the client's FQDN option."""
    extra = [fqdn] if fqdn is not None else []
    advertise = handle(eng, message(MessageType.SOLICIT, ia, *extra, client=client))
    assert advertise.reply is not None
    offered = [o for o in advertise.reply.options if o.code in (OptionCode.IA_NA, OptionCode.IA_PD)]
    return handle(eng, message(MessageType.REQUEST, *offered, *extra, client=client, server=SERVER_DUID))


def test_a_client_fqdn_is_answered_with_what_is_done_with_the_name() -> None:
    """RFC 4704 §6: a server that takes a client's Client FQDN option (39) includes one in its
    Advertise and Reply, its S/O/N flags saying who updates DNS, as DHCPv4 answers option 81
    and Kea answers both. ispd published the address's name (AAAA and PTR) and said nothing: a
    client that asked to update DNS itself (S=0) could not tell it was overridden, and one that
    asked us to (S=1) could not tell, without lease names, that nobody did."""
    name = b"\x07router7\x04home\x00"
    asks = {"us": option(OptionCode.CLIENT_FQDN, b"\x01" + name), "itself": option(OptionCode.CLIENT_FQDN, b"\x00" + name),
            "nobody": option(OptionCode.CLIENT_FQDN, b"\x04" + name)}
    eng = engine()
    advertise = handle(eng, message(MessageType.SOLICIT, ia_na(1), asks["us"]))
    assert _fqdn_of(advertise) == b"\x01" + name  # S: we publish it, as it asked
    assert _fqdn_of(_bind_named(eng, ia_na(1), asks["us"])) == b"\x01" + name
    # S=0 or N=1: we publish it all the same, and say so (S, O).
    assert _fqdn_of(_bind_named(eng, ia_na(3), asks["itself"], client=DUID_B)) == b"\x03" + name
    assert _fqdn_of(_bind_named(engine(), ia_na(1), asks["nobody"])) == b"\x03" + name
    renew = handle(eng, message(MessageType.RENEW, ia_na(1, "2001:db8:1::100"), asks["us"], server=SERVER_DUID))
    assert _fqdn_of(renew) == b"\x01" + name
    # No lease names: N (no updates by us), O to a client that asked us to.
    quiet = DHCP6Engine(config(), SERVER_DUID, publishes_names=False)
    assert _fqdn_of(_bind_named(quiet, ia_na(1), asks["us"])) == b"\x06" + name
    assert _fqdn_of(_bind_named(quiet, ia_na(3), asks["itself"], client=DUID_B)) == b"\x04" + name
    # A delegated prefix alone has no name in DNS.
    assert _fqdn_of(_bind_named(engine(), ia_pd(2), asks["us"])) == b"\x06" + name
    # None back to a client that sent none, or a name we do not take; nor in a Release's Reply.
    assert _fqdn_of(_bind_named(engine(), ia_na(1), None)) is None
    bad = option(OptionCode.CLIENT_FQDN, b"\x01\x05bad_x\x00")
    assert _fqdn_of(_bind_named(engine(), ia_na(1), bad)) is None
    release = handle(eng, message(MessageType.RELEASE, ia_na(1, "2001:db8:1::100"), asks["us"], server=SERVER_DUID))
    assert _fqdn_of(release) is None


def test_an_offer_that_lapsed_and_went_to_another_client_is_forgotten_for_both() -> None:
    """Solicits from clients that never Request, on a small pool: an offer that lapsed is
    offered again (or bound) before reclaim looks at it. Each client's remembered offer goes
    with it, or the engine's memory would grow by one entry per such client for good."""
    eng = engine(offer_hold_seconds=1)
    for i in range(20):
        client = bytes.fromhex("00030001") + i.to_bytes(6, "big")
        handle(eng, message(MessageType.SOLICIT, ia_na(1), client=client), T0 + 2 * i)
    bind(eng, ia_na(1), client=DUID_B, now=T0 + 41)  # (the last offer, lapsed, bound by another)
    eng.reclaim(T0 + 100)
    assert eng.offers == {} and eng.offered_to == {}


def test_an_offer_made_before_the_clock_stepped_back_does_not_hold_the_pool() -> None:
    """An offer is held offer_hold_seconds: made at a time the clock has since stepped back
    from (an hour, NTP correcting a clock that ran ahead), it is over all the same, for the
    next client and for reclaim, not held for the hour too."""
    eng = engine()
    for client in (DUID_A, DUID_B):  # the two addresses of the pool, advertised
        handle(eng, message(MessageType.SOLICIT, ia_na(1), client=client), T0)
    stepped = T0 - 3600 + 60
    third = handle(eng, message(MessageType.SOLICIT, ia_na(1), client=bytes.fromhex("0003000102005e100003")), stepped)
    assert reply_ias(third)[0].status is None and reply_ias(third)[0].leases
    eng.reclaim(stepped)
    assert list(eng.offers.values()) == [((bytes.fromhex("0003000102005e100003").hex(":"), 1, Lease6Kind.ADDRESS),
                                          stepped + 30)]
