"""What every connection-oriented DNS transport shares: answering, limits, counting.

TCP, DoT, DoH (HTTP/2 and HTTP/3) and DoQ each frame queries their own way; once a query's
bytes are out of the frame they all go through ``Answerer``: the engine's cache-hit path first
(synchronous, no task), then its slow path, with the same ACL, policy and cache as UDP.
Encrypted transports pad their replies (RFC 7830, blocks of 468 bytes as RFC 8467 advises)
when the query had EDNS; clear-text TCP never does.

Connections are capped by ``ispd.listeners.ConnectionGate``: one over a cap is closed before
any TLS or QUIC work is spent on it. Resolutions (whatever is not a cache hit) are capped by
``ResolutionBudget``, one per process for UDP and every connection transport together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
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
    accept_failures: int = 0  # accept() failed (out of descriptors): the listener rested
    retries: int = 0  # QUIC Retry packets sent (address validation)
    bad_requests: int = 0  # malformed framing, HTTP errors, oversized queries
    latency: Histogram = field(default_factory=Histogram)


class ResolutionBudget:
    """Resolutions in flight at once in this process, whatever transport their queries came by
    (Unbound's num-queries-per-thread): past ``limit`` a UDP miss is dropped (``try_take``), as
    a client retries; a query over a connection waits for room (``take``), in turn, holding one of its
    connection's in-flight places, so a connection that fills them has its reading paused (RFC
    7766 §6.2.1.1 lets replies come late and in any order; its client's TCP window pushes back).
    Without it each connection had its own cap only, and a few hundred connections pipelining
    misses had tens of thousands resolved at once: sockets and memory without bound, and an
    event loop too busy to answer cache hits and UDP clients for seconds. ``overloaded`` counts
    the queries that found no room (``ispd_dns_dropped_total{reason="overload"}``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.overloaded = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.used >= self.limit:
            self.overloaded += 1
            return False
        self.used += 1
        return True

    async def take(self) -> None:
        if self.used < self.limit:  # (never with waiters: a give hands its place to the first)
            self.used += 1
            return
        self.overloaded += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # woken with the place a give handed over: ``used`` counts it already
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a place, then cancelled: the next one's, or free
            elif waiter in self._waiters:  # (not when a give passed it over, cancelled)
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """A place freed goes to the first query waiting, if any, ``used`` unchanged: a place
        freed only woke it, and a UDP miss or a new query taking it before the woken one ran
        (the same turn of the loop) left it waiting again, so that under sustained misses a
        query over a connection could wait for good."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.used -= 1


class Answerer:
    """Answers for one transport. Latency goes to the transport's histogram and to the daemon's
    by path (cache hit or not), which UDP feeds too. Every query comes to ``from_cache`` first,
    so that is where dnstap sees it arrive (the client's port is not passed down this far)."""

    def __init__(self, engine: DNSEngine, stats: TransportStats, *, pad: bool, hit_latency: Histogram,
                 slow_latency: Histogram, tap: DnstapSink | None = None,
                 protocol: SocketProtocol = SocketProtocol.TCP, http: HttpProtocol | None = None,
                 budget: ResolutionBudget | None = None) -> None:
        self.engine = engine
        self.budget = budget if budget is not None else ResolutionBudget(10_000)
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
        budget = self.budget
        await budget.take()
        try:
            reply = await self.engine.answer(query, client, tcp=True)
        finally:
            budget.give()
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
