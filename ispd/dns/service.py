"""The DNS transport: UDP and TCP listeners, the engine, the bus, metrics.

UDP: a datagram is first offered to the engine's synchronous cache-hit path inside the receive
callback (no task, no decode); only a miss becomes a task. TCP (RFC 7766): length-prefixed
queries, pipelined — each miss is its own task and replies go out in the order they are ready
— with an idle timeout, a cap on queries in flight per connection and on connections.

Lease names and the walled garden follow the bus: ``LeaseGranted``/``LeaseEnded`` add and remove
names at once; subscriber status events move a subscriber's addresses in and out of the walled
garden. A subscriber's addresses are its leases and, for a NAS that gives addresses from its
own pools, its open RADIUS sessions' (``SessionStarted``/``SessionStopped``). All are loaded
from the store at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import math
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from ispd import __version__
from ispd.collector import collection_paused
from ispd.config import Config
from ispd.configtypes import SocketAddress
from ispd.control import CommandError
from ispd.dns.admin import parse_name_argument
from ispd.dns.aggressive import NsecIndex
from ispd.dns.cache import AnswerCache, CacheLimits, RRsetCache
from ispd.dns.config import DNSConfig, DnstapConfig, DoHConfig, DoQConfig, EncryptedListenerConfig, outgoing_addresses
from ispd.dns.datafiles import DataFiles, DiskFiles, FileStore, HandedFiles
from ispd.dns.ddr import certificate_warnings, designated_records
from ispd.dns.defaultzones import DefaultZones
from ispd.dns.dns64 import DNS64
from ispd.dns.dnssec import TrustAnchor
from ispd.dns.dnstap import Encoder, HttpProtocol, SocketProtocol
from ispd.dns.engine import DNSEngine
from ispd.dns.frontend import Answerer, ResolutionBudget, TransportStats
from ispd.dns.hints import HintsError, load_root_hints, load_trust_anchors
from ispd.dns.https import DoHResponder, serve_h2
from ispd.dns.localdata import LocalData
from ispd.dns.metrics import DNSMetrics
from ispd.dns.policy import CompiledPolicyZone, Policy, compile_policy_zone
from ispd.dns.processes import COMMAND_SECONDS, ExtraProcesses, Handler, add_counts, first
from ispd.dns.quic import QuicListener, QuicSettings, doq_listener, http3_listener
from ispd.dns.resolver import (
    LOCALHOST_NETWORKS,
    AskableAddresses,
    ForwardZone,
    Hints,
    Resolution,
    Resolver,
    ResolverSettings,
)
from ispd.dns.rollover import RETRY_SECONDS, AnchorTracker
from ispd.dns.scopes import PolicyScopes, SubscriberPlans
from ispd.dns.streams import serve_dns_stream
from ispd.dns.tap import DnstapSink, FrameStreamClient
from ispd.dns.tls import TLSListener
from ispd.dns.upstream import UpstreamTransport
from ispd.dns.validator import Validator
from ispd.dns.walledgarden import WalledGarden
from ispd.dns.wire import name_from_text, name_to_text
from ispd.dns.zone import Zone, ZoneError, load_zone_file, load_zone_text
from ispd.dns.zonelimit import ZoneRateLimiter
from ispd.events import (
    Binding6Ended,
    Binding6Granted,
    LeaseEnded,
    LeaseGranted,
    PeerEventsMissed,
    PlanAdded,
    SessionStarted,
    SessionStopped,
    SubscriberAdded,
    SubscriberClosed,
    SubscriberDeleted,
    SubscriberEvent,
    SubscriberPlanChanged,
    SubscriberResumed,
    SubscriberSuspended,
)
from ispd.listeners import (
    Acceptor,
    CertificateError,
    ConnectionGate,
    bound_socket,
    check_address_free,
    forget_connection_error,
    open_datagram_listener,
    server_tls_context,
)
from ispd.logs import get_logger
from ispd.service import Health, Service, ServiceContext, ServiceSpec, ServiceStartError, describe_os_error
from ispd.store.errors import StoreError
from ispd.store.models import LeaseService, LeaseState, SubscriberStatus
from ispd.workers import WorkerService

log = get_logger("ispd.dns")

TCP_ACCEPT_RETRY_SECONDS = 1.0  # after a failed accept (as DoT's, and asyncio's own servers)
ZONE_LIMIT_REPORT_SECONDS = 10.0  # how often zones newly over their rate limit are logged
# Misses being resolved at once, every transport together (ispd.dns.frontend.ResolutionBudget):
# beyond it new UDP misses are dropped, and queries over connections wait. Measured with misses
# under a zone that answers after 2.5 s, UDP probes of cached names meanwhile (p50/p99, 2 cores):
# 300 TCP/DoT connections pipelining 100 each: 1,024: 0.4/58-69 ms, 1.4k fds, 172 MB; 2,048:
# 0.6-0.9/91-132 ms, 2.4k fds, 184-191 MB; 4,096: 7-28/412-471 ms, 4.4k fds, 215 MB; 10,000:
# 13-1,019/1,859-4,224 ms, 10k fds, 285 MB. A UDP flood of 5,000 new names/s: 2,048: 0.7-0.8/
# 931-1,517 ms and 9-10k answered; 10,000: 5-1,171/3,618-5,982 ms and 7-17k answered (CPU-bound,
# the rest lost in the socket buffer, uncounted). Normal misses (bench/dns.py, tens of ms each)
# need a few hundred; at 2,048 they went no slower than at 10,000. Unbound's num-queries-per-thread
# is 1024; 2,048 keeps twice its throughput to a slow zone (budget / its latency).
MAX_SLOW_TASKS = 2048
# Lease names handled between two returns to the event loop when a start or reload publishes
# them all: one costs 15-35 µs, and 60 000 in one go held every query 2-4 s.
LEASES_PER_STEP = 1000


DEFAULT_NTA_SECONDS = 86400  # RFC 7646 §2: negative trust anchors lapse; a day unless told
MAX_NTA_SECONDS = 7 * 86400  # RFC 7646 §4: no more than a week
NOT_AN_NTA = "is not a negative trust anchor"  # (a worker saying so to a delete has it gone already)


def configured_negative_anchors(config: DNSConfig) -> set[bytes]:
    return {name_from_text(name) for name in config.dnssec.negative_trust_anchors}


def make_validator(config: DNSConfig, resolver: Resolver, clock: Callable[[], float],
                   read: Callable[[Path], bytes] = Path.read_bytes) -> Validator | None:
    """The DNSSEC validator ``config`` asks for over ``resolver`` (None with validation off);
    raises ``HintsError`` for a bad trust anchor file."""
    if not config.dnssec.validation:
        return None
    anchors = load_trust_anchors(config.dnssec.trust_anchor_file, read)

    async def fetch(name: bytes, rtype: int) -> Resolution:
        # Not held to the zone rate limit (past_limit): a DS or DNSKEY set the limit kept from
        # the validator would make a flooded parent's other signed children bogus for
        # bogus_ttl_seconds. Each is asked once per zone and cached, and only for a zone that a
        # query within the limit led to.
        return await resolver.resolve(name, rtype, validate=False, past_limit=True)

    return Validator(anchors, fetch, resolver.cache, clock, negative_anchors=configured_negative_anchors(config),
                     bogus_ttl=config.dnssec.bogus_ttl_seconds, aggressive_nsec=config.dnssec.aggressive_nsec,
                     max_signature_checks=config.dnssec.max_signature_checks,
                     max_nsec3_calculations=config.dnssec.max_nsec3_calculations)


def resolver_settings(config: DNSConfig) -> ResolverSettings:
    r = config.resolver
    return ResolverSettings(
        qname_minimisation=r.qname_minimisation, use_0x20=r.use_0x20, edns_buffer_size=r.edns_buffer_size,
        do_ipv4=r.do_ipv4, do_ipv6=r.do_ipv6, max_referrals=r.max_referrals, max_cname_chain=r.max_cname_chain,
        max_queries_per_request=r.max_queries_per_request, max_ns_depth=r.max_ns_depth,
        initial_timeout=r.upstream_timeout_initial_seconds, min_timeout=r.upstream_timeout_min_seconds,
        max_timeout=r.upstream_timeout_max_seconds,
        do_not_query=(LOCALHOST_NETWORKS if r.do_not_query_localhost else ()) + tuple(r.do_not_query_addresses),
        zone_rate_limit_qps=r.zone_rate_limit_qps, zone_rate_limit_factor=r.zone_rate_limit_factor,
        zone_rate_limits={name_from_text(limit.name): limit.qps for limit in r.zone_rate_limit_for},
        private_addresses=tuple(r.private_addresses), private_domains=tuple(map(name_from_text, r.private_domains)),
        nat64_prefix=config.dns64.prefix if isinstance(config.dns64.prefix, IPv6Network) else None)


def make_dns64(config: DNSConfig) -> DNS64 | None:
    d = config.dns64
    if not isinstance(d.prefix, IPv6Network):  # (unset; the config refuses an IPv4 one)
        return None
    return DNS64(d.prefix, [n for n in d.exclude if isinstance(n, IPv6Network)], d.synthesize_all)


def forward_zones(config: DNSConfig) -> list[ForwardZone]:
    return [ForwardZone(name_from_text(z.name), tuple(z.servers), recursive=not z.stub, first=z.first)
            for z in config.forward_zone]


def cache_limits(config: DNSConfig, share: float) -> CacheLimits:
    c = config.cache
    return CacheLimits(max_bytes=int(c.max_bytes * share), min_ttl=c.min_ttl, max_ttl=c.max_ttl,
                       max_negative_ttl=c.max_negative_ttl, stale_seconds=c.stale_seconds)


def hints_in_do_not_query(config: DNSConfig, hints: Hints) -> str | None:
    """A private root on addresses ispd does not query (loopback, for a lab): its servers are
    asked, being configured, but the servers they delegate to nearby are not."""
    judge = AskableAddresses(resolver_settings(config), ())
    refused = [a for _, addresses in hints for a in addresses if judge.refused(a)]
    if not refused:
        return None
    return (f"root_hints name servers at {', '.join(refused)}, inside resolver.do_not_query_localhost or "
            "do_not_query_addresses: ispd asks them, but not the servers they refer it to in those networks "
            "(for a private root on this host, set resolver.do_not_query_localhost = false)")


def unusable_anchors(anchors: Iterable[TrustAnchor]) -> str | None:
    """A warning for trust anchors of only algorithms or digests ispd does not implement: what
    is under them is insecure (RFC 4035 §5.2), never validated, which nothing else would show
    (Unbound warns alike: "the anchor is ignored")."""
    names = sorted(name_to_text(anchor.zone) for anchor in anchors if (anchor.ds or anchor.keys) and not anchor.usable)
    if not names:
        return None
    return (f"the trust anchor for {', '.join(names)} has no supported algorithm or digest (DNSKEY algorithms "
            f"8, 10, 13 to 16; DS digests 1, 2, 4): nothing under it is validated, every answer is insecure")


def default_zones(config: DNSConfig, local: LocalData) -> DefaultZones:
    """The locally served zones ``config`` leaves to be answered here: not where a forward or
    stub zone, or a delegation in a local zone (resolved as a stub zone), sends names elsewhere."""
    sent_elsewhere = [name_from_text(z.name) for z in config.forward_zone] + [cut.name for cut in local.delegations()]
    return DefaultZones(config.locally_served_zones, config.locally_served_zones_exclude, sent_elsewhere,
                        private_root=config.root_hints is not None)


def shadowed_forward_zones(config: DNSConfig, local: LocalData) -> str | None:
    """A warning for forward and stub zones inside local data: local data is answered before
    anything is resolved, so a forward zone at or below a local zone (or the lease domain) was
    never asked, its names NXDOMAIN from the local zone, and nothing said so. (Below a
    delegation in a local zone a forward zone of the same name does come first.)"""
    names = [zone.name for zone in config.forward_zone if local.answers_below(name_from_text(zone.name))]
    if not names:
        return None
    return (f"forward_zone {', '.join(names)}: inside local data (a local_zone or lease_names.domain), which "
            "answers every name there itself: never asked (to send part of a local zone to other servers, "
            "give it NS records in the zone file)")


def check_files(config: DNSConfig) -> tuple[list[str], list[str]]:
    """For ``ispd check-config``: the errors in the files the [dns] section names (root hints,
    local and policy zones, local records) that would stop the service from starting, and the
    warnings (policy records that would be skipped)."""
    problems: list[str] = []
    warnings: list[str] = []
    try:
        hints = load_root_hints(config.root_hints)
    except HintsError as exc:
        problems.append(str(exc))
    else:
        warning = hints_in_do_not_query(config, hints)
        if warning is not None:
            warnings.append(warning)
    if config.dnssec.validation:
        try:
            anchors = load_trust_anchors(config.dnssec.trust_anchor_file)
        except HintsError as exc:
            problems.append(f"dnssec.trust_anchor_file: {exc}")
        else:
            if (warning := unusable_anchors(anchors)) is not None:
                warnings.append(f"dnssec.trust_anchor_file: {warning}")
        if config.root_hints is not None and config.dnssec.trust_anchor_file is None:
            warnings.append("root_hints name a root of your own but dnssec.trust_anchor_file is unset: answers "
                            "are validated against the IANA root anchors, which a private root does not match "
                            "(give its anchors, or set dnssec.validation = false)")
    zones = []
    for zone in config.local_zone:
        try:
            zones.append(load_zone_file(zone.file, zone.name))
        except ZoneError as exc:
            problems.append(str(exc))
    for policy in config.policy_zone:
        try:
            compiled = compile_policy_zone(policy.file, policy.name, action=policy.action)
        except (ZoneError, ValueError) as exc:
            problems.append(str(exc))
            continue
        warnings.extend(f"{p} (the record is skipped)" for p in compiled.problems)
        # Only the first messages are kept: a feed with thousands of bad records must not be
        # taken for one with a hundred, nor its unsupported triggers pass unmentioned.
        if compiled.skipped_bad > len(compiled.problems):
            warnings.append(f"{compiled.source}: {compiled.skipped_bad} bad records skipped in all "
                            f"(only the first {len(compiled.problems)} are listed)")
        if compiled.skipped_unsupported:
            warnings.append(f"{compiled.source}: {compiled.skipped_unsupported} records skipped: "
                            f"triggers other than QNAME (rpz-ip, rpz-nsdname, rpz-nsip, rpz-client-ip) "
                            f"are not supported")
    try:
        local = LocalData(lease_domain=config.lease_names.domain,
                          reverse_networks=config.lease_names.served_reverse_networks,
                          static_records=config.local_records, zones=zones,
                          designated=designated_records(config))  # as the start builds it
    except (ZoneError, ValueError) as exc:
        problems.append(f"local data: {exc}")
    else:
        if (warning := shadowed_forward_zones(config, local)) is not None:
            warnings.append(warning)
    for name, listener in encrypted_listeners(config):
        assert listener.certificate is not None and listener.private_key is not None
        try:
            server_tls_context(listener.certificate, listener.private_key, [])
        except CertificateError as exc:
            problems.append(f"{name}: {exc}")
    warnings += certificate_warnings(config)
    return problems, warnings


def named_files(config: DNSConfig) -> list[Path]:
    """Every file ``config`` has the service read (``ispd.dns.datafiles``)."""
    paths = [z.file for z in config.local_zone] + [z.file for z in config.policy_zone]
    if config.root_hints is not None:
        paths.append(config.root_hints)
    if config.dnssec.validation and config.dnssec.trust_anchor_file is not None:
        paths.append(config.dnssec.trust_anchor_file)
    for _, section in encrypted_listeners(config):
        assert section.certificate is not None and section.private_key is not None
        paths += [section.certificate, section.private_key]
    return [Path(path) for path in paths]


def _text(files: DataFiles, path: Path) -> str:
    """A zone file's text as the service has it; ``ZoneError`` when it cannot be had. Bytes
    that are not UTF-8 are kept (surrogate escapes), as ``read_zone_file`` keeps them."""
    try:
        return files.read(path).decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ZoneError(f"{path}: cannot read: {exc.strerror or exc}") from None


# (Both run in an executor, beside the data in use: see ispd.collector.collection_paused.)
def _load_local_zone(files: DataFiles, path: Path, origin: str) -> Zone:
    with collection_paused():
        return load_zone_text(_text(files, path), origin, source=str(path))


def _compile_policy_zone(files: DataFiles, path: Path, origin: str, action: str) -> CompiledPolicyZone:
    with collection_paused():
        return compile_policy_zone(_text(files, path), origin, action=action, source_name=str(path))


def encrypted_listeners(config: DNSConfig) -> list[tuple[str, EncryptedListenerConfig]]:
    """The enabled encrypted transports' sections, by config key."""
    sections: list[tuple[str, EncryptedListenerConfig]] = [("dot", config.dot), ("doh", config.doh),
                                                           ("doq", config.doq)]
    return [(name, section) for name, section in sections if section.enabled]


class DNSService(Service):
    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config = config.dns
        self.context = context
        # Several processes (``ispd.dns.processes``): all share the listeners; the first (the
        # main process's service) starts the others and speaks for them all.
        self.full_config = config
        self.reuse_port = config.dns.processes > 1 or context.instance > 1
        self.first = context.instance == 1  # with several processes: the one that opens the listeners first
        self.extras: ExtraProcesses | None = None  # the other processes, in the first (from start)
        # Where the files (zones, certificates...) come from: the disk in the first process, which
        # keeps what it loaded for the workers (``file_store``); in a worker, what it was handed.
        self.files: DataFiles
        if context.handed_files is not None:
            self.files = HandedFiles(context.handed_files)
        else:
            self.files = DiskFiles(remember=self.first and config.dns.processes > 1)
        self.file_store: FileStore | None = None
        self.metrics = DNSMetrics()
        self.tap = DnstapSink()
        source_v4, source_v6 = outgoing_addresses(self.config)
        self.upstream = UpstreamTransport(tap=self.tap, source_v4=source_v4, source_v6=source_v6)
        self.rrsets = RRsetCache(cache_limits(self.config, 0.5))
        self.answers = AnswerCache(cache_limits(self.config, 0.5), prefetch=self.config.cache.prefetch)
        self.resolver: Resolver | None = None
        self.engine: DNSEngine | None = None
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: Acceptor | None = None  # accepts from the TCP listening sockets
        self._tcp_accepting: set[asyncio.Task[None]] = set()  # connections being set up
        self._tcp_stopping = False  # stop() has begun: a connection accepted before is not served
        self._slow: set[asyncio.Task[None]] = set()
        self.budget = ResolutionBudget(MAX_SLOW_TASKS)
        self._tcp_gate: ConnectionGate | None = None
        self._gates: dict[str, ConnectionGate] = {}  # the encrypted listeners', by config key
        # Open DNS-over-TCP connections, by writer (with the reader and handler, to end them at stop).
        self._tcp_streams: dict[asyncio.StreamWriter, tuple[asyncio.StreamReader, asyncio.Task[Any]]] = {}
        self.bound: list[tuple[str, int]] = []
        self.local: LocalData | None = None
        self.policy = Policy([])
        self.policy_zones: list[CompiledPolicyZone] = []
        self.walled = WalledGarden(self.config.walled_garden)
        self.scopes = PolicyScopes()  # (the policy zones limited to some clients)
        self.plans = SubscriberPlans()
        # While the store's subscribers are read: the events heard meanwhile, to apply again.
        self._heard_meanwhile: list[Callable[[], None]] | None = None
        self._loading_subscribers = asyncio.Lock()  # one load at a time: each has its _heard_meanwhile
        self.transport_stats = {name: TransportStats() for name in ("tcp", "tls", "https", "http3", "quic")}
        # Encrypted listeners by config key ("dot", "doh", "doh3", "doq"), for reloads.
        self.tls_listeners: dict[str, TLSListener] = {}
        self.quic_listeners: dict[str, QuicListener] = {}
        self.doh_responders: list[DoHResponder] = []

    # --- lifecycle ---

    async def start(self, stack: AsyncExitStack) -> None:
        try:
            hints = load_root_hints(self.config.root_hints, self.files.read)
        except HintsError as exc:
            raise ServiceStartError(f"dns: {exc}") from None
        if self.first and (warning := hints_in_do_not_query(self.config, hints)) is not None:
            log.warning("dns.root_hints.do_not_query", detail=warning)
        clock = time.monotonic
        self.resolver = Resolver(self.rrsets, self.upstream, hints, clock, resolver_settings(self.config),
                                 forward_zones(self.config))
        self.resolver.validator = self._validator(self.config, clock)
        self._anchor_trackers: list[asyncio.Task[None]] = []
        await self._track_anchors()
        stack.push_async_callback(self._stop_anchor_tracking)
        c = self.config
        self.engine = DNSEngine(self.resolver, self.answers, clock, allow=list(c.allow),
                                rate_limit_qps=c.rate_limit_qps, request_timeout=c.resolver.request_timeout_seconds,
                                stale_answer_ttl=c.cache.stale_answer_ttl,
                                stale_client_timeout=c.cache.stale_client_timeout_seconds)
        self.engine.set_dns64(make_dns64(c), list(c.dns64.clients) or None)
        self.engine.servfail_log.enabled = c.log_servfail
        self.engine.client_view = self._client_view
        await self._load_data(self.config)
        self._subscribe(stack)  # (first: what happens while the store is read is heard too)
        await self._load_subscribers()
        await self._open(stack)
        stack.push_async_callback(self._cancel_tasks)
        self._configure_tap(self.config.dnstap)
        stack.push_async_callback(self.tap.retire)
        reporter = asyncio.ensure_future(self._report_zone_limits(self.resolver.zone_limiter))

        async def stop_reporting() -> None:  # awaited: a task still pending when the loop closes is logged as destroyed
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

        stack.push_async_callback(stop_reporting)
        # With several processes, /metrics shows their series added up (ExtraProcesses.metrics).
        several = self.config.processes > 1 and self.first
        registry = CollectorRegistry(auto_describe=True) if several else self.context.registry
        for collector in self.metrics.collectors(self):
            registry.register(collector)
            stack.callback(registry.unregister, collector)
        if self.first:
            self._remove_leftovers()
        if several:
            store = self._open_file_store(stack)
            try:
                store.use(store.put(self._take_files(), named_files(self.config)))
                store.prune()  # (what a daemon killed before it could clean up left behind)
            except OSError as exc:
                raise ServiceStartError(f"dns: cannot keep the files for the other processes in "
                                        f"{store.directory}: {describe_os_error(exc)}") from None
            extras = self.extras = ExtraProcesses(ServiceSpec("dns", lambda c: c.dns.enabled, DNSService),
                                                  self.full_config, self.context, self._hand_over,
                                                  store.manifest())
            await extras.start(stack)

            async def merged_metrics() -> bytes:
                return await extras.metrics(registry)

            self.context.metrics_sources.append(merged_metrics)
            stack.callback(self.context.metrics_sources.remove, merged_metrics)
        # `ispd dns cache dump|flush` over the control socket, for as long as the service runs.
        from ispd.dns.admin import DNSCacheAdmin

        cache_admin = DNSCacheAdmin(self.rrsets, self.answers, clock, processes=self.config.processes,
                                    nsec_index=self._nsec_index)
        stack.callback(cache_admin.register(self.context.control,
                                            flush=self._everywhere("dns.cache.flush", cache_admin.flush_command,
                                                                   add_counts)))
        # `ispd subscriber show`: which of a subscriber's addresses this resolver walls now.
        stack.callback(self.context.control.register("dns.walled.show", self._command_walled_show))
        for command, handler in (("dns.nta.add", self._everywhere("dns.nta.add", self._command_nta_add, first)),
                                 ("dns.nta.delete", self._everywhere(
                                     "dns.nta.delete", self._command_nta_delete, first,
                                     # (its copy lapsed a moment before ours)
                                     done_already=lambda error: NOT_AN_NTA in str(error))),
                                 ("dns.nta.list", self._command_nta_list)):
            stack.callback(self.context.control.register(command, handler))
        log.info("dns.started", listen=[str(SocketAddress(h, p)) for h, p in self.bound], root_servers=len(hints),
                 encrypted=[f"{key} {SocketAddress(h, p)}"
                            for key, listener in self._encrypted() for h, p in listener.bound])

    def _file_store_directory(self) -> Path:
        """Beside the store's real file: one daemon per store (its lock), so one directory per
        daemon, on disk (a large policy zone would fill /run's memory), and known at the next
        start, which removes what a killed daemon left (a private key among it)."""
        store = Path(os.path.realpath(self.full_config.store.path))
        return store.with_name(store.name + ".dns-files")

    def _remove_leftovers(self) -> None:
        """What a daemon killed before its clean stop left for its DNS workers (with processes = 1
        now, too): the copies of its files (a private key among them), and each worker's config
        snapshot (the whole config) and manifest beside the control socket. No worker of this
        daemon has started yet, and no other daemon runs on this store (its lock)."""
        shutil.rmtree(self._file_store_directory(), ignore_errors=True)
        control = self.full_config.daemon.control_socket
        if control is None:
            return
        for suffix in ("config.json", "files.json"):
            for left in control.parent.glob(f"{glob.escape(control.name)}.dns.*.{suffix}"):
                with contextlib.suppress(OSError):
                    left.unlink()

    def _open_file_store(self, stack: AsyncExitStack) -> FileStore:
        """The private directory of what this process loaded, for the workers."""
        try:
            store = self.file_store = FileStore(self._file_store_directory())
        except OSError as exc:
            raise ServiceStartError(f"dns: cannot make a directory for the other processes' files: "
                                    f"{describe_os_error(exc)}") from None
        stack.callback(store.close)
        return store

    def _take_files(self) -> dict[Path, bytes]:
        return self.files.take() if isinstance(self.files, DiskFiles) else {}

    async def _hand_over(self, worker: WorkerService) -> None:
        """To a DNS worker that has just started: the negative trust anchors added at run time
        (the config's it has), with what is left of their lifetimes."""
        validator = self.resolver.validator if self.resolver is not None else None
        if validator is None:
            return
        now = time.monotonic()
        configured = configured_negative_anchors(self.config)
        failures = []
        for name, until in validator.live_negative_anchors().items():
            if until == float("inf") or name in configured or until <= now:
                continue  # the config's it has; a lapsed one is gone
            try:  # rounded up: the worker's copy must not lapse before this one
                await worker.request("dns.nta.add", {"name": name_to_text(name), "seconds": math.ceil(until - now)},
                                     wait=COMMAND_SECONDS)
            except CommandError as exc:
                failures.append(f"{name_to_text(name)}: {exc}")
        if failures:
            await worker.restart(f"it did not take the runtime negative trust anchors ({'; '.join(failures)})",
                                 worker.proc)

    def _everywhere(self, command: str, handler: Handler, combine: Callable[[list[Any]], Any],
                    done_already: Callable[[BaseException], bool] = lambda error: False) -> Handler:
        """A command that changes what a process answers: in every process when there are several."""
        return handler if self.extras is None else self.extras.everywhere(command, handler, combine, done_already)

    def _validator(self, config: DNSConfig, clock: Callable[[], float]) -> Validator | None:
        assert self.resolver is not None
        try:
            validator = make_validator(config, self.resolver, clock, self.files.read)
        except HintsError as exc:
            raise ServiceStartError(f"dns: dnssec.trust_anchor_file: {exc}") from None
        if validator is not None and config.root_hints is not None and config.dnssec.trust_anchor_file is None:
            log.warning("dns.dnssec.iana_anchors_with_private_root", root_hints=str(config.root_hints))
        if validator is not None and (warning := unusable_anchors(validator.anchors.values())) is not None:
            log.warning("dns.dnssec.unusable_anchor", detail=warning)
        return validator

    def _carry_over(self, validator: Validator) -> None:
        """`ispd dns nta add` and the counters outlive a reload."""
        old = self.resolver.validator if self.resolver is not None else None
        if old is not None:
            validator.stats = old.stats
            permanent = validator.live_negative_anchors()  # the new config's: a runtime one must not cut them short
            for name, until in old.live_negative_anchors().items():
                if until != float("inf") and name not in permanent:
                    validator.add_negative_anchor(name, until)

    # --- RFC 5011 updates of the trust anchors

    async def _track_anchors(self) -> None:
        """Follow each anchored zone's key rollovers (RFC 5011) in the background."""
        resolver = self.resolver
        assert resolver is not None
        validator = resolver.validator
        if validator is None or not self.config.dnssec.auto_update_anchors:
            return

        async def fetch(name: bytes, rtype: int) -> Resolution:
            return await resolver.resolve(name, rtype, validate=False, past_limit=True)  # (as the validator's)

        def apply(anchor: TrustAnchor) -> None:
            if resolver.validator is not None and resolver.validator.set_anchor(anchor):
                self.answers.flush(anchor.zone, subtree=True)

        for anchor in list(validator.anchors.values()):
            tracker = AnchorTracker(anchor, self.context.store, fetch, apply, wall_clock=self.context.clock)
            try:
                await tracker.load()
            except StoreError as exc:
                log.warning("dns.dnssec.anchor_state_unreadable", zone=name_to_text(anchor.zone), error=str(exc))
            self._anchor_trackers.append(asyncio.ensure_future(self._keep_tracking(tracker)))

    async def _keep_tracking(self, tracker: AnchorTracker) -> None:
        validator = self.resolver.validator if self.resolver is not None else None
        if validator is not None:
            await validator.anchor_used.wait()  # not before the first question that needs the anchor
        while True:
            try:
                await tracker.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # a store or resolver failure: try again later, never stop validating
                log.exception("dns.dnssec.anchor_tracking_failed", zone=name_to_text(tracker.zone))
                await asyncio.sleep(RETRY_SECONDS)

    async def _stop_anchor_tracking(self) -> None:
        for task in self._anchor_trackers:
            task.cancel()
        for task in self._anchor_trackers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._anchor_trackers = []

    def _nsec_index(self) -> NsecIndex | None:
        """The live validator's RFC 8198 index, for `ispd dns cache flush` (None without one)."""
        validator = self.resolver.validator if self.resolver is not None else None
        return validator.nsec_index if validator is not None else None

    # --- negative trust anchors at run time (`ispd dns nta`)

    def _live_validator(self) -> Validator:
        validator = self.resolver.validator if self.resolver is not None else None
        if validator is None:
            raise CommandError("DNSSEC validation is off (dns.dnssec.validation = false)")
        return validator

    async def _command_nta_add(self, args: dict[str, Any]) -> dict[str, Any]:
        validator = self._live_validator()
        name = parse_name_argument(args.get("name"))
        seconds = args.get("seconds", DEFAULT_NTA_SECONDS)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 < seconds <= MAX_NTA_SECONDS:
            raise CommandError(f"the lifetime must be between 1 second and {MAX_NTA_SECONDS // 86400} days")
        if name in configured_negative_anchors(self.config):
            # a lifetime given here would make the config file's permanent one lapse
            raise CommandError(f"{name_to_text(name)} is already a negative trust anchor of the config file")
        validator.add_negative_anchor(name, time.monotonic() + seconds)
        self.answers.flush(name, subtree=True)
        log.info("dns.dnssec.nta.added", name=name_to_text(name), seconds=seconds)
        return {"name": name_to_text(name), "seconds": seconds}

    async def _command_nta_delete(self, args: dict[str, Any]) -> dict[str, Any]:
        validator = self._live_validator()
        name = parse_name_argument(args.get("name"))
        if name in configured_negative_anchors(self.config):
            raise CommandError(f"{name_to_text(name)} is a negative trust anchor of the config file; remove it there")
        if not validator.remove_negative_anchor(name):
            raise CommandError(f"{name_to_text(name)} {NOT_AN_NTA}")
        self.answers.flush(name, subtree=True)
        log.info("dns.dnssec.nta.deleted", name=name_to_text(name))
        return {"name": name_to_text(name)}

    async def _command_nta_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.monotonic()
        anchors = self._live_validator().live_negative_anchors()
        return [{"name": name_to_text(name), "seconds_left": None if until == float("inf") else int(until - now),
                 "source": "config" if until == float("inf") else "runtime"}
                for name, until in sorted(anchors.items(), key=lambda item: name_to_text(item[0]))]

    async def _load_data(self, config: DNSConfig) -> None:
        self._apply_data(*await self._read_data(config), config)

    async def _read_data(self, config: DNSConfig) -> tuple[LocalData, list[CompiledPolicyZone]]:
        """Local data and policy zones from config and files (parsed off the loop); errors
        raise ``ServiceStartError``."""
        loop = asyncio.get_running_loop()
        files = self.files
        try:
            zones = [await loop.run_in_executor(None, _load_local_zone, files, z.file, z.name)
                     for z in config.local_zone]
            local = LocalData(lease_domain=config.lease_names.domain,
                              reverse_networks=config.lease_names.served_reverse_networks,
                              static_records=config.local_records, zones=zones,
                              designated=designated_records(config))
            policy_zones = [await loop.run_in_executor(None, _compile_policy_zone, files, z.file, z.name, z.action)
                            for z in config.policy_zone]
        except (ZoneError, ValueError) as exc:
            raise ServiceStartError(f"dns: {exc}") from None
        return local, policy_zones

    def _apply_data(self, local: LocalData, policy_zones: list[CompiledPolicyZone], config: DNSConfig, *,
                    names_taken: bool = False) -> None:
        """Switch to ``local`` and ``policy_zones``; ``names_taken``: ``local`` has the lease
        names of the data in use already (``_take_lease_names``)."""
        for zone in policy_zones:
            log.info("dns.policy_zone.loaded", zone=zone.source, records=zone.records_loaded,
                     skipped_bad=zone.skipped_bad, skipped_unsupported=zone.skipped_unsupported)
            for problem in zone.problems[:10]:
                log.warning("dns.policy_zone.record_skipped", problem=problem)
        if self.local is not None and not names_taken:
            # A reload: the lease names answer at once from the new data too, not only once the
            # store has been read again (NXDOMAIN meanwhile, and cached as such for a minute).
            local.take_lease_names(self.local)
        self.local = local
        if self.first and (warning := shadowed_forward_zones(config, local)) is not None:
            log.warning("dns.forward_zone_shadowed", detail=warning)
        if self.first:
            for warning in certificate_warnings(config):
                log.warning("dns.ddr.unverifiable", detail=warning)
        assert self.resolver is not None
        delegated = [ForwardZone(cut.name, cut.addresses, recursive=False, ns_names=cut.ns_names)
                     for cut in local.delegations()]
        for name in self.resolver.delegate(delegated):  # what was learnt of them under other servers
            self.rrsets.flush(name, subtree=True)
        self.scopes = PolicyScopes(config.policy_zone)
        self.policy = Policy(policy_zones, self.scopes.zone_bits)
        self.policy_zones = policy_zones
        assert self.engine is not None
        self.engine.local_lookup = local.answer
        self.engine.default_lookup = default_zones(config, local).answer
        self.engine.set_policy(self.policy.match)
        self.engine.walled_lookup = self.walled.lookup
        self.engine.forget_local_answers()

    async def _take_lease_names(self, local: LocalData) -> list[Callable[[], None]]:
        """Give ``local`` (a reload's data, not in use yet) the lease names of the data in use,
        a part at a time, the event loop answering between parts (``LEASES_PER_STEP``); the
        events heard meanwhile, to apply again once ``local`` is in use (a name granted or
        ended after its address was taken)."""
        async with self._loading_subscribers:
            self._heard_meanwhile = []
            try:
                old = self.local
                assert old is not None
                addresses = old.lease_addresses()
                for start in range(0, len(addresses), LEASES_PER_STEP):
                    if start:
                        await asyncio.sleep(0)
                    local.take_lease_names(old, addresses[start : start + LEASES_PER_STEP])
            finally:
                heard, self._heard_meanwhile = self._heard_meanwhile, None
        return heard

    async def _load_subscribers(self, *, drop_unread_names: bool = False) -> None:
        """Current leases (names, and who holds each address), suspended subscribers, and (for
        policy zones limited to some plans) every subscriber's plan. What the bus brings while
        the store is read (the events are heard already) is applied again on top of what was
        read, which may be older: a resume, a session's end, a plan change heard meanwhile
        stand. ``drop_unread_names``: lease names the store no longer has go too (their ends
        were among the events missed)."""
        async with self._loading_subscribers:
            self._heard_meanwhile = []
            try:
                named = await self._read_subscribers()
                if drop_unread_names and self.local is not None:
                    before = self.local.generation
                    for address in set(self.local.lease_addresses()) - named:  # (not lease_names: 0.2 s of texts)
                        self.local.remove_lease_name(address)
                    self._local_changed(before)
            finally:
                heard, self._heard_meanwhile = self._heard_meanwhile, None
            for handle in heard:
                handle()
            self._walled_changed()

    async def _read_subscribers(self) -> set[str]:
        """(See ``_load_subscribers``.) The addresses whose lease names it published."""
        store = self.context.store
        named: set[str] = set()
        try:
            now = self.context.clock()
            leases = await store.list_leases()
            claimed_at = await self._last_claims(
                [(lease.address, lease.hostname, lease.starts_at) for lease in leases
                 if lease.state == LeaseState.BOUND and lease.expires_at > now and lease.hostname],
                lambda address: store.lease_history(address, limit=1))
            bindings = await store.list_leases6()
            claimed_at6 = await self._last_claims(
                [(binding.prefix, binding.hostname, binding.starts_at) for binding in bindings
                 if binding.state == LeaseState.BOUND and binding.expires_at > now and binding.hostname
                 and binding.kind == "na"],
                lambda prefix: store.lease6_history(prefix, limit=1))
            suspended = await store.list_subscribers(SubscriberStatus.SUSPENDED)
            sessions = await store.list_sessions(open_only=True, limit=1_000_000)
            if self.scopes.by_plan:
                self.plans.load(await store.list_plans(), await store.list_subscribers())
        except StoreError as exc:
            raise ServiceStartError(f"dns: cannot load leases from the store: {exc}") from None
        if self.first and self.scopes.by_plan:
            plans_named = {plan for zone in self.config.policy_zone for plan in zone.plans}
            unknown = sorted(plans_named - set(self.plans.plan_names.values()))
            if unknown:  # (not refused: the plan may be added later, and the zone applies from then)
                log.warning("dns.policy_zone.unknown_plans", plans=unknown,
                            detail="no such plan in the store yet: the zones limited to it apply to nobody")
        # The holds as the store has them now (a reload: not on top of what was held before,
        # which keeps holds whose end this process never heard), built aside and taken at once
        # at the end: the queries answered between parts of the leases meet the holds of before
        # (forgotten, a suspended subscriber's addresses were nobody's until read again); what
        # the bus brought during the reads is applied again after this.
        holds = WalledGarden(self.walled.config)
        now = self.context.clock()
        # A name two leases claim is the one written last's (the newest claim wins, as while
        # running): in the order they were last granted or renewed (see ``_last_claims``).
        for index, lease in enumerate(sorted(leases, key=lambda lease: claimed_at.get(lease.address,
                                                                                   (lease.expires_at, 0)))):
            if index and not index % LEASES_PER_STEP:
                await asyncio.sleep(0)  # (what the bus brings meanwhile is applied again after this)
            if lease.state == LeaseState.BOUND and lease.expires_at > now:
                holds.lease_granted(lease.address, lease.subscriber_id,
                                    radius_pool=lease.service == LeaseService.RADIUS)
                self._lease_name(lease.address, lease.hostname, lease.expires_at)
                if lease.hostname:
                    named.add(lease.address)
        # Addresses a NAS gave from its own pools are known only from its accounting. The oldest
        # first (the store lists the newest first): of two open sessions with one address or
        # prefix (a subscriber who reconnected, the old session not yet closed as stale), the
        # newer holds it, and the old one's close leaves it.
        # A session of no subscriber holds its addresses too (as while running).
        for session in sorted(sessions, key=lambda stored: stored.id):
            if session.framed_ip:
                holds.lease_granted(session.framed_ip, session.subscriber_id, session.id)
            for network in session.ipv6_networks():
                holds.network_granted(network, session.subscriber_id, session.id)
        # DHCPv6 bindings: an address's name, and who holds an address or a delegated prefix
        # (the home's devices ask from addresses in it), in the order they were last renewed
        # (a name two claim, as for DHCPv4 leases).
        for binding in sorted(bindings, key=lambda binding: claimed_at6.get(binding.prefix, (binding.expires_at, 0))):
            if binding.state == LeaseState.BOUND and binding.expires_at > now:
                self._binding6_name(binding.prefix, str(binding.kind), binding.hostname, binding.expires_at)
                if binding.hostname:
                    named.add(binding.prefix.split("/", 1)[0])
                if binding.subscriber_id is not None:
                    holds.network_granted(binding.prefix, binding.subscriber_id)
        self.walled.take_holds(holds)
        for subscriber in suspended:
            self.walled.set_suspended(subscriber.id, True)
        return named

    async def _last_claims(self, claims: list[tuple[str, str, float]],
                           newest_entries: Callable[[str], Awaitable[list[Any]]]) -> dict[str, tuple[float, int]]:
        """When each live lease or address binding (``claims``: its address or prefix, host
        name and start) whose host name another claims too was last granted or renewed: its
        newest history entry's (``newest_entries``) time and id (the order of one batch's writes), or its start when
        the history was purged. Their expiry does not tell: leases of different lengths (a
        walled-garden pool's 300 s, another pool's hour; two links' lifetimes) end in another
        order than they were claimed. Other leases are not asked for: the order of names nobody
        else claims does not matter."""
        by_name: dict[str, list[tuple[str, float]]] = {}
        for key, hostname, starts_at in claims:
            by_name.setdefault(hostname.split(".", 1)[0].lower(), []).append((key, starts_at))
        claimed_at: dict[str, tuple[float, int]] = {}
        for holders in by_name.values():
            if len(holders) > 1:
                for key, starts_at in holders:
                    newest = await newest_entries(key)
                    claimed_at[key] = (newest[0].at, newest[0].id) if newest else (starts_at, 0)
        return claimed_at

    def _lease_granted(self, address: str, hostname: str | None, subscriber_id: int | None,
                       expires_at: float, *, radius_pool: bool = False) -> bool:
        """Publish the lease's name; whether the walled set changed."""
        walled_changed = self.walled.lease_granted(address, subscriber_id, radius_pool=radius_pool)
        self._lease_name(address, hostname, expires_at)
        return walled_changed

    def _lease_name(self, address: str, hostname: str | None, expires_at: float) -> None:
        """Publish (or, without a host name, withdraw) the lease's name."""
        if self.local is not None and self.config.lease_names.domain:
            before = self.local.generation
            if hostname:
                ttl = min(self.config.lease_names.ttl, max(0, int(expires_at - self.context.clock())))
                self.local.add_lease_name(hostname, address, ttl)
            else:  # (DHCP keeps a name at a renewal that brings none while it is the client's: it is not)
                self.local.remove_lease_name(address)
            self._local_changed(before)

    def _binding6_name(self, prefix: str, kind: str, hostname: str | None, expires_at: float) -> None:
        """Publish a DHCPv6 address's name (AAAA and PTR), as a DHCPv4 lease's."""
        if kind == "na" and hostname and self.local is not None and self.config.lease_names.domain:
            ttl = min(self.config.lease_names.ttl, max(0, int(expires_at - self.context.clock())))
            before = self.local.generation
            self.local.add_lease_name(hostname, prefix.split("/", 1)[0], ttl)
            self._local_changed(before)

    def _local_changed(self, generation: int) -> None:
        """Local data changed since ``generation`` (a renewal does not change it): the answers the
        fast path keeps from it go."""
        if self.engine is not None and self.local is not None and self.local.generation != generation:
            self.engine.forget_local_answers()

    async def _command_walled_show(self, args: dict[str, Any]) -> dict[str, Any]:
        subscriber_id = args.get("subscriber_id")
        if not isinstance(subscriber_id, int) or isinstance(subscriber_id, bool):
            raise CommandError("subscriber_id must be a number")
        addresses = self.walled.addresses_of(subscriber_id)
        return {"enabled": self.walled.enabled, "addresses": addresses,
                "walled": [a for a in addresses if self.walled.is_walled(a)],
                "policy_zones": {a: self._limited_zones_for(a) for a in addresses}}

    def _limited_zones_for(self, address: str) -> list[str]:
        """The policy zones limited to some clients that apply to the client at ``address``."""
        view = self._client_view(ip_network(address, strict=False).network_address)  # (a network: its clients')
        # (the scopes' own names: a reload sets its config before it has the zones read)
        return [name for name, bit in zip(self.scopes.zone_names, self.scopes.zone_bits, strict=True) if bit & view]

    def _walled_changed(self) -> None:
        if self.engine is not None:
            self.engine.set_walled(self.walled.walled_addresses(),
                                   self.walled.in_walled_network if self.walled.walled_networks() else None)

    # --- views of the policy (ispd.dns.scopes) ---

    def _client_view(self, address: IPv4Address | IPv6Address) -> int:
        if not self.scopes:
            return 0
        plan = self.plans.plan_of(self.walled.holder(str(address))) if self.scopes.by_plan else None
        return self.scopes.view(address, plan)

    def _plan_view_of(self, subscriber_id: int | None) -> int:
        """The bits the subscriber's plan gives its clients (0 without plan scopes)."""
        return self.scopes.plan_view(self.plans.plan_of(subscriber_id)) if self.scopes.by_plan else 0

    def _plan_view_at(self, address: str) -> int:
        """The bits the address's holder's plan gives it."""
        return self._plan_view_of(self.walled.subscriber_of.get(address))

    def _holder_changed(self, address: str, plan_view_before: int, walled_changed: bool) -> None:
        """Who holds ``address`` may have changed: the engine finds its class and view again
        if either changed (a renewal, every DHCP ACK, changes neither). A view changes with
        every new lease or session of a subscriber on a plan with limited zones: only that
        address is found again, the other clients keep the fast path."""
        if walled_changed:
            self._walled_changed()  # (forgets every client's class and view)
        elif self.engine is not None and self._plan_view_at(address) != plan_view_before:
            self.engine.forget_client(address)

    def _network_change(self, network: str, change: Callable[[], bool]) -> None:
        """A session's IPv6 network held by another, or no longer: the clients in it are not
        known one by one, so every client is found again when its holder's walled state or
        plan view changed with it."""
        before = self._plan_view_of(self.walled.network_holder(network))
        if change():
            self._walled_changed()
        elif self.engine is not None and self._plan_view_of(self.walled.network_holder(network)) != before:
            self.engine.forget_clients()

    def _set_plan(self, subscriber_id: int, change: Callable[[], None]) -> None:
        before = self._plan_view_of(subscriber_id)
        change()
        if self.engine is not None and self._plan_view_of(subscriber_id) != before:
            if subscriber_id in self.walled.network_holders.values():
                self.engine.forget_clients()  # (the clients in its networks are not known one by one)
                return
            for address in self.walled.addresses_of(subscriber_id):
                self.engine.forget_client(address)

    def _subscribe(self, stack: AsyncExitStack) -> None:
        bus = self.context.bus

        def granted(event: LeaseGranted) -> None:
            view = self._plan_view_at(event.address)
            walled = self._lease_granted(event.address, event.hostname, event.subscriber_id, event.expires_at,
                                         radius_pool=event.service == LeaseService.RADIUS)
            self._holder_changed(event.address, view, walled)

        def ended(event: LeaseEnded) -> None:
            if self.local is not None:
                before = self.local.generation
                self.local.remove_lease_name(event.address, event.hostname)
                self._local_changed(before)
            view = self._plan_view_at(event.address)
            self._holder_changed(event.address, view, self.walled.lease_ended(
                event.address, radius_pool=event.service == LeaseService.RADIUS))

        def session_started(event: SessionStarted) -> None:
            # A login that is no subscriber (a roaming partner's user, proxied) holds its
            # addresses too: the previous holder's plan and walled garden do not follow them.
            subscriber = event.subscriber_id
            if event.framed_ip:
                view = self._plan_view_at(event.framed_ip)
                walled = self.walled.lease_granted(event.framed_ip, subscriber, event.session_id)
                self._holder_changed(event.framed_ip, view, walled)
            session = event.session_id
            for network in event.networks():
                self._network_change(network, lambda: self.walled.network_granted(network, subscriber, session))  # noqa: B023

        def session_stopped(event: SessionStopped) -> None:
            if event.framed_ip:
                view = self._plan_view_at(event.framed_ip)
                self._holder_changed(event.framed_ip, view, self.walled.lease_ended(event.framed_ip, event.session_id))
            for network in event.networks():
                self._network_change(network, lambda: self.walled.network_ended(network, event.session_id))  # noqa: B023

        def binding6_granted(event: Binding6Granted) -> None:
            self._binding6_name(event.prefix, event.kind, event.hostname, event.expires_at)
            subscriber = event.subscriber_id
            if subscriber is not None:
                self._network_change(event.prefix, lambda: self.walled.network_granted(event.prefix, subscriber))
            elif event.prefix in self.walled.network_holders and not self.walled.network_held_by_session(event.prefix):
                # Granted with a subscriber before (its reservation deleted since, say), with none
                # now: the former holder's walled garden and plan must not follow the prefix,
                # whose end (naming no subscriber) would never take it from them.
                self._network_change(event.prefix, lambda: self.walled.network_ended(event.prefix))

        def binding6_ended(event: Binding6Ended) -> None:
            if event.kind == "na" and self.local is not None:
                before = self.local.generation
                self.local.remove_lease_name(event.prefix.split("/", 1)[0], event.hostname)
                self._local_changed(before)
            if event.subscriber_id is not None and self.walled.network_holders.get(event.prefix) == event.subscriber_id:
                self._network_change(event.prefix, lambda: self.walled.network_ended(event.prefix))

        def subscriber_added(event: SubscriberAdded) -> None:
            self._set_plan(event.subscriber_id, lambda: self.plans.set_plan(event.subscriber_id, event.plan))

        def plan_changed(event: SubscriberPlanChanged) -> None:
            self._set_plan(event.subscriber_id, lambda: self.plans.set_plan_id(event.subscriber_id, event.plan_id))

        def subscriber_deleted(event: SubscriberDeleted) -> None:
            self._set_plan(event.subscriber_id, lambda: self.plans.set_plan(event.subscriber_id, None))

        def status(suspended: bool) -> Callable[[SubscriberEvent], None]:
            def apply(event: SubscriberEvent) -> None:
                if self.walled.set_suspended(event.subscriber_id, suspended):
                    self._walled_changed()
            return apply

        def plan_added(event: PlanAdded) -> None:
            self.plans.plan_added(event.plan_id, event.name)

        def heard(handler: Callable[[Any], None]) -> Callable[[Any], None]:
            """``handler``, and once more after a load of the store's subscribers going on now."""
            def handle(event: Any) -> None:
                handler(event)
                if self._heard_meanwhile is not None:
                    self._heard_meanwhile.append(functools.partial(handler, event))
            return handle

        unsubscribers = [bus.subscribe(kind, heard(handler)) for kind, handler in (
            (LeaseGranted, granted),
            (LeaseEnded, ended),
            (SessionStarted, session_started),
            (SessionStopped, session_stopped),
            (Binding6Granted, binding6_granted),
            (Binding6Ended, binding6_ended),
            (SubscriberSuspended, status(True)),
            (SubscriberResumed, status(False)),
            (SubscriberClosed, status(False)),
            (SubscriberDeleted, status(False)),
            (SubscriberAdded, subscriber_added),
            (SubscriberPlanChanged, plan_changed),
            (SubscriberDeleted, subscriber_deleted),
            (PlanAdded, plan_added),
        )]

        async def peer_events_missed(event: PeerEventsMissed) -> None:
            # Another node's leases and sessions came and went unheard: as the store has them now.
            try:
                await self._load_subscribers(drop_unread_names=True)
            except ServiceStartError as exc:  # the events from now on still come
                log.error("dns.peer_events.reload_failed", error=str(exc))
            else:
                log.info("dns.peer_events.reloaded")

        unsubscribers.append(bus.subscribe(PeerEventsMissed, peer_events_missed))
        for unsubscribe in unsubscribers:
            stack.callback(unsubscribe)

    async def _open(self, stack: AsyncExitStack) -> None:
        assert self.engine is not None
        self._tcp_stopping = False
        self._tcp = Acceptor(self._accepted_tcp, self.transport_stats["tcp"], log, "dns.accept_failed", "tcp",
                             TCP_ACCEPT_RETRY_SECONDS)
        stack.callback(self._tcp.close)
        for address in self.config.listen:
            try:
                if self.reuse_port and self.first:
                    check_address_free(address.host, address.port, socket.SOCK_DGRAM)
                    check_address_free(address.host, address.port, socket.SOCK_STREAM)
                udp_socket = bound_socket(address.host, address.port, socket.SOCK_DGRAM, reuse_port=self.reuse_port)
                udp, _ = await open_datagram_listener(lambda: _UDPProtocol(self), udp_socket)
                port = udp.get_extra_info("sockname")[1]
                tcp = bound_socket(address.host, port, socket.SOCK_STREAM, reuse_address=True,
                                   reuse_port=self.reuse_port)
                tcp.listen(1024)
            except OSError as exc:
                raise ServiceStartError(f"dns: cannot listen on {address}: {describe_os_error(exc)}") from None
            sock = udp.get_extra_info("socket")
            with contextlib.suppress(OSError):  # a burst of misses must not overflow the default buffer
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            self._udp.append(udp)
            self._tcp.listen(tcp)
            self.bound.append((address.host, port))
            stack.callback(udp.close)
        self._tcp_answerer = self._answerer("tcp", pad=False)
        self._tcp_gate = ConnectionGate(self.config.tcp_max_connections, self.config.tcp_max_connections_per_client,
                                        self.transport_stats["tcp"])
        await self._open_encrypted(stack)

    def _answerer(self, transport: str, *, pad: bool = True) -> Answerer:
        assert self.engine is not None
        protocol, http = _TAPPED_AS[transport]
        return Answerer(self.engine, self.transport_stats[transport], pad=pad,
                        hit_latency=self.metrics.hit_latency, slow_latency=self.metrics.slow_latency,
                        tap=self.tap, protocol=protocol, http=http, budget=self.budget)

    async def _open_encrypted(self, stack: AsyncExitStack) -> None:
        """DoT, DoH (HTTP/2 and HTTP/3) and DoQ, each when it has listen addresses."""
        if self.config.dot.enabled:
            await self._open_dot(stack)
        if self.config.doh.listen:
            await self._open_doh(stack)
        # QUIC in the first process only (ispd.dns.processes says why).
        if self.config.doh.listen_http3 and self.first:
            await self._open_doh3(stack)
        if self.config.doq.enabled and self.first:
            await self._open_doq(stack)

    async def _open_dot(self, stack: AsyncExitStack) -> None:
        section, stats = self.config.dot, self.transport_stats["tls"]
        answerer = self._answerer("tls")

        async def serve_dot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
            now = self.config  # as it is when the connection starts (a reload may change it)
            await serve_dns_stream(reader, writer, client, answerer, stats, idle_seconds=now.dot.idle_timeout_seconds,
                                   max_in_flight=now.dot.max_streams_per_connection,
                                   max_query_bytes=now.dot.max_query_bytes,
                                   drain_seconds=now.resolver.request_timeout_seconds)

        gate = self._gate("dot", section, stats)
        listener = TLSListener("dot", ["dot"], gate, stats, section.handshake_timeout_seconds, serve_dot)
        self._load_certificate("dot", listener, section)
        await listener.start(section.listen, stack, reuse_port=self.reuse_port, first=self.first)
        self.tls_listeners["dot"] = listener

    async def _open_doh(self, stack: AsyncExitStack) -> None:
        section, stats = self.config.doh, self.transport_stats["https"]
        # Browsers move to HTTP/3 when the HTTP/2 answers advertise it (RFC 7838).
        alt_svc = f'h3=":{section.listen_http3[0].port}"; ma=86400'.encode() if section.listen_http3 else None
        responder = DoHResponder(self._answerer("https"), stats, section, alt_svc)
        self.doh_responders.append(responder)

        async def serve_doh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
            await serve_h2(reader, writer, client, responder, idle_seconds=responder.config.idle_timeout_seconds,
                           max_streams=responder.config.max_streams_per_connection)

        gate = self._gate("doh", section, stats)
        listener = TLSListener("doh", ["h2"], gate, stats, section.handshake_timeout_seconds, serve_doh)
        self._load_certificate("doh", listener, section)
        await listener.start(section.listen, stack, reuse_port=self.reuse_port, first=self.first)
        self.tls_listeners["doh"] = listener

    async def _open_doh3(self, stack: AsyncExitStack) -> None:
        section, stats = self.config.doh, self.transport_stats["http3"]
        responder = DoHResponder(self._answerer("http3"), stats, section, None)
        self.doh_responders.append(responder)
        gate = self._gate("doh3", section, stats)
        listener = http3_listener(responder, gate, stats, _quic_settings(section))
        self._load_certificate("doh", listener, section)
        await listener.start(section.listen_http3, stack)
        self.quic_listeners["doh3"] = listener

    async def _open_doq(self, stack: AsyncExitStack) -> None:
        section, stats = self.config.doq, self.transport_stats["quic"]
        gate = self._gate("doq", section, stats)
        listener = doq_listener(self._answerer("quic"), gate, stats, _quic_settings(section), section.allow_0rtt)
        self._load_certificate("doq", listener, section)
        await listener.start(section.listen, stack)
        self.quic_listeners["doq"] = listener

    def _gate(self, key: str, section: EncryptedListenerConfig, stats: TransportStats) -> ConnectionGate:
        gate = self._gates[key] = ConnectionGate(section.max_connections, section.max_connections_per_client, stats)
        return gate

    def _apply_limits(self, new: DNSConfig) -> None:
        """A reload's limits, for what comes next: queries, cache insertions, new connections
        (established ones keep their timeouts)."""
        assert self.engine is not None
        self.engine.set_limits(rate_limit_qps=new.rate_limit_qps, request_timeout=new.resolver.request_timeout_seconds,
                               stale_answer_ttl=new.cache.stale_answer_ttl,
                               stale_client_timeout=new.cache.stale_client_timeout_seconds)
        self.rrsets.set_limits(cache_limits(new, 0.5), now=self.resolver.clock() if self.resolver else None)
        self.answers.set_limits(cache_limits(new, 0.5))
        self.answers.prefetch = new.cache.prefetch
        if self._tcp_gate is not None:
            self._tcp_gate.max_total = new.tcp_max_connections
            self._tcp_gate.max_per_client = new.tcp_max_connections_per_client
        quic_sections: dict[str, DoHConfig | DoQConfig] = {"doh3": new.doh, "doq": new.doq}
        sections: dict[str, EncryptedListenerConfig] = {"dot": new.dot, "doh": new.doh, **quic_sections}
        for key, gate in self._gates.items():
            gate.max_total = sections[key].max_connections
            gate.max_per_client = sections[key].max_connections_per_client
        for key, tls in self.tls_listeners.items():
            tls.handshake_timeout = sections[key].handshake_timeout_seconds
        for key, quic in self.quic_listeners.items():
            quic.apply_settings(_quic_settings(quic_sections[key]))

    def _encrypted(self) -> list[tuple[str, TLSListener | QuicListener]]:
        return [*self.tls_listeners.items(), *self.quic_listeners.items()]

    def _load_certificate(self, key: str, listener: TLSListener | QuicListener,
                          section: EncryptedListenerConfig) -> None:
        listener.use_certificate(self._prepare_certificate(key, listener, section))

    def _prepare_certificate(self, key: str, listener: TLSListener | QuicListener,
                             section: EncryptedListenerConfig) -> Any:
        """What ``listener.use_certificate`` takes, from the certificate and key as this process
        has them (``ispd.dns.datafiles``); ``ServiceStartError`` when they do not load."""
        assert section.certificate is not None and section.private_key is not None
        try:
            prepared = listener.prepare_certificate(self.files.file(section.certificate),
                                                    self.files.file(section.private_key))
            self.files.check_unchanged([section.certificate, section.private_key])
        except CertificateError as exc:
            raise ServiceStartError(f"dns: {key}: {exc}") from None
        except OSError as exc:  # (a worker's: the file was not handed over)
            raise ServiceStartError(f"dns: {key}: {exc}") from None
        return prepared

    def _check_encrypted(self, old: DNSConfig, new: DNSConfig) -> dict[str, Any]:
        """The encrypted listeners' new certificates, loaded for ``_reload_encrypted``, by
        listener; ``ServiceStartError`` when the addresses changed or a certificate does not load
        (then no listener has changed)."""
        for key in ("dot", "doh", "doq"):
            before, after = getattr(old, key), getattr(new, key)
            listen_before = (before.listen, getattr(before, "listen_http3", None))
            listen_after = (after.listen, getattr(after, "listen_http3", None))
            if listen_before != listen_after:
                raise ServiceStartError(f"dns: a change of {key} listen addresses needs a restart")
        if old.doq.allow_0rtt != new.doq.allow_0rtt:
            raise ServiceStartError("dns: a change of doq.allow_0rtt needs a restart")
        prepared: dict[str, Any] = {}
        for key, listener in self._encrypted():
            prepared[key] = self._prepare_certificate(key, listener, getattr(new, "doh" if key == "doh3" else key))
        return prepared

    def _reload_encrypted(self, prepared: dict[str, Any], new: DNSConfig) -> None:
        """The certificates ``_check_encrypted`` loaded, and the new request limits."""
        for key, listener in self._encrypted():
            listener.use_certificate(prepared[key])
        for responder in self.doh_responders:
            responder.config = new.doh

    async def stop(self) -> None:
        extras = asyncio.ensure_future(self.extras.stop()) if self.extras is not None else None
        self._tcp_stopping = True
        if self._tcp is not None:
            self._tcp.close()
        # No more queries on open connections: each handler answers what it has in hand, then
        # closes. One still at it 2 s later (queries waiting for the resolution budget behind a
        # slow zone, replies its client does not read) is ended here, with its queries: left to
        # the loop's final cancel, each one's CancelledError was logged as an error, with its
        # traceback, at an ordinary stop (when start_server ran the handlers).
        streams = list(self._tcp_streams.items())
        # Accepted in this turn of the loop, still opening their streams: they close unserved.
        opening = self._tcp_accepting - {handler for _, (_, handler) in streams}
        for writer, (reader, _) in streams:
            cast(asyncio.ReadTransport, writer.transport).pause_reading()
            reader.feed_eof()
        for udp in self._udp:
            udp.close()
        if self._slow:
            await asyncio.wait(list(self._slow), timeout=2)
        if streams or opening:
            await asyncio.wait([*opening, *(handler for _, (_, handler) in streams)], timeout=2)
        left = []
        for writer, (_, handler) in streams:
            if handler.done():
                writer.close()
            else:  # (replies its client does not read: a close would wait for them to drain)
                writer.transport.abort()
                handler.cancel()  # its queries too (ispd.dns.streams)
                left.append(handler)
        if left:
            await asyncio.wait(left, timeout=2)
        if extras is not None:
            await extras

    async def _report_zone_limits(self, limiter: ZoneRateLimiter) -> None:
        """A log line when zones go over resolver.zone_rate_limit_qps: at once, then at most one
        every ZONE_LIMIT_REPORT_SECONDS, naming the zones rather than every question."""
        went_over = asyncio.Event()
        limiter.on_newly_limited = went_over.set
        while True:
            await went_over.wait()
            went_over.clear()
            zones = limiter.take_newly_limited()
            log.warning("dns.zone_rate_limited", zones={name_to_text(z): qps for z, qps in zones.items()},
                        questions_stopped_total=limiter.limited)
            await asyncio.sleep(ZONE_LIMIT_REPORT_SECONDS)

    def _configure_tap(self, section: DnstapConfig) -> None:
        """dnstap to the collector the config names, on the connection there is if it names the
        same one (retire the old one first when it does not)."""
        target: Path | tuple[str, int] | None = section.socket_path or (
            (section.address.host, section.address.port) if section.address is not None else None)
        writer = self.tap.writer
        if writer is None and target is not None:
            writer = FrameStreamClient(target, buffer_bytes=section.buffer_bytes)
            writer.start()
        if writer is not None:
            writer.buffer_bytes = section.buffer_bytes
        identity = (section.identity or socket.gethostname()).encode() if section.send_identity else b""
        version = f"ispd {__version__}".encode() if section.send_version else b""
        self.tap.use(writer, Encoder(identity, version), client_queries=section.client_queries,
                     client_responses=section.client_responses, resolver_queries=section.resolver_queries,
                     resolver_responses=section.resolver_responses)

    async def _cancel_tasks(self) -> None:
        for task in list(self._slow):
            task.cancel()
        if self.engine is not None:
            await self.engine.cancel_background()

    async def reload(self, old: Config, new: Config) -> None:
        """Like Unbound's reload: the files (root hints, local and policy zones) are read again
        even when the config is unchanged — SIGHUP is how an operator says "I changed a zone" —
        and the answer cache is emptied; what iteration learnt (RRsets, server RTTs) stays.
        Everything that can fail is read first: a refused reload changes nothing (and with
        several processes, none of them answers differently from the others)."""
        if old.dns.listen != new.dns.listen:
            raise ServiceStartError("dns: a change of listen addresses needs a restart")
        if old.dns.processes != new.dns.processes:
            raise ServiceStartError("dns: a change of processes needs a restart")
        assert self.engine is not None and self.resolver is not None
        if isinstance(self.files, HandedFiles):
            self.files.refresh()  # (the first process has handed this reload's)
        elif isinstance(self.files, DiskFiles):
            self.files.forget()  # (what a refused reload read)
        certificates = self._check_encrypted(old.dns, new.dns)
        try:
            hints = load_root_hints(new.dns.root_hints, self.files.read)
        except HintsError as exc:
            raise ServiceStartError(f"dns: {exc}") from None
        if self.first and (warning := hints_in_do_not_query(new.dns, hints)) is not None:
            log.warning("dns.root_hints.do_not_query", detail=warning)
        dnssec_changed = old.dns.dnssec != new.dns.dnssec
        validator = self._validator(new.dns, time.monotonic) if dnssec_changed else None
        data = await self._read_data(new.dns)
        handed: dict[str, str] | None = None
        if self.file_store is not None:  # what the workers are to load: what this process did
            try:  # (a file not read again, the trust anchors with [dns.dnssec] unchanged, keeps its content)
                handed = self.file_store.put(self._take_files(), named_files(new.dns))
            except OSError as exc:
                raise ServiceStartError(f"dns: cannot keep the files for the other processes in "
                                        f"{self.file_store.directory}: {describe_os_error(exc)}") from None
        # Nothing below refuses. The workers switch first: each compiles what this process has
        # compiled already (a large policy zone takes seconds) and then switches, so that this
        # process, switching at once after them, does not answer on the new data for all that
        # time while they answer on the old. (Not a joint switch: between a worker's switch and
        # this process's, for as long as the others take to compile, two sets answer.)
        if self.extras is not None:
            assert self.file_store is not None and handed is not None
            self.file_store.use(handed)
            await self.extras.reload(new, self.file_store.manifest())
            self.file_store.prune()  # (every worker runs the new contents now, or is restarting on them)
        self._reload_encrypted(certificates, new.dns)
        self.config = new.dns
        self._apply_limits(new.dns)
        self.engine.set_dns64(make_dns64(new.dns), list(new.dns.dns64.clients) or None)
        self.engine.servfail_log.enabled = new.dns.log_servfail
        self.engine.set_allow(list(new.dns.allow))
        before, after = set(forward_zones(old.dns)), forward_zones(new.dns)
        self.resolver.configure(resolver_settings(new.dns), hints, after)
        # (Each query binds its socket to these: set at start only, a new one waited for a restart.)
        self.upstream.source_v4, self.upstream.source_v6 = outgoing_addresses(new.dns)
        for zone in before ^ set(after):  # what the root said of names now (or no longer) configured
            self.rrsets.flush(zone.name, subtree=True)
        if dnssec_changed:
            if (validator is None) != (self.resolver.validator is None):
                # RRsets learnt without DO carry no signatures (and the other way round): start afresh.
                self.rrsets.clear()
            elif validator is not None:
                validator.forget()  # verdicts taken under other anchors
            if validator is not None:
                self._carry_over(validator)  # now: `ispd dns nta` may have changed them meanwhile
            self.resolver.validator = validator
            self.engine.validating = validator is not None
            await self._stop_anchor_tracking()
            await self._track_anchors()
        # (Not in _apply_data at once: tens of thousands of names held the event loop seconds.)
        heard = await self._take_lease_names(data[0])
        self._apply_data(*data, new.dns, names_taken=True)
        for handle in heard:
            handle()
        self.walled.configure(new.dns.walled_garden)
        try:
            # Lease names again, into the new local data; those carried over from the old whose
            # leases the store no longer has go (ended where this daemon did not hear of it).
            await self._load_subscribers(drop_unread_names=True)
        except ServiceStartError as exc:  # too late to refuse: what the events bring from now on
            log.error("dns.reload.leases_unreadable", error=str(exc))
            self._walled_changed()  # (the walled garden's settings may have changed)
        tap_before, tap_now = old.dns.dnstap, new.dns.dnstap
        replaced = None
        if (tap_before.socket_path, tap_before.address) != (tap_now.socket_path, tap_now.address):
            replaced = self.tap.detach()  # another collector (or none): this one gets STOP...
        self._configure_tap(tap_now)
        if replaced is not None:  # ...while the next one is already written to (or held for)
            await self.tap.finish(replaced)
        self.answers.clear()
        if self.first:  # (once for the resolver: the workers follow the first)
            log.info("dns.reloaded", local_zones=len(new.dns.local_zone), policy_zones=len(self.policy_zones),
                     root_servers=len(hints))

    def health(self) -> Health:
        if not self._udp:
            return Health(False, "not listening")
        if self.extras is not None:
            return self.extras.health()
        return Health(True)

    def describe(self) -> str:
        text = "dns on " + ", ".join(str(SocketAddress(h, p)) for h, p in self.bound)
        if self.config.processes > 1:
            text += f" ({self.config.processes} processes)"
        for key, listener in self._encrypted():
            text += f", {key} on " + ", ".join(str(SocketAddress(h, p)) for h, p in listener.bound)
        return text

    # --- queries ---

    def spawn_slow(self, data: bytes, client: str, transport: asyncio.DatagramTransport, addr: Any,
                   received: float = 0.0) -> None:
        if not self.budget.try_take():
            return
        task = asyncio.ensure_future(self._answer_udp(data, client, transport, addr, received))
        self._slow.add(task)
        task.add_done_callback(self._slow_done)

    def _slow_done(self, task: asyncio.Task[None]) -> None:
        self._slow.discard(task)
        self.budget.give()

    async def _answer_udp(self, data: bytes, client: str, transport: asyncio.DatagramTransport, addr: Any,
                          received: float = 0.0) -> None:
        assert self.engine is not None
        started = time.perf_counter()
        reply = await self.engine.answer(data, client, tcp=False)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)
            self.metrics.slow_latency.observe(time.perf_counter() - started)
            if self.tap.clients:  # (no ``received`` when it came before a reload turned dnstap on)
                self.tap.client_response(SocketProtocol.UDP, client, addr[1],
                                         received or time.time() - (time.perf_counter() - started), reply)

    def _accepted_tcp(self, connection: socket.socket, _peer: Any) -> None:
        # (Accepted by hand, ``Acceptor``: out of descriptors the loop's own server reset the
        # waiting connections unsaid; now they wait in the backlog while the listener rests.)
        task = asyncio.ensure_future(self._open_tcp(connection))
        self._tcp_accepting.add(task)
        task.add_done_callback(self._tcp_accepting.discard)

    async def _open_tcp(self, connection: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=connection)
        except OSError:
            connection.close()
            return
        if self._tcp_stopping:  # (accepted before the stop, which no longer waits for it)
            writer.close()
            return
        await self._serve_tcp(reader, writer)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else ""
        stats = self.transport_stats["tcp"]
        gate = self._tcp_gate
        if gate is None or not gate.admit(client):
            writer.close()
            return
        handler = asyncio.current_task()
        assert handler is not None
        self._tcp_streams[writer] = (reader, handler)
        try:
            await serve_dns_stream(reader, writer, client, self._tcp_answerer, stats,
                                   idle_seconds=self.config.tcp_idle_seconds,
                                   max_in_flight=self.config.tcp_max_pipelined, max_query_bytes=65535,
                                   drain_seconds=self.config.resolver.request_timeout_seconds)
        except asyncio.CancelledError:
            # Ended by stop() (or the loop's end): nothing waits for this task, whose end is the
            # connection's.
            pass
        finally:
            gate.release(client)
            self._tcp_streams.pop(writer, None)
            forget_connection_error(reader)


# How dnstap names each connection transport (by the transport_stats key).
_TAPPED_AS: dict[str, tuple[SocketProtocol, HttpProtocol | None]] = {
    "tcp": (SocketProtocol.TCP, None), "tls": (SocketProtocol.DOT, None),
    "https": (SocketProtocol.DOH, HttpProtocol.HTTP2), "http3": (SocketProtocol.DOH, HttpProtocol.HTTP3),
    "quic": (SocketProtocol.DOQ, None)}


def _quic_settings(section: DoHConfig | DoQConfig) -> QuicSettings:
    return QuicSettings(idle_timeout=section.idle_timeout_seconds, handshake_timeout=section.handshake_timeout_seconds,
                        max_streams=section.max_streams_per_connection, max_query_bytes=section.max_query_bytes,
                        retry=section.retry)


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: DNSService) -> None:
        self.service = service
        assert service.engine is not None
        self.engine = service.engine
        self.hit_latency = service.metrics.hit_latency
        self.tap = service.tap
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport quacks like asyncio.DatagramTransport without subclassing it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        started = time.perf_counter()
        transport = self.transport
        assert transport is not None  # datagrams arrive only after connection_made
        if self.tap.clients:
            self._tapped(data, addr, transport)
            return
        reply = self.engine.answer_from_cache(data, addr[0], False)
        if reply is not None:
            transport.sendto(reply, addr)
            self.hit_latency.observe(time.perf_counter() - started)
            return
        self.service.spawn_slow(data, addr[0], transport, addr)

    def _tapped(self, data: bytes, addr: Any, transport: asyncio.DatagramTransport) -> None:
        """datagram_received with dnstap on (kept apart so the path without it stays as lean)."""
        started, received = time.perf_counter(), time.time()
        tap = self.tap
        reply = self.engine.answer_from_cache(data, addr[0], False)
        if reply is not None:
            transport.sendto(reply, addr)
            self.hit_latency.observe(time.perf_counter() - started)
            tap.client_exchange(SocketProtocol.UDP, addr[0], addr[1], data, received, reply)
            return
        tap.client_query(SocketProtocol.UDP, addr[0], addr[1], data, received)
        self.service.spawn_slow(data, addr[0], transport, addr, received)

    def error_received(self, exc: Exception) -> None:  # ICMP errors for replies to gone clients
        pass
