"""ispd as a real process, started the way an operator starts it (the ``ispd`` script), with
a systemd-style notify socket owned by the test, so tests wait for READY=1 instead of sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.lab import toml
from tests.lab.ports import free_tcp_port

ISPD = str(Path(sys.executable).with_name("ispd"))


def base_config(workdir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config for one test: its own store file, control socket and a free metrics port on
    loopback."""
    config: dict[str, Any] = {
        "daemon": {"shutdown_grace_seconds": 5, "store_poll_interval_seconds": 0.1,
                   "control_socket": str(workdir / "control.sock")},
        "store": {"path": str(workdir / "ispd.db")},
        "log": {"level": "debug", "format": "json"},
        "metrics": {"listen": f"127.0.0.1:{free_tcp_port()}"},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


class IspdProcess:
    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, *,
                 netns: str | None = None, env: dict[str, str] | None = None,
                 wrapper: Sequence[str] = (), output: int | None = None) -> None:
        """``netns``: run inside that network namespace; ``wrapper``: a command that execs the rest
        of its arguments (e.g. one that installs a seccomp filter first); ``output``: a descriptor
        for its stdout and stderr instead of the log file (a pipe the test reads, or does not)."""
        self.workdir = workdir
        self.config = config if config is not None else base_config(workdir)
        self.config_path = workdir / "ispd.toml"
        self.netns = netns
        self.wrapper = list(wrapper)
        self.extra_env = env or {}
        self.output = output
        self.log_path = workdir / "ispd.log"
        self.notifications: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None

    # --- running

    def write_config(self, config: dict[str, Any] | None = None) -> None:
        if config is not None:
            self.config = config
        toml.write(self.config_path, self.config)

    def start(self, *, wait_ready: bool = True, timeout: float = 15.0) -> IspdProcess:
        self.write_config()
        _check_snapshot_round_trip(self.config_path)
        notify_path = self.workdir / "notify.sock"
        with contextlib.suppress(FileNotFoundError):
            notify_path.unlink()
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), **self.extra_env}
        command = [*self.wrapper, ISPD, "run", "-c", str(self.config_path)]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        with self.log_path.open("ab") as log:
            output = log if self.output is None else self.output
            self.proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)
        if wait_ready:
            self.wait_for("READY=1", timeout)
        return self

    def wait_for(self, field: str, timeout: float = 10.0) -> list[str]:
        """Read notify datagrams until one carries ``field``; returns the datagrams read.

        Fails at once, with the log, when the process exits first."""
        assert self._notify is not None
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"ispd exited ({self.proc.returncode}) before {field}:\n{self.log_text()}")
            self._notify.settimeout(0.1)
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                continue
            seen.append(message)
            self.notifications.append(message)
            if field in message.split("\n"):
                return seen
        raise AssertionError(f"no {field} within {timeout} s (got {seen}):\n{self.log_text()}")

    def drain_notifications(self) -> list[str]:
        """Every datagram sent so far and not read yet (e.g. after the process exited)."""
        assert self._notify is not None
        self._notify.setblocking(False)
        try:
            while True:
                try:
                    self.notifications.append(self._notify.recv(4096).decode())
                except BlockingIOError:
                    return self.notifications
        finally:
            self._notify.setblocking(True)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def reload(self, timeout: float = 10.0) -> list[str]:
        self.signal(signal.SIGHUP)
        self.wait_for("RELOADING=1", timeout)
        return self.wait_for("READY=1", timeout)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def __enter__(self) -> IspdProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    # --- looking at it

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self, event: str) -> list[dict[str, Any]]:
        import json

        found = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    found.append(record)
        return found

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config['metrics']['listen']}"

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.http_get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    return float(sample.value)
        return None

    def worker_pids(self, instance: int | None = None) -> list[int]:
        """The daemon's worker processes (``ispd worker ...``), or only those of one ``instance``
        (2 and up: a service's extra processes)."""
        assert self.proc is not None
        pids = []
        for pid in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:  # gone since
                continue
            if b"worker" not in argv:
                continue
            if instance is None or argv[argv.index(b"--instance") + 1] == str(instance).encode():
                pids.append(int(pid))
        return pids

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([ISPD, *args, "-c", str(self.config_path)], capture_output=True, text=True,
                                input=input, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"ispd {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result


def _check_snapshot_round_trip(path: Path) -> None:
    """Every config the tests run reads back equal from the JSON the main process hands its
    workers (ispd.config.config_data): a field that did not would start a worker on another
    config, or not at all."""
    from ispd.config import Config, ConfigError, config_data, load_config

    try:
        config = load_config(path)
    except ConfigError:
        return  # a test of a bad config
    assert Config.model_validate(json.loads(json.dumps(config_data(config)))) == config, path


def eventually(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something truthy; return it, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(interval)


def interrupted_at_first_line(command: Sequence[str], first_line: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run ``command``, send it SIGINT (Ctrl-C) as soon as it prints a line starting with
    ``first_line``, and wait for it: its exit code and stderr."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(first_line), line
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


def read_to_end(fd: int) -> str:
    """All a pipe gives until its last writer closes it."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def connections_out_of_descriptors(pid: int, targets: Sequence[tuple[str, int]], count: int,
                                   source: Callable[[int], str], first_bytes: bytes = b"") -> list[socket.socket]:
    """``count`` connections to each of ``targets``, each from its own address (``source(i)``: no
    per-client cap applies), made while process ``pid`` can open no descriptor (its open-files
    limit lowered to its first free number: every accept fails EMFILE), then the limit given
    back after a second and a half of that. The caller closes them."""
    limit = Path(f"/proc/{pid}/limits").read_text().split("Max open files")[1].split()[1]
    held = {int(name) for name in os.listdir(f"/proc/{pid}/fd")}
    # The limit is on a descriptor's number, not on how many are open, and a new one takes the
    # lowest free number: at the first gap nothing more can be opened (a limit at the count left
    # the gaps above it usable, and accepts went on in a loaded CI run).
    first_gap = next(number for number in range(100_000) if number not in held)
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={first_gap}:{limit}"], check=True)
    waiting = []
    try:
        for index in range(count):
            for target in targets:
                sock = socket.socket()
                sock.bind((source(index), 0))
                sock.settimeout(2)
                with contextlib.suppress(OSError):
                    sock.connect(target)
                    if first_bytes:
                        sock.sendall(first_bytes)
                waiting.append(sock)
        time.sleep(1.5)  # (no scrape meanwhile: the metrics listener has no descriptor either)
    finally:
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"], check=True)
    return waiting
