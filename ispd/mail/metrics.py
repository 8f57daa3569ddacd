"""Mail metrics (``ispd_mail_*``): sessions, messages accepted and refused by reason, bytes,
delivery latency. Plain counters read at scrape time, as every service's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ispd.mail.engine import REFUSAL_REASONS
from ispd.metrics.fast import FastCollector, Histogram, LabeledCounter, LabeledHistogram


@dataclass(slots=True)
class ListenerStats:
    """What ``ispd.listeners.ConnectionGate`` counts for the MX."""

    connections: int = 0
    refused_connections: int = 0


class MailMetrics:
    def __init__(self) -> None:
        self.listener = ListenerStats()
        self.messages = LabeledCounter(
            "ispd_mail_messages_total", "Messages at the end of DATA, by result (delivered, refused).", ["result"])
        self.refusals = LabeledCounter(
            "ispd_mail_refusals_total", "Recipients and messages refused, by reason.", ["reason"])
        self.bytes = LabeledCounter("ispd_mail_received_bytes_total", "Bytes of messages delivered.", [])
        self.deliveries = LabeledCounter(
            "ispd_mail_deliveries_total", "Copies written into mailboxes (one per distinct recipient mailbox).", [])
        self.delivery_latency = LabeledHistogram(
            "ispd_mail_delivery_seconds", "From the end of DATA to the reply, the copies durable in every mailbox.",
            "listener", ("mx",))
        for result in ("delivered", "refused"):
            self.messages.inc(result, amount=0)
        for reason in REFUSAL_REASONS:
            self.refusals.inc(reason, amount=0)
        self.bytes.inc(amount=0)
        self.deliveries.inc(amount=0)

    @property
    def mx_latency(self) -> Histogram:
        return self.delivery_latency["mx"]

    def collectors(self, gauges: Callable[[], dict[str, float]]) -> list[Collector]:
        return [FastCollector([self.messages, self.refusals, self.bytes, self.deliveries, self.delivery_latency]),
                _ListenerCollector(self.listener, gauges)]


class _ListenerCollector(Collector):
    def __init__(self, stats: ListenerStats, gauges: Callable[[], dict[str, float]]) -> None:
        self.stats = stats
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("ispd_mail_connections", "SMTP connections accepted.",
                                  value=self.stats.connections)
        yield CounterMetricFamily("ispd_mail_refused_connections", "SMTP connections refused over a connection limit.",
                                  value=self.stats.refused_connections)
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(f"ispd_mail_{name}", "SMTP sessions open now." if name == "sessions" else name,
                                    value=value)
