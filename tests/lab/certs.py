"""A throwaway CA and a server certificate for a test's TLS listeners (trustme)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what clients trust
    certificate: Path  # the chain, leaf first
    private_key: Path


def issue(directory: Path, hostname: str, *, name: str = "server", not_before: datetime | None = None,
          not_after: datetime | None = None, addresses: tuple[str, ...] = ("127.0.0.1",)) -> Certificates:
    """PEM files in ``directory`` (made if need be) for ``hostname`` and ``addresses`` (valid from
    an hour ago for years, unless given other dates)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert(hostname, *addresses, not_before=not_before, not_after=not_after)
    certificates = Certificates(directory / f"{name}-ca.pem", directory / f"{name}.pem", directory / f"{name}.key")
    ca.cert_pem.write_to_path(str(certificates.ca))
    for index, pem in enumerate(issued.cert_chain_pems):
        pem.write_to_path(str(certificates.certificate), append=index > 0)
    issued.private_key_pem.write_to_path(str(certificates.private_key))
    return certificates
