"""Full DHCPv6 exchanges (SOLICIT-ADVERTISE-REQUEST-REPLY) per second: ispd against kea-dhcp6.

The DHCPv6 counterpart of bench/dhcp.py, run the same way. Both servers run alone in a network
namespace ("server", 2001:db8:1::1/64), joined by a veth pair to a "client" namespace where
perfdhcp -6 plays one relay agent (-A1) with its address 2001:db8:2::1 on the subscribers' link:
it sends Relay-forward messages to 2001:db8:1::1 with that link-address, which selects the served
link 2001:db8:2::/64 (as a BNG relays for its access link). Every client asks for an address and a
delegated prefix together (-e address-and-prefix: IA_NA and IA_PD in one message, as a home
router does): addresses from 2001:db8:2::10:0 - 2001:db8:2::1f:ffff, /56 prefixes from
2001:db8:1000::/36, preferred 3600 s, valid 7200 s. Each offered rate is one step with a fresh
server and a fresh, empty lease store; perfdhcp simulates --clients distinct clients (DUIDs) in
sequence, so every exchange is two new bindings: a step lasts --duration seconds or
--clients/rate, whichever is shorter.

"SARR/s" is the number of completed exchanges (Replies received) divided by the step's period;
"lost" counts the exchanges begun (Solicits sent) that never got their Reply within perfdhcp's
1 s drop time; "avg/max ms" are the delays of single replies (Advertise or Reply). The whole run
is repeated --repeat times and each step keeps its best round. Durability differs as in
bench/dhcp.py: ispd commits both bindings to its store (fsync, group commit) before it sends the
Reply; Kea's memfile backend ("persist": true) appends them to its CSV file with write() before
the Reply, without fsync.

On a machine with two cores or more, perfdhcp is pinned to the last core and the server to the
others. Needs root, kea-dhcp6 and perfdhcp (tools/setup --bench installs them). Only the two
namespaces (ispd6-server-*, ispd6-client-*) and a directory under --dir are created; both go at
exit, also on an error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/dhcp6.py [--quick] [--rates 1000,2000,4000] [--duration 12] [--repeat 2]
                                    [--clients 60000] [--only ispd|kea] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import atexit
import csv
import ipaddress
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    ISPD,
    ISPD_CONFIG_HEAD,
    PERFDHCP,
    IspdInNetns,
    KeaInNetns,
    NetnsServer,
    PerfdhcpLoad,
    Step,
    add_perfdhcp_arguments,
    filesystem,
    keep_or_remove,
    machine_summary,
    measure_step,
    perfdhcp_plan,
    print_report,
    require,
    run_rounds,
    split_cpus,
    stop_all,
    stop_all_on_exit,
)
from tests.lab.dhcp6clients import veth6  # noqa: E402
from tests.lab.kea6 import KEA_DHCP6, Subnet6, kea6_config  # noqa: E402
from tests.lab.netns import Lab  # noqa: E402

SERVER_ADDRESS, RELAY_ADDRESS = "2001:db8:1::1", "2001:db8:2::1"
SERVER_LINK, CLIENT_LINK = "2001:db8:1::/64", "2001:db8:2::/64"
POOL_FIRST, POOL_LAST = "2001:db8:2::10:0", "2001:db8:2::1f:ffff"
PD_PREFIX, DELEGATED_LENGTH = "2001:db8:1000::/36", 56
# --clients must not exceed either pool, or it runs dry and the step measures refusals
POOL_SIZE = min(int(ipaddress.ip_address(POOL_LAST)) - int(ipaddress.ip_address(POOL_FIRST)) + 1,
                1 << (DELEGATED_LENGTH - ipaddress.ip_network(PD_PREFIX).prefixlen))
DNS_SERVER, DOMAIN = "2001:db8:1::53", "bench.example"
PREFERRED, VALID, RENEW, REBIND = 3600, 7200, 1800, 2880
LOAD = PerfdhcpLoad(("-6", "-A", "1", "-e", "address-and-prefix"), SERVER_ADDRESS,
                    ("SOLICIT-ADVERTISE", "REQUEST-REPLY"), "SARR", ipv6=True)

ISPD_CONFIG = ISPD_CONFIG_HEAD + """\
[dhcp6]
enabled = true
interfaces = ["{interface}"]
preferred_lifetime_seconds = {preferred}
valid_lifetime_seconds = {valid}
renew_seconds = {renew}
rebind_seconds = {rebind}
dns_servers = ["{dns}"]
domain_search = ["{domain}"]
[[dhcp6.subnet]]
name = "bench"
prefix = "{link}"
[[dhcp6.subnet.pool]]
name = "bench-hosts"
range = "{first} - {last}"
[[dhcp6.subnet.prefix_pool]]
name = "bench-homes"
prefix = "{pd_prefix}"
delegated_length = {delegated_length}
"""


# --- the servers


class Ispd(IspdInNetns):
    port = 547

    def config_text(self) -> str:
        return ISPD_CONFIG.format(
            workdir=self.workdir, metrics_port=self.metrics_port, interface=self.interface, preferred=PREFERRED,
            valid=VALID, renew=RENEW, rebind=REBIND, dns=DNS_SERVER, domain=DOMAIN, link=CLIENT_LINK,
            first=POOL_FIRST, last=POOL_LAST, pd_prefix=PD_PREFIX, delegated_length=DELEGATED_LENGTH)

    def persisted_leases(self) -> int | None:
        """Bound bindings in the store (an address and a prefix per exchange)."""
        leases = self.bound_leases()
        if leases is None:
            return None
        return len({lease["prefix"] for lease in leases if lease.get("service") == "dhcp6"})


class Kea(KeaInNetns):
    label, binary, port = "kea-dhcp6", KEA_DHCP6, 547

    def config(self) -> dict[str, Any]:
        link = Subnet6(subnet=CLIENT_LINK, pool=f"{POOL_FIRST}-{POOL_LAST}", pd_prefix=PD_PREFIX,
                       delegated_len=DELEGATED_LENGTH)  # no interface: chosen by the relay's link-address
        # Kea listens on link-local addresses and ff02::1:2 only unless given the address the
        # relay sends to. Warnings only: Kea logs every lease at INFO, which would cost it dearly.
        config = kea6_config(self.workdir, self.interface, [link], dns_servers=[DNS_SERVER], domain_search=[DOMAIN],
                             renew=RENEW, rebind=REBIND, preferred=PREFERRED, valid=VALID, unicast=SERVER_ADDRESS,
                             log_severity="WARN")
        config["Dhcp6"]["multi-threading"] = self.multi_threading()
        return config

    def extra_logs(self) -> list[Path]:
        return [self.workdir / "kea6.log"]

    def persisted_leases(self) -> int | None:
        """Addresses and prefixes leased in the lease file (a row is appended per change)."""
        path = self.workdir / "leases6.csv"
        if not path.exists():
            return 0
        with path.open() as f:
            latest = {f"{row['address']}/{row['prefix_len']}": row for row in csv.DictReader(f)}
        return sum(1 for row in latest.values() if row["valid_lifetime"] != "0")


SERVERS: dict[str, type[NetnsServer]] = {"kea": Kea, "ispd": Ispd}
LABELS = {name: kind.label for name, kind in SERVERS.items()}


# --- running it all


def route(ns: str, network: str, interface: str) -> None:
    subprocess.run(["ip", "-n", ns, "-6", "route", "add", network, "dev", interface], check=True,
                   capture_output=True, text=True)


def preflight(names: list[str]) -> None:
    problems = []
    if "kea" in names and not Path(KEA_DHCP6).exists():
        problems.append(f"{KEA_DHCP6} not found")
    if "ispd" in names and not Path(ISPD).exists():
        problems.append(f"{ISPD} not found (run with the project's .venv/bin/python)")
    require("bench/dhcp6.py", problems, ("ip", "ss", "taskset", PERFDHCP))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_perfdhcp_arguments(parser, list(SERVERS), POOL_SIZE)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # the table between progress lines

    rates, duration = perfdhcp_plan(parser, args, POOL_SIZE)
    names = [args.only] if args.only else ["kea", "ispd"]
    Kea.threads = args.kea_threads
    preflight(names)

    cpus, pinning = split_cpus(args.no_pin, "server", "perfdhcp")

    lab = Lab(prefix="ispd6")
    atexit.register(lab.close)  # registered first, runs last: after the servers are stopped
    stop_all_on_exit()

    root = Path(tempfile.mkdtemp(prefix="ispd-bench-dhcp6-", dir=args.dir))
    try:
        server_ns, client_ns = lab.namespace("server"), lab.namespace("client")
        # The relay's end has its address on the subscribers' link (as a BNG's access side), not
        # on the server's: each side reaches the other's prefix over the veth.
        link = veth6(lab, server_ns, client_ns, a_address=f"{SERVER_ADDRESS}/64", b_address=f"{RELAY_ADDRESS}/64",
                     names=("s6", "r6"))
        route(server_ns, CLIENT_LINK, link.a_end)
        route(client_ns, SERVER_LINK, link.b_end)
        load = PerfdhcpLoad((*LOAD.arguments, "-l", link.b_end), LOAD.target, LOAD.pairs, LOAD.unit, LOAD.ipv6)

        print("DHCPv6 SARR exchanges/s (IA_NA + IA_PD): ispd vs kea-dhcp6, driven by perfdhcp -6 as a relay agent")
        loadavg = os.getloadavg()[0]
        print(f"machine: {machine_summary()}; {pinning}; load average {loadavg:.2f} at start"
              + (" (busy: expect noise)" if loadavg > 0.5 else ""))
        print(f"kea-dhcp6 {Kea.version()}: memfile, persist true (write() per Reply, no fsync), lfc off, "
              f"{'single-threaded' if not args.kea_threads else f'{args.kea_threads} threads'}")
        print("ispd: both bindings committed durably to its store (fsync, group commit) before the Reply is sent")
        print(f"perfdhcp: one relay agent, link-address {RELAY_ADDRESS} -> {SERVER_ADDRESS}, an address and a /"
              f"{DELEGATED_LENGTH} per client, multi-threaded; receive buffers: the kernel's default for perfdhcp "
              "and Kea, 2 MB for ispd (it asks for that)")
        print(f"steps: {duration:g} s or {args.clients:,} clients/rate, whichever is shorter; fresh server "
              f"and store per step; lease stores on {filesystem(root)} ({root})")
        print()

        def measure(name: str, rate: int) -> Step:
            return measure_step(SERVERS[name], lab, server_ns, client_ns, link.a_end, root, load, rate, duration,
                                args.clients, cpus, args.keep)

        results, failed = run_rounds(names, LABELS, rates, args.repeat, load.unit, measure, stored_per_exchange=2)
        print_report(rates, names, LABELS, results, failed, load.unit, args.json)
    finally:
        stop_all()
        lab.close()
        keep_or_remove(root, args.keep)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
