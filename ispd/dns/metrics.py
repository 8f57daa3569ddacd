"""DNS metrics, read from the engine's plain counters at scrape time.

Names are ours (``ispd_dns_*``); meanings follow Unbound's statistics so a dashboard translates:
queries by type (num.query.type.*), answers by rcode (num.answer.rcode.*), cache hits and misses
(num.cachehits, num.cachemiss), prefetches (num.prefetch), stale answers (num.expired),
cache entries (msg.cache.count, rrset.cache.count), upstream queries and timeouts, and the
answer-time histogram (histogram.*). Connection transports (TCP, DoT as "tls", DoH as
"https" and "http3", DoQ as "quic") have queries, connections, refusals, handshake failures and
latency of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ispd.dns.dnssec import EDE
from ispd.dns.wire import RCode, RRType
from ispd.metrics.fast import Histogram

if TYPE_CHECKING:
    from ispd.dns.service import DNSService
    from ispd.dns.validator import Validator

# Query types reported by name; the rest count as "other" (labels stay a closed set).
REPORTED_TYPES = {int(t): t.name for t in (
    RRType.A, RRType.AAAA, RRType.PTR, RRType.MX, RRType.TXT, RRType.NS, RRType.SOA, RRType.SRV,
    RRType.CNAME, RRType.HTTPS, RRType.SVCB, RRType.DS, RRType.DNSKEY, RRType.CAA, RRType.NAPTR, RRType.ANY)}
RCODES = {int(r): r.name for r in (RCode.NOERROR, RCode.FORMERR, RCode.SERVFAIL, RCode.NXDOMAIN,
                                   RCode.NOTIMP, RCode.REFUSED)}


class DNSMetrics:
    def __init__(self) -> None:
        self.hit_latency = Histogram()
        self.slow_latency = Histogram()

    def collectors(self, service: DNSService) -> list[Collector]:
        return [_DNSCollector(self, service)]


class _DNSCollector(Collector):
    def __init__(self, metrics: DNSMetrics, service: DNSService) -> None:
        self.metrics = metrics
        self.service = service

    def collect(self) -> Iterator[Metric]:
        engine, service, metrics = self.service.engine, self.service, self.metrics
        if engine is None or service.resolver is None:
            return
        stats = engine.stats

        queries = CounterMetricFamily(
            "ispd_dns_queries", "Queries that parsed, by query type, however answered (REFUSED for another class or "
            "a zone transfer and NOTIMP for another opcode included); those refused to clients outside dns.allow, "
            "rate-limited or malformed are in ispd_dns_dropped_total instead.", labels=["type"])
        by_type: dict[str, int] = {name: 0 for name in REPORTED_TYPES.values()}
        by_type["other"] = 0
        for qtype, count in list(engine.qtypes.items()):
            label = REPORTED_TYPES.get(qtype, "other")
            by_type[label] += count
        for label, count in by_type.items():
            queries.add_metric([label], count)
        yield queries

        answers = CounterMetricFamily("ispd_dns_answers", "Replies sent, by rcode.", labels=["rcode"])
        other = 0
        for rcode, count in enumerate(engine.rcodes):
            if rcode in RCODES:
                answers.add_metric([RCODES[rcode]], count)
            else:
                other += count
        answers.add_metric(["other"], other)
        yield answers

        yield _counter("ispd_dns_cache_hits", "Queries answered from the answer cache.", stats.cache_hits)
        yield _counter("ispd_dns_cache_misses",
                       "Queries with no fresh answer in the answer cache: resolved, or answered stale "
                       "(local data and policy answers count as neither hit nor miss).",
                       stats.cache_misses)
        yield _counter("ispd_dns_prefetches", "Answers refreshed before they expired.", stats.prefetches)
        yield _counter("ispd_dns_stale_answers", "Expired answers served because upstreams failed (RFC 8767).",
                       stats.stale_answers)
        yield _counter("ispd_dns_local_answers",
                       "Queries answered from local data (lease names, local zones, locally served zones).",
                       stats.local_answers)
        yield _counter("ispd_dns_walled_garden_answers",
                       "Queries of suspended subscribers answered by the walled garden.",
                       stats.walled_answers)
        yield _counter("ispd_dns_resolution_failures",
                       "Resolutions that ended in SERVFAIL (upstreams failed or timed out, limits hit); clients "
                       "sharing one resolution count once.",
                       stats.resolution_failures)

        dropped = CounterMetricFamily("ispd_dns_dropped", "Queries not answered normally, by reason.",
                                      labels=["reason"])
        dropped.add_metric(["malformed"], stats.malformed)
        dropped.add_metric(["refused_client"], stats.refused_clients)
        dropped.add_metric(["rate_limited"], stats.rate_limited)
        dropped.add_metric(["policy_drop"], stats.dropped_by_policy)
        dropped.add_metric(["not_recursive"], stats.not_recursive)
        dropped.add_metric(["overload"], self.service.budget.overloaded)
        yield dropped

        policy = CounterMetricFamily("ispd_dns_policy_hits", "Queries a policy zone (RPZ) matched, by action.",
                                     labels=["action"])
        for action, count in engine.policy_hits.items():
            policy.add_metric([action.name.lower()], count)
        yield policy

        entries = GaugeMetricFamily("ispd_dns_cache_entries", "Entries in the caches.", labels=["cache"])
        entries.add_metric(["answer"], len(service.answers))
        entries.add_metric(["rrset"], len(service.rrsets))
        yield entries
        size = GaugeMetricFamily("ispd_dns_cache_bytes", "Estimated memory held by the caches.", labels=["cache"])
        size.add_metric(["answer"], service.answers.size_bytes)
        size.add_metric(["rrset"], service.rrsets.size_bytes)
        yield size
        evictions = CounterMetricFamily("ispd_dns_cache_evictions", "Entries evicted to stay within max_bytes.",
                                        labels=["cache"])
        evictions.add_metric(["answer"], service.answers.evictions)
        evictions.add_metric(["rrset"], service.rrsets.evictions)
        yield evictions

        resolver = service.resolver
        if resolver.validator is not None:
            yield from _dnssec_metrics(resolver.validator)
        yield _counter("ispd_dns_upstream_queries", "Queries sent to authoritative servers and forwarders.",
                       resolver.upstream_queries)
        failures = CounterMetricFamily("ispd_dns_upstream_failures", "Upstream queries that failed, by kind.",
                                       labels=["kind"])
        for kind in ("timeout", "unreachable", "tcp_closed", "socket"):
            failures.add_metric([kind], resolver.upstream_failures.get(kind, 0))
        yield failures
        yield _counter("ispd_dns_zone_rate_limited",
                       "Questions answered SERVFAIL (or stale) without a query because their zone's servers "
                       "were asked more than resolver.zone_rate_limit_qps allows.", resolver.zone_limiter.limited)
        yield _counter("ispd_dns_dns64_answers",
                       "AAAA answers made from A records (DNS64, [dns.dns64]), once each when resolved; cache hits "
                       "that serve them again are not counted.", stats.dns64_answers)
        yield _counter("ispd_dns_private_addresses_removed",
                       "A and AAAA records dropped from upstream answers by resolver.private_addresses "
                       "(DNS rebinding protection).", resolver.guard.removed)
        tap = service.tap
        yield _counter("ispd_dns_dnstap_sent", "dnstap messages handed to the collector's connection ([dns.dnstap]).",
                       tap.sent)
        yield _counter("ispd_dns_dnstap_dropped",
                       "dnstap messages dropped: the buffer was full (collector away or slow) or still held at stop.",
                       tap.dropped)
        yield GaugeMetricFamily("ispd_dns_dnstap_connected",
                                "Processes connected to the dnstap collector (0 when it is away or dnstap is off).",
                                value=int(tap.writer is not None and tap.writer.connected))
        yield _counter("ispd_dns_upstream_mismatched_replies",
                       "Upstream replies dropped for a wrong ID or question (spoofing attempts or late replies).",
                       service.upstream.mismatched)
        yield _counter("ispd_dns_upstream_tcp_queries", "Upstream queries sent over TCP (after TC, or to stubs).",
                       service.upstream.tcp_queries)
        transports = service.transport_stats
        yield _counter("ispd_dns_tcp_connections", "TCP connections accepted from clients.",
                       transports["tcp"].connections)
        for name, documentation, attribute in (
                ("queries", "Queries received over connection transports, by transport.", "queries"),
                ("connections", "Connections accepted (within the limits), by transport.", "connections"),
                ("refused_connections", "Connections closed at once for a connection limit, by transport.",
                 "refused_connections"),
                ("handshake_failures", "TLS or QUIC handshakes that failed or timed out, by transport.",
                 "handshake_failures"),
                ("accept_failures", "Failed accepts (out of file descriptors): the listener rests a second, by "
                 "transport.", "accept_failures"),
                ("retries", "QUIC Retry packets sent for a new client to prove its address, by transport.",
                 "retries"),
                ("bad_requests", "Malformed or oversized requests (framing, HTTP), by transport.", "bad_requests")):
            family = CounterMetricFamily(f"ispd_dns_transport_{name}", documentation, labels=["transport"])
            for transport, counts in transports.items():
                family.add_metric([transport], getattr(counts, attribute))
            yield family
        transport_latency = HistogramMetricFamily(
            "ispd_dns_transport_answer_seconds", "From a complete query to its answer, by connection transport.",
            labels=["transport"])
        for transport, counts in transports.items():
            transport_latency.add_metric([transport], counts.latency.cumulative(), counts.latency.total)
        yield transport_latency

        latency = HistogramMetricFamily("ispd_dns_answer_seconds", "From receiving a query to sending the answer.",
                                        labels=["path"])
        for path, hist in (("cache_hit", metrics.hit_latency), ("other", metrics.slow_latency)):
            latency.add_metric([path], hist.cumulative(), hist.total)
        yield latency


def _dnssec_metrics(validator: Validator) -> Iterator[Metric]:
    verdicts = CounterMetricFamily("ispd_dns_dnssec_verdicts",
                                   "Steps of resolutions validated, by verdict (RFC 4033 §5).", labels=["verdict"])
    for security, count in validator.stats.verdicts.items():
        verdicts.add_metric([security.name.lower()], count)
    yield verdicts
    failures = CounterMetricFamily("ispd_dns_dnssec_failures",
                                   "Bogus verdicts, by reason (the Extended DNS Error, RFC 8914).", labels=["reason"])
    for code in EDE:
        failures.add_metric([code.name.lower()], validator.stats.failures.get(code, 0))
    yield failures
    yield CounterMetricFamily("ispd_dns_dnssec_synthesised_answers",
                              "NXDOMAIN and NODATA answered from cached NSEC and NSEC3 records (RFC 8198).",
                              value=validator.stats.synthesised)
    yield GaugeMetricFamily("ispd_dns_dnssec_negative_trust_anchors",
                            "Domains resolved without validation (RFC 7646), from config and `ispd dns nta add`.",
                            value=len(validator.negative_anchors))


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
