"""DNS over a byte stream: clients that leave their replies unread do not keep their sockets."""

from __future__ import annotations

import asyncio
import socket
import struct
import weakref
from types import SimpleNamespace

from ispd.dns.frontend import TransportStats
from ispd.dns.service import DNSService
from ispd.dns.streams import serve_dns_stream
from ispd.listeners import ConnectionGate

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
