"""The DHCP transport around the engine: what it reads from each datagram's ancillary data."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address
from typing import Any

from prometheus_client import CollectorRegistry

from ispd.config import Config
from ispd.dhcp.codec import FLAG_BROADCAST, encode
from ispd.dhcp.engine import Destination, Reply
from ispd.dhcp.options import DHCPMessageType
from ispd.dhcp.service import IP_PKTINFO, PKTINFO, DHCPService
from ispd.events import EventBus
from ispd.service import ServiceContext
from tests.dhcp.test_engine import SERVER, T0, config, message

IFINDEX = 7


class DatagramsSocket:
    """Hands ``recvmsg`` the datagrams given, each with the IP_PKTINFO the kernel would add."""

    def __init__(self, datagrams: list[tuple[bytes, IPv4Address]], source: str = "198.18.0.77") -> None:
        self.datagrams = list(datagrams)
        self.source = source

    def recvmsg(self, size: int, ancillary_size: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
        if not self.datagrams:
            raise BlockingIOError
        data, destination = self.datagrams.pop(0)
        pktinfo = PKTINFO.pack(IFINDEX, SERVER.packed, destination.packed)
        return data, [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, (self.source, 68)


async def _healthy() -> tuple[bool, dict[str, object]]:
    return True, {}


def test_the_destination_address_reaches_the_engine_so_a_broadcast_ciaddr_is_not_trusted() -> None:
    """A REBINDING request (broadcast, giaddr 0) naming an address of a relayed subnet came from
    the direct link: NAKed. The same request unicast to us is a renewal from behind the relay.
    Only IP_PKTINFO's destination address tells them apart; the transport used to drop it."""
    service = DHCPService(Config(dhcp=config()), ServiceContext(None, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                _healthy, clock=lambda: T0))
    service._interfaces = {IFINDEX: "eth1"}
    replies: list[Reply] = []
    service._send = lambda reply, *_: replies.append(reply)  # type: ignore[method-assign]
    # An ACK waits in _pending for its store write, which this test does not make.
    service._loop = type("Loop", (), {"call_soon": lambda self, f: None})()  # type: ignore[assignment]
    rebind = encode(message(DHCPMessageType.REQUEST, ciaddr="198.18.1.105", flags=FLAG_BROADCAST))
    service._socket = DatagramsSocket([(rebind, IPv4Address("255.255.255.255"))])  # type: ignore[assignment]
    service._readable()
    assert not service._pending, "ACKed"
    [nak] = replies
    assert nak.packet.message_type is DHCPMessageType.NAK and nak.destination is Destination.BROADCAST

    # From the verification: the same unicast from another address (a client of the direct link
    # writing the relayed subnet's address into ciaddr) was "renewed" into a lease too.
    renew = encode(message(DHCPMessageType.REQUEST, ciaddr="198.18.1.105"))
    service._socket = DatagramsSocket([(renew, SERVER)], source="198.18.0.77")  # type: ignore[assignment]
    service._readable()
    assert not service._pending, "ACKed"
    assert replies[-1].packet.message_type is DHCPMessageType.NAK

    service._socket = DatagramsSocket([(renew, SERVER)], source="198.18.1.105")  # type: ignore[assignment]
    service._readable()
    [(outcome, *_)] = service._pending
    assert outcome.reply is not None and outcome.reply.packet.message_type is DHCPMessageType.ACK
    assert outcome.writes[0][0].pool == "relayed"
