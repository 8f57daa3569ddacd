"""DNS over a byte stream: clients that leave their replies unread do not keep their sockets."""

from __future__ import annotations

import asyncio
import socket
import struct

from ispd.dns.frontend import TransportStats
from ispd.dns.streams import serve_dns_stream

QUERY = struct.pack("!H", 12) + bytes(12)


class BigReplies:
    """Every query gets a 16 KB reply at once."""

    def from_cache(self, data: bytes, client: str, started: float) -> bytes:
        return bytes(16_000)

    async def resolve(self, data: bytes, client: str, started: float) -> bytes:
        return bytes(16_000)


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
