"""``ispd dns lookup``: one resolution from ispd's point of view, with the trace of its iteration.

It runs the resolver in the command's own process with the config's root hints, forward and stub
zones and resolver settings, starting from an empty cache (like ``dig +trace``, but through
ispd's own iterator: QNAME minimisation, server selection, lame and dead servers as the daemon
sees them), and validates the answer with the config's trust anchors as the daemon would (the
negative trust anchors added at run time are the daemon's own). Local data and policy are the
daemon's business and are not consulted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dnslib  # type: ignore[import-untyped]

from ispd.dns.admin import class_text, rdata_text
from ispd.dns.cache import CacheLimits, RRsetCache, Security
from ispd.dns.config import DNSConfig, outgoing_addresses
from ispd.dns.hints import load_root_hints
from ispd.dns.resolver import Resolution, Resolver
from ispd.dns.service import forward_zones, make_validator, resolver_settings
from ispd.dns.upstream import UpstreamTransport
from ispd.dns.wire import (
    FLAG_AD,
    FLAG_QR,
    FLAG_RA,
    REFUSED_QTYPES,
    RR,
    Question,
    RRType,
    encode_message,
    name_from_text,
    name_to_text,
    type_text,
)


def parse_type(text: str) -> int:
    try:
        qtype = int(RRType[text.upper()])
    except KeyError:
        if not (text.upper().startswith("TYPE") and text[4:].isdigit() and 0 < int(text[4:]) < 65536):
            raise ValueError(f"{text!r} is not a record type (e.g. A, AAAA, MX, TXT, TYPE65)") from None
        qtype = int(text[4:])
    if qtype in REFUSED_QTYPES:
        raise ValueError(f"{RRType(qtype).name}: the resolver refuses that type (zone transfers and OPT are "
                         "not questions it answers)")
    return qtype


async def lookup(config: DNSConfig, name: str, qtype: int, say: Callable[[str], None]) -> Resolution:
    qname = name_from_text(name)
    # From the daemon's source addresses (outgoing_ipv4/ipv6): an upstream's ACL or a firewall
    # that knows only those answered the command and not the daemon, or the other way round.
    source_v4, source_v6 = outgoing_addresses(config)
    upstream = UpstreamTransport(source_v4=source_v4, source_v6=source_v6)
    resolver = Resolver(RRsetCache(CacheLimits()), upstream, load_root_hints(config.root_hints),
                        time.monotonic, resolver_settings(config), forward_zones(config))
    resolver.validator = make_validator(config, resolver, time.monotonic)
    started = time.monotonic()
    resolution = await resolver.resolve(qname, qtype, trace=lambda line: say(f";; {line}"))
    elapsed = time.monotonic() - started
    if resolution.security == Security.BOGUS:
        resolution.failure = f"DNSSEC: bogus (Extended DNS Error {resolution.ede})"
    flags = FLAG_QR | FLAG_RA | resolution.rcode | (FLAG_AD if resolution.security == Security.SECURE else 0)
    wire = encode_message(0, flags, Question(qname, qtype), resolution.answer, resolution.authority, []).data
    say("")
    say(message_text(wire, resolution.answer, resolution.authority))
    if resolver.validator is not None:
        say(f";; DNSSEC: {resolution.security.name.lower()}")
    say(f";; {resolver.upstream_queries} upstream queries in {elapsed * 1000:.1f} ms"
        + (f"; failed: {resolution.failure}" if resolution.failure else ""))
    return resolution


def message_text(wire: bytes, answer: list[RR], authority: list[RR]) -> str:
    """The reply as dig shows it (dnslib's text). dnslib raises on rdata it cannot read (a TXT
    string or a CAA tag running past the record's end), which the resolver passes on as it
    came: those records are shown as ``ispd dns cache dump`` shows them (RFC 3597's generic
    form when nothing else fits), not the command ending in an error without the answer."""
    try:
        return str(dnslib.DNSRecord.parse(wire))
    except Exception:  # anything from IndexError to DNSError
        pass
    buffer = dnslib.DNSBuffer(wire)
    lines = [str(dnslib.DNSHeader.parse(buffer)), ";; QUESTION SECTION:", str(dnslib.DNSQuestion.parse(buffer))]
    for section, records in (("ANSWER", answer), ("AUTHORITY", authority)):
        if records:
            lines.append(f";; {section} SECTION:")
            lines.extend(f"{name_to_text(rr.name)} {rr.ttl} {class_text(rr.rclass)} {type_text(rr.rtype)} "
                         f"{rdata_text(rr.rtype, rr.rdata)}" for rr in records)
    return "\n".join(lines)
