"""IMAP: operations per second and latency, ispd against Dovecot, on the same Maildir data.

Both serve one mailbox, u1@bench.example, on 127.0.0.1 (ports of their own): 143 with STARTTLS
and 993 with TLS, the same throwaway certificate (trustme's CA), the same password, and the same
INBOX: --messages messages of 2-20 KB (seeded, so every run has the same ones), written as the
same files with the same names (`,S=` and `,W=` sizes in them) into new/ of each side's Maildir
before the servers start; each side indexes them at the first SELECT, which the bench makes
(untimed) before the measured workloads.

- ispd: its [mail] service as in ISPD_CONFIG below, the subscriber u1 and its mailbox made with
  the CLI (`ispd subscriber add --password-stdin`, `ispd mailbox add`); no SPF/DKIM/DMARC checks,
  no connection rate limit, connection and session caps far above the load.
- dovecot: Debian's dovecot-imapd with a private dovecot.conf in the run's directory (the
  system's /etc/dovecot is never read), `dovecot -F`: imap only, ssl = required, a passwd-file
  passdb/userdb with the plain password, Maildir in the run's directory owned by `nobody` (its
  mail processes refuse root), mail_max_userip_connections raised above the load; everything else
  is Dovecot's default (imap-login in its high-security mode: one process per connection;
  --dovecot-setting adds lines, e.g. 'service imap-login { service_count = 0 }').

The load generator is this script: an asyncio IMAP client, pinned to the last core, the servers
to the others (on a machine with two cores or more); its CPU share is printed.

1. mixed loop over TLS (993): --sessions sessions, each logged in once, looping: SELECT INBOX;
   FETCH of a random range of 20 messages (FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM
   SUBJECT DATE)]); UID FETCH of one random message BODY.PEEK[]; STORE +FLAGS or -FLAGS
   (\\Flagged) on a random message; SEARCH UNSEEN. An operation is a command answered OK.
2. login storm over STARTTLS (143): --sessions clients, each looping: connect, greeting,
   STARTTLS, TLS handshake, LOGIN, LOGOUT. A login is a loop done with every answer OK; its
   latency is the whole loop's.

Each workload runs --seconds (after --warmup seconds not counted) on each server in turn; a
command answered NO or BAD is counted and its answer reported. With --repeat N the rounds run
N times and each run keeps its best rate (this VM's speed varies between runs). Needs root, taskset and dovecot
(tools/setup --bench; `apt-get install dovecot-imapd`). Every process started is stopped at
exit, also on an error, Ctrl-C or SIGTERM; the working directories go under --dir.

    .venv/bin/python bench/imap.py [--quick] [--seconds 20] [--warmup 2] [--sessions 16]
                                   [--messages 2000] [--only ispd|dovecot] [--repeat 1] [--no-pin]
                                   [--dovecot-setting 'name = value'] [--dir /var/tmp] [--keep]
                                   [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import random
import re
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from email.utils import formatdate
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
    greets,
    ispd_cli,
    keep_or_remove,
    machine_summary,
    require,
    split_cpus,
    stop_all,
    stop_all_on_exit,
)
from bench.mail import Daemon, tail  # noqa: E402
from tests.lab.certs import issue  # noqa: E402
from tests.lab.dnshier import _death_signal  # noqa: E402
from tests.lab.ports import free_tcp_port, free_udp_port  # noqa: E402

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOMAIN = "bench.example"
USER = f"u1@{DOMAIN}"
PASSWORD = "BenchPassw0rd42"
MAIL_USER = "nobody"  # Dovecot's mail processes run as this user: they refuse root
TLS_NAME = "localhost"
FIRST_TIME = 1_780_000_000  # the messages' names and modification times (INTERNALDATE)
FETCH_RANGE = 20

ISPD_CONFIG = ISPD_CONFIG_HEAD + """\
[mail]
enabled = true
domains = ["{domain}"]
hostname = "mx.{domain}"
maildir_root = "{maildir_root}"
queue_directory = "{workdir}/queue"
listen_mx = ["127.0.0.1:{mx_port}"]
listen_imap = ["127.0.0.1:{imap_port}"]
listen_imaps = ["127.0.0.1:{imaps_port}"]
certificate = "{certificate}"
private_key = "{private_key}"
max_connections = 10000
max_connections_per_client = 10000
max_connection_rate_per_client = 0
max_imap_sessions_per_mailbox = 10000
authentication_checks = false
# Whatever DNS lookup is left goes to a loopback port where nothing listens
resolver = "127.0.0.1:{dns_port}"
"""

DOVECOT_CONF = """\
instance_name = ispd-bench-imap-{imap_port}
base_dir = {workdir}/dovecot/run
state_dir = {workdir}/dovecot/state
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{certificate}
ssl_key = <{private_key}
log_path = {workdir}/dovecot/dovecot.log
default_internal_user = dovecot
default_login_user = dovenull
auth_mechanisms = plain
mail_location = maildir:{maildir_root}/%d/%n
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {workdir}/dovecot/users
}}
userdb {{
  driver = passwd-file
  args = {workdir}/dovecot/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
protocol imap {{
  mail_max_userip_connections = 10000
}}
"""


# --- the data


def make_messages(count: int) -> list[tuple[str, bytes]]:
    """``count`` messages of 2-20 KB with LF line ends, and their Maildir names (the same on both
    sides): seeded, so every run has the same."""
    rng = random.Random(42)
    words = ("network", "invoice", "router", "subscriber", "mailbox", "weekend", "fibre", "outage",
             "meeting", "report", "quota", "backup", "the", "and", "of", "to", "a", "in", "is", "for")
    messages = []
    for i in range(1, count + 1):
        target = rng.randint(2_000, 20_000)
        head = (f"Return-Path: <s{i % 97}@load.example>\n"
                f"From: Sender {i % 97} <s{i % 97}@load.example>\n"
                f"To: <{USER}>\n"
                f"Subject: bench message {i} {rng.choice(words)} {rng.choice(words)}\n"
                f"Date: {formatdate(FIRST_TIME + i * 60)}\n"
                f"Message-ID: <{i}.bench@load.example>\n"
                "MIME-Version: 1.0\n"
                "Content-Type: text/plain; charset=us-ascii\n\n")
        lines = [head]
        size = len(head)
        while size < target:
            line = " ".join(rng.choice(words) for _ in range(12)) + "\n"
            lines.append(line)
            size += len(line)
        data = "".join(lines).encode()
        crlf_size = len(data) + data.count(b"\n")
        name = f"{FIRST_TIME + i}.M{i}P4242.bench,S={len(data)},W={crlf_size}"
        messages.append((name, data))
    return messages


def write_maildir(maildir: Path, messages: list[tuple[str, bytes]], owner: pwd.struct_passwd | None) -> None:
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for i, (name, data) in enumerate(messages, 1):
        path = maildir / "new" / name
        path.write_bytes(data)
        os.utime(path, (FIRST_TIME + i * 60, FIRST_TIME + i * 60))
    if owner is not None:
        for directory, _, files in os.walk(maildir.parent.parent):
            os.chown(directory, owner.pw_uid, owner.pw_gid)
            for name in files:
                os.chown(os.path.join(directory, name), owner.pw_uid, owner.pw_gid)


# --- the servers


def imap_greets(port: int) -> bool:
    return greets(port, b"* OK")


class ImapServer(BenchServer):
    def __init__(self, workdir: Path, cpus: str | None, tls: tuple[Path, Path, Path],
                 messages: list[tuple[str, bytes]]) -> None:
        self.workdir, self.cpus, self.tls, self.messages = workdir, cpus, tls, messages
        self.imap_port, self.imaps_port = free_tcp_port(), free_tcp_port()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


class IspdImap(ImapServer):
    name, label = "ispd", "ispd"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.process = IspdDaemon(self.workdir, self.cpus, preexec=_death_signal())
        self.maildir_root = self.workdir / "mail"

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = ISPD_CONFIG.format(workdir=self.workdir, metrics_port=free_tcp_port(), domain=DOMAIN,
                                    maildir_root=self.maildir_root, mx_port=free_tcp_port(),
                                    imap_port=self.imap_port, imaps_port=self.imaps_port,
                                    certificate=self.tls[1], private_key=self.tls[2], dns_port=free_udp_port())
        path = self.workdir / "ispd.toml"
        path.write_text(config)
        ispd_cli(path, "subscriber", "add", "u1", "--password-stdin", stdin=PASSWORD + "\n")
        ispd_cli(path, "mailbox", "add", "u1", USER)
        write_maildir(self.maildir_root / DOMAIN / "u1", self.messages, None)
        self.process.start(config, lambda: imap_greets(self.imap_port),
                           f"greet on IMAP at 127.0.0.1:{self.imap_port}")


class DovecotProcess:
    """`dovecot -F` on the private config; ``proc`` is its master."""

    extra: tuple[str, ...] = ()  # --dovecot-setting lines

    def __init__(self, workdir: Path, cpus: str | None) -> None:
        self.workdir = workdir
        self.conf = workdir / "dovecot" / "dovecot.conf"
        self.daemon = Daemon([DOVECOT, "-F", "-c", str(self.conf)], workdir / "dovecot" / "dovecot.out", cpus)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.daemon.proc

    def stop(self) -> None:
        self.daemon.stop()

    def log_tail(self) -> str:
        return "\n".join(tail(p) for p in (self.daemon.output, self.workdir / "dovecot" / "dovecot.log"))


class DovecotImap(ImapServer):
    name, label = "dovecot", "Dovecot"
    process: DovecotProcess

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.process = DovecotProcess(self.workdir, self.cpus)
        self.maildir_root = self.workdir / "dovecot-mail"

    def _start(self) -> None:
        user = pwd.getpwnam(MAIL_USER)
        for sub in ("dovecot/run", "dovecot/state"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        # the mail processes run as nobody and open paths in here
        for directory in (self.workdir, self.workdir.parent):
            directory.chmod(directory.stat().st_mode | 0o005)
        closed = [d for d in self.workdir.parents[1:] if d.stat().st_mode & 0o001 == 0]
        if closed:
            raise ServerFailed(f"{closed[0]} is closed to other users (Dovecot's mail processes run as "
                               f"{MAIL_USER}): give --dir elsewhere")
        maildir = self.maildir_root / DOMAIN / "u1"
        write_maildir(maildir, self.messages, user)
        (self.workdir / "dovecot" / "users").write_text(
            f"{USER}:{{PLAIN}}{PASSWORD}:{user.pw_uid}:{user.pw_gid}::{maildir}::\n")
        values = {"workdir": self.workdir, "imap_port": self.imap_port, "imaps_port": self.imaps_port,
                  "certificate": self.tls[1], "private_key": self.tls[2], "maildir_root": self.maildir_root}
        self.process.conf.write_text(DOVECOT_CONF.format(**values)
                                     + "".join(f"{line}\n" for line in DovecotProcess.extra))
        self.process.daemon.start()
        deadline = time.monotonic() + 30
        while not imap_greets(self.imap_port):
            if not self.process.daemon.alive():
                raise ServerFailed(f"dovecot exited while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerFailed(f"dovecot did not greet on 127.0.0.1:{self.imap_port} within 30 s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def alive(self) -> bool:
        return self.process.daemon.alive()


SERVERS: dict[str, type[ImapServer]] = {"ispd": IspdImap, "dovecot": DovecotImap}


# --- the client


class ImapError(Exception):
    pass


LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Client:
    """One IMAP connection: ``command`` sends a line and reads up to its tagged answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tag = 0
        self.untagged: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext | None) -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=TLS_NAME if context is not None else None)
        client = cls(reader, writer)
        greeting = await client.line()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {greeting[:200]!r}")
        return client

    async def line(self) -> bytes:
        """One response line with its literals inlined."""
        line = await self.reader.readuntil(b"\r\n")
        while (m := LITERAL.search(line)) is not None:
            line += await self.reader.readexactly(int(m.group(1)))
            line += await self.reader.readuntil(b"\r\n")
        return line

    async def command(self, text: str) -> tuple[str, bytes]:
        """(OK/NO/BAD, the tagged line); the untagged lines are in ``untagged``."""
        self.tag += 1
        tag = b"a%d " % self.tag
        self.writer.write(tag + text.encode() + b"\r\n")
        self.untagged = []
        while True:
            line = await self.line()
            if line.startswith(tag):
                return line[len(tag):].split(b" ", 1)[0].decode(errors="replace"), line
            self.untagged.append(line)

    async def starttls(self, context: ssl.SSLContext) -> None:
        await self.writer.start_tls(context, server_hostname=TLS_NAME)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
            await asyncio.wait_for(self.writer.wait_closed(), 2)


@dataclass
class Stats:
    """What one workload counted on one server."""

    server: str
    workload: str
    ops: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    server_cpu: float = 0.0
    generator_cpu: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)  # command: NO/BAD/errors
    answers: dict[str, list[str]] = field(default_factory=dict)  # command: first distinct answers
    per_command: dict[str, list[float]] = field(default_factory=dict)  # command: [ops, p50 ms, p99 ms]
    error: str | None = None


class Recorder:
    def __init__(self) -> None:
        self.recording = False
        self.latencies: dict[str, list[float]] = {}
        self.failures: dict[str, int] = {}
        self.answers: dict[str, list[str]] = {}

    def ok(self, command: str, seconds: float) -> None:
        if self.recording:
            self.latencies.setdefault(command, []).append(seconds)

    def fail(self, command: str, answer: str) -> None:
        self.failures[command] = self.failures.get(command, 0) + 1
        seen = self.answers.setdefault(command, [])
        if len(seen) < 3 and answer not in seen:
            seen.append(answer)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(client: Client, recorder: Recorder, name: str, text: str) -> bool:
    started = time.perf_counter()
    status, line = await client.command(text)
    elapsed = time.perf_counter() - started
    if status == "OK":
        recorder.ok(name, elapsed)
        return True
    recorder.fail(name, f"{text} -> {line.decode(errors='replace').strip()}")
    return False


async def mixed_session(port: int, context: ssl.SSLContext, recorder: Recorder, stop_at: float, seed: int) -> None:
    rng = random.Random(seed)
    client = await Client.connect(port, context)
    status, line = await client.command(f'LOGIN "{USER}" "{PASSWORD}"')
    if status != "OK":
        recorder.fail("LOGIN", line.decode(errors="replace").strip())
        await client.close()
        return
    exists = 0
    flag_on = True
    try:
        while time.monotonic() < stop_at:
            if await timed(client, recorder, "SELECT", "SELECT INBOX"):
                for untagged in client.untagged:
                    parts = untagged.split()
                    if len(parts) >= 3 and parts[2] == b"EXISTS":
                        exists = int(parts[1])
            if exists < 1:
                recorder.fail("SELECT", "no EXISTS in the answer")
                await asyncio.sleep(0.1)
                continue
            first = rng.randint(1, max(1, exists - FETCH_RANGE + 1))
            last = min(exists, first + FETCH_RANGE - 1)
            await timed(client, recorder, "FETCH",
                        f"FETCH {first}:{last} (FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])")
            await timed(client, recorder, "UID FETCH", f"UID FETCH {rng.randint(1, exists)} BODY.PEEK[]")
            sign = "+" if flag_on else "-"
            flag_on = not flag_on
            await timed(client, recorder, "STORE", f"STORE {rng.randint(1, exists)} {sign}FLAGS (\\Flagged)")
            await timed(client, recorder, "SEARCH", "SEARCH UNSEEN")
        await client.command("LOGOUT")
    finally:
        await client.close()


async def login_loop(port: int, context: ssl.SSLContext, recorder: Recorder, stop_at: float) -> None:
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        step = "connect"
        client: Client | None = None
        try:
            client = await Client.connect(port, None)
            step = "STARTTLS"
            status, line = await client.command("STARTTLS")
            if status != "OK":
                recorder.fail(step, line.decode(errors="replace").strip())
                continue
            await client.starttls(context)
            step = "LOGIN"
            status, line = await client.command(f'LOGIN "{USER}" "{PASSWORD}"')
            if status != "OK":
                recorder.fail(step, line.decode(errors="replace").strip())
                continue
            step = "LOGOUT"
            status, line = await client.command("LOGOUT")
            if status != "OK":
                recorder.fail(step, line.decode(errors="replace").strip())
                continue
            recorder.ok("login", time.perf_counter() - started)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ImapError) as exc:
            recorder.fail(step, f"{type(exc).__name__}: {exc}")
        finally:
            if client is not None:
                await client.close()


async def prepare(server: ImapServer, context: ssl.SSLContext, expected: int) -> None:
    """Untimed: log in, SELECT (the server indexes the new messages), FETCH every FLAGS; the
    INBOX must hold ``expected`` messages."""
    client = await Client.connect(server.imaps_port, context)
    try:
        status, line = await client.command(f'LOGIN "{USER}" "{PASSWORD}"')
        if status != "OK":
            raise ServerFailed(f"{server.label}: LOGIN -> {line!r}")
        status, line = await client.command("SELECT INBOX")
        if status != "OK":
            raise ServerFailed(f"{server.label}: SELECT INBOX -> {line!r}")
        exists = next((int(u.split()[1]) for u in client.untagged if u.split()[2:3] == [b"EXISTS"]), -1)
        if exists != expected:
            raise ServerFailed(f"{server.label}: SELECT INBOX says {exists} EXISTS, expected {expected}")
        status, line = await client.command("FETCH 1:* (FLAGS RFC822.SIZE)")
        if status != "OK":
            raise ServerFailed(f"{server.label}: FETCH 1:* (FLAGS RFC822.SIZE) -> {line!r}")
        await client.command("LOGOUT")
    finally:
        await client.close()


async def drive(workload: str, server: ImapServer, context: ssl.SSLContext, sessions: int, warmup: float,
                seconds: float) -> tuple[Recorder, float, float, float]:
    """Run the workload; (recorder, measured seconds, generator CPU s, server CPU s)."""
    recorder = Recorder()
    loop_start = time.monotonic()
    stop_at = loop_start + warmup + seconds
    if workload == "mixed":
        tasks = [asyncio.create_task(mixed_session(server.imaps_port, context, recorder, stop_at, seed))
                 for seed in range(sessions)]
    else:
        tasks = [asyncio.create_task(login_loop(server.imap_port, context, recorder, stop_at))
                 for _ in range(sessions)]
    await asyncio.sleep(max(0.0, loop_start + warmup - time.monotonic()))
    recorder.recording = True
    usage = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu = server.cpu_seconds()
    began = time.monotonic()
    await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
    recorder.recording = False
    measured = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    server_cpu = server.cpu_seconds() - server_cpu
    generator = (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    for result in results:
        if isinstance(result, BaseException):
            recorder.fail("session", f"{type(result).__name__}: {result}")
    return recorder, measured, generator, server_cpu


WORKLOADS = {"mixed": "mixed loop, TLS (993)", "login": "login storm, STARTTLS (143)"}


def measure(server: ImapServer, workload: str, context: ssl.SSLContext, args: argparse.Namespace) -> Stats:
    stats = Stats(server.name, workload)
    print(f"  {server.label}: {WORKLOADS[workload]} ...", end="", flush=True, file=sys.stderr)
    try:
        recorder, measured, generator, server_cpu = asyncio.run(
            drive(workload, server, context, args.sessions, args.warmup, args.seconds))
    except (TimeoutError, OSError) as exc:
        stats.error = f"{type(exc).__name__}: {exc}\n{server.log_tail()}"
        print(" failed", file=sys.stderr)
        return stats
    everything = [v for values in recorder.latencies.values() for v in values]
    stats.ops = len(everything)
    stats.seconds = measured
    stats.rate = stats.ops / measured
    stats.p50_ms = 1000 * percentile(everything, 0.50)
    stats.p99_ms = 1000 * percentile(everything, 0.99)
    stats.server_cpu = server_cpu / measured
    stats.generator_cpu = generator / measured
    stats.failures, stats.answers = recorder.failures, recorder.answers
    stats.per_command = {name: [len(v) / measured, 1000 * percentile(v, 0.5), 1000 * percentile(v, 0.99)]
                         for name, v in recorder.latencies.items()}
    if not server.alive():
        stats.error = f"{server.label} exited during the run:\n{server.log_tail()}"
    print(f" {stats.rate:,.0f}/s, p50 {stats.p50_ms:.1f} ms, p99 {stats.p99_ms:.1f} ms; cpu "
          f"{100 * stats.server_cpu:.0f} %, generator {100 * stats.generator_cpu:.0f} %"
          + (f"; {sum(stats.failures.values())} failed" if stats.failures else ""), file=sys.stderr)
    return stats


# --- the report

TARGETS = {"mixed": 1.0, "login": 1.0}
GENERATOR_BOUND = 0.85  # above this share of its core the load generator limits the figures


def fmt(stats: Stats | None) -> str:
    if stats is None:
        return f"{'':>8} {'':>7} {'':>7} {'':>5}"
    if stats.error is not None:
        return f"{'failed':>8} {'':>7} {'':>7} {'':>5}"
    return f"{stats.rate:>8,.0f} {stats.p50_ms:>7.1f} {stats.p99_ms:>7.1f} {100 * stats.server_cpu:>4.0f}%"


def print_table(names: list[str], results: dict[tuple[str, str], Stats], sessions: int) -> None:
    width = len(fmt(None))
    compare = names == ["ispd", "dovecot"]
    head = f"{'workload':<28}  " + "  ".join(f"{SERVERS[n].label:-^{width}}" for n in names)
    sub = f"{'':<28}  " + "  ".join(f"{'ops/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu':>5}" for _ in names)
    if compare:
        head += f"  {'ispd/':>8}  {'target':<13}"
        sub += f"  {'dovecot':>8}  {'(ops/s)':<13}"
    head += f"  {'generator':>9}"
    sub += f"  {'cpu':>9}"
    print(head)
    print(sub)
    for workload, title in WORKLOADS.items():
        runs = [results.get((n, workload)) for n in names]
        if all(r is None for r in runs):
            continue
        line = f"{title:<28}  " + "  ".join(fmt(r) for r in runs)
        if compare:
            ispd, dovecot = runs
            ratio, verdict = "", f">= {TARGETS[workload]:g}x: ?"
            if ispd and dovecot and ispd.error is None and dovecot.error is None and dovecot.rate:
                value = ispd.rate / dovecot.rate
                # a side whose load generator ran out of core was faster than measured
                bound = (">" if ispd.generator_cpu > GENERATOR_BOUND else "") + \
                        ("<" if dovecot.generator_cpu > GENERATOR_BOUND else "")
                ratio = f"{bound if len(bound) == 1 else ''}{value:.2f}x"
                verdict = f">= {TARGETS[workload]:g}x: " + ("met" if value >= TARGETS[workload] else "MISSED")
            line += f"  {ratio:>8}  {verdict:<13}"
        gen = max((r.generator_cpu for r in runs if r is not None and r.error is None), default=None)
        line += f"  {100 * gen:>8.0f}%" if gen is not None else ""
        print(line)
    print(f"{sessions} sessions; ops/s: commands answered OK per second (mixed), logins (connect, STARTTLS, LOGIN, "
          "LOGOUT all OK) per second (login storm); cpu: the server's share of one core")


def print_commands(names: list[str], results: dict[tuple[str, str], Stats]) -> None:
    runs = {n: results.get((n, "mixed")) for n in names}
    if not any(r is not None and r.error is None for r in runs.values()):
        return
    print()
    print(f"{'mixed loop, per command':<28}  " + "  ".join(f"{SERVERS[n].label + ' ops/s p50 p99 ms':>30}"
                                                          for n in names))
    for command in ("SELECT", "FETCH", "UID FETCH", "STORE", "SEARCH"):
        cells = []
        for n in names:
            r = runs[n]
            values = r.per_command.get(command) if r is not None and r.error is None else None
            cells.append(f"{values[0]:>14,.0f} {values[1]:>7.2f} {values[2]:>7.2f}" if values else f"{'':>30}")
        print(f"{command:<28}  " + "  ".join(cells))


# --- running it all


def dovecot_version() -> str:
    out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    return out.split()[0] if out.split() else "?"


def preflight(names: list[str]) -> None:
    problems = []
    if "ispd" in names and not Path(ISPD).exists():
        problems.append(f"{ISPD} not found (run with the project's .venv/bin/python)")
    if "dovecot" in names:
        try:
            pwd.getpwnam(MAIL_USER)
            pwd.getpwnam("dovenull")
        except KeyError as exc:
            problems.append(f"no user {exc}")
        if not Path("/usr/lib/dovecot/imap").exists():
            problems.append("dovecot-imapd is not installed")
    try:
        import trustme  # noqa: F401
    except ImportError:
        problems.append("the trustme package is missing from this Python")
    require("bench/imap.py", problems, ("taskset",) + ((DOVECOT,) if "dovecot" in names else ()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (default: %(default)s)")
    parser.add_argument("--sessions", type=int, default=16, help="concurrent clients (default: %(default)s)")
    parser.add_argument("--messages", type=int, default=2000, help="messages in the INBOX (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(SERVERS), help="measure one server only")
    parser.add_argument("--quick", action="store_true", help="5 s per run after 1 s of warm-up")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each run keeps its best (default: 1)")
    parser.add_argument("--dovecot-setting", action="append", default=[], metavar="'NAME = VALUE'",
                        help="a line added to dovecot.conf (repeatable)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the load generator and the servers")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the working directories go (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (configs, logs, Maildirs)")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.quick:
        args.seconds, args.warmup = 5.0, 1.0
    if not 1 <= args.repeat <= 20:
        parser.error("--repeat must be 1 to 20")
    if not 1 <= args.sessions <= 1000:
        parser.error("--sessions must be 1 to 1000")
    if args.messages < FETCH_RANGE:
        parser.error(f"--messages must be at least {FETCH_RANGE}")
    names = [args.only] if args.only else ["ispd", "dovecot"]
    DovecotProcess.extra = tuple(args.dovecot_setting)
    preflight(names)

    cpus, pinning = split_cpus(args.no_pin, "servers", "the load generator (this script)")

    stop_all_on_exit()

    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ispd-bench-imap-", dir=args.dir))
    results: dict[tuple[str, str], Stats] = {}
    failed: dict[str, str] = {}
    try:
        print(f"IMAP: {' vs '.join(SERVERS[n].label for n in names)}, driven by an asyncio client")
        load_avg = os.getloadavg()[0]
        print(f"machine: {machine_summary()}; {pinning}; load average {load_avg:.2f} at start"
              + (" (busy: expect noise)" if load_avg > 0.5 else ""))
        if "dovecot" in names:
            print(f"Dovecot {dovecot_version()}: private config, ssl = required, passwd-file (plain), Maildir, "
                  "defaults otherwise" + "".join(f"; + {line!r}" for line in args.dovecot_setting))
        if "ispd" in names:
            print("ispd: [mail] as in bench/imap.py ISPD_CONFIG")
        messages = make_messages(args.messages)
        total = sum(len(d) for _, d in messages)
        print(f"INBOX: {len(messages):,} messages, {total / 1e6:.1f} MB; {args.sessions} sessions; "
              f"{args.seconds:g} s measured after {args.warmup:g} s per run"
              + (f"; best of {args.repeat} rounds" if args.repeat > 1 else ""))
        print()
        if cpus[1] is not None:
            os.sched_setaffinity(0, {int(cpus[1])})
        certificates = issue(root / "tls", TLS_NAME)
        certificates.private_key.chmod(0o600)
        tls = (certificates.ca, certificates.certificate, certificates.private_key)
        context = ssl.create_default_context(cafile=str(tls[0]))
        servers: dict[str, ImapServer] = {}
        for name in names:
            server = SERVERS[name](root / name, cpus[0], tls, messages)
            try:
                server.start()
                asyncio.run(prepare(server, context, len(messages)))
                servers[name] = server
            except (ServerFailed, OSError) as exc:
                failed[name] = str(exc)
                server.stop()
        # the servers take turns workload by workload, so a change of the machine's speed hits both
        for round_ in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"round {round_} of {args.repeat}")
            for workload in WORKLOADS:
                for name, server in servers.items():
                    stats = measure(server, workload, context, args)
                    best = results.get((name, workload))
                    if best is None or stats.rate > best.rate:
                        results[(name, workload)] = stats
                    if stats.error is not None:
                        failed.setdefault(name, stats.error)
        print()
        print_table(names, results, args.sessions)
        print_commands(names, results)
        for stats in results.values():
            if stats.generator_cpu > GENERATOR_BOUND:
                print(f"note: the load generator used {100 * stats.generator_cpu:.0f} % of its core in "
                      f"{stats.server} {stats.workload}: it limits the figures there too (a ratio marked > or < "
                      "is a bound)")
        for stats in results.values():
            for command, count in stats.failures.items():
                print(f"\n{SERVERS[stats.server].label} {WORKLOADS[stats.workload]}: {command} failed {count} "
                      "times: " + "; ".join(stats.answers.get(command, [])))
        for name, error in failed.items():
            print(f"\n{SERVERS[name].label} failed:\n{error}")
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in results.values()], indent=1))
    finally:
        stop_all()
        keep_or_remove(root, args.keep)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted")
