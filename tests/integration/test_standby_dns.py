"""A standby that resolves while it waits (``daemon.standby_serves = ["dns"]``): two daemons on one
PostgreSQL store in one server namespace, A active (DHCP and DNS), B its standby (DNS only). A
real DHCP client (dhclient, sending a host name) gets its lease from A, and B answers dig for the
name at once: the lease's event came through the database. Events B missed (its channel cut while
a lease ended) are made good from the store when the channel is back. When A dies, B takes over
without its resolver stopping, and its DHCP serves the client.

Both daemons listen in the server namespace, A's DNS on 127.0.0.1:53 and B's on 127.0.0.2:53, as
two nodes would on their own addresses; the root hints point where nothing listens, so nothing
leaves the lab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests.lab.dhcpclients import Dhclient, DHCPIspd, client_link, set_mac
from tests.lab.dnsispd import dig_in_netns, dns_section, rdatas
from tests.lab.netns import Lab, lab
from tests.lab.postgresql import PostgresCluster
from tests.lab.process import base_config, eventually

psycopg = pytest.importorskip("psycopg")

SERVER = "198.18.0.1"
DOMAIN = "customers.isp.example"
NAME = f"laptop.{DOMAIN}."
A_DNS, B_DNS = "127.0.0.1", "127.0.0.2"


@dataclass
class Pair:
    lab: Lab
    workdir: Path
    server_ns: str
    client_ns: str
    client_if: str
    url: str
    a: DHCPIspd
    b: DHCPIspd

    def ask(self, server: str, qname: str = NAME, qtype: str = "A") -> Any:
        return dig_in_netns(self.server_ns, server, qname, qtype)

    def health(self, node: DHCPIspd) -> dict[str, Any]:
        result = subprocess.run(["ip", "netns", "exec", self.server_ns, "curl", "-sS", "--max-time", "5",
                                 f"{node.metrics_url}/healthz"], capture_output=True, text=True, timeout=10)
        health: dict[str, Any] = json.loads(result.stdout)
        return health

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return list(conn.execute(query, params).fetchall())

    def explain(self, *clients: Any) -> str:
        return "\n".join([*(c.describe() for c in clients), "--- A:", *self.a.log_text().splitlines()[-30:],
                          "--- B:", *self.b.log_text().splitlines()[-30:]])


@pytest.fixture
def pair(tmp_path: Path, postgres_cluster: PostgresCluster) -> Iterator[Pair]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [tool for tool in ("dig", "dhclient", "curl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    url = postgres_cluster.create_database()
    hints = tmp_path / "root.hints"
    hints.write_text(".  3600000  NS  A.ROOT-SERVERS.TEST.\nA.ROOT-SERVERS.TEST.  3600000  A  127.0.0.9\n")
    try:
        with lab() as built:
            server_ns, client_ns = built.namespace("sbsrv"), built.namespace("sbcli")
            server_if, client_if = client_link(built, server_ns, f"{SERVER}/24", client_ns, "02:00:5e:12:53:10")

            def node(name: str, dns_address: str) -> DHCPIspd:
                workdir = tmp_path / name
                workdir.mkdir()
                dhcp = {"enabled": True, "interfaces": [server_if], "lease_seconds": 3600,
                        "subnet": [{"network": "198.18.0.0/24", "interface": server_if, "routers": [SERVER],
                                    "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.199"}]}]}
                dns = dns_section(None, 53, listen=[f"{dns_address}:53"], allow=["127.0.0.0/8", "198.18.0.0/24"],
                                  root_hints=str(hints),
                                  lease_names={"domain": DOMAIN, "reverse_networks": ["198.18.0.0/24"], "ttl": 300})
                config = base_config(workdir, store={"backend": "postgresql", "url": url}, dhcp=dhcp, dns=dns,
                                     daemon={"standby": True, "standby_serves": ["dns"]})
                return DHCPIspd(workdir, config, netns=server_ns)

            a, b = node("a", A_DNS), node("b", B_DNS)
            try:
                yield Pair(built, tmp_path, server_ns, client_ns, client_if, url, a, b)
                assert "Traceback" not in a.log_text() + b.log_text()
            finally:
                a.kill()
                b.kill()
    finally:
        postgres_cluster.drop_database(url)


def reverse(address: str) -> str:
    return IPv4Address(address).reverse_pointer + "."


def assert_published(pair: Pair, server: str, address: str) -> None:
    forward = pair.ask(server)
    assert forward.status == "NOERROR" and [(r.owner, r.rdata) for r in forward.answer] == [(NAME, address)], \
        forward.text
    ptr = pair.ask(server, reverse(address), "PTR")
    assert ptr.status == "NOERROR" and rdatas(ptr, "PTR") == {NAME}, ptr.text


def test_a_standby_resolves_the_active_node_s_leases_and_goes_on_through_a_takeover(pair: Pair) -> None:
    a, b = pair.a, pair.b
    a.start()
    b.start()
    assert b.log_events("daemon.standby"), b.log_text()
    [serving] = b.log_events("daemon.standby.serving")
    assert serving["services"] == ["metrics", "dns"], serving
    health = pair.health(b)
    assert health["status"] == "ok" and set(health["services"]) == {"daemon", "store", "metrics", "dns"}, health
    assert health["services"]["daemon"]["detail"].startswith("standby: "), health
    assert b.log_events("dhcp.started") == [] and a.log_events("dhcp.started")
    assert pair.ask(B_DNS).status == "NXDOMAIN"

    set_mac(pair.client_ns, pair.client_if, "02:00:5e:12:53:11")
    with Dhclient(pair.lab, pair.client_ns, pair.client_if, pair.workdir,
                  extra_conf='send host-name "Laptop";') as client:
        event = client.obtain()
        assert event is not None and event.bound and event.address, pair.explain(client)
        address = event.address
        assert_published(pair, A_DNS, address)
        # B heard of the lease through the database: at once (the NXDOMAIN it gave is not kept).
        eventually(lambda: pair.ask(B_DNS).status == "NOERROR", timeout=3, interval=0.1)
        assert_published(pair, B_DNS, address)

        # B's channel is cut while the lease ends (B stopped meanwhile, so it cannot take the
        # news again before it is sent): when it is back, it reads the store and drops the name.
        assert b.proc is not None
        b.signal(signal.SIGSTOP)
        try:
            cut = pair.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'"
                           " AND application_name LIKE %s", f"ispd % pid {b.proc.pid}")
            assert cut == [(True,)], cut
            assert client.release() is not None, pair.explain(client)
            eventually(lambda: pair.ask(A_DNS).status == "NXDOMAIN", timeout=5)
        finally:
            b.signal(signal.SIGCONT)
        eventually(lambda: b.log_events("dns.peer_events.reloaded"), timeout=10, interval=0.2)
        assert pair.ask(B_DNS).status == "NXDOMAIN", pair.explain(client)
        assert pair.ask(B_DNS, reverse(address), "PTR").status == "NXDOMAIN"

    with Dhclient(pair.lab, pair.client_ns, pair.client_if, pair.workdir,
                  extra_conf='send host-name "Laptop";') as client:
        event = client.obtain()
        assert event is not None and event.bound and event.address, pair.explain(client)
        address = event.address
        eventually(lambda: pair.ask(B_DNS).status == "NOERROR", timeout=3, interval=0.1)
        # A dies; B takes over, its resolver serving all along, and its DHCP now answers the client.
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        b.wait_for("READY=1", timeout=20)
        assert b.log_events("daemon.takeover"), pair.explain(client)
        assert len(b.log_events("dns.started")) == 1  # not started again
        # What A had queued for B when it died never came: B read leases and sessions again.
        eventually(lambda: len(b.log_events("dns.peer_events.reloaded")) == 2, timeout=10, interval=0.2)
        assert_published(pair, B_DNS, address)
        renewed = client.renew()
        assert renewed is not None and renewed.bound and renewed.address == address, pair.explain(client)
        health = pair.health(b)
        assert health["status"] == "ok" and "daemon" not in health["services"] and "dhcp" in health["services"], health
