"""Delivery status notifications (RFC 3464): the bounce a sender gets for recipients that could
not be reached. Sent from the null reverse-path (RFC 5321 §4.5.5), so that a bounce never
bounces, with the original's headers (not its body: it may be large, and the sender has it).
Written out by hand: the email package cannot serialise a message/delivery-status part built
from text, and the format is three short parts."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

from ispd.mail.queue import Outcome

_HEADER_LIMIT = 64 * 1024  # of the original, quoted back


def original_headers(message: bytes) -> bytes:
    """The header section of a message (CRLF line ends), at most 64 KiB of it."""
    message = message.replace(b"\r\n", b"\n")
    end = message.find(b"\n\n")
    head = message if end < 0 else message[:end]
    return head[:_HEADER_LIMIT].replace(b"\n", b"\r\n")


def _date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, UTC))


def _one_line(text: str) -> str:
    return " ".join(text.split())[:900]


def _diagnostic(detail: str) -> str:
    """RFC 3464 §2.3.6: type "smtp" for another server's reply; ispd's own finding (no such
    host, a refused connection, a time out) is not one, and says so as Postfix's "X-Postfix" does."""
    text = _one_line(detail)
    return f"smtp; {text}" if re.match(r"[2-5]\d\d[ -]", text) else f"X-ispd; {text}"


def bounce_message(*, reporting_host: str, sender: str, original: bytes, queue_id: str, arrived_at: float,
                   failed: dict[str, Outcome], now: float) -> bytes:
    """The whole bounce message, CRLF line ends, ready to deliver or queue."""
    boundary = f"ispd-dsn-{secrets.token_hex(8)}"
    human = [f"This is the mail system at {reporting_host}.", "",
             "Your message could not be delivered to one or more recipients.", ""]
    human += [f"<{address}>: {_one_line(outcome.detail)}" for address, outcome in failed.items()]
    status = [f"Reporting-MTA: dns; {reporting_host}", f"X-Ispd-Queue-ID: {queue_id}",
              f"Arrival-Date: {_date(arrived_at)}"]
    for address, outcome in failed.items():
        # A 4.x.x only for expiry (4.4.7), as Postfix reports it; anything unreadable is 5.0.0.
        code = outcome.status if outcome.status[:1] in ("4", "5") else "5.0.0"
        status += ["", f"Final-Recipient: rfc822; {address}", "Action: failed", f"Status: {code}",
                   f"Diagnostic-Code: {_diagnostic(outcome.detail)}"]
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_host}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {_date(now)}",
        f"Message-ID: {make_msgid(domain=reporting_host)}",
        "Auto-Submitted: auto-replied",  # RFC 3834: no vacation replies to this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *status,
        "",
        f"--{boundary}",
    ]
    headers = original_headers(original)
    if headers.isascii():
        lines += ["Content-Type: text/rfc822-headers", ""]
    else:
        # 8-bit header fields (RFC 6532: UTF-8) labelled as such, as Postfix labels them: left
        # unlabelled (7bit, us-ascii), the sender's mail reader showed "Gr����e" for "Grüße".
        lines += ["Content-Type: text/rfc822-headers; charset=utf-8", "Content-Transfer-Encoding: 8bit", ""]
    head = "\r\n".join(lines).encode("utf-8", errors="surrogateescape") + b"\r\n"
    return head + headers + f"\r\n\r\n--{boundary}--\r\n".encode()
