"""Recursive DNS queries per second: ispd against Unbound, both iterating from the lab's root.

Both resolvers run the same way: alone on 127.0.0.1 (each on a port of its own), one thread
(Unbound: num-threads 1, caches of 256 MB + 512 MB; ispd: its [dns] service as configured below,
with as much cache),
resolving from the root hints of the lab hierarchy (tests/lab/dnshier.py: real NSD servers from
the root down, on 127.55.0.0/16 port 53). The hierarchy's root and test. are signed, but the
unvalidated workloads below ask for bench.test (unsigned) and neither resolver validates there
(Unbound: module-config "iterator"; ispd: [dns.dnssec] validation = false); the validated ones
ask for sbench.test, bench.test's signed twin (algorithm 13, NSEC), and both validate from the
lab's trust anchor (Unbound: "validator iterator" with trust-anchor-file; ispd: validation =
true with trust_anchor_file). dnsperf drives each through these workloads, each on a fresh
resolver process with an empty cache:

- cache hit: the 500 names h0..h499.bench.test (A), resolved once at a gentle rate to warm the
  cache, then sent in a loop at saturation (dnsperf keeps --outstanding queries in flight);
- latency: the same warm names at a fixed 2 000 queries/s; each reply's delay comes from
  dnsperf's verbose output and gives the median, p99 and maximum;
- cache miss: names never asked before (m<N>.bench.test, answered by the wildcard *.bench.test),
  at saturation, so every query costs the resolver one query to the bench.test server (the
  delegations are cached by the warm-up);
- DoT hit and DoH hit: the cache-hit workload over DNS over TLS (dnsperf -m dot) and DNS over
  HTTPS (dnsperf -m doh: HTTP/2, GET), one TLS connection per dnsperf client, with a certificate
  the bench makes (trustme). Unbound serves both (tls-port, https-port);
- validated hit: the cache-hit workload over h0..h499.sbench.test, both resolvers validating:
  the warm-up validates each name once (and the chain of trust: DS and DNSKEY of the root, test.
  and sbench.test), then the answers come from the cache with their verdict;
- flood: a random-subdomain flood, as infected subscriber devices send them: new names under
  bench.test at a fixed 8 000 q/s, with both resolvers limiting the queries to one zone's
  servers to 500 a second (--zone-limit; ispd: zone_rate_limit_qps; Unbound: ratelimit; both
  let one in ten past it through). "q/s" is the replies to the flood; "latency" is what the
  other subscribers see meanwhile: a probe asks new names under sbench.test (another zone,
  cache misses too) at 50 q/s, and its p50/p99/max are shown, with the share it got answered;
- validated miss: the cache-miss workload over m<N>.sbench.test, answered by the signed wildcard
  *.sbench.test, both validating: each name costs the query to the sbench.test server and the
  validator's checks, the wildcard's RRSIG and the NSEC proof that the name itself does not exist
  (RFC 4035 §5.3.4). Unbound runs with aggressive-nsec: no here: with it, Unbound synthesises
  these wildcard answers from its cached NSEC and wildcard records (RFC 8198 §5.3.3), which ispd
  does not do, and the row would measure a cache hit, not a miss.

dnsperf's queries are plain in every workload, the validated ones included: no EDNS, so no DO
bit (dnsperf sets it only with -D), as stub resolvers ask (they leave validation to the
resolver). The answers then carry no signatures and no AD bit, but the resolver validates all
the same: the bench checks before each validated run that a DO query for h7.sbench.test and for
a wildcard name gets a secure answer (AD set).

"q/s" is the number of replies per second dnsperf counted; "lost" the queries without a reply
within its 5 s timeout; "cpu" the share of one core the resolver (all its processes and threads)
used during the run (the progress lines also give the CPU of the workload's authoritative
server, the bench.test or sbench.test NSD: the misses reach it). On a machine with two cores or
more, the resolver is pinned to all cores but the last, dnsperf and the NSD servers of the
hierarchy to the last one, so the load generator and the authoritative side do not steal the
resolver's CPU. Needs root (port 53 on 127.55.x.y), nsd, unbound and dnsperf (tools/setup
--tests --bench installs them). Every process started is stopped at exit, also on an error,
Ctrl-C or SIGTERM.

--processes N compares ispd's [dns] processes = N with Unbound's num-threads: N (so-reuseport),
unpinned: on a machine with fewer than N + 1 cores they share them with dnsperf and the NSD
servers, and the figures show that contention as much as the scaling.

--dnstap has both resolvers log every client query and response as dnstap to fstrm_capture
(fstrm-bin), which runs beside dnsperf: the rows then show what that logging costs each.

    .venv/bin/python bench/dns.py [--quick] [--duration 15] [--only ispd|unbound] [--json out.json]
                                  [--outstanding 200] [--miss-outstanding 200] [--repeat 1] [--no-pin]
                                  [--processes 1] [--zone-limit 500] [--dnstap] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    ISPD,
    ISPD_CONFIG_HEAD,
    BenchServer,
    IspdDaemon,
    ServerFailed,
    cpu_seconds,
    keep_or_remove,
    machine_summary,
    require,
    split_cpus,
    stop_all,
    stop_all_on_exit,
    udp_rcvbuf_errors,
)
from ispd.dns.wire import CLASS_IN, RCode, RRType, encode_query, name_from_text  # noqa: E402
from tests.lab.certs import issue  # noqa: E402
from tests.lab.dnshier import (  # noqa: E402
    BENCH_NAMES,
    BENCH_WILDCARD_ADDRESS,
    DNSHierarchy,
    Unbound,
    bench_address,
    dig,
    free_port,
    query,
)
from tests.lab.ports import free_tcp_port  # noqa: E402

DNSPERF = shutil.which("dnsperf") or "/usr/bin/dnsperf"
BASE = "127.55"
LATENCY_QPS = 2000
WORKLOADS = ("cache hit", "latency", "cache miss", "DoT hit", "DoH hit", "validated hit", "validated miss", "flood")
VALIDATED = frozenset({"validated hit", "validated miss"})  # over sbench.test, both resolvers validating
ROWS = ("cache hit", "cache miss", "latency", "DoT hit", "DoH hit", "validated hit", "validated miss", "flood")
FLOOD_QPS, PROBE_QPS = 8000, 50  # the flood workload (its zone limit: --zone-limit)
TARGETS = {"validated hit": 0.6}  # the issue's target: ispd/unbound q/s at least this
UNSIGNED_ZONE, SIGNED_ZONE = "bench.test", "sbench.test"
DNSPERF_TIMEOUT = 5  # dnsperf -t: a query without a reply after this long is lost

ISPD_CONFIG = ISPD_CONFIG_HEAD + """\
[dns]
enabled = true
listen = ["127.0.0.1:{port}"]
root_hints = "{hints}"
allow = ["127.0.0.0/8"]
[dns.resolver]
do_ipv6 = false  # as Unbound's do-ip6: no (the lab has IPv4 servers only)
do_not_query_localhost = false  # as Unbound's (the lab is on loopback)
[dns.cache]
max_bytes = 805306368  # Unbound's msg-cache and rrset-cache together: no run evicts on either side
[dns.dot]
listen = ["127.0.0.1:{dot_port}"]
certificate = "{pem}"
private_key = "{key}"
[dns.doh]
listen = ["127.0.0.1:{doh_port}"]
certificate = "{pem}"
private_key = "{key}"
"""
# The unvalidated workloads: Unbound there is an iterator only (module-config "iterator").
ISPD_DNSSEC_OFF = """\
[dns.dnssec]
validation = false
"""
# The validated workloads: from the lab's trust anchor (the root's DS), as Unbound's trust-anchor-file.
ISPD_DNSSEC_ON = """\
[dns.dnssec]
validation = true
trust_anchor_file = "{anchor}"
"""


def zone_of(workload: str) -> str:
    return SIGNED_ZONE if workload in VALIDATED else UNSIGNED_ZONE


# --- the resolvers


class Resolver(BenchServer):
    tls: tuple[Path, Path] | None = None  # certificate chain and key, for DoT and DoH
    processes = 1  # ispd's [dns] processes, Unbound's num-threads (--processes)
    dnstap = False  # --dnstap: client queries and responses to a collector (fstrm_capture)
    collector_cpus: str | None = None  # the collector's cores: dnsperf's side

    def __init__(self, hierarchy: DNSHierarchy, workdir: Path, cpus: str | None, *, validating: bool,
                 zone_limit: int = 0) -> None:
        self.hierarchy, self.workdir, self.cpus, self.validating = hierarchy, workdir, cpus, validating
        self.zone_limit = zone_limit  # queries per second to one zone's servers; 0: none
        self.port = free_port()
        self.dot_port = free_tcp_port()
        self.doh_port = free_tcp_port()
        self.tap_socket = workdir / "dnstap.sock"
        self.collector: subprocess.Popen[bytes] | None = None
        self.tapped: int | None = None  # frames the collector wrote, read when it stops

    def start(self) -> None:
        if self.dnstap:  # first: both resolvers connect at start (and retry while it is not there)
            command = ["fstrm_capture", "-t", "protobuf:dnstap.Dnstap", "-u", str(self.tap_socket),
                       "-w", str(self.workdir / "dnstap.fstrm")]
            if self.collector_cpus is not None:
                command = ["taskset", "-c", self.collector_cpus, *command]
            self.collector = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 5
            while not self.tap_socket.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        super().start()

    def stop(self) -> None:
        super().stop()
        if self.collector is not None:
            self.collector.send_signal(signal.SIGINT)
            try:
                _, err = self.collector.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.collector.kill()
                _, err = self.collector.communicate()
            written = re.search(rb"wrote (\d+) frames", err)
            self.tapped = int(written.group(1)) if written else None
            self.collector = None
            (self.workdir / "dnstap.fstrm").unlink(missing_ok=True)  # (large; only its count matters)


class UnboundResolver(Resolver):
    name, label = "unbound", "unbound"

    def __init__(self, hierarchy: DNSHierarchy, workdir: Path, cpus: str | None, *, validating: bool,
                 zone_limit: int = 0) -> None:
        super().__init__(hierarchy, workdir, cpus, validating=validating, zone_limit=zone_limit)
        assert self.tls is not None
        pem, key = self.tls
        extra = (f"  interface: 127.0.0.1@{self.dot_port}\n  interface: 127.0.0.1@{self.doh_port}\n"
                 f"  tls-port: {self.dot_port}\n  https-port: {self.doh_port}\n"
                 f'  tls-service-pem: "{pem}"\n  tls-service-key: "{key}"\n')
        if validating:  # no wildcard answers synthesised from cached NSEC (RFC 8198 §5.3.3), as ispd
            extra += "  aggressive-nsec: no\n"
        # validating: "validator iterator" from the lab's trust anchor; else "iterator" alone
        if self.processes > 1:  # one socket per thread, as ispd's processes have
            extra += "  so-reuseport: yes\n"
        if zone_limit:  # (ratelimit-factor stays at its default, 10: as ispd's zone_rate_limit_factor)
            extra += f"  ratelimit: {zone_limit}\n"
        if self.dnstap:
            extra += (f'dnstap:\n  dnstap-enable: yes\n  dnstap-socket-path: "{self.tap_socket}"\n'
                      "  dnstap-send-identity: yes\n  dnstap-send-version: yes\n"
                      "  dnstap-log-client-query-messages: yes\n  dnstap-log-client-response-messages: yes\n")
        self.process = Unbound(hierarchy.root_hints_path, workdir, port=self.port, msg_cache="256m",
                               rrset_cache="512m", cpus=cpus, extra=extra, threads=self.processes,
                               trust_anchor=hierarchy.trust_anchor_path if validating else None)

    def _start(self) -> None:
        self.process.start()


class IspdResolver(Resolver):
    name, label = "ispd", "ispd"

    def __init__(self, hierarchy: DNSHierarchy, workdir: Path, cpus: str | None, *, validating: bool,
                 zone_limit: int = 0) -> None:
        super().__init__(hierarchy, workdir, cpus, validating=validating, zone_limit=zone_limit)
        self.process = IspdDaemon(workdir, cpus)

    def _start(self) -> None:
        assert self.tls is not None
        config = ISPD_CONFIG.format(workdir=self.workdir, metrics_port=free_tcp_port(), port=self.port,
                                    hints=self.hierarchy.root_hints_path, dot_port=self.dot_port,
                                    doh_port=self.doh_port, pem=self.tls[0], key=self.tls[1])
        config += (ISPD_DNSSEC_ON.format(anchor=self.hierarchy.trust_anchor_path) if self.validating
                   else ISPD_DNSSEC_OFF)
        config = config.replace("[dns]\n", f"[dns]\nprocesses = {self.processes}\n", 1)
        if self.zone_limit:
            config = config.replace("[dns.resolver]\n", f"[dns.resolver]\nzone_rate_limit_qps = {self.zone_limit}\n", 1)
        if self.dnstap:  # (client queries and responses are on by default)
            config += f'[dns.dnstap]\nsocket_path = "{self.tap_socket}"\n'

        def answers() -> bool:  # any reply will do: a DNS listener is up
            try:
                query("127.0.0.1", "localhost.", "A", port=self.port, rd=True, timeout=0.5)
            except Exception:
                return False
            return True

        self.process.start(config, answers, f"answer DNS on 127.0.0.1:{self.port}")


RESOLVERS: dict[str, type[Resolver]] = {"unbound": UnboundResolver, "ispd": IspdResolver}


# --- dnsperf


@dataclass
class Run:
    """One dnsperf run against one resolver."""

    server: str
    workload: str
    validating: bool = False
    sent: int = 0
    completed: int = 0
    lost: int = 0
    seconds: float = 0.0
    qps: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    avg_ms: float = 0.0
    max_ms: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    server_cpu: float = 0.0  # share of one core
    dnsperf_cpu: float = 0.0
    authoritative_cpu: float = 0.0  # the workload's zone's NSD server's (bench.test or sbench.test)
    rcvbuf_drops: int = 0  # datagrams the kernel dropped at a full socket buffer (any socket) during the run
    probe_answered: float | None = None  # flood: the share of the probe's questions answered NOERROR
    tapped: int | None = None  # --dnstap: frames the collector wrote in the resolver's life (warm-up too)
    error: str | None = None

    @property
    def lost_percent(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0

    @property
    def noerror_percent(self) -> float:
        return 100.0 * self.rcodes.get("NOERROR", 0) / self.completed if self.completed else 0.0


_FIELDS = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "completed": re.compile(r"Queries completed:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "seconds": re.compile(r"Run time \(s\):\s+([\d.]+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
}
_LATENCY = re.compile(r"Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)")
_RCODES = re.compile(r"Response codes:\s+(.*)")
_VERBOSE = re.compile(r"^> (\S+) \S+ \S+ ([\d.]+)$", re.M)


def parse_dnsperf(text: str, run: Run) -> None:
    for name, pattern in _FIELDS.items():
        match = pattern.search(text)
        if match is None:
            raise ServerFailed(f"could not read dnsperf's report ({name}):\n{text[-2000:]}")
        setattr(run, name, type(getattr(run, name))(float(match.group(1))))
    latency = _LATENCY.search(text)
    if latency:
        run.avg_ms, run.max_ms = 1000 * float(latency.group(1)), 1000 * float(latency.group(2))
    rcodes = _RCODES.search(text)
    if rcodes:
        for part in rcodes.group(1).split(","):
            bits = part.split()
            if len(bits) >= 2 and bits[1].isdigit():
                run.rcodes[bits[0]] = int(bits[1])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_dnsperf(resolver: Resolver, workload: str, datafile: Path, *, duration: float, outstanding: int,
                clients: int, rate: int | None = None, once: bool = False, verbose: bool = False,
                cpus: str | None = None, mode: str = "udp") -> Run:
    run = Run(resolver.name, workload, resolver.validating)
    port = {"udp": resolver.port, "dot": resolver.dot_port, "doh": resolver.doh_port}[mode]
    # no -e or -D: plain queries without EDNS (no DO bit), as a stub resolver sends them
    command = [DNSPERF, "-m", mode, "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile), "-l", f"{duration:g}",
               "-c", str(clients), "-T", "1", "-q", str(outstanding), "-t", str(DNSPERF_TIMEOUT)]
    if mode == "doh":
        command += ["-O", f"doh-uri=https://127.0.0.1:{port}/dns-query"]
    if rate is not None:
        command += ["-Q", str(rate)]
    if once:
        command += ["-n", "1"]
    if verbose:
        command.append("-v")
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out_path = resolver.workdir / f"dnsperf-{workload.replace(' ', '-')}.out"
    auth_pid = resolver.hierarchy.pid(resolver.hierarchy.address(f"ns1.{zone_of(workload)}"))
    auth_before, drops_before = cpu_seconds(auth_pid), udp_rcvbuf_errors()
    cpu_before, started = cpu_seconds(resolver.pid), time.monotonic()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = started + duration + DNSPERF_TIMEOUT + 60
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise ServerFailed(f"dnsperf did not finish:\n{out_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    elapsed = time.monotonic() - started
    run.server_cpu = (cpu_seconds(resolver.pid) - cpu_before) / elapsed
    run.dnsperf_cpu = (usage.ru_utime + usage.ru_stime) / elapsed
    run.authoritative_cpu = (cpu_seconds(auth_pid) - auth_before) / elapsed
    run.rcvbuf_drops = udp_rcvbuf_errors() - drops_before
    text = out_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise ServerFailed(f"dnsperf failed ({proc.returncode}):\n{text[-2000:]}")
    parse_dnsperf(text, run)
    if verbose:
        delays = [1000 * float(d) for _, d in _VERBOSE.findall(text)]
        if delays:
            run.p50_ms, run.p99_ms = percentile(delays, 0.50), percentile(delays, 0.99)
        if not once:  # the verbose lines are large: keep only the summary
            out_path.write_text("\n".join(line for line in text.splitlines() if not line.startswith(">")))
    if not resolver.alive():
        raise ServerFailed(f"{resolver.label} exited during the run:\n{resolver.log_tail()}")
    return run


# --- the workloads


class Probe(threading.Thread):
    """Other subscribers during a flood: new names under ``zone`` at ``rate`` q/s, each a cache miss,
    with the delay of every NOERROR reply (the rest count as not answered)."""

    def __init__(self, port: int, zone: str, rate: int) -> None:
        super().__init__(daemon=True)
        self.port, self.zone, self.rate = port, zone, rate
        self.sent, self.delays = 0, list[float]()
        self.stopping = threading.Event()

    def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        asked: dict[int, float] = {}
        next_send = time.monotonic()
        stop_at: float | None = None
        try:
            while stop_at is None or (asked and time.monotonic() < stop_at):
                now = time.monotonic()
                if stop_at is None and self.stopping.is_set():
                    stop_at = now + DNSPERF_TIMEOUT  # the last ones may still be answered
                if stop_at is None and now >= next_send:
                    name = name_from_text(f"p{self.sent}-{os.getpid()}.{self.zone}")
                    sock.sendto(encode_query(self.sent & 0xFFFF, name, RRType.A, CLASS_IN, rd=True),
                                ("127.0.0.1", self.port))
                    asked[self.sent & 0xFFFF] = now
                    self.sent += 1
                    next_send += 1 / self.rate
                try:
                    reply = sock.recv(4096)
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                if len(reply) < 12:
                    continue
                sent_at = asked.pop(int.from_bytes(reply[:2], "big"), None)
                if sent_at is not None and reply[3] & 0xF == RCode.NOERROR and reply[6:8] != b"\0\0":  # answered
                    self.delays.append(time.monotonic() - sent_at)
        finally:
            sock.close()


def run_flood(resolver: Resolver, misses: Path, args: argparse.Namespace, cpus: str | None) -> Run:
    probe = Probe(resolver.port, SIGNED_ZONE, PROBE_QPS)
    probe.start()
    try:
        run = run_dnsperf(resolver, "flood", misses, duration=args.duration, outstanding=5000, clients=args.clients,
                          rate=FLOOD_QPS, once=True, cpus=cpus)
    finally:
        probe.stopping.set()
        probe.join()
    run.p50_ms = run.p99_ms = None
    run.max_ms = 0.0  # (not the flood's: the row's latency is the probe's)
    if probe.delays:
        delays = [1000 * d for d in probe.delays]
        run.p50_ms, run.p99_ms, run.max_ms = percentile(delays, 0.5), percentile(delays, 0.99), max(delays)
    run.probe_answered = len(probe.delays) / max(1, probe.sent)
    return run


def write_datafiles(root: Path, miss_names: int) -> dict[str, tuple[Path, Path]]:
    """The hits and misses files of each zone: h0..h499.<zone>, and m0..m<miss_names>.<zone>."""
    files = {}
    for zone in (UNSIGNED_ZONE, SIGNED_ZONE):
        hits = root / f"hits.{zone}.txt"
        hits.write_text("".join(f"h{i}.{zone} A\n" for i in range(BENCH_NAMES)))
        misses = root / f"misses.{zone}.txt"
        with misses.open("w") as f:
            for start in range(0, miss_names, 100_000):
                f.write("".join(f"m{i}.{zone} A\n" for i in range(start, min(miss_names, start + 100_000))))
        files[zone] = (hits, misses)
    return files


def check_answers(resolver: Resolver, zone: str) -> None:
    """The resolver answers the bench names right before it is measured; a validating one with
    AD set when asked with DO (dnsperf's own queries then go without)."""
    for name, expected in ((f"h7.{zone}", bench_address(7)), (f"check.{zone}", BENCH_WILDCARD_ADDRESS)):
        try:
            reply = query("127.0.0.1", name, "A", port=resolver.port, rd=True, timeout=5)
        except Exception as exc:
            raise ServerFailed(f"{resolver.label} did not answer {name}: {exc}") from None
        got = [str(rr.rdata) for rr in reply.rr]
        if got != [expected]:
            raise ServerFailed(f"{resolver.label} answered {name} with {got} (rcode {reply.header.rcode}), "
                               f"expected {expected}")
        if resolver.validating:
            result = dig("127.0.0.1", name, "A", "+dnssec", port=resolver.port, timeout=5)
            if result.status != "NOERROR" or "ad" not in result.flags:
                raise ServerFailed(f"{resolver.label} did not answer {name} (DO set) as secure: status "
                                   f"{result.status}, flags {' '.join(sorted(result.flags))}\n{result.text}")


def measure(kind: type[Resolver], hierarchy: DNSHierarchy, root: Path, files: dict[str, tuple[Path, Path]],
            args: argparse.Namespace, cpus: tuple[str | None, str | None]) -> list[Run]:
    runs: list[Run] = []
    for workload in args.workload or WORKLOADS:
        zone = zone_of(workload)
        hits, misses = files[zone]
        workdir = Path(tempfile.mkdtemp(prefix=f"{kind.name}-{workload.replace(' ', '-')}-", dir=root))
        resolver = kind(hierarchy, workdir, cpus[0], validating=workload in VALIDATED,
                        zone_limit=args.zone_limit if workload == "flood" else 0)
        print(f"  {kind.label}: {workload} ...", end="", flush=True, file=sys.stderr)
        try:
            resolver.start()
            check_answers(resolver, zone)
            # warm-up: every bench name once, gently (and the delegation to the zone for the misses;
            # validating, the keys of the chain of trust too)
            # (under a zone limit, slower than it)
            warm_rate = resolver.zone_limit * 4 // 5 if resolver.zone_limit else 5000
            warm = run_dnsperf(resolver, "warm-up", hits, duration=30, outstanding=20, clients=1, rate=warm_rate,
                               once=True, cpus=cpus[1])
            if warm.completed < BENCH_NAMES or warm.rcodes.get("NOERROR", 0) < BENCH_NAMES:
                raise ServerFailed(f"the warm-up got {warm.rcodes} for {BENCH_NAMES} names")
            if workload in ("cache hit", "validated hit"):
                run = run_dnsperf(resolver, workload, hits, duration=args.duration, outstanding=args.outstanding,
                                  clients=args.clients, cpus=cpus[1])
            elif workload == "latency":
                run = run_dnsperf(resolver, workload, hits, duration=args.duration, outstanding=100, clients=1,
                                  rate=LATENCY_QPS, verbose=True, cpus=cpus[1])
            elif workload == "flood":
                run = run_flood(resolver, misses, args, cpus[1])
            elif workload in ("cache miss", "validated miss"):
                run = run_dnsperf(resolver, workload, misses, duration=args.duration,
                                  outstanding=args.miss_outstanding, clients=args.clients, once=True, cpus=cpus[1])
            else:
                run = run_dnsperf(resolver, workload, hits, duration=args.duration, outstanding=args.outstanding,
                                  clients=args.clients, cpus=cpus[1], mode=workload.split()[0].lower())
            print(f" {run.qps:,.0f} q/s, {run.lost_percent:.2f} % lost, {run.noerror_percent:.1f} % NOERROR, "
                  f"cpu {100 * run.server_cpu:.0f} % (dnsperf {100 * run.dnsperf_cpu:.0f} %, {zone} NSD "
                  f"{100 * run.authoritative_cpu:.0f} %), {run.rcvbuf_drops:,} datagrams dropped at full socket "
                  "buffers" + (f", p99 {run.p99_ms:.2f} ms" if run.p99_ms else "")
                  + (f", probe answered {100 * run.probe_answered:.0f} %" if run.probe_answered is not None else ""),
                  file=sys.stderr)
        except ServerFailed as exc:
            print(" failed", file=sys.stderr)
            run = Run(kind.name, workload, workload in VALIDATED, error=str(exc))
        finally:
            resolver.stop()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        if resolver.dnstap:
            run.tapped = resolver.tapped
            print(f"    dnstap: the collector wrote {resolver.tapped or 0:,} frames", file=sys.stderr)
        runs.append(run)
        if run.error is not None and workload == "cache hit":
            break  # it did not even start or answer: the other workloads would fail the same way
    return runs


def better(run: Run, than: Run) -> bool:
    if run.workload == "flood" and run.probe_answered != than.probe_answered:
        return (run.probe_answered or 0) > (than.probe_answered or 0)
    if run.workload in ("latency", "flood"):
        return (run.p99_ms or float("inf")) < (than.p99_ms or float("inf"))
    return run.qps > than.qps


# --- the report


def unbound_version() -> str:
    result = subprocess.run(["unbound", "-V"], check=False, capture_output=True, text=True)
    first = result.stdout.splitlines()[0] if result.stdout else "?"
    return "unbound " + first.removeprefix("Version ")


def fmt_run(run: Run | None, latency: bool) -> str:
    if run is None:
        return f"{'':>9} {'':>6} {'':>5} {'':>20}"
    if run.error is not None:
        return f"{'failed':>9} {'':>6} {'':>5} {'':>20}"
    if latency:
        figures = f"{run.p50_ms or 0:.2f}/{run.p99_ms or 0:.2f}/{run.max_ms:.1f}"
    else:
        figures = f"{run.avg_ms:.2f}/{run.max_ms:.1f}"
    return f"{run.qps:>9,.0f} {run.lost_percent:>5.2f}% {100 * run.server_cpu:>4.0f}% {figures:>20}"


def print_table(names: list[str], results: dict[tuple[str, str], Run], zone_limit: int) -> None:
    width = len(fmt_run(None, False))
    head = f"{'workload':<14}  " + "  ".join(f"{RESOLVERS[n].label:-^{width}}" for n in names)
    sub = f"{'':<14}  " + "  ".join(f"{'q/s':>9} {'lost':>6} {'cpu':>5} {'latency ms':>20}" for _ in names)
    if len(names) == 2:
        head += f"  {'':>12}"
        sub += f"  {'ispd/unbound':>12}"
    head += f"  {'dnsperf':>7}"
    sub += f"  {'cpu':>7}"
    print(head)
    print(sub)
    for workload in ROWS:
        runs = [results.get((n, workload)) for n in names]
        if not any(runs):
            continue  # not measured this time (--workload)
        line = f"{workload:<14}  " + "  ".join(fmt_run(r, workload in ("latency", "flood")) for r in runs)
        if len(names) == 2:
            ispd, unbound = results.get(("ispd", workload)), results.get(("unbound", workload))
            if workload not in ("latency", "flood") and ispd and unbound and ispd.error is None \
                    and unbound.error is None and unbound.qps:
                line += f"  {ispd.qps / unbound.qps:>11.2f}x"
            elif workload in ("latency", "flood") and ispd and unbound and ispd.p99_ms and unbound.p99_ms:
                line += f"  {'p99 ' + format(ispd.p99_ms / unbound.p99_ms, '.2f') + 'x':>12}"
            else:
                line += f"  {'':>12}"
        gen = max((r.dnsperf_cpu for r in runs if r is not None and r.error is None), default=0.0)
        line += f"  {100 * gen:>6.0f}%"
        print(line)
    print(f"latency ms: avg/max at saturation; p50/p99/max at a fixed {LATENCY_QPS:,} q/s of cache hits")
    flooded = [results.get((n, "flood")) for n in names]
    if any(flooded):
        answered = ", ".join(f"{RESOLVERS[n].label} {100 * r.probe_answered:.0f} %"
                             for n, r in zip(names, flooded, strict=True)
                             if r is not None and r.probe_answered is not None)
        limit = f"zone limit {zone_limit} q/s (1 in 10 past it)" if zone_limit else "no zone limit"
        print(f"flood: {FLOOD_QPS:,} q/s of new {UNSIGNED_ZONE} names, {limit}; q/s: replies to the flood; "
              f"latency: a probe's new {SIGNED_ZONE} names at {PROBE_QPS} q/s meanwhile, p50/p99/max of those "
              f"answered ({answered})")
    print(f"validated hit/miss: {SIGNED_ZONE} (signed), both resolvers validating (AD); every other row: "
          f"{UNSIGNED_ZONE} (unsigned), neither validating; every query plain (no EDNS, no DO)")
    if len(names) == 2:
        for workload, target in TARGETS.items():
            ispd, unbound = results.get(("ispd", workload)), results.get(("unbound", workload))
            if ispd and unbound and ispd.error is None and unbound.error is None and unbound.qps:
                ratio = ispd.qps / unbound.qps
                verdict = f"{ratio:.2f}x {'✓' if ratio >= target else '✗'}"
            else:
                verdict = "not measured"
            print(f"target: {workload} ispd/unbound >= {target:.2f}x: {verdict}")


# --- running it all



def preflight(names: list[str], dnstap: bool) -> None:
    problems = []
    if "ispd" in names and not Path(ISPD).exists():
        problems.append(f"{ISPD} not found (run with the project's .venv/bin/python)")
    require("bench/dns.py", problems, ("nsd", "taskset", DNSPERF) + (("unbound",) if "unbound" in names else ())
            + (("fstrm_capture",) if dnstap else ()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15, help="seconds per run (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(RESOLVERS), help="measure one resolver only")
    parser.add_argument("--quick", action="store_true", help="5 s per run")
    parser.add_argument("--outstanding", type=int, default=200,
                        help="dnsperf -q for cache hits: queries in flight (default: %(default)s)")
    parser.add_argument("--miss-outstanding", type=int, default=200,
                        help="dnsperf -q for cache misses (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=8,
                        help="dnsperf -c: source ports dnsperf spreads its queries over (default: %(default)s)")
    parser.add_argument("--miss-names", type=int, default=0,
                        help="unique names in the cache-miss file (default: 100 000 per second of --duration)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over every run; each keeps its best round (default: %(default)s)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin dnsperf and the resolver to cores")
    parser.add_argument("--processes", type=int, default=1,
                        help="ispd's [dns] processes and Unbound's num-threads (default: %(default)s); more than 1 "
                             "implies --no-pin")
    parser.add_argument("--base", default=BASE, help="the lab hierarchy's addresses (default: %(default)s.0.0/16)")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (configs, logs, output)")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    parser.add_argument("--zone-limit", type=int, default=500,
                        help="flood: both resolvers' queries per second to one zone (ispd zone_rate_limit_qps, "
                             "Unbound ratelimit); 0: none (default: %(default)s)")
    parser.add_argument("--dnstap", action="store_true",
                        help="both resolvers send dnstap (client queries and responses) to fstrm_capture, a "
                             "collector on dnsperf's core: what logging every query costs")
    parser.add_argument("--workload", action="append", choices=WORKLOADS,
                        help="run only this workload (repeatable; default: all)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.quick:
        args.duration, args.repeat = 5, 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if 0 < args.zone_limit < 50:
        parser.error("--zone-limit must be 0 (none) or at least 50 (the warm-up's 500 names go below it)")
    miss_names = args.miss_names or int(100_000 * args.duration)
    names = [args.only] if args.only else ["ispd", "unbound"]
    preflight(names, args.dnstap)

    if args.processes < 1:
        parser.error("--processes must be at least 1")
    Resolver.processes = args.processes
    cpus, pinning = split_cpus(args.no_pin or args.processes > 1, "resolver", "dnsperf and the NSD servers")
    Resolver.dnstap, Resolver.collector_cpus = args.dnstap, cpus[1]

    stop_all_on_exit()

    root = Path(tempfile.mkdtemp(prefix="ispd-bench-dns-"))
    certificates = issue(root / "tls", "localhost", name="server")  # dnsperf does not verify it
    Resolver.tls = (certificates.certificate, certificates.private_key)
    hierarchy = DNSHierarchy(args.base, root / "hierarchy", cpus=cpus[1])
    results: dict[tuple[str, str], Run] = {}
    try:
        files = write_datafiles(root, miss_names)
        hierarchy.start()
        print("Recursive DNS: ispd vs unbound, iterating from the lab's root (NSD servers on "
              f"{args.base}.0.0/16), driven by dnsperf")
        load = os.getloadavg()[0]
        print(f"machine: {machine_summary()}; {pinning}; load average {load:.2f} at start"
              + (" (busy: expect noise)" if load > 0.5 else ""))
        if "unbound" in names:
            print(f"{unbound_version()}: num-threads {args.processes}, msg-cache 256m, rrset-cache 512m; iterator "
                  "only (no validation), but validator + iterator for the validated rows (aggressive-nsec off)")
        if "ispd" in names:
            print(f"ispd: [dns] processes = {args.processes}, cache.max_bytes 768m; [dns.dnssec] validation = "
                  "false, but true (trust anchor: the lab's root DS) for the validated rows")
        if args.dnstap:
            print("dnstap: both resolvers log every client query and response to fstrm_capture (a Unix socket; "
                  "the collector on dnsperf's core, writing to a file)")
        print(f"dnsperf: {args.duration:g} s per run, best of {args.repeat}, {args.clients} sockets, "
              f"{args.outstanding} queries in flight (hits), {args.miss_outstanding} (misses); "
              "fresh resolver per run")
        print()
        failed: dict[str, str] = {}
        # Rounds, each over both resolvers in turn, so a burst of load from elsewhere on the
        # machine hits one round's run, not all of one resolver's; each run keeps its best round.
        for round_ in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"round {round_}/{args.repeat}", file=sys.stderr)
            for name in names:
                if name in failed:
                    continue
                for run in measure(RESOLVERS[name], hierarchy, root, files, args, cpus):
                    best = results.get((name, run.workload))
                    if run.error is not None:
                        failed.setdefault(name, run.error)
                        results.setdefault((name, run.workload), run)
                    elif best is None or best.error is not None or better(run, best):
                        results[(name, run.workload)] = run
        print()
        print_table(names, results, args.zone_limit)
        measured = [r for r in results.values() if r.error is None]
        if any(r.dnsperf_cpu > 0.85 for r in measured):
            print("note: dnsperf used more than 85 % of its core in some runs; there it limits the figures too")
        if any(r.noerror_percent < 99 for r in measured):
            print("note: some runs had more than 1 % of replies other than NOERROR (see --json)")
        for name, error in failed.items():
            print(f"\n{RESOLVERS[name].label} failed:\n{error}")
            if name == "ispd":
                print("(ispd's DNS service needs [dns] enabled and answering on the configured listen address)")
        if args.json:
            args.json.write_text(json.dumps(
                [{**asdict(r), "lost_percent": r.lost_percent, "noerror_percent": r.noerror_percent}
                 for r in results.values()], indent=1))
    finally:
        stop_all()
        hierarchy.stop()
        keep_or_remove(root, args.keep)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
