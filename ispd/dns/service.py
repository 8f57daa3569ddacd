"""The DNS transport: UDP and TCP listeners, the engine, the bus, metrics.

UDP: a datagram is first offered to the engine's synchronous cache-hit path inside the receive
callback (no task, no decode); only a miss becomes a task. TCP (RFC 7766): length-prefixed
queries, pipelined — each miss is its own task and replies go out in the order they are ready
— with an idle timeout, a cap on queries in flight per connection and on connections.

Lease names and the walled garden follow the bus: ``LeaseGranted``/``LeaseEnded`` add and remove
names at once; subscriber status events move a subscriber's leased addresses in and out of the
walled garden. Both are loaded from the store at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import Any, cast

from ispd.config import Config
from ispd.dns.cache import AnswerCache, CacheLimits, RRsetCache
from ispd.dns.config import DNSConfig
from ispd.dns.engine import DNSEngine
from ispd.dns.hints import HintsError, load_root_hints
from ispd.dns.localdata import LocalData
from ispd.dns.metrics import DNSMetrics
from ispd.dns.policy import CompiledPolicyZone, Policy, compile_policy_zone
from ispd.dns.resolver import ForwardZone, Resolver, ResolverSettings
from ispd.dns.upstream import UpstreamTransport
from ispd.dns.walledgarden import WalledGarden
from ispd.dns.wire import name_from_text
from ispd.dns.zone import ZoneError, load_zone_file
from ispd.events import (
    LeaseEnded,
    LeaseGranted,
    SubscriberClosed,
    SubscriberDeleted,
    SubscriberEvent,
    SubscriberResumed,
    SubscriberSuspended,
)
from ispd.logs import get_logger
from ispd.service import Health, Service, ServiceContext, ServiceStartError, describe_os_error
from ispd.store.errors import StoreError
from ispd.store.models import LeaseState, SubscriberStatus

log = get_logger("ispd.dns")
_LENGTH = struct.Struct("!H")
MAX_SLOW_TASKS = 10_000  # misses being resolved at once; beyond it new misses are dropped


def resolver_settings(config: DNSConfig) -> ResolverSettings:
    r = config.resolver
    return ResolverSettings(
        qname_minimisation=r.qname_minimisation, use_0x20=r.use_0x20, edns_buffer_size=r.edns_buffer_size,
        do_ipv4=r.do_ipv4, do_ipv6=r.do_ipv6, max_referrals=r.max_referrals, max_cname_chain=r.max_cname_chain,
        max_queries_per_request=r.max_queries_per_request, max_ns_depth=r.max_ns_depth,
        initial_timeout=r.upstream_timeout_initial_seconds, min_timeout=r.upstream_timeout_min_seconds,
        max_timeout=r.upstream_timeout_max_seconds)


def forward_zones(config: DNSConfig) -> list[ForwardZone]:
    return [ForwardZone(name_from_text(z.name), tuple(str(a) for a in z.servers), recursive=not z.stub)
            for z in config.forward_zone]


def cache_limits(config: DNSConfig, share: float) -> CacheLimits:
    c = config.cache
    return CacheLimits(max_bytes=int(c.max_bytes * share), min_ttl=c.min_ttl, max_ttl=c.max_ttl,
                       max_negative_ttl=c.max_negative_ttl, stale_seconds=c.stale_seconds)


def check_files(config: DNSConfig) -> tuple[list[str], list[str]]:
    """For ``ispd check-config``: the errors in the files the [dns] section names (root hints,
    local and policy zones, local records) that would stop the service from starting, and the
    warnings (policy records that would be skipped)."""
    problems: list[str] = []
    warnings: list[str] = []
    try:
        load_root_hints(config.root_hints)
    except HintsError as exc:
        problems.append(str(exc))
    for zone in config.local_zone:
        try:
            load_zone_file(zone.file, zone.name)
        except ZoneError as exc:
            problems.append(str(exc))
    for policy in config.policy_zone:
        try:
            compiled = compile_policy_zone(policy.file, policy.name, action=policy.action)
        except (ZoneError, ValueError) as exc:
            problems.append(str(exc))
            continue
        warnings.extend(f"{p} (the record is skipped)" for p in compiled.problems)
    try:
        LocalData(lease_domain=config.lease_names.domain, reverse_networks=config.lease_names.reverse_networks,
                  static_records=config.local_records)
    except (ZoneError, ValueError) as exc:
        problems.append(f"local_records: {exc}")
    return problems, warnings


class DNSService(Service):
    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config = config.dns
        self.context = context
        self.metrics = DNSMetrics()
        self.upstream = UpstreamTransport(
            source_v4=str(self.config.resolver.outgoing_ipv4) if self.config.resolver.outgoing_ipv4 else None,
            source_v6=str(self.config.resolver.outgoing_ipv6) if self.config.resolver.outgoing_ipv6 else None)
        self.rrsets = RRsetCache(cache_limits(self.config, 0.5))
        self.answers = AnswerCache(cache_limits(self.config, 0.5), prefetch=self.config.cache.prefetch)
        self.resolver: Resolver | None = None
        self.engine: DNSEngine | None = None
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.base_events.Server] = []
        self._slow: set[asyncio.Task[None]] = set()
        self._tcp_connections = 0
        self.bound: list[tuple[str, int]] = []
        self.local: LocalData | None = None
        self.policy = Policy([])
        self.policy_zones: list[CompiledPolicyZone] = []
        self.walled = WalledGarden(self.config.walled_garden)

    # --- lifecycle ---

    async def start(self, stack: AsyncExitStack) -> None:
        try:
            hints = load_root_hints(self.config.root_hints)
        except HintsError as exc:
            raise ServiceStartError(f"dns: {exc}") from None
        clock = time.monotonic
        self.resolver = Resolver(self.rrsets, self.upstream, hints, clock, resolver_settings(self.config),
                                 forward_zones(self.config))
        c = self.config
        self.engine = DNSEngine(self.resolver, self.answers, clock, allow=list(c.allow),
                                rate_limit_qps=c.rate_limit_qps, request_timeout=c.resolver.request_timeout_seconds,
                                stale_answer_ttl=c.cache.stale_answer_ttl,
                                stale_client_timeout=c.cache.stale_client_timeout_seconds)
        await self._load_data(self.config)
        await self._load_subscribers()
        self._subscribe(stack)
        await self._open(stack)
        stack.push_async_callback(self._cancel_tasks)
        for collector in self.metrics.collectors(self):
            self.context.registry.register(collector)
            stack.callback(self.context.registry.unregister, collector)
        log.info("dns.started", listen=[f"{h}:{p}" for h, p in self.bound], root_servers=len(hints))

    async def _load_data(self, config: DNSConfig) -> None:
        """Local data and policy zones from config and files (parsed off the loop); errors
        raise ``ServiceStartError`` and leave what is loaded untouched."""
        loop = asyncio.get_running_loop()
        try:
            zones = [await loop.run_in_executor(None, load_zone_file, z.file, z.name) for z in config.local_zone]
            local = LocalData(lease_domain=config.lease_names.domain,
                              reverse_networks=config.lease_names.reverse_networks,
                              static_records=config.local_records, zones=zones)
            policy_zones = [await loop.run_in_executor(None, partial(compile_policy_zone, z.file, z.name,
                                                                     action=z.action))
                            for z in config.policy_zone]
        except (ZoneError, ValueError) as exc:
            raise ServiceStartError(f"dns: {exc}") from None
        for zone in policy_zones:
            log.info("dns.policy_zone.loaded", zone=zone.source, records=zone.records_loaded,
                     skipped_bad=zone.skipped_bad, skipped_unsupported=zone.skipped_unsupported)
            for problem in zone.problems[:10]:
                log.warning("dns.policy_zone.record_skipped", problem=problem)
        self.local = local
        self.policy = Policy(policy_zones)
        self.policy_zones = policy_zones
        assert self.engine is not None
        self.engine.local_lookup = local.answer
        self.engine.policy_lookup = self.policy.match
        self.engine.walled_lookup = self.walled.lookup

    async def _load_subscribers(self) -> None:
        """Current leases (names, and who holds each address) and suspended subscribers."""
        store = self.context.store
        try:
            leases = await store.list_leases()
            suspended = await store.list_subscribers(SubscriberStatus.SUSPENDED)
        except StoreError as exc:
            raise ServiceStartError(f"dns: cannot load leases from the store: {exc}") from None
        now = self.context.clock()
        for lease in leases:
            if lease.state == LeaseState.BOUND and lease.expires_at > now:
                self._lease_granted(lease.address, lease.hostname, lease.subscriber_id, lease.expires_at)
        for subscriber in suspended:
            self.walled.set_suspended(subscriber.id, True)
        self._walled_changed()

    def _lease_granted(self, address: str, hostname: str | None, subscriber_id: int | None,
                       expires_at: float) -> bool:
        """Publish the lease's name; whether the walled set changed."""
        walled_changed = self.walled.lease_granted(address, subscriber_id)
        if hostname and self.local is not None and self.config.lease_names.domain:
            ttl = min(self.config.lease_names.ttl, max(0, int(expires_at - self.context.clock())))
            self.local.add_lease_name(hostname, address, ttl)
        return walled_changed

    def _walled_changed(self) -> None:
        if self.engine is not None:
            self.engine.set_walled(self.walled.walled_addresses())

    def _subscribe(self, stack: AsyncExitStack) -> None:
        bus = self.context.bus

        def granted(event: LeaseGranted) -> None:
            if self._lease_granted(event.address, event.hostname, event.subscriber_id, event.expires_at):
                self._walled_changed()

        def ended(event: LeaseEnded) -> None:
            if self.local is not None:
                self.local.remove_lease_name(event.address, event.hostname)
            if self.walled.lease_ended(event.address):
                self._walled_changed()

        def status(suspended: bool) -> Callable[[SubscriberEvent], None]:
            def apply(event: SubscriberEvent) -> None:
                if self.walled.set_suspended(event.subscriber_id, suspended):
                    self._walled_changed()
            return apply

        unsubscribers = [
            bus.subscribe(LeaseGranted, granted),
            bus.subscribe(LeaseEnded, ended),
            bus.subscribe(SubscriberSuspended, status(True)),
            bus.subscribe(SubscriberResumed, status(False)),
            bus.subscribe(SubscriberClosed, status(False)),
            bus.subscribe(SubscriberDeleted, status(False)),
        ]
        for unsubscribe in unsubscribers:
            stack.callback(unsubscribe)

    async def _open(self, stack: AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        assert self.engine is not None
        for address in self.config.listen:
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UDPProtocol(self), local_addr=(address.host, address.port), reuse_port=False)
                port = udp.get_extra_info("sockname")[1]
                tcp = await asyncio.start_server(self._serve_tcp, address.host, port, reuse_address=True,
                                                 backlog=1024)
            except OSError as exc:
                raise ServiceStartError(f"dns: cannot listen on {address}: {describe_os_error(exc)}") from None
            sock = udp.get_extra_info("socket")
            with contextlib.suppress(OSError):  # a burst of misses must not overflow the default buffer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self._udp.append(udp)
            self._tcp.append(tcp)
            self.bound.append((address.host, port))
            stack.callback(udp.close)
            stack.callback(tcp.close)

    async def stop(self) -> None:
        for tcp in self._tcp:
            tcp.close()
        for udp in self._udp:
            udp.close()
        if self._slow:
            await asyncio.wait(list(self._slow), timeout=2)

    async def _cancel_tasks(self) -> None:
        for task in list(self._slow):
            task.cancel()
        if self.engine is not None:
            await self.engine.cancel_background()

    async def reload(self, old: Config, new: Config) -> None:
        """Like Unbound's reload: the files (root hints, local and policy zones) are read again
        even when the config is unchanged — SIGHUP is how an operator says "I changed a zone" —
        and the answer cache is emptied; what iteration learnt (RRsets, server RTTs) stays."""
        if old.dns.listen != new.dns.listen:
            raise ServiceStartError("dns: a change of listen addresses needs a restart")
        assert self.engine is not None and self.resolver is not None
        self.config = new.dns
        self.engine.set_allow(list(new.dns.allow))
        self.resolver.settings = resolver_settings(new.dns)
        self.resolver.forward_zones = {z.name: z for z in forward_zones(new.dns)}
        try:
            self.resolver.hints = load_root_hints(new.dns.root_hints)
        except HintsError as exc:
            raise ServiceStartError(f"dns: {exc}") from None
        await self._load_data(new.dns)
        self.walled.configure(new.dns.walled_garden)
        await self._load_subscribers()  # lease names again, into the new local data
        self.answers.clear()

    def health(self) -> Health:
        if not self._udp:
            return Health(False, "not listening")
        return Health(True)

    def describe(self) -> str:
        return "dns on " + ", ".join(f"{h}:{p}" for h, p in self.bound)

    # --- queries ---

    def spawn_slow(self, data: bytes, client: str, transport: asyncio.DatagramTransport, addr: Any) -> None:
        if len(self._slow) >= MAX_SLOW_TASKS:
            self.metrics.overload_drops += 1
            return
        task = asyncio.ensure_future(self._answer_udp(data, client, transport, addr))
        self._slow.add(task)
        task.add_done_callback(self._slow.discard)

    async def _answer_udp(self, data: bytes, client: str, transport: asyncio.DatagramTransport, addr: Any) -> None:
        assert self.engine is not None
        started = time.perf_counter()
        reply = await self.engine.answer(data, client, tcp=False)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)
            self.metrics.slow_latency.observe(time.perf_counter() - started)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.engine is not None
        engine = self.engine
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        if self._tcp_connections >= self.config.tcp_max_connections:
            self.metrics.tcp_refused += 1
            writer.close()
            return
        self._tcp_connections += 1
        self.metrics.tcp_connections += 1
        pending: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(self.config.tcp_max_pipelined)

        async def answer(data: bytes, started: float) -> None:
            try:
                reply = await engine.answer(data, client, tcp=True)
                if reply is not None and not writer.is_closing():
                    writer.write(_LENGTH.pack(len(reply)) + reply)
                    self.metrics.slow_latency.observe(time.perf_counter() - started)
            finally:
                slots.release()

        try:
            while True:
                async with asyncio.timeout(self.config.tcp_idle_seconds):
                    (length,) = _LENGTH.unpack(await reader.readexactly(2))
                    data = await reader.readexactly(length)
                started = time.perf_counter()
                reply = engine.answer_from_cache(data, client, True)
                if reply is not None:
                    writer.write(_LENGTH.pack(len(reply)) + reply)
                    self.metrics.hit_latency.observe(time.perf_counter() - started)
                    continue
                await slots.acquire()
                task = asyncio.ensure_future(answer(data, started))
                pending.add(task)
                task.add_done_callback(pending.discard)
                if writer.transport.get_write_buffer_size() > 256 * 1024:
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            if pending:
                await asyncio.wait(pending, timeout=self.config.resolver.request_timeout_seconds)
            self._tcp_connections -= 1
            writer.close()


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: DNSService) -> None:
        self.service = service
        assert service.engine is not None
        self.engine = service.engine
        self.hit_latency = service.metrics.hit_latency
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport quacks like asyncio.DatagramTransport without subclassing it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        started = time.perf_counter()
        transport = self.transport
        assert transport is not None  # datagrams arrive only after connection_made
        reply = self.engine.answer_from_cache(data, addr[0], False)
        if reply is not None:
            transport.sendto(reply, addr)
            self.hit_latency.observe(time.perf_counter() - started)
            return
        self.service.spawn_slow(data, addr[0], transport, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors for replies to gone clients
        pass
