"""The proxy's client to a home server (ispd/radius/homeclient.py) against a home server in the
test: concurrent requests share a socket with their own Identifiers, a forged or wrong-secret
answer is ignored, an unanswered request is sent again, then given up."""

from __future__ import annotations

import asyncio
import socket

from ispd.radius.codec import Code, decode, encode_attributes, encode_request, encode_response
from ispd.radius.homeclient import HomeServerClient

SECRET = b"home-secret"
ACCESS = (Code.ACCESS_ACCEPT, Code.ACCESS_REJECT, Code.ACCESS_CHALLENGE)


class Home(asyncio.DatagramProtocol):
    """Answers each request after ``delay``, with ``secret``; counts what it got."""

    def __init__(self, secret: bytes = SECRET, delay: float = 0.0, silent: bool = False,
                 message_authenticator: bool = True, answer_first_only: bool = False) -> None:
        self.secret, self.delay, self.silent = secret, delay, silent
        self.message_authenticator, self.answer_first_only = message_authenticator, answer_first_only
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)
        if self.silent or (self.answer_first_only and len(self.received) > 1):
            return
        request = decode(data)
        reply = encode_response(Code.ACCESS_ACCEPT, request.identifier, request.authenticator, b"", self.secret,
                                message_authenticator=self.message_authenticator)
        asyncio.get_running_loop().call_later(self.delay, self.transport.sendto, reply, addr)  # type: ignore[union-attr]


async def home(protocol: Home) -> tuple[asyncio.DatagramTransport, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # (a burst of 300 overflows the default)
    sock.bind(("127.0.0.1", 0))
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: protocol, sock=sock)
    return transport, sock.getsockname()[1]


def access_request(identifier: int) -> bytes:
    return encode_request(Code.ACCESS_REQUEST, identifier, encode_attributes([(1, b"v@home.example")]), SECRET)


async def test_concurrent_requests_each_get_their_answer() -> None:
    server = Home(delay=0.05)
    transport, port = await home(server)
    client = HomeServerClient("127.0.0.1", port)
    try:
        # (a lost datagram is sent again: a burst may overflow a socket buffer the kernel caps)
        exchanges = await asyncio.gather(*(client.exchange(access_request, SECRET, ACCESS, wait=0.5, attempts=4,
                                                           require_message_authenticator=True) for _ in range(300)))
        assert all(e.reply is not None and e.reply.code == Code.ACCESS_ACCEPT for e in exchanges)
        assert all(e.reply.identifier == e.request[1] for e in exchanges if e.reply is not None)
        assert len(server.received) >= 300 and len(client._sockets) == 2  # 256 Identifiers a socket
    finally:
        client.close()
        transport.close()


async def test_a_wrong_secret_is_no_answer_and_silence_is_sent_again_then_given_up() -> None:
    forger = Home(secret=b"not-the-secret")
    transport, port = await home(forger)
    client = HomeServerClient("127.0.0.1", port)
    try:
        exchange = await client.exchange(access_request, SECRET, ACCESS, wait=0.1, attempts=3,
                                         require_message_authenticator=True)
        assert exchange.reply is None and exchange.attempts == 3
        assert len(forger.received) == 3 and len(set(forger.received)) == 1  # the same packet again
        assert client._sockets[0].waiting == {}  # its Identifier is free again
        # Answered, not silent: the operator is told why each answer was refused.
        assert exchange.refused and exchange.error == ("answered, but refused: an answer whose Response "
                                                       "Authenticator does not verify (another shared secret?)")
    finally:
        client.close()
        transport.close()


async def test_an_answer_without_the_message_authenticator_required_is_refused_and_said_so() -> None:
    """A home server before FreeRADIUS 3.2.5 signs a PAP Access-Accept without
    Message-Authenticator: with require_message_authenticator it is refused, as before, but the
    exchange says so; it read as a silent server, a network fault to look for."""
    server = Home(message_authenticator=False)
    transport, port = await home(server)
    client = HomeServerClient("127.0.0.1", port)
    try:
        exchange = await client.exchange(access_request, SECRET, ACCESS, wait=0.1, attempts=1,
                                         require_message_authenticator=True)
        assert exchange.reply is None and exchange.attempts == 1
        assert exchange.error == "answered, but refused: an answer without Message-Authenticator " \
                                 "(require_message_authenticator)"
        taken = await client.exchange(access_request, SECRET, ACCESS, wait=0.1, attempts=1,
                                      require_message_authenticator=False)
        assert taken.reply is not None and taken.error == ""
        silent = Home(silent=True)
        quiet_transport, quiet_port = await home(silent)
        quiet = HomeServerClient("127.0.0.1", quiet_port)
        try:
            none = await quiet.exchange(access_request, SECRET, ACCESS, wait=0.05, attempts=1,
                                        require_message_authenticator=True)
            assert none.reply is None and none.error == ""  # silence is silence
        finally:
            quiet.close()
            quiet_transport.close()
    finally:
        client.close()
        transport.close()


def test_a_home_server_that_was_down_is_heard_again_under_uvloop() -> None:
    """From a status-check test: the client's sockets were connected, and under uvloop (the
    daemon's loop) a connected UDP socket that got an ICMP port unreachable never reported a
    datagram again: a home server that had been down stayed unheard until a restart."""
    import uvloop

    async def scenario() -> None:
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        placeholder.close()  # nothing listens there: port unreachable
        client = HomeServerClient("127.0.0.1", port)
        try:
            down = await client.exchange(access_request, SECRET, ACCESS, wait=0.2, attempts=1,
                                         require_message_authenticator=True)
            assert down.reply is None
            server = Home()
            protocol_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            protocol_sock.bind(("127.0.0.1", port))
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: server,
                                                                                     sock=protocol_sock)
            try:
                back = await client.exchange(access_request, SECRET, ACCESS, wait=1.0, attempts=2,
                                             require_message_authenticator=True)
                assert back.reply is not None and back.reply.code == Code.ACCESS_ACCEPT
            finally:
                transport.close()
        finally:
            client.close()

    uvloop.run(scenario())


def test_a_datagram_from_anyone_but_the_home_server_is_ignored() -> None:
    """The sockets are not connected: their source is checked instead."""
    async def scenario() -> None:
        server = Home(delay=0.2)
        transport, port = await home(server)
        client = HomeServerClient("127.0.0.1", port)
        try:
            pending = asyncio.ensure_future(client.exchange(access_request, SECRET, ACCESS, wait=1.0, attempts=1,
                                                            require_message_authenticator=False))
            await asyncio.sleep(0.1)  # (the home server answers after 0.2 s)
            assert server.received
            request = decode(server.received[0])
            forged = encode_response(Code.ACCESS_REJECT, request.identifier, request.authenticator, b"", SECRET)
            local = client._sockets[0].sock.getsockname()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                stranger.sendto(forged, local)  # right secret and authenticators, wrong source
            exchange = await pending
            assert exchange.reply is not None and exchange.reply.code == Code.ACCESS_ACCEPT
        finally:
            client.close()
            transport.close()

    asyncio.run(scenario())


async def test_a_request_that_cannot_be_sent_says_why() -> None:
    """A send that fails (no route to the home server, a firewall's reject; here port 0) was
    suppressed, and the server read as silent with no error: the kernel's reason is the
    exchange's error now, and it is not an answer refused."""
    client = HomeServerClient("127.0.0.1", 0)
    try:
        exchange = await client.exchange(access_request, SECRET, ACCESS, wait=0.05, attempts=2,
                                         require_message_authenticator=True)
        assert exchange.reply is None and exchange.attempts == 2
        assert exchange.error == "could not send: Invalid argument" and not exchange.refused
    finally:
        client.close()


async def test_a_late_answer_to_an_earlier_request_is_not_told_as_a_refusal() -> None:
    """A slow home server's answer to a request given up on comes while its Identifier carries
    the next request, whose check it fails: ignored, as before, and not the next request's
    "refused" (another shared secret?) when that one goes unanswered."""
    server = Home(delay=0.5, answer_first_only=True)
    transport, port = await home(server)
    client = HomeServerClient("127.0.0.1", port)
    try:
        first = await client.exchange(access_request, SECRET, ACCESS, wait=0.1, attempts=1,
                                      require_message_authenticator=True)
        assert first.reply is None
        client._sockets[0].next_identifier = first.request[1]  # the next request takes its Identifier
        second = await client.exchange(access_request, SECRET, ACCESS, wait=0.9, attempts=1,
                                       require_message_authenticator=True)
        assert second.request[1] == first.request[1] and len(server.received) == 2
        assert second.reply is None and second.error == "" and not second.refused
    finally:
        client.close()
        transport.close()
