"""A ceiling on the queries per second the resolver sends to one zone's servers (Unbound's
``ratelimit``).

Why. Infected subscriber devices run random-subdomain ("water torture") floods: name after name
under one victim zone, each new, so each a cache miss that costs the resolver an iteration and
the victim's servers a query. A per-client limit does not help when thousands of devices each
ask a little. Counting by the zone whose servers would be asked stops the flood at the
resolver: past the limit a question is answered SERVFAIL (or stale) before any query leaves,
and the other zones' resolutions keep their share of the process. One question in ``factor``
goes through anyway, so that a busy legitimate zone degrades rather than disappears.

The count is per calendar second and per zone name, as the resolver knows zones (the deepest
delegation found); a limit configured for a domain covers it and every zone below it, the
deepest such domain winning. Pure: the caller gives the time and the random draw.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping

from ispd.dns.wire import ROOT, parent_name

MAX_ZONES = 100_000  # counters kept at once; older seconds' are dropped past it


class ZoneRateLimiter:
    __slots__ = ("_counts", "_draw", "_newly_limited", "default_qps", "factor", "limited", "limits",
                 "on_newly_limited")

    default_qps: int  # 0: no limit where ``limits`` gives none
    factor: int  # one in ``factor`` questions over the limit goes through; 0: none
    limits: dict[bytes, int]  # domain (lower case, wire form) → qps for it and the zones below

    def __init__(self, default_qps: int, factor: int, limits: Mapping[bytes, int] | None = None,
                 draw: Callable[[], float] = random.random) -> None:
        self.limited = 0  # questions stopped, in all
        # Called when a zone goes over with none waiting in ``take_newly_limited`` (to log soon).
        self.on_newly_limited: Callable[[], None] | None = None
        self._draw = draw
        # zone → [second, queries sent in it, the zone's limit]
        self._counts: dict[bytes, list[int]] = {}
        self.configure(default_qps, factor, limits or {})
        # Zones that went over the limit since the caller last asked (for a log line per zone).
        self._newly_limited: dict[bytes, int] = {}

    def configure(self, default_qps: int, factor: int, limits: Mapping[bytes, int]) -> None:
        """A reload's limits; the counts start afresh, the total of questions stopped goes on."""
        self.default_qps, self.factor, self.limits = default_qps, factor, dict(limits)
        self._counts.clear()

    @property
    def enabled(self) -> bool:
        return bool(self.default_qps or self.limits)

    def allow(self, zone: bytes, now: float) -> bool:
        """Whether one more query may go to ``zone``'s servers now; counts it if so."""
        second = int(now)
        count = self._counts.get(zone)
        if count is None:
            if len(self._counts) >= MAX_ZONES:
                self._forget_before(second)
            count = self._counts[zone] = [second, 0, self._limit_of(zone)]
        elif count[0] != second:
            count[0], count[1] = second, 0
        limit = count[2]
        if not limit or count[1] < limit or (self.factor and self._draw() * self.factor < 1):
            count[1] += 1
            return True
        self.limited += 1
        if zone not in self._newly_limited and len(self._newly_limited) < 1000:
            if not self._newly_limited and self.on_newly_limited is not None:
                self.on_newly_limited()
            self._newly_limited[zone] = limit
        return False

    def take_newly_limited(self) -> dict[bytes, int]:
        """The zones (and their limits) that went over since the last call."""
        zones, self._newly_limited = self._newly_limited, {}
        return zones

    def _limit_of(self, zone: bytes) -> int:
        if self.limits:
            domain = zone.lower()
            while True:
                limit = self.limits.get(domain)
                if limit is not None:
                    return limit
                if domain == ROOT:
                    break
                domain = parent_name(domain)
        return self.default_qps

    def _forget_before(self, second: int) -> None:
        stale = [zone for zone, count in self._counts.items() if count[0] < second]
        for zone in stale:
            del self._counts[zone]
        if len(self._counts) >= MAX_ZONES:  # that many zones within one second: start afresh
            self._counts.clear()
