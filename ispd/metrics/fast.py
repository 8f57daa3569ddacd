"""Hot-path metrics: plain counters and histogram buckets updated in place, read at scrape time.

prometheus-client's own Counter/Histogram take a lock and do label lookups on every call, which
costs more than a DNS cache hit. Here an observation is a bisect and two additions, done by the
one thread that owns the instrument; ``FastCollector`` turns them into metric families when
Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Seconds; from 50 µs (a cache hit) to 10 s (a store write stuck behind another process).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)


class Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out = []
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class LabeledHistogram:
    """One histogram per value of one label. Values listed up front are exported from the start
    (at zero); others appear when first observed, so callers must pass only code constants."""

    def __init__(self, name: str, documentation: str, label: str, values: Iterable[str] = (),
                 bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = tuple(bounds)
        self.children = {value: Histogram(bounds) for value in values}

    def __getitem__(self, value: str) -> Histogram:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = Histogram(self.bounds)
        return child

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, hist in self.children.items():
            family.add_metric([value], hist.cumulative(), hist.total)
        return family


class LabeledCounter:
    """Counters by one or more labels; label values are added as they are first seen, so callers
    must only ever pass values from a closed set."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def get(self, *label_values: str) -> float:
        return self.values.get(label_values, 0.0)

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.labels))
        for label_values, value in list(self.values.items()):
            family.add_metric(list(label_values), value)
        return family


class FastCollector(Collector):
    def __init__(self, instruments: Iterable[LabeledHistogram | LabeledCounter]) -> None:
        self.instruments = list(instruments)

    def collect(self) -> Iterator[Metric]:
        for instrument in self.instruments:
            yield instrument.collect()
