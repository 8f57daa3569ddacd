"""dnstap output: what the DNS transports call (``DnstapSink``) and the connection that carries
it to the collector (``FrameStreamClient``).

The sink is asked on every query, so it is cheap when off: one attribute read. On, a message
costs one frame encoding and a list append; the frames go out in batches, one write per loop
iteration at most.

The client's states: connecting → handshake (READY sent, waiting for ACCEPT naming dnstap) →
started (START sent, data frames flow) → stopping (STOP sent at shutdown, waiting for FINISH).
Any failure, or the collector closing, goes back to connecting after a delay that doubles
from 1 s up to 30 s (and starts over after a connection that lasted 30 s). DNS never waits for
the collector: frames wait in a buffer of ``buffer_bytes`` while the collector is away or slow,
and past it they are dropped and counted (``ispd_dns_dnstap_dropped_total``), as Unbound drops
when its dnstap queue is full. A collector that comes back gets the frames the buffer kept;
those of the write a connection broke in (at most ``WRITE_BYTES``) are lost with it and counted
as dropped, and ``sent`` counts the writes that went through (the sockets' own buffers, lost
with a collector that dies, cannot be told apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

from ispd.dns.dnstap import (
    CONTENT_TYPE,
    MAX_CONTROL_FRAME,
    ControlType,
    Encoder,
    FrameStreamError,
    HttpProtocol,
    MessageType,
    SocketProtocol,
    control_frame,
    parse_control,
)
from ispd.logs import get_logger

log = get_logger("ispd.dns")

HANDSHAKE_SECONDS = 5.0
RECONNECT_MIN_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 30.0
FINISH_SECONDS = 2.0  # at stop: how long the collector has to take the rest and say FINISH
# Frames go to the connection in writes of at most this much: what a connection that breaks
# takes with it is one write (and the sockets' buffers), not everything the buffer held.
WRITE_BYTES = 64 * 1024  # (asyncio's high-water mark: drain waits past it anyway)


async def read_control(reader: asyncio.StreamReader) -> tuple[ControlType, list[bytes]]:
    escape = await reader.readexactly(4)
    if escape != b"\0\0\0\0":
        raise FrameStreamError("a data frame where a control frame was due")
    length = int.from_bytes(await reader.readexactly(4), "big")
    if length > MAX_CONTROL_FRAME:
        raise FrameStreamError(f"control frame of {length} bytes")
    return parse_control(await reader.readexactly(length))


class FrameStreamClient:
    """A Frame Streams writer to one collector: a Unix socket path or a (host, port) over TCP."""

    def __init__(self, target: Path | tuple[str, int], *, buffer_bytes: int) -> None:
        self.target = target
        self.buffer_bytes = buffer_bytes
        self.sent = 0  # frames handed to a started connection
        self.dropped = 0  # frames the buffer had no room for, or still held at stop
        self.connected = False
        self._frames: list[bytes] = []
        self._held = 0  # bytes in _frames
        self._ready = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def __str__(self) -> str:
        return str(self.target) if isinstance(self.target, Path) else f"{self.target[0]}:{self.target[1]}"

    def push(self, frame: bytes) -> None:
        if self._held + len(frame) > self.buffer_bytes:
            self.dropped += 1
            return
        self._frames.append(frame)
        self._held += len(frame)
        if self.connected and not self._ready.is_set():
            self._ready.set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Send what is held and STOP, and wait (briefly) for FINISH; frames left are dropped."""
        self._closing = True
        self._ready.set()
        task = self._task
        if task is not None:
            if not self.connected:
                task.cancel()
            await asyncio.wait((task,), timeout=FINISH_SECONDS * 2)
            if not task.done():  # a collector that takes nothing more (its buffer full)
                task.cancel()
                await asyncio.wait((task,))
        self.dropped += len(self._frames)
        self._frames.clear()
        self._held = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, Path):
            return await asyncio.open_unix_connection(self.target)
        return await asyncio.open_connection(*self.target)

    async def _run(self) -> None:
        delay = RECONNECT_MIN_SECONDS
        failing = False
        while not self._closing:
            writer: asyncio.StreamWriter | None = None
            try:
                async with asyncio.timeout(HANDSHAKE_SECONDS):
                    reader, writer = await self._connect()
                    writer.write(control_frame(ControlType.READY))
                    kind, content_types = await read_control(reader)
                    if kind != ControlType.ACCEPT or CONTENT_TYPE not in content_types:
                        raise FrameStreamError(f"the collector answered {kind.name} without accepting "
                                               f"{CONTENT_TYPE.decode()}")
                    writer.write(control_frame(ControlType.START))
                    await writer.drain()
            except (OSError, TimeoutError, FrameStreamError, asyncio.IncompleteReadError) as exc:
                if writer is not None:
                    writer.transport.abort()
                if not failing:  # one line per outage, not one per attempt
                    log.warning("dns.dnstap.unreachable", collector=str(self), error=_describe(exc),
                                retry_seconds=delay)
                    failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            failing = False
            self.connected = True
            connected_at = time.monotonic()
            log.info("dns.dnstap.connected", collector=str(self), held_frames=len(self._frames))
            try:
                ended = await self._pump(reader, writer)
            except (OSError, FrameStreamError, asyncio.IncompleteReadError) as exc:
                ended = _describe(exc)
            except Exception as exc:  # a bug: logged, and dnstap goes on with a new connection
                log.exception("dns.dnstap.failed", collector=str(self))
                ended = f"internal error: {exc!r}"
            finally:
                self.connected = False
                if writer.transport.get_write_buffer_size():
                    writer.transport.abort()  # a close would wait for a collector that is not reading
                else:
                    writer.close()
            if self._closing:
                return
            # Not at once: a collector that takes the handshake and hangs up (or talks out of
            # turn) would make a loop of connections and log lines. Only one that stayed a
            # while has the delay start over.
            if time.monotonic() - connected_at >= RECONNECT_MAX_SECONDS:
                delay = RECONNECT_MIN_SECONDS
            log.warning("dns.dnstap.disconnected", collector=str(self), reason=ended, retry_seconds=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """Write the frames as they come until the connection ends (the reason) or ispd stops."""
        # The collector says nothing until FINISH: anything it sends before, or its end, ends it.
        heard = asyncio.ensure_future(reader.read(MAX_CONTROL_FRAME + 8))
        try:
            while True:
                if not self._frames and not self._closing:
                    self._ready.clear()
                    woken = asyncio.ensure_future(self._ready.wait())
                    await asyncio.wait((heard, woken), return_when=asyncio.FIRST_COMPLETED)
                    woken.cancel()
                    if heard.done():
                        return "the collector closed the connection" if not heard.result() else \
                            "the collector sent data before STOP"
                if self._frames:
                    frames = self._take()
                    try:
                        writer.write(b"".join(frames))
                        # While the collector is slow, the frames gather in the buffer (bounded).
                        await writer.drain()
                    except BaseException:  # the connection broke (or ispd stops) with them
                        self.dropped += len(frames)
                        raise
                    self.sent += len(frames)
                if self._closing and not self._frames:
                    writer.write(control_frame(ControlType.STOP, None))
                    await writer.drain()
                    heard.cancel()  # (its read must end before the next one starts)
                    with contextlib.suppress(asyncio.CancelledError):
                        await heard
                    with contextlib.suppress(TimeoutError, FrameStreamError, asyncio.IncompleteReadError,
                                             OSError):
                        async with asyncio.timeout(FINISH_SECONDS):
                            await read_control(reader)  # FINISH
                    return "stopped"
        finally:
            heard.cancel()

    def _take(self) -> list[bytes]:
        """The next write's frames, in order: all those held, or WRITE_BYTES of them."""
        frames = self._frames
        if self._held <= WRITE_BYTES:
            self._frames, self._held = [], 0
            return frames
        count = size = 0
        for frame in frames:
            if count and size + len(frame) > WRITE_BYTES:
                break
            size += len(frame)
            count += 1
        taken = frames[:count]
        del frames[:count]
        self._held -= size
        return taken


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer to the handshake in time"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the collector closed the connection"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class DnstapSink:
    """What the transports call. ``clients`` and ``resolvers`` say whether any client or
    upstream message is wanted; the transports ask them before anything else."""

    def __init__(self) -> None:
        self.clients = False
        self.resolvers = False
        self.client_queries = self.client_responses = False
        self.resolver_queries = self.resolver_responses = False
        self.encoder = Encoder()
        self.writer: FrameStreamClient | None = None
        self._retired_sent = self._retired_dropped = 0  # of writers replaced by a reload
        self._retiring: list[FrameStreamClient] = []  # replaced, still sending what they held and STOP

    @property
    def sent(self) -> int:  # (a counter: the writers being retired still count)
        return self._retired_sent + sum(writer.sent for writer in (self.writer, *self._retiring) if writer is not None)

    @property
    def dropped(self) -> int:
        return self._retired_dropped + sum(writer.dropped for writer in (self.writer, *self._retiring)
                                           if writer is not None)

    def use(self, writer: FrameStreamClient | None, encoder: Encoder, *, client_queries: bool,
            client_responses: bool, resolver_queries: bool, resolver_responses: bool) -> None:
        self.writer = writer
        self.encoder = encoder
        on = writer is not None
        self.client_queries, self.client_responses = on and client_queries, on and client_responses
        self.resolver_queries, self.resolver_responses = on and resolver_queries, on and resolver_responses
        self.clients = self.client_queries or self.client_responses
        self.resolvers = self.resolver_queries or self.resolver_responses

    async def retire(self) -> None:
        """Stop writing: the connection sends what it holds and ends."""
        writer = self.detach()
        if writer is not None:
            await self.finish(writer)

    def detach(self) -> FrameStreamClient | None:
        """Stop writing to the current connection at once, and give it for ``finish``: a reload
        puts the next one in use first, so that nothing goes untapped while this one ends."""
        writer = self.writer
        self.use(None, self.encoder, client_queries=False, client_responses=False, resolver_queries=False,
                 resolver_responses=False)
        if writer is not None:
            self._retiring.append(writer)
        return writer

    async def finish(self, writer: FrameStreamClient) -> None:
        """A detached connection sends what it holds and ends (STOP, FINISH)."""
        try:
            await writer.close()
        finally:
            self._retiring.remove(writer)
            self._retired_sent += writer.sent
            self._retired_dropped += writer.dropped

    def client_query(self, protocol: SocketProtocol, client: str, port: int, query: bytes, at: float,
                     http: HttpProtocol | None = None) -> None:
        """A query as it arrives (its reply comes later: ``client_response``)."""
        if self.client_queries and self.writer is not None:
            v6 = ":" in client
            encoder = self.encoder
            self.writer.push(encoder.client_query_frame(
                protocol, v6, encoder.client_common(_packed(client, v6), port, at), query, http))

    def client_response(self, protocol: SocketProtocol, client: str, port: int, query_time: float, reply: bytes,
                        http: HttpProtocol | None = None) -> None:
        if self.client_responses and self.writer is not None:
            v6 = ":" in client
            encoder = self.encoder
            self.writer.push(encoder.client_response_frame(
                protocol, v6, encoder.client_common(_packed(client, v6), port, query_time), time.time(), reply, http))

    def client_exchange(self, protocol: SocketProtocol, client: str, port: int, query: bytes, at: float,
                        reply: bytes | None, http: HttpProtocol | None = None) -> None:
        """A query answered at once (a cache hit), or dropped (``reply`` None): both messages,
        encoded sharing what they can."""
        writer = self.writer
        if writer is None:
            return
        v6 = ":" in client
        encoder = self.encoder
        common = encoder.client_common(_packed(client, v6), port, at)
        if self.client_queries:
            writer.push(encoder.client_query_frame(protocol, v6, common, query, http))
        if reply is not None and self.client_responses:
            writer.push(encoder.client_response_frame(protocol, v6, common, time.time(), reply, http))

    def upstream_query(self, tcp: bool, local: tuple[str, int], server: tuple[str, int], query: bytes,
                       at: float, zone: bytes) -> None:
        if self.resolver_queries and self.writer is not None:
            v6 = ":" in server[0]
            forwarded = len(query) > 2 and query[2] & 0x01  # RD: a forwarder is asked to recurse
            self.writer.push(self.encoder.frame(
                MessageType.FORWARDER_QUERY if forwarded else MessageType.RESOLVER_QUERY,
                SocketProtocol.TCP if tcp else SocketProtocol.UDP, v6=v6,
                query_address=_packed(local[0], v6), query_port=local[1],
                response_address=_packed(server[0], v6), response_port=server[1],
                query_time=at, query_message=query, query_zone=zone))

    def upstream_response(self, tcp: bool, local: tuple[str, int], server: tuple[str, int], query: bytes,
                          query_time: float, reply: bytes, zone: bytes) -> None:
        if self.resolver_responses and self.writer is not None:
            v6 = ":" in server[0]
            forwarded = len(query) > 2 and query[2] & 0x01
            self.writer.push(self.encoder.frame(
                MessageType.FORWARDER_RESPONSE if forwarded else MessageType.RESOLVER_RESPONSE,
                SocketProtocol.TCP if tcp else SocketProtocol.UDP, v6=v6,
                query_address=_packed(local[0], v6), query_port=local[1],
                response_address=_packed(server[0], v6), response_port=server[1],
                query_time=query_time, query_zone=zone, response_time=time.time(), response_message=reply))


def _packed(address: str, v6: bool) -> bytes:
    try:
        return socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, address.partition("%")[0])
    except OSError:
        return b""
