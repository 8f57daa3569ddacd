"""ispd's DNS answering from local data and from DHCP: static ``local_records``, lease host names
(forward and reverse) that appear the moment a real DHCP client is bound and go when it
releases, and the walled garden for a suspended subscriber's leased address (or the address its
BNG gave its PPPoE session, known from RADIUS accounting); policy zones limited to a plan's
subscribers or to a network.

ispd (DHCP and DNS) runs in a server namespace with 198.18.0.1/24 on a veth whose other end, in a
client namespace, gets its address from ispd by DHCP; DNS queries go to 198.18.0.1:53 from the
client namespace (so their source is the leased address) or to 127.0.0.1:53 inside the server
namespace. No upstream is reachable from there: the root hints point at an address of the
server namespace where nothing listens, so nothing leaves the lab.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from tests.lab.dhcpclients import Dhclient, DHCPIspd, Udhcpc, client_link, set_mac
from tests.lab.dnshier import DigResult
from tests.lab.dnsispd import dig_in_netns, dns_section, rdatas
from tests.lab.netns import Lab, lab
from tests.lab.process import base_config, eventually
from tests.lab.radclient import radclient, require_radclient

SERVER = "198.18.0.1"
SERVER6 = "2001:db8:53::1"  # ispd's IPv6 address on the link
DOMAIN = "customers.isp.example"
PORTAL = "198.18.0.10"
WWW = "198.18.0.80"
PAY = "198.18.0.77"
LOCAL_RECORDS = [
    f"portal.isp.example. 300 A {PORTAL}",
    f"www.isp.example. 300 A {WWW}",
    "isp.example. 300 MX 10 mail.isp.example.",
    f"pay.example. 300 A {PAY}",
    f"printer.{DOMAIN}. 300 A 198.18.0.5",  # configured inside the lease domain: no lease takes it
    "games.isp.example. 300 CNAME casino.example.",  # a local chain into what the family zone blocks
]
RPZ_HEAD = "$TTL 60\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n"
FAMILY_REDIRECT = "198.18.0.99"  # the family filter's "blocked" page
SCHOOL_REDIRECT = "198.18.0.98"
SCHOOL_NETWORK = "198.18.0.64/28"


@dataclass
class Site:
    lab: Lab
    workdir: Path
    server_ns: str
    client_ns: str
    client_if: str
    ispd: DHCPIspd
    server_if: str

    def from_client(self, qname: str, qtype: str = "A", *options: str) -> DigResult:
        """A query from the client namespace (its leased address) to ispd on the veth."""
        return dig_in_netns(self.client_ns, SERVER, qname, qtype, *options)

    def from_server(self, qname: str, qtype: str = "A", *options: str) -> DigResult:
        """A query from inside the server namespace to ispd on its loopback."""
        return dig_in_netns(self.server_ns, "127.0.0.1", qname, qtype, *options)

    def explain(self, *clients: Any) -> str:
        parts = [c.describe() for c in clients]
        return "\n".join([*parts, "--- ispd.log (last 40 lines):", *self.ispd.log_text().splitlines()[-40:]])

    def published(self, event: str) -> float:
        return self.ispd.metric_in_netns("ispd_events_published_total", {"event": event}) or 0.0


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [tool for tool in ("dig", "dhclient", "udhcpc", "curl") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    workdir = tmp_path_factory.mktemp("dns-leases")

    def rpz(name: str, records: str) -> Path:
        path = workdir / f"{name}.rpz"
        path.write_text(RPZ_HEAD + records)
        return path

    hints = workdir / "root.hints"
    # Nothing listens on 127.0.0.2:53 in the server namespace: a resolution fails at once.
    hints.write_text(".  3600000  NS  A.ROOT-SERVERS.TEST.\nA.ROOT-SERVERS.TEST.  3600000  A  127.0.0.2\n")
    with lab() as built:
        server_ns, client_ns = built.namespace("dnssrv"), built.namespace("dnscli")
        server_if, client_if = client_link(built, server_ns, f"{SERVER}/24", client_ns, "02:00:5e:12:53:00")
        built.run(server_ns, "ip", "-6", "addr", "add", f"{SERVER6}/64", "dev", server_if, "nodad").check_returncode()
        dhcp = {
            "enabled": True,
            "interfaces": [server_if],
            "lease_seconds": 3600,
            "subnet": [{
                "network": "198.18.0.0/24",
                "interface": server_if,
                "routers": [SERVER],
                "dns_servers": [SERVER],
                "domain_name": DOMAIN,
                "pool": [{"name": "lan", "range": "198.18.0.100 - 198.18.0.199"}],
            }],
        }
        dns = dns_section(None, 53, listen=[f"{SERVER}:53", "127.0.0.1:53", f"[{SERVER6}]:53"],
                          allow=["198.18.0.0/24", "127.0.0.0/8", "2001:db8::/32"],
                          root_hints=str(hints), local_records=LOCAL_RECORDS,
                          lease_names={"domain": DOMAIN, "reverse_networks": ["198.18.0.0/24"], "ttl": 300},
                          walled_garden={"portal_ipv4": PORTAL, "allow": ["portal.isp.example", "pay.example"],
                                         "ttl": 30},
                          policy_zone=[{"name": "family.rpz", "file": str(rpz("family", f"casino.example A {FAMILY_REDIRECT}\n")),
                                        "plans": ["family"]},
                                       {"name": "school.rpz", "file": str(rpz("school", f"*.example A {SCHOOL_REDIRECT}\n")),
                                        "clients": [SCHOOL_NETWORK]}])
        # RADIUS accounting from a NAS inside the server namespace: the addresses it gives from
        # its own pools reach DNS only through its accounting.
        radius = {"enabled": True, "listen_auth": ["127.0.0.1:1812"], "listen_acct": ["127.0.0.1:1813"],
                  "client": [{"name": "bng", "address": "127.0.0.1", "secret": "testing123"}]}
        ispd = DHCPIspd(workdir, base_config(workdir, dhcp=dhcp, dns=dns, radius=radius), netns=server_ns)
        try:
            ispd.start()
            yield Site(built, workdir, server_ns, client_ns, client_if, ispd, server_if)
            assert ispd.proc is not None and ispd.proc.poll() is None
            assert "Traceback" not in ispd.log_text()
        finally:
            ispd.kill()


def nas_login(site: Site, user: str, password: str) -> str | None:
    """An Access-Request from the BNG in the server namespace (by then RADIUS knows the user)."""
    return radclient("127.0.0.1:1812", "auth", "testing123",
                     f'User-Name = {user}, User-Password = "{password}", Message-Authenticator = 0x00',
                     netns=site.server_ns, timeout=2).code


def nas_accounting(site: Site, user: str, status: str, addresses: str) -> str | None:
    """The BNG's accounting of ``user``'s session (one each), with ``addresses`` (attributes)."""
    return radclient("127.0.0.1:1813", "acct", "testing123",
                     f"User-Name = {user}, Acct-Session-Id = {user}-1, {addresses}, Acct-Status-Type = {status}",
                     netns=site.server_ns, timeout=2).code


def reverse(address: str) -> str:
    return IPv4Address(address).reverse_pointer + "."


def test_local_records_are_answered_authoritatively(site: Site) -> None:
    upstream = site.ispd.metric_in_netns("ispd_dns_upstream_queries_total") or 0
    for ask in (site.from_server, lambda *a: dig_in_netns(site.server_ns, SERVER, *a)):
        www = ask("www.isp.example", "A")
        assert www.status == "NOERROR" and "aa" in www.flags and rdatas(www) == {WWW}, www.text
        assert www.answer[0].ttl == 300
        mx = ask("isp.example", "MX")
        assert rdatas(mx, "MX") == {"10 mail.isp.example."}, mx.text
        nodata = ask("www.isp.example", "AAAA")  # the name is local: other types are NODATA
        assert nodata.status == "NOERROR" and not nodata.answer and "aa" in nodata.flags, nodata.text
    # Never sent upstream (which is unreachable here anyway).
    assert (site.ispd.metric_in_netns("ispd_dns_upstream_queries_total") or 0) == upstream


def restart(site: Site) -> None:
    assert site.ispd.terminate() == 0
    site.ispd.kill()
    site.ispd.start()


def test_a_leased_host_name_resolves_both_ways_until_the_release(site: Site) -> None:
    set_mac(site.client_ns, site.client_if, "02:00:5e:12:53:01")
    name = f"laptop.{DOMAIN}."
    for _ in range(2):  # asked twice: the NXDOMAIN is kept for the fast path, and must go with the lease
        assert site.from_server(name).status == "NXDOMAIN"
    with Dhclient(site.lab, site.client_ns, site.client_if, site.workdir, extra_conf='send host-name "Laptop";') \
            as client:
        event = client.obtain()
        assert event is not None and event.bound and event.address, site.explain(client)
        address = event.address

        def assert_published() -> None:
            for ask in (site.from_client, site.from_server):
                forward = ask(name, "A")
                assert forward.status == "NOERROR" and "aa" in forward.flags, forward.text
                assert [(r.owner, r.rdata) for r in forward.answer] == [(name, address)], forward.text
                assert 0 < forward.answer[0].ttl <= 300
                ptr = ask(reverse(address), "PTR")
                assert ptr.status == "NOERROR" and rdatas(ptr, "PTR") == {name}, ptr.text

        assert_published()  # right away, from the client itself and from elsewhere
        lease = site.ispd.lease_of(address)
        assert lease is not None and str(lease["hostname"]).lower() == "laptop", lease
        # A restarted ispd publishes the names of the leases in its store again, and so does a
        # reload that rebuilds the local data.
        restart(site)
        assert_published()
        config = dict(site.ispd.config)
        config["dns"] = {**config["dns"], "local_records": [*LOCAL_RECORDS, "new.isp.example. 300 A 198.18.0.81"]}
        site.ispd.write_config(config)
        site.ispd.reload()
        assert rdatas(site.from_server("new.isp.example")) == {"198.18.0.81"}
        assert_published()

        assert client.release() is not None, site.explain(client)
        eventually(lambda: site.from_server(name).status == "NXDOMAIN", timeout=5)
        gone = site.from_server(name)
        assert not gone.answer and [r.type for r in gone.authority] == ["SOA"], gone.text
        assert site.from_server(reverse(address), "PTR").status == "NXDOMAIN"
        # Another address of the lease network without a lease: NXDOMAIN from the local reverse
        # zone, not a question for the Internet.
        assert site.from_server(reverse("198.18.0.250"), "PTR").status == "NXDOMAIN"


def test_a_host_name_that_names_configured_data_is_not_taken_over(site: Site) -> None:
    set_mac(site.client_ns, site.client_if, "02:00:5e:12:53:03")
    with Dhclient(site.lab, site.client_ns, site.client_if, site.workdir, extra_conf='send host-name "printer";') \
            as client:
        event = client.obtain()
        assert event is not None and event.bound and event.address, site.explain(client)
        printer = site.from_server(f"printer.{DOMAIN}")
        assert [(r.owner, r.rdata) for r in printer.answer] == [(f"printer.{DOMAIN}.", "198.18.0.5")], printer.text
        assert site.from_server(reverse(event.address), "PTR").status == "NXDOMAIN"
        assert client.release() is not None, site.explain(client)


def test_a_host_name_wpad_or_isatap_is_never_published(site: Site) -> None:
    """A device named "wpad" would answer every Windows host that searches the lease domain for
    its proxy settings (WPAD name collision, MS09-008): those names are never published, as
    Windows DNS Server's global query block list has it."""
    set_mac(site.client_ns, site.client_if, "02:00:5e:12:53:0a")
    with Dhclient(site.lab, site.client_ns, site.client_if, site.workdir, extra_conf='send host-name "WPAD";') \
            as client:
        event = client.obtain()
        assert event is not None and event.bound and event.address, site.explain(client)
        wpad = site.from_client(f"wpad.{DOMAIN}")
        assert wpad.status == "NXDOMAIN" and not wpad.answer, wpad.text
        assert site.from_server(reverse(event.address), "PTR").status == "NXDOMAIN"
        assert client.release() is not None, site.explain(client)


def test_a_suspended_subscribers_queries_go_to_the_walled_garden_until_resumed(site: Site) -> None:
    mac = "02:00:5e:12:53:02"
    set_mac(site.client_ns, site.client_if, mac)
    site.ispd.cli("subscriber", "add", "carol", "--generate-password")
    site.ispd.cli("reservation", "add", "carol", "--mac", mac)
    eventually(lambda: site.published("ReservationAdded") >= 1)
    with Udhcpc(site.lab, site.client_ns, site.client_if, site.workdir) as client:
        event = client.obtain()
        assert event is not None and event.bound and event.address, site.explain(client)
        lease = site.ispd.lease_of(event.address)
        assert lease is not None and lease["subscriber_id"] is not None, lease

        assert rdatas(site.from_client("www.isp.example")) == {WWW}
        site.ispd.cli("subscriber", "suspend", "carol", "--reason", "unpaid")
        eventually(lambda: rdatas(site.from_client("www.isp.example")) == {PORTAL}, timeout=5)
        for qname in ("www.isp.example", "anything.example", f"laptop.{DOMAIN}", "isp.example"):
            walled = site.from_client(qname)
            assert walled.status == "NOERROR" and rdatas(walled) == {PORTAL}, walled.text
            assert walled.answer[0].ttl <= 30
        assert not site.from_client("www.isp.example", "AAAA").answer  # no portal_ipv6: NODATA
        # The names the garden allows resolve as usual.
        assert rdatas(site.from_client("pay.example")) == {PAY}
        assert rdatas(site.from_client("portal.isp.example")) == {PORTAL}
        # Other clients are not walled.
        assert rdatas(site.from_server("www.isp.example")) == {WWW}
        assert (site.ispd.metric_in_netns("ispd_dns_walled_garden_answers_total") or 0) >= 5
        # Still walled after a restart: suspended subscribers and their leases come from the store.
        restart(site)
        assert rdatas(site.from_client("www.isp.example")) == {PORTAL}

        site.ispd.cli("subscriber", "resume", "carol")
        eventually(lambda: rdatas(site.from_client("www.isp.example")) == {WWW}, timeout=5)
        assert site.from_client("anything.example").status == "SERVFAIL"  # no upstream here, and no portal
        assert rdatas(site.from_client("isp.example", "MX"), "MX") == {"10 mail.isp.example."}


def test_an_address_a_nas_gave_from_its_own_pool_is_walled_while_its_session_is_open(site: Site) -> None:
    require_radclient()
    address = "198.18.0.60"  # the BNG's pool, not ispd's: only its accounting tells ispd who has it
    neighbour = "198.18.0.58"  # another subscriber's address, on the same client link (no other test's)
    for own in (neighbour, address):
        site.lab.run(site.client_ns, "ip", "addr", "add", f"{own}/24", "dev", site.client_if).check_returncode()
    site.ispd.cli("subscriber", "add", "dave", "--password-stdin", input="dave-pw\n")

    def login() -> str | None:
        return nas_login(site, "dave", "dave-pw")

    def account(status: str) -> str | None:
        return nas_accounting(site, "dave", status, f"Framed-IP-Address = {address}")

    def from_dave(qname: str) -> DigResult:
        return site.from_client(qname, "A", "-b", address)

    # As a BNG does: the login first (by then RADIUS knows dave), then the session's Start.
    eventually(lambda: login() == "Access-Accept", timeout=10)
    assert account("Start") == "Accounting-Response"
    assert rdatas(from_dave("www.isp.example")) == {WWW}
    site.ispd.cli("subscriber", "suspend", "dave", "--reason", "unpaid")
    eventually(lambda: rdatas(from_dave("www.isp.example")) == {PORTAL}, timeout=5)
    # subscriber show asks the running resolver, which says it walls dave's address now.
    shown = site.ispd.cli("subscriber", "show", "dave").stdout
    assert f"  dns    done     {address}: answered from the walled garden" in shown, shown
    # Asked from another address, not dave's. (Without -b, the kernel chose the link's first
    # address: the client's DHCP lease, if it had not ended by then under a loaded machine.)
    assert rdatas(site.from_client("www.isp.example", "A", "-b", neighbour)) == {WWW}
    assert account("Stop") == "Accounting-Response"  # the address goes back to the BNG's pool
    eventually(lambda: rdatas(from_dave("www.isp.example")) == {WWW}, timeout=5)
    site.ispd.cli("subscriber", "resume", "dave")


def _lease_names_only(tmp_path: Path, reverse_networks: list[str] | None = None) -> tuple[int, dict[str, Any], Path]:
    """A config of DNS with lease names alone, written to ``tmp_path``: (its port, it, its path).
    The tests that use it write the leases to the store themselves, as another node would."""
    from tests.lab.ports import free_udp_port
    from tests.lab.toml import write as write_toml

    port = free_udp_port()
    names: dict[str, Any] = {"domain": DOMAIN}
    if reverse_networks is None or reverse_networks:
        names["reverse_networks"] = reverse_networks or ["198.18.0.0/24"]
    config = base_config(tmp_path, dns={"enabled": True, "listen": [f"127.0.0.1:{port}"], "allow": ["127.0.0.0/8"],
                                        "lease_names": names})
    path = tmp_path / "ispd.toml"
    write_toml(path, config)
    return port, config, path


def test_a_name_two_leases_claim_goes_to_the_newer_claim_after_a_restart(tmp_path: Path) -> None:
    """While running the newest claim of a name wins; the start replayed the leases by address,
    so the higher address won after a restart. Both leases in the store, the one at the lower
    address renewed (claimed the name) last."""
    import asyncio

    from ispd.config import load_config
    from ispd.store import open_store
    from ispd.store.models import Lease, LeaseState
    from tests.lab.dnshier import dig
    from tests.lab.process import IspdProcess

    port, config, path = _lease_names_only(tmp_path)

    async def leases() -> None:
        store = await open_store(load_config(path).store)
        try:
            now = __import__("time").time()
            older = Lease("198.18.0.101", LeaseState.BOUND, now - 600, now + 3000, hw_address="02:00:00:00:01:01",
                          hostname="dup")
            newer = Lease("198.18.0.100", LeaseState.BOUND, now - 900, now + 3500, hw_address="02:00:00:00:01:02",
                          hostname="dup")
            await store.record_leases([(older, "granted"), (newer, "renewed")])
        finally:
            await store.close()

    asyncio.run(leases())
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        answer = dig("127.0.0.1", f"dup.{DOMAIN}", "A", port=port)
        assert rdatas(answer) == {"198.18.0.100"}, answer.text


def test_a_name_two_leases_of_different_lengths_claim_stays_the_newer_claims_after_a_restart(tmp_path: Path) -> None:
    """The start replayed the leases in the order of their expiry, taken for the order they
    were claimed in: a laptop's hour-long lease claimed "laptop", then a suspended
    subscriber's device claimed it with a 300 s walled-garden lease and held it, and after a
    restart the name went back to the laptop (the earlier claim, which ends later)."""
    import asyncio
    import time

    from ispd.config import load_config
    from ispd.store import open_store
    from ispd.store.models import Lease, LeaseState
    from tests.lab.dnshier import dig
    from tests.lab.process import IspdProcess

    port, config, path = _lease_names_only(tmp_path)

    async def leases() -> None:
        store = await open_store(load_config(path).store)
        try:
            now = time.time()
            hour = Lease("198.18.0.100", LeaseState.BOUND, now - 60, now + 3540, hw_address="02:00:00:00:01:01",
                         hostname="laptop", pool="lan")
            await store.record_leases([(hour, "granted")])
            walled = Lease("198.18.0.200", LeaseState.BOUND, now - 30, now + 270, hw_address="02:00:00:00:01:02",
                           hostname="laptop", pool="walled")
            await store.record_leases([(walled, "granted")])
        finally:
            await store.close()

    asyncio.run(leases())
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        answer = dig("127.0.0.1", f"laptop.{DOMAIN}", "A", port=port)
        assert rdatas(answer) == {"198.18.0.200"}, answer.text
        answer = dig("127.0.0.1", reverse("198.18.0.100"), "PTR", port=port)
        assert answer.status == "NXDOMAIN", answer.text


def test_a_reload_drops_the_names_of_leases_the_store_no_longer_has(tmp_path: Path) -> None:
    """A reload carries the lease names over (so that they never answer NXDOMAIN while the
    store is read again), and then drops those the store no longer has: a lease ended where
    this daemon did not hear of it (another node's, an event missed) must not keep its name
    for good, as before the carrying over a SIGHUP cleared it (from a review)."""
    import asyncio
    import signal
    import time

    from ispd.config import load_config
    from ispd.store import open_store
    from ispd.store.models import Lease, LeaseState
    from tests.lab.dnshier import dig
    from tests.lab.process import IspdProcess

    port, config, path = _lease_names_only(tmp_path)
    now = time.time()
    bound = Lease("198.18.0.100", LeaseState.BOUND, now - 60, now + 3540, hw_address="02:00:00:00:01:01",
                  hostname="laptop", pool="lan")

    async def record(lease: Lease, event: str) -> None:
        store = await open_store(load_config(path).store)
        try:
            await store.record_leases([(lease, event)])
        finally:
            await store.close()

    asyncio.run(record(bound, "granted"))
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        assert rdatas(dig("127.0.0.1", f"laptop.{DOMAIN}", "A", port=port)) == {"198.18.0.100"}
        # Released behind this daemon's back (no event reaches it from another process).
        asyncio.run(record(Lease("198.18.0.100", LeaseState.RELEASED, now - 60, time.time(),
                                 hw_address="02:00:00:00:01:01", pool="lan"), "released"))
        assert rdatas(dig("127.0.0.1", f"laptop.{DOMAIN}", "A", port=port)) == {"198.18.0.100"}
        ispd.signal(signal.SIGHUP)
        ispd.wait_for("RELOADING=1")
        ispd.wait_for("READY=1")
        answer = dig("127.0.0.1", f"laptop.{DOMAIN}", "A", port=port)
        assert answer.status == "NXDOMAIN", answer.text
        answer = dig("127.0.0.1", reverse("198.18.0.100"), "PTR", port=port)
        assert answer.status == "NXDOMAIN", answer.text


def test_a_name_two_dhcpv6_addresses_of_different_lifetimes_claim_stays_the_newer_claims_after_a_restart(
        tmp_path: Path) -> None:
    """As for DHCPv4 leases: the start replayed the bindings in the order of their expiry, so a
    name claimed last by a binding of a link with shorter lifetimes went back, at a restart,
    to the earlier claim of a link with longer ones."""
    import asyncio
    import time

    from ispd.config import load_config
    from ispd.store import open_store
    from ispd.store.models import Lease6, Lease6Kind, LeaseState
    from tests.lab.dnshier import dig
    from tests.lab.process import IspdProcess

    port, config, path = _lease_names_only(tmp_path, reverse_networks=[])

    async def bindings() -> None:
        store = await open_store(load_config(path).store)
        try:
            now = time.time()
            day = Lease6("2001:db8:1::1000/128", Lease6Kind.ADDRESS, LeaseState.BOUND, "00:03:00:01:02:00:5e:00:00:01",
                         1, now - 60, now + 43200, now + 86340, hostname="laptop", link="office")
            await store.record_leases6([(day, "granted")])
            hour = Lease6("2001:db8:2::1000/128", Lease6Kind.ADDRESS, LeaseState.BOUND, "00:03:00:01:02:00:5e:00:00:02",
                          1, now - 30, now + 1770, now + 3570, hostname="laptop", link="cafe")
            await store.record_leases6([(hour, "granted")])
        finally:
            await store.close()

    asyncio.run(bindings())
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        answer = dig("127.0.0.1", f"laptop.{DOMAIN}", "AAAA", port=port)
        assert rdatas(answer, "AAAA") == {"2001:db8:2::1000"}, answer.text


def test_a_policy_zone_for_one_plan_applies_to_its_subscribers_addresses_only(site: Site) -> None:
    """A family filter sold as a plan option: the zone limited to plan "family" answers for the
    address a BNG gave erin's session while erin is on that plan; other clients, and erin on
    another plan, resolve as usual (here: SERVFAIL, no upstream in the lab)."""
    require_radclient()
    address, school = "198.18.0.61", "198.18.0.70"
    for added in (address, school):
        site.lab.run(site.client_ns, "ip", "addr", "add", f"{added}/24", "dev", site.client_if).check_returncode()
    site.ispd.cli("plan", "add", "family")
    site.ispd.cli("plan", "add", "basic")
    site.ispd.cli("subscriber", "add", "erin", "--plan", "family", "--password-stdin", input="erin-pw\n")

    def login() -> str | None:
        return nas_login(site, "erin", "erin-pw")

    def account(status: str) -> str | None:
        return nas_accounting(site, "erin", status, f"Framed-IP-Address = {address}")

    def filtered(source: str, qname: str = "casino.example") -> bool:
        answer = site.from_client(qname, "A", "-b", source)
        assert answer.status in ("NOERROR", "SERVFAIL"), answer.text
        return answer.status == "NOERROR" and FAMILY_REDIRECT in rdatas(answer)

    eventually(lambda: login() == "Access-Accept", timeout=10)
    assert not filtered(address)  # no session yet: nobody's address
    assert account("Start") == "Accounting-Response"
    eventually(lambda: filtered(address), timeout=5)
    for _ in range(3):  # the slow path, then the answer kept for the fast path: each client its own
        assert filtered(address)
        assert not filtered(school)
        chain = site.from_client("games.isp.example", "A", "-b", address)
        assert [r.rdata for r in chain.answer] == ["casino.example.", FAMILY_REDIRECT], chain.text
        assert site.from_client("games.isp.example", "A", "-b", school).status == "NOERROR"
        assert site.from_server("games.isp.example").status == "SERVFAIL"
    # The zone limited to a network: its clients, whoever holds the address.
    assert rdatas(site.from_client("casino.example", "A", "-b", school)) == {SCHOOL_REDIRECT}
    assert rdatas(site.from_client("homework.example", "A", "-b", school)) == {SCHOOL_REDIRECT}
    assert site.from_client("homework.example", "A", "-b", address).status == "SERVFAIL"
    shown = site.ispd.cli("subscriber", "show", "erin").stdout
    assert f"  dns    done     {address}: answered as usual; with the policy zones family.rpz" in shown, shown

    restart(site)  # the plan and the session's address come from the store
    eventually(lambda: filtered(address), timeout=5)
    site.ispd.cli("subscriber", "set-plan", "erin", "basic")
    eventually(lambda: not filtered(address), timeout=5)
    site.ispd.cli("subscriber", "set-plan", "erin", "family")
    eventually(lambda: filtered(address), timeout=5)
    assert account("Stop") == "Accounting-Response"  # the address goes back to the BNG's pool
    eventually(lambda: not filtered(address), timeout=5)
    assert "dns.policy_zone.unknown_plans" in site.ispd.log_text()  # (at the first start: no plan yet)


def test_a_suspended_subscribers_home_is_walled_over_ipv6_too(site: Site) -> None:
    """A dual-stack PPPoE home: its devices take IPv6 addresses in the session's
    Delegated-IPv6-Prefix, which only the NAS's accounting names. Asking over IPv6 from one of
    them must not go round the walled garden."""
    require_radclient()
    device = "2001:db8:100:1::5"  # in frank's delegated prefix
    # (here, not with the link: the DHCP clients of the other tests flush the client end's addresses)
    for address in ("2001:db8:53::100/64", f"{device}/64"):
        site.lab.run(site.client_ns, "ip", "-6", "addr", "replace", address, "dev", site.client_if,
                     "nodad").check_returncode()
    site.lab.run(site.server_ns, "ip", "-6", "route", "replace", "2001:db8:100::/56", "dev",
                 site.server_if).check_returncode()
    site.ispd.cli("subscriber", "add", "frank", "--password-stdin", input="frank-pw\n")

    def account(status: str) -> str | None:
        return nas_accounting(site, "frank", status, "Framed-IP-Address = 198.18.0.62, "
                              "Delegated-IPv6-Prefix = 2001:db8:100::/56, Framed-IPv6-Prefix = 2001:db8:53:1::/64")

    def from_device(qname: str) -> set[str]:
        return rdatas(dig_in_netns(site.client_ns, SERVER6, qname, "A", "-b", device))

    eventually(lambda: nas_login(site, "frank", "frank-pw") == "Access-Accept", timeout=10)
    assert account("Start") == "Accounting-Response"
    assert from_device("www.isp.example") == {WWW}
    site.ispd.cli("subscriber", "suspend", "frank", "--reason", "unpaid")
    eventually(lambda: from_device("www.isp.example") == {PORTAL}, timeout=5)
    # The client's other IPv6 address is not in frank's prefix.
    assert rdatas(dig_in_netns(site.client_ns, SERVER6, "www.isp.example", "A", "-b", "2001:db8:53::100")) == {WWW}
    shown = site.ispd.cli("subscriber", "show", "frank").stdout
    assert "  dns    done     2001:db8:100::/56: answered from the walled garden" in shown, shown
    assert account("Stop") == "Accounting-Response"
    eventually(lambda: from_device("www.isp.example") == {WWW}, timeout=5)
    site.ispd.cli("subscriber", "resume", "frank")
