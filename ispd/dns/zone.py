"""Authoritative zones: zone files in, answers out, for the data the resolver serves itself.

Theory of operation. A ``Zone`` holds the RRsets of one zone keyed by owner name and type, plus
three indexes the lookup needs: how many owner names lie at or below each name (so empty
non-terminals exist, RFC 4592 §2.2.2), the zone cuts below the origin (names with NS) and the
DNAME owners. ``Zone.lookup(qname, qtype)`` is RFC 1034 §4.3.2 step 3 for this one zone:

- walk down from the origin towards QNAME, one existing name at a time; a zone cut met on the
  way is a referral (step 3b: NS in authority, in-zone addresses of the servers as glue,
  AA off), a DNAME on a proper ancestor substitutes the name and synthesises a CNAME
  (RFC 6672 §3.2); the deepest existing name reached is the closest encloser;
- QNAME itself exists: its RRset of QTYPE (step 3a), every RRset for ANY, a CNAME to follow
  (step 3a again, with the target), or NODATA (an empty non-terminal is NODATA too);
- QNAME does not exist: ``*.<closest encloser>`` answers with its RRsets under QNAME's name
  (step 3c, RFC 4592 §3.3.1: so a wildcard never matches a name that exists nor anything below
  one), else NXDOMAIN.
A CNAME or DNAME chain is followed while its target stays inside the zone and not below a cut
(as BIND and NSD do); when it leaves, the answer says where (``AnswerKind.CNAME``,
``next_name``) and the caller resolves the rest. Negative answers carry the SOA with TTL
min(SOA TTL, MINIMUM) (RFC 2308 §3); per RFC 6604 the rcode is that of the last name of a chain.

Zone files (RFC 1035 §5) are read by our own line-aware tokenizer — $ORIGIN, $TTL, ``@``,
relative names, an owner left blank to repeat the previous one, comments, parentheses, quoted
strings, ``\\DDD`` escapes, TTLs with units (``1h30m``) — so every error can name its file and
line. The rdata of the common types (A, AAAA, NS, CNAME, DNAME, PTR, MX, SOA, SRV, TXT, SPF) is
encoded here, fast enough for 100 000-record policy zones; the long tail (CAA, HTTPS, NAPTR,
SSHFP, TLSA, DS, DNSKEY, LOC, RP, RRSIG, NSEC) goes through dnslib's presentation-format
parsers and comes back through ``wire.decode_message``, so names inside rdata are uncompressed;
any type can be written in RFC 3597 generic form (``\\# <length> <hex>``). dnslib's own
ZoneParser is not used: it loses line numbers, reads ``\\DDD`` as octal, takes ``@`` in rdata
for a label and does not know DNAME.

Deliberately not here: $INCLUDE and $GENERATE (an error that says so), classes other than IN,
DNSSEC signing and additional-section processing for answers (a recursive resolver's clients
do not need it); data occluded by a zone cut or DNAME is kept but only ever served as glue.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import NamedTuple

from ispd.dns.wire import (
    CLASS_IN,
    HEADER,
    MAX_LABEL_LENGTH,
    MAX_NAME_LENGTH,
    ROOT,
    RR,
    RR_FIXED,
    RCode,
    RRType,
    WireError,
    decode_message,
    is_subdomain,
    name_from_text,
    name_to_text,
    parent_name,
    rdata_name,
    soa_minimum,
    type_text,
)

MAX_CHAIN = 16  # CNAME/DNAME hops followed inside one zone before giving up (a loop)
MAX_TTL = 0x7FFFFFFF  # RFC 2181 §8
_WILDCARD_LABEL = b"\x01*"
# Types that may share an owner with a CNAME (RFC 2181 §10.1, RFC 4035 §2.5).
_CNAME_COMPANIONS = frozenset({RRType.CNAME, RRType.RRSIG, RRType.NSEC, RRType.NSEC3})
# Types that are not data a zone holds (RFC 6895 §3.1: meta and query types).
_NOT_DATA = frozenset({RRType.OPT, RRType.TKEY, RRType.TSIG, RRType.IXFR, RRType.AXFR,
                       RRType.MAILA, RRType.MAILB, RRType.ANY})
_ADDRESS_TYPES = (RRType.A, RRType.AAAA)


class ZoneError(ValueError):
    """A zone that cannot be loaded; the message names the file and line and what is wrong."""


class AnswerKind(IntEnum):
    ANSWER = 0  # records for the question (after any chain inside the zone)
    NODATA = 1  # the name exists, the type does not (RFC 2308 §2.2)
    NXDOMAIN = 2  # the name does not exist (RFC 2308 §2.1)
    CNAME = 3  # a CNAME/DNAME chain left the zone: the caller resolves ``next_name`` and appends
    REFERRAL = 4  # below a zone cut (RFC 1034 §4.3.2 step 3b)


@dataclass(frozen=True, slots=True)
class ZoneAnswer:
    rcode: int
    authoritative: bool
    answer: list[RR]
    authority: list[RR]
    additional: list[RR]
    kind: AnswerKind = AnswerKind.ANSWER
    next_name: bytes | None = None  # the name a chain left the zone for (kind CNAME)


class Delegation(NamedTuple):
    """A zone cut below a zone's origin, as the zone's referral gives it."""
    name: bytes
    ns_names: tuple[bytes, ...]
    addresses: tuple[str, ...]  # the zone's own A/AAAA records for those names (its glue)


class ZoneRecord(NamedTuple):
    line: int
    rr: RR


def _under_wildcard(name: bytes) -> bool:
    """Whether a label of ``name`` is ``*``: a wildcard's owner, or a name below one that makes
    the wildcard exist as an empty non-terminal (RFC 4592 §4.9)."""
    i = 0
    while name[i]:
        if name[i] == 1 and name[i + 1] == 0x2A:
            return True
        i += name[i] + 1
    return False


def _existence_delta(existing: dict[bytes, int], name: bytes, origin: bytes, delta: int) -> list[bytes]:
    """Add ``delta`` to the count of owner names at or below each of ``name``'s ancestors inside
    the zone; return the names whose existence flipped (they appeared or vanished)."""
    flipped = []
    stop = len(origin)
    i = 0
    while True:
        suffix = name[i:]
        count = existing.get(suffix, 0) + delta
        if count:
            existing[suffix] = count
            if count == delta:  # from 0
                flipped.append(suffix)
        else:
            del existing[suffix]
            flipped.append(suffix)
        if len(suffix) <= stop:
            return flipped
        i += name[i] + 1


class Zone:
    """One zone's RRsets (see the module comment). Mutable so local data can change live; the
    lookup never mutates."""

    __slots__ = ("_count", "_cuts", "_dnames", "_existing", "_nodes", "_wildcards", "origin")

    def __init__(self, origin: bytes) -> None:
        self.origin = origin.lower()
        self._nodes: dict[bytes, dict[int, list[RR]]] = {}
        self._existing: dict[bytes, int] = {}
        self._cuts: set[bytes] = set()
        self._dnames: set[bytes] = set()
        self._wildcards = 0  # owner names at or below a wildcard name (none: no synthesis to look for)
        self._count = 0

    # --- building ---

    def __len__(self) -> int:
        return self._count

    @property
    def soa(self) -> RR | None:
        node = self._nodes.get(self.origin)
        rrset = node.get(RRType.SOA) if node else None
        return rrset[0] if rrset else None

    def names(self) -> Iterator[bytes]:
        return iter(self._nodes)

    def rrsets(self, name: bytes) -> dict[int, list[RR]]:
        """The RRsets at ``name`` (a copy), by type."""
        node = self._nodes.get(name)
        return {rtype: list(rrset) for rtype, rrset in node.items()} if node else {}

    def get_rrset(self, name: bytes, rtype: int) -> list[RR]:
        node = self._nodes.get(name)
        rrset = node.get(rtype) if node else None
        return list(rrset) if rrset else []

    def exists(self, name: bytes) -> bool:
        """``name`` owns records or lies above a name that does (an empty non-terminal)."""
        return name in self._existing

    def delegations(self) -> list[Delegation]:
        """The zone cuts below the origin (a cut below another is occluded and left out)."""
        cuts = self._cuts
        found = []
        for cut in cuts:
            parent = cut
            while parent != self.origin:
                parent = parent_name(parent)
                if parent in cuts:
                    break
            else:
                ns = self._nodes[cut][RRType.NS]
                found.append(Delegation(cut, tuple(rdata_name(r.rdata) for r in ns),
                                        tuple(_address_text(glue.rdata) for glue in self._glue(ns))))
        return found

    def _check(self, rr: RR, node: dict[int, list[RR]] | None) -> None:
        if not is_subdomain(rr.name, self.origin):
            raise ZoneError(f"{name_to_text(rr.name)} is outside the zone {name_to_text(self.origin)}")
        if rr.rclass != CLASS_IN:
            raise ZoneError(f"class {rr.rclass}: only class IN is served")
        if rr.rtype in _NOT_DATA:
            raise ZoneError(f"type {type_text(rr.rtype)} cannot be zone data")
        if rr.rtype == RRType.SOA:
            if rr.name != self.origin:
                raise ZoneError(f"SOA at {name_to_text(rr.name)}: a zone's SOA belongs at its origin "
                                f"{name_to_text(self.origin)}")
            if node and RRType.SOA in node and rr.rdata not in {r.rdata for r in node[RRType.SOA]}:
                raise ZoneError("a second SOA record: a zone has exactly one")
        if not node:
            return
        if rr.rtype == RRType.CNAME:
            others = [t for t in node if t not in _CNAME_COMPANIONS]
            if others:
                raise ZoneError(f"CNAME at {name_to_text(rr.name)}, which also has "
                                f"{type_text(others[0])} data (RFC 1034 §3.6.2: a CNAME is alone)")
            existing = node.get(RRType.CNAME)
            if existing and existing[0].rdata != rr.rdata:
                raise ZoneError(f"a second CNAME at {name_to_text(rr.name)}: a name has at most one")
        elif rr.rtype not in _CNAME_COMPANIONS and RRType.CNAME in node:
            raise ZoneError(f"{type_text(rr.rtype)} at {name_to_text(rr.name)}, which has a CNAME "
                            f"(RFC 1034 §3.6.2: a CNAME is alone)")
        if rr.rtype == RRType.DNAME:
            existing = node.get(RRType.DNAME)
            if existing and existing[0].rdata != rr.rdata:
                raise ZoneError(f"a second DNAME at {name_to_text(rr.name)} (RFC 6672 §2.4: at most one)")

    def add(self, rr: RR) -> list[bytes]:
        """Add one record (checked: in the zone, class IN, CNAME alone, one SOA at the origin;
        raises ``ZoneError``). A record already present is ignored (RFC 2181 §5); an RRset whose
        TTLs differ takes the lowest (RFC 2181 §5.2). Returns the names that came into
        existence (the owner and any new empty non-terminals above it)."""
        node = self._nodes.get(rr.name)
        self._check(rr, node)
        flipped: list[bytes] = []
        if node is None:
            node = self._nodes[rr.name] = {}
            flipped = _existence_delta(self._existing, rr.name, self.origin, 1)
            if _under_wildcard(rr.name):
                self._wildcards += 1
        rrset = node.get(rr.rtype)
        if rrset is None:
            node[rr.rtype] = [rr]
            self._indexed(rr.name, rr.rtype, True)
        else:
            for old in rrset:
                if old.rdata == rr.rdata:
                    if rr.ttl < old.ttl:
                        node[rr.rtype] = [_with_ttl(r, rr.ttl) for r in rrset]
                    return flipped
            if rr.ttl != rrset[0].ttl:
                ttl = min(rr.ttl, rrset[0].ttl)
                node[rr.rtype] = rrset = [_with_ttl(r, ttl) for r in rrset]
                rr = _with_ttl(rr, ttl)
            rrset.append(rr)
        self._count += 1
        return flipped

    def replace_rrset(self, name: bytes, rtype: int, records: list[RR]) -> list[bytes]:
        """Make ``records`` (owner ``name``, type ``rtype``) the whole RRset; returns the names
        whose existence changed."""
        flipped = self.remove_rrset(name, rtype)
        added: list[bytes] = []
        for rr in records:
            added += self.add(rr)
        return flipped + added

    def remove_rrset(self, name: bytes, rtype: int) -> list[bytes]:
        """Remove the RRset; returns the names that stopped existing."""
        node = self._nodes.get(name)
        if not node or rtype not in node:
            return []
        self._count -= len(node.pop(rtype))
        self._indexed(name, rtype, False)
        if node:
            return []
        del self._nodes[name]
        if _under_wildcard(name):
            self._wildcards -= 1
        return _existence_delta(self._existing, name, self.origin, -1)

    def _indexed(self, name: bytes, rtype: int, present: bool) -> None:
        if rtype == RRType.NS and name != self.origin:
            (self._cuts.add if present else self._cuts.discard)(name)
        elif rtype == RRType.DNAME:
            (self._dnames.add if present else self._dnames.discard)(name)

    def validate(self) -> None:
        """What a loaded zone must satisfy beyond each record: exactly one SOA, at the origin."""
        if self.soa is None:
            raise ZoneError(f"no SOA record at the origin {name_to_text(self.origin)}")

    # --- lookup ---

    def negative_soa(self) -> list[RR]:
        """The SOA for a negative answer, TTL min(SOA TTL, MINIMUM) (RFC 2308 §3)."""
        soa = self.soa
        if soa is None:
            return []
        return [_with_ttl(soa, min(soa.ttl, soa_minimum(soa.rdata)))]

    def lookup(self, qname: bytes, qtype: int) -> ZoneAnswer:
        """Answer ``qname`` (lowercased wire form, at or below the origin) and ``qtype`` from
        this zone alone (RFC 1034 §4.3.2 step 3; see the module comment)."""
        if not is_subdomain(qname, self.origin):
            raise ValueError(f"{name_to_text(qname)} is not in the zone {name_to_text(self.origin)}")
        answer: list[RR] = []
        name = qname
        seen: set[bytes] | None = None
        for _ in range(MAX_CHAIN):
            step = self._step(name, qtype, answer)
            if isinstance(step, ZoneAnswer):
                return step
            if not is_subdomain(step, self.origin):
                return ZoneAnswer(RCode.NOERROR, True, answer, [], [], AnswerKind.CNAME, step)
            if seen is None:
                seen = {name}
            if step in seen:
                break
            seen.add(step)
            name = step
        # A loop (or a very long chain) inside the zone: the chain so far, as BIND answers it.
        return ZoneAnswer(RCode.NOERROR, True, answer, [], [], AnswerKind.ANSWER)

    def _step(self, name: bytes, qtype: int, answer: list[RR]) -> ZoneAnswer | bytes:
        """One name of a chain: a finished answer, or the next name to look up (records for
        this name already appended to ``answer``)."""
        existing = self._existing
        nodes = self._nodes
        # Walk down from the origin: label starts of ``name`` below the origin, top-down.
        starts: list[int] = []
        i = 0
        stop = len(name) - len(self.origin)
        while i < stop:
            starts.append(i)
            i += name[i] + 1
        encloser = self.origin
        dnames = self._dnames
        cuts = self._cuts
        if dnames and self.origin in dnames and name != self.origin:
            return self._dname(name, self.origin, answer)
        found = True
        for start in reversed(starts):
            here = name[start:] if start else name
            if here not in existing:
                found = False
                break
            encloser = here
            if here in cuts and not (start == 0 and qtype == RRType.DS):
                return self._referral(name, here, answer)
            if start and here in dnames:
                return self._dname(name, here, answer)
        if found:
            node = nodes.get(name)
            if node is None:  # RFC 4592 §2.2.2: an empty non-terminal exists, with no data
                return self._negative(answer, AnswerKind.NODATA)
            return self._from_node(node, name, qtype, answer, None)
        # RFC 4592 §3.3.1: the source of synthesis is "*." + the closest encloser.
        if self._wildcards:
            source = _WILDCARD_LABEL + encloser
            if source in existing:
                node = nodes.get(source)
                if node is None:
                    return self._negative(answer, AnswerKind.NODATA)
                return self._from_node(node, name, qtype, answer, name)
        return self._negative(answer, AnswerKind.NXDOMAIN)

    def _from_node(self, node: dict[int, list[RR]], name: bytes, qtype: int, answer: list[RR],
                   owner: bytes | None) -> ZoneAnswer | bytes:
        """The answer from an existing node; ``owner`` replaces record owners (a wildcard)."""
        if qtype == RRType.ANY:
            for rrset in node.values():
                answer.extend(_owned(rrset, owner))
            return ZoneAnswer(RCode.NOERROR, True, answer, [], [], AnswerKind.ANSWER)
        matching = node.get(qtype)
        if matching is not None:
            answer.extend(_owned(matching, owner))
            return ZoneAnswer(RCode.NOERROR, True, answer, [], [], AnswerKind.ANSWER)
        cname = node.get(RRType.CNAME)
        if cname is not None:  # RFC 1034 §4.3.2 step 3a: answer the CNAME, go on with its target
            answer.extend(_owned(cname, owner))
            return rdata_name(cname[0].rdata)
        return self._negative(answer, AnswerKind.NODATA)

    def _negative(self, answer: list[RR], kind: AnswerKind) -> ZoneAnswer:
        # RFC 6604 §2.1: after a chain, the rcode describes the last name.
        rcode = RCode.NXDOMAIN if kind == AnswerKind.NXDOMAIN else RCode.NOERROR
        return ZoneAnswer(rcode, True, answer, self.negative_soa(), [], kind)

    def _dname(self, name: bytes, owner: bytes, answer: list[RR]) -> ZoneAnswer | bytes:
        dname = self._nodes[owner][RRType.DNAME][0]
        target = name[:len(name) - len(owner)] + dname.rdata.lower()
        answer.append(dname)
        if len(target) > MAX_NAME_LENGTH:  # RFC 6672 §2.2: the substitution overflows
            return ZoneAnswer(RCode.YXDOMAIN, True, answer, [], [], AnswerKind.ANSWER)
        # RFC 6672 §3.2: the synthesised CNAME has the DNAME's TTL.
        answer.append(RR(name, RRType.CNAME, CLASS_IN, dname.ttl, target))
        return target

    def _referral(self, name: bytes, cut: bytes, answer: list[RR]) -> ZoneAnswer:
        if answer:  # a chain went below a cut: the caller resolves the rest
            return ZoneAnswer(RCode.NOERROR, True, answer, [], [], AnswerKind.CNAME, name)
        ns = list(self._nodes[cut][RRType.NS])
        return ZoneAnswer(RCode.NOERROR, False, [], ns, self._glue(ns), AnswerKind.REFERRAL)

    def _glue(self, ns: list[RR]) -> list[RR]:
        """The zone's A and AAAA records of the servers ``ns`` names, those inside it."""
        glue: list[RR] = []
        for record in ns:
            target = rdata_name(record.rdata)
            node = self._nodes.get(target)
            if node is not None and is_subdomain(target, self.origin):
                for rtype in _ADDRESS_TYPES:
                    glue.extend(node.get(rtype, ()))
        return glue


def _address_text(rdata: bytes) -> str:
    return str(IPv4Address(rdata) if len(rdata) == 4 else IPv6Address(rdata))


def _with_ttl(rr: RR, ttl: int) -> RR:
    return RR(rr.name, rr.rtype, rr.rclass, ttl, rr.rdata)


def _owned(rrset: list[RR], owner: bytes | None) -> list[RR]:
    if owner is None:
        return rrset
    return [RR(owner, rr.rtype, rr.rclass, rr.ttl, rr.rdata) for rr in rrset]


# --- zone files ------------------------------------------------------------------------------

class _RecordError(Exception):
    """What is wrong with one record; the reader adds where."""


# Every run of digits but the last takes a unit: one way to match, so a long run of digits that
# does not end well fails at once (``(?:[0-9]+[wdhms]?)+`` tried each split of it: exponential).
_TTL_RE = re.compile(r"(?:[0-9]+[wdhmsWDHMS])*[0-9]+[wdhmsWDHMS]?")
_TTL_PART = re.compile(r"([0-9]+)([wdhmsWDHMS]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CLASSES_NOT_SERVED = frozenset({"CH", "CS", "HS", "NONE"})
_TYPE_BY_NAME = {t.name: int(t) for t in RRType if t not in _NOT_DATA}
_ESCAPE = re.compile(r"\\([0-9]{3}|.)", re.DOTALL)


def _parse_ttl(token: str, what: str = "TTL") -> int:
    if token.isascii() and token.isdigit():
        value = int(token)
    elif token.isascii() and _TTL_RE.fullmatch(token):
        value = sum(int(n) * _UNIT[u.lower()] for n, u in _TTL_PART.findall(token))
    else:
        raise _RecordError(f"bad {what} {token!r} (seconds, or units like 1h30m)")
    if value > MAX_TTL:
        raise _RecordError(f"{what} {token} is larger than {MAX_TTL} (RFC 2181 §8)")
    return value


def _looks_like_ttl(token: str) -> bool:
    return token[:1].isascii() and token[:1].isdigit()


def _number(token: str, bits: int, what: str) -> int:
    if not (token.isascii() and token.isdigit()):
        raise _RecordError(f"{what} {token!r} is not a number")
    value = int(token)
    if value >= 1 << bits:
        raise _RecordError(f"{what} {token} does not fit in {bits} bits")
    return value


def _unescape(text: str) -> bytes:
    """A character-string's text (quotes already gone) to bytes: ``\\DDD`` is a decimal byte,
    ``\\X`` is X (RFC 1035 §5.1)."""
    if "\\" not in text:
        return text.encode("utf-8", "surrogateescape")
    out = bytearray()
    last = 0
    for match in _ESCAPE.finditer(text):
        out += text[last:match.start()].encode("utf-8", "surrogateescape")
        escaped = match.group(1)
        if len(escaped) == 3:
            value = int(escaped)
            if value > 255:
                raise _RecordError(f"bad escape \\{escaped} (at most \\255)")
            out.append(value)
        else:
            out += escaped.encode("utf-8", "surrogateescape")
        last = match.end()
    rest = text[last:]
    if rest.endswith("\\"):
        raise _RecordError(f"dangling backslash in {text!r}")
    out += rest.encode("utf-8", "surrogateescape")
    return bytes(out)


def _final_dot_escaped(text: str) -> bool:
    backslashes = len(text) - 1 - len(text[:-1].rstrip("\\"))
    return backslashes % 2 == 1


class _Tokens(NamedTuple):
    words: list[str]
    quoted: list[bool] | None  # None when no word was quoted (the common case)


def _one_by_one(lines: list[str]) -> Iterator[str]:
    """``lines`` in order, each let go of once read. Zone files are read in an executor beside
    the data in use, and a million lines freed at once when the read was over held the event
    loop 0.1 s (a free does not let go of the GIL)."""
    lines.reverse()
    while lines:
        yield lines.pop()


class _Reader:
    """Reads one zone file's text into records (see the module comment)."""

    def __init__(self, text: str, origin: bytes | None, default_ttl: int, source: str,
                 skip_bad: bool) -> None:
        self.text = text
        self.origin = origin
        self.default_ttl = default_ttl
        self.source = source
        self.skip_bad = skip_bad
        self.problems: list[str] = []
        self.zone_ttl: int | None = None  # $TTL (RFC 2308 §4)
        self.last_ttl: int | None = None  # the last explicit TTL (RFC 1035 §5.1)
        self.last_owner: bytes | None = None
        self.records: list[ZoneRecord] = []

    def fail(self, line: int, message: str) -> None:
        text = f"{self.source}:{line}: {message}"
        if not self.skip_bad:
            raise ZoneError(text)
        self.problems.append(text)

    def read(self) -> list[ZoneRecord]:
        words: list[str] = []
        quoted: list[bool] | None = None
        depth = 0
        start = 0
        blank_owner = False
        for number, line in enumerate(_one_by_one(self.text.splitlines()), 1):
            if depth == 0:
                start = number
                blank_owner = line[:1] in (" ", "\t")
                words, quoted = [], None
            try:
                tokens, depth = _split(line, depth)
            except _RecordError as exc:
                self.fail(number, str(exc))
                depth, words = 0, []
                continue
            if tokens.quoted is not None or quoted is not None:
                quoted = (quoted if quoted is not None else [False] * len(words)) + (
                    tokens.quoted if tokens.quoted is not None else [False] * len(tokens.words))
            words += tokens.words
            if depth == 0 and words:
                try:
                    self.entry(words, quoted, blank_owner, start)
                except _RecordError as exc:
                    self.fail(start, str(exc))
        if depth:  # everything after it went into one record: not a bad record to skip
            raise ZoneError(f"{self.source}:{start}: parenthesis opened here is never closed (the rest of the "
                            f"file was read as one record)")
        return self.records

    def name(self, text: str) -> bytes:
        """A name in the file: absolute, ``@``, or relative to the current origin."""
        origin = self.origin
        if text == "@":
            if origin is None:
                raise _RecordError("@ used before any $ORIGIN (give the zone's origin)")
            return origin
        absolute = text.endswith(".") and not _final_dot_escaped(text)
        if not absolute and origin is None:
            raise _RecordError(f"relative name {text!r} before any $ORIGIN (give the zone's origin)")
        if text == ".":
            return ROOT
        suffix = ROOT if absolute or origin is None else origin
        if "\\" in text:
            try:
                wire = name_from_text(text if absolute else text + ".")
            except ValueError as exc:
                raise _RecordError(f"bad name {text!r}: {exc}") from None
            full = wire[:-1] + suffix
        else:
            body = text[:-1] if absolute else text
            out = bytearray()
            for label in body.split("."):
                if not label:
                    raise _RecordError(f"bad name {text!r}: empty label")
                if len(label) > MAX_LABEL_LENGTH:
                    raise _RecordError(f"bad name {text!r}: a label is longer than 63 bytes")
                if not label.isascii():
                    raise _RecordError(f"bad name {text!r}: not ASCII (write internationalised names as xn--)")
                out.append(len(label))
                out += label.encode("ascii")
            full = bytes(out) + suffix
        if len(full) > MAX_NAME_LENGTH:
            raise _RecordError(f"bad name {text!r}: longer than 255 bytes")
        return full.lower()

    def entry(self, words: list[str], quoted: list[bool] | None, blank_owner: bool, line: int) -> None:
        first = words[0]
        if not blank_owner and first.startswith("$") and not (quoted and quoted[0]):
            self.directive(words, line)
            return
        if blank_owner:
            if self.last_owner is None:
                raise _RecordError("no owner name, and no record before this one to take it from")
            owner = self.last_owner
            i = 0
        else:
            owner = self.last_owner = self.name(first)
            i = 1
        ttl: int | None = None
        rclass_seen = False
        n = len(words)
        for _ in range(2):  # RFC 1035 §5.1: [<TTL>] [<class>] or [<class>] [<TTL>]
            if i >= n:
                break
            token = words[i]
            if ttl is None and _looks_like_ttl(token):
                ttl = _parse_ttl(token)
                i += 1
            elif not rclass_seen and token.upper() == "IN":
                rclass_seen = True
                i += 1
            elif not rclass_seen and token.upper() in _CLASSES_NOT_SERVED:
                raise _RecordError(f"class {token}: only class IN is served")
            else:
                break
        if i >= n:
            raise _RecordError("no type after the owner name")
        rtype = _rtype(words[i])
        rdata_words = words[i + 1:]
        rdata_quoted = quoted[i + 1:] if quoted is not None else None
        rdata = self.rdata(rtype, rdata_words, rdata_quoted)
        if ttl is not None:
            self.last_ttl = ttl
        elif self.zone_ttl is not None:
            ttl = self.zone_ttl
        elif self.last_ttl is not None:
            ttl = self.last_ttl
        else:
            ttl = self.default_ttl
        self.records.append(ZoneRecord(line, RR(owner, rtype, CLASS_IN, ttl, rdata)))

    def directive(self, words: list[str], line: int) -> None:
        keyword = words[0].upper()
        if keyword == "$ORIGIN":
            if len(words) != 2:
                raise _RecordError("$ORIGIN takes one name")
            self.origin = self.name(words[1])
        elif keyword == "$TTL":
            if len(words) != 2:
                raise _RecordError("$TTL takes one TTL")
            self.zone_ttl = _parse_ttl(words[1], "$TTL")
        elif keyword in ("$INCLUDE", "$GENERATE"):
            raise _RecordError(f"{keyword} is not supported: write the records into this file")
        else:
            raise _RecordError(f"unknown directive {words[0]}")

    def rdata(self, rtype: int, words: list[str], quoted: list[bool] | None) -> bytes:
        if words and words[0] == "\\#" and not (quoted and quoted[0]):
            return _generic_rdata(rtype, words)
        encoder = _ENCODERS.get(rtype)
        if encoder is not None:
            return encoder(self, words)
        return self.dnslib_rdata(rtype, words)

    def dnslib_rdata(self, rtype: int, words: list[str]) -> bytes:
        import dnslib  # type: ignore[import-untyped]

        type_name = type_text(rtype)
        parser = dnslib.RDMAP.get(type_name)
        if parser is None:
            raise _RecordError(f"type {type_name} is not understood here: write its data in the "
                               f"RFC 3597 form \\# <length> <hex>")
        words = list(words)
        for index in _DNSLIB_NAME_FIELDS.get(rtype, ()):
            if index < len(words) and words[index] != ".":  # dnslib has no @ and drops a relative name's last label
                words[index] = name_to_text(self.name(words[index]))
        try:
            # (Inside: dnslib's own name parser takes an escaped dot, \046, for a separator,
            # and raised UnicodeError past the reader for an origin like a\..example.)
            origin = dnslib.DNSLabel(name_to_text(self.origin) if self.origin else ".")
            parsed = parser.fromZone(words, origin)
            record = dnslib.RR(".", rtype, rdata=parsed)
            packed = dnslib.DNSRecord(dnslib.DNSHeader(id=0), rr=[record]).pack()
        except Exception as exc:  # dnslib raises anything from IndexError to binascii.Error
            raise _RecordError(f"bad {type_name} data {' '.join(words)!r}: {exc or type(exc).__name__}") from None
        # Decoding the one-record message expands any compression dnslib applied in the rdata.
        return _decoded_rdata(rtype, bytes(packed), type_name)

    # --- rdata of the common types ---

    def a(self, words: list[str]) -> bytes:
        _expect(words, 1, "A", "an IPv4 address")
        try:
            return IPv4Address(words[0]).packed
        except ValueError:
            raise _RecordError(f"bad IPv4 address {words[0]!r} in A") from None

    def aaaa(self, words: list[str]) -> bytes:
        _expect(words, 1, "AAAA", "an IPv6 address")
        try:
            return IPv6Address(words[0]).packed
        except ValueError:
            raise _RecordError(f"bad IPv6 address {words[0]!r} in AAAA") from None

    def single_name(self, words: list[str]) -> bytes:
        _expect(words, 1, "this type", "one name")
        return self.name(words[0])

    def mx(self, words: list[str]) -> bytes:
        _expect(words, 2, "MX", "a preference and a name")
        return _number(words[0], 16, "MX preference").to_bytes(2, "big") + self.name(words[1])

    def srv(self, words: list[str]) -> bytes:
        _expect(words, 4, "SRV", "priority, weight, port and target")
        fixed = b"".join(_number(w, 16, f"SRV {what}").to_bytes(2, "big")
                         for w, what in zip(words[:3], ("priority", "weight", "port"), strict=True))
        return fixed + self.name(words[3])

    def soa(self, words: list[str]) -> bytes:
        _expect(words, 7, "SOA", "mname, rname, serial, refresh, retry, expire and minimum")
        out = self.name(words[0]) + self.name(words[1]) + _number(words[2], 32, "SOA serial").to_bytes(4, "big")
        for word, what in zip(words[3:], ("refresh", "retry", "expire", "minimum"), strict=True):
            out += _parse_ttl(word, f"SOA {what}").to_bytes(4, "big")
        return out

    def txt(self, words: list[str]) -> bytes:
        if not words:
            raise _RecordError("TXT needs at least one string")
        out = bytearray()
        for word in words:
            data = _unescape(word)
            if len(data) > 255:
                raise _RecordError(f"a TXT string of {len(data)} bytes (at most 255: split it into several)")
            out.append(len(data))
            out += data
        return bytes(out)


def _expect(words: list[str], count: int, type_name: str, what: str) -> None:
    if len(words) != count:
        raise _RecordError(f"{type_name} data is {what}; found {len(words)} field(s): {' '.join(words)!r}")


def _rtype(token: str) -> int:
    upper = token.upper()
    rtype = _TYPE_BY_NAME.get(upper)
    if rtype is not None:
        return rtype
    if upper.startswith("TYPE") and upper[4:].isascii() and upper[4:].isdigit():  # RFC 3597 §5
        value = int(upper[4:])
        if 0 < value < 65536 and value not in _NOT_DATA and not 128 <= value <= 255:
            return value
    raise _RecordError(f"unknown type {token!r}")


def _generic_rdata(rtype: int, words: list[str]) -> bytes:
    """RFC 3597 §5: ``\\# <length> <hex words>``."""
    if len(words) < 2 or not (words[1].isascii() and words[1].isdigit()):
        raise _RecordError("generic rdata is \\# <length> <hex>")
    length = int(words[1])
    try:
        data = bytes.fromhex("".join(words[2:]))
    except ValueError:
        raise _RecordError(f"generic rdata: bad hex {''.join(words[2:])!r}") from None
    if len(data) != length or length > 65535:
        raise _RecordError(f"generic rdata: length {length} but {len(data)} bytes of hex")
    message = HEADER.pack(0, 0, 0, 1, 0, 0) + ROOT + RR_FIXED.pack(rtype, CLASS_IN, 0, length) + data
    return _decoded_rdata(rtype, message, type_text(rtype), generic=True)


def _decoded_rdata(rtype: int, message: bytes, type_name: str, generic: bool = False) -> bytes:
    """The rdata of a one-record message, checked and uncompressed by our own decoder."""
    try:
        decoded = decode_message(message)
    except WireError as exc:
        raise _RecordError(f"bad {type_name} data: {exc}") from None
    rdata = bytes(decoded.answer[0].rdata)
    if generic and len(rdata) != len(message) - 23:  # a pointer would have changed the length
        raise _RecordError(f"generic {type_name} data holds a compressed name")
    return rdata


_ENCODERS: dict[int, Callable[[_Reader, list[str]], bytes]] = {
    RRType.A: _Reader.a,
    RRType.AAAA: _Reader.aaaa,
    RRType.NS: _Reader.single_name,
    RRType.CNAME: _Reader.single_name,
    RRType.DNAME: _Reader.single_name,
    RRType.PTR: _Reader.single_name,
    RRType.MX: _Reader.mx,
    RRType.SRV: _Reader.srv,
    RRType.SOA: _Reader.soa,
    RRType.TXT: _Reader.txt,
    RRType.SPF: _Reader.txt,
}
# Fields of the dnslib-parsed types that are names (made absolute before dnslib sees them).
_DNSLIB_NAME_FIELDS: dict[int, tuple[int, ...]] = {
    RRType.NAPTR: (5,), RRType.HTTPS: (1,), RRType.RRSIG: (7,), RRType.NSEC: (0,), RRType.RP: (0, 1),
}


def _split(line: str, depth: int) -> tuple[_Tokens, int]:
    """One line's words (comments dropped, quotes removed, escapes kept for the name and
    string parsers) and the parenthesis depth after it."""
    if '"' not in line and "\\" not in line:  # the fast path: most lines of most zones
        cut = line.find(";")
        if cut >= 0:
            line = line[:cut]
        if "(" in line or ")" in line:
            for char in line:
                if char == "(":
                    depth += 1
                    if depth > 1:
                        raise _RecordError("nested parentheses")
                elif char == ")":
                    depth -= 1
                    if depth < 0:
                        raise _RecordError("')' without '('")
            line = line.replace("(", " ").replace(")", " ")
        return _Tokens(line.split(), None), depth
    words: list[str] = []
    quoted: list[bool] = []
    i, n = 0, len(line)
    while i < n:
        char = line[i]
        if char.isspace():
            i += 1
        elif char == ";":
            break
        elif char == "(":
            depth += 1
            if depth > 1:
                raise _RecordError("nested parentheses")
            i += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise _RecordError("')' without '('")
            i += 1
        elif char == '"':
            j = i + 1
            while j < n and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            if j >= n:
                raise _RecordError("quoted string not closed on its line")
            words.append(line[i + 1:j])
            quoted.append(True)
            i = j + 1
        else:  # a word; a quoted part inside it (HTTPS's alpn="h2,h3") stays in it, quotes and all
            j = i
            while j < n and not line[j].isspace() and line[j] not in ";()":
                if line[j] == '"':
                    j += 1
                    while j < n and line[j] != '"':
                        j += 2 if line[j] == "\\" else 1
                    if j >= n:
                        raise _RecordError("quoted string not closed on its line")
                j += 2 if line[j] == "\\" else 1
            words.append(line[i:min(j, n)])
            quoted.append(False)
            i = j
    return _Tokens(words, quoted), depth


# --- loading -----------------------------------------------------------------------------

def _origin(origin: bytes | str | None) -> bytes | None:
    if origin is None or isinstance(origin, bytes):
        return origin.lower() if origin else origin
    try:
        return name_from_text(origin)
    except ValueError as exc:
        raise ZoneError(f"bad zone origin {origin!r}: {exc}") from None


def parse_zone_text(text: str, origin: bytes | str | None, default_ttl: int = 3600,
                    source: str = "<text>", *, skip_bad: bool = False) -> tuple[list[ZoneRecord], list[str]]:
    """The records of a zone file's text, each with its line, in file order. With ``skip_bad``
    a bad record is left out and described in the returned list of messages instead of raising
    ``ZoneError``. No zone-level checks (see ``load_zone_text``)."""
    reader = _Reader(text, _origin(origin), default_ttl, source, skip_bad)
    return reader.read(), reader.problems


def _build(records: list[ZoneRecord], origin: bytes | None, source: str, skip_bad: bool,
           require_soa: bool, problems: list[str]) -> Zone:
    if origin is None:  # the zone is where its SOA is
        soa = next((rr for _, rr in records if rr.rtype == RRType.SOA), None)
        if soa is None:
            raise ZoneError(f"{source}: no SOA record, and no origin given to say where the zone is")
        origin = soa.name
    zone = Zone(origin)
    for line, rr in records:
        try:
            zone.add(rr)
        except ZoneError as exc:
            message = f"{source}:{line}: {exc}"
            if not skip_bad:
                raise ZoneError(message) from None
            problems.append(message)
    if require_soa:
        try:
            zone.validate()
        except ZoneError as exc:
            raise ZoneError(f"{source}: {exc}") from None
    return zone


def load_zone_text(text: str, origin: bytes | str | None, default_ttl: int = 3600,
                   source: str = "<text>", *, require_soa: bool = True) -> Zone:
    """A zone from zone-file text; the first problem raises ``ZoneError`` naming source:line.
    Without an origin the zone's origin is the owner of its SOA."""
    start = _origin(origin)
    records, problems = parse_zone_text(text, start, default_ttl, source)
    return _build(records, start, source, False, require_soa, problems)


def load_zone_text_lenient(text: str, origin: bytes | str | None, default_ttl: int = 3600,
                           source: str = "<text>", *, require_soa: bool = True) -> tuple[Zone, list[str]]:
    """Like ``load_zone_text``, but a bad record is skipped and described in the returned
    messages; only a zone without its SOA (when required) is still an error."""
    start = _origin(origin)
    records, problems = parse_zone_text(text, start, default_ttl, source, skip_bad=True)
    return _build(records, start, source, True, require_soa, problems), problems


def read_zone_file(path: str | Path) -> str:
    """A zone file's text; ``ZoneError`` when it cannot be read. Bytes that are not UTF-8 are
    kept (surrogate escapes) so TXT data in other encodings survives."""
    try:
        return Path(path).read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ZoneError(f"{path}: cannot read: {exc.strerror or exc}") from None


def load_zone_file(path: str | Path, origin: bytes | str | None = None, default_ttl: int = 3600) -> Zone:
    return load_zone_text(read_zone_file(path), origin, default_ttl, str(path))
