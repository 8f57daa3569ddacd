"""The DHCPv6 transport on a real socket: relayed messages over loopback, and a Reply that waits
for its binding to be durable."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Sequence
from contextlib import AsyncExitStack
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from ispd.config import Config
from ispd.dhcp6.codec import IAPrefix, Message, MessageType, OptionCode, decode, encode, option
from ispd.dhcp6.config import DHCP6Config
from ispd.dhcp6.service import DHCP6Service, server_duid
from ispd.events import EventBus, SessionStarted, SessionStopped
from ispd.service import ServiceContext, ServiceStartError
from ispd.store import StoreConfig, open_store
from ispd.store.models import Lease6, RadiusSession
from tests.dhcp6.test_engine import by_address, ia_na, ia_pd, leasequery, message
from tests.store.outage import WritesDown


class SlowStore:
    """Writes that finish only when the test says so."""

    def __init__(self) -> None:
        self.written: list[tuple[Lease6, str]] = []
        self.release = asyncio.Event()
        self.sessions: list[RadiusSession] = []

    async def list_leases6(self, include_ended: bool = False) -> list[Lease6]:
        return []

    async def list_reservations(self) -> list[object]:
        return []

    async def list_subscribers(self) -> list[object]:
        return []

    async def list_sessions(self, *, open_only: bool = False, limit: int = 1000) -> list[RadiusSession]:
        return list(self.sessions)

    async def record_leases6(self, changes: Sequence[tuple[Lease6, str]]) -> None:
        await self.release.wait()
        self.written += changes


async def _healthy() -> tuple[bool, dict[str, object]]:
    return True, {}


def _relay_socket(stack: AsyncExitStack) -> socket.socket:
    """A relay agent's socket on ::1, closed with ``stack``."""
    relay = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    stack.callback(relay.close)
    relay.bind(("::1", 0))
    relay.setblocking(False)
    return relay

def _relayed(inner: bytes, interface_id: bytes = b"port 1") -> bytes:
    body = struct.pack("!HH", 18, len(interface_id)) + interface_id + struct.pack("!HH", 9, len(inner)) + inner
    return bytes([12, 0]) + bytes(16) + IPv6Address("fe80::5").packed + body


def _unwrapped(reply: bytes) -> Message:
    assert reply[0] == MessageType.RELAY_REPL
    offset = 34
    while offset < len(reply):
        code, length = struct.unpack_from("!HH", reply, offset)
        if code == OptionCode.RELAY_MSG:
            decoded = decode(reply[offset + 4 : offset + 4 + length])
            assert isinstance(decoded, Message)
            return decoded
        offset += 4 + length
    raise AssertionError("no relayed message")


def test_a_relayed_exchange_over_loopback_and_the_reply_after_the_write() -> None:
    config = DHCP6Config.model_validate({
        "enabled": True, "interfaces": ["lo"], "port": 0, "rapid_commit": True,
        "subnet": [{"name": "bng", "prefix": "2001:db8:2::/64", "relay_addresses": ["::1"],
                    "prefix_pool": [{"name": "homes", "prefix": "2001:db8:100::/40", "delegated_length": 56}]}]})

    async def run() -> None:
        store = SlowStore()
        service = DHCP6Service(Config(dhcp6=config), ServiceContext(store, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                    _healthy))
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            await service.start(stack)
            relay = _relay_socket(stack)
            target = ("::1", service.server_port)

            relay.sendto(_relayed(encode(message(MessageType.SOLICIT, ia_pd(2)))), target)
            advertise = _unwrapped(await asyncio.wait_for(loop.sock_recv(relay, 4096), 2))
            assert advertise.type == MessageType.ADVERTISE
            assert advertise.server_id == server_duid(config)
            assert advertise.ias[0].leases == (IAPrefix(IPv6Network("2001:db8:100::/56"), 3600, 7200),)

            rapid = message(MessageType.SOLICIT, ia_pd(2), option(OptionCode.RAPID_COMMIT))
            relay.sendto(_relayed(encode(rapid)), target)
            await asyncio.sleep(0.2)
            try:
                early = relay.recv(4096)
            except BlockingIOError:
                early = b""
            assert early == b"", "the Reply went out before its binding was written"
            store.release.set()
            reply = _unwrapped(await asyncio.wait_for(loop.sock_recv(relay, 4096), 2))
            assert reply.type == MessageType.REPLY and reply.rapid_commit
            assert [(lease.prefix, lease.interface_id, event) for lease, event in store.written] == [
                ("2001:db8:100::/56", "port 1", "granted")]

            relay.sendto(b"\x0c\x00garbage", target)  # counted, dropped, and the next still answered
            relay.sendto(_relayed(encode(message(MessageType.SOLICIT, ia_na(1)))), target)
            unserved = _unwrapped(await asyncio.wait_for(loop.sock_recv(relay, 4096), 2))
            assert unserved.ias[0].status is not None  # the link has no address pool: NoAddrsAvail
            assert service.metrics.dropped.values[("truncated",)] == 1  # type: ignore[attr-defined]
            await service.stop()

    asyncio.run(run())


def test_the_server_duid_is_the_configured_one_or_the_machines(tmp_path: Path) -> None:
    configured = DHCP6Config(server_duid="00:02:00:00:d8:8c:01")
    assert server_duid(configured) == bytes.fromhex("00020000d88c01")
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    first, again = server_duid(DHCP6Config(), machine), server_duid(DHCP6Config(), machine)
    assert first == again and first[:2] == b"\x00\x04" and len(first) == 18
    machine.write_text("fedcba9876543210fedcba9876543210\n")
    assert server_duid(DHCP6Config(), machine) != first



def test_a_reload_that_changes_the_server_duid_is_a_refusal_not_a_failure() -> None:
    """It raised ValueError: the supervisor, which takes only a ServiceStartError for a refusal it
    was told of, logged config.reload.service_refused with a traceback, as for a bug."""
    old = Config(dhcp6=DHCP6Config(server_duid="00:02:00:00:d8:8c:01"))
    new = Config(dhcp6=DHCP6Config(server_duid="00:02:00:00:d8:8c:02"))
    service = DHCP6Service.__new__(DHCP6Service)
    with pytest.raises(ServiceStartError, match="server_duid: a change needs a restart"):
        asyncio.run(service.reload(old, new))

def test_a_reply_too_large_to_send_is_counted_and_the_rest_of_its_batch_still_goes_out() -> None:
    # A Request with thousands of IAs gets a Reply that no option or datagram can carry; encoding
    # it raised in the batch's commit, and the other clients' Replies of that batch were lost.
    config = DHCP6Config.model_validate({
        "enabled": True, "interfaces": ["lo"], "port": 0,
        "subnet": [{"name": "bng", "prefix": "2001:db8:2::/64", "relay_addresses": ["::1"],
                    "prefix_pool": [{"name": "homes", "prefix": "2001:db8:100::/40", "delegated_length": 56}]}]})

    async def run() -> None:
        store = SlowStore()
        store.release.set()
        service = DHCP6Service(Config(dhcp6=config), ServiceContext(store, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                    _healthy))
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            await service.start(stack)
            relay = _relay_socket(stack)
            target = ("::1", service.server_port)
            ours = server_duid(config)
            greedy = message(MessageType.REQUEST, *(ia_pd(i) for i in range(3000)), server=ours,
                             client=bytes.fromhex("0003000102005e1000ff"))
            relay.sendto(_relayed(encode(greedy)), target)
            relay.sendto(_relayed(encode(message(MessageType.REQUEST, ia_pd(2), server=ours))), target)
            reply = _unwrapped(await asyncio.wait_for(loop.sock_recv(relay, 65536), 2))
            assert reply.type == MessageType.REPLY and len(reply.ias) == 1 and reply.ias[0].leases
            assert service.metrics.dropped.values[("reply_too_large",)] == 1  # type: ignore[attr-defined]
            await service.stop()

    asyncio.run(run())


def test_open_radius_sessions_prefixes_are_skipped_from_the_start_and_as_the_bus_tells() -> None:
    """One IPAM with RADIUS: the prefixes of the sessions open at start (from the store) and of
    those that start later (SessionStarted) are given to no DHCPv6 client until their Stop."""
    config = DHCP6Config.model_validate({
        "enabled": True, "interfaces": ["lo"], "port": 0, "rapid_commit": True,
        "subnet": [{"name": "bng", "prefix": "2001:db8:2::/64", "relay_addresses": ["::1"],
                    "prefix_pool": [{"name": "homes", "prefix": "2001:db8:100::/40", "delegated_length": 56}]}]})

    async def run() -> None:
        store, bus = SlowStore(), EventBus()
        store.release.set()
        store.sessions = [RadiusSession(id=1, nas_address="198.18.0.1", acct_session_id="s1", username="anna",
                                        started_at=0.0, updated_at=0.0, delegated_ipv6_prefix="2001:db8:100::/56")]
        service = DHCP6Service(Config(dhcp6=config), ServiceContext(store, bus, CollectorRegistry(),  # type: ignore[arg-type]
                                                                    _healthy))
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            await service.start(stack)
            relay = _relay_socket(stack)

            async def delegated(client: bytes) -> IPv6Network:
                rapid = message(MessageType.SOLICIT, ia_pd(2), option(OptionCode.RAPID_COMMIT), client=client)
                relay.sendto(_relayed(encode(rapid)), ("::1", service.server_port))
                reply = _unwrapped(await asyncio.wait_for(loop.sock_recv(relay, 4096), 2))
                [given] = reply.ias[0].leases
                assert isinstance(given, IAPrefix)
                return given.prefix

            bus.publish(SessionStarted(at=0.0, session_id=2, nas_address="198.18.0.1", acct_session_id="s2",
                                       username="ben", ipv6_networks="2001:db8:ffff::/64,2001:db8:100:100::/56"))
            assert await delegated(bytes.fromhex("0003000102005e100001")) == IPv6Network("2001:db8:100:200::/56")
            bus.publish(SessionStopped(at=1.0, session_id=1, nas_address="198.18.0.1", acct_session_id="s1",
                                       username="anna", ipv6_networks="2001:db8:100::/56"))
            assert not service.engine.sessions.get(1) and service.engine.in_sessions.keys() == {2}
            await service.stop()

    asyncio.run(run())


async def test_a_store_outage_is_one_line_in_the_log_and_health_follows_the_stores_commits(tmp_path: Path) -> None:
    """As DHCPv4's (from a bug hunt on PostgreSQL, its server stopped under load): a line per
    withheld reply, and health failing after the server was back until a binding was written.
    Now one line when it starts, one when it ends; health follows the store's commits."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    writes = WritesDown(store)
    config = DHCP6Config.model_validate({"enabled": True, "interfaces": ["lo"], "port": 0,
                                         "subnet": [{"name": "bng", "prefix": "2001:db8:2::/64",
                                                     "relay_addresses": ["::1"],
                                                     "prefix_pool": [{"name": "homes", "prefix": "2001:db8:100::/40",
                                                                      "delegated_length": 56}]}]})
    service = DHCP6Service(Config(dhcp6=config), ServiceContext(store, EventBus(), CollectorRegistry(), _healthy))
    service._socket = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # (listening, for health())
    unwritten = SimpleNamespace(writes=[(None, "granted")], reply=None, events=[])  # never read: BEGIN fails
    try:
        with capture_logs() as logs:
            for _ in range(20):
                await service._commit([(unwritten, (), None, 0.0, "request")])  # type: ignore[list-item]
            assert service.metrics.dropped.values[("store_error",)] == 20  # type: ignore[attr-defined]
            assert not service.health().ok
            writes.up()
            await store.check_writes()  # as /healthz does
            assert service.health().ok
            await service._commit([(SimpleNamespace(writes=[], reply=None, events=[]), (), None, 0.0,  # type: ignore[list-item]
                                    "information-request")])
        assert [(e["event"], e.get("failed_batches")) for e in logs if e["event"].startswith("dhcp6.binding.write")] \
            == [("dhcp6.binding.write_failed", None), ("dhcp6.binding.write_restored", 20)]
    finally:
        service._socket.close()
        await store.close()


def test_a_refused_leasequery_is_said_in_the_log_once_a_minute_per_interface() -> None:
    """A requester listed by another address than it sends from (a BNG's loopback for its
    uplink's) had every query vanish without a word but for a counter, and waited out its
    timeout for each subscriber. Once a minute per interface, not per source: forgeable."""
    config = DHCP6Config.model_validate({
        "enabled": True, "interfaces": ["uplink"], "leasequery_requesters": ["2001:db8:ff::1"],
        "subnet": [{"name": "bng", "prefix": "2001:db8:2::/64", "relay_addresses": ["2001:db8:ff::1"],
                    "pool": [{"name": "hosts", "range": "2001:db8:2::100 - 2001:db8:2::1ff"}]}]})
    service = DHCP6Service(Config(dhcp6=config), ServiceContext(None, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                _healthy))
    query = encode(leasequery(1, by_address("2001:db8:2::100")))
    with capture_logs() as logs:
        for n in range(1, 4):
            service._handle(query, "uplink", False, (f"2001:db8:ff::{n + 1}", 547, 0, 0), 1000.0 + n, 1000.0)
    assert service.metrics.dropped.values[("leasequery_not_allowed",)] == 3  # type: ignore[attr-defined]
    [refused] = [entry for entry in logs if entry["event"] == "dhcp6.leasequery.refused"]
    assert (refused["interface"], refused["requester"], refused["log_level"]) == ("uplink", "2001:db8:ff::2", "warning")


def test_whether_names_are_published_follows_the_lease_domain_at_start_and_reload() -> None:
    """The Client FQDN option's flags say whether ispd publishes the name: that follows
    [dns.lease_names] domain, at start and at a reload that changes only the DNS section."""
    plain = Config(dhcp6=DHCP6Config(server_duid="00:02:00:00:d8:8c:01"))
    named = Config.model_validate({**plain.model_dump(mode="json"), "dns": {"lease_names": {"domain": "lab.example"}}})
    service = DHCP6Service(plain, ServiceContext(None, EventBus(), CollectorRegistry(), _healthy))  # type: ignore[arg-type]
    assert not service.engine.publishes_names
    asyncio.run(service.reload(plain, named))
    assert service.engine.publishes_names
    asyncio.run(service.reload(named, plain))
    assert not service.engine.publishes_names
