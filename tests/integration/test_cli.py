"""The admin CLI as an operator uses it, on the store of a config file."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ispd.store.sqlite import Migration, connect, migrate, schema_version, sqlite_migrations
from tests.lab import toml
from tests.lab.process import ISPD, base_config


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return toml.write(tmp_path / "ispd.toml", base_config(tmp_path))


def ispd(config_path: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ISPD, *args, "-c", str(config_path)], capture_output=True, text=True, input=input,
                          timeout=60)


def ok(config_path: Path, *args: str, input: str | None = None) -> str:
    result = ispd(config_path, *args, input=input)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_round_trip(config_path: Path) -> None:
    first = ispd(config_path, "plan", "add", "home-100", "--download-kbps", "100000", "--upload-kbps", "20000",
                 "--max-sessions", "1", "--mail-quota", "2G", "--credential-policy", "nt-hash")
    assert first.stdout == "added plan home-100 (#1)\n"
    assert "did not exist: this is a new, empty store" in first.stderr  # (a mistyped store.path shows)
    assert ispd(config_path, "plan", "list").stderr == ""
    plan = json.loads(ok(config_path, "plan", "show", "home-100", "--json"))
    assert plan["mail_quota_bytes"] == 2 * 1024**3 and plan["credential_policy"] == "nt-hash"
    assert json.loads(ok(config_path, "plan", "list", "--json"))[0]["name"] == "home-100"

    out = ok(config_path, "subscriber", "add", "alice", "--plan", "home-100", "--name", "Alice Example",
             "--account-ref", "ACC-1", "--password-stdin", input="pa55word\n")
    assert out == "added subscriber alice (#1)\n"
    ok(config_path, "subscriber", "add", "bob")
    listed = json.loads(ok(config_path, "subscriber", "list", "--json"))
    assert [(s["username"], s["status"]) for s in listed] == [("alice", "active"), ("bob", "active")]
    table = ok(config_path, "subscriber", "list").splitlines()
    assert table[0].split() == ["ID", "USERNAME", "STATUS", "PLAN", "NAME", "ACCOUNT"]
    assert table[1].split()[:4] == ["1", "alice", "active", "home-100"]

    assert ok(config_path, "subscriber", "suspend", "alice", "--reason", "nonpayment") == "alice is now suspended\n"
    assert [s["username"] for s in json.loads(ok(config_path, "subscriber", "list", "--status", "suspended",
                                                  "--json"))] == ["alice"]
    show = ok(config_path, "subscriber", "show", "alice")
    assert "status        suspended (nonpayment)" in show
    assert "credentials   verifier, nt-hash (policy nt-hash)" in show
    assert "cli:" in show and "subscriber.suspended" in show and "pa55word" not in show
    assert "subscriber.password_set forms=verifier,nt-hash" in show
    detail = json.loads(ok(config_path, "subscriber", "show", "1", "--json"))
    assert detail["subscriber"]["status_reason"] == "nonpayment"
    assert detail["plan"]["name"] == "home-100"
    assert detail["credentials"]["forms"] == ["verifier", "nt-hash"]
    assert [a["action"] for a in detail["audit"]] == ["subscriber.suspended", "subscriber.password_set",
                                                      "subscriber.added"]
    assert "pa55word" not in json.dumps(detail)

    assert ok(config_path, "subscriber", "resume", "alice") == "alice is now active\n"
    assert ok(config_path, "subscriber", "close", "alice", "--reason", "moved away") == "alice is now closed\n"
    assert "status        closed (moved away)" in ok(config_path, "subscriber", "show", "alice")
    assert ok(config_path, "subscriber", "resume", "alice") == "alice is now active\n"
    out = ok(config_path, "subscriber", "passwd", "bob", "--generate-password")
    generated = out.splitlines()[0].removeprefix("password: ")
    assert len(generated) == 16 and out.splitlines()[1] == "password set; stored forms: verifier"
    assert ok(config_path, "subscriber", "delete", "bob").startswith("deleted subscriber bob (#2)")
    assert [s["username"] for s in json.loads(ok(config_path, "subscriber", "list", "--json"))] == ["alice"]


def test_password_forms_follow_the_policy_and_verify(config_path: Path, tmp_path: Path) -> None:
    import asyncio

    from ispd.config import load_config
    from ispd.credentials import check_verifier, nt_hash
    from ispd.store import open_store

    ok(config_path, "subscriber", "add", "carol", "--credential-policy", "cleartext")
    ok(config_path, "subscriber", "passwd", "carol", "--password-stdin", input="clientPass\n")

    async def stored():  # type: ignore[no-untyped-def]
        store = await open_store(load_config(config_path).store)
        try:
            return await store.get_credentials("carol")
        finally:
            await store.close()

    credentials = asyncio.run(stored())
    assert credentials.verifier is not None and check_verifier(credentials.verifier, "clientPass")
    assert credentials.nt_hash == nt_hash("clientPass") and credentials.cleartext == "clientPass"


def test_leases_are_listed(config_path: Path) -> None:
    import asyncio

    from ispd.config import load_config
    from ispd.store import open_store
    from ispd.store.models import Lease, LeaseState

    ok(config_path, "subscriber", "add", "alice")

    async def grant() -> None:
        store = await open_store(load_config(config_path).store)
        now = time.time()
        try:
            alice = await store.get_subscriber("alice")
            await store.record_lease(Lease("198.18.0.20", LeaseState.BOUND, now, now + 600, hw_address="02:00:00:00:00:20",
                                           hostname="cpe", subscriber_id=alice.id, circuit_id="olt1/1/1"), event="granted")
            await store.record_lease(Lease("198.18.0.21", LeaseState.EXPIRED, now - 900, now - 300), event="expired")
        finally:
            await store.close()

    asyncio.run(grant())
    current = json.loads(ok(config_path, "lease", "list", "--json"))
    assert [(le["address"], le["hostname"], le["circuit_id"]) for le in current] == [("198.18.0.20", "cpe", "olt1/1/1")]
    assert len(json.loads(ok(config_path, "lease", "list", "--all", "--json"))) == 2
    assert json.loads(ok(config_path, "lease", "list", "--subscriber", "alice", "--json"))[0]["address"] == "198.18.0.20"
    table = ok(config_path, "lease", "list").splitlines()
    assert table[1].split()[0] == "198.18.0.20" and "alice" in table[1]
    assert "198.18.0.20 bound until" in ok(config_path, "subscriber", "show", "alice")


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (("subscriber", "show", "nobody"), None, 1, "ispd: no subscriber 'nobody'\n"),
        (("subscriber", "suspend", "nobody"), None, 1, "ispd: no subscriber 'nobody'\n"),
        (("subscriber", "add", "x", "--plan", "nope"), None, 1, "ispd: no plan 'nope'\n"),
        (("plan", "show", "nope"), None, 1, "ispd: no plan 'nope'\n"),
        (("subscriber", "passwd", "nobody", "--password-stdin"), "pw\n", 1, "ispd: no subscriber 'nobody'\n"),
        (("subscriber", "add", "y", "--password-stdin"), "\n", 1, "ispd: the password is empty\n"),
        (("subscriber", "passwd", "dup"), None, 1, "ispd: no password given: use --password-stdin or --generate-password\n"),
        (("subscriber", "show", "²"), None, 1, "ispd: no subscriber '²'\n"),
        (("plan", "show", "²"), None, 1, "ispd: no plan '²'\n"),
        (("subscriber", "show", "99999999999999999999"), None, 1, "ispd: no subscriber '99999999999999999999'\n"),
    ],
)
def test_failures_are_one_clear_line(config_path: Path, args: tuple[str, ...], stdin: str | None, code: int,
                                     message: str) -> None:
    ok(config_path, "subscriber", "add", "dup")
    result = ispd(config_path, *args, input=stdin)
    assert (result.returncode, result.stderr) == (code, message)


def test_a_refused_password_adds_nothing(config_path: Path) -> None:
    result = ispd(config_path, "subscriber", "add", "carol", "--password-stdin", input="")
    assert (result.returncode, result.stderr) == (1, "ispd: the password is empty\n")
    assert json.loads(ok(config_path, "subscriber", "list", "--json")) == []
    ok(config_path, "subscriber", "add", "carol", "--password-stdin", input="fine\n")  # the name is still free


def test_generated_password_is_part_of_the_json(config_path: Path) -> None:
    data = json.loads(ok(config_path, "subscriber", "add", "dave", "--generate-password", "--json"))
    assert data["username"] == "dave" and len(data["password"]) == 16


def test_non_utf8_arguments_are_one_line_errors(config_path: Path) -> None:
    import os

    ok(config_path, "plan", "list")  # the store exists (no note that it is new)
    for args in (["subscriber", "add", b"a\xff".decode("utf-8", "surrogateescape")],
                 ["subscriber", "show", b"a\xff".decode("utf-8", "surrogateescape")]):
        result = subprocess.run([ISPD, *args, "-c", str(config_path)], capture_output=True, timeout=60,
                                env={**os.environ, "LC_ALL": "C.UTF-8"})
        assert result.returncode in (1, 2) and b"Traceback" not in result.stderr, result.stderr
        assert result.stderr.count(b"\n") == 1 or result.returncode == 2, result.stderr


def test_a_password_that_is_not_utf8_is_refused_and_adds_nothing(config_path: Path) -> None:
    result = subprocess.run([ISPD, "subscriber", "add", "y", "--password-stdin", "-c", str(config_path)],
                            input=b"p\xffw\n", capture_output=True, timeout=60)
    assert (result.returncode, result.stderr) == (1, b"ispd: the password is not valid UTF-8\n")
    assert json.loads(ok(config_path, "subscriber", "list", "--json")) == []


def test_a_uid_without_a_passwd_entry_is_recorded_by_number(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import pwd

    from ispd import cli

    unknown = next(uid for uid in range(54321, 60000) if uid not in {p.pw_uid for p in pwd.getpwall()})
    monkeypatch.setattr(os, "getuid", lambda: unknown)
    assert cli.actor() == f"cli:uid:{unknown}"
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setenv("SUDO_USER", "alice")
    assert cli.actor() == "cli:alice via sudo"


def test_conflicts_are_reported(config_path: Path) -> None:
    ok(config_path, "subscriber", "add", "dup")
    result = ispd(config_path, "subscriber", "add", "dup")
    assert (result.returncode, result.stderr) == (1, "ispd: subscriber 'dup' already exists\n")
    result = ispd(config_path, "subscriber", "resume", "dup")
    assert (result.returncode, result.stderr) == (1, "ispd: subscriber 'dup' is already active\n")


@pytest.mark.parametrize(
    "args",
    [
        ("subscriber",),
        ("subscriber", "frob"),
        ("plan", "add", "p", "--download-kbps", "fast"),
        ("plan", "add", "p", "--download-kbps", "-1"),
        ("plan", "add", "p", "--mail-quota", "lots"),
        ("subscriber", "add", " padded"),
        ("subscriber", "add", "bad\x01name"),
        ("subscriber", "list", "--status", "sleepy"),
        ("subscriber", "add", "z", "--password-stdin", "--generate-password"),
        ("plan", "add", "p", "--download-kbps", "99999999999999999999"),
        ("plan", "add", "p", "--mail-quota", "99999999T"),
        ("plan", "add", "p", "--download-kbps", "²"),
        ("subscriber", "add", "evil\u202egnp.exe"),
        ("subscriber", "add", "zero\u200bwidth"),
        ("subscriber", "suspend", "x", "--reason", "line\u2028break"),
        # A span backwards (the store refused it, exit 1) or from the future to now:
        ("usage", "--from", "2026-12-01", "--to", "2026-11-01"),
        ("who", "198.18.0.10", "--from", "2026-12-01", "--to", "2026-11-01"),
        ("who", "198.18.0.10", "--from", "9999-01-01"),
        ("dns", "nta", "add", "broken.example", "--for", "\u00b2d"),  # (a digit to isdigit(), not to int())
    ],
)
def test_bad_command_lines_exit_2_without_traceback(config_path: Path, args: tuple[str, ...]) -> None:
    result = ispd(config_path, *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.strip()
    assert "invalid literal" not in result.stderr  # (Python's words, not the operator's)


def test_admin_commands_report_a_bad_config_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\nbogus = 1\n")
    result = ispd(bad, "subscriber", "list")
    assert (result.returncode, result.stderr) == (2, f"ispd: {bad}: store.bogus: unknown key (known keys here: backend, "
                                                     "busy_timeout_seconds, group_commit_max_batch, history_retention_days, path, url)\n")


def test_output_into_a_closed_pipe_is_quiet(config_path: Path) -> None:
    import asyncio

    from ispd.config import load_config
    from ispd.store import open_store

    async def many() -> None:
        store = await open_store(load_config(config_path).store)
        try:
            await asyncio.gather(*(store.add_subscriber(f"user-{i:05}", actor="t") for i in range(3000)))
        finally:
            await store.close()

    asyncio.run(many())  # far more than a pipe buffer of output
    # `true` exits at once without reading: the CLI's writes hit a closed pipe.
    result = subprocess.run(f"{ISPD} subscriber list -c {config_path} | true; echo ${{PIPESTATUS[0]}}", shell=True,
                            executable="/bin/bash", capture_output=True, text=True)
    assert (result.stdout, result.stderr) == ("0\n", "")


def test_a_store_created_by_root_belongs_to_the_owner_of_its_directory(tmp_path: Path) -> None:
    """Files root's CLI creates beside the store (the WAL) must stay writable by the daemon's user."""
    import asyncio
    import os
    import shutil
    import tempfile

    from ispd.config import load_config
    from ispd.store import open_store

    # A place the unprivileged user can reach (pytest's tmp_path is inside root's 0700 directory).
    top = Path(tempfile.mkdtemp(prefix="ispd-owner-", dir="/var/tmp"))
    try:
        top.chmod(0o755)
        state = top / "state"
        state.mkdir()
        os.chown(state, 65534, 65534)  # nobody: stands in for the ispd system user
        config_path = toml.write(tmp_path / "ispd.toml", base_config(tmp_path, store={"path": str(state / "ispd.db")}))
        ok(config_path, "subscriber", "add", "alice")

        async def files_while_open() -> list[tuple[str, int]]:
            store = await open_store(load_config(config_path).store)  # as root, like the CLI
            try:
                await store.add_subscriber("bob", actor="t")
                return sorted((p.name, p.stat().st_uid) for p in state.iterdir())
            finally:
                await store.close()

        assert asyncio.run(files_while_open()) == [("ispd.db", 65534), ("ispd.db-shm", 65534), ("ispd.db-wal", 65534)]
    finally:
        shutil.rmtree(top)


def test_check_config_refuses_one_local_zone_configured_twice(tmp_path: Path) -> None:
    """As the start does ("configured twice"): check-config passed it before."""
    (tmp_path / "corp.zone").write_text("$TTL 300\n@ SOA ns h 1 2 3 4 5\nwww A 198.18.0.1\n")
    zones = [{"name": "corp.test", "file": "corp.zone"}, {"name": "corp.test.", "file": "corp.zone"}]
    config = base_config(tmp_path, dns={"enabled": True, "listen": ["127.0.0.1:0"], "local_zone": zones})
    path = tmp_path / "ispd.toml"
    path.write_text(toml.dumps(config))
    failed = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert failed.returncode == 2 and "corp.test. is configured twice" in failed.stderr, failed.stderr


def test_check_config_reads_the_dns_files(tmp_path: Path) -> None:
    """A missing root hints file fails check-config as it would fail the start; a bad policy
    record only warns (the daemon skips it)."""
    policy = tmp_path / "rpz.zone"
    policy.write_text("$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n"
                      "blocked.example CNAME .\nnot a record\n")
    config = base_config(tmp_path, dns={
        "enabled": True, "listen": ["127.0.0.1:0"], "root_hints": str(tmp_path / "missing.hints"),
        "policy_zone": [{"name": "rpz.test", "file": "rpz.zone"}]})
    path = tmp_path / "ispd.toml"
    path.write_text(toml.dumps(config))
    failed = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert failed.returncode == 2
    assert "missing.hints: cannot read the root hints" in failed.stderr
    assert "rpz.zone:4:" in failed.stderr and "warning" in failed.stderr

    config["dns"].pop("root_hints")  # the shipped IANA hints
    path.write_text(toml.dumps(config))
    passed = subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert passed.returncode == 0, passed.stderr
    assert "rpz.zone:4:" in passed.stderr


def check_config(tmp_path: Path, dns: dict[str, object]) -> tuple[Path, subprocess.CompletedProcess[str]]:
    path = toml.write(tmp_path / "ispd.toml", base_config(tmp_path, dns={
        "enabled": True, "listen": ["127.0.0.1:0"], **dns}))
    return path, subprocess.run([ISPD, "check-config", "-c", str(path)], capture_output=True, text=True, timeout=30)


def test_check_config_reads_the_trust_anchors(tmp_path: Path) -> None:
    """A trust anchor file that does not parse fails check-config with its line; private root
    hints without anchors of their own only warn (the IANA anchors would not match them)."""
    (tmp_path / "root.ds").write_text(". IN DS 20326 8 2 E06D44B8\n. IN DS twenty 8 2 AB\n")
    (tmp_path / "lab.hints").write_text(". 3600 NS a.root.lab.\na.root.lab. 3600 A 127.0.0.9\n")
    _, failed = check_config(tmp_path, {"dnssec": {"trust_anchor_file": "root.ds"}})
    assert failed.returncode == 2
    assert "dnssec.trust_anchor_file" in failed.stderr and "root.ds: line 2" in failed.stderr, failed.stderr
    _, warned = check_config(tmp_path, {"root_hints": "lab.hints"})
    assert warned.returncode == 0, warned.stderr
    assert "dnssec.trust_anchor_file is unset" in warned.stderr
    _, quiet = check_config(tmp_path, {"root_hints": "lab.hints", "dnssec": {"validation": False}})
    assert quiet.returncode == 0 and "trust_anchor" not in quiet.stderr


def test_check_config_warns_of_a_root_on_loopback_below_which_nothing_is_asked(tmp_path: Path) -> None:
    """A private root on this host is asked (the operator gave it), but what it refers to on
    loopback is not while do_not_query_localhost is on: check-config says so, and how to change it."""
    (tmp_path / "lab.hints").write_text(". 3600 NS a.root.lab.\na.root.lab. 3600 A 127.0.0.9\n")
    no_validation = {"validation": False}
    _, warned = check_config(tmp_path, {"root_hints": "lab.hints", "dnssec": no_validation})
    assert warned.returncode == 0, warned.stderr
    assert "root_hints name servers at 127.0.0.9" in warned.stderr
    assert "resolver.do_not_query_localhost = false" in warned.stderr
    _, quiet = check_config(tmp_path, {"root_hints": "lab.hints", "dnssec": no_validation,
                                       "resolver": {"do_not_query_localhost": False}})
    assert quiet.returncode == 0 and "do_not_query" not in quiet.stderr, quiet.stderr
    _, inner = check_config(tmp_path, {"root_hints": "lab.hints", "dnssec": no_validation,
                                       "resolver": {"do_not_query_localhost": False,
                                                    "do_not_query_addresses": ["127.0.0.0/24"]}})
    assert "root_hints name servers at 127.0.0.9" in inner.stderr
    _, bad = check_config(tmp_path, {"resolver": {"do_not_query_addresses": ["10.0.0.0/33"]}})
    assert bad.returncode == 2 and "do_not_query_addresses" in bad.stderr, bad.stderr


@pytest.mark.parametrize(("allow", "said"), [
    (["0.0.0.0/0"], "every IPv4 address"),
    (["0.0.0.0/1", "128.0.0.0/1", "::1/128"], "every IPv4 address"),
    (["::/0"], "every IPv6 address"),
    (["2000::/4", "3000::/4", "0.0.0.0/0"], "every IPv4 address and every IPv6 address"),
])
def test_check_config_warns_of_an_open_resolver(tmp_path: Path, allow: list[str], said: str) -> None:
    """An `allow` that lets the whole Internet ask makes ispd the open resolver it is never to be
    (README): check-config says so, as the daemon does when it starts."""
    _, warned = check_config(tmp_path, {"allow": allow})
    assert warned.returncode == 0, warned.stderr
    assert f"dns: warning: allow lets {said} ask: ispd is an open resolver" in warned.stderr, warned.stderr
    _, quiet = check_config(tmp_path, {"allow": ["198.51.100.0/24", "10.0.0.0/8", "2001:db8::/32", "::1/128"]})
    assert quiet.returncode == 0 and "open resolver" not in quiet.stderr, quiet.stderr


def test_check_config_names_what_is_wrong_with_a_forward_zone(tmp_path: Path) -> None:
    path, failed = check_config(tmp_path, {"forward_zone": [
        {"name": "corp.internal", "servers": [], "stub": True},
        {"name": "x..internal", "servers": ["10.0.0.1"], "stub": "maybe"},
        {"servers": ["10.0.0.1"]},
    ]})
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.splitlines() == [
        f"ispd: {path}: dns.forward_zone.0.servers: List should have at least 1 item after validation, not 0 (got [])",
        f"ispd: {path}: dns.forward_zone.1.name: 'x..internal' is not a domain name: empty label in 'x..internal'",
        f"ispd: {path}: dns.forward_zone.1.stub: Input should be a valid boolean, unable to interpret input (got 'maybe')",
        f"ispd: {path}: dns.forward_zone.2.name: required key is missing",
    ], failed.stderr

    path, twice = check_config(tmp_path, {"forward_zone": [
        {"name": "corp.internal", "servers": ["10.0.0.1"]},
        {"name": "Corp.Internal.", "servers": ["10.0.0.2"], "stub": True},
    ]})
    assert twice.returncode == 2
    assert twice.stderr == f"ispd: {path}: dns: forward_zone 'corp.internal.' is configured twice\n"


@pytest.mark.parametrize(("dns", "key", "value"), [
    ({"forward_zone": [{"name": "corp.internal", "servers": ["ns1.corp.example"]}]},
     "dns.forward_zone.0.servers.0", "ns1.corp.example"),
    ({"forward_zone": [{"name": "corp.internal", "servers": ["ns1.corp.example@5353"]}]},
     "dns.forward_zone.0.servers.0", "ns1.corp.example@5353"),
    ({"forward_zone": [{"name": "corp.internal", "servers": ["10.0.0.53:99999"]}]},
     "dns.forward_zone.0.servers.0", "10.0.0.53:99999"),
    ({"allow": ["subscribers"]}, "dns.allow.0", "subscribers"),
], ids=["forwarder-name", "forwarder-name-with-port", "forwarder-port", "allow"])
def test_check_config_says_plainly_that_an_address_is_not_one(tmp_path: Path, dns: dict[str, object], key: str,
                                                              value: str) -> None:
    """An IPv4-or-IPv6 field: one line naming the key and the value, not one per IP version
    with pydantic's validator names in the key path."""
    path, failed = check_config(tmp_path, dns)
    assert failed.returncode == 2, failed.stderr
    lines = failed.stderr.removeprefix("ispd: ").splitlines()
    assert len(lines) == 1, failed.stderr
    assert lines[0].startswith(f"{path}: {key}: ") and repr(value) in lines[0], failed.stderr
    assert "lax-or-strict" not in failed.stderr and "validator" not in failed.stderr, failed.stderr


def _store_a_schema_behind(store: Path) -> list[Migration]:
    """A store at ``store`` two migrations short of this ispd's (what an older ispd left);
    this ispd's migrations."""
    migrations = sqlite_migrations()
    conn = connect(store, 5)
    migrate(conn, migrations, target=len(migrations) - 2)
    conn.close()
    return migrations


def _schema_of(store: Path) -> int:
    conn = connect(store, 5)
    try:
        return schema_version(conn)
    finally:
        conn.close()


def test_an_admin_command_does_not_migrate_the_store_under_a_daemon(tmp_path: Path, config_path: Path) -> None:
    # A daemon on a store of an older schema is an older ispd (a current one migrates as it
    # starts; a standby never does): an upgraded CLI's `subscriber list` must not migrate the
    # store under it (nor hold SQLite's write lock for a long migration), as `store migrate` won't.
    from ispd.daemonlock import DaemonLock

    store = tmp_path / "ispd.db"
    migrations = _store_a_schema_behind(store)

    daemon = DaemonLock(store)
    daemon.acquire()
    try:
        refused = ispd(config_path, "subscriber", "list")
    finally:
        daemon.release()
    assert refused.returncode == 1
    assert refused.stderr == (f"ispd: an ispd daemon (pid {os.getpid()}) is running on the store {store}: this ispd "
                              f"would migrate the store to schema {migrations[-1].version}: stop the daemon and run "
                              "`ispd store migrate`, or restart it with this ispd (it migrates the store as it "
                              "starts)\n")
    assert _schema_of(store) == len(migrations) - 2  # untouched

    ok(config_path, "subscriber", "list")  # no daemon: the command migrates, as it always did
    assert _schema_of(store) == migrations[-1].version
    daemon.acquire()  # and a current store is read beside a daemon, without its lock
    try:
        assert ok(config_path, "subscriber", "list").startswith("ID")
    finally:
        daemon.release()


def test_store_migrate_applies_what_is_pending_and_is_refused_beside_a_daemon(tmp_path: Path,
                                                                              config_path: Path) -> None:
    from ispd.daemonlock import DaemonLock

    store = tmp_path / "ispd.db"
    migrations = _store_a_schema_behind(store)

    daemon = DaemonLock(store)  # as a running `ispd run` holds it
    daemon.acquire()
    try:
        refused = ispd(config_path, "store", "migrate")
    finally:
        daemon.release()
    assert refused.returncode == 1
    assert refused.stderr == (f"ispd: an ispd daemon (pid {os.getpid()}) is running on the store {store}: stop it "
                              "first (or let it be: a daemon applies the migrations itself as it starts)\n")
    assert _schema_of(store) == len(migrations) - 2  # untouched

    lines = ok(config_path, "store", "migrate").splitlines()
    newest, before = migrations[-1], migrations[-2]
    assert lines[:2] == [f"{store}: migrating to schema {newest.version}: {before.version} {before.name} ...",
                         f"{store}: migrating to schema {newest.version}: {newest.version} {newest.name} ..."]
    assert lines[2].startswith(f"{store}: at schema {newest.version} (applied {before.version}, {newest.version} in ")
    assert _schema_of(store) == newest.version
    assert ok(config_path, "store", "migrate") == f"{store}: at schema {newest.version}, nothing to do\n"


def test_store_migrate_says_when_it_made_a_new_store(tmp_path: Path, config_path: Path) -> None:
    """The upgrade's `ispd store migrate` with the wrong config or store.path makes an empty store:
    it says so, as every other admin command does, not only that it applied every migration."""
    store = tmp_path / "ispd.db"
    result = ispd(config_path, "store", "migrate")
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"ispd: note: {store} did not exist: this is a new, empty store\n"
    assert ispd(config_path, "store", "migrate").stderr == ""  # (an existing store: no note)


def test_migrations_are_refused_beside_a_daemon_from_before_the_lock(tmp_path: Path, config_path: Path) -> None:
    # The daemon still running the previous release during an upgrade may be one from before the
    # store's lock file: it answers on its control socket but holds no lock. Migrated under it,
    # the store gets rows the new schema's triggers and indexes never see (an old daemon's IPv6
    # sessions, which `who` then cannot find).
    import socket

    store = tmp_path / "ispd.db"
    migrations = _store_a_schema_behind(store)
    control = tmp_path / "control.sock"
    old_daemon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_daemon.bind(str(control))
    old_daemon.listen()
    try:
        for command in (("store", "migrate"), ("subscriber", "list"), ("store", "restore", str(store))):
            refused = ispd(config_path, *command)
            assert refused.returncode == 1, (command, refused.stdout)
            assert refused.stderr.startswith(f"ispd: an ispd daemon is running: it answers on the control socket "
                                             f"{control} "), (command, refused.stderr)
        assert _schema_of(store) == len(migrations) - 2  # untouched
    finally:
        old_daemon.close()

    # Its socket left behind by a daemon that is gone refuses connections: no longer in the way.
    assert control.exists()
    ok(config_path, "store", "migrate")
    assert _schema_of(store) == migrations[-1].version


def test_the_audit_keeps_no_value_of_an_attribute_the_dictionary_calls_secret(tmp_path: Path) -> None:
    """FreeRADIUS's ``secret`` flag (never print the value) in an operator's dictionary: from a bug
    hunt, only encrypted attributes were left out of the audit, which kept this one's value."""
    (tmp_path / "dictionary.local").write_text(
        "VENDOR Example 65000\nBEGIN-VENDOR Example\nATTRIBUTE Example-PSK 1 string secret\nEND-VENDOR Example\n")
    config = base_config(tmp_path, radius={"dictionaries": [str(tmp_path / "dictionary.local")]})
    config_path = toml.write(tmp_path / "ispd.toml", config)
    ok(config_path, "subscriber", "add", "alice", "--password-stdin", input="alice-pw\n")
    ok(config_path, "subscriber", "radius-reply", "alice", "Example-PSK = wifi-passphrase-1")
    shown = ok(config_path, "subscriber", "show", "alice", "--json")
    audited = [e["details"] for e in json.loads(shown)["audit"] if e["action"] == "subscriber.radius_reply_set"]
    assert audited == [{"from": [], "to": ["Example-PSK = (hidden)"]}], shown


def test_a_subscriber_s_own_ipv6_prefix_is_nobody_else_s(tmp_path: Path) -> None:
    """One IPAM for IPv6: from a bug hunt, `subscriber radius-reply` took a Delegated-IPv6-Prefix
    that another subscriber had reserved (RADIUS then sent the same /56 to both), or one inside a
    [[radius.prefix_pool]], whose next login got it too. Both are refused, naming the holder; the
    subscriber's own reserved prefix, or one outside every pool and reservation, is not."""
    config = base_config(tmp_path, radius={"prefix_pool": [
        {"name": "homes", "prefix": "2001:db8:1000::/40", "delegated_length": 56}]})
    config_path = toml.write(tmp_path / "ispd.toml", config)
    for name in ("anna", "ben"):
        ok(config_path, "subscriber", "add", name, "--password-stdin", input=f"{name}-pw\n")
    ok(config_path, "reservation", "add", "anna", "--username", "anna@pppoe", "--prefix6", "2001:db8:200::/48")

    for attribute, says in (
            ("Delegated-IPv6-Prefix = 2001:db8:200:100::/56", "overlaps 2001:db8:200::/48, reserved for another "
                                                               "subscriber (reservation #1)"),
            ("Framed-IPv6-Address = 2001:db8:200::1", "overlaps 2001:db8:200::/48, reserved for another"),
            ("Delegated-IPv6-Prefix = 2001:db8:1000:300::/56", "overlaps [[radius.prefix_pool]] 'homes' "
                                                                "(2001:db8:1000::/40)"),
            ("Framed-IPv6-Prefix = 2001:db8::/32", "overlaps [[radius.prefix_pool]] 'homes'")):
        refused = ispd(config_path, "subscriber", "radius-reply", "ben", attribute)
        assert refused.returncode == 1, (attribute, refused.stdout)
        assert says in refused.stderr, refused.stderr
    assert ok(config_path, "subscriber", "radius-reply", "ben") == "ben has no reply attributes of its own (its " \
                                                                   "plan's apply)\n"
    ok(config_path, "subscriber", "radius-reply", "anna", "Delegated-IPv6-Prefix = 2001:db8:200::/48")
    ok(config_path, "subscriber", "radius-reply", "ben", "Delegated-IPv6-Prefix = 2001:db8:77::/48")


def test_a_prefix_another_subscriber_s_reply_attributes_give_is_refused(tmp_path: Path) -> None:
    """From a review: c933848 checks a reply attribute's IPv6 prefix against the reservations and
    the pools, not against another subscriber's own reply attributes - the way a static prefix is
    most often given. Two subscribers took the same Delegated-IPv6-Prefix; RADIUS sent it to both."""
    config_path = toml.write(tmp_path / "ispd.toml", base_config(tmp_path))
    for name in ("anna", "ben"):
        ok(config_path, "subscriber", "add", name, "--password-stdin", input=f"{name}-pw\n")
    ok(config_path, "subscriber", "radius-reply", "anna", "Delegated-IPv6-Prefix = 2001:db8:77::/48")
    refused = ispd(config_path, "subscriber", "radius-reply", "ben", "Delegated-IPv6-Prefix = 2001:db8:77:100::/56")
    assert refused.returncode == 1, refused.stdout
    assert "overlaps 2001:db8:77::/48, anna's" in refused.stderr, refused.stderr
    ok(config_path, "subscriber", "radius-reply", "anna", "Delegated-IPv6-Prefix = 2001:db8:77:100::/56")  # its own
