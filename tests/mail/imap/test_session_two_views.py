"""Two sessions of one mailbox: what one changes, the other's client is told (RFC 3501 §7.4.1,
RFC 7162 §3.1.3), whatever the other did to the same messages meanwhile."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ispd.mail.imap.session import IMAPSession
from ispd.mail.maildir import Maildir
from tests.mail.imap.test_autologout import FakeTransport
from tests.mail.imap.test_session_failures import fake_service


class Client:
    """A session over a fake transport; ``command`` waits for its tagged answer and returns
    what the server wrote meanwhile."""

    def __init__(self, maildir: Maildir, executor: ThreadPoolExecutor, name: str) -> None:
        self.transport = FakeTransport()
        self.session = IMAPSession(fake_service(maildir, executor), "imaps")
        self.session.connection_made(self.transport)  # type: ignore[arg-type]
        self.name, self.count = name, 0

    async def command(self, text: str) -> bytes:
        self.count += 1
        tag = f"{self.name}{self.count}".encode()
        start = len(self.transport.written)
        self.session.data_received(tag + b" " + text.encode() + b"\r\n")
        for _ in range(500):
            written = self.transport.written[start:]
            if any(line.startswith(tag + b" ") for line in written.split(b"\r\n")):
                return written
            await asyncio.sleep(0.01)
        raise AssertionError(f"no answer to {text}")

    def close(self) -> None:
        self.transport.close()
        self.session.connection_lost(None)


@pytest.fixture()
def maildir(tmp_path: Path) -> Maildir:
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    for number in range(2):
        maildir.deliver(f"Subject: {number}\r\n\r\nbody {number}\r\n".encode(), now=1000.0 + number)
    return maildir


def two_sessions(maildir: Maildir, script: list[tuple[str, str]], condstore: bool = False) -> list[bytes]:
    """Runs ``script`` ((which session, command)) on sessions "a" and "b", both with the INBOX
    selected; the answers, in order."""
    async def run() -> list[bytes]:
        with ThreadPoolExecutor(2) as executor:
            clients = {name: Client(maildir, executor, name) for name in "ab"}
            for client in clients.values():
                await client.command("LOGIN alice@isp.example secret")
                await client.command("SELECT INBOX (CONDSTORE)" if condstore else "SELECT INBOX")
            answers = [await clients[name].command(text) for name, text in script]
            for client in clients.values():
                client.close()
            return answers

    return asyncio.run(run())


@pytest.mark.parametrize("condstore", [False, True])
def test_a_silent_store_does_not_swallow_another_sessions_change(maildir: Maildir, condstore: bool) -> None:
    """b's \\Seen, made before a's own silent change to the same message, was taken into a's view
    with it: a's client was never told of it (NOOP said nothing), and showed the message unread."""
    unchanged = " (UNCHANGEDSINCE 100)" if condstore else ""
    answers = two_sessions(maildir, [("b", "STORE 1 +FLAGS (\\Seen)"),
                                     ("a", f"STORE 1{unchanged} +FLAGS.SILENT (\\Answered)"),
                                     ("a", "NOOP"), ("a", "NOOP")], condstore=condstore)
    assert b"\\Seen" not in answers[1]
    told = [line for line in answers[2].split(b"\r\n") if line.startswith(b"* 1 FETCH")]
    assert len(told) == 1 and b"\\Seen" in told[0] and b"\\Answered" in told[0]
    assert b"FETCH" not in answers[3]  # told once


def test_a_silent_store_alone_is_not_told_again(maildir: Maildir) -> None:
    answers = two_sessions(maildir, [("a", "STORE 1:2 +FLAGS.SILENT (\\Flagged)"), ("a", "NOOP"),
                                     ("a", "STORE 2 -FLAGS.SILENT (\\Flagged)"), ("a", "NOOP")])
    assert b"FETCH" not in answers[1] and b"FETCH" not in answers[3]
    assert b"FETCH" not in answers[0] and b"FETCH" not in answers[2]


def test_a_body_fetch_that_sets_seen_says_what_it_says_once(maildir: Maildir) -> None:
    """FETCH BODY[] sets \\Seen: its FLAGS say the flags the client knew and \\Seen; b's \\Flagged
    of the same message comes at the next update if that FETCH did not tell it."""
    answers = two_sessions(maildir, [("b", "STORE 2 +FLAGS (\\Flagged)"), ("a", "FETCH 2 (BODY[TEXT])"),
                                     ("a", "NOOP")])
    fetched = answers[1].split(b"FLAGS (", 1)[1].split(b")", 1)[0]
    told_at_noop = b"\\Flagged" in answers[2]
    assert b"\\Seen" in fetched
    assert (b"\\Flagged" in fetched) != told_at_noop


def test_the_flags_a_body_fetch_sends_keep_recent(maildir: Maildir) -> None:
    """FLAGS is the message's whole set (RFC 3501 §7.4.2): the FLAGS a FETCH BODY[] added with
    \\Seen left \\Recent out, where FETCH FLAGS has it; a client that replaces its set with what
    it is told lost the flag."""
    answers = two_sessions(maildir, [("a", "FETCH 1 (BODY[TEXT])"), ("a", "FETCH 1 FLAGS")])
    assert b"FLAGS (\\Seen \\Recent)" in answers[1]
    assert b"FLAGS (\\Seen \\Recent)" in answers[0]


def test_a_fetch_of_a_message_another_session_expunged_is_not_an_ok(maildir: Maildir) -> None:
    """b expunged message 2, a has not been told yet: a's FETCH of its body answered OK with
    nothing for it, the client left with no data and no reason. The others are
    sent, then NO [EXPUNGEISSUED] (RFC 5530), as from Dovecot; the NOOP then tells the EXPUNGE."""
    maildir.deliver(b"Subject: 2\r\n\r\nbody 2\r\n", now=1002.0)
    answers = two_sessions(maildir, [("b", "STORE 2 +FLAGS.SILENT (\\Deleted)"), ("b", "EXPUNGE"),
                                     ("a", "FETCH 1:3 (UID BODY.PEEK[TEXT])"), ("a", "FETCH 1 (BODY.PEEK[TEXT])"),
                                     ("a", "NOOP")])
    assert b"* 1 FETCH (UID 1 " in answers[2] and b"* 3 FETCH (UID 3 " in answers[2]
    assert b"* 2 FETCH" not in answers[2]
    assert answers[2].endswith(b" NO [EXPUNGEISSUED] some of the requested messages no longer exist\r\n")
    assert answers[3].endswith(b" OK FETCH completed\r\n")
    assert b"* 2 EXPUNGE" in answers[4]


@pytest.mark.parametrize("command", ["COPY", "MOVE"])
def test_a_copy_of_a_message_another_session_expunged_copies_nothing(maildir: Maildir, command: str) -> None:
    """b expunged message 2, a has not been told yet: a's COPY 1:3 copied 1 and 3 and answered OK,
    a COPY 2 copied nothing and answered OK, the client believing it there. Now NO [EXPUNGEISSUED]
    and the target as it was (RFC 3501 §6.4.7), as from Dovecot; after a NOOP the retry works."""
    maildir.deliver(b"Subject: 2\r\n\r\nbody 2\r\n", now=1002.0)
    archive = maildir.folder_path("Archive")
    answers = two_sessions(maildir, [("b", "STORE 2 +FLAGS.SILENT (\\Deleted)"), ("b", "EXPUNGE"),
                                     ("a", f"{command} 1:3 Archive"), ("a", f"{command} 2 Archive"),
                                     ("a", "NOOP"), ("a", f"{command} 1:2 Archive")])
    for answer in answers[2:4]:
        assert answer.endswith(b" NO [EXPUNGEISSUED] some of the requested messages no longer exist\r\n")
        assert b"* 2 EXPUNGE" not in answer and b"moved" not in answer
    assert b"* 2 EXPUNGE" in answers[4]
    assert b"[COPYUID " in answers[5] and answers[5].endswith(f"{command} completed\r\n".encode())
    assert len(os.listdir(archive / "new") + os.listdir(archive / "cur")) == 2


@pytest.mark.parametrize("command", ["EXPUNGE", "UID EXPUNGE 1:*", "CLOSE"])
def test_an_expunge_spares_a_message_another_session_undeleted(maildir: Maildir, command: str) -> None:
    """a marked message 2 \\Deleted; b took the flag off again (an undo on the phone); a's
    EXPUNGE (or CLOSE), going by what a had last seen, removed the message for good. EXPUNGE
    removes what is \\Deleted (RFC 3501 §6.4.3), now as it is, not as a session last saw it."""
    answers = two_sessions(maildir, [("a", "STORE 2 +FLAGS (\\Deleted)"), ("b", "NOOP"),
                                     ("b", "STORE 2 -FLAGS (\\Deleted)"), ("a", command),
                                     ("b", "NOOP"), ("b", "UID SEARCH ALL")])
    assert b"* 2 EXPUNGE" not in answers[3]
    assert b"* 2 EXPUNGE" not in answers[4]
    assert b"* SEARCH 1 2\r\n" in answers[5]
    if command != "CLOSE":
        later = two_sessions(maildir, [("a", "FETCH 2 FLAGS")])
        assert b"\\Deleted" not in later[0]
