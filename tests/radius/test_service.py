"""RadiusService over a real store, with a NAS that never answers: what housekeeping and stop()
do while a Disconnect is still being retried. housekeeping_interval_seconds is shortened to 1, so
a round comes within a second or two rather than a minute."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from ispd.config import Config
from ispd.dhcp.config import DHCPConfig
from ispd.events import (
    EventBus,
    SessionStarted,
    SessionStopped,
    SubscriberPlanChanged,
    SubscriberResumed,
    SubscriberSuspended,
)
from ispd.radius import service as radius_service
from ispd.radius.codec import Attr, Code, Packet, decode, encode_attributes, encode_request
from ispd.radius.config import LEAVING_THE_PLAN, RadiusConfig
from ispd.radius.dictionary import builtin_dictionary
from ispd.radius.engine import AccountingEngine, Decision, Nas, PendingClaim, RejectReason
from ispd.radius.metrics import RadiusMetrics
from ispd.radius.service import RadiusService
from ispd.service import ServiceContext
from ispd.store import StoreConfig, open_store
from ispd.store.base import Store
from ispd.store.errors import StoreError
from ispd.store.models import (
    AccountingOutcome,
    AccountingRecord,
    AccountingResult,
    AccountingStatus,
    CoARecord,
    OverQuota,
    RadiusSession,
    ReservationKind,
    SubscriberStatus,
)
from tests.lab.fakenas import FakeNas
from tests.store.outage import WritesDown

NAS = "127.58.0.1"  # the NAS, and the address RADIUS listens on (Disconnects come from it)
SECRET = "testing123"


async def _healthy() -> tuple[bool, dict[str, object]]:
    return True, {}


async def _subscriber_with_a_session(store: Store) -> int:
    await store.add_plan("home", actor="test")
    alice = await store.add_subscriber("alice", actor="test", plan="home")
    await store.record_accounting([AccountingRecord(
        at=time.time(), status=AccountingStatus.START, nas_address=NAS, acct_session_id="a1", username="alice",
        subscriber_id=alice.id, nas_client="bng")])
    return alice.id


def _radius_config(coa_port: int, **radius: Any) -> Config:
    return Config(radius=RadiusConfig.model_validate({
        "enabled": True, "listen_auth": [f"{NAS}:0"], "listen_acct": [f"{NAS}:0"],
        "client": [{"name": "bng", "address": f"{NAS}/32", "secret": SECRET, "coa_port": coa_port}],
        "housekeeping_interval_seconds": 1, **radius}))


@asynccontextmanager
async def _running(store: Store, bus: EventBus, config: Config) -> AsyncIterator[RadiusService]:
    service = RadiusService(config, ServiceContext(store, bus, CollectorRegistry(), _healthy))
    async with AsyncExitStack() as stack:
        await service.start(stack)
        yield service


async def _until(condition: Callable[[], Awaitable[bool]], within: float) -> None:
    for _ in range(int(within / 0.05)):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within} s")


async def _records(store: Store) -> list[CoARecord]:
    return await store.list_coa(subscriber="alice")


async def test_housekeeping_sends_no_second_disconnect_beside_the_suspensions_own(tmp_path: Path) -> None:
    """From a review of the retries: housekeeping skipped only sessions its own requests were
    out for, so the suspension's Disconnect, still being sent to a silent NAS, got a second one
    beside it (another Identifier: a NAS that ACKs one NAKs the other)."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        alice = await _subscriber_with_a_session(store)
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode(), answer="silent") as nas:
            # The suspension's Disconnect is under way for 3 s: a housekeeping round or two within.
            async with _running(store, bus, _radius_config(nas.port, coa_timeout_seconds=1.0, coa_attempts=3)) \
                    as service:
                rounds: list[float] = []
                enforce = service._enforce_status

                async def counted(now: float) -> None:
                    rounds.append(time.monotonic())
                    await enforce(now)

                service._enforce_status = counted  # type: ignore[method-assign]
                await store.set_subscriber_status(alice, SubscriberStatus.SUSPENDED, actor="test")
                suspended_at = time.monotonic()
                bus.publish(SubscriberSuspended(time.time(), alice, "alice"))

                async def recorded() -> bool:
                    return bool(await _records(store))

                await _until(recorded, within=8)
                assert any(r > suspended_at for r in rounds), "no housekeeping round while it was under way"
                assert [(r.kind, r.result, r.attempts) for r in await _records(store)] == [("disconnect", "timeout", 3)]
                assert {(r.code, r.identifier) for r in nas.requests} == {(40, nas.requests[0].identifier)}
                assert len(nas.requests) == 3  # its three sends, and no one else's
            await bus.drain(5)
    finally:
        await store.close()


async def test_a_nas_given_a_client_and_secret_of_its_own_gets_its_disconnects_signed_with_it(
        tmp_path: Path) -> None:
    """From a bug hunt: a session accounted under a client network ("bng") kept that client's
    secret for its Disconnects after the operator gave its NAS a [[radius.client]] of its own with
    a new secret (and a reload): the NAS, accounting with the new secret already, dropped the
    Disconnect of a suspension as forged and the subscriber stayed online."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        alice = await _subscriber_with_a_session(store)  # accounted by "bng"
        bus = EventBus()
        with FakeNas(NAS, secret=b"its-own-secret") as nas:
            config = Config(radius=RadiusConfig.model_validate({
                "enabled": True, "listen_auth": [f"{NAS}:0"], "listen_acct": [f"{NAS}:0"],
                "client": [{"name": "bng", "address": "127.58.0.0/24", "secret": SECRET, "coa_port": nas.port},
                           {"name": "bng-1", "address": f"{NAS}/32", "secret": "its-own-secret",
                            "coa_port": nas.port}]}))
            async with _running(store, bus, config):
                await store.set_subscriber_status(alice, SubscriberStatus.SUSPENDED, actor="test")
                bus.publish(SubscriberSuspended(time.time(), alice, "alice"))
                [disconnect] = await asyncio.to_thread(nas.wait_for, 1)
                assert disconnect.code == 40 and disconnect.authentic

                async def recorded() -> bool:
                    return bool(await _records(store))

                await _until(recorded, within=5)
                assert [(r.kind, r.result) for r in await _records(store)] == [("disconnect", "ack")]
            await bus.drain(5)
    finally:
        await store.close()


@pytest.mark.parametrize(("plan_attributes", "leaving"), [
    ([], (40, "resumed: leaving the walled garden")),  # the garden's Filter-Id would stay: a Disconnect
    (["Filter-Id = full"], (43, "resumed")),  # the plan's own Filter-Id replaces it: a CoA does
], ids=["plan-without-it", "plan-with-it"])
async def test_a_session_leaves_the_walled_garden_by_disconnect_when_a_coa_would_leave_it_walled(
        tmp_path: Path, plan_attributes: list[str], leaving: tuple[int, str]) -> None:
    """From a bug hunt: a resume sent a CoA with the plan's profile only, and a NAS that applies
    a CoA's attributes over the session's kept the garden's Filter-Id: the subscriber, resumed,
    stayed walled."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        alice = await _subscriber_with_a_session(store)
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode()) as nas:
            config = _radius_config(nas.port, suspended="walled-garden", walled_garden_attributes=["Filter-Id = walled"],
                                    plan=[{"plan": "home", "attributes": plan_attributes}])
            async with _running(store, bus, config):
                await store.set_subscriber_status(alice, SubscriberStatus.SUSPENDED, actor="test")
                bus.publish(SubscriberSuspended(time.time(), alice, "alice"))
                [walled] = await asyncio.to_thread(nas.wait_for, 1)
                assert (walled.code, walled.first(Attr.FILTER_ID)) == (43, b"walled")
                await store.set_subscriber_status(alice, SubscriberStatus.ACTIVE, actor="test")
                bus.publish(SubscriberResumed(time.time(), alice, "alice"))
                back = (await asyncio.to_thread(nas.wait_for, 2))[1]
                assert back.code == leaving[0] and back.first(Attr.ACCT_SESSION_ID) == b"a1"

                async def recorded() -> bool:
                    return len(await _records(store)) == 2

                await _until(recorded, within=5)
                assert (await _records(store))[0].reason == leaving[1]  # (newest first)
            await bus.drain(5)
    finally:
        await store.close()


async def test_stop_does_not_wait_for_enforcements_retries_to_a_silent_nas(tmp_path: Path) -> None:
    """Housekeeping's Disconnects are not recorded until they end, so the next start sends them
    again: stop() need not spend the shutdown grace on them (6 s here, 9 s by default)."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        alice = await _subscriber_with_a_session(store)
        # Suspended while ispd was down: enforcement's first round, at start, sends the Disconnect.
        await store.set_subscriber_status(alice, SubscriberStatus.SUSPENDED, actor="test")
        with FakeNas(NAS, secret=SECRET.encode(), answer="silent") as nas:
            config = _radius_config(nas.port, coa_timeout_seconds=2.0, coa_attempts=3)
            async with _running(store, EventBus(), config) as service:
                await asyncio.to_thread(nas.wait_for, 1, 5)
                started = time.monotonic()
                await service.stop()
                assert time.monotonic() - started < 1.0
            assert await _records(store) == []  # cut short: nothing recorded
            nas.answer = "ack"
            async with _running(store, EventBus(), config):
                await asyncio.to_thread(nas.wait_for, 2, 5)  # so the next start sends it again

                async def acknowledged() -> bool:
                    return [r.result for r in await _records(store)] == ["ack"]

                await _until(acknowledged, within=5)
    finally:
        await store.close()


async def test_the_open_session_view_learns_what_the_store_filled_in(tmp_path: Path) -> None:
    """What the store fills in (prefixes a dual-stack NAS learnt after the Start, the subscriber
    of a login the service did not know yet) the open-session view learns from the outcome: the
    engine stops asking for a fill-in the prefixes repeat in every interim, and the subscriber's
    sessions are counted and reachable by CoA."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        bus = EventBus()
        started: list[SessionStarted] = []
        bus.subscribe(SessionStarted, started.append)
        service = RadiusService(_radius_config(3799), ServiceContext(store, bus, CollectorRegistry(), _healthy))
        engine = AccountingEngine(service.directory, service.sessions, builtin_dictionary(), 300)
        nas = Nas("bng", SECRET.encode())

        async def account(status: int, *more: tuple[int, bytes]) -> None:
            attributes = encode_attributes([(Attr.ACCT_STATUS_TYPE, status.to_bytes(4, "big")),
                                            (Attr.USER_NAME, b"carol"), (Attr.ACCT_SESSION_ID, b"c1"), *more])
            packet = decode(encode_request(Code.ACCOUNTING_REQUEST, 1, attributes, SECRET.encode(),
                                           message_authenticator=False))
            record = engine.record(packet, nas, NAS, time.time())
            assert record is not None
            asked.append(record.fill_in)
            [result] = await store.record_accounting([record])
            service._follow(record, result)

        asked: list[bool] = []
        prefixes = ((Attr.FRAMED_IPV6_PREFIX, bytes((0, 64)) + bytes.fromhex("20010db8ffff0001")),
                    (Attr.DELEGATED_IPV6_PREFIX, bytes((0, 56)) + bytes.fromhex("20010db80001ab")))
        await account(1)  # Start, without the prefixes, before carol is anyone's login
        carol = await store.add_subscriber("carol", actor="test")  # not in the service's view yet
        assert service.directory.find("carol") is None
        await account(3, *prefixes)  # the prefixes, learnt late; carol's now, the store finds
        await account(3, *prefixes)
        await account(3, *prefixes)
        assert asked == [True, True, False, False]
        [session] = service.sessions.of_subscriber(carol.id)
        assert (session.framed_ipv6_prefix, session.delegated_ipv6_prefix) == (
            "2001:db8:ffff:1::/64", "2001:db8:1:ab00::/56")
        # DNS hears of it (its walled garden and plan filters): who holds the prefixes, once.
        await bus.drain(5)
        assert [(e.subscriber_id, e.networks()) for e in started] == [
            (None, []), (carol.id, ["2001:db8:ffff:1::/64", "2001:db8:1:ab00::/56"])]
    finally:
        await store.close()


async def test_a_session_reporting_another_subscriber_s_reserved_prefix_is_a_conflict_in_the_log(
        tmp_path: Path) -> None:
    """From a bug hunt: a NAS that reported, for anna's session, the /56 reserved for ben (in a
    Start, or learnt in an interim) was recorded without a word, while ispd kept giving that /56
    to ben. Warned of, as an IPv4 address someone else holds is; anna's own prefix is not."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        anna = await store.add_subscriber("anna", actor="test")
        await store.add_subscriber("ben", actor="test")
        await store.add_reservation("ben", ReservationKind.USERNAME, "ben", actor="test", prefix6="2001:db8:1000::/56")
        await store.add_reservation("anna", ReservationKind.USERNAME, "anna", actor="test",
                                    prefix6="2001:db8:1000:100::/56")
        async with _running(store, EventBus(), _radius_config(3799)) as service:
            engine = AccountingEngine(service.directory, service.sessions, builtin_dictionary(), 300)
            nas = Nas("bng", SECRET.encode())

            async def account(status: int, session_id: bytes, prefix: str) -> None:
                network = IPv6Network(prefix)
                attributes = encode_attributes([
                    (Attr.ACCT_STATUS_TYPE, status.to_bytes(4, "big")), (Attr.USER_NAME, b"anna"),
                    (Attr.ACCT_SESSION_ID, session_id),
                    (Attr.DELEGATED_IPV6_PREFIX, bytes((0, network.prefixlen)) + network.network_address.packed[:(network.prefixlen + 7) // 8])])
                packet = decode(encode_request(Code.ACCOUNTING_REQUEST, 1, attributes, SECRET.encode(),
                                               message_authenticator=False))
                record = engine.record(packet, nas, NAS, time.time())
                assert record is not None
                [result] = await store.record_accounting([record])
                service._follow(record, result)

            with capture_logs() as logs:
                await account(1, b"a1", "2001:db8:1000:100::/56")  # anna's own
                await account(1, b"a2", "2001:db8:1000::/56")  # ben's
                await account(3, b"a3", "2001:db8:1000::/60")  # inside ben's, its Start lost
            conflicts = [(e["prefix"], e["acct_session_id"], e["subscriber_id"]) for e in logs
                         if e["event"] == "radius.prefix.conflict"]
            assert conflicts == [("2001:db8:1000::/56", "a2", anna.id), ("2001:db8:1000::/60", "a3", anna.id)]
    finally:
        await store.close()


@pytest.mark.parametrize("status", [3, 2], ids=["interim", "stop"])
async def test_the_view_drops_the_session_another_users_made_up_one_superseded(tmp_path: Path, status: int) -> None:
    """From a bug hunt: a NAS restarted without Accounting-On and gave carol's open id to dave,
    whose Start was lost. The store makes dave's session up from his interim or Stop and ends
    carol's (Superseded); the open-session view must not keep carol's session open (her
    Simultaneous-Use slot and pool address taken until it went stale)."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        bus = EventBus()
        stopped: list[SessionStopped] = []
        bus.subscribe(SessionStopped, stopped.append)
        service = RadiusService(_radius_config(3799), ServiceContext(store, bus, CollectorRegistry(), _healthy))
        engine = AccountingEngine(service.directory, service.sessions, builtin_dictionary(), 300)
        nas = Nas("bng", SECRET.encode())

        async def account(status: int, user: bytes) -> AccountingResult:
            attributes = encode_attributes([(Attr.ACCT_STATUS_TYPE, status.to_bytes(4, "big")),
                                            (Attr.USER_NAME, user), (Attr.ACCT_SESSION_ID, b"00000001"),
                                            (Attr.ACCT_SESSION_TIME, (60).to_bytes(4, "big"))])
            packet = decode(encode_request(Code.ACCOUNTING_REQUEST, 1, attributes, SECRET.encode(),
                                           message_authenticator=False))
            record = engine.record(packet, nas, NAS, time.time())
            assert record is not None
            [result] = await store.record_accounting([record])
            service._follow(record, result)
            return result

        carol = await store.add_subscriber("carol", actor="test")
        await service._load_store()
        await account(1, b"carol")
        assert len(service.sessions.of_subscriber(carol.id)) == 1
        dave = await account(status, b"dave")
        assert dave.session is not None and dave.session.username == "dave"
        assert service.sessions.of_subscriber(carol.id) == []
        held = service.sessions.get((NAS, "00000001"))
        assert (held.username if held is not None else None) == ("dave" if status == 3 else None)
        await bus.drain(5)
        assert [(e.subscriber_id, e.cause) for e in stopped][:1] == [(carol.id, "Superseded")]
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_session_moved_to_another_bng_of_the_client_closes_its_copy_on_the_old_one(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """From a bug hunt (ispd run, a client network of two BNG addresses): a redundant pair's
    failover keeps the session's Acct-Session-Id, and the new BNG's interim made a session of its
    own up beside the old BNG's, which stayed open until it went stale - also after the
    session's Stop from the new BNG, so that a max_sessions = 1 subscriber's redial there was
    rejected as Simultaneous-Use and ``session list --open`` showed them online. The old copy is
    closed (Session-Moved) and, as a stale one, reopened if the old BNG reports it again."""
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db", backend=backend, url=url))
    try:
        bus = EventBus()
        service = RadiusService(_radius_config(3799), ServiceContext(store, bus, CollectorRegistry(), _healthy))
        engine = AccountingEngine(service.directory, service.sessions, builtin_dictionary(), 300)
        nas = Nas("bng", SECRET.encode(), network=IPv4Network("127.58.0.0/29"))

        async def account(source: str, status: int, seconds: int) -> AccountingResult:
            attributes = encode_attributes([(Attr.ACCT_STATUS_TYPE, status.to_bytes(4, "big")),
                                            (Attr.USER_NAME, b"bob"), (Attr.ACCT_SESSION_ID, b"m1"),
                                            (Attr.ACCT_SESSION_TIME, seconds.to_bytes(4, "big"))])
            packet = decode(encode_request(Code.ACCOUNTING_REQUEST, 1, attributes, SECRET.encode(),
                                           message_authenticator=False))
            record = engine.record(packet, nas, source, time.time())
            assert record is not None
            [result] = await store.record_accounting([record])
            service._follow(record, result)
            await asyncio.gather(*service._tasks)
            return result

        async def open_copies() -> list[tuple[str, str | None]]:
            return sorted((s.nas_address, s.terminate_cause) for s in await store.list_sessions(open_only=True))

        bob = await store.add_subscriber("bob", actor="test")
        await service._load_store()
        await account("127.58.0.2", 1, 0)
        await account("127.58.0.3", 3, 60)  # the failover: the same session, from the other BNG
        assert [s.nas_address for s in service.sessions.of_subscriber(bob.id)] == ["127.58.0.3"]
        assert await open_copies() == [("127.58.0.3", None)]
        [old] = await store.list_sessions(nas_address="127.58.0.2")
        assert old.terminate_cause == "Session-Moved"
        await account("127.58.0.3", 2, 90)
        assert service.sessions.of_subscriber(bob.id) == [] and await open_copies() == []
        # The old BNG had it after all: reopened, as a stale one would be.
        assert (await account("127.58.0.2", 3, 120)).outcome == AccountingOutcome.REOPENED
        assert [s.nas_address for s in service.sessions.of_subscriber(bob.id)] == ["127.58.0.2"]
    finally:
        await store.close()


async def test_usage_counts_for_the_sessions_holder_not_the_logins_owner_now(tmp_path: Path) -> None:
    """A login given to another subscriber during a session (a reserved PPPoE login moved, a
    username reused after a deletion): the engine names the login's owner now, but the usage
    the interim and the Stop add is the session holder's, and so is the quota check after it."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        service = RadiusService(_radius_config(3799), ServiceContext(store, EventBus(), CollectorRegistry(),
                                                                     _healthy))
        alice, bob = 11, 12
        service.sessions.put(RadiusSession(1, NAS, "s1", "shared", 1000.0, 1000.0, subscriber_id=alice))
        for status, outcome in ((AccountingStatus.INTERIM_UPDATE, AccountingOutcome.UPDATED),
                                (AccountingStatus.STOP, AccountingOutcome.STOPPED)):
            record = AccountingRecord(at=1060.0, status=status, nas_address=NAS, acct_session_id="s1",
                                      username="shared", subscriber_id=bob, fill_in=False)
            assert service._follow(record, AccountingResult(outcome)) == alice
        assert service.sessions.get((NAS, "s1")) is None
        # A session the view does not know is the record's (or the store's finding).
        record = AccountingRecord(at=1060.0, status=AccountingStatus.INTERIM_UPDATE, nas_address=NAS,
                                  acct_session_id="s2", username="shared", subscriber_id=bob)
        assert service._follow(record, AccountingResult(AccountingOutcome.UPDATED)) == bob
    finally:
        await store.close()


async def test_a_retransmission_while_the_home_server_is_slow_is_not_proxied_again(tmp_path: Path) -> None:
    # The home servers may take longer than duplicate_window_seconds (timeout x attempts x
    # servers): the NAS's copies meanwhile must still be taken for the one in progress (from a
    # review: the marker expired with the window, and a copy went to the home server again).
    import socket

    from ispd.radius.codec import encode_response

    nas, home_secret = "127.62.7.1", b"home-secret"
    home = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    home.bind(("127.62.7.2", 0))
    home.setblocking(False)
    loop = asyncio.get_running_loop()
    asked: list[bytes] = []

    def answer_late() -> None:
        data, peer = home.recvfrom(4096)
        asked.append(data)
        request = decode(data)
        loop.call_later(1.8, home.sendto, encode_response(
            Code.ACCESS_ACCEPT, request.identifier, request.authenticator, b"", home_secret), peer)

    loop.add_reader(home.fileno(), answer_late)
    config = Config(radius=RadiusConfig.model_validate({
        "enabled": True, "listen_auth": [f"{nas}:0"], "listen_acct": [f"{nas}:0"],
        "client": [{"name": "ap", "address": f"{nas}/32", "secret": SECRET}], "duplicate_window_seconds": 1,
        "realm": [{"name": "home.example", "auth_servers": [f"127.62.7.2:{home.getsockname()[1]}"],
                   "secret": home_secret.decode(), "timeout_seconds": 3, "attempts": 1}]}))
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    nas_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        async with _running(store, EventBus(), config) as service:
            [port] = [p for kind, _, p in service.bound if kind == "auth"]
            nas_socket.bind((nas, 0))
            nas_socket.settimeout(0)
            request = encode_request(Code.ACCESS_REQUEST, 5, encode_attributes([(Attr.USER_NAME, b"v@home.example")]),
                                     SECRET.encode())
            nas_socket.sendto(request, (nas, port))
            await asyncio.sleep(1.3)  # past the duplicate window, the home server still silent
            service.duplicates.sweep()
            nas_socket.sendto(request, (nas, port))
            await asyncio.sleep(1.2)
            answers = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    answers.append(decode(nas_socket.recv(4096)))
            assert len(asked) == 1
            assert [a.code for a in answers] == [Code.ACCESS_ACCEPT]
    finally:
        loop.remove_reader(home.fileno())
        home.close()
        nas_socket.close()
        await store.close()


async def test_home_servers_that_failed_lately_go_last_with_one_send_and_copies_are_bounded(tmp_path: Path) -> None:
    """A realm whose servers are all down costs a request one timeout per server, not attempts
    of them; accounting copies waiting for home servers are bounded (past it: dropped, counted)."""
    from ispd.radius.proxy import HomeServer, Realm, Realms
    from ispd.radius.service import MAX_ACCOUNTING_COPIES

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        service = RadiusService(_radius_config(3799), ServiceContext(store, EventBus(), CollectorRegistry(),
                                                                     _healthy))
        first, second = HomeServer("198.18.5.1", 1812), HomeServer("198.18.5.2", 1812)
        assert service._home_servers((first, second), 3) == [(first, 3), (second, 3)]
        service._home_down[first] = time.monotonic() + 30
        assert service._home_servers((first, second), 3) == [(second, 3), (first, 1)]
        service._home_down[second] = time.monotonic() + 30
        assert service._home_servers((first, second), 3) == [(first, 1), (second, 1)]
        service.realms = Realms([Realm("home.example", (first,), (first,), b"s", False, 1.0, 1, True)], [])
        service._copying = MAX_ACCOUNTING_COPIES
        record = AccountingRecord(at=1.0, status=AccountingStatus.START, nas_address=NAS, acct_session_id="r1",
                                  username="v@home.example")
        packet = decode(encode_request(Code.ACCOUNTING_REQUEST, 1, encode_attributes(
            [(Attr.USER_NAME, b"v@home.example"), (Attr.ACCT_STATUS_TYPE, (1).to_bytes(4, "big"))]),
            SECRET.encode(), message_authenticator=False))
        service._proxy_accounting(record, packet, time.perf_counter())
        assert service.metrics.proxied.values[("acct", "dropped")] == 1 and not service._tasks
    finally:
        await store.close()


async def test_a_home_server_with_every_identifier_in_use_is_passed_over_not_taken_for_down(tmp_path: Path) -> None:
    """4,096 requests in flight to one home server (a burst, a slow server, a realm that points
    back at ispd): the next request cannot be sent to it, which says nothing of the server. It
    was taken for silence: marked down, and with status checks dead, so the realm's requests
    were rejected until a Status-Server was answered."""
    from ispd.radius.coa import Exchange
    from ispd.radius.homeclient import MAX_SOCKETS
    from ispd.radius.proxy import HomeServer, Realm

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        service = RadiusService(_radius_config(3799), ServiceContext(store, EventBus(), CollectorRegistry(),
                                                                     _healthy))
        busy, other = HomeServer("198.18.5.1", 1812), HomeServer("198.18.5.2", 1812)
        realm = Realm("home.example", (busy, other), (), b"s", False, 1.0, 1, True, status_check=30.0)
        accept = decode(encode_request(Code.ACCESS_ACCEPT, 1, b"", b"s"))

        class Client:
            def __init__(self, exchange: Exchange) -> None:
                self.exchange_result = exchange

            async def exchange(self, *args: Any, **kwargs: Any) -> Exchange:
                return self.exchange_result

        clients = {busy: Client(Exchange(None, 0, f"{MAX_SOCKETS * 256} requests in flight to this server already")),
                   other: Client(Exchange(accept, 1))}
        service._home_client = clients.__getitem__  # type: ignore[method-assign,assignment]
        with capture_logs() as logs:
            for _ in range(2):  # (logged once a while per server, not per request)
                answered, _ = await service._ask_home(realm, (busy, other), lambda identifier: b"",
                                                      (int(Code.ACCESS_ACCEPT),))
        assert answered is not None and answered[0] is accept
        assert [(e["event"], e["log_level"], e["server"], e["error"])
                for e in logs if e["event"].startswith("radius.proxy")] == [
            ("radius.proxy.home_server_unsent", "warning", str(busy),
             f"{MAX_SOCKETS * 256} requests in flight to this server already")]
        assert busy not in service._home_down and busy not in service._home_dead
        assert service._home_servers((busy, other), 3) == [(busy, 3), (other, 3)]
        assert service.metrics.home_servers.get(str(busy), "auth", "unsent") == 2
        assert service.metrics.home_servers.get(str(busy), "auth", "silent") == 0
    finally:
        for task in service._tasks:
            task.cancel()
        await store.close()


async def test_a_home_server_whose_answers_are_refused_is_told_apart_from_a_silent_one(tmp_path: Path) -> None:
    """A home server with another secret, or one that signs no Message-Authenticator
    (FreeRADIUS before 3.2.5 on PAP), answers every request: each answer was refused and the
    server was logged and counted as silent, with no error, so its operator looked for a network
    fault. It is down all the same (no answer of it can be used), but logged and counted as
    refused, with why."""
    from ispd.radius.coa import Exchange
    from ispd.radius.proxy import HomeServer, Realm

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        service = RadiusService(_radius_config(3799), ServiceContext(store, EventBus(), CollectorRegistry(),
                                                                     _healthy))
        wrong, quiet = HomeServer("198.18.5.1", 1812), HomeServer("198.18.5.2", 1812)
        realm = Realm("home.example", (wrong, quiet), (), b"s", False, 1.0, 2, True)
        error = "answered, but refused: an answer whose Response Authenticator does not verify (another shared secret?)"

        class Client:
            def __init__(self, exchange: Exchange) -> None:
                self.exchange_result = exchange

            async def exchange(self, *args: Any, **kwargs: Any) -> Exchange:
                return self.exchange_result

        clients = {wrong: Client(Exchange(None, 2, error, refused=True)), quiet: Client(Exchange(None, 2))}
        service._home_client = clients.__getitem__  # type: ignore[method-assign,assignment]
        with capture_logs() as logs:
            answered, refused = await service._ask_home(realm, (wrong, quiet), lambda identifier: b"",
                                                         (int(Code.ACCESS_ACCEPT),))
        assert answered is None and refused
        assert [(e["event"], e["server"], e["error"]) for e in logs if e["event"].startswith("radius.proxy")] == [
            ("radius.proxy.home_server_refused", str(wrong), error),
            ("radius.proxy.home_server_silent", str(quiet), None)]
        assert service.metrics.home_servers.get(str(wrong), "auth", "refused") == 1
        assert service.metrics.home_servers.get(str(wrong), "auth", "silent") == 0
        assert service.metrics.home_servers.get(str(quiet), "auth", "silent") == 1
        assert wrong in service._home_down and quiet in service._home_down  # both of no use now
    finally:
        await store.close()


async def test_an_accounting_server_that_signs_no_message_authenticator_comes_back(tmp_path: Path) -> None:
    """An accounting server's Accounting-Responses are taken without Message-Authenticator (the
    Response Authenticator proves them), but its answer to a Status-Server check was refused
    without one, require_message_authenticator being on for the realm's Access answers: a server
    that signs none (FreeRADIUS before 3.2.5) was used while up and, once down, never again,
    every accounting copy lost while it answered every check."""
    import socket

    from ispd.radius.codec import encode_response
    from ispd.radius.proxy import HomeServer, Realm

    class Accounting(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: Any) -> None:
            request = decode(data)
            self.transport.sendto(encode_response(Code.ACCOUNTING_RESPONSE, request.identifier, request.authenticator,
                                                  b"", b"s", message_authenticator=False), addr)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Accounting, sock=sock)
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        service = RadiusService(_radius_config(3799), ServiceContext(store, EventBus(), CollectorRegistry(),
                                                                     _healthy))
        server = HomeServer("127.0.0.1", sock.getsockname()[1])
        realm = Realm("home.example", (HomeServer("127.0.0.1", 9),), (server,), b"s", False, 0.2, 1, True,
                      status_check=0.05)
        service._home_dead[server] = asyncio.current_task()  # type: ignore[assignment]
        with capture_logs() as logs:
            await asyncio.wait_for(service._check_home_server(realm, server, radius_service._ACCOUNTING_ANSWER), 2)
        assert server not in service._home_dead
        assert [e["event"] for e in logs if e["event"].startswith("radius.proxy")] == ["radius.proxy.home_server_alive"]
        # A check whose answers are refused (here: an Accounting-Response on what is taken for
        # an auth port) goes on, but says why, once.
        with capture_logs() as logs, contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service._check_home_server(realm, server, (int(Code.ACCESS_ACCEPT),)), 0.6)
        assert [(e["event"], e["error"]) for e in logs if e["event"].startswith("radius.proxy")] == [
            ("radius.proxy.home_server_check_refused", "answered, but refused: an answer of code 5, not one expected")]
    finally:
        service._close_home_clients()
        transport.close()
        await store.close()


async def test_a_realm_that_routes_back_here_is_cut_at_its_second_pass(tmp_path: Path) -> None:
    """A realm whose home server sends the request back to ispd (an institution's own realm left
    out of local_realms, the federation's proxy sending it home): each pass was a new request,
    so an Access-Request went round until 4,096 waited on the server, and an accounting copy
    until the duplicate cache took one for a retransmission, every pass a record. ispd's own
    Proxy-State now tells it that it proxied the request already."""
    import socket

    from tests.lab.ports import free_port

    here = "127.62.9.1"
    auth, acct = free_port(here), free_port(here)
    config = Config(radius=RadiusConfig.model_validate({
        "enabled": True, "listen_auth": [f"{here}:{auth}"], "listen_acct": [f"{here}:{acct}"],
        "client": [{"name": "ap", "address": "127.62.9.0/24", "secret": SECRET}],
        "realm": [{"name": "loop.example", "auth_servers": [f"{here}:{auth}"], "acct_servers": [f"{here}:{acct}"],
                   "secret": SECRET, "timeout_seconds": 2, "attempts": 1}]}))
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    nas_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    nas_socket.bind(("127.62.9.2", 0))
    nas_socket.setblocking(False)
    try:
        async with _running(store, EventBus(), config) as service:
            loop = asyncio.get_running_loop()
            request = encode_request(Code.ACCESS_REQUEST, 5, encode_attributes(
                [(Attr.USER_NAME, b"v@loop.example"), (Attr.PROXY_STATE, b"the-nas")]), SECRET.encode())
            await loop.sock_sendto(nas_socket, request, (here, auth))
            answer = decode(await asyncio.wait_for(loop.sock_recv(nas_socket, 4096), 5))
            assert answer.code == Code.ACCESS_REJECT and answer.get_all(Attr.PROXY_STATE) == [b"the-nas"]
            assert service.metrics.rejects.get("proxy_loop") == 1
            assert service.metrics.proxied.get("auth", "reject") == 1  # the one pass, answered by the second

            start = encode_request(Code.ACCOUNTING_REQUEST, 6, encode_attributes(
                [(Attr.USER_NAME, b"v@loop.example"), (Attr.ACCT_STATUS_TYPE, (1).to_bytes(4, "big")),
                 (Attr.ACCT_SESSION_ID, b"s1")]), SECRET.encode(), message_authenticator=False)
            await loop.sock_sendto(nas_socket, start, (here, acct))
            assert decode(await asyncio.wait_for(loop.sock_recv(nas_socket, 4096), 5)).code == \
                Code.ACCOUNTING_RESPONSE

            async def copied_once() -> bool:
                return service.metrics.proxied.get("acct", "acked") == 1
            await _until(copied_once, within=5)
            await asyncio.sleep(0.3)
            assert service.metrics.proxied.get("acct", "loop") == 1
            assert service.metrics.proxied.get("acct", "acked") == 1
    finally:
        nas_socket.close()
        await store.close()


async def test_accounting_on_reaches_every_server_of_a_load_balanced_realm(tmp_path: Path) -> None:
    """A load-balanced realm's sessions of one NAS are spread over its accounting servers: an
    Accounting-On (the NAS rebooted, its sessions are over) that went to one of them only left
    the others' sessions open there."""
    from ispd.radius.proxy import HomeServer, Realm, Realms

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        service = RadiusService(_radius_config(3799), ServiceContext(store, EventBus(), CollectorRegistry(),
                                                                     _healthy))
        servers = (HomeServer("198.18.5.1", 1813), HomeServer("198.18.5.2", 1813), HomeServer("198.18.5.3", 1813))
        service.realms = Realms([Realm("home.example", servers[:1], servers, b"s", False, 1.0, 1, True,
                                       load_balance=True)], [])
        asked: list[tuple[HomeServer, ...]] = []

        async def ask_home(realm: Realm, servers: tuple[HomeServer, ...], *args: Any) -> tuple[None, bool]:
            asked.append(servers)
            return None, False

        service._ask_home = ask_home  # type: ignore[method-assign,assignment]
        record = AccountingRecord(at=1.0, status=AccountingStatus.ACCOUNTING_ON, nas_address=NAS,
                                  acct_session_id="", username="")
        packet = decode(encode_request(Code.ACCOUNTING_REQUEST, 1, encode_attributes(
            [(Attr.ACCT_STATUS_TYPE, (7).to_bytes(4, "big"))]), SECRET.encode(), message_authenticator=False))
        service._proxy_accounting(record, packet, time.perf_counter())
        await asyncio.gather(*service._tasks)
        assert sorted(asked, key=str) == [(server,) for server in servers]
    finally:
        await store.close()


async def _homes_service(store: Store, prefix: str) -> RadiusService:
    """RADIUS over ``store``, loaded, with a prefix pool "homes" of ``prefix`` for plan "v6"."""
    config = _radius_config(3799, prefix_pool=[{"name": "homes", "prefix": prefix}],
                            plan=[{"plan": "v6", "prefix_pool": "homes"}])
    service = RadiusService(config, ServiceContext(store, EventBus(), CollectorRegistry(), _healthy))
    await service._load_store()
    return service


def _homes_claim(service: RadiusService, login: str) -> PendingClaim:
    """An Access-Accept of ``login`` waiting for a prefix of "homes", for its reservation if the
    directory knows one."""
    found = service.directory.find(login)
    assert found is not None
    return PendingClaim(found[0], None, login, False, "pap", b"", None, None, fixed=found[1], prefix_pool="homes",
                        prefix_reservation=found[1].reservation if found[1] is not None else None)


async def test_a_full_prefix_pool_is_logged_with_its_own_size(tmp_path: Path) -> None:
    """From a bug hunt: a /54 pool of four /56s, all reserved, was logged as "no free /56 found
    among the next 4096 of the pool", a search larger than the pool."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("v6", actor="test")
        subscribers = [await store.add_subscriber(f"s{n}", actor="test", plan="v6") for n in range(5)]
        service = await _homes_service(store, "2001:db8:1000::/54")

        for subscriber in subscribers[:4]:
            assert await service._reserve_prefix(_homes_claim(service, subscriber.username)) is not None
        with capture_logs() as logs:
            assert await service._reserve_prefix(_homes_claim(service, "s4")) is None
        [full] = [e for e in logs if e["event"] == "radius.prefix.pool_exhausted"]
        assert full["detail"] == "all 4 of the pool's /56s are reserved", full
    finally:
        await store.close()


async def test_a_pool_prefix_is_reserved_past_what_the_store_refuses_or_taken_from_a_reservation_made_elsewhere(
        tmp_path: Path) -> None:
    """The directory's index does not see everything the store does (a longer prefix inside a
    candidate, a reservation another process just made): the store refuses, and the service
    passes to the next candidate, or uses the username's reservation it now finds."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("v6", actor="test")
        anna, ben, carol = [await store.add_subscriber(name, actor="test", plan="v6") for name in ("anna", "ben", "carol")]
        service = await _homes_service(store, "2001:db8:1000::/48")
        # Made after the service loaded (by the CLI, say) and not heard of yet:
        await store.add_reservation(carol.id, ReservationKind.DUID, "00:03:00:01:02:00:5e:00:00:03", actor="test",
                                    prefix6="2001:db8:1000::/60")  # inside the pool's first /56
        await store.add_reservation(ben.id, ReservationKind.USERNAME, "ben", actor="test",
                                    prefix6="2001:db8:1000:4200::/56")

        def claim(name: str) -> PendingClaim:
            made = _homes_claim(service, name)
            assert made.fixed is None  # no reservation known for the login
            return made

        assert await service._reserve_prefix(claim("anna")) == "2001:db8:1000:100::/56"
        anna_now = service.directory.find("anna")  # the next login has it without the store's poll
        assert anna_now is not None and anna_now[1] is not None and anna_now[1].prefix6 == "2001:db8:1000:100::/56"
        assert await service._reserve_prefix(claim("ben")) == "2001:db8:1000:4200::/56"
        assert [(r.subscriber_id, r.key, r.prefix6) for r in await store.list_reservations()
                if r.kind == ReservationKind.USERNAME] == [
            (ben.id, "ben", "2001:db8:1000:4200::/56"), (anna.id, "anna", "2001:db8:1000:100::/56")]
        # The store failing: no prefix (the login is accepted without one), counted.
        carol_claim = claim("carol")

        async def failing(*args: object, **kwargs: object) -> None:
            raise StoreError("disk I/O error")

        store.add_reservation = failing  # type: ignore[method-assign, assignment]
        assert await service._reserve_prefix(carol_claim) is None
        counted = service.metrics.prefix_reservations
        assert (counted.get("reserved"), counted.get("failed"), counted.get("exhausted")) == (1, 1, 0)
    finally:
        await store.close()


async def test_a_pool_prefix_goes_into_the_logins_reservation_unless_one_was_set_meanwhile(tmp_path: Path) -> None:
    """A login reserved with an address only (a business's alice@pppoe) gets its pool prefix in
    that reservation, not a second one; a prefix the operator gave it meanwhile stays, and a
    reservation of the username made meanwhile without one is filled."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("v6", actor="test")
        alice, bob, carol = [await store.add_subscriber(n, actor="test", plan="v6") for n in ("alice", "bob", "carol")]
        pppoe = await store.add_reservation(alice.id, ReservationKind.USERNAME, "alice@pppoe", actor="test",
                                            address="198.18.7.7")
        bobs = await store.add_reservation(bob.id, ReservationKind.USERNAME, "bob@pppoe", actor="test")
        service = await _homes_service(store, "2001:db8:1000::/48")
        assert await service._reserve_prefix(_homes_claim(service, "alice@pppoe")) == "2001:db8:1000::/56"
        assert await store.list_reservations(subscriber=alice.id) == [
            replace(pppoe, prefix6="2001:db8:1000::/56")]
        now = service.directory.find("alice@pppoe")
        assert now is not None and now[1] is not None and (now[1].address, now[1].prefix6) == (
            "198.18.7.7", "2001:db8:1000::/56")
        # The operator gives bob@pppoe a prefix after the Access-Request, before the store write.
        bob_claim = _homes_claim(service, "bob@pppoe")
        await store.update_reservation(bobs.id, actor="test", prefix6="2001:db8:2000::/48")
        assert await service._reserve_prefix(bob_claim) == "2001:db8:2000::/48"
        # carol's username reserved meanwhile (a host name only): the prefix goes into that one,
        # the same candidate (bob's, :100, was passed over as any candidate refused is).
        carol_claim = _homes_claim(service, "carol")
        made = await store.add_reservation(carol.id, ReservationKind.USERNAME, "carol", actor="test", hostname="c")
        assert await service._reserve_prefix(carol_claim) == "2001:db8:1000:200::/56"
        assert await store.list_reservations(subscriber=carol.id) == [replace(made, prefix6="2001:db8:1000:200::/56")]
        counted = service.metrics.prefix_reservations
        assert (counted.get("reserved"), counted.get("failed"), counted.get("exhausted")) == (2, 0, 0)
    finally:
        await store.close()


async def test_a_pool_prefix_goes_into_no_other_reservation_when_the_logins_is_gone(tmp_path: Path) -> None:
    """The prefix meant for a login whose reservation went meanwhile (the directory a store poll
    behind, the claim waiting for the store) goes into no other reservation, not the one added
    next (before migration 17 it took the deleted one's number), nor out in that login's
    Access-Accept."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("v6", actor="test")
        alice, bob = [await store.add_subscriber(n, actor="test", plan="v6") for n in ("alice", "bob")]
        pppoe = await store.add_reservation(alice.id, ReservationKind.USERNAME, "alice@pppoe", actor="test",
                                            address="198.18.7.7")
        service = await _homes_service(store, "2001:db8:1000::/48")
        stale = _homes_claim(service, "alice@pppoe")
        assert stale.prefix_reservation is not None
        await store.delete_reservation(pppoe.id, actor="test")
        bobs = await store.add_reservation(bob.id, ReservationKind.USERNAME, "bob@pppoe", actor="test")
        assert bobs.id == pppoe.id + 1  # (numbers are not given again)
        assert await service._reserve_prefix(stale) is None
        assert await store.list_reservations() == [bobs]
    finally:
        await store.close()


async def test_a_plan_change_out_of_a_walled_quota_disconnects_like_a_resume(tmp_path: Path) -> None:
    """From a review: only a resume was taken for leaving the walled garden; a session walled by
    its plan's monthly quota, moved to a plan without one, got a CoA that left the garden's
    Filter-Id in force."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("capped", actor="test", monthly_quota_bytes=1000, over_quota=OverQuota.WALLED_GARDEN)
        home = await store.add_plan("home", actor="test")
        alice = (await store.add_subscriber("alice", actor="test", plan="capped")).id
        now = time.time()
        await store.record_accounting([AccountingRecord(
            at=now - 60, status=AccountingStatus.START, nas_address=NAS, acct_session_id="a1", username="alice",
            subscriber_id=alice, nas_client="bng")])
        await store.record_accounting([AccountingRecord(
            at=now - 1, status=AccountingStatus.INTERIM_UPDATE, nas_address=NAS, acct_session_id="a1",
            username="alice", subscriber_id=alice, nas_client="bng", input_octets=5000, output_octets=0,
            session_time_seconds=59)])
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode()) as nas:
            config = _radius_config(nas.port, walled_garden_attributes=["Filter-Id = walled"],
                                    plan=[{"plan": "home", "attributes": []}])
            async with _running(store, bus, config) as service:
                subject = service.directory.by_id(alice)
                assert subject is not None
                subject.over_quota = True  # (the quota checker's finding: the session is walled)
                await service._move(service.sessions.of_subscriber(alice)[0], True, "over quota")
                [walled] = await asyncio.to_thread(nas.wait_for, 1)
                assert (walled.code, walled.first(Attr.FILTER_ID)) == (43, b"walled")  # into the garden
                await store.set_subscriber_plan(alice, "home", actor="test")
                bus.publish(SubscriberPlanChanged(time.time(), alice, "alice", home.id))
                moved = (await asyncio.to_thread(nas.wait_for, 2))[1]
                # Out of the garden, to a plan whose profile has no Filter-Id: a CoA cannot take
                # the garden's away, so (as on a resume) a Disconnect is due.
                assert moved.code == 40, (moved.code, moved.first(Attr.FILTER_ID))
            await bus.drain(5)
    finally:
        await store.close()


@pytest.mark.parametrize(("to", "over_quota", "code"), [
    (None, True, 40),  # `set-plan --none` while throttled: the throttle would stay
    (None, False, 40),  # the plan's own rate would stay
    ("plain", False, 40),  # a plan without rates: the same
    ("fast", True, 43),  # a plan with rates: its CoA replaces the throttle
])
async def test_a_plan_change_to_a_profile_without_the_old_rates_disconnects(
        tmp_path: Path, to: str | None, over_quota: bool, code: int) -> None:
    """From a fix task: `subscriber set-plan quinn --none` of a subscriber throttled over its
    quota sent a CoA-Request without any rate attribute; the NAS acknowledged it and kept the
    throttle (a CoA cannot say "remove"), while quinn's next login got no rate limit at all. As
    out of the walled garden, the session is disconnected, and logs in again to its new profile."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("capped", actor="test", download_kbps=100000, upload_kbps=20000,
                             monthly_quota_bytes=1000, over_quota=OverQuota.THROTTLE,
                             over_quota_download_kbps=2000, over_quota_upload_kbps=1000)
        plans = {"fast": (await store.add_plan("fast", actor="test", download_kbps=500000, upload_kbps=100000)).id,
                 "plain": (await store.add_plan("plain", actor="test")).id, None: None}
        alice = (await store.add_subscriber("alice", actor="test", plan="capped")).id
        now = time.time()
        for status, at, octets in ((AccountingStatus.START, now - 60, 0),
                                   (AccountingStatus.INTERIM_UPDATE, now - 1, 5000 * over_quota)):
            await store.record_accounting([AccountingRecord(
                at=at, status=status, nas_address=NAS, acct_session_id="a1", username="alice",
                subscriber_id=alice, nas_client="bng", input_octets=octets, output_octets=0,
                session_time_seconds=round(at - now + 60))])
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode()) as nas:
            config = _radius_config(nas.port, client=[{"name": "bng", "address": f"{NAS}/32", "secret": SECRET,
                                                       "coa_port": nas.port, "kind": "mikrotik"}])
            async with _running(store, bus, config) as service:
                subject = service.directory.by_id(alice)
                assert subject is not None and subject.over_quota == over_quota  # (read at start: throttled)
                await store.set_subscriber_plan(alice, to, actor="test")
                bus.publish(SubscriberPlanChanged(time.time(), alice, "alice", plans[to]))
                [request] = await asyncio.to_thread(nas.wait_for, 1)
                assert request.code == code, (request.code, request.attributes.get(26))
                if code == 40:
                    async def recorded() -> bool:
                        return bool(await _records(store))

                    await _until(recorded, within=5)
                    assert (await _records(store))[0].reason == f"plan changed: {LEAVING_THE_PLAN}"  # (newest first)
            await bus.drain(5)
    finally:
        await store.close()


@pytest.mark.parametrize(("kind", "rates", "sent"), [
    ("cisco", True, None),  # no rate-limit attribute and no plan attributes: the rates go nowhere
    ("mikrotik", True, b"100000k/500000k"),
    ("cisco", False, b""),  # a plan without rates: nothing the NAS lacks (as before)
])
async def test_a_plan_change_sends_no_coa_that_changes_nothing(tmp_path: Path, kind: str, rates: bool,
                                                               sent: bytes | None) -> None:
    """From a bug hunt: a plan change (or the over-quota throttle) for a session on a Cisco ASR,
    whose kind gets no rate-limit attribute, sent a CoA-Request with the session's identification
    alone; the NAS acknowledged it, kept the old rate, and `subscriber show` said "back to the
    plan's profile: CoA-Request acknowledged". Nothing is sent, and the outcome says so."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        alice = await _subscriber_with_a_session(store)
        fast = await store.add_plan("fast", actor="test", download_kbps=500000 if rates else None,
                                    upload_kbps=100000 if rates else None)
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode()) as nas:
            config = _radius_config(nas.port, client=[{"name": "bng", "address": f"{NAS}/32", "secret": SECRET,
                                                       "coa_port": nas.port, "kind": kind}])
            async with _running(store, bus, config):
                await store.set_subscriber_plan(alice, "fast", actor="test")
                with capture_logs() as logs:
                    bus.publish(SubscriberPlanChanged(time.time(), alice, "alice", fast.id))

                    async def recorded() -> bool:
                        return bool(await _records(store))

                    await _until(recorded, within=5)
                [record] = await _records(store)
                if sent is None:
                    assert (record.kind, record.result, record.attempts) == ("coa", "error", 0)
                    assert nas.requests == []
                    assert [e["nas_kind"] for e in logs if e["event"] == "radius.coa.nothing_to_send"] == ["cisco"]
                else:
                    assert (record.kind, record.result) == ("coa", "ack")
                    [request] = nas.requests
                    assert request.code == 43
                    assert (request.attributes[26][0].endswith(sent) if sent  # Mikrotik-Rate-Limit
                            else 26 not in request.attributes)
            await bus.drain(5)
    finally:
        await store.close()


async def test_a_session_keeps_its_pool_address_held_after_a_reload_takes_the_pool_away(tmp_path: Path) -> None:
    """A reload that leaves a pool named by no plan (or shrinks it) built the view of the pools
    anew from the store's leases in the new pools only: the open sessions' addresses of the old
    one were renewed no more, their holds lapsed while the sessions used them, and DHCP (which
    shared the pool) gave them to its clients. The claims stay known: renewed, given back at the
    Stop."""
    from ispd.radius.addresses import holder_of
    from ispd.store.models import AddressClaim

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("home", actor="test")
        alice = await store.add_subscriber("alice", actor="test", plan="home")
        mac, now = "02:00:5e:10:00:01", time.time()
        claimed = await store.claim_address(AddressClaim("old", ("198.18.58.10",), holder_of("alice", mac), now + 300,
                                                         alice.id, mac, mac))
        assert claimed.lease is not None
        start = AccountingRecord(at=now + 1, status=AccountingStatus.START, nas_address=NAS, acct_session_id="a1",
                                 username="alice", subscriber_id=alice.id, framed_ip="198.18.58.10",
                                 calling_station_id=mac, nas_client="bng")
        await store.record_accounting([start])
        old = _radius_config(3799, address_hold_seconds=300, plan=[{"plan": "home", "address_pool": "old"}],
                             address_pool=[{"name": "old", "range": "198.18.58.10 - 198.18.58.19"}])
        new = _radius_config(3799, address_hold_seconds=300, plan=[{"plan": "home", "address_pool": "new"}],
                             address_pool=[{"name": "new", "range": "198.18.58.20 - 198.18.58.29"}])
        async with _running(store, EventBus(), old) as service:
            await service.reload(old, new)
            await service._renew_claims(now + 200)  # less than half the hold left: renewed
            assert (await store.get_lease("198.18.58.10")).expires_at == now + 500
            stop = replace(start, at=now + 210, status=AccountingStatus.STOP)
            [result] = await store.record_accounting([stop])
            service._follow(stop, result)
            await _until(lambda: _released(store, "198.18.58.10"), within=5)
    finally:
        await store.close()


async def _released(store: Store, address: str) -> bool:
    return str((await store.get_lease(address)).state) == "released"


async def test_a_session_is_stale_by_the_interim_interval_its_plan_gave(tmp_path: Path) -> None:
    """A plan that tells its NASes to report hourly (Acct-Interim-Interval in its attributes):
    its sessions were closed as stale after stale_session_intervals of interim_interval_seconds
    (their addresses freed, Simultaneous-Use lifted) while the NAS still had them. A plan without
    one keeps the default's."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("hourly", actor="test")
        await store.add_plan("basic", actor="test")
        hourly = await store.add_subscriber("alice", actor="test", plan="hourly")
        basic = await store.add_subscriber("bob", actor="test", plan="basic")
        config = _radius_config(3799, interim_interval_seconds=60, stale_session_intervals=2,
                                plan=[{"plan": "hourly", "attributes": ["Acct-Interim-Interval = 3600"]}])
        async with _running(store, EventBus(), config) as service:
            port = next(p for kind, _, p in service.bound if kind == "acct")
            loop = asyncio.get_running_loop()
            for subscriber, session_id in ((hourly, b"h1"), (basic, b"b1")):
                attributes = encode_attributes([(Attr.ACCT_STATUS_TYPE, (1).to_bytes(4, "big")),
                                                (Attr.USER_NAME, subscriber.username.encode()),
                                                (Attr.CLASS, f"ispd:{subscriber.id}".encode()),
                                                (Attr.ACCT_SESSION_ID, session_id)])
                request = encode_request(Code.ACCOUNTING_REQUEST, 1, attributes, SECRET.encode(),
                                         message_authenticator=False)
                transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                                   local_addr=(NAS, 0), remote_addr=(NAS, port))
                transport.sendto(request)
                transport.close()

            async def bobs_closed() -> bool:
                return [s.acct_session_id for s in await store.list_sessions(open_only=True)] == ["h1"]

            async def both_open() -> bool:
                return len(service.sessions) == 2

            # Silent for 1,000 s: bob's (2 x 60 s) is stale, alice's (2 x 3600 s) is not.
            await _until(both_open, within=10)
            service.sessions.clock = lambda: time.monotonic() + 1000
            await _until(bobs_closed, within=10)
            [session] = await store.list_sessions(open_only=True)
            assert session.interim_interval == 3600
            assert service.sessions.count(hourly.id) == 1
    finally:
        await store.close()


def test_every_proxied_result_counted_is_exported_from_the_start() -> None:
    """The closed label sets are at 0 from the start (so increase() sees the first event): every
    (kind, result) the service counts for proxying, "loop" of accounting copies included."""
    source = Path(radius_service.__file__).read_text()
    counted = set(re.findall(r'proxied\.inc\("(auth|acct)", "([a-z]+)"\)', source))
    assert ("acct", "loop") in counted
    assert counted <= set(RadiusMetrics().proxied.values)


async def test_a_reload_gives_the_sockets_the_new_receive_buffer_size(tmp_path: Path) -> None:
    """receive_buffer_bytes was set when the sockets were opened only: a reload that raised it
    (after a burst overflowed the buffer) said it applied all and left the old size."""
    import socket

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        old = _radius_config(3799, receive_buffer_bytes=256 * 1024)
        new = _radius_config(3799, receive_buffer_bytes=4 * 1024 * 1024)
        async with _running(store, EventBus(), old) as service:
            def sizes() -> list[int]:
                return [t.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                        for t in service._transports]
            before = sizes()
            await service.reload(old, new)
            assert len(before) == 2 and all(after > size for after, size in zip(sizes(), before, strict=True))
    finally:
        await store.close()


def test_listening_addresses_are_named_with_ipv6_in_brackets() -> None:
    """The status line (systemd's STATUS=, radius.started) said "auth :::1812" for [::]:1812."""
    service = RadiusService(_radius_config(3799), ServiceContext(None, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                 _healthy))
    service.bound = [("auth", "::", 1812), ("acct", "fe80::1%eth0", 1813), ("acct", "127.0.0.1", 1813)]
    assert service.describe() == "radius on auth [::]:1812, acct [fe80::1%eth0]:1813, acct 127.0.0.1:1813"


def test_rejects_are_logged_again_after_the_wall_clock_is_stepped_back() -> None:
    """Access-Rejects are logged once a minute per NAS, subscriber and reason, timed by the wall
    clock: stepped back three hours, a subscriber's failed logins stayed out of the log (the
    operator's trail of them) for three hours."""
    service = RadiusService(_radius_config(3799), ServiceContext(None, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                 _healthy))
    nas = Nas("bng", SECRET.encode())
    decision = Decision(code=Code.ACCESS_REJECT, method="pap", reject=RejectReason.WRONG_PASSWORD, subscriber_id=1)
    now = 1_800_000_000.0
    with capture_logs() as logged:
        service._log_reject(decision, nas, now)
        service._log_reject(decision, nas, now + 30)  # within the minute: counted, not logged
        service._log_reject(decision, nas, now - 3 * 3600)
    rejected = [e for e in logged if e["event"] == "radius.access.rejected"]
    assert [e["not_logged_since"] for e in rejected] == [0, 1]


def test_drops_from_a_new_source_each_do_not_write_a_line_each() -> None:
    """From a bug hunt: 10,000 datagrams from 10,000 addresses that are no client (a forged
    source each costs nothing) wrote 10,000 radius.request.dropped warnings: the once-a-minute
    throttle was per source. Now a few sources a minute per reason, every datagram counted in
    the metric, and the next line tells how many sources went unlogged."""
    service = RadiusService(_radius_config(3799), ServiceContext(None, EventBus(), CollectorRegistry(),  # type: ignore[arg-type]
                                                                 _healthy))
    now = 1_800_000_000.0
    with capture_logs() as logged:
        for i in range(1000):
            service._dropped("auth", "unknown_client", f"198.18.{i // 250}.{i % 250}", None, now + i / 100)
        service._dropped("acct", "unknown_client", "198.18.9.9", None, now + 10)  # another port: its own lines
        service._dropped("auth", "unknown_client", "198.18.9.10", None, now + 61)
    dropped = [e for e in logged if e["event"] == "radius.request.dropped"]
    assert len(dropped) == radius_service.DROP_LOG_SOURCES + 2
    assert dropped[-2]["port"] == "acct" and "sources_not_logged" not in dropped[-2]
    assert dropped[-1]["source"] == "198.18.9.10"
    assert dropped[-1]["sources_not_logged"] == 1000 - radius_service.DROP_LOG_SOURCES
    assert service.metrics.dropped.get("auth", "unknown_client") == 1001


async def test_a_wall_clock_stepped_forward_past_the_holds_renews_them_at_once(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Under libfaketime, the clock stepped a day forward: alice's session went on (its interim
    taken), but its address's hold had ended by the wall clock, and bob's login got the address
    (a pool of one) before the next housekeeping round renewed it. A step is seen at the next
    sweep (a second), and the holds renewed then."""
    from ispd.radius.addresses import holder_of
    from ispd.store.models import AddressClaim

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    wall = [time.time()]
    try:
        await store.add_plan("home", actor="test")
        alice = await store.add_subscriber("alice", actor="test", plan="home")
        mac, now = "02:00:5e:10:00:01", wall[0]
        claimed = await store.claim_address(AddressClaim("one", ("198.18.58.10",), holder_of("alice", mac), now + 300,
                                                         alice.id, mac, mac))
        assert claimed.lease is not None
        await store.record_accounting([AccountingRecord(
            at=now + 1, status=AccountingStatus.START, nas_address=NAS, acct_session_id="a1", username="alice",
            subscriber_id=alice.id, framed_ip="198.18.58.10", calling_station_id=mac, nas_client="bng")])
        config = _radius_config(3799, address_hold_seconds=300, housekeeping_interval_seconds=60,
                                plan=[{"plan": "home", "address_pool": "one"}],
                                address_pool=[{"name": "one", "range": "198.18.58.10 - 198.18.58.10"}])
        service = RadiusService(config, ServiceContext(store, EventBus(), CollectorRegistry(), _healthy,
                                                       clock=lambda: wall[0]))
        async with AsyncExitStack() as stack:
            await service.start(stack)
            await asyncio.sleep(1.5)  # the first sweep, without a step
            wall[0] += 86400

            async def renewed() -> bool:
                return (await store.get_lease("198.18.58.10")).expires_at > wall[0]

            await _until(renewed, within=3)
    finally:
        await store.close()


def _realm_of_one_home_server(nas: str, home: socket.socket, accounting: bool = False) -> Config:
    """RADIUS for the NAS at ``nas`` (client "ap"), proxying realm home.example to the one home
    server bound at ``home`` (0.2 s, one attempt; its accounting there too if ``accounting``)."""
    host, port = home.getsockname()
    return Config(radius=RadiusConfig.model_validate({
        "enabled": True, "listen_auth": [f"{nas}:0"], "listen_acct": [f"{nas}:0"],
        "client": [{"name": "ap", "address": f"{nas}/32", "secret": SECRET}],
        "realm": [{"name": "home.example", "auth_servers": [f"{host}:{port}"],
                   "acct_servers": [f"{host}:{port}"] if accounting else [],
                   "secret": "home-secret", "timeout_seconds": 0.2, "attempts": 1}]}))


async def _realm_login(service: RadiusService, nas_socket: socket.socket, nas: str) -> Packet:
    """The answer to an Access-Request for v@home.example sent from ``nas_socket`` (bound here, at
    ``nas``) to the service's auth port."""
    [port] = [p for kind, _, p in service.bound if kind == "auth"]
    nas_socket.bind((nas, 0))
    nas_socket.setblocking(False)
    request = encode_request(Code.ACCESS_REQUEST, 6, encode_attributes([(Attr.USER_NAME, b"v@home.example")]),
                             SECRET.encode())
    nas_socket.sendto(request, (nas, port))
    return decode(await asyncio.wait_for(asyncio.get_running_loop().sock_recv(nas_socket, 4096), 5))


async def test_an_access_reject_for_silent_home_servers_is_counted_as_a_decision(tmp_path: Path) -> None:
    """From a bug hunt: the Access-Reject sent when no home server answered was counted in
    ispd_radius_rejects_total (home_server_unreachable) but not in ispd_radius_auth_total, so
    the dashboard's reject ratio missed it and IspdRadiusRejectRatioHigh's (rejects by reason over
    decisions) went past 100 %."""
    nas = "127.62.7.3"
    home = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    home.bind(("127.62.7.4", 0))
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    nas_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        async with _running(store, EventBus(), _realm_of_one_home_server(nas, home)) as service:
            assert ("proxy", "reject") in service.metrics.auth.values  # exported from the start
            answer = await _realm_login(service, nas_socket, nas)
            assert answer.code == Code.ACCESS_REJECT
            assert service.metrics.rejects.get(RejectReason.HOME_SERVER_UNREACHABLE) == 1
            assert service.metrics.auth.get("proxy", "reject") == 1
    finally:
        home.close()
        nas_socket.close()
        await store.close()


async def test_a_home_server_of_another_secret_is_counted_refused_not_timed_out(tmp_path: Path) -> None:
    """From a code read: a home server with another secret (or that signs no Message-Authenticator)
    answered every request, the answers were refused, and the request was counted as
    ispd_radius_proxied_total{result="timeout"}, "no home server answered", for the Access-Request
    and for the accounting copy alike: the realm's alert sent its operator to the network."""
    from ispd.radius.codec import encode_response

    nas = "127.62.7.5"
    home = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    home.bind(("127.62.7.6", 0))

    class OtherSecret(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: Any) -> None:
            request = decode(data)
            code = Code.ACCOUNTING_RESPONSE if request.code == Code.ACCOUNTING_REQUEST else Code.ACCESS_ACCEPT
            self.transport.sendto(encode_response(code, request.identifier, request.authenticator, b"",
                                                  b"not-the-realms-secret"), addr)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(OtherSecret, sock=home)
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    nas_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        async with _running(store, EventBus(), _realm_of_one_home_server(nas, home, accounting=True)) as service:
            assert (await _realm_login(service, nas_socket, nas)).code == Code.ACCESS_REJECT
            assert service.metrics.proxied.get("auth", "refused") == 1
            assert service.metrics.proxied.get("auth", "timeout") == 0
            realm = service.realms.by_name["home.example"]
            service._home_down.clear()
            packet = decode(encode_request(Code.ACCOUNTING_REQUEST, 1, encode_attributes(
                [(Attr.ACCT_STATUS_TYPE, (1).to_bytes(4, "big")), (Attr.USER_NAME, b"v@home.example")]),
                SECRET.encode(), message_authenticator=False))
            service._copy_accounting(realm, packet, time.perf_counter(), realm.acct_servers)
            await asyncio.gather(*[t for t in service._tasks if t.get_name() == "proxy-accounting"])
            assert service.metrics.proxied.get("acct", "refused") == 1
            assert service.metrics.proxied.get("acct", "timeout") == 0
    finally:
        transport.close()
        nas_socket.close()
        await store.close()


async def test_a_home_server_that_answers_others_while_one_request_waits_is_not_taken_for_down(
        tmp_path: Path) -> None:
    """From a code read: one request its home server never answered (an eduroam federation
    proxy answers nothing when the visitor's own server is silent) took the server for down
    though it answered every other request meanwhile: with status checks, the realm's next
    logins were all rejected at once, unsent, until a Status-Server was answered
    (status_check_seconds later); without, they went elsewhere for 30 s. FreeRADIUS takes a
    server that answered within the wait for alive."""
    from ispd.radius.codec import encode_response

    nas = "127.62.7.7"
    home = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    home.bind(("127.62.7.8", 0))
    heard: list[bytes] = []

    class Federation(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: Any) -> None:
            request = decode(data)
            user = request.get(Attr.USER_NAME) or b""
            heard.append(user)
            if not user.startswith(b"lost@"):
                self.transport.sendto(encode_response(Code.ACCESS_ACCEPT, request.identifier, request.authenticator,
                                                      b"", b"home-secret"), addr)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Federation, sock=home)
    host, port = home.getsockname()
    config = Config(radius=RadiusConfig.model_validate({
        "enabled": True, "listen_auth": [f"{nas}:0"], "listen_acct": [f"{nas}:0"],
        "client": [{"name": "ap", "address": f"{nas}/32", "secret": SECRET}],
        "realm": [{"name": "*", "auth_servers": [f"{host}:{port}"], "secret": "home-secret",
                   "timeout_seconds": 0.3, "attempts": 2, "status_check_seconds": 60}]}))
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    try:
        async with _running(store, EventBus(), config) as service:
            [auth_port] = [p for kind, _, p in service.bound if kind == "auth"]

            async def login(user: bytes) -> int:
                nas_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(nas_socket)
                nas_socket.bind((nas, 0))
                nas_socket.setblocking(False)
                nas_socket.sendto(encode_request(Code.ACCESS_REQUEST, 1, encode_attributes([(Attr.USER_NAME, user)]),
                                                 SECRET.encode()), (nas, auth_port))
                return decode(await asyncio.wait_for(loop.sock_recv(nas_socket, 4096), 5)).code

            lost = asyncio.ensure_future(login(b"lost@far.example"))
            await asyncio.sleep(0.1)
            assert await login(b"ok1@near.example") == Code.ACCESS_ACCEPT  # answered while lost@ waits
            assert await lost == Code.ACCESS_REJECT  # (no answer: rejected, as FreeRADIUS does)
            assert await login(b"ok2@near.example") == Code.ACCESS_ACCEPT
            assert heard.count(b"ok2@near.example") == 1
            assert service.metrics.home_servers.get(f"{host}:{port}", "auth", "silent") == 1
            assert not service._home_dead
    finally:
        for nas_socket in sockets:
            nas_socket.close()
        transport.close()
        await store.close()


def test_every_method_a_reject_is_counted_under_is_exported_from_the_start() -> None:
    """Rejects that name no method of a password (no User-Name, no credentials) were counted
    under method="" (to Prometheus, no method label at all) and, as a proxy loop's "proxy", only
    from the first: increase() missed it."""
    from ispd.radius import engine as radius_engine

    source = Path(radius_engine.__file__).read_text()
    methods = set(re.findall(r'_reject\(RejectReason\.[A-Z_]+, "([^"]*)"', source))
    assert {"none", "proxy", "pap"} <= methods
    exported = {method for method, result in RadiusMetrics().auth.values if result == "reject"}
    assert methods <= exported


async def test_a_proxied_request_is_timed_apart_from_ispds_own_access_requests(tmp_path: Path) -> None:
    """From a bug hunt: a proxied Access-Request's time (the home servers' round trip, or their
    timeouts) went into kind="access", which IspdRadiusSlow and the dashboard read as ispd's own
    work: a realm's slow home server fired an alert about scrypt and CPU."""
    nas = "127.62.7.5"
    home = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    home.bind(("127.62.7.6", 0))
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    nas_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        async with _running(store, EventBus(), _realm_of_one_home_server(nas, home)) as service:
            assert (await _realm_login(service, nas_socket, nas)).code == Code.ACCESS_REJECT
            assert sum(service.metrics.latency["access"].counts) == 0
            assert sum(service.metrics.latency["proxy"].counts) == 1
            assert service.metrics.latency["proxy"].total >= 0.2  # the home server's timeout
    finally:
        home.close()
        nas_socket.close()
        await store.close()


async def test_an_address_dhcp_declined_stays_out_of_the_claims_candidates(tmp_path: Path) -> None:
    """A DHCP client that declines its address (RFC 2131 §4.4.1: something else answers ARP for
    it) puts it in quarantine, which the store keeps; the view of a shared pool took the
    decline's LeaseEnded for a free address, proposed it to every login, and a run of them (a
    rogue device squatting a range, each client there declining) used up a claim's rounds of
    candidates: the login was rejected as pool_exhausted with half the pool free."""
    from ispd.events import LeaseEnded, LeaseGranted
    from ispd.store.models import LeaseService

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        bus, now = EventBus(), time.time()
        config = _radius_config(3799, plan=[{"plan": "home", "address_pool": "p"}],
                                address_pool=[{"name": "p", "range": "198.18.58.10 - 198.18.58.14"}])
        async with _running(store, bus, config) as service:
            for address in ("198.18.58.10", "198.18.58.11", "198.18.58.12"):
                bus.publish(LeaseGranted(at=now, address=address, expires_at=now + 3600, service=LeaseService.DHCP))
                bus.publish(LeaseEnded(at=now, address=address, reason="declined", held_until=now + 600))
            assert service.addresses.candidates("p", "bob 02:00:5e:10:00:02", now) == ("198.18.58.13", "198.18.58.14")
            # Its quarantine over, it is free again.
            assert "198.18.58.10" in service.addresses.candidates("p", "bob 02:00:5e:10:00:02", now + 601)
            # A release or an expiry frees it at once, as before.
            bus.publish(LeaseGranted(at=now, address="198.18.58.13", expires_at=now + 3600, service=LeaseService.DHCP))
            bus.publish(LeaseEnded(at=now, address="198.18.58.13", reason="released"))
            assert "198.18.58.13" in service.addresses.candidates("p", "carol 02:00:5e:10:00:03", now)
    finally:
        await store.close()


class _Replies(asyncio.DatagramTransport):
    """A transport that keeps what the service sends, for a request handed in by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def test_a_status_server_sent_to_both_ports_gets_each_ports_answer(tmp_path: Path) -> None:
    """One Status-Server, from one socket to the auth and then the accounting port (a monitor
    that builds it once): the accounting port answered from the duplicate cache with the auth
    port's Access-Accept, where RFC 5997 §3 wants an Accounting-Response."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        probe = encode_request(Code.STATUS_SERVER, 7, b"", SECRET.encode())
        async with _running(store, EventBus(), _radius_config(3799)) as service:
            auth, acct = _Replies(), _Replies()
            service.handle_auth(probe, (NAS, 50000), auth)
            service.handle_accounting(probe, (NAS, 50000), acct)
            await _until(lambda: _true(bool(auth.sent) and bool(acct.sent)), within=5)
            assert [decode(reply).code for reply in auth.sent + acct.sent] == [Code.ACCESS_ACCEPT,
                                                                              Code.ACCOUNTING_RESPONSE]
            service.handle_accounting(probe, (NAS, 50000), acct)  # a retransmission: the same answer again
            assert acct.sent == [acct.sent[0]] * 2
    finally:
        await store.close()


@pytest.mark.parametrize("copy_at", [1.2, 1.55], ids=["past-the-window", "as-the-delay-ends"])
async def test_a_copy_during_a_reject_delay_is_not_judged_again(tmp_path: Path, copy_at: float) -> None:
    """reject_delay_seconds longer than duplicate_window_seconds: the NAS's copy after the window
    but before the reject went out (1.2 s) was judged again, counted again and answered twice.
    And from a review: the request was then held for exactly the delay, so a copy handled once
    the delay was over but before the delayed reject went out (1.55 s: a busy loop; asyncio runs
    the datagrams it read before the timers due in the same turn, and a NAS retransmitting every
    reject_delay_seconds sends its copy just then) was judged, counted and answered again."""
    import os

    from ispd.radius.codec import hide_password

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("home", actor="test")
        authenticator = os.urandom(16)
        wrong = encode_request(Code.ACCESS_REQUEST, 3, encode_attributes([
            (Attr.USER_NAME, b"nobody"), (Attr.USER_PASSWORD, hide_password(b"pw", SECRET.encode(), authenticator))]),
            SECRET.encode(), authenticator=authenticator)
        config = _radius_config(3799, reject_delay_seconds=1.5, duplicate_window_seconds=1)
        async with _running(store, EventBus(), config) as service:
            clock = [0.0]
            service.duplicates.clock = lambda: clock[0]
            replies = _Replies()
            service.handle_auth(wrong, (NAS, 50000), replies)
            clock[0] = copy_at  # past the window, the reject not sent yet
            service.handle_auth(wrong, (NAS, 50000), replies)
            await asyncio.sleep(2.0)
            assert [decode(reply).code for reply in replies.sent] == [Code.ACCESS_REJECT]
    finally:
        await store.close()


async def test_a_redial_handled_right_after_the_stop_keeps_the_address_it_was_given(tmp_path: Path) -> None:
    """A BNG that replaces a CPE's dead session sends its Stop and the redial's Access-Request
    together: handled in the same turn of the loop, the Stop's release of the line's address went
    to the store after the redial's claim of it (a renewal, the claim still bound), so the
    Access-Accept named an address the ledger then called free, for DHCP's next client."""
    import os
    from ipaddress import IPv4Address

    from ispd.radius.codec import hide_password
    from ispd.store.models import CredentialPolicy, StoredCredentials

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("home", actor="test", credential_policy=CredentialPolicy.CLEARTEXT)
        alice = await store.add_subscriber("alice", actor="test", plan="home",
                                           credentials=StoredCredentials(cleartext="pw", updated_at=1))
        mac = "02:00:5e:10:00:01"
        config = _radius_config(3799, plan=[{"plan": "home", "address_pool": "p"}],
                                address_pool=[{"name": "p", "range": "198.18.58.10 - 198.18.58.11"}])

        def login(identifier: int) -> bytes:
            authenticator = os.urandom(16)
            return encode_request(Code.ACCESS_REQUEST, identifier, encode_attributes([
                (Attr.USER_NAME, b"alice"), (Attr.USER_PASSWORD, hide_password(b"pw", SECRET.encode(), authenticator)),
                (Attr.CALLING_STATION_ID, mac.encode())]), SECRET.encode(), authenticator=authenticator)

        async def framed_ip(transport: _Replies) -> str:
            await _until(lambda: _true(bool(transport.sent)), within=5)
            answer = decode(transport.sent[-1])
            assert answer.code == Code.ACCESS_ACCEPT
            return str(IPv4Address(answer.get(Attr.FRAMED_IP_ADDRESS)))

        async with _running(store, EventBus(), config) as service:
            first = _Replies()
            service.handle_auth(login(1), (NAS, 50000), first)
            address = await framed_ip(first)
            start = AccountingRecord(at=time.time(), status=AccountingStatus.START, nas_address=NAS,
                                     acct_session_id="a1", username="alice", subscriber_id=alice.id,
                                     framed_ip=address, calling_station_id=mac, nas_client="bng")
            [result] = await store.record_accounting([start])
            service._follow(start, result)
            stop = replace(start, at=time.time(), status=AccountingStatus.STOP)
            [result] = await store.record_accounting([stop])
            redial = _Replies()
            service._follow(stop, result)  # the Stop, then at once the redial's Access-Request
            service.handle_auth(login(2), (NAS, 50001), redial)
            assert await framed_ip(redial) == address
            await asyncio.sleep(0.3)  # the writes done
            lease = await store.get_lease(address)
            assert (str(lease.state), lease.client_id) == ("bound", f"alice {mac}")
    finally:
        await store.close()


async def test_a_line_gets_its_last_address_back_after_a_restart_too(tmp_path: Path) -> None:
    """From a storm review (a BNG reboot): a line whose session had stopped got its last address
    back from a running ispd but not from a restarted one, which loaded only the leases still
    bound: after a restart (or a reload of the pools) 9,870 of 9,999 redialling lines got another
    address, each the next one's. Kea gives a returning client its expired lease while it is free."""
    import os
    from ipaddress import IPv4Address

    from ispd.radius.codec import hide_password
    from ispd.store.models import CredentialPolicy, StoredCredentials

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("home", actor="test", credential_policy=CredentialPolicy.CLEARTEXT)
        ids = {name: (await store.add_subscriber(name, actor="test", plan="home",
                                                 credentials=StoredCredentials(cleartext="pw", updated_at=1))).id
               for name in ("bob", "alice")}
        macs = {"bob": "02:00:5e:10:00:02", "alice": "02:00:5e:10:00:01"}
        config = _radius_config(3799, plan=[{"plan": "home", "address_pool": "p"}],
                                address_pool=[{"name": "p", "range": "198.18.58.10 - 198.18.58.11"}])

        async def login(service: RadiusService, name: str) -> str:
            authenticator = os.urandom(16)
            request = encode_request(Code.ACCESS_REQUEST, 1, encode_attributes([
                (Attr.USER_NAME, name.encode()),
                (Attr.USER_PASSWORD, hide_password(b"pw", SECRET.encode(), authenticator)),
                (Attr.CALLING_STATION_ID, macs[name].encode())]), SECRET.encode(), authenticator=authenticator)
            replies = _Replies()
            service.handle_auth(request, (NAS, 50000), replies)
            await _until(lambda: _true(bool(replies.sent)), within=5)
            answer = decode(replies.sent[-1])
            assert answer.code == Code.ACCESS_ACCEPT
            return str(IPv4Address(answer.get(Attr.FRAMED_IP_ADDRESS)))

        async with _running(store, EventBus(), config) as service:
            given = {name: await login(service, name) for name in ("bob", "alice")}  # bob .10, alice .11
            for name, address in given.items():
                start = AccountingRecord(at=time.time(), status=AccountingStatus.START, nas_address=NAS,
                                         acct_session_id=name, username=name, subscriber_id=ids[name],
                                         framed_ip=address, calling_station_id=macs[name], nas_client="bng")
                [result] = await store.record_accounting([start])
                service._follow(start, result)
                stop = replace(start, at=time.time(), status=AccountingStatus.STOP)
                [result] = await store.record_accounting([stop])
                service._follow(stop, result)
            await asyncio.sleep(0.3)  # the releases written
        assert {str((await store.get_lease(a)).state) for a in given.values()} == {"released"}
        async with _running(store, EventBus(), config) as service:
            assert await login(service, "alice") == given["alice"]  # not the pool's first free one
            assert await login(service, "bob") == given["bob"]
    finally:
        await store.close()


async def test_a_nas_restart_is_logged_with_the_sessions_it_closed(tmp_path: Path) -> None:
    """From a storm review: an Accounting-On that closed a rebooted BNG's 9,999 sessions left no
    line in the log (a stale close and ``session close`` each log theirs): the operator could not
    tell when the NAS restarted, nor why every session had ended."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await _subscriber_with_a_session(store)
        async with _running(store, EventBus(), _radius_config(3799)) as service:
            for status, closed in ((AccountingStatus.ACCOUNTING_ON, 1), (AccountingStatus.ACCOUNTING_OFF, 0)):
                record = AccountingRecord(at=time.time(), status=status, nas_address=NAS, nas_client="bng")
                [result] = await store.record_accounting([record])
                with capture_logs() as logs:
                    service._follow(record, result)
                assert [(e["event"], e["nas"], e["status"], e["closed"]) for e in logs
                        if e["event"] == "radius.nas.restarted"] == [("radius.nas.restarted", NAS, str(status), closed)]
            assert len(service.sessions) == 0
    finally:
        await store.close()


async def _true(value: bool) -> bool:
    return value


async def test_a_suspension_sends_no_empty_coa_to_a_nas_the_garden_has_nothing_for(tmp_path: Path) -> None:
    """From a review: since each NAS gets only its own vendor's attributes, a walled garden of
    MikroTik address lists is nothing to a Cisco NAS; the suspension's CoA-Request carried the
    session's identification alone, the NAS acknowledged it and kept the session as it was, and
    the outcome read "moved to the walled garden: acknowledged" (before, the NAS refused the
    MikroTik attribute with a NAK, and the operator saw it). Nothing is sent, and it says so."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        alice = await _subscriber_with_a_session(store)
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode()) as nas:
            config = _radius_config(nas.port, suspended="walled-garden",
                                    walled_garden_attributes=["Mikrotik-Address-List = walled-garden"],
                                    client=[{"name": "bng", "address": f"{NAS}/32", "secret": SECRET,
                                             "coa_port": nas.port, "kind": "cisco"}])
            async with _running(store, bus, config):
                await store.set_subscriber_status(alice, SubscriberStatus.SUSPENDED, actor="test")
                with capture_logs() as logs:
                    bus.publish(SubscriberSuspended(time.time(), alice, "alice"))

                    async def recorded() -> bool:
                        return bool(await _records(store))

                    await _until(recorded, within=5)
                record = (await _records(store))[-1]
                assert (record.kind, record.result, record.attempts) == ("coa", "error", 0), (record, nas.requests)
                assert nas.requests == []
                assert [e["nas_kind"] for e in logs if e["event"] == "radius.coa.nothing_to_send"] == ["cisco"]
            await bus.drain(5)
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["cisco", "mikrotik"])
async def test_a_plan_change_to_another_vendors_attributes_alone_sends_no_empty_coa(tmp_path: Path,
                                                                                  kind: str) -> None:
    """From a second review: a plan whose profile is [[radius.plan]] attributes (its rates
    written as Mikrotik-Rate-Limit, with no download_kbps) has nothing for a Cisco NAS since
    each NAS gets only its own vendor's. The plan change's CoA-Request carried the session's
    identification alone; the NAS acknowledged it, kept the old rate, and the outcome read
    "ack" (before the vendor filter, the NAS refused the MikroTik attribute with a NAK, and
    the operator saw it). Nothing is sent, and it says so, as for the walled garden."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        alice = await _subscriber_with_a_session(store)
        fast = await store.add_plan("fast", actor="test")
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode()) as nas:
            config = _radius_config(nas.port, plan=[{"plan": "fast", "attributes": ["Mikrotik-Rate-Limit = 10M/10M"]}],
                                    client=[{"name": "bng", "address": f"{NAS}/32", "secret": SECRET,
                                             "coa_port": nas.port, "kind": kind}])
            async with _running(store, bus, config):
                await store.set_subscriber_plan(alice, "fast", actor="test")
                with capture_logs() as logs:
                    bus.publish(SubscriberPlanChanged(time.time(), alice, "alice", fast.id))

                    async def recorded() -> bool:
                        return bool(await _records(store))

                    await _until(recorded, within=5)
                [record] = await _records(store)
                if kind == "cisco":
                    assert (record.kind, record.result, record.attempts) == ("coa", "error", 0), (record, nas.requests)
                    assert nas.requests == []
                    assert [e["nas_kind"] for e in logs if e["event"] == "radius.coa.nothing_to_send"] == ["cisco"]
                else:
                    assert (record.kind, record.result) == ("coa", "ack")
                    [request] = nas.requests
                    assert request.attributes[26][0].endswith(b"10M/10M")
            await bus.drain(5)
    finally:
        await store.close()


async def _subscribers_with_a_session_each(store: Store, count: int) -> list[int]:
    """Subscribers s0, s1... on plan "home", each with a session x0, x1... open on NAS; their ids."""
    await store.add_plan("home", actor="test")
    ids = []
    for n in range(count):
        subscriber = await store.add_subscriber(f"s{n}", actor="test", plan="home")
        ids.append(subscriber.id)
        await store.record_accounting([AccountingRecord(
            at=time.time(), status=AccountingStatus.START, nas_address=NAS, acct_session_id=f"x{n}",
            username=f"s{n}", subscriber_id=subscriber.id, nas_client="bng")])
    return ids


async def _suspend(store: Store, bus: EventBus, ids: list[int]) -> None:
    for subscriber_id in ids:
        subscriber = await store.set_subscriber_status(subscriber_id, SubscriberStatus.SUSPENDED, actor="test")
        bus.publish(SubscriberSuspended(time.time(), subscriber_id, subscriber.username))


async def test_a_nas_is_sent_a_bounded_number_of_requests_at_a_time_and_each_session_gets_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a run of 2,000 plan changes with open sessions: every CoA went out at once, a socket
    each (2,028 descriptors for a NAS that did not answer); under a limit of 1,024 descriptors CoAs
    were kept as `error after 0 attempt(s)` and the admin API dropped connections. One NAS gets
    MAX_DYNAMIC_PER_NAS at a time; the others wait their turn, and each is still sent."""
    monkeypatch.setattr(radius_service, "MAX_DYNAMIC_PER_NAS", 4)
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        ids = await _subscribers_with_a_session_each(store, 12)
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode(), answer="silent") as nas:
            async with _running(store, bus, _radius_config(nas.port, coa_timeout_seconds=0.5, coa_attempts=1)):
                await _suspend(store, bus, ids)
                await asyncio.sleep(0.3)  # within the first requests' timeout
                assert len(nas.requests) == 4

                async def all_recorded() -> bool:
                    return len(await store.list_coa(limit=100)) == 12

                await _until(all_recorded, within=8)
                assert {r.first(Attr.ACCT_SESSION_ID) for r in nas.requests} == {f"x{n}".encode() for n in range(12)}
            await bus.drain(5)
    finally:
        await store.close()


async def test_an_operator_s_disconnect_does_not_wait_its_turn_behind_queued_coas(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a review: `ispd session disconnect` waited behind a plan change's thousands queued for
    a silent NAS, for minutes, and the CLI gave up on the answer long before it was sent."""
    monkeypatch.setattr(radius_service, "MAX_DYNAMIC_PER_NAS", 2)
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        ids = await _subscribers_with_a_session_each(store, 7)
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode(), answer="silent") as nas:
            async with _running(store, bus, _radius_config(nas.port, coa_timeout_seconds=1, coa_attempts=1)) as service:
                await _suspend(store, bus, ids[:6])
                await asyncio.sleep(0.2)
                assert len(nas.requests) == 2  # the NAS's turns are taken; four wait
                session = (await store.list_sessions(open_only=True, subscriber=ids[6]))[0]
                asked = asyncio.ensure_future(service._command_disconnect({"session_id": session.id}))
                await asyncio.sleep(0.2)
                assert [r.first(Attr.ACCT_SESSION_ID) for r in nas.requests][-1] == b"x6"
                assert (await asked)["result"] == "timeout"
            await bus.drain(5)
    finally:
        await store.close()


async def test_a_store_outage_is_one_line_in_the_log_not_one_per_accounting_request(tmp_path: Path) -> None:
    """From a bug hunt (ispd on PostgreSQL, its server stopped for 30 s under a steady load of
    20 sessions): every Accounting-Request and each of its retransmissions wrote an error line,
    2,115 radius.accounting.write_failed in 30 s, which buried the one that said what was wrong.
    Now: a line when the outage starts (and when its error changes, or every so often), one when
    it ends with how many went unanswered; the metric still counts each. And its health said
    failing after the server was back, until an Accounting-Request came."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    writes = WritesDown(store)
    try:
        async with _running(store, EventBus(), _radius_config(3799)) as service:
            transport, send = await _accounting_starts(service)

            async def dropped(count: int) -> bool:
                return service.metrics.dropped.get("acct", "store_error") == count

            with capture_logs() as logs:
                for identifier in range(40):
                    send(identifier)
                    await asyncio.sleep(0.005)  # (not one batch: as a NAS's requests come)
                await _until(lambda: dropped(40), within=10)
                assert not service.health().ok
                writes.up()
                # No request since: the writes /healthz makes say it is over, for RADIUS too.
                await store.check_writes()
                assert service.health().ok
                send(40)

                async def written() -> bool:
                    return len(await store.list_sessions()) == 1

                await _until(written, within=10)
            transport.close()
        lines = [(e["event"], e.get("unanswered")) for e in logs if e["event"].startswith("radius.accounting.write")]
        assert lines == [("radius.accounting.write_failed", None), ("radius.accounting.write_restored", 40)]
    finally:
        await store.close()


async def _accounting_starts(service: RadiusService) -> tuple[asyncio.DatagramTransport, Callable[[int], None]]:
    """A NAS's socket to the service's accounting port, and what sends an Accounting-Request Start
    of alice's session ``s<identifier>`` on it."""
    port = next(p for kind, _, p in service.bound if kind == "acct")
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=(NAS, 0), remote_addr=(NAS, port))

    def send(identifier: int) -> None:
        attributes = encode_attributes([(Attr.ACCT_STATUS_TYPE, (1).to_bytes(4, "big")), (Attr.USER_NAME, b"alice"),
                                        (Attr.ACCT_SESSION_ID, f"s{identifier}".encode())])
        transport.sendto(encode_request(Code.ACCOUNTING_REQUEST, identifier, attributes, SECRET.encode(),
                                        message_authenticator=False))

    return transport, send


async def test_accounting_writes_failing_by_a_bug_show_in_the_services_health(tmp_path: Path) -> None:
    """From a fix task: health followed the store's commits alone, so writes failing by a bug
    (an exception that is no StoreError: each Accounting-Request unanswered, dropped and logged
    with its traceback) left RADIUS healthy in /healthz, the store's commits working. It stays
    unhealthy until a write works again."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    record_accounting = store.record_accounting
    broken = True

    async def buggy(records: Any) -> Any:
        if broken:
            raise RuntimeError("a bug")
        return await record_accounting(records)

    store.record_accounting = buggy  # type: ignore[method-assign]
    try:
        async with _running(store, EventBus(), _radius_config(3799)) as service:
            transport, send = await _accounting_starts(service)

            async def dropped() -> bool:
                return service.metrics.dropped.get("acct", "store_error") == 1

            with capture_logs():
                send(1)
                await _until(dropped, within=10)
                await store.check_writes()  # (the store's commits work: /healthz's own write)
                assert not service.health().ok
                broken = False
                send(2)

                async def written() -> bool:
                    return len(await store.list_sessions()) == 1

                await _until(written, within=10)
                assert service.health().ok
            transport.close()
    finally:
        await store.close()


async def test_a_quota_check_during_a_plan_change_sends_no_second_identical_coa(tmp_path: Path) -> None:
    """From a fix task: a plan change judges the new plan's quota before its CoA goes; a quota
    check (the sweep's, or an interim's) that began once the new plan was read in judged it too
    and, landing first, sent the over-quota CoA itself: the plan change's then carried the same
    profile again, two identical CoA-Requests to the session."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        for name, quota in (("roomy", 2000), ("tight", 1000)):
            await store.add_plan(name, actor="test", download_kbps=100000, upload_kbps=20000,
                                 monthly_quota_bytes=quota, over_quota=OverQuota.THROTTLE,
                                 over_quota_download_kbps=2000, over_quota_upload_kbps=1000)
        tight = (await store.get_plan("tight")).id
        alice = (await store.add_subscriber("alice", actor="test", plan="roomy")).id
        now = time.time()
        for status, at, octets in ((AccountingStatus.START, now - 60, 0), (AccountingStatus.INTERIM_UPDATE, now - 1, 1500)):
            await store.record_accounting([AccountingRecord(
                at=at, status=status, nas_address=NAS, acct_session_id="a1", username="alice",
                subscriber_id=alice, nas_client="bng", input_octets=octets, output_octets=0,
                session_time_seconds=round(at - now + 60))])
        usage = store.usage
        reads = 0

        async def slow_first_read(*args: Any, **kwargs: Any) -> Any:
            nonlocal reads
            reads += 1
            if reads == 1:  # the plan change's own read lands last
                await asyncio.sleep(0.5)
            return await usage(*args, **kwargs)

        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode()) as nas:
            config = _radius_config(nas.port, housekeeping_interval_seconds=120,
                                    client=[{"name": "bng", "address": f"{NAS}/32", "secret": SECRET,
                                             "coa_port": nas.port, "kind": "mikrotik"}])
            async with _running(store, bus, config) as service:
                await asyncio.sleep(0.3)  # (the checks at start: alice is under roomy's quota)
                store.usage = slow_first_read  # type: ignore[method-assign]
                await store.set_subscriber_plan(alice, "tight", actor="test")
                bus.publish(SubscriberPlanChanged(time.time(), alice, "alice", tight))

                async def on_the_new_plan() -> bool:
                    subject = service.directory.by_id(alice)
                    return subject is not None and subject.plan is not None and subject.plan.name == "tight"

                await _until(on_the_new_plan, within=5)
                await service._check_quota(alice, time.time())  # (as the sweep does)
                await asyncio.to_thread(nas.wait_for, 1)
                await asyncio.sleep(1.5)
                assert [(r.code, r.first(26)) for r in nas.requests] == [
                    (43, bytes.fromhex("00003a8c080d") + b"1000k/2000k")]  # the throttle, once
            await bus.drain(5)
    finally:
        await store.close()


async def test_an_accounting_on_naming_a_nas_with_a_client_of_its_own_closes_none_of_its_sessions(
        tmp_path: Path) -> None:
    """From a code read: a NAS-IP-Address inside the sending client's network was believed even
    when it is the address of another [[radius.client]] (a host entry, with a secret of its own,
    inside that network): any NAS of the network, with the network's secret, could speak for
    it, and its Accounting-On closed every session of that NAS (and its interims fed them)."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        await store.add_plan("home", actor="test")
        alice = await store.add_subscriber("alice", actor="test", plan="home")
        await store.record_accounting([AccountingRecord(
            at=time.time(), status=AccountingStatus.START, nas_address=NAS, acct_session_id="a1", username="alice",
            subscriber_id=alice.id, nas_client="bng-1")])
        config = Config(radius=RadiusConfig.model_validate({
            "enabled": True, "listen_auth": [f"{NAS}:0"], "listen_acct": [f"{NAS}:0"],
            "client": [{"name": "bng", "address": "127.58.0.0/24", "secret": SECRET},
                       {"name": "bng-1", "address": f"{NAS}/32", "secret": "its-own-secret"}]}))
        async with _running(store, EventBus(), config) as service:
            # Another BNG of the network, which calls itself by bng-1's address.
            accounting_on = encode_request(Code.ACCOUNTING_REQUEST, 9, encode_attributes([
                (Attr.ACCT_STATUS_TYPE, (7).to_bytes(4, "big")), (Attr.NAS_IP_ADDRESS, bytes((127, 58, 0, 1)))]),
                SECRET.encode(), message_authenticator=False)
            replies = _Replies()
            service.handle_accounting(accounting_on, ("127.58.0.2", 50000), replies)
            await _until(lambda: _true(bool(replies.sent)), within=5)
            assert [s.acct_session_id for s in await store.list_sessions(open_only=True)] == ["a1"]
            assert len(service.sessions) == 1
            # Its own address stays its own to speak for (and a host entry its own).
            assert service.accounting is not None and service.nas.find("127.58.0.2") is not None
            inside = service.accounting.record(decode(accounting_on), service.nas.find("127.58.0.2"),  # type: ignore[arg-type]
                                               "127.58.0.2", time.time())
            assert inside is not None and (inside.nas_address, inside.nas_ip_address) == ("127.58.0.2", NAS)
    finally:
        await store.close()


@pytest.mark.parametrize("change", ["close", "delete"])
async def test_the_sessions_of_a_subscriber_deleted_while_ispd_was_down_are_disconnected(
        tmp_path: Path, change: str) -> None:
    """From a code read: housekeeping carries out a closure made while ispd was down (or one
    whose Disconnect the NAS did not answer), but passed over the sessions of a deleted
    subscriber (no longer in the directory): deleted with the CLI while the daemon was down, or
    its Disconnect lost, the subscriber kept its service for as long as the NAS kept the session
    (its interims keep it from going stale)."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        alice = await _subscriber_with_a_session(store)
        # An operator's Disconnect an hour before, acknowledged (the session went on): not the change's.
        await store.record_coa(kind="disconnect", nas_address=NAS, result="ack", attempts=1, at=time.time() - 3600,
                               completed_at=time.time() - 3600, session_id=1, subscriber_id=alice, reason="admin",
                               error_cause=None)
        if change == "close":
            await store.set_subscriber_status(alice, SubscriberStatus.CLOSED, actor="test")
        else:
            await store.delete_subscriber(alice, actor="test")
        bus = EventBus()
        with FakeNas(NAS, secret=SECRET.encode(), answer="silent") as nas:
            async with _running(store, bus, _radius_config(nas.port, coa_timeout_seconds=0.2, coa_attempts=1)) \
                    as service:
                [disconnect] = await asyncio.to_thread(nas.wait_for, 1)
                assert disconnect.code == 40 and disconnect.first(Attr.ACCT_SESSION_ID) == b"a1"

                async def recorded() -> bool:
                    return [r.result for r in await store.list_coa(session_id=1)] == ["timeout", "ack"]

                await _until(recorded, within=5)
                # The NAS silent: tried again in a later round, as a closed subscriber's is.
                await service._enforce_status(time.time() + 3600)
                await asyncio.to_thread(nas.wait_for, 2)
                await _until(lambda: _true(not service._requesting), within=5)
                # A subscriber the directory does not know yet (added a moment ago) is no deleted one.
                bob = await store.add_subscriber("bob", actor="test", plan="home")
                [result] = await store.record_accounting([AccountingRecord(
                    at=time.time(), status=AccountingStatus.START, nas_address=NAS, acct_session_id="b1",
                    username="bob", subscriber_id=bob.id, nas_client="bng")])
                assert result.session is not None and service.directory.by_id(bob.id) is None
                service.sessions.put(result.session)
                await service._enforce_status(time.time() + 7200)
                await asyncio.sleep(0.5)
                assert len(nas.requests) == 3 and nas.requests[2].first(Attr.ACCT_SESSION_ID) == b"a1"
            await bus.drain(5)
    finally:
        await store.close()


async def test_a_dhcp_pools_router_in_a_radius_pool_is_left_out_at_start_and_reload(tmp_path: Path) -> None:
    """Config.radius_pool_routers (a DHCP pool's own router inside a RADIUS pool, accepted with a
    warning): the service never proposes it, from the start and after a reload that adds it."""
    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"))
    try:
        radius = _radius_config(3799, plan=[{"plan": "home", "address_pool": "bng"}],
                                address_pool=[{"name": "bng", "range": "198.18.58.1 - 198.18.58.3"}]).radius

        def with_router(router: str) -> Config:
            return Config(radius=radius, dhcp=DHCPConfig.model_validate({
                "enabled": True, "interfaces": ["eth1"], "subnet": [{"network": "198.18.58.0/24", "pool": [
                    {"name": "lan", "range": "198.18.58.100 - 198.18.58.199", "routers": [router]}]}]}))

        before, after = with_router("198.18.58.1"), with_router("198.18.58.2")
        async with _running(store, EventBus(), before) as service:
            assert service.addresses.candidates("bng", "bob", time.time()) == ("198.18.58.2", "198.18.58.3")
            await service.reload(before, after)
            assert set(service.addresses.candidates("bng", "bob", time.time())) == {"198.18.58.1", "198.18.58.3"}
    finally:
        await store.close()
