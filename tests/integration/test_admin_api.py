"""The admin HTTP API, against ispd as a process: curl over the Unix socket (no token: the file
mode is the guard) and over TCP (the bearer token), the changes audited and carried out, errors
as JSON with the right status, and the committed OpenAPI document equal to the one served."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.ports import free_tcp_port
from tests.lab.process import IspdProcess, base_config

TOKEN = "admin-token-for-the-lab-0123456789"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Api:
    ispd: IspdProcess
    socket: Path
    tcp: int

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, token: str | None = None,
             tcp: bool = False, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        where = ["--unix-socket", str(self.socket), f"http://ispd{path}"] if not tcp else [
            f"http://127.0.0.1:{self.tcp}{path}"]
        command = ["curl", "-sS", "-X", method, "-w", "\\n%{http_code}", *where]
        if token is not None:
            command += ["-H", f"Authorization: Bearer {token}"]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        if body is not None:
            command += ["-H", "content-type: application/json", "-d", json.dumps(body)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        text, _, status = result.stdout.rpartition("\n")
        return int(status), json.loads(text) if text else None


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("admin")
    port = free_tcp_port()
    config = base_config(workdir, admin={"listen": [f"127.0.0.1:{port}"], "token": TOKEN},
                         mail={"enabled": False, "domains": ["isp.example"], "maildir_root": str(workdir / "mail")})
    with IspdProcess(workdir, config) as ispd:
        ispd.start()
        yield Api(ispd, workdir / "admin.sock", port)
        assert "Traceback" not in ispd.log_text()


def test_the_socket_is_private_and_tcp_needs_the_token(api: Api) -> None:
    assert os.stat(api.socket).st_mode & 0o777 == 0o600
    assert api.call("GET", "/v1/subscribers")[0] == 200  # the file mode is the guard
    status, body = api.call("GET", "/v1/subscribers", tcp=True)
    assert status == 401 and "bearer token" in body["detail"]
    assert api.call("GET", "/v1/subscribers", tcp=True, token="wrong-token-but-long-enough")[0] == 401
    assert api.call("GET", "/v1/subscribers", tcp=True, token=TOKEN)[0] == 200
    # The scheme is case-insensitive (RFC 9110 11.1); the token is not.
    for header in (f"bearer {TOKEN}", f"BEARER {TOKEN}"):
        assert api.call("GET", "/v1/plans", tcp=True, headers={"Authorization": header})[0] == 200, header
    for header in (f"Bearer {TOKEN.upper()}", f"Basic {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN}x", "Bearer"):
        assert api.call("GET", "/v1/plans", tcp=True, headers={"Authorization": header})[0] == 401, header
    assert api.call("GET", "/openapi.json", tcp=True)[0] == 401  # nothing without the token on TCP


def test_a_new_token_applies_at_a_reload_and_a_new_listener_is_refused(tmp_path: Path) -> None:
    """Rotating a leaked token is a SIGHUP away; a listener change needs a restart and says so."""
    port = free_tcp_port()
    config = base_config(tmp_path, admin={"listen": [f"127.0.0.1:{port}"], "token": TOKEN})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        api = Api(ispd, tmp_path / "admin.sock", port)
        assert api.call("GET", "/v1/plans", tcp=True, token=TOKEN)[0] == 200
        rotated = "a-rotated-token-for-the-lab-987654321"
        config["admin"]["token"] = rotated
        ispd.write_config(config)
        ispd.reload()
        assert api.call("GET", "/v1/plans", tcp=True, token=TOKEN)[0] == 401
        assert api.call("GET", "/v1/plans", tcp=True, token=rotated)[0] == 200
        config["admin"]["listen"].append(f"127.0.0.1:{free_tcp_port()}")
        ispd.write_config(config)
        ispd.reload()
        refused = ispd.log_events("config.reload.service_refused")
        assert refused and "needs a restart" in refused[-1]["error"], refused
        assert api.call("GET", "/v1/plans", tcp=True, token=rotated)[0] == 200


def test_wrong_tokens_are_logged_and_a_guessing_address_is_shut_out(tmp_path: Path) -> None:
    """Each wrong token is logged with its peer (fail2ban can act on it), never with what it
    sent; past AUTH_FAILURES_PER_ADDRESS within the window the address is refused unchecked (429,
    even with the right token), while the Unix socket goes on serving."""
    from ispd.admin.app import AUTH_FAILURES_PER_ADDRESS

    port = free_tcp_port()
    config = base_config(tmp_path, admin={"listen": [f"127.0.0.1:{port}"], "token": TOKEN})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        api = Api(ispd, tmp_path / "admin.sock", port)
        guess = "a-guessed-token-0123456789"
        for _ in range(AUTH_FAILURES_PER_ADDRESS):
            assert api.call("GET", "/v1/plans", tcp=True, token=guess)[0] == 401
        failed = ispd.log_events("admin.auth.failed")
        assert len(failed) == AUTH_FAILURES_PER_ADDRESS, failed
        assert failed[0]["client"] == "127.0.0.1" and failed[-1]["shut_out"] is True
        assert guess not in ispd.log_text() and TOKEN not in ispd.log_text()
        status, body = api.call("GET", "/v1/plans", tcp=True, token=TOKEN)
        assert status == 429 and "try again later" in body["detail"]
        assert api.call("GET", "/v1/plans")[0] == 200  # the socket's file mode is its guard


def test_malformed_requests_and_upgrades_are_answered_without_a_log_line_each(api: Api) -> None:
    """From a review: uvicorn warned of every request that was not HTTP and of every Upgrade
    header (two lines, one telling the operator to install a WebSocket library), before the
    token was checked: 200 malformed requests made 200 warnings, anyone's to send."""
    before = len(api.ispd.log_text().splitlines())
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", api.tcp), timeout=10) as sock:
            sock.sendall(b"\x1b[2J NOT HTTP\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.1 400")
    for _ in range(100):
        status, _ = api.call("GET", "/v1/plans", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
        assert status == 200  # served as a plain request
    time.sleep(0.5)
    added = api.ispd.log_text().splitlines()[before:]
    assert not [line for line in added if "uvicorn" in line], added[:5]


def test_connections_that_never_send_a_request_do_not_hold_the_api_for_good(tmp_path: Path) -> None:
    """max_connections counts connections: ones that stay silent, or trickle a request head a
    byte at a time, are closed after the head's deadline and the API answers again."""
    port = free_tcp_port()
    config = base_config(tmp_path, admin={"listen": [f"127.0.0.1:{port}"], "token": TOKEN, "max_connections": 3})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()

        def status() -> str:  # (uvicorn's 503 is plain text)
            return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                                   f"Authorization: Bearer {TOKEN}", f"http://127.0.0.1:{port}/v1/plans"],
                                  capture_output=True, text=True, timeout=30).stdout

        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
        try:
            held[0].sendall(b"GET /v1/plans HTTP/1.1\r\n")  # a head begun, never finished
            assert status() == "503"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                held[1].sendall(b"X")  # trickled: still no complete head
                time.sleep(1)
                if status() == "200":
                    break
            else:
                raise AssertionError("connections without a request held the admin API for 20 s")
            for sock in held:
                assert sock.recv(1024) == b""  # closed by ispd
        finally:
            for sock in held:
                sock.close()


def test_a_trickled_request_body_does_not_hold_the_api_for_good(tmp_path: Path) -> None:
    """A head is not the whole request: one that announces a body and trickles it a byte at a
    time (after its 401, without the token) held its place for good, and max_connections of
    them, from a few addresses, had every request answered 503. The whole request must come
    within the deadline."""
    port = free_tcp_port()
    config = base_config(tmp_path, admin={"listen": [f"127.0.0.1:{port}"], "token": TOKEN, "max_connections": 2,
                                          "max_connections_per_client": 1})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()

        def status() -> str:
            return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                                   f"Authorization: Bearer {TOKEN}", f"http://127.0.0.1:{port}/v1/plans"],
                                  capture_output=True, text=True, timeout=30).stdout

        held = []
        for source in ("127.0.0.2", "127.0.0.3"):  # (one each: max_connections_per_client)
            sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
            sock.sendall(b"POST /v1/plans HTTP/1.1\r\nHost: ispd\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 60000\r\n\r\n")  # and no token
            held.append(sock)
        try:
            assert status() == "503"
            deadline = time.monotonic() + 25
            while time.monotonic() < deadline:
                for sock in held:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"x")  # the body, a byte now and then
                time.sleep(1)
                if status() == "200":
                    break
            else:
                raise AssertionError("trickled request bodies held the admin API for 25 s")
            for sock in held:
                while sock.recv(65536):  # its 401, then closed by ispd
                    pass
        finally:
            for sock in held:
                sock.close()


def test_max_connections_are_served_at_once_not_one_fewer(tmp_path: Path) -> None:
    """From a fix task: uvicorn's limit_concurrency refuses a request when the connections, its
    own among them, are as many as the limit, so max_connections = 1 answered every request 503
    (on the Unix socket too), and 64 served 63."""
    port = free_tcp_port()
    config = base_config(tmp_path, admin={"listen": [f"127.0.0.1:{port}"], "token": TOKEN, "max_connections": 1})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        api = Api(ispd, tmp_path / "admin.sock", port)
        assert api.call("GET", "/v1/plans", tcp=True, token=TOKEN)[0] == 200
        assert api.call("GET", "/v1/plans")[0] == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)):
            time.sleep(0.2)  # (accepted)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # one more is too many
                sock.sendall(f"GET /v1/plans HTTP/1.1\r\nHost: ispd\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
                assert sock.recv(1024).startswith(b"HTTP/1.1 503 ")  # (uvicorn's, plain text)


def test_requests_past_max_connections_are_logged_once_a_minute_not_each(tmp_path: Path) -> None:
    """From a review: uvicorn warned of every request it answered 503 past max_connections; with
    the connections held by idle clients, 500 requests wrote 500 lines."""
    port = free_tcp_port()
    config = base_config(tmp_path, admin={"listen": [f"127.0.0.1:{port}"], "token": TOKEN, "max_connections": 2})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            for _ in range(50):  # (from another address: past max_connections, not its own limit)
                with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0)) as sock:
                    sock.sendall(b"GET /v1/plans HTTP/1.1\r\nHost: ispd\r\n\r\n")
                    assert sock.recv(1024).startswith(b"HTTP/1.1 503")
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.5)
        assert ispd.log_text().count("Exceeded concurrency limit.") == 1


def test_one_client_s_connections_cannot_keep_every_other_client_out(tmp_path: Path) -> None:
    """From a bug hunt: 64 idle connections from one address (max_connections) had every other
    address answered 503 until they timed out, and a client that opened them again every 10 s
    kept the API from everyone, without a token. A client past max_connections_per_client is
    answered 503 (Retry-After) as its connection opens, and that connection takes no place; the
    Unix socket has no per-client limit."""
    port = free_tcp_port()
    config = base_config(tmp_path, admin={"listen": [f"127.0.0.1:{port}"], "token": TOKEN,
                                          "max_connections": 8, "max_connections_per_client": 3})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        api = Api(ispd, tmp_path / "admin.sock", port)

        def connect(source: str) -> socket.socket:
            sock = socket.socket()
            sock.settimeout(10)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", port))
            return sock

        def status(source: str) -> str:
            return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--interface", source,
                                   "-H", f"Authorization: Bearer {TOKEN}", f"http://127.0.0.1:{port}/v1/plans"],
                                  capture_output=True, text=True, timeout=30).stdout

        held = [connect("127.0.0.2") for _ in range(10)]
        try:
            for sock in held[3:]:  # past the 3rd: answered at once, unread, and closed
                answer = sock.recv(4096)
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert b"retry-after: 1\r\n" in answer.lower() and b"too many connections" in answer
            assert status("127.0.0.3") == "200"  # another address is served
            assert status("127.0.0.2") == "503"  # the flooding one is not
            unix = [socket.socket(socket.AF_UNIX) for _ in range(5)]  # the socket's peers: no limit
            try:
                for sock in unix:
                    sock.connect(str(api.socket))
                assert api.call("GET", "/v1/plans")[0] == 200
            finally:
                for sock in unix:
                    sock.close()
            held.pop(0).close()
            time.sleep(0.3)
            assert status("127.0.0.2") == "200"  # a place of its own freed
        finally:
            for sock in held:
                sock.close()
        _, metrics = ispd.http_get("/metrics")
        assert "ispd_admin_refused_connections_total 8.0" in metrics, metrics  # 7 held, 1 by curl
        assert "ispd_admin_connections_total 5.0" in metrics  # 3 held, 127.0.0.3's, 127.0.0.2's last
        refused = ispd.log_events("admin.connection.refused")
        assert len(refused) == 1 and refused[0]["client"] == "127.0.0.2", refused  # once a minute


def test_a_store_locked_by_another_process_is_a_503_to_try_again(tmp_path: Path) -> None:
    """What the CLI says in one line was a 500 in plain text and a traceback in the log."""
    config = base_config(tmp_path, store={"path": str(tmp_path / "ispd.db"), "busy_timeout_seconds": 0.5})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        api = Api(ispd, tmp_path / "admin.sock", 0)
        other = sqlite3.connect(tmp_path / "ispd.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process writing, for longer than busy_timeout
            status, body = api.call("POST", "/v1/subscribers", {"username": "waits"})
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert status == 503 and "locked by another process" in body["detail"], (status, body)
        assert api.call("POST", "/v1/subscribers", {"username": "waits"})[0] == 201  # the retry
        assert "Traceback" not in ispd.log_text()


def test_a_huge_body_is_refused_before_it_is_read(api: Api, tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    huge.write_text('{"username": "' + "x" * (2 * 1024 * 1024) + '"}')

    def post(*where: str, token: str | None = None) -> str:
        auth = ["-H", f"Authorization: Bearer {token}"] if token else []
        return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", *auth,
                               "-H", "content-type: application/json", "--data-binary", f"@{huge}", *where],
                              capture_output=True, text=True, timeout=30).stdout

    tcp = f"http://127.0.0.1:{api.tcp}/v1/subscribers"
    assert post(tcp) == "401"  # no token: refused before the body is read
    assert post(tcp, token=TOKEN) == "413"
    assert post("--unix-socket", str(api.socket), "http://ispd/v1/subscribers") == "413"
    # Chunked, with no Content-Length to go by: counted as it comes.
    assert post("--unix-socket", str(api.socket), "-H", "Transfer-Encoding: chunked",
                "http://ispd/v1/subscribers") == "413"


def test_a_subscriber_s_life_through_the_api_is_audited_and_seen_by_the_cli(api: Api) -> None:
    status, plan = api.call("POST", "/v1/plans", {"name": "home-50", "download_kbps": 50000, "max_sessions": 2})
    assert status == 201 and plan["name"] == "home-50"
    status, added = api.call("POST", "/v1/subscribers", {"username": "yara", "plan": "home-50",
                                                          "password": "yara-long-password-1"})
    assert status == 201 and added["status"] == "active" and added["plan_id"] == plan["id"]
    status, reservation = api.call("POST", "/v1/reservations",
                                   {"subscriber": "yara", "kind": "mac", "key": "02:00:00:00:77:01"})
    assert status == 201 and reservation["key"] == "02:00:00:00:77:01"
    status, suspended = api.call("POST", "/v1/subscribers/yara/suspend", {"reason": "unpaid"}, tcp=True,
                                 token=TOKEN)
    assert status == 200 and suspended["status"] == "suspended"
    status, view = api.call("GET", "/v1/subscribers/yara")
    assert status == 200 and view["credential_forms"] == ["verifier"] and view["plan"]["name"] == "home-50"
    assert [(a["action"], a["actor"]) for a in view["audit"]][:1] == [("subscriber.suspended", "api:127.0.0.1")]
    assert "effects" in view
    shown = api.ispd.cli("subscriber", "show", "yara").stdout  # the CLI reads what the API wrote
    assert "status        suspended (unpaid)" in shown
    assert api.call("POST", "/v1/subscribers/yara/resume")[1]["status"] == "active"
    assert api.call("PUT", "/v1/subscribers/yara/plan", {"plan": None})[1]["plan_id"] is None
    assert api.call("DELETE", f"/v1/reservations/{reservation['id']}")[0] == 200
    assert api.call("GET", "/v1/reservations?subscriber=yara")[1] == []


def test_dhcp6_reservations_take_and_give_a_fixed_ipv6_address_and_prefix(api: Api) -> None:
    api.call("POST", "/v1/subscribers", {"username": "acme-v6"})
    status, line = api.call("POST", "/v1/reservations", {
        "subscriber": "acme-v6", "kind": "circuit-id", "key": "bng1 ge-0/0/1:100", "prefix6": "2001:DB8:200::/48"})
    assert status == 201 and (line["prefix6"], line["address6"]) == ("2001:db8:200::/48", None)
    status, client = api.call("POST", "/v1/reservations", {
        "subscriber": "acme-v6", "kind": "duid", "key": "000300010200005e1001", "address6": "2001:db8:1::10"})
    assert status == 201 and (client["key"], client["address6"]) == ("00:03:00:01:02:00:00:5e:10:01", "2001:db8:1::10")
    listed = api.call("GET", "/v1/reservations?subscriber=acme-v6")[1]
    assert [(r["kind"], r["address6"], r["prefix6"]) for r in listed] == [
        ("circuit-id", None, "2001:db8:200::/48"), ("duid", "2001:db8:1::10", None)]
    assert api.call("GET", "/v1/subscribers/acme-v6")[1]["reservations"] == listed
    status, body = api.call("POST", "/v1/reservations", {
        "subscriber": "acme-v6", "kind": "remote-id", "key": "r1", "prefix6": "2001:db8:200:100::/56"})
    assert status == 409 and "overlaps 2001:db8:200::/48, reserved for acme-v6" in body["detail"]
    status, body = api.call("POST", "/v1/reservations", {
        "subscriber": "acme-v6", "kind": "mac", "key": "02:00:00:00:77:09", "address6": "2001:db8:1::11"})
    assert status == 400 and "a mac reservation holds no IPv6 address" in body["detail"]
    status, body = api.call("POST", "/v1/reservations", {
        "subscriber": "acme-v6", "kind": "duid", "key": "00:03:00:01:02:00:00:5e:10:02", "prefix6": "2001:db8::/24"})
    assert status == 400 and "no shorter than /32" in body["detail"]


def test_patch_changes_a_reservation_in_place(api: Api) -> None:
    api.call("POST", "/v1/subscribers", {"username": "biz-line"})
    status, line = api.call("POST", "/v1/reservations", {
        "subscriber": "biz-line", "kind": "circuit-id", "key": "bng1 ge-0/0/2:7", "address": "198.18.3.7",
        "hostname": "biz-gw"})
    assert status == 201, line
    # Given: set; null: cleared; left out: as it was.
    status, changed = api.call("PATCH", f"/v1/reservations/{line['id']}",
                               {"prefix6": "2001:DB8:700::/48", "hostname": None})
    assert status == 200 and (changed["id"], changed["address"], changed["hostname"], changed["prefix6"]) == (
        line["id"], "198.18.3.7", None, "2001:db8:700::/48")
    assert api.call("GET", "/v1/reservations?subscriber=biz-line")[1] == [changed]
    view = api.call("GET", "/v1/subscribers/biz-line")[1]
    assert view["audit"][0]["action"] == "reservation.changed"
    assert view["audit"][0]["details"]["previous"] == {"hostname": "biz-gw", "prefix6": None}
    status, body = api.call("PATCH", f"/v1/reservations/{line['id']}", {"prefix": "2001:db8:800::/48"})
    assert status == 422  # a misspelt field is refused, not ignored
    status, body = api.call("PATCH", f"/v1/reservations/{line['id']}", {"address6": "2001:db8::/64"})
    assert status == 400 and "give one IPv6 address here" in body["detail"]
    status, body = api.call("PATCH", "/v1/reservations/99999", {"address": "198.18.3.8"})
    assert (status, body) == (404, {"detail": "no reservation #99999"})


def test_the_audit_names_the_peer_whatever_headers_it_sends(api: Api) -> None:
    """The actor is the TCP peer: an X-Forwarded-For header, which uvicorn believed from
    127.0.0.1 by default, let any local client write whom it liked into the audit log."""
    api.call("POST", "/v1/subscribers", {"username": "forwarded"})
    forged = {"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=203.0.113.67"}
    status, _ = api.call("POST", "/v1/subscribers/forwarded/suspend", tcp=True, token=TOKEN, headers=forged)
    assert status == 200
    view = api.call("GET", "/v1/subscribers/forwarded")[1]
    assert [(a["action"], a["actor"]) for a in view["audit"]][:1] == [("subscriber.suspended", "api:127.0.0.1")]


def test_a_field_the_api_does_not_know_is_refused_not_dropped(api: Api) -> None:
    """A misspelt field, or one named as the CLI's option, was dropped and the rest done: the
    billing system got its 201 and the account without what it had sent."""
    status, body = api.call("POST", "/v1/subscribers", {"username": "typo", "acount_ref": "A-17"})
    assert status == 422 and body["detail"][0]["type"] == "extra_forbidden", body
    assert body["detail"][0]["loc"] == ["body", "acount_ref"]
    assert api.call("GET", "/v1/subscribers/typo")[0] == 404  # nothing was done
    status, body = api.call("POST", "/v1/plans", {"name": "typo", "monthly_quota": "500G"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "monthly_quota"], body
    api.call("POST", "/v1/subscribers", {"username": "typo"})
    status, body = api.call("POST", "/v1/subscribers/typo/suspend", {"reson": "unpaid"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "reson"], body
    assert api.call("GET", "/v1/subscribers/typo")[1]["subscriber"]["status"] == "active"


def test_a_subscriber_s_own_credential_policy_is_set_as_on_the_cli(api: Api) -> None:
    """`ispd subscriber add --credential-policy` had no API counterpart: a CHAP or MS-CHAPv2
    subscriber added by the billing system got only the verifier, and no call could change it."""
    status, added = api.call("POST", "/v1/subscribers", {"username": "chap-line", "password": "chap-line-password-1",
                                                          "credential_policy": "cleartext"})
    assert status == 201 and added["credential_policy"] == "cleartext", added
    view = api.call("GET", "/v1/subscribers/chap-line")[1]
    assert view["credential_forms"] == ["verifier", "nt-hash", "cleartext"], view["credential_forms"]
    assert "credentials   verifier, nt-hash, cleartext (policy cleartext, own)" in api.ispd.cli(
        "subscriber", "show", "chap-line").stdout
    status, body = api.call("POST", "/v1/subscribers", {"username": "bad-policy", "credential_policy": "md5"})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "credential_policy"], body


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("PUT", "/v1/plans", "GET, POST"),
    ("PUT", "/v1/subscribers/someone", "DELETE, GET"),
    ("GET", "/v1/reservations/1", "DELETE, PATCH"),
    ("POST", "/v1/subscribers/someone/plan", "PUT"),
])
def test_a_method_not_allowed_names_every_method_the_path_takes(api: Api, method: str, path: str,
                                                                allow: str) -> None:
    """RFC 9110 15.5.6: a 405's Allow lists the resource's methods; it named only those of the
    first route that matched the path (GET for /v1/plans), and a client took POST for refused."""
    result = subprocess.run(["curl", "-sS", "-i", "-X", method, "--unix-socket", str(api.socket),
                             f"http://ispd{path}"], capture_output=True, text=True, timeout=30)
    head, _, body = result.stdout.partition("\n\n")
    assert head.startswith("HTTP/1.1 405") and json.loads(body) == {"detail": "Method Not Allowed"}, result.stdout
    headers = dict(line.split(": ", 1) for line in head.splitlines()[1:])
    assert {k.lower(): v for k, v in headers.items()}["allow"] == allow, head


def test_an_empty_name_is_no_subscriber_and_no_plan_as_on_the_cli(api: Api) -> None:
    """"" was read as "none given": `?subscriber=` listed every subscriber's reservations,
    sessions, leases and usage (a billing run's blank customer got everyone's), and a plan of ""
    took the subscriber off its plan, where the CLI refuses both (null is "no plan")."""
    api.call("POST", "/v1/plans", {"name": "kept"})
    api.call("POST", "/v1/subscribers", {"username": "blank-a", "plan": "kept"})
    api.call("POST", "/v1/reservations", {"subscriber": "blank-a", "kind": "mac", "key": "02:00:00:00:77:aa"})
    for path in ("/v1/reservations", "/v1/mailboxes", "/v1/mail-aliases", "/v1/sessions", "/v1/leases",
                 "/v1/leases6", "/v1/usage?since=2026-01-01T00:00:00Z&until=2026-02-01T00:00:00Z"):
        where = path + ("&" if "?" in path else "?") + "subscriber="
        assert api.call("GET", where) == (404, {"detail": "no subscriber ''"}), where
    assert api.call("PUT", "/v1/subscribers/blank-a/plan", {"plan": ""}) == (404, {"detail": "no plan ''"})
    assert api.call("GET", "/v1/subscribers/blank-a")[1]["plan"]["name"] == "kept"
    assert api.call("POST", "/v1/subscribers", {"username": "blank-b", "plan": ""}) == (404, {"detail": "no plan ''"})
    assert api.call("PUT", "/v1/subscribers/blank-a/plan", {"plan": None})[1]["plan_id"] is None


def test_errors_are_json_with_the_right_status(api: Api) -> None:
    assert api.call("GET", "/v1/subscribers/nobody") == (404, {"detail": "no subscriber 'nobody'"})
    api.call("POST", "/v1/subscribers", {"username": "twice"})
    status, body = api.call("POST", "/v1/subscribers", {"username": "twice"})
    assert status == 409 and "already exists" in body["detail"]
    status, body = api.call("POST", "/v1/reservations", {"subscriber": "twice", "kind": "mac", "key": "not-a-mac"})
    assert status == 400 and "not-a-mac" in body["detail"]
    assert api.call("POST", "/v1/subscribers", {"name": "missing username"})[0] == 422
    status, body = api.call("POST", "/v1/mailboxes", {"subscriber": "twice", "address": "twice@elsewhere.example"})
    assert status == 400 and "mail domains" in body["detail"]
    assert api.call("POST", "/v1/sessions/1/disconnect", {})[0] == 503  # RADIUS is not running here
    assert api.call("GET", "/v1/who/not-an-address")[0] == 400
    # What the CLI refuses, the API refuses: names that hide or inject text.
    for username in ("eve\nINJECT", " alice", "bob\u0000x", "\ud800bob", "x" * 254):
        status, body = api.call("POST", "/v1/subscribers", {"username": username})
        assert status in (400, 422) and "detail" in body, (username, status, body)
    assert api.call("POST", "/v1/subscribers", {"username": "ok", "account_ref": "9" * 60_000})[0] == 400
    assert api.call("POST", "/v1/plans", {"name": "p\u0001"})[0] == 400
    assert api.call("POST", "/v1/plans", {"name": "tru", "download_kbps": True})[0] == 422  # not a number
    assert api.call("POST", "/v1/plans", {"name": "tru", "download_kbps": "100"})[0] == 422
    # Whatever a path holds, an answer, not a 500: digits that are not ASCII, a number past any id.
    assert api.call("GET", "/v1/subscribers/%C2%B2")[0] == 404
    assert api.call("GET", "/v1/subscribers/" + "9" * 4400)[0] == 404
    assert api.call("GET", "/v1/reservations?subscriber=%C2%B2")[0] == 404


def test_a_422_over_a_number_json_cannot_hold_is_json_still(api: Api) -> None:
    """1e999 is a JSON number that Python reads as inf (and json.loads takes NaN too): echoed
    back as the input, it was the token Infinity, which is not JSON (RFC 8259 6), and a strict
    client could not read why it was refused."""
    def reject(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    for number in ("1e999", "-1e999", "NaN"):
        result = subprocess.run(["curl", "-sS", "-w", "\\n%{http_code}", "--unix-socket", str(api.socket), "-X", "POST",
                                 "-H", "content-type: application/json", "-d",
                                 f'{{"name": "big", "download_kbps": {number}}}', "http://ispd/v1/plans"],
                                capture_output=True, text=True, timeout=30)
        text, _, status = result.stdout.rpartition("\n")
        assert status == "422", (number, result.stdout)
        detail = json.loads(text, parse_constant=reject)["detail"]
        assert detail[0]["loc"] == ["body", "download_kbps"] and detail[0]["input"] in ("inf", "-inf", "nan"), detail


def test_a_username_of_digits_names_the_same_subscriber_as_in_the_cli(api: Api) -> None:
    """A path segment of digits was always an id here and a username first on the CLI: each
    could act on a subscriber the other did not mean. Where the digits are both, neither guesses."""
    first = api.call("POST", "/v1/subscribers", {"username": "digits-first"})[1]["id"]
    named = api.call("POST", "/v1/subscribers", {"username": str(first)})[1]["id"]
    status, body = api.call("DELETE", f"/v1/subscribers/{first}")
    assert status == 409 and f"write #{named} or #{first}" in body["detail"], body
    assert api.call("GET", f"/v1/subscribers/%23{first}")[1]["subscriber"]["id"] == first  # "#ID": the id
    assert api.call("GET", f"/v1/subscribers/%23{named}")[1]["subscriber"]["username"] == str(first)
    refused = api.ispd.cli("subscriber", "delete", str(first), check=False)
    assert refused.returncode == 1 and "names two subscribers" in refused.stderr
    assert api.call("GET", f"/v1/subscribers/{named}")[1]["subscriber"]["id"] == named  # only an id: no doubt


def test_a_username_with_a_slash_in_a_path_is_not_a_404_while_it_exists(api: Api) -> None:
    """A username may hold a '/' (a prefix realm: realm/user), but a path segment cannot, even
    as %2F: the route did not match, and DELETE or suspend answered 404 Not Found, which an
    automation takes for "no such subscriber" (or "deleted already") while it stays active.
    It is a 400 that says how to name it, and #ID reaches it."""
    sub = api.call("POST", "/v1/subscribers", {"username": "realm/slashed"})[1]["id"]
    for method, path in (("DELETE", "/v1/subscribers/realm%2Fslashed"), ("GET", "/v1/subscribers/realm%2fslashed"),
                         ("POST", "/v1/subscribers/realm%2Fslashed/suspend")):
        status, body = api.call(method, path)
        assert status == 400 and "%23ID" in body["detail"], (method, path, status, body)
    assert api.call("GET", f"/v1/subscribers/%23{sub}")[1]["subscriber"]["status"] == "active"
    assert api.call("DELETE", f"/v1/subscribers/%23{sub}")[0] == 200
    assert api.call("GET", "/v1/nothing-here") == (404, {"detail": "Not Found"})  # a path that is not the API's


def test_put_of_a_plan_is_idempotent(api: Api) -> None:
    """PUT is idempotent (RFC 9110 9.2.2): a billing system that sends it again (its answer lost
    to a timeout) was told 409 "already on that plan", for the state it asked for. It is that
    state again, answered 200, and audited once; PUT of a quota was so already."""
    api.call("POST", "/v1/plans", {"name": "idempotent"})
    api.call("POST", "/v1/subscribers", {"username": "put-twice"})
    for plan, expected in (("idempotent", "idempotent"), (None, None)):
        answers = [api.call("PUT", "/v1/subscribers/put-twice/plan", {"plan": plan}) for _ in range(2)]
        assert [status for status, _ in answers] == [200, 200], answers
        assert answers[0][1] == answers[1][1], answers
        shown = api.call("GET", "/v1/subscribers/put-twice")[1]
        assert (shown["plan"] or {}).get("name") == expected
    changes = [entry for entry in shown["audit"] if entry["action"] == "subscriber.plan_changed"]
    assert len(changes) == 2, changes  # one for each change, none for a repeat
    assert api.call("PUT", "/v1/subscribers/put-twice/plan", {"plan": "no-such-plan"})[0] == 404


def test_who_and_usage_answer_from_the_history(api: Api) -> None:
    status, body = api.call("GET", "/v1/who/198.18.0.7?at=2026-11-03T14:00:00Z")
    assert status == 200 and body["holdings"] == [] and body["since"] == body["until"] == 1793714400.0
    status, body = api.call("GET", "/v1/usage?since=2026-11-01&until=2026-11-30")
    assert status == 200 and body == []
    # An IPv6 prefix has a slash in it; the answer names the question in its canonical form.
    status, body = api.call("GET", "/v1/who/2001:DB8:1:2:0::/64")
    assert status == 200 and body["address"] == "2001:db8:1:2::/64" and body["holdings"] == []
    status, body = api.call("GET", "/v1/who/198.18.0.7/")  # a trailing slash, as before the prefixes
    assert status == 200 and body["address"] == "198.18.0.7"
    status, body = api.call("GET", "/v1/who/2001:db8::/129")
    assert status == 400 and "is not an IPv4 or IPv6 address" in body["detail"]
    # Before 1970, as the CLI says: out of range (it was answered as if for all time).
    status, body = api.call("GET", "/v1/who/198.18.0.7?since=1969-12-31T00:00:00Z&until=2026-11-03T14:00:00Z")
    assert status == 400 and "since: 1969-12-31T00:00:00+00:00 is out of range" in body["detail"], body
    assert api.call("GET", "/v1/usage?since=1960-01-01&until=2026-11-30")[0] == 400


def test_long_lists_come_in_pages_with_a_link_to_the_next(api: Api) -> None:
    """A billing system reading 50,000 subscribers, leases or days of usage asks for pages (whole,
    they are built on the daemon's one event loop); the Link header (RFC 8288) names the next."""
    for name in ("page-a", "page-b", "page-c"):
        assert api.call("POST", "/v1/subscribers", {"username": name})[0] == 201
    whole = [s["username"] for s in api.call("GET", "/v1/subscribers")[1]]
    assert len(whole) >= 3
    paged: list[str] = []
    path: str | None = "/v1/subscribers?limit=2"
    while path is not None:
        result = subprocess.run(["curl", "-sS", "-D", "-", "--unix-socket", str(api.socket), f"http://ispd{path}"],
                                capture_output=True, text=True, timeout=30, check=True)
        head, _, text = result.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
        page = json.loads(text)
        paged += [s["username"] for s in page]
        links = [line.split(":", 1)[1].strip() for line in head.splitlines() if line.lower().startswith("link:")]
        path = links[0].split(">")[0].lstrip("<") if links else None
        assert (path is not None) == (len(page) == 2), (head, page)
    assert paged == whole
    status, body = api.call("GET", "/v1/usage?since=2026-11-01&until=2026-11-30&after=1/2026-11-31&limit=5")
    assert status == 400 and "no date" in body["detail"]
    assert api.call("GET", "/v1/leases?limit=0")[0] == 422


def record_binding6(api: Api, binding: Any) -> None:
    """``binding`` written to the store, as the DHCPv6 server would, beside the running daemon."""
    import asyncio

    from ispd.store import StoreConfig, open_store

    async def write() -> None:
        store = await open_store(StoreConfig(path=api.ispd.workdir / "ispd.db"))
        try:
            await store.record_leases6([(binding, "granted")])
        finally:
            await store.close()

    asyncio.run(write())


def test_dhcp6_bindings_are_listed_and_shown_with_their_history(api: Api) -> None:
    from ispd.store.models import Lease6, Lease6Kind, LeaseState

    binding = Lease6("2001:db8:100:ff00::/56", Lease6Kind.PREFIX, LeaseState.BOUND, "00:03:00:01:02:00:00:00:00:0a",
                     1, 1_800_000_000.0, 1_800_001_800.0, 4_000_000_000.0, interface_id="olt1/1/1")
    record_binding6(api, binding)
    status, body = api.call("GET", "/v1/leases6")
    assert status == 200 and [(b["prefix"], b["kind"], b["interface_id"]) for b in body] == [
        ("2001:db8:100:ff00::/56", "pd", "olt1/1/1")]
    status, body = api.call("GET", "/v1/leases6/2001:DB8:100:FF00::/56?limit=5")
    assert status == 200 and body["prefix"] == "2001:db8:100:ff00::/56" and body["lease"]["iaid"] == 1
    assert [h["event"] for h in body["history"]] == ["granted"]
    status, body = api.call("GET", "/v1/leases6/2001:db8:1::10")
    assert status == 200 and (body["prefix"], body["lease"], body["history"]) == ("2001:db8:1::10/128", None, [])
    status, body = api.call("GET", "/v1/leases6/198.18.0.1")
    assert status == 400 and "not an IPv6 address or prefix" in body["detail"]


def test_a_subscriber_shown_has_what_the_cli_s_helpdesk_view_has(api: Api) -> None:
    """Its DHCPv6 bindings, its mail aliases and since when it has its status were in `ispd
    subscriber show` (and behind the effects the API showed) but not in the API's answer."""
    from ispd.store.models import Lease6, Lease6Kind, LeaseState

    added = api.call("POST", "/v1/subscribers", {"username": "helpdesk"})[1]
    api.call("POST", "/v1/mailboxes", {"subscriber": "helpdesk", "address": "helpdesk@isp.example"})
    api.call("POST", "/v1/mail-aliases", {"subscriber": "helpdesk", "address": "hd-info@isp.example",
                                          "targets": ["helpdesk@isp.example"]})
    suspended = api.call("POST", "/v1/subscribers/helpdesk/suspend", {"reason": "unpaid"})[1]
    binding = Lease6("2001:db8:100:ee00::/56", Lease6Kind.PREFIX, LeaseState.BOUND, "00:03:00:01:02:00:00:00:00:0e",
                     1, 1_800_000_000.0, 1_800_001_800.0, 4_000_000_000.0, subscriber_id=added["id"])
    record_binding6(api, binding)
    view = api.call("GET", "/v1/subscribers/helpdesk")[1]
    assert [b["prefix"] for b in view["bindings6"]] == ["2001:db8:100:ee00::/56"], view
    assert [(a["address"], a["targets"]) for a in view["aliases"]] == [("hd-info@isp.example",
                                                                         ["helpdesk@isp.example"])], view
    assert view["status_since"] == suspended["updated_at"], view
    shown = json.loads(api.ispd.cli("subscriber", "show", "helpdesk", "--json").stdout)
    assert (shown["bindings6"], shown["aliases"], shown["status_since"]) == (
        view["bindings6"], view["aliases"], view["status_since"])


def test_a_suspension_or_closure_needs_no_body(api: Api) -> None:
    # Its one field, the reason, is optional, as the CLI's --reason: a bare POST was a 422.
    assert api.call("POST", "/v1/subscribers", {"username": "zelda"})[0] == 201
    status, suspended = api.call("POST", "/v1/subscribers/zelda/suspend")
    assert status == 200 and (suspended["status"], suspended["status_reason"]) == ("suspended", None), suspended
    status, closed = api.call("POST", "/v1/subscribers/zelda/close")
    assert status == 200 and closed["status"] == "closed", closed
    status, body = api.call("POST", "/v1/sessions/999999/disconnect")
    assert status == 503 and "RADIUS is not running" in body["detail"], body  # (not a 422 for the body)


def test_a_json_body_sent_as_a_form_says_which_header_it_needs(api: Api) -> None:
    # curl -d without -H content-type sends a form; the answer was a 422 "Input should be a valid
    # dictionary" over the very JSON sent.
    result = subprocess.run(["curl", "-sS", "-X", "POST", "--unix-socket", str(api.socket), "-w", "\\n%{http_code}",
                             "-d", json.dumps({"name": "form-plan"}), "http://ispd/v1/plans"],
                            capture_output=True, text=True, timeout=30)
    text, _, status = result.stdout.rpartition("\n")
    assert status == "415", result.stdout
    assert json.loads(text)["detail"] == ("send the body as JSON, with Content-Type: application/json (not "
                                          "application/x-www-form-urlencoded); with curl: -H 'content-type: "
                                          "application/json'")
    assert api.call("POST", "/v1/plans", {"name": 5})[0] == 422  # JSON, wrong: as before


def test_dns_endpoints_say_when_the_resolver_is_not_running(api: Api) -> None:
    status, body = api.call("GET", "/v1/dns/negative-trust-anchors")
    assert status == 503 and "DNS resolver is not running" in body["detail"]
    assert api.call("GET", "/v1/dns/trust-anchors") == (200, [])  # nothing tracked in this store
    # From a bug hunt: a zone with no anchor, or no domain name at all, was 200 [] as the root is
    # before its first refresh: as `ispd dns anchors --zone`, a 404 and a 400.
    assert api.call("GET", "/v1/dns/trust-anchors?zone=example.com") == (
        404, {"detail": "example.com. has no trust anchor"})
    status, body = api.call("GET", "/v1/dns/trust-anchors?zone=a..b")
    assert status == 400 and "'a..b' is not a domain name" in body["detail"], body


@pytest.mark.parametrize(("name", "detail"), [("", "the name is empty"), ("a..b", "is not a domain name")])
def test_a_negative_trust_anchor_of_a_bad_name_is_a_400(api: Api, name: str, detail: str) -> None:
    # "" was read as the root: DNSSEC validation off for every name, answered 201.
    status, body = api.call("POST", "/v1/dns/negative-trust-anchors", {"name": name})
    assert status == 400 and detail in body["detail"], body


def test_the_committed_openapi_document_is_the_one_served(api: Api) -> None:
    status, served = api.call("GET", "/openapi.json")
    assert status == 200
    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == committed, "regenerate it: .venv/bin/python -m ispd.admin.app > docs/openapi.json"
    assert {"/v1/subscribers", "/v1/who/{address}", "/v1/usage", "/v1/sessions/{session_id}/disconnect",
            "/v1/mailboxes/{address}", "/v1/mailboxes/{address}/quota", "/v1/mail-aliases",
            "/v1/mail-aliases/{address}"} <= set(served["paths"])


def test_the_errors_the_api_answers_are_in_its_openapi_document(api: Api) -> None:
    """A client generated from the document (or written from it) learns there what it may be
    answered: it listed 200 and 422 only, and each 400, 404, 409 or 503 the API answers with its
    {"detail": ...} was an undocumented status there."""
    document = api.call("GET", "/openapi.json")[1]
    api.call("POST", "/v1/subscribers", {"username": "documented"})
    for method, path, template, body in (
            ("GET", "/v1/subscribers/nobody", "/v1/subscribers/{subscriber}", None),
            ("POST", "/v1/subscribers", "/v1/subscribers", {"username": "documented"}),
            ("POST", "/v1/reservations", "/v1/reservations",
             {"subscriber": "documented", "kind": "mac", "key": "not-a-mac"}),
            ("DELETE", "/v1/reservations/999999", "/v1/reservations/{reservation_id}", None),
            ("POST", "/v1/sessions/1/coa", "/v1/sessions/{session_id}/coa", None),
            ("GET", "/v1/who/not-an-address", "/v1/who/{address}", None)):
        status, answer = api.call(method, path, body)
        assert status >= 400 and isinstance(answer["detail"], str), (path, status, answer)
        documented = document["paths"][template][method.lower()]["responses"]
        assert str(status) in documented, (method, template, status, sorted(documented))
        schema = documented[str(status)]["content"]["application/json"]["schema"]["$ref"].rpartition("/")[2]
        assert document["components"]["schemas"][schema]["properties"]["detail"]["type"] == "string"
    tcp = document["paths"]["/v1/plans"]["get"]["responses"]
    assert {"401", "413", "415", "429", "503"} <= set(tcp), sorted(tcp)


def test_a_deleted_subscriber_s_mail_is_not_handed_to_the_next_owner_of_its_address(api: Api) -> None:
    """As on the CLI: deleting a subscriber sets its Maildirs aside, and a new mailbox is not
    made over a directory left under its address."""
    root = api.ispd.workdir / "mail" / "isp.example"
    assert api.call("POST", "/v1/subscribers", {"username": "leaving"})[0] == 201
    assert api.call("POST", "/v1/mailboxes", {"subscriber": "leaving", "address": "leaving@isp.example"})[0] == 201
    (root / "leaving" / "new").mkdir(parents=True)  # its mail, as delivery made it
    (root / "leaving" / "new" / "1.msg").write_text("Subject: private\n\nfor leaving only\n")
    status, deleted = api.call("DELETE", "/v1/subscribers/leaving")
    assert status == 200 and deleted["username"] == "leaving"  # the subscriber's fields, where they were
    assert not (root / "leaving").exists() and list(root.glob("leaving~deleted-*/new/1.msg"))
    [mailbox] = deleted["mailboxes"]
    assert mailbox["address"] == "leaving@isp.example" and mailbox["mail_kept_in"] == str(
        next(root.glob("leaving~deleted-*"))) and deleted["aliases_still_naming"] == []
    assert api.call("POST", "/v1/subscribers", {"username": "next"})[0] == 201
    assert api.call("POST", "/v1/mailboxes", {"subscriber": "next", "address": "leaving@isp.example"})[0] == 201
    (root / "stale" / "new").mkdir(parents=True)  # left by hand, or by an old version
    status, body = api.call("POST", "/v1/mailboxes", {"subscriber": "next", "address": "stale@isp.example"})
    assert status == 409 and "move it away first" in body["detail"], body


def test_a_mailbox_deleted_says_where_its_mail_is_and_which_aliases_still_name_it(api: Api) -> None:
    """As `ispd mailbox delete`: the Maildir set aside, and each alias (any subscriber's) that
    names the mailbox, with the targets its mail reaches now; the same for a subscriber's."""
    root = api.ispd.workdir / "mail" / "isp.example"
    for username in ("staff", "biz", "temp-worker"):
        assert api.call("POST", "/v1/subscribers", {"username": username})[0] == 201
    for owner, local in (("staff", "temp"), ("staff", "keep"), ("temp-worker", "seasonal")):
        assert api.call("POST", "/v1/mailboxes", {"subscriber": owner, "address": f"{local}@isp.example"})[0] == 201
    (root / "temp" / "new").mkdir(parents=True)
    (root / "temp" / "new" / "1.msg").write_text("Subject: x\n\nfor temp\n")
    status, team = api.call("POST", "/v1/mail-aliases", {
        "subscriber": "biz", "address": "Team@ISP.example",
        "targets": ["temp@isp.example", "keep@isp.example", "Owner+ispd@Elsewhere.example"]})
    assert status == 201 and (team["address"], team["targets"]) == (
        "team@isp.example", ["temp@isp.example", "keep@isp.example", "Owner+ispd@elsewhere.example"])
    for address, targets in (("only-temp", ["temp@isp.example"]), ("crew", ["seasonal@isp.example", "keep@isp.example"])):
        assert api.call("POST", "/v1/mail-aliases", {"subscriber": "biz", "address": f"{address}@isp.example",
                                                     "targets": targets})[0] == 201
    listed = api.call("GET", "/v1/mail-aliases?subscriber=biz")[1]
    assert [a["address"] for a in listed] == ["crew@isp.example", "only-temp@isp.example", "team@isp.example"]
    assert api.call("GET", "/v1/mail-aliases?subscriber=staff") == (200, [])

    status, deleted = api.call("DELETE", "/v1/mailboxes/TEMP@isp.example")
    assert status == 200 and deleted["address"] == "temp@isp.example"
    assert not (root / "temp").exists() and deleted["mail_kept_in"] == str(next(root.glob("temp~deleted-*")))
    assert deleted["aliases_still_naming"] == [
        {"address": "only-temp@isp.example", "subscriber_id": team["subscriber_id"],
         "gone_targets": ["temp@isp.example"], "remaining_targets": []},
        {"address": "team@isp.example", "subscriber_id": team["subscriber_id"], "gone_targets": ["temp@isp.example"],
         "remaining_targets": ["keep@isp.example", "Owner+ispd@elsewhere.example"]}]
    assert api.call("DELETE", "/v1/mailboxes/temp@isp.example") == (404, {"detail": "no mailbox temp@isp.example"})
    status, deleted = api.call("DELETE", "/v1/mailboxes/keep@isp.example")  # no mail on disk: nothing set aside
    assert status == 200 and deleted["mail_kept_in"] is None
    assert [(a["address"], a["gone_targets"], a["remaining_targets"]) for a in deleted["aliases_still_naming"]] == [
        ("crew@isp.example", ["keep@isp.example"], ["seasonal@isp.example"]),
        ("team@isp.example", ["keep@isp.example"], ["temp@isp.example", "Owner+ispd@elsewhere.example"])]
    # A subscriber's deletion says the same for its mailboxes.
    status, deleted = api.call("DELETE", "/v1/subscribers/temp-worker")
    assert status == 200 and [m["address"] for m in deleted["mailboxes"]] == ["seasonal@isp.example"]
    assert deleted["aliases_still_naming"] == [{"address": "crew@isp.example", "subscriber_id": team["subscriber_id"],
                                                "gone_targets": ["seasonal@isp.example"],
                                                "remaining_targets": ["keep@isp.example"]}]
    status, gone = api.call("DELETE", "/v1/mail-aliases/Only-Temp@isp.example")
    assert status == 200 and gone["address"] == "only-temp@isp.example"
    assert api.call("DELETE", "/v1/mail-aliases/only-temp@isp.example") == (404, {"detail": "no alias only-temp@isp.example"})
    assert api.call("DELETE", "/v1/mailboxes/not%20an%20address")[0] == 400
    audit = api.call("GET", "/v1/subscribers/biz")[1]["audit"]
    assert [(a["action"], a["actor"]) for a in audit][:1] == [("mail_alias.deleted", "api:local")]


def test_mail_aliases_are_checked_as_on_the_cli(api: Api) -> None:
    assert api.call("POST", "/v1/subscribers", {"username": "shop"})[0] == 201
    assert api.call("POST", "/v1/mailboxes", {"subscriber": "shop", "address": "sales@isp.example"})[0] == 201

    def refused(address: str, targets: list[str], subscriber: str = "shop") -> tuple[int, str]:
        status, body = api.call("POST", "/v1/mail-aliases",
                                {"subscriber": subscriber, "address": address, "targets": targets})
        return status, body["detail"]

    status, detail = refused("info@elsewhere.example", ["sales@isp.example"])
    assert status == 400 and detail == ("info@elsewhere.example: elsewhere.example is not one of the mail domains "
                                        "([mail] domains: isp.example)")
    status, detail = refused("info@isp.example", ["ghost@isp.example"])
    assert status == 404 and "no mailbox ghost@isp.example" in detail
    status, detail = refused("sales@isp.example", ["someone@elsewhere.example"])
    assert status == 409 and "is a mailbox" in detail
    assert refused("info@isp.example", ["sales@isp.example"], subscriber="nobody")[0] == 404
    status, detail = refused("info@isp.example", [])
    assert status == 400 and "1 to 50 targets" in detail
    assert refused("info@isp.example", ["info@isp.example"])[0] in (400, 404)  # not its own target
    assert refused("in fo@isp.example", ["sales@isp.example"])[0] == 400
    assert refused("info@isp.example", ["not-an-address"])[0] == 400
    assert api.call("POST", "/v1/mail-aliases", {"subscriber": "shop", "address": "info@isp.example",
                                                 "targets": "sales@isp.example"})[0] == 422  # a list
    assert api.call("POST", "/v1/mail-aliases", {"subscriber": "shop", "address": "info@isp.example",
                                                 "targets": ["sales@isp.example"]})[0] == 201
    status, detail = refused("info@isp.example", ["sales@isp.example"])
    assert status == 409 and "is an alias" in detail
    status, body = api.call("POST", "/v1/mailboxes", {"subscriber": "shop", "address": "info@isp.example"})
    assert status == 409 and "is an alias" in body["detail"]
    assert api.call("DELETE", "/v1/mail-aliases/nothing@isp.example")[0] == 404


def test_a_mailbox_quota_is_read_and_set_as_on_the_cli(api: Api) -> None:
    assert api.call("POST", "/v1/plans", {"name": "mail-1k", "mail_quota_bytes": 1000})[0] == 201
    assert api.call("POST", "/v1/subscribers", {"username": "quota-user", "plan": "mail-1k"})[0] == 201
    assert api.call("POST", "/v1/mailboxes", {"subscriber": "quota-user", "address": "q@isp.example"})[0] == 201
    maildir = api.ispd.workdir / "mail" / "isp.example" / "q"
    for sub in ("tmp", "new", "cur"):  # as the first delivery makes it
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.msg").write_bytes(b"x" * 300)
    assert api.call("GET", "/v1/mailboxes/Q@isp.example/quota") == (200, {
        "address": "q@isp.example", "used_bytes": 300, "messages": 1, "quota_bytes": 1000, "quota_from": "plan"})
    status, body = api.call("PUT", "/v1/mailboxes/q@isp.example/quota", {"quota_bytes": 5000})
    assert status == 200 and (body["quota_bytes"], body["quota_from"], body["used_bytes"]) == (5000, "mailbox", 300)
    assert api.call("GET", "/v1/mailboxes?subscriber=quota-user")[1][0]["quota_bytes"] == 5000
    status, body = api.call("PUT", "/v1/mailboxes/q@isp.example/quota", {"quota_bytes": None})  # the plan's again
    assert status == 200 and (body["quota_bytes"], body["quota_from"]) == (1000, "plan")
    assert api.call("PUT", "/v1/mailboxes/q@isp.example/quota", {"quota_bytes": 0})[0] == 422
    assert api.call("PUT", "/v1/mailboxes/q@isp.example/quota", {})[0] == 422  # null must be said
    assert api.call("PUT", "/v1/mailboxes/nobody@isp.example/quota", {"quota_bytes": 10}) == (
        404, {"detail": "no mailbox nobody@isp.example"})
    assert api.call("GET", "/v1/mailboxes/nobody@isp.example/quota") == (
        404, {"detail": "no mailbox nobody@isp.example"})
    assert api.call("GET", "/v1/mailboxes/no-at-sign/quota")[0] == 400
    audit = api.call("GET", "/v1/subscribers/quota-user")[1]["audit"]
    assert [(a["action"], a["actor"]) for a in audit][:2] == [("mailbox.quota_changed", "api:local")] * 2
