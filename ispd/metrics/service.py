"""The metrics listener: /metrics (Prometheus text format) and /healthz over plain HTTP/1.1.

A deliberately small HTTP server: GET or HEAD, one request per connection, the request head
bounded in size and time. It is scraped by Prometheus and probed by load balancers, nothing
more; the admin API, which needs a real framework, is elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ispd.configtypes import SocketAddress
from ispd.logs import get_logger
from ispd.service import Health, Service, ServiceContext, ServiceStartError, describe_os_error

if TYPE_CHECKING:
    from ispd.config import Config

log = get_logger("ispd.metrics")

MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 64
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class MetricsService(Service):
    name = "metrics"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.context = context
        self.listen = config.metrics.listen
        self._server: asyncio.Server | None = None
        self._connections = 0

    @property
    def bound(self) -> SocketAddress:
        """The address actually bound (differs from the config when it asked for port 0)."""
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return SocketAddress(host, port)

    def describe(self) -> str:
        return f"metrics on {self.bound}" if self._server else "metrics"

    async def _bind(self, address: SocketAddress) -> asyncio.Server:
        try:
            return await asyncio.start_server(
                self._handle, address.host, address.port, limit=MAX_REQUEST_HEAD, reuse_address=True
            )
        except OSError as exc:
            raise ServiceStartError(f"metrics: cannot listen on {address}: {describe_os_error(exc)}") from None

    async def start(self, stack: AsyncExitStack) -> None:
        self._server = await self._bind(self.listen)
        stack.push_async_callback(self._close)
        log.info("metrics.listening", address=str(self.bound))

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def stop(self) -> None:
        # Scrapes are short and idempotent: nothing to drain, stop accepting is enough.
        if self._server is not None:
            self._server.close()

    async def reload(self, old: Config, new: Config) -> None:
        if new.metrics.listen == old.metrics.listen:
            return
        # Bind the new address first: if that fails we keep serving on the old one.
        server = await self._bind(new.metrics.listen)
        previous, self._server, self.listen = self._server, server, new.metrics.listen
        if previous is not None:
            previous.close()
        log.info("metrics.listening", address=str(self.bound))

    def health(self) -> Health:
        return Health(self._server is not None and self._server.is_serving())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        try:
            if self._connections > MAX_CONNECTIONS:
                return
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_SECONDS)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            status, content_type, body, head_only = await self._respond(head)
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("ascii")
            )
            if not head_only:
                writer.write(body)
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_SECONDS)
        finally:
            self._connections -= 1
            writer.close()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes, bool]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain", b"bad request\n", False
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n", False
        head_only = method == "HEAD"
        if target == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.context.registry), head_only
        if target == "/healthz":
            ok, report = await self.context.health_report()
            body = json.dumps({"status": "ok" if ok else "failing", "services": report}, indent=1).encode()
            return (200 if ok else 503), "application/json", body + b"\n", head_only
        return 404, "text/plain", b"not found\n", head_only
