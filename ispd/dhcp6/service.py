"""The DHCPv6 transport: one UDP socket on port 547, the engine, the store.

Theory of operation
-------------------
One IPv6 socket bound to [::]:547 joins All_DHCP_Relay_Agents_and_Servers (ff02::1:2) on each
of ``[dhcp6] interfaces``: direct clients multicast there from their link-local addresses, and
relay agents send Relay-forward messages to one of our addresses. IPV6_PKTINFO says which
interface a datagram came in on (others are dropped) and whether it was sent to the group.
Datagrams are read in batches when the socket is readable, decoded and handed to the engine
synchronously.

A Reply that promises a binding is held until the binding is durable: the replies of one batch
wait for one group-committed store write, then go out. Advertise, and replies that promise
nothing, go at once. Every reply goes back to where its request came from: a direct client's
link-local address and port on the interface it came in on, or the relay (a Relay-reply that
wraps the reply once for each relay on the way, RFC 8415 §19.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
import uuid
from contextlib import AsyncExitStack
from ipaddress import IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ispd.dhcp6.codec import (
    DHCP6DecodeError,
    Message,
    MessageType,
    RelayForward,
    decode,
    encode,
    encode_relay_reply,
)
from ispd.dhcp6.config import DHCP6Config
from ispd.dhcp6.engine import DHCP6Engine, Ignored6, Outcome6, Received6
from ispd.dhcp6.metrics import DHCP6Metrics
from ispd.events import Binding6Ended, Binding6Granted, SessionStarted, SessionStopped, follow_subscribers
from ispd.listeners import bound_socket, set_receive_buffer
from ispd.logs import LogThrottle, get_logger
from ispd.service import Health, Service, ServiceContext, ServiceStartError, StoreWrites, describe_os_error
from ispd.store.errors import StoreError
from ispd.store.models import Lease6

if TYPE_CHECKING:
    from ispd.config import Config

log = get_logger("ispd.dhcp6")

ALL_DHCP_RELAY_AGENTS_AND_SERVERS = socket.inet_pton(socket.AF_INET6, "ff02::1:2")
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
PKTINFO6 = struct.Struct("=16sI")  # struct in6_pktinfo: address, ifindex
READ_BATCH = 64
MAX_DATAGRAM = 65535
RECEIVE_BUFFER_BYTES = 2 * 1024 * 1024
UNSERVED_LOG_SECONDS = 60.0
_TYPE_NAMES: dict[int, str] = {int(t): t.name.lower() for t in MessageType}
# So that two machines never make one DUID from their machine ids (RFC 6355 DUID-UUID).
_DUID_NAMESPACE = uuid.UUID("5f1b7e0a-3c0d-4a8e-9a57-0d7d1f2a6c31")


def server_duid(config: DHCP6Config, machine_id: Path = Path("/etc/machine-id")) -> bytes:
    """The configured DUID, else a DUID-UUID (type 4, RFC 6355) that this machine always makes."""
    if config.server_duid is not None:
        return bytes.fromhex(config.server_duid.replace(":", "").replace("-", ""))
    try:
        seed = machine_id.read_text().strip() or socket.gethostname()
    except OSError:
        seed = socket.gethostname()
    return b"\x00\x04" + uuid.uuid5(_DUID_NAMESPACE, seed).bytes


def _membership(index: int) -> bytes:
    """ff02::1:2 on the interface of ``index``, as IPV6_JOIN_GROUP and IPV6_LEAVE_GROUP take it."""
    return ALL_DHCP_RELAY_AGENTS_AND_SERVERS + struct.pack("@I", index)


def _publishes_names(config: Config) -> bool:
    """Whether addresses' host names reach DNS: a lease domain is configured (its DNS service may
    be a standby's, so not whether this node's is enabled), as for DHCPv4."""
    return config.dns.lease_names.domain is not None


class DHCP6Service(Service):
    name = "dhcp6"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config: DHCP6Config = config.dhcp6
        self.context = context
        self.engine = DHCP6Engine(self.config, server_duid(self.config), publishes_names=_publishes_names(config))
        self.metrics = DHCP6Metrics()
        self._socket: socket.socket | None = None
        self._interfaces: dict[int, str] = {}
        self._unserved_logged = LogThrottle(UNSERVED_LOG_SECONDS)
        self._leasequery_logged = LogThrottle(UNSERVED_LOG_SECONDS)  # by interface (not by source: forgeable)
        self._pending: list[tuple[Outcome6, tuple[RelayForward, ...], Any, float, str]] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._reclaimer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes = StoreWrites(log, "dhcp6.binding.write_failed", "dhcp6.binding.write_restored")
        self.server_port = 0

    # --- lifecycle

    async def start(self, stack: AsyncExitStack) -> None:
        self._loop = asyncio.get_running_loop()
        store = self.context.store
        try:
            leases = await store.list_leases6(include_ended=True)
            reservations = await store.list_reservations()
            subscribers = await store.list_subscribers()
            sessions = await store.list_sessions(open_only=True, limit=1 << 62)
        except StoreError as exc:
            raise ServiceStartError(f"dhcp6: cannot load bindings from the store: {exc}") from None
        self.engine.load(leases, reservations, {s.id: s.status for s in subscribers})
        for session in sessions:
            self.engine.session_opened(session.id, session.ipv6_networks())
        self._subscribe(stack)
        self._open(self.config)
        stack.callback(self._close)
        for collector in self.metrics.collectors(lambda: self.engine.pool_usage(self.context.clock())):
            self.context.registry.register(collector)
            stack.callback(self.context.registry.unregister, collector)
        self._reclaimer = asyncio.create_task(self._reclaim_periodically(), name="ispd-dhcp6-reclaim")
        stack.push_async_callback(self._cancel_reclaimer)
        log.info("dhcp6.started", interfaces=self.config.interfaces, port=self.server_port, bindings=len(leases),
                 server_duid=self.engine.server_duid.hex(":"))

    async def stop(self) -> None:
        if self._socket is not None and self._loop is not None:
            self._loop.remove_reader(self._socket.fileno())
        self._flush()
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))

    async def reload(self, old: Config, new: Config) -> None:
        if old.dhcp6 != new.dhcp6 and server_duid(old.dhcp6) != server_duid(new.dhcp6):
            raise ServiceStartError("dhcp6.server_duid: a change needs a restart (clients would drop every binding)")
        self.engine.publishes_names = _publishes_names(new)  # ([dns.lease_names] is not this section's)
        if old.dhcp6 == new.dhcp6:
            return
        listen_changed = (old.dhcp6.interfaces, old.dhcp6.port) != (new.dhcp6.interfaces, new.dhcp6.port)
        if listen_changed:
            self._close()
            try:
                self._open(new.dhcp6)
            except ServiceStartError:
                self._open(self.config)  # keep serving as before; the supervisor logs the refusal
                raise
        self.config = new.dhcp6
        self.engine.reconfigure(new.dhcp6)
        log.info("dhcp6.reloaded", interfaces=new.dhcp6.interfaces, listen_changed=listen_changed)

    def health(self) -> Health:
        if self._socket is None:
            return Health(False, "not listening")
        if self._writes.still_failing(self.context.store):
            return Health(False, "binding writes to the store are failing")
        return Health(True)

    def describe(self) -> str:
        return f"dhcp6 on {', '.join(self.config.interfaces)}"

    async def _cancel_reclaimer(self) -> None:
        task, self._reclaimer = self._reclaimer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the socket

    def _open(self, config: DHCP6Config) -> None:
        interfaces: dict[int, str] = {}
        for name in config.interfaces:
            try:
                interfaces[socket.if_nametoindex(name)] = name
            except OSError:
                raise ServiceStartError(f"dhcp6: there is no network interface named {name!r}") from None
        try:
            sock = bound_socket("::", config.port, socket.SOCK_DGRAM, reuse_address=True)
        except OSError as exc:
            raise ServiceStartError(f"dhcp6: cannot listen on [::]:{config.port}: {describe_os_error(exc)}") from None
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            set_receive_buffer(sock, RECEIVE_BUFFER_BYTES)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ServiceStartError(f"dhcp6: cannot set up [::]:{config.port}: {describe_os_error(exc)}") from None
        for index, name in interfaces.items():
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, _membership(index))
            except OSError as exc:
                sock.close()
                raise ServiceStartError(f"dhcp6: cannot join ff02::1:2 on {name}: {describe_os_error(exc)} "
                                        "(is IPv6 enabled on it?)") from None
        self._socket, self._interfaces = sock, interfaces
        self.server_port = int(sock.getsockname()[1])
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._readable)

    def _close(self) -> None:
        if self._socket is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None

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
                log.warning("dhcp6.receive.failed", error=describe_os_error(exc))
                break
            started = time.perf_counter()
            ifindex, destination = 0, b""
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(value) >= PKTINFO6.size:
                    destination, ifindex = PKTINFO6.unpack_from(value)
            interface = self._interfaces.get(ifindex)
            if interface is None:
                self.metrics.dropped.inc("interface_not_served")
                if self._unserved_logged.due(ifindex, now):
                    log.warning("dhcp6.packet.interface_not_served", ifindex=ifindex,
                                hint="add the interface to dhcp6.interfaces to serve clients (or relays) there")
                continue
            try:
                self._handle(data, interface, destination == ALL_DHCP_RELAY_AGENTS_AND_SERVERS, sender, now, started)
            except Exception:  # a bug on one packet must not stop the server answering the next
                self.metrics.dropped.inc("internal_error")
                log.error("dhcp6.packet.failed", exc_info=True)

    def _handle(self, data: bytes, interface: str, multicast: bool, sender: Any, now: float, started: float) -> None:
        try:
            decoded = decode(data)
        except DHCP6DecodeError as exc:
            self.metrics.dropped.inc(str(exc.reason))
            return
        relays: tuple[RelayForward, ...] = ()
        if isinstance(decoded, RelayForward):
            chain, message = decoded.chain()
            relays = tuple(chain)
        else:
            message = decoded
        type_name = _TYPE_NAMES.get(message.type, "unknown")
        self.metrics.received.inc(type_name)
        outcome = self.engine.handle(Received6(message, interface, relays, multicast, _source_address(sender)), now)
        if outcome.ignored is not None:
            self.metrics.dropped.inc(str(outcome.ignored))
            if outcome.ignored is Ignored6.LEASEQUERY_REFUSED and self._leasequery_logged.due(interface, now):
                # A requester listed by another address than it sends from had every query vanish
                # without a word but for a counter: said once a minute per interface.
                source = _source_address(sender)
                log.warning("dhcp6.leasequery.refused", interface=interface,
                            requester=str(source) if source is not None else None, relayed=bool(relays),
                            hint="a LEASEQUERY is answered only from an address in "
                                 "dhcp6.leasequery_requesters, sent straight to ispd (not relayed)")
        if outcome.declined:
            self.metrics.declines.inc(amount=outcome.declined)
            log.warning("dhcp6.address.declined", prefixes=[lease.prefix for lease, _ in outcome.writes],
                        quarantine_seconds=self.config.decline_quarantine_seconds)
        if outcome.writes:
            self._pending.append((outcome, relays, sender, started, type_name))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                assert self._loop is not None
                self._loop.call_soon(self._flush)
        elif outcome.reply is not None:
            self._send(outcome.reply, relays, sender, started, type_name)

    # --- durable writes, then replies

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._commit(batch))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _commit(self, batch: list[tuple[Outcome6, tuple[RelayForward, ...], Any, float, str]]) -> None:
        writes: list[tuple[Lease6, str]] = [w for outcome, *_ in batch for w in outcome.writes]
        try:
            await self.context.store.record_leases6(writes)
        except Exception as exc:  # StoreError, or a bug: either way these replies must not go out
            self.metrics.dropped.inc("store_error", amount=len(batch))
            self._writes.failed(exc, bindings=len(writes))
            return
        self._writes.worked()
        now = self.context.clock()
        for outcome, relays, sender, started, type_name in batch:
            if outcome.reply is not None:
                try:
                    self._send(outcome.reply, relays, sender, started, type_name)
                except Exception:  # a bug in one reply must not hold back the rest of the batch
                    self.metrics.dropped.inc("internal_error")
                    log.error("dhcp6.packet.failed", exc_info=True)
            for lease, event in outcome.writes:
                self.context.bus.publish(_announcement(lease, event, now))

    # --- sending

    def _send(self, reply: Message, relays: tuple[RelayForward, ...], sender: Any, started: float,
              request_type: str) -> None:
        sock = self._socket
        if sock is None:
            return
        try:
            payload = encode(reply)
            for relay in reversed(relays):  # wrapped from the client's side out (RFC 8415 §19.3)
                payload = encode_relay_reply(relay, payload)
        except struct.error:  # an option over 65535 bytes: a client that asked for thousands of IAs
            self.metrics.dropped.inc("reply_too_large")
            return
        if len(payload) > MAX_DATAGRAM:
            self.metrics.dropped.inc("reply_too_large")
            return
        try:
            sock.sendto(payload, sender)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                self.metrics.dropped.inc("reply_too_large")
                return
            self.metrics.dropped.inc("send_failed")
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                log.warning("dhcp6.send.failed", destination=str(sender[0]), error=describe_os_error(exc))
            return
        self.metrics.sent.inc(_TYPE_NAMES[MessageType(reply.type)])
        self.metrics.latency[request_type].observe(time.perf_counter() - started)

    # --- expiry

    async def _reclaim_periodically(self) -> None:
        while True:
            self._follow_interfaces()
            try:
                outcome = self.engine.reclaim(self.context.clock())
            except Exception:  # a bug here must not end expiry for the life of the daemon
                log.error("dhcp6.reclaim.failed", exc_info=True)
            else:
                if outcome.writes:
                    log.info("dhcp6.bindings.expired", count=len(outcome.writes))
                    self._pending.append((outcome, (), None, time.perf_counter(), "expiry"))
                    self._flush()
            await asyncio.sleep(self.config.reclaim_interval_seconds)

    def _follow_interfaces(self) -> None:
        """An interface deleted and made again (a VLAN or a veth re-created, a bond rebuilt) has a
        new index, and the socket's ff02::1:2 membership went with the old one: its clients'
        Solicits would vanish unseen, uncounted, until a restart. Looked at on each reclaim tick;
        the socket stays and joins the group on the new indexes. (An interface missing for now:
        the others are followed meanwhile, and it is joined when back, as DHCPv4's follower
        does.)"""
        current: dict[int, str] = {}
        for name in self.config.interfaces:
            with contextlib.suppress(OSError):  # (gone for now: nothing arrives on it)
                current[socket.if_nametoindex(name)] = name
        sock = self._socket
        if sock is None:  # a reload's reopen failed (health says not listening): again, whole
            try:
                self._open(self.config)
            except ServiceStartError as exc:
                log.error("dhcp6.interfaces.reopen_failed", error=str(exc))
            return
        if current == self._interfaces:
            return
        log.warning("dhcp6.interfaces.changed", interfaces=self.config.interfaces, present=sorted(current.values()),
                    hint="an interface was made again (or is gone for now): listening on each under its index")
        for index in self._interfaces.keys() - current.keys():
            with contextlib.suppress(OSError):  # (most often gone with its interface)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, _membership(index))
        for index, name in list(current.items()):
            if index in self._interfaces:
                continue
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, _membership(index))
            except OSError as exc:
                del current[index]  # not listened on yet: the next tick tries again
                log.error("dhcp6.interfaces.join_failed", interface=name, error=describe_os_error(exc),
                          hint="is IPv6 enabled on it?")
        self._interfaces = current

    # --- what other processes and services change

    def _subscribe(self, stack: AsyncExitStack) -> None:
        for unsubscribe in follow_subscribers(self.context.bus, self.engine):
            stack.callback(unsubscribe)
        bus, engine = self.context.bus, self.engine
        stack.callback(bus.subscribe(SessionStarted, lambda e: engine.session_opened(e.session_id, e.networks())))
        stack.callback(bus.subscribe(SessionStopped, lambda e: engine.session_closed(e.session_id)))


def _source_address(sender: Any) -> IPv6Address | None:
    try:
        return IPv6Address(str(sender[0]).split("%", 1)[0])
    except (TypeError, IndexError, ValueError):
        return None


def _announcement(lease: Lease6, event: str, now: float) -> Binding6Granted | Binding6Ended:
    """What the bus hears of a durable binding change (DNS: lease names, who holds a prefix)."""
    if event in ("granted", "renewed"):
        return Binding6Granted(at=now, prefix=lease.prefix, kind=str(lease.kind), expires_at=lease.expires_at,
                               hostname=lease.hostname, subscriber_id=lease.subscriber_id,
                               renewal=event == "renewed")
    return Binding6Ended(at=now, prefix=lease.prefix, kind=str(lease.kind), reason=event, hostname=lease.hostname,
                         subscriber_id=lease.subscriber_id)
