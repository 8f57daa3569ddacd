"""Mail metrics (``ispd_mail_*``): sessions, messages accepted and refused by reason, bytes,
delivery latency. Plain counters read at scrape time, as every service's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ispd.mail.engine import REFUSAL_REASONS
from ispd.mail.imap.session import COMMAND_NAMES
from ispd.metrics.fast import FastCollector, Histogram, LabeledCounter, LabeledHistogram

AUTH_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy")


@dataclass(slots=True)
class ListenerStats:
    """What ``ispd.listeners.ConnectionGate`` counts: SMTP's (MX and submission), or IMAP's."""

    connections: int = 0
    refused_connections: int = 0
    handshake_failures: int = 0  # on the TLS-from-the-first-byte listeners (465, 993)
    accept_failures: int = 0  # accept() failed (out of descriptors): the listener rested


class MailMetrics:
    def __init__(self) -> None:
        self.listener = ListenerStats()  # SMTP
        self.imap_listener = ListenerStats()
        self.messages = LabeledCounter(
            "ispd_mail_messages_total", "Messages at the end of DATA, by result (delivered, refused).", ["result"])
        self.refusals = LabeledCounter(
            "ispd_mail_refusals_total", "Recipients and messages refused, by reason.", ["reason"])
        self.bytes = LabeledCounter("ispd_mail_received_bytes_total", "Bytes of messages delivered.", [])
        self.deliveries = LabeledCounter(
            "ispd_mail_deliveries_total", "Copies written into mailboxes (one per distinct recipient mailbox).", [])
        self.delivery_latency = LabeledHistogram(
            "ispd_mail_delivery_seconds",
            "From the end of DATA to the reply: local copies durable in every mailbox, the rest in the queue.",
            "listener", ("mx", "submission"))
        self.auth = LabeledCounter("ispd_mail_auth_total", "Submission AUTH and IMAP logins, by result.", ["result"])
        self.imap_commands = LabeledCounter(
            "ispd_mail_imap_commands_total", "IMAP commands answered, by command and result (ok, no, bad).",
            ["command", "result"])
        self.imap_bytes_sent = LabeledCounter("ispd_mail_imap_sent_bytes_total", "Bytes sent to IMAP clients.", [])
        for command in COMMAND_NAMES:
            for result in ("ok", "no", "bad"):
                self.imap_commands.inc(command, result, amount=0)
        self.imap_bytes_sent.inc(amount=0)
        self.imap_throttled = LabeledCounter(
            "ispd_mail_imap_throttled_commands_total",
            "IMAP commands held back because their session was over imap_commands_per_second.", [])
        self.imap_throttled.inc(amount=0)
        self.authentication = LabeledCounter(
            "ispd_mail_authentication_total", "Inbound SPF, DKIM and DMARC results, by method and result.",
            ["method", "result"])
        for method in ("spf", "dkim", "dmarc"):
            for result in (*AUTH_RESULTS, "other"):
                self.authentication.inc(method, result, amount=0)
        for result in ("success", "failure"):
            self.auth.inc(result, amount=0)
        for result in ("delivered", "submitted", "refused"):
            self.messages.inc(result, amount=0)
        for reason in REFUSAL_REASONS:
            self.refusals.inc(reason, amount=0)
        self.dnsbl_lookups = LabeledCounter(
            "ispd_mail_dnsbl_lookups_total",
            "MX clients looked up in DNS blocklists, by list and result (listed, clean, refused, failed).",
            ["zone", "result"])
        self.bytes.inc(amount=0)
        self.deliveries.inc(amount=0)

    @property
    def mx_latency(self) -> Histogram:
        return self.delivery_latency["mx"]

    @property
    def submission_latency(self) -> Histogram:
        return self.delivery_latency["submission"]

    def collectors(self, gauges: Callable[[], dict[str, float]],
                   queue: Callable[[], QueueFigures]) -> list[Collector]:
        return [FastCollector([self.messages, self.refusals, self.bytes, self.deliveries, self.delivery_latency,
                               self.auth, self.authentication, self.imap_commands, self.imap_bytes_sent,
                               self.imap_throttled, self.dnsbl_lookups]),
                _ListenerCollector(self.listener, self.imap_listener, gauges), _QueueCollector(queue)]


@dataclass(slots=True)
class QueueFigures:
    attempts: dict[str, int]  # per recipient and attempt, by result (delivered, bounced, deferred)
    bounces: int  # delivery status notifications sent
    messages: int  # in the queue, as last counted
    oldest_age_seconds: float


class _QueueCollector(Collector):
    def __init__(self, figures: Callable[[], QueueFigures]) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures()
        attempts = CounterMetricFamily("ispd_mail_outbound_attempts",
                                       "Outbound delivery attempts per recipient, by result.", labels=["result"])
        for result, count in sorted(figures.attempts.items()):
            attempts.add_metric([result], count)
        yield attempts
        yield CounterMetricFamily("ispd_mail_bounces", "Delivery status notifications sent to senders.",
                                  value=figures.bounces)
        yield GaugeMetricFamily("ispd_mail_queue_messages", "Messages in the outbound queue (counted every 30 s).",
                                value=figures.messages)
        yield GaugeMetricFamily("ispd_mail_queue_oldest_age_seconds",
                                "Age of the oldest message in the outbound queue; 0 when empty.",
                                value=figures.oldest_age_seconds)


class _ListenerCollector(Collector):
    def __init__(self, stats: ListenerStats, imap_stats: ListenerStats,
                 gauges: Callable[[], dict[str, float]]) -> None:
        self.stats = stats
        self.imap_stats = imap_stats
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("ispd_mail_connections", "SMTP connections accepted.",
                                  value=self.stats.connections)
        yield CounterMetricFamily("ispd_mail_refused_connections",
                                  "SMTP connections refused over a connection limit or the per-client rate.",
                                  value=self.stats.refused_connections)
        yield CounterMetricFamily("ispd_mail_tls_handshake_failures",
                                  "TLS handshakes on 465 that failed or timed out.",
                                  value=self.stats.handshake_failures)
        yield CounterMetricFamily("ispd_mail_imap_tls_handshake_failures",
                                  "TLS handshakes on 993 that failed or timed out.",
                                  value=self.imap_stats.handshake_failures)
        yield CounterMetricFamily("ispd_mail_accept_failures", "Failed accepts (out of file descriptors) on the "
                                  "SMTP listeners; each rests a second.", value=self.stats.accept_failures)
        yield CounterMetricFamily("ispd_mail_imap_accept_failures", "Failed accepts (out of file descriptors) on "
                                  "the IMAP listeners; each rests a second.", value=self.imap_stats.accept_failures)
        yield CounterMetricFamily("ispd_mail_imap_connections", "IMAP connections accepted.",
                                  value=self.imap_stats.connections)
        yield CounterMetricFamily("ispd_mail_imap_refused_connections",
                                  "IMAP connections refused over a connection limit.",
                                  value=self.imap_stats.refused_connections)
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(f"ispd_mail_{name}", _GAUGE_HELP.get(name, name), value=value)


_GAUGE_HELP = {
    "sessions": "SMTP sessions open now (MX and submission).",
    "outbound_deliveries_in_progress": "Outbound delivery attempts running now.",
    "imap_sessions": "IMAP sessions open now.",
    "imap_idle_sessions": "IMAP sessions in IDLE now.",
}
