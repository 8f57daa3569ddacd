"""Other nodes' leases and sessions on this node's bus: the bridged events over LISTEN/NOTIFY.

Two daemons on two nodes share one PostgreSQL database, one active and one its hot standby. What
the admin CLI or either daemon writes as an audit entry reaches both through the audit relay;
the bridged events (``events.NODE_EVENTS``: leases, IPv6 bindings, RADIUS sessions) leave no
such entry, and a service kept up by them on the node that did not grant them (the standby's
DNS: lease names, who holds which address) would learn of them only at its next load from the
store. ``PeerEventChannel`` carries them between the nodes' buses through the database both
already reach: no port of its own to open, firewall or authenticate.

Theory of operation
-------------------
out   An ``EventBridge`` attached to the bus collects its bridged events, this node's services'
      and those a worker process's bridge delivered into it alike, in its bounded outbox. A task
      takes what the outbox holds and sends it, from a thread (the loop never waits on the
      network), on a connection of its own, as JSON payloads of ``pg_notify`` in one statement:
      ``{"from": identity, "seq": n, "events": [...]}`` split to stay under NOTIFY's 8000 bytes.
      What comes while a send is on its way waits for the next one, so a burst goes in a few
      statements. ``identity`` (host, PID and a random token made once) lets this node drop its
      own notifications when the server hands them back; ``seq`` keeps two equal payloads of
      one statement from being merged into one (the server keeps one of identical notifications
      in a transaction). A send that fails keeps its events, opens a new connection after
      ``RETRY_SECONDS`` and sends them again; meanwhile the newest ``EventBridge.MAX_QUEUED``
      are kept. A statement cut after the server ran it but before it answered is sent twice:
      the events are states (granted, ended), and the second copy says the same.
in    A thread of its own listens on another connection and polls it every ``POLL_SECONDS``
      (how soon ``stop`` ends it). Each notification goes to the loop whole; there another
      node's events are published through the bridge's ``deliver``, which keeps them from
      being sent out again (a third node hears them from their source). A payload that is not
      ours to read (not JSON, another shape, an event this version does not know) is dropped
      and counted: one bad sender must not stop the others' events.
gaps  A notification sent while no session listened is never delivered: when the listening
      connection was lost and is back (LISTEN in place again), ``PeerEventsMissed`` is published,
      and whoever keeps state from those events reads it again from the store. The same when a
      sender had to drop events (its outbox full through an outage): its next payload says
      ``"missed": true`` and each receiver publishes ``PeerEventsMissed`` before its events.

Warnings are logged once per outage (each connection's), an info line when it is back. The
counters (``sent``, ``received``, ``dropped_malformed``, ``reconnects`` and a few more) are plain
attributes for the caller to export.

Not here: which node runs it, and who subscribes to ``PeerEventsMissed`` (the supervisor and the
services); the audit-logged events (the audit relay carries them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from ispd.events import NODE_EVENTS, EventBridge, EventBus, PeerEventsMissed
from ispd.logs import get_logger
from ispd.store.config import StoreConfig
from ispd.store.errors import StoreUnavailable
from ispd.store.postgresql import PgConnection, PostgreSQLConnector, connect, describe, first_line

try:
    import psycopg
    import psycopg.sql
except ImportError:  # connect() says what to install
    psycopg = None  # type: ignore[assignment]

log = get_logger("ispd.store.peer_events")

RETRY_SECONDS = 1.0  # a lost connection is opened again after this
POLL_SECONDS = 0.25  # the listener's wait for notifications between looks at stop()
SEND_WAIT_SECONDS = 1.0  # the sender's long poll of the outbox between looks at stop()
STOP_SECONDS = 1.5  # stop() waits this long for a send or a reconnect under way, then leaves it
MAX_PAYLOAD_BYTES = 7900  # NOTIFY refuses 8000 bytes and more
BATCH_EVENTS = 1000  # events taken from the outbox for one statement
MALFORMED_LOG_SECONDS = 60.0  # at most one warning this often about payloads dropped


class _Failure(Exception):
    """The server could not be reached or failed the statement (the reason as a line)."""


class PeerEventChannel:
    """This bus's bridged events to every other node's on the same database, and theirs to it
    (see the module's docstring). ``start`` raises StoreUnavailable when the server cannot be
    reached then; after that, outages are waited out. ``stop`` is idempotent and returns within
    about two seconds."""

    def __init__(self, config: StoreConfig, bus: EventBus, *, channel: str = "ispd_events") -> None:
        self.config = config
        self.bus = bus
        self.channel = channel
        self.identity = f"ispd {socket.gethostname()} pid {os.getpid()} {secrets.token_hex(6)}"
        self.bridge = EventBridge(bus)
        # Counters.
        self.sent = 0  # events sent
        self.notifications = 0  # payloads sent (events split to fit)
        self.received = 0  # other nodes' events published here
        self.dropped_malformed = 0  # incoming payloads or events that could not be read
        self.dropped_unsent = 0  # events given up: the outbox was full, or one alone exceeds a payload
        self.reconnects = 0  # the listener's connection lost and opened again
        self.missed = 0  # PeerEventsMissed published
        self._seq = 0
        self._missed_to_tell = False
        self._bridge_dropped_seen = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._detach: Any = None
        self._stopping = threading.Event()
        self._guard = threading.Lock()  # the connections: a thread's against stop()
        self._send_conn: PgConnection | None = None
        self._listen_conn: PgConnection | None = None
        self._sender: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self._listener: threading.Thread | None = None
        self._send_down = False
        self._listen_down = False
        self._malformed_logged_at = float("-inf")
        self._stopped = False

    # --- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("the peer event channel was started already")
        if self._stopped:
            raise RuntimeError("the peer event channel was stopped")
        listen_conn = await asyncio.to_thread(self._open_listener)
        try:
            self._send_conn = await asyncio.to_thread(connect, self.config)
        except BaseException:
            listen_conn.close()
            raise
        self._listen_conn = listen_conn
        self._loop = asyncio.get_running_loop()
        self._detach = self.bridge.attach(NODE_EVENTS.values())
        self._listener = threading.Thread(target=self._listen, name="ispd-peer-events", daemon=True)
        self._listener.start()
        self._sender = asyncio.create_task(self._send_loop(), name="ispd-peer-events-sender")
        log.info("peer_events.started", store=describe(self.config), channel=self.channel, identity=self.identity)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._detach is not None:
            self._detach()
            self._detach = None
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        deadline = time.monotonic() + STOP_SECONDS
        sending = self._in_flight is not None and not self._in_flight.done()
        if sending:
            # A send under way ends with its statement (or its connect's timeout) and closes its
            # connection itself once it sees us stopping; we do not wait for it longer.
            assert self._in_flight is not None
            await asyncio.wait([self._in_flight], timeout=STOP_SECONDS)
            sending = not self._in_flight.done()
        if not sending:
            with self._guard:
                conn, self._send_conn = self._send_conn, None
            if conn is not None:
                conn.close()
        listener = self._listener
        if listener is not None:  # it closes its connection as it ends
            await asyncio.to_thread(listener.join, max(0.1, deadline - time.monotonic()))
        listening = listener is not None and listener.is_alive()
        if sending or listening:
            log.warning("peer_events.stop.left_running", sending=sending, listening=listening)
        log.info("peer_events.stopped", sent=self.sent, received=self.received,
                 dropped_malformed=self.dropped_malformed, reconnects=self.reconnects)

    # --- out --------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._send_batches()
            except Exception:  # a bug here must not end the node's sending for good
                log.exception("peer_events.send.failed")
                self._missed_to_tell = True
                await asyncio.sleep(RETRY_SECONDS)

    async def _send_batches(self) -> None:
        pending: list[dict[str, Any]] = []
        while not self._stopping.is_set():
            if not pending:
                pending = await self.bridge.wait_and_take(SEND_WAIT_SECONDS, limit=BATCH_EVENTS)
                if not pending:
                    continue
            self._note_bridge_drops()
            telling = self._missed_to_tell
            payloads, unsendable = self._payloads(pending, telling)
            if payloads:
                self._in_flight = asyncio.get_running_loop().run_in_executor(None, self._send, payloads)
                try:
                    await asyncio.shield(self._in_flight)
                except _Failure as exc:
                    if not self._send_down:
                        self._send_down = True
                        log.warning("peer_events.send.unavailable", store=describe(self.config), error=str(exc),
                                    retry_seconds=RETRY_SECONDS)
                    await asyncio.sleep(RETRY_SECONDS)
                    # What waited and what came meanwhile; the newest at most MAX_QUEUED.
                    pending += self.bridge.take(self.bridge.MAX_QUEUED)
                    excess = len(pending) - self.bridge.MAX_QUEUED
                    if excess > 0:
                        del pending[:excess]
                        self.dropped_unsent += excess
                        self._missed_to_tell = True
                    continue
                if self._send_down:
                    self._send_down = False
                    log.info("peer_events.send.restored", store=describe(self.config))
                if telling:
                    self._missed_to_tell = False
            if unsendable:
                self.dropped_unsent += unsendable
                self._missed_to_tell = True
                log.warning("peer_events.event_too_large", events=unsendable, limit=MAX_PAYLOAD_BYTES)
            self.sent += len(pending) - unsendable
            self.notifications += len(payloads)
            pending = []

    def _note_bridge_drops(self) -> None:
        if self.bridge.dropped != self._bridge_dropped_seen:
            self.dropped_unsent += self.bridge.dropped - self._bridge_dropped_seen
            self._bridge_dropped_seen = self.bridge.dropped
            self._missed_to_tell = True

    def _payloads(self, items: list[dict[str, Any]], missed: bool) -> tuple[list[str], int]:
        """The events as NOTIFY payloads, in order, each under MAX_PAYLOAD_BYTES; and how many
        could not go (one alone too large). ``missed``: the first payload says that events were
        lost before these. ASCII JSON: its length is its size in bytes."""
        payloads: list[str] = []
        unsendable = 0
        chunk: list[str] = []
        size = 0

        def head() -> str:
            self._seq += 1
            flag = ', "missed": true' if missed and not payloads else ""
            return f'{{"from": {json.dumps(self.identity)}, "seq": {self._seq}{flag}, "events": ['

        room = MAX_PAYLOAD_BYTES - 200 - len(json.dumps(self.identity))  # the head and the tail
        for item in items:
            try:
                text = json.dumps(item, separators=(",", ":"), allow_nan=False, default=str)
            except ValueError:  # a NaN or an infinity: no peer could read it (nor JSON say it)
                unsendable += 1
                continue
            if len(text) > room:
                unsendable += 1
                continue
            if chunk and size + len(text) + 1 > room:
                payloads.append(head() + ",".join(chunk) + "]}")
                chunk, size = [], 0
            chunk.append(text)
            size += len(text) + 1
        if chunk:
            payloads.append(head() + ",".join(chunk) + "]}")
        return payloads, unsendable

    def _send(self, payloads: list[str]) -> None:
        """In a thread: one statement for all the payloads, on the sender's connection. One the
        server closed while it idled (a restart, a terminated backend) is replaced at once."""
        with self._guard:
            conn, self._send_conn = self._send_conn, None
        try:
            if conn is None:
                conn = connect(self.config)
            conn = PostgreSQLConnector(self.config).begun(conn, lambda live: self._notify(live, payloads))
        except StoreUnavailable as exc:
            raise _Failure(str(exc)) from None
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()  # (one begun() replaced is closed already: closing again is harmless)
            raise _Failure(first_line(exc)) from None
        with self._guard:
            if not self._stopping.is_set():
                self._send_conn, conn = conn, None
        if conn is not None:
            conn.close()

    def _notify(self, conn: PgConnection, payloads: list[str]) -> None:
        if self._stopping.is_set():  # (the daemon may have let the store go: the news is no longer its to tell)
            return
        # In the array's order: a function scan yields its rows in order, one transaction keeps it.
        conn.raw.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (self.channel, payloads))

    # --- in ---------------------------------------------------------------------------------

    def _open_listener(self) -> PgConnection:
        conn = connect(self.config)
        try:
            conn.raw.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self.channel)))
        except psycopg.Error as exc:
            conn.close()
            raise StoreUnavailable(f"cannot listen on {describe(self.config)}: {first_line(exc)}") from None
        return conn

    def _listen(self) -> None:
        """The listener's thread: notifications to the loop until stop(); a lost connection
        opened again every RETRY_SECONDS, then PeerEventsMissed. It closes its connection as it
        ends."""
        conn = self._listen_conn
        try:
            while not self._stopping.is_set():
                if conn is None:
                    try:
                        conn = self._open_listener()
                    except StoreUnavailable:
                        self._stopping.wait(RETRY_SECONDS)
                        continue
                    self._listen_conn = conn
                    self.reconnects += 1
                    self._listen_down = False
                    log.info("peer_events.listen.restored", store=describe(self.config))
                    if not self._to_loop(self._peer_events_missed):
                        return
                try:
                    for notify in conn.raw.notifies(timeout=POLL_SECONDS):
                        if not self._to_loop(self._incoming, notify.payload):
                            return
                        if self._stopping.is_set():
                            break
                except Exception as exc:  # the server's error, or anything else: listen anew
                    if not isinstance(exc, psycopg.Error):
                        log.exception("peer_events.listen.failed")
                    self._listen_conn = None
                    conn.close()
                    conn = None
                    if self._stopping.is_set():
                        return
                    if not self._listen_down:
                        self._listen_down = True
                        log.warning("peer_events.listen.lost", store=describe(self.config), error=first_line(exc),
                                    retry_seconds=RETRY_SECONDS)
                    self._stopping.wait(RETRY_SECONDS)
        finally:
            self._listen_conn = None
            if conn is not None:
                conn.close()

    def _to_loop(self, callback: Any, *args: Any) -> bool:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody to tell any more
            return False
        return True

    def _peer_events_missed(self) -> None:
        if self._stopped:
            return
        self.missed += 1
        self.bus.publish(PeerEventsMissed(at=time.time()))

    def _incoming(self, payload: str) -> None:
        """On the loop: one notification's events published, unless it is ours or unreadable."""
        if self._stopped:
            return
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if not (isinstance(data, dict) and isinstance(data.get("from"), str) and isinstance(data.get("events"), list)):
            self._malformed(1, payload)
            return
        if data["from"] == self.identity:
            return
        events = data["events"]
        if data.get("missed") is True:
            self._peer_events_missed()
        delivered = self.bridge.deliver(events)
        self.received += delivered
        if delivered < len(events):
            self._malformed(len(events) - delivered, payload)

    def _malformed(self, count: int, payload: str) -> None:
        self.dropped_malformed += count
        now = time.monotonic()
        if now - self._malformed_logged_at >= MALFORMED_LOG_SECONDS:
            self._malformed_logged_at = now
            log.warning("peer_events.malformed", dropped_total=self.dropped_malformed, payload=payload[:120])
