"""What every connection-oriented DNS transport shares: answering, limits, counting.

TCP, DoT, DoH (HTTP/2 and HTTP/3) and DoQ each frame queries their own way; once a query's
bytes are out of the frame they all go through ``Answerer``: the engine's cache-hit path first
(synchronous, no task), then its slow path, with the same ACL, policy and cache as UDP.
Encrypted transports pad their replies (RFC 7830, blocks of 468 bytes as RFC 8467 advises)
when the query had EDNS; clear-text TCP never does.

Connections are capped by ``ispd.listeners.ConnectionGate``: one over a cap is closed before
any TLS or QUIC work is spent on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ispd.dns.dnstap import HttpProtocol, SocketProtocol
from ispd.dns.engine import DNSEngine
from ispd.dns.tap import DnstapSink
from ispd.dns.wire import pad_reply
from ispd.metrics.fast import Histogram


@dataclass(slots=True)
class TransportStats:
    """Plain counters for one transport, read by the metrics collector at scrape time."""

    queries: int = 0
    connections: int = 0
    refused_connections: int = 0  # over a connection limit (ispd.listeners.ConnectionGate)
    handshake_failures: int = 0
    retries: int = 0  # QUIC Retry packets sent (address validation)
    bad_requests: int = 0  # malformed framing, HTTP errors, oversized queries
    latency: Histogram = field(default_factory=Histogram)


class Answerer:
    """Answers for one transport. Latency goes to the transport's histogram and to the daemon's
    by path (cache hit or not), which UDP feeds too. Every query comes to ``from_cache`` first,
    so that is where dnstap sees it arrive (the client's port is not passed down this far)."""

    def __init__(self, engine: DNSEngine, stats: TransportStats, *, pad: bool, hit_latency: Histogram,
                 slow_latency: Histogram, tap: DnstapSink | None = None,
                 protocol: SocketProtocol = SocketProtocol.TCP, http: HttpProtocol | None = None) -> None:
        self.engine = engine
        self.stats = stats
        self.pad = pad
        self.hit_latency = hit_latency
        self.slow_latency = slow_latency
        self.tap = tap if tap is not None else DnstapSink()
        self.protocol = protocol
        self.http = http

    def from_cache(self, query: bytes, client: str, started: float) -> bytes | None:
        reply = self.engine.answer_from_cache(query, client, True)
        tap = self.tap
        if reply is None:
            if tap.clients:  # (its reply, if any, from resolve)
                tap.client_query(self.protocol, client, 0, query, time.time(), self.http)
            return None
        reply = self._done(reply, started, self.hit_latency)
        if tap.clients:
            tap.client_exchange(self.protocol, client, 0, query, time.time() - (time.perf_counter() - started),
                                reply, self.http)
        return reply

    async def resolve(self, query: bytes, client: str, started: float) -> bytes | None:
        reply = await self.engine.answer(query, client, tcp=True)
        if reply is None:
            self.stats.queries += 1
            return None
        reply = self._done(reply, started, self.slow_latency)
        if self.tap.clients:
            self.tap.client_response(self.protocol, client, 0, time.time() - (time.perf_counter() - started),
                                     reply, self.http)
        return reply

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
