"""Dynamic Authorization (RFC 5176): Disconnect-Request and CoA-Request sent to a NAS.

Theory of operation. ispd is the Dynamic Authorization Client; the NAS listens (port 3799 by
default). One request is one exchange on a socket of its own that sends to the NAS and takes
datagrams from it only (by their source: not connected, because under uvloop a connected socket
that got an ICMP port unreachable never reported a datagram again, and a NAS that answered a
later attempt went unheard), with a random identifier. The same packet is sent
again after each ``timeout`` up to ``attempts`` times (RFC 5176 §2.3: a retransmission is
identical), and the first reply that has the request's identifier, a valid Response
Authenticator and, when present, a valid Message-Authenticator settles it: ACK, or NAK with its
Error-Cause (§3.5). Nothing within the attempts: timeout. An ICMP "port unreachable" counts as
a lost attempt (the NAS may be rebooting).

The request identifies the session as RFC 5176 §3 asks: NAS-IP-Address, User-Name,
Acct-Session-Id, Framed-IP-Address when known, Event-Timestamp (replay protection), and a
Message-Authenticator.

A NAS is sent at most ``NasSlots.limit`` requests at a time: the rest wait their turn (a plan
change or a suspension of thousands of subscribers would otherwise be thousands of exchanges at
once, a socket each, past the process's file descriptors; radclient -p keeps 32 at a time too).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address

from ispd.radius.codec import (
    Attr,
    Code,
    Packet,
    RadiusDecodeError,
    check_message_authenticator,
    check_response_authenticator,
    decode,
    encode_attributes,
    encode_request,
    u32,
)
from ispd.store.models import RadiusSession

_ANSWERS = {
    Code.DISCONNECT_REQUEST: (Code.DISCONNECT_ACK, Code.DISCONNECT_NAK),
    Code.COA_REQUEST: (Code.COA_ACK, Code.COA_NAK),
    # The identity feed's requests: an Accounting-Response is the only answer (ack).
    Code.ACCOUNTING_REQUEST: (Code.ACCOUNTING_RESPONSE, Code.ACCOUNTING_RESPONSE),
}


@dataclass(frozen=True, slots=True)
class CoAOutcome:
    result: str  # ack | nak | timeout | error
    attempts: int
    error_cause: int | None = None
    detail: str = ""


def session_identification(session: RadiusSession, now: float) -> bytes:
    attributes: list[tuple[int, bytes]] = []
    try:  # the NAS as it names itself (RFC 5176 §3), which may not be where its packets come from
        nas = ip_address(session.nas_ip_address or session.nas_address)
    except ValueError:
        nas = None
    if nas is not None and nas.version == 4:
        attributes.append((Attr.NAS_IP_ADDRESS, nas.packed))
    elif nas is not None:
        attributes.append((Attr.NAS_IPV6_ADDRESS, nas.packed))
    if session.nas_identifier:  # RFC 5176 §3: with the address, what a NAS checks to know it is meant
        attributes.append((Attr.NAS_IDENTIFIER, session.nas_identifier.encode("utf-8")[:253]))
    if session.username:
        attributes.append((Attr.USER_NAME, session.username.encode("utf-8")[:253]))
    attributes.append((Attr.ACCT_SESSION_ID, session.acct_session_id.encode("utf-8")[:253]))
    if session.framed_ip:
        attributes.append((Attr.FRAMED_IP_ADDRESS, IPv4Address(session.framed_ip).packed))
    if session.calling_station_id:
        attributes.append((Attr.CALLING_STATION_ID, session.calling_station_id.encode("utf-8")[:253]))
    attributes.append((Attr.EVENT_TIMESTAMP, u32(int(now))))
    return encode_attributes(attributes)


@dataclass
class _NasQueue:
    turns: asyncio.Semaphore
    users: int = 0  # exchanges holding a turn or waiting for one


class NasSlots:
    """At most ``limit`` exchanges under way to one NAS (by address) at a time; the others wait
    in turn. Kept by the service across reloads (a new client is made at each)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._queues: dict[str, _NasQueue] = {}

    @contextlib.asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        queue = self._queues.get(address)
        if queue is None:
            queue = self._queues[address] = _NasQueue(asyncio.Semaphore(self.limit))
        queue.users += 1
        try:
            async with queue.turns:
                yield
        finally:
            queue.users -= 1
            if not queue.users:
                del self._queues[address]


class DynamicAuthorizationClient:
    def __init__(self, timeout: float, attempts: int, sources: tuple[str, ...] = ()) -> None:
        """``sources``: the server's own listening addresses. NASes take dynamic authorization
        from their RADIUS server's address only, which the kernel's choice need not be."""
        self.timeout = timeout
        self.attempts = attempts
        self.sources = sources

    def source_for(self, address: str) -> str | None:
        """The one listening address of the NAS's family and reach (loopback for loopback,
        routable otherwise) to send from; with none, or several (NASes on several networks,
        each talking to its own), the kernel chooses by route."""
        destination = ip_address(address)
        fitting = [s for s in self.sources if (source := ip_address(s)).version == destination.version
                   and source.is_loopback == destination.is_loopback and not source.is_link_local]
        return fitting[0] if len(fitting) == 1 else None

    async def send(self, address: str, port: int, secret: bytes, code: Code, attributes: bytes) -> CoAOutcome:
        """``attributes``: encoded, without the Message-Authenticator (added first)."""
        identifier = secrets.randbelow(256)
        try:
            request = encode_request(code, identifier, attributes, secret)
        except ValueError as exc:
            return CoAOutcome("error", 0, detail=str(exc))
        ack, nak = _ANSWERS[code]
        exchange = await self.exchange(address, port, secret, request, (ack, nak))
        reply = exchange.reply
        if reply is None:
            return CoAOutcome("error" if exchange.error else "timeout", exchange.attempts,
                              detail=exchange.error or f"no answer in {self.attempts} attempts")
        if reply.code == ack:
            return CoAOutcome("ack", exchange.attempts)
        cause = reply.get(Attr.ERROR_CAUSE)
        error_cause = struct.unpack("!I", cause)[0] if cause is not None and len(cause) == 4 else None
        return CoAOutcome("nak", exchange.attempts, error_cause)

    async def exchange(self, address: str, port: int, secret: bytes, request: bytes,
                       answers: tuple[int, ...]) -> Exchange:
        """Send ``request`` (encoded) until ``answer_to`` takes a reply, or ``attempts`` sends
        ``timeout`` apart go unanswered."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            return Exchange(None, 0, exc.strerror or str(exc))
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            while True:
                try:
                    data, peer = sock.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    return
                if peer[0] == address and peer[1] == port:
                    replies.put_nowait(data)

        try:
            source = self.source_for(address)
            if source is not None:
                with contextlib.suppress(OSError):  # (gone from the host since: the kernel's choice)
                    sock.bind((source, 0))
            loop.add_reader(sock.fileno(), readable)
        except OSError as exc:
            sock.close()
            return Exchange(None, 0, exc.strerror or str(exc))
        refused: list[str] = []  # why the last answer that came was not taken (a flood of them: one)
        try:
            for attempt in range(1, self.attempts + 1):
                with contextlib.suppress(OSError):  # unreachable now; the next attempt may do better
                    sock.sendto(request, (address, port))
                reply = await self._wait(replies, request, answers, secret, refused)
                if reply is not None:
                    return Exchange(reply, attempt)
            if refused:  # the NAS answered: not a timeout (a wrong shared secret is not a network fault)
                return Exchange(None, self.attempts, f"answered, but refused: {refused[-1]}", refused=True)
            return Exchange(None, self.attempts)
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()

    async def _wait(self, replies: asyncio.Queue[bytes], request: bytes, answers: tuple[int, ...],
                    secret: bytes, refused: list[str]) -> Packet | None:
        deadline = asyncio.get_running_loop().time() + self.timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                data = await asyncio.wait_for(replies.get(), remaining)
            except TimeoutError:
                return None
            reply, why = checked_answer(data, request, secret, answers)
            if reply is not None:
                return reply
            refused[:] = [why]


_ACCESS_ANSWERS = frozenset((Code.ACCESS_ACCEPT, Code.ACCESS_REJECT, Code.ACCESS_CHALLENGE))


def answer_to(data: bytes, request: bytes, secret: bytes, answers: tuple[int, ...], *,
              require_message_authenticator: bool = False) -> Packet | None:
    """``data`` as the answer to ``request`` (encoded), or None: its Identifier, one of the
    ``answers`` codes, a valid Response Authenticator, and a Message-Authenticator that is valid
    when present (and present when required). RFC 3579 and RFC 5176 §3.5 sign it with the
    request's authenticator; FreeRADIUS-based NASes sign ACKs and NAKs, and FreeRADIUS its
    Accounting-Responses, over zeros: taken too, but for Access-Accept, -Reject and -Challenge
    (the Response Authenticator proves those others anyway)."""
    return checked_answer(data, request, secret, answers,
                          require_message_authenticator=require_message_authenticator)[0]


def checked_answer(data: bytes, request: bytes, secret: bytes, answers: tuple[int, ...], *,
                   require_message_authenticator: bool = False) -> tuple[Packet | None, str]:
    """``answer_to``'s answer, and when there is none, why ``data`` was refused (for the log:
    an answer that is refused is not the same as none, a wrong secret is not a network fault)."""
    try:
        reply = decode(data)
    except RadiusDecodeError as exc:
        return None, f"an answer that does not decode ({exc})"
    authenticator = request[4:20]
    if reply.identifier != request[1]:
        return None, "an answer to another Identifier"
    if reply.code not in answers:
        return None, f"an answer of code {reply.code}, not one expected"
    if not check_response_authenticator(reply, authenticator, secret):
        return None, "an answer whose Response Authenticator does not verify (another shared secret?)"
    if reply.has(Attr.MESSAGE_AUTHENTICATOR):
        try:
            if not (check_message_authenticator(reply, secret, authenticator)
                    or (reply.code not in _ACCESS_ANSWERS and check_message_authenticator(reply, secret, bytes(16)))):
                return None, "an answer whose Message-Authenticator does not verify"
        except RadiusDecodeError:  # (two of them)
            return None, "an answer with two Message-Authenticators"
    elif require_message_authenticator:
        return None, "an answer without Message-Authenticator (require_message_authenticator)"
    return reply, ""


@dataclass(frozen=True, slots=True)
class Exchange:
    reply: Packet | None  # None: no valid answer (``error`` says why when it is not a timeout)
    attempts: int
    error: str = ""
    request: bytes = b""  # what was sent (the proxy's: its authenticators are the answer's key)
    refused: bool = False  # answers came, none valid (``error`` says why)
