"""A connection that drops while a command is reading the client's next line (IDLE waiting for
DONE, AUTHENTICATE for its response) ends the session: on a session over a fake transport, so
that the drop comes at a chosen moment."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ispd.mail.imap.session import IMAPSession
from ispd.mail.maildir import Maildir
from tests.mail.imap.test_autologout import FakeTransport
from tests.mail.imap.test_session_failures import fake_service


async def answered(transport: FakeTransport, start: int, wanted: bytes) -> None:
    for _ in range(500):
        if wanted in transport.written[start:]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never answered {wanted!r}: {transport.written[start:]!r}")


@pytest.mark.parametrize(("commands", "waiting_for_the_client"), [
    # RFC 2177: the session ends when the connection does, as in Dovecot.
    ([b"a LOGIN alice secret", b"b SELECT INBOX", b"c IDLE"], b"+ idling"),
    ([b"a AUTHENTICATE PLAIN"], b"+ "),
])
def test_a_connection_dropped_while_a_command_waits_for_the_client_ends_the_session(
        tmp_path: Path, commands: list[bytes], waiting_for_the_client: bytes) -> None:
    """From a soak review: the dropped connection's end marker was taken by IDLE's read of DONE,
    and the session's task then waited for the next command forever, keeping the session and its
    selected folder's message list."""
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    maildir.deliver(b"Subject: x\r\n\r\nbody\r\n", now=1000.0)

    async def run() -> None:
        transport = FakeTransport()
        with ThreadPoolExecutor(2) as executor:
            service = fake_service(maildir, executor)
            session = IMAPSession(service, "imaps")
            session.connection_made(transport)  # type: ignore[arg-type]
            worker = session._worker
            assert worker is not None
            for command in commands[:-1]:
                start = len(transport.written)
                session.data_received(command + b"\r\n")
                await answered(transport, start, command.split()[0] + b" OK")
            start = len(transport.written)
            session.data_received(commands[-1] + b"\r\n")
            await answered(transport, start, waiting_for_the_client)
            transport.close()
            session.connection_lost(ConnectionResetError())
            await asyncio.wait_for(worker, timeout=2)
            assert session not in service.imap_sessions

    asyncio.run(run())
