"""Delegated prefixes that ispd reserves for logins from a ``[[radius.prefix_pool]]``.

Theory of operation. A prefix from a pool is not leased but reserved for good (RIPE-690's
stable prefixes): a ``username`` reservation in the store, which checks it against every other
reservation atomically and which DHCPv6 skips. So the pool keeps no state worth persisting: a
cursor over its delegated prefixes in order, which starts just past the pool's last reserved
prefix at every start (the pool fills from its beginning) and skips what the directory knows is
reserved. Each candidate is handed out once per pass (the
cursor moves past it), so that two logins reserving at once try different prefixes; the store
still decides, and a candidate it refuses is simply passed over. A prefix given back (its
reservation deleted) is found again when the cursor wraps around.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv6Network

from ispd.radius.config import PrefixPoolConfig


class PrefixPool:
    def __init__(self, name: str, prefix: IPv6Network, delegated_length: int) -> None:
        self.name = name
        self.prefix = prefix
        self.delegated_length = delegated_length
        self.size = 1 << (delegated_length - prefix.prefixlen)
        self._first = int(prefix.network_address)
        self._step = 1 << (128 - delegated_length)
        self.cursor = 0  # the index of the next candidate

    @staticmethod
    def of(config: PrefixPoolConfig) -> PrefixPool:
        return PrefixPool(config.name, config.prefix, config.delegated_length)

    def next_free(self, reserved: Callable[[int, int], bool], limit: int) -> IPv6Network | None:
        """The next delegated prefix from the cursor that ``reserved(network, length)`` does not
        name, looking at most at ``limit`` of them (and at most once at each): None when those
        were all reserved. The cursor moves past what it looked at."""
        length = self.delegated_length
        for _ in range(min(limit, self.size)):
            network = self._first + self.cursor * self._step
            self.cursor = (self.cursor + 1) % self.size
            if not reserved(network, length):
                return IPv6Network((network, length))
        return None

    def resume_past(self, last_reserved: Callable[[int, int], int | None]) -> None:
        """The cursor just past the last reserved network in the pool (``last_reserved(first,
        last)``, the highest network reserved in that span), as after a start: the pool fills from
        its beginning, so the free ones are there, and a search from the beginning would first
        cross every reservation made before (more than one login's worth in a large pool)."""
        last = last_reserved(self._first, self._first + self.size * self._step - 1)
        self.cursor = 0 if last is None else ((last - self._first) // self._step + 1) % self.size

    def same_as(self, config: PrefixPoolConfig) -> bool:
        return (self.prefix, self.delegated_length) == (config.prefix, config.delegated_length)


def prefix_pools(configs: list[PrefixPoolConfig], last_reserved: Callable[[int, int], int | None],
                 old: dict[str, PrefixPool] | None = None) -> dict[str, PrefixPool]:
    """The pools by name, each new one's cursor past its reservations; after a reload, an
    unchanged pool keeps its cursor."""
    old = old or {}
    pools = {}
    for config in configs:
        kept = old.get(config.name)
        if kept is not None and kept.same_as(config):
            pools[config.name] = kept
        else:
            pools[config.name] = PrefixPool.of(config)
            pools[config.name].resume_past(last_reserved)
    return pools
