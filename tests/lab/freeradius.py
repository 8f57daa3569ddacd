"""FreeRADIUS 3 as the reference RADIUS server, for tests and bench/radius.py.

``FreeRADIUS`` writes a minimal private raddb into ``workdir/raddb`` (never the system's
/etc/freeradius: Debian's daemon is not involved) and runs ``freeradius -f -d workdir/raddb`` in
the foreground, so the PID is the server's own, on ``address`` with its own auth and acct ports
(free ones unless given). The config, generated here in full, holds:

- radiusd.conf: paths into ``workdir``, no ``user``/``group`` (run by root it stays root, which
  FreeRADIUS accepts), no proxying, ``reject_delay = 0``, ``status_server = yes``, a log file
  with authentication logging off, ``max_requests`` and the thread pool sized for load (a fixed
  pool of ``threads``: on one core 4 serve more than 16 or 32);
- clients.conf: one client, 127.0.0.0/8, with ``secret`` (and ``require_message_authenticator``);
- the modules pap, chap, mschap, preprocess, expr (the md5 and tolower expansions the policy and
  the SQL queries use), files (a users file of ``Cleartext-Password`` entries made from
  ``users``), detail (into ``workdir/radacct/detail``) and, with ``backend="sql"``,
  rlm_sql with the sqlite driver (Debian ships rlm_sql_sqlite in the freeradius package). Its
  database is made at start from the schema.sql Debian installs in
  /etc/freeradius/3.0/mods-config/sql/main/sqlite/, and the module $INCLUDEs queries.conf from
  there (both read where they are, not copied); ``users`` go into radcheck; WAL mode (ispd's
  store runs WAL with synchronous=FULL too; SQLite's default synchronous is FULL);
- the acct_unique policy (as in Debian's policy.d/accounting, without the Class branch);
- one virtual server. backend "files": authorize from the users file, accounting into the detail
  file; backend "sql": authorize from radcheck (and the group tables, as stock), accounting
  into radacct. Status-Server (RFC 5997) is answered on both ports: Access-Accept on auth,
  Accounting-Response on acct.

``start()`` returns once a Status-Server with a Message-Authenticator gets a verified answer;
``stop()`` sends SIGTERM to that PID (SIGKILL after a while); ``log_tail()`` shows the log;
``cpus`` pins the server with taskset. ``status_server()`` is the probe, usable on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import shutil
import socket
import sqlite3
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lab.dnshier import _death_signal, _tail, _terminate, free_port

FREERADIUS = shutil.which("freeradius") or "/usr/sbin/freeradius"
SQLITE_CONFIG = Path("/etc/freeradius/3.0/mods-config/sql/main/sqlite")
SQLITE_DRIVER = Path("/usr/lib/freeradius/rlm_sql_sqlite.so")  # Debian 12: in the freeradius package

ACCESS_ACCEPT, ACCOUNTING_RESPONSE, STATUS_SERVER = 2, 5, 12
MESSAGE_AUTHENTICATOR = 80


def status_server(address: str, port: int, secret: str, timeout: float = 0.5) -> int | None:
    """One Status-Server (RFC 5997 §3: with a Message-Authenticator, RFC 3579 §3.2) to
    ``address``:``port``; the code of the reply when its Response Authenticator checks out, else
    None (no reply within ``timeout``, or a reply that does not verify)."""
    key = secret.encode()
    ident, authenticator = secrets.randbelow(256), os.urandom(16)
    zero_ma = bytes([MESSAGE_AUTHENTICATOR, 18]) + bytes(16)
    header = struct.pack("!BBH", STATUS_SERVER, ident, 20 + len(zero_ma))
    ma = hmac.digest(key, header + authenticator + zero_ma, "md5")
    packet = header + authenticator + zero_ma[:2] + ma
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, (address, port))
            reply = sock.recv(4096)
        except OSError:  # a timeout, or ICMP port unreachable before the server binds
            return None
    if len(reply) < 20 or reply[1] != ident or struct.unpack("!H", reply[2:4])[0] != len(reply):
        return None
    expected = hashlib.md5(reply[:4] + authenticator + reply[20:] + key).digest()
    return reply[0] if hmac.compare_digest(expected, reply[4:20]) else None


@dataclass
class FreeRADIUS:
    """FreeRADIUS with a private config in ``workdir``; ``backend`` "files" (users file and
    detail file) or "sql" (rlm_sql_sqlite: radcheck and radacct)."""

    workdir: Path
    users: Sequence[tuple[str, str]] = ()  # (User-Name, Cleartext-Password)
    secret: str = "testing123"
    address: str = "127.0.0.1"
    auth_port: int = 0  # 0: a free port
    acct_port: int = 0
    backend: str = "files"
    require_message_authenticator: bool = False
    threads: int = 4  # worker threads (and SQL connections), all started at once
    max_requests: int = 1 << 20  # requests tracked at once: rate x cleanup_delay must fit
    recv_buff: int = 4 << 20  # each listener's SO_RCVBUF (the kernel caps it at net.core.rmem_max)
    cpus: str | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.backend not in ("files", "sql"):
            raise ValueError(f"backend must be 'files' or 'sql', not {self.backend!r}")
        self.auth_port = self.auth_port or free_port(self.address)
        self.acct_port = self.acct_port or free_port(self.address)
        self.raddb = self.workdir / "raddb"
        self.log_path = self.workdir / "radius.log"
        self.db_path = self.workdir / "radius.db"
        self.detail_path = self.workdir / "radacct" / "detail"

    # --- the config

    def radiusd_conf(self) -> str:
        return f"""\
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {self.workdir}
raddbdir = {self.raddb}
radacctdir = {self.workdir}/radacct
name = freeradius
confdir = ${{raddbdir}}
modconfdir = ${{confdir}}/mods-config
certdir = ${{confdir}}/certs
cadir = ${{confdir}}/certs
run_dir = {self.workdir}
db_dir = {self.workdir}
libdir = /usr/lib/freeradius
pidfile = {self.workdir}/freeradius.pid
max_request_time = 30
cleanup_delay = 5
max_requests = {self.max_requests}
hostname_lookups = no
log {{
  destination = files
  colourise = no
  file = {self.log_path}
  auth = no
  auth_badpass = no
  auth_goodpass = no
}}
security {{
  allow_core_dumps = no
  max_attributes = 200
  reject_delay = 0
  status_server = yes
}}
proxy_requests = no
$INCLUDE clients.conf
thread pool {{
  start_servers = {self.threads}
  max_servers = {self.threads}
  min_spare_servers = {self.threads}
  max_spare_servers = {self.threads}
  max_requests_per_server = 0
  max_queue_size = 65536
  auto_limit_acct = no
}}
modules {{
{self.modules()}
}}
instantiate {{
}}
policy {{
  acct_unique {{
    update request {{
      &Acct-Unique-Session-Id := "%{{md5:%{{User-Name}},%{{Acct-Session-ID}},%{{%{{NAS-IPv6-Address}}:-%{{NAS-IP-Address}}}},\
%{{NAS-Identifier}},%{{NAS-Port-ID}},%{{NAS-Port}}}}"
    }}
  }}
}}
{self.site()}
"""

    def clients_conf(self) -> str:
        required = "yes" if self.require_message_authenticator else "no"
        return (f"client loopback {{\n  ipaddr = 127.0.0.0/8\n  secret = {self.secret}\n"
                f"  require_message_authenticator = {required}\n  nas_type = other\n}}\n")

    def users_file(self) -> str:
        def quoted(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

        return "".join(f"{quoted(name)} Cleartext-Password := {quoted(password)}\n" for name, password in self.users)

    def modules(self) -> str:
        text = f"""\
  expr {{
  }}
  pap {{
  }}
  chap {{
  }}
  mschap {{
  }}
  preprocess {{
    with_ascend_hack = no
    with_ntdomain_hack = no
    with_specialix_jetstream_hack = no
    with_cisco_vsa_hack = no
  }}
  files {{
    filename = {self.raddb}/users
  }}
  detail {{
    filename = {self.detail_path}
    escape_filenames = no
    permissions = 0600
    header = "%t"
  }}
"""
        if self.backend == "sql":
            text += f"""\
  sql {{
    dialect = "sqlite"
    driver = "rlm_sql_sqlite"
    sqlite {{
      filename = "{self.db_path}"
      busy_timeout = 5000
    }}
    radius_db = "radius"
    acct_table1 = "radacct"
    acct_table2 = "radacct"
    postauth_table = "radpostauth"
    authcheck_table = "radcheck"
    groupcheck_table = "radgroupcheck"
    authreply_table = "radreply"
    groupreply_table = "radgroupreply"
    usergroup_table = "radusergroup"
    delete_stale_sessions = yes
    pool {{
      start = {self.threads}
      min = {self.threads}
      max = {self.threads}
      spare = 0
      uses = 0
      retry_delay = 30
      lifetime = 0
      idle_timeout = 0
    }}
    client_table = "nas"
    group_attribute = "SQL-Group"
    $INCLUDE {SQLITE_CONFIG}/queries.conf
  }}
"""
        return text

    def site(self) -> str:
        store = "sql" if self.backend == "sql" else "files"
        accounting = "sql" if self.backend == "sql" else "detail"
        listeners = "".join(
            f"  listen {{\n    type = {kind}\n    ipaddr = {self.address}\n    port = {port}\n"
            f"    recv_buff = {self.recv_buff}\n  }}\n"
            for kind, port in (("auth", self.auth_port), ("acct", self.acct_port)))
        return f"""\
server default {{
{listeners}\
  authorize {{
    preprocess
    chap
    mschap
    {store}
    pap
  }}
  authenticate {{
    Auth-Type PAP {{
      pap
    }}
    Auth-Type CHAP {{
      chap
    }}
    Auth-Type MS-CHAP {{
      mschap
    }}
  }}
  preacct {{
    preprocess
    acct_unique
  }}
  accounting {{
    {accounting}
  }}
  post-auth {{
  }}
}}
"""

    def write_config(self) -> None:
        self.raddb.mkdir(parents=True, exist_ok=True)
        self.detail_path.parent.mkdir(parents=True, exist_ok=True)
        (self.raddb / "radiusd.conf").write_text(self.radiusd_conf())
        (self.raddb / "clients.conf").write_text(self.clients_conf())
        (self.raddb / "users").write_text(self.users_file())
        if self.backend == "sql":
            self.make_database()

    def make_database(self) -> None:
        """A fresh SQLite database with Debian's schema and ``users`` in radcheck."""
        self.db_path.unlink(missing_ok=True)
        conn = sqlite3.connect(self.db_path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")  # kept in the file: FreeRADIUS opens it so
            conn.executescript((SQLITE_CONFIG / "schema.sql").read_text())
            with conn:
                conn.executemany("INSERT INTO radcheck (username, attribute, op, value) "
                                 "VALUES (?, 'Cleartext-Password', ':=', ?)", list(self.users))
        finally:
            conn.close()

    # --- running

    def start(self, timeout: float = 15.0) -> FreeRADIUS:
        self.write_config()
        command = [FREERADIUS, "-f", "-d", str(self.raddb)]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        with (self.workdir / "freeradius.out").open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_death_signal())  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"freeradius exited ({code}):\n{self.log_tail()}")
            if status_server(self.address, self.auth_port, self.secret, 0.2) == ACCESS_ACCEPT:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"freeradius did not answer Status-Server within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> FreeRADIUS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines) + "\n" + _tail(self.workdir / "freeradius.out", lines)


def sqlite_driver_available() -> bool:
    """rlm_sql_sqlite and the schema and queries it needs are installed."""
    return SQLITE_DRIVER.exists() and (SQLITE_CONFIG / "schema.sql").exists() and (SQLITE_CONFIG / "queries.conf").exists()


def version() -> str:
    """"FreeRADIUS 3.2.1", or "FreeRADIUS ?"."""
    result = subprocess.run([FREERADIUS, "-v"], check=False, capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if "Version" in line:
            return "FreeRADIUS " + line.split("Version", 1)[1].split(",")[0].strip()
    return "FreeRADIUS ?"
