"""IMAP commands that fail part-way (a full disk) answer NO and leave the mailbox as it was:
RFC 3501 §6.4.7 for COPY, and a NO to STORE or APPEND means nothing changed. On a session over
a fake transport, so that the disk can be made to fail at a chosen write."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

from ispd.mail.imap.session import IMAPSession
from ispd.mail.maildir import Maildir
from ispd.mail.mailindex import FolderIndex
from ispd.mail.metrics import MailMetrics
from tests.mail.imap.test_autologout import FakeTransport


def fake_service(maildir: Maildir, executor: ThreadPoolExecutor, quota_bytes: int | None = None) -> Any:
    config = SimpleNamespace(imap_autologout_seconds=1800, imap_commands_per_second=0, max_message_bytes=1 << 20,
                             max_imap_sessions_per_mailbox=10, max_auth_failures=3)
    gate = SimpleNamespace(admit=lambda client: True, release=lambda client: None)

    async def imap_login(user: bytes, password: bytes, client: str = "") -> tuple[str, str, Maildir]:
        return "alice", "alice@isp.example", maildir

    async def quota(address: str, maildir: Maildir) -> tuple[int, int | None]:
        return maildir.usage(quota_bytes).bytes, quota_bytes

    return SimpleNamespace(quota=quota,
        config=config, imap_gate=gate, imap_sessions=set(), metrics=MailMetrics(), tls_context=None,
        imap_login=imap_login, imap_sessions_of=lambda path: 0, mail_executor=executor,
        auth_succeeded=lambda login: None, notify_imap=lambda path, folder: None,
        watch_imap=lambda session: None, unwatch_imap=lambda session: None,
        starttls_failed=lambda event, error, client=None: None)


def run_commands(maildir: Maildir, commands: list[str], before_last: Callable[[], None],
                 quota_bytes: int | None = None, before: int = -1) -> bytes:
    """Sends each command and waits for its tagged answer; ``before_last`` runs (sets up the
    failure) before the last one (or before the one numbered ``before``). What the server wrote
    to the last command."""
    async def run() -> bytes:
        transport = FakeTransport()
        with ThreadPoolExecutor(2) as executor:
            session = IMAPSession(fake_service(maildir, executor, quota_bytes), "imaps")
            session.connection_made(transport)  # type: ignore[arg-type]
            start = 0
            for number, command in enumerate(commands):
                if number == (before if before >= 0 else len(commands) - 1):
                    before_last()
                start = len(transport.written)
                tag = f"t{number}".encode()
                session.data_received(tag + b" " + command.encode() + b"\r\n")
                for _ in range(500):
                    if any(line.startswith(tag + b" ") for line in transport.written[start:].split(b"\r\n")):
                        break
                    await asyncio.sleep(0.01)
            transport.close()
            session.connection_lost(None)
            return transport.written[start:]

    return asyncio.run(run())


@pytest.fixture()
def maildir(tmp_path: Path) -> Maildir:
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    for number in range(3):
        maildir.deliver(f"Subject: {number}\r\n\r\nbody {number}\r\n".encode(), now=1000.0 + number)
    return maildir


def fail_after(monkeypatch: pytest.MonkeyPatch, where: Path, allowed: int) -> None:
    """Files opened for writing under ``where`` fail with ENOSPC after ``allowed`` of them."""
    real_open = os.open
    count = [0]

    def open_(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if str(path).startswith(str(where)) and flags & (os.O_WRONLY | os.O_RDWR):
            count[0] += 1
            if count[0] > allowed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def messages_in(folder: Path) -> list[str]:
    return os.listdir(folder / "new") + os.listdir(folder / "cur")


@pytest.mark.parametrize("command", ["COPY", "MOVE"])
def test_a_copy_that_fails_part_way_leaves_the_target_as_it_was(maildir: Maildir, monkeypatch: pytest.MonkeyPatch,
                                                                command: str) -> None:
    archive = maildir.folder_path("Archive")
    before = maildir.usage()
    answer = run_commands(maildir, ["LOGIN alice x", "SELECT INBOX", f"{command} 1:3 Archive"],
                          lambda: fail_after(monkeypatch, archive / "tmp", 2))  # room for two copies
    monkeypatch.undo()
    assert b"t2 NO" in answer
    assert messages_in(archive) == []
    assert len(messages_in(maildir.path)) == 3  # a MOVE removed nothing
    assert maildir.usage() == before
    assert FolderIndex(archive).sync().messages == []


def test_an_append_that_fails_after_the_write_leaves_no_message(maildir: Maildir,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    archive = maildir.folder_path("Archive")
    message = "Subject: appended\r\n\r\nhi\r\n"
    # The message file is written; the index's lock file (and whatever follows) is not.
    answer = run_commands(maildir, ["LOGIN alice x", f"APPEND Archive (\\Seen) {{{len(message)}+}}\r\n{message}"],
                          lambda: fail_after(monkeypatch, archive, 1))
    monkeypatch.undo()
    assert b"t1 NO" in answer
    assert messages_in(archive) == []
    assert maildir.recompute_usage().messages == 3 and maildir.usage().messages == 3


@pytest.mark.parametrize("command", ["COPY", "MOVE"])
def test_a_copy_the_target_index_has_no_room_for_answers_no(maildir: Maildir, monkeypatch: pytest.MonkeyPatch,
                                                            command: str) -> None:
    """From the second verification: as APPEND, a COPY or MOVE whose copies the target's index
    could not give UIDs answered OK; the copies waited in new/ with their flags lost (moved mail
    came back unread) and a MOVE expunged the originals."""
    archive = maildir.folder_path("Archive")
    real_sync = FolderIndex.sync

    def no_room_for_uids(self: FolderIndex, now: float | None = None) -> Any:
        state = real_sync(self, now)
        return dataclasses.replace(state, messages=[]) if self.path == archive else state

    answer = run_commands(maildir, ["LOGIN alice x", "SELECT INBOX", f"{command} 1:3 Archive"],
                          lambda: monkeypatch.setattr(FolderIndex, "sync", no_room_for_uids))
    monkeypatch.undo()
    assert b"t2 NO" in answer
    assert messages_in(archive) == [] and len(messages_in(maildir.path)) == 3


def test_an_append_the_index_has_no_room_for_is_answered(maildir: Maildir, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: with room for the message but not for its UID (the index then leaves the
    message waiting in new/, out of the folder's state), APPEND's lookup of the new UID raised
    StopIteration, which the executor's future cannot carry: no tagged reply, ever."""
    archive = maildir.folder_path("Archive")
    message = "Subject: appended\r\n\r\nhi\r\n"
    real_sync = FolderIndex.sync

    def no_room_for_uids(self: FolderIndex, now: float | None = None) -> Any:
        state = real_sync(self, now)
        return dataclasses.replace(state, messages=[]) if self.path == archive else state

    answer = run_commands(maildir, ["LOGIN alice x", f"APPEND Archive {{{len(message)}+}}\r\n{message}"],
                          lambda: monkeypatch.setattr(FolderIndex, "sync", no_room_for_uids))
    monkeypatch.undo()
    assert b"t1 NO" in answer
    assert messages_in(archive) == []  # taken back: the client appends it again


@pytest.mark.parametrize("command", ["COPY", "MOVE"])
def test_a_copy_finds_a_message_another_session_renamed(maildir: Maildir, command: str) -> None:
    """From a bug hunt: a message whose flags another session changed (a rename) since this
    session last looked was skipped by COPY as expunged, and then removed by MOVE all the same:
    the phone marked it read, the desktop moved it to Trash, and it was in neither folder."""
    trash = maildir.folder_path("Trash")

    def another_session_flags_it() -> None:
        FolderIndex(maildir.path).set_flags([1], "+", "F")

    answer = run_commands(maildir, ["LOGIN alice x", "SELECT INBOX", f"{command} 1 Trash"], another_session_flags_it)
    assert b"t2 OK [COPYUID" in answer or b"* OK [COPYUID" in answer
    copied = FolderIndex(trash).sync().messages
    assert [m.flags for m in copied] == ["F"]  # with the flag it has now
    assert len(FolderIndex(maildir.path).sync().messages) == (2 if command == "MOVE" else 3)


@pytest.mark.parametrize(("commands", "expected"), [
    (["STORE 1 +FLAGS (\\Flagged)"], b"* 1 FETCH (FLAGS (\\Flagged \\Recent))"),
    (["STORE 1 +FLAGS.SILENT (\\Seen)", "FETCH 1 FLAGS"], b"* 1 FETCH (FLAGS (\\Seen \\Recent))"),
    (["STORE 1 +FLAGS (\\Flagged)", "NOOP"], b"* 4 EXISTS\r\n* 4 RECENT\r\n"),
    (["NOOP", "NOOP"], b"* 1 FETCH (FLAGS (\\Seen \\Recent))"),  # another session's change, told
])
def test_recent_lasts_for_the_session(maildir: Maildir, commands: list[str], expected: bytes) -> None:
    """From a bug hunt: RFC 3501 §2.3.2 keeps \\Recent on a message for the session that was
    first told of it, but any flag change replaced the session's view of the message with the
    index's, without it: FLAGS then left it out, and the next RECENT count fell (4 RECENT
    became 1 after a new delivery)."""
    def then() -> None:
        if commands == ["NOOP", "NOOP"]:
            FolderIndex(maildir.path).set_flags([1], "+", "S")  # another session reads it
        else:
            maildir.deliver(b"Subject: new\r\n\r\nnew\r\n")

    answer = run_commands(maildir, ["LOGIN alice x", "SELECT INBOX", *commands], then)
    assert expected in answer


@pytest.mark.parametrize(("commands", "expected"), [
    (["GETQUOTAROOT INBOX"], b"* 4 EXISTS\r\n* 4 RECENT\r\n"),  # looks at no folder: the control
    (["COPY 1 Trash"], b"* 4 EXISTS\r\n* 4 RECENT\r\n"),
    (["MOVE 1 Trash"], b"* 3 EXISTS\r\n* 3 RECENT\r\n"),
    (["STORE 1 +FLAGS.SILENT (\\Deleted)", "EXPUNGE"], b"* 3 EXISTS\r\n* 3 RECENT\r\n"),
])
def test_mail_that_came_during_a_copy_or_expunge_is_still_recent_when_told(maildir: Maildir, commands: list[str],
                                                                          expected: bytes) -> None:
    """From a review of the COPY fix: COPY, MOVE and EXPUNGE look the folder up again, which
    takes mail that arrived meanwhile out of new/, \\Recent in that look's answer only; they threw
    it away, and the next NOOP told of the message without it, so no session ever had it as
    recent (RFC 3501 §2.3.2)."""
    answer = run_commands(maildir, ["LOGIN alice x", "SELECT INBOX", *commands, "NOOP"],
                          lambda: maildir.deliver(b"Subject: new\r\n\r\nnew\r\n"), before=len(commands) + 1)
    assert expected in answer, answer


@pytest.mark.parametrize(("command", "refused"), [
    ("APPEND Archive {200+}\r\n" + "x" * 198 + "\r\n", True),
    ("APPEND Archive {20+}\r\n" + "x" * 18 + "\r\n", False),
    ("COPY 1:3 Archive", True),
    ("COPY 1 Archive", False),
    ("MOVE 1:3 Archive", False),  # the mailbox holds no more than before
])
def test_append_and_copy_keep_to_the_quota(maildir: Maildir, command: str, refused: bool) -> None:
    """From a bug hunt: APPEND and COPY wrote whatever they were given, the quota that IMAP
    reports (and the MX keeps) notwithstanding: a mailbox at 2 KB of 2 KB took a 3 KB APPEND,
    and any client could fill the disk by copying a folder into itself. RFC 9051 §7.1: NO
    [OVERQUOTA] when the mailbox would be over its quota after the command."""
    used = maildir.usage().bytes  # three messages of 24 bytes
    archive = maildir.folder_path("Archive")
    answer = run_commands(maildir, ["LOGIN alice x", "SELECT INBOX", command], lambda: None,
                          quota_bytes=used + 40)
    assert (b"t2 NO [OVERQUOTA]" in answer) == refused, answer
    assert (messages_in(archive) == []) == refused
    assert maildir.usage().bytes <= used + 40


def test_two_sessions_moving_the_same_messages_move_them_once(maildir: Maildir) -> None:
    """From a bug hunt: two sessions of one mailbox (a phone and a desktop running the same
    filter) that MOVEd the same messages at the same moment both copied them before either
    removed them: every message twice in the target."""
    async def run() -> None:
        with ThreadPoolExecutor(4) as executor:
            transports = [FakeTransport() for _ in range(2)]
            sessions = [IMAPSession(fake_service(maildir, executor), "imaps") for _ in transports]
            for session, transport in zip(sessions, transports, strict=True):
                session.connection_made(transport)  # type: ignore[arg-type]
                session.data_received(b"a LOGIN alice x\r\nb SELECT INBOX\r\n")
            for _ in range(500):
                if all(b"b OK" in t.written for t in transports):
                    break
                await asyncio.sleep(0.01)
            for session in sessions:
                session.data_received(b"c UID MOVE 1:* Archive\r\n")
            for _ in range(500):
                if all(b"c OK" in t.written or b"c NO" in t.written for t in transports):
                    break
                await asyncio.sleep(0.01)
            for session, transport in zip(sessions, transports, strict=True):
                transport.close()
                session.connection_lost(None)

    asyncio.run(run())
    assert len(messages_in(maildir.folder_path("Archive"))) == 3
    assert messages_in(maildir.path) == []


@pytest.mark.parametrize("items", ["BINARY[1]", "BINARY.PEEK[1]", "BINARY.SIZE[1]", "(UID BINARY.SIZE[2])"])
def test_binary_fetch_items_are_refused_not_a_server_bug(maildir: Maildir, items: str) -> None:
    """BINARY is not offered: each of RFC 3516's items gets the same plain NO. BINARY.SIZE passed
    that check and reached the body rendering without the message read, an AssertionError, a
    NO [SERVERBUG] and an error in the log for every such FETCH (found by a fuzzer)."""
    answer = run_commands(maildir, ["LOGIN alice x", "SELECT INBOX", f"UID FETCH 1:* {items}"], lambda: None)
    assert answer.startswith(b"t2 NO [CANNOT]"), answer


@pytest.mark.parametrize("folder", ["INBOX", "Old"])
def test_a_session_whose_selected_folder_is_deleted_is_told_bye(maildir: Maildir, folder: str) -> None:
    """From a bug hunt: when another session DELETEd the folder this one had selected, or the
    subscriber's mailbox was deleted (its Maildir set aside) under an open session, every later
    command (NOOP, FETCH, STORE) got NO [SERVERBUG] and logged mail.imap.command_failed, for as
    long as the client stayed. Dovecot ends such a session with a BYE; so does ispd now."""
    maildir.create_folder("Old")

    def delete() -> None:
        if folder == "INBOX":
            maildir.set_aside()
        else:
            maildir.delete_folder("Old")

    answer = run_commands(maildir, ["LOGIN alice x", f"SELECT {folder}", "NOOP"], delete)
    assert answer.startswith(b"* BYE Selected mailbox was deleted"), answer
    assert b"SERVERBUG" not in answer


def fail_writes(monkeypatch: pytest.MonkeyPatch, where: Path, error: int) -> None:
    """Every file opened for writing under ``where`` fails with ``error`` (path-less, as a
    write() that finds the disk full fails)."""
    real_open = os.open

    def open_(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if str(path).startswith(str(where)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(error, os.strerror(error))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize(("error", "expected"), [(errno.ENOSPC, b"NO [OVERQUOTA] Not enough disk space"),
                                                 (errno.EROFS, b"NO [UNAVAILABLE] the mailbox is unavailable "
                                                               b"(Read-only file system), try again later")])
@pytest.mark.parametrize("command", ["APPEND Archive {4+}\r\nhi\r\n", "COPY 1 Archive", "STORE 1 +FLAGS (\\Seen)"])
def test_a_command_the_disk_refuses_says_why(maildir: Maildir, monkeypatch: pytest.MonkeyPatch, command: str,
                                             error: int, expected: bytes) -> None:
    """From the disk-full hunt: APPEND, COPY and STORE on a full disk (or a read-only mount)
    answered `NO [SERVERBUG] internal error` and logged mail.imap.command_failed with no
    mailbox: the client told of a bug, the operator not told which disk. Dovecot answers
    `NO [OVERQUOTA] Not enough disk space`."""
    with capture_logs() as logs:
        answer = run_commands(maildir, ["LOGIN alice x", "SELECT INBOX", command],
                              lambda: fail_writes(monkeypatch, maildir.path, error))
    monkeypatch.undo()
    assert b"t2 " + expected in answer, answer
    assert b"SERVERBUG" not in answer
    failed = [e for e in logs if e["event"] == "mail.imap.storage_failed"]
    assert failed and failed[0]["mailbox"] == str(maildir.path) and os.strerror(error) in failed[0]["error"]


def test_a_login_the_store_cannot_check_is_unavailable_not_failed(maildir: Maildir) -> None:
    """The store down: LOGIN is a temporary failure ([UNAVAILABLE], RFC 5530), not a wrong
    password counted against the client (``MailService.authenticate`` raises AuthUnavailable)."""
    from ispd.mail.engine import AuthUnavailable

    async def run() -> bytes:
        transport = FakeTransport()
        with ThreadPoolExecutor(2) as executor:
            service = fake_service(maildir, executor)
            failed: list[bytes] = []

            async def imap_login(user: bytes, password: bytes, client: str = "") -> None:
                raise AuthUnavailable("cannot connect to the PostgreSQL store")

            async def auth_failed(client: str, login: bytes) -> None:
                failed.append(login)

            service.imap_login, service.auth_failed = imap_login, auth_failed
            session = IMAPSession(service, "imaps")
            session.connection_made(transport)  # type: ignore[arg-type]
            session.data_received(b"a LOGIN alice@isp.example secret\r\n")
            for _ in range(500):
                if b"\r\na " in transport.written:
                    break
                await asyncio.sleep(0.01)
            transport.close()
            session.connection_lost(None)
            assert failed == []
            return transport.written

    assert b"\r\na NO [UNAVAILABLE] temporary authentication failure, try again later\r\n" in asyncio.run(run())
