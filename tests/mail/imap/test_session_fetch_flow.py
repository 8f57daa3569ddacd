"""A FETCH of many messages for a client that does not read: ispd reads the files a batch at a
time, and no further while the connection's buffer is full (the transport's pause_writing),
so that the memory a session holds stays bounded whatever the size of the mailbox."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ispd.mail.imap import session as imap_session
from ispd.mail.imap.session import IMAPSession
from ispd.mail.maildir import Maildir
from ispd.mail.mailindex import FolderIndex
from tests.mail.imap.test_autologout import FakeTransport
from tests.mail.imap.test_session_failures import fake_service


def test_a_fetch_waits_for_the_client_to_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    for number in range(5):
        maildir.deliver(f"Subject: {number}\r\n\r\n{'body ' * 200}\r\n".encode(), now=1000.0 + number)
    monkeypatch.setattr(imap_session, "FETCH_BATCH_BYTES", 1, raising=False)  # one message per batch

    async def answered(transport: FakeTransport, tag: bytes) -> None:
        for _ in range(500):
            if tag + b" " in transport.written:
                return
            await asyncio.sleep(0.01)

    async def run() -> tuple[bytes, bytes]:
        transport = FakeTransport()
        with ThreadPoolExecutor(2) as executor:
            session = IMAPSession(fake_service(maildir, executor), "imaps")
            session.connection_made(transport)  # type: ignore[arg-type]
            session.data_received(b"t1 LOGIN alice secret\r\nt2 SELECT INBOX\r\n")
            await answered(transport, b"t2")
            session.pause_writing()  # the client reads nothing: the buffer is full
            start = len(transport.written)
            session.data_received(b"t3 FETCH 1:* (BODY.PEEK[])\r\n")
            await asyncio.sleep(0.3)
            while_paused = transport.written[start:]
            session.resume_writing()
            await answered(transport, b"t3")
            transport.close()
            session.connection_lost(None)
            return while_paused, transport.written[start:]

    while_paused, after = asyncio.run(run())
    assert b"FETCH (BODY[]" not in while_paused, while_paused[:200]
    assert after.count(b"FETCH (BODY[]") == 5 and b"t3 OK" in after


def test_a_fetch_cut_by_a_close_reads_and_marks_no_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: the session closed by ispd (a stop's BYE, autologout, a suspended account)
    while a FETCH waited for the client to read: the transport closes once the client has read
    what it holds, and it says resume_writing first. The FETCH went on, reading every further
    batch from disk and setting \\Seen on messages no one would send (send() drops them)."""
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    for number in range(5):
        maildir.deliver(f"Subject: {number}\r\n\r\n{'body ' * 200}\r\n".encode(), now=1000.0 + number)
    monkeypatch.setattr(imap_session, "FETCH_BATCH_BYTES", 1, raising=False)  # one message per batch

    async def run() -> bytes:
        transport = FakeTransport()
        with ThreadPoolExecutor(2) as executor:
            session = IMAPSession(fake_service(maildir, executor), "imaps")
            session.connection_made(transport)  # type: ignore[arg-type]
            session.data_received(b"t1 LOGIN alice secret\r\nt2 SELECT INBOX\r\n")
            for _ in range(500):
                if b"t2 " in transport.written:
                    break
                await asyncio.sleep(0.01)
            session.pause_writing()
            start = len(transport.written)
            session.data_received(b"t3 FETCH 1:* (BODY[])\r\n")
            await asyncio.sleep(0.2)
            session.shut_down()  # BYE, and the transport is closing
            session.resume_writing()  # the client reads what the transport holds
            await asyncio.sleep(0.5)
            session.connection_lost(None)
            await asyncio.sleep(0.1)
            return transport.written[start:]

    written = asyncio.run(run())
    assert b"FETCH (" not in written, written[:200]
    seen = [m.uid for m in FolderIndex(maildir.path).sync().messages if "S" in m.flags]
    assert seen == [], seen
