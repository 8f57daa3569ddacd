"""The admin CLI's commands through the control socket, against a daemon's answers that a real
daemon gives only under a race or when it is wedged: a control server in the test stands in."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ispd.control import ControlCommands, ControlServer
from tests.lab import toml
from tests.lab.process import ISPD, base_config


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[ControlCommands]:
    """The commands a stand-in daemon answers on the config's control socket."""
    commands = ControlCommands()
    server = ControlServer(tmp_path / "control.sock", commands)
    await server.start()
    try:
        yield commands
    finally:
        await server.close()


async def ispd(tmp_path: Path, *args: str, **sections: dict[str, Any]) -> tuple[int, str, str]:
    config = toml.write(tmp_path / "ispd.toml", base_config(tmp_path, **sections))
    proc = await asyncio.create_subprocess_exec(ISPD, *args, "-c", str(config), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_session_closed_meanwhile_is_not_reported_as_a_nas_s(tmp_path: Path,
                                                                       daemon: ControlCommands) -> None:
    """Two `ispd session close ID` at once (two operators, a script's retry): the daemon finds the
    session open for both, the store closes it for one, and answers the other {"closed": []}
    (seen on a running daemon with eight requests at once). That one printed "no open session of
    NAS None" and exited 0; it is the same as asking about a session not open: exit 1, said."""
    async def close(args: dict[str, Any]) -> dict[str, Any]:
        return {"closed": []}

    daemon.register("radius.session.close", close)
    code, out, err = await ispd(tmp_path, "session", "close", "7")
    assert (code, out) == (1, "")
    assert err == "ispd: session #7 is not open (it was closed meanwhile)\n"
    code, out, err = await ispd(tmp_path, "session", "close", "--nas", "198.18.9.9")  # (unchanged)
    assert (code, out, err) == (0, "no open session of NAS 198.18.9.9\n", "")


async def test_subscriber_show_does_not_wait_a_minute_for_a_daemon_that_does_not_answer(
        tmp_path: Path, daemon: ControlCommands) -> None:
    """`subscriber show` reads the store, and asks the running resolver only for its walled set
    (one line of effects). With the daemon stopped (kill -STOP, a debugger, a wedged loop: its
    socket still accepts), the helpdesk view waited the control client's 60 s for that line."""
    async def wedged(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(120)
        return {}

    daemon.register("dns.walled.show", wedged)
    dns = {"enabled": True, "listen": ["127.0.0.1:53"]}  # (not listened on: the CLI only reads the config)
    assert (await ispd(tmp_path, "subscriber", "add", "alice", dns=dns))[0] == 0
    began = time.monotonic()
    code, out, err = await ispd(tmp_path, "subscriber", "show", "alice", dns=dns)
    assert code == 0, err
    assert "subscriber    alice (#1)" in out
    assert time.monotonic() - began < 20
