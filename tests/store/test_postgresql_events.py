"""Two nodes' buses joined through one database (``PeerEventChannel``): the bridged events cross
once, in order, whatever the notifications' size; garbage and lost connections cost nothing but
what they must (a ``PeerEventsMissed``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from ispd.events import Event, EventBus, LeaseEnded, LeaseGranted, PeerEventsMissed, SessionStarted
from ispd.store import postgresql, postgresql_events
from ispd.store.config import StoreConfig
from ispd.store.errors import StoreUnavailable
from ispd.store.models import LeaseService
from ispd.store.postgresql_events import PeerEventChannel


class Node:
    """A node's bus, what reached it, and its channel."""

    def __init__(self, url: str, directory: Path) -> None:
        directory.mkdir()
        self.bus = EventBus()
        self.seen: list[Event] = []
        for kind in (LeaseGranted, LeaseEnded, SessionStarted, PeerEventsMissed):
            self.bus.subscribe(kind, self.seen.append)
        config = StoreConfig(path=directory / "ispd.db", backend="postgresql", url=url)
        self.channel = PeerEventChannel(config, self.bus)

    def of(self, kind: type[Event]) -> list[Event]:
        return [event for event in self.seen if isinstance(event, kind)]


@asynccontextmanager
async def nodes(url: str, tmp_path: Path, count: int = 2) -> AsyncIterator[list[Node]]:
    started = [Node(url, tmp_path / f"node{n}") for n in range(count)]
    for node in started:
        await node.channel.start()
    try:
        yield started
    finally:
        for node in started:
            began = time.monotonic()
            await node.channel.stop()
            assert time.monotonic() - began < 2.0


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.01)


def lease(n: int = 1) -> LeaseGranted:
    return LeaseGranted(at=time.time(), address=f"198.18.{n // 250}.{n % 250 + 1}", expires_at=time.time() + 3600,
                        hostname=f"laptop-{n}", subscriber_id=n, hw_address=f"02:00:00:00:{n // 256 % 256:02x}:{n % 256:02x}",
                        pool="lan", service=LeaseService.DHCP, starts_at=time.time())


def terminate(url: str, backend_pid: int) -> None:
    """What a server restart or an operator's pg_terminate_backend does to one connection."""
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid,)).fetchone() == (True,)


def listener_pid(url: str, node: Node) -> int:
    """The listening session of ``node``'s channel, as an operator finds it: LISTEN is the last
    query it ran (the other node's listener too: told apart by the channel's own connection)."""
    with psycopg.connect(url, autocommit=True) as admin:
        pids = {row[0] for row in admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'")}
    conn: Any = node.channel._listen_conn
    assert conn.raw.info.backend_pid in pids
    return int(conn.raw.info.backend_pid)


async def test_a_lease_crosses_once_and_is_not_sent_back(postgres_url: str, tmp_path: Path) -> None:
    async with nodes(postgres_url, tmp_path) as (a, b):
        granted = lease()
        a.bus.publish(granted)
        await eventually(lambda: len(b.seen) == 1)
        assert b.seen == [granted]  # equal, field by field, after the wire
        await eventually(lambda: a.channel.sent == 1)  # counted when the server answered: maybe after B heard
        assert b.channel.received == 1
        # B's own event goes to A after A's own notification came back to it: by then A had
        # ignored its own, and B had not sent on what it received.
        started = SessionStarted(at=time.time(), session_id=7, nas_address="198.18.0.1", acct_session_id="s7",
                                 username="alice", framed_ip="198.18.0.7")
        b.bus.publish(started)
        await eventually(lambda: len(a.seen) == 2)
        assert a.seen == [granted, started]
        await eventually(lambda: b.channel.sent == 1)
        assert a.channel.received == 1 and b.channel.notifications == 1
        await asyncio.sleep(0.2)
        assert b.seen == [granted, started] and a.channel.dropped_malformed == b.channel.dropped_malformed == 0


async def test_two_thousand_events_arrive_complete_and_in_order(postgres_url: str, tmp_path: Path) -> None:
    async with nodes(postgres_url, tmp_path) as (a, b):
        sent: list[Event] = []
        for n in range(2000):
            event: Event = lease(n) if n % 3 else LeaseEnded(at=time.time(), address=f"198.18.9.{n % 250}",
                                                             reason="released", hostname="h" * 200)
            sent.append(event)
            a.bus.publish(event)
            if n == 1000:
                await asyncio.sleep(0)  # a send under way while more come
        await eventually(lambda: len(b.seen) == 2000)
        assert b.seen == sent
        await eventually(lambda: a.channel.sent == 2000)  # (counted when the server answered, maybe after B heard)
        assert a.channel.notifications > 50  # under 8000 bytes each


async def test_garbage_is_dropped_and_counted(postgres_url: str, tmp_path: Path) -> None:
    async with nodes(postgres_url, tmp_path) as (a, b):
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("NOTIFY ispd_events, 'garbage'")
            admin.execute("NOTIFY ispd_events, '[1, 2]'")
            admin.execute("""NOTIFY ispd_events, '{"from": "elsewhere", "events": [{"type": "LeaseStolen", "at": 1}]}'""")
            admin.execute("""NOTIFY ispd_events, '{"from": "elsewhere", "events": [{"type": "LeaseGranted",
                             "at": "noon", "address": "198.18.0.1", "expires_at": 1}]}'""")
        await eventually(lambda: b.channel.dropped_malformed == 4 and a.channel.dropped_malformed == 4)
        granted = lease()
        a.bus.publish(granted)
        await eventually(lambda: len(b.seen) == 1)
        assert b.seen == [granted] and a.seen == [granted]


async def test_a_lost_listener_is_back_with_peer_events_missed(postgres_url: str, tmp_path: Path) -> None:
    async with nodes(postgres_url, tmp_path) as (a, b):
        granted_ones: list[Event] = []
        with capture_logs() as logs:
            for round_ in (1, 2):
                terminate(postgres_url, listener_pid(postgres_url, b))
                await eventually(lambda: len(b.of(PeerEventsMissed)) == round_)  # noqa: B023
                assert b.channel.reconnects == round_
                granted = lease(round_)
                granted_ones.append(granted)
                a.bus.publish(granted)
                await eventually(lambda: granted in b.seen)  # noqa: B023
        assert not a.of(PeerEventsMissed) and a.channel.reconnects == 0
        assert [e["event"] for e in logs if e["event"].startswith("peer_events.listen")] == [
            "peer_events.listen.lost", "peer_events.listen.restored"] * 2
        missed = b.of(PeerEventsMissed)
        assert b.seen == [missed[0], granted_ones[0], missed[1], granted_ones[1]]


async def test_the_sender_survives_its_connection_ended(postgres_url: str, tmp_path: Path) -> None:
    async with nodes(postgres_url, tmp_path) as (a, b):
        sender: Any = a.channel._send_conn
        terminate(postgres_url, sender.raw.info.backend_pid)
        granted = lease()
        a.bus.publish(granted)  # on a dead connection first: replaced at once, sent once
        await eventually(lambda: len(b.seen) == 1)
        await asyncio.sleep(0.2)
        assert b.seen == [granted] and not b.of(PeerEventsMissed)


async def test_an_outage_keeps_the_newest_and_says_some_were_missed(postgres_url: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with nodes(postgres_url, tmp_path) as (a, b):
        a.channel.bridge.MAX_QUEUED = 5  # type: ignore[misc]
        real_connect = postgresql_events.connect

        def refused(config: StoreConfig) -> Any:
            raise StoreUnavailable("cannot connect to the PostgreSQL store: the server is away")

        with capture_logs() as logs:
            for module in (postgresql_events, postgresql):  # the channel's, and its connector's
                monkeypatch.setattr(module, "connect", refused)
            sender: Any = a.channel._send_conn
            terminate(postgres_url, sender.raw.info.backend_pid)
            leases = [lease(n) for n in range(20)]
            for granted in leases:
                a.bus.publish(granted)
                await asyncio.sleep(0.1)  # across two retries and more
            assert not b.seen
            for module in (postgresql_events, postgresql):
                monkeypatch.setattr(module, "connect", real_connect)
            # (The sender says it is back once the server answered, which may come after B heard.)
            await eventually(lambda: leases[-1] in b.seen
                             and any(e["event"] == "peer_events.send.restored" for e in logs))
        assert b.seen[0] == PeerEventsMissed(at=b.seen[0].at)
        assert b.seen[1:] == leases[-len(b.seen) + 1:] and len(b.seen) - 1 <= 5 + 5
        assert a.channel.dropped_unsent == 20 - (len(b.seen) - 1)
        assert [e["event"] for e in logs if e["event"].startswith("peer_events.send")] == [
            "peer_events.send.unavailable", "peer_events.send.restored"]
        later = lease(99)
        a.bus.publish(later)  # and the next payload says nothing was missed
        await eventually(lambda: b.seen[-1] == later)
        assert len(b.of(PeerEventsMissed)) == 1


async def test_start_fails_when_the_server_is_away_and_stop_is_quick_and_idempotent(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "ispd.db", backend="postgresql",
                         url=f"postgresql://postgres@/nowhere?host={tmp_path}/nosocket&port=1")
    channel = PeerEventChannel(config, EventBus())
    with pytest.raises(StoreUnavailable):
        await channel.start()
    await channel.stop()
    await channel.stop()


async def test_stop_returns_promptly_and_once(postgres_url: str, tmp_path: Path) -> None:
    node = Node(postgres_url, tmp_path / "node")
    await node.channel.start()
    for n in range(100):
        node.bus.publish(lease(n))
    began = time.monotonic()
    await node.channel.stop()
    await node.channel.stop()
    assert time.monotonic() - began < 2.0
    assert not node.channel._listener or not node.channel._listener.is_alive()
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        await eventually(lambda: admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone() == (1,), 3.0)


async def test_what_a_node_missed_is_not_sent_to_the_others(postgres_url: str, tmp_path: Path) -> None:
    """PeerEventsMissed crosses into a node's worker processes (its DNS's extra processes reload
    too), but says what this node missed: the others have nothing to read again."""
    async with nodes(postgres_url, tmp_path) as (a, b):
        a.bus.publish(PeerEventsMissed(at=time.time()))
        a.bus.publish(lease(7))
        await eventually(lambda: bool(b.of(LeaseGranted)) and a.channel.sent >= 1)
        assert b.of(PeerEventsMissed) == [] and a.channel.sent == 1
