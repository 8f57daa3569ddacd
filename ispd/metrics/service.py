"""The metrics listener: /metrics (Prometheus text format) and /healthz over plain HTTP/1.1.

A deliberately small HTTP server: GET or HEAD, one request per connection, the request head
bounded in size and time. It is scraped by Prometheus and probed by load balancers, nothing
more; the admin API, which needs a real framework, is elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ispd.configtypes import SocketAddress
from ispd.listeners import Acceptor, client_key, listening_tcp_socket
from ispd.logs import get_logger
from ispd.service import Health, Service, ServiceContext, ServiceStartError, describe_os_error

if TYPE_CHECKING:
    from ispd.config import Config

log = get_logger("ispd.metrics")

MAX_REQUEST_HEAD = 16 * 1024
# A scrape sends its request at once; a client that dribbles is either broken or hostile.
REQUEST_TIMEOUT_SECONDS = 3.0
MAX_CONNECTIONS = 256
# So that one host holding connections open cannot keep Prometheus or a load balancer out.
MAX_CONNECTIONS_PER_PEER = 8
ACCEPT_RETRY_SECONDS = 1.0  # after a failed accept (asyncio's servers wait as long)
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """The request line and headers, up to the blank line; LF alone is accepted as a line end
    (RFC 9112 §2.2), the size bounded by the reader's limit and MAX_REQUEST_HEAD."""
    head = b""
    while True:
        line = await reader.readuntil(b"\n")
        if line in (b"\r\n", b"\n"):
            return head
        head += line
        if len(head) > MAX_REQUEST_HEAD:
            raise ValueError("request head too large")


class _MetricsCollector(Collector):
    def __init__(self, service: MetricsService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("ispd_metrics_accept_failures",
                                  "Failed accepts (out of file descriptors) on the metrics listener; each rests it a "
                                  "second.",
                                  value=self.service.accept_failures)


class MetricsService(Service):
    name = "metrics"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.context = context
        self.listen = config.metrics.listen
        self._listener: socket.socket | None = None
        self._acceptor: Acceptor | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._per_peer: dict[str, int] = {}
        self.accept_failures = 0

    @property
    def bound(self) -> SocketAddress:
        """The address actually bound (differs from the config when it asked for port 0)."""
        assert self._listener is not None
        host, port = self._listener.getsockname()[:2]
        return SocketAddress(host, port)

    def describe(self) -> str:
        return f"metrics on {self.bound}" if self._listener else "metrics"

    def _bind(self, address: SocketAddress) -> tuple[socket.socket, Acceptor]:
        """Accepted by hand (``Acceptor``) rather than through start_server: out of descriptors,
        the loop's server (libuv) accepted each waiting connection and closed it at once, unsaid
        and uncounted, so Prometheus and load balancers saw empty replies and the operator nothing.
        Now the listener rests a second, says metrics.accept_failed (once a minute), counts it
        (ispd_metrics_accept_failures_total), and the connections wait in the backlog."""
        try:
            sock = listening_tcp_socket(address.host, address.port, 128)
        except OSError as exc:
            raise ServiceStartError(f"metrics: cannot listen on {address}: {describe_os_error(exc)}") from None
        acceptor = Acceptor(self._accepted, self, log, "metrics.accept_failed", "metrics", ACCEPT_RETRY_SECONDS)
        acceptor.listen(sock)
        return sock, acceptor

    def _accepted(self, conn: socket.socket, _peer: object) -> None:
        task = asyncio.create_task(self._open(conn))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _open(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_REQUEST_HEAD)
        except OSError:
            conn.close()
            return
        await self._handle(reader, writer)

    async def start(self, stack: AsyncExitStack) -> None:
        self._listener, self._acceptor = self._bind(self.listen)
        stack.push_async_callback(self._close)
        collector = _MetricsCollector(self)
        self.context.registry.register(collector)
        stack.callback(self.context.registry.unregister, collector)
        log.info("metrics.listening", address=str(self.bound))

    async def _close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def stop(self) -> None:
        # Scrapes are short and idempotent: nothing to drain, stop accepting is enough.
        if self._acceptor is not None:
            self._acceptor.close()

    async def reload(self, old: Config, new: Config) -> None:
        if new.metrics.listen == old.metrics.listen:
            return
        # Bind the new address first: if that fails we keep serving on the old one.
        listener, acceptor = self._bind(new.metrics.listen)
        previous, self._acceptor = self._acceptor, acceptor
        self._listener, self.listen = listener, new.metrics.listen
        if previous is not None:
            previous.close()
        log.info("metrics.listening", address=str(self.bound))

    def health(self) -> Health:
        return Health(self._listener is not None and self._listener.fileno() != -1)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        peername = writer.get_extra_info("peername")
        # (an IPv6 peer by its /64, as every per-client limit: ispd.listeners.client_key)
        peer = client_key(str(peername[0])) if peername else "?"
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        try:
            if len(self._handlers) > MAX_CONNECTIONS or self._per_peer[peer] > MAX_CONNECTIONS_PER_PEER:
                await self._send(writer, 503, "text/plain", b"too many connections\n")
                return
            try:
                head = await asyncio.wait_for(_read_head(reader), REQUEST_TIMEOUT_SECONDS)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError,
                    ConnectionError):
                return
            status, content_type, body, head_only = await self._respond(head)
            await self._send(writer, status, content_type, body, head_only=head_only)
        except asyncio.CancelledError:
            pass  # the listener is closing
        finally:
            self._handlers.discard(task)
            self._per_peer[peer] -= 1
            if not self._per_peer[peer]:
                del self._per_peer[peer]
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes,
                    head_only: bool = False) -> None:
        extra = "Allow: GET, HEAD\r\n" if status == 405 else ""
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
            + (b"" if head_only else body)
        )
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_SECONDS)

    async def _respond(self, head: bytes) -> tuple[int, str, bytes, bool]:
        request_line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n", False
        head_only = method == "HEAD"
        if target == "/metrics":
            body = generate_latest(self.context.registry)
            # Asked together: each source (a worker process's metrics) may wait for its process up
            # to workers.QUICK_REQUEST_SECONDS, and one after the other two stuck workers (DNS's
            # and RADIUS's) held a scrape 6 s, past a 5 s scrape_timeout (up == 0: IspdDown).
            body += b"".join(await asyncio.gather(*(source() for source in list(self.context.metrics_sources))))
            return 200, CONTENT_TYPE_LATEST, body, head_only
        if target == "/healthz":
            ok, report = await self.context.health_report()
            body = json.dumps({"status": "ok" if ok else "failing", "services": report}, indent=1).encode()
            return (200 if ok else 503), "application/json", body + b"\n", head_only
        return 404, "text/plain", b"not found\n", head_only
