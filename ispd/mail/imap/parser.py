"""IMAP commands, parsed: from a framed command (``framing.Command``) to typed objects.

The grammar is RFC 3501 §9 (with RFC 9051's additions clients send): tags and atoms, quoted
strings and literals wherever a string may be, sequence sets with ``*`` and ranges in either
order, fetch attributes with sections (``BODY.PEEK[1.2.HEADER.FIELDS (To From)]<0.100>``),
search keys (nested lists, OR, NOT), store modes, the UID forms, and the arguments of the
extensions ispd implements (CONDSTORE's CHANGEDSINCE/UNCHANGEDSINCE and MODSEQ search key,
QRESYNC's SELECT parameter and VANISHED fetch modifier, ENABLE, ID, IDLE, MOVE,
UIDPLUS's UID EXPUNGE, QUOTA, SPECIAL-USE selection in LIST). A command that does not parse
raises ``ParseError`` with the text of the BAD reply; the session goes on.

Pure: no sockets, no mailstore. Strings are bytes (mailbox names in modified UTF-7 or UTF-8,
passwords in whatever the client sent); the engine decodes what it needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ispd.mail.imap.framing import Command as FramedCommand

MAX_DEPTH = 16  # nested lists in SEARCH: deeper is an attack, not a query
# Atoms are 7-bit (RFC 3501 §9: CHAR is %x01-7F); 8-bit text comes quoted or as a literal.
_TAG = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\+]+")
_ATOM = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\\]]+")
_ASTRING_ATOM = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\]+")  # ASTRING-CHAR: "]" allowed
# A mailbox name as an atom may hold "%", "*" and "\" too, as Dovecot takes it: imaplib2
# (offlineimap) sends SELECT star*s so, and such a folder could not be read otherwise.
_MAILBOX_ATOM = re.compile(rb"[^\x00-\x20\x7f-\xff(){\"]+")
_LIST_CHARS = re.compile(rb"[^\x00-\x20\x7f-\xff(){\"\\]+")  # list-mailbox: "%" and "*" allowed
_NUMBER = re.compile(rb"\d{1,20}")
_SEQUENCE = re.compile(rb"[0-9*:,$]+")
_LITERAL = re.compile(rb"~?\{(\d+)\+?\}$")
_DATE = re.compile(rb'"?(\d{1,2})-([A-Za-z]{3})-(\d{4})"?')
_MONTHS = {m: i for i, m in enumerate(
    [b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"], 1)}


class ParseError(Exception):
    """A command that does not parse; str() is the text of the BAD reply."""


# --- typed pieces

@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges (low, high), each end a number or None for "*"; as written (the engine orders)."""

    ranges: tuple[tuple[int | None, int | None], ...]


@dataclass(frozen=True, slots=True)
class Section:
    parts: tuple[int, ...] = ()  # "1.2" -> (1, 2)
    text: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[bytes, ...] = ()  # for HEADER.FIELDS (NOT), uppercase


@dataclass(frozen=True, slots=True)
class FetchItem:
    name: str  # FLAGS, UID, BODY, BINARY, RFC822.SIZE, ...
    section: Section | None = None  # BODY[...] / BINARY[...]
    peek: bool = False
    partial: tuple[int, int] | None = None  # <offset.length>


@dataclass(frozen=True, slots=True)
class SearchKey:
    name: str  # ALL, SEEN, FROM, OR, NOT, AND (a parenthesized list), SEQUENCE, UID, ...
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    tag: str
    name: str  # uppercase; "UID FETCH" etc. for the UID forms
    args: dict[str, Any] = field(default_factory=dict)


# --- reading tokens from the framed pieces

class _Reader:
    def __init__(self, pieces: tuple[bytes, ...]) -> None:
        self.pieces = pieces
        self.index = 0  # which text piece (even indexes)
        self.text = pieces[0]
        self.pos = 0

    def peek(self, n: int = 1) -> bytes:
        return self.text[self.pos:self.pos + n]

    def at_end(self) -> bool:
        return self.pos >= len(self.text) and self.index + 1 >= len(self.pieces)

    def expect(self, literal: bytes) -> None:
        if self.text[self.pos:self.pos + len(literal)].upper() != literal.upper():
            raise ParseError(f"expected {literal.decode()!r}")
        self.pos += len(literal)

    def sp(self) -> None:
        self.expect(b" ")

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        found = pattern.match(self.text, self.pos)
        if found is None:
            raise ParseError(f"expected {what}")
        self.pos = found.end()
        return found.group(0)

    def atom(self) -> bytes:
        return self.match(_ATOM, "an atom")

    def number(self, what: str = "a number") -> int:
        value = int(self.match(_NUMBER, what))
        if value >= 2**63:
            raise ParseError(f"{what} too large")
        return value

    def string(self) -> bytes:
        if self.peek() == b'"':
            return self.quoted()
        literal = _LITERAL.match(self.text, self.pos)
        if literal is not None:
            if self.index + 2 >= len(self.pieces):
                raise ParseError("literal without its octets")
            value = self.pieces[self.index + 1]
            self.index += 2
            self.text, self.pos = self.pieces[self.index], 0
            return value
        raise ParseError("expected a string")

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        while True:
            char = self.peek()
            if not char:
                raise ParseError("unterminated quoted string")
            self.pos += 1
            if char == b'"':
                return bytes(out)
            if char == b"\\":
                escaped = self.peek()
                if escaped not in (b'"', b"\\"):
                    raise ParseError("bad escape in a quoted string")
                out += escaped
                self.pos += 1
            elif char in (b"\r", b"\n", b"\x00"):
                raise ParseError("CR, LF or NUL in a quoted string")
            else:
                out += char

    def _at_string(self) -> bool:
        """A quoted string or a literal (a literal8 "~{" too) starts here; "~" alone is an
        ASTRING-CHAR like any other (RFC 3501 §9), as in a folder named ~work."""
        return self.peek() in (b'"', b"{") or self.text[self.pos:self.pos + 2] == b"~{"

    def astring(self) -> bytes:
        if self._at_string():
            return self.string()
        return self.match(_ASTRING_ATOM, "an atom or string")

    def nstring_or_nil(self) -> bytes | None:
        if self.text[self.pos:self.pos + 3].upper() == b"NIL" and not _ATOM.match(self.text, self.pos + 3):
            self.pos += 3
            return None
        return self.string()

    def mailbox(self) -> bytes:
        name = self.string() if self._at_string() else self.match(_MAILBOX_ATOM, "a mailbox name")
        return b"INBOX" if name.upper() == b"INBOX" else name

    def list_mailbox(self) -> bytes:
        if self._at_string():
            return self.string()
        return self.match(_LIST_CHARS, "a mailbox pattern")

    def sequence_set(self) -> SequenceSet:
        text = self.match(_SEQUENCE, "a sequence set")
        if text == b"$":  # (not offered: it named no message, and the command answered OK)
            raise ParseError("$ needs SEARCHRES (RFC 5182), which is not supported")
        ranges = []
        for part in text.split(b","):
            low, colon, high = part.partition(b":")
            try:
                ranges.append((_seq_number(low), _seq_number(high if colon else low)))
            except ValueError:
                raise ParseError(f"bad sequence set {text.decode()!r}") from None
        return SequenceSet(tuple(ranges))

    def flag_list(self) -> tuple[bytes, ...]:
        self.expect(b"(")
        flags: list[bytes] = []
        while self.peek() != b")":
            if flags:
                self.sp()
            flags.append(self.flag())
        self.pos += 1
        return tuple(flags)

    def flag(self) -> bytes:
        if self.peek() == b"\\":
            self.pos += 1
            if self.peek() == b"*":
                self.pos += 1
                return b"\\*"
            return b"\\" + self.atom()
        return self.atom()

    def date(self) -> datetime:
        found = _DATE.match(self.text, self.pos)
        if found is None or found.group(2).lower() not in _MONTHS:
            raise ParseError("expected a date like 1-Feb-2026")
        self.pos = found.end()
        try:
            return datetime(int(found.group(3)), _MONTHS[found.group(2).lower()], int(found.group(1)))
        except ValueError:
            raise ParseError("no such date") from None

    def date_time(self) -> float:
        """An APPEND date-time (RFC 3501 §9 date-time), as a POSIX time."""
        found = re.fullmatch(rb"[ ]?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)",
                             self.quoted())
        if found is None or found.group(2).lower() not in _MONTHS:
            raise ParseError("bad date-time")
        day, _, year, hour, minute, second, sign, zone_hours, zone_minutes = found.groups()
        if not 1900 <= int(year) <= 2999:  # an INTERNALDATE that files and replies can hold
            raise ParseError("date-time out of range")
        offset = timedelta(hours=int(zone_hours), minutes=int(zone_minutes)) * (-1 if sign == b"-" else 1)
        try:
            return datetime(int(year), _MONTHS[found.group(2).lower()], int(day), int(hour), int(minute), int(second),
                            tzinfo=timezone(offset)).timestamp()
        except ValueError:
            raise ParseError("no such date-time") from None

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("unexpected text at the end of the command")


def _seq_number(text: bytes) -> int | None:
    if text == b"*":
        return None
    value = int(text)  # ValueError for "", "$", "1*"
    if not 0 < value < 2**32:
        raise ValueError(text)
    return value


# --- commands

def parse(framed: FramedCommand) -> Command:
    """The command; raises ParseError (its tag, if one was read, in ``.tag``)."""
    reader = _Reader(framed.pieces)
    try:
        tag = reader.match(_TAG, "a tag").decode("ascii")
    except ParseError:
        raise ParseError("expected a tag") from None
    try:
        reader.sp()
        name = reader.atom().upper().decode("ascii")
        uid = False
        if name == "UID":
            reader.sp()
            name = reader.atom().upper().decode("ascii")
            if name not in ("FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"):
                raise ParseError(f"UID {name} is not a command")
            uid = True
        handler = _COMMANDS.get(name)
        if handler is None:
            raise ParseError(f"unknown command {name[:40]}")
        args = handler(reader)
        reader.end()
        if name == "EXPUNGE" and (args["set"] is not None) != uid:
            raise ParseError("UID EXPUNGE takes a sequence set, EXPUNGE none")
    except ParseError as exc:
        exc.tag = tag  # type: ignore[attr-defined]
        raise
    return Command(tag, f"UID {name}" if uid else name, args)


def _none(reader: _Reader) -> dict[str, Any]:
    return {}


def _login(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    user = reader.astring()
    reader.sp()
    return {"user": user, "password": reader.astring()}


def _authenticate(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    mechanism = reader.atom().upper().decode("ascii")
    initial = None
    if reader.peek() == b" ":
        reader.sp()
        initial = reader.match(re.compile(rb"[A-Za-z0-9+/]*=*"), "an initial response")
    return {"mechanism": mechanism, "initial": initial}


def _mailbox(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    return {"mailbox": reader.mailbox()}


@dataclass(frozen=True, slots=True)
class QResync:
    """SELECT's QRESYNC parameter (RFC 7162 §3.2.5): what the client cached last time."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


def _select(reader: _Reader) -> dict[str, Any]:
    args = _mailbox(reader)
    args["condstore"] = False
    args["qresync"] = None
    if reader.peek() == b" ":
        reader.sp()
        reader.expect(b"(")
        while reader.peek() != b")":
            parameter = reader.atom().upper()
            if parameter == b"CONDSTORE":
                args["condstore"] = True
            elif parameter == b"QRESYNC":
                reader.sp()
                args["qresync"] = _qresync(reader)
            else:
                raise ParseError(f"unknown SELECT parameter {parameter.decode()[:40]}")
            if reader.peek() == b" ":
                reader.sp()
        reader.pos += 1
    return args


def _qresync(reader: _Reader) -> QResync:
    reader.expect(b"(")
    uidvalidity = reader.number("a UIDVALIDITY")
    reader.sp()
    modseq = reader.number("a mod-sequence")
    known = seq_match = None
    if reader.peek() == b" ":
        reader.sp()
        if reader.peek() != b"(":
            known = reader.sequence_set()
            if reader.peek() == b" ":
                reader.sp()
        if reader.peek() == b"(":
            reader.pos += 1
            numbers = reader.sequence_set()
            reader.sp()
            seq_match = (numbers, reader.sequence_set())
            reader.expect(b")")
    reader.expect(b")")
    if uidvalidity == 0 or modseq == 0:
        raise ParseError("QRESYNC needs a UIDVALIDITY and a mod-sequence above zero")
    return QResync(uidvalidity, modseq, known, seq_match)


def _quota_root(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    return {"root": reader.astring()}


def _rename(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    old = reader.mailbox()
    reader.sp()
    return {"old": old, "new": reader.mailbox()}


def _list(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    selection: tuple[bytes, ...] = ()
    if reader.peek() == b"(":  # RFC 5258 selection options, e.g. (SPECIAL-USE)
        selection = reader.flag_list()
        reader.sp()
    reference = reader.astring()
    reader.sp()
    pattern = reader.list_mailbox()
    returns: tuple[bytes, ...] = ()
    if reader.peek() == b" ":
        reader.sp()
        reader.expect(b"RETURN ")
        returns = reader.flag_list()
    selection, returns = tuple(s.upper() for s in selection), tuple(r.upper() for r in returns)
    # RFC 5258 §3: an option the server does not implement is BAD, never ignored (an ignored
    # SUBSCRIBED or SPECIAL-USE would answer with every folder, as if the client had asked that).
    unknown = [o for o in selection if o not in _LIST_SELECTION] + [o for o in returns if o not in _LIST_RETURN]
    if unknown:
        raise ParseError(f"LIST option {unknown[0].decode(errors='replace')[:40]} is not supported")
    return {"reference": reference, "pattern": pattern, "selection": selection, "return": returns}


_LIST_SELECTION = {b"SPECIAL-USE", b"SUBSCRIBED"}  # RFC 6154 §2, RFC 5258 §3.1
_LIST_RETURN = {b"SPECIAL-USE", b"SUBSCRIBED", b"CHILDREN"}  # RFC 6154 §2, RFC 5258 §3.2


_STATUS_ITEMS = {b"MESSAGES", b"RECENT", b"UIDNEXT", b"UIDVALIDITY", b"UNSEEN", b"HIGHESTMODSEQ", b"SIZE"}


def _status(reader: _Reader) -> dict[str, Any]:
    args = _mailbox(reader)
    reader.sp()
    items = tuple(item.upper() for item in reader.flag_list())
    unknown = [i for i in items if i not in _STATUS_ITEMS]
    if unknown or not items:
        raise ParseError(f"bad STATUS item {unknown[0].decode()[:40] if unknown else '()'}")
    args["items"] = tuple(i.decode() for i in items)
    return args


def _append(reader: _Reader) -> dict[str, Any]:
    args = _mailbox(reader)
    reader.sp()
    flags: tuple[bytes, ...] = ()
    date = None
    if reader.peek() == b"(":
        flags = _settable(reader.flag_list())
        reader.sp()
    if reader.peek() == b'"':
        date = reader.date_time()
        reader.sp()
    args.update({"flags": flags, "date": date, "message": reader.string()})
    return args


def _enable(reader: _Reader) -> dict[str, Any]:
    capabilities = []
    while reader.peek() == b" ":
        reader.sp()
        capabilities.append(reader.atom().upper().decode("ascii"))
    if not capabilities:
        raise ParseError("ENABLE needs a capability")
    return {"capabilities": tuple(capabilities)}


def _id(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    if reader.peek(3).upper() == b"NIL":
        reader.pos += 3
        return {"parameters": {}}
    reader.expect(b"(")
    parameters: dict[bytes, bytes | None] = {}
    while reader.peek() != b")":
        if parameters:
            reader.sp()
        key = reader.string()
        reader.sp()
        parameters[key] = reader.nstring_or_nil()
        if len(parameters) > 30:
            raise ParseError("too many ID parameters")
    reader.pos += 1
    return {"parameters": parameters}


def _expunge(reader: _Reader) -> dict[str, Any]:
    if reader.peek() == b" ":  # UID EXPUNGE set (RFC 4315)
        reader.sp()
        return {"set": reader.sequence_set()}
    return {"set": None}


def _copy(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    return {"set": sequence, "mailbox": reader.mailbox()}


_STORE_ITEM = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE)


def _store(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    unchanged_since = None
    if reader.peek() == b"(":
        reader.expect(b"(UNCHANGEDSINCE ")
        unchanged_since = reader.number("a mod-sequence")
        reader.expect(b") ")
    item = reader.match(_STORE_ITEM, "FLAGS, +FLAGS or -FLAGS")
    found = _STORE_ITEM.fullmatch(item)
    assert found is not None
    reader.sp()
    if reader.peek() == b"(":
        flags = reader.flag_list()
    else:  # RFC 3501 allows the flags without parentheses
        flags = (reader.flag(),)
        while reader.peek() == b" ":
            reader.sp()
            flags += (reader.flag(),)
    return {"set": sequence, "mode": found.group(1).decode() or "=", "silent": bool(found.group(2)),
            "flags": _settable(flags), "unchanged_since": unchanged_since}


_SYSTEM_FLAGS = {b"\\ANSWERED", b"\\FLAGGED", b"\\DELETED", b"\\SEEN", b"\\DRAFT"}


def _settable(flags: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """The flags of a STORE or APPEND; BAD for a system flag a client cannot set (RFC 3501 §9:
    \\Recent and \\* are not a ``flag``), or one this server does not know, as from Dovecot
    ("Invalid system flag"): dropped, STORE FLAGS (\\*) cleared every flag of the message with
    an OK, and a mistyped \\Sean was an OK that set nothing."""
    for flag in flags:
        if flag.startswith(b"\\") and flag.upper() not in _SYSTEM_FLAGS:
            raise ParseError(f"invalid system flag {flag.decode('ascii', 'replace')[:40]}")
    return flags


# FETCH

_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_ITEMS = {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODYSTRUCTURE", "UID", "RFC822",
                 "RFC822.HEADER", "RFC822.TEXT", "MODSEQ", "BODY"}
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")


def _fetch(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    items: list[FetchItem] = []
    if reader.peek() == b"(":
        reader.pos += 1
        while True:
            items.append(_fetch_item(reader))
            if reader.peek() == b")":
                reader.pos += 1
                break
            reader.sp()
    else:
        name = reader.match(_FETCH_NAME, "a fetch item").upper().decode("ascii")
        if name in _MACROS:
            items = [FetchItem(n) for n in _MACROS[name]]
        else:
            reader.pos -= len(name)
            items = [_fetch_item(reader)]
    changed_since, vanished = None, False
    if reader.peek() == b" ":  # fetch modifiers (RFC 7162): CHANGEDSINCE n, VANISHED; any order
        reader.sp()
        reader.expect(b"(")
        while True:
            modifier = reader.atom().upper()
            if modifier == b"CHANGEDSINCE":
                reader.sp()
                changed_since = reader.number("a mod-sequence")
            elif modifier == b"VANISHED":
                vanished = True
            else:
                raise ParseError(f"unknown FETCH modifier {modifier.decode()[:40]}")
            if reader.peek() == b")":
                reader.pos += 1
                break
            reader.sp()
        if vanished and changed_since is None:
            raise ParseError("VANISHED needs CHANGEDSINCE")
    return {"set": sequence, "items": tuple(items), "changed_since": changed_since, "vanished": vanished}


def _fetch_item(reader: _Reader) -> FetchItem:
    name = reader.match(_FETCH_NAME, "a fetch item").upper().decode("ascii")
    if name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE") and reader.peek() == b"[":
        section = _section(reader, binary=name.startswith("BINARY"))
        partial = None
        if reader.peek() == b"<":
            reader.pos += 1
            offset = reader.number("an offset")
            reader.expect(b".")
            length = reader.number("a length")
            if length == 0:
                raise ParseError("a partial fetch of 0 octets")
            reader.expect(b">")
            partial = (offset, length)
        base = name.removesuffix(".PEEK")
        return FetchItem(base, section, peek=name.endswith(".PEEK"), partial=partial)
    if name not in _SIMPLE_ITEMS:
        raise ParseError(f"unknown fetch item {name[:40]}")
    return FetchItem(name)


def _section(reader: _Reader, *, binary: bool) -> Section:
    reader.expect(b"[")
    parts: list[int] = []
    text = ""
    fields: tuple[bytes, ...] = ()
    while reader.peek().isdigit():
        parts.append(reader.number("a part number"))
        if parts[-1] == 0:
            raise ParseError("part numbers start at 1")
        if reader.peek() != b".":
            break
        reader.pos += 1
    if not binary and reader.peek() != b"]":
        word = reader.match(re.compile(rb"[A-Za-z.]+"), "a section").upper().decode("ascii")
        if word not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME") or (
                word == "MIME" and not parts):
            raise ParseError(f"bad section {word[:40]}")
        text = word
        if word.startswith("HEADER.FIELDS"):
            reader.sp()
            reader.expect(b"(")
            names: list[bytes] = []
            while reader.peek() != b")":
                if names:
                    reader.sp()
                names.append(reader.astring().upper())
            reader.pos += 1
            if not names:
                raise ParseError("HEADER.FIELDS needs at least one field")
            fields = tuple(names)
    reader.expect(b"]")
    return Section(tuple(parts), text, fields)


# SEARCH

_FLAG_KEYS = {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN", "UNANSWERED",
              "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"}
_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_NUMBER_KEYS = {"LARGER", "SMALLER"}
_KEYWORD_KEYS = {"KEYWORD", "UNKEYWORD"}


def _search(reader: _Reader) -> dict[str, Any]:
    reader.sp()
    charset = None
    if reader.text[reader.pos:reader.pos + 7].upper() == b"RETURN ":
        # ESEARCH (RFC 4731) is not offered: its options were read and ignored, and the answer
        # came as a plain SEARCH, which a client that asked for (COUNT) or (MIN) cannot read.
        raise ParseError("SEARCH RETURN needs ESEARCH (RFC 4731), which is not supported")
    if reader.text[reader.pos:reader.pos + 8].upper() == b"CHARSET ":
        reader.pos += 8
        charset = reader.astring().upper().decode("ascii", errors="replace")
        reader.sp()
    keys = [_search_key(reader, 0)]
    while reader.peek() == b" ":
        reader.sp()
        keys.append(_search_key(reader, 0))
    key = keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    return {"charset": charset, "key": key}


def _search_key(reader: _Reader, depth: int) -> SearchKey:
    if depth > MAX_DEPTH:
        raise ParseError("search keys nested too deeply")
    if reader.peek() == b"(":
        reader.pos += 1
        keys = [_search_key(reader, depth + 1)]
        while reader.peek() == b" ":
            reader.sp()
            keys.append(_search_key(reader, depth + 1))
        reader.expect(b")")
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
    if reader.peek() in (b"*", b"$") or reader.peek().isdigit():
        return SearchKey("SEQUENCE", (reader.sequence_set(),))
    name = reader.atom().upper().decode("ascii", errors="replace")
    if name in _FLAG_KEYS:
        return SearchKey(name)
    reader.sp()
    if name in _STRING_KEYS:
        return SearchKey(name, (reader.astring(),))
    if name in _DATE_KEYS:
        return SearchKey(name, (reader.date(),))
    if name in _NUMBER_KEYS:
        return SearchKey(name, (reader.number(),))
    if name == "MODSEQ":
        # RFC 7162 §3.1.5: an optional metadata entry and type before the number. Modseqs are
        # kept per message here, not per flag, so the entry narrows nothing and is only read.
        if reader.peek() == b'"':
            reader.quoted()
            reader.sp()
            kind = reader.atom().lower()
            if kind not in (b"priv", b"shared", b"all"):
                raise ParseError("MODSEQ entry type must be priv, shared or all")
            reader.sp()
        return SearchKey(name, (reader.number("a mod-sequence"),))
    if name in _KEYWORD_KEYS:
        return SearchKey(name, (reader.flag(),))
    if name == "HEADER":
        field_name = reader.astring()
        reader.sp()
        return SearchKey(name, (field_name.upper(), reader.astring()))
    if name == "UID":
        return SearchKey(name, (reader.sequence_set(),))
    if name == "NOT":
        return SearchKey(name, (_search_key(reader, depth + 1),))
    if name == "OR":
        first = _search_key(reader, depth + 1)
        reader.sp()
        return SearchKey(name, (first, _search_key(reader, depth + 1)))
    raise ParseError(f"unknown search key {name[:40]}")


_COMMANDS = {
    "CAPABILITY": _none, "NOOP": _none, "LOGOUT": _none, "STARTTLS": _none, "IDLE": _none,
    "NAMESPACE": _none, "CHECK": _none, "CLOSE": _none, "UNSELECT": _none,
    "LOGIN": _login, "AUTHENTICATE": _authenticate,
    "SELECT": _select, "EXAMINE": _select,
    "CREATE": _mailbox, "DELETE": _mailbox, "SUBSCRIBE": _mailbox, "UNSUBSCRIBE": _mailbox,
    "GETQUOTAROOT": _mailbox, "GETQUOTA": _quota_root,
    "RENAME": _rename, "LIST": _list, "LSUB": _list, "STATUS": _status, "APPEND": _append,
    "ENABLE": _enable, "ID": _id,
    "EXPUNGE": _expunge, "SEARCH": _search, "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy,
}
