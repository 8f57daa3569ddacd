"""The daemon as an operator runs it: started by the ``ispd`` script, driven by signals, read
through /metrics and /healthz."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from tests.lab.certs import issue
from tests.lab.ports import free_port, free_tcp_port
from tests.lab.process import IspdProcess, base_config, connections_out_of_descriptors, eventually, read_to_end


def test_ready_comes_only_after_the_listeners_are_bound(tmp_path: Path) -> None:
    with IspdProcess(tmp_path) as ispd:
        ispd.start(wait_ready=False)
        messages = ispd.wait_for("READY=1")
        # The moment READY arrives the port must already accept connections.
        host, port = ispd.config["metrics"]["listen"].rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=1).close()
        assert messages[-1].startswith("READY=1\nSTATUS=serving: metrics on 127.0.0.1:")
        assert ispd.http_get("/healthz")[0] == 200


def test_a_listener_that_cannot_bind_means_no_ready_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = base_config(tmp_path, metrics={"listen": f"127.0.0.1:{port}"})
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start(wait_ready=False)
            assert ispd.proc is not None
            assert ispd.proc.wait(15) == 1
            assert not any("READY=1" in m for m in ispd.drain_notifications())
            failed = ispd.log_events("daemon.start.failed")
            assert failed and failed[0]["error"] == f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_sigterm_stops_cleanly_within_the_grace(ispd: IspdProcess) -> None:
    started = time.monotonic()
    ispd.signal(signal.SIGTERM)
    ispd.wait_for("STOPPING=1")
    assert ispd.terminate() == 0
    assert time.monotonic() - started < ispd.config["daemon"]["shutdown_grace_seconds"]
    assert ispd.log_events("daemon.stopped")
    with socket.socket() as probe:
        host, port = ispd.config["metrics"]["listen"].rsplit(":", 1)
        assert probe.connect_ex((host, int(port))) != 0


def test_sigint_stops_too(ispd: IspdProcess) -> None:
    ispd.signal(signal.SIGINT)
    assert ispd.terminate() == 0


def test_sighup_with_a_broken_file_keeps_serving_on_the_old_config(ispd: IspdProcess) -> None:
    ispd.config_path.write_text("[metrics]\nlisten = 'nonsense'\n")
    # systemctl status shows the last STATUS=: the rejection's was replaced at once by READY=1's.
    assert "STATUS=reload rejected: config invalid, running on the previous one; serving: metrics on" \
        in ispd.reload()[-1]
    rejected = ispd.log_events("config.reload.rejected")
    assert rejected and "metrics.listen: 'nonsense' is not an address" in rejected[0]["error"]
    assert ispd.proc is not None and ispd.proc.poll() is None
    assert ispd.http_get("/healthz")[0] == 200
    ispd.config_path.write_text("this is [not toml\n")
    ispd.reload()
    assert len(ispd.log_events("config.reload.rejected")) == 2
    assert ispd.http_get("/metrics")[0] == 200


def test_sighup_applies_a_valid_change(ispd: IspdProcess) -> None:
    old_url = ispd.metrics_url
    new_listen = f"127.0.0.1:{free_tcp_port()}"
    config = dict(ispd.config)
    config["metrics"] = {"listen": new_listen}
    config["log"] = {"level": "warning", "format": "json"}
    ispd.write_config(config)
    ready = ispd.reload()
    assert f"STATUS=serving: metrics on {new_listen}" in ready[-1]
    assert ispd.http_get("/healthz")[0] == 200  # metrics_url follows the new config
    host, port = old_url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0, "the old address still answers"
    # The new log level took effect: the info line of the next reload is not written.
    before = len(ispd.log_events("config.reloaded"))
    ispd.reload()
    assert len(ispd.log_events("config.reloaded")) == before


def test_reload_that_a_service_refuses_keeps_that_service_as_it_was(ispd: IspdProcess) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        config = dict(ispd.config)
        config["metrics"] = {"listen": f"127.0.0.1:{squatter.getsockname()[1]}"}
        old = ispd.metrics_url
        ispd.write_config(config)
        assert "STATUS=reload not applied to metrics (config.reloaded in the log); serving:" in ispd.reload()[-1]
        refused = ispd.log_events("config.reload.service_refused")
        assert refused and refused[0]["service"] == "metrics"
        reloaded = ispd.log_events("config.reloaded")[-1]
        assert reloaded["refused"] == ["metrics"] and reloaded["level"] == "warning", reloaded
        ispd.config["metrics"] = {"listen": old.removeprefix("http://")}
        assert ispd.http_get("/healthz")[0] == 200


def test_reload_of_a_store_change_says_it_waits_for_a_restart(ispd: IspdProcess, tmp_path: Path) -> None:
    # config.reloaded was an info line, as if all was applied, while the daemon ran on its old store.
    config = dict(ispd.config)
    config["store"] = {**config["store"], "path": str(tmp_path / "elsewhere.db")}
    ispd.write_config(config)
    ispd.reload()
    assert "next restart" in ispd.log_events("config.reload.restart_needed")[-1]["detail"]
    reloaded = ispd.log_events("config.reloaded")[-1]
    assert reloaded["refused"] == ["store"] and reloaded["level"] == "warning", reloaded
    assert not (tmp_path / "elsewhere.db").exists()


def test_metrics_pass_promtool(ispd: IspdProcess) -> None:
    status, text = ispd.http_get("/metrics")
    assert status == 200
    assert "ispd_store_operation_duration_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_healthz_reports_each_service(ispd: IspdProcess) -> None:
    status, body = ispd.http_get("/healthz")
    report = json.loads(body)
    assert status == 200 and report["status"] == "ok"
    assert set(report["services"]) == {"store", "metrics", "admin"}
    assert ispd.http_get("/nope")[0] == 404


def test_changes_made_with_the_cli_reach_the_running_daemon(ispd: IspdProcess) -> None:
    ispd.cli("subscriber", "add", "alice")
    ispd.cli("subscriber", "suspend", "alice", "--reason", "unpaid")
    assert eventually(lambda: ispd.metric_value("ispd_events_published_total", {"event": "SubscriberSuspended"}))
    assert ispd.metric_value("ispd_events_published_total", {"event": "SubscriberAdded"}) == 1


def test_an_output_nobody_reads_stops_no_service_and_loses_no_line(tmp_path: Path) -> None:
    """From a bug hunt's note: each log line was written in the caller, and with the daemon's
    stdout a pipe nobody read (a stalled journald, ``ispd run | less`` paused), the write blocked
    once the pipe was full: the event loop stopped and every service with it. Here the pipe
    holds one page, less than the start-up's own lines: before, READY never came."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    with IspdProcess(tmp_path, output=write_end) as ispd:
        try:
            ispd.start()
            os.close(write_end)
            assert ispd.http_get("/healthz")[0] == 200
            ispd.cli("subscriber", "add", "alice")
            assert eventually(lambda: ispd.metric_value("ispd_events_published_total", {"event": "SubscriberAdded"}))
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                reader = pool.submit(read_to_end, read_end)
                assert ispd.terminate() == 0
                text = reader.result(30)
        finally:
            with contextlib.suppress(OSError):
                os.close(write_end)
            os.close(read_end)
    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert events[0] == "daemon.starting" and events[-1] == "daemon.stopped" and "log.lines_lost" not in events


def test_watchdog_pings_when_systemd_asks(tmp_path: Path) -> None:
    with IspdProcess(tmp_path, env={"WATCHDOG_USEC": "200000"}) as ispd:
        ispd.start()
        ispd.wait_for("WATCHDOG=1", timeout=2)
        ispd.wait_for("WATCHDOG=1", timeout=2)


def _exchange(address: tuple[str, int], payload: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(address, timeout=10, source_address=(source, 0)) as conn:
        conn.sendall(payload)
        with contextlib.suppress(OSError):  # a server refusing the connection may have answered and closed already
            conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
        return reply


def test_bad_http_requests_get_the_right_answer(ispd: IspdProcess) -> None:
    host, port = ispd.config["metrics"]["listen"].rsplit(":", 1)
    address = (host, int(port))
    cases = [
        (b"\x00\xff" * 100 + b"\r\n\r\n", b"HTTP/1.1 400 "),
        (b"GET\r\n\r\n", b"HTTP/1.1 400 "),
        (b"\r\n", b"HTTP/1.1 400 "),
        (b"GET /metrics HTTP/9\r\n\r\n", b"HTTP/1.1 400 "),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 405 "),
        (b"GET /nope HTTP/1.1\r\n\r\n", b"HTTP/1.1 404 "),
        (b"GET /healthz HTTP/1.0\n\n", b"HTTP/1.1 200 "),  # bare LF line ends
        (b"GET " + b"A" * 70000 + b" HTTP/1.1\r\n\r\n", b""),  # over the head limit: closed
        (b"GET /metrics HTTP/1.1\r\n" + b"X-Filler: y\r\n" * 2000 + b"\r\n", b""),
        (b"half a request", b""),
    ]
    for payload, expected in cases:
        reply = _exchange(address, payload)
        assert reply.startswith(expected) and (expected or reply == b""), (payload[:40], reply[:80])
    assert b"Allow: GET, HEAD" in _exchange(address, b"DELETE /metrics HTTP/1.1\r\n\r\n")
    head = _exchange(address, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")


def test_idle_connections_from_one_host_cannot_lock_others_out(ispd: IspdProcess) -> None:
    host, port = ispd.config["metrics"]["listen"].rsplit(":", 1)
    address = (host, int(port))
    idle = [socket.create_connection(address, timeout=5, source_address=("127.0.0.1", 0)) for _ in range(8)]
    try:
        for conn in idle:
            conn.sendall(b"GET /metr")  # and never more
        time.sleep(0.2)
        # The same host is told at once that it holds too many connections...
        assert _exchange(address, b"GET /healthz HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 503 ")
        # ...while another host is served.
        assert _exchange(address, b"GET /healthz HTTP/1.1\r\n\r\n", source="127.0.0.2").startswith(b"HTTP/1.1 200 ")
    finally:
        for conn in idle:
            conn.close()
    # The idle ones time out; then the first host is served again.
    assert eventually(lambda: ispd.http_get("/healthz")[0] == 200, timeout=10)


def test_stopping_with_clients_connected_logs_no_traceback(ispd: IspdProcess) -> None:
    host, port = ispd.config["metrics"]["listen"].rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(5)]
    for conn in idle:
        conn.sendall(b"GET /metr")
    time.sleep(0.2)
    assert ispd.terminate() == 0
    for conn in idle:
        conn.close()
    for line in ispd.log_text().splitlines():
        json.loads(line)  # every line is a JSON log record, no stray traceback


def test_daemon_and_cli_write_at_once_without_lock_errors(ispd: IspdProcess) -> None:
    """Admin CLIs writing in parallel with each other and with the daemon's own store work."""
    script = "for i in $(seq 1 15); do {ispd} subscriber add $0-$i -c {cfg} >/dev/null || exit 1; done"
    procs = [
        subprocess.Popen(["bash", "-c", script.format(ispd=ispd_path(), cfg=ispd.config_path), f"w{n}"],
                         stderr=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    # Meanwhile the daemon reads the store (health checks, the audit relay) continuously.
    while any(p.poll() is None for p in procs):
        assert ispd.http_get("/healthz")[0] == 200
    for proc in procs:
        assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    listed = ispd.cli("subscriber", "list", "--json").stdout

    assert len(json.loads(listed)) == 45
    assert eventually(lambda: ispd.metric_value("ispd_events_published_total", {"event": "SubscriberAdded"}) == 45)


def ispd_path() -> str:
    from tests.lab.process import ISPD

    return ISPD


def test_sighup_can_turn_a_service_off_and_on(ispd: IspdProcess) -> None:
    host, port = ispd.config["metrics"]["listen"].rsplit(":", 1)
    config = dict(ispd.config)
    config["metrics"] = {**config["metrics"], "enabled": False}
    config["admin"] = {"socket": ""}  # the admin API off too: nothing left
    ispd.write_config(config)
    assert "STATUS=serving: no services enabled" in ispd.reload()[-1]
    with socket.socket() as probe:
        assert probe.connect_ex((host, int(port))) != 0
    config["metrics"] = {**config["metrics"], "enabled": True}
    ispd.write_config(config)
    assert f"STATUS=serving: metrics on {host}:{port}" in ispd.reload()[-1]
    assert ispd.http_get("/healthz")[0] == 200


def _hold_write_lock(path: Path) -> object:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")  # a fresh store needs this lock to migrate
    return conn


def test_hangup_during_start_up_is_applied_once_serving(tmp_path: Path) -> None:
    config = base_config(tmp_path, store={"busy_timeout_seconds": 30})
    lock = _hold_write_lock(Path(config["store"]["path"]))
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start(wait_ready=False)
        time.sleep(0.7)  # now waiting for the store's lock
        ispd.signal(signal.SIGHUP)
        time.sleep(0.3)
        assert ispd.proc is not None and ispd.proc.poll() is None, "SIGHUP during start-up killed the daemon"
        lock.rollback()  # type: ignore[attr-defined]
        messages = ispd.wait_for("READY=1", timeout=15)
        messages += ispd.wait_for("RELOADING=1")
        assert "RELOADING=1" in "\n".join(messages)
        assert ispd.terminate() == 0


def test_term_during_start_up_stops_cleanly(tmp_path: Path) -> None:
    config = base_config(tmp_path, store={"busy_timeout_seconds": 2})
    lock = _hold_write_lock(Path(config["store"]["path"]))
    try:
        with IspdProcess(tmp_path, config) as ispd:
            ispd.start(wait_ready=False)
            time.sleep(0.7)
            ispd.signal(signal.SIGTERM)
            assert ispd.proc is not None and ispd.proc.wait(10) == 0
            assert not any("READY=1" in m for m in ispd.drain_notifications())
            assert ispd.log_events("daemon.start.aborted")
    finally:
        lock.rollback()  # type: ignore[attr-defined]


def test_hangup_after_term_does_not_reload(ispd: IspdProcess) -> None:
    ispd.signal(signal.SIGTERM)
    ispd.signal(signal.SIGHUP)
    assert ispd.terminate() == 0
    notifications = ispd.drain_notifications()
    after_stopping = notifications[next(i for i, m in enumerate(notifications) if "STOPPING=1" in m):]
    assert not any("READY=1" in m or "RELOADING=1" in m for m in after_stopping), notifications
    assert not ispd.log_events("config.reloaded")


def test_a_second_daemon_on_the_same_store_exits_at_once_and_the_first_serves_on(tmp_path: Path) -> None:
    """Their sockets set apart, two daemons on one store both reached READY and both answered
    every DHCP client. The store's lock stops the second at its start, naming the first; the
    first's DNS worker process (started by fork and exec) does not hold the lock."""
    import dns.message
    import dns.query

    store = tmp_path / "ispd.db"
    dns_port = free_port()
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    first_config = base_config(first_dir, store={"path": str(store)}, dns={
        "enabled": True, "listen": [f"127.0.0.1:{dns_port}"], "processes": 2,
        "local_records": ["portal.isp.test. 300 A 198.18.0.10"]})
    with IspdProcess(first_dir, first_config) as first, \
            IspdProcess(second_dir, base_config(second_dir, store={"path": str(store)})) as second:
        first.start(timeout=60)  # two processes to start on a machine that may be busy
        assert first.proc is not None
        worker = eventually(lambda: first.worker_pids(2), timeout=30)[0]
        lock = f"{store}.lock"
        assert Path(lock).read_text() == f"{first.proc.pid}\n"
        assert not any(os.readlink(fd) == lock for fd in Path(f"/proc/{worker}/fd").iterdir())

        second.start(wait_ready=False)
        assert second.proc is not None
        assert second.proc.wait(30) == 1
        assert not any("READY=1" in m for m in second.drain_notifications())
        failed = second.log_events("daemon.start.failed")
        assert failed and failed[0]["error"] == (
            f"another ispd (pid {first.proc.pid}) is running on the store {store} (it holds {lock}); "
            "stop it first: two daemons on one store would both answer every client")

        assert first.proc.poll() is None
        assert first.http_get("/healthz")[0] == 200
        reply = dns.query.udp(dns.message.make_query("portal.isp.test.", "A"), "127.0.0.1", port=dns_port, timeout=5)
        assert [item.address for rrset in reply.answer for item in rrset] == ["198.18.0.10"]
        assert first.terminate() == 0

        # Gone with its holder: the next daemon on the store starts.
        second.start(timeout=60)
        assert Path(lock).read_text() == f"{second.proc.pid}\n"
        assert second.terminate() == 0


def test_a_start_after_a_kill_says_the_last_daemon_did_not_stop(tmp_path: Path) -> None:
    """kill -9 (a crash, a power cut) leaves the daemon's PID in the store's lock file, which a
    clean stop empties. The next start went on without a word of it (the control socket's
    leftover was the only trace, at info); it now says that the last daemon ended without
    stopping, naming it. A start after a clean stop says nothing of the kind."""
    with IspdProcess(tmp_path, base_config(tmp_path)) as ispd:
        ispd.start()
        assert ispd.proc is not None
        killed = ispd.proc.pid
        ispd.kill()
        ispd.start()
        found = ispd.log_events("daemon.unclean_stop_found")
        assert [event["previous_pid"] for event in found] == [killed]
        assert found[0]["lock"] == f"{tmp_path / 'ispd.db'}.lock"
        assert ispd.terminate() == 0
        ispd.start()
        assert len(ispd.log_events("daemon.unclean_stop_found")) == 1
        assert ispd.terminate() == 0


def test_a_certificate_near_its_end_is_warned_of_and_its_expiry_exported(tmp_path: Path) -> None:
    """A certificate that expires while ispd runs for months breaks every client that checks it,
    and nothing said so: the daemon warns at start and at each reload (a renewal is what a
    reload usually brings), and exports the expiry for an alert."""
    soon = datetime.now(UTC) + timedelta(days=5)
    certificates = issue(tmp_path / "tls", "mx.isp.example", not_after=soon)
    config = base_config(tmp_path, mail={
        "enabled": True, "domains": ["isp.example"], "maildir_root": str(tmp_path / "mail"),
        "queue_directory": str(tmp_path / "queue"), "listen_mx": [f"127.0.0.1:{free_tcp_port()}"],
        "certificate": str(certificates.certificate), "private_key": str(certificates.private_key)})
    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        [warning] = ispd.log_events("tls.certificate.expiring")
        assert warning["service"] == "mail" and warning["level"] == "warning"
        assert warning["problem"].startswith(f"the certificate {certificates.certificate} expires on ")
        metric = (f'ispd_tls_certificate_expiry_timestamp_seconds{{file="{certificates.certificate}",'
                  f'service="mail"}} ')
        [line] = [line for line in ispd.http_get("/metrics")[1].splitlines() if line.startswith(metric)]
        assert abs(float(line.removeprefix(metric)) - soon.timestamp()) < 1
        renewed = issue(tmp_path / "renewed", "mx.isp.example")  # (years)
        os.replace(renewed.certificate, certificates.certificate)
        os.replace(renewed.private_key, certificates.private_key)
        ispd.reload()
        assert len(ispd.log_events("tls.certificate.expiring")) == 1  # renewed: nothing more to say
        [line] = [line for line in ispd.http_get("/metrics")[1].splitlines() if line.startswith(metric)]
        assert float(line.removeprefix(metric)) > soon.timestamp() + 300 * 86400


def test_the_certificate_expiry_speaks_of_the_certificate_served_not_the_file_on_disk(tmp_path: Path) -> None:
    """A renewal written to disk whose reload the mail service refuses (here the new key is not
    there yet) leaves the old certificate served. The metric and the warnings read the file
    again at every scrape and check, and reported the renewal's dates: the "certificate
    expired" alert stayed silent while every client got the expired one."""
    soon = datetime.now(UTC) + timedelta(days=5)
    certificates = issue(tmp_path / "tls", "mx.isp.example", not_after=soon)
    port = free_tcp_port()
    config = base_config(tmp_path, mail={
        "enabled": True, "domains": ["isp.example"], "maildir_root": str(tmp_path / "mail"),
        "queue_directory": str(tmp_path / "queue"), "listen_mx": [f"127.0.0.1:{port}"],
        "certificate": str(certificates.certificate), "private_key": str(certificates.private_key)})
    metric = f'ispd_tls_certificate_expiry_timestamp_seconds{{file="{certificates.certificate}",service="mail"}} '

    def exported(ispd: IspdProcess) -> float:
        [line] = [line for line in ispd.http_get("/metrics")[1].splitlines() if line.startswith(metric)]
        return float(line.removeprefix(metric))

    def served() -> str:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.starttls(context=context)
            der = cast(ssl.SSLSocket, client.sock).getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()

    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        assert len(ispd.log_events("tls.certificate.expiring")) == 1
        before = served()
        renewed = issue(tmp_path / "renewed", "mx.isp.example")  # (years)
        os.replace(renewed.certificate, certificates.certificate)  # the key not yet
        assert abs(exported(ispd) - soon.timestamp()) < 1  # not loaded: still the old one's
        ispd.reload()
        [refused] = ispd.log_events("config.reload.service_refused")
        assert refused["service"] == "mail" and "does not belong to the certificate" in refused["error"]
        assert served() == before
        assert abs(exported(ispd) - soon.timestamp()) < 1
        assert len(ispd.log_events("tls.certificate.expiring")) == 2  # still served: said again
        os.replace(renewed.private_key, certificates.private_key)
        ispd.reload()
        assert served() != before
        assert exported(ispd) > soon.timestamp() + 300 * 86400
        assert len(ispd.log_events("tls.certificate.expiring")) == 2


def test_a_certificate_file_two_services_share_is_exported_as_the_one_that_refused_a_reload_serves(
        tmp_path: Path) -> None:
    """One certificate for the host, served by DoT and by mail: the metric's entry for the file
    was DoT's alone. A renewal whose reload mail refused (another change of it needs a restart)
    while DNS took it was exported with the renewal's dates, so the expiry alert cleared while
    465, STARTTLS and IMAPS kept serving the old certificate to its end."""
    soon = datetime.now(UTC) + timedelta(days=5)
    certificates = issue(tmp_path / "tls", "host.isp.example", not_after=soon)
    files = {"certificate": str(certificates.certificate), "private_key": str(certificates.private_key)}
    (tmp_path / "root.hints").write_text(".  3600000  NS  a.root.invalid.\na.root.invalid.  3600000  A  127.0.0.254\n")
    port = free_tcp_port()
    config = base_config(
        tmp_path,
        dns={"enabled": True, "listen": [f"127.0.0.1:{free_port()}"], "allow": ["127.0.0.0/8"],
             "root_hints": str(tmp_path / "root.hints"), "resolver": {"do_ipv6": False},
             "dot": {"listen": [f"127.0.0.1:{free_tcp_port()}"], **files}},
        mail={"enabled": True, "domains": ["isp.example"], "maildir_root": str(tmp_path / "mail"),
              "queue_directory": str(tmp_path / "queue"), "listen_mx": [f"127.0.0.1:{port}"], **files})

    def exported(ispd: IspdProcess) -> dict[str, float]:
        prefix = "ispd_tls_certificate_expiry_timestamp_seconds{"
        return {line.split("service=", 1)[1].split('"')[1]: float(line.rsplit(" ", 1)[1])
                for line in ispd.http_get("/metrics")[1].splitlines() if line.startswith(prefix)}

    with IspdProcess(tmp_path, config) as ispd:
        ispd.start()
        assert exported(ispd) == {"dns.dot": pytest.approx(soon.timestamp(), abs=1)}
        renewed = issue(tmp_path / "renewed", "host.isp.example")  # (years)
        os.replace(renewed.certificate, certificates.certificate)
        os.replace(renewed.private_key, certificates.private_key)
        changed = json.loads(json.dumps(config))
        changed["mail"]["maildir_root"] = str(tmp_path / "elsewhere")  # (needs a restart: refused)
        ispd.write_config(changed)
        ispd.reload()
        [refused] = ispd.log_events("config.reload.service_refused")
        assert refused["service"] == "mail"
        # Mail serves the old certificate still: the file's entry says so, under mail's name.
        assert exported(ispd) == {"mail": pytest.approx(soon.timestamp(), abs=1)}
        assert ispd.log_events("tls.certificate.expiring")[-1]["service"] == "mail"
        ispd.write_config(config)
        ispd.reload()  # taken by both: the renewal's dates
        assert exported(ispd)["dns.dot"] > soon.timestamp() + 300 * 86400


def test_the_open_files_limit_is_raised_to_the_hard_one_and_a_low_one_warned_of(tmp_path: Path) -> None:
    """Started from a shell (soft limit 1,024), a resolver's upstream sockets ran out under a
    flood of slow names while the hard limit allowed far more: ispd takes what the hard limit
    allows, and says when even that is low."""
    with IspdProcess(tmp_path, wrapper=["prlimit", "--nofile=1024:8192"]) as ispd:
        ispd.start()
        assert ispd.proc is not None
        limits = Path(f"/proc/{ispd.proc.pid}/limits").read_text()
        [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
        assert line.split()[3:5] == ["8192", "8192"]
        [warning] = ispd.log_events("daemon.open_files.low")
        assert warning["limit"] == 8192 and warning["level"] == "warning"


def test_out_of_descriptors_the_metrics_listener_rests_says_so_and_answers_the_waiting(tmp_path: Path) -> None:
    """From a bug hunt under `prlimit --nofile=256`: 300 idle connections to the metrics
    listener from 50 addresses, 69 of them (and a scrape from another address) were closed at
    once with no answer, no log line and no count: the loop's server (libuv) accepted and closed
    them out of sight. Now the listener rests, says so, counts it, and the waiting are answered."""
    with IspdProcess(tmp_path, base_config(tmp_path)) as ispd:
        ispd.start()
        assert ispd.proc is not None
        host, port = ispd.config["metrics"]["listen"].rsplit(":", 1)
        waiting = connections_out_of_descriptors(ispd.proc.pid, [(host, int(port))], 12, lambda i: f"127.0.{i + 1}.9",
                                                 b"GET /healthz HTTP/1.1\r\nHost: ispd\r\n\r\n")
        try:
            waiting[-1].settimeout(10)
            assert waiting[-1].recv(100).startswith(b"HTTP/1.1 200 "), "waited, not closed"
        finally:
            for sock in waiting:
                sock.close()
        assert (ispd.metric_value("ispd_metrics_accept_failures_total") or 0.0) > 0
        assert ispd.log_events("metrics.accept_failed")


def test_config_warnings_are_logged_once_at_each_start_and_reload_whatever_runs_the_service(tmp_path: Path) -> None:
    """Config.warnings, logged by the main process alone: once at the start and once at every
    reload, also with the service in processes of its own (none of them says it again)."""
    dns = {"enabled": True, "listen": [f"127.0.0.1:{free_port()}"], "allow": ["0.0.0.0/0"], "processes": 2}
    with IspdProcess(tmp_path, base_config(tmp_path, dns=dns)) as ispd:
        ispd.start()
        [warning] = ispd.log_events("dns.open_resolver")
        assert "open resolver" in warning["detail"] and warning["level"] == "warning", warning
        ispd.reload()
        eventually(lambda: ispd.log_events("config.reloaded"))
        assert len(ispd.log_events("dns.open_resolver")) == 2
