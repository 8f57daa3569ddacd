"""DNS in several processes (``[dns] processes``): the extra workers, seen from the first.

One event loop answers on one core: about 80 000 cache hits or 3 000 cache misses a second
here. Past that a resolver needs more processes, as Unbound needs more threads. The main
process's DNS service is the first; it starts the others as workers (``ispd.workers``), each
running the whole DNS service on the same addresses. Every listener is opened with SO_REUSEPORT,
so the kernel spreads clients over the processes (by address and port: one client's UDP queries
and TCP connections stay in one process).

Each process keeps its own caches (``cache.max_bytes`` is per process), learns leases and
subscribers' states as the main one does (the event bridge and the store's audit log), and
tracks the trust anchors itself. The first process gives the operator one resolver:

- ``ispd dns cache flush`` and ``ispd dns nta add|delete`` are carried out in every process;
- /metrics shows one set of series, the processes' figures added up (``ispd.metrics.merge``),
  and ``ispd_dns_processes`` says how many processes' figures that sum holds;
- a reload reaches every process; health is failing while a worker is down (it is restarted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest

from ispd.control import CommandError
from ispd.metrics.merge import merge_expositions
from ispd.service import Health, ServiceContext, ServiceSpec, ServiceStartError
from ispd.workers import WorkerService

if TYPE_CHECKING:
    from ispd.config import Config

# Gauges each process holds a copy of (added up they would count the copies).
SAME_IN_EVERY_PROCESS = frozenset({"ispd_dns_dnssec_negative_trust_anchors"})
_PROCESSES_HELP = "DNS processes whose figures the ispd_dns_* series add up (those that answered this scrape)."

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ExtraProcesses:
    def __init__(self, spec: ServiceSpec, config: Config, context: ServiceContext) -> None:
        if context.config_path is None:
            raise ServiceStartError("dns: processes > 1 needs the daemon's config file (ispd run -c FILE)")
        self.workers = [WorkerService(spec, config, context, context.config_path, instance=instance, attached=False)
                        for instance in range(2, config.dns.processes + 1)]

    async def start(self, stack: AsyncExitStack) -> None:
        """Start every worker at once; each is killed when ``stack`` unwinds."""
        stacks = [AsyncExitStack() for _ in self.workers]
        for worker_stack in stacks:
            stack.push_async_callback(worker_stack.aclose)
        results = await asyncio.gather(*(worker.start(s) for worker, s in zip(self.workers, stacks, strict=True)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def stop(self) -> None:
        await asyncio.gather(*(worker.stop() for worker in self.workers))

    async def reload(self, old: Config, new: Config) -> None:
        """Every worker reloads; the first refusal is raised (the others have reloaded)."""
        results = await asyncio.gather(*(worker.reload(old, new) for worker in self.workers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def health(self) -> Health:
        for worker in self.workers:
            health = worker.health()
            if not health.ok:
                return Health(False, f"process {worker.instance}: {health.detail}")
        return Health(True)

    # --- one resolver to the operator

    def everywhere(self, command: str, handler: Handler, combine: Callable[[list[Any]], Any]) -> Handler:
        """``handler`` here, then the same command in every worker; ``combine`` makes one reply
        of all the replies (this process's first). Bad arguments fail here, before any worker
        is asked; a worker that fails makes the command fail, saying which processes did it."""
        async def run(args: dict[str, Any]) -> Any:
            mine = await handler(args)
            results = await asyncio.gather(*(worker.request(command, args) for worker in self.workers),
                                           return_exceptions=True)
            failed = [(worker.instance, result) for worker, result in zip(self.workers, results, strict=True)
                      if isinstance(result, BaseException)]
            if failed:
                done = [1] + [w.instance for w, r in zip(self.workers, results, strict=True)
                              if not isinstance(r, BaseException)]
                problems = "; ".join(f"process {instance}: {error}" for instance, error in failed)
                raise CommandError(f"done in process(es) {', '.join(map(str, done))} but not everywhere: {problems}")
            return combine([mine, *results])
        return run

    async def metrics(self, own: CollectorRegistry) -> bytes:
        """This process's DNS series and the workers', added up; a worker that does not answer
        at once is left out (and ``ispd_dns_processes`` says so)."""
        texts = [generate_latest(own).decode()]
        for text in await asyncio.gather(*(worker.metrics_text() for worker in self.workers)):
            if text:
                texts.append(text.decode())
        counted = (f"# HELP ispd_dns_processes {_PROCESSES_HELP}\n# TYPE ispd_dns_processes gauge\n"
                   f"ispd_dns_processes {len(texts)}\n")
        return merge_expositions([*texts, counted], SAME_IN_EVERY_PROCESS)


def add_counts(replies: list[dict[str, int]]) -> dict[str, int]:
    """The flush counts of every process, added up."""
    total: dict[str, int] = {}
    for reply in replies:
        for key, value in reply.items():
            total[key] = total.get(key, 0) + value
    return total


def first(replies: list[Any]) -> Any:
    return replies[0]
