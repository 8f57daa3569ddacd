"""The DHCPv4 transport: one UDP socket on port 67, the engine, the store, the bus.

Theory of operation
-------------------
One socket bound to 0.0.0.0:67 receives both broadcasts from direct clients and unicasts from
relays and renewing clients; IP_PKTINFO tells each datagram's interface (messages from
interfaces not in ``[dhcp] interfaces`` are dropped), the local address it came to, which is
the server identifier unless the subnet sets one, and the address it was sent to: whether it
was broadcast decides if the engine may take the client's subnet from ciaddr. Datagrams are
read in batches straight from the socket when it is readable, decoded and handed to the engine
synchronously.

A reply that promises a lease (ACK) is held until the lease is durable: replies from one batch
wait for one group-committed store write, then go out. OFFER and NAK go at once. Broadcasts
leave by the receiving interface (IP_PKTINFO on send). A reply to a client that has no address
yet and did not ask for a broadcast is written as a whole IPv4/UDP datagram to an AF_PACKET
socket with the client's MAC as the link-layer destination, as Kea and dnsmasq do: the kernel
could not ARP for an address the client does not have yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import sys
import time
from array import array
from contextlib import AsyncExitStack
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from ispd.dhcp.codec import DHCPDecodeError, decode, encode
from ispd.dhcp.config import DHCPConfig
from ispd.dhcp.engine import Destination as To
from ispd.dhcp.engine import DHCPEngine, Ignored, Outcome, Received, Reply
from ispd.dhcp.identifiers import mac_text
from ispd.dhcp.metrics import DHCPMetrics
from ispd.dhcp.options import DHCPMessageType
from ispd.events import LeaseEnded, LeaseGranted, follow_subscribers
from ispd.listeners import set_receive_buffer
from ispd.logs import LogThrottle, get_logger
from ispd.service import Health, Service, ServiceContext, ServiceStartError, StoreWrites, describe_os_error
from ispd.store.errors import StoreError
from ispd.store.models import Lease, LeaseService

if TYPE_CHECKING:
    from ispd.config import Config

log = get_logger("ispd.dhcp")

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
ETH_P_IP = 0x0800
READ_BATCH = 64
MAX_DATAGRAM = 4096
RECEIVE_BUFFER_BYTES = 2 * 1024 * 1024
UNSERVED_LOG_SECONDS = 60.0
_LITTLE_ENDIAN = sys.byteorder == "little"
_TYPE_NAMES = {t: t.name.lower() for t in DHCPMessageType}


def _publishes_names(config: Config) -> bool:
    """Whether leases' host names reach DNS: a lease domain is configured (its DNS service may
    be a standby's, so not whether this node's is enabled)."""
    return config.dns.lease_names.domain is not None


def _interface_name(ifindex: int) -> str | None:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071), summing 16-bit words in C rather than in Python."""
    if len(data) % 2:
        data += b"\x00"
    words = array("H", data)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    # Summed in host order; a one's-complement sum survives the byte swap intact.
    result = ~total & 0xFFFF
    return socket.htons(result) if _LITTLE_ENDIAN else result


def ipv4_udp_datagram(payload: bytes, source: IPv4Address, destination: IPv4Address, source_port: int,
                      destination_port: int) -> bytes:
    udp_length = 8 + len(payload)
    pseudo = source.packed + destination.packed + struct.pack("!BBH", 0, socket.IPPROTO_UDP, udp_length)
    udp_header = struct.pack("!HHHH", source_port, destination_port, udp_length, 0)
    udp_sum = _checksum(pseudo + udp_header + payload) or 0xFFFF
    udp_header = struct.pack("!HHHH", source_port, destination_port, udp_length, udp_sum)
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + udp_length, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
                            source.packed, destination.packed)
    ip_header = ip_header[:10] + struct.pack("!H", _checksum(ip_header)) + ip_header[12:]
    return ip_header + udp_header + payload


class DHCPService(Service):
    name = "dhcp"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config: DHCPConfig = config.dhcp
        self.context = context
        self.engine = DHCPEngine(self.config, publishes_names=_publishes_names(config))
        self.metrics = DHCPMetrics()
        self._socket: socket.socket | None = None
        self._link_sockets: dict[int, socket.socket] = {}
        self._interfaces: dict[int, str] = {}
        self._unserved_logged = LogThrottle(UNSERVED_LOG_SECONDS)  # by ifindex
        self._untrusted_logged = LogThrottle(UNSERVED_LOG_SECONDS)  # by interface
        self._exhausted_logged = LogThrottle(UNSERVED_LOG_SECONDS)  # by the pools tried
        self._no_subnet_logged = LogThrottle(UNSERVED_LOG_SECONDS)  # by interface (not by giaddr: forgeable)
        self._leasequery_logged = LogThrottle(UNSERVED_LOG_SECONDS)  # by interface (not by giaddr: forgeable)
        self._pending: list[tuple[Outcome, float, str, int]] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._reclaimer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes = StoreWrites(log, "dhcp.lease.write_failed", "dhcp.lease.write_restored")
        self.server_port = 0
        # Clients listen on 68; a server on another port (tests, benchmarks) talks to port + 1.
        self.client_port = 68

    # --- lifecycle

    async def start(self, stack: AsyncExitStack) -> None:
        self._loop = asyncio.get_running_loop()
        store = self.context.store
        try:
            leases = await store.list_leases(include_ended=True)
            reservations = await store.list_reservations()
            subscribers = await store.list_subscribers()
        except StoreError as exc:
            raise ServiceStartError(f"dhcp: cannot load leases from the store: {exc}") from None
        self.engine.load(leases, reservations, {s.id: s.status for s in subscribers})
        self._subscribe(stack)
        self._open(self.config)
        stack.callback(self._close)
        for collector in self.metrics.collectors(lambda: self.engine.pool_usage(self.context.clock())):
            self.context.registry.register(collector)
            stack.callback(self.context.registry.unregister, collector)
        self._reclaimer = asyncio.create_task(self._reclaim_periodically(), name="ispd-dhcp-reclaim")
        stack.push_async_callback(self._cancel_reclaimer)
        log.info("dhcp.started", interfaces=self.config.interfaces, port=self.server_port,
                 leases=len(leases), reservations=len(reservations))

    async def stop(self) -> None:
        if self._socket is not None and self._loop is not None:
            self._loop.remove_reader(self._socket.fileno())
        self._flush()
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def reload(self, old: Config, new: Config) -> None:
        self.engine.publishes_names = _publishes_names(new)
        if old.dhcp == new.dhcp:
            return
        listen_changed = (old.dhcp.interfaces, old.dhcp.port) != (new.dhcp.interfaces, new.dhcp.port)
        if listen_changed:
            self._close()
            try:
                self._open(new.dhcp)
            except ServiceStartError:
                self._open(self.config)  # keep serving as before; the supervisor logs the refusal
                raise
        self.config = new.dhcp
        self.engine.reconfigure(new.dhcp)
        log.info("dhcp.reloaded", interfaces=new.dhcp.interfaces, listen_changed=listen_changed)

    def health(self) -> Health:
        if self._socket is None:
            return Health(False, "not listening")
        if self._writes.still_failing(self.context.store):
            return Health(False, "lease writes to the store are failing")
        return Health(True)

    def describe(self) -> str:
        return f"dhcp on {', '.join(self.config.interfaces)}"

    async def _cancel_reclaimer(self) -> None:
        task, self._reclaimer = self._reclaimer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- sockets

    def _open(self, config: DHCPConfig) -> None:
        interfaces: dict[int, str] = {}
        for name in config.interfaces:
            try:
                interfaces[socket.if_nametoindex(name)] = name
            except OSError:
                raise ServiceStartError(f"dhcp: there is no network interface named {name!r}") from None
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            set_receive_buffer(sock, RECEIVE_BUFFER_BYTES)
            sock.setblocking(False)
            sock.bind(("0.0.0.0", config.port))
        except OSError as exc:
            sock.close()
            raise ServiceStartError(f"dhcp: cannot listen on 0.0.0.0:{config.port}: {describe_os_error(exc)}") from None
        links: dict[int, socket.socket] = {}
        try:
            for index in interfaces:
                # Protocol 0: this socket only sends; it must not receive a copy of every frame.
                link = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
                link.setblocking(False)
                links[index] = link
        except OSError as exc:
            for link in links.values():
                link.close()
            sock.close()
            raise ServiceStartError(f"dhcp: cannot open a link-layer socket: {describe_os_error(exc)}") from None
        self._socket, self._link_sockets, self._interfaces = sock, links, interfaces
        self.server_port = int(sock.getsockname()[1])
        self.client_port = 68 if self.server_port == 67 else self.server_port + 1
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._readable)

    def _close(self) -> None:
        if self._socket is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
        for link in self._link_sockets.values():
            link.close()
        self._link_sockets = {}

    # --- receiving

    def _readable(self) -> None:
        sock = self._socket
        if sock is None:
            return
        now = self.context.clock()
        for _ in range(READ_BATCH):
            try:
                data, ancillary, _flags, sender = sock.recvmsg(MAX_DATAGRAM, 64)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("dhcp.receive.failed", error=describe_os_error(exc))
                break
            started = time.perf_counter()
            ifindex, local, destination = 0, None, None
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= PKTINFO.size:
                    ifindex, spec_dst, header_dst = PKTINFO.unpack_from(value)
                    if spec_dst != b"\x00\x00\x00\x00":
                        local = IPv4Address(spec_dst)
                    # Broadcast or unicast: the engine trusts ciaddr to place a client only in a unicast.
                    destination = IPv4Address(header_dst)
            interface = self._interfaces.get(ifindex)
            if interface is None:
                self.metrics.dropped.inc("interface_not_served")
                if self._unserved_logged.due(ifindex, now):
                    # Relayed requests arrive on the uplink: a relay whose packets all vanish here
                    # is most often an uplink missing from `interfaces`. Said once a minute.
                    log.warning("dhcp.packet.interface_not_served", ifindex=ifindex,
                                interface=_interface_name(ifindex), relayed=len(data) >= 28 and data[24:28] != bytes(4),
                                hint="add the interface to dhcp.interfaces to serve clients (or relays) there")
                continue
            try:
                self._handle(data, ifindex, interface, local, destination, sender, now, started)
            except Exception:  # a bug on one packet must not stop the server answering the next
                self.metrics.dropped.inc("internal_error")
                log.error("dhcp.packet.failed", exc_info=True)

    def _handle(self, data: bytes, ifindex: int, interface: str, local: IPv4Address | None,
                destination: IPv4Address | None, sender: Any, now: float, started: float) -> None:
        try:
            packet = decode(data)
        except DHCPDecodeError as exc:
            self.metrics.dropped.inc(str(exc.reason))
            return
        message_type = packet.message_type
        type_name = _TYPE_NAMES[message_type] if message_type is not None else "unknown"
        self.metrics.received.inc(type_name)
        received = Received(packet, interface, local, destination, _source_address(sender), _source_port(sender))
        outcome = self.engine.handle(received, now)
        if outcome.untrusted_option82:
            self.metrics.untrusted_option82.inc()
            if self._untrusted_logged.due(interface, now):
                # Where access switches insert option 82 themselves (giaddr stays 0), circuit-id and
                # remote-id reservations stop matching: said once a minute per interface.
                log.warning("dhcp.option82.ignored", interface=interface, hw_address=mac_text(packet.hw_address),
                            hint="option 82 in a packet no relay forwarded is not used; if your access "
                                 'switches insert it (DHCP snooping), set dhcp.option82_without_relay = "use"')
        if outcome.ignored is not None:
            self.metrics.dropped.inc(str(outcome.ignored))
            if outcome.ignored is Ignored.NO_ADDRESS and self._exhausted_logged.due(outcome.exhausted_pools, now):
                # The client gets no OFFER and keeps asking: said once a minute per set of pools,
                # as Kea's ALLOC_ENGINE_V4_ALLOC_FAIL, so that the log says why it has no address.
                log.warning("dhcp.pool.exhausted", pools=list(outcome.exhausted_pools), interface=interface,
                            relay=str(packet.giaddr) if int(packet.giaddr) else None,
                            hw_address=mac_text(packet.hw_address),
                            hint="no free address for this client: see ispd_dhcp_pool_assigned_addresses and "
                                 "ispd_dhcp_pool_declined_addresses; add a range or shorten the lease time")
            if outcome.ignored is Ignored.NO_SUBNET and self._no_subnet_logged.due(interface, now):
                # ISC dhcpd's "unknown network segment": a relay no subnet names (a BNG given a new
                # address, a subnet left out of the config) has its clients go without a word.
                log.warning("dhcp.subnet.none", interface=interface,
                            relay=str(packet.giaddr) if int(packet.giaddr) else None,
                            ciaddr=str(packet.ciaddr) if int(packet.ciaddr) else None,
                            hw_address=mac_text(packet.hw_address),
                            hint="no [[dhcp.subnet]] holds the relay's address (giaddr, or its link-selection) "
                                 "or, for an INFORM, the client's: add the subnet, or the relay to its "
                                 "relay_addresses")
            if outcome.ignored is Ignored.LEASEQUERY_REFUSED and self._leasequery_logged.due(interface, now):
                # A requester listed by another address than the giaddr it sends (a BNG's loopback
                # for its uplink's) had every query vanish without a word (ISC dhcpd logs "LEASEQUERY
                # not allowed, query ignored"): the BNG waits out its timeout for each subscriber.
                log.warning("dhcp.leasequery.refused", interface=interface,
                            requester=str(packet.giaddr) if int(packet.giaddr) else None, hops=packet.hops,
                            hint="a DHCPLEASEQUERY is answered only when its giaddr is in "
                                 "dhcp.leasequery_requesters and it came straight from there (hops 0)")
            if outcome.ignored is Ignored.NO_POOL and outcome.unserved is not None \
                    and self._exhausted_logged.due(outcome.unserved, now):
                subnet, client_class = outcome.unserved
                # Said apart from an exhausted pool: no range added helps here, a pool of the class does.
                log.warning("dhcp.pool.none", subnet=subnet, client_class=client_class, interface=interface,
                            relay=str(packet.giaddr) if int(packet.giaddr) else None,
                            hw_address=mac_text(packet.hw_address),
                            hint=f"the subnet has no pool for {client_class} clients (a suspended subscriber's "
                                 "devices need one with walled_garden = true): add one, or leave them unserved")
        if outcome.ipv6_only is not None and outcome.reply is not None:
            # RFC 8925: no address for a client that can do without one (NAT64 and DNS64 serve it).
            kind = "offer" if outcome.reply.packet.message_type is DHCPMessageType.OFFER else "ack"
            self.metrics.ipv6_only.inc(kind)
            log.info("dhcp.ipv6_only", message=kind, hw_address=mac_text(packet.hw_address), interface=interface,
                     relay=str(packet.giaddr) if int(packet.giaddr) else None, wait_seconds=outcome.ipv6_only)
        if outcome.declined:
            self.metrics.declines.inc()
            log.warning("dhcp.lease.declined", address=str(outcome.writes[0][0].address),
                        quarantine_seconds=self.config.decline_quarantine_seconds)
        if outcome.writes:
            self._pending.append((outcome, started, type_name, ifindex))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self._flush)
        elif outcome.reply is not None:
            self._send(outcome.reply, ifindex, started, type_name)

    # --- durable writes, then replies

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._commit(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _commit(self, batch: list[tuple[Outcome, float, str, int]]) -> None:
        writes: list[tuple[Lease, str]] = [w for outcome, *_ in batch for w in outcome.writes]
        try:
            refused = await self.context.store.record_leases(writes)
        except Exception as exc:  # StoreError, or a bug: either way these replies must not go out
            self.metrics.dropped.inc("store_error", amount=len(batch))
            self._writes.failed(exc, leases=len(writes))
            return
        self._writes.worked()
        for outcome, started, type_name, ifindex in batch:
            if refused and self._withheld(outcome, refused):
                continue
            if outcome.reply is not None:
                self._send(outcome.reply, ifindex, started, type_name)
            for event in outcome.events:
                self.context.bus.publish(event)

    def _withheld(self, outcome: Outcome, refused: dict[str, float]) -> bool:
        """Whether the store refused a lease of ``outcome`` (a RADIUS session took the address
        meanwhile, from a pool shared with RADIUS): no ACK, the client's next REQUEST is NAKed
        and its DISCOVER gets another address; the events of what was written still go out."""
        lost = [lease.address for lease, _ in outcome.writes if lease.address in refused]
        if not lost:
            return False
        for address in lost:
            self.engine.held_elsewhere(address, refused[address], refused=True)
            log.info("dhcp.lease.held_elsewhere", address=address, until=refused[address])
        self.metrics.dropped.inc(str(Ignored.HELD_ELSEWHERE))
        for event in outcome.events:
            if not (isinstance(event, LeaseGranted | LeaseEnded) and event.address in refused):
                self.context.bus.publish(event)
        return True

    # --- sending

    def _send(self, reply: Reply, ifindex: int, started: float, request_type: str) -> None:
        sock = self._socket
        if sock is None:
            return
        payload = encode(reply.packet)
        try:
            if reply.destination is To.RELAY:
                sock.sendto(payload, (str(reply.address), reply.port or self.server_port))
            elif reply.destination is To.UNICAST:
                sock.sendto(payload, (str(reply.address), self.client_port))
            elif reply.destination is To.BROADCAST:
                pktinfo = PKTINFO.pack(ifindex, reply.server_address.packed, b"\x00" * 4)
                sock.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)],
                              0, ("255.255.255.255", self.client_port))
            else:
                self._send_link(reply, ifindex, payload)
        except OSError as exc:
            self.metrics.dropped.inc("send_failed")
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.warning("dhcp.send.failed", destination=str(reply.address), error=describe_os_error(exc))
            return
        message_type = reply.packet.message_type
        self.metrics.sent.inc(_TYPE_NAMES[message_type] if message_type is not None else "unknown")
        self.metrics.latency[request_type].observe(time.perf_counter() - started)

    def _send_link(self, reply: Reply, ifindex: int, payload: bytes) -> None:
        link = self._link_sockets.get(ifindex)
        interface = self._interfaces.get(ifindex)
        if link is None or interface is None:
            raise OSError(errno.ENODEV, "no link-layer socket for the interface")
        datagram = ipv4_udp_datagram(payload, reply.server_address, reply.address, self.server_port,
                                     self.client_port)
        link.sendto(datagram, (interface, ETH_P_IP, 0, 0, reply.packet.hw_address))

    # --- expiry

    async def _reclaim_periodically(self) -> None:
        while True:
            self._follow_interfaces()
            try:
                outcome = self.engine.reclaim(self.context.clock())
            except Exception:  # a bug here must not end expiry for the life of the daemon
                log.error("dhcp.reclaim.failed", exc_info=True)
            else:
                if outcome.writes:
                    log.info("dhcp.leases.expired", count=len(outcome.writes))
                    self._pending.append((outcome, time.perf_counter(), "expiry", 0))
                    self._flush()
            await asyncio.sleep(self.config.reclaim_interval_seconds)

    def _follow_interfaces(self) -> None:
        """An interface deleted and made again (a VLAN or a veth re-created, a bond rebuilt) has a
        new index, and the packets arriving on it were dropped as interface_not_served, with a
        hint to add the very interface that is listed, until a restart. Looked at on each reclaim
        tick; the socket (bound to all interfaces) stays, the indexes follow the names. (An
        interface missing for now: when back, the others followed meanwhile.)"""
        current: dict[int, str] = {}
        for name in self.config.interfaces:
            with contextlib.suppress(OSError):  # (gone for now: nothing arrives on it)
                current[socket.if_nametoindex(name)] = name
        if current == self._interfaces or self._socket is None:
            return
        log.warning("dhcp.interfaces.changed", interfaces=self.config.interfaces, present=sorted(current.values()),
                    hint="an interface was made again (or is gone for now): serving each under its index")
        links = {name: self._link_sockets.pop(index) for index, name in self._interfaces.items()
                 if index in self._link_sockets}
        for link in self._link_sockets.values():
            link.close()
        self._link_sockets = {}
        for index, name in list(current.items()):
            if name in links:
                self._link_sockets[index] = links.pop(name)
                continue
            try:  # (one back after it was gone: its socket was closed)
                made = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
            except OSError:
                del current[index]  # not served yet: the next tick tries again
                continue
            made.setblocking(False)
            self._link_sockets[index] = made
        for link in links.values():
            link.close()
        self._interfaces = current

    # --- what other processes and services change

    def _subscribe(self, stack: AsyncExitStack) -> None:
        bus, engine = self.context.bus, self.engine

        def granted_elsewhere(event: LeaseGranted) -> None:
            if event.service != LeaseService.DHCP:  # a RADIUS session's address from a shared pool
                engine.held_elsewhere(event.address, event.expires_at, event.subscriber_id,
                                      now=self.context.clock())

        def ended_elsewhere(event: LeaseEnded) -> None:
            if event.service != LeaseService.DHCP:
                engine.freed_elsewhere(event.address)

        unsubscribers = [
            *follow_subscribers(bus, engine),
            bus.subscribe(LeaseGranted, granted_elsewhere),
            bus.subscribe(LeaseEnded, ended_elsewhere),
        ]
        for unsubscribe in unsubscribers:
            stack.callback(unsubscribe)


def _source_port(sender: Any) -> int | None:
    try:
        return int(sender[1])
    except (TypeError, IndexError, ValueError):
        return None


def _source_address(sender: Any) -> IPv4Address | None:
    try:
        return IPv4Address(sender[0])
    except (TypeError, IndexError, ValueError):
        return None
