"""The DHCP engine alone: messages in, decisions out, with a clock we move by hand."""

from __future__ import annotations

import struct
import time
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispd.config import Config
from ispd.dhcp.codec import BOOTREQUEST, FLAG_BROADCAST, DHCPPacket, encode
from ispd.dhcp.config import DHCPConfig
from ispd.dhcp.engine import Destination, DHCPEngine, Ignored, Outcome, Received, clean_hostname
from ispd.dhcp.options import DHCPMessageType, Option, decode_ips, decode_u32
from ispd.dhcp.pool import Binding, BindingState, LeaseTable
from ispd.dhcp.service import _publishes_names, ipv4_udp_datagram
from ispd.events import (
    EventBus,
    LeaseEnded,
    LeaseGranted,
    ReservationAdded,
    ReservationChanged,
    ReservationDeleted,
    follow_subscribers,
)
from ispd.store.models import Lease, LeaseState, Reservation, ReservationKind, SubscriberStatus

SERVER = IPv4Address("198.18.0.1")
MAC_A = bytes.fromhex("02005e100001")
MAC_B = bytes.fromhex("02005e100002")
MAC_C = bytes.fromhex("02005e100003")
T0 = 1_800_000_000.0


def config(**overrides: Any) -> DHCPConfig:
    base: dict[str, Any] = {
        "enabled": True,
        "interfaces": ["eth1"],
        "decline_quarantine_seconds": 600,
        "subnet": [
            {
                "network": "198.18.0.0/24", "interface": "eth1", "routers": ["198.18.0.1"],
                "dns_servers": ["198.18.0.1", "198.18.0.2"], "domain_name": "lab.example", "mtu": 1500,
                "pool": [
                    {"name": "lan", "range": "198.18.0.100 - 198.18.0.102"},
                    {"name": "garden", "range": "198.18.0.200 - 198.18.0.201", "walled_garden": True,
                     "dns_servers": ["198.18.0.250"]},
                ],
            },
            {
                "network": "198.18.1.0/24", "routers": ["198.18.1.1"], "lease_seconds": 7200,
                "pool": [{"name": "relayed", "range": "198.18.1.100 - 198.18.1.150"}],
            },
            {
                "network": "198.19.0.0/16", "relay_addresses": ["198.18.9.9"],
                "pool": [{"name": "bng", "range": "198.19.0.10 - 198.19.0.20"}],
            },
        ],
    }
    base.update(overrides)
    return DHCPConfig.model_validate(base)


def message(kind: DHCPMessageType, mac: bytes = MAC_A, *, xid: int = 0x1234, ciaddr: str = "0.0.0.0",
            giaddr: str = "0.0.0.0", flags: int = 0, requested: str | None = None, server_id: str | None = None,
            extra: tuple[tuple[int, bytes], ...] = ()) -> DHCPPacket:
    options: list[tuple[int, bytes]] = [(Option.MESSAGE_TYPE, bytes((kind,)))]
    if requested:
        options.append((Option.REQUESTED_ADDRESS, IPv4Address(requested).packed))
    if server_id:
        options.append((Option.SERVER_ID, IPv4Address(server_id).packed))
    options += extra
    return DHCPPacket(op=BOOTREQUEST, xid=xid, chaddr=mac.ljust(16, b"\0"), flags=flags,
                      ciaddr=IPv4Address(ciaddr), giaddr=IPv4Address(giaddr), options=tuple(options))


class Lab:
    def __init__(self, cfg: DHCPConfig | None = None) -> None:
        self.engine = DHCPEngine(cfg or config())
        self.now = T0

    def send(self, packet: DHCPPacket, interface: str = "eth1", local: IPv4Address | None = SERVER,
             destination: IPv4Address | None = None, source: IPv4Address | None = None) -> Outcome:
        return self.engine.handle(Received(packet, interface, local, destination, source), self.now)

    def dora(self, mac: bytes = MAC_A, **kw: Any) -> IPv4Address:
        offer = self.send(message(DHCPMessageType.DISCOVER, mac, **kw))
        assert offer.reply is not None, offer.ignored
        address = offer.reply.packet.yiaddr
        ack = self.send(message(DHCPMessageType.REQUEST, mac, requested=str(address), server_id=str(SERVER), **kw))
        assert ack.reply is not None and ack.reply.packet.message_type is DHCPMessageType.ACK
        return address


def test_discover_request_grants_a_lease_with_the_configured_options() -> None:
    lab = Lab()
    offer = lab.send(message(DHCPMessageType.DISCOVER,
                             extra=((Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 6, 15, 26, 42))),)))
    assert offer.reply is not None and not offer.writes
    packet = offer.reply.packet
    assert packet.message_type is DHCPMessageType.OFFER
    assert packet.yiaddr == IPv4Address("198.18.0.100")
    assert decode_u32(packet.option(Option.LEASE_TIME) or b"") == 3600
    assert decode_u32(packet.option(Option.RENEWAL_TIME) or b"") == 1800
    assert decode_u32(packet.option(Option.REBINDING_TIME) or b"") == 3150
    assert decode_ips(packet.option(Option.DNS_SERVERS) or b"") == (SERVER, IPv4Address("198.18.0.2"))
    assert packet.option(Option.DOMAIN_NAME) == b"lab.example"
    assert packet.option(Option.SUBNET_MASK) == bytes((255, 255, 255, 0))
    assert packet.option(Option.BROADCAST_ADDRESS) is None  # not asked for
    assert packet.option(Option.SERVER_ID) == SERVER.packed
    # No address yet, no broadcast bit: unicast at the link layer (RFC 2131 §4.1).
    assert offer.reply.destination is Destination.LINK

    ack = lab.send(message(DHCPMessageType.REQUEST, requested="198.18.0.100", server_id="198.18.0.1"))
    assert ack.reply is not None and ack.reply.packet.message_type is DHCPMessageType.ACK
    [(lease, event)] = ack.writes
    assert (lease.address, lease.state, event) == ("198.18.0.100", LeaseState.BOUND, "granted")
    assert lease.expires_at == T0 + 3600 and lease.hw_address == "02:00:5e:10:00:01" and lease.pool == "lan"
    [granted] = ack.events
    assert isinstance(granted, LeaseGranted) and granted.address == "198.18.0.100" and not granted.renewal


def test_options_the_client_did_not_ask_for_are_all_sent_when_it_asked_for_none() -> None:
    reply = Lab().send(message(DHCPMessageType.DISCOVER)).reply
    assert reply is not None
    assert reply.packet.option(Option.INTERFACE_MTU) == struct.pack("!H", 1500)
    assert reply.packet.option(Option.BROADCAST_ADDRESS) == IPv4Address("198.18.0.255").packed


def test_renewing_extends_the_same_address_and_replies_by_unicast() -> None:
    lab = Lab()
    address = lab.dora()
    lab.now += 1800
    renew = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(address)))
    assert renew.reply is not None and renew.reply.packet.message_type is DHCPMessageType.ACK
    assert renew.reply.packet.yiaddr == address and renew.reply.packet.ciaddr == address
    assert renew.reply.destination is Destination.UNICAST and renew.reply.address == address
    [(lease, event)] = renew.writes
    assert event == "renewed" and lease.starts_at == T0 and lease.expires_at == lab.now + 3600


def test_a_returning_client_gets_its_previous_address() -> None:
    lab = Lab()
    first = lab.dora(MAC_A)
    lab.send(message(DHCPMessageType.RELEASE, MAC_A, ciaddr=str(first), server_id=str(SERVER)))
    lab.dora(MAC_B)  # takes a never-used address, not A's
    assert lab.dora(MAC_A) == first


def test_released_address_becomes_free_for_others_when_the_pool_runs_out() -> None:
    lab = Lab()
    addresses = [lab.dora(mac) for mac in (MAC_A, MAC_B, MAC_C)]
    assert len(set(addresses)) == 3
    fourth = bytes.fromhex("02005e100004")
    assert lab.send(message(DHCPMessageType.DISCOVER, fourth)).ignored is Ignored.NO_ADDRESS
    released = lab.send(message(DHCPMessageType.RELEASE, MAC_B, ciaddr=str(addresses[1])))
    [(lease, event)] = released.writes
    assert event == "released" and lease.state is LeaseState.RELEASED
    assert isinstance(released.events[0], LeaseEnded)
    assert lab.dora(fourth) == addresses[1]


def test_an_offer_is_held_then_lapses() -> None:
    lab = Lab(config(subnet=[{"network": "198.18.0.0/24", "interface": "eth1",
                              "pool": [{"name": "one", "range": "198.18.0.100 - 198.18.0.100"}]}]))
    assert lab.send(message(DHCPMessageType.DISCOVER, MAC_A)).reply is not None
    assert lab.send(message(DHCPMessageType.DISCOVER, MAC_B)).ignored is Ignored.NO_ADDRESS
    lab.now += 31
    offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_B))
    assert offer.reply is not None and offer.reply.packet.yiaddr == IPv4Address("198.18.0.100")


def test_selecting_another_server_withdraws_our_offer_silently() -> None:
    lab = Lab(config(subnet=[{"network": "198.18.0.0/24", "interface": "eth1",
                              "pool": [{"name": "one", "range": "198.18.0.100 - 198.18.0.100"}]}]))
    lab.send(message(DHCPMessageType.DISCOVER, MAC_A))
    other = lab.send(message(DHCPMessageType.REQUEST, MAC_A, requested="198.18.0.100", server_id="198.18.0.77"))
    assert other.reply is None and other.ignored is Ignored.OTHER_SERVER
    assert lab.send(message(DHCPMessageType.DISCOVER, MAC_B)).reply is not None


def test_nak_for_an_address_on_another_subnet_or_held_by_another_client() -> None:
    lab = Lab()
    taken = lab.dora(MAC_A)
    wrong_net = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.1.100"))  # INIT-REBOOT
    assert wrong_net.reply is not None and wrong_net.reply.packet.message_type is DHCPMessageType.NAK
    assert wrong_net.reply.destination is Destination.BROADCAST and not wrong_net.writes
    someone_elses = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested=str(taken)))
    assert someone_elses.reply is not None and someone_elses.reply.packet.message_type is DHCPMessageType.NAK
    outside_pools = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.50"))
    assert outside_pools.reply is not None and outside_pools.reply.packet.message_type is DHCPMessageType.NAK


def test_init_reboot_with_a_free_address_is_confirmed() -> None:
    """Authoritative: a client whose lease we lost keeps its address if nobody else has it."""
    ack = Lab().send(message(DHCPMessageType.REQUEST, requested="198.18.0.101"))
    assert ack.reply is not None and ack.reply.packet.message_type is DHCPMessageType.ACK
    assert ack.writes[0][0].address == "198.18.0.101"


def test_decline_quarantines_the_address_and_the_client_gets_another() -> None:
    lab = Lab()
    address = lab.dora(MAC_A)
    declined = lab.send(message(DHCPMessageType.DECLINE, MAC_A, requested=str(address), server_id=str(SERVER)))
    assert declined.declined and declined.reply is None
    [(lease, event)] = declined.writes
    assert event == "declined" and lease.state is LeaseState.DECLINED and lease.expires_at == T0 + 600
    # Its end says until when it is kept out of use (RADIUS, sharing the pool, must not take it).
    [ended] = declined.events
    assert (ended.reason, ended.held_until) == ("declined", T0 + 600)
    again = lab.dora(MAC_A)
    assert again != address
    assert lab.engine.pool_usage(lab.now)[0] == ("lan", 3, 1, 1)
    # The quarantine ends; the address is offered again once the fresh ones are gone.
    lab.now += 601
    assert address in {lab.dora(MAC_B), lab.dora(MAC_C)}


def test_decline_or_release_of_someone_elses_lease_is_ignored() -> None:
    lab = Lab()
    address = lab.dora(MAC_A)
    assert lab.send(message(DHCPMessageType.DECLINE, MAC_B, requested=str(address))).ignored is Ignored.UNKNOWN_LEASE
    assert lab.send(message(DHCPMessageType.RELEASE, MAC_B, ciaddr=str(address))).ignored is Ignored.UNKNOWN_LEASE


def test_inform_gets_options_but_no_lease() -> None:
    reply = Lab().send(message(DHCPMessageType.INFORM, ciaddr="198.18.0.50")).reply
    assert reply is not None and reply.packet.message_type is DHCPMessageType.ACK
    assert reply.packet.yiaddr == IPv4Address(0) and reply.packet.option(Option.LEASE_TIME) is None
    assert reply.destination is Destination.UNICAST and reply.address == IPv4Address("198.18.0.50")


def test_a_relayed_inform_is_answered_at_its_ciaddr_not_through_the_relay() -> None:
    """RFC 2131 §4.3.5: the ACK to an INFORM goes to ciaddr. Sent to the relay it carried yiaddr
    0, so the relay forwarded it nowhere and the client never heard back."""
    outcome = Lab().send(message(DHCPMessageType.INFORM, ciaddr="198.18.1.150", giaddr="198.18.1.1",
                                 extra=((Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 6))),)))
    reply = outcome.reply
    assert reply is not None and reply.packet.message_type is DHCPMessageType.ACK and not outcome.writes
    assert reply.destination is Destination.UNICAST and reply.address == IPv4Address("198.18.1.150")
    # The options are the relay's subnet's, as for any relayed message.
    assert decode_ips(reply.packet.option(Option.ROUTERS) or b"") == (IPv4Address("198.18.1.1"),)


@pytest.mark.parametrize("giaddr", ["0.0.0.0", "198.18.1.1"])
def test_an_inform_from_an_address_on_none_of_our_subnets_is_not_answered(giaddr: str) -> None:
    """Its ACK goes to ciaddr: a fuzzer's INFORMs, on the link or as from a relay, had ispd send
    ACKs to whatever ciaddr they named (8.8.8.8 among them), a reflection in the server's name."""
    outcome = Lab().send(message(DHCPMessageType.INFORM, ciaddr="8.8.8.8", giaddr=giaddr))
    assert outcome.reply is None and outcome.ignored is Ignored.NO_SUBNET


def test_a_broadcast_rebinding_request_cannot_claim_an_address_of_another_subnet() -> None:
    """giaddr 0 and a broadcast: the client is on the receiving link (RFC 2131 §4.3.2), whatever
    subnet its ciaddr names. Taking the subnet from ciaddr let any client on a direct link
    lease a free address of a subnet served only through a relay; it is NAKed instead, as an
    INIT-REBOOT on the wrong network is. A unicast renewal still finds its subnet by ciaddr (a
    relayed client unicasts past its relay)."""
    lab = Lab()
    rebind = message(DHCPMessageType.REQUEST, ciaddr="198.18.1.105", flags=FLAG_BROADCAST)
    for broadcast in (IPv4Address("255.255.255.255"), IPv4Address("198.18.0.255")):
        nak = lab.send(rebind, destination=broadcast)
        assert nak.reply is not None and nak.reply.packet.message_type is DHCPMessageType.NAK, broadcast
        assert nak.reply.destination is Destination.BROADCAST and not nak.writes
    renew = lab.send(message(DHCPMessageType.REQUEST, ciaddr="198.18.1.105"), destination=SERVER)
    assert renew.reply is not None and renew.reply.packet.message_type is DHCPMessageType.ACK
    assert renew.writes[0][0].pool == "relayed"
    # A client of the link itself rebinds as before.
    address = lab.dora(MAC_B)
    rebound = lab.send(message(DHCPMessageType.REQUEST, MAC_B, ciaddr=str(address)),
                       destination=IPv4Address("255.255.255.255"))
    assert rebound.reply is not None and rebound.reply.packet.message_type is DHCPMessageType.ACK
    assert rebound.writes[0][1] == "renewed"


def test_the_subnet_selection_option_is_echoed() -> None:
    """RFC 3011 §3: a server that supports option 118 returns an identical copy, asked for or
    not, and a client that sent one discards an OFFER or ACK without it."""
    lab = Lab()
    selection = (Option.SUBNET_SELECTION, IPv4Address("198.18.1.0").packed)
    relay_info = (Option.RELAY_AGENT_INFO, bytes((1, 3)) + b"p/1")
    offer = lab.send(message(DHCPMessageType.DISCOVER, giaddr="198.18.9.9", extra=(selection, relay_info))).reply
    assert offer is not None and offer.packet.yiaddr in IPv4Network("198.18.1.0/24")
    assert offer.packet.options[-2:] == (selection, relay_info)  # option 82 stays last
    ack = lab.send(message(DHCPMessageType.REQUEST, giaddr="198.18.9.9", requested=str(offer.packet.yiaddr),
                           server_id=str(SERVER), extra=(selection,))).reply
    assert ack is not None and ack.packet.message_type is DHCPMessageType.ACK
    assert ack.packet.option(Option.SUBNET_SELECTION) == selection[1]
    # One we could not read (not 4 bytes) was not used: not echoed.
    odd = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, extra=((Option.SUBNET_SELECTION, b"\xc6\x12"),))).reply
    assert odd is not None and odd.packet.option(Option.SUBNET_SELECTION) is None


def test_a_walled_garden_pool_keeps_its_short_lease_when_the_subnet_sets_a_long_one() -> None:
    """The subnet's lease_seconds is for its normal pools: in the garden it kept a resumed
    subscriber out of service for a day. A garden pool's own lease_seconds still applies."""
    def served(garden: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
        cfg = config(lease_seconds=3600, walled_garden_lease_seconds=300, subnet=[{
            "network": "198.18.0.0/24", "interface": "eth1", "lease_seconds": 86400,
            "renew_seconds": 43200, "rebind_seconds": 75600,
            "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.102"},
                     {"name": "garden", "range": "198.18.0.200 - 198.18.0.201", "walled_garden": True, **garden}],
        }])
        [subnet] = DHCPEngine(cfg).subnets
        return {p.name: (p.lease_seconds, p.renew_seconds, p.rebind_seconds) for p in subnet.pools}

    assert served({}) == {"lan": (86400, 43200, 75600), "garden": (300, 150, 262)}
    assert served({"lease_seconds": 900})["garden"] == (900, 450, 787)


def test_relayed_messages_choose_the_subnet_by_giaddr_and_echo_option_82() -> None:
    lab = Lab()
    relay_info = bytes((1, 8)) + b"eth0/1/7" + bytes((2, 4)) + b"\x00\x11\x22\x33"
    offer = lab.send(message(DHCPMessageType.DISCOVER, giaddr="198.18.1.1",
                             extra=((Option.RELAY_AGENT_INFO, relay_info),)))
    assert offer.reply is not None
    assert offer.reply.destination is Destination.RELAY and offer.reply.address == IPv4Address("198.18.1.1")
    assert offer.reply.packet.yiaddr in {IPv4Address(f"198.18.1.{n}") for n in range(100, 151)}
    assert offer.reply.packet.options[-1] == (Option.RELAY_AGENT_INFO, relay_info)
    ack = lab.send(message(DHCPMessageType.REQUEST, giaddr="198.18.1.1", requested=str(offer.reply.packet.yiaddr),
                           server_id=str(SERVER), extra=((Option.RELAY_AGENT_INFO, relay_info),)))
    [(lease, _)] = ack.writes
    assert lease.circuit_id == "eth0/1/7" and lease.remote_id == "0x00112233" and lease.pool == "relayed"
    assert lease.expires_at == T0 + 7200
    # A NAK through a relay asks the relay to broadcast it.
    nak = lab.send(message(DHCPMessageType.REQUEST, MAC_B, giaddr="198.18.1.1", requested="198.18.0.100"))
    assert nak.reply is not None and nak.reply.packet.flags & FLAG_BROADCAST
    assert nak.reply.destination is Destination.RELAY


def test_a_relay_s_server_id_override_names_the_server_in_its_replies() -> None:
    """RFC 5107: the override (sub-option 11) is option 54 in the relayed replies, and a REQUEST
    that names it is ours. From a packet no relay forwarded it means nothing."""
    lab = Lab()
    relay_info = bytes((1, 3)) + b"p/1" + bytes((11, 4)) + IPv4Address("198.18.1.1").packed
    relayed = (Option.RELAY_AGENT_INFO, relay_info)
    offer = lab.send(message(DHCPMessageType.DISCOVER, giaddr="198.18.1.1", extra=(relayed,))).reply
    assert offer is not None and offer.packet.option(Option.SERVER_ID) == IPv4Address("198.18.1.1").packed
    assert offer.server_address == SERVER  # still sent from our own address
    ack = lab.send(message(DHCPMessageType.REQUEST, giaddr="198.18.1.1", requested=str(offer.packet.yiaddr),
                           server_id="198.18.1.1", extra=(relayed,))).reply
    assert ack is not None and ack.packet.message_type is DHCPMessageType.ACK
    assert ack.packet.option(Option.SERVER_ID) == IPv4Address("198.18.1.1").packed
    renewal = lab.send(message(DHCPMessageType.REQUEST, giaddr="198.18.1.1", ciaddr=str(offer.packet.yiaddr),
                               extra=(relayed,))).reply
    assert renewal is not None and renewal.packet.option(Option.SERVER_ID) == IPv4Address("198.18.1.1").packed
    zero = (Option.RELAY_AGENT_INFO, bytes((1, 3)) + b"p/2" + bytes((11, 4)) + bytes(4))
    unnamed = lab.send(message(DHCPMessageType.DISCOVER, MAC_C, giaddr="198.18.1.1", extra=(zero,))).reply
    assert unnamed is not None and unnamed.packet.option(Option.SERVER_ID) == SERVER.packed  # 0.0.0.0 names nobody
    for mode in ("ignore", "use"):  # option 82 from the client's link: no relay to name
        direct = Lab(config(option82_without_relay=mode)).send(
            message(DHCPMessageType.DISCOVER, MAC_B, extra=(relayed,))).reply
        assert direct is not None and direct.packet.option(Option.SERVER_ID) == SERVER.packed


def test_rapid_commit_answers_a_discover_with_option_80_by_a_durable_ack() -> None:
    rapid = (Option.RAPID_COMMIT, b"")
    plain = Lab().send(message(DHCPMessageType.DISCOVER, extra=(rapid,)))  # off: a plain OFFER
    assert plain.reply is not None and plain.reply.packet.message_type is DHCPMessageType.OFFER
    assert plain.reply.packet.option(Option.RAPID_COMMIT) is None and not plain.writes
    lab = Lab(config(rapid_commit=True))
    assert lab.send(message(DHCPMessageType.DISCOVER, MAC_B)).reply.packet.message_type is DHCPMessageType.OFFER
    outcome = lab.send(message(DHCPMessageType.DISCOVER, extra=(rapid,), requested="198.18.0.101"))
    assert outcome.reply is not None and outcome.reply.packet.message_type is DHCPMessageType.ACK
    assert outcome.reply.packet.option(Option.RAPID_COMMIT) == b""
    assert outcome.reply.packet.yiaddr == IPv4Address("198.18.0.101")
    [(lease, event)] = outcome.writes
    assert (lease.address, lease.state, event) == ("198.18.0.101", LeaseState.BOUND, "granted")
    assert isinstance(outcome.events[0], LeaseGranted)
    # Per subnet: the relayed subnet turns it off.
    subnets = config().model_dump()["subnet"]
    subnets[1]["rapid_commit"] = False
    lab = Lab(config(rapid_commit=True, subnet=subnets))
    relayed = lab.send(message(DHCPMessageType.DISCOVER, giaddr="198.18.1.1", extra=(rapid,))).reply
    assert relayed is not None and relayed.packet.message_type is DHCPMessageType.OFFER


def test_relay_addresses_and_link_selection_name_the_subnet() -> None:
    lab = Lab()
    bng = lab.send(message(DHCPMessageType.DISCOVER, giaddr="198.18.9.9")).reply
    assert bng is not None and bng.packet.yiaddr == IPv4Address("198.19.0.10")
    link_selection = bytes((5, 4)) + IPv4Address("198.18.1.0").packed
    selected = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, giaddr="198.18.9.9",
                                extra=((Option.RELAY_AGENT_INFO, link_selection),))).reply
    assert selected is not None and selected.packet.yiaddr == IPv4Address("198.18.1.100")
    assert lab.send(message(DHCPMessageType.DISCOVER, giaddr="203.0.113.9")).ignored is Ignored.NO_SUBNET


def test_a_relay_asking_for_its_source_port_is_answered_there() -> None:
    """RFC 8357 §5.1: sub-option 19 in option 82: the reply goes to the port the request came
    from; without it, to port 67 (Reply.port None) whatever the source port."""
    engine = DHCPEngine(config())

    def reply_port(suboptions: bytes, mac: bytes) -> int | None:
        packet = message(DHCPMessageType.DISCOVER, mac, giaddr="198.18.9.9",
                         extra=((Option.RELAY_AGENT_INFO, suboptions),))
        reply = engine.handle(Received(packet, "eth1", SERVER, SERVER, IPv4Address("198.18.9.9"), 20467), T0).reply
        assert reply is not None and reply.destination is Destination.RELAY
        return reply.port

    assert reply_port(bytes((1, 3)) + b"bng" + bytes((19, 0)), MAC_A) == 20467
    assert reply_port(bytes((1, 3)) + b"bng", MAC_B) is None


def test_direct_clients_on_an_interface_without_a_subnet_are_not_served() -> None:
    assert Lab().send(message(DHCPMessageType.DISCOVER), interface="eth2").ignored is Ignored.NO_SUBNET
    assert Lab().send(message(DHCPMessageType.DISCOVER), local=None).ignored is Ignored.NO_SERVER_ADDRESS


def test_broadcast_flag_is_honoured() -> None:
    reply = Lab().send(message(DHCPMessageType.DISCOVER, flags=FLAG_BROADCAST)).reply
    assert reply is not None and reply.destination is Destination.BROADCAST


def reservation(kind: ReservationKind, key: str, *, address: str | None = None, rid: int = 1,
                subscriber_id: int = 7, hostname: str | None = None) -> Reservation:
    return Reservation(id=rid, subscriber_id=subscriber_id, kind=kind, key=key, address=address, hostname=hostname)


def test_a_reservation_by_circuit_id_gives_the_reserved_address_and_subscriber() -> None:
    lab = Lab()
    lab.engine.load([], [reservation(ReservationKind.CIRCUIT_ID, "eth0/1/7", address="198.18.1.42",
                                     hostname="alice-router")], {7: SubscriberStatus.ACTIVE})
    relay_info = bytes((1, 8)) + b"eth0/1/7"
    address = lab.dora(giaddr="198.18.1.1", extra=((Option.RELAY_AGENT_INFO, relay_info),))
    assert address == IPv4Address("198.18.1.42")  # outside the pool: reservations may be
    # The renewal unicast past the relay carries no option 82: the line is the lease's.
    renew = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(address)))
    [(lease, _)] = renew.writes
    assert lease.subscriber_id == 7 and lease.hostname == "alice-router" and lease.circuit_id == "eth0/1/7"
    assert renew.reply is not None and renew.reply.packet.message_type is DHCPMessageType.ACK
    # ... and so is its status: suspended, the renewal is refused, for the walled garden.
    lab.engine.set_subscriber_status(7, SubscriberStatus.SUSPENDED)
    refused = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(address)))
    assert refused.reply is not None and refused.reply.packet.message_type is DHCPMessageType.NAK
    lab.engine.set_subscriber_status(7, SubscriberStatus.ACTIVE)
    # Nobody else gets the reserved address.
    assert lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.1.42")).reply.packet.message_type \
        is DHCPMessageType.NAK  # type: ignore[union-attr]


def test_a_nak_to_a_renewal_unicast_past_the_relay_goes_back_to_the_client() -> None:
    """A relayed client renews by unicast past its relay (giaddr 0, sent from its address). Its
    NAK (the line suspended) went to the broadcast address on ispd's own link, where the client
    is not: it kept its address until it rebound at T2. Sent to ciaddr, as the ACK is and as Kea
    sends it. From another address than ciaddr, or broadcast, the NAK is broadcast as before."""
    lab = Lab()
    lab.engine.load([], [reservation(ReservationKind.CIRCUIT_ID, "eth0/1/7")], {7: SubscriberStatus.ACTIVE})
    address = lab.dora(giaddr="198.18.1.1", extra=((Option.RELAY_AGENT_INFO, bytes((1, 8)) + b"eth0/1/7"),))
    renew = message(DHCPMessageType.REQUEST, ciaddr=str(address))
    ack = lab.send(renew, destination=SERVER, source=address)
    assert ack.reply is not None and (ack.reply.destination, ack.reply.address) == (Destination.UNICAST, address)
    lab.engine.set_subscriber_status(7, SubscriberStatus.SUSPENDED)
    nak = lab.send(renew, destination=SERVER, source=address)
    assert nak.reply is not None and nak.reply.packet.message_type is DHCPMessageType.NAK
    assert (nak.reply.destination, nak.reply.address) == (Destination.UNICAST, address)
    for destination, source in ((SERVER, IPv4Address("198.18.0.77")), (IPv4Address("255.255.255.255"), address),
                                (None, None)):
        other = lab.send(renew, destination=destination, source=source)
        assert other.reply is not None and other.reply.packet.message_type is DHCPMessageType.NAK
        assert other.reply.destination is Destination.BROADCAST, (destination, source)


def test_a_reserved_router_network_or_broadcast_address_is_not_given() -> None:
    """`ispd reservation add --address` knows no subnets, so a typo may reserve the subnet's
    broadcast address or its router's: the client gets a pool address instead (and a NAK for the
    reserved one), not an address that cuts it, or the link's gateway, off."""
    for rid, unleasable in enumerate(("198.18.0.255", "198.18.0.1", "198.18.0.0"), start=1):
        lab = Lab()
        lab.engine.load([], [reservation(ReservationKind.MAC, "02:00:5e:10:00:01", address=unleasable, rid=rid)],
                        {7: SubscriberStatus.ACTIVE})
        assert lab.dora(MAC_A) == IPv4Address("198.18.0.100"), unleasable
        asked = lab.send(message(DHCPMessageType.REQUEST, requested=unleasable))
        assert asked.reply is not None and asked.reply.packet.message_type is DHCPMessageType.NAK, unleasable


def test_option_82_from_a_client_on_the_link_is_not_trusted_unless_configured() -> None:
    """giaddr 0 and an option 82: written by the client (or a forger), not a relay. Its
    circuit-id must not claim another line's reservation, nor its link selection a subnet;
    where the access switches insert option 82 themselves, option82_without_relay = "use"."""
    forged = bytes((1, 8)) + b"eth0/1/7"
    for mode, expected in (("ignore", IPv4Address("198.18.0.100")), ("use", IPv4Address("198.18.0.42"))):
        lab = Lab(config(option82_without_relay=mode))
        lab.engine.load([], [reservation(ReservationKind.CIRCUIT_ID, "eth0/1/7", address="198.18.0.42")],
                        {7: SubscriberStatus.ACTIVE})
        outcome = lab.send(message(DHCPMessageType.DISCOVER, extra=((Option.RELAY_AGENT_INFO, forged),)))
        offer = outcome.reply
        assert offer is not None and offer.packet.yiaddr == expected, mode
        assert outcome.untrusted_option82 is (mode == "ignore")  # (counted and logged by the service)
        # Echoed either way (RFC 3046 §2.2): an L2 agent that inserted it may need it back.
        assert offer.packet.options[-1] == (Option.RELAY_AGENT_INFO, forged)


def test_a_client_with_a_reservation_is_moved_to_its_reserved_address() -> None:
    lab = Lab()
    old = lab.dora(MAC_A)
    lab.engine.add_reservation(reservation(ReservationKind.MAC, "02:00:5e:10:00:01", address="198.18.0.102"))
    lab.engine.set_subscriber_status(7, SubscriberStatus.ACTIVE)
    nak = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(old)))
    assert nak.reply is not None and nak.reply.packet.message_type is DHCPMessageType.NAK
    assert lab.dora(MAC_A) == IPv4Address("198.18.0.102")


def test_a_changed_reservation_moves_its_client_and_frees_the_old_address() -> None:
    """`reservation set` announced on the bus: the client is moved to the new address at its
    next request, and the old one is the pool's again."""
    lab, bus = Lab(), EventBus()
    follow_subscribers(bus, lab.engine)
    lab.engine.set_subscriber_status(7, SubscriberStatus.ACTIVE)
    fields = dict(reservation_id=1, kind="mac", key="02:00:5e:10:00:01", hostname=None)
    bus.publish(ReservationAdded(T0, 7, "alice", address="198.18.0.102", **fields))  # type: ignore[arg-type]
    assert lab.dora(MAC_A) == IPv4Address("198.18.0.102")
    bus.publish(ReservationChanged(T0, 7, "alice", address="198.18.0.103", **fields))  # type: ignore[arg-type]
    nak = lab.send(message(DHCPMessageType.REQUEST, ciaddr="198.18.0.102"))
    assert nak.reply is not None and nak.reply.packet.message_type is DHCPMessageType.NAK
    assert lab.dora(MAC_A) == IPv4Address("198.18.0.103")
    assert [r.address for r in lab.engine.reservations.values()] == ["198.18.0.103"]
    assert int(IPv4Address("198.18.0.102")) not in lab.engine.reserved_addresses


def test_a_change_to_one_of_many_reservations_is_applied_without_a_walk_of_them_all() -> None:
    """A plan's RADIUS prefix pool fills the reservation of each reserved login at its first
    login: one ReservationChanged each, handled on the main loop. Removal walked every
    reservation: ~90 ms a change at 100,000 reservations, so a BNG's logins coming back held
    DHCP and DNS for minutes."""
    lab, bus = Lab(), EventBus()
    follow_subscribers(bus, lab.engine)
    first = int(IPv4Address("10.0.0.0"))
    lines = [Reservation(i, i, ReservationKind.USERNAME, f"line{i}@pppoe", address=str(IPv4Address(first + i)))
             for i in range(1, 50_001)]
    lab.engine.load([], lines, {})
    started = time.perf_counter()
    for line in lines[:100]:
        bus.publish(ReservationChanged(T0, line.subscriber_id, "u", reservation_id=line.id, kind="username",
                                       key=line.key, address=line.address, hostname=f"h{line.id}"))
    assert time.perf_counter() - started < 1.0
    assert [r.key for r in lab.engine.reserved_hostnames["h100"]] == ["line100@pppoe"]
    assert lab.engine.reserved_addresses[first + 100].hostname == "h100"
    # Gone by its id; another reservation given the old one's key afterwards is not touched by a
    # late removal of the first.
    bus.publish(ReservationDeleted(T0, 1, "u", reservation_id=1, kind="username", key="line1@pppoe",
                                   address=str(IPv4Address(first + 1)), hostname="h1"))
    assert ("username", "line1@pppoe") not in lab.engine.reservations and "h1" not in lab.engine.reserved_hostnames
    assert first + 1 not in lab.engine.reserved_addresses
    lab.engine.add_reservation(Reservation(60_000, 2, ReservationKind.USERNAME, "line2@pppoe"))
    lab.engine.remove_reservation(2)
    assert lab.engine.reservations[("username", "line2@pppoe")].id == 60_000


def test_suspension_moves_the_subscriber_to_the_walled_garden_and_resume_back() -> None:
    lab = Lab()
    lab.engine.load([], [reservation(ReservationKind.MAC, "02:00:5e:10:00:01")], {7: SubscriberStatus.ACTIVE})
    normal = lab.dora(MAC_A)
    assert normal == IPv4Address("198.18.0.100")
    lab.engine.set_subscriber_status(7, SubscriberStatus.SUSPENDED)
    nak = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(normal)))
    assert nak.reply is not None and nak.reply.packet.message_type is DHCPMessageType.NAK
    offer = lab.send(message(DHCPMessageType.DISCOVER))
    assert offer.reply is not None and offer.reply.packet.yiaddr == IPv4Address("198.18.0.200")
    assert decode_u32(offer.reply.packet.option(Option.LEASE_TIME) or b"") == 300
    assert decode_ips(offer.reply.packet.option(Option.DNS_SERVERS) or b"") == (IPv4Address("198.18.0.250"),)
    garden = lab.dora(MAC_A)
    lab.engine.set_subscriber_status(7, SubscriberStatus.ACTIVE)
    assert lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(garden))).reply.packet.message_type \
        is DHCPMessageType.NAK  # type: ignore[union-attr]
    assert lab.dora(MAC_A) == normal


def test_unknown_clients_policy() -> None:
    ignore = Lab(config(unknown_clients="ignore"))
    assert ignore.send(message(DHCPMessageType.DISCOVER)).ignored is Ignored.CLIENT_IGNORED
    ignore.engine.load([], [reservation(ReservationKind.MAC, "02:00:5e:10:00:01")], {7: SubscriberStatus.ACTIVE})
    assert ignore.send(message(DHCPMessageType.DISCOVER)).reply is not None
    garden = Lab(config(unknown_clients="walled-garden")).send(message(DHCPMessageType.DISCOVER)).reply
    assert garden is not None and garden.packet.yiaddr == IPv4Address("198.18.0.200")


def test_client_identifier_is_preferred_over_chaddr() -> None:
    lab = Lab()
    cid = ((Option.CLIENT_ID, b"\x01" + MAC_C),)
    first = lab.dora(MAC_A, extra=cid)
    # Same client id from another NIC: the same client, the same address.
    assert lab.dora(MAC_B, extra=cid) == first
    # RFC 6842: OFFER, ACK and NAK carry it back (before option 82, which stays last).
    relay_info = bytes((1, 3)) + b"p/1"
    offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, giaddr="198.18.1.1",
                             extra=(*cid, (Option.RELAY_AGENT_INFO, relay_info))))
    nak = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.7.7", extra=cid))
    for reply in (offer.reply, nak.reply):
        assert reply is not None and dict(reply.packet.options)[Option.CLIENT_ID] == cid[0][1]
    assert offer.reply is not None and offer.reply.packet.options[-2:] == (cid[0], (Option.RELAY_AGENT_INFO, relay_info))
    assert nak.reply is not None and nak.reply.packet.message_type is DHCPMessageType.NAK


def test_expired_leases_are_reclaimed() -> None:
    lab = Lab()
    address = lab.dora()
    assert not lab.engine.reclaim(lab.now + 3599).writes
    outcome = lab.engine.reclaim(lab.now + 3600)
    [(lease, event)] = outcome.writes
    assert (lease.address, event, lease.state) == (str(address), "expired", LeaseState.EXPIRED)
    assert not lab.engine.reclaim(lab.now + 3700).writes


def test_a_lapsed_lease_ends_before_its_address_is_offered_or_granted_again() -> None:
    """Between an expiry and the reclaim pass that marks it, the address may go to someone
    else (or back to the same client): the old lease's end is written and announced first, else
    the store kept it bound for good and `who` named the old client."""
    lab = Lab()
    address = lab.dora(MAC_A)
    lab.now += 3600  # expired, not reclaimed yet
    offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, requested=str(address)))
    assert offer.reply is not None and offer.reply.packet.yiaddr == address
    [(ended, event)] = offer.writes
    assert (ended.address, ended.hw_address, event) == (str(address), "02:00:5e:10:00:01", "expired")
    assert [type(e).__name__ for e in offer.events] == ["LeaseEnded"]
    assert not lab.engine.reclaim(lab.now).writes  # ended once
    # The same client coming back after its lease lapsed: the end, then a new grant.
    again = lab.dora(MAC_B)
    lab.now += 3600
    ack = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested=str(again)))
    assert [event for _, event in ack.writes] == ["expired", "granted"]


def test_leases_loaded_from_the_store_are_respected() -> None:
    lab = Lab()
    lab.engine.load([
        Lease("198.18.0.100", LeaseState.BOUND, T0 - 100, T0 + 3500, hw_address="02:00:5e:10:00:02"),
        Lease("198.18.0.101", LeaseState.DECLINED, T0 - 100, T0 + 500),
        Lease("198.18.0.102", LeaseState.RELEASED, T0 - 100, T0 - 50, hw_address="02:00:5e:10:00:03"),
    ], [], {})
    assert lab.dora(MAC_B) == IPv4Address("198.18.0.100")  # its lease, kept across the restart
    assert lab.dora(MAC_C) == IPv4Address("198.18.0.102")  # its previous address
    assert lab.send(message(DHCPMessageType.DISCOVER, MAC_A)).ignored is Ignored.NO_ADDRESS


def test_a_lease_of_a_client_not_on_ethernet_is_its_own_after_a_restart() -> None:
    """The store keeps a lease's MAC but not its htype. The engine keyed a client by both and
    took a stored lease for Ethernet's (htype 1): a client of another hardware type (IEEE 802,
    htype 6) and no client-id had its renewal after a restart NAKed as another's address, which
    stayed bound to nobody until it expired, and was offered a new one."""
    def sent(lab: Lab, kind: DHCPMessageType, **kw: Any) -> Outcome:
        return lab.send(replace(message(kind, MAC_A, **kw), htype=6))
    before = Lab()
    offer = sent(before, DHCPMessageType.DISCOVER)
    assert offer.reply is not None
    address = str(offer.reply.packet.yiaddr)
    granted = sent(before, DHCPMessageType.REQUEST, requested=address, server_id=str(SERVER))
    after = Lab()
    after.engine.load([lease for lease, _ in granted.writes], [], {})
    after.now = T0 + 600
    renewal = after.send(replace(message(DHCPMessageType.REQUEST, MAC_A, ciaddr=address), htype=6),
                         source=IPv4Address(address), destination=SERVER)  # (RENEWING: unicast from it)
    assert renewal.reply is not None and renewal.reply.packet.message_type is DHCPMessageType.ACK
    assert str(renewal.reply.packet.yiaddr) == address
    offer = sent(after, DHCPMessageType.DISCOVER)
    assert offer.reply is not None and str(offer.reply.packet.yiaddr) == address


def test_hostnames_are_stored_only_when_fit_for_dns() -> None:
    lab = Lab()
    lab.dora(extra=((Option.HOSTNAME, b"Kitchen-PC"),))
    ack = lab.send(message(DHCPMessageType.REQUEST, requested="198.18.0.100", extra=((Option.HOSTNAME, b"Kitchen-PC"),)))
    assert ack.writes[0][0].hostname == "kitchen-pc"
    assert clean_hostname("bad_name") is None and clean_hostname("-x") is None and clean_hostname("a" * 64) is None
    fqdn = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.101",
                            extra=((Option.CLIENT_FQDN, b"\x00\x00\x00laptop.lab.example"),)))
    assert fqdn.writes[0][0].hostname == "laptop.lab.example"
    assert fqdn.reply is not None and (fqdn.reply.packet.option(Option.CLIENT_FQDN) or b"")[0] & 0x01


def test_a_malformed_fqdn_or_an_empty_client_id_is_not_echoed() -> None:
    """A client FQDN whose encoded label runs past the option's end named nothing: the lease is
    granted without a name and the option left out of the ACK, not echoed back as if it were
    the name taken. An empty client identifier identifies nobody (chaddr does) and is not echoed."""
    lab = Lab()
    broken = (Option.CLIENT_FQDN, bytes((0x04, 0, 0, 9)) + b"laptop")  # E: a 9-byte label, 6 there
    ack = lab.send(message(DHCPMessageType.REQUEST, requested="198.18.0.101", extra=(broken,)))
    assert ack.reply is not None and ack.reply.packet.message_type is DHCPMessageType.ACK
    assert ack.reply.packet.option(Option.CLIENT_FQDN) is None and ack.writes[0][0].hostname is None
    offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, extra=((Option.CLIENT_ID, b""),))).reply
    assert offer is not None and offer.packet.option(Option.CLIENT_ID) is None
    # From the verification: names that decode but that ispd does not take (no usable host name
    # once cleaned) were still echoed with S=1, "published".
    for unusable in (bytes((0x01, 0, 0)) + b"\xff\xfe", bytes((0x01, 0, 0)), bytes((0x01, 0, 0)) + b"a b.example"):
        ack = lab.send(message(DHCPMessageType.REQUEST, requested="198.18.0.101",
                               extra=((Option.CLIENT_FQDN, unusable),)))
        assert ack.reply is not None and ack.reply.packet.message_type is DHCPMessageType.ACK
        assert ack.reply.packet.option(Option.CLIENT_FQDN) is None and ack.writes[0][0].hostname is None


def test_a_reply_fits_the_clients_maximum_message_size() -> None:
    """RFC 2132 §9.10: option 57 is the largest datagram the client takes (576 at the least).
    Options that do not fit go, the least wanted (last in the client's list) first; the
    essential ones (message type, server id, lease times, mask, routers, echoes) stay."""
    routes = [{"destination": f"10.{n}.0.0/16", "router": "198.18.0.1"} for n in range(60)]
    lab = Lab(config(subnet=[{"network": "198.18.0.0/24", "interface": "eth1", "routers": ["198.18.0.1"],
                              "dns_servers": [f"198.18.0.{n}" for n in range(1, 40)],
                              "domain_name": "lab.example", "static_routes": routes,
                              "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.102"}]}]))
    asked = (Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 15, 6, 121)))
    full = lab.send(message(DHCPMessageType.DISCOVER, extra=(asked,))).reply
    assert full is not None and len(encode(full.packet)) + 28 > 576  # too big without option 57
    max_size = (Option.MAX_MESSAGE_SIZE, struct.pack("!H", 576))
    cid = (Option.CLIENT_ID, b"\x01" + MAC_A)
    offer = lab.send(message(DHCPMessageType.DISCOVER, extra=(asked, max_size, cid))).reply
    assert offer is not None and len(encode(offer.packet)) + 28 <= 576
    kept = [code for code, _ in offer.packet.options]
    assert Option.CLASSLESS_STATIC_ROUTES not in kept  # last asked for: dropped first
    for code in (Option.MESSAGE_TYPE, Option.SERVER_ID, Option.LEASE_TIME, Option.SUBNET_MASK, Option.ROUTERS,
                 Option.DOMAIN_NAME, Option.CLIENT_ID):
        assert code in kept, code
    # A client may not ask for less than 576: 300 is read as 576.
    small = (Option.MAX_MESSAGE_SIZE, struct.pack("!H", 300))
    assert lab.send(message(DHCPMessageType.DISCOVER, extra=(asked, small))).reply.packet.options \
        == lab.send(message(DHCPMessageType.DISCOVER, extra=(asked, max_size))).reply.packet.options  # type: ignore[union-attr]


def test_a_trailing_nul_in_a_hostname_is_trimmed() -> None:
    """Some clients count a NUL in option 12 (Kea trims them); the name was dropped."""
    assert clean_hostname("nullhost\x00") == "nullhost" and clean_hostname("\x00") is None


def test_a_reserved_hostname_cannot_be_taken_by_another_client() -> None:
    """A name a reservation gives stays its device's, in the lease and so in DNS (dnsmasq keeps
    configured names the same way); the other client's lease gets none."""
    lab = Lab()
    lab.engine.load([], [reservation(ReservationKind.MAC, "02:00:5e:10:00:01", hostname="davebox")],
                    {7: SubscriberStatus.ACTIVE})
    lab.dora(MAC_A)
    stranger = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.101",
                                extra=((Option.HOSTNAME, b"DaveBox"),)))
    assert stranger.writes and stranger.writes[0][0].hostname is None
    other = lab.send(message(DHCPMessageType.REQUEST, MAC_C, requested="198.18.0.102",
                             extra=((Option.HOSTNAME, b"kitchen"),)))
    assert other.writes[0][0].hostname == "kitchen"
    lab.engine.remove_reservation(1)  # once it is gone, the name is anyone's
    again = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.101",
                             extra=((Option.HOSTNAME, b"davebox"),)))
    assert again.writes[0][0].hostname == "davebox"


def test_a_host_name_two_reservations_give_stays_reserved_until_both_are_gone() -> None:
    """One subscriber's reservations may give one name (its router's MAC and its DUID): deleting
    one of them (the DUID of a replaced router) left the name free for any client, whose lease
    then took it in DNS from the device the other reservation still names."""
    lab = Lab()
    lab.engine.load([], [reservation(ReservationKind.MAC, "02:00:5e:10:00:01", hostname="cpe-alice"),
                         reservation(ReservationKind.DUID, "000300010200005e1001", rid=2, hostname="cpe-alice")],
                    {7: SubscriberStatus.ACTIVE})
    lab.engine.remove_reservation(2)
    stranger = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.101",
                                extra=((Option.HOSTNAME, b"cpe-alice"),)))
    assert stranger.writes and stranger.writes[0][0].hostname is None
    lab.engine.add_reservation(reservation(ReservationKind.MAC, "02:00:5e:10:00:01", hostname="cpe-alice"))
    lab.engine.remove_reservation(1)  # (announced twice: one claim, gone with it)
    again = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.101",
                             extra=((Option.HOSTNAME, b"cpe-alice"),)))
    assert again.writes[0][0].hostname == "cpe-alice"


def test_a_renewal_keeps_a_name_the_client_gave_not_one_a_reservation_gave_or_reserves_for_another() -> None:
    """A client need not repeat its host name at a renewal: the lease keeps the one it had. Not
    so a name its reservation gave, once `reservation set --clear hostname` took it away (the
    device sends none: why it was given one), nor a name a reservation gives another device
    now (`reservation set --hostname`): kept, the name stayed in the lease, and so in DNS, for
    as long as the client renewed, or flapped between the two devices."""
    lab, bus = Lab(), EventBus()
    follow_subscribers(bus, lab.engine)
    lab.engine.set_subscriber_status(7, SubscriberStatus.ACTIVE)
    fields = dict(reservation_id=1, kind="mac", key="02:00:5e:10:00:01", address=None)
    bus.publish(ReservationAdded(T0, 7, "alice", hostname="gw", **fields))  # type: ignore[arg-type]
    given = lab.dora(MAC_A)
    bus.publish(ReservationChanged(T0, 7, "alice", hostname=None, **fields))  # type: ignore[arg-type]
    renewed = lab.send(message(DHCPMessageType.REQUEST, MAC_A, ciaddr=str(given)))
    assert renewed.writes[0][0].hostname is None
    assert isinstance(renewed.events[-1], LeaseGranted) and renewed.events[-1].hostname is None
    # A name the client gave is kept at a renewal without it...
    own = lab.dora(MAC_B, extra=((Option.HOSTNAME, b"kitchen"),))
    assert lab.send(message(DHCPMessageType.REQUEST, MAC_B, ciaddr=str(own))).writes[0][0].hostname == "kitchen"
    # ...until a reservation gives that name to another device.
    bus.publish(ReservationChanged(T0, 7, "alice", hostname="kitchen", **fields))  # type: ignore[arg-type]
    assert lab.send(message(DHCPMessageType.REQUEST, MAC_B, ciaddr=str(own))).writes[0][0].hostname is None
    assert lab.send(message(DHCPMessageType.REQUEST, MAC_A, ciaddr=str(given))).writes[0][0].hostname == "kitchen"


@pytest.mark.parametrize("packet", [
    DHCPPacket(op=2, xid=1, options=((Option.MESSAGE_TYPE, b"\x01"),)),
    DHCPPacket(op=1, xid=1),
    message(DHCPMessageType.OFFER),
    message(DHCPMessageType.REQUEST),  # neither requested address nor ciaddr
    message(DHCPMessageType.DISCOVER, giaddr="198.18.1.1", extra=((Option.RELAY_AGENT_INFO, b"\x01\x09short"),)),
])
def test_messages_no_server_answers_are_ignored(packet: DHCPPacket) -> None:
    outcome = Lab().send(packet)
    assert outcome.reply is None and outcome.ignored is not None and not outcome.writes


def test_reload_keeps_leases() -> None:
    lab = Lab()
    address = lab.dora()
    lab.engine.reconfigure(config(lease_seconds=600))
    renew = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(address)))
    assert renew.writes[0][1] == "renewed"


def test_link_layer_datagram_checksums() -> None:
    datagram = ipv4_udp_datagram(b"hello dhcp", IPv4Address("198.18.0.1"), IPv4Address("198.18.0.100"), 67, 68)

    def ones_complement_sum(data: bytes) -> int:
        if len(data) % 2:
            data += b"\0"
        total = sum(struct.unpack(f"!{len(data) // 2}H", data))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        return total

    assert ones_complement_sum(datagram[:20]) == 0xFFFF  # the IP header checks out
    udp = datagram[20:]
    pseudo = datagram[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    assert ones_complement_sum(pseudo + udp) == 0xFFFF


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(list(DHCPMessageType)),
    mac=st.binary(min_size=6, max_size=6),
    ciaddr=st.sampled_from(["0.0.0.0", "198.18.0.100", "198.18.1.120", "203.0.113.5"]),
    giaddr=st.sampled_from(["0.0.0.0", "198.18.1.1", "198.18.9.9", "198.18.0.77"]),
    options=st.lists(st.tuples(st.sampled_from([12, 50, 54, 55, 61, 81, 82, 118, 1, 200]),
                               st.binary(max_size=12)), max_size=6),
    advance=st.floats(min_value=0, max_value=10_000),
)
def test_no_message_makes_the_engine_fail(kind: DHCPMessageType, mac: bytes, ciaddr: str, giaddr: str,
                                          options: list[tuple[int, bytes]], advance: float) -> None:
    lab = FUZZ_LAB
    lab.now += advance
    outcome = lab.send(message(kind, mac, ciaddr=ciaddr, giaddr=giaddr, extra=tuple(options)))
    if outcome.reply is not None:
        assert outcome.reply.packet.message_type in (
            DHCPMessageType.OFFER, DHCPMessageType.ACK, DHCPMessageType.NAK, DHCPMessageType.LEASEACTIVE,
            DHCPMessageType.LEASEUNASSIGNED, DHCPMessageType.LEASEUNKNOWN)
        encode(outcome.reply.packet)
    writes = outcome.writes + lab.engine.reclaim(lab.now).writes
    # Never the same address to two clients: every lease written must be free or the client's own.
    for lease, event in writes:
        holder = lease.client_id or lease.hw_address  # how the engine tells clients apart
        if event in ("granted", "renewed"):
            current = FUZZ_LEDGER.get(lease.address)
            if current is not None and current[1] > lab.now:
                assert current[0] == holder, (lease.address, current, holder)
            FUZZ_LEDGER[lease.address] = (holder, lease.expires_at)
        else:
            FUZZ_LEDGER.pop(lease.address, None)


FUZZ_LAB = Lab(config(leasequery_requesters=["198.18.1.1"]))  # (its leasequeries are answered too)
FUZZ_LEDGER: dict[str, tuple[str | None, float]] = {}


def test_a_captive_portal_uri_must_be_https_and_fit_an_option() -> None:
    from pydantic import ValidationError

    from ispd.dhcp.config import PoolConfig

    base = {"name": "garden", "range": "198.18.0.200 - 198.18.0.210", "walled_garden": True}
    assert PoolConfig(**base, captive_portal="https://portal.example/api").captive_portal
    for bad in ("http://portal.example/", "https://portal example/", "https://" + "a" * 250, "https://é.example/"):
        with pytest.raises(ValidationError):
            PoolConfig(**base, captive_portal=bad)


def test_clients_that_come_and_go_leave_nothing_behind_beyond_the_pool() -> None:
    # From a soak review: every client ever served stayed in the table (2 MB per 10,000 phones
    # with random MACs, for the life of the process), and the queue of freed addresses grew by
    # one per client (a copy at the offer and another at the release).
    lab = Lab()
    for n in range(300):
        mac = bytes.fromhex("02aa00") + n.to_bytes(3, "big")
        address = lab.dora(mac)
        lab.send(message(DHCPMessageType.RELEASE, mac, ciaddr=str(address), server_id=str(SERVER)))
        lab.now += 1
    lan = next(pool.allocator for subnet in lab.engine.subnets for pool in subnet.pools if pool.name == "lan")
    assert len(lab.engine.table.by_client) <= lan.size
    assert len(lan._returned) <= lan.size
    # What the table still remembers keeps working: the last client returns to its address.
    last = bytes.fromhex("02aa00") + (299).to_bytes(3, "big")
    assert lab.engine.table.previous_addresses(b"h" + last)


# --- leasequery (RFC 4388)

REQUESTER = "198.18.1.1"  # the relay of 198.18.1.0/24


def leasequery(*, ciaddr: str = "0.0.0.0", mac: bytes = b"", client_id: bytes | None = None,
               giaddr: str = REQUESTER) -> DHCPPacket:
    options: list[tuple[int, bytes]] = [(Option.MESSAGE_TYPE, bytes((DHCPMessageType.LEASEQUERY,)))]
    if client_id is not None:
        options.append((Option.CLIENT_ID, client_id))
    return DHCPPacket(op=BOOTREQUEST, xid=0x4C51, htype=1 if mac else 0, hlen=len(mac), chaddr=mac.ljust(16, b"\0"),
                      ciaddr=IPv4Address(ciaddr), giaddr=IPv4Address(giaddr), options=tuple(options))


def test_leasequery_by_address_mac_and_client_id_answers_from_the_lease_table() -> None:
    lab = Lab(config(leasequery_requesters=["198.18.1.0/30"]))
    circuit = bytes((1, 6)) + b"eth0/7" + bytes((2, 3)) + b"\x00\xff\x01"
    relayed = dict(giaddr=REQUESTER, extra=((Option.RELAY_AGENT_INFO, circuit),))
    first = lab.dora(MAC_A, **relayed)
    lab.now += 600
    with_id = dict(giaddr=REQUESTER, extra=((Option.CLIENT_ID, b"\x01" + MAC_B),))
    second = lab.dora(MAC_B, **with_id)  # a client known by its client-id
    lab.now += 60

    active = lab.send(leasequery(ciaddr=str(first)))
    assert active.reply is not None and not active.writes and active.reply.destination is Destination.RELAY
    assert active.reply.address == IPv4Address(REQUESTER)
    packet = active.reply.packet
    assert (packet.message_type, packet.xid, packet.ciaddr, packet.hw_address, packet.giaddr) == (
        DHCPMessageType.LEASEACTIVE, 0x4C51, first, MAC_A, IPv4Address(REQUESTER))
    assert decode_u32(packet.option(Option.LEASE_TIME) or b"") == 7200 - 660
    assert decode_u32(packet.option(Option.CLIENT_LAST_TRANSACTION_TIME) or b"") == 660
    assert packet.option(Option.RELAY_AGENT_INFO) == circuit  # as the relay sent it at the grant
    assert packet.option(Option.SERVER_ID) is not None and packet.option(Option.ASSOCIATED_IP) is None
    # A renewal is the last transaction, though the lease's start stays.
    lab.now += 100
    renew = lab.send(message(DHCPMessageType.REQUEST, MAC_A, ciaddr=str(first), giaddr=REQUESTER,
                             extra=((Option.RELAY_AGENT_INFO, circuit),)))
    assert renew.reply is not None and renew.reply.packet.message_type is DHCPMessageType.ACK
    lab.now += 5
    renewed = lab.send(leasequery(ciaddr=str(first))).reply
    assert renewed is not None and decode_u32(renewed.packet.option(Option.CLIENT_LAST_TRANSACTION_TIME) or b"") == 5

    by_mac = lab.send(leasequery(mac=MAC_B)).reply
    assert by_mac is not None and (by_mac.packet.message_type, by_mac.packet.ciaddr) == (
        DHCPMessageType.LEASEACTIVE, second)
    assert by_mac.packet.option(Option.CLIENT_ID) == b"\x01" + MAC_B
    by_id = lab.send(leasequery(client_id=b"\x01" + MAC_B)).reply
    assert by_id is not None and (by_id.packet.ciaddr, by_id.packet.hw_address) == (second, MAC_B)

    # An address of ours with no lease, one that is not ours, a client we do not know.
    free = lab.send(leasequery(ciaddr="198.18.1.140")).reply
    assert free is not None and (free.packet.message_type, free.packet.ciaddr) == (
        DHCPMessageType.LEASEUNASSIGNED, IPv4Address("198.18.1.140"))
    assert free.packet.option(Option.LEASE_TIME) is None
    stranger = lab.send(leasequery(ciaddr="203.0.113.9")).reply
    assert stranger is not None and stranger.packet.message_type is DHCPMessageType.LEASEUNKNOWN
    nobody = lab.send(leasequery(client_id=b"\x01" + MAC_C)).reply
    assert nobody is not None and nobody.packet.message_type is DHCPMessageType.LEASEUNKNOWN
    assert nobody.packet.option(Option.CLIENT_ID) == b"\x01" + MAC_C  # the question echoed
    # Released: unassigned by address, unknown by MAC.
    lab.send(message(DHCPMessageType.RELEASE, MAC_A, ciaddr=str(first), server_id=str(SERVER)))
    assert lab.send(leasequery(ciaddr=str(first))).reply.packet.message_type \
        is DHCPMessageType.LEASEUNASSIGNED  # type: ignore[union-attr]
    assert lab.send(leasequery(mac=MAC_A)).reply.packet.message_type \
        is DHCPMessageType.LEASEUNKNOWN  # type: ignore[union-attr]


def test_leasequery_tells_the_last_renewal_of_a_reserved_address_outside_the_pools() -> None:
    """Option 91 (seconds since the client's last transaction) was counted from the lease's first
    grant for an address a reservation gives outside every pool (no pool's lease time to count
    back from): a line renewed a minute ago was said to be silent since its router booted."""
    lab = Lab(config(leasequery_requesters=[REQUESTER]))
    lab.engine.load([], [reservation(ReservationKind.CIRCUIT_ID, "eth0/1/7", address="198.18.1.42")],
                    {7: SubscriberStatus.ACTIVE})
    relayed = dict(giaddr=REQUESTER, extra=((Option.RELAY_AGENT_INFO, bytes((1, 8)) + b"eth0/1/7"),))
    address = lab.dora(**relayed)
    assert address == IPv4Address("198.18.1.42")
    lab.now += 3000
    renew = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(address), **relayed))  # type: ignore[arg-type]
    assert renew.reply is not None and renew.reply.packet.message_type is DHCPMessageType.ACK
    lab.now += 60
    answer = lab.send(leasequery(ciaddr=str(address))).reply
    assert answer is not None and answer.packet.message_type is DHCPMessageType.LEASEACTIVE
    assert decode_u32(answer.packet.option(Option.LEASE_TIME) or b"") == 7200 - 60
    assert decode_u32(answer.packet.option(Option.CLIENT_LAST_TRANSACTION_TIME) or b"") == 60


@pytest.mark.parametrize("lease_seconds", [600, 86400])
def test_leasequery_tells_the_last_renewal_after_the_lease_time_changed(lease_seconds: int) -> None:
    """Option 91 was counted back from the lease's end by the pool's lease time as configured
    now: after a reload lowered it, a client last heard of 40 minutes ago was said to have
    renewed a moment ago (0); raised, to have been silent since its first grant."""
    lab = Lab(config(leasequery_requesters=[REQUESTER]))
    address = lab.dora(giaddr=REQUESTER)
    lab.now += 1000
    renew = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(address), giaddr=REQUESTER))
    assert renew.reply is not None and renew.reply.packet.message_type is DHCPMessageType.ACK
    lab.now += 2400
    changed = config(leasequery_requesters=[REQUESTER])
    subnets = [*changed.subnet]
    subnets[1] = subnets[1].model_copy(update={"lease_seconds": lease_seconds})
    lab.engine.reconfigure(changed.model_copy(update={"subnet": subnets}))
    answer = lab.send(leasequery(ciaddr=str(address))).reply
    assert answer is not None and answer.packet.message_type is DHCPMessageType.LEASEACTIVE
    assert decode_u32(answer.packet.option(Option.LEASE_TIME) or b"") == 7200 - 2400  # the lease it was given
    assert decode_u32(answer.packet.option(Option.CLIENT_LAST_TRANSACTION_TIME) or b"") == 2400


def test_a_leasequery_naming_more_than_one_thing_is_asked_by_the_first_of_ciaddr_client_id_chaddr() -> None:
    """As ISC dhcpd answers: a requester that fills chaddr (or sends a client-id) in a query by
    address gets the address's answer, not silence."""
    lab = Lab(config(leasequery_requesters=[REQUESTER]))
    first = lab.dora(MAC_A, giaddr=REQUESTER)
    second = lab.dora(MAC_B, giaddr=REQUESTER, extra=((Option.CLIENT_ID, b"\x01" + MAC_B),))
    by_address = lab.send(leasequery(ciaddr=str(first), mac=MAC_B, client_id=b"\x01" + MAC_B)).reply
    assert by_address is not None and by_address.packet.ciaddr == first
    by_client_id = lab.send(leasequery(mac=MAC_A, client_id=b"\x01" + MAC_B)).reply
    assert by_client_id is not None and by_client_id.packet.ciaddr == second


def test_leasequery_by_mac_lists_every_address_the_client_holds() -> None:
    lab = Lab(config(leasequery_requesters=[REQUESTER]))
    on_lan = lab.dora(MAC_A)  # one lease per subnet: the same device on two links
    lab.now += 30
    relayed = lab.dora(MAC_A, giaddr=REQUESTER)
    answer = lab.send(leasequery(mac=MAC_A)).reply
    assert answer is not None and answer.packet.ciaddr == relayed  # the newest
    assert decode_ips(answer.packet.option(Option.ASSOCIATED_IP) or b"") == (on_lan,)  # its other one


@pytest.mark.parametrize(("requesters", "query", "reason"), [
    ([], leasequery(ciaddr="198.18.1.100"), Ignored.LEASEQUERY_REFUSED),  # off by default
    (["198.18.9.0/24"], leasequery(ciaddr="198.18.1.100"), Ignored.LEASEQUERY_REFUSED),
    ([REQUESTER], leasequery(ciaddr="198.18.1.100", giaddr="0.0.0.0"), Ignored.LEASEQUERY_REFUSED),
    ([REQUESTER], leasequery(), Ignored.BAD_LEASEQUERY),  # asks of nothing
    # A subscriber's own query, relayed by a BNG that may ask: its answer would reach the subscriber.
    ([REQUESTER], replace(leasequery(ciaddr="198.18.1.100"), hops=1), Ignored.LEASEQUERY_REFUSED),
])
def test_leasequery_from_others_or_asking_of_not_one_thing_is_dropped(
        requesters: list[str], query: DHCPPacket, reason: Ignored) -> None:
    outcome = Lab(config(leasequery_requesters=requesters)).send(query)
    assert (outcome.reply, outcome.ignored) == (None, reason)


def test_the_by_mac_index_keeps_no_list_for_clients_without_a_mac() -> None:
    """A client with hlen 0 (InfiniBand, RFC 4390: known by its client-id alone) has the MAC text
    "". Indexed under it, every such client's address went into one list that each of their
    DISCOVERs and ACKs searched and edited (a walk of thousands on the DORA path), for a key no
    leasequery by MAC can ask (it needs a chaddr)."""
    table = LeaseTable()
    for address in range(1, 4):
        table.put(Binding(address, BindingState.OFFERED, 100.0, b"c\x01", hw_address=None))
        table.put(Binding(address, BindingState.BOUND, 100.0, b"c\x01", hw_address=""))
    assert table.by_hw_address == {}
    table.put(Binding(1, BindingState.BOUND, 100.0, b"h\x01", hw_address="02:00:00:00:00:01"))
    table.put(Binding(2, BindingState.BOUND, 100.0, b"c\x01", hw_address=""))
    assert table.by_hw_address == {"02:00:00:00:00:01": [1]}
    table.put(Binding(1, BindingState.OFFERED, 100.0, b"c\x02", hw_address=None))
    assert table.by_hw_address == {}


def test_a_client_with_neither_a_hardware_address_nor_a_client_id_is_dropped() -> None:
    """hlen 0 (InfiniBand, RFC 4390) and no client-id, or an empty one: nothing tells one such
    client from another. Served, they all had one lease key, so the second was offered the
    first one's address and its REQUEST "renewed" that lease: two hosts, one address. Kea drops
    them ("Missing or useless client-id and no HW address"); one with a client-id is served."""
    lab = Lab()
    for number, client_id in enumerate((None, b"")):
        chaddr = bytes((0x11 + number,)) * 16
        extra = () if client_id is None else ((Option.CLIENT_ID, client_id),)
        for kind in (DHCPMessageType.DISCOVER, DHCPMessageType.REQUEST, DHCPMessageType.RELEASE):
            packet = replace(message(kind, requested="198.18.0.100", extra=extra), htype=32, hlen=0, chaddr=chaddr)
            outcome = lab.send(packet)
            assert (outcome.reply, outcome.writes) == (None, [])
            assert outcome.ignored == "no_client_identity"  # (the metric's label)
    granted = []
    for client_id in (b"\xff\x00\x01", b"\xff\x00\x02"):
        def sent(kind: DHCPMessageType, client_id: bytes = client_id, **kw: Any) -> Outcome:
            return lab.send(replace(message(kind, extra=((Option.CLIENT_ID, client_id),), **kw), htype=32, hlen=0))
        offer = sent(DHCPMessageType.DISCOVER)
        assert offer.reply is not None
        ack = sent(DHCPMessageType.REQUEST, requested=str(offer.reply.packet.yiaddr), server_id=str(SERVER))
        assert ack.reply is not None and ack.reply.packet.message_type is DHCPMessageType.ACK
        granted.append(ack.reply.packet.yiaddr)
    assert granted[0] != granted[1]


def test_the_client_fqdn_echo_names_the_host_name_the_lease_takes() -> None:
    """RFC 4702 §4: the reply's client FQDN is the server's notion of the client's name, with S
    saying the server publishes it. A device whose reservation gives it a name was told its own
    ("laptop", S=1) while DNS published the reservation's; a device asking for a name another
    device's reservation holds was told S=1 for a name nobody published for it."""
    lab = Lab()
    lab.engine.load([], [reservation(ReservationKind.MAC, "02:00:5e:10:00:01", hostname="davebox")],
                    {7: SubscriberStatus.ACTIVE})
    ascii_fqdn = (Option.CLIENT_FQDN, b"\x01\x00\x00laptop.lab.example")
    ack = lab.send(message(DHCPMessageType.REQUEST, MAC_A, requested="198.18.0.100", extra=(ascii_fqdn,)))
    assert ack.writes[0][0].hostname == "davebox"
    assert ack.reply is not None and ack.reply.packet.option(Option.CLIENT_FQDN) == b"\x01\xff\xffdavebox"
    wire_fqdn = (Option.CLIENT_FQDN, b"\x05\x00\x00\x06laptop\x03lab\x07example\x00")
    offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_A, extra=(wire_fqdn,)))
    assert offer.reply is not None and offer.reply.packet.option(Option.CLIENT_FQDN) == b"\x05\xff\xff\x07davebox"
    stranger = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.101",
                                extra=((Option.CLIENT_FQDN, b"\x01\x00\x00DaveBox"),)))
    assert stranger.writes[0][0].hostname is None
    assert stranger.reply is not None and stranger.reply.packet.message_type is DHCPMessageType.ACK
    assert stranger.reply.packet.option(Option.CLIENT_FQDN) is None
    # Its own name, the client's bytes as it sent them.
    own = lab.send(message(DHCPMessageType.REQUEST, MAC_C, requested="198.18.0.102",
                           extra=((Option.CLIENT_FQDN, b"\x00\x00\x00Kitchen.lab.example."),)))
    assert own.reply is not None and own.reply.packet.option(Option.CLIENT_FQDN) == b"\x03\xff\xffKitchen.lab.example."


def test_a_client_fqdn_with_n_is_told_its_name_is_published() -> None:
    """The lease takes the name of a client FQDN with N ("do no DNS updates") as any other, and
    DNS publishes it; the reply said N=1, S=0: nothing published. RFC 4702 §4: a server that
    updates all the same says so with S=1 and O=1 (it overrode the client)."""
    lab = Lab()
    ack = lab.send(message(DHCPMessageType.REQUEST, MAC_A, requested="198.18.0.100",
                           extra=((Option.CLIENT_FQDN, b"\x08\x00\x00laptop"),)))
    assert ack.writes[0][0].hostname == "laptop" and ack.events[-1].hostname == "laptop"  # type: ignore[attr-defined]
    assert ack.reply is not None and ack.reply.packet.option(Option.CLIENT_FQDN) == b"\x03\xff\xfflaptop"


def test_without_lease_names_a_client_fqdn_is_told_the_server_publishes_nothing() -> None:
    """With no [dns.lease_names] domain nobody publishes a lease's name, yet the echo said S=1
    ("the server has taken responsibility for A RR updates", RFC 4702 §2.1): dhclient with
    `fqdn.server-update on` recorded server-update true and did no update of its own, and the
    name was nowhere. Now S=0, with O=1 to a client that asked for S, and N=1: "A server sets
    the N bit to indicate whether the server SHALL (0) or SHALL NOT (1) perform DNS updates"
    (§2.1; a second review: the first fix left N=0, which promised the PTR update)."""
    cfg = config()
    assert not _publishes_names(Config.model_validate({"dhcp": cfg.model_dump(mode="json")}))
    assert _publishes_names(Config.model_validate({"dhcp": cfg.model_dump(mode="json"),
                                                   "dns": {"lease_names": {"domain": "lab.example"}}}))
    lab = Lab()
    lab.engine.publishes_names = False
    asked = lab.send(message(DHCPMessageType.REQUEST, MAC_A, requested="198.18.0.100",
                             extra=((Option.CLIENT_FQDN, b"\x05\x00\x00\x06laptop\x00"),)))
    assert asked.writes[0][0].hostname == "laptop"  # (stored all the same: `ispd lease list`)
    assert asked.reply is not None and asked.reply.packet.option(Option.CLIENT_FQDN) == b"\x0e\xff\xff\x06laptop\x00"
    unasked = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.101",
                               extra=((Option.CLIENT_FQDN, b"\x00\x00\x00kitchen"),)))
    assert unasked.reply is not None and unasked.reply.packet.option(Option.CLIENT_FQDN) == b"\x08\xff\xffkitchen"


def test_a_device_is_told_the_host_name_its_reservation_gives_it() -> None:
    """A reservation's --hostname named the device in DNS only: a device that asks for option 12
    (dhclient does by default, udhcpc -O hostname) never heard of it. Kea sends it to a client
    that asks for option 12 or sends its own; others, and devices without one, get none."""
    lab = Lab()
    lab.engine.load([], [reservation(ReservationKind.MAC, "02:00:5e:10:00:01", hostname="davebox")],
                    {7: SubscriberStatus.ACTIVE})
    asks = (Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 12)))
    offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_A, extra=(asks,))).reply
    assert offer is not None and offer.packet.option(Option.HOSTNAME) == b"davebox"
    ack = lab.send(message(DHCPMessageType.REQUEST, MAC_A, requested="198.18.0.100",
                           extra=((Option.PARAMETER_REQUEST_LIST, bytes((1, 3))), (Option.HOSTNAME, b"laptop"))))
    assert ack.reply is not None and ack.reply.packet.option(Option.HOSTNAME) == b"davebox"
    quiet = lab.send(message(DHCPMessageType.DISCOVER, MAC_A, extra=((Option.PARAMETER_REQUEST_LIST, bytes((1, 3))),)))
    assert quiet.reply is not None and quiet.reply.packet.option(Option.HOSTNAME) is None
    other = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, extra=(asks,))).reply
    assert other is not None and other.packet.option(Option.HOSTNAME) is None


def test_a_client_that_starts_sending_a_client_id_keeps_the_address_it_took_by_its_mac() -> None:
    """dhclient (no option 61) then dhcpcd (a client-id) on one host: the lease taken by MAC has no
    client-id to tell its owner by, so the MAC does (as Kea's belongsToClient); the client keeps
    its address, where it got a second one and the first stayed bound to the end of its lease."""
    lab = Lab()
    first = lab.dora(MAC_A)
    cid = ((Option.CLIENT_ID, b"\x01" + MAC_A),)
    lab.now += 10
    # INIT-REBOOT with the address it had (dhcpcd's stored lease): confirmed, as a renewal.
    reboot = lab.send(message(DHCPMessageType.REQUEST, MAC_A, requested=str(first), extra=cid))
    assert reboot.reply is not None and reboot.reply.packet.message_type is DHCPMessageType.ACK
    [(lease, event)] = reboot.writes
    assert (lease.address, event, lease.client_id, lease.starts_at) == (str(first), "renewed", "01" + MAC_A.hex(), T0)
    # A DISCOVER from scratch by MAC, then with a client-id: one address, one lease.
    second = Lab()
    taken = second.dora(MAC_B)
    assert second.dora(MAC_B, extra=((Option.CLIENT_ID, b"\x01" + MAC_B),)) == taken
    assert [b.state for b in second.engine.table.by_address.values()] == [BindingState.BOUND]
    # Another client-id on that MAC (RFC 6842: another client) does not take a lease that has one.
    assert second.dora(MAC_B, extra=((Option.CLIENT_ID, b"\xffother"),)) != taken
    # Nor does a client-id's grant end a lease its MAC holds without one (a BMC sharing the NIC).
    third, host_id = Lab(), ((Option.CLIENT_ID, b"\x01" + MAC_C),)
    host = third.dora(MAC_C, extra=host_id)
    bmc = third.dora(MAC_C)
    renewed = third.send(message(DHCPMessageType.REQUEST, MAC_C, ciaddr=str(host), extra=host_id))
    assert [event for _, event in renewed.writes] == ["renewed"]
    assert third.engine.table.by_address[int(bmc)].state is BindingState.BOUND


def test_leasequery_tells_t1_t2_left_and_the_options_the_requester_lists() -> None:
    """RFC 4388 §6.4: a DHCPLEASEACTIVE carries the renewal (T1) and rebinding (T2) times with the
    lease time, each as the time left, and the options of the requester's parameter request list,
    with the values the client was given. ispd answered with the lease time alone and ignored the
    list: a BNG rebuilding its table could not tell when the client would renew, nor its router."""
    lab = Lab(config(leasequery_requesters=[REQUESTER]))
    address = lab.dora(giaddr=REQUESTER)
    lab.now += 1000
    asked = leasequery(ciaddr=str(address))
    asked = replace(asked, options=(*asked.options, (Option.PARAMETER_REQUEST_LIST, bytes((3, 1, 51, 200)))))
    answer = lab.send(asked).reply
    assert answer is not None and answer.packet.message_type is DHCPMessageType.LEASEACTIVE
    packet = answer.packet
    assert decode_u32(packet.option(Option.LEASE_TIME) or b"") == 7200 - 1000
    assert decode_u32(packet.option(Option.RENEWAL_TIME) or b"") == 3600 - 1000
    assert decode_u32(packet.option(Option.REBINDING_TIME) or b"") == 6300 - 1000
    assert packet.option(Option.ROUTERS) == IPv4Address("198.18.1.1").packed
    assert packet.option(Option.SUBNET_MASK) == IPv4Address("255.255.255.0").packed
    assert [code for code, _ in packet.options].count(Option.LEASE_TIME) == 1  # (asked for, and sent once)
    # Past T1 (renewing): 0 left until it; without a list, no options beyond the lease's.
    lab.now += 3000
    later = lab.send(leasequery(ciaddr=str(address))).reply
    assert later is not None
    assert decode_u32(later.packet.option(Option.RENEWAL_TIME) or b"") == 0
    assert decode_u32(later.packet.option(Option.REBINDING_TIME) or b"") == 6300 - 4000
    assert later.packet.option(Option.ROUTERS) is None
