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
from typing import Any, Protocol


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


def bound_socket(host: str, port: int, kind: socket.SocketKind, *, reuse_address: bool = False,
                 reuse_port: bool = False) -> socket.socket:
    """A socket of ``kind`` bound to (host, port); OSError (the bind's, with its errno) when it
    cannot be. Every listener is made here, so that all agree on two things. An IPv6 socket
    takes IPv6 only (IPV6_V6ONLY, as Unbound's and Kea's do): "[::]" means every IPv6 address on
    every port and protocol, never IPv4 on some and not others, and it can sit beside an IPv4
    listener on the same port, which the config check allows. A link-local address with its
    zone ("fe80::1%eth0") is bound on that interface."""
    if ":" not in host:
        sock = socket.socket(socket.AF_INET, kind)
        address: tuple[Any, ...] = (host, port)
    else:
        sock = socket.socket(socket.AF_INET6, kind)
        # The zone name becomes the scope id only through getaddrinfo; a bare bind takes none.
        address = socket.getaddrinfo(host, port, socket.AF_INET6, kind, 0, socket.AI_NUMERICHOST)[0][4] \
            if "%" in host else (host, port)
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def check_address_free(host: str, port: int, kind: socket.SocketKind) -> None:
    """OSError (EADDRINUSE) when a socket of ``kind`` holds (host, port) already. SO_REUSEPORT
    lets any process of the same user join a listener unnoticed (a second daemon, an Unbound),
    so the first of a service's processes checks before it opens one, as a plain bind would."""
    # Past TCP connections in TIME_WAIT do not hold the port.
    bound_socket(host, port, kind, reuse_address=kind == socket.SOCK_STREAM).close()


def listening_tcp_socket(host: str, port: int, backlog: int, *, reuse_port: bool = False,
                         first: bool = True) -> socket.socket:
    """A non-blocking TCP socket bound to (host, port) and listening; OSError as bind raises it.
    ``reuse_port``: shared with the other processes of a service that runs several, of which
    this is the ``first`` (which checks that nobody else holds the address) or not."""
    if reuse_port and first:
        check_address_free(host, port, socket.SOCK_STREAM)
    listening = bound_socket(host, port, socket.SOCK_STREAM, reuse_address=True, reuse_port=reuse_port)
    try:
        listening.listen(backlog)
        listening.setblocking(False)
    except OSError:
        listening.close()
        raise
    return listening
