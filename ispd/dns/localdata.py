"""Names the resolver answers itself: DHCP lease names, configured records and local zones.

Theory of operation. ``LocalData`` is consulted before recursion; ``answer(qname, qtype)`` says
either "not local" (``None``: recurse) or gives the answer. What is local, like Unbound's
``local-zone``/``local-data``:
- local zones, each a ``zone.Zone``: the zone files configured, the lease domain and the
  reverse zones of the lease networks (unless a zone file holds them: it takes the lease
  names, its own records still answered; but not below a delegation of it). Inside one, every name is answered from it —
  an unknown name is NXDOMAIN, a known name without the type NODATA, both with the zone's SOA
  (a synthesised one for the lease and reverse zones) — and never recursed ("static"). The
  most specific zone holding the name wins.
- configured records outside every local zone: the exact owner name is local ("transparent"):
  its types are answered, another type is NODATA, and names below it are not local.
  A configured record inside a local zone is added to that zone.
- ``resolver.arpa.``, always a local zone (RFC 9462 §4), and the DDR records given
  (``designated``, from ``ispd.dns.ddr``), added as configured records are.
- lease names: ``add_lease_name`` puts ``<hostname>.<lease domain>`` (A or AAAA) and, when the
  address lies in a reverse network, its PTR into the zones, live. A hostname holds one
  address per family; a second lease claiming a hostname takes it over (the newest wins: a
  DHCP client that renames or moves is more common than two clients sharing a name, and the
  old holder's records would otherwise point at an address that may be reused); the old
  address loses its PTR. A hostname that names configured data is refused, so a subscriber
  cannot take over ``portal.<domain>`` by naming a laptop "portal"; nor ``wpad`` and
  ``isatap``, which other subscribers' Windows hosts would ask for their proxy and tunnel.

Reverse networks that do not end on an octet (IPv4) or nibble (IPv6) boundary are split into the
zones of the next boundary down — a /15 is the two /16 zones 18.198.in-addr.arpa. and
19.198.in-addr.arpa., a /20 the sixteen /24 zones — never rounded up to an enclosing zone that
would answer NXDOMAIN for other people's addresses.

The lookup is cheap because the cache-miss path runs it for every query: a name that does not end
in the last two labels of some local zone is rejected by one C-level ``bytes.endswith``; others
cost a dict lookup for the name itself, then one per ancestor whose label count some local zone
has, slicing only those.
Every change bumps ``generation`` and records which owner names changed, so the service can
drop its cached answers for just those names (``changed_since``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from ispd.dns.ddr import RESOLVER_ARPA
from ispd.dns.wire import (
    CLASS_IN,
    ROOT,
    RR,
    RCode,
    RRType,
    ancestor_with_labels,
    label_count,
    name_from_text,
    name_to_text,
    reverse_name,
)
from ispd.dns.zone import AnswerKind, Delegation, Zone, ZoneAnswer, ZoneError, parse_zone_text

IPNetwork = IPv4Network | IPv6Network
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_MAX_DEPTH = 128  # labels a name can have (255 bytes / 2)
# Host names no lease publishes: a device named "wpad" would hand its proxy settings to every
# Windows host that searches the lease domain (WPAD name collision, MS09-008), "isatap" its IPv6
# tunnel. Windows DNS Server's global query block list, which answers them NXDOMAIN, holds these.
_BLOCKED_LEASE_LABELS = frozenset({"wpad", "isatap"})
# RFC 1912 §2.2-style SOA for synthesised local zones, as Unbound writes them.
_SOA_MNAME = name_from_text("localhost.")
_SOA_RNAME = name_from_text("nobody.invalid.")


def synthesised_soa(origin: bytes, negative_ttl: int) -> RR:
    """The SOA of a local zone that has none of its own; its TTL and MINIMUM are the
    negative-caching TTL (RFC 2308 §5)."""
    times = b"".join(v.to_bytes(4, "big") for v in (1, 3600, 1200, 604800, negative_ttl))
    return RR(origin, RRType.SOA, CLASS_IN, negative_ttl, _SOA_MNAME + _SOA_RNAME + times)


def reverse_zones(network: IPNetwork) -> list[bytes]:
    """The reverse zones that cover ``network`` exactly: the prefix rounded down to an octet
    (IPv4, RFC 1035 §3.5) or nibble (IPv6, RFC 3596 §2.5) boundary, split into as many zones."""
    step = 8 if network.version == 4 else 4
    boundary = -(-network.prefixlen // step) * step
    labels = boundary // step
    zones = []
    for subnet in network.subnets(new_prefix=boundary):
        full = reverse_name(subnet.network_address)  # every octet/nibble: keep the top ``labels``
        zones.append(ancestor_with_labels(full, labels + 2))  # + in-addr/ip6 and arpa
    return zones


class LocalData:
    """See the module comment. Not thread-safe: the service mutates it on its event loop."""

    def __init__(self, *, lease_domain: str | bytes | None = None,
                 reverse_networks: Iterable[str | IPNetwork] = (),
                 static_records: Iterable[str] = (), zones: Iterable[Zone] = (),
                 designated: Iterable[RR] = (), default_ttl: int = 3600, negative_ttl: int = 60,
                 history: int = 1024) -> None:
        self.generation = 0
        self.negative_ttl = negative_ttl
        self._zones: dict[bytes, Zone] = {}  # origin -> zone
        self._synthesised: set[bytes] = set()  # origins of zones we made (their SOA is ours)
        self._exact: dict[bytes, Zone] = {}  # transparent names: owner -> a zone of that name alone
        self._depths = [False] * (_MAX_DEPTH + 1)  # label counts that some zone origin has
        # The last two labels of every zone origin: one C-level endswith() rejects most names
        # that are not local without a Python loop over their labels.
        self._tails: tuple[bytes, ...] = ()
        self._history: deque[tuple[int, frozenset[bytes]]] = deque(maxlen=history)
        for zone in zones:
            if zone.origin in self._zones:
                raise ValueError(f"local zone {name_to_text(zone.origin)} is configured twice")
            self._add_zone(zone)
        self.lease_domain: bytes | None = None
        if lease_domain is not None:
            self.lease_domain = (name_from_text(lease_domain) if isinstance(lease_domain, str)
                                 else lease_domain.lower())
            self._own_zone(self.lease_domain)
        self.reverse_networks: list[IPNetwork] = [
            ip_network(n, strict=False) if isinstance(n, str) else n for n in reverse_networks]
        for network in self.reverse_networks:
            for origin in reverse_zones(network):
                self._own_zone(origin)
        # RFC 9462 §4: never resolved elsewhere, DDR on or off (``ispd.dns.ddr``).
        self._own_zone(RESOLVER_ARPA)
        # Names holding configured data: leases never take them over.
        self._configured: set[bytes] = {name for zone in self._zones.values() for name in zone.names()}
        for index, text in enumerate(static_records):
            self._add_static(text, f"local_records[{index}]", default_ttl)
        # RFC 9462 §6.4: a resolver that answers DDR answers NODATA for every other name under
        # resolver.arpa. (in the zone we made: an operator's own zone file answers as written).
        self._ddr_zone: Zone | None = None
        for rr in designated:
            self._add_record(rr, "ddr")
            if RESOLVER_ARPA in self._synthesised:
                self._ddr_zone = self._zones.get(RESOLVER_ARPA)
        # Lease bookkeeping: (owner, type) -> address, and address -> (owner, PTR owner or None).
        self._lease_names: dict[tuple[bytes, int], str] = {}
        self._lease_addresses: dict[str, tuple[bytes, bytes | None]] = {}

    # --- set-up ---

    def _add_zone(self, zone: Zone) -> None:
        self._zones[zone.origin] = zone
        self._depths[label_count(zone.origin)] = True
        tail = ancestor_with_labels(zone.origin, min(2, label_count(zone.origin)))
        if tail not in self._tails:
            self._tails += (tail,)

    def _own_zone(self, origin: bytes) -> None:
        if origin in self._zones:  # a configured zone file of that name takes the records
            return
        enclosing = self.zone_for(origin)
        if enclosing is not None and enclosing.origin not in self._synthesised \
                and not self._below_cut(enclosing, origin):
            # A zone file above it takes them too: a zone of ours, more specific, would hide
            # the file's records below it (a router's PTR in 10.in-addr.arpa. under the lease
            # network 10.0.0.0/16, NXDOMAIN).
            return
        zone = Zone(origin)
        zone.add(synthesised_soa(origin, self.negative_ttl))
        self._synthesised.add(origin)
        self._add_zone(zone)

    @staticmethod
    def _below_cut(zone: Zone, name: bytes) -> bool:
        """Whether ``name`` (in ``zone``) is at or below one of its delegations."""
        while len(name) > len(zone.origin):
            if zone.get_rrset(name, RRType.NS):
                return True
            name = name[name[0] + 1 :]
        return False

    def _add_static(self, text: str, source: str, default_ttl: int) -> None:
        records, _ = parse_zone_text(text, ROOT, default_ttl, source)
        if len(records) != 1:
            raise ZoneError(f"{source}: {text!r} should be one record, like "
                            f"'portal.isp.example. 300 A 198.18.0.10'")
        self._add_record(records[0].rr, source)

    def _add_record(self, rr: RR, source: str) -> None:
        zone = self.zone_for(rr.name)
        try:
            if zone is None:
                exact = self._exact.get(rr.name)
                if exact is None:
                    exact = self._exact[rr.name] = Zone(rr.name)
                exact.add(rr)
            elif rr.rtype == RRType.SOA and zone.origin in self._synthesised and rr.name == zone.origin:
                zone.replace_rrset(rr.name, RRType.SOA, [rr])  # the operator's SOA replaces ours
                self._synthesised.discard(zone.origin)
            else:
                zone.add(rr)
        except ZoneError as exc:
            raise ZoneError(f"{source}: {exc}") from None
        self._configured.add(rr.name)

    # --- lookup ---

    def zone_for(self, name: bytes) -> Zone | None:
        """The most specific local zone holding ``name`` (lowercased wire form), if any."""
        if not name.endswith(self._tails):
            return None
        zone = self._zones.get(name)
        if zone is not None:
            return zone
        depths = self._depths
        labels = 0
        i = 0
        while name[i]:
            i += name[i] + 1
            labels += 1
        i = 0
        while labels:
            i += name[i] + 1
            labels -= 1
            if depths[labels]:
                zone = self._zones.get(name[i:])
                if zone is not None:
                    return zone
        return None

    def answers_below(self, name: bytes) -> bool:
        """Whether every name at and below ``name`` is local data's to answer: it is in a local
        zone (the lease domain or a reverse network's included), not at or below a delegation."""
        zone = self.zone_for(name)
        return zone is not None and not self._below_cut(zone, name)

    def answer(self, qname: bytes, qtype: int) -> ZoneAnswer | None:
        """The local answer for ``qname`` (lowercased wire form), or ``None``: not local."""
        exact = self._exact.get(qname)
        if exact is not None:
            return exact.lookup(qname, qtype)
        zone = self.zone_for(qname)
        if zone is None:
            return None
        found = zone.lookup(qname, qtype)
        if zone is self._ddr_zone and found.rcode == RCode.NXDOMAIN:
            return ZoneAnswer(RCode.NOERROR, True, [], found.authority, [], AnswerKind.NODATA)
        return found

    # --- changes ---

    def _changed(self, names: Iterable[bytes]) -> None:
        self.generation += 1
        self._history.append((self.generation, frozenset(names)))

    def changed_since(self, generation: int) -> frozenset[bytes] | None:
        """The owner names whose answers (at or below them) may have changed after
        ``generation``; ``None`` when the history no longer reaches back that far (assume
        everything local changed)."""
        if generation >= self.generation:
            return frozenset()
        history = self._history
        if not history or history[0][0] > generation + 1:
            return None
        names: set[bytes] = set()
        for number, changed in history:
            if number > generation:
                names |= changed
        return frozenset(names)

    # --- lease names ---

    def lease_owner(self, hostname: str) -> bytes | None:
        """``<hostname>.<lease domain>`` for a hostname whose first label is an LDH label (RFC
        1123 §2.1), lowercased; ``None`` for anything else or when lease names are off. A
        fully qualified name (``laptop.home.example``, option 81) gives its first label, as
        dnsmasq does: the lease domain is ours to say."""
        if self.lease_domain is None:
            return None
        label = hostname.strip().rstrip(".").lower().split(".", 1)[0]
        if not 0 < len(label) <= 63 or not set(label) <= _LDH or label[0] == "-" or label[-1] == "-" \
                or label in _BLOCKED_LEASE_LABELS:
            return None
        owner = bytes([len(label)]) + label.encode("ascii") + self.lease_domain
        return owner if len(owner) <= 255 else None

    def add_lease_name(self, hostname: str, address: str, ttl: int) -> bool:
        """Publish ``<hostname>.<lease domain>`` → ``address`` and its PTR. ``False`` (nothing
        changed) when lease names are off, the hostname is not one LDH label, or the name holds
        configured data."""
        owner = self.lease_owner(hostname)
        if owner is None:
            return False
        ip = ip_address(address)
        key = str(ip)
        rtype = RRType.A if ip.version == 4 else RRType.AAAA
        zone = self.zone_for(owner)
        if zone is None or owner in self._configured:
            return False
        rr = RR(owner, rtype, CLASS_IN, ttl, ip.packed)
        if self._lease_names.get((owner, rtype)) == key and zone.get_rrset(owner, rtype) == [rr]:
            return True  # a renewal: nothing changes
        changed: set[bytes] = {owner}
        previous = self._lease_addresses.get(key)
        if previous is not None and previous[0] != owner:  # this address had another name
            changed |= self._drop_address(key)
        old_address = self._lease_names.get((owner, rtype))
        if old_address is not None and old_address != key:  # the name moves (or is taken over)
            changed |= self._drop_address(old_address)
        changed.update(zone.replace_rrset(owner, rtype, [rr]))
        self._lease_names[(owner, rtype)] = key
        ptr_owner = self._publish_ptr(ip, owner, ttl, changed)
        self._lease_addresses[key] = (owner, ptr_owner)
        self._changed(changed)
        return True

    def _publish_ptr(self, ip: IPv4Address | IPv6Address, owner: bytes, ttl: int,
                     changed: set[bytes]) -> bytes | None:
        if not any(ip in network for network in self.reverse_networks):
            return None
        ptr_owner = reverse_name(ip)
        zone = self.zone_for(ptr_owner)
        if zone is None or ptr_owner in self._configured:  # a configured PTR wins
            return None
        changed.add(ptr_owner)
        changed.update(zone.replace_rrset(ptr_owner, RRType.PTR, [RR(ptr_owner, RRType.PTR, CLASS_IN, ttl, owner)]))
        return ptr_owner

    def _drop_address(self, address: str) -> set[bytes]:
        """Withdraw the name and PTR published for ``address``; the names that changed."""
        entry = self._lease_addresses.pop(address, None)
        if entry is None:
            return set()
        owner, ptr_owner = entry
        rtype = RRType.A if ip_address(address).version == 4 else RRType.AAAA
        changed = {owner}
        if self._lease_names.get((owner, rtype)) == address:
            del self._lease_names[(owner, rtype)]
            zone = self.zone_for(owner)
            if zone is not None:
                changed.update(zone.remove_rrset(owner, rtype))
        if ptr_owner is not None:
            zone = self.zone_for(ptr_owner)
            if zone is not None:
                changed.add(ptr_owner)
                changed.update(zone.remove_rrset(ptr_owner, RRType.PTR))
        return changed

    def remove_lease_name(self, address: str, hostname: str | None = None) -> bool:
        """Withdraw what ``address`` published; with ``hostname``, only if the address still
        holds that name (a late release must not remove a name another lease has taken)."""
        key = str(ip_address(address))
        entry = self._lease_addresses.get(key)
        if entry is None:
            return False
        if hostname is not None and self.lease_owner(hostname) != entry[0]:
            return False
        self._changed(self._drop_address(key))
        return True

    def take_lease_names(self, old: LocalData, addresses: Iterable[str] | None = None) -> None:
        """Publish the lease names ``old`` publishes (with their TTLs), as far as this data
        allows them (its lease domain, its configured names): a reload's new data answers for
        the leases at once, not only once the store has been read again. ``addresses``: only
        those (as ``lease_addresses`` gives them; one no longer published is skipped), so that
        the service can take tens of thousands a part at a time."""
        entries = old._lease_addresses
        for address in entries if addresses is None else addresses:
            entry = entries.get(address)
            if entry is None:
                continue
            owner = entry[0]
            rtype = RRType.A if ip_address(address).version == 4 else RRType.AAAA
            zone = old.zone_for(owner)
            rrset = zone.get_rrset(owner, rtype) if zone is not None else []
            if rrset:
                label = owner[1 : 1 + owner[0]].decode("ascii")
                self.add_lease_name(label, address, rrset[0].ttl)

    def lease_addresses(self) -> list[str]:
        """The addresses that publish a lease name."""
        return list(self._lease_addresses)

    def lease_names(self) -> dict[str, str]:
        """Published lease names: address → owner name in text."""
        return {address: name_to_text(owner) for address, (owner, _) in self._lease_addresses.items()}

    def zones(self) -> list[Zone]:
        return list(self._zones.values())

    def delegations(self) -> list[Delegation]:
        """The local zones' cuts, but for a name that is a local zone itself (answered here)."""
        return [cut for zone in self._zones.values() for cut in zone.delegations() if cut.name not in self._zones]
