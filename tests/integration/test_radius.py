"""RADIUS end to end: ispd as a process, FreeRADIUS's radclient and radtest as the NAS, a fake
NAS for Disconnect and CoA, subscribers made with the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ispd.control import ControlError, control_request
from ispd.credentials import nt_hash
from ispd.radius import mschap
from ispd.radius.codec import Attr, Code, decode, encode_attributes, encode_request, hide_password
from tests.lab.fakenas import FakeNas
from tests.lab.ports import free_tcp_port, free_udp_port
from tests.lab.process import IspdProcess, base_config, eventually
from tests.lab.radclient import Reply, radclient, radtest, require_radclient

SECRET = "testing123"


def radius_config(tmp_path: Path, coa_port: int, **radius: Any) -> dict[str, Any]:
    auth, acct = free_udp_port(), free_udp_port()
    section = {
        "enabled": True, "listen_auth": [f"127.0.0.1:{auth}"], "listen_acct": [f"127.0.0.1:{acct}"],
        "reject_delay_seconds": 0, "coa_timeout_seconds": 0.5, "coa_attempts": 2,
        # 127.0.0.0/30: the NAS may report 127.0.0.2 or .3 as its NAS-IP-Address; .5 is a stranger.
        "client": [{"name": "bng", "address": "127.0.0.0/30", "secret": SECRET, "kind": "mikrotik",
                    "coa_port": coa_port}],
    }
    section.update(radius)
    return base_config(tmp_path, radius=section)


class Radius:
    def __init__(self, ispd: IspdProcess) -> None:
        self.ispd = ispd
        section = ispd.config["radius"]
        self.auth = section["listen_auth"][0]
        self.acct = section["listen_acct"][0]

    def pap(self, user: str, password: str, method: str = "pap") -> str | None:
        return radtest(user, password, self.auth, SECRET, method).code

    def accounting(self, attributes: str) -> str | None:
        return radclient(self.acct, "acct", SECRET, attributes).code

    def show(self, subscriber: str) -> dict[str, Any]:
        return json.loads(self.ispd.cli("subscriber", "show", subscriber, "--json").stdout)


@pytest.fixture(scope="module")
def nas() -> Iterator[FakeNas]:
    with FakeNas(secret=SECRET.encode()) as fake:
        yield fake


@pytest.fixture(scope="module")
def radius(tmp_path_factory: pytest.TempPathFactory, nas: FakeNas) -> Iterator[Radius]:
    require_radclient()
    workdir = tmp_path_factory.mktemp("radius")
    with IspdProcess(workdir, radius_config(workdir, nas.port)) as ispd:
        ispd.start()
        ispd.cli("plan", "add", "home", "--download-kbps", "100000", "--upload-kbps", "20000",
                 "--credential-policy", "cleartext", "--max-sessions", "2")
        ispd.cli("plan", "add", "fast", "--download-kbps", "500000", "--upload-kbps", "100000",
                 "--credential-policy", "cleartext")
        ispd.cli("plan", "add", "secure")  # verifier only: PAP works, CHAP cannot
        ispd.cli("subscriber", "add", "alice", "--plan", "home", "--password-stdin", input="alice-pw\n")
        ispd.cli("subscriber", "add", "bob", "--plan", "home", "--password-stdin", input="bob-pw\n")
        ispd.cli("subscriber", "add", "carol", "--plan", "secure", "--password-stdin", input="carol-pw\n")
        ispd.cli("reservation", "add", "alice", "--username", "alice@pppoe", "--address", "198.18.7.7")
        service = Radius(ispd)
        eventually(lambda: service.pap("alice@pppoe", "alice-pw") == "Access-Accept", timeout=10)
        yield service


def test_a_plan_section_naming_no_plan_is_reported(tmp_path: Path) -> None:
    """A typo in [[radius.plan]] plan = ... reaches nobody: said at start and at each reload. A
    plan added with the CLI just before the reload is known to it, though the daemon has not
    polled the store since (from CI: it was called unknown when the poll came later)."""
    config = radius_config(tmp_path, free_udp_port(), plan=[{"plan": "hmoe", "attributes": ["Filter-Id = fast"]}])
    config["daemon"]["store_poll_interval_seconds"] = 60
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        assert [e["plan"] for e in ispd.log_events("radius.plan.unknown")] == ["hmoe"]
        ispd.cli("plan", "add", "home")
        config["radius"]["plan"].append({"plan": "home", "attributes": ["Filter-Id = home"]})
        ispd.write_config(config)
        ispd.reload()
        assert [e["plan"] for e in ispd.log_events("radius.plan.unknown")] == ["hmoe", "hmoe"]


def test_radtest_authenticates_with_pap_chap_mschap_and_eap_md5(radius: Radius) -> None:
    for method in ("pap", "chap", "mschap", "eap-md5"):
        reply = radtest("alice", "alice-pw", radius.auth, SECRET, method)
        assert reply.code == "Access-Accept", (method, reply.output)
        assert reply.first("Mikrotik-Rate-Limit") == "20000k/100000k", reply.output
        assert reply.first("Class") == "0x697370643a31"  # "ispd:1"
        assert reply.first("Message-Authenticator") is not None  # in every response
        assert radtest("alice", "nope", radius.auth, SECRET, method).code == "Access-Reject", method
    mschap_v1 = radtest("alice", "alice-pw", radius.auth, SECRET, "mschap")
    assert mschap_v1.first("MS-CHAP-MPPE-Keys") is not None


def test_verifier_only_subscribers_get_pap_but_not_chap(radius: Radius) -> None:
    assert radius.pap("carol", "carol-pw") == "Access-Accept"  # scrypt, off the loop
    assert radius.pap("carol", "carol-pw") == "Access-Accept"  # then remembered
    assert radius.pap("carol", "wrong") == "Access-Reject"
    assert radius.pap("carol", "carol-pw", "chap") == "Access-Reject"
    assert radius.ispd.metric_value("ispd_radius_rejects_total", {"reason": "no_password_form"}) == 1


def test_a_login_reservation_gives_a_fixed_address(radius: Radius) -> None:
    reply = radtest("alice@pppoe", "alice-pw", radius.auth, SECRET)
    assert reply.code == "Access-Accept" and reply.first("Framed-IP-Address") == "198.18.7.7"


def test_a_login_reservation_gives_a_fixed_ipv6_address_and_prefix_to_a_running_daemon(radius: Radius) -> None:
    """A PPPoE business line's IPv6: reserved with the CLI while ispd runs, and in the next
    Access-Accept as Framed-IPv6-Address and Delegated-IPv6-Prefix, as radtest reads them."""
    radius.ispd.cli("reservation", "add", "bob", "--username", "bob@pppoe", "--address6", "2001:DB8:1::10",
                    "--prefix6", "2001:db8:200::/48")

    def accepted() -> Reply | None:
        reply = radtest("bob@pppoe", "bob-pw", radius.auth, SECRET)
        return reply if reply.code == "Access-Accept" else None

    reply = eventually(accepted, timeout=10)  # once the daemon has heard of it
    assert reply.first("Delegated-IPv6-Prefix") == "2001:db8:200::/48", reply.output
    assert reply.first("Framed-IPv6-Address") == "2001:db8:1::10", reply.output
    assert reply.first("Framed-IP-Address") is None  # (none reserved: the NAS's)
    # bob's own username has none of it.
    plain = radtest("bob", "bob-pw", radius.auth, SECRET)
    assert plain.code == "Access-Accept" and plain.first("Delegated-IPv6-Prefix") is None, plain.output


async def _add_subscribers(path: Path, plans: dict[str, list[str]]) -> None:
    """Plans and their subscribers (password: "<name>-pw", kept in cleartext), straight into the store."""
    from ispd.store import StoreConfig, open_store
    from ispd.store.models import CredentialPolicy, StoredCredentials

    store = await open_store(StoreConfig(path=path))
    try:
        for plan, names in plans.items():
            await store.add_plan(plan, actor="test", credential_policy=CredentialPolicy.CLEARTEXT)
            for name in names:
                await store.add_subscriber(name, actor="test", plan=plan,
                                           credentials=StoredCredentials(cleartext=f"{name}-pw", updated_at=1))
    finally:
        await store.close()


def test_a_prefix_pool_gives_each_subscriber_a_prefix_for_good(tmp_path: Path) -> None:
    """RIPE-690 stable prefixes: a plan's [[radius.prefix_pool]] reserves each subscriber's first
    login the pool's next /56, which every later login gets, also after a restart; a full pool
    still accepts, without the prefix (radtest as the NAS)."""
    require_radclient()
    config = radius_config(tmp_path, free_udp_port(), prefix_pool=[
        {"name": "homes", "prefix": "2001:db8:1000::/48", "delegated_length": 56},
        {"name": "one", "prefix": "2001:db8:2000::/56", "delegated_length": 56}],
        plan=[{"plan": "v6", "prefix_pool": "homes"}, {"plan": "tiny", "prefix_pool": "one"}])
    with IspdProcess(tmp_path, config) as ispd:
        # Into the store before the start, which loads them (no wait for the daemon's store
        # poll, nor a CLI process's second each).
        asyncio.run(_add_subscribers(tmp_path / "ispd.db", {"v6": ["anna", "ben", "emil", "fred"],
                                                             "tiny": ["cleo", "dora"]}))
        ispd.start()
        service = Radius(ispd)

        def login(name: str, password: str | None = None) -> Reply:
            return eventually(lambda: (r := radtest(name, password or f"{name}-pw", service.auth, SECRET)).code
                              == "Access-Accept" and r, timeout=10)

        first_login = login("anna")
        assert first_login.first("Delegated-IPv6-Prefix") == "2001:db8:1000::/56", first_login.output
        assert login("anna").first("Delegated-IPv6-Prefix") == "2001:db8:1000::/56"
        assert login("ben").first("Delegated-IPv6-Prefix") == "2001:db8:1000:100::/56"
        listed = json.loads(ispd.cli("reservation", "list", "--json").stdout)
        assert [(r["username"], r["kind"], r["key"], r["prefix6"]) for r in listed] == [
            ("anna", "username", "anna", "2001:db8:1000::/56"), ("ben", "username", "ben", "2001:db8:1000:100::/56")]
        assert "2001:db8:1000::/56" in ispd.cli("subscriber", "show", "anna").stdout
        # A pool of one /56: cleo takes it, dora is accepted without one.
        assert login("cleo").first("Delegated-IPv6-Prefix") == "2001:db8:2000::/56"
        full = login("dora")
        assert full.first("Delegated-IPv6-Prefix") is None, full.output
        assert ispd.metric_value("ispd_radius_prefix_reservations_total", {"result": "exhausted"}) == 1
        assert ispd.metric_value("ispd_radius_prefix_reservations_total", {"result": "reserved"}) == 3
        assert ispd.terminate() == 0
        ispd.start()  # the reservations come back from the store; the pools' cursors start over
        assert login("anna").first("Delegated-IPv6-Prefix") == "2001:db8:1000::/56"
        assert login("emil").first("Delegated-IPv6-Prefix") == "2001:db8:1000:200::/56"

        # A login reserved with an address only (fred@pppoe) gets the pool's prefix into that
        # reservation; `reservation set` changes its address for the next login, prefix kept.
        ispd.cli("reservation", "add", "fred", "--username", "fred@pppoe", "--address", "198.18.9.9")
        reserved = login("fred@pppoe", "fred-pw")
        assert (reserved.first("Framed-IP-Address"), reserved.first("Delegated-IPv6-Prefix")) == (
            "198.18.9.9", "2001:db8:1000:300::/56"), reserved.output
        freds = json.loads(ispd.cli("reservation", "list", "--subscriber", "fred", "--json").stdout)
        assert [(r["key"], r["address"], r["prefix6"]) for r in freds] == [
            ("fred@pppoe", "198.18.9.9", "2001:db8:1000:300::/56")]
        # Its session, open with the old address: `reservation set` says it keeps it until it logs in again.
        assert radclient(service.acct, "acct", SECRET, "User-Name = fred@pppoe, Acct-Session-Id = fred-1, "
                         "NAS-IP-Address = 127.0.0.1, Framed-IP-Address = 198.18.9.9, "
                         "Acct-Status-Type = Start").code == "Accounting-Response"
        [session] = Radius(ispd).show("fred")["sessions"]
        out = ispd.cli("reservation", "set", str(freds[0]["id"]), "--address", "198.18.9.10").stdout
        assert out == (f"reservation #{freds[0]['id']} of fred: username fred@pppoe -> address 198.18.9.10, "
                       "prefix 2001:db8:1000:300::/56\n"
                       f"session #{session['id']} (fred@pppoe on bng) still has 198.18.9.9 until it logs in again "
                       f"(`ispd session disconnect {session['id']}` ends it now)\n")
        moved = eventually(lambda: (r := login("fred@pppoe", "fred-pw")).first("Framed-IP-Address") == "198.18.9.10" and r,
                           timeout=10)
        assert moved.first("Delegated-IPv6-Prefix") == "2001:db8:1000:300::/56"
        assert "reservation.changed address=198.18.9.10" in ispd.cli("subscriber", "show", "fred").stdout
        # Deleted: the session's prefix is the reservation's (its old address is not).
        assert radclient(service.acct, "acct", SECRET, "User-Name = fred@pppoe, Acct-Session-Id = fred-1, "
                         "NAS-IP-Address = 127.0.0.1, Framed-IP-Address = 198.18.9.9, Delegated-IPv6-Prefix = "
                         "2001:db8:1000:300::/56, Acct-Status-Type = Interim-Update").code == "Accounting-Response"
        out = ispd.cli("reservation", "delete", str(freds[0]["id"])).stdout
        assert out.splitlines()[1:] == [
            f"session #{session['id']} (fred@pppoe on bng) still has 2001:db8:1000:300::/56 until it logs in "
            f"again (`ispd session disconnect {session['id']}` ends it now)"], out


def test_a_second_station_of_one_login_does_not_get_the_login_s_delegated_prefix(tmp_path: Path) -> None:
    """A plan of max_sessions 2 with a prefix pool: bob's second home router (another NAS-Port-Id
    and MAC) logging in while the first is online got the same /56 as the first, and `ispd who`
    named both sessions for it. The first station keeps it, redialling too; the second is
    accepted without one (counted, and said in the log), and the pool reserves it no other."""
    require_radclient()
    config = radius_config(tmp_path, free_udp_port(), prefix_pool=[
        {"name": "pd", "prefix": "2001:db8:1000::/40", "delegated_length": 56}],
        plan=[{"plan": "home", "prefix_pool": "pd"}])
    with IspdProcess(tmp_path, config) as ispd:
        ispd.write_config()
        ispd.cli("plan", "add", "home", "--max-sessions", "2", "--credential-policy", "cleartext")
        ispd.cli("subscriber", "add", "bob", "--plan", "home", "--password-stdin", input="bob-pw\n")
        ispd.start()
        service = Radius(ispd)
        stations = {1: 'NAS-Port-Id = "ge-0/0/1:100", Calling-Station-Id = "aa:bb:cc:00:00:01"',
                    2: 'NAS-Port-Id = "ge-0/0/2:200", Calling-Station-Id = "aa:bb:cc:00:00:02"'}

        def login(station: int) -> Reply:
            reply = radclient(service.auth, "auth", SECRET, "User-Name = bob, User-Password = bob-pw, "
                              f"NAS-IP-Address = 127.0.0.1, Message-Authenticator = 0x00, {stations[station]}")
            assert reply.code == "Access-Accept", reply.output
            return reply

        def account(station: int, status: str, more: str = "") -> None:
            assert radclient(service.acct, "acct", SECRET, f"User-Name = bob, Acct-Session-Id = s{station}, "
                             f"NAS-IP-Address = 127.0.0.1, Acct-Status-Type = {status}, {stations[station]}{more}"
                             ).code == "Accounting-Response"

        assert login(1).first("Delegated-IPv6-Prefix") == "2001:db8:1000::/56"
        account(1, "Start", ", Delegated-IPv6-Prefix = 2001:db8:1000::/56")
        second = login(2)
        assert second.first("Delegated-IPv6-Prefix") is None, second.output
        account(2, "Start")
        assert login(1).first("Delegated-IPv6-Prefix") == "2001:db8:1000::/56"  # the first redials
        assert login(2).first("Delegated-IPv6-Prefix") is None
        assert ispd.metric_value("ispd_radius_reserved_ipv6_withheld_total", {"kind": "prefix"}) == 2
        [warning] = ispd.log_events("radius.ipv6.withheld")  # (once a minute per login)
        assert (warning["login"], warning["held_by_session"], warning["held_by_port"]) == ("bob", "s1", "ge-0/0/1:100")
        listed = json.loads(ispd.cli("reservation", "list", "--json").stdout)
        assert [(r["key"], r["prefix6"]) for r in listed] == [("bob", "2001:db8:1000::/56")]
        # The first one gone, the second gets it at its next login.
        account(1, "Stop")
        assert eventually(lambda: login(2).first("Delegated-IPv6-Prefix") == "2001:db8:1000::/56", timeout=5)


def test_a_subscriber_s_own_reply_attributes_reach_the_nas_over_its_plan_s(radius: Radius) -> None:
    """A business line: its routed block (Framed-Route) and its own prefix for its router, and a
    faster rate than its plan's, set with the CLI and in the next Access-Accept."""
    radius.ispd.cli("subscriber", "add", "dave", "--plan", "home", "--password-stdin", input="dave-pw\n")
    route, prefix = '"203.0.113.0/29 0.0.0.0 1"', "2001:db8:77::/48"
    out = radius.ispd.cli("subscriber", "radius-reply", "dave", f"Framed-Route = {route}",
                          f"Delegated-IPv6-Prefix = {prefix}", "Mikrotik-Rate-Limit = 50000k/200000k").stdout
    assert "Framed-Route" in out

    def accepted() -> Reply | None:
        reply = radtest("dave", "dave-pw", radius.auth, SECRET)
        return reply if reply.first("Framed-Route") is not None else None

    reply = eventually(accepted, timeout=10)  # once the daemon has heard of it (its store poll)
    assert reply.first("Framed-Route") == "203.0.113.0/29 0.0.0.0 1", reply.output
    assert reply.first("Delegated-IPv6-Prefix") == prefix, reply.output
    assert reply.attributes["Mikrotik-Rate-Limit"] == ["50000k/200000k"], reply.output  # the plan's is replaced
    assert reply.first("Class") == "0x" + b"ispd:".hex() + str(json.loads(radius.ispd.cli(
        "subscriber", "show", "dave", "--json").stdout)["subscriber"]["id"]).encode().hex()
    shown = radius.ispd.cli("subscriber", "show", "dave").stdout
    assert "radius reply  3 of its own" in shown and "Framed-Route = " in shown
    # Mistakes are refused before they reach the store, each with what is wrong.
    for bad, says in (("Framed-Rout = x", "no such attribute"), ("Framed-IP-Address = 198.18.7.9", "reservation"),
                      ("Session-Timeout = soon", "Session-Timeout")):
        failed = radius.ispd.cli("subscriber", "radius-reply", "dave", bad, check=False)
        assert failed.returncode == 1 and says in failed.stderr, failed.stderr
    # A tunnel's password is a secret: its value stays out of the audit that show prints.
    radius.ispd.cli("subscriber", "radius-reply", "dave", "Tunnel-Password = tunnel-s3cret")
    radius.ispd.cli("subscriber", "radius-reply", "dave", "--clear")
    shown = radius.ispd.cli("subscriber", "show", "dave").stdout
    assert "radius_reply_set" in shown and "tunnel-s3cret" not in shown, shown
    reply = eventually(lambda: (r := radtest("dave", "dave-pw", radius.auth, SECRET)).first("Framed-Route") is None
                       and r, timeout=10)
    assert reply.attributes["Mikrotik-Rate-Limit"] == ["20000k/100000k"], reply.output  # the plan's again


def test_mschap_v2_proves_the_server_to_the_client(radius: Radius) -> None:
    challenge, peer = os.urandom(16), os.urandom(16)
    response = mschap.nt_response_v2(challenge, peer, b"bob", nt_hash("bob-pw"))
    attributes = (f"User-Name = bob, MS-CHAP-Challenge = 0x{challenge.hex()}, "
                  f"MS-CHAP2-Response = 0x{(bytes((1, 0)) + peer + bytes(8) + response).hex()}, "
                  "Message-Authenticator = 0x00")
    reply = radclient(radius.auth, "auth", SECRET, attributes)
    assert reply.code == "Access-Accept", reply.output
    proof = mschap.authenticator_response(nt_hash("bob-pw"), response, peer, challenge, b"bob")
    assert reply.first("MS-CHAP2-Success") == "0x01" + proof.hex()
    assert reply.first("MS-MPPE-Send-Key") is not None and reply.first("MS-MPPE-Recv-Key") is not None


def test_requests_without_message_authenticator_get_no_reply(radius: Radius) -> None:
    before = radius.ispd.metric_value("ispd_radius_dropped_total", {"port": "auth", "reason": "missing_message_authenticator"}) or 0
    reply = radclient(radius.auth, "auth", SECRET, 'User-Name = alice, User-Password = "alice-pw"', timeout=0.5,
                      retries=1)
    assert reply.code is None
    assert radius.ispd.metric_value("ispd_radius_dropped_total",
                                    {"port": "auth", "reason": "missing_message_authenticator"}) == before + 1


def test_status_server_on_both_ports(radius: Radius) -> None:
    assert radclient(radius.auth, "status", SECRET, "Message-Authenticator = 0x00").code == "Access-Accept"
    assert radclient(radius.acct, "status", SECRET, "Message-Authenticator = 0x00").code == "Accounting-Response"


def test_accounting_shows_in_subscriber_show(radius: Radius) -> None:
    base = "User-Name = bob, Acct-Session-Id = bob-1, NAS-IP-Address = 127.0.0.1, Framed-IP-Address = 198.18.8.8"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    assert radius.accounting(f"{base}, Acct-Status-Type = Interim-Update, Acct-Input-Octets = 1000, "
                             "Acct-Output-Octets = 4000, Acct-Session-Time = 60") == "Accounting-Response"
    overview = radius.show("bob")
    [session] = [s for s in overview["sessions"] if s["acct_session_id"] == "bob-1"]
    assert session["stopped_at"] is None and session["framed_ip"] == "198.18.8.8"
    assert radius.accounting(f"{base}, Acct-Status-Type = Stop, Acct-Input-Octets = 2000, Acct-Input-Gigawords = 1,"
                             " Acct-Output-Octets = 9000, Acct-Session-Time = 120, "
                             "Acct-Terminate-Cause = User-Request") == "Accounting-Response"
    overview = radius.show("bob")
    [session] = [s for s in overview["sessions"] if s["acct_session_id"] == "bob-1"]
    assert session["terminate_cause"] == "User-Request"
    assert session["input_octets"] == 2000 + (1 << 32) and session["output_octets"] == 9000
    assert overview["usage_this_month"] == {"input_octets": 2000 + (1 << 32), "output_octets": 9000,
                                            "session_seconds": 120}
    text = radius.ispd.cli("subscriber", "show", "bob").stdout
    assert "bob-1 on 127.0.0.1 ip 198.18.8.8" in text and "ended" in text
    listed = radius.ispd.cli("session", "list", "--subscriber", "bob").stdout
    assert "bob-1" in listed and "User-Request" in listed


def send_raw(address: str, data: bytes, *, source: str = "127.0.0.1", wait: float = 1.0,
             times: int = 1) -> list[bytes | None]:
    """Send ``data`` ``times`` times from one source port (a NAS retransmitting); the replies."""
    host, port = address.rsplit(":", 1)
    replies: list[bytes | None] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(wait)
        for _ in range(times):
            sock.sendto(data, (host, int(port)))
            try:
                replies.append(sock.recv(4096))
            except TimeoutError:
                replies.append(None)
    return replies


def test_a_retransmission_gets_the_first_reply_and_counts_once(radius: Radius) -> None:
    attributes = encode_attributes([(Attr.ACCT_STATUS_TYPE, (1).to_bytes(4, "big")), (Attr.USER_NAME, b"bob"),
                                    (Attr.ACCT_SESSION_ID, b"bob-dup"), (Attr.NAS_IP_ADDRESS, bytes((127, 0, 0, 1)))])
    request = encode_request(Code.ACCOUNTING_REQUEST, 77, attributes, SECRET.encode())
    first, again = send_raw(radius.acct, request, times=2)
    assert first is not None and first == again
    records = radius.ispd.metric_value("ispd_radius_accounting_total", {"status": "start", "outcome": "started"})
    duplicates = radius.ispd.metric_value("ispd_radius_duplicates_total", {"port": "acct"})
    assert records is not None and duplicates is not None and duplicates >= 1
    sessions = json.loads(radius.ispd.cli("session", "list", "--subscriber", "bob", "--open", "--json").stdout)
    assert [s["acct_session_id"] for s in sessions].count("bob-dup") == 1
    assert radius.accounting("User-Name = bob, Acct-Session-Id = bob-dup, NAS-IP-Address = 127.0.0.1, "
                             "Acct-Status-Type = Stop") == "Accounting-Response"


def test_unknown_clients_and_malformed_packets_get_nothing_and_break_nothing(radius: Radius) -> None:
    good = encode_request(Code.STATUS_SERVER, 1, b"", SECRET.encode())
    assert send_raw(radius.auth, good, source="127.0.0.5", wait=0.3) == [None]  # not a configured client
    assert (radius.ispd.metric_value("ispd_radius_dropped_total", {"port": "auth", "reason": "unknown_client"}) or 0) >= 1
    assert any(e["reason"] == "unknown_client" and e["source"] == "127.0.0.5"
               for e in radius.ispd.log_events("radius.request.dropped"))
    rng = random.Random(7)
    host, port = radius.auth.rsplit(":", 1)
    bad = [b"", b"\x01", good[:19], bytes((1, 1, 0, 10)) + bytes(16), bytes((1, 1, 0x20, 0)) + bytes(16),
           good[:20] + b"\x01\x00", good[:20] + b"\x50\x12" + bytes(3), bytes((1, 2, 0, 30)) + bytes(16) + b"\x01\x01"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(3000):
            if i % 3 == 0:
                data = bad[i % len(bad)]
            else:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120)))
                if i % 3 == 1 and len(data) >= 20:  # valid-looking headers with garbage attributes
                    data = bytes((rng.choice((1, 4, 12, 43)), i % 256)) + len(data).to_bytes(2, "big") + data[4:]
            sock.sendto(data, (host, int(port)))
            if i % 500 == 0:
                time.sleep(0.01)
    assert radclient(radius.auth, "status", SECRET, "Message-Authenticator = 0x00").code == "Access-Accept"
    assert radius.pap("alice", "alice-pw") == "Access-Accept"
    assert radius.ispd.proc is not None and radius.ispd.proc.poll() is None


def test_session_disconnect_reaches_the_nas(radius: Radius, nas: FakeNas) -> None:
    base = "User-Name = alice, Acct-Session-Id = alice-kick, NAS-IP-Address = 127.0.0.1, Framed-IP-Address = 198.18.9.1"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    sessions = json.loads(radius.ispd.cli("session", "list", "--open", "--json").stdout)
    [session] = [s for s in sessions if s["acct_session_id"] == "alice-kick"]
    seen = len(nas.requests)
    result = radius.ispd.cli("session", "disconnect", str(session["id"]), "--reason", "test")
    assert result.stdout.strip() == f"disconnect of session #{session['id']}: ack"
    request = nas.wait_for(seen + 1)[seen]
    assert request.code == 40 and request.authentic
    assert request.first(Attr.ACCT_SESSION_ID) == b"alice-kick" and request.first(Attr.USER_NAME) == b"alice"
    assert request.first(Attr.FRAMED_IP_ADDRESS) == bytes((198, 18, 9, 1))
    assert request.first(Attr.MESSAGE_AUTHENTICATOR) is not None
    nas.answer = "nak"
    try:
        refused = radius.ispd.cli("session", "disconnect", str(session["id"]), check=False)
    finally:
        nas.answer = "ack"
    assert refused.returncode == 1 and "nak (Error-Cause 504)" in refused.stdout
    shown = radius.ispd.cli("session", "show", str(session["id"])).stdout
    assert "ack after 1 attempt(s) (test)" in shown and "nak error-cause 504" in shown
    assert re.search(r"^nas ip address +127\.0\.0\.1$", shown, re.M)  # the NAS's own, not "-"
    assert radius.accounting(f"{base}, Acct-Status-Type = Stop, Acct-Terminate-Cause = Admin-Reset") == \
        "Accounting-Response"
    # Over the control socket itself (the CLI checks first): a number past any row id is no session.
    control = Path(radius.ispd.config["daemon"]["control_socket"])
    with pytest.raises(ControlError, match=r"^no session #1180591620717411303424$"):
        asyncio.run(control_request(control, "radius.session.disconnect", {"session_id": 2**70}))
    assert "Traceback" not in radius.ispd.log_text()


def test_a_disconnect_names_the_nas_as_it_names_itself(radius: Radius, nas: FakeNas) -> None:
    """From a bug hunt: a NAS whose NAS-IP-Address lies outside its client's network (its
    sessions kept under its packets' source) got a Disconnect naming it by that source, which
    accel-ppp refuses (NAK 403, NAS identification failed). It is named as it names itself."""
    base = "User-Name = bob, Acct-Session-Id = bob-natted, NAS-IP-Address = 198.18.50.1, NAS-Identifier = bng-7"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    sessions = json.loads(radius.ispd.cli("session", "list", "--open", "--json").stdout)
    [session] = [s for s in sessions if s["acct_session_id"] == "bob-natted"]
    assert session["nas_address"] == "127.0.0.1" and session["nas_ip_address"] == "198.18.50.1"
    seen = len(nas.requests)
    radius.ispd.cli("session", "disconnect", str(session["id"]))
    request = nas.wait_for(seen + 1)[seen]
    assert request.code == 40 and request.first(Attr.NAS_IP_ADDRESS) == bytes((198, 18, 50, 1))
    assert request.first(Attr.NAS_IDENTIFIER) == b"bng-7"
    assert radius.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def test_suspension_disconnects_and_a_plan_change_sends_coa(radius: Radius, nas: FakeNas) -> None:
    base = "User-Name = bob, Acct-Session-Id = bob-live, NAS-IP-Address = 127.0.0.1, Framed-IP-Address = 198.18.9.2"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    assert json.loads(radius.ispd.cli("session", "list", "--subscriber", "bob", "--open", "--json").stdout)[0][
        "acct_session_id"] == "bob-live"
    seen = len(nas.requests)
    radius.ispd.cli("subscriber", "set-plan", "bob", "fast")
    coa = nas.wait_for(seen + 1)[seen]
    assert coa.code == 43 and coa.first(Attr.ACCT_SESSION_ID) == b"bob-live"
    rate = [v for v in coa.attributes.get(Attr.VENDOR_SPECIFIC, []) if v[:4] == (14988).to_bytes(4, "big")]
    assert rate and rate[0][6:] == b"100000k/500000k"
    assert radius.pap("bob", "bob-pw") == "Access-Accept"
    radius.ispd.cli("subscriber", "suspend", "bob", "--reason", "nonpayment")
    kick = nas.wait_for(seen + 2)[seen + 1]
    assert kick.code == 40 and kick.first(Attr.ACCT_SESSION_ID) == b"bob-live"
    eventually(lambda: radius.pap("bob", "bob-pw") == "Access-Reject", timeout=5)
    overview = radius.show("bob")
    assert [c["result"] for c in overview["coa"]][:2] == ["ack", "ack"]
    radius.ispd.cli("subscriber", "resume", "bob")
    eventually(lambda: radius.pap("bob", "bob-pw") == "Access-Accept", timeout=5)
    assert radius.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def test_session_coa_refuses_a_suspended_subscriber_who_must_be_disconnected(radius: Radius, nas: FakeNas) -> None:
    """suspended = "reject": a CoA would carry the plan's full profile to the session of a
    subscriber who must have none; the command refuses, and the suspension stays undone."""
    radius.ispd.cli("subscriber", "add", "sue", "--plan", "home", "--password-stdin", input="sue-pw\n")
    # (as the tests around: the daemon knows sue before her Start, which would otherwise find no subscriber)
    eventually(lambda: radius.pap("sue", "sue-pw") == "Access-Accept", timeout=10)
    base = "User-Name = sue, Acct-Session-Id = sue-1, NAS-IP-Address = 127.0.0.1, Framed-IP-Address = 198.18.9.7"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    [session] = json.loads(radius.ispd.cli("session", "list", "--subscriber", "sue", "--open", "--json").stdout)
    nas.answer = "nak"  # the suspension's Disconnect is refused: the session stays open
    try:
        seen = len(nas.requests)
        radius.ispd.cli("subscriber", "suspend", "sue")
        nas.wait_for(seen + 1)
        eventually(lambda: [c["result"] for c in radius.show("sue")["coa"]][:1] == ["nak"], timeout=5)
    finally:
        nas.answer = "ack"
    seen = len(nas.requests)
    refused = radius.ispd.cli("session", "coa", str(session["id"]), check=False)
    assert refused.returncode != 0 and "ispd session disconnect" in refused.stdout + refused.stderr, refused
    assert len(nas.requests) == seen  # nothing sent
    shown = radius.ispd.cli("subscriber", "show", "sue").stdout
    assert "moved into the walled garden" not in shown and "Disconnect-Request nak" in shown, shown
    assert radius.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def test_a_subscriber_over_the_monthly_quota_is_throttled_at_once_and_at_its_next_login(
        radius: Radius, nas: FakeNas) -> None:
    radius.ispd.cli("plan", "add", "capped", "--download-kbps", "100000", "--upload-kbps", "20000",
                    "--monthly-quota", "2M", "--over-quota-download-kbps", "2000", "--over-quota-upload-kbps", "1000",
                    "--credential-policy", "cleartext")
    radius.ispd.cli("subscriber", "add", "quinn", "--plan", "capped", "--password-stdin", input="quinn-pw\n")
    eventually(lambda: radius.pap("quinn", "quinn-pw") == "Access-Accept", timeout=10)

    def login() -> Any:
        return radclient(radius.auth, "auth", SECRET,
                         'User-Name = quinn, User-Password = "quinn-pw", Message-Authenticator = 0x00')

    assert login().first("Mikrotik-Rate-Limit") == "20000k/100000k"  # under the quota: the plan's rates
    base = "User-Name = quinn, Acct-Session-Id = q1, NAS-IP-Address = 127.0.0.1, Framed-IP-Address = 198.18.9.5"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    assert "this month (under)" in radius.ispd.cli("subscriber", "show", "quinn").stdout
    seen = len(nas.requests)
    # 3 MB in this month's first interim: over the 2M quota.
    assert radius.accounting(f"{base}, Acct-Status-Type = Interim-Update, Acct-Input-Octets = 500000, "
                             "Acct-Output-Octets = 2500000") == "Accounting-Response"
    coa = nas.wait_for(seen + 1)[seen]
    assert coa.code == 43 and coa.first(Attr.ACCT_SESSION_ID) == b"q1"
    rate = [v for v in coa.attributes.get(Attr.VENDOR_SPECIFIC, []) if v[:4] == (14988).to_bytes(4, "big")]
    assert rate and rate[0][6:] == b"1000k/2000k"  # the over-quota rates, upload/download
    shown = radius.ispd.cli("subscriber", "show", "quinn").stdout
    assert "this month (over: throttled)" in shown and "subscriber.over_quota" in shown, shown
    reply = login()
    assert reply.code == "Access-Accept" and reply.first("Mikrotik-Rate-Limit") == "1000k/2000k", reply
    assert radius.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"
    # A plan with room for what was used: judged again at once (from a review: the old plan's
    # verdict held until the next minute's sweep).
    radius.ispd.cli("plan", "add", "roomy", "--download-kbps", "50000", "--upload-kbps", "10000",
                    "--monthly-quota", "5M", "--over-quota-download-kbps", "3000", "--over-quota-upload-kbps", "1500",
                    "--credential-policy", "cleartext")
    radius.ispd.cli("subscriber", "set-plan", "quinn", "roomy")
    eventually(lambda: login().first("Mikrotik-Rate-Limit") == "10000k/50000k", timeout=5)


def test_a_session_closed_by_accounting_on_frees_its_slot_and_keeps_its_usage(radius: Radius) -> None:
    radius.ispd.cli("plan", "add", "single-use", "--max-sessions", "1", "--credential-policy", "cleartext")
    radius.ispd.cli("subscriber", "add", "uma", "--plan", "single-use", "--password-stdin", input="uma-pw\n")
    eventually(lambda: radius.pap("uma", "uma-pw") == "Access-Accept", timeout=10)
    base = "User-Name = uma, Acct-Session-Id = u1, NAS-IP-Address = 127.0.0.3"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    assert radius.accounting(f"{base}, Acct-Status-Type = Interim-Update, Acct-Input-Octets = 7000, "
                             "Acct-Output-Octets = 90000, Acct-Session-Time = 60") == "Accounting-Response"
    assert radius.pap("uma", "uma-pw") == "Access-Reject"  # Simultaneous-Use: the one slot is taken
    # The NAS rebooted: its sessions are gone, and with them the slot, but not what they used.
    assert radius.accounting("NAS-IP-Address = 127.0.0.3, Acct-Status-Type = Accounting-On") == "Accounting-Response"
    assert radius.pap("uma", "uma-pw") == "Access-Accept"
    usage = radius.show("uma")["usage_this_month"]
    assert (usage["input_octets"], usage["output_octets"], usage["session_seconds"]) == (7000, 90000, 60)


def test_session_close_frees_the_slot_of_a_session_whose_nas_is_gone(radius: Radius) -> None:
    """ispd session close (FreeRADIUS's radzap): a NAS that died without Accounting-On keeps its
    subscriber's one Simultaneous-Use slot until the operator closes the session by hand."""
    radius.ispd.cli("plan", "add", "one-line", "--max-sessions", "1", "--credential-policy", "cleartext")
    radius.ispd.cli("subscriber", "add", "zed", "--plan", "one-line", "--password-stdin", input="zed-pw\n")
    eventually(lambda: radius.pap("zed", "zed-pw") == "Access-Accept", timeout=10)
    base = "User-Name = zed, Acct-Session-Id = z1, NAS-IP-Address = 127.0.0.3"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    assert radius.pap("zed", "zed-pw") == "Access-Reject"  # the one slot is taken
    [session] = json.loads(radius.ispd.cli("session", "list", "--open", "--subscriber", "zed", "--json").stdout)
    closed = radius.ispd.cli("session", "close", str(session["id"]))
    assert closed.stdout.strip() == f"closed 1 session(s): #{session['id']}"
    assert radius.pap("zed", "zed-pw") == "Access-Accept"  # at once, not after stale_session_intervals
    shown = radius.show("zed")
    assert any(e["action"] == "session.closed" and e["actor"].startswith("cli:") for e in shown["audit"])
    again = radius.ispd.cli("session", "close", str(session["id"]), check=False)
    assert again.returncode == 1 and "is not open" in again.stderr
    # The NAS had it after all: its interim reopens it, and the slot is taken again.
    assert radius.accounting(f"{base}, Acct-Status-Type = Interim-Update, Acct-Input-Octets = 500, "
                             "Acct-Output-Octets = 800, Acct-Session-Time = 120") == "Accounting-Response"
    assert radius.ispd.cli("session", "show", str(session["id"]), "--json").stdout.count('"stopped_at": null') == 1
    assert radius.pap("zed", "zed-pw") == "Access-Reject"
    # The same through the admin API (on its Unix socket beside the control socket).
    api = subprocess.run(["curl", "-sS", "-X", "POST", "--unix-socket", str(radius.ispd.workdir / "admin.sock"),
                          f"http://ispd/v1/sessions/{session['id']}/close"], capture_output=True, text=True, timeout=30)
    assert json.loads(api.stdout) == {"closed": [session["id"]]}, api
    # A session that does not exist is a 404, as the README promises, not the 409 of one not open
    # (from a bug hunt: both were 409, and a billing system could not tell them apart).
    for action in ("close", "disconnect", "coa"):
        for missing in ("999999", "9" * 30):
            answer = subprocess.run(
                ["curl", "-sS", "-X", "POST", "-w", "\n%{http_code}", "-H", "content-type: application/json",
                 "-d", "{}", "--unix-socket", str(radius.ispd.workdir / "admin.sock"),
                 f"http://ispd/v1/sessions/{missing}/{action}"], capture_output=True, text=True, timeout=30)
            body, status = answer.stdout.rsplit("\n", 1)
            assert status == "404" and f"no session #{missing}" in body, (action, answer)
    # A reason is checked as the CLI's is: `session show` prints it to the operator's terminal.
    answer = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-w", "\n%{http_code}", "-H", "content-type: application/json",
         "-d", json.dumps({"reason": "unpaid\n\u001b[2J"}), "--unix-socket", str(radius.ispd.workdir / "admin.sock"),
         f"http://ispd/v1/sessions/{session['id']}/disconnect"], capture_output=True, text=True, timeout=30)
    body, status = answer.stdout.rsplit("\n", 1)
    assert status == "400" and "no control or invisible characters" in body, answer
    assert radius.pap("zed", "zed-pw") == "Access-Accept"
    # Every open session of a NAS at once.
    assert radius.accounting("User-Name = zed, Acct-Session-Id = z2, NAS-IP-Address = 127.0.0.3, "
                             "Acct-Status-Type = Start") == "Accounting-Response"
    assert radius.pap("zed", "zed-pw") == "Access-Reject"
    by_nas = radius.ispd.cli("session", "close", "--nas", "127.0.0.3")
    assert by_nas.stdout.startswith("closed 1 session(s): #"), by_nas.stdout
    assert radius.pap("zed", "zed-pw") == "Access-Accept"
    assert radius.ispd.cli("session", "close", "--nas", "198.18.9.9").stdout.strip() == "no open session of NAS 198.18.9.9"
    bad = radius.ispd.cli("session", "close", "--nas", "not-an-address", check=False)
    assert bad.returncode == 2 and "not an IP address" in bad.stderr


def test_a_disconnect_nak_session_context_not_found_closes_the_session(radius: Radius, nas: FakeNas) -> None:
    """A NAS that answers a Disconnect with NAK, Error-Cause 503 (RFC 5176 §3.5: it has no such
    session) has said the session is gone: ispd closes it, freeing its Simultaneous-Use slot at
    once (from a bug hunt: it stayed open, and its subscriber was rejected until the session went
    stale). Another NAK leaves it open; the NAS's next interim reopens a closed one."""
    radius.ispd.cli("plan", "add", "solo", "--max-sessions", "1", "--credential-policy", "cleartext")
    radius.ispd.cli("subscriber", "add", "nan", "--plan", "solo", "--password-stdin", input="nan-pw\n")
    eventually(lambda: radius.pap("nan", "nan-pw") == "Access-Accept", timeout=10)
    base = "User-Name = nan, Acct-Session-Id = n1, NAS-IP-Address = 127.0.0.1"
    assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    assert radius.pap("nan", "nan-pw") == "Access-Reject"  # the one slot is taken
    [session] = json.loads(radius.ispd.cli("session", "list", "--open", "--subscriber", "nan", "--json").stdout)
    nas.answer = "nak"
    try:
        # (the fake NAS's NAK says Session-Context-Not-Removable by default: it has it still)
        kept = radius.ispd.cli("session", "disconnect", str(session["id"]), check=False)
        assert kept.returncode == 1 and "Error-Cause 504" in kept.stdout, kept
        assert radius.pap("nan", "nan-pw") == "Access-Reject"
        nas.error_cause = 503
        gone = radius.ispd.cli("session", "disconnect", str(session["id"]), check=False)
        assert gone.returncode == 1 and "Error-Cause 503" in gone.stdout, gone
    finally:
        nas.answer, nas.error_cause = "ack", 504
    shown = json.loads(radius.ispd.cli("session", "show", str(session["id"]), "--json").stdout)
    assert shown["stopped_at"] is not None and shown["terminate_cause"] == "Session-Context-Not-Found", shown
    assert radius.pap("nan", "nan-pw") == "Access-Accept"  # at once, not after stale_session_intervals
    # The NAS had it after all: its interim reopens it.
    assert radius.accounting(f"{base}, Acct-Status-Type = Interim-Update, Acct-Input-Octets = 500, "
                             "Acct-Session-Time = 60") == "Accounting-Response"
    shown = json.loads(radius.ispd.cli("session", "show", str(session["id"]), "--json").stdout)
    assert shown["stopped_at"] is None and shown["input_octets"] == 500, shown
    assert radius.pap("nan", "nan-pw") == "Access-Reject"


def test_accounting_on_closes_the_nas_sessions(radius: Radius) -> None:
    for name in ("on-1", "on-2"):
        assert radius.accounting(f"User-Name = alice, Acct-Session-Id = {name}, NAS-IP-Address = 127.0.0.2, "
                                 "Acct-Status-Type = Start") == "Accounting-Response"
    assert radius.accounting("NAS-IP-Address = 127.0.0.2, Acct-Status-Type = Accounting-On") == "Accounting-Response"
    sessions = json.loads(radius.ispd.cli("session", "list", "--nas", "127.0.0.2", "--json").stdout)
    assert {(s["acct_session_id"], s["terminate_cause"]) for s in sessions} == {("on-1", "NAS-Reboot"),
                                                                                 ("on-2", "NAS-Reboot")}


def test_a_suspension_made_while_ispd_was_down_reaches_the_nas_when_it_starts(tmp_path: Path) -> None:
    require_radclient()
    with FakeNas(secret=SECRET.encode()) as nas, IspdProcess(tmp_path, radius_config(tmp_path, nas.port)) as ispd:
        ispd.start()
        ispd.cli("plan", "add", "home", "--credential-policy", "cleartext")
        ispd.cli("subscriber", "add", "erin", "--plan", "home", "--password-stdin", input="erin-pw\n")
        service = Radius(ispd)
        eventually(lambda: service.pap("erin", "erin-pw") == "Access-Accept", timeout=10)
        base = "User-Name = erin, Acct-Session-Id = e1, NAS-IP-Address = 127.0.0.1"
        assert service.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
        assert ispd.terminate() == 0
        ispd.cli("subscriber", "suspend", "erin", "--reason", "unpaid")  # the store alone: no daemon to tell
        seen = len(nas.requests)
        ispd.start()
        kick = nas.wait_for(seen + 1)[seen]
        assert kick.code == 40 and kick.first(Attr.ACCT_SESSION_ID) == b"e1"
        eventually(lambda: [c["result"] for c in service.show("erin")["coa"]][:1] == ["ack"], timeout=5)
        assert "radius done     session e1 on 127.0.0.1: ended" not in ispd.cli("subscriber", "show", "erin").stdout
        assert service.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"
        shown = ispd.cli("subscriber", "show", "erin").stdout
        assert "  radius done     session e1 on 127.0.0.1: ended" in shown, shown
        assert len(nas.requests) == seen + 1  # reached once: not sent again


def test_disconnects_a_nas_never_answers_do_not_hold_up_housekeeping(tmp_path: Path) -> None:
    """From a soak review: the Disconnects for a suspended subscriber's sessions went one after
    the other inside the housekeeping loop, 3 attempts of 3 s each, and the duplicate cache, EAP
    conversations and stale sessions waited meanwhile (10 minutes for 40 sessions)."""
    require_radclient()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a NAS whose CoA port reads and never answers
    silent.bind(("127.0.0.1", 0))
    try:
        config = radius_config(tmp_path, silent.getsockname()[1], coa_timeout_seconds=5, coa_attempts=3,
                               duplicate_window_seconds=1)
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start()
            ispd.cli("plan", "add", "home", "--credential-policy", "cleartext")
            ispd.cli("subscriber", "add", "gail", "--plan", "home", "--password-stdin", input="gail-pw\n")
            service = Radius(ispd)
            for n in range(3):
                assert service.accounting(f"User-Name = gail, Acct-Session-Id = g{n}, NAS-IP-Address = 127.0.0.1, "
                                          "Acct-Status-Type = Start") == "Accounting-Response"
            assert ispd.terminate() == 0
            ispd.cli("subscriber", "suspend", "gail", "--reason", "unpaid")
            ispd.start()  # three Disconnects of 15 s each are due now
            eventually(lambda: service.pap("gail", "wrong") == "Access-Reject", timeout=10)
            assert (ispd.metric_value("ispd_radius_duplicate_cache_entries") or 0) >= 1
            # Swept a second or two after its window, not after 45 s of Disconnects.
            eventually(lambda: ispd.metric_value("ispd_radius_duplicate_cache_entries") == 0, timeout=5)
    finally:
        silent.close()


def _quinn_on_a_capped_plan(ispd: IspdProcess, *other_plans: tuple[str, str], on: str = "capped") -> Radius:
    """Plan "capped" (2 MiB a month, 2000/1000 kbps past it; ``other_plans``, (name, quota), alike
    but for their quota) and quinn on it (or on the plan ``on``), whose logins RADIUS takes."""
    for name, quota in (("capped", "2M"), *other_plans):
        ispd.cli("plan", "add", name, "--download-kbps", "100000", "--upload-kbps", "20000",
                 "--monthly-quota", quota, "--over-quota-download-kbps", "2000", "--over-quota-upload-kbps", "1000",
                 "--credential-policy", "cleartext")
    ispd.cli("subscriber", "add", "quinn", "--plan", on, "--password-stdin", input="quinn-pw\n")
    service = Radius(ispd)
    eventually(lambda: service.pap("quinn", "quinn-pw") == "Access-Accept", timeout=10)
    return service


def _over_the_quota(service: Radius, session_id: str) -> str:
    """quinn's session ``session_id`` started and, by an interim, over the quota: its accounting's base."""
    base = f"User-Name = quinn, Acct-Session-Id = {session_id}, NAS-IP-Address = 127.0.0.1"
    assert service.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
    assert service.accounting(f"{base}, Acct-Status-Type = Interim-Update, Acct-Output-Octets = 3000000") == \
        "Accounting-Response"
    return base


def test_the_over_quota_profile_holds_after_a_stop_and_after_a_restart(tmp_path: Path) -> None:
    """The over-quota flag lives in memory: a crossing that the check's rate limit skipped just
    before the Stop, and a restart, must not give the next login the plan's full rate."""
    require_radclient()
    with FakeNas(secret=SECRET.encode()) as nas, IspdProcess(tmp_path, radius_config(tmp_path, nas.port)) as ispd:
        ispd.start()
        service = _quinn_on_a_capped_plan(ispd)

        def rate() -> str | None:
            return radclient(service.auth, "auth", SECRET,
                             'User-Name = quinn, User-Password = "quinn-pw", Message-Authenticator = 0x00'
                             ).first("Mikrotik-Rate-Limit")

        base = "User-Name = quinn, Acct-Session-Id = q9, NAS-IP-Address = 127.0.0.1"
        assert service.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
        # Under the quota (checked), then over it and stopped, both within the check's rate limit.
        for status, octets in (("Interim-Update", 1000), ("Interim-Update", 3_000_000), ("Stop", 3_000_000)):
            assert service.accounting(f"{base}, Acct-Status-Type = {status}, Acct-Input-Octets = {octets}") == \
                "Accounting-Response"
        eventually(lambda: rate() == "1000k/2000k", timeout=5)
        assert ispd.terminate() == 0
        ispd.start()
        eventually(lambda: service.pap("quinn", "quinn-pw") == "Access-Accept", timeout=10)
        assert rate() == "1000k/2000k"  # the first login after the restart


def test_a_session_throttled_before_a_restart_goes_back_when_its_subscriber_is_under_the_quota(
        tmp_path: Path) -> None:
    """From a bug hunt: the over-quota flag lives in memory, so a daemon started after the month
    ended (or after the plan changed while it was down) found the subscriber under the quota,
    the flag already down, and sent nothing: the session stayed throttled on the NAS for the
    whole next month. A session whose last move was the over-quota one goes back at start."""
    require_radclient()
    with FakeNas(secret=SECRET.encode()) as nas, IspdProcess(tmp_path, radius_config(tmp_path, nas.port)) as ispd:
        ispd.start()
        service = _quinn_on_a_capped_plan(ispd, ("roomy", "10M"))
        base = _over_the_quota(service, "q-kept")
        throttled = nas.wait_for(1)[0]
        assert throttled.code == 43 and throttled.attributes[Attr.VENDOR_SPECIFIC][0][6:] == b"1000k/2000k"
        assert ispd.terminate() == 0
        ispd.cli("subscriber", "set-plan", "quinn", "roomy")  # with room for what was used, ispd down
        ispd.start()
        back = nas.wait_for(2)[1]
        assert back.code == 43 and back.first(Attr.ACCT_SESSION_ID) == b"q-kept"
        assert back.attributes[Attr.VENDOR_SPECIFIC][0][6:] == b"20000k/100000k"
        assert [e["reason"] for e in ispd.log_events("radius.coa.sent")][-1] == "quota reset"
        assert service.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def test_a_plan_change_across_the_quota_sends_one_coa_with_the_new_verdict(tmp_path: Path) -> None:
    """From a bug hunt: the new quota was judged after the plan change's CoA had gone with the
    old verdict, so the NAS got the new plan's throttle and then its full rate (or the full rate
    and then the throttle): two CoAs, the first one wrong. Into a walled garden, the session was
    walled again and then disconnected."""
    require_radclient()
    config = radius_config(tmp_path, 0, walled_garden_attributes=["Mikrotik-Address-List = walled"])
    with FakeNas(secret=SECRET.encode()) as nas:
        config["radius"]["client"][0]["coa_port"] = nas.port
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start()
            for name, quota, mode in (("capped", "2M", "throttle"), ("roomy", "10M", "throttle"),
                                      ("tiny", "1M", "throttle"), ("walled", "2M", "walled-garden"),
                                      ("walled-roomy", "10M", "walled-garden")):
                ispd.cli("plan", "add", name, "--download-kbps", "100000", "--upload-kbps", "20000",
                         "--monthly-quota", quota, "--over-quota", mode, "--over-quota-download-kbps", "2000",
                         "--over-quota-upload-kbps", "1000", "--credential-policy", "cleartext")
            ispd.cli("subscriber", "add", "quinn", "--plan", "capped", "--password-stdin", input="quinn-pw\n")
            service = Radius(ispd)
            eventually(lambda: service.pap("quinn", "quinn-pw") == "Access-Accept", timeout=10)
            base = _over_the_quota(service, "q-plan")
            assert nas.wait_for(1)[0].attributes[Attr.VENDOR_SPECIFIC][0][6:] == b"1000k/2000k"

            def after(plan: str) -> list[Any]:
                seen = len(nas.requests)
                ispd.cli("subscriber", "set-plan", "quinn", plan)
                nas.wait_for(seen + 1)
                time.sleep(1.5)  # (a second CoA came within milliseconds)
                return nas.requests[seen:]

            def rates(requests: list[Any]) -> list[bytes]:
                return [v[6:] for r in requests for v in r.attributes.get(Attr.VENDOR_SPECIFIC, [])
                        if v[:4] == (14988).to_bytes(4, "big") and v[4] == 8]  # Mikrotik-Rate-Limit

            assert rates(after("roomy")) == [b"20000k/100000k"]  # under now: the full rate, once
            assert rates(after("tiny")) == [b"1000k/2000k"]  # over now: the throttle, once
            # The verdicts are still noted, each once.
            assert [e["plan"] for e in ispd.log_events("radius.quota.reset")] == ["roomy"]
            assert [e["plan"] for e in ispd.log_events("radius.quota.crossed")] == ["capped", "tiny"]
            walled = after("walled")  # over the walled plan's quota too: into the garden, once
            assert [r.code for r in walled] == [43]
            [out] = after("walled-roomy")  # out of the garden (its address list): one Disconnect
            assert out.code == 40
            reasons = [e["reason"] for e in ispd.log_events("radius.coa.sent")]
            assert reasons.count("quota reset") == 0 and reasons.count("over quota") == 1, reasons
            assert service.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def test_an_over_quota_coa_that_the_nas_did_not_answer_is_sent_again(tmp_path: Path) -> None:
    """From a bug hunt: the over-quota CoA was sent once; a NAS that did not answer left the
    session at its full rate until it reconnected (later checks found the flag up and sent
    nothing). It is retried as a suspension's are, and no more once the NAS answers."""
    require_radclient()
    config = radius_config(tmp_path, 0, housekeeping_interval_seconds=1, coa_retry_interval_seconds=10,
                           coa_retry_limit=3)
    with FakeNas(secret=SECRET.encode(), answer="silent") as nas:
        config["radius"]["client"][0]["coa_port"] = nas.port
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start()
            service = _quinn_on_a_capped_plan(ispd)
            base = _over_the_quota(service, "q-deaf")
            nas.wait_for(2)  # coa_attempts, unanswered
            eventually(lambda: [e["result"] for e in ispd.log_events("radius.coa.sent")] == ["timeout"], timeout=5)
            nas.answer = "ack"
            again = nas.wait_for(3, timeout=20)[2]
            _is_the_throttle_sent_again(ispd, again, b"q-deaf")
            assert [e["result"] for e in ispd.log_events("radius.coa.sent")] == ["timeout", "ack"]
            time.sleep(12)  # a retry interval on: the acknowledged one is not sent again
            assert len(nas.requests) == 3
            assert service.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def test_a_plan_changes_coa_carrying_the_over_quota_profile_is_sent_again_when_unanswered(tmp_path: Path) -> None:
    """A plan change to a quota already used up: its one CoA carries the throttle (the verdict
    is made before it goes). A NAS that did not answer it left the session at its full rate
    until it reconnected: the quota's retries knew of their own verdicts' CoAs only."""
    require_radclient()
    config = radius_config(tmp_path, 0, housekeeping_interval_seconds=1, coa_retry_interval_seconds=10,
                           coa_retry_limit=3)
    with FakeNas(secret=SECRET.encode(), answer="silent") as nas:
        config["radius"]["client"][0]["coa_port"] = nas.port
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start()
            service = _quinn_on_a_capped_plan(ispd, ("roomy", "10M"), on="roomy")
            base = _over_the_quota(service, "q-moved")  # (of capped's quota, not roomy's)
            ispd.cli("subscriber", "set-plan", "quinn", "capped")
            eventually(lambda: [e["result"] for e in ispd.log_events("radius.coa.sent")] == ["timeout"], timeout=10)
            sent = len(nas.requests)
            nas.answer = "ack"
            again = nas.wait_for(sent + 1, timeout=20)[sent]
            _is_the_throttle_sent_again(ispd, again, b"q-moved")
            assert service.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def _is_the_throttle_sent_again(ispd: IspdProcess, again: Any, session_id: bytes) -> None:
    """``again``, a CoA the fake NAS got, is the over-quota throttle for ``session_id``, and ispd
    logs it as the retry it is, answered."""
    assert again.code == 43 and again.first(Attr.ACCT_SESSION_ID) == session_id
    assert again.attributes[Attr.VENDOR_SPECIFIC][0][6:] == b"1000k/2000k"
    eventually(lambda: [(e["reason"], e["result"]) for e in ispd.log_events("radius.coa.sent")][-1:]
               == [("over quota, retry", "ack")], timeout=5)


def test_an_over_quota_coa_that_timed_out_before_a_restart_is_sent_after_it(tmp_path: Path) -> None:
    """From a bug hunt: the over-quota flag comes back from the usage at start, and nothing
    was sent: a session whose throttle the NAS never acknowledged kept its full rate."""
    require_radclient()
    config = radius_config(tmp_path, 0)
    with FakeNas(secret=SECRET.encode(), answer="silent") as nas:
        config["radius"]["client"][0]["coa_port"] = nas.port
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start()
            service = _quinn_on_a_capped_plan(ispd)
            base = _over_the_quota(service, "q-lost")
            eventually(lambda: [e["result"] for e in ispd.log_events("radius.coa.sent")] == ["timeout"], timeout=5)
            assert ispd.terminate() == 0
            config["radius"]["coa_retry_interval_seconds"] = 10  # (the timeout was more than 10 s ago by then)
            nas.answer = "ack"
            time.sleep(10)
            ispd.start()
            again = nas.wait_for(3, timeout=10)[2]  # (the first exchange: 2 attempts)
            _is_the_throttle_sent_again(ispd, again, b"q-lost")
            assert service.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def test_a_disconnect_comes_from_the_address_radius_listens_on(tmp_path: Path) -> None:
    """NASes take Disconnect and CoA from their RADIUS server's address only (Cisco's
    dynamic-author client, MikroTik's /radius incoming): not whatever source the kernel picks."""
    require_radclient()
    with FakeNas(secret=SECRET.encode()) as nas:
        config = radius_config(tmp_path, nas.port)
        auth = free_udp_port()
        config["radius"]["listen_auth"] = [f"127.0.0.7:{auth}"]  # the NAS (127.0.0.1) would be answered from .1
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start()
            service = Radius(ispd)
            base = "User-Name = anyone, Acct-Session-Id = src-1, NAS-IP-Address = 127.0.0.1, NAS-Identifier = bng-7"
            assert service.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
            [session] = json.loads(ispd.cli("session", "list", "--open", "--json").stdout)
            seen = len(nas.requests)
            ispd.cli("session", "disconnect", str(session["id"]))
            request = nas.wait_for(seen + 1)[seen]
            assert request.source is not None and request.source[0] == "127.0.0.7", request.source
            assert request.first(Attr.NAS_IDENTIFIER) == b"bng-7"  # the NAS knows it is meant (RFC 5176 §3)


def test_simultaneous_use_survives_a_restart(tmp_path: Path) -> None:
    require_radclient()
    with FakeNas(secret=SECRET.encode()) as nas, IspdProcess(tmp_path, radius_config(tmp_path, nas.port)) as ispd:
        ispd.start()
        ispd.cli("plan", "add", "single", "--max-sessions", "1", "--credential-policy", "cleartext")
        ispd.cli("subscriber", "add", "dave", "--plan", "single", "--password-stdin", input="dave-pw\n")
        service = Radius(ispd)
        eventually(lambda: service.pap("dave", "dave-pw") == "Access-Accept", timeout=10)
        base = "User-Name = dave, Acct-Session-Id = d1, NAS-IP-Address = 127.0.0.1"
        assert service.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
        assert service.pap("dave", "dave-pw") == "Access-Reject"
        assert ispd.terminate() == 0
        ispd.start()  # the open session comes back from the store
        assert service.pap("dave", "dave-pw") == "Access-Reject"
        assert ispd.metric_value("ispd_radius_open_sessions") == 1
        assert service.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"
        assert service.pap("dave", "dave-pw") == "Access-Accept"


def test_accounting_sent_again_after_a_restart_counts_once(tmp_path: Path) -> None:
    """A NAS sends again what ispd took but did not answer before a restart (its duplicate cache
    gone), a Stop overtakes its Start, an Accounting-On comes late: no session twice, no octet
    counted twice, no session of the new boot closed (radclient as the NAS)."""
    require_radclient()
    with FakeNas(secret=SECRET.encode()) as nas, IspdProcess(tmp_path, radius_config(tmp_path, nas.port)) as ispd:
        ispd.start()
        ispd.cli("plan", "add", "home", "--credential-policy", "cleartext")
        for name in ("erin", "fred", "gina"):
            ispd.cli("subscriber", "add", name, "--plan", "home", "--password-stdin", input=f"{name}-pw\n")
        service = Radius(ispd)
        eventually(lambda: service.pap("erin", "erin-pw") == "Access-Accept", timeout=10)

        def account(user: str, session: str, status: str, counters: str = "") -> None:
            attributes = f"User-Name = {user}, Acct-Session-Id = {session}, NAS-IP-Address = 127.0.0.1, " \
                         f"Acct-Status-Type = {status}{counters}"
            assert service.accounting(attributes) == "Accounting-Response"

        final = ", Acct-Input-Octets = 1000, Acct-Output-Octets = 2000, Acct-Session-Time = 3"
        account("erin", "e1", "Start")
        account("erin", "e1", "Stop", final)
        account("fred", "f1", "Stop", final)  # before its Start
        account("fred", "f1", "Start")
        assert ispd.terminate() == 0
        ispd.start()
        for _ in range(2):  # what the NAS had not seen answered, sent again
            account("erin", "e1", "Start")
            account("erin", "e1", "Stop", final)
            account("fred", "f1", "Stop", final)
        account("gina", "g1", "Start")
        assert service.accounting("NAS-IP-Address = 127.0.0.1, Acct-Status-Type = Accounting-On, "
                                  "Acct-Delay-Time = 30") == "Accounting-Response"  # the reboot: before g1
        account("gina", "g1", "Interim-Update", final)
        sessions = json.loads(ispd.cli("session", "list", "--json").stdout)
        assert sorted((s["username"], s["stopped_at"] is None) for s in sessions) == [
            ("erin", False), ("fred", False), ("gina", True)], sessions
        for name in ("erin", "fred", "gina"):
            usage = service.show(name)["usage_this_month"]
            assert (usage["input_octets"], usage["output_octets"]) == (1000, 2000), (name, usage)


def test_check_config_names_a_bad_reply_attribute(tmp_path: Path) -> None:
    config = radius_config(tmp_path, 3799, walled_garden_attributes=["Mikrotik-Adress-List = walled"],
                           suspended="walled-garden")
    ispd = IspdProcess(tmp_path, config)
    ispd.write_config()
    result = ispd.cli("check-config", check=False)
    assert result.returncode == 2
    assert "radius: walled_garden_attributes: Mikrotik-Adress-List: no such attribute" in result.stderr


def test_a_response_from_ispd_decodes_with_our_codec_too(radius: Radius) -> None:
    authenticator = os.urandom(16)
    attributes = encode_attributes([(Attr.USER_NAME, b"alice"),
                                    (Attr.USER_PASSWORD, hide_password(b"alice-pw", SECRET.encode(), authenticator))])
    [reply] = send_raw(radius.auth, encode_request(Code.ACCESS_REQUEST, 5, attributes, SECRET.encode(),
                                                   authenticator=authenticator))
    assert reply is not None
    packet = decode(reply)
    assert packet.code == Code.ACCESS_ACCEPT and packet.attributes[0][0] == Attr.MESSAGE_AUTHENTICATOR


def test_a_reply_over_4096_octets_is_a_counted_drop_not_a_traceback(radius: Radius) -> None:
    """From a review: 16 Proxy-States of 250 octets (a chain of proxies) made the Access-Accept
    4214 octets; encode_response raised in the event loop - no reply, a traceback a request,
    nothing counted."""
    before = radius.ispd.metric_value("ispd_radius_dropped_total", {"port": "auth", "reason": "reply_too_large"}) or 0
    authenticator = os.urandom(16)
    proxies = [(Attr.PROXY_STATE, bytes([i]) * 250) for i in range(16)]
    attributes = encode_attributes([(Attr.USER_NAME, b"alice"),
                                    (Attr.USER_PASSWORD, hide_password(b"alice-pw", SECRET.encode(), authenticator)),
                                    *proxies])
    request = encode_request(Code.ACCESS_REQUEST, 9, attributes, SECRET.encode(), authenticator=authenticator)
    assert len(request) <= 4096
    assert send_raw(radius.auth, request, wait=0.5) == [None]
    assert radius.ispd.metric_value("ispd_radius_dropped_total",
                                    {"port": "auth", "reason": "reply_too_large"}) == before + 1
    assert "Traceback" not in radius.ispd.log_text() and "Unhandled exception" not in radius.ispd.log_text()
    fewer = encode_attributes([(Attr.USER_NAME, b"alice"),
                               (Attr.USER_PASSWORD, hide_password(b"alice-pw", SECRET.encode(), authenticator)),
                               *proxies[:10]])
    [reply] = send_raw(radius.auth, encode_request(Code.ACCESS_REQUEST, 10, fewer, SECRET.encode(),
                                                   authenticator=authenticator))
    assert reply is not None and decode(reply).code == Code.ACCESS_ACCEPT


def test_sighup_applies_a_new_secret_and_refuses_a_listener_change(tmp_path: Path) -> None:
    require_radclient()
    with IspdProcess(tmp_path, radius_config(tmp_path, 3799)) as ispd:
        ispd.start()
        service = Radius(ispd)
        status = "Message-Authenticator = 0x00"
        assert radclient(service.auth, "status", SECRET, status).code == "Access-Accept"
        config = ispd.config
        config["radius"]["client"][0]["secret"] = "a-new-secret"
        ispd.write_config(config)
        ispd.reload()
        assert radclient(service.auth, "status", "a-new-secret", status).code == "Access-Accept"
        assert radclient(service.auth, "status", SECRET, status, timeout=0.5, retries=1).code is None
        config["radius"]["listen_auth"] = [f"127.0.0.1:{free_udp_port()}"]
        ispd.write_config(config)
        ispd.reload()
        [refused] = ispd.log_events("config.reload.service_refused")
        assert refused["service"] == "radius" and "needs a restart" in refused["error"]
        assert radclient(service.auth, "status", "a-new-secret", status).code == "Access-Accept"  # still there


def test_disconnect_goes_to_the_address_the_nas_reports(radius: Radius, nas: FakeNas) -> None:
    """A NAS whose packets come from one address of the client's network (127.0.0.1) and that
    names another as NAS-IP-Address gets its Disconnect-Request there (RFC 5176 §3)."""
    with FakeNas("127.0.0.3", nas.port, secret=SECRET.encode()) as other:
        base = "User-Name = alice, Acct-Session-Id = elsewhere, NAS-IP-Address = 127.0.0.3"
        assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
        sessions = json.loads(radius.ispd.cli("session", "list", "--nas", "127.0.0.3", "--open", "--json").stdout)
        [session] = [s for s in sessions if s["acct_session_id"] == "elsewhere"]
        result = radius.ispd.cli("session", "disconnect", str(session["id"]))
        assert result.stdout.strip().endswith(": ack")
        [request] = other.wait_for(1)
        assert request.authentic and request.first(Attr.ACCT_SESSION_ID) == b"elsewhere"
        assert radius.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"


def test_proxy_state_comes_back_in_the_reply(radius: Radius) -> None:
    """RFC 2865 §5.33: a proxy in front of ispd finds its request by the Proxy-States it added."""
    reply = radclient(radius.auth, "auth", SECRET, 'User-Name = alice, User-Password = "alice-pw", '
                      "Proxy-State = 0x0102, Proxy-State = 0xabcd, Message-Authenticator = 0x00")
    assert reply.code == "Access-Accept" and reply.attributes.get("Proxy-State") == ["0x0102", "0xabcd"]
    accounting = radclient(radius.acct, "acct", SECRET, "User-Name = alice, Acct-Status-Type = Interim-Update, "
                           "Acct-Session-Id = proxied, Proxy-State = 0x0303")
    assert accounting.code == "Accounting-Response" and accounting.attributes.get("Proxy-State") == ["0x0303"]


def test_accounting_without_a_status_type_is_dropped(radius: Radius) -> None:
    before = radius.ispd.metric_value("ispd_radius_dropped_total", {"port": "acct", "reason": "missing_status_type"})
    reply = radclient(radius.acct, "acct", SECRET, "User-Name = alice, Acct-Session-Id = nostatus", timeout=0.5)
    assert reply.code is None
    assert radius.ispd.metric_value("ispd_radius_dropped_total",
                                    {"port": "acct", "reason": "missing_status_type"}) == (before or 0) + 1


def test_a_reauthenticated_sessions_stop_gives_its_pool_address_back(tmp_path: Path) -> None:
    """802.1X re-authenticates an open session (its Acct-Session-Id in the Access-Request) and
    gets its address again; the Stop then ends that session and must give the address back,
    not hold it for address_hold_seconds (a pool of one: the next login was refused)."""
    config = radius_config(tmp_path, free_udp_port(), plan=[{"plan": "pooled", "address_pool": "one"}],
                           address_pool=[{"name": "one", "range": "198.18.70.10 - 198.18.70.10"}])
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        radius = Radius(ispd)
        ispd.cli("plan", "add", "pooled", "--credential-policy", "cleartext")
        for name in ("alice", "bob"):
            ispd.cli("subscriber", "add", name, "--plan", "pooled", "--password-stdin", input=f"{name}-pw\n")
        line = "Calling-Station-Id = 02:00:00:00:70:01, NAS-IP-Address = 127.0.0.1"

        def login(user: str, extra: str = "") -> Reply:
            return radclient(radius.auth, "auth", SECRET, f'User-Name = {user}, User-Password = "{user}-pw", '
                                                          f"Message-Authenticator = 0x00, {line}{extra}")

        first = login("alice")
        assert first.code == "Access-Accept" and first.first("Framed-IP-Address") == "198.18.70.10", first.output
        base = f"User-Name = alice, Acct-Session-Id = a-1, Framed-IP-Address = 198.18.70.10, {line}"
        assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
        again = login("alice", ", Acct-Session-Id = a-1")  # the re-authentication of session a-1
        assert again.code == "Access-Accept" and again.first("Framed-IP-Address") == "198.18.70.10", again.output
        assert radius.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"
        line = "Calling-Station-Id = 02:00:00:00:70:02"
        given = eventually(lambda: (reply := login("bob")).code == "Access-Accept" and reply, timeout=5)
        assert given.first("Framed-IP-Address") == "198.18.70.10", given.output
        # A redial: the new session's Accept (naming a-3) comes before the old session's Stop,
        # and a late re-authentication of the old one in between: the Stop of a-2 must not free
        # the address the new session is about to use.
        line = "Calling-Station-Id = 02:00:00:00:70:02, NAS-IP-Address = 127.0.0.1"
        base = f"User-Name = bob, Acct-Session-Id = b-2, Framed-IP-Address = 198.18.70.10, {line}"
        assert radius.accounting(f"{base}, Acct-Status-Type = Start") == "Accounting-Response"
        assert login("bob", ", Acct-Session-Id = b-3").code == "Access-Accept"  # the redial
        assert login("bob", ", Acct-Session-Id = b-2").code == "Access-Accept"  # a late re-authentication
        assert radius.accounting(f"{base}, Acct-Status-Type = Stop") == "Accounting-Response"
        line = "Calling-Station-Id = 02:00:00:00:70:01"
        refused = login("alice")
        assert refused.code == "Access-Reject", refused.output  # the pool's one address is the redial's
        # The redial's session never starts (its Start lost, or it failed): a minute after the
        # Stop, with no session on it and not given again, the address goes back after all.
        eventually(lambda: login("alice").code == "Access-Accept", timeout=90, interval=3)


def test_accounting_right_after_subscriber_add_is_attributed(tmp_path: Path) -> None:
    """``subscriber add`` reaches the daemon's view only at its next store poll (30 s here); the
    Accounting-Requests that come before, by the username or by a reserved login, are the new
    subscriber's all the same: the session, and the usage of a session that starts and stops
    before that poll."""
    server, nas, secret = "127.0.0.1", "127.0.0.2", b"early-secret"
    acct = free_udp_port(server)
    config = base_config(tmp_path, daemon={"store_poll_interval_seconds": 30},
                         metrics={"listen": f"{server}:{free_tcp_port(server)}"}, radius={
                             "enabled": True, "listen_auth": [f"{server}:{free_udp_port(server)}"],
                             "listen_acct": [f"{server}:{acct}"],
                             "client": [{"name": "bng", "address": f"{nas}/32", "secret": secret.decode()}]})

    def account(identifier: int, login: bytes, session_id: bytes, status: int, *counters: tuple[int, bytes]) -> None:
        attributes = encode_attributes([
            (Attr.ACCT_STATUS_TYPE, status.to_bytes(4, "big")), (Attr.USER_NAME, login),
            (Attr.ACCT_SESSION_ID, session_id), (Attr.NAS_IP_ADDRESS, socket.inet_aton(nas)), *counters])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((nas, 0))
            sock.settimeout(5)
            sock.sendto(encode_request(Code.ACCOUNTING_REQUEST, identifier, attributes, secret), (server, acct))
            assert sock.recv(4096)[0] == Code.ACCOUNTING_RESPONSE

    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        carol = json.loads(ispd.cli("subscriber", "add", "carol", "--json").stdout)["id"]
        ispd.cli("reservation", "add", "carol", "--username", "carol@pppoe")
        account(1, b"carol", b"c-1", 1)  # Start
        account(2, b"carol@pppoe", b"c-2", 1)
        account(3, b"carol@pppoe", b"c-2", 2, (Attr.ACCT_INPUT_OCTETS, (1000).to_bytes(4, "big")),
                (Attr.ACCT_OUTPUT_OCTETS, (3000).to_bytes(4, "big")), (Attr.ACCT_SESSION_TIME, (5).to_bytes(4, "big")))
        sessions = json.loads(ispd.cli("session", "list", "--json").stdout)
        assert sorted((s["acct_session_id"], s["subscriber_id"]) for s in sessions) == [("c-1", carol), ("c-2", carol)]
        shown = json.loads(ispd.cli("subscriber", "show", "carol", "--json").stdout)
        assert shown["usage_this_month"] == {"input_octets": 1000, "output_octets": 3000, "session_seconds": 5}


def test_line_lock_lets_a_subscriber_log_in_from_its_own_lines_only(tmp_path: Path) -> None:
    """[[radius.plan]] line_lock: once dan has a reservation of his line (his CPE's MAC, added
    while ispd runs), his password works from that line only: a shared password is no login
    from anywhere else."""
    config = radius_config(tmp_path, free_udp_port(), plan=[{"plan": "locked", "line_lock": True}])
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        radius = Radius(ispd)
        ispd.cli("plan", "add", "locked", "--credential-policy", "cleartext")
        ispd.cli("subscriber", "add", "dan", "--plan", "locked", "--password-stdin", input="dan-pw\n")

        def login(mac: str) -> str | None:
            return radclient(radius.auth, "auth", SECRET, 'User-Name = dan, User-Password = "dan-pw", '
                             f"Message-Authenticator = 0x00, Calling-Station-Id = {mac}").code

        eventually(lambda: login("02-00-00-00-71-02") == "Access-Accept", timeout=10)  # no line of his yet
        ispd.cli("reservation", "add", "dan", "--mac", "02:00:00:00:71:01")
        eventually(lambda: login("02-00-00-00-71-02") == "Access-Reject", timeout=10)
        assert login("02-00-00-00-71-01") == "Access-Accept"
        assert ispd.metric_value("ispd_radius_rejects_total", {"reason": "wrong_line"}) >= 1
