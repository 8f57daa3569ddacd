"""Real DHCPv6 clients (ISC dhclient -6, dhcpcd -6) and a relay (ISC dhcrelay -6) in lab
namespaces, and a way to send hand-made DHCPv6 datagrams from there, for integration tests of a
DHCPv6 server (RFC 8415: IA_NA addresses and IA_PD delegated prefixes).

Each client runs in the foreground inside the client namespace with a hook script of ours in
place of the distribution's: the script appends every call (the client's reason and the
environment it was given) as one JSON line to a file in the test's directory; for dhclient it
also adds or removes the leased addresses on the interface (dhcpcd does that itself).
``Event6`` is the same view of both clients; ``Binding6`` is what a client holds after one
exchange (dhclient calls its script once per address and once per prefix: those calls are
merged).

DHCPv6 runs over link-local addresses: the topology helpers here turn duplicate address
detection off on every end they make and return only once each end's link-local address is
usable, so that neither a client nor a server nor the relay starts while it is tentative.

The clients' state (lease files, DUIDs, pid files, dhcpcd's control sockets) lives in the test's
directory; dhcpcd, whose directories are compiled in, runs in a private mount namespace with
/var/lib/dhcpcd and /run bind-mounted from there. Every process a client or relay starts is
ended by its id (and its process group) when closed, also when the test fails.
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

from tests.lab.dhcpclients import wait_for_pid_file
from tests.lab.netns import Lab, _check_allowed

REPO = Path(__file__).resolve().parents[2]
_counter = itertools.count()

ALL_DHCP_RELAY_AGENTS_AND_SERVERS = "ff02::1:2"
CLIENT_PORT, SERVER_PORT = 546, 547

# --- topology ----------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _sysctl(ns: str, name: str, value: str) -> None:
    result = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{name}={value}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"sysctl {name}={value} in {ns}: {result.stderr.strip()}")


def link_local(ns: str, interface: str) -> str | None:
    """The interface's link-local address once it is usable (not tentative), else None."""
    out = subprocess.run(["ip", "-n", ns, "-j", "-6", "addr", "show", "dev", interface, "scope", "link"],
                         capture_output=True, text=True, check=True).stdout
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            # ip -j lists an empty entry for each address the filter left out.
            if a.get("local") and not a.get("tentative") and not a.get("dadfailed"):
                return str(a["local"])
    return None


def wait_link_local(ns: str, interface: str, timeout: float = 5.0) -> str:
    """The link-local address the kernel makes when the link comes up (with carrier), once usable."""
    deadline = time.monotonic() + timeout
    while (address := link_local(ns, interface)) is None:
        if time.monotonic() > deadline:
            shown = subprocess.run(["ip", "-n", ns, "addr", "show", "dev", interface], capture_output=True,
                                   text=True).stdout
            raise AssertionError(f"{interface} in {ns} has no usable link-local address after {timeout} s:\n{shown}")
        time.sleep(0.02)
    return address


def global_addresses(ns: str, interface: str) -> list[str]:
    """The interface's global IPv6 addresses, CIDR form (what a client put there)."""
    out = subprocess.run(["ip", "-n", ns, "-j", "-6", "addr", "show", "dev", interface, "scope", "global"],
                         capture_output=True, text=True, check=True).stdout
    return [f"{a['local']}/{a['prefixlen']}" for link in json.loads(out or "[]") for a in link.get("addr_info", [])
            if a.get("local")]


@dataclass(frozen=True)
class Link6:
    """One veth pair: ``a_end`` in ``a_ns``, ``b_end`` in ``b_ns``, and their link-locals."""

    a_ns: str
    a_end: str
    a_link_local: str
    b_ns: str
    b_end: str
    b_link_local: str


def veth6(lab: Lab, a_ns: str, b_ns: str, *, a_address: str | None = None, b_address: str | None = None,
          names: tuple[str, str] = ("sa", "sb")) -> Link6:
    """A veth pair with DAD off on both ends (so every address, link-local included, is usable
    at once) and an optional global address (CIDR form) on each end; returns once both
    link-local addresses are usable. Both ends go away with their namespaces."""
    for address in (a_address, b_address):
        if address is not None:
            _check_allowed(address)
    index = next(_counter)
    a_end, b_end = f"{names[0]}{lab.tag}{index}"[-15:], f"{names[1]}{lab.tag}{index}"[-15:]
    _ip("link", "add", a_end, "netns", a_ns, "type", "veth", "peer", "name", b_end, "netns", b_ns)
    for ns, end, address in ((a_ns, a_end, a_address), (b_ns, b_end, b_address)):
        _sysctl(ns, f"net.ipv6.conf.{end}.accept_dad", "0")
        # No router advertisements are sent here; a client namespace must not pick up addresses
        # or routes from any that a test might send either.
        _sysctl(ns, f"net.ipv6.conf.{end}.accept_ra", "0")
        if address is not None:
            _ip("-n", ns, "addr", "add", address, "dev", end, "nodad")
        _ip("-n", ns, "link", "set", end, "up")
    return Link6(a_ns, a_end, wait_link_local(a_ns, a_end), b_ns, b_end, wait_link_local(b_ns, b_end))


def client_link6(lab: Lab, server_ns: str, client_ns: str, server_address: str = "2001:db8:1::1/64") -> Link6:
    """Server and client on one link: the server end has ``server_address``, the client end
    only its link-local address (its global one comes by DHCPv6). a = server, b = client."""
    return veth6(lab, server_ns, client_ns, a_address=server_address, names=("s6", "c6"))


@dataclass(frozen=True)
class RelayedPath6:
    """client — relay — server. The relay's lower (client-side) end has a global address in
    the clients' prefix: dhcrelay puts it in the link-address field of its Relay-Forward, by which
    a server chooses the clients' subnet. The server has a route to that prefix via the relay."""

    server: Link6  # a = server, b = the relay's upper end
    client: Link6  # a = the relay's lower end, b = client
    server_address: str  # no prefix length
    relay_upper_address: str
    relay_lower_address: str

    @property
    def relay_ns(self) -> str:
        return self.client.a_ns

    @property
    def client_ns(self) -> str:
        return self.client.b_ns

    @property
    def client_if(self) -> str:
        return self.client.b_end


def relayed_path6(lab: Lab, server_ns: str, relay_ns: str, client_ns: str, *,
                  server_address: str = "2001:db8:1::1/64", relay_upper: str = "2001:db8:1::2/64",
                  relay_lower: str = "2001:db8:2::1/64") -> RelayedPath6:
    server = veth6(lab, server_ns, relay_ns, a_address=server_address, b_address=relay_upper, names=("s6", "u6"))
    client = veth6(lab, relay_ns, client_ns, a_address=relay_lower, names=("l6", "c6"))
    lower_net = ipaddress.ip_interface(relay_lower).network
    upper = str(ipaddress.ip_interface(relay_upper).ip)
    _ip("-n", server_ns, "-6", "route", "add", str(lower_net), "via", upper, "dev", server.a_end)
    return RelayedPath6(server, client, str(ipaddress.ip_interface(server_address).ip), upper,
                        str(ipaddress.ip_interface(relay_lower).ip))


# --- what a client reports ---------------------------------------------------------------------


@dataclass(frozen=True)
class Lease6:
    """One address (IA_NA, ``prefix_len`` 128) or delegated prefix (IA_PD) with its lifetimes."""

    prefix: str  # "2001:db8:1::100/128", "2001:db8:100::/56"
    preferred: int | None = None
    valid: int | None = None
    iaid: str | None = None  # as the client spells it

    @property
    def address(self) -> str:
        return self.prefix.split("/")[0]

    @property
    def network(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(self.prefix)


@dataclass(frozen=True)
class Event6:
    """One call of a client's hook script, normalized across clients.

    ``reason`` is upper case, as the clients spell it: BOUND6, RENEW6, REBIND6, REBOOT6 (a binding
    obtained or confirmed), RELEASE6, EXPIRE6, STOP6, DEPREF6 and the clients' own others
    (PREINIT6, PREINIT, CARRIER, STOPPED, ...)."""

    client: str
    reason: str
    addresses: tuple[Lease6, ...] = ()
    prefixes: tuple[Lease6, ...] = ()
    dns: tuple[str, ...] = ()
    search: tuple[str, ...] = ()  # without the trailing dot dhclient writes
    duid: str | None = None  # the client's DUID (its option 1), "00:01:00:01:..."
    server_id: str | None = None  # the server's DUID, same form
    t1: int | None = None
    t2: int | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def bound(self) -> bool:
        return self.reason in BOUND6_REASONS and bool(self.addresses or self.prefixes)


BOUND6_REASONS = frozenset({"BOUND6", "RENEW6", "REBIND6", "REBOOT6"})
# Reasons whose variables describe the binding that ends (old_*), not a new one.
_ENDING_REASONS = frozenset({"RELEASE6", "EXPIRE6", "STOP6", "STOPPED", "DEPREF6"})

# A binding is what one exchange gave: the same view as an event.
Binding6 = Event6


def _duid(value: str | None) -> str | None:
    """dhclient writes "0:1:0:1:32:a8", dhcpcd "00010001..."; both become "00:01:00:01:32:a8"."""
    if not value:
        return None
    octets = [int(part, 16) for part in value.split(":")] if ":" in value else list(bytes.fromhex(value))
    return ":".join(f"{o:02x}" for o in octets)


def _int(value: str | None) -> int | None:
    return int(value) if value and value.lstrip("-").isdigit() else None


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(name.rstrip(".") for name in (value or "").split())


def _event_from_dhclient(env: dict[str, str]) -> Event6:
    """dhclient -6 calls its script once per address (new_ip6_address, new_ip6_prefixlen) and
    once per delegated prefix (new_ip6_prefix, "2001:db8:100::/56"), with that one's lifetimes
    (new_preferred_life, new_max_life) and its IA's (new_iaid, new_renew, new_rebind)."""
    reason = env.get("reason", "?").upper()
    p = "old_" if reason in _ENDING_REASONS else "new_"

    def get(name: str) -> str | None:
        return env.get(p + name) or None

    preferred, valid, iaid = _int(get("preferred_life")), _int(get("max_life")), get("iaid")
    addresses: tuple[Lease6, ...] = ()
    prefixes: tuple[Lease6, ...] = ()
    if address := get("ip6_address"):
        addresses = (Lease6(f"{address}/{get('ip6_prefixlen') or 128}", preferred, valid, iaid),)
    if prefix := get("ip6_prefix"):
        prefixes = (Lease6(prefix, preferred, valid, iaid),)
    return Event6(client="dhclient", reason=reason, addresses=addresses, prefixes=prefixes,
                  dns=tuple((get("dhcp6_name_servers") or "").split()), search=_names(get("dhcp6_domain_search")),
                  duid=_duid(get("dhcp6_client_id")), server_id=_duid(get("dhcp6_server_id")),
                  t1=_int(get("renew")), t2=_int(get("rebind")), env=env)


def _event_from_dhcpcd(env: dict[str, str]) -> Event6:
    """dhcpcd -6 calls its script once per exchange with every IA: new_dhcp6_ia_na<i>_ia_addr<j>
    (and _pltime, _vltime), new_dhcp6_ia_pd<i>_prefix<j> (and _length, _pltime, _vltime),
    new_dhcp6_ia_na<i>_iaid, _t1, _t2."""
    reason = env.get("reason", "?").upper()
    p = "old_" if reason in _ENDING_REASONS else "new_"
    addresses: list[Lease6] = []
    prefixes: list[Lease6] = []
    t1 = t2 = None
    for kind in ("na", "pd"):
        for i in itertools.count(1):
            ia = f"{p}dhcp6_ia_{kind}{i}"
            if f"{ia}_iaid" not in env:
                break
            t1, t2 = t1 or _int(env.get(f"{ia}_t1")), t2 or _int(env.get(f"{ia}_t2"))
            for j in itertools.count(1):
                one = f"{ia}_ia_addr{j}" if kind == "na" else f"{ia}_prefix{j}"
                if one not in env:
                    break
                length = "128" if kind == "na" else env.get(f"{one}_length", "?")
                lease = Lease6(f"{env[one]}/{length}", _int(env.get(f"{one}_pltime")), _int(env.get(f"{one}_vltime")),
                               env.get(f"{ia}_iaid"))
                (addresses if kind == "na" else prefixes).append(lease)
    return Event6(client="dhcpcd", reason=reason, addresses=tuple(addresses), prefixes=tuple(prefixes),
                  dns=tuple(env.get(p + "dhcp6_name_servers", "").split()),
                  search=_names(env.get(p + "dhcp6_domain_search")), duid=_duid(env.get(p + "dhcp6_client_id")),
                  server_id=_duid(env.get(p + "dhcp6_server_id")), t1=t1, t2=t2, env=env)


# The hook script: for dhclient, do to the interface what Debian's dhclient-script would (add
# each leased address as a /128 without DAD, set its lifetimes; remove it when the binding
# ends), then log the event, in that order, so that a test that saw the event finds the
# interface configured. A delegated prefix is only logged (dhclient-script does nothing with it
# either). It runs inside the client's namespace, so `ip` changes only that namespace.
_HOOK = '''#!{python}
import json, os, subprocess, sys, time
EVENTS, STYLE = {events!r}, {style!r}
env = dict(os.environ)

def ip(*args):
    subprocess.run(["ip", "-6", *args], capture_output=True)

if STYLE == "dhclient":
    reason, dev = env.get("reason", ""), env.get("interface", "")
    if reason in ("BOUND6", "RENEW6", "REBIND6", "REBOOT6") and env.get("new_ip6_address"):
        if env.get("old_ip6_address") and env["old_ip6_address"] != env["new_ip6_address"]:
            ip("addr", "del", env["old_ip6_address"] + "/" + env.get("old_ip6_prefixlen", "128"), "dev", dev)
        ip("addr", "replace", env["new_ip6_address"] + "/" + env.get("new_ip6_prefixlen", "128"), "dev", dev,
           "nodad", "valid_lft", env.get("new_max_life", "forever"),
           "preferred_lft", env.get("new_preferred_life", "forever"))
    elif reason in ("EXPIRE6", "RELEASE6", "STOP6") and env.get("old_ip6_address"):
        ip("addr", "del", env["old_ip6_address"] + "/" + env.get("old_ip6_prefixlen", "128"), "dev", dev)

with open(EVENTS, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": env, "time": time.time()}}) + "\\n")
'''


class DHCPv6Client:
    """One client program on one interface; a context manager that ends its processes.

    ``na``: ask for an address (one IA_NA); ``pd``: ask for a delegated prefix (one IA_PD);
    ``pd_hint``: the prefix length to ask for in the IA_PD (an IAPREFIX hint ::/len)."""

    kind = "?"
    # How long a SIGTERM is given before SIGKILL.
    end_grace = 3.0

    def __init__(self, lab: Lab, ns: str, interface: str, workdir: Path, *, na: bool = True, pd: bool = False,
                 pd_hint: int | None = None) -> None:
        if not (na or pd):
            raise ValueError("a DHCPv6 client here asks for an address (na), a prefix (pd) or both")
        self.lab, self.ns, self.interface = lab, ns, interface
        self.na, self.pd, self.pd_hint = na, pd, pd_hint
        self.dir = workdir / f"{self.kind}6-{interface}-{next(_counter)}"
        self.dir.mkdir(parents=True)
        self.events_path = self.dir / "events.jsonl"
        self.output_path = self.dir / "output.log"
        self.script = self.dir / "hook"
        self.script.write_text(_HOOK.format(python=sys.executable, events=str(self.events_path), style=self.kind))
        self.script.chmod(0o755)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None  # the long-running client, if any
        # More for assertion messages (the server's and relay's logs): a test sets it.
        self.context: Callable[[], str] | None = None

    # --- processes

    def _command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *args]

    def _spawn(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        with self.output_path.open("ab") as out:
            out.write(f"$ {shlex.join(command)}\n".encode())
            out.flush()
            # A session of its own: ``close`` can end whatever the client forked, by its group id.
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def _run(self, command: Sequence[str], timeout: float = 15.0) -> int:
        proc = self._spawn(command)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _end(proc)
            raise AssertionError(f"{self.kind}: {shlex.join(command)} did not finish within {timeout} s\n"
                                 f"{self.describe()}") from None

    def close(self) -> None:
        for proc in self.procs:
            _end(proc, grace=self.end_grace)
        self.proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what every client does (see each for how)

    def start(self) -> None:
        """Start the client in the foreground; it solicits right away."""
        raise NotImplementedError

    def obtain(self, timeout: float = 10.0) -> Binding6:
        """Start the client and wait for its first binding (AssertionError with the client's
        output when none comes within ``timeout``)."""
        before = len(self.events())
        self.start()
        return self.wait_binding(after=before, timeout=timeout)

    def renew(self, timeout: float = 10.0) -> Binding6:
        """Have the client ask for its bindings again; the binding it reported."""
        raise NotImplementedError

    def release(self, timeout: float = 10.0) -> Event6 | None:
        """Have the client send a RELEASE and end; the event it reported, or None."""
        raise NotImplementedError

    def stop(self) -> None:
        """End the client without a RELEASE (it keeps its lease file and DUID)."""
        if self.proc is not None:
            _end(self.proc, grace=self.end_grace)
            self.proc = None

    # --- events

    def _parse(self, env: dict[str, str]) -> Event6:
        raise NotImplementedError

    def events(self) -> list[Event6]:
        if not self.events_path.exists():
            return []
        events = []
        for line in self.events_path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                events.append(self._parse(json.loads(line)["env"]))
        return events

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def wait_event(self, reasons: Iterable[str], *, after: int, timeout: float) -> Event6 | None:
        """The first event numbered ``after`` or later whose reason is one of ``reasons``; None
        when ``timeout`` passes or the client exits first."""
        wanted = set(reasons)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc is not None and self.proc.poll() is not None
            for event in self.events()[after:]:
                if event.reason in wanted:
                    return event
            if exited or time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def wait_binding(self, *, after: int, timeout: float, reasons: Iterable[str] = BOUND6_REASONS) -> Binding6:
        """The binding reported by the events numbered ``after`` or later with one of ``reasons``
        (the first such exchange); AssertionError with the client's output when none comes."""
        event = self.wait_event(reasons, after=after, timeout=timeout)
        if event is None:
            raise AssertionError(f"{self.kind}: no {'/'.join(sorted(reasons))} within {timeout} s\n{self.describe()}")
        return event

    def describe(self) -> str:
        """For assertion messages: what the client printed and the events it reported."""
        lines = [f"  {e.reason} na={[a.prefix for a in e.addresses]} pd={[p.prefix for p in e.prefixes]}"
                 for e in self.events()]
        more = f"\n{self.context()}" if self.context is not None else ""
        return f"--- {self.kind} -6 output:\n{self.output()[-6000:]}\n--- events:\n" + "\n".join(lines) + more


def _end(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM, grace: float = 5.0) -> None:
    """End ``proc`` (by its id), then whatever it forked and left behind (by its process group,
    which is its own: it was started in a new session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


_DHCLIENT6_CONF = """\
# Retransmit quickly: the first SOLICIT after at most 1 s (RFC 8415 SOL_MAX_DELAY), then 1 s, 2 s.
initial-interval 1;
backoff-cutoff 2;
timeout {timeout};
retry 5;
request dhcp6.name-servers, dhcp6.domain-search;
{extra}
"""


class Dhclient6(DHCPv6Client):
    """ISC dhclient -6 in the foreground (-d) with its own lease, DUID, pid and config files:
    ``-N`` for an address, ``-P`` for a prefix, both for both.

    Started again with its lease file it does not SOLICIT but asks for what it holds: a REBIND
    (reported as REBIND6) when it holds a prefix, a CONFIRM (reported as BOUND6) for addresses
    only. ``dhclient -6 -r`` releases and ends the running one. Before its first message it
    waits a random 0-1 s (RFC 8415 §18.2.1), which no option turns off."""

    kind = "dhclient"

    def __init__(self, lab: Lab, ns: str, interface: str, workdir: Path, *, na: bool = True, pd: bool = False,
                 pd_hint: int | None = None, duid_type: str = "LLT", extra_conf: str = "", timeout: int = 30) -> None:
        super().__init__(lab, ns, interface, workdir, na=na, pd=pd, pd_hint=pd_hint)
        self.lease_file = self.dir / "dhclient6.leases"
        self.duid_file = self.dir / "dhclient6.duid"
        self.pid_file = self.dir / "dhclient6.pid"
        self.conf = self.dir / "dhclient6.conf"
        self.conf.write_text(_DHCLIENT6_CONF.format(timeout=timeout, extra=extra_conf))
        self.duid_type = duid_type

    def _parse(self, env: dict[str, str]) -> Event6:
        return _event_from_dhclient(env)

    def _args(self) -> list[str]:
        wanted = (["-N"] if self.na else []) + (["-P"] if self.pd else [])
        if self.pd_hint is not None:
            wanted += ["--prefix-len-hint", str(self.pd_hint)]
        return ["-6", *wanted, "-v", "-D", self.duid_type, "-cf", str(self.conf), "-sf", str(self.script),
                "-lf", str(self.lease_file), "-df", str(self.duid_file), "-pf", str(self.pid_file)]

    def start(self) -> None:
        self.proc = self._spawn(self._command("dhclient", "-d", *self._args(), self.interface))

    def wait_binding(self, *, after: int, timeout: float, reasons: Iterable[str] = BOUND6_REASONS) -> Binding6:
        """dhclient reports each address and each prefix in a call of its own, one after the
        other: the events of the first exchange are merged until it has shown every kind it
        asked for (or the calls stop coming)."""
        first = super().wait_binding(after=after, timeout=timeout, reasons=reasons)
        events = self.events()[after:]
        start = next(i for i, e in enumerate(events) if e.reason == first.reason)
        merged = first
        # (It stops as soon as every kind is in. A second was too short once: under CI's load
        # the address's call came more than a second after the prefix's.)
        settle = time.monotonic() + 5.0
        while True:
            merged = _merge(_one_exchange(events[start:]))
            complete = (not self.na or merged.addresses) and (not self.pd or merged.prefixes)
            if complete or time.monotonic() > settle:
                break
            time.sleep(0.05)
            events = self.events()[after:]
        if not self._lease_written(merged):
            raise AssertionError(f"dhclient did not write its lease file\n{self.describe()}")
        return merged

    def _lease_written(self, binding: Binding6) -> bool:
        # dhclient writes its lease file after the script returns: wait for it, or a stop right
        # away would lose the binding (and the next run would SOLICIT, not REBIND or CONFIRM).
        if binding.reason not in BOUND6_REASONS:
            return True
        deadline = time.monotonic() + 5
        wanted = [f"iaaddr {a.address} " for a in binding.addresses] + [f"iaprefix {p.prefix} " for p in binding.prefixes]
        while not all(w in self._lease_text() for w in wanted):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _lease_text(self) -> str:
        return self.lease_file.read_text(errors="replace") if self.lease_file.exists() else ""

    def renew(self, timeout: float = 10.0) -> Binding6:
        """Stop and start again with the lease file: dhclient asks for what it holds (REBIND
        with a prefix, CONFIRM with addresses only). dhclient has no signal that makes a running
        one RENEW; for a true RENEW give the server a short T1 and ``wait_binding`` with
        reasons={"RENEW6"}."""
        self.stop()
        before = len(self.events())
        self.start()
        return self.wait_binding(after=before, timeout=timeout)

    def release(self, timeout: float = 10.0) -> Event6 | None:
        """``dhclient -6 -r``: ends the running client (by its pid file) and sends a RELEASE;
        reported as RELEASE6 (one call per address or prefix: the first is returned)."""
        before = len(self.events())
        wait_for_pid_file(self.proc, self.pid_file, self.output, "PRC: Expiration scheduled in ")
        rc = self._run(self._command("dhclient", "-r", *self._args(), self.interface), timeout)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        assert rc == 0, f"dhclient -6 -r exited {rc}\n{self.describe()}"
        return self.wait_event({"RELEASE6"}, after=before, timeout=2)


def _one_exchange(events: Sequence[Event6]) -> list[Event6]:
    """The leading events of one exchange: the same reason, each kind (address, prefix) once.
    With a T1 of a second, the next RENEW's calls follow right behind; under load they can be
    read together with this one's, and a second address call belongs to the next exchange."""
    group: list[Event6] = []
    for event in events:
        if event.reason != events[0].reason or any(
                (event.addresses and seen.addresses) or (event.prefixes and seen.prefixes) for seen in group):
            break
        group.append(event)
    return group


def _merge(events: Sequence[Event6]) -> Event6:
    first = events[0]
    return Event6(client=first.client, reason=first.reason,
                  addresses=tuple(a for e in events for a in e.addresses),
                  prefixes=tuple(p for e in events for p in e.prefixes),
                  dns=first.dns, search=first.search, duid=first.duid, server_id=first.server_id,
                  t1=first.t1, t2=first.t2, env=first.env)


_DHCPCD6_CONF = """\
# DHCPv6 only, without waiting for a router advertisement: with noipv6rs dhcpcd starts DHCPv6
# as soon as the interface has an ia_* to ask for. nodelay: no random wait before the first
# SOLICIT.
ipv6only
noipv6rs
noipv4
noipv4ll
nodelay
# A DUID-LLT, stored in the private /var/lib/dhcpcd/duid (the default would be DUID-UUID, or
# DUID-LL from the machine).
duid
option dhcp6_name_servers, dhcp6_domain_search
timeout {timeout}
interface {interface}
{ias}
{extra}
"""


class Dhcpcd6(DHCPv6Client):
    """dhcpcd -6 in the foreground (-B), DHCPv6 only, with a private config, state and run
    directory; IAID 1 for the address (ia_na 1), 2 for the prefix (ia_pd 2).

    A delegated prefix is assigned to no interface unless ``pd_interface`` names one in the
    client namespace: dhcpcd then puts the prefix's first /64 there (sla_id 0), as the address
    prefix::1/64 with a route (turn DAD off on that interface too, or the address stays
    tentative for a while); either way it installs an unreachable route for the whole prefix on lo.

    SIGUSR1 renews (RENEW6); ``dhcpcd -6 -k`` releases (RELEASE6) and ends it; SIGTERM ends it
    keeping the lease (STOP6), stored in the private /var/lib/dhcpcd with the DUID: started
    again, it REBINDs (REBIND6)."""

    kind = "dhcpcd"
    # dhcpcd 9 with privilege separation now and then does not exit on SIGTERM (about one run
    # in four here: it runs its STOPPED hook and stays); SIGKILL loses nothing, it wrote its
    # lease file before it reported the binding.
    end_grace = 1.0

    def __init__(self, lab: Lab, ns: str, interface: str, workdir: Path, *, na: bool = True, pd: bool = False,
                 pd_hint: int | None = None, pd_interface: str | None = None, extra_conf: str = "",
                 timeout: int = 30) -> None:
        super().__init__(lab, ns, interface, workdir, na=na, pd=pd, pd_hint=pd_hint)
        self.state_dir = self.dir / "lib"
        self.run_dir = self.dir / "run"
        self.state_dir.mkdir()
        self.run_dir.mkdir()
        ias = []
        if na:
            ias.append("  ia_na 1")
        if pd:
            hint = f"/::/{pd_hint}" if pd_hint is not None else ""
            # "-": assign the prefix to no interface (dhcpcd logs "cannot delegate to -").
            target = f"{pd_interface}/0/64" if pd_interface else "-"
            ias.append(f"  ia_pd 2{hint} {target}")
        self.conf = self.dir / "dhcpcd.conf"
        self.conf.write_text(_DHCPCD6_CONF.format(timeout=timeout, interface=interface, ias="\n".join(ias),
                                                  extra=extra_conf))

    def _parse(self, env: dict[str, str]) -> Event6:
        return _event_from_dhcpcd(env)

    def _in_private_dirs(self, *args: str) -> list[str]:
        inner = (f"mount --bind {shlex.quote(str(self.state_dir))} /var/lib/dhcpcd && "
                 f"mount --bind {shlex.quote(str(self.run_dir))} /run && exec {shlex.join(args)}")
        return self._command("unshare", "--mount", "--propagation", "private", "sh", "-c", inner)

    def start(self) -> None:
        self.proc = self._spawn(self._in_private_dirs("dhcpcd", "-B", "-6", "-d", "-f", str(self.conf),
                                                      "-c", str(self.script), self.interface))

    def renew(self, timeout: float = 10.0) -> Binding6:
        """SIGUSR1: RENEW of every IA (RFC 8415 §18.2.4). dhcpcd 9 with privilege separation
        now and then misses a signal that arrives while it runs its script, so the signal is
        repeated until the renewal shows."""
        assert self.proc is not None and self.proc.poll() is None, f"dhcpcd is not running\n{self.describe()}"
        before = len(self.events())
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.proc.send_signal(signal.SIGUSR1)
            event = self.wait_event(BOUND6_REASONS, after=before, timeout=min(2.0, left))
            if event is not None:
                return event
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"dhcpcd: no renewal within {timeout} s\n{self.describe()}")

    def release(self, timeout: float = 10.0) -> Event6 | None:
        """``dhcpcd -6 -k``: the running dhcpcd (signalled by the pid in its private run
        directory) sends a RELEASE, removes its addresses and exits."""
        assert self.proc is not None and self.proc.poll() is None, f"dhcpcd is not running\n{self.describe()}"
        before = len(self.events())
        rc = self._run(self._in_private_dirs("dhcpcd", "-6", "-k", self.interface), timeout)
        assert rc == 0, f"dhcpcd -k exited {rc}\n{self.describe()}"
        event = self.wait_event({"RELEASE6", "STOP6"}, after=before, timeout=timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        return event


CLIENTS6: dict[str, type[DHCPv6Client]] = {"dhclient": Dhclient6, "dhcpcd": Dhcpcd6}


class Relay6:
    """ISC dhcrelay -6 in the foreground: it relays what arrives on ``lower`` (the clients' side)
    to ``server`` (a unicast or multicast address) out of ``upper``, in a Relay-Forward whose
    link-address is a global address of ``lower``, with an Interface-Id (option 18) naming
    ``lower``; the server's Relay-Reply must carry that Interface-Id back."""

    def __init__(self, ns: str, lower: str, upper: str, server: str, workdir: Path) -> None:
        self.ns, self.lower, self.upper, self.server = ns, lower, upper, server
        self.output_path = workdir / f"dhcrelay6-{lower}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        return ["dhcrelay", "-6", "-d", "--no-pid", "-l", self.lower, "-u", f"{self.server}%{self.upper}"]

    def start(self, timeout: float = 5.0) -> Relay6:
        with self.output_path.open("ab") as out:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *self.argv()], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        # What dhcrelay prints once both its sockets are open (the upstream one comes last).
        while self.output().count("Sending on") < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dhcrelay -6 did not start:\n{self.output()}")
            time.sleep(0.05)
        return self

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None:
            _end(self.proc)
        self.proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- hand-made datagrams -----------------------------------------------------------------------


def exchange6(ns: str, interface: str, datagrams: Sequence[bytes], *, listen: float = 2.0,
              to: str = ALL_DHCP_RELAY_AGENTS_AND_SERVERS, port: int = CLIENT_PORT,
              transaction_ids: Iterable[int] = (), until: int | None = None, gap: float = 0.05) -> list[bytes]:
    """Send ``datagrams`` from ``ns`` out of ``interface`` to ``to`` port 547 (from ``port``:
    546 as a client, 547 as a relay agent) and return the datagrams that arrive on that port
    within ``listen`` seconds (those whose transaction id, bytes 1-3, is in ``transaction_ids``,
    when given: a Relay-Reply has none, leave it empty there); stops early once ``until``
    replies have arrived.

    A client's datagrams leave from the interface's link-local address, as a real client's do,
    and a server answers there."""
    request = {"interface": interface, "datagrams": [d.hex() for d in datagrams], "listen": listen, "to": to,
               "port": port, "transaction_ids": list(transaction_ids), "until": until, "gap": gap}
    result = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.lab.dhcp6clients", "exchange"],
                            input=json.dumps(request), capture_output=True, text=True, cwd=REPO, timeout=listen + 15)
    if result.returncode != 0:
        raise AssertionError(f"exchange6 in {ns} failed: {result.stderr}")
    return [bytes.fromhex(h) for h in json.loads(result.stdout)]


def _exchange_here(request: dict[str, Any]) -> list[str]:
    import select
    import socket

    ids = set(request["transaction_ids"])
    index = socket.if_nametoindex(request["interface"])
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, request["interface"].encode())
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        sock.bind(("::", request["port"]))
        destination = ipaddress.IPv6Address(request["to"])
        scope = index if destination.is_link_local or destination.is_multicast else 0
        for datagram in request["datagrams"]:
            sock.sendto(bytes.fromhex(datagram), (str(destination), SERVER_PORT, 0, scope))
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
            if ids and (len(data) < 4 or int.from_bytes(data[1:4], "big") not in ids):
                continue
            replies.append(data.hex())
        return replies


if __name__ == "__main__":  # the other end of exchange6(), run inside a namespace
    if sys.argv[1:] == ["exchange"]:
        print(json.dumps(_exchange_here(json.load(sys.stdin))))
    else:
        sys.exit("usage: python -m tests.lab.dhcp6clients exchange < request.json")
