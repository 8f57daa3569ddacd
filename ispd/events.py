"""The in-process event bus: services announce what happened, others react, none imports another.

Events are frozen dataclasses named in the past tense. ``publish`` never blocks the publisher: a
plain-function handler runs at once, a coroutine handler runs as its own task; a handler that
fails is logged and counted, and never reaches the publisher or the other handlers.

Changes made outside this process (the admin CLI, another node) reach the bus through
``AuditRelay``, which tails the store's append-only audit log and publishes what it finds. So
admin changes are always announced from the store, whichever process made them, and exactly
once per running daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

from ispd.logs import get_logger
from ispd.metrics.fast import LabeledCounter
from ispd.store.base import Store
from ispd.store.errors import StoreError
from ispd.store.models import AuditEntry, LeaseService, Reservation, ReservationKind, SubscriberStatus

log = get_logger("ispd.events")


@dataclass(frozen=True, slots=True)
class Event:
    at: float


@dataclass(frozen=True, slots=True)
class SubscriberEvent(Event):
    subscriber_id: int
    username: str


@dataclass(frozen=True, slots=True)
class SubscriberAdded(SubscriberEvent):
    plan: str | None = None  # the plan's name


@dataclass(frozen=True, slots=True)
class SubscriberSuspended(SubscriberEvent):
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SubscriberResumed(SubscriberEvent):
    pass


@dataclass(frozen=True, slots=True)
class SubscriberClosed(SubscriberEvent):
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class SubscriberDeleted(SubscriberEvent):
    pass


@dataclass(frozen=True, slots=True)
class SubscriberPasswordChanged(SubscriberEvent):
    pass


@dataclass(frozen=True, slots=True)
class SubscriberRadiusReplyChanged(SubscriberEvent):
    pass


@dataclass(frozen=True, slots=True)
class SubscriberPlanChanged(SubscriberEvent):
    plan_id: int | None = None  # None: no plan any more


@dataclass(frozen=True, slots=True)
class ReservationEvent(SubscriberEvent):
    """A reservation of a subscriber (``kind``: a ``ReservationKind`` value; ``key`` in its
    canonical form), with a fixed address (IPv4), host name, IPv6 address and delegated prefix
    when they are not None."""

    reservation_id: int
    kind: str
    key: str
    address: str | None
    hostname: str | None
    address6: str | None = None
    prefix6: str | None = None


@dataclass(frozen=True, slots=True)
class ReservationAdded(ReservationEvent):
    pass


@dataclass(frozen=True, slots=True)
class ReservationChanged(ReservationEvent):
    """Its fixed addresses or host name changed; the fields are its new state (same id, kind and key)."""


@dataclass(frozen=True, slots=True)
class ReservationDeleted(ReservationEvent):
    """Deleted on its own, or with its subscriber; the fields are its last state."""


@dataclass(frozen=True, slots=True)
class PlanAdded(Event):
    plan_id: int
    name: str


@dataclass(frozen=True, slots=True)
class LeaseGranted(Event):
    """A lease was granted or renewed, durably: by DHCP (the client has or is about to get its
    ACK), or by RADIUS (a session's Framed-IP-Address from a pool, ``service`` "radius")."""

    address: str
    expires_at: float
    hostname: str | None = None
    subscriber_id: int | None = None
    hw_address: str | None = None
    pool: str | None = None
    renewal: bool = False
    service: LeaseService = LeaseService.DHCP
    starts_at: float | None = None  # when this lease began (a renewal keeps it)


@dataclass(frozen=True, slots=True)
class LeaseEnded(Event):
    """A lease ended: released by the client (or its RADIUS session stopped), expired, or declined
    (the address was in use)."""

    address: str
    reason: str  # released | expired | declined
    hostname: str | None = None
    subscriber_id: int | None = None
    service: LeaseService = LeaseService.DHCP
    starts_at: float | None = None
    hw_address: str | None = None
    ended_at: float | None = None  # when it ended: an expiry found later is dated at the expiry
    # declined: the address stays out of use (quarantined) until then, for a pool shared with RADIUS
    held_until: float | None = None


@dataclass(frozen=True, slots=True)
class Binding6Granted(Event):
    """A DHCPv6 binding was made or renewed, durably (the client has or is about to get its
    Reply): an address of the link (``kind`` "na", ``prefix`` a /128) or a prefix delegated to
    the client's router (``kind`` "pd")."""

    prefix: str
    kind: str  # na | pd
    expires_at: float
    hostname: str | None = None
    subscriber_id: int | None = None
    renewal: bool = False


@dataclass(frozen=True, slots=True)
class Binding6Ended(Event):
    """A DHCPv6 binding ended: released by the client, expired, declined, or taken back (a
    suspended subscriber's, a binding the client no longer has on this link)."""

    prefix: str
    kind: str  # na | pd
    reason: str  # released | expired | declined
    hostname: str | None = None
    subscriber_id: int | None = None


@dataclass(frozen=True, slots=True)
class SessionEvent(Event):
    """A RADIUS session, as its NAS accounts for it (durably recorded before the event)."""

    session_id: int
    nas_address: str
    acct_session_id: str
    username: str
    subscriber_id: int | None = None
    framed_ip: str | None = None
    # Its IPv6 networks, comma-separated: Framed-IPv6-Prefix, Delegated-IPv6-Prefix (the home's
    # LAN, where its devices' addresses are), Framed-IPv6-Address (as a /128).
    ipv6_networks: str | None = None

    def networks(self) -> list[str]:
        return self.ipv6_networks.split(",") if self.ipv6_networks else []


@dataclass(frozen=True, slots=True)
class SessionStarted(SessionEvent):
    pass


@dataclass(frozen=True, slots=True)
class SessionStopped(SessionEvent):
    cause: str | None = None  # Acct-Terminate-Cause, or why ispd closed it (NAS-Reboot, Stale-Session)


@dataclass(frozen=True, slots=True)
class PeerEventsMissed(Event):
    """The channel that brings other nodes' bridged events (leases, sessions) was cut and is back:
    what they announced meanwhile is lost. Whoever keeps state from those events reads it again
    from the store."""


def _concrete_event_names() -> list[str]:
    """The names of the events that are published: those no other event refines. (By name: a
    slots dataclass replaces its class, and the class it replaced may still be listed.)"""
    every, pending = [], [Event]
    while pending:
        every += (found := pending.pop().__subclasses__())
        pending += found
    refined = {event_type.__name__ for event_type in every if event_type.__subclasses__()}
    return sorted({event_type.__name__ for event_type in every} - refined)


E = TypeVar("E", bound=Event)
Handler = Callable[[E], Awaitable[None] | None]


class EventBus:
    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Callable[[Any], Awaitable[None] | None]]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self.published = LabeledCounter(
            "ispd_events_published_total", "Domain events published on the bus, by event.", ["event"]
        )
        self.handler_failures = LabeledCounter(
            "ispd_events_handler_failures_total", "Event handlers that raised, by event.", ["event"]
        )
        # Every event at 0 from the start: a failure counter that first appears at 1 has no
        # increase() to alert on (IspdEventHandlersFailing would miss a lone failure).
        for name in _concrete_event_names():
            self.published.inc(name, amount=0)
            self.handler_failures.inc(name, amount=0)

    def subscribe(self, event_type: type[E], handler: Handler[E]) -> Callable[[], None]:
        """Call ``handler`` for every published event of ``event_type`` or a subclass; returns an
        unsubscribe function."""
        handlers = self._handlers.setdefault(event_type, [])
        handlers.append(handler)
        return lambda: handlers.remove(handler)

    def publish(self, event: Event) -> None:
        name = type(event).__name__
        self.published.inc(name)
        for event_type in type(event).__mro__:
            for handler in list(self._handlers.get(event_type, ())):
                try:
                    outcome = handler(event)
                except Exception:
                    self._failed(name)
                    continue
                if inspect.isawaitable(outcome):
                    task = asyncio.ensure_future(outcome)
                    self._tasks.add(task)
                    task.add_done_callback(functools.partial(self._finished, name))

    def _finished(self, name: str, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._failed(name, task.exception())

    def _failed(self, name: str, exc: BaseException | None = None) -> None:
        self.handler_failures.inc(name)
        log.error("events.handler.failed", event_type=name, exc_info=exc or True)

    async def drain(self, within: float) -> bool:
        """Wait up to ``within`` seconds for the handlers already running (at shutdown, after the
        services stopped publishing), then cancel the rest; False when some had to be cancelled."""
        deadline = asyncio.get_running_loop().time() + within
        while self._tasks:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                return False
            await asyncio.wait(list(self._tasks), timeout=remaining)
        return True


class SubscriberRecords(Protocol):
    """What a DHCP engine keeps of subscribers: their status and their reservations."""

    def set_subscriber_status(self, subscriber_id: int, status: SubscriberStatus) -> None: ...

    def remove_subscriber(self, subscriber_id: int) -> None: ...

    def add_reservation(self, reservation: Reservation) -> None: ...

    def remove_reservation(self, reservation_id: int) -> None: ...


def reservation_of(event: ReservationEvent) -> Reservation:
    """The reservation an event announces, as the store lists it."""
    return Reservation(id=event.reservation_id, subscriber_id=event.subscriber_id, kind=ReservationKind(event.kind),
                       key=event.key, address=event.address, hostname=event.hostname, created_at=event.at,
                       address6=event.address6, prefix6=event.prefix6)


def follow_subscribers(bus: EventBus, records: SubscriberRecords) -> list[Callable[[], None]]:
    """Keep ``records`` up with the subscribers' statuses and reservations as the bus announces
    them (from this process or, through the audit relay, from the CLI); the unsubscribe functions."""

    def status(value: SubscriberStatus) -> Callable[[SubscriberEvent], None]:
        return lambda event: records.set_subscriber_status(event.subscriber_id, value)

    def changed(event: ReservationChanged) -> None:  # (an address given up goes back to its pool)
        records.remove_reservation(event.reservation_id)
        records.add_reservation(reservation_of(event))

    return [
        bus.subscribe(SubscriberAdded, status(SubscriberStatus.ACTIVE)),
        bus.subscribe(SubscriberResumed, status(SubscriberStatus.ACTIVE)),
        bus.subscribe(SubscriberSuspended, status(SubscriberStatus.SUSPENDED)),
        bus.subscribe(SubscriberClosed, status(SubscriberStatus.CLOSED)),
        bus.subscribe(SubscriberDeleted, lambda event: records.remove_subscriber(event.subscriber_id)),
        bus.subscribe(ReservationAdded, lambda event: records.add_reservation(reservation_of(event))),
        bus.subscribe(ReservationChanged, changed),
        bus.subscribe(ReservationDeleted, lambda event: records.remove_reservation(event.reservation_id)),
    ]


# Events that cross into and out of a worker process (``ispd/workers.py``). The others reach
# every process by the store's audit log (``AuditRelay``), so they must not be bridged as well.
# PeerEventsMissed too (a DNS service's extra processes keep lease names as well), but not to
# other nodes: it says what this node missed.
BRIDGED_EVENTS: dict[str, type[Event]] = {cls.__name__: cls for cls in (LeaseGranted, LeaseEnded, SessionStarted,
                                                                          SessionStopped, Binding6Granted,
                                                                          Binding6Ended, PeerEventsMissed)}
NODE_EVENTS: dict[str, type[Event]] = {name: cls for name, cls in BRIDGED_EVENTS.items() if cls is not PeerEventsMissed}


def event_to_wire(event: Event) -> dict[str, Any]:
    """A bridged event as JSON-ready data."""
    return {"type": type(event).__name__, **{f.name: getattr(event, f.name) for f in fields(event)}}


def event_from_wire(data: Any) -> Event | None:
    """The event ``event_to_wire`` made; None for anything else (another version's event)."""
    try:
        cls = BRIDGED_EVENTS[data["type"]]
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        if "service" in values:
            values["service"] = LeaseService(values["service"])
        event = cls(**values)
    except (KeyError, TypeError, ValueError):
        return None
    # Times are finite numbers, the rest JSON scalars: what a handler may compute with.
    for name in ("at", "expires_at"):
        value = getattr(event, name, 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
    if not all(isinstance(getattr(event, f.name), str | int | float | None) for f in fields(event)):
        return None
    return event


class EventBridge:
    """Carries a bus's bridged events to another process's bus, and that one's back, without
    echoes: an event that came in is published here and not sent out again. The transport is the
    caller's (``take``/``wait_and_take`` what to send, ``deliver`` what came); an outbox nobody
    empties keeps the newest ``MAX_QUEUED`` (a worker down for a while reloads from the store)."""

    MAX_QUEUED = 10_000

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.outbox: list[dict[str, Any]] = []
        self.dropped = 0
        self._incoming = False
        self._ready = asyncio.Event()

    def attach(self, kinds: Iterable[type[Event]] = BRIDGED_EVENTS.values()) -> Callable[[], None]:
        """Start collecting this bus's events of ``kinds``; returns the detach."""
        undo = [self.bus.subscribe(cls, self._outgoing) for cls in kinds]

        def detach() -> None:
            for unsubscribe in undo:
                unsubscribe()
        return detach

    def _outgoing(self, event: Event) -> None:
        if self._incoming:
            return
        if len(self.outbox) >= self.MAX_QUEUED:
            del self.outbox[0]
            self.dropped += 1
        self.outbox.append(event_to_wire(event))
        self._ready.set()

    def take(self, limit: int = 1000) -> list[dict[str, Any]]:
        batch = self.outbox[:limit]
        del self.outbox[:limit]
        if not self.outbox:
            self._ready.clear()
        return batch

    def put_back(self, batch: list[dict[str, Any]]) -> None:
        """A batch taken that could not be delivered, to go first next time (the newest
        ``MAX_QUEUED`` kept)."""
        self.outbox[:0] = batch
        if len(self.outbox) > self.MAX_QUEUED:
            excess = len(self.outbox) - self.MAX_QUEUED
            del self.outbox[:excess]
            self.dropped += excess
        if self.outbox:
            self._ready.set()

    def forget(self) -> None:
        """What waits goes: the other process starts afresh, from the store."""
        self.outbox.clear()
        self._ready.clear()

    async def wait_and_take(self, wait_seconds: float, limit: int = 1000) -> list[dict[str, Any]]:
        """What there is to send, waiting up to ``wait_seconds`` for something (a long poll)."""
        if not self.outbox:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_seconds):
                    await self._ready.wait()
        return self.take(limit)

    def deliver(self, items: Any) -> int:
        """Publish what the other process sent; how many were events this version knows."""
        count = 0
        for item in items if isinstance(items, list) else ():
            event = event_from_wire(item)
            if event is None:
                continue
            self._incoming = True
            try:
                self.bus.publish(event)
            finally:
                self._incoming = False
            count += 1
        return count


def event_from_audit(entry: AuditEntry) -> Event | None:
    """The domain event an audit entry announces; None for entries no service reacts to."""
    if entry.subject_kind == "subscriber" and entry.subject_id is not None:
        at, sid, name = entry.at, entry.subject_id, entry.subject_name or ""
        reason = entry.details.get("reason")
        match entry.action:
            case "subscriber.added":
                plan = entry.details.get("plan")
                return SubscriberAdded(at, sid, name, plan=plan if isinstance(plan, str) else None)
            case "subscriber.suspended":
                return SubscriberSuspended(at, sid, name, reason=reason)
            case "subscriber.resumed":
                return SubscriberResumed(at, sid, name)
            case "subscriber.closed":
                return SubscriberClosed(at, sid, name, reason=reason)
            case "subscriber.deleted":
                return SubscriberDeleted(at, sid, name)
            case "subscriber.password_set":
                return SubscriberPasswordChanged(at, sid, name)
            case "subscriber.radius_reply_set":
                return SubscriberRadiusReplyChanged(at, sid, name)
            case "subscriber.plan_changed":
                plan_id = entry.details.get("plan_id")
                return SubscriberPlanChanged(at, sid, name, plan_id=plan_id if isinstance(plan_id, int) else None)
            case "reservation.added" | "reservation.changed" | "reservation.deleted":
                return _reservation_event(entry, sid, name)
    if entry.subject_kind == "plan" and entry.action == "plan.added" and entry.subject_id is not None:
        return PlanAdded(at=entry.at, plan_id=entry.subject_id, name=entry.subject_name or "")
    return None


_RESERVATION_KINDS = frozenset(k.value for k in ReservationKind)
_RESERVATION_EVENTS: dict[str, type[ReservationEvent]] = {
    "reservation.added": ReservationAdded, "reservation.changed": ReservationChanged,
    "reservation.deleted": ReservationDeleted}


def _reservation_event(entry: AuditEntry, sid: int, name: str) -> Event | None:
    d = entry.details
    rid, kind, key = d.get("reservation_id"), d.get("kind"), d.get("key")
    # An entry this code cannot read (hand-edited, or from a newer ispd) announces nothing; raising
    # would stop the relay on it for good.
    if not (isinstance(rid, int) and kind in _RESERVATION_KINDS and isinstance(key, str)):
        return None
    address, hostname, address6, prefix6 = (
        value if isinstance(value, str) else None
        for value in (d.get("address"), d.get("hostname"), d.get("address6"), d.get("prefix6")))
    cls = _RESERVATION_EVENTS[entry.action]
    return cls(entry.at, sid, name, reservation_id=rid, kind=kind, key=key, address=address, hostname=hostname,
               address6=address6, prefix6=prefix6)


class AuditRelay:
    """Tails the store's audit log and publishes each new entry's event on the bus."""

    def __init__(self, store: Store, bus: EventBus, poll_interval: float) -> None:
        self.store, self.bus, self.poll_interval = store, bus, poll_interval
        self._task: asyncio.Task[None] | None = None
        self.cursor = 0

    async def mark(self) -> None:
        """Remember where the log ends now: ``start`` announces what comes after. Call it before
        services read their state from the store, so no change falls between the two."""
        self.cursor = await self.store.last_audit_id()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ispd-audit-relay")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def poll_once(self) -> int:
        entries = await self.store.audit_since(self.cursor)
        for entry in entries:
            event = event_from_audit(entry)
            if event is not None:
                self.bus.publish(event)
            self.cursor = entry.id
        return len(entries)

    async def _run(self) -> None:
        # The store away (a PostgreSQL server stopped or restarted) fails every poll: one warning
        # for the outage and one line when it answers again, not one each poll_interval.
        failing = False
        while True:
            try:
                read = await self.poll_once()
            except StoreError as exc:
                if not failing:
                    log.warning("events.relay.store_error", error=str(exc))
                failing = True
            except Exception:  # a bug must not end the relay: later changes would never arrive
                log.error("events.relay.failed", exc_info=True)
            else:
                if failing:
                    log.info("events.relay.store_restored")
                    failing = False
                if read >= 1000:  # a full page means more is waiting: read on without sleeping
                    continue
            await asyncio.sleep(self.poll_interval)
