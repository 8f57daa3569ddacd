"""DNS in several processes (``[dns] processes``): the extra workers, seen from the first.

One event loop answers on one core: about 80 000 cache hits or 3 000 cache misses a second
here. Past that a resolver needs more processes, as Unbound needs more threads. The main
process's DNS service is the first; it starts the others as workers (``ispd.workers``), each
running the whole DNS service on the same addresses. Every listener is opened with SO_REUSEPORT,
so the kernel spreads clients over the processes (by address and port: one client's UDP queries
and TCP connections stay in one process).

Each process keeps its own caches (``cache.max_bytes`` is per process), learns leases and
subscribers' states as the main one does (the event bridge and the store's audit log), and
tracks the trust anchors itself, each refresh carrying on from the state in the store, whichever
process wrote it last (``ispd.dns.rollover``). The first process gives the operator one resolver:

- ``ispd dns cache flush`` and ``ispd dns nta add|delete`` are carried out in every process
  that is up; one that fails them is restarted (it comes back with empty caches and the
  anchors, as one that was down does);
- /metrics shows one set of series, the processes' figures added up (``ispd.metrics.merge``),
  and ``ispd_dns_processes`` says how many processes answered; each process's counters go on
  across a worker's restarts and series it stops reporting (``ContinuousCounters``), so the
  sums do not fall;
- a reload reaches every process: the first reads everything before it changes anything, and
  the workers then follow it onto the config it runs and the files it loaded with it
  (``WorkerService.follow``: written for them, not read from the config file or the zone and
  certificate files, ``ispd.dns.datafiles``; one that cannot is restarted on it); runtime negative trust
  anchors are handed to a worker whenever it starts; health is failing while a worker is down.

DoQ and DNS over HTTP/3 stay in the first process: a QUIC connection outlives the 4-tuple the
kernel spreads by (a client's address changes, a worker leaves the group), and a datagram of
it that reached another process would be dropped as an unknown connection.

Limits per client (``rate_limit_qps``, connections per client) and in total are each process's:
a client whose queries come from several ports may be spread over several processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ispd.metrics.merge import ContinuousCounters, merge_families
from ispd.service import Health, ServiceContext, ServiceSpec, ServiceStartError
from ispd.workers import WorkerService

if TYPE_CHECKING:
    from ispd.config import Config

# Gauges each process holds a copy of (added up they would count the copies).
SAME_IN_EVERY_PROCESS = frozenset({"ispd_dns_dnssec_negative_trust_anchors"})
_PROCESSES_HELP = "DNS processes whose figures the ispd_dns_* series add up (those that answered this scrape)."

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
COMMAND_SECONDS = 15.0  # a worker that takes longer with a flush or an NTA is taken to be stuck


class ExtraProcesses:
    def __init__(self, spec: ServiceSpec, config: Config, context: ServiceContext,
                 on_ready: Callable[[WorkerService], Awaitable[None]], handed: dict[str, Any]) -> None:
        """``on_ready``: what to hand a worker each time it has started (the first time and after
        a restart), such as the negative trust anchors added at run time. ``handed``: the
        manifest of the files the first process loaded (``ispd.dns.datafiles``), which every
        worker loads rather than the disk's."""
        if context.config_path is None:
            raise ServiceStartError("dns: processes > 1 needs the daemon's config file (ispd run -c FILE)")
        self.workers = [WorkerService(spec, config, context, context.config_path, instance=instance, attached=False)
                        for instance in range(2, config.dns.processes + 1)]
        for worker in self.workers:
            worker.on_ready = partial(on_ready, worker)
            worker.handed = handed
        self.counters = {worker.instance: ContinuousCounters() for worker in self.workers}
        self.own_counters = ContinuousCounters()  # (a series this process stops reporting stays)

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

    async def reload(self, new: Config, handed: dict[str, Any]) -> None:
        """Every worker follows the first process onto ``new`` and the files it loaded with it
        (``handed``), restarted on them if need be."""
        await asyncio.gather(*(worker.follow(new, handed) for worker in self.workers))

    def health(self) -> Health:
        for worker in self.workers:
            health = worker.health()
            if not health.ok:
                return Health(False, f"process {worker.instance}: {health.detail}")
        return Health(True)

    # --- one resolver to the operator

    def everywhere(self, command: str, handler: Handler, combine: Callable[[list[Any]], Any],
                   done_already: Callable[[BaseException], bool] = lambda error: False) -> Handler:
        """``handler`` here, then the same command in every worker; ``combine`` makes one reply
        of all the replies (this process's and those of the workers that answered). Bad
        arguments fail here, before any worker is asked. A worker that is down is left out, and
        one that fails the command (unless ``done_already`` says its error means the same) is
        restarted: either starts again with empty caches and is handed the runtime anchors."""
        async def run(args: dict[str, Any]) -> Any:
            mine = await handler(args)
            up = [(worker, worker.proc) for worker in self.workers if worker.up]
            results = await asyncio.gather(*(worker.request(command, args, wait=COMMAND_SECONDS)
                                             for worker, _ in up), return_exceptions=True)
            replies = [mine]
            for (worker, proc), result in zip(up, results, strict=True):
                if not isinstance(result, BaseException):
                    replies.append(result)
                elif not done_already(result):
                    await worker.restart(f"{command} failed there: {result}", proc)
            return combine(replies)
        return run

    async def metrics(self, own: CollectorRegistry) -> bytes:
        """This process's DNS series and the workers', added up; a worker that does not answer
        at once is left out (and ``ispd_dns_processes`` says so)."""
        groups = [self.own_counters.families(generate_latest(own).decode())]
        lives = [worker.proc.pid if worker.proc is not None else None for worker in self.workers]
        replies = await asyncio.gather(*(worker.metrics_text() for worker in self.workers))
        for worker, life, text in zip(self.workers, lives, replies, strict=True):
            groups.append(self.counters[worker.instance].families(text.decode() if text else None, life))
        counted = GaugeMetricFamily("ispd_dns_processes", _PROCESSES_HELP, value=1 + sum(map(bool, replies)))
        return merge_families([*groups, [counted]], SAME_IN_EVERY_PROCESS)


def add_counts(replies: list[dict[str, int]]) -> dict[str, int]:
    """The flush counts of every process, added up."""
    total: dict[str, int] = {}
    for reply in replies:
        for key, value in reply.items():
            total[key] = total.get(key, 0) + value
    return total


def first(replies: list[Any]) -> Any:
    return replies[0]
