"""RADIUS latency while DNS is under load: does the resolver's traffic slow authentication?

ispd serves DNS and RADIUS at once, in turn:

- ``[radius] process = "main"``: RADIUS shares the main process's event loop with DNS, the
  daemon pinned to one core;
- ``"own"``: RADIUS in a worker process of its own, both processes pinned to that one core (the
  kernel's scheduler shares it between them);
- ``"own"``, the worker moved to the other core (the one the load generators use, which they
  leave mostly idle at these rates): what the worker is for, given a core to spare.

bench/radload.py sends PAP Access-Requests at a fixed --rate (default 2 000/s) for --duration
seconds and measures each reply's delay, once with DNS idle and once while dnsperf sends
--dns-rate queries/s (default 15 000) for names of a local zone, each asked once (NXDOMAIN from
local data, none kept yet for the fast path): every query is decoded and its answer encoded on
the slow path, so that DNS keeps ispd's core busy, and no query leaves ispd. The load generators
share the other core; dnsperf is paced rather than saturating, so that radload's own clock is
not starved of CPU. Each run starts a fresh daemon on a copy of one seeded store (the 1 000
users of bench/radius.py).

    .venv/bin/python bench/radius_dns_load.py [--duration 10] [--rate 2000] [--dns-rate 15000]
                                              [--dir /var/tmp] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    ISPD_CONFIG_HEAD,
    IspdDaemon,
    ServerFailed,
    cpu_seconds,
    machine_summary,
    require,
    split_cpus,
    stop_all_on_exit,
)
from bench.dns import DNSPERF, DNSPERF_TIMEOUT, Run, parse_dnsperf  # noqa: E402
from bench.radius import RADLOAD, SECRET, USERS, copy_store, seed_ispd_store  # noqa: E402
from bench.radload import ACCESS_ACCEPT, Report, bench_users  # noqa: E402
from tests.lab.dnshier import _death_signal  # noqa: E402
from tests.lab.freeradius import status_server  # noqa: E402
from tests.lab.ports import free_tcp_port, free_udp_port  # noqa: E402

ZONE = "bench.test."
ZONE_TEXT = """$TTL 300
@ SOA ns.bench.test. hostmaster.bench.test. 1 3600 600 86400 60
@ NS ns.bench.test.
ns A 198.18.0.53
"""
DNS_NAMES = 600_000  # more than dnsperf asks in a run at --dns-rate: each name once
CONFIG = ISPD_CONFIG_HEAD + """\
[dns]
enabled = true
listen = ["127.0.0.1:{dns_port}"]
[[dns.local_zone]]
name = "{zone}"
file = "{zone_file}"
[radius]
enabled = true
process = "{process}"
listen_auth = ["127.0.0.1:{auth_port}"]
listen_acct = ["127.0.0.1:{acct_port}"]
[[radius.client]]
name = "bench"
address = "127.0.0.0/8"
secret = "{secret}"
"""


@dataclass
class Result:
    process: str  # as the table names the setup
    dns_load: bool
    report: Report
    dns: Run | None
    ispd_cpu: float


def worker_pids(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def one_run(root: Path, seed: Path, process: str, dns_load: bool, args: argparse.Namespace,
            cpus: tuple[str | None, str | None], worker_cpu: str | None = None) -> Result:
    workdir = Path(tempfile.mkdtemp(prefix=f"{process}-{'dns' if dns_load else 'idle'}-", dir=root))
    copy_store(seed, workdir)
    dns_port, auth_port = free_udp_port(), free_udp_port()
    daemon = IspdDaemon(workdir, cpus[0], preexec=_death_signal())
    zone_file = workdir / "bench.test.zone"
    zone_file.write_text(ZONE_TEXT)
    config = CONFIG.format(workdir=workdir, metrics_port=free_tcp_port(), dns_port=dns_port, zone=ZONE,
                           zone_file=zone_file,
                           process=process, auth_port=auth_port, acct_port=free_udp_port(), secret=SECRET)
    pin = ["taskset", "-c", cpus[1]] if cpus[1] is not None else []
    dnsperf = None
    try:
        daemon.start(config, lambda: status_server("127.0.0.1", auth_port, SECRET, 0.2) == ACCESS_ACCEPT,
                     f"answer Status-Server on 127.0.0.1:{auth_port}")
        time.sleep(1)  # the worker's store and directory are loaded once Status-Server answers; let it settle
        if worker_cpu is not None:
            workers = worker_pids(daemon.pid)
            if not workers:
                raise ServerFailed("no RADIUS worker process under ispd")
            for worker in workers:  # every thread of it (its store writer too)
                subprocess.run(["taskset", "-a", "-p", "-c", worker_cpu, str(worker)], check=True,
                               capture_output=True)
        if dns_load:
            datafile = root / "queries"
            if not datafile.exists():
                datafile.write_text("".join(f"n{i}.{ZONE} A\n" for i in range(DNS_NAMES)))
            dnsperf = subprocess.Popen(
                [*pin, DNSPERF, "-s", "127.0.0.1", "-p", str(dns_port), "-d", str(datafile),
                 "-l", f"{args.duration + 3:g}", "-c", "8", "-T", "1", "-q", "200", "-Q", str(args.dns_rate),
                 "-t", str(DNSPERF_TIMEOUT)],
                stdout=(workdir / "dnsperf.out").open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            time.sleep(1.5)  # DNS at its rate before the first Access-Request
        cpu_before, started = cpu_seconds(daemon.pid), time.monotonic()
        radload = subprocess.run(
            [*pin, sys.executable, str(RADLOAD), "--server", f"127.0.0.1:{auth_port}", "--secret", SECRET,
             "--kind", "pap", "--mode", "pace", "--rate", str(args.rate), "--duration", f"{args.duration:g}",
             "--users", str(USERS)], check=False, capture_output=True, text=True, timeout=args.duration + 60)
        ispd_cpu = (cpu_seconds(daemon.pid) - cpu_before) / (time.monotonic() - started)
        if radload.returncode != 0:
            raise ServerFailed(f"radload failed:\n{radload.stdout[-2000:]}{radload.stderr[-2000:]}")
        report = Report(**json.loads(radload.stdout.splitlines()[-1]))
        dns = None
        if dnsperf is not None:
            dnsperf.wait(args.duration + 60)
            dns = Run("ispd", "local data")
            parse_dnsperf((workdir / "dnsperf.out").read_text(errors="replace"), dns)
        if not daemon.alive():
            raise ServerFailed(f"ispd exited during the run:\n{daemon.log_tail()}")
        label = process if worker_cpu is None else f"{process}, cpu {worker_cpu}"
        return Result(label, dns_load, report, dns, ispd_cpu)
    finally:
        if dnsperf is not None and dnsperf.poll() is None:
            dnsperf.kill()
            dnsperf.wait()
        daemon.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of PAP per run (default: %(default)s)")
    parser.add_argument("--rate", type=int, default=2000, help="PAP requests/s (default: %(default)s)")
    parser.add_argument("--dns-rate", type=int, default=15000, help="DNS queries/s under load (default: %(default)s)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where run directories go")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory")
    args = parser.parse_args()
    require("bench/radius_dns_load.py", [], ("taskset", DNSPERF))
    stop_all_on_exit()
    cpus, pinning = split_cpus(False, "ispd (main process and worker)", "radload and dnsperf")
    root = Path(tempfile.mkdtemp(prefix="ispd-bench-radius-dns-", dir=args.dir))
    try:
        seed = root / "seed.db"
        asyncio.run(seed_ispd_store(seed, bench_users(USERS)))
        print("RADIUS latency with DNS idle and under load, ispd alone")
        print(f"machine: {machine_summary()}; {pinning}")
        print(f"PAP at {args.rate:,}/s for {args.duration:g} s; DNS load: dnsperf at {args.dns_rate:,} queries/s "
              f"for names of the local zone {ZONE}, each once (the slow path)\n")
        print(f"{'radius process':<16} {'DNS':<6} {'PAP p50/p99/max ms':>20} {'lost':>6} {'DNS q/s':>9} "
              f"{'DNS avg/max ms':>15} {'ispd cpu':>9}")
        setups = [("main", None), ("own", None)] + ([("own", cpus[1])] if cpus[1] is not None else [])
        for process, worker_cpu in setups:
            for dns_load in (False, True):
                result = one_run(root, seed, process, dns_load, args, cpus, worker_cpu)
                r, d = result.report, result.dns
                latency = f"{r.p50_ms:.2f}/{r.p99_ms:.2f}/{r.max_ms:.1f}"
                dns = f"{d.qps:>9,.0f} {f'{d.avg_ms:.2f}/{d.max_ms:.1f}':>15}" if d else f"{'-':>9} {'-':>15}"
                print(f"{result.process:<16} {'load' if dns_load else 'idle':<6} {latency:>20} "
                      f"{100 * r.lost / max(r.sent, 1):>5.2f}% {dns} {100 * result.ispd_cpu:>8.0f}%", flush=True)
        print("ispd cpu: the main process and the worker together, a share of one core")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
