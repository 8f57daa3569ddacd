"""Disconnect and CoA requests: where they are sent from, what they leave behind."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections import Counter
from typing import cast

import pytest

from ispd.radius.coa import DynamicAuthorizationClient, session_identification
from ispd.radius.codec import Attr, Code, decode, encode_request, encode_response
from ispd.store.models import RadiusSession


def test_the_one_listening_address_that_reaches_the_nas_is_the_source() -> None:
    client = DynamicAuthorizationClient(1.0, 1, ("127.0.0.7", "198.51.100.1", "fe80::1", "2001:db8::1"))
    assert client.source_for("127.0.0.1") == "127.0.0.7"  # loopback for loopback
    assert client.source_for("203.0.113.9") == "198.51.100.1"  # not the loopback listener
    assert client.source_for("2001:db8::9") == "2001:db8::1"  # not the link-local one
    # Several that could: NASes on several networks, each with its own; the route decides.
    assert DynamicAuthorizationClient(1.0, 1, ("198.51.100.1", "203.0.113.1")).source_for("203.0.113.9") is None
    assert DynamicAuthorizationClient(1.0, 1, ()).source_for("203.0.113.9") is None


@pytest.mark.parametrize("nas", ["closed port", "silent"])
async def test_a_request_no_nas_answers_leaves_no_cycle_and_no_socket(nas: str, without_cycle_collection: None) -> None:
    """A Disconnect or CoA to a NAS whose port is closed (ICMP port unreachable on each attempt)
    or that never answers: ispd collects reference cycles rarely, and such requests repeat
    (``coa_retry_interval_seconds``), so none may leave a cycle, or its socket open. Measured
    clean; this keeps it so."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listening.bind(("127.59.0.3", 0))
    address, port = listening.getsockname()
    if nas == "closed port":
        listening.close()
    client = DynamicAuthorizationClient(0.05, 2)
    try:
        await client.send(address, port, b"secret", Code.DISCONNECT_REQUEST, b"")  # (first-use setup is no leak)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        descriptors = len(os.listdir("/proc/self/fd"))
        try:
            for code in (Code.DISCONNECT_REQUEST, Code.COA_REQUEST):
                outcome = await client.send(address, port, b"secret", code, b"")
                assert (outcome.result, outcome.attempts) == ("timeout", 2)
            assert gc.collect() == 0, Counter(type(thing).__name__ for thing in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert len(os.listdir("/proc/self/fd")) == descriptors
    finally:
        listening.close()


def test_a_nas_that_answers_a_later_attempt_is_heard_under_uvloop() -> None:
    """A NAS whose port was closed at the first attempt (rebooting) and answers the next: under
    uvloop (the daemon's loop) the request's connected socket, once it had an ICMP port
    unreachable, never reported the answer, and the Disconnect timed out."""
    import asyncio

    import uvloop

    from ispd.radius.codec import decode, encode_response

    async def scenario() -> None:
        placeholder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        placeholder.close()

        class Nas(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                request = decode(data)
                self.transport.sendto(  # type: ignore[attr-defined]
                    encode_response(Code.DISCONNECT_ACK, request.identifier, request.authenticator, b"", b"secret"),
                    addr)

        async def reboot() -> asyncio.BaseTransport:
            await asyncio.sleep(0.1)  # after the first attempt
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                Nas, local_addr=("127.0.0.1", port))
            return transport

        rebooted = asyncio.ensure_future(reboot())
        outcome = await DynamicAuthorizationClient(0.25, 3).send("127.0.0.1", port, b"secret",
                                                                 Code.DISCONNECT_REQUEST, b"")
        (await rebooted).close()
        assert (outcome.result, outcome.attempts) == ("ack", 2)

    uvloop.run(scenario())


def test_the_nas_is_named_as_it_names_itself() -> None:
    """From a bug hunt: a NAS reporting a NAS-IP-Address outside its client's network has its
    sessions kept under its packets' source, and the Disconnect said NAS-IP-Address = that
    source; accel-ppp answers such a request NAK 403 (NAS identification failed)."""
    session = RadiusSession(7, "127.70.0.2", "s7", "bob", 1.0, 1.0, nas_identifier="bng1", nas_ip_address="198.18.50.1")
    attributes = decode(encode_request(Code.DISCONNECT_REQUEST, 1, session_identification(session, 2.0), b"s")).first
    assert attributes[Attr.NAS_IP_ADDRESS] == bytes((198, 18, 50, 1))
    assert attributes[Attr.NAS_IDENTIFIER] == b"bng1"
    kept_by_it = RadiusSession(8, "2001:db8::2", "s8", "bob", 1.0, 1.0)  # believed: its address is the session's
    attributes = decode(encode_request(Code.DISCONNECT_REQUEST, 1, session_identification(kept_by_it, 2.0), b"s")).first
    assert attributes[Attr.NAS_IPV6_ADDRESS] == bytes.fromhex("20010db8000000000000000000000002")
    assert Attr.NAS_IP_ADDRESS not in attributes


async def test_a_disconnect_reaches_a_nas_on_ipv6() -> None:
    """A NAS heard over IPv6 gets its Disconnect over IPv6 (the lab's fake NAS listens there too)."""
    from tests.lab.fakenas import FakeNas

    with FakeNas("::1", secret=b"secret") as nas:
        outcome = await DynamicAuthorizationClient(1.0, 2).send(nas.host, nas.port, b"secret",
                                                                Code.DISCONNECT_REQUEST, b"")
        assert outcome.result == "ack"
        [request] = nas.wait_for(1)
        assert request.authentic and request.source is not None and request.source[0] == "::1"


async def test_a_nas_whose_answers_do_not_verify_is_not_reported_as_silent() -> None:
    """From a run with a NAS that answered every Disconnect under another shared secret: ispd said
    "timeout (no answer in 3 attempts)", sending the operator after the network rather than the
    secret. radclient says the answer came and why it was refused; so does ispd now."""
    loop = asyncio.get_running_loop()

    class WrongSecret(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, peer: tuple[str, int]) -> None:
            self.transport.sendto(encode_response(data[0] + 1, data[1], data[4:20], b"", b"another"), peer)

    transport, _ = await loop.create_datagram_endpoint(WrongSecret, local_addr=("127.59.0.4", 0))
    try:
        address, port = transport.get_extra_info("sockname")
        outcome = await DynamicAuthorizationClient(0.2, 2).send(address, port, b"secret", Code.DISCONNECT_REQUEST, b"")
    finally:
        transport.close()
    assert (outcome.result, outcome.attempts) == ("error", 2)
    assert "answered, but refused" in outcome.detail and "Response Authenticator" in outcome.detail
