"""The supervisor: one process, one uvloop event loop, every enabled service.

Theory of operation
-------------------
starting   build logging, metrics registry, control socket, store (migrated) and event bus
           once; start each enabled service in ``SERVICES`` order, each into its own exit stack.
           While a schema migration runs (minutes on a large store), EXTEND_TIMEOUT_USEC and a
           STATUS= line naming it go to systemd every few seconds, so TimeoutStartSec= does not
           kill the start mid-migration (rolled back, restarted, killed again, forever).
           A service that cannot start (address in use, ...) ends the daemon with exit code 1
           before READY; so does another daemon on the same store (the lock beside it,
           ``ispd/daemonlock.py``, held for the daemon's lifetime) or a control socket another
           live daemon answers on (both checked first, before the store is opened, so a second
           daemon says so at once).
standby    (``daemon.standby``, a PostgreSQL store) instead of that refusal: the metrics
           listener starts, and what ``daemon.standby_serves`` names (DNS) with the store open
           but not migrated (the active daemon's code may be older); READY=1 goes out with a
           STATUS= line naming the active daemon, the watchdog pings, and the lock is looked at
           every STANDBY_POLL_SECONDS; once it is free it is taken and the start goes on as
           above, with what runs already left running. A lock that was freed with every session
           (a server restart, a backend's crash) is left to its holder's keeper for a grace
           first. The nodes of a pair hear each other's bridged events (leases, sessions)
           through ``PeerEventChannel``.
serving    READY=1 and a STATUS= line go to systemd only now, when every listener is bound.
           The audit relay announces changes made by other processes; the watchdog pings while
           the loop turns and the store's writer lives.
reloading  (SIGHUP) RELOADING=1; the file is read and validated again. An invalid file is
           logged and changes nothing. A valid one is applied: log settings, then each service's
           ``reload(old, new)``; services newly enabled start, newly disabled ones stop. A
           service that refuses its change keeps its old config. [store] and
           ``daemon.control_socket`` changes need a restart.
           READY=1 again at the end, whatever happened.
stopping   (SIGTERM, SIGINT) a reload under way is cut short (no READY=1 after it); STOPPING=1;
           each service's ``stop()`` (stop accepting, drain) in reverse order, all bounded
           together by ``shutdown_grace_seconds``; then every exit
           stack unwinds (services take their control commands back), the control socket
           closes (its file removed), the bus drains and the store closes. Exit 0 when the
           drain finished in time, 1 when the grace ran out and work was cut off.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import signal
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, GCCollector, PlatformCollector, ProcessCollector

from ispd import __version__
from ispd.admin.service import AdminService
from ispd.certificates import CertificateExpiryCollector, CertificateValidity, certificate_validity
from ispd.collector import collect_rarely
from ispd.config import Config, ConfigError, load_config
from ispd.control import ControlCommands, ControlServer, ControlSocketError
from ispd.daemonlock import DaemonLockError, daemon_lock_for
from ispd.dhcp.service import DHCPService
from ispd.dhcp6.service import DHCP6Service
from ispd.dns.service import DNSService
from ispd.entry import HELD_SIGNALS
from ispd.events import AuditRelay, EventBus, PeerEventsMissed
from ispd.logs import configure_logging, get_logger
from ispd.mail.service import MailService
from ispd.metrics.fast import FastCollector
from ispd.metrics.service import MetricsService
from ispd.radius.feed import AccountingFeed
from ispd.radius.service import RadiusService
from ispd.sdnotify import Notifier, watchdog_interval
from ispd.service import Service, ServiceContext, ServiceSpec, ServiceStartError
from ispd.store import Store, StoreError, StoreMetrics, open_store
from ispd.store.sqlite import Migration, MigrationStopped
from ispd.workers import WorkerService

if TYPE_CHECKING:
    from ispd.store.postgresql_events import PeerEventChannel

log = get_logger("ispd.supervisor")

# Start order; stop order is the reverse. Each service issue adds its line here.
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("metrics", lambda c: c.metrics.enabled, MetricsService),
    # Before DHCP (and stopped after it): the leases DHCP reclaims as it starts, and those that
    # end as it stops, reach the collectors too.
    ServiceSpec("accounting_feed", lambda c: bool(c.accounting_feed.collectors), AccountingFeed),
    ServiceSpec("dhcp", lambda c: c.dhcp.enabled, DHCPService),
    ServiceSpec("dhcp6", lambda c: c.dhcp6.enabled, DHCP6Service),
    ServiceSpec("dns", lambda c: c.dns.enabled, DNSService),
    ServiceSpec("radius", lambda c: c.radius.enabled, RadiusService, lambda c: c.radius.own_process),
    ServiceSpec("mail", lambda c: c.mail.enabled, MailService),
    ServiceSpec("admin", lambda c: c.admin.socket_path(c.daemon.control_socket) is not None or bool(c.admin.listen),
                AdminService),
)

STORE_PING_TIMEOUT_SECONDS = 2.0

# While a migration runs: ask systemd for this much more start time, this often. The extension
# outlasts several intervals, so a busy moment of the loop cannot let the start time run out.
MIGRATION_EXTEND_SECONDS = 30.0
MIGRATION_EXTEND_INTERVAL_SECONDS = 10.0
HISTORY_PURGE_INTERVAL_SECONDS = 3600.0
CERTIFICATE_CHECK_INTERVAL_SECONDS = 86400.0  # (and at start and each reload)
# How often a PostgreSQL store's daemon lock is checked (a restarted server has dropped it; a
# standby may have taken it). Often: until then a daemon that lost it still answers clients.
DAEMON_LOCK_CHECK_SECONDS = 1.0
# How often a standby looks at the lock: about the longest a takeover waits once it is free.
STANDBY_POLL_SECONDS = 1.0
# How long a standby leaves a lock the server's restart freed to the daemon that held it.
RESTART_GRACE_SECONDS = 5 * DAEMON_LOCK_CHECK_SECONDS
# Below this many descriptors a busy resolver runs out (each upstream query in flight holds a
# socket; client TCP, DoT, SMTP and IMAP connections one each): ispd warns at start.
OPEN_FILES_WANTED = 16384
# The soft limit cannot go past the kernel's fs.nr_open (1,048,576 by default), even when the
# hard limit is unlimited.
OPEN_FILES_CEILING = 1 << 20


def raise_open_files_limit() -> int:
    """The soft limit of open files raised to the hard one, as Unbound and nginx do: shells and
    systemd (outside a unit's LimitNOFILE=) start daemons at 1,024, which a resolver's upstream
    sockets exhaust under a flood of slow names. ispd waits with epoll, never select(), so a
    high limit costs nothing. Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_CEILING if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_CEILING)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):  # above fs.nr_open: keep what we were given
        return soft
    return wanted


@dataclass(slots=True)
class _Running:
    service: Service
    stack: AsyncExitStack = field(default_factory=AsyncExitStack)


class Supervisor:
    def __init__(self, config_path: Path, config: Config, notifier: Notifier | None = None) -> None:
        self.config_path, self.config = config_path, config
        self.notifier = notifier if notifier is not None else Notifier()
        self.running: dict[str, _Running] = {}
        self._stop_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reload_outcome = ""  # what of the last reload did not apply, for its STATUS=
        # Each server certificate as it was when its service last loaded it (at start, at each
        # reload the service took): what the expiry warnings and metric speak of, not the file as
        # it is now (a renewal written but not yet loaded, or one whose reload was refused).
        self._served_certificates: dict[Path, tuple[str, CertificateValidity | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._reloads: set[asyncio.Task[Any]] = set()  # under way or waiting for the one under way
        self.store: Store | None = None
        self.bus = EventBus()
        self.registry = CollectorRegistry(auto_describe=True)
        self.store_metrics = StoreMetrics(config.store.backend)
        self.context: ServiceContext | None = None
        self.commands = ControlCommands()
        self.control: ControlServer | None = None
        self.lock = daemon_lock_for(config.store)
        self.relay: AuditRelay | None = None
        self.ready = False
        self._reload_pending = False
        self._migrating: tuple[Migration, int, float] | None = None  # (step, target, its start)
        self._extended_at = -math.inf  # when EXTEND_TIMEOUT_USEC last went to systemd (monotonic)
        self._lock_lost = False
        # While waiting as a standby: what /healthz says (None once the store is ours).
        self._standby: tuple[bool, str] | None = None
        # Why a standby could not serve the store if it took it over now (None: it could).
        self._cannot_take_over: str | None = None
        self._watchdog_started = False
        self._relaying = False
        self.peers: PeerEventChannel | None = None
        self._standby_gauge = Gauge("ispd_daemon_standby", "1 while this daemon waits as a standby for the "
                                    "store another node's daemon holds, 0 once it serves", registry=self.registry)

    # --- lifecycle

    async def run(self) -> int:
        configure_logging(self.config.log, background=True)
        log.info("daemon.starting", version=__version__, config=str(self.config_path))
        open_files = raise_open_files_limit()
        if open_files < OPEN_FILES_WANTED:
            log.warning("daemon.open_files.low", limit=open_files, wanted=OPEN_FILES_WANTED,
                        hint="raise the hard limit: LimitNOFILE= in the unit, or ulimit -Hn before ispd run")
        _log_config_warnings(self.config)
        # Before anything slow (the store may wait for a lock): a TERM during start-up must stop
        # us cleanly, and a HUP must not kill us (its default action) but wait until we serve.
        self._install_signal_handlers()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)
        self.registry.register(self.store_metrics.collector())
        self.registry.register(FastCollector([self.bus.published, self.bus.handler_failures]))
        self.registry.register(CertificateExpiryCollector(self._certificates_served))
        try:
            starting = asyncio.ensure_future(self._start_up())
            stop_requested = asyncio.ensure_future(self._stop_requested.wait())
            await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                log.info("daemon.start.aborted")
                return 0
            if not starting.result():
                stop_requested.cancel()
                return 1
            self._start_watchdog()
            self._spawn(self._purge_history_periodically())
            self._note_certificates_served()
            self._warn_of_certificates()
            self._spawn(self._check_certificates_periodically())
            if self.config.store.backend == "postgresql":
                self._spawn(self._keep_daemon_lock())
            self.ready = True
            self.notifier.ready(self._status_line())
            log.info("daemon.ready", services=sorted(self.running))
            if self._reload_pending:
                self._spawn_reload()
            await stop_requested
            stop_started = time.monotonic()
            await self._end_reloads()
            # One grace for the whole stop: a reload slow to unwind, then the services' drain
            # with a grace of their own, took up to twice what systemd was told (TimeoutStopSec).
            code = await self._shutdown(spent=time.monotonic() - stop_started)
            return 1 if self._lock_lost else code
        finally:
            await self._close_all()

    async def _start_up(self) -> bool:
        """Open the control socket and the store and start every enabled service; False (logged)
        when something could not."""
        if not await self._hold_the_store():
            return False
        served_while_standing_by = self.store is not None
        if not await self._open_the_store():
            return False
        if served_while_standing_by and not await self._schema_still_known():
            return False
        try:
            await self._start_peers()
        except StoreError as exc:
            log.error("daemon.start.failed", error=str(exc))
            return False
        if self._standby is not None:  # taken over: a standby no more
            self._standby = None
            self._standby_gauge.set(0)
        if served_while_standing_by:
            # What the previous active daemon had queued for this node when it died or stopped
            # never came: what was served meanwhile reads leases and sessions from the store.
            self.bus.publish(PeerEventsMissed(at=time.time()))
        try:
            for spec in SERVICES:
                if spec.enabled(self.config) and spec.name not in self.running:
                    await self._start_service(spec, self.config)
        except ServiceStartError as exc:
            log.error("daemon.start.failed", error=str(exc))
            return False
        await self._start_relay()
        return True

    async def _open_control(self) -> bool:
        """The control socket, unless open already (a standby opens it as it stands by, so that a
        command sent to it is told who serves); False (logged) when it cannot be."""
        if self.control is None and self.config.daemon.control_socket is not None:
            control = ControlServer(self.config.daemon.control_socket, self.commands)
            try:
                await control.start()
            except ControlSocketError as exc:
                log.error("daemon.start.failed", error=str(exc))
                return False
            self.control = control
        return True

    async def _open_the_store(self, *, migrate: bool = True) -> bool:
        """The control socket, the store (migrated), the audit relay's mark, the channel to the
        other nodes, the services' context: what is not open yet (a standby that serves opened
        them). False (logged) when something could not; MigrationStopped when the store needs a
        migration and ``migrate`` is false."""
        if not await self._open_control():
            return False
        if self.store is not None:
            return True
        extending = asyncio.ensure_future(self._extend_start_while_migrating())
        try:
            store = await open_store(self.config.store, self.store_metrics,
                                     migration_starting=self._migration_starting if migrate else _not_migrating)
        except StoreError as exc:
            if not migrate:  # a standby's: it may wait without serving
                raise
            log.error("daemon.start.failed", error=str(exc))
            return False
        finally:
            extending.cancel()
            self._migrating = None
        self.store = store
        self.relay = AuditRelay(store, self.bus, self.config.daemon.store_poll_interval_seconds)
        try:
            await self.relay.mark()
        except StoreError as exc:
            log.error("daemon.start.failed", error=str(exc))
            return False
        if self.context is None:
            self.context = self._service_context(store)
        else:  # a standby's: its metrics listener has served from it meanwhile
            self.context.store = store
        return True

    async def _start_peers(self) -> None:
        """The channel that carries leases' and sessions' events between the nodes of a pair."""
        if self.config.daemon.standby and self.peers is None:
            from ispd.store.postgresql_events import PeerEventChannel

            peers = PeerEventChannel(self.config.store, self.bus)
            await peers.start()
            self.peers = peers

    async def _schema_still_known(self) -> bool:
        """The store a standby opened unmigrated may have been migrated since by a newer ispd
        (``ispd store migrate`` run against the advice): this one refuses to serve it, as at a start."""
        assert self.store is not None
        try:
            await self.store.check_schema()
        except StoreError as exc:
            log.error("daemon.start.failed", error=str(exc))
            return False
        return True

    async def _start_relay(self) -> None:
        if self.relay is not None and not self._relaying:
            await self.relay.start()
            self._relaying = True

    def _service_context(self, store: Store | None) -> ServiceContext:
        # A standby's metrics listener gets its context before the store is open: it never
        # touches the store, and the store is set in before any other service starts.
        return ServiceContext(store, self.bus, self.registry, self.health_report,  # type: ignore[arg-type]
                              control=self.commands, config_path=self.config_path)

    async def _hold_the_store(self) -> bool:
        """Take the daemon lock, or with ``daemon.standby`` wait until it can be taken; False
        (logged) when it cannot be had."""
        try:
            self.lock.acquire()
            self._note_unclean_stop()
            return True
        except DaemonLockError as exc:
            # A standby's start took the file lock before the database refused its lock, and
            # emptied the file as it let go: what it found there is said now or never.
            self._note_unclean_stop()
            if not (exc.in_use and self.config.daemon.standby):
                log.error("daemon.start.failed", error=str(exc))
                return False
            holder = exc.holder or "another ispd"
        try:
            return await self._stand_by(holder)
        except BaseException:
            self._standby = None
            self.commands.standby_for = None
            raise

    def _note_unclean_stop(self) -> None:
        previous = self.lock.previous_holder
        if previous is not None:
            # Its lock file still names it: it did not stop (a kill -9, a crash, a power cut).
            log.warning("daemon.unclean_stop_found", previous_pid=previous, lock=str(self.lock.path),
                        hint="the last ispd on this store (or an admin command holding its lock) ended without "
                             "stopping; what it had acknowledged is in the store, check its log for why it ended")

    async def _stand_by(self, holder: str) -> bool:
        """Serve metrics and /healthz, and take the lock once the active daemon has let it go (it
        stopped, or the server closed its connection: it died, or its host did). False (logged)
        when the metrics listener cannot start."""
        from ispd.store.postgresql import PostgresDaemonLock, describe

        lock = self.lock
        assert isinstance(lock, PostgresDaemonLock)  # daemon.standby is for a PostgreSQL store

        def standing_by(by: str) -> None:
            if self._standby is not None and not self._standby[0]:
                log.info("daemon.standby.store_reachable", holder=by)
            detail = f"standby: {by} holds the store"
            if self._standby is not None and self._standby[1] != detail:  # another holder, or reachable again
                self.notifier.status(f"{detail}; taking over when it stops")
            self._standby = (True, detail)
            self.commands.standby_for = by

        standing_by(holder)
        self._standby_gauge.set(1)
        log.info("daemon.standby", holder=holder, store=describe(self.config.store))
        self.context = self._service_context(None)
        if not await self._open_control() or not await self._serve_while_standing_by():
            return False
        self.notifier.ready(f"standby: {holder} holds the store; taking over when it stops")
        self._start_watchdog()
        grace = standby_grace_seconds(self.config)
        held_on: str | None = None  # the run of the server and probe connection the lock was last seen held on
        free_since: float | None = None
        while True:
            await asyncio.sleep(STANDBY_POLL_SECONDS)
            try:
                held, by, run = await asyncio.to_thread(lock.probe)
                self._note_takeover_possible(lock.cannot_take_over())
                if held:
                    holder, held_on, free_since = by or "another ispd", run, None
                    standing_by(holder)
                    continue
                if run != held_on:
                    # Every session ended since the lock was seen held (a server restart, a
                    # backend's crash), the holder's too, whose keeper takes it again within
                    # DAEMON_LOCK_CHECK_SECONDS: that is no failover, the holder gets its turn
                    # first. (Or the lock was never seen held by this probe: the same care.)
                    free_since = time.monotonic() if free_since is None else free_since
                    if time.monotonic() - free_since < grace:
                        continue
                await asyncio.to_thread(lock.acquire)
            except DaemonLockError as exc:
                if exc.in_use:  # taken between the look and the try
                    holder = exc.holder or "another ispd"
                    standing_by(holder)
                elif self._standby is None or self._standby[0]:
                    log.warning("daemon.standby.store_unreachable", error=str(exc))
                    self._standby = (False, f"standby, but the store cannot be reached: {exc}")
                    self.notifier.status(self._standby[1])
                continue
            log.warning("daemon.takeover", previous=holder, store=describe(self.config.store))
            self.commands.standby_for = None
            self._standby = (False, f"taking over the store from {holder}")
            self.notifier.status(self._standby[1])
            return True

    def _note_takeover_possible(self, reason: str | None) -> None:
        """A standby that would fail its takeover (the store's schema is newer than this ispd
        knows) is no standby: /healthz says so, and the log once, rather than "ok" until the day
        the active node dies and nothing serves."""
        if reason == self._cannot_take_over:
            return
        if reason is not None:
            log.error("daemon.standby.cannot_take_over", reason=reason)
        else:
            log.info("daemon.standby.can_take_over")
        self._cannot_take_over = reason

    async def _serve_while_standing_by(self) -> bool:
        """Metrics, and what ``daemon.standby_serves`` names (with the store open, unmigrated);
        False (logged) when one cannot start."""
        serves = {"metrics", *self.config.daemon.standby_serves}
        wanted = [spec for spec in SERVICES if spec.enabled(self.config) and spec.name in serves]
        if any(spec.name != "metrics" for spec in wanted):
            try:
                if not await self._open_the_store(migrate=False):
                    return False
                await self._start_peers()
            except MigrationStopped as stopped:  # not under the active daemon, whose code is older
                log.warning("daemon.standby.serving_nothing", reason=f"the store needs a migration ({stopped}): "
                            "this ispd is newer than the active one, and migrates it when it takes over")
                wanted = [spec for spec in wanted if spec.name == "metrics"]
            except StoreError as exc:  # a newer schema than this ispd knows, the server away: wait all the same
                log.warning("daemon.standby.serving_nothing", reason=str(exc))
                wanted = [spec for spec in wanted if spec.name == "metrics"]
        try:
            for spec in wanted:
                await self._start_service(spec, self.config)
        except ServiceStartError as exc:  # the daemon would fail its start on it anyway
            log.error("daemon.start.failed", error=str(exc))
            return False
        await self._start_relay()
        if any(spec.name != "metrics" for spec in wanted):
            log.info("daemon.standby.serving", services=[spec.name for spec in wanted])
        return True

    def _migration_starting(self, step: Migration, target: int) -> None:
        """Called in the store's thread as each migration begins. Once a stop is asked for, no
        further step begins (the one under way is left to finish: killed, it would only be
        rolled back): systemd's stop timeout is not to be stretched by the upgrade's rest."""
        if self._stop_requested.is_set():
            raise MigrationStopped(step)
        self._migrating = (step, target, time.monotonic())
        # A new store runs a dozen quick steps in a row: one message says it for all of them
        # (a long step gets the periodic ones). A message a step filled the notify socket's
        # queue (10 datagrams by default) faster than its reader drained it, and the start
        # blocked on the next send.
        if time.monotonic() - self._extended_at >= MIGRATION_EXTEND_INTERVAL_SECONDS:
            self._extend_start()

    def _extend_start(self) -> None:
        if self._migrating is None or self._stop_requested.is_set():
            return  # (while stopping, EXTEND_TIMEOUT_USEC would stretch the stop timeout)
        step, target, began = self._migrating
        self._extended_at = time.monotonic()
        status = (f"migrating the store to schema {target}: {step.version} {step.name}, "
                  f"running for {time.monotonic() - began:.0f} s")
        self.notifier.notify(f"EXTEND_TIMEOUT_USEC={int(MIGRATION_EXTEND_SECONDS * 1_000_000)}", f"STATUS={status}")

    async def _extend_start_while_migrating(self) -> None:
        # On the loop, which turns while the migration runs in the store's thread.
        while True:
            await asyncio.sleep(MIGRATION_EXTEND_INTERVAL_SECONDS)
            self._extend_start()

    async def _start_service(self, spec: ServiceSpec, config: Config) -> None:
        assert self.context is not None
        service: Service
        if spec.own_process(config):
            service = WorkerService(spec, config, self.context, self.config_path)
        else:
            service = spec.build(config, self.context)
        entry = _Running(service)
        try:
            await service.start(entry.stack)
        except BaseException:
            await entry.stack.aclose()
            raise
        self.running[spec.name] = entry

    async def _shutdown(self, spent: float = 0.0) -> int:
        """Stop the services within what is left of the grace (``spent`` on the reloads cut short)."""
        self.notifier.stopping()
        full_grace = self.config.daemon.shutdown_grace_seconds
        grace = max(0.0, full_grace - spent)
        log.info("daemon.stopping", grace_seconds=full_grace)
        started = time.monotonic()
        if self.relay is not None:
            await self.relay.stop()
        stops = [asyncio.ensure_future(entry.service.stop()) for entry in reversed(self.running.values())]
        done, pending = await asyncio.wait(stops, timeout=grace) if stops else (set(), set())
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("daemon.stop.service_failed", exc_info=task.exception())
        # Handlers still reacting to events get what is left of the grace, no more.
        drained = await self.bus.drain(max(0.0, grace - (time.monotonic() - started)))
        if pending or not drained:
            log.error("daemon.stop.grace_exceeded", grace_seconds=full_grace, unfinished_services=len(pending),
                      unfinished_handlers=not drained)
            return 1
        log.info("daemon.stopped", seconds=round(time.monotonic() - started, 3))
        return 0

    async def _close_all(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
        for task in self._background:
            task.cancel()
        for name in reversed(list(self.running)):
            await self.running.pop(name).stack.aclose()
        if self.peers is not None:
            await self.peers.stop()
        if self.control is not None:
            await self.control.close()
        await self.bus.drain(0)
        if self.store is not None:
            await self.store.close()
        self.lock.release()  # last: the store is closed, another daemon may open it now
        self.notifier.close()

    def request_stop(self) -> None:
        self._stop_requested.set()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._hangup)
        # ispd.entry held these back while the modules loaded; any that came meanwhile are
        # handled now, by the handlers above.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)

    def _hangup(self) -> None:
        if self._stop_requested.is_set():
            return  # stopping: no reload, and never a READY=1 after STOPPING=1
        if not self.ready:
            self._reload_pending = True  # applied once serving
            return
        self._spawn_reload()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _spawn_reload(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _end_reloads(self) -> None:
        """A stop cuts short the reloads under way (a service slow to take its change, a worker
        starting) and waits for them to unwind before the services stop: left running, one went on
        beside the shutdown and, cancelled as the services closed, sent READY=1 after STOPPING=1
        or died on a listener closed under it."""
        reloads = list(self._reloads)
        for task in reloads:
            task.cancel()
        if reloads:  # (bounded: one that ignored its cancellation must not hold the stop up)
            await asyncio.wait(reloads, timeout=self.config.daemon.shutdown_grace_seconds)

    def _start_watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None or self._watchdog_started:
            return
        self._watchdog_started = True

        async def pet() -> None:
            while True:
                # A dead store writer means no promise can be kept: let systemd restart us. A
                # standby (and one taking over) has no store yet: its loop turning is all there is.
                if self.store is None or self.store.writer_alive():
                    self.notifier.watchdog()
                await asyncio.sleep(interval)

        self._spawn(pet())

    async def _keep_daemon_lock(self) -> None:
        """A PostgreSQL store's daemon lock lives on a connection, which a server restart or a
        failover ends: take the lock again. If another daemon took it meanwhile, stop (exit 1)
        rather than answer clients beside it."""
        unchecked = False
        while True:
            await asyncio.sleep(DAEMON_LOCK_CHECK_SECONDS)
            try:
                taken_again = await asyncio.to_thread(self.lock.keep)
            except DaemonLockError as exc:
                if exc.in_use:
                    log.error("daemon.lock.lost", error=str(exc))
                    self._lock_lost = True
                    self.request_stop()
                    return
                if not unchecked:  # the server is away: try again, and say so once
                    log.warning("daemon.lock.unchecked", error=str(exc))
                unchecked = True
            else:
                unchecked = False
                if taken_again:
                    log.warning("daemon.lock.retaken", detail="the store's server closed the lock's connection")

    async def _purge_history_periodically(self) -> None:
        assert self.store is not None
        while True:
            # The first an hour after the start, not at once: a host that boots with its clock
            # ahead (a battery-less RTC set wrong, a local-time RTC) would delete every row
            # younger than the step before NTP has set the clock right, billing data included.
            await asyncio.sleep(HISTORY_PURGE_INTERVAL_SECONDS)
            days = self.config.store.history_retention_days
            try:
                deleted = await self.store.purge_history(time.time() - days * 86400)
            except StoreError as exc:
                log.warning("store.history.purge_failed", error=str(exc))
            else:
                if any(deleted.values()):
                    log.info("store.history.purged", retention_days=days, **deleted)

    async def _check_certificates_periodically(self) -> None:
        while True:
            await asyncio.sleep(CERTIFICATE_CHECK_INTERVAL_SECONDS)
            self._warn_of_certificates()

    def _note_certificates_served(self, refused: list[str] | None = None) -> None:
        """Read each service's certificate file as the service has just loaded it; the
        ``refused`` services kept what they had, and so does their entry here."""
        # A file two services serve with (DoT's and mail's, one certificate for the host) is
        # entry of the first only; one that refused the reload still serves what the file held
        # before, whichever service it is: the entry keeps that, under its name.
        kept = {path: key for key, path in self.config.certificates(every=True)
                if refused and key.split(".")[0] in refused}
        served = {}
        for key, path in self.config.certificates():
            known = self._served_certificates.get(path)
            if path in kept and known is not None:
                served[path] = (kept[path], known[1])
            else:
                served[path] = (key, certificate_validity(path))
        self._served_certificates = served

    def _certificates_served(self) -> list[tuple[str, CertificateValidity]]:
        return [(key, validity) for key, validity in self._served_certificates.values() if validity is not None]

    def _warn_of_certificates(self) -> None:
        """A certificate a service serves with that has expired, is not valid yet or expires
        soon: every client that checks it would fail, and nothing else says so."""
        now = time.time()
        for key, validity in self._certificates_served():
            problem = validity.problem(now)
            if problem is not None:
                log.warning("tls.certificate.expiring", service=key, certificate=validity.path, problem=problem)

    def _status_line(self) -> str:
        return "serving: " + ", ".join(e.service.describe() for e in self.running.values()) if self.running \
            else "serving: no services enabled"

    # --- reload

    async def reload(self) -> bool:
        """Re-read the config file and apply it; False when it was rejected (or we are stopping)."""
        async with self._reload_lock:
            if self._stop_requested.is_set():
                return False
            self.notifier.reloading(time.monotonic_ns() // 1000)
            # What systemctl status shows after the reload: a STATUS= of its own was replaced by
            # READY=1's at once, so a rejected or partly refused reload left no trace there.
            self._reload_outcome = "reload failed (config.reload.failed in the log)"
            try:
                return await self._apply_reload()
            except Exception:  # a case nobody foresaw: logged, not lost in a task nobody awaits
                log.exception("config.reload.failed")
                return False
            finally:
                # Never a READY=1 after STOPPING=1: a stop cuts a reload short (_end_reloads).
                if not self._stop_requested.is_set():
                    outcome = self._reload_outcome
                    self.notifier.ready(f"{outcome}; {self._status_line()}" if outcome else self._status_line())

    async def _apply_reload(self) -> bool:
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config.reload.rejected", error=str(exc))
            self._reload_outcome = "reload rejected: config invalid, running on the previous one"
            return False
        old = self.config
        configure_logging(new.log, background=True)
        if self.relay is not None:
            self.relay.poll_interval = new.daemon.store_poll_interval_seconds
        applied = new
        # Listed in config.reloaded's refused as a service's refusal is: an operator who watches
        # for that warning learns that the change waits for a restart.
        refused = []
        if new.store != old.store:
            log.warning("config.reload.restart_needed", section="store",
                        detail="[store] changes apply at the next restart: the daemon runs on the store it opened")
            applied = applied.model_copy(update={"store": old.store})
            refused.append("store")
        if new.daemon.control_socket != old.daemon.control_socket:
            log.warning("config.reload.restart_needed", section="daemon", key="control_socket",
                        detail="a new control_socket applies at the next restart: the old one still answers")
            daemon = new.daemon.model_copy(update={"control_socket": old.daemon.control_socket})
            applied = applied.model_copy(update={"daemon": daemon})
            refused.append("daemon.control_socket")
        # What the services get: the new config but for what needs a restart (a worker is handed
        # it, and must not open another store when it restarts).
        pinned = applied
        for spec in SERVICES:
            entry, wanted = self.running.get(spec.name), spec.enabled(new)
            try:
                if entry is not None and wanted and isinstance(entry.service, WorkerService) != spec.own_process(new):
                    raise ServiceStartError(f"{spec.name}: moving it into or out of a process of its own "
                                            "needs a restart")
                if entry is not None and wanted:
                    await entry.service.reload(old, pinned)
                elif entry is not None:
                    await entry.service.stop()
                    await self.running.pop(spec.name).stack.aclose()
                elif wanted:
                    await self._start_service(spec, pinned)
            except Exception as exc:  # one service refusing its change (or failing) must not stop the others
                log.error("config.reload.service_refused", service=spec.name, error=str(exc),
                          exc_info=not isinstance(exc, ServiceStartError))
                applied = applied.model_copy(update={spec.name: getattr(old, spec.name)})
                refused.append(spec.name)
        self.config = applied
        self._reload_outcome = f"reload not applied to {', '.join(refused)} (config.reloaded in the log)" \
            if refused else ""
        if refused:  # applied to the rest: those run as they were
            log.warning("config.reloaded", config=str(self.config_path), refused=refused)
        else:
            log.info("config.reloaded", config=str(self.config_path))
        _log_config_warnings(applied)
        self._note_certificates_served(refused)
        self._warn_of_certificates()  # (a renewal is what a reload usually brings)
        return True

    # --- health

    async def health_report(self) -> tuple[bool, dict[str, Any]]:
        report: dict[str, Any] = {}
        if self._standby is not None:
            ok, detail = self._standby
            if ok and self._cannot_take_over is not None:
                ok, detail = False, f"{detail}, but this ispd cannot take it over: {self._cannot_take_over}"
            report["daemon"] = {"ok": ok, "detail": detail}
            if self.store is None:
                return ok, report
        if self.store is None:  # (a standby taking over opens it)
            report["store"] = {"ok": False, "detail": "not open yet"}
            return False, report
        store_ok, detail = True, ""
        try:
            await asyncio.wait_for(self.store.ping(), STORE_PING_TIMEOUT_SECONDS)
            if not self.store.writer_alive():
                store_ok, detail = False, "the store writer has stopped"
            elif self.store.commits_failing() is not None:
                # The last write failed, maybe long ago (the database server is back, and no
                # client wrote since: /healthz said failing until one did): write once now.
                with contextlib.suppress(StoreError, TimeoutError):
                    await asyncio.wait_for(self.store.check_writes(), STORE_PING_TIMEOUT_SECONDS)
                if (failing := self.store.commits_failing()) is not None:
                    # Reads still work on a full disk: without this, /healthz said ok while no
                    # lease, no accounting and no mail could be recorded.
                    store_ok, detail = False, f"writes are failing: {failing}"
        except (StoreError, TimeoutError) as exc:
            store_ok, detail = False, str(exc) or "the store did not answer in time"
        report["store"] = {"ok": store_ok, "detail": detail}
        for name, entry in self.running.items():
            health = entry.service.health()
            report[name] = {"ok": health.ok, "detail": health.detail}
        return all(item["ok"] for item in report.values()), report


def standby_grace_seconds(config: Config) -> float:
    """How long a standby leaves a lock freed with every session to its holder's keeper, which
    must reach the server again first: a new connection waits up to its connect timeout (the
    url's own, when it gives one, each of its hosts in turn)."""
    from ispd.store.postgresql import url_connect_seconds

    connecting = max(config.store.busy_timeout_seconds, url_connect_seconds(config.store) or 0.0)
    return max(RESTART_GRACE_SECONDS, connecting + 2 * DAEMON_LOCK_CHECK_SECONDS)


def _not_migrating(step: Migration, target: int) -> None:
    """A standby's ``migration_starting``: the store is the active daemon's to migrate."""
    raise MigrationStopped(step)


def run_service_worker(name: str, config_path: Path, config: Config, control_path: Path, ready_fd: int,
                       parent_pid: int, instance: int = 1, snapshot: Path | None = None,
                       handed_files: Path | None = None, audit_from: int | None = None) -> int:
    """``ispd worker NAME``: the service the supervisor runs in a process of its own."""
    from ispd.workers import run_worker

    spec = next((s for s in SERVICES if s.name == name), None)
    if spec is None:
        raise SystemExit(f"ispd worker: no service named {name!r}")
    if instance < 1:
        raise SystemExit(f"ispd worker: --instance must be 1 or more, not {instance}")
    collect_rarely()
    return run_worker(spec, config_path, config, control_path, ready_fd, parent_pid, instance, snapshot,
                      handed_files, audit_from)


def run_daemon(config_path: Path, config: Config) -> int:
    """``ispd run``: serve until told to stop; the exit code for the process."""
    import uvloop

    collect_rarely()
    return uvloop.run(Supervisor(config_path, config).run())


def _log_config_warnings(config: Config) -> None:
    """The config's warnings (``Config.warnings``), at each start and reload: logged here once,
    in the main process, for every service, wherever it runs."""
    for warning in config.warnings():
        log.warning(warning.event, detail=warning.detail)
