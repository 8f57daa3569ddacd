"""RADIUS metrics. Names are ours (``ispd_radius_*``); they cover what freeradius_exporter shows
(access requests, accepts, rejects, challenges, duplicates, malformed, invalid and dropped
requests, accounting requests and responses) so a FreeRADIUS dashboard translates, plus what
FreeRADIUS does not count: rejects by reason, open sessions, CoA outcomes, latency."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ispd.metrics.fast import FastCollector, LabeledCounter, LabeledHistogram
from ispd.radius.codec import DropReason
from ispd.radius.engine import Drop, RejectReason
from ispd.store.models import AccountingOutcome, AccountingStatus

# "proxy": Access-Requests of a proxied realm, whose time is mostly the home servers' (apart
# from "access", ispd's own time, which IspdRadiusSlow watches).
REQUEST_KINDS = ("access", "accounting", "status", "proxy")
METHODS = ("pap", "chap", "mschapv1", "mschapv2", "eap-md5", "eap-ttls", "peap", "eap-tls")
# Methods of rejects alone: "none" (no User-Name, or no credentials ispd knows), "proxy" (a
# request of a proxied realm that came back, or that no home server answered).
REJECT_ONLY_METHODS = ("none", "proxy")
DROP_REASONS = tuple(str(r) for r in (*DropReason, *Drop))


class RadiusMetrics:
    def __init__(self) -> None:
        self.requests = LabeledCounter(
            "ispd_radius_requests_total", "RADIUS requests received from known clients, by packet type.", ["type"])
        self.responses = LabeledCounter(
            "ispd_radius_responses_total", "RADIUS responses sent, by packet type.", ["type"])
        self.auth = LabeledCounter(
            "ispd_radius_auth_total", "Access-Requests decided, by method and result (accept, reject, challenge).",
            ["method", "result"])
        self.rejects = LabeledCounter("ispd_radius_rejects_total", "Access-Rejects, by reason.", ["reason"])
        self.dropped = LabeledCounter(
            "ispd_radius_dropped_total",
            "Datagrams dropped without a reply, by port (auth, acct) and reason (unknown client, malformed, "
            "bad authenticator, ...).", ["port", "reason"])
        self.duplicates = LabeledCounter(
            "ispd_radius_duplicates_total", "Retransmissions answered from the duplicate cache, by port (auth, acct).",
            ["port"])
        self.accounting = LabeledCounter(
            "ispd_radius_accounting_total", "Accounting-Requests recorded, by status type and outcome.",
            ["status", "outcome"])
        self.coa = LabeledCounter(
            "ispd_radius_coa_total", "Disconnect-Requests and CoA-Requests sent to NASes, by kind and result.",
            ["kind", "result"])
        self.proxied = LabeledCounter(
            "ispd_radius_proxied_total", "Requests proxied to a realm's home servers ([[radius.realm]]), by kind "
            "and result (accept, reject, challenge; acked; timeout: no home server answered; refused: one answered, "
            "but no answer was valid, such as another secret's; error; loop: a copy of "
            "ispd's own come back, not copied again; dropped: too "
            "many accounting copies waiting).",
            ["kind", "result"])
        self.home_servers = LabeledCounter(
            "ispd_radius_home_server_requests_total", "Requests proxied, by home server (address:port), kind (auth, "
            "acct) and result (answered; silent: no answer after every send; refused: answers, but none valid, such "
            "as another secret's or one without Message-Authenticator; unsent: ispd had no Identifier free for it, "
            "4,096 requests in flight to that server).", ["server", "kind", "result"])
        self.prefix_reservations = LabeledCounter(
            "ispd_radius_prefix_reservations_total", "Delegated prefixes that logins asked a [[radius.prefix_pool]] "
            "for, by result (reserved for good; exhausted: none free; failed: the store failed), the last two "
            "answered without Delegated-IPv6-Prefix.", ["result"])
        self.ipv6_withheld = LabeledCounter(
            "ispd_radius_reserved_ipv6_withheld_total", "Access-Accepts sent without the login's reserved IPv6 "
            "prefix or address (its reservation's, or the one its prefix_pool reserved), by kind (prefix, "
            "address): an open session of the login from another station has them.", ["kind"])
        self.stale_sessions = LabeledCounter(
            "ispd_radius_stale_sessions_closed_total", "Sessions closed because the NAS stopped reporting them.", [])
        self.latency = LabeledHistogram(
            "ispd_radius_processing_seconds",
            "From receiving a request to sending the reply (accounting: after the record is durable; proxy: "
            "Access-Requests of a proxied realm, the home servers' answer included).",
            "kind", REQUEST_KINDS)
        # Every value of the closed label sets from the start, so that rates and ratios exist
        # before the first event of each kind (and dashboards can list them).
        for kind in ("access-request", "accounting-request", "status-server", "other"):
            self.requests.inc(kind, amount=0)
        for kind in ("access-accept", "access-reject", "access-challenge", "accounting-response"):
            self.responses.inc(kind, amount=0)
        for method in METHODS:
            challenges = method.startswith("eap-") or method == "peap"
            for result in ("accept", "reject", *(("challenge",) if challenges else ())):
                self.auth.inc(method, result, amount=0)
        for method in REJECT_ONLY_METHODS:
            self.auth.inc(method, "reject", amount=0)
        for reject in RejectReason:
            self.rejects.inc(str(reject), amount=0)
        for port in ("auth", "acct"):
            self.duplicates.inc(port, amount=0)
            for drop in DROP_REASONS:
                self.dropped.inc(port, drop, amount=0)
        for status in [*(str(s) for s in AccountingStatus), "other"]:
            for outcome in AccountingOutcome:
                self.accounting.inc(status, str(outcome), amount=0)
        for kind in ("disconnect", "coa"):
            for result in ("ack", "nak", "timeout", "error"):
                self.coa.inc(kind, result, amount=0)
        self.stale_sessions.inc(amount=0)
        for kind in ("prefix", "address"):
            self.ipv6_withheld.inc(kind, amount=0)
        for result in ("reserved", "exhausted", "failed"):
            self.prefix_reservations.inc(result, amount=0)
        for kind, results in (("auth", ("accept", "reject", "challenge", "timeout", "refused", "error")),
                              ("acct", ("acked", "timeout", "refused", "error", "dropped", "loop"))):
            for result in results:
                self.proxied.inc(kind, result, amount=0)

    def collectors(self, gauges: Callable[[], dict[str, float]]) -> list[Collector]:
        return [FastCollector([self.requests, self.responses, self.auth, self.rejects, self.dropped, self.duplicates,
                               self.accounting, self.coa, self.proxied, self.home_servers, self.stale_sessions,
                               self.prefix_reservations, self.ipv6_withheld,
                               self.latency]),
                _GaugeCollector(gauges)]


class _GaugeCollector(Collector):
    """Sizes read at scrape time: open sessions, pending password checks, EAP conversations."""

    HELP = {
        "open_sessions": "RADIUS sessions open now (accounted and not stopped).",
        "pending_password_checks": "PAP passwords waiting for or in a scrypt check.",
        "eap_conversations": "EAP conversations (EAP-TTLS and PEAP tunnels too) waiting for the client's next message.",
        "duplicate_cache_entries": "Replies kept to answer retransmissions.",
        "home_servers_down": "Home servers of [[radius.realm]] that did not answer lately: asked after the others, "
                             "with one send, for 30 s after each silence.",
    }

    def __init__(self, gauges: Callable[[], dict[str, float]]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for name, value in self.gauges().items():
            yield GaugeMetricFamily(f"ispd_radius_{name}", self.HELP.get(name, name), value=value)
