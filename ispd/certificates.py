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

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

EXPIRY_WARNING_DAYS = 14


@dataclass(frozen=True)
class CertificateValidity:
    """When a certificate file's chain (the server's own certificate and the intermediates after
    it) is valid, in Unix time: from the latest start to the earliest end of its certificates,
    since a client that checks the chain refuses it once any of them has expired. ``ending``
    names the chain's certificate that ends first when it is not the server's own."""

    path: str
    not_before: float
    not_after: float
    ending: str | None = None

    def problem(self, now: float) -> str | None:
        """What is wrong with its dates at ``now``, or soon will be; None when nothing is."""
        what = f"the certificate {self.path}" if self.ending is None else \
            f"the chain in {self.path} (its certificate {self.ending})"
        if now >= self.not_after:
            return f"{what} expired on {_day(self.not_after)}"
        if now < self.not_before:
            return f"{what} is not valid before {_day(self.not_before)} (is the clock right?)"
        days = (self.not_after - now) / 86400
        if days < EXPIRY_WARNING_DAYS:
            return f"{what} expires on {_day(self.not_after)}, in {days:.1f} days"
        return None


def _day(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M UTC")


def certificate_validity(path: Path) -> CertificateValidity | None:
    """The validity of the PEM file ``path``'s chain (``CertificateValidity``); None when it
    cannot be read as one (loading it for a service says why)."""
    from cryptography import x509

    try:
        chain = _served_chain(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, ValueError):
        return None
    # A new intermediate's start can come after the server's own (a renewal signed by it):
    # the chain is valid from the latest start, to the earliest end.
    first_to_end = min(chain, key=lambda c: c.not_valid_after_utc)
    last_to_start = max(chain, key=lambda c: c.not_valid_before_utc)
    ending = None if first_to_end.not_valid_after_utc == chain[0].not_valid_after_utc \
        else first_to_end.subject.rfc4514_string()
    return CertificateValidity(str(path), last_to_start.not_valid_before_utc.timestamp(),
                               first_to_end.not_valid_after_utc.timestamp(), ending)


def _served_chain(certificates: list[Any]) -> list[Any]:
    """The file's first certificate and those a client builds its chain through: each the issuer
    of the one before, up to a root the client trusts. Passed over, as clients pass them over:
    a root (self-signed: the client's own copy is the one it trusts), a cross-sign of a trusted
    root (Let's Encrypt's ISRG Root X1 signed by DST Root CA X3, kept in the file long after it
    expired), a certificate nothing in the chain was issued by (an intermediate replaced but
    left in the bundle)."""
    chain, rest = [certificates[0]], certificates[1:]
    anchors = _trust_anchor_names()
    while (last := chain[-1]).issuer != last.subject and last.issuer not in anchors:
        issuers = [c for c in rest if c.subject == last.issuer and c.issuer != c.subject and _issued(last, c)]
        if not issuers:
            break
        chain.append(max(issuers, key=lambda c: c.not_valid_after_utc))
        rest.remove(chain[-1])
    return chain


def _issued(certificate: Any, issuer: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _trust_anchor_names() -> frozenset[Any]:
    """The subjects of the roots this host trusts (OpenSSL's default CA file): a client that
    trusts a root stops its chain there, as OpenSSL does, whatever the file has past it. Read
    again only when that file changes (reading it takes some 25 ms, on the event loop)."""
    import os
    import ssl

    cafile = ssl.get_default_verify_paths().cafile
    try:
        stat = os.stat(cafile) if cafile else None
    except OSError:
        stat = None
    return _roots_read(cafile, stat.st_mtime_ns if stat else None, stat.st_size if stat else None)


@functools.lru_cache(maxsize=1)
def _roots_read(cafile: str | None, mtime_ns: int | None, size: int | None) -> frozenset[Any]:
    import ssl
    import warnings

    from cryptography import x509

    try:
        roots = ssl.create_default_context().get_ca_certs(binary_form=True)
        with warnings.catch_warnings():  # (an old root's serial number, say: not ours to speak of)
            warnings.simplefilter("ignore")
            return frozenset(x509.load_der_x509_certificate(der).subject for der in roots)
    except (ssl.SSLError, ValueError):
        return frozenset()


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
