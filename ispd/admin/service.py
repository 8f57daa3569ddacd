"""The admin API's transport: uvicorn serving the FastAPI app on sockets ispd opens itself.

ispd binds the sockets: the Unix one with mode 0600 before it listens (uvicorn's own would be
0666), TCP ones for which the app demands the bearer token. uvicorn runs inside the daemon's
event loop, without the signal handlers it would install (the supervisor owns SIGTERM/SIGHUP).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, ClassVar

import h11
import uvicorn
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from uvicorn.protocols.http.h11_impl import H11Protocol

from ispd.admin.app import build_app
from ispd.config import Config
from ispd.control import ControlSocketError, open_private_socket, remove_own_socket
from ispd.listeners import ConnectionGate, listening_tcp_socket
from ispd.logs import LogThrottle, drop_messages, get_logger, throttle_messages
from ispd.service import Health, Service, ServiceContext, ServiceStartError, describe_os_error

log = get_logger("ispd.admin")

# uvicorn warns of every request a client gets wrong, before any token is checked: a request
# that is not HTTP ("Invalid HTTP request received."), answered 400, and an Upgrade header
# (curl --http2 sends "Upgrade: h2c"), with advice to install a WebSocket library that ispd has
# no use for. One line each for whoever reaches the listener, 1,000 malformed requests made
# 1,000 warnings; the client is answered, and its mistake is not the operator's business.
drop_messages("uvicorn.error", (
    "Invalid HTTP request received.", "Unsupported upgrade request.",
    "No supported WebSocket library detected. Please use \"pip install 'uvicorn[standard]'\", "
    "or install 'websockets' or 'wsproto' manually."))
# And of every request past max_connections (answered 503): the operator's business, once a
# minute; with max_connections held by idle connections, 500 requests wrote 500 warnings.
throttle_messages("uvicorn.error", ("Exceeded concurrency limit.",), 60.0)

# A client has this long to send a request, its head and its body (64 KiB at most), from its
# connection or from the end of the previous response; then the connection is closed (nginx:
# client_header_timeout and client_body_timeout, but for the whole of each, not between reads).
REQUEST_HEAD_SECONDS = 10.0
# The total on the TCP listeners is uvicorn's (limit_concurrency, max_connections); the gate
# counts each client's connections only.
_UNBOUNDED = 2**62
# What a connection over its client's limit is told before it is closed, unread: a request sent
# at once (curl, a billing system's HTTP library) is answered by it, as uvicorn answers one past
# max_connections, and the place it would hold goes to no one.
_TOO_MANY = json.dumps({"detail": "too many connections from your address: try again later"}).encode() + b"\n"
_TOO_MANY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                      b"retry-after: 1\r\nconnection: close\r\ncontent-length: " + str(len(_TOO_MANY)).encode()
                      + b"\r\n\r\n" + _TOO_MANY)


@dataclass
class AdminConnectionStats:
    """What the TCP listeners' ``ConnectionGate`` counts (ispd_admin_*connections_total)."""

    connections: int = 0
    refused_connections: int = 0


class _ClientLimit:
    """Each client's connections on the TCP listeners (an IPv6 one by its /64), at most
    ``[admin] max_connections_per_client``: 64 idle connections from one address held every
    place of max_connections, and each other client was answered 503, without a token, for as
    long as that address opened them again."""

    def __init__(self, per_client: int, stats: AdminConnectionStats) -> None:
        self.gate = ConnectionGate(_UNBOUNDED, per_client, stats)
        self.stats = stats
        self._logged = LogThrottle(60.0)

    def admit(self, client: str) -> bool:
        if self.gate.admit(client):
            return True
        if self._logged.due("per_client", time.monotonic()):
            log.warning("admin.connection.refused", client=client,
                        max_connections_per_client=self.gate.max_per_client,
                        refused_so_far=self.stats.refused_connections)
        return False


class _AdminCollector(Collector):
    def __init__(self, stats: AdminConnectionStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("ispd_admin_connections", "Connections accepted on the admin API's TCP listeners.",
                                  value=self.stats.connections)
        yield CounterMetricFamily("ispd_admin_refused_connections",
                                  "Connections to the admin API's TCP listeners answered 503 at once: their client "
                                  "held [admin] max_connections_per_client already.",
                                  value=self.stats.refused_connections)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the supervisor handles signals
        yield


class _H11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 with a deadline for each request, head and body. uvicorn times only the
    wait between a response and the next request: a connection that never completes a request
    (one that sends nothing, or a byte now and then) stayed open for good, and
    ``limit_concurrency`` counts connections, so ``max_connections`` of them had every request
    answered 503."""

    _head_deadline: asyncio.TimerHandle | None = None
    # On the TCP listeners (a subclass of this per server: AdminService._serve), each client's
    # connections are counted, and one over its limit is answered 503 and closed before uvicorn
    # sees it, so that it holds none of max_connections' places.
    client_limit: ClassVar[_ClientLimit | None] = None
    _client: str | None = None  # the client it is counted for, until it ends
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limit = self.client_limit
        if limit is not None:
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if peer else "?"
            if not limit.admit(client):
                self._refused = True
                transport.write(_TOO_MANY_RESPONSE)
                transport.close()
                return
            self._client = client
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        # Once the whole request has come (or the connection is over); not at its head: a body
        # announced and trickled a byte at a time (answered 401 unread, without the token) held
        # the connection for good, since each byte put off uvicorn's keep-alive timeout too.
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        self._await_head()  # before uvicorn goes on to a pipelined request, whose head ends it
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._client is not None and self.client_limit is not None:
            self.client_limit.gate.release(self._client)
            self._client = None
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(REQUEST_HEAD_SECONDS, self._head_too_late)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_late(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class AdminService(Service):
    name = "admin"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config = config
        self.context = context
        self._servers: list[tuple[_Server, asyncio.Task[None]]] = []
        self.listening: list[str] = []
        self.connection_stats = AdminConnectionStats()
        self._client_limit: _ClientLimit | None = None

    async def start(self, stack: AsyncExitStack) -> None:
        admin = self.config.admin
        path = admin.socket_path(self.config.daemon.control_socket)
        if path is not None:
            try:
                sock, identity = await open_private_socket(path, "the admin API socket", "[admin] socket")
            except ControlSocketError as exc:
                raise ServiceStartError(f"admin: {exc}") from None
            stack.callback(remove_own_socket, path, identity)
            await self._serve(stack, [sock], token=None, client_limit=None)
            self.listening.append(str(path))
        if admin.listen:
            sockets: list[socket.socket] = []
            for address in admin.listen:
                try:
                    sock = listening_tcp_socket(address.host, address.port, 128)
                except OSError as exc:
                    for bound in sockets:
                        bound.close()
                    raise ServiceStartError(f"admin: cannot listen on {address}: {describe_os_error(exc)}") from None
                sockets.append(sock)
                self.listening.append(f"http://{address}")
            self._client_limit = _ClientLimit(admin.per_client(), self.connection_stats)
            await self._serve(stack, sockets, token=self._token, client_limit=self._client_limit)
            collector = _AdminCollector(self.connection_stats)
            self.context.registry.register(collector)
            stack.callback(self.context.registry.unregister, collector)
        log.info("admin.started", listen=self.listening)

    def _token(self) -> str | None:
        """The bearer token TCP clients must send, as the config has it now."""
        token = self.config.admin.token
        return token.get_secret_value() if token is not None else None

    async def _serve(self, stack: AsyncExitStack, sockets: list[socket.socket],
                     token: Callable[[], str | None] | None, client_limit: _ClientLimit | None) -> None:
        """Serve the API on ``sockets``: TCP ones with ``token`` and ``client_limit``, the Unix
        socket with neither (its file mode lets in root and the daemon's user only, who could
        stop the daemon anyway, and all its peers would be one client)."""
        protocol = type("_ClientLimitedH11Protocol", (_H11Protocol,), {"client_limit": client_limit})
        app = build_app(self.context.store, lambda: self.config, self.context.control, token=token,
                        dns_view=self._dns_view)
        # proxy_headers off: uvicorn would take the client's address from X-Forwarded-For when the
        # peer is 127.0.0.1, and the audit log's actor (api:<peer>) from whoever wrote the header.
        server = _Server(uvicorn.Config(app, http=protocol, lifespan="off", log_config=None, access_log=False,
                                        proxy_headers=False,
                                        timeout_keep_alive=5, timeout_graceful_shutdown=5,
                                        # (+1: uvicorn counts the connection asking among those
                                        # that must be fewer than its limit)
                                        limit_concurrency=self.config.admin.max_connections + 1,
                                        h11_max_incomplete_event_size=64 * 1024))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=sockets), name="admin-http")
        self._servers.append((server, task))
        stack.push_async_callback(self._stop, server, task, sockets)
        for _ in range(100):  # until it accepts (or failed)
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if task.done() and task.exception() is not None:
            raise ServiceStartError(f"admin: the HTTP server did not start: {task.exception()!r}")

    @staticmethod
    async def _stop(server: _Server, task: asyncio.Task[None], sockets: list[socket.socket]) -> None:
        server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 10)
        for sock in sockets:
            sock.close()

    async def _dns_view(self, subscriber_id: int) -> dict[str, Any] | None:
        command = self.context.control.get("dns.walled.show")
        if command is None or command.plain is None:
            return None
        result: dict[str, Any] = await command.plain({"subscriber_id": subscriber_id})
        return result

    async def stop(self) -> None:
        for server, _ in self._servers:
            server.should_exit = True

    async def reload(self, old: Config, new: Config) -> None:
        """A new token applies at once (rotating a leaked one must not wait for a restart), and
        so does max_connections_per_client (to new connections); listeners change at a restart.
        The routes read the store."""
        before, after = old.admin, new.admin
        if (before.listen, before.max_connections) != (after.listen, after.max_connections) or \
                before.socket_path(old.daemon.control_socket) != after.socket_path(new.daemon.control_socket):
            raise ServiceStartError("admin: a change of listen, socket or max_connections needs a restart")
        self.config = new
        if self._client_limit is not None:
            self._client_limit.gate.max_per_client = after.per_client()

    def health(self) -> Health:
        return Health(ok=all(not task.done() for _, task in self._servers), detail=", ".join(self.listening))



