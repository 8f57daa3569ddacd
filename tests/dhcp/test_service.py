"""The DHCP transport around the engine: what it reads from each datagram's ancillary data."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections import Counter
from contextlib import AsyncExitStack
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from ispd.config import Config
from ispd.dhcp.codec import FLAG_BROADCAST, HEADER_SIZE, MAGIC_COOKIE, DHCPPacket, decode, encode
from ispd.dhcp.config import DHCPConfig
from ispd.dhcp.engine import Destination, Reply
from ispd.dhcp.options import DHCPMessageType, Option
from ispd.dhcp.service import IP_PKTINFO, PKTINFO, DHCPService
from ispd.events import EventBus
from ispd.service import ServiceContext
from ispd.store import StoreConfig, StoreMetrics, open_store
from tests.dhcp.test_engine import SERVER, T0, config, message
from tests.store.outage import WritesDown

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


def test_an_exhausted_pool_is_said_in_the_log_once_a_minute() -> None:
    """A client the pool has no address for gets no OFFER and keeps asking; the log says why (the
    pools tried), as Kea's ALLOC_ENGINE_V4_ALLOC_FAIL, once a minute rather than per DISCOVER."""
    now = [T0]
    service = DHCPService(Config(dhcp=config()), ServiceContext(None, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                _healthy, clock=lambda: now[0]))
    service._interfaces = {IFINDEX: "eth1"}
    service._send = lambda reply, *_: None  # type: ignore[method-assign]
    discovers = [encode(message(DHCPMessageType.DISCOVER, bytes([2, 0, 0x5E, 0x10, 1, n]), xid=n))
                 for n in range(10)]  # "lan" has three addresses, each held by its OFFER
    with capture_logs() as logs:
        service._socket = DatagramsSocket([(d, IPv4Address("255.255.255.255")) for d in discovers[:6]])  # type: ignore[assignment]
        service._readable()
        assert service.metrics.dropped.get("pool_exhausted") == 3
        now[0] += 61  # the OFFERs' holds may have lapsed too: four new clients, one at least without
        service._socket = DatagramsSocket([(d, IPv4Address("255.255.255.255")) for d in discovers[6:]])  # type: ignore[assignment]
        service._readable()
    exhausted = [entry for entry in logs if entry["event"] == "dhcp.pool.exhausted"]
    assert len(exhausted) == 2
    assert exhausted[0]["pools"] == ["lan"] and exhausted[0]["log_level"] == "warning"
    assert exhausted[0]["interface"] == "eth1" and exhausted[0]["relay"] is None


def test_a_client_the_subnet_has_no_pool_for_is_not_said_to_have_exhausted_one() -> None:
    """A suspended subscriber's device where its subnet has no walled-garden pool (the relayed
    one here, as the BNG's in configs/ispd.toml) gets no address. That was counted and logged
    as an exhausted pool, with no pool named and the hint to add a range, which does not help:
    it is no_pool, and dhcp.pool.none says what would."""
    service = DHCPService(Config(dhcp=config(unknown_clients="walled-garden")),
                          ServiceContext(None, EventBus(), CollectorRegistry(), _healthy,  # type: ignore[arg-type]
                                         clock=lambda: T0))
    service._interfaces = {IFINDEX: "eth1"}
    service._send = lambda reply, *_: None  # type: ignore[method-assign]
    relayed = [encode(message(DHCPMessageType.DISCOVER, bytes([2, 0, 0x5E, 0x10, 2, n]), xid=n, giaddr="198.18.1.1"))
               for n in range(3)]
    with capture_logs() as logs:
        service._socket = DatagramsSocket([(d, SERVER) for d in relayed])  # type: ignore[assignment]
        service._readable()
    assert service.metrics.dropped.get("no_pool") == 3
    assert service.metrics.dropped.get("pool_exhausted") == 0
    assert not [entry for entry in logs if entry["event"] == "dhcp.pool.exhausted"]
    [none] = [entry for entry in logs if entry["event"] == "dhcp.pool.none"]
    assert (none["subnet"], none["client_class"], none["relay"]) == ("198.18.1.0/24", "walled-garden", "198.18.1.1")
    assert "walled_garden = true" in none["hint"]


async def test_exchanges_and_malformed_packets_leave_no_cycle_behind(tmp_path: Path,
                                                                   without_cycle_collection: None) -> None:
    """ispd collects reference cycles rarely (``ispd.collector.collect_rarely``): what a
    packet left in one would stay long. Measured clean (no object in a cycle after 100 relayed
    DISCOVER/REQUEST/RELEASE exchanges, 50 direct ones answered by broadcast and link layer, or 300
    malformed datagrams); this keeps it so, through the real transport: a relay on loopback, the
    socket, the engine and the store's writes."""
    server_address, relay_address = "127.59.0.1", "127.59.0.2"  # (the relay's socket must not be the server's)
    dhcp = DHCPConfig.model_validate({
        "enabled": True, "interfaces": ["lo"], "port": 0,
        "subnet": [{"network": "127.59.0.0/24", "pool": [{"name": "relayed", "range": "127.59.0.100 - 127.59.0.150"}]}]})
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"), StoreMetrics())
    service = DHCPService(Config(dhcp=dhcp), ServiceContext(store, EventBus(), CollectorRegistry(), _healthy))
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        stack.callback(relay.close)
        await service.start(stack)
        stack.push_async_callback(service.stop)
        # Replies to a relay go to its address on the server's port (RFC 2131 §4.1).
        relay.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        relay.bind((relay_address, service.server_port))
        relay.setblocking(False)

        async def ask(packet: DHCPPacket) -> DHCPPacket:
            relay.sendto(encode(packet), (server_address, service.server_port))
            return decode(await asyncio.wait_for(loop.sock_recv(relay, 4096), 2))

        async def exchange(number: int) -> None:
            mac = bytes.fromhex(f"02005e10{number:04x}")
            offer = await ask(message(DHCPMessageType.DISCOVER, mac, xid=number, giaddr=relay_address))
            server_id = offer.option(Option.SERVER_ID)
            assert server_id is not None
            ack = await ask(message(DHCPMessageType.REQUEST, mac, xid=number, giaddr=relay_address,
                                    requested=str(offer.yiaddr), server_id=str(IPv4Address(server_id))))
            assert ack.message_type is DHCPMessageType.ACK
            valid = encode(message(DHCPMessageType.DISCOVER, mac, giaddr=relay_address))
            options = HEADER_SIZE + len(MAGIC_COOKIE)
            malformed = [b"", valid[:100], b"\x03" + valid[1:], valid[:HEADER_SIZE] + bytes(4) + valid[options:],
                         valid[:options] + b"\x35\x05\x01", valid[:options] + b"\x34\x01\x09\xff",
                         valid[:options] + b"\xff"]
            malformed.append(encode(message(DHCPMessageType.RELEASE, mac, ciaddr=str(ack.yiaddr),
                                            giaddr=relay_address, server_id=str(IPv4Address(server_id)))))
            for datagram in malformed:  # (none is answered: a RELEASE has no reply)
                relay.sendto(datagram, (server_address, service.server_port))
            for _ in range(250):  # until the malformed ones are in (counted as dropped), not a guess
                if sum(service.metrics.dropped.values.values()) >= 7 * (number + 1):
                    break
                await asyncio.sleep(0.02)

        await exchange(0)  # (what the first exchange sets up for good is not a leak)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for number in range(1, 4):
                await exchange(number)
            assert gc.collect() == 0, Counter(type(thing).__name__ for thing in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert sum(service.metrics.dropped.values.values()) == 4 * 7  # (the malformed ones did reach it)


def test_a_refused_leasequery_is_said_in_the_log_once_a_minute_per_interface() -> None:
    """A requester listed by another address than the giaddr it sends (a BNG's loopback for its
    uplink's) had every DHCPLEASEQUERY vanish without a word but for a counter (ISC dhcpd logs
    "LEASEQUERY not allowed"). Once a minute per interface, not per giaddr: forgeable."""
    service = DHCPService(Config(dhcp=config(leasequery_requesters=["198.18.1.1"])),
                          ServiceContext(None, EventBus(), CollectorRegistry(), _healthy, clock=lambda: T0))  # type: ignore[arg-type]
    service._interfaces = {IFINDEX: "eth1"}
    service._send = lambda reply, *_: None  # type: ignore[method-assign]
    query = DHCPPacket(op=1, xid=0x4C51, ciaddr=IPv4Address("198.18.1.100"), giaddr=IPv4Address("198.18.1.2"),
                       options=((Option.MESSAGE_TYPE, bytes((DHCPMessageType.LEASEQUERY,))),))
    with capture_logs() as logs:
        service._socket = DatagramsSocket([(encode(query), SERVER)] * 3)  # type: ignore[assignment]
        service._readable()
    assert service.metrics.dropped.get("leasequery_not_allowed") == 3
    [refused] = [entry for entry in logs if entry["event"] == "dhcp.leasequery.refused"]
    assert (refused["interface"], refused["requester"], refused["log_level"]) == ("eth1", "198.18.1.2", "warning")


def test_a_relay_no_subnet_serves_is_said_in_the_log_once_a_minute_per_interface() -> None:
    """A BNG relaying from an address no subnet names had its clients go without an address and
    without a word, but for a counter (ISC dhcpd logs "unknown network segment"). Once a minute
    per interface, not per giaddr: a forger could vary that at will."""
    service = DHCPService(Config(dhcp=config()), ServiceContext(None, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                _healthy, clock=lambda: T0))
    service._interfaces = {IFINDEX: "eth1"}
    service._send = lambda reply, *_: None  # type: ignore[method-assign]
    strays = [encode(message(DHCPMessageType.DISCOVER, bytes([2, 0, 0x5E, 0x10, 3, n]), xid=n, giaddr=f"198.18.200.{n}"))
              for n in range(1, 4)]
    with capture_logs() as logs:
        service._socket = DatagramsSocket([(d, SERVER) for d in strays])  # type: ignore[assignment]
        service._readable()
    assert service.metrics.dropped.get("no_subnet") == 3
    [none] = [entry for entry in logs if entry["event"] == "dhcp.subnet.none"]
    assert (none["interface"], none["relay"], none["log_level"]) == ("eth1", "198.18.200.1", "warning")


async def test_a_store_outage_is_one_line_in_the_log_and_health_follows_the_stores_commits(tmp_path: Path) -> None:
    """From a bug hunt (ispd on PostgreSQL, its server stopped for 12 s under perfdhcp at 20
    clients/s): 244 dhcp.lease.write_failed lines, one per withheld reply; and the service's
    health said "lease writes to the store are failing" after the server was back, until a
    client's lease was written. Now one line when it starts (and when its error changes, or
    every so often), one when it ends; health follows the store's commits."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    writes = WritesDown(store)
    service = DHCPService(Config(dhcp=config()), ServiceContext(store, EventBus(), CollectorRegistry(), _healthy))
    service._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # (listening, for health())
    unwritten = SimpleNamespace(writes=[(None, "ack")], reply=None, events=[])  # never read: the BEGIN fails
    try:
        with capture_logs() as logs:
            for _ in range(20):
                await service._commit([(unwritten, 0.0, "request", IFINDEX)])  # type: ignore[list-item]
            assert service.metrics.dropped.get("store_error") == 20
            assert not service.health().ok
            writes.up()
            await store.check_writes()  # as /healthz does
            assert service.health().ok
            await service._commit([(SimpleNamespace(writes=[], reply=None, events=[]), 0.0, "inform", IFINDEX)])  # type: ignore[list-item]
        assert [(e["event"], e.get("failed_batches")) for e in logs if e["event"].startswith("dhcp.lease.write")] == [
            ("dhcp.lease.write_failed", None), ("dhcp.lease.write_restored", 20)]
    finally:
        service._socket.close()
        await store.close()


def test_an_interface_made_again_is_followed_while_another_listed_one_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An interface re-created is served again within reclaim_interval_seconds (README): it was
    not while another of dhcp.interfaces was missing (a VLAN taken down for good or for a while),
    the lookup of every name failing as a whole; its clients' packets went on being dropped as
    interface_not_served until the other came back or a restart."""
    service = DHCPService(Config(dhcp=config(interfaces=["eth1", "eth2"])),
                          ServiceContext(None, EventBus(), CollectorRegistry(), _healthy,  # type: ignore[arg-type]
                                         clock=lambda: T0))
    service._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    links = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]  # (stand-ins)
    service._interfaces, service._link_sockets = {7: "eth1", 8: "eth2"}, {7: links[0], 8: links[1]}
    indexes = {"eth1": 17}  # eth1 made again; eth2 gone for now

    def if_nametoindex(name: str) -> int:
        if name not in indexes:
            raise OSError(19, "No such device")
        return indexes[name]

    monkeypatch.setattr(socket, "if_nametoindex", if_nametoindex)
    try:
        service._follow_interfaces()
        assert service._interfaces == {17: "eth1"}
        assert service._link_sockets == {17: links[0]}
        indexes["eth2"] = 18  # back
        service._follow_interfaces()
        assert service._interfaces == {17: "eth1", 18: "eth2"}
        assert service._link_sockets[17] is links[0] and 18 in service._link_sockets
    finally:
        service._socket.close()
        for link in [*links, *service._link_sockets.values()]:
            link.close()
