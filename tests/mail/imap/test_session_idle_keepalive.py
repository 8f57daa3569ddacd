"""An idling client hears from the server now and then, selected folder or not, so that NATs
and firewalls keep its connection (Dovecot's imap_idle_notify_interval, 2 minutes)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ispd.mail.imap import session as imap_session
from ispd.mail.imap.session import IMAPSession
from ispd.mail.maildir import Maildir
from tests.mail.imap.test_autologout import FakeTransport
from tests.mail.imap.test_session_failures import fake_service


@pytest.mark.parametrize("select", [True, False])
def test_an_idling_client_hears_still_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, select: bool) -> None:
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    monkeypatch.setattr(imap_session, "IDLE_KEEPALIVE_SECONDS", 0.1, raising=False)

    async def run() -> bytes:
        transport = FakeTransport()
        with ThreadPoolExecutor(2) as executor:
            session = IMAPSession(fake_service(maildir, executor), "imaps")
            session.connection_made(transport)  # type: ignore[arg-type]
            session.data_received(b"t1 LOGIN alice secret\r\n" + (b"t2 SELECT INBOX\r\n" if select else b""))
            await asyncio.sleep(0.3)
            start = len(transport.written)
            session.data_received(b"t3 IDLE\r\n")
            await asyncio.sleep(0.5)
            session.data_received(b"DONE\r\n")
            await asyncio.sleep(0.2)
            transport.close()
            session.connection_lost(None)
            return transport.written[start:]

    written = asyncio.run(run())
    assert written.startswith(b"+ idling\r\n") and written.endswith(b"t3 OK IDLE terminated\r\n"), written
    assert written.count(b"* OK Still here\r\n") >= 2, written
