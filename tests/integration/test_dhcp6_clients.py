"""ispd's DHCPv6 server in one namespace and real DHCPv6 clients (ISC dhclient -6, dhcpcd -6) in
another, directly on one link or through ISC dhcrelay -6 in a namespace between them:

    direct:   cli [link-local] ── veth ── [2001:db8:1::1/64] srv (ispd)
    relayed:  cli ── [2001:db8:2::1/64] relay (dhcrelay -6) [2001:db8:1::2/64] ── [2001:db8:1::1/64] srv

Each client asks for an address (IA_NA) and a delegated prefix (IA_PD). What the clients report
comes from tests/lab/dhcp6clients.py, which is checked against Kea in tests/lab/test_dhcp6_harness.py.
"""

from __future__ import annotations

import ipaddress
import os
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ispd.dhcp6.codec import Message, MessageType, OptionCode, decode
from tests.lab.dhcp6clients import (
    CLIENTS6,
    Binding6,
    DHCPv6Client,
    Relay6,
    client_link6,
    exchange6,
    global_addresses,
    relayed_path6,
    wait_link_local,
)
from tests.lab.dhcpclients import DHCPIspd
from tests.lab.netns import Lab
from tests.lab.process import base_config, eventually

if os.geteuid() != 0:
    pytest.skip("the DHCPv6 lab needs root (network namespaces)", allow_module_level=True)

DNS = ("2001:db8:1::1", "2001:db8:1::53")
SEARCH = ("lab.example", "example.net")
POOLS = {"direct": ("2001:db8:1::100", "2001:db8:1::1ff", "2001:db8:100::/40", 56),
         "relayed": ("2001:db8:2::100", "2001:db8:2::1ff", "2001:db8:200::/40", 60)}


def dhcp6_section(server_if: str, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "enabled": True, "interfaces": [server_if], "preferred_lifetime_seconds": 300, "valid_lifetime_seconds": 600,
        "renew_seconds": 100, "rebind_seconds": 200, "dns_servers": list(DNS), "domain_search": list(SEARCH),
        "decline_quarantine_seconds": 600,
        "subnet": [
            {"name": "direct", "prefix": "2001:db8:1::/64", "interface": server_if,
             "pool": [{"name": "direct-hosts", "range": "2001:db8:1::100 - 2001:db8:1::1ff"}],
             "prefix_pool": [{"name": "direct-homes", "prefix": "2001:db8:100::/40", "delegated_length": 56}]},
            {"name": "relayed", "prefix": "2001:db8:2::/64",
             "pool": [{"name": "relayed-hosts", "range": "2001:db8:2::100 - 2001:db8:2::1ff"}],
             "prefix_pool": [{"name": "relayed-homes", "prefix": "2001:db8:200::/40", "delegated_length": 60}]},
        ],
    }
    section.update(overrides)
    return section


@dataclass
class Net6:
    lab: Lab
    workdir: Path
    kind: str  # direct | relayed
    server_ns: str
    server_if: str
    client_ns: str
    client_if: str
    ispd: DHCPIspd
    relay: Relay6 | None

    def client(self, name: str, **kwargs: Any) -> DHCPv6Client:
        client = CLIENTS6[name](self.lab, self.client_ns, self.client_if, self.workdir, **kwargs)
        client.context = self.servers
        return client

    def servers(self) -> str:
        relay = f"--- dhcrelay -6:\n{self.relay.output()[-3000:]}\n" if self.relay else ""
        counters = "\n".join(line for line in _scrape(self.ispd).splitlines() if line.startswith("ispd_dhcp6_packets"))
        return f"{relay}--- ispd counters:\n{counters}\n--- ispd log:\n{self.ispd.log_text()[-4000:]}"

    def bound(self, pool: str) -> float:
        return self.ispd.metric_in_netns("ispd_dhcp6_pool_assigned", {"pool": pool}) or 0.0


def _scrape(ispd: DHCPIspd) -> str:
    try:
        return ispd._scrape_in_netns()
    except (AssertionError, OSError) as exc:
        return f"(not readable: {exc})"


@pytest.fixture
def make_net6(tmp_path: Path) -> Iterator[Callable[..., Net6]]:
    lab = Lab()
    started: list[DHCPIspd | Relay6] = []

    def make(kind: str = "direct", sections: dict[str, Any] | None = None, spare: tuple[str, ...] = (),
             **overrides: Any) -> Net6:
        """``spare``: interfaces made in the server's namespace (veth pairs, the other end NAMEp)
        and listed in ``interfaces`` after the served one."""
        server_ns, client_ns = lab.namespace("i6srv"), lab.namespace("i6cli")
        for name in spare:
            for args in (("link", "add", name, "type", "veth", "peer", "name", f"{name}p"), ("link", "set", name, "up")):
                result = lab.run(server_ns, "ip", *args)
                assert result.returncode == 0, result.stderr
        relay = None
        if kind == "direct":
            link = client_link6(lab, server_ns, client_ns, "2001:db8:1::1/64")
            server_if, client_if = link.a_end, link.b_end
        else:
            path = relayed_path6(lab, server_ns, lab.namespace("i6rly"), client_ns)
            server_if, client_if = path.server.a_end, path.client_if
            relay = Relay6(path.relay_ns, path.client.a_end, path.server.b_end, path.server_address, tmp_path)
        config = base_config(tmp_path, dhcp6=dhcp6_section(server_if, **overrides), **(sections or {}))
        if kind != "direct":  # the server's interface is an uplink: relays only, no direct clients
            config["dhcp6"]["subnet"][0].pop("interface")
        config["dhcp6"]["interfaces"] = [*config["dhcp6"]["interfaces"], *spare]
        ispd = DHCPIspd(tmp_path, config, netns=server_ns)
        started.append(ispd)
        ispd.start()
        if relay is not None:
            started.append(relay)
            relay.start()
        return Net6(lab, tmp_path, kind, server_ns, server_if, client_ns, client_if, ispd, relay)

    try:
        yield make
    finally:
        for thing in reversed(started):
            if isinstance(thing, DHCPIspd):
                thing.terminate()
            else:
                thing.close()
        lab.close()


def check(net: Net6, client: DHCPv6Client, binding: Binding6) -> None:
    why = f"{client.describe()}\n{net.servers()}"
    first, last, pd_pool, pd_length = POOLS[net.kind]
    assert len(binding.addresses) == 1 and len(binding.prefixes) == 1, why
    address = ipaddress.IPv6Address(binding.addresses[0].address)
    assert ipaddress.IPv6Address(first) <= address <= ipaddress.IPv6Address(last), why
    prefix = binding.prefixes[0].network
    assert prefix.prefixlen == pd_length and prefix.subnet_of(ipaddress.IPv6Network(pd_pool)), why
    for lease in (*binding.addresses, *binding.prefixes):
        assert (lease.preferred, lease.valid) == (300, 600), why
    assert (binding.t1, binding.t2) == (100, 200), why
    assert binding.dns == DNS and binding.search == SEARCH, why
    assert binding.server_id and binding.server_id.startswith("00:04:"), why  # ispd's DUID-UUID


@pytest.mark.parametrize("kind", ["direct", "relayed"])
@pytest.mark.parametrize("name", ["dhclient", "dhcpcd"])
def test_a_client_gets_an_address_and_a_prefix(make_net6: Callable[..., Net6], kind: str, name: str) -> None:
    net = make_net6(kind)
    with net.client(name, na=True, pd=True) as client:
        binding = client.obtain(timeout=10)
        check(net, client, binding)
        assert f"{binding.addresses[0].address}/128" in global_addresses(net.client_ns, net.client_if)
        eventually(lambda: net.bound(f"{kind}-hosts") == 1 and net.bound(f"{kind}-homes") == 1)


@pytest.mark.parametrize("name", ["dhclient", "dhcpcd"])
def test_renew_keeps_the_binding_and_release_ends_it(make_net6: Callable[..., Net6], name: str) -> None:
    net = make_net6()
    with net.client(name, na=True, pd=True) as client:
        first = client.obtain(timeout=10)
        renewed = client.renew(timeout=10)
        why = f"{client.describe()}\n{net.servers()}"
        assert renewed.reason == {"dhcpcd": "RENEW6", "dhclient": "REBIND6"}[name], why
        assert [a.address for a in renewed.addresses] == [a.address for a in first.addresses], why
        assert [p.prefix for p in renewed.prefixes] == [p.prefix for p in first.prefixes], why
        assert client.release(timeout=10) is not None, why
        eventually(lambda: net.bound("direct-hosts") == 0 and net.bound("direct-homes") == 0)


def test_a_binding_outlives_a_restart_of_ispd(make_net6: Callable[..., Net6]) -> None:
    """The bindings are in the store: after a restart the client's Renew keeps its prefix, and
    another client does not get it."""
    net = make_net6()
    with net.client("dhcpcd", na=True, pd=True) as client:
        first = client.obtain(timeout=10)
        net.ispd.terminate()
        net.ispd.start()
        renewed = client.renew(timeout=10)
        assert [p.prefix for p in renewed.prefixes] == [p.prefix for p in first.prefixes], client.describe()
        assert renewed.server_id == first.server_id  # the same DUID after a restart
        client.stop()  # without a Release: the binding stays, and port 546 is free for another client
    net.ispd.terminate()
    net.ispd.start()
    with make_other_client(net) as other:
        second = other.obtain(timeout=10)
        assert second.prefixes[0].prefix != first.prefixes[0].prefix, other.describe()


def make_other_client(net: Net6) -> DHCPv6Client:
    """A second client on the same link: dhclient with a DUID of its own (a DUID-LL of another MAC)."""
    return net.client("dhclient", na=False, pd=True, duid_type="LL",
                      extra_conf='send dhcp6.client-id 00:03:00:01:02:00:5e:66:00:01;')


def _option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def test_garbage_between_good_messages_is_dropped_and_counted(make_net6: Callable[..., Net6]) -> None:
    net = make_net6()
    duid = bytes.fromhex("0003000102005e000077")
    solicit = bytes([1, 0, 0, 7]) + _option(1, duid) + _option(8, bytes(2)) + _option(25, struct.pack("!III", 1, 0, 0))
    garbage = [b"", b"\x01", b"\x01\x00\x00\x01\x00\x01\x00\xff", b"\x0c" + bytes(40), os.urandom(200),
               bytes([3, 0, 0, 1]) + _option(3, b"\x00")]
    replies = exchange6(net.client_ns, net.client_if, [*garbage, solicit], listen=3, transaction_ids=[7], until=1)
    assert len(replies) == 1 and replies[0][0] == 2, (replies, net.servers())  # an Advertise
    dropped = net.ispd.metric_in_netns("ispd_dhcp6_packets_dropped_total") or 0
    assert dropped >= 4, net.servers()
    assert net.ispd.proc is not None and net.ispd.proc.poll() is None


def test_a_named_address_is_in_dns_at_once_and_its_release_takes_it_out(make_net6: Callable[..., Net6]) -> None:
    """The client's FQDN option names its address: AAAA and PTR from ispd's DNS in the same
    process, as for DHCPv4 leases, and the Reply says so in its own FQDN option; and `ispd lease
    list` shows the binding with its name."""
    dns = {"enabled": True, "listen": ["127.0.0.1:53"], "allow": ["127.0.0.0/8"],
           "lease_names": {"domain": "lab.example", "reverse_networks": ["2001:db8:1::/64"], "ttl": 300}}
    net = make_net6(sections={"dns": dns})
    with net.client("dhclient", na=True, pd=False, extra_conf='send fqdn.fqdn "router7";') as client:
        binding = client.obtain(timeout=10)
        address = binding.addresses[0].address
        # RFC 4704 §6: the Reply tells it with its own option 39 that ispd updates DNS (S), the
        # client having left that to itself (S=0: O, overridden); dhclient keeps what it got.
        lease_text = client._lease_text()
        assert "option dhcp6.fqdn 3:7:72:6f:75:74:65:72:37:0;" in lease_text, lease_text
        assert "option fqdn.server-update true;" in lease_text, lease_text

        def dig(*args: str) -> str:
            return net.lab.run(net.server_ns, "dig", "+short", "@127.0.0.1", *args).stdout.strip()

        assert eventually(lambda: dig("router7.lab.example", "AAAA") == address), net.servers()
        assert dig("-x", address) == "router7.lab.example."
        rows = [row for row in net.ispd.leases() if row.get("service") == "dhcp6"]
        assert [(row["prefix"], row["hostname"], row["kind"]) for row in rows] == [(f"{address}/128", "router7", "na")]
        assert client.release(timeout=10) is not None
        eventually(lambda: dig("router7.lab.example", "AAAA") == "")


def test_a_reserved_prefix_goes_to_its_device(make_net6: Callable[..., Net6]) -> None:
    """A business's router, known by its DUID, gets its static /48 (outside every pool) once the
    operator reserves it in a running daemon, under its subscriber."""
    net = make_net6()
    duid = "00:03:00:01:02:00:5e:66:00:01"
    net.ispd.cli("subscriber", "add", "acme")
    net.ispd.cli("reservation", "add", "acme", "--duid", duid, "--prefix6", "2001:db8:ffff::/48")
    with net.client("dhclient", na=False, pd=True, duid_type="LL", extra_conf=f"send dhcp6.client-id {duid};") as client:
        binding = client.obtain(timeout=10)
        assert [p.prefix for p in binding.prefixes] == ["2001:db8:ffff::/48"], f"{client.describe()}\n{net.servers()}"
        rows = [row for row in net.ispd.leases() if row.get("service") == "dhcp6"]
        assert [(row["prefix"], row["subscriber_id"] is not None) for row in rows] == [("2001:db8:ffff::/48", True)], rows
        shown = net.ispd.cli("subscriber", "show", "acme").stdout
        assert "dhcpv6        1" in shown and "  pd 2001:db8:ffff::/48 bound until " in shown, shown


_LEASEQUERY = """
import socket, sys
from ipaddress import IPv6Address
from ispd.dhcp6.codec import Message, MessageType, OptionCode, decode, encode, encode_options, option
source, server, asked = sys.argv[1:4]
question = bytes((1,)) + bytes(16) + encode_options([option(OptionCode.IAADDR, IPv6Address(asked).packed + bytes(8))])
query = Message(MessageType.LEASEQUERY, 0x4C5136, (
    option(OptionCode.CLIENTID, bytes.fromhex("000300010200005eff01")), option(OptionCode.LQ_QUERY, question)))
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.sendto(encode(query), (server, 547))
    print(sock.recv(65535).hex())
"""


def test_a_relay_asks_by_leasequery_which_client_has_a_delegated_prefix(make_net6: Callable[..., Net6]) -> None:
    """RFC 5007 leasequery, as a BNG that lost its routes asks: the relay's host asks ispd about
    an address inside a prefix that dhclient got through dhcrelay -6, and gets the prefix's
    binding (the client's DUID, the prefix and its lifetimes left)."""
    net = make_net6("relayed", leasequery_requesters=["2001:db8:1::2"])
    with net.client("dhclient", na=True, pd=True) as client:
        binding = client.obtain(timeout=10)
        check(net, client, binding)
    assert net.relay is not None
    inside = str(binding.prefixes[0].network.network_address + 0x1234)
    result = net.lab.run(net.relay.ns, sys.executable, "-c", _LEASEQUERY, "2001:db8:1::2", "2001:db8:1::1", inside)
    assert result.returncode == 0, f"{result.stderr}\n{net.servers()}"
    reply = decode(bytes.fromhex(result.stdout.strip()))
    assert isinstance(reply, Message) and reply.type == MessageType.LEASEQUERY_REPLY, reply
    status = next(o.data for o in reply.options if o.code == OptionCode.STATUS_CODE)
    assert status[:2] == bytes(2), status  # Success
    data = decode(bytes([MessageType.REPLY]) + bytes(3)
                  + next(o.data for o in reply.options if o.code == OptionCode.CLIENT_DATA))
    assert isinstance(data, Message) and data.client_id is not None
    prefix = next(o.data for o in data.options if o.code == OptionCode.IAPREFIX)
    preferred, valid, length = struct.unpack_from("!IIB", prefix)
    assert ipaddress.IPv6Network((prefix[9:25], length)) == binding.prefixes[0].network
    assert 0 < preferred <= 300 and 0 < valid <= 600
    assert net.ispd.metric_in_netns("ispd_dhcp6_packets_sent_total", {"type": "leasequery_reply"}) == 1


def _solicit(net: Net6, duid: bytes, xid: int) -> list[bytes]:
    """A raw Solicit for an address from the client's side; the replies."""
    datagram = bytes([1]) + xid.to_bytes(3, "big") + _option(1, duid) + _option(8, bytes(2)) \
        + _option(25, struct.pack("!III", 1, 0, 0))
    return exchange6(net.client_ns, net.client_if, [datagram], listen=3, transaction_ids=[xid], until=1)


def _ip(net: Net6, ns: str, *args: str) -> None:
    result = net.lab.run(ns, "ip", *args)
    assert result.returncode == 0, result.stderr


def _remake_access_link(net: Net6) -> None:
    """The server's access interface deleted and made again under its name (a new index)."""
    _ip(net, net.server_ns, "link", "del", net.server_if)
    _ip(net, net.server_ns, "link", "add", net.server_if, "type", "veth", "peer", "name", net.client_if, "netns",
        net.client_ns)
    _ip(net, net.server_ns, "addr", "add", "2001:db8:1::1/64", "dev", net.server_if, "nodad")
    _ip(net, net.server_ns, "link", "set", net.server_if, "up")
    _ip(net, net.client_ns, "link", "set", net.client_if, "up")
    wait_link_local(net.client_ns, net.client_if)


def test_an_interface_made_again_is_served_again(make_net6: Callable[..., Net6]) -> None:
    """The access interface deleted and made again under its name (a VLAN re-created, say) has a
    new index, and ispd's socket lost its ff02::1:2 membership with the old one: Solicits there
    vanished, uncounted and unlogged, until a restart. ispd listens on it anew by itself."""
    net = make_net6(reclaim_interval_seconds=0.5)
    duid = bytes.fromhex("0003000102005e000078")
    assert len(_solicit(net, duid, 0x601)) == 1, net.servers()
    _remake_access_link(net)
    assert eventually(lambda: len(_solicit(net, duid, 0x602)) == 1, timeout=10), net.servers()
    assert "dhcp6.interfaces.changed" in net.ispd.log_text()


def test_an_interface_made_again_is_served_again_while_another_listed_one_is_missing(
        make_net6: Callable[..., Net6]) -> None:
    """README: an interface deleted and made again is listened on anew within
    reclaim_interval_seconds. It was not while another of dhcp6.interfaces was missing (a VLAN
    taken down for good or for a while): the lookup of every name failed as a whole and the
    follower gave up its tick, so the re-created one's Solicits vanished unseen until the other
    came back or a restart. (DHCPv4's follower already followed the present ones.)"""
    net = make_net6(spare=("spare6",), reclaim_interval_seconds=0.5)
    duid = bytes.fromhex("0003000102005e000079")
    assert len(_solicit(net, duid, 0x611)) == 1, net.servers()
    _ip(net, net.server_ns, "link", "del", "spare6")  # gone for a while
    _remake_access_link(net)
    assert eventually(lambda: len(_solicit(net, duid, 0x612)) == 1, timeout=10), net.servers()
    changed = net.ispd.log_events("dhcp6.interfaces.changed")
    assert changed and changed[-1]["present"] == [net.server_if], net.servers()
    _ip(net, net.server_ns, "link", "add", "spare6", "type", "veth", "peer", "name", "spare6p")  # back: joined again
    _ip(net, net.server_ns, "link", "set", "spare6", "up")
    assert eventually(lambda: net.ispd.log_events("dhcp6.interfaces.changed")[-1]["present"]
                      == sorted([net.server_if, "spare6"]), timeout=5), net.servers()
    assert len(_solicit(net, duid, 0x613)) == 1, net.servers()
    assert "dhcp6.interfaces.join_failed" not in net.ispd.log_text()
