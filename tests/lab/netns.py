"""Network namespaces joined by veth pairs, for tests of what crosses a network.

Addresses come only from the ranges reserved for tests here: 198.18.0.0/15 and 2001:db8::/32.
Everything is removed when the context ends, also when the test fails; deleting a namespace
deletes the veth ends inside it.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

_counter = itertools.count()
_ALLOWED = [ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32")]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _check_allowed(address: str) -> None:
    ip = ipaddress.ip_interface(address).ip
    if not any(ip in net for net in _ALLOWED):
        raise ValueError(f"{address}: tests may only use 198.18.0.0/15 and 2001:db8::/32")


def _wait_for_carrier(ns: str, end: str, timeout: float = 5.0) -> None:
    # A veth end reports carrier only after both ends are up; a packet sent before that is
    # lost, and a test that sends one probe (ping -c 1) would fail now and then.
    deadline = time.monotonic() + timeout
    while True:
        shown = subprocess.run(["ip", "-n", ns, "-o", "link", "show", end], capture_output=True,
                               text=True).stdout
        if "LOWER_UP" in shown or time.monotonic() > deadline:
            return
        time.sleep(0.02)


class Lab:
    def __init__(self, prefix: str = "ispd") -> None:
        # ``prefix`` starts every namespace's name, so that concurrent users (two benchmarks,
        # say) can tell theirs apart at a glance.
        self.prefix = prefix
        self.tag = f"{os.getpid() % 100000}x{next(_counter)}"
        self.namespaces: list[str] = []

    def namespace(self, role: str) -> str:
        name = f"{self.prefix}-{role}-{self.tag}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def link(self, ns_a: str, address_a: str, ns_b: str, address_b: str) -> tuple[str, str]:
        """A veth pair between two namespaces, with an address (CIDR form) on each end."""
        for address in (address_a, address_b):
            _check_allowed(address)
        index = len(self.namespaces) * 10 + next(_counter) % 10
        end_a, end_b = f"va{self.tag}{index}"[-15:], f"vb{self.tag}{index}"[-15:]
        _ip("link", "add", end_a, "netns", ns_a, "type", "veth", "peer", "name", end_b, "netns", ns_b)
        for ns, end, address in ((ns_a, end_a, address_a), (ns_b, end_b, address_b)):
            extra = ["nodad"] if ":" in address else []
            _ip("-n", ns, "addr", "add", address, "dev", end, *extra)
            _ip("-n", ns, "link", "set", end, "up")
        for ns, end in ((ns_a, end_a), (ns_b, end_b)):
            _wait_for_carrier(ns, end)
        return end_a, end_b

    def run(self, ns: str, *command: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *command], capture_output=True, text=True,
                              timeout=timeout)

    def close(self) -> None:
        for name in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.namespaces.clear()


@contextmanager
def lab() -> Iterator[Lab]:
    built = Lab()
    try:
        yield built
    finally:
        built.close()
