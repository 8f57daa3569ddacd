"""Queries to authoritative servers and forwarders: UDP with TCP when asked, hardened per RFC 5452.

Every UDP query gets a socket of its own, bound by the kernel to a random ephemeral port and
connected to the server, so the kernel itself drops datagrams from any other address or port;
the ID is random (from ``secrets``, chosen by the engine). A reply is taken only if it is a
response (QR) with the query's ID and the query's question — byte for byte when 0x20 is on,
ignoring case otherwise; anything else is counted as a mismatch and the wait goes on until the
timeout, so a forger has to guess port, ID and question within one round trip. An ICMP "port
unreachable" (ECONNREFUSED on the connected socket) fails the query at once instead of waiting.

TCP (RFC 7766): one connection per query, the 2-byte length prefix, the same checks.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
import time
from typing import Any

from ispd.dns.resolver import UpstreamError
from ispd.dns.tap import DnstapSink
from ispd.dns.wire import FLAG_QR, read_name
from ispd.listeners import forget_connection_error

_LENGTH = struct.Struct("!H")
# A TCP connection that could not be opened for want of a descriptor or of memory on this host
# (the UDP path fails at socket()): "socket", not the server's fault.
_OUT_OF_SOCKETS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
PORT = 53


def _question_end(query: bytes) -> int:
    return read_name(query, 12)[1] + 4


def _socket_address(host: str, port: int) -> tuple[Any, ...]:
    """(host, port) for a socket call; a link-local address with its zone ("fe80::53%eth1", a
    forward zone's server on the link) through getaddrinfo, as a bare tuple gives no scope id
    and the kernel refuses it (EINVAL)."""
    if "%" not in host:
        return (host, port)
    return socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)[0][4]


class UpstreamTransport:
    def __init__(self, port: int = PORT, source_v4: str | None = None, source_v6: str | None = None,
                 tap: DnstapSink | None = None) -> None:
        self.port = port
        self.tap = tap if tap is not None else DnstapSink()
        self.source_v4 = source_v4
        self.source_v6 = source_v6
        self.mismatched = 0  # replies with the wrong ID or question: forgeries or very late replies
        self.tcp_queries = 0

    async def exchange(self, address: str, query: bytes, *, tcp: bool, wait: float,
                       exact_case: bool, zone: bytes = b"") -> bytes:
        """``address``: an IP address (asked on ``port``), or "address@port" (a forward or stub
        zone's server on a port of its own)."""
        port = self.port
        if "@" in address:
            address, _, port_text = address.partition("@")
            port = int(port_text)
        if tcp:
            self.tcp_queries += 1
            return await self._exchange_tcp(address, port, query, wait, exact_case, zone)
        return await self._exchange_udp(address, port, query, wait, exact_case, zone)

    def _matches(self, query: bytes, reply: bytes, qend: int, exact_case: bool) -> bool:
        if len(reply) < qend or reply[:2] != query[:2] or not reply[2] & (FLAG_QR >> 8):
            return False
        if exact_case:
            return reply[12:qend] == query[12:qend]
        return reply[12:qend].lower() == query[12:qend].lower()

    async def _exchange_udp(self, address: str, port: int, query: bytes, wait: float, exact_case: bool,
                            zone: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        v6 = ":" in address
        try:
            sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            # Only a shortage of descriptors or memory is this host's "socket" failure (the
            # resolver then gives up the client query); an address family the host lacks
            # (EAFNOSUPPORT: IPv6 disabled) fails this server only, and its others are asked.
            raise UpstreamError("socket" if exc.errno in _OUT_OF_SOCKETS else "unreachable", str(exc)) from None
        qend = _question_end(query)
        future: asyncio.Future[bytes] = loop.create_future()
        fd = sock.fileno()

        def readable() -> None:
            while not future.done():
                try:
                    reply = sock.recv(65535)
                except BlockingIOError:
                    return
                except ConnectionRefusedError:
                    future.set_exception(UpstreamError("unreachable", "port unreachable"))
                    return
                except OSError as exc:
                    future.set_exception(UpstreamError("unreachable", exc.strerror or str(exc)))
                    return
                if self._matches(query, reply, qend, exact_case):
                    future.set_result(reply)
                    return
                self.mismatched += 1

        def expired() -> None:
            if not future.done():
                future.set_exception(UpstreamError("timeout", f"no reply in {wait:.2f} s"))

        try:
            source = self.source_v6 if v6 else self.source_v4
            if source:
                sock.bind(_socket_address(source, 0))
            sock.connect(_socket_address(address, port))
            sock.send(query)
        except OSError as exc:
            sock.close()
            raise UpstreamError("unreachable", exc.strerror or str(exc)) from None
        loop.add_reader(fd, readable)
        timer = loop.call_later(wait, expired)
        tap = self.tap
        try:
            if not tap.resolvers:
                return await future
            local, server, sent = sock.getsockname()[:2], (address, port), time.time()
            tap.upstream_query(False, local, server, query, sent, zone)
            reply = await future
            tap.upstream_response(False, local, server, query, sent, reply, zone)
            return reply
        finally:
            timer.cancel()
            loop.remove_reader(fd)
            sock.close()
            # A failed future keeps its error, whose traceback keeps this frame, which kept the
            # future: a cycle per timeout that would wait for ispd's rare garbage collections.
            future = None  # type: ignore[assignment]

    async def _exchange_tcp(self, address: str, port: int, query: bytes, wait: float, exact_case: bool,
                            zone: bytes) -> bytes:
        qend = _question_end(query)
        writer = None
        try:
            async with asyncio.timeout(wait * 2):  # TCP's handshake is one more round trip
                # From the configured source too, as UDP: upstream ACLs and firewalls know that one.
                source = self.source_v6 if ":" in address else self.source_v4
                reader, writer = await asyncio.open_connection(address, port,
                                                               local_addr=(source, 0) if source else None)
                writer.write(_LENGTH.pack(len(query)) + query)
                tap, sent = self.tap, time.time()
                local = writer.get_extra_info("sockname")[:2] if tap.resolvers else ("", 0)
                if tap.resolvers:
                    tap.upstream_query(True, local, (address, port), query, sent, zone)
                while True:
                    (length,) = _LENGTH.unpack(await reader.readexactly(2))
                    reply = await reader.readexactly(length)
                    if self._matches(query, reply, qend, exact_case):
                        if tap.resolvers:
                            tap.upstream_response(True, local, (address, port), query, sent, reply, zone)
                        return reply
                    self.mismatched += 1
        except TimeoutError:
            raise UpstreamError("timeout", "TCP: no reply in time") from None
        except asyncio.IncompleteReadError:
            raise UpstreamError("tcp_closed", "the server closed the connection") from None
        except OSError as exc:
            kind = "socket" if exc.errno in _OUT_OF_SOCKETS else "unreachable"
            raise UpstreamError(kind, exc.strerror or str(exc)) from None
        finally:
            if writer is not None:
                writer.close()
                forget_connection_error(reader)
