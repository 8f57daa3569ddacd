"""DoH's HTTP/2 connections (ispd/dns/https.py), over plain TCP on loopback: TLS is the listener's."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from h2.errors import ErrorCodes

from ispd.dns.config import DoHConfig
from ispd.dns.frontend import TransportStats
from ispd.dns.https import MAX_HEADER_LIST_SIZE, DoHResponder, FrameLengths, serve_h2
from ispd.dns.streams import WRITE_BUFFER_HIGH
from ispd.listeners import forget_connection_error
from tests.dns.test_streams import reset

QUERY = bytes.fromhex("123401000001000000000000076578616d706c650474657374000001" "0001")


class CachedAnswers:
    """Every query is a cache hit: its own bytes come back as the reply."""

    def from_cache(self, data: bytes, client: str, started: float) -> bytes:
        return data


@pytest.mark.parametrize("leave", ["close", "reset"])
async def test_a_connection_goes_with_its_client(leave: str, without_cycle_collection: None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """h2 dispatches frames through a table of the connection's own bound methods: a cycle that
    ispd's rare garbage collections left, with the connection's header tables and buffers, long
    after each DoH client had gone."""
    made: list[weakref.ref[h2.connection.H2Connection]] = []

    class RecordedConnection(h2.connection.H2Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if not self.config.client_side:
                made.append(weakref.ref(self))

    monkeypatch.setattr(h2.connection, "H2Connection", RecordedConnection)
    responder = DoHResponder(CachedAnswers(), TransportStats(), DoHConfig(), None)  # type: ignore[arg-type]
    ended = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_h2(reader, writer, "127.0.0.1", responder, idle_seconds=5, max_streams=10)
        forget_connection_error(reader)  # as the TLS listener does (tests/dns/test_tls.py)
        ended.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        path = "/dns-query?dns=" + base64.urlsafe_b64encode(QUERY).rstrip(b"=").decode()
        client.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                (":authority", "dns.test")], end_stream=True)
        writer.write(client.data_to_send())
        answered = False
        while not answered:
            events = client.receive_data(await reader.read(65536))
            answered = any(isinstance(event, h2.events.StreamEnded) for event in events)
        if leave == "reset":
            reset(writer)
        else:
            writer.close()
        await asyncio.wait_for(ended.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
    assert len(made) == 1
    assert made[0]() is None


@dataclass
class Served:
    """A DoH server over plain TCP: its address, the server side's writers, and whether
    ``serve_h2`` has ended for the (first) connection."""

    address: tuple[str, int] = ("", 0)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def serving(answers: Any, *, idle_seconds: float = 5, max_streams: int = 10,
                  config: DoHConfig | None = None) -> AsyncIterator[Served]:
    responder = DoHResponder(answers, TransportStats(), config or DoHConfig(), None)
    served = Served()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.writers.append(writer)
        await serve_h2(reader, writer, "127.0.0.1", responder, idle_seconds=idle_seconds, max_streams=max_streams)
        forget_connection_error(reader)
        served.done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    served.address = server.sockets[0].getsockname()
    try:
        yield served
    finally:
        server.close()
        await server.wait_closed()


def h2_client(window: int | None = None) -> h2.connection.H2Connection:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    if window is not None:
        client.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    client.initiate_connection()
    if window is not None:
        client.increment_flow_control_window(window - 65535)
    return client


def ask(client: h2.connection.H2Connection, queries: int = 1) -> None:
    """``queries`` GET requests for QUERY."""
    path = "/dns-query?dns=" + base64.urlsafe_b64encode(QUERY).rstrip(b"=").decode()
    for _ in range(queries):
        client.send_headers(client.get_next_available_stream_id(),
                            [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", "dns.test")],
                            end_stream=True)


async def test_a_client_that_pings_but_never_reads_is_cut_off_after_the_idle_time() -> None:
    """Each PING makes a PING ACK; a client that sends them (or requests) and never reads fills
    the server's write buffer past its high mark, where reading waits for the client. That wait
    had no end: the connection, its buffers and its place under the connection limits stayed
    past every idle timeout, for as long as the client kept its socket (a bug hunt's ping flood
    held one over 48 s against a 30 s idle timeout)."""
    client = socket.socket()
    async with serving(CachedAnswers(), idle_seconds=0.5) as served:
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            client.connect(served.address)
            client.setblocking(False)
            pinging = h2_client()
            pending = pinging.data_to_send()
            while not served.writers or served.writers[0].transport.get_write_buffer_size() <= WRITE_BUFFER_HIGH:
                for _ in range(1000):
                    pinging.ping(b"12345678")
                pending += pinging.data_to_send()
                with contextlib.suppress(BlockingIOError):
                    pending = pending[client.send(pending):]
                await asyncio.sleep(0.001)
            transport = served.writers[0].transport
            await asyncio.wait_for(served.done.wait(), 5)  # ended though the client never left
            assert transport.get_extra_info("socket").fileno() == -1  # closed: no buffer, no descriptor
        finally:
            client.close()


async def test_requests_sent_before_the_servers_settings_past_its_stream_limit_are_refused_one_by_one() -> None:
    """A client sends its first requests with its preface, before it has read the server's
    SETTINGS: curl and browsers assume 100 streams meanwhile, h2 and httpx no limit. h2 enforced
    the limit from the start by ending the connection (GOAWAY, PROTOCOL_ERROR), and every
    request of that first flight was lost with it: with ``max_streams_per_connection`` under
    100, a browser's burst at connection start got nothing. RFC 9113 §5.1.2 makes it a stream
    error: the streams over the limit are refused (REFUSED_STREAM, which the client retries),
    the others answered."""
    from tests.dns.test_streams import SlowAnswers

    async with serving(SlowAnswers()) as served:
        reader, writer = await asyncio.open_connection(*served.address)
        client = h2_client()
        ask(client, 15)
        writer.write(client.data_to_send())
        answered, ended = 0, False
        refused: list[int] = []
        while answered + len(refused) < 15 and not ended:
            data = await asyncio.wait_for(reader.read(65536), 5)
            for event in client.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    answered += 1
                elif isinstance(event, h2.events.StreamReset):
                    refused.append(event.error_code)
                ended = ended or isinstance(event, h2.events.ConnectionTerminated)
            writer.write(client.data_to_send())
        assert not ended
        assert (answered, refused) == (10, [ErrorCodes.REFUSED_STREAM] * 5)
        assert client.remote_settings.max_concurrent_streams == 10  # announced all the same
        writer.close()


class DroppedAnswers:
    """The engine drops every query (a policy DROP, a rate-limited client)."""

    def from_cache(self, data: bytes, client: str, started: float) -> None:
        return None

    async def resolve(self, data: bytes, client: str, started: float) -> None:
        return None


async def test_a_dropped_query_s_stream_is_cancelled_not_refused() -> None:
    """RFC 9113 §8.7 keeps REFUSED_STREAM for a stream closed before any processing, which the
    client may retry at once: curl did, on five new connections for each query a policy dropped."""
    async with serving(DroppedAnswers()) as served:
        reader, writer = await asyncio.open_connection(*served.address)
        client = h2_client()
        ask(client)
        writer.write(client.data_to_send())
        resets: list[int] = []
        while not resets:
            for event in client.receive_data(await asyncio.wait_for(reader.read(65536), 5)):
                if isinstance(event, h2.events.StreamReset):
                    resets.append(event.error_code)
            writer.write(client.data_to_send())
        assert resets == [ErrorCodes.CANCEL]
        writer.close()


class BigSlowAnswers:
    def from_cache(self, data: bytes, client: str, started: float) -> None:
        return None

    async def resolve(self, data: bytes, client: str, started: float) -> bytes:
        await asyncio.sleep(0.1)
        return data + bytes(60_000)  # (a large answer: DNSKEY sets, TXT, ANY...)


async def test_a_reply_waiting_for_a_window_goes_when_the_client_s_settings_open_it() -> None:
    """RFC 9113 §6.9.2: SETTINGS_INITIAL_WINDOW_SIZE changes every stream's window, with no
    WINDOW_UPDATE. A client that starts at 0 and then raises it got the reply's headers and
    never its body: the server went on only at a WINDOW_UPDATE."""
    async with serving(CachedAnswers()) as served:
        reader, writer = await asyncio.open_connection(*served.address)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        client.initiate_connection()
        ask(client)
        writer.write(client.data_to_send())
        body = b""
        ended = False
        opened = False
        while not ended:
            for event in client.receive_data(await asyncio.wait_for(reader.read(65536), 2)):
                if isinstance(event, h2.events.ResponseReceived) and not opened:
                    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
                    opened = True
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                ended = ended or isinstance(event, h2.events.StreamEnded)
            writer.write(client.data_to_send())
        assert body == QUERY
        writer.close()


async def get_until_ended(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, query: bytes,
                          *extra_headers: tuple[str, str]) -> list[h2.events.Event]:
    """A DoH GET of ``query`` on a connection of its own: the events until its stream or the
    connection ends."""
    client = h2_client()
    path = "/dns-query?dns=" + base64.urlsafe_b64encode(query).rstrip(b"=").decode()
    client.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "https"), (":authority", "dns.test"),
                            *extra_headers], end_stream=True)
    writer.write(client.data_to_send())
    events: list[h2.events.Event] = []
    while not any(isinstance(event, (h2.events.StreamEnded, h2.events.ConnectionTerminated)) for event in events):
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data
        events += client.receive_data(data)
        writer.write(client.data_to_send())
    return events


@pytest.mark.parametrize(("padding", "answered"), [(MAX_HEADER_LIST_SIZE // 2, True),
                                                   (MAX_HEADER_LIST_SIZE * 2, False)])
async def test_a_header_list_over_the_announced_size_is_refused(padding: int, answered: bool) -> None:
    """The header list size the server announces in SETTINGS is the one it takes (h2 kept its
    default, 64 KB, and a request with 40 KB of headers was answered)."""
    async with serving(CachedAnswers()) as served:
        reader, writer = await asyncio.open_connection(*served.address)
        events = await get_until_ended(reader, writer, QUERY,
                                       *((f"x-padding-{i}", "a" * 1000) for i in range(padding // 1000)))
        assert any(isinstance(event, h2.events.StreamEnded) for event in events) is answered
        writer.close()


async def test_a_get_within_max_query_bytes_is_answered_whatever_its_path_length() -> None:
    """From a review: the header list size of 16 KB, now enforced, took no account of
    ``max_query_bytes`` (up to 65535): with it at 16384, a GET for a 13 KB query (a path of
    17 KB in base64url) ended the whole connection (with every other stream on it), where
    before the decoder's 64 KB let it through, and HTTP/3 allows 16 KB + twice the query."""
    config = DoHConfig(max_query_bytes=16384)
    big = QUERY + bytes(13000)  # (the fake cache answers any bytes with themselves)
    async with serving(CachedAnswers(), config=config) as served:
        reader, writer = await asyncio.open_connection(*served.address)
        events = await get_until_ended(reader, writer, big)
        assert not any(isinstance(event, h2.events.ConnectionTerminated) for event in events)
        assert next(e.headers for e in events if isinstance(e, h2.events.ResponseReceived))[0] == (b":status", b"200")
        writer.close()


async def test_replies_left_unread_by_a_silent_client_do_not_hold_the_connection() -> None:
    """From a review: replies the resolving tasks wrote while the connection waited to read
    were not bounded by the drain check, and after the idle timeout writer.close() waited for a
    flush that never came: the socket and its buffer stayed for as long as the client did."""
    client = socket.socket()
    async with serving(BigSlowAnswers(), idle_seconds=0.5, max_streams=100) as served:
        try:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
            client.connect(served.address)
            asking = h2_client(window=2**31 - 1)
            ask(asking, 60)
            client.sendall(asking.data_to_send())  # then nothing: neither read nor sent
            await asyncio.wait_for(served.done.wait(), 5)  # the idle timeout ended serve_h2
            transport = served.writers[0].transport
            await asyncio.sleep(1.5)  # three idle times more
            assert transport.get_write_buffer_size() == 0 or transport.get_extra_info("socket").fileno() == -1, \
                f"still open, {transport.get_write_buffer_size()} bytes waiting for a client that never reads"
        finally:
            client.close()


async def test_a_frame_longer_than_the_limit_ends_the_connection_at_its_header() -> None:
    """RFC 9113 §4.2: a frame over SETTINGS_MAX_FRAME_SIZE is a FRAME_SIZE_ERROR. h2 looks at the
    length only once the whole frame is buffered: a bug hunt's 20 connections from one address,
    each announcing a 16 MB DATA frame, had ispd hold 340 MB (until the idle timeout, and longer
    for a client that trickled the rest)."""
    async with serving(CachedAnswers(), idle_seconds=30) as served:
        reader, writer = await asyncio.open_connection(*served.address)
        try:
            client = h2_client()
            header = (0xFFFFFF).to_bytes(3, "big") + bytes([0, 0]) + (1).to_bytes(4, "big")  # DATA, stream 1
            writer.write(client.data_to_send() + header + b"x" * 100_000)
            await asyncio.wait_for(served.done.wait(), 5)  # (not after the 30 s idle timeout)
            received = b""
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                received += chunk
            events = client.receive_data(received)
            ended = [event for event in events if isinstance(event, h2.events.ConnectionTerminated)]
            assert ended and ended[0].error_code == ErrorCodes.FRAME_SIZE_ERROR, events
        finally:
            writer.close()


@pytest.mark.parametrize("step", [1, 7, 9, 65536])
def test_frame_lengths_follow_frames_however_the_bytes_are_split(step: int) -> None:
    client = h2_client()
    ask(client, 3)
    client.ping(b"12345678")
    sent = client.data_to_send()[24:]  # (the preface is read before)
    sent += (16384).to_bytes(3, "big") + bytes(6) + b"x" * 16384  # exactly the limit: fine
    frames = FrameLengths(16384)
    assert all(frames.admit(sent[at:at + step]) for at in range(0, len(sent), step))
    assert frames.left == 0 and frames.header == b""
    assert not frames.admit((16385).to_bytes(3, "big") + bytes(6))


@pytest.mark.parametrize("trickled", ["preface", "frame"])
async def test_a_client_that_trickles_bytes_but_no_whole_frame_is_cut_off_after_the_idle_time(trickled: str) -> None:
    """The idle timer restarted at every byte read: a bug hunt's client, sending one byte every
    2 s against a 3 s idle timeout, held its connection 48 s with the preface alone and 34 s with
    a 17-byte PING frame (at 30 s, a byte every 29 s: a 16 KB frame held it for days). Idle is a
    time without a whole frame, as a DoT query has to come whole within it."""
    async with serving(CachedAnswers(), idle_seconds=0.5) as served:
        _reader, writer = await asyncio.open_connection(*served.address)
        try:
            preface = h2_client().data_to_send()
            if trickled == "preface":
                slowly = preface[:24]
            else:
                writer.write(preface)
                slowly = (8).to_bytes(3, "big") + bytes([6, 0]) + bytes(4) + b"12345678"  # a PING
            started = asyncio.get_running_loop().time()
            for byte in slowly:
                if served.done.is_set():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)
            await asyncio.wait_for(served.done.wait(), 5)
            assert asyncio.get_running_loop().time() - started < 1.5  # not 24 or 17 bytes at 0.2 s each
        finally:
            writer.close()


class SlowAnswers:
    def from_cache(self, data: bytes, client: str, started: float) -> None:
        return None

    async def resolve(self, data: bytes, client: str, started: float) -> bytes:
        await asyncio.sleep(0.8)
        return data


async def test_a_request_still_being_resolved_is_answered_past_the_idle_time() -> None:
    """A bug hunt's DoH client, its one query resolved in 0.8 s against a 0.5 s idle timeout,
    got a GOAWAY at 0.5 s naming the stream as processed and never its answer (the resolution
    was cancelled); a DoT client, the same query on the same daemon, got its answer at 0.8 s."""
    async with serving(SlowAnswers(), idle_seconds=0.5) as served:
        reader, writer = await asyncio.open_connection(*served.address)
        try:
            client = h2_client()
            ask(client)
            writer.write(client.data_to_send())
            statuses: list[bytes] = []
            body = b""
            ended = False
            while not ended:
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, f"closed without an answer (statuses {statuses})"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses.append(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        assert ended, "GOAWAY before the answer"
                writer.write(client.data_to_send())
            assert statuses == [b"200"] and body == QUERY
            await asyncio.wait_for(served.done.wait(), 5)  # and idle after it: closed
        finally:
            writer.close()
