"""The MX's decisions, pure: which recipients are accepted, which mailbox a recipient is, what a
message must fit, and the trace headers a delivered message carries.

aiosmtpd is the codec and state machine (commands, pipelining, DATA with dot-stuffing and its
smuggling defences); this module decides, and ``ispd.mail.service`` glues the two and does the
I/O (store lookups, Maildir writes).

Recipients (RFC 5321 §3.3, §4.5.1):
- a domain that is not one of ``[mail] domains`` is refused: 554 5.7.1 relay access denied;
- a local address is looked up as written, then without its subaddress (``alice+lists`` is
  alice), then, for ``postmaster``, as the configured postmaster mailbox; none: 550 5.1.1;
  ``<postmaster>`` without a domain is postmaster@ the first of the domains;
- a closed subscriber's mailbox is disabled: 550 5.2.1; a suspended one still receives mail (the
  billing notices must reach it);
- quota (RFC 9208): a mailbox already at its limit, or that the declared SIZE would take past
  it, gets 452 4.2.2 (the sender retries; the owner may make room); a message larger than the
  whole quota can never fit: 552 5.2.2. At DATA the real size is checked again.

Submission (authenticated): the envelope sender must be one of the subscriber's mailboxes (553
5.7.1) and so must every From header address (550 5.7.1: ispd DKIM-signs for the domain), the
subscriber must be active (550 5.7.1), and ``SendingLimit`` caps messages per hour (450 4.7.1);
recipients at other domains are queued. SPF, DKIM and DMARC are ``ispd.mail.authcheck``'s.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

from ispd.listeners import client_key
from ispd.store.models import MailRecipient, SubscriberStatus

# Trace text written into headers is kept to these characters: a HELO name or address is
# client-controlled and must not be able to start a header of its own.
_UNSAFE_TRACE = re.compile(r"[^A-Za-z0-9.:_\-\[\]@+=]")
_ENHANCED = re.compile(r"^\d{3}[ -]\d\.\d{1,3}\.\d{1,3}(?: |$)")


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply with its enhanced status code (RFC 3463)."""

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


class SMTPRefusal(Exception):
    """A refusal that knows its reply; ``reason`` is its metrics label."""

    def __init__(self, reply: Reply, reason: str) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.reason = reason


# Closed set: the label values of rejected recipients and messages.
REFUSAL_REASONS = ("relay_denied", "unknown_recipient", "mailbox_disabled", "over_quota", "too_many_recipients",
                   "too_large", "line_too_long", "bad_address", "local_error", "sender_not_owned", "sender_suspended",
                   "rate_limited", "dmarc_reject", "dnsbl", "mail_loop", "bad_srs")


def with_enhanced_code(line: str) -> str:
    """A reply line with an enhanced status code (RFC 2034 §4: every 2xx, 4xx and 5xx reply but
    the greeting and the HELO/EHLO reply carries one), for aiosmtpd's own replies, which lack it."""
    if len(line) < 4 or not line[:3].isdigit() or line[0] not in "245" or _ENHANCED.match(line):
        return line
    if line.startswith("220"):  # the greeting, and STARTTLS's go-ahead (RFC 3207 shows it bare)
        return line
    code = int(line[:3])
    enhanced = {250: "2.0.0", 221: "2.0.0", 235: "2.7.0", 252: "2.5.0", 500: "5.5.2", 501: "5.5.4", 502: "5.5.1",
                503: "5.5.1", 504: "5.5.4", 530: "5.7.0", 535: "5.7.8", 538: "5.7.11", 552: "5.3.4", 553: "5.1.3",
                554: "5.7.0", 555: "5.5.4", 421: "4.3.0", 451: "4.3.0", 452: "4.3.1"}.get(code)
    if enhanced is None:
        enhanced = f"{line[0]}.0.0"
    return f"{line[:4]}{enhanced} {line[4:]}"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a local recipient may be: the mailbox addresses to look up, in order."""

    candidates: tuple[str, ...]


class MXPolicy:
    def __init__(self, domains: list[str], *, recipient_delimiter: str = "+", postmaster: str | None = None,
                 max_recipients: int = 100) -> None:
        self.domains = frozenset(domains)
        self.first_domain = domains[0].lower() if domains else None  # Postfix's $myorigin
        self.recipient_delimiter = recipient_delimiter
        self.postmaster = postmaster
        self.max_recipients = max_recipients

    def route(self, address: str, accepted_so_far: int) -> Route:
        """The mailboxes an RCPT TO address may name; raises ``SMTPRefusal`` for a recipient that
        is not ours to take."""
        if accepted_so_far >= self.max_recipients:
            raise SMTPRefusal(Reply(452, "4.5.3", "Too many recipients"), "too_many_recipients")
        local, at, domain = address.rpartition("@")
        domain = domain.lower().removesuffix(".")
        if not at or not local:
            # RFC 5321 §4.5.1: <postmaster> without a domain must be accepted too; it is
            # postmaster@ the first domain (as Postfix appends $myorigin), then the configured one.
            if address.lower() == "postmaster" and (self.postmaster or self.first_domain):
                mailbox = (f"postmaster@{self.first_domain}",) if self.first_domain else ()
                return Route(mailbox + ((self.postmaster,) if self.postmaster else ()))
            raise SMTPRefusal(Reply(553, "5.1.3", f"<{_printable(address)}>: Recipient address is not valid"),
                              "bad_address")
        if domain not in self.domains:
            raise SMTPRefusal(Reply(554, "5.7.1", f"<{_printable(address)}>: Relay access denied"), "relay_denied")
        local = base = local.lower()
        candidates = [f"{local}@{domain}"]
        if self.recipient_delimiter and self.recipient_delimiter in local:
            base = local.partition(self.recipient_delimiter)[0] or local
            if base != local:
                candidates.append(f"{base}@{domain}")
        # postmaster+tag@ too, as alice+tag@ reaches alice (Postfix strips the extension before
        # its virtual alias lookup of postmaster@ as well).
        if base == "postmaster" and self.postmaster is not None:
            candidates.append(self.postmaster)
        return Route(tuple(candidates))

    @staticmethod
    def unknown(address: str) -> SMTPRefusal:
        return SMTPRefusal(Reply(550, "5.1.1", f"<{_printable(address)}>: Recipient address rejected: "
                                               "User unknown in virtual mailbox table"), "unknown_recipient")

    @staticmethod
    def disabled(address: str) -> SMTPRefusal:
        return SMTPRefusal(Reply(550, "5.2.1", f"<{_printable(address)}>: Mailbox disabled"), "mailbox_disabled")

    @staticmethod
    def admit(address: str, recipient: MailRecipient, used_bytes: int | None, size: int) -> None:
        """Raises ``SMTPRefusal`` unless the mailbox can take a message of ``size`` bytes now
        (``size`` 0: not known yet). ``used_bytes`` is None when the mailbox has no quota."""
        if recipient.status is SubscriberStatus.CLOSED:
            raise MXPolicy.disabled(address)
        quota = recipient.quota_bytes
        if quota is None or used_bytes is None:
            return
        if size > quota:
            raise SMTPRefusal(Reply(552, "5.2.2", f"<{_printable(address)}>: Message is larger than the "
                                                  "mailbox's quota"), "over_quota")
        if used_bytes + size > quota or used_bytes >= quota:
            raise SMTPRefusal(Reply(452, "4.2.2", f"<{_printable(address)}>: Mailbox full, try again later"),
                              "over_quota")


    def own_address(self, address: str) -> str:
        """The mailbox a submitted envelope sender names: lowercase, without its subaddress."""
        local, _, domain = address.rpartition("@")
        local = local.lower()
        if self.recipient_delimiter and self.recipient_delimiter in local:
            local = local.partition(self.recipient_delimiter)[0] or local
        return f"{local}@{domain.lower().removesuffix('.')}"

    def check_sender(self, address: str, owned: set[str], username: str) -> None:
        """Submission (RFC 6409 §6.1): the envelope sender must be one of the subscriber's own
        mailboxes (or a subaddress of one); the null sender is for bounces only."""
        if address in ("", "<>"):
            raise SMTPRefusal(Reply(553, "5.7.1", "Sender address rejected: the null sender is for bounces"),
                              "sender_not_owned")
        if self.own_address(address) not in owned:
            raise SMTPRefusal(Reply(553, "5.7.1", f"<{_printable(address)}>: Sender address rejected: not owned "
                                                  f"by user {_printable(username)}"), "sender_not_owned")


    def check_author(self, from_addresses: list[str], owned: set[str], username: str,
                     unreadable: str | None = None) -> None:
        """Submission: every From header address must be the subscriber's too, since ispd
        DKIM-signs for the domain (a message without From is left to the recipient's filters);
        a From with something that is no address (``unreadable``) cannot be checked."""
        if unreadable is not None:
            raise SMTPRefusal(Reply(550, "5.7.1", f"From header {_printable(unreadable[:80])!r} has no address "
                                                  f"ispd can check"), "sender_not_owned")
        for address in from_addresses:
            if self.own_address(address) not in owned:
                raise SMTPRefusal(Reply(550, "5.7.1", f"<{_printable(address)}>: From address not owned by user "
                                                      f"{_printable(username)}"), "sender_not_owned")


class SendingLimit:
    """Messages per subscriber in a sliding hour, for submission."""

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._sent: dict[int, deque[float]] = {}

    def check(self, subscriber_id: int, now: float) -> None:
        sent = self._sent.get(subscriber_id)
        if sent is None:
            return
        while sent and sent[0] <= now - 3600:
            sent.popleft()
        if not sent:
            del self._sent[subscriber_id]
        elif len(sent) >= self.per_hour:
            raise SMTPRefusal(Reply(450, "4.7.1", "Sending limit reached, try again later"), "rate_limited")

    def record(self, subscriber_id: int, now: float) -> None:
        self._sent.setdefault(subscriber_id, deque()).append(now)


class PlainRefused(Exception):
    """A SASL PLAIN response that cannot be a login; ``acting_as_another`` tells which."""

    def __init__(self, acting_as_another: bool) -> None:
        super().__init__("acting as another user" if acting_as_another else "not authzid NUL authcid NUL passwd")
        self.acting_as_another = acting_as_another


def plain_login(response: bytes) -> tuple[bytes, bytes]:
    """The login and password of a SASL PLAIN response (RFC 4616: authzid NUL authcid NUL
    passwd), for SMTP and IMAP alike. An authorization identity other than the login (acting as
    someone else) must be allowed or fail (§2): nobody may here."""
    parts = response.split(b"\x00")
    if len(parts) != 3:
        raise PlainRefused(acting_as_another=False)
    authzid, login, password = parts
    if authzid and authzid != login:
        raise PlainRefused(acting_as_another=True)
    return login, password


class LoginRefused(Exception):
    """Right password, but the account may not read its mail now; str() says why."""


class AuthUnavailable(Exception):
    """A login that could not be checked now (the store did not answer): RFC 4954's 454 4.7.0
    (IMAP's [UNAVAILABLE]), neither a wrong password nor a failure that counts against the client."""


class CommandPace:
    """Commands of one session: a token bucket of ``per_second`` with a burst of five seconds'
    worth. ``delay`` says how long a command must wait: a client over the pace is slowed down to
    it, never refused, so a buggy or hostile client in a loop costs its rate and no more."""

    def __init__(self, per_second: int, now: float) -> None:
        self.per_second = per_second
        self.burst = 5.0 * per_second
        self.tokens = self.burst
        self.stamp = now

    def delay(self, now: float) -> float:
        if self.per_second <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second) - 1
        self.stamp = now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.per_second


class ConnectionRate:
    """New connections per client address in a sliding minute (Postfix's anvil
    smtpd_client_connection_rate_limit): a client over it gets 421 and is closed at once."""

    def __init__(self, per_minute: int, max_clients: int = 100_000) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._seen: dict[str, deque[float]] = {}

    def admit(self, client: str, now: float) -> bool:
        if self.per_minute <= 0:
            return True
        client = client_key(client)
        seen = self._seen.get(client)
        if seen is None:
            if len(self._seen) >= self.max_clients:
                self._forget_idle(now)
            seen = self._seen[client] = deque()
        while seen and seen[0] <= now - 60:
            seen.popleft()
        if len(seen) >= self.per_minute:
            return False
        seen.append(now)
        return True

    def _forget_idle(self, now: float) -> None:
        for client in [c for c, seen in self._seen.items() if not seen or seen[-1] <= now - 60]:
            del self._seen[client]
        if len(self._seen) >= self.max_clients:  # a flood from very many addresses: start over
            self._seen.clear()


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() and c not in "<>" else "?" for c in text)[:256]


def trace_text(text: str) -> str:
    return _UNSAFE_TRACE.sub("_", text)[:255] or "unknown"


def _header_address(address: str) -> str:
    # An envelope address as it came (UTF-8 with SMTPUTF8), short of what could end the header.
    return "".join("_" if ord(c) < 0x20 or c in "<>\x7f" else c for c in address)[:512]


def protocol_name(*, extended: bool, tls: bool, authenticated: bool, utf8: bool) -> str:
    """The WITH keyword of a Received header (RFC 3848; RFC 6531 §4.3 for UTF8SMTP)."""
    base = "UTF8SMTP" if utf8 else "ESMTP" if extended else "SMTP"
    suffix = ("S" if tls else "") + ("A" if authenticated else "")
    return base + suffix


def trace_headers(*, return_path: str | None, helo: str, client_ip: str, server_name: str, protocol: str,
                  queue_id: str, recipient: str | None, now: float) -> bytes:
    """Return-Path (only at final delivery: None for a message that is relayed on) and Received
    (RFC 5321 §4.4). ``for`` names the recipient only when there is one: listing several would
    tell each about the others."""
    date = format_datetime(datetime.fromtimestamp(now, UTC))
    lines = [f"Return-Path: <{_header_address(return_path)}>"] if return_path is not None else []
    # TCP-info is an address literal (RFC 5321 §4.1.3): an IPv6 one says so.
    literal = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    lines += [f"Received: from {trace_text(helo)} ([{trace_text(literal)}])",
             f"\tby {server_name} (ispd) with {protocol} id {queue_id}"]
    if recipient is not None:
        lines.append(f"\tfor <{_header_address(recipient)}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", errors="surrogateescape")
