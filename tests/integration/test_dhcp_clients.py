"""ispd's DHCP server in one namespace, real DHCP clients (busybox udhcpc, ISC dhclient, dhcpcd)
in another, a veth between them: the server end is 198.18.0.1/24, the client end has no address
until a client gets one. Messages no stock client sends (a DECLINE, a REQUEST for a foreign
address, garbage) are made by hand and sent from the client namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from ispd.dhcp.codec import BOOTREQUEST, FLAG_BROADCAST, HEADER, MAGIC_COOKIE, DHCPPacket, decode, encode
from ispd.dhcp.options import DHCPMessageType, Option
from tests.lab.dhcpclients import (
    CLIENTS,
    ClientEvent,
    Dhclient,
    Dhcpcd,
    DHCPClient,
    DHCPIspd,
    Udhcpc,
    client_link,
    exchange,
    interface_addresses,
    set_mac,
)
from tests.lab.netns import Lab
from tests.lab.process import base_config, eventually
from tests.lab.radclient import radclient, require_radclient

SERVER = "198.18.0.1"
CLIENT_MAC = "02:00:5e:12:00:01"
ROUTES = [("198.18.128.0/17", SERVER), ("0.0.0.0/0", SERVER)]


def dhcp_section(interface: str, pool: str = "198.18.0.100 - 198.18.0.199", *,
                 extra_pools: tuple[dict[str, Any], ...] = (), **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "enabled": True,
        "interfaces": [interface],
        "lease_seconds": 3600,
        "decline_quarantine_seconds": 600,
        "subnet": [{
            "network": "198.18.0.0/24",
            "interface": interface,
            "routers": [SERVER],
            "dns_servers": [SERVER, "198.18.0.2"],
            "domain_name": "lab.example",
            "ntp_servers": [SERVER],
            "mtu": 1500,
            "static_routes": [{"destination": d, "router": r} for d, r in ROUTES],
            "pool": [{"name": "lan", "range": pool}, *extra_pools],
        }],
    }
    section.update(overrides)
    return section


@dataclass
class Lan:
    lab: Lab
    workdir: Path
    server_ns: str
    client_ns: str
    server_if: str
    client_if: str
    ispd: DHCPIspd

    def client(self, kind: str) -> DHCPClient:
        return CLIENTS[kind](self.lab, self.client_ns, self.client_if, self.workdir)

    def explain(self, *clients: DHCPClient) -> str:
        """The clients' and ispd's own words, for a failing assertion."""
        parts = [c.describe() for c in clients]
        log = self.ispd.log_text().splitlines()
        return "\n".join([*parts, self.ispd.packet_counters(), "--- ispd.log (last 40 lines):", *log[-40:]])


@pytest.fixture
def make_lan(netlab: Lab, tmp_path: Path) -> Iterator[Callable[..., Lan]]:
    processes: list[DHCPIspd] = []

    def make(pool: str = "198.18.0.100 - 198.18.0.199", *, radius: dict[str, Any] | None = None,
             accounting_feed: dict[str, Any] | None = None, **overrides: Any) -> Lan:
        server_ns, client_ns = netlab.namespace("srv"), netlab.namespace("cli")
        server_if, client_if = client_link(netlab, server_ns, f"{SERVER}/24", client_ns, CLIENT_MAC)
        sections: dict[str, Any] = {"radius": radius} if radius is not None else {}
        if accounting_feed is not None:
            sections["accounting_feed"] = accounting_feed
        config = base_config(tmp_path, dhcp=dhcp_section(server_if, pool, **overrides), **sections)
        ispd = DHCPIspd(tmp_path, config, netns=server_ns)
        processes.append(ispd)
        ispd.start()
        return Lan(netlab, tmp_path, server_ns, client_ns, server_if, client_if, ispd)

    yield make
    for process in processes:
        process.kill()


@pytest.fixture
def lan(make_lan: Callable[..., Lan]) -> Lan:
    return make_lan()


def in_pool(address: str | None, first: str = "198.18.0.100", last: str = "198.18.0.199") -> bool:
    return address is not None and IPv4Address(first) <= IPv4Address(address) <= IPv4Address(last)


def assert_configured(event: ClientEvent | None, lan: Lan, *clients: DHCPClient) -> str:
    """The lease a client reports carries everything the subnet configures."""
    assert event is not None and event.bound, f"no lease\n{lan.explain(*clients)}"
    assert in_pool(event.address), event
    assert event.mask == "255.255.255.0"
    assert event.routers == (SERVER,)
    assert event.dns == (SERVER, "198.18.0.2")
    assert event.domain == "lab.example"
    assert event.lease_seconds == 3600
    assert event.server_id == SERVER
    assert event.ntp == (SERVER,)
    assert event.mtu == 1500
    assert event.static_routes == ROUTES
    assert event.address is not None
    return event.address


def lease_state(lan: Lan, address: str) -> str | None:
    lease = lan.ispd.lease_of(address)
    return None if lease is None else str(lease["state"])


# --- each client: obtain, renew, release -------------------------------------------------------

@pytest.mark.parametrize("kind", list(CLIENTS))
def test_client_obtains_a_lease_with_the_subnets_options(lan: Lan, kind: str) -> None:
    with lan.client(kind) as client:
        address = assert_configured(client.obtain(), lan, client)
        assert interface_addresses(lan.client_ns, lan.client_if) == [f"{address}/24"]
        lease = lan.ispd.lease_of(address, include_ended=False)
        assert lease is not None, f"{address} not in `lease list`\n{lan.explain(client)}"
        assert lease["state"] == "bound"
        assert lease["hw_address"] == CLIENT_MAC
        assert lease["pool"] == "lan"
        assert 3500 < lease["expires_at"] - time.time() <= 3600


@pytest.mark.parametrize("kind", list(CLIENTS))
def test_client_renews_and_keeps_its_address(lan: Lan, kind: str) -> None:
    with lan.client(kind) as client:
        address = assert_configured(client.obtain(), lan, client)
        granted = lan.ispd.lease_of(address)
        assert granted is not None, lan.explain(client)
        time.sleep(1.1)  # so that a renewal shows in the expiry time
        # udhcpc and dhcpcd: a unicast REQUEST from the bound address (RENEWING, RFC 2131 §4.3.2);
        # dhclient: restarted with its lease file, a broadcast REQUEST without a server id
        # (INIT-REBOOT).
        renewed = client.renew()
        assert renewed is not None and renewed.bound, f"no renewal\n{lan.explain(client)}"
        assert renewed.address == address
        assert renewed.lease_seconds == 3600
        if isinstance(client, Dhcpcd):  # and restarted with its stored lease and DUID: INIT-REBOOT
            rebooted = client.rebind()
            assert rebooted is not None and rebooted.reason == "REBOOT", lan.explain(client)
            assert rebooted.address == address
        lease = lan.ispd.lease_of(address)
        assert lease is not None and lease["state"] == "bound"
        assert lease["expires_at"] > granted["expires_at"] + 1, f"the renewal did not extend the lease\n{lan.explain(client)}"


@pytest.mark.parametrize("kind", list(CLIENTS))
def test_client_releases_and_the_lease_shows_released(lan: Lan, kind: str) -> None:
    with lan.client(kind) as client:
        address = assert_configured(client.obtain(), lan, client)
        assert lease_state(lan, address) == "bound"
        released = client.release()
        assert released is not None, f"the client reported no release\n{lan.explain(client)}"
        assert interface_addresses(lan.client_ns, lan.client_if) == []
        eventually(lambda: lease_state(lan, address) == "released", timeout=5)
        assert address not in [le["address"] for le in lan.ispd.leases()]


# --- the pool, the store -----------------------------------------------------------------------

def test_an_exhausted_pool_offers_nothing_to_a_third_client(make_lan: Callable[..., Lan]) -> None:
    lan = make_lan(pool="198.18.0.100 - 198.18.0.101")
    got: list[str] = []
    for n in (1, 2):
        set_mac(lan.client_ns, lan.client_if, f"02:00:5e:12:01:0{n}")
        with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
            event = client.obtain()
            assert event is not None and event.address is not None, lan.explain(client)
            assert in_pool(event.address, last="198.18.0.101"), event
            got.append(event.address)
            # Ending udhcpc without -R keeps the lease (no RELEASE).
    assert sorted(got) == ["198.18.0.100", "198.18.0.101"]
    set_mac(lan.client_ns, lan.client_if, "02:00:5e:12:01:03")
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as third:
        assert third.obtain(tries=2) is None, f"a third client got a lease\n{lan.explain(third)}"
        assert "select for" not in third.output(), "the third client was offered an address"
    assert sorted(le["address"] for le in lan.ispd.leases()) == got
    assert (lan.ispd.metric_in_netns("ispd_dhcp_packets_dropped_total", {"reason": "pool_exhausted"}) or 0) >= 2
    assert lan.ispd.metric_in_netns("ispd_dhcp_pool_assigned_addresses", {"pool": "lan"}) == 2


def test_a_lease_outlives_a_restart_of_ispd(lan: Lan) -> None:
    with Dhclient(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        address = assert_configured(client.obtain(), lan, client)
        client.stop()  # no RELEASE: the client keeps the lease in its lease file
        assert lan.ispd.terminate() == 0
        lan.ispd.kill()
        lan.ispd.start()
        lease = lan.ispd.lease_of(address, include_ended=False)
        assert lease is not None and lease["state"] == "bound" and lease["hw_address"] == CLIENT_MAC
        # INIT-REBOOT: the restarted server confirms the address it granted before.
        again = client.obtain()
        assert again is not None and again.reason == "REBOOT", lan.explain(client)
        assert again.address == address


# --- hand-made messages ------------------------------------------------------------------------

PROBE_MAC = bytes.fromhex("025e12aa0001")


def message(kind: DHCPMessageType, xid: int, *options: tuple[int, bytes], mac: bytes = PROBE_MAC,
            ciaddr: str = "0.0.0.0") -> bytes:
    """A client's message; BROADCAST set, so that replies reach a socket with no address."""
    return encode(DHCPPacket(op=BOOTREQUEST, xid=xid, chaddr=mac, flags=FLAG_BROADCAST, ciaddr=IPv4Address(ciaddr),
                             options=((Option.MESSAGE_TYPE, bytes([kind])), *options)))


def requested(address: str) -> tuple[int, bytes]:
    return (Option.REQUESTED_ADDRESS, IPv4Address(address).packed)


SERVER_ID = (Option.SERVER_ID, IPv4Address(SERVER).packed)


def replies(lan: Lan, *datagrams: bytes, xid: int, expect: int = 1, listen: float = 3.0) -> list[DHCPPacket]:
    got = exchange(lan.client_ns, lan.client_if, datagrams, xids=[xid], until=expect, listen=listen)
    return [decode(d) for d in got]


def test_a_request_for_an_address_the_server_cannot_give_is_nakd(lan: Lan) -> None:
    cases = [
        # INIT-REBOOT (no server id, no ciaddr) for an address of the subnet outside every pool,
        # and for one on another network (RFC 2131 §4.3.2: "incorrect, or on the wrong network").
        (0x1001, message(DHCPMessageType.REQUEST, 0x1001, requested("198.18.0.250"))),
        (0x1002, message(DHCPMessageType.REQUEST, 0x1002, requested("198.18.7.7"))),
        # SELECTING (names us) for an address it was never offered, outside the pool.
        (0x1003, message(DHCPMessageType.REQUEST, 0x1003, requested("198.18.0.250"), SERVER_ID)),
    ]
    for xid, datagram in cases:
        got = replies(lan, datagram, xid=xid)
        assert [p.message_type for p in got] == [DHCPMessageType.NAK], f"xid {xid:#x}: {got}\n{lan.explain()}"
        nak = got[0]
        assert nak.yiaddr == IPv4Address(0)
        assert nak.option(Option.SERVER_ID) == IPv4Address(SERVER).packed
        assert nak.option(Option.LEASE_TIME) is None  # RFC 2131 table 3: MUST NOT
    assert lan.ispd.leases(include_ended=True) == []


def test_a_client_that_remembers_a_foreign_address_is_nakd_and_then_served(lan: Lan) -> None:
    # dhclient moved to this network with a lease from elsewhere: it asks for that address
    # (INIT-REBOOT), must hear a NAK, and then gets one from the pool by DISCOVER.
    with Dhclient(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        client.lease_file.write_text(
            f'lease {{\n  interface "{lan.client_if}";\n  fixed-address 198.18.0.250;\n'
            "  option subnet-mask 255.255.255.0;\n  option dhcp-server-identifier 198.18.0.1;\n"
            "  option dhcp-lease-time 3600;\n  renew 4 2037/12/31 00:00:00;\n  rebind 4 2037/12/31 00:00:00;\n"
            "  expire 4 2037/12/31 00:00:00;\n}\n")
        event = client.obtain()
        assert "DHCPNAK from 198.18.0.1" in client.output(), lan.explain(client)
        address = assert_configured(event, lan, client)
        assert event is not None and event.reason == "BOUND"
        assert address != "198.18.0.250"


def test_a_declined_address_is_quarantined_and_not_offered_again(lan: Lan) -> None:
    offer = replies(lan, message(DHCPMessageType.DISCOVER, 0x2001), xid=0x2001)
    assert [p.message_type for p in offer] == [DHCPMessageType.OFFER], lan.explain()
    declined = str(offer[0].yiaddr)
    ack = replies(lan, message(DHCPMessageType.REQUEST, 0x2002, requested(declined), SERVER_ID), xid=0x2002)
    assert [(p.message_type, str(p.yiaddr)) for p in ack] == [(DHCPMessageType.ACK, declined)], lan.explain()
    # RFC 2131 §4.4.1: the client found the address in use (by ARP) and declines it; no reply.
    silence = replies(lan, message(DHCPMessageType.DECLINE, 0x2003, requested(declined), SERVER_ID),
                      xid=0x2003, expect=0, listen=1.0)
    assert silence == []
    eventually(lambda: lease_state(lan, declined) == "declined", timeout=5)
    # Held back from the pool: `lease list` shows it among the current leases, as Kea's
    # lease4-get-all does (an operator looking for why a pool runs out saw nothing).
    current = lan.ispd.lease_of(declined, include_ended=False)
    assert current is not None and current["state"] == "declined", lan.ispd.leases()
    assert current["expires_at"] > time.time() + 500  # (decline_quarantine_seconds = 600)
    table = lan.ispd.cli("lease", "list").stdout
    assert any(line.split()[:2] == [declined, "declined"] for line in table.splitlines()), table
    assert lan.ispd.metric_in_netns("ispd_dhcp_declines_total") == 1
    assert lan.ispd.metric_in_netns("ispd_dhcp_pool_declined_addresses", {"pool": "lan"}) == 1
    # Neither the client that declined it nor another one is offered it again.
    again = replies(lan, message(DHCPMessageType.DISCOVER, 0x2004), xid=0x2004)
    assert [p.message_type for p in again] == [DHCPMessageType.OFFER]
    assert str(again[0].yiaddr) != declined
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as other:
        event = other.obtain(requested=declined)
        assert event is not None and event.bound, lan.explain(other)
        assert event.address != declined


def _header(op: int = BOOTREQUEST, hlen: int = 6) -> bytes:
    return HEADER.pack(op, 1, hlen, 0, 0x3001, 0, FLAG_BROADCAST, bytes(4), bytes(4), bytes(4), bytes(4),
                       PROBE_MAC.ljust(16, b"\x00"), bytes(64), bytes(128))


MALFORMED = {
    "truncated": b"\x01\x01\x06\x00" + bytes(96),
    "bad_cookie": _header() + b"\x00\x00\x00\x00" + bytes([53, 1, 1, 255]),
    "bad_op": _header(op=7) + MAGIC_COOKIE + bytes([53, 1, 1, 255]),
    "bad_hlen": _header(hlen=17) + MAGIC_COOKIE + bytes([53, 1, 1, 255]),
    "option_overrun": _header() + MAGIC_COOKIE + bytes([53, 1, 1, 12, 200]) + b"short",
}


def test_malformed_datagrams_are_dropped_and_counted_between_good_clients(lan: Lan) -> None:
    def dropped(reason: str) -> float:
        return lan.ispd.metric_in_netns("ispd_dhcp_packets_dropped_total", {"reason": reason}) or 0.0

    before = {reason: dropped(reason) for reason in MALFORMED}
    noise = [b"", b"garbage", *MALFORMED.values(), bytes(range(256)) * 2]
    assert replies(lan, *noise, xid=0x3001, expect=0, listen=0.5) == []
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        assert_configured(client.obtain(), lan, client)
        # And garbage again once a client is bound, then the client renews.
        assert replies(lan, *noise, xid=0x3001, expect=0, listen=0.5) == []
        renewed = client.renew()
        assert renewed is not None and renewed.bound, lan.explain(client)
    # Two rounds of each kind; the counters are read at scrape time, so no waiting is needed.
    counted = {reason: dropped(reason) - before[reason] for reason in MALFORMED}
    assert all(n >= 2 for n in counted.values()), f"{counted}\n{lan.explain()}"
    assert lan.ispd.proc is not None and lan.ispd.proc.poll() is None
    assert not lan.ispd.log_events("dhcp.packet.failed"), lan.explain()


# --- subscriber status -------------------------------------------------------------------------

PORTAL = "https://portal.isp.example/capport/api"
GARDEN = {"name": "garden", "range": "198.18.0.200 - 198.18.0.210", "walled_garden": True,
          "dns_servers": ["198.18.0.250"], "captive_portal": PORTAL}


def published(lan: Lan, event: str) -> float:
    return lan.ispd.metric_in_netns("ispd_events_published_total", {"event": event}) or 0.0


def test_suspension_sends_the_router_to_the_walled_garden_and_resume_brings_it_back(
        make_lan: Callable[..., Lan]) -> None:
    lan = make_lan(extra_pools=(GARDEN,))
    lan.ispd.cli("subscriber", "add", "alice", "--generate-password")
    lan.ispd.cli("reservation", "add", "alice", "--mac", CLIENT_MAC)
    eventually(lambda: published(lan, "ReservationAdded") >= 1)
    with lan.client("udhcpc") as client:
        first = client.obtain()
        assert first is not None and in_pool(first.address), lan.explain(client)
        assert lan.ispd.lease_of(first.address or "")["subscriber_id"] is not None  # type: ignore[index]

        lan.ispd.cli("subscriber", "suspend", "alice", "--reason", "unpaid")
        eventually(lambda: published(lan, "SubscriberSuspended") >= 1)
        shown = lan.ispd.cli("subscriber", "show", "alice").stdout  # before the client renews: not yet
        assert f"  dhcp   pending  {first.address} ({CLIENT_MAC}): pool lan; moves to the walled garden" in shown, shown
        garden = client.renew(timeout=25)  # NAK, then a fresh DISCOVER into the garden
        assert garden is not None and in_pool(garden.address, "198.18.0.200", "198.18.0.210"), lan.explain(client)
        assert garden.dns == ("198.18.0.250",) and garden.lease_seconds == 300
        shown = lan.ispd.cli("subscriber", "show", "alice").stdout
        assert f"  dhcp   done     {garden.address} ({CLIENT_MAC}): pool garden (walled garden)" in shown, shown
        # RFC 8910 option 114: the phone or laptop opens the portal by itself.
        assert bytes.fromhex(garden.env.get("opt114", "")).decode() == PORTAL, garden.env

        lan.ispd.cli("subscriber", "resume", "alice")
        eventually(lambda: published(lan, "SubscriberResumed") >= 1)
        back = client.renew(timeout=25)
        assert back is not None and back.address == first.address, lan.explain(client)
        assert back.dns == (SERVER, "198.18.0.2") and "opt114" not in back.env


# --- one pool for DHCP and RADIUS --------------------------------------------------------------

@pytest.mark.parametrize("process", ["main", "own"])
def test_a_pool_shared_with_radius_never_gives_one_address_twice(make_lan: Callable[..., Lan], process: str) -> None:
    """PPPoE sessions (radclient as the BNG, inside ispd's namespace) and DHCP clients draw from
    one three-address pool: each address goes to one of them, a stopped session gives its
    address back, and a restarted ispd still knows which addresses the sessions hold. The same
    with RADIUS in a worker process of its own (another writer to the store)."""
    require_radclient()
    radius = {"enabled": True, "listen_auth": ["127.0.0.1:1812"], "listen_acct": ["127.0.0.1:1813"],
              "reject_delay_seconds": 0, "process": process,
              "client": [{"name": "bng", "address": "127.0.0.1", "secret": "testing123"}],
              "plan": [{"plan": "pppoe", "address_pool": "lan"}]}
    lan = make_lan(pool="198.18.0.100 - 198.18.0.102", radius=radius)
    ispd = lan.ispd
    ispd.cli("plan", "add", "pppoe", "--credential-policy", "cleartext")
    for name in ("u1", "u2", "u3"):
        ispd.cli("subscriber", "add", name, "--plan", "pppoe", "--password-stdin", input=f"{name}-pw\n")

    def login(name: str, mac: str) -> tuple[str | None, str | None]:
        reply = radclient("127.0.0.1:1812", "auth", "testing123",
                          f'User-Name = {name}, User-Password = "{name}-pw", Calling-Station-Id = "{mac}", '
                          "Message-Authenticator = 0x00",
                          netns=lan.server_ns, timeout=2)
        return reply.code, reply.first("Framed-IP-Address")

    def account(name: str, address: str, status: str, session: str = "1") -> str | None:
        return radclient("127.0.0.1:1813", "acct", "testing123",
                         f"User-Name = {name}, Acct-Session-Id = {name}-{session}, Framed-IP-Address = {address}, "
                         f'Calling-Station-Id = "02:00:00:00:01:01", Acct-Status-Type = {status}',
                         netns=lan.server_ns).code

    # Until the service has heard of both (one look at the store's events may come between two adds).
    eventually(lambda: all(login(name, mac)[0] == "Access-Accept"
                           for name, mac in (("u1", "02:00:00:00:01:01"), ("u2", "02:00:00:00:01:02"))), timeout=10)
    code, first = login("u1", "02:00:00:00:01:01")
    assert code == "Access-Accept" and in_pool(first, last="198.18.0.102"), (code, first)
    assert login("u1", "02:00:00:00:01:01") == ("Access-Accept", first)  # the same line: the same address
    code, second = login("u2", "02:00:00:00:01:02")
    assert code == "Access-Accept" and in_pool(second, last="198.18.0.102") and second != first
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
        event = client.obtain()
        assert event is not None and event.address is not None, lan.explain(client)
        assert event.address not in (first, second) and in_pool(event.address, last="198.18.0.102")
        dhcp_address = event.address
    # DHCP knew of the sessions' addresses before it offered one (the bus, also from a worker
    # process), so the store never had to refuse a lease.
    assert not ispd.metric_in_netns("ispd_dhcp_packets_dropped_total", {"reason": "held_by_radius"})
    assert login("u3", "02:00:00:00:01:03") == ("Access-Reject", None)  # all three are taken
    by = {le["address"]: le["service"] for le in ispd.leases()}
    assert by == {first: "radius", second: "radius", dhcp_address: "dhcp"}, by

    # A restarted ispd reads the sessions' addresses from the store: another DHCP client gets none.
    assert ispd.terminate() == 0
    ispd.start()
    set_mac(lan.client_ns, lan.client_if, "02:00:5e:12:02:02")
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as other:
        assert other.obtain(tries=2) is None, f"a DHCP client got a session's address\n{lan.explain(other)}"

    # u1's session starts and stops: its address goes back, and u3 gets it.
    assert first is not None and account("u1", first, "Start") == "Accounting-Response"
    assert account("u1", first, "Stop") == "Accounting-Response"
    eventually(lambda: (ispd.lease_of(first) or {}).get("state") == "released", timeout=5)
    # The NAS starts a session on that free address without asking (its own choice, or an
    # Access-Accept long ago): ispd takes it into the ledger, so that nobody else gets it.
    assert account("u1", first, "Start", session="2") == "Accounting-Response"
    eventually(lambda: (ispd.lease_of(first) or {}).get("state") == "bound", timeout=5)
    assert login("u3", "02:00:00:00:01:03") == ("Access-Reject", None)
    assert account("u1", first, "Stop", session="2") == "Accounting-Response"
    eventually(lambda: (ispd.lease_of(first) or {}).get("state") == "released", timeout=5)
    # The same when the address comes only with an interim (the Start had none).
    assert radclient("127.0.0.1:1813", "acct", "testing123", "User-Name = u1, Acct-Session-Id = u1-3, "
                     "Acct-Status-Type = Start", netns=lan.server_ns).code == "Accounting-Response"
    assert account("u1", first, "Interim-Update", session="3") == "Accounting-Response"
    eventually(lambda: (ispd.lease_of(first) or {}).get("state") == "bound", timeout=5)
    assert account("u1", first, "Stop", session="3") == "Accounting-Response"
    eventually(lambda: (ispd.lease_of(first) or {}).get("state") == "released", timeout=5)
    assert login("u3", "02:00:00:00:01:03") == ("Access-Accept", first)
    history = [e["event"] for e in json.loads(ispd.cli("lease", "show", first, "--json").stdout)["history"]]
    # Newest first: u3's grant, the two adopted sessions' grants and releases, u1's release and
    # its grant (its two logins after the first found the claim held for long enough: no write).
    assert history == ["granted", "released", "granted", "released", "granted", "released", "granted"], history


# --- the identity feed ---------------------------------------------------------------------------

def test_a_dhcp_subscriber_s_lease_reaches_a_collector_as_radius_accounting(
        make_lan: Callable[..., Lan], tmp_path: Path) -> None:
    """A shaper or billing system (the test's collector, in ispd's namespace) hears of a lease as
    it would of a BNG's session: Start at the grant, Interim-Update at the renewal, Stop at the
    release, one Acct-Session-Id throughout, the subscriber's username as User-Name."""
    feed = {"collectors": [{"name": "shaper", "address": "127.0.0.1:1813", "secret": "feed-secret"}],
            "nas_identifier": "ispd-lab"}
    lan = make_lan(accounting_feed=feed)
    heard = tmp_path / "collector.jsonl"
    collector = subprocess.Popen(
        ["ip", "netns", "exec", lan.server_ns, sys.executable, "-m", "tests.lab.collector", "--listen",
         "127.0.0.1:1813", "--secret", "feed-secret", "--out", str(heard)],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        eventually(lambda: heard.exists() and "listening" in heard.read_text(), timeout=10)
        lan.ispd.cli("subscriber", "add", "alice", "--generate-password")
        lan.ispd.cli("reservation", "add", "alice", "--mac", CLIENT_MAC)
        eventually(lambda: published(lan, "ReservationAdded") >= 1)

        def requests() -> list[dict[str, str]]:
            return [r for r in map(json.loads, heard.read_text().splitlines()) if "listening" not in r]

        with lan.client("udhcpc") as client:
            bound = client.obtain()
            assert bound is not None and bound.address, lan.explain(client)
            eventually(lambda: len(requests()) >= 1, timeout=10)
            assert client.renew() is not None
            eventually(lambda: len(requests()) >= 2, timeout=10)
            client.release()
            eventually(lambda: len(requests()) >= 3, timeout=10)
    finally:
        collector.terminate()
        collector.wait(timeout=10)
    start, interim, stop = requests()
    assert [r["ACCT_STATUS_TYPE"] for r in (start, interim, stop)] == ["1", "3", "2"]
    assert all(r["valid"] for r in (start, interim, stop))
    for request in (start, interim, stop):
        assert (request["USER_NAME"], request["FRAMED_IP_ADDRESS"], request["CALLING_STATION_ID"],
                request["NAS_IDENTIFIER"]) == ("alice", bound.address, CLIENT_MAC, "ispd-lab")
    assert start["ACCT_SESSION_ID"] == interim["ACCT_SESSION_ID"] == stop["ACCT_SESSION_ID"]
    assert start["ACCT_SESSION_ID"].startswith(f"dhcp-{bound.address}-")
    assert "ACCT_SESSION_TIME" not in start and stop["ACCT_TERMINATE_CAUSE"] == "1"  # User-Request
    assert lan.ispd.metric_in_netns("ispd_accounting_feed_requests_total",
                                    {"collector": "shaper", "type": "stop", "result": "answered"}) == 1


# --- options by code, client classes -----------------------------------------------------------

ACS_URL = "https://acs.lab.example:7547/"


def test_options_by_code_and_client_classes_reach_real_clients(make_lan: Callable[..., Lan]) -> None:
    """A TR-069 router (by its vendor class) gets its ACS URL in option 43; a set-top box gets an
    address from the pool kept for its class and its own TFTP server; a laptop gets neither;
    the domain search list goes to every client, asked for or not."""
    lan = make_lan(
        extra_pools=({"name": "stb", "range": "198.18.0.220 - 198.18.0.229", "client_classes": ["iptv"]},),
        option=[{"code": 66, "text": "tftp.lab.example"},
                {"code": 119, "domains": ["lab.example", "isp.example"], "always_send": True}],
        client_class=[
            {"name": "tr069", "vendor_class": ["dslforum.org"],
             "option": [{"code": 43, "suboptions": [{"code": 1, "text": ACS_URL}]}]},
            {"name": "iptv", "vendor_class": ["IPTV-STB"], "option": [{"code": 66, "text": "tftp.iptv.example"}]},
        ],
    )
    acs = bytes((1, len(ACS_URL))) + ACS_URL.encode()
    seen: dict[str, dict[str, str]] = {}
    for n, (who, vendor) in enumerate((("router", "dslforum.org"), ("stb", "IPTV-STB 2.1"), ("laptop", None))):
        set_mac(lan.client_ns, lan.client_if, f"02:00:5e:12:02:0{n}")
        with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as client:
            event = client.obtain(vendor_class=vendor, ask=(43, 66))
            assert event is not None and event.bound, lan.explain(client)
            seen[who] = {**event.env, "address": event.address or ""}
    router, stb, laptop = seen["router"], seen["stb"], seen["laptop"]
    assert bytes.fromhex(router.get("opt43", "")) == acs, router
    assert router["tftp"] == "tftp.lab.example" and in_pool(router["address"])
    assert stb["tftp"] == "tftp.iptv.example" and in_pool(stb["address"], "198.18.0.220", "198.18.0.229"), stb
    assert "opt43" not in stb and "opt43" not in laptop
    assert laptop["tftp"] == "tftp.lab.example" and in_pool(laptop["address"])
    # Option 119, never asked for (no -O search): sent all the same.
    assert all(s.get("search") == "lab.example isp.example" for s in seen.values()), seen

    # dhclient, which asks for neither, gets the search list too and says so in its own words.
    set_mac(lan.client_ns, lan.client_if, "02:00:5e:12:02:09")
    with Dhclient(lan.lab, lan.client_ns, lan.client_if, lan.workdir,
                  extra_conf='send vendor-class-identifier "dslforum.org";\n'
                             'option acs-info code 43 = string;\nalso request acs-info;') as client:
        event = client.obtain()
        assert event is not None and event.bound, lan.explain(client)
        assert event.env.get("new_domain_search") == "lab.example. isp.example.", event.env
        # dhclient writes a string that is not printable as colon-separated hex, without leading zeros.
        assert event.env.get("new_acs_info") == ":".join(f"{b:x}" for b in acs), event.env


def test_rapid_commit_gives_dhcpcd_its_lease_in_two_messages(make_lan: Callable[..., Lan]) -> None:
    """RFC 4039: dhcpcd asks for rapid commit (option 80 in its DISCOVER); ispd, with it on,
    answers the DISCOVER with the ACK, and sends no OFFER. The lease is in the store as any."""
    lan = make_lan(rapid_commit=True)
    with Dhcpcd(lan.lab, lan.client_ns, lan.client_if, lan.workdir, extra_conf="option rapid_commit") as client:
        address = assert_configured(client.obtain(), lan, client)
        assert lease_state(lan, address) == "bound"
        sent = {kind: lan.ispd.metric_in_netns("ispd_dhcp_packets_sent_total", {"type": kind})
                for kind in ("offer", "ack")}
        assert not sent["offer"] and sent["ack"] == 1, f"{sent}\n{lan.explain(client)}"
        output = client.output()
        assert "sending DISCOVER" in output and "sending REQUEST" not in output, output


# --- the interface made again ------------------------------------------------------------------

def test_an_interface_made_again_is_served_again(make_lan: Callable[..., Lan]) -> None:
    """The access interface deleted and made again under its name (a VLAN or veth re-created)
    has a new index, and ispd knew its interfaces by the old one: every DISCOVER there was
    dropped as interface_not_served until a restart. ispd follows the new index by itself."""
    lan = make_lan(reclaim_interval_seconds=0.5)

    def ip(ns: str, *args: str) -> None:
        result = lan.lab.run(ns, "ip", *args)
        assert result.returncode == 0, result.stderr

    def offered(xid: int) -> bool:
        got = replies(lan, message(DHCPMessageType.DISCOVER, xid), xid=xid, listen=1.0)
        return [p.message_type for p in got] == [DHCPMessageType.OFFER]

    assert offered(0x5001), lan.explain()
    ip(lan.server_ns, "link", "del", lan.server_if)
    ip(lan.server_ns, "link", "add", lan.server_if, "type", "veth", "peer", "name", lan.client_if,
       "netns", lan.client_ns)
    ip(lan.server_ns, "addr", "add", f"{SERVER}/24", "dev", lan.server_if)
    ip(lan.server_ns, "link", "set", lan.server_if, "up")
    ip(lan.client_ns, "link", "set", lan.client_if, "up")
    deadline = time.monotonic() + 10
    while not offered(0x5002):
        assert time.monotonic() < deadline, lan.explain()
    assert lan.ispd.log_events("dhcp.interfaces.changed"), lan.explain()
