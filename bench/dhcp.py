"""Full DHCP exchanges (DISCOVER-OFFER-REQUEST-ACK) per second: ispd against kea-dhcp4.

Both servers run the same way: alone in a network namespace ("server", 198.18.0.1/24), joined by
a veth pair to a "client" namespace (198.18.0.2/24) where perfdhcp plays a relay agent: it sends
unicast to 198.18.0.1 with giaddr 198.18.0.2, and the relay address selects the served subnet
198.19.0.0/16 (pool 198.19.0.10 - 198.19.255.250, leases of 3600 s). Each offered rate is one step
with a fresh server and a fresh, empty lease store, and perfdhcp simulates --clients distinct
clients whose MACs it takes in sequence, so every exchange is a new allocation: a step lasts
--duration seconds or --clients/rate, whichever is shorter.

"DORA/s" is the number of completed exchanges (ACKs received) divided by the step's period;
"lost" counts the exchanges begun (DISCOVERs sent) that never got their ACK within perfdhcp's
1 s drop time; "avg/max ms" are the delays of single replies (OFFER or ACK). The whole run is
repeated --repeat times and each step keeps its best round, which filters out bursts of load from
elsewhere on the machine. Durability differs: ispd commits each lease to its store (fsync, group
commit) before it sends the ACK; Kea's memfile backend ("persist": true) appends each lease to its
CSV file with write() before the ACK, without fsync (that survives a crash of Kea, not of the
machine).

On a machine with two cores or more, perfdhcp is pinned to the last core and the server to the
others, so the load generator does not steal the server's CPU; "cpu" columns say how much of a
core each used. Needs root, kea-dhcp4 and perfdhcp (tools/setup --bench installs them). Only the
two namespaces (ispd-server-*, ispd-client-*) and a directory under --dir are created; both go
at exit, also on an error, Ctrl-C or SIGTERM.

    .venv/bin/python bench/dhcp.py [--quick] [--rates 1000,2000,4000] [--duration 12] [--repeat 2]
                                   [--clients 60000] [--only ispd|kea] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import os
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
from tests.lab.netns import Lab  # noqa: E402

KEA = "/usr/sbin/kea-dhcp4"

SERVER_ADDRESS, CLIENT_ADDRESS = "198.18.0.1", "198.18.0.2"
POOL_FIRST, POOL_LAST = "198.19.0.10", "198.19.255.250"
SUBNET, POOL = "198.19.0.0/16", f"{POOL_FIRST} - {POOL_LAST}"
# --clients must not exceed the pool, or it runs dry and the step measures refusals
POOL_SIZE = int(ipaddress.ip_address(POOL_LAST)) - int(ipaddress.ip_address(POOL_FIRST)) + 1
ROUTER = "198.19.0.1"
LEASE_SECONDS = 3600
LOAD = PerfdhcpLoad(("-4", "-l", CLIENT_ADDRESS), SERVER_ADDRESS, ("DISCOVER-OFFER", "REQUEST-ACK"), "DORA")

ISPD_CONFIG = ISPD_CONFIG_HEAD + """\
[dhcp]
enabled = true
interfaces = ["{interface}"]
lease_seconds = {lease_seconds}
[[dhcp.subnet]]
network = "{subnet}"
relay_addresses = ["{relay}"]
routers = ["{router}"]
dns_servers = ["{router}"]
[[dhcp.subnet.pool]]
name = "bench"
range = "{pool}"
"""


def kea_config(workdir: Path, interface: str, multi_threading: dict[str, Any]) -> dict[str, Any]:
    return {"Dhcp4": {
        # Relayed traffic only: plain UDP sockets, as ispd uses (no raw packet socket).
        "interfaces-config": {"interfaces": [interface], "dhcp-socket-type": "udp"},
        "lease-database": {"type": "memfile", "persist": True, "name": str(workdir / "leases4.csv"),
                           "lfc-interval": 0},
        "multi-threading": multi_threading,
        "valid-lifetime": LEASE_SECONDS,
        "subnet4": [{
            "id": 1, "subnet": SUBNET, "pools": [{"pool": POOL}],
            "relay": {"ip-addresses": [CLIENT_ADDRESS]},
            "option-data": [{"name": "routers", "data": ROUTER},
                            {"name": "domain-name-servers", "data": ROUTER}],
        }],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": str(workdir / "kea.log")}]}],
    }}


# --- the servers


class Ispd(IspdInNetns):
    port = 67

    def config_text(self) -> str:
        return ISPD_CONFIG.format(
            workdir=self.workdir, metrics_port=self.metrics_port, interface=self.interface,
            lease_seconds=LEASE_SECONDS, subnet=SUBNET, relay=CLIENT_ADDRESS, router=ROUTER, pool=POOL)

    def persisted_leases(self) -> int | None:
        """Bound leases in the store."""
        leases = self.bound_leases()
        if leases is None:
            return None
        return len({lease["address"] for lease in leases if lease.get("service", "dhcp") == "dhcp"})


class Kea(KeaInNetns):
    label, binary, port = "kea-dhcp4", KEA, 67

    def config(self) -> dict[str, Any]:
        return kea_config(self.workdir, self.interface, self.multi_threading())

    def persisted_leases(self) -> int | None:
        """Distinct addresses in the lease file (one line is appended per ACK)."""
        path = self.workdir / "leases4.csv"
        if not path.exists():
            return 0
        with path.open() as f:
            next(f, None)
            return len({line.split(",", 1)[0] for line in f if line.strip()})


SERVERS: dict[str, type[NetnsServer]] = {"kea": Kea, "ispd": Ispd}
LABELS = {name: kind.label for name, kind in SERVERS.items()}


# --- running it all


def preflight(names: list[str]) -> None:
    problems = []
    if "kea" in names and not Path(KEA).exists():
        problems.append(f"{KEA} not found")
    if "ispd" in names and not Path(ISPD).exists():
        problems.append(f"{ISPD} not found (run with the project's .venv/bin/python)")
    require("bench/dhcp.py", problems, ("ip", "ss", "taskset", PERFDHCP))


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

    lab = Lab()
    atexit.register(lab.close)  # registered first, runs last: after the servers are stopped
    stop_all_on_exit()

    root = Path(tempfile.mkdtemp(prefix="ispd-bench-dhcp-", dir=args.dir))
    try:
        server_ns, client_ns = lab.namespace("server"), lab.namespace("client")
        interface, _ = lab.link(server_ns, f"{SERVER_ADDRESS}/24", client_ns, f"{CLIENT_ADDRESS}/24")

        print("DHCPv4 DORA exchanges/s: ispd vs kea-dhcp4, driven by perfdhcp as a relay agent")
        load = os.getloadavg()[0]
        print(f"machine: {machine_summary()}; {pinning}; load average {load:.2f} at start"
              + (" (busy: expect noise)" if load > 0.5 else ""))
        print(f"kea-dhcp4 {Kea.version()}: memfile, persist true "
              f"(write() per ACK, no fsync), lfc off, "
              f"{'single-threaded' if not args.kea_threads else f'{args.kea_threads} threads'}")
        print("ispd: every lease committed durably to its store (fsync, group commit) before the ACK is sent")
        print(f"perfdhcp: relay agent {CLIENT_ADDRESS} -> {SERVER_ADDRESS}, multi-threaded (a receiver thread "
              "drains bursts of replies); socket buffers at the kernel's default everywhere")
        print(f"steps: {duration:g} s or {args.clients:,} clients/rate, whichever is shorter; fresh server "
              f"and store per step; lease stores on {filesystem(root)} ({root})")
        print()

        def measure(name: str, rate: int) -> Step:
            return measure_step(SERVERS[name], lab, server_ns, client_ns, interface, root, LOAD, rate, duration,
                                args.clients, cpus, args.keep)

        results, failed = run_rounds(names, LABELS, rates, args.repeat, LOAD.unit, measure)
        print_report(rates, names, LABELS, results, failed, LOAD.unit, args.json)
    finally:
        stop_all()
        lab.close()
        keep_or_remove(root, args.keep)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
