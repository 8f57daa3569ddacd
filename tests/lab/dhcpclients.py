"""Real DHCP clients (busybox udhcpc, ISC dhclient, dhcpcd) in a lab namespace, and a way to send
hand-made DHCP datagrams from there, for integration tests of a DHCP server.

Each client runs in the foreground inside the client namespace with a hook script of ours in
place of the distribution's: the script appends every event (the client's reason and the
environment it was given) as one JSON line to a file in the test's directory, and sets or
removes the leased address and default route on the interface (udhcpc and dhclient leave that
to their script; dhcpcd does it itself). ``ClientEvent`` is the same view of all three.

The clients' state (lease files, pid files, dhcpcd's DUID and control sockets) lives in the
test's directory; dhcpcd, whose directories are compiled in, runs in a private mount namespace
with /var/lib/dhcpcd and /run bind-mounted from there. Every process a client starts is ended
by its id when the client is closed, also when the test fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.lab.netns import Lab, _check_allowed
from tests.lab.process import IspdProcess

REPO = Path(__file__).resolve().parents[2]
_counter = itertools.count()

# --- topology ----------------------------------------------------------------------------------


def client_link(lab: Lab, server_ns: str, server_address: str, client_ns: str,
                client_mac: str | None = None) -> tuple[str, str]:
    """A veth pair with an address (CIDR form) on the server end only: the client end gets its
    address by DHCP. Both ends go away with their namespaces."""
    _check_allowed(server_address)
    index = next(_counter)
    server_end, client_end = f"ds{lab.tag}{index}"[-15:], f"dc{lab.tag}{index}"[-15:]
    _ip("link", "add", server_end, "netns", server_ns, "type", "veth", "peer", "name", client_end,
        "netns", client_ns)
    _ip("-n", server_ns, "addr", "add", server_address, "dev", server_end)
    _ip("-n", server_ns, "link", "set", server_end, "up")
    if client_mac:
        _ip("-n", client_ns, "link", "set", client_end, "address", client_mac)
    _ip("-n", client_ns, "link", "set", client_end, "up")
    return server_end, client_end


def set_mac(ns: str, interface: str, mac: str) -> None:
    """Give ``interface`` another MAC address, so that the next client run is another client."""
    _ip("-n", ns, "link", "set", interface, "address", mac)


def interface_addresses(ns: str, interface: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", interface],
                         capture_output=True, text=True, check=True).stdout
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out) for a in link.get("addr_info", [])]


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


# --- what a client reports ---------------------------------------------------------------------


@dataclass(frozen=True)
class ClientEvent:
    """One call of a client's hook script, normalized across clients.

    ``reason`` is upper case: BOUND, RENEW, REBIND, REBOOT (a lease obtained or confirmed),
    RELEASE, NAK, FAIL, EXPIRE, DECONFIG, STOP and the clients' own others (PREINIT, ...)."""

    client: str
    reason: str
    address: str | None = None
    mask: str | None = None
    routers: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    domain: str | None = None
    lease_seconds: int | None = None
    server_id: str | None = None
    mtu: int | None = None
    ntp: tuple[str, ...] = ()
    # As the client spells option 121 (each client its own way; see ``static_routes``).
    static_routes_raw: str | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def bound(self) -> bool:
        return self.reason in BOUND_REASONS and self.address is not None

    @property
    def static_routes(self) -> list[tuple[str, str]]:
        """Option 121 as (destination/prefix, router) pairs."""
        raw = (self.static_routes_raw or "").replace(",", " ").split()
        if not raw:
            return []
        if self.client == "dhclient":  # a byte list: width, significant octets, router
            octets = [int(x) for x in raw]
            routes, i = [], 0
            while i < len(octets):
                width = octets[i]
                n = (width + 7) // 8
                dest = octets[i + 1 : i + 1 + n] + [0] * (4 - n)
                router = octets[i + 1 + n : i + 5 + n]
                routes.append((f"{'.'.join(map(str, dest))}/{width}", ".".join(map(str, router))))
                i += 5 + n
            return routes
        # udhcpc and dhcpcd: "destination/prefix router" pairs
        return [(raw[i], raw[i + 1]) for i in range(0, len(raw) - 1, 2)]


BOUND_REASONS = frozenset({"BOUND", "RENEW", "REBIND", "REBOOT"})


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(value.split()) if value else ()


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _mask_from_prefix(value: str | None) -> str | None:
    if not value:
        return None
    if value.isdigit():
        return str(ipaddress.IPv4Network(f"0.0.0.0/{value}").netmask)
    return value


def _event_from_udhcpc(argv: list[str], env: dict[str, str]) -> ClientEvent:
    return ClientEvent(
        client="udhcpc", reason=(argv[0] if argv else "?").upper(), address=env.get("ip"),
        mask=_mask_from_prefix(env.get("subnet") or env.get("mask")), routers=_split(env.get("router")),
        dns=_split(env.get("dns")), domain=env.get("domain"), lease_seconds=_int(env.get("lease")),
        server_id=env.get("serverid"), mtu=_int(env.get("mtu")), ntp=_split(env.get("ntpsrv")),
        static_routes_raw=env.get("staticroutes"), env=env,
    )


def _event_from_isc_style(client: str, env: dict[str, str]) -> ClientEvent:
    """dhclient and dhcpcd both use dhclient-script's variable names (``new_*``)."""
    reason = env.get("reason", "?").upper()
    prefix = "old_" if reason in {"RELEASE", "EXPIRE", "STOP", "STOPPED", "NAK"} else "new_"

    def get(name: str) -> str | None:
        return env.get(prefix + name) or None

    return ClientEvent(
        client=client, reason=reason, address=get("ip_address"), mask=get("subnet_mask"),
        routers=_split(get("routers")), dns=_split(get("domain_name_servers")), domain=get("domain_name"),
        lease_seconds=_int(get("dhcp_lease_time")), server_id=get("dhcp_server_identifier"),
        mtu=_int(get("interface_mtu")), ntp=_split(get("ntp_servers")),
        static_routes_raw=get("rfc3442_classless_static_routes") or get("classless_static_routes"), env=env,
    )


# The hook script: do what the distribution's script would do to the interface (udhcpc and
# dhclient only; dhcpcd configures it itself), then log the event — in that order, so that a test
# that saw the event finds the interface configured. It runs inside the client's namespace, so
# `ip` changes only that namespace.
_HOOK = '''#!{python}
import json, os, subprocess, sys, time
EVENTS, STYLE = {events!r}, {style!r}
env = dict(os.environ)

def ip(*args):
    subprocess.run(["ip", *args], capture_output=True)

if STYLE == "udhcpc":
    what, dev = (sys.argv[1] if len(sys.argv) > 1 else ""), env.get("interface", "")
    if what in ("bound", "renew"):
        ip("addr", "flush", "dev", dev)
        ip("addr", "add", env["ip"] + "/" + env.get("mask", "32"), "dev", dev)
        if env.get("router"):
            ip("route", "replace", "default", "via", env["router"].split()[0], "dev", dev)
    elif what in ("deconfig", "nak", "leasefail"):
        ip("addr", "flush", "dev", dev)
elif STYLE == "dhclient":
    reason, dev = env.get("reason", ""), env.get("interface", "")
    if reason in ("BOUND", "RENEW", "REBIND", "REBOOT"):
        new = env["new_ip_address"] + "/" + env.get("new_subnet_mask", "255.255.255.255")
        if env.get("old_ip_address") != env["new_ip_address"]:
            ip("addr", "flush", "dev", dev)
        ip("addr", "replace", new, "dev", dev)
        if env.get("new_routers"):
            ip("route", "replace", "default", "via", env["new_routers"].split()[0], "dev", dev)
    elif reason in ("EXPIRE", "FAIL", "RELEASE", "STOP"):
        ip("addr", "flush", "dev", dev)

with open(EVENTS, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": env, "time": time.time()}}) + "\\n")
'''


class DHCPClient:
    """One client program on one interface; a context manager that ends its processes."""

    kind = "?"

    def __init__(self, lab: Lab, ns: str, interface: str, workdir: Path) -> None:
        self.lab, self.ns, self.interface = lab, ns, interface
        self.dir = workdir / f"{self.kind}-{interface}-{next(_counter)}"
        self.dir.mkdir(parents=True)
        self.events_path = self.dir / "events.jsonl"
        self.output_path = self.dir / "output.log"
        self.script = self.dir / "hook"
        self.script.write_text(_HOOK.format(python=sys.executable, events=str(self.events_path), style=self.kind))
        self.script.chmod(0o755)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None  # the long-running client, if any

    # --- processes

    def _command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def _spawn(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        with self.output_path.open("ab") as out:
            out.write(f"$ {' '.join(command)}\n".encode())
            out.flush()
            # A session of its own: ``close`` can end whatever the client forked, by its group id.
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def _run(self, command: Sequence[str], timeout: float = 30.0) -> int:
        proc = self._spawn(command)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._end(proc)
            raise AssertionError(f"{self.kind}: {' '.join(command)} did not finish within {timeout} s\n"
                                 f"{self.output()}") from None

    def _end(self, proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM, grace: float = 5.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        # Whatever the client forked and left behind (dhcpcd's helpers, a daemonized dhclient).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        for proc in self.procs:
            self._end(proc)
        self.proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what every client does (see each for how)

    def obtain(self, *, timeout: float = 25.0) -> ClientEvent | None:
        """Start the client; the event of the lease it got, or None."""
        raise NotImplementedError

    def renew(self, timeout: float = 15.0) -> ClientEvent | None:
        """Have the running client ask for its address again; the event of the confirmation."""
        raise NotImplementedError

    def release(self, timeout: float = 15.0) -> ClientEvent | None:
        """Have the client send a RELEASE; the event it reported, or None."""
        raise NotImplementedError

    def stop(self) -> None:
        """End the client without a RELEASE."""
        if self.proc is not None:
            self._end(self.proc)
            self.proc = None

    # --- events

    def _parse(self, record: dict[str, Any]) -> ClientEvent:
        raise NotImplementedError

    def events(self) -> list[ClientEvent]:
        if not self.events_path.exists():
            return []
        events = []
        for line in self.events_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                events.append(self._parse(json.loads(line)))
        return events

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def wait_event(self, reasons: Iterable[str], *, after: int, timeout: float,
                   proc: subprocess.Popen[bytes] | None = None) -> ClientEvent | None:
        """The first event numbered ``after`` or later whose reason is one of ``reasons``; None
        when ``timeout`` passes or ``proc`` exits first."""
        wanted = set(reasons)
        deadline = time.monotonic() + timeout
        while True:
            exited = proc is not None and proc.poll() is not None
            for event in self.events()[after:]:
                if event.reason in wanted:
                    return event
            if exited or time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def _start_and_wait(self, command: Sequence[str], reasons: Iterable[str], timeout: float) -> ClientEvent | None:
        before = len(self.events())
        self.proc = self._spawn(command)
        return self.wait_event(reasons, after=before, timeout=timeout, proc=self.proc)

    def describe(self) -> str:
        """For assertion messages: what the client printed and the events it reported."""
        events = "\n".join(f"  {e.reason} {e.address} server={e.server_id}" for e in self.events())
        return f"--- {self.kind} output:\n{self.output()}\n--- events:\n{events}"


class Udhcpc(DHCPClient):
    """busybox udhcpc. Runs in the foreground while bound: SIGUSR1 renews, SIGUSR2 releases."""

    kind = "udhcpc"

    def _parse(self, record: dict[str, Any]) -> ClientEvent:
        return _event_from_udhcpc(record["argv"], record["env"])

    def obtain(self, *, requested: str | None = None, client_id: str | None = None, tries: int = 3,
               timeout: float = 20.0, release_on_exit: bool = False, vendor_class: str | None = None,
               ask: Sequence[int] = ()) -> ClientEvent | None:
        """Start udhcpc and wait for a lease (None: no lease within ``tries`` DISCOVERs).

        ``requested``: ask for this address (option 50 in the DISCOVER); ``vendor_class``: send
        it as option 60 (else udhcpc sends "udhcp 1.35.0"); ``ask``: more option codes to ask for
        in option 55. udhcpc hands its script every option of the reply, those it has no name
        for as ``opt<code>`` in hex."""
        command = self._command("udhcpc", "-f", "-i", self.interface, "-s", str(self.script),
                                "-t", str(tries), "-T", "2", "-A", "1", "-n",
                                "-O", "staticroutes", "-O", "ntpsrv", "-O", "mtu", "-O", "domain",
                                "-O", "114", *(arg for code in ask for arg in ("-O", str(code))))
        if vendor_class is not None:
            command += ["-V", vendor_class]
        if requested:
            command += ["-r", requested]
        if client_id:
            command += ["-x", f"0x3d:{client_id}"]
        if release_on_exit:
            command.append("-R")
        return self._start_and_wait(command, {"BOUND"}, timeout)

    def renew(self, timeout: float = 15.0) -> ClientEvent | None:
        assert self.proc is not None and self.proc.poll() is None, "udhcpc is not running"
        before = len(self.events())
        self.proc.send_signal(signal.SIGUSR1)
        return self.wait_event({"RENEW", "BOUND"}, after=before, timeout=timeout, proc=self.proc)

    def release(self, timeout: float = 15.0) -> ClientEvent | None:
        """Send a RELEASE (SIGUSR2); udhcpc then calls its script with ``deconfig``."""
        assert self.proc is not None and self.proc.poll() is None, "udhcpc is not running"
        before = len(self.events())
        self.proc.send_signal(signal.SIGUSR2)
        return self.wait_event({"DECONFIG"}, after=before, timeout=timeout, proc=self.proc)


def wait_for_pid_file(proc: subprocess.Popen[bytes] | None, pid_file: Path, output: Callable[[], str],
                      bound_line: str, timeout: float = 5.0) -> None:
    """Wait until the running dhclient has rewritten ``pid_file`` after its last binding (or it
    exits, or ``timeout`` passes).

    dhclient -d writes its pid file as it starts, and again each time it has bound (go_daemon:
    O_TRUNC, then the pid), right after it printed the binding's times (``bound_line``), which is
    after the script's call and the lease file that ``obtain`` waits for. ``dhclient -r`` ends the
    client named there: reading it while it is rewritten, it finds it empty and ends nobody, and
    the client goes on (CI, twice for dhclient -6: no "Killed old client process")."""
    if proc is None:
        return
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        this_run = output().rsplit("\n$ ", 1)[-1]  # (the harness writes "$ command" before each)
        if bound_line in this_run:
            time.sleep(0.1)  # the rewrite follows the line at once
            with contextlib.suppress(OSError, ValueError):
                if int(pid_file.read_text().strip()) == proc.pid:
                    return
        time.sleep(0.02)


_DHCLIENT_CONF = """\
timeout {timeout};
retry 60;
initial-interval 1;
backoff-cutoff 2;
reboot 5;
select-timeout 0;
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, time-offset, routers, domain-name, domain-name-servers,
        host-name, interface-mtu, ntp-servers, rfc3442-classless-static-routes;
{extra}
"""


class Dhclient(DHCPClient):
    """ISC dhclient in the foreground (-d) with its own lease, pid and config files."""

    kind = "dhclient"

    def __init__(self, lab: Lab, ns: str, interface: str, workdir: Path, *, extra_conf: str = "",
                 timeout: int = 20) -> None:
        super().__init__(lab, ns, interface, workdir)
        self.lease_file = self.dir / "dhclient.leases"
        self.pid_file = self.dir / "dhclient.pid"
        self.conf = self.dir / "dhclient.conf"
        self.conf.write_text(_DHCLIENT_CONF.format(timeout=timeout, extra=extra_conf))

    def _parse(self, record: dict[str, Any]) -> ClientEvent:
        return _event_from_isc_style("dhclient", record["env"])

    def _args(self) -> list[str]:
        return ["-4", "-v", "-cf", str(self.conf), "-sf", str(self.script), "-lf", str(self.lease_file),
                "-pf", str(self.pid_file)]

    def obtain(self, *, timeout: float = 25.0) -> ClientEvent | None:
        """Start dhclient (again: with the lease it has, it starts in INIT-REBOOT, RFC 2131
        §3.2, and reports REBOOT) and wait for a lease (None: FAIL or timeout)."""
        command = self._command("dhclient", "-d", "-1", *self._args(), self.interface)
        event = self._start_and_wait(command, BOUND_REASONS | {"FAIL"}, timeout)
        if event is not None and event.bound:
            # dhclient writes its lease file after the script returns: wait for it, or a stop
            # right away would lose the lease (and the next run would DISCOVER, not reboot).
            deadline = time.monotonic() + 5
            while f"fixed-address {event.address};" not in self._lease_text() and time.monotonic() < deadline:
                time.sleep(0.02)
        return event

    def _lease_text(self) -> str:
        return self.lease_file.read_text(errors="replace") if self.lease_file.exists() else ""

    def renew(self, timeout: float = 25.0) -> ClientEvent | None:
        """Stop and start again with the lease file: the client asks for its address again."""
        self.stop()
        return self.obtain(timeout=timeout)

    def release(self, timeout: float = 15.0) -> ClientEvent | None:
        """``dhclient -r``: ends the running client (by its pid file) and sends a RELEASE."""
        before = len(self.events())
        wait_for_pid_file(self.proc, self.pid_file, self.output, " -- renewal in ")
        rc = self._run(self._command("dhclient", "-r", *self._args(), self.interface), timeout)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        assert rc == 0, f"dhclient -r exited {rc}\n{self.describe()}"
        return self.wait_event({"RELEASE"}, after=before, timeout=2)


_DHCPCD_CONF = """\
# No ARP probe of the offered address, no link-local fallback, nothing but DHCPv4.
noarp
noipv4ll
nodelay
noipv6
noipv6rs
nodhcp6
{client_id}
option subnet_mask, routers, domain_name_servers, domain_name, ntp_servers, interface_mtu
option classless_static_routes, dhcp_lease_time
timeout {timeout}
{extra}
"""


class Dhcpcd(DHCPClient):
    """dhcpcd in the foreground (-B), IPv4 only, with a private config, state and run directory.

    SIGUSR1 renews; ``dhcpcd -k`` releases and ends it; SIGTERM ends it keeping the lease (stored
    in the private /var/lib/dhcpcd, so a new run asks for the same address: REBOOT)."""

    kind = "dhcpcd"

    def __init__(self, lab: Lab, ns: str, interface: str, workdir: Path, *, client_id: str = "clientid",
                 extra_conf: str = "", timeout: int = 20) -> None:
        super().__init__(lab, ns, interface, workdir)
        self.state_dir = self.dir / "lib"
        self.run_dir = self.dir / "run"
        self.state_dir.mkdir()
        self.run_dir.mkdir()
        self.conf = self.dir / "dhcpcd.conf"
        self.conf.write_text(_DHCPCD_CONF.format(timeout=timeout, client_id=client_id, extra=extra_conf))

    def _parse(self, record: dict[str, Any]) -> ClientEvent:
        return _event_from_isc_style("dhcpcd", record["env"])

    def _in_private_dirs(self, *args: str) -> list[str]:
        inner = (f"mount --bind {shlex.quote(str(self.state_dir))} /var/lib/dhcpcd && "
                 f"mount --bind {shlex.quote(str(self.run_dir))} /run && exec {shlex.join(args)}")
        return self._command("unshare", "--mount", "--propagation", "private", "sh", "-c", inner)

    def obtain(self, *, timeout: float = 25.0) -> ClientEvent | None:
        command = self._in_private_dirs("dhcpcd", "-B", "-4", "-d", "-f", str(self.conf), "-c", str(self.script),
                                        self.interface)
        return self._start_and_wait(command, BOUND_REASONS | {"FAIL"}, timeout)

    def renew(self, timeout: float = 15.0) -> ClientEvent | None:
        """SIGUSR1: renew (a unicast REQUEST, RFC 2131 §4.4.5). dhcpcd 9 with privilege
        separation now and then misses a signal that arrives while it runs its script, so the
        signal is repeated until the renewal shows."""
        assert self.proc is not None and self.proc.poll() is None, "dhcpcd is not running"
        before = len(self.events())
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.proc.send_signal(signal.SIGUSR1)
            event = self.wait_event(BOUND_REASONS | {"NAK"}, after=before, timeout=min(2.0, left), proc=self.proc)
            if event is not None or self.proc.poll() is not None:
                return event
        return None

    def stop(self) -> None:
        """SIGTERM: exit without releasing (dhcpcd sometimes hangs on the way out; then SIGKILL,
        which loses nothing: the lease file was written when the lease was bound)."""
        if self.proc is not None:
            self._end(self.proc, grace=3.0)
            self.proc = None

    def rebind(self, timeout: float = 25.0) -> ClientEvent | None:
        """Stop and start again with the stored lease and DUID (INIT-REBOOT)."""
        self.stop()
        return self.obtain(timeout=timeout)

    def release(self, timeout: float = 15.0) -> ClientEvent | None:
        """``dhcpcd -k``: the running dhcpcd (signalled by the pid in its private run directory)
        sends a RELEASE, removes the address and exits."""
        assert self.proc is not None and self.proc.poll() is None, "dhcpcd is not running"
        before = len(self.events())
        rc = self._run(self._in_private_dirs("dhcpcd", "-4", "-k", self.interface), timeout)
        assert rc == 0, f"dhcpcd -k exited {rc}\n{self.describe()}"
        # dhcpcd 9 reports the release as STOP (after "releasing lease" in its log).
        event = self.wait_event({"RELEASE", "STOP"}, after=before, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        return event


CLIENTS: dict[str, type[DHCPClient]] = {"udhcpc": Udhcpc, "dhclient": Dhclient, "dhcpcd": Dhcpcd}


class Relay:
    """ISC dhcrelay in the foreground, adding option 82 (-a): its circuit-id is the name of the
    downstream interface the request came in on; it adds no remote-id."""

    def __init__(self, ns: str, upstream: str, downstream: str, server: str, workdir: Path) -> None:
        self.ns, self.upstream, self.downstream, self.server = ns, upstream, downstream, server
        self.output_path = workdir / f"dhcrelay-{downstream}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # What it prints once it has opened its sockets (dhcrelay: the fallback socket comes last).
    ready = "Sending on   Socket/fallback"

    def _argv(self) -> list[str]:
        return ["dhcrelay", "-4", "-d", "-a", "--no-pid", "-iu", self.upstream, "-id", self.downstream, self.server]

    def start(self, timeout: float = 10.0) -> Relay:
        with self.output_path.open("ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *self._argv()],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + timeout
        while self.ready not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dhcrelay did not start:\n{self.output()}")
            time.sleep(0.05)
        return self

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BNGRelay(Relay):
    """``tests.lab.bngrelay``: a relay that adds the server identifier override (RFC 5107) to
    option 82, as BNGs do; ``downstream_address`` is its address on the clients' link."""

    ready = "ready"

    def __init__(self, ns: str, upstream: str, downstream: str, server: str, workdir: Path, *,
                 downstream_address: str, override: bool = True) -> None:
        super().__init__(ns, upstream, downstream, server, workdir)
        self.downstream_address, self.override = downstream_address, override

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "tests.lab.bngrelay", "--downstream", self.downstream,
                "--address", self.downstream_address, "--server", self.server]
        return [*argv, "--no-override"] if not self.override else argv


# --- ispd with a [dhcp] section ----------------------------------------------------------------


class DHCPIspd(IspdProcess):
    """IspdProcess with what DHCP tests read from inside ispd's namespace."""

    def _scrape_in_netns(self) -> str:
        assert self.netns is not None
        result = subprocess.run(["ip", "netns", "exec", self.netns, "curl", "-sS", "--max-time", "5",
                                 f"{self.metrics_url}/metrics"], capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"curl /metrics in {self.netns}: {result.stderr}"
        return result.stdout

    def metric_in_netns(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A metric's value read from inside ispd's namespace (its loopback is not the test's)."""
        from prometheus_client.parser import text_string_to_metric_families

        total = None
        for family in text_string_to_metric_families(self._scrape_in_netns()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total = (total or 0.0) + float(sample.value)
        return total

    def packet_counters(self) -> str:
        """For assertion messages: what the DHCP service received, sent and dropped, which tells
        a request that never arrived from one that was refused."""
        try:
            text = self._scrape_in_netns()
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            return f"--- dhcp counters: not readable ({exc})"
        wanted = ("ispd_dhcp_packets_received_total{", "ispd_dhcp_packets_sent_total{",
                  "ispd_dhcp_packets_dropped_total{")
        return "\n".join(["--- dhcp counters:", *(line for line in text.splitlines() if line.startswith(wanted))])

    def leases(self, *, include_ended: bool = False) -> list[dict[str, Any]]:
        args = ["lease", "list", "--json"] + (["--all"] if include_ended else [])
        result: list[dict[str, Any]] = json.loads(self.cli(*args).stdout)
        return result

    def lease_of(self, address: str, *, include_ended: bool = True) -> dict[str, Any] | None:
        return next((le for le in self.leases(include_ended=include_ended) if le["address"] == address), None)


# --- hand-made datagrams -----------------------------------------------------------------------


def exchange(ns: str, interface: str, datagrams: Sequence[bytes], *, listen: float = 2.0,
             xids: Iterable[int] = (), until: int | None = None, gap: float = 0.05) -> list[bytes]:
    """Send ``datagrams`` from ``ns`` out of ``interface`` to 255.255.255.255:67 (from port 68)
    and return the datagrams that arrive on port 68 within ``listen`` seconds (those whose xid
    is in ``xids``, when given); stops early once ``until`` (when not 0) replies have arrived.

    Replies reach us only when broadcast: set the BROADCAST flag in what you send."""
    request = {"interface": interface, "datagrams": [d.hex() for d in datagrams], "listen": listen,
               "xids": list(xids), "until": until, "gap": gap}
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.lab.dhcpclients", "exchange"],
                            input=json.dumps(request), capture_output=True, text=True, cwd=REPO,
                            timeout=listen + 15)
    if result.returncode != 0:
        raise AssertionError(f"exchange in {ns} failed: {result.stderr}")
    return [bytes.fromhex(h) for h in json.loads(result.stdout)]


def _exchange_here(request: dict[str, Any]) -> list[str]:
    import select
    import socket

    xids = set(request["xids"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, request["interface"].encode())
        sock.bind(("0.0.0.0", 68))
        for datagram in request["datagrams"]:
            sock.sendto(bytes.fromhex(datagram), ("255.255.255.255", 67))
            time.sleep(request["gap"])
        replies: list[str] = []
        deadline = time.monotonic() + request["listen"]
        while (left := deadline - time.monotonic()) > 0:
            if request["until"] and len(replies) >= request["until"]:
                break
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data = sock.recv(65535)
            if xids and (len(data) < 8 or int.from_bytes(data[4:8], "big") not in xids):
                continue
            replies.append(data.hex())
        return replies


if __name__ == "__main__":  # the other end of exchange(), run inside a namespace
    if sys.argv[1:] == ["exchange"]:
        print(json.dumps(_exchange_here(json.load(sys.stdin))))
    else:
        sys.exit("usage: python -m tests.lab.dhcpclients exchange < request.json")
