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
    return merge_families((text_string_to_metric_families(text) for text in texts), same_everywhere)


def merge_families(groups: Iterable[Iterable[Metric]], same_everywhere: frozenset[str] = frozenset()) -> bytes:
    """``merge_expositions`` of texts already parsed: one group of families per process."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for group in groups:
        for family in group:
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


_CUMULATIVE = frozenset({"counter", "histogram", "summary"})
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class ContinuousCounters:
    """One process's counters and histograms as if it had never restarted and never stopped
    reporting a series, for a sum that must only grow: Prometheus reads any fall of a counter as
    a reset to zero and would count the other processes' whole totals again as new. A new life
    of the process (told by the caller: its pid) goes on from where the last one was (what that
    one counted is added to what this one counts); a series a live process no longer reports (a
    reload turned DNSSEC off) and a process that does not answer a scrape are counted as last
    seen, the latter without its gauges."""

    def __init__(self) -> None:
        self._life: object = None
        self._raw: dict[SampleKey, float] = {}  # as this life last reported them
        self._base: dict[SampleKey, float] = {}  # what the earlier lives counted
        self._order: dict[SampleKey, str] = {}  # every series seen, in order, with its family
        self._families: dict[str, tuple[str, str, str]] = {}  # name: (documentation, type, unit)

    def adjust(self, text: str | None, life: object = None) -> str:
        """``text`` (None: the process did not answer) with its cumulative series continued;
        ``life`` tells one life of the process from the next."""
        return generate_latest(_Families(self.families(text, life))).decode()

    def families(self, text: str | None, life: object = None) -> list[Metric]:
        """``adjust``, as parsed families (for ``merge_families``)."""
        raw: dict[SampleKey, float] = {}
        others: list[Metric] = []
        for family in text_string_to_metric_families(text or ""):
            if family.type not in _CUMULATIVE or family.name.endswith("_created"):
                others.append(family)
                continue
            self._families[family.name] = (family.documentation, family.type, family.unit)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                raw[key] = sample.value
                self._order.setdefault(key, family.name)
        if text is not None:
            if life != self._life and self._raw:  # a new life: the last one's counts are history
                for key, value in self._raw.items():
                    self._base[key] = self._base.get(key, 0.0) + value
                self._raw = {}
            self._life = life
            for key, value in raw.items():  # one series reset on its own (DNSSEC turned off and on)
                before = self._raw.get(key)
                if before is not None and value < before:
                    self._base[key] = self._base.get(key, 0.0) + before
            self._raw.update(raw)  # what this life no longer reports stays as last seen
        families = {name: Metric(name, *meta) for name, meta in self._families.items()}
        for key, name in self._order.items():
            if key in self._raw or key in self._base:
                families[name].add_sample(key[0], dict(key[1]), self._raw.get(key, 0.0) + self._base.get(key, 0.0))
        return [*families.values(), *others]
