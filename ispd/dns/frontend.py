"""What every connection-oriented DNS transport shares: answering, limits, counting.

TCP, DoT, DoH (HTTP/2 and HTTP/3) and DoQ each frame queries their own way; once a query's
bytes are out of the frame they all go through ``Answerer``: the engine's cache-hit path first
(synchronous, no task), then its slow path, with the same ACL, policy and cache as UDP.
Encrypted transports pad their replies (RFC 7830, blocks of 468 bytes as RFC 8467 advises)
when the query had EDNS; clear-text TCP never does.

``ConnectionGate`` caps connections in total and per client address; a connection over a cap
is closed before any TLS or QUIC work is spent on it.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from ispd.dns.engine import DNSEngine
from ispd.dns.wire import pad_reply
from ispd.metrics.fast import Histogram


@dataclass(slots=True)
class TransportStats:
    """Plain counters for one transport, read by the metrics collector at scrape time."""

    queries: int = 0
    connections: int = 0
    refused_connections: int = 0  # over a connection limit
    handshake_failures: int = 0
    bad_requests: int = 0  # malformed framing, HTTP errors, oversized queries
    latency: Histogram = field(default_factory=Histogram)


class Answerer:
    """Answers for one transport. Latency goes to the transport's histogram and to the daemon's
    by path (cache hit or not), which UDP feeds too."""

    def __init__(self, engine: DNSEngine, stats: TransportStats, *, pad: bool, hit_latency: Histogram,
                 slow_latency: Histogram) -> None:
        self.engine = engine
        self.stats = stats
        self.pad = pad
        self.hit_latency = hit_latency
        self.slow_latency = slow_latency

    def from_cache(self, query: bytes, client: str, started: float) -> bytes | None:
        reply = self.engine.answer_from_cache(query, client, True)
        if reply is None:
            return None
        return self._done(reply, started, self.hit_latency)

    async def resolve(self, query: bytes, client: str, started: float) -> bytes | None:
        reply = await self.engine.answer(query, client, tcp=True)
        if reply is None:
            self.stats.queries += 1
            return None
        return self._done(reply, started, self.slow_latency)

    async def answer(self, query: bytes, client: str) -> bytes | None:
        started = time.perf_counter()
        reply = self.from_cache(query, client, started)
        if reply is not None:
            return reply
        return await self.resolve(query, client, started)

    def _done(self, reply: bytes, started: float, path_latency: Histogram) -> bytes:
        self.stats.queries += 1
        if self.pad:
            reply = pad_reply(reply)
        elapsed = time.perf_counter() - started
        self.stats.latency.observe(elapsed)
        path_latency.observe(elapsed)
        return reply


class ConnectionGate:
    def __init__(self, max_total: int, max_per_client: int, stats: TransportStats) -> None:
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
    """A server context for DoT or DoH: TLS 1.2 and 1.3 only (RFC 8310 §9; RFC 9325)."""
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
