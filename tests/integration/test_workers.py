"""A service in a worker process of its own (RADIUS with ``process = "own"``): started, watched,
restarted, stopped with the daemon, its metrics and commands reachable through the main process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.lab.fakenas import COA_REQUEST, FakeNas
from tests.lab.ports import free_udp_port
from tests.lab.process import ISPD, IspdProcess, base_config, eventually
from tests.lab.radclient import radclient, require_radclient

SECRET = "testing123"
STATUS = "Message-Authenticator = 0x00"
HEALTH_POLL_SECONDS = 6  # (ispd.workers.HEALTH_INTERVAL_SECONDS, and a second)


def config(tmp_path: Path, **radius: object) -> dict[str, object]:
    section = {
        "enabled": True,
        "process": "own",
        "listen_auth": [f"127.0.0.1:{free_udp_port()}"],
        "listen_acct": [f"127.0.0.1:{free_udp_port()}"],
        "client": [{"name": "lab", "address": "127.0.0.0/8", "secret": SECRET}],
    }
    section.update(radius)
    return base_config(tmp_path, radius=section)


def test_radius_runs_in_its_own_process_and_answers_through_it(tmp_path: Path) -> None:
    require_radclient()
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        [worker] = ispd.worker_pids()
        assert worker != ispd.proc.pid if ispd.proc else False
        auth = ispd.config["radius"]["listen_auth"][0]  # type: ignore[index]
        assert radclient(auth, "status", SECRET, STATUS).code == "Access-Accept"
        # Its metrics come out of the main process's /metrics, each family once.
        _, text = ispd.http_get("/metrics")
        assert text.count("# TYPE ispd_radius_requests_total counter") == 1
        assert ispd.metric_value("ispd_radius_requests_total", {"type": "status-server"}) == 1
        status, health = ispd.http_get("/healthz")
        assert status == 200 and json.loads(health)["services"]["radius"]["ok"]
        # Its log lines say which worker wrote them.
        assert any(event.get("worker") == "radius" for event in ispd.log_events("radius.started"))
        # Its commands reach it through the main control socket.
        result = ispd.cli("session", "disconnect", "999", check=False)
        assert result.returncode == 1 and "no session #999" in result.stderr


def with_new_secret(ispd: IspdProcess) -> tuple[str, dict[str, Any]]:
    """The worker's auth address, and the daemon's config with the NAS's secret changed."""
    changed = ispd.config
    changed["radius"]["client"][0]["secret"] = "a-new-secret"
    return changed["radius"]["listen_auth"][0], changed


def test_sighup_reaches_the_worker_and_a_refusal_is_reported(tmp_path: Path) -> None:
    require_radclient()
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        auth, changed = with_new_secret(ispd)
        ispd.write_config(changed)
        ispd.reload()
        assert radclient(auth, "status", "a-new-secret", STATUS).code == "Access-Accept"
        assert not ispd.log_events("config.reload.service_refused")
        changed["radius"]["process"] = "main"  # type: ignore[index]
        ispd.write_config(changed)
        ispd.reload()
        [refused] = ispd.log_events("config.reload.service_refused")
        assert refused["service"] == "radius" and "needs a restart" in refused["error"]
        assert len(ispd.worker_pids()) == 1
        # A refusal of the worker's own reads as the service's, once: from a bug hunt, the log said
        # "radius: radius: eap: ..." in a worker, where the main process says "radius: eap: ...".
        changed["radius"]["process"] = "own"  # type: ignore[index]
        changed["radius"]["listen_auth"] = ["127.0.0.1:0"]  # type: ignore[index]
        ispd.write_config(changed)
        ispd.reload()
        refused = ispd.log_events("config.reload.service_refused")[-1]
        assert refused["error"].startswith("radius: a change of listen addresses"), refused


def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    require_radclient()
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        [first] = ispd.worker_pids()
        os.kill(first, signal.SIGKILL)
        eventually(lambda: ispd.log_events("worker.exited"), timeout=10)
        eventually(lambda: ispd.log_events("worker.restarted"), timeout=15)
        [second] = ispd.worker_pids()
        assert second != first
        serves_again(ispd)


def test_the_workers_counters_do_not_fall_when_it_restarts(tmp_path: Path) -> None:
    """Prometheus reads a counter that falls as a reset: a restarted worker's counts go on from
    where its last life left them, and stay, as last seen, while it is down."""
    require_radclient()
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        auth = ispd.config["radius"]["listen_auth"][0]  # type: ignore[index]
        assert radclient(auth, "status", SECRET, STATUS).code == "Access-Accept"
        status_servers = {"type": "status-server"}
        assert ispd.metric_value("ispd_radius_requests_total", status_servers) == 1
        [first] = ispd.worker_pids()
        os.kill(first, signal.SIGKILL)
        eventually(lambda: ispd.log_events("worker.exited"), timeout=10)
        assert ispd.metric_value("ispd_radius_requests_total", status_servers) == 1  # down: as last seen
        eventually(lambda: ispd.log_events("worker.restarted"), timeout=15)
        serves_again(ispd)
        assert ispd.metric_value("ispd_radius_requests_total", status_servers) >= 2


def test_a_command_while_the_worker_is_down_says_so(tmp_path: Path) -> None:
    """Not "cannot reach the ispd daemon ... is it running?": the daemon is running, its worker is
    not; the same for a reload that cannot reach it."""
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        [first] = ispd.worker_pids()
        os.kill(first, signal.SIGKILL)
        eventually(lambda: ispd.log_events("worker.exited"), timeout=10)
        result = ispd.cli("session", "disconnect", "999", check=False)
        assert result.returncode == 1, result
        assert "radius is not running at the moment" in result.stderr, result.stderr
        assert "is it running?" not in result.stderr
        ispd.reload()
        [refused] = ispd.log_events("config.reload.service_refused")
        assert "its worker process is not running" in refused["error"], refused
        eventually(lambda: ispd.log_events("worker.restarted"), timeout=15)
        result = ispd.cli("session", "disconnect", "999", check=False)
        assert result.returncode == 1 and "no session #999" in result.stderr, result.stderr


def test_a_plan_changed_while_the_worker_is_down_reaches_the_open_sessions(tmp_path: Path) -> None:
    """The worker started again goes on in the audit log from where the last one was: a plan
    changed in between still sends its CoA (the daemon ran all along; nothing said otherwise)."""
    require_radclient()
    with FakeNas(secret=SECRET.encode()) as nas:
        client = {"name": "bng", "address": "127.0.0.0/8", "secret": SECRET, "kind": "mikrotik", "coa_port": nas.port}
        with IspdProcess(tmp_path, config(tmp_path, client=[client])) as ispd:
            ispd.start()
            ispd.cli("plan", "add", "slow", "--download-kbps", "1000", "--upload-kbps", "500")
            ispd.cli("plan", "add", "fast", "--download-kbps", "50000", "--upload-kbps", "9000")
            ispd.cli("subscriber", "add", "erin", "--plan", "slow", "--password-stdin", input="erin-pw\n")
            acct = ispd.config["radius"]["listen_acct"][0]  # type: ignore[index]
            assert radclient(acct, "acct", SECRET, "User-Name = erin, Acct-Session-Id = E1, NAS-IP-Address = "
                             "127.0.0.1, Acct-Status-Type = Start").code == "Accounting-Response"
            time.sleep(HEALTH_POLL_SECONDS)  # the main process has heard where the worker's relay is
            [first] = ispd.worker_pids()
            os.kill(first, signal.SIGKILL)
            eventually(lambda: ispd.log_events("worker.exited"), timeout=10)
            ispd.cli("subscriber", "set-plan", "erin", "fast")
            assert not ispd.log_events("worker.restarted"), "the change was not made while the worker was down"
            eventually(lambda: ispd.log_events("worker.restarted"), timeout=15)
            [coa] = nas.wait_for(1)
            assert coa.code == COA_REQUEST and coa.first(44) == b"E1"


def test_a_restarted_worker_runs_the_config_the_daemon_runs_not_the_files(tmp_path: Path) -> None:
    """A reload the worker refused leaves it on the old config, also when it starts again."""
    require_radclient()
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        auth, changed = with_new_secret(ispd)
        missing = str(tmp_path / "missing.pem")
        changed["radius"]["eap"] = {"certificate": missing, "private_key": missing}  # type: ignore[index]
        ispd.write_config(changed)
        ispd.reload()
        [refused] = ispd.log_events("config.reload.service_refused")
        assert refused["service"] == "radius", refused
        assert radclient(auth, "status", SECRET, STATUS).code == "Access-Accept"
        [first] = ispd.worker_pids()
        os.kill(first, signal.SIGKILL)
        eventually(lambda: [pid for pid in ispd.worker_pids() if pid != first], timeout=15)
        eventually(lambda: ispd.http_get("/healthz")[0] == 200, timeout=15)
        assert radclient(auth, "status", SECRET, STATUS).code == "Access-Accept"
        snapshot = tmp_path / "control.sock.radius.config.json"
        assert oct(snapshot.stat().st_mode & 0o777) == "0o600"  # it holds the secrets


def test_a_change_that_needs_a_restart_does_not_reach_a_restarted_worker(tmp_path: Path) -> None:
    """A new store path waits for the daemon's restart: a worker started again meanwhile must
    not open another store than the main process's."""
    require_radclient()
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        changed = ispd.config
        changed["store"]["path"] = str(tmp_path / "other.db")
        ispd.write_config(changed)
        ispd.reload()
        assert ispd.log_events("config.reload.restart_needed")
        [first] = ispd.worker_pids()
        os.kill(first, signal.SIGKILL)
        eventually(lambda: [pid for pid in ispd.worker_pids() if pid != first], timeout=15)
        eventually(lambda: ispd.http_get("/healthz")[0] == 200, timeout=15)
        serves_again(ispd)
        assert not (tmp_path / "other.db").exists()


def test_the_daemon_stops_its_workers_and_cleans_up(tmp_path: Path) -> None:
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        [worker] = ispd.worker_pids()
        socket_path = tmp_path / "control.sock.radius"  # beside the daemon's control socket
        snapshot = tmp_path / "control.sock.radius.config.json"  # the config it runs
        assert socket_path.is_socket() and snapshot.is_file()
        assert ispd.terminate() == 0
    assert not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]
    assert not socket_path.exists() and not snapshot.exists()


def test_a_worker_socket_left_by_a_killed_daemon_is_taken_over(tmp_path: Path) -> None:
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        [worker] = ispd.worker_pids()
        os.kill(worker, signal.SIGKILL)  # both killed outright: nothing cleans up
        ispd.kill()
        eventually(lambda: not Path(f"/proc/{worker}").exists(), timeout=10)
        assert (tmp_path / "control.sock.radius").exists()
        ispd.start()  # the leftover sockets are stale, not live daemons: replaced
        assert len(ispd.worker_pids()) == 1


def test_a_worker_that_cannot_start_stops_the_daemon_with_its_reason(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with IspdProcess(tmp_path, config(tmp_path, listen_auth=[f"127.0.0.1:{port}"])) as ispd:
            ispd.start(wait_ready=False)
            assert ispd.proc is not None and ispd.proc.wait(30) == 1
            [failed] = ispd.log_events("daemon.start.failed")
            assert failed["error"] == f"radius: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize("process", ["main", "own", "auto"])
def test_every_placement_serves(tmp_path: Path, process: str) -> None:
    require_radclient()
    with IspdProcess(tmp_path, config(tmp_path, process=process)) as ispd:
        ispd.start()
        own = process == "own" or (process == "auto" and len(os.sched_getaffinity(0)) >= 4)
        assert bool(ispd.worker_pids()) == own
        auth = ispd.config["radius"]["listen_auth"][0]  # type: ignore[index]
        assert radclient(auth, "status", SECRET, STATUS).code == "Access-Accept"


def test_a_stuck_worker_is_killed_and_started_again(tmp_path: Path) -> None:
    require_radclient()
    with IspdProcess(tmp_path, config(tmp_path)) as ispd:
        ispd.start()
        [stuck] = ispd.worker_pids()
        os.kill(stuck, signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, _ = ispd.http_get("/metrics", timeout=10)  # answered without the worker's part
            assert status == 200 and time.monotonic() - started < 6
            eventually(lambda: not json.loads(ispd.http_get("/healthz")[1])["services"]["radius"]["ok"], timeout=15)
            eventually(lambda: ispd.log_events("worker.stuck"), timeout=30)
            eventually(lambda: ispd.log_events("worker.restarted"), timeout=20)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stuck, signal.SIGKILL)
        serves_again(ispd)


def serves_again(ispd: IspdProcess) -> None:
    """The restarted worker answers and the daemon's health says so."""
    auth = ispd.config["radius"]["listen_auth"][0]  # type: ignore[index]
    eventually(lambda: radclient(auth, "status", SECRET, STATUS).code == "Access-Accept", timeout=10)
    eventually(lambda: json.loads(ispd.http_get("/healthz")[1])["services"]["radius"]["ok"], timeout=10)


def test_a_worker_busy_with_operators_commands_is_not_taken_for_stuck(tmp_path: Path) -> None:
    """A bulk disconnect (15 `ispd session disconnect` at once, their NAS not answering: each
    holds its connection for coa_timeout_seconds x coa_attempts) fills the worker's control
    socket beside the main process's long poll for events. The health polls were refused "busy",
    counted as unanswered, and after three the worker was killed as stuck and started again, with
    every CoA it had in hand: a worker that answers, even "busy", is not stuck."""
    require_radclient()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent_nas:  # takes CoA, never answers
        silent_nas.bind(("127.0.0.1", 0))
        client = {"name": "bng", "address": "127.0.0.0/8", "secret": SECRET, "kind": "mikrotik",
                  "coa_port": silent_nas.getsockname()[1]}
        with IspdProcess(tmp_path, config(tmp_path, client=[client], coa_timeout_seconds=8.0, coa_attempts=3)) as ispd:
            ispd.start()
            [worker] = ispd.worker_pids()
            acct = ispd.config["radius"]["listen_acct"][0]  # type: ignore[index]
            for n in range(1, 16):
                assert radclient(acct, "acct", SECRET, f"User-Name = u{n}, Acct-Session-Id = S{n}, NAS-IP-Address = "
                                 "127.0.0.1, Acct-Status-Type = Start").code == "Accounting-Response"
            commands = [subprocess.Popen([ISPD, "session", "disconnect", str(n), "-c", str(ispd.config_path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in range(1, 16)]
            try:
                for command in commands:
                    command.wait(timeout=60)
            finally:
                for command in commands:
                    with contextlib.suppress(ProcessLookupError):
                        command.kill()
            assert not ispd.log_events("worker.stuck")
            assert ispd.worker_pids() == [worker]
