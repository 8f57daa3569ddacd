"""DNS over QUIC (RFC 9250) and DNS over HTTPS on HTTP/3, both on aioquic.

aioquic's ``QuicConnection`` is sans-IO and its asyncio server only routes datagrams to one
protocol object per connection; the work here happens in ``quic_event_received``, which never
blocks: a cache hit is answered in the callback, anything else becomes a task.

DoQ (RFC 9250 §4.2): each query has a client-initiated bidirectional stream of its own, carrying
the 2-byte length prefix and the message, then FIN; the reply goes back the same way and ends
the stream. The message ID must be 0 and the length must match what arrived, otherwise the
connection is closed with DOQ_PROTOCOL_ERROR (§4.3.3, §4.2). A query over ``max_query_bytes``
or over the in-flight limit gets its stream reset with DOQ_EXCESSIVE_LOAD; a query the engine
drops, DOQ_REQUEST_CANCELLED. 0-RTT (§4.5: replayable) is off unless ``allow_0rtt``: without a
session-ticket store the server never offers resumption, so there is no early data to accept.

HTTP/3: aioquic's ``H3Connection`` turns stream data into request events (with no QPACK dynamic
table for the client's headers, ``_H3Connection``); the requests go through the same
``DoHResponder`` as HTTP/2.

Both count connections against a ``ConnectionGate`` on their first datagram (the peer address
is known only then) and turn a connection over a limit away at once, with a stateless
CONNECTION_CLOSE (CONNECTION_REFUSED) and no TLS work; a handshake that fails or
takes longer than ``handshake_timeout_seconds`` is counted and the connection closed; so is one
with no whole query, none in flight and nothing of its replies taken for the idle timeout
(``_watch``: QUIC's own idle timeout is restarted by any packet, a PING too). A SIGHUP
with a new certificate changes the shared configuration's certificate for new connections.

Address validation (RFC 9000 §8.1): each Initial the server takes costs a TLS handshake, about
a millisecond of the one event loop, and its source address may be forged; 2,000 forged
Initials a second kept port 53's answers waiting for seconds. So a new client is first sent a
Retry, which costs an AEAD seal and no state, and its connection is made only when it comes
back with the token (a round trip more): always (``retry = "always"``), never, or, by default,
only while more than ``RETRY_ABOVE_HANDSHAKES`` handshakes are under way on the listener, and
for ``RETRY_HOLD_SECONDS`` after (a client answering a Retry still finds tokens taken); with
``max_connections`` under twice that, past half of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import OrderedDict
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import pylsqpack  # (aioquic's QPACK)
from aioquic._buffer import Buffer  # what aioquic.buffer re-exports, without saying so to mypy
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import TRANSPORT_CLOSE_FRAME_CAPACITY, QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent, StreamDataReceived, StreamReset
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.tls import SessionTicket

from ispd.configtypes import SocketAddress
from ispd.dns.doh import error_headers
from ispd.dns.frontend import Answerer, TransportStats
from ispd.dns.https import DoHResponder, RequestInProgress, Response
from ispd.listeners import (
    ConnectionGate,
    bound_socket,
    load_certificate,
    open_datagram_listener,
    server_tls_context,
)
from ispd.service import ServiceStartError, describe_os_error

DOQ_ALPN = ["doq"]  # RFC 9250 §4.1.1
DOQ_NO_ERROR = 0x0
DOQ_PROTOCOL_ERROR = 0x2
DOQ_REQUEST_CANCELLED = 0x3
DOQ_EXCESSIVE_LOAD = 0x4
H3_NO_ERROR = 0x100
H3_REQUEST_CANCELLED = 0x10C
H3_EXCESSIVE_LOAD = 0x107
_LENGTH = struct.Struct("!H")
_TICKETS_KEPT = 10_000
# A handshake takes a round trip or two, so even a busy listener has few under way at once;
# many more are Initials that never go on (forged sources) or clients doing no more than start.
RETRY_ABOVE_HANDSHAKES = 64
RETRY_HOLD_SECONDS = 10.0


@dataclass(slots=True)
class QuicSettings:
    idle_timeout: float
    handshake_timeout: float
    max_streams: int
    max_query_bytes: int
    retry: str = "auto"  # "auto", "always" or "never": when a new client must prove its address


class _Handshakes:
    """The handshakes under way on one listener's connections, and whether the datagram the
    server is handing to aioquic comes from a proven address (with Retry on, aioquic makes a
    connection only for an Initial that brings back a token of ours)."""

    __slots__ = ("pending", "proven")

    def __init__(self) -> None:
        self.pending = 0
        self.proven = False


class _RetryTokens(QuicRetryTokenHandler):
    """aioquic's Retry tokens, each counted as a Retry sent."""

    def __init__(self, stats: TransportStats) -> None:
        super().__init__()
        self.stats = stats

    def create_token(self, **kwargs: Any) -> bytes:
        self.stats.retries += 1
        return super().create_token(**kwargs)


def quic_configuration(alpn: list[str], certificate: Path, private_key: Path, idle_timeout: float,
                       max_query_bytes: int) -> QuicConfiguration:
    # OpenSSL first: aioquic loads a private key that does not belong to the certificate without a
    # word (every handshake would fail later); OpenSSL refuses it, as `ispd check-config` does.
    server_tls_context(certificate, private_key, alpn)
    configuration = QuicConfiguration(is_client=False, alpn_protocols=alpn, idle_timeout=idle_timeout,
                                      max_stream_data=max(65536, max_query_bytes * 2))
    load_certificate(configuration.load_cert_chain, certificate, private_key)
    return configuration


def _connection_refused(version: int, client_destination_cid: bytes, client_source_cid: bytes) -> bytes:
    """A server Initial packet that closes the connection with CONNECTION_REFUSED."""
    crypto = CryptoPair()
    crypto.setup_initial(cid=client_destination_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(host_cid=client_destination_cid, is_client=False,
                                max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE, peer_cid=client_source_cid,
                                version=version)
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=TRANSPORT_CLOSE_FRAME_CAPACITY)
    buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    buf.push_uint_var(QuicFrameType.PADDING)  # no frame caused it
    buf.push_uint_var(0)  # no reason phrase
    datagrams, _ = builder.flush()
    return datagrams[0]


class _QuicServer(QuicServer):
    """aioquic's server, less its answer to a small datagram of a version it does not speak:
    it sends Version Negotiation for any size, and a 40-byte datagram from a forged address
    drew 43 bytes at the victim. RFC 9000 §5.2.2: "Servers MUST drop smaller packets that
    specify unsupported versions" (smaller than a connection's first datagram, §14.1). And
    with its Retry (aioquic's, on or off for good) turned on and off as ``settings.retry``
    and the handshakes under way say, on for a client that comes back with a token of ours."""

    def __init__(self, *, settings: QuicSettings, handshakes: _Handshakes, tokens: _RetryTokens,
                 gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._handshakes = handshakes
        self._tokens = tokens
        self._gate = gate
        self._retry_until = 0.0

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE and isinstance(data, bytes) and len(data) >= 5 \
                and data[0] & 0x80:  # a long header: the version follows the first byte
            version = int.from_bytes(data[1:5], "big")
            if version != 0 and version not in self._configuration.supported_versions:
                return
        # (aioquic types it as never None, though it makes it None when retry is off)
        validating = self._validating() or self._back_from_retry(data, addr)
        self._retry = self._tokens if validating else None  # type: ignore[assignment]
        self._handshakes.proven = validating
        super().datagram_received(data, addr)

    def _back_from_retry(self, data: bytes | str, addr: Any) -> bool:
        """Whether ``data`` is the Initial of a client that a Retry of ours sent back with its
        token, Retry having stopped since (the hold over, a reload): aioquic, its Retry off,
        would make the connection as for a first Initial, without the retry_source_connection_id
        that such a client must find (RFC 9000 §7.3), and the client's handshake would fail."""
        if not isinstance(data, bytes) or len(data) < SMALLEST_MAX_DATAGRAM_SIZE or not data[0] & 0x80:
            return False
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._configuration.connection_id_length)
        except ValueError:
            return False
        if header.packet_type != QuicPacketType.INITIAL or not header.token:
            return False
        try:
            self._tokens.validate_token(address=addr, destination_cid=header.destination_cid, token=header.token,
                                        now=self._loop.time())
        except ValueError:
            return False  # (not one of ours: as any first Initial, as before)
        return True

    def _validating(self) -> bool:
        mode = self._settings.retry
        if mode != "auto":
            return mode == "always"
        now = self._loop.time()
        # Half the listener's connections at most: handshakes that never go on are each counted
        # in max_connections until they time out, and with a limit under RETRY_ABOVE_HANDSHAKES
        # they filled it before Retry started - a few Initials a second, from any source, kept
        # every client out.
        if self._handshakes.pending > min(RETRY_ABOVE_HANDSHAKES, self._gate.max_total // 2):
            self._retry_until = now + RETRY_HOLD_SECONDS
        return now < self._retry_until


class _TicketStore:
    """Session tickets for resumption (and so 0-RTT), in memory, oldest dropped first."""

    def __init__(self) -> None:
        self.tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()

    def add(self, ticket: SessionTicket) -> None:
        self.tickets[ticket.ticket] = ticket
        while len(self.tickets) > _TICKETS_KEPT:
            self.tickets.popitem(last=False)

    def pop(self, label: bytes) -> SessionTicket | None:
        return self.tickets.pop(label, None)


def _ignore(*args: Any) -> None:
    """What a callback of a connection that is over becomes."""


# What aioquic's server gives each connection's protocol: functools.partial objects bound to the
# protocol, which the protocol keeps.
_SERVER_HANDLERS = ("_connection_id_issued_handler", "_connection_id_retired_handler",
                    "_connection_terminated_handler")


def _release(quic: QuicConnection) -> None:
    """Break the reference cycles an aioquic connection that is over is in: its own bound
    methods, which it keeps (its frame handlers, its loss recovery's probe, its TLS context's
    callbacks, its keys' logging callbacks). Only the garbage collector frees such a cycle, and
    ispd runs it rarely (``ispd.collector.collect_rarely``): each closed DoQ or HTTP/3
    connection kept 60-100 KB until then. Call it only once aioquic has done with the
    connection (terminated, or never started). aioquic's internals, read defensively: a field
    an upgrade renames keeps its cycle, nothing more."""
    handlers = getattr(quic, "_QuicConnection__frame_handlers", None)
    if isinstance(handlers, dict):
        handlers.clear()
    loss = getattr(quic, "_loss", None)
    if hasattr(loss, "_send_probe"):
        loss._send_probe = _ignore  # type: ignore[union-attr]
    tls = getattr(quic, "tls", None)
    for name in ("alpn_cb", "get_session_ticket_cb", "new_session_ticket_cb", "update_traffic_key_cb"):
        if getattr(tls, name, None) is not None:
            setattr(tls, name, _ignore)
    cryptos = getattr(quic, "_cryptos", None)
    for pair in cryptos.values() if isinstance(cryptos, dict) else ():
        for context in (getattr(pair, "recv", None), getattr(pair, "send", None)):
            for name in ("_setup_cb", "_teardown_cb"):
                if hasattr(context, name):
                    setattr(context, name, _ignore)


class _DNSQuicProtocol(QuicConnectionProtocol):
    """What DoQ and HTTP/3 connections share: limits, handshake accounting, tasks."""

    NO_ERROR = DOQ_NO_ERROR  # the application's code for a close that is no error

    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *, gate: ConnectionGate,
                 stats: TransportStats, settings: QuicSettings, handshakes: _Handshakes) -> None:
        super().__init__(quic, stream_handler)
        # aioquic announces 128 concurrent bidirectional streams; ours is the configured limit.
        # Both figures: aioquic announces ``value`` and, raising it by one for each stream that
        # ends, sends MAX_STREAMS only once the client has fewer streams left than ``sent`` says
        # it was given - left at 128, no MAX_STREAMS went out before stream ~128, and a client
        # held to fewer (under about 86) could open no stream past its first ``max_streams``.
        limit = quic._local_max_streams_bidi
        limit.value = limit.sent = settings.max_streams
        self.gate = gate
        self.stats = stats
        self.settings = settings
        self.handshakes = handshakes
        self.client: str | None = None  # the address the connection began from, and is counted as
        # The address of the datagram being read: a client may move (RFC 9000 §9, a NAT rebinding
        # or a new network), and its queries are those of the address they come from, for `allow`,
        # the rate limit and the policy, as over UDP.
        self.peer = ""
        self.admitted = False
        # Counted as its client's (``ConnectionGate.admit``), or, begun from an address that may
        # be forged, in the total only until its handshake proves the address.
        self.charged = False
        self.turned_away = False  # over its client's limit once proven: closing
        self.handshake_done = False
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        # The idle timeout as DoT and HTTP/2 have it (``_watch``): the last time a whole query
        # came, a query was in flight or the client took some of a reply, and the offset each
        # stream's reply still unacknowledged stood at then.
        self._watchdog: asyncio.TimerHandle | None = None
        self.progressed = 0.0
        self._unread: dict[int, int] = {}

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if self.client is None:
            self.client = addr[0]
            # An Initial's source may be forged: counted as that client's before its handshake,
            # twenty of them from a subscriber's address would keep it out for the handshake
            # timeout. Only proven connections count as a client's (the handshakes under way
            # are bounded by Retry, which starts past RETRY_ABOVE_HANDSHAKES).
            self.charged = self.handshakes.proven
            if not (self.gate.admit(addr[0]) if self.charged else self.gate.admit_unproven(addr[0])):
                self._refuse(data if isinstance(data, bytes) else data.encode(), addr)
                return
            self.admitted = True
            self.handshakes.pending += 1
            self._handshake_timer = asyncio.get_running_loop().call_later(
                self.settings.handshake_timeout, self._handshake_expired)
        if self.admitted:
            self.peer = addr[0]
            super().datagram_received(data, addr)

    def _refuse(self, data: bytes, addr: Any) -> None:
        """Turn a connection over a limit away, statelessly: its first datagram (always an Initial,
        the server makes a connection for nothing else) is answered with CONNECTION_CLOSE
        (CONNECTION_REFUSED, RFC 9000 §20.1) in an Initial packet, whose keys come from the client's
        connection ID (RFC 9001 §5.2): no TLS work. The connection is then forgotten by the server.
        (Closing the QuicConnection instead would send nothing, as it has no keys and no path yet,
        and would fail in aioquic, which expects a path.)"""
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._quic.configuration.connection_id_length)
        except ValueError:
            header = None
        if header is not None and header.packet_type == QuicPacketType.INITIAL and header.version is not None \
                and self._transport is not None:
            self._transport.sendto(_connection_refused(header.version, header.destination_cid, header.source_cid),
                                   addr)
        self._connection_terminated_handler()  # the server drops every route to this protocol
        self._forget()

    def close_with(self, code: int, reason: str) -> None:
        self._quic.close(error_code=code, reason_phrase=reason)
        # (aioquic's own state, read defensively: it is not its public interface.)
        path = next(iter(getattr(self._quic, "_network_paths", ())), None)
        if path is not None and not getattr(path, "is_validated", True) and self._transport is not None:
            # RFC 9000 §8: before the client's address is proven, no more than three times what
            # came from it, CONNECTION_CLOSE too - which aioquic sends past the limit (a handshake
            # that timed out drew one more datagram at an address that may be forged).
            budget = 3 * path.bytes_received - path.bytes_sent
            for data, addr in self._quic.datagrams_to_send(now=self._loop.time()):
                if len(data) <= budget:
                    budget -= len(data)
                    self._transport.sendto(data, addr)
        self.transmit()

    def _reset(self, stream_id: int, code: int) -> None:
        try:
            self._quic.reset_stream(stream_id, code)
        except (ValueError, AssertionError):
            return
        self.transmit()

    def _cancelled(self, stream_id: int, code: int) -> None:
        """The client reset its side of a request stream: no reply is coming on it, so the server
        ends its own side too. aioquic counts a stream against the limit until both sides have
        ended; a query abandoned before its end, left half open, held its place for the
        connection's life, and after max_streams of them no stream could open."""
        if stream_id & 0x3 == 0:  # (client bidirectional: the others have no side of ours)
            self._reset(stream_id, code)

    def _handshake_expired(self) -> None:
        if not self.handshake_done:
            self.close_with(DOQ_NO_ERROR, "handshake timeout")

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted) and not self.handshake_done:
            self.handshake_done = True
            if self.admitted:
                self.handshakes.pending -= 1
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
            if self.admitted:
                self.progressed = self._loop.time()
                self._watch_later()
            if self.admitted and not self.charged:  # the address is the client's: its limit now
                if not self.gate.prove(self.client or ""):
                    self.turned_away = True  # (what else came with the handshake is not looked at)
                    self.close_with(QuicErrorCode.CONNECTION_REFUSED, "too many connections from this client")
                    return
                self.charged = True
        elif isinstance(event, ConnectionTerminated):
            # (aioquic's server has dropped its routes to the connection; the rest of this
            # round, its events and transmit(), still reads it)
            self._ended()
            self._loop.call_soon(self._forget)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended()
        super().connection_lost(exc)

    def _ended(self) -> None:
        if self.admitted:
            self.admitted = False
            if not self.handshake_done:
                self.stats.handshake_failures += 1
                self.handshakes.pending -= 1
            if self.charged:
                self.gate.release(self.client or "")
            else:
                self.gate.release_unproven()
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
            if self._keepalive is not None:
                self._keepalive.cancel()
            if self._watchdog is not None:
                self._watchdog.cancel()
            for task in self.tasks:
                task.cancel()

    def _forget(self) -> None:
        """The connection is over and aioquic done with it: break the cycles that would keep it,
        and this protocol, until a full garbage collection (``_release``)."""
        for name in _SERVER_HANDLERS:
            setattr(self, name, _ignore)
        self._handshake_timer = self._keepalive = self._watchdog = None
        _release(self._quic)

    def resolving(self) -> None:
        """A query goes to the resolver. Idle as the client waits, the connection would reach the
        idle timeout (both ends take the lower of theirs, RFC 9000 §10.1) before a slower answer,
        and that answer had nowhere to go: while queries are in flight the server sends a PING
        every third of the timeout, which both ends count as activity (§10.1.2)."""
        self.in_flight += 1
        if self._keepalive is None:
            self._keep_alive_later()

    def _idle_seconds(self) -> float:
        # The lower of both ends' idle timeouts, as aioquic works it out (else ours).
        idle = getattr(self._quic, "_idle_timeout", None)
        return float(idle()) if callable(idle) else self.settings.idle_timeout

    def _keep_alive_later(self) -> None:
        self._keepalive = asyncio.get_running_loop().call_later(self._idle_seconds() / 3, self._keep_alive)

    def query_came(self) -> None:
        self.progressed = self._loop.time()

    def _watch_later(self) -> None:
        self._watchdog = self._loop.call_later(self._idle_seconds() / 2, self._watch)

    def _watch(self) -> None:
        """QUIC's own idle timeout (RFC 9000 §10.1) counts any packet, a PING or an ACK, as
        activity: a client that sent a byte of a query now and then, or PINGs, held a connection
        for good with no query, and one that left its replies unread (its flow control closed)
        held them too, with the connection - 400 replies of 4 KB on HTTP/3, for as long as it
        went on PINGing, where DoT and HTTP/2 cut such a client off after the idle timeout. So a
        connection is closed too when for the idle timeout no whole query has come, none has
        been in flight, and the client has taken nothing of the replies it has not yet
        acknowledged."""
        self._watchdog = None
        if not self.admitted:
            return
        now = self._loop.time()
        unread: dict[int, int] = {}
        # (aioquic's stream state, read defensively: it is not its public interface)
        for stream_id, stream in getattr(self._quic, "_streams", {}).items():
            sender = stream.sender
            taken = getattr(sender, "_buffer_start", 0)
            if getattr(sender, "_buffer_stop", 0) > taken:
                unread[stream_id] = taken
        if self.in_flight or any(unread.get(stream_id) != taken for stream_id, taken in self._unread.items()):
            self.progressed = now
        self._unread = unread
        if now - self.progressed >= self._idle_seconds():
            self.close_with(self.NO_ERROR, "idle")
            return
        self._watch_later()

    def _keep_alive(self) -> None:
        self._keepalive = None
        if self.in_flight and self.admitted:
            self._quic.send_ping(0)
            self.transmit()
            self._keep_alive_later()

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class DoQProtocol(_DNSQuicProtocol):
    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *, answerer: Answerer,
                 **kwargs: Any) -> None:
        super().__init__(quic, stream_handler, **kwargs)
        self.answerer = answerer
        self.buffers: dict[int, bytearray] = {}
        # Streams turned away for an oversized query while the client was still sending: what
        # else arrives on them is dropped (it is not the start of a new query).
        self.discarded: set[int] = set()

    def quic_event_received(self, event: QuicEvent) -> None:
        super().quic_event_received(event)
        if self.turned_away:
            return
        if isinstance(event, StreamDataReceived):
            self._stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, StreamReset):  # the client gave up on a query it was sending
            self.buffers.pop(event.stream_id, None)
            self.discarded.discard(event.stream_id)
            self._cancelled(event.stream_id, DOQ_REQUEST_CANCELLED)

    def _stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id & 0x3 != 0:  # only client-initiated bidirectional streams carry queries
            self.stats.bad_requests += 1
            self.close_with(DOQ_PROTOCOL_ERROR, "query on a stream that is not client bidirectional")
            return
        if stream_id in self.discarded:
            if end_stream:
                self.discarded.discard(stream_id)
            return
        buffer = self.buffers.setdefault(stream_id, bytearray())
        buffer += data
        if len(buffer) > self.settings.max_query_bytes + 2:
            self.stats.bad_requests += 1
            del self.buffers[stream_id]
            if not end_stream:
                self.discarded.add(stream_id)
                with contextlib.suppress(ValueError):  # and ask the client to stop sending it
                    self._quic.stop_stream(stream_id, DOQ_EXCESSIVE_LOAD)
            self._reset(stream_id, DOQ_EXCESSIVE_LOAD)
            return
        if not end_stream:
            return
        del self.buffers[stream_id]
        self.query_came()
        if len(buffer) < 2 + 12 or _LENGTH.unpack_from(buffer)[0] != len(buffer) - 2 or buffer[2:4] != b"\0\0":
            # RFC 9250 §4.2: a length that does not match, or a message ID other than 0.
            self.stats.bad_requests += 1
            self.close_with(DOQ_PROTOCOL_ERROR, "malformed query")
            return
        if self.in_flight >= self.settings.max_streams:
            self._reset(stream_id, DOQ_EXCESSIVE_LOAD)
            return
        query = bytes(buffer[2:])
        started = time.perf_counter()
        client = self.peer
        reply = self.answerer.from_cache(query, client, started)
        if reply is not None:
            self._reply(stream_id, reply)
            return
        self.resolving()
        self.spawn(self._resolve(stream_id, query, client, started))

    async def _resolve(self, stream_id: int, query: bytes, client: str, started: float) -> None:
        try:
            reply = await self.answerer.resolve(query, client, started)
        finally:
            self.in_flight -= 1
        if reply is None:
            self._reset(stream_id, DOQ_REQUEST_CANCELLED)
        else:
            self._reply(stream_id, reply)

    def _reply(self, stream_id: int, reply: bytes) -> None:
        try:
            self._quic.send_stream_data(stream_id, _LENGTH.pack(len(reply)) + reply, end_stream=True)
        # The stream finished or the connection closed (ValueError, AssertionError), or the
        # client stopped it while the query resolved (STOP_SENDING, RFC 9250 §4.3: RuntimeError).
        except (ValueError, AssertionError, RuntimeError):
            return
        self.transmit()


class _H3Connection(H3Connection):
    """aioquic's HTTP/3, with no QPACK dynamic table for the client's headers (capacity 0 in
    SETTINGS, and a decoder that takes no insertion). aioquic's 4,096 bytes let a client insert
    a 4 KB field once and name it by a byte of its HEADERS: each request's frame, bounded at
    24 KB, decoded to 80 MB, 2.5 s of the one event loop, and five such requests kept every
    service (port 53, DHCP, RADIUS) from answering for 13 s. HTTP/2's h2 refuses a header list
    over 64 KB; pylsqpack has no such limit. A DoH request's headers are a few short fields:
    without the table a client sends them as literals, a hundred bytes more."""

    def _init_connection(self) -> None:
        # (aioquic's fields: __init__ makes the decoder with them, then calls this, which sends
        # SETTINGS with them)
        self._max_table_capacity = self._blocked_streams = 0
        self._decoder = pylsqpack.Decoder(0, 0)
        super()._init_connection()


class HTTP3Protocol(_DNSQuicProtocol):
    NO_ERROR = H3_NO_ERROR

    def __init__(self, quic: QuicConnection, stream_handler: Any = None, *, responder: DoHResponder,
                 **kwargs: Any) -> None:
        super().__init__(quic, stream_handler, **kwargs)
        self.responder = responder
        self.http = _H3Connection(quic)
        self.http_failed = False  # closed by aioquic for an HTTP/3 protocol error
        self.requests: dict[int, RequestInProgress] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        super().quic_event_received(event)
        if isinstance(event, ConnectionTerminated) or self.turned_away:
            return
        if isinstance(event, StreamReset):  # a request abandoned halfway: forget what it sent
            self.requests.pop(event.stream_id, None)
            self._cancelled(event.stream_id, H3_REQUEST_CANCELLED)
        try:
            events = self.http.handle_event(event)
        except Exception:  # (what aioquic does not expect of a client)
            self.stats.bad_requests += 1
            self.transmit()
            return
        # An HTTP/3 protocol error (a frame where it may not be, a second control stream, QPACK
        # that does not decode): aioquic closes the connection with its code and returns no
        # events, raising nothing - the one sign is its _is_done (read defensively: it is not
        # its public interface). Uncounted, a client's malformed HTTP/3 left bad_requests at 0
        # where HTTP/2's protocol errors are counted.
        if getattr(self.http, "_is_done", False) and not self.http_failed:
            self.http_failed = True
            self.stats.bad_requests += 1
            return
        if isinstance(event, StreamDataReceived) and self._held(event.stream_id) > self._frame_limit():
            self.stats.bad_requests += 1
            self.close_with(H3_EXCESSIVE_LOAD, "frame too large")
            return
        for h3_event in events:
            self._h3_event(h3_event)

    def _held(self, stream_id: int) -> int:
        """What aioquic keeps of the stream's frame still coming: it hands on DATA as it arrives
        and skips unknown frames, but keeps a HEADERS frame, or a control stream's frame, until
        all of it has come, however long it says it is, while QUIC's flow control lets the client
        send on (the window doubles as it fills)."""
        stream = self.http._stream.get(stream_id)
        return len(stream.buffer) if stream is not None else 0

    def _frame_limit(self) -> int:
        # A request's headers: a GET's path holds the query in base64url (4/3 of its bytes).
        return 16384 + 2 * self.settings.max_query_bytes

    def _h3_event(self, event: H3Event) -> None:
        if isinstance(event, HeadersReceived):
            request = self.requests.setdefault(event.stream_id, RequestInProgress())
            request.take_headers(event.headers)
            ended = event.stream_ended
        elif isinstance(event, DataReceived):
            request = self.requests.setdefault(event.stream_id, RequestInProgress())
            if not request.rejected:
                request.body += event.data
                if len(request.body) > self.responder.config.max_query_bytes:
                    request.rejected = True
                    self.stats.bad_requests += 1
                    body = b"query too large\n"
                    self._respond(event.stream_id, Response(error_headers(413, body), body))
            ended = event.stream_ended
        else:
            return
        if ended:
            self._request_done(event.stream_id)

    def _request_done(self, stream_id: int) -> None:
        self.query_came()
        request = self.requests.pop(stream_id, None)
        if request is None or request.rejected:
            return
        if self.in_flight >= self.settings.max_streams:
            self._reset(stream_id, H3_EXCESSIVE_LOAD)
            return
        started = time.perf_counter()
        client = self.peer
        prepared = self.responder.prepare(request.request(), client, started)
        if isinstance(prepared, Response):
            self._respond(stream_id, prepared)
            return
        self.resolving()
        self.spawn(self._resolve(stream_id, prepared, client, started))

    async def _resolve(self, stream_id: int, query: bytes, client: str, started: float) -> None:
        try:
            response = await self.responder.resolve(query, client, started)
        finally:
            self.in_flight -= 1
        if response is None:  # dropped (RFC 9114 §4.1.1: REJECTED is for requests not processed)
            self._reset(stream_id, H3_REQUEST_CANCELLED)
        else:
            self._respond(stream_id, response)

    def _respond(self, stream_id: int, response: Response) -> None:
        try:
            self.http.send_headers(stream_id, response.headers)
            self.http.send_data(stream_id, response.body, end_stream=True)
        except Exception:  # the stream or the connection is gone: nothing to tell
            return
        self.transmit()


class QuicListener:
    """The UDP listeners of one QUIC transport (DoQ or HTTP/3) and their shared configuration."""

    def __init__(self, name: str, alpn: list[str], protocol: type[_DNSQuicProtocol], settings: QuicSettings,
                 allow_0rtt: bool, **protocol_args: Any) -> None:
        self.name = name
        self.alpn = alpn
        self.protocol = protocol
        self.settings = settings
        self.protocol_args = protocol_args
        self.tickets = _TicketStore() if allow_0rtt else None
        self.handshakes = _Handshakes()
        self.retry_tokens = _RetryTokens(protocol_args["stats"])
        self.configuration: QuicConfiguration | None = None
        self.bound: list[tuple[str, int]] = []

    def load_certificate(self, certificate: Path, private_key: Path) -> None:
        self.use_certificate(self.prepare_certificate(certificate, private_key))

    def prepare_certificate(self, certificate: Path, private_key: Path) -> QuicConfiguration:
        """What ``use_certificate`` takes; ``CertificateError`` when the files are unusable."""
        return quic_configuration(self.alpn, certificate, private_key, self.settings.idle_timeout,
                                  self.settings.max_query_bytes)

    def apply_settings(self, settings: QuicSettings) -> None:
        """A reload's limits, for connections that start from now on - but for the idle
        timeout, which aioquic reads from the shared configuration as it goes: open connections
        take it too."""
        for name in settings.__slots__:  # the protocol factory holds this very object
            setattr(self.settings, name, getattr(settings, name))
        if self.configuration is not None:
            self.configuration.idle_timeout = settings.idle_timeout
            self.configuration.max_stream_data = max(65536, settings.max_query_bytes * 2)

    def use_certificate(self, fresh: QuicConfiguration) -> None:
        if self.configuration is None:
            self.configuration = fresh
            return
        # Connections read these when they start; established ones keep the TLS state they have.
        self.configuration.certificate = fresh.certificate
        self.configuration.certificate_chain = fresh.certificate_chain
        self.configuration.private_key = fresh.private_key

    async def start(self, addresses: list[SocketAddress], stack: AsyncExitStack) -> None:
        assert self.configuration is not None
        factory = partial(self.protocol, settings=self.settings, handshakes=self.handshakes, **self.protocol_args)
        for address in addresses:
            try:
                # aioquic's serve() without its bind: the socket is made as every listener's is.
                _, protocol = await open_datagram_listener(
                    partial(_QuicServer, settings=self.settings, handshakes=self.handshakes,
                            tokens=self.retry_tokens, gate=self.protocol_args["gate"],
                            configuration=self.configuration, create_protocol=factory,
                            session_ticket_fetcher=self.tickets.pop if self.tickets else None,
                            session_ticket_handler=self.tickets.add if self.tickets else None),
                    bound_socket(address.host, address.port, socket.SOCK_DGRAM))
                server = cast(_QuicServer, protocol)
            except OSError as exc:
                raise ServiceStartError(f"dns: {self.name}: cannot listen on {address}: "
                                        f"{describe_os_error(exc)}") from None
            stack.callback(server.close)
            assert server._transport is not None
            self.bound.append((address.host, server._transport.get_extra_info("sockname")[1]))


def doq_listener(answerer: Answerer, gate: ConnectionGate, stats: TransportStats, settings: QuicSettings,
                 allow_0rtt: bool) -> QuicListener:
    return QuicListener("doq", DOQ_ALPN, DoQProtocol, settings, allow_0rtt, answerer=answerer, gate=gate,
                        stats=stats)


def http3_listener(responder: DoHResponder, gate: ConnectionGate, stats: TransportStats,
                   settings: QuicSettings) -> QuicListener:
    return QuicListener("doh (HTTP/3)", H3_ALPN, HTTP3Protocol, settings, False, responder=responder, gate=gate,
                        stats=stats)
