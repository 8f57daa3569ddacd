"""An IMAP session over the Maildir store (RFC 3501, with IMAP4rev2's habits): the subset a mail
client needs to read, flag, search, append and delete mail, IDLE included. What is not done yet
is refused plainly (BAD for what does not parse, NO for commands not implemented) and is not
announced in CAPABILITY: BINARY, SETQUOTA (quotas are the store's).

States (RFC 3501 §3): not authenticated -> (LOGIN, AUTHENTICATE) authenticated -> (SELECT,
EXAMINE) selected -> (CLOSE, UNSELECT) authenticated; LOGOUT from any. LOGIN and AUTHENTICATE
only over TLS (LOGINDISABLED before STARTTLS on 143; 993 is TLS from the first byte).

A selected folder is a snapshot of its index (``FolderIndex.sync``); sequence numbers are
positions in it. It is refreshed at NOOP, CHECK, IDLE and after EXPUNGE and APPEND: messages
gone are announced with EXPUNGE (highest first, so numbers stay right), new ones with EXISTS,
changed flags with FETCH. Never during FETCH, STORE or SEARCH (RFC 3501 §7.4.1). A delivery
into a folder an IDLE session watches wakes it at once.

CONDSTORE and QRESYNC (RFC 7162) ride on the index's mod-sequences: each message's MODSEQ, the
folder's HIGHESTMODSEQ, and the modseq of its last expunge. The index keeps no list of expunged
UIDs, so VANISHED (EARLIER) names every UID the client says it knows (or 1 up to UIDNEXT) that
is not there, and only when an expunge happened after the client's modseq; clients drop the
UIDs they never had. ``Selected.highest_modseq`` is the modseq up to which this session has
told its client everything: a MODSEQ reported above it (a STORE's, while another session's
change waits to be told) comes with an ``OK [HIGHESTMODSEQ]`` of that lower value, so that a
client that loses the connection then still asks for what it missed (RFC 7162 §3.2).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import codecs
import contextlib
import dataclasses
import email
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import errno
import re
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ispd.logs import get_logger
from ispd.mail import mailindex
from ispd.mail.engine import AuthUnavailable, CommandPace, LoginRefused, PlainRefused, plain_login
from ispd.mail.imap import mime
from ispd.mail.imap.framing import Command as Framed
from ispd.mail.imap.framing import CommandFramer, Continue, TooLong
from ispd.mail.imap.parser import Command, FetchItem, ParseError, QResync, SearchKey, SequenceSet, parse
from ispd.mail.imap.response import (
    astring,
    decode_mailbox_name,
    flag_list,
    flags_of,
    header_fields,
    internal_date,
    letters_of,
    nstring,
    split_message,
)
from ispd.mail.maildir import SPECIAL_FOLDERS, Maildir, with_crlf
from ispd.mail.mailindex import FolderIndex, FolderState, IndexedMessage

if TYPE_CHECKING:
    from ispd.mail.service import MailService

log = get_logger("ispd.mail.imap")
MAX_LINE = 64 * 1024
# A literal before login carries a user name or a password: anything larger is an attempt to
# make the server hold it (max_message_bytes for each of max_connections unknown clients).
MAX_LITERAL_BEFORE_LOGIN = 8 * 1024
MAX_PIPELINED = 100  # commands read ahead of the one being answered
SEARCH_BATCH = 64  # messages SEARCH reads per trip to the file threads
# FETCH reads the messages it sends about this many bytes at a time, and reads more only once the
# client has taken what was sent (the transport's buffer below its high-water mark): a FETCH 1:*
# BODY[] of a 2 GB mailbox, by a client that reads slowly or not at all, held it all in memory.
FETCH_BATCH_BYTES = 4 * 1024 * 1024
FOLDER_DELIMITER = b"."
# A session not logged in yet is closed this long after it connected (RFC 9051 §5.4 allows a
# shorter timer before authentication; Dovecot's is 3 minutes from the connection, whatever the
# client sends). With the 30 minutes of the autologout, silent connections held their places
# under the connection limits, which SMTP shares, that long: 500 of them, from 25 addresses, had
# the MX answer everyone 421; and while each byte started the 3 minutes over, a client that
# trickled a literal (a byte every 2 s) held its places for good without ever logging in.
PREAUTH_AUTOLOGOUT_SECONDS = 180.0
# An idling client hears "* OK Still here" this often, as from Dovecot (imap_idle_notify_interval):
# a silent connection loses its mapping in NATs and firewalls (5 minutes in some carrier-grade
# NATs), and the client stops hearing of new mail until it next re-IDLEs, 29 minutes on.
IDLE_KEEPALIVE_SECONDS = 120.0


class InvalidSequence(Exception):
    """A message sequence number the selected mailbox does not have."""


class ExpungeIssued(Exception):
    """A message a COPY or MOVE was to copy is gone: another session expunged it."""


@dataclass(slots=True)
class Selected:
    name: bytes  # as the client named it
    folder: str  # Maildir folder ("" the INBOX)
    index: FolderIndex
    readonly: bool
    uidvalidity: int = 0
    uidnext: int = 1
    messages: list[IndexedMessage] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)  # the folder's, as last told (FLAGS)
    highest_modseq: int = 1  # everything up to this modseq has been told
    expunged_modseq: int = 0  # the folder's last expunge, as of the last time it was told
    # Messages a sync of this session took from new/ (\Recent to this session, RFC 3501 §2.3.2)
    # that it has not told the client of yet: a sync for COPY or EXPUNGE must not use them up.
    recent_untold: set[int] = field(default_factory=set)

    def synced(self) -> FolderState:
        """The folder's index synced (in a worker thread), what it took from new/ kept for the
        next refresh."""
        state = self.index.sync()
        self.recent_untold.update(m.uid for m in state.messages if m.recent)
        return state


class IMAPSession(asyncio.Protocol):
    def __init__(self, service: MailService, listener: str) -> None:
        self.service = service
        self.listener = listener
        self.tls = listener == "imaps"
        self.framer = CommandFramer(max_line=MAX_LINE, max_literal=MAX_LITERAL_BEFORE_LOGIN)
        self.transport: Any = None  # an asyncio or uvloop stream transport
        self.state = "not-authenticated"
        self.maildir: Maildir | None = None
        self.username = ""
        self.address = ""
        self.selected: Selected | None = None
        self.client = ""
        self._queue: asyncio.Queue[Framed | TooLong | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()
        self._failures = 0
        self.admitted = False
        self._autologout: asyncio.TimerHandle | None = None
        self._connected_at = 0.0  # (the loop's clock) when the time to log in started
        self._paused = False
        self._tag_of_current = b""  # the command being answered, for the metrics
        self.condstore = False  # MODSEQ in every FETCH (RFC 7162 §3.1)
        self._pace = CommandPace(service.config.imap_commands_per_second, 0.0)
        self._modified: list[int] = []  # the last conditional STORE's refusals, by sequence number
        self.qresync = False  # VANISHED instead of EXPUNGE (RFC 7162 §3.2.10)
        self._command_of_current = "other"
        self._writable = asyncio.Event()  # cleared while the transport's buffer is full
        self._writable.set()

    # --- transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport subclasses
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]) if peer else ""
        # Caps of the same size as SMTP's, and its own: connections in total and per client address.
        self.admitted = self.service.imap_gate.admit(self.client)
        if not self.admitted:
            self.send(b"* BYE too many connections, try again later")
            self.close()
            return
        self.service.imap_sessions.add(self)
        greeting = b"* OK [CAPABILITY " + self.capabilities() + b"] ispd IMAP ready"
        self.send(greeting)
        self._connected_at = asyncio.get_running_loop().time()
        self._touch()
        self._worker = asyncio.get_running_loop().create_task(self._run())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.admitted:
            self.admitted = False
            self.service.imap_gate.release(self.client)
        self.service.imap_sessions.discard(self)
        if self._autologout is not None:
            self._autologout.cancel()
        self._queue.put_nowait(None)
        self.transport = None
        self._writable.set()  # a FETCH waiting for the client to read ends

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _touch(self) -> None:
        """Some sign of life from the client: the autologout starts over; before login, never
        past PREAUTH_AUTOLOGOUT_SECONDS from the connection."""
        if self._autologout is not None:
            self._autologout.cancel()
        loop = asyncio.get_running_loop()
        seconds = self.service.config.imap_autologout_seconds
        if self.state == "not-authenticated":
            seconds = min(seconds, self._connected_at + PREAUTH_AUTOLOGOUT_SECONDS - loop.time())
        self._autologout = loop.call_later(max(seconds, 0.0), self._logout_idle)

    def _logout_idle(self) -> None:
        self.send(b"* BYE autologout; idle for too long")
        self.close()

    def data_received(self, data: bytes) -> None:
        self._touch()
        for event in self.framer.feed(data):
            if isinstance(event, Continue):
                self.send(b"+ go ahead")
            else:
                self._queue.put_nowait(event)
        # Commands are answered one at a time: a client that pipelines faster than that is
        # read no further until the backlog is worked off (memory stays bounded).
        if self._queue.qsize() > MAX_PIPELINED and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def send(self, line: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(line + b"\r\n")
            self.service.metrics.imap_bytes_sent.inc(amount=len(line) + 2)
            if self._tag_of_current and line.startswith(self._tag_of_current):
                result = line[len(self._tag_of_current):len(self._tag_of_current) + 3].strip().lower()
                if result in (b"ok", b"no", b"bad"):
                    self.service.metrics.imap_commands.inc(self._command_of_current, result.decode())

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def shut_down(self) -> None:
        """The daemon is stopping: an untagged BYE (RFC 9051 §7.1.5), then the connection closes."""
        self.send(b"* BYE ispd is shutting down, try again later")
        self.close()

    async def _run(self) -> None:
        while True:
            if self.transport is None:
                # The connection is gone. Its end marker on the queue may already have been
                # taken by a command reading the client's next line (IDLE's DONE, AUTHENTICATE's
                # response), so waiting for the next command here would wait forever, keeping
                # the session and its selected folder (RFC 2177: a dropped IDLE ends the session).
                return
            if self._paused and self._queue.qsize() < MAX_PIPELINED // 2:
                self._paused = False
                self.transport.resume_reading()
            event = await self._queue.get()
            if event is None or self.transport is None:
                return
            if isinstance(event, TooLong):
                tag = event.tag.decode("ascii", "replace") or "*"
                self.send(f"{tag} BAD {'literal' if event.what == 'literal' else 'line'} too long".encode())
                continue
            wait = self._pace.delay(asyncio.get_running_loop().time())
            if wait > 0:
                self.service.metrics.imap_throttled.inc()
                await asyncio.sleep(wait)
            try:
                command = parse(event)
            except ParseError as exc:
                tag = getattr(exc, "tag", "*")
                self._tag_of_current = b""
                self.send(f"{tag} BAD {exc}".encode())
                self.service.metrics.imap_commands.inc("other", "bad")
                continue
            try:
                await self._dispatch(command)
            except Exception as exc:  # a bug must cost one command, not the session or the service
                if self.selected is not None and not await self._blocking(self.selected.index.path.is_dir):
                    # The selected folder is gone: another session DELETEd it, or the mailbox was
                    # deleted (its Maildir set aside). Every command would fail from now on, so
                    # end the session as Dovecot does; the client logs in again and sees what is.
                    self.send(b"* BYE Selected mailbox was deleted, have to disconnect.")
                    self.close()
                    return
                if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
                    self._storage_failed(command, exc)  # the Maildir's disk: full, read-only, unreadable
                else:
                    log.error("mail.imap.command_failed", command=command.name, error=repr(exc))
                    self.send(f"{command.tag} NO [SERVERBUG] internal error".encode())
            if self.state == "logout":
                self.close()
                return

    # --- dispatch

    def _storage_failed(self, command: Command, exc: OSError) -> None:
        """A command the Maildir's disk refused: a NO that says why (Dovecot's answers), not
        SERVERBUG, and the mailbox and the cause in the log for the operator."""
        log.error("mail.imap.storage_failed", command=command.name,
                  mailbox=str(self.maildir.path) if self.maildir is not None else None, error=str(exc))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self.send(f"{command.tag} NO [OVERQUOTA] Not enough disk space".encode())
        else:
            self.send(f"{command.tag} NO [UNAVAILABLE] the mailbox is unavailable "
                      f"({exc.strerror or 'input/output error'}), try again later".encode())

    def capabilities(self) -> bytes:
        caps = [b"IMAP4rev1", b"LITERAL+", b"IDLE", b"NAMESPACE", b"ID", b"ENABLE", b"UNSELECT", b"SPECIAL-USE",
                b"UIDPLUS", b"MOVE", b"QUOTA", b"QUOTA=RES-STORAGE", b"CONDSTORE", b"QRESYNC"]
        if self.state == "not-authenticated":
            if self.tls:
                caps.append(b"AUTH=PLAIN")
            else:
                caps += [b"STARTTLS", b"LOGINDISABLED"]
        return b" ".join(caps)

    async def _dispatch(self, command: Command) -> None:
        name = command.name
        self._tag_of_current, self._command_of_current = command.tag.encode() + b" ", _metric_name(name)
        # The UID forms share their command's handler, which looks at ``command.name``.
        handler: Callable[[Command], Awaitable[None]] | None = getattr(
            self, "cmd_" + name.removeprefix("UID ").lower(), None)
        allowed = _STATES.get(name.removeprefix("UID "))
        if handler is None or allowed is None:
            self.send(f"{command.tag} NO [CANNOT] {name} is not implemented yet".encode())
            return
        if self.state not in allowed:
            self.send(f"{command.tag} BAD {name} is not allowed {self.state.replace('-', ' ')}".encode())
            return
        try:
            await handler(command)
        except InvalidSequence as exc:
            self.send(f"{command.tag} BAD {exc}".encode())

    async def _blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.service.mail_executor, _without_stop_iteration,
                                                                function, *args)

    # --- any state

    async def cmd_capability(self, command: Command) -> None:
        self.send(b"* CAPABILITY " + self.capabilities())
        self.send(f"{command.tag} OK CAPABILITY completed".encode())

    async def cmd_noop(self, command: Command) -> None:
        await self._refresh()
        self.send(f"{command.tag} OK NOOP completed".encode())

    cmd_check = cmd_noop

    async def cmd_logout(self, command: Command) -> None:
        self.send(b"* BYE logging out")
        self.send(f"{command.tag} OK LOGOUT completed".encode())
        self.state = "logout"

    async def cmd_id(self, command: Command) -> None:
        self.send(b'* ID ("name" "ispd")')
        self.send(f"{command.tag} OK ID completed".encode())

    async def cmd_enable(self, command: Command) -> None:
        enabled = []
        for capability in command.args["capabilities"]:
            if capability in ("CONDSTORE", "QRESYNC"):  # QRESYNC implies CONDSTORE
                self.condstore = True
                self.qresync = self.qresync or capability == "QRESYNC"
                enabled.append(capability.encode())
        self.send(b" ".join([b"* ENABLED", *enabled]))
        self.send(f"{command.tag} OK ENABLE completed".encode())

    # --- not authenticated

    async def cmd_starttls(self, command: Command) -> None:
        context = self.service.tls_context
        if self.tls or context is None or self.transport is None:
            self.send(f"{command.tag} BAD TLS is already on or not available".encode())
            return
        self.send(f"{command.tag} OK begin TLS negotiation now".encode())
        # What came in the clear behind STARTTLS is dropped, commands already framed too: run
        # inside TLS, it would let a man in the middle add commands to the protected session
        # (STARTTLS command injection, CVE-2011-0411's kind).
        self.framer = CommandFramer(max_line=MAX_LINE, max_literal=MAX_LITERAL_BEFORE_LOGIN)
        while not self._queue.empty():
            if self._queue.get_nowait() is None:  # the connection's end: that stays
                self._queue.put_nowait(None)
                break
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(self.transport, self, context, server_side=True,
                                                  ssl_handshake_timeout=15)
        except (OSError, TimeoutError, ConnectionError) as exc:
            self.service.starttls_failed("mail.imap.tls_failed", exc, self.client)
            self.close()
            # The TLS layer owns the connection now and tells this session nothing of its end
            # (a reset before the handshake): the session ends here, its slot given back (from a
            # review: 300 such drops locked the client's address out of IMAP and SMTP). Once
            # more is harmless where the loop does tell.
            self.connection_lost(exc)
            return
        self.tls = True

    async def cmd_login(self, command: Command) -> None:
        if not self.tls:
            self.send(f"{command.tag} NO [PRIVACYREQUIRED] LOGIN only after STARTTLS".encode())
            return
        await self._login(command.tag, command.args["user"], command.args["password"])

    async def cmd_authenticate(self, command: Command) -> None:
        if not self.tls:
            self.send(f"{command.tag} NO [PRIVACYREQUIRED] AUTHENTICATE only after STARTTLS".encode())
            return
        if command.args["mechanism"] != "PLAIN":
            self.send(f"{command.tag} NO [CANNOT] only AUTHENTICATE PLAIN".encode())
            return
        initial = command.args["initial"]
        if initial is None:
            self.send(b"+ ")
            event = await self._queue.get()
            if not isinstance(event, Framed) or len(event.pieces) != 1:
                self.send(f"{command.tag} BAD expected the PLAIN response".encode())
                return
            initial = event.pieces[0]
        if initial == b"*":
            self.send(f"{command.tag} BAD AUTHENTICATE cancelled".encode())
            return
        try:
            login, password = plain_login(base64.b64decode(initial, validate=True))
        except (ValueError, PlainRefused) as error:  # (bad base64, or not a PLAIN response)
            acting = isinstance(error, PlainRefused) and error.acting_as_another
            refusal = ("NO [AUTHORIZATIONFAILED] acting as another user is not allowed" if acting
                       else "BAD bad PLAIN response")
            self.send(f"{command.tag} {refusal}".encode())
            return
        await self._login(command.tag, login, password)

    async def _login(self, tag: str, user: bytes, password: bytes) -> None:
        try:
            found = await self.service.imap_login(user, password, self.client)
        except LoginRefused as refused:
            self.send(f"{tag} NO [CONTACTADMIN] {refused}".encode())
            return
        except AuthUnavailable:  # (RFC 5530; said in the log by authenticate)
            self.send(f"{tag} NO [UNAVAILABLE] temporary authentication failure, try again later".encode())
            return
        if found is None:
            self._failures += 1
            log.warning("mail.imap.auth_failed", client=self.client, login=user.decode("utf-8", "replace")[:100])
            await self.service.auth_failed(self.client, user)
            self.send(f"{tag} NO [AUTHENTICATIONFAILED] authentication failed".encode())
            if self._failures >= self.service.config.max_auth_failures:
                self.send(b"* BYE too many authentication failures")
                self.close()
            return
        username, address, maildir = found
        if self.service.imap_sessions_of(maildir.path) >= self.service.config.max_imap_sessions_per_mailbox:
            self.send(f"{tag} NO [LIMIT] too many sessions for this mailbox".encode())
            return
        self.service.metrics.auth.inc("success")
        self.service.auth_succeeded(user)
        self.username, self.address, self.maildir = username, address, maildir
        self.state = "authenticated"
        self._touch()  # (now the 30 minutes)
        self.framer.max_literal = self.service.config.max_message_bytes  # APPEND may now bring a message
        await self._blocking(self._ensure_maildir)
        self.send(b"%s OK [CAPABILITY %s] logged in" % (tag.encode(), self.capabilities()))

    def _ensure_maildir(self) -> None:
        assert self.maildir is not None
        if not self.maildir.exists():
            self.maildir.create()

    # --- authenticated

    @staticmethod
    def _folder_name(name: bytes) -> str | None:
        """The Maildir++ folder a mailbox name would be ("" the INBOX), or None when the name
        cannot be one. Names are kept in modified UTF-7, as clients write them and as Dovecot
        keeps them on disk; 8-bit names (UTF-8 without UTF8=ACCEPT) and broken modified UTF-7
        are refused."""
        if name.upper() == b"INBOX":
            return ""
        if name[:6].upper() == b"INBOX.":  # "inbox.x" is below the INBOX too (RFC 3501 §5.1), as Dovecot
            name = b"INBOX" + name[5:]
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            return None
        if (not text or text.startswith(".") or text.endswith(".") or ".." in text or "/" in text
                or any(c < " " or c == "\x7f" for c in text) or len(text) > 200):
            return None
        try:
            decode_mailbox_name(text)
        except ValueError:
            return None
        return text

    def _folder(self, name: bytes) -> str | None:
        """The existing Maildir folder a mailbox name means, or None."""
        text = self._folder_name(name)
        if text is None:
            return None
        assert self.maildir is not None
        if (self.maildir.folder_path(text) / "cur").is_dir():
            return text
        if not text.startswith("INBOX."):
            return None
        # A folder made as "inbox.x" before that name meant INBOX.x is still reached by it - by
        # INBOX.x too, however it is spelt, or CREATE would make INBOX.x beside it, which then
        # hides it from every name.
        spelt = name.decode("ascii", "replace")
        if spelt != text and (self.maildir.folder_path(spelt) / "cur").is_dir():
            return spelt
        return next((f for f in self.maildir.folders() if f[:6].upper() == "INBOX." and f[6:] == text[6:]), None)

    async def cmd_namespace(self, command: Command) -> None:
        self.send(b'* NAMESPACE (("" ".")) NIL NIL')
        self.send(f"{command.tag} OK NAMESPACE completed".encode())

    async def cmd_list(self, command: Command) -> None:
        assert self.maildir is not None
        pattern = command.args["pattern"]
        if pattern == b"":
            self.send(b'* LIST (\\Noselect) "." ""')
            self.send(f"{command.tag} OK LIST completed".encode())
            return
        folders = ["", *(await self._blocking(self.maildir.folders))]
        subscribed_only = command.name == "LSUB"
        selection, returns = command.args["selection"], command.args["return"]
        names = await self._blocking(self.maildir.subscriptions)
        subscribed = {"" if n.upper() == "INBOX" else n for n in names} | {""}  # Dovecot writes INBOX there
        # A subscription outlives its folder (RFC 3501 §6.3.9: the server does not drop it):
        # LSUB names it still, \Noselect, LIST (SUBSCRIBED) marks it \NonExistent (RFC 5258 §3.1), as Dovecot.
        gone = subscribed - set(folders)
        listed = folders
        if subscribed_only or b"SUBSCRIBED" in selection:
            listed = [f for f in folders if f in subscribed] + sorted(gone)
        # RFC 6154 §2: the SPECIAL-USE selection option lists only the special-use folders.
        if b"SPECIAL-USE" in selection:
            listed = [f for f in listed if f in SPECIAL_FOLDERS and f not in gone]
        # Levels of the hierarchy without a folder of their own (A below A.B.C, or a parent
        # deleted before its children) are named too, \Noselect, so that a client walking the
        # tree with "%" reaches what is below them (RFC 3501 §6.3.8, and §6.3.9 for LSUB); not
        # when the client selected folders by a property those levels do not have.
        present = set(listed)
        implied = {f.rsplit(".", i)[0] for f in listed if f for i in range(1, f.count(".") + 1)} - present
        implied = {f for f in implied if f.upper() != "INBOX" and not selection}  # INBOX.x lies below the INBOX ("")
        for folder in sorted([*listed, *implied], key=lambda f: (f != "", f)):
            name = folder.encode() if folder else b"INBOX"
            if not _pattern_matches(command.args["reference"] + pattern, name):
                continue
            if folder:
                has_children = any(f.startswith(folder + ".") for f in folders)
            else:  # the INBOX, with INBOX.x below it
                has_children = any(f[:6].upper() == "INBOX." for f in folders)
            attributes = [b"\\HasChildren" if has_children else b"\\HasNoChildren"]
            if folder in implied:
                attributes = [b"\\Noselect"] + (attributes if not subscribed_only else [])
            elif folder in gone:
                # LSUB has no \NonExistent: Dovecot says \Noselect there (RFC 3501 §6.3.9), not ()
                attributes = [b"\\Noselect"] if subscribed_only else [b"\\NonExistent"]
            elif subscribed_only:
                attributes = []
            elif folder.split(".")[0] in SPECIAL_FOLDERS and "." not in folder:
                attributes.append(b"\\" + folder.encode())
            if not subscribed_only and folder in subscribed and b"SUBSCRIBED" in (*selection, *returns):
                attributes.append(b"\\Subscribed")  # RFC 5258 §3.1, §3.2
            self.send(b'* %s (%s) "." %s' % (command.name.encode(), b" ".join(attributes), astring(name)))
        self.send(f"{command.tag} OK {command.name} completed".encode())

    cmd_lsub = cmd_list

    async def cmd_status(self, command: Command) -> None:
        folder = self._folder(command.args["mailbox"])
        if folder is None:
            self.send(f"{command.tag} NO [NONEXISTENT] no such mailbox".encode())
            return
        assert self.maildir is not None
        state = await self._blocking(FolderIndex(self.maildir.folder_path(folder)).sync)
        values = {"MESSAGES": len(state.messages), "RECENT": 0, "UIDNEXT": state.next_uid,
                  "UIDVALIDITY": state.uidvalidity, "UNSEEN": sum(1 for m in state.messages if "S" not in m.flags),
                  "SIZE": sum(m.virtual_size for m in state.messages), "HIGHESTMODSEQ": state.highest_modseq}
        if "HIGHESTMODSEQ" in command.args["items"]:
            self.condstore = True  # a CONDSTORE-enabling command (RFC 7162 §3.1)
        items = b" ".join(b"%s %d" % (item.encode(), values[item]) for item in command.args["items"])
        self.send(b"* STATUS %s (%s)" % (astring(command.args["mailbox"]), items))
        self.send(f"{command.tag} OK STATUS completed".encode())

    async def cmd_select(self, command: Command) -> None:
        resync: QResync | None = command.args["qresync"]
        if resync is not None and not self.qresync:
            self.send(f"{command.tag} BAD QRESYNC is not enabled".encode())
            return
        if self.selected is not None and self.qresync:
            self.send(b"* OK [CLOSED] previous mailbox closed")
        self.selected = None
        self.state = "authenticated"
        self.condstore = self.condstore or command.args["condstore"]
        folder = self._folder(command.args["mailbox"])
        if folder is None:
            self.send(f"{command.tag} NO [NONEXISTENT] no such mailbox".encode())
            return
        assert self.maildir is not None
        readonly = command.name == "EXAMINE"
        selected = Selected(command.args["mailbox"], folder, FolderIndex(self.maildir.folder_path(folder)), readonly)
        state = await self._blocking(selected.index.sync)
        selected.keywords = list(state.keywords)
        selected.uidvalidity, selected.uidnext, selected.messages = state.uidvalidity, state.next_uid, state.messages
        selected.highest_modseq, selected.expunged_modseq = state.highest_modseq, state.expunged_modseq
        self.selected, self.state = selected, "selected"
        recent = sum(1 for m in state.messages if m.recent)
        unseen = next((i for i, m in enumerate(state.messages, 1) if "S" not in m.flags), None)
        self.send(b"* FLAGS " + flag_list(selected.keywords))
        self.send(b"* %d EXISTS" % len(state.messages))
        self.send(b"* %d RECENT" % recent)
        if unseen is not None:
            self.send(b"* OK [UNSEEN %d] first unseen" % unseen)
        self.send(b"* OK [UIDVALIDITY %d] UIDs valid" % state.uidvalidity)
        self.send(b"* OK [UIDNEXT %d] predicted next UID" % state.next_uid)
        self.send(b"* OK [PERMANENTFLAGS %s] flags permitted" % (
            b"()" if readonly else flag_list(selected.keywords, any_keyword=True)))
        self.send(b"* OK [HIGHESTMODSEQ %d] highest" % state.highest_modseq)
        if resync is not None and resync.uidvalidity == state.uidvalidity:
            self._resynchronise(resync)
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        self.send(f"{command.tag} OK [{mode}] {command.name} completed".encode())

    cmd_examine = cmd_select

    def _flags(self, letters: str, recent: bool = False) -> bytes:
        return flags_of(letters, recent, self.selected.keywords if self.selected is not None else ())

    async def _letters(self, index: FolderIndex, flags: tuple[bytes, ...], *, create: bool = True) -> str | None:
        """Maildir letters for flags a client wrote, keywords included (added to the folder's
        table when ``create``); None when the folder has no room for another keyword."""
        letters, keywords = letters_of(flags)
        if not keywords:
            return letters
        try:
            added: str = await self._blocking(partial(index.keyword_letters, keywords, create=create))
        except mailindex.TooManyKeywords:
            return None
        return "".join(sorted(letters + added))

    def _announce_keywords(self, keywords: list[str]) -> None:
        """A keyword new to the selected folder (this session's or another's): FLAGS again."""
        selected = self.selected
        assert selected is not None
        if keywords != selected.keywords:
            selected.keywords = keywords
            self.send(b"* FLAGS " + flag_list(keywords))
            if not selected.readonly:
                self.send(b"* OK [PERMANENTFLAGS %s] flags permitted" % flag_list(keywords, any_keyword=True))

    def _resynchronise(self, resync: QResync) -> None:
        """QRESYNC's answer at SELECT (RFC 7162 §3.2.5): what vanished and what changed since
        the client's modseq."""
        selected = self.selected
        assert selected is not None
        if resync.modseq < selected.expunged_modseq:
            known = resync.known_uids or SequenceSet(((1, None),))
            gone = vanished(known, [m.uid for m in selected.messages], selected.uidnext - 1)
            if gone:
                self.send(b"* VANISHED (EARLIER) " + gone)
        for seq, message in enumerate(selected.messages, 1):
            if message.modseq > resync.modseq:
                self.send(b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))" % (seq, message.uid, self._flags(message.flags),
                                                                         message.modseq))

    async def cmd_append(self, command: Command) -> None:
        folder = self._folder(command.args["mailbox"])
        if folder is None:
            self.send(f"{command.tag} NO [TRYCREATE] no such mailbox".encode())
            return
        assert self.maildir is not None
        maildir = self.maildir
        letters = await self._letters(FolderIndex(maildir.folder_path(folder)), command.args["flags"])
        if letters is None:
            self.send(f"{command.tag} NO [LIMIT] no room for another keyword in that mailbox".encode())
            return
        message, received_at = command.args["message"], command.args["date"]
        if await self._over_quota(len(message)):
            self.send(f"{command.tag} NO [OVERQUOTA] the mailbox is full".encode())
            return

        def append() -> tuple[int, int]:
            delivered = maildir.deliver(message, folder=folder, received_at=received_at)
            try:
                mailindex.forget(maildir.folder_path(folder))
                index = FolderIndex(maildir.folder_path(folder))
                state = index.sync()
                added = next((m for m in state.messages if m.base.startswith(delivered.name)), None)
                if added is None:  # no room to give it a UID: it would wait in new/ (see mailindex)
                    raise OSError(errno.ENOSPC, "no room to index the appended message")
                if letters:
                    index.set_flags([added.uid], "=", letters)
            except BaseException:  # NO: the message is not there (the client appends it again)
                _take_back(maildir, folder, [delivered.name])
                raise
            return state.uidvalidity, added.uid

        uidvalidity, uid = await self._blocking(append)
        self.service.notify_imap(maildir.path, folder)
        if self.selected is not None and self.selected.folder == folder:
            await self._refresh()
        self.send(f"{command.tag} OK [APPENDUID {uidvalidity} {uid}] APPEND completed".encode())

    async def cmd_getquotaroot(self, command: Command) -> None:
        """RFC 9208: one quota root ("") for the whole mailbox, STORAGE in units of 1024 octets."""
        if self._folder(command.args["mailbox"]) is None:
            self.send(f"{command.tag} NO [NONEXISTENT] no such mailbox".encode())
            return
        self.send(b"* QUOTAROOT " + astring(command.args["mailbox"]) + b' ""')
        await self._send_quota()
        self.send(f"{command.tag} OK GETQUOTAROOT completed".encode())

    async def cmd_getquota(self, command: Command) -> None:
        if command.args["root"] != b"":
            self.send(f"{command.tag} NO [NONEXISTENT] no such quota root".encode())
            return
        await self._send_quota()
        self.send(f"{command.tag} OK GETQUOTA completed".encode())

    async def _over_quota(self, adding: int) -> bool:
        """Whether ``adding`` bytes would take the mailbox past its quota: RFC 9051 §7.1's
        OVERQUOTA for APPEND and COPY, the limit GETQUOTA reports and the MX keeps (452 4.2.2).
        Else a client could fill the disk past any quota (a folder copied into itself, again)."""
        assert self.maildir is not None
        used, limit = await self.service.quota(self.address, self.maildir)
        return limit is not None and used + adding > limit

    async def _send_quota(self) -> None:
        assert self.maildir is not None
        used, limit = await self.service.quota(self.address, self.maildir)
        if limit is not None:
            self.send(b'* QUOTA "" (STORAGE %d %d)' % ((used + 1023) // 1024, limit // 1024))
        else:
            self.send(b'* QUOTA "" ()')  # no limit: no resource to report

    async def cmd_subscribe(self, command: Command) -> None:
        folder = self._folder_name(command.args["mailbox"])
        if folder is None:
            self.send(f"{command.tag} NO [CANNOT] that mailbox name is not allowed".encode())
            return
        assert self.maildir is not None
        # RFC 3501 §6.3.6 lets the server check that the mailbox exists; Dovecot does, and a
        # subscription to a mistyped name would otherwise stay, in LSUB, as \NonExistent.
        existing = self._folder(command.args["mailbox"])
        if command.name == "SUBSCRIBE" and existing is None:
            self.send(f"{command.tag} NO [NONEXISTENT] no such mailbox".encode())
            return
        folder = folder if existing is None else existing  # a folder made as inbox.x keeps that name
        if folder:  # the INBOX is always subscribed
            await self._blocking(self.maildir.set_subscribed, folder, command.name == "SUBSCRIBE")
        spelt = command.args["mailbox"].decode("ascii", "replace")
        if command.name == "UNSUBSCRIBE" and existing is None and spelt not in (folder, "INBOX"):
            # A subscription kept as it was written ("inbox.x", by an older ispd), whose folder
            # is gone: LSUB names it so, and UNSUBSCRIBE by that name removes it.
            await self._blocking(self.maildir.set_subscribed, spelt, False)
        self.send(f"{command.tag} OK {command.name} completed".encode())

    cmd_unsubscribe = cmd_subscribe

    async def cmd_create(self, command: Command) -> None:
        folder = self._folder_name(command.args["mailbox"].rstrip(b"."))
        if not folder:
            self.send(f"{command.tag} NO [CANNOT] that mailbox name is not allowed".encode())
            return
        assert self.maildir is not None
        if self._folder(command.args["mailbox"].rstrip(b".")) is not None:  # one made as inbox.x too
            self.send(f"{command.tag} NO [ALREADYEXISTS] mailbox exists".encode())
            return
        try:
            await self._blocking(self.maildir.create_folder, folder)
        except FileExistsError:
            self.send(f"{command.tag} NO [ALREADYEXISTS] mailbox exists".encode())
            return
        self.send(f"{command.tag} OK CREATE completed".encode())

    async def cmd_delete(self, command: Command) -> None:
        folder = self._folder(command.args["mailbox"])
        if folder == "":  # RFC 9051 §6.3.4: deleting INBOX is an error
            self.send(f"{command.tag} NO [CANNOT] the INBOX cannot be deleted".encode())
            return
        if folder is None:
            self.send(f"{command.tag} NO [NONEXISTENT] no such mailbox".encode())
            return
        assert self.maildir is not None
        # Its subfolders stay (RFC 3501 §6.3.4); its name stays in LIST as \Noselect above them.
        if self.selected is not None and self.selected.folder == folder:
            self.selected, self.state = None, "authenticated"
        await self._blocking(self.maildir.delete_folder, folder)
        self.send(f"{command.tag} OK DELETE completed".encode())

    async def cmd_rename(self, command: Command) -> None:
        old = self._folder(command.args["old"])
        new = self._folder_name(command.args["new"])
        if old is None and self._folder_name(command.args["old"]):  # a good name, of no folder
            self.send(f"{command.tag} NO [NONEXISTENT] no such mailbox".encode())
            return
        if old is None or old == "" or not new:
            self.send(f"{command.tag} NO [CANNOT] cannot rename that (the INBOX, or a bad name)".encode())
            return
        assert self.maildir is not None
        if self._folder(command.args["new"]) is not None:
            self.send(f"{command.tag} NO [ALREADYEXISTS] mailbox exists".encode())
            return
        if new.startswith(old + "."):  # A.B to A.B.C: the folders below would move into themselves
            self.send(f"{command.tag} NO [CANNOT] cannot rename a mailbox under itself".encode())
            return
        await self._blocking(self.maildir.rename_folder, old, new)
        self.send(f"{command.tag} OK RENAME completed".encode())

    # --- selected

    async def cmd_copy(self, command: Command) -> None:
        """COPY, and MOVE (RFC 6851): copies keep their flags; COPYUID (RFC 4315) says where
        they went. MOVE then expunges the originals."""
        selected, maildir = self.selected, self.maildir
        assert selected is not None and maildir is not None
        move = command.name.endswith("MOVE")
        if move and selected.readonly:
            self.send(f"{command.tag} NO [READ-ONLY] mailbox selected read-only".encode())
            return
        target = self._folder(command.args["mailbox"])
        if target is None:
            self.send(f"{command.tag} NO [TRYCREATE] no such mailbox".encode())
            return
        numbers = self._numbers(command.args["set"], command.name.startswith("UID"))
        sources = [(seq, selected.messages[seq - 1]) for seq in numbers]
        # A MOVE takes as much room as it gives back: only a COPY can fill the mailbox.
        if not move and await self._over_quota(sum(message.size for _, message in sources)):
            self.send(f"{command.tag} NO [OVERQUOTA] the mailbox is full".encode())
            return
        source_cur = maildir.folder_path(selected.folder) / "cur"
        source_index = selected.index
        now: dict[int, IndexedMessage] = {}  # the source folder's messages by UID, as copy_all found them

        def copy() -> tuple[int, list[tuple[int, int]]]:
            names: list[tuple[IndexedMessage, str]] = []
            try:
                return copy_all(names)
            except BaseException:
                # RFC 3501 §6.4.7: a COPY that fails leaves the destination as it was; the
                # client's retry must not find the first part twice. (MOVE then removes nothing.)
                _take_back(maildir, target, [name for _, name in names])
                raise

        def read_current(message: IndexedMessage) -> tuple[IndexedMessage, bytes] | None:
            """The message as it is now, with its file's content; None once it is expunged.
            Another session may have renamed its file (a flag change) since this one last
            looked: it is looked up by UID, again if it is renamed between the look and the read."""
            for _ in range(3):
                current = now.get(message.uid)
                if current is None:
                    return None
                try:
                    return current, (source_cur / current.name).read_bytes()
                except FileNotFoundError:
                    now.clear()
                    now.update({m.uid: m for m in selected.synced().messages})
            return None

        def copy_all(names: list[tuple[IndexedMessage, str]]) -> tuple[int, list[tuple[int, int]]]:
            now.update({m.uid: m for m in selected.synced().messages})
            for _, message in sources:
                found = read_current(message)
                if found is None:  # expunged meanwhile: nothing is copied (RFC 3501 §6.4.7)
                    raise ExpungeIssued(message.uid)
                current, data = found
                names.append((current, maildir.deliver(data, folder=target, received_at=current.internal_date).name))
            mailindex.forget(maildir.folder_path(target))
            index = FolderIndex(maildir.folder_path(target))
            state = index.sync()
            by_base = {m.base.split(",U=")[0]: m for m in state.messages}
            pairs = []
            by_flags: dict[str, list[int]] = {}
            for message, name in names:
                added = by_base.get(name.split(",U=")[0])
                if added is None:  # no room to give it a UID (it would wait in new/, its flags lost)
                    raise OSError(errno.ENOSPC, "no room to index the copied messages")
                if message.flags:
                    by_flags.setdefault(message.flags, []).append(added.uid)
                pairs.append((message.uid, added.uid))
            # Keyword letters are the folder's own: translated by name into the target's.
            source_keywords = source_index.keywords() if any(f != f.upper() for f in by_flags) else []
            for flags, uids in by_flags.items():
                keyword_names = [source_keywords[ord(c) - 97] for c in flags
                                 if c in mailindex.KEYWORD_LETTERS and ord(c) - 97 < len(source_keywords)]
                try:
                    keywords = index.keyword_letters(keyword_names, create=True) if keyword_names else ""
                except mailindex.TooManyKeywords:  # the target's table is full: the known ones only
                    keywords = index.keyword_letters(keyword_names, create=False)
                index.set_flags(uids, "=", "".join(c for c in flags if c in mailindex.MAILDIR_FLAGS) + keywords)
            return state.uidvalidity, pairs

        # One MOVE at a time out of a folder: another session's MOVE of the same messages then
        # finds them gone (copy_all looks again) rather than copying them a second time.
        async with _moving_out_of(source_cur) if move else contextlib.nullcontext():
            try:
                uidvalidity, pairs = await self._blocking(copy)
            except ExpungeIssued:
                # An OK had the client believe copied (or moved) what was not; and the rest is
                # not copied either, so that its retry after a NOOP brings no second copy. As
                # from Dovecot, with RFC 5530's code.
                self.send(f"{command.tag} NO [EXPUNGEISSUED] some of the requested messages no longer exist".encode())
                return
            self.service.notify_imap(maildir.path, target)
            code = b""
            if pairs:
                code = b"[COPYUID %d %s %s] " % (uidvalidity, b",".join(b"%d" % p[0] for p in pairs),
                                                 b",".join(b"%d" % p[1] for p in pairs))
            if not move:
                self.send(b"%s OK %s%s completed" % (command.tag.encode(), code, command.name.encode()))
                return
            self.send(b"* OK " + code + b"moved")
            # Only what was copied is removed: a message not found (expunged meanwhile) is left
            # to the expunge that took it, never removed uncopied.
            copied = {source_uid for source_uid, _ in pairs}
            await self._remove([(seq, message) for seq, message in sources if message.uid in copied],
                               announce=True)
        if self.condstore:
            await self._refresh()
            self.send(b"* OK [HIGHESTMODSEQ %d] highest" % selected.highest_modseq)
        self.send(f"{command.tag} OK {command.name} completed".encode())

    cmd_move = cmd_copy

    async def cmd_close(self, command: Command) -> None:
        if self.selected is not None and not self.selected.readonly:
            await self._expunge(announce=False)
        self.selected, self.state = None, "authenticated"
        self.send(f"{command.tag} OK CLOSE completed".encode())

    async def cmd_unselect(self, command: Command) -> None:
        self.selected, self.state = None, "authenticated"
        self.send(f"{command.tag} OK UNSELECT completed".encode())

    async def cmd_expunge(self, command: Command) -> None:
        assert self.selected is not None
        if self.selected.readonly:
            self.send(f"{command.tag} NO [READ-ONLY] mailbox selected read-only".encode())
            return
        # UID EXPUNGE (RFC 4315) removes only the \Deleted messages of its set.
        only = set(self._numbers(command.args["set"], uid=True)) if command.args["set"] is not None else None
        await self._expunge(announce=True, only=only)
        if self.qresync:  # the new HIGHESTMODSEQ, once everything before it has been told
            await self._refresh()
            self.send(b"%s OK [HIGHESTMODSEQ %d] %s completed" % (
                command.tag.encode(), self.selected.highest_modseq, command.name.encode()))
            return
        self.send(f"{command.tag} OK {command.name} completed".encode())

    async def _expunge(self, *, announce: bool, only: set[int] | None = None) -> None:
        selected = self.selected
        assert selected is not None
        await self._remove([(seq, m) for seq, m in enumerate(selected.messages, 1)
                            if "T" in m.flags and (only is None or seq in only)], announce=announce, deleted_only=True)

    async def _remove(self, doomed: list[tuple[int, IndexedMessage]], *, announce: bool,
                      deleted_only: bool = False) -> None:
        """Deletes messages of the selected folder and says so (highest first, so that each
        EXPUNGE's number is right when the client reads it). With ``deleted_only`` (EXPUNGE,
        CLOSE), only those \\Deleted still: another session may have taken the flag off since
        this one last looked (an undo on the phone), and the message then stays."""
        selected, maildir = self.selected, self.maildir
        assert selected is not None and maildir is not None

        def remove() -> set[int]:
            """The UIDs now gone. Each file is looked up under its current name: another session
            may have renamed it (a flag change) since this one last looked."""
            current = {m.uid: m for m in selected.synced().messages}
            cur = maildir.folder_path(selected.folder) / "cur"
            gone = set()
            for _, message in doomed:
                now = current.get(message.uid)
                if now is None:  # expunged by another session already
                    gone.add(message.uid)
                    continue
                if deleted_only and "T" not in now.flags:
                    continue  # (its file, named without T, is not the one unlinked below)
                name = now.name
                try:
                    (cur / name).unlink()
                except FileNotFoundError:
                    continue  # renamed again this very moment: left for the next EXPUNGE
                maildir.uncount(message.size)
                gone.add(message.uid)
            mailindex.forget(maildir.folder_path(selected.folder))
            return gone

        gone: set[int] = await self._blocking(remove)
        removed = [(seq, message) for seq, message in doomed if message.uid in gone]
        if announce and self.qresync and removed:
            self.send(b"* VANISHED " + uid_set(sorted(m.uid for _, m in removed)))
            announce = False
        for seq, message in sorted(removed, key=lambda pair: -pair[0]):
            if announce:
                self.send(b"* %d EXPUNGE" % seq)
            selected.messages.remove(message)
        if removed:
            self.service.notify_imap(maildir.path, selected.folder)

    def _numbers(self, sequence: SequenceSet, uid: bool) -> list[int]:
        """Sequence numbers (1-based) the set names, ascending. Raises ``InvalidSequence`` for
        a message sequence number past the last message ("*" in an empty mailbox too): a
        client's protocol error, which is BAD for the whole command (RFC 9051 §2.3.1.2) - UIDs
        past the last are not, they may name messages expunged meanwhile."""
        assert self.selected is not None
        messages = self.selected.messages
        if not uid and sequence.ranges and (not messages or any(
                end is not None and end > len(messages) for pair in sequence.ranges for end in pair)):
            raise InvalidSequence(f"no message {len(messages) + 1 if messages else 1} or above in the mailbox, "
                                  f"which has {len(messages)}")
        if not messages:
            return []
        top = messages[-1].uid if uid else len(messages)
        wanted: list[int] = []
        for low, high in sequence.ranges:
            a, b = low if low is not None else top, high if high is not None else top
            a, b = min(a, b), max(a, b)
            if uid:  # messages are in UID order: the range's ends by bisection
                first = bisect.bisect_left(messages, a, key=_uid_of)
                wanted += range(first + 1, bisect.bisect_right(messages, b, lo=first, key=_uid_of) + 1)
            else:
                wanted += range(max(a, 1), min(b, len(messages)) + 1)
        return sorted(set(wanted))

    async def cmd_fetch(self, command: Command) -> None:
        selected = self.selected
        assert selected is not None and self.maildir is not None
        uid = command.name.startswith("UID")
        items = list(command.args["items"])
        changed_since: int | None = command.args["changed_since"]
        if command.args["vanished"] and not (uid and self.qresync):
            self.send(f"{command.tag} BAD VANISHED needs UID FETCH and QRESYNC enabled".encode())
            return
        if uid and not any(i.name == "UID" for i in items):
            items.insert(0, FetchItem("UID"))
        if any(i.name in ("BINARY", "BINARY.SIZE") for i in items):  # (the parser knows RFC 3516's names)
            self.send(f"{command.tag} NO [CANNOT] BINARY is not implemented yet".encode())
            return
        if changed_since is not None or any(i.name == "MODSEQ" for i in items):
            self.condstore = True  # a CONDSTORE-enabling command (RFC 7162 §3.1)
            if not any(i.name == "MODSEQ" for i in items):
                items.append(FetchItem("MODSEQ"))
        numbers = self._numbers(command.args["set"], uid)
        if changed_since is not None:
            if command.args["vanished"] and changed_since < selected.expunged_modseq:
                gone = vanished(command.args["set"], [m.uid for m in selected.messages], selected.uidnext - 1)
                if gone:
                    self.send(b"* VANISHED (EARLIER) " + gone)
            numbers = [seq for seq in numbers if selected.messages[seq - 1].modseq > changed_since]
        needs_data = any(i.name in ("BODY", "BODYSTRUCTURE", "RFC822", "RFC822.HEADER", "RFC822.TEXT", "ENVELOPE")
                         for i in items)
        marks_seen = not selected.readonly and any(
            not i.peek and (i.name in ("RFC822", "RFC822.TEXT") or (i.name == "BODY" and i.section is not None))
            for i in items)
        batches = _fetch_batches(numbers, selected.messages) if needs_data else [numbers]
        expunged = 0
        for batch in batches:
            await self._writable.wait()  # what was sent is read before more is read from disk
            if self.transport is None or self.transport.is_closing():  # (closed by us: a BYE)
                return
            expunged += await self._fetch_batch(batch, items, needs_data, marks_seen)
        if expunged:
            # Messages another session expunged since this one was told: their contents are
            # gone. Not an OK that answered nothing for them (the client is left with no data
            # and no reason); Dovecot's answer, RFC 5530's code: the client's NOOP tells all.
            self.send(f"{command.tag} NO [EXPUNGEISSUED] some of the requested messages no longer exist".encode())
            return
        self.send(f"{command.tag} OK {command.name} completed".encode())

    async def _fetch_batch(self, numbers: list[int], items: list[FetchItem], needs_data: bool,
                           marks_seen: bool) -> int:
        """Sends the FETCH responses of these messages; returns how many were expunged (by
        another session) before their files could be read."""
        selected = self.selected
        assert selected is not None
        # Read in one trip to the file threads, and only the header when that is all asked for.
        contents = await self._read_selected(numbers, _header_only(items)) if needs_data else {}
        # Reading a body sets \Seen: one flag change for all the messages of the batch, which
        # are sent - not when the connection went meanwhile (send drops what follows).
        newly_seen: set[int] = set()
        if marks_seen and self.transport is not None and not self.transport.is_closing():
            unseen = [seq for seq in numbers if "S" not in selected.messages[seq - 1].flags
                      and (not needs_data or seq in contents)]
            if unseen:
                newly_seen = await self._store_flags(unseen, "+", "S")
        gone = 0
        for seq in numbers:
            message = selected.messages[seq - 1]
            data: bytes | None = None
            if needs_data:
                raw = contents.get(seq)
                if raw is None:  # expunged by another session: nothing to say yet
                    gone += 1
                    continue
                data = with_crlf(raw)
            parts = [self._fetch_item(item, message, data) for item in items]
            if seq in newly_seen:
                if not any(i.name == "FLAGS" for i in items):
                    parts.append(b"FLAGS " + self._flags(message.flags, message.recent))
                if self.condstore and not any(i.name == "MODSEQ" for i in items):
                    parts.append(b"MODSEQ (%d)" % message.modseq)
            self.send(b"* %d FETCH (%s)" % (seq, b" ".join(parts)))
        return gone

    def _fetch_item(self, item: FetchItem, message: IndexedMessage, data: bytes | None) -> bytes:
        if item.name == "UID":
            return b"UID %d" % message.uid
        if item.name == "FLAGS":
            return b"FLAGS " + self._flags(message.flags, message.recent)
        if item.name == "INTERNALDATE":
            return b"INTERNALDATE " + internal_date(message.internal_date)
        if item.name == "RFC822.SIZE":
            return b"RFC822.SIZE %d" % message.virtual_size
        if item.name == "MODSEQ":
            return b"MODSEQ (%d)" % message.modseq
        assert data is not None
        header, body = split_message(data)
        if item.name == "ENVELOPE":
            return b"ENVELOPE " + _envelope(header)
        if item.name == "BODYSTRUCTURE" or (item.name == "BODY" and item.section is None):
            described = mime.structure(mime.parse(data), _envelope, extensible=item.name == "BODYSTRUCTURE")
            return item.name.encode() + b" " + described
        if item.name == "RFC822":
            return b"RFC822 " + astring(data)
        if item.name == "RFC822.HEADER":
            return b"RFC822.HEADER " + astring(header)
        if item.name == "RFC822.TEXT":
            return b"RFC822.TEXT " + astring(body)
        section = item.section
        assert section is not None
        if section.parts:
            part = mime.find(mime.parse(data), section.parts)
            if part is None:
                content = b""  # no such part: RFC 3501 §6.4.5 asks for an empty string
            elif section.text == "MIME":
                content = part.header
            elif section.text:  # HEADER, TEXT, HEADER.FIELDS of an embedded message
                inner = part.message
                header, body = (inner.header, inner.body) if inner is not None else (b"", b"")
                content = self._section_text(section.text, section.fields, header, body)
            else:
                content = part.body
        elif section.text:
            content = self._section_text(section.text, section.fields, header, body)
        else:
            content = data
        label = b"BODY[" + b".".join(b"%d" % n for n in section.parts)
        if section.parts and section.text:
            label += b"."
        label += section.text.encode()
        if section.fields:
            label += b" (" + b" ".join(section.fields) + b")"
        label += b"]"
        if item.partial is not None:
            offset, length = item.partial
            content = content[offset:offset + length]
            label += b"<%d>" % offset
        return label + b" " + astring(content)

    @staticmethod
    def _section_text(text: str, fields: tuple[bytes, ...], header: bytes, body: bytes) -> bytes:
        if text == "HEADER":
            return header
        if text == "TEXT":
            return body
        return header_fields(header, fields, exclude=text.endswith(".NOT"))

    async def _read_selected(self, numbers: list[int], header_only: bool) -> dict[int, bytes]:
        """The files of these messages of the selected folder, by sequence number; those gone
        are left out. A file another session renamed (its flags) is found under its new name."""
        selected, maildir = self.selected, self.maildir
        assert selected is not None and maildir is not None
        cur = maildir.folder_path(selected.folder) / "cur"
        names = {seq: selected.messages[seq - 1].name for seq in numbers}
        read: dict[str, bytes] = await self._blocking(_read_messages, cur, list(names.values()), header_only)
        missing = [seq for seq, name in names.items() if name not in read]
        if missing and await self._renamed(missing):
            names.update({seq: selected.messages[seq - 1].name for seq in missing})
            read.update(await self._blocking(_read_messages, cur, [names[seq] for seq in missing], header_only))
        return {seq: read[name] for seq, name in names.items() if name in read}

    async def _renamed(self, numbers: list[int]) -> bool:
        """Looks up the current file names of these messages (another session changed their
        flags, which renames the files). Only the names change here: what else changed is
        told at the next NOOP, CHECK or IDLE, never in the middle of this command."""
        selected = self.selected
        assert selected is not None
        state = await self._blocking(selected.synced)
        now = {m.uid: m for m in state.messages}
        found = False
        for seq in numbers:
            message = selected.messages[seq - 1]
            fresh = now.get(message.uid)
            if fresh is not None and fresh.name != message.name:
                selected.messages[seq - 1] = dataclasses.replace(message, name=fresh.name)
                found = True
        return found

    async def _store_flags(self, numbers: list[int], mode: str, letters: str, unchanged_since: int | None = None,
                           *, told: bool = False) -> set[int]:
        """Changes the flags of these messages (sequence numbers) in the index as one change,
        and in this session's view; returns the numbers whose flags changed. Messages another
        session expunged meanwhile are left as they are here (their EXPUNGE comes later); those
        changed after ``unchanged_since`` go to ``self._modified``. A change another session
        made to one of them is taken into this session's view only when the caller tells the
        client every message's flags (``told``); else the next update tells it."""
        selected = self.selected
        assert selected is not None
        by_uid = {selected.messages[seq - 1].uid: seq for seq in numbers}
        change: mailindex.FlagChange = await self._blocking(selected.index.set_flags, list(by_uid), mode, letters,
                                                            unchanged_since)
        self._modified = sorted(by_uid[u] for u in change.modified)
        changed = {by_uid[u] for u in change.changed}
        for found_uid, updated in change.messages.items():
            seq = by_uid[found_uid]
            known = selected.messages[seq - 1]
            if told and found_uid not in change.modified:
                selected.messages[seq - 1] = _with_recent_of(known, updated)
            elif seq in changed:
                # The client learns of this change alone (or of none, with .SILENT): the view
                # keeps the flags it was told, this change applied, so that the next update
                # tells it what another session changed meanwhile (else that was never told).
                told_flags = _flags_applied(known.flags, mode, letters)
                selected.messages[seq - 1] = _with_recent_of(known, dataclasses.replace(updated, flags=told_flags))
        if changed:
            self.service.notify_imap(self.maildir.path if self.maildir else None, selected.folder)
            if change.highest_modseq == selected.highest_modseq + 1:
                selected.highest_modseq = change.highest_modseq  # ours was the only change since
            elif self.condstore:
                # Another session's change, still to be told here, has a lower modseq than the
                # ones just reported: a client must not take those as its HIGHESTMODSEQ.
                self.send(b"* OK [HIGHESTMODSEQ %d] other changes still to be told" % selected.highest_modseq)
        return changed

    async def cmd_store(self, command: Command) -> None:
        selected = self.selected
        assert selected is not None
        if selected.readonly:
            self.send(f"{command.tag} NO [READ-ONLY] mailbox selected read-only".encode())
            return
        uid = command.name.startswith("UID")
        # Keywords new to the folder are added to its table, except by -FLAGS.
        letters = await self._letters(selected.index, command.args["flags"], create=command.args["mode"] != "-")
        if letters is None:
            self.send(f"{command.tag} NO [LIMIT] no room for another keyword in this mailbox".encode())
            return
        if letters_of(command.args["flags"])[1]:
            self._announce_keywords(await self._blocking(selected.index.keywords))
        unchanged_since: int | None = command.args["unchanged_since"]
        if unchanged_since is not None:
            self.condstore = True  # a CONDSTORE-enabling command (RFC 7162 §3.1)
        numbers = self._numbers(command.args["set"], uid)
        changed = await self._store_flags(numbers, command.args["mode"], letters, unchanged_since,
                                          told=not command.args["silent"]) if numbers else set()
        modified = set(self._modified) if numbers else set()
        with_uid = uid or self.qresync
        for seq in numbers:
            if seq in modified:
                continue
            message = selected.messages[seq - 1]
            parts = [b"UID %d" % message.uid] if with_uid else []
            if not command.args["silent"]:
                parts.append(b"FLAGS " + self._flags(message.flags, message.recent))
            if self.condstore and (seq in changed or not command.args["silent"]):
                parts.append(b"MODSEQ (%d)" % message.modseq)
            if len(parts) > (1 if with_uid else 0):
                self.send(b"* %d FETCH (%s)" % (seq, b" ".join(parts)))
        if modified:
            listed = uid_set(sorted(selected.messages[seq - 1].uid for seq in modified)) if uid else uid_set(
                sorted(modified))
            self.send(b"%s OK [MODIFIED %s] %s completed" % (command.tag.encode(), listed, command.name.encode()))
            return
        self.send(f"{command.tag} OK {command.name} completed".encode())

    async def cmd_search(self, command: Command) -> None:
        assert self.selected is not None and self.maildir is not None
        charset = command.args["charset"]
        uid = command.name.startswith("UID")
        key: SearchKey = _resolve_keywords(command.args["key"], self.selected.keywords)
        if charset not in (None, "US-ASCII", "UTF-8"):  # RFC 3501 §6.4.4: any charset Python knows
            try:
                if not getattr(codecs.lookup(charset), "_is_text_encoding", True):  # hex, zlib, ...
                    raise LookupError(charset)
            except LookupError:
                self.send(f"{command.tag} NO [BADCHARSET (US-ASCII UTF-8)] that charset is not supported".encode())
                return
            key = _transcoded(key, charset)
        needs_text, needs_body = _needs_text(key), _needs_text(key, body=True)
        messages = self.selected.messages
        found = []
        highest = 0
        if not needs_text:  # flags, numbers, dates and sizes: the index answers alone
            for seq, message in enumerate(messages, 1):
                if _matches(key, seq, message, b"", messages):
                    found.append(message.uid if uid else seq)
                    highest = max(highest, message.modseq)
        for start in range(0, len(messages) if needs_text else 0, SEARCH_BATCH):
            numbers = list(range(start + 1, min(start + SEARCH_BATCH, len(messages)) + 1))
            # The files of a batch in one trip to the file threads (only headers unless BODY or
            # TEXT is asked); a batch at a time, so a large folder is never all in memory.
            contents = await self._read_selected(numbers, not needs_body)
            # Matching decodes headers and bodies: in the file threads, off the event loop.
            for seq in await self._blocking(_matching, key, numbers, contents, messages):
                message = messages[seq - 1]
                found.append(message.uid if uid else seq)
                highest = max(highest, message.modseq)
        tail = b""
        if _uses_modseq(key):
            self.condstore = True  # a CONDSTORE-enabling command (RFC 7162 §3.1)
            if found:
                tail = b" (MODSEQ %d)" % highest
        self.send(b"* SEARCH" + b"".join(b" %d" % n for n in found) + tail)
        self.send(f"{command.tag} OK {command.name} completed".encode())

    async def cmd_idle(self, command: Command) -> None:
        """RFC 2177: updates as they happen until the client's DONE (the next line it sends).
        Also with no folder selected (RFC 9051 §6.3.13 lists IDLE in the authenticated state,
        and Dovecot takes it there): nothing to report then, only DONE to wait for."""
        self.send(b"+ idling")
        ending = asyncio.ensure_future(self._queue.get())
        try:
            if self.selected is None:
                while not ending.done():
                    finished, _ = await asyncio.wait({ending}, timeout=IDLE_KEEPALIVE_SECONDS)
                    if not finished:
                        self.send(b"* OK Still here")
            else:
                await self._idle_in_folder(ending)
        finally:
            if not ending.done():
                ending.cancel()
        event = ending.result() if not ending.cancelled() else None
        if event is None:
            return  # the connection went away
        if isinstance(event, Framed) and len(event.pieces) == 1 and event.pieces[0].upper() == b"DONE":
            self.send(f"{command.tag} OK IDLE terminated".encode())
        else:
            self.send(f"{command.tag} BAD expected DONE".encode())

    async def _idle_in_folder(self, ending: asyncio.Future[Any]) -> None:
        self.service.watch_imap(self)
        loop = asyncio.get_running_loop()
        kept_alive = loop.time()
        try:
            while True:
                self._woken.clear()
                await self._refresh()
                # Woken by a delivery or a change another session made; else a look every minute.
                woken = asyncio.ensure_future(self._woken.wait())
                finished, _ = await asyncio.wait({ending, woken}, timeout=min(60.0, IDLE_KEEPALIVE_SECONDS),
                                                 return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                if ending in finished:
                    return
                if loop.time() - kept_alive >= IDLE_KEEPALIVE_SECONDS:
                    self.send(b"* OK Still here")
                    kept_alive = loop.time()
        finally:
            self.service.unwatch_imap(self)

    def wake(self) -> None:
        self._woken.set()

    async def _refresh(self) -> None:
        """Tell the client what changed in the selected folder since it last heard."""
        selected = self.selected
        if selected is None:
            return
        state = await self._blocking(selected.synced)
        self._announce_keywords(list(state.keywords))
        now = {m.uid: m for m in state.messages}
        gone = [seq for seq in range(len(selected.messages), 0, -1) if selected.messages[seq - 1].uid not in now]
        if gone and self.qresync:
            self.send(b"* VANISHED " + uid_set(sorted(selected.messages[seq - 1].uid for seq in gone)))
        for seq in gone:
            if not self.qresync:
                self.send(b"* %d EXPUNGE" % seq)
            del selected.messages[seq - 1]
        known = {m.uid for m in selected.messages}
        for seq, message in enumerate(selected.messages, 1):
            fresh = _with_recent_of(message, now[message.uid])
            if fresh.flags != message.flags or fresh.modseq != message.modseq:
                parts = [b"UID %d" % fresh.uid] if self.qresync else []
                parts.append(b"FLAGS " + self._flags(fresh.flags, fresh.recent))
                if self.condstore:
                    parts.append(b"MODSEQ (%d)" % fresh.modseq)
                self.send(b"* %d FETCH (%s)" % (seq, b" ".join(parts)))
            selected.messages[seq - 1] = fresh
        added = [dataclasses.replace(m, recent=True) if m.uid in selected.recent_untold and not m.recent else m
                 for m in state.messages if m.uid not in known]
        selected.recent_untold.clear()  # every message of the folder is told of now
        if added:
            selected.messages += added
            self.send(b"* %d EXISTS" % len(selected.messages))
            self.send(b"* %d RECENT" % sum(1 for m in selected.messages if m.recent))
        selected.uidnext = state.next_uid
        selected.highest_modseq, selected.expunged_modseq = state.highest_modseq, state.expunged_modseq


_AUTHENTICATED = ("authenticated", "selected")
_STATES: dict[str, tuple[str, ...]] = {
    "CAPABILITY": ("not-authenticated", *_AUTHENTICATED), "NOOP": ("not-authenticated", *_AUTHENTICATED),
    "LOGOUT": ("not-authenticated", *_AUTHENTICATED), "ID": ("not-authenticated", *_AUTHENTICATED),
    "STARTTLS": ("not-authenticated",), "LOGIN": ("not-authenticated",), "AUTHENTICATE": ("not-authenticated",),
    "ENABLE": _AUTHENTICATED, "NAMESPACE": _AUTHENTICATED, "LIST": _AUTHENTICATED, "LSUB": _AUTHENTICATED,
    "STATUS": _AUTHENTICATED, "SELECT": _AUTHENTICATED, "EXAMINE": _AUTHENTICATED, "APPEND": _AUTHENTICATED,
    "CREATE": _AUTHENTICATED, "DELETE": _AUTHENTICATED, "RENAME": _AUTHENTICATED,
    "SUBSCRIBE": _AUTHENTICATED, "UNSUBSCRIBE": _AUTHENTICATED, "GETQUOTAROOT": _AUTHENTICATED,
    "GETQUOTA": _AUTHENTICATED,
    "COPY": ("selected",), "MOVE": ("selected",),
    "CHECK": ("selected",), "CLOSE": ("selected",), "UNSELECT": ("selected",), "EXPUNGE": ("selected",),
    "FETCH": ("selected",), "STORE": ("selected",), "SEARCH": ("selected",), "IDLE": _AUTHENTICATED,
}


COMMAND_NAMES = (*sorted(_STATES), "other")


def _without_stop_iteration(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)``, a StopIteration (a ``next`` that found nothing) raised as a plain
    error: set on the executor's future, StopIteration fails the callback instead, the future
    never resolves, and the command never gets its tagged reply."""
    try:
        return function(*args)
    except StopIteration as exc:
        raise RuntimeError("StopIteration in a mailbox operation") from exc


_MOVES: weakref.WeakValueDictionary[Path, asyncio.Lock] = weakref.WeakValueDictionary()


def _moving_out_of(folder: Path) -> asyncio.Lock:
    """The lock a MOVE out of ``folder`` holds from its copy to its removal of the originals
    (this process's sessions; the event loop's, so a waiting MOVE holds no thread)."""
    lock = _MOVES.get(folder)
    if lock is None:
        lock = _MOVES[folder] = asyncio.Lock()
    return lock


def _flags_applied(flags: str, mode: str, letters: str) -> str:
    """Maildir letters ``flags`` after a STORE of ``letters`` in ``mode`` ("=", "+" or "-"),
    as ``FolderIndex.set_flags`` changes them."""
    wanted = set(letters) & set(mailindex.MAILDIR_FLAGS + mailindex.KEYWORD_LETTERS)
    current = set(flags)
    return "".join(sorted(wanted if mode == "=" else current | wanted if mode == "+" else current - wanted))


def _with_recent_of(known: IndexedMessage, fresh: IndexedMessage) -> IndexedMessage:
    """``fresh``, the index's newer view of a message this session knows as ``known``, keeping
    its \\Recent: RFC 3501 §2.3.2 gives it to the session first told of the message, for the
    whole session, while the index sets it only in the sync that moved the message from new/."""
    return dataclasses.replace(fresh, recent=True) if known.recent and not fresh.recent else fresh


def _take_back(maildir: Maildir, folder: str, names: list[str]) -> None:
    """Removes the messages a failing COPY or APPEND put into ``folder`` (with their quota count);
    one that cannot be removed is logged and left (the command still answers NO)."""
    for name in names:
        try:
            size = mailindex.withdraw(maildir.folder_path(folder), name)
        except OSError as exc:
            log.error("mail.imap.take_back_failed", folder=folder, error=str(exc))
            continue
        if size is not None:
            maildir.uncount(size)


def _metric_name(name: str) -> str:
    base = name.removeprefix("UID ")
    return base if base in _STATES else "other"


_RUNS_OF_WILDCARDS = re.compile(r"[*%]{2,}")


def _pattern_matches(pattern: bytes, name: bytes) -> bool:
    """LIST wildcards: '*' matches anything, '%' anything but the hierarchy delimiter.

    Matched by following every place in the pattern at once, one name character at a time:
    at most (pattern length x name length) steps. (A regular expression of the pattern
    backtracked: ``*a*a*a*a*a*a*b`` against a folder named with 80 a's held the daemon for
    half a minute, and each '*' more multiplied that.)"""
    text, target = pattern.decode("ascii", "replace"), name.decode("ascii", "replace")
    if name == b"INBOX":
        text, target = text.upper(), target.upper()
    elif name[:6].upper() == b"INBOX." and text[:5].upper() == "INBOX":  # "inbox.%" reaches INBOX.x
        # (and "INBOX.%" a folder made as inbox.x by an older ispd, which the INBOX has as a child)
        text, target = "INBOX" + text[5:], "INBOX" + target[5:]
    # A run of wildcards matches what its widest one does; literals cannot outnumber the name.
    text = _RUNS_OF_WILDCARDS.sub(lambda run: "*" if "*" in run.group(0) else "%", text)
    if len(text) - text.count("*") - text.count("%") > len(target):
        return False
    end = len(text)

    def closure(places: set[int]) -> set[int]:  # a wildcard may match nothing
        return places | {i + 1 for i in places if i < end and text[i] in "*%"}

    places = closure({0})
    for char in target:
        following = set()
        for i in places:
            if i == end:
                continue
            wanted = text[i]
            if wanted == "*" or (wanted == "%" and char != "."):
                following.add(i)
            elif wanted == char:
                following.add(i + 1)
        if not following:
            return False
        places = closure(following)
    return end in places


_HEADER_READ = 64 * 1024  # enough for nearly every header section; more is read when it is not


def _fetch_batches(numbers: list[int], messages: list[IndexedMessage]) -> Iterator[list[int]]:
    """``numbers`` cut into runs of about FETCH_BATCH_BYTES of message files (one at least)."""
    batch: list[int] = []
    size = 0
    for seq in numbers:
        if batch and size + messages[seq - 1].size > FETCH_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(seq)
        size += messages[seq - 1].size
    if batch:
        yield batch


def _header_only(items: list[FetchItem]) -> bool:
    for item in items:
        if item.name in ("RFC822", "RFC822.TEXT", "BODYSTRUCTURE"):
            return False
        if item.name == "BODY" and (item.section is None or item.section.parts
                                    or item.section.text not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")):
            return False
    return True


def _read_messages(cur: Path, names: list[str], header_only: bool) -> dict[str, bytes]:
    """The files' contents by name (missing ones left out); with ``header_only``, as much as
    holds the header section (the body, if read, is cut off)."""
    contents = {}
    for name in names:
        try:
            with open(cur / name, "rb") as f:
                if not header_only:
                    contents[name] = f.read()
                    continue
                head = f.read(_HEADER_READ)
                end = head.find(b"\n\n")
                if end < 0 and len(head) == _HEADER_READ:
                    head += f.read()
                    end = head.find(b"\n\n")
                contents[name] = head[:end + 2] if end >= 0 else head
        except FileNotFoundError:
            continue
    return contents


def _needs_text(key: SearchKey, *, body: bool = False) -> bool:
    """Whether the key reads the messages' headers (or, with ``body``, their bodies)."""
    if key.name in ("AND", "OR", "NOT"):
        return any(_needs_text(k, body=body) for k in key.args if isinstance(k, SearchKey))
    if body:
        return key.name in ("BODY", "TEXT")
    return key.name in ("BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO", "HEADER", "SENTBEFORE", "SENTON",
                        "SENTSINCE")


# Search keys that test one Maildir flag letter: (letter, whether it must be set).
_FLAG_KEYS = {"SEEN": ("S", True), "UNSEEN": ("S", False), "DELETED": ("T", True), "UNDELETED": ("T", False),
              "FLAGGED": ("F", True), "UNFLAGGED": ("F", False), "ANSWERED": ("R", True),
              "UNANSWERED": ("R", False), "DRAFT": ("D", True), "UNDRAFT": ("D", False)}


def _uid_of(message: IndexedMessage) -> int:
    return message.uid


def _resolve_keywords(key: SearchKey, keywords: list[str]) -> SearchKey:
    """KEYWORD and UNKEYWORD keys with the folder's letter for their keyword ("" when the
    folder has never had it), found once rather than for every message."""
    if key.name in ("AND", "OR", "NOT"):
        return SearchKey(key.name, tuple(_resolve_keywords(k, keywords) if isinstance(k, SearchKey) else k
                                         for k in key.args))
    if key.name in ("KEYWORD", "UNKEYWORD"):
        wanted = key.args[0].decode("ascii", "replace").lower()
        lowered = [k.lower() for k in keywords]
        letter = mailindex.KEYWORD_LETTERS[lowered.index(wanted)] if wanted in lowered else ""
        return SearchKey(key.name, (letter,))
    return key


def _uses_modseq(key: SearchKey) -> bool:
    if key.name in ("AND", "OR", "NOT"):
        return any(_uses_modseq(k) for k in key.args if isinstance(k, SearchKey))
    return key.name == "MODSEQ"


def uid_set(uids: list[int]) -> bytes:
    """Ascending UIDs as a compact sequence set: 1:3,7,9:10."""
    return _sequence_text([(uid, uid) for uid in uids])


def _sequence_text(spans: list[tuple[int, int]]) -> bytes:
    """Ranges sorted by their start, merged where they touch or overlap, as a sequence set."""
    merged: list[list[int]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return b",".join(b"%d" % a if a == b else b"%d:%d" % (a, b) for a, b in merged)


def vanished(known: SequenceSet, present: list[int], top: int) -> bytes:
    """The UIDs of ``known`` (``*`` is ``top``, the highest UID ever given) that are not in
    ``present`` (ascending), as a sequence set; computed from the gaps, never UID by UID."""
    gaps: list[tuple[int, int]] = []
    for low, high in known.ranges:
        a, b = low if low is not None else top, high if high is not None else top
        a, b = max(1, min(a, b)), min(top, max(a, b))
        position = bisect.bisect_left(present, a)
        while a <= b:
            if position < len(present) and present[position] <= b:
                if present[position] > a:
                    gaps.append((a, present[position] - 1))
                a = present[position] + 1
                position += 1
            else:
                gaps.append((a, b))
                break
    return _sequence_text(sorted(gaps))


def _header_value(data: bytes, name: bytes) -> bytes:
    header, _ = split_message(data)
    return header_fields(header, (name.upper(),), exclude=False)


# RFC 3501 §6.4.4: strings are matched in headers and bodies as their readers see them - encoded
# words (RFC 2047) and transfer encodings undone - case-insensitively; the bytes as stored are
# tried first, and decoding is spent only on messages that have something encoded.

def _needle(wanted: bytes) -> str:
    return wanted.decode("utf-8", "replace").casefold()


def _header_has(value: bytes, wanted: bytes) -> bool:
    if wanted.lower() in value.lower():
        return True
    # bytes.lower() lowers ASCII letters only: raw UTF-8 (Ä, Ж) is matched as text too.
    return (b"=?" in value or not value.isascii()) and _needle(wanted) in _decoded_header(value).casefold()


_DECODED_HEADER_BYTES = 4096  # the email package decodes encoded words in quadratic time


def _decoded_header(value: bytes) -> str:
    """A field's value with its encoded words decoded (raw UTF-8, RFC 6532, is taken as it is);
    the first 4 KiB of it, a bound on what a hostile header can cost."""
    text = value[:_DECODED_HEADER_BYTES].decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(" ".join(text.split()))))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return text


def _text_has(data: bytes, wanted: bytes, *, header: bool) -> bool:
    header_section, body = split_message(data)
    raw = data if header else body
    lowered = raw.lower()
    if wanted.lower() in lowered:
        return True
    needle = _needle(wanted)
    if header and b"=?" in header_section and any(
            needle in _decoded_header(line).casefold() for line in _encoded_fields(header_section)):
        return True
    if not raw.isascii() and needle in raw.decode("utf-8", "replace").casefold():
        return True  # 8-bit UTF-8 as stored, which bytes.lower() left as it was (Ä, Ж)
    if not _ENCODED_BODY.search(lowered):
        return False  # nothing encoded: the bytes were the text
    return any(needle in text.casefold() for text in _decoded_texts(data))


# A body that only decoding shows as text: a transfer encoding, or a charset not UTF-8 (ASCII is).
_ENCODED_BODY = re.compile(rb"base64|quoted-printable|charset=(?![\"']?(?:utf-8|us-ascii))")


def _encoded_fields(header: bytes, budget: int = 4 * _DECODED_HEADER_BYTES) -> Iterator[bytes]:
    """The header fields with encoded words, unfolded, up to ``budget`` bytes in all."""
    for line in re.split(rb"\r\n(?![ \t])", header):
        if b"=?" in line and budget > 0:
            budget -= len(line)
            yield line


def _decoded_texts(data: bytes) -> Iterator[str]:
    """The text parts of a message, transfer encoding and charset undone."""
    try:
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        for part in parsed.walk():
            if part.get_content_maintype() != "text":
                continue
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            charset = part.get_content_charset() or "us-ascii"
            try:
                yield payload.decode(charset, "replace")
            except LookupError:  # a charset Python does not know
                yield payload.decode("utf-8", "replace")
    except (ValueError, TypeError, RecursionError, email.errors.MessageError):
        return  # (RecursionError: multiparts nested a thousand deep)


_TEXT_KEYS = frozenset({"FROM", "TO", "CC", "BCC", "SUBJECT", "BODY", "TEXT"})


def _transcoded(key: SearchKey, charset: str) -> SearchKey:
    """``key`` with its search strings turned from ``charset`` into UTF-8, which matching reads."""
    if key.name in ("AND", "OR", "NOT"):
        return SearchKey(key.name, tuple(_transcoded(k, charset) for k in key.args))
    if key.name in _TEXT_KEYS:
        return SearchKey(key.name, (key.args[0].decode(charset, "replace").encode(),))
    if key.name == "HEADER":
        return SearchKey(key.name, (key.args[0], key.args[1].decode(charset, "replace").encode()))
    return key


def _matching(key: SearchKey, numbers: list[int], contents: dict[int, bytes],
              messages: list[IndexedMessage]) -> list[int]:
    """The sequence numbers among ``numbers`` whose message (its bytes in ``contents``; gone
    when expunged by another session) matches ``key``."""
    return [seq for seq in numbers if seq in contents
            and _matches(key, seq, messages[seq - 1], with_crlf(contents[seq]), messages)]


def _matches(key: SearchKey, seq: int, message: IndexedMessage, data: bytes,
             messages: list[IndexedMessage]) -> bool:
    name, args, flags = key.name, key.args, message.flags
    if name == "AND":
        return all(_matches(k, seq, message, data, messages) for k in args)
    if name == "OR":
        return _matches(args[0], seq, message, data, messages) or _matches(args[1], seq, message, data, messages)
    if name == "NOT":
        return not _matches(args[0], seq, message, data, messages)
    flag = _FLAG_KEYS.get(name)
    if flag is not None:
        letter, wanted = flag
        return (letter in flags) == wanted
    if name == "ALL":
        return True
    if name in ("RECENT", "NEW", "OLD"):
        return message.recent and "S" not in flags if name == "NEW" else message.recent == (name == "RECENT")
    if name in ("SEQUENCE", "UID"):
        sequence: SequenceSet = args[0]
        top = messages[-1].uid if name == "UID" else len(messages)
        value = message.uid if name == "UID" else seq
        for low, high in sequence.ranges:
            a, b = low if low is not None else top, high if high is not None else top
            if min(a, b) <= value <= max(a, b):
                return True
        return False
    if name == "MODSEQ":
        return message.modseq >= int(args[0])
    if name == "LARGER":
        return message.virtual_size > int(args[0])
    if name == "SMALLER":
        return message.virtual_size < int(args[0])
    if name in ("BEFORE", "ON", "SINCE"):
        day = datetime.fromtimestamp(message.internal_date, UTC).date()
        wanted = args[0].date()
        return bool(day < wanted if name == "BEFORE" else day == wanted if name == "ON" else day >= wanted)
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        text = _header_value(data, b"DATE").partition(b":")[2].strip()
        try:
            sent = email.utils.parsedate_to_datetime(text.decode("ascii", "replace")).date()
        except (TypeError, ValueError):  # no Date (or none readable): sent at the epoch, as Dovecot
            sent = date(1970, 1, 1)
        wanted = args[0].date()
        return bool(sent < wanted if name == "SENTBEFORE" else sent == wanted if name == "SENTON" else sent >= wanted)
    if name in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
        return _header_has(_header_value(data, name.encode()).partition(b":")[2], args[0])
    if name == "HEADER":
        field_value = _header_value(data, args[0])
        return bool(field_value.strip()) and _header_has(field_value.partition(b":")[2], args[1])
    if name == "BODY":
        return _text_has(data, args[0], header=False)
    if name == "TEXT":
        return _text_has(data, args[0], header=True)
    if name in ("KEYWORD", "UNKEYWORD"):  # resolved to the folder's letter ("" if none has it)
        return bool(args[0] and args[0] in flags) == (name == "KEYWORD")
    return False


def _address_groups(value: str) -> list[tuple[str | None, str]]:
    """An address list split at its groups (RFC 5322 §3.4: ``name: member, member;``): (the
    group's name, or None outside groups; the addresses' text). The email package's own
    parser drops the group names; quotes, comments, angle brackets and backslash escapes are
    stepped over here, and a colon with no semicolon after it (in a display name, as
    ``=?UTF-8?Q?ACME:_Support?=``) starts no group."""
    out: list[tuple[str | None, str]] = []
    group: str | None = None
    last_comma = -1
    start, depth, quoted, i = 0, 0, False, 0
    last_semicolon = value.rfind(";")
    while i < len(value):
        char = value[i]
        if char == "\\" and (quoted or depth):
            i += 2
            continue
        if quoted:
            if char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char in "(<":
            depth += 1
        elif char in ")>" and depth:
            depth -= 1
        elif depth == 0 and char == "," and group is None:
            last_comma = i
        elif depth == 0 and char == ":" and group is None and i < last_semicolon:
            if last_comma >= start:  # addresses before the group, outside any
                out.append((None, value[start:last_comma]))
                start = last_comma + 1
            group, start = _unquoted(" ".join(value[start:i].split())), i + 1
        elif depth == 0 and char == ";" and group is not None:
            out.append((group, value[start:i]))
            group, start = None, i + 1
        i += 1
    rest = value[start:]
    if group is not None or rest.strip():
        out.append((group, rest))
    return out


def _unquoted(phrase: str) -> str:
    if len(phrase) >= 2 and phrase[0] == phrase[-1] == '"':
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return phrase


def _envelope(header: bytes) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE from a header section. Raw UTF-8 (RFC 6532) goes out as it came,
    as Dovecot sends it: parsed as bytes, every 8-bit byte became a U+FFFD of its own."""
    parsed = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(header.decode("utf-8", "replace"))

    def text(name: str) -> bytes:
        value = parsed.get(name)
        if value is None:
            return b"NIL"
        return astring(" ".join(str(value).split()).encode("utf-8", "replace"))

    def addresses(name: str, fallback: str | None = None) -> bytes:
        values = parsed.get_all(name)
        if not values:
            return addresses(fallback) if fallback else b"NIL"
        entries = []
        for group, members in _address_groups(", ".join(str(v) for v in values)):
            if group is not None:  # RFC 3501 §7.4.2: a group's start, NIL host and its name
                entries.append(b"(NIL NIL %s NIL)" % astring(group.encode("utf-8", "replace")))
            for display, address in email.utils.getaddresses([members]) if members.strip() else ():
                if not address:
                    continue
                local, _, domain = address.rpartition("@") if "@" in address else (address, "", "")
                # A NIL host would read as a group's start: an address without a domain says so.
                entries.append(b"(%s NIL %s %s)" % (nstring(display.encode("utf-8", "replace") or None),
                                                    astring(local.encode("utf-8", "replace")),
                                                    astring((domain or "MISSING_DOMAIN").encode("utf-8", "replace"))))
            if group is not None:
                entries.append(b"(NIL NIL NIL NIL)")  # the group's end
        if not entries and fallback:  # "present but empty" is absent too (RFC 3501 §7.4.2)
            return addresses(fallback)
        return b"(" + b"".join(entries) + b")" if entries else b"NIL"

    return b"(" + b" ".join([
        text("Date"), text("Subject"), addresses("From"), addresses("Sender", "From"),
        addresses("Reply-To", "From"), addresses("To"), addresses("Cc"), addresses("Bcc"),
        text("In-Reply-To"), text("Message-ID")]) + b")"
