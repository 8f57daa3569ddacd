"""The metrics listener's own limits."""

from __future__ import annotations

import asyncio

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
