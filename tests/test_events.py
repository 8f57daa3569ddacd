from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import structlog.testing

from ispd.events import (
    AuditRelay,
    Event,
    EventBridge,
    EventBus,
    LeaseEnded,
    LeaseGranted,
    SessionStopped,
    SubscriberAdded,
    SubscriberEvent,
    SubscriberSuspended,
    event_from_audit,
)
from ispd.store import StoreConfig, open_store
from ispd.store.errors import StoreUnavailable
from ispd.store.models import AuditEntry, LeaseService, SubscriberStatus


async def test_handlers_get_their_type_and_subclasses() -> None:
    bus = EventBus()
    got: list[Event] = []
    bus.subscribe(SubscriberEvent, got.append)
    only_suspended: list[Event] = []
    bus.subscribe(SubscriberSuspended, only_suspended.append)
    added, suspended = SubscriberAdded(1.0, 1, "a"), SubscriberSuspended(2.0, 1, "a", reason="x")
    bus.publish(added)
    bus.publish(suspended)
    assert got == [added, suspended]
    assert only_suspended == [suspended]
    assert bus.published.get("SubscriberSuspended") == 1


def test_every_event_is_counted_at_zero_from_the_start() -> None:
    """A counter series that first appears at 1 has no increase() for Prometheus, so
    IspdEventHandlersFailing would miss a lone failure: every event is exported from the start."""
    bus = EventBus()
    for counter in (bus.published, bus.handler_failures):
        samples = {sample.labels["event"]: sample.value for sample in counter.collect().samples}
        assert {"SubscriberSuspended", "LeaseGranted", "SessionStopped", "PeerEventsMissed"} <= samples.keys()
        assert not samples.keys() & {"Event", "SubscriberEvent", "SessionEvent", "ReservationEvent"}  # never published
        assert set(samples.values()) == {0}


async def test_async_handlers_run_and_failures_stay_contained() -> None:
    bus = EventBus()
    seen: list[int] = []

    async def slow(event: SubscriberAdded) -> None:
        await asyncio.sleep(0.01)
        seen.append(event.subscriber_id)

    def broken(event: SubscriberAdded) -> None:
        raise RuntimeError("boom")

    async def broken_async(event: SubscriberAdded) -> None:
        raise RuntimeError("boom")

    bus.subscribe(SubscriberAdded, broken)
    bus.subscribe(SubscriberAdded, broken_async)
    unsubscribe = bus.subscribe(SubscriberAdded, slow)
    bus.publish(SubscriberAdded(1.0, 7, "a"))  # must not raise
    await bus.drain(5)
    assert seen == [7]
    assert bus.handler_failures.get("SubscriberAdded") == 2
    unsubscribe()
    bus.publish(SubscriberAdded(1.0, 8, "b"))
    await bus.drain(5)
    assert seen == [7]


async def test_a_handler_returning_a_value_is_not_awaited_and_does_not_break_publish() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(SubscriberAdded, lambda e: seen.append(e) or 1)  # type: ignore[func-returns-value]
    bus.publish(SubscriberAdded(1.0, 1, "a"))
    bus.publish(SubscriberAdded(2.0, 2, "b"))
    assert len(seen) == 2 and bus.handler_failures.get("SubscriberAdded") == 0


async def test_drain_gives_up_after_its_time_and_cancels_the_rest() -> None:
    bus = EventBus()
    cancelled = asyncio.Event()

    async def stuck(event: SubscriberAdded) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bus.subscribe(SubscriberAdded, stuck)
    bus.publish(SubscriberAdded(1.0, 1, "a"))
    started = asyncio.get_running_loop().time()
    assert await bus.drain(0.2) is False
    assert asyncio.get_running_loop().time() - started < 1 and cancelled.is_set()
    assert await bus.drain(0.2) is True


async def test_relay_survives_a_failing_poll(tmp_path: Path) -> None:
    store = await open_store(StoreConfig(path=tmp_path / "f.db"))
    try:
        bus = EventBus()
        got: list[Event] = []
        bus.subscribe(Event, got.append)
        relay = AuditRelay(store, bus, poll_interval=0.01)
        await relay.mark()
        await relay.start()
        real_audit_since, calls = store.audit_since, []

        async def flaky(after_id: int, *, limit: int = 1000) -> list[AuditEntry]:
            calls.append(after_id)
            if len(calls) == 1:
                raise RuntimeError("a bug somewhere")
            return await real_audit_since(after_id, limit=limit)

        store.audit_since = flaky  # type: ignore[method-assign]
        await store.add_subscriber("after-the-bug", actor="t")
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.01)
        await relay.stop()
        await relay.stop()  # twice is harmless
        assert [e.username for e in got if isinstance(e, SubscriberEvent)] == ["after-the-bug"]
    finally:
        await store.close()


async def test_relay_warns_once_per_outage_of_the_store(tmp_path: Path) -> None:
    """A PostgreSQL server stopped for 30 s fails every poll: one warning for the outage and one
    line when the store answers again, not one warning every poll_interval."""
    store = await open_store(StoreConfig(path=tmp_path / "f.db"))
    try:
        bus = EventBus()
        got: list[Event] = []
        bus.subscribe(Event, got.append)
        relay = AuditRelay(store, bus, poll_interval=0.01)
        await relay.mark()
        real_audit_since, calls = store.audit_since, []

        async def away(after_id: int, *, limit: int = 1000) -> list[AuditEntry]:
            calls.append(after_id)
            if len(calls) <= 20:
                raise StoreUnavailable("cannot connect to the PostgreSQL store: the server is shutting down")
            return await real_audit_since(after_id, limit=limit)

        store.audit_since = away  # type: ignore[method-assign]
        with structlog.testing.capture_logs() as logs:
            await relay.start()
            await store.add_subscriber("after-the-outage", actor="t")
            for _ in range(300):
                if got:
                    break
                await asyncio.sleep(0.01)
            await relay.stop()
        assert len(calls) > 20
        assert [e.username for e in got if isinstance(e, SubscriberEvent)] == ["after-the-outage"]
        relay_lines = [line for line in logs if line["event"].startswith("events.relay.")]
        assert [(line["event"], line["log_level"]) for line in relay_lines] == [
            ("events.relay.store_error", "warning"), ("events.relay.store_restored", "info")], relay_lines
    finally:
        await store.close()


def test_audit_entries_map_to_events() -> None:
    entry = AuditEntry(5, 10.0, "cli:root", "subscriber.suspended", "subscriber", 3, "alice", {"reason": "unpaid"})
    assert event_from_audit(entry) == SubscriberSuspended(10.0, 3, "alice", reason="unpaid")
    assert event_from_audit(AuditEntry(6, 1.0, "x", "something.else", "thing", 1, None)) is None


async def test_relay_announces_changes_made_by_another_store_handle(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "r.db")
    daemon_store, cli_store = await open_store(config), await open_store(config)
    try:
        await cli_store.add_subscriber("before", actor="t")  # history: not announced again
        bus = EventBus()
        got: list[Event] = []
        bus.subscribe(Event, got.append)
        relay = AuditRelay(daemon_store, bus, poll_interval=0.01)
        await relay.mark()
        await relay.start()
        await cli_store.add_subscriber("alice", actor="cli:root")
        await cli_store.set_subscriber_status("alice", SubscriberStatus.SUSPENDED, actor="cli:root", reason="r")
        for _ in range(200):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.01)
        await relay.stop()
        assert [type(e).__name__ for e in got] == ["SubscriberAdded", "SubscriberSuspended"]
        assert all(isinstance(e, SubscriberEvent) and e.username == "alice" for e in got)
    finally:
        await daemon_store.close()
        await cli_store.close()


# --- the bridge to a worker process --------------------------------------------------------------

async def test_bridged_events_cross_as_json_and_come_back_equal() -> None:
    here, there = EventBus(), EventBus()
    out, into = EventBridge(here), EventBridge(there)
    out.attach()
    received: list[object] = []
    there.subscribe(Event, received.append)
    sent = [LeaseGranted(at=1.0, address="198.18.0.7", expires_at=61.0, subscriber_id=3, service=LeaseService.RADIUS),
            LeaseEnded(at=2.0, address="198.18.0.7", reason="released"),
            SessionStopped(at=3.0, session_id=9, nas_address="127.0.0.1", acct_session_id="s1", username="alice",
                           cause="User-Request")]
    for event in sent:
        here.publish(event)
    here.publish(SubscriberAdded(at=4.0, subscriber_id=1, username="bob"))  # the audit log's: not bridged
    wire = json.loads(json.dumps(await out.wait_and_take(0.1)))
    bad = [{"type": "NoSuchEvent"}, "junk", {"type": "LeaseEnded", "at": "soon", "address": "x", "reason": "r"},
           {"type": "LeaseGranted", "at": 1.0, "address": "x", "expires_at": float("nan")},
           {"type": "LeaseEnded", "at": 1.0, "address": ["x"], "reason": "r"},
           {"type": "LeaseEnded", "at": 1.0, "address": "x", "reason": "r", "service": "smtp"}]
    assert into.deliver([*wire, *bad]) == 3
    assert received == sent
    assert received[0].service is LeaseService.RADIUS  # type: ignore[attr-defined]
    assert await out.wait_and_take(0.01) == []


async def test_an_event_that_came_across_is_not_sent_back() -> None:
    bus = EventBus()
    bridge = EventBridge(bus)
    bridge.attach()
    bridge.deliver([{"type": "LeaseGranted", "at": 1.0, "address": "198.18.0.7", "expires_at": 2.0}])
    assert bridge.take() == []  # no echo
    bus.publish(LeaseGranted(at=1.0, address="198.18.0.8", expires_at=2.0))
    assert [item["address"] for item in bridge.take()] == ["198.18.0.8"]


async def test_an_outbox_nobody_empties_keeps_the_newest() -> None:
    bus = EventBus()
    bridge = EventBridge(bus)
    bridge.MAX_QUEUED = 3
    detach = bridge.attach()
    for n in range(5):
        bus.publish(LeaseEnded(at=float(n), address=f"198.18.0.{n}", reason="expired"))
    assert [item["address"] for item in bridge.take()] == ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
    assert bridge.dropped == 2
    detach()
    bus.publish(LeaseEnded(at=9.0, address="198.18.0.9", reason="expired"))
    assert bridge.take() == []


@pytest.mark.parametrize("refusal", ["starting", "busy"])
async def test_events_a_worker_cannot_take_yet_wait_for_it(monkeypatch: pytest.MonkeyPatch, refusal: str) -> None:
    """A worker started again reads the store, then opens its control socket: a lease granted in
    between was in neither, and its delivery, refused, was dropped. The worker's DNS process
    never had the name (NXDOMAIN for the clients the kernel sent to it, until a renewal). A
    worker whose control socket is full of operators' commands refuses "busy": the same, later."""
    import ispd.workers
    from ispd.control import ControlError
    from ispd.workers import WorkerService

    monkeypatch.setattr(ispd.workers, "EVENT_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(ispd.workers, "EVENT_POLL_SECONDS", 0.05)
    bus = EventBus()
    worker = WorkerService.__new__(WorkerService)
    worker.name, worker._stopping, worker._ready = "dns.2", False, refusal == "busy"
    worker.control_path = Path("/nonexistent/worker.sock")
    worker.proc = SimpleNamespace(returncode=None)  # type: ignore[assignment]
    worker.bridge = EventBridge(bus)
    worker.bridge.attach()
    delivered: list[Any] = []
    taking = asyncio.Event()

    async def control_request(path: Path, command: str, args: dict[str, Any] | None = None, *,
                              wait_seconds: float = 120.0) -> Any:
        if not taking.is_set():
            if refusal == "busy":
                raise ControlError("too many control connections (at most 16); try again", "busy")
            raise ControlError("cannot reach the ispd daemon: Connection refused")  # not open yet
        delivered.extend(item["address"] for item in (args or {})["events"])
        return len((args or {})["events"])

    monkeypatch.setattr(ispd.workers, "control_request", control_request)
    pushing = asyncio.ensure_future(worker._push_events())
    try:
        bus.publish(LeaseGranted(at=1.0, address="198.18.0.100", hostname="laptop", expires_at=3600.0))
        await asyncio.sleep(0.1)  # refused meanwhile
        worker._ready = True
        taking.set()
        for _ in range(100):
            if delivered:
                break
            await asyncio.sleep(0.01)
    finally:
        worker._stopping = True
        pushing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pushing
    assert delivered == ["198.18.0.100"]
