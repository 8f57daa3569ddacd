"""The RADIUS engines: methods, BlastRADIUS policy, authorization, reply attributes, accounting."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispd.credentials import PasswordChecker, make_verifier, nt_hash
from ispd.radius import mschap
from ispd.radius.attributes import AttributeValueError, reply_attribute, subscriber_reply_attribute
from ispd.radius.codec import (
    Attr,
    Code,
    Packet,
    Vendor,
    chap_response,
    decode,
    encode_attributes,
    encode_request,
    hide_password,
    reveal_salted,
    split_vendor_specific,
    vendor_specific,
)
from ispd.radius.config import EAPConfig, EAPMethod, NasKind, PrefixPoolConfig, SuspendedAction
from ispd.radius.config import MessageAuthenticatorPolicy as Policy
from ispd.radius.dictionary import Dictionary, builtin_dictionary, load_dictionary
from ispd.radius.directory import Directory
from ispd.radius.eap import EAPCode, EAPPacket, EAPType, decode_eap, eap_attributes, encode_eap
from ispd.radius.eaptls import FRAGMENT_SIZE, AVPCode, TLSFlag, TunnelServer, encode_avp, server_context
from ispd.radius.engine import (
    AccountingEngine,
    AuthEngine,
    Decision,
    Drop,
    Nas,
    PlanReply,
    RejectReason,
    ReplySettings,
)
from ispd.radius.prefixes import PrefixPool, prefix_pools
from ispd.radius.sessions import OpenSessions
from ispd.store.models import (
    AccountingStatus,
    OverQuota,
    Plan,
    RadiusSession,
    Reservation,
    ReservationKind,
    StoredCredentials,
    Subscriber,
    SubscriberStatus,
)
from tests.lab.certs import issue
from tests.lab.eapstation import TLSStation, client_hello

SECRET = b"testing123"
DICTIONARY = builtin_dictionary()
VERIFIER = make_verifier("slow-pass")  # once: ~50 ms of scrypt
NOW = 1_800_000_000.0

PLAN = Plan(1, "home", download_kbps=100_000, upload_kbps=20_000, session_timeout_seconds=86_400,
            idle_timeout_seconds=600, max_sessions=2)

if TYPE_CHECKING:
    from ispd.radius.service import NasTable


def subscriber(sid: int, name: str, status: SubscriberStatus = SubscriberStatus.ACTIVE,
               plan: int | None = 1) -> Subscriber:
    return Subscriber(sid, name, status, plan_id=plan)


class World:
    """A directory of subscribers, open sessions and an engine over them."""

    def __init__(self, settings: ReplySettings | None = None) -> None:
        self.directory = Directory()
        subscribers = [subscriber(1, "alice"), subscriber(2, "bob"), subscriber(3, "carol"),
                       subscriber(4, "dave", SubscriberStatus.SUSPENDED), subscriber(5, "erin", SubscriberStatus.CLOSED),
                       subscriber(6, "frank", plan=None)]
        credentials = {
            1: StoredCredentials(verifier="x", nt_hash=nt_hash("alice-pw"), cleartext="alice-pw", updated_at=1),
            2: StoredCredentials(verifier="x", nt_hash=nt_hash("bob-pw"), updated_at=1),
            3: StoredCredentials(verifier=VERIFIER, updated_at=1),
            4: StoredCredentials(cleartext="dave-pw", updated_at=1),
            5: StoredCredentials(cleartext="erin-pw", updated_at=1),
            6: StoredCredentials(cleartext="frank-pw", updated_at=1),
        }
        self.reservations = reservations = [
            Reservation(1, 1, ReservationKind.USERNAME, "alice@pppoe", address="198.18.7.7"),
            Reservation(2, 6, ReservationKind.MAC, "02:00:5e:00:00:06", address="198.18.7.6"),
        ]
        self.directory.load(subscribers, [PLAN], credentials, reservations)
        self.sessions = OpenSessions()
        self.passwords = PasswordChecker(3600)
        self.engine = AuthEngine(self.directory, self.sessions, self.passwords, DICTIONARY,
                                 settings or ReplySettings(interim_interval=300))


def nas(kind: NasKind = NasKind.MIKROTIK, require: Policy = Policy.YES, proxy: Policy = Policy.YES) -> Nas:
    return Nas("lab", SECRET, kind, require, proxy)


def access_request(attributes: Sequence[tuple[int, bytes]], *, authenticator: bytes | None = None,
                   message_authenticator: bool = True, code: int = Code.ACCESS_REQUEST) -> Packet:
    return decode(encode_request(code, 9, encode_attributes(attributes), SECRET, authenticator=authenticator,
                                 message_authenticator=message_authenticator))


def pap(user: str, password: str, *line: tuple[int, bytes], **kwargs: object) -> Packet:
    """A PAP Access-Request, with ``line``'s attributes (Calling-Station-Id, NAS-Port-Id, ...)."""
    authenticator = os.urandom(16)
    return access_request([(Attr.USER_NAME, user.encode()), *line,
                           (Attr.USER_PASSWORD, hide_password(password.encode(), SECRET, authenticator))],
                          authenticator=authenticator, **kwargs)  # type: ignore[arg-type]


def reply_attributes(attributes: bytes) -> list[tuple[int, bytes]]:
    return list(decode(bytes((2, 0)) + (20 + len(attributes)).to_bytes(2, "big") + bytes(16) + attributes).attributes)


def vsa(attributes: bytes, vendor: int, vendor_type: int) -> bytes | None:
    for code, value in reply_attributes(attributes):
        if code == Attr.VENDOR_SPECIFIC and int.from_bytes(value[:4], "big") == vendor:
            for sub_type, sub in split_vendor_specific(value) or ():
                if sub_type == vendor_type:
                    return sub
    return None


def first(attributes: bytes, code: int) -> bytes | None:
    return next((v for c, v in reply_attributes(attributes) if c == code), None)


# --- PAP and the reply -----------------------------------------------------------------------


def test_pap_accept_carries_the_plan_in_the_nas_dialect() -> None:
    world = World()
    decision = world.engine.handle(pap("alice", "alice-pw"), nas(), NOW)
    assert decision.code == Code.ACCESS_ACCEPT and decision.method == "pap"
    attributes = decision.attributes
    assert first(attributes, Attr.CLASS) == b"ispd:1"
    assert first(attributes, Attr.SESSION_TIMEOUT) == struct.pack("!I", 86_400)
    assert first(attributes, Attr.IDLE_TIMEOUT) == struct.pack("!I", 600)
    assert first(attributes, Attr.ACCT_INTERIM_INTERVAL) == struct.pack("!I", 300)
    assert vsa(attributes, Vendor.MIKROTIK, 8) == b"20000k/100000k"  # rx (upload) / tx (download)
    assert first(attributes, Attr.FRAMED_IP_ADDRESS) is None
    accel = world.engine.handle(pap("alice", "alice-pw"), nas(NasKind.ACCEL_PPP), NOW)
    assert first(accel.attributes, Attr.FILTER_ID) == b"100000/20000"
    generic = world.engine.handle(pap("alice", "alice-pw"), nas(NasKind.GENERIC), NOW)
    assert first(generic.attributes, Attr.FILTER_ID) is None and vsa(generic.attributes, Vendor.MIKROTIK, 8) is None


@pytest.mark.parametrize(("user", "password", "reason"), [
    ("alice", "wrong", RejectReason.WRONG_PASSWORD),
    ("nobody", "x", RejectReason.UNKNOWN_USER),
    ("bob", "wrong", RejectReason.WRONG_PASSWORD),  # against the NT hash
    ("erin", "erin-pw", RejectReason.CLOSED),
    ("dave", "dave-pw", RejectReason.SUSPENDED),
])
def test_pap_rejects_say_nothing_to_the_client(user: str, password: str, reason: RejectReason) -> None:
    decision = World().engine.handle(pap(user, password), nas(), NOW)
    assert decision.code == Code.ACCESS_REJECT and decision.reject == reason
    assert decision.attributes == b""  # no Reply-Message: the reason stays on our side


def test_pap_against_the_nt_hash_needs_no_verifier() -> None:
    assert World().engine.handle(pap("bob", "bob-pw"), nas(), NOW).code == Code.ACCESS_ACCEPT


def test_pap_against_a_verifier_is_checked_off_the_loop_then_remembered() -> None:
    world = World()
    packet = pap("carol", "slow-pass")
    decision = world.engine.handle(packet, nas(), NOW)
    assert decision.code is None and decision.pending is not None
    ok = PasswordChecker.check_slow(decision.pending.verifier, decision.pending.password)
    assert ok
    done = world.engine.finish_password_check(packet, nas(), decision.pending, ok, NOW)
    assert done.code == Code.ACCESS_ACCEPT
    again = world.engine.handle(pap("carol", "slow-pass"), nas(), NOW + 1)
    assert again.code == Code.ACCESS_ACCEPT  # remembered: no second scrypt
    wrong = world.engine.handle(pap("carol", "other"), nas(), NOW + 2)
    assert wrong.pending is not None  # a different password goes to the verifier again
    assert not PasswordChecker.check_slow(wrong.pending.verifier, wrong.pending.password)
    assert world.engine.finish_password_check(packet, nas(), wrong.pending, False, NOW).reject == \
        RejectReason.WRONG_PASSWORD
    later = world.engine.handle(pap("carol", "slow-pass"), nas(), NOW + 7200)
    assert later.pending is not None  # the memory lasts auth_cache_seconds


def test_a_login_reservation_names_the_subscriber_and_its_address() -> None:
    decision = World().engine.handle(pap("alice@pppoe", "alice-pw"), nas(), NOW)
    assert decision.code == Code.ACCESS_ACCEPT and decision.subscriber_id == 1
    assert first(decision.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 7, 7))


def test_a_username_outranks_another_subscribers_login_reservation() -> None:
    """A store from before reservations were kept off usernames may hold bob's reservation of
    "alice": alice still logs in as alice, and keeps doing so after the reservation goes."""
    world = World()
    taking = Reservation(3, 2, ReservationKind.USERNAME, "alice")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [taking], PLAN)
    assert world.engine.handle(pap("alice", "bob-pw"), nas(), NOW).reject == RejectReason.WRONG_PASSWORD
    assert world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).subscriber_id == 1
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [], PLAN)
    assert world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).subscriber_id == 1
    world.directory.remove(1)
    assert world.directory.find("alice") is None and world.directory.find("alice@pppoe") is None


def test_an_address_reserved_for_ones_own_username_goes_out() -> None:
    world = World()
    own = Reservation(3, 2, ReservationKind.USERNAME, "bob", address="198.18.7.8")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [own], PLAN)
    decision = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
    assert decision.subscriber_id == 2 and first(decision.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 7, 8))
    assert world.directory.reserved["198.18.7.8"] == 2
    world.directory.remove(2)
    assert "198.18.7.8" not in world.directory.reserved and world.directory.find("bob") is None


def test_a_logins_reserved_ipv6_goes_out_over_the_plans_and_its_own() -> None:
    """A PPPoE login's fixed IPv6 address and prefix (one IPAM with DHCPv6) go out as
    Framed-IPv6-Address and Delegated-IPv6-Prefix (RFC 4818: the prefix's significant octets
    only), over a plan's or the subscriber's own attribute of the same kind."""
    delegated = "Delegated-IPv6-Prefix = 2001:db8:999::/56"
    pool = "Delegated-IPv6-Prefix-Pool = pd-dynamic"  # (the NAS's own: not with a reserved prefix)
    world = World(ReplySettings(plans={"home": PlanReply(attributes=(reply_attribute(DICTIONARY, delegated),
                                                                     reply_attribute(DICTIONARY, pool)))}))
    bob = replace(subscriber(2, "bob"), radius_reply=("Framed-IPv6-Address = 2001:db8:999::1",))
    login = Reservation(3, 2, ReservationKind.USERNAME, "bob@pppoe", address6="2001:db8:1::10",
                        prefix6="2001:db8:200::/48")
    world.directory.replace(bob, StoredCredentials(cleartext="bob-pw", updated_at=1), [login], PLAN)
    decision = world.engine.handle(pap("bob@pppoe", "bob-pw"), nas(), NOW)
    assert decision.code == Code.ACCESS_ACCEPT and decision.subscriber_id == 2
    replied = reply_attributes(decision.attributes)
    assert [v for c, v in replied if c == Attr.FRAMED_IPV6_ADDRESS] == [bytes.fromhex("20010db8000100000000000000000010")]
    assert [v for c, v in replied if c == Attr.DELEGATED_IPV6_PREFIX] == [bytes.fromhex("0030" "20010db80200")]
    assert first(decision.attributes, Attr.FRAMED_IP_ADDRESS) is None  # (the NAS gives the IPv4 address)
    assert first(decision.attributes, 171) is None
    # bob's username has nothing reserved: the plan's prefix and his own address, as before.
    plain = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
    assert first(plain.attributes, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0038" "20010db80999" "00")
    assert first(plain.attributes, 171) == b"pd-dynamic"
    assert first(plain.attributes, Attr.FRAMED_IPV6_ADDRESS) == bytes.fromhex("20010db8099900000000000000000001")


def test_a_logins_reserved_ipv6_goes_with_a_pool_address_but_not_into_the_walled_garden() -> None:
    world = World(ReplySettings(plans={"home": PlanReply(address_pool="pppoe")}, suspended=SuspendedAction.WALLED_GARDEN))
    login = Reservation(3, 2, ReservationKind.USERNAME, "bob", prefix6="2001:db8:200::/48")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [login], PLAN)
    packet = pap("bob", "bob-pw")
    decision = world.engine.handle(packet, nas(), NOW)
    assert decision.claim is not None  # no IPv4 address reserved: the pool's
    accepted = world.engine.finish_claim(packet, nas(), decision.claim, "198.18.8.9")
    assert first(accepted.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 8, 9))
    assert first(accepted.attributes, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0030" "20010db80200")
    # Suspended into the walled garden: IPv4 only, as DHCPv6 gives a suspended subscriber nothing.
    world.directory.replace(subscriber(2, "bob", SubscriberStatus.SUSPENDED),
                            StoredCredentials(cleartext="bob-pw", updated_at=1), [login], PLAN)
    walled = world.engine.handle(packet, nas(), NOW)
    assert walled.claim is not None and walled.claim.walled
    garden = world.engine.finish_claim(packet, nas(), walled.claim, "198.18.8.9")
    assert garden.code == Code.ACCESS_ACCEPT and first(garden.attributes, Attr.DELEGATED_IPV6_PREFIX) is None


def test_a_coa_moves_no_address_or_prefix_of_the_session() -> None:
    """From a review: a CoA carried the subscriber's own Delegated-IPv6-Prefix while the
    session's Access-Accept had the reservation's /48."""
    world = World()
    bob = replace(subscriber(2, "bob"), radius_reply=("Delegated-IPv6-Prefix = 2001:db8:999::/56",
                                                      "Framed-IPv6-Prefix = 2001:db8:998::/64", "Filter-Id = biz"))
    login = Reservation(3, 2, ReservationKind.USERNAME, "bob", prefix6="2001:db8:200::/48")
    world.directory.replace(bob, StoredCredentials(cleartext="bob-pw", updated_at=1), [login], PLAN)
    accepted = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
    assert first(accepted.attributes, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0030" "20010db80200")
    subject = world.directory.by_id(2)
    assert subject is not None
    coa = world.engine.change_of_authorization(subject, nas(), False)
    assert first(coa, Attr.DELEGATED_IPV6_PREFIX) is None and first(coa, Attr.FRAMED_IPV6_PREFIX) is None
    assert first(coa, Attr.FILTER_ID) == b"biz"


def test_a_lines_reserved_prefix_goes_to_a_login_on_that_line() -> None:
    """A circuit-id reservation's prefix (a business line's /48, which DHCPv6 relayed by that
    line also gives) goes to a RADIUS session on the line, NAS-Port-Id naming it."""
    world = World()
    line = Reservation(3, 2, ReservationKind.CIRCUIT_ID, "bng1 ge-0/0/1:100", prefix6="2001:db8:200::/48")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [line], PLAN)
    decision = world.engine.handle(pap("bob", "bob-pw", (Attr.NAS_PORT_ID, b"bng1 ge-0/0/1:100")), nas(), NOW)
    assert first(decision.attributes, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0030" "20010db80200")
    assert first(world.engine.handle(pap("bob", "bob-pw"), nas(), NOW).attributes, Attr.DELEGATED_IPV6_PREFIX) is None


def test_a_logins_prefix_and_its_lines_address_both_go_out() -> None:
    """What a login's reservation leaves open its line's fills: a login with only a prefix kept
    the line's IPv4 address before logins could hold one (it went to the pool instead), and a
    login with only an IPv4 address gets the line's prefix."""
    world = World()
    line = Reservation(3, 2, ReservationKind.CIRCUIT_ID, "bng1 ge-0/0/1:100", address="198.18.7.9",
                       prefix6="2001:db8:300::/48")
    login = Reservation(4, 2, ReservationKind.USERNAME, "bob", prefix6="2001:db8:200::/48")
    other = Reservation(5, 2, ReservationKind.USERNAME, "bob@static", address="198.18.7.10")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1),
                            [line, login, other], PLAN)

    def on_line(user: bytes) -> bytes:
        decision = world.engine.handle(pap(user.decode(), "bob-pw", (Attr.NAS_PORT_ID, b"bng1 ge-0/0/1:100")),
                                       nas(), NOW)
        assert decision.code == Code.ACCESS_ACCEPT
        return decision.attributes

    prefix_only = on_line(b"bob")
    assert first(prefix_only, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 7, 9))
    assert first(prefix_only, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0030" "20010db80200")  # the login's
    address_only = on_line(b"bob@static")
    assert first(address_only, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 7, 10))  # the login's
    assert first(address_only, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0030" "20010db80300")
    elsewhere = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW).attributes  # not on that line
    assert first(elsewhere, Attr.FRAMED_IP_ADDRESS) is None
    assert first(elsewhere, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0030" "20010db80200")


def test_a_mac_reservation_gives_the_address_to_the_line_it_matches() -> None:
    world = World()
    decision = world.engine.handle(pap("frank", "frank-pw", (Attr.CALLING_STATION_ID, b"02-00-5E-00-00-06")), nas(),
                                   NOW)
    assert first(decision.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 7, 6))
    assert first(world.engine.handle(pap("frank", "frank-pw"), nas(), NOW).attributes, Attr.FRAMED_IP_ADDRESS) is None


def test_line_lock_takes_logins_only_from_the_subscribers_own_lines() -> None:
    """A plan with line_lock: alice, who has a MAC and a circuit-id reservation, logs in from
    those lines only; carol, with a DHCP client-id reservation only (no line a NAS reports), and
    frank, on no plan, are not locked."""
    world = World(ReplySettings(plans={"home": PlanReply(line_lock=True)}))
    reservations = [Reservation(1, 1, ReservationKind.MAC, "02:00:5e:00:00:01"),
                    Reservation(2, 1, ReservationKind.CIRCUIT_ID, "olt1 eth 1/1/1:100"),
                    Reservation(3, 3, ReservationKind.CLIENT_ID, "01:02:00:5e:00:00:03"),
                    Reservation(4, 6, ReservationKind.MAC, "02:00:5e:00:00:06", address="198.18.7.6")]
    world.directory.load([subscriber(1, "alice"), subscriber(3, "carol"), subscriber(6, "frank", plan=None)], [PLAN],
                         {1: StoredCredentials(cleartext="alice-pw", updated_at=1),
                          3: StoredCredentials(cleartext="carol-pw", updated_at=1),
                          6: StoredCredentials(cleartext="frank-pw", updated_at=1)}, reservations)

    def login(user: str, *line: tuple[int, bytes]) -> Decision:
        authenticator = os.urandom(16)
        return world.engine.handle(access_request(
            [(Attr.USER_NAME, user.encode()), *line,
             (Attr.USER_PASSWORD, hide_password(f"{user}-pw".encode(), SECRET, authenticator))],
            authenticator=authenticator), nas(), NOW)

    assert login("alice", (Attr.CALLING_STATION_ID, b"02-00-5E-00-00-01")).code == Code.ACCESS_ACCEPT
    assert login("alice", (Attr.NAS_PORT_ID, b"olt1 eth 1/1/1:100")).code == Code.ACCESS_ACCEPT
    for line in ([(Attr.CALLING_STATION_ID, b"02-00-5E-00-00-99")], [(Attr.NAS_PORT_ID, b"olt1 eth 1/1/2:100")], []):
        decision = login("alice", *line)
        assert (decision.code, decision.reject) == (Code.ACCESS_REJECT, RejectReason.WRONG_LINE), line
    assert login("carol", (Attr.CALLING_STATION_ID, b"02-00-5E-00-00-99")).code == Code.ACCESS_ACCEPT
    assert login("frank", (Attr.CALLING_STATION_ID, b"02-00-5E-00-00-99")).code == Code.ACCESS_ACCEPT


def test_plan_attributes_framed_pool_and_hidden_values() -> None:
    extra = (reply_attribute(DICTIONARY, "Mikrotik-Address-List = home"),
             reply_attribute(DICTIONARY, "Tunnel-Password:1 = s3cret"))
    world = World(ReplySettings(interim_interval=0, plans={"home": PlanReply(extra, framed_pool="pool-home")}))
    packet = pap("alice", "alice-pw")
    decision = world.engine.handle(packet, nas(), NOW)
    assert first(decision.attributes, Attr.ACCT_INTERIM_INTERVAL) is None
    assert first(decision.attributes, Attr.FRAMED_POOL) == b"pool-home"
    assert vsa(decision.attributes, Vendor.MIKROTIK, 19) == b"home"
    tunnel = first(decision.attributes, Attr.TUNNEL_PASSWORD)
    assert tunnel is not None and tunnel[0] == 1  # the tag, then the salted value
    assert reveal_salted(tunnel[1:], SECRET, packet.authenticator) == b"s3cret"


def test_each_nas_gets_its_own_vendor_s_attributes_and_no_other_gear_s() -> None:
    """A plan for a network of MikroTik, Cisco and Juniper BNGs lists each vendor's attributes: a
    Cisco ASR NAKs a CoA with a MikroTik attribute in it (Error-Cause 401), so each NAS gets its
    own vendor's and none of the others' (a bug hunt saw every NAS get all three). Standard and
    other vendors' attributes go to all, and a generic NAS still gets everything."""
    extra = tuple(reply_attribute(DICTIONARY, text) for text in (
        "Mikrotik-Address-List = home", 'Cisco-AVPair = "subscriber:sub-qos-policy-out=home"',
        "ERX-Qos-Profile-Name = home", "Filter-Id = home"))
    world = World(ReplySettings(interim_interval=0, plans={"home": PlanReply(extra)}))
    subject = world.directory.by_id(1)
    assert subject is not None

    def vendors(attributes: bytes) -> set[int]:
        return {int.from_bytes(value[:4], "big") for code, value in reply_attributes(attributes)
                if code == Attr.VENDOR_SPECIFIC}

    seen = {}
    for kind in (NasKind.MIKROTIK, NasKind.CISCO, NasKind.JUNIPER, NasKind.GENERIC):
        attributes = world.engine.handle(pap("alice", "alice-pw"), nas(kind), NOW).attributes
        assert first(attributes, Attr.FILTER_ID) == b"home", kind
        seen[kind] = vendors(attributes)
        coa = world.engine.change_of_authorization(subject, nas(kind), False)
        assert vendors(coa) == seen[kind], kind  # a CoA too
    assert seen == {NasKind.MIKROTIK: {Vendor.MIKROTIK}, NasKind.CISCO: {Vendor.CISCO},
                    NasKind.JUNIPER: {Vendor.ERX}, NasKind.GENERIC: {Vendor.MIKROTIK, Vendor.CISCO, Vendor.ERX}}


def test_a_subscriber_s_own_attributes_come_after_and_over_its_plan_s_but_not_in_the_walled_garden() -> None:
    extra = (reply_attribute(DICTIONARY, "Filter-Id = plan-filter"), reply_attribute(DICTIONARY, "Framed-MTU = 1492"))
    world = World(ReplySettings(plans={"home": PlanReply(extra)}, suspended=SuspendedAction.WALLED_GARDEN,
                                walled_garden=(reply_attribute(DICTIONARY, "Filter-Id = garden"),)))
    own = ('Framed-Route = "203.0.113.0/29 0.0.0.0 1"', "Session-Timeout = 3600", "Filter-Id = business",
           "Mikrotik-Rate-Limit = 1M/1M", "No-Such-Attribute = 1",  # (the dictionaries lost this one)
           "Framed-IP-Address = 198.18.9.9", "Class = 0x01")  # (never a subscriber's: ispd's own)
    world.directory.replace(Subscriber(1, "alice", SubscriberStatus.ACTIVE, plan_id=1, radius_reply=own),
                            StoredCredentials(cleartext="alice-pw", updated_at=1), [], PLAN)
    attributes = world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).attributes
    assert [v for c, v in reply_attributes(attributes) if c == 22] == [b"203.0.113.0/29 0.0.0.0 1"]
    assert [v for c, v in reply_attributes(attributes) if c == Attr.SESSION_TIMEOUT] == [(3600).to_bytes(4, "big")]
    assert [v for c, v in reply_attributes(attributes) if c == Attr.FILTER_ID] == [b"business"]
    assert first(attributes, Attr.IDLE_TIMEOUT) == (600).to_bytes(4, "big")  # the plan's, not replaced
    assert first(attributes, Attr.FRAMED_MTU) == (1492).to_bytes(4, "big")
    assert vsa(attributes, Vendor.MIKROTIK, 8) == b"1M/1M"
    assert [v for c, v in reply_attributes(attributes) if c == Attr.CLASS] == [b"ispd:1"]
    assert first(attributes, Attr.FRAMED_IP_ADDRESS) is None
    world.directory.replace(Subscriber(1, "alice", SubscriberStatus.SUSPENDED, plan_id=1, radius_reply=own),
                            StoredCredentials(cleartext="alice-pw", updated_at=1), [], PLAN)
    walled = world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).attributes
    assert first(walled, 22) is None and first(walled, Attr.FILTER_ID) == b"garden"


def test_a_subscriber_s_own_rate_gives_way_to_its_plan_s_throttle_over_quota() -> None:
    """A business line's own Mikrotik-Rate-Limit replaced the plan's over-quota rate too: over
    its monthly quota it kept its full rate, in the Access-Accept and in the CoA the crossing
    sends (which changed nothing)."""
    plan = replace(PLAN, monthly_quota_bytes=10**9, over_quota_download_kbps=1000,
                               over_quota_upload_kbps=500)
    world = World(ReplySettings(plans={"home": PlanReply()}))
    own = ("Mikrotik-Rate-Limit = 50M/50M", "Filter-Id = business")
    world.directory.replace(Subscriber(1, "alice", SubscriberStatus.ACTIVE, plan_id=1, radius_reply=own),
                            StoredCredentials(cleartext="alice-pw", updated_at=1), [], plan)
    assert vsa(world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).attributes, Vendor.MIKROTIK, 8) == b"50M/50M"
    subject = world.directory.by_id(1)
    assert subject is not None
    subject.over_quota = True
    subject.reply_cache.clear()
    attributes = world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).attributes
    assert vsa(attributes, Vendor.MIKROTIK, 8) == b"500k/1000k" and first(attributes, Attr.FILTER_ID) == b"business"
    coa = world.engine.change_of_authorization(subject, nas(), False)
    assert vsa(coa, Vendor.MIKROTIK, 8) == b"500k/1000k"


def test_a_plan_table_s_timer_or_rate_replaces_the_plan_s_own_rather_than_doubling_it() -> None:
    """A [[radius.plan]] attribute that ispd also writes from the plan (Session-Timeout,
    Idle-Timeout, the rate limit, Framed-Pool) went out beside it: an Access-Accept with two
    Session-Timeouts (86400 and 3600) and two Mikrotik-Rate-Limits, for the NAS to pick one
    (RFC 2865 §5.44: at most one). The table's is meant, as its Acct-Interim-Interval is; the
    month's throttle still stands over its rate."""
    table = tuple(reply_attribute(DICTIONARY, text) for text in (
        "Session-Timeout = 3600", "Idle-Timeout = 60", "Mikrotik-Rate-Limit = 1M/1M", "Framed-Pool = other",
        "Mikrotik-Address-List = home", "Mikrotik-Address-List = all"))
    world = World(ReplySettings(plans={"home": PlanReply(attributes=table, framed_pool="home")}))
    attributes = reply_attributes(world.engine.handle(pap("alice", "alice-pw"), nas(),
                                                      NOW).attributes)
    assert [v for c, v in attributes if c == Attr.SESSION_TIMEOUT] == [u32(3600)]
    assert [v for c, v in attributes if c == Attr.IDLE_TIMEOUT] == [u32(60)]
    assert [v for c, v in attributes if c == Attr.FRAMED_POOL] == [b"other"]
    mikrotik = [sub for c, v in attributes if c == Attr.VENDOR_SPECIFIC for sub in split_vendor_specific(v) or ()]
    assert [v for t, v in mikrotik if t == 8] == [b"1M/1M"]
    assert [v for t, v in mikrotik if t == 19] == [b"home", b"all"]  # (a list stays a list)
    plan = replace(PLAN, monthly_quota_bytes=10**9, over_quota_download_kbps=1000, over_quota_upload_kbps=500)
    world.directory.replace(subscriber(1, "alice"), StoredCredentials(cleartext="alice-pw", updated_at=1), [], plan)
    subject = world.directory.by_id(1)
    assert subject is not None
    subject.over_quota = True
    throttled = world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).attributes
    rates = [sub for c, v in reply_attributes(throttled) if c == Attr.VENDOR_SPECIFIC
             for t, sub in split_vendor_specific(v) or () if t == 8]
    assert rates == [b"500k/1000k"]


def test_over_a_walled_quota_without_garden_attributes_the_plan_s_profile_stays() -> None:
    """With radius.walled_garden_attributes empty (accepted when DNS has a walled garden, which
    walls suspended subscribers only), a subscriber past a walled-garden quota got an Access-Accept
    with an empty profile: no rate limit at all, more than its plan gives, and DNS answered it
    as before. The garden needs attributes to be one; without them the plan's profile stays."""
    plan = replace(PLAN, monthly_quota_bytes=10**9, over_quota=OverQuota.WALLED_GARDEN)
    garden = (reply_attribute(DICTIONARY, "Filter-Id = walled"),)
    plans = {"home": PlanReply()}
    for reply_settings, walled in ((ReplySettings(plans=plans), False),
                                   (ReplySettings(plans=plans, walled_garden=garden), True)):
        world = World(reply_settings)
        world.directory.replace(Subscriber(1, "alice", SubscriberStatus.ACTIVE, plan_id=1),
                                StoredCredentials(cleartext="alice-pw", updated_at=1), [], plan)
        subject = world.directory.by_id(1)
        assert subject is not None
        subject.over_quota = True
        attributes = world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).attributes
        assert (first(attributes, Attr.CLASS) == b"ispd:1:walled") is walled
        assert (vsa(attributes, Vendor.MIKROTIK, 8) is None) is walled, attributes  # the plan's rate
        assert (first(attributes, Attr.FILTER_ID) == b"walled") is walled


def test_over_a_walled_quota_a_nas_the_garden_has_nothing_for_keeps_the_plan_s_profile() -> None:
    """From a review: a walled garden of one vendor's attributes (a MikroTik address list) in a
    network of several is empty for another vendor's NAS; a subscriber past a walled-garden quota
    logging in on a Cisco BNG got Class ispd:1:walled and nothing else, not its plan's QoS policy
    (no rate limit), as with no garden attributes at all. A NAS gets the garden only when it has
    some of it."""
    plan = replace(PLAN, monthly_quota_bytes=10**9, over_quota=OverQuota.WALLED_GARDEN)
    garden = (reply_attribute(DICTIONARY, "Mikrotik-Address-List = walled"),)
    qos = reply_attribute(DICTIONARY, 'Cisco-AVPair = "subscriber:sub-qos-policy-out=home"')
    world = World(ReplySettings(plans={"home": PlanReply(attributes=(qos,))}, walled_garden=garden))
    world.directory.replace(Subscriber(1, "alice", SubscriberStatus.ACTIVE, plan_id=1),
                            StoredCredentials(cleartext="alice-pw", updated_at=1), [], plan)
    subject = world.directory.by_id(1)
    assert subject is not None
    subject.over_quota = True
    cisco = world.engine.handle(pap("alice", "alice-pw"), nas(NasKind.CISCO), NOW).attributes
    assert first(cisco, Attr.CLASS) == b"ispd:1", cisco
    assert vsa(cisco, Vendor.CISCO, 1) == b"subscriber:sub-qos-policy-out=home"
    mikrotik = world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).attributes
    assert first(mikrotik, Attr.CLASS) == b"ispd:1:walled" and vsa(mikrotik, Vendor.MIKROTIK, 19) == b"walled"


def test_an_untagged_tunnel_password_carries_tag_zero() -> None:
    """RFC 2868 §3.5: the Tag octet is always there; from a review, a Tunnel-Password written
    without a tag went out without it, and every NAS decrypted garbage."""
    attribute = reply_attribute(DICTIONARY, "Tunnel-Password = notagsecret")
    authenticator = os.urandom(16)
    encoded = attribute.encode(SECRET, authenticator)
    assert encoded[0] == Attr.TUNNEL_PASSWORD and encoded[2] == 0
    assert reveal_salted(encoded[3:], SECRET, authenticator) == b"notagsecret"



def test_the_salts_of_one_reply_differ_whatever_the_random_octets(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 2868 §3.5 and RFC 2548 §2.4.2: each salt in one Access-Accept MUST be unique. The
    codec drew them at random: two tagged Tunnel-Passwords of a plan (or a plan's and
    MS-CHAPv2's MPPE keys) had the same salt once in 32 768 replies, and so the same keystream
    (the XOR of the two passwords for anyone on the path). Shown here with random octets that
    repeat."""
    monkeypatch.setattr(os, "urandom", bytes)
    table = tuple(reply_attribute(DICTIONARY, f"Tunnel-Password:{tag} = secret-{tag}") for tag in (1, 2))
    world = World(ReplySettings(plans={"home": PlanReply(attributes=table)}))
    packet = pap("alice", "alice-pw")
    decision = world.engine.handle(packet, nas(), NOW)
    hidden = [v for c, v in reply_attributes(decision.attributes) if c == Attr.TUNNEL_PASSWORD]
    assert [reveal_salted(v[1:], SECRET, packet.authenticator) for v in hidden] == [b"secret-1", b"secret-2"]
    mppe = mschap.encrypt_mppe_key(bytes(16), SECRET, packet.authenticator)
    salts = [v[1:3] for v in hidden] + [mppe[:2]]
    assert len(set(salts)) == 3 and all(salt[0] & 0x80 for salt in salts)


def operator_dictionary(tmp_path: Path, text: str) -> Dictionary:
    """The shipped dictionaries with an operator's file on top, as ``radius.dictionaries`` loads it."""
    path = tmp_path / "dictionary.operator"
    path.write_text(text)
    return load_dictionary([path])


def test_a_vendor_with_continuations_gets_its_flags_octet(tmp_path: Path) -> None:
    """format=1,1,c (WiMAX, Debian's dictionary.wimax): each sub-attribute is type, length, a
    continuation octet, then the value. From a bug hunt: the octet was left out, so radclient read
    WiMAX-AAA-Session-Id = 0x0102 as 0x02 (the 0x01 taken for the flags)."""
    dictionary = operator_dictionary(tmp_path, "VENDOR WiMAX 24757 format=1,1,c\nBEGIN-VENDOR WiMAX\n"
                                               "ATTRIBUTE WiMAX-AAA-Session-Id 4 octets\nEND-VENDOR WiMAX\n")
    encoded = reply_attribute(dictionary, "WiMAX-AAA-Session-Id = 0x0102").encode(SECRET, bytes(16))
    assert encoded == bytes((26, 11)) + (24757).to_bytes(4, "big") + bytes((4, 5, 0, 1, 2))



def test_an_ascend_filter_is_taken_compiled_not_as_text(tmp_path: Path) -> None:
    """abinary (Ascend-Data-Filter, Lucent-Data-Filter): from a bug hunt, the filter's text
    went out as its UTF-8 octets, which a NAS reads as binary rules (radclient -x: raw hex)."""
    dictionary = operator_dictionary(tmp_path, "VENDOR Ascend 529\nBEGIN-VENDOR Ascend\n"
                                               "ATTRIBUTE Ascend-Data-Filter 242 abinary\nEND-VENDOR Ascend\n")
    with pytest.raises(AttributeValueError, match="does not compile Ascend filter text"):
        reply_attribute(dictionary, "Ascend-Data-Filter = 'ip in drop dstip 10.0.0.1/32'")
    compiled = "01000100" + "00" * 20
    assert reply_attribute(dictionary, f"Ascend-Data-Filter = 0x{compiled}").value == bytes.fromhex(compiled)



def test_a_server_internal_attribute_is_refused_for_what_it_is(tmp_path: Path) -> None:
    """Standard numbers above 255 (dictionary.freeradius.internal's) load but never travel. From a
    bug hunt: check-config refused 'Acct-Input-Octets64 = 1' with "bytes must be in range(0, 256)"."""
    dictionary = operator_dictionary(tmp_path, "ATTRIBUTE Acct-Input-Octets64 1148 integer64\n")
    with pytest.raises(AttributeValueError, match="server-internal attributes, which never travel"):
        reply_attribute(dictionary, "Acct-Input-Octets64 = 1")



def test_a_fixed_length_octets_attribute_takes_exactly_its_length(tmp_path: Path) -> None:
    """octets[N] (3GPP-MS-Time-Zone is octets[2], TS 29.061): from a bug hunt, 0x80 passed
    check-config and went out one octet long, which a GGSN/PGW refuses."""
    dictionary = operator_dictionary(tmp_path, "VENDOR 3GPP 10415\nBEGIN-VENDOR 3GPP\n"
                                               "ATTRIBUTE 3GPP-MS-Time-Zone 23 octets[2]\nEND-VENDOR 3GPP\n")
    with pytest.raises(AttributeValueError, match="has 1 octets; this attribute has exactly 2"):
        reply_attribute(dictionary, "3GPP-MS-Time-Zone = 0x80")
    assert reply_attribute(dictionary, "3GPP-MS-Time-Zone = 0x8000").value == b"\x80\x00"



def test_a_value_s_length_is_limited_by_where_it_travels(tmp_path: Path) -> None:
    """From a bug hunt: every value was held to 247 octets, refusing a 250-octet Reply-Message
    (RFC 2865 allows 253), while a format=2,2 vendor's 246 was refused with the encoder's
    "bytes must be in range(0, 256)"."""
    assert len(reply_attribute(DICTIONARY, f"Reply-Message = '{'x' * 253}'").value) == 253
    with pytest.raises(AttributeValueError, match="longer than an attribute can carry"):
        reply_attribute(DICTIONARY, f"Reply-Message = '{'x' * 254}'")
    dictionary = operator_dictionary(tmp_path, "VENDOR Starent 8164 format=2,2\nBEGIN-VENDOR Starent\n"
                                               "ATTRIBUTE SN-VPN-Name 2 string\nEND-VENDOR Starent\n")
    encoded = reply_attribute(dictionary, f"SN-VPN-Name = '{'x' * 245}'").encode()
    assert encoded[:2] == bytes((26, 255)) and encoded[10:] == b"x" * 245
    with pytest.raises(AttributeValueError, match="246 octets is more than the 245 a Vendor-Specific of vendor 8164"):
        reply_attribute(dictionary, f"SN-VPN-Name = '{'x' * 246}'")



def test_a_subscriber_s_own_address_is_refused_under_any_of_its_names(tmp_path: Path) -> None:
    """FreeRADIUS's tree names attribute 8 Framed-Address too (dictionary.compat). From a bug hunt:
    'Framed-Address = 198.18.5.5' passed radius-reply, and the Access-Accept of a subscriber
    with a reservation carried two Framed-IP-Address (RFC 2865 §5.44: at most one)."""
    dictionary = operator_dictionary(tmp_path, "ATTRIBUTE Framed-Address 8 ipaddr\nATTRIBUTE Old-Class 25 octets\n")
    with pytest.raises(AttributeValueError, match="reserve the address instead"):
        subscriber_reply_attribute(dictionary, "Framed-Address = 198.18.5.5")
    with pytest.raises(AttributeValueError, match="ispd's own"):
        subscriber_reply_attribute(dictionary, "Old-Class = 0x01")


@pytest.mark.parametrize(("text", "message"), [
    ("Message-Authenticator = 0x00112233445566778899aabbccddeeff", "written by ispd into every reply"),
    ("EAP-Message = 0x0101", "EAP methods"),
    ("Proxy-State = 0x01", "copied from the request"),
    ("User-Password = x", "belongs to requests"),
    ("Session-Timeout = 4294967296", "out of range: 0 to 4294967295"),
    ("Session-Timeout = -1", "out of range"),
    ("Tunnel-Password = " + "p" * 240, "at most 239 octets"),  # from a review: every login of the plan failed
    # From a bug hunt: `subscriber radius-reply` said "unexpected error: ValueError" to these, and
    # stored a tag past 31, which a NAS reads as the first octet of the value.
    ("Session-Timeout", "not an attribute assignment"),
    ("= 5", "not an attribute assignment"),
    ("Tunnel-Type:32 = VLAN", "a tag is a number from 1 to 31"),
    # From a bug hunt: the value's first octet is the tag's (RFC 2868 §3.1), so 16777229 went out
    # as tag 1, VLAN (13) with the tag given, and as tag 1 without one.
    ("Tunnel-Type:2 = 16777229", "out of range: 0 to 16777215"),
    ("Tunnel-Medium-Type = 16777217", "out of range: 0 to 16777215"),
])
def test_reply_attributes_ispd_writes_itself_or_out_of_range_are_refused(text: str, message: str) -> None:
    with pytest.raises(AttributeValueError, match=message):
        reply_attribute(DICTIONARY, text)


def test_escapes_in_double_quoted_values_are_read_as_freeradius_reads_them() -> None:
    assert reply_attribute(DICTIONARY, 'Reply-Message = "a \\"quoted\\" word\\tend"').value == b'a "quoted" word\tend'
    assert reply_attribute(DICTIONARY, "Reply-Message = 'as \\t written'").value == b"as \\t written"


def test_a_pool_plan_waits_for_an_address_and_sends_it_not_the_nas_pool() -> None:
    world = World(ReplySettings(plans={"home": PlanReply(framed_pool="pool-home", address_pool="pppoe")}))
    packet = pap("alice", "alice-pw")
    decision = world.engine.handle(packet, nas(), NOW)
    assert decision.code is None and decision.claim is not None  # the store decides the address first
    assert (decision.claim.pool, decision.claim.holder) == ("pppoe", "alice")
    accepted = world.engine.finish_claim(packet, nas(), decision.claim, "198.18.8.9")
    assert accepted.code == Code.ACCESS_ACCEPT and accepted.subscriber_id == 1
    assert first(accepted.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 8, 9))
    assert first(accepted.attributes, Attr.FRAMED_POOL) is None  # ispd gives the address, not the NAS
    assert first(accepted.attributes, Attr.CLASS) == b"ispd:1"
    full = world.engine.finish_claim(packet, nas(), decision.claim, None)
    assert (full.code, full.reject) == (Code.ACCESS_REJECT, RejectReason.POOL_EXHAUSTED)
    # A line's MAC (else its port) makes the holder: one router, one address.
    claim = world.engine.handle(pap("alice", "alice-pw", (Attr.CALLING_STATION_ID, b"02-00-5E-00-00-01")), nas(),
                                NOW).claim
    assert claim is not None and (claim.holder, claim.hw_address) == ("alice 02:00:5e:00:00:01", "02:00:5e:00:00:01")


def test_a_prefix_pool_plan_asks_for_a_prefix_and_the_accept_carries_it_with_the_pools_address() -> None:
    """RIPE-690 stable prefixes: a login whose username nothing reserves waits for the store to
    reserve a prefix of the plan's pool (and to claim an address of its address pool)."""
    world = World(ReplySettings(plans={"home": PlanReply(address_pool="pppoe", prefix_pool="homes")}))
    packet = pap("bob", "bob-pw")
    decision = world.engine.handle(packet, nas(), NOW)
    assert decision.code is None and decision.claim is not None
    assert (decision.claim.pool, decision.claim.prefix_pool) == ("pppoe", "homes")
    accepted = world.engine.finish_claim(packet, nas(), decision.claim, "198.18.8.9", "2001:db8:1000:100::/56")
    assert accepted.code == Code.ACCESS_ACCEPT and accepted.subscriber_id == 2
    assert first(accepted.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 8, 9))
    assert first(accepted.attributes, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0038" "20010db8100001")
    # No prefix to be had (the pool full, the store failing): accepted all the same, without one.
    without = world.engine.finish_claim(packet, nas(), decision.claim, "198.18.8.9", None)
    assert without.code == Code.ACCESS_ACCEPT and first(without.attributes, Attr.DELEGATED_IPV6_PREFIX) is None
    assert first(without.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 8, 9))


def test_a_plan_s_framed_ip_address_gives_way_to_the_address_ispd_gives() -> None:
    """A plan's "Framed-IP-Address = 255.255.255.254" (RFC 2865 §5.8: the NAS picks one) for its
    dynamic logins; from a bug hunt, a login with a reserved address got both (radclient -x: two
    Framed-IP-Address, at most one allowed by RFC 2865 §5.44), and so did a pool's."""
    nas_picks = (reply_attribute(DICTIONARY, "Framed-IP-Address = 255.255.255.254"),)
    world = World(ReplySettings(plans={"home": PlanReply(attributes=nas_picks)}))
    dynamic = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
    assert [v for c, v in reply_attributes(dynamic.attributes) if c == Attr.FRAMED_IP_ADDRESS] == [b"\xff" * 3 + b"\xfe"]
    reserved = world.engine.handle(pap("alice@pppoe", "alice-pw"), nas(), NOW)
    assert reserved.code == Code.ACCESS_ACCEPT
    assert [v for c, v in reply_attributes(reserved.attributes) if c == Attr.FRAMED_IP_ADDRESS] == [
        bytes((198, 18, 7, 7))]
    pooled = World(ReplySettings(plans={"home": PlanReply(attributes=nas_picks, address_pool="pppoe")}))
    packet = pap("bob", "bob-pw")
    claim = pooled.engine.handle(packet, nas(), NOW).claim
    assert claim is not None
    accepted = pooled.engine.finish_claim(packet, nas(), claim, "198.18.8.9")
    assert [v for c, v in reply_attributes(accepted.attributes) if c == Attr.FRAMED_IP_ADDRESS] == [
        bytes((198, 18, 8, 9))]
    # The walled garden's attributes, likewise.
    garden = World(ReplySettings(suspended=SuspendedAction.WALLED_GARDEN, walled_garden=nas_picks))
    garden.directory.replace(subscriber(1, "alice", SubscriberStatus.SUSPENDED),
                             StoredCredentials(cleartext="alice-pw", updated_at=1),
                             [Reservation(1, 1, ReservationKind.USERNAME, "alice@pppoe", address="198.18.7.7")], PLAN)
    walled = garden.engine.handle(pap("alice@pppoe", "alice-pw"), nas(), NOW)
    assert walled.code == Code.ACCESS_ACCEPT
    assert [v for c, v in reply_attributes(walled.attributes) if c == Attr.FRAMED_IP_ADDRESS] == [
        bytes((198, 18, 7, 7))]


def test_a_prefix_pool_alone_claims_no_address_and_keeps_a_lines_reserved_one() -> None:
    world = World(ReplySettings(plans={"home": PlanReply(prefix_pool="homes")}))
    line = Reservation(3, 2, ReservationKind.MAC, "02:00:5e:00:00:02", address="198.18.7.2")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [line], PLAN)
    packet = pap("bob", "bob-pw", (Attr.CALLING_STATION_ID, b"02-00-5E-00-00-02"))
    decision = world.engine.handle(packet, nas(), NOW)
    assert decision.claim is not None and (decision.claim.pool, decision.claim.prefix_pool) == (None, "homes")
    accepted = world.engine.finish_claim(packet, nas(), decision.claim, None, "2001:db8:1000::/56")
    assert accepted.code == Code.ACCESS_ACCEPT
    assert first(accepted.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 7, 2))  # the line's, once
    assert [c for c, _ in reply_attributes(accepted.attributes)].count(Attr.FRAMED_IP_ADDRESS) == 1
    assert first(accepted.attributes, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0038" "20010db81000" "00")


def test_no_prefix_from_the_pool_for_the_walled_garden_or_a_reserved_prefix() -> None:
    world = World(ReplySettings(plans={"home": PlanReply(prefix_pool="homes")},
                                suspended=SuspendedAction.WALLED_GARDEN))
    walled = world.engine.handle(pap("dave", "dave-pw"), nas(), NOW)  # suspended: IPv4 only
    assert walled.code == Code.ACCESS_ACCEPT and walled.claim is None
    assert first(walled.attributes, Attr.DELEGATED_IPV6_PREFIX) is None
    # alice@pppoe is reserved (an address, no prefix): the pool's prefix goes into that reservation.
    reserved_login = world.engine.handle(pap("alice@pppoe", "alice-pw"), nas(), NOW)
    assert reserved_login.claim is not None and reserved_login.claim.prefix_pool == "homes"
    alice_pppoe = next(r for r in world.reservations if r.key == "alice@pppoe")
    assert reserved_login.claim.prefix_reservation == alice_pppoe and reserved_login.claim.pool is None
    assert reserved_login.claim.fixed is not None and reserved_login.claim.fixed.address == alice_pppoe.address
    # bob's username reserved with its prefix: that one, nothing asked of the store.
    own = Reservation(3, 2, ReservationKind.USERNAME, "bob", prefix6="2001:db8:1000:100::/56")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [own], PLAN)
    kept = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
    assert kept.code == Code.ACCESS_ACCEPT and kept.claim is None
    assert first(kept.attributes, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0038" "20010db8100001")
    # ...and reserved without one (an address only, or nothing): the prefix goes into it.
    for fixing in ({"address": "198.18.7.8"}, {}):
        unfixed = Reservation(4, 2, ReservationKind.USERNAME, "bob", **fixing)  # type: ignore[arg-type]
        world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1),
                                [unfixed], PLAN)
        plain = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
        assert plain.claim is not None and (plain.claim.prefix_pool, plain.claim.prefix_reservation) == ("homes", unfixed)
    # An unreserved username: a new reservation.
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [], PLAN)
    fresh = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
    assert fresh.claim is not None and (fresh.claim.prefix_pool, fresh.claim.prefix_reservation) == ("homes", None)
    # A plan without a prefix pool asks for nothing.
    assert World().engine.handle(pap("bob", "bob-pw"), nas(), NOW).claim is None


def test_a_logins_reserved_ipv6_stays_with_the_station_whose_open_session_has_it() -> None:
    """A plan of max_sessions 2: bob's login logged in from a second home router (another
    NAS-Port-Id and MAC) while the first was online, and both got the login's reserved /56 (and
    IPv6 address): one prefix routed to two routers breaks IPv6 for one of them. The first
    station keeps them, redialling too; the second goes without, and gets no pool prefix
    either (the pool would hand back the login's); once the first is gone, the other gets them."""
    world = World()
    login = Reservation(3, 2, ReservationKind.USERNAME, "bob", address6="2001:db8:1::77",
                        prefix6="2001:db8:1000::/56")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [login], PLAN)
    station1 = ((Attr.NAS_PORT_ID, b"ge-0/0/1:100"), (Attr.CALLING_STATION_ID, b"aa:bb:cc:00:00:01"))
    station2 = ((Attr.NAS_PORT_ID, b"ge-0/0/2:200"), (Attr.CALLING_STATION_ID, b"aa:bb:cc:00:00:02"))
    prefix, address = bytes.fromhex("0038" "20010db81000" "00"), IPv6Address("2001:db8:1::77").packed

    def ipv6(*line: tuple[int, bytes]) -> tuple[bytes | None, bytes | None, Decision]:
        decision = world.engine.handle(pap("bob", "bob-pw", *line), nas(), NOW)
        assert decision.code == Code.ACCESS_ACCEPT
        return (first(decision.attributes, Attr.DELEGATED_IPV6_PREFIX),
                first(decision.attributes, Attr.FRAMED_IPV6_ADDRESS), decision)

    assert ipv6(*station1)[:2] == (prefix, address)
    # The first station's session; its NAS reports neither (not every NAS does).
    first_session = RadiusSession(1, "127.0.0.1", "s1", "bob", NOW, NOW, subscriber_id=2, nas_client="lab",
                                  nas_port_id="ge-0/0/1:100", calling_station_id="aa:bb:cc:00:00:01")
    world.sessions.put(first_session)
    *given, withheld = ipv6(*station2)
    assert given == [None, None]
    assert withheld.withheld is not None and withheld.withheld.kinds == ("prefix", "address")
    assert withheld.withheld.session is first_session
    assert ipv6()[0] == prefix  # a request that names no station is told from none (as before)
    world.sessions.put(RadiusSession(2, "127.0.0.1", "s2", "bob", NOW + 1, NOW + 1, subscriber_id=2,
                                     nas_client="lab", nas_port_id="ge-0/0/2:200",
                                     calling_station_id="aa:bb:cc:00:00:02"))
    assert ipv6(*station2)[:2] == (None, None)  # its own session is no claim to them
    redial = ipv6(*station1)
    assert redial[:2] == (prefix, address) and redial[2].withheld is None
    # A NAS that reports the prefix: the session reporting it has it, whatever its age.
    world.sessions.put(replace(first_session, delegated_ipv6_prefix="2001:db8:1000::/56"))
    assert ipv6(*station2)[0] is None and ipv6(*station1)[0] == prefix
    # A plan with a prefix pool: the second station is no login to reserve one for.
    world.engine.settings = ReplySettings(plans={"home": PlanReply(prefix_pool="homes")})
    pooled = world.engine.handle(pap("bob", "bob-pw", *station2), nas(), NOW)
    assert pooled.code == Code.ACCESS_ACCEPT and pooled.claim is None and first(
        pooled.attributes, Attr.DELEGATED_IPV6_PREFIX) is None
    world.sessions.pop(("127.0.0.1", "s1"))
    assert ipv6(*station2)[:2] == (prefix, address)


def test_no_prefix_from_the_pool_for_a_subscriber_whose_own_reply_gives_its_static_prefix() -> None:
    """From a review: a business line's own Delegated-IPv6-Prefix (`subscriber radius-reply`) was
    replaced by a prefix reserved from its plan's pool, which the pool lost for good."""
    world = World(ReplySettings(plans={"home": PlanReply(prefix_pool="homes")}))
    bob = replace(subscriber(2, "bob"), radius_reply=("Delegated-IPv6-Prefix = 2001:db8:999::/56",))
    world.directory.replace(bob, StoredCredentials(cleartext="bob-pw", updated_at=1), [], PLAN)
    accepted = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
    assert accepted.code == Code.ACCESS_ACCEPT and accepted.claim is None
    assert first(accepted.attributes, Attr.DELEGATED_IPV6_PREFIX) == bytes.fromhex("0038" "20010db8099900")
    # Nor for one whose own attributes name a pool of the NAS's to take it from.
    bob = replace(subscriber(2, "bob"), radius_reply=("Delegated-IPv6-Prefix-Pool = biz-pd",))
    world.directory.replace(bob, StoredCredentials(cleartext="bob-pw", updated_at=1), [], PLAN)
    accepted = world.engine.handle(pap("bob", "bob-pw"), nas(), NOW)
    assert accepted.code == Code.ACCESS_ACCEPT and accepted.claim is None and first(accepted.attributes, 171) == b"biz-pd"


def test_a_prefix_pool_hands_out_the_next_prefix_the_directory_does_not_know_reserved() -> None:
    world = World()
    pool = PrefixPool("homes", IPv6Network("2001:db8:1000::/48"), 56)
    first_one = Reservation(3, 2, ReservationKind.USERNAME, "bob", prefix6="2001:db8:1000::/56")
    hand = Reservation(4, 3, ReservationKind.DUID, "00:03:00:01:02:00:5e:00:00:03", prefix6="2001:db8:1000:200::/55")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(updated_at=1), [first_one], PLAN)
    world.directory.replace(subscriber(3, "carol"), StoredCredentials(updated_at=1), [hand], PLAN)
    taken = world.directory.prefix_reserved
    # /56 number 0 is bob's, 2 and 3 lie inside carol's /55.
    assert [str(pool.next_free(taken, 10)) for _ in range(2)] == ["2001:db8:1000:100::/56", "2001:db8:1000:400::/56"]
    world.directory.remove(3)
    assert str(pool.next_free(taken, 10)) == "2001:db8:1000:500::/56"  # the cursor goes on
    small = PrefixPool("one", IPv6Network("2001:db8:1000::/56"), 56)
    assert small.next_free(taken, 10) is None  # bob's: the pool is full
    world.directory.remove(2)
    assert str(small.next_free(taken, 10)) == "2001:db8:1000::/56"


def test_a_prefix_pool_passes_over_a_candidate_that_holds_a_longer_reserved_prefix() -> None:
    """From a review: a /64 reserved by hand inside a /56 (or the /56s of a pool whose
    delegated_length a reload made /48) was a candidate all the same, each costing a refused
    store write; eight in a row answered the login without a prefix, counted "exhausted"."""
    world = World()
    pool = PrefixPool("biz", IPv6Network("2001:db8:1000::/40"), 48)
    inside = [Reservation(10 + i, 2, ReservationKind.USERNAME if i == 0 else ReservationKind.DUID,
                          "bob" if i == 0 else f"00:03:00:01:02:00:5e:00:00:{i:02x}",
                          prefix6=f"2001:db8:10{i:02x}:4200::/56") for i in range(3)]
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(updated_at=1), inside, PLAN)
    taken = world.directory.prefix_reserved
    assert [taken(int(IPv6Network(p).network_address), 48)
            for p in ("2001:db8:1000::/48", "2001:db8:1002::/48", "2001:db8:1003::/48")] == [True, True, False]
    assert str(pool.next_free(taken, 10)) == "2001:db8:1003::/48"
    world.directory.remove(2)  # given back: found again at the next pass
    assert not taken(int(IPv6Network("2001:db8:1001::/48").network_address), 48)
    world.directory.load([subscriber(2, "bob")], [PLAN], {}, inside)  # (as at a start)
    assert taken(int(IPv6Network("2001:db8:1001::/48").network_address), 48)


def test_a_prefix_pool_made_at_start_resumes_past_its_reservations() -> None:
    """From a review: after a restart the search began at the pool's first prefix and looked
    at 4,096 per login, so a pool with more reservations than that at its front answered the
    next logins without a prefix, counted as exhausted."""
    world = World()
    reservations = [Reservation(100 + i, 2, ReservationKind.DUID, f"00:03:00:01:02:00:5e:00:{i >> 8:02x}:{i & 255:02x}",
                                prefix6=f"2001:db8:{0x1000 + (i >> 8):x}:{(i & 255) << 8:x}::/56") for i in range(5000)]
    world.directory.load([subscriber(2, "bob")], [PLAN], {}, reservations)
    config = PrefixPoolConfig(name="homes", prefix="2001:db8:1000::/40", delegated_length=56)
    [pool] = prefix_pools([config], world.directory.last_reserved_prefix).values()
    assert str(pool.next_free(world.directory.prefix_reserved, 4096)) == "2001:db8:1013:8800::/56"  # the 5,001st
    empty = prefix_pools([config.model_copy(update={"prefix": IPv6Network("2001:db8:2000::/40")})],
                         world.directory.last_reserved_prefix)
    assert empty["homes"].cursor == 0
    full = prefix_pools([config.model_copy(update={"prefix": IPv6Network("2001:db8:1000::/48")})],
                        world.directory.last_reserved_prefix)
    assert full["homes"].cursor == 0  # (its last prefix reserved: round to the front, where gaps are)


def test_the_directory_knows_every_fixed_address_and_forgets_a_subscribers_own() -> None:
    world = World()
    assert world.directory.reserved == {"198.18.7.7": 1, "198.18.7.6": 6}
    world.directory.remove(6)
    assert world.directory.reserved == {"198.18.7.7": 1}
    alice = world.directory.by_id(1)
    assert alice is not None
    world.directory.replace(alice.subscriber, alice.credentials, [], PLAN)  # her reservation deleted
    assert world.directory.reserved == {}


def test_suspended_subscribers_may_go_to_the_walled_garden() -> None:
    walled = (reply_attribute(DICTIONARY, "Mikrotik-Address-List = walled-garden"),)
    world = World(ReplySettings(suspended=SuspendedAction.WALLED_GARDEN, walled_garden=walled))
    decision = world.engine.handle(pap("dave", "dave-pw"), nas(), NOW)
    assert decision.code == Code.ACCESS_ACCEPT
    assert first(decision.attributes, Attr.CLASS) == b"ispd:4:walled"
    assert vsa(decision.attributes, Vendor.MIKROTIK, 19) == b"walled-garden"
    assert vsa(decision.attributes, Vendor.MIKROTIK, 8) is None  # not the plan's rate
    per_plan = World(ReplySettings(suspended=SuspendedAction.WALLED_GARDEN, walled_garden=walled,
                                   plans={"home": PlanReply(suspended=SuspendedAction.REJECT)}))
    assert per_plan.engine.handle(pap("dave", "dave-pw"), nas(), NOW).reject == RejectReason.SUSPENDED


def test_leaving_the_walled_garden_names_what_the_plan_s_profile_would_not_take_back() -> None:
    """A CoA back to the plan's profile replaces what it names; a garden attribute it does not
    name (an address list, a Filter-Id) would stay in force on the NAS."""
    garden = (reply_attribute(DICTIONARY, "Mikrotik-Address-List = walled-garden"),
              reply_attribute(DICTIONARY, "Filter-Id = walled"),
              reply_attribute(DICTIONARY, "Session-Timeout = 600"))
    world = World(ReplySettings(suspended=SuspendedAction.WALLED_GARDEN, walled_garden=garden))
    alice = world.directory.by_id(1)
    assert alice is not None
    # The plan gives a Session-Timeout (and rates), no address list nor Filter-Id.
    assert world.engine.left_in_the_garden(alice, nas()) == ["Mikrotik-Address-List", "Filter-Id"]
    covering = World(ReplySettings(suspended=SuspendedAction.WALLED_GARDEN, walled_garden=garden, plans={
        "home": PlanReply(attributes=(reply_attribute(DICTIONARY, "Mikrotik-Address-List = customers"),
                                      reply_attribute(DICTIONARY, "Filter-Id = full")))}))
    assert covering.engine.left_in_the_garden(covering.directory.by_id(1), nas()) == []  # type: ignore[arg-type]


def test_simultaneous_use_counts_open_sessions() -> None:
    world = World()
    for n in range(2):
        world.sessions.put(RadiusSession(n + 1, "127.0.0.1", f"s{n}", "alice", NOW, NOW, subscriber_id=1))
    assert world.engine.handle(pap("alice", "alice-pw"), nas(), NOW).reject == RejectReason.SIMULTANEOUS_USE
    assert world.engine.handle(pap("frank", "frank-pw"), nas(), NOW).code == Code.ACCESS_ACCEPT  # no plan, no limit


def test_a_station_that_authenticates_again_is_not_its_own_second_session() -> None:
    """802.1X re-authenticates a station while its session is open (and a CPE redials after
    its Stop was lost): at max_sessions it stands in for its own session on that NAS."""
    world = World()
    station = b"AA-BB-CC-DD-EE-FF"
    for n, (client, calling) in enumerate((("lab", "AA-BB-CC-DD-EE-FF"), ("lab", "02-00-00-00-00-02"))):
        world.sessions.put(RadiusSession(n + 1, "127.0.0.1", f"s{n}", "alice", NOW, NOW, subscriber_id=1,
                                         nas_client=client, calling_station_id=calling))

    def again(calling: bytes, nas_: Nas) -> Decision:
        return world.engine.handle(pap("alice", "alice-pw", (Attr.CALLING_STATION_ID, calling)), nas_, NOW)

    assert again(station, nas()).code == Code.ACCESS_ACCEPT
    assert again(b"02-00-00-00-00-09", nas()).reject == RejectReason.SIMULTANEOUS_USE  # a third station
    other_nas = Nas("other", SECRET, NasKind.MIKROTIK, Policy.YES, Policy.YES)
    assert again(station, other_nas).reject == RejectReason.SIMULTANEOUS_USE  # elsewhere: another login
    # A copied MAC stands in for one session at most: with both sessions from it, a third is refused.
    world.sessions.put(RadiusSession(3, "127.0.0.1", "s9", "alice", NOW, NOW, subscriber_id=1, nas_client="lab",
                                     calling_station_id="AA-BB-CC-DD-EE-FF"))
    assert again(station, nas()).reject == RejectReason.SIMULTANEOUS_USE


def test_a_station_whose_nas_rebooted_silently_is_known_by_its_mac_under_a_new_session_id() -> None:
    """The NAS rebooted without Accounting-On: the old session is still open here, and the
    station's new login names a new Acct-Session-Id. That id matches no open session, so the
    station (Calling-Station-Id, and NAS-Port-Id when both have one) decides, as without one."""
    world = World()
    world.sessions.put(RadiusSession(1, "127.0.0.1", "old-1", "alice", NOW, NOW, subscriber_id=1, nas_client="lab",
                                     calling_station_id="AA-BB-CC-DD-EE-FF", nas_port_id="eth0.100"))
    world.sessions.put(RadiusSession(2, "127.0.0.1", "old-2", "alice", NOW, NOW, subscriber_id=1, nas_client="lab",
                                     calling_station_id="02-00-00-00-00-02"))

    def login(session_id: bytes, calling: bytes, port: bytes) -> Decision:
        return world.engine.handle(pap("alice", "alice-pw", (Attr.ACCT_SESSION_ID, session_id),
                                       (Attr.CALLING_STATION_ID, calling), (Attr.NAS_PORT_ID, port)), nas(), NOW)

    assert login(b"new-1", b"AA-BB-CC-DD-EE-FF", b"eth0.100").code == Code.ACCESS_ACCEPT
    assert login(b"new-2", b"AA-BB-CC-DD-EE-FF", b"eth0.200").reject == RejectReason.SIMULTANEOUS_USE  # another port
    assert login(b"new-3", b"02-00-00-00-00-09", b"eth0.100").reject == RejectReason.SIMULTANEOUS_USE  # another station
    assert login(b"old-2", b"02-00-00-00-00-09", b"eth0.9").code == Code.ACCESS_ACCEPT  # the id names its session


def test_a_station_on_another_nas_of_a_client_network_is_another_login() -> None:
    """From a storm review: a client configured as a network of BNGs is one name, and a
    station's login on another BNG of it stood in for its session on the first: 100 subscribers
    of max_sessions = 1 had two open sessions each, one per BNG, both with the same pool address
    (its line's). The same NAS is the same address there, as the sessions are kept."""
    world = World()  # alice: max_sessions = 2, both open on 127.0.0.2
    for n, calling in enumerate(("AA-BB-CC-DD-EE-FF", "02-00-00-00-00-02")):
        world.sessions.put(RadiusSession(n + 1, "127.0.0.2", f"s{n}", "alice", NOW, NOW, subscriber_id=1,
                                         nas_client="lab", calling_station_id=calling))
    network = Nas("lab", SECRET, NasKind.MIKROTIK, Policy.YES, Policy.YES, network=IPv4Network("127.0.0.0/29"))

    def login(source: str, *reported: tuple[int, bytes]) -> Decision:
        return world.engine.handle(pap("alice", "alice-pw", (Attr.CALLING_STATION_ID, b"AA-BB-CC-DD-EE-FF"),
                                       *reported), network, NOW, source)

    assert login("127.0.0.2").code == Code.ACCESS_ACCEPT  # its own BNG: it stands in for its session
    assert login("127.0.0.3").reject == RejectReason.SIMULTANEOUS_USE  # another BNG of the client
    # A NAS that names itself (NAS-IP-Address inside the client's network) is that NAS, as its sessions are kept.
    assert login("127.0.0.3", (Attr.NAS_IP_ADDRESS, bytes((127, 0, 0, 2)))).code == Code.ACCESS_ACCEPT
    assert login("127.0.0.2", (Attr.NAS_IP_ADDRESS, bytes((127, 0, 0, 4)))).reject == RejectReason.SIMULTANEOUS_USE
    # A client of one address is one NAS, whatever the request says.
    assert world.engine.handle(pap("alice", "alice-pw", (Attr.CALLING_STATION_ID, b"AA-BB-CC-DD-EE-FF")), nas(),
                               NOW, "127.0.0.9").code == Code.ACCESS_ACCEPT


def test_a_session_a_nas_of_a_client_network_took_over_is_named_by_its_id() -> None:
    """From a review: BNGs of one client network that move a session between them (a redundant
    pair's failover, the session's state synced) re-authenticate it from the other BNG under the
    same Acct-Session-Id. The request names its own open session, which stood in for itself
    before the station was looked for by address only; it was rejected as Simultaneous-Use."""
    world = World()  # alice: max_sessions = 2, both open on 127.0.0.2
    for n, calling in enumerate(("AA-BB-CC-DD-EE-FF", "02-00-00-00-00-02")):
        world.sessions.put(RadiusSession(n + 1, "127.0.0.2", f"s{n}", "alice", NOW, NOW, subscriber_id=1,
                                         nas_client="lab", calling_station_id=calling))
    network = Nas("lab", SECRET, NasKind.MIKROTIK, Policy.YES, Policy.YES, network=IPv4Network("127.0.0.0/29"))

    def login(session_id: bytes) -> Decision:
        return world.engine.handle(pap("alice", "alice-pw", (Attr.CALLING_STATION_ID, b"AA-BB-CC-DD-EE-FF"),
                                       (Attr.ACCT_SESSION_ID, session_id), (Attr.NAS_IP_ADDRESS, bytes((127, 0, 0, 3)))),
                                   network, NOW, "127.0.0.3")

    assert login(b"s0").code == Code.ACCESS_ACCEPT  # its own session, now on the other BNG
    assert login(b"new-1").reject == RejectReason.SIMULTANEOUS_USE  # a new login there is another session


def test_a_session_moved_between_bngs_of_a_client_network_counts_once() -> None:
    """A redundant pair's failover keeps the session's Acct-Session-Id, and the new BNG's
    interims keep it under its own address, a session of its own beside the old BNG's one
    (open until it goes stale). Counted as two, it used up a slot: the session's own
    re-authentication from the new BNG was rejected as Simultaneous-Use for
    stale_session_intervals (found with ispd run and two NAS addresses of one client)."""
    world = World()  # alice: max_sessions = 2; s0 moved from 127.0.0.2 to .3, s1 on .2
    for n, (address, session_id, calling) in enumerate((("127.0.0.2", "s0", "AA-BB-CC-DD-EE-FF"),
                                                        ("127.0.0.3", "s0", "AA-BB-CC-DD-EE-FF"),
                                                        ("127.0.0.2", "s1", "02-00-00-00-00-02"))):
        world.sessions.put(RadiusSession(n + 1, address, session_id, "alice", NOW, NOW, subscriber_id=1,
                                         nas_client="lab", calling_station_id=calling))
    network = Nas("lab", SECRET, NasKind.MIKROTIK, Policy.YES, Policy.YES, network=IPv4Network("127.0.0.0/29"))

    def login(session_id: bytes, calling: bytes) -> Decision:
        return world.engine.handle(pap("alice", "alice-pw", (Attr.CALLING_STATION_ID, calling),
                                       (Attr.ACCT_SESSION_ID, session_id)), network, NOW, "127.0.0.3")

    assert login(b"s0", b"AA-BB-CC-DD-EE-FF").code == Code.ACCESS_ACCEPT  # its re-authentication
    assert login(b"new-1", b"AA-BB-CC-DD-EE-FF").code == Code.ACCESS_ACCEPT  # its redial on the new BNG
    assert login(b"new-2", b"02-00-00-00-00-09").reject == RejectReason.SIMULTANEOUS_USE  # a third login
    # The same id on another client is another session.
    world.sessions.put(RadiusSession(4, "127.0.0.9", "s0", "alice", NOW, NOW, subscriber_id=1, nas_client="other"))
    assert login(b"s0", b"AA-BB-CC-DD-EE-FF").reject == RejectReason.SIMULTANEOUS_USE


# --- CHAP, MS-CHAP, EAP-MD5 --------------------------------------------------------------------


def chap(user: str, password: str, *, challenge_attribute: bool) -> Packet:
    authenticator, challenge, ident = os.urandom(16), os.urandom(16), 42
    response = chap_response(ident, password.encode(), challenge if challenge_attribute else authenticator)
    attributes = [(Attr.USER_NAME, user.encode()), (Attr.CHAP_PASSWORD, bytes((ident,)) + response)]
    if challenge_attribute:
        attributes.append((Attr.CHAP_CHALLENGE, challenge))
    return access_request(attributes, authenticator=authenticator)


@pytest.mark.parametrize("challenge_attribute", [True, False])
def test_chap(challenge_attribute: bool) -> None:
    world = World()
    assert world.engine.handle(chap("alice", "alice-pw", challenge_attribute=challenge_attribute), nas(),
                               NOW).code == Code.ACCESS_ACCEPT
    assert world.engine.handle(chap("alice", "nope", challenge_attribute=challenge_attribute), nas(),
                               NOW).reject == RejectReason.WRONG_PASSWORD
    # CHAP needs the password itself; bob's plan keeps only the NT hash.
    assert world.engine.handle(chap("bob", "bob-pw", challenge_attribute=challenge_attribute), nas(),
                               NOW).reject == RejectReason.NO_PASSWORD_FORM


def mschap_v2(user: str, password: str) -> tuple[Packet, bytes, bytes, bytes]:
    challenge, peer = os.urandom(16), os.urandom(16)
    nt_response = mschap.nt_response_v2(challenge, peer, user.encode(), nt_hash(password))
    response = bytes((7, 0)) + peer + bytes(8) + nt_response
    packet = access_request([(Attr.USER_NAME, user.encode()),
                             vendor_specific(Vendor.MICROSOFT, 11, challenge),
                             vendor_specific(Vendor.MICROSOFT, 25, response)])
    return packet, challenge, peer, nt_response


def test_mschap_v2_proves_the_server_and_keys_mppe() -> None:
    world = World()
    packet, challenge, peer, nt_response = mschap_v2("bob", "bob-pw")
    decision = world.engine.handle(packet, nas(), NOW)
    assert decision.code == Code.ACCESS_ACCEPT and decision.method == "mschapv2"
    success = vsa(decision.attributes, Vendor.MICROSOFT, 26)
    proof = mschap.authenticator_response(nt_hash("bob-pw"), nt_response, peer, challenge, b"bob")
    assert success == bytes((7,)) + proof
    send_key, recv_key = mschap.mppe_keys_v2(nt_hash("bob-pw"), nt_response)
    sent = vsa(decision.attributes, Vendor.MICROSOFT, 16)
    received = vsa(decision.attributes, Vendor.MICROSOFT, 17)
    assert sent is not None and received is not None
    assert mschap.decrypt_mppe_key(sent, SECRET, packet.authenticator) == send_key
    assert mschap.decrypt_mppe_key(received, SECRET, packet.authenticator) == recv_key


def test_mschap_v2_failure_carries_ms_chap_error() -> None:
    decision = World().engine.handle(mschap_v2("bob", "wrong")[0], nas(), NOW)
    assert decision.reject == RejectReason.WRONG_PASSWORD
    error = vsa(decision.attributes, Vendor.MICROSOFT, 2)
    assert error is not None and error[0] == 7 and error[1:].startswith(b"E=691 R=")


def test_mschap_v1() -> None:
    world = World()
    challenge = os.urandom(8)
    response = bytes((3, 1)) + bytes(24) + mschap.challenge_response(challenge, nt_hash("bob-pw"))
    packet = access_request([(Attr.USER_NAME, b"bob"), vendor_specific(Vendor.MICROSOFT, 11, challenge),
                             vendor_specific(Vendor.MICROSOFT, 1, response)])
    decision = world.engine.handle(packet, nas(), NOW)
    assert decision.code == Code.ACCESS_ACCEPT and vsa(decision.attributes, Vendor.MICROSOFT, 12) is not None
    bad = bytes((3, 1)) + bytes(48)
    wrong = access_request([(Attr.USER_NAME, b"bob"), vendor_specific(Vendor.MICROSOFT, 11, challenge),
                            vendor_specific(Vendor.MICROSOFT, 1, bad)])
    decision = world.engine.handle(wrong, nas(), NOW)
    error = vsa(decision.attributes, Vendor.MICROSOFT, 2)
    assert decision.reject == RejectReason.WRONG_PASSWORD and error is not None and b"V=2" in error


def eap_request(user: str, eap: EAPPacket, state: bytes | None = None,
                extra: Sequence[tuple[int, bytes]] = ()) -> Packet:
    attributes = [(Attr.USER_NAME, user.encode()), *((Attr.EAP_MESSAGE, part) for part in eap_attributes(encode_eap(eap)))]
    if state is not None:
        attributes.append((Attr.STATE, state))
    return access_request([*attributes, *extra])


def test_eap_md5_conversation() -> None:
    world = World()
    challenge_reply = world.engine.handle(
        eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY, b"alice")), nas(), NOW)
    assert challenge_reply.code == Code.ACCESS_CHALLENGE
    state = first(challenge_reply.attributes, Attr.STATE)
    eap = decode_eap(first(challenge_reply.attributes, Attr.EAP_MESSAGE) or b"")
    assert eap is not None and eap.type == EAPType.MD5_CHALLENGE and state is not None
    challenge = eap.data[1:17]
    answer = hashlib.md5(bytes((eap.identifier,)) + b"alice-pw" + challenge).digest()
    response = EAPPacket(EAPCode.RESPONSE, eap.identifier, EAPType.MD5_CHALLENGE, bytes((16,)) + answer)
    accept = world.engine.handle(eap_request("alice", response, state), nas(), NOW)
    assert accept.code == Code.ACCESS_ACCEPT
    success = decode_eap(first(accept.attributes, Attr.EAP_MESSAGE) or b"")
    assert success is not None and success.code == EAPCode.SUCCESS
    replay = world.engine.handle(eap_request("alice", response, state), nas(), NOW)
    assert replay.reject == RejectReason.EAP_FAILED  # a State is good for one answer


def test_eap_nak_and_unknown_state_fail() -> None:
    world = World()
    nak = EAPPacket(EAPCode.RESPONSE, 2, EAPType.NAK, bytes((13,)))  # wants EAP-TLS
    decision = world.engine.handle(eap_request("alice", nak, b"x" * 16), nas(), NOW)
    failure = decode_eap(first(decision.attributes, Attr.EAP_MESSAGE) or b"")
    assert decision.reject == RejectReason.EAP_FAILED and failure is not None and failure.code == EAPCode.FAILURE


def tunnel_world(tmp_path: Path, methods: list[EAPMethod], settings: ReplySettings | None = None) -> World:
    world = World(settings)
    certificates = issue(tmp_path, "radius.isp.test")
    world.engine.tunnels = TunnelServer(server_context(certificates.certificate, certificates.private_key))
    world.engine.eap_methods = methods
    return world


def eap_reply(decision: Decision) -> EAPPacket:
    eap = decode_eap(b"".join(v for c, v in reply_attributes(decision.attributes) if c == Attr.EAP_MESSAGE))
    assert eap is not None
    return eap


def test_a_nak_moves_to_the_method_the_peer_names(tmp_path: Path) -> None:
    world = tunnel_world(tmp_path, [EAPMethod.MD5, EAPMethod.PEAP, EAPMethod.TTLS])
    offer = world.engine.handle(eap_request("anonymous", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
    assert eap_reply(offer).type == EAPType.MD5_CHALLENGE
    nak = EAPPacket(EAPCode.RESPONSE, eap_reply(offer).identifier, EAPType.NAK, bytes((21, 25)))  # TTLS, then PEAP
    start = world.engine.handle(eap_request("anonymous", nak, first(offer.attributes, Attr.STATE)), nas(), NOW)
    assert start.code == Code.ACCESS_CHALLENGE and start.method == "peap"  # ours come first: PEAP before TTLS
    request = eap_reply(start)
    assert request.type == 25 and request.data == bytes((TLSFlag.START,))
    assert len(world.engine.tunnels or ()) == 1


def test_a_nak_for_a_method_not_offered_fails(tmp_path: Path) -> None:
    world = tunnel_world(tmp_path, [EAPMethod.MD5, EAPMethod.TTLS])
    offer = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
    nak = EAPPacket(EAPCode.RESPONSE, eap_reply(offer).identifier, EAPType.NAK, bytes((25, 13)))  # PEAP, EAP-TLS
    decision = world.engine.handle(eap_request("alice", nak, first(offer.attributes, Attr.STATE)), nas(), NOW)
    assert decision.reject == RejectReason.EAP_FAILED and eap_reply(decision).code == EAPCode.FAILURE


def test_eap_failures_are_counted_under_a_method_offered_not_under_md5(tmp_path: Path) -> None:
    # EAP-MD5 not offered: a station that refuses PEAP for a method not served here, or sends
    # garbage, is a reject of PEAP (the method proposed, the first offered), not of EAP-MD5.
    world = tunnel_world(tmp_path, [EAPMethod.PEAP, EAPMethod.TTLS])
    offer = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
    assert offer.method == "peap"
    nak = EAPPacket(EAPCode.RESPONSE, eap_reply(offer).identifier, EAPType.NAK, bytes((13,)))  # EAP-TLS
    refused = world.engine.handle(eap_request("alice", nak, first(offer.attributes, Attr.STATE)), nas(), NOW)
    assert refused.reject == RejectReason.EAP_FAILED and refused.method == "peap"
    stray = EAPPacket(EAPCode.RESPONSE, 9, EAPType.NAK, bytes((21,)))  # answers no proposal
    assert world.engine.handle(eap_request("alice", stray, b"x" * 16), nas(), NOW).method == "peap"
    other = EAPPacket(EAPCode.RESPONSE, 9, 26, b"\x02")  # an outer EAP-MSCHAPv2, not served here
    assert world.engine.handle(eap_request("alice", other, b"x" * 16), nas(), NOW).method == "peap"


def test_a_tunnel_that_fails_is_logged_as_the_subscriber_its_outer_identity_names(tmp_path: Path) -> None:
    # The reject log keeps one line a minute per NAS, subscriber, reason and method: a failure
    # with no subscriber would hide every other station's on the same access point.
    world = tunnel_world(tmp_path, [EAPMethod.TTLS])
    for outer, subscriber_id in (("alice", 1), ("anonymous@isp.test", None)):
        offer = world.engine.handle(eap_request(outer, EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
        garbage = EAPPacket(EAPCode.RESPONSE, eap_reply(offer).identifier, 21, b"\x00\x16\x03\x01\x00\x02\x01\x00")
        failed = world.engine.handle(eap_request(outer, garbage, first(offer.attributes, Attr.STATE)), nas(), NOW)
        assert failed.reject == RejectReason.EAP_FAILED and failed.detail
        assert failed.subscriber_id == subscriber_id, outer
        expired = world.engine.handle(eap_request(outer, garbage, b"x" * 16), nas(), NOW)  # no such tunnel
        assert expired.reject == RejectReason.EAP_FAILED and expired.subscriber_id == subscriber_id


def test_the_first_method_listed_is_offered_first(tmp_path: Path) -> None:
    world = tunnel_world(tmp_path, [EAPMethod.TTLS, EAPMethod.MD5])
    offer = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
    assert offer.method == "eap-ttls" and eap_reply(offer).type == 21


def test_a_tunnel_response_needs_its_tunnel_and_its_user_name(tmp_path: Path) -> None:
    world = tunnel_world(tmp_path, [EAPMethod.TTLS])
    offer = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
    state = first(offer.attributes, Attr.STATE)
    response = EAPPacket(EAPCode.RESPONSE, eap_reply(offer).identifier, 21, client_hello())
    stranger = world.engine.handle(eap_request("mallory", response, state), nas(), NOW)  # another User-Name
    assert stranger.reject == RejectReason.EAP_FAILED and stranger.method == "eap-ttls"
    assert stranger.detail is not None and "no tunnel" in stranger.detail
    offer = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
    state = first(offer.attributes, Attr.STATE)
    assert world.engine.handle(eap_request("alice", response, state), nas(), NOW).code == Code.ACCESS_CHALLENGE
    again = world.engine.handle(eap_request("alice", response, state), nas(), NOW)  # a State is used once
    assert again.reject == RejectReason.EAP_FAILED and again.detail is not None and "no tunnel" in again.detail


class EngineStation(TLSStation):
    """A station whose EAP goes through the engine in Access-Requests, as a NAS relays it
    (``extra``: attributes the NAS adds to each); ``sent`` is the last Access-Request."""

    def __init__(self, world: World, ca: Path, user: str, method: int, extra: Sequence[tuple[int, bytes]] = (),
                 server_fragment: int = FRAGMENT_SIZE) -> None:
        self.world, self.user, self.extra = world, user, extra
        self.sent = eap_request(user, EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY), extra=extra)
        self.decision = world.engine.handle(self.sent, nas(), NOW)
        self.state = first(self.decision.attributes, Attr.STATE)
        super().__init__(ca, method, eap_reply(self.decision), server_fragment=server_fragment)

    def exchange(self, response: EAPPacket) -> EAPPacket | None:
        self.sent = eap_request(self.user, response, self.state, self.extra)
        self.decision = self.world.engine.handle(self.sent, nas(), NOW)
        self.state = first(self.decision.attributes, Attr.STATE)
        return eap_reply(self.decision) if self.decision.code == Code.ACCESS_CHALLENGE else None


def peap_to_the_challenge(tmp_path: Path, user: str = "bob") -> tuple[EngineStation, bytes]:
    """A PEAP conversation through the engine, up to the inner MS-CHAPv2 challenge (returned)."""
    world = tunnel_world(tmp_path, [EAPMethod.PEAP])
    station = EngineStation(world, tmp_path / "server-ca.pem", "anonymous", 25)
    station.handshake()
    station.respond(b"\x00")  # the server's Finished acknowledged: it speaks first inside
    assert station.read_inner() == b"\x01"  # EAP-Request/Identity, header-less (PEAPv0)
    station.send_inner(b"\x01" + user.encode())
    challenge = station.read_inner()
    assert challenge[:2] == bytes((26, 1)) and challenge[5] == 16  # EAP-MSCHAPv2 Challenge, Value-Size 16
    return station, challenge


def mschapv2_response(challenge: bytes, user: bytes, password: str, ms_id: int | None = None) -> bytes:
    peer_challenge = os.urandom(16)
    nt = mschap.nt_response_v2(challenge[6:22], peer_challenge, user, nt_hash(password))
    value = bytes((49,)) + peer_challenge + bytes(8) + nt + b"\x00" + user
    ident = challenge[2] if ms_id is None else ms_id
    return bytes((26, 2, ident)) + (4 + len(value)).to_bytes(2, "big") + value


def test_peap_runs_mschapv2_then_the_result_tlv_then_accepts(tmp_path: Path) -> None:
    station, challenge = peap_to_the_challenge(tmp_path)
    station.send_inner(mschapv2_response(challenge, b"bob", "bob-pw"))
    success = station.read_inner()
    assert success[:2] == bytes((26, 3)) and b"S=" in success  # MS-CHAPv2 Success with the proof
    station.send_inner(bytes((26, 3)))  # the peer takes it
    result = decode_eap(station.read_inner())  # EAP-TLV, with its header
    assert result is not None and result.type == 33 and result.data == b"\x80\x03\x00\x02\x00\x01"
    assert station.send_inner(encode_eap(EAPPacket(EAPCode.RESPONSE, result.identifier, 33, result.data))) is None
    accept = station.decision
    assert accept.code == Code.ACCESS_ACCEPT and accept.method == "peap"
    assert eap_reply(accept).code == EAPCode.SUCCESS
    assert first(accept.attributes, Attr.USER_NAME) == b"bob"  # the inner identity
    assert vsa(accept.attributes, Vendor.MICROSOFT, 16) is not None and vsa(accept.attributes, Vendor.MICROSOFT, 17)


@pytest.mark.parametrize("skip_to", ["result", "success"])
def test_peap_answers_out_of_turn_end_in_failure(tmp_path: Path, skip_to: str) -> None:
    """A peer that skips MS-CHAPv2 (answers as if it had passed) is not let in."""
    station, _ = peap_to_the_challenge(tmp_path)
    if skip_to == "result":
        station.send_inner(encode_eap(EAPPacket(EAPCode.RESPONSE, 9, 33, b"\x80\x03\x00\x02\x00\x01")))
    else:
        station.send_inner(bytes((26, 3)))
    assert station.decision.reject == RejectReason.EAP_FAILED and "out of turn" in (station.decision.detail or "")
    assert eap_reply(station.decision).code == EAPCode.FAILURE


def test_peap_rejects_a_wrong_password_and_a_response_to_another_challenge(tmp_path: Path) -> None:
    station, challenge = peap_to_the_challenge(tmp_path)
    station.send_inner(mschapv2_response(challenge, b"bob", "wrong"))
    assert station.decision.reject == RejectReason.WRONG_PASSWORD
    station, challenge = peap_to_the_challenge(tmp_path / "again")
    station.send_inner(mschapv2_response(challenge, b"bob", "bob-pw", ms_id=(challenge[2] + 1) & 0xFF))
    assert station.decision.reject == RejectReason.EAP_FAILED


def test_peap_needs_the_nt_hash(tmp_path: Path) -> None:
    station, challenge = peap_to_the_challenge(tmp_path, "carol")  # a scrypt verifier only
    station.send_inner(mschapv2_response(challenge, b"carol", "carol-pw"))
    assert station.decision.reject == RejectReason.NO_PASSWORD_FORM


def test_a_nak_only_answers_a_proposal(tmp_path: Path) -> None:
    world = tunnel_world(tmp_path, [EAPMethod.MD5, EAPMethod.TTLS, EAPMethod.PEAP])

    def offer() -> tuple[bytes | None, int]:
        decision = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)),
                                       nas(), NOW)
        return first(decision.attributes, Attr.STATE), eap_reply(decision).identifier

    state, ident = offer()
    wrong_id = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, ident + 1, 3, b"\x15"), state),
                                   nas(), NOW)
    assert wrong_id.reject == RejectReason.EAP_FAILED
    state, ident = offer()
    same = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, ident, 3, b"\x04"), state), nas(), NOW)
    assert same.reject == RejectReason.EAP_FAILED  # a Nak for the method proposed
    state, ident = offer()
    ttls = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, ident, 3, b"\x15"), state), nas(), NOW)
    assert ttls.method == "eap-ttls"
    state = first(ttls.attributes, Attr.STATE)
    hello = EAPPacket(EAPCode.RESPONSE, eap_reply(ttls).identifier, 21, client_hello())
    handshake = world.engine.handle(eap_request("alice", hello, state), nas(), NOW)
    assert handshake.code == Code.ACCESS_CHALLENGE
    nak = EAPPacket(EAPCode.RESPONSE, eap_reply(handshake).identifier, 3, b"\x19")  # PEAP, in mid-handshake
    late = world.engine.handle(eap_request("alice", nak, first(handshake.attributes, Attr.STATE)), nas(), NOW)
    assert late.reject == RejectReason.EAP_FAILED and "no method proposal" in (late.detail or "")


def ttls_pap(user: str, password: str) -> bytes:
    return encode_avp(AVPCode.USER_NAME, user.encode()) + encode_avp(AVPCode.USER_PASSWORD, password.encode().ljust(16, b"\0"))


def resend(world: World, packet: Packet) -> Decision:
    """The NAS's copy of an Access-Request left unanswered: the same attributes, as it resends."""
    return world.engine.handle(decode(packet.raw), nas(), NOW)


def test_a_ttls_login_dropped_before_its_password_check_is_answered_when_the_nas_sends_it_again(
        tmp_path: Path) -> None:
    """Too many password checks at once: the request is dropped and the tunnel put back. Its TLS
    records were decrypted already; the copy must not be fed to TLS again (a MAC failure)."""
    world = tunnel_world(tmp_path, [EAPMethod.TTLS])
    station = EngineStation(world, tmp_path / "server-ca.pem", "anonymous", 21)
    station.handshake()
    station.send_inner(ttls_pap("carol", "carol-pw"))  # a scrypt verifier only: checked off the loop
    pending = station.decision.pending
    assert pending is not None and pending.restore is not None
    pending.restore()  # what the service does when it cannot start the check
    again = resend(world, station.sent)
    assert again.pending is not None, again
    accept = world.engine.finish_password_check(station.sent, nas(), again.pending, True, NOW)
    assert accept.code == Code.ACCESS_ACCEPT and eap_reply(accept).code == EAPCode.SUCCESS
    assert first(accept.attributes, Attr.USER_NAME) == b"carol"


def test_an_eap_login_dropped_before_its_address_claim_is_answered_when_the_nas_sends_it_again(
        tmp_path: Path) -> None:
    settings = ReplySettings(plans={"home": PlanReply(address_pool="pppoe")})
    world = tunnel_world(tmp_path, [EAPMethod.TTLS], settings)
    station = EngineStation(world, tmp_path / "server-ca.pem", "anonymous", 21)
    station.handshake()
    station.send_inner(ttls_pap("bob", "bob-pw"))
    claim = station.decision.claim
    assert claim is not None and claim.restore is not None
    claim.restore()  # the claim failed (the store busy): dropped, for the NAS to send again
    again = resend(world, station.sent)
    assert again.claim is not None, again
    accept = world.engine.finish_claim(station.sent, nas(), again.claim, "198.18.8.9")
    assert accept.code == Code.ACCESS_ACCEPT and eap_reply(accept).code == EAPCode.SUCCESS
    assert first(accept.attributes, Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 8, 9))

    md5 = World(settings)  # EAP-MD5: its conversation goes back under its State
    offer = md5.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
    challenge = eap_reply(offer)
    answer = hashlib.md5(bytes((challenge.identifier,)) + b"alice-pw" + challenge.data[1:17]).digest()
    packet = eap_request("alice", EAPPacket(EAPCode.RESPONSE, challenge.identifier, EAPType.MD5_CHALLENGE,
                                            bytes((16,)) + answer), first(offer.attributes, Attr.STATE))
    first_try = md5.engine.handle(packet, nas(), NOW)
    assert first_try.claim is not None and first_try.claim.restore is not None
    first_try.claim.restore()
    assert resend(md5, packet).claim is not None


def test_a_password_check_then_a_dropped_claim_keeps_the_tunnel_for_the_copy(tmp_path: Path) -> None:
    world = tunnel_world(tmp_path, [EAPMethod.TTLS], ReplySettings(plans={"home": PlanReply(address_pool="pppoe")}))
    station = EngineStation(world, tmp_path / "server-ca.pem", "anonymous", 21)
    station.handshake()
    station.send_inner(ttls_pap("carol", "carol-pw"))
    assert station.decision.pending is not None
    checked = world.engine.finish_password_check(station.sent, nas(), station.decision.pending, True, NOW)
    assert checked.claim is not None and checked.claim.restore is not None
    checked.claim.restore()
    assert resend(world, station.sent).claim is not None  # the password checked is remembered: no new check


def test_eap_start_is_answered_with_an_identity_request() -> None:
    """RFC 3579 §2.1: an EAP-Message of no data asks the server to begin (as FreeRADIUS does)."""
    world = World()
    decision = world.engine.handle(access_request([(Attr.USER_NAME, b"alice"), (Attr.EAP_MESSAGE, b"")]), nas(), NOW)
    assert decision.code == Code.ACCESS_CHALLENGE, decision
    request = eap_reply(decision)
    assert (request.code, request.type, request.data) == (EAPCode.REQUEST, EAPType.IDENTITY, b"")


def test_tls_fragments_fit_the_nas_framed_mtu(tmp_path: Path) -> None:
    world = tunnel_world(tmp_path, [EAPMethod.TTLS])
    station = EngineStation(world, tmp_path / "server-ca.pem", "anonymous", 21,
                            extra=[(Attr.FRAMED_MTU, (300).to_bytes(4, "big"))], server_fragment=290)
    station.handshake()
    assert station.fragmented > 0  # the server's certificate took several requests, each within the MTU
    station.send_inner(ttls_pap("alice", "alice-pw"))
    assert station.decision.code == Code.ACCESS_ACCEPT


def test_without_a_certificate_only_md5_is_offered() -> None:
    world = World()
    world.engine.eap_methods = EAPConfig(methods=[EAPMethod.TTLS, EAPMethod.MD5]).offered
    offer = world.engine.handle(eap_request("alice", EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY)), nas(), NOW)
    assert eap_reply(offer).type == EAPType.MD5_CHALLENGE


# --- Message-Authenticator policy (BlastRADIUS) -----------------------------------------------


@pytest.mark.parametrize(("policy", "with_ma", "expected"), [
    (Policy.YES, True, Code.ACCESS_ACCEPT),
    (Policy.YES, False, Drop.MISSING_MESSAGE_AUTHENTICATOR),
    (Policy.NO, False, Code.ACCESS_ACCEPT),
    (Policy.AUTO, False, Code.ACCESS_ACCEPT),
])
def test_require_message_authenticator(policy: Policy, with_ma: bool, expected: object) -> None:
    decision = World().engine.handle(pap("alice", "alice-pw", message_authenticator=with_ma),
                                     nas(require=policy), NOW)
    assert (decision.code if decision.code is not None else decision.drop) == expected


def test_auto_requires_it_once_the_nas_has_sent_one() -> None:
    world, client = World(), nas(require=Policy.AUTO, proxy=Policy.AUTO)
    assert world.engine.handle(pap("alice", "alice-pw", message_authenticator=False), client, NOW).code == \
        Code.ACCESS_ACCEPT
    assert world.engine.handle(pap("alice", "alice-pw"), client, NOW).code == Code.ACCESS_ACCEPT
    assert world.engine.handle(pap("alice", "alice-pw", message_authenticator=False), client, NOW).drop == \
        Drop.MISSING_MESSAGE_AUTHENTICATOR


def test_auto_is_not_learnt_from_eap() -> None:
    """EAP always carries a Message-Authenticator (RFC 3579 §3.2): a Wi-Fi controller doing 802.1X
    and MAC authentication (PAP without one) must keep its MAC logins after the first EAP login,
    as with FreeRADIUS 3.2.5; a PAP request with one still makes it required."""
    world, client = World(), nas(require=Policy.AUTO, proxy=Policy.AUTO)
    identity = access_request([(Attr.USER_NAME, b"alice"),
                               (Attr.EAP_MESSAGE, encode_eap(EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY, b"a")))])
    assert world.engine.handle(identity, client, NOW).code == Code.ACCESS_CHALLENGE
    assert world.engine.handle(pap("alice", "alice-pw", message_authenticator=False), client, NOW).code == \
        Code.ACCESS_ACCEPT
    assert world.engine.handle(pap("alice", "alice-pw"), client, NOW).code == Code.ACCESS_ACCEPT
    assert world.engine.handle(pap("alice", "alice-pw", message_authenticator=False), client, NOW).drop == \
        Drop.MISSING_MESSAGE_AUTHENTICATOR


def test_auto_is_not_learnt_for_a_network_of_nases() -> None:
    """One NAS of a client's network upgraded (sending a Message-Authenticator) says nothing of
    the others: their requests without one are still answered, as with FreeRADIUS 3.2.5."""
    world = World()
    network = Nas("bngs", SECRET, NasKind.MIKROTIK, Policy.AUTO, Policy.AUTO, network=IPv4Network("198.18.4.0/24"))
    assert world.engine.handle(pap("alice", "alice-pw"), network, NOW).code == Code.ACCESS_ACCEPT
    assert world.engine.handle(pap("alice", "alice-pw", message_authenticator=False), network, NOW).code == \
        Code.ACCESS_ACCEPT
    one = Nas("bng", SECRET, NasKind.MIKROTIK, Policy.AUTO, Policy.AUTO, network=IPv4Network("198.18.4.1/32"))
    assert world.engine.handle(pap("alice", "alice-pw"), one, NOW).code == Code.ACCESS_ACCEPT
    assert world.engine.handle(pap("alice", "alice-pw", message_authenticator=False), one, NOW).drop == \
        Drop.MISSING_MESSAGE_AUTHENTICATOR


def test_what_auto_learnt_survives_a_reload_only_for_the_same_address() -> None:
    """A reload keeps what auto learnt of a NAS; a client whose name now stands for a network
    (or another NAS) starts afresh, or every NAS of the network would have to send one."""
    from ispd.radius.config import RadiusClientConfig
    from ispd.radius.service import NasTable

    def table(address: str) -> NasTable:
        return NasTable([RadiusClientConfig.model_validate(
            {"name": "bng", "address": address, "secret": "s", "require_message_authenticator": "auto"})])

    learnt = table("198.18.4.1")
    learnt.clients["bng"].message_authenticator_seen = True
    for address, kept in (("198.18.4.1", True), ("198.18.4.0/24", False), ("198.18.4.2", False)):
        reloaded = table(address)
        reloaded.carry_over(learnt)
        assert reloaded.clients["bng"].message_authenticator_seen is kept, address


def _nas_table(clients: list[tuple[str, str]]) -> NasTable:
    from ispd.radius.config import RadiusClientConfig
    from ispd.radius.service import NasTable

    return NasTable([RadiusClientConfig.model_validate({"name": name, "address": address, "secret": "s"})
                     for name, address in clients])


def test_a_source_is_its_most_specific_clients() -> None:
    table = _nas_table([("everyone", "0.0.0.0/0"), ("lab", "198.18.0.0/15"), ("pop", "198.18.4.0/24"),
                        ("bng", "198.18.4.1"), ("six", "2001:db8::/32"), ("bng6", "2001:db8::1")])
    found = {source: getattr(table.find(source), "name", None) for source in (
        "198.18.4.1", "198.18.4.2", "198.19.0.1", "203.0.113.9", "::ffff:198.18.4.1", "2001:db8::1",
        "2001:db8::2", "fe80::1%eth0", "2001:db9::1", "not an address")}
    assert found == {"198.18.4.1": "bng", "198.18.4.2": "pop", "198.19.0.1": "lab", "203.0.113.9": "everyone",
                     "::ffff:198.18.4.1": "bng", "2001:db8::1": "bng6", "2001:db8::2": "six", "fe80::1%eth0": None,
                     "2001:db9::1": None, "not an address": None}
    assert getattr(_nas_table([("all6", "::/0")]).find("fe80::1%eth0"), "name", None) == "all6"


def test_finding_a_source_that_is_no_client_does_not_test_each_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a bug hunt: with 1,000 NASes configured, each datagram from an address that is no
    client (a forged one each, in a flood: the memo never hits) cost ~200 µs of the event loop
    against ~5 µs with 10, for it tested every client's network in turn."""
    table = _nas_table([(f"nas{i}", f"10.{i // 250}.{i % 250}.1") for i in range(2000)]
                       + [("pop", "198.18.4.0/24")])
    tests = 0
    contains = IPv4Network.__contains__

    def counted(network: IPv4Network, address: object) -> bool:
        nonlocal tests
        tests += 1
        return contains(network, address)

    monkeypatch.setattr(IPv4Network, "__contains__", counted)
    assert not any(table.find(f"203.0.{i // 250}.{i % 250}") for i in range(200))
    assert table.find("198.18.4.9") is not None and table.find("10.0.7.1") is not None
    assert tests == 0


def test_proxy_state_without_message_authenticator_is_dropped() -> None:
    authenticator = os.urandom(16)
    packet = access_request([(Attr.USER_NAME, b"alice"),
                             (Attr.USER_PASSWORD, hide_password(b"alice-pw", SECRET, authenticator)),
                             (Attr.PROXY_STATE, b"ps")], authenticator=authenticator, message_authenticator=False)
    world = World()
    assert world.engine.handle(packet, nas(require=Policy.NO), NOW).drop == \
        Drop.PROXY_STATE_WITHOUT_MESSAGE_AUTHENTICATOR
    assert world.engine.handle(packet, nas(require=Policy.NO, proxy=Policy.NO), NOW).code == Code.ACCESS_ACCEPT


def test_wrong_message_authenticator_and_eap_without_one_are_dropped() -> None:
    world = World()
    assert world.engine.handle(pap("alice", "alice-pw"), Nas("lab", b"other", NasKind.GENERIC), NOW).drop == \
        Drop.BAD_MESSAGE_AUTHENTICATOR
    eap = access_request([(Attr.USER_NAME, b"alice"),
                          (Attr.EAP_MESSAGE, encode_eap(EAPPacket(EAPCode.RESPONSE, 1, EAPType.IDENTITY, b"a")))],
                         message_authenticator=False)
    assert world.engine.handle(eap, nas(require=Policy.NO), NOW).drop == Drop.MISSING_MESSAGE_AUTHENTICATOR


def test_status_server() -> None:
    world = World()
    assert world.engine.handle(access_request([], code=Code.STATUS_SERVER), nas(), NOW).code == Code.ACCESS_ACCEPT
    unsigned = access_request([], code=Code.STATUS_SERVER, message_authenticator=False)
    assert world.engine.handle(unsigned, nas(require=Policy.NO), NOW).code is None  # RFC 5997: always needed


def test_no_credentials_and_no_user_name() -> None:
    world = World()
    assert world.engine.handle(access_request([(Attr.USER_NAME, b"alice")]), nas(), NOW).reject == \
        RejectReason.NO_CREDENTIALS
    assert world.engine.handle(access_request([]), nas(), NOW).reject == RejectReason.NO_USER_NAME


# --- accounting ------------------------------------------------------------------------------


def accounting(attributes: Sequence[tuple[int, bytes]], secret: bytes = SECRET) -> Packet:
    return decode(encode_request(Code.ACCOUNTING_REQUEST, 4, encode_attributes(attributes), secret,
                                 message_authenticator=False))


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def test_accounting_record_reads_counters_delay_and_class() -> None:
    world = World()
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    packet = accounting([(Attr.ACCT_STATUS_TYPE, u32(2)), (Attr.USER_NAME, b"someone-else"),
                         (Attr.CLASS, b"ispd:2"), (Attr.ACCT_SESSION_ID, b"abc"),
                         (Attr.NAS_IP_ADDRESS, bytes((198, 18, 0, 1))), (Attr.ACCT_DELAY_TIME, u32(10)),
                         (Attr.ACCT_INPUT_OCTETS, u32(5)), (Attr.ACCT_INPUT_GIGAWORDS, u32(2)),
                         (Attr.ACCT_OUTPUT_OCTETS, u32(7)), (Attr.ACCT_SESSION_TIME, u32(60)),
                         (Attr.ACCT_TERMINATE_CAUSE, u32(1)), (Attr.FRAMED_IP_ADDRESS, bytes((198, 18, 9, 9)))])
    assert engine.check(packet, nas()) is None
    record = engine.record(packet, nas(), "127.0.0.1", NOW)
    assert record is not None
    assert record.status == AccountingStatus.STOP and record.at == NOW - 10
    assert record.subscriber_id == 2  # from Class, whatever the login says
    assert record.nas_address == "198.18.0.1" and record.acct_session_id == "abc"
    assert record.input_octets == 5 + (2 << 32) and record.output_octets == 7
    assert record.terminate_cause == "User-Request" and record.framed_ip == "198.18.9.9"
    assert record.packet == packet.raw


def test_accounting_record_reads_the_ipv6_prefixes_and_address() -> None:
    world = World()
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    address = bytes.fromhex("20010db8ffff00010000000000000a06")
    interim = [(Attr.ACCT_STATUS_TYPE, u32(3)), (Attr.USER_NAME, b"alice"), (Attr.ACCT_SESSION_ID, b"s6"),
               (Attr.FRAMED_IPV6_PREFIX, bytes((0, 64)) + address[:8]),
               (Attr.DELEGATED_IPV6_PREFIX, bytes((0, 56)) + bytes.fromhex("20010db80001ab")),
               (Attr.FRAMED_IPV6_ADDRESS, address)]
    record = engine.record(accounting(interim), nas(), "127.0.0.1", NOW)
    assert record is not None and record.fill_in
    assert (record.framed_ipv6_prefix, record.delegated_ipv6_prefix, record.framed_ipv6_address) == (
        "2001:db8:ffff:1::/64", "2001:db8:1:ab00::/56", "2001:db8:ffff:1::a06")
    # RFC 6911 §3.1 wants 16 octets; none, or the unspecified address, is no address.
    for wrong in (address[:15], bytes(16)):
        odd = engine.record(accounting([*interim[:-1], (Attr.FRAMED_IPV6_ADDRESS, wrong)]), nas(), "127.0.0.1", NOW)
        assert odd is not None and odd.framed_ipv6_address is None
    # Known to the open session already: nothing for the store to fill in on its account.
    world.sessions.put(RadiusSession(6, "127.0.0.1", "s6", "alice", NOW, NOW, subscriber_id=1, interim_interval=300,
                                     framed_ipv6_address="2001:db8:ffff:1::a06"))
    known = engine.record(accounting([interim[i] for i in (0, 1, 2, 5)]), nas(), "127.0.0.1", NOW)
    assert known is not None and known.framed_ipv6_address == "2001:db8:ffff:1::a06" and not known.fill_in
    world.sessions.put(RadiusSession(6, "127.0.0.1", "s6", "alice", NOW, NOW, subscriber_id=1, interim_interval=300))
    late = engine.record(accounting([interim[i] for i in (0, 1, 2, 5)]), nas(), "127.0.0.1", NOW)
    assert late is not None and late.fill_in


def test_prefixes_an_open_session_has_already_ask_for_no_fill_in() -> None:
    """A dual-stack NAS repeats its prefixes in every interim: once the open session has them
    (a text once set is never changed) the store is not asked to fill them in again; a prefix it
    lacks still is."""
    world = World()
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    interim = [(Attr.ACCT_STATUS_TYPE, u32(3)), (Attr.USER_NAME, b"alice"), (Attr.ACCT_SESSION_ID, b"s6"),
               (Attr.FRAMED_IPV6_PREFIX, bytes((0, 64)) + bytes.fromhex("20010db8ffff0001")),
               (Attr.DELEGATED_IPV6_PREFIX, bytes((0, 56)) + bytes.fromhex("20010db80001ab"))]
    both = RadiusSession(6, "127.0.0.1", "s6", "alice", NOW, NOW, subscriber_id=1, interim_interval=300,
                         framed_ipv6_prefix="2001:db8:ffff:1::/64", delegated_ipv6_prefix="2001:db8:1:ab00::/56")
    world.sessions.put(both)
    known = engine.record(accounting(interim), nas(), "127.0.0.1", NOW)
    assert known is not None and known.delegated_ipv6_prefix == "2001:db8:1:ab00::/56" and not known.fill_in
    for lacking in ({"framed_ipv6_prefix": None}, {"delegated_ipv6_prefix": None}):
        world.sessions.put(replace(both, **lacking))  # type: ignore[arg-type]
        late = engine.record(accounting(interim), nas(), "127.0.0.1", NOW)
        assert late is not None and late.fill_in


def test_a_class_naming_no_subscriber_is_not_believed() -> None:
    """ispd:N of a deleted subscriber (or another server's) names nobody: its accounting is not
    attributed to N, which is nobody's now; the login may still name someone."""
    world = World()
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    stop = [(Attr.ACCT_STATUS_TYPE, u32(2)), (Attr.ACCT_SESSION_ID, b"abc"), (Attr.CLASS, b"ispd:77")]
    nobody = engine.record(accounting([*stop, (Attr.USER_NAME, b"gone")]), nas(), "127.0.0.1", NOW)
    assert nobody is not None and nobody.subscriber_id is None
    by_login = engine.record(accounting([*stop, (Attr.USER_NAME, b"bob")]), nas(), "127.0.0.1", NOW)
    assert by_login is not None and by_login.subscriber_id == 2


def test_accounting_checks_and_statuses() -> None:
    world = World()
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    assert engine.check(accounting([(Attr.ACCT_STATUS_TYPE, u32(1))], b"wrong"), nas()) == \
        Drop.BAD_REQUEST_AUTHENTICATOR
    tunnel = engine.record(accounting([(Attr.ACCT_STATUS_TYPE, u32(9))]), nas(), "127.0.0.1", NOW)  # Tunnel-Start
    assert tunnel is not None and tunnel.status == AccountingStatus.OTHER
    start = engine.record(accounting([(Attr.ACCT_STATUS_TYPE, u32(1)), (Attr.USER_NAME, b"alice@pppoe")]),
                          nas(), "198.18.0.9", NOW)
    assert start is not None and start.subscriber_id == 1 and start.nas_address == "198.18.0.9"
    on = engine.record(accounting([(Attr.ACCT_STATUS_TYPE, u32(7))]), nas(), "127.0.0.1", NOW)
    assert on is not None and on.status == AccountingStatus.ACCOUNTING_ON


def test_a_nul_terminated_user_name_is_the_login_without_it() -> None:
    """Some NASes NUL-terminate User-Name (RFC 2865 §5: they should not); FreeRADIUS reads it
    without the NULs and accepts, ispd rejected every login as unknown_user."""
    world = World()
    assert world.engine.handle(pap("alice\x00", "alice-pw"), nas(), NOW).code == Code.ACCESS_ACCEPT
    assert world.engine.handle(pap("al\x00ice", "alice-pw"), nas(), NOW).reject == RejectReason.UNKNOWN_USER
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    start = engine.record(accounting([(Attr.ACCT_STATUS_TYPE, u32(1)), (Attr.USER_NAME, b"alice\x00"),
                                      (Attr.ACCT_SESSION_ID, b"s1")]), nas(), "198.18.0.9", NOW)
    assert start is not None and (start.username, start.subscriber_id) == ("alice", 1)


def test_the_store_is_asked_to_fill_in_only_what_the_open_session_lacks() -> None:
    world = World()
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    interim = [(Attr.ACCT_STATUS_TYPE, u32(3)), (Attr.USER_NAME, b"alice"), (Attr.ACCT_SESSION_ID, b"s9"),
               (Attr.FRAMED_IP_ADDRESS, bytes((198, 18, 9, 9)))]
    unknown = engine.record(accounting(interim), nas(), "127.0.0.1", NOW)
    assert unknown is not None and unknown.fill_in  # no open session known: the store decides
    world.sessions.put(RadiusSession(5, "127.0.0.1", "s9", "alice", NOW, NOW, subscriber_id=1,
                                     framed_ip="198.18.9.9", interim_interval=300))
    known = engine.record(accounting(interim), nas(), "127.0.0.1", NOW)
    assert known is not None and not known.fill_in
    world.sessions.put(RadiusSession(5, "127.0.0.1", "s9", "alice", NOW, NOW, subscriber_id=1, interim_interval=300))
    late_address = engine.record(accounting(interim), nas(), "127.0.0.1", NOW)
    assert late_address is not None and late_address.fill_in


# --- nothing a client sends breaks the engines ------------------------------------------------

ATTRIBUTE = st.tuples(st.sampled_from([1, 2, 3, 4, 5, 8, 18, 24, 25, 26, 31, 32, 33, 40, 41, 42, 44, 46, 49, 52, 55,
                                       60, 61, 79, 87, 95, 97, 123, 200]),
                      st.binary(max_size=40))
VENDOR = st.builds(vendor_specific,
                   st.sampled_from([311, 14988, 3561, 9]), st.integers(0, 255), st.binary(max_size=60))


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from([1, 4, 12, 2, 40, 99]), st.lists(st.one_of(ATTRIBUTE, VENDOR), max_size=12), st.booleans())
def test_random_requests_get_a_decision_never_an_exception(code: int, attributes: list[tuple[int, bytes]],
                                                             signed: bool) -> None:
    world = World()
    try:
        data = encode_request(code, 1, encode_attributes(attributes), SECRET, message_authenticator=signed)
    except ValueError:
        return  # longer than a packet may be
    packet = decode(data)
    decision = world.engine.handle(packet, nas(require=Policy.NO), NOW)
    assert decision.code is not None or decision.drop is not None or decision.pending is not None
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    if engine.check(packet, nas()) is None:
        engine.record(packet, nas(), "127.0.0.1", NOW)


def test_the_duplicate_cache_is_bounded() -> None:
    from ispd.radius.service import DuplicateCache

    clock = [100.0]
    cache = DuplicateCache(30.0, max_entries=100, clock=lambda: clock[0])
    for n in range(250):
        cache.done(("auth", ("127.0.0.1", n), b"h"), b"reply")
    assert len(cache) <= 100
    assert cache.get(("auth", ("127.0.0.1", 249), b"h")) == (True, b"reply")  # the newest stay
    assert cache.get(("auth", ("127.0.0.1", 0), b"h")) == (False, None)
    clock[0] += 31
    cache.sweep()
    assert len(cache) == 0


def test_open_sessions_go_stale_by_the_time_their_nas_has_been_silent_not_by_the_wall_clock() -> None:
    """From a review: a step of the wall clock (NTP correcting a box that booted with a wrong
    clock) made every session look silent for the length of the step: all were closed as stale
    and their pool addresses given to other subscribers while still in use."""
    clock = [5000.0]  # the monotonic clock
    sessions = OpenSessions(clock=lambda: clock[0])
    long_ago = RadiusSession(1, "127.0.0.1", "s1", "alice", NOW - 86_400, NOW - 86_400, subscriber_id=1,
                             interim_interval=300)
    sessions.load([long_ago])  # at start: seen now, whatever its row says
    sessions.put(RadiusSession(2, "127.0.0.1", "s2", "bob", NOW, NOW, subscriber_id=2, interim_interval=300))
    clock[0] += 899
    assert sessions.stale(300, 3) == []
    sessions.seen(("127.0.0.1", "s2"))  # bob's interim
    clock[0] += 2
    assert [s.id for s in sessions.stale(300, 3)] == [1]


def test_a_session_told_to_report_more_often_than_a_nas_may_is_not_stale_between_its_interims() -> None:
    """Seen with pppd's radius plugin behind a plan whose attributes said Acct-Interim-Interval =
    20: pppd reports every 60 s (RFC 2869 §5.16's minimum, to which it raises a smaller value), and
    the session was closed as stale after 2 x 20 s, its pool address given to the next login while
    the subscriber still used it. Judged by 60 s, no sooner."""
    clock = [5000.0]
    sessions = OpenSessions(clock=lambda: clock[0])
    sessions.put(RadiusSession(1, "127.0.0.1", "s1", "alice", NOW, NOW, subscriber_id=1, interim_interval=20))
    clock[0] += 59
    assert sessions.stale(300, 2) == []
    sessions.seen(("127.0.0.1", "s1"))  # pppd's interim, a minute on
    clock[0] += 119
    assert sessions.stale(300, 2) == []
    clock[0] += 2
    assert [s.id for s in sessions.stale(300, 2)] == [1]


def test_a_nas_ip_address_outside_the_client_is_not_believed() -> None:
    from ipaddress import ip_network

    world = World()
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    client = Nas("lab", SECRET, network=ip_network("127.0.0.0/24"))
    inside = accounting([(Attr.ACCT_STATUS_TYPE, u32(1)), (Attr.ACCT_SESSION_ID, b"x"),
                         (Attr.NAS_IP_ADDRESS, bytes((127, 0, 0, 9)))])
    outside = accounting([(Attr.ACCT_STATUS_TYPE, u32(7)), (Attr.NAS_IP_ADDRESS, bytes((198, 18, 0, 1)))])
    assert engine.record(inside, client, "127.0.0.1", NOW).nas_address == "127.0.0.9"  # type: ignore[union-attr]
    # Another NAS's address: an Accounting-On from this client must not close that NAS's sessions.
    kept_apart = engine.record(outside, client, "127.0.0.1", NOW)
    assert kept_apart is not None and kept_apart.nas_address == "127.0.0.1"
    # ... but it is what the NAS calls itself, and a Disconnect must say so (accel-ppp NAKs
    # another): kept with the session. A believed one is the session's address already.
    assert kept_apart.nas_ip_address == "198.18.0.1"
    believed = engine.record(inside, client, "127.0.0.1", NOW)
    assert believed is not None and believed.nas_client == "lab" and believed.nas_ip_address is None
    # The same client with a second network (or a narrower one after a reload) judges for itself.
    narrow = Nas("lab", SECRET, network=ip_network("127.0.0.0/30"))
    assert engine.record(inside, narrow, "127.0.0.1", NOW).nas_address == "127.0.0.1"  # type: ignore[union-attr]


def test_accounting_without_a_status_type_or_with_absurd_counters() -> None:
    world = World()
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    assert engine.record(accounting([(Attr.ACCT_SESSION_ID, b"x")]), nas(), "127.0.0.1", NOW) is None
    huge = engine.record(accounting([(Attr.ACCT_STATUS_TYPE, u32(3)), (Attr.ACCT_SESSION_ID, b"x"),
                                     (Attr.ACCT_INPUT_OCTETS, u32(1)), (Attr.ACCT_INPUT_GIGAWORDS, u32(0x80000000))]),
                         nas(), "127.0.0.1", NOW)
    assert huge is not None and huge.input_octets == (1 << 63) - 1  # what the store can hold
    tunnel = engine.record(accounting([(Attr.ACCT_STATUS_TYPE, u32(9))]), nas(), "127.0.0.1", NOW)
    assert tunnel is not None and tunnel.status == AccountingStatus.OTHER
    # RFC 2865's "user chooses" and "NAS chooses" values, and 0.0.0.0: no address to record for `who`.
    for value in (b"\xff\xff\xff\xff", b"\xff\xff\xff\xfe", b"\x00\x00\x00\x00"):
        unset = engine.record(accounting([(Attr.ACCT_STATUS_TYPE, u32(1)), (Attr.ACCT_SESSION_ID, b"y"),
                                          (Attr.FRAMED_IP_ADDRESS, value)]), nas(), "127.0.0.1", NOW)
        assert unset is not None and unset.framed_ip is None


def test_a_password_changed_or_a_suspension_during_the_slow_check_counts() -> None:
    world = World()
    packet = pap("carol", "slow-pass")
    decision = world.engine.handle(packet, nas(), NOW)
    assert decision.pending is not None
    carol = world.directory.subjects[3]
    world.directory.replace(replace(carol.subscriber, status=SubscriberStatus.SUSPENDED), carol.credentials, [], PLAN)
    assert world.engine.finish_password_check(packet, nas(), decision.pending, True, NOW).reject == \
        RejectReason.SUSPENDED
    world.directory.replace(carol.subscriber, replace(carol.credentials, updated_at=2), [], PLAN)
    assert world.engine.finish_password_check(packet, nas(), decision.pending, True, NOW).reject == \
        RejectReason.WRONG_PASSWORD


@pytest.fixture(scope="module")
def eap_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return tunnel_world(tmp_path_factory.mktemp("eap"), [EAPMethod.MD5, EAPMethod.PEAP, EAPMethod.TTLS])


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from([1, 3, 4, 13, 21, 25, 26, 33, 254]), st.binary(max_size=120),
                                st.integers(0, 255), st.booleans()), min_size=1, max_size=6))
def test_random_eap_conversations_end_in_a_decision(eap_world: World, steps: list[tuple[int, bytes, int, bool]]) -> None:
    """Any sequence of EAP responses of any type, following the State of the last answer or not,
    gets a challenge or a reject (with EAP-Failure), never an exception."""
    state: bytes | None = None
    for kind, data, identifier, follow in steps:
        packet = eap_request("alice", EAPPacket(EAPCode.RESPONSE, identifier, kind, data),
                             state if follow else os.urandom(16))
        decision = eap_world.engine.handle(packet, nas(), NOW)
        assert decision.code in (Code.ACCESS_CHALLENGE, Code.ACCESS_REJECT, Code.ACCESS_ACCEPT), decision
        if decision.code == Code.ACCESS_REJECT:
            assert eap_reply(decision).code == EAPCode.FAILURE
        state = first(decision.attributes, Attr.STATE)


def test_a_plans_or_subscribers_interim_interval_is_the_one_sent_and_the_sessions() -> None:
    """A plan's Acct-Interim-Interval replaces ispd's (one in an Access-Accept, RFC 2869 §5.16:
    from an operator, two went out, 300 and 3600), and so does a subscriber's own; a session
    new to ispd keeps the interval its subscriber was given, by which it is found stale (with
    the default's, a NAS reporting hourly had every session closed as stale, its address freed
    and Simultaneous-Use lifted, after three times five minutes)."""
    plan = (reply_attribute(DICTIONARY, "Acct-Interim-Interval = 3600"),)
    world = World(ReplySettings(interim_interval=300, plans={"home": PlanReply(attributes=plan)}))
    world.directory.replace(replace(subscriber(2, "bob"), radius_reply=("Acct-Interim-Interval = 900",)),
                            StoredCredentials(nt_hash=nt_hash("bob-pw"), updated_at=1), [], PLAN)
    for user, interval in (("alice", 3600), ("bob", 900)):
        decision = world.engine.handle(pap(user, f"{user}-pw"), nas(), NOW)
        assert decision.code == Code.ACCESS_ACCEPT, user
        sent = [v for c, v in reply_attributes(decision.attributes) if c == Attr.ACCT_INTERIM_INTERVAL]
        assert sent == [u32(interval)], user
    engine = AccountingEngine(world.directory, world.sessions, DICTIONARY, 300)
    engine.interval_of = world.engine.interim_interval
    for sid, interval in ((1, 3600), (2, 900), (6, 300)):  # (frank has no plan)
        packet = accounting([(Attr.ACCT_STATUS_TYPE, u32(1)), (Attr.CLASS, f"ispd:{sid}".encode()),
                             (Attr.ACCT_SESSION_ID, f"s{sid}".encode())])
        record = engine.record(packet, nas(), "127.0.0.1", NOW)
        assert record is not None and record.interim_interval == interval, sid


def test_a_coa_carries_no_configured_framed_ip_address() -> None:
    """From a review: a plan's "Framed-IP-Address = 255.255.255.254" gave way to the reserved
    address in the Access-Accept, but the plan-change CoA still carried it beside the session's
    own Framed-IP-Address (RFC 5176 §3: a session identification attribute), so the NAS was
    told of two addresses for the session (and NAKs it 503, which closes the session)."""
    attributes = (reply_attribute(DICTIONARY, "Framed-IP-Address = 255.255.255.254"),
                  reply_attribute(DICTIONARY, "Filter-Id = home"))
    world = World(ReplySettings(plans={"home": PlanReply(attributes=attributes)}))
    reserved = world.engine.handle(pap("alice@pppoe", "alice-pw"), nas(), NOW)
    assert [v for c, v in reply_attributes(reserved.attributes) if c == Attr.FRAMED_IP_ADDRESS] == [
        bytes((198, 18, 7, 7))]
    subject = world.directory.by_id(1)
    assert subject is not None
    coa = world.engine.change_of_authorization(subject, nas(), False)
    assert first(coa, Attr.FILTER_ID) == b"home"
    assert first(coa, Attr.FRAMED_IP_ADDRESS) is None


def test_a_session_s_ipv6_prefix_is_checked_against_the_reservations_without_a_walk(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: radius.prefix.conflict's check of a session's networks asked the reserved
    space about a length no pool and no reservation has (a NAS's /64 Framed-IPv6-Prefix, a
    Framed-IPv6-Address when none is reserved), which it answers by a walk of every
    reservation: 12 ms of the event loop per Start with 20,000 reserved /56s, each Start of a
    BNG's reboot storm. Each length is indexed once, as a prefix pool's is."""
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from ispd.radius.service import RadiusService

    world = World()
    reservations = [Reservation(100 + i, 3, ReservationKind.DUID, f"00:03:00:01:02:00:5e:00:{i >> 8:02x}:{i & 255:02x}",
                                prefix6=f"2001:db8:{0x1000 + (i >> 8):x}:{(i & 255) << 8:x}::/56") for i in range(500)]
    world.directory.load([subscriber(2, "bob"), subscriber(3, "carol")], [PLAN], {}, reservations)
    service = SimpleNamespace(directory=world.directory)
    walked = 0

    class Walked(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            nonlocal walked
            walked += 1
            return super().items()

    def session(prefix: str, address: str) -> RadiusSession:
        return RadiusSession(id=1, nas_address="198.18.0.1", acct_session_id="s1", username="bob",
                             started_at=NOW, updated_at=NOW, subscriber_id=2, framed_ipv6_prefix=prefix,
                             framed_ipv6_address=address)

    RadiusService._check_ipv6(service, session("2001:db9:1:2::/64", "2001:db9::1"))  # type: ignore[arg-type]
    space = world.directory.reserved_space
    monkeypatch.setattr(space, "networks", Walked(space.networks))
    with capture_logs() as logs:
        for i in range(10):
            RadiusService._check_ipv6(service, session(f"2001:db9:1:{i}::/64", f"2001:db9::{i}"))  # type: ignore[arg-type]
        RadiusService._check_ipv6(service, session("2001:db8:1000:100::/64", "2001:db8:1000:200::1"))  # type: ignore[arg-type]
    assert walked == 0
    assert [e["prefix"] for e in logs if e["event"] == "radius.prefix.conflict"] == [
        "2001:db8:1000:100::/64", "2001:db8:1000:200::1/128"]  # carol's still found


@pytest.mark.parametrize("start_only", [
    "Framed-IP-Address = 255.255.255.254",  # "the NAS picks": a CoA moves no address
    'Delegated-IPv6-Prefix-Pool = "home-v6"',  # a pool, used at the session's start, as Framed-Pool
    'Stateful-IPv6-Address-Pool = "home-v6"',
    'Framed-IPv6-Pool = "home-v6"',  # (RFC 3162 §2.6: Framed-Pool's IPv6 twin, as used at the start)
    # what sets up the link at the start (a FreeRADIUS users file's usual first lines)
    "Service-Type = Framed-User",
    "Framed-Protocol = PPP",
    "Framed-MTU = 1492",
    "Framed-IP-Netmask = 255.255.255.255",
    "Framed-Compression = Van-Jacobson-TCP-IP",  # (the users file's PPP default, with Framed-Protocol)
    "Framed-Interface-Id = 0:0:0:1",  # (IPv6CP's, negotiated at the start)
])
def test_a_plan_change_leaves_behind_no_address_or_pool_the_session_keeps_anyway(start_only: str) -> None:
    """From a review: a plan change whose new profile lacks an attribute of the old one's
    disconnects (a CoA cannot remove it), but what a CoA never moves (a session's address, which
    change_of_authorization leaves out) or the pools a session was given from at its start (as
    Framed-Pool, which does not count) are no reason to end it: the same rates, under a plan with
    "Framed-IP-Address = 255.255.255.254" and one without, cut the subscriber off for nothing."""
    world = World(ReplySettings(interim_interval=300, plans={
        "home": PlanReply(attributes=(reply_attribute(DICTIONARY, start_only),))}))
    before = world.directory.by_id(1)
    assert before is not None
    after = replace(before, plan=replace(PLAN, id=2, name="home-2"), reply_cache={})
    assert world.engine.left_by_the_change(before, after, nas()) == []
    # (what a CoA does take away still counts)
    listed = World(ReplySettings(interim_interval=300, plans={
        "home": PlanReply(attributes=(reply_attribute(DICTIONARY, "Mikrotik-Address-List = home"),))}))
    old = listed.directory.by_id(1)
    assert old is not None
    assert listed.engine.left_by_the_change(old, replace(old, plan=replace(PLAN, id=2, name="home-2"), reply_cache={}),
                                            nas()) == ["Mikrotik-Address-List"]


def test_a_logins_only_station_redialling_on_a_new_port_keeps_its_reserved_ipv6() -> None:
    """From a review: the login's only home router redialling on another NAS-Port-Id (its PPPoE
    session moved, or the NAS put it on another port) while its old session is still open (its
    Stop lost, not yet closed as stale) was accepted without its reserved prefix and address, as
    if the same Calling-Station-Id were a second home router; and a NAS that sends
    Calling-Station-Id in Access-Requests but not in accounting had its login's only station
    denied them at every redial."""
    world = World()
    login = Reservation(3, 2, ReservationKind.USERNAME, "bob", address6="2001:db8:1::77",
                        prefix6="2001:db8:1000::/56")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [login], PLAN)
    prefix = bytes.fromhex("0038" "20010db81000" "00")
    old = RadiusSession(1, "127.0.0.1", "s1", "bob", NOW, NOW, subscriber_id=2, nas_client="lab",
                        nas_port_id="ge-0/0/1:100", calling_station_id="aa:bb:cc:00:00:01",
                        delegated_ipv6_prefix="2001:db8:1000::/56")
    world.sessions.put(old)
    moved = pap("bob", "bob-pw", (Attr.NAS_PORT_ID, b"ge-0/0/1:101"), (Attr.CALLING_STATION_ID, b"aa:bb:cc:00:00:01"))
    decision = world.engine.handle(moved, nas(), NOW)
    assert decision.withheld is None and first(decision.attributes, Attr.DELEGATED_IPV6_PREFIX) == prefix
    # accounting without Calling-Station-Id: the session names no station, so none other
    world.sessions.put(replace(old, calling_station_id=None))
    decision = world.engine.handle(pap("bob", "bob-pw", (Attr.CALLING_STATION_ID, b"aa:bb:cc:00:00:01")), nas(), NOW)
    assert decision.withheld is None and first(decision.attributes, Attr.DELEGATED_IPV6_PREFIX) == prefix


def test_a_session_prefix_with_bits_past_its_length_does_not_fail_the_login() -> None:
    """From a review: a NAS whose accounting sends Delegated-IPv6-Prefix with all 16 octets and
    bits past its length (RFC 8044 §3.10 says they must be zero; some send the CPE's address)
    had the session stored with "2001:db8:1000::1/56", and every later Access-Request of the
    login from another station raised ValueError (a strict IPv6Network) instead of an answer."""
    world = World()
    login = Reservation(3, 2, ReservationKind.USERNAME, "bob", prefix6="2001:db8:1000::/56")
    world.directory.replace(subscriber(2, "bob"), StoredCredentials(cleartext="bob-pw", updated_at=1), [login], PLAN)
    world.sessions.put(RadiusSession(1, "127.0.0.1", "s1", "bob", NOW, NOW, subscriber_id=2, nas_client="lab",
                                     nas_port_id="ge-0/0/1:100", calling_station_id="aa:bb:cc:00:00:01",
                                     delegated_ipv6_prefix="2001:db8:1000::1/56"))
    decision = world.engine.handle(pap("bob", "bob-pw", (Attr.CALLING_STATION_ID, b"aa:bb:cc:00:00:02")), nas(), NOW)
    assert decision.code == Code.ACCESS_ACCEPT
    assert decision.withheld is not None and decision.withheld.kinds == ("prefix",)
