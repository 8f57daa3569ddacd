"""DoH's HTTP/2 connections (ispd/dns/https.py), over plain TCP on loopback: TLS is the listener's."""

from __future__ import annotations

import asyncio
import base64
import weakref
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from ispd.dns.config import DoHConfig
from ispd.dns.frontend import TransportStats
from ispd.dns.https import DoHResponder, serve_h2
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
