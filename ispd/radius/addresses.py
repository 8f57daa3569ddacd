"""RADIUS address pools: which address a session should get (Framed-IP-Address).

Theory of operation
-------------------
The store decides who holds an address (``Store.claim_address``: the first candidate nobody
else holds, in one transaction), so that a pool shared with DHCP, or with another ispd node,
never gives one address twice. This view only proposes good candidates, so that a claim rarely
has to try more than one:

- the address the same *holder* (a subscriber on one line: User-Name and Calling-Station-Id or
  NAS-Port-Id) had last, so a reconnecting router gets its address back;
- then addresses not known to be held, from a cursor that walks the pool round and round (the
  address freed longest ago comes round last, which keeps it with its last user for longer).

What the view knows comes from the store at start (every live lease in the pools), from this
service's own claims and releases, from DHCP's leases on the bus, and from the candidates a
claim found taken. It may be behind (another node, the CLI): the store corrects it. A claim
outside every pool is kept too (a reload shrank its pool, or left it named by no plan): its
session still uses the address, so its hold is renewed and given back at the Stop as any other;
only no new claim is proposed there.

The view also remembers which subscriber holds each claim, so that a session that stops gives its
address back, and a session still open renews it (``renewals``). Only the event loop touches it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Container, Iterable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from ispd.dhcp.identifiers import normalize_key
from ispd.store.models import Lease, LeaseService, LeaseState

CANDIDATES = 8  # per claim: enough to get past a few addresses the view did not know were taken
MAX_SCAN = 65536  # addresses looked at per claim: a huge, full pool costs a bounded amount of work


@dataclass(slots=True)
class _Pool:
    name: str
    first: int
    last: int
    cursor: int

    def __contains__(self, address: int) -> bool:
        return self.first <= address <= self.last


@dataclass(frozen=True, slots=True)
class Claim:
    """An address this service gave: to whom (``holder``, the lease's client id) and which subscriber."""

    holder: str
    subscriber_id: int | None
    expires_at: float
    granted_at: float = 0.0  # the latest Access-Accept that gave or renewed it
    # The Acct-Session-Id that every Access-Accept which gave the address again since it was
    # claimed named: re-authentications of that one open session (802.1X does it periodically).
    # None: not given again; SEVERAL: given again for other sessions too, or naming none.
    regiven_for: str | None = None


SEVERAL = ""  # Claim.regiven_for: given again for more than one session (no Acct-Session-Id is empty)


def holder_of(username: str, line: str | None) -> str:
    """Who an address is for: the subscriber's login on one line (the CPE's MAC or the port)."""
    return f"{username} {line}" if line else username


def line_of(calling_station_id: str | None, nas_port_id: str | None) -> tuple[str | None, str | None]:
    """(the CPE's MAC if Calling-Station-Id is one, the line): the MAC, else the port, else the
    Calling-Station-Id as it is."""
    mac = None
    if calling_station_id:
        with contextlib.suppress(ValueError):
            mac = normalize_key("mac", calling_station_id)
    return mac, mac or nas_port_id or calling_station_id or None


class AddressPools:
    def __init__(self, pools: Iterable[tuple[str, int, int]], unclaimable: Iterable[int] = ()) -> None:
        self.pools = {name: _Pool(name, first, last, first) for name, first, last in pools}
        # Addresses of the pools never proposed (``Config.radius_pool_routers``: a DHCP pool's
        # router): a session holding one keeps it, but is not given it again.
        self.unclaimable = frozenset(unclaimable)
        self.held: dict[int, float] = {}  # address → held until (by anyone: a session, a DHCP client)
        self.claims: dict[int, Claim] = {}  # the addresses this service holds
        self.by_holder: dict[str, int] = {}  # each holder's latest address

    def pool_of(self, address: int) -> _Pool | None:
        for pool in self.pools.values():
            if address in pool:
                return pool
        return None

    def load(self, leases: Iterable[Lease], now: float) -> None:
        for lease in leases:
            self.learn(lease, now)

    def learn(self, lease: Lease, now: float, granted_at: float | None = None) -> None:
        """A lease as the store has it (or as a DHCP event told it); a claim of ours was granted
        at ``granted_at`` (unknown: when it began)."""
        try:
            address = int(IPv4Address(lease.address))
        except ValueError:
            return
        if self.pool_of(address) is None and lease.service != LeaseService.RADIUS:
            return  # (a claim of ours outside the pools now is still its session's: see above)
        if lease.service != LeaseService.RADIUS and self._claimed_at(address, now):
            return  # a DHCP event older than our claim (the store refuses DHCP what we hold)
        if lease.service == LeaseService.RADIUS and lease.client_id is not None:
            self.by_holder[lease.client_id] = address
        if not (lease.state in (LeaseState.BOUND, LeaseState.DECLINED) and lease.expires_at > now):
            self.ended(lease.address)
            return
        self.held[address] = lease.expires_at
        if lease.service == LeaseService.RADIUS and lease.client_id is not None:
            self.claims[address] = Claim(lease.client_id, lease.subscriber_id, lease.expires_at,
                                         lease.starts_at if granted_at is None else granted_at)
        else:
            self.claims.pop(address, None)

    def ended(self, address_text: str, *, elsewhere_at: float | None = None) -> None:
        """``address`` is free: as this service knows (a release, a lost claim), or as a DHCP
        event said at ``elsewhere_at``, which cannot end a claim of ours live then."""
        try:
            address = int(IPv4Address(address_text))
        except ValueError:
            return
        if elsewhere_at is not None and self._claimed_at(address, elsewhere_at):
            return
        self.held.pop(address, None)
        self.claims.pop(address, None)

    def _claimed_at(self, address: int, now: float) -> bool:
        claim = self.claims.get(address)
        return claim is not None and claim.expires_at > now

    def taken(self, address_text: str, until: float) -> None:
        """A claim found ``address`` held by someone else until ``until``."""
        address = int(IPv4Address(address_text))
        self.held[address] = until
        self.claims.pop(address, None)

    def candidates(self, pool_name: str, holder: str, now: float,
                   reserved: Container[str] = ()) -> tuple[str, ...]:
        """Addresses of the pool to try, best first, none of them ``reserved`` (for a
        subscriber's fixed address); empty if every one is held."""
        pool = self.pools[pool_name]
        held, unclaimable = self.held, self.unclaimable
        chosen: list[int] = []
        previous = self.by_holder.get(holder)

        def passed_over(address: int) -> bool:
            return address in unclaimable or (bool(reserved) and str(IPv4Address(address)) in reserved)

        if previous is not None and previous in pool and not passed_over(previous):
            claim = self.claims.get(previous)
            if held.get(previous, 0.0) <= now or (claim is not None and claim.holder == holder):
                chosen.append(previous)
        size = pool.last - pool.first + 1
        address = pool.cursor
        for _ in range(min(size, MAX_SCAN)):
            if len(chosen) >= CANDIDATES:
                break
            # Reserved ones passed over here, not left out of what was chosen: a run of
            # CANDIDATES fixed addresses (static customers at the start of a pool) made the
            # round's candidates all reserved, none proposed, and the login was refused as if
            # the pool were full.
            if held.get(address, 0.0) <= now and address != previous and not passed_over(address):
                chosen.append(address)
            address = address + 1 if address < pool.last else pool.first
        pool.cursor = address
        return tuple(str(IPv4Address(a)) for a in chosen)

    def claimed(self, lease: Lease, granted_at: float) -> None:
        """The store gave (or renewed) ``lease`` at ``granted_at``: for an Access-Accept then, or
        for a session that began then."""
        self.learn(lease, granted_at, granted_at)

    def reuse(self, holder: str, pool_name: str, now: float, until: float,
              session_id: str | None = None) -> str | None:
        """The address of ``pool_name`` that ``holder`` holds already, live until at least
        ``until``: durable in the store as it is, so an Access-Accept can give it again without
        a write (a reconnect storm after a BNG reboot runs at the speed of authentication).
        None: ask the store."""
        address = self.by_holder.get(holder)
        claim = self.claims.get(address) if address is not None else None
        if address is None or claim is None or claim.holder != holder or claim.expires_at < until \
                or address in self.unclaimable:
            return None
        pool = self.pools.get(pool_name)
        if pool is None or address not in pool:
            return None
        if claim.regiven_for is None:
            regiven_for = session_id or SEVERAL
        else:
            regiven_for = claim.regiven_for if claim.regiven_for == session_id else SEVERAL
        self.claims[address] = replace(claim, granted_at=now, regiven_for=regiven_for)
        return str(IPv4Address(address))

    def claim_for(self, address_text: str | None, subscriber_id: int | None) -> Claim | None:
        """The claim a session of ``subscriber_id`` on ``address`` has, if this service gave it."""
        if address_text is None:
            return None
        try:
            claim = self.claims.get(int(IPv4Address(address_text)))
        except ValueError:
            return None
        if claim is None or claim.subscriber_id != subscriber_id:
            return None
        return claim

    def renewed(self, address_text: str, expires_at: float) -> None:
        address = int(IPv4Address(address_text))
        claim = self.claims.get(address)
        if claim is not None:
            self.claims[address] = replace(claim, expires_at=expires_at)
            self.held[address] = expires_at
