from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ispd.metrics.fast import FastCollector, Histogram, LabeledCounter, LabeledHistogram


def test_histogram_buckets_are_cumulative() -> None:
    hist = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 5.0):
        hist.observe(value)
    assert hist.cumulative() == [("0.1", 2.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert hist.total == 5.65


def test_collector_exports_prometheus_families() -> None:
    latency = LabeledHistogram("ispd_test_duration_seconds", "Test.", "operation", ["read"], bounds=(0.5,))
    latency["read"].observe(0.2)
    latency["write"].observe(0.7)
    counter = LabeledCounter("ispd_test_things_total", "Test.", ["kind"])
    counter.inc("a")
    counter.inc("a", amount=2)
    registry = CollectorRegistry()
    registry.register(FastCollector([latency, counter]))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["ispd_test_duration_seconds"].samples}
    assert samples[("ispd_test_duration_seconds_bucket", (("le", "0.5"), ("operation", "read")))] == 1
    assert samples[("ispd_test_duration_seconds_count", (("operation", "write"),))] == 1
    assert families["ispd_test_things"].samples[0].value == 3
