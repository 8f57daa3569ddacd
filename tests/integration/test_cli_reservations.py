"""Reservations and lease lookups with the admin CLI, as an operator uses them."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import socket
import subprocess
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from ispd.config import load_config
from ispd.dhcp.codec import BOOTREQUEST, DHCPPacket
from ispd.dhcp.codec import decode as decode_dhcp
from ispd.dhcp.codec import encode as encode_dhcp
from ispd.dhcp.options import DHCPMessageType, Option
from ispd.radius.codec import Attr, Code, encode_attributes, encode_request, hide_password
from ispd.store import open_store
from ispd.store.models import Lease, LeaseState
from tests.lab import toml
from tests.lab.ports import free_tcp_port, free_udp_port
from tests.lab.process import ISPD, IspdProcess, base_config, eventually


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = toml.write(tmp_path / "ispd.toml", base_config(tmp_path))
    for name in ("alice", "bob"):
        ok(path, "subscriber", "add", name)
    return path


def run(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ISPD, *args, "-c", str(config_path)], capture_output=True, text=True, timeout=60)


def ok(config_path: Path, *args: str) -> str:
    result = run(config_path, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def record(config_path: Path, *leases: tuple[Lease, str], purge_before: float | None = None) -> None:
    """Write leases as the DHCP service would (and optionally run retention)."""
    async def write() -> None:
        store = await open_store(load_config(config_path).store)
        try:
            for lease, event in leases:
                await store.record_lease(lease, event=event)
            if purge_before is not None:
                await store.purge_history(purge_before)
        finally:
            await store.close()

    asyncio.run(write())


def test_add_list_show_delete(config_path: Path) -> None:
    out = ok(config_path, "reservation", "add", "alice", "--mac", "02-00-5E-10-00-01", "--address", "198.18.0.10",
             "--hostname", "CPE-Alice")
    assert out == "added reservation #1 for alice: mac 02:00:5e:10:00:01 -> address 198.18.0.10, host name cpe-alice\n"
    added = json.loads(ok(config_path, "reservation", "add", "bob", "--circuit-id", "olt1/1/1:100", "--json"))
    assert {k: v for k, v in added.items() if k != "created_at"} == {
        "id": 2, "subscriber_id": 2, "username": "bob", "kind": "circuit-id", "key": "olt1/1/1:100", "address": None,
        "hostname": None, "address6": None, "prefix6": None}
    ok(config_path, "reservation", "add", "2", "--client-id", "01:02:00:5e:10:00:02")  # a subscriber by id
    ok(config_path, "reservation", "add", "alice", "--remote-id", "0x00ff")

    table = ok(config_path, "reservation", "list").splitlines()
    assert [line.split() for line in table] == [
        ["ID", "SUBSCRIBER", "KIND", "KEY", "ADDRESS", "ADDRESS6", "PREFIX6", "HOSTNAME"],
        ["1", "alice", "mac", "02:00:5e:10:00:01", "198.18.0.10", "-", "-", "cpe-alice"],
        ["2", "bob", "circuit-id", "olt1/1/1:100", "-", "-", "-", "-"],
        ["3", "bob", "client-id", "0102005e100002", "-", "-", "-", "-"],
        ["4", "alice", "remote-id", "0x00ff", "-", "-", "-", "-"],
    ]
    mine = json.loads(ok(config_path, "reservation", "list", "--subscriber", "bob", "--json"))
    assert [(r["id"], r["username"], r["kind"]) for r in mine] == [(2, "bob", "circuit-id"), (3, "bob", "client-id")]

    show = ok(config_path, "subscriber", "show", "alice")
    assert ("reservations  2\n"
            "  #1 mac 02:00:5e:10:00:01 -> address 198.18.0.10, host name cpe-alice\n"
            "  #4 remote-id 0x00ff -> an address from the pools\n") in show
    assert "reservation.added address=198.18.0.10 hostname=cpe-alice key=02:00:5e:10:00:01 kind=mac" in show

    assert ok(config_path, "reservation", "delete", "1") == (
        "deleted reservation #1 of alice: mac 02:00:5e:10:00:01 -> address 198.18.0.10, host name cpe-alice\n")
    assert [r["id"] for r in json.loads(ok(config_path, "reservation", "list", "--json"))] == [2, 3, 4]
    detail = json.loads(ok(config_path, "subscriber", "show", "alice", "--json"))
    assert [a["action"] for a in detail["audit"]][:3] == ["reservation.deleted", "reservation.added",
                                                         "reservation.added"]
    assert detail["audit"][0]["details"]["key"] == "02:00:5e:10:00:01"
    # The address and the MAC are free again.
    ok(config_path, "reservation", "add", "bob", "--mac", "02:00:5e:10:00:01", "--address", "198.18.0.10")


def test_an_empty_list_is_just_the_header(config_path: Path) -> None:
    assert ok(config_path, "reservation", "list").split() == ["ID", "SUBSCRIBER", "KIND", "KEY", "ADDRESS", "ADDRESS6",
                                                              "PREFIX6", "HOSTNAME"]
    assert json.loads(ok(config_path, "reservation", "list", "--json")) == []


def test_set_changes_a_reservation_in_place(config_path: Path) -> None:
    ok(config_path, "reservation", "add", "alice", "--circuit-id", "olt1/1/1:100", "--address", "198.18.0.10",
       "--hostname", "gw")
    ok(config_path, "reservation", "add", "bob", "--mac", "02:00:5e:10:00:02", "--address", "198.18.0.20")
    assert ok(config_path, "reservation", "set", "1", "--address", "198.18.0.11", "--prefix6", "2001:db8:200::/48",
              "--clear", "hostname") == (
        "reservation #1 of alice: circuit-id olt1/1/1:100 -> address 198.18.0.11, prefix 2001:db8:200::/48\n")
    changed = json.loads(ok(config_path, "reservation", "set", "1", "--address6", "2001:db8:1::10", "--json"))
    assert {k: v for k, v in changed.items() if k != "created_at"} == {
        "id": 1, "subscriber_id": 1, "username": "alice", "kind": "circuit-id", "key": "olt1/1/1:100",
        "address": "198.18.0.11", "hostname": None, "address6": "2001:db8:1::10", "prefix6": "2001:db8:200::/48"}
    result = run(config_path, "reservation", "set", "1", "--address", "198.18.0.20")
    assert (result.returncode, result.stderr) == (
        1, "ispd: address 198.18.0.20 is already reserved for bob (mac 02:00:5e:10:00:02, reservation #2)\n")
    result = run(config_path, "reservation", "set", "2", "--prefix6", "2001:db8:300::/48")
    assert result.returncode == 1 and "a mac reservation holds no IPv6" in result.stderr
    show = ok(config_path, "subscriber", "show", "alice")
    assert "  #1 circuit-id olt1/1/1:100 -> address 198.18.0.11, IPv6 address 2001:db8:1::10, prefix " in show
    assert ("reservation.changed address=198.18.0.11 key=olt1/1/1:100 kind=circuit-id "
            "prefix6=2001:db8:200::/48 previous=address:198.18.0.10,hostname:gw,prefix6:none") in show
    # The old address is free for someone else.
    ok(config_path, "reservation", "add", "bob", "--remote-id", "r1", "--address", "198.18.0.10")


def test_taken_keys_and_addresses_name_their_holder(config_path: Path) -> None:
    ok(config_path, "reservation", "add", "alice", "--mac", "02:00:5e:10:00:01", "--address", "198.18.0.10")
    result = run(config_path, "reservation", "add", "bob", "--mac", "02005e100001")
    assert (result.returncode, result.stderr) == (
        1, "ispd: mac 02:00:5e:10:00:01 is already reserved for alice (reservation #1)\n")
    result = run(config_path, "reservation", "add", "bob", "--remote-id", "r1", "--address", "198.18.0.10")
    assert (result.returncode, result.stderr) == (
        1, "ispd: address 198.18.0.10 is already reserved for alice (mac 02:00:5e:10:00:01, reservation #1)\n")
    assert len(json.loads(ok(config_path, "reservation", "list", "--json"))) == 1
    # A RADIUS login belongs to one subscriber: a reservation cannot take a username, nor a
    # subscriber a reserved login.
    result = run(config_path, "reservation", "add", "bob", "--username", "alice")
    assert (result.returncode, result.stderr) == (1, "ispd: username alice is the login of subscriber alice (#1)\n")
    ok(config_path, "reservation", "add", "alice", "--username", "carol@pppoe")
    result = run(config_path, "subscriber", "add", "carol@pppoe")
    assert (result.returncode, result.stderr) == (
        1, "ispd: 'carol@pppoe' is a login reserved for alice (reservation #2)\n")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("reservation", "add", "nobody", "--mac", "02:00:5e:10:00:01"), 1, "ispd: no subscriber 'nobody'\n"),
        (("reservation", "delete", "99"), 1, "ispd: no reservation #99\n"),
        (("reservation", "set", "99", "--address", "198.18.0.10"), 1, "ispd: no reservation #99\n"),
        (("lease", "show", "198.18.0.99"), 1, "ispd: no lease for 198.18.0.99\n"),
        (("reservation", "list", "--subscriber", "nobody"), 1, "ispd: no subscriber 'nobody'\n"),
    ],
)
def test_failures_are_one_clear_line(config_path: Path, args: tuple[str, ...], code: int, message: str) -> None:
    result = run(config_path, *args)
    assert (result.returncode, result.stderr) == (code, message)


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("reservation", "add", "alice", "--mac", "02:00:5e:10:00"), "'02:00:5e:10:00' is not a MAC address"),
        (("reservation", "add", "alice", "--mac", "02:00:00:00:00:01", "--circuit-id", "eth0/1"),
         "argument --circuit-id: not allowed with argument --mac"),
        (("reservation", "add", "alice"), "one of the arguments --mac --client-id --circuit-id --remote-id --username --duid is required"),
        (("reservation", "add", "alice", "--duid", "00:03"), "argument --duid: '00:03' is not a DUID (hex bytes, "
                                                               "type first, 3 to 130 of them"),
        (("reservation", "add", "alice", "--duid", "00:03:00:01", "--address6", "2001:db8::/64"),
         "argument --address6: '2001:db8::/64': give one IPv6 address here"),
        (("reservation", "add", "alice", "--duid", "00:03:00:01", "--prefix6", "2001:db8:200::1/48"),
         "argument --prefix6: '2001:db8:200::1/48' has bits set past its length: the network is 2001:db8:200::/48"),

        (("reservation", "add", "alice", "--client-id", "xyz"), "is not a client identifier"),
        (("reservation", "add", "alice", "--circuit-id", ""), "the circuit-id is empty"),
        (("reservation", "add", "alice", "--remote-id", "tab\there"), "write a remote-id as printable ASCII"),
        (("reservation", "add", "alice", "--mac", "02:00:00:00:00:01", "--address", "198.18.0.256"),
         "'198.18.0.256' is not an IPv4 address"),
        (("reservation", "add", "alice", "--mac", "02:00:00:00:00:01", "--address", "127.0.0.1"),
         "127.0.0.1 is a loopback address"),
        (("reservation", "add", "alice", "--mac", "02:00:00:00:00:01", "--hostname", "no spaces"),
         "'no spaces' is not a host name"),
        (("reservation", "delete", "one"), "'one' is not a positive whole number"),
        (("reservation", "delete", "0"), "'0' is not a positive whole number"),
        (("reservation", "delete"), "the following arguments are required: id"),
        (("reservation", "set", "1"), "ispd: nothing to change: give --address, --address6, --prefix6, --hostname"),
        (("reservation", "set", "1", "--address", "198.18.0.10", "--clear", "address"),
         "ispd: give --address or --clear address, not both"),
        (("reservation", "set", "1", "--clear", "key"), "argument --clear: invalid choice: 'key'"),
        (("reservation", "set", "1", "--prefix6", "2001:db8:200::1/48"), "has bits set past its length"),
        (("reservation", "set", "0", "--hostname", "x"), "'0' is not a positive whole number"),
        (("reservation",), "argument action"),  # -c FILE lands where the action belongs
        (("lease", "show", "not-an-address"), "'not-an-address' is not an IPv4 address"),
        (("lease", "show", "198.18.0.1/24"), "is not an IPv4 address"),
        (("lease", "show", "198.18.0.1", "--limit", "0"), "'0' is not a positive whole number"),
        (("who", "198.18.0.1", "--at", "99999999999999"), "'99999999999999' is out of range: give a time from 1970"),
        (("who", "198.18.0.1", "--at", "0001-01-01"), "is out of range"),
        (("usage", "--month", "1969-12"), "'1969-12' is out of range: give a month from 1970-01 to 9999-12"),
        (("subscriber", "set-plan", "alice"), "ispd: give a PLAN, or --none for no plan\n"),
        (("subscriber", "set-plan", "alice", "home", "--none"), "ispd: give a PLAN or --none, not both\n"),
    ],
)
def test_bad_command_lines_exit_2_and_say_why(config_path: Path, args: tuple[str, ...], complaint: str) -> None:
    result = run(config_path, *args)
    assert result.returncode == 2 and complaint in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(ok(config_path, "reservation", "list", "--json")) == []


def test_dhcp6_reservations_by_duid_and_line_with_a_fixed_address_and_prefix(config_path: Path) -> None:
    out = ok(config_path, "reservation", "add", "alice", "--circuit-id", "bng1 ge-0/0/1:100", "--prefix6",
             "2001:DB8:200::/48", "--address6", "2001:db8:1::10", "--address", "198.18.0.10")
    assert out == ("added reservation #1 for alice: circuit-id bng1 ge-0/0/1:100 -> address 198.18.0.10, "
                   "IPv6 address 2001:db8:1::10, prefix 2001:db8:200::/48\n")
    added = json.loads(ok(config_path, "reservation", "add", "bob", "--duid", "00-03-00-01-02-00-5E-10-00-01",
                          "--prefix6", "2001:db8:201:ff00::/56", "--hostname", "bob-router", "--json"))
    assert {k: v for k, v in added.items() if k != "created_at"} == {
        "id": 2, "subscriber_id": 2, "username": "bob", "kind": "duid", "key": "00:03:00:01:02:00:5e:10:00:01",
        "address": None, "hostname": "bob-router", "address6": None, "prefix6": "2001:db8:201:ff00::/56"}
    ok(config_path, "reservation", "add", "bob", "--duid", "000300010200005e1002")  # alone: names bob

    table = ok(config_path, "reservation", "list").splitlines()
    assert [line.split() for line in table[1:]] == [
        ["1", "alice", "circuit-id", "bng1", "ge-0/0/1:100", "198.18.0.10", "2001:db8:1::10", "2001:db8:200::/48", "-"],
        ["2", "bob", "duid", "00:03:00:01:02:00:5e:10:00:01", "-", "-", "2001:db8:201:ff00::/56", "bob-router"],
        ["3", "bob", "duid", "00:03:00:01:02:00:00:5e:10:02", "-", "-", "-", "-"],
    ]
    assert [(r["address6"], r["prefix6"]) for r in json.loads(ok(config_path, "reservation", "list", "--json"))] == [
        ("2001:db8:1::10", "2001:db8:200::/48"), (None, "2001:db8:201:ff00::/56"), (None, None)]
    show = ok(config_path, "subscriber", "show", "bob")
    assert ("reservations  2\n"
            "  #2 duid 00:03:00:01:02:00:5e:10:00:01 -> prefix 2001:db8:201:ff00::/56, host name bob-router\n"
            "  #3 duid 00:03:00:01:02:00:00:5e:10:02 -> an address from the pools\n") in show
    assert "hostname=bob-router key=00:03:00:01:02:00:5e:10:00:01 kind=duid prefix6=2001:db8:201:ff00::/56" in show

    # What the store refuses (each kind of refusal has its store test): one clear line, naming the holder.
    result = run(config_path, "reservation", "add", "bob", "--remote-id", "r1", "--prefix6", "2001:db8::/32")
    assert (result.returncode, result.stderr) == (1, "ispd: prefix 2001:db8::/32 overlaps 2001:db8:200::/48, reserved "
                                                     "for alice (circuit-id bng1 ge-0/0/1:100, reservation #1)\n")
    result = run(config_path, "reservation", "add", "bob", "--mac", "02:00:00:00:00:09", "--prefix6", "2001:db8:3::/48")
    assert result.returncode == 1
    assert result.stderr.startswith("ispd: a mac reservation holds no IPv6 address or prefix"), result.stderr


def test_lease_show_gives_the_current_lease_and_who_had_it_before(config_path: Path) -> None:
    now = time.time()
    alice = 1
    common = {"hw_address": "02:00:00:00:00:20", "hostname": "cpe", "circuit_id": "olt1/1/1", "pool": "home"}
    record(
        config_path,
        (Lease("198.18.0.20", LeaseState.BOUND, now - 7200, now - 3600, subscriber_id=2, hw_address="02:00:00:00:00:02",
               pool="home"), "granted"),
        (Lease("198.18.0.20", LeaseState.EXPIRED, now - 7200, now - 3600, subscriber_id=2,
               hw_address="02:00:00:00:00:02", pool="home"), "expired"),
        (Lease("198.18.0.20", LeaseState.BOUND, now, now + 600, subscriber_id=alice, client_id="0102", **common),
         "granted"),
        (Lease("198.18.0.21", LeaseState.BOUND, now, now + 600), "granted"),
    )
    ok(config_path, "subscriber", "delete", "bob")  # history still names him

    text = ok(config_path, "lease", "show", "198.18.0.20").splitlines()
    assert text[:11] == [
        "address       198.18.0.20",
        "state         bound",
        f"starts        {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}",
        f"expires       {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now + 600))}",
        "mac           02:00:00:00:00:20",
        "client id     0102",
        "hostname      cpe",
        "subscriber    alice (#1)",
        "circuit id    olt1/1/1",
        "remote id     -",
        "pool          home",
    ]
    assert text[11:13] == ["", "history (newest first)"]
    assert text[13].split() == ["AT", "EVENT", "MAC", "CLIENT_ID", "HOSTNAME", "SUBSCRIBER", "CIRCUIT_ID",
                                "REMOTE_ID", "POOL", "STARTS", "EXPIRES"]
    rows = [line.split() for line in text[14:]]
    assert [(r[1], r[2], r[5]) for r in rows] == [("granted", "02:00:00:00:00:20", "alice"),
                                                  ("expired", "02:00:00:00:00:02", "bob"),
                                                  ("granted", "02:00:00:00:00:02", "bob")]

    data = json.loads(ok(config_path, "lease", "show", "198.18.0.20", "--json", "--limit", "2"))
    assert data["address"] == "198.18.0.20"
    assert (data["lease"]["state"], data["lease"]["username"], data["lease"]["client_id"]) == ("bound", "alice", "0102")
    assert [(h["event"], h["username"], h["subscriber_id"]) for h in data["history"]] == [
        ("granted", "alice", 1), ("expired", "bob", 2)]
    limited = ok(config_path, "lease", "show", "198.18.0.20", "--limit", "1").splitlines()
    assert "history (newest first, the newest 1)" in limited and len(limited) == 15

    unowned = ok(config_path, "lease", "show", "198.18.0.21").splitlines()
    assert "subscriber    -" in unowned


def test_lease_show_without_a_current_lease_still_shows_the_history(config_path: Path) -> None:
    now = time.time()
    # A lease that ended long ago: retention removed its row but not the newer history entry.
    record(config_path, (Lease("198.18.0.30", LeaseState.EXPIRED, 0, 10, hw_address="02:00:00:00:00:30"), "expired"),
           purge_before=now - 60)
    text = ok(config_path, "lease", "show", "198.18.0.30")
    assert text.splitlines()[:2] == ["address       198.18.0.30", "state         no current lease (only history is kept)"]
    assert "expired  02:00:00:00:00:30" in text
    data = json.loads(ok(config_path, "lease", "show", "198.18.0.30", "--json"))
    assert data["lease"] is None and [h["event"] for h in data["history"]] == ["expired"]


def test_reservation_changes_reach_the_running_daemon(tmp_path: Path) -> None:
    with IspdProcess(tmp_path, base_config(tmp_path)) as daemon:
        daemon.start()
        daemon.cli("subscriber", "add", "alice")
        daemon.cli("reservation", "add", "alice", "--mac", "02:00:5e:10:00:01", "--address", "198.18.0.10")
        daemon.cli("reservation", "delete", "1")

        def published(event: str) -> float | None:
            return daemon.metric_value("ispd_events_published_total", {"event": event})

        assert eventually(lambda: published("ReservationDeleted")) == 1
        assert published("ReservationAdded") == 1


def test_a_duid_reservation_reaches_dhcp_and_radius_and_they_keep_serving(tmp_path: Path) -> None:
    """A DHCPv6 client's reservation (a DUID with an IPv6 address, a prefix and a host name) is
    announced to every service; the DHCPv4 server and RADIUS, whose keys a DUID is not, take it in
    without a failure and go on answering: a relayed DISCOVER is offered an address from the pool,
    and the subscriber, whose only reservation is no line of its (line_lock), logs in."""
    server, relay_address, nas = "127.63.0.1", "127.63.0.2", "127.63.0.3"
    dhcp_port, auth = free_udp_port(server), free_udp_port(server)
    secret = b"duid-reservation-secret"
    config = base_config(
        tmp_path, metrics={"listen": f"{server}:{free_tcp_port(server)}"},
        dhcp={"enabled": True, "interfaces": ["lo"], "port": dhcp_port, "subnet": [
            {"network": "127.63.0.0/24", "pool": [{"name": "relayed", "range": "127.63.0.100 - 127.63.0.150"}]}]},
        radius={"enabled": True, "listen_auth": [f"{server}:{auth}"], "listen_acct": [f"{server}:{free_udp_port(server)}"],
                "reject_delay_seconds": 0, "plan": [{"plan": "home", "line_lock": True}],
                "client": [{"name": "bng", "address": f"{nas}/32", "secret": secret.decode()}]})
    with IspdProcess(tmp_path, config) as daemon:
        daemon.start()
        daemon.cli("plan", "add", "home", "--credential-policy", "cleartext")
        daemon.cli("subscriber", "add", "alice", "--plan", "home", "--password-stdin", input="alice-pw\n")
        daemon.cli("reservation", "add", "alice", "--duid", "00:03:00:01:02:00:5e:10:00:01", "--address6",
                   "2001:db8:1::10", "--prefix6", "2001:db8:200::/48", "--hostname", "alice-router")
        assert eventually(lambda: daemon.metric_value("ispd_events_published_total",
                                                      {"event": "ReservationAdded"}), timeout=10) == 1

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as relay:
            # Replies to a relay go to its address on the server's port (RFC 2131 §4.1).
            relay.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            relay.bind((relay_address, dhcp_port))
            relay.settimeout(5)
            discover = DHCPPacket(op=BOOTREQUEST, xid=0x6301, chaddr=bytes.fromhex("02005e100001").ljust(16, b"\0"),
                                  giaddr=IPv4Address(relay_address),
                                  options=((Option.MESSAGE_TYPE, bytes([DHCPMessageType.DISCOVER])),))
            relay.sendto(encode_dhcp(discover), (server, dhcp_port))
            offer = decode_dhcp(relay.recv(4096))
        assert offer.message_type is DHCPMessageType.OFFER and str(offer.yiaddr).startswith("127.63.0.1"), offer

        authenticator = os.urandom(16)
        request = encode_request(Code.ACCESS_REQUEST, 7, encode_attributes([
            (Attr.USER_NAME, b"alice"), (Attr.USER_PASSWORD, hide_password(b"alice-pw", secret, authenticator)),
            (Attr.NAS_IP_ADDRESS, socket.inet_aton(nas)), (Attr.CALLING_STATION_ID, b"02:00:00:00:00:77")]),
            secret, authenticator=authenticator)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((nas, 0))
            sock.settimeout(5)
            sock.sendto(request, (server, auth))
            assert sock.recv(4096)[0] == Code.ACCESS_ACCEPT
        assert daemon.metric_value("ispd_events_handler_failures_total", {"event": "ReservationAdded"}) == 0
        assert "Traceback" not in daemon.log_text()


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def test_who_names_the_subscriber_of_each_moment_as_text_json_and_csv(config_path: Path) -> None:
    now = float(int(time.time()))
    address = "198.18.0.40"
    alice = Lease(address, LeaseState.BOUND, now - 7200, now - 3600, subscriber_id=1, hw_address="02:00:00:00:00:0a",
                  circuit_id="olt1/1/1", pool="home")
    record(config_path, (alice, "granted"),
           (Lease(address, LeaseState.RELEASED, now - 7200, now - 5000, subscriber_id=1,
                  hw_address="02:00:00:00:00:0a", circuit_id="olt1/1/1", pool="home"), "released"),
           (Lease(address, LeaseState.BOUND, now - 3000, now + 600, subscriber_id=2, hw_address="02:00:00:00:00:0b",
                  pool="home"), "granted"))
    text = ok(config_path, "who", address, "--at", iso(now - 6000))
    assert text.splitlines()[:3] == [
        f"{address} at {iso(now - 6000)}:",
        f"  alice (#1): DHCP lease from {iso(now - 7200)} until {iso(now - 5000)}",
        "    MAC 02:00:00:00:00:0a, circuit-id olt1/1/1, pool home"]
    assert "lease_history #" in text and "granted" in text and "released" in text
    nobody = run(config_path, "who", address, "--at", iso(now - 4000))
    assert nobody.returncode == 1 and "nobody held 198.18.0.40" in nobody.stdout
    before_history = run(config_path, "who", address, "--at", "0")
    assert "at 1970-01-01T00:00:00Z" in before_history.stdout  # a time, not "-"
    # Before what retention keeps, the empty answer is said to be no answer (on stderr).
    assert "is deleted (store.history_retention_days = 400)" in before_history.stderr
    assert "retention" not in run(config_path, "who", address, "--at", iso(now - 4000)).stderr
    assert "history before" in run(config_path, "usage", "--month", "2020-01").stderr
    assert "history before" not in run(config_path, "usage").stderr  # this month's: kept whatever the retention
    assert "bob (#2): DHCP lease" in ok(config_path, "who", address)  # now, by default
    lines = ok(config_path, "who", address, "--from", iso(now - 7200), "--to", iso(now), "--csv").splitlines()
    assert lines[0].startswith("address,source,starts_at,ends_at,username")
    assert lines[0].endswith(",terminate_cause,evidence")  # an IPv6 answer's prefix columns are not an IPv4 one's
    assert [line.split(",")[4] for line in lines[1:]] == ["alice", "bob"]
    data = json.loads(ok(config_path, "who", address, "--at", str(now - 100), "--json"))
    assert [h["username"] for h in data["holdings"]] == ["bob"] and data["holdings"][0]["evidence"]
    assert "prefix" not in data["holdings"][0]
    bad = run(config_path, "who", address, "--at", "yesterday-ish")
    assert bad.returncode == 2 and "is not a time" in bad.stderr
    both = run(config_path, "who", address, "--at", "now", "--from", "now")
    assert both.returncode == 2 and "not both" in both.stderr


def test_usage_per_day_for_one_subscriber_and_totals_for_billing(config_path: Path) -> None:
    from ispd.store.models import AccountingRecord, AccountingStatus

    t0 = 1_793_520_000.0  # 2026-11-01T08:00:00Z
    start = AccountingRecord(at=t0, status=AccountingStatus.START, nas_address="198.18.0.1", acct_session_id="a1",
                             username="alice", subscriber_id=1, framed_ip="198.18.9.1")

    def step(at: float, status: AccountingStatus, octets: int, seconds: int, **kw: object) -> AccountingRecord:
        fields = {name: getattr(start, name) for name in start.__dataclass_fields__}
        fields.update(at=at, status=status, input_octets=octets, output_octets=10 * octets,
                      session_time_seconds=seconds, **kw)
        return AccountingRecord(**fields)  # type: ignore[arg-type]

    async def write() -> None:
        store = await open_store(load_config(config_path).store)
        try:
            for record_ in (start, step(t0 + 3600, AccountingStatus.INTERIM_UPDATE, 1_000_000, 3600),
                            step(t0 + 86400, AccountingStatus.STOP, 3_000_000, 86400)):
                await store.record_accounting([record_])
            await store.record_accounting([step(t0 + 86400 * 40, AccountingStatus.START, 5, 5, acct_session_id="a2")])
        finally:
            await store.close()

    asyncio.run(write())
    lines = ok(config_path, "usage", "alice", "--month", "2026-11", "--csv").splitlines()
    assert lines == ["subscriber_id,username,day,input_octets,output_octets,session_seconds",
                     "1,alice,2026-11-01,1000000,10000000,3600", "1,alice,2026-11-02,2000000,20000000,82800"]
    billing = ok(config_path, "usage", "--month", "2026-11", "--csv").splitlines()
    assert billing[1:] == ["1,alice,2026-11-01..2026-11-02,3000000,30000000,86400"]  # bob used nothing
    text = ok(config_path, "usage", "alice", "--month", "2026-11")
    assert "2026-11-02" in text and "total: input 3.00 MB, output 30.00 MB, 24h00m online" in text
    assert text.startswith("usage from 2026-11-01 to 2026-11-30, whole UTC days")  # what the rows are
    # JSON names the days its rows cover too, the same for a month and for the span that is one.
    for span in (("--month", "2026-11"), ("--from", "2026-11-01", "--to", "2026-12-01")):
        document = json.loads(ok(config_path, "usage", "alice", *span, "--json"))
        assert (document["first_day"], document["last_day"]) == ("2026-11-01", "2026-11-30"), span
        assert [day["day"] for day in document["usage"]] == ["2026-11-01", "2026-11-02"]
    assert ok(config_path, "usage", "alice", "--month", "2026-10", "--csv").splitlines()[1:] == []
    assert run(config_path, "usage", "alice", "--month", "November").returncode == 2


def test_who_names_the_session_whose_ipv6_prefix_held_an_address(tmp_path: Path) -> None:
    """Real accounting (an Accounting-Request to the running daemon, from a NAS on loopback)
    brings a session's Framed- and Delegated-IPv6-Prefix and Framed-IPv6-Address; ``who`` finds
    it by any address or prefix inside them, with the prefix that matched and its kind, while the
    daemon runs."""
    server, nas, secret = "127.60.0.1", "127.60.0.2", b"who-v6-secret"
    acct = free_udp_port(server)
    config = base_config(tmp_path, metrics={"listen": f"{server}:{free_tcp_port(server)}"}, radius={
        "enabled": True, "listen_auth": [f"{server}:{free_udp_port(server)}"], "listen_acct": [f"{server}:{acct}"],
        "client": [{"name": "bng", "address": f"{nas}/32", "secret": secret.decode()}]})

    def account(identifier: int, status: int, *prefixes: tuple[int, bytes]) -> bytes | None:
        attributes = encode_attributes([
            (Attr.ACCT_STATUS_TYPE, status.to_bytes(4, "big")), (Attr.USER_NAME, b"alice"),
            (Attr.ACCT_SESSION_ID, b"v6-1"), (Attr.NAS_IP_ADDRESS, socket.inet_aton(nas)),
            (Attr.CALLING_STATION_ID, b"02:00:00:00:00:a6"), *prefixes])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((nas, 0))
            sock.settimeout(5)
            sock.sendto(encode_request(Code.ACCOUNTING_REQUEST, identifier, attributes, secret), (server, acct))
            return sock.recv(4096)

    with IspdProcess(tmp_path, config) as ispd:
        ispd.write_config()
        ispd.cli("subscriber", "add", "alice")  # before the start: known to the accounting at once
        ispd.start()
        # RFC 3162 §2.3 layout: reserved, length, then the prefix's octets. The delegated one
        # carries bits past its /48 (stored as sent), the framed one only the octets it needs.
        delegated = bytes((0, 48)) + bytes.fromhex("20010db800010000ff00")
        framed = bytes((0, 64)) + bytes.fromhex("20010db8ffff0001")
        address = bytes.fromhex("20010db8ffff000100000000000000a6")  # the router's, on the link (IA_NA)
        reply = account(1, 1, (Attr.FRAMED_IPV6_PREFIX, framed), (Attr.DELEGATED_IPV6_PREFIX, delegated),
                        (Attr.FRAMED_IPV6_ADDRESS, address))
        assert reply is not None and reply[0] == Code.ACCOUNTING_RESPONSE
        started = time.time()
        path = ispd.config_path

        text = ok(path, "who", "2001:db8:1:2::5", "--at", "now")
        assert text.splitlines()[1].startswith(
            "  alice (#1): RADIUS session, delegated prefix 2001:db8:1::/48 from "), text
        assert text.splitlines()[1].endswith(" still open")
        assert "Calling-Station-Id 02:00:00:00:00:a6, NAS 127.60.0.2, Acct-Session-Id v6-1" in text
        assert "accounting_records #1" in text and "start" in text
        # An abuse report's /64, written long-hand in upper case.
        data = json.loads(ok(path, "who", "2001:0DB8:0001:0002::/64", "--json"))
        assert data["address"] == "2001:db8:1:2::/64"
        [holding] = data["holdings"]
        assert (holding["username"], holding["prefix"], holding["prefix_kind"], holding["source"]) == (
            "alice", "2001:db8:1::/48", "delegated", "radius-session")
        rows = list(csv.reader(ok(path, "who", "2001:db8::/32", "--csv").splitlines()))
        assert rows[0][-2:] == ["prefix", "prefix_kind"]
        assert [(r[4], r[-2], r[-1]) for r in rows[1:]] == [("alice", "2001:db8:ffff:1::/64", "framed"),
                                                            ("alice", "2001:db8:1::/48", "delegated"),
                                                            ("alice", "2001:db8:ffff:1::a6", "framed-address")]

        reply = account(2, 2)  # Stop
        assert reply is not None and reply[0] == Code.ACCOUNTING_RESPONSE
        stopped = time.time()
        closed = ok(path, "who", "2001:db8:1:2::5", "--from", iso(started - 1), "--to", iso(stopped + 1))
        assert closed.splitlines()[1].startswith("  alice (#1): RADIUS session, delegated prefix ") and \
            " until " in closed.splitlines()[1]
        after = run(path, "who", "2001:db8:1:2::5", "--at", "now")
        assert after.returncode == 1 and "nobody held 2001:db8:1:2::5 at " in after.stdout
    assert "Traceback" not in ispd.log_text()


def test_a_fixed_address_dhcp_never_gives_is_warned_of(tmp_path: Path) -> None:
    """A reservation's fixed address that is a subnet's router, network, broadcast or server
    address was taken without a word, and its client got a pool address: the operator learned
    of it from the lease list. The reservation is still made (it names the subscriber), with a
    warning that says what the address is and what the client gets; a good one says nothing."""
    config = base_config(tmp_path, dhcp={"enabled": True, "interfaces": ["eth1"], "subnet": [
        {"network": "198.18.0.0/24", "interface": "eth1", "routers": ["198.18.0.1"], "server_id": "198.18.0.2",
         "pool": [{"name": "p", "range": "198.18.0.10 - 198.18.0.20"}]}]})
    path = toml.write(tmp_path / "ispd.toml", config)
    ok(path, "subscriber", "add", "alice")
    for n, (address, what) in enumerate((("198.18.0.1", "a router"), ("198.18.0.2", "the server_id"),
                                         ("198.18.0.0", "the network address"),
                                         ("198.18.0.255", "the broadcast address"))):
        result = run(path, "reservation", "add", "alice", "--mac", f"02:00:5e:00:00:0{n}", "--address", address)
        assert result.returncode == 0, result.stderr
        assert result.stderr == (f"ispd: warning: {address} is {what} of subnet 198.18.0.0/24: DHCP never gives "
                                 "it to a client, so this client gets a pool address instead\n")
    result = run(path, "reservation", "add", "alice", "--mac", "02:00:5e:00:00:09", "--address", "198.18.0.50")
    assert result.returncode == 0 and result.stderr == ""
    ok(path, "reservation", "delete", "1")
    result = run(path, "reservation", "set", "5", "--address", "198.18.0.1")
    assert result.returncode == 0 and "198.18.0.1 is a router of subnet 198.18.0.0/24" in result.stderr
    result = run(path, "reservation", "set", "5", "--hostname", "home")
    assert result.returncode == 0 and result.stderr == ""
