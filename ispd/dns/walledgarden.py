"""Suspended subscribers' DNS: who they are (by leased address) and what they are told.

The DNS service learns addresses from DHCP leases (``LeaseGranted``/``LeaseEnded`` on the bus,
and the store's current leases at start) and subscriber status from the subscriber events; a
client address is walled while it is leased to a suspended subscriber. A walled client asking
for any name outside ``allow`` gets the portal's address (A/AAAA) or NODATA (other types), with
a short TTL so the real answers return quickly after ``resume``; names in ``allow`` (the portal
itself, the payment provider) resolve normally.
"""

from __future__ import annotations

from ispd.dns.config import WalledGardenConfig
from ispd.dns.wire import CLASS_IN, RR, RCode, RRType, is_subdomain, name_from_text
from ispd.dns.zone import ZoneAnswer


class WalledGarden:
    def __init__(self, config: WalledGardenConfig) -> None:
        self.configure(config)
        self.subscriber_of: dict[str, int] = {}  # leased address -> subscriber
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
        return self.enabled and self.subscriber_of.get(address) in self.suspended

    def lease_granted(self, address: str, subscriber_id: int | None) -> bool:
        before = self.is_walled(address)
        if subscriber_id is None:
            self.subscriber_of.pop(address, None)
        else:
            self.subscriber_of[address] = subscriber_id
        return self.is_walled(address) != before

    def lease_ended(self, address: str) -> bool:
        before = self.is_walled(address)
        self.subscriber_of.pop(address, None)
        return before

    def set_suspended(self, subscriber_id: int, suspended: bool) -> bool:
        if suspended == (subscriber_id in self.suspended):
            return False
        if suspended:
            self.suspended.add(subscriber_id)
        else:
            self.suspended.discard(subscriber_id)
        return self.enabled and subscriber_id in self.subscriber_of.values()

    def addresses_of(self, subscriber_id: int) -> list[str]:
        return sorted(a for a, s in self.subscriber_of.items() if s == subscriber_id)

    def walled_addresses(self) -> frozenset[str]:
        if not self.enabled:
            return frozenset()
        return frozenset(a for a, s in self.subscriber_of.items() if s in self.suspended)

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
