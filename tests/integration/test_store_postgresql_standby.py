"""Two nodes' daemons on one PostgreSQL store: the second, started with ``daemon.standby``, waits
as the first's hot standby (metrics and /healthz answer, RADIUS does not) and takes the store over
when the first dies or stops: radclient, the NAS, is answered by it, and a session the first
opened is closed through it. Both daemons run as processes on this host, each with a ``path``,
control socket and listeners of its own, as they would on two hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from ispd.config import load_config
from ispd.store.postgresql import _DAEMON_LOCK as DAEMON_LOCK
from ispd.supervisor import STANDBY_POLL_SECONDS, standby_grace_seconds
from tests.lab import toml
from tests.lab.ports import free_tcp_port, free_udp_port
from tests.lab.postgresql import PostgresCluster
from tests.lab.process import ISPD, IspdProcess, base_config, eventually
from tests.lab.radclient import Reply, radclient, require_radclient

psycopg = pytest.importorskip("psycopg")

SECRET = "testing123"
LOOPBACK = "127.0.0.1"


class Node(IspdProcess):
    def __init__(self, workdir: Path, url: str, *, standby: bool = True) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        radius = {"enabled": True, "reject_delay_seconds": 0,
                  "listen_auth": [f"{LOOPBACK}:{free_udp_port(LOOPBACK)}"],
                  "listen_acct": [f"{LOOPBACK}:{free_udp_port(LOOPBACK)}"],
                  "client": [{"name": "bng", "address": "127.0.0.0/8", "secret": SECRET}]}
        config = base_config(workdir, store={"backend": "postgresql", "url": url}, radius=radius,
                             daemon={"standby": standby})
        config["metrics"]["listen"] = f"{LOOPBACK}:{free_tcp_port(LOOPBACK)}"
        super().__init__(workdir, config)

    def login(self, password: str = "alice-pw") -> Reply:
        return radclient(self.config["radius"]["listen_auth"][0], "auth", SECRET,
                         f"User-Name = alice, User-Password = {password}, Message-Authenticator = 0x00",
                         timeout=1.0, retries=1)

    def account(self, session: str, status: str) -> Reply:
        return radclient(self.config["radius"]["listen_acct"][0], "acct", SECRET,
                         f"User-Name = alice, Acct-Session-Id = {session}, NAS-IP-Address = 127.0.0.1, "
                         f"Acct-Status-Type = {status}", timeout=1.0, retries=1)

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.http_get("/healthz")
        return status, json.loads(body)

    def status_lines(self) -> list[str]:
        return [line for message in self.notifications for line in message.split("\n") if line.startswith("STATUS=")]


def holder_name(node: Node) -> str:
    assert node.proc is not None
    return f"ispd {socket.gethostname()} pid {node.proc.pid}"


@pytest.fixture
def url(postgres_cluster: PostgresCluster) -> Any:
    require_radclient()
    url = postgres_cluster.create_database()
    yield url
    postgres_cluster.drop_database(url)


def assert_standing_by(node: Node, active: Node) -> None:
    assert f"STATUS=standby: {holder_name(active)} holds the store; taking over when it stops" \
        in node.status_lines(), node.notifications
    [standby] = node.log_events("daemon.standby")
    assert standby["holder"] == holder_name(active), standby
    assert node.health() == (200, {"status": "ok", "services": {
        "daemon": {"ok": True, "detail": f"standby: {holder_name(active)} holds the store"}}})
    assert node.metric_value("ispd_daemon_standby") == 1
    assert node.login().code is None  # RADIUS is not listening: the NAS turns to the active one
    # A command for a service the active node runs is sent there, not told "is [radius] enabled?".
    refused = node.cli("session", "disconnect", "1", check=False)
    assert refused.returncode == 1, refused
    assert f"this ispd is a standby: {holder_name(active)} holds the store and runs its services; run " \
           "'radius.session.disconnect' on that node" in refused.stderr, refused.stderr


def assert_serving(node: Node) -> None:
    status, health = node.health()
    assert status == 200 and set(health["services"]) >= {"store", "radius", "metrics"}, health
    assert node.metric_value("ispd_daemon_standby") == 0
    assert node.login().code == "Access-Accept", node.log_text()[-3000:]
    assert node.login("wrong").code == "Access-Reject"


def start_active_and_standby(a: Node, b: Node) -> None:
    """A takes the free store and serves alice; B finds it held and stands by."""
    a.start()
    assert a.log_events("daemon.standby") == []
    a.cli("plan", "add", "home", "--credential-policy", "cleartext")
    a.cli("subscriber", "add", "alice", "--plan", "home", "--password-stdin", input="alice-pw\n")
    # The daemon hears of the CLI's subscriber at its next look at the audit log (every 0.5 s):
    # a login asked at once was rejected one run in five.
    eventually(lambda: a.login().code == "Access-Accept", timeout=10)
    assert_serving(a)
    b.start()
    assert_standing_by(b, a)
    assert b.log_events("daemon.ready") == []


def test_a_standby_takes_over_when_the_active_daemon_dies_and_again_when_it_stops(url: str, tmp_path: Path) -> None:
    with Node(tmp_path / "a", url) as a, Node(tmp_path / "b", url) as b:
        start_active_and_standby(a, b)
        assert a.account("s-1", "Start").code == "Accounting-Response"

        # A dies without a word (its host lost power): the server ends its session, and with it
        # the lock; B takes the store and serves, its state loaded from the store.
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        b.wait_for("READY=1", timeout=20)
        [takeover] = b.log_events("daemon.takeover")
        assert takeover["previous"] == holder_name(a), takeover
        assert b.status_lines()[-1].startswith("STATUS=serving: "), b.status_lines()
        assert_serving(b)
        assert "standby" not in b.cli("session", "disconnect", "999999", check=False).stderr  # B runs RADIUS now
        # The session A opened is B's to close.
        assert b.account("s-1", "Stop").code == "Accounting-Response"
        shown = json.loads(b.cli("subscriber", "show", "alice", "--json").stdout)
        [session] = [s for s in shown["sessions"] if s["acct_session_id"] == "s-1"]
        assert session["stopped_at"] is not None, session

        # A comes back (systemd restarts it) and stands by for B; B stops, and A takes over.
        killed = a.proc.pid
        a.start()
        assert_standing_by(a, b)
        # Its lock file named the killed daemon: said once, as a lone daemon's start says it.
        [unclean] = a.log_events("daemon.unclean_stop_found")
        assert unclean["previous_pid"] == killed, unclean
        assert b.terminate() == 0
        a.wait_for("READY=1", timeout=20)
        assert_serving(a)
        assert len(a.log_events("daemon.unclean_stop_found")) == 1
        assert "Traceback" not in a.log_text() + b.log_text()


def test_a_daemon_whose_lock_another_took_stops(url: str, tmp_path: Path) -> None:
    """Only the lock's session ends (an administrator's pg_terminate_backend, a connection the
    network cut) and another takes the lock first (here the test, as a standby would): the
    daemon that had it, alive and serving, stops at its next check rather than answer beside the
    new holder."""
    with Node(tmp_path / "a", url) as a, psycopg.connect(url, autocommit=True,
                                                         application_name="ispd elsewhere pid 1") as conn:
        a.start()
        a.signal(signal.SIGSTOP)  # its keeper must not take the lock again before the test does
        [(terminated,)] = conn.execute(
            "SELECT pg_terminate_backend(l.pid) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND (l.classid::bigint << 32) + l.objid::bigint = %s", (DAEMON_LOCK,)).fetchall()
        assert terminated
        eventually(lambda: conn.execute("SELECT pg_try_advisory_lock(%s)", (DAEMON_LOCK,)).fetchone()[0],
                   timeout=5, interval=0.01)
        a.signal(signal.SIGCONT)
        assert a.proc is not None and a.proc.wait(10) == 1, a.log_text()[-3000:]
        [lost] = a.log_events("daemon.lock.lost")
        assert "another ispd (ispd elsewhere pid 1) is running on" in lost["error"], lost
        assert a.log_events("daemon.stopped"), a.log_text()[-3000:]


def test_a_server_restart_is_no_failover(tmp_path: Path) -> None:
    """The restart ends the active daemon's session and frees its lock; its keeper takes it again,
    and the standby, which saw the server start anew, leaves it that turn."""
    require_radclient()
    with PostgresCluster() as cluster:
        url = cluster.create_database()
        with Node(tmp_path / "a", url) as a, Node(tmp_path / "b", url) as b:
            start_active_and_standby(a, b)
            cluster.restart()
            try:
                eventually(lambda: a.log_events("daemon.lock.retaken"), timeout=20, interval=0.2)
            except AssertionError:
                raise AssertionError(f"A:\n{a.log_text()[-4000:]}\nB:\n{b.log_text()[-4000:]}") from None
            # Past the standby's grace, the lock is still the active daemon's.
            time.sleep(standby_grace_seconds(load_config(b.config_path)) + 2 * STANDBY_POLL_SECONDS)
            assert b.log_events("daemon.takeover") == [], b.log_text()[-3000:]
            assert a.log_events("daemon.lock.lost") == []
            assert a.proc is not None and a.proc.poll() is None
            assert b.health() == (200, {"status": "ok", "services": {
                "daemon": {"ok": True, "detail": f"standby: {holder_name(a)} holds the store"}}})
            assert_serving(a)


def test_a_backend_crash_is_no_failover(tmp_path: Path) -> None:
    """A backend killed (the OOM killer, a crash): PostgreSQL ends every session and starts
    afresh, but its start time stays. The standby's probe lost its session too, so it leaves the
    lock to the active daemon's keeper, round after round."""
    require_radclient()
    with PostgresCluster() as cluster:
        url = cluster.create_database()
        with Node(tmp_path / "a", url) as a, Node(tmp_path / "b", url) as b:
            start_active_and_standby(a, b)
            for round_ in range(1, 4):
                victim = eventually(lambda: _connected(url), timeout=20, interval=0.2)
                os.kill(victim.info.backend_pid, signal.SIGKILL)
                victim.close()
                try:
                    eventually(lambda n=round_: len(a.log_events("daemon.lock.retaken")) >= n, timeout=20, interval=0.2)
                except AssertionError:
                    raise AssertionError(f"A:\n{a.log_text()[-4000:]}\nB:\n{b.log_text()[-4000:]}") from None
            time.sleep(standby_grace_seconds(load_config(b.config_path)) + 2 * STANDBY_POLL_SECONDS)
            assert b.log_events("daemon.takeover") == [], b.log_text()[-3000:]
            assert a.log_events("daemon.lock.lost") == [] and a.proc is not None and a.proc.poll() is None
            assert_serving(a)


def _connected(url: str) -> Any:
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error:  # the server is starting afresh
        return None


def test_a_daemon_without_standby_is_still_refused(url: str, tmp_path: Path) -> None:
    with Node(tmp_path / "a", url) as a, Node(tmp_path / "b", url, standby=False) as b:
        a.start()
        b.start(wait_ready=False)
        assert b.proc is not None and b.proc.wait(15) == 1, b.log_text()
        [failed] = b.log_events("daemon.start.failed")
        assert f"another ispd ({holder_name(a)}) is running on" in failed["error"], failed
        assert b.log_events("daemon.standby") == []


def test_standby_needs_a_postgresql_store(tmp_path: Path) -> None:
    path = tmp_path / "ispd.toml"
    toml.write(path, base_config(tmp_path, daemon={"standby": True}))
    result = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result
    assert 'daemon.standby needs [store] backend = "postgresql"' in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_a_standby_that_cannot_reach_the_store_says_so_and_stands_by_again(url: str, tmp_path: Path) -> None:
    # B reaches the server through a directory of its own that links to the server's socket
    # directory: removing the link cuts B off while A keeps the lock.
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    via = Path(tempfile.mkdtemp(prefix="ispd-pgvia-")) / "socket"
    query["host"] = [str(via)]
    b_url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
    try:
        via.symlink_to(Path(query_host(url)))
        with Node(tmp_path / "a", url) as a, Node(tmp_path / "b", b_url) as b:
            start_active_and_standby(a, b)
            via.unlink()
            assert b.proc is not None
            with psycopg.connect(url, autocommit=True) as conn:  # its probe's session, which it keeps
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                             (holder_name(b),))
            eventually(lambda: b.health()[0] == 503, timeout=10, interval=0.2)
            detail = b.health()[1]["services"]["daemon"]["detail"]
            assert detail.startswith("standby, but the store cannot be reached: cannot connect to "), detail
            assert b.log_events("daemon.standby.store_unreachable"), b.log_text()[-3000:]
            via.symlink_to(Path(query_host(url)))
            eventually(lambda: b.health()[0] == 200, timeout=10, interval=0.2)
            assert b.log_events("daemon.standby.store_reachable"), b.log_text()[-3000:]
            assert b.log_events("daemon.takeover") == [] and b.login().code is None
            a.kill()
            b.wait_for("READY=1", timeout=20)
            assert_serving(b)
    finally:
        shutil.rmtree(via.parent, ignore_errors=True)


def query_host(url: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["host"][0]


def test_a_standby_older_than_the_schema_says_it_cannot_take_over(url: str, tmp_path: Path) -> None:
    # The active node was upgraded first and migrated the store (a newer ispd's migration, as
    # its row in schema_migrations): B would take the lock and fail its start, so it is no
    # standby; its /healthz must not say "ok" until the day A dies and nothing serves.
    with Node(tmp_path / "a", url) as a, Node(tmp_path / "b", url) as b:
        start_active_and_standby(a, b)
        with psycopg.connect(url, autocommit=True) as conn:
            newest = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
            conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, 'newer', 0)",
                         (newest + 1,))
        eventually(lambda: b.health()[0] == 503, timeout=10, interval=0.2)
        detail = b.health()[1]["services"]["daemon"]["detail"]
        assert detail == (f"standby: {holder_name(a)} holds the store, but this ispd cannot take it over: the store "
                          f"is at schema version {newest + 1}, newer than this ispd knows ({newest}); upgrade ispd"), \
            detail
        [refused] = b.log_events("daemon.standby.cannot_take_over")
        assert refused["level"] == "error" and "upgrade ispd" in refused["reason"], refused
        assert b.metric_value("ispd_daemon_standby") == 1
        # The newer ispd's migration is undone (this test's): B can take over again, and says so.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version = %s", (newest + 1,))
        eventually(lambda: b.health()[0] == 200, timeout=10, interval=0.2)
        assert b.log_events("daemon.standby.can_take_over"), b.log_text()[-3000:]
        a.kill()
        b.wait_for("READY=1", timeout=20)
        assert_serving(b)
