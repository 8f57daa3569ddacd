"""The log output: the libraries' stdlib warnings come out as ispd's own lines do."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from ispd.logs import LogBudget, LogConfig, LogThrottle, LogWriter, RepeatedFailure, configure_logging, get_logger
from tests.lab.process import read_to_end


def test_library_warnings_are_json_lines_and_client_mistakes_stay_out() -> None:
    out = io.StringIO()
    root, smtp, quic = logging.getLogger(), logging.getLogger("mail.log"), logging.getLogger("quic")
    saved = root.handlers[:], root.level, smtp.level, quic.level
    configure_logging(LogConfig(level="info", format="json"), stream=out)
    try:
        get_logger("test").info("ours", password="hunter2")
        logging.getLogger("asyncio").warning("Executing <Task> took 0.300 seconds")
        # Writes after the peer has gone, one line each from the transports: left out.
        logging.getLogger("asyncio").warning("socket.send() raised exception.")
        logging.getLogger("asyncio").warning("SSL connection is closed")
        logging.getLogger("mail.log").warning("%r unrecognised: %s", ("127.0.0.1", 41014), "XYZZY")
        logging.getLogger("quic").warning("Error: 376, reason: No common ALPN protocols, frame_type: 6")
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            logging.getLogger("aioquic").error("a callback failed", exc_info=True)
        logging.getLogger("asyncio").info("not at info: a library's chatter")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [(line["event"], line.get("logger"), line["level"]) for line in lines] == [
            ("ours", None, "info"), ("Executing <Task> took 0.300 seconds", "asyncio", "warning"),
            ("a callback failed", "aioquic", "error")]
        assert lines[0]["password"] == "***" and "ZeroDivisionError: boom" in lines[2]["exception"]
        configure_logging(LogConfig(level="info", format="json"), stream=out)  # a reload: still one handler
        assert len(logging.getLogger().handlers) == 1
        assert len(logging.getLogger("asyncio").filters) == 1
    finally:
        root.handlers, level, smtp_level, quic_level = saved
        root.setLevel(level)
        smtp.setLevel(smtp_level)
        quic.setLevel(quic_level)
        logging.captureWarnings(False)


@contextlib.contextmanager
def logging_to(stream: Any, log_format: Literal["json", "console"] = "json", background: bool = False) -> Iterator[None]:
    """ispd's logging (JSON unless told) into ``stream``, the root logger as it was afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(LogConfig(level="info", format=log_format), stream=stream, background=background)
    try:
        yield
    finally:
        root.handlers, level = saved
        root.setLevel(level)
        logging.captureWarnings(False)


def events(text: str) -> list[tuple[str, int | None]]:
    return [(json.loads(line)["event"], json.loads(line).get("count")) for line in text.splitlines()]


class FullDisk(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.full = True

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(28, "No space left on device")
        return super().write(text)


def test_a_log_that_cannot_be_written_fails_no_caller_and_says_later_what_was_lost() -> None:
    """From a review: with the log's disk full, the write raised into whoever logged: the store's
    writer thread died in its own error path (every later write hung), SMTP answered 500 for
    mail it had queued, IMAP sessions died."""
    out = FullDisk()
    with logging_to(out):
        get_logger("test").info("first")
        get_logger("test").warning("second")
        logging.getLogger("asyncio").error("a library's line")
        out.full = False
        get_logger("test").info("third")
    assert events(out.getvalue()) == [("log.lines_lost", 3), ("third", None)]


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_control_characters_a_client_chose_reach_no_terminal_and_forge_no_line(log_format: Literal["json", "console"]) -> None:
    """From a review: an IMAP login of "bob\\x1b[2J\\x1b]0;PWNED\\x07" was written as it is in the
    console log, and cleared and retitled the terminal of whoever ran tail -f on it; a
    right-to-left override turned the rest of the line around. JSON always escaped them."""
    out = io.StringIO()
    chosen = "bob\x1b[2J\x1b]0;PWNED\x07\x08\x00\u202etxt.exe"
    with logging_to(out, log_format):
        get_logger("test").warning("mail.imap.auth_failed", login=chosen, path="/v1/x\n2026 [error    ] forged")
        logging.getLogger("asyncio").error("a library quoting a client: %s", chosen)
        try:
            raise ValueError(chosen)
        except ValueError:
            get_logger("test").error("failed", exc_info=True)
    text = out.getvalue()
    assert not set(text) & {"\x1b", "\x07", "\x08", "\x00", "\u202e"}, repr(text)
    if log_format == "console":  # still there to read, escaped
        assert "login='bob\\x1b[2J\\x1b]0;PWNED\\x07\\x08\\x00\\u202etxt.exe'" in text
    else:
        assert json.loads(text.splitlines()[0])["login"] == chosen
    assert not [line for line in text.splitlines() if "forged" in line and "mail.imap.auth_failed" not in line]
    assert "ok=plain" in _console_line(ok="plain") and "ok=a\u00e9b" in _console_line(ok="a\u00e9b")


def _console_line(**fields: Any) -> str:
    """A printable value (non-ASCII letters too) is written as it was, unquoted."""
    out = io.StringIO()
    with logging_to(out, "console"):
        get_logger("test").info("event", **fields)
    return out.getvalue()


class RoomForNewlines(FullDisk):
    """A buffered file on a full disk: the line fails, the lone newline print writes after it
    still fits in the buffer."""

    def write(self, text: str) -> int:
        if self.full and text != "\n":
            raise OSError(28, "No space left on device")
        return io.StringIO.write(self, text)


def test_a_lost_line_leaves_no_blank_line_behind() -> None:
    """From the review of the fix: the lines were lost, their newlines were not (print writes
    them apart), so the log got blank lines and never said that lines were lost."""
    out = RoomForNewlines()
    with logging_to(out):
        for _ in range(5):
            get_logger("test").error("mail.delivery.failed")
        out.full = False
        get_logger("test").info("mail.delivered")
    assert events(out.getvalue()) == [("log.lines_lost", 5), ("mail.delivered", None)]


def test_a_log_file_that_fills_up_counts_the_lines_it_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From the second verification: stdout to a file (or journald's socket) is buffered, so the
    write took each line and the flush failed, where the lines dropped were not counted: 991
    lines missing, and no log.lines_lost."""
    path = tmp_path / "ispd.log"
    stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 (buffered, as stdout to a file is; closed below)
    full = [True]
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        if full[0] and fd == stream.fileno():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with stream, logging_to(stream):
        for _ in range(5):
            get_logger("test").error("mail.delivery.failed")
        full[0] = False
        get_logger("test").info("mail.delivered")
    assert events(path.read_text()) == [("log.lines_lost", 5), ("mail.delivered", None)]


def test_a_repeated_warning_is_due_once_an_interval_per_key_and_the_keys_stay_bounded() -> None:
    throttle = LogThrottle(60.0, max_keys=2)
    assert throttle.due("a", 1000.0) and not throttle.due("a", 1059.0) and throttle.due("a", 1060.0)
    assert throttle.due("b", 1000.0) and throttle.due("c", 1000.0)
    assert throttle.due("d", 1000.0)  # past max_keys: all forgotten, then this one kept
    assert throttle.due("a", 1061.0) and not throttle.due("d", 1001.0)


def test_a_wall_clock_stepped_back_does_not_keep_a_repeated_warning_quiet_for_the_step() -> None:
    """DHCP and RADIUS throttle with the wall clock: stepped back three hours (NTP, an operator),
    the pool-exhausted or dropped-request warning stayed out of the log for three hours."""
    throttle = LogThrottle(60.0)
    assert throttle.due("pool", 1_000_000.0)
    assert throttle.due("pool", 1_000_000.0 - 3 * 3600)  # stepped back: said again, once
    assert not throttle.due("pool", 1_000_000.0 - 3 * 3600 + 59)
    assert throttle.due("pool", 1_000_000.0 - 3 * 3600 + 60)


def test_a_log_budget_lets_a_few_lines_an_interval_through_and_tells_how_many_it_held_back() -> None:
    budget = LogBudget(2, 60.0)
    assert budget.take("r", 1000.0) == 0 and budget.take("r", 1001.0) == 0
    assert budget.take("r", 1002.0) is None and budget.take("r", 1003.0) is None
    assert budget.take("other", 1003.0) == 0  # a budget per key
    assert budget.take("r", 1060.0) == 2  # a new interval: the two held back are told
    assert budget.take("r", 1060.0 - 3 * 3600) == 0  # the clock stepped back: a new interval, not silence


def test_a_repeated_failure_is_logged_at_its_start_its_changes_and_once_an_interval() -> None:
    failure = RepeatedFailure(30.0)
    assert failure.ended(0.0) is None and not failure.failing
    assert failure.failed("refused", 100.0) == 0  # the first: a line
    assert [failure.failed("refused", 100.0 + i) for i in range(1, 4)] == [None, None, None]
    assert failure.failed("starting up", 104.0) == 3  # another error: a line, telling the 3 held back
    assert failure.failed("starting up", 120.0) is None
    assert failure.failed("starting up", 134.0) == 1  # 30 s after the last line
    assert failure.failing
    assert failure.ended(140.0) == (7, 40.0)
    assert failure.ended(141.0) is None
    assert failure.failed("refused", 200.0) == 0  # a new outage starts afresh


def test_an_output_nobody_reads_never_stops_the_caller_and_what_it_dropped_is_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a bug hunt's note: the daemon wrote each line in the caller, and with its stdout a
    pipe nobody read (a stalled journald, ``ispd run | less`` paused) the write blocked once the
    pipe was full: the event loop stopped, and every service with it. The lines now wait in a
    bounded queue for a writer thread; past the bound they are dropped and counted."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)  # (a pipe of one page: full after a few lines)
    monkeypatch.setattr(LogWriter, "MAX_PENDING_BYTES", 8192)
    stream = os.fdopen(write_end, "w")
    try:
        with logging_to(stream, background=True):
            logged = 0
            for number in range(2000):  # ~300 KB: blocked for good after the first 12 KB before
                get_logger("test").info("dhcp.lease.granted", number=number, padding="x" * 100)
                logged += 1
            assert logged == 2000  # (and not stuck above)
            writer = LogWriter.for_descriptor(write_end, True)
            assert not writer.drain(0.2)  # the pipe is still full
            reader = concurrent.futures.ThreadPoolExecutor(1).submit(read_to_end, read_end)
            assert writer.drain(10.0)
            get_logger("test").info("dhcp.lease.released")
            assert writer.drain(10.0)
        stream.close()
        lines = [json.loads(line) for line in reader.result(10.0).splitlines()]
    finally:
        with contextlib.suppress(OSError):
            stream.close()
        os.close(read_end)
    granted = [line["number"] for line in lines if line["event"] == "dhcp.lease.granted"]
    told = [line["count"] for line in lines if line["event"] == "log.lines_lost"]
    assert granted == sorted(granted) and granted[0] == 0 and told and len(granted) + sum(told) == 2000
    assert lines[-1]["event"] == "dhcp.lease.released"


def test_lines_for_a_non_blocking_output_wait_for_room_rather_than_being_dropped() -> None:
    """A stdout the daemon inherits may be non-blocking (O_NONBLOCK is the open file's, which a
    parent or the terminal's other users may set): the writer thread's write to it, full, failed
    at once with EAGAIN, and the lines queued for it, well within the queue's bound, were dropped
    and counted as lost instead of waiting for the room they wait for on a blocking one."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)
    stream = os.fdopen(write_end, "w")
    try:
        with logging_to(stream, background=True):
            for number in range(60):  # ~9 KB: twice what the pipe holds, far below the queue's bound
                get_logger("test").info("dhcp.lease.granted", number=number, padding="x" * 100)
            writer = LogWriter.for_descriptor(write_end, True)
            time.sleep(0.2)  # (the writer thread meets the full pipe)
            reader = concurrent.futures.ThreadPoolExecutor(1).submit(read_to_end, read_end)
            assert writer.drain(10.0)
        stream.close()
        lines = [json.loads(line) for line in reader.result(10.0).splitlines()]
    finally:
        with contextlib.suppress(OSError):
            stream.close()
        os.close(read_end)
    assert [line["event"] for line in lines] == ["dhcp.lease.granted"] * 60
    assert [line["number"] for line in lines] == list(range(60))
