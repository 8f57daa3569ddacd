"""A self-check of the DHCPv6 lab: tests/lab/dhcp6clients.py's real clients (dhclient -6,
dhcpcd -6) and relay (dhcrelay -6) against the reference server, Kea's kea-dhcp6
(tests/lab/kea6.py), directly and relayed. What the clients report here is what a test of ispd's
DHCPv6 server can expect them to report.

    direct:   cli [link-local] ── veth ── [2001:db8:1::1/64] srv (kea-dhcp6)
    relayed:  cli ── [2001:db8:2::1/64] relay (dhcrelay -6) [2001:db8:1::2/64] ── [2001:db8:1::1/64] srv

Kea is installed by ``tools/setup --bench`` only: without it these tests are skipped; the
hand-made datagram test needs no server. All need root (network namespaces).
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.lab.dhcp6clients import (
    CLIENTS6,
    Binding6,
    DHCPv6Client,
    Relay6,
    client_link6,
    exchange6,
    global_addresses,
    relayed_path6,
    veth6,
)
from tests.lab.kea6 import KEA_DHCP6, Kea6, Subnet6, kea6_available, kea6_config
from tests.lab.netns import Lab

if os.geteuid() != 0:
    pytest.skip("the DHCPv6 lab needs root (network namespaces)", allow_module_level=True)

needs_kea = pytest.mark.skipif(not kea6_available(), reason=f"{KEA_DHCP6} is not installed (tools/setup --bench)")

DNS = ("2001:db8:1::1", "2001:db8:1::53")
SEARCH = ("lab.example", "example.net")
DIRECT = Subnet6(subnet="2001:db8:1::/64", pool="2001:db8:1::100-2001:db8:1::1ff", pd_prefix="2001:db8:100::/40",
                 delegated_len=56, id=1)
RELAYED = Subnet6(subnet="2001:db8:2::/64", pool="2001:db8:2::100-2001:db8:2::1ff", pd_prefix="2001:db8:200::/40",
                  delegated_len=60, id=2)


@dataclass
class Net:
    lab: Lab
    workdir: Path
    client_ns: str
    client_if: str
    kea: Kea6
    subnet: Subnet6
    server_if: str
    unicast: str | None
    relay: Relay6 | None = None
    relay_side: tuple[str, str, str] | None = None  # the relay's namespace, upper end, lower address

    def client(self, kind: str, **kwargs: object) -> DHCPv6Client:
        client = CLIENTS6[kind](self.lab, self.client_ns, self.client_if, self.workdir, **kwargs)  # type: ignore[arg-type]
        client.context = self.servers
        return client

    def servers(self) -> str:
        relay = f"--- dhcrelay -6:\n{self.relay.output()[-3000:]}\n" if self.relay else ""
        return f"{relay}{self.kea.describe()}"

    def explain(self, client: DHCPv6Client) -> str:
        return client.describe()

    def restart_kea(self, *, renew: int, rebind: int, preferred: int, valid: int) -> None:
        """Kea again, with other timers and the same leases."""
        self.kea.stop()
        config = kea6_config(self.workdir, self.server_if, [self.subnet], dns_servers=DNS, domain_search=SEARCH,
                             unicast=self.unicast, renew=renew, rebind=rebind, preferred=preferred, valid=valid)
        self.kea = Kea6(self.kea.ns, self.workdir, config).start()


@pytest.fixture(params=["direct", "relayed"])
def net(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Net]:
    if not kea6_available():
        pytest.skip(f"{KEA_DHCP6} is not installed (tools/setup --bench)")
    lab = Lab()
    try:
        server_ns, client_ns = lab.namespace("lb6srv"), lab.namespace("lb6cli")
        if request.param == "direct":
            link = client_link6(lab, server_ns, client_ns, "2001:db8:1::1/64")
            subnet = Subnet6(**{**DIRECT.__dict__, "interface": link.a_end})
            server_if, client_if, relay, unicast, relay_side = link.a_end, link.b_end, None, None, None
        else:
            path = relayed_path6(lab, server_ns, lab.namespace("lb6rly"), client_ns)
            subnet, server_if, client_if = RELAYED, path.server.a_end, path.client_if
            unicast = path.server_address
            relay = Relay6(path.relay_ns, path.client.a_end, path.server.b_end, path.server_address, tmp_path)
            relay_side = (path.relay_ns, path.server.b_end, path.relay_lower_address)
        config = kea6_config(tmp_path, server_if, [subnet], dns_servers=DNS, domain_search=SEARCH,
                             renew=100, rebind=200, preferred=300, valid=600, unicast=unicast)
        net = Net(lab, tmp_path, client_ns, client_if, Kea6(server_ns, tmp_path, config), subnet, server_if, unicast,
                  relay, relay_side)
        try:
            net.kea.start()
            if relay is not None:
                relay.start()
            yield net
        finally:
            if relay is not None:
                relay.close()
            net.kea.stop()
    finally:
        lab.close()


def check_binding(net: Net, client: DHCPv6Client, binding: Binding6, *, na: bool, pd: bool) -> None:
    why = net.explain(client)
    if na:
        assert len(binding.addresses) == 1, why
        lease = binding.addresses[0]
        first, last = (ipaddress.IPv6Address(a) for a in net.subnet.pool.split("-"))
        assert lease.network.prefixlen == 128 and first <= ipaddress.IPv6Address(lease.address) <= last, why
        assert (lease.preferred, lease.valid) == (300, 600), why
    else:
        assert not binding.addresses, why
    if pd:
        assert len(binding.prefixes) == 1, why
        prefix = binding.prefixes[0]
        assert prefix.network.prefixlen == net.subnet.delegated_len, why
        assert prefix.network.subnet_of(ipaddress.IPv6Network(net.subnet.pd_prefix)), why
        assert (prefix.preferred, prefix.valid) == (300, 600), why
    else:
        assert not binding.prefixes, why
    assert binding.dns == DNS and binding.search == SEARCH, why
    assert binding.t1 == 100 and binding.t2 == 200, why
    assert binding.duid and binding.duid.startswith("00:01:00:01:"), why  # DUID-LLT
    assert binding.server_id, why
    # Kea wrote the same: by the client's DUID, the address and the prefix.
    rows = [r for r in net.kea.leases() if r["duid"] == binding.duid]
    assert {r["address"] for r in rows} >= {a.address for a in binding.addresses} | {
        str(p.network.network_address) for p in binding.prefixes}, (rows, why)


@needs_kea
@pytest.mark.parametrize("kind", ["dhclient", "dhcpcd"])
@pytest.mark.parametrize("ask", ["na", "pd", "na+pd"])
def test_a_client_gets_what_it_asks_for(net: Net, kind: str, ask: str) -> None:
    na, pd = "na" in ask.split("+"), "pd" in ask.split("+")
    with net.client(kind, na=na, pd=pd) as client:
        binding = client.obtain(timeout=8)
        check_binding(net, client, binding, na=na, pd=pd)
        assert binding.reason == "BOUND6"
        if na:  # dhclient through our hook, dhcpcd itself
            assert f"{binding.addresses[0].address}/128" in global_addresses(net.client_ns, net.client_if)


@needs_kea
@pytest.mark.parametrize("kind", ["dhclient", "dhcpcd"])
def test_renew_keeps_the_binding_and_release_ends_it(net: Net, kind: str) -> None:
    with net.client(kind, na=True, pd=True) as client:
        first = client.obtain(timeout=8)
        renewed = client.renew(timeout=8)
        # dhcpcd RENEWs; dhclient, started again with its lease file, REBINDs.
        assert renewed.reason == {"dhcpcd": "RENEW6", "dhclient": "REBIND6"}[kind], net.explain(client)
        assert renewed.addresses == first.addresses or (
            [a.address for a in renewed.addresses] == [a.address for a in first.addresses]), net.explain(client)
        assert [p.prefix for p in renewed.prefixes] == [p.prefix for p in first.prefixes], net.explain(client)
        assert renewed.duid == first.duid
        released = client.release(timeout=8)
        assert released is not None, net.explain(client)
        assert client.proc is None or client.proc.poll() is not None, net.explain(client)
        assert f"{first.addresses[0].address}/128" not in global_addresses(net.client_ns, net.client_if)
    assert net.kea.live_leases() == {}, net.kea.leases()


@needs_kea
@pytest.mark.parametrize("kind", ["dhclient", "dhcpcd"])
def test_a_running_client_renews_at_t1(net: Net, kind: str) -> None:
    net.restart_kea(renew=1, rebind=2, preferred=4, valid=6)
    with net.client(kind, na=True, pd=True) as client:
        first = client.obtain(timeout=8)
        renewed = client.wait_binding(after=len(client.events()), timeout=4, reasons={"RENEW6"})
        assert [a.address for a in renewed.addresses] == [a.address for a in first.addresses]
        assert [p.prefix for p in renewed.prefixes] == [p.prefix for p in first.prefixes]
        assert (renewed.t1, renewed.t2) == (1, 2)


@needs_kea
def test_dhcpcd_puts_the_delegated_prefix_on_its_lan(net: Net) -> None:
    lan = veth6(net.lab, net.client_ns, net.client_ns, names=("ln", "lp"))  # a LAN port of the CPE
    with net.client("dhcpcd", na=False, pd=True, pd_interface=lan.a_end) as client:
        binding = client.obtain(timeout=8)
        first_64 = next(binding.prefixes[0].network.subnets(new_prefix=64))
        deadline = time.monotonic() + 3
        while f"{first_64.network_address + 1}/64" not in global_addresses(net.client_ns, lan.a_end):
            assert time.monotonic() < deadline, client.describe()
            time.sleep(0.05)


@needs_kea
def test_kea_answers_a_hand_made_solicit(net: Net) -> None:
    """exchange6 through the real server (and the relay): a SOLICIT gets an ADVERTISE with
    the same transaction id and an address from the pool."""
    duid = bytes.fromhex("0003000102005e000001")  # DUID-LL
    solicit = (bytes([SOLICIT, 0x12, 0x34, 0x56]) + option(1, duid) + option(8, bytes(2))
               + option(3, bytes([0, 0, 0, 7]) + bytes(8)))
    replies = exchange6(net.client_ns, net.client_if, [solicit], listen=3, transaction_ids=[0x123456], until=1)
    assert len(replies) == 1 and replies[0][0] == ADVERTISE, (replies, net.servers())
    assert option(1, duid) in replies[0]
    first = ipaddress.IPv6Address(net.subnet.pool.split("-")[0])
    assert first.packed in replies[0]  # the pool's first address, in an IAADDR


@needs_kea
def test_kea_answers_a_hand_made_relay_forward(net: Net) -> None:
    """exchange6 as a relay agent (from port 547, to the server's address): a Relay-Forward
    with a SOLICIT inside gets a Relay-Reply with an ADVERTISE inside."""
    if net.relay_side is None:
        pytest.skip("a relay's own test")
    assert net.unicast is not None
    relay_ns, upper, link_address = net.relay_side
    duid = bytes.fromhex("0003000102005e000002")
    solicit = bytes([SOLICIT, 0, 0, 9]) + option(1, duid) + option(8, bytes(2)) + option(3, bytes([0, 0, 0, 1]) + bytes(8))
    peer = ipaddress.IPv6Address("fe80::200:5eff:fe00:2")
    forward = (bytes([RELAY_FORW, 0]) + ipaddress.IPv6Address(link_address).packed + peer.packed
               + option(18, b"port-7") + option(9, solicit))
    replies = exchange6(relay_ns, upper, [forward], to=net.unicast, port=547, listen=3, until=1)
    assert len(replies) == 1 and replies[0][0] == RELAY_REPL, (replies, net.servers())
    assert replies[0][18:34] == peer.packed and option(18, b"port-7") in replies[0]
    inner = options(replies[0][34:])[9]
    assert inner[0] == ADVERTISE and inner[1:4] == bytes([0, 0, 9]), replies[0].hex()


SOLICIT, ADVERTISE, RELAY_FORW, RELAY_REPL = 1, 2, 12, 13


def option(code: int, data: bytes) -> bytes:
    return code.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def options(data: bytes) -> dict[int, bytes]:
    found, i = {}, 0
    while i + 4 <= len(data):
        code, length = int.from_bytes(data[i : i + 2], "big"), int.from_bytes(data[i + 2 : i + 4], "big")
        found[code] = data[i + 4 : i + 4 + length]
        i += 4 + length
    return found


def test_a_hand_made_solicit_reaches_the_link(tmp_path: Path) -> None:
    """exchange6 needs no server: a SOLICIT from the client's link-local address to
    ff02::1:2:547 arrives at a listener on the other end, and its answer comes back."""
    lab = Lab()
    try:
        a, b = lab.namespace("lb6a"), lab.namespace("lb6b")
        link = veth6(lab, a, b)
        solicit = bytes([1, 0xAB, 0xCD, 0xEF]) + bytes([0, 8, 0, 2, 0, 0])  # SOLICIT, Elapsed Time 0
        echo = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_BINDTODEVICE,sys.argv[1].encode())\n"
            "i=socket.if_nametoindex(sys.argv[1])\n"
            "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_JOIN_GROUP,socket.inet_pton(socket.AF_INET6,'ff02::1:2')+i.to_bytes(4,'little'))\n"
            "s.bind(('::',547));print('ready',flush=True)\n"
            "d,peer=s.recvfrom(2000);s.sendto(bytes([7])+d[1:4],peer);print(peer[0],flush=True)\n"
        )
        import subprocess
        import sys

        proc = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", echo, link.a_end],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            replies = exchange6(b, link.b_end, [solicit], listen=2.0, transaction_ids=[0xABCDEF], until=1)
            assert replies == [bytes([7, 0xAB, 0xCD, 0xEF])]
            assert proc.stdout.readline().strip().split("%")[0] == link.b_link_local
        finally:
            proc.kill()
            proc.wait(5)
    finally:
        lab.close()
