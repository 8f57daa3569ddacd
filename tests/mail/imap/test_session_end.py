"""A connection that drops while a command is reading the client's next line (IDLE waiting for
DONE, AUTHENTICATE for its response) ends the session: on a session over a fake transport, so
that the drop comes at a chosen moment."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import uvloop

from ispd.listeners import server_tls_context
from ispd.mail.imap.session import IMAPSession
from ispd.mail.maildir import Maildir
from tests.lab.certs import issue
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
    ([b"a LOGIN alice secret", b"c IDLE"], b"+ idling"),  # no folder selected (RFC 9051 §6.3.13)
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


def test_idle_with_no_folder_selected_waits_for_done(tmp_path: Path) -> None:
    """RFC 9051 lists IDLE among the authenticated state's commands (Dovecot takes it there);
    it was refused with BAD."""
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()

    async def run() -> None:
        transport = FakeTransport()
        with ThreadPoolExecutor(2) as executor:
            session = IMAPSession(fake_service(maildir, executor), "imaps")
            session.connection_made(transport)  # type: ignore[arg-type]
            for line, wanted in ((b"a LOGIN alice secret", b"a OK"), (b"b IDLE", b"+ idling"),
                                 (b"DONE", b"b OK IDLE terminated"), (b"c NOOP", b"c OK")):
                start = len(transport.written)
                session.data_received(line + b"\r\n")
                await answered(transport, start, wanted)
            transport.close()
            session.connection_lost(None)

    asyncio.run(run())


def test_a_connection_dropped_after_starttls_before_the_handshake_ends_the_session(tmp_path: Path) -> None:
    """From the review of the fix: after STARTTLS the connection belongs to the TLS layer, which
    tells nobody when it fails before the handshake; the session waited for its next command
    for ever, holding one of the client's connection slots (300 such drops locked an address
    out of IMAP and SMTP until a restart)."""
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    certificates = issue(tmp_path / "tls", "localhost", name="server")

    async def run() -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(2) as executor:
            service = fake_service(maildir, executor)
            service.tls_context = server_tls_context(certificates.certificate, certificates.private_key, [])
            sessions: list[IMAPSession] = []

            def accepted() -> IMAPSession:
                sessions.append(IMAPSession(service, "imap"))
                return sessions[-1]

            server = await loop.create_server(accepted, "127.0.0.1", 0)
            try:
                reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
                await reader.readline()  # the greeting
                writer.write(b"a STARTTLS\r\n")
                assert (await reader.readline()).startswith(b"a OK")
                # Gone before any handshake, with a reset (its read error reaches the TLS layer).
                sock = writer.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                [session] = sessions
                worker = session._worker
                assert worker is not None
                await asyncio.wait_for(worker, timeout=5)
                assert session not in service.imap_sessions
            finally:
                server.close()

    uvloop.run(run())  # the daemon's loop: its TLS layer is the one that tells nobody


def test_commands_sent_in_the_clear_after_starttls_are_not_run_inside_tls(tmp_path: Path) -> None:
    """From a bug hunt: commands pipelined in the clear behind STARTTLS were run once TLS was
    on, as if the client had sent them over it: STARTTLS command injection (CVE-2011-0411's
    kind, which the "NO STARTTLS" study of 2021 found in many IMAP servers), by which a man
    in the middle adds commands to the protected session. They are dropped, as Postfix and
    aiosmtpd drop them after SMTP's STARTTLS."""
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    certificates = issue(tmp_path / "tls", "localhost", name="server")

    async def run() -> list[bytes]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(2) as executor:
            service = fake_service(maildir, executor)
            service.tls_context = server_tls_context(certificates.certificate, certificates.private_key, [])
            server = await loop.create_server(lambda: IMAPSession(service, "imap"), "127.0.0.1", 0)
            try:
                reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
                await reader.readline()  # the greeting
                writer.write(b"a STARTTLS\r\nb LOGIN alice secret\r\n")  # b: the injected one
                assert (await reader.readline()).startswith(b"a OK")
                await writer.start_tls(ssl.create_default_context(cafile=str(certificates.ca)),
                                       server_hostname="localhost")
                writer.write(b"c NOOP\r\n")
                lines: list[bytes] = []
                while not lines or not lines[-1].startswith(b"c "):
                    lines.append(await asyncio.wait_for(reader.readline(), timeout=5))
                writer.close()
                return lines
            finally:
                server.close()

    lines = uvloop.run(run())
    assert not any(line.startswith(b"b ") for line in lines), lines
    assert lines[-1].startswith(b"c OK")
