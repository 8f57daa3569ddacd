"""DNS over HTTPS on HTTP/2 (h2, over ``TLSListener``); the request logic HTTP/3 shares.

``DoHResponder`` turns a request into a response: HTTP errors and cache hits at once, other
queries through the engine's slow path. ``serve_h2`` runs one HTTP/2 connection with h2 (the
sans-IO HTTP/2 state machine): requests are answered as they complete, several at once and in
any order, within the stream limit announced in SETTINGS_MAX_CONCURRENT_STREAMS (a stream over
it is refused with REFUSED_STREAM, the others go on); response
bodies respect flow control (what does not fit the window waits for a WINDOW_UPDATE, or a larger
SETTINGS_INITIAL_WINDOW_SIZE). A query
the engine drops (a policy DROP, a rate-limited client) resets its stream with CANCEL, the
HTTP counterpart of a UDP drop (not REFUSED_STREAM: RFC 9113 §8.7 keeps that for a stream
closed before any processing, which a client may retry at once, and curl did, five times on
new connections for each dropped query). A protocol error ends the connection with GOAWAY; so does
``idle_timeout_seconds`` without a frame. HTTP/1.1 is not offered (ALPN h2 only): every DoH
client speaks HTTP/2, which RFC 8484 §5.2 names as the minimum; one that speaks HTTP/1.1 anyway
gets a 505 it can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ispd.dns.config import DoHConfig
from ispd.dns.doh import DoHError, DoHRequest, error_headers, query_of, response_headers
from ispd.dns.frontend import Answerer, TransportStats
from ispd.dns.streams import caught_up, close_within

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Response:
    headers: Headers
    body: bytes


class DoHResponder:
    def __init__(self, answerer: Answerer, stats: TransportStats, config: DoHConfig, alt_svc: bytes | None) -> None:
        self.answerer = answerer
        self.stats = stats
        self.config = config
        self.alt_svc = alt_svc

    def prepare(self, request: DoHRequest, client: str, started: float) -> Response | bytes:
        """A response now (an HTTP error or a cache hit), or the query for ``resolve``."""
        try:
            query = query_of(request, path=self.config.path, max_bytes=self.config.max_query_bytes)
        except DoHError as exc:
            self.stats.bad_requests += 1
            body = exc.reason.encode() + b"\n"
            # HEAD: the headers another method would get, without the content (RFC 9110 §9.3.2;
            # content in a response to HEAD is malformed in HTTP/2, RFC 9113 §8.1.1).
            return Response(error_headers(exc.status, body), b"" if request.method == b"HEAD" else body)
        reply = self.answerer.from_cache(query, client, started)
        if reply is None:
            return query
        return self._ok(reply)

    async def resolve(self, query: bytes, client: str, started: float) -> Response | None:
        reply = await self.answerer.resolve(query, client, started)
        return self._ok(reply) if reply is not None else None

    def _ok(self, reply: bytes) -> Response:
        headers = response_headers(reply)
        if self.alt_svc is not None:
            headers.append((b"alt-svc", self.alt_svc))
        return Response(headers, reply)


@dataclass(slots=True)
class RequestInProgress:
    """A request whose stream is still open (HTTP/2 and HTTP/3)."""

    method: bytes = b""
    path: bytes = b""
    content_type: bytes | None = None
    body: bytearray = field(default_factory=bytearray)
    rejected: bool = False  # answered with an error before the request ended

    def take_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b":method":
                self.method = value
            elif name == b":path":
                self.path = value
            elif name == b"content-type":
                self.content_type = value

    def request(self) -> DoHRequest:
        return DoHRequest(self.method, self.path, self.content_type, bytes(self.body))


MAX_HEADER_LIST_SIZE = 16384  # a GET's path holds the query in base64url: 5.5 KB at most


def header_list_size(max_query_bytes: int) -> int:
    """The header list size a connection announces and takes: MAX_HEADER_LIST_SIZE, or room
    for a GET of a ``max_query_bytes`` query in base64url (4/3 of it) with a few short headers
    when that is more (``max_query_bytes`` goes to 65535; HTTP/3 scales its limit alike)."""
    return max(MAX_HEADER_LIST_SIZE, (max_query_bytes * 4 + 2) // 3 + 4096)


_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4


class FrameLengths:
    """Follows the frame headers in the bytes a client sends, to refuse a frame longer than
    SETTINGS_MAX_FRAME_SIZE as soon as its header says so (RFC 9113 §4.2: FRAME_SIZE_ERROR). h2
    checks the length only once the whole frame is in its buffer: a client that announced 16 MB
    had the server buffer 16 MB, per connection, for as long as it trickled them."""

    __slots__ = ("completed", "header", "left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.header = b""  # of the next frame, while incomplete
        self.left = 0  # of the current frame's payload
        self.completed = 0  # frames whose last byte has come: the idle timer's measure of progress

    def admit(self, data: bytes) -> bool:
        """False when ``data`` has the header of a frame over the limit."""
        at, end = 0, len(data)
        while at < end:
            if self.left:
                step = min(self.left, end - at)
                self.left -= step
                at += step
                if not self.left:
                    self.completed += 1
                continue
            need = 9 - len(self.header)
            self.header += data[at:at + need]
            at += need
            if len(self.header) < 9:
                return True
            length = int.from_bytes(self.header[:3], "big")
            if length > self.limit:
                return False
            self.left, self.header = length, b""
            if not length:
                self.completed += 1
        return True
_HTTP1_REFUSAL = (b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n"
                  b"Connection: close\r\n\r\nDNS over HTTPS here is HTTP/2 (RFC 8484)\r\n")


async def serve_h2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str,
                   responder: DoHResponder, *, idle_seconds: float, max_streams: int) -> None:
    # Header validation costs a fifth of a request's time in h2: ours (outbound) are fixed and
    # known good, and of a request only :method, :path and content-type are read, each checked
    # by doh.query_of; nothing is passed on to anyone, so a malformed header cannot smuggle
    # anything anywhere.
    config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                       validate_outbound_headers=False, normalize_outbound_headers=False,
                                       validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=config)
    header_list = header_list_size(responder.config.max_query_bytes)
    conn.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
    })
    # h2 applies a MAX_HEADER_LIST_SIZE only when it comes as a change the client acknowledges,
    # not as an initial value: its decoder kept its default of 64 KB, and a request with 40 KB
    # of headers was answered where SETTINGS said 16 KB.
    conn.decoder.max_header_list_size = header_list
    streams: dict[int, RequestInProgress] = {}
    unsent: dict[int, memoryview] = {}  # response bodies waiting for flow-control window
    tasks: set[asyncio.Task[None]] = set()
    max_body = responder.config.max_query_bytes
    frames = FrameLengths(conn.max_inbound_frame_size)
    stalled = False

    def flush() -> None:
        data = conn.data_to_send()
        if data and not writer.is_closing():
            writer.write(data)

    def send_body(stream_id: int, body: memoryview) -> None:
        while True:
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if len(body) <= window:
                conn.send_data(stream_id, body.tobytes(), end_stream=True)
                unsent.pop(stream_id, None)
                return
            if window <= 0:
                unsent[stream_id] = body
                return
            conn.send_data(stream_id, body[:window].tobytes())
            body = body[window:]

    def respond(stream_id: int, response: Response | None) -> None:
        try:
            if response is None:
                conn.reset_stream(stream_id, ErrorCodes.CANCEL)
            else:
                conn.send_headers(stream_id, response.headers)
                send_body(stream_id, memoryview(response.body))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            unsent.pop(stream_id, None)  # the client reset or closed it meanwhile
        flush()

    async def resolve(stream_id: int, query: bytes, started: float) -> None:
        respond(stream_id, await responder.resolve(query, client, started))

    def request_done(stream_id: int) -> None:
        stream = streams.pop(stream_id, None)
        if stream is None or stream.rejected:
            return
        started = time.perf_counter()
        prepared = responder.prepare(stream.request(), client, started)
        if isinstance(prepared, Response):
            respond(stream_id, prepared)
            return
        if len(tasks) >= max_streams:
            # Open streams are capped by SETTINGS_MAX_CONCURRENT_STREAMS, but a stream the client
            # resets stops counting while its query is still being resolved: without this cap,
            # requests reset as soon as sent would start unbounded work (the HTTP/2 "rapid reset",
            # CVE-2023-44487). A client that waits for its answers never gets here.
            responder.stats.bad_requests += 1
            respond(stream_id, None)
            return
        task = asyncio.ensure_future(resolve(stream_id, prepared, started))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def reject(stream_id: int, status: int, reason: str) -> None:
        responder.stats.bad_requests += 1
        streams[stream_id].rejected = True
        body = reason.encode() + b"\n"
        respond(stream_id, Response(error_headers(status, body), body))

    def send_unsent(window_of: int) -> None:
        """Go on with the replies waiting for the window of stream ``window_of`` (0: any)."""
        for stream_id, body in list(unsent.items()):
            if window_of in (0, stream_id):
                try:
                    send_body(stream_id, body)
                except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                    unsent.pop(stream_id, None)

    def handle(event: h2.events.Event) -> bool:
        """Act on one event; False when the connection is over."""
        if isinstance(event, h2.events.RequestReceived):
            if len(streams) + len(tasks) + len(unsent) >= max_streams:
                # Over the limit before the client knew it (RFC 9113 §5.1.2: a stream error,
                # REFUSED_STREAM, which it may retry), or past it with streams it reset while
                # their queries are still resolved (below): this stream only, counted as those.
                responder.stats.bad_requests += 1
                with contextlib.suppress(h2.exceptions.StreamClosedError):  # reset by the client already
                    conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                return True
            streams[event.stream_id] = RequestInProgress()
            streams[event.stream_id].take_headers(event.headers or ())
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = streams.get(event.stream_id)
            if stream is not None and not stream.rejected:
                stream.body += event.data or b""
                if len(stream.body) > max_body:
                    reject(event.stream_id, 413, "query too large")
        elif isinstance(event, h2.events.StreamEnded):
            request_done(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            streams.pop(event.stream_id, None)
            unsent.pop(event.stream_id, None)
        elif isinstance(event, h2.events.WindowUpdated):
            send_unsent(event.stream_id)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            # A larger SETTINGS_INITIAL_WINDOW_SIZE opens every stream's window by the difference
            # with no WINDOW_UPDATE (RFC 9113 §6.9.2): a reply waiting for a window the client
            # opened that way waited for ever, its stream held until the client gave up.
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                send_unsent(0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            return False
        return True

    try:
        # The client speaks first: an HTTP/1.1 client (no ALPN, or http/1.1 forced) gets an answer
        # it can read, rather than HTTP/2 frames.
        # Idle means no whole frame (nor the whole preface) for ``idle_seconds``, not no byte: a
        # client that trickles a byte a little faster than that held its connection, and its
        # place under the limits, for as long as it liked (a frame of 16 KB, a byte every 29 s:
        # five days), where a DoT query has to come whole within the idle time.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + idle_seconds
        preface = b""
        while len(preface) < len(_H2_PREFACE):
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await reader.read(len(_H2_PREFACE) - len(preface))
            except TimeoutError:
                return
            if not chunk:
                return
            preface += chunk
            if not _H2_PREFACE.startswith(preface):  # (known at once, however short the request)
                responder.stats.bad_requests += 1
                writer.write(_HTTP1_REFUSAL)
                return
        conn.initiate_connection()
        # The stream limit as a SETTINGS of its own, after the first: h2 enforces a limit from
        # the moment it is set, by ending the connection with every request the client sent with
        # it, and a client sends its first requests before it has read our SETTINGS (curl,
        # browsers and Go assume 100 meanwhile, h2 and httpx no limit). Sent this way, h2 holds
        # the limit back until the client acknowledges it, and the check in ``handle`` refuses
        # the streams over it one by one until then.
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        conn.receive_data(preface)
        flush()
        deadline = loop.time() + idle_seconds
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(65536)
            except TimeoutError:
                if tasks:
                    # A request still being resolved: not idle. Closing here cancelled it, its
                    # answer lost with a GOAWAY that counted it as processed, where DoT waits for
                    # its pending answers; a resolution ends within the request timeout anyway.
                    deadline = loop.time() + idle_seconds
                    continue
                conn.close_connection()
                flush()
                return
            if not data:
                return
            completed = frames.completed
            if not frames.admit(data):
                responder.stats.bad_requests += 1
                conn.close_connection(ErrorCodes.FRAME_SIZE_ERROR)
                flush()
                return
            if frames.completed != completed:
                deadline = loop.time() + idle_seconds
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                responder.stats.bad_requests += 1
                flush()  # h2 has queued a GOAWAY
                return
            alive = all([handle(event) for event in events])
            flush()
            if not alive:
                return
            if not await caught_up(writer, idle_seconds):  # (requests or PINGs sent, replies unread)
                stalled = True
                return
    except ConnectionError:
        pass
    except ssl.SSLError:  # a TLS record that does not decrypt, or another TLS alert
        responder.stats.bad_requests += 1
    finally:
        for task in tasks:
            task.cancel()
        # h2 dispatches frames through a table of the connection's own bound methods: a cycle
        # that ispd's rare garbage collections would free late, with the header tables and
        # buffers of every connection since.
        conn._frame_dispatch_table.clear()
        if stalled:  # a close would wait for a flush that never comes
            writer.transport.abort()
        else:  # (replies the resolving tasks wrote while it waited to read may be unread too)
            await close_within(writer, idle_seconds)
