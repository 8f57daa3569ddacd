from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ispd.mail.imap.framing import Command, CommandFramer, Continue, TooLong


def feed_all(framer: CommandFramer, *chunks: bytes) -> list[object]:
    events: list[object] = []
    for chunk in chunks:
        events += framer.feed(chunk)
    return events


def test_pipelined_lines_are_separate_commands() -> None:
    events = feed_all(CommandFramer(), b"a1 NOOP\r\na2 CAPABILITY\r\na3 LOG", b"OUT\r\n")
    assert events == [Command((b"a1 NOOP",)), Command((b"a2 CAPABILITY",)), Command((b"a3 LOGOUT",))]


def test_a_synchronizing_literal_asks_for_its_octets_first() -> None:
    framer = CommandFramer()
    assert framer.feed(b"a1 LOGIN {5}\r\n") == [Continue()]
    assert framer.feed(b"al\r\nc") == []  # a CRLF inside a literal is data
    assert framer.feed(b"e {3}\r\n") == [Continue()]
    # The 3 octets are "p{1": what looks like a literal inside a literal is data.
    assert framer.feed(b"p{1}\r\n") == [Command((b"a1 LOGIN {5}", b"al\r\nc", b"e {3}", b"p{1", b"}"))]


def test_literal_plus_needs_no_continuation_and_empty_literals_work() -> None:
    events = feed_all(CommandFramer(), b"a1 APPEND INBOX {0+}\r\n\r\na2 LOGIN {4+}\r\nuser {4+}\r\npass\r\n")
    assert events == [Command((b"a1 APPEND INBOX {0+}", b"", b"")),
                      Command((b"a2 LOGIN {4+}", b"user", b" {4+}", b"pass", b""))]


def test_a_line_too_long_is_refused_and_the_next_command_read() -> None:
    framer = CommandFramer(max_line=100)
    events = feed_all(framer, b"a1 SEARCH " + b"X" * 200, b"Y" * 50 + b"\r\na2 NOOP\r\n")
    assert events == [TooLong("line", b"a1"), Command((b"a2 NOOP",))]
    events = framer.feed(b"a3 SEARCH " + b"Z" * 120 + b"\r\na4 NOOP\r\n")
    assert events == [TooLong("line", b"a3"), Command((b"a4 NOOP",))]


def test_a_synchronizing_literal_too_big_is_refused_before_its_octets() -> None:
    framer = CommandFramer(max_literal=10)
    assert framer.feed(b"a1 APPEND INBOX {11}\r\n") == [TooLong("literal", b"a1")]
    # The client got BAD instead of "+": it sends no octets and goes on.
    assert framer.feed(b"a2 NOOP\r\n") == [Command((b"a2 NOOP",))]


def test_a_literal_plus_too_big_is_read_and_dropped_with_the_rest_of_its_command() -> None:
    framer = CommandFramer(max_literal=10)
    events = feed_all(framer, b"a1 APPEND INBOX {20+}\r\n", b"a" * 20, b" more {3+}\r\nxyz\r\na2 NOOP\r\n")
    assert events == [TooLong("literal", b"a1"), Command((b"a2 NOOP",))]


def test_a_literal_larger_than_the_command_text_bound_is_taken_whole() -> None:
    # An APPEND of a 300 KB message: its literal is bounded by max_literal, not by the bound on
    # a command's text (4 lines), which it once counted towards (BAD for any message over 256 KiB).
    framer = CommandFramer(max_line=100, max_literal=1000)
    message = b"x" * 900
    events = feed_all(framer, b"a1 APPEND INBOX {900+}\r\n", message, b"\r\na2 NOOP\r\n")
    assert events == [Command((b"a1 APPEND INBOX {900+}", message, b"")), Command((b"a2 NOOP",))]


def test_the_literals_of_one_command_are_bounded_together() -> None:
    """From a review: with literals out of the text bound, nothing bounded their sum: one command
    of LITERAL+ literals, each under max_literal (a message's size after login), held as many of
    them as its 256 KiB of text could announce - gigabytes in one session. Only an APPEND's one
    message needs a large literal: all of a command's literals together are bounded by it."""
    framer = CommandFramer(max_line=100, max_literal=1000)
    events = feed_all(framer, b"a1 SEARCH TEXT {600+}\r\n", b"x" * 600, b" TEXT {600+}\r\n", b"y" * 600,
                      b"\r\na2 NOOP\r\n")
    assert events == [TooLong("literal", b"a1"), Command((b"a2 NOOP",))]
    events = feed_all(framer, b"a3 LOGIN {400+}\r\n", b"u" * 400, b" {500+}\r\n", b"p" * 500, b"\r\n")
    assert events == [Command((b"a3 LOGIN {400+}", b"u" * 400, b" {500+}", b"p" * 500, b""))]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_how_the_bytes_arrive_does_not_matter(cuts: list[int]) -> None:
    stream = (b"a1 LOGIN {5+}\r\nal\r\nc {3}\r\npw!\r\na2 SELECT \"INBOX\"\r\n"
              b"a3 APPEND Drafts (\\Seen) {12}\r\nSubject: x\r\n\r\na4 NOOP\r\n")
    whole = [e for e in CommandFramer().feed(stream) if isinstance(e, Command)]
    framer, events, position = CommandFramer(), [], 0
    for cut in cuts:
        events += framer.feed(stream[position:position + cut])
        position += cut
    events += framer.feed(stream[position:])
    assert [e for e in events if isinstance(e, Command)] == whole
    assert len(whole) == 4
    assert sum(isinstance(e, Continue) for e in events) == 2
