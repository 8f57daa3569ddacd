"""What the services' listeners share: TLS server contexts from PEM files, with errors an
operator can act on, and a cap on connections in total and per client address.

``ConnectionGate`` counts into any object with ``connections`` and ``refused_connections``
integer attributes (DNS's ``TransportStats``, the mail service's stats), which the services'
collectors read at scrape time.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Protocol


class ConnectionStats(Protocol):
    connections: int
    refused_connections: int


class ConnectionGate:
    def __init__(self, max_total: int, max_per_client: int, stats: ConnectionStats) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.stats = stats
        self.total = 0
        self.per_client: dict[str, int] = {}

    def admit(self, client: str) -> bool:
        held = self.per_client.get(client, 0)
        if self.total >= self.max_total or held >= self.max_per_client:
            self.stats.refused_connections += 1
            return False
        self.total += 1
        self.per_client[client] = held + 1
        self.stats.connections += 1
        return True

    def release(self, client: str) -> None:
        self.total -= 1
        held = self.per_client.get(client, 0) - 1
        if held > 0:
            self.per_client[client] = held
        else:
            self.per_client.pop(client, None)


class CertificateError(Exception):
    """A certificate or key that cannot be used; str() says which file and why."""


def server_tls_context(certificate: Path, private_key: Path, alpn: list[str]) -> ssl.SSLContext:
    """A server context: TLS 1.2 and 1.3 only (RFC 8310 §9 for DNS; RFC 8314 and RFC 9325 for
    mail)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(alpn)
    load_certificate(context.load_cert_chain, certificate, private_key)
    return context


def load_certificate(load: object, certificate: Path, private_key: Path) -> None:
    """Call ``load(certificate, private_key)`` (ssl's or aioquic's ``load_cert_chain``) and turn
    what goes wrong into a message an operator can act on."""
    for path, what in ((certificate, "certificate"), (private_key, "private key")):
        try:
            with path.open("rb") as f:
                f.read(1)
        except OSError as exc:
            raise CertificateError(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        load(str(certificate), str(private_key))  # type: ignore[operator]
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise CertificateError(f"the private key {private_key} does not belong to the certificate "
                                   f"{certificate}") from None
        raise CertificateError(f"cannot use {certificate} with {private_key}: {exc.reason or exc}") from None
    except ValueError as exc:  # aioquic: the key does not match, or a file is not PEM
        raise CertificateError(f"cannot use {certificate} with {private_key}: {exc}") from None
    except Exception as exc:  # cryptography's parse errors have no common base worth naming
        raise CertificateError(f"cannot use {certificate} with {private_key}: {exc}") from None


def check_address_free(host: str, port: int, kind: socket.SocketKind) -> None:
    """OSError (EADDRINUSE) when a socket of ``kind`` holds (host, port) already. SO_REUSEPORT
    lets any process of the same user join a listener unnoticed (a second daemon, an Unbound),
    so the first of a service's processes checks before it opens one, as a plain bind would."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:  # past connections in TIME_WAIT do not hold the port
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    finally:
        probe.close()


def listening_tcp_socket(host: str, port: int, backlog: int, *, reuse_port: bool = False,
                         first: bool = True) -> socket.socket:
    """A non-blocking TCP socket bound to (host, port) and listening; OSError as bind raises it.
    ``reuse_port``: shared with the other processes of a service that runs several, of which
    this is the ``first`` (which checks that nobody else holds the address) or not."""
    if reuse_port and first:
        check_address_free(host, port, socket.SOCK_STREAM)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((host, port))
        listening.listen(backlog)
        listening.setblocking(False)
    except OSError:
        listening.close()
        raise
    return listening
