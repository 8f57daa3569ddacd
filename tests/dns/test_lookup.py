"""``ispd dns lookup``: the resolution it runs in its own process is the daemon's."""

from __future__ import annotations

import asyncio
import struct

from ispd.dns.config import DNSConfig
from ispd.dns.lookup import lookup
from ispd.dns.wire import RCode, RRType

SERVER, SOURCE = "127.94.0.53", "127.94.0.54"
ROGUE = "127.94.0.55"


async def test_lookup_asks_from_the_configured_source_address() -> None:
    """The command asked from the kernel's choice of source and the daemon from outgoing_ipv4:
    an upstream whose ACL knows only the configured source answered the one and not the other,
    and the trace showed an answer the daemon never got."""
    seen: list[str] = []

    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            seen.append(addr[0])
            reply = data[:2] + bytes([data[2] | 0x84, 0x83]) + data[4:]  # QR AA, NXDOMAIN
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Server, local_addr=(SERVER, 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        config = DNSConfig.model_validate({
            "enabled": True, "dnssec": {"validation": False},
            "forward_zone": [{"name": "corp.internal", "servers": [f"{SERVER}:{port}"], "stub": True}],
            "resolver": {"outgoing_ipv4": SOURCE, "qname_minimisation": "off"}})
        result = await lookup(config, "www.corp.internal", RRType.A, lambda line: None)
    finally:
        transport.close()
    assert result.rcode == RCode.NXDOMAIN
    assert seen and set(seen) == {SOURCE}


async def test_an_answer_dnslib_cannot_read_is_shown_not_a_crash() -> None:
    """A TXT whose string runs past the record's end, as a broken or hostile server sends it:
    the resolver takes it as it came, and the command ended in "unexpected error: DNSError"
    with the answer, the DNSSEC verdict and the count of queries never shown."""
    bad_txt = b"\x05ab"

    class Server(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            end = data.index(b"\0", 12) + 5  # the question's end
            record = b"\xc0\x0c" + struct.pack("!HHIH", RRType.TXT, 1, 300, len(bad_txt)) + bad_txt
            reply = data[:2] + b"\x84\x00\x00\x01\x00\x01\x00\x00\x00\x00" + data[12:end] + record
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Server, local_addr=(ROGUE, 0))
    lines: list[str] = []
    try:
        port = transport.get_extra_info("sockname")[1]
        config = DNSConfig.model_validate({
            "enabled": True, "dnssec": {"validation": False},
            "forward_zone": [{"name": "corp.internal", "servers": [f"{ROGUE}:{port}"], "stub": True}],
            "resolver": {"qname_minimisation": "off"}})
        result = await lookup(config, "txt.corp.internal", RRType.TXT, lines.append)
    finally:
        transport.close()
    assert result.rcode == RCode.NOERROR
    text = "\n".join(lines)
    assert ";; ANSWER SECTION:\ntxt.corp.internal. 300 IN TXT \\# 3 056162" in text, text
    assert "status: NOERROR" in text and lines[-1].startswith(";; 1 upstream queries in ")
