"""What every benchmark script shares: the machine line of its report, the kernel's UDP drop
counter, the check for the tools it needs, exiting cleanly on a signal, CPU time of a process
tree, and ispd run as a daemon under test; and what the perfdhcp benchmarks (bench/dhcp.py,
bench/dhcp6.py) share: a server started fresh in a network namespace for each step, perfdhcp run
and read, the rounds of steps and the table of their figures."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.dnshier import descendants
from tests.lab.netns import Lab
from tests.lab.ports import free_tcp_port

# ISPD_BENCH_BIN: another command in ispd's place, e.g. a script that runs it under cProfile or perf.
ISPD = os.environ.get("ISPD_BENCH_BIN") or str(Path(sys.executable).with_name("ispd"))

# The sections every benchmark's ispd config starts with: its own store and control socket in
# the run's directory, quiet logs, metrics on a free port.
ISPD_CONFIG_HEAD = """\
[daemon]
shutdown_grace_seconds = 5
control_socket = "{workdir}/control.sock"
[store]
path = "{workdir}/ispd.db"
[log]
level = "warning"
format = "json"
[metrics]
listen = "127.0.0.1:{metrics_port}"
"""


class ServerFailed(RuntimeError):
    pass


def machine_summary() -> str:
    cores = os.cpu_count() or 1
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cores} cores ({model}), {len(os.sched_getaffinity(0))} usable"


class BenchServer:
    """A server the benchmark starts and must stop whatever happens (an error, Ctrl-C, SIGTERM):
    ``process`` is what runs — an ``IspdDaemon`` or a server of the test lab, each with
    ``stop()``, ``log_tail()`` and its ``proc`` (a Popen while it runs) — and ``_start`` starts it. Started
    servers are listed in ``RUNNING`` for ``stop_all`` at exit."""

    name = ""
    label = ""
    process: Any = None

    def _start(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        RUNNING.append(self)  # first: one that fails half-way is stopped too
        try:
            self._start()
        except RuntimeError as exc:  # the lab's servers say what went wrong
            raise ServerFailed(str(exc)) from None

    def stop(self) -> None:
        self.process.stop()
        if self in RUNNING:
            RUNNING.remove(self)

    @property
    def pid(self) -> int:
        proc = self.process.proc
        assert proc is not None, f"{self.name} is not running"
        return int(proc.pid)

    def alive(self) -> bool:
        proc = self.process.proc
        return proc is not None and proc.poll() is None

    def log_tail(self) -> str:
        return str(self.process.log_tail())


RUNNING: list[BenchServer | NetnsServer] = []


def stop_all() -> None:
    for server in list(RUNNING):
        server.stop()


def keep_or_remove(root: Path, keep: bool) -> None:
    """The end of a run: its working directory removed, or (``--keep``) said where it stays."""
    if keep:
        print(f"kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def udp_rcvbuf_errors() -> int:
    """The UDP RcvbufErrors counter of this network namespace (loopback traffic included)."""
    return udp_rcvbuf_errors_in(Path("/proc/net/snmp").read_text())


def udp_rcvbuf_errors_in(snmp: str) -> int:
    """UDP RcvbufErrors (datagrams the kernel dropped for a full socket buffer) from the text of
    /proc/net/snmp, which is per network namespace."""
    lines = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(lines) < 2 or "RcvbufErrors" not in lines[0]:
        return 0
    return int(lines[1][lines[0].index("RcvbufErrors")])


def udp6_rcvbuf_errors_in(snmp6: str) -> int:
    """The same for UDP over IPv6, from the text of /proc/net/snmp6 (one "name value" a line)."""
    for line in snmp6.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "Udp6RcvbufErrors":
            return int(fields[1])
    return 0


def raise_exit(signum: int, frame: object) -> None:
    """A signal handler: SIGTERM/SIGHUP unwind like Ctrl-C, so cleanup code runs."""
    raise SystemExit(128 + signum)


def stop_all_on_exit() -> None:
    """Every server started is stopped at exit, also after SIGTERM or SIGHUP."""
    atexit.register(stop_all)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_exit)


def split_cpus(no_pin: bool, server: str, generator: str) -> tuple[tuple[str | None, str | None], str]:
    """((the servers' cpu list, the load generator's cpu), a line that says so): the last usable
    core for the generator, the others for the servers; nothing pinned with --no-pin or one core.
    ``server`` and ``generator`` name them in that line."""
    usable = sorted(os.sched_getaffinity(0))
    if no_pin or len(usable) < 2:
        return (None, None), "not pinned"
    server_cpus = ",".join(map(str, usable[:-1]))
    return (server_cpus, str(usable[-1])), f"{server} on cpu {server_cpus}, {generator} on cpu {usable[-1]}"


def require(script: str, problems: list[str], tools: tuple[str, ...]) -> None:
    """Exit with one line naming everything missing (root, tools), or return."""
    problems = list(problems)
    if os.geteuid() != 0:
        problems.insert(0, "needs root")
    problems += [f"{tool} not found" for tool in tools if shutil.which(tool) is None]
    if problems:
        sys.exit(f"{script}: " + "; ".join(problems) + " — tools/setup --bench installs the tools")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants, plus what their waited-for
    children used."""
    total = 0
    for p in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def greets(port: int, greeting: bytes, timeout: float = 0.5) -> bool:
    """Something on 127.0.0.1:``port`` greets with a line starting with ``greeting``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            return sock.recv(512).startswith(greeting)
    except OSError:
        return False


def ispd_cli(config: Path, *args: str, stdin: str = "") -> None:
    """One admin command on a benchmark's config (``ispd subscriber add ...``)."""
    result = subprocess.run([ISPD, *args, "-c", str(config)], capture_output=True, text=True, timeout=60,
                            check=False, input=stdin)
    if result.returncode != 0:
        raise ServerFailed(f"ispd {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


class IspdDaemon:
    """``ispd run`` on a config the benchmark wrote, pinned to ``cpus``, its output in a file;
    ``start`` returns once ``ready()`` says so (the service answers), ``stop`` sends SIGTERM."""

    def __init__(self, workdir: Path, cpus: str | None, *, preexec: Callable[[], None] | None = None) -> None:
        self.workdir, self.cpus, self.preexec = workdir, cpus, preexec
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = workdir / "ispd.out"

    def start(self, config: str, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Run ispd on ``config`` (the text); ``what`` names the readiness check in errors."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "ispd.toml"
        path.write_text(config)
        command: Sequence[str] = [ISPD, "run", "-c", str(path)]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, preexec_fn=self.preexec)  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"ispd exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise ServerFailed(f"ispd did not {what} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.output.exists():
            return "(no output)"
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:]) or "(no output)"


# --- perfdhcp benchmarks: bench/dhcp.py (DHCPv4 DORA) and bench/dhcp6.py (DHCPv6 SARR)

PERFDHCP = "/usr/sbin/perfdhcp"
DROP_WAIT_US = 1_000_000  # perfdhcp -W: after the period, wait this long for late replies


class NetnsServer:
    """One server process in a network namespace, started fresh for one step: pinned to
    ``cpus``, ready once something listens on UDP ``port`` there (and ``ready()`` agrees),
    stopped by its PID. Started servers are listed in ``RUNNING`` for ``stop_all`` at exit."""

    name = ""
    label = ""
    port = 0

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
        RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"{self.label} exited ({self.proc.returncode}) while starting:\n{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise ServerFailed(f"{self.label} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        listening = self.lab.run(self.netns, "ss", "-Hlun", f"sport = :{self.port}").stdout
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
        if self in RUNNING:
            RUNNING.remove(self)

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


class IspdInNetns(NetnsServer):
    """``ispd run`` on the config ``config_text()`` makes; ready once /healthz says so too."""

    name, label = "ispd", "ispd"

    def __init__(self, lab: Lab, netns: str, interface: str, workdir: Path, cpus: str | None) -> None:
        super().__init__(lab, netns, interface, workdir, cpus)
        self.metrics_port = free_tcp_port()  # free here, so surely free in the new namespace
        self.config = workdir / "ispd.toml"

    def config_text(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        self.config.write_text(self.config_text())
        return [ISPD, "run", "-c", str(self.config)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        return env

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        probe = ("import sys, urllib.request\n"
                 f"try: sys.exit(0 if urllib.request.urlopen({url!r}, timeout=1).status == 200 else 1)\n"
                 "except Exception: sys.exit(1)")
        healthy = self.lab.run(self.netns, sys.executable, "-c", probe).returncode == 0
        return healthy and super().ready()

    def bound_leases(self) -> list[dict[str, Any]] | None:
        """The store's bound leases and bindings, read the operator's way once ispd has stopped."""
        result = subprocess.run([ISPD, "lease", "list", "--json", "-c", str(self.config)],
                                check=False, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            return None
        try:
            return [lease for lease in json.loads(result.stdout) if lease.get("state") == "bound"]
        except (ValueError, TypeError, AttributeError):
            return None


class KeaInNetns(NetnsServer):
    """A Kea server on the config ``config()`` makes, its pid and lock files in the step's directory."""

    name = "kea"
    binary = ""
    threads = 0  # multi-threading's thread-pool-size; 0: single-threaded

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def multi_threading(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"enable-multi-threading": self.threads > 0}
        if self.threads > 0:
            settings |= {"thread-pool-size": self.threads, "packet-queue-size": 64}
        return settings

    def command(self) -> list[str]:
        config = self.workdir / f"{Path(self.binary).name}.json"
        config.write_text(json.dumps(self.config(), indent=1))
        return [self.binary, "-c", str(config)]

    def env(self) -> dict[str, str]:
        # Pid and logger lock files go to the step's directory, not /run/kea (no system instance
        # is touched, and two runs never collide).
        return {**os.environ, "KEA_PIDFILE_DIR": str(self.workdir), "KEA_LOCKFILE_DIR": str(self.workdir)}

    def extra_logs(self) -> list[Path]:
        return [self.workdir / "kea.log"]

    @classmethod
    def version(cls) -> str:
        result = subprocess.run([cls.binary, "-v"], check=False, capture_output=True, text=True)
        return result.stdout.strip() or "?"


@dataclass
class Exchange:
    """One pair of perfdhcp's report (DISCOVER-OFFER, REQUEST-REPLY, ...)."""

    sent: int = 0
    received: int = 0
    drops: int = 0
    orphans: int = 0
    min_ms: float = 0.0
    avg_ms: float = 0.0
    max_ms: float = 0.0


@dataclass
class Step:
    """One server at one offered rate: perfdhcp's two pairs, ``offer`` (DISCOVER-OFFER or
    SOLICIT-ADVERTISE) and ``bind`` (REQUEST-ACK or REQUEST-REPLY), and what it cost."""

    server: str
    rate: int
    period: int
    offer: Exchange = field(default_factory=Exchange)
    bind: Exchange = field(default_factory=Exchange)
    server_cpu: float = 0.0  # share of one core over the period
    perfdhcp_cpu: float = 0.0
    server_rcvbuf_drops: int = 0  # requests the kernel dropped: the server's socket buffer was full
    client_rcvbuf_drops: int = 0  # replies dropped the same way at perfdhcp's socket
    persisted: int | None = None
    error: str | None = None

    @property
    def completed(self) -> int:
        return self.bind.received

    @property
    def per_second(self) -> float:
        """Completed exchanges per second of the period."""
        return self.completed / self.period

    @property
    def lost_percent(self) -> float:
        return 100.0 * (1 - self.completed / self.offer.sent) if self.offer.sent else 100.0

    @property
    def avg_ms(self) -> float:
        """The mean delay of a reply (either pair's), as max_ms is the longest."""
        replies = self.offer.received + self.bind.received
        return ((self.offer.avg_ms * self.offer.received + self.bind.avg_ms * self.bind.received) / replies
                if replies else 0.0)

    @property
    def max_ms(self) -> float:
        return max(self.offer.max_ms, self.bind.max_ms)


@dataclass(frozen=True)
class PerfdhcpLoad:
    """How one benchmark runs perfdhcp: ``arguments`` before the rate (-4 or -6, where to send
    from) and ``target`` (the server) after; ``pairs``, what its report calls the two exchanges;
    ``unit``, what one full exchange is called ("DORA", "SARR"); ``ipv6``: which UDP counters
    count the kernel's drops."""

    arguments: tuple[str, ...]
    target: str
    pairs: tuple[str, str]
    unit: str
    ipv6: bool = False


_SECTION = re.compile(r"\*\*\*Statistics for: ([A-Z]+-[A-Z]+)\*\*\*")
_FIELD = re.compile(r"^(sent packets|received packets|drops|orphans|min delay|avg delay|max delay):\s*([-\d.eE+]+)",
                    re.M)
_KEYS = {"sent packets": "sent", "received packets": "received", "drops": "drops", "orphans": "orphans",
         "min delay": "min_ms", "avg delay": "avg_ms", "max delay": "max_ms"}


def parse_perfdhcp(text: str) -> dict[str, Exchange]:
    """perfdhcp's final report: each "Statistics for: X-Y" section by its name."""
    parts = _SECTION.split(text)
    found: dict[str, Exchange] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        exchange = Exchange()
        for key, value in _FIELD.findall(body):
            attr = _KEYS[key]
            setattr(exchange, attr, type(getattr(exchange, attr))(float(value)))
        found[name] = exchange
    return found


def run_perfdhcp(lab: Lab, netns: str, load: PerfdhcpLoad, rate: int, period: int, clients: int, cpus: str | None,
                 workdir: Path) -> tuple[dict[str, Exchange], float, str]:
    """perfdhcp in ``netns`` at ``rate`` for ``period`` s: its report, the share of a core it
    used, its output. Killed if it is not done 30 s after it should be."""
    # -g multi: a receiver thread of its own drains the socket at once, so a server that answers in
    # bursts (one group commit, then a batch of replies) does not lose replies at perfdhcp's one
    # socket, where real clients would each have their own; single-threaded perfdhcp loses hundreds there.
    command = [PERFDHCP, *load.arguments, "-g", "multi", "-r", str(rate), "-R", str(clients),
               "-p", str(period), "-W", str(DROP_WAIT_US), load.target]
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


def netns_udp_rcvbuf_errors(lab: Lab, netns: str, ipv6: bool = False) -> int:
    if ipv6:
        return udp6_rcvbuf_errors_in(lab.run(netns, "cat", "/proc/net/snmp6").stdout)
    return udp_rcvbuf_errors_in(lab.run(netns, "cat", "/proc/net/snmp").stdout)


def measure_step(kind: type[NetnsServer], lab: Lab, server_ns: str, client_ns: str, interface: str, root: Path,
                 load: PerfdhcpLoad, rate: int, duration: int, clients: int,
                 cpus: tuple[str | None, str | None], keep: bool) -> Step:
    """One step: a fresh server of ``kind`` in ``server_ns``, perfdhcp at ``rate`` from
    ``client_ns``, the server stopped; errors are in the step, not raised."""
    period = max(1, min(duration, clients // rate))  # perfdhcp -p takes whole seconds
    step = Step(kind.name, rate, period)
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind.name}-{rate}-", dir=root))
    server = kind(lab, server_ns, interface, workdir, cpus[0])
    try:
        server.start()
        cpu_before = server.cpu_seconds()
        server_drops = netns_udp_rcvbuf_errors(lab, server_ns, load.ipv6)
        client_drops = netns_udp_rcvbuf_errors(lab, client_ns, load.ipv6)
        stats, step.perfdhcp_cpu, text = run_perfdhcp(lab, client_ns, load, rate, period, clients, cpus[1], workdir)
        step.server_cpu = (server.cpu_seconds() - cpu_before) / (period + DROP_WAIT_US / 1e6)
        step.server_rcvbuf_drops = netns_udp_rcvbuf_errors(lab, server_ns, load.ipv6) - server_drops
        step.client_rcvbuf_drops = netns_udp_rcvbuf_errors(lab, client_ns, load.ipv6) - client_drops
        if any(pair not in stats for pair in load.pairs):
            raise ServerFailed(f"could not read perfdhcp's report:\n{text[-2000:]}")
        step.offer, step.bind = stats[load.pairs[0]], stats[load.pairs[1]]
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


def filesystem(path: Path) -> str:
    result = subprocess.run(["df", "--output=fstype", str(path)], check=False, capture_output=True, text=True)
    return result.stdout.split()[-1] if result.returncode == 0 else "?"


def add_perfdhcp_arguments(parser: argparse.ArgumentParser, servers: Sequence[str], pool_size: int) -> None:
    """The options every perfdhcp benchmark takes."""
    parser.add_argument("--rates", default="1000,2000,4000,6000,8000,10000",
                        help="offered exchanges/s, comma-separated (default: %(default)s)")
    parser.add_argument("--duration", type=int, default=12,
                        help="seconds per step, at most --clients/rate (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=60_000,
                        help=f"distinct simulated clients, at most {pool_size:,} (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds over all steps; each step keeps its best round (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(servers), help="measure one server only")
    parser.add_argument("--quick", action="store_true", help="two rates (1000, 4000), 5 s each, one round")
    parser.add_argument("--kea-threads", type=int, default=0,
                        help="Kea's multi-threading thread-pool-size; 0: single-threaded (default)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin perfdhcp and the server to cores")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the lease stores go; a real disk, not tmpfs (default: %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each step's directory (configs, logs, perfdhcp output, lease stores)")
    parser.add_argument("--json", type=Path, help="also write every step's figures to this file")


def perfdhcp_plan(parser: argparse.ArgumentParser, args: argparse.Namespace, pool_size: int) -> tuple[list[int], int]:
    """(offered rates, seconds per step) from the options, which --quick overrides; exits on nonsense."""
    rates = [1000, 4000] if args.quick else [int(r) for r in args.rates.split(",") if r.strip()]
    duration = 5 if args.quick else args.duration
    if args.quick:
        args.repeat = 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 1 <= args.clients <= pool_size:
        parser.error(f"--clients must be 1..{pool_size} (the pool's size), not {args.clients}")
    if not rates or min(rates) < 1:
        parser.error("--rates: give positive rates")
    return rates, duration


Results = dict[tuple[str, int], Step]


def run_rounds(names: list[str], labels: dict[str, str], rates: list[int], repeat: int, unit: str,
               measure: Callable[[str, int], Step], stored_per_exchange: int = 1) -> tuple[Results, dict[str, str]]:
    """Every rate for every server, ``repeat`` times over; each step keeps its best round. A
    server that fails is not measured further. Progress goes to stderr. Returns the steps and
    the failures, by server. ``stored_per_exchange``: leases a completed exchange leaves in the
    store (2 for an address and a delegated prefix)."""

    def run_step(name: str, rate: int, round_: int) -> Step:
        tag = f" (round {round_}/{repeat})" if repeat > 1 else ""
        print(f"  {labels[name]} at {rate:,}/s{tag} ...", end="", flush=True, file=sys.stderr)
        step = measure(name, rate)
        if step.error is not None:
            print(" failed", file=sys.stderr)
            return step
        stored = "?" if step.persisted is None else f"{step.persisted:,}"
        print(f" {step.per_second:,.0f} {unit}/s, {step.lost_percent:.2f} % lost "
              f"(full socket buffers dropped {step.server_rcvbuf_drops:,} requests at the server, "
              f"{step.client_rcvbuf_drops:,} replies at perfdhcp); "
              f"{step.completed:,} exchanges completed, {stored} leases in the store", file=sys.stderr)
        if step.persisted is not None and step.persisted < step.completed * stored_per_exchange:
            print(f"  warning: {labels[name]} completed {step.completed:,} exchanges but its store "
                  f"holds {step.persisted:,} leases", file=sys.stderr)
        return step

    results: Results = {}
    failed: dict[str, str] = {}
    # Rounds, each over every rate and server in turn, so a burst of load from elsewhere on the
    # machine hits one round's step, not all of a server's; each step keeps its best round.
    for round_ in range(1, repeat + 1):
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
    return results, failed


def _cell(step: Step | None) -> str:
    if step is None:
        return f"{'':>8} {'':>6} {'':>7} {'':>7} {'':>5}"
    if step.error is not None:
        return f"{'failed':>8} {'':>6} {'':>7} {'':>7} {'':>5}"
    return (f"{step.per_second:>8,.0f} {step.lost_percent:>6.2f} {step.avg_ms:>7.2f} {step.max_ms:>7.1f} "
            f"{100 * step.server_cpu:>4.0f}%")


def print_table(rates: list[int], names: list[str], labels: dict[str, str], results: Results, unit: str) -> None:
    width = len(_cell(None))
    per_second = f"{unit}/s"
    head = f"{'offered':>8} {'period':>6}  " + "  ".join(f"{labels[n]:-^{width}}" for n in names)
    sub = f"{per_second:>8} {'s':>6}  " + "  ".join(
        f"{per_second:>8} {'lost%':>6} {'avg ms':>7} {'max ms':>7} {'cpu':>5}" for _ in names)
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
        line = f"{rate:>8,} {period:>6}  " + "  ".join(_cell(s) for s in steps)
        if len(names) == 2:
            kea, ispd = results.get(("kea", rate)), results.get(("ispd", rate))
            if kea and ispd and kea.error is None and ispd.error is None and kea.completed:
                line += f"  {ispd.per_second / kea.per_second:>7.2f}x"
            else:
                line += f"  {'':>8}"
        gen = max((s.perfdhcp_cpu for s in steps if s is not None and s.error is None), default=0.0)
        line += f"  {100 * gen:>7.0f}%"
        print(line)


def print_summary(rates: list[int], names: list[str], labels: dict[str, str], results: Results, unit: str) -> None:
    def good(step: Step | None) -> bool:
        return step is not None and step.error is None and step.lost_percent < 1.0

    print()
    for name in names:
        steps = [s for r in rates if (s := results.get((name, r))) is not None and s.error is None]
        if steps:
            best = max(steps, key=lambda s: s.per_second)
            print(f"{labels[name]:>10}: best {best.per_second:,.0f} {unit}/s completed "
                  f"(offered {best.rate:,}/s, {best.lost_percent:.2f} % lost)")
        else:
            print(f"{labels[name]:>10}: no step completed")
    measured = {n for (n, _), s in results.items() if s.error is None}
    if len(names) == 2 and measured == set(names):
        both = [r for r in rates if good(results.get(("kea", r))) and good(results.get(("ispd", r)))]
        if both:
            r = both[-1]
            kea, ispd = results[("kea", r)], results[("ispd", r)]
            print(f"highest offered rate where both lose < 1 %: {r:,}/s — ispd {ispd.per_second:,.0f} "
                  f"{unit}/s, kea {kea.per_second:,.0f} {unit}/s, ratio ispd/kea "
                  f"{ispd.per_second / kea.per_second:.2f}")
        else:
            print("no offered rate where both servers lose < 1 %")
        bests = {n: max((s.per_second for r in rates if (s := results.get((n, r))) and s.error is None),
                        default=0.0) for n in names}
        if bests["kea"] and bests["ispd"]:
            print(f"best against best: ispd/kea {bests['ispd'] / bests['kea']:.2f}")


def print_report(rates: list[int], names: list[str], labels: dict[str, str], results: Results,
                 failed: dict[str, str], unit: str, json_path: Path | None) -> None:
    """The table, the summary, what limits the figures, the failures; every step to ``json_path``."""
    print()
    print_table(rates, names, labels, results, unit)
    print_summary(rates, names, labels, results, unit)
    measured = [s for s in results.values() if s.error is None]
    if any(s.perfdhcp_cpu > 0.85 for s in measured):
        print("note: perfdhcp used more than 85 % of its core at some rates; there it limits the figures too")
    if any(s.offer.sent < 0.97 * s.rate * s.period for s in measured):
        print("note: perfdhcp fell more than 3 % short of the offered rate at some steps (see --json)")
    for name, error in failed.items():
        print(f"\n{labels[name]} failed, and was not measured further:\n{error}")
    if json_path:
        json_path.write_text(json.dumps(
            [{**asdict(s), f"{unit.lower()}_per_second": s.per_second, "lost_percent": s.lost_percent}
             for s in results.values()], indent=1))
