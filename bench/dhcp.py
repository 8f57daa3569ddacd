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
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    ISPD,
    ISPD_CONFIG_HEAD,
    ServerFailed,
    machine_summary,
    raise_exit,
    require,
    split_cpus,
    udp_rcvbuf_errors_in,
)
from tests.lab.netns import Lab  # noqa: E402
from tests.lab.ports import free_tcp_port  # noqa: E402

KEA = "/usr/sbin/kea-dhcp4"
PERFDHCP = "/usr/sbin/perfdhcp"

SERVER_ADDRESS, CLIENT_ADDRESS = "198.18.0.1", "198.18.0.2"
POOL_FIRST, POOL_LAST = "198.19.0.10", "198.19.255.250"
SUBNET, POOL = "198.19.0.0/16", f"{POOL_FIRST} - {POOL_LAST}"
# --clients must not exceed the pool, or it runs dry and the step measures refusals
POOL_SIZE = int(ipaddress.ip_address(POOL_LAST)) - int(ipaddress.ip_address(POOL_FIRST)) + 1
ROUTER = "198.19.0.1"
LEASE_SECONDS = 3600
DROP_WAIT_US = 1_000_000  # perfdhcp -W: after the period, wait this long for late replies

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


def kea_config(workdir: Path, interface: str, threads: int) -> dict[str, Any]:
    multi_threading: dict[str, Any] = {"enable-multi-threading": threads > 0}
    if threads > 0:
        multi_threading |= {"thread-pool-size": threads, "packet-queue-size": 64}
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


class Server:
    """One server process in the server namespace, started fresh for one step."""

    name = ""
    label = ""

    def __init__(self, lab: Lab, netns: str, interface: str, workdir: Path, cpus: str | None) -> None:
        self.lab, self.netns, self.interface, self.workdir, self.cpus = lab, netns, interface, workdir, cpus
        self.output = workdir / f"{self.name}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self, timeout: float = 20.0) -> None:
        command = self.command()
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        # `ip netns exec` and `taskset` exec the server: the Popen pid is the server's own.
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, *command], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env())
        _running.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"{self.label} exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise ServerFailed(f"{self.label} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        listening = self.lab.run(self.netns, "ss", "-Hlun", "sport = :67").stdout
        return bool(listening.strip())

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        assert self.proc is not None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self in _running:
            _running.remove(self)

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self.output, *self.extra_logs()):
            if path.exists():
                body = path.read_text(errors="replace").splitlines()[-lines:]
                text += f"--- {path.name}\n" + "\n".join(body) + "\n"
        return text or "(no output)"

    def extra_logs(self) -> list[Path]:
        return []

    def persisted_leases(self) -> int | None:
        return None


class Ispd(Server):
    name, label = "ispd", "ispd"

    def __init__(self, lab: Lab, netns: str, interface: str, workdir: Path, cpus: str | None) -> None:
        super().__init__(lab, netns, interface, workdir, cpus)
        self.metrics_port = free_tcp_port()  # free here, so surely free in the new namespace

    def command(self) -> list[str]:
        config = self.workdir / "ispd.toml"
        config.write_text(ISPD_CONFIG.format(
            workdir=self.workdir, metrics_port=self.metrics_port, interface=self.interface,
            lease_seconds=LEASE_SECONDS, subnet=SUBNET, relay=CLIENT_ADDRESS, router=ROUTER, pool=POOL))
        return [ISPD, "run", "-c", str(config)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        return env

    def persisted_leases(self) -> int | None:
        """Bound leases in the store, read the operator's way once ispd has stopped."""
        result = subprocess.run([ISPD, "lease", "list", "--json", "-c", str(self.workdir / "ispd.toml")],
                                check=False, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            return None
        try:
            return len({lease["address"] for lease in json.loads(result.stdout) if lease.get("state") == "bound"})
        except (ValueError, TypeError, KeyError):
            return None

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        probe = ("import sys, urllib.request\n"
                 f"try: sys.exit(0 if urllib.request.urlopen({url!r}, timeout=1).status == 200 else 1)\n"
                 "except Exception: sys.exit(1)")
        healthy = self.lab.run(self.netns, sys.executable, "-c", probe).returncode == 0
        return healthy and super().ready()


class Kea(Server):
    name, label = "kea", "kea-dhcp4"
    threads = 0

    def command(self) -> list[str]:
        config = self.workdir / "kea-dhcp4.json"
        config.write_text(json.dumps(kea_config(self.workdir, self.interface, self.threads), indent=1))
        return [KEA, "-c", str(config)]

    def env(self) -> dict[str, str]:
        # Pid and logger lock files go to the step's directory, not /run/kea (no system instance
        # is touched, and two runs never collide).
        return {**os.environ, "KEA_PIDFILE_DIR": str(self.workdir), "KEA_LOCKFILE_DIR": str(self.workdir)}

    def extra_logs(self) -> list[Path]:
        return [self.workdir / "kea.log"]

    def persisted_leases(self) -> int | None:
        """Distinct addresses in the lease file (one line is appended per ACK)."""
        path = self.workdir / "leases4.csv"
        if not path.exists():
            return 0
        with path.open() as f:
            next(f, None)
            return len({line.split(",", 1)[0] for line in f if line.strip()})


SERVERS: dict[str, type[Server]] = {"kea": Kea, "ispd": Ispd}
_running: list[Server] = []


# --- perfdhcp


@dataclass
class Exchange:
    sent: int = 0
    received: int = 0
    drops: int = 0
    orphans: int = 0
    min_ms: float = 0.0
    avg_ms: float = 0.0
    max_ms: float = 0.0


@dataclass
class Step:
    server: str
    rate: int
    period: int
    do: Exchange = field(default_factory=Exchange)
    ra: Exchange = field(default_factory=Exchange)
    server_cpu: float = 0.0  # share of one core over the period
    perfdhcp_cpu: float = 0.0
    server_rcvbuf_drops: int = 0  # requests the kernel dropped: the server's socket buffer was full
    client_rcvbuf_drops: int = 0  # replies dropped the same way at perfdhcp's socket
    persisted: int | None = None
    error: str | None = None

    @property
    def completed(self) -> int:
        return self.ra.received

    @property
    def dora_per_second(self) -> float:
        return self.completed / self.period

    @property
    def lost_percent(self) -> float:
        return 100.0 * (1 - self.completed / self.do.sent) if self.do.sent else 100.0

    @property
    def avg_ms(self) -> float:
        """The mean delay of a reply (OFFER or ACK), as max_ms is the longest."""
        replies = self.do.received + self.ra.received
        return (self.do.avg_ms * self.do.received + self.ra.avg_ms * self.ra.received) / replies if replies else 0.0

    @property
    def max_ms(self) -> float:
        return max(self.do.max_ms, self.ra.max_ms)


_SECTION = re.compile(r"\*\*\*Statistics for: (DISCOVER-OFFER|REQUEST-ACK)\*\*\*")
_FIELD = re.compile(r"^(sent packets|received packets|drops|orphans|min delay|avg delay|max delay):\s*([-\d.eE+]+)",
                    re.M)
_KEYS = {"sent packets": "sent", "received packets": "received", "drops": "drops", "orphans": "orphans",
         "min delay": "min_ms", "avg delay": "avg_ms", "max delay": "max_ms"}


def parse_perfdhcp(text: str) -> dict[str, Exchange]:
    parts = _SECTION.split(text)
    found: dict[str, Exchange] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        exchange = Exchange()
        for key, value in _FIELD.findall(body):
            attr = _KEYS[key]
            setattr(exchange, attr, type(getattr(exchange, attr))(float(value)))
        found[name] = exchange
    return found


def run_perfdhcp(lab: Lab, netns: str, rate: int, period: int, clients: int, cpus: str | None,
                 workdir: Path) -> tuple[dict[str, Exchange], float, str]:
    # -g multi: a receiver thread of its own drains the socket at once, so a server that answers in
    # bursts (one group commit, then a batch of ACKs) does not lose replies at perfdhcp's one socket,
    # where real clients would each have their own; single-threaded perfdhcp loses hundreds there.
    command = [PERFDHCP, "-4", "-g", "multi", "-l", CLIENT_ADDRESS, "-r", str(rate), "-R", str(clients),
               "-p", str(period), "-W", str(DROP_WAIT_US), SERVER_ADDRESS]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out_path = workdir / "perfdhcp.out"
    started = time.monotonic()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *command], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = started + period + DROP_WAIT_US / 1e6 + 30
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise ServerFailed(f"perfdhcp did not finish:\n{out_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    text = out_path.read_text(errors="replace")
    # 0: every exchange completed; 3: some did not (drops are what we measure).
    if proc.returncode not in (0, 3):
        raise ServerFailed(f"perfdhcp failed ({proc.returncode}):\n{text[-2000:]}")
    cpu = (usage.ru_utime + usage.ru_stime) / (period + DROP_WAIT_US / 1e6)
    return parse_perfdhcp(text), cpu, text


def udp_rcvbuf_errors(lab: Lab, netns: str) -> int:
    return udp_rcvbuf_errors_in(lab.run(netns, "cat", "/proc/net/snmp").stdout)


def measure(kind: type[Server], lab: Lab, server_ns: str, client_ns: str, interface: str, root: Path,
            rate: int, duration: int, clients: int, cpus: tuple[str | None, str | None], keep: bool) -> Step:
    period = max(1, min(duration, clients // rate))  # perfdhcp -p takes whole seconds
    step = Step(kind.name, rate, period)
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind.name}-{rate}-", dir=root))
    server = kind(lab, server_ns, interface, workdir, cpus[0])
    try:
        server.start()
        cpu_before = server.cpu_seconds()
        server_drops, client_drops = udp_rcvbuf_errors(lab, server_ns), udp_rcvbuf_errors(lab, client_ns)
        stats, step.perfdhcp_cpu, text = run_perfdhcp(lab, client_ns, rate, period, clients, cpus[1], workdir)
        step.server_cpu = (server.cpu_seconds() - cpu_before) / (period + DROP_WAIT_US / 1e6)
        step.server_rcvbuf_drops = udp_rcvbuf_errors(lab, server_ns) - server_drops
        step.client_rcvbuf_drops = udp_rcvbuf_errors(lab, client_ns) - client_drops
        if "DISCOVER-OFFER" not in stats or "REQUEST-ACK" not in stats:
            raise ServerFailed(f"could not read perfdhcp's report:\n{text[-2000:]}")
        step.do, step.ra = stats["DISCOVER-OFFER"], stats["REQUEST-ACK"]
        if not server.alive():
            raise ServerFailed(f"{server.label} exited during the step:\n{server.log_tail()}")
    except ServerFailed as exc:
        step.error = str(exc)
    finally:
        server.stop()
    step.persisted = server.persisted_leases()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return step


# --- the report


def kea_version() -> str:
    result = subprocess.run([KEA, "-v"], check=False, capture_output=True, text=True)
    return result.stdout.strip() or "?"


def filesystem(path: Path) -> str:
    result = subprocess.run(["df", "--output=fstype", str(path)], check=False, capture_output=True, text=True)
    return result.stdout.split()[-1] if result.returncode == 0 else "?"


def cell(step: Step | None) -> str:
    if step is None:
        return f"{'':>8} {'':>6} {'':>7} {'':>7} {'':>5}"
    if step.error is not None:
        return f"{'failed':>8} {'':>6} {'':>7} {'':>7} {'':>5}"
    return (f"{step.dora_per_second:>8,.0f} {step.lost_percent:>6.2f} {step.avg_ms:>7.2f} {step.max_ms:>7.1f} "
            f"{100 * step.server_cpu:>4.0f}%")


def print_table(rates: list[int], names: list[str], results: dict[tuple[str, int], Step]) -> None:
    width = len(cell(None))
    head = f"{'offered':>8} {'period':>6}  " + "  ".join(f"{SERVERS[n].label:-^{width}}" for n in names)
    sub = f"{'DORA/s':>8} {'s':>6}  " + "  ".join(
        f"{'DORA/s':>8} {'lost%':>6} {'avg ms':>7} {'max ms':>7} {'cpu':>5}" for _ in names)
    if len(names) == 2:
        head += f"  {'':>8}"
        sub += f"  {'ispd/kea':>8}"
    head += f"  {'perfdhcp':>8}"
    sub += f"  {'cpu':>8}"
    print(head)
    print(sub)
    for rate in rates:
        steps = [results.get((n, rate)) for n in names]
        period = next((s.period for s in steps if s is not None), 0)
        line = f"{rate:>8,} {period:>6}  " + "  ".join(cell(s) for s in steps)
        if len(names) == 2:
            kea, ispd = results.get(("kea", rate)), results.get(("ispd", rate))
            if kea and ispd and kea.error is None and ispd.error is None and kea.completed:
                line += f"  {ispd.dora_per_second / kea.dora_per_second:>7.2f}x"
            else:
                line += f"  {'':>8}"
        gen = max((s.perfdhcp_cpu for s in steps if s is not None and s.error is None), default=0.0)
        line += f"  {100 * gen:>7.0f}%"
        print(line)


def print_summary(rates: list[int], names: list[str], results: dict[tuple[str, int], Step]) -> None:
    def good(step: Step | None) -> bool:
        return step is not None and step.error is None and step.lost_percent < 1.0

    print()
    for name in names:
        steps = [s for r in rates if (s := results.get((name, r))) is not None and s.error is None]
        if steps:
            best = max(steps, key=lambda s: s.dora_per_second)
            print(f"{SERVERS[name].label:>10}: best {best.dora_per_second:,.0f} DORA/s completed "
                  f"(offered {best.rate:,}/s, {best.lost_percent:.2f} % lost)")
        else:
            print(f"{SERVERS[name].label:>10}: no step completed")
    measured = {n for (n, _), s in results.items() if s.error is None}
    if len(names) == 2 and measured == set(names):
        both = [r for r in rates if good(results.get(("kea", r))) and good(results.get(("ispd", r)))]
        if both:
            r = both[-1]
            kea, ispd = results[("kea", r)], results[("ispd", r)]
            print(f"highest offered rate where both lose < 1 %: {r:,}/s — ispd {ispd.dora_per_second:,.0f} "
                  f"DORA/s, kea {kea.dora_per_second:,.0f} DORA/s, ratio ispd/kea "
                  f"{ispd.dora_per_second / kea.dora_per_second:.2f}")
        else:
            print("no offered rate where both servers lose < 1 %")
        bests = {n: max((s.dora_per_second for r in rates if (s := results.get((n, r))) and s.error is None),
                        default=0.0) for n in names}
        if bests["kea"] and bests["ispd"]:
            print(f"best against best: ispd/kea {bests['ispd'] / bests['kea']:.2f}")


# --- running it all


def stop_all() -> None:
    for server in list(_running):
        server.stop(5)


def preflight(names: list[str]) -> None:
    problems = []
    if "kea" in names and not Path(KEA).exists():
        problems.append(f"{KEA} not found")
    if "ispd" in names and not Path(ISPD).exists():
        problems.append(f"{ISPD} not found (run with the project's .venv/bin/python)")
    require("bench/dhcp.py", problems, ("ip", "ss", "taskset", PERFDHCP))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,2000,4000,6000,8000,10000",
                        help="offered DORA/s, comma-separated (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=12,
                        help="seconds per step, at most --clients/rate (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=60_000,
                        help=f"distinct simulated clients, at most {POOL_SIZE:,} (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds over all steps; each step keeps its best round (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(SERVERS), help="measure one server only")
    parser.add_argument("--quick", action="store_true", help="two rates (1000, 4000), 5 s each, one round")
    parser.add_argument("--kea-threads", type=int, default=0,
                        help="Kea's multi-threading thread-pool-size; 0: single-threaded (default)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin perfdhcp and the server to cores")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the lease stores go; a real disk, not tmpfs (default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each step's directory (configs, logs, perfdhcp output, lease stores)")
    parser.add_argument("--json", type=Path, help="also write every step's figures to this file")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # the table between progress lines

    rates = [1000, 4000] if args.quick else [int(r) for r in args.rates.split(",") if r.strip()]
    duration = 5 if args.quick else args.duration
    if args.quick:
        args.repeat = 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 1 <= args.clients <= POOL_SIZE:
        parser.error(f"--clients must be 1..{POOL_SIZE} (the pool's size), not {args.clients}")
    names = [args.only] if args.only else ["kea", "ispd"]
    Kea.threads = args.kea_threads
    preflight(names)

    cpus, pinning = split_cpus(args.no_pin, "server", "perfdhcp")

    lab = Lab()
    atexit.register(lab.close)  # registered first, runs last: after the servers are stopped
    atexit.register(stop_all)  # this script's own servers (not bench.common's registry)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_exit)

    results: dict[tuple[str, int], Step] = {}
    root = Path(tempfile.mkdtemp(prefix="ispd-bench-dhcp-", dir=args.dir))
    try:
        server_ns, client_ns = lab.namespace("server"), lab.namespace("client")
        interface, _ = lab.link(server_ns, f"{SERVER_ADDRESS}/24", client_ns, f"{CLIENT_ADDRESS}/24")

        print("DHCPv4 DORA exchanges/s: ispd vs kea-dhcp4, driven by perfdhcp as a relay agent")
        load = os.getloadavg()[0]
        print(f"machine: {machine_summary()}; {pinning}; load average {load:.2f} at start"
              + (" (busy: expect noise)" if load > 0.5 else ""))
        print(f"kea-dhcp4 {kea_version()}: memfile, persist true (write() per ACK, no fsync), lfc off, "
              f"{'single-threaded' if not args.kea_threads else f'{args.kea_threads} threads'}")
        print("ispd: every lease committed durably to its store (fsync, group commit) before the ACK is sent")
        print(f"perfdhcp: relay agent {CLIENT_ADDRESS} -> {SERVER_ADDRESS}, multi-threaded (a receiver thread "
              "drains bursts of replies); socket buffers at the kernel's default everywhere")
        print(f"steps: {duration:g} s or {args.clients:,} clients/rate, whichever is shorter; fresh server "
              f"and store per step; lease stores on {filesystem(root)} ({root})")
        print()

        def run_step(name: str, rate: int, round_: int) -> Step:
            tag = f" (round {round_}/{args.repeat})" if args.repeat > 1 else ""
            print(f"  {SERVERS[name].label} at {rate:,}/s{tag} ...", end="", flush=True, file=sys.stderr)
            step = measure(SERVERS[name], lab, server_ns, client_ns, interface, root, rate, duration,
                           args.clients, cpus, args.keep)
            if step.error is not None:
                print(" failed", file=sys.stderr)
                return step
            stored = "?" if step.persisted is None else f"{step.persisted:,}"
            print(f" {step.dora_per_second:,.0f} DORA/s, {step.lost_percent:.2f} % lost "
                  f"(full socket buffers dropped {step.server_rcvbuf_drops:,} requests at the server, "
                  f"{step.client_rcvbuf_drops:,} replies at perfdhcp); "
                  f"{step.completed:,} ACKs, {stored} leases in the store", file=sys.stderr)
            if step.persisted is not None and step.persisted < step.completed:
                print(f"  warning: {SERVERS[name].label} acknowledged {step.completed:,} leases but its store "
                      f"holds {step.persisted:,}", file=sys.stderr)
            return step

        failed: dict[str, str] = {}
        # Rounds, each over every rate and server in turn, so a burst of load from elsewhere on the
        # machine hits one round's step, not all of a server's; each step keeps its best round.
        for round_ in range(1, args.repeat + 1):
            for rate in rates:
                for name in names:
                    if name in failed:
                        continue
                    step = run_step(name, rate, round_)
                    if step.error is not None:
                        failed[name] = step.error
                        results.setdefault((name, rate), step)
                        continue
                    best = results.get((name, rate))
                    if best is None or best.error is not None or step.completed > best.completed:
                        results[(name, rate)] = step
        print()
        print_table(rates, names, results)
        print_summary(rates, names, results)
        measured = [s for s in results.values() if s.error is None]
        if any(s.perfdhcp_cpu > 0.85 for s in measured):
            print("note: perfdhcp used more than 85 % of its core at some rates; there it limits the figures too")
        if any(s.do.sent < 0.97 * s.rate * s.period for s in measured):
            print("note: perfdhcp fell more than 3 % short of the offered rate at some steps (see --json)")
        for name, error in failed.items():
            print(f"\n{SERVERS[name].label} failed, and was not measured further:\n{error}")
        if args.json:
            args.json.write_text(json.dumps(
                [{**asdict(s), "dora_per_second": s.dora_per_second, "lost_percent": s.lost_percent}
                 for s in results.values()], indent=1))
    finally:
        stop_all()
        lab.close()
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
