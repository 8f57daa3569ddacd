"""Response Policy Zones in a running ispd: every action of an RPZ file as dig and dnspython see
it over the lab's DNS hierarchy, bad records skipped at start, and SIGHUP reloads that change the
policy (and do not leave cached answers behind for names that are blocked now).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.lab.dnshier import DigResult, DNSHierarchy
from tests.lab.dnsispd import DNSIspd, rdatas

RPZ_ORIGIN = "rpz.isp.example"
HEAD = """$TTL 300
@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 60
@ NS localhost.
"""
POLICY = HEAD + """\
www.example-a.test CNAME .
mail.example-a.test CNAME *.
txt.example-a.test A 198.18.99.1
multi.example-a.test A 198.18.99.2
multi.example-a.test TXT "blocked by policy"
v4only.example-a.test CNAME www.example-b.example.
*.wild.example-a.test CNAME .
ok.wild.example-a.test CNAME rpz-passthru.
h1.bench.test CNAME rpz-drop.
h2.bench.test CNAME rpz-tcp-only.
h3.bench.test CNAME rpz-tcp-only.
chain3.example-a.test CNAME .
www.sub.example-a.test A not-an-address
h4.bench.test NS ns.example.
"""
BAD_LINES = {16: "www.sub.example-a.test", 17: "h4.bench.test"}  # 1-based lines of the two bad records


def policy_ispd(workdir: Path, hierarchy: DNSHierarchy, policy: str, filename: str = "policy.rpz") -> DNSIspd:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / filename).write_text(policy)
    return DNSIspd(workdir, hierarchy, policy_zone=[{"name": RPZ_ORIGIN, "file": str(workdir / filename)}])


@pytest.fixture(scope="module")
def resolver(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSIspd]:
    with policy_ispd(tmp_path_factory.mktemp("ispd-policy"), dns_hierarchy, POLICY) as ispd:
        ispd.start()
        yield ispd
        ispd.assert_healthy()


def chain(result: DigResult) -> list[tuple[str, str]]:
    return [(r.owner, r.rdata) for r in result.answer if r.type == "CNAME"]


def rpz_soa(result: DigResult) -> bool:
    return [(r.owner, r.type) for r in result.authority] == [(RPZ_ORIGIN + ".", "SOA")]


def udp_without_options(resolver: DNSIspd, qname: str, qtype: str = "A") -> dns.message.Message:
    """A plain query as stub resolvers send it (no EDNS options, unlike dig's cookie)."""
    query = dns.message.make_query(qname, qtype, use_edns=0)
    return dns.query.udp(query, "127.0.0.1", port=resolver.port, timeout=3, raise_on_truncation=False)


# --- loading ---------------------------------------------------------------------------------------


def test_bad_records_are_skipped_and_logged_and_the_rest_is_loaded(resolver: DNSIspd) -> None:
    loaded = resolver.log_events("dns.policy_zone.loaded")
    assert len(loaded) == 1, resolver.log_tail()
    assert loaded[0]["skipped_bad"] == 2 and loaded[0]["records"] == 12, loaded
    problems = " | ".join(e["problem"] for e in resolver.log_events("dns.policy_zone.record_skipped"))
    for line in BAD_LINES:
        assert f"policy.rpz:{line}:" in problems, problems
    assert "not-an-address" in problems and "NS is not a policy action" in problems, problems
    # The names of the skipped records are not policed: they resolve as usual.
    assert rdatas(resolver.dig("www.sub.example-a.test")) == {"198.18.2.1"}
    assert rdatas(resolver.dig("h4.bench.test")) == {"198.18.128.4"}


# --- the actions -------------------------------------------------------------------------------------


def test_nxdomain(resolver: DNSIspd) -> None:
    for qtype in ("A", "AAAA", "MX"):
        result = resolver.dig("www.example-a.test", qtype)
        assert result.status == "NXDOMAIN" and not result.answer and rpz_soa(result), result.text


def test_nodata(resolver: DNSIspd) -> None:
    result = resolver.dig("mail.example-a.test")
    assert result.status == "NOERROR" and not result.answer and rpz_soa(result), result.text


def test_local_data(resolver: DNSIspd) -> None:
    result = resolver.dig("txt.example-a.test")
    assert result.status == "NOERROR" and [(r.owner, r.type, r.rdata) for r in result.answer] == [
        ("txt.example-a.test.", "A", "198.18.99.1")], result.text
    # The name's real TXT is not handed out: the trigger has no TXT, so that is NODATA.
    nodata = resolver.dig("txt.example-a.test", "TXT")
    assert nodata.status == "NOERROR" and not nodata.answer, nodata.text
    assert rdatas(resolver.dig("multi.example-a.test")) == {"198.18.99.2"}
    assert rdatas(resolver.dig("multi.example-a.test", "TXT"), "TXT") == {'"blocked by policy"'}


def test_cname_redirect_is_followed(resolver: DNSIspd) -> None:
    result = resolver.dig("v4only.example-a.test")
    assert result.status == "NOERROR", result.text
    assert chain(result) == [("v4only.example-a.test.", "www.example-b.example.")], result.text
    assert {(r.owner, r.rdata) for r in result.answer if r.type == "A"} == {("www.example-b.example.", "198.18.3.1")}


def test_wildcard_trigger_and_passthru_over_it(resolver: DNSIspd) -> None:
    for name, qtype in (("foo.wild.example-a.test", "A"), ("a.b.wild.example-a.test", "TXT")):
        blocked = resolver.dig(name, qtype)
        assert blocked.status == "NXDOMAIN" and rpz_soa(blocked), blocked.text
    # The wildcard covers the names below wild.example-a.test, not that name itself.
    parent = resolver.dig("wild.example-a.test")
    assert parent.status == "NOERROR" and not parent.answer and not rpz_soa(parent), parent.text
    # An exact PASSTHRU beats the wildcard: the real answer.
    passed = resolver.dig("ok.wild.example-a.test")
    assert passed.status == "NOERROR" and rdatas(passed) == {"198.18.1.42"}, passed.text


def test_passthru_is_counted_for_every_query_it_lets_through(resolver: DNSIspd) -> None:
    before = resolver.metric("ispd_dns_policy_hits_total", {"action": "passthru"})
    for _ in range(3):  # resolved, then answered from the cache (the fast path from the second)
        assert rdatas(resolver.dig("ok.wild.example-a.test")) == {"198.18.1.42"}
    assert resolver.metric("ispd_dns_policy_hits_total", {"action": "passthru"}) == before + 3


def test_a_cname_chain_into_a_blocked_name_is_cut_there(resolver: DNSIspd) -> None:
    result = resolver.dig("chain1.example-a.test")
    assert result.status == "NXDOMAIN", result.text
    assert chain(result) == [("chain1.example-a.test.", "chain2.example-a.test."),
                             ("chain2.example-a.test.", "chain3.example-a.test.")], result.text
    assert not rdatas(result), result.text
    # And so is the chain that ends in the NXDOMAIN trigger www.example-a.test.
    alias = resolver.dig("alias.example-a.test")
    assert alias.status == "NXDOMAIN" and chain(alias) == [("alias.example-a.test.", "www.example-a.test.")], \
        alias.text
    # Asked again (now from the cache): still cut.
    again = resolver.dig("chain1.example-a.test")
    assert again.status == "NXDOMAIN" and not rdatas(again), again.text


def test_drop_sends_nothing(resolver: DNSIspd) -> None:
    for options in ((), ("+tcp",)):
        result = resolver.dig("h1.bench.test", "A", *options, timeout=1)
        assert result.status == "TIMEOUT", result.text
    assert rdatas(resolver.dig("h5.bench.test")) == {"198.18.128.5"}  # still answering others


def test_drop_is_counted(resolver: DNSIspd) -> None:
    before = resolver.metric("ispd_dns_dropped_total", {"reason": "policy_drop"})
    assert resolver.dig("h1.bench.test", "A", timeout=1).status == "TIMEOUT"
    assert resolver.metric("ispd_dns_dropped_total", {"reason": "policy_drop"}) > before


def test_tcp_only_truncates_over_udp_and_answers_over_tcp(resolver: DNSIspd) -> None:
    udp = resolver.dig("h2.bench.test", "A", "+ignore")
    assert udp.status == "NOERROR" and "tc" in udp.flags and not udp.answer, udp.text
    plain = udp_without_options(resolver, "h2.bench.test")
    assert plain.flags & dns.flags.TC and not plain.answer
    tcp = resolver.dig("h2.bench.test", "A", "+tcp")
    assert tcp.status == "NOERROR" and "tc" not in tcp.flags and rdatas(tcp) == {"198.18.128.2"}, tcp.text
    # dig (whose cookie option keeps it off the cache-hit path) is still sent to TCP.
    again = resolver.dig("h2.bench.test", "A", "+ignore")
    assert "tc" in again.flags and not again.answer, again.text


def test_tcp_only_stays_tcp_only_after_an_answer_over_tcp(resolver: DNSIspd) -> None:
    tcp = resolver.dig("h3.bench.test", "A", "+tcp")
    assert rdatas(tcp) == {"198.18.128.3"}, tcp.text
    plain = udp_without_options(resolver, "h3.bench.test")
    assert plain.flags & dns.flags.TC and not plain.answer, plain.to_text()


# --- reloading -----------------------------------------------------------------------------------------

BEFORE = HEAD + "nothing-yet.example-a.test CNAME .\n"
AFTER = HEAD + "www.sub.example-a.test CNAME .\nwww.example-b.example CNAME .\n"


def warm(ispd: DNSIspd) -> None:
    """Answers for the names the new policy blocks, in the cache and served from there."""
    for _ in range(2):
        assert rdatas(ispd.dig("www.sub.example-a.test")) == {"198.18.2.1"}
        assert rdatas(ispd.dig("cross.example-a.test")) == {"198.18.3.1"}
        plain = udp_without_options(ispd, "www.sub.example-a.test")
        assert [r.to_text() for rrset in plain.answer for r in rrset] == ["198.18.2.1"]


def assert_blocked_now(ispd: DNSIspd) -> None:
    sub = ispd.dig("www.sub.example-a.test")
    assert sub.status == "NXDOMAIN" and rpz_soa(sub), sub.text
    plain = udp_without_options(ispd, "www.sub.example-a.test")
    assert plain.rcode() == dns.rcode.NXDOMAIN and not plain.answer, plain.to_text()
    cross = ispd.dig("cross.example-a.test")
    assert cross.status == "NXDOMAIN" and chain(cross) == [("cross.example-a.test.", "www.example-b.example.")], \
        cross.text
    assert not rdatas(cross), cross.text
    # What the old policy blocked and the new one does not: answered normally again.
    assert ispd.dig("nothing-yet.example-a.test").status == "NXDOMAIN"  # upstream's own NXDOMAIN
    assert not rpz_soa(ispd.dig("nothing-yet.example-a.test"))


def test_sighup_with_the_policy_in_another_file_applies_it_and_drops_cached_answers(
        dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    with policy_ispd(tmp_path, dns_hierarchy, BEFORE) as ispd:
        ispd.start()
        for _ in range(2):  # asked twice: the policy's answer is kept for the fast path, until the reload
            assert rpz_soa(ispd.dig("nothing-yet.example-a.test"))
            assert udp_without_options(ispd, "nothing-yet.example-a.test").rcode() == dns.rcode.NXDOMAIN
        warm(ispd)
        (tmp_path / "policy-2.rpz").write_text(AFTER)
        config = dict(ispd.config)
        config["dns"] = {**config["dns"], "policy_zone": [{"name": RPZ_ORIGIN, "file": str(tmp_path / "policy-2.rpz")}]}
        ispd.write_config(config)
        ispd.reload()
        assert len(ispd.log_events("dns.policy_zone.loaded")) == 2, ispd.log_tail()
        assert ispd.log_events("dns.reloaded")[-1]["policy_zones"] == 1
        assert_blocked_now(ispd)
        ispd.assert_healthy()


def test_sighup_rereads_a_changed_policy_file(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    with policy_ispd(tmp_path, dns_hierarchy, BEFORE) as ispd:
        ispd.start()
        warm(ispd)
        (tmp_path / "policy.rpz").write_text(AFTER)
        ispd.reload()
        ispd.assert_healthy()
        assert_blocked_now(ispd)
