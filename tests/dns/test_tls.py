"""The TLS listeners' accept loop (DoT and DoH)."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from ispd.dns import tls
from ispd.dns.frontend import TransportStats
from ispd.dns.tls import TLSListener
from ispd.listeners import ConnectionGate


class OutOfDescriptors:
    """A listening socket with a connection waiting that cannot be accepted (EMFILE)."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.accepts = 0

    def accept(self) -> tuple[socket.socket, object]:
        self.accepts += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def fileno(self) -> int:
        return self.real.fileno()


async def test_out_of_descriptors_the_listener_rests_instead_of_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: under `ulimit -n` with connections waiting, the DoT port's accept failed
    and returned while the socket stayed readable, so the loop called it again at once: a core
    at 100 % and nothing logged."""
    monkeypatch.setattr(tls, "ACCEPT_RETRY_SECONDS", 0.5)
    stats = TransportStats()
    listener = TLSListener("dot", ["dot"], ConnectionGate(10, 10, stats), stats, 1.0, serve=None)  # type: ignore[arg-type]
    real = socket.create_server(("127.0.0.1", 0))
    real.setblocking(False)
    client = socket.create_connection(real.getsockname())
    exhausted = OutOfDescriptors(real)
    loop = asyncio.get_running_loop()
    try:
        loop.add_reader(real.fileno(), listener._accept, exhausted)
        await asyncio.sleep(0.3)
        assert exhausted.accepts == 1
        await asyncio.sleep(0.5)  # rested: it looks again
        assert exhausted.accepts == 2
    finally:
        listener._cancel_pauses()
        loop.remove_reader(real.fileno())
        client.close()
        real.close()
