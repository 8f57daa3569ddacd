"""Locally served zones (``[dns] locally_served_zones``) in a running ispd, asked with dig: what
Unbound answers itself by default, answered here too, and what the operator configured at or
below those names still answered as configured."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.lab.dnshier import DNSHierarchy, Unbound, dig
from tests.lab.ports import free_udp_port
from tests.lab.process import IspdProcess, base_config
from tests.lab.toml import write as write_toml

OFFICE = '  local-zone: "168.192.in-addr.arpa." static\n' \
         '  local-data: "5.1.168.192.in-addr.arpa. 300 PTR printer.office.example."\n'


def _lease(config_path: Path) -> None:
    from ispd.config import load_config
    from ispd.store import open_store
    from ispd.store.models import Lease, LeaseState

    async def write() -> None:
        store = await open_store(load_config(config_path).store)
        try:
            now = time.time()
            await store.record_leases([(Lease("10.1.2.3", LeaseState.BOUND, now - 60, now + 3600,
                                              hw_address="02:00:00:00:01:01", hostname="laptop"), "granted")])
        finally:
            await store.close()

    asyncio.run(write())


def test_localhost_and_private_reverse_names_are_answered_here_and_configured_ones_as_configured(
        tmp_path: Path, dns_hierarchy: DNSHierarchy) -> None:
    """Over the lab's root, which a resolver in mode "auto" leaves its answers (it may serve these
    names: the lab's serves test.), so "all", but for test."""
    with Unbound(dns_hierarchy.root_hints_path, tmp_path / "office", extra=OFFICE) as office:
        port = free_udp_port()
        config = base_config(tmp_path, dns={
            "enabled": True, "listen": [f"127.0.0.1:{port}"], "allow": ["127.0.0.0/8"],
            "root_hints": str(dns_hierarchy.root_hints_path), "dnssec": {"validation": False},
            "resolver": {"do_ipv6": False, "do_not_query_localhost": False},  # the lab is on loopback
            "locally_served_zones": "all", "locally_served_zones_exclude": ["test."],
            "lease_names": {"domain": "customers.isp.example.", "reverse_networks": ["10.0.0.0/8"]},
            "forward_zone": [{"name": "168.192.in-addr.arpa.", "servers": [f"{office.address}@{office.port}"]}]})
        write_toml(tmp_path / "ispd.toml", config)
        _lease(tmp_path / "ispd.toml")
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start()

            def ask(name: str, qtype: str) -> tuple[str, set[str], list[tuple[str, str, int]], set[str]]:
                r = dig("127.0.0.1", name, qtype, "+dnssec", port=port)
                return (r.status, {rr.rdata for rr in r.answer},
                        [(rr.owner, rr.type, rr.ttl) for rr in r.authority], set(r.flags))

            status, rdata, _, flags = ask("localhost", "A")
            assert (status, rdata) == ("NOERROR", {"127.0.0.1"}) and "aa" in flags and "ad" not in flags
            assert ask("localhost", "AAAA")[:2] == ("NOERROR", {"::1"})
            assert ask("1.0.0.127.in-addr.arpa", "PTR")[:2] == ("NOERROR", {"localhost."})
            for name, zone in (("1.0.64.100.in-addr.arpa", "64.100.in-addr.arpa."),
                               ("1.0.168.192.in-addr.arpa.x.onion", "onion.")):
                status, rdata, authority, flags = ask(name, "PTR")
                assert (status, rdata, authority) == ("NXDOMAIN", set(), [(zone, "SOA", 10800)]) and "aa" in flags
            # The lease's reverse network, inside 10.in-addr.arpa.: the lease name, and NXDOMAIN
            # from the lease names' own zone for the rest of it.
            assert ask("3.2.1.10.in-addr.arpa", "PTR")[:2] == ("NOERROR", {"laptop.customers.isp.example."})
            assert ask("9.9.9.10.in-addr.arpa", "PTR")[0] == "NXDOMAIN"
            # The forward zone inside 168.192.in-addr.arpa.: forwarded, not NXDOMAIN here.
            assert ask("5.1.168.192.in-addr.arpa", "PTR")[:2] == ("NOERROR", {"printer.office.example."})
            assert (ispd.metric_value("ispd_dns_local_answers_total") or 0) >= 7
