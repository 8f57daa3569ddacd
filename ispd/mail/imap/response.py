"""IMAP response text, pure: strings as quoted strings or literals, flags between Maildir's
letters and IMAP's names, dates, and the pieces of FETCH responses that come from the message
bytes themselves (sections, header fields)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

# Maildir's info letters (cr.yp.to/proto/maildir.html) and the IMAP system flags they hold.
FLAG_LETTERS = {b"\\Seen": "S", b"\\Answered": "R", b"\\Flagged": "F", b"\\Deleted": "T", b"\\Draft": "D"}
LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()}
SYSTEM_FLAGS = b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft)"
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")


def astring(value: bytes) -> bytes:
    """A string as a quoted string when it can be one, else a literal."""
    if len(value) < 1024 and _QUOTABLE.fullmatch(value) is not None:
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    return b"NIL" if value is None else astring(value)


def flags_of(letters: str, recent: bool = False) -> bytes:
    names = [LETTER_FLAGS[letter] for letter in letters if letter in LETTER_FLAGS]
    if recent:
        names.append(b"\\Recent")
    return b"(" + b" ".join(names) + b")"


def letters_of(flags: tuple[bytes, ...]) -> tuple[str, list[bytes]]:
    """(the Maildir letters of the system flags, the flags Maildir cannot keep)."""
    letters, others = [], []
    for flag in flags:
        letter = next((v for k, v in FLAG_LETTERS.items() if k.lower() == flag.lower()), None)
        if letter is None:
            others.append(flag)
        else:
            letters.append(letter)
    return "".join(sorted(set(letters))), others


def internal_date(timestamp: float) -> bytes:
    return datetime.fromtimestamp(timestamp, UTC).strftime('"%d-%b-%Y %H:%M:%S +0000"').encode()


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header section with its blank line, body) of a message with CRLF line ends."""
    if message.startswith(b"\r\n"):  # no header fields at all (a MIME part may have none)
        return b"\r\n", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[:end + 4], message[end + 4:]


def header_fields(header: bytes, names: tuple[bytes, ...], *, exclude: bool) -> bytes:
    """The header lines (with their continuations) whose field name is, or with ``exclude``
    is not, one of ``names`` (uppercase), and the blank line that ends a header section."""
    wanted = {n.upper() for n in names}
    kept: list[bytes] = []
    keep = False
    for line in header.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().upper()
        keep = (name in wanted) != exclude
        if keep:
            kept.append(line)
    return b"".join(k + b"\r\n" for k in kept) + b"\r\n"
