"""IMAP response text, pure: strings as quoted strings or literals, flags between Maildir's
letters and IMAP's names, dates, and the pieces of FETCH responses that come from the message
bytes themselves (sections, header fields)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
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
    if b"\x00" in value:  # a literal holds no NUL (RFC 3501 §9, CHAR8): 0x80 instead, as Dovecot
        value = value.replace(b"\x00", b"\x80")
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | None) -> bytes:
    return b"NIL" if value is None else astring(value)


def flags_of(letters: str, recent: bool = False, keywords: Sequence[str] = ()) -> bytes:
    """IMAP flags from Maildir letters: the system flags, and the keywords that the folder's
    table (``dovecot-keywords``) names by the letters a, b, c..."""
    names = []
    for letter in letters:
        if letter in LETTER_FLAGS:
            names.append(LETTER_FLAGS[letter])
        elif "a" <= letter <= "z" and ord(letter) - 97 < len(keywords):
            names.append(keywords[ord(letter) - 97].encode("ascii"))
    if recent:
        names.append(b"\\Recent")
    return b"(" + b" ".join(names) + b")"


def letters_of(flags: tuple[bytes, ...]) -> tuple[str, list[str]]:
    """(the Maildir letters of the system flags, the keywords), from flags as a client wrote
    them. Other system flags (``\\Recent``, or ones this server does not know) are dropped:
    they cannot be set."""
    letters: list[str] = []
    keywords: list[str] = []
    for flag in flags:
        letter = next((v for k, v in FLAG_LETTERS.items() if k.lower() == flag.lower()), None)
        if letter is not None:
            letters.append(letter)
        elif not flag.startswith(b"\\") and flag.lower() not in (k.lower().encode() for k in keywords):
            keywords.append(flag.decode("ascii", "replace"))
    return "".join(sorted(set(letters))), keywords


def flag_list(keywords: Sequence[str], *, any_keyword: bool = False) -> bytes:
    """The FLAGS (or, with ``any_keyword``, PERMANENTFLAGS) list of a folder."""
    extra = b"".join(b" " + k.encode("ascii") for k in keywords) + (b" \\*" if any_keyword else b"")
    return SYSTEM_FLAGS[:-1] + extra + b")"


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
    is not, one of ``names`` (uppercase), and the blank line that ends a header section - when
    it has one: RFC 3501 §6.4.5 leaves it out of every header fetch of a message that has no
    body and no blank line (Dovecot's HEADER.FIELDS.NOT too)."""
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
    ended = header == b"\r\n" or header.endswith(b"\r\n\r\n")
    return b"".join(k + b"\r\n" for k in kept) + (b"\r\n" if ended else b"")


_SHIFTED = re.compile(r"&([^-]*)-")


def decode_mailbox_name(name: str) -> str:
    """A mailbox name in modified UTF-7 (RFC 3501 §5.1.3) as Unicode text; ValueError when it
    is not valid modified UTF-7 (an unterminated ``&``, bad base64, or a shifted run that
    holds plain ASCII, which must be written as itself)."""
    def shifted(match: re.Match[str]) -> str:
        text = match.group(1)
        if not text:
            return "&"
        if len(text) % 4 == 1:
            raise ValueError("bad modified UTF-7")
        raw = base64.b64decode((text + "=" * (-len(text) % 4)).replace(",", "/"), validate=True)
        decoded = raw.decode("utf-16-be")
        if any(" " <= c <= "~" for c in decoded):
            raise ValueError("printable ASCII written shifted")
        return decoded

    try:
        decoded = _SHIFTED.sub(shifted, name)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise ValueError(f"not modified UTF-7: {name!r}") from exc
    if "&" in _SHIFTED.sub("", name):
        raise ValueError(f"not modified UTF-7 (an & not closed by -): {name!r}")
    return decoded
