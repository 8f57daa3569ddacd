"""Which clients the policy zones limited to some plans or networks apply to.

A policy zone with ``plans`` or ``clients`` (``PolicyZoneConfig.scope``) applies only to the
clients they name: a family filter sold as a plan option, a school's network. Zones limited alike
share a scope, and each scope owns a bit of the answer cache key's variant byte
(``cache.VARIANT_SCOPES``). A client's view is the OR of its scopes' bits. The policy it sees
(``Policy.match``) and the answers kept for it follow from its view: clients of one view share
the fast path's answers, and never get another view's.

A client is on a plan when its address is leased (by DHCP, or in a RADIUS session's
Framed-IP-Address, or in its IPv6 prefixes) to a subscriber on that plan: the walled garden's
map of who holds which address, and ``SubscriberPlans``, each subscriber's plan as the store's
events tell it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ispd.dns.cache import VARIANT_SCOPES
from ispd.dns.config import MAX_POLICY_SCOPES, PolicyZoneConfig
from ispd.store.models import Plan, Subscriber

assert len(VARIANT_SCOPES) == MAX_POLICY_SCOPES


@dataclass(frozen=True, slots=True)
class _Scope:
    plans: frozenset[str]
    networks: tuple[IPv4Network | IPv6Network, ...]
    bit: int


class PolicyScopes:
    """The scopes of the configured policy zones, and a client's view of them."""

    def __init__(self, zones: Sequence[PolicyZoneConfig] = ()) -> None:
        bits: dict[tuple[frozenset[str], frozenset[IPv4Network | IPv6Network]], int] = {}
        zone_bits: list[int] = []
        for zone in zones:
            scope = zone.scope()
            if scope is None:
                zone_bits.append(0)
                continue
            if scope not in bits:
                bits[scope] = VARIANT_SCOPES[len(bits)]  # (the config allows no more)
            zone_bits.append(bits[scope])
        self.zone_bits = tuple(zone_bits)  # per zone, in order: 0 for a zone for every client
        self.zone_names = tuple(zone.name for zone in zones)
        self._scopes = tuple(_Scope(plans, tuple(networks), bit) for (plans, networks), bit in bits.items())
        self.by_plan = any(scope.plans for scope in self._scopes)

    def __bool__(self) -> bool:
        return bool(self._scopes)

    def plan_view(self, plan: str | None) -> int:
        """The bits a client gets from its subscriber's plan."""
        view = 0
        if plan is not None:
            for scope in self._scopes:
                if plan in scope.plans:
                    view |= scope.bit
        return view

    def view(self, address: IPv4Address | IPv6Address, plan: str | None) -> int:
        """The view of a client at ``address`` whose subscriber is on ``plan`` (None: no
        subscriber holds the address, or one without a plan)."""
        view = self.plan_view(plan)
        for scope in self._scopes:
            if not view & scope.bit and any(address in network for network in scope.networks):
                view |= scope.bit
        return view


class SubscriberPlans:
    """Each subscriber's plan by name, loaded from the store at start and kept by its events."""

    def __init__(self) -> None:
        self.plan_names: dict[int, str] = {}
        self._plan_of: dict[int, str] = {}  # subscriber -> plan name (none: no plan)

    def load(self, plans: Iterable[Plan], subscribers: Iterable[Subscriber]) -> None:
        """What the store says (the service applies the events heard while it read again)."""
        self.plan_names = {plan.id: plan.name for plan in plans}
        self._plan_of = {s.id: self.plan_names[s.plan_id] for s in subscribers
                         if s.plan_id is not None and s.plan_id in self.plan_names}

    def plan_of(self, subscriber_id: int | None) -> str | None:
        return None if subscriber_id is None else self._plan_of.get(subscriber_id)

    def plan_added(self, plan_id: int, name: str) -> None:
        self.plan_names[plan_id] = name

    def set_plan(self, subscriber_id: int, plan: str | None) -> None:
        if plan is None:
            self._plan_of.pop(subscriber_id, None)
        else:
            self._plan_of[subscriber_id] = plan

    def set_plan_id(self, subscriber_id: int, plan_id: int | None) -> None:
        self.set_plan(subscriber_id, None if plan_id is None else self.plan_names.get(plan_id))
