"""Locally served zones: names no resolver should send to the Internet, answered here by default.

Theory of operation. Like Unbound's default local zones, ``DefaultZones`` answers, from zones of
its own built once, the names that the public DNS either must not see or can only answer
NXDOMAIN for, authoritatively (AA, never validated, never AD), before any resolution:
- ``localhost.`` and every name below it: A 127.0.0.1, AAAA ::1 (RFC 6761 §6.3; Unbound's
  "redirect"), with ``1.0.0.127.in-addr.arpa.`` and the ``::1`` reverse name PTR ``localhost.``
  in ``127.in-addr.arpa.`` and the ``::1`` reverse zone;
- NXDOMAIN, from a zone holding only its SOA and NS (RFC 6303 §3, as Unbound writes them: NS
  ``localhost.``, SOA ``localhost. nobody.invalid. 1 3600 1200 604800 10800``), for the special-use
  names ``onion.`` (RFC 7686 §2), ``test.`` and ``invalid.`` (RFC 6761 §6.2, §6.4), ``home.arpa.``
  (RFC 8375 §6) and the reverse zones of RFC 6303 §4 and of the shared address space 100.64/10
  (RFC 6598 §7): RFC 1918, 0/8, 169.254/16, the TEST-NETs, 255.255.255.255, ``::``, ULA
  fd00::/8, link-local fe80::/10, the documentation prefix 2001:db8::/32.
The list is Unbound 1.17's (``unbound-control list_local_zones``), 102 zones.

What the operator configured wins; ``DefaultZones`` is asked after local data (local zones,
local records, lease names and their reverse networks, which answer first however deep they lie)
and after the response policy, and is not asked at all:
- for a zone the operator leaves out (``locally_served_zones_exclude``) or every zone
  (``locally_served_zones = "none"``);
- at and below a forward or stub zone at or below a default zone (``168.192.in-addr.arpa.``
  forwarded to the office's servers; Unbound 1.17 would still answer NXDOMAIN there until given
  ``local-zone: ... nodefault`` as well, a classic trap);
- in mode "auto" (the default), for any default zone but the localhost ones under a forward or
  stub zone above it (``.`` forwarded to a company's resolvers, which may serve 10.in-addr.arpa.)
  or when ``root_hints`` name a root of the operator's own (the lab's serves ``test.``): there the
  real Internet's NXDOMAIN is not what the servers asked answered, so a config that ran keeps
  its answers. "all" serves them whatever is above, as Unbound does.

Lookup cost on the slow path only (a cache miss that local data and the policy passed): one
C-level ``bytes.endswith`` against the zones' last two labels rejects almost every name.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address

from ispd.dns.localdata import synthesised_soa
from ispd.dns.wire import (
    CLASS_IN,
    RR,
    RRType,
    ancestor_with_labels,
    is_subdomain,
    label_count,
    name_from_text,
    name_to_text,
)
from ispd.dns.zone import Zone, ZoneAnswer

TTL = 10800  # Unbound's, for the records and the negative answers alike (RFC 6303 §3's MINIMUM)
LOCALHOST = name_from_text("localhost.")
_LOOPBACK_V4_REVERSE = name_from_text("127.in-addr.arpa.")
_LOOPBACK_V6_REVERSE = name_from_text("1." + "0." * 31 + "ip6.arpa.")

# Served whatever is above them (mode "auto" included): no root or forwarder has an answer of its own.
LOCALHOST_ZONES = frozenset({LOCALHOST, _LOOPBACK_V4_REVERSE, _LOOPBACK_V6_REVERSE})


def _names() -> list[str]:
    names = ["localhost.", "127.in-addr.arpa.", "1." + "0." * 31 + "ip6.arpa.",
             "onion.", "test.", "invalid.", "home.arpa.",
             # RFC 6303 §4.1-4.5: RFC 1918, "this network", link-local, TEST-NETs, broadcast.
             "10.in-addr.arpa.", *(f"{i}.172.in-addr.arpa." for i in range(16, 32)), "168.192.in-addr.arpa.",
             "0.in-addr.arpa.", "254.169.in-addr.arpa.", "2.0.192.in-addr.arpa.", "100.51.198.in-addr.arpa.",
             "113.0.203.in-addr.arpa.", "255.255.255.255.in-addr.arpa.",
             # RFC 6598 §7: the shared address space 100.64.0.0/10 (CGNAT).
             *(f"{i}.100.in-addr.arpa." for i in range(64, 128)),
             # RFC 6303 §4.6-4.8: "::", ULA fd00::/8, link-local fe80::/10, documentation 2001:db8::/32.
             "0." * 32 + "ip6.arpa.", "d.f.ip6.arpa.", "8.e.f.ip6.arpa.", "9.e.f.ip6.arpa.", "a.e.f.ip6.arpa.",
             "b.e.f.ip6.arpa.", "8.b.d.0.1.0.0.2.ip6.arpa."]
    return names


DEFAULT_ZONE_NAMES: tuple[bytes, ...] = tuple(name_from_text(n) for n in _names())


def _zone(origin: bytes) -> Zone:
    zone = Zone(origin)
    zone.add(synthesised_soa(origin, TTL))
    zone.add(RR(origin, RRType.NS, CLASS_IN, TTL, LOCALHOST))
    if origin == LOCALHOST:
        for owner in (LOCALHOST, b"\x01*" + LOCALHOST):  # every name below answers as localhost
            zone.add(RR(owner, RRType.A, CLASS_IN, TTL, ip_address("127.0.0.1").packed))
            zone.add(RR(owner, RRType.AAAA, CLASS_IN, TTL, ip_address("::1").packed))
    elif origin == _LOOPBACK_V4_REVERSE:
        zone.add(RR(name_from_text("1.0.0.127.in-addr.arpa."), RRType.PTR, CLASS_IN, TTL, LOCALHOST))
    elif origin == _LOOPBACK_V6_REVERSE:
        zone.add(RR(origin, RRType.PTR, CLASS_IN, TTL, LOCALHOST))
    return zone


class DefaultZones:
    """See the module comment. ``mode``: "auto", "all", "localhost" or "none"; ``exclude``: zone
    names not served; ``forwarded``: the forward and stub zones' names; ``private_root``:
    ``root_hints`` are the operator's own."""

    def __init__(self, mode: str = "auto", exclude: Iterable[str] = (), forwarded: Iterable[bytes] = (),
                 private_root: bool = False) -> None:
        left_out = {name_from_text(n) for n in exclude}
        forwarded = set(forwarded)
        self._zones: dict[bytes, Zone] = {}
        self._carved: dict[bytes, list[bytes]] = {}  # origin -> forward zones strictly below it
        if mode == "none":
            origins: list[bytes] = []
        elif mode == "localhost":
            origins = [o for o in DEFAULT_ZONE_NAMES if o in LOCALHOST_ZONES]
        else:
            origins = list(DEFAULT_ZONE_NAMES)
        for origin in origins:
            if origin in left_out or origin in forwarded:
                continue
            if mode == "auto" and origin not in LOCALHOST_ZONES and (
                    private_root or any(is_subdomain(origin, f) for f in forwarded)):
                continue
            self._zones[origin] = _zone(origin)
            below = [f for f in forwarded if f != origin and is_subdomain(f, origin)]
            if below:
                self._carved[origin] = below
        self._depths = sorted({label_count(o) for o in self._zones}, reverse=True)
        self._tails = tuple({ancestor_with_labels(o, min(2, label_count(o))) for o in self._zones})

    def origins(self) -> list[str]:
        """The zones served, in text."""
        return [name_to_text(origin) for origin in self._zones]

    def answer(self, qname: bytes, qtype: int) -> ZoneAnswer | None:
        """The answer for ``qname`` (lowercased wire form) from a default zone, or ``None``."""
        if not self._tails or not qname.endswith(self._tails):
            return None
        labels = label_count(qname)
        for depth in self._depths:  # most specific first
            if depth > labels:
                continue
            origin = ancestor_with_labels(qname, depth)
            zone = self._zones.get(origin)
            if zone is None:
                continue
            if any(is_subdomain(qname, f) for f in self._carved.get(origin, ())):
                return None  # the operator's forward or stub zone answers there
            if qtype == RRType.DS and qname == origin:
                # The DS at a zone's apex is its parent's (RFC 4035 §3.1.4.1), as Unbound resolves
                # it: the signed in-addr.arpa. or ip6.arpa. proves the delegation insecure, which a
                # validating stub behind us needs to accept the unsigned answers given here.
                return None
            return zone.lookup(qname, qtype)
        return None
