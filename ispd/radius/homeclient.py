"""Requests to one home server (proxying), over a few long-lived sockets.

Theory of operation. A socket of its own per request (as the CoA client has, for its rare
requests) costs a proxied request more than everything else it does; a proxy keeps its sockets,
as FreeRADIUS does. Each socket sends to the home server only and takes datagrams from it only
(their source is checked; not connected: under uvloop, a connected socket that got an ICMP port
unreachable, from a home server down, never reported a datagram again, and the server could
not come back) and carries up to 256 requests at once, one per Identifier; a request takes a
free Identifier of the first socket that has one, another socket is opened when none has (up to
MAX_SOCKETS, then the request fails at once). A reply is matched by socket and Identifier and
taken only as ``coa.answer_to`` says (authenticators, code), as the CoA client's replies are;
anything else is ignored and the wait goes on (why an answer was refused is the
``Exchange``'s error: a home server that answers with another secret, or without the
Message-Authenticator asked for, is not silent, and its operator must hear which it is).
Unanswered, the same packet is sent again after ``wait`` seconds, ``attempts`` times in all
(RFC 5080 §2.2.1: a retransmission is identical), then the request gives up and its Identifier
is free again. A late reply to an Identifier given to a newer request fails that request's
authenticator check (its Request Authenticator differs) and is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from ispd.radius.coa import Exchange, checked_answer
from ispd.radius.codec import Packet

MAX_SOCKETS = 16  # 4,096 requests in flight to one home server


@dataclass(slots=True)
class _Waiting:
    request: bytes
    secret: bytes
    answers: tuple[int, ...]
    require_message_authenticator: bool
    future: asyncio.Future[Packet]
    refused: str = ""  # why the last answer that was refused was


@dataclass(slots=True)
class _Socket:
    sock: socket.socket
    waiting: dict[int, _Waiting] = field(default_factory=dict)
    next_identifier: int = 0
    # The last request each Identifier carried, once done: a late answer to it (a slow home
    # server) fails the next request's check, and is not to be told as that one's refusal.
    done: dict[int, _Waiting] = field(default_factory=dict)

    def free_identifier(self) -> int | None:
        if len(self.waiting) >= 256:
            return None
        for step in range(256):  # from where the last one was taken: the longest free first
            identifier = (self.next_identifier + step) & 0xFF
            if identifier not in self.waiting:
                self.next_identifier = (identifier + 1) & 0xFF
                return identifier
        return None


class HomeServerClient:
    def __init__(self, address: str, port: int, source: str | None = None) -> None:
        self.address, self.port, self.source = address, port, source
        self._peer = (address, port)
        self._sockets: list[_Socket] = []
        self.closed = False

    async def exchange(self, build: Callable[[int], bytes], secret: bytes, answers: tuple[int, ...], *,
                       wait: float, attempts: int, require_message_authenticator: bool) -> Exchange:
        """``build(identifier)`` makes the request; the first valid answer, or none."""
        try:
            slot, identifier = self._slot()
        except OSError as exc:
            return Exchange(None, 0, exc.strerror or str(exc))
        if slot is None:
            return Exchange(None, 0, f"{MAX_SOCKETS * 256} requests in flight to this server already")
        request = build(identifier)  # (a ProxyError goes to the caller; nothing is taken yet)
        future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        waiting = slot.waiting[identifier] = _Waiting(request, secret, answers, require_message_authenticator, future)
        unsent = ""
        try:
            for attempt in range(1, attempts + 1):
                try:
                    slot.sock.sendto(request, self._peer)
                except OSError as exc:  # unreachable now: the next attempt may do better
                    unsent = f"could not send: {exc.strerror or exc}"  # (no route, a firewall: not silence)
                done, _ = await asyncio.wait((future,), timeout=wait)
                if done:
                    return Exchange(future.result(), attempt, request=request)
            if waiting.refused:
                return Exchange(None, attempts, f"answered, but refused: {waiting.refused}", request=request,
                                refused=True)
            return Exchange(None, attempts, unsent, request=request)
        finally:
            slot.waiting.pop(identifier, None)
            slot.done[identifier] = waiting
            if not future.done():
                future.cancel()

    def _slot(self) -> tuple[_Socket | None, int]:
        for slot in self._sockets:
            identifier = slot.free_identifier()
            if identifier is not None:
                return slot, identifier
        if len(self._sockets) >= MAX_SOCKETS or self.closed:
            return None, 0
        slot = self._open()
        return slot, slot.free_identifier() or 0

    def _open(self) -> _Socket:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            if self.source is not None:
                with contextlib.suppress(OSError):  # (gone from the host since: the kernel's choice)
                    sock.bind((self.source, 0))
            slot = _Socket(sock)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, slot)
        except OSError:
            sock.close()
            raise
        self._sockets.append(slot)
        return slot

    def _readable(self, slot: _Socket) -> None:
        while True:
            try:
                data, peer = slot.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if peer[0] != self.address or peer[1] != self.port:
                continue  # not the home server's
            waiting = slot.waiting.get(data[1]) if len(data) >= 20 else None
            if waiting is None or waiting.future.done():
                continue
            reply, refused = checked_answer(data, waiting.request, waiting.secret, waiting.answers,
                                            require_message_authenticator=waiting.require_message_authenticator)
            if reply is not None:
                waiting.future.set_result(reply)
            elif not self._late(slot, data):
                waiting.refused = refused

    @staticmethod
    def _late(slot: _Socket, data: bytes) -> bool:
        """Whether ``data`` answers the request that its Identifier carried before."""
        before = slot.done.get(data[1])
        return before is not None and checked_answer(data, before.request, before.secret, before.answers)[0] is not None

    def close(self) -> None:
        self.closed = True
        loop = asyncio.get_running_loop()
        for slot in self._sockets:
            loop.remove_reader(slot.sock.fileno())
            slot.sock.close()
            for waiting in slot.waiting.values():
                if not waiting.future.done():
                    waiting.future.cancel()
        self._sockets = []
