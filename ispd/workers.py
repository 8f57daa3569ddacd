"""Services in processes of their own, so that one service's load cannot starve another's.

One event loop runs on one core: a DNS flood slowed Access-Requests sharing its loop from a p99 of
0.5 ms to 3.7 ms and halved their throughput. A service whose config asks for its own process
(``[radius] process = "own"``, or "auto" on a machine with 4 CPUs or more) runs in a worker
instead, on whatever core the kernel gives it. It gains only where there is a core to give: on
two cores shared with the load, two busy processes time-slice and tail latency grows.

Theory of operation
-------------------
main side  ``WorkerService`` stands in the supervisor's list for the service. ``start`` runs
           ``python -m ispd worker NAME -c CONFIG --control PATH --ready-fd N`` and waits for the
           one line the worker writes on that pipe: ``ready``, or ``error: why`` (then the daemon
           does not start, with that reason). The worker's control socket sits beside the
           daemon's (``/run/ispd/control.sock.radius``, mode 0600; a private directory when the
           daemon's is disabled); through it the main process forwards the worker's
           commands from its own control socket (``ispd session disconnect`` reaches RADIUS), asks
           for the worker's metrics at every scrape (appended to its own /metrics, its counters
           going on across its restarts: ``ContinuousCounters``), its health
           every few seconds, and a reload on SIGHUP (the worker re-reads the file; a refusal is
           the reload's). A worker that exits unasked is logged and started again, after 1 s,
           then up to 30 s between tries; health is failing meanwhile. One that stops answering
           (three health polls in a row; refused "busy" is an answer) is killed and started
           again; a scrape does not wait for it (its metrics are left out). ``stop`` sends SIGTERM and
           waits; a worker outliving the grace is killed. A worker also dies with its parent
           (PR_SET_PDEATHSIG), and systemd's stop reaches it anyway (one control group).
worker     ``run_worker`` builds what the service needs on its own — logging (each line carries
           ``worker``), the store (its own writer: SQLite serialises the processes' writes), an
           event bus fed by its own audit relay (admin changes reach it as they reach the main
           process) — starts the one service, serves the private control socket, and stops on
           SIGTERM or SIGINT (SIGHUP is the main process's to handle).

The bus across the boundary: the events that do not reach every process through the store's
audit log (``events.BRIDGED_EVENTS``: leases and RADIUS sessions) are bridged. The main process
long-polls the worker for what its bus published (``worker.events.take``: RADIUS's addresses
reach DHCP and DNS at once) and sends it what the main bus published
(``worker.events.deliver``: DHCP's leases reach RADIUS's view of a shared pool); an event that
came across is not sent back. While a worker is down its events wait in a bounded outbox, and so
do the main process's from the moment a new worker is started (what came before is in the store,
which it reads as it starts; what comes after, until its control socket opens, would be heard
nowhere). The store's
audit log a worker started again reads from where the last one was (as of its last health
report, so a few seconds may be announced twice), not from its end: a change made while no worker
ran (a plan changed, whose CoA the open sessions need) is not skipped.

A service may also run several processes of itself (``[dns] processes``): its own service in the
main process starts ``WorkerService(..., instance=K, attached=False)`` for K = 2.., whose
control socket, log lines and restarts carry the name ``dns.K``. Not attached, such a worker's
commands and metrics are not joined to the daemon's: the service forwards what it wants to each
(``request``) and merges their ``metrics_text`` itself (``ispd.dns.processes``).

Not here: streaming control commands; the worker's own process and store metrics (only the
service's are exported).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest

from ispd.control import (
    MAX_PATH_BYTES,
    CommandError,
    ControlCommands,
    ControlError,
    ControlServer,
    ControlSocketError,
    control_request,
)
from ispd.events import AuditRelay, EventBridge, EventBus
from ispd.logs import configure_logging, get_logger
from ispd.metrics.merge import ContinuousCounters
from ispd.service import Health, Service, ServiceContext, ServiceSpec, ServiceStartError

if TYPE_CHECKING:
    from ispd.config import Config
    from ispd.store import Store

log = get_logger("ispd.workers")

READY_TIMEOUT_SECONDS = 60.0  # a worker loads its store view (all subscribers) before it is ready
HEALTH_INTERVAL_SECONDS = 5.0
QUICK_REQUEST_SECONDS = 3.0  # health and metrics: a worker that takes longer is not answering
# The write a health poll tries while this process's store commits are failing (within QUICK_REQUEST_SECONDS).
STORE_CHECK_SECONDS = 2.0
HEALTH_FAILURES_BEFORE_RESTART = 3  # health polls unanswered in a row: the worker is stuck
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
BUILTIN_COMMANDS = ("worker.commands", "worker.health", "worker.metrics", "worker.reload", "worker.events.take",
                    "worker.events.deliver")
EVENT_POLL_SECONDS = 20.0  # a long poll for the worker's events returns at the latest after this
EVENT_RETRY_SECONDS = 1.0
RELOAD_SECONDS = 60.0  # a reload re-reads zone files: it may take a while, but not forever
EVENTS_PER_DELIVERY = 64  # a request to the worker must stay within the control socket's 64 KiB

_libc_name = ctypes.util.find_library("c")
_prctl = ctypes.CDLL(_libc_name, use_errno=True).prctl if _libc_name else None


def die_with_parent(parent_pid: int) -> None:
    """In the worker, first thing: SIGTERM when the supervisor dies, however it dies. (Set here
    rather than between fork and exec: the supervisor has threads, where a preexec_fn may
    deadlock.) A supervisor already gone by now is seen in getppid() and ends us at once."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if parent_pid > 0 and os.getppid() != parent_pid:
        raise SystemExit(0)


# --- the main process's side -----------------------------------------------------------------


class WorkerService(Service):
    """One worker process, seen from the main one. ``instance`` 2 and up are a service's extra
    workers (``[dns] processes``); the service that starts them is ``attached`` to them itself
    (``attached=False``): it forwards what commands it wants and merges their metrics, where a
    service's only worker has its commands and metrics joined to the daemon's here."""

    def __init__(self, spec: ServiceSpec, config: Config, context: ServiceContext, config_path: Path, *,
                 instance: int = 1, attached: bool = True) -> None:
        self.name = spec.name if instance == 1 else f"{spec.name}.{instance}"
        self.service_name = spec.name
        self.instance = instance
        self.attached = attached
        self.config = config
        self.context = context
        self.config_path = config_path
        self.control_path = worker_control_path(config.daemon.control_socket, self.name)
        # The config the worker runs: the main process's, as applied (see _write_snapshot).
        self.snapshot_path = self.control_path.with_name(f"{self.control_path.name}.config.json")
        # What else the service hands its worker with the config, beside it (``ispd.dns.datafiles``:
        # the manifest of the files the main process loaded); None: nothing.
        self.handed: dict[str, Any] | None = None
        self.handed_path = self.control_path.with_name(f"{self.control_path.name}.files.json")
        # Called after every start of the worker process (the first and each restart).
        self.on_ready: Callable[[], Awaitable[None]] | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._ready = False  # the current process said it was ready
        self._stopping = False
        self._health = Health(False, "starting")
        self._description = f"{self.name} (own process)"
        self._tasks: set[asyncio.Task[Any]] = set()
        self.bridge = EventBridge(context.bus)
        # How far the worker's audit relay had announced, as of its last health report: a worker
        # started again goes on from there, so a change made while it was down (a plan changed:
        # a CoA to the open sessions) is not skipped. None: from the log's end (the first start).
        self.audit_cursor: int | None = None
        self.counters = ContinuousCounters()  # an attached worker's series, across its restarts

    # --- lifecycle

    async def start(self, stack: AsyncExitStack) -> None:
        stack.push_async_callback(self._end)  # first: whatever fails below, the worker goes
        # Before the worker loads its state from the store: what our bus publishes meanwhile
        # (a lease granted) waits in the outbox rather than being missed.
        stack.callback(self.bridge.attach())
        await self._spawn()
        try:
            names = await self.request("worker.commands", wait=QUICK_REQUEST_SECONDS)
        except CommandError as exc:
            raise ServiceStartError(f"{self.name}: the worker stopped answering at start: {exc}") from None
        if self.attached:
            for name in names:
                if name not in BUILTIN_COMMANDS:
                    stack.callback(self.context.control.register(name, self._forwarder(name)))
            self.context.metrics_sources.append(self.continued_metrics_text)
            stack.callback(self.context.metrics_sources.remove, self.continued_metrics_text)
        self._spawn_task(self._watch())
        self._spawn_task(self._pull_events())
        self._spawn_task(self._push_events())
        log.info("worker.started", worker=self.name, pid=self.proc.pid if self.proc else None)

    def _write_snapshot(self, config: Config) -> None:
        """What the worker runs when it starts or reloads: the config the main process runs, not
        the file, which may have changed since (a change refused, or one that needs a restart)."""
        from ispd.config import write_config_snapshot
        from ispd.dns.datafiles import write_manifest

        try:
            write_config_snapshot(config, self.snapshot_path)
        except OSError as exc:
            raise ServiceStartError(f"{self.name}: cannot write {self.snapshot_path}: {exc.strerror}") from None
        if self.handed is not None:
            try:
                write_manifest(self.handed, self.handed_path)
            except OSError as exc:
                raise ServiceStartError(f"{self.name}: cannot write {self.handed_path}: {exc.strerror}") from None

    @property
    def up(self) -> bool:
        """Its process is running and has said it is ready (it may still be stuck)."""
        return self._ready and self.proc is not None and self.proc.returncode is None

    async def _spawn(self) -> None:
        self._ready = False
        # What our bus published until now is in the store, which the new worker reads as it
        # starts; what it publishes from now on waits for the worker to be ready (_push_events).
        self.bridge.forget()
        self._write_snapshot(self.config)
        read_end, write_end = os.pipe()
        handed = ["--handed-files", str(self.handed_path)] if self.handed is not None else []
        if self.audit_cursor is not None:
            handed += ["--audit-from", str(self.audit_cursor)]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ispd", "worker", self.service_name, "--instance", str(self.instance),
                "-c", str(self.config_path), "--config-snapshot", str(self.snapshot_path), *handed,
                "--control", str(self.control_path), "--ready-fd", str(write_end), "--parent-pid", str(os.getpid()),
                pass_fds=(write_end,), stdin=asyncio.subprocess.DEVNULL)
        except OSError as exc:
            os.close(read_end)
            raise ServiceStartError(f"{self.name}: cannot start its worker process: {exc}") from None
        finally:
            os.close(write_end)
        line = await self._read_ready(read_end)
        if line != "ready":
            await self._kill()
            reason = line.removeprefix("error: ") if line else "the worker exited before it was ready"
            if not reason.startswith(f"{self.service_name}:"):
                reason = f"{self.service_name}: {reason}"
            raise ServiceStartError(reason if self.instance == 1 else f"{reason} (in its process {self.instance})")
        self._health = Health(True)
        self._ready = True
        await self._poll_health()
        if self.on_ready is not None:
            try:
                await self.on_ready()
            except Exception:  # what it hands the worker is a nicety; the worker runs without it
                log.exception("worker.on_ready.failed", worker=self.name)

    async def _read_ready(self, fd: int) -> str:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(fd, "rb", buffering=0))
        try:
            async with asyncio.timeout(READY_TIMEOUT_SECONDS):
                return (await reader.readline()).decode("utf-8", "replace").strip()
        except TimeoutError:
            return f"error: {self.name}: the worker was not ready within {READY_TIMEOUT_SECONDS:g} s"
        finally:
            transport.close()

    async def stop(self) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:  # the worker drains within the same grace; a bit more, then it is killed
                async with asyncio.timeout(self.config.daemon.shutdown_grace_seconds + 2):
                    await proc.wait()
            except TimeoutError:
                log.error("worker.stop.timeout", worker=self.name)
                await self._kill()

    async def _end(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await self._kill()
        with contextlib.suppress(OSError):
            self.snapshot_path.unlink()
        with contextlib.suppress(OSError):
            self.handed_path.unlink()
        if self.control_path.parent.name.startswith("ispd-worker-"):
            shutil.rmtree(self.control_path.parent, ignore_errors=True)

    async def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def reload(self, old: Config, new: Config) -> None:
        """The worker reloads on ``new``. Refused, or not answering (restarting), it is left on
        ``old`` — which it then also starts on — and the refusal is the reload's."""
        if not self.up:  # not the control socket's "cannot reach the ispd daemon": we are it
            raise ServiceStartError(f"{self.name}: its worker process is not running at the moment "
                                    f"({self._health.detail}); send SIGHUP again once it is back")
        self._write_snapshot(new)
        try:
            await self.request("worker.reload", wait=RELOAD_SECONDS)
        except CommandError as exc:
            self._write_snapshot(old)
            # (the service's own refusals name it already: "radius: a change of listen addresses ...")
            reason = str(exc)
            raise ServiceStartError(reason if reason.startswith(f"{self.name}: ") else f"{self.name}: {reason}") \
                from None
        self.config = new

    async def follow(self, new: Config, handed: dict[str, Any] | None = None) -> None:
        """For a service's extra worker: run ``new`` (and ``handed`` with it), which the
        service's first process has already applied. A worker that refuses or does not answer is
        restarted on it, so that no process answers on another config."""
        self.config = new
        if handed is not None:
            self.handed = handed
        proc = self.proc
        try:
            self._write_snapshot(new)
            await self.request("worker.reload", wait=RELOAD_SECONDS)
        except (CommandError, ServiceStartError) as exc:
            await self.restart(f"it could not follow a reload: {exc}", proc)

    async def restart(self, why: str, proc: asyncio.subprocess.Process | None) -> None:
        """End the worker's process ``proc`` (unless the watch has replaced it since); the watch
        starts it again (on ``self.config``)."""
        if proc is None or proc is not self.proc:
            return
        log.warning("worker.restarting", worker=self.name, reason=why)
        await self._kill()

    def health(self) -> Health:
        return self._health

    def describe(self) -> str:
        return self._description

    # --- talking to the worker

    async def request(self, command: str, args: dict[str, Any] | None = None, *, wait: float = 120.0) -> Any:
        """One command to the worker; ``CommandError`` when it fails or the worker does not answer."""
        try:
            return await control_request(self.control_path, command, args, wait_seconds=wait)
        except ControlError as exc:
            raise CommandError(str(exc)) from None

    def _forwarder(self, name: str) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        """An operator's command, to the worker. Its refusals go back as they are; a worker that is
        down or does not answer is said to be so (the control socket's own message would name
        the worker's socket as the daemon's and ask whether the daemon is running)."""
        async def forward(args: dict[str, Any]) -> Any:
            if not self.up:
                raise CommandError(f"{self.name} is not running at the moment ({self._health.detail}); "
                                   "try again in a few seconds")
            try:
                return await control_request(self.control_path, name, args, wait_seconds=120.0)
            except ControlError as exc:
                if exc.code:  # the worker's own answer
                    raise CommandError(str(exc)) from None
                log.warning("worker.command.failed", worker=self.name, command=name, error=str(exc))
                raise CommandError(f"{self.name}'s worker process did not answer (it is being restarted, see "
                                   "the log); try again in a few seconds") from None
        return forward

    async def metrics_text(self) -> bytes:
        """The worker's metrics, or none when it does not answer at once (a scrape must not wait
        for a stuck worker: the main process's own metrics matter most then)."""
        try:
            text = await self.request("worker.metrics", wait=QUICK_REQUEST_SECONDS)
        except CommandError:
            return b""
        return str(text).encode()

    async def continued_metrics_text(self) -> bytes:
        """``metrics_text`` as the daemon's /metrics shows it: its counters and histograms go on
        from where the worker's last life left them (a restart must not read as a reset of every
        ``ispd_radius_*`` counter to Prometheus), and stay, as last seen, while it is down."""
        proc = self.proc
        text = await self.metrics_text()
        if proc is not self.proc:  # restarted meanwhile: which life answered is not known
            text = b""
        life = proc.pid if proc is not None else None
        return self.counters.adjust(text.decode() if text else None, life).encode()

    # --- the bus across

    async def _pull_events(self) -> None:
        """What the worker's bus published, onto ours (a long poll, again and again)."""
        while not self._stopping:
            try:
                items = await self.request("worker.events.take", {"wait": EVENT_POLL_SECONDS},
                                            wait=EVENT_POLL_SECONDS + QUICK_REQUEST_SECONDS)
            except CommandError:  # restarting, or stuck: the watch deals with it
                await asyncio.sleep(EVENT_RETRY_SECONDS)
                continue
            self.bridge.deliver(items)

    async def _push_events(self) -> None:
        """What our bus published, to the worker's."""
        while not self._stopping:
            batch = await self.bridge.wait_and_take(EVENT_POLL_SECONDS, EVENTS_PER_DELIVERY)
            if not batch:
                continue
            try:
                await control_request(self.control_path, "worker.events.deliver", {"events": batch},
                                      wait_seconds=QUICK_REQUEST_SECONDS)
            except ControlError as exc:
                if (not self.up or exc.code == "busy") and not self._stopping:
                    # Down or starting: it reads the store first and opens its control socket
                    # last, so what came between was neither read nor deliverable. Dropped, a
                    # lease granted then was never heard there (its name NXDOMAIN from that
                    # process until a renewal). Kept for it (_spawn forgets what it will read).
                    # Busy (its control socket full of operators' commands): the same, later.
                    self.bridge.put_back(batch)
                    await asyncio.sleep(EVENT_RETRY_SECONDS)
                    continue
                # Up, yet it did not take them (it died just now: it reads the store when it is back).
                log.debug("worker.events.undelivered", worker=self.name, events=len(batch), error=str(exc))

    # --- watching it

    def _spawn_task(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        """Poll the worker's health; start it again when it exits unasked, or kill it first when
        it stopped answering (stuck, or stopped with SIGSTOP)."""
        failures = 0
        unanswered = 0
        while not self._stopping:
            proc = self.proc
            if proc is not None and proc.returncode is None:
                try:
                    async with asyncio.timeout(HEALTH_INTERVAL_SECONDS):
                        await proc.wait()
                except TimeoutError:
                    unanswered = 0 if await self._poll_health() else unanswered + 1
                    if unanswered < HEALTH_FAILURES_BEFORE_RESTART:
                        failures = 0
                        continue
                    log.error("worker.stuck", worker=self.name, unanswered_polls=unanswered)
                    unanswered = 0
                    await self._kill()
            if self._stopping:
                return
            code = proc.returncode if proc is not None else None
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            self._health = Health(False, f"worker exited ({code}); starting it again in {delay:g} s")
            log.error("worker.exited", worker=self.name, code=code, restart_in=delay)
            await asyncio.sleep(delay)
            failures += 1
            if self._stopping:
                return
            try:
                await self._spawn()
            except Exception as exc:  # whatever went wrong, try again later: the watch must go on
                log.error("worker.restart.failed", worker=self.name, error=str(exc),
                          exc_info=not isinstance(exc, ServiceStartError))
                continue
            log.info("worker.restarted", worker=self.name, pid=self.proc.pid if self.proc else None)

    async def _poll_health(self) -> bool:
        """Ask the worker how it is; False when it did not answer."""
        try:
            report = await control_request(self.control_path, "worker.health", wait_seconds=QUICK_REQUEST_SECONDS)
        except ControlError as exc:
            if exc.code == "busy":
                # An answer all the same: its loop turns, its control socket is full (a bulk of
                # operators' commands in hand beside our long poll). Counted as unanswered, it
                # was killed as stuck after three polls, with every command it was serving.
                return True
            self._health = Health(False, f"worker does not answer: {exc}")
            return False
        self._health = Health(bool(report.get("ok")), str(report.get("detail", "")))
        cursor = report.get("audit_cursor")
        if isinstance(cursor, int) and not isinstance(cursor, bool):
            self.audit_cursor = cursor
        self._description = str(report.get("describe") or self._description)
        return True


def worker_control_path(control_socket: Path | None, name: str) -> Path:
    """Where a worker's private control socket goes: beside the daemon's own (``/run/ispd``,
    mode 0750: a socket left by a killed daemon is replaced at the next start, as the daemon's
    is), or, when that is disabled or its path too long, in a private directory (mode 0700)."""
    if control_socket is not None:
        candidate = control_socket.with_name(f"{control_socket.name}.{name}")
        if len(os.fsencode(candidate)) <= MAX_PATH_BYTES:
            return candidate
    return Path(tempfile.mkdtemp(prefix="ispd-worker-")) / f"{name}.sock"


# --- the worker's side -----------------------------------------------------------------------


class _WorkerHost:
    def __init__(self, spec: ServiceSpec, config_path: Path, config: Config, control_path: Path,
                 ready_fd: int, instance: int, snapshot: Path | None, handed_files: Path | None = None,
                 audit_from: int | None = None) -> None:
        self.spec, self.config_path, self.config, self.instance = spec, config_path, config, instance
        self.snapshot = snapshot  # the main process's config, which a reload reads again
        self.handed_files = handed_files  # what else it hands over (WorkerService.handed), read again too
        self.audit_from = audit_from  # where the last worker's audit relay was (WorkerService.audit_cursor)
        self.relay: AuditRelay | None = None
        self.store: Store | None = None
        self.name = spec.name if instance == 1 else f"{spec.name}.{instance}"
        self.control_path, self.ready_fd = control_path, ready_fd
        self.commands = ControlCommands()
        self.registry = CollectorRegistry(auto_describe=True)
        self.service: Service | None = None
        self.bridge: EventBridge | None = None
        self._stop = asyncio.Event()

    def _say(self, line: str) -> None:
        if self.ready_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self.ready_fd, line.replace("\n", " ").encode() + b"\n")
            os.close(self.ready_fd)
        self.ready_fd = -1

    async def run(self) -> int:
        import structlog

        from ispd.entry import HELD_SIGNALS
        from ispd.store import StoreError, open_store

        structlog.contextvars.bind_contextvars(worker=self.name)
        configure_logging(self.config.log, background=True)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the main process reloads us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        async with AsyncExitStack() as stack:
            try:
                store = await open_store(self.config.store)
            except StoreError as exc:
                self._say(f"error: {self.spec.name}: {exc}")
                return 1
            stack.push_async_callback(store.close)
            self.store = store
            bus = EventBus()
            self.bridge = EventBridge(bus)
            stack.callback(self.bridge.attach())
            relay = AuditRelay(store, bus, self.config.daemon.store_poll_interval_seconds)
            await relay.mark()
            if self.audit_from is not None:  # started again: what was logged while no worker ran too
                relay.cursor = min(relay.cursor, max(self.audit_from, 0))
            self.relay = relay

            async def healthy() -> tuple[bool, dict[str, Any]]:
                health = self.service.health() if self.service else Health(False, "starting")
                return health.ok, {self.spec.name: {"ok": health.ok, "detail": health.detail}}

            context = ServiceContext(store, bus, self.registry, healthy, control=self.commands,
                                     config_path=self.config_path, instance=self.instance,
                                     handed_files=self.handed_files)
            self.service = self.spec.build(self.config, context)
            service_stack = AsyncExitStack()
            stack.push_async_callback(service_stack.aclose)
            try:
                await self.service.start(service_stack)
            except ServiceStartError as exc:
                self._say(f"error: {exc}")
                return 1
            await relay.start()
            stack.push_async_callback(relay.stop)
            for name, handler in (("worker.commands", self._command_names), ("worker.health", self._command_health),
                                  ("worker.metrics", self._command_metrics), ("worker.reload", self._command_reload),
                                  ("worker.events.take", self._command_take_events),
                                  ("worker.events.deliver", self._command_deliver_events)):
                self.commands.register(name, handler)
            control = ControlServer(self.control_path, self.commands)
            try:
                await control.start()
            except ControlSocketError as exc:
                self._say(f"error: {self.spec.name}: {exc}")
                return 1
            stack.push_async_callback(control.close)
            self._say("ready")
            log.info("worker.ready", service=self.spec.name)
            await self._stop.wait()
            log.info("worker.stopping", service=self.spec.name)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.daemon.shutdown_grace_seconds):
                    await self.service.stop()
            await bus.drain(1.0)
        return 0

    async def _command_take_events(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.bridge is not None
        wait = args.get("wait", 0)
        seconds = float(wait) if isinstance(wait, int | float) and math.isfinite(wait) else 0.0
        return await self.bridge.wait_and_take(min(max(seconds, 0.0), EVENT_POLL_SECONDS))

    async def _command_deliver_events(self, args: dict[str, Any]) -> int:
        assert self.bridge is not None
        return self.bridge.deliver(args.get("events"))

    async def _command_names(self, args: dict[str, Any]) -> list[str]:
        return self.commands.names()

    async def _command_health(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.service is not None
        store = self.store
        if store is not None and store.commits_failing() is not None:
            # As /healthz does in the main process: this process's store has a writer of its own,
            # and its last failed write (RADIUS's health defers to it) held until a client wrote.
            from ispd.store import StoreError

            with contextlib.suppress(StoreError, TimeoutError):
                await asyncio.wait_for(store.check_writes(), STORE_CHECK_SECONDS)
        health = self.service.health()
        return {"ok": health.ok, "detail": health.detail, "describe": self.service.describe(),
                "audit_cursor": self.relay.cursor if self.relay is not None else None}

    async def _command_metrics(self, args: dict[str, Any]) -> str:
        return generate_latest(self.registry).decode()

    async def _command_reload(self, args: dict[str, Any]) -> dict[str, Any]:
        from ispd.config import ConfigError, load_config, load_config_snapshot

        assert self.service is not None
        try:
            new = load_config_snapshot(self.snapshot) if self.snapshot is not None else load_config(self.config_path)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        configure_logging(new.log, background=True)
        try:
            await self.service.reload(self.config, new)
        except ServiceStartError as exc:
            raise CommandError(str(exc)) from None
        self.config = new
        return {"ok": True}


def run_worker(spec: ServiceSpec, config_path: Path, config: Config, control_path: Path, ready_fd: int,
               parent_pid: int, instance: int = 1, snapshot: Path | None = None,
               handed_files: Path | None = None, audit_from: int | None = None) -> int:
    """``ispd worker NAME``: one service in this process, until SIGTERM."""
    import uvloop

    die_with_parent(parent_pid)
    host = _WorkerHost(spec, config_path, config, control_path, ready_fd, instance, snapshot, handed_files,
                       audit_from)
    try:
        return uvloop.run(host.run())
    finally:
        host._say("error: the worker stopped before it was ready")
