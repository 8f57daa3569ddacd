from __future__ import annotations

import base64

import pytest

from ispd.mail.imap.parser import SequenceSet
from ispd.mail.imap.session import uid_set, vanished


def test_uid_sets_are_compact() -> None:
    assert uid_set([1, 2, 3, 7, 9, 10]) == b"1:3,7,9:10"
    assert uid_set([4]) == b"4" and uid_set([]) == b""


@pytest.mark.parametrize(("known", "present", "top", "expected"), [
    (((1, None),), [2, 4, 5], 7, b"1,3,6:7"),
    (((1, 4),), [1, 2, 3, 4], 9, b""),
    (((5, 3), (8, 8)), [4], 9, b"3,5,8"),  # ranges in either order; "*" is the highest UID given
    (((1, 4294967295),), [2], 3, b"1,3"),  # never walks past the highest UID ever given
    (((None, None),), [], 6, b"6"),
    (((1, 3), (2, 5)), [], 9, b"1:5"),  # overlapping ranges merged
])
def test_vanished_names_the_gaps(known: tuple[tuple[int | None, int | None], ...], present: list[int], top: int,
                                 expected: bytes) -> None:
    assert vanished(SequenceSet(known), present, top) == expected


def test_flag_search_keys_read_the_index_alone() -> None:
    from ispd.mail.imap.parser import SearchKey
    from ispd.mail.imap.session import _matches
    from ispd.mail.mailindex import IndexedMessage

    def message(flags: str, recent: bool) -> IndexedMessage:
        return IndexedMessage(1, "m:2," + flags, flags, 10, 12, 0.0, recent, 3)

    cases = {"ALL": (True, True, True), "SEEN": (True, False, False), "UNSEEN": (False, True, True),
             "RECENT": (True, True, False), "NEW": (False, True, False), "OLD": (False, False, True),
             "FLAGGED": (False, True, False), "UNFLAGGED": (True, False, True), "DELETED": (False, False, True)}
    messages = [message("S", True), message("F", True), message("T", False)]
    for key, expected in cases.items():
        assert tuple(_matches(SearchKey(key), 1, m, b"", messages) for m in messages) == expected, key
    assert _matches(SearchKey("MODSEQ", (3,)), 1, messages[0], b"", messages)
    assert not _matches(SearchKey("MODSEQ", (4,)), 1, messages[0], b"", messages)


@pytest.mark.parametrize(("name", "text"), [
    ("&AMk-t&AOk-", "Été"), ("Sent", "Sent"), ("A&-B", "A&B"), ("&ZeVnLIqe-", "日本語"),
])
def test_mailbox_names_in_modified_utf7_decode(name: str, text: str) -> None:
    from ispd.mail.imap.response import decode_mailbox_name
    assert decode_mailbox_name(name) == text


@pytest.mark.parametrize("name", ["&", "a&b", "&AGE-", "&A-", "&!!-", "&2D0-"])
def test_broken_modified_utf7_is_refused(name: str) -> None:
    from ispd.mail.imap.response import decode_mailbox_name
    with pytest.raises(ValueError):
        decode_mailbox_name(name)


ENCODED = (b"From: =?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <j@example.org>\r\n"
           b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus?=\r\n =?ISO-8859-1?Q?K=F6ln?=\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"Der r=E9port ist fertig.\r\n"
           b"--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes("<p>Das geheimwort steht hier: Straße</p>".encode()).replace(b"\n", b"\r\n")
           + b"--b--\r\n")


@pytest.mark.parametrize(("key", "args", "found"), [
    ("SUBJECT", ("Köln".encode(),), True),
    ("SUBJECT", ("grüße AUS".encode(),), True),  # case-insensitively
    ("SUBJECT", ("ausköln".encode(),), True),  # white space between encoded words is no text (RFC 2047 §6.2)
    ("FROM", ("jürgen müller".encode(),), True),
    ("FROM", (b"j@example.org",), True),  # as stored
    ("HEADER", (b"Subject", "Köln".encode()), True),
    ("BODY", ("réport".encode(),), True),  # quoted-printable, ISO-8859-1
    ("BODY", (b"STRASSE",), True),  # Unicode caseless matching: ß is ss
    ("BODY", ("straße".encode(),), True),  # base64, UTF-8
    ("BODY", (b"geheimwort",), True),
    ("TEXT", ("jürgen".encode(),), True),
    ("TEXT", (b"nowhere",), False),
    ("SUBJECT", (b"r=E9port",), False),
])
def test_searches_see_decoded_headers_and_bodies(key: str, args: tuple[bytes, ...], found: bool) -> None:
    """RFC 3501 §6.4.4: encoded words and transfer encodings are undone before matching."""
    from ispd.mail.imap.parser import SearchKey
    from ispd.mail.imap.session import _matches
    from ispd.mail.mailindex import IndexedMessage

    message = IndexedMessage(1, "m:2,", "", len(ENCODED), len(ENCODED), 0.0, False, 1)
    assert _matches(SearchKey(key, args), 1, message, ENCODED, [message]) is found


RAW_UTF8 = ("From: Иван <ivan@example.org>\r\nSubject: Москва и Ärger\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Привет, Москва! Über die Straße.\r\n").encode()


@pytest.mark.parametrize(("key", "word"), [
    ("SUBJECT", "москва"), ("SUBJECT", "ärger"), ("FROM", "иван"), ("BODY", "москва"), ("BODY", "über"),
    ("BODY", "STRASSE"), ("TEXT", "ПРИВЕТ"),
])
def test_searches_in_raw_utf8_are_case_insensitive_beyond_ascii(key: str, word: str) -> None:
    """Mail as clients send it today: UTF-8 in 8 bits, in headers (RFC 6532) and body. A
    lower-case search finds the capitalised word (RFC 3501 §6.4.4), non-ASCII letters too."""
    from ispd.mail.imap.parser import SearchKey
    from ispd.mail.imap.session import _matches
    from ispd.mail.mailindex import IndexedMessage

    message = IndexedMessage(1, "m:2,", "", len(RAW_UTF8), len(RAW_UTF8), 0.0, False, 1)
    assert _matches(SearchKey(key, (word.encode(),)), 1, message, RAW_UTF8, [message])
    assert not _matches(SearchKey(key, ("жжж".encode(),)), 1, message, RAW_UTF8, [message])


def test_an_envelope_keeps_raw_utf8_headers_as_they_are() -> None:
    """ENVELOPE's subject and names in 8-bit UTF-8 reach the client as written (Dovecot does
    the same), not as one U+FFFD per byte: phones list messages from ENVELOPE."""
    from ispd.mail.imap.session import _envelope

    header, _, _ = RAW_UTF8.partition(b"\r\n\r\n")
    envelope = _envelope(header + b"\r\n\r\n")
    assert "Москва и Ärger".encode() in envelope and "Иван".encode() in envelope, envelope
    assert "\ufffd".encode() not in envelope


def test_hostile_messages_cost_little_and_break_no_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header of 200 KB of unfinished encoded words (the email package decodes them in
    quadratic time: a minute for that much) reaches the decoder 4 KiB at a time, 16 KiB in all;
    multiparts nested a thousand deep (a RecursionError in the email package) leave the search
    answering (from a review)."""
    import email.header

    from ispd.mail.imap.parser import SearchKey
    from ispd.mail.imap.session import _matches
    from ispd.mail.mailindex import IndexedMessage

    decoded: list[int] = []
    original = email.header.decode_header

    def measured(text: str) -> list[tuple[bytes | str, str | None]]:
        decoded.append(len(text))
        return original(text)

    monkeypatch.setattr(email.header, "decode_header", measured)
    hostile_header = b"Subject: " + b"=?utf-8?q?x " * 20_000 + b"\r\n\r\nbody\r\n"
    nested = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" \
        + b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" * 1000
    for data in (hostile_header, nested):
        message = IndexedMessage(1, "m:2,", "", len(data), len(data), 0.0, False, 1)
        for key in ("SUBJECT", "TEXT", "BODY"):
            decoded.clear()
            assert _matches(SearchKey(key, (b"nowhere",)), 1, message, data, [message]) is False
            assert max(decoded, default=0) <= 4096 and sum(decoded) <= 4 * 4096, (key, decoded)


def test_a_search_in_another_charset_is_matched_as_utf8() -> None:
    from ispd.mail.imap.parser import SearchKey
    from ispd.mail.imap.session import _transcoded

    key = SearchKey("OR", (SearchKey("SUBJECT", ("Köln".encode("latin-1"),)),
                           SearchKey("HEADER", (b"X-City", "Köln".encode("latin-1")))))
    assert _transcoded(key, "ISO-8859-1") == SearchKey("OR", (SearchKey("SUBJECT", ("Köln".encode(),)),
                                                              SearchKey("HEADER", (b"X-City", "Köln".encode()))))


def test_a_literal_carries_no_nul() -> None:
    """RFC 3501 §9: a literal is CHAR8, NUL excepted. A message with a NUL in it (from a broken
    sender) goes out with 0x80 there, as Dovecot sends it, its size unchanged."""
    from ispd.mail.imap.response import astring

    assert astring(b"ab\x00cd\r\n") == b"{7}\r\nab\x80cd\r\n"
    assert astring(b"plain\r\n") == b"{7}\r\nplain\r\n"


@pytest.mark.parametrize("date_field", [b"", b"Date: not a date\r\n"])
@pytest.mark.parametrize(("key", "day", "found"), [
    ("SENTBEFORE", "2-Jan-1970", True), ("SENTBEFORE", "1-Jan-1970", False), ("SENTON", "1-Jan-1970", True),
    ("SENTSINCE", "1-Jan-1970", True), ("SENTSINCE", "2-Jan-1970", False),
])
def test_a_message_without_a_date_was_sent_at_the_epoch(date_field: bytes, key: str, day: str, found: bool) -> None:
    """Dovecot takes a missing (or unreadable) Date: as 1 January 1970, so SENTBEFORE matches it;
    SENTBEFORE and SENTON never matched such a message, and NOT SENTBEFORE always did."""
    from datetime import datetime

    from ispd.mail.imap.parser import SearchKey
    from ispd.mail.imap.session import _matches
    from ispd.mail.mailindex import IndexedMessage

    data = b"From: a@example.org\r\n" + date_field + b"Subject: s\r\n\r\nbody\r\n"
    message = IndexedMessage(1, "m:2,", "", len(data), len(data), 0.0, False, 1)
    wanted = datetime.strptime(day, "%d-%b-%Y")
    assert _matches(SearchKey(key, (wanted,)), 1, message, data, [message]) is found


@pytest.mark.parametrize("fields", [b"Reply-To:\r\nSender: \r\n", b"Reply-To: \r\n  \r\nSender:\r\n", b""])
def test_an_empty_sender_or_reply_to_is_the_from_in_the_envelope(fields: bytes) -> None:
    """RFC 3501 §7.4.2: Sender and Reply-To absent "or present but empty" are the From; an empty
    field gave NIL, and a client replying from ENVELOPE had no address to reply to."""
    from ispd.mail.imap.session import _envelope

    envelope = _envelope(b"From: Ann <ann@b.example>\r\n" + fields + b"Subject: s\r\n\r\n")
    assert envelope.count(b'(("Ann" NIL "ann" "b.example"))') == 3, envelope
