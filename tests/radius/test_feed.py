"""The identity feed (``ispd/radius/feed.py``) against a collector on loopback."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from typing import Any

from prometheus_client import CollectorRegistry

from ispd.config import Config
from ispd.events import EventBus, LeaseEnded
from ispd.radius.codec import Attr, Code, decode, encode_response
from ispd.radius.config import AccountingFeedConfig
from ispd.radius.feed import AccountingFeed
from ispd.service import ServiceContext

SECRET = b"feed-secret"


class Collector(asyncio.DatagramProtocol):
    """Answers every Accounting-Request, each ``delay`` seconds after it came; keeps the
    Acct-Session-Ids heard and the most requests it had unanswered at once."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.sessions: set[bytes] = set()
        self.waiting = 0
        self.most_waiting = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, peer: Any) -> None:
        packet = decode(data)
        self.sessions.add(packet.get(Attr.ACCT_SESSION_ID) or b"")
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        asyncio.get_running_loop().call_later(self.delay, self._answer, packet, peer)

    def _answer(self, packet: Any, peer: Any) -> None:
        self.waiting -= 1
        assert self.transport is not None
        self.transport.sendto(encode_response(Code.ACCOUNTING_RESPONSE, packet.identifier, packet.authenticator,
                                              b"", SECRET), peer)


def _ended(index: int, now: float) -> LeaseEnded:
    address = f"198.18.{1 + index // 256}.{index % 256}"
    return LeaseEnded(at=now, address=address, reason="expired", starts_at=now - 4000, ended_at=now - 400,
                      hw_address=f"02:00:00:00:{index // 256:02x}:{index % 256:02x}")


def test_a_burst_larger_than_the_requests_in_flight_reaches_the_collector_whole() -> None:
    """The leases that expired while ispd was stopped are all reclaimed, and announced, in one
    go as it starts: every Stop must reach a collector that answers, at the pace it answers,
    none dropped (the feed used to send at most 1 000 at once and drop the rest)."""

    async def scenario() -> tuple[Collector, float]:
        loop = asyncio.get_running_loop()
        collector = Collector(delay=0.002)
        transport, _ = await loop.create_datagram_endpoint(lambda: collector, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        feed_config = AccountingFeedConfig.model_validate({
            "collectors": [{"name": "shaper", "address": f"127.0.0.1:{port}", "secret": SECRET.decode()}],
            "timeout_seconds": 2.0, "attempts": 2})
        bus = EventBus()
        feed = AccountingFeed(Config(accounting_feed=feed_config),
                              ServiceContext(None, bus, CollectorRegistry(), None))  # type: ignore[arg-type]
        try:
            async with AsyncExitStack() as stack:
                await feed.start(stack)
                now = time.time()
                for index in range(2500):
                    bus.publish(_ended(index, now))
                await asyncio.wait(set(feed._tasks), timeout=30)
        finally:
            transport.close()
        answered = feed.sent.get("shaper", "stop", "answered")
        return collector, answered

    collector, answered = asyncio.run(scenario())
    assert len(collector.sessions) == 2500
    assert answered == 2500
    assert collector.most_waiting <= 64  # no more on their way at once than the feed's bound
