"""The upstream transport's own promises (ispd/dns/upstream.py), against servers on loopback."""

from __future__ import annotations

import asyncio
import errno
import shutil
import socket
import struct
import weakref
from typing import Any

import pytest

from ispd.dns.resolver import UpstreamError
from ispd.dns.upstream import UpstreamTransport
from ispd.dns.wire import encode_query
from tests.dns.test_streams import reset
from tests.test_listeners import _run_in_namespace


def _reply_to(query: bytes) -> bytes:
    return query[:2] + bytes([query[2] | 0x80, 0]) + query[4:]


@pytest.mark.parametrize("tcp", [False, True])
async def test_queries_leave_from_the_configured_source_over_udp_and_tcp(tcp: bool) -> None:
    # From a review: outgoing_ipv4/ipv6 held for UDP only; the TCP retry after a truncated reply
    # left from whatever address the kernel chose, past the upstream's ACL.
    seen: list[str] = []
    loop = asyncio.get_running_loop()

    class UDPServer(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            seen.append(addr[0])
            self.transport.sendto(_reply_to(data), addr)  # type: ignore[attr-defined]

    async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peername")[0])
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = _reply_to(await reader.readexactly(length))
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()

    udp, _ = await loop.create_datagram_endpoint(UDPServer, local_addr=("127.0.0.1", 0))
    port = udp.get_extra_info("sockname")[1]
    server = await asyncio.start_server(serve_tcp, "127.0.0.1", port)
    try:
        upstream = UpstreamTransport(port=port, source_v4="127.0.0.2")
        query = encode_query(0x1234, b"\x07example\x04test\x00", 1, 1, rd=False)
        reply = await upstream.exchange("127.0.0.1", query, tcp=tcp, wait=2.0, exact_case=False)
        assert reply[:2] == query[:2]
        assert seen == ["127.0.0.2"]
    finally:
        udp.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("tcp", [False, True])
async def test_a_failed_query_leaves_no_cycle_behind(tcp: bool, without_cycle_collection: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout (UDP: a server that never answers) or a reset (TCP): the error went into a
    future, or the reader, and its traceback kept the frame that held them - a cycle per failed
    query, which ispd's rare garbage collections left for long (a dead server is asked often)."""
    loop = asyncio.get_running_loop()
    silent, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    port = silent.get_extra_info("sockname")[1]

    async def reset_after_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        reset(writer)

    server = await asyncio.start_server(reset_after_length, "127.0.0.1", port)
    gone: list[weakref.ref[object]] = []  # the error, and over TCP the reader that kept the reset
    open_connection = asyncio.open_connection

    async def recording_open_connection(*args: Any, **kwargs: Any) -> tuple[asyncio.StreamReader, Any]:
        reader, writer = await open_connection(*args, **kwargs)
        gone.append(weakref.ref(reader))
        return reader, writer

    monkeypatch.setattr(asyncio, "open_connection", recording_open_connection)

    async def ask() -> None:
        query = encode_query(0x1234, b"\x07example\x04test\x00", 1, 1, rd=False)
        try:
            await UpstreamTransport(port=port).exchange("127.0.0.1", query, tcp=tcp, wait=0.2, exact_case=False)
        except UpstreamError as exc:
            gone.append(weakref.ref(exc))

    try:
        await ask()
        await asyncio.sleep(0)  # (the loop's handle that resumed this task holds the future until the next step)
    finally:
        silent.close()
        server.close()
        await server.wait_closed()
    assert len(gone) == (2 if tcp else 1)
    assert [thing() for thing in gone] == [None] * len(gone)


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_a_link_local_server_with_its_zone_is_asked_over_udp_and_tcp() -> None:
    # From a bug hunt: check-config took a forward zone's server "[fe80::2%eth1]:5300", but every
    # query to it failed at once with "unreachable Invalid argument": the UDP socket was
    # connected to a bare (address, port), which gives a link-local address no scope id.
    assert _run_in_namespace(["fe80::53/64"], """
        import asyncio, struct
        from ispd.dns.upstream import UpstreamTransport
        from ispd.dns.wire import encode_query

        def reply_to(query):
            return query[:2] + bytes([query[2] | 0x80, 0]) + query[4:]

        class UDPServer(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                self.transport.sendto(reply_to(data), addr)

        async def serve_tcp(reader, writer):
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = reply_to(await reader.readexactly(length))
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
            writer.close()

        async def main():
            loop = asyncio.get_running_loop()
            udp, _ = await loop.create_datagram_endpoint(UDPServer, local_addr=("fe80::53%lo", 0))
            port = udp.get_extra_info("sockname")[1]
            server = await asyncio.start_server(serve_tcp, "fe80::53%lo", port)
            query = encode_query(0x1234, b"\\x07example\\x04test\\x00", 1, 1, rd=True)
            for tcp in (False, True):
                reply = await UpstreamTransport().exchange(f"fe80::53%lo@{port}", query, tcp=tcp, wait=2.0,
                                                           exact_case=False)
                print(reply[:2] == query[:2])
            udp.close()
            server.close()

        asyncio.run(main())
    """) == ["True", "True"]


@pytest.mark.parametrize("tcp", [False, True])
async def test_out_of_descriptors_is_a_socket_failure_over_udp_and_tcp(tcp: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """EMFILE is this host's failure, which the resolver does not hold against the server
    ("socket"); over TCP it came out as "unreachable", a server's."""
    def no_descriptor(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    async def no_connection(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socket", no_descriptor)
    monkeypatch.setattr(asyncio, "open_connection", no_connection)
    query = encode_query(0x1234, b"\x07example\x04test\x00", 1, 1, rd=False)
    with pytest.raises(UpstreamError) as failure:
        await UpstreamTransport(port=53).exchange("127.0.0.1", query, tcp=tcp, wait=0.2, exact_case=False)
    assert failure.value.kind == "socket"


def test_an_outgoing_address_this_host_does_not_have_is_warned_of() -> None:
    """From an IPv6 lab: outgoing_ipv6 set to an address the host lacks was taken silently; every
    IPv6 upstream failed at bind() ("unreachable", each server set aside) and IPv6-only zones
    answered SERVFAIL, with nothing in check-config or the log to say why."""
    from ispd.configtypes import ConfigWarning
    from ispd.dns.config import DNSConfig, outgoing_address_warning

    config = DNSConfig.model_validate({"enabled": True, "resolver": {"outgoing_ipv4": "127.94.0.54",
                                                                     "outgoing_ipv6": "2001:db8:77::1"}})
    warning = outgoing_address_warning(config)
    assert warning is not None and "resolver.outgoing_ipv6 = 2001:db8:77::1" in warning
    assert "outgoing_ipv4" not in warning  # (any 127/8 address is this host's)
    assert ConfigWarning("dns.outgoing_address_unusable", warning) in config.warnings()
    usable = DNSConfig.model_validate({"enabled": True, "resolver": {"outgoing_ipv4": "127.94.0.54"}})
    assert outgoing_address_warning(usable) is None


@pytest.mark.parametrize("tcp", [False, True])
async def test_an_address_family_this_host_lacks_is_no_socket_shortage(tcp: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """socket(AF_INET6) on a host booted with ipv6.disable=1, or under a unit's
    RestrictAddressFamilies= without AF_INET6, fails with EAFNOSUPPORT. Since the resolver ends
    the whole client query at the first "socket" failure (EMFILE: every server fails alike), the
    UDP path's "socket" for any socket() error answered SERVFAIL as soon as an IPv6 server was
    chosen, where the zone's IPv4 servers would have answered."""
    def no_family(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    async def no_connection(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    monkeypatch.setattr(socket, "socket", no_family)
    monkeypatch.setattr(asyncio, "open_connection", no_connection)
    query = encode_query(0x1234, b"\x07example\x04test\x00", 1, 1, rd=False)
    with pytest.raises(UpstreamError) as failure:
        await UpstreamTransport(port=53).exchange("2001:db8::53", query, tcp=tcp, wait=0.2, exact_case=False)
    assert failure.value.kind == "unreachable"
