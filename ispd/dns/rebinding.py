"""DNS rebinding protection (Unbound's ``private-address``): addresses of the operator's and the
subscribers' own networks are taken out of what the Internet answers.

Why. A web page from attacker.example makes the browser fetch attacker.example again after its
short TTL, and the name now resolves to 192.168.1.1: the same-origin policy lets the page's
script talk to the subscriber's router (or a printer, or the ISP's management network) as if it
were attacker.example. A resolver that never hands out such addresses for public names closes
that for every subscriber at once, whatever their router does.

What. Records A and AAAA, in the answers and glue that upstream servers send, whose address lies
in ``networks`` (an IPv4-mapped IPv6 address counts as its IPv4 address, and so does one under
the DNS64 prefix, where the NAT64 would take the client) are dropped before
anything is cached, as Unbound's scrubber does: an RRset loses its private addresses and keeps
the others, and one left empty is gone (the question is then answered without addresses).
Names at or below ``allowed`` keep them: the operator's split-horizon domains, and the forward
and stub zones (their servers are the operator's) other than a forward zone "." (the
public tree, as the upstream resolver sees it). Local data is answered before iteration and
is never looked at here.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ispd.dns.dns64 import DNS64
from ispd.dns.wire import ROOT, RR, RRType, parent_name


class RebindingGuard:
    __slots__ = ("allowed", "nat64", "networks", "removed")

    def __init__(self, networks: Iterable[IPv4Network | IPv6Network] = (), allowed: Iterable[bytes] = (),
                 nat64: DNS64 | None = None) -> None:
        self.networks = tuple(networks)
        self.allowed = frozenset(allowed)  # domains (lower case, wire form) whose names may have them
        # With DNS64, an AAAA under its prefix reaches the IPv4 address it embeds, through the NAT64.
        self.nat64 = nat64
        self.removed = 0  # records dropped, in all

    @property
    def enabled(self) -> bool:
        return bool(self.networks)

    def scrub(self, records: list[RR]) -> list[RR]:
        """``records`` without the private addresses of names outside ``allowed``."""
        kept = [rr for rr in records if not self._private(rr)]
        if len(kept) != len(records):
            self.removed += len(records) - len(kept)
        return kept

    def _private(self, rr: RR) -> bool:
        mapped: IPv4Address | None = None
        if rr.rtype == RRType.A and len(rr.rdata) == 4:
            address: IPv4Address | IPv6Address = IPv4Address(rr.rdata)
        elif rr.rtype == RRType.AAAA and len(rr.rdata) == 16:
            address = IPv6Address(rr.rdata)
            mapped = address.ipv4_mapped
            if mapped is None and self.nat64 is not None:
                embedded = self.nat64.extract(rr.rdata)
                mapped = IPv4Address(embedded) if embedded is not None else None
        else:
            return False
        if not any(address in network or (mapped is not None and mapped in network) for network in self.networks):
            return False
        name = rr.name.lower()
        while True:
            if name in self.allowed:
                return False
            if name == ROOT:
                return True
            name = parent_name(name)
