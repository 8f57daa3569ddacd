"""RADIUS requests per second: ispd against FreeRADIUS 3.2, under the same load.

Every server runs alone on 127.0.0.1 with an auth and an acct port of its own, knows the same
1 000 users (user0000 .. user0999, one password) and one client, 127.0.0.0/8, with one secret:

- ispd: its [radius] service as configured below (ISPD_CONFIG), the users made in its store
  before the start with ispd's store API (a plan "bench" and one subscriber each, credential
  policy cleartext, so PAP needs no scrypt); its store is SQLite in WAL mode with
  synchronous=FULL, so an Accounting-Response follows an fsync (group commit);
- freeradius: Debian's package with a private config (tests/lab/freeradius.py), 4 threads per core, users
  file (the files module, in memory) for PAP, the detail file for accounting (appended with
  write(), no fsync: that survives a crash of the server, not of the machine);
- freeradius-sql: the same with rlm_sql and its sqlite driver (Debian's schema and queries):
  radcheck (and the group tables, as stock) for PAP, radacct for accounting, the database in WAL
  mode with synchronous FULL (SQLite's default), like ispd's store.

bench/radload.py drives each through five workloads, each on a fresh server:

- PAP: Access-Requests for the 1 000 users in turn, each with a fresh authenticator and a
  Message-Authenticator, --window of them in flight, for --duration seconds;
- accounting: Accounting-Request Start for a new Acct-Session-Id, and its Stop once the Start is
  answered, --window in flight;
- Status-Server (RFC 5997) to the auth port, --window in flight; the answer is Access-Accept;
- latency: PAP at a fixed 2 000 requests/s; p50, p99 and maximum delay of the replies;
- burst: 1 000 PAP requests built first, then sent at once; how many are answered.

"req/s" counts replies whose Response Authenticator (and Message-Authenticator, if any) verified;
"lost" the requests without one within 3 s; "cpu" the share of one core the server used during
the run (all its threads and processes); "radload" the generator's own CPU. On a machine with two
cores or more the server is pinned to all cores but the last and radload to the last, so the
generator does not steal the server's CPU; where radload's CPU nears 100 %, it limits the figure.
The targets of the issue are printed beside the figures. Needs root (taskset, and 4 MB socket
buffers beyond net.core.rmem_max for radload), freeradius and taskset. Every process started is
stopped at exit, also on an error, Ctrl-C or SIGTERM; the working directories go under --dir.

    .venv/bin/python bench/radius.py [--quick] [--duration 15] [--only ispd|freeradius|freeradius-sql|ispd-postgresql]
                                     [--window 256] [--repeat 1] [--no-pin] [--dir /var/tmp]
                                     [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    ISPD,
    ISPD_CONFIG_HEAD,
    BenchServer,
    IspdDaemon,
    ServerFailed,
    cpu_seconds,
    keep_or_remove,
    machine_summary,
    require,
    split_cpus,
    stop_all,
    stop_all_on_exit,
    udp_rcvbuf_errors,
)
from bench.radload import ACCESS_ACCEPT, ACCESS_REJECT, DEFAULT_PASSWORD, Report, bench_users, load  # noqa: E402
from tests.lab.dnshier import _death_signal  # noqa: E402
from tests.lab.freeradius import FREERADIUS, FreeRADIUS, sqlite_driver_available, status_server, version  # noqa: E402
from tests.lab.ports import free_tcp_port, free_udp_port  # noqa: E402
from tests.lab.postgresql import PostgresCluster  # noqa: E402

RADLOAD = REPO / "bench" / "radload.py"
SECRET = "bench-secret-0123"
USERS = 1000
LATENCY_RPS = 2000
BURST = 1000
TIMEOUT = 3.0  # radload --timeout: a request without a verified reply after this long is lost
WORKLOADS = ("PAP", "accounting", "Status-Server", "latency", "burst")

ISPD_CONFIG = ISPD_CONFIG_HEAD + """\
[radius]
enabled = true
listen_auth = ["127.0.0.1:{auth_port}"]
listen_acct = ["127.0.0.1:{acct_port}"]
[[radius.client]]
name = "bench"
address = "127.0.0.0/8"
secret = "{secret}"
"""


# --- the servers


class Server(BenchServer):
    def __init__(self, workdir: Path, cpus: str | None) -> None:
        self.workdir, self.cpus = workdir, cpus
        self.auth_port, self.acct_port = free_udp_port(), free_udp_port()

    def accounting_records(self) -> int | None:
        """Accounting requests the server has written down, where the bench can count them."""
        return None


class FreeRADIUSServer(Server):
    name, label = "freeradius", "freeradius"
    backend = "files"

    def __init__(self, workdir: Path, cpus: str | None) -> None:
        super().__init__(workdir, cpus)
        self.process = FreeRADIUS(workdir, users=bench_users(USERS), secret=SECRET, auth_port=self.auth_port,
                                  acct_port=self.acct_port, backend=self.backend, cpus=cpus,
                                  threads=freeradius_threads(cpus))

    def _start(self) -> None:
        self.process.start()

    def accounting_records(self) -> int | None:
        """Entries in the detail file (one per request)."""
        path = self.process.detail_path
        return path.read_bytes().count(b"\tAcct-Status-Type = ") if path.exists() else 0


class FreeRADIUSSQLServer(FreeRADIUSServer):
    name, label = "freeradius-sql", "freeradius-sql"
    backend = "sql"

    def accounting_records(self) -> int | None:
        """radacct rows (one per Start) plus the rows a Stop closed."""
        with sqlite3.connect(f"file:{self.process.db_path}?mode=ro", uri=True) as conn:
            rows, stopped = conn.execute("SELECT count(*), count(acctstoptime) FROM radacct").fetchone()
        return int(rows) + int(stopped)


class IspdServer(Server):
    name, label = "ispd", "ispd"
    seed: Path | None = None  # a store with the bench's plan and users, copied for each run

    def __init__(self, workdir: Path, cpus: str | None) -> None:
        super().__init__(workdir, cpus)
        self.process = IspdDaemon(workdir, cpus, preexec=_death_signal())

    def _start(self) -> None:
        assert self.seed is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        copy_store(self.seed, self.workdir)
        config = ISPD_CONFIG.format(workdir=self.workdir, metrics_port=free_tcp_port(), auth_port=self.auth_port,
                                    acct_port=self.acct_port, secret=SECRET)
        # RFC 5997: Status-Server to the auth port is answered with Access-Accept
        self.process.start(config, lambda: status_server("127.0.0.1", self.auth_port, SECRET, 0.2) == ACCESS_ACCEPT,
                           f"answer Status-Server on 127.0.0.1:{self.auth_port}")


class IspdPostgreSQLServer(IspdServer):
    """ispd with its store on PostgreSQL: a private cluster of the bench's (fsync on, under --dir,
    not pinned: it shares the machine), a fresh database for each run with the seed store copied
    in by ``ispd store copy-to-postgresql``'s code."""

    name, label = "ispd-postgresql", "ispd (PostgreSQL)"
    cluster: PostgresCluster | None = None

    def _start(self) -> None:
        from ispd.store import StoreConfig
        from ispd.store.postgresql_copy import copy_to_postgresql

        assert self.seed is not None and self.cluster is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.url = self.cluster.create_database()
        copy_to_postgresql(self.seed, StoreConfig(backend="postgresql", url=self.url, path=self.workdir / "ispd.db"))
        config = ISPD_CONFIG.format(workdir=self.workdir, metrics_port=free_tcp_port(), auth_port=self.auth_port,
                                    acct_port=self.acct_port, secret=SECRET)
        config = config.replace("[store]\n", f"[store]\nbackend = \"postgresql\"\nurl = \"{self.url}\"\n", 1)
        self.process.start(config, lambda: status_server("127.0.0.1", self.auth_port, SECRET, 0.2) == ACCESS_ACCEPT,
                           f"answer Status-Server on 127.0.0.1:{self.auth_port}")

    def accounting_records(self) -> int | None:
        import psycopg

        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) FROM accounting_records").fetchone()
        return int(row[0]) if row is not None else 0


def freeradius_threads(cpus: str | None) -> int:
    """4 worker threads (and SQL connections) per core of the server: on one core, 4 did best of
    1, 2, 4, 16 and 32 (16: 15 % fewer PAP and 20 % fewer accounting requests/s)."""
    cores = len(cpus.split(",")) if cpus is not None else len(os.sched_getaffinity(0))
    return 4 * cores


SERVERS: dict[str, type[Server]] = {"ispd": IspdServer, "freeradius": FreeRADIUSServer,
                                    "freeradius-sql": FreeRADIUSSQLServer, "ispd-postgresql": IspdPostgreSQLServer}
# Measured only when asked for (--only): not one of the targets' comparisons.
ON_REQUEST = {"ispd-postgresql"}


def copy_store(seed: Path, workdir: Path) -> None:
    """The seeded store (with its WAL, if any) as ``workdir``'s ispd.db, for a fresh run."""
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{seed}{suffix}").exists():
            shutil.copyfile(f"{seed}{suffix}", workdir / f"ispd.db{suffix}")


async def seed_ispd_store(path: Path, users: Sequence[tuple[str, str]]) -> None:
    """A plan and one subscriber per user in a new store at ``path``, through ispd's store API.
    The users share one password, so its credentials are derived once (scrypt: ~50 ms)."""
    from ispd.credentials import derive_credentials
    from ispd.logs import LogConfig, configure_logging
    from ispd.store import StoreConfig, open_store
    from ispd.store.models import CredentialPolicy

    configure_logging(LogConfig(level="warning"))
    passwords = {password for _, password in users}
    assert len(passwords) == 1, "one password for all, derived once"
    credentials = await asyncio.to_thread(derive_credentials, passwords.pop(), CredentialPolicy.CLEARTEXT,
                                          time.time())
    store = await open_store(StoreConfig(path=path))
    try:
        await store.add_plan("bench", actor="bench", credential_policy=CredentialPolicy.CLEARTEXT)
        # all at once: the store's group commit makes few transactions of them
        await asyncio.gather(*(store.add_subscriber(name, actor="bench", plan="bench", credentials=credentials)
                               for name, _ in users))
    finally:
        await store.close()


# --- one run


@dataclass
class Run:
    """One radload run against one server."""

    server: str
    workload: str
    sent: int = 0
    answered: int = 0
    lost: int = 0
    invalid: int = 0
    rejects: int = 0
    rps: float = 0.0
    avg_ms: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    seconds: float = 0.0
    server_cpu: float | None = None  # share of one core; None for the burst (too short to measure)
    radload_cpu: float = 0.0  # radload's own, during the run
    rcvbuf_drops: int = 0  # datagrams the kernel dropped at a full socket buffer (any socket) during the run
    stored: int | None = None  # accounting: requests the server wrote down (FreeRADIUS: detail entries, radacct)
    error: str | None = None

    @property
    def lost_percent(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0


def run_radload(server: Server, workload: str, *, duration: float, window: int, cpus: str | None) -> Run:
    kind, mode, port = {"PAP": ("pap", "saturate", server.auth_port),
                        "accounting": ("acct", "saturate", server.acct_port),
                        "Status-Server": ("status", "saturate", server.auth_port),
                        "latency": ("pap", "pace", server.auth_port),
                        "burst": ("pap", "burst", server.auth_port)}[workload]
    command = [sys.executable, str(RADLOAD), "--server", f"127.0.0.1:{port}", "--secret", SECRET, "--kind", kind,
               "--mode", mode, "--duration", f"{duration:g}", "--window", str(window), "--rate", str(LATENCY_RPS),
               "--burst", str(BURST), "--users", str(USERS), "--timeout", str(TIMEOUT)]
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out_path = server.workdir / f"radload-{workload}.out"
    drops_before, cpu_before = udp_rcvbuf_errors(), cpu_seconds(server.pid)
    with out_path.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        proc.wait(duration + TIMEOUT + 60)
    except subprocess.TimeoutExpired:
        raise ServerFailed(f"radload did not finish:\n{out_path.read_text(errors='replace')[-2000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    server_cpu = cpu_seconds(server.pid) - cpu_before
    text = out_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise ServerFailed(f"radload failed ({proc.returncode}):\n{text[-2000:]}")
    try:
        report = Report(**json.loads(text.splitlines()[-1]))
    except (ValueError, TypeError, IndexError):
        raise ServerFailed(f"could not read radload's report:\n{text[-2000:]}") from None
    run = Run(server.name, workload, **{f.name: getattr(report, f.name) for f in fields(Run)
                                        if hasattr(report, f.name) and f.name not in ("server", "workload")})
    run.radload_cpu = report.cpu
    if mode != "burst":  # the server's CPU ticks (10 ms) say nothing over a burst's few milliseconds
        run.server_cpu = server_cpu / max(report.seconds, 1e-9)
    run.rcvbuf_drops = udp_rcvbuf_errors() - drops_before
    if kind == "acct":
        run.stored = server.accounting_records()
    if not server.alive():
        raise ServerFailed(f"{server.label} exited during the run:\n{server.log_tail()}")
    return run


def check_answers(server: Server) -> None:
    """A known user with the right password is accepted and with a wrong one rejected, before
    the server is measured."""
    for password, expected in ((DEFAULT_PASSWORD, ACCESS_ACCEPT), ("not-the-password", ACCESS_REJECT)):
        report = load(("127.0.0.1", server.auth_port), SECRET, "pap", "burst", users=1, password=password,
                      sockets=1, timeout=2.0, burst=1)
        codes = {"Access-Accept": ACCESS_ACCEPT, "Access-Reject": ACCESS_REJECT}
        got = [codes.get(name, name) for name in report.codes]
        if got != [expected]:
            raise ServerFailed(f"{server.label} answered user0000's PAP request (password "
                               f"{'right' if expected == ACCESS_ACCEPT else 'wrong'}) with {report.codes or 'nothing'}"
                               f" ({report.invalid} replies did not verify):\n{server.log_tail()}")


def measure(kind: type[Server], root: Path, args: argparse.Namespace,
            cpus: tuple[str | None, str | None]) -> list[Run]:
    runs: list[Run] = []
    for workload in WORKLOADS:
        workdir = Path(tempfile.mkdtemp(prefix=f"{kind.name}-{workload}-", dir=root))
        server = kind(workdir, cpus[0])
        print(f"  {kind.label}: {workload} ...", end="", flush=True, file=sys.stderr)
        try:
            server.start()
            check_answers(server)
            run = run_radload(server, workload, duration=args.duration, window=args.window, cpus=cpus[1])
            cpu = f"cpu {100 * run.server_cpu:.0f} %, " if run.server_cpu is not None else ""
            print(f" {run.rps:,.0f} req/s, {run.answered:,}/{run.sent:,} answered, {run.lost_percent:.2f} % lost, "
                  f"{run.rejects} rejects, {run.invalid} invalid, {cpu}radload {100 * run.radload_cpu:.0f} %, "
                  f"p50/p99/max {run.p50_ms:.2f}/{run.p99_ms:.2f}/{run.max_ms:.1f} ms, {run.rcvbuf_drops:,} "
                  "datagrams dropped at full socket buffers"
                  + (f", {run.stored:,} stored" if run.stored is not None else ""), file=sys.stderr)
        except ServerFailed as exc:
            print(" failed", file=sys.stderr)
            run = Run(kind.name, workload, error=str(exc))
        finally:
            server.stop()
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
        runs.append(run)
        if run.error is not None and workload == WORKLOADS[0]:
            break  # it did not even start or answer: the other workloads would fail the same way
    return runs


def better(run: Run, than: Run) -> bool:
    if run.workload == "latency":
        return run.p99_ms < than.p99_ms
    if run.workload == "burst":
        return run.answered > than.answered
    return run.rps > than.rps


# --- the report


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[Run, Run | None], bool | None]  # (ispd, freeradius users-file) -> met, or None: unknown


def _ratio(at_least: float) -> Callable[[Run, Run | None], bool | None]:
    return lambda ispd, fr: None if fr is None or not fr.rps else ispd.rps / fr.rps >= at_least


TARGETS = {
    "PAP": Target(">= 1.0x", _ratio(1.0)),
    "accounting": Target(">= 1.5x", _ratio(1.5)),  # durable (fsync) against the detail file (no fsync)
    "Status-Server": Target(">= 1.0x", _ratio(1.0)),
    "latency": Target("p99 <= 2 ms", lambda ispd, fr: ispd.p99_ms <= 2.0),
    "burst": Target("no loss", lambda ispd, fr: ispd.answered == ispd.sent == BURST),
}


def fmt_run(run: Run | None, workload: str) -> str:
    if run is None:
        return f"{'':>16} {'':>6} {'':>4}"
    if run.error is not None:
        return f"{'failed':>16} {'':>6} {'':>4}"
    if workload == "latency":
        figure = f"{run.p50_ms:.2f}/{run.p99_ms:.2f}/{run.max_ms:.1f}"
    elif workload == "burst":
        figure = f"{run.answered:,}/{run.sent:,}"
    else:
        figure = f"{run.rps:,.0f}"
    cpu = f"{100 * run.server_cpu:.0f}%" if run.server_cpu is not None else "-"
    return f"{figure:>16} {run.lost_percent:>5.2f}% {cpu:>4}"


def print_table(names: list[str], results: dict[tuple[str, str], Run]) -> None:
    width = len(fmt_run(None, "PAP"))
    compare = "ispd" in names and "freeradius" in names
    head = f"{'workload':<14}  " + "  ".join(f"{SERVERS[n].label:-^{width}}" for n in names)
    sub = f"{'':<14}  " + "  ".join(f"{'figure':>16} {'lost':>6} {'cpu':>4}" for _ in names)
    if compare:
        head += f"  {'ispd/':>8}"
        sub += f"  {'fr':>8}"
    if "ispd" in names:
        head += f"  {'target':<20}"
        sub += f"  {'(ispd)':<20}"
    head += f"  {'radload':>7}"
    sub += f"  {'cpu':>7}"
    print(head)
    print(sub)
    for workload in WORKLOADS:
        runs = [results.get((n, workload)) for n in names]
        line = f"{workload:<14}  " + "  ".join(fmt_run(r, workload) for r in runs)
        ispd, fr = results.get(("ispd", workload)), results.get(("freeradius", workload))
        ok_ispd = ispd is not None and ispd.error is None
        ok_fr = fr is not None and fr.error is None
        if compare:
            ratio = ""
            if ok_ispd and ok_fr and workload == "latency" and fr.p99_ms:  # type: ignore[union-attr]
                ratio = f"p99 {ispd.p99_ms / fr.p99_ms:.2f}x"  # type: ignore[union-attr]
            elif ok_ispd and ok_fr and workload != "burst" and fr.rps:  # type: ignore[union-attr]
                ratio = f"{ispd.rps / fr.rps:.2f}x"  # type: ignore[union-attr]
            line += f"  {ratio:>8}"
        if "ispd" in names:
            target = TARGETS[workload]
            verdict = target.met(ispd, fr if ok_fr else None) if ok_ispd else None  # type: ignore[arg-type]
            line += f"  {target.text + ': ' + {True: 'met', False: 'MISSED', None: '?'}[verdict]:<20}"
        gen = max((r.radload_cpu for r in runs if r is not None and r.error is None), default=None)
        line += f"  {100 * gen:>6.0f}%" if gen is not None else ""
        print(line)
    print("figure: replies/s; latency: p50/p99/max ms at a fixed "
          f"{LATENCY_RPS:,} PAP requests/s; burst: answered/sent of {BURST:,} PAP requests sent at once")
    if compare:
        print("ispd/fr: against freeradius with the users file and the detail file (the targets' reference)")


def ispd_hint(error: str) -> str:
    if re.search(r": radius: unknown key", error):
        return "this ispd knows no [radius] section: its RADIUS service is not there yet"
    if re.search(r"radius[.\w\[\]]*: unknown key", error):
        return "this ispd does not know a [radius] key the bench writes (ISPD_CONFIG in bench/radius.py)"
    return ("the bench needs ispd's [radius] service answering Status-Server with Access-Accept and PAP on "
            "listen_auth, Accounting-Request on listen_acct, for the client 127.0.0.0/8")


# --- running it all


def preflight(names: list[str]) -> None:
    problems = []
    if "ispd" in names and not Path(ISPD).exists():
        problems.append(f"{ISPD} not found (run with the project's .venv/bin/python)")
    require("bench/radius.py", problems, ("taskset",) + ((FREERADIUS,) if any("freeradius" in n for n in names)
                                                         else ()))


def server_notes(names: list[str], args: argparse.Namespace, server_cpus: str | None) -> list[str]:
    notes = []
    if any(n.startswith("freeradius") for n in names):
        threads = freeradius_threads(server_cpus)
        notes.append(f"{version()}: {threads} threads, reject_delay 0, max_requests 1M, recv_buff 4 MB; users file "
                     "+ detail file (write, no fsync)"
                     + (f"; sql: rlm_sql_sqlite, {threads} connections, radcheck + radacct, WAL, synchronous FULL"
                        if "freeradius-sql" in names else ""))
    if "ispd" in names:
        notes.append("ispd: [radius] as in bench/radius.py ISPD_CONFIG; store SQLite, WAL, synchronous FULL, "
                     "group commit")
    if "ispd-postgresql" in names:
        notes.append("ispd (PostgreSQL): the same, its store on a private PostgreSQL cluster (fsync on, "
                     "synchronous_commit on, unix socket, not pinned: it shares both cores)")
    notes.append(f"radload: {args.duration:g} s per run, best of {args.repeat}, {args.window} requests in flight "
                 f"over 8 sockets, {USERS:,} users, {TIMEOUT:g} s timeout; fresh server per run")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15, help="seconds per run (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(SERVERS), help="measure one server only")
    parser.add_argument("--quick", action="store_true", help="5 s per run")
    parser.add_argument("--window", type=int, default=256,
                        help="requests in flight at saturation (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over every run; each keeps its best round (default: %(default)s)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin radload and the server to cores")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the working directories go: a real disk, for the fsyncs (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (configs, logs, output)")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.quick:
        args.duration, args.repeat = 5, 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 0 < args.window <= 2048:
        parser.error("--window must be 1 to 2048 (8 sockets of 256 identifiers)")
    names = [args.only] if args.only else [name for name in SERVERS if name not in ON_REQUEST]
    skipped = []
    if "freeradius-sql" in names and not sqlite_driver_available():
        names.remove("freeradius-sql")
        skipped.append("freeradius-sql skipped: rlm_sql_sqlite.so is not installed")
    preflight(names)

    cpus, pinning = split_cpus(args.no_pin, "server", "radload")

    stop_all_on_exit()

    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ispd-bench-radius-", dir=args.dir))
    results: dict[tuple[str, str], Run] = {}
    try:
        if "ispd" in names or "ispd-postgresql" in names:
            IspdServer.seed = root / "seed" / "ispd.db"
            IspdServer.seed.parent.mkdir()
            asyncio.run(seed_ispd_store(IspdServer.seed, bench_users(USERS)))
        if "ispd-postgresql" in names:
            root.chmod(0o755)  # the cluster runs as the postgres user when we are root
            IspdPostgreSQLServer.cluster = PostgresCluster(durable=True, parent=root).start()
        print(f"RADIUS: {' vs '.join(names)}, driven by bench/radload.py")
        load_avg = os.getloadavg()[0]
        print(f"machine: {machine_summary()}; {pinning}; load average {load_avg:.2f} at start"
              + (" (busy: expect noise)" if load_avg > 0.5 else ""))
        for note in server_notes(names, args, cpus[0]) + skipped:
            print(note)
        print()
        failed: dict[str, str] = {}
        # Rounds, each over every server in turn, so a burst of load from elsewhere on the machine
        # hits one round's run, not all of one server's; each run keeps its best round.
        for round_ in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"round {round_}/{args.repeat}", file=sys.stderr)
            for name in names:
                if name in failed:
                    continue
                for run in measure(SERVERS[name], root, args, cpus):
                    best = results.get((name, run.workload))
                    if run.error is not None:
                        failed.setdefault(name, run.error)
                        results.setdefault((name, run.workload), run)
                    elif best is None or best.error is not None or better(run, best):
                        results[(name, run.workload)] = run
        print()
        print_table(names, results)
        measured = [r for r in results.values() if r.error is None]
        if any(r.radload_cpu > 0.85 for r in measured if r.workload != "burst"):
            print("note: radload used more than 85 % of its core in some runs; there it limits the figures too")
        if any(r.rejects or r.invalid for r in measured if r.workload != "accounting"):
            print("note: some runs had Access-Rejects or replies that did not verify (see --json)")
        for r in measured:
            if r.stored is not None and r.stored < r.answered:
                print(f"note: {r.server} answered {r.answered:,} accounting requests but wrote {r.stored:,}")
        for name, error in failed.items():
            print(f"\n{SERVERS[name].label} failed:\n{error}")
            if name == "ispd":
                print(f"({ispd_hint(error)})")
        if args.json:
            args.json.write_text(json.dumps([{**asdict(r), "lost_percent": r.lost_percent}
                                             for r in results.values()], indent=1))
    finally:
        stop_all()
        if IspdPostgreSQLServer.cluster is not None:
            IspdPostgreSQLServer.cluster.stop()
        keep_or_remove(root, args.keep)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
