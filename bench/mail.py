"""Mail delivery: messages landed in a Maildir per second, ispd against Postfix + Dovecot.

Both receive SMTP alone on 127.0.0.1 (a port of their own) for the domain bench.example and
deliver every message to one mailbox, u1@bench.example, a Maildir under the run's directory:

- ispd: its [mail] service as configured below (ISPD_CONFIG), the subscriber u1 and its mailbox
  made with the CLI before the start (`ispd subscriber add`, `ispd mailbox add`). A message is
  written to tmp/, fsynced, linked into new/ and the directory fsynced before the 250. The SPF,
  DKIM and DMARC checks are off (authentication_checks = false), as Postfix has no milter for
  them here, and there is no connection rate limit per client, as in Postfix's defaults.
- postfix+dovecot: Debian's packages, each with a private config in the run's directory (the
  system's /etc/postfix and /etc/dovecot services are never used). Postfix's master runs with
  its own main.cf and master.cf (smtpd on the bench's port, its own queue and data directories,
  no chroot), takes the message into its queue (cleanup fsyncs the queue file before the 250),
  then its lmtp client hands it to Dovecot's LMTP service over a UNIX socket (virtual_transport;
  virtual_mailbox_maps lists the one address, so unknown recipients are refused at RCPT as ispd
  does). Dovecot (static userdb, mail as `nobody`) saves it into the Maildir with its default
  mail_fsync = optimized: the file fsynced, renamed into new/, new/ fsynced, before its 250 to
  Postfix, which then removes the queue file. The same durability as ispd's, twice over (queue
  and mailbox). Both log every message to their own log file, as in production.

Nothing leaves loopback: ispd's resolver is a loopback port where nothing listens, Postfix
delivers over a UNIX socket and finds 127.0.0.1 in /etc/hosts.

smtp-source (Debian's postfix package) sends each workload with --sessions SMTP sessions in
parallel, each session sending its messages one after another over one connection (-d), or, in
the "new connection" workload, one message per connection as MX traffic mostly is. Every
workload runs on a fresh server with an empty Maildir, after one message sent with smtplib has
landed (the check that the server delivers, and the Maildir's creation); the servers take turns
workload by workload, so a change of the machine's speed hits both sides of a ratio alike, and
--repeat rounds keep each run's best. "landed/s" counts the messages that have arrived in the
Maildir (files in new/ and cur/), not those only accepted: from the start of smtp-source to the
moment the last one landed (the Maildir directories' modification time once the count is
complete; the bench polls the count every 50 ms). "accepted/s" is to the end of smtp-source (its
last 250); Postfix accepts ahead of delivery, ispd's 250 means landed. "cpu" is the share of one
core the server used (all its processes and threads: Postfix's master and every daemon it runs,
Dovecot's master, LMTP and auth processes). On a machine with two cores or more, the server is
pinned to all cores but the last (Postfix and Dovecot together, as ispd alone), smtp-source and
this script to the last one; the smtp-source column says how much of its core the load generator
used. Needs root, taskset, smtp-source, postfix and dovecot (tools/setup --bench installs them).
Every process started is stopped at exit, also on an error, Ctrl-C or SIGTERM; the working
directories go under --dir.

    .venv/bin/python bench/mail.py [--quick] [--small 10000] [--large 3000] [--reconnect 5000]
                                   [--sessions 16] [--only ispd|postfix] [--repeat 1] [--no-pin]
                                   [--postconf 'name = value'] [--dir /var/tmp] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
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
from tests.lab.dnshier import _death_signal, _terminate  # noqa: E402
from tests.lab.ports import free_tcp_port, free_udp_port  # noqa: E402

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOMAIN = "bench.example"
RECIPIENT = f"u1@{DOMAIN}"
SENDER = "sender@load.example"
MAIL_USER = "nobody"  # Dovecot saves as this user: it refuses root, and the bench makes no user of its own
SMALL_BYTES = 1024
LARGE_BYTES = 100 * 1024
POLL_SECONDS = 0.05  # how often the Maildir is counted during a run


@dataclass(frozen=True)
class Workload:
    name: str
    size: int  # smtp-source -l: payload bytes, headers not included
    reconnect: bool  # one message per connection (no -d)
    target: float | None  # ispd/postfix landed/s the issue asks for

    @property
    def slug(self) -> str:
        """The name in file names (Postfix reads a comma in a path as a list separator)."""
        return "-".join(self.name.replace(",", " ").split())


WORKLOADS = (
    Workload("small", SMALL_BYTES, False, 1.5),
    Workload("100 KB", LARGE_BYTES, False, 1.5),
    Workload("small, new connection", SMALL_BYTES, True, None),
)

ISPD_CONFIG = ISPD_CONFIG_HEAD + """\
[mail]
enabled = true
domains = ["{domain}"]
hostname = "mx.{domain}"
maildir_root = "{maildir_root}"
queue_directory = "{workdir}/queue"
listen_mx = ["127.0.0.1:{port}"]
max_connections = 1000
max_connections_per_client = 1000
# Postfix's default: no limit (smtpd_client_connection_rate_limit = 0); the bench is one client
max_connection_rate_per_client = 0
# Off, as Postfix here has no SPF/DKIM/DMARC milter: both do the same work
authentication_checks = false
# Whatever DNS lookup is left goes to a loopback port where nothing listens, never to the
# machine's resolver
resolver = "127.0.0.1:{dns_port}"
"""

# Postfix: the stock master.cf's services a receiving MX with LMTP delivery uses, without chroot
# (its files would have to be copied into the queue directory), smtpd on the bench's port.
POSTFIX_MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {workdir}/postfix/queue
data_directory = {workdir}/postfix/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
relay_domains =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = texthash:{workdir}/postfix/etc/mailboxes
virtual_transport = lmtp:unix:{workdir}/dovecot/run/lmtp
maillog_file = {workdir}/postfix/postfix.log
biff = no
"""

POSTFIX_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup    unix  n - n - 0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n - - trivial-rewrite
bounce     unix  - - n - 0 bounce
defer      unix  - - n - 0 bounce
trace      unix  - - n - 0 bounce
verify     unix  - - n - 1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n - - proxymap
proxywrite unix  - - n - 1 proxymap
smtp       unix  - - n - - smtp
showq      unix  n - n - - showq
error      unix  - - n - - error
retry      unix  - - n - - error
discard    unix  - - n - - discard
lmtp       unix  - - n - - lmtp
anvil      unix  - - n - 1 anvil
scache     unix  - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""

# Dovecot: LMTP only, on a UNIX socket in its private base_dir; the static userdb maps every
# address to <maildir_root>/<domain>/<local part>, the layout ispd uses. The passdb is there
# only because the auth service will not start without one (LMTP looks up userdb only).
DOVECOT_CONF = """\
instance_name = ispd-bench-dovecot-{instance}
base_dir = {workdir}/dovecot/run
state_dir = {workdir}/dovecot/state
protocols = lmtp
ssl = no
log_path = {workdir}/dovecot/dovecot.log
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~
mail_fsync = optimized
userdb {{
  driver = static
  args = uid={user} gid={group} home={maildir_root}/%d/%n
}}
passdb {{
  driver = static
  args = nopassword=y
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
"""


# --- the servers


def smtp_greets(port: int) -> bool:
    return greets(port, b"220")


def count_files(*directories: Path) -> int:
    total = 0
    for directory in directories:
        with contextlib.suppress(FileNotFoundError):
            total += len(os.listdir(directory))
    return total


class MailServer(BenchServer):
    def __init__(self, workdir: Path, cpus: str | None) -> None:
        self.workdir, self.cpus = workdir, cpus
        self.port = free_tcp_port()
        self.maildir_root = workdir / "mail"
        self.maildir = self.maildir_root / DOMAIN / "u1"

    def landed(self) -> int:
        """Messages in the mailbox: files in new/ and cur/."""
        return count_files(self.maildir / "new", self.maildir / "cur")

    def last_landed(self) -> float:
        """When a message last entered the mailbox: new/ and cur/ change only when one does."""
        times = []
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                times.append((self.maildir / sub).stat().st_mtime)
        return max(times, default=0.0)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)


class IspdMail(MailServer):
    name, label = "ispd", "ispd"

    def __init__(self, workdir: Path, cpus: str | None) -> None:
        super().__init__(workdir, cpus)
        self.process = IspdDaemon(workdir, cpus, preexec=_death_signal())

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = ISPD_CONFIG.format(workdir=self.workdir, metrics_port=free_tcp_port(), domain=DOMAIN,
                                    maildir_root=self.maildir_root, port=self.port, dns_port=free_udp_port())
        path = self.workdir / "ispd.toml"
        path.write_text(config)
        ispd_cli(path, "subscriber", "add", "u1", "--generate-password")
        ispd_cli(path, "mailbox", "add", "u1", RECIPIENT)
        self.process.start(config, lambda: smtp_greets(self.port), f"greet on SMTP at 127.0.0.1:{self.port}")


class Daemon:
    """A server process that stays in the foreground, pinned to ``cpus``, its output in a file;
    SIGTERM stops it and the processes it started."""

    def __init__(self, command: list[str], output: Path, cpus: str | None) -> None:
        self.command = ["taskset", "-c", cpus, *command] if cpus is not None else command
        self.output = output
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_death_signal())  # noqa: PLW1509

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc, timeout=15.0)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return f"--- {path.name}: (none)"
    return f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PostfixDovecotStack:
    """Dovecot's LMTP service, and Postfix's master in front of it; ``proc`` is Postfix's."""

    main_cf_extra: tuple[str, ...] = ()  # --postconf: lines added to main.cf

    def __init__(self, workdir: Path, port: int, maildir_root: Path, cpus: str | None) -> None:
        self.workdir, self.port, self.maildir_root = workdir, port, maildir_root
        self.config_dir = workdir / "postfix" / "etc"
        self.lmtp_socket = workdir / "dovecot" / "run" / "lmtp"
        self.dovecot_conf = workdir / "dovecot" / "dovecot.conf"
        self.dovecot = Daemon([DOVECOT, "-F", "-c", str(self.dovecot_conf)], workdir / "dovecot" / "dovecot.out", cpus)
        # master without -w stays in the foreground (`postfix start-fg` runs it so, under a shell)
        self.postfix = Daemon([postfix_daemon_directory() + "/master", "-s", "-c", str(self.config_dir)],
                              workdir / "postfix" / "master.out", cpus)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.postfix.proc

    def write_configs(self) -> None:
        user = pwd.getpwnam(MAIL_USER)
        for sub in ("postfix/etc", "postfix/queue", "dovecot/state"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        # Postfix's daemons and Dovecot's mail processes run unprivileged and open paths in here: the
        # run's directory and the bench's (mkdtemp made them 0700) open to them, the rest must be
        for directory in (self.workdir, self.workdir.parent):
            directory.chmod(directory.stat().st_mode | 0o005)
        closed = [d for d in self.workdir.parents[1:] if d.stat().st_mode & 0o001 == 0]
        if closed:
            raise ServerFailed(f"{closed[0]} is closed to other users (Postfix's and Dovecot's unprivileged "
                               "processes must reach the run's directory): give --dir elsewhere")
        self.maildir_root.mkdir(parents=True, exist_ok=True)
        (self.maildir_root / DOMAIN).mkdir(exist_ok=True)
        for directory in (self.maildir_root, self.maildir_root / DOMAIN):
            os.chown(directory, user.pw_uid, user.pw_gid)
        values = {"workdir": self.workdir, "domain": DOMAIN, "port": self.port, "maildir_root": self.maildir_root,
                  "user": user.pw_uid, "group": user.pw_gid, "instance": self.port}
        (self.config_dir / "main.cf").write_text(POSTFIX_MAIN_CF.format(**values)
                                                 + "".join(f"{line}\n" for line in self.main_cf_extra))
        (self.config_dir / "master.cf").write_text(POSTFIX_MASTER_CF.format(**values))
        (self.config_dir / "mailboxes").write_text(f"{RECIPIENT} ok\n")
        self.dovecot_conf.write_text(DOVECOT_CONF.format(**values))

    def start(self, timeout: float = 30.0) -> None:
        self.write_configs()
        # `postfix check` makes the queue's directories with their owners and modes
        check = subprocess.run([POSTFIX, "-c", str(self.config_dir), "check"], capture_output=True, text=True,
                               timeout=60, check=False, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            raise ServerFailed(f"postfix check failed ({check.returncode}):\n{check.stdout}{check.stderr}")
        self.dovecot.start()
        self._wait(lambda: lmtp_greets(self.lmtp_socket), self.dovecot, "Dovecot's LMTP socket", timeout)
        self.postfix.start()
        self._wait(lambda: smtp_greets(self.port), self.postfix, f"Postfix on 127.0.0.1:{self.port}", timeout)

    def _wait(self, ready: Callable[[], bool], daemon: Daemon, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not daemon.alive():
                raise ServerFailed(f"{what}: the process exited while starting:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.05)
        raise ServerFailed(f"{what} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        self.postfix.stop()
        self.dovecot.stop()

    def alive(self) -> bool:
        return self.postfix.alive() and self.dovecot.alive()

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(d.proc.pid) for d in (self.postfix, self.dovecot) if d.proc is not None)

    def log_tail(self) -> str:
        return "\n".join(tail(p) for p in (self.postfix.output, self.workdir / "postfix" / "postfix.log",
                                           self.dovecot.output, self.workdir / "dovecot" / "dovecot.log"))


def lmtp_greets(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            sock.connect(str(path))
            return sock.recv(512).startswith(b"220")
    except OSError:
        return False


def postfix_daemon_directory() -> str:
    result = subprocess.run([POSTCONF, "-dh", "daemon_directory"], capture_output=True, text=True, timeout=30,
                            check=False)
    return result.stdout.strip() or "/usr/lib/postfix/sbin"


class PostfixMail(MailServer):
    name, label = "postfix", "postfix+dovecot"
    process: PostfixDovecotStack

    def __init__(self, workdir: Path, cpus: str | None) -> None:
        super().__init__(workdir, cpus)
        self.process = PostfixDovecotStack(workdir, self.port, self.maildir_root, cpus)

    def _start(self) -> None:
        self.process.start()

    def alive(self) -> bool:
        return self.process.alive()

    def cpu_seconds(self) -> float:
        return self.process.cpu_seconds()


SERVERS: dict[str, type[MailServer]] = {"ispd": IspdMail, "postfix": PostfixMail}


# --- one run


@dataclass
class Run:
    """One smtp-source run against one server."""

    server: str
    workload: str
    messages: int = 0
    landed: int = 0
    seconds: float = 0.0  # from the start of smtp-source to the last message landed
    accept_seconds: float = 0.0  # to the end of smtp-source
    landed_rate: float = 0.0
    accepted_rate: float = 0.0
    server_cpu: float = 0.0  # share of one core, over `seconds`
    generator_cpu: float = 0.0  # smtp-source's share of one core, over its own run
    error: str | None = None


def check_delivery(server: MailServer, timeout: float = 30.0) -> None:
    """One message, sent with smtplib, lands in the mailbox; it also makes the Maildir."""
    body = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench check\r\n\r\nchecking\r\n"
    try:
        with smtplib.SMTP("127.0.0.1", server.port, local_hostname="load.example", timeout=10) as smtp:
            smtp.sendmail(SENDER, [RECIPIENT], body)
    except (OSError, smtplib.SMTPException) as exc:
        raise ServerFailed(f"{server.label} did not take a message for {RECIPIENT}: {exc}\n{server.log_tail()}") \
            from None
    deadline = time.monotonic() + timeout
    while server.landed() < 1:
        if time.monotonic() > deadline:
            raise ServerFailed(f"{server.label} took a message for {RECIPIENT}, but it did not land in "
                               f"{server.maildir} within {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(0.02)


def run_smtp_source(server: MailServer, workload: Workload, messages: int, sessions: int,
                    cpus: str | None) -> Run:
    run = Run(server.name, workload.name, messages=messages)
    command = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(workload.size), "-M", "load.example",
               "-f", SENDER, "-t", RECIPIENT]
    if not workload.reconnect:
        command.append("-d")
    command.append(f"127.0.0.1:{server.port}")
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
    out_path = server.workdir / f"smtp-source-{workload.slug}.out"
    before = server.landed()
    expected = before + messages
    timeout = 60 + messages / 20  # far beyond what either server needs
    cpu_before = server.cpu_seconds()
    started_wall, started = time.time(), time.monotonic()
    with out_path.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    returncode: int | None = None
    landed = before
    next_count = started
    try:
        while True:
            now = time.monotonic()
            if returncode is None:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    returncode = proc.returncode = os.waitstatus_to_exitcode(status)
                    run.accept_seconds = now - started
                    run.generator_cpu = (usage.ru_utime + usage.ru_stime) / max(run.accept_seconds, 1e-9)
                    if returncode != 0:
                        break
            if now >= next_count:
                landed = server.landed()
                next_count = now + POLL_SECONDS
                if landed >= expected and returncode is not None:
                    break
            if now - started > timeout:
                raise ServerFailed(f"{landed - before:,} of {messages:,} messages landed within {timeout:.0f} s"
                                   f" (smtp-source {'still running' if returncode is None else 'done'}):\n"
                                   f"{out_path.read_text(errors='replace')[-2000:]}\n{server.log_tail()}")
            time.sleep(0.005)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    server_cpu = server.cpu_seconds() - cpu_before
    text = out_path.read_text(errors="replace")
    if returncode != 0:
        raise ServerFailed(f"smtp-source failed ({returncode}):\n{text[-2000:]}\n{server.log_tail()}")
    # the moment the last one landed: the Maildir's directories change only when a message enters
    run.seconds = max(server.last_landed() - started_wall, 1e-3)
    run.landed = server.landed() - before
    run.landed_rate = run.landed / run.seconds
    run.accepted_rate = messages / max(run.accept_seconds, 1e-9)
    run.server_cpu = server_cpu / run.seconds
    check_message(server, workload.size)
    if not server.alive():
        raise ServerFailed(f"{server.label} exited during the run:\n{server.log_tail()}")
    return run


def check_message(server: MailServer, size: int) -> None:
    """The newest message has the whole payload: ``size`` bytes as sent, less the CR of each line
    (both servers store LF line ends), besides its headers."""
    newest = max((entry for entry in os.scandir(server.maildir / "new") if entry.is_file()),
                 key=lambda entry: entry.stat().st_mtime_ns, default=None)
    if newest is None or newest.stat().st_size < 0.95 * size:
        got = "nothing" if newest is None else f"{newest.stat().st_size:,} bytes"
        raise ServerFailed(f"{server.label}: the newest message in {server.maildir}/new has {got}, "
                           f"expected about {size:,} or more")


def messages_for(workload: Workload, args: argparse.Namespace) -> int:
    if workload.reconnect:
        return int(args.reconnect)
    return int(args.large if workload.size == LARGE_BYTES else args.small)


def measure(kind: type[MailServer], workload: Workload, root: Path, args: argparse.Namespace,
            cpus: tuple[str | None, str | None]) -> Run:
    """One workload on a fresh server: start it, check it delivers, run smtp-source, stop it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{kind.name}-{workload.slug}-", dir=root))
    server = kind(workdir, cpus[0])
    print(f"  {kind.label}: {workload.name} ...", end="", flush=True, file=sys.stderr)
    try:
        server.start()
        check_delivery(server)
        run = run_smtp_source(server, workload, messages_for(workload, args), args.sessions, cpus[1])
        print(f" {run.landed:,}/{run.messages:,} landed in {run.seconds:.2f} s: {run.landed_rate:,.0f}/s; "
              f"accepted {run.accepted_rate:,.0f}/s; cpu {100 * run.server_cpu:.0f} %, smtp-source "
              f"{100 * run.generator_cpu:.0f} %", file=sys.stderr)
    except ServerFailed as exc:
        print(" failed", file=sys.stderr)
        run = Run(kind.name, workload.name, error=str(exc))
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return run


# --- the report


def fmt_run(run: Run | None) -> str:
    if run is None:
        return f"{'':>9} {'':>10} {'':>5}"
    if run.error is not None:
        return f"{'failed':>9} {'':>10} {'':>5}"
    return f"{run.landed_rate:>9,.0f} {run.accepted_rate:>10,.0f} {100 * run.server_cpu:>4.0f}%"


def print_table(names: list[str], results: dict[tuple[str, str], Run], sessions: int) -> None:
    width = len(fmt_run(None))
    compare = names == ["ispd", "postfix"]
    head = f"{'workload':<22}  " + "  ".join(f"{SERVERS[n].label:-^{width}}" for n in names)
    sub = f"{'':<22}  " + "  ".join(f"{'landed/s':>9} {'accepted/s':>10} {'cpu':>5}" for _ in names)
    if compare:
        head += f"  {'ispd/':>8}  {'target':<16}"
        sub += f"  {'postfix':>8}  {'(landed/s)':<16}"
    head += f"  {'smtp-source':>11}"
    sub += f"  {'cpu':>11}"
    print(head)
    print(sub)
    for workload in WORKLOADS:
        runs = [results.get((n, workload.name)) for n in names]
        if all(r is None for r in runs):
            continue
        line = f"{workload.name:<22}  " + "  ".join(fmt_run(r) for r in runs)
        if compare:
            ispd, postfix = runs
            ratio, verdict = "", ""
            if ispd and postfix and ispd.error is None and postfix.error is None and postfix.landed_rate:
                value = ispd.landed_rate / postfix.landed_rate
                ratio = f"{value:.2f}x"
                if workload.target is not None:
                    verdict = f">= {workload.target:g}x: " + ("met" if value >= workload.target else "MISSED")
            elif workload.target is not None:
                verdict = f">= {workload.target:g}x: ?"
            line += f"  {ratio:>8}  {verdict or '-':<16}"
        gen = max((r.generator_cpu for r in runs if r is not None and r.error is None), default=None)
        line += f"  {100 * gen:>10.0f}%" if gen is not None else ""
        print(line)
    print(f"landed/s: messages in the Maildir per second, from the first sent to the last landed; accepted/s: to "
          f"smtp-source's last 250; {sessions} sessions; small = {SMALL_BYTES:,} and 100 KB = {LARGE_BYTES:,} bytes "
          "of payload")


# --- running it all


def versions() -> str:
    postfix = subprocess.run([POSTCONF, "-dh", "mail_version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout.strip()
    dovecot = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout.split()
    return f"Postfix {postfix or '?'}, Dovecot {dovecot[0] if dovecot else '?'}"


def preflight(names: list[str]) -> None:
    problems = []
    if "ispd" in names and not Path(ISPD).exists():
        problems.append(f"{ISPD} not found (run with the project's .venv/bin/python)")
    if "postfix" in names:
        try:
            pwd.getpwnam(MAIL_USER)
            pwd.getpwnam("postfix")
        except KeyError as exc:
            problems.append(f"no user {exc}")
    require("bench/mail.py", problems, ("taskset", SMTP_SOURCE) + ((POSTFIX, DOVECOT) if "postfix" in names else ()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=10_000, help="small messages per run (default: %(default)s)")
    parser.add_argument("--large", type=int, default=3_000, help="100 KB messages per run (default: %(default)s)")
    parser.add_argument("--reconnect", type=int, default=5_000,
                        help="small messages, one per connection, per run; 0 skips it (default: %(default)s)")
    parser.add_argument("--sessions", type=int, default=16,
                        help="smtp-source -s: SMTP sessions in parallel (default: %(default)s)")
    parser.add_argument("--only", choices=sorted(SERVERS), help="measure one server only")
    parser.add_argument("--quick", action="store_true", help="2 000 small, 500 large, 1 000 one per connection")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over every run; each keeps its best round (default: %(default)s)")
    parser.add_argument("--postconf", action="append", default=[], metavar="'NAME = VALUE'",
                        help="a line added to Postfix's main.cf, e.g. 'in_flow_delay = 0' (repeatable)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin smtp-source and the servers to cores")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"),
                        help="where the working directories go: a real disk, for the fsyncs (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (configs, logs, Maildirs)")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.quick:
        args.small, args.large, args.reconnect, args.repeat = 2_000, 500, 1_000, 1
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not 1 <= args.sessions <= 500:
        parser.error("--sessions must be 1 to 500")
    names = [args.only] if args.only else ["ispd", "postfix"]
    PostfixDovecotStack.main_cf_extra = tuple(args.postconf)
    preflight(names)

    cpus, pinning = split_cpus(args.no_pin, "server", "smtp-source and the bench")

    stop_all_on_exit()

    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="ispd-bench-mail-", dir=args.dir))
    results: dict[tuple[str, str], Run] = {}
    try:
        print(f"Mail delivery: {' vs '.join(SERVERS[n].label for n in names)}, driven by smtp-source")
        load_avg = os.getloadavg()[0]
        print(f"machine: {machine_summary()}; {pinning}; load average {load_avg:.2f} at start"
              + (" (busy: expect noise)" if load_avg > 0.5 else ""))
        if "postfix" in names:
            print(f"{versions()}: Postfix queues (fsync) and hands over by LMTP; Dovecot saves into Maildir with "
                  "mail_fsync = optimized (file and new/ fsynced before its 250); both log to files"
                  + "".join(f"; main.cf + {line!r}" for line in args.postconf))
        if "ispd" in names:
            print("ispd: [mail] as in bench/mail.py ISPD_CONFIG; the message and new/ fsynced before the 250; "
                  "no SPF/DKIM/DMARC checks (nor in Postfix: no milter)")
        print(f"smtp-source: {args.sessions} sessions, best of {args.repeat}; {args.small:,} small, {args.large:,} "
              f"100 KB, {args.reconnect:,} one per connection; fresh server and Maildir per run")
        print()
        if cpus[1] is not None:  # the bench's own polling runs beside smtp-source, off the server's cores
            os.sched_setaffinity(0, {int(cpus[1])})
        failed: dict[str, str] = {}
        broken: set[str] = set()  # failed before any run succeeded: not started again
        # Rounds of every workload, each on every server in turn, so a change in the machine's speed
        # (a VM's, here: ±30 % from one minute to the next) hits both sides of a ratio alike; each
        # run keeps its best round.
        for round_ in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"round {round_}/{args.repeat}", file=sys.stderr)
            for workload in WORKLOADS:
                if messages_for(workload, args) <= 0:
                    continue
                for name in names:
                    if name in broken:
                        continue
                    run = measure(SERVERS[name], workload, root, args, cpus)
                    best = results.get((name, run.workload))
                    if run.error is not None:
                        failed.setdefault(name, run.error)
                        results.setdefault((name, run.workload), run)
                        if not any(r.server == name and r.error is None for r in results.values()):
                            broken.add(name)  # it did not even start or deliver: the rest would fail alike
                    elif best is None or best.error is not None or run.landed_rate > best.landed_rate:
                        results[(name, run.workload)] = run
        print()
        print_table(names, results, args.sessions)
        measured = [r for r in results.values() if r.error is None]
        if any(r.generator_cpu > 0.85 for r in measured):
            print("note: smtp-source used more than 85 % of its core in some runs; there it limits the figures too")
        for r in measured:
            if r.landed != r.messages:
                print(f"note: {r.server} {r.workload}: {r.landed:,} messages landed for {r.messages:,} sent")
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
