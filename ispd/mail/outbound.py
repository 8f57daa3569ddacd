"""Outbound delivery: the queue runner, MX lookups, and SMTP transactions with other domains.

The runner polls the store for due entries (and wakes at once when a message is queued or an
operator flushes), runs at most ``max_outbound_deliveries`` attempts at once, and for each entry
groups the pending recipients by domain, delivers each group in one transaction to the domain's
MX hosts in order of preference (RFC 5321 §5.1: the domain itself when it has no MX record;
a null MX, RFC 7505, refuses mail), and records what became of every recipient
(``ispd.mail.queue.settle``). Bounces go to the sender as a DSN from the null reverse-path:
into the sender's mailbox when it is ours, else into the queue.

TLS is opportunistic, as Postfix's ``smtp_tls_security_level = may``: STARTTLS when the server
offers it, without checking its certificate (MX certificates are rarely valid for the MX name,
and refusing to deliver over an unauthenticated channel would only fall back to clear text),
and clear text when the server then refuses STARTTLS or the handshake fails (``_connect``).

Names are resolved through ``[mail] resolver`` (point it at ispd's own DNS listener to use
ispd's resolver) or, unset, the system's resolv.conf.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import re
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, cast

import aiosmtplib
import dns.asyncresolver
import dns.exception
import dns.resolver

from ispd.logs import get_logger
from ispd.mail.dsn import bounce_message
from ispd.mail.metrics import QueueFigures
from ispd.mail.queue import AttemptResult, Outcome, Verdict, by_domain, outcome_of_reply, settle
from ispd.mail.spool import Spool
from ispd.store.models import QueuedMail, QueuedRecipient

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from ispd.configtypes import SocketAddress
    from ispd.mail.config import MailConfig
    from ispd.store import Store

log = get_logger("ispd.mail.outbound")
POLL_SECONDS = 10.0
COUNT_SECONDS = 30.0  # the queue's size and oldest message, for the metrics
ORPHANS_SECONDS = 3600.0  # spool files without a row: looked for
BUSY_DOMAIN_DELAY_SECONDS = 30.0  # a message whose domains are all at their limit: looked at again then
# RFC 5321 §4.5.3.2.6: a client waits 10 minutes for the reply to the end of the message (the
# other side may be filtering it); the transfer before gets a second per DATA_MIN_RATE octets, a
# line at 64 kbit/s (§4.5.3.2.5 gives 3 minutes per block sent; aiosmtplib writes the whole
# message at once, so the time is for the transfer as a whole).
DATA_REPLY_SECONDS = 600.0
DATA_MIN_RATE = 8192
# RFC 5321 §4.5.3.1.8: a server takes at least 100 recipients in one transaction; more to one
# domain go in several (three aliases of 50 make 150), or the rest would wait for a retry.
RECIPIENTS_PER_TRANSACTION = 100
_LINGER_RESET = struct.pack("ii", 1, 0)
LocalDelivery = Callable[[str, bytes], Awaitable[bool]]
Delivered = Callable[[dict[str, "Outcome"]], None]
Sending = Callable[[], None]  # told before a message's DATA: from there on a stop waits for its reply


# What ``client.data`` makes of a message's line ends (aiosmtplib's own pattern): a CRLF, a bare
# LF and a bare CR all go on the wire as CRLF.
_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")


def as_sent(message: bytes) -> bytes:
    """``message`` as it goes to another server, every line end CRLF: what a DKIM signature must
    cover (one over a bare CR no longer matches once that CR has become a line end)."""
    return _LINE_ENDS.sub(b"\r\n", message)


class LookupFailed(Exception):
    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.detail)
        self.outcome = outcome


class MXLookup:
    def __init__(self, server: SocketAddress | None, timeout: float) -> None:
        self.resolver = dns.asyncresolver.Resolver(configure=server is None)
        if server is not None:
            self.resolver.nameservers = [server.host]
            self.resolver.port = server.port
        self.resolver.lifetime = timeout

    async def exchangers(self, domain: str) -> list[str]:
        """The domain's mail hosts, most preferred first; raises ``LookupFailed``."""
        try:
            answer = await self.resolver.resolve(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise LookupFailed(Outcome(Verdict.BOUNCED, f"{domain}: no such domain", "5.1.2")) from None
        except dns.resolver.NoAnswer:
            return [domain]  # RFC 5321 §5.1: the implicit MX
        except (dns.exception.DNSException, OSError) as exc:
            raise LookupFailed(Outcome(Verdict.DEFERRED, f"{domain}: MX lookup failed: {exc}", "4.4.3")) from None
        records = sorted(answer, key=lambda r: (r.preference, secrets.randbelow(1 << 16)))
        hosts = [r.exchange.to_text().rstrip(".") for r in records]
        if hosts == [""]:  # RFC 7505: "0 ." says the domain takes no mail
            raise LookupFailed(Outcome(Verdict.BOUNCED, f"{domain}: the domain accepts no mail (null MX)", "5.1.10"))
        return [h for h in hosts if h]

    async def addresses(self, host: str) -> tuple[list[str], bool]:
        """The host's addresses, and whether a lookup failed for now (a time out, SERVFAIL)
        rather than said for good that there is none (NXDOMAIN, no A or AAAA record)."""
        found: list[str] = []
        failed = False
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.exception.DNSException, OSError):
                failed = True
                continue
            found += [r.to_text() for r in answer]
        return found, failed


@functools.cache
def _client_tls_context() -> ssl.SSLContext:
    # Built once and shared by every attempt: create_default_context() loads the whole system CA
    # store (tens of ms of CPU on the event loop), and a context per attempt, caught in a reference
    # cycle with its aiosmtplib client, outlived the attempt for as long as the supervisor's rare
    # garbage collections let it (hundreds of MB over a few hundred attempts to a refusing MX).
    # The settings never change, so one context serves all.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def deliver_to_domain(domain: str, sender: str, recipients: list[str], message: bytes, *, lookup: MXLookup,
                            port: int, helo: str, command_timeout: float,
                            delivered: Delivered | None = None, sending: Sending | None = None) -> dict[str, Outcome]:
    """One attempt for the recipients at one domain: each recipient's outcome. ``delivered`` is
    told of the recipients the other server took the moment it says so, before QUIT;
    ``sending``, before the message itself goes (until then, cancelling the attempt loses
    nothing: the other server has taken nothing)."""
    if len(recipients) > RECIPIENTS_PER_TRANSACTION:
        results: dict[str, Outcome] = {}
        for start in range(0, len(recipients), RECIPIENTS_PER_TRANSACTION):
            results.update(await deliver_to_domain(
                domain, sender, recipients[start:start + RECIPIENTS_PER_TRANSACTION], message, lookup=lookup,
                port=port, helo=helo, command_timeout=command_timeout, delivered=delivered, sending=sending))
        return results
    try:
        hosts = await lookup.exchangers(domain)
    except LookupFailed as failed:
        return dict.fromkeys(recipients, failed.outcome)
    last = f"{domain}: no mail host could be reached"
    refused: Outcome | None = None  # the last host's 4xx at EHLO or STARTTLS, should no other take it
    reachable = False  # a host with an address, or one whose lookup may yet give one
    for host in hosts:
        addresses, unsure = await lookup.addresses(host)
        reachable = reachable or unsure or bool(addresses)
        if not addresses:
            last = f"{host}: {'address lookup failed' if unsure else 'no such host (no A or AAAA record)'}"
        for address in addresses:
            try:
                return await _transaction(address, port, sender, recipients, message, helo=helo,
                                          command_timeout=command_timeout, delivered=delivered, sending=sending,
                                          server=f"{host}[{address}]")
            except (OSError, aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError,
                    aiosmtplib.SMTPServerDisconnected) as exc:
                last = f"{host}[{address}]: {exc or type(exc).__name__}"  # the next address, the next MX
            except aiosmtplib.SMTPResponseException as exc:  # refused at EHLO or STARTTLS
                outcome = outcome_of_reply(exc.code, f"{host}[{address}]: {exc.message}")
                if outcome.verdict is not Verdict.DEFERRED:
                    return dict.fromkeys(recipients, outcome)
                # A 4xx there (421: busy, shutting down) is that server's state, not the
                # message's: the next address, the next MX, as Postfix does (a primary that
                # kept answering 421 held the mail until its lifetime ended, the backup untried).
                refused, last = outcome, outcome.detail
            except aiosmtplib.SMTPException as exc:  # e.g. STARTTLS offered but unusable
                last = f"{host}[{address}]: {exc}"
    if not reachable:
        # RFC 5321 §5.1: mail hosts none of which has an address are an error to report, not
        # something that waits out the queue lifetime (Postfix: "Host or domain name not found").
        return dict.fromkeys(recipients, Outcome(Verdict.BOUNCED, f"{domain}: {last}", "5.4.4"))
    if refused is not None and refused.detail == last:  # the last one tried said why
        return dict.fromkeys(recipients, refused)
    return dict.fromkeys(recipients, Outcome(Verdict.DEFERRED, last, "4.4.1"))


async def _greet(client: aiosmtplib.SMTP) -> None:
    """EHLO, or HELO for a server that refuses it."""
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        if not client.is_connected:
            raise
        await client.helo()


async def _connect(address: str, port: int, *, helo: str, command_timeout: float) -> aiosmtplib.SMTP:
    """A session greeted and ready for MAIL, in TLS when the server offers STARTTLS and it works.

    Opportunistic, as Postfix's ``may``: a server that refuses the STARTTLS it offered gets the
    message in clear text in the same session ("try to continue in plain-text mode"), and one
    whose handshake fails gets it over a new connection without TLS (Postfix's
    tls_retry_plain), rather than nothing until the message bounces at the end of its lifetime.
    After TLS the server's extensions are asked for again (RFC 3207 §4.2: what came before is
    forgotten); unasked, every server offering STARTTLS looked like one without 8BITMIME."""
    for offer_tls in (True, False):
        client = aiosmtplib.SMTP(hostname=address, port=port, timeout=command_timeout, local_hostname=helo,
                                 start_tls=False, validate_certs=False, tls_context=_client_tls_context())
        await client.connect()
        try:
            await _greet(client)
            if not (offer_tls and client.supports_extension("starttls")):
                return client
            try:
                await client.starttls()
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code == 421 or not client.is_connected:  # the server is closing
                    raise
                log.info("mail.outbound.starttls_refused", server=address, reply=f"{exc.code} {exc.message}")
                return client
            except (OSError, aiosmtplib.SMTPException) as exc:
                log.info("mail.outbound.tls_failed", server=address, error=str(exc) or type(exc).__name__)
                client.close()
                continue
            await _greet(client)
            return client
        except BaseException:
            client.close()
            raise
    raise AssertionError("unreachable: the second connection offers no TLS")


async def _transaction(address: str, port: int, sender: str, recipients: list[str], message: bytes, *, helo: str,
                       command_timeout: float, delivered: Delivered | None = None,
                       sending: Sending | None = None, server: str = "") -> dict[str, Outcome]:
    """The outcomes of one session with ``address``, each saying which server it was
    (``server``, as Postfix's relay=) and the TLS version used, if any."""
    client = await _connect(address, port, helo=helo, command_timeout=command_timeout)
    try:
        ssl_object = client.get_transport_info("ssl_object")
        tls = str(ssl_object.version()) if ssl_object is not None else ""
        outcomes = await _session(client, address, sender, recipients, message, delivered, sending)
        return {recipient: dataclasses.replace(outcome, server=server or address, tls=tls)
                for recipient, outcome in outcomes.items()}
    finally:
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # stopping: no QUIT to wait for
            client.close()
        else:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


async def _session(client: aiosmtplib.SMTP, address: str, sender: str, recipients: list[str], message: bytes,
                   delivered: Delivered | None, sending: Sending | None) -> dict[str, Outcome]:
    options = []
    if not message.isascii():
        if not client.supports_extension("8bitmime"):
            # RFC 6152 §3: convert to 7 bits or return it; never send 8-bit octets to a server
            # that did not offer 8BITMIME. Returned: converting would break the message's DKIM
            # signature (ispd's own among them), and servers without 8BITMIME are rare.
            return dict.fromkeys(recipients, Outcome(
                Verdict.BOUNCED, f"{address}: the receiving server does not take 8-bit mail (no 8BITMIME)",
                "5.6.3"))
        options.append("BODY=8BITMIME")
    if not (sender + "".join(recipients)).isascii():
        if not client.supports_extension("smtputf8"):  # RFC 6531 §3.2: it cannot take these addresses
            return dict.fromkeys(recipients, Outcome(
                Verdict.BOUNCED, f"{address}: the receiving server does not support SMTPUTF8", "5.6.7"))
        options.append("SMTPUTF8")
    try:
        return await _envelope_and_data(client, sender, recipients, message, options, delivered, sending)
    except ValueError as exc:  # an address the client library cannot write on the wire
        return dict.fromkeys(recipients, Outcome(Verdict.BOUNCED, f"address not deliverable: {exc}", "5.1.3"))


async def _envelope_and_data(client: aiosmtplib.SMTP, sender: str, recipients: list[str], message: bytes,
                             options: list[str], delivered: Delivered | None = None,
                             sending: Sending | None = None) -> dict[str, Outcome]:
    """MAIL, RCPT for each recipient, DATA: each recipient keeps its own RCPT answer, and the DATA
    answer goes to those the server accepted only (one refused at RCPT for good bounces, whatever
    DATA then says; one deferred at RCPT is not bounced by a DATA refusal)."""
    encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
    if client.supports_extension("size"):  # RFC 1870: as sent, bare line ends made CRLF
        size = len(message) + message.count(b"\n") - message.count(b"\r\n")
        options = [f"SIZE={size}", *options]
    try:
        await client.mail(sender, options=options, encoding=encoding)
    except aiosmtplib.SMTPResponseException as exc:
        return dict.fromkeys(recipients, outcome_of_reply(exc.code, exc.message))
    results: dict[str, Outcome] = {}
    accepted = []
    for recipient in recipients:
        try:
            await client.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPResponseException as exc:
            results[recipient] = outcome_of_reply(exc.code, exc.message)
        else:
            accepted.append(recipient)
    if not accepted:
        with contextlib.suppress(aiosmtplib.SMTPResponseException):
            await client.rset()
        return results
    seconds = max(client.timeout or 0.0, DATA_REPLY_SECONDS) + len(message) / DATA_MIN_RATE
    if sending is not None:
        sending()
    try:
        reply = await _send_message(client, message, seconds)
    except aiosmtplib.SMTPResponseException as exc:
        results.update(dict.fromkeys(accepted, outcome_of_reply(exc.code, exc.message)))
        return results
    except TimeoutError:
        # Not another MX now: the message may yet arrive there, and a second copy would follow.
        results.update(dict.fromkeys(accepted, Outcome(
            Verdict.DEFERRED, f"no reply to the message in {seconds:.0f} s", "4.4.2")))
        return results
    except OSError as exc:  # the connection lost (SMTPServerDisconnected is one) with the message sent or on its way
        # Likewise (RFC 1047): a server that drops the connection after the final dot may well
        # have taken the message; the next MX would deliver a second copy at once. The next
        # attempt, as Postfix's "message may be sent more than once".
        results.update(dict.fromkeys(accepted, Outcome(
            Verdict.DEFERRED, f"lost connection while sending the message ({exc or type(exc).__name__}): "
            "it may arrive more than once", "4.4.2")))
        return results
    taken = dict.fromkeys(accepted, Outcome(Verdict.DELIVERED, f"250 {reply.message}".strip(), "2.0.0"))
    if delivered is not None:
        delivered(taken)
    results.update(taken)
    return results


async def _send_message(client: aiosmtplib.SMTP, message: bytes, seconds: float) -> aiosmtplib.SMTPResponse:
    """DATA, the message and the reply to its end, within ``seconds``. Given up (time out, or
    ispd stopping), the connection is cut, not closed: a close would still send what is buffered,
    the end of the message with it, and the other server would take a message ispd then counts
    as not delivered and sends again. Cut means a reset (SO_LINGER 0): a plain close still sends
    what the kernel holds."""
    transport = cast("asyncio.Transport | None", client.transport)
    try:
        async with asyncio.timeout(seconds):
            return await client.data(message, timeout=None)
    except (TimeoutError, asyncio.CancelledError):
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.abort()
        client.close()
        raise


class QueueRunner:
    def __init__(self, config: MailConfig, store: Store, spool: Spool, executor: Executor,
                 deliver_locally: LocalDelivery, clock: Callable[[], float], *,
                 return_path: Callable[[str], str] = str) -> None:
        """``return_path``: where a bounce to a message's sender goes (SRS undone for a forwarded one)."""
        self.config = config
        self.return_path = return_path
        self.store = store
        self.spool = spool
        self.executor = executor
        self.deliver_locally = deliver_locally
        self.clock = clock
        self.lookup = MXLookup(config.resolver, config.outbound_timeout_seconds)
        self.wake = asyncio.Event()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._noting: set[asyncio.Task[None]] = set()  # deliveries being written down (see _note_delivered)
        # Attempts a stop waits for (by queue id): a message on its way, an outcome being written.
        # The others (looking up MX records, connecting, in the envelope) are cancelled at once:
        # nothing is lost, and a dead MX would otherwise hold the stop past its grace.
        self._finishing: set[str] = set()
        # Attempts whose outcome the store could not take (its disk full, say), by queue id: written
        # before anything else is done with the message (see _record).
        self._unrecorded: dict[str, tuple[QueuedMail, bytes | None, AttemptResult, float]] = {}
        self._per_domain: dict[str, int] = {}  # deliveries under way to each domain
        self._slots = asyncio.Semaphore(config.max_outbound_deliveries)
        self.attempts: dict[str, int] = {v.value: 0 for v in Verdict}  # per recipient, for metrics
        self.bounces = 0
        self._counted: tuple[int, float | None] = (0, None)  # messages queued and the oldest, every 30 s
        self.server_name = config.server_name  # resolved once: getfqdn() blocks
        self._stopping = False

    def reconfigure(self, config: MailConfig) -> None:
        """A reloaded [mail] section: attempts from now on use it."""
        if (config.resolver, config.outbound_timeout_seconds) != (self.config.resolver,
                                                                  self.config.outbound_timeout_seconds):
            self.lookup = MXLookup(config.resolver, config.outbound_timeout_seconds)
        if config.max_outbound_deliveries != self.config.max_outbound_deliveries:
            self._slots = asyncio.Semaphore(config.max_outbound_deliveries)
        if config.hostname != self.config.hostname:
            self.server_name = config.server_name
        self.config = config

    @property
    def active(self) -> int:
        return len(self._active)

    def figures(self) -> QueueFigures:
        messages, oldest = self._counted
        return QueueFigures(dict(self.attempts), self.bounces, messages,
                            max(0.0, self.clock() - oldest) if oldest is not None else 0.0)

    async def enqueue(self, sender: str, recipients: list[str], message: bytes, *, subscriber_id: int | None,
                      queue_id: str | None = None) -> str:
        """Durably queued on return (the spool file, then the row)."""
        queue_id = queue_id or secrets.token_hex(6).upper()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.executor, self.spool.write, queue_id, message)
        now = self.clock()
        await self.store.enqueue_mail(QueuedMail(
            id=queue_id, created_at=now, sender=sender, size=len(message), next_attempt_at=now,
            recipients=tuple(QueuedRecipient(r) for r in dict.fromkeys(recipients)), subscriber_id=subscriber_id))
        self.wake.set()
        return queue_id

    async def run(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self.executor, self.spool.prepare)
        # Timed by the monotonic clock: the wall clock stepped back three hours (NTP, an operator)
        # froze the queue's metrics, and left orphans, for three hours.
        last_cleanup = last_count = float("-inf")
        while True:
            # Cleared before the read, not after: a message queued while the read is under way
            # (too late for it) wakes the next one at once instead of waiting for the poll.
            self.wake.clear()
            now = self.clock()
            due: list[QueuedMail] = []
            try:
                due = await self.store.due_mail(now, limit=4 * self.config.max_outbound_deliveries,
                                                after=self._latest(now))
                if time.monotonic() - last_count >= COUNT_SECONDS:
                    last_count = time.monotonic()
                    self._counted = await self.store.mail_queue_summary()
                if time.monotonic() - last_cleanup > ORPHANS_SECONDS:
                    last_cleanup = time.monotonic()
                    await self._remove_orphans()
            except Exception as exc:  # the store or the disk, for now: the queue must keep running
                log.error("mail.queue.error", error=repr(exc))
            for mail in due:
                if mail.id not in self._active and not self._stopping:
                    self._active[mail.id] = asyncio.create_task(self._attempt(mail.id), name=f"mail-out-{mail.id}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)

    def _latest(self, now: float) -> float:
        """The latest a next attempt is ever set for at ``now``; one set later was set before the
        wall clock was stepped back (NTP, an operator), and is due: it would otherwise wait for
        the length of the step (hours, years) on top of its retry delay."""
        return now + max(self.config.retry_max_seconds, BUSY_DOMAIN_DELAY_SECONDS) + 60

    async def drain(self) -> None:
        """Lets attempts in flight finish (and none start): cancelling one after the other
        server's 250 but before it is recorded would send that message again after a restart.
        Those that have sent no message yet are cancelled (tried again after the restart)."""
        self._stopping = True
        for queue_id, task in self._active.items():
            if queue_id not in self._finishing:
                task.cancel()
        if self._active:
            await asyncio.gather(*self._active.values(), return_exceptions=True)
        if self._noting:
            await asyncio.gather(*self._noting, return_exceptions=True)

    async def _remove_orphans(self) -> None:
        known = {m.id for m in await self.store.list_mail_queue()}
        loop = asyncio.get_running_loop()
        for name in await loop.run_in_executor(self.executor, self.spool.orphans, known):
            if name != "tmp":
                await loop.run_in_executor(self.executor, self.spool.remove, name)
                log.info("mail.queue.orphan_removed", queue_id=name)
        for name in await loop.run_in_executor(self.executor, self.spool.remove_stale_temporaries):
            log.info("mail.queue.orphan_removed", queue_id=name, directory="tmp")

    async def _attempt(self, queue_id: str) -> None:
        try:
            async with self._slots:
                if self._stopping:
                    return
                if queue_id in self._unrecorded:
                    # Its last attempt is not written down yet: the row still shows the recipients
                    # another server has taken as pending, and trying it would send them it again.
                    self._finishing.add(queue_id)
                    await asyncio.shield(self._record(*self._unrecorded[queue_id]))
                    return
                # Read again now that it is its turn: the row the poll saw may have been settled by
                # an attempt that ended meanwhile (trying it again would send it twice).
                mail = await self.store.get_queued_mail(queue_id)
                now = self.clock()
                if mail is None or not mail.pending or now < mail.next_attempt_at <= self._latest(now):
                    return
                domains = list(by_domain(mail.pending))
                limit = self.config.max_outbound_per_domain
                if all(self._per_domain.get(domain, 0) >= limit for domain in domains):
                    # Later, and out of the way: left due, it would stay first in the queue's order
                    # and keep taking the poll's places from mail to other domains.
                    await self.store.reschedule_mail(queue_id, self.clock() + BUSY_DOMAIN_DELAY_SECONDS)
                    return
                # Counted from now, before any wait: the attempts behind this one look at once.
                # (A message to several domains goes when one has room: the others may then be
                # one over their limit.)
                for domain in domains:
                    self._per_domain[domain] = self._per_domain.get(domain, 0) + 1
                try:
                    await self._attempt_now(mail)
                finally:
                    for domain in domains:
                        left = self._per_domain[domain] - 1
                        if left:
                            self._per_domain[domain] = left
                        else:
                            del self._per_domain[domain]
        except Exception as exc:  # one entry's trouble must not stop the queue
            log.error("mail.queue.attempt_failed", queue_id=queue_id, error=repr(exc))
        finally:
            self._active.pop(queue_id, None)
            self._finishing.discard(queue_id)

    async def _attempt_now(self, mail: QueuedMail) -> None:
        loop = asyncio.get_running_loop()
        try:
            message = await loop.run_in_executor(self.executor, self.spool.read, mail.id)
        except FileNotFoundError:
            log.error("mail.queue.file_missing", queue_id=mail.id, queue_directory=str(self.spool.directory))
            message, trouble = None, "is missing"
        except OSError as exc:
            # Unreadable (its permissions after a restore, an I/O error, not a file): as a
            # missing one. Left to _attempt's catch-all, the attempt was never recorded, so the
            # message was tried at every poll, never backed off, never bounced at the end of
            # its lifetime, and kept a place of the poll's from the rest of the queue.
            log.error("mail.queue.file_unreadable", queue_id=mail.id, error=str(exc))
            message, trouble = None, "cannot be read"
        results: dict[str, Outcome] = {}
        if message is None:
            # Deferred, not bounced at once: a queue_directory changed without moving its files
            # would otherwise bounce the whole queue at the first start. Files put back are sent;
            # a file truly lost bounces when the message's lifetime ends. (The directory is in
            # the log only: the detail goes into the sender's bounce.)
            results = dict.fromkeys(mail.pending, Outcome(
                Verdict.DEFERRED, f"the queued message's file {trouble}", "4.3.0"))
        else:
            groups = by_domain(mail.pending)
            noted: list[asyncio.Task[None]] = []

            def delivered(taken: dict[str, Outcome]) -> None:
                noted.append(self._note_delivered(mail.id, taken))

            attempts = [deliver_to_domain(domain, mail.sender, recipients, message, lookup=self.lookup,
                                          port=self.config.outbound_port, helo=self.server_name,
                                          command_timeout=self.config.outbound_timeout_seconds, delivered=delivered,
                        sending=functools.partial(self._finishing.add, mail.id))
                        for domain, recipients in groups.items()]
            for (domain, recipients), attempted in zip(groups.items(), await asyncio.gather(
                    *attempts, return_exceptions=True), strict=True):
                if isinstance(attempted, BaseException):  # a bug or a library surprise: try again later
                    log.error("mail.outbound.error", queue_id=mail.id, domain=domain, error=repr(attempted))
                    results.update(dict.fromkeys(recipients, Outcome(
                        Verdict.DEFERRED, f"local error: {attempted!r}", "4.3.0")))
                else:
                    results.update(attempted)
            if noted:
                await asyncio.gather(*noted, return_exceptions=True)
        for outcome in results.values():
            self.attempts[outcome.verdict.value] += 1
        now = self.clock()
        settled = settle(mail, results, now, lifetime=self.config.queue_lifetime_seconds,
                         retry_initial=self.config.retry_initial_seconds, retry_max=self.config.retry_max_seconds)
        for address, outcome in results.items():
            session = {"server": outcome.server, "tls": outcome.tls or "none"} if outcome.server else {}
            log.info("mail.outbound.attempt", queue_id=mail.id, recipient=address, result=outcome.verdict.value,
                     detail=outcome.detail, **session)
        # Shielded: once the other side has said 250, this must be recorded even if ispd is
        # stopping, or the message would go again after the restart. The bounce comes first:
        # a crash in between then repeats a bounce rather than losing it.
        self._finishing.add(mail.id)
        await asyncio.shield(self._record(mail, message, settled, now))

    def _note_delivered(self, queue_id: str, taken: dict[str, Outcome]) -> asyncio.Task[None]:
        """Writes down at once the recipients another server has just taken, in a task of its
        own: the attempt's other domains may take minutes more, and ispd stopping (or dying)
        meanwhile must not send the message to these again."""
        async def note() -> None:
            try:
                await self.store.record_mail_delivered(queue_id, {a: o.detail for a, o in taken.items()})
            except Exception as exc:  # the attempt's own record tries again
                log.error("mail.queue.note_failed", queue_id=queue_id, error=repr(exc))

        task = asyncio.ensure_future(note())
        self._noting.add(task)
        task.add_done_callback(self._noting.discard)
        return task

    async def _record(self, mail: QueuedMail, message: bytes | None, settled: AttemptResult, now: float) -> None:
        # Should the store fail to take it, the attempt is kept here and written at each poll until
        # it does: the row would otherwise leave the message due, and every poll would send it
        # again to the servers that took it (with the store's disk full, every 10 s).
        self._unrecorded[mail.id] = (mail, message if settled.bounced else None, settled, now)
        # The bounce first (a crash before the record retries the attempt, rather than lose it),
        # unless an operator deleted the message during the attempt: 'no bounce was sent'.
        if settled.bounced and mail.sender and await self.store.get_queued_mail(mail.id) is not None:
            await self.bounce(mail.sender, message or b"", settled.bounced, queue_id=mail.id,
                              arrived_at=mail.created_at)
            # Sent: writing the record again must not send the bounce again.
            self._unrecorded[mail.id] = (mail, None, dataclasses.replace(settled, bounced={}), now)
        updated = await self.store.record_mail_attempt(mail.id, settled.outcomes,
                                                       next_attempt_at=settled.next_attempt_at, error=settled.error)
        self._unrecorded.pop(mail.id, None)
        if updated is None or not updated.pending:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.spool.remove, mail.id)

    async def bounce(self, sender: str, message: bytes, failed: dict[str, Outcome], *, queue_id: str,
                     arrived_at: float) -> None:
        """A delivery status notification to ``sender`` for the ``failed`` recipients of the
        message ``queue_id``: into the sender's mailbox when it is local, else queued."""
        self.bounces += 1
        sender = self.return_path(sender)
        bounce = bounce_message(reporting_host=self.server_name, sender=sender, original=message,
                                queue_id=queue_id, arrived_at=arrived_at, failed=failed, now=self.clock())
        if await self.deliver_locally(sender, bounce):
            return
        queued = await self.enqueue("", [sender], bounce, subscriber_id=None)
        log.info("mail.bounce.queued", queue_id=queued, original=queue_id)
