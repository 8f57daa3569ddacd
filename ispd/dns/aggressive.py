"""Aggressive use of DNSSEC-validated cache (RFC 8198): NXDOMAIN and NODATA from cached NSEC.

Theory of operation. Every NSEC record the validator found secure in a negative answer is kept
here, per signed zone, in canonical order (RFC 4034 §6.1), with the zone's SOA from that answer.
A question the caches cannot answer is first looked up here (``answer``): an NSEC whose span
covers the name, plus one covering the wildcard at the closest encloser, prove an NXDOMAIN; an
NSEC at the name without the type (nor CNAME) proves a NODATA. The reply carries those NSEC
records, their RRSIGs and the SOA, so a validating client can check it as if the zone had sent
it. An entry lives min(NSEC TTL, SOA MINIMUM) (RFC 8198 §5.4: the negative TTL); the caller
checks that the zone's keys are still secure before asking.

Deliberately not here: NSEC3 (hashed names make a span useless for other names' hashes without
hashing each; Unbound also does NSEC only), and wildcard synthesis of positive answers.
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
        """Keep the NSEC records of a secure negative answer from ``zone``."""
        nsecs = [rr for rr in proof if rr.rtype == RRType.NSEC and is_subdomain(rr.name, zone)]
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
            try:
                next_name, bitmap = dnssec.parse_nsec(nsec.rdata)
            except dnssec.DNSSECError:
                continue
            key = dnssec.canonical_key(nsec.name)
            if key not in entry.spans:
                bisect.insort(entry.keys, key)
                self.records += 1
            sigs = tuple(rr for rr in proof if rr.name == nsec.name and _covers_type(rr, RRType.NSEC))
            entry.spans[key] = _Span(nsec.name, next_name, bitmap, expires_at, (nsec, *sigs))

    def zone_of(self, name: bytes) -> bytes | None:
        """The deepest zone with spans at or above ``name``."""
        while True:
            if name in self.zones:
                return name
            if name == b"\x00":
                return None
            name = name[name[0] + 1:]

    def answer(self, zone: bytes, name: bytes, qtype: int, now: float) -> Synthesised | None:
        entry = self.zones.get(zone)
        if entry is None or entry.soa_expires_at <= now:
            return None
        span = self._at_or_before(entry, name, now)
        if span is None:
            return None
        if span.owner == name:  # NODATA, if the type (or a CNAME) is not there
            if dnssec.bitmap_has(span.bitmap, qtype) or dnssec.bitmap_has(span.bitmap, RRType.CNAME):
                return None
            if dnssec.bitmap_has(span.bitmap, RRType.NS) and not dnssec.bitmap_has(span.bitmap, RRType.SOA) \
                    and qtype != RRType.DS:
                return None  # a delegation: the child answers for its names
            return self._reply(entry, False, [span], now)
        if not _spans(span, name) or dnssec.bitmap_has(span.bitmap, RRType.DNAME):
            return None
        if dnssec.bitmap_has(span.bitmap, RRType.NS) and not dnssec.bitmap_has(span.bitmap, RRType.SOA) \
                and is_subdomain(name, span.owner):
            return None  # below a delegation: not this zone's to deny
        closest = max(dnssec.common_ancestor(name, span.owner), dnssec.common_ancestor(name, span.next_name),
                      key=label_count)
        wildcard = b"\x01*" + closest
        wild_span = self._at_or_before(entry, wildcard, now)
        if wild_span is None or not _spans(wild_span, wildcard):
            return None  # the wildcard may exist: only the zone can say
        return self._reply(entry, True, [span] if wild_span is span else [span, wild_span], now)

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
