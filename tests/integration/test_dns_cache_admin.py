"""``ispd dns cache dump|flush`` against a real ispd resolving the lab's DNS hierarchy, through
the control socket; and the control socket's life as a real process sees it (0600, removed at
stop, a crashed daemon's file replaced, a live daemon's not taken)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.dnshier import DNSHierarchy
from tests.lab.dnsispd import DNSIspd, rdatas
from tests.lab.process import IspdProcess, base_config, eventually

UPSTREAM = "ispd_dns_upstream_queries_total"
FLUSHED = re.compile(r"^flushed (.+): (\d+) RRsets and negative entries, (\d+) answers$")


@pytest.fixture
def resolver(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> Iterator[DNSIspd]:
    """A resolver with an empty cache for each test, over the session's DNS hierarchy (the
    ``dns_hierarchy`` fixture of tests/conftest.py): the tests empty and fill it."""
    with DNSIspd(tmp_path / "ispd", dns_hierarchy) as ispd:
        ispd.start()
        yield ispd
        ispd.assert_healthy()


def dump(ispd: IspdProcess, *args: str) -> list[str]:
    return ispd.cli("dns", "cache", "dump", *args).stdout.splitlines()


def records(lines: list[str]) -> list[tuple[str, int, str, str]]:
    """The zone-file lines of a dump as (owner, ttl, type, rdata)."""
    found = []
    for line in lines:
        if line.startswith(";"):
            continue
        owner, ttl, klass, rtype, rdata = line.split(None, 4)
        assert klass == "IN", line
        found.append((owner, int(ttl), rtype, rdata))
    return found


def flush(ispd: IspdProcess, *args: str) -> tuple[str, int, int]:
    out = ispd.cli("dns", "cache", "flush", *args).stdout.strip()
    match = FLUSHED.match(out)
    assert match, out
    return match.group(1), int(match.group(2)), int(match.group(3))


def test_dump_shows_a_resolved_name_and_flush_sends_the_next_query_upstream(resolver: DNSIspd) -> None:
    first = resolver.dig("www.example-a.test")
    assert rdatas(first) == {"198.18.1.1"}, first.text

    lines = dump(resolver)
    assert lines[0] == "; ispd DNS cache dump"
    found = records(lines)
    www = [r for r in found if r[0] == "www.example-a.test." and r[2] == "A"]
    assert [(r[2], r[3]) for r in www] == [("A", "198.18.1.1")], lines
    assert 3500 < www[0][1] <= 3600
    # What iteration learnt on the way: the delegations and the servers' addresses.
    assert ("example-a.test.", "NS", "ns1.example-a.test.") in {(o, t, d) for o, _, t, d in found}, lines
    assert any(re.fullmatch(r"; answer www\.example-a\.test\. IN A NOERROR \d+( \+ad)?", line) for line in lines), lines
    assert re.fullmatch(r"; \d+ RRsets \(\d+ records\), \d+ negative entries, 1 answers", lines[-1]), lines[-1]

    # Only a name and what is below it.
    below = records(dump(resolver, "example-a.test"))
    assert below and all(o.endswith("example-a.test.") for o, *_ in below), below
    assert ("www.example-a.test.", "A", "198.18.1.1") in {(o, t, d) for o, _, t, d in below}

    # The machine form: one JSON object per line.
    objects = [json.loads(line) for line in dump(resolver, "www.example-a.test", "--json")]
    assert {"kind": "rrset", "name": "www.example-a.test.", "type": "A", "trust": "answer",
            "rdata": ["198.18.1.1"]}.items() <= objects[0].items(), objects
    assert objects[-1]["kind"] == "answer" and objects[-1]["name"] == "www.example-a.test."

    time.sleep(1.1)  # so that an answer from the cache would show a lower TTL than the zone's
    assert resolver.dig("www.example-a.test").answer[0].ttl < 3600
    upstream = resolver.metric(UPSTREAM)
    name, rrsets, answers = flush(resolver, "www.example-a.test")
    assert (name, rrsets, answers) == ("www.example-a.test", 1, 1)
    assert not [r for r in records(dump(resolver)) if r[0] == "www.example-a.test."]
    assert not any("answer www.example-a.test." in line for line in dump(resolver))
    assert [r for r in records(dump(resolver)) if r[0] == "example-a.test."], "the zone's NS must stay"

    again = resolver.dig("www.example-a.test")
    assert rdatas(again) == {"198.18.1.1"}, again.text
    assert again.answer[0].ttl == 3600, again.text  # fresh from the authority, not counted down
    assert resolver.metric(UPSTREAM) == upstream + 1  # one query: the zone's servers were still known


def test_a_reload_that_lowers_the_ttl_limits_shortens_what_is_cached(resolver: DNSIspd) -> None:
    """max_ttl and max_negative_ttl lowered by a reload bound the RRsets and negative entries
    cached before it too: the answers rebuilt after the reload (which empties only the answer
    cache) must not repeat an hour-long RRset for an hour under a max_ttl of 60."""
    assert rdatas(resolver.dig("www.example-a.test")) == {"198.18.1.1"}
    assert resolver.dig("nope.example-a.test").status == "NXDOMAIN"
    resolver.config["dns"]["cache"] = {"max_ttl": 60, "max_negative_ttl": 20}
    resolver.write_config()
    resolver.reload()
    eventually(lambda: len(resolver.log_events("dns.reloaded")) == 1)
    kept = {(r[0], r[2]): r[1] for r in records(dump(resolver, "example-a.test"))}
    assert 0 < kept[("www.example-a.test.", "A")] <= 60, kept
    negative = [line for line in dump(resolver, "example-a.test") if line.startswith("; NXDOMAIN")]
    assert len(negative) == 1 and 0 < int(negative[0].split()[-1]) <= 20, negative


def test_flush_a_zone_a_type_and_everything(resolver: DNSIspd) -> None:
    for qname, qtype in (("www.example-a.test", "A"), ("www.example-a.test", "AAAA"), ("txt.example-a.test", "TXT"),
                         ("nope.example-a.test", "A"), ("v4only.example-a.test", "AAAA"),
                         ("www.sub.example-a.test", "A"), ("www.example-b.example", "A")):
        assert resolver.dig(qname, qtype).status in ("NOERROR", "NXDOMAIN")
    lines = dump(resolver)
    assert "; NODATA v4only.example-a.test. AAAA" in "\n".join(lines), lines
    assert any(line.startswith("; NXDOMAIN nope.example-a.test. ") for line in lines), lines
    assert ('"hello from example-a"' in {d for o, _, t, d in records(lines) if o == "txt.example-a.test."}), lines

    # --type: only that type's RRset and answer.
    assert flush(resolver, "www.example-a.test", "--type", "aaaa") == ("www.example-a.test AAAA", 1, 1)
    www = {t for o, _, t, _ in records(dump(resolver, "www.example-a.test"))}
    assert www == {"A"}

    # --zone: the name and everything below it, other zones untouched.
    name, rrsets, answers = flush(resolver, "example-a.test", "--zone")
    assert name == "example-a.test and below" and rrsets >= 8 and answers == 5
    lines = dump(resolver)
    assert not [line for line in lines if "example-a.test." in line and not line.startswith("; ispd")], lines
    assert ("www.example-b.example.", "A", "198.18.3.1") in {(o, t, d) for o, _, t, d in records(lines)}
    assert resolver.metric("ispd_dns_cache_entries", {"cache": "answer"}) == 1  # www.example-b.example

    # --all: nothing left; and the resolver starts again from the root hints.
    name, rrsets, answers = flush(resolver, "--all")
    assert name == "the caches" and rrsets > 0 and answers == 1
    lines = dump(resolver)
    assert records(lines) == [] and lines[-1] == "; 0 RRsets (0 records), 0 negative entries, 0 answers"
    assert resolver.metric("ispd_dns_cache_entries", {"cache": "rrset"}) == 0
    upstream = resolver.metric(UPSTREAM)
    assert rdatas(resolver.dig("www.example-b.example")) == {"198.18.3.1"}
    assert resolver.metric(UPSTREAM) >= upstream + 2  # the root and the TLD again, at least


def test_bad_arguments_are_refused_before_anything_is_sent(resolver: DNSIspd) -> None:
    result = resolver.cli("dns", "cache", "flush", check=False)
    assert (result.returncode, result.stderr) == (2, "ispd: give a NAME to flush, or --all to empty the caches\n")
    result = resolver.cli("dns", "cache", "flush", "x.test", "--all", check=False)
    assert (result.returncode, result.stderr) == (2, "ispd: give a NAME to flush or --all, not both\n")
    result = resolver.cli("dns", "cache", "flush", "x.test", "--type", "BOGUS", check=False)
    assert result.returncode == 2 and "is not a record type" in result.stderr
    result = resolver.cli("dns", "cache", "dump", "a..b", check=False)
    assert result.returncode == 1
    assert result.stderr == "ispd: 'a..b' is not a domain name: empty label in 'a..b'\n"


# --- the control socket, from outside


def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    process = IspdProcess(tmp_path, base_config(tmp_path))
    process.write_config()
    sock = tmp_path / "control.sock"
    for command in (("dns", "cache", "dump"), ("dns", "cache", "flush", "--all")):
        result = process.cli(*command, check=False)
        assert result.returncode == 1
        assert result.stderr == (f"ispd: cannot reach the ispd daemon at {sock}: is it running? "
                                 "(No such file or directory)\n")
        assert result.stdout == ""
    disabled = IspdProcess(tmp_path, base_config(tmp_path, daemon={"control_socket": ""}))
    disabled.write_config()
    result = disabled.cli("dns", "cache", "dump", check=False)
    assert result.returncode == 1
    assert result.stderr == f'ispd: the control socket is disabled (daemon.control_socket = "" in {disabled.config_path})\n'


def test_socket_lifecycle_and_a_daemon_without_dns(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with IspdProcess(tmp_path / "a", base_config(tmp_path / "a", daemon={"control_socket": str(sock)})) as first:
        first.start()
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(sock).st_mode)
        result = first.cli("dns", "cache", "dump", check=False)
        assert (result.returncode, result.stderr) == (
            1, f"ispd: the daemon at {sock} does not run the DNS resolver (is [dns] enabled?)\n")

        # A second daemon on the same socket refuses to start, and leaves the first one's file.
        with IspdProcess(tmp_path / "b", base_config(tmp_path / "b", daemon={"control_socket": str(sock)})) as second:
            second.start(wait_ready=False)
            assert second.proc is not None and second.proc.wait(15) == 1
            [failed] = second.log_events("daemon.start.failed")
            assert failed["error"] == (f"another ispd is running: it answers on the control socket {sock}. Stop "
                                       "it first; if it serves another store, give this one its own "
                                       "[daemon] control_socket")
        assert sock.exists()
        assert first.cli("dns", "cache", "dump", check=False).returncode == 1  # still answering: "no DNS"

        # A reload cannot move the socket: the old one stays until a restart, and says so.
        first.config["daemon"]["control_socket"] = str(tmp_path / "elsewhere.sock")
        first.write_config()
        first.reload()
        assert first.log_events("config.reload.restart_needed")[-1]["key"] == "control_socket"
        assert sock.exists() and not (tmp_path / "elsewhere.sock").exists()
        first.config["daemon"]["control_socket"] = str(sock)
        first.write_config()
        assert "does not run the DNS resolver" in first.cli("dns", "cache", "dump", check=False).stderr

        # Killed, it leaves its socket behind; the next start replaces it.
        first.signal(signal.SIGKILL)
        assert first.proc is not None and first.proc.wait(10) == -signal.SIGKILL
        assert sock.exists()
        result = first.cli("dns", "cache", "dump", check=False)
        assert result.stderr == f"ispd: cannot reach the ispd daemon at {sock}: is it running? (Connection refused)\n"
        first.kill()
        first.start()
        assert first.log_events("control.stale_socket_removed")
        assert "does not run the DNS resolver" in first.cli("dns", "cache", "dump", check=False).stderr

        # A clean stop removes it.
        assert first.terminate() == 0, first.log_text()
        eventually(lambda: not sock.exists())
