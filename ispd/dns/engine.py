"""Answering clients: access control, the cache-hit fast path, local data, policy, the resolver.

Theory of operation. A client's query takes one of two paths.

Fast path (``answer_from_cache``, synchronous, no decode): the client's class is looked up by its
address (allowed, refused, walled — computed once per address and remembered), the question is
read by ``wire.quick_question`` and the answer cache is asked for a fresh entry; the reply is
the query's ID and question spliced onto the cached body with the TTLs of its age. Anything else
— a miss, an expired entry, an unusual query, a refused or walled client — returns ``None`` and
the transport awaits the slow path.

Slow path (``answer``): a full decode; FORMERR for what does not parse (when there is a header to
answer), NOTIMP for opcodes other than QUERY, BADVERS for EDNS versions above 0 (RFC 6891
§6.1.3), REFUSED for clients outside ``allow``, for classes other than IN and for zone transfers.
Then, in order:
1. walled-garden clients (suspended subscribers, by address) get the portal's address for every
   name not on the allow list;
2. local data (lease names, static records, local zones) answers authoritatively;
3. response policy (RPZ) on the query name: NXDOMAIN, NODATA, local data, DROP, TCP-only, or
   PASSTHRU;
4. the locally served zones (``ispd.dns.defaultzones``: localhost., onion., the private reverse
   zones...), authoritatively, as local data;
5. the answer cache again (another client may have filled it), then the resolver. Concurrent
   queries for one question share one resolution. The result is stored in wire form for the fast
   path. A resolution that fails falls back to an expired answer (RFC 8767) for up to
   ``stale_seconds`` past expiry, then keeps serving it for 30 s before trying again (§4's
   failure recheck timer); a client that has waited ``stale_client_timeout_seconds`` for an
   expired name gets the stale answer while the refresh goes on. Failures are cached for 5 s
   (RFC 9520).
An entry asked for in the last tenth of its TTL is refreshed in the background (prefetch).

Replies carry an OPT record (buffer 1232) when the query did, echo its DO bit, and are truncated
with TC when larger than the client's UDP size (512 without EDNS).

DNSSEC, when the resolver validates: a secure answer has AD when the query set DO or AD (RFC 6840
§5.7), never an insecure one; a bogus one is SERVFAIL with an Extended DNS Error (RFC 8914) and is
not kept in the answer cache (the RRset cache remembers the verdict), unless the query set CD,
which gets the data as it came (RFC 4035 §3.2.2). RRSIG, NSEC and NSEC3 records go only to
queries with DO (RFC 4035 §3.2.1). The answer cache keeps one reply per combination of those
bits (``cache.answer_variant``); a plain query's key is the question alone, as without DNSSEC.

Views: policy zones limited to some plans or networks (``ispd.dns.scopes``) apply only to the
clients in their scopes. A client's view (its scopes' bits, found with its class and remembered
alike) goes into the key of every answer it gets, cached or from local data and policy, so that
a client of one view is never handed an answer made under another's policy; clients of no scope
keep the plain keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from ispd.dns.cache import (
    VARIANT_AD,
    VARIANT_CD,
    VARIANT_DNS64,
    VARIANT_DO,
    VARIANT_VIEW,
    AnswerCache,
    CachedAnswer,
    Security,
    answer_variant,
)
from ispd.dns.dns64 import DNS64
from ispd.dns.dnssec import EDE
from ispd.dns.policy import PolicyAction, PolicyHit
from ispd.dns.resolver import OUT_OF_SOCKETS, Resolution, Resolver
from ispd.dns.wire import (
    CLASS_IN,
    EDNS,
    EDNS_DO,
    FLAG_AA,
    FLAG_AD,
    FLAG_CD,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    REFUSED_QTYPES,
    RR,
    SERVER_UDP_SIZE,
    Message,
    Opcode,
    Question,
    RCode,
    RRType,
    WireError,
    decode_message,
    ede_option,
    encode_message,
    error_reply,
    key_of,
    name_to_text,
    opt_record,
    quick_question,
    rdata_name,
    soa_minimum,
    type_text,
)
from ispd.dns.zone import AnswerKind, ZoneAnswer
from ispd.dns.zonelimit import Screen
from ispd.listeners import client_key
from ispd.logs import get_logger

log = get_logger("ispd.dns")
_U16 = struct.Struct("!H")
_RD_BYTE = FLAG_RD >> 8  # the RD bit in the third byte of a message
EDE_NOT_AUTHORITATIVE = 20  # RFC 8914 §4.21
FAILURE_CACHE_SECONDS = 5  # RFC 9520 §3.2: at least 1 s, at most 5 min
DNS64_NEGATIVE_TTL = 600  # a made AAAA's TTL at most (no SOA in the AAAA answer); a mapped PTR's CNAME's
_COVERS_A, _COVERS_AAAA = RRType.A.to_bytes(2, "big"), RRType.AAAA.to_bytes(2, "big")  # an RRSIG's first bytes
STALE_RECHECK_SECONDS = 30  # RFC 8767 §4: the failure recheck timer
TCP_MAX_SIZE = 65535
_TC_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_TC_COUNTS_OPT = b"\x00\x01\x00\x00\x00\x00\x00\x01"
_RD_CD = FLAG_RD | FLAG_CD
_DNSSEC_TYPES = frozenset({RRType.RRSIG, RRType.NSEC, RRType.NSEC3})
_VARIANT_SUFFIX = tuple(bytes((v,)) for v in range((VARIANT_DO | VARIANT_DNS64 | VARIANT_CD | VARIANT_AD | VARIANT_VIEW)
                                                    + 1))
# Local data and policy answers kept for the fast path: at most this many (emptied beyond), and a
# negative one without an SOA lives this long (local data changes empty them anyway).
MAX_LOCAL_ANSWERS = 20_000  # hot local names are few; an entry is about 800 bytes
_NEVER = float("inf")
LOCAL_NEGATIVE_SECONDS = 60


class ClientClass(IntEnum):
    ALLOWED = 0
    REFUSED = 1
    WALLED = 2
    ALLOWED_DNS64 = 3  # allowed, and in [dns.dns64] clients: AAAA and PTR answers of their own
    WALLED_DNS64 = 4  # walled, and in [dns.dns64] clients (what the garden lets resolve gets DNS64)


_DNS64_TYPES = (RRType.AAAA, RRType.PTR)
_ANSWERING = (ClientClass.ALLOWED, ClientClass.ALLOWED_DNS64)  # answered from the caches
_WALLED = (ClientClass.WALLED, ClientClass.WALLED_DNS64)
_GETTING_DNS64 = (ClientClass.ALLOWED_DNS64, ClientClass.WALLED_DNS64)
_ALLOWED, _ALLOWED_DNS64 = ClientClass.ALLOWED, ClientClass.ALLOWED_DNS64  # (globals: read on every hit)


@dataclass(slots=True)
class EngineStats:
    """Hot-path counters, read by the metrics collector at scrape time."""

    cache_hits: int = 0
    cache_misses: int = 0
    stale_answers: int = 0
    prefetches: int = 0
    malformed: int = 0
    refused_clients: int = 0
    rate_limited: int = 0
    walled_answers: int = 0
    local_answers: int = 0
    dropped_by_policy: int = 0
    not_recursive: int = 0  # RD=0 questions past local data: refused
    resolution_failures: int = 0  # resolutions that ended in SERVFAIL (failed, timed out, bugs)
    dns64_answers: int = 0  # AAAA answers made from A records (DNS64)


SERVFAIL_LOG_PER_SECOND = 10


class ServfailLog:
    """``log_servfail`` (Unbound's log-servfail): a line for each resolution that fails, with
    why; at most SERVFAIL_LOG_PER_SECOND a second, so that a flood of failing names cannot flood
    the log, and the next line says how many were left out. Concurrent clients of one name share
    one resolution, hence one line."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.enabled = False
        self.clock = clock
        self.left_out = 0
        self._second = -1
        self._lines = 0

    def failed(self, name: bytes, qtype: int, reason: str, *, answered_stale: bool) -> None:
        second = int(self.clock())
        if second != self._second:
            self._second, self._lines = second, 0
        if self._lines >= SERVFAIL_LOG_PER_SECOND:
            self.left_out += 1
            return
        self._lines += 1
        log.warning("dns.servfail", name=name_to_text(name), qtype=type_text(qtype), reason=reason,
                    answered_stale=answered_stale, left_out_before=self.left_out)
        self.left_out = 0


def _briefly(records: list[RR]) -> list[RR]:
    """``records`` with TTLs of FAILURE_CACHE_SECONDS at most: an answer not to keep long."""
    return [rr if rr.ttl <= FAILURE_CACHE_SECONDS else replace(rr, ttl=FAILURE_CACHE_SECONDS) for rr in records]


class RateLimiter:
    """A token bucket per client address (an IPv6 one by its /64, ``client_key``): ``rate`` per
    second with a burst of twice that."""

    MAX_CLIENTS = 100_000

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = 2 * rate
        self.buckets: dict[str, list[float]] = {}

    def allow(self, client: str, now: float) -> bool:
        client = client_key(client)
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= self.MAX_CLIENTS:
                self._forget_oldest()
            self.buckets[client] = [self.burst - 1, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            # To the back of the table, where making room reaches last (``_forget_oldest``).
            del self.buckets[client]
            self.buckets[client] = bucket
            return False
        bucket[0] = tokens - 1
        return True

    def _forget_oldest(self) -> None:
        """Make room without letting a limited client start afresh, as clearing the table would
        (a flood from many sources would do that on purpose): the front half of the table goes,
        the clients first heard from longest ago and not limited since (``allow`` moves a limited
        one to the back). A client that goes gets a full bucket when it comes back: one burst
        at most, per 50,000 new clients."""
        for client in list(itertools.islice(self.buckets, len(self.buckets) - self.MAX_CLIENTS // 2)):
            del self.buckets[client]


LocalLookup = Callable[[bytes, int], ZoneAnswer | None]
PolicyLookup = Callable[[bytes, int], PolicyHit | None]  # (name, the client's view)


class DNSEngine:
    def __init__(self, resolver: Resolver, answers: AnswerCache, clock: Callable[[], float], *,
                 allow: list[IPv4Network | IPv6Network], rate_limit_qps: int = 0,
                 request_timeout: float = 8.0, stale_answer_ttl: int = 30,
                 stale_client_timeout: float = 1.8) -> None:
        self.resolver = resolver
        self.zone_limiter = resolver.zone_limiter  # (the resolver's own: a reload configures it in place)
        self.dns64: DNS64 | None = None  # AAAA answers made from A records (the service sets it)
        # The clients DNS64 is for; None: every client. Theirs are answers of their own (a key
        # variant), so that the others keep the real "no AAAA".
        self.dns64_clients: list[IPv4Network | IPv6Network] | None = None
        self._dns64_changes = 0  # how many times set_dns64 was called (a reload's every time)
        self.answers = answers
        self.clock = clock
        self.allow = list(allow)
        # Per-client rate limits, UDP's and the connections' (TCP, DoT, DoH, DoQ) apart: UDP
        # queries forged from a client's address must not get its connections' queries refused.
        self.rate_limiter: RateLimiter | None = None
        self.stream_rate_limiter: RateLimiter | None = None
        self.set_limits(rate_limit_qps=rate_limit_qps, request_timeout=request_timeout,
                        stale_answer_ttl=stale_answer_ttl, stale_client_timeout=stale_client_timeout)
        self.stats = EngineStats()
        self.qtypes: dict[int, int] = {}
        self.policy_hits = dict.fromkeys(PolicyAction, 0)
        self.rcodes = [0] * 24
        # Set by the service: local data, policy and walled garden lookups, and who is walled.
        self.local_lookup: LocalLookup = lambda name, qtype: None
        # Replies from local data and policy by question (the plain key), for the fast path, with
        # the policy action that made each (None: local data); the service empties it whenever
        # local data or policy change (``forget_local_answers``).
        self.local_answers: dict[bytes, tuple[CachedAnswer, PolicyAction | None]] = {}
        self._local_asked: set[bytes] = set()  # asked once, not kept yet
        self.policy_lookup: PolicyLookup = lambda name, view: None
        self._policy_changes = 0  # policy or its scopes replaced (a reload): an answer made across it is not kept
        self.walled_lookup: LocalLookup = lambda name, qtype: None
        # The locally served zones (``ispd.dns.defaultzones``): after local data and the policy.
        self.default_lookup: LocalLookup = lambda name, qtype: None
        self.walled_addresses: frozenset[str] = frozenset()
        # Whether an address lies in a suspended subscriber's IPv6 prefix (the longest prefix
        # that holds it decides: another's longer one inside it is not walled); None: none is.
        self.in_walled_network: Callable[[IPv4Address | IPv6Address], bool] | None = None
        # A client's view of the policy (``ispd.dns.scopes``), by address: set by the service.
        self.client_view: Callable[[IPv4Address | IPv6Address], int] = lambda address: 0
        self._classes: dict[str, ClientClass] = {}
        self._views: dict[str, int] = {}  # clients whose view is not 0 (found with their class)
        self._inflight: dict[bytes, asyncio.Future[CachedAnswer]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._opt = opt_record(SERVER_UDP_SIZE)
        self._opt_do = opt_record(SERVER_UDP_SIZE, EDNS_DO)
        self.validating = resolver.validator is not None
        self.servfail_log = ServfailLog(clock)

    # --- who is asking ---------------------------------------------------------------------

    def client_class(self, client: str) -> ClientClass:
        known = self._classes.get(client)
        if known is not None:
            return known
        try:
            address = ip_address(client.split("%", 1)[0])
        except ValueError:
            return ClientClass.REFUSED
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        view = 0
        if not any(address in network for network in self.allow):
            found = ClientClass.REFUSED
        else:
            dns64 = self.dns64_clients is not None and self.dns64 is not None and any(
                address in network for network in self.dns64_clients)
            if str(address) in self.walled_addresses or (
                    self.in_walled_network is not None and self.in_walled_network(address)):
                found = ClientClass.WALLED_DNS64 if dns64 else ClientClass.WALLED
            else:
                found = ClientClass.ALLOWED_DNS64 if dns64 else ClientClass.ALLOWED
            view = self.client_view(address)
        if len(self._classes) > 200_000:
            self.forget_clients()
        self._classes[client] = found
        if view:
            self._views[client] = view
        return found

    def view_of(self, client: str) -> int:
        """The client's view (after its ``client_class``)."""
        return self._views.get(client, 0) if self._views else 0

    def forget_clients(self) -> None:
        """What decides a client's class or view changed: each is found again when it next asks."""
        self._classes.clear()
        self._views.clear()

    def forget_client(self, address: str) -> None:
        """The view of the client at ``address`` (as an IPv4 address is written, or an IPv6 one
        compressed) may have changed (another holder, or its plan): found again when it next
        asks, by that address and as a dual-stack socket gives an IPv4 one. The other clients
        keep the fast path."""
        for client in (address, "::ffff:" + address):
            self._classes.pop(client, None)
            self._views.pop(client, None)

    def set_walled(self, addresses: frozenset[str],
                   in_walled_network: Callable[[IPv4Address | IPv6Address], bool] | None = None) -> None:
        self.walled_addresses, self.in_walled_network = addresses, in_walled_network
        self.forget_clients()

    def set_policy(self, lookup: PolicyLookup) -> None:
        """Another policy, or other scopes for it: what was answered from the old one goes, the
        answer cache's too, at once (its CNAME chains were policed by the old policy, and a view's
        bits may stand for another scope now), not when a reload is done with the store."""
        self.policy_lookup = lookup
        self._policy_changes += 1
        self.answers.clear()
        self.forget_local_answers()
        self.forget_clients()

    def set_limits(self, *, rate_limit_qps: int, request_timeout: float, stale_answer_ttl: int,
                   stale_client_timeout: float) -> None:
        """At start and at a reload; a changed rate starts every client's bucket afresh."""
        self.request_timeout = request_timeout
        self.stale_answer_ttl = stale_answer_ttl
        self.stale_client_timeout = stale_client_timeout
        if self.rate_limiter is None or self.rate_limiter.rate != rate_limit_qps:
            self.rate_limiter = RateLimiter(rate_limit_qps) if rate_limit_qps else None
            self.stream_rate_limiter = RateLimiter(rate_limit_qps) if rate_limit_qps else None

    def set_allow(self, allow: list[IPv4Network | IPv6Network]) -> None:
        self.allow = list(allow)
        self.forget_clients()

    def set_dns64(self, dns64: DNS64 | None, clients: list[IPv4Network | IPv6Network] | None) -> None:
        """DNS64 for every client (``clients`` None) or for those networks only."""
        self.dns64, self.dns64_clients = dns64, clients
        self._dns64_changes += 1
        self.forget_clients()

    def _dns64_maps(self, name: bytes, client_class: ClientClass) -> bool:
        """Whether ``name`` (a PTR question's) is one DNS64 maps to its IPv4 address's for this
        client (RFC 6147 §5.3.1): a network-specific prefix may lie in a locally served zone."""
        dns64 = self.dns64
        return dns64 is not None and (self.dns64_clients is None or client_class in _GETTING_DNS64) \
            and dns64.reverse_target(name) is not None

    def _dns64_for(self, key: bytes) -> DNS64 | None:
        """The DNS64 the answer under ``key`` gets, if any (no key: as for any client)."""
        if self.dns64_clients is None or (key and answer_variant(key) & VARIANT_DNS64):
            return self.dns64
        return None

    # --- the fast path -----------------------------------------------------------------------

    def answer_from_cache(self, data: bytes, client: str, tcp: bool) -> bytes | None:
        client_class = self._classes.get(client)
        if client_class is not _ALLOWED and client_class is not _ALLOWED_DNS64:
            return None
        question = quick_question(data)
        if question is None:
            return None
        key, qend, size, edns_flags = question
        qtype = (key[-4] << 8) | key[-3]
        variant = (data[3] & 0x30) | (edns_flags >> 15) if self.validating else 0
        if client_class is _ALLOWED_DNS64 and qtype in _DNS64_TYPES:
            variant |= VARIANT_DNS64
        view = 0
        if self._views:
            view = self._views.get(client, 0)
            variant |= view
        entry = self.answers.variants.get(key + _VARIANT_SUFFIX[variant]) if variant else \
            self.answers.entries.get(key)
        action: PolicyAction | None = None
        if entry is None:
            local = self.local_answers.get(key + _VARIANT_SUFFIX[view] if view else key)
            if local is None:
                return None
            entry, action = local
            variant = 0  # no prefetch, and one reply whatever the DNSSEC bits
        elif not data[2] & _RD_BYTE:
            return None  # no recursion asked: the slow path refuses it
        now = self.clock()
        if entry.expires_at <= now:
            return None
        limiter = self.stream_rate_limiter if tcp else self.rate_limiter
        if limiter is not None and not limiter.allow(client, now):
            return None  # the slow path counts and drops it
        entry.hits += 1
        if entry.prefetch_at == _NEVER:
            if action is None:
                self.stats.local_answers += 1
            else:
                self.policy_hits[action] += 1
        else:
            self.stats.cache_hits += 1
            if entry.counted_policy is not None:
                self.policy_hits[entry.counted_policy] += 1
        self.qtypes[qtype] = self.qtypes.get(qtype, 0) + 1
        self.rcodes[entry.rcode_flags & 0xF] += 1
        if now >= entry.prefetch_at and not entry.refreshing:
            self._prefetch(key + _VARIANT_SUFFIX[variant] if variant else key, entry)
        flags = entry.rcode_flags | (((data[2] << 8) | data[3]) & _RD_CD)
        if size:
            opt = self._opt_do if edns_flags & EDNS_DO else self._opt
            reply = b"".join((data[:2], _U16.pack(flags), entry.counts_with_opt, data[12:qend], entry.render(now), opt))
        else:
            reply = b"".join((data[:2], _U16.pack(flags), entry.counts, data[12:qend], entry.render(now)))
        # Over TCP too: an entry is kept when it fits 64 KB without the OPT this reply may add.
        if len(reply) > (TCP_MAX_SIZE if tcp else min(size, SERVER_UDP_SIZE) if size else 512):
            return b"".join((data[:2], _U16.pack(flags | FLAG_TC), _TC_COUNTS_OPT if size else _TC_COUNTS,
                             data[12:qend], (self._opt_do if edns_flags & EDNS_DO else self._opt) if size else b""))
        return reply

    # --- the slow path -----------------------------------------------------------------------

    async def answer(self, data: bytes, client: str, *, tcp: bool) -> bytes | None:
        """The reply to ``data`` from ``client``, or None to send nothing."""
        client_class = self.client_class(client)
        if client_class == ClientClass.REFUSED:  # before any parsing: strangers get nothing else
            self.stats.refused_clients += 1
            return self._count(error_reply(data, RCode.REFUSED, edns=True))
        limiter = self.stream_rate_limiter if tcp else self.rate_limiter
        if limiter is not None and not limiter.allow(client, self.clock()):
            self.stats.rate_limited += 1
            # Over UDP a forged source may be the victim: silence. A connection's source is real,
            # and its client waits for each reply: it is told.
            return self._count(error_reply(data, RCode.REFUSED, edns=True)) if tcp else None
        try:
            query = decode_message(data)
        except WireError:
            self.stats.malformed += 1
            return self._count(error_reply(data, RCode.FORMERR))
        if query.flags & FLAG_QR:
            self.stats.malformed += 1
            return None  # never answer a response
        question = query.question
        if question is not None:  # every query that parsed, however it is answered (Unbound's num.query.type)
            self.qtypes[question.qtype] = self.qtypes.get(question.qtype, 0) + 1
        if query.opcode != Opcode.QUERY:
            return self._error(query, RCode.NOTIMP)
        if question is None:
            return self._error(query, RCode.FORMERR)
        if query.edns is not None and query.edns.version != 0:
            return self._error(query, RCode.BADVERS)
        if question.qclass != CLASS_IN or question.qtype in REFUSED_QTYPES:
            return self._error(query, RCode.REFUSED)
        qtype = question.qtype
        name = question.key_name
        view = self.view_of(client)

        if client_class in _WALLED:
            walled = self.walled_lookup(name, qtype)
            if walled is not None:
                self.stats.walled_answers += 1
                walled = self._walled_dns64(walled, name, qtype, client_class)
                return await self._reply_local(query, walled, tcp, client_class, view)
        local = self._local(name, qtype, recursive=bool(query.flags & FLAG_RD))
        if local is not None:
            self.stats.local_answers += 1
            entry = self._local_entry(question, local, None, view) if client_class in _ANSWERING else None
            if entry is not None:
                return self._reply_cached(query, entry, tcp)
            return await self._reply_local(query, local, tcp, client_class, view)
        hit = self.policy_lookup(name, view)
        if hit is not None:
            self.policy_hits[hit.action] += 1
        if hit is not None and hit.action != PolicyAction.PASSTHRU:
            if hit.action == PolicyAction.DROP:
                self.stats.dropped_by_policy += 1
                return None
            if hit.action != PolicyAction.TCP_ONLY:
                answer = policy_answer(hit, qtype)
                entry = self._local_entry(question, answer, hit.action, view) if client_class in _ANSWERING else None
                if entry is not None:
                    return self._reply_cached(query, entry, tcp)
                return await self._reply_local(query, answer, tcp, client_class, view)
            if not tcp:
                return self._count(self._truncated(query))
            if not query.flags & FLAG_RD:
                return self._not_recursive(query)
            # Answered over TCP, but never through the answer cache: its fast path would hand
            # the answer to the next UDP client without asking the policy.
            key = self._key(query, question, client_class, view)
            resolution = await self._resolve_uncached(question, key)
            return self._reply_cached(query, self._build(key, question, resolution, self.clock(), store=False), tcp)
        served = self.default_lookup(name, qtype)
        if served is not None and qtype == RRType.PTR and self._dns64_maps(name, client_class):
            served = None  # DNS64's reverse mapping of a prefix in fd00::/8 or 2001:db8::/32 goes first
        if served is not None:  # a locally served zone: a local answer, counted as one
            self.stats.local_answers += 1
            entry = self._local_entry(question, served, None, view) if client_class in _ANSWERING else None
            if entry is not None:
                return self._reply_cached(query, entry, tcp)
            return await self._reply_local(query, served, tcp, client_class, view)

        if not query.flags & FLAG_RD:
            return self._not_recursive(query)
        key = self._key(query, question, client_class, view)
        now = self.clock()
        entry = self.answers.table(key).get(key)
        if entry is not None and entry.expires_at > now:
            self.stats.cache_hits += 1
            if entry.counted_policy is not None and entry.counted_policy != PolicyAction.PASSTHRU:
                self.policy_hits[entry.counted_policy] += 1  # (a PASSTHRU: counted by the lookup above)
        else:
            self.stats.cache_misses += 1
            past_limit = False
            if entry is None and self.zone_limiter.enabled:  # (with nothing stale to stand in)
                resolver = self.resolver
                screen = self.zone_limiter.screen(name, now, lambda zone: resolver.spares(name, qtype, zone))
                if screen == Screen.STOP:  # a flood under one zone: answered before costing a miss
                    self.stats.resolution_failures += 1
                    return self._count(error_reply(data, RCode.SERVFAIL, edns=True))
                past_limit = screen == Screen.PAST
            entry = await self._resolve_for_client(key, question, entry, past_limit)
            if entry is None:  # waited on another client's resolution past the request timeout
                self.stats.resolution_failures += 1
                return self._error(query, RCode.SERVFAIL)
        return self._reply_cached(query, entry, tcp)

    def _key(self, query: Message, question: Question, client_class: ClientClass = ClientClass.ALLOWED,
             view: int = 0) -> bytes:
        """The answer cache's key: the question, the query's DNSSEC bits when validating,
        whether the client is one of [dns.dns64] clients (for AAAA and PTR), and its view."""
        key = key_of(question)
        variant = view | (VARIANT_DNS64 if client_class in _GETTING_DNS64 and question.qtype in _DNS64_TYPES else 0)
        if self.validating:
            variant |= (query.flags & (FLAG_AD | FLAG_CD)) | (VARIANT_DO if query.edns is not None and query.edns.do
                                                             else 0)
        return key + _VARIANT_SUFFIX[variant] if variant else key

    async def _resolve_for_client(self, key: bytes, question: Question, cached: CachedAnswer | None,
                                  past_limit: bool = False) -> CachedAnswer | None:
        now = self.clock()
        stale = self.answers.get_stale(key, now) if cached is not None else None
        if stale is not None and stale.stale_until > now:
            self.stats.stale_answers += 1
            return self._as_stale(stale)
        future = self._inflight.get(key)
        if future is None and stale is None:
            # The common miss: nobody is resolving this yet and nothing stale could stand in, so
            # the resolution runs in this client's task (no task or shield of its own); clients
            # asking meanwhile wait on the future.
            future = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            await self._resolve_into(key, question, future, past_limit=past_limit)
            return future.result() if future.done() and not future.cancelled() else None
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            self._spawn(self._resolve_into(key, question, future))
        wait = self.stale_client_timeout if stale is not None else self.request_timeout
        try:
            async with asyncio.timeout(wait):
                entry = await asyncio.shield(future)
        except TimeoutError:
            entry = None
        if entry is not None and (entry.rcode_flags & 0xF) != RCode.SERVFAIL:
            return entry
        if stale is not None:
            self.stats.stale_answers += 1
            return self._as_stale(stale)
        return entry

    def _as_stale(self, stale: CachedAnswer) -> CachedAnswer:
        """A copy of an expired entry with every TTL set to the stale answer TTL (RFC 8767 §4)."""
        body = stale.render_stale(self.stale_answer_ttl)
        copy = CachedAnswer(stale.rcode_flags, stale.counts, stale.counts_with_opt, body, (), (), 0.0,
                            float("inf"), float("inf"), 0)
        copy.body, copy.rendered_age = body, 0
        return copy

    async def _resolve_into(self, key: bytes, question: Question, future: asyncio.Future[CachedAnswer], *,
                            refresh: bool = False, past_limit: bool = False) -> None:
        """Resolve one question, store the result, and hand it to every client waiting for it."""
        dns64_changes, policy_changes = self._dns64_changes, self._policy_changes
        try:
            try:
                async with asyncio.timeout(self.request_timeout):
                    resolution = await self._resolve(question, key, refresh=refresh, past_limit=past_limit)
            except TimeoutError:
                resolution = Resolution(RCode.SERVFAIL, [], failure="timed out")
            # While in flight: the clients asking meanwhile wait for it rather than each asking
            # the A question again (and a bug in it costs one answer, as in the resolution).
            dns64 = self._dns64_for(key)
            if dns64 is not None and question.qtype == RRType.AAAA:
                resolution = await self._synthesised(resolution, question.key_name, key, dns64, past_limit, refresh)
        except asyncio.CancelledError:
            future.cancel()  # shutting down: whoever waits stops waiting
            raise
        except Exception:  # a bug must cost one answer, not the service
            resolution = Resolution(RCode.SERVFAIL, [], failure="internal error")
            log.exception("dns.resolve.failed", name=name_to_text(question.key_name), qtype=question.qtype)
        finally:
            self._inflight.pop(key, None)
        from_stale = False
        if resolution.rcode == RCode.SERVFAIL:
            resolution = await self._instead_of_failure(key, question, resolution)
            from_stale = resolution.rcode != RCode.SERVFAIL
        resolution = await self._police_chain(resolution, question.qtype, key=key)
        now = self.clock()
        old = self.answers.get_stale(key, now) if resolution.rcode == RCode.SERVFAIL else None
        if resolution.rcode == RCode.SERVFAIL and self.servfail_log.enabled:
            self.servfail_log.failed(question.key_name, question.qtype, resolution.failure or "resolution failed",
                                     answered_stale=old is not None)
        if old is not None:
            # A failure never replaces an answer that can still be served, fresh or stale; an
            # expired one is served stale without asking upstream again for 30 s.
            if old.expires_at <= now:
                old.refreshing = True
                old.stale_until = now + STALE_RECHECK_SECONDS
            entry = self._build(key, question, resolution, now, store=False)
        else:
            # An AAAA or PTR answer made under the DNS64 settings a reload has changed meanwhile
            # is handed to those waiting, never kept: which clients the key stands for may have
            # changed (the reload emptied the cache before this answer came). Nor is one made
            # across a change of policy: its question passed the old policy's check.
            store = ((dns64_changes == self._dns64_changes or question.qtype not in _DNS64_TYPES)
                     and policy_changes == self._policy_changes)
            entry = self._build(key, question, resolution, now, store=store)
            entry.from_stale = from_stale
            # The fast path counts its hits as the slow path does, without asking the policy.
            hit = self.policy_lookup(question.key_name, answer_variant(key) & VARIANT_VIEW)
            entry.counted_policy = PolicyAction.PASSTHRU if hit is not None and hit.action == PolicyAction.PASSTHRU \
                else self._chain_policy(resolution, key)
        if not future.done():
            future.set_result(entry)

    async def _instead_of_failure(self, key: bytes, question: Question, failed: Resolution) -> Resolution:
        """A failed resolution counted, and what is served in its place: the stale answer the
        RRset cache still makes (with DNS64's records made from the stale A records too, not
        the stale "no AAAA"), or ``failed``."""
        self.stats.resolution_failures += 1
        resolution = self._stale_from_rrsets(key, question, failed)
        dns64 = self._dns64_for(key) if resolution is not failed and question.qtype == RRType.AAAA else None
        if dns64 is not None:
            resolution = await self._synthesised(resolution, question.key_name, key, dns64,
                                                 stale_ttl=self.stale_answer_ttl)
        return resolution

    def _stale_from_rrsets(self, key: bytes, question: Question, failed: Resolution) -> Resolution:
        """RFC 8767 when the answer cache has no expired reply under ``key`` to serve instead of
        the failure: the question was answered only to queries with other DNSSEC bits (dig sets
        AD, stub resolvers do not), or a reload emptied the answer cache. The RRset cache still
        has the records: the answer they make, every TTL the stale answer TTL (or what is left
        of the records' stale window, when less), which is kept in the answer cache for that long
        (§4's failure recheck timer). ``failed`` when they make none."""
        now = self.clock()
        if not self.answers.limits.stale_seconds or self.answers.get_stale(key, now) is not None:
            return failed
        stale = self.resolver.stale_resolution(question.key_name, question.qtype, self.stale_answer_ttl,
                                               self._rewritten(key))
        if stale is None:
            return failed
        self.stats.stale_answers += 1
        if self.servfail_log.enabled:
            self.servfail_log.failed(question.key_name, question.qtype, failed.failure or "resolution failed",
                                     answered_stale=True)
        return stale

    async def _resolve_uncached(self, question: Question, key: bytes) -> Resolution:
        try:
            async with asyncio.timeout(self.request_timeout):
                resolution = await self._resolve(question, key)
        except TimeoutError:
            resolution = Resolution(RCode.SERVFAIL, [], failure="timed out")
        dns64 = self._dns64_for(key)
        if dns64 is not None and question.qtype == RRType.AAAA:
            resolution = await self._synthesised(resolution, question.key_name, key, dns64)
        if resolution.rcode == RCode.SERVFAIL:
            resolution = await self._instead_of_failure(key, question, resolution)
        return await self._police_chain(resolution, question.qtype, key=key)

    async def _resolve(self, question: Question, key: bytes, *, refresh: bool = False,
                       past_limit: bool = False) -> Resolution:
        target = None
        dns64 = self._dns64_for(key)
        if dns64 is not None and question.qtype == RRType.PTR:
            target = dns64.reverse_target(question.key_name)
        if target is None:
            return await self.resolver.resolve(question.key_name, question.qtype, refresh=refresh,
                                               past_limit=past_limit, stop_at=self._rewritten(key))
        # DNS64's reverse mapping (RFC 6147 §5.3.1): the IPv4 address's PTR, through a CNAME.
        mapped = await self.resolver.resolve(target, RRType.PTR, refresh=refresh, past_limit=past_limit,
                                             stop_at=self._rewritten(key))
        cname = RR(question.key_name, RRType.CNAME, CLASS_IN, DNS64_NEGATIVE_TTL, target)
        security = Security.BOGUS if mapped.security == Security.BOGUS else Security.INSECURE
        return Resolution(mapped.rcode, [cname, *mapped.answer], mapped.authority, mapped.failure,
                          security=security, ede=mapped.ede, zone=mapped.zone)

    async def _synthesised(self, resolution: Resolution, name: bytes, key: bytes, dns64: DNS64,
                           past_limit: bool = False, refresh: bool = False,
                           stale_ttl: int | None = None) -> Resolution:
        """The AAAA resolution of ``name`` with DNS64's records made from the A records of the
        chain's end when it has no AAAA of its own (``ispd.dns.dns64``). ``past_limit``: the
        zone rate limit let the client's question through (its A question is part of it);
        ``refresh``: a prefetch, which renews the A records too (the made ones live no longer);
        ``stale_ttl``: ``resolution`` is served stale (RFC 8767), and so are the A records, from
        the RRset cache."""
        if resolution.rcode == RCode.NXDOMAIN or resolution.security == Security.BOGUS:
            return resolution
        if self.validating and key and answer_variant(key) & VARIANT_DO and answer_variant(key) & VARIANT_CD:
            return resolution  # RFC 6147 §5.5: it validates for itself, on the records as they are
        chain: list[RR] = []  # the AAAA resolution's CNAMEs and DNAMEs (with their RRSIGs)
        own: list[RR] = []  # and its AAAA records
        end = name
        if resolution.rcode == RCode.NOERROR:
            for rr in resolution.answer:
                if rr.rtype == RRType.AAAA:
                    own.append(rr)
                elif rr.rtype != RRType.RRSIG or rr.rdata[:2] != _COVERS_AAAA:
                    chain.append(rr)
                    if rr.rtype == RRType.CNAME and rr.name == end:
                        end = rdata_name(rr.rdata)
        # (after a failure, RFC 6147 §5.1.2: as if there were no AAAA, from the name itself)
        counted = [rr for rr in own if dns64.counts(rr.rdata)]
        if counted and not dns64.synthesize_all:
            if len(counted) == len(own):
                return resolution
            return replace(resolution, answer=[rr for rr in resolution.answer
                                               if rr.rtype != RRType.AAAA or dns64.counts(rr.rdata)])
        if own and not counted:
            # RFC 6147 §5.1.4: AAAA records only in the excluded ranges are "treated as though the
            # AAAA containing them were an empty answer", also when no record can be made (no A
            # records, or none the prefix may embed): an IPv6-only client cannot reach
            # ::ffff:a.b.c.d. Not signed as it stands any more: no AD.
            resolution = replace(resolution, answer=chain, security=Security.INSECURE
                                 if resolution.security == Security.SECURE else resolution.security)
        rewritten = self._rewritten(key)
        if end != name and rewritten(end):
            return resolution  # the chain stops there: the policy answers for that name
        if stale_ttl is not None:
            ipv4 = (self.resolver.stale_resolution(end, RRType.A, stale_ttl, rewritten)
                    or Resolution(RCode.SERVFAIL, [], failure="no stale A records"))
        else:
            try:
                async with asyncio.timeout(self.request_timeout):
                    ipv4 = await self.resolver.resolve(end, RRType.A, past_limit=past_limit, refresh=refresh,
                                                       stop_at=rewritten)
            except TimeoutError:
                ipv4 = Resolution(RCode.SERVFAIL, [], failure="timed out")
        if ipv4.rcode == RCode.SERVFAIL or ipv4.security == Security.BOGUS:
            # The A records could not be had this time (a timeout, the zone rate limit): the
            # AAAA question's "no AAAA" is not the answer to keep for its negative TTL, during
            # which IPv6-only clients would have no address for the name at all.
            return replace(resolution, answer=_briefly(resolution.answer), authority=_briefly(resolution.authority))
        if ipv4.rcode != RCode.NOERROR:
            return resolution
        # RFC 6147 §5.1.7: no longer than the A records, nor than the AAAA question's negative answer.
        negative = min((min(rr.ttl, soa_minimum(rr.rdata)) for rr in resolution.authority if rr.rtype == RRType.SOA),
                       default=DNS64_NEGATIVE_TTL)
        made = [RR(rr.name, RRType.AAAA, rr.rclass, min(rr.ttl, negative), dns64.embed(rr.rdata))
                for rr in ipv4.answer if rr.rtype == RRType.A and dns64.may_embed(rr.rdata)]
        if not made:
            return resolution
        self.stats.dns64_answers += 1
        a_chain = [rr for rr in ipv4.answer if rr.rtype in (RRType.CNAME, RRType.DNAME)
                   or (rr.rtype == RRType.RRSIG and rr.rdata[:2] != _COVERS_A)]
        return Resolution(RCode.NOERROR, [*chain, *a_chain, *made], [], security=Security.INSECURE, zone=ipv4.zone)

    async def _police_chain(self, resolution: Resolution, qtype: int, before: tuple[RR, ...] = (),
                            hops: int = 0, *, key: bytes = b"") -> Resolution:
        """RPZ applies to every name of a CNAME chain, not only to the query name: the chain is
        cut at the first target the policy matches and that target gets the policy's answer
        (DROP there becomes NXDOMAIN: the reply is shared through the cache); a rewrite to
        another name is followed from there. ``before``: the chain that led to this
        resolution's name, ``hops`` its CNAMEs; ``key``: the client's (answer cache key), for
        DNS64 on a rewrite's target."""
        for index, rr in enumerate(resolution.answer):
            if rr.rtype != RRType.CNAME:
                continue
            policed = self._policy_answer(rdata_name(rr.rdata), qtype, key)
            if policed is None:
                continue
            chain = [*before, *resolution.answer[:index + 1], *policed.answer]
            if policed.next_name is None:
                return Resolution(policed.rcode, chain, policed.authority)
            rest = await self._follow(policed.next_name, qtype, chain, recursive=True, hops=hops + index + 2,
                                      key=key)
            # The operator's answer, not the zone's: never AD (a bogus rest stays bogus).
            return rest if rest.security == Security.BOGUS else replace(rest, security=Security.UNCHECKED)
        return replace(resolution, answer=[*before, *resolution.answer]) if before else resolution

    def _rewritten(self, key: bytes) -> Callable[[bytes], bool]:
        """Whether the policy answers for a CNAME target met by a resolution under ``key`` (the
        client's view is in it): the resolver then stops there (``_police_chain`` cuts the chain
        at that name), as Unbound does, rather than ask the blocked name's servers - which
        would learn who looks it up, and whose timeouts the client would wait for (past the
        request timeout: SERVFAIL, the policy's answer lost with the chain)."""
        view = answer_variant(key) & VARIANT_VIEW if key else 0
        lookup = self.policy_lookup

        def rewritten(name: bytes) -> bool:
            hit = lookup(name, view)
            return hit is not None and hit.action not in (PolicyAction.PASSTHRU, PolicyAction.TCP_ONLY)
        return rewritten

    def _chain_policy(self, resolution: Resolution, key: bytes) -> PolicyAction | None:
        """The action of the policy that cut the chain of ``resolution`` (policed under ``key``)
        at a target, as ``_policy_answer`` counted it; None: none did."""
        view = answer_variant(key) & VARIANT_VIEW if key else 0
        for rr in resolution.answer:
            if rr.rtype == RRType.CNAME:
                hit = self.policy_lookup(rdata_name(rr.rdata), view)
                if hit is not None and hit.action not in (PolicyAction.PASSTHRU, PolicyAction.TCP_ONLY):
                    return hit.action
        return None

    def _policy_answer(self, name: bytes, qtype: int, key: bytes) -> ZoneAnswer | None:
        """What the policy answers for ``name`` inside a chain of the answer under ``key`` (the
        client's view is in it); None where it lets it be."""
        hit = self.policy_lookup(name, answer_variant(key) & VARIANT_VIEW if key else 0)
        if hit is None or hit.action in (PolicyAction.PASSTHRU, PolicyAction.TCP_ONLY):
            return None
        self.policy_hits[hit.action] += 1
        if hit.action == PolicyAction.DROP:
            hit = replace(hit, action=PolicyAction.NXDOMAIN)
        return policy_answer(hit, qtype)

    async def _follow(self, name: bytes, qtype: int, chain: list[RR], *, recursive: bool,
                      hops: int = 1, key: bytes = b"") -> Resolution:
        """The rest of a CNAME chain that left local data or that the policy rewrote, from
        ``name`` on, after ``chain``: each name is looked up as a client's question would be -
        local data, then the policy, then (``recursive``) the resolver - so that a CNAME from one
        local name to another is not asked of the world, nor one to a blocked name let through.
        What the resolver answers gets DNS64 as a client's question would (``key``: the
        client's answer cache key, for its DNSSEC bits)."""
        limit = self.resolver.settings.max_cname_chain
        while True:
            if hops > limit:
                return Resolution(RCode.SERVFAIL, [], failure="CNAME chain too long")
            local = self._local(name, qtype, recursive)
            if local is None:
                local = self._policy_answer(name, qtype, key)
            if local is None:
                local = self.default_lookup(name, qtype)
            if local is None:
                if not recursive:  # RD=0: no further than local data (the client may ask on)
                    return Resolution(RCode.NOERROR, chain)
                try:
                    async with asyncio.timeout(self.request_timeout):
                        rest = await self.resolver.resolve(name, qtype, stop_at=self._rewritten(key))
                except TimeoutError:
                    rest = Resolution(RCode.SERVFAIL, [], failure="timed out")
                dns64 = self._dns64_for(key)
                if dns64 is not None and qtype == RRType.AAAA:
                    rest = await self._synthesised(rest, name, key, dns64)
                return await self._police_chain(rest, qtype, tuple(chain), hops, key=key)
            chain = [*chain, *local.answer]
            if local.next_name is None:
                return Resolution(local.rcode, chain, local.authority)
            name, hops = local.next_name, hops + 1

    def _build(self, key: bytes, question: Question, resolution: Resolution, now: float, *,
               store: bool) -> CachedAnswer:
        variant = answer_variant(key) if self.validating else 0
        ede = -1
        if resolution.security == Security.BOGUS and not variant & VARIANT_CD:
            # RFC 4035 §5.5: bogus data is not handed out; the verdict is kept by the RRset cache.
            ede, store = resolution_ede(resolution.ede), False
            resolution = Resolution(RCode.SERVFAIL, [], [], resolution.failure)
        elif resolution.security == Security.INSECURE and resolution.ede == EDE.UNSUPPORTED_NSEC3_ITERATIONS:
            # RFC 9276 §3.2: why an answer from a signed zone is not validated. Not in the answer
            # cache, whose fast path sends no EDE: the RRset cache keeps the answer and its code.
            ede, store = resolution.ede, False
        if resolution.rcode == RCode.SERVFAIL:  # no partial chain: it would set the entry's lifetime
            resolution = Resolution(RCode.SERVFAIL, [], [], resolution.failure)
            if resolution.failure == OUT_OF_SOCKETS:
                store = False  # this host's shortage, gone as soon as sockets come free: not cached
        else:
            resolution = self._clamped(resolution)
        flags = FLAG_QR | FLAG_RA | (resolution.rcode & 0xF)
        # An RRSIG set is never validated as such (RFC 4035 §3.2.3: AD only when every RRset of
        # the answer is authentic), so a question for RRSIGs gets no AD, as from Unbound.
        if resolution.security == Security.SECURE and variant & (VARIANT_DO | VARIANT_AD) \
                and question.qtype != RRType.RRSIG:
            flags |= FLAG_AD
        if not variant & VARIANT_DO:
            resolution = Resolution(resolution.rcode, without_dnssec(resolution.answer, question.qtype),
                                    without_dnssec(resolution.authority, question.qtype), resolution.failure)
        q = Question(question.key_name, question.qtype, question.qclass)
        encoded = encode_message(0, flags, q, resolution.answer, resolution.authority, [], max_size=TCP_MAX_SIZE)
        if encoded.truncated:
            # Over 64 KB, a CNAME chain across zones: TC even over TCP, as for local data and from
            # Unbound; an empty NOERROR would be a NODATA no zone gave, kept for serve-stale too.
            flags |= FLAG_TC
            store = False
        start = 12 + len(q.name) + 4
        template = encoded.data[start:]
        offsets = tuple(o - start for o in encoded.ttl_offsets)
        records = (resolution.answer + resolution.authority)[:len(offsets)]
        ttls = tuple(rr.ttl for rr in records)
        floor = FAILURE_CACHE_SECONDS if resolution.rcode == RCode.SERVFAIL else 0
        make = self.answers.store if store else self.answers.build
        entry = make(key, flags, encoded.counts, template, offsets, ttls, now, ttl_floor=floor)
        entry.ede = ede
        return entry

    def _clamped(self, resolution: Resolution) -> Resolution:
        """The answer with the cache's TTL limits applied, as its RRsets are in the RRset cache:
        the client sees them, and the answer cache keeps the answer no longer (an operator's
        ``max_ttl`` is what a changed record waits at most). The authority section of a negative
        answer (its SOA, its denial) is held to ``max_negative_ttl``."""
        limits = self.answers.limits
        clamp = limits.clamp
        answer = [rr if clamp(rr.ttl) == rr.ttl else replace(rr, ttl=clamp(rr.ttl)) for rr in resolution.answer]
        if any(rr.rtype == RRType.SOA for rr in resolution.authority):
            clamp = limits.clamp_negative
        authority = [rr if clamp(rr.ttl) == rr.ttl else replace(rr, ttl=clamp(rr.ttl)) for rr in resolution.authority]
        return replace(resolution, answer=answer, authority=authority)

    def _prefetch(self, key: bytes, entry: CachedAnswer) -> None:
        entry.refreshing = True
        self.stats.prefetches += 1
        name_end = len(key) - (5 if answer_variant(key) else 4)
        question = Question(key[:name_end], (key[name_end] << 8) | key[name_end + 1],
                            (key[name_end + 2] << 8) | key[name_end + 3])
        if key in self._inflight:
            return
        future: asyncio.Future[CachedAnswer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        self._spawn(self._resolve_into(key, question, future, refresh=True))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        while self._background:
            await asyncio.wait(list(self._background))

    async def cancel_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- building replies ----------------------------------------------------------------------

    def _reply_cached(self, query: Message, entry: CachedAnswer, tcp: bool) -> bytes:
        assert query.question is not None
        self.rcodes[entry.rcode_flags & 0xF] += 1
        flags = entry.rcode_flags | (query.flags & _RD_CD)
        question = query.question.name + struct.pack("!HH", query.question.qtype, query.question.qclass)
        edns = query.edns
        if edns is not None:
            opt = self._opt_do if edns.do else self._opt
            if entry.ede >= 0:
                opt = opt_record(SERVER_UDP_SIZE, edns.flags & EDNS_DO, options=ede_option(entry.ede))
            reply = b"".join((_U16.pack(query.id), _U16.pack(flags), entry.counts_with_opt, question,
                              entry.render(self.clock()), opt))
        else:
            reply = b"".join((_U16.pack(query.id), _U16.pack(flags), entry.counts, question,
                              entry.render(self.clock())))
        limit = TCP_MAX_SIZE if tcp else udp_limit(edns)
        if len(reply) > limit:
            return self._truncated(query, entry.rcode_flags)
        return reply

    def _walled_dns64(self, walled: ZoneAnswer, name: bytes, qtype: int, client_class: ClientClass) -> ZoneAnswer:
        """The walled garden's AAAA answer for a client that gets DNS64, when the garden has no
        IPv6 portal: the IPv4 portal's address under the NAT64 prefix, as DNS64 gives any name
        with A records and no AAAA. Its "no AAAA" would leave an IPv6-only device nothing to
        reach the portal by: no captive-portal page, only "no internet"."""
        dns64 = self.dns64
        if (qtype != RRType.AAAA or walled.answer or walled.rcode != RCode.NOERROR or dns64 is None
                or (self.dns64_clients is not None and client_class != ClientClass.WALLED_DNS64)):
            return walled
        portal = self.walled_lookup(name, RRType.A)
        made = [RR(rr.name, RRType.AAAA, rr.rclass, rr.ttl, dns64.embed(rr.rdata))
                for rr in (portal.answer if portal is not None else [])
                if rr.rtype == RRType.A and dns64.may_embed(rr.rdata)]
        if not made:
            return walled
        self.stats.dns64_answers += 1
        return replace(walled, answer=made)

    def _local(self, name: bytes, qtype: int, recursive: bool) -> ZoneAnswer | None:
        """Local data's answer, or None: not local. A name below a delegation in a local zone is
        its servers' to answer: resolved (the resolver has the delegation as a stub zone) when
        the client asks for recursion, the referral itself when it does not."""
        local = self.local_lookup(name, qtype)
        if local is not None and recursive and local.kind == AnswerKind.REFERRAL:
            return None
        return local

    def _local_entry(self, question: Question, local: ZoneAnswer, action: PolicyAction | None,
                     view: int = 0) -> CachedAnswer | None:
        """The local data or policy reply in the form the fast path serves, kept for it (the slow
        path replies from it too: one encoding), from the second time it is asked; None the first
        time, and for a CNAME out of local data (that part is resolved, and changes with the
        resolver's cache). Never prefetched; served with the query's DNSSEC bits ignored (local
        data is not signed, never gets AD); kept for the client's ``view``."""
        if local.next_name is not None or local.kind == AnswerKind.REFERRAL:
            return None  # (a referral is for RD=0 only; the fast path does not look at RD)
        key, now = key_of(question), self.clock()
        if view:
            key += _VARIANT_SUFFIX[view]
        kept = self.local_answers.get(key)
        if kept is not None and kept[0].expires_at > now:
            return kept[0]  # a query the fast path cannot read (malformed options, TCP): kept already
        if key not in self._local_asked:
            # Kept from the second time on: names asked once (a flood of random names under a
            # local zone) cost a set entry, not an entry of their own.
            if len(self._local_asked) >= MAX_LOCAL_ANSWERS:
                self._local_asked.clear()
            self._local_asked.add(key)
            return None
        self._local_asked.discard(key)
        if len(self.local_answers) >= MAX_LOCAL_ANSWERS:
            self.local_answers.clear()
        flags = FLAG_QR | FLAG_RA | (FLAG_AA if local.authoritative else 0) | (local.rcode & 0xF)
        q = Question(question.key_name, question.qtype, question.qclass)
        encoded = encode_message(0, flags, q, local.answer, local.authority, [], max_size=TCP_MAX_SIZE)
        if encoded.truncated:  # over 64 KB: the slow path's TC reply, never an empty answer kept
            return None
        start = 12 + len(q.name) + 4
        # No TTL offsets: authoritative data keeps its TTLs as written (they do not count down);
        # the entry lives as long as the least of them.
        ttls = [rr.ttl for rr in local.answer + local.authority]
        entry = self.answers.build(key, flags, encoded.counts, encoded.data[start:], (), (), now,
                                   ttl_floor=min(ttls) if ttls else LOCAL_NEGATIVE_SECONDS)
        entry.prefetch_at = _NEVER
        self.local_answers[key] = (entry, action)
        return entry

    def forget_local_answers(self) -> None:
        """Local data or policy changed: the fast path asks them again."""
        self.local_answers.clear()
        self._local_asked.clear()

    async def _reply_local(self, query: Message, local: ZoneAnswer, tcp: bool,
                           client_class: ClientClass = ClientClass.ALLOWED, view: int = 0) -> bytes:
        """A reply from local data, policy or the walled garden; a CNAME that leaves it
        (``next_name``) is followed (``_follow``) and the rest of the chain appended."""
        assert query.question is not None
        rcode, answer, authority = local.rcode, local.answer, local.authority
        additional = local.additional  # a referral's glue (RFC 1034 §4.3.2 step 3b)
        authoritative = local.authoritative
        if local.next_name is not None:
            additional = []
            rest = await self._follow(local.next_name, query.question.qtype, answer,
                                      recursive=bool(query.flags & FLAG_RD),
                                      key=self._key(query, query.question, client_class, view))
            rcode, answer, authority, authoritative = rest.rcode, rest.answer, rest.authority, False
            if rest.security == Security.BOGUS and not query.flags & FLAG_CD:
                rcode, answer, authority = RCode.SERVFAIL, [], []
            if query.edns is None or not query.edns.do:
                answer = without_dnssec(answer, query.question.qtype)
                authority = without_dnssec(authority, query.question.qtype)
        flags = (FLAG_QR | FLAG_RA | (FLAG_AA if authoritative else 0) | (query.flags & _RD_CD) | (rcode & 0xF))
        self.rcodes[rcode & 0xF] += 1
        edns = query.edns
        limit = TCP_MAX_SIZE if tcp else udp_limit(edns)
        opt = (self._opt_do if edns.do else self._opt) if edns is not None else None
        encoded = encode_message(query.id, flags, query.question, answer, authority, additional,
                                 opt=opt, max_size=limit)
        if encoded.counts[2] < len(additional) and not encoded.truncated:
            return self._truncated(query, flags)  # RFC 9471 §3: a referral's glue all fits, or TC
        return encoded.data

    def _truncated(self, query: Message, answer_flags: int = FLAG_QR | FLAG_RA) -> bytes:
        """TC, with the flags and rcode the whole answer has (AA, AD): the fast path's too."""
        flags = answer_flags | FLAG_TC | (query.flags & _RD_CD)
        opt = (self._opt_do if query.edns.do else self._opt) if query.edns is not None else None
        return encode_message(query.id, flags, query.question, [], [], [], opt=opt).data

    def _not_recursive(self, query: Message) -> bytes:
        """RD=0 past local data: neither iteration, which the client did not ask for (RFC 1034
        §4.3.1), nor the cache, which would tell anyone what the other subscribers looked up
        (cache snooping; Unbound refuses these too unless allow_snoop)."""
        self.stats.not_recursive += 1
        return self._error(query, RCode.REFUSED, ede=EDE_NOT_AUTHORITATIVE)

    def _error(self, query: Message, rcode: int, *, ede: int | None = None) -> bytes:
        self.rcodes[rcode] += 1  # the whole rcode: BADVERS (16) is not NOERROR (its lower 4 bits)
        flags = FLAG_QR | FLAG_RA | (query.flags & (FLAG_RD | FLAG_CD | 0x7800)) | (rcode & 0xF)
        opt = None
        if query.edns is not None:
            opt = opt_record(SERVER_UDP_SIZE, query.edns.flags & EDNS_DO, ext_rcode=rcode >> 4,
                             options=ede_option(ede) if ede is not None else b"")
        return encode_message(query.id, flags, query.question, [], [], [], opt=opt).data

    def _count(self, reply: bytes | None) -> bytes | None:
        if reply is not None:
            self.rcodes[reply[3] & 0xF] += 1
        return reply


def without_dnssec(records: list[RR], qtype: int) -> list[RR]:
    """RFC 4035 §3.2.1: without DO, RRSIG, NSEC and NSEC3 records only when asked for."""
    if not any(rr.rtype in _DNSSEC_TYPES for rr in records):
        return records
    return [rr for rr in records if rr.rtype not in _DNSSEC_TYPES or rr.rtype == qtype]


def resolution_ede(code: int) -> int:
    """The Extended DNS Error of a bogus resolution: its own, or DNSSEC Bogus (6)."""
    return code if code >= 0 else 6


def udp_limit(edns: EDNS | None) -> int:
    """The largest UDP reply: the lesser of the client's buffer and ours (RFC 6891 §6.2.5), 512
    without EDNS."""
    return min(edns.udp_size, SERVER_UDP_SIZE) if edns is not None else 512


def policy_answer(hit: PolicyHit, qtype: int) -> ZoneAnswer:
    """The reply a policy action gives (RPZ: NXDOMAIN and NODATA with the policy zone's SOA,
    local data answered as written, a CNAME to elsewhere followed)."""
    soa = [hit.soa] if hit.soa is not None else []
    if hit.action == PolicyAction.NXDOMAIN:
        return ZoneAnswer(RCode.NXDOMAIN, False, [], soa, [])
    records = hit.answer_for(qtype) if hit.action == PolicyAction.LOCAL_DATA else []
    if not records:
        return ZoneAnswer(RCode.NOERROR, False, [], soa, [])
    next_name = None
    if records[0].rtype == RRType.CNAME and qtype not in (RRType.CNAME, RRType.ANY):
        next_name = rdata_name(records[0].rdata)
    return ZoneAnswer(RCode.NOERROR, False, records, [], [], next_name=next_name)
