"""DNS over TLS (RFC 7858) and the TLS listeners DoH shares with it.

A ``TLSListener`` accepts TCP, checks the connection limits before any TLS work, then runs the
handshake (bounded by ``handshake_timeout_seconds``; a failure is counted, not logged per client)
with the context current at that moment: a SIGHUP that loads a new certificate swaps the context
for new connections and leaves established ones alone. What runs on the connection after the
handshake is the listener's ``serve`` coroutine: length-prefixed DNS for DoT
(``ispd/dns/streams.py``), HTTP/2 for DoH (``ispd/dns/https.py``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from ispd.configtypes import SocketAddress
from ispd.dns.frontend import TransportStats
from ispd.listeners import (
    Acceptor,
    ConnectionGate,
    forget_connection_error,
    listening_tcp_socket,
    server_tls_context,
)
from ispd.logs import get_logger
from ispd.service import ServiceStartError, describe_os_error

log = get_logger("ispd.dns")

ACCEPT_RETRY_SECONDS = 1.0
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter, str], Awaitable[None]]


class TLSListener:
    def __init__(self, name: str, alpn: list[str], gate: ConnectionGate, stats: TransportStats,
                 handshake_timeout: float, serve: Serve) -> None:
        self.name = name  # "dot" or "doh", for messages
        self.alpn = alpn
        self.gate = gate
        self.stats = stats
        self.handshake_timeout = handshake_timeout
        self.serve = serve
        self.context: ssl.SSLContext | None = None
        # The certificate's and key's bytes that ``context`` was made from, and the last context
        # prepared with its own: a reload that leaves the files as they were keeps the context.
        self._context_files: tuple[bytes, bytes] | None = None
        self._prepared: tuple[ssl.SSLContext, tuple[bytes, bytes] | None] | None = None
        self.bound: list[tuple[str, int]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._acceptor = Acceptor(self._accepted, stats, log, "dns.accept_failed", name, ACCEPT_RETRY_SECONDS)

    def load_certificate(self, certificate: Path, private_key: Path) -> None:
        """Build the context for new connections; raises ``CertificateError`` and keeps the old
        one when the files are unusable."""
        self.use_certificate(self.prepare_certificate(certificate, private_key))

    def prepare_certificate(self, certificate: Path, private_key: Path) -> ssl.SSLContext:
        """What ``use_certificate`` takes; ``CertificateError`` when the files are unusable. The
        context in use when the files have not changed: its session ticket keys are its own, and
        a new one at every SIGHUP (a policy feed's hourly update, say) had every client's next
        connection make a full handshake instead of resuming."""
        try:
            files: tuple[bytes, bytes] | None = (certificate.read_bytes(), private_key.read_bytes())
        except OSError:
            files = None  # (server_tls_context says why)
        if files is not None and files == self._context_files and self.context is not None:
            return self.context
        context = server_tls_context(certificate, private_key, self.alpn)
        self._prepared = (context, files)
        return context

    def use_certificate(self, prepared: ssl.SSLContext) -> None:
        if self._prepared is not None and self._prepared[0] is prepared:
            self._context_files = self._prepared[1]
            self._prepared = None
        self.context = prepared

    async def start(self, addresses: list[SocketAddress], stack: AsyncExitStack, *, reuse_port: bool = False,
                    first: bool = True) -> None:
        stack.callback(self._acceptor.close)
        for address in addresses:
            try:
                listening = listening_tcp_socket(address.host, address.port, 1024, reuse_port=reuse_port,
                                                 first=first)
            except OSError as exc:
                raise ServiceStartError(f"dns: {self.name}: cannot listen on {address}: "
                                        f"{describe_os_error(exc)}") from None
            self._acceptor.listen(listening)
            self.bound.append((address.host, listening.getsockname()[1]))
        stack.push_async_callback(self._close_connections)

    def _accepted(self, connection: socket.socket, peer: Any) -> None:
        # Accepted by hand rather than through create_server(ssl=...): the limits apply before any
        # TLS work, and a failed handshake is visible (and countable) to us.
        client = peer[0]
        if not self.gate.admit(client):
            connection.close()
            return
        connection.setblocking(False)
        task = asyncio.ensure_future(self._connection(connection, client))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _connection(self, connection: socket.socket, client: str) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=65536 + 2)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, connection, ssl=self.context, ssl_handshake_timeout=self.handshake_timeout)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
                self.stats.handshake_failures += 1
                connection.close()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            try:
                await self.serve(reader, writer, client)
            except OSError:  # ConnectionError, ssl.SSLError: whatever the peer did, it ends here
                writer.close()
        finally:
            self.gate.release(client)
            forget_connection_error(reader)

    async def _close_connections(self) -> None:
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2)

