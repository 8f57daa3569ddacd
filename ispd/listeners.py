"""What the services' listeners share: TLS server contexts from PEM files, with errors an
operator can act on, and a cap on connections in total and per client address.

Every per-client limit (connections, connection rate, queries per second, failed logins) counts
an IPv6 client by its /64 (``client_key``), as Dovecot's auth penalty counts one by its /48: a
/64 is what one home's LAN or one host is given, and holds 2^64 addresses, each of which would
otherwise start with an allowance of its own.

``ConnectionGate`` counts into any object with ``connections`` and ``refused_connections``
integer attributes (DNS's ``TransportStats``, the mail service's stats), which the services'
collectors read at scrape time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Protocol

from ispd.logs import LogThrottle


class ConnectionStats(Protocol):
    connections: int
    refused_connections: int


CLIENT_PREFIX_LENGTH = 64  # an IPv6 client's addresses counted as one


def client_key(address: str) -> str:
    """What per-client limits count ``address`` (a peer's host text) as: an IPv4 address
    itself, an IPv6 one its /64 ("2001:db8:1:2::/64"; an IPv4-mapped one its IPv4 address, a
    link-local one itself: every host on a link shares fe80::/64)."""
    return _ipv6_client_key(address) if ":" in address else address


@lru_cache(maxsize=4096)
def _ipv6_client_key(address: str) -> str:
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.is_link_local:
        return address
    return str(ipaddress.IPv6Network((int(ip) >> (128 - CLIENT_PREFIX_LENGTH) << (128 - CLIENT_PREFIX_LENGTH),
                                      CLIENT_PREFIX_LENGTH)))


class AuthThrottle:
    """Password guessing, across sessions (SMTP AUTH and IMAP LOGIN alike, the admin API's
    tokens): a client address
    (an IPv6 one by its /64, ``client_key``) with ``per_address`` failures in the window is
    refused without a password check until the window passes; a login that keeps failing gets
    a delay that doubles with each failure (up to ``max_delay``), whoever tries it, which slows
    a distributed guess without locking its owner out for good."""

    def __init__(self, per_address: int, window: float, base_delay: float, max_delay: float = 15.0,
                 max_entries: int = 100_000) -> None:
        self.per_address = per_address
        self.window = window
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_entries = max_entries
        self._addresses: dict[str, deque[float]] = {}
        self._logins: dict[str, deque[float]] = {}

    def _recent(self, table: dict[str, deque[float]], key: str, now: float) -> deque[float] | None:
        seen = table.get(key)
        if seen is None:
            return None
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if not seen:
            del table[key]
            return None
        return seen

    def blocked(self, address: str, now: float) -> bool:
        return self.retry_after(address, now) is not None

    def retry_after(self, address: str, now: float) -> float | None:
        """Seconds until ``address`` is no longer refused; None when it is not."""
        seen = self._recent(self._addresses, client_key(address), now)
        if seen is None or len(seen) < self.per_address:
            return None
        return seen[-self.per_address] + self.window - now

    def delay(self, login: str, now: float) -> float:
        """How long to wait before answering a failed attempt at ``login``."""
        seen = self._recent(self._logins, login.lower(), now)
        failures = len(seen) if seen is not None else 0
        return min(self.max_delay, self.base_delay * float(2 ** max(0, min(failures - 3, 30))))

    def failed(self, address: str, login: str, now: float) -> int:
        """One more failure of ``login`` from ``address``; how many the address has in the window."""
        for table, key in ((self._addresses, client_key(address)), (self._logins, login.lower()[:256])):
            if key not in table and len(table) >= self.max_entries:
                table.clear()  # a flood from very many sources: start over rather than grow
            table.setdefault(key, deque()).append(now)
        seen = self._recent(self._addresses, client_key(address), now)
        return len(seen) if seen is not None else 0

    def succeeded(self, login: str) -> None:
        self._logins.pop(login.lower(), None)


class ConnectionGate:
    def __init__(self, max_total: int, max_per_client: int, stats: ConnectionStats) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self.stats = stats
        self.total = 0
        self.per_client: dict[str, int] = {}

    def admit(self, client: str) -> bool:
        client = client_key(client)
        held = self.per_client.get(client, 0)
        if self.total >= self.max_total or held >= self.max_per_client:
            self.stats.refused_connections += 1
            return False
        self.total += 1
        self.per_client[client] = held + 1
        self.stats.connections += 1
        return True

    def admit_unproven(self, client: str) -> bool:
        """A connection whose client address may be forged (a QUIC Initial before any Retry):
        refused when that client holds its limit of proven connections already, else counted
        in the total only, so that forged ones cannot take a real client's places; its
        handshake then proves the address (``prove``), or it ends (``release_unproven``)."""
        if self.total >= self.max_total or self.per_client.get(client_key(client), 0) >= self.max_per_client:
            self.stats.refused_connections += 1
            return False
        self.total += 1
        self.stats.connections += 1
        return True

    def prove(self, client: str) -> bool:
        """An unproven connection's address is its client's: counted as the client's, or False
        when that is over the per-client limit (the connection is to go: ``release_unproven``)."""
        client = client_key(client)
        held = self.per_client.get(client, 0)
        if held >= self.max_per_client:
            self.stats.refused_connections += 1
            return False
        self.per_client[client] = held + 1
        return True

    def release_unproven(self) -> None:
        self.total -= 1

    def release(self, client: str) -> None:
        client = client_key(client)
        self.total -= 1
        held = self.per_client.get(client, 0) - 1
        if held > 0:
            self.per_client[client] = held
        else:
            self.per_client.pop(client, None)


class AcceptStats(Protocol):
    accept_failures: int


class Acceptor:
    """Accepts connections from listening sockets on the loop's reader callbacks and hands each to
    ``accepted(connection, peer)``, rather than through the loop's own server: out of descriptors
    that (libuv's) accepted each waiting connection and closed it at once, unsaid and uncounted,
    so clients saw resets and operators nothing. Here a failed accept leaves the connections in
    the backlog, and the listener rests ``retry_seconds`` (left watched, the socket stays readable
    and the loop would call back at once, forever: a core at 100 %), with a line (``event``, at
    most once a minute per error) and a count (``stats.accept_failures``)."""

    def __init__(self, accepted: Callable[[socket.socket, Any], None], stats: AcceptStats, log: Any, event: str,
                 name: str, retry_seconds: float = 1.0) -> None:
        self.accepted = accepted
        self.stats = stats
        self.log, self.event, self.name = log, event, name
        self.retry_seconds = retry_seconds
        self._failures_logged = LogThrottle(60)
        self._resting: set[asyncio.TimerHandle] = set()
        self._listening: list[socket.socket] = []

    def listen(self, listening: socket.socket) -> None:
        listening.setblocking(False)
        self._listening.append(listening)
        asyncio.get_running_loop().add_reader(listening.fileno(), self._accept, listening)

    def close(self) -> None:
        """Stops accepting and closes the listening sockets (again: nothing)."""
        for handle in self._resting:
            handle.cancel()
        self._resting.clear()
        loop = asyncio.get_running_loop()
        for listening in self._listening:
            if listening.fileno() != -1:
                loop.remove_reader(listening.fileno())
                listening.close()
        self._listening.clear()

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(64):  # (then the loop's other work gets its turn)
            try:
                connection, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # gone before it was accepted: the next one
                continue
            except OSError as exc:  # EMFILE and friends
                self._rest(listening, exc)
                return
            self.accepted(connection, peer)

    def _rest(self, listening: socket.socket, exc: OSError) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(listening.fileno())
        self.stats.accept_failures += 1
        if self._failures_logged.due(exc.errno, time.monotonic()):
            self.log.error(self.event, listener=self.name, error=str(exc))

        def resume() -> None:
            self._resting.discard(handle)
            if listening.fileno() != -1:
                loop.add_reader(listening.fileno(), self._accept, listening)

        handle = loop.call_later(self.retry_seconds, resume)
        self._resting.add(handle)


def forget_connection_error(reader: asyncio.StreamReader) -> None:
    """Call when a stream connection is over. Its reader keeps the error the connection ended
    with, and once that error has been raised through the coroutines that were reading, its
    traceback holds their frames, which hold the reader: a reference cycle. Only the garbage
    collector frees those, and ispd runs it rarely (``ispd.collector.collect_rarely``), so
    each connection a client reset kept its buffers, and a TLS one its OpenSSL state, until then:
    DoT clients that pipelined queries and reset grew the daemon by about 100 MB per 10,000
    connections. Without the traceback, the reader goes with its connection."""
    error = reader.exception()
    if error is not None:
        error.__traceback__ = None


class CertificateError(Exception):
    """A certificate or key that cannot be used; str() says which file and why."""


def server_tls_context(certificate: Path, private_key: Path, alpn: list[str]) -> ssl.SSLContext:
    """A server context: TLS 1.2 and 1.3 only (RFC 8310 §9 for DNS; RFC 8314 and RFC 9325 for
    mail)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(alpn)
    # An encrypted key: without a password callback OpenSSL asks for the passphrase on the
    # terminal, and a daemon started from one froze whole (every service, the metrics, SIGTERM)
    # at the reload that brought the key; without a terminal it said "Invalid argument".
    load_certificate(partial(context.load_cert_chain, password=_no_passphrase), certificate, private_key)
    return context


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> str:
    raise _EncryptedKey


def load_certificate(load: object, certificate: Path, private_key: Path) -> None:
    """Call ``load(certificate, private_key)`` (ssl's or aioquic's ``load_cert_chain``) and turn
    what goes wrong into a message an operator can act on."""
    for path, what in ((certificate, "certificate"), (private_key, "private key")):
        try:
            with path.open("rb") as f:
                f.read(1)
        except OSError as exc:
            raise CertificateError(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        load(str(certificate), str(private_key))  # type: ignore[operator]
    except _EncryptedKey:
        raise CertificateError(f"the private key {private_key} is encrypted: ispd cannot ask for its passphrase "
                               "(give it the key without one, readable by ispd alone)") from None
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise CertificateError(f"the private key {private_key} does not belong to the certificate "
                                   f"{certificate}") from None
        raise CertificateError(f"cannot use {certificate} with {private_key}: {exc.reason or exc}") from None
    except ValueError as exc:  # aioquic: the key does not match, or a file is not PEM
        raise CertificateError(f"cannot use {certificate} with {private_key}: {exc}") from None
    except Exception as exc:  # cryptography's parse errors have no common base worth naming
        raise CertificateError(f"cannot use {certificate} with {private_key}: {exc}") from None


def bound_socket(host: str, port: int, kind: socket.SocketKind, *, reuse_address: bool = False,
                 reuse_port: bool = False) -> socket.socket:
    """A socket of ``kind`` bound to (host, port); OSError (the bind's, with its errno) when it
    cannot be. Every listener is made here, so that all agree on two things. An IPv6 socket
    takes IPv6 only (IPV6_V6ONLY, as Unbound's and Kea's do): "[::]" means every IPv6 address on
    every port and protocol, never IPv4 on some and not others, and it can sit beside an IPv4
    listener on the same port, which the config check allows. A link-local address with its
    zone ("fe80::1%eth0") is bound on that interface."""
    if ":" not in host:
        sock = socket.socket(socket.AF_INET, kind)
        address: tuple[Any, ...] = (host, port)
    else:
        sock = socket.socket(socket.AF_INET6, kind)
        # The zone name becomes the scope id only through getaddrinfo; a bare bind takes none.
        address = socket.getaddrinfo(host, port, socket.AF_INET6, kind, 0, socket.AI_NUMERICHOST)[0][4] \
            if "%" in host else (host, port)
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


SO_RCVBUFFORCE = 33  # Linux; Python does not name it


def set_receive_buffer(sock: socket.socket, size: int) -> None:
    """A datagram socket's receive buffer of ``size`` bytes, beyond net.core.rmem_max where that
    is allowed (root, CAP_NET_ADMIN), so that a burst does not overflow it; else the limit's."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def check_address_free(host: str, port: int, kind: socket.SocketKind) -> None:
    """OSError (EADDRINUSE) when a socket of ``kind`` holds (host, port) already. SO_REUSEPORT
    lets any process of the same user join a listener unnoticed (a second daemon, an Unbound),
    so the first of a service's processes checks before it opens one, as a plain bind would."""
    # Past TCP connections in TIME_WAIT do not hold the port.
    bound_socket(host, port, kind, reuse_address=kind == socket.SOCK_STREAM).close()


def listening_tcp_socket(host: str, port: int, backlog: int, *, reuse_port: bool = False,
                         first: bool = True) -> socket.socket:
    """A non-blocking TCP socket bound to (host, port) and listening; OSError as bind raises it.
    ``reuse_port``: shared with the other processes of a service that runs several, of which
    this is the ``first`` (which checks that nobody else holds the address) or not."""
    if reuse_port and first:
        check_address_free(host, port, socket.SOCK_STREAM)
    listening = bound_socket(host, port, socket.SOCK_STREAM, reuse_address=True, reuse_port=reuse_port)
    try:
        listening.listen(backlog)
        listening.setblocking(False)
    except OSError:
        listening.close()
        raise
    return listening


# --- UDP on a wildcard address: replies from the address each request came to

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_IN_PKTINFO = struct.Struct("=I4s4s")  # struct in_pktinfo: ifindex, spec_dst, addr
_IN6_PKTINFO = struct.Struct("=16sI")  # struct in6_pktinfo: addr, ifindex
_ANCILLARY_SPACE = socket.CMSG_SPACE(_IN6_PKTINFO.size)
_READS_PER_WAKEUP = 32


class Peer(tuple):  # type: ignore[type-arg]
    """A sender's address as asyncio gives it ((host, port), or the 4-tuple of IPv6), and the
    pktinfo to send the reply with: from the address the request was sent to."""

    pktinfo: tuple[int, int, bytes]


async def open_datagram_listener(protocol_factory: Callable[[], asyncio.DatagramProtocol],
                                 sock: socket.socket) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
    """``loop.create_datagram_endpoint(protocol_factory, sock=sock)``, but on a wildcard address
    (0.0.0.0, [::]) a transport that replies from the address each datagram was sent to. The
    kernel would send it from the address it picks for the route back, which a host with several
    (a VRRP address, a second one on the interface) does not always choose: the NAS or stub
    resolver takes no reply from an address it did not ask (FreeRADIUS does the same; Unbound
    has interface-automatic)."""
    if not ipaddress.ip_address(sock.getsockname()[0].partition("%")[0]).is_unspecified:
        return await asyncio.get_running_loop().create_datagram_endpoint(protocol_factory, sock=sock)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.setblocking(False)
    protocol = protocol_factory()
    transport = AddressedDatagramTransport(sock, protocol)
    return transport, protocol


class AddressedDatagramTransport(asyncio.DatagramTransport):
    """The part of a datagram transport the services use (sendto, close, is_closing,
    get_extra_info), on a socket that tells each datagram's destination (IP_PKTINFO,
    IPV6_PKTINFO). A reply that would block is dropped: the client asks again, as it would
    after any loss."""

    def __init__(self, sock: socket.socket, protocol: asyncio.DatagramProtocol) -> None:
        super().__init__(extra={"socket": sock, "sockname": sock.getsockname()})
        self._sock = sock
        self._protocol = protocol
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._v6 = sock.family == socket.AF_INET6
        protocol.connection_made(self)
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock, protocol = self._sock, self._protocol
        for _ in range(_READS_PER_WAKEUP):
            if self._closing:
                return
            try:
                data, ancillary, _flags, sender = sock.recvmsg(65535, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier reply
                protocol.error_received(exc)
                continue
            peer = Peer(sender)
            peer.pktinfo = self._pktinfo(ancillary)
            protocol.datagram_received(data, peer)

    def _pktinfo(self, ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int, bytes]:
        for level, kind, value in ancillary:
            if self._v6 and level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(value) >= _IN6_PKTINFO.size:
                address, ifindex = _IN6_PKTINFO.unpack_from(value)
                if address[0] == 0xFF:  # sent to a multicast group: answered from the kernel's choice
                    break
                return socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(address, ifindex)
            if not self._v6 and level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= _IN_PKTINFO.size:
                # spec_dst is the local address to answer from: the destination itself, or for a
                # datagram to a broadcast address the interface's own (from a review: answering
                # from the broadcast address failed, "Network is unreachable"). Routed as the
                # kernel routes (ifindex 0).
                _ifindex, spec_dst, _destination = _IN_PKTINFO.unpack_from(value)
                return socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, spec_dst, bytes(4))
        return 0, 0, b""

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if self._closing:
            return
        pktinfo = getattr(addr, "pktinfo", None)
        try:
            if pktinfo is not None and pktinfo[2]:
                self._sock.sendmsg([data], [pktinfo], 0, tuple(addr))
            else:
                self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._protocol.error_received(exc)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0
