"""The mail service: the MX and submission listeners, recipients looked up in the store, local
delivery into Maildirs, and the outbound queue.

The 250 after DATA is sent only once every copy is durable: fsynced into each local recipient's
Maildir (files and directory entries), and for other domains the spool file and the queue row.
File I/O runs in a thread pool of its own, so that a slow disk never blocks the event loop or
the store's threads; scrypt checks of AUTH passwords run in the default executor, a few at once.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from email.utils import formatdate
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.exception
from aiosmtpd.smtp import Session

from ispd.control import CommandError
from ispd.credentials import PasswordChecker
from ispd.events import (
    SubscriberClosed,
    SubscriberDeleted,
    SubscriberEvent,
    SubscriberPlanChanged,
    SubscriberSuspended,
)
from ispd.listeners import (
    AuthThrottle,
    CertificateError,
    ConnectionGate,
    client_key,
    listening_tcp_socket,
    server_tls_context,
)
from ispd.logs import LogBudget, LogThrottle, get_logger
from ispd.mail import mailindex
from ispd.mail.authcheck import (
    AuthDNS,
    SigningKey,
    check_inbound,
    from_addresses,
    from_domain,
    header_names,
    header_section_read,
    load_signing_key,
    received_headers,
    sign,
    strip_our_results,
    unreadable_from,
)
from ispd.mail.config import MailConfig
from ispd.mail.dnsbl import Blocklists
from ispd.mail.engine import (
    AuthUnavailable,
    ConnectionRate,
    LoginRefused,
    MXPolicy,
    Reply,
    SendingLimit,
    SMTPRefusal,
    protocol_name,
    trace_headers,
)
from ispd.mail.imap.session import IMAPSession
from ispd.mail.maildir import Maildir
from ispd.mail.mailindex import FolderIndex
from ispd.mail.metrics import AUTH_RESULTS, MailMetrics
from ispd.mail.outbound import QueueRunner, as_sent
from ispd.mail.queue import Outcome, Verdict
from ispd.mail.smtp import Identity, MailEnvelope, MXHandler, SMTPSession, SubmissionHandler
from ispd.mail.spool import Spool
from ispd.mail.srs import SenderRewriter, SRSError, is_srs, load_secrets, read_secrets
from ispd.service import Health, Service, ServiceContext, ServiceStartError
from ispd.store import InvalidValue, NotFound, StoreError
from ispd.store.models import MailAlias, MailRecipient, SubscriberStatus, SuspendedMail
from ispd.store.validation import hostname_text, mail_address

if TYPE_CHECKING:
    from ispd.config import Config

log = get_logger("ispd.mail")
DELIVERY_THREADS = 16  # fsyncs in flight at once; more sessions than this queue for a thread
PASSWORD_CHECKS = 8  # scrypt checks at once (each ~50 ms of CPU)
AUTH_CHECK_THREADS = 16  # SPF/DKIM/DMARC checks of inbound mail at once (mostly DNS waits)
AUTH_CHECK_DEADLINE_SECONDS = 30.0  # a sender whose DNS never answers gets no longer than this
# Received fields past which a message is taken to be looping (Postfix's hopcount_limit).
MAX_HOPS = 50
# Mailboxes and addresses elsewhere one message may reach through aliases.
MAX_EXPANDED_RECIPIENTS = 1000
SIGNING_THREADS = 4  # DKIM signing of submitted mail: apart, so that slow inbound checks never stall it
AUTH_CACHE_SECONDS = 3600
TLS_HANDSHAKE_SECONDS = 15.0
# STARTTLS handshakes that failed, in the log: at most this many lines a minute for each of SMTP
# and IMAP (each is a connection anyone may open; 993's and 465's are not logged at all).
TLS_FAILURE_LOG_LINES = 20
ACCEPT_RETRY_SECONDS = 1.0  # after a failed accept (asyncio's servers wait as long)


class PartialDelivery(Exception):
    """Some copies of a message stay delivered after another failed and could not be taken
    back: the message counts as taken; ``missing`` are the Maildirs without a copy."""

    def __init__(self, error: OSError, missing: set[Path]) -> None:
        super().__init__(str(error))
        self.error = error
        self.missing = missing


def check_files(config: MailConfig) -> list[str]:
    """What ``ispd check-config`` reports about the files the section names."""
    problems = []
    if config.certificate is not None and config.private_key is not None:
        try:
            server_tls_context(config.certificate, config.private_key, [])
        except CertificateError as exc:
            problems.append(str(exc))
    for key in config.dkim:
        try:
            load_signing_key(key.domain, key.selector, key.private_key)
        except ValueError as exc:
            problems.append(f"dkim: {exc}")
    if config.srs and config.domains:  # (a missing one is made at start)
        try:
            read_secrets(config.srs_secrets_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"srs: cannot read the secret file {config.srs_secrets_path}: {exc.strerror}")
        except ValueError as exc:
            problems.append(f"srs: {exc}")
    return problems


def sender_rewriter(config: MailConfig) -> SenderRewriter | None:
    """SRS for forwarded mail, its secrets read (or made) now; None when it is off."""
    if not config.srs or not config.domains:
        return None
    path = config.srs_secrets_path
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        secrets_found = load_secrets(path)
    except OSError as exc:
        raise ServiceStartError(f"mail: srs: cannot read or make the secret file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ServiceStartError(f"mail: srs: {exc}") from None
    return SenderRewriter(secrets_found, config.srs_domain or config.domains[0], config.domains,
                          max_age_days=config.srs_max_age_days)


def signing_keys(config: MailConfig) -> dict[str, SigningKey]:
    try:
        return {k.domain: load_signing_key(k.domain, k.selector, k.private_key) for k in config.dkim}
    except ValueError as exc:
        raise ServiceStartError(f"mail: dkim: {exc}") from None


def login_key(login: bytes) -> str:
    """A login as ``authenticate`` reads it, for the count of its failures: every spelling that
    reaches the same account (" alice@isp.example", "ALICE@isp.example.") is one name, else
    each would start its own count and the delay that grows with them would never come."""
    text = login.decode("utf-8", "replace").strip().lower()
    if "@" in text:
        try:
            return mail_address(text)
        except ValueError:
            pass
    return text


class MailService(Service):
    name = "mail"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config: MailConfig = config.mail
        self.context = context
        self.metrics = MailMetrics()
        self.policy = self._policy(self.config)
        self.sending = SendingLimit(self.config.max_messages_per_hour)
        self.connection_rate = ConnectionRate(self.config.max_connection_rate_per_client)
        self.throttle = AuthThrottle(self.config.auth_failures_per_address, self.config.auth_failure_window_seconds,
                                     self.config.auth_failure_delay_seconds)
        self.mx_handler = MXHandler(self)
        self.submission_handler = SubmissionHandler(self)
        self.gate = ConnectionGate(self.config.max_connections, self.config.max_connections_per_client,
                                   self.metrics.listener)
        # IMAP's caps are the same size but its own, as Postfix's and Dovecot's are: mail clients
        # that hold connections (or someone opening silent ones) must not have the MX answer 421.
        self.imap_gate = ConnectionGate(self.config.max_connections, self.config.max_connections_per_client,
                                        self.metrics.imap_listener)
        self.sessions: set[SMTPSession] = set()
        self.imap_sessions: set[IMAPSession] = set()
        self._idlers: dict[tuple[Path, str], set[IMAPSession]] = {}
        self.tls_context: ssl.SSLContext | None = None
        self.passwords = PasswordChecker(AUTH_CACHE_SECONDS)
        self.bound: list[str] = []
        self._password_checks = asyncio.Semaphore(PASSWORD_CHECKS)
        self._acceptors: list[asyncio.Task[None]] = []  # one per listening socket (``_accept``)
        self._handshaking: dict[str, int] = {}  # TLS handshakes under way on 465/993, by client_key
        self._accept_failures = LogThrottle(60.0)
        self._tls_failures_logged = LogBudget(TLS_FAILURE_LOG_LINES, 60.0)
        self._deliveries: set[asyncio.Future[Any]] = set()
        # Messages past their final dot whose reply is not written yet (``SMTPSession.smtp_DATA``).
        self.replying: set[asyncio.Future[None]] = set()
        self._created: set[Path] = set()  # Maildirs known to exist
        self._executor = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="ispd-mail")
        self._auth_executor = ThreadPoolExecutor(AUTH_CHECK_THREADS, thread_name_prefix="ispd-mail-auth")
        self._signing_executor = ThreadPoolExecutor(SIGNING_THREADS, thread_name_prefix="ispd-mail-sign")
        self.auth_dns = AuthDNS(self.config.resolver)
        self.blocklists = Blocklists([], [], None, self.metrics.dnsbl_lookups.inc)  # (start sets the lists)
        self.signing: dict[str, SigningKey] = {}
        self.srs: SenderRewriter | None = None
        self.queue = QueueRunner(self.config, context.store, Spool(self.config.queue_directory), self._executor,
                                 self.deliver_bounce, context.clock, return_path=self._return_path)
        self._queue_task: asyncio.Task[None] | None = None

    def _blocklists(self, config: MailConfig) -> Blocklists:
        try:
            return Blocklists(config.dnsbl, config.dnsbl_exempt, config.resolver, self.metrics.dnsbl_lookups.inc)
        except dns.exception.DNSException as exc:  # no /etc/resolv.conf, and no `resolver`
            raise ServiceStartError(f"mail: dnsbl: no DNS server to ask ({exc}): set mail.resolver") from None

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

    # --- lifecycle

    async def start(self, stack: AsyncExitStack) -> None:
        self.tls_context = self._tls(self.config)
        self.signing = signing_keys(self.config)
        self.blocklists = self._blocklists(self.config)
        self.srs = sender_rewriter(self.config)
        self.auth_dns.use_for_spf()
        for directory, what in ((self.config.maildir_root, "Maildir root"),
                                (self.config.queue_directory, "queue directory")):
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise ServiceStartError(f"mail: cannot create the {what} {directory}: {exc.strerror}") from None
        stack.callback(self._executor.shutdown, wait=True)
        stack.callback(self._auth_executor.shutdown, wait=False, cancel_futures=True)
        stack.callback(self._signing_executor.shutdown, wait=False, cancel_futures=True)
        listeners = [("mx", a) for a in self.config.listen_mx]
        listeners += [("submission", a) for a in self.config.listen_submission]
        listeners += [("submissions", a) for a in self.config.listen_submissions]
        listeners += [("imap", a) for a in self.config.listen_imap]
        listeners += [("imaps", a) for a in self.config.listen_imaps]
        for listener, address in listeners:
            try:
                # Accepted here, not by the loop's server: with TLS from the first byte that
                # would make the session (and so apply the connection caps) only after the
                # handshake; and out of descriptors it accepted each waiting connection and
                # closed it at once, unsaid (no 421, no line, no count).
                sock = listening_tcp_socket(address.host, address.port, 1024)
                task = asyncio.create_task(self._accept(sock, listener), name=f"mail-{listener}")
                self._acceptors.append(task)
                stack.push_async_callback(self._stop_accepting, task, sock)
                host, port = sock.getsockname()[:2]
            except OSError as exc:
                raise ServiceStartError(f"mail: cannot listen on {address}: {exc.strerror}") from None
            self.bound.append(f"{listener} {f'[{host}]' if ':' in host else host}:{port}")
        stack.push_async_callback(self._close_sessions)
        for ending in (SubscriberSuspended, SubscriberPlanChanged, SubscriberClosed, SubscriberDeleted):
            stack.callback(self.context.bus.subscribe(ending, self._end_refused_imap_sessions))
        self._queue_task = asyncio.create_task(self.queue.run(), name="mail-queue")
        stack.push_async_callback(self._cancel_queue)
        for collector in self.metrics.collectors(self._gauges, self.queue.figures):
            self.context.registry.register(collector)
            stack.callback(self.context.registry.unregister, collector)
        stack.callback(self.context.control.register("mail.queue.flush", self._command_flush))
        stack.callback(self.context.control.register("mail.mailbox.show", self._command_mailbox_show))
        log.info("mail.started", listen=self.bound, domains=self.config.domains,
                 starttls=self.tls_context is not None, maildir_root=str(self.config.maildir_root))
        await self._warn_unreachable_postmaster()

    def _session(self, listener: str) -> asyncio.Protocol:
        if listener.startswith("imap"):
            return IMAPSession(self, listener)
        return SMTPSession(self, listener)

    def _accepted_session(self, listener: str) -> asyncio.Protocol:
        """A session for a connection ``_accept`` accepted, whose start (connection_made) cannot
        raise into the loop: a bug there is said and the connection aborted. Raised, uvloop's
        transport closed the connection's descriptor under the socket object it was handed,
        which, let go at the next accept, closed that number again (by then the next
        connection's) and libuv aborted the daemon."""
        session = self._session(listener)

        def connection_made(transport: asyncio.BaseTransport) -> None:
            # Once: the session's own from then on (a STARTTLS's), and no reference cycle left
            # to keep the session until the daemon's rare collection (``SMTPSession._session_over``).
            del session.connection_made
            try:
                session.connection_made(transport)
            except Exception:
                log.error("mail.session.error", listener=listener, exc_info=True)
                transport.abort()  # type: ignore[attr-defined]

        session.connection_made = connection_made  # type: ignore[method-assign]
        return session

    # --- IMAP's needs

    @property
    def mail_executor(self) -> ThreadPoolExecutor:
        return self._executor

    async def auth_failed(self, client: str, login: bytes) -> None:
        """One failed login: counted, and answered only after the (growing) delay."""
        now = time.monotonic()
        name = login_key(login)
        delay = self.throttle.delay(name, now)
        self.throttle.failed(client, name, now)
        self.metrics.auth.inc("failure")
        await asyncio.sleep(delay)

    def auth_succeeded(self, login: bytes) -> None:
        self.throttle.succeeded(login_key(login))

    async def imap_login(self, login: bytes, password: bytes, client: str = "") -> tuple[str, str, Maildir] | None:
        """(username, mailbox address, its Maildir) for a login that is a mailbox address (or
        the username of a subscriber with exactly one mailbox) and its password."""
        identity = await self.authenticate(login, password, client)
        if identity is None:
            return None
        # A suspended subscriber may still read (the billing notices are there) unless the plan
        # says otherwise; a closed one not. The password was right: they are told why.
        subscriber = await self.context.store.get_subscriber(identity.subscriber_id)
        if subscriber.status is SubscriberStatus.CLOSED:
            raise LoginRefused("this account is closed")
        if subscriber.status is SubscriberStatus.SUSPENDED and subscriber.plan_id is not None:
            plan = await self.context.store.get_plan(subscriber.plan_id)
            if plan.suspended_mail is SuspendedMail.NONE:
                raise LoginRefused("this account is suspended")
        text = login.decode("utf-8", "replace").strip()
        if "@" in text:
            address = mail_address(text)
        else:
            mailboxes = await self.context.store.list_mailboxes(subscriber=identity.subscriber_id)
            if len(mailboxes) != 1:
                return None
            address = mailboxes[0].address
        return identity.username, address, self.maildir(address)

    async def quota(self, address: str, maildir: Maildir) -> tuple[int, int | None]:
        """(bytes used, the limit or None) of a mailbox, as IMAP's QUOTA reports them."""
        recipient = await self.context.store.mail_recipient(address)
        limit = recipient.quota_bytes if recipient is not None else None
        usage = await asyncio.get_running_loop().run_in_executor(self._executor, maildir.usage, limit)
        return usage.bytes, limit

    def imap_sessions_of(self, maildir_path: Path) -> int:
        return sum(1 for s in self.imap_sessions if s.maildir is not None and s.maildir.path == maildir_path)

    def watch_imap(self, session: IMAPSession) -> None:
        if session.maildir is not None and session.selected is not None:
            self._idlers.setdefault((session.maildir.path, session.selected.folder), set()).add(session)

    def unwatch_imap(self, session: IMAPSession) -> None:
        # A folder nobody idles in any more leaves the table, which else kept every folder
        # anyone ever idled in.
        for key, watchers in list(self._idlers.items()):
            watchers.discard(session)
            if not watchers:
                del self._idlers[key]

    def notify_imap(self, maildir_path: Path | None, folder: str) -> None:
        """Something changed in that folder: IDLE sessions watching it look at once."""
        for session in self._idlers.get((maildir_path, folder), ()) if maildir_path is not None else ():
            session.wake()

    def _gauges(self) -> dict[str, float]:
        return {"sessions": float(len(self.sessions)), "outbound_deliveries_in_progress": float(self.queue.active),
                "imap_sessions": float(len(self.imap_sessions)),
                "imap_idle_sessions": float(sum(len(watchers) for watchers in self._idlers.values()))}

    async def _command_flush(self, args: dict[str, Any]) -> dict[str, Any]:
        queue_id = args.get("queue_id")
        if queue_id is not None and not isinstance(queue_id, str):
            raise CommandError("queue_id must be text")
        try:
            moved = await self.context.store.reschedule_mail(queue_id, self.context.clock())
        except NotFound as exc:
            raise CommandError(str(exc)) from None
        self.queue.wake.set()
        return {"rescheduled": moved}

    async def _command_mailbox_show(self, args: dict[str, Any]) -> dict[str, Any]:
        address = args.get("address")
        if not isinstance(address, str):
            raise CommandError("address must be text")
        try:
            recipient = await self.context.store.mail_recipient(mail_address(address))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if recipient is None:
            raise CommandError(f"no mailbox {address}")
        maildir = self.maildir(recipient.mailbox.address)
        folders = await asyncio.get_running_loop().run_in_executor(self._executor, self._describe_folders, maildir)
        return {"address": recipient.mailbox.address, "path": str(maildir.path), "folders": folders}

    def _describe_folders(self, maildir: Maildir) -> list[dict[str, Any]]:
        maildir.create()  # (cheap, and the Maildir may have been deleted since it was last made)
        self._created.add(maildir.path)
        folders = []
        for folder in ("", *maildir.folders()):
            state = FolderIndex(maildir.folder_path(folder)).sync()
            folders.append({"name": folder or "INBOX", "messages": len(state.messages),
                            "unseen": sum(1 for m in state.messages if "S" not in m.flags),
                            "bytes": sum(m.size for m in state.messages), "uidvalidity": state.uidvalidity,
                            "uidnext": state.next_uid})
        return folders

    async def _accept(self, sock: socket.socket, listener: str) -> None:
        """Accept connections for a listener. A failed accept (out of descriptors) is said (once
        a minute), counted, and accepting goes on a second later; the connections waiting meanwhile
        stay in the backlog. On a TLS-from-the-first-byte listener a client with as many
        handshakes under way as it may have connections (or the server with as many as it may
        have in all) has the new one closed at once, before any TLS work; the session's own
        caps apply once the handshake is done, within TLS_HANDSHAKE_SECONDS."""
        loop = asyncio.get_running_loop()
        stats = self.metrics.imap_listener if listener.startswith("imap") else self.metrics.listener
        handshakes: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    conn, peer = await loop.sock_accept(sock)
                except OSError as exc:  # out of file descriptors, a connection reset before accept, ...
                    # As asyncio's own servers: say so, wait a little (the descriptors may come
                    # back), and go on accepting; one error must not close the port for good.
                    stats.accept_failures += 1
                    if self._accept_failures.due((listener, exc.errno), time.monotonic()):
                        log.error("mail.accept_failed", listener=listener, error=str(exc))
                    await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                    continue
                if listener not in ("submissions", "imaps"):
                    try:  # (the session applies the connection caps, and answers 421 or BYE)
                        await loop.connect_accepted_socket(partial(self._accepted_session, listener), conn)
                    except OSError:
                        conn.close()
                    except Exception:  # a bug in making the session: said, and the port goes on
                        log.error("mail.session.error", listener=listener, exc_info=True)
                        conn.close()
                    continue
                client = client_key(str(peer[0]))
                pending = self._handshaking.get(client, 0)
                if pending >= self.config.max_connections_per_client or \
                        sum(self._handshaking.values()) >= self.config.max_connections:
                    stats.refused_connections += 1
                    conn.close()
                    continue
                self._handshaking[client] = pending + 1
                task = asyncio.create_task(self._handshake(conn, client, str(peer[0]), listener))
                handshakes.add(task)
                task.add_done_callback(handshakes.discard)
        finally:
            for task in handshakes:
                task.cancel()

    def starttls_failed(self, event: str, error: BaseException, client: str | None = None) -> None:
        """A client's handshake after STARTTLS failed (or it sent no TLS): said in the log, at
        most TLS_FAILURE_LOG_LINES a minute per event, with how many were left out before. A
        line per connection let anyone write 500 lines in 2 s (IMAP has no connection rate)."""
        held = self._tls_failures_logged.take(event, time.monotonic())
        if held is not None:
            log.info(event, error=repr(error), **({"client": client} if client is not None else {}),
                     **({"not_logged_before": held} if held else {}))

    async def _handshake(self, conn: socket.socket, client: str, address: str, listener: str) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                partial(self._accepted_session, listener), conn, ssl=self.tls_context,
                ssl_handshake_timeout=TLS_HANDSHAKE_SECONDS)
        except (TimeoutError, OSError, ssl.SSLError) as exc:  # (ConnectionError is an OSError)
            conn.close()
            # Counted, and said as a failed STARTTLS is (within the same log budget): a client
            # with a bad CA, an old TLS version or no TLS at all on 465/993 left no trace before.
            imap = listener.startswith("imap")
            (self.metrics.imap_listener if imap else self.metrics.listener).handshake_failures += 1
            self.starttls_failed("mail.imap.tls_failed" if imap else "mail.session.tls_failed", exc, address)
        finally:
            left = self._handshaking.get(client, 1) - 1
            if left > 0:
                self._handshaking[client] = left
            else:
                self._handshaking.pop(client, None)

    @staticmethod
    async def _stop_accepting(task: asyncio.Task[None], sock: socket.socket) -> None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in the loop: said here, not raised into the shutdown
            log.error("mail.accept_loop_failed", exc_info=True)
        finally:
            sock.close()

    async def _end_refused_imap_sessions(self, event: SubscriberEvent) -> None:
        """A subscriber closed, deleted, or suspended on a plan with ``--suspended-mail none``
        may not log in to IMAP: its sessions logged in before are ended too (as ``doveadm kick``
        would), or they would go on reading, and writing, the mailbox for as long as the client
        stays connected, while ``subscriber show`` says IMAP is refused."""
        if isinstance(event, (SubscriberSuspended, SubscriberPlanChanged)):
            # (A plan change too: a suspended subscriber moved to a plan with --suspended-mail
            # none is refused IMAP from then on, as a suspension on that plan.)
            try:
                subscriber = await self.context.store.get_subscriber(event.subscriber_id)
                plan = await self.context.store.get_plan(subscriber.plan_id) if subscriber.plan_id else None
            except StoreError:
                return  # resumed or deleted since: that event decides
            if subscriber.status is not SubscriberStatus.SUSPENDED or plan is None \
                    or plan.suspended_mail is not SuspendedMail.NONE:
                return
            why = b"suspended"
        else:
            why = b"closed" if isinstance(event, SubscriberClosed) else b"deleted"
        for imap in list(self.imap_sessions):
            if imap.username == event.username and imap.state in ("authenticated", "selected"):
                imap.send(b"* BYE [CONTACTADMIN] this account is " + why)
                imap.close()

    async def _close_sessions(self) -> None:
        for session in list(self.sessions):
            session.shut_down()
        for imap in list(self.imap_sessions):
            imap.shut_down()

    async def _cancel_queue(self) -> None:
        if self._queue_task is not None:
            self._queue_task.cancel()
            await asyncio.gather(self._queue_task, return_exceptions=True)

    async def stop(self) -> None:
        for acceptor in self._acceptors:  # (the sockets close with the stack: _stop_accepting)
            acceptor.cancel()
        # A message whose DATA is being written gets its reply, an outbound attempt its record;
        # nothing new starts.
        if self._queue_task is not None:
            self._queue_task.cancel()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        # A message past its dot gets its reply before the sessions are told 421: queued or
        # written by then (a store write goes on after its caller is cancelled), it would come
        # again from a client told to try again later.
        if self.replying:
            await asyncio.gather(*self.replying, return_exceptions=True)
        await self.queue.drain()

    async def reload(self, old: Config, new: Config) -> None:
        for key in ("listen_mx", "listen_submission", "listen_submissions", "listen_imap", "listen_imaps",
                    "maildir_root", "queue_directory"):
            if getattr(old.mail, key) != getattr(new.mail, key):
                raise ServiceStartError(f"mail: a change of {key} needs a restart")
        if (old.mail.certificate is None) != (new.mail.certificate is None):
            raise ServiceStartError("mail: turning STARTTLS on or off needs a restart")
        # Whatever may refuse the reload, before anything changes (a refused reload keeps all
        # that was, the certificate in 465's context too).
        blocklists = self._blocklists(new.mail)
        srs = sender_rewriter(new.mail)  # (the secret file again: a rotation takes effect here)
        signing = signing_keys(new.mail)
        # A new context, not the new certificate loaded into the old one: OpenSSL keeps a
        # certificate per key type, so an ECDSA one replaced by an RSA one (or the other way
        # round) stayed, and clients that prefer it got the old certificate for ever. Each
        # connection (465, STARTTLS, IMAPS) takes self.tls_context when it starts; those under
        # way keep the one they have.
        tls_context = self._tls(new.mail)
        self.signing = signing
        self.blocklists = blocklists
        self.srs = srs
        if old.mail.resolver != new.mail.resolver:
            self.auth_dns = AuthDNS(new.mail.resolver)
            self.auth_dns.use_for_spf()
        self.config, self.policy, self.tls_context = new.mail, self._policy(new.mail), tls_context
        self.sending.per_hour = new.mail.max_messages_per_hour
        self.connection_rate.per_minute = new.mail.max_connection_rate_per_client
        self.throttle.per_address = new.mail.auth_failures_per_address
        self.throttle.window = new.mail.auth_failure_window_seconds
        self.throttle.base_delay = new.mail.auth_failure_delay_seconds
        self.queue.reconfigure(new.mail)
        for gate in (self.gate, self.imap_gate):
            gate.max_total = new.mail.max_connections
            gate.max_per_client = new.mail.max_connections_per_client
        log.info("mail.reloaded", domains=new.mail.domains, starttls=tls_context is not None)
        await self._warn_unreachable_postmaster()

    async def _warn_unreachable_postmaster(self) -> None:
        """RFC 5321 §4.5.1: postmaster@ every domain must take mail. Without a mailbox or alias
        at postmaster@ nor a `postmaster` setting that names one (unset, or a mistyped address),
        the MX refused it 550 5.1.1 and nothing said so. A warning, not a refusal: the mailbox
        may be added once the daemon runs."""
        unreachable = []
        try:
            for domain in self.config.domains:
                for candidate in self.policy.route(f"postmaster@{domain}", 0).candidates:
                    if (await self.context.store.mail_recipient(candidate) is not None
                            or await self.context.store.mail_alias(candidate) is not None):
                        break
                else:
                    unreachable.append(domain)
        except (StoreError, InvalidValue) as exc:
            log.debug("mail.postmaster.unchecked", error=str(exc))
            return
        if unreachable:
            log.warning("mail.postmaster.unreachable", domains=unreachable, postmaster=self.config.postmaster,
                        detail="mail to postmaster@ these domains is refused (550 5.1.1): set [mail] postmaster "
                               "to an existing mailbox, or add a mailbox or an alias at postmaster@")

    def health(self) -> Health:
        if not self._acceptors or any(acceptor.done() for acceptor in self._acceptors):
            return Health(False, "not listening")
        if self._queue_task is not None and self._queue_task.done():
            return Health(False, "the outbound queue stopped")
        return Health(True)

    def describe(self) -> str:
        return f"mail on {', '.join(self.bound)}"

    # --- recipients and local delivery

    def maildir(self, address: str) -> Maildir:
        return Maildir.for_address(self.config.maildir_root, address)

    async def _used_bytes(self, recipient: MailRecipient) -> int | None:
        if recipient.quota_bytes is None:
            return None
        maildir = self.maildir(recipient.mailbox.address)
        usage = await asyncio.get_running_loop().run_in_executor(self._executor, maildir.usage,
                                                                 recipient.quota_bytes)
        return usage.bytes

    async def _find_mailbox(self, candidates: tuple[str, ...]) -> MailRecipient | None:
        try:
            for candidate in candidates:
                recipient = await self.context.store.mail_recipient(candidate)
                if recipient is not None:
                    return recipient
        except InvalidValue:  # e.g. bytes that are not UTF-8 in an SMTPUTF8 address: never deliverable
            raise SMTPRefusal(Reply(553, "5.1.3", "Recipient address is not valid"), "bad_address") from None
        except StoreError as exc:
            log.error("mail.store.error", operation="mail_recipient", error=str(exc))
            raise SMTPRefusal(Reply(451, "4.3.0", "Temporary lookup failure, try again later"),
                              "local_error") from None
        return None

    async def accept_recipient(self, address: str, envelope: MailEnvelope) -> None:
        route = self.policy.route(address, len(envelope.rcpt_tos))
        if self.srs is not None and is_srs(address.rpartition("@")[0]):
            original = self._undo_srs(address)
            if original is not None:
                if original.rpartition("@")[2].lower().removesuffix(".") not in self.policy.domains:
                    envelope.add_remote(original)  # a bounce of mail we forwarded: to its sender
                    return
                address, route = original, self.policy.route(original, len(envelope.rcpt_tos))
        # Candidate by candidate, a mailbox or an alias at each: the address as written comes
        # before its base (without the subaddress) and the configured postmaster, so an alias
        # at postmaster@ (or at info-sales@ with "-" as the delimiter) is not passed over for
        # the mailbox a later candidate names.
        for candidate in route.candidates:
            recipient = await self._find_mailbox((candidate,))
            if recipient is not None:
                if recipient.mailbox.address in envelope.mailboxes:
                    return  # alice@ and alice+x@: one copy
                self.policy.admit(address, recipient, await self._used_bytes(recipient), envelope.declared_size)
                envelope.mailboxes[recipient.mailbox.address] = recipient
                return
            found = await self._find_alias(candidate)
            if found is not None:
                await self._accept_alias(address, *found, envelope)
                return
        raise self.policy.unknown(address)

    def _undo_srs(self, address: str) -> str | None:
        """Where mail to one of our SRS addresses goes; a forged or expired one is refused, so
        that nobody relays through the MX by making one up."""
        assert self.srs is not None
        try:
            return self.srs.reverse(address, self.context.clock())
        except SRSError as exc:
            log.info("mail.srs.refused", recipient=address[:256], reason=str(exc))
            raise SMTPRefusal(Reply(550, "5.1.1", f"Invalid SRS address: {exc}"), "bad_srs") from None

    def _return_path(self, sender: str) -> str:
        """Where our own bounce of a queued message goes: for a forwarded one, its original sender
        (its signature is ours; its age does not matter, a queued message may be older)."""
        if self.srs is None or not is_srs(sender.rpartition("@")[0]):
            return sender
        try:
            return self.srs.reverse(sender, self.context.clock(), check_age=False) or sender
        except SRSError:  # signed with a secret since removed: the address itself, as written
            return sender

    async def _find_alias(self, address: str) -> tuple[MailAlias, SubscriberStatus] | None:
        try:
            return await self.context.store.mail_alias(address)
        except StoreError as exc:
            log.error("mail.store.error", operation="mail_alias", error=str(exc))
            raise SMTPRefusal(Reply(451, "4.3.0", "Temporary lookup failure, try again later"),
                              "local_error") from None

    async def _accept_alias(self, address: str, alias: MailAlias, owner: SubscriberStatus,
                            envelope: MailEnvelope) -> None:
        """An alias: its mailboxes get a copy (their quota is checked at DATA: one full mailbox
        of several bounces alone), its other addresses go to the queue (forwarding, the
        envelope sender kept, as Postfix's virtual aliases). One that reaches nobody (every
        target mailbox gone or closed) is an unknown recipient."""
        if owner is SubscriberStatus.CLOSED:
            raise self.policy.disabled(address)
        if len(envelope.mailboxes) + len(envelope.remote) + len(alias.targets) > MAX_EXPANDED_RECIPIENTS:
            # max_recipients counts RCPTs; each alias may name 50 (Postfix: virtual_alias_expansion_limit)
            raise SMTPRefusal(Reply(452, "4.5.3", "Too many recipients"), "too_many_recipients")
        reached = False
        for target in alias.targets:
            if target.rpartition("@")[2] not in self.policy.domains:
                envelope.add_remote(target)
                reached = True
                continue
            recipient = await self._find_mailbox((target,))
            if recipient is None or recipient.status is SubscriberStatus.CLOSED:
                log.warning("mail.alias.target_unusable", alias=alias.address, target=target,
                            detail="no such mailbox" if recipient is None else "its subscriber is closed")
                continue
            envelope.mailboxes.setdefault(recipient.mailbox.address, recipient)
            reached = True
        if not reached:
            raise self.policy.unknown(address)

    async def _deliver_locally(self, session: SMTPSession, smtp_session: Session, envelope: MailEnvelope,
                               queue_id: str, content: bytes, now: float, *, folder: str = "") -> Reply | None:
        """Writes the local copies (into ``folder``, "" the INBOX); a Reply when the message
        cannot be taken. ``content`` starts with any header ispd adds besides the trace.

        Quota is checked again with the real size. When it refuses every local recipient (and
        nothing goes elsewhere) the reply says so; when only some, the others get their copy and
        the sender a bounce for those: SMTP has one reply for all recipients after DATA, and one
        full mailbox must not hold back everyone else's mail."""
        over: dict[str, SMTPRefusal] = {}
        for address, recipient in envelope.mailboxes.items():
            try:
                self.policy.admit(address, recipient, await self._used_bytes(recipient), len(content))
            except SMTPRefusal as refusal:
                self.metrics.refusals.inc(refusal.reason)
                over[address] = refusal
        if over and len(over) == len(envelope.mailboxes) and not envelope.remote:
            return next(iter(over.values())).reply
        mail_from = envelope.mail_from or ""
        local_recipients = [r for r in envelope.rcpt_tos if r not in envelope.remote]
        headers = trace_headers(
            return_path="" if mail_from == "<>" else mail_from, helo=smtp_session.host_name or "",
            client_ip=session.client, server_name=session.hostname, protocol=self._protocol(session, envelope),
            queue_id=queue_id, recipient=local_recipients[0] if len(local_recipients) == 1 else None, now=now)
        targets = {address: self.maildir(address) for address in envelope.mailboxes if address not in over}
        maildirs = list(targets.values())
        try:
            # With a part queued already the reply is 250 whatever happens here (a 4xx would make
            # the sender send that part again): each copy that can be written stays.
            await self._write_and_notify(maildirs, headers + content, now, folder,
                                         all_or_nothing=not envelope.remote)
        except (OSError, PartialDelivery) as failure:
            exc = failure.error if isinstance(failure, PartialDelivery) else failure
            log.error("mail.delivery.failed", queue_id=queue_id, error=str(exc))
            self.metrics.refusals.inc("local_error")
            storage = exc.errno in (28, 122)  # ENOSPC, EDQUOT
            if not isinstance(failure, PartialDelivery):
                # ``_write`` took back the copies it had made: the 4xx takes nothing.
                return (Reply(452, "4.3.1", "Insufficient system storage, try again later") if storage
                        else Reply(451, "4.3.0", "Local delivery failed, try again later"))
            # The message is taken (250): the recipients without a copy bounce, for good.
            lost = Reply(552 if storage else 550, "5.3.1" if storage else "5.3.0",
                         f"the mailbox could not be written: {exc.strerror or exc}")
            over.update({address: SMTPRefusal(lost, "local_error") for address, maildir in targets.items()
                         if maildir.path in failure.missing})
            maildirs = [m for m in maildirs if m.path not in failure.missing]
            for maildir in maildirs:
                self.notify_imap(maildir.path, folder)
        self.metrics.deliveries.inc(amount=len(maildirs))
        if maildirs:
            self.metrics.bytes.inc(amount=len(headers) + len(content))
        # Each copy not written is said, and leaves the envelope's mailboxes, which the line of
        # the delivered message lists: it named them as delivered, and under the null sender
        # (no bounce) nothing at all told of the copy that never was.
        for address, refused_copy in over.items():
            log.warning("mail.delivery.refused", queue_id=queue_id, recipient=address,
                        reply=str(refused_copy.reply), bounce=mail_from not in ("", "<>"))
            envelope.mailboxes.pop(address, None)
        if over and mail_from not in ("", "<>"):
            failed = {address: _bounced(refusal.reply) for address, refusal in over.items()}
            try:
                await self.queue.bounce(mail_from, content, failed, queue_id=queue_id, arrived_at=now)
            except (OSError, StoreError) as exc:  # the copies are delivered: do not fail the message
                log.error("mail.bounce.failed", queue_id=queue_id, error=str(exc))
        return None

    @staticmethod
    def _protocol(session: SMTPSession, envelope: MailEnvelope) -> str:
        smtp_session = session.session
        return protocol_name(extended=bool(smtp_session and smtp_session.extended_smtp), tls=session.encrypted,
                             authenticated=bool(smtp_session and smtp_session.authenticated),
                             utf8=bool(envelope.smtp_utf8))

    async def _write_tracked(self, maildirs: list[Maildir], message: bytes, now: float, folder: str = "",
                             all_or_nothing: bool = True) -> None:
        if not maildirs:
            return
        delivery = asyncio.get_running_loop().run_in_executor(self._executor, self._write, maildirs, message, now,
                                                              folder, all_or_nothing)
        self._deliveries.add(delivery)
        try:
            await asyncio.shield(delivery)
        finally:
            self._deliveries.discard(delivery)

    async def _write_and_notify(self, maildirs: list[Maildir], message: bytes, now: float, folder: str, *,
                                all_or_nothing: bool = True) -> None:
        await self._write_tracked(maildirs, message, now, folder, all_or_nothing)
        for maildir in maildirs:
            self.notify_imap(maildir.path, folder)

    def _write(self, maildirs: list[Maildir], message: bytes, now: float, folder: str,
               all_or_nothing: bool = True) -> None:
        """Every copy, or (OSError) none: RFC 5321 §4.1.1.4, a 4xx after DATA says nothing was
        taken, and the sender sends the whole message again to every recipient. So when a copy
        fails (the disk full, a mailbox not writable) those written before it are taken back,
        with their quota count, before the error goes on. Should that fail too, the copies
        that stay make the message delivered: ``PartialDelivery`` names the recipients without
        one, who bounce under a 250 (as ``submit`` bounces a local copy that fails beside a
        queued part), so nothing is lost and nothing arrives twice. Not ``all_or_nothing`` (the
        reply will be 250 anyway): every copy that can be written is, and ``PartialDelivery``
        names the others."""
        delivered: list[tuple[Maildir, str]] = []
        failed: set[Path] = set()
        first_error: OSError | None = None
        for maildir in maildirs:
            try:
                if maildir.path not in self._created:
                    maildir.create()
                    self._created.add(maildir.path)
                try:
                    copy = maildir.deliver(message, folder=folder, now=now)
                except FileNotFoundError:  # removed by an operator (or `mailbox delete`) since: make it again
                    maildir.create()
                    copy = maildir.deliver(message, folder=folder, now=now)
            except OSError as exc:
                if not all_or_nothing:
                    failed.add(maildir.path)
                    first_error = first_error or exc
                    continue
                kept = self._take_back(delivered, folder)
                if kept:
                    raise PartialDelivery(exc, {m.path for m in maildirs} - kept) from exc
                raise
            mailindex.forget(maildir.folder_path(folder))
            delivered.append((maildir, copy.name))
        if first_error is not None:
            raise PartialDelivery(first_error, failed)

    @staticmethod
    def _take_back(delivered: list[tuple[Maildir, str]], folder: str) -> set[Path]:
        """Removes copies of a transaction that failed part-way; the mailboxes whose copy stays."""
        kept: set[Path] = set()
        for maildir, name in delivered:
            try:
                size = mailindex.withdraw(maildir.folder_path(folder), name)
            except OSError as exc:
                log.error("mail.delivery.take_back_failed", mailbox=str(maildir.path), error=str(exc))
                kept.add(maildir.path)
                continue
            if size is not None:
                maildir.uncount(size)
        return kept

    async def deliver(self, session: SMTPSession, smtp_session: Session, envelope: MailEnvelope) -> Reply:
        """The end of DATA on the MX."""
        started = time.perf_counter()
        queue_id = secrets.token_hex(6).upper()
        # RFC 8601 §5: results claiming to be ours come from the sender, checks on or off.
        original = envelope.original_content or b""
        # First: a header section that does not end in the first MiB is refused without a look
        # for its end through the whole message (for our Authentication-Results).
        looping = self._header_too_large(session, envelope, original)
        if looping is not None:
            return looping
        content = strip_our_results(original, session.hostname)
        folder = ""
        looping = self._looping(session, envelope, content)
        if looping is not None:
            return looping
        if self.config.authentication_checks:
            checked = await self._check_authentication(session, smtp_session, envelope, content)
            if isinstance(checked, Reply):
                self.metrics.messages.inc("refused")
                return checked
            content, folder = checked
        if envelope.remote:  # an alias's addresses elsewhere: queued first, as on submission
            refused_queue = await self._forward(session, smtp_session, envelope, queue_id, content)
            if refused_queue is not None:
                self.metrics.messages.inc("refused")
                return refused_queue
        refused = await self._deliver_locally(session, smtp_session, envelope, queue_id, content,
                                              self.context.clock(), folder=folder)
        if refused is not None:
            self.metrics.messages.inc("refused")
            return refused
        self.metrics.messages.inc("delivered")
        self.metrics.mx_latency.observe(time.perf_counter() - started)
        log.info("mail.delivered", queue_id=queue_id, client=session.client, sender=envelope.mail_from,
                 recipients=list(envelope.mailboxes), size=len(content), folder=folder or "INBOX")
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    def _looping(self, session: SMTPSession, envelope: MailEnvelope, content: bytes) -> Reply | None:
        """The refusal of a message that went round too often, on the MX and on submission alike
        (Postfix checks hopcount_limit in every smtpd, also 50): a forwarding loop (an alias to
        an address elsewhere that forwards back here, or a subscriber's own forwarder that
        submits again) adds a Received header on each pass."""
        if received_headers(content) <= MAX_HOPS:
            return None
        self.metrics.refusals.inc("mail_loop")
        self.metrics.messages.inc("refused")
        log.warning("mail.loop", client=session.client, sender=envelope.mail_from, recipients=envelope.rcpt_tos)
        return Reply(554, "5.4.6", "Too many hops: a mail loop?")

    def _header_too_large(self, session: SMTPSession, envelope: MailEnvelope, content: bytes) -> Reply | None:
        """The refusal of a message whose header section goes on past what is read for From, on
        the MX and on submission alike: a From written after a megabyte of padding fields
        escaped DMARC on the MX and, on submission, the check that it is the subscriber's own
        (the mail client still shows it). Exchange refuses a header section over 256 KB so."""
        if header_section_read(content):
            return None
        self.metrics.refusals.inc("too_large")
        self.metrics.messages.inc("refused")
        log.warning("mail.header_too_large", client=session.client, listener=session.listener,
                    sender=envelope.mail_from)
        return Reply(552, "5.3.4", "Message header section too large (over 1 MiB)")

    async def _forward(self, session: SMTPSession, smtp_session: Session, envelope: MailEnvelope, queue_id: str,
                       content: bytes) -> Reply | None:
        """Queue the message for an alias's addresses elsewhere, the sender kept (its bounces
        go back to it), rewritten by SRS when that is on; a Reply if it could not be queued
        (nothing is delivered then)."""
        sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from or ""
        if self.srs is not None and sender:
            sender = self.srs.forward(sender, self.context.clock())
        received = trace_headers(
            return_path=None, helo=smtp_session.host_name or "", client_ip=session.client,
            server_name=session.hostname, protocol=self._protocol(session, envelope), queue_id=queue_id,
            recipient=None, now=self.context.clock())
        try:
            await self.queue.enqueue(sender, envelope.remote, received + content, subscriber_id=None, queue_id=queue_id)
        except (OSError, StoreError) as exc:
            log.error("mail.queue.enqueue_failed", queue_id=queue_id, error=str(exc))
            self.metrics.refusals.inc("local_error")
            return Reply(451, "4.3.0", "Could not queue the message, try again later")
        log.info("mail.forwarded", queue_id=queue_id, sender=sender, recipients=list(envelope.remote))
        return None

    async def _check_authentication(self, session: SMTPSession, smtp_session: Session, envelope: MailEnvelope,
                                    content: bytes) -> tuple[bytes, str] | Reply:
        """SPF, DKIM and DMARC: the content with an Authentication-Results header and the folder
        to deliver to, or the refusal DMARC asks for."""
        authserv_id = session.hostname
        try:
            verdict = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                self._auth_executor, lambda: check_inbound(
                    content, client_ip=session.client, mail_from=envelope.mail_from or "",
                    helo=smtp_session.host_name or "", authserv_id=authserv_id, dns_lookup=self.auth_dns)),
                AUTH_CHECK_DEADLINE_SECONDS)
        except Exception as exc:  # the libraries' errors (a message they cannot parse), or DNS too slow:
            # delivered unchecked, never lost; what the sender sent is not the operator's fault.
            log.warning("mail.authentication.unchecked", client=session.client, error=repr(exc))
            return content, ""
        for method, result in (("spf", verdict.spf), ("dkim", verdict.dkim), ("dmarc", verdict.dmarc)):
            self.metrics.authentication.inc(method, result if result in AUTH_RESULTS else "other")
        folder = ""
        if verdict.dmarc == "fail" and self.config.dmarc_enforcement == "enforce":
            if verdict.dmarc_policy == "reject":
                self.metrics.refusals.inc("dmarc_reject")
                log.info("mail.dmarc.rejected", client=session.client, from_domain=verdict.from_domain,
                         spf=verdict.spf, dkim=verdict.dkim)
                return Reply(550, "5.7.1", f"Rejected by the DMARC policy of {verdict.from_domain}")
            if verdict.dmarc_policy == "quarantine":
                folder = "Junk"
        return verdict.header.encode("utf-8", errors="replace") + b"\r\n" + content, folder

    async def deliver_bounce(self, address: str, message: bytes) -> bool:
        """A bounce for a local sender goes straight into the sender's mailbox; False when the
        address is not a local mailbox (then it is queued)."""
        try:
            route = self.policy.route(address, 0)
            recipient = await self._find_mailbox(route.candidates)
        except SMTPRefusal:
            return False
        if recipient is None:
            return False
        now = self.context.clock()
        headers = f"Return-Path: <>\r\nDelivered-To: {recipient.mailbox.address}\r\n".encode()
        await self._write_and_notify([self.maildir(recipient.mailbox.address)], headers + message, now, "")
        return True

    # --- submission

    async def authenticate(self, login: bytes, password: bytes, client: str = "") -> Identity | None:
        """The subscriber whose login (a mailbox address or the username) and password these
        are; None also when ``client`` has failed too often lately (the password unchecked).
        Raises ``AuthUnavailable`` when the store cannot say: a wrong password then, the
        subscriber's mail client asked for a new one and the failure counted against the client."""
        if client and self.throttle.blocked(client, time.monotonic()):
            log.warning("mail.auth.throttled", client=client)
            return None
        try:
            text = login.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        store = self.context.store
        try:
            if "@" in text:
                recipient = await store.mail_recipient(mail_address(text))
                if recipient is None:
                    return None
                subscriber_id, username = recipient.mailbox.subscriber_id, recipient.username
            else:
                # The username as RADIUS takes it: never an id ("#4", or "4" when no subscriber
                # has that username), and an account number that is another's id is still its own.
                subscriber = await store.get_subscriber(text, login=True)
                subscriber_id, username = subscriber.id, subscriber.username
            credentials = await store.get_credentials(subscriber_id)
        except (NotFound, InvalidValue, ValueError):
            return None
        except StoreError as exc:
            log.error("mail.store.error", operation="authenticate", error=str(exc))
            raise AuthUnavailable(str(exc)) from None
        now = self.context.clock()
        verdict = self.passwords.check_fast(subscriber_id, credentials, password, now)
        if verdict is None and credentials.verifier is not None:
            async with self._password_checks:
                verdict = await asyncio.get_running_loop().run_in_executor(
                    None, PasswordChecker.check_slow, credentials.verifier, password)
            if verdict:
                self.passwords.remember(subscriber_id, credentials, password, now)
        return Identity(subscriber_id, username) if verdict else None

    async def check_sender(self, identity: Identity, address: str) -> set[str]:
        """MAIL FROM on submission: raises ``SMTPRefusal`` unless this subscriber may send as
        ``address`` now (read fresh: a suspension takes effect at the next message); returns the
        subscriber's own addresses."""
        store = self.context.store
        try:
            subscriber = await store.get_subscriber(identity.subscriber_id)
            owned = {m.address for m in await store.list_mailboxes(subscriber=identity.subscriber_id)}
            # An alias's owner sends as the alias (a business's staff as info@), as Postfix's
            # smtpd_sender_login_maps would list it.
            owned |= {a.address for a in await store.list_mail_aliases(subscriber=identity.subscriber_id)}
        except NotFound:
            raise SMTPRefusal(Reply(550, "5.7.1", "This account no longer exists"), "sender_suspended") from None
        except StoreError as exc:
            log.error("mail.store.error", operation="check_sender", error=str(exc))
            raise SMTPRefusal(Reply(451, "4.3.0", "Temporary lookup failure, try again later"),
                              "local_error") from None
        if subscriber.status is not SubscriberStatus.ACTIVE:
            raise SMTPRefusal(Reply(550, "5.7.1", f"Sending is {subscriber.status.value} for this account"),
                              "sender_suspended")
        self.policy.check_sender(address, owned, identity.username)
        self.sending.check(identity.subscriber_id, self.context.clock())
        return owned

    async def accept_submission_recipient(self, address: str, envelope: MailEnvelope) -> None:
        local, at, domain = address.rpartition("@")
        if domain.lower().removesuffix(".") in self.policy.domains or not at:
            await self.accept_recipient(address, envelope)
            return
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            raise SMTPRefusal(Reply(452, "4.5.3", "Too many recipients"), "too_many_recipients")
        try:
            hostname_text(domain)
        except ValueError:
            raise SMTPRefusal(Reply(553, "5.1.2", "Recipient address has no valid domain"), "bad_address") from None
        if not local:
            raise SMTPRefusal(Reply(553, "5.1.3", "Recipient address is not valid"), "bad_address")
        envelope.add_remote(address)

    async def _dkim_sign(self, content: bytes, envelope: MailEnvelope) -> bytes:
        """The content with a DKIM-Signature in front when ispd has a key for the From domain
        (else the envelope sender's)."""
        if not self.signing:
            return content
        domain = from_domain(content) or (envelope.mail_from or "").rpartition("@")[2].lower()
        key = self.signing.get(domain)
        if key is None:
            return content
        try:
            return await asyncio.get_running_loop().run_in_executor(self._signing_executor, _signed, content, key)
        except Exception as exc:  # dkimpy's parse errors: send unsigned rather than not at all
            log.error("mail.dkim.sign_failed", domain=domain, error=repr(exc))
            return content

    async def submit(self, session: SMTPSession, smtp_session: Session, envelope: MailEnvelope,
                     identity: Identity) -> Reply:
        """The end of DATA on submission: the rest queued, local copies written, then 250."""
        started = time.perf_counter()
        queue_id = secrets.token_hex(6).upper()
        original = envelope.original_content or b""
        looping = self._header_too_large(session, envelope, original)  # (first, as on the MX)
        if looping is not None:
            return looping
        content = strip_our_results(original, session.hostname)
        looping = self._looping(session, envelope, content)
        if looping is not None:
            return looping
        now = self.context.clock()
        try:
            self.sending.check(identity.subscriber_id, now)
            # The From header too (RFC 6409 §8.1 lets a submission server check it): ispd signs
            # for the domain, so a subscriber must not sign as someone else at it.
            self.policy.check_author(from_addresses(content), envelope.owned, identity.username,
                                     unreadable_from(content))
        except SMTPRefusal as refusal:
            self.metrics.refusals.inc(refusal.reason)
            self.metrics.messages.inc("refused")
            return refusal.reply
        content = _completed(content, session.hostname, now, queue_id)
        content = await self._dkim_sign(content, envelope)
        # The queue first: should a local copy then fail, its recipient bounces (the 250 stands),
        # so a retry by the sender can never send the queued part twice.
        if envelope.remote:
            received = trace_headers(
                return_path=None, helo=smtp_session.host_name or "", client_ip=session.client,
                server_name=session.hostname, protocol=self._protocol(session, envelope), queue_id=queue_id,
                # The one recipient the client gave, as given: with an alias among them, the
                # first of its forwards would tell the others who else it goes to.
                recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None, now=now)
            try:
                await self.queue.enqueue(envelope.mail_from or "", envelope.remote, received + content,
                                         subscriber_id=identity.subscriber_id, queue_id=queue_id)
            except (OSError, StoreError) as exc:
                log.error("mail.queue.enqueue_failed", queue_id=queue_id, error=str(exc))
                self.metrics.refusals.inc("local_error")
                self.metrics.messages.inc("refused")
                return Reply(451, "4.3.0", "Could not queue the message, try again later")
        refused = await self._deliver_locally(session, smtp_session, envelope, queue_id, content, now)
        if refused is not None:
            self.metrics.messages.inc("refused")
            return refused
        self.sending.record(identity.subscriber_id, now)
        self.metrics.messages.inc("submitted")
        self.metrics.submission_latency.observe(time.perf_counter() - started)
        log.info("mail.submitted", queue_id=queue_id, username=identity.username, client=session.client,
                 sender=envelope.mail_from, local=list(envelope.mailboxes), queued=list(envelope.remote),
                 size=len(content))
        return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def _signed(content: bytes, key: SigningKey) -> bytes:
    """``content`` signed as it will be sent: the queue's client makes a bare CR a line end,
    and a signature over the CR failed at every receiver (under DMARC p=reject, the mail was
    refused). The local copies get the same text, so every copy's signature holds."""
    content = as_sent(content)
    return sign(content, key) + content


def _bounced(reply: Reply) -> Outcome:
    """What a local recipient refused under a 250 (a full mailbox, one that could not be
    written) gets in its bounce: for good (RFC 3464 §2.3.4: a failed action has a 5.x.x
    status, whatever temporary reply it would have had on its own), as ispd's own finding."""
    status = "5" + reply.enhanced[1:] if reply.enhanced.startswith("4") else reply.enhanced
    return Outcome(Verdict.BOUNCED, f"local delivery: {reply.text.removesuffix(', try again later')}", status)


def _completed(content: bytes, hostname: str, now: float, queue_id: str) -> bytes:
    """A submitted message with the Date and Message-ID RFC 5322 §3.6 asks for, when the client
    left them out (RFC 6409 §8.2, §8.3 let the submission server add them; scripts and scanners
    often do): before the DKIM signature, which covers them."""
    present = header_names(content)
    added = b""
    if "date" not in present:
        added += f"Date: {formatdate(now, localtime=True)}\r\n".encode("ascii")  # a numeric zone (§4.3)
    if "message-id" not in present:
        added += f"Message-ID: <{queue_id}.{secrets.token_hex(8)}@{hostname}>\r\n".encode("ascii", "replace")
    return added + content
