"""Delegated prefixes that ispd reserves for logins from a ``[[radius.prefix_pool]]``.

Theory of operation. A prefix from a pool is not leased but reserved for good (RIPE-690's
stable prefixes): a ``username`` reservation in the store, which checks it against every other
reservation atomically and which DHCPv6 skips. So the pool keeps no state worth persisting: a
cursor over its delegated prefixes in order, which starts at the pool's beginning at every start
and skips what the directory knows is reserved. Each candidate is handed out once per pass (the
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

    def same_as(self, config: PrefixPoolConfig) -> bool:
        return (self.prefix, self.delegated_length) == (config.prefix, config.delegated_length)


def prefix_pools(configs: list[PrefixPoolConfig], old: dict[str, PrefixPool] | None = None) -> dict[str, PrefixPool]:
    """The pools by name; after a reload, an unchanged pool keeps its cursor."""
    old = old or {}
    return {c.name: old[c.name] if c.name in old and old[c.name].same_as(c) else PrefixPool.of(c) for c in configs}
