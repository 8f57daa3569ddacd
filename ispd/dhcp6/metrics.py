"""DHCPv6 metrics. Names follow ours (``ispd_dhcp6_*``); the meanings follow Kea's DHCPv6
statistics (pkt6-*-received, pkt6-*-sent, pkt6-receive-drop, total-nas/assigned-nas,
total-pds/assigned-pds, declined-addresses) so dashboards translate one to one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ispd.dhcp6.codec import DropReason
from ispd.dhcp6.engine import Ignored6
from ispd.metrics.fast import FastCollector, LabeledCounter, LabeledHistogram

REQUEST_TYPES = ("solicit", "request", "confirm", "renew", "rebind", "release", "decline", "information_request",
                 "leasequery")
# Every reason a message is dropped for, the transport's own beside the codec's and the engine's.
DROP_REASONS = (*DropReason, *Ignored6, "interface_not_served", "internal_error", "store_error", "reply_too_large",
                "send_failed")


class DHCP6Metrics:
    def __init__(self) -> None:
        self.received = LabeledCounter(
            "ispd_dhcp6_packets_received_total", "DHCPv6 messages received, by message type.", ["type"])
        self.sent = LabeledCounter("ispd_dhcp6_packets_sent_total", "DHCPv6 replies sent, by message type.", ["type"])
        self.dropped = LabeledCounter(
            "ispd_dhcp6_packets_dropped_total", "DHCPv6 messages dropped or left unanswered, by reason.", ["reason"])
        self.declines = LabeledCounter(
            "ispd_dhcp6_declines_total", "Addresses declined by clients (found in use) and quarantined.", [])
        self.latency = LabeledHistogram(
            "ispd_dhcp6_processing_seconds",
            "From receiving a DHCPv6 message to sending the reply (for a binding: after it is durable).",
            "type", REQUEST_TYPES)
        for kind in REQUEST_TYPES:
            self.received.inc(kind, amount=0)
        for kind in ("advertise", "reply"):
            self.sent.inc(kind, amount=0)
        # At 0 from the start: a counter that first appears at 3 has no increase() to alert on
        # (IspdDhcp6BindingWritesFailing would miss a store failure until the next drop).
        for reason in DROP_REASONS:
            self.dropped.inc(str(reason), amount=0)
        self.declines.inc(amount=0)

    def collectors(self, pool_usage: Callable[[], list[tuple[str, str, int, int, int]]]) -> list[Collector]:
        return [FastCollector([self.received, self.sent, self.dropped, self.declines, self.latency]),
                PoolCollector(pool_usage)]


class PoolCollector(Collector):
    """Pool sizes and use, from the bindings at scrape time; ``kind`` is na (addresses) or pd
    (delegated prefixes), and a pool's size counts addresses or prefixes accordingly."""

    def __init__(self, pool_usage: Callable[[], list[tuple[str, str, int, int, int]]]) -> None:
        self.pool_usage = pool_usage

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "kind"]
        total = GaugeMetricFamily("ispd_dhcp6_pool_size", "Addresses or prefixes in the pool.", labels=labels)
        assigned = GaugeMetricFamily("ispd_dhcp6_pool_assigned", "Addresses or prefixes bound now.", labels=labels)
        declined = GaugeMetricFamily(
            "ispd_dhcp6_pool_declined", "Addresses in decline quarantine now.", labels=labels)
        for name, kind, size, bound, quarantined in self.pool_usage():
            total.add_metric([name, kind], size)
            assigned.add_metric([name, kind], bound)
            declined.add_metric([name, kind], quarantined)
        yield total
        yield assigned
        yield declined
