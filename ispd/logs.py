"""Logging: structlog, JSON lines for machines, a readable console for people.

One event name per thing that happens (``dhcp.lease.granted``); context is bound per request.
Secrets never reach the output: the redaction processor masks any field whose name says it
holds one, whatever the caller passed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, MutableMapping
from typing import Any, ClassVar, Literal, TextIO

import structlog

from ispd.configtypes import Section

LogLevel = Literal["debug", "info", "warning", "error"]


class LogConfig(Section):
    level: LogLevel = "info"
    # auto: JSON lines when the output is not a terminal (journald, files), console otherwise.
    format: Literal["auto", "json", "console"] = "auto"


_SECRET_FIELD_MARKERS = ("password", "secret", "token", "passphrase", "credential", "nt_hash")


def redact_secrets(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        lowered = key.lower()
        if any(marker in lowered for marker in _SECRET_FIELD_MARKERS):
            event[key] = "***"
    return event


class _Escaped:
    """A text the console renders escaped (``repr``), quoted as it quotes one with a space."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return repr(self.text)

    __str__ = __repr__  # (the event's column takes str)


def escape_control_characters(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """For the console: a value a client chose (a hostname, a login, a path) is written with its
    control characters escaped, as the JSON renderer does. The console renderer writes a string
    as it is unless it holds a space or a line end, so an ESC sequence in a login reached the
    terminal of whoever read the log (cleared it, retitled it, hid text with backspaces), and a
    right-to-left override turned the rest of the line around."""
    for key, value in event.items():
        if key == "exception" and isinstance(value, str):  # a traceback keeps its lines
            event[key] = "".join(c if c.isprintable() or c == "\n" else repr(c)[1:-1] for c in value)
        elif isinstance(value, str) and not value.isprintable():
            event[key] = _Escaped(value)
    return event


def _lost_line(count: int, as_json: bool) -> str:
    if as_json:
        return json.dumps({"event": "log.lines_lost", "count": count, "level": "warning"}) + "\n"
    return f"[warning  ] log.lines_lost                 count={count}\n"


class LossyOutput:
    """The log's output, which never raises: a full disk or a closed pipe under the log must not
    fail the store's commit, an SMTP reply or an IMAP session that happened to log something
    (the write raised into the caller). Lines that cannot be written are counted, and the first
    line that can says how many were lost.

    Each whole line goes to the stream's descriptor in one write, not through its buffer: a
    buffered stream takes a line and fails at the flush, where the lines it drops can no longer
    be told apart (and print writes a line and its end apart, which must not leave a lone end
    behind). A stream without a descriptor (a test's) is written as it is.

    ``background``: the lines go to a ``LogWriter`` thread instead, so that an output that does
    not take them (a stalled journald, ``ispd run | less`` paused) never stops the caller: the
    daemon's event loop blocked in the write once the pipe's 64 KiB were full, and with it every
    service. The command-line tools write in the caller, where a line must come out before the
    error message printed after it."""

    def __init__(self, out: TextIO, as_json: bool, background: bool = False) -> None:
        self.out = out
        self.as_json = as_json
        self.lost = 0  # lines lost since the last line written
        self._line = ""  # the start of a line not ended yet
        self._lock = threading.Lock()  # (the store's writer thread logs too)
        with contextlib.suppress(OSError, ValueError):
            out.flush()  # what was written to it before goes first
        try:
            self._fd: int | None = out.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
            self._fd = None
        self._encoding = getattr(out, "encoding", None) or "utf-8"
        self.writer = LogWriter.for_descriptor(self._fd, as_json) if background and self._fd is not None else None

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._line = (self._line + text).split("\n")
            for line in lines:
                if self.writer is not None:
                    self.writer.put(self._encode(line + "\n"))
                else:
                    self._emit(line + "\n")
        return len(text)

    def _emit(self, line: str) -> None:
        try:
            if self.lost:
                self._put(_lost_line(self.lost, self.as_json))
                self.lost = 0
            self._put(line)
        except (OSError, ValueError):  # ValueError: the stream is closed
            self.lost += 1

    def _encode(self, text: str) -> bytes:
        return text.encode(self._encoding, "backslashreplace")

    def _put(self, text: str) -> None:
        if self._fd is None:
            self.out.write(text)
            self.out.flush()
            return
        _write_all(self._fd, self._encode(text))

    def flush(self) -> None:
        pass  # (every line is written whole as it ends, or handed to the writer)

    def isatty(self) -> bool:
        return self.out.isatty()


def _write_all(fd: int, data: bytes, room: select.poll | None = None) -> None:
    """``room``: on a descriptor that is non-blocking (O_NONBLOCK is the open file's, which
    another process sharing it may set), wait with it for the room a blocking write waits for,
    rather than fail with EAGAIN."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            if room is None:
                raise
            room.poll()


class LogWriter:
    """Writes a descriptor's log lines without ever blocking the caller, one per descriptor (a
    reload's new ``LossyOutput`` hands its lines to the same one, so they stay in order). A line
    the output can take now (``poll``: room for it) is written at once by the caller, as before;
    once the output is full, lines wait in a queue of at most ``MAX_PENDING_BYTES`` for a thread
    that writes them as the output takes them, and every line after waits its turn behind them
    until the queue is empty again. Past the bound, lines are dropped and counted, as lines the
    output refuses are, and the first line written after says how many were lost. Queued lines
    go out together in writes of at most ``PIPE_BUF`` bytes, which a pipe shared with the worker
    processes takes whole (a longer line alone). At exit, what is still queued is given
    ``EXIT_DRAIN_SECONDS`` to go out: the last lines say why the daemon stopped."""

    MAX_PENDING_BYTES = 4 << 20
    EXIT_DRAIN_SECONDS = 3.0
    _by_file: ClassVar[dict[tuple[int, int, int], LogWriter]] = {}
    _registry_lock = threading.Lock()

    def __init__(self, fd: int, as_json: bool) -> None:
        self.fd = fd
        self.as_json = as_json
        self._room = select.poll()
        self._room.register(fd, select.POLLOUT)
        self._thread_room = select.poll()  # (the thread's own: one poll object polls in one thread at a time)
        self._thread_room.register(fd, select.POLLOUT)
        self._lines: deque[bytes] = deque()
        self._pending_bytes = 0
        self._lost = 0  # dropped from a full queue or refused by the output, not told yet
        self._writing = False  # the thread is writing lines it took from the queue
        self._changed = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    @classmethod
    def for_descriptor(cls, fd: int, as_json: bool) -> LogWriter:
        try:
            status = os.fstat(fd)
            key = (fd, status.st_dev, status.st_ino)  # (a descriptor number reused for another file)
        except OSError:
            key = (fd, -1, -1)
        with cls._registry_lock:
            writer = cls._by_file.get(key)
            if writer is None:
                writer = cls._by_file[key] = cls(fd, as_json)
                atexit.register(writer.drain, cls.EXIT_DRAIN_SECONDS)
            writer.as_json = as_json
            return writer

    def put(self, line: bytes) -> None:
        with self._changed:
            # (Not with lines lost to tell of: told with it, the write could be longer than the room
            # poll promises, a page. An error or a hang-up polls ready too: that write fails at once.)
            if not self._lines and not self._writing and not self._lost and len(line) <= select.PIPE_BUF \
                    and self._room.poll(0):
                self._lost = self._write([line], 0)
                return
            if self._pending_bytes + len(line) > self.MAX_PENDING_BYTES:
                self._lost += 1
                return
            self._lines.append(line)
            self._pending_bytes += len(line)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ispd-log-writer", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until every queued line is written (or lost); False if ``timeout`` ran out first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._lines and not self._writing, timeout)

    def _write(self, batch: list[bytes], lost: int, room: select.poll | None = None) -> int:
        """Write ``batch``, after a line telling of ``lost``; returns how many are lost now."""
        told = [_lost_line(lost, self.as_json).encode()] if lost else []
        try:
            _write_all(self.fd, b"".join(told + batch), room)
        except OSError:  # a closed pipe, a full disk: counted, never raised
            return lost + len(batch)
        return 0

    def _run(self) -> None:
        while True:
            with self._changed:
                self._writing = False
                self._changed.notify_all()
                self._changed.wait_for(lambda: bool(self._lines))
                self._writing = True
                first = self._lines.popleft()
                batch, size = [first], len(first)
                while self._lines and size + len(self._lines[0]) <= select.PIPE_BUF:
                    batch.append(self._lines.popleft())
                    size += len(batch[-1])
                self._pending_bytes -= size
                lost, self._lost = self._lost, 0
            lost = self._write(batch, lost, self._thread_room)  # (the only write while the queue is not empty)
            if lost:
                with self._changed:
                    self._lost += lost


def configure_logging(config: LogConfig, stream: TextIO | None = None, *, background: bool = False) -> None:
    """(Re)configure structlog; safe to call again on reload to change the level or format.
    ``background``: written by a thread, never blocking the caller (the daemon's processes)."""
    given = stream if stream is not None else sys.stdout
    if isinstance(given, LossyOutput):
        given = given.out
    as_json = config.format == "json" or (config.format == "auto" and not given.isatty())
    out: Any = LossyOutput(given, as_json, background)
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    escaping: list[Any] = [] if as_json else [escape_control_characters]  # (JSON escapes them itself)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            *escaping,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, config.level.upper())),
        logger_factory=structlog.WriteLoggerFactory(out),  # (a line and its end in one write)
        cache_logger_on_first_use=False,
    )
    # The libraries' own warnings and errors (asyncio, aiosmtpd, aioquic, ...) go through the
    # stdlib: rendered the same way, one JSON line each, rather than as Python's bare text.
    handler = logging.StreamHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                           structlog.processors.TimeStamper(fmt="iso", utc=True), redact_secrets,
                           structlog.processors.format_exc_info],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *escaping, renderer]))
    root = logging.getLogger()
    root.handlers = [handler]
    logging.captureWarnings(True)  # (a library's DeprecationWarning and the like: a log line too)
    root.setLevel(max(logging.WARNING, getattr(logging, config.level.upper())))
    # aiosmtpd warns of every command a client gets wrong ("unrecognised: XYZZY"): the client's
    # mistake, answered and counted in ispd_mail_smtp_refusals_total, not the operator's business.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    # aioquic warns of every connection its peer breaks the rules on ("Error: 376, reason: No
    # common ALPN protocols", a bad TLS message, a stream over the limit): one line per failed DoQ
    # or HTTP/3 handshake, as many as a client cares to start, where DoT's are counted and not
    # logged. The failed handshakes are counted (ispd_dns_transport_handshake_failures_total).
    logging.getLogger("quic").setLevel(logging.ERROR)
    # asyncio's and uvloop's transports log a line for every write after the peer has gone (past
    # the fifth): a DoT client that pipelines queries and leaves without reading got one per
    # reply still being answered, 170,000 lines in a soak review. The write is dropped either
    # way, as a reply to a client gone is; a client's leaving is not the operator's business.
    drop_messages("asyncio", ("SSL connection is closed", "socket.send() raised exception."))


class DroppedMessages(logging.Filter):
    """Drops a library's log records whose message is one of ``messages``, and only those."""

    def __init__(self, messages: frozenset[str]) -> None:
        super().__init__()
        self.messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.messages


def drop_messages(logger_name: str, messages: Iterable[str]) -> None:
    """Leave these messages of a library's logger out of the log; once per logger and set of
    messages, however often it is asked (each reload)."""
    logger, wanted = logging.getLogger(logger_name), frozenset(messages)
    if not any(isinstance(f, DroppedMessages) and f.messages == wanted for f in logger.filters):
        logger.addFilter(DroppedMessages(wanted))


class ThrottledMessages(logging.Filter):
    """Lets each of a library's messages in ``messages`` through once per ``interval`` seconds
    (its other messages always)."""

    def __init__(self, messages: frozenset[str], interval: float) -> None:
        super().__init__()
        self.messages = messages
        self.throttle = LogThrottle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.messages or self.throttle.due(record.msg, time.monotonic())


def throttle_messages(logger_name: str, messages: Iterable[str], interval: float) -> None:
    """These messages of a library's logger at most once per ``interval`` seconds each; once per
    logger and set of messages, however often it is asked."""
    logger, wanted = logging.getLogger(logger_name), frozenset(messages)
    if not any(isinstance(f, ThrottledMessages) and f.messages == wanted for f in logger.filters):
        logger.addFilter(ThrottledMessages(wanted, interval))


class LogThrottle:
    """Whether a repeated warning is due: once per ``interval`` seconds for each key (a source,
    an interface), so that a flood of bad packets cannot flood the log too. Bounded: past
    ``max_keys`` keys (very many sources) it forgets them all and starts over. A ``now`` before
    the key's last line (the wall clock stepped back) is due: it must not keep the key quiet
    for the length of the step."""

    def __init__(self, interval: float, max_keys: int = 10_000) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[Hashable, float] = {}

    def due(self, key: Hashable, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self.interval:
            return False
        if len(self._last) > self.max_keys:
            self._last.clear()
        self._last[key] = now
        return True


class LogBudget:
    """At most ``lines`` lines per ``interval`` seconds for each key (a reason): a per-source
    ``LogThrottle`` lets a flood whose every datagram has another (forged) source write a line
    per datagram. ``take`` says how many were held back since the last line let through, for
    that line to tell. Keys should come from a closed set (they are never forgotten). As
    ``LogThrottle``, a ``now`` before the window began (the wall clock stepped back) starts a
    new window."""

    def __init__(self, lines: int, interval: float) -> None:
        self.lines = lines
        self.interval = interval
        self._windows: dict[Hashable, list[float]] = {}  # key → [start, lines written, held back]

    def take(self, key: Hashable, now: float, amount: int = 1) -> int | None:
        """None: no line now (``amount`` is held back); else the number held back before it."""
        window = self._windows.get(key)
        if window is None or not 0 <= now - window[0] < self.interval:
            self._windows[key] = [now, 1, 0]
            return int(window[2]) if window is not None else 0
        if window[1] < self.lines:
            window[1] += 1
            held, window[2] = int(window[2]), 0
            return held
        window[2] += amount
        return None


class RepeatedFailure:
    """One line per outage, not per request: while a failure repeats (every write while the
    store's server is down), a line is due at its first occurrence, when its error changes, and
    once per ``interval`` seconds after that; ``failed`` says how many were held back since the
    last line let through, for that line to tell. ``ended`` closes the outage (the next success):
    how many failed in all and for how long, for one line saying it is over; None when nothing
    was failing. ``now`` is monotonic."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._error: str | None = None
        self._since = self._logged = 0.0
        self._count = self._held = 0

    @property
    def failing(self) -> bool:
        return self._error is not None

    def failed(self, error: str, now: float) -> int | None:
        """None: no line now; else the number held back before this one."""
        if self._error is None:
            self._since, self._count, self._held = now, 0, 0
        self._count += 1
        if error != self._error or not 0 <= now - self._logged < self.interval:
            self._error, self._logged = error, now
            held, self._held = self._held, 0
            return held
        self._held += 1
        return None

    def ended(self, now: float) -> tuple[int, float] | None:
        if self._error is None:
            return None
        self._error = None
        return self._count, max(0.0, now - self._since)


def get_logger(name: str) -> Any:
    # A lazy proxy (not .bind()) so that a reload's new level or format reaches loggers made earlier.
    return structlog.get_logger(component=name)
