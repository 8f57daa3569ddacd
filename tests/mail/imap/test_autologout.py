"""The autologout, on a session over a fake transport: the setting cannot go below RFC 3501's
30 minutes, so the end-to-end tests cannot wait for it; here the timer runs at 1 s (a NOOP each
0.1 s beats it with room to spare on a loaded machine: at 0.2 s, CI once saw 0.1 s sleeps run late)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from ispd.mail.imap import session as imap_session
from ispd.mail.imap.session import IMAPSession
from ispd.mail.metrics import MailMetrics


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def fake_service() -> Any:
    config = SimpleNamespace(imap_autologout_seconds=1.0, imap_commands_per_second=0, max_message_bytes=1 << 20)
    gate = SimpleNamespace(admit=lambda client: True, release=lambda client: None)
    return SimpleNamespace(config=config, imap_gate=gate, imap_sessions=set(), metrics=MailMetrics(), tls_context=None)


def test_a_silent_session_is_logged_out_and_a_talking_one_is_not() -> None:
    async def run() -> tuple[FakeTransport, FakeTransport]:
        silent, talking = FakeTransport(), FakeTransport()
        sessions = [IMAPSession(fake_service(), "imap") for _ in range(2)]
        sessions[0].connection_made(silent)  # type: ignore[arg-type]
        sessions[1].connection_made(talking)  # type: ignore[arg-type]
        for _ in range(15):  # a NOOP every 0.1 s keeps the second one in, past the timer
            await asyncio.sleep(0.1)
            sessions[1].data_received(b"a NOOP\r\n")
        assert talking.closed is False
        await asyncio.sleep(1.2)
        for session, transport in zip(sessions, (silent, talking), strict=True):
            if not transport.closed:
                transport.close()
            session.connection_lost(None)
        return silent, talking

    silent, talking = asyncio.run(run())
    assert silent.closed and b"* BYE autologout" in silent.written
    assert talking.written.count(b"OK NOOP completed") == 15


def test_a_session_that_does_not_log_in_is_closed_sooner(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Before login the autologout is PREAUTH_AUTOLOGOUT_SECONDS; a login brings back the full one."""
    from concurrent.futures import ThreadPoolExecutor

    from ispd.mail.maildir import Maildir
    from tests.mail.imap.test_session_failures import fake_service as logging_in_service

    monkeypatch.setattr(imap_session, "PREAUTH_AUTOLOGOUT_SECONDS", 0.1, raising=False)

    async def run() -> tuple[FakeTransport, FakeTransport]:
        with ThreadPoolExecutor(2) as executor:
            service = logging_in_service(Maildir.for_address(tmp_path, "alice@isp.example"), executor)
            service.config.imap_autologout_seconds = 0.6
            silent, logged_in = FakeTransport(), FakeTransport()
            sessions = [IMAPSession(service, "imaps") for _ in range(2)]
            sessions[0].connection_made(silent)  # type: ignore[arg-type]
            sessions[1].connection_made(logged_in)  # type: ignore[arg-type]
            sessions[1].data_received(b"a LOGIN alice x\r\n")
            await asyncio.sleep(0.35)
            assert silent.closed and not logged_in.closed, (silent.written, logged_in.written)
            await asyncio.sleep(0.5)
            assert logged_in.closed
            for session in sessions:
                session.connection_lost(None)
            return silent, logged_in

    silent, logged_in = asyncio.run(run())
    assert b"* BYE autologout" in silent.written
    assert b"a OK" in logged_in.written and b"* BYE autologout" in logged_in.written


def test_before_login_bytes_that_trickle_in_do_not_put_off_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a bug hunt: each byte started the pre-login 3 minutes over, so a client trickling a
    LOGIN literal (a byte every 2 s) was still connected after 230 s, holding its places under
    the connection limits for good. As Dovecot's, the time to log in runs from the connection."""
    monkeypatch.setattr(imap_session, "PREAUTH_AUTOLOGOUT_SECONDS", 0.5, raising=False)

    async def run() -> FakeTransport:
        transport = FakeTransport()
        session = IMAPSession(fake_service(), "imap")
        session.service.config.imap_autologout_seconds = 1800.0
        session.connection_made(transport)  # type: ignore[arg-type]
        session.data_received(b"a LOGIN {8000}\r\n")
        for _ in range(12):  # a byte every 0.1 s, for 1.2 s
            if transport.closed:
                break
            await asyncio.sleep(0.1)
            session.data_received(b"x")
        session.connection_lost(None)
        return transport

    transport = asyncio.run(run())
    assert transport.closed and b"* BYE autologout" in transport.written
