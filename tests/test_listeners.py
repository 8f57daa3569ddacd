"""Listening sockets: what every service's listener has in common (ispd/listeners.py)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ispd.listeners import (
    AddressedDatagramTransport,
    CertificateError,
    ConnectionGate,
    bound_socket,
    check_address_free,
    client_key,
    listening_tcp_socket,
    open_datagram_listener,
    server_tls_context,
)
from tests.lab.netns import lab

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM])
def test_an_ipv6_wildcard_takes_ipv6_only_and_leaves_the_port_to_ipv4(kind: socket.SocketKind) -> None:
    # From a review: "[::]" took IPv4 too on UDP (DNS, RADIUS) but not on asyncio's TCP, and an
    # IPv4 listener on its port then failed to start although check-config passed it.
    wildcard = bound_socket("::", 0, kind, reuse_address=kind == socket.SOCK_STREAM)
    try:
        assert wildcard.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        port = wildcard.getsockname()[1]
        check_address_free("127.0.0.1", port, kind)
        beside = bound_socket("127.0.0.1", port, kind, reuse_address=kind == socket.SOCK_STREAM)
        beside.close()
    finally:
        wildcard.close()


def test_a_tcp_listener_on_ipv6_takes_ipv6_only() -> None:
    listening = listening_tcp_socket("::1", 0, 16)
    try:
        assert listening.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        listening.close()


def test_a_bind_failure_keeps_its_errno_and_leaves_no_socket() -> None:
    held = bound_socket("127.0.0.1", 0, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError) as failure:
            bound_socket("127.0.0.1", held.getsockname()[1], socket.SOCK_DGRAM)
        assert "Address already in use" in str(failure.value)
    finally:
        held.close()


def _run_in_namespace(addresses: list[str], script: str, *, setup: tuple[tuple[str, ...], ...] = ()) -> list[str]:
    """What ``script`` prints, run by this Python in a namespace of its own whose loopback has
    the IPv6 ``addresses``, after the ``ip -n NAMESPACE`` commands of ``setup`` (all removed with
    the namespace, also on failure)."""
    with lab() as namespaces:
        namespace = namespaces.namespace("listen")
        for address in addresses:
            subprocess.run(["ip", "-n", namespace, "-6", "addr", "add", address, "dev", "lo", "nodad"], check=True)
        for command in setup:
            subprocess.run(["ip", "-n", namespace, *command], check=True)
        shown = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", textwrap.dedent(script)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        return shown.stdout.split()


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_a_link_local_address_is_bound_on_its_zone() -> None:
    # From a review: check-config took "[fe80::61%eth0]:1812", but the start failed with
    # "Invalid argument" (a bare bind gives no scope id to a link-local address). The address
    # on a namespace's loopback; nothing is sent.
    assert _run_in_namespace(["fe80::61/64"], """
        import socket
        from ispd.listeners import bound_socket
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            sock = bound_socket("fe80::61%lo", 0, kind)
            print(sock.getsockname()[3] == socket.if_nametoindex("lo"))
    """) == ["True", "True"]

class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # Later, as a reply that waited on the store would be sent.
        asyncio.get_running_loop().call_soon(self.transport.sendto, b"re:" + data, addr)  # type: ignore[attr-defined]


async def test_a_wildcard_udp_listener_replies_from_the_address_it_was_asked_at() -> None:
    # From a review: on 0.0.0.0 or [::] the kernel sent the reply from the address it picks for
    # the route back (here 127.0.0.1 for a request to 127.0.0.5), and the NAS or stub resolver,
    # which takes replies only from the address it asked, dropped it.
    transport, _ = await open_datagram_listener(_Echo, bound_socket("0.0.0.0", 0, socket.SOCK_DGRAM))
    port = transport.get_extra_info("sockname")[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.1", 0))
        client.connect(("127.0.0.5", port))  # a connected socket takes datagrams from there only
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(client, b"ping")
        assert await asyncio.wait_for(loop.sock_recv(client, 100), 2) == b"re:ping"
    finally:
        client.close()
        transport.close()


async def test_a_specific_udp_listener_keeps_the_loops_own_transport() -> None:
    transport, _ = await open_datagram_listener(_Echo, bound_socket("127.0.0.1", 0, socket.SOCK_DGRAM))
    try:
        assert not isinstance(transport, AddressedDatagramTransport)
    finally:
        transport.close()


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_a_wildcard_ipv6_listener_replies_from_the_address_it_was_asked_at() -> None:
    assert _run_in_namespace(["2001:db8:77::1/128", "2001:db8:77::2/128"], """
        import asyncio, socket
        from tests.test_listeners import _Echo
        from ispd.listeners import bound_socket, open_datagram_listener

        async def main():
            transport, _ = await open_datagram_listener(_Echo, bound_socket("::", 0, socket.SOCK_DGRAM))
            client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            client.bind(("2001:db8:77::1", 0))
            client.connect(("2001:db8:77::2", transport.get_extra_info("sockname")[1]))
            client.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(client, b"ping")
            print((await asyncio.wait_for(loop.sock_recv(client, 100), 2)).decode())

        asyncio.run(main())
    """) == ["re:ping"]


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_a_datagram_to_a_broadcast_address_is_answered_from_the_interfaces_own() -> None:
    # From the review of the fix: the reply was sent "from" the broadcast address itself, which
    # the kernel refuses (Network is unreachable); the loop's own transport had answered.
    setup = (("link", "add", "v0", "type", "veth", "peer", "name", "v1"),
             ("addr", "add", "198.18.77.1/24", "brd", "+", "dev", "v0"),
             ("link", "set", "v0", "up"), ("link", "set", "v1", "up"))
    assert _run_in_namespace([], """
        import asyncio, socket
        from tests.test_listeners import _Echo
        from ispd.listeners import bound_socket, open_datagram_listener

        async def main():
            transport, _ = await open_datagram_listener(_Echo, bound_socket("0.0.0.0", 0, socket.SOCK_DGRAM))
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            client.bind(("198.18.77.1", 0))
            client.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_sendto(client, b"ping", ("198.18.77.255", transport.get_extra_info("sockname")[1]))
            data, source = await asyncio.wait_for(loop.sock_recvfrom(client, 100), 2)
            print(data.decode(), source[0])

        asyncio.run(main())
    """, setup=setup) == ["re:ping", "198.18.77.1"]


class _Stats:
    connections = 0
    refused_connections = 0


def test_per_client_limits_count_an_ipv6_client_by_its_64() -> None:
    """A home or a host holds a whole /64: counted by single addresses, it would get 2^64
    allowances (Dovecot counts its auth penalty per /48)."""
    assert client_key("198.18.0.5") == "198.18.0.5"
    assert client_key("2001:db8:7::2") == client_key("2001:DB8:7:0:ffff::1") == "2001:db8:7::/64"
    assert client_key("2001:db8:8::2") == "2001:db8:8::/64"
    assert client_key("::ffff:198.18.0.5") == "198.18.0.5"
    # Every host on a link has an address in fe80::/64: those stay apart.
    assert client_key("fe80::2%eth0") != client_key("fe80::3%eth0")
    gate = ConnectionGate(max_total=100, max_per_client=2, stats=_Stats())
    assert [gate.admit(f"2001:db8:7::{i}") for i in (2, 3, 4)] == [True, True, False]
    assert gate.admit("2001:db8:8::2")  # another /64
    gate.release("2001:db8:7::3")
    assert gate.admit("2001:db8:7::99")
    assert gate.per_client == {"2001:db8:7::/64": 2, "2001:db8:8::/64": 1}


def test_an_unproven_connection_counts_in_the_total_only_until_its_address_is_proven() -> None:
    """QUIC Initials may come from forged sources: counted in the total as they come, as their
    client's only once the handshake proves the address (``ispd.dns.quic``)."""
    stats = _Stats()
    gate = ConnectionGate(max_total=2, max_per_client=1, stats=stats)
    assert gate.admit_unproven("198.51.100.7") and gate.admit_unproven("198.51.100.7")
    assert gate.total == 2 and not gate.per_client
    assert gate.prove("198.51.100.7")  # the first handshake done: the client's one place
    assert not gate.prove("198.51.100.7")  # a second, raced to the end: over its limit
    gate.release_unproven()  # (which goes)
    assert not gate.admit_unproven("198.51.100.7")  # at its limit: refused before any work
    assert gate.admit_unproven("198.51.100.8") and not gate.admit_unproven("198.51.100.9")  # the total's
    assert stats.refused_connections == 3
    gate.release("198.51.100.7")
    assert gate.per_client == {} and gate.total == 1


def test_an_encrypted_private_key_is_refused_without_asking_the_terminal(tmp_path: Path) -> None:
    """From a bug hunt: OpenSSL, given no password callback, asks for an encrypted key's
    passphrase on the controlling terminal. A daemon started from a shell froze whole at the
    reload that brought such a key (every service, the metrics, even SIGTERM) waiting for someone
    to type; without a terminal the reload was refused with "[Errno 22] Invalid argument"."""
    import os
    import pty
    import select
    import signal
    import time

    from cryptography.hazmat.primitives import serialization

    from tests.lab.certs import issue

    certificates = issue(tmp_path, "mx.isp.example")
    key = serialization.load_pem_private_key(certificates.private_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"passphrase")))
    child, terminal = pty.fork()  # the child has the pseudo-terminal as its controlling terminal
    if child == 0:
        try:
            server_tls_context(certificates.certificate, encrypted, [])
        except CertificateError as exc:
            os.write(1, f"refused: {exc}\n".encode())
        os._exit(0)
    said = b""
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and b"\n" not in said:
            if select.select([terminal], [], [], 0.5)[0]:
                try:
                    said += os.read(terminal, 4096)
                except OSError:  # the child has gone
                    break
            if b"pass phrase" in said.lower():
                break
    finally:
        os.kill(child, signal.SIGKILL)  # (a child that has exited is a zombie until the wait)
        os.waitpid(child, 0)
        os.close(terminal)
    assert b"pass phrase" not in said.lower(), said
    assert said.startswith(f"refused: the private key {encrypted} is encrypted".encode()), said
