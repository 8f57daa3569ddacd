"""DHCP metrics. Names follow ours (``ispd_dhcp_*``); the meanings follow Kea's statistics
(pkt4-*-received, pkt4-*-sent, pkt4-receive-drop, total-addresses, assigned-addresses,
declined-addresses) so dashboards translate one to one."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ispd.dhcp.codec import DropReason
from ispd.dhcp.engine import Ignored
from ispd.metrics.fast import FastCollector, LabeledCounter, LabeledHistogram

REQUEST_TYPES = ("discover", "request", "decline", "release", "inform", "leasequery")
# Every reason a message is dropped for, the transport's own beside the codec's and the engine's.
DROP_REASONS = (*DropReason, *Ignored, "interface_not_served", "internal_error", "store_error", "send_failed")


class DHCPMetrics:
    def __init__(self) -> None:
        self.received = LabeledCounter(
            "ispd_dhcp_packets_received_total", "DHCP messages received, by message type.", ["type"])
        self.sent = LabeledCounter("ispd_dhcp_packets_sent_total", "DHCP replies sent, by message type.", ["type"])
        self.dropped = LabeledCounter(
            "ispd_dhcp_packets_dropped_total", "DHCP messages dropped or left unanswered, by reason.", ["reason"])
        self.declines = LabeledCounter(
            "ispd_dhcp_declines_total", "Addresses declined by clients (found in use) and quarantined.", [])
        self.untrusted_option82 = LabeledCounter(
            "ispd_dhcp_untrusted_option82_total",
            "Requests whose option 82 came from no relay (giaddr 0) and was not used (dhcp.option82_without_relay).",
            [])
        self.ipv6_only = LabeledCounter(
            "ispd_dhcp_ipv6_only_replies_total",
            "Replies that offered no IPv4 address to a client that asked for option 108 (IPv6-only "
            "preferred, RFC 8925), by message type: counted in ispd_dhcp_packets_sent_total too.", ["type"])
        self.latency = LabeledHistogram(
            "ispd_dhcp_processing_seconds",
            "From receiving a DHCP message to sending the reply (for an ACK: after the lease is durable).",
            "type", REQUEST_TYPES)
        for kind in REQUEST_TYPES:
            self.received.inc(kind, amount=0)
        for kind in ("offer", "ack", "nak"):
            self.sent.inc(kind, amount=0)
        for kind in ("offer", "ack"):
            self.ipv6_only.inc(kind, amount=0)
        # At 0 from the start: a counter that first appears at 3 has no increase() to alert on
        # (IspdDhcpLeaseWritesFailing would miss a store failure until the next drop).
        for reason in DROP_REASONS:
            self.dropped.inc(str(reason), amount=0)
        self.declines.inc(amount=0)
        self.untrusted_option82.inc(amount=0)

    def collectors(self, pool_usage: Callable[[], list[tuple[str, int, int, int]]]) -> list[Collector]:
        return [FastCollector([self.received, self.sent, self.dropped, self.declines, self.untrusted_option82,
                               self.ipv6_only, self.latency]),
                PoolCollector(pool_usage)]


class PoolCollector(Collector):
    """Pool sizes and use, computed from the lease table at scrape time."""

    def __init__(self, pool_usage: Callable[[], list[tuple[str, int, int, int]]]) -> None:
        self.pool_usage = pool_usage

    def collect(self) -> Iterator[Metric]:
        total = GaugeMetricFamily("ispd_dhcp_pool_addresses", "Addresses in the pool.", labels=["pool"])
        assigned = GaugeMetricFamily("ispd_dhcp_pool_assigned_addresses", "Addresses leased now.", labels=["pool"])
        declined = GaugeMetricFamily(
            "ispd_dhcp_pool_declined_addresses", "Addresses in decline quarantine now.", labels=["pool"])
        for name, size, in_use, quarantined in self.pool_usage():
            total.add_metric([name], size)
            assigned.add_metric([name], in_use)
            declined.add_metric([name], quarantined)
        yield total
        yield assigned
        yield declined
