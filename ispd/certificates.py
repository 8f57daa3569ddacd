"""The dates of the server certificates the services serve with (DoT, DoH, DoQ, mail's TLS,
EAP's tunnels): a certificate that expires while ispd runs for months breaks every client that
checks it, with nothing in ispd's log. ``ispd check-config`` and the daemon (at start, at each
reload and once a day) warn of one that has expired, is not valid yet (a clock far behind) or
expires within ``EXPIRY_WARNING_DAYS``; ``ispd_tls_certificate_expiry_timestamp_seconds`` lets
an alert say so earlier (contrib/alerts.yml).

The daemon reads each file when its service loads it (at start, at each reload the service
takes) and speaks of that: a renewal written to disk but not yet loaded (no reload, or one the
service refused) leaves the old certificate served, and the old dates are the ones to warn of.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

EXPIRY_WARNING_DAYS = 14


@dataclass(frozen=True)
class CertificateValidity:
    """When a certificate file's first certificate (the server's own) is valid, in Unix time."""

    path: str
    not_before: float
    not_after: float

    def problem(self, now: float) -> str | None:
        """What is wrong with its dates at ``now``, or soon will be; None when nothing is."""
        if now >= self.not_after:
            return f"the certificate {self.path} expired on {_day(self.not_after)}"
        if now < self.not_before:
            return f"the certificate {self.path} is not valid before {_day(self.not_before)} (is the clock right?)"
        days = (self.not_after - now) / 86400
        if days < EXPIRY_WARNING_DAYS:
            return f"the certificate {self.path} expires on {_day(self.not_after)}, in {days:.1f} days"
        return None


def _day(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M UTC")


def certificate_validity(path: Path) -> CertificateValidity | None:
    """The validity of the first certificate in the PEM file ``path``; None when it cannot be
    read as one (loading it for a service says why)."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return CertificateValidity(str(path), leaf.not_valid_before_utc.timestamp(), leaf.not_valid_after_utc.timestamp())


def certificate_problems(certificates: list[tuple[str, Path]], now: float) -> list[tuple[str, Path, str]]:
    """(key, file, problem) of each of ``certificates`` (``Config.certificates``) whose dates
    are wrong at ``now`` or soon will be."""
    found = []
    for key, path in certificates:
        validity = certificate_validity(path)
        problem = validity.problem(now) if validity is not None else None
        if problem is not None:
            found.append((key, path, problem))
    return found


class CertificateExpiryCollector:
    """``ispd_tls_certificate_expiry_timestamp_seconds{service, file}``: when each certificate
    the services serve with expires (Unix time), for an alert such as "less than 21 days left".
    ``certificates`` gives (key, validity) of each as its service loaded it."""

    def __init__(self, certificates: Callable[[], list[tuple[str, CertificateValidity]]]) -> None:
        self.certificates = certificates

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("ispd_tls_certificate_expiry_timestamp_seconds",
                                   "When the server certificate the service serves with expires (Unix time).",
                                   labels=["service", "file"])
        for key, validity in self.certificates():
            family.add_metric([key, validity.path], validity.not_after)
        yield family
