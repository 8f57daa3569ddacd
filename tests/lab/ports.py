"""Ports for test servers, picked below the kernel's ephemeral range.

A port the kernel hands out for ``bind(port 0)`` comes from the same range as the local port of
every outgoing connection, so between picking it and the server binding it, any client socket on
the machine could take it. Ports below that range are only ever taken by someone asking for them
by number, so a pick stays free until the server binds it - unless another pick got it too: in
a test that picks several ports before starting the servers that bind them (the RADIUS proxy
test binds its relay's port before its home servers start), or in another pytest-xdist worker.
CI once failed a home server's start on a port in use. So a port given lately (the last RECENT
picks) is not given again by one process, and each worker picks from a slice of its own.
"""

from __future__ import annotations

import os
import random
import re
import socket
from collections import deque
from pathlib import Path

_FALLBACK_EPHEMERAL_START = 32768
_PICKED_FROM = 12000  # ports below the ephemeral range that picks come from
_WORKER_SLICES = 8  # xdist workers gw0..gw7 each get their own part of them (more share)
RECENT = 256
_recent: deque[int] = deque(maxlen=RECENT)


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_START


def free_port(host: str = "127.0.0.1", kinds: tuple[int, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> int:
    """A port free on ``host`` right now for every socket kind in ``kinds``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low, high = _slice()
    for _ in range(200):
        port = random.randint(low, high)
        if port not in _recent and all(_bindable(family, kind, host, port) for kind in kinds):
            _recent.append(port)
            return port
    raise RuntimeError(f"no port free on {host} in {low}-{high}")


def _slice() -> tuple[int, int]:
    """This process's range of ports: below the ephemeral range, its xdist worker's part of it."""
    top = _ephemeral_start() - 1
    low = max(1024, top - _PICKED_FROM)
    worker = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    if worker is None:
        return low, top
    size = (top - low + 1) // _WORKER_SLICES
    start = low + (int(worker.group(1)) % _WORKER_SLICES) * size
    return start, start + size - 1


def _bindable(family: int, kind: int, host: str, port: int) -> bool:
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on over TCP right now."""
    return free_port(host, (socket.SOCK_STREAM,))


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(host, (socket.SOCK_DGRAM,))
