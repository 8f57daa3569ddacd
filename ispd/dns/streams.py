"""DNS over a byte stream (RFC 7766 over TCP, RFC 7858 over TLS): two-byte length prefixes.

Queries are pipelined: a cache hit is answered in line; every other query becomes a task and its
reply is written whenever it is ready, so replies may leave out of order (RFC 7766 §6.2.1.1).
At most ``max_in_flight`` queries of one connection are resolved at once (and the process's
``ResolutionBudget`` bounds them with every other transport's: one past it waits, holding its
place); reading waits while the cap is reached, and while the client does not read its replies
(write buffer over 256 KiB).
At the connection's end (the client's EOF, a bad length) its queries in flight get
``drain_seconds`` to be answered; those still waiting for the budget or resolving then are
cancelled, and the connection closes without their replies (at once, with the connection, when
it is cut off for replies its client does not read).
A connection idle (no query in flight) for ``idle_seconds`` is closed, and so is one whose
client has not read its replies for as long (cut off: the replies it left would never drain); a
length over ``max_query_bytes`` closes it too (the stream cannot be resynchronised). DoT adds
TLS in front (``ispd/dns/tls.py``).
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time

from ispd.dns.frontend import Answerer, TransportStats

_LENGTH = struct.Struct("!H")
WRITE_BUFFER_HIGH = 256 * 1024  # past it, reading waits until the client has taken some


async def serve_dns_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str,
                           answerer: Answerer, stats: TransportStats, *, idle_seconds: float,
                           max_in_flight: int, max_query_bytes: int, drain_seconds: float) -> None:
    pending: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(max_in_flight)
    stalled = False
    idle: asyncio.Timeout | None = None  # while reading; idle only once no query is in flight

    def settled(task: asyncio.Task[None]) -> None:
        pending.discard(task)
        if not pending and idle is not None:  # the last reply out: the idle time starts
            idle.reschedule(asyncio.get_running_loop().time() + idle_seconds)

    def send(reply: bytes) -> None:
        if not writer.is_closing():
            writer.write(_LENGTH.pack(len(reply)) + reply)

    async def answer(data: bytes, started: float) -> None:
        try:
            reply = await answerer.resolve(data, client, started)
            if reply is not None:
                send(reply)
        finally:
            slots.release()

    try:
        while True:
            try:
                async with asyncio.timeout(None if pending else idle_seconds) as idle:
                    (length,) = _LENGTH.unpack(await reader.readexactly(2))
                    if length > max_query_bytes:
                        stats.bad_requests += 1
                        return
                    data = await reader.readexactly(length)
            finally:
                idle = None
            started = time.perf_counter()
            reply = answerer.from_cache(data, client, started)
            if reply is not None:
                send(reply)
            else:
                await slots.acquire()
                task = asyncio.ensure_future(answer(data, started))
                pending.add(task)
                task.add_done_callback(settled)
            if not await caught_up(writer, idle_seconds):
                stalled = True
                return
    except ssl.SSLError:  # DoT: a TLS record that does not decrypt, or another TLS alert
        stats.bad_requests += 1
    except (asyncio.IncompleteReadError, OSError):
        # The client went (EOF, a reset, the idle time), or its connection failed another way:
        # EHOSTUNREACH when its host went off line with replies unacknowledged and a router
        # said so. Not only ConnectionError: a plain TCP connection's handler let that one out,
        # and asyncio logged it as an error ("Task exception was never retrieved").
        pass
    finally:
        if stalled:  # a close would wait for a flush that never comes
            writer.transport.abort()
            for task in pending:  # (their replies could reach no one either: as below)
                task.cancel()
        else:
            try:
                current = asyncio.current_task()
                if pending and not (current is not None and current.cancelling()):  # (cancelled: at once)
                    await asyncio.wait(pending, timeout=drain_seconds)
            finally:
                # Past the drain time their replies could reach no one: left running, they went
                # on waiting for the budget and resolving for a closed connection, ahead of the
                # queries of live ones, and counted as answered. Closing unanswered is what RFC
                # 7766 §6.2.4 has clients retry on (and what Unbound does with a query it drops).
                for task in pending:
                    task.cancel()
            await close_within(writer, idle_seconds)


async def caught_up(writer: asyncio.StreamWriter, seconds: float) -> bool:
    """Whether the client has taken its replies, once they pile up past WRITE_BUFFER_HIGH,
    within ``seconds``. False: it goes on sending but leaves them unread, and would hold the
    connection and its buffers for good; abort it (a close would wait for a flush that never
    comes)."""
    if writer.transport.get_write_buffer_size() <= WRITE_BUFFER_HIGH:
        return True
    try:
        async with asyncio.timeout(seconds):
            await writer.drain()
    except TimeoutError:
        return False
    return True


async def close_within(writer: asyncio.StreamWriter, seconds: float) -> None:
    """Closes a client's connection and returns once it is gone. Replies still to go get
    ``seconds`` to be taken, and over TLS the client as long to answer our close_notify; then the
    end. A closing transport keeps its buffer, and its socket, for as long as the flush takes,
    which is for good with a client that never reads; a TLS one, flushed, still waits 30 s
    (asyncio's and uvloop's ``ssl_shutdown_timeout``) for a close_notify that a client which
    neither reads nor closes never sends. The callers release the connection limits when this
    returns: returning at once had them count a socket as gone that was still there, and a
    client could hold its limit's worth of them again every idle time."""
    writer.close()
    try:
        async with asyncio.timeout(seconds):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:  # the connection failed meanwhile (reset, unreachable, TLS)
        pass
