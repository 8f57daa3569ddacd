"""Response Policy Zones (QNAME triggers): what a name's answer is replaced with, if anything.

Theory of operation. A policy zone (draft-vixie-dnsop-dns-rpz, as BIND and Unbound implement it)
is a zone file whose owner names are triggers under the policy zone's origin and whose data is the
action. ``compile_policy_zone`` reads one (skipping bad records instead of failing: a feed with
one broken line must not take the filter down; but a file without its SOA, or one whose
unclosed parenthesis swallowed the rest, is refused, so a reload keeps the policy it had) into
two dicts keyed by the name a query would carry: exact triggers (``bad.example.com.rpz.local.``
→ ``bad.example.com.``) and wildcard triggers (``*.bad.example.com.rpz.local.`` → the
subdomains of ``bad.example.com.``, not the name itself). That is the heavy part; it is pure,
so the service runs it in an executor and swaps a new ``Policy`` in at once.

Actions (draft §3; the CNAME targets are the draft's special names):
- ``CNAME .`` NXDOMAIN; ``CNAME *.`` NODATA;
- ``CNAME rpz-passthru.`` PASSTHRU (answer normally and stop looking; the older form, a CNAME to
  the trigger's own name, too); ``CNAME rpz-drop.`` DROP (no reply);
  ``CNAME rpz-tcp-only.`` TCP_ONLY (truncate over UDP);
- any other data — A, AAAA, TXT, …, or a CNAME to another name — LOCAL_DATA: those records,
  their owner rewritten to the query name; a CNAME target ``*.garden.example.`` has its ``*``
  replaced by the query name (BIND's wildcard substitution).
Triggers of the other kinds (``rpz-ip``, ``rpz-nsdname``, ``rpz-nsip``, ``rpz-client-ip`` and any
other ``rpz-`` label next to the origin) are skipped and counted as unsupported; records at the
origin (SOA, NS) are the zone's own and not triggers.

Precedence (draft §5.1 and BIND): the first policy zone, in configured order, with any match wins;
inside a zone an exact trigger beats a wildcard, and a longer wildcard a shorter one. A zone may
carry an override that forces every one of its hits to one action (Unbound's
``rpz-action-override``), and may be limited to some clients (``ispd.dns.scopes``): for the
others it is not there. ``Policy.match`` costs one dict lookup for the name and one per
ancestor label at which the zone has wildcards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from ispd.dns.wire import (
    CLASS_IN,
    MAX_NAME_LENGTH,
    ROOT,
    RR,
    RRType,
    is_subdomain,
    label_count,
    name_from_text,
    name_to_text,
    soa_minimum,
)
from ispd.dns.zone import ZoneError, parse_zone_text, read_zone_file

_MAX_DEPTH = 128
_WILDCARD = b"\x01*"
_NODATA_TARGET = b"\x01*\x00"
_SPECIAL_TARGETS = {
    ROOT: "NXDOMAIN",
    _NODATA_TARGET: "NODATA",
    name_from_text("rpz-passthru."): "PASSTHRU",
    name_from_text("rpz-drop."): "DROP",
    name_from_text("rpz-tcp-only."): "TCP_ONLY",
}
_NOT_POLICY_DATA = frozenset({RRType.SOA, RRType.NS, RRType.DNAME})


class PolicyAction(IntEnum):
    NXDOMAIN = 1
    NODATA = 2
    PASSTHRU = 3
    DROP = 4
    TCP_ONLY = 5
    LOCAL_DATA = 6


_OVERRIDES = {
    "given": None,
    "nxdomain": PolicyAction.NXDOMAIN,
    "nodata": PolicyAction.NODATA,
    "passthru": PolicyAction.PASSTHRU,
    "drop": PolicyAction.DROP,
    "tcp-only": PolicyAction.TCP_ONLY,
    "cname": PolicyAction.LOCAL_DATA,
}


# A trigger is kept as bytes, not as an object of its own: a feed of a million triggers then
# holds nothing the cycle collector walks (each full collection walked them all, 0.3 s of the event
# loop for a million; see ``ispd.collector``), and identical triggers (most of a block list: one
# action, one TTL) share one value. The layout: the action (1 byte), whether a CNAME target's "*"
# stands for the query name (1), the TTL (4), then the LOCAL_DATA records, each its type (2), TTL
# (4), rdata length (2) and rdata. It is read back only for a hit.
_TRIGGER_HEAD = 6


def _encode_trigger(action: PolicyAction, ttl: int, data: Sequence[tuple[int, int, bytes]] = (),
                    substitute: bool = False) -> bytes:
    out = bytearray((action, substitute))
    out += ttl.to_bytes(4, "big")
    for rtype, rttl, rdata in data:
        out += rtype.to_bytes(2, "big") + rttl.to_bytes(4, "big") + len(rdata).to_bytes(2, "big") + rdata
    return bytes(out)


def _trigger_data(trigger: bytes) -> list[tuple[int, int, bytes]]:
    """A trigger's LOCAL_DATA records: (type, TTL, rdata)."""
    records = []
    i = _TRIGGER_HEAD
    while i < len(trigger):
        length = int.from_bytes(trigger[i + 6:i + 8], "big")
        records.append((int.from_bytes(trigger[i:i + 2], "big"), int.from_bytes(trigger[i + 2:i + 6], "big"),
                        trigger[i + 8:i + 8 + length]))
        i += 8 + length
    return records


@dataclass(frozen=True, slots=True)
class PolicyHit:
    zone: bytes  # the policy zone's origin
    trigger: bytes  # the trigger's owner name in the policy zone
    action: PolicyAction
    records: tuple[RR, ...]  # LOCAL_DATA: the answer's records, owned by the query name
    soa: RR | None  # the policy zone's SOA for NXDOMAIN/NODATA (TTL min(TTL, MINIMUM)), if any

    def answer_for(self, qtype: int) -> list[RR]:
        """LOCAL_DATA records for ``qtype``: the RRset of that type, all of them for ANY, or the
        CNAME (to be followed); empty means NODATA."""
        if qtype == RRType.ANY:
            return list(self.records)
        matching = [rr for rr in self.records if rr.rtype == qtype]
        if matching:
            return matching
        return [rr for rr in self.records if rr.rtype == RRType.CNAME]


@dataclass(frozen=True, slots=True)
class CompiledPolicyZone:
    origin: bytes
    source: str
    exact: dict[bytes, bytes]  # query name -> trigger (see _encode_trigger)
    wildcard: dict[bytes, bytes]  # base name -> trigger for its subdomains
    wildcard_depths: tuple[bool, ...]  # label counts of the wildcard base names
    soa: RR | None
    override: PolicyAction | None
    override_target: bytes | None  # the CNAME target of a "cname" override
    records_loaded: int
    skipped_bad: int
    skipped_unsupported: int
    problems: tuple[str, ...]  # the first messages about skipped records

    @property
    def triggers(self) -> int:
        return len(self.exact) + len(self.wildcard)

    def match(self, qname: bytes, labels: int) -> PolicyHit | None:
        """This zone's hit for ``qname`` (lowercased wire form with ``labels`` labels)."""
        trigger = self.exact.get(qname)
        if trigger is not None:
            return self._hit(qname, qname[:-1] + self.origin, trigger)
        if self.wildcard:
            depths = self.wildcard_depths
            wildcard = self.wildcard
            i = 0
            while labels:  # proper ancestors, longest first: a longer wildcard wins
                i += qname[i] + 1
                labels -= 1
                if depths[labels]:
                    trigger = wildcard.get(qname[i:])
                    if trigger is not None:
                        return self._hit(qname, _WILDCARD + qname[i:-1] + self.origin, trigger)
        return None

    def _hit(self, qname: bytes, owner: bytes, trigger: bytes) -> PolicyHit:
        """``owner``: the trigger's name in the policy zone."""
        action = PolicyAction(trigger[0])
        records: tuple[RR, ...] = ()
        if self.override is not None:
            action = self.override
            if self.override_target is not None:
                ttl = int.from_bytes(trigger[2:_TRIGGER_HEAD], "big")
                records = (RR(qname, RRType.CNAME, CLASS_IN, ttl, self.override_target),)
        elif action == PolicyAction.LOCAL_DATA:
            data = _trigger_data(trigger)
            if trigger[1]:  # substitute the query name for the CNAME target's "*"
                target = qname[:-1] + data[0][2][2:]
                if len(target) > MAX_NAME_LENGTH:  # cannot be written: refuse the name instead
                    return PolicyHit(self.origin, owner, PolicyAction.NXDOMAIN, (), self.soa)
                ttl = int.from_bytes(trigger[2:_TRIGGER_HEAD], "big")
                records = (RR(qname, RRType.CNAME, CLASS_IN, ttl, target),)
            else:
                records = tuple(RR(qname, rtype, CLASS_IN, ttl, rdata) for rtype, ttl, rdata in data)
        return PolicyHit(self.origin, owner, action, records, self.soa)


class Policy:
    """The configured policy zones, in order (see the module comment). Immutable: a reload
    builds a new one."""

    __slots__ = ("_scoped", "zones")

    def __init__(self, zones: Sequence[CompiledPolicyZone], zone_bits: Sequence[int] = ()) -> None:
        """``zone_bits``: per zone, the bit of the clients it is limited to (``ispd.dns.scopes``),
        0 (or none given) for a zone for every client."""
        self.zones = tuple(zones)
        bits = tuple(zone_bits) or (0,) * len(self.zones)
        assert len(bits) == len(self.zones)
        self._scoped = tuple(zip(self.zones, bits, strict=True))

    def match(self, qname: bytes, view: int = 0) -> PolicyHit | None:
        """The policy for ``qname`` (lowercased wire form) seen by a client with ``view`` (its
        scopes' bits), or ``None``: no trigger of a zone for it matches."""
        if not self.zones:
            return None
        labels = 0
        i = 0
        while qname[i]:
            i += qname[i] + 1
            labels += 1
        for zone, bit in self._scoped:
            if bit and not bit & view:
                continue
            hit = zone.match(qname, labels)
            if hit is not None:
                return hit
        return None


def _last_label(relative: bytes) -> bytes:
    """The label of ``relative`` (labels, no root) nearest the origin."""
    i = last = 0
    while i < len(relative):
        last = i
        i += relative[i] + 1
    return relative[last + 1:i]


def compile_policy_zone(source: str | Path, origin: str | bytes, *, action: str = "given",
                        cname_target: str | None = None, default_ttl: int = 3600,
                        source_name: str | None = None, max_problems: int = 100) -> CompiledPolicyZone:
    """Compile a policy zone from its text (a ``str``) or its file (a ``Path``; a file that
    cannot be read raises ``ZoneError``). ``action`` overrides every trigger: "given" (as
    written), "nxdomain", "nodata", "passthru", "drop", "tcp-only", or "cname" with
    ``cname_target``. Bad and unsupported records are skipped and counted; the first
    ``max_problems`` messages about them are kept."""
    if action not in _OVERRIDES:
        raise ValueError(f"policy action {action!r}: one of {', '.join(_OVERRIDES)}")
    override = _OVERRIDES[action]
    override_target = None
    if action == "cname":
        if not cname_target:
            raise ValueError('policy action "cname" needs a target name')
        override_target = name_from_text(cname_target)
    if isinstance(source, Path):
        text = read_zone_file(source)
        name = source_name or str(source)
    else:
        text = source
        name = source_name or "<text>"
    zone_origin = name_from_text(origin) if isinstance(origin, str) else origin.lower()
    records, problems = parse_zone_text(text, zone_origin, default_ttl, name, skip_bad=True)
    bad = len(problems)
    unsupported = 0
    soa: RR | None = None
    cut = len(zone_origin)
    # Owner name -> [(line, record)], in file order.
    groups: dict[bytes, list[tuple[int, RR]]] = {}
    for line, rr in records:
        owner = rr.name
        if owner == zone_origin:
            if rr.rtype == RRType.SOA and soa is None:
                soa = RR(owner, rr.rtype, rr.rclass, min(rr.ttl, soa_minimum(rr.rdata)), rr.rdata)
            continue
        if not is_subdomain(owner, zone_origin):
            bad += 1
            problems.append(f"{name}:{line}: {name_to_text(owner)} is outside the policy zone "
                            f"{name_to_text(zone_origin)}")
            continue
        if _last_label(owner[:len(owner) - cut]).startswith(b"rpz-"):
            unsupported += 1  # rpz-ip, rpz-nsdname, rpz-nsip, rpz-client-ip: not QNAME triggers
            continue
        group = groups.get(owner)
        if group is None:
            groups[owner] = [(line, rr)]
        else:
            group.append((line, rr))
    if soa is None:  # a policy zone starts with its SOA: without, an empty, truncated or foreign file
        why = f"; the first problem: {problems[0]}" if problems else " (an empty or truncated file?)"
        raise ZoneError(f"{name}: no SOA record at {name_to_text(zone_origin)}: not a policy zone{why}")
    del records
    exact: dict[bytes, bytes] = {}
    wildcard: dict[bytes, bytes] = {}
    shared: dict[bytes, bytes] = {}  # one copy of each distinct trigger
    depths = [False] * (_MAX_DEPTH + 1)
    loaded = 0
    # The records are let go group by group: freed all at once when the compile returned, those
    # of a million-trigger feed held the event loop 0.2 s (it runs in an executor; a free does
    # not let go of the GIL).
    for owner in list(groups):
        group = groups.pop(owner)
        trigger, used, messages = _trigger(owner, group, cut, name)
        bad += len(messages)
        problems += messages
        if trigger is None:
            continue
        loaded += used
        trigger = shared.setdefault(trigger, trigger)
        relative = owner[:len(owner) - cut]
        if relative.startswith(_WILDCARD):
            base = relative[2:] + ROOT
            wildcard[base] = trigger
            depths[label_count(base)] = True
        else:
            exact[relative + ROOT] = trigger
    return CompiledPolicyZone(
        origin=zone_origin, source=name, exact=exact, wildcard=wildcard, wildcard_depths=tuple(depths),
        soa=soa, override=override, override_target=override_target, records_loaded=loaded,
        skipped_bad=bad, skipped_unsupported=unsupported, problems=tuple(problems[:max_problems]))


def _trigger(owner: bytes, group: list[tuple[int, RR]], cut: int,
             source: str) -> tuple[bytes | None, int, list[str]]:
    """One trigger from the records at ``owner``: the trigger (or None), how many records it
    uses, and a message for each record skipped as bad (a duplicate is dropped silently, as
    RFC 2181 §5 has it)."""
    messages: list[str] = []
    kept: list[RR] = []
    for line, rr in group:
        # (The owner is written out for a message only: for every record, it was a third of the
        # time a feed of a million triggers takes to compile.)
        if rr.rtype in _NOT_POLICY_DATA:
            messages.append(f"{source}:{line}: {name_to_text(owner)}: {RRType(rr.rtype).name} is not a "
                            f"policy action (NS and SOA belong at the zone's origin)")
        elif kept and (rr.rtype == RRType.CNAME or kept[0].rtype == RRType.CNAME):
            messages.append(f"{source}:{line}: {name_to_text(owner)}: a CNAME and other data at one trigger "
                            f"(RFC 1034 §3.6.2); the record on this line is skipped")
        elif any(r.rtype == rr.rtype and r.rdata == rr.rdata for r in kept):
            continue
        else:
            kept.append(rr)
    if not kept:
        return None, 0, messages
    ttl = min(rr.ttl for rr in kept)
    relative = owner[:len(owner) - cut]
    first = kept[0]
    if first.rtype == RRType.CNAME:
        target = first.rdata.lower()
        special = _SPECIAL_TARGETS.get(target)
        if special is not None:
            return _encode_trigger(PolicyAction[special], ttl), 1, messages
        if target == relative + ROOT:  # the draft's older PASSTHRU: a CNAME to the name itself
            return _encode_trigger(PolicyAction.PASSTHRU, ttl), 1, messages
        substitute = target.startswith(_WILDCARD)
        cname = ((int(RRType.CNAME), ttl, target),)
        return _encode_trigger(PolicyAction.LOCAL_DATA, ttl, cname, substitute), 1, messages
    # An RRset whose TTLs differ takes the lowest (RFC 2181 §5.2), as local zones do.
    lowest: dict[int, int] = {}
    for rr in kept:
        lowest[rr.rtype] = min(rr.ttl, lowest.get(rr.rtype, rr.ttl))
    data = tuple((rr.rtype, lowest[rr.rtype], rr.rdata) for rr in kept)
    return _encode_trigger(PolicyAction.LOCAL_DATA, ttl, data), len(kept), messages

