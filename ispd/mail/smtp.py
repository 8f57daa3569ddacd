"""SMTP sessions on aiosmtpd: the MX (port 25) and submission (587 with STARTTLS, 465 with
implicit TLS), as thin as they can be; ``MailService`` does the I/O and ``ispd.mail.engine``
decides.

aiosmtpd parses commands, handles PIPELINING (it reads one line at a time from the stream, so
pipelined commands simply queue), dot-stuffing, SIZE, 8BITMIME, SMTPUTF8, STARTTLS and AUTH,
and only ends DATA on <CRLF>.<CRLF> (its defence against SMTP smuggling). ``SMTPSession`` adds
what it lacks: enhanced status codes on every reply (RFC 2034), a cap on connections in total
and per client, the ESMTP keywords it does not announce itself, and (submission) AUTH checked
against the store off the event loop, with a delay after each failure and a cap per session.

Submission (RFC 6409): nothing but EHLO, STARTTLS, AUTH, NOOP, RSET and QUIT before AUTH
(530 5.7.0); AUTH only over TLS; the envelope sender must be one of the subscriber's own
addresses; a suspended or closed subscriber may not send; recipients anywhere (local ones are
delivered at once, others queued).
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
import traceback
import warnings
from base64 import b64decode
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, Session, TLSSetupException, syntax

from ispd.logs import drop_messages, get_logger
from ispd.mail.dnsbl import Listing
from ispd.mail.engine import AuthUnavailable, PlainRefused, Reply, SMTPRefusal, plain_login, with_enhanced_code
from ispd.store.models import MailRecipient

if TYPE_CHECKING:
    from ispd.mail.service import MailService

log = get_logger("ispd.mail")

# aiosmtpd refuses these itself, without a hook: counted when they are sent.
_AIOSMTPD_REFUSALS = {
    "552 5.3.4 Err": "too_large",  # SIZE at MAIL, or DATA over the limit
    "500 5.5.2 Lin": "line_too_long",  # a line of DATA over 998 octets (RFC 5321 §4.5.3.1.6)
    "553 5.1.3 Err": "bad_address",
}
LONGEST_LINE = 999  # what aiosmtpd allows: 998 octets, plus a stuffed dot
_SLICE = 64 * 1024


def has_long_line(body: bytes, limit: int = LONGEST_LINE) -> bool:
    """Whether a run of more than ``limit`` octets without CR or LF is in ``body``. Split a
    slice at a time (C speed, memory bounded by the slice): a regex for it scans from every
    position, some 25 ms for 100 KB of ordinary lines."""
    carry = 0  # the open line's length so far, from the slices before
    for start in range(0, len(body), _SLICE):
        parts = body[start:start + _SLICE].replace(b"\r", b"\n").split(b"\n")
        if len(parts) == 1:
            carry += len(parts[0])
        else:
            if carry + len(parts[0]) > limit or max(map(len, parts[1:-1]), default=0) > limit:
                return True
            carry = len(parts[-1])
        if carry > limit:
            return True
    return False
# On 465 the whole connection is TLS, which aiosmtpd cannot see: it warns about AUTH "without"
# TLS there, at every connection, as a Python warning and as a log line. It is not.
warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
# aiosmtpd's own AUTH code sets the attribute it deprecates, at every login (a log line).
warnings.filterwarnings("ignore", message="Session.login_data is deprecated")


# The same two false alarms as aiosmtpd's log lines, once per connection or login; its other
# warnings still reach the log.
drop_messages("mail.log", ("auth_required == True but auth_require_tls == False",
                           "Session.login_data is deprecated and will be removed in version 2.0"))


@dataclass(frozen=True, slots=True)
class Identity:
    """Who authenticated on a submission session."""

    subscriber_id: int
    username: str


class MailEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        # Local mailboxes accepted at RCPT, by canonical address (alice+x@ and alice@ are one).
        self.mailboxes: dict[str, MailRecipient] = {}
        # Recipients at other domains, for the queue (submission's, and an alias's forwards on
        # the MX), and the subscriber's own addresses (read at MAIL), which the From header
        # must be among.
        self.remote: list[str] = []
        self._remote_seen: set[str] = set()
        self.owned: set[str] = set()
        self.declared_size = 0

    def add_remote(self, address: str) -> None:
        """A recipient elsewhere, once: ``John@Example.NET`` (as a client typed it) and an
        alias's ``John@example.net`` are one (a domain has no case, RFC 5321 §2.4; a local
        part's is the other server's to decide, so it stays)."""
        local, _, domain = address.rpartition("@")
        key = f"{local}@{domain.lower().removesuffix('.')}"
        if key not in self._remote_seen:
            self._remote_seen.add(key)
            self.remote.append(address)


_AUTH_PARAMETER = re.compile(r"\s+AUTH=\S*(?=\s|$)", re.IGNORECASE)


def without_auth_parameter(arg: str) -> str:
    """MAIL's argument without its AUTH= parameter. RFC 4954 §5 makes that parameter part of
    the AUTH extension submission announces (an MTA relaying through its ISP sends AUTH=<>),
    which aiosmtpd refuses as unknown (555). It names who wrote the message, as the client
    says; ispd trusts no such word (the sender is checked against the login), which §5 allows:
    the server then acts as if AUTH=<> was given."""
    path_end = arg.find(">")  # the parameters follow the path
    if path_end < 0:
        return arg
    return arg[:path_end + 1] + _AUTH_PARAMETER.sub("", arg[path_end + 1:])


_SIZE_PARAMETER = re.compile(r"\sSIZE=(\S*)", re.IGNORECASE)


def size_parameter_readable(arg: str) -> bool:
    """Whether MAIL's SIZE parameter, if it has one, is RFC 1870's size-value: 1 to 20 ASCII
    digits (Unicode digits pass str.isdigit() and int() takes some of them)."""
    path_end = arg.find(">")  # the parameters follow the path
    if path_end < 0:
        return True
    return all(value.isascii() and value.isdigit() and len(value) <= 20
               for value in _SIZE_PARAMETER.findall(arg[path_end + 1:]))


# Refused recipients per connection: after the soft limit each further refusal waits a second,
# at the hard limit the connection is closed (Postfix: smtpd_soft_error_limit 10, hard 20).
SOFT_RECIPIENT_ERRORS = 10
HARD_RECIPIENT_ERRORS = 20


# RFC 4954 §4: the AUTH command line (with its initial response) may be this long; aiosmtpd kept
# it to 512 octets like any command (a long password's PLAIN response got 500), and a response to
# a 334 over its reader's 1001 raised (451 "Local error" and an error-level log line).
AUTH_LINE_LIMIT = 12288


class SMTPSession(SMTP):
    """One SMTP connection; ``listener`` is "mx", "submission" (587) or "submissions" (465)."""

    line_length_limit = AUTH_LINE_LIMIT + 2  # the reader's; each command's own limit is checked after

    def __init__(self, service: MailService, listener: str) -> None:
        config = service.config
        submission = listener != "mx"
        implicit_tls = listener == "submissions"
        super().__init__(
            service.submission_handler if submission else service.mx_handler,
            data_size_limit=config.max_message_bytes, enable_SMTPUTF8=True, hostname=service.queue.server_name,
            ident="ESMTP ispd", tls_context=None if implicit_tls else service.tls_context,
            require_starttls=listener == "submission", auth_required=submission, auth_require_tls=not implicit_tls,
            timeout=config.command_timeout_seconds, loop=asyncio.get_running_loop())
        # aiosmtpd's table of limits is its class's, shared by every session (each EHLO adds to
        # MAIL's in it, each new session clears it): one of our own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit, AUTH=AUTH_LINE_LIMIT)
        self.service = service
        self.listener = listener
        self.implicit_tls = implicit_tls
        self.client = ""
        self.admitted = False
        self.auth_failures = 0
        self.refused_recipients = 0
        self._released = False
        self._helo_reply = False
        # The MX's blocklist verdict on the client, looked up from the connection on.
        self.blocklisting: asyncio.Task[Listing | None] | None = None

    @property
    def encrypted(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def _create_envelope(self) -> Envelope:
        return MailEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the TCP connection, not the switch to TLS after STARTTLS
            peer = transport.get_extra_info("peername")
            self.client = str(peer[0]) if peer else ""
            if self.service.connection_rate.admit(self.client, time.monotonic()):
                self.admitted = self.service.gate.admit(self.client)  # counts its refusals itself
            else:
                self.service.metrics.listener.refused_connections += 1
            if self.admitted:
                self.service.sessions.add(self)
                if self.listener == "mx" and self.service.blocklists.applies_to(self.client):
                    self.blocklisting = asyncio.ensure_future(self.service.blocklists.check(self.client))
        before = self._handler_coroutine
        super().connection_made(transport)
        if self._handler_coroutine is not None and self._handler_coroutine is not before:
            self._handler_coroutine.add_done_callback(self._session_over)

    def _session_over(self, task: asyncio.Task[None]) -> None:
        """The session's task has ended; what it leaves must go with the connection. The daemon
        collects reference cycles rarely (``ispd.collector.collect_rarely``), so whatever a
        cycle holds stays until then: on 465, churning clients grew the daemon by 38 kB a
        connection (TLS state and buffers). Hence:
        - a task that ended with an exception (the client gone mid-DATA, a cancel at EOF) keeps
          it, and its traceback keeps every frame's locals: the session itself and the DATA read
          so far; the frames are cleared;
        - aiosmtpd's session refers to itself through its writer (whose protocol it is), its
          tables of command and AUTH mechanism methods (bound to it) and the connected callback
          it gave asyncio (bound too), all unused once the task is over."""
        try:
            task.result()  # (a cancelled task hands over its CancelledError and lets go of it)
        except (asyncio.CancelledError, Exception) as exc:
            if not isinstance(exc, asyncio.CancelledError | ConnectionError):  # (the client went: aiosmtpd said so)
                log.error("mail.session.failed", error=repr(exc), exc_info=exc)
            traceback.clear_frames(exc.__traceback__)
        self._writer = None  # type: ignore[assignment]
        self._smtp_methods.clear()
        self._auth_methods.clear()
        self._client_connected_cb = None

    def connection_lost(self, error: Exception | None) -> None:
        if self.blocklisting is not None:
            self.blocklisting.cancel()
            self.blocklisting = None
        if self.admitted and not self._released:
            self._released = True
            self.service.gate.release(self.client)
            self.service.sessions.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if not self.admitted:
            await self.push(f"421 4.7.0 {self.hostname} Too many connections, try again later")
            self.close()
            return
        await super()._handle_client()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def shut_down(self) -> None:
        """The daemon is stopping: RFC 5321 §3.8's 421, then the connection closes."""
        if self.transport is not None and not self.transport.is_closing():
            goodbye = f"421 4.3.2 {self.hostname} Service shutting down, try again later\r\n"
            cast(asyncio.WriteTransport, self.transport).write(goodbye.encode())
        self.close()

    def _timeout_cb(self) -> None:
        """A silent client (command_timeout_seconds) is told why before the close, as Postfix
        does ("421 4.4.2 ... Error: timeout exceeded"): aiosmtpd closed it without a word, which
        the client's log shows as a lost connection."""
        if self.transport is not None and not self.transport.is_closing():
            goodbye = f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n"
            cast(asyncio.WriteTransport, self.transport).write(goodbye.encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._helo_reply:
            status = with_enhanced_code(status)
            reason = _AIOSMTPD_REFUSALS.get(status[:13])
            if reason is not None:
                self.service.metrics.refusals.inc(reason)
                if status.startswith(("552 5.3.4 Error: Too much", "500 5.5.2 Line too")):
                    self.service.metrics.messages.inc("refused")
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._helo_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._helo_reply = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._helo_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._helo_reply = False

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        # RFC 3207 §4.2: once TLS is on, STARTTLS is no longer offered. aiosmtpd answered 220
        # all the same and put a second TLS layer inside the first, whose failure raised inside
        # asyncio (an error-level traceback whenever a client asked).
        if self._tls_protocol is not None:
            await self.push("503 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        # The MX announces no AUTH, but aiosmtpd ran its own: a subscriber's mail client set to
        # port 25 was told 538 (encryption required) before STARTTLS and, after it, 535
        # "credentials invalid" for the right password. Postfix's smtpd without SASL says this.
        if self.listener == "mx":
            await self.push("503 5.5.1 Error: authentication not enabled")
            return
        await super().smtp_AUTH(arg)

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        try:
            return await super().challenge_auth(challenge, encode_to_b64, log_client_response)
        except ValueError:  # the response line is over the reader's limit (a bad base64 is handled inside)
            await self.push("500 5.5.6 Authentication Exchange line is too long")
            return MISSING

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg is not None and not size_parameter_readable(arg):
            # aiosmtpd takes str.isdigit() for a number: "SIZE=²" passed it and int() raised
            # (451 and an error in the log), "SIZE=٣" was taken as 3 octets.
            await self.push("501 5.5.4 Syntax: SIZE=<octets, in ASCII digits> (RFC 1870)")
            return
        if arg is not None and self.listener != "mx":
            arg = without_auth_parameter(arg)
        await super().smtp_MAIL(arg)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading in chunks instead of awaiting every line (most of the CPU of
        a large message went there), with the same rules: the end is a line that is exactly
        "." after a CRLF (bare LF or CR never ends it: SMTP smuggling), over the size limit 552
        after the end, a line over 998 octets 500, one leading dot removed per line."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, refusal = await self._read_data()
        if refusal is not None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(refusal)
            return
        self.envelope.content = self.envelope.original_content = content
        # From the final dot to the reply, a stop waits (``MailService.stop``): its 421 in place
        # of the reply would have the client send again a message that may be taken already.
        replied = asyncio.get_running_loop().create_future()
        self.service.replying.add(replied)
        try:
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push("250 OK" if status is MISSING else status)
        finally:
            self.service.replying.discard(replied)
            if not replied.done():  # (a stop whose grace ran out cancelled its wait)
                replied.set_result(None)

    async def _read_data(self) -> tuple[bytes, str | None]:
        """The message up to the terminating line, unstuffed, or the refusal once it is over.
        What the client sent after the terminator (pipelined commands) goes back to the reader."""
        reader = self._reader
        limit = self.data_size_limit
        buffer = bytearray()
        searched = 0
        # Dots stuffed so far: RFC 1870 §3 counts the message without them, so a message of
        # exactly the limit (SIZE= it, as announced) with a line that starts with "." fits.
        stuffed = 0
        discarded = False
        while True:
            if not discarded and buffer.startswith(b".\r\n"):  # an empty message
                body, rest = b"", bytes(buffer[3:])
                break
            index = buffer.find(b"\r\n.\r\n", max(0, searched - 4))
            if index >= 0:
                body, rest = bytes(buffer[:index + 2]), bytes(buffer[index + 5:])
                break
            stuffed += buffer.count(b"\r\n.", max(0, searched - 2))
            searched = len(buffer)
            if limit and len(buffer) - stuffed > limit + 3:
                # Too much: read on to the end, keeping only what a terminator could start with.
                discarded = True
                del buffer[:-4]
                searched = 0
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionResetError("the client closed the connection during DATA")
            # The timeout is for silence (RFC 5321 §4.5.3.2.5: per data block), not for the
            # whole message: 25 MB over a slow uplink takes longer than any command.
            self._reset_timeout()
            buffer += chunk
        if rest:
            reader._buffer[:0] = rest  # type: ignore[attr-defined]  # pipelined commands after the end
        if discarded:
            return b"", "552 Error: Too much mail data"
        if has_long_line(body):
            return b"", "500 Line too long (see RFC5321 4.5.3.1.6)"
        if body.startswith(b"."):
            body = body[1:]
        body = body.replace(b"\r\n.", b"\r\n")
        if limit and len(body) > limit:
            return b"", "552 Error: Too much mail data"
        return body, None


def delivered(server: SMTPSession, reply: Reply) -> str:
    """The end of DATA's reply; mail delivered starts the count of refused recipients afresh
    (Postfix counts the errors a client makes without delivering mail)."""
    if reply.code == 250:
        server.refused_recipients = 0
    return str(reply)


def readable_address(address: str) -> bool:
    """aiosmtpd hands over what is not UTF-8 as surrogate escapes; in a sender such bytes went
    as they are into Return-Path, the queue and the logs (RFC 6531 allows UTF-8, nothing else).
    A recipient is checked where it is looked up."""
    return address.isascii() or not any("\udc80" <= c <= "\udcff" for c in address)


class MXHandler:
    """aiosmtpd's hooks (``handle_<COMMAND>``) for the MX, each answering with our reply text."""

    def __init__(self, service: MailService) -> None:
        self.service = service

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        # aiosmtpd ends with "250 HELP"; the keywords it does not know go before it. The MX
        # takes no AUTH (that is submission's).
        kept = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return [*kept, "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        assert isinstance(envelope, MailEnvelope)
        if not readable_address(address):
            self.service.metrics.refusals.inc("bad_address")
            return "553 5.1.7 The sender address is not UTF-8 text"
        for option in mail_options:
            if option.startswith("SIZE=") and option[5:].isascii() and option[5:].isdigit():
                envelope.declared_size = int(option[5:])
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        assert isinstance(envelope, MailEnvelope) and isinstance(server, SMTPSession)
        try:
            await self._not_blocklisted(server, address, envelope)
            await self.accept(address, envelope)
        except SMTPRefusal as refusal:
            self.service.metrics.refusals.inc(refusal.reason)
            if refusal.reason == "too_many_recipients":  # the client sends the rest later (RFC 5321 §4.5.3.1.10)
                return str(refusal.reply)
            server.refused_recipients += 1
            if server.refused_recipients >= HARD_RECIPIENT_ERRORS:
                # Guessing mailboxes (they are also login names): as Postfix's hard error limit.
                log.warning("mail.session.too_many_refusals", client=server.client, listener=server.listener,
                            refused=server.refused_recipients)
                server.loop.call_soon(server.close)  # once this reply is written
                return "421 4.7.0 Too many refused recipients, closing"
            if server.refused_recipients > SOFT_RECIPIENT_ERRORS:
                await asyncio.sleep(1.0)  # each one from here on costs a second
            return str(refusal.reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def accept(self, address: str, envelope: MailEnvelope) -> None:
        await self.service.accept_recipient(address, envelope)

    async def _not_blocklisted(self, server: SMTPSession, address: str, envelope: MailEnvelope) -> None:
        """Raises the refusal when a blocklist lists the client; postmaster takes its mail all
        the same, so that a sender listed by mistake can say so."""
        if server.blocklisting is None:
            return
        # Postfix's order (reject_unauth_destination before reject_rbl_client): a recipient that is
        # not ours at all is refused as such, a relay attempt counted as relay_denied, not dnsbl.
        self.service.policy.route(address, len(envelope.rcpt_tos))
        listing = await asyncio.shield(server.blocklisting)
        local = address.rpartition("@")[0] or address
        if listing is None or local.lower() == "postmaster":
            return
        if server.refused_recipients == 0:
            log.info("mail.dnsbl.listed", client=server.client, zone=listing.zone, answer=listing.answer)
        raise SMTPRefusal(Reply(554, "5.7.1", listing.reply_text(server.client)), "dnsbl")

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, SMTPSession) and isinstance(envelope, MailEnvelope)
        return delivered(server, await self.service.deliver(server, session, envelope))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):  # the client's handshake failed (or it sent no TLS): its end
            self.service.starttls_failed("mail.session.tls_failed", error.__cause__ or error)
        else:
            log.error("mail.session.error", error=repr(error))
        return "451 4.3.0 Local error, try again later"


class SubmissionHandler(MXHandler):
    """The hooks for submission: AUTH against the store, the sender checked, any recipient."""

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        identity = session.auth_data
        assert isinstance(identity, Identity)  # aiosmtpd asks for AUTH before MAIL
        assert isinstance(envelope, MailEnvelope)
        try:
            envelope.owned = await self.service.check_sender(identity, address)
        except SMTPRefusal as refusal:
            self.service.metrics.refusals.inc(refusal.reason)
            return str(refusal.reply)
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    async def accept(self, address: str, envelope: MailEnvelope) -> None:
        await self.service.accept_submission_recipient(address, envelope)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, SMTPSession) and isinstance(envelope, MailEnvelope)
        identity = session.auth_data
        assert isinstance(identity, Identity)
        return delivered(server, await self.service.submit(server, session, envelope, identity))

    # AUTH mechanisms (RFC 4954): aiosmtpd's own check is synchronous; ours reads the store
    # and may run scrypt, so these replace its PLAIN and LOGIN.

    async def auth_PLAIN(self, server: SMTP, args: list[str]) -> AuthResult:
        assert isinstance(server, SMTPSession)
        if len(args) == 1:
            response = await server.challenge_auth("")
            if not isinstance(response, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                response = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        try:
            login, password = plain_login(response)
        except PlainRefused as refused:
            await server.push("535 5.7.8 Acting as another user (an authorization identity) is not allowed"
                              if refused.acting_as_another else "501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def auth_LOGIN(self, server: SMTP, args: list[str]) -> AuthResult:
        assert isinstance(server, SMTPSession)
        if len(args) == 1:
            login = await server.challenge_auth(server.AuthLoginUsernameChallenge)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        if not isinstance(login, bytes):
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check(server, login, password)

    async def _check(self, server: SMTPSession, login: bytes, password: bytes) -> AuthResult:
        try:
            identity = await self.service.authenticate(login, password, server.client)
        except AuthUnavailable:  # (said in the log by authenticate)
            await server.push("454 4.7.0 Temporary authentication failure, try again later")
            return AuthResult(success=False, handled=True)
        if identity is not None:
            self.service.auth_succeeded(login)
            self.service.metrics.auth.inc("success")
            log.info("mail.auth.succeeded", client=server.client, username=identity.username,
                     listener=server.listener)
            return AuthResult(success=True, auth_data=identity)
        server.auth_failures += 1
        log.warning("mail.auth.failed", client=server.client, login=login.decode("utf-8", "replace")[:100],
                    failures=server.auth_failures)
        await self.service.auth_failed(server.client, login)
        if server.auth_failures >= self.service.config.max_auth_failures:
            await server.push("421 4.7.0 Too many authentication failures, closing")
            server.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)

