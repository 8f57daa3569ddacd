"""The metrics listener's own limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ispd.metrics.service import MAX_CONNECTIONS_PER_PEER, MetricsService


class _Writer:
    """What _handle uses of a StreamWriter, for a connection from ``peer``."""

    def __init__(self, peer: str) -> None:
        self.peer, self.written = peer, b""

    def get_extra_info(self, key: str) -> tuple[str, int, int, int]:
        return (self.peer, 40000, 0, 0)

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


async def test_one_64_holds_at_most_the_per_peer_cap() -> None:
    """From the whole-change review: the cap counted each IPv6 address on its own, so one /64
    (2^64 addresses) could hold every connection and keep Prometheus out; every other per-client
    limit counts an IPv6 client by its /64."""
    service = MetricsService.__new__(MetricsService)  # (only what _handle needs)
    service._handlers, service._per_peer = set(), {}
    writers = [_Writer(f"2001:db8:1:2::{i + 1:x}") for i in range(MAX_CONNECTIONS_PER_PEER + 1)]
    handlers = [asyncio.create_task(service._handle(asyncio.StreamReader(), writer))  # type: ignore[arg-type]
                for writer in writers]
    await asyncio.sleep(0.05)  # each waits for its request's head; the one past the cap is answered
    try:
        assert [b"503" in writer.written for writer in writers] == [False] * MAX_CONNECTIONS_PER_PEER + [True]
    finally:
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def test_the_worker_sources_of_one_scrape_are_asked_together() -> None:
    """A stuck worker holds its source up to workers.QUICK_REQUEST_SECONDS (3 s): with DNS's and
    RADIUS's workers both stuck, a scrape took 6 s (measured on `ispd run`, SIGSTOP on both),
    one source after the other, and failed under a 5 s scrape_timeout. Asked together, it takes
    as long as the slowest."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    def slow(text: bytes) -> Callable[[], Awaitable[bytes]]:
        async def source() -> bytes:
            await asyncio.sleep(0.4)
            return text
        return source

    service = MetricsService.__new__(MetricsService)  # (only what _respond needs)
    service.context = SimpleNamespace(  # type: ignore[assignment]
        registry=CollectorRegistry(), metrics_sources=[slow(b"dns 1\n"), slow(b"radius 2\n")])
    started = time.perf_counter()
    status, _, body, _ = await service._respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    assert status == 200 and body.endswith(b"dns 1\nradius 2\n")  # in the sources' order
    assert time.perf_counter() - started < 0.7
