"""Address allocation: which address a client gets, and what every address is doing now.

Theory of operation
-------------------
Each address that was ever handed out has a ``Binding``: offered (held for one client for a
short while), bound (a lease until ``expires_at``), released, expired, or declined (quarantined
until ``expires_at``). An address with no binding has never been used since the daemon first
saw its pool.

``AddressPool.allocate`` prefers never-used addresses (a cursor walks the range once), then
reuses ended ones oldest first (a queue). So an address stays with its last client for as long
as the pool allows, and a returning client usually gets its old address back (the engine tries
that first, through ``LeaseTable.previous_addresses``).

The queue is lazy: an address goes to the back whenever it might become free (its offer was
made, its lease ended; once, wherever it was before) and is checked when it reaches the head;
one that is bound again is dropped (it goes back when that lease ends), one that is still held
or quarantined goes to the back. A scan is bounded (``MAX_SCAN``) so that a pool full of held offers costs a DISCOVER
flood no more than a fixed amount of work per packet.

An address a RADIUS session holds (a pool shared with RADIUS) is a *foreign* binding: bound to
no client of ours until the session's hold ends. The store is the arbiter: it refuses a DHCP
lease on an address a session holds, and the engine learns foreign holds from the store at
start, from the bus while running, and from those refusals. A foreign address leaves the
queue while held and comes back when the hold ends or is given up.

The table is only ever touched from the event loop's thread; the store has the durable copy.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

MAX_SCAN = 512


class BindingState(Enum):
    OFFERED = "offered"
    BOUND = "bound"
    RELEASED = "released"
    EXPIRED = "expired"
    DECLINED = "declined"


@dataclass(slots=True)
class Binding:
    address: int
    state: BindingState
    expires_at: float
    client_key: bytes | None
    starts_at: float = 0.0
    hw_address: str | None = None
    client_id: str | None = None
    hostname: str | None = None
    subscriber_id: int | None = None
    circuit_id: str | None = None
    remote_id: str | None = None
    pool: str | None = None
    # Held by another service (a RADIUS session given the address from a pool shared with us):
    # never ours to offer, renew or end; it frees itself at expiry or when the session ends.
    foreign: bool = False
    # Its host name is the one its reservation gave (not the client's): not kept past a renewal
    # once the reservation gives it no more.
    hostname_reserved: bool = False
    # When its client last renewed it (the ACK): the client-last-transaction-time a leasequery
    # tells. None for one loaded from the store, which keeps no such time.
    renewed_at: float | None = None

    def held(self, now: float) -> bool:
        """Whether the address is unavailable to anyone but its client (or to all, if declined)."""
        if self.state in (BindingState.BOUND, BindingState.OFFERED, BindingState.DECLINED):
            return self.expires_at > now
        return False

    def held_by(self, client_key: bytes, now: float) -> bool:
        return self.client_key == client_key and self.state in (BindingState.BOUND, BindingState.OFFERED) \
            and self.expires_at > now


class AddressPool:
    def __init__(self, name: str, first: int, last: int, *, walled_garden: bool = False) -> None:
        self.name, self.first, self.last, self.walled_garden = name, first, last, walled_garden
        self.size = last - first + 1
        self._cursor = first
        # An ordered set: an address queued again moves to the back (it was freed last), never
        # twice in (a copy per offer and per release grew the queue by one every client).
        self._returned: OrderedDict[int, None] = OrderedDict()

    def __contains__(self, address: int) -> bool:
        return self.first <= address <= self.last

    def returned(self, address: int) -> None:
        """``address`` may have become free (offered, or its lease ended): consider it later."""
        self._returned[address] = None
        self._returned.move_to_end(address)

    def allocate(self, is_free: Callable[[int], bool], is_fresh: Callable[[int], bool],
                 recheck: Callable[[int], bool]) -> int | None:
        """A free address: a never-used one if any is left, else the one free the longest.
        ``recheck``: whether a taken address will free itself (a lapsing offer, a quarantine)
        and so must stay queued; bound ones are queued again when their lease ends."""
        while self._cursor <= self.last:
            address = self._cursor
            self._cursor += 1
            if is_fresh(address):
                return address
        queue = self._returned
        for _ in range(min(len(queue), MAX_SCAN)):
            address, _ = queue.popitem(last=False)
            if is_free(address):
                return address
            if recheck(address):
                queue[address] = None
        return None


class LeaseTable:
    """Every binding by address and by MAC, and each client's latest addresses (newest first). An address
    is remembered for the client whose binding it holds only: once it goes to another, the
    first client forgets it, and a client with nothing left is forgotten, so the clients
    remembered never outnumber the addresses (phones with random MACs come and go for ever)."""

    REMEMBERED = 4  # addresses per client: enough to return from the walled garden to the old one

    def __init__(self) -> None:
        self.by_address: dict[int, Binding] = {}
        self.by_client: dict[bytes, list[int]] = {}
        # The addresses whose binding names each MAC, whatever key its client used (a leasequery
        # by MAC asks of clients that send a client-id too).
        self.by_hw_address: dict[str, list[int]] = {}

    def get(self, address: int) -> Binding | None:
        return self.by_address.get(address)

    def put(self, binding: Binding) -> None:
        before = self.by_address.get(binding.address)
        self.by_address[binding.address] = binding
        if before is not None and before.client_key is not None and before.client_key != binding.client_key:
            self._forget_address(before.client_key, binding.address)
        # ("" is no MAC: a client of hlen 0, known by its client-id; not indexed, or all of them
        # would share one list that each of their DORAs walks.)
        if before is None or before.hw_address != binding.hw_address:
            if before is not None and before.hw_address:
                held = self.by_hw_address.get(before.hw_address)
                if held is not None and binding.address in held:
                    held.remove(binding.address)
                    if not held:
                        del self.by_hw_address[before.hw_address]
            if binding.hw_address:
                self.by_hw_address.setdefault(binding.hw_address, []).append(binding.address)
        if binding.client_key is not None:
            remembered = self.by_client.setdefault(binding.client_key, [])
            if not remembered or remembered[0] != binding.address:
                if binding.address in remembered:
                    remembered.remove(binding.address)
                remembered.insert(0, binding.address)
                del remembered[self.REMEMBERED :]

    def previous_addresses(self, client_key: bytes) -> list[int]:
        """The addresses this client had (and nobody has had since), newest first."""
        remembered = self.by_client.get(client_key)
        if remembered is None:
            return []
        current = [a for a in remembered if (b := self.by_address.get(a)) is not None and b.client_key == client_key]
        if not current:
            del self.by_client[client_key]  # all its addresses went to others: forget the client
        return current

    def forget_client(self, binding: Binding) -> None:
        """The client must not get this address back (it declined it)."""
        if binding.client_key is not None:
            self._forget_address(binding.client_key, binding.address)
        binding.client_key = None

    def _forget_address(self, client_key: bytes, address: int) -> None:
        remembered = self.by_client.get(client_key)
        if remembered is not None and address in remembered:
            remembered.remove(address)
            if not remembered:
                del self.by_client[client_key]

    def expired(self, now: float) -> Iterable[Binding]:
        """Bound leases past their expiry (for the reclaim pass)."""
        return [b for b in self.by_address.values() if b.state is BindingState.BOUND and b.expires_at <= now]
