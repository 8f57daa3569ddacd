"""Iterative resolution from the root: the resolver's engine.

Theory of operation. ``Resolver.resolve(name, type)`` answers one question from the RRset cache
or by iterating, and follows the CNAME/DNAME chain across zones. The engine owns no sockets and
reads no clock: it asks an injected ``Upstream`` to exchange bytes with one server and takes the
time from an injected clock, so tests drive it with a fake network and a fake clock.

One name is resolved by
1. the cache: an RRset, a CNAME, or a negative entry (NXDOMAIN at the name or, RFC 8020, at an
   ancestor; NODATA for the type);
2. a forward zone, if the name lies in one: the question goes with RD to the zone's forwarders
   and their answer is taken as it is (they are recursive servers the operator trusts); a zone
   with ``first`` (Unbound's forward-first) goes on to iteration when none of them answers,
   and then treats them as it does authoritative servers that time out: down for a while, with
   a probe now and then, so that each new name does not wait for their timeouts again;
3. else iteration, starting at the closest delegation known — a cached NS RRset, a stub zone's
   configured servers, or the root from the hints (primed once, RFC 8109). Each step asks one
   server of the current zone, chosen by smoothed RTT among the servers not known to be lame or
   down, and classifies its answer:
   - referral: NS for a zone strictly below the current one and at or above the name sent —
     descend (NS and in-bailiwick glue are cached with referral/glue trust);
   - answer (possibly a chain of CNAMEs/DNAMEs inside the zone), NXDOMAIN (SOA, RFC 2308),
     NODATA — cached and returned;
   - lame (REFUSED, SERVFAIL, an upward or sideways referral, a reply that is none of the
     above), a timeout, or an unreachable server — remembered and the next server tried; TC —
     the same server is asked again over TCP; FORMERR to a query with EDNS — asked again
     without it and remembered.
   QNAME minimisation (RFC 9156): the servers of a zone are asked for the name with one more
   label than the zone, type A, until the full name is reached; an NXDOMAIN or an error for a
   minimised name makes the relaxed mode send the full name instead (broken servers answer
   NXDOMAIN for empty non-terminals), the strict mode take it as the answer.
   NS names without usable addresses are resolved as questions of their own, sharing the
   client query's budget; an NS name inside the zone it serves without glue cannot be resolved
   and is skipped.

Only records inside the bailiwick of the zone asked (its apex or below) are accepted from a
reply, and of the answer section only the RRsets of the answer's chain; the rest is dropped
before anything is cached (RFC 5452 §6 and Unbound's scrubber). Glue and a referral's NS set
steer iteration but are never handed out as answers (RFC 2181 §5.4.1); a cached delegation whose
in-zone servers' glue has expired is skipped for its parent, which refers again with glue.
Limits stop loops and work amplification: referrals per name, CNAME hops, nesting of NS-name
resolutions, and upstream queries per client query (``Budget``).

DNSSEC: with a ``Validator`` attached, upstream queries carry DO (and CD to forwarders, which
must hand over what they would call bogus so that ispd decides), RRSIGs are kept with the RRsets
they cover and NSEC/NSEC3 proofs with the negative answers and wildcard expansions they prove,
DS questions go to the parent's servers (RFC 4035 §4.2), and every step of a resolution is
handed to the validator, whose verdict (secure, insecure, bogus) is kept in the cache with the
records. The resolutions the validator itself asks for (DS, DNSKEY) and the addresses of NS
names are not validated on their own: the validator checks what it uses.

Not here: the local names, policy and access control (the service answers those before asking
the resolver), the validation itself (``ispd.dns.validator``), and the answer cache in wire form
(the service's).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address
from typing import TYPE_CHECKING, Protocol

from ispd.dns.cache import NXDOMAIN_KEY, NegativeKind, RRsetCache, RRsetEntry, Security, Trust
from ispd.dns.dns64 import DNS64
from ispd.dns.rebinding import RebindingGuard
from ispd.dns.wire import (
    CLASS_IN,
    FLAG_AA,
    FLAG_TC,
    ROOT,
    RR,
    Message,
    RCode,
    RRType,
    WireError,
    ancestor_with_labels,
    decode_message,
    encode_query,
    is_subdomain,
    label_count,
    name_to_text,
    parent_name,
    rdata_name,
    soa_minimum,
    type_text,
)
from ispd.dns.zonelimit import ZoneRateLimiter

if TYPE_CHECKING:
    from ispd.dns.validator import Validator

_DENIAL_TYPES = frozenset({RRType.NSEC, RRType.NSEC3})


class UpstreamError(Exception):
    """An exchange with one server failed; ``kind`` is a metric label."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind} {detail}".strip())
        self.kind = kind


class _Abandoned(Exception):
    """A shared exchange's sender gave up (cancelled) before the reply came."""


_JOINED = "joined"  # an UpstreamError kind: another resolution's exchange failed (it counted it)


class Upstream(Protocol):
    async def exchange(self, address: str, query: bytes, *, tcp: bool, wait: float,
                       exact_case: bool, zone: bytes = b"") -> bytes:
        """Send ``query`` to ``address`` (on port 53, or "address@port") and return the first
        reply that matches its ID and question (exactly, when ``exact_case``), or raise
        ``UpstreamError``. ``zone`` is the zone the server is asked as a server of (for dnstap)."""
        ...


@dataclass(slots=True)
class ResolverSettings:
    qname_minimisation: str = "relaxed"  # off | relaxed | strict
    use_0x20: bool = False
    edns_buffer_size: int = 1232
    do_ipv4: bool = True
    do_ipv6: bool = True
    max_referrals: int = 30
    max_cname_chain: int = 12
    max_queries_per_request: int = 64
    max_ns_depth: int = 4
    max_minimise_steps: int = 10
    initial_timeout: float = 0.4
    min_timeout: float = 0.05
    max_timeout: float = 2.0
    server_down_seconds: float = 30.0
    # Server addresses never asked unless the operator named them (``AskableAddresses``).
    do_not_query: tuple[IPv4Network | IPv6Network, ...] = ()
    # Queries per second to one zone's servers (``ZoneRateLimiter``): 0 and no per-domain
    # limits, none.
    zone_rate_limit_qps: int = 0
    zone_rate_limit_factor: int = 10
    zone_rate_limits: dict[bytes, int] = field(default_factory=dict)
    # DNS rebinding protection (``RebindingGuard``): addresses dropped from upstream answers,
    # and the domains whose names may have them (the forward and stub zones may anyway).
    private_addresses: tuple[IPv4Network | IPv6Network, ...] = ()
    private_domains: tuple[bytes, ...] = ()
    nat64_prefix: IPv6Network | None = None  # DNS64's: an AAAA under it reaches the IPv4 address it embeds


# Where a packet to these goes to this very host on Linux: loopback, the unspecified addresses
# (0.0.0.0/8 and ``::`` reach the local host) and IPv4-mapped IPv6, which an AF_INET6 socket
# sends as IPv4 (Unbound's do-not-query-localhost, with CVE-2026-50251's additions).
LOCALHOST_NETWORKS: tuple[IPv4Network | IPv6Network, ...] = (
    IPv4Network("127.0.0.0/8"), IPv4Network("0.0.0.0/8"),
    IPv6Network("::1/128"), IPv6Network("::/128"), IPv6Network("::ffff:0:0/96"))


class AskableAddresses:
    """Which server addresses iteration may send to: those of the address families in use and
    outside ``settings.do_not_query`` — a zone anyone can register may name this host or the
    operator's inner networks as its servers, and the resolver would query them on its behalf.
    Addresses the operator gave (root hints, forward and stub zones) are asked wherever they are."""

    def __init__(self, settings: ResolverSettings, configured: Iterable[str]) -> None:
        self.settings = settings
        self.configured = frozenset(configured)
        self._verdicts: dict[str, bool] = {}

    def __call__(self, address: str) -> bool:
        verdict = self._verdicts.get(address)
        if verdict is None:
            if len(self._verdicts) >= 100_000:
                self._verdicts.clear()
            verdict = self._verdicts[address] = self._judge(address)
        return verdict

    def refused(self, address: str) -> bool:
        """Of the families in use, but in ``do_not_query``."""
        return not self(address) and (self.settings.do_ipv6 if ":" in address else self.settings.do_ipv4)

    def _judge(self, address: str) -> bool:
        if not (self.settings.do_ipv6 if ":" in address else self.settings.do_ipv4):
            return False
        if address in self.configured or not self.settings.do_not_query:
            return True
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        mapped: IPv4Address | None = getattr(ip, "ipv4_mapped", None)
        return not any(ip in network or (mapped is not None and mapped in network)
                       for network in self.settings.do_not_query)


@dataclass(frozen=True, slots=True)
class ForwardZone:
    name: bytes
    addresses: tuple[str, ...]
    recursive: bool  # True: a forward zone (RD, answers taken as they are); False: a stub zone
    first: bool = False  # a forward zone whose names are iterated when its forwarders fail
    # A stub zone's servers by name, asked when ``addresses`` is empty: a delegation in a local
    # zone to servers outside it, whose addresses the resolver finds.
    ns_names: tuple[bytes, ...] = ()


@dataclass(slots=True)
class Resolution:
    rcode: int
    answer: list[RR]
    authority: list[RR] = field(default_factory=list)
    failure: str | None = None  # why a SERVFAIL: a short reason for logs, metrics and traces
    security: Security = Security.UNCHECKED
    ede: int = -1  # an RFC 8914 code for a bogus answer
    zone: bytes = b""  # the zone whose servers gave the last step (the validator's parent zone)


# The forward zones (with ``first``) whose forwarders failed in the client question this task
# resolves: the questions asked on its behalf (name servers' addresses, and the validator's DS
# and DNSKEY questions, each with a budget of its own) iterate at once, not after the
# forwarders' timeouts again, one per question. Set by the outermost ``Resolver.resolve``.
_FAILED_FORWARDING: contextvars.ContextVar[set[bytes] | None] = contextvars.ContextVar("failed_forwarding",
                                                                                       default=None)


class Budget:
    """Upstream work one client query may cause (RFC 9156 §2.3 and the NXNSAttack lessons):
    upstream queries, and lookups of name servers' addresses - counted apart, because a lookup
    answered from the cache costs no query, and delegations to hundreds of names whose own
    servers are more such names kept the event loop busy for seconds (from a review)."""

    __slots__ = ("nonexistent_servers", "past_limit", "queries", "server_lookups", "trace")

    def __init__(self, queries: int, trace: Callable[[str], None] | None, past_limit: bool = False) -> None:
        self.queries = queries
        self.server_lookups = MAX_SERVER_LOOKUPS
        self.nonexistent_servers = 0  # NS names looked up that do not exist (NXDOMAIN)
        self.trace = trace
        self.past_limit = past_limit  # let through a zone's rate limit already (ZoneRateLimiter.screen)

    def spend(self) -> bool:
        self.queries -= 1
        return self.queries >= 0

    def spend_lookup(self) -> bool:
        self.server_lookups -= 1
        return self.server_lookups >= 0


@dataclass(slots=True)
class ServerState:
    srtt: float = 0.0
    rttvar: float = 0.0
    samples: int = 0
    timeouts: int = 0
    down_until: float = 0.0
    failed_at: float = 0.0  # the last timeout (or unreachable)

    def timeout(self, settings: ResolverSettings) -> float:
        # RFC 6298's RTO once there is a sample, floored before it backs off (§2.4, §5.5): a
        # server measured at 2 ms waited 50 ms five times over, the doubling lost under the floor.
        return min(settings.max_timeout, self.rto(settings) * (1 << self.timeouts))

    def rto(self, settings: ResolverSettings) -> float:
        """The wait before any backing off."""
        base = self.srtt + 4 * self.rttvar if self.samples else settings.initial_timeout
        return max(settings.min_timeout, base)


@dataclass(slots=True)
class TypeFailures:
    """A server's timeouts in a row on one type of question."""
    timeouts: int = 0
    down_until: float = 0.0  # questions of this type skip the server until then
    next_probe: float = 0.0  # while down: when one question may try it again


class InfraCache:
    """What the resolver knows about servers: RTT, failures, and which zones they are lame for."""

    def __init__(self, settings: ResolverSettings) -> None:
        self.settings = settings
        self.servers: dict[str, ServerState] = {}
        self.lame: dict[tuple[bytes, str, int], float] = {}
        # Timeouts in a row by server and type of question: a server that drops one type (HTTPS
        # or another it does not know, RFC 8906) is not down for the others - nor for the
        # DNSKEY and DS questions validation needs.
        self.failing: dict[tuple[str, int], TypeFailures] = {}
        # Until when a server is asked without EDNS, by type of question: it answered FORMERR,
        # NOTIMP or BADVERS to a query with an OPT. A server (or a middlebox before it) that
        # does so for one type it does not know (HTTPS, RFC 8906) still speaks EDNS for the
        # others; were it remembered for all, one client's question would strip DO from every
        # query to it, and its signed zones would go bogus (RRSIGs missing) until a restart.
        self.no_edns: dict[tuple[str, int], float] = {}

    def state(self, address: str) -> ServerState:
        state = self.servers.get(address)
        if state is None:
            if len(self.servers) > 100_000:
                self.servers.clear()
            state = self.servers[address] = ServerState()
        return state

    def record_rtt(self, address: str, rtt: float, qtype: int) -> None:
        self.failing.pop((address, qtype), None)
        state = self.state(address)
        if state.samples == 0:
            state.srtt, state.rttvar = rtt, rtt / 2
        else:  # RFC 6298 §2.3
            state.rttvar = 0.75 * state.rttvar + 0.25 * abs(state.srtt - rtt)
            state.srtt = 0.875 * state.srtt + 0.125 * rtt
        state.samples += 1
        state.timeouts = 0
        state.down_until = 0.0

    def record_failure(self, address: str, now: float, qtype: int | None) -> None:
        """A timeout (or an unreachable server); ``qtype`` None: counted for the server (its
        wait backs off, ``choose`` passes it over while others are up) and not against that type
        of question (``is_up``, which ends in "every server is down")."""
        state = self.state(address)
        state.timeouts = min(state.timeouts + 1, 8)
        state.failed_at = now
        if state.timeouts >= 3:
            state.down_until = now + self.settings.server_down_seconds
        if qtype is None:
            return
        if len(self.failing) > 100_000:
            self.failing.clear()
        failing = self.failing.get((address, qtype))
        if failing is None:
            failing = self.failing[(address, qtype)] = TypeFailures()
        failing.timeouts += 1
        if failing.timeouts >= 3:
            failing.down_until = now + self.settings.server_down_seconds

    def is_up(self, address: str, qtype: int, now: float) -> bool:
        """Whether ``address`` has not timed out of late on questions of type ``qtype``."""
        failing = self.failing.get((address, qtype))
        return failing is None or failing.down_until <= now

    def probe(self, addresses: list[str], qtype: int, now: float) -> str | None:
        """One of ``addresses`` (all down for ``qtype``) to try once more, at most one
        every ``PROBE_INTERVAL`` seconds each; None while none is due."""
        never_failed = TypeFailures()
        due = [a for a in addresses if self.failing.get((a, qtype), never_failed).next_probe <= now]
        if not due:
            return None
        address = random.choice(due)
        failing = self.failing.get((address, qtype))
        if failing is None:
            failing = self.failing[(address, qtype)] = TypeFailures(3, now + self.settings.server_down_seconds)
        failing.next_probe = now + PROBE_INTERVAL
        return address

    def mark_lame(self, zone: bytes, address: str, now: float, qtype: int) -> None:
        """The server does not serve ``zone`` - for this type of question: a server may refuse
        one type (one it does not know, RFC 8906) and answer the others, and one client's
        question must not take a zone down for everyone (from a review: REFUSED to TYPE65000
        made the whole zone SERVFAIL for 15 minutes; Unbound keeps A apart the same way)."""
        if len(self.lame) > 100_000:
            self.lame.clear()
        self.lame[(zone, address, qtype)] = now + 900

    def mark_no_edns(self, address: str, now: float, qtype: int) -> None:
        if len(self.no_edns) > 100_000:
            self.no_edns.clear()
        self.no_edns[(address, qtype)] = now + NO_EDNS_SECONDS

    def without_edns(self, address: str, now: float, qtype: int) -> bool:
        until = self.no_edns.get((address, qtype))
        return until is not None and until > now

    def is_lame(self, zone: bytes, address: str, now: float, qtype: int) -> bool:
        until = self.lame.get((zone, address, qtype))
        return until is not None and until > now

    def choose(self, addresses: list[str], now: float) -> str:
        """RTT banding like Unbound: a random one among the servers within 400 ms of the best,
        preferring servers that are up. A server that timed out lately is expected to take its
        backed-off timeout, as Unbound's selection uses the RTO: a dead address beside live
        ones (a name server's unreachable AAAA beside its A) was otherwise as likely a pick as
        they were, each new name waiting for it (0.4, 0.8, 1.6 s) until it was down, and 2 s
        again each time its down time ended."""
        up = [a for a in addresses if self.state(a).down_until <= now] or addresses

        def expected(address: str) -> float:
            state = self.state(address)
            if state.timeouts and now - state.failed_at < FAILURE_MEMORY_SECONDS:
                return state.timeout(self.settings)
            return state.srtt if state.samples else self.settings.initial_timeout

        best = min(expected(a) for a in up)
        band = [a for a in up if expected(a) <= best + 0.4]
        return random.choice(band)


class Step(Enum):
    ANSWER = "answer"  # records for the name and type (after a chain, maybe)
    CNAME = "cname"  # a chain that leaves what this step could answer: go on from ``next_name``
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    REFERRAL = "referral"
    FAILED = "failed"


@dataclass(slots=True)
class Outcome:
    step: Step
    records: list[RR] = field(default_factory=list)  # chain and answer, in order
    next_name: bytes = b""
    soa: list[RR] = field(default_factory=list)
    zone: bytes = b""  # for a referral
    ns_names: tuple[bytes, ...] = ()
    reason: str = ""
    minimised_error: bool = False  # an error rcode to a minimised name, not a verdict on the server
    # DNSSEC: the NSEC/NSEC3 records (and the RRSIGs of those and of the SOA) of a negative answer
    # or a wildcard expansion, and the validator's verdict. ``zone`` is also the zone that gave
    # an answer.
    proof: list[RR] = field(default_factory=list)
    security: Security = Security.UNCHECKED
    ede: int = -1
    # A referral's glue, by server name: for this resolution also when its TTL keeps it out of
    # the cache (TTL 0: "use for the transaction in progress", RFC 1035 §3.2.1).
    glue: dict[bytes, list[str]] = field(default_factory=dict)


_NO_SERVER_ANSWERED = Outcome(Step.FAILED, reason="no server of the zone answered")
# None was asked: no address found for any of them, or only addresses of a family turned off (an
# IPv6-only zone with do_ipv6 = false). "No server answered" sent the operator looking for a
# network fault.
_NO_ADDRESS = Outcome(Step.FAILED, reason="no server of the zone has an address to ask "
                                          "(none found, or only of a family turned off: do_ipv4, do_ipv6)")
_MINIMISED_UNANSWERED = Outcome(Step.FAILED, reason="no server of the zone answered the minimised name",
                                minimised_error=True)
_ALL_DOWN = Outcome(Step.FAILED, reason="every server of the zone is down (timed out lately)")
# This host ran out of descriptors (EMFILE: a flood of slow new names holds a socket per upstream
# query): no server was asked, and none of the others would be (each fails at socket() alike).
# Neither the servers' failure nor the name's: the engine does not keep this SERVFAIL for RFC
# 9520's 5 s, which would fail a popular name for every client long after sockets came free.
OUT_OF_SOCKETS = "no socket free on this host for an upstream query (open files at the limit: LimitNOFILE, ulimit -n)"
_OUT_OF_SOCKETS = Outcome(Step.FAILED, reason=OUT_OF_SOCKETS)
_RATE_LIMITED = Outcome(Step.FAILED, reason="the zone's servers are asked more than its rate limit allows")
_ALL_REFUSED = Outcome(Step.FAILED, reason="every server address of the zone is one not to query (do_not_query)")
# Name servers whose addresses one client query may look up (Unbound's cap on target
# fetches is 64 queries; a sane delegation needs a handful).
MAX_SERVER_LOOKUPS = 32
# NS names that turn out not to exist, per client query, before the rest of the NS set is given
# up: NXNSAttack's delegation to many names that do not exist in a victim's zone makes a resolver
# ask the victim's servers for each (Unbound's MAX_TARGET_NX, BIND's fix: 5).
MAX_NONEXISTENT_SERVERS = 5
# Records one upstream reply may hold (answer, authority and additional sections together),
# counted from its header before it is decoded. A zone anyone can register may answer thousands
# (48 kB of A records over UDP, whatever the EDNS size asked, or over TCP): decoding, caching
# and rendering 3000 records took some 45 ms of the event loop, so a few dozen new names a
# second stalled every client's answers, cached ones too. BIND caps an RRset at 100 records
# (max-records-per-type, CVE-2024-1737); a sane reply, a signed referral with its glue
# included, holds a few dozen.
MAX_REPLY_RECORDS = 256
# How long a server that rejected EDNS for a type of question is asked that type without it
# (Unbound keeps what it learns of a server's EDNS for its infra-host-ttl, 900 s by default).
NO_EDNS_SECONDS = 900.0
# How long a server's timeouts keep it out of the best servers' band when others answer
# (Unbound's infra-host-ttl, 900 s by default).
FAILURE_MEMORY_SECONDS = 900.0
PROBE_INTERVAL = 10.0  # seconds between tries of a server that is down, while all of its zone's are
# Tries of each forwarder of a forward zone without ``first`` (nowhere else to go): its wait
# doubles from the measured RTT, and a recursive server that answers its cached names in a
# millisecond takes hundreds on a name it must resolve - two tries (50 and 100 ms) gave SERVFAIL
# for every name it did not have cached. Six reach 1.6 s from the 50 ms floor; the client
# query's deadline (request_timeout_seconds) ends the tries of a dead one.
FORWARDER_TRIES = 6

Hints = list[tuple[bytes, list[str]]]  # (root server name, its addresses)


class Resolver:
    def __init__(self, cache: RRsetCache, upstream: Upstream, hints: Hints, clock: Callable[[], float],
                 settings: ResolverSettings | None = None,
                 forward_zones: list[ForwardZone] | None = None) -> None:
        self.cache = cache
        self.upstream = upstream
        self.hints = hints
        self.clock = clock
        self.settings = settings or ResolverSettings()
        self.infra = InfraCache(self.settings)
        self._configured_zones = list(forward_zones or ())
        self._delegated_zones: list[ForwardZone] = []
        self._set_forward_zones()
        self.guard = RebindingGuard()
        self._configure_guard()
        self.zone_limiter = ZoneRateLimiter(self.settings.zone_rate_limit_qps, self.settings.zone_rate_limit_factor,
                                            self.settings.zone_rate_limits)
        self.validator: Validator | None = None
        self.upstream_queries = 0
        self.upstream_failures: dict[str, int] = {}
        self._priming: asyncio.Future[None] | None = None
        self._prime_again_at = 0.0
        # The exchanges in flight, by server and query less its ID: a resolution that would send
        # the very same query to the same server waits for that one's reply instead (RFC 5452
        # §5, the birthday attack: each identical query outstanding is one more port and ID a
        # forged reply may hit). Unbound's serviced queries and BIND do the same.
        self._exchanges: dict[tuple[str, bool, bytes, bytes], asyncio.Future[bytes]] = {}

    def configure(self, settings: ResolverSettings, hints: Hints, forward_zones: list[ForwardZone]) -> None:
        """A reload's settings, hints and forward zones."""
        self.settings = self.infra.settings = settings
        self.hints = hints
        self._configured_zones = list(forward_zones)
        self._set_forward_zones()
        before = self._guard_setting()
        self._configure_guard()
        if self.guard.enabled and self._guard_setting() != before:
            # What the cache learnt under the old setting (or none) may hold addresses that the
            # new one drops: they would be answered, and served stale, for as long as they live.
            self.cache.clear()
        self.zone_limiter.configure(settings.zone_rate_limit_qps, settings.zone_rate_limit_factor,
                                    settings.zone_rate_limits)

    def delegate(self, zones: list[ForwardZone]) -> set[bytes]:
        """The delegations in the operator's local zones, as stub zones (a configured forward
        or stub zone of the same name comes first); the names whose servers changed."""
        changed = set(self._delegated_zones) ^ set(zones)
        self._delegated_zones = list(zones)
        self._set_forward_zones()
        self._configure_guard()
        return {zone.name for zone in changed}

    def _set_forward_zones(self) -> None:
        zones = {zone.name: zone for zone in self._delegated_zones}
        zones.update((zone.name, zone) for zone in self._configured_zones)
        self.forward_zones = zones
        self._forward_first = any(zone.first for zone in zones.values())
        self.askable = self._askable_addresses()

    def _guard_setting(self) -> tuple[object, ...]:
        guard = self.guard
        return guard.networks, guard.allowed, guard.nat64.prefix if guard.nat64 is not None else None

    def _configure_guard(self) -> None:
        """The rebinding guard for these settings and forward zones (its count goes on). A
        forward zone "." is the public tree as an upstream resolver sees it, not the operator's
        own names: exempting it would exempt every name."""
        self.guard.networks = self.settings.private_addresses
        prefix = self.settings.nat64_prefix
        if prefix != (self.guard.nat64.prefix if self.guard.nat64 is not None else None):
            self.guard.nat64 = DNS64(prefix) if prefix is not None else None
        self.guard.allowed = frozenset((*self.settings.private_domains,
                                        *(zone for zone in self.forward_zones if zone != ROOT)))

    def _askable_addresses(self) -> AskableAddresses:
        configured = [a for _, addresses in self.hints for a in addresses]
        configured.extend(a for zone in self.forward_zones.values() for a in zone.addresses)
        return AskableAddresses(self.settings, configured)

    # --- the client-facing question -----------------------------------------------------

    async def resolve(self, name: bytes, qtype: int, *, trace: Callable[[str], None] | None = None,
                      budget: Budget | None = None, depth: int = 0, refresh: bool = False,
                      validate: bool = True, past_limit: bool = False,
                      stop_at: Callable[[bytes], bool] | None = None) -> Resolution:
        """Answer (name, type) in class IN, following CNAMEs and DNAMEs (RFC 1034 §4.3.2).
        ``refresh`` (a prefetch) asks upstream for the names of the answer even while the cache
        still holds them; delegations still come from the cache. ``validate=False`` leaves the
        DNSSEC verdict to the caller (the validator's own questions). ``past_limit``: the zone
        rate limit let this question through already. ``stop_at``: the chain is not followed to
        a target it is true for (one the policy rewrites): the resolution ends, NOERROR, with
        the CNAME to it, and that name is never asked of its servers."""
        budget = budget or Budget(self.settings.max_queries_per_request, trace, past_limit)
        if self._forward_first and _FAILED_FORWARDING.get() is None:
            token = _FAILED_FORWARDING.set(set())
            try:
                return await self._resolve_chain(name, qtype, budget, depth, refresh, validate, stop_at)
            finally:
                _FAILED_FORWARDING.reset(token)
        return await self._resolve_chain(name, qtype, budget, depth, refresh, validate, stop_at)

    async def _resolve_chain(self, name: bytes, qtype: int, budget: Budget, depth: int, refresh: bool,
                             validate: bool, stop_at: Callable[[bytes], bool] | None = None) -> Resolution:
        validator = self.validator if validate else None
        security = Security.SECURE if validator is not None else Security.UNCHECKED
        ede = -1
        chain: list[RR] = []
        proofs: list[RR] = []  # of wildcard CNAMEs along the chain (RFC 4035 §3.1.3.3)
        seen = {name}
        current = name
        for _ in range(self.settings.max_cname_chain + 1):
            outcome = await self._resolve_name(current, qtype, budget, depth, refresh)
            if validator is not None and outcome.step != Step.FAILED:
                await validator.check(outcome, current, qtype, budget.trace)  # may lower the TTLs
                if outcome.security < security:
                    security, ede = outcome.security, outcome.ede
            chain.extend(outcome.records)
            # One reply may carry several hops of the chain: count the hops, not the replies.
            if sum(1 for rr in chain if rr.rtype == RRType.CNAME) > self.settings.max_cname_chain:
                return Resolution(RCode.SERVFAIL, chain, failure="CNAME chain too long")
            if outcome.step == Step.ANSWER:
                return Resolution(RCode.NOERROR, chain, proofs + outcome.proof, security=security, ede=ede,
                                  zone=outcome.zone)
            if outcome.step == Step.NXDOMAIN:
                return Resolution(RCode.NXDOMAIN, chain, outcome.soa + proofs + outcome.proof, security=security,
                                  ede=ede, zone=outcome.zone)
            if outcome.step == Step.NODATA:
                return Resolution(RCode.NOERROR, chain, outcome.soa + proofs + outcome.proof, security=security,
                                  ede=ede, zone=outcome.zone)
            if outcome.step != Step.CNAME:
                return Resolution(RCode.SERVFAIL, chain, failure=outcome.reason or "resolution failed")
            proofs.extend(outcome.proof)
            if outcome.next_name in seen:
                return Resolution(RCode.SERVFAIL, chain, failure="CNAME loop")
            if stop_at is not None and stop_at(outcome.next_name):
                if budget.trace is not None:
                    _trace(budget, f"not following the chain to {name_to_text(outcome.next_name)}: policy")
                return Resolution(RCode.NOERROR, chain, security=security, ede=ede, zone=outcome.zone)
            seen.add(outcome.next_name)
            current = outcome.next_name
            if budget.trace is not None:
                _trace(budget, f"following the chain to {name_to_text(current)}")
        return Resolution(RCode.SERVFAIL, chain, failure="CNAME chain too long")

    async def _resolve_name(self, name: bytes, qtype: int, budget: Budget, depth: int,
                            refresh: bool = False) -> Outcome:
        now = self.clock()
        # RFC 4035 §4.2: a DS set is the parent's, so it is asked where the parent is.
        forward = self._forward_zone(parent_name(name) if qtype == RRType.DS and name != ROOT else name)
        # Below a forward or stub zone, the operator's view is not the public tree's, whose NSEC
        # records may deny the zone altogether (an "internal." that does not exist): no answer is
        # made up from them there. Forwarding "." is the public tree, as the forwarder sees it.
        private = forward is not None and forward.name != ROOT
        cached = None if refresh else self._from_cache(name, qtype, now)
        if cached is not None:
            if budget.trace is not None:
                _trace(budget, f"{name_to_text(name)} {type_text(qtype)}: {cached.step.value} from the cache")
            return cached
        if self.validator is not None and not refresh and not private:
            synthesised = self.validator.synthesise(name, qtype)
            if synthesised is not None:  # RFC 8198: a cached NSEC proves it already
                if budget.trace is not None:
                    _trace(budget, f"{name_to_text(name)} {type_text(qtype)}: {synthesised.step.value} "
                                   "from cached NSEC records")
                return synthesised
        failed = _FAILED_FORWARDING.get() if forward is not None and forward.first else None
        if forward is not None and forward.recursive and (failed is None or forward.name not in failed):
            outcome = await self._ask_servers(forward.name, list(forward.addresses), name, qtype, budget,
                                              forwarded=True, skip_down=forward.first)
            if outcome.step != Step.FAILED or not forward.first:
                return outcome
            if failed is not None:  # (always, with first: the outermost resolve set it)
                failed.add(forward.name)
            if budget.trace is not None:
                _trace(budget, f"the forwarders of {name_to_text(forward.name)} failed ({outcome.reason}): "
                               "iterating from the root")
        return await self._iterate(name, qtype, budget, depth)

    def stale_resolution(self, name: bytes, qtype: int, stale_ttl: int,
                         stop_at: Callable[[bytes], bool] | None = None) -> Resolution | None:
        """RFC 8767 from the RRset cache: the answer that its entries, expired ones within
        ``stale_seconds`` included, still make for (name, type) - CNAME and DNAME chains followed,
        NXDOMAIN and NODATA too - every TTL ``stale_ttl``; None when they do not make a whole
        one. For when resolving failed and the answer cache holds no expired reply to serve in
        its place: the question was answered before only to queries with other DNSSEC bits, or
        a reload has emptied the answer cache. ``stop_at``: as for ``resolve``."""
        now = self.clock()
        validating = self.validator is not None
        security = Security.SECURE if validating else Security.UNCHECKED
        ede = -1
        chain: list[RR] = []
        seen = {name}
        current = name
        for _ in range(self.settings.max_cname_chain + 1):
            outcome = self._from_cache(current, qtype, now, stale=True)
            if outcome is None or outcome.step not in (Step.ANSWER, Step.NXDOMAIN, Step.NODATA, Step.CNAME):
                return None
            if validating and outcome.security < security:
                security, ede = outcome.security, outcome.ede
            chain.extend(outcome.records)
            stopped = outcome.step == Step.CNAME and stop_at is not None and stop_at(outcome.next_name)
            if outcome.step == Step.CNAME and not stopped:
                if outcome.next_name in seen:
                    return None
                seen.add(outcome.next_name)
                current = outcome.next_name
                continue
            rcode = RCode.NXDOMAIN if outcome.step == Step.NXDOMAIN else RCode.NOERROR
            authority = outcome.proof if outcome.step == Step.ANSWER else outcome.soa + outcome.proof
            # The answer is kept for its TTL: no longer than the records' stale window lasts.
            ttl = min(stale_ttl, self._stale_window_left(seen, qtype, now))
            return Resolution(rcode, [replace(rr, ttl=ttl) for rr in chain],
                              [replace(rr, ttl=ttl) for rr in authority], security=security, ede=ede,
                              zone=outcome.zone)
        return None

    def _stale_window_left(self, names: set[bytes], qtype: int, now: float) -> int:
        """Whole seconds until the first of the expired entries a stale answer for ``names``
        was made of leaves the stale window (RFC 8767 §4's maximum stale timer). Those entries
        are the names' own and their ancestors' DNAME and NXDOMAIN (``_from_cache``'s steps);
        an entry already past its window lies in the cache until evicted but was not used."""
        left = float("inf")
        stale_seconds = self.cache.limits.stale_seconds
        keys: set[tuple[bytes, int]] = set()
        for name in names:
            keys.update(((name, qtype), (name, RRType.CNAME), (name, NXDOMAIN_KEY)))
            ancestor = name
            while ancestor != ROOT:
                ancestor = parent_name(ancestor)
                keys.update(((ancestor, RRType.DNAME), (ancestor, NXDOMAIN_KEY)))
        for key in keys:
            entry = self.cache.entry(key)
            if entry is not None and entry.expires_at <= now < entry.expires_at + stale_seconds:
                left = min(left, entry.expires_at + stale_seconds - now)
        return int(left) if left != float("inf") else 2**31 - 1

    def _from_cache(self, name: bytes, qtype: int, now: float, *, stale: bool = False) -> Outcome | None:
        """What the cache answers for (name, type); ``stale``: with its expired entries too,
        those kept for serve-stale (their TTLs then 0)."""
        cache = self.cache
        get = cache.get_stale if stale else cache.get
        # RFC 2181 §5.4.1: glue and a referral's NS set steer iteration but are never answers.
        if qtype != RRType.ANY:
            entry = get(name, qtype, now)
            if entry is not None and entry.trust >= Trust.AUTHORITY:
                if not entry.sigs and not entry.proof:
                    return Outcome(Step.ANSWER, entry.records(now), zone=entry.zone, security=entry.security,
                                   ede=entry.ede)
                return Outcome(Step.ANSWER, entry.records_with_sigs(now), zone=entry.zone, proof=list(entry.proof),
                               security=entry.security, ede=entry.ede)
        if qtype not in (RRType.CNAME, RRType.ANY):  # ANY takes the CNAME as it is (RFC 1034 §4.3.2 3a)
            cname = get(name, RRType.CNAME, now)
            if cname is not None and cname.trust >= Trust.AUTHORITY:
                return Outcome(Step.CNAME, cname.records_with_sigs(now), next_name=rdata_name(cname.rdatas[0]),
                               zone=cname.zone, proof=list(cname.proof), security=cname.security, ede=cname.ede)
        ancestor = name
        while True:  # RFC 8020: nothing exists below a name that does not exist
            if ancestor != name:
                dname = get(ancestor, RRType.DNAME, now)
                if dname is not None and dname.trust >= Trust.AUTHORITY:
                    return self._substituted(name, qtype, ancestor, dname, now)
            negative = cache.get_negative(ancestor, qtype, now, stale=stale)
            if negative is not None and (ancestor == name or (negative.kind == NegativeKind.NXDOMAIN
                                                              and negative.security == Security.SECURE)):
                # Below a name, only a validated NXDOMAIN counts (as Unbound's
                # harden-below-nxdomain): servers answer NXDOMAIN for empty non-terminals, and
                # one client's question must not hide the names below from everyone.
                step = Step.NXDOMAIN if negative.kind == NegativeKind.NXDOMAIN else Step.NODATA
                # An NXDOMAIN above the name: the verdict stands for both (nothing exists below a
                # name that does not), and so does the proof - the same closest encloser, the
                # same span or next closer name covering, the same wildcard denied.
                return Outcome(step, soa=negative.soa_record(now), proof=negative.proof_records(now),
                               zone=negative.zone, security=negative.security, ede=negative.ede)
            # ... except where the operator says a zone exists: a forward or stub zone is not
            # hidden by what the public tree says of its parent (an "internal." NXDOMAIN).
            if ancestor == ROOT or ancestor in self.forward_zones:
                return None
            ancestor = parent_name(ancestor)

    @staticmethod
    def _substituted(name: bytes, qtype: int, owner: bytes, dname: RRsetEntry, now: float) -> Outcome:
        """The step a cached DNAME at ``owner``, above ``name``, makes: the DNAME and the CNAME
        it implies (RFC 6672 §3.4), as the zone's servers would have sent them - the answer
        itself to a question for the CNAME."""
        target = name[:len(name) - len(owner)] + rdata_name(dname.rdatas[0])
        if len(target) > 255:
            return Outcome(Step.FAILED, reason="DNAME substitution too long")
        records = dname.records_with_sigs(now)
        records.append(RR(name, RRType.CNAME, CLASS_IN, dname.ttl_left(now), target))
        step = Step.ANSWER if qtype == RRType.CNAME else Step.CNAME
        return Outcome(step, records, next_name=target, zone=dname.zone, security=dname.security, ede=dname.ede)

    def spares(self, name: bytes, qtype: int, zone: bytes) -> bool:
        """Whether resolving (name, qtype) may ask none of the servers of ``zone``, an ancestor
        of ``name``, as the cache and the configuration tell at once: the cache holds an answer
        (the engine's answer cache may not: a reload empties it), or the name's servers are a
        forward zone's (never rate limited), a stub zone's or a cached delegation's below
        ``zone``. For the zone rate limit's screen, which knows only the zones it has counted
        (none after a reload, never a forwarded one); what the resolver does ask, it counts."""
        if qtype == RRType.DS and name == zone:  # RFC 4035 §4.2: asked of the parent's servers
            return True
        now = self.clock()
        cache = self.cache
        if (cache.get(name, qtype, now) is not None or cache.get(name, RRType.CNAME, now) is not None
                or cache.get_negative(name, qtype, now) is not None):
            return True
        forward = self._forward_zone(name)
        if forward is not None and (forward.recursive or len(forward.name) > len(zone)):
            return True
        ancestor = name
        while len(ancestor) > len(zone):
            if cache.get(ancestor, RRType.NS, now) is not None:
                return True
            ancestor = parent_name(ancestor)
        return False

    def _forward_zone(self, name: bytes) -> ForwardZone | None:
        if not self.forward_zones:
            return None
        ancestor = name
        while True:
            zone = self.forward_zones.get(ancestor)
            if zone is not None or ancestor == ROOT:
                return zone
            ancestor = parent_name(ancestor)

    # --- iteration ----------------------------------------------------------------------

    async def _iterate(self, qname: bytes, qtype: int, budget: Budget, depth: int) -> Outcome:
        # RFC 4035 §4.2: a DS set lives in the parent zone, so its servers are the ones to ask.
        start = parent_name(qname) if qtype == RRType.DS and qname != ROOT else qname
        zone, ns_names, addresses = await self._closest_delegation(start, budget)
        glue: dict[bytes, list[str]] = {}
        mode = self.settings.qname_minimisation
        minimise = mode != "off"
        known_labels = label_count(zone)
        total_labels = label_count(qname)
        steps = 0
        referrals = 0
        # Bounded: each turn is a referral (counted), a minimised step (at most
        # ``max_minimise_steps``), the relaxed mode's one fall-back to the full name, or the end.
        while True:
            if minimise and known_labels < total_labels and steps < self.settings.max_minimise_steps:
                # Names an earlier query found to exist (an answer or NODATA to the minimised
                # query, in the cache) hide no zone cut that the cache does not know of: asking
                # for them again for each new name below (an empty non-terminal, the nibbles of
                # ip6.arpa) only multiplied the upstream queries (Unbound skips them too).
                now = self.clock()
                while known_labels + 1 < total_labels and self._known_to_exist(
                        ancestor_with_labels(qname, known_labels + 1), now):
                    known_labels += 1
                steps += 1
                send_name = ancestor_with_labels(qname, known_labels + 1)
                send_type = qtype if send_name == qname else RRType.A
            else:
                send_name, send_type = qname, qtype
            minimised = send_name != qname
            if addresses is not None:
                outcome = await self._ask_servers(zone, addresses, send_name, send_type, budget, minimised=minimised)
            else:
                outcome = await self._ask_zone(zone, ns_names, send_name, send_type, budget, depth, minimised,
                                               glue)
            if outcome.step == Step.REFERRAL:
                if qtype == RRType.DS and outcome.zone == qname:
                    return Outcome(Step.FAILED, reason="referred to the child zone for its own DS")
                referrals += 1
                if referrals >= self.settings.max_referrals:
                    return Outcome(Step.FAILED, reason="too many referrals")
                zone, ns_names, addresses, glue = outcome.zone, outcome.ns_names, None, outcome.glue
                known_labels = label_count(zone)
                if budget.trace is not None:
                    _trace(budget, f"referral to {name_to_text(zone)} ({', '.join(map(name_to_text, ns_names))})")
                continue
            if outcome.minimised_error and mode == "relaxed":
                if budget.trace is not None:
                    _trace(budget, f"{outcome.reason} ({name_to_text(send_name)}): asking for the full name")
                minimise = False
                continue
            if send_name == qname or outcome.step == Step.FAILED:
                return outcome
            # A minimised name was answered: the name exists and no zone cut is there, or not.
            if outcome.step == Step.NXDOMAIN:
                if mode == "strict":
                    # Nothing exists below it (RFC 8020): its denial, with the zone that gave it,
                    # proves the name asked too (the same closest encloser and next closer name).
                    return Outcome(Step.NXDOMAIN, soa=outcome.soa, proof=outcome.proof, zone=outcome.zone)
                if budget.trace is not None:
                    _trace(budget, f"NXDOMAIN for the minimised {name_to_text(send_name)}: asking for the full name")
                # Not believed, so not kept: RFC 8020 would extend it to the very name asked next.
                self.cache.forget_nxdomain(send_name)
                minimise = False
                continue
            known_labels += 1

    def _known_to_exist(self, name: bytes, now: float) -> bool:
        if self.cache.get(name, RRType.A, now) is not None:
            return True
        negative = self.cache.get_negative(name, RRType.A, now)
        return negative is not None and negative.kind == NegativeKind.NODATA

    async def _closest_delegation(self, qname: bytes,
                                  budget: Budget) -> tuple[bytes, tuple[bytes, ...], list[str] | None]:
        """The deepest zone above ``qname`` whose servers are known: (zone, NS names, or — for a
        stub zone or the root hints — the addresses themselves)."""
        now = self.clock()
        ancestor = qname
        while True:
            stub = self.forward_zones.get(ancestor)
            if stub is not None and not stub.recursive:
                if stub.addresses or not stub.ns_names:
                    return ancestor, (), list(stub.addresses)
                return ancestor, stub.ns_names, None
            ns = self.cache.get(ancestor, RRType.NS, now)
            if ns is not None:
                names = tuple(rdata_name(r) for r in ns.rdatas)
                # Glue often expires before the NS set: servers named inside their own zone
                # without addresses can only be found through the parent's referral again.
                if ancestor == ROOT or any(self._addresses_of(n, now) or not is_subdomain(n, ancestor)
                                           for n in names):
                    # The cached name, not ``ancestor`` (a new slice per query): the zone is kept
                    # in every RRset this query caches.
                    return ns.name, names, None
            if ancestor == ROOT:
                break
            ancestor = parent_name(ancestor)
        await self._prime(budget)
        ns = self.cache.get(ROOT, RRType.NS, self.clock())
        if ns is not None:
            return ROOT, tuple(rdata_name(r) for r in ns.rdatas), None
        return ROOT, (), self._hint_addresses()

    def _hint_addresses(self) -> list[str]:
        return [a for _, addresses in self.hints for a in addresses if self._family_ok(a)]

    async def _prime(self, budget: Budget) -> None:
        """RFC 8109: learn the root's NS set from the root itself. Concurrent callers share one
        priming; after a failed one the hints serve for a while before the next try."""
        if self._priming is None:
            if self.clock() < self._prime_again_at:
                return
            self._priming = asyncio.ensure_future(self._do_prime(budget))
            self._priming.add_done_callback(self._primed)
        await asyncio.shield(self._priming)

    def _primed(self, task: asyncio.Future[None]) -> None:
        self._priming = None
        if task.cancelled() or task.exception() is not None or self.cache.get(ROOT, RRType.NS, self.clock()) is None:
            self._prime_again_at = self.clock() + 10

    async def _do_prime(self, budget: Budget) -> None:
        _trace(budget, "priming the root servers from the hints")
        await self._ask_servers(ROOT, self._hint_addresses(), ROOT, RRType.NS, budget)

    def _family_ok(self, address: str) -> bool:
        return self.settings.do_ipv6 if ":" in address else self.settings.do_ipv4

    async def _ask_zone(self, zone: bytes, ns_names: tuple[bytes, ...], qname: bytes, qtype: int,
                        budget: Budget, depth: int, minimised: bool = False,
                        glue: dict[bytes, list[str]] | None = None) -> Outcome:
        """Ask the servers of ``zone``, resolving NS names without addresses only when the
        servers with addresses have all failed; ``glue``: the referral's, which the cache may
        not have kept."""
        tried: set[str] = set()
        unresolved = list(ns_names)
        # Names with addresses of one family in use and the other never looked up (an A cached
        # from a client's question, or glue of one family): once the addresses known have all
        # failed, the other family is looked up, as Unbound does. Before, a name server whose
        # IPv4 path was broken failed its zones although its AAAA answered.
        incomplete: list[bytes] = []
        completed: set[bytes] = set()
        # The addresses looked up here, by NS name: for this resolution also when their TTL keeps
        # them out of the cache (TTL 0, RFC 1035 §3.2.1), as the referral's glue.
        looked_up_addresses: dict[bytes, list[str]] = {}
        last = _NO_ADDRESS  # until a server is asked
        while True:
            now = self.clock()
            addresses: list[str] = []
            pending: list[bytes] = []
            for ns in unresolved:
                found = list(dict.fromkeys([*(self._addresses_of(ns, now) or (glue.get(ns) if glue else None) or ()),
                                            *looked_up_addresses.get(ns, ())]))  # (each once: cached too)
                if found:
                    addresses.extend(a for a in found if a not in tried)
                    if ns not in completed and ns not in incomplete and self._missing_types(ns, now):
                        incomplete.append(ns)
                else:
                    pending.append(ns)
            if zone == ROOT and not addresses and not tried:  # the root's addresses expired: the hints
                addresses = self._hint_addresses()
            if addresses:
                outcome = await self._ask_servers(zone, addresses, qname, qtype, budget, minimised=minimised)
                tried.update(addresses)
                if outcome.step != Step.FAILED or outcome.minimised_error:
                    return outcome
                last = outcome
                if budget.queries <= 0:
                    return last
            # Resolve the next NS name that can be resolved at all (not inside the zone itself:
            # without glue that needs the very servers being looked for).
            unresolved = pending
            candidates = [ns for ns in pending if not is_subdomain(ns, zone)]
            others = [ns for ns in incomplete if not is_subdomain(ns, zone)]
            if not (candidates or others) or depth >= self.settings.max_ns_depth or budget.queries <= 0:
                return last
            if not budget.spend_lookup():
                return last
            if candidates:
                ns = candidates[0]
                unresolved.remove(ns)
                types = self._address_types()
            else:
                ns = others[0]
                incomplete.remove(ns)
                types = self._missing_types(ns, self.clock())
            completed.add(ns)
            if budget.trace is not None:
                _trace(budget, f"resolving the address of {name_to_text(ns)}"
                               + ("" if candidates else f" ({', '.join(type_text(t) for t in types)})"))
            for rtype in types:
                looked_up = await self.resolve(ns, rtype, budget=budget, depth=depth + 1, validate=False)
                if looked_up.rcode == RCode.NXDOMAIN:  # RFC 8020: no other type of it exists either
                    budget.nonexistent_servers += 1
                    break
                if looked_up.rcode == RCode.NOERROR:
                    looked_up_addresses.setdefault(ns, []).extend(
                        str(ip_address(rr.rdata)) for rr in looked_up.answer if rr.rtype == rtype)
            if not (self._addresses_of(ns, self.clock()) or looked_up_addresses.get(ns)):
                if budget.nonexistent_servers >= MAX_NONEXISTENT_SERVERS:
                    _trace(budget, f"{budget.nonexistent_servers} server names do not exist: "
                                   f"giving up the servers of {name_to_text(zone)}")
                    return last
                continue
            unresolved.insert(0, ns)

    def _address_types(self) -> list[int]:
        types: list[int] = []
        if self.settings.do_ipv4:
            types.append(RRType.A)
        if self.settings.do_ipv6:
            types.append(RRType.AAAA)
        return types

    def _missing_types(self, ns: bytes, now: float) -> list[int]:
        """The address types in use of which nothing (records, or their absence) is cached for ``ns``."""
        return [rtype for rtype in self._address_types()
                if self.cache.get(ns, rtype, now) is None and self.cache.get_negative(ns, rtype, now) is None]

    def _addresses_of(self, ns: bytes, now: float) -> list[str]:
        found: list[str] = []
        for rtype in self._address_types():
            entry = self.cache.get(ns, rtype, now)
            if entry is not None:
                found.extend(entry.addresses())
        return found

    async def _ask_servers(self, zone: bytes, addresses: list[str], qname: bytes, qtype: int,
                           budget: Budget, *, forwarded: bool = False, minimised: bool = False,
                           skip_down: bool = False) -> Outcome:
        """Ask the servers at ``addresses`` one at a time (best first, each at most twice, a
        forwarder ``FORWARDER_TRIES`` times) until one gives a usable reply. Servers that timed
        out again and again lately are only probed now and then: authoritative ones, and
        forwarders with ``skip_down`` (there is somewhere else to go, so each is asked once)."""
        attempts: dict[str, int] = {}
        tries = 1 if skip_down else FORWARDER_TRIES if forwarded else 2
        last = _NO_SERVER_ANSWERED
        minimised_error: Outcome | None = None  # the first error rcode to the minimised name
        askable, limiter = self.askable, self.zone_limiter
        candidates = [a for a in dict.fromkeys(addresses) if askable(a)]
        if budget.trace is not None or not candidates:
            refused = [a for a in dict.fromkeys(addresses) if askable.refused(a)]
            for address in refused:
                _trace(budget, f"not asking {address}: it is in do_not_query")
            if refused and not candidates:
                return _ALL_REFUSED
            if not candidates:
                return _NO_ADDRESS
        while True:
            now = self.clock()
            usable = [a for a in candidates
                      if attempts.get(a, 0) < tries and not self.infra.is_lame(zone, a, now, qtype)]
            if not usable:
                # RFC 9156 §2.3: servers and middleboxes that drop the query for an empty
                # non-terminal; the relaxed mode asks for the full name, as Unbound does.
                if minimised and attempts:
                    return minimised_error or _MINIMISED_UNANSWERED
                return last
            fresh = [a for a in usable if a not in attempts]
            if (forwarded and not skip_down) or any(self.infra.is_up(a, qtype, now) for a in usable):
                probe = None
            else:
                # Every server left has timed out again and again on this type of question: no
                # full round of timeouts for each new name (RFC 9520 §3.1), only a probe now and
                # then to see one come back. (Not for forwarders: a recursive server is slow on
                # some names as a matter of course.)
                probe = self.infra.probe(usable, qtype, now)
                if probe is None:
                    return (_MINIMISED_UNANSWERED if minimised else last) if attempts else _ALL_DOWN
            if limiter.enabled and not forwarded and not limiter.allow(zone, now, budget.past_limit):
                # A flood of new names under one zone: this client query ends here, rather than
                # looking for other ways round the limit (NS-name lookups, other zones).
                budget.queries = 0
                if budget.trace is not None:
                    _trace(budget, f"not asking the servers of {name_to_text(zone)}: over its rate limit")
                return _RATE_LIMITED
            if not budget.spend():
                return Outcome(Step.FAILED, reason="query budget exhausted")
            address = probe or self.infra.choose(fresh or usable, now)
            attempts[address] = attempts.get(address, 0) + 1
            outcome = await self._ask_server(zone, address, qname, qtype, budget, forwarded, minimised)
            if outcome is not None and outcome.minimised_error and any(a not in attempts for a in usable):
                # An error rcode to a minimised name may be this server's alone (a lame one's
                # REFUSED, a SERVFAIL): the others are asked before minimisation is given up, as
                # Unbound throws such a reply away. Taken at once, one lame server of a zone made
                # the strict mode SERVFAIL whatever the others would have answered.
                attempts[address] = tries
                minimised_error = minimised_error or outcome
                continue
            if outcome is not None:
                return outcome

    async def _ask_server(self, zone: bytes, address: str, qname: bytes, qtype: int, budget: Budget,
                          forwarded: bool, minimised: bool) -> Outcome | None:
        """One server's answer, classified; None when that server is no use for this question."""
        state = self.infra.state(address)
        use_edns = not self.infra.without_edns(address, self.clock(), qtype)
        dnssec = self.validator is not None
        send_name = _randomise_case(qname) if self.settings.use_0x20 else qname
        tcp = False
        for attempt in range(3):  # UDP, then TCP after TC or without EDNS after FORMERR
            if attempt and not budget.spend():  # a retry is an upstream query too
                return None
            query = encode_query(secrets.randbits(16), send_name, qtype, CLASS_IN, rd=forwarded,
                                 cd=forwarded and dnssec, do=dnssec and use_edns,
                                 udp_size=self.settings.edns_buffer_size if use_edns else None)
            started = self.clock()
            # The query but its ID and the case of its name (0x20), which a shared reply matched.
            key = (address, tcp, qname, query[2:12] + query[12 + len(send_name):])
            sending = key not in self._exchanges
            try:
                data, joined = await self._exchange(key, address, query, tcp, state, zone, budget)
            except asyncio.CancelledError:
                # The client's request timeout ended the wait: past the server's RTO, that is a
                # timeout all the same. Left uncounted, a dead server whose backed-off wait
                # outlasts the request timeout (request_timeout_seconds under
                # upstream_timeout_max_seconds) was never marked down: every new name of its
                # zone waited the whole request timeout for it, and got SERVFAIL.
                if sending and not tcp and self.clock() - started >= min(state.rto(self.settings),
                                                                         self.settings.max_timeout):
                    relaxed = minimised and self.settings.qname_minimisation == "relaxed"
                    self.infra.record_failure(address, self.clock(), None if relaxed else qtype)
                raise
            except UpstreamError as exc:
                if exc.kind == _JOINED:  # the query that was sent counted and recorded its failure
                    if budget.trace is not None:
                        _trace(budget, f"{address}: {exc}")
                    return None
                self.upstream_failures[exc.kind] = self.upstream_failures.get(exc.kind, 0) + 1
                if exc.kind != "socket":
                    # Out of sockets (EMFILE: a flood of slow new names holds one per query) is
                    # this host's failure: the server was not asked, so it is not marked down.
                    # A minimised name's, in the relaxed mode, counts for the server and not
                    # against the type: servers that drop the queries for empty non-terminals
                    # (RFC 9156 §2.3) answer the full name, asked next, which no type found down
                    # must stop; but a parent zone's server (a TLD's) is asked minimised names
                    # only, and a dead one must be passed over as any other.
                    relaxed = minimised and self.settings.qname_minimisation == "relaxed"
                    self.infra.record_failure(address, self.clock(), None if relaxed else qtype)
                if budget.trace is not None:
                    _trace(budget, f"{address}: {exc}")
                if exc.kind == "socket":
                    budget.queries = 0  # every other query of this client query would fail alike
                    return _OUT_OF_SOCKETS
                return None
            if not joined:  # a joined reply's wait was only part of the round trip
                self.infra.record_rtt(address, max(0.0, self.clock() - started), qtype)
            records = _record_count(data)
            if records > MAX_REPLY_RECORDS:
                # Not decoded (the cost is the attack), nor asked of the zone's other servers.
                if budget.trace is not None:
                    _trace(budget, f"{address}: a reply of {records} records")
                return Outcome(Step.FAILED, reason=f"a reply of {records} records (at most {MAX_REPLY_RECORDS})")
            try:
                message = decode_message(data)
            except WireError as exc:
                # That reply is no use, the server is: not lame for its zone, not down (a burst
                # of questions for one odd name would take the zone down for every name).
                if budget.trace is not None:
                    _trace(budget, f"{address}: malformed reply ({exc.reason})")
                return None
            if message.flags & FLAG_TC and not tcp:
                if budget.trace is not None:
                    _trace(budget, f"{address}: truncated, asking again over TCP")
                tcp = True
                continue
            # Before a minimised name's error: the server may reject EDNS, whatever the name (in
            # the strict mode, that error was the answer, and its zones failed). For a minimised
            # name it is remembered only once the query without EDNS is answered: a server that
            # mishandles empty non-terminals errs without EDNS too, and a mark on type A would
            # strip DO from every A query to it (its signed zones bogus for 15 minutes).
            edns_error = message.rcode in (RCode.FORMERR, RCode.NOTIMP, RCode.BADVERS)
            if edns_error and use_edns:
                if budget.trace is not None:
                    _trace(budget, f"{address}: {RCode(message.rcode).name} with EDNS, asking without")
                if not minimised:
                    self.infra.mark_no_edns(address, self.clock(), qtype)
                use_edns = False
                continue
            if minimised and not use_edns and not edns_error and not self.infra.without_edns(
                    address, self.clock(), qtype):
                self.infra.mark_no_edns(address, self.clock(), qtype)
            if minimised and message.rcode not in (RCode.NOERROR, RCode.NXDOMAIN):
                # RFC 9156 §2.3: some servers mishandle minimised names (empty non-terminals
                # above all). Nothing is concluded about the server; the caller decides (relaxed
                # mode asks for the full name instead).
                return Outcome(Step.FAILED, reason=f"rcode {_rcode_text(message.rcode)} to a minimised name",
                               minimised_error=True)
            removed = self.guard.removed
            outcome = self._classify(message, zone, qname, qtype, forwarded, self.clock())
            if budget.trace is not None:
                if self.guard.removed != removed:
                    _trace(budget, f"{address}: {self.guard.removed - removed} private address(es) dropped "
                                   "(private_addresses)")
                _trace(budget, f"{address}: {name_to_text(qname)} {type_text(qtype)} → {outcome.step.value}"
                               + (f" ({outcome.reason})" if outcome.reason else ""))
            if outcome.step == Step.FAILED:
                # SERVFAIL is often passing (a server reloading, its own upstream down): try the
                # next server without writing this one off; anything else means it does not
                # serve the zone. Not so for a forwarder: a recursive server's REFUSED is about
                # that one question (a name its own policy blocks, as dnsdist and DNS filters
                # do), and as a verdict on the whole forward zone (often ".") it failed every
                # name of that type for 15 minutes. Unbound does not mark forwarders lame either.
                if message.rcode != RCode.SERVFAIL and not forwarded:
                    self.infra.mark_lame(zone, address, self.clock(), qtype)
                return None
            if outcome.step != Step.REFERRAL:
                outcome.zone = b"" if forwarded else zone  # a forwarder's answers come from zones unnamed
            return outcome
        return None

    async def _exchange(self, key: tuple[str, bool, bytes, bytes], address: str, query: bytes, tcp: bool,
                        state: ServerState, zone: bytes, budget: Budget) -> tuple[bytes, bool]:
        """The reply to ``query`` and whether it was another resolution's (joined): the same
        query in flight to the same server is waited for rather than sent again. The sender
        runs the exchange in its own task (no task or shield of its own on a cache miss: the
        common case has nobody to share with); a resolution that joins it waits behind a
        shield, and sends the query itself if the sender gave up (its request timeout) before
        the reply came. A joiner's failure is an ``UpstreamError`` of kind ``_JOINED``."""
        while (shared := self._exchanges.get(key)) is not None:
            if budget.trace is not None:
                _trace(budget, f"{address}: the same query is in flight, waiting for its reply")
            try:
                return await asyncio.shield(shared), True
            except _Abandoned:
                continue  # the sender gave up: this one sends it (or joins whoever did first)
            except UpstreamError as exc:
                raise UpstreamError(_JOINED, str(exc)) from None
        # Over TCP (a large answer, after TC) the wait is not the UDP round trip's: the
        # handshake and a reply of up to 64 kB take longer (Unbound gives TCP 3 s).
        wait = self.settings.max_timeout if tcp else state.timeout(self.settings)
        shared = self._exchanges[key] = asyncio.get_running_loop().create_future()
        self.upstream_queries += 1
        try:
            data = await self.upstream.exchange(address, query, tcp=tcp, wait=wait,
                                                exact_case=self.settings.use_0x20, zone=zone)
        except asyncio.CancelledError:
            shared.set_exception(_Abandoned())
            raise
        except BaseException as exc:
            shared.set_exception(exc)
            raise
        else:
            shared.set_result(data)
        finally:
            del self._exchanges[key]
            if shared.done() and not shared.cancelled():
                shared.exception()  # retrieved: nobody may have joined
        return data, False

    # --- classifying one reply ----------------------------------------------------------

    def _classify(self, message: Message, zone: bytes, qname: bytes, qtype: int, forwarded: bool,
                  now: float) -> Outcome:
        rcode = message.rcode
        if rcode not in (RCode.NOERROR, RCode.NXDOMAIN):
            return Outcome(Step.FAILED, reason=f"rcode {_rcode_text(rcode)}")
        authoritative = bool(message.flags & FLAG_AA)
        # A forwarder answers for the whole tree; an authoritative server only for its zone.
        bailiwick = ROOT if forwarded else zone
        answer = [rr for rr in message.answer if rr.rclass == CLASS_IN and is_subdomain(rr.name, bailiwick)]
        if self.guard.enabled:
            answer = self.guard.scrub(answer)
        authority = [rr for rr in message.authority
                     if rr.rclass == CLASS_IN and is_subdomain(rr.name, bailiwick)]
        answer_trust = Trust.ANSWER if authoritative and not forwarded else Trust.FORWARDED
        sigs: dict[tuple[bytes, int], list[RR]] = {}
        proof: list[RR] = []
        if self.validator is not None:
            for rr in answer:
                if rr.rtype == RRType.RRSIG and len(rr.rdata) >= 2:
                    sigs.setdefault((rr.name, (rr.rdata[0] << 8) | rr.rdata[1]), []).append(rr)
            for rr in authority:
                if rr.rtype in _DENIAL_TYPES:
                    proof.append(rr)
                elif rr.rtype == RRType.RRSIG and len(rr.rdata) >= 2:
                    covered = (rr.rdata[0] << 8) | rr.rdata[1]
                    if covered in _DENIAL_TYPES or covered == RRType.SOA:
                        proof.append(rr)
                    else:
                        sigs.setdefault((rr.name, covered), []).append(rr)
        source_zone = b"" if forwarded else zone  # what the validator may take as the data's zone
        cache_rrsets = functools.partial(self._cache_rrsets, trust=answer_trust, now=now, skip_any=qtype == RRType.ANY,
                                         sigs=sigs, zone=source_zone)

        # Follow the chain inside the reply.
        records: list[RR] = []
        synthesised_at: set[bytes] = set()  # owners of CNAMEs a DNAME implies: never cached
        current = qname
        visited = {qname}
        final: list[RR] = []
        for _ in range(self.settings.max_cname_chain + 1):
            # RFC 6672 §3.4: below a DNAME a name is the DNAME's substitution, whatever type is
            # asked; the resolver synthesises the CNAME from the DNAME itself (the server's
            # synthesised CNAME, if sent, says the same).
            dname = next((rr for rr in answer if rr.rtype == RRType.DNAME and rr.name != current
                          and is_subdomain(current, rr.name)), None)
            if dname is not None:
                target = current[:len(current) - len(dname.name)] + rdata_name(dname.rdata)
                if len(target) > 255:
                    return Outcome(Step.FAILED, reason="DNAME substitution too long")
                synthesised = RR(current, RRType.CNAME, CLASS_IN, dname.ttl, target)
                synthesised_at.add(current)
                records.append(dname)
                if qtype == RRType.CNAME:  # that CNAME is the answer
                    final = [synthesised]
                    break
                records.append(synthesised)
                current = target
            else:
                if qtype == RRType.ANY:  # the RRSIGs among them ride with their sets (``sigs``)
                    final = [rr for rr in answer if rr.name == current and rr.rtype != RRType.RRSIG]
                else:
                    final = [rr for rr in answer if rr.name == current and rr.rtype == qtype]
                if final:
                    break
                cname = [rr for rr in answer if rr.name == current and rr.rtype == RRType.CNAME]
                if not cname:
                    break
                records.append(cname[0])
                current = rdata_name(cname[0].rdata)
            if current in visited:  # a loop: resolve() sees the name again and gives up
                cache_rrsets(_on_chain(answer, records, synthesised_at))
                return Outcome(Step.CNAME, _with_sigs(records, sigs), next_name=current)
            visited.add(current)
        else:  # longer than one reply may take: resolve() counts the hops and gives up
            cache_rrsets(_on_chain(answer, records, synthesised_at))
            return Outcome(Step.CNAME, _with_sigs(records, sigs), next_name=current)

        # Only the RRsets that answer the question (the chain and its end) are kept: anything
        # else in the answer section is unasked-for, if in bailiwick (Unbound's scrubber).
        # A wildcard expansion's NSEC proof stays with the answer it proves, or with the CNAME
        # (a wildcard's) that leaves the zone.
        leaves = bool(records) and not final and not is_subdomain(current, bailiwick)
        cache_rrsets(_on_chain(answer, records + final, synthesised_at),
                     proof=tuple(proof) if (final or leaves) and sigs else ())
        soa = [rr for rr in authority if rr.rtype == RRType.SOA and is_subdomain(current, rr.name)]
        if final:
            if qtype == RRType.NS and not forwarded:
                # The servers' addresses ride along in the additional section: priming (RFC 8109)
                # learns the root servers' current addresses this way.
                self._cache_glue(message, zone, {rdata_name(rr.rdata) for rr in final if rr.rtype == RRType.NS}, now)
            return Outcome(Step.ANSWER, _with_sigs(records + final, sigs), proof=proof if sigs else [])
        if leaves:
            return Outcome(Step.CNAME, _with_sigs(records, sigs), next_name=current, proof=proof if sigs else [])
        if rcode == RCode.NXDOMAIN:
            negative_soa = self._negative_soa(soa)
            # The parent's NXDOMAIN for a forward or stub zone's DS (the public tree has no such
            # name) says nothing of the zone the operator configured: kept for the DS alone.
            private_apex = qtype == RRType.DS and current != ROOT and current in self.forward_zones
            self.cache.put_negative(current, qtype, NegativeKind.NODATA if private_apex else NegativeKind.NXDOMAIN,
                                    _first(negative_soa), now, proof=tuple(proof), zone=source_zone)
            return Outcome(Step.NXDOMAIN, _with_sigs(records, sigs), soa=negative_soa, proof=proof)
        ns = [rr for rr in authority if rr.rtype == RRType.NS]
        if not records and ns and not soa and ns[0].name != zone:
            return self._referral(message, zone, qname, ns, now, authoritative, authority, sigs)
        # RFC 2308 §2.2: NS records and no SOA make a referral, not NODATA, AA or not. One to a
        # zone above (dropped from ``authority`` as out of bailiwick) is a lame server's, as
        # Unbound takes it: the next server is asked, no NODATA is cached from it.
        if not records and not soa and not forwarded and any(
                rr.rtype == RRType.NS and rr.name != zone and is_subdomain(zone, rr.name) for rr in message.authority):
            return Outcome(Step.FAILED, reason="upward referral (lame)")
        # A chain whose end has neither data nor an SOA saying it has none is unfinished, also
        # with AA: its end may be below a zone cut (the server adds the child's referral) or
        # left out. Go on from its end (RFC 1034 §4.3.2), do not take it for NODATA.
        if soa or (not records and (authoritative or forwarded)):
            negative_soa = self._negative_soa(soa)
            self.cache.put_negative(current, qtype, NegativeKind.NODATA, _first(negative_soa), now,
                                    proof=tuple(proof), zone=source_zone)
            return Outcome(Step.NODATA, _with_sigs(records, sigs), soa=negative_soa, proof=proof)
        if records:
            return Outcome(Step.CNAME, _with_sigs(records, sigs), next_name=current)
        return Outcome(Step.FAILED, reason="neither answer nor referral (lame)")

    def _referral(self, message: Message, zone: bytes, qname: bytes, ns: list[RR], now: float,
                  authoritative: bool, authority: list[RR], sigs: dict[tuple[bytes, int], list[RR]]) -> Outcome:
        child = ns[0].name
        if not is_subdomain(qname, child):
            # NS records for another branch of the zone: not a referral towards the name asked.
            return Outcome(Step.FAILED, reason=f"referral to {name_to_text(child)} (lame)")
        ns = [rr for rr in ns if rr.name == child]
        ns_names = tuple(dict.fromkeys(rdata_name(rr.rdata) for rr in ns))
        self.cache.put(child, RRType.NS, min(rr.ttl for rr in ns), tuple(rr.rdata for rr in ns),
                       Trust.AUTHORITY if authoritative else Trust.REFERRAL, now)
        ds = [rr for rr in authority if rr.rtype == RRType.DS and rr.name == child]
        if ds and (child, RRType.DS) in sigs:  # RFC 4035 §3.1.4: the parent's signed DS, saving a query
            self.cache.put(child, RRType.DS, min(rr.ttl for rr in ds), tuple(rr.rdata for rr in ds), Trust.AUTHORITY,
                           now, sigs=tuple(rr.rdata for rr in sigs[(child, RRType.DS)]), zone=zone)
        glue = self._cache_glue(message, zone, set(ns_names), now)
        return Outcome(Step.REFERRAL, zone=child, ns_names=ns_names, glue=glue)

    def _cache_glue(self, message: Message, zone: bytes, wanted: set[bytes], now: float) -> dict[bytes, list[str]]:
        """Glue: addresses of the NS names ``wanted``, from inside the zone asked; cached, and
        returned by name (the ones of the address families in use)."""
        glue: dict[tuple[bytes, int], list[RR]] = {}
        additional = self.guard.scrub(message.additional) if self.guard.enabled else message.additional
        for rr in additional:
            if (rr.rtype in (RRType.A, RRType.AAAA) and rr.rclass == CLASS_IN and rr.name in wanted
                    and is_subdomain(rr.name, zone)):
                glue.setdefault((rr.name, rr.rtype), []).append(rr)
        addresses: dict[bytes, list[str]] = {}
        families = self._address_types()
        for (name, rtype), rrs in glue.items():
            # The entry (made but not kept with TTL 0) still knows its addresses; None when
            # a more credible set is cached, which the cache then answers with.
            entry = self.cache.put(name, rtype, min(rr.ttl for rr in rrs), tuple(rr.rdata for rr in rrs),
                                   Trust.GLUE, now)
            if entry is not None and rtype in families:
                addresses.setdefault(name, []).extend(entry.addresses())
        return addresses

    def _negative_soa(self, soa: list[RR]) -> list[RR]:
        """RFC 2308 §3: the SOA of a negative answer lives min(its TTL, its MINIMUM)."""
        if not soa:
            return []
        record = soa[0]
        return [RR(record.name, record.rtype, record.rclass, min(record.ttl, soa_minimum(record.rdata)), record.rdata)]

    def _cache_rrsets(self, records: list[RR], *, trust: Trust, now: float, skip_any: bool,
                      sigs: dict[tuple[bytes, int], list[RR]], zone: bytes, proof: tuple[RR, ...] = ()) -> None:
        if skip_any:
            return
        rrsets: dict[tuple[bytes, int], list[RR]] = {}
        for rr in records:
            if rr.rtype in (RRType.OPT, RRType.SIG, RRType.TSIG, RRType.RRSIG):
                continue
            rrsets.setdefault((rr.name, rr.rtype), []).append(rr)
        for key, rrs in rrsets.items():
            rdatas = tuple(dict.fromkeys(rr.rdata for rr in rrs))
            signatures = tuple(rr.rdata for rr in sigs.get(key, ()))
            self.cache.put(key[0], key[1], min(rr.ttl for rr in rrs), rdatas, trust, now, sigs=signatures,
                           proof=proof if signatures else (), zone=zone)


def _with_sigs(records: list[RR], sigs: dict[tuple[bytes, int], list[RR]]) -> list[RR]:
    """``records`` followed by the RRSIGs over their RRsets."""
    if not sigs:
        return records
    keys = dict.fromkeys((rr.name, rr.rtype) for rr in records)
    return records + [sig for key in keys for sig in sigs.get(key, ())]


def _on_chain(answer: list[RR], chain: list[RR], synthesised_at: set[bytes]) -> list[RR]:
    """The records of ``answer`` in the RRsets (owner, type) of ``chain``, less the CNAMEs at
    ``synthesised_at``: those a DNAME implies are made again from the cached DNAME, which then
    goes out with them (RFC 6672 §3.1: a validating client needs it)."""
    keys = {(rr.name, rr.rtype) for rr in chain if not (rr.rtype == RRType.CNAME and rr.name in synthesised_at)}
    return [rr for rr in answer if (rr.name, rr.rtype) in keys]


def _record_count(data: bytes) -> int:
    """The records a reply says it holds (ANCOUNT + NSCOUNT + ARCOUNT); 0 when it has no header."""
    if len(data) < 12:
        return 0
    return ((data[6] << 8) | data[7]) + ((data[8] << 8) | data[9]) + ((data[10] << 8) | data[11])


def _first(records: list[RR]) -> RR | None:
    return records[0] if records else None


def _trace(budget: Budget, line: str) -> None:
    if budget.trace is not None:
        budget.trace(line)


def _randomise_case(name: bytes) -> bytes:
    """0x20 (draft-vixie-dnsext-dns0x20): random case in the letters of the name sent."""
    bits = secrets.randbits(len(name))
    out = bytearray(name)
    for i, byte in enumerate(out):
        if 97 <= byte <= 122 and bits >> i & 1:
            out[i] = byte - 32
    return bytes(out)


def _rcode_text(rcode: int) -> str:
    try:
        return RCode(rcode).name
    except ValueError:
        return str(rcode)
