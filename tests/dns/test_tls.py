"""The TLS listeners' accept loop (DoT and DoH)."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
import weakref
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import uvloop

from ispd.configtypes import SocketAddress
from ispd.dns import tls
from ispd.dns.frontend import TransportStats
from ispd.dns.streams import serve_dns_stream
from ispd.dns.tls import TLSListener
from ispd.listeners import ConnectionGate
from tests.dns.test_streams import QUERY, SlowAnswers, reset
from tests.lab.certs import issue


class OutOfDescriptors:
    """A listening socket with a connection waiting that cannot be accepted (EMFILE)."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.accepts = 0

    def accept(self) -> tuple[socket.socket, object]:
        self.accepts += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def fileno(self) -> int:
        return self.real.fileno()


async def test_out_of_descriptors_the_listener_rests_instead_of_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: under `ulimit -n` with connections waiting, the DoT port's accept failed
    and returned while the socket stayed readable, so the loop called it again at once: a core
    at 100 % and nothing logged."""
    monkeypatch.setattr(tls, "ACCEPT_RETRY_SECONDS", 0.5)
    stats = TransportStats()
    listener = TLSListener("dot", ["dot"], ConnectionGate(10, 10, stats), stats, 1.0, serve=None)  # type: ignore[arg-type]
    acceptor = listener._acceptor
    real = socket.create_server(("127.0.0.1", 0))
    real.setblocking(False)
    client = socket.create_connection(real.getsockname())
    exhausted = OutOfDescriptors(real)
    loop = asyncio.get_running_loop()
    try:
        loop.add_reader(real.fileno(), acceptor._accept, exhausted)
        await asyncio.sleep(0.3)
        assert exhausted.accepts == 1
        await asyncio.sleep(0.5)  # rested: it looks again
        assert exhausted.accepts == 2 and stats.accept_failures == 2
    finally:
        acceptor.close()
        loop.remove_reader(real.fileno())
        client.close()
        real.close()


def test_a_dot_connection_its_client_resets_goes_with_it(tmp_path: Path, without_cycle_collection: None) -> None:
    """A client that pipelines queries and resets the connection: the reader kept the reset, and
    the reset's traceback the frames that read, which held the reader. The daemon collects such
    cycles rarely, so each connection's TLS state and buffers stayed: 100 MB per 10,000 of these
    connections (measured). Nothing of the connection may wait for the collector."""
    certificates = issue(tmp_path, "dns.test")
    stats = TransportStats()
    readers: list[weakref.ref[asyncio.StreamReader]] = []
    started = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        readers.append(weakref.ref(reader))
        started.set()
        await serve_dns_stream(reader, writer, client, SlowAnswers(), stats, idle_seconds=5, max_in_flight=10,
                               max_query_bytes=512, drain_seconds=1)

    async def run() -> None:
        listener = TLSListener("dot", ["dot"], ConnectionGate(10, 10, stats), stats, 5.0, serve)
        listener.load_certificate(certificates.certificate, certificates.private_key)
        context = ssl.create_default_context(cafile=str(certificates.ca))
        async with AsyncExitStack() as stack:
            await listener.start([SocketAddress("127.0.0.1", 0)], stack)
            _, writer = await asyncio.open_connection(*listener.bound[0], ssl=context, server_hostname="dns.test")
            writer.write(QUERY * 5)
            await writer.drain()
            await asyncio.wait_for(started.wait(), 5)
            connection = next(iter(listener._connections))
            reset(writer)
            await asyncio.wait([connection], timeout=5)

    uvloop.run(run())  # the daemon's loop and its TLS layer
    assert stats.connections == 1
    assert readers[0]() is None


def test_a_connection_counts_under_the_limits_until_its_socket_is_gone(tmp_path: Path) -> None:
    """A DoT or DoH connection closed for idleness is released from the connection limits, and the
    socket must go with it. The TLS transport waits 30 s for the client's close_notify after
    sending its own: a bug hunt's client that neither read nor closed had its 20 DoH connections
    released at the 3 s idle timeout and their sockets established 33 s, so it could hold its
    limit's worth again every 3 s. Now the close waits the idle time at most, then aborts."""
    certificates = issue(tmp_path, "dns.test")
    stats = TransportStats()
    gate = ConnectionGate(10, 10, stats)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        await serve_dns_stream(reader, writer, client, SlowAnswers(), stats, idle_seconds=0.5, max_in_flight=10,
                               max_query_bytes=512, drain_seconds=1)

    def silent_client(address: tuple[str, int]) -> float:
        """Handshakes, then neither sends nor closes: the seconds until the server's socket is
        gone. TLS by hand, so that nothing answers the server's close_notify."""
        context = ssl.create_default_context(cafile=str(certificates.ca))
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_hostname="dns.test")
        with socket.create_connection(address, timeout=40) as raw:
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    raw.sendall(outgoing.read())
                    incoming.write(raw.recv(65536))
            raw.sendall(outgoing.read())
            started = time.monotonic()
            while raw.recv(65536):  # (session tickets, then the close_notify, then the end)
                pass
            return time.monotonic() - started

    async def run() -> float:
        listener = TLSListener("dot", ["dot"], gate, stats, 5.0, serve)
        listener.load_certificate(certificates.certificate, certificates.private_key)
        async with AsyncExitStack() as stack:
            await listener.start([SocketAddress("127.0.0.1", 0)], stack)
            return await asyncio.wait_for(asyncio.to_thread(silent_client, listener.bound[0]), 40)

    closed = uvloop.run(run())
    assert closed < 5, f"the socket stayed {closed:.1f} s"  # idle 0.5 s, the close_notify's wait 0.5 s
    assert gate.total == 0


def test_a_reload_that_leaves_the_files_as_they_were_keeps_sessions_resumable(tmp_path: Path) -> None:
    """A new context at every SIGHUP (a policy feed's hourly update, say) made the ticket keys
    new too: every DoT and DoH client's next connection was a full handshake."""
    certificates = issue(tmp_path, "dns.test")
    stats = TransportStats()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str) -> None:
        writer.write(b"hello")
        await writer.drain()
        await reader.read()

    context = ssl.create_default_context(cafile=str(certificates.ca))

    def connect(address: tuple[str, int], session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession, bool]:
        with socket.create_connection(address, timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="dns.test", session=session) as client:
            assert client.recv(5) == b"hello"  # (TLS 1.3's tickets come before it)
            assert client.session is not None
            return client.session, client.session_reused

    async def run() -> list[bool]:
        loop = asyncio.get_running_loop()
        listener = TLSListener("dot", ["dot"], ConnectionGate(10, 10, stats), stats, 5.0, serve)
        listener.load_certificate(certificates.certificate, certificates.private_key)
        async with AsyncExitStack() as stack:
            await listener.start([SocketAddress("127.0.0.1", 0)], stack)
            address = listener.bound[0]
            session, _ = await loop.run_in_executor(None, connect, address)
            listener.load_certificate(certificates.certificate, certificates.private_key)  # a SIGHUP
            session, same_files = await loop.run_in_executor(None, connect, address, session)
            renewed = issue(tmp_path / "renewed", "dns.test")
            context.load_verify_locations(cafile=str(renewed.ca))
            certificates.certificate.write_bytes(renewed.certificate.read_bytes())
            certificates.private_key.write_bytes(renewed.private_key.read_bytes())
            listener.load_certificate(certificates.certificate, certificates.private_key)  # a renewal
            _, new_files = await loop.run_in_executor(None, connect, address, session)
            return [same_files, new_files]

    assert uvloop.run(run()) == [True, False]
