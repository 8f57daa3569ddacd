"""What every benchmark script shares: the machine line of its report, the kernel's UDP drop
counter, the check for the tools it needs, exiting cleanly on a signal, CPU time of a process
tree, and ispd run as a daemon under test."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.lab.dnshier import descendants

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


RUNNING: list[BenchServer] = []


def stop_all() -> None:
    for server in list(RUNNING):
        server.stop()


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
