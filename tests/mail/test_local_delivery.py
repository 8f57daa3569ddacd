"""Local delivery to several recipients is all or nothing: a 4xx after DATA makes the sender send
the message again to every recipient (RFC 5321 §4.1.1.4), so a copy that fails must take back
those written before it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ispd.mail import mailindex
from ispd.mail.maildir import Maildir
from ispd.mail.mailindex import FolderIndex
from ispd.mail.service import MailService, PartialDelivery


def _writer() -> MailService:
    service = MailService.__new__(MailService)  # _write needs no more than this
    service._created = set()
    return service


def _mailboxes(tmp_path: Path) -> list[Maildir]:
    maildirs = [Maildir.for_address(tmp_path, f"{name}@isp.example") for name in ("alice", "bob", "carol")]
    for maildir in maildirs:
        maildir.create()
    return maildirs


def _messages(maildir: Maildir) -> list[str]:
    return os.listdir(maildir.path / "new") + os.listdir(maildir.path / "cur")


def _fail_in(monkeypatch: pytest.MonkeyPatch, maildir: Maildir, code: int) -> None:
    """The disk fills (or permissions break) where ``maildir``'s copy is written."""
    real_open = os.open

    def failing_open(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if str(path).startswith(str(maildir.path / "tmp")):
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing_open)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EPERM])
def test_a_copy_that_fails_takes_back_the_copies_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           code: int) -> None:
    alice, bob, carol = _mailboxes(tmp_path)
    assert alice.usage().messages == 0
    _fail_in(monkeypatch, bob, code)
    with pytest.raises(OSError) as failure:
        _writer()._write([alice, bob, carol], b"Subject: x\r\n\r\nhello\r\n", 1.0, "")
    monkeypatch.undo()
    assert failure.value.errno == code and not isinstance(failure.value, PartialDelivery)
    assert _messages(alice) == [] and _messages(bob) == [] and _messages(carol) == []
    assert os.listdir(alice.path / "tmp") == [] or all(n.startswith(".") for n in os.listdir(alice.path / "tmp"))
    # The quota count forgets the copy taken back.
    assert alice.usage().messages == 0 and alice.usage().bytes == 0
    assert alice.recompute_usage().messages == 0


def test_a_copy_a_reader_already_indexed_is_taken_back_from_cur(tmp_path: Path) -> None:
    alice, _, _ = _mailboxes(tmp_path)
    delivered = alice.deliver(b"x\r\n", now=1.0)
    FolderIndex(alice.path).sync()  # an IMAP session moved it to cur/ with a UID
    assert os.listdir(alice.path / "new") == [] and len(os.listdir(alice.path / "cur")) == 1
    assert mailindex.withdraw(alice.path, delivered.name) == delivered.size
    assert _messages(alice) == []
    state = FolderIndex(alice.path).sync()
    assert state.messages == [] and state.next_uid == 2  # its UID is not given again


def test_copies_that_cannot_be_taken_back_make_the_message_delivered(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob, carol = _mailboxes(tmp_path)

    def cannot_remove(folder: Path, name: str) -> int | None:
        raise PermissionError(errno.EPERM, "read-only")

    monkeypatch.setattr(mailindex, "withdraw", cannot_remove)
    _fail_in(monkeypatch, bob, errno.ENOSPC)
    with pytest.raises(PartialDelivery) as failure:
        _writer()._write([alice, bob, carol], b"x\r\n", 1.0, "")
    monkeypatch.undo()
    # alice keeps hers: the sender is told 250, and bob and carol bounce.
    assert failure.value.missing == {bob.path, carol.path}
    assert failure.value.error.errno == errno.ENOSPC
    assert len(_messages(alice)) == 1 and _messages(bob) == [] and _messages(carol) == []


def test_with_a_part_queued_every_copy_that_can_be_written_stays(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: beside a queued part the reply is 250 whatever happens, yet a failing copy
    took back the copies before it, whose recipients then bounced without their mail."""
    alice, bob, carol = _mailboxes(tmp_path)
    _fail_in(monkeypatch, bob, errno.EPERM)
    with pytest.raises(PartialDelivery) as failure:
        _writer()._write([alice, bob, carol], b"Subject: x\r\n\r\nhello\r\n", 1.0, "", all_or_nothing=False)
    monkeypatch.undo()
    assert failure.value.missing == {bob.path} and failure.value.error.errno == errno.EPERM
    assert len(_messages(alice)) == 1 and _messages(bob) == [] and len(_messages(carol)) == 1


def test_a_local_recipient_bounced_under_a_250_failed_for_good() -> None:
    from ispd.mail.engine import Reply
    from ispd.mail.service import _bounced

    full = _bounced(Reply(452, "4.2.2", "Mailbox full, try again later"))
    assert (full.status, full.detail) == ("5.2.2", "local delivery: Mailbox full")
    assert _bounced(Reply(550, "5.3.0", "the mailbox could not be written: Permission denied")).status == "5.3.0"
