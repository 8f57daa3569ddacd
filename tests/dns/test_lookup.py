"""``ispd dns lookup``: the resolution it runs in its own process is the daemon's."""

from __future__ import annotations

import asyncio

from ispd.dns.config import DNSConfig
from ispd.dns.lookup import lookup
from ispd.dns.wire import RCode, RRType

SERVER, SOURCE = "127.94.0.53", "127.94.0.54"


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
