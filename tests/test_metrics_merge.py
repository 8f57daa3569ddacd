"""Merging several processes' Prometheus texts into one (``ispd.metrics.merge``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ispd.metrics.merge import merge_expositions


def exposition(queries: int, entries: int, anchors: int, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    counter = Counter("ispd_dns_queries", "Queries.", ["type"], registry=registry)
    counter.labels("A").inc(queries)
    counter.labels("AAAA").inc(1)
    Gauge("ispd_dns_cache_entries", "Entries.", registry=registry).set(entries)
    Gauge("ispd_dns_dnssec_negative_trust_anchors", "NTAs.", registry=registry).set(anchors)
    histogram = Histogram("ispd_dns_answer_seconds", "Latency.", buckets=[0.001, 0.01], registry=registry)
    for value in latencies:
        histogram.observe(value)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_counters_histograms_and_gauges_add_up_each_family_once() -> None:
    first = exposition(10, 100, 2, [0.0005, 0.005])
    second = exposition(5, 40, 2, [0.05])
    merged = merge_expositions([first, second], frozenset({"ispd_dns_dnssec_negative_trust_anchors"})).decode()
    for family in ("ispd_dns_queries_total counter", "ispd_dns_cache_entries gauge", "ispd_dns_answer_seconds histogram"):
        assert merged.count(f"# TYPE {family}\n") == 1, merged
    got = samples(merged)
    assert got[("ispd_dns_queries_total", (("type", "A"),))] == 15
    assert got[("ispd_dns_queries_total", (("type", "AAAA"),))] == 2
    assert got[("ispd_dns_cache_entries", ())] == 140
    assert got[("ispd_dns_dnssec_negative_trust_anchors", ())] == 2  # a copy in each: not 4
    assert got[("ispd_dns_answer_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("ispd_dns_answer_seconds_bucket", (("le", "0.01"),))] == 2
    assert got[("ispd_dns_answer_seconds_bucket", (("le", "+Inf"),))] == 3
    assert got[("ispd_dns_answer_seconds_count", ())] == 3
    key = ("ispd_dns_queries_created", (("type", "A"),))
    assert got[key] == min(samples(first)[key], samples(second)[key])  # the earliest start


def test_a_series_only_one_process_has_is_kept_and_one_text_is_unchanged() -> None:
    first = exposition(1, 1, 0, [])
    only_here = "# HELP ispd_dns_extra A gauge.\n# TYPE ispd_dns_extra gauge\nispd_dns_extra 7.0\n"
    got = samples(merge_expositions([first, only_here]).decode())
    assert got[("ispd_dns_extra", ())] == 7
    assert samples(merge_expositions([first]).decode()) == samples(first)
    assert merge_expositions([]) == b""


def test_a_restarted_processs_counters_go_on_and_a_silent_one_counts_as_last_seen() -> None:
    from ispd.metrics.merge import ContinuousCounters

    keeper = ContinuousCounters()
    key = ("ispd_dns_queries_total", (("type", "A"),))
    assert samples(keeper.adjust(exposition(10, 100, 0, [0.005]), life=1))[key] == 10
    assert samples(keeper.adjust(exposition(12, 90, 0, [0.005]), life=1))[key] == 12
    silent = samples(keeper.adjust(None, life=1))  # did not answer: as last seen, without its gauges
    assert silent[key] == 12 and ("ispd_dns_cache_entries", ()) not in silent
    restarted = samples(keeper.adjust(exposition(3, 5, 0, []), life=2))  # a new life: 12 counted before it
    assert restarted[key] == 15
    assert restarted[("ispd_dns_answer_seconds_count", ())] == 1  # the first life's one observation
    assert restarted[("ispd_dns_cache_entries", ())] == 5  # gauges are the process's now
    assert samples(keeper.adjust(exposition(4, 5, 0, []), life=2))[key] == 16


def test_a_series_a_live_process_stops_reporting_stays_as_last_seen() -> None:
    """A reload that turns DNSSEC off takes its counters out of the text: not a restart."""
    from ispd.metrics.merge import ContinuousCounters

    keeper = ContinuousCounters()
    key = ("ispd_dns_queries_total", (("type", "A"),))
    assert samples(keeper.adjust(exposition(1000, 1, 0, [0.005]), life=7))[key] == 1000
    without_histogram = exposition(1010, 1, 0, []).split("# HELP ispd_dns_answer_seconds ")[0]
    got = samples(keeper.adjust(without_histogram, life=7))
    assert got[key] == 1010  # not 2010: the same life goes on
    assert got[("ispd_dns_answer_seconds_count", ())] == 1  # kept as last seen


def test_one_series_that_falls_within_a_life_goes_on_from_where_it_was() -> None:
    """DNSSEC turned off and on again by reloads: its counters start from zero in the same
    process; the sum must not fall."""
    from ispd.metrics.merge import ContinuousCounters

    keeper = ContinuousCounters()
    key = ("ispd_dns_queries_total", (("type", "A"),))
    other = ("ispd_dns_queries_total", (("type", "AAAA"),))
    assert samples(keeper.adjust(exposition(2000, 1, 0, []), life=3))[key] == 2000
    got = samples(keeper.adjust(exposition(5, 1, 0, []).replace('{type="AAAA"} 1.0', '{type="AAAA"} 3.0'), life=3))
    assert got[key] == 2005 and got[other] == 3
