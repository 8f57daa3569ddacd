from __future__ import annotations

import contextlib
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ispd.mail.imap.framing import Command as Framed
from ispd.mail.imap.framing import CommandFramer
from ispd.mail.imap.parser import FetchItem, ParseError, QResync, SearchKey, Section, SequenceSet, parse


def command(text: bytes) -> object:
    [framed] = [e for e in CommandFramer().feed(text + b"\r\n") if isinstance(e, Framed)]
    return parse(framed)


def bad(text: bytes) -> str:
    [framed] = [e for e in CommandFramer().feed(text + b"\r\n") if isinstance(e, Framed)]
    with pytest.raises(ParseError) as caught:
        parse(framed)
    return str(caught.value)


def test_simple_commands_and_their_tags() -> None:
    parsed = command(b"a001 capability")
    assert (parsed.tag, parsed.name, parsed.args) == ("a001", "CAPABILITY", {})  # type: ignore[attr-defined]
    assert command(b"x.1 NOOP").name == "NOOP"  # type: ignore[attr-defined]


def test_login_takes_atoms_quoted_strings_and_literals() -> None:
    assert command(b'a LOGIN alice "p\\"w\\\\d"').args == {"user": b"alice", "password": b'p"w\\d'}  # type: ignore[attr-defined]
    framer = CommandFramer()
    events = framer.feed(b"a LOGIN {5}\r\nalice {6+}\r\nse cr\"\r\n")
    framed = next(e for e in events if isinstance(e, Framed))
    assert parse(framed).args == {"user": b"alice", "password": b'se cr"'}


def test_select_names_the_inbox_in_any_case_and_takes_condstore() -> None:
    assert command(b"a SELECT inbox").args == {  # type: ignore[attr-defined]
        "mailbox": b"INBOX", "condstore": False, "qresync": None}
    assert command(b'a EXAMINE "Archive/2026" (CONDSTORE)').args == {  # type: ignore[attr-defined]
        "mailbox": b"Archive/2026", "condstore": True, "qresync": None}


def test_select_takes_what_a_qresync_client_cached() -> None:
    args = command(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))").args  # type: ignore[attr-defined]
    assert args["qresync"] == QResync(67890007, 20050715194045000,
                                      SequenceSet(((41, 41), (43, 211), (214, 541))))
    args = command(b"a SELECT INBOX (QRESYNC (1 5 1:9 (1,5 2,9)))").args  # type: ignore[attr-defined]
    assert args["qresync"] == QResync(1, 5, SequenceSet(((1, 9),)),
                                      (SequenceSet(((1, 1), (5, 5))), SequenceSet(((2, 2), (9, 9)))))
    assert command(b"a SELECT INBOX (QRESYNC (1 5))").args["qresync"] == QResync(1, 5)  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", [
    b"a SELECT INBOX (QRESYNC (0 5))", b"a SELECT INBOX (QRESYNC (1))", b"a SELECT INBOX (QRESYNC 1 5)",
    b"a SELECT INBOX (RESYNC)", b"a UID FETCH 1:* FLAGS (VANISHED)", b"a FETCH 1 FLAGS (CHANGEDSINCE x)",
    b"a SEARCH MODSEQ \"/flags/\\\\draft\" every 5",
])
def test_bad_qresync_arguments_are_bad(text: bytes) -> None:
    bad(text)


def test_fetch_modifiers_come_in_any_order_and_search_reads_modseq_entries() -> None:
    args = command(b"a UID FETCH 1:* FLAGS (VANISHED CHANGEDSINCE 12)").args  # type: ignore[attr-defined]
    assert (args["changed_since"], args["vanished"]) == (12, True)
    key = command(b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338').args["key"]  # type: ignore[attr-defined]
    assert key == SearchKey("MODSEQ", (620162338,))


@pytest.mark.parametrize(("text", "ranges"), [
    (b"1", ((1, 1),)), (b"1:*", ((1, None),)), (b"5:2,7,*", ((5, 2), (7, 7), (None, None))),
    (b"4294967295", ((4294967295, 4294967295),)),
])
def test_sequence_sets(text: bytes, ranges: tuple[tuple[int | None, int | None], ...]) -> None:
    assert command(b"a FETCH " + text + b" FLAGS").args["set"] == SequenceSet(ranges)  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", [b"0", b"1:", b",1", b"1,,2", b"4294967296", b"1:0x"])
def test_bad_sequence_sets_are_bad(text: bytes) -> None:
    bad(b"a FETCH " + text + b" FLAGS")


def test_fetch_items_macros_sections_and_partials() -> None:
    args = command(b"a UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.100> BODY[1.2.MIME] "  # type: ignore[attr-defined]
                   b"RFC822.SIZE BODY[] BINARY[2]) (CHANGEDSINCE 12345)").args
    assert args["items"] == (
        FetchItem("FLAGS"),
        FetchItem("BODY", Section((), "HEADER.FIELDS", (b"FROM", b"TO")), peek=True, partial=(0, 100)),
        FetchItem("BODY", Section((1, 2), "MIME")),
        FetchItem("RFC822.SIZE"),
        FetchItem("BODY", Section()),
        FetchItem("BINARY", Section((2,))),
    )
    assert args["changed_since"] == 12345
    assert command(b"a FETCH 1 fast").args["items"] == (  # type: ignore[attr-defined]
        FetchItem("FLAGS"), FetchItem("INTERNALDATE"), FetchItem("RFC822.SIZE"))
    assert command(b"a FETCH 1 BODYSTRUCTURE").args["items"] == (FetchItem("BODYSTRUCTURE"),)  # type: ignore[attr-defined]
    assert command(b"a UID FETCH 1 UID").name == "UID FETCH"  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", [
    b"a FETCH 1 (FLAGS", b"a FETCH 1 BODY[MIME]", b"a FETCH 1 BODY[0]", b"a FETCH 1 BODY[HEADER.FIELDS ()]",
    b"a FETCH 1 BODY[]<5.0>", b"a FETCH 1 NOTHING", b"a FETCH 1 FLAGS extra",
])
def test_bad_fetches_are_bad(text: bytes) -> None:
    bad(text)


def test_store_modes_and_silence() -> None:
    args = command(b"a UID STORE 2:4 +FLAGS.SILENT (\\Seen $Forwarded)").args  # type: ignore[attr-defined]
    assert (args["mode"], args["silent"], args["flags"]) == ("+", True, (b"\\Seen", b"$Forwarded"))
    assert command(b"a STORE 1 FLAGS \\Deleted").args["mode"] == "="  # type: ignore[attr-defined]
    args = command(b"a STORE 1 (UNCHANGEDSINCE 7) -FLAGS (\\Flagged)").args  # type: ignore[attr-defined]
    assert (args["mode"], args["unchanged_since"]) == ("-", 7)


@pytest.mark.parametrize("text", [b"a STORE 1 FLAGS (\\*)", b"a STORE 1 -FLAGS (\\Recent)",
                                  b"a UID STORE 1 +FLAGS.SILENT (\\Seen \\Sean)", b"a STORE 1 FLAGS \\Seen \\*",
                                  b"a APPEND INBOX (\\Recent) {1+}\r\nx"])
def test_flags_a_client_cannot_set_are_bad(text: bytes) -> None:
    """\\* and \\Recent are not a ``flag`` (RFC 3501 §9), and an unknown system flag is BAD, as
    from Dovecot: dropped, STORE FLAGS (\\*) cleared every flag with an OK."""
    assert "invalid system flag" in bad(text)


def test_system_flags_and_keywords_are_set_in_any_case() -> None:
    assert command(b"a STORE 1 FLAGS (\\seen \\DRAFT $Junk)").args["flags"] == (  # type: ignore[attr-defined]
        b"\\seen", b"\\DRAFT", b"$Junk")


@pytest.mark.parametrize(("text", "reason"), [(b"a SEARCH RETURN (COUNT) ALL", "ESEARCH"),
                                               (b"a UID SEARCH RETURN () UNSEEN", "ESEARCH"),
                                               (b"a FETCH $ FLAGS", "SEARCHRES"), (b"a SEARCH $", "SEARCHRES")])
def test_extensions_not_offered_are_bad_not_half_done(text: bytes, reason: str) -> None:
    """SEARCH RETURN was read and ignored, a plain SEARCH answering a client that asked for
    ESEARCH's (COUNT); "$" named no message and the command answered OK."""
    assert reason in bad(text)


def test_search_keys_nest_and_combine() -> None:
    args = command(b'a UID SEARCH CHARSET UTF-8 OR FROM "bob" (SINCE 1-Feb-2026 NOT SEEN) UID 1:5 '  # type: ignore[attr-defined]
                   b"HEADER X-Spam yes LARGER 1000").args
    assert args["charset"] == "UTF-8"
    assert args["key"] == SearchKey("AND", (
        SearchKey("OR", (SearchKey("FROM", (b"bob",)),
                         SearchKey("AND", (SearchKey("SINCE", (datetime(2026, 2, 1),)),
                                           SearchKey("NOT", (SearchKey("SEEN"),)))))),
        SearchKey("UID", (SequenceSet(((1, 5),)),)),
        SearchKey("HEADER", (b"X-SPAM", b"yes")),
        SearchKey("LARGER", (1000,)),
    ))
    assert command(b"a SEARCH 2:*").args["key"] == SearchKey("SEQUENCE", (SequenceSet(((2, None),)),))  # type: ignore[attr-defined]


@pytest.mark.parametrize("text", [b"a SEARCH", b"a SEARCH FROM", b"a SEARCH SINCE 31-Feb-2026", b"a SEARCH BOGUS",
                                  b"a SEARCH (SEEN", b"a SEARCH " + b"(" * 40 + b"SEEN" + b")" * 40])
def test_bad_searches_are_bad(text: bytes) -> None:
    bad(text)


def test_append_with_flags_date_and_a_literal() -> None:
    framed = next(e for e in CommandFramer().feed(b'a APPEND Sent (\\Seen) "04-Dec-2026 19:00:00 +0000" {12+}\r\n'
                                              b"Subject: x\r\n\r\n") if isinstance(e, Framed))
    args = parse(framed).args
    assert args == {"mailbox": b"Sent", "flags": (b"\\Seen",), "date": 1796410800.0,  # 2026-12-04T19:00:00Z
                    "message": b"Subject: x\r\n"}
    # The zone counts, a leading space stands for a one-digit day, and dates that do not exist are BAD.
    assert command(b'a APPEND x " 5-Mar-2020 08:09:10 -0700" {1+}\r\nx').args["date"] == 1583420950.0  # type: ignore[attr-defined]
    bad(b'a APPEND x "31-Feb-2020 08:09:10 +0000" {1+}\r\nx')
    bad(b'a APPEND x "05-Foo-2020 08:09:10 +0000" {1+}\r\nx')
    bad(b'a APPEND x "01-Jan-0001 00:00:00 +2359" {1+}\r\nx')  # no INTERNALDATE a file or reply can hold
    bad(b'a APPEND x "31-Dec-9999 23:59:59 -2359" {1+}\r\nx')


def test_list_status_enable_id_and_uid_expunge() -> None:
    assert command(b'a LIST "" "*"').args == {"reference": b"", "pattern": b"*", "selection": (), "return": ()}  # type: ignore[attr-defined]
    assert command(b'a LIST (SPECIAL-USE) "" %').args["selection"] == (b"SPECIAL-USE",)  # type: ignore[attr-defined]
    assert command(b"a STATUS INBOX (MESSAGES UIDNEXT unseen)").args["items"] == (  # type: ignore[attr-defined]
        "MESSAGES", "UIDNEXT", "UNSEEN")
    assert command(b"a ENABLE CONDSTORE qresync").args == {"capabilities": ("CONDSTORE", "QRESYNC")}  # type: ignore[attr-defined]
    assert command(b'a ID ("name" "Thunderbird" "version" NIL)').args == {  # type: ignore[attr-defined]
        "parameters": {b"name": b"Thunderbird", b"version": None}}
    assert command(b"a UID EXPUNGE 3:4").args["set"] == SequenceSet(((3, 4),))  # type: ignore[attr-defined]
    bad(b"a EXPUNGE 3:4")
    bad(b"a UID EXPUNGE")


@pytest.mark.parametrize("text", [b"", b"a", b"a BOGUS", b"a UID NOOP", b"a LOGIN alice", b'a LOGIN "alice pw',
                                  b"a STATUS INBOX (NOPE)", b"a SELECT INBOX (QRESYNC)", b"a LOGIN a\x00 b"])
def test_malformed_commands_are_bad_not_a_crash(text: bytes) -> None:
    bad(text)


def test_the_tag_of_a_bad_command_is_known_for_its_reply() -> None:
    [framed] = [e for e in CommandFramer().feed(b"t42 FETCH x\r\n") if isinstance(e, Framed)]
    with pytest.raises(ParseError) as caught:
        parse(framed)
    assert caught.value.tag == "t42"  # type: ignore[attr-defined]


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_bad(data: bytes) -> None:
    for event in CommandFramer(max_line=1000, max_literal=1000).feed(data.replace(b"\n", b"\r\n") + b"\r\n"):
        if isinstance(event, Framed):
            with contextlib.suppress(ParseError):
                parse(event)


def test_a_tilde_starts_an_atom_unless_a_literal8_follows() -> None:
    """"~" is an ASTRING-CHAR (RFC 3501 §9): SELECT ~work (offlineimap sends folder names as
    atoms) was BAD "expected a string", so a folder ispd let a client create could not be read."""
    assert command(b"a SELECT ~work").args["mailbox"] == b"~work"  # type: ignore[attr-defined]
    assert command(b"a LIST ~ ~w%").args["pattern"] == b"~w%"  # type: ignore[attr-defined]
    assert command(b'a LOGIN ~alice "pw"').args["user"] == b"~alice"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [b"star*s", b"per%cent", b"Back\\\\slash", b"a]b"])
def test_a_mailbox_name_sent_as_an_atom_may_hold_wildcards_and_backslashes(name: bytes) -> None:
    """imaplib2 (offlineimap) sends SELECT star*s unquoted; Dovecot takes it, ispd answered BAD
    and offlineimap failed on such a folder every run."""
    assert command(b"a SELECT " + name + b" (CONDSTORE)").args["mailbox"] == name  # type: ignore[attr-defined]
    assert command(b"a STATUS " + name + b" (MESSAGES)").args["mailbox"] == name  # type: ignore[attr-defined]
    bad(b'a SELECT Quote"d')
