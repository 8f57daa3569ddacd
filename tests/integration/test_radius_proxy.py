"""Proxying by realm ([[radius.realm]]) between two real ispd processes: a visited one that the NAS
(radtest, radclient, eapol_test as the access point) talks to, and the home one of the realm's
users. PAP, CHAP, MS-CHAPv2 and PEAP go through; eapol_test checks the MPPE keys the home server
made, which the proxy salted again for the NAS's secret; accounting is kept by the visited
server and copied to the home one."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.certs import issue
from tests.lab.eapol import eapol_test, require_eapol_test
from tests.lab.ports import free_udp_port
from tests.lab.process import IspdProcess, base_config, eventually
from tests.lab.radclient import radclient, radtest, require_radclient

NAS_SECRET = "testing123"
HOME_SECRET = "between-the-servers"


class UdpRelay:
    """A home server that comes back: datagrams to 127.0.0.1:``port`` go on to ``target`` and its
    replies come back, from when the relay is started."""

    def __init__(self, port: int, target: str) -> None:
        host, target_port = target.rsplit(":", 1)
        self.port, self.target = port, (host, int(target_port))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UdpRelay:
        return self

    def start(self) -> None:
        listening = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listening.bind(("127.0.0.1", self.port))
        listening.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, args=(listening,), daemon=True)
        self._thread.start()

    def _run(self, listening: socket.socket) -> None:
        with listening, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as onward:
            onward.settimeout(2)
            while not self._stop.is_set():
                try:
                    data, peer = listening.recvfrom(4096)
                    onward.sendto(data, self.target)
                    listening.sendto(onward.recv(4096), peer)
                except TimeoutError:
                    continue

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class Pair:
    comeback: UdpRelay

    def __init__(self, visited: IspdProcess, home: IspdProcess, ca: Path) -> None:
        self.visited, self.home, self.ca = visited, home, ca
        self.auth = visited.config["radius"]["listen_auth"][0]
        self.acct = visited.config["radius"]["listen_acct"][0]

    def login(self, user: str, password: str, method: str = "pap") -> str | None:
        return radtest(user, password, self.auth, NAS_SECRET, method).code


def radius_section(**more: Any) -> dict[str, Any]:
    return {"enabled": True, "listen_auth": [f"127.0.0.1:{free_udp_port()}"],
            "listen_acct": [f"127.0.0.1:{free_udp_port()}"], "reject_delay_seconds": 0, **more}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require_radclient()
    require_eapol_test()
    workdir = tmp_path_factory.mktemp("proxy")
    for name in ("home", "home2", "visited"):
        (workdir / name).mkdir()
    certificates = issue(workdir / "tls", "radius.home.example")

    def home_server(name: str) -> tuple[IspdProcess, dict[str, Any]]:
        section = radius_section(
            client=[{"name": "visited", "address": "127.0.0.1/32", "secret": HOME_SECRET}],
            eap={"certificate": str(certificates.certificate), "private_key": str(certificates.private_key)})
        return IspdProcess(workdir / name, base_config(workdir / name, radius=section)), section

    # Two home servers with the same users (a realm's pair): each keeps its own EAP conversations.
    (home, home_section), (home2, home2_section) = home_server("home"), home_server("home2")
    comeback_port = free_udp_port()
    with home, home2, UdpRelay(comeback_port, home_section["listen_auth"][0]) as comeback:
        for server in (home, home2):
            server.start()
            server.cli("plan", "add", "roaming", "--credential-policy", "cleartext")
            server.cli("subscriber", "add", "visitor@home.example", "--plan", "roaming", "--password-stdin",
                       input="visitor-pw\n")
            server.cli("subscriber", "add", "bare", "--plan", "roaming", "--password-stdin", input="bare-pw\n")
        home_auth, home_acct = home_section["listen_auth"][0], home_section["listen_acct"][0]
        visited_section = radius_section(
            client=[{"name": "ap", "address": "127.0.0.0/8", "secret": NAS_SECRET, "kind": "mikrotik"}],
            local_realms=["visited.example"],
            realm=[{"name": "home.example", "auth_servers": [home_auth], "acct_servers": [home_acct],
                    "secret": HOME_SECRET, "timeout_seconds": 1, "attempts": 1},
                   {"name": "stripped.example", "auth_servers": [home_auth], "secret": HOME_SECRET,
                    "strip_realm": True, "timeout_seconds": 1, "attempts": 1},
                   # Status-Server checks: the first server is dead until the test starts the relay
                   {"name": "checked.example", "auth_servers": [f"127.0.0.1:{comeback_port}", home_auth],
                    "secret": HOME_SECRET, "strip_realm": True, "status_check_seconds": 0.3, "timeout_seconds": 0.5,
                    "attempts": 1},
                   {"name": "alldead.example", "auth_servers": ["127.0.0.1:9"], "secret": HOME_SECRET,
                    "status_check_seconds": 0.3, "timeout_seconds": 0.5, "attempts": 1},
                   {"name": "balanced.example", "auth_servers": [home_auth, home2_section["listen_auth"][0]],
                    "secret": HOME_SECRET,
                    "strip_realm": True, "balance": "load-balance", "timeout_seconds": 1, "attempts": 1},
                   # "*": a federation proxy that is down (the first server) and one that answers
                   {"name": "*", "auth_servers": ["127.0.0.1:9", home_auth], "secret": HOME_SECRET,
                    "timeout_seconds": 0.5, "attempts": 1}])
        with IspdProcess(workdir / "visited", base_config(workdir / "visited", radius=visited_section)) as visited:
            visited.start()
            visited.cli("plan", "add", "local", "--credential-policy", "cleartext")
            visited.cli("subscriber", "add", "resident@visited.example", "--plan", "local", "--password-stdin",
                        input="resident-pw\n")
            result = Pair(visited, home, certificates.ca)
            result.comeback = comeback
            eventually(lambda: result.login("resident@visited.example", "resident-pw") == "Access-Accept", timeout=10)
            yield result
            for ispd in (visited, home, home2):
                assert "Traceback" not in ispd.log_text(), ispd.log_text()[-3000:]


@pytest.mark.parametrize("method", ["pap", "chap", "mschap"])
def test_a_visitor_logs_in_through_the_proxy(pair: Pair, method: str) -> None:
    assert pair.login("visitor@home.example", "visitor-pw", method) == "Access-Accept"
    assert pair.login("visitor@home.example", "wrong-pw", method) == "Access-Reject"  # the home server's word


def test_peap_through_the_proxy_with_the_home_servers_keys(pair: Pair) -> None:
    result = eapol_test(pair.auth, NAS_SECRET, method="PEAP", identity="visitor@home.example",
                        anonymous_identity="anonymous@home.example", password="visitor-pw", ca_cert=pair.ca,
                        phase2="auth=MSCHAPV2")
    assert result.success, result.output[-3000:]
    assert result.mppe_keys_ok and result.keys_match, result.output[-3000:]


def test_strip_realm_and_the_default_realm_with_a_dead_server(pair: Pair) -> None:
    assert pair.login("bare@stripped.example", "bare-pw") == "Access-Accept"  # home knows "bare"
    assert pair.login("bare@Stripped.Example.", "bare-pw") == "Access-Accept"  # (the realm in any case, a dot)
    # "*": the first server (port 9) is silent, the second answers; "visitor@elsewhere" is no
    # user there: the home server rejects.
    assert pair.login("bare@elsewhere.example", "bare-pw") == "Access-Reject"
    assert pair.visited.log_events("radius.proxy.home_server_silent")
    assert pair.visited.metric_value("ispd_radius_home_servers_down") == 1
    assert pair.visited.metric_value("ispd_radius_home_server_requests_total",
                                     {"server": "127.0.0.1:9", "kind": "auth", "result": "silent"}) == 1


def test_load_balance_spreads_devices_and_keeps_each_on_one_server(pair: Pair) -> None:
    """balance = "load-balance": logins from 24 devices (Calling-Station-Id) reach both home
    servers (two processes); each device's requests, all the rounds of its PEAP conversation
    among them, reach one server (the other does not know the conversation)."""
    servers = next(r for r in pair.visited.config["radius"]["realm"] if r["name"] == "balanced.example")["auth_servers"]

    def answered(server: str) -> float:
        return pair.visited.metric_value("ispd_radius_home_server_requests_total",
                                         {"server": server, "kind": "auth", "result": "answered"}) or 0.0

    before = [answered(s) for s in servers]
    for device in range(24):
        login = radclient(pair.auth, "auth", NAS_SECRET, 'User-Name = bare@balanced.example, User-Password = "bare-pw", '
                          f'Calling-Station-Id = "02-00-00-00-00-{device:02x}", Message-Authenticator = 0x00')
        assert login.code == "Access-Accept", login.output
    spread = [answered(s) - b for s, b in zip(servers, before, strict=True)]
    assert sum(spread) == 24 and min(spread) >= 3, spread
    for _ in range(2):
        result = eapol_test(pair.auth, NAS_SECRET, method="PEAP", identity="visitor@home.example",
                            anonymous_identity="anonymous@balanced.example", password="visitor-pw", ca_cert=pair.ca,
                            phase2="auth=MSCHAPV2")
        assert result.success, result.output[-3000:]


def test_local_users_and_local_realms_are_never_proxied(pair: Pair) -> None:
    assert pair.login("resident@visited.example", "resident-pw") == "Access-Accept"
    assert pair.login("nobody@visited.example", "x") == "Access-Reject"  # a local realm: not to "*"
    assert pair.login("nobody", "x") == "Access-Reject"
    sent = pair.visited.metric_value("ispd_radius_proxied_total", {"kind": "auth", "result": "accept"})
    assert sent is not None and sent >= 1


def test_accounting_is_kept_here_and_copied_home(pair: Pair) -> None:
    base = "User-Name = visitor@home.example, Acct-Session-Id = roam-1, NAS-IP-Address = 127.0.0.2"
    assert radclient(pair.acct, "acct", NAS_SECRET, f"{base}, Acct-Status-Type = Start").code == "Accounting-Response"
    assert radclient(pair.acct, "acct", NAS_SECRET, f"{base}, Acct-Status-Type = Stop, Acct-Input-Octets = 4000, "
                     "Acct-Output-Octets = 9000, Acct-Session-Time = 60").code == "Accounting-Response"

    def at_home() -> list[dict[str, Any]]:
        return [s for s in json.loads(pair.home.cli("session", "list", "--json").stdout)
                if s["acct_session_id"] == "roam-1" and s["stopped_at"] is not None]

    [home_session] = eventually(at_home, timeout=10)
    assert (home_session["username"], home_session["input_octets"]) == ("visitor@home.example", 4000)
    [here] = [s for s in json.loads(pair.visited.cli("session", "list", "--json").stdout)
              if s["acct_session_id"] == "roam-1"]
    assert here["output_octets"] == 9000 and here["subscriber_id"] is None  # (not a subscriber here)
    acked = pair.visited.metric_value("ispd_radius_proxied_total", {"kind": "acct", "result": "acked"})
    assert acked == 2
    # The NAS reboots: Accounting-On names no user, every realm's accounting servers hear of it
    # and close their sessions on that NAS.
    other = "User-Name = visitor@home.example, Acct-Session-Id = roam-2, NAS-IP-Address = 127.0.0.2"
    assert radclient(pair.acct, "acct", NAS_SECRET, f"{other}, Acct-Status-Type = Start").code == "Accounting-Response"
    assert radclient(pair.acct, "acct", NAS_SECRET, "NAS-IP-Address = 127.0.0.2, Acct-Status-Type = Accounting-On"
                     ).code == "Accounting-Response"

    def closed_at_home() -> list[dict[str, Any]]:
        return [s for s in json.loads(pair.home.cli("session", "list", "--json").stdout)
                if s["acct_session_id"] == "roam-2" and s["terminate_cause"] == "NAS-Reboot"]

    assert eventually(closed_at_home, timeout=10)


def test_status_server_checks_keep_a_dead_server_out_until_it_answers(pair: Pair) -> None:
    """status_check_seconds: a home server that did not answer gets no requests, only
    Status-Server checks, until it answers one; a realm whose servers are all dead rejects at
    once. (FreeRADIUS's status_check = status-server.)"""
    dead = f"127.0.0.1:{pair.comeback.port}"

    def sent(server: str, result: str) -> float:
        return pair.visited.metric_value("ispd_radius_home_server_requests_total",
                                         {"server": server, "kind": "auth", "result": result}) or 0.0

    assert pair.login("bare@checked.example", "bare-pw") == "Access-Accept"  # the first server silent, the next
    assert sent(dead, "silent") == 1
    for _ in range(3):
        assert pair.login("bare@checked.example", "bare-pw") == "Access-Accept"
    assert sent(dead, "silent") == 1 and sent(dead, "answered") == 0  # not asked again: checked
    assert pair.visited.metric_value("ispd_radius_home_servers_down") == 2  # (and 127.0.0.1:9 of "*")
    pair.comeback.start()
    eventually(lambda: pair.visited.log_events("radius.proxy.home_server_alive"), timeout=5)
    assert pair.login("bare@checked.example", "bare-pw") == "Access-Accept"
    assert sent(dead, "answered") == 1  # first in the order again

    assert pair.login("nobody@alldead.example", "x") == "Access-Reject"  # waited for its timeout
    silent = sent("127.0.0.1:9", "silent")
    assert pair.login("nobody@alldead.example", "x") == "Access-Reject"
    assert sent("127.0.0.1:9", "silent") == silent  # dead: rejected at once, not asked
    # In the trail of failed logins, as every reject, with the realm it cost.
    assert any(e.get("reason") == "home_server_unreachable" and e.get("detail") == "realm alldead.example"
               for e in pair.visited.log_events("radius.access.rejected")), pair.visited.log_text()[-3000:]
