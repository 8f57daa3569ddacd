"""The control socket: admin commands into the running daemon (like unbound-control).

Some state lives only inside the daemon's process — the DNS caches now, RADIUS sessions and the
mail queue later — so the admin CLI reaches it over a Unix stream socket
(``[daemon] control_socket``, mode 0600: whoever can connect can flush caches and will be able to
disconnect sessions; root and the daemon's own user only).

Commands
--------
Services register named commands in ``ControlCommands`` (``context.control``) when they start,
and unregister them through their exit stack when they stop, so a command exists exactly while
its service runs. A command is either

- plain: ``async handler(args) -> result``, where the result is anything JSON can carry; or
- streaming: ``handler(args) -> iterable of batches of lines``, for output that may be large
  (a dump of a cache of hundreds of MB). The server writes a batch, waits for the client to take
  it (``drain()``: the client's reading speed bounds the daemon's memory) and yields to the event
  loop before asking for the next, so the handler decides how much work one step does and
  queries keep being served in between.

A handler refuses bad arguments with ``CommandError``, whose text goes to the operator as it is.

Protocol (one request per connection, JSON text, one object per line)
---------------------------------------------------------------------
request   ``{"command": "dns.cache.flush", "args": {...}}`` and a newline; at most
          ``MAX_REQUEST_BYTES`` and sent within ``REQUEST_TIMEOUT_SECONDS``.
reply     plain: ``{"ok": true, "result": ...}``;
          streaming: ``{"line": "..."}`` per line, then ``{"ok": true}``;
          either: ``{"ok": false, "error": "what went wrong", "code": "..."}`` (codes:
          ``bad_request``, ``unknown_command``, ``standby``, ``refused``, ``internal``, ``busy``;
          ``standby``: a command no service here offers, sent to a hot standby, whose services
          run on the active node) — also after
          some lines, when a stream fails part way.
          Then the server closes the connection.

Nothing a client does can hurt the daemon: bad JSON, an unknown command, an oversized request or
a silent client get an error line (if they are still listening) and the connection is closed; a
client that stops reading is dropped after ``WRITE_TIMEOUT_SECONDS``; a client gone mid-stream
ends the stream; a handler's own bug is logged with its traceback and answered ``internal``. At
most ``MAX_CONNECTIONS`` are served at once.

The socket file
---------------
At start a leftover file from a daemon that crashed (connecting is refused) is replaced; a file
that accepts a connection belongs to a live daemon, and this one refuses to start rather than
steal its socket. The socket is bound, chmod-ed to 0600 and only then listened on, so no one
connects through the wider mode of the moment between. At stop the file is removed, unless it
has been replaced meanwhile (it is not ours any more). Path names are limited to 107 bytes by
the kernel (``sun_path``).

Deliberately not here: authentication beyond the file mode (peer credentials are logged, not
checked), TCP or TLS access, several requests per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ispd.logs import get_logger

log = get_logger("ispd.control")

MAX_REQUEST_BYTES = 64 * 1024
REQUEST_TIMEOUT_SECONDS = 10.0  # a client sends its request at once
WRITE_TIMEOUT_SECONDS = 30.0  # a client that reads nothing for this long is dropped
MAX_CONNECTIONS = 16
MAX_PATH_BYTES = 107  # sizeof(sun_path) - 1 on Linux
CLIENT_LINE_LIMIT = 64 * 1024 * 1024  # the largest reply line the client accepts
CLIENT_TIMEOUT_SECONDS = 60.0

PlainHandler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], Iterable[Sequence[str]]]


class CommandError(Exception):
    """A command refused (bad arguments, nothing to act on); str() is shown to the operator."""


class ControlSocketError(Exception):
    """The control socket cannot be opened (in use by a live daemon, no permission, ...)."""


class ControlError(Exception):
    """The daemon answered a request with an error, or the exchange failed; str() says what."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class ControlUnreachable(ControlError):
    """No daemon answers at the control socket's path (not running, wrong path, no permission)."""


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    plain: PlainHandler | None = None
    stream: StreamHandler | None = None


class ControlCommands:
    """The registry of commands the running services offer."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        # Set while the daemon stands by (who holds the store): an unknown command is then
        # refused as the active node's, not as a service this config does not enable.
        self.standby_for: str | None = None

    def register(self, name: str, handler: PlainHandler) -> Callable[[], None]:
        """Offer ``name``; the returned callable takes it back (push it onto the exit stack)."""
        return self._add(Command(name, plain=handler))

    def register_stream(self, name: str, handler: StreamHandler) -> Callable[[], None]:
        return self._add(Command(name, stream=handler))

    def _add(self, command: Command) -> Callable[[], None]:
        if command.name in self._commands:
            raise ValueError(f"control command {command.name!r} is already registered")
        self._commands[command.name] = command

        def unregister() -> None:
            if self._commands.get(command.name) is command:
                del self._commands[command.name]

        return unregister

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def names(self) -> list[str]:
        return sorted(self._commands)


class _Refused(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    except (OSError, AttributeError, struct.error):
        return None
    return int(uid)


def _check_path_length(path: Path, what: str = "the control socket") -> None:
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise ControlSocketError(f"{what}'s path {path} is {len(os.fsencode(path))} bytes long; a Unix "
                                 f"socket's path can have at most {MAX_PATH_BYTES}")


async def open_private_socket(path: Path, what: str, setting: str) -> tuple[socket.socket, tuple[int, int]]:
    """A listening Unix socket at ``path`` with mode 0600, and the (st_dev, st_ino) of its file.
    A leftover file nobody answers on is replaced; one a live process answers on is refused."""
    _check_path_length(path, what)
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    except OSError as exc:
        raise ControlSocketError(f"cannot create the directory of {what} {path.parent}: {_strerror(exc)}") from None
    await _remove_stale(path, what, setting)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Before listen(): until then a connect is refused, whatever the mode bind gave the file.
        os.chmod(path, 0o600)
        info = os.stat(path)
        sock.listen(64)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot listen on {what} {path}: {_strerror(exc)}") from None
    return sock, (info.st_dev, info.st_ino)


def remove_own_socket(path: Path, identity: tuple[int, int]) -> None:
    """Remove the socket file at ``path`` if it is still the one we bound (not a newer daemon's)."""
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)


async def _remove_stale(path: Path, what: str, setting: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ControlSocketError(f"cannot look at {what} {path}: {_strerror(exc)}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; remove it or set another {setting}")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2.0)
    except (ConnectionRefusedError, FileNotFoundError):
        # A daemon that crashed (or was killed) left it behind: nobody listens on it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        log.info("control.stale_socket_removed", path=str(path))
        return
    except (OSError, TimeoutError) as exc:
        reason = _strerror(exc) if isinstance(exc, OSError) else "no answer within 2 s"
        raise ControlSocketError(f"{what} {path} exists and cannot be checked ({reason}); is another ispd "
                                 f"running? Stop it, or set another {setting}") from None
    writer.close()
    # Only "if it serves another store": an ispd from before the store lock (2026-12-05) on this
    # same store is found here alone, and another socket would let both write one store.
    raise ControlSocketError(f"another ispd is running: it answers on {what} {path}. Stop it first; if it "
                             f"serves another store, give this one its own {setting}")


class ControlServer:
    def __init__(self, path: Path, commands: ControlCommands) -> None:
        self.path = path
        self.commands = commands
        self._server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we bound
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False

    # --- lifecycle

    async def start(self) -> None:
        self._closing = False
        sock, self._identity = await open_private_socket(self.path, "the control socket", "[daemon] control_socket")
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST_BYTES)
        log.info("control.listening", path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._closing = True
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2)
        if self._identity is not None:
            remove_own_socket(self.path, self._identity)
            self._identity = None

    # --- one connection

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        name = ""
        started = time.monotonic()
        try:
            if len(self._connections) > MAX_CONNECTIONS:
                raise _Refused(f"too many control connections (at most {MAX_CONNECTIONS}); try again", "busy")
            request = await self._read_request(reader)
            if request is None:
                return  # connected and went away (e.g. another daemon checking for a live one)
            name, args = request
            command = self.commands.get(name)
            if command is None:
                if self.commands.standby_for is not None:
                    raise _Refused(f"this ispd is a standby: {self.commands.standby_for} holds the store and runs "
                                   f"its services; run {name!r} on that node", "standby")
                raise _Refused(f"unknown command {name!r}", "unknown_command")
            # Each argument its own field, so the log's redaction masks any whose name marks a secret.
            # The main process's own traffic with its workers (health, metrics, events) is not
            # an operator's command: kept out of the log unless debugging.
            (log.debug if name.startswith("worker.") else log.info)(
                "control.command", command=name, uid=_peer_uid(writer),
                **{f"arg_{key}": value for key, value in list(args.items())[:20]})
            if command.plain is not None:
                result = await command.plain(args)
                await self._send(writer, _encode({"ok": True, "result": result}))
            else:
                assert command.stream is not None
                await self._stream(writer, command.stream(args))
            log.debug("control.command.done", command=name, seconds=round(time.monotonic() - started, 3))
        except _Refused as exc:
            log.info("control.command.refused", command=name or None, error=str(exc), code=exc.code)
            await self._send_error(writer, str(exc), exc.code)
        except CommandError as exc:
            log.info("control.command.refused", command=name, error=str(exc), code="refused")
            await self._send_error(writer, str(exc), "refused")
        except (ConnectionError, TimeoutError) as exc:
            # The client went away or stopped reading: nothing to tell it.
            log.info("control.client.gone", command=name or None, error=type(exc).__name__)
        except Exception:
            log.error("control.command.failed", command=name, exc_info=True)
            await self._send_error(writer, f"internal error in {name!r} (see the daemon's log)", "internal")
        except asyncio.CancelledError:
            # Closing with a command in hand (a worker's long poll for events, as its daemon
            # stops): the client sees the connection close. Raised on, the cancellation would be
            # logged by asyncio's streams as an error with a traceback.
            if not self._closing:
                raise
        finally:
            writer.close()
            self._connections.discard(task)

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, dict[str, Any]] | None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                raw = await reader.readline()
        except TimeoutError:
            raise _Refused(f"no complete request within {REQUEST_TIMEOUT_SECONDS:g} s", "bad_request") from None
        except ValueError:  # the line outgrew the reader's limit
            raise _Refused(f"request larger than {MAX_REQUEST_BYTES} bytes", "bad_request") from None
        if not raw.strip():
            return None
        try:
            request = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise _Refused("request is not JSON: send one object, "
                           '{"command": "...", "args": {...}}, on one line', "bad_request") from None
        except RecursionError:  # "[" nested a thousand deep: no command takes that
            raise _Refused("request is nested too deeply", "bad_request") from None
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            raise _Refused('request must be a JSON object with a "command" string', "bad_request")
        args = request.get("args", {})
        if not isinstance(args, dict):
            raise _Refused('"args" must be a JSON object', "bad_request")
        return request["command"], args

    async def _stream(self, writer: asyncio.StreamWriter, batches: Iterable[Sequence[str]]) -> None:
        iterator = iter(batches)
        try:
            for batch in iterator:
                if batch:
                    writer.write(b"".join(_encode({"line": line}) for line in batch))
                    await self._drain(writer)
                await asyncio.sleep(0)  # let the loop serve queries between batches, drained or not
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # a generator: run its cleanup now, not whenever it is collected
                close()
        await self._send(writer, _encode({"ok": True}))

    async def _send(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await self._drain(writer)

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        if writer.is_closing():
            raise ConnectionResetError("the client closed the connection")
        async with asyncio.timeout(WRITE_TIMEOUT_SECONDS):
            await writer.drain()

    async def _send_error(self, writer: asyncio.StreamWriter, message: str, code: str) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            await self._send(writer, _encode({"ok": False, "error": message, "code": code}))


def _strerror(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


# --- the client side (the admin CLI)


async def control_request(path: Path | str, command: str, args: dict[str, Any] | None = None, *,
                          on_line: Callable[[str], None] | None = None,
                          wait_seconds: float = CLIENT_TIMEOUT_SECONDS) -> Any:
    """Send one command to the daemon at ``path`` and return its result. A streaming command's
    lines go to ``on_line`` as they arrive (without it, they are collected and returned as a
    list). Raises ``ControlUnreachable`` when no daemon answers there and ``ControlError`` when
    the daemon refuses (``.code`` says why) or the exchange breaks; ``wait_seconds`` bounds each wait
    for the daemon, not the whole exchange."""
    path = Path(path)
    try:
        _check_path_length(path)
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path), limit=CLIENT_LINE_LIMIT),
                                                wait_seconds)
    except PermissionError:
        raise ControlUnreachable(f"cannot reach the ispd daemon at {path}: permission denied (the control socket is "
                                 "for root and the daemon's own user)") from None
    except (OSError, TimeoutError, ControlSocketError) as exc:
        reason = (_strerror(exc) if isinstance(exc, OSError) else "no answer in time" if isinstance(exc, TimeoutError)
                  else str(exc))
        raise ControlUnreachable(f"cannot reach the ispd daemon at {path}: is it running? ({reason})") from None
    collected: list[str] = []
    deliver = on_line if on_line is not None else collected.append
    try:
        await _exchange_send(writer, path, {"command": command, "args": args or {}})
        while True:
            message = await _exchange_read(reader, path, wait_seconds)
            if "line" in message:
                deliver(str(message["line"]))  # outside the exchange's error handling: a closed stdout is the caller's
                continue
            if message.get("ok"):
                return message.get("result", collected if on_line is None else None)
            error = str(message.get("error", "the daemon refused the command"))
            raise ControlError(error, str(message.get("code", "")))
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _exchange_send(writer: asyncio.StreamWriter, path: Path, message: dict[str, Any]) -> None:
    try:
        writer.write(_encode(message))
        await writer.drain()
    except ConnectionError as exc:
        raise ControlError(f"the exchange with the daemon at {path} broke: {_strerror(exc)}") from None


async def _exchange_read(reader: asyncio.StreamReader, path: Path, wait_seconds: float) -> dict[str, Any]:
    try:
        async with asyncio.timeout(wait_seconds):
            raw = await reader.readline()
        if not raw.endswith(b"\n"):
            raise ControlError("the daemon closed the connection before answering (see its log)")
        message = json.loads(raw)
    except TimeoutError:
        raise ControlError(f"the daemon did not answer within {wait_seconds:g} s") from None
    except ConnectionError as exc:
        raise ControlError(f"the exchange with the daemon at {path} broke: {_strerror(exc)}") from None
    except ValueError as exc:  # a reply line too long, or not JSON
        raise ControlError(f"the daemon at {path} sent what is not a reply ({exc})") from None
    if not isinstance(message, dict):
        raise ControlError(f"the daemon at {path} sent what is not a reply (not a JSON object)")
    return message
