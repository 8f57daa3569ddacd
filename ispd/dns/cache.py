"""The resolver's caches: RRsets and negative answers for iteration, and wire answers for clients.

Two layers, as in Unbound:
- ``RRsetCache`` holds what iteration learns — RRsets keyed by (name, type), each with the trust
  of where it came from (RFC 2181 §5.4.1: glue and referral data never replace an authoritative
  answer that is still fresh), and negative entries (RFC 2308): NODATA per (name, type),
  NXDOMAIN per name, each living as long as the SOA allows.
- ``AnswerCache`` holds finished replies in wire form keyed by the question as it sits on the wire
  (lowercased name, type, class). A hit is the client's ID and question spliced onto the stored
  body, with TTLs lowered once per second of age by patching the stored offsets in place: no
  decode and no encode (the speed of a Python resolver is decided here). When the resolver
  validates, a query's DNSSEC bits change its reply (DO: the RRSIGs and NSEC records; AD or DO:
  the AD bit; CD: bogus data instead of SERVFAIL), so a query with any of them set is keyed by the
  question plus one byte of those bits (``answer_variant``), in a table of its own
  (``variants``): plain queries, the common case, stay on the plain table. The same byte says
  whether the client gets DNS64 and which limited policy zones apply to it (its view).

Both are bounded in bytes (an estimate of each entry's footprint) and evict with CLOCK: a hit only
sets a counter, and eviction walks from the oldest insertion, giving entries hit since the last
sweep a second chance. TTLs are clamped to [min_ttl, max_ttl] on the way in. Expired entries stay
for ``stale_seconds`` more (RFC 8767) and are only handed out by the ``*_stale`` lookups, which
the resolver uses when its upstreams fail.
"""

from __future__ import annotations

import heapq
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from ispd.dns.wire import RR, RCode, RRType, is_subdomain

if TYPE_CHECKING:
    from ispd.dns.policy import PolicyAction

NXDOMAIN_KEY = -1  # the "type" of a name's NXDOMAIN entry
# What an entry costs in Python objects beyond its data bytes, as tracemalloc counts it on
# CPython 3.11 (tests/dns/test_cache.py holds the estimate to that): the entry object, its key
# and its slot in the dict, the headers of its bytes and tuples, its numbers. An estimate that
# leaves these out undercounts small entries, the common ones, by half or more, and the cache
# would hold two or three times the memory the operator gave it.
_RRSET_OVERHEAD = 390
_NEGATIVE_OVERHEAD = 240
_ANSWER_OVERHEAD = 530
_BYTES_OVERHEAD = 41  # a bytes object's header, and its slot in a tuple
_TUPLE_OVERHEAD = 48  # a tuple of the entry's beyond those counted in its overhead
_RR_OVERHEAD = 140  # an RR object with its TTL and the headers of its name and rdata
_TTL_OVERHEAD = 48  # per record of a cached answer: its TTL's offset and its TTL


_TTL = struct.Struct("!I")


def _record_size(rr: RR) -> int:
    return len(rr.rdata) + len(rr.name) + _RR_OVERHEAD


def _records_size(records: tuple[RR, ...]) -> int:
    return _TUPLE_OVERHEAD + sum(_record_size(rr) for rr in records) if records else 0


def _rdatas_size(rdatas: tuple[bytes, ...]) -> int:
    return sum(len(r) + _BYTES_OVERHEAD for r in rdatas)


class Trust(IntEnum):
    """Where an RRset came from, least to most credible (RFC 2181 §5.4.1)."""

    GLUE = 1  # additional section
    REFERRAL = 2  # authority section of a referral
    AUTHORITY = 3  # authority section of an authoritative answer
    FORWARDED = 4  # answer section from a forwarder (not authoritative)
    ANSWER = 5  # answer section of an authoritative answer
    LOCAL = 6  # configured data


class Security(IntEnum):
    """An RRset's or answer's DNSSEC state (RFC 4033 §5), worst first; UNCHECKED when no
    validator looked (validation off, or not yet)."""

    UNCHECKED = -1
    BOGUS = 0
    INSECURE = 1
    SECURE = 2


@dataclass(slots=True)
class RRsetEntry:
    name: bytes
    rtype: int
    rdatas: tuple[bytes, ...]
    trust: Trust
    ttl: int
    expires_at: float
    size: int
    hits: int = 0
    # An A/AAAA set's addresses as text, made once on first use: iteration asks for a zone's
    # server addresses on every upstream query.
    address_texts: tuple[str, ...] | None = None
    # DNSSEC: the RRSIGs over the set, the NSEC/NSEC3 proof a wildcard expansion comes with,
    # the zone whose servers gave it, and what the validator found (with an RFC 8914 code).
    sigs: tuple[bytes, ...] = ()
    proof: tuple[RR, ...] = ()
    zone: bytes = b""
    security: Security = Security.UNCHECKED
    ede: int = -1

    def records(self, now: float, *, stale_ttl: int | None = None) -> list[RR]:
        ttl = stale_ttl if stale_ttl is not None else max(0, int(self.expires_at - now))
        return [RR(self.name, self.rtype, 1, ttl, rdata) for rdata in self.rdatas]

    def records_with_sigs(self, now: float, *, stale_ttl: int | None = None) -> list[RR]:
        ttl = stale_ttl if stale_ttl is not None else max(0, int(self.expires_at - now))
        return ([RR(self.name, self.rtype, 1, ttl, rdata) for rdata in self.rdatas]
                + [RR(self.name, RRType.RRSIG, 1, ttl, rdata) for rdata in self.sigs])

    def addresses(self) -> tuple[str, ...]:
        if self.address_texts is None:
            family = socket.AF_INET if self.rtype == RRType.A else socket.AF_INET6
            self.address_texts = tuple(socket.inet_ntop(family, rdata) for rdata in self.rdatas)
        return self.address_texts

    def ttl_left(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


class NegativeKind(IntEnum):
    NODATA = 0
    NXDOMAIN = 3


@dataclass(slots=True)
class NegativeEntry:
    name: bytes
    kind: NegativeKind
    soa: RR | None  # the SOA from the authority section, its TTL as it was stored
    expires_at: float
    size: int
    hits: int = 0
    proof: tuple[RR, ...] = ()  # DNSSEC: the SOA's RRSIGs and the NSEC/NSEC3 records with theirs
    zone: bytes = b""
    security: Security = Security.UNCHECKED
    ede: int = -1

    def proof_records(self, now: float, *, stale_ttl: int | None = None) -> list[RR]:
        ttl = stale_ttl if stale_ttl is not None else max(0, int(self.expires_at - now))
        return [RR(rr.name, rr.rtype, rr.rclass, min(ttl, rr.ttl), rr.rdata) for rr in self.proof]

    def soa_record(self, now: float, *, stale_ttl: int | None = None) -> list[RR]:
        if self.soa is None:
            return []
        ttl = stale_ttl if stale_ttl is not None else max(0, int(self.expires_at - now))
        return [RR(self.soa.name, self.soa.rtype, self.soa.rclass, ttl, self.soa.rdata)]


Entry = RRsetEntry | NegativeEntry


@dataclass(slots=True)
class CacheLimits:
    max_bytes: int = 64 * 1024 * 1024
    min_ttl: int = 0
    max_ttl: int = 86400
    max_negative_ttl: int = 3600
    stale_seconds: int = 0  # 0: no serve-stale

    def clamp(self, ttl: int) -> int:
        return max(self.min_ttl, min(self.max_ttl, ttl))

    def clamp_negative(self, ttl: int) -> int:
        """A negative answer's TTL: at most ``max_negative_ttl``, at least ``min_ttl`` below that."""
        return max(min(ttl, self.max_negative_ttl), min(self.min_ttl, self.max_negative_ttl))


class _Clock:
    """CLOCK eviction over a dict in insertion order, by an estimate of bytes held."""

    def __init__(self, limits: CacheLimits) -> None:
        self.limits = limits
        self.bytes = 0
        self.evictions = 0
        self.inserted = 0  # the last ``stamp``

    def evict(self, tables: tuple[dict, ...], expired_before: float) -> None:  # type: ignore[type-arg]
        """Free down to 90 % of the budget in one batch, oldest insertions first. An entry hit
        since it was last looked at is spared: its hit count is reset and it moves to the back,
        where the sweeps reach it again only after the rest of the cache (the CLOCK hand going
        round); a second pass takes whatever is still needed. One batch frees a tenth of the
        cache, so the scans cost little per insertion. ``tables``: every dict the budget counts
        (the answer cache's plain and variant tables share one), walked as one, oldest first
        whichever table holds it: their entries carry ``order``, the insertion they were
        stored (or spared) at, which ``stamp`` gives (a table walked after the other would
        lose its unasked entries while older ones of the other stayed)."""
        target = self.limits.max_bytes * 9 // 10
        for spare_hits in (True, False):
            victims = []
            spared = []
            excess = self.bytes - target
            for entries, key, entry in _oldest_first(tables):
                if excess <= 0:
                    break
                if spare_hits and entry.hits and entry.expires_at > expired_before:
                    entry.hits = 0
                    spared.append((entries, key))
                    continue
                victims.append((entries, key))
                excess -= entry.size
            for entries, key in victims:
                self.bytes -= entries.pop(key).size
                self.evictions += 1
            for entries, key in spared:
                entry = entries[key] = entries.pop(key)
                if len(tables) > 1:
                    entry.order = self.stamp()
            if self.bytes <= target:
                return

    def stamp(self) -> int:
        """The next insertion's place in the CLOCK order of several tables."""
        self.inserted += 1
        return self.inserted


def _oldest_first(tables: tuple[dict, ...]) -> Iterator[tuple[dict, object, Any]]:  # type: ignore[type-arg]
    """(table, key, entry) in insertion order; across several tables by the entries' ``order``
    (each table is in that order: an entry stored or spared goes to its back with a new one)."""
    def walk(table: dict) -> Iterator[tuple[dict, object, Any]]:  # type: ignore[type-arg]
        for key, entry in table.items():
            yield table, key, entry

    if len(tables) == 1:
        return walk(tables[0])
    return heapq.merge(*map(walk, tables), key=lambda item: item[2].order)


class _BoundedCache:
    """What both caches share: the byte budget with its CLOCK, and its figures for metrics."""

    def __init__(self, limits: CacheLimits) -> None:
        self.limits = limits
        self._clock = _Clock(limits)

    def set_limits(self, limits: CacheLimits) -> None:
        """New limits (a reload): a smaller budget is reached at the next insertions; TTLs
        already cached keep the clamp they were given (but in the RRset cache, given ``now``)."""
        self.limits = self._clock.limits = limits

    @property
    def size_bytes(self) -> int:
        return self._clock.bytes

    @property
    def evictions(self) -> int:
        return self._clock.evictions


class RRsetCache(_BoundedCache):
    def __init__(self, limits: CacheLimits) -> None:
        super().__init__(limits)
        self._entries: dict[tuple[bytes, int], Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def set_limits(self, limits: CacheLimits, now: float | None = None) -> None:
        """New limits (a reload). With ``now``, an entry that outlives the new ``max_ttl`` (its
        negative ones ``max_negative_ttl``) expires then instead: an operator who lowers them
        wants a changed record seen within the new bound, not after the TTL it was cached with
        (the answer cache, emptied by a reload, is rebuilt from these entries)."""
        super().set_limits(limits)
        if now is None:
            return
        for entry in self._entries.values():
            longest = limits.max_negative_ttl if isinstance(entry, NegativeEntry) else limits.max_ttl
            if entry.expires_at > now + longest:
                entry.expires_at = now + longest
                if isinstance(entry, RRsetEntry):
                    entry.ttl = min(entry.ttl, longest)

    # --- lookups ---

    def get(self, name: bytes, rtype: int, now: float) -> RRsetEntry | None:
        entry = self._entries.get((name, rtype))
        if entry is None or entry.expires_at <= now or not isinstance(entry, RRsetEntry):
            return None
        entry.hits += 1
        return entry

    def get_stale(self, name: bytes, rtype: int, now: float) -> RRsetEntry | None:
        entry = self._entries.get((name, rtype))
        if (entry is None or not isinstance(entry, RRsetEntry)
                or entry.expires_at + self.limits.stale_seconds <= now):
            return None
        return entry

    def get_negative(self, name: bytes, rtype: int, now: float, *, stale: bool = False) -> NegativeEntry | None:
        """NXDOMAIN for the name, or NODATA for (name, type), still fresh (or within the stale
        window when ``stale``)."""
        horizon = now - (self.limits.stale_seconds if stale else 0)
        for key in ((name, NXDOMAIN_KEY), (name, rtype)):
            entry = self._entries.get(key)
            if isinstance(entry, NegativeEntry) and entry.expires_at > horizon:
                entry.hits += 1
                return entry
        return None

    # --- stores ---

    def put(self, name: bytes, rtype: int, ttl: int, rdatas: tuple[bytes, ...], trust: Trust,
            now: float, *, sigs: tuple[bytes, ...] = (), proof: tuple[RR, ...] = (),
            zone: bytes = b"") -> RRsetEntry | None:
        """Store an RRset unless a more credible one is still fresh; the stored entry or None.
        With TTL 0 the entry is made but not kept, and replaces the one cached: the data is for
        the transaction in progress only (RFC 1035 §3.2.1), never fresh, so never served stale."""
        key = (name, rtype)
        old = self._entries.get(key)
        if isinstance(old, RRsetEntry) and old.expires_at > now and old.trust > trust:
            return None
        ttl = self.limits.clamp(ttl)
        size = (_RRSET_OVERHEAD + len(name) + _rdatas_size(rdatas)
                + (_TUPLE_OVERHEAD + _rdatas_size(sigs) if sigs else 0) + _records_size(proof))
        entry = RRsetEntry(name, rtype, rdatas, trust, ttl, now + ttl, size, sigs=sigs, proof=proof, zone=zone)
        if ttl > 0:
            self._store(key, entry, old, now)
        else:  # RFC 1035 §3.2.1: for the transaction in progress only, never kept (nor served stale)
            self._remove(key)
        if rtype != RRType.CNAME:  # positive data for the name ends an NXDOMAIN we held for it
            nx = self._entries.get((name, NXDOMAIN_KEY))
            if nx is not None:
                self._remove((name, NXDOMAIN_KEY))
        return entry

    def put_negative(self, name: bytes, rtype: int, kind: NegativeKind, soa: RR | None, now: float, *,
                     proof: tuple[RR, ...] = (), zone: bytes = b"") -> NegativeEntry:
        """RFC 2308 §5: the negative TTL is the lesser of the SOA's TTL and its MINIMUM field (the
        caller passes the SOA with that TTL); without an SOA the answer is cached briefly."""
        ttl = self.limits.clamp_negative(soa.ttl if soa is not None else 5)
        key = (name, NXDOMAIN_KEY if kind == NegativeKind.NXDOMAIN else rtype)
        stored_soa = RR(soa.name, soa.rtype, soa.rclass, ttl, soa.rdata) if soa is not None else None
        size = _NEGATIVE_OVERHEAD + len(name) + (_record_size(soa) if soa else 0) + _records_size(proof)
        entry = NegativeEntry(name, kind, stored_soa, now + ttl, size, proof=proof, zone=zone)
        if ttl > 0:
            self._store(key, entry, self._entries.get(key), now)
        else:  # an SOA with TTL or MINIMUM 0: not cached (RFC 2308 §5), so never served stale either
            self._remove(key)
        return entry

    def forget_nxdomain(self, name: bytes) -> None:
        """Drop an NXDOMAIN held for ``name`` (one the resolver has stopped believing)."""
        self._remove((name, NXDOMAIN_KEY))

    def _store(self, key: tuple[bytes, int], entry: Entry, old: Entry | None, now: float) -> None:
        if old is not None:
            self._clock.bytes -= old.size
            del self._entries[key]
        self._entries[key] = entry
        self._clock.bytes += entry.size
        if self._clock.bytes > self.limits.max_bytes:
            self._clock.evict((self._entries,), now)

    def _remove(self, key: tuple[bytes, int]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._clock.bytes -= entry.size

    # --- administration ---

    def flush(self, name: bytes, *, subtree: bool = False) -> int:
        keys = [k for k in self._entries if k[0] == name or (subtree and is_subdomain(k[0], name))]
        for key in keys:
            self._remove(key)
        return len(keys)

    def clear(self) -> None:
        self._entries.clear()
        self._clock.bytes = 0

    def entries(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def snapshot_keys(self) -> list[tuple[bytes, int]]:
        """A snapshot of the keys: (name, type), the type NXDOMAIN_KEY for a name's NXDOMAIN."""
        return list(self._entries)

    def entry(self, key: tuple[bytes, int]) -> Entry | None:
        """The entry under ``key`` as it is, expired or not (for administration)."""
        return self._entries.get(key)

    def discard(self, key: tuple[bytes, int]) -> bool:
        """Drop the entry under ``key``; whether there was one."""
        if key not in self._entries:
            return False
        self._remove(key)
        return True


@dataclass(slots=True)
class CachedAnswer:
    """A finished reply without its header's ID and flags' RD/CD bits and without its question:
    those come from each query. ``body`` is ``template`` with TTLs lowered for the age of the
    entry in whole seconds (``rendered_age``)."""

    rcode_flags: int  # QR, AA, RA, AD and the rcode; RD and CD are copied from the query
    counts: bytes  # QDCOUNT..ARCOUNT packed, without an OPT
    counts_with_opt: bytes  # the same with ARCOUNT + 1
    template: bytes
    ttl_offsets: tuple[int, ...]
    ttls: tuple[int, ...]
    stored_at: float
    expires_at: float
    prefetch_at: float
    size: int
    body: bytes = b""
    rendered_age: int = -1
    hits: int = 0
    refreshing: bool = False  # a prefetch or a stale refresh is under way
    stale_until: float = 0.0  # after a failed refresh: serve stale without asking before this
    # Made of stale RRsets (Resolver.stale_resolution): kept only for the stale answer TTL, never
    # served stale itself (the records' own stale window bounds it, RFC 8767 §4).
    from_stale: bool = False
    ede: int = -1  # an Extended DNS Error (RFC 8914) for the OPT record; never stored in the cache
    # The policy action each hit counts as one of, as the query that resolved it did: PASSTHRU
    # when its question matched a PASSTHRU trigger (the fast path does not ask the policy), else
    # the action that cut its CNAME chain at a target (``DNSEngine._police_chain``).
    counted_policy: PolicyAction | None = None
    order: int = 0  # its place in the eviction's order over both tables (``_Clock.stamp``)

    def render(self, now: float) -> bytes:
        age = int(now - self.stored_at)
        if age != self.rendered_age:
            body = bytearray(self.template)
            for offset, ttl in zip(self.ttl_offsets, self.ttls, strict=True):
                _TTL.pack_into(body, offset, ttl - age if ttl > age else 0)
            self.body = bytes(body)
            self.rendered_age = age
        return self.body

    def render_stale(self, stale_ttl: int) -> bytes:
        body = bytearray(self.template)
        for offset in self.ttl_offsets:
            _TTL.pack_into(body, offset, stale_ttl)
        return bytes(body)


VARIANT_DO = 0x01
VARIANT_DNS64 = 0x02  # asked by a client of [dns.dns64] clients (AAAA and PTR questions only)
VARIANT_CD = 0x10  # the header bits of CD and AD, where they sit in a query's fourth byte
VARIANT_AD = 0x20
# The policy scopes the client is in (``ispd.dns.scopes``), one bit each: a client that policy
# zones limited to some plans or networks apply to gets answers of its own.
VARIANT_SCOPES = (0x04, 0x08, 0x40)
VARIANT_VIEW = 0x04 | 0x08 | 0x40
_VARIANT_BITS = VARIANT_DO | VARIANT_DNS64 | VARIANT_CD | VARIANT_AD | VARIANT_VIEW
_VARIANT_SUFFIXES = tuple(bytes((v,)) for v in range(1, _VARIANT_BITS + 1) if v & ~_VARIANT_BITS == 0)


def answer_variant(key: bytes) -> int:
    """The bits a key carries after its question (0 for a plain key): the query's DNSSEC bits,
    whether its client gets DNS64, and its client's view of the policy."""
    i = 0
    while key[i]:
        i += key[i] + 1
    return key[i + 5] if len(key) == i + 6 else 0


class AnswerCache(_BoundedCache):
    def __init__(self, limits: CacheLimits, prefetch: bool = True) -> None:
        super().__init__(limits)
        self.prefetch = prefetch
        self.entries: dict[bytes, CachedAnswer] = {}
        self.variants: dict[bytes, CachedAnswer] = {}

    def table(self, key: bytes) -> dict[bytes, CachedAnswer]:
        return self.variants if answer_variant(key) else self.entries

    def build(self, key: bytes, rcode_flags: int, counts: tuple[int, int, int], template: bytes,
              ttl_offsets: tuple[int, ...], ttls: tuple[int, ...], now: float, *,
              ttl_floor: int | None = None) -> CachedAnswer:
        """An entry as ``store`` would keep it, without keeping it. ``ttl_floor`` is the
        lifetime of an answer without records (a negative answer without an SOA, or a
        SERVFAIL): the least of ``ttls`` otherwise."""
        lifetime = min(ttls) if ttls else (ttl_floor if ttl_floor is not None else 0)
        packed = struct.pack("!HHHH", 1, *counts)
        with_opt = struct.pack("!HHHH", 1, counts[0], counts[1], counts[2] + 1)
        # RFC 8767 §4 / Unbound: refresh popular entries before they expire, in the last tenth.
        prefetch_at = now + lifetime * 0.9 if self.prefetch and lifetime >= 10 else now + lifetime + 1e9
        return CachedAnswer(rcode_flags, packed, with_opt, template, ttl_offsets, ttls, now,
                            now + lifetime, prefetch_at,
                            _ANSWER_OVERHEAD + len(key) + len(template) * 2 + _TTL_OVERHEAD * len(ttl_offsets))

    def store(self, key: bytes, rcode_flags: int, counts: tuple[int, int, int], template: bytes,
              ttl_offsets: tuple[int, ...], ttls: tuple[int, ...], now: float, *,
              ttl_floor: int | None = None) -> CachedAnswer:
        entry = self.build(key, rcode_flags, counts, template, ttl_offsets, ttls, now, ttl_floor=ttl_floor)
        table = self.table(key)
        old = table.pop(key, None)
        if old is not None:
            self._clock.bytes -= old.size
        if entry.expires_at <= now:
            # A record with TTL 0 in it: the answer is for this query only (RFC 1035 §3.2.1).
            # Kept, it was never a hit but was served stale for ``stale_seconds`` (RFC 8767
            # serves data that was fresh once; a TTL of 0 says it may not be reused at all).
            return entry
        table[key] = entry
        entry.order = self._clock.stamp()
        self._clock.bytes += entry.size
        if self._clock.bytes > self.limits.max_bytes:
            self._clock.evict((self.entries, self.variants), now)
        return entry

    def get_stale(self, key: bytes, now: float) -> CachedAnswer | None:
        """The entry for ``key`` while it can be served, fresh or stale; never a failure (a
        SERVFAIL is cached for a few seconds, not kept to be served again). Local data and policy
        answers are never in this cache, so they are never served stale."""
        entry = self.table(key).get(key)
        if (entry is None or entry.expires_at + self.limits.stale_seconds <= now
                or entry.rcode_flags & 0xF == RCode.SERVFAIL or (entry.from_stale and entry.expires_at <= now)):
            return None
        return entry

    def discard(self, key: bytes) -> int:
        """Drop the answer under ``key``; a plain key takes its variants with it (each looked up:
        a walk of the variants would be most of the cache); how many went."""
        table = self.table(key)
        entry = table.pop(key, None)
        dropped = 0
        if entry is not None:
            self._clock.bytes -= entry.size
            dropped += 1
        if table is self.entries and self.variants:
            for suffix in _VARIANT_SUFFIXES:
                variant = self.variants.pop(key + suffix, None)
                if variant is not None:
                    self._clock.bytes -= variant.size
                    dropped += 1
        return dropped

    def flush(self, name: bytes, *, subtree: bool = False) -> int:
        """Drop the answers for ``name`` (the key's name part), or for it and all below."""
        plain = [k for k in self.entries
                 if k[:-4] == name or (subtree and is_subdomain(k[:-4], name))]
        variants = [k for k in self.variants
                    if k[:-5] == name or (subtree and is_subdomain(k[:-5], name))]
        self.drop(plain + variants)
        return len(plain) + len(variants)

    def drop(self, keys: list[bytes]) -> int:
        """Drop the answers under ``keys``, each key alone: for a list that has the variants
        already, where ``discard`` would try every variant suffix (127) of each plain key; how
        many there were."""
        dropped = 0
        for key in keys:
            entry = self.table(key).pop(key, None)
            if entry is not None:
                self._clock.bytes -= entry.size
                dropped += 1
        return dropped

    def clear(self) -> None:
        self.entries.clear()
        self.variants.clear()
        self._clock.bytes = 0

    def __len__(self) -> int:
        return len(self.entries) + len(self.variants)
