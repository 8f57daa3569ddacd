"""One exposition from several processes' expositions of the same metrics.

A service that runs several processes (``[dns] processes``) exports one set of series, as one
process would: a scrape must not see a family twice (Prometheus rejects the whole scrape), and a
dashboard written for one process must keep working. Counters and histograms add up; gauges add
up too (cache entries, connections: each process holds its own), except those every process
holds the same copy of (``same_everywhere``: the largest is taken); ``*_created`` timestamps
take the earliest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_expositions(texts: Iterable[str], same_everywhere: frozenset[str] = frozenset()) -> bytes:
    """The Prometheus text of ``texts`` merged series by series (see the module's docstring);
    families in the order they first appear."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            series = values[family.name]
            combine: Callable[[float, float], float]
            if family.name.endswith("_created"):
                combine = min
            elif family.type == "gauge" and family.name in same_everywhere:
                combine = max
            else:
                combine = _add
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                before = series.get(key)
                series[key] = sample.value if before is None else combine(before, sample.value)
    for name, family in families.items():
        family.samples = [Sample(sample_name, dict(labels), value)
                          for (sample_name, labels), value in values[name].items()]
    return generate_latest(_Families(list(families.values())))


def _add(a: float, b: float) -> float:
    return a + b
