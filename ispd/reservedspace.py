"""The fixed IPv6 addresses and prefixes of reservations, indexed for the servers that must give
them to no one else: the DHCPv6 server's pools, and RADIUS's prefix pools (a PPPoE login's
Delegated-IPv6-Prefix), each asking whether a candidate is, lies in, or holds a reserved network.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv6Network

from ispd.store.models import Reservation


class ReservedSpace:
    """The fixed addresses and prefixes of reservations, so that no one else gets them nor a
    prefix that holds one: a pool's walk asks for each candidate whether it holds, or lies in,
    a network reserved to another client. Kept by length (a length's networks by their bits),
    and for each length asked about (the pools', the reserved networks' own), which reserved
    networks lie inside each network of that length, so each question is a few dictionary
    lookups.

    The store refuses overlapping reservations except one kind: a subscriber's fixed address
    inside its own prefix (its business, the store says). Those do not keep each other's owner
    from its own (``subscriber``)."""

    def __init__(self, pool_lengths: Iterable[int], reservations: Iterable[Reservation]) -> None:
        self.lengths: set[int] = set(pool_lengths)  # the lengths ``inside`` answers for
        self.by_length: dict[int, dict[int, set[int]]] = {}  # length -> network bits -> ids
        self.inside: dict[int, dict[int, set[int]]] = {}  # length -> its network's bits -> ids of longer ones
        self.networks: dict[int, list[IPv6Network]] = {}  # reservation id -> what it reserves
        self.subscriber_of: dict[int, int] = {}  # reservation id -> its subscriber
        for reservation in reservations:
            self.add(reservation)

    def add(self, reservation: Reservation) -> None:
        networks = [IPv6Network(text) for text in (reservation.prefix6,
                                                   f"{reservation.address6}/128" if reservation.address6 else None)
                    if text]
        if not networks:
            return
        self.networks[reservation.id] = networks
        self.subscriber_of[reservation.id] = reservation.subscriber_id
        for network in networks:
            if network.prefixlen not in self.lengths:  # a reserved network's own length is asked about too
                self.ask_about(network.prefixlen, but=network)
        for network in networks:
            value, length = int(network.network_address), network.prefixlen
            self.by_length.setdefault(length, {}).setdefault(value >> (128 - length), set()).add(reservation.id)
            self._index_inside(network, reservation.id, self.lengths)

    def ask_about(self, length: int, *, but: IPv6Network | None = None) -> None:
        """Index, for networks of ``length``, the reserved networks inside each (``but`` that one,
        being added), so that ``taken`` answers for that length without a walk."""
        self.lengths.add(length)
        for rid, others in self.networks.items():
            for other in others:
                if other is not but:
                    self._index_inside(other, rid, (length,))

    def last_within(self, first: int, last: int) -> int | None:
        """The highest network address reserved in ``first``..``last`` (a walk: for a start or a
        reload, not for each question)."""
        found = [value for networks in self.networks.values() for network in networks
                 if first <= (value := int(network.network_address)) <= last]
        return max(found, default=None)

    def _index_inside(self, network: IPv6Network, reservation_id: int, lengths: Iterable[int]) -> None:
        value = int(network.network_address)
        for length in lengths:
            if length < network.prefixlen:
                self.inside.setdefault(length, {}).setdefault(value >> (128 - length), set()).add(reservation_id)

    def remove(self, reservation_id: int) -> None:
        self.subscriber_of.pop(reservation_id, None)
        for network in self.networks.pop(reservation_id, []):
            value, length = int(network.network_address), network.prefixlen
            self.by_length.get(length, {}).get(value >> (128 - length), set()).discard(reservation_id)
            for inside_length in self.lengths:
                self.inside.get(inside_length, {}).get(value >> (128 - inside_length), set()).discard(reservation_id)

    def taken(self, network: IPv6Network, mine: int | None, subscriber: int | None = None) -> bool:
        """Whether ``network`` is, lies in, or holds a network reserved to a reservation other
        than ``mine`` (and, given ``subscriber``, of another subscriber)."""
        return self.taken_bits(int(network.network_address), network.prefixlen, mine, subscriber)

    def taken_bits(self, value: int, length: int, mine: int | None, subscriber: int | None = None) -> bool:
        """``taken`` for the network ``value``/``length`` as integers (a pool's walk has them)."""
        if not self.networks:
            return False

        def another_s(owners: set[int]) -> bool:
            return any(owner != mine and (subscriber is None or self.subscriber_of.get(owner) != subscriber)
                       for owner in owners)

        for reserved_length, tops in self.by_length.items():
            if reserved_length <= length and another_s(tops.get(value >> (128 - reserved_length), set())):
                return True
        if length in self.lengths:
            return another_s(self.inside.get(length, {}).get(value >> (128 - length), set()))
        network = IPv6Network((value, length))
        return another_s({owner for owner, networks in self.networks.items()
                          if any(n.prefixlen > length and n.subnet_of(network) for n in networks)})
