"""DNS over QUIC (ispd/dns/quic.py): what a connection leaves once its client has gone."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import ssl
import weakref
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, FrameType, H3Connection, encode_frame, encode_settings
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StopSendingReceived

from ispd.configtypes import SocketAddress
from ispd.dns.config import DoHConfig
from ispd.dns.frontend import TransportStats
from ispd.dns.https import DoHResponder
from ispd.dns.quic import (
    DOQ_ALPN,
    DOQ_REQUEST_CANCELLED,
    H3_EXCESSIVE_LOAD,
    H3_REQUEST_CANCELLED,
    DoQProtocol,
    HTTP3Protocol,
    QuicListener,
    QuicSettings,
)
from ispd.listeners import ConnectionGate
from tests.lab.certs import issue
from tests.lab.quicclient import _Client, _Pending

QPACK_ENCODER_STREAM_ERROR = 0x201  # RFC 9204 §6
QUERY = bytes.fromhex("000001000001000000000000076578616d706c650474657374000001" "0001")  # (DoQ: ID 0)


class CachedAnswers:
    """Every query is a cache hit: its own bytes come back as the reply."""

    def from_cache(self, data: bytes, client: str, started: float) -> bytes:
        return data


class NoAnswers:
    """No query is in the cache, and the resolver is still at it when the client goes."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    def from_cache(self, data: bytes, client: str, started: float) -> None:
        return None

    async def resolve(self, data: bytes, client: str, started: float) -> bytes:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("never")


def listener_for(tmp_path: Path, alpn: str, *, protocol: type[Any] | None = None, answerer: Any = None,
                 max_streams: int = 5) -> QuicListener:
    """A DoQ ("doq") or DoH over HTTP/3 ("h3") listener with a certificate, not started yet."""
    stats = TransportStats()
    settings = QuicSettings(idle_timeout=5.0, handshake_timeout=5.0, max_streams=max_streams, max_query_bytes=4096)
    gate = ConnectionGate(10, 10, stats)
    if alpn == "doq":
        listener = QuicListener("doq", DOQ_ALPN, protocol or DoQProtocol, settings, False,
                                answerer=answerer or CachedAnswers(), gate=gate, stats=stats)
    else:
        responder = DoHResponder(answerer or CachedAnswers(), stats, DoHConfig(), None)  # type: ignore[arg-type]
        listener = QuicListener("doh (HTTP/3)", H3_ALPN, protocol or HTTP3Protocol, settings, False,
                                responder=responder, gate=gate, stats=stats)
    certificates = issue(tmp_path, "dns.test")
    listener.load_certificate(certificates.certificate, certificates.private_key)
    return listener


async def connected(stack: AsyncExitStack, listener: QuicListener, client_type: type[_Client] = _Client) -> Any:
    """A client connected to ``listener``, started in ``stack``."""
    await listener.start([SocketAddress("127.59.0.1", 0)], stack)
    configuration = QuicConfiguration(is_client=True, alpn_protocols=listener.alpn, verify_mode=ssl.CERT_NONE)
    transport, client = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: client_type(QuicConnection(configuration=configuration)), local_addr=("127.59.0.2", 0))
    stack.callback(transport.abort)
    client.connect(listener.bound[0])
    await asyncio.wait_for(client.wait_connected(), 5)
    return client


def _client_for(alpn: str) -> type[_Client]:
    """A client speaking HTTP/3 on its connection (``client.http``) for "h3", DoQ else."""

    class Client(_Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.http = H3Connection(self._quic) if alpn == "h3" else None

    return Client


async def _ask(client: Any) -> None:
    """QUERY over DoQ, or in an HTTP/3 GET, answered (the test answerers echo it)."""
    if client.http is None:
        assert await asyncio.wait_for(client.doq(QUERY), 5) == QUERY
    else:
        path = "/dns-query?dns=" + base64.urlsafe_b64encode(QUERY).rstrip(b"=").decode()
        status, _, body = await asyncio.wait_for(client.h3("GET", "dns.test", path), 5)
        assert (status, body) == (200, QUERY)


@pytest.mark.parametrize("leave", ["close", "drop"])
@pytest.mark.parametrize("answers", [CachedAnswers, NoAnswers])
async def test_a_connection_is_forgotten_when_its_client_goes_and_leaves_no_cycle(
        leave: str, answers: type[CachedAnswers | NoAnswers], tmp_path: Path, without_cycle_collection: None) -> None:
    """A client that closes, or one that sends a query and drops (no CONNECTION_CLOSE: the idle
    timeout ends it): the server forgets the connection and frees its place in the gate, and
    nothing (its buffers, tasks, handshake timer, aioquic's own callbacks) holds it in a
    cycle, which ispd's rare garbage collections would leave for long."""
    made: list[weakref.ref[DoQProtocol]] = []
    quics: list[weakref.ref[QuicConnection]] = []
    ended = asyncio.Event()

    class RecordedDoQ(DoQProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(weakref.ref(self))
            quics.append(weakref.ref(self._quic))

        def _ended(self) -> None:
            super()._ended()
            ended.set()

    stats = TransportStats()
    gate = ConnectionGate(10, 10, stats)
    settings = QuicSettings(idle_timeout=0.5, handshake_timeout=5.0, max_streams=10, max_query_bytes=4096)
    answerer = answers()
    listener = QuicListener("doq", DOQ_ALPN, RecordedDoQ, settings, False, answerer=answerer, gate=gate,
                            stats=stats)
    certificates = issue(tmp_path, "dns.test")
    listener.load_certificate(certificates.certificate, certificates.private_key)
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        await listener.start([SocketAddress("127.59.0.1", 0)], stack)
        configuration = QuicConfiguration(is_client=True, alpn_protocols=DOQ_ALPN, verify_mode=ssl.CERT_NONE)
        transport, client = await loop.create_datagram_endpoint(
            lambda: _Client(QuicConnection(configuration=configuration)), local_addr=("127.59.0.2", 0))
        try:
            client.connect(listener.bound[0])
            await asyncio.wait_for(client.wait_connected(), 5)
            if isinstance(answerer, CachedAnswers):
                assert await asyncio.wait_for(client.doq(QUERY), 5) == QUERY
            else:  # the query is being resolved as the client goes
                client._quic.send_stream_data(client._quic.get_next_available_stream_id(),
                                              len(QUERY).to_bytes(2, "big") + QUERY, end_stream=True)
                client.transmit()
                await asyncio.wait_for(answerer.asked.wait(), 5)
            if leave == "close":
                client.close()
                await asyncio.wait_for(client.wait_closed(), 5)
        finally:
            if client._timer is not None:  # (dropped: it sends nothing more)
                client._timer.cancel()
            transport.abort()
        await asyncio.wait_for(ended.wait(), 5)  # (for the client that dropped: the idle timeout, 0.5 s)
        assert gate.total == 0
        await asyncio.sleep(0.05)  # (its tasks' last round, and the protocol's own)
        [made_one] = made
        assert made_one() is None
        assert quics[0]() is None


@pytest.mark.parametrize("alpn", ["doq", "h3"])
@pytest.mark.parametrize("end", ["client closes", "idle", "handshake timeout", "refused"])
async def test_a_connection_over_is_freed_without_the_cycle_collector(alpn: str, end: str, tmp_path: Path,
                                                                      without_cycle_collection: None) -> None:
    """From a bug hunt: an aioquic connection is in reference cycles of its own (bound methods it
    keeps: frame handlers, loss recovery's probe, TLS and key callbacks; the server's handlers on
    the protocol), so each DoQ or HTTP/3 connection closed kept 60-100 KB until a full garbage
    collection, which ispd runs rarely: 300 connections opened and closed grew the daemon by
    18 MB. Once aioquic is done with a connection (a client's close, ispd's idle close, a
    handshake that times out, a refusal), ispd breaks them."""
    made: list[tuple[weakref.ref[Any], weakref.ref[QuicConnection]]] = []
    base = DoQProtocol if alpn == "doq" else HTTP3Protocol

    class Recorded(base):  # type: ignore[valid-type,misc]
        def __init__(self, quic: QuicConnection, *args: Any, **kwargs: Any) -> None:
            super().__init__(quic, *args, **kwargs)
            made.append((weakref.ref(self), weakref.ref(quic)))

    listener = listener_for(tmp_path, alpn, protocol=Recorded)
    listener.apply_settings(QuicSettings(idle_timeout=1.0, handshake_timeout=0.5, max_streams=5,
                                         max_query_bytes=4096))
    gate: ConnectionGate = listener.protocol_args["gate"]
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        await listener.start([SocketAddress("127.136.30.1", 0)], stack)
        server = listener.bound[0]
        if end == "handshake timeout":
            forged_initials("127.136.30.2", server, 1, listener.alpn)
            await asyncio.sleep(1.5)  # (0.5 s, then the closing period)
        else:
            if end == "refused":
                gate.max_total = 0
            configuration = QuicConfiguration(is_client=True, alpn_protocols=listener.alpn, verify_mode=ssl.CERT_NONE)
            transport, client = await loop.create_datagram_endpoint(
                lambda: _client_for(alpn)(QuicConnection(configuration=configuration)),
                local_addr=("127.136.30.2", 0))
            stack.callback(transport.abort)
            client.connect(server)
            if end == "refused":
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(client.wait_connected(), 5)
            else:
                await asyncio.wait_for(client.wait_connected(), 5)
                await _ask(client)
                if end == "client closes":
                    client.close()
                    await asyncio.wait_for(client.wait_closed(), 5)
                else:  # PINGs, which QUIC's idle timeout counts and ispd's does not
                    for i in range(8):
                        client._quic.send_ping(i)
                        client.transmit()
                        await asyncio.sleep(0.3)
                    assert client._quic._close_event is not None
                    assert client._quic._close_event.reason_phrase == "idle"
                await asyncio.sleep(0.5)  # (the server's closing or draining period)
        await asyncio.sleep(0.05)
        assert gate.total == 0 and listener.handshakes.pending == 0
        [(protocol, quic)] = made
        assert protocol() is None
        assert quic() is None


async def test_a_connection_goes_on_past_its_stream_limit_as_streams_end(tmp_path: Path) -> None:
    """max_streams_per_connection limits the streams open at once, not over the connection's
    life: as each query's stream ends the client may open another (RFC 9000 §4.6, MAX_STREAMS).
    aioquic held MAX_STREAMS back while it took the client to have 128 streams left to open, so
    with a limit of 5 the sixth query of a connection waited for ever."""
    async with AsyncExitStack() as stack:
        client = await connected(stack, listener_for(tmp_path, "doq"))
        for _ in range(3):  # one at a time, then the limit's worth at once, twice over
            assert await asyncio.wait_for(client.doq(QUERY), 5) == QUERY
        for _ in range(4):
            assert await asyncio.wait_for(asyncio.gather(*(client.doq(QUERY) for _ in range(5))), 5) == [QUERY] * 5
        client.close()
        await asyncio.wait_for(client.wait_closed(), 5)


async def test_version_negotiation_only_for_a_datagram_that_could_start_a_connection(tmp_path: Path) -> None:
    """RFC 9000 §5.2.2: a server answers an unknown version with Version Negotiation only when
    the datagram is as large as a first one (1200 bytes); smaller ones are dropped, so a forged
    source address draws nothing larger than what was sent."""
    listener = listener_for(tmp_path, "doq")
    header = b"\xc0" + bytes.fromhex("1a2a3a4a") + b"\x08" + os.urandom(8) + b"\x14" + os.urandom(20)
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as stack:
        await listener.start([SocketAddress("127.59.0.1", 0)], stack)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.59.0.2", 0))
            client.setblocking(False)
            client.connect(listener.bound[0])
            for size in (len(header), 100, 1199):
                client.send(header.ljust(size, b"\0"))
            client.send(header.ljust(1200, b"\0"))
            reply = await asyncio.wait_for(loop.sock_recv(client, 2048), 5)
            assert reply[1:5] == b"\0\0\0\0"  # Version Negotiation, and the only reply
            await asyncio.sleep(0.2)
            with pytest.raises(BlockingIOError):
                client.recv(2048)


@pytest.mark.parametrize("stream", ["request", "control"])
async def test_an_http3_frame_too_large_to_hold_ends_its_connection(stream: str, tmp_path: Path) -> None:
    """aioquic's HTTP/3 keeps a HEADERS frame (or a control stream's frame) until all of it has
    come, whatever length it announces, and QUIC's flow control lets the client send on: a client
    that announced 512 MB had the server hold as much as it sent (and copy it all again for
    every packet). Past what a request can need the connection ends, H3_EXCESSIVE_LOAD, as an
    HTTP/2 frame over 16 KB ends its connection."""
    closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Client(_Client):
        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, ConnectionTerminated) and not closed.done():
                closed.set_result(event.error_code)

    async with AsyncExitStack() as stack:
        client = await connected(stack, listener_for(tmp_path, "h3"), Client)
        quic = client._quic
        if stream == "request":  # a HEADERS frame (type 1)
            stream_id, start = quic.get_next_available_stream_id(), encode_uint_var(1)
        else:  # the control stream (type 0), and a SETTINGS frame (type 4)
            stream_id, start = quic.get_next_available_stream_id(is_unidirectional=True), b"\0" + encode_uint_var(4)
        quic.send_stream_data(stream_id, start + encode_uint_var(1 << 29))
        for _ in range(64):  # 1 MB, as flow control lets it go
            quic.send_stream_data(stream_id, bytes(16384))
        client.transmit()
        assert await asyncio.wait_for(closed, 10) == H3_EXCESSIVE_LOAD


@pytest.mark.parametrize("alpn", ["doq", "h3"])
async def test_requests_the_client_abandons_give_their_streams_back(alpn: str, tmp_path: Path) -> None:
    """A client that resets a stream before its query or request is complete (RFC 9250 §4.3:
    DOQ_REQUEST_CANCELLED) gets no reply on it, so the server resets its own side: aioquic
    counts a stream against max_streams until both sides have ended, and a half-open one held
    its place for the connection's life: after max_streams abandoned queries, none could be asked."""

    async with AsyncExitStack() as stack:
        client = await connected(stack, listener_for(tmp_path, alpn, max_streams=3), _client_for(alpn))
        quic = client._quic
        for _ in range(6):
            stream_id = quic.get_next_available_stream_id()
            if client.http is None:  # the length and half the query
                quic.send_stream_data(stream_id, len(QUERY).to_bytes(2, "big") + QUERY[:10])
            else:  # a POST's headers, its body still to come
                client.http.send_headers(stream_id, [(b":method", b"POST"), (b":scheme", b"https"),
                                                     (b":authority", b"dns.test"), (b":path", b"/dns-query"),
                                                     (b"content-type", b"application/dns-message")])
            client.transmit()
            await asyncio.sleep(0.05)
            quic.reset_stream(stream_id, DOQ_REQUEST_CANCELLED if client.http is None else H3_REQUEST_CANCELLED)
            client.transmit()
        await _ask(client)


async def test_a_query_the_client_stops_while_it_resolves_ends_quietly(tmp_path: Path) -> None:
    """A client that cancels a query in flight with STOP_SENDING (and RESET_STREAM, as mosdns
    does, RFC 9250 §4.3) has aioquic reset the reply's side: the reply that comes later is
    dropped. It raised instead, and each such query left a traceback in the log ("Task
    exception was never retrieved")."""
    release = asyncio.Event()
    spawned: list[asyncio.Task[None]] = []

    class SlowAnswers:
        def from_cache(self, data: bytes, client: str, started: float) -> None:
            return None

        async def resolve(self, data: bytes, client: str, started: float) -> bytes:
            await release.wait()
            return data

    class KeptTasks(DoQProtocol):
        def spawn(self, coroutine: Any) -> None:
            super().spawn(coroutine)
            spawned.extend(self.tasks)

        def quic_event_received(self, event: QuicEvent) -> None:
            super().quic_event_received(event)
            if isinstance(event, StopSendingReceived):  # the answer comes before the client has
                release.set()  # acknowledged the reset (aioquic forgets the stream then)

    async with AsyncExitStack() as stack:
        client = await connected(stack, listener_for(tmp_path, "doq", protocol=KeptTasks, answerer=SlowAnswers()))
        stream_id = client._quic.get_next_available_stream_id()
        client._quic.send_stream_data(stream_id, len(QUERY).to_bytes(2, "big") + QUERY, end_stream=True)
        client.transmit()
        await asyncio.sleep(0.2)  # (resolving)
        client._quic.stop_stream(stream_id, DOQ_REQUEST_CANCELLED)
        client.transmit()
        [task] = spawned
        await asyncio.wait_for(task, 5)  # (raises what the task raised)
        assert await asyncio.wait_for(client.doq(QUERY), 5) == QUERY  # and the connection goes on


@pytest.mark.parametrize("ended", ["auto", "never", "always"])
async def test_a_client_back_with_its_retry_token_is_taken_after_retry_has_stopped(tmp_path: Path,
                                                                                 ended: str) -> None:
    """From a review: a Retry is asked for only while handshakes flood in (and
    RETRY_HOLD_SECONDS after), or as a reload says. A client sent a Retry just before it stopped
    came back with its token to a server that no longer looked at tokens: aioquic made the
    connection as for a first Initial, without the retry_source_connection_id that a client that
    followed a Retry must find (RFC 9000 §7.3), and the client's handshake failed."""
    listener = listener_for(tmp_path, "doq")
    listener.settings.retry = "always"
    create_token = listener.retry_tokens.create_token

    def create_and_stop(**kwargs: Any) -> bytes:  # the hold over, or a reload, as the Retry goes
        listener.settings.retry = ended
        return create_token(**kwargs)

    listener.retry_tokens.create_token = create_and_stop  # type: ignore[method-assign]
    async with AsyncExitStack() as stack:
        client = await connected(stack, listener)
        assert listener.settings.retry == ended and listener.retry_tokens.stats.retries == 1
        assert await asyncio.wait_for(client.doq(QUERY), 5) == QUERY


def forged_initials(source: str, server: tuple[str, int], count: int, alpn: list[str]) -> None:
    """``count`` Initials sent from ``source`` and never followed up: what a forger of that
    address sends (it never sees the server's answers, so no handshake goes on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for _ in range(count):
            quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=alpn,
                                                                  verify_mode=ssl.CERT_NONE))
            quic.connect(server, now=0.0)
            for datagram, _ in quic.datagrams_to_send(now=0.0):
                sock.sendto(datagram, server)


@pytest.mark.parametrize("alpn", ["doq", "h3"])
async def test_initials_forged_from_a_clients_address_do_not_take_its_connections(tmp_path: Path,
                                                                                 alpn: str) -> None:
    """From a bug hunt: each Initial was counted against the per-client limit of its source
    address as it came, before any handshake proved that address. Twenty Initials forged from a
    subscriber's address (24 KB) kept the subscriber off DoQ and HTTP/3 for the handshake
    timeout, CONNECTION_REFUSED at every try: 2.4 KB/s kept it off for good. An unproven
    connection now counts in the total only, and as its client's once its handshake is done."""
    listener = listener_for(tmp_path, alpn)
    listener.settings.retry = "never"  # (and so "auto" below its threshold of handshakes under way)
    gate: ConnectionGate = listener.protocol_args["gate"]
    gate.max_per_client = 2
    async with AsyncExitStack() as stack:
        await listener.start([SocketAddress("127.66.9.1", 0)], stack)
        server = listener.bound[0]
        forged_initials("127.66.9.2", server, 5, listener.alpn)
        await asyncio.sleep(0.3)  # (each made a connection, its handshake never to end)

        async def connect() -> _Client:  # the real client, from that address
            configuration = QuicConfiguration(is_client=True, alpn_protocols=listener.alpn,
                                              verify_mode=ssl.CERT_NONE)
            transport, client = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _Client(QuicConnection(configuration=configuration)), local_addr=("127.66.9.2", 0))
            stack.callback(transport.abort)
            client.connect(server)
            await asyncio.wait_for(client.wait_connected(), 5)
            return client

        first = await connect()  # it gets its places
        second = await connect()
        if alpn == "doq":
            assert await asyncio.wait_for(first.doq(QUERY), 5) == QUERY
        assert gate.per_client == {"127.66.9.2": 2}
        with pytest.raises(ConnectionError):  # and its limit holds: a third is refused
            await connect()
        assert second._quic._close_event is None


@pytest.mark.parametrize("alpn", ["doq", "h3"])
async def test_initials_that_never_go_on_do_not_fill_a_small_listener(tmp_path: Path, alpn: str) -> None:
    """From a bug hunt: Retry started only past 64 handshakes under way, and each of them counts in
    max_connections until it times out. With max_connections = 20, thirty Initials that never went
    on (from any source, 36 KB) kept every client off DoQ for the handshake timeout with
    CONNECTION_REFUSED, and no Retry was sent: a few Initials a second kept them off for good.
    Retry now starts past half the listener's connections when that is fewer."""
    listener = listener_for(tmp_path, alpn)  # (max_connections 10, retry "auto")
    async with AsyncExitStack() as stack:
        await listener.start([SocketAddress("127.66.10.1", 0)], stack)
        server = listener.bound[0]
        forged_initials("127.66.10.2", server, 15, listener.alpn)
        await asyncio.sleep(0.3)
        configuration = QuicConfiguration(is_client=True, alpn_protocols=listener.alpn, verify_mode=ssl.CERT_NONE)
        transport, client = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _client_for(alpn)(QuicConnection(configuration=configuration)), local_addr=("127.66.10.3", 0))
        stack.callback(transport.abort)
        client.connect(server)
        await asyncio.wait_for(client.wait_connected(), 5)  # refused (ConnectionError) before
        await _ask(client)
        assert listener.retry_tokens.stats.retries >= 1


@pytest.mark.parametrize("alpn", ["doq", "h3"])
@pytest.mark.parametrize("client_does", ["pings", "trickles", "leaves replies unread", "asks"])
async def test_a_connection_without_queries_or_replies_taken_is_closed_at_the_idle_timeout(
        alpn: str, client_does: str, tmp_path: Path) -> None:
    """From a bug hunt: the idle timeout was QUIC's own (RFC 9000 §10.1), which any packet
    restarts. A client that PINGed, or sent a byte of a query now and then, held a connection
    with no query for good; one that left its replies unread (its flow control closed) and
    PINGed held them too - 400 replies of 4 KB on HTTP/3, where DoT and HTTP/2 cut such a client
    off after the idle timeout. A client that asks goes on."""
    listener = listener_for(tmp_path, alpn)
    listener.apply_settings(QuicSettings(idle_timeout=1.0, handshake_timeout=5.0, max_streams=5,
                                         max_query_bytes=4096))
    async with AsyncExitStack() as stack:
        await listener.start([SocketAddress("127.66.11.1", 0)], stack)
        configuration = QuicConfiguration(is_client=True, alpn_protocols=listener.alpn, verify_mode=ssl.CERT_NONE,
                                          max_stream_data=16 if client_does == "leaves replies unread" else 1 << 20)
        transport, client = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _client_for(alpn)(QuicConnection(configuration=configuration)), local_addr=("127.66.11.2", 0))
        stack.callback(transport.abort)
        client.connect(listener.bound[0])
        await asyncio.wait_for(client.wait_connected(), 5)
        if client_does == "leaves replies unread":  # (each reply more than the 16 bytes it lets come)
            for _ in range(3):
                stream_id = client._quic.get_next_available_stream_id()
                if client.http is None:
                    client._quic.send_stream_data(stream_id, len(QUERY).to_bytes(2, "big") + QUERY, end_stream=True)
                else:
                    path = "/dns-query?dns=" + base64.urlsafe_b64encode(QUERY).rstrip(b"=").decode()
                    client.http.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"),
                                                         (b":authority", b"dns.test"), (b":path", path.encode())],
                                             end_stream=True)
        else:
            await _ask(client)
        trickled = client._quic.get_next_available_stream_id()
        for i in range(12):  # 3.6 s, the idle timeout three times over, the client never quiet
            if client_does == "asks":
                await _ask(client)
            elif client_does == "trickles":
                # (a DoQ length of 64, an HTTP/3 HEADERS frame of 63 bytes, then a byte at a time)
                start = b"\0\x40" if client.http is None else b"\x01\x3f"
                client._quic.send_stream_data(trickled, b"\0" if i else start, end_stream=False)
            else:
                client._quic.send_ping(i)
            client.transmit()
            await asyncio.sleep(0.3)
        assert (client._quic._close_event is None) == (client_does == "asks")


def _qpack_integer(first: int, prefix_bits: int, value: int) -> bytes:
    """An RFC 7541 §5.1 integer (QPACK uses them too) with ``first``'s bits above its prefix."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    encoded, value = bytearray([first | top]), value - top
    while value >= 128:
        encoded.append(value & 127 | 128)
        value >>= 7
    return bytes(encoded + bytes([value]))


async def test_an_http3_client_cannot_insert_into_a_qpack_dynamic_table(tmp_path: Path) -> None:
    """A QPACK bomb: with aioquic's 4 KB dynamic table, a client inserted a 4 KB field and named
    it by a byte of a HEADERS frame, twenty thousand times within the 24 KB a frame may have:
    80 MB to decode, 2.5 s with the event loop (every service) stopped, per request. The table
    is announced at 0 (RFC 9204 §3.2.3) and an insertion is an encoder stream error (§4.1.3)."""
    closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Client(_Client):
        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, ConnectionTerminated) and not closed.done():
                closed.set_result(event.error_code)
            super().quic_event_received(event)

    listener = listener_for(tmp_path, "h3")
    async with AsyncExitStack() as stack:
        client = await connected(stack, listener, Client)
        quic = client._quic
        control = quic.get_next_available_stream_id(is_unidirectional=True)
        quic.send_stream_data(control, encode_uint_var(0x00) + encode_frame(FrameType.SETTINGS, encode_settings({})))
        encoder = quic.get_next_available_stream_id(is_unidirectional=True)
        value = b"a" * 4000
        quic.send_stream_data(encoder, encode_uint_var(0x02) + _qpack_integer(0x20, 5, 4096)  # capacity, insert
                              + _qpack_integer(0x40, 5, 5) + b"x-big" + _qpack_integer(0, 7, len(value)) + value)
        path = b"/dns-query?dns=" + base64.urlsafe_b64encode(QUERY).rstrip(b"=")
        block = (b"\x02\x00\xd1\xd7"  # insert count 1, base 1; :method GET, :scheme https
                 + b"\x50" + _qpack_integer(0, 7, 8) + b"dns.test" + b"\x51" + _qpack_integer(0, 7, len(path)) + path
                 + b"\x80" * 1000)  # the inserted field, a thousand times (4 MB)
        request = quic.get_next_available_stream_id()
        client.pending[request] = _Pending(asyncio.get_running_loop().create_future())
        quic.send_stream_data(request, encode_frame(FrameType.HEADERS, block), end_stream=True)
        client.transmit()
        assert await asyncio.wait_for(closed, 5) == QPACK_ENCODER_STREAM_ERROR
        assert not client.pending[request].future.done()  # (no reply)
        assert listener.retry_tokens.stats.bad_requests == 1


async def test_an_http3_protocol_error_is_counted_as_a_bad_request(tmp_path: Path) -> None:
    """From a bug hunt: aioquic closes an HTTP/3 connection for a protocol error itself and
    raises nothing, so ispd counted none of them (bad_requests stayed 0 for http3, where HTTP/2
    counts its own). Here a second QPACK encoder stream (RFC 9204 §4.2: H3_STREAM_CREATION_ERROR)."""
    listener = listener_for(tmp_path, "h3")
    async with AsyncExitStack() as stack:
        client = await connected(stack, listener, _client_for("h3"))
        await _ask(client)
        for _ in range(2):
            stream_id = client._quic.get_next_available_stream_id(is_unidirectional=True)
            client._quic.send_stream_data(stream_id, encode_uint_var(0x02), end_stream=False)
        client.transmit()
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client._quic._close_event.error_code == 0x103  # H3_STREAM_CREATION_ERROR
        assert listener.retry_tokens.stats.bad_requests == 1


class ClientsSeen(CachedAnswers):
    """Cache hits, each query's client address noted."""

    def __init__(self) -> None:
        self.clients: list[str] = []

    def from_cache(self, data: bytes, client: str, started: float) -> bytes:
        self.clients.append(client)
        return data


@pytest.mark.parametrize("alpn", ["doq", "h3"])
async def test_a_client_that_moves_is_judged_by_the_address_its_queries_come_from(alpn: str, tmp_path: Path) -> None:
    """A QUIC connection outlives its address (RFC 9000 §9: a NAT rebinding, or a client that
    moves on purpose). Its queries were judged by the address it began from, so one begun inside
    `allow` went on being answered from an address outside it (where a UDP query gets REFUSED),
    and the rate limit and the policy took it for the client it had been."""
    answers = ClientsSeen()
    async with AsyncExitStack() as stack:
        client = await connected(stack, listener_for(tmp_path, alpn, answerer=answers), _client_for(alpn))

        await _ask(client)
        old = client._transport
        moved, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: client, local_addr=("127.59.0.3", 0))
        stack.callback(moved.abort)
        old._protocol = asyncio.DatagramProtocol()  # (its end is not the connection's)
        old.abort()
        client._transport = moved
        await _ask(client)
        assert answers.clients == ["127.59.0.2", "127.59.0.3"]


class SlowAnswers:
    """Nothing in the cache, and each answer takes the resolver ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def from_cache(self, data: bytes, client: str, started: float) -> None:
        return None

    async def resolve(self, data: bytes, client: str, started: float) -> bytes:
        await asyncio.sleep(self.seconds)
        return data


@pytest.mark.parametrize("alpn", ["doq", "h3"])
async def test_a_query_slower_than_the_idle_timeout_is_answered(alpn: str, tmp_path: Path) -> None:
    """Nothing crosses a connection while its only query resolves, and both ends close it at
    the lower of their idle timeouts (RFC 9000 §10.1): a query that took longer than ispd's
    idle_timeout_seconds lost its answer, the connection gone at both ends. Over DoT ispd
    sends answers still being resolved before an idle close; over QUIC it keeps the
    connection alive while queries are in flight (PING, RFC 9000 §10.1.2)."""
    listener = listener_for(tmp_path, alpn, answerer=SlowAnswers(2.5))
    listener.apply_settings(QuicSettings(idle_timeout=1.0, handshake_timeout=5.0, max_streams=5,
                                         max_query_bytes=4096))
    async with AsyncExitStack() as stack:
        client = await connected(stack, listener, _client_for(alpn))
        await _ask(client)
        await asyncio.sleep(1.8)  # and with nothing in flight, the idle timeout still closes it
        assert client._quic._close_event is not None


@pytest.mark.parametrize("alpn", ["doq", "h3"])
async def test_a_handshake_that_times_out_sends_no_more_than_three_times_what_came(alpn: str,
                                                                                   tmp_path: Path) -> None:
    """RFC 9000 §8: until the client's address is proven, a server sends at most three times
    the bytes it received from it. aioquic keeps to it for the handshake and its
    retransmissions, but the CONNECTION_CLOSE ispd sent when handshake_timeout_seconds ran
    out went past it: 3,742 bytes for a 1,200-byte Initial from an address that may be forged."""
    listener = listener_for(tmp_path, alpn)
    listener.apply_settings(QuicSettings(idle_timeout=30.0, handshake_timeout=1.0, max_streams=5,
                                         max_query_bytes=4096))
    async with AsyncExitStack() as stack:
        await listener.start([SocketAddress("127.59.0.1", 0)], stack)
        loop = asyncio.get_running_loop()
        client = QuicConnection(configuration=QuicConfiguration(
            is_client=True, alpn_protocols=listener.alpn, verify_mode=ssl.CERT_NONE))
        client.connect(listener.bound[0], now=loop.time())
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stack.callback(sock.close)
        sock.bind(("127.59.0.2", 0))
        sock.setblocking(False)
        sent = 0
        for data, _ in client.datagrams_to_send(now=loop.time()):  # its Initial, and no more
            sock.sendto(data, listener.bound[0])
            sent += len(data)
        received = 0
        end = loop.time() + 2.5
        while (left := end - loop.time()) > 0:
            with contextlib.suppress(TimeoutError):
                received += len(await asyncio.wait_for(loop.sock_recv(sock, 65536), left))
        assert sent >= 1200
        assert 0 < received <= 3 * sent
        assert listener.handshakes.pending == 0  # and the connection is gone
