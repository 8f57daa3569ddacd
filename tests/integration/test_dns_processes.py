"""DNS in two processes (``[dns] processes = 2``), as an operator runs it: one resolver to its
clients and to the operator over the lab's DNS hierarchy. The worker shares every listener (UDP,
TCP, DoT, DoQ), carries its share of the queries, and its figures are in the one /metrics; cache
flushes reach it; it is replaced when it dies; a reload reaches it; it stops with the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from ispd.control import control_request
from tests.lab.certs import Certificates, issue
from tests.lab.dhcpclients import Dhclient, DHCPIspd, client_link
from tests.lab.dnshier import DNSHierarchy
from tests.lab.dnsispd import DNSIspd, dig_in_netns, dns_section, rdatas
from tests.lab.netns import lab
from tests.lab.ports import free_port
from tests.lab.process import base_config, eventually
from tests.lab.quicclient import doq_exchange

PORTAL = "198.18.0.10"
LOCAL = [f"portal.isp.test. 300 A {PORTAL}"]
ASKS = 64  # queries, each from a socket of its own: the kernel spreads them by source port


def ask_from_many_ports(port: int, name: str, count: int = ASKS) -> list[dns.message.Message]:
    replies = []
    for _ in range(count):
        query = dns.message.make_query(name, "A")
        replies.append(dns.query.udp(query, "127.0.0.1", port=port, timeout=5))
    return replies


def addresses(reply: dns.message.Message) -> set[str]:
    return {item.address for rrset in reply.answer for item in rrset if hasattr(item, "address")}


def worker_metric(ispd: DNSIspd, name: str, labels: str) -> float:
    """One series straight from the worker's control socket, not through the main process."""
    text = asyncio.run(control_request(Path(f"{ispd.config['daemon']['control_socket']}.dns.2"),
                                       "worker.metrics", None))
    for line in str(text).splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return issue(tmp_path / "certs", "dns.isp.test")


def two_processes(dns_hierarchy: DNSHierarchy, tmp_path: Path, certs: Certificates) -> DNSIspd:
    tls = {"certificate": str(certs.certificate), "private_key": str(certs.private_key)}
    return DNSIspd(tmp_path / "ispd", dns_hierarchy, processes=2, local_records=LOCAL,
                   dot={"listen": [f"127.0.0.1:{free_port(kinds=(socket.SOCK_STREAM,))}"], **tls},
                   doq={"listen": [f"127.0.0.1:{free_port(kinds=(socket.SOCK_DGRAM,))}"], **tls})


@pytest.fixture
def resolver(dns_hierarchy: DNSHierarchy, tmp_path: Path, certs: Certificates) -> Iterator[DNSIspd]:
    with two_processes(dns_hierarchy, tmp_path, certs) as ispd:
        ispd.start()
        yield ispd
        ispd.assert_healthy()


def test_two_processes_answer_as_one_resolver(resolver: DNSIspd, certs: Certificates) -> None:
    [worker] = resolver.worker_pids(instance=2)
    assert worker != (resolver.proc.pid if resolver.proc else None)
    # Local data, from many source ports: every one answered, and the worker took a share.
    replies = ask_from_many_ports(resolver.port, "portal.isp.test")
    assert all(addresses(reply) == {PORTAL} for reply in replies)
    in_worker = worker_metric(resolver, "ispd_dns_queries_total", '{type="A"}')
    assert 0 < in_worker < ASKS
    # /metrics: each family once, the two processes' counts added up.
    _, text = resolver.http_get("/metrics")
    assert text.count("# TYPE ispd_dns_queries_total counter") == 1
    assert resolver.metric("ispd_dns_queries_total", {"type": "A"}) == ASKS
    assert resolver.metric("ispd_dns_processes") == 2
    # Iteration from the lab's root in both; a flush empties both caches.
    resolved = ask_from_many_ports(resolver.port, "www.example-a.test")
    assert len({frozenset(addresses(reply)) for reply in resolved}) == 1 and addresses(resolved[0])
    dump = resolver.cli("dns", "cache", "dump", "example-a.test").stdout.splitlines()
    assert "; of the main process only: each of the 2 DNS processes has caches of its own" in dump
    assert any(line.startswith("www.example-a.test. ") for line in dump)
    out = resolver.cli("dns", "cache", "flush", "www.example-a.test").stdout
    assert out.strip().endswith(", 2 answers"), out  # one kept answer in each process
    # TCP, DoT and DoQ on the shared listeners.
    assert rdatas(resolver.dig("portal.isp.test", "A", "+tcp")) == {PORTAL}
    context = ssl.create_default_context(cafile=str(certs.ca))
    dot = resolver.config["dns"]["dot"]["listen"][0]
    host, port = dot.rsplit(":", 1)
    reply = dns.query.tls(dns.message.make_query("portal.isp.test", "A"), host, port=int(port), timeout=5,
                          ssl_context=context, server_hostname="dns.isp.test")
    assert addresses(reply) == {PORTAL}
    doq = resolver.config["dns"]["doq"]["listen"][0]
    host, port = doq.rsplit(":", 1)
    query = dns.message.make_query("portal.isp.test", "A")
    query.id = 0  # RFC 9250 §4.2.1
    [wire] = asyncio.run(doq_exchange(host, int(port), [query.to_wire()], cafile=str(certs.ca),
                                      server_name="dns.isp.test"))
    assert addresses(dns.message.from_wire(wire)) == {PORTAL}
    status, _ = resolver.http_get("/healthz")
    assert status == 200


def test_a_worker_that_dies_is_replaced_on_the_config_and_state_the_first_runs(resolver: DNSIspd) -> None:
    A = {"type": "A"}
    ask_from_many_ports(resolver.port, "portal.isp.test")
    assert resolver.metric("ispd_dns_queries_total", A) == ASKS
    resolver.cli("dns", "nta", "add", "example-a.test")  # a runtime anchor: the replacement must get it
    # An edit the operator has not applied yet (it would need a restart): not for the new worker.
    edited = dict(resolver.config)
    edited["dns"] = {**edited["dns"], "processes": 1, "local_records": []}
    resolver.write_config(edited)
    [worker] = resolver.worker_pids(instance=2)
    os.kill(worker, signal.SIGKILL)
    eventually(lambda: not Path(f"/proc/{worker}").exists(), timeout=5)  # (what it had queued died with it)
    # Its sockets left the group with it: every client is answered by the first meanwhile.
    assert all(addresses(reply) == {PORTAL} for reply in ask_from_many_ports(resolver.port, "portal.isp.test", 16))
    status, health = resolver.http_get("/healthz")
    assert status == 503 and "process 2" in health, health
    resolver.cli("dns", "cache", "flush", "--all")  # a worker that is down starts with empty caches anyway
    # The sums never fall: Prometheus would take a fall for a reset and count everything again.
    assert resolver.metric("ispd_dns_queries_total", A) == ASKS + 16
    replaced = eventually(lambda: [pid for pid in resolver.worker_pids(instance=2) if pid != worker], timeout=15)
    assert len(replaced) == 1
    eventually(lambda: resolver.http_get("/healthz")[0] == 200, timeout=15)
    assert resolver.metric("ispd_dns_queries_total", A) == ASKS + 16
    # It runs what the first runs (the records the file no longer has), with the runtime anchor.
    assert all(addresses(reply) == {PORTAL} for reply in ask_from_many_ports(resolver.port, "portal.isp.test"))
    assert worker_metric(resolver, "ispd_dns_queries_total", '{type="A"}') > 0
    assert resolver.metric("ispd_dns_queries_total", A) == 2 * ASKS + 16
    assert resolver.metric("ispd_dns_processes") == 2
    assert worker_metric(resolver, "ispd_dns_dnssec_negative_trust_anchors", "") == 1
    resolver.cli("dns", "nta", "delete", "example-a.test")  # fails unless every process has it
    assert worker_metric(resolver, "ispd_dns_dnssec_negative_trust_anchors", "") == 0
    assert [event["worker"] for event in resolver.log_events("worker.exited")] == ["dns.2"]
    resolver.write_config()  # as it runs, for the fixture's last look


RPZ_ORIGIN = "rpz.isp.test"
RPZ_HEAD = "$TTL 300\n@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 60\n@ NS localhost.\n"
CORP_ZONE = """$TTL 300
@ SOA ns.corp.isp.test. hostmaster.corp.isp.test. 1 3600 600 86400 60
@ NS ns
ns A 198.18.0.2
host A {}
"""


def test_a_restarted_worker_loads_what_the_first_loaded_not_the_files_on_disk(
        dns_hierarchy: DNSHierarchy, tmp_path: Path, certs: Certificates) -> None:
    """Policy and local zones, certificate and key: a worker that restarts gets the contents the
    first process loaded at its last good start or reload, not the files as they are now (an edit
    not yet reloaded, or one SIGHUP refused)."""
    rpz, corp = tmp_path / "policy.rpz", tmp_path / "corp.zone"
    rpz.write_text(RPZ_HEAD + "www.example-a.test CNAME .\n")
    corp.write_text(CORP_ZONE.format("198.18.0.20"))
    tls = {"certificate": str(certs.certificate), "private_key": str(certs.private_key)}
    dot_port = free_port(kinds=(socket.SOCK_STREAM,))
    with DNSIspd(tmp_path / "ispd", dns_hierarchy, processes=2, local_records=LOCAL,
                 policy_zone=[{"name": RPZ_ORIGIN, "file": str(rpz)}],
                 local_zone=[{"name": "corp.isp.test", "file": str(corp)}],
                 dot={"listen": [f"127.0.0.1:{dot_port}"], **tls}) as resolver:
        resolver.start()

        def answers_as_loaded() -> None:  # by every process: the kernel spreads the source ports
            blocked = ask_from_many_ports(resolver.port, "www.example-a.test")
            assert {reply.rcode() for reply in blocked} == {dns.rcode.NXDOMAIN}
            resolved = ask_from_many_ports(resolver.port, "www.example-b.example")
            assert {reply.rcode() for reply in resolved} == {dns.rcode.NOERROR}
            assert all(addresses(reply) for reply in resolved)
            local = ask_from_many_ports(resolver.port, "host.corp.isp.test")
            assert all(addresses(reply) == {"198.18.0.20"} for reply in local)
            context = ssl.create_default_context(cafile=str(certs.ca))
            for _ in range(16):  # each connection from a port of its own
                reply = dns.query.tls(dns.message.make_query("portal.isp.test", "A"), "127.0.0.1", port=dot_port,
                                      timeout=5, ssl_context=context, server_hostname="dns.isp.test")
                assert addresses(reply) == {PORTAL}

        def replace_worker() -> None:
            [worker] = resolver.worker_pids(instance=2)
            os.kill(worker, signal.SIGKILL)
            eventually(lambda: [pid for pid in resolver.worker_pids(instance=2) if pid != worker], timeout=20)
            eventually(lambda: resolver.http_get("/healthz")[0] == 200, timeout=20)

        answers_as_loaded()
        assert worker_metric(resolver, "ispd_dns_queries_total", '{type="A"}') > 0
        # (a) Edits not reloaded yet: the other name blocked, the host moved.
        rpz.write_text(RPZ_HEAD + "www.example-b.example CNAME .\n")
        corp.write_text(CORP_ZONE.format("198.18.0.21"))
        replace_worker()
        answers_as_loaded()
        # (b) Files a reload refuses: a policy zone cut short, a key that is not the certificate's
        # (a renewal half done). The first runs on; so must a worker that restarts now.
        rpz.write_text(RPZ_HEAD + "www.example-a.test CNAME .\n( broken\n")
        other = issue(tmp_path / "other", "dns.isp.test", name="other")
        key = certs.private_key.read_bytes()
        certs.private_key.write_bytes(other.private_key.read_bytes())
        resolver.reload()
        eventually(lambda: resolver.log_events("config.reload.service_refused"), timeout=10)
        replace_worker()
        answers_as_loaded()
        assert not resolver.log_events("worker.restart.failed")
        # The copies handed over are private: the key is among them.
        handed = Path(f"{resolver.config['store']['path']}.dns-files")
        assert handed.stat().st_mode & 0o777 == 0o700
        assert all(entry.stat().st_mode & 0o777 == 0o600 for entry in handed.iterdir())
        # A good reload reaches every process; the worker has compiled and switched before the
        # main process switches (not the main process alone on the new policy while it compiles).
        rpz.write_text(RPZ_HEAD + "www.example-b.example CNAME .\n")
        certs.private_key.write_bytes(key)
        before = len(resolver.log_events("dns.policy_zone.loaded"))
        resolver.reload()
        eventually(lambda: resolver.log_events("dns.reloaded"), timeout=20)
        loaded = resolver.log_events("dns.policy_zone.loaded")[before:]
        assert [event.get("worker") for event in loaded] == ["dns.2", None], loaded
        resolved = ask_from_many_ports(resolver.port, "www.example-a.test")
        assert {reply.rcode() for reply in resolved} == {dns.rcode.NOERROR}
        blocked = ask_from_many_ports(resolver.port, "www.example-b.example")
        assert {reply.rcode() for reply in blocked} == {dns.rcode.NXDOMAIN}
        resolver.assert_healthy()


def test_a_worker_that_fails_a_flush_is_restarted_and_the_flush_still_done(resolver: DNSIspd) -> None:
    [stuck] = resolver.worker_pids(instance=2)
    os.kill(stuck, signal.SIGSTOP)  # it cannot answer the flush (nor anything else)
    try:
        out = resolver.cli("dns", "cache", "flush", "--all").stdout  # waits for it, at most 15 s
        assert out.startswith("flushed the caches"), out
        [restarting] = resolver.log_events("worker.restarting")
        assert restarting["worker"] == "dns.2" and "dns.cache.flush failed there" in restarting["reason"]
        eventually(lambda: not Path(f"/proc/{stuck}").exists(), timeout=5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    eventually(lambda: [pid for pid in resolver.worker_pids(instance=2) if pid != stuck], timeout=15)
    eventually(lambda: resolver.http_get("/healthz")[0] == 200, timeout=15)


def test_a_refused_reload_changes_no_process(resolver: DNSIspd, tmp_path: Path) -> None:
    config = resolver.config
    config["dns"]["allow"] = ["10.0.0.0/8"]  # would refuse the tests' queries...
    config["dns"]["local_zone"] = [{"name": "broken.test", "file": str(tmp_path / "missing.zone")}]  # ...but fails
    resolver.write_config(config)
    resolver.reload()
    [refused] = resolver.log_events("config.reload.service_refused")
    assert refused["service"] == "dns"
    assert all(addresses(reply) == {PORTAL} for reply in ask_from_many_ports(resolver.port, "portal.isp.test"))


def test_a_second_daemon_cannot_join_the_listeners(resolver: DNSIspd, dns_hierarchy: DNSHierarchy,
                                                   tmp_path: Path) -> None:
    with DNSIspd(tmp_path / "second", dns_hierarchy, port=resolver.port, processes=2) as second:
        with pytest.raises(AssertionError):
            second.start(timeout=10)
        assert "Address already in use" in second.log_text()
    assert all(addresses(reply) == {PORTAL} for reply in ask_from_many_ports(resolver.port, "portal.isp.test"))


def test_a_reload_reaches_every_process_and_a_stop_ends_them(dns_hierarchy: DNSHierarchy, tmp_path: Path,
                                                             certs: Certificates) -> None:
    with two_processes(dns_hierarchy, tmp_path, certs) as resolver:
        resolver.start()
        reload_and_stop(resolver)
        # The copies handed to the workers (a private key among them) go with a clean stop, and
        # what a killed daemon left goes at the next start, with one process now too (from the
        # verification: left for good, and a new temporary directory at every start).
        handed = Path(f"{resolver.config['store']['path']}.dns-files")
        assert not handed.exists()
        handed.mkdir(mode=0o700)
        (handed / "left-by-a-killed-daemon").write_bytes(b"a private key")
        control = Path(resolver.config["daemon"]["control_socket"])
        snapshots = [control.with_name(f"{control.name}.dns.2.{suffix}") for suffix in ("config.json", "files.json")]
        for snapshot in snapshots:
            snapshot.write_text("{}")  # (the whole config, left by a killed daemon)
        config = resolver.config
        config["dns"]["processes"] = 1
        resolver.write_config(config)
        resolver.start()
        assert not handed.exists() and not any(snapshot.exists() for snapshot in snapshots)
        assert resolver.terminate() == 0


def reload_and_stop(resolver: DNSIspd) -> None:
    [worker] = resolver.worker_pids(instance=2)
    config = resolver.config
    config["dns"]["local_records"] = [*LOCAL, "new.isp.test. 300 A 198.18.0.81"]
    resolver.write_config(config)
    resolver.reload()
    assert all(addresses(reply) == {"198.18.0.81"} for reply in ask_from_many_ports(resolver.port, "new.isp.test"))
    assert worker_metric(resolver, "ispd_dns_queries_total", '{type="A"}') > 0
    # The number of processes is fixed until a restart.
    config["dns"]["processes"] = 3
    resolver.write_config(config)
    resolver.reload()
    [refused] = resolver.log_events("config.reload.service_refused")
    assert refused["service"] == "dns" and "processes needs a restart" in refused["error"]
    assert resolver.worker_pids() == [worker]
    resolver.assert_healthy()
    assert resolver.terminate() == 0
    assert not Path(f"/proc/{worker}").exists()
    assert "Traceback" not in resolver.log_text()  # (the worker's long poll for events, cut short)


def test_a_shared_listener_needs_a_fixed_port(tmp_path: Path, dns_hierarchy: DNSHierarchy) -> None:
    ispd = DNSIspd(tmp_path / "ispd", dns_hierarchy, processes=2)
    ispd.config["dns"]["listen"] = ["127.0.0.1:0"]
    ispd.write_config()
    result = ispd.cli("check-config", check=False)
    assert result.returncode != 0
    assert "port 0 (any free port) cannot be shared by 2 processes" in result.stderr + result.stdout


def test_a_lease_name_is_answered_by_every_process_until_the_release(tmp_path: Path) -> None:
    """DHCP runs in the main process; the worker learns each lease over the event bridge."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("dhclient") is None or shutil.which("dig") is None:
        pytest.skip("dhclient or dig not installed")
    server, domain = "198.18.0.1", "customers.isp.test"
    hints = tmp_path / "root.hints"  # nothing listens there: nothing leaves the lab
    hints.write_text(".  3600000  NS  A.ROOT-SERVERS.TEST.\nA.ROOT-SERVERS.TEST.  3600000  A  127.0.0.2\n")
    with lab() as built:
        server_ns, client_ns = built.namespace("mpsrv"), built.namespace("mpcli")
        server_if, client_if = client_link(built, server_ns, f"{server}/24", client_ns, "02:00:5e:12:54:01")
        dhcp = {"enabled": True, "interfaces": [server_if], "lease_seconds": 3600,
                "subnet": [{"network": "198.18.0.0/24", "interface": server_if, "routers": [server],
                            "dns_servers": [server], "domain_name": domain,
                            "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.199"}]}]}
        dns_config = dns_section(None, 53, listen=["127.0.0.1:53"], root_hints=str(hints), processes=2,
                                 lease_names={"domain": domain, "reverse_networks": ["198.18.0.0/24"], "ttl": 300})
        ispd = DHCPIspd(tmp_path, base_config(tmp_path, dhcp=dhcp, dns=dns_config), netns=server_ns)
        try:
            ispd.start()
            assert len(ispd.worker_pids(instance=2)) == 1
            name = f"laptop.{domain}."

            def answers() -> list[set[str]]:  # dig from a new source port each time
                return [rdatas(dig_in_netns(server_ns, "127.0.0.1", name, "A")) for _ in range(16)]

            assert answers() == [set()] * 16
            with Dhclient(built, client_ns, client_if, tmp_path, extra_conf='send host-name "Laptop";') as client:
                event = client.obtain()
                assert event is not None and event.bound and event.address, client.describe()
                assert answers() == [{event.address}] * 16
                assert client.release() is not None, client.describe()
                eventually(lambda: answers() == [set()] * 16, timeout=5)
            in_worker = asyncio.run(control_request(Path(f"{ispd.config['daemon']['control_socket']}.dns.2"),
                                                    "worker.metrics", None))
            assert 'ispd_dns_answers_total{rcode="NOERROR"} 0.0' not in str(in_worker)
            assert "Traceback" not in ispd.log_text()
        finally:
            ispd.kill()
