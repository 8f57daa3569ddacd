"""Kea's DHCPv6 server (kea-dhcp6) as the reference server of the DHCPv6 lab: with a private
config in a test's directory, run in a namespace, ended by its PID.

``kea6_config()`` makes the config from a few parameters: the interface it listens on, its
subnets (each with an address pool and a prefix delegation pool; a subnet with an interface is
the one for clients on that link, one without is chosen by the link-address of a relay), the DNS
servers (option 23) and domain search list (option 24) for everyone, and the timers. Leases go
to a memfile (CSV) in the directory; the server DUID is made at start and not stored (Kea's
default place, /var/lib/kea, belongs to the system's instance); pid and lock files go to the
directory too.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

KEA_DHCP6 = shutil.which("kea-dhcp6") or "/usr/sbin/kea-dhcp6"


def kea6_available() -> bool:
    return Path(KEA_DHCP6).exists()


@dataclass(frozen=True)
class Subnet6:
    subnet: str = "2001:db8:1::/64"
    pool: str = "2001:db8:1::100-2001:db8:1::1ff"
    pd_prefix: str = "2001:db8:100::/40"
    delegated_len: int = 56
    interface: str | None = None  # the link of directly attached clients; None: relayed only
    id: int = 1


def kea6_config(workdir: Path, interface: str, subnets: Sequence[Subnet6], *,
                dns_servers: Sequence[str] = ("2001:db8:1::1",), domain_search: Sequence[str] = ("lab.example",),
                renew: int = 1000, rebind: int = 2000, preferred: int = 3000, valid: int = 4000,
                rapid_commit: bool = False, unicast: str | None = None,
                log_severity: str = "INFO") -> dict[str, Any]:
    """``unicast``: an address of ``interface`` that Kea listens on too (it listens only on the
    link-local address and ff02::1:2 unless told: a relay that sends to the server's global
    address needs this)."""
    option_data = []
    if dns_servers:
        option_data.append({"name": "dns-servers", "data": ", ".join(dns_servers)})
    if domain_search:
        option_data.append({"name": "domain-search", "data": ", ".join(domain_search)})
    subnet_list = []
    for s in subnets:
        prefix, prefix_len = s.pd_prefix.split("/")
        entry: dict[str, Any] = {
            "id": s.id, "subnet": s.subnet, "pools": [{"pool": s.pool}],
            "pd-pools": [{"prefix": prefix, "prefix-len": int(prefix_len), "delegated-len": s.delegated_len}],
            "rapid-commit": rapid_commit,
        }
        if s.interface:
            entry["interface"] = s.interface
        subnet_list.append(entry)
    return {"Dhcp6": {
        "interfaces-config": {"interfaces": [f"{interface}/{unicast}" if unicast else interface]},
        "server-id": {"type": "LLT", "persist": False},
        "lease-database": {"type": "memfile", "persist": True, "name": str(workdir / "leases6.csv"),
                           "lfc-interval": 0},
        "renew-timer": renew, "rebind-timer": rebind, "preferred-lifetime": preferred, "valid-lifetime": valid,
        "option-data": option_data,
        "subnet6": subnet_list,
        "loggers": [{"name": "kea-dhcp6", "severity": log_severity, "debuglevel": 0,
                     "output_options": [{"output": str(workdir / "kea6.log")}]}],
    }}


class Kea6:
    """kea-dhcp6 in ``ns`` with ``config`` (a dict as ``kea6_config`` makes) written to
    ``workdir``; ``start()`` returns once it has opened its sockets."""

    def __init__(self, ns: str, workdir: Path, config: dict[str, Any]) -> None:
        self.ns, self.workdir, self.config = ns, workdir, config
        self.config_path = workdir / "kea-dhcp6.json"
        self.log_path = workdir / "kea6.log"
        self.output_path = workdir / "kea6.out"
        self.leases_path = workdir / "leases6.csv"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Self:
        self.config_path.write_text(json.dumps(self.config, indent=1))
        env = {**os.environ, "KEA_PIDFILE_DIR": str(self.workdir), "KEA_LOCKFILE_DIR": str(self.workdir)}
        with self.output_path.open("ab") as out:
            # ip netns exec execs kea-dhcp6: the PID is Kea's own.
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, KEA_DHCP6, "-c", str(self.config_path)],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while "DHCP6_STARTED" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"kea-dhcp6 did not start:\n{self.describe()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.output_path, self.log_path) if p.exists())

    def describe(self) -> str:
        return "--- kea-dhcp6 (last 40 lines):\n" + "\n".join(self.log().splitlines()[-40:])

    def leases(self) -> list[dict[str, str]]:
        """The lease file's rows, latest last (memfile appends one per change): address, duid,
        iaid, lease_type ("0" an address, "2" a prefix), prefix_len, valid_lifetime, state, ..."""
        if not self.leases_path.exists():
            return []
        with self.leases_path.open() as f:
            return list(csv.DictReader(f))

    def live_leases(self) -> dict[str, dict[str, str]]:
        """The latest row of each address and prefix ("2001:db8:1::100/128", "2001:db8:100::/56")
        still leased: Kea appends a row with valid_lifetime 0 when one is released."""
        latest = {f"{r['address']}/{r['prefix_len']}": r for r in self.leases()}
        return {key: r for key, r in latest.items() if r["valid_lifetime"] != "0"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
