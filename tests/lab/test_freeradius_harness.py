"""A quick self-check of the RADIUS benchmark's machinery: tests/lab/freeradius.py starts a
FreeRADIUS that answers as configured, and bench/radload.py's requests and reply checks agree
with it (and with radclient). Skipped where FreeRADIUS is not installed or not run as root."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.radload import ACCESS_ACCEPT, ACCOUNTING_RESPONSE, Generator, Secret, response_ok
from tests.lab.freeradius import FREERADIUS, FreeRADIUS, sqlite_driver_available, status_server

if not Path(FREERADIUS).exists():
    pytest.skip(f"{FREERADIUS} is not installed", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("FreeRADIUS's lab runs as root", allow_module_level=True)

SECRET = "harness-secret"
USERS = [("alice", "short"), ("bob", "a password longer than two blocks of 16 bytes")]


@pytest.fixture(params=["files", "sql"])
def freeradius(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FreeRADIUS]:
    if request.param == "sql" and not sqlite_driver_available():
        pytest.skip("rlm_sql_sqlite is not installed")
    with FreeRADIUS(tmp_path, users=USERS, secret=SECRET, backend=request.param,
                    require_message_authenticator=True, threads=2) as server:
        yield server


def one(server: FreeRADIUS, kind: str, user: tuple[str, str], port: int | None = None) -> dict[str, int]:
    with Generator(("127.0.0.1", port or server.auth_port), SECRET, kind, [user], sockets=1, timeout=2.0) as gen:
        report = gen.run("burst", burst=1)
    assert report.invalid == 0
    return report.codes


def test_pap_accepts_the_right_passwords_and_rejects_a_wrong_one(freeradius: FreeRADIUS) -> None:
    for user in USERS:  # one and three blocks of hidden password (RFC 2865 §5.2)
        assert one(freeradius, "pap", user) == {"Access-Accept": 1}
    assert one(freeradius, "pap", ("alice", "wrong")) == {"Access-Reject": 1}


def test_status_server_is_answered_on_both_ports(freeradius: FreeRADIUS) -> None:
    assert status_server("127.0.0.1", freeradius.auth_port, SECRET) == ACCESS_ACCEPT
    assert status_server("127.0.0.1", freeradius.acct_port, SECRET) == ACCOUNTING_RESPONSE
    assert status_server("127.0.0.1", freeradius.auth_port, "another-secret") is None


def test_accounting_pairs_are_answered_and_written(freeradius: FreeRADIUS) -> None:
    with Generator(("127.0.0.1", freeradius.acct_port), SECRET, "acct", USERS, sockets=1) as gen:
        report = gen.run("saturate", duration=0.5, window=8)
    assert report.answered == report.sent > 0 and report.lost == report.invalid == 0
    assert report.pairs > 0
    if freeradius.backend == "files":
        assert freeradius.detail_path.read_text().count("Acct-Status-Type = ") == report.answered
    else:
        with sqlite3.connect(freeradius.db_path) as conn:
            rows, stopped = conn.execute("SELECT count(*), count(acctstoptime) FROM radacct").fetchone()
        assert (rows, stopped) == (report.answered - report.pairs, report.pairs)


def test_a_forged_reply_does_not_verify() -> None:
    secret, authenticator = Secret(b"s3cret"), os.urandom(16)
    header = bytes([ACCESS_ACCEPT, 7, 0, 20])
    genuine = hashlib.md5(header + authenticator + b"s3cret").digest()  # RFC 2865 §3, no attributes
    assert response_ok(header + genuine, authenticator, secret)
    assert not response_ok(header + bytes(16), authenticator, secret)
    assert not response_ok(header + genuine, os.urandom(16), secret)


@pytest.mark.skipif(shutil.which("radclient") is None, reason="radclient is not installed")
def test_radclient_agrees(freeradius: FreeRADIUS) -> None:
    name, password = USERS[1]
    result = subprocess.run(["radclient", "-x", f"127.0.0.1:{freeradius.auth_port}", "auth", SECRET],
                            input=f'User-Name = "{name}", User-Password = "{password}", Message-Authenticator = 0x00',
                            capture_output=True, text=True, timeout=10)
    assert "Received Access-Accept" in result.stdout, result.stdout + result.stderr
