"""The RADIUS transport: auth and accounting listeners, the engines, the store, the bus, CoA.

Theory of operation
-------------------
Each datagram is handled inside the receive callback, synchronously, as far as it can be:

1. the NAS is found by source address (``NasTable``; unknown: dropped and counted);
2. a retransmission — same source address and port, identifier and authenticator
   (``DuplicateCache``) — gets the reply sent the first time, or nothing while the first is
   still being worked on, and is not processed again;
3. the packet is decoded and handed to the engine.

Access-Requests are answered at once, except a PAP password that only the scrypt verifier can
judge (run on a small thread pool of its own, at most ``max_pending_password_checks`` at a
time) and Access-Rejects, which wait ``reject_delay_seconds``. Accounting-Requests are queued;
once per turn of the event loop the queue becomes one ``record_accounting`` write (group
commit), and only when it is durable do the Accounting-Responses go out (RFC 2866 §4.1: no
response unless recorded). A failed write answers nothing: the NAS retries, nothing is lost.

Through the bus: subscriber changes re-read that subscriber from the store; a suspension sends
each of its open sessions a Disconnect-Request (or a CoA-Request into the walled garden), a
plan change a CoA-Request with the new profile, closing or deleting a Disconnect-Request.
Sessions stopped or started are announced (``SessionStarted``/``SessionStopped``). Sessions the
NAS stopped reporting are closed after ``stale_session_intervals`` interim intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING, Any, cast

from OpenSSL import SSL

from ispd.configtypes import SocketAddress
from ispd.control import CommandError
from ispd.credentials import PasswordChecker
from ispd.events import (
    LeaseEnded,
    LeaseGranted,
    PlanAdded,
    ReservationEvent,
    SessionStarted,
    SessionStopped,
    SubscriberAdded,
    SubscriberClosed,
    SubscriberDeleted,
    SubscriberEvent,
    SubscriberPasswordChanged,
    SubscriberPlanChanged,
    SubscriberRadiusReplyChanged,
    SubscriberResumed,
    SubscriberSuspended,
)
from ispd.listeners import bound_socket, open_datagram_listener, set_receive_buffer
from ispd.logs import LogBudget, LogThrottle, get_logger
from ispd.radius.addresses import AddressPools, holder_of, line_of
from ispd.radius.attributes import AttributeValueError, ReplyAttribute, reply_attribute
from ispd.radius.coa import DynamicAuthorizationClient, NasSlots, session_identification
from ispd.radius.codec import Code, Packet, RadiusDecodeError, decode, encode_response, proxy_states
from ispd.radius.config import (
    LEAVING_THE_GARDEN,
    LEAVING_THE_PLAN,
    NasKind,
    RadiusClientConfig,
    RadiusConfig,
    SuspendedAction,
    client_networks,
)
from ispd.radius.dictionary import Dictionary, DictionaryError, load_dictionary
from ispd.radius.directory import AuthSubject, Directory
from ispd.radius.eaptls import TunnelServer, tls_context_error, tunnel_server
from ispd.radius.engine import (
    AccountingEngine,
    AuthEngine,
    Decision,
    Drop,
    Nas,
    PendingCheck,
    PendingClaim,
    PlanReply,
    RejectReason,
    ReplySettings,
)
from ispd.radius.homeclient import HomeServerClient
from ispd.radius.metrics import RadiusMetrics
from ispd.radius.prefixes import PrefixPool, prefix_pools
from ispd.radius.proxy import (
    HomeServer,
    ProxyError,
    Realm,
    Realms,
    forward_access_request,
    forward_accounting_request,
    relay_answer,
    status_server_request,
)
from ispd.radius.sessions import OpenSessions, fills_in
from ispd.service import Health, Service, ServiceContext, ServiceStartError, StoreWrites, describe_os_error
from ispd.store.errors import Conflict, InvalidValue, NotFound, StoreError
from ispd.store.models import (
    AccountingOutcome,
    AccountingRecord,
    AccountingResult,
    AccountingStatus,
    AddressClaim,
    Lease,
    LeaseService,
    LeaseState,
    OverQuota,
    QuotaCrossing,
    RadiusSession,
    ReservationKind,
    SubscriberStatus,
)
from ispd.store.sqlite_radius import (
    ADMIN_CLOSE_CAUSE,
    MOVED_CAUSE,
    NOT_ON_NAS_CAUSE,
    STALE_CAUSE,
    SUPERSEDED_CAUSE,
    month_start,
)

if TYPE_CHECKING:
    from ispd.config import Config

log = get_logger("ispd.radius")

QUOTA_CHECK_SECONDS = 10.0
SWEEP_SECONDS = 1.0
# The wall clock moved this much more (or less) than the monotonic one over a sweep: a step (NTP
# setting a clock that booted wrong, an operator), not a slew.
CLOCK_STEP_SECONDS = 10.0
SESSION_CONTEXT_NOT_FOUND = 503  # Error-Cause (RFC 5176 §3.5): the NAS has no such session
MAX_ENFORCING = 64  # Disconnects/CoAs under way past which _enforce_status waits for its next round
MAX_DYNAMIC_PER_NAS = 32  # Disconnects/CoAs under way to one NAS at a time; the rest wait their turn
MAX_DATAGRAM = 4096
MAX_QUEUED_ACCOUNTING = 50_000
DROP_LOG_INTERVAL_SECONDS = 60.0
DROP_LOG_SOURCES = 20  # lines per port and reason in an interval, each of another source
MAX_PENDING_CLAIMS = 4096  # Access-Accepts waiting for an address (or a prefix) from the store
CLAIM_ROUNDS = 3
# A prefix for a login: candidates the store may refuse (reserved by another process meanwhile,
# or a longer prefix inside one, which the directory's index does not see), and how many of the
# pool's prefixes one search looks at (a loop's few milliseconds: a pool dense with reservations
# behind its cursor, just after a start, is crossed over a few logins, not in one).
PREFIX_ATTEMPTS = 8
PREFIX_SEARCH = 4096
# A stopped session's address that an Access-Accept gave again meanwhile: a re-authentication of
# that session, or the next session's Accept whose Start is on its way. Looked at again this long
# after the Stop: no session on it by then, and not given again, it goes back to the pool.
REGIVEN_GRACE_SECONDS = 60.0
# Metric labels by packet code, keyed by plain ints (an enum lookup per packet costs ~0.5 µs).
_REQUEST_NAMES = {int(Code.ACCESS_REQUEST): "access-request", int(Code.ACCOUNTING_REQUEST): "accounting-request",
                  int(Code.STATUS_SERVER): "status-server"}
_RESPONSE_NAMES = {int(Code.ACCESS_ACCEPT): "access-accept", int(Code.ACCESS_REJECT): "access-reject",
                   int(Code.ACCESS_CHALLENGE): "access-challenge", int(Code.ACCOUNTING_RESPONSE): "accounting-response"}
_AUTH_RESULTS = {int(Code.ACCESS_ACCEPT): "accept", int(Code.ACCESS_REJECT): "reject",
                 int(Code.ACCESS_CHALLENGE): "challenge"}
_ACCOUNTING_RESPONSE = int(Code.ACCOUNTING_RESPONSE)
_ACCESS_ANSWERS = (int(Code.ACCESS_ACCEPT), int(Code.ACCESS_REJECT), int(Code.ACCESS_CHALLENGE))
_ACCOUNTING_ANSWER = (_ACCOUNTING_RESPONSE,)
HOME_SERVER_DOWN_SECONDS = 30.0  # a home server that did not answer is tried after the others this long
MAX_ACCOUNTING_COPIES = 1000  # accounting copies waiting for home servers at once; past it: dropped, counted


def realms_of(config: RadiusConfig, mark: bytes | None = None) -> Realms:
    return Realms([Realm.from_config(r) for r in config.realm], list(config.local_realms), mark)

# The port it came to ("auth", "acct"), a datagram's source (address, port) and its header (code,
# identifier, length, authenticator): a retransmission repeats all of them (RFC 5080 §2.2.2). The
# port, because a Status-Server sent to both from one socket has the same header, and is
# answered with an Access-Accept on one and an Accounting-Response on the other (RFC 5997 §3).
DuplicateKey = tuple[str, Any, bytes]


# --- who may talk to us ------------------------------------------------------------------------


class NasTable:
    """Configured clients by source address: a dict per prefix length, the longest first (a host
    entry wins over its subnet's), so that finding a source costs a lookup per length in use,
    not a test per client (a source that is no client, forged in a flood, is looked for anew
    each time); what a source address matched is remembered."""

    def __init__(self, clients: list[RadiusClientConfig]) -> None:
        self.clients: dict[str, Nas] = {}
        # IP version → [(prefix length, {network address >> host bits: client})], longest first
        self._lengths: dict[int, list[tuple[int, dict[int, Nas]]]] = {4: [], 6: []}
        self._by_address: dict[str, Nas | None] = {}
        for network, client in client_networks_of(clients):
            nas = Nas(client.name, client.secret.get_secret_value().encode(), client.kind,
                      client.require_message_authenticator, client.limit_proxy_state, client.coa_port, network)
            self.clients[client.name] = nas
            lengths = self._lengths[network.version]
            if not lengths or lengths[-1][0] != network.prefixlen:
                lengths.append((network.prefixlen, {}))
            host_bits = network.max_prefixlen - network.prefixlen
            lengths[-1][1].setdefault(int(network.network_address) >> host_bits, nas)

    def find(self, address: str) -> Nas | None:
        try:
            return self._by_address[address]
        except KeyError:
            pass
        try:
            ip = ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value, width = int(ip), ip.max_prefixlen
        found = None
        for length, networks in self._lengths[ip.version]:
            found = networks.get(value >> (width - length))
            if found is not None:
                break
        if len(self._by_address) > 100_000:
            self._by_address.clear()
        self._by_address[address] = found
        return found

    def carry_over(self, old: NasTable) -> None:
        """What ``auto`` learnt about each NAS survives a reload, while the client is that NAS:
        not once its name is given to another address, or to a network (whose NASes need not
        all have been upgraded as the one was)."""
        for name, nas in self.clients.items():
            before = old.clients.get(name)
            if before is not None and before.network == nas.network:
                nas.message_authenticator_seen = before.message_authenticator_seen


def client_networks_of(clients: list[RadiusClientConfig]) -> list[tuple[IPv4Network | IPv6Network,
                                                                        RadiusClientConfig]]:
    config = RadiusConfig(client=clients)
    return client_networks(config)


class DuplicateCache:
    """Replies by (source address, port, identifier + authenticator), kept ``window`` seconds;
    None while the request is still being worked on. At most ``max_entries``: beyond, the
    oldest tenth goes (a flood of distinct requests must not grow memory without bound; at
    25,000 requests/s a 30 s window is 750,000 replies). Timed by the monotonic clock: a step
    of the wall clock must neither keep entries for the length of the step nor drop them."""

    def __init__(self, window: float, max_entries: int = 500_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[DuplicateKey, tuple[float, bytes | None]] = {}

    def get(self, key: DuplicateKey) -> tuple[bool, bytes | None]:
        """(seen, reply): seen and None means "in progress"."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self.clock():
            return False, None
        return True, entry[1]

    def begin(self, key: DuplicateKey, at_least: float = 0.0) -> None:
        """In progress, for the window or ``at_least`` seconds (a proxied request, whose home
        servers may take longer). (A longer entry among shorter ones only delays ``sweep``.)"""
        self._put(key, (self.clock() + max(self.window, at_least), None))

    def done(self, key: DuplicateKey, reply: bytes) -> None:
        self._put(key, (self.clock() + self.window, reply))

    def _put(self, key: DuplicateKey, entry: tuple[float, bytes | None]) -> None:
        entries = self._entries
        if entries.pop(key, None) is None and len(entries) >= self.max_entries:
            for old in list(itertools.islice(entries, self.max_entries // 10 or 1)):
                del entries[old]
        entries[key] = entry  # at the end: the dict stays in expiry order for sweep()

    def forget(self, key: DuplicateKey) -> None:
        self._entries.pop(key, None)

    def sweep(self) -> None:
        """Drop what has expired; entries were added in time order, so stop at the first live one."""
        entries = self._entries
        now = self.clock()
        expired = []
        for key, (expires, _) in entries.items():
            if expires > now:
                break
            expired.append(key)
        for key in expired:
            del entries[key]

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True)
class _QueuedAccounting:
    record: AccountingRecord
    packet: Packet
    nas: Nas
    transport: asyncio.DatagramTransport
    addr: Any
    key: DuplicateKey
    started: float  # perf_counter, for the processing time


# --- the service -------------------------------------------------------------------------------


class RadiusService(Service):
    name = "radius"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config: RadiusConfig = config.radius
        self._pool_routers = config.radius_pool_routers()
        self.context = context
        self.metrics = RadiusMetrics()
        self.directory = Directory()
        self.sessions = OpenSessions()
        self.passwords = PasswordChecker(self.config.auth_cache_seconds)
        self.nas = NasTable(self.config.client)
        self.duplicates = DuplicateCache(self.config.duplicate_window_seconds)
        self.coa = DynamicAuthorizationClient(self.config.coa_timeout_seconds, self.config.coa_attempts,
                                              coa_sources(self.config))
        self.realms = realms_of(self.config)
        # Home servers that did not answer lately, until when: tried after the others.
        self._home_down: dict[HomeServer, float] = {}
        # When each home server last gave a valid answer: one that answered others while a
        # request waited is up, whatever became of that request (FreeRADIUS's rule too).
        self._home_heard: dict[HomeServer, float] = {}
        self._home_unsent_told: dict[HomeServer, float] = {}  # when each was last logged as unsent
        # Home servers of realms with Status-Server checks that did not answer: no requests go
        # to them until one of the checks (a task each) is answered.
        self._home_dead: dict[HomeServer, asyncio.Task[None]] = {}
        self._copying = 0  # accounting copies on their way to home servers
        self._home_clients: dict[HomeServer, HomeServerClient] = {}
        self.dictionary: Dictionary | None = None
        self.auth: AuthEngine | None = None
        self.accounting: AccountingEngine | None = None
        self._transports: list[asyncio.DatagramTransport] = []
        self.bound: list[tuple[str, str, int]] = []
        self._queue: list[_QueuedAccounting] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Sessions a Disconnect or CoA is under way for, whoever sent it: how many.
        self._requesting: dict[int, int] = {}
        # (From a run of 2,000 plan changes: 2,000 exchanges at once, a socket each; under the
        # usual 1,024 file descriptors CoAs failed unsent and the admin API dropped connections.)
        self._nas_slots = NasSlots(MAX_DYNAMIC_PER_NAS)
        self._pending_checks = 0
        self._checker = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ispd-radius-password")
        # (Every Accounting-Request fails alike while the store is down, and again at each
        # retransmission: one line when it starts, one with how many went unanswered when it ends.)
        self._writes = StoreWrites(log, "radius.accounting.write_failed", "radius.accounting.write_restored",
                                   count="unanswered")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drop_logged = LogThrottle(DROP_LOG_INTERVAL_SECONDS)
        self._drop_budget = LogBudget(DROP_LOG_SOURCES, DROP_LOG_INTERVAL_SECONDS)
        self._writing = 0  # accounting records handed to the store and not written yet
        self._rejects_logged: dict[tuple[str, int | None, str, str], list[Any]] = {}
        self._quota_checked: dict[int, float] = {}  # subscriber -> monotonic time of its last check
        self._quota_checking: set[int] = set()
        # Subscribers whose plan change is being read in (how many at once): it judges the new
        # quota itself, and its one CoA carries the verdict (_judge_quota moves nothing meanwhile).
        self._plan_changing: dict[int, int] = {}
        # Subscribers whose usage grew since their last check and who were not checked then (the
        # rate limit, or a check already under way): the next sweep checks them, open sessions or
        # not, so that a crossing just before a Stop still flags the next login.
        self._quota_due: set[int] = set()
        # Subscribers whose sessions a quota verdict moved -> when (the wall clock): those its CoA
        # did not reach get it again in housekeeping, as a suspension's (_retry_quota_moves).
        self._quota_moved: dict[int, float] = {}
        self._refreshing: dict[int, list[Any]] = {}  # [lock, users]: one refresh of a subscriber at a time
        self.addresses = AddressPools(())
        self.prefixes: dict[str, PrefixPool] = {}  # (made once the directory knows the reservations)
        self._pending_claims = 0
        self._releases: list[tuple[str, str]] = []  # (address, holder) of stopped sessions, to give back
        self._releasing: set[str] = set()  # their addresses, until the store has released them

    # --- lifecycle

    async def start(self, stack: AsyncExitStack) -> None:
        self._loop = asyncio.get_running_loop()
        self.dictionary = await self._load_dictionary(self.config)
        settings = self._reply_settings(self.config, self.dictionary)
        await self._load_store()
        self._warn_of_unknown_plans(self.config)
        await self._load_quota_flags()
        self.auth = AuthEngine(self.directory, self.sessions, self.passwords, self.dictionary, settings)
        self.auth.eap_methods, self.auth.tunnels = self.config.eap.offered, await self._tunnel_server(self.config)
        self.auth.realms = self.realms
        self.accounting = AccountingEngine(self.directory, self.sessions, self.dictionary,
                                           self.config.interim_interval_seconds)
        self.accounting.interval_of = self.auth.interim_interval
        self.accounting.client_of = self._client_of
        self._subscribe(stack)
        await self._open(stack)
        stack.callback(self._checker.shutdown, wait=False, cancel_futures=True)
        stack.push_async_callback(self._cancel_tasks)
        stack.callback(self._close_home_clients)
        for collector in self.metrics.collectors(self._gauges):
            self.context.registry.register(collector)
            stack.callback(self.context.registry.unregister, collector)
        stack.callback(self.context.control.register("radius.session.disconnect", self._command_disconnect))
        stack.callback(self.context.control.register("radius.session.coa", self._command_coa))
        stack.callback(self.context.control.register("radius.session.close", self._command_close))
        self._spawn(self._sweep_periodically(), "housekeeping")
        log.info("radius.started", listen=[f"{kind} {SocketAddress(h, p)}" for kind, h, p in self.bound],
                 clients=len(self.nas.clients), subscribers=len(self.directory.subjects),
                 open_sessions=len(self.sessions))

    def _client_of(self, address: str) -> Nas | None:
        return self.nas.find(address)  # (the table of the last reload)

    @staticmethod
    async def _tunnel_server(config: RadiusConfig) -> TunnelServer | None:
        """The TLS server of EAP-TTLS, PEAP and EAP-TLS, when ``[radius.eap]`` names a certificate."""
        eap = config.eap
        if eap.certificate is None or eap.private_key is None:
            return None
        try:
            return await asyncio.to_thread(tunnel_server, eap.certificate, eap.private_key, eap.client_ca)
        except (OSError, SSL.Error) as exc:
            raise ServiceStartError(f"radius: eap: {tls_context_error(exc)}") from None

    async def _load_dictionary(self, config: RadiusConfig) -> Dictionary:
        try:
            return await asyncio.get_running_loop().run_in_executor(None, load_dictionary, config.dictionaries)
        except (DictionaryError, OSError) as exc:
            raise ServiceStartError(f"radius: dictionaries: {exc}") from None

    @staticmethod
    def _reply_settings(config: RadiusConfig, dictionary: Dictionary) -> ReplySettings:
        def attributes(texts: list[str], where: str) -> tuple[ReplyAttribute, ...]:
            try:
                return tuple(reply_attribute(dictionary, text) for text in texts)
            except AttributeValueError as exc:
                raise ServiceStartError(f"radius: {where}: {exc}") from None

        plans = {p.plan: PlanReply(attributes(p.attributes, f"plan {p.plan!r} attributes"), p.framed_pool,
                                   p.suspended, p.address_pool, p.prefix_pool, p.line_lock) for p in config.plan}
        return ReplySettings(config.interim_interval_seconds, config.suspended,
                             attributes(config.walled_garden_attributes, "walled_garden_attributes"), plans)

    async def _load_store(self) -> None:
        store = self.context.store
        try:
            subscribers = await store.list_subscribers()
            plans = await store.list_plans()
            credentials = await store.list_credentials()
            reservations = await store.list_reservations()
            sessions = await store.list_sessions(open_only=True, limit=10_000_000)
            self.addresses = await self._address_pools(self.config)
        except StoreError as exc:
            raise ServiceStartError(f"radius: cannot load subscribers from the store: {exc}") from None
        self.directory.load(subscribers, plans, credentials, reservations)
        self.prefixes = prefix_pools(self.config.prefix_pool, self.directory.last_reserved_prefix)
        self.sessions.load(sessions)

    async def _load_quota_flags(self) -> None:
        """Who is over its plan's monthly quota already, from this month's usage (one query at
        start): the flag lives in memory, and the first login after a restart must get the
        over-quota profile, not wait for a check that only accounting or a session brings."""
        capped = {sid: subject.plan.monthly_quota_bytes for sid, subject in self.directory.subjects.items()
                  if subject.plan is not None and subject.plan.monthly_quota_bytes is not None}
        if not capped:
            return
        now = self.context.clock()
        try:
            used = await self.context.store.usage_totals(since=month_start(now), until=now)
        except StoreError as exc:
            raise ServiceStartError(f"radius: cannot load this month's usage from the store: {exc}") from None
        for subscriber_id, quota in capped.items():
            usage = used.get(subscriber_id)
            if usage is not None and usage.input_octets + usage.output_octets >= quota:
                self.directory.subjects[subscriber_id].over_quota = True

    async def _address_pools(self, config: RadiusConfig) -> AddressPools:
        pools = AddressPools(((p.name, *p.bounds) for p in config.address_pool), self._pool_routers)
        # (With no pool left, open sessions may still hold addresses of the pools they had.)
        # Ended leases too, oldest first: each line's last address, free now, is its first
        # candidate after a restart or reload as before it (a BNG's redial storm keeps them).
        leases = await self.context.store.list_leases(include_ended=True)
        pools.load(sorted(leases, key=lambda lease: lease.starts_at), self.context.clock())
        return pools

    async def _open(self, stack: AsyncExitStack) -> None:
        for kind, addresses in (("auth", self.config.listen_auth), ("acct", self.config.listen_acct)):
            for address in addresses:
                factory = partial(_AuthProtocol, self) if kind == "auth" else partial(_AccountingProtocol, self)
                # Bound here rather than by the loop, so that a failure keeps its errno (the
                # operator reads "Address already in use", not "could not bind").
                try:
                    sock = bound_socket(address.host, address.port, socket.SOCK_DGRAM)
                except OSError as exc:
                    raise ServiceStartError(f"radius: cannot listen on {address}: {describe_os_error(exc)}") from None
                with contextlib.suppress(OSError):
                    set_receive_buffer(sock, self.config.receive_buffer_bytes)
                transport, _ = await open_datagram_listener(factory, sock)
                self._transports.append(transport)
                self.bound.append((kind, address.host, int(transport.get_extra_info("sockname")[1])))
                stack.callback(transport.close)

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        self._flush()
        # Enforcement's requests are not waited for: the next start sends them again (nor the
        # Status-Server checks of dead home servers, which go on until one answers).
        endless = ("housekeeping", "enforce-status", "home-server-check")
        pending = [t for t in self._tasks if t.get_name() not in endless]
        if pending:
            await asyncio.wait(pending, timeout=self.config.coa_timeout_seconds * self.config.coa_attempts)

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def reload(self, old: Config, new: Config) -> None:
        if (old.radius.listen_auth, old.radius.listen_acct) != (new.radius.listen_auth, new.radius.listen_acct):
            raise ServiceStartError("radius: a change of listen addresses needs a restart")
        dictionary = await self._load_dictionary(new.radius)
        settings = self._reply_settings(new.radius, dictionary)
        tunnels = await self._tunnel_server(new.radius)  # the certificate re-read: a renewed one takes effect
        table = NasTable(new.radius.client)
        table.carry_over(self.nas)
        assert self.auth is not None and self.accounting is not None
        self.config, self.nas, self.dictionary = new.radius, table, dictionary
        if new.radius.receive_buffer_bytes != old.radius.receive_buffer_bytes:
            # (A new size on the sockets there are: it was read at start only, and a reload
            # that said it applied all left the old one, the one a burst had overflowed.)
            for transport in self._transports:
                with contextlib.suppress(OSError):
                    set_receive_buffer(transport.get_extra_info("socket"), new.radius.receive_buffer_bytes)
        self.auth.dictionary = self.accounting.dictionary = dictionary
        self.auth.settings = settings
        # (with the plans that name them)
        self.prefixes = prefix_pools(new.radius.prefix_pool, self.directory.last_reserved_prefix, self.prefixes)
        self.auth.forget_profiles()
        if tunnels is None or self.auth.tunnels is None:
            self.auth.tunnels = tunnels
        else:  # tunnels under way finish with the certificate they started with
            self.auth.tunnels.context, self.auth.tunnels.client_context = tunnels.context, tunnels.client_context
        self.auth.eap_methods = new.radius.eap.offered
        pool_routers = new.radius_pool_routers()
        if old.radius.address_pool != new.radius.address_pool:
            self._pool_routers = pool_routers
            try:
                self.addresses = await self._address_pools(new.radius)
            except StoreError as exc:
                raise ServiceStartError(f"radius: cannot load the address pools' leases: {exc}") from None
        elif pool_routers != self._pool_routers:
            self._pool_routers = pool_routers
            self.addresses.unclaimable = frozenset(pool_routers)
        self.accounting.interim_interval = new.radius.interim_interval_seconds
        self.accounting.forget_clients()
        self.passwords.cache_seconds = new.radius.auth_cache_seconds
        self.duplicates.window = new.radius.duplicate_window_seconds
        self.coa = DynamicAuthorizationClient(new.radius.coa_timeout_seconds, new.radius.coa_attempts,
                                              coa_sources(new.radius))
        self.realms = self.auth.realms = realms_of(new.radius, self.realms.mark)  # (loops under way still known)
        for task in self._home_dead.values():  # (checked under the realms' old settings)
            task.cancel()
        self._home_dead.clear()
        # From the store itself: a plan just added with the CLI, the usual step before naming it
        # here, may not have reached the directory yet (it polls the store), and the warning
        # would be false.
        try:
            known = {plan.name for plan in await self.context.store.list_plans()}
        except StoreError:
            known = None
        self._warn_of_unknown_plans(new.radius, known)
        log.info("radius.reloaded", clients=len(table.clients))

    def _warn_of_unknown_plans(self, config: RadiusConfig, known: set[str] | None = None) -> None:
        """A [[radius.plan]] whose name is no plan in the store reaches nobody: a typo, most
        likely (the store's plans change at run time, so this is a warning, not a refusal).
        ``known``: the store's plan names (default: the directory's, loaded from it)."""
        if known is None:
            known = {plan.name for plan in self.directory.plans.values()}
        for reply in config.plan:
            if reply.plan not in known:
                log.warning("radius.plan.unknown", plan=reply.plan, known=sorted(known)[:20],
                            detail="no plan of this name in the store: its attributes reach nobody")

    def health(self) -> Health:
        if not self._transports:
            return Health(False, "not listening")
        if self._writes.still_failing(self.context.store):
            return Health(False, "accounting writes to the store are failing")
        return Health(True)

    def describe(self) -> str:
        return "radius on " + ", ".join(f"{kind} {SocketAddress(h, p)}" for kind, h, p in self.bound)

    def _gauges(self) -> dict[str, float]:
        return {"open_sessions": len(self.sessions), "pending_password_checks": self._pending_checks,
                "eap_conversations": (len(self.auth.conversations) + len(self.auth.tunnels or ())) if self.auth else 0,
                "duplicate_cache_entries": len(self.duplicates),
                "home_servers_down": len({s for s, until in self._home_down.items() if until > time.monotonic()}
                                         | self._home_dead.keys())}

    def _spawn(self, coroutine: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- receiving (called from the protocols)

    def _log_reject(self, decision: Decision, nas: Nas, now: float) -> None:
        """An Access-Reject in the log (the operator's trail of failed logins), at most one line
        a minute per NAS, subscriber, reason and method, with how many there were: a
        password-guessing flood must not flood the log too. ``now`` is the wall clock's: one
        stepped back (NTP, an operator) must not keep them out of the log for the step's length."""
        key = (nas.name, decision.subscriber_id, str(decision.reject), decision.method)
        entry = self._rejects_logged.get(key)
        if entry is not None and 0 <= now - entry[0] < DROP_LOG_INTERVAL_SECONDS:
            entry[1] += 1
            return
        if len(self._rejects_logged) > 10_000:
            self._rejects_logged.clear()
        self._rejects_logged[key] = [now, 0]
        log.info("radius.access.rejected", nas=nas.name, reason=str(decision.reject), method=decision.method,
                 subscriber_id=decision.subscriber_id, not_logged_since=entry[1] if entry is not None else 0,
                 **({"detail": decision.detail} if decision.detail else {}))

    def _log_withheld(self, decision: Decision, nas: Nas, now: float) -> None:
        """An Access-Accept without the login's reserved IPv6, which another station's open
        session has: counted, and said at most once a minute per login (a CPE that redials
        every few seconds must not flood the log)."""
        withheld = decision.withheld
        assert withheld is not None
        for kind in withheld.kinds:
            self.metrics.ipv6_withheld.inc(kind)
        if not self._drop_logged.due(("withheld", withheld.login), now):
            return
        session = withheld.session
        log.warning("radius.ipv6.withheld", login=withheld.login, subscriber_id=decision.subscriber_id, nas=nas.name,
                    withheld=",".join(withheld.kinds), held_by_session=session.acct_session_id,
                    held_by_station=session.calling_station_id, held_by_port=session.nas_port_id,
                    held_by_nas=session.nas_address,
                    hint="the login's reserved IPv6 stays with its first station; a second concurrent session "
                         "gets none (reserve a prefix for each line, by circuit-id or remote-id)")

    def _dropped(self, port: str, reason: str, source: str, nas: Nas | None, now: float, count: int = 1) -> None:
        """Count a datagram left unanswered, and say so in the log — once a minute per source
        and reason, so that a flood cannot flood the log too."""
        self.metrics.dropped.inc(port, reason, amount=count)
        if not self._drop_logged.due((source, reason), now):
            return
        # And a few sources a minute per reason: the source of a datagram from no client is
        # anyone's to forge, and a flood from a new one each would write a line per datagram.
        held = self._drop_budget.take((port, reason), now)
        if held is None:
            return
        log.warning("radius.request.dropped", port=port, reason=reason, source=source,
                    nas=nas.name if nas is not None else None, count=count,
                    **({"sources_not_logged": held} if held else {}))

    def admit(self, port: str, data: bytes, addr: Any, transport: asyncio.DatagramTransport,
              now: float) -> tuple[Nas, Packet, DuplicateKey] | None:
        """The NAS, packet and duplicate key of a datagram worth handling; None when it was
        dropped or answered from the duplicate cache."""
        nas = self.nas.find(addr[0])
        if nas is None:
            self._dropped(port, Drop.UNKNOWN_CLIENT, addr[0], None, now)
            return None
        key = (port, addr, data[:20])
        seen, reply = self.duplicates.get(key)
        if seen:
            if reply is None:
                self.metrics.dropped.inc(port, Drop.DUPLICATE_IN_PROGRESS)  # normal while working: not logged
            else:
                self.metrics.duplicates.inc(port)
                transport.sendto(reply, addr)
            return None
        try:
            packet = decode(data)
        except RadiusDecodeError as exc:
            self._dropped(port, exc.reason, addr[0], nas, now)
            return None
        self.metrics.requests.inc(_REQUEST_NAMES.get(packet.code, "other"))
        return nas, packet, key

    def handle_auth(self, data: bytes, addr: Any, transport: asyncio.DatagramTransport) -> None:
        started = time.perf_counter()
        now = self.context.clock()
        admitted = self.admit("auth", data, addr, transport, now)
        if admitted is None:
            return
        nas, packet, key = admitted
        assert self.auth is not None
        try:
            decision = self.auth.handle(packet, nas, now, addr[0])
        except Exception:  # a bug on one packet must not stop the next
            self.metrics.dropped.inc("auth", Drop.INTERNAL_ERROR)
            log.error("radius.request.failed", nas=nas.name, exc_info=True)
            return
        self._conclude(decision, packet, nas, transport, addr, key, started, now)

    def _conclude(self, decision: Decision, packet: Packet, nas: Nas, transport: asyncio.DatagramTransport,
                  addr: Any, key: DuplicateKey, started: float, now: float) -> None:
        if decision.proxy is not None:
            # The NAS's copies meanwhile are not proxied again, however long its servers take.
            realm = decision.proxy
            self.duplicates.begin(key, realm.timeout * realm.attempts * len(realm.auth_servers) + 1.0)
            self._spawn(self._proxied(decision.proxy, packet, nas, transport, addr, key, started), "proxy")
            return
        if decision.pending is not None:
            self._check_password(decision.pending, packet, nas, transport, addr, key, started)
            return
        if decision.claim is not None:
            self._claim(decision.claim, packet, nas, transport, addr, key, started)
            return
        code = decision.code
        if code is None:
            self._dropped("auth", decision.drop, addr[0], nas, now)
            return
        try:
            reply = encode_response(code, packet.identifier, packet.authenticator,
                                    decision.attributes + proxy_states(packet), nas.secret)
        except ValueError:  # over RADIUS's 4096 octets (RFC 2865 §3): nothing a NAS could take
            self.duplicates.forget(key)
            self._dropped("auth", Drop.REPLY_TOO_LARGE, addr[0], nas, now)
            return
        if decision.method == "status":
            kind = "status"
        else:
            kind = "access"
            self.metrics.auth.inc(decision.method, _AUTH_RESULTS[code])
        if decision.withheld is not None and code == Code.ACCESS_ACCEPT:
            self._log_withheld(decision, nas, now)
        if decision.reject is not None:
            self.metrics.rejects.inc(decision.reject)
            self._log_reject(decision, nas, now)
            if self.config.reject_delay_seconds > 0:
                # The processing time is ispd's, measured now: the delay is policy, not work.
                self.metrics.latency[kind].observe(time.perf_counter() - started)
                # Held for the delay even past the window: a copy then is not judged (and
                # counted, and answered) a second time. With a second to spare, as a proxied
                # request: the timer may run after a copy read as the delay ends.
                self.duplicates.begin(key, self.config.reject_delay_seconds + 1.0)
                assert self._loop is not None
                self._loop.call_later(self.config.reject_delay_seconds, self._send, transport, reply, addr, key,
                                      code, None, started, None)
                return
        self._send(transport, reply, addr, key, code, kind, started, now)

    def _send(self, transport: asyncio.DatagramTransport, reply: bytes, addr: Any, key: DuplicateKey, code: int,
              kind: str | None, started: float, now: float | None) -> None:
        """Send a reply; its processing time goes to ``kind`` unless that was observed already."""
        self.duplicates.done(key, reply)
        if transport.is_closing():
            return
        transport.sendto(reply, addr)
        self.metrics.responses.inc(_RESPONSE_NAMES.get(code, "other"))
        if kind is not None:
            self.metrics.latency[kind].observe(time.perf_counter() - started)

    # --- proxying ([[radius.realm]])

    def _close_home_clients(self) -> None:
        for client in self._home_clients.values():
            client.close()
        self._home_clients.clear()

    def _home_servers(self, servers: tuple[HomeServer, ...], attempts: int) -> list[tuple[HomeServer, int]]:
        """In the order given, with the sends each gets: those that failed lately last and with
        one send only, so that a realm whose servers are all down costs each request one timeout
        per server, not ``attempts`` of them; those that failed a realm with Status-Server
        checks not at all, until a check is answered (FreeRADIUS fails a request at once when
        all are dead)."""
        now = time.monotonic()
        servers = tuple(s for s in servers if s not in self._home_dead) if self._home_dead else servers
        up = [(s, attempts) for s in servers if self._home_down.get(s, 0.0) <= now]
        return up + [(s, 1) for s in servers if self._home_down.get(s, 0.0) > now]

    def _home_client(self, server: HomeServer) -> HomeServerClient:
        client = self._home_clients.get(server)
        if client is None:
            client = self._home_clients[server] = HomeServerClient(server.address, server.port,
                                                                   self.coa.source_for(server.address))
        return client

    async def _check_home_server(self, realm: Realm, server: HomeServer, answers: tuple[int, ...]) -> None:
        """Status-Server to a dead home server every ``realm.status_check`` seconds until it
        answers: then it takes requests again."""
        # RFC 5997 §3: Accounting-Response on an accounting port (some answer Access-Accept there too).
        accounting = answers == _ACCOUNTING_ANSWER
        expected = (int(Code.ACCOUNTING_RESPONSE), int(Code.ACCESS_ACCEPT)) if accounting \
            else (int(Code.ACCESS_ACCEPT),)
        # An accounting server's answers need no Message-Authenticator (its Response Authenticator
        # proves them, and _ask_home takes its Accounting-Responses without): its answer to a
        # check needs none either. Required there, a server that signs none (FreeRADIUS before
        # 3.2.5) was taken while up, and once down never taken again, its copies all lost.
        required = realm.require_message_authenticator and not accounting
        told = False
        while True:
            await asyncio.sleep(realm.status_check)
            exchange = await self._home_client(server).exchange(
                lambda identifier: status_server_request(identifier, realm.secret), realm.secret, expected,
                wait=realm.timeout, attempts=1, require_message_authenticator=required)
            if exchange.reply is not None:
                break
            if exchange.refused and not told:  # answered, but refused: say why, once
                told = True
                log.warning("radius.proxy.home_server_check_refused", realm=realm.name, server=str(server),
                            error=exchange.error)
        self._home_dead.pop(server, None)
        self._home_down.pop(server, None)
        log.info("radius.proxy.home_server_alive", realm=realm.name, server=str(server))

    async def _ask_home(self, realm: Realm, servers: tuple[HomeServer, ...], build: Callable[[int], bytes],
                        answers: tuple[int, ...]) -> tuple[tuple[Packet, bytes] | None, bool]:
        """The first valid answer of the realm's servers, tried in turn, with the request it
        answers, or None; and, when None, whether a server answered but was refused (another
        secret, no Message-Authenticator: not a timeout, as the request's result says). A
        ``ProxyError`` from ``build`` goes to the caller."""
        refused_any = False
        for server, attempts in self._home_servers(servers, realm.attempts):
            if server in self._home_dead:  # (found dead while this request waited for another)
                continue
            asked = time.monotonic()
            exchange = await self._home_client(server).exchange(
                build, realm.secret, answers, wait=realm.timeout, attempts=attempts,
                require_message_authenticator=realm.require_message_authenticator and answers != _ACCOUNTING_ANSWER)
            kind = "acct" if answers == _ACCOUNTING_ANSWER else "auth"
            if exchange.reply is not None:
                self._home_heard[server] = time.monotonic()
                self._home_down.pop(server, None)
                self.metrics.home_servers.inc(str(server), kind, "answered")
                return (exchange.reply, exchange.request), False
            if exchange.attempts == 0:
                # Nothing was sent (every Identifier of its sockets in use, or no socket to be
                # had): ispd's own limit, not the server's silence. Taken for silence, it marked
                # a busy but healthy server down (and, with status checks, dead until one was
                # answered), and the realm's requests were rejected meanwhile.
                self.metrics.home_servers.inc(str(server), kind, "unsent")
                if self._home_unsent_told.get(server, 0.0) <= time.monotonic():  # (once a while per server)
                    self._home_unsent_told[server] = time.monotonic() + HOME_SERVER_DOWN_SECONDS
                    log.warning("radius.proxy.home_server_unsent", realm=realm.name, server=str(server),
                                error=exchange.error or None)
                continue
            # It answered but every answer was refused (error says why: another secret, no
            # Message-Authenticator): no use either, but not the network's fault, as "silent" said.
            refused = exchange.refused
            refused_any = refused_any or refused
            self.metrics.home_servers.inc(str(server), kind, "refused" if refused else "silent")
            if self._home_heard.get(server, 0.0) >= asked:
                # It answered other requests meanwhile: up, this one lost on its side (an eduroam
                # proxy whose own upstream was silent answers nothing). Taken for down, one such
                # request sent the realm's every request elsewhere for 30 s, or, with status
                # checks, rejected them all until a check was answered. The next server is asked.
                continue
            if server not in self._home_down or self._home_down[server] <= time.monotonic():
                log.warning("radius.proxy.home_server_refused" if refused else "radius.proxy.home_server_silent",
                            realm=realm.name, server=str(server), attempts=exchange.attempts,
                            error=exchange.error or None)
            self._home_down[server] = time.monotonic() + HOME_SERVER_DOWN_SECONDS
            if realm.status_check and server not in self._home_dead:
                self._home_dead[server] = self._spawn(self._check_home_server(realm, server, answers),
                                                      "home-server-check")
        return None, refused_any

    async def _proxied(self, realm: Realm, packet: Packet, nas: Nas, transport: asyncio.DatagramTransport,
                       addr: Any, key: DuplicateKey, started: float) -> None:
        try:
            await self._proxy_access(realm, packet, nas, transport, addr, key, started)
        except Exception:  # a bug on one request must not leave the NAS's copies dropped as in progress
            self.duplicates.forget(key)
            self.metrics.dropped.inc("auth", Drop.INTERNAL_ERROR)
            log.error("radius.proxy.failed", realm=realm.name, nas=nas.name, exc_info=True)

    async def _proxy_access(self, realm: Realm, packet: Packet, nas: Nas, transport: asyncio.DatagramTransport,
                            addr: Any, key: DuplicateKey, started: float) -> None:
        """An Access-Request of another realm: to its home servers, and their answer to the NAS
        re-secured with the NAS's secret; an Access-Reject when none answers."""
        authenticator = os.urandom(16)
        try:
            answered, refused = await self._ask_home(
                realm, realm.servers_for(realm.auth_servers, packet, addr[0]),
                lambda identifier: forward_access_request(packet, nas.secret, realm, identifier, authenticator,
                                                           self.realms.mark),
                _ACCESS_ANSWERS)
            reply = None if answered is None else relay_answer(answered[0], realm, authenticator, packet, nas.secret)
        except ProxyError as exc:
            self.metrics.proxied.inc("auth", "error")
            log.warning("radius.proxy.failed", realm=realm.name, nas=nas.name, error=str(exc))
            answered, reply = None, None
        else:
            if answered is None and refused:
                self.metrics.proxied.inc("auth", "refused")
            elif answered is None:
                self.metrics.proxied.inc("auth", "timeout")
        now = self.context.clock()
        if answered is None or reply is None:
            self.metrics.auth.inc("proxy", "reject")  # decided here, as a proxy loop is
            self.metrics.rejects.inc(RejectReason.HOME_SERVER_UNREACHABLE)
            # In the trail of failed logins as every other reject (the home server lines say why,
            # once a while per server; this one which NAS and realm it cost, throttled alike).
            self._log_reject(Decision(reject=RejectReason.HOME_SERVER_UNREACHABLE, method="proxy",
                                      detail=f"realm {realm.name}"), nas, now)
            reply = encode_response(Code.ACCESS_REJECT, packet.identifier, packet.authenticator, proxy_states(packet),
                                    nas.secret)
            self._send(transport, reply, addr, key, Code.ACCESS_REJECT, "proxy", started, now)
            return
        code = answered[0].code
        self.metrics.proxied.inc("auth", _AUTH_RESULTS[code])
        self._send(transport, reply, addr, key, code, "proxy", started, now)

    def _proxy_accounting(self, record: AccountingRecord, packet: Packet, received: float) -> None:
        """Accounting of a proxied realm, kept here already: a copy to its accounting servers,
        as the NAS would have sent it (best effort: the NAS has its answer). ``received``:
        perf_counter when it came, for its Acct-Delay-Time. Accounting-On and -Off name no user:
        every realm's accounting servers hear of them, whose sessions on that NAS have ended (each
        server of a load-balanced realm: the NAS's sessions are spread over them all)."""
        if not self.realms:
            return
        if self.realms.looped(packet):  # a copy of ours come back: kept, not copied round again
            self.metrics.proxied.inc("acct", "loop")
            return
        if record.status in (AccountingStatus.ACCOUNTING_ON, AccountingStatus.ACCOUNTING_OFF):
            for realm in self.realms.with_accounting():
                if realm.load_balance:
                    for server in realm.acct_servers:
                        self._copy_accounting(realm, packet, received, (server,))
                else:
                    self._copy_accounting(realm, packet, received, realm.acct_servers)
            return
        if not record.username or self.directory.find(record.username) is not None:
            return
        routed = self.realms.route(record.username)
        if routed is not None and routed.acct_servers:
            self._copy_accounting(routed, packet, received,
                                  routed.servers_for(routed.acct_servers, packet, record.nas_address))

    def _copy_accounting(self, realm: Realm, packet: Packet, received: float,
                         servers: tuple[HomeServer, ...]) -> None:
        """A copy of ``packet`` to the first of ``servers`` that answers."""
        if self._copying >= MAX_ACCOUNTING_COPIES:  # home servers slow or down: no pile of waiting copies
            self.metrics.proxied.inc("acct", "dropped")
            return
        self._copying += 1
        mark = self.realms.mark

        async def forward() -> None:
            try:
                answered, refused = await self._ask_home(
                    realm, servers,
                    lambda identifier: forward_accounting_request(packet, realm, identifier,
                                                                  time.perf_counter() - received, mark),
                    _ACCOUNTING_ANSWER)
            except ProxyError as exc:
                self.metrics.proxied.inc("acct", "error")
                log.warning("radius.proxy.failed", realm=realm.name, error=str(exc))
                return
            finally:
                self._copying -= 1
            if answered is not None:
                self.metrics.proxied.inc("acct", "acked")
            elif refused:
                self.metrics.proxied.inc("acct", "refused")
            else:
                self.metrics.proxied.inc("acct", "timeout")

        self._spawn(forward(), "proxy-accounting")

    def _check_password(self, pending: PendingCheck, packet: Packet, nas: Nas, transport: asyncio.DatagramTransport,
                        addr: Any, key: DuplicateKey, started: float) -> None:
        if self._pending_checks >= self.config.max_pending_password_checks:
            if pending.restore is not None:
                pending.restore()  # the NAS's next copy of the request finds what it needs
            self._dropped("auth", Drop.PASSWORD_CHECKS_FULL, addr[0], nas, self.context.clock())
            return
        self._pending_checks += 1
        self.duplicates.begin(key)
        assert self._loop is not None
        future = self._loop.run_in_executor(self._checker, PasswordChecker.check_slow, pending.verifier,
                                            pending.password)

        def checked(done: asyncio.Future[bool]) -> None:
            self._pending_checks -= 1
            if done.cancelled():
                return
            ok = done.exception() is None and bool(done.result())
            assert self.auth is not None
            now = self.context.clock()
            decision = self.auth.finish_password_check(packet, nas, pending, ok, now, addr[0])
            self._conclude(decision, packet, nas, transport, addr, key, started, now)

        future.add_done_callback(checked)

    def _claim(self, claim: PendingClaim, packet: Packet, nas: Nas, transport: asyncio.DatagramTransport,
               addr: Any, key: DuplicateKey, started: float) -> None:
        """Claim an address and reserve a prefix in the store, as the claim needs, then answer
        (the NAS retransmits meanwhile: the duplicate cache holds those)."""
        now = self.context.clock()
        held = self._still_held(claim, now)
        if held is not None and claim.prefix_pool is None:
            assert self.auth is not None
            self._conclude(self.auth.finish_claim(packet, nas, claim, held), packet, nas, transport, addr, key,
                           started, now)
            return
        if self._pending_claims >= MAX_PENDING_CLAIMS:
            self.duplicates.forget(key)  # begun when a password check came first
            if claim.restore is not None:
                claim.restore()
            self._dropped("auth", Drop.ADDRESS_CLAIMS_FULL, addr[0], nas, now)
            return
        self._pending_claims += 1
        self.duplicates.begin(key)
        self._spawn(self._claim_then_answer(claim, packet, nas, transport, addr, key, started, held),
                    "address-claim")

    async def _claim_then_answer(self, claim: PendingClaim, packet: Packet, nas: Nas,
                                 transport: asyncio.DatagramTransport, addr: Any, key: DuplicateKey,
                                 started: float, held: str | None = None) -> None:
        try:
            # The prefix first: reserved for good, it stays the login's when the address claim
            # fails and the NAS asks again (that login's reservation names it then).
            prefix6 = await self._reserve_prefix(claim) if claim.prefix_pool is not None else None
            address = held if held is not None or claim.pool is None else await self._claim_address(claim)
        except Exception as exc:  # StoreError or a bug: no answer, the NAS asks again
            self.duplicates.forget(key)
            if claim.restore is not None:
                claim.restore()
            self._dropped("auth", Drop.STORE_ERROR, addr[0], nas, self.context.clock())
            log.error("radius.address.claim_failed", pool=claim.pool, error=str(exc),
                      exc_info=not isinstance(exc, StoreError))
            return
        finally:
            self._pending_claims -= 1
        assert self.auth is not None
        now = self.context.clock()
        if address is None and claim.pool is not None:
            log.warning("radius.address.pool_exhausted", pool=claim.pool, subscriber_id=claim.subject.id)
        self._conclude(self.auth.finish_claim(packet, nas, claim, address, prefix6), packet, nas, transport, addr,
                       key, started, now)

    async def _reserve_prefix(self, claim: PendingClaim) -> str | None:
        """Reserve the next free prefix of the claim's prefix pool for the login, for good: into
        its reservation (which fixes no prefix yet), or a new one of the subscriber's username.
        Then update the directory so that its next login has it. Or the prefix that reservation
        got meanwhile (another login, another process, the operator). None when the pool has
        none free, the reservation is gone or the store fails: the login goes without a prefix."""
        subject = claim.subject
        pool = self.prefixes.get(claim.prefix_pool) if claim.prefix_pool is not None else None
        if pool is None:  # gone in a reload meanwhile
            return None
        store, username, into = self.context.store, subject.subscriber.username, claim.prefix_reservation
        candidate = None
        try:
            for _ in range(PREFIX_ATTEMPTS):
                candidate = candidate or pool.next_free(self.directory.prefix_reserved, PREFIX_SEARCH)
                if candidate is None:
                    break
                try:
                    if into is None:
                        reservation = await store.add_reservation(
                            subject.id, ReservationKind.USERNAME, username, actor="radius", prefix6=str(candidate))
                    else:  # (fill_only: a prefix the operator set meanwhile stays; expected: and
                        # into this reservation as read, or none)
                        reservation = await store.update_reservation(into.id, actor="radius", prefix6=str(candidate),
                                                                     fill_only=True, expected=into)
                except Conflict:
                    # The login's reservation made or given a prefix meanwhile, or the candidate
                    # overlapping another: which, the store says.
                    await self._refresh(subject.id)
                    key = (into.kind, into.key) if into is not None else (ReservationKind.USERNAME, username)
                    mine = next((r for r in await store.list_reservations(subscriber=subject.id)
                                 if (r.kind, r.key) == key and (into is None or r.id == into.id)), None)
                    if mine is not None and mine.prefix6 is not None:
                        return mine.prefix6
                    if mine is None and into is not None:  # deleted meanwhile
                        return None
                    if mine is not None and into is None:  # the username reserved: the same candidate into it
                        into = mine
                    else:
                        candidate = None
                    continue
                except NotFound:  # the login's reservation deleted meanwhile: its next login asks again
                    await self._refresh(subject.id)
                    return None
                await self._refresh(subject.id)
                self.metrics.prefix_reservations.inc("reserved")
                log.info("radius.prefix.reserved", pool=pool.name, prefix=reservation.prefix6,
                         subscriber=username, reservation_id=reservation.id)
                return reservation.prefix6
        except Exception as exc:  # StoreError or a bug: the Access-Accept goes without the prefix
            self.metrics.prefix_reservations.inc("failed")
            log.warning("radius.prefix.reserve_failed", pool=pool.name, subscriber=username, error=str(exc),
                        exc_info=not isinstance(exc, StoreError))
            return None
        self.metrics.prefix_reservations.inc("exhausted")
        looked = (f"all {pool.size} of the pool's /{pool.delegated_length}s are reserved" if pool.size <= PREFIX_SEARCH
                  else f"no free /{pool.delegated_length} found among the next {PREFIX_SEARCH} of the pool's "
                       f"{pool.size}")
        log.warning("radius.prefix.pool_exhausted", pool=pool.name, subscriber=username, detail=looked)
        return None

    def _still_held(self, claim: PendingClaim, now: float) -> str | None:
        """The address the claim's holder holds already, for long enough to give it again
        without a write (the plan's pool unchanged, the address nobody's fixed one meanwhile)."""
        if claim.pool is None:  # (a claim for a prefix only)
            return None
        held = self.addresses.reuse(claim.holder, claim.pool, now, now + self.config.address_hold_seconds / 2,
                                    claim.acct_session_id)
        # Being given back (its old session's Stop): through the store, which releases it first
        # and then grants it again (one writer, in order).
        return None if held is None or held in self.directory.reserved or held in self._releasing else held

    async def _claim_address(self, claim: PendingClaim) -> str | None:
        pools, store = self.addresses, self.context.store
        if claim.pool is None or claim.pool not in pools.pools:  # gone in a reload meanwhile
            return None
        for _ in range(CLAIM_ROUNDS):  # a round's candidates may all turn out taken: the view was behind
            now = self.context.clock()
            candidates = pools.candidates(claim.pool, claim.holder, now, self.directory.reserved)
            if not candidates:
                return None
            result = await store.claim_address(AddressClaim(
                claim.pool, candidates, claim.holder, now + self.config.address_hold_seconds, claim.subject.id,
                claim.hw_address, claim.line))
            for address, until in result.taken:
                pools.taken(address, until)
            lease = result.lease
            if lease is not None:
                self._claimed(lease, now, now)
                return lease.address
        return None

    def _adopt(self, session: RadiusSession) -> None:
        """An open session reports an address of ispd's pools that no claim of its subscriber
        covers (its hold lapsed before the Start, it was reopened after a stale close, or the NAS
        chose it): claim it, so that nobody else is given an address in use."""
        address = session.framed_ip
        if address is None or self.addresses.claim_for(address, session.subscriber_id) is not None:
            return
        try:
            pool = self.addresses.pool_of(int(IPv4Address(address)))
        except ValueError:
            return
        if pool is None:
            return
        hw_address, line = line_of(session.calling_station_id, session.nas_port_id)
        subject = self._holder_of(session)
        username = subject.subscriber.username if subject is not None else session.username  # as at Access-Accept
        now = self.context.clock()
        claim = AddressClaim(pool.name, (address,), holder_of(username, line),
                             now + self.config.address_hold_seconds, session.subscriber_id, hw_address,
                             session.nas_port_id)
        self._spawn(self._adopt_claim(claim, session), "address-adopt")

    def _check_ipv6(self, session: RadiusSession) -> None:
        """An open session reports an IPv6 prefix or address (Framed-IPv6-Prefix,
        Delegated-IPv6-Prefix, Framed-IPv6-Address) that overlaps another subscriber's reserved
        one: the NAS routes it to this session while ispd gives it to that subscriber. Said, as
        for an IPv4 address someone else holds (the session keeps what its NAS reports)."""
        for text in session.ipv6_networks():
            try:
                network = IPv6Network(text)
            except ValueError:
                continue
            if self.directory.reserved_for_another(network, session.subscriber_id):
                log.warning("radius.prefix.conflict", prefix=text, nas=session.nas_address,
                            acct_session_id=session.acct_session_id, subscriber_id=session.subscriber_id,
                            hint="the NAS reports an IPv6 prefix or address reserved for another subscriber")

    async def _adopt_claim(self, claim: AddressClaim, session: RadiusSession) -> None:
        try:
            result = await self.context.store.claim_address(claim)
        except StoreError as exc:
            log.warning("radius.address.adopt_failed", address=claim.candidates[0], error=str(exc))
            return
        if result.lease is None:
            until = result.taken[0][1] if result.taken else None
            log.warning("radius.address.conflict", address=claim.candidates[0], nas=session.nas_address,
                        acct_session_id=session.acct_session_id, held_until=until,
                        hint="the NAS reports an address ispd has given to someone else")
            return
        self._claimed(result.lease, session.started_at, self.context.clock())  # for this session, not a later one

    def _claimed(self, lease: Lease, granted_at: float, now: float) -> None:
        """The store gave ``lease``: into the view, and onto the bus (DHCP, DNS, across a worker's bridge)."""
        self.addresses.claimed(lease, granted_at)
        self.context.bus.publish(LeaseGranted(
            at=now, address=lease.address, expires_at=lease.expires_at, subscriber_id=lease.subscriber_id,
            hw_address=lease.hw_address, pool=lease.pool, renewal=lease.starts_at < now, service=LeaseService.RADIUS))

    def _give_back(self, session: RadiusSession, regiven_at: float | None = None) -> None:
        """A stopped session's address goes back to its pool (soon, in one write with others).
        ``regiven_at``: looked at again REGIVEN_GRACE_SECONDS after the Stop, because an
        Access-Accept had given the address again at that time (a session that Accept was for
        has started by now, or it was the same session re-authenticating)."""
        claim = self.addresses.claim_for(session.framed_ip, session.subscriber_id)
        if claim is None or session.framed_ip is None or session.subscriber_id is None:
            return
        if any(other.framed_ip == session.framed_ip for other in self.sessions.of_subscriber(session.subscriber_id)):
            return  # the subscriber's next session on the line has it (a NAS that reused the session id)
        if regiven_at is not None:
            if claim.granted_at != regiven_at:
                return  # given once more since: that Accept's session will have it
        elif claim.granted_at > session.started_at and claim.regiven_for != session.acct_session_id:
            # An Access-Accept since this session began gave it again, and not only ever naming
            # this session (which would be its re-authentications, ended by this Stop).
            assert self._loop is not None
            self._loop.call_later(REGIVEN_GRACE_SECONDS, self._give_back, session, claim.granted_at)
            return
        self._release(session.framed_ip, claim.holder)

    def _release(self, address: str, holder: str) -> None:
        """Give ``address`` back (soon, in one write with others)."""
        if not self._releases:
            # The task now, not from a callback: its write must reach the store before the claim
            # of a login handled later in this same turn of the loop (a redial right after its
            # Stop, which must get the address anew, not renew it just before this release).
            # Its first step comes in the next turn, with every release made in this one.
            self._spawn(self._release_claims(), "address-release")
        self._releases.append((address, holder))
        self._releasing.add(address)

    async def _release_claims(self) -> None:
        holds, self._releases = self._releases, []
        try:
            released = await self.context.store.release_claims(holds)
        except StoreError as exc:  # the addresses come back when their hold ends
            log.warning("radius.address.release_failed", addresses=len(holds), error=str(exc))
            return
        finally:
            self._releasing.difference_update(address for address, _ in holds)
        now = self.context.clock()
        for lease in released:
            self.addresses.ended(lease.address)
            self.context.bus.publish(LeaseEnded(at=now, address=lease.address, reason="released",
                                                subscriber_id=lease.subscriber_id, service=LeaseService.RADIUS))

    async def _renew_claims(self, now: float) -> None:
        """Keep the addresses of open sessions held: each well before its hold ends."""
        if not self.addresses.pools and not self.addresses.claims:
            return
        hold = self.config.address_hold_seconds
        holds = []
        for session in list(self.sessions.by_key.values()):
            claim = self.addresses.claim_for(session.framed_ip, session.subscriber_id)
            if claim is None:
                self._adopt(session)  # its hold lapsed (ispd was down), or was lost: claim it again
            elif session.framed_ip is not None and claim.expires_at - now < hold / 2:
                holds.append((session.framed_ip, claim.holder, claim.subscriber_id))
        if not holds:
            return
        lost = set(await self.context.store.renew_claims([(a, h) for a, h, _ in holds], now + hold))
        for address, _, subscriber_id in holds:
            if address in lost:
                self.addresses.ended(address)
                log.warning("radius.address.lost", address=address,
                            hint="a session uses an address the store no longer gives it (released by hand?)")
            else:
                self.addresses.renewed(address, now + hold)
                # DHCP (here or across a worker's bridge) keeps its view of the hold current.
                self.context.bus.publish(LeaseGranted(at=now, address=address, expires_at=now + hold,
                                                      subscriber_id=subscriber_id, renewal=True,
                                                      service=LeaseService.RADIUS))

    def handle_accounting(self, data: bytes, addr: Any, transport: asyncio.DatagramTransport) -> None:
        started = time.perf_counter()
        now = self.context.clock()
        admitted = self.admit("acct", data, addr, transport, now)
        if admitted is None:
            return
        nas, packet, key = admitted
        assert self.accounting is not None
        try:
            refused = self.accounting.check(packet, nas)
            if refused is not None:
                self._dropped("acct", refused, addr[0], nas, now)
                return
            if packet.code == Code.STATUS_SERVER:  # RFC 5997 §3: Accounting-Response on this port
                self._answer_accounting(packet, nas, transport, addr, key, started, "status")
                return
            record = self.accounting.record(packet, nas, addr[0], now)
        except Exception:
            self.metrics.dropped.inc("acct", Drop.INTERNAL_ERROR)
            log.error("radius.request.failed", nas=nas.name, exc_info=True)
            return
        if record is None:
            self._dropped("acct", Drop.MISSING_STATUS_TYPE, addr[0], nas, now)
            return
        # Queued and being written together: memory stays bounded while the store is slow.
        if len(self._queue) + self._writing >= MAX_QUEUED_ACCOUNTING:
            self._dropped("acct", Drop.ACCOUNTING_QUEUE_FULL, addr[0], nas, now)
            return
        self.duplicates.begin(key)
        self._queue.append(_QueuedAccounting(record, packet, nas, transport, addr, key, started))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _answer_accounting(self, packet: Packet, nas: Nas, transport: asyncio.DatagramTransport, addr: Any,
                           key: DuplicateKey, started: float, kind: str = "accounting") -> None:
        try:
            reply = encode_response(_ACCOUNTING_RESPONSE, packet.identifier, packet.authenticator,
                                    proxy_states(packet), nas.secret,
                                    signed_with_zeros=packet.code == Code.ACCOUNTING_REQUEST)
        except ValueError:  # Proxy-States filling the request: no room for the response's own
            self.duplicates.forget(key)
            self._dropped("acct", Drop.REPLY_TOO_LARGE, addr[0], nas, self.context.clock())
            return
        self._send(transport, reply, addr, key, _ACCOUNTING_RESPONSE, kind, started, None)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        self._writing += len(batch)
        self._spawn(self._commit(batch), "accounting")

    async def _commit(self, batch: list[_QueuedAccounting]) -> None:
        try:
            await self._write(batch)
        finally:
            self._writing -= len(batch)

    async def _write(self, batch: list[_QueuedAccounting]) -> None:
        try:
            results = await self.context.store.record_accounting([item.record for item in batch])
        except Exception as exc:  # StoreError or a bug: no response, so the NASes send them again
            if len(batch) > 1:
                # One bad record must not hold back the others: each goes again on its own
                # (each its own savepoint in the same group commit).
                await asyncio.gather(*(self._write([item]) for item in batch))
                return
            self.metrics.dropped.inc("acct", Drop.STORE_ERROR)
            self.duplicates.forget(batch[0].key)
            self._writes.failed(exc, nas=batch[0].nas.name, acct_session_id=batch[0].record.acct_session_id)
            return
        self._writes.worked()
        for item, result in zip(batch, results, strict=True):
            self.metrics.accounting.inc(str(item.record.status), str(result.outcome))
            self._answer_accounting(item.packet, item.nas, item.transport, item.addr, item.key, item.started)
            if self.realms:
                self._proxy_accounting(item.record, item.packet, item.started)
            holder = self._follow(item.record, result)
            if result.outcome in (AccountingOutcome.UPDATED, AccountingOutcome.STOPPED, AccountingOutcome.REOPENED):
                # A Stop is checked at once: the session's last growth may cross the quota, and
                # with no session left no sweep would look at the subscriber before its next login.
                self._quota_soon(holder, now=item.record.status == AccountingStatus.STOP)

    # --- fair use

    def _quota_soon(self, subscriber_id: int | None, *, now: bool = False) -> None:
        """Check this subscriber's quota after its usage grew: at most once per QUOTA_CHECK_SECONDS
        (an interim every few minutes per session, and the check is one query), unless ``now``;
        one not made now is left to the next sweep."""
        subject = self.directory.by_id(subscriber_id) if subscriber_id is not None else None
        if subject is None or subject.plan is None or subject.plan.monthly_quota_bytes is None:
            return
        at = time.monotonic()
        if not now and at - self._quota_checked.get(subject.id, -QUOTA_CHECK_SECONDS) < QUOTA_CHECK_SECONDS:
            self._quota_due.add(subject.id)
            return
        self._quota_checked[subject.id] = at
        self._spawn(self._check_quota(subject.id, self.context.clock()), "quota")

    async def _check_quotas(self, now: float) -> None:
        """Every subscriber with an open session, an over-quota flag or growth not checked yet: a
        month that ended lifts the limit, one that goes on may have crossed it."""
        flagged = {sid for sid, subject in self.directory.subjects.items() if subject.over_quota}
        for subscriber_id in set(self.sessions.by_subscriber) | flagged | self._quota_due:
            try:
                await self._check_quota(subscriber_id, self.context.clock())
            except StoreError as exc:
                log.warning("radius.quota.store_error", subscriber_id=subscriber_id, error=str(exc))

    async def _check_quota(self, subscriber_id: int, now: float) -> None:
        if subscriber_id in self._quota_checking:
            # One check of a subscriber at a time (an older result must not land last); the one
            # under way may have read the usage before this growth: the next sweep looks again.
            self._quota_due.add(subscriber_id)
            return
        self._quota_checking.add(subscriber_id)
        self._quota_due.discard(subscriber_id)  # before the read: growth after it marks it due again
        try:
            await self._judge_quota(subscriber_id, now)
        finally:
            self._quota_checking.discard(subscriber_id)

    async def _judge_quota(self, subscriber_id: int, now: float, *, move: bool = True) -> None:
        """``move``: a new verdict sends the open sessions a CoA to the profile it gives (without
        it, the caller does: a plan change)."""
        subject = self.directory.by_id(subscriber_id)
        if subject is None or subject.plan is None:
            return
        plan, quota = subject.plan, subject.plan.monthly_quota_bytes
        over, used_octets = False, 0
        if quota is not None:
            used = await self.context.store.usage(subscriber_id, since=month_start(now), until=now)
            used_octets = used.input_octets + used.output_octets
            over = used_octets >= quota
        subject = self.directory.by_id(subscriber_id)  # it may have been replaced meanwhile
        if subject is None or subject.over_quota == over:
            return
        if move and subscriber_id in self._plan_changing:
            # A plan change under way judges the quota itself and sends the one CoA: moved here
            # as well, the session got the same CoA twice (from a fix task). Looked at again by
            # the next sweep, in case the change judged nothing (the same quota).
            self._quota_due.add(subscriber_id)
            return
        if subject.plan is None or subject.plan.monthly_quota_bytes != quota:
            return  # another plan meanwhile: its change judged the new quota itself
        if over and quota is not None:  # noted once per month (the store ignores a second one)
            await self.context.store.record_quota_crossing(QuotaCrossing(
                subscriber_id, time.strftime("%Y-%m", time.gmtime(now)), now, used_octets, quota))
        subject.over_quota = over
        subject.reply_cache.clear()
        log.info("radius.quota." + ("crossed" if over else "reset"), subscriber=subject.subscriber.username,
                 plan=plan.name, action=str(plan.over_quota))
        if over and plan.over_quota is OverQuota.WALLED_GARDEN and not self.config.walled_garden_attributes:
            log.warning("radius.quota.no_walled_garden", subscriber=subject.subscriber.username, plan=plan.name,
                        detail="radius.walled_garden_attributes is empty (DNS's walled garden walls suspended "
                               "subscribers only): the plan's profile stays")
        # Open sessions move to the profile they would get now (a suspended one stays where it
        # is), each CoA on its own: a NAS that does not answer must not hold up housekeeping.
        if subject.subscriber.status == SubscriberStatus.ACTIVE and self.sessions.of_subscriber(subscriber_id):
            # (A plan change's own CoA, which carries this verdict, is retried the same way.)
            self._quota_moved[subscriber_id] = now
        if move and subject.subscriber.status == SubscriberStatus.ACTIVE:
            walled = self._walled_now(subject)
            leaving = not over and plan.over_quota is OverQuota.WALLED_GARDEN
            for session in self.sessions.of_subscriber(subscriber_id):
                self._spawn(self._move(session, walled, "over quota" if over else "quota reset",
                                       from_the_garden=leaving), "quota-coa")

    async def _retry_quota_moves(self, now: float) -> None:
        """The open sessions that a quota verdict's CoA (or Disconnect, out of a garden) did not
        reach, the NAS silent: sent again, as a suspension's are, every coa_retry_interval_seconds
        up to coa_retry_limit exchanges (else the session kept its profile until it reconnected:
        later checks find the flag up and send nothing). A NAK is the NAS's answer (503 closed
        the session already); an answer to any later request (a plan change's) settles it too."""
        if self.auth is None or not self._quota_moved:
            return
        spawned = 0
        for subscriber_id, since in list(self._quota_moved.items()):
            subject = self.directory.by_id(subscriber_id)
            if (subject is None or subject.plan is None or subject.plan.monthly_quota_bytes is None
                    or subject.subscriber.status != SubscriberStatus.ACTIVE or self.config.coa_retry_limit == 0):
                del self._quota_moved[subscriber_id]  # (a suspension's own retries take over)
                continue
            waiting = False
            for session in self.sessions.of_subscriber(subscriber_id):
                if session.started_at >= since:
                    continue  # logged in since: its Access-Accept carried the verdict's profile
                if session.id in self._requesting:
                    waiting = True  # its outcome is not recorded yet
                    continue
                if len(self._requesting) + spawned >= MAX_ENFORCING:
                    return
                tried = [r for r in await self.context.store.list_coa(session_id=session.id, limit=100)
                         if r.at >= since]
                if (any(r.result in ("ack", "nak") or (r.result == "error" and not r.attempts) for r in tried)
                        or len(tried) >= self.config.coa_retry_limit):
                    continue  # reached, refused, not sendable (nothing for its kind of NAS), or given up on
                waiting = True
                # (The verdict's own request counts from its start: it may not be recorded yet.)
                if now - max((r.at for r in tried), default=since) < self.config.coa_retry_interval_seconds:
                    continue
                over = subject.over_quota
                leaving = not over and subject.plan.over_quota is OverQuota.WALLED_GARDEN
                reason = "over quota, retry" if over else "quota reset, retry"
                self._spawn(self._move(session, self._walled_now(subject), reason, from_the_garden=leaving),
                            "quota-coa")
                spawned += 1
            if not waiting:
                del self._quota_moved[subscriber_id]

    async def _quota_moves_left_behind(self) -> None:
        """At start: the sessions of those over the quota (the flag comes from the usage, not
        from a verdict of this run) that were open at this month's crossing are retried as that
        verdict's were, from the crossing on: a CoA that had timed out before the restart was
        otherwise never sent again (from a bug hunt)."""
        month = time.strftime("%Y-%m", time.gmtime(self.context.clock()))
        for subscriber_id in list(self.sessions.by_subscriber):
            subject = self.directory.by_id(subscriber_id)
            if (subject is None or not subject.over_quota or subscriber_id in self._quota_moved
                    or subject.subscriber.status != SubscriberStatus.ACTIVE):
                continue
            crossed = [c.crossed_at for c in await self.context.store.quota_crossings(subscriber_id)
                       if c.month == month]
            if crossed:
                self._quota_moved[subscriber_id] = crossed[0]

    async def _quota_profiles_left_behind(self) -> None:
        """At start: the open sessions that a CoA put on the over-quota profile while their
        subscriber is under the quota now (the month ended while ispd was down, or the plan
        changed meanwhile) go back. The over-quota flag lives in memory: the check finds them
        under and, the flag down already, would send nothing, leaving them throttled or walled
        for the month."""
        for subscriber_id in list(self.sessions.by_subscriber):
            subject = self.directory.by_id(subscriber_id)
            if (subject is None or subject.over_quota or subject.plan is None
                    or subject.plan.monthly_quota_bytes is None
                    or subject.subscriber.status != SubscriberStatus.ACTIVE):
                continue
            sessions = self.sessions.of_subscriber(subscriber_id)
            moves = [c for c in await self.context.store.list_coa(subscriber=subscriber_id, limit=10 * len(sessions))
                     if c.kind == "coa" or (c.reason or "").endswith((LEAVING_THE_GARDEN, LEAVING_THE_PLAN))]
            leaving = subject.plan.over_quota is OverQuota.WALLED_GARDEN
            for session in sessions:
                last = next((c for c in moves if c.session_id == session.id), None)  # (newest first)
                if last is not None and last.reason in ("over quota", "over quota, retry"):
                    self._spawn(self._move(session, self._walled_now(subject), "quota reset",
                                           from_the_garden=leaving), "quota-coa")

    def _follow(self, record: AccountingRecord, result: AccountingResult) -> int | None:
        """Keep the open-session view and tell the bus. Returns the subscriber whose session the
        record counted for: the session's holder where the view knows it, not the login's owner
        now (a login renamed and given to another during the session must not move its usage)."""
        bus, sessions, at = self.context.bus, self.sessions, record.at
        outcome = result.outcome
        key = (record.nas_address, record.acct_session_id or "")
        holder = record.subscriber_id or result.subscriber_id
        if outcome == AccountingOutcome.UPDATED:
            sessions.seen(key)
            current = sessions.get(key)
            if current is not None and current.subscriber_id is not None:
                holder = current.subscriber_id
            learnt = _filled_in(current, record, result) if current is not None and (
                record.fill_in or result.subscriber_id is not None) else None
            if learnt is not None:
                # What the store filled in the view must know too: the subscriber (its
                # Simultaneous-Use count, its CoA targets), an address come after the Start
                # (some NASes learn it late: to renew or give back its claim), the IPv6
                # prefixes (so that the engine stops asking the store to fill them in).
                sessions.put(learnt)
                holder = learnt.subscriber_id or holder
                if current is not None and current.framed_ip is None and learnt.framed_ip is not None:
                    self._adopt(learnt)
                if current is not None and learnt.ipv6_networks() != current.ipv6_networks():
                    self._check_ipv6(learnt)
                if current is not None and learnt.subscriber_id is not None and (
                        (learnt.framed_ip, learnt.ipv6_networks()) != (current.framed_ip, current.ipv6_networks())
                        or current.subscriber_id is None):
                    # Who holds the addresses learnt late: DNS's walled garden and plan filters.
                    bus.publish(_session_event(SessionStarted, learnt, at))
        elif outcome == AccountingOutcome.REOPENED and result.session is not None:
            holder = result.session.subscriber_id or holder
            if result.session.is_open:  # an interim: it is back among the open sessions
                sessions.put(result.session)
                bus.publish(_session_event(SessionStarted, result.session, at))
                self._adopt(result.session)
                self._check_ipv6(result.session)
        elif outcome in (AccountingOutcome.STARTED, AccountingOutcome.STOPPED) and result.session is not None:
            session = result.session  # new: started now, or a Stop with no Start before it
            # Open, it takes the key's place; a Stop made up (its Start lost) under an id the NAS
            # reused ends another user's session there all the same, as the store did.
            replaced = sessions.put(session) if session.is_open else sessions.pop(key)
            if replaced is not None:
                bus.publish(_session_event(SessionStopped, replaced, at, SUPERSEDED_CAUSE))
                self._give_back(replaced)
            bus.publish(_session_event(SessionStarted, session, at))
            if not session.is_open:
                bus.publish(_session_event(SessionStopped, session, at, session.terminate_cause))
                self._give_back(session)
            else:
                self._adopt(session)
                self._check_ipv6(session)
            moved = self._moved_from(session)
            if moved:
                self._spawn(self._close_moved(moved, session, at), "session-moved")
        elif outcome == AccountingOutcome.STOPPED:
            stopped = sessions.pop(key)
            if stopped is not None and stopped.subscriber_id is None and result.subscriber_id is not None:
                stopped = replace(stopped, subscriber_id=result.subscriber_id)  # the store found them by login
            if stopped is not None:
                holder = stopped.subscriber_id or holder
                bus.publish(_session_event(SessionStopped, stopped, at, record.terminate_cause))
                self._give_back(stopped)
        if outcome == AccountingOutcome.NAS_RESTARTED:
            # A BNG's reboot ends every session it had: the operator reads when, and how many.
            log.info("radius.nas.restarted", nas=record.nas_address, client=record.nas_client,
                     status=str(record.status), closed=len(result.closed))
        for closed in result.closed:
            sessions.closed((closed,))
            bus.publish(_session_event(SessionStopped, closed, at, closed.terminate_cause))
            self._give_back(closed)
        return holder

    def _moved_from(self, session: RadiusSession) -> list[RadiusSession]:
        """The open copies of a session new here on another NAS of its client: BNGs of one client
        network move a session between them (a redundant pair's failover keeps its
        Acct-Session-Id), and the new BNG's reports are kept under its own address. The same
        subscriber, client and id; left open, the old BNG's copy (which reports no more) held a
        Simultaneous-Use slot and showed the subscriber online until it went stale, also after
        the session's Stop from the new BNG."""
        if session.subscriber_id is None or session.nas_client is None:
            return []
        return [s for s in self.sessions.of_subscriber(session.subscriber_id)
                if s.nas_client == session.nas_client and s.acct_session_id == session.acct_session_id
                and s.nas_address != session.nas_address]

    async def _close_moved(self, moved: list[RadiusSession], session: RadiusSession, at: float) -> None:
        """Close the old BNG's copies of a moved session (``Session-Moved``; reopened, as a
        stale one, if that BNG reports one again)."""
        try:
            closed = await self._close_in_store(moved, at, MOVED_CAUSE)
        except StoreError as exc:  # it goes stale in time all the same
            log.warning("radius.session.close_failed", sessions=[s.id for s in moved], error=str(exc))
            return
        if closed:
            log.info("radius.session.moved", sessions=[s.id for s in closed], session_id=session.id,
                     nas=session.nas_address, client=session.nas_client)

    # --- housekeeping

    async def _sweep_periodically(self) -> None:
        last_round = time.monotonic()
        try:  # at once: a suspension made while ispd was down reaches the NAS now, not in a minute
            await self._enforce_status(self.context.clock())
            await self._check_quotas(self.context.clock())
            await self._quota_profiles_left_behind()
            await self._quota_moves_left_behind()
            await self._retry_quota_moves(self.context.clock())
        except StoreError as exc:
            log.warning("radius.enforce.store_error", error=str(exc))
        offset = self.context.clock() - time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            now = self.context.clock()
            stepped, offset = now - time.monotonic() - offset, now - time.monotonic()
            try:
                if abs(stepped) > CLOCK_STEP_SECONDS:
                    # The addresses' holds end on the wall clock: stepped forward past them, the
                    # open sessions' addresses were free to the next login (or DHCP client) until
                    # the housekeeping round (a minute) renewed them. Renewed at once.
                    log.warning("radius.clock.stepped", seconds=round(stepped))
                    await self._renew_claims(now)
                self.duplicates.sweep()
                if self.auth is not None:
                    self.auth.conversations.expire(now)
                    if self.auth.tunnels is not None:
                        self.auth.tunnels.expire(now)
                if time.monotonic() - last_round >= self.config.housekeeping_interval_seconds:
                    last_round = time.monotonic()
                    await self._close_stale(now)
                    await self._renew_claims(now)
                    await self._enforce_status(now)
                    await self._check_quotas(now)
                    await self._retry_quota_moves(now)
            except StoreError as exc:
                log.warning("radius.stale_sessions.store_error", error=str(exc))
            except Exception:  # a bug here must not end housekeeping for the life of the daemon
                log.error("radius.sweep.failed", exc_info=True)

    async def _close_stale(self, now: float) -> None:
        stale = self.sessions.stale(self.config.interim_interval_seconds, self.config.stale_session_intervals)
        if not stale:
            return
        closed = await self._close_in_store(stale, now, STALE_CAUSE)
        self.metrics.stale_sessions.inc(amount=len(closed))
        log.info("radius.sessions.stale_closed", count=len(closed))

    async def _enforce_status(self, now: float) -> None:
        """Open sessions of suspended, closed or deleted subscribers that no Disconnect or CoA has
        reached since the change: send it again, every coa_retry_interval_seconds, coa_retry_limit times.
        This also carries out a change made while ispd was down (the bus only announces what
        happens while it runs)."""
        if self.auth is None or self.config.coa_retry_limit == 0:
            return
        spawned = 0
        for subscriber_id in list(self.sessions.by_subscriber):
            subject = self.directory.by_id(subscriber_id)
            if subject is None:
                # Deleted (while ispd was down, or its Disconnect unanswered): ended as a closed
                # subscriber's are, by the deletion's Disconnects (its time is not kept: theirs
                # are known by their reason). Not merely unknown yet: one the CLI added a moment
                # ago, which the directory has not polled, is the store's.
                if not await self._deleted(subscriber_id):
                    continue
                changed_at, disconnect, status = 0.0, True, "deleted"
            elif subject.subscriber.status == SubscriberStatus.ACTIVE:
                continue
            else:
                changed_at, status = subject.subscriber.updated_at, subject.subscriber.status.value
                # A session that must end is reached by a Disconnect only: an acknowledged CoA gave
                # it a profile, it did not end it.
                disconnect = self._disconnect_wanted(subject)
            for session in self.sessions.of_subscriber(subscriber_id):
                if session.id in self._requesting:
                    # A request is still being retried (this round's, or the suspension's own):
                    # its outcome is not recorded yet, and a second would be another request.
                    continue
                if len(self._requesting) + spawned >= MAX_ENFORCING:
                    return
                tried = [r for r in await self.context.store.list_coa(session_id=session.id, limit=100)
                         if r.at >= changed_at and (r.kind == "disconnect" or not disconnect)
                         and (subject is not None or r.reason in (status, f"{status}, retry"))]
                if any(r.result in ("ack", "nak") for r in tried) or len(tried) >= self.config.coa_retry_limit:
                    continue  # reached (a Disconnect's Stop is on its way), refused, or given up on
                if tried and now - max(r.at for r in tried) < self.config.coa_retry_interval_seconds:
                    continue
                reason = f"{status}, retry" if tried else status
                # Each on its own, as the quota's CoAs: a NAS that does not answer (3 attempts
                # of 3 s a session) must not hold up housekeeping (from a soak review: the
                # duplicate cache, EAP conversations and stale sessions waited 10 minutes).
                request = self._change(session, True, reason) if not disconnect else self._disconnect(session, reason)
                self._spawn(request, "enforce-status")  # (counted in _requesting once it begins)
                spawned += 1

    async def _deleted(self, subscriber_id: int) -> bool:
        """Whether the store has no such subscriber (ids are never given again)."""
        try:
            await self.context.store.get_subscriber(subscriber_id)
        except NotFound:
            return True
        return False

    def _disconnect_wanted(self, subject: AuthSubject) -> bool:
        """Whether the subscriber's sessions must end rather than change: closed, or suspended
        under a policy that rejects (not one that walls)."""
        status = subject.subscriber.status
        return status == SubscriberStatus.CLOSED or (
            status == SubscriberStatus.SUSPENDED and not self._walled_garden(subject))

    def _walled_garden(self, subject: AuthSubject) -> bool:
        """Whether this subscriber's plan sends suspended sessions to the walled garden (else
        they are disconnected)."""
        assert self.auth is not None
        plan = subject.plan
        plan_reply = self.auth.settings.plans.get(plan.name) if plan is not None else None
        return (plan_reply.suspended if plan_reply is not None and plan_reply.suspended is not None
                else self.config.suspended) == SuspendedAction.WALLED_GARDEN

    # --- what other processes and services change

    def _subscribe(self, stack: AsyncExitStack) -> None:
        bus = self.context.bus

        async def refreshed(event: SubscriberEvent) -> None:
            await self._refresh(event.subscriber_id)

        async def suspended(event: SubscriberSuspended) -> None:
            await self._refresh(event.subscriber_id)
            await self._apply_status(event.subscriber_id, "suspended")

        async def resumed(event: SubscriberResumed) -> None:
            walled = self._walled_before(event.subscriber_id)
            await self._refresh(event.subscriber_id)
            await self._apply_status(event.subscriber_id, "resumed", was_walled=walled)

        async def ended(event: SubscriberEvent) -> None:
            await self._refresh(event.subscriber_id)
            await self._disconnect_all(event.subscriber_id, "closed" if isinstance(event, SubscriberClosed)
                                       else "deleted")

        async def plan_changed(event: SubscriberPlanChanged) -> None:
            walled = self._walled_before(event.subscriber_id)  # (over the old plan's quota)
            before = self.directory.by_id(event.subscriber_id)  # (the old plan's profile: what the NAS has)
            # The new quota's verdict is made before the plan's CoA goes, and moves nothing itself:
            # the one CoA carries the profile the session belongs in now.
            self._plan_changing[event.subscriber_id] = self._plan_changing.get(event.subscriber_id, 0) + 1
            try:
                await self._refresh(event.subscriber_id, quota_moves=False)
            finally:
                if self._plan_changing[event.subscriber_id] > 1:
                    self._plan_changing[event.subscriber_id] -= 1
                else:
                    del self._plan_changing[event.subscriber_id]
            await self._apply_status(event.subscriber_id, "plan changed", was_walled=walled, before=before)

        async def plan_added(event: PlanAdded) -> None:
            try:
                self.directory.plans[event.plan_id] = await self.context.store.get_plan(event.plan_id)
            except StoreError as exc:
                log.warning("radius.plan.refresh_failed", plan=event.name, error=str(exc))

        handlers: list[Callable[[], None]] = [
            bus.subscribe(SubscriberSuspended, suspended),
            bus.subscribe(SubscriberResumed, resumed),
            bus.subscribe(SubscriberClosed, ended),
            bus.subscribe(SubscriberDeleted, ended),
            bus.subscribe(SubscriberPlanChanged, plan_changed),
            bus.subscribe(PlanAdded, plan_added),
            bus.subscribe(ReservationEvent, refreshed),
        ]
        handlers += [bus.subscribe(SubscriberAdded, refreshed), bus.subscribe(SubscriberPasswordChanged, refreshed),
                     bus.subscribe(SubscriberRadiusReplyChanged, refreshed)]

        def leased(event: LeaseGranted) -> None:  # DHCP's leases in a pool shared with it
            if event.service == LeaseService.DHCP:
                self.addresses.learn(Lease(event.address, LeaseState.BOUND, event.at, event.expires_at),
                                     self.context.clock())

        def lease_ended(event: LeaseEnded) -> None:
            if event.service != LeaseService.DHCP:
                return
            if event.held_until is not None:  # declined: quarantined, as the store has it (not free)
                self.addresses.learn(Lease(event.address, LeaseState.DECLINED, event.at, event.held_until),
                                     self.context.clock())
            else:
                self.addresses.ended(event.address, elsewhere_at=self.context.clock())

        handlers += [bus.subscribe(LeaseGranted, leased), bus.subscribe(LeaseEnded, lease_ended)]
        for unsubscribe in handlers:
            stack.callback(unsubscribe)

    async def _refresh(self, subscriber_id: int, *, quota_moves: bool = True) -> None:
        """Re-read one subscriber (status, plan, password forms, reservations) from the store;
        one refresh of a subscriber at a time, so that an older read never lands last.
        ``quota_moves``: another quota's verdict moves the open sessions itself; without it the
        verdict is made before this returns and the caller sends the one CoA (a plan change)."""
        entry = self._refreshing.setdefault(subscriber_id, [asyncio.Lock(), 0])
        entry[1] += 1  # refreshes holding or waiting for the lock: the last one removes it
        try:
            async with entry[0]:
                await self._reread(subscriber_id, quota_moves=quota_moves)
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._refreshing[subscriber_id]

    async def _reread(self, subscriber_id: int, *, quota_moves: bool = True) -> None:
        store = self.context.store
        try:
            subscriber = await store.get_subscriber(subscriber_id)
        except NotFound:
            self.directory.remove(subscriber_id)
            self.passwords.forget(subscriber_id)
            return
        except StoreError as exc:
            log.warning("radius.subscriber.refresh_failed", subscriber_id=subscriber_id, error=str(exc))
            return
        try:
            credentials = await store.get_credentials(subscriber_id)
            reservations = await store.list_reservations(subscriber=subscriber_id)
            plan = await store.get_plan(subscriber.plan_id) if subscriber.plan_id is not None else None
        except StoreError as exc:
            log.warning("radius.subscriber.refresh_failed", subscriber_id=subscriber_id, error=str(exc))
            return
        before = self.directory.by_id(subscriber_id)
        if before is None or before.credentials.updated_at != credentials.updated_at:
            self.passwords.forget(subscriber_id)
        self.directory.replace(subscriber, credentials, reservations, plan)
        after = self.directory.by_id(subscriber_id)
        if after is not None and before is not None and plan is not None and plan.monthly_quota_bytes is not None:
            after.over_quota = before.over_quota  # the quota checker's finding outlives a refresh
            if before.plan is None or before.plan.monthly_quota_bytes != plan.monthly_quota_bytes:
                # Another quota (a plan change): judged again now, not at the next sweep - the
                # next login must not get the old plan's verdict.
                if quota_moves:
                    self._quota_soon(subscriber_id, now=True)
                else:
                    # Before the plan change's CoA: judged after it, the NAS got the old verdict's
                    # profile of the new plan (its throttle, or its full rate) and then a second
                    # CoA (from a bug hunt). A check under way read the old quota and drops its
                    # verdict (_judge_quota).
                    try:
                        await self._judge_quota(subscriber_id, self.context.clock(), move=False)
                    except StoreError as exc:
                        log.warning("radius.quota.store_error", subscriber_id=subscriber_id, error=str(exc))
                        self._quota_due.add(subscriber_id)  # the next sweep judges (and moves) it

    def _walled_before(self, subscriber_id: int) -> bool:
        """Whether the subscriber's sessions are in the walled garden, as the directory knows it
        before a change is read in."""
        subject = self.directory.by_id(subscriber_id)
        return subject is not None and self._walled_now(subject)

    async def _apply_status(self, subscriber_id: int, reason: str, *, was_walled: bool = False,
                            before: AuthSubject | None = None) -> None:
        """After a suspension, a resumption or a plan change: tell the NASes of its open sessions
        (suspended and rejected: disconnect; suspended into the walled garden: CoA there; back
        from the walled garden or onto another plan: CoA to the plan's profile). ``was_walled``:
        its sessions were in the walled garden before the change (suspended, or over a quota
        that walls), so leaving it may take a Disconnect (``_move``); ``before``: the subscriber as
        it was before a plan change, whose profile's attributes the new one may lack (``_move``)."""
        subject = self.directory.by_id(subscriber_id)
        sessions = self.sessions.of_subscriber(subscriber_id)
        if subject is None or not sessions or self.auth is None:
            return
        walled_garden = self._walled_garden(subject)
        suspended = subject.subscriber.status == SubscriberStatus.SUSPENDED
        if suspended and not walled_garden:
            await asyncio.gather(*(self._disconnect(s, reason) for s in sessions))
        elif (suspended and reason == "suspended") or (not suspended and (walled_garden or reason == "plan changed")):
            walled = self._walled_now(subject)  # a resumed subscriber over a walled quota stays there
            await asyncio.gather(*(self._move(s, walled, reason, from_the_garden=was_walled, before=before)
                                   for s in sessions))

    def _walled_now(self, subject: AuthSubject) -> bool:
        """Whether the subscriber's sessions belong in the walled garden now: suspended under a
        walled-garden policy, or over a quota whose plan walls rather than throttles."""
        if subject.subscriber.status == SubscriberStatus.SUSPENDED:
            return self._walled_garden(subject)
        plan = subject.plan
        return (subject.over_quota and plan is not None and plan.over_quota is OverQuota.WALLED_GARDEN
                and bool(self.config.walled_garden_attributes))  # (none: the plan's profile, see _authorize)

    async def _disconnect_all(self, subscriber_id: int, reason: str) -> None:
        await asyncio.gather(*(self._disconnect(s, reason) for s in self.sessions.of_subscriber(subscriber_id)))

    def _holder_of(self, session: RadiusSession) -> AuthSubject | None:
        """The subscriber whose session it is, as the directory knows them now."""
        return self.directory.by_id(session.subscriber_id) if session.subscriber_id is not None else None

    def _nas_for_session(self, session: RadiusSession) -> Nas | None:
        """The client the session's NAS address falls in now (its secret signs the CoA), else the
        client whose packets accounted the session. The address is one of that client's (a
        NAS-IP-Address outside it is not kept), so the two differ only when a client of its own
        was configured for the NAS since, such as to give it a secret of its own: the NAS, which
        accounts with that secret now, checks a Disconnect with it too."""
        nas = self.nas.find(session.nas_address)
        return nas or (self.nas.clients.get(session.nas_client) if session.nas_client else None)

    async def _disconnect(self, session: RadiusSession, reason: str, *, asked: bool = False) -> dict[str, Any]:
        return await self._dynamic(session, Code.DISCONNECT_REQUEST, b"", reason, asked=asked)

    async def _move(self, session: RadiusSession, walled: bool, reason: str, *,
                    from_the_garden: bool = False, before: AuthSubject | None = None) -> dict[str, Any]:
        """A CoA to the profile the session belongs in now; out of the walled garden, a Disconnect
        instead when the garden gave it an attribute its own profile does not carry (a Filter-Id,
        an address list): no CoA takes one away, and the NAS would keep the session walled. The
        subscriber's router logs in again at once and gets its own profile whole. The same onto
        another plan (``before``: the subscriber on the old one) whose profile lacks an attribute
        of the old one's: moved to no plan, or to one without rates, the session would keep the
        old plan's rate limit (or its over-quota throttle) for as long as it lasts."""
        if from_the_garden and not walled:
            left = self._left_in_the_garden(session)
            if left:
                log.info("radius.walled_garden.left_by_disconnect", session_id=session.id, attributes=left)
                return await self._disconnect(session, f"{reason}: {LEAVING_THE_GARDEN}")
        elif before is not None and not walled:
            subject, nas = self._holder_of(session), self._nas_for_session(session)
            assert self.auth is not None
            left = self.auth.left_by_the_change(before, subject, nas) if subject is not None and nas is not None \
                else []
            if left:
                log.info("radius.plan.left_by_disconnect", session_id=session.id, attributes=left)
                return await self._disconnect(session, f"{reason}: {LEAVING_THE_PLAN}")
        return await self._change(session, walled, reason)

    def _left_in_the_garden(self, session: RadiusSession) -> list[str]:
        assert self.auth is not None
        subject = self._holder_of(session)
        nas = self._nas_for_session(session)
        return self.auth.left_in_the_garden(subject, nas) if subject is not None and nas is not None else []

    async def _change(self, session: RadiusSession, walled: bool, reason: str, *,
                      asked: bool = False) -> dict[str, Any]:
        assert self.auth is not None
        subject = self._holder_of(session)
        nas = self._nas_for_session(session)
        if subject is None or nas is None:
            return await self._dynamic(session, Code.COA_REQUEST, b"", reason, asked=asked)
        profile = self.auth.change_of_authorization(subject, nas, walled)
        # Into a walled garden of other vendors' attributes alone (each NAS gets its own), the
        # CoA would carry nothing either: the NAS would acknowledge it and wall nothing. So for a
        # plan's [[radius.plan]] attributes (or the subscriber's own) all another vendor's.
        unsent = not profile and ((not walled and _has_rates(subject)) or bool(
            self.auth.change_of_authorization(subject, replace(nas, kind=NasKind.GENERIC), walled)))
        return await self._dynamic(session, Code.COA_REQUEST, profile, reason, nothing_for_nas=unsent, asked=asked)

    async def _dynamic(self, session: RadiusSession, code: Code, extra: bytes, reason: str, *,
                       nothing_for_nas: bool = False, asked: bool = False) -> dict[str, Any]:
        self._requesting[session.id] = self._requesting.get(session.id, 0) + 1
        try:
            return await self._send_dynamic(session, code, extra, reason, nothing_for_nas=nothing_for_nas,
                                            asked=asked)
        finally:
            if self._requesting[session.id] > 1:
                self._requesting[session.id] -= 1
            else:
                del self._requesting[session.id]

    async def _send_dynamic(self, session: RadiusSession, code: Code, extra: bytes, reason: str, *,
                            nothing_for_nas: bool = False, asked: bool = False) -> dict[str, Any]:
        """``nothing_for_nas``: a CoA whose profile has something to change (the plan's rates or
        the over-quota throttle's, the walled garden's or the plan's attributes) but carries none
        of it to this NAS (no rate-limit attribute for its kind, only other vendors' attributes).
        ``asked``: an operator's command for this one session, which does not wait its turn
        behind a plan change's thousands (the CLI would give up on the answer first)."""
        kind = "disconnect" if code == Code.DISCONNECT_REQUEST else "coa"
        nas = self._nas_for_session(session)
        started_at = self.context.clock()
        if nas is None:
            outcome_result, attempts, error_cause, detail = "error", 0, None, (
                f"the session's NAS is no longer a [[radius.client]]; if it is gone, `ispd session close {session.id}`")
        elif nothing_for_nas:
            # A CoA-Request that names the session and changes nothing (a "cisco", "juniper" or
            # "generic" NAS gets no rate-limit attribute, and the profile has no other one; a
            # walled garden of other vendors' attributes only): the NAS acknowledges it and keeps
            # the session as it is, so its ACK must not read as the new plan, the over-quota
            # throttle or the walled garden applied.
            outcome_result, attempts, error_cause, detail = "error", 0, None, (
                f"nothing to send: the profile has no attribute for a {nas.kind.value!r} NAS (a plan's rates are "
                f"written for mikrotik and accel-ppp only, and each NAS gets only its own vendor's attributes; "
                f"give the plan [[radius.plan]] attributes, or radius.walled_garden_attributes, for it)")
            log.warning("radius.coa.nothing_to_send", session_id=session.id, nas=session.nas_address,
                        nas_kind=nas.kind.value, reason=reason)
        else:
            async with contextlib.nullcontext() if asked else self._nas_slots.slot(session.nas_address):
                # (Event-Timestamp when it is sent, not when it began to wait: a NAS refuses an old one.)
                outcome = await self.coa.send(session.nas_address, nas.coa_port, nas.secret, code,
                                              session_identification(session, self.context.clock()) + extra)
            outcome_result, attempts, error_cause, detail = (outcome.result, outcome.attempts, outcome.error_cause,
                                                             outcome.detail)
        self.metrics.coa.inc(kind, outcome_result)
        log.info(f"radius.{kind}.sent", session_id=session.id, nas=session.nas_address, result=outcome_result,
                 error_cause=error_cause, attempts=attempts, reason=reason,
                 **({"detail": detail} if outcome_result == "error" else {}))  # (why: the store keeps none)
        try:
            await self.context.store.record_coa(
                kind=kind, nas_address=session.nas_address, result=outcome_result, attempts=attempts,
                at=started_at, completed_at=self.context.clock(), session_id=session.id,
                subscriber_id=session.subscriber_id, reason=reason, error_cause=error_cause)
        except StoreError as exc:
            log.warning("radius.coa.record_failed", error=str(exc))
        if outcome_result == "nak" and error_cause == SESSION_CONTEXT_NOT_FOUND:
            await self._close_not_on_nas(session)
        return {"session_id": session.id, "kind": kind, "result": outcome_result, "attempts": attempts,
                "error_cause": error_cause, "detail": detail}

    async def _close_not_on_nas(self, session: RadiusSession) -> None:
        """A session its NAS says it does not have (a NAK with Error-Cause 503): closed as a stale
        one is, its Simultaneous-Use slot and pool address freed now rather than after
        stale_session_intervals (the subscriber would be rejected meanwhile); reopened by its
        NAS's next interim if the NAS had it after all."""
        try:
            closed = await self._close_in_store([session], self.context.clock(), NOT_ON_NAS_CAUSE)
        except StoreError as exc:
            log.warning("radius.session.close_failed", session_id=session.id, error=str(exc))
            return
        for gone in closed:
            log.info("radius.session.not_on_nas", session_id=gone.id, nas=gone.nas_address)

    async def _close_in_store(self, sessions: list[RadiusSession], now: float, cause: str,
                              actor: str | None = None) -> list[RadiusSession]:
        """Close ``sessions`` without their NAS (``cause`` says why; its next report on one
        reopens it): what the store closed, its Simultaneous-Use slots and pool addresses
        freed, SessionStopped published for each."""
        closed = await self.context.store.close_sessions([s.id for s in sessions], at=now, cause=cause, actor=actor)
        self.sessions.closed(sessions)  # (those the store had closed already too)
        for session in closed:
            self.context.bus.publish(_session_event(SessionStopped, session, now, cause))
            self._give_back(session)
        return closed

    # --- control commands

    async def _session_for_command(self, args: dict[str, Any]) -> RadiusSession:
        session_id = args.get("session_id")
        if not isinstance(session_id, int) or isinstance(session_id, bool):
            raise CommandError("give the session's number (ispd session list shows them)")
        try:
            session = await self.context.store.get_session(session_id)
        except (NotFound, InvalidValue):  # (a number past any row id is no session either)
            raise CommandError(f"no session #{session_id}") from None
        if not session.is_open:
            stopped = datetime.fromtimestamp(session.stopped_at or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise CommandError(f"session #{session_id} is not open (it stopped at {stopped})")
        return session

    async def _command_disconnect(self, args: dict[str, Any]) -> dict[str, Any]:
        session = await self._session_for_command(args)
        reason = args.get("reason")
        return await self._disconnect(session, str(reason) if reason else "admin", asked=True)

    async def _command_close(self, args: dict[str, Any]) -> dict[str, Any]:
        """``ispd session close``: sessions their NAS can no longer end (it died without an
        Accounting-On, the line is gone) closed in the store as they are, without a word to the
        NAS, as FreeRADIUS's radzap: the subscriber's Simultaneous-Use count and pool address are
        freed at once rather than after stale_session_intervals. If the NAS had it after all, its
        next interim reopens it, as for a session closed as stale."""
        actor = str(args.get("actor") or "cli")
        nas = args.get("nas")
        if nas is not None:
            try:
                nas = str(ip_address(nas)) if isinstance(nas, str) else None
            except ValueError:
                nas = None
            if nas is None:
                raise CommandError("give the NAS's IP address")
            sessions = await self.context.store.list_sessions(open_only=True, nas_address=nas, limit=1_000_000)
        else:
            sessions = [await self._session_for_command(args)]
        closed = await self._close_in_store(sessions, self.context.clock(), ADMIN_CLOSE_CAUSE, actor)
        if closed:
            log.info("radius.sessions.closed_by_admin", sessions=[s.id for s in closed], nas=nas, actor=actor)
        return {"closed": [s.id for s in closed]}

    async def _command_coa(self, args: dict[str, Any]) -> dict[str, Any]:
        session = await self._session_for_command(args)
        subject = self._holder_of(session)
        if subject is not None and self._disconnect_wanted(subject):
            # A CoA carries a profile, and such a subscriber has none: the plan's would give it
            # full service, and its ACK would read as the suspension carried out.
            status = subject.subscriber.status.value
            why = "closed" if subject.subscriber.status == SubscriberStatus.CLOSED else \
                f"{status}, and its plan rejects {status} subscribers"
            raise CommandError(f"subscriber {subject.subscriber.username!r} is {why}: a CoA would give the session "
                               f"service; end it with `ispd session disconnect {session.id}`")
        walled = subject is not None and self._walled_now(subject)
        return await self._change(session, walled, str(args.get("reason") or "admin"), asked=True)


def _has_rates(subject: AuthSubject) -> bool:
    """Whether the subscriber's profile has rates now: its plan's, or the over-quota throttle's."""
    plan = subject.plan
    if plan is None:
        return False
    if subject.over_quota and plan.over_quota is OverQuota.THROTTLE:
        return bool(plan.over_quota_download_kbps or plan.over_quota_upload_kbps)
    return bool(plan.download_kbps or plan.upload_kbps)


def _filled_in(session: RadiusSession, record: AccountingRecord, result: AccountingResult) -> RadiusSession | None:
    """``session`` with what the store's fill-in added from ``record`` (a value once set is
    never changed), or None when it added nothing."""
    subscriber_id = record.subscriber_id if record.subscriber_id is not None else result.subscriber_id
    if not fills_in(session, subscriber_id=subscriber_id, framed_ip=record.framed_ip,
                    framed_ipv6_prefix=record.framed_ipv6_prefix, delegated_ipv6_prefix=record.delegated_ipv6_prefix,
                    framed_ipv6_address=record.framed_ipv6_address, interim_interval=record.interim_interval):
        return None
    return replace(session, subscriber_id=session.subscriber_id if session.subscriber_id is not None else subscriber_id,
                   framed_ip=session.framed_ip or record.framed_ip,
                   framed_ipv6_prefix=session.framed_ipv6_prefix or record.framed_ipv6_prefix,
                   delegated_ipv6_prefix=session.delegated_ipv6_prefix or record.delegated_ipv6_prefix,
                   framed_ipv6_address=session.framed_ipv6_address or record.framed_ipv6_address,
                   interim_interval=session.interim_interval or record.interim_interval)


def _session_event(kind: type[SessionStarted] | type[SessionStopped], session: RadiusSession, at: float,
                   cause: str | None = None) -> SessionStarted | SessionStopped:
    networks = ",".join(session.ipv6_networks()) or None
    if kind is SessionStopped:
        return SessionStopped(at, session.id, session.nas_address, session.acct_session_id, session.username,
                              session.subscriber_id, session.framed_ip, ipv6_networks=networks, cause=cause)
    return SessionStarted(at, session.id, session.nas_address, session.acct_session_id, session.username,
                          session.subscriber_id, session.framed_ip, ipv6_networks=networks)


class _AuthProtocol(asyncio.DatagramProtocol):
    def __init__(self, service: RadiusService) -> None:
        self.service = service
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.service.handle_auth(data, addr, self.transport)

    def error_received(self, exc: Exception) -> None:  # ICMP errors for replies to gone NASes
        pass


class _AccountingProtocol(_AuthProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.service.handle_accounting(data, addr, self.transport)


def coa_sources(config: RadiusConfig) -> tuple[str, ...]:
    """What Disconnect and CoA requests may come from (``DynamicAuthorizationClient.source_for``):
    the auth listeners' own addresses (a wildcard names none), what a NAS lists as its server."""
    return tuple(a.host for a in config.listen_auth if not ip_address(a.host).is_unspecified)


def check_files(config: RadiusConfig) -> list[str]:
    """For ``ispd check-config``: what in the dictionaries and reply attributes would stop the
    service from starting."""
    try:
        dictionary = load_dictionary(config.dictionaries)
    except (DictionaryError, OSError) as exc:
        return [f"dictionaries: {exc}"]
    problems = []
    try:
        RadiusService._reply_settings(config, dictionary)
    except ServiceStartError as exc:
        problems.append(str(exc).removeprefix("radius: "))
    eap = config.eap
    if eap.certificate is not None and eap.private_key is not None:
        try:
            tunnel_server(eap.certificate, eap.private_key, eap.client_ca)
        except (OSError, SSL.Error) as exc:
            problems.append(f"eap: {tls_context_error(exc)}")
    return problems
