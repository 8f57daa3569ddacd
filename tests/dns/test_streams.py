"""DNS over a byte stream: clients that leave their replies unread do not keep their sockets."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import types
import weakref
from types import SimpleNamespace
from typing import Any

from ispd.dns.frontend import Answerer, ResolutionBudget, TransportStats
from ispd.dns.service import DNSService
from ispd.dns.streams import serve_dns_stream
from ispd.listeners import Acceptor, ConnectionGate
from ispd.logs import get_logger
from ispd.metrics.fast import Histogram

QUERY = struct.pack("!H", 12) + bytes(12)
LINGER_NOT = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 seconds: close() sends a reset


def reset(writer: asyncio.StreamWriter) -> None:
    """Leave as a client that crashed or lost its link: a TCP reset, no TLS close_notify."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_NOT)
    writer.transport.abort()


class BigReplies:
    """Every query gets a 16 KB reply at once."""

    def from_cache(self, data: bytes, client: str, started: float) -> bytes:
        return bytes(16_000)

    async def resolve(self, data: bytes, client: str, started: float) -> bytes:
        return bytes(16_000)


class SlowAnswers:
    """No query is in the cache; each is answered a little later, after the client has gone."""

    def from_cache(self, data: bytes, client: str, started: float) -> None:
        return None

    async def resolve(self, data: bytes, client: str, started: float) -> bytes:
        await asyncio.sleep(0.05)
        return data


async def test_a_tcp_connection_its_client_resets_goes_with_it(without_cycle_collection: None) -> None:
    """The reset a reader kept held, through its traceback, the frames that read, which held the
    reader: a cycle that the daemon's rare collections left for long, with the connection's
    buffers (tests/dns/test_tls.py has the same over TLS, where it cost most)."""
    stats = TransportStats()
    config = SimpleNamespace(tcp_idle_seconds=5, tcp_max_pipelined=10,
                             resolver=SimpleNamespace(request_timeout_seconds=1))
    service = SimpleNamespace(transport_stats={"tcp": stats}, _tcp_gate=ConnectionGate(10, 10, stats),
                              _tcp_streams={}, _tcp_answerer=SlowAnswers(), config=config)
    readers: list[weakref.ref[asyncio.StreamReader]] = []
    started, ended = asyncio.Event(), asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        readers.append(weakref.ref(reader))
        started.set()
        await DNSService._serve_tcp(service, reader, writer)  # type: ignore[arg-type]
        ended.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(QUERY * 5)
        await writer.drain()
        await asyncio.wait_for(started.wait(), 5)
        reset(writer)
        await asyncio.wait_for(ended.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
    assert stats.connections == 1
    assert readers[0]() is None


async def test_a_client_that_stops_reading_below_the_high_mark_is_cut_off_after_the_idle_time() -> None:
    """It asks until some 32 KB of replies wait in the transport (under the 256 KB that makes
    the server wait for it), then neither reads nor asks: after the idle time the handler ends,
    and after as long again the socket is closed, not left to hold the buffer (from a review)."""
    writers: list[asyncio.StreamWriter] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await serve_dns_stream(reader, writer, "c", BigReplies(), TransportStats(),  # type: ignore[arg-type]
                               idle_seconds=0.3, max_in_flight=10, max_query_bytes=512, drain_seconds=0.3)
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        client.connect(server.sockets[0].getsockname())
        client.setblocking(False)
        for _ in range(2000):
            client.send(QUERY)
            await asyncio.sleep(0.005)
            if writers and writers[0].transport.get_write_buffer_size() > 32_000:
                break
        transport = writers[0].transport
        assert 0 < transport.get_write_buffer_size() < 256 * 1024
        await asyncio.wait_for(done.wait(), 5)
        assert transport.get_extra_info("socket").fileno() == -1  # closed: no buffer, no descriptor
    finally:
        client.close()
        server.close()
        await server.wait_closed()


class HeldEngine:
    """Misses only; each resolution waits for ``release``; counts how many run at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0

    def answer_from_cache(self, data: bytes, client: str, tcp: bool) -> None:
        return None

    async def answer(self, data: bytes, client: str, *, tcp: bool) -> bytes:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return data


async def test_connections_of_every_transport_share_one_budget_of_resolutions_with_udp() -> None:
    """Each connection had a cap of its own (tcp_max_pipelined) and nothing bounded them
    together: 300 TCP and DoT connections pipelining 100 misses each had 30,000 resolutions at
    once (15,000 sockets, UDP clients of cached names answered after 5 to 14 s). Now what is
    past the process's budget waits for room, reading paused, and UDP misses are dropped."""
    engine = HeldEngine()
    budget = ResolutionBudget(5)
    answerers = [Answerer(engine, TransportStats(), pad=False, hit_latency=Histogram(),  # type: ignore[arg-type]
                          slow_latency=Histogram(), budget=budget) for _ in ("tcp", "tls")]
    servers = []
    for answerer in answerers:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         answerer: Answerer = answerer) -> None:
            await serve_dns_stream(reader, writer, "127.0.0.1", answerer, answerer.stats, idle_seconds=5,
                                   max_in_flight=20, max_query_bytes=512, drain_seconds=5)
        servers.append(await asyncio.start_server(handle, "127.0.0.1", 0))
    clients = []
    try:
        for server in servers:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            writer.write(QUERY * 20)
            clients.append((reader, writer))
        for _ in range(100):
            await asyncio.sleep(0.01)
        assert engine.peak == 5
        assert budget.used == 5 and budget.overloaded > 0
        udp = SimpleNamespace(budget=budget)  # a UDP miss meanwhile: dropped, counted
        overloaded = budget.overloaded
        DNSService.spawn_slow(udp, QUERY[2:], "127.0.0.1", None, ("127.0.0.1", 1))  # type: ignore[arg-type]
        assert budget.overloaded == overloaded + 1
        engine.release.set()
        for reader, _ in clients:  # every query answered once there is room
            for _ in range(20):
                (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))
                await reader.readexactly(length)
        assert engine.peak == 5 and budget.used == 0
    finally:
        for _, writer in clients:
            writer.close()
        for server in servers:
            server.close()
            await server.wait_closed()


async def test_a_query_waiting_for_room_that_is_cancelled_leaves_none_behind() -> None:
    budget = ResolutionBudget(1)
    await budget.take()
    first = asyncio.ensure_future(budget.take())
    second = asyncio.ensure_future(budget.take())
    await asyncio.sleep(0)
    budget.give()  # wakes the first, which is cancelled before it runs: the second's turn
    first.cancel()
    await asyncio.wait_for(second, 1)
    assert budget.used == 1 and not budget._waiters


async def test_a_query_cancelled_while_waiting_whose_place_a_give_passed_over_ends_cancelled() -> None:
    """A QUIC connection closed or a DoH stream reset cancels its waiting queries; a resolution
    that ends before they run passes their cancelled places over. They end cancelled still."""
    budget = ResolutionBudget(1)
    await budget.take()
    first = asyncio.ensure_future(budget.take())
    second = asyncio.ensure_future(budget.take())
    await asyncio.sleep(0)
    first.cancel()
    budget.give()  # passes the first's cancelled place over: the second's turn
    await asyncio.wait_for(second, 1)
    await asyncio.wait([first], timeout=1)
    assert first.cancelled()
    assert budget.used == 1 and not budget._waiters


async def test_a_connection_with_queries_still_waiting_is_not_closed_as_idle() -> None:
    """The idle timer ran from the last query read, replies outstanding or not: a client that
    had sent its queries and waited for their answers (a slow zone, or the process's budget of
    resolutions full) had its connection closed after idle_seconds plus the drain time, and
    the answers still to come were lost (300 connections pipelining 100 misses each under a
    zone answering after 2.5 s, budget 1,024: 79 connections closed, 22,832 queries
    unanswered). Idle is without queries in flight (as RFC 8490 §6.4 counts inactivity); the timer starts
    once the last reply is out."""
    engine = HeldEngine()
    answerer = Answerer(engine, TransportStats(), pad=False, hit_latency=Histogram(),  # type: ignore[arg-type]
                        slow_latency=Histogram(), budget=ResolutionBudget(10))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_dns_stream(reader, writer, "127.0.0.1", answerer, answerer.stats, idle_seconds=0.2,
                               max_in_flight=20, max_query_bytes=512, drain_seconds=0.2)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(QUERY * 3)
        await asyncio.sleep(1)  # well past idle_seconds + drain_seconds, the three still held
        engine.release.set()
        for _ in range(3):
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))
            await reader.readexactly(length)
        assert await asyncio.wait_for(reader.read(), 2) == b""  # then closed, idle, after 0.2 s
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_queries_that_outwait_the_drain_time_are_not_resolved_for_a_closed_connection() -> None:
    """A client that sent its queries and its EOF has them answered for drain_seconds; those
    still waiting for the process's budget (or resolving) then were left running: they went on
    taking the budget's places, ahead of live connections' queries, resolved for a connection
    already closed and were counted as answered (ispd run, budget 2,048, 60 connections of 100
    misses each then EOF: 3,952 unanswered, 1,700 upstream queries sent after every connection
    had closed, ispd_dns_transport_queries_total 5,977). Now they are cancelled at the close."""
    engine = HeldEngine()
    budget = ResolutionBudget(1)
    answerer = Answerer(engine, TransportStats(), pad=False, hit_latency=Histogram(),  # type: ignore[arg-type]
                        slow_latency=Histogram(), budget=budget)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_dns_stream(reader, writer, "127.0.0.1", answerer, answerer.stats, idle_seconds=5,
                               max_in_flight=20, max_query_bytes=512, drain_seconds=0.2)
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.write(QUERY * 3)  # one resolving, two waiting for the budget
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed after the drain time, unanswered
        writer.close()
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert budget.used == 0 and not budget._waiters and engine.running == 0
        engine.release.set()
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert engine.peak == 1 and answerer.stats.queries == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stop_ends_connections_whose_queries_still_wait_without_leaving_them_cancelled() -> None:
    """A TCP connection whose queries still waited (for the budget behind a slow zone) 2 s into
    the stop had its socket aborted and its handler left running, in its drain time, for the
    loop's final cancel: Python 3.11's start_server callback then logged the CancelledError of
    each, with its traceback, at an ordinary stop (ispd run, 150 connections of 100 misses,
    SIGTERM: 34 "Exception in callback" errors after daemon.stopped). The stop ends them."""
    engine = HeldEngine()  # never released: a zone that does not answer
    budget = ResolutionBudget(1)
    stats = TransportStats()
    answerer = Answerer(engine, stats, pad=False, hit_latency=Histogram(),  # type: ignore[arg-type]
                        slow_latency=Histogram(), budget=budget)
    config = SimpleNamespace(tcp_idle_seconds=30, tcp_max_pipelined=10,
                             resolver=SimpleNamespace(request_timeout_seconds=30))
    service = tcp_service(answerer, stats, config)
    listening = tcp_listener(service)
    try:
        _, writer = await asyncio.open_connection(*listening.getsockname())
        writer.write(QUERY * 3)
        for _ in range(100):
            await asyncio.sleep(0.01)  # one resolving, two waiting for the budget
        assert budget.overloaded == 2
        handlers = [handler for _, handler in service._tcp_streams.values()]
        await DNSService.stop(service)  # type: ignore[arg-type]
        assert handlers and all(handler.done() and not handler.cancelled() for handler in handlers)
        assert budget.used == 0 and not budget._waiters and engine.running == 0
        assert listening.fileno() == -1
        writer.close()
    finally:
        listening.close()


def tcp_service(answerer: Answerer, stats: TransportStats, config: SimpleNamespace) -> SimpleNamespace:
    """The parts of a DNSService its TCP listener, its handlers and its stop use, with its own
    methods (the listener accepts by hand: an ``Acceptor`` calling DNSService._accepted_tcp)."""
    service = SimpleNamespace(transport_stats={"tcp": stats}, _tcp_gate=ConnectionGate(10, 10, stats),
                              _tcp_streams={}, _tcp_answerer=answerer, config=config, extras=None,
                              _udp=[], _slow=set(), _tcp_accepting=set(), _tcp_stopping=False)
    for name in ("_accepted_tcp", "_open_tcp", "_serve_tcp"):
        setattr(service, name, types.MethodType(getattr(DNSService, name), service))
    service._tcp = Acceptor(service._accepted_tcp, stats, get_logger("test"), "dns.accept_failed", "tcp")
    return service


def tcp_listener(service: SimpleNamespace) -> socket.socket:
    listening = socket.create_server(("127.0.0.1", 0))
    service._tcp.listen(listening)
    return listening


async def test_a_place_freed_goes_to_the_query_waiting_not_to_a_miss_that_comes_first() -> None:
    """A give only woke the first query waiting; a UDP miss (try_take) or a new connection query
    (take) that came in the same turn of the loop took the place before it ran, and it waited
    again: under sustained UDP misses a query over a connection waited for good (1,000 places
    freed in a row, each taken by a UDP miss). Now the place is handed to it."""
    budget = ResolutionBudget(2)
    assert budget.try_take() and budget.try_take()
    waiting = asyncio.ensure_future(budget.take())
    await asyncio.sleep(0)
    budget.give()
    assert not budget.try_take()  # the UDP miss that came first is dropped
    newcomer = asyncio.ensure_future(budget.take())
    await asyncio.sleep(0)
    assert waiting.done() and not newcomer.done() and budget.used == 2
    budget.give()  # then the newcomer's turn
    await asyncio.wait_for(newcomer, 1)
    assert budget.used == 2 and not budget._waiters
    budget.give()
    budget.give()
    assert budget.used == 0


async def test_a_connection_accepted_just_before_a_stop_is_not_served_after_it() -> None:
    """From a review: the listener accepts by hand; a connection accepted in the stop's turn of
    the loop was still opening its streams when stop() listed the open ones, and was then served,
    after the stop, for as long as its client kept it (its queries resolved by a stopped service)."""
    engine = HeldEngine()
    stats = TransportStats()
    answerer = Answerer(engine, stats, pad=False, hit_latency=Histogram(),  # type: ignore[arg-type]
                        slow_latency=Histogram(), budget=ResolutionBudget(10))
    config = SimpleNamespace(tcp_idle_seconds=30, tcp_max_pipelined=10,
                             resolver=SimpleNamespace(request_timeout_seconds=30))
    service = tcp_service(answerer, stats, config)
    listening = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listening.getsockname())
    try:
        client.sendall(QUERY)
        listening.setblocking(False)
        service._tcp._accept(listening)  # (the loop's reader callback, in the stop's turn)
        assert len(service._tcp_accepting) == 1
        await asyncio.wait_for(DNSService.stop(service), 10)  # type: ignore[arg-type]
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not service._tcp_accepting and not service._tcp_streams and engine.running == 0
        client.settimeout(2)
        with contextlib.suppress(ConnectionResetError):  # closed, unanswered (a reset: its query unread)
            assert client.recv(100) == b""
    finally:
        client.close()
        listening.close()
        for task in service._tcp_accepting:
            task.cancel()


class BigThenHeld:
    """No query is in the cache; the first waits for good (a zone that does not answer), every
    other gets a 16 KB reply at once."""

    def __init__(self) -> None:
        self.asked = 0
        self.held: asyncio.Task[Any] | None = None

    def from_cache(self, data: bytes, client: str, started: float) -> None:
        return None

    async def resolve(self, data: bytes, client: str, started: float) -> bytes:
        self.asked += 1
        if self.asked == 1:
            self.held = asyncio.current_task()
            await asyncio.Event().wait()
        return bytes(16_000)


async def test_the_queries_of_a_connection_cut_off_for_unread_replies_are_cancelled() -> None:
    """From a review: a client that leaves its replies unread past the write buffer's high mark
    is cut off (aborted); its queries still resolving were left running, holding their places in
    the resolution budget for a connection already gone, as those past a drain time were."""
    answerer = BigThenHeld()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        try:
            await serve_dns_stream(reader, writer, "c", answerer, TransportStats(),  # type: ignore[arg-type]
                                   idle_seconds=0.3, max_in_flight=100, max_query_bytes=512, drain_seconds=5)
        finally:
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        client.connect(server.sockets[0].getsockname())
        client.setblocking(False)
        for _ in range(400):  # never reads its replies, of 16 KB each
            if done.is_set():
                break
            with contextlib.suppress(OSError):
                client.send(QUERY)
            await asyncio.sleep(0.005)
        await asyncio.wait_for(done.wait(), 5)
        await asyncio.sleep(0.01)
        assert answerer.held is not None and answerer.held.done()
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_a_tcp_connection_that_fails_with_no_route_to_its_client_ends_quietly() -> None:
    """A subscriber's host goes off line with a reply unacknowledged, and a router answers the
    retransmissions with "host unreachable": the read fails with EHOSTUNREACH, an OSError that
    is no ConnectionError. The handler let it out, and asyncio logged "Task exception was never
    retrieved" at error level for an everyday event (DoT's listener caught it)."""
    stats = TransportStats()
    config = SimpleNamespace(tcp_idle_seconds=5, tcp_max_pipelined=10,
                             resolver=SimpleNamespace(request_timeout_seconds=1))
    service = SimpleNamespace(transport_stats={"tcp": stats}, _tcp_gate=ConnectionGate(10, 10, stats),
                              _tcp_streams={}, _tcp_answerer=SlowAnswers(), config=config)
    outcome: list[BaseException | None] = []
    started = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started.set()
        asyncio.get_running_loop().call_later(0.05, reader.set_exception,
                                              OSError(errno.EHOSTUNREACH, os.strerror(errno.EHOSTUNREACH)))
        try:
            await DNSService._serve_tcp(service, reader, writer)  # type: ignore[arg-type]
        except BaseException as exc:  # (what the task would have been left with)
            outcome.append(exc)
        else:
            outcome.append(None)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        await asyncio.wait_for(started.wait(), 5)
        for _ in range(100):
            if outcome:
                break
            await asyncio.sleep(0.05)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert outcome == [None]
    assert service._tcp_gate.total == 0 and not service._tcp_streams
