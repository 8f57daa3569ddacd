"""The dnstap connection (ispd/dns/tap.py) against a collector in the test that speaks the
reader's side of bidirectional Frame Streams: the handshake, frames held while the collector is
away, the buffer's bound, reconnection, STOP and FINISH. fstrm_capture, the real collector,
is in tests/integration/test_dns_dnstap.py."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ispd.dns import tap as tapmodule
from ispd.dns.dnstap import CONTENT_TYPE, ControlType, Encoder, MessageType, SocketProtocol, control_frame
from ispd.dns.tap import DnstapSink, FrameStreamClient, read_control


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tapmodule, "RECONNECT_MIN_SECONDS", 0.05)
    monkeypatch.setattr(tapmodule, "RECONNECT_MAX_SECONDS", 0.2)
    monkeypatch.setattr(tapmodule, "HANDSHAKE_SECONDS", 0.5)
    monkeypatch.setattr(tapmodule, "FINISH_SECONDS", 0.5)


class Collector:
    """The reader side: ACCEPT (naming ``accept``), then data frames until STOP, then FINISH."""

    def __init__(self, path: Path, *, accept: bytes = CONTENT_TYPE, answer: bool = True, read: bool = True,
                 hang_up: bool = False, finish_after: float = 0.0) -> None:
        self.path, self.accept, self.answer, self.read, self.hang_up = path, accept, answer, read, hang_up
        self.finish_after = finish_after
        self.frames: list[bytes] = []
        self.connections = 0
        self.stopped = asyncio.Event()
        self.ready_types: list[list[bytes]] = []
        self.server: asyncio.AbstractServer | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Collector:
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            kind, types = await read_control(reader)
            assert kind == ControlType.READY
            self.ready_types.append(types)
            if not self.answer:
                await asyncio.sleep(3600)
            writer.write(control_frame(ControlType.ACCEPT, self.accept))
            kind, types = await read_control(reader)
            assert (kind, types) == (ControlType.START, [CONTENT_TYPE])
            if not self.read:
                await asyncio.sleep(3600)
            if self.hang_up:
                writer.close()
                return
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                if length:
                    self.frames.append(await reader.readexactly(length))
                    continue
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                assert await reader.readexactly(length) == struct.pack("!I", ControlType.STOP)
                await asyncio.sleep(self.finish_after)
                writer.write(control_frame(ControlType.FINISH, None))
                await writer.drain()
                self.stopped.set()
                break
        writer.close()


def frame(n: int) -> bytes:
    return Encoder().frame(MessageType.CLIENT_QUERY, SocketProtocol.UDP, v6=False, query_message=b"%012d" % n)


def payload(n: int) -> bytes:
    return frame(n)[4:]


async def until(condition: Callable[[], object], within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {within} s")


@contextlib.asynccontextmanager
async def client(path: Path, buffer_bytes: int = 1 << 20) -> AsyncIterator[FrameStreamClient]:
    writer = FrameStreamClient(path, buffer_bytes=buffer_bytes)
    writer.start()
    try:
        yield writer
    finally:
        await writer.close()


async def test_handshake_frames_in_order_and_stop_finish(tmp_path: Path) -> None:
    async with Collector(tmp_path / "c.sock") as collector, client(collector.path) as writer:
        await until(lambda: writer.connected)
        for n in range(100):
            writer.push(frame(n))
        await until(lambda: len(collector.frames) == 100)
        assert collector.frames == [payload(n) for n in range(100)]
        assert collector.ready_types == [[CONTENT_TYPE]]
        assert (writer.sent, writer.dropped) == (100, 0)
        writer.push(frame(100))
        await writer.close()  # the held frame, then STOP, answered with FINISH
        assert collector.stopped.is_set() and collector.frames[-1] == payload(100)


async def test_frames_wait_for_a_collector_that_comes_later_and_past_the_buffer_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    one = len(frame(0))
    async with client(path, buffer_bytes=10 * one) as writer:
        for n in range(15):
            writer.push(frame(n))
        assert (writer.connected, writer.dropped) == (False, 5)
        async with Collector(path) as collector:
            await until(lambda: len(collector.frames) == 10)
            assert collector.frames == [payload(n) for n in range(10)]
            assert writer.sent == 10


async def test_a_collector_that_goes_away_and_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    async with client(path) as writer:
        async with Collector(path) as first:
            await until(lambda: writer.connected)
            writer.push(frame(1))
            await until(lambda: first.frames == [payload(1)])
        await until(lambda: not writer.connected)
        writer.push(frame(2))  # held while the collector is away
        path.unlink(missing_ok=True)
        async with Collector(path) as second:
            await until(lambda: second.frames == [payload(2)])
            writer.push(frame(3))
            await until(lambda: second.frames == [payload(2), payload(3)])


async def test_a_collector_that_does_not_take_dnstap_is_not_written_to(tmp_path: Path) -> None:
    async with Collector(tmp_path / "c.sock", accept=b"protobuf:something.Else") as collector, \
            client(collector.path) as writer:
        writer.push(frame(1))
        await until(lambda: collector.connections >= 2)  # refused, tried again
        assert not writer.connected and collector.frames == [] and writer.dropped == 0


async def test_a_collector_that_hangs_up_after_the_handshake_is_not_called_again_at_once(tmp_path: Path) -> None:
    async with Collector(tmp_path / "c.sock", hang_up=True) as collector, client(collector.path) as writer:
        await until(lambda: collector.connections >= 2)
        await asyncio.sleep(1.0)  # 0.05 s, 0.1 s, then every 0.2 s: a handful, not thousands
        assert collector.connections <= 10 and not writer.connected


async def test_a_collector_that_never_answers_the_handshake(tmp_path: Path) -> None:
    async with Collector(tmp_path / "c.sock", answer=False) as collector, client(collector.path) as writer:
        await until(lambda: collector.connections >= 2, within=3)
        assert not writer.connected


async def test_a_collector_that_stops_reading_cannot_hold_up_the_stop(tmp_path: Path) -> None:
    async with Collector(tmp_path / "c.sock", read=False) as collector:
        writer = FrameStreamClient(collector.path, buffer_bytes=64 * 1024 * 1024)
        writer.start()
        await until(lambda: writer.connected)
        big = Encoder().frame(MessageType.CLIENT_RESPONSE, SocketProtocol.TCP, v6=False, response_message=b"x" * 60000)
        for _ in range(400):  # 24 MB: more than the socket buffers take
            writer.push(big)
        await asyncio.sleep(0.2)
        async with asyncio.timeout(5):
            await writer.close()
        assert writer.sent + writer.dropped == 400  # what was left in the write it was stopped in too


async def test_a_collector_that_dies_without_reading_takes_one_write_not_the_whole_buffer(tmp_path: Path) -> None:
    # The buffer held while the collector was away went out as one write of 24 MB: a collector
    # that took the handshake and died took all of it, counted as sent, none as dropped.
    path = tmp_path / "c.sock"
    big = Encoder().frame(MessageType.CLIENT_RESPONSE, SocketProtocol.TCP, v6=False, response_message=b"x" * 60000)
    async with client(path, buffer_bytes=64 * 1024 * 1024) as writer:
        for _ in range(400):  # held: no collector yet
            writer.push(big)
        async with Collector(path, read=False):
            await until(lambda: writer.connected)
            await asyncio.sleep(0.2)
        await until(lambda: not writer.connected)
        assert writer.dropped > 0  # the write the connection broke in
        path.unlink(missing_ok=True)
        async with Collector(path) as second:
            await until(lambda: writer.sent + writer.dropped == 400)
            assert len(second.frames) >= 300  # less only what the first one's socket buffers took
            assert writer.dropped <= tapmodule.WRITE_BYTES // len(big) + 1


async def test_the_sink_writes_only_what_is_asked(tmp_path: Path) -> None:
    async with Collector(tmp_path / "c.sock") as collector:
        writer = FrameStreamClient(collector.path, buffer_bytes=1 << 20)
        writer.start()
        sink = DnstapSink()
        sink.client_query(SocketProtocol.UDP, "198.18.0.7", 1000, b"q" * 12, 1.0)  # off: nothing
        sink.use(writer, Encoder(b"id"), client_queries=False, client_responses=True, resolver_queries=True,
                 resolver_responses=False)
        assert sink.clients and sink.resolvers
        sink.client_query(SocketProtocol.UDP, "198.18.0.7", 1000, b"q" * 12, 1.0)
        sink.client_response(SocketProtocol.UDP, "2001:db8::7", 1000, 1.0, b"r" * 12)
        sink.upstream_query(False, ("127.0.0.1", 5000), ("198.18.0.53", 53), b"\0\0\0\0" + b"q" * 8, 1.0, b"\0")
        sink.upstream_query(False, ("127.0.0.1", 5000), ("198.18.0.53", 53), b"\0\0\x01\0" + b"q" * 8, 1.0, b"\0")
        sink.upstream_response(False, ("127.0.0.1", 5000), ("198.18.0.53", 53), b"q" * 12, 1.0, b"r" * 12, b"\0")
        await until(lambda: len(collector.frames) == 3)
        import dnstap_pb

        types = []
        for data in collector.frames:
            message = dnstap_pb.Dnstap()
            message.ParseFromString(data)
            types.append(message.message.type)
        assert types == [dnstap_pb.Message.CLIENT_RESPONSE, dnstap_pb.Message.RESOLVER_QUERY,
                         dnstap_pb.Message.FORWARDER_QUERY]  # RD set: a forwarder was asked
        await sink.retire()
        assert (sink.writer, sink.clients, sink.sent) == (None, False, 3)
        assert collector.stopped.is_set()


async def test_the_counters_do_not_go_back_while_a_replaced_connection_ends(tmp_path: Path) -> None:
    async with Collector(tmp_path / "c.sock", finish_after=0.3) as collector:
        writer = FrameStreamClient(collector.path, buffer_bytes=1 << 20)
        writer.start()
        sink = DnstapSink()
        sink.use(writer, Encoder(), client_queries=True, client_responses=True, resolver_queries=False,
                 resolver_responses=False)
        await until(lambda: writer.connected)
        for n in range(3):
            sink.client_query(SocketProtocol.UDP, "198.18.0.7", 1000 + n, b"q" * 12, 1.0)
        await until(lambda: sink.sent == 3)
        retiring = asyncio.ensure_future(sink.retire())
        await until(lambda: sink.writer is None)
        await asyncio.sleep(0.1)
        assert not retiring.done()  # STOP sent, FINISH awaited
        assert sink.sent == 3  # a Prometheus counter: never less than it was
        await retiring
        assert sink.sent == 3 and collector.stopped.is_set()


async def test_a_udp_reply_whose_query_came_before_a_reload_turned_dnstap_on_has_a_real_query_time(
        tmp_path: Path) -> None:
    """A query that came on the path without dnstap has no arrival time; its reply, answered
    after a reload turned dnstap on, is tapped with its start, not the epoch."""
    import time
    from types import SimpleNamespace

    import dnstap_pb

    from ispd.dns.service import DNSService

    writer = FrameStreamClient(tmp_path / "nobody.sock", buffer_bytes=1 << 20)  # not started: frames held
    sink = DnstapSink()
    sink.use(writer, Encoder(), client_queries=True, client_responses=True, resolver_queries=False,
             resolver_responses=False)

    async def answer(data: bytes, client: str, *, tcp: bool) -> bytes:
        return data

    service = SimpleNamespace(engine=SimpleNamespace(answer=answer), tap=sink,
                              metrics=SimpleNamespace(slow_latency=SimpleNamespace(observe=lambda _: None)))
    transport = SimpleNamespace(is_closing=lambda: False, sendto=lambda *_: None)
    before = time.time()
    await DNSService._answer_udp(service, b"q" * 12, "198.18.0.7", transport, ("198.18.0.7", 5300))  # type: ignore[arg-type]
    (frame,) = writer._frames
    message = dnstap_pb.Dnstap()
    message.ParseFromString(frame[4:])
    assert message.message.type == dnstap_pb.Message.CLIENT_RESPONSE
    assert before - 1 < message.message.query_time_sec <= time.time()
