"""Aggressive use of DNSSEC-validated cache (RFC 8198): NXDOMAIN and NODATA from cached NSEC.

Theory of operation. Every NSEC or NSEC3 record the validator found secure in a negative answer
is kept here, per signed zone, in order (NSEC by canonical name, RFC 4034 §6.1; NSEC3 by hash),
with the zone's SOA from that answer. A question the caches cannot answer is first looked up
here (``answer``):
- NSEC: a span covering the name, plus one covering the wildcard at the closest encloser, prove
  an NXDOMAIN; an NSEC at the name without the type (nor CNAME) proves a NODATA;
- NSEC3 (RFC 5155 §8, with the zone's salt and iterations): a record matching the name's hash
  without the type proves a NODATA; a closest encloser proof — a record matching an ancestor, one
  covering the next closer name, one covering the wildcard at the encloser — an NXDOMAIN. An
  opt-out span proves nothing (an unsigned delegation may hide in it), so it is not used.
The reply carries those records, their RRSIGs and the SOA, so a validating client can check it as
if the zone had sent it. An entry lives min(TTL, SOA MINIMUM) (RFC 8198 §5.4: the negative TTL);
the caller checks that the zone's keys are still secure before asking.

Deliberately not here: wildcard synthesis of positive answers.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ispd.dns import dnssec
from ispd.dns.wire import RR, RRType, is_subdomain, label_count

MAX_RECORDS = 100_000  # across zones; beyond it the index starts afresh


@dataclass(slots=True)
class _Span:
    owner: bytes
    next_name: bytes
    bitmap: bytes
    expires_at: float
    records: tuple[RR, ...]  # the NSEC and its RRSIGs, as the zone sent them


@dataclass(slots=True)
class _Zone:
    soa: tuple[RR, ...] = ()  # the SOA and its RRSIGs
    soa_expires_at: float = 0.0
    keys: list[tuple[bytes, ...]] = field(default_factory=list)  # canonical keys, sorted
    spans: dict[tuple[bytes, ...], _Span] = field(default_factory=dict)
    # NSEC3: the chain's parameters, and the records by owner hash
    params: tuple[bytes, int] | None = None
    hashes: list[bytes] = field(default_factory=list)  # sorted
    hashed: dict[bytes, tuple[dnssec.NSEC3, float, tuple[RR, ...]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Synthesised:
    nxdomain: bool
    soa: list[RR]  # SOA, then its RRSIGs
    proof: list[RR]  # NSEC records with their RRSIGs
    ttl: int


class NsecIndex:
    def __init__(self) -> None:
        self.zones: dict[bytes, _Zone] = {}
        self.records = 0

    def learn(self, zone: bytes, soa: list[RR], proof: list[RR], ttl: float, now: float) -> None:
        """Keep the NSEC and NSEC3 records of a secure negative answer from ``zone``."""
        nsecs = [rr for rr in proof if rr.rtype in (RRType.NSEC, RRType.NSEC3) and is_subdomain(rr.name, zone)]
        if not nsecs or not soa:
            return
        if self.records + len(nsecs) > MAX_RECORDS:
            self.zones.clear()
            self.records = 0
        entry = self.zones.setdefault(zone, _Zone())
        expires_at = now + ttl
        entry.soa = tuple(rr for rr in soa + proof if rr.rtype == RRType.SOA or _covers_type(rr, RRType.SOA))
        entry.soa_expires_at = max(entry.soa_expires_at, expires_at)
        for nsec in nsecs:
            sigs = tuple(rr for rr in proof if rr.name == nsec.name and _covers_type(rr, nsec.rtype))
            if nsec.rtype == RRType.NSEC3:
                self._learn_nsec3(entry, nsec, sigs, expires_at)
                continue
            try:
                next_name, bitmap = dnssec.parse_nsec(nsec.rdata)
            except dnssec.DNSSECError:
                continue
            key = dnssec.canonical_key(nsec.name)
            if key not in entry.spans:
                bisect.insort(entry.keys, key)
                self.records += 1
            entry.spans[key] = _Span(nsec.name, next_name, bitmap, expires_at, (nsec, *sigs))

    def _learn_nsec3(self, entry: _Zone, record: RR, sigs: tuple[RR, ...], expires_at: float) -> None:
        try:
            nsec3 = dnssec.parse_nsec3(record.name, record.rdata)
        except dnssec.DNSSECError:
            return
        if nsec3.hash_algorithm != 1 or nsec3.iterations > dnssec.MAX_NSEC3_ITERATIONS:
            return
        params = (nsec3.salt, nsec3.iterations)
        if entry.params != params:  # the zone was re-salted: the old chain is another chain
            self.records -= len(entry.hashed)
            entry.params, entry.hashes, entry.hashed = params, [], {}
        if nsec3.owner_hash not in entry.hashed:
            bisect.insort(entry.hashes, nsec3.owner_hash)
            self.records += 1
        entry.hashed[nsec3.owner_hash] = (nsec3, expires_at, (record, *sigs))

    def forget(self, name: bytes | None = None) -> int:
        """Drop the records of the zone ``name`` is in and of every zone below ``name`` (all
        without one), for a cache flush: what they prove would otherwise still answer the flushed
        names; how many records went."""
        if name is None:
            zones = list(self.zones)
        else:
            zones = [zone for zone in self.zones if is_subdomain(zone, name)]
            enclosing = self.zone_of(name)
            if enclosing is not None and enclosing not in zones:
                zones.append(enclosing)
        dropped = 0
        for zone in zones:
            entry = self.zones.pop(zone)
            dropped += len(entry.spans) + len(entry.hashed)
        self.records -= dropped
        return dropped

    def zone_of(self, name: bytes) -> bytes | None:
        """The deepest zone with spans at or above ``name``."""
        while True:
            if name in self.zones:
                return name
            if name == b"\x00":
                return None
            name = name[name[0] + 1:]

    def answer(self, zone: bytes, name: bytes, qtype: int, now: float,
               budget: dnssec.Nsec3Budget | None = None) -> Synthesised | None:
        entry = self.zones.get(zone)
        if entry is None or entry.soa_expires_at <= now or (qtype == RRType.DS and name == zone):
            return None  # (the DS at a zone's apex is its parent's to deny)
        if entry.hashed and not entry.spans:
            return self._answer_nsec3(entry, zone, name, qtype, now, budget)
        span = self._at_or_before(entry, name, now)
        if span is None:
            return None
        if span.owner == name:  # NODATA, if the type (or a CNAME) is not there
            # No bitmap lists ANY: a NODATA for it would deny the records the name has.
            if qtype == RRType.ANY or dnssec.bitmap_has(span.bitmap, qtype) \
                    or dnssec.bitmap_has(span.bitmap, RRType.CNAME):
                return None
            if dnssec.parent_side(span.bitmap) and qtype != RRType.DS:
                return None  # a delegation: the child answers for its names
            return self._reply(entry, False, [span], now)
        if not _spans(span, name) or dnssec.bitmap_has(span.bitmap, RRType.DNAME):
            return None
        name_key = dnssec.canonical_key(name)
        if dnssec.canonical_key(span.next_name)[:len(name_key)] == name_key:
            # The next name lies below the one asked: that is an empty non-terminal, which exists
            # (RFC 4035 §3.1.3.2), so no NXDOMAIN; its NODATA is left to the zone.
            return None
        if dnssec.parent_side(span.bitmap) and is_subdomain(name, span.owner):
            return None  # below a delegation: not this zone's to deny
        closest = max(dnssec.common_ancestor(name, span.owner), dnssec.common_ancestor(name, span.next_name),
                      key=label_count)
        wildcard = b"\x01*" + closest
        wild_span = self._at_or_before(entry, wildcard, now)
        if wild_span is None or not _spans(wild_span, wildcard):
            return None  # the wildcard may exist: only the zone can say
        return self._reply(entry, True, [span] if wild_span is span else [span, wild_span], now)

    def _answer_nsec3(self, entry: _Zone, zone: bytes, name: bytes, qtype: int, now: float,
                      budget: dnssec.Nsec3Budget | None) -> Synthesised | None:
        assert entry.params is not None
        salt, iterations = entry.params

        def nsec3_hash(owner: bytes) -> bytes:
            if budget is not None:
                budget.spend(iterations)  # Nsec3Exhausted past it (CVE-2023-50868)
            return dnssec.nsec3_hash(owner, salt, iterations)

        def matching(owner: bytes) -> tuple[dnssec.NSEC3, float, tuple[RR, ...]] | None:
            found = entry.hashed.get(nsec3_hash(owner))
            return found if found is not None and found[1] > now else None

        def covering(owner: bytes) -> tuple[dnssec.NSEC3, float, tuple[RR, ...]] | None:
            digest = nsec3_hash(owner)
            index = bisect.bisect_right(entry.hashes, digest) - 1  # wraps to the last when before the first
            found = entry.hashed[entry.hashes[index]]
            nsec3 = found[0]
            if found[1] <= now or nsec3.opt_out or not dnssec.covers(nsec3.owner_hash, nsec3.next_hash, digest):
                return None
            return found

        exact = matching(name)
        if exact is not None:  # RFC 5155 §8.5: NODATA
            bitmap = exact[0].bitmap
            if qtype == RRType.ANY or dnssec.bitmap_has(bitmap, qtype) or dnssec.bitmap_has(bitmap, RRType.CNAME):
                return None
            if dnssec.parent_side(bitmap) and qtype != RRType.DS:
                return None
            return self._reply3(entry, False, [exact], now)
        ancestor = name
        while ancestor != zone:  # §8.3: the closest encloser proof
            child, ancestor = ancestor, ancestor[ancestor[0] + 1:]
            encloser = matching(ancestor)
            if encloser is None:
                continue
            bitmap = encloser[0].bitmap
            if dnssec.cut_below(bitmap):
                return None
            next_closer, wildcard = covering(child), covering(b"\x01*" + ancestor)
            if next_closer is None or wildcard is None:
                return None
            return self._reply3(entry, True, [encloser, next_closer, wildcard], now)
        return None

    def _reply3(self, entry: _Zone, nxdomain: bool, found: list[tuple[dnssec.NSEC3, float, tuple[RR, ...]]],
                now: float) -> Synthesised:
        ttl = max(0, int(min([entry.soa_expires_at, *(expiry for _, expiry, _ in found)]) - now))
        unique = list({id(records): records for _, _, records in found}.values())
        return Synthesised(nxdomain, [_with_ttl(rr, ttl) for rr in entry.soa],
                           [_with_ttl(rr, ttl) for records in unique for rr in records], ttl)

    def _at_or_before(self, entry: _Zone, name: bytes, now: float) -> _Span | None:
        key = dnssec.canonical_key(name)
        index = bisect.bisect_right(entry.keys, key) - 1
        if index < 0:
            index = len(entry.keys) - 1  # before the first owner: the last span wraps round
        if index < 0:
            return None
        span = entry.spans[entry.keys[index]]
        return span if span.expires_at > now else None

    def _reply(self, entry: _Zone, nxdomain: bool, spans: list[_Span], now: float) -> Synthesised:
        ttl = max(0, int(min([entry.soa_expires_at, *(s.expires_at for s in spans)]) - now))
        soa = [_with_ttl(rr, ttl) for rr in entry.soa]
        proof = [_with_ttl(rr, ttl) for span in spans for rr in span.records]
        return Synthesised(nxdomain, soa, proof, ttl)


def _spans(span: _Span, name: bytes) -> bool:
    return dnssec.covers(dnssec.canonical_key(span.owner), dnssec.canonical_key(span.next_name),
                         dnssec.canonical_key(name))


def _covers_type(rr: RR, rtype: int) -> bool:
    return rr.rtype == RRType.RRSIG and len(rr.rdata) >= 2 and (rr.rdata[0] << 8 | rr.rdata[1]) == rtype


def _with_ttl(rr: RR, ttl: int) -> RR:
    return RR(rr.name, rr.rtype, rr.rclass, ttl, rr.rdata)
