"""Cutting the client's byte stream into whole IMAP commands, literals included.

Theory of operation. A command is a line ending in CRLF, except that a line may end in a
literal announcement ``{N}`` (synchronizing: the server must answer ``+`` before the client sends
the N octets) or ``{N+}`` (LITERAL+, RFC 7888: the octets follow at once); after the octets the
command line goes on. ``CommandFramer.feed`` takes whatever arrived and returns events:

- ``Continue``: send a continuation request now (a synchronizing literal is awaited);
- ``Command``: one whole command, as its pieces: the text between literals, and the literals;
- ``TooLong``: a line over ``max_line`` octets or a literal over ``max_literal``: the command is
  refused (BAD) and its rest skipped; for a synchronizing literal the client sends nothing more
  (we never said ``+``); a LITERAL+ literal's octets are read and dropped (RFC 7888 §4).

Pure: bytes in, events out; no sockets, no clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LITERAL_AT_END = re.compile(rb"~?\{(\d{1,20})(\+)?\}\r\n$")


@dataclass(frozen=True, slots=True)
class Continue:
    pass


@dataclass(frozen=True, slots=True)
class Command:
    # Text pieces and literals alternate: pieces[0] text, pieces[1] literal, pieces[2] text, ...
    # Text pieces keep their announcement ("{5}") but not the CRLF after it; the last ends the line.
    pieces: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.pieces)


@dataclass(frozen=True, slots=True)
class TooLong:
    what: str  # "line" or "literal"
    tag: bytes  # the command's tag, when it was read, for the BAD reply


@dataclass(slots=True)
class CommandFramer:
    max_line: int = 64 * 1024
    max_literal: int = 64 * 1024 * 1024
    _buffer: bytearray = field(default_factory=bytearray)
    _pieces: list[bytes] = field(default_factory=list)
    _literal_left: int = 0  # octets of the current literal still to come
    _dropping: bool = False  # reading a refused LITERAL+ literal only to throw it away
    _skipping_line: bool = False  # a refused line: skip to its end

    def feed(self, data: bytes) -> list[Continue | Command | TooLong]:
        self._buffer += data
        events: list[Continue | Command | TooLong] = []
        while True:
            if self._literal_left:
                take = min(self._literal_left, len(self._buffer))
                if take == 0:
                    return events
                if not self._dropping:
                    self._pieces[-1] += bytes(self._buffer[:take])
                del self._buffer[:take]
                self._literal_left -= take
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > self.max_line:
                    if not self._skipping_line:
                        events.append(TooLong("line", self._tag(bytes(self._buffer[:64]))))
                    self._pieces = []
                    self._buffer.clear()
                    self._skipping_line = True
                return events
            line = bytes(self._buffer[:end + 2])
            del self._buffer[:end + 2]
            match = _LITERAL_AT_END.search(line)
            if self._skipping_line:
                self._skip_rest(match)
                continue
            # Text only: pieces[1::2] are the literals, bounded by max_literal (an APPEND's message).
            if len(line) > self.max_line or sum(len(p) for p in self._pieces[0::2]) + len(line) > self.max_command:
                events.append(TooLong("line", self._tag(line)))
                self._skip_rest(match)
                continue
            if match is None:
                self._pieces.append(line[:-2])
                events.append(Command(tuple(self._pieces)))
                self._pieces = []
                continue
            size = int(match.group(1))
            # All of a command's literals together: one large one is an APPEND's message; many
            # each under the bound would have a command hold as many as its text announces.
            if size + sum(len(p) for p in self._pieces[1::2]) > self.max_literal:
                events.append(TooLong("literal", self._tag(line)))
                self._skip_rest(match)
                continue
            self._pieces += [line[:-2], b""]
            self._literal_left = size
            if match.group(2) is None:
                events.append(Continue())

    @property
    def max_command(self) -> int:
        """All text of one command (literals not counted): a bound on what a command holds."""
        return self.max_line * 4

    def _skip_rest(self, match: re.Match[bytes] | None) -> None:
        """The rest of a refused command. A LITERAL+ literal comes anyway: its octets are read
        and dropped, and the command's text goes on after them. A synchronizing one never comes
        (the client gets BAD instead of "+"), and ends the command."""
        self._pieces = []
        if match is not None and match.group(2) is not None:
            self._literal_left = int(match.group(1))
            self._dropping = True
            self._skipping_line = True
        else:
            self._dropping = False
            self._skipping_line = False

    def _tag(self, line: bytes) -> bytes:
        first = self._pieces[0] if self._pieces else line
        return first.split(b" ", 1)[0][:64]
