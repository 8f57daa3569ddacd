"""Header fetches of a message that has no blank line after its header: RFC 3501 §6.4.5 leaves
the blank line out of every header fetch of such a message (it has none to give)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispd.mail.maildir import Maildir
from tests.mail.imap.test_session_failures import run_commands


@pytest.fixture()
def maildir(tmp_path: Path) -> Maildir:
    maildir = Maildir.for_address(tmp_path, "alice@isp.example")
    maildir.create()
    return maildir


def fetched(maildir: Maildir, message: bytes, section: str) -> bytes:
    maildir.deliver(message)
    answer = run_commands(maildir, ["LOGIN alice@isp.example secret", "SELECT INBOX", f"FETCH 1 (BODY.PEEK[{section}])"],
                          lambda: None)
    return answer.split(b"}\r\n", 1)[1].rsplit(b")\r\n", 1)[0]


@pytest.mark.parametrize(("section", "content"), [
    ("HEADER", b"From: a@b.example\r\nSubject: no body\r\nX-Foo: bar"),
    ("HEADER.FIELDS.NOT (X-Foo)", b"From: a@b.example\r\nSubject: no body\r\n"),
    ("HEADER.FIELDS (Subject)", b"Subject: no body\r\n"),
])
def test_a_header_without_its_blank_line_is_served_without_one(maildir: Maildir, section: str, content: bytes) -> None:
    """HEADER.FIELDS.NOT added a CRLF the message does not have (Dovecot: none); so did HEADER.FIELDS."""
    assert fetched(maildir, b"From: a@b.example\nSubject: no body\nX-Foo: bar", section) == content


@pytest.mark.parametrize(("section", "content"), [
    ("HEADER.FIELDS.NOT (X-Foo)", b"From: a@b.example\r\nSubject: s\r\n\r\n"),
    ("HEADER.FIELDS (Subject)", b"Subject: s\r\n\r\n"),
])
def test_a_header_with_its_blank_line_keeps_it(maildir: Maildir, section: str, content: bytes) -> None:
    assert fetched(maildir, b"From: a@b.example\nSubject: s\nX-Foo: bar\n\nbody\n", section) == content
