"""The identity feed: DHCP leases as RADIUS accounting, for the tools that know subscribers only
from a NAS's accounting (shapers such as LibreQoS, billing, lawful-intercept indexes).

A subscriber served by DHCP alone has no BNG, so nothing accounts for it; this service plays the
NAS. A lease granted is an Accounting-Request Start, each renewal an Interim-Update (with
``interim_on_renew``), its end a Stop with the time it lasted and a cause (released:
User-Request, expired: Lost-Carrier, declined: Lost-Service). The session is the lease:
Acct-Session-Id is ``dhcp-<address>-<start time>``, the same after a restart of ispd, so a
collector pairs a Stop with its Start whatever happened in between. User-Name is the
subscriber's username (the MAC for a client no reservation names), Framed-IP-Address the
address, Calling-Station-Id the MAC.

Each collector gets every request on its own exchange (RFC 2866 Request Authenticator, a
Message-Authenticator as BlastRADIUS advice has it, ``attempts`` sends ``timeout_seconds``
apart, the Accounting-Response checked); the outcome is counted by collector and result and a
failure logged. The feed listens on the bus and never holds up DHCP.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from ispd.config import Config
from ispd.events import LeaseEnded, LeaseGranted
from ispd.logs import get_logger
from ispd.metrics.fast import FastCollector, LabeledCounter
from ispd.radius.coa import DynamicAuthorizationClient
from ispd.radius.codec import Attr, Code, encode_attributes, u32
from ispd.radius.config import AccountingFeedConfig
from ispd.service import Health, Service, ServiceContext
from ispd.store.errors import StoreError
from ispd.store.models import LeaseService

log = get_logger("ispd.radius.feed")

START, STOP, INTERIM_UPDATE = 1, 2, 3  # Acct-Status-Type
# Acct-Terminate-Cause (RFC 2866 §5.10) for each way a lease ends.
_CAUSES = {"released": 1, "expired": 2, "declined": 3}
# Requests on their way to one collector at once; the rest wait their turn, so that a burst (the
# leases that expired while ispd was stopped, all reclaimed at its start) is sent at the pace the
# collector answers, not dropped.
MAX_IN_FLIGHT = 64
MAX_LOOKUPS = 16  # subscribers' usernames looked up in the store at once
# Events waiting or on their way (a burst, or a collector down for its `attempts`); beyond it the
# extra ones are dropped, counted and logged.
MAX_PENDING = 20_000


class AccountingFeed(Service):
    name = "accounting_feed"

    def __init__(self, config: Config, context: ServiceContext) -> None:
        self.config: AccountingFeedConfig = config.accounting_feed
        self.context = context
        self.client = DynamicAuthorizationClient(self.config.timeout_seconds, self.config.attempts)
        self.sent = LabeledCounter("ispd_accounting_feed_requests_total",
                                   "Accounting-Requests the identity feed sent, by collector, type and result.",
                                   ["collector", "type", "result"])
        self._usernames: dict[int, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)
        self._dropping = False

    async def start(self, stack: AsyncExitStack) -> None:
        collector = FastCollector([self.sent])
        self.context.registry.register(collector)
        stack.callback(self.context.registry.unregister, collector)
        stack.callback(self.context.bus.subscribe(LeaseGranted, self._granted))
        stack.callback(self.context.bus.subscribe(LeaseEnded, self._ended))
        stack.push_async_callback(self._drain)
        log.info("accounting_feed.started", collectors=[c.name for c in self.config.collectors])

    async def stop(self) -> None:
        await self._drain()

    async def reload(self, old: Config, new: Config) -> None:
        self.config = new.accounting_feed
        self.client = DynamicAuthorizationClient(self.config.timeout_seconds, self.config.attempts)

    def health(self) -> Health:
        return Health(ok=True, detail=f"{len(self.config.collectors)} collectors, {len(self._tasks)} requests on "
                                      "their way")

    async def _drain(self) -> None:
        """At stop: the requests on their way get their attempts (a Stop must not be lost to a
        restart), then the rest are given up."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.config.timeout_seconds * self.config.attempts)
        for task in list(self._tasks):
            task.cancel()

    # --- events

    def _granted(self, event: LeaseGranted) -> None:
        if event.service is not LeaseService.DHCP or event.starts_at is None:
            return
        if event.renewal and not self.config.interim_on_renew:
            return
        status = INTERIM_UPDATE if event.renewal else START
        self._spawn(self._send(status, event.address, event.starts_at, event.at, event.subscriber_id,
                               event.hw_address, None))

    def _ended(self, event: LeaseEnded) -> None:
        if event.service is not LeaseService.DHCP or event.starts_at is None:
            return
        ended = min(event.at, event.ended_at) if event.ended_at is not None else event.at
        self._spawn(self._send(STOP, event.address, event.starts_at, ended, event.subscriber_id,
                               event.hw_address, _CAUSES.get(event.reason)))

    def _spawn(self, coroutine: Any) -> None:
        if len(self._tasks) >= MAX_PENDING:
            coroutine.close()
            self.sent.inc("*", "any", "dropped")
            if not self._dropping:  # (once per overflow, not once per event)
                log.warning("accounting_feed.dropped", pending=len(self._tasks))
            self._dropping = True
            return
        self._dropping = False
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- requests

    async def _send(self, status: int, address: str, starts_at: float, at: float, subscriber_id: int | None,
                    hw_address: str | None, cause: int | None) -> None:
        username = await self._username(subscriber_id) or hw_address or address
        attributes = [
            (Attr.ACCT_STATUS_TYPE, u32(status)),
            (Attr.ACCT_SESSION_ID, f"dhcp-{address}-{int(starts_at)}".encode()),
            (Attr.USER_NAME, username.encode("utf-8")[:253]),
            (Attr.FRAMED_IP_ADDRESS, bytes(int(part) for part in address.split("."))),
            (Attr.NAS_IDENTIFIER, self.config.nas_identifier.encode("utf-8")),
            (Attr.EVENT_TIMESTAMP, u32(int(at))),
        ]
        if self.config.nas_ip_address is not None:
            attributes.append((Attr.NAS_IP_ADDRESS, self.config.nas_ip_address.packed))
        if hw_address:
            attributes.append((Attr.CALLING_STATION_ID, hw_address.encode("ascii", "replace")))
        if status != START:
            attributes.append((Attr.ACCT_SESSION_TIME, u32(max(0, int(at - starts_at)))))
        if cause is not None:
            attributes.append((Attr.ACCT_TERMINATE_CAUSE, u32(cause)))
        body = encode_attributes(attributes)
        kind = {START: "start", STOP: "stop", INTERIM_UPDATE: "interim-update"}[status]
        await asyncio.gather(*(self._to(collector, kind, body) for collector in self.config.collectors))

    async def _to(self, collector: Any, kind: str, body: bytes) -> None:
        slots = self._slots.setdefault(collector.name, asyncio.Semaphore(MAX_IN_FLIGHT))
        async with slots:
            outcome = await self.client.send(collector.address.host, collector.address.port,
                                             collector.secret.get_secret_value().encode(), Code.ACCOUNTING_REQUEST,
                                             body)
        result = "answered" if outcome.result == "ack" else outcome.result
        self.sent.inc(collector.name, kind, result)
        if result != "answered":
            log.warning("accounting_feed.not_answered", collector=collector.name, type=kind, result=result,
                        detail=outcome.detail)

    async def _username(self, subscriber_id: int | None) -> str | None:
        if subscriber_id is None:
            return None
        known = self._usernames.get(subscriber_id)
        if known is None:
            try:
                async with self._lookups:
                    known = (await self.context.store.get_subscriber(subscriber_id)).username
            except StoreError:
                return None
            if len(self._usernames) > 100_000:
                self._usernames.clear()
            self._usernames[subscriber_id] = known
        return known
