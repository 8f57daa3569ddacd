"""The control socket (ispd/control.py): commands, streaming, and everything a client can get wrong."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvloop

from ispd import control
from ispd.control import (
    CommandError,
    ControlCommands,
    ControlError,
    ControlServer,
    ControlSocketError,
    ControlUnreachable,
    control_request,
)


async def echo(args: dict[str, Any]) -> Any:
    return {"echo": args}


async def refuse(args: dict[str, Any]) -> Any:
    raise CommandError("no such name: 'x.example.'")


async def crash(args: dict[str, Any]) -> Any:
    raise RuntimeError("a bug")


def counting(args: dict[str, Any]) -> Iterator[Sequence[str]]:
    for batch in range(int(args.get("batches", 3))):
        yield [f"{batch}.{i}" for i in range(int(args.get("size", 2)))]


def commands() -> ControlCommands:
    registry = ControlCommands()
    registry.register("test.echo", echo)
    registry.register("test.refuse", refuse)
    registry.register("test.crash", crash)
    registry.register_stream("test.count", counting)
    return registry


@asynccontextmanager
async def serving(path: Path, registry: ControlCommands | None = None) -> AsyncIterator[ControlServer]:
    server = ControlServer(path, registry if registry is not None else commands())
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def raw_exchange(path: Path, data: bytes, *, shut_write: bool = True) -> list[dict[str, Any]]:
    """Send ``data`` as it is; every reply line until the server closes."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    if shut_write:
        writer.write_eof()
    replies = [json.loads(line) for line in (await asyncio.wait_for(reader.read(), 10)).splitlines()]
    writer.close()
    return replies


# Plain file operations, kept out of the async tests (they are instant on tmpfs, but the linter
# cannot know that).
def exists(path: Path) -> bool:
    return path.exists()


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def read_text(path: Path) -> str:
    return path.read_text()


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "control.sock"


# --- commands


async def test_round_trip(sock: Path) -> None:
    async with serving(sock):
        assert await control_request(sock, "test.echo", {"a": [1, "x"]}) == {"echo": {"a": [1, "x"]}}
        assert await control_request(sock, "test.echo") == {"echo": {}}


async def test_streaming_sends_every_line_then_ok(sock: Path) -> None:
    async with serving(sock):
        seen: list[str] = []
        assert await control_request(sock, "test.count", {"batches": 3, "size": 2}, on_line=seen.append) is None
        assert seen == ["0.0", "0.1", "1.0", "1.1", "2.0", "2.1"]
        # Without on_line the lines come back as the result.
        assert await control_request(sock, "test.count", {"batches": 2, "size": 1}) == ["0.0", "1.0"]
        assert await raw_exchange(sock, b'{"command": "test.count", "args": {"batches": 1, "size": 1}}\n') == [
            {"line": "0.0"}, {"ok": True}]


async def test_the_loop_turns_between_batches(sock: Path) -> None:
    ticks: list[int] = []
    seen_at_batch: list[int] = []

    def stream(args: dict[str, Any]) -> Iterator[Sequence[str]]:
        for i in range(20):
            seen_at_batch.append(len(ticks))
            yield [] if i % 2 else [str(i)]  # empty batches too: a scan that found nothing yet

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0)

    registry = ControlCommands()
    registry.register_stream("test.stream", stream)
    async with serving(sock, registry):
        task = asyncio.create_task(ticker())
        try:
            lines = await control_request(sock, "test.stream")
        finally:
            task.cancel()
    assert lines == [str(i) for i in range(0, 20, 2)]
    # Between any two batches, other tasks ran.
    assert all(b > a for a, b in itertools.pairwise(seen_at_batch)), seen_at_batch


async def test_a_big_stream_is_paced_by_the_reader(sock: Path) -> None:
    """A million lines, written only as fast as the client takes them."""
    produced = []

    def big(args: dict[str, Any]) -> Iterator[Sequence[str]]:
        for batch in range(1000):
            produced.append(batch)
            yield [f"line {batch}.{i} " + "x" * 60 for i in range(1000)]

    registry = ControlCommands()
    registry.register_stream("test.big", big)
    async with serving(sock, registry):
        reader, writer = await asyncio.open_unix_connection(str(sock), limit=1 << 20)
        writer.write(b'{"command": "test.big"}\n')
        await reader.readline()
        await asyncio.sleep(0.3)
        # The client has read one line: the server is held back by the socket buffers, far from done.
        assert len(produced) < 100, len(produced)
        count = 1
        while line := await reader.readline():
            count += 1
            last = line
        assert json.loads(last) == {"ok": True}
        assert count == 1000 * 1000 + 1
        writer.close()


async def test_unknown_command(sock: Path) -> None:
    async with serving(sock):
        with pytest.raises(ControlError) as caught:
            await control_request(sock, "dns.cache.frobnicate")
        assert (str(caught.value), caught.value.code) == ("unknown command 'dns.cache.frobnicate'", "unknown_command")


async def test_a_standby_refuses_the_active_node_s_commands_as_such(sock: Path) -> None:
    """RADIUS and mail run on the active node only: a standby asked for their commands says who
    holds the store, rather than "unknown command" (the CLI's "is [radius] enabled?")."""
    registry = commands()
    registry.standby_for = "ispd db1 pid 42"
    async with serving(sock, registry):
        assert await control_request(sock, "test.echo", {"x": 1}) == {"echo": {"x": 1}}  # what runs here still answers
        with pytest.raises(ControlError) as caught:
            await control_request(sock, "radius.session.disconnect", {"session_id": 1})
        assert caught.value.code == "standby"
        assert str(caught.value) == ("this ispd is a standby: ispd db1 pid 42 holds the store and runs its services; "
                                     "run 'radius.session.disconnect' on that node")


async def test_a_refusal_reaches_the_client_as_it_is(sock: Path) -> None:
    async with serving(sock):
        with pytest.raises(ControlError) as caught:
            await control_request(sock, "test.refuse")
        assert (str(caught.value), caught.value.code) == ("no such name: 'x.example.'", "refused")


async def test_a_handler_bug_is_an_internal_error_and_the_server_goes_on(sock: Path) -> None:
    async with serving(sock):
        with pytest.raises(ControlError) as caught:
            await control_request(sock, "test.crash")
        assert caught.value.code == "internal"
        assert "test.crash" in str(caught.value) and "a bug" not in str(caught.value)
        assert await control_request(sock, "test.echo") == {"echo": {}}


async def test_a_stream_failing_part_way_ends_with_an_error(sock: Path) -> None:
    def failing(args: dict[str, Any]) -> Iterator[Sequence[str]]:
        yield ["first"]
        raise CommandError("the cache went away")

    registry = ControlCommands()
    registry.register_stream("test.failing", failing)
    async with serving(sock, registry):
        assert await raw_exchange(sock, b'{"command": "test.failing"}\n') == [
            {"line": "first"}, {"ok": False, "error": "the cache went away", "code": "refused"}]


async def test_unregistered_commands_are_gone(sock: Path) -> None:
    registry = ControlCommands()
    unregister = registry.register("test.echo", echo)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("test.echo", echo)
    async with serving(sock, registry):
        assert await control_request(sock, "test.echo") == {"echo": {}}
        unregister()
        unregister()  # twice is harmless
        with pytest.raises(ControlError, match="unknown command"):
            await control_request(sock, "test.echo")
    assert registry.names() == []


# --- what a client can get wrong


@pytest.mark.parametrize(("request_bytes", "error"), [
    (b"this is not json\n", "request is not JSON"),
    (b"\xff\xfe\n", "request is not JSON"),
    (b'["test.echo"]\n', 'request must be a JSON object with a "command" string'),
    (b'{"args": {}}\n', 'request must be a JSON object with a "command" string'),
    (b'{"command": 7}\n', 'request must be a JSON object with a "command" string'),
    (b'{"command": "test.echo", "args": [1]}\n', '"args" must be a JSON object'),
    (b'{"command": "test.echo", "args": {"a": ' + b"[" * 5000 + b"\n", "request is nested too deeply"),
])
async def test_bad_requests_get_an_error(sock: Path, request_bytes: bytes, error: str) -> None:
    async with serving(sock):
        [reply] = await raw_exchange(sock, request_bytes)
        assert reply["ok"] is False and reply["code"] == "bad_request"
        assert reply["error"].startswith(error), reply
        assert await control_request(sock, "test.echo") == {"echo": {}}


async def test_a_request_without_its_newline_is_taken_at_end_of_input(sock: Path) -> None:
    async with serving(sock):
        assert await raw_exchange(sock, b'{"command": "test.echo"}') == [{"ok": True, "result": {"echo": {}}}]


async def test_an_oversized_request_is_refused(sock: Path) -> None:
    async with serving(sock):
        huge = b'{"command": "test.echo", "args": {"x": "' + b"a" * (control.MAX_REQUEST_BYTES + 10) + b'"}}\n'
        [reply] = await raw_exchange(sock, huge)
        assert reply == {"ok": False, "error": f"request larger than {control.MAX_REQUEST_BYTES} bytes",
                         "code": "bad_request"}
        # Also when it never ends: the server does not keep reading.
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b"a" * (control.MAX_REQUEST_BYTES * 2))
        reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert reply["code"] == "bad_request"
        writer.close()
        assert await control_request(sock, "test.echo") == {"echo": {}}


async def test_a_silent_client_is_told_and_dropped(sock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "REQUEST_TIMEOUT_SECONDS", 0.2)
    async with serving(sock) as server:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b'{"command": ')  # and nothing more
        data = await asyncio.wait_for(reader.read(), 5)
        assert json.loads(data) == {"ok": False, "error": "no complete request within 0.2 s", "code": "bad_request"}
        writer.close()
        assert not server._connections


async def test_a_client_that_connects_and_leaves_is_no_error(sock: Path) -> None:
    async with serving(sock) as server:
        assert await raw_exchange(sock, b"") == []
        assert not server._connections


async def test_a_client_gone_mid_stream_ends_the_stream(sock: Path) -> None:
    finished = asyncio.Event()
    batches = 0

    def endless(args: dict[str, Any]) -> Iterator[Sequence[str]]:
        nonlocal batches
        try:
            while True:
                batches += 1
                yield ["y" * 100] * 100
        finally:
            finished.set()

    registry = ControlCommands()
    registry.register_stream("test.endless", endless)
    registry.register("test.echo", echo)
    async with serving(sock, registry) as server:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b'{"command": "test.endless"}\n')
        assert json.loads(await reader.readline()) == {"line": "y" * 100}
        writer.transport.abort()  # gone, without reading the rest
        await asyncio.wait_for(finished.wait(), 5)
        stopped_at = batches
        await asyncio.sleep(0.1)
        assert batches == stopped_at
        for _ in range(50):
            if not server._connections:
                break
            await asyncio.sleep(0.02)
        assert not server._connections
        assert await control_request(sock, "test.echo") == {"echo": {}}


async def test_a_client_that_stops_reading_is_dropped(sock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "WRITE_TIMEOUT_SECONDS", 0.3)

    def endless(args: dict[str, Any]) -> Iterator[Sequence[str]]:
        while True:
            yield ["z" * 1000] * 100

    registry = ControlCommands()
    registry.register_stream("test.endless", endless)
    async with serving(sock, registry) as server:
        _, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b'{"command": "test.endless"}\n')
        await asyncio.sleep(0.1)
        assert server._connections
        for _ in range(100):
            if not server._connections:
                break
            await asyncio.sleep(0.05)
        assert not server._connections
        writer.close()


async def test_connections_beyond_the_cap_are_told_to_come_back(sock: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "MAX_CONNECTIONS", 1)
    async with serving(sock):
        _, holder = await asyncio.open_unix_connection(str(sock))
        await asyncio.sleep(0.05)
        with pytest.raises(ControlError) as caught:
            await control_request(sock, "test.echo")
        assert caught.value.code == "busy"
        holder.close()
        await asyncio.sleep(0.05)
        assert await control_request(sock, "test.echo") == {"echo": {}}


# --- the socket file


async def test_socket_is_0600_and_removed_at_close(sock: Path) -> None:
    old_umask = os.umask(0)  # the widest: the server must not depend on the caller's umask
    try:
        async with serving(sock):
            mode = os.stat(sock).st_mode
            assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    finally:
        os.umask(old_umask)
    assert not exists(sock)


def test_other_users_cannot_connect() -> None:
    """0600 is what keeps other users out: nobody is refused, until the mode is widened."""
    if os.geteuid() != 0 or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to run a client as nobody) and /usr/bin/python3")
    connect = ("import socket, sys\n"
               "s = socket.socket(socket.AF_UNIX)\n"
               "try:\n"
               "    s.connect(sys.argv[1])\n"
               "except OSError as exc:\n"
               "    print(type(exc).__name__)\n"
               "else:\n"
               "    print('connected')\n")
    with tempfile.TemporaryDirectory(prefix="ispd-control-") as directory:
        os.chmod(directory, 0o755)  # others may reach the socket; only its own mode stops them
        path = Path(directory) / "control.sock"

        async def scenario() -> list[str]:
            async with serving(path):
                seen = []
                for mode in (None, 0o666):
                    if mode is not None:
                        os.chmod(path, mode)
                    result = await asyncio.create_subprocess_exec(
                        "/usr/bin/python3", "-c", connect, str(path), user="nobody",
                        stdout=asyncio.subprocess.PIPE)
                    out, _ = await result.communicate()
                    seen.append(out.decode().strip())
                return seen

        assert asyncio.run(scenario()) == ["PermissionError", "connected"]


async def test_missing_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "run" / "ispd" / "control.sock"
    async with serving(path):
        assert await control_request(path, "test.echo") == {"echo": {}}


async def test_a_stale_socket_from_a_crashed_daemon_is_replaced(sock: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.listen(1)
    dead.close()  # the file stays, nobody listens: what a killed daemon leaves
    assert exists(sock)
    with pytest.raises(ControlUnreachable):
        await control_request(sock, "test.echo")
    async with serving(sock):
        assert await control_request(sock, "test.echo") == {"echo": {}}


async def test_a_live_daemons_socket_is_not_taken(sock: Path) -> None:
    async with serving(sock):
        second = ControlServer(sock, ControlCommands())
        with pytest.raises(ControlSocketError) as caught:
            await second.start()
        assert str(caught.value) == (f"another ispd is running: it answers on the control socket {sock}. Stop it "
                                     "first; if it serves another store, give this one its own [daemon] control_socket")
        await second.close()  # must not remove the live one's file
        assert await control_request(sock, "test.echo") == {"echo": {}}


async def test_a_file_that_is_not_a_socket_is_left_alone(sock: Path) -> None:
    write_text(sock, "precious")
    with pytest.raises(ControlSocketError, match="exists and is not a socket"):
        await ControlServer(sock, ControlCommands()).start()
    assert read_text(sock) == "precious"


async def test_a_socket_replaced_meanwhile_is_not_removed_at_close(sock: Path) -> None:
    server = ControlServer(sock, commands())
    await server.start()
    os.unlink(sock)
    newer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    newer.bind(str(sock))
    try:
        await server.close()
        assert exists(sock)
    finally:
        newer.close()


async def test_a_path_too_long_for_a_unix_socket_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / ("d" * 100) / "control.sock"
    with pytest.raises(ControlSocketError, match="at most 107"):
        await ControlServer(path, ControlCommands()).start()
    with pytest.raises(ControlUnreachable, match="at most 107"):
        await control_request(path, "test.echo")


async def test_no_daemon_is_a_clear_error(sock: Path) -> None:
    with pytest.raises(ControlUnreachable) as caught:
        await control_request(sock, "test.echo")
    assert str(caught.value) == f"cannot reach the ispd daemon at {sock}: is it running? (No such file or directory)"


# --- under the daemon's event loop


def test_round_trip_and_stream_under_uvloop(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            assert await control_request(sock, "test.echo", {"x": 1}) == {"echo": {"x": 1}}
            assert len(await control_request(sock, "test.count", {"batches": 50, "size": 100})) == 5000
            [reply] = await raw_exchange(sock, b"nope\n")
            assert reply["code"] == "bad_request"
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert not exists(sock)

    uvloop.run(scenario())
