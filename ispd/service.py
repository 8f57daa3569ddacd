"""The contract between the supervisor and each service (DHCP, DNS, mail, RADIUS, metrics).

A service is built from the whole config and a ``ServiceContext`` (the shared store, bus,
metrics registry and control commands), then:

- ``start(stack)`` binds its listeners and starts its tasks, pushing whatever must be closed at
  the end onto ``stack``; when it returns, the service is serving (the supervisor sends READY=1
  only after every service has returned from start).
- ``stop()`` is the graceful part: stop accepting new work and finish what is in hand. The
  supervisor bounds it by the shutdown grace, then unwinds the stack, which closes the rest.
- ``reload(old, new)`` applies a changed config without dropping what it can keep; raise to
  refuse a change (the service then goes on with the old config).
- ``health()`` is cheap and synchronous; /healthz and the watchdog read it.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from ispd.control import ControlCommands
from ispd.events import EventBus
from ispd.logs import RepeatedFailure
from ispd.store.base import Store
from ispd.store.errors import StoreError

if TYPE_CHECKING:
    from ispd.config import Config


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str = ""


# While the store is down every write of a service fails alike: its line when it starts, when its
# error changes and this often.
WRITE_FAILED_LOG_SECONDS = 30.0


class StoreWrites:
    """A service's writes to the store (leases, accounting), as its health and its log tell them.
    A failed one leaves the service unhealthy until the store's commits work again (its health
    check tries one itself: a quiet service is not left failing after the database came back).
    A store outage is ``failed_event`` once when it starts (and when its error changes, and every
    WRITE_FAILED_LOG_SECONDS), with how many were ``held_back``, and ``restored_event`` once when
    it is over, with how many failed (as ``count``) and for how long: not a line per request,
    which buried the one that said what was wrong. A bug (no StoreError) is logged every time,
    with its traceback, and leaves the service unhealthy until a write works again (the store's
    commits working says nothing of it)."""

    def __init__(self, log: Any, failed_event: str, restored_event: str, count: str = "failed_batches") -> None:
        self.log, self.failed_event, self.restored_event, self.count = log, failed_event, restored_event, count
        self.failing = False
        self.by_a_bug = False  # the last write failed by an exception that is no StoreError
        self._outage = RepeatedFailure(WRITE_FAILED_LOG_SECONDS)

    def failed(self, exc: BaseException, **fields: Any) -> None:
        self.failing = True
        expected = isinstance(exc, StoreError)
        self.by_a_bug = not expected
        held = self._outage.failed(str(exc), time.monotonic()) if expected else 0
        if held is not None:
            self.log.error(self.failed_event, error=str(exc), **fields, held_back=held, exc_info=not expected)

    def worked(self) -> None:
        if (ended := self._outage.ended(time.monotonic())) is not None:
            self.log.info(self.restored_event, **{self.count: ended[0]}, seconds=round(ended[1], 1))
        self.failing = self.by_a_bug = False

    def still_failing(self, store: Store) -> bool:
        """Whether the last write failed and the store's commits still do, or it failed by a bug."""
        return self.failing and (self.by_a_bug or store.commits_failing() is not None)


@dataclass(slots=True)
class ServiceContext:
    store: Store
    bus: EventBus
    registry: CollectorRegistry
    # The whole daemon's health, for the one service that reports it (/healthz).
    health_report: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]
    clock: Callable[[], float] = field(default=time.time)
    # Admin commands over the control socket (``ispd dns cache flush``): register them in
    # start() and push the returned unregister callable onto the stack.
    control: ControlCommands = field(default_factory=ControlCommands)
    # More Prometheus text appended to /metrics at each scrape (a worker process's metrics).
    metrics_sources: list[Callable[[], Awaitable[bytes]]] = field(default_factory=list)
    # The config file the daemon runs on (a service that starts workers passes it on to them).
    config_path: Path | None = None
    # Which of a service's processes this is: 1 in the main process (or a service's only
    # worker), 2 and up in the extra workers of a service that runs several (``[dns] processes``).
    instance: int = 1
    # In a worker of a service that runs several processes: the manifest of the files the main
    # process loaded (zones, certificates), which the worker uses instead of the disk's.
    handed_files: Path | None = None


class Service(ABC):
    name: str

    @abstractmethod
    async def start(self, stack: AsyncExitStack) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def reload(self, old: Config, new: Config) -> None: ...

    @abstractmethod
    def health(self) -> Health: ...

    def describe(self) -> str:
        """One phrase for systemd's STATUS= line, e.g. 'metrics on 127.0.0.1:9520'."""
        return self.name


class ServiceStartError(Exception):
    """A service could not start (an address in use, a missing file); str() says why."""


def describe_os_error(exc: OSError) -> str:
    """'Address already in use', the same from asyncio and uvloop (which word them differently)."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    enabled: Callable[[Config], bool]
    build: Callable[[Config, ServiceContext], Service]
    # Whether the config asks for the service in a process of its own (``ispd.workers``).
    own_process: Callable[[Config], bool] = lambda config: False
