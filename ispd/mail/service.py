"""The mail service's transport: aiosmtpd sessions on the MX listeners, store lookups at RCPT,
Maildir writes at the end of DATA.

aiosmtpd parses commands, handles PIPELINING (it reads one line at a time from the stream, so
pipelined commands simply queue), dot-stuffing, SIZE, 8BITMIME, SMTPUTF8 and STARTTLS, and only
ends DATA on <CRLF>.<CRLF> (its defence against SMTP smuggling). ``MXSession`` adds what it lacks:
enhanced status codes on every reply (RFC 2034), a cap on connections in total and per client,
and the ESMTP keywords. ``ispd.mail.engine`` makes the decisions.

The 250 after DATA is sent only once the message is fsynced into every recipient's Maildir
(the files and their directory entries), in a thread pool of its own so that a slow disk never
blocks the event loop or the store's threads.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from ispd.listeners import CertificateError, ConnectionGate, server_tls_context
from ispd.logs import get_logger
from ispd.mail.config import MailConfig
from ispd.mail.engine import MXPolicy, Reply, SMTPRefusal, protocol_name, trace_headers, with_enhanced_code
from ispd.mail.maildir import Maildir
from ispd.mail.metrics import MailMetrics
from ispd.service import Health, Service, ServiceContext, ServiceStartError
from ispd.store import StoreError
from ispd.store.models import MailRecipient

if TYPE_CHECKING:
    from ispd.config import Config

log = get_logger("ispd.mail")
DELIVERY_THREADS = 16  # fsyncs in flight at once; more sessions than this queue for a thread


_AIOSMTPD_REFUSALS = {
    "552 5.3.4 Err": "too_large",  # SIZE at MAIL, or DATA over the limit
    "500 5.5.2 Lin": "line_too_long",  # a line of DATA over 998 octets (RFC 5321 §4.5.3.1.6)
    "553 5.1.3 Err": "bad_address",
}


def check_files(config: MailConfig) -> list[str]:
    """What ``ispd check-config`` reports about the files the section names."""
    if config.certificate is None or config.private_key is None:
        return []
    try:
        server_tls_context(config.certificate, config.private_key, [])
    except CertificateError as exc:
        return [str(exc)]
    return []


class MailEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        # The mailboxes accepted at RCPT, by canonical address (alice+x@ and alice@ are one).
        self.mailboxes: dict[str, MailRecipient] = {}
        self.declared_size = 0


class MXSession(SMTP):
    """One SMTP connection to the MX."""

    def __init__(self, service: MailService) -> None:
        config = service.config
        super().__init__(
            service.handler, data_size_limit=config.max_message_bytes, enable_SMTPUTF8=True,
            hostname=config.server_name, ident="ESMTP ispd", tls_context=service.tls_context,
            timeout=config.command_timeout_seconds, loop=asyncio.get_running_loop())
        self.service = service
        self.client = ""
        self.admitted = False
        self._released = False
        self._helo_reply = False

    def _create_envelope(self) -> Envelope:
        return MailEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # the TCP connection, not the switch to TLS after STARTTLS
            peer = transport.get_extra_info("peername")
            self.client = str(peer[0]) if peer else ""
            self.admitted = self.service.gate.admit(self.client)
            if self.admitted:
                self.service.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.admitted and not self._released:
            self._released = True
            self.service.gate.release(self.client)
            self.service.sessions.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if not self.admitted:
            await self.push(f"421 4.7.0 {self.hostname} Too many connections, try again later")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._helo_reply:
            status = with_enhanced_code(status)
            # aiosmtpd refuses these itself, without a hook: counted here.
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


class MXHandler:
    """aiosmtpd's hooks (``handle_<COMMAND>``), each answering with our reply text."""

    def __init__(self, service: MailService) -> None:
        self.service = service

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        # aiosmtpd ends with "250 HELP"; the keywords it does not know go before it.
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        assert isinstance(envelope, MailEnvelope)
        for option in mail_options:
            if option.startswith("SIZE=") and option[5:].isdigit():
                envelope.declared_size = int(option[5:])
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        assert isinstance(envelope, MailEnvelope)
        try:
            await self.service.accept_recipient(address, envelope)
        except SMTPRefusal as refusal:
            self.service.metrics.refusals.inc(refusal.reason)
            return str(refusal.reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(server, MXSession) and isinstance(envelope, MailEnvelope)
        return str(await self.service.deliver(server, session, envelope))

    async def handle_exception(self, error: Exception) -> str:
        log.error("mail.session.error", error=repr(error))
        return "451 4.3.0 Local error, try again later"


class MailService(Service):
    name = "mail"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config: MailConfig = config.mail
        self.context = context
        self.metrics = MailMetrics()
        self.policy = self._policy(self.config)
        self.handler = MXHandler(self)
        self.gate = ConnectionGate(self.config.max_connections, self.config.max_connections_per_client,
                                   self.metrics.listener)
        self.sessions: set[MXSession] = set()
        self.tls_context: ssl.SSLContext | None = None
        self.bound: list[str] = []
        self._servers: list[asyncio.Server] = []
        self._deliveries: set[asyncio.Future[Any]] = set()
        self._created: set[Path] = set()  # Maildirs known to exist
        self._executor = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="ispd-mail")

    @staticmethod
    def _policy(config: MailConfig) -> MXPolicy:
        return MXPolicy(config.domains, recipient_delimiter=config.recipient_delimiter,
                        postmaster=config.postmaster, max_recipients=config.max_recipients)

    @staticmethod
    def _tls(config: MailConfig) -> ssl.SSLContext | None:
        if config.certificate is None or config.private_key is None:
            return None
        try:
            return server_tls_context(config.certificate, config.private_key, [])
        except CertificateError as exc:
            raise ServiceStartError(f"mail: {exc}") from None

    async def start(self, stack: AsyncExitStack) -> None:
        # aiosmtpd logs every command at INFO; ours are the events worth a line.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
        self.tls_context = self._tls(self.config)
        root = self.config.maildir_root
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceStartError(f"mail: cannot create the Maildir root {root}: {exc.strerror}") from None
        stack.callback(self._executor.shutdown, wait=True)
        loop = asyncio.get_running_loop()
        for address in self.config.listen_mx:
            try:
                server = await loop.create_server(lambda: MXSession(self), address.host, address.port,
                                                  reuse_address=True, backlog=1024)
            except OSError as exc:
                raise ServiceStartError(f"mail: cannot listen on {address}: {exc.strerror}") from None
            self._servers.append(server)
            stack.push_async_callback(self._close_server, server)
            host, port = server.sockets[0].getsockname()[:2]
            self.bound.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        stack.push_async_callback(self._close_sessions)
        for collector in self.metrics.collectors(lambda: {"sessions": float(len(self.sessions))}):
            self.context.registry.register(collector)
            stack.callback(self.context.registry.unregister, collector)
        log.info("mail.started", listen_mx=self.bound, domains=self.config.domains,
                 starttls=self.tls_context is not None, maildir_root=str(root))

    @staticmethod
    async def _close_server(server: asyncio.Server) -> None:
        server.close()
        await server.wait_closed()

    async def _close_sessions(self) -> None:
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        # A message whose DATA is being written gets its reply; new ones cannot start.
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)

    async def reload(self, old: Config, new: Config) -> None:
        if old.mail.listen_mx != new.mail.listen_mx:
            raise ServiceStartError("mail: a change of listen addresses needs a restart")
        if old.mail.maildir_root != new.mail.maildir_root:
            raise ServiceStartError("mail: a change of maildir_root needs a restart (move the mailboxes first)")
        tls_context = self._tls(new.mail)
        self.config, self.policy, self.tls_context = new.mail, self._policy(new.mail), tls_context
        self.gate.max_total = new.mail.max_connections
        self.gate.max_per_client = new.mail.max_connections_per_client
        log.info("mail.reloaded", domains=new.mail.domains, starttls=tls_context is not None)

    def health(self) -> Health:
        if not self._servers:
            return Health(False, "not listening")
        return Health(True)

    def describe(self) -> str:
        return f"mail on {', '.join(self.bound)}"

    # --- recipients and delivery

    def maildir(self, address: str) -> Maildir:
        return Maildir.for_address(self.config.maildir_root, address)

    async def _used_bytes(self, recipient: MailRecipient) -> int | None:
        if recipient.quota_bytes is None:
            return None
        maildir = self.maildir(recipient.mailbox.address)
        usage = await asyncio.get_running_loop().run_in_executor(self._executor, maildir.usage)
        return usage.bytes

    async def accept_recipient(self, address: str, envelope: MailEnvelope) -> None:
        route = self.policy.route(address, len(envelope.rcpt_tos))
        recipient = None
        try:
            for candidate in route.candidates:
                recipient = await self.context.store.mail_recipient(candidate)
                if recipient is not None:
                    break
        except StoreError as exc:
            log.error("mail.store.error", operation="mail_recipient", error=str(exc))
            raise SMTPRefusal(Reply(451, "4.3.0", "Temporary lookup failure, try again later"),
                              "local_error") from None
        if recipient is None:
            raise self.policy.unknown(address)
        if recipient.mailbox.address in envelope.mailboxes:
            return  # alice@ and alice+x@: one copy
        self.policy.admit(address, recipient, await self._used_bytes(recipient), envelope.declared_size)
        envelope.mailboxes[recipient.mailbox.address] = recipient

    async def deliver(self, server: MXSession, session: Session, envelope: MailEnvelope) -> Reply:
        started = time.perf_counter()
        content = envelope.original_content or b""
        try:
            for address, recipient in envelope.mailboxes.items():
                self.policy.admit(address, recipient, await self._used_bytes(recipient), len(content))
        except SMTPRefusal as refusal:
            self.metrics.refusals.inc(refusal.reason)
            self.metrics.messages.inc("refused")
            return refusal.reply
        queue_id = secrets.token_hex(6).upper()
        now = self.context.clock()
        protocol = protocol_name(extended=bool(session.extended_smtp), tls=session.ssl is not None,
                                 authenticated=bool(session.authenticated), utf8=bool(envelope.smtp_utf8))
        mail_from = envelope.mail_from or ""
        headers = trace_headers(
            return_path="" if mail_from == "<>" else mail_from, helo=session.host_name or "", client_ip=server.client,
            server_name=server.hostname, protocol=protocol, queue_id=queue_id,
            recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None, now=now)
        message = headers + content
        maildirs = [self.maildir(address) for address in envelope.mailboxes]
        delivery = asyncio.get_running_loop().run_in_executor(self._executor, self._write, maildirs, message, now)
        self._deliveries.add(delivery)
        try:
            await asyncio.shield(delivery)
        except OSError as exc:
            log.error("mail.delivery.failed", queue_id=queue_id, error=str(exc))
            self.metrics.refusals.inc("local_error")
            self.metrics.messages.inc("refused")
            if exc.errno in (28, 122):  # ENOSPC, EDQUOT
                return Reply(452, "4.3.1", "Insufficient system storage, try again later")
            return Reply(451, "4.3.0", "Local delivery failed, try again later")
        finally:
            self._deliveries.discard(delivery)
        self.metrics.messages.inc("delivered")
        self.metrics.deliveries.inc(amount=len(maildirs))
        self.metrics.bytes.inc(amount=len(message))
        self.metrics.mx_latency.observe(time.perf_counter() - started)
        log.info("mail.delivered", queue_id=queue_id, client=server.client, sender=mail_from,
                 recipients=list(envelope.mailboxes), size=len(message))
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    def _write(self, maildirs: list[Maildir], message: bytes, now: float) -> None:
        for maildir in maildirs:
            if maildir.path not in self._created:
                maildir.create()
                self._created.add(maildir.path)
            maildir.deliver(message, now=now)
