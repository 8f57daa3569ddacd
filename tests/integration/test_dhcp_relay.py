"""Relayed DHCP: client — relay — server, each in its own namespace.

    cli [none] ── veth ── [198.18.1.1/24] relay [198.18.0.2/24] ── veth ── [198.18.0.1/24] srv (ispd)

The relay is ISC dhcrelay with option 82 insertion (-a): it sets giaddr to 198.18.1.1 and the
circuit-id to the name of its client-side interface, and adds no remote-id. ispd serves the
relayed clients from 198.18.1.0/24 because giaddr is inside it, and direct clients on its own
link from 198.18.0.0/24.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from ispd.dhcp.codec import BOOTREQUEST, FLAG_BROADCAST, DHCPPacket, decode, encode
from ispd.dhcp.identifiers import mac_text
from ispd.dhcp.options import DHCPMessageType, Option, decode_relay_agent_info, decode_u32
from tests.lab.dhcpclients import CLIENTS, BNGRelay, DHCPClient, DHCPIspd, Relay, Udhcpc, client_link, exchange
from tests.lab.netns import Lab
from tests.lab.process import base_config, eventually

SERVER, RELAY_UP, RELAY_DOWN = "198.18.0.1", "198.18.0.2", "198.18.1.1"
RESERVED = "198.18.1.42"
CLIENT_MAC = "02:00:5e:12:02:01"


def dhcp_section(interface: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "interfaces": [interface],
        "lease_seconds": 3600,
        "decline_quarantine_seconds": 600,
        "subnet": [
            {
                "network": "198.18.0.0/24",
                "interface": interface,
                "routers": [SERVER],
                "dns_servers": [SERVER],
                "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.199"}],
            },
            {
                "network": "198.18.1.0/24",
                "routers": [RELAY_DOWN],
                "dns_servers": [SERVER, RELAY_UP],
                "domain_name": "relayed.lab.example",
                "pool": [{"name": "relayed", "range": "198.18.1.100 - 198.18.1.150"}],
            },
        ],
    }


@dataclass
class RelayedLan:
    lab: Lab
    workdir: Path
    client_ns: str
    client_if: str
    circuit_id: str  # the relay's client-side interface
    relay: Relay
    ispd: DHCPIspd

    def client(self, kind: str) -> DHCPClient:
        return CLIENTS[kind](self.lab, self.client_ns, self.client_if, self.workdir)

    def explain(self, *clients: DHCPClient) -> str:
        log = self.ispd.log_text().splitlines()
        return "\n".join([*(c.describe() for c in clients), "--- dhcrelay:", self.relay.output()[-3000:],
                          self.ispd.packet_counters(), "--- ispd.log (last 40 lines):", *log[-40:]])


@pytest.fixture
def make_relayed(netlab: Lab, tmp_path: Path) -> Iterator[Callable[..., RelayedLan]]:
    """``make_relayed(before_start)``: ``before_start(ispd)`` runs once the config is written and
    before ispd starts (to prepare the store with the CLI). ``bng_relay``: our BNG-like relay
    (``BNGRelay``'s keywords) in place of dhcrelay."""
    started: list[DHCPIspd | Relay] = []

    def make(before_start: Callable[[DHCPIspd, str], None] | None = None, *,
             bng_relay: dict[str, Any] | None = None) -> RelayedLan:
        server_ns, relay_ns, client_ns = netlab.namespace("srv"), netlab.namespace("rly"), netlab.namespace("cli")
        server_if, relay_up = netlab.link(server_ns, f"{SERVER}/24", relay_ns, f"{RELAY_UP}/24")
        relay_down, client_if = client_link(netlab, relay_ns, f"{RELAY_DOWN}/24", client_ns, CLIENT_MAC)
        # The server answers the relay at giaddr; renewing clients reach the server through it.
        netlab.run(server_ns, "ip", "route", "add", "198.18.1.0/24", "via", RELAY_UP).check_returncode()
        netlab.run(relay_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1").check_returncode()
        ispd = DHCPIspd(tmp_path, base_config(tmp_path, dhcp=dhcp_section(server_if)), netns=server_ns)
        started.append(ispd)
        if before_start is not None:
            ispd.write_config()
            before_start(ispd, relay_down)
        ispd.start()
        relay = Relay(relay_ns, relay_up, relay_down, SERVER, tmp_path) if bng_relay is None else \
            BNGRelay(relay_ns, relay_up, relay_down, SERVER, tmp_path, downstream_address=RELAY_DOWN, **bng_relay)
        started.append(relay)
        relay.start()
        return RelayedLan(netlab, tmp_path, client_ns, client_if, relay_down, relay, ispd)

    yield make
    for process in reversed(started):
        if isinstance(process, Relay):
            process.close()
        else:
            process.kill()


def in_relayed_pool(address: str | None) -> bool:
    return address is not None and IPv4Address("198.18.1.100") <= IPv4Address(address) <= IPv4Address("198.18.1.150")


@pytest.mark.parametrize("kind", list(CLIENTS))
def test_a_relayed_client_is_served_from_the_relays_subnet(make_relayed: Callable[..., RelayedLan],
                                                            kind: str) -> None:
    lan = make_relayed()
    with lan.client(kind) as client:
        event = client.obtain()
        assert event is not None and event.bound, f"no lease\n{lan.explain(client)}"
        assert in_relayed_pool(event.address), event
        assert event.mask == "255.255.255.0"
        assert event.routers == (RELAY_DOWN,)
        assert event.dns == (SERVER, RELAY_UP)
        assert event.domain == "relayed.lab.example"
        assert event.server_id == SERVER
        assert event.lease_seconds == 3600
        address = event.address
        assert address is not None
        lease = lan.ispd.lease_of(address)
        assert lease is not None and lease["state"] == "bound", lan.explain(client)
        assert lease["pool"] == "relayed"
        # The relay's option 82, as stored with the lease.
        assert lease["circuit_id"] == lan.circuit_id
        assert lease["remote_id"] is None
        # Renewal: a unicast REQUEST routed through the relay host (udhcpc, dhcpcd), or a
        # relayed INIT-REBOOT (dhclient restarted).
        renewed = client.renew()
        assert renewed is not None and renewed.bound and renewed.address == address, lan.explain(client)
        assert client.release() is not None, lan.explain(client)
        eventually(lambda: (lan.ispd.lease_of(address) or {}).get("state") == "released", timeout=5)


def test_lease_list_shows_the_circuit_id(make_relayed: Callable[..., RelayedLan]) -> None:
    lan = make_relayed()
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        event = client.obtain()
        assert event is not None and event.bound, lan.explain(client)
    table = lan.ispd.cli("lease", "list").stdout
    row = next((line for line in table.splitlines() if line.startswith(f"{event.address} ")), "")
    assert lan.circuit_id in row.split(), table


def _add_alice_with_reservation(ispd: DHCPIspd, circuit_id: str) -> None:
    ispd.cli("subscriber", "add", "alice", "--password-stdin", input="correct horse battery staple\n")
    ispd.cli("reservation", "add", "alice", "--circuit-id", circuit_id, "--address", RESERVED)


def _subscriber_id(ispd: DHCPIspd, username: str) -> int:
    subscribers = json.loads(ispd.cli("subscriber", "list", "--json").stdout)
    return int(next(s["id"] for s in subscribers if s["username"] == username))


def test_a_reservation_by_circuit_id_gives_the_reserved_address(make_relayed: Callable[..., RelayedLan]) -> None:
    lan = make_relayed(before_start=_add_alice_with_reservation)
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        event = client.obtain()
        assert event is not None and event.bound, lan.explain(client)
        assert event.address == RESERVED, lan.explain(client)
        assert event.routers == (RELAY_DOWN,)
    lease = lan.ispd.lease_of(RESERVED)
    assert lease is not None and lease["state"] == "bound"
    assert lease["circuit_id"] == lan.circuit_id
    assert lease["subscriber_id"] == _subscriber_id(lan.ispd, "alice")
    assert [le["address"] for le in lan.ispd.leases()] == [RESERVED]
    alices = json.loads(lan.ispd.cli("lease", "list", "--subscriber", "alice", "--json").stdout)
    assert [le["address"] for le in alices] == [RESERVED]


def test_a_renewal_past_the_relay_stays_on_its_line(make_relayed: Callable[..., RelayedLan]) -> None:
    """udhcpc renews by unicast, routed through the relay host but not by dhcrelay: no option
    82. It is still alice's line: a fixed address reserved for it is renewed (it was NAKed as
    someone else's), a pool lease stays hers, and once she is suspended its renewal is refused
    (it went through as an unknown client's: her line kept normal service)."""
    def naks() -> float:
        return lan.ispd.metric_in_netns("ispd_dhcp_packets_sent_total", {"type": "nak"}) or 0.0

    lan = make_relayed(before_start=_add_alice_with_reservation)
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        event = client.obtain()
        assert event is not None and event.address == RESERVED, lan.explain(client)
        renewed = client.renew()
        assert renewed is not None and renewed.address == RESERVED and naks() == 0, lan.explain(client)
    # The same line on a reservation without a fixed address: a pool lease.
    reservation = json.loads(lan.ispd.cli("reservation", "list", "--json").stdout)[0]["id"]
    lan.ispd.cli("reservation", "delete", str(reservation))
    lan.ispd.cli("reservation", "add", "alice", "--circuit-id", lan.circuit_id)
    time.sleep(1)  # (the daemon follows the store within its poll interval)
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        event = client.obtain()
        assert event is not None and in_relayed_pool(event.address), lan.explain(client)
        renewed = client.renew()
        assert renewed is not None and renewed.address == event.address, lan.explain(client)
        lease = lan.ispd.lease_of(event.address or "")
        assert lease is not None and lease["subscriber_id"] == _subscriber_id(lan.ispd, "alice"), lease
        assert lease["circuit_id"] == lan.circuit_id
        lan.ispd.cli("subscriber", "suspend", "alice")
        before = naks()

        def refused() -> bool:
            client.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
            time.sleep(0.5)
            return naks() > before

        eventually(refused, timeout=10, interval=0.5)  # once the daemon has seen the suspension


def test_a_reservation_added_while_running_applies_to_the_next_discover(
        make_relayed: Callable[..., RelayedLan]) -> None:
    lan = make_relayed()
    _add_alice_with_reservation(lan.ispd, lan.circuit_id)

    # The daemon learns of the reservation from the store within a poll interval; a DISCOVER
    # sent through the relay (which adds the circuit-id) shows when it has. It carries the
    # identity udhcpc will use (chaddr and client-id 01+MAC), so that the offer held for it
    # is the one udhcpc then gets.
    xids = itertools.count(0x4001)
    mac = bytes.fromhex(CLIENT_MAC.replace(":", ""))

    def offered() -> bool:
        xid = next(xids)
        discover = encode(DHCPPacket(op=BOOTREQUEST, xid=xid, chaddr=mac, flags=FLAG_BROADCAST, options=(
            (Option.MESSAGE_TYPE, bytes([DHCPMessageType.DISCOVER])), (Option.CLIENT_ID, b"\x01" + mac))))
        got = [decode(d) for d in exchange(lan.client_ns, lan.client_if, [discover], xids=[xid], until=1, listen=2)]
        return bool(got) and got[0].message_type == DHCPMessageType.OFFER and str(got[0].yiaddr) == RESERVED

    eventually(offered, timeout=5, interval=0.2)
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        event = client.obtain()
        assert event is not None and event.address == RESERVED, lan.explain(client)


@pytest.mark.parametrize("override", [True, False])
def test_with_a_server_id_override_renewals_go_through_the_relay(make_relayed: Callable[..., RelayedLan],
                                                                  override: bool) -> None:
    """RFC 5107: a relay that puts its own address in option 82 sub-option 11 is named as the
    server in the replies, so udhcpc unicasts its renewal to the relay, which relays it (a BNG
    sees every renewal). Without the override the renewal goes to ispd's own address, past the
    relay (only routed by it)."""
    lan = make_relayed(bng_relay={"override": override})
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        event = client.obtain()
        assert event is not None and event.bound and in_relayed_pool(event.address), lan.explain(client)
        assert event.server_id == (RELAY_DOWN if override else SERVER), lan.explain(client)
        relayed_before = lan.relay.output().count(f"request REQUEST from {event.address}")
        renewed = client.renew()
        assert renewed is not None and renewed.bound and renewed.address == event.address, lan.explain(client)
        relayed = lan.relay.output().count(f"request REQUEST from {event.address}") - relayed_before
        assert relayed == (1 if override else 0), lan.explain(client)
        lease = lan.ispd.lease_of(event.address)
        assert lease is not None and lease["circuit_id"] == lan.circuit_id, lease


_ASK = """
import socket, sys
from ipaddress import IPv4Address
from ispd.dhcp.codec import BOOTREQUEST, DHCPPacket, decode, encode
from ispd.dhcp.options import DHCPMessageType, Option
giaddr, server, ciaddr, mac, wanted = sys.argv[1:6]
chaddr = bytes.fromhex(mac.replace(":", ""))
asked = ((Option.PARAMETER_REQUEST_LIST, bytes(int(c) for c in wanted.split(","))),) if wanted else ()
query = DHCPPacket(op=BOOTREQUEST, xid=0x4C51, htype=1 if chaddr else 0, hlen=len(chaddr),
                   chaddr=chaddr.ljust(16, b"\\0"), ciaddr=IPv4Address(ciaddr), giaddr=IPv4Address(giaddr),
                   options=((Option.MESSAGE_TYPE, bytes((DHCPMessageType.LEASEQUERY,))), *asked))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind((giaddr, 67))  # a relay hears the server's answers on the server port
    sock.settimeout(5)
    sock.sendto(encode(query), (server, 67))
    print(sock.recv(4096).hex())
"""


def test_a_relay_that_lost_its_table_asks_by_leasequery(make_relayed: Callable[..., RelayedLan]) -> None:
    """RFC 4388: the relay host (a BNG after a restart) asks what ispd knows of an address and
    of a client's MAC: the lease, its time left and the option 82 the relay sent at the grant;
    an address of ispd's with no lease is unassigned. Asked from the relay's namespace, to ispd
    in its own, through the real sockets."""
    def allow_the_relay(ispd: DHCPIspd, circuit_id: str) -> None:
        ispd.config["dhcp"]["leasequery_requesters"] = [RELAY_UP]
        ispd.write_config()

    lan = make_relayed(before_start=allow_the_relay)
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        event = client.obtain()
        assert event is not None and event.bound and event.address is not None, lan.explain(client)
    lan.relay.close()  # restarted: port 67 on its host is free for the question

    def ask(ciaddr: str = "0.0.0.0", mac: str = "", wanted: str = "") -> DHCPPacket:
        result = lan.lab.run(lan.relay.ns, sys.executable, "-c", _ASK, RELAY_UP, SERVER, ciaddr, mac, wanted)
        assert result.returncode == 0, f"{result.stderr}\n{lan.ispd.packet_counters()}"
        return decode(bytes.fromhex(result.stdout.strip()))

    by_address = ask(ciaddr=event.address)
    assert by_address.message_type is DHCPMessageType.LEASEACTIVE, lan.ispd.packet_counters()
    assert (str(by_address.ciaddr), mac_text(by_address.hw_address)) == (event.address, CLIENT_MAC)
    assert 3500 <= decode_u32(by_address.option(Option.LEASE_TIME) or b"") <= 3600
    agent = decode_relay_agent_info(by_address.option(Option.RELAY_AGENT_INFO) or b"")
    assert agent.circuit_id == lan.circuit_id.encode()
    # RFC 4388 §6.4.2: T1 and T2 (the time left until each) with the lease time, and the options
    # the requester lists (its Parameter Request List), as the client was given them.
    assert 1700 <= decode_u32(by_address.option(Option.RENEWAL_TIME) or b"") <= 1800
    assert 3050 <= decode_u32(by_address.option(Option.REBINDING_TIME) or b"") <= 3150
    assert by_address.option(Option.ROUTERS) is None  # not asked for
    by_mac = ask(mac=CLIENT_MAC, wanted="1,3,6")
    assert (by_mac.message_type, str(by_mac.ciaddr)) == (DHCPMessageType.LEASEACTIVE, event.address)
    assert by_mac.option(Option.SUBNET_MASK) == IPv4Address("255.255.255.0").packed
    assert by_mac.option(Option.ROUTERS) == IPv4Address(RELAY_DOWN).packed
    assert by_mac.option(Option.DNS_SERVERS) == IPv4Address(SERVER).packed + IPv4Address(RELAY_UP).packed
    free = ask(ciaddr="198.18.1.149")
    assert free.message_type is DHCPMessageType.LEASEUNASSIGNED
    assert lan.ispd.metric_in_netns("ispd_dhcp_packets_received_total", {"type": "leasequery"}) == 3
    assert lan.ispd.metric_in_netns("ispd_dhcp_packets_sent_total", {"type": "leaseactive"}) == 2


_RELAY_ON_ITS_OWN_PORT = """
import socket, sys
from ispd.dhcp.codec import BOOTREQUEST, FLAG_BROADCAST, DHCPPacket, encode
from ispd.dhcp.options import DHCPMessageType, Option
from ipaddress import IPv4Address
giaddr, server, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
agent = bytes((1, 4)) + b"bng1" + bytes((19, 0))  # circuit-id, relay source port (RFC 8357)
discover = DHCPPacket(op=BOOTREQUEST, xid=0x8357, hops=1, chaddr=bytes.fromhex("02005e128357"),
                      flags=FLAG_BROADCAST, giaddr=IPv4Address(giaddr),
                      options=((Option.MESSAGE_TYPE, bytes((DHCPMessageType.DISCOVER,))),
                               (Option.RELAY_AGENT_INFO, agent)))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.bind((giaddr, port))
    sock.settimeout(3)
    sock.sendto(encode(discover), (server, 67))
    try:
        print(sock.recv(4096).hex())
    except TimeoutError:
        print("")
"""


def test_a_relay_on_another_port_gets_its_replies_there(make_relayed: Callable[..., RelayedLan]) -> None:
    """RFC 8357: a relay that sends from a port of its own (not 67: a BNG running several relay
    instances, an unprivileged relay) says so by sub-option 19 of option 82, and the server
    answers to the port the request came from, as Kea does. ispd answered to giaddr's port 67
    always: the relay never heard of its clients' offers."""
    lan = make_relayed()
    result = lan.lab.run(lan.relay.ns, sys.executable, "-c", _RELAY_ON_ITS_OWN_PORT, RELAY_DOWN, SERVER, "20467")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), f"no reply on the relay's port\n{lan.explain()}"
    offer = decode(bytes.fromhex(result.stdout.strip()))
    assert offer.message_type is DHCPMessageType.OFFER and in_relayed_pool(str(offer.yiaddr)), offer
    assert offer.option(Option.RELAY_AGENT_INFO) == bytes((1, 4)) + b"bng1" + bytes((19, 0))
