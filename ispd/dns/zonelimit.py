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

Stopping a question deep in iteration still costs most of a cache miss (the cache lookups,
the search for the delegation), so a flood would keep the process busy all the same. Hence
``screen``: before resolving a client's question, the deepest zone below the root that has been
asked for an ancestor of the name is looked up; if it is over its limit this second, the
question is stopped (or let through, one in ``factor``) there, at the cost of a few dict lookups.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from enum import Enum

from ispd.dns.wire import ROOT, parent_name

MAX_ZONES = 100_000  # counters kept at once; older seconds' are dropped past it


class Screen(Enum):
    GO = "go"  # resolve as usual
    STOP = "stop"  # over the limit: answer SERVFAIL without resolving (counted)
    PAST = "past"  # over the limit, but one of the one in ``factor`` let through


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

    def screen(self, name: bytes, now: float, spared: Callable[[bytes], bool] | None = None) -> Screen:
        """What to do with a client's question for ``name`` (lower case, wire form) before it is
        resolved: judged by the deepest zone below the root asked for an ancestor of it, unless
        ``spared(zone)`` says resolving it may ask none of that zone's servers (the cache holds
        the answer, or the name is a forward zone's or a delegation's below: zones this count
        may not know, as after a reload)."""
        counts, second, domain = self._counts, int(now), name
        while domain != ROOT:
            count = counts.get(domain)
            if count is not None:
                if count[0] != second or not count[2] or count[1] < count[2]:
                    return Screen.GO
                if spared is not None and spared(domain):
                    return Screen.GO  # the resolver counts what it does ask
                if self.factor and self._draw() * self.factor < 1:
                    return Screen.PAST
                self._stopped(domain, count[2])
                return Screen.STOP
            domain = parent_name(domain)
        return Screen.GO  # (the root is not judged here: a cached delegation may spare it)

    def allow(self, zone: bytes, now: float, past_limit: bool = False) -> bool:
        """Whether one more query may go to ``zone``'s servers now; counts it if so.
        ``past_limit``: the question was let through by ``screen`` already."""
        second = int(now)
        count = self._counts.get(zone)
        if count is None:
            if len(self._counts) >= MAX_ZONES:
                self._forget_before(second)
            count = self._counts[zone] = [second, 0, self._limit_of(zone)]
        elif count[0] != second:
            count[0], count[1] = second, 0
        limit = count[2]
        if not limit or count[1] < limit or past_limit or (self.factor and self._draw() * self.factor < 1):
            count[1] += 1
            return True
        self._stopped(zone, limit)
        return False

    def _stopped(self, zone: bytes, limit: int) -> None:
        self.limited += 1
        if zone not in self._newly_limited and len(self._newly_limited) < 1000:
            if not self._newly_limited and self.on_newly_limited is not None:
                self.on_newly_limited()
            self._newly_limited[zone] = limit

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
