"""ispd on a PostgreSQL store, as its clients see it: one daemon (RADIUS and DHCP, in a network
namespace of its own) on a database of the lab's PostgreSQL; subscribers and plans made with the
CLI; radtest and radclient as the NAS, udhcpc as a DHCP client; what they did read back with the
CLI and straight from PostgreSQL. Then the daemon's lock (one daemon per database, taken again
when the server closes its connections) and the commands that refuse a PostgreSQL store.

The daemon runs in a namespace because its DHCP server needs an interface of its own; its RADIUS
ports are on that namespace's loopback, where radtest and radclient run too. The PostgreSQL
server's unix socket is reachable from every network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.lab.dhcpclients import DHCPIspd, Udhcpc, client_link
from tests.lab.netns import Lab
from tests.lab.ports import free_tcp_port
from tests.lab.postgresql import PostgresCluster
from tests.lab.process import ISPD, IspdProcess, base_config, eventually
from tests.lab.radclient import Reply, parse, radclient, require_radclient

psycopg = pytest.importorskip("psycopg")

SECRET = "testing123"
SERVER = "198.18.0.1"
CLIENT_MAC = "02:00:5e:12:64:01"
AUTH, ACCT = "127.0.0.1:1812", "127.0.0.1:1813"  # on the namespace's own loopback
HOST_LOOPBACK = "127.64.0.1"  # for daemons run outside the namespace (refused ones)


@dataclass
class Site:
    ispd: DHCPIspd
    url: str
    workdir: Path
    lab: Lab
    server_ns: str
    client_ns: str
    client_if: str

    def radtest(self, user: str, password: str, method: str = "pap") -> Reply:
        result = subprocess.run(["ip", "netns", "exec", self.server_ns, "radtest", "-t", method, user, password,
                                 AUTH, "0", SECRET], capture_output=True, text=True, timeout=30)
        return parse(result.stdout + result.stderr)

    def accounting(self, attributes: str, *, timeout: float = 1.0) -> Reply:
        """One Accounting-Request, sent once (no retry: an answer is an answer to the first try)."""
        return radclient(ACCT, "acct", SECRET, attributes, timeout=timeout, retries=1, netns=self.server_ns)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return list(conn.execute(query, params).fetchall())


def postgresql_config(workdir: Path, url: str, **sections: dict[str, Any]) -> dict[str, Any]:
    config = base_config(workdir, store={"backend": "postgresql", "url": url}, **sections)
    config["metrics"]["listen"] = f"{HOST_LOOPBACK}:{free_tcp_port(HOST_LOOPBACK)}"
    return config


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, postgres_cluster: PostgresCluster) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    require_radclient()
    workdir = tmp_path_factory.mktemp("pgsite")
    url = postgres_cluster.create_database()
    lab = Lab(prefix="pgi")
    try:
        server_ns, client_ns = lab.namespace("srv"), lab.namespace("cli")
        server_if, client_if = client_link(lab, server_ns, f"{SERVER}/24", client_ns, CLIENT_MAC)
        dhcp = {"enabled": True, "interfaces": [server_if], "lease_seconds": 3600,
                "subnet": [{"network": "198.18.0.0/24", "interface": server_if, "routers": [SERVER],
                            "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.199"}]}]}
        radius = {"enabled": True, "listen_auth": [AUTH], "listen_acct": [ACCT], "reject_delay_seconds": 0,
                  "client": [{"name": "bng", "address": "127.0.0.1/32", "secret": SECRET, "kind": "mikrotik"}]}
        config = base_config(workdir, store={"backend": "postgresql", "url": url}, dhcp=dhcp, radius=radius)
        ispd = DHCPIspd(workdir, config, netns=server_ns)
        with ispd:
            ispd.start()
            ispd.cli("plan", "add", "home", "--download-kbps", "100000", "--upload-kbps", "20000",
                     "--credential-policy", "cleartext")
            ispd.cli("subscriber", "add", "alice", "--plan", "home", "--password-stdin", input="alice-pw\n")
            site = Site(ispd, url, workdir, lab, server_ns, client_ns, client_if)
            # The RADIUS service hears of a new subscriber at its next look at the store's events
            # (from CI: radtest right after the CLI was rejected under load).
            eventually(lambda: site.radtest("alice", "alice-pw").code == "Access-Accept", timeout=10)
            yield site
    finally:
        lab.close()
        postgres_cluster.drop_database(url)


def second_daemon(site: Site, workdir: Path) -> IspdProcess:
    """Another ``ispd run`` on the same database, with a ``path`` of its own (so that the file
    lock beside it does not decide), run until it exits (killed after 15 s: it was not refused)."""
    daemon = IspdProcess(workdir, postgresql_config(workdir, site.url))
    daemon.start(wait_ready=False)
    assert daemon.proc is not None
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.proc.wait(15)
    finally:
        daemon.kill()
    return daemon


def assert_refused_as_a_second_daemon(site: Site, daemon: IspdProcess) -> None:
    assert daemon.proc is not None and daemon.proc.returncode == 1, daemon.log_text()
    [failed] = daemon.log_events("daemon.start.failed")
    assert site.ispd.proc is not None
    assert "another ispd" in failed["error"] and "is running on" in failed["error"], failed
    assert f"pid {site.ispd.proc.pid}" in failed["error"], failed  # the first one, by its pid
    assert daemon.log_events("daemon.ready") == []
    assert "Traceback" not in daemon.log_text()


# --- what clients see ----------------------------------------------------------------------------


def test_radius_authenticates_and_accounts_on_postgresql(site: Site) -> None:
    for method in ("pap", "chap"):
        reply = site.radtest("alice", "alice-pw", method)
        assert reply.code == "Access-Accept", (method, reply.output)
        assert reply.first("Mikrotik-Rate-Limit") == "20000k/100000k", reply.output
        assert site.radtest("alice", "wrong", method).code == "Access-Reject", method

    base = "User-Name = alice, Acct-Session-Id = pg-1, NAS-IP-Address = 127.0.0.1, Framed-IP-Address = 198.18.9.9"
    assert site.accounting(f"{base}, Acct-Status-Type = Start").code == "Accounting-Response"
    assert site.accounting(f"{base}, Acct-Status-Type = Interim-Update, Acct-Input-Octets = 1000, "
                           "Acct-Output-Octets = 4000, Acct-Session-Time = 60").code == "Accounting-Response"
    assert site.accounting(f"{base}, Acct-Status-Type = Stop, Acct-Input-Octets = 2000, Acct-Output-Octets = 9000, "
                           "Acct-Session-Time = 120, Acct-Terminate-Cause = User-Request").code == "Accounting-Response"

    shown = json.loads(site.ispd.cli("subscriber", "show", "alice", "--json").stdout)
    [session] = [s for s in shown["sessions"] if s["acct_session_id"] == "pg-1"]
    assert session["terminate_cause"] == "User-Request" and session["framed_ip"] == "198.18.9.9"
    assert (session["input_octets"], session["output_octets"]) == (2000, 9000)
    assert shown["usage_this_month"] == {"input_octets": 2000, "output_octets": 9000, "session_seconds": 120}

    # In PostgreSQL itself, not in a file beside it.
    assert site.sql("SELECT status_type, input_octets FROM accounting_records WHERE acct_session_id = 'pg-1'"
                    " ORDER BY id") == [("start", None), ("interim-update", 1000), ("stop", 2000)]
    assert site.sql("SELECT input_octets, output_octets FROM radius_sessions WHERE acct_session_id = 'pg-1'") \
        == [(2000, 9000)]
    assert not (site.workdir / "ispd.db").exists()


def test_a_dhcp_client_gets_a_lease_kept_in_postgresql(site: Site) -> None:
    with Udhcpc(site.lab, site.client_ns, site.client_if, site.workdir) as client:
        event = client.obtain()
        assert event is not None and event.bound and event.address is not None, \
            f"{client.describe()}\n{site.ispd.log_text()[-4000:]}"
        address = event.address
        lease = site.ispd.lease_of(address, include_ended=False)
        assert lease is not None and lease["state"] == "bound" and lease["hw_address"] == CLIENT_MAC, lease
        held = site.ispd.cli("who", address).stdout
        assert "DHCP lease" in held and CLIENT_MAC in held, held
        assert site.sql("SELECT state, hw_address FROM leases WHERE address = %s", address) \
            == [("bound", CLIENT_MAC)]


# --- one daemon per database -------------------------------------------------------------------


def test_a_second_daemon_on_the_same_database_is_refused(site: Site, tmp_path: Path) -> None:
    assert_refused_as_a_second_daemon(site, second_daemon(site, tmp_path))


def test_connections_the_server_closed_are_replaced_and_the_lock_taken_again(site: Site, tmp_path: Path) -> None:
    before = len(site.ispd.log_events("daemon.lock.retaken"))
    terminated = site.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                          " WHERE application_name LIKE 'ispd%%' AND pid <> pg_backend_pid()")
    assert terminated and all(ok for (ok,) in terminated), terminated
    # The next request is answered at its first try: its write goes on a new connection.
    base = "User-Name = alice, Acct-Session-Id = pg-2, NAS-IP-Address = 127.0.0.1"
    reply = site.accounting(f"{base}, Acct-Status-Type = Start", timeout=3.0)
    assert reply.code == "Accounting-Response", f"{reply.output}\n{site.ispd.log_text()[-4000:]}"
    assert site.sql("SELECT count(*) FROM radius_sessions WHERE acct_session_id = 'pg-2'") == [(1,)]
    assert site.radtest("alice", "alice-pw").code == "Access-Accept"
    # Within one check of the lock (every 5 s), it is taken again.
    eventually(lambda: len(site.ispd.log_events("daemon.lock.retaken")) > before, timeout=7, interval=0.2)
    assert site.ispd.proc is not None and site.ispd.proc.poll() is None
    assert_refused_as_a_second_daemon(site, second_daemon(site, tmp_path))


def test_a_start_after_a_kill_says_the_last_daemon_did_not_stop(postgres_cluster: PostgresCluster,
                                                                 tmp_path: Path) -> None:
    """As on SQLite: the file lock beside the store's path (which a daemon on PostgreSQL takes
    too) still names a daemon that was killed, and the next start says so."""
    url = postgres_cluster.create_database()
    try:
        with IspdProcess(tmp_path, postgresql_config(tmp_path, url)) as ispd:
            ispd.start()
            assert ispd.proc is not None and ispd.log_events("daemon.unclean_stop_found") == []
            killed = ispd.proc.pid
            ispd.kill()
            ispd.start()
            assert [e["previous_pid"] for e in ispd.log_events("daemon.unclean_stop_found")] == [killed]
            assert ispd.terminate() == 0
    finally:
        postgres_cluster.drop_database(url)


# --- what refuses a PostgreSQL store -------------------------------------------------------------


def ispd_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ISPD, *args], capture_output=True, text=True, timeout=60)


def test_store_backup_refuses_a_postgresql_store(site: Site, tmp_path: Path) -> None:
    result = ispd_command("store", "backup", str(tmp_path / "copy.db"), "-c", str(site.ispd.config_path))
    assert result.returncode == 1, result
    assert "this one is on PostgreSQL" in result.stderr and "pg_dump" in result.stderr, result.stderr
    assert not (tmp_path / "copy.db").exists()


def test_check_config_names_the_missing_url(tmp_path: Path) -> None:
    from tests.lab import toml

    config = base_config(tmp_path, store={"backend": "postgresql"})
    path = tmp_path / "ispd.toml"
    toml.write(path, config)
    result = ispd_command("check-config", "-c", str(path))
    assert result.returncode != 0, result
    assert 'store: backend "postgresql" needs url' in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_server_fails_the_start_plainly(tmp_path: Path) -> None:
    url = f"postgresql://postgres@/ispd?host={tmp_path / 'no-such-dir'}&port=5432"
    with IspdProcess(tmp_path, postgresql_config(tmp_path, url)) as daemon:
        daemon.start(wait_ready=False)
        assert daemon.proc is not None
        assert daemon.proc.wait(15) == 1, daemon.log_text()
    [failed] = daemon.log_events("daemon.start.failed")
    assert failed["error"].startswith("cannot connect to the PostgreSQL store ispd on "), failed
    assert "no-such-dir" in failed["error"], failed
    assert "Traceback" not in daemon.log_text(), daemon.log_text()
