"""Forward zones and stub zones (``[[dns.forward_zone]]``) in a running ispd, asked with dig.

The lab (tests/lab/dnshier.py) gives both kinds of upstream:
- a forwarder: Unbound on 127.0.0.1, iterating over the lab hierarchy, with names of its own
  (``fwd.internal``, ``fallback.internal``: local data only it has), reached through a
  ``RecordingRelay`` on the hierarchy's relay-1 address, port 53 (one test puts relays on other
  ports);
- a stub zone's server: the NSD of ``corp.internal``, a zone no one delegates (the root answers
  NXDOMAIN for ``internal.``), reached through a ``RecordingRelay`` on relay-2.

The relays pass every query on unchanged and note it, RD bit included: a forwarder is asked with
RD set (it recurses for us), a stub zone's server with RD clear (it is authoritative, and ispd
iterates from it). Dead forwarders are the hierarchy's alldead servers: one swallows queries
(a ``Blackhole``), at the other nothing listens (ICMP port unreachable).

One ispd serves the module; the tests that need an empty cache or another config start their own.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.dnshier import DNSHierarchy, RecordingRelay, Unbound, dig, free_port
from tests.lab.dnsispd import DNSIspd, rdatas

UPSTREAM = "ispd_dns_upstream_queries_total"
REQUEST_TIMEOUT = 3.0  # [dns.resolver] request_timeout_seconds of the ispd under test

FWD_WWW = "198.18.30.1"  # www.fwd.internal: only the forwarder (Unbound's local data) knows it
FWD_MAIL = "198.18.30.25"
FALLBACK_WWW = "198.18.30.2"
CORP_WWW = "198.18.21.1"  # www.corp.internal: only the corp.internal NSD serves it
CORP_MAIL = "198.18.21.25"

FORWARDER_DATA = f"""\
  local-zone: "fwd.internal." static
  local-data: "fwd.internal. 300 IN SOA ns.fwd.internal. hostmaster.fwd.internal. 1 3600 900 604800 60"
  local-data: "www.fwd.internal. 300 IN A {FWD_WWW}"
  local-data: "mail.fwd.internal. 300 IN A {FWD_MAIL}"
  local-zone: "fallback.internal." static
  local-data: "www.fallback.internal. 300 IN A {FALLBACK_WWW}"
"""


@pytest.fixture(scope="module")
def forwarder(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingRelay]:
    """relay-1:53 → Unbound (a recursive resolver over the lab, with fwd.internal of its own)."""
    if shutil.which("unbound") is None:
        pytest.skip("unbound not installed (tools/setup --test installs it)")
    with Unbound(dns_hierarchy.root_hints_path, tmp_path_factory.mktemp("forwarder"), extra=FORWARDER_DATA) as unbound, \
            RecordingRelay(dns_hierarchy.address("relay-1"), (unbound.address, unbound.port)) as relay:
        yield relay
        assert not relay.errors, relay.errors


@pytest.fixture(scope="module")
def stub_server(dns_hierarchy: DNSHierarchy) -> Iterator[RecordingRelay]:
    """relay-2:53 → the NSD of corp.internal (authoritative, delegated by no one)."""
    with RecordingRelay(dns_hierarchy.address("relay-2"), (dns_hierarchy.address("corp"), 53)) as relay:
        yield relay
        assert not relay.errors, relay.errors


def forward_zones(hierarchy: DNSHierarchy, forwarder: RecordingRelay,
                  stub_server: RecordingRelay) -> list[dict[str, Any]]:
    silent, unreachable = hierarchy.address("alldead-1"), hierarchy.address("alldead-2")
    return [
        {"name": "fwd.internal", "servers": [forwarder.address]},
        {"name": "example-a.test", "servers": [forwarder.address]},  # public, but forwarded
        {"name": "corp.internal", "servers": [stub_server.address], "stub": True},
        {"name": "oob.test", "servers": [silent]},  # public, forwarded to a server that never answers
        {"name": "refused.internal", "servers": [unreachable]},
        {"name": "fallback.internal", "servers": [silent, unreachable, forwarder.address]},
    ]


def forwarding_ispd(workdir: Path, hierarchy: DNSHierarchy, zones: list[dict[str, Any]], *,
                    validation: bool = False) -> DNSIspd:
    """These tests count where questions go; validation (its DS and DNSKEY questions) is off
    except where a test is about validating behind a forwarder."""
    return DNSIspd(workdir, hierarchy, forward_zone=zones, dnssec={"validation": validation},
                   resolver={"request_timeout_seconds": REQUEST_TIMEOUT})


@pytest.fixture(scope="module")
def resolver(dns_hierarchy: DNSHierarchy, forwarder: RecordingRelay, stub_server: RecordingRelay,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSIspd]:
    zones = forward_zones(dns_hierarchy, forwarder, stub_server)
    with forwarding_ispd(tmp_path_factory.mktemp("ispd-forwarding"), dns_hierarchy, zones) as ispd:
        ispd.start()
        yield ispd
        ispd.assert_healthy()


def upstream_queries(ispd: DNSIspd) -> float:
    return ispd.metric(UPSTREAM)


# --- forward zones ------------------------------------------------------------------------------


def test_a_forward_zone_is_answered_by_its_forwarder_asked_with_rd(resolver: DNSIspd,
                                                                  forwarder: RecordingRelay) -> None:
    before = upstream_queries(resolver)
    www = resolver.dig("www.fwd.internal")
    assert www.status == "NOERROR" and rdatas(www) == {FWD_WWW}, www.text
    assert "ra" in www.flags
    asked = forwarder.asked("www.fwd.internal", "A")
    assert [r.rd for r in asked] == [True], forwarder.seen
    assert upstream_queries(resolver) - before == 1  # the forwarder, and no one else

    nope = resolver.dig("nope.fwd.internal")  # the forwarder's NXDOMAIN, passed on
    assert nope.status == "NXDOMAIN" and not nope.answer, nope.text
    assert [r.rd for r in forwarder.asked("nope.fwd.internal")] == [True], forwarder.seen
    # ... and kept, for the name's other types too (RFC 2308 §5).
    assert resolver.dig("nope.fwd.internal", "AAAA").status == "NXDOMAIN"
    assert not forwarder.asked("nope.fwd.internal", "AAAA"), forwarder.seen


def test_a_public_zone_forwarded_is_asked_of_the_forwarder_only(resolver: DNSIspd,
                                                                forwarder: RecordingRelay) -> None:
    """example-a.test is delegated in the lab, but forwarded: the forwarder resolves it (one
    upstream query from ispd, no iteration from the root), names below it included."""
    for name, address in (("www.example-a.test", "198.18.1.1"), ("www.sub.example-a.test", "198.18.2.1")):
        before = upstream_queries(resolver)
        result = resolver.dig(name)
        assert result.status == "NOERROR" and rdatas(result) == {address}, result.text
        assert [r.rd for r in forwarder.asked(name, "A")] == [True], forwarder.seen
        assert upstream_queries(resolver) - before == 1
    cross = resolver.dig("cross.example-a.test")  # a chain out of the zone, as the forwarder gave it
    assert [(r.owner, r.type, r.rdata) for r in cross.answer] == [
        ("cross.example-a.test.", "CNAME", "www.example-b.example."),
        ("www.example-b.example.", "A", "198.18.3.1")], cross.text


def test_a_forwarded_answer_too_big_for_udp_is_fetched_over_tcp(resolver: DNSIspd,
                                                                forwarder: RecordingRelay) -> None:
    big = resolver.dig("big.example-a.test", "TXT", "+tcp")
    assert big.status == "NOERROR" and len(big.answer) == 10, big.text
    asked = forwarder.asked("big.example-a.test", "TXT")
    assert [(r.transport, r.rd) for r in asked] == [("udp", True), ("tcp", True)], asked


def test_forward_and_stub_servers_on_ports_of_their_own(dns_hierarchy: DNSHierarchy, forwarder: RecordingRelay,
                                                        tmp_path: Path) -> None:
    """A forwarder or an authoritative server beside another resolver on the same host listens on
    another port than 53: "address@port" (as Unbound writes it) and "address:port" both reach
    it, over UDP and over TCP when the answer is too big."""
    address = dns_hierarchy.address("relay-2")  # (its port 53 is the stub_server fixture's, when used)
    forward_port, stub_port = free_port(address), free_port(address)
    with RecordingRelay(address, (forwarder.address, 53), port=forward_port) as forward_relay, \
            RecordingRelay(address, (dns_hierarchy.address("corp"), 53), port=stub_port) as stub_relay:
        zones = [{"name": "fwd.internal", "servers": [f"{address}@{forward_port}"]},
                 {"name": "example-a.test", "servers": [f"{address}:{forward_port}"]},
                 {"name": "corp.internal", "servers": [f"{address}@{stub_port}"], "stub": True}]
        with forwarding_ispd(tmp_path, dns_hierarchy, zones) as ispd:
            ispd.start()
            www = ispd.dig("www.fwd.internal")
            assert www.status == "NOERROR" and rdatas(www) == {FWD_WWW}, www.text
            assert [r.rd for r in forward_relay.asked("www.fwd.internal", "A")] == [True], forward_relay.seen
            big = ispd.dig("big.example-a.test", "TXT", "+tcp")
            assert big.status == "NOERROR" and len(big.answer) == 10, big.text
            assert [r.transport for r in forward_relay.asked("big.example-a.test", "TXT")] == ["udp", "tcp"]
            corp = ispd.dig("www.corp.internal")
            assert corp.status == "NOERROR" and rdatas(corp) == {CORP_WWW}, corp.text
            assert stub_relay.asked("www.corp.internal") and not any(r.rd for r in stub_relay.seen)
            ispd.assert_healthy()
        assert not forward_relay.errors and not stub_relay.errors


# --- stub zones ---------------------------------------------------------------------------------


def test_a_stub_zone_is_asked_without_rd_and_reaches_an_undelegated_zone(
        dns_hierarchy: DNSHierarchy, resolver: DNSIspd, stub_server: RecordingRelay,
        forwarder: RecordingRelay) -> None:
    # From the root down, corp.internal does not exist.
    assert dig(dns_hierarchy.address("a.root-servers.test"), "www.corp.internal", "A", "+norec").status == "NXDOMAIN"
    www = resolver.dig("www.corp.internal")
    assert www.status == "NOERROR" and rdatas(www) == {CORP_WWW}, www.text
    asked = stub_server.asked("www.corp.internal")
    assert asked and not any(r.rd for r in asked), stub_server.seen
    nope = resolver.dig("nope.corp.internal")
    assert nope.status == "NXDOMAIN", nope.text
    assert not any(r.rd for r in stub_server.seen), stub_server.seen
    assert not forwarder.asked("www.corp.internal")


def test_a_cname_out_of_a_stub_zone_is_followed_by_iteration(resolver: DNSIspd, stub_server: RecordingRelay,
                                                             forwarder: RecordingRelay) -> None:
    alias = resolver.dig("alias.corp.internal")
    assert [(r.owner, r.type, r.rdata) for r in alias.answer] == [
        ("alias.corp.internal.", "CNAME", "www.example-b.example."),
        ("www.example-b.example.", "A", "198.18.3.1")], alias.text
    assert stub_server.asked("alias.corp.internal") and not stub_server.asked("www.example-b.example")
    assert not forwarder.asked("www.example-b.example")


# --- both ---------------------------------------------------------------------------------------


def test_answers_from_a_forwarder_and_a_stub_zone_are_cached(resolver: DNSIspd, forwarder: RecordingRelay,
                                                            stub_server: RecordingRelay) -> None:
    names = {"mail.fwd.internal": FWD_MAIL, "mail.corp.internal": CORP_MAIL}
    first = {}
    for name, address in names.items():
        result = resolver.dig(name)
        assert rdatas(result) == {address}, result.text
        first[name] = result.answer[0].ttl
        assert first[name] <= 300, result.text
    upstream, relayed = upstream_queries(resolver), len(forwarder.seen) + len(stub_server.seen)
    time.sleep(1.1)
    for name, address in names.items():
        again = resolver.dig(name)
        assert again.status == "NOERROR" and rdatas(again) == {address}, again.text
        assert again.answer[0].ttl < first[name], (first[name], again.text)
    assert upstream_queries(resolver) == upstream
    assert len(forwarder.seen) + len(stub_server.seen) == relayed


# --- dead forwarders ----------------------------------------------------------------------------


def timed_dig(ispd: DNSIspd, name: str) -> tuple[str, float, str]:
    started = time.monotonic()
    result = ispd.dig(name, timeout=REQUEST_TIMEOUT + 10)  # dig waits far longer than ispd may
    return result.status, time.monotonic() - started, result.text


@pytest.mark.parametrize(("name", "kind"), [("www.oob.test", "silent"), ("www.refused.internal", "unreachable")])
def test_a_dead_forwarder_gives_servfail_within_the_request_timeout(resolver: DNSIspd, name: str,
                                                                    kind: str) -> None:
    """Not a hang, and not the answer iteration would find (www.oob.test exists in the lab): a
    forward zone is asked of its forwarders only. The second name finds the server's timeout
    backed off after the first failures: that one runs into the request timeout."""
    for qname in (name, "again." + name):
        status, waited, text = timed_dig(resolver, qname)
        assert status == "SERVFAIL", text
        assert waited < REQUEST_TIMEOUT + 0.5, f"{kind} forwarder: SERVFAIL for {qname} after {waited:.2f} s"
    status, waited, text = timed_dig(resolver, "www.fwd.internal")  # the rest still answers
    assert status == "NOERROR" and waited < 1, text
    resolver.assert_healthy()


def test_a_forward_zone_with_a_live_forwarder_among_dead_ones_is_answered(resolver: DNSIspd,
                                                                          forwarder: RecordingRelay) -> None:
    status, waited, text = timed_dig(resolver, "www.fallback.internal")
    assert status == "NOERROR" and FALLBACK_WWW in text, text
    assert waited < REQUEST_TIMEOUT, f"answered after {waited:.2f} s"
    assert [r.rd for r in forwarder.asked("www.fallback.internal")] == [True]


# --- the cache and the configured zones -----------------------------------------------------------


def test_a_cached_nxdomain_from_the_root_does_not_hide_the_configured_zones(
        dns_hierarchy: DNSHierarchy, forwarder: RecordingRelay, stub_server: RecordingRelay, tmp_path: Path) -> None:
    """The root says internal. does not exist, and RFC 8020 says nothing exists below a name that
    does not: but fwd.internal and corp.internal are configured, and must still be asked."""
    zones = forward_zones(dns_hierarchy, forwarder, stub_server)
    with forwarding_ispd(tmp_path, dns_hierarchy, zones) as ispd:
        ispd.start()
        for name, qtype in (("internal", "SOA"), ("internal", "A"), ("nope.internal", "A")):
            result = ispd.dig(name, qtype)
            assert result.status == "NXDOMAIN", result.text
        corp = ispd.dig("www.corp.internal")
        fwd = ispd.dig("www.fwd.internal")
        assert (corp.status, rdatas(corp)) == ("NOERROR", {CORP_WWW}), corp.text
        assert (fwd.status, rdatas(fwd)) == ("NOERROR", {FWD_WWW}), fwd.text
        ispd.assert_healthy()


def test_forwarding_everything_and_a_stub_zone_inside(dns_hierarchy: DNSHierarchy, forwarder: RecordingRelay,
                                                     stub_server: RecordingRelay, tmp_path: Path) -> None:
    """name = "." sends every question to the forwarder (no priming, no iteration), except those
    of a closer stub zone."""
    zones = [{"name": ".", "servers": [forwarder.address]},
             {"name": "corp.internal", "servers": [stub_server.address], "stub": True}]
    with forwarding_ispd(tmp_path, dns_hierarchy, zones) as ispd:
        ispd.start()
        for name, address in (("www.example-b.example", "198.18.3.1"), ("www.oob.test", "198.18.4.1"),
                              ("www.fwd.internal", FWD_WWW)):
            before = upstream_queries(ispd)
            result = ispd.dig(name)
            assert result.status == "NOERROR" and rdatas(result) == {address}, result.text
            assert upstream_queries(ispd) - before == 1, name
            assert forwarder.asked(name, "A")[-1].rd
        stub_before = len(stub_server.asked("www.corp.internal"))
        corp = ispd.dig("www.corp.internal")
        assert corp.status == "NOERROR" and rdatas(corp) == {CORP_WWW}, corp.text
        assert len(stub_server.asked("www.corp.internal")) > stub_before
        assert not any(r.rd for r in stub_server.seen)
        ispd.assert_healthy()


def test_validating_behind_a_forwarder(dns_hierarchy: DNSHierarchy, forwarder: RecordingRelay,
                                       stub_server: RecordingRelay, tmp_path: Path) -> None:
    """With "." forwarded, ispd still validates: it asks the forwarder with DO and CD (so that
    the forwarder hands over what it would call bogus) and checks the chain itself; the private
    names a forwarder or a stub zone serves are insecure, because the signed root proves that
    internal. does not exist."""
    zones = [{"name": ".", "servers": [forwarder.address]},
             {"name": "corp.internal", "servers": [stub_server.address], "stub": True}]
    with forwarding_ispd(tmp_path, dns_hierarchy, zones, validation=True) as ispd:
        ispd.start()
        secure = ispd.dig("www.secure.test", "A", "+dnssec")
        assert secure.status == "NOERROR" and "ad" in secure.flags, secure.text
        assert forwarder.asked("www.secure.test", "A")[-1].rd
        bogus = ispd.dig("www.expired.test", "A", "+dnssec")
        assert bogus.status == "SERVFAIL" and "EDE: 7" in bogus.text, bogus.text
        for name, address in (("www.example-a.test", "198.18.1.1"), ("www.fwd.internal", FWD_WWW),
                              ("www.corp.internal", CORP_WWW)):
            result = ispd.dig(name, "A", "+dnssec")
            assert (result.status, rdatas(result)) == ("NOERROR", {address}), result.text
            assert "ad" not in result.flags, result.text
        ispd.assert_healthy()


@pytest.mark.parametrize("forward_root", [False, True], ids=["iterating", "forwarding"])
def test_the_public_trees_denial_of_a_stub_zones_parent_does_not_hide_the_zone(
        dns_hierarchy: DNSHierarchy, forwarder: RecordingRelay, stub_server: RecordingRelay, tmp_path: Path,
        forward_root: bool) -> None:
    """Validating, the first question below corp.internal brings the signed root's NSEC that
    denies internal. (its DS question): the names of the stub zone asked next are the zone's
    own answers, not an NXDOMAIN made up from that NSEC (RFC 8198) - from a review, every name
    not yet cached was such an NXDOMAIN, with AD."""
    zones = [{"name": "corp.internal", "servers": [stub_server.address], "stub": True}]
    if forward_root:
        zones.append({"name": ".", "servers": [forwarder.address]})
    with forwarding_ispd(tmp_path, dns_hierarchy, zones, validation=True) as ispd:
        ispd.start()
        assert rdatas(ispd.dig("www.corp.internal")) == {CORP_WWW}
        mail = ispd.dig("mail.corp.internal", "A", "+dnssec")
        assert (mail.status, rdatas(mail)) == ("NOERROR", {CORP_MAIL}), mail.text
        soa = ispd.dig("corp.internal", "SOA", "+dnssec")
        assert soa.status == "NOERROR" and [r.type for r in soa.answer] == ["SOA"], soa.text
        assert "ad" not in mail.flags and "ad" not in soa.flags
        ispd.assert_healthy()


def test_a_delegation_in_a_local_zone_is_followed(dns_hierarchy: DNSHierarchy, stub_server: RecordingRelay,
                                                  tmp_path: Path) -> None:
    """From a bug hunt: the operator's own internal. zone delegating corp.internal to its
    server answered subscribers' stub resolvers (RD=1) with a bare referral, which they take
    for "no address". The delegation is followed as a stub zone is (validating: internal. is
    denied by the signed root), its referral kept for RD=0, and a reload that drops it makes the
    names the local zone's own again."""
    zone_file = tmp_path / "internal.zone"
    zone_file.write_text("\n".join([
        "$ORIGIN internal.", "$TTL 300", "@ SOA ns hostmaster 1 3600 900 604800 60", "@ NS ns",
        "ns A 198.18.0.53", "portal A 198.18.0.7",
        "corp NS ns1.corp", f"ns1.corp A {stub_server.address}", ""]))
    with DNSIspd(tmp_path / "ispd", dns_hierarchy, local_zone=[{"name": "internal", "file": str(zone_file)}],
                 resolver={"request_timeout_seconds": REQUEST_TIMEOUT}) as ispd:
        ispd.start()
        for _ in range(2):
            www = ispd.dig("www.corp.internal", "A", "+dnssec")
            assert (www.status, rdatas(www)) == ("NOERROR", {CORP_WWW}) and "ad" not in www.flags, www.text
        assert stub_server.asked("www.corp.internal") and not any(r.rd for r in stub_server.seen)
        referral = ispd.dig("www.corp.internal", "A", "+norec")
        assert referral.status == "NOERROR" and not referral.answer, referral.text
        assert {(r.owner, r.type) for r in referral.authority} == {("corp.internal.", "NS")}, referral.text
        assert rdatas(ispd.dig("portal.internal")) == {"198.18.0.7"}

        zone_file.write_text(zone_file.read_text().replace("corp NS ns1.corp", ""))
        ispd.reload()
        gone = ispd.dig("www.corp.internal")
        assert gone.status == "NXDOMAIN" and "aa" in gone.flags, gone.text
        ispd.assert_healthy()


# --- reload and the lookup command -----------------------------------------------------------------


def add_forward_zone_and_reload(ispd: DNSIspd, zone: dict[str, Any]) -> None:
    config = dict(ispd.config)
    config["dns"] = {**config["dns"], "forward_zone": [*config["dns"]["forward_zone"], zone]}
    ispd.write_config(config)
    ispd.reload()


def test_sighup_applies_a_new_forward_zone(dns_hierarchy: DNSHierarchy, forwarder: RecordingRelay,
                                           stub_server: RecordingRelay, tmp_path: Path) -> None:
    stub_only = [z for z in forward_zones(dns_hierarchy, forwarder, stub_server) if z["name"] == "corp.internal"]
    with forwarding_ispd(tmp_path, dns_hierarchy, stub_only) as ispd:
        ispd.start()
        assert ispd.dig("www.corp.internal").status == "NOERROR"
        add_forward_zone_and_reload(ispd, {"name": "fwd.internal", "servers": [forwarder.address]})
        mail = ispd.dig("mail.fwd.internal")
        assert (mail.status, rdatas(mail)) == ("NOERROR", {FWD_MAIL}), mail.text
        assert forwarder.asked("mail.fwd.internal")[-1].rd
        corp = ispd.dig("www.corp.internal")  # the stub zone kept, its answer still cached
        assert (corp.status, rdatas(corp)) == ("NOERROR", {CORP_WWW}), corp.text
        ispd.assert_healthy()


def test_sighup_with_a_new_forward_zone_forgets_what_the_root_said_about_its_names(
        dns_hierarchy: DNSHierarchy, forwarder: RecordingRelay, tmp_path: Path) -> None:
    """An operator sees www.fwd.internal fail (NXDOMAIN from the root), adds the forward zone
    and reloads: the name resolves now, not once the root's NXDOMAIN has expired (300 s)."""
    with forwarding_ispd(tmp_path, dns_hierarchy, []) as ispd:
        ispd.start()
        assert ispd.dig("www.fwd.internal").status == "NXDOMAIN"
        add_forward_zone_and_reload(ispd, {"name": "fwd.internal", "servers": [forwarder.address]})
        www = ispd.dig("www.fwd.internal")
        assert (www.status, rdatas(www)) == ("NOERROR", {FWD_WWW}), www.text
        ispd.assert_healthy()


def test_dns_lookup_follows_the_forward_and_stub_zones(resolver: DNSIspd, forwarder: RecordingRelay,
                                                       stub_server: RecordingRelay) -> None:
    for name, address, server in (("www.fwd.internal", FWD_WWW, forwarder.address),
                                  ("www.corp.internal", CORP_WWW, stub_server.address)):
        result = resolver.cli("dns", "lookup", name)
        out = result.stdout
        assert re.search(rf"^{re.escape(name)}\.\s+\d+\s+IN\s+A\s+{re.escape(address)}$", out, re.MULTILINE), out
        assert any(server in line for line in out.splitlines() if line.startswith(";; ")), out


def test_forward_first_resolves_from_the_root_when_the_forwarders_fail(dns_hierarchy: DNSHierarchy,
                                                                       tmp_path: Path) -> None:
    """Unbound's forward-first: everything forwarded to a forwarder that never answers is still
    resolved, by iterating; ``ispd dns lookup`` says so. Without first: SERVFAIL."""
    silent = dns_hierarchy.address("alldead-1")
    with forwarding_ispd(tmp_path / "first", dns_hierarchy, [{"name": ".", "servers": [silent], "first": True}]) as ispd:
        ispd.start()
        for name, address in (("www.example-b.example", "198.18.3.1"), ("www.oob.test", "198.18.4.1")):
            result = ispd.dig(name)
            assert result.status == "NOERROR" and rdatas(result) == {address}, result.text
        trace = ispd.cli("dns", "lookup", "www.example-b.example").stdout
        assert "the forwarders of . failed" in trace and "iterating from the root" in trace, trace
        ispd.assert_healthy()
    with forwarding_ispd(tmp_path / "only", dns_hierarchy, [{"name": ".", "servers": [silent]}]) as ispd:
        ispd.start()
        assert ispd.dig("www.example-b.example").status == "SERVFAIL"


def test_sighup_applies_a_new_outgoing_address(tmp_path: Path) -> None:
    """resolver.outgoing_ipv4 was read at start only: a reload that changed it (an upstream's ACL
    or a firewall knows the new one) said config.reloaded and went on asking from the old one."""
    import socket
    import threading

    import dns.message
    import dns.query

    from tests.lab.process import IspdProcess, base_config

    sources: list[str] = []
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    upstream.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                data, peer = upstream.recvfrom(4096)
            except TimeoutError:
                continue
            sources.append(peer[0])
            upstream.sendto(dns.message.make_response(dns.message.from_wire(data)).to_wire(), peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    port = free_port()
    dns_section = {"enabled": True, "listen": [f"127.0.0.1:{port}"], "dnssec": {"validation": False},
                   "forward_zone": [{"name": "fwd.internal",
                                     "servers": [f"127.0.0.1:{upstream.getsockname()[1]}"]}],
                   "resolver": {"outgoing_ipv4": "127.0.0.1"}}
    try:
        with IspdProcess(tmp_path, base_config(tmp_path, dns=dns_section)) as ispd:
            ispd.start()
            dns.query.udp(dns.message.make_query("one.fwd.internal", "A"), "127.0.0.1", port=port, timeout=5)
            assert sources and set(sources) == {"127.0.0.1"}
            config = dict(ispd.config)
            config["dns"] = {**dns_section, "resolver": {"outgoing_ipv4": "127.0.0.2"}}
            ispd.write_config(config)
            ispd.reload()
            sources.clear()
            dns.query.udp(dns.message.make_query("two.fwd.internal", "A"), "127.0.0.1", port=port, timeout=5)
            assert sources and set(sources) == {"127.0.0.2"}, sources
    finally:
        stop.set()
        thread.join()
        upstream.close()
