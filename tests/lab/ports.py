"""Ports for test servers, picked below the kernel's ephemeral range.

A port the kernel hands out for ``bind(port 0)`` comes from the same range as the local port of
every outgoing connection, so between picking it and the server binding it, any client socket on
the machine could take it. Ports below that range are only ever taken by someone asking for them
by number, so a pick stays free until the server binds it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_FALLBACK_EPHEMERAL_START = 32768


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_START


def free_port(host: str = "127.0.0.1", kinds: tuple[int, ...] = (socket.SOCK_DGRAM, socket.SOCK_STREAM)) -> int:
    """A port free on ``host`` right now for every socket kind in ``kinds``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    top = _ephemeral_start() - 1
    for _ in range(200):
        port = random.randint(max(1024, top - 12000), top)
        if all(_bindable(family, kind, host, port) for kind in kinds):
            return port
    raise RuntimeError(f"no port free on {host} below {top + 1}")


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
