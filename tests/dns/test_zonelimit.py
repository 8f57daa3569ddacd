"""The per-zone ceiling on upstream queries (Unbound's ratelimit), with a fixed clock and draw."""

from __future__ import annotations

import pytest

from ispd.dns import zonelimit
from ispd.dns.wire import ROOT, name_from_text
from ispd.dns.zonelimit import Screen, ZoneRateLimiter

N = name_from_text
VICTIM = N("victim.example.")


def sent(limiter: ZoneRateLimiter, zone: bytes, now: float, tries: int) -> int:
    return sum(limiter.allow(zone, now) for _ in range(tries))


def test_a_zone_gets_its_limit_each_second_and_no_more() -> None:
    limiter = ZoneRateLimiter(5, factor=0)
    assert sent(limiter, VICTIM, 100.0, 20) == 5
    assert limiter.limited == 15
    assert sent(limiter, N("other.example."), 100.5, 5) == 5  # a zone of its own
    assert sent(limiter, VICTIM, 100.9, 3) == 0
    assert sent(limiter, VICTIM, 101.0, 20) == 5  # a new second
    assert limiter.take_newly_limited() == {VICTIM: 5}
    assert limiter.take_newly_limited() == {}


def test_the_first_zone_over_since_the_last_report_calls_for_one() -> None:
    calls: list[None] = []
    limiter = ZoneRateLimiter(1, factor=0)
    limiter.on_newly_limited = lambda: calls.append(None)
    for zone in (VICTIM, VICTIM, N("other.example."), VICTIM):
        limiter.allow(zone, 1.0)
        limiter.allow(zone, 1.0)
    assert len(calls) == 1
    assert limiter.take_newly_limited() == {VICTIM: 1, N("other.example."): 1}
    limiter.allow(VICTIM, 1.0)
    assert len(calls) == 2


def test_one_in_factor_goes_through_past_the_limit() -> None:
    draws = iter([0.5, 0.05, 0.5, 0.5, 0.09, 0.1])
    limiter = ZoneRateLimiter(2, factor=10, draw=lambda: next(draws))
    assert [limiter.allow(VICTIM, 7.0) for _ in range(8)] == [True, True, False, True, False, False, True, False]
    assert limiter.limited == 4


def test_a_domain_limit_covers_the_zones_below_it_and_the_deepest_wins() -> None:
    limiter = ZoneRateLimiter(0, factor=0, limits={N("example."): 3, N("isp.example."): 0, ROOT: 50})
    assert limiter.enabled
    assert sent(limiter, N("Victim.Example."), 1.0, 10) == 3
    assert sent(limiter, N("shop.isp.example."), 1.0, 100) == 100  # 0: no limit there
    assert sent(limiter, N("test."), 1.0, 60) == 50  # the root's limit covers every zone
    assert sent(limiter, ROOT, 1.0, 60) == 50
    assert not ZoneRateLimiter(0, factor=10).enabled


def test_a_reload_starts_the_counts_afresh_but_keeps_the_total() -> None:
    limiter = ZoneRateLimiter(1, factor=0)
    assert sent(limiter, VICTIM, 1.0, 3) == 1
    limiter.configure(2, 0, {})
    assert sent(limiter, VICTIM, 1.0, 3) == 2
    assert limiter.limited == 3


def test_the_counters_are_bounded_under_a_flood_of_zones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zonelimit, "MAX_ZONES", 100)
    limiter = ZoneRateLimiter(1, factor=0)
    for i in range(250):
        limiter.allow(N(f"z{i}.example."), 1.0 + i // 50)
    assert len(limiter._counts) <= 100
    assert not limiter.allow(N("z249.example."), 5.0)  # the current second's counts are kept


def test_screen_judges_a_question_by_the_deepest_zone_asked_above_it() -> None:
    draws = iter([0.5, 0.01])
    limiter = ZoneRateLimiter(2, factor=10, draw=lambda: next(draws))
    name = N("x1.www.victim.example.")
    assert limiter.screen(name, 5.0) == Screen.GO  # nothing asked yet
    limiter.allow(VICTIM, 5.0)
    assert limiter.screen(name, 5.0) == Screen.GO  # under the limit
    limiter.allow(VICTIM, 5.0)
    assert limiter.screen(name, 5.0) == Screen.STOP  # (draw 0.5: not one in ten)
    assert limiter.limited == 1 and limiter.take_newly_limited() == {VICTIM: 2}
    assert limiter.screen(name, 5.0) == Screen.PAST  # (draw 0.01)
    assert limiter.allow(VICTIM, 5.0, past_limit=True)  # let through once, counted
    assert limiter.screen(name, 6.0) == Screen.GO  # a new second
    # A zone of its own below, not over: its names go on.
    sub = N("sub.victim.example.")
    limiter.allow(sub, 5.0)
    assert limiter.screen(N("a.sub.victim.example."), 5.0) == Screen.GO
    # The root is not judged: a cached delegation may spare it.
    limiter.configure(1, 0, {})
    limiter.allow(ROOT, 9.0)
    limiter.allow(ROOT, 9.0)
    assert limiter.screen(N("new.tld."), 9.0) == Screen.GO
