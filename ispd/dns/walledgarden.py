"""Suspended subscribers' DNS: who they are (by leased address) and what they are told.

The DNS service learns addresses from DHCP leases (``LeaseGranted``/``LeaseEnded`` on the bus,
and the store's current leases at start), networks from RADIUS sessions' IPv6 prefixes (a
dual-stack home's devices take their addresses in its Delegated-IPv6-Prefix, which no event
names one by one), and subscriber status from the subscriber events; a client address is walled
while it is leased to a suspended subscriber, or lies in a network of one. A network shorter than
a /32 (``ipv6_networks.SHORTEST``, as for ``who``) holds no one: it is a NAS's error (::/0), and
would wall, or give a plan's policy to, every IPv6 client outside a longer prefix. A walled client asking
for any name outside ``allow`` gets the portal's address (A/AAAA) or NODATA (other types), with
a short TTL so the real answers return quickly after ``resume``; names in ``allow`` (the portal
itself, the payment provider) resolve normally.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address, ip_network

from ispd.dns.config import WalledGardenConfig
from ispd.dns.wire import CLASS_IN, RR, RCode, RRType, is_subdomain, name_from_text
from ispd.dns.zone import ZoneAnswer
from ispd.store.ipv6_networks import SHORTEST


class WalledGarden:
    def __init__(self, config: WalledGardenConfig) -> None:
        self.configure(config)
        self.subscriber_of: dict[str, int] = {}  # leased address -> subscriber (its latest hold's)
        # Who holds each address, and how: its DHCP lease ("dhcp"), a RADIUS pool's hold
        # ("radius-pool"), RADIUS sessions (by id), the latest grant last. An address can be
        # held more than one way at once (a subscriber's static address in its DHCP lease and
        # its session; a reconnect before the stale session closes): one hold's end leaves the
        # others, and the latest of those says who holds it.
        self._holds: dict[str, dict[str | int, int | None]] = {}
        # A session's IPv6 networks -> subscriber, by prefix length and the network's first address.
        self._networks: dict[int, dict[int, int | None]] = {}
        self.network_holders: dict[str, int | None] = {}  # (the same, by the network as written)
        # The session each network was last granted with: another session's end (a stale one
        # closed after its subscriber reconnected with the same prefix, or one whose prefix went
        # to someone else) does not take it from the session that holds it now.
        self._network_sessions: dict[str, int] = {}
        self.suspended: set[int] = set()

    def configure(self, config: WalledGardenConfig) -> None:
        self.config = config
        self.allow = [name_from_text(name) for name in config.allow]
        self.enabled = config.portal_ipv4 is not None or config.portal_ipv6 is not None

    # --- who is walled ---
    # Each change says whether the set of walled addresses changed: most lease events (every
    # DHCP ACK) do not, and rebuilding the set and forgetting the engine's per-client classes
    # for each of them would cost the DHCP and DNS hot paths for nothing.

    def is_walled(self, address: str) -> bool:
        """Whether the client at ``address`` is walled (or every client in a network, "/" in it)."""
        holder = self.network_holder(address) if "/" in address else self.holder(address)
        return self.enabled and holder in self.suspended

    def holder(self, address: str) -> int | None:
        """The subscriber who holds ``address``: leased to them, or in a network of theirs."""
        holder = self.subscriber_of.get(address)
        if holder is not None or not self._networks:
            return holder
        try:
            ip = ip_address(address)
        except ValueError:
            return None
        return self._network_holder_of(ip)

    def _network_holder_of(self, ip: IPv4Address | IPv6Address) -> int | None:
        if ip.version != 6 or not self._networks:
            return None
        return self._holder_within(int(ip), 128)

    def _holder_within(self, value: int, longest: int) -> int | None:
        """The holder of the longest network, of ``longest`` bits at most, that has the IPv6
        address ``value``."""
        for length in sorted(self._networks, reverse=True):
            if length <= longest:
                holder = self._networks[length].get(value >> (128 - length), _NO_HOLD)
                if holder is not _NO_HOLD:  # (None: a login that is no subscriber holds it)
                    return holder  # type: ignore[return-value]
        return None

    def in_walled_network(self, address: IPv4Address | IPv6Address) -> bool:
        """Whether the network that holds ``address`` (the longest of those that contain it) is
        a suspended subscriber's: not when it lies in a longer prefix of an active one."""
        return self.enabled and self._network_holder_of(address) in self.suspended

    def network_holder(self, network: str) -> int | None:
        """Who holds the clients of ``network``: the holder of the network itself, or of the
        longest prefix that contains it (longer ones inside it aside)."""
        parsed = _ipv6_network(network)
        return None if parsed is None else self._covering_holder(parsed)

    def _covering_holder(self, network: IPv6Network) -> int | None:
        return self._holder_within(int(network.network_address), network.prefixlen)

    def network_granted(self, network: str, subscriber_id: int | None, session_id: int | None = None) -> bool:
        """A session's IPv6 network (of no subscriber: a login that is none holds it all the same);
        whether the walled set changed."""
        parsed = _ipv6_network(network)
        if parsed is None or parsed.prefixlen < SHORTEST:
            return False
        network = str(parsed)
        if subscriber_id is None and network in self.network_holders and network not in self._network_sessions:
            return False  # a DHCPv6 binding's: its subscriber keeps it (as a DHCP lease's address)
        before = self.enabled and self._covering_holder(parsed) in self.suspended  # (another's prefix around it)
        self.network_holders[network] = subscriber_id
        if session_id is None:
            self._network_sessions.pop(network, None)
        else:
            self._network_sessions[network] = session_id
        self._networks.setdefault(parsed.prefixlen, {})[int(parsed.network_address) >> (128 - parsed.prefixlen)] = \
            subscriber_id
        return (self.enabled and subscriber_id in self.suspended) != before

    def network_ended(self, network: str, session_id: int | None = None) -> bool:
        """The session ``session_id`` (None: whichever) gave ``network`` up; whether the walled
        set changed."""
        parsed = _ipv6_network(network)
        if parsed is None:
            return False
        network = str(parsed)
        if session_id is not None and self._network_sessions.get(network) != session_id:
            # Granted with another session since (that one holds it), or held by no session: a
            # DHCPv6 binding's, which a login of no subscriber was refused, or took back.
            return False
        if network not in self.network_holders:
            return False
        holder = self.network_holders.pop(network)
        self._network_sessions.pop(network, None)
        by_length = self._networks.get(parsed.prefixlen, {})
        by_length.pop(int(parsed.network_address) >> (128 - parsed.prefixlen), None)
        if not by_length:
            self._networks.pop(parsed.prefixlen, None)
        if holder is None:
            return False
        # Its clients go to the holder of a prefix around it, if any.
        return self.enabled and (holder in self.suspended) != (self._covering_holder(parsed) in self.suspended)

    def network_held_by_session(self, network: str) -> bool:
        """Whether the latest grant of ``network`` came with a RADIUS session."""
        parsed = _ipv6_network(network)
        return parsed is not None and str(parsed) in self._network_sessions

    def take_holds(self, other: WalledGarden) -> None:
        """Hold what ``other`` holds, and only that (a reload's read of the store, built aside
        while the event loop answered on these holds)."""
        self.subscriber_of, self._holds = other.subscriber_of, other._holds
        self._networks, self.network_holders = other._networks, other.network_holders
        self._network_sessions = other._network_sessions

    def lease_granted(self, address: str, subscriber_id: int | None, session_id: int | None = None, *,
                      radius_pool: bool = False) -> bool:
        """An address leased (by DHCP), or in the RADIUS session ``session_id``, or (``radius_pool``)
        given or held again from a RADIUS pool; whether the walled set changed. A pool's hold is
        the session's once the session has the address: the pool's grants at each renewal name
        no session, and the session's end (which releases the hold) ends it."""
        before = self.is_walled(address)
        holds = self._holds.setdefault(address, {})
        hold = _hold(session_id, radius_pool)
        if session_id is None:
            # One lease row per address in the store: a DHCP lease and a pool's hold never
            # coexist. The one granted now ended the other, whose end may never be announced (a
            # pool's hold for a login whose session never started lapses silently), and which
            # would otherwise hold the address again once this one ends.
            holds.pop("radius-pool" if hold == "dhcp" else "dhcp", None)
        if session_id is not None and holds.get("radius-pool", _NO_HOLD) == subscriber_id:
            del holds["radius-pool"]
        elif radius_pool and session_id is None:
            hold = next((h for h, s in holds.items() if isinstance(h, int) and s == subscriber_id), hold)
        holds.pop(hold, None)
        holds[hold] = subscriber_id
        if session_id is not None and subscriber_id is None:
            # A login that is no subscriber (a roaming partner's user) takes the address from an
            # older session (one whose end is late), not from a lease ispd gave: that is the
            # same device accounted under a login of its own (IPoE), the lease's subscriber's.
            for lease_hold in ("dhcp", "radius-pool"):
                if lease_hold in holds:
                    holds[lease_hold] = holds.pop(lease_hold)
        self._holder_is_latest(address, holds)
        return self.is_walled(address) != before

    def lease_ended(self, address: str, session_id: int | None = None, *, radius_pool: bool = False) -> bool:
        """The DHCP lease, the RADIUS pool's hold (``radius_pool``) or the session ``session_id``
        gave ``address`` up: whoever else holds it (a subscriber who reconnected with the same
        address and whose stale session is closed late; the session that has a DHCP client's
        reserved address) keeps it. Whether the walled set changed."""
        holds = self._holds.get(address)
        if holds is None or holds.pop(_hold(session_id, radius_pool), _NO_HOLD) is _NO_HOLD:
            return False
        before = self.is_walled(address)
        if not holds:
            del self._holds[address]
        self._holder_is_latest(address, holds)
        return self.is_walled(address) != before

    def _holder_is_latest(self, address: str, holds: dict[str | int, int | None]) -> None:
        holder = next(reversed(holds.values()), None) if holds else None
        if holder is None:
            self.subscriber_of.pop(address, None)
        else:
            self.subscriber_of[address] = holder

    def set_suspended(self, subscriber_id: int, suspended: bool) -> bool:
        if suspended == (subscriber_id in self.suspended):
            return False
        if suspended:
            self.suspended.add(subscriber_id)
        else:
            self.suspended.discard(subscriber_id)
        return self.enabled and (subscriber_id in self.subscriber_of.values()
                                 or subscriber_id in self.network_holders.values())

    def addresses_of(self, subscriber_id: int) -> list[str]:
        """Its addresses and networks."""
        return sorted(a for a, s in [*self.subscriber_of.items(), *self.network_holders.items()]
                      if s == subscriber_id)

    def walled_addresses(self) -> frozenset[str]:
        if not self.enabled:
            return frozenset()
        return frozenset(a for a, s in self.subscriber_of.items() if s in self.suspended)

    def walled_networks(self) -> tuple[IPv6Network, ...]:
        if not self.enabled:
            return ()
        return tuple(IPv6Network(n) for n, s in self.network_holders.items() if s in self.suspended)

    # --- what they are told ---

    def lookup(self, name: bytes, qtype: int) -> ZoneAnswer | None:
        if not self.enabled or any(is_subdomain(name, allowed) for allowed in self.allow):
            return None
        ttl = self.config.ttl
        records: list[RR] = []
        if qtype == RRType.A and self.config.portal_ipv4 is not None:
            records = [RR(name, RRType.A, CLASS_IN, ttl, self.config.portal_ipv4.packed)]
        elif qtype == RRType.AAAA and self.config.portal_ipv6 is not None:
            records = [RR(name, RRType.AAAA, CLASS_IN, ttl, self.config.portal_ipv6.packed)]
        return ZoneAnswer(RCode.NOERROR, False, records, [], [])


_NO_HOLD = object()


def _hold(session_id: int | None, radius_pool: bool) -> str | int:
    return session_id if session_id is not None else "radius-pool" if radius_pool else "dhcp"


def _ipv6_network(text: str) -> IPv6Network | None:
    try:
        network = ip_network(text, strict=False)
    except ValueError:
        return None
    return network if isinstance(network, IPv6Network) else None
