"""DNSSEC validation by ispd as a real process over the lab's signed hierarchy (a signed root,
test. and its signed children, unsigned zones below them), given the hierarchy's trust anchor,
asked by dig +dnssec and delv. Every case's outcome was checked against Unbound by
tests/dns/test_lab_hierarchy.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.certs import issue
from tests.lab.dnshier import DigResult, DNSHierarchy, Expectation, dnssec_expectations
from tests.lab.dnsispd import DNSIspd, rdatas
from tests.lab.ports import free_tcp_port
from tests.lab.process import eventually

CASES = dnssec_expectations()


@pytest.fixture(scope="module")
def validating(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSIspd]:
    with DNSIspd(tmp_path_factory.mktemp("ispd-dnssec"), dns_hierarchy) as ispd:
        ispd.start()
        yield ispd
        ispd.assert_healthy()


@pytest.mark.parametrize("case", CASES, ids=[c.case for c in CASES])
def test_every_dnssec_case_and_again_from_the_cache(dns_hierarchy: DNSHierarchy, validating: DNSIspd,
                                                    case: Expectation) -> None:
    expected = dns_hierarchy.expect(case.qname, case.qtype, validating=True)
    for _ in range(2):
        result = validating.dig(expected.qname, expected.qtype, "+dnssec", timeout=10)
        assert expected.problems(result) == [], result.text
        if expected.security == "secure":
            assert any(r.type == "RRSIG" for r in result.answer + result.authority), result.text


@pytest.mark.parametrize("case", [c for c in CASES if c.security == "bogus"], ids=lambda c: c.case)
def test_checking_disabled_gets_the_bogus_data(dns_hierarchy: DNSHierarchy, validating: DNSIspd,
                                               case: Expectation) -> None:
    expected = dns_hierarchy.expect(case.qname, case.qtype, validating=True).unvalidated()
    result = validating.dig(expected.qname, expected.qtype, "+cd", "+dnssec")
    assert expected.problems(result) == [], result.text
    assert "ad" not in result.flags, result.text


def test_dnssec_records_only_for_queries_with_do(validating: DNSIspd) -> None:
    plain = validating.dig("www.secure.test", "A", "+noadflag")
    assert rdatas(plain) == {"198.18.5.1"} and "ad" not in plain.flags, plain.text
    assert not any(r.type == "RRSIG" for r in plain.answer), plain.text
    asked_ad = validating.dig("www.secure.test", "A", "+adflag")
    assert "ad" in asked_ad.flags and not any(r.type == "RRSIG" for r in asked_ad.answer), asked_ad.text
    signed = validating.dig("nope.secure.test", "A", "+dnssec")
    assert signed.status == "NXDOMAIN" and "ad" in signed.flags, signed.text
    assert {r.type for r in signed.authority} >= {"SOA", "RRSIG", "NSEC"}, signed.text
    unsigned = validating.dig("nope.secure.test", "A", "+noadflag")
    assert {r.type for r in unsigned.authority} == {"SOA"}, unsigned.text


def test_delv_validates_what_ispd_hands_over(dns_hierarchy: DNSHierarchy, validating: DNSIspd,
                                             tmp_path: Path) -> None:
    if shutil.which("delv") is None:
        pytest.skip("delv not installed (tools/setup --test installs bind9-dnsutils)")
    anchors = []
    for line in dns_hierarchy.trust_anchor().splitlines():
        fields = line.split()
        if "DS" in fields:
            tag, algorithm, digest_type, *digest = fields[fields.index("DS") + 1:]
            anchors.append(f'"." static-ds {tag} {algorithm} {digest_type} "{"".join(digest)}";')
    (tmp_path / "anchors.conf").write_text("trust-anchors {\n" + "\n".join(anchors) + "\n};\n")

    def delv(name: str) -> str:
        result = subprocess.run(["delv", "@127.0.0.1", "-p", str(validating.port), "-a", str(tmp_path / "anchors.conf"),
                                 "+root=.", name, "A"], capture_output=True, text=True, timeout=30)
        return result.stdout + result.stderr

    # RFC 8020: below an NXDOMAIN, from the cache, with the proof a validator needs.
    for parent in ("gone-8020.secure.test", "zq4-8020.nsec3.test"):
        assert validating.dig(parent, "A", "+dnssec").status == "NXDOMAIN"
        below = validating.dig(f"a.{parent}", "A", "+dnssec")
        assert below.status == "NXDOMAIN" and {r.type for r in below.authority} >= {"SOA", "RRSIG"}, below.text
        assert "; negative response, fully validated" in (text := delv(f"a.{parent}")), text
    assert "; fully validated" in (text := delv("www.secure.test")), text
    assert "; fully validated" in (text := delv("x.wild.secure.test")), text
    assert "; unsigned answer" in (text := delv("www.example-a.test")), text
    # A validating client that does not set CD gets SERVFAIL for bogus data, as from any validator.
    assert "fully validated" not in (text := delv("www.expired.test")), text


def test_negative_trust_anchor_added_listed_and_deleted(validating: DNSIspd) -> None:
    assert validating.dig("www.expired.test", "A", "+dnssec").status == "SERVFAIL"
    added = validating.cli("dns", "nta", "add", "expired.test", "--for", "2h")
    assert "expired.test." in added.stdout and "2h" in added.stdout
    result = validating.dig("www.expired.test", "A", "+dnssec")
    assert result.status == "NOERROR" and rdatas(result) == {"198.18.5.7"} and "ad" not in result.flags, result.text
    listed = json.loads(validating.cli("dns", "nta", "list", "--json").stdout)
    assert [(a["name"], a["source"]) for a in listed] == [("expired.test.", "runtime")]
    assert 7000 < listed[0]["seconds_left"] <= 7200
    assert validating.metric("ispd_dns_dnssec_negative_trust_anchors") == 1
    validating.cli("dns", "nta", "delete", "expired.test")
    assert validating.dig("www.expired.test", "A", "+dnssec").status == "SERVFAIL"
    refused = validating.cli("dns", "nta", "delete", "expired.test", check=False)
    assert refused.returncode != 0 and "not a negative trust anchor" in refused.stderr
    bad = validating.cli("dns", "nta", "add", "expired.test", "--for", "30d", check=False)
    assert bad.returncode == 2 and "between 1s and 7d" in bad.stderr


def test_cached_nsec_records_answer_other_names_they_deny(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    """RFC 8198: once nope.secure.test's NXDOMAIN is validated, its NSEC records deny nope2
    and www's NSEC denies its other types, without a question upstream; NSEC3 likewise."""
    upstream = "ispd_dns_upstream_queries_total"
    with DNSIspd(tmp_path / "aggressive", dns_hierarchy) as ispd:
        ispd.start()
        first = ispd.dig("nope.secure.test", "A", "+dnssec")
        assert first.status == "NXDOMAIN" and "ad" in first.flags, first.text
        nodata = ispd.dig("www.secure.test", "AAAA", "+dnssec")
        assert nodata.status == "NOERROR" and not nodata.answer and "ad" in nodata.flags, nodata.text
        asked = ispd.metric(upstream)
        again = ispd.dig("nope2.secure.test", "A", "+dnssec")
        assert again.status == "NXDOMAIN" and "ad" in again.flags, again.text
        assert {r.type for r in again.authority} >= {"SOA", "NSEC", "RRSIG"}, again.text
        other = ispd.dig("www.secure.test", "TXT", "+dnssec")
        assert other.status == "NOERROR" and not other.answer and "ad" in other.flags, other.text
        assert ispd.metric(upstream) == asked, "answered from cached NSEC records, not asked upstream"
        assert ispd.metric("ispd_dns_dnssec_synthesised_answers_total") == 2
        # The same with NSEC3 (p384.test: no opt-out), by the closest encloser proof. Hashes fall
        # anywhere: of ten new names, those whose hash a cached span covers need no question.
        first = ispd.dig("nope.p384.test", "A", "+dnssec")  # the delegation and the zone's keys, once
        assert first.status == "NXDOMAIN" and "ad" in first.flags, first.text
        asked, synthesised = ispd.metric(upstream), ispd.metric("ispd_dns_dnssec_synthesised_answers_total")
        for i in range(10):
            hashed = ispd.dig(f"nope{i}.p384.test", "A", "+dnssec")
            assert hashed.status == "NXDOMAIN" and "ad" in hashed.flags, hashed.text
            assert "NSEC3" in {r.type for r in hashed.authority}, hashed.text
        from_cache = ispd.metric("ispd_dns_dnssec_synthesised_answers_total") - synthesised
        assert from_cache >= 1 and ispd.metric(upstream) - asked <= 10 - from_cache
        # A name that exists is not denied by a neighbouring span.
        txt = ispd.dig("txt.secure.test", "TXT", "+dnssec")
        assert txt.status == "NOERROR" and {r.rdata for r in txt.answer if r.type == "TXT"} == {'"signed"'}, txt.text


def test_the_validators_questions_are_not_held_to_the_zone_rate_limit(dns_hierarchy: DNSHierarchy,
                                                                       tmp_path: Path) -> None:
    """With test.'s servers limited to one query a second, the referral to secure.test takes
    that second's query; test.'s DNSKEY and secure.test's DS, which the validator then asks of
    the same servers, go all the same. Before, they were stopped and secure.test was bogus
    (SERVFAIL) for bogus_ttl_seconds: a flood under a parent poisoned its signed children."""
    limit = {"zone_rate_limit_for": [{"name": "test", "qps": 1}], "zone_rate_limit_factor": 0,
             "qname_minimisation": "off"}
    with DNSIspd(tmp_path / "limited", dns_hierarchy, resolver=limit) as ispd:
        ispd.start()
        answer = ispd.dig("www.secure.test", "A", "+dnssec")
        assert answer.status == "NOERROR" and "ad" in answer.flags, answer.text
        assert rdatas(answer) == {"198.18.5.1"}


def test_strict_minimisation_proves_a_name_below_one_that_does_not_exist(dns_hierarchy: DNSHierarchy,
                                                                         tmp_path: Path) -> None:
    """Strict QNAME minimisation takes the NXDOMAIN for nothere.secure.test as the answer for
    a.nothere.secure.test (RFC 8020); from a code read, it dropped the NSEC proof and the zone
    of that reply, and the validator found "an unsigned denial from a signed zone": SERVFAIL,
    where Unbound answers NXDOMAIN."""
    with DNSIspd(tmp_path / "strict", dns_hierarchy, resolver={"qname_minimisation": "strict"}) as ispd:
        ispd.start()
        answer = ispd.dig("a.nothere.secure.test", "A", "+dnssec")
        assert answer.status == "NXDOMAIN" and "ad" in answer.flags, answer.text


def test_verdicts_and_failures_are_counted(validating: DNSIspd) -> None:
    validating.dig("www.badds.test", "A", "+dnssec")
    validating.dig("www.secure.test", "A", "+dnssec")
    assert validating.metric("ispd_dns_dnssec_verdicts_total", {"verdict": "secure"}) > 0
    assert validating.metric("ispd_dns_dnssec_verdicts_total", {"verdict": "bogus"}) > 0
    assert validating.metric("ispd_dns_dnssec_failures_total", {"reason": "dnskey_missing"}) > 0


def test_lookup_command_says_the_verdict(validating: DNSIspd) -> None:
    secure = validating.cli("dns", "lookup", "www.secure.test")
    assert ";; DNSSEC: secure" in secure.stdout and re.search(r"flags:.* ad", secure.stdout), secure.stdout
    bogus = validating.cli("dns", "lookup", "www.expired.test", check=False)
    assert bogus.returncode != 0 and ";; DNSSEC: bogus" in bogus.stdout
    assert "Extended DNS Error 7" in bogus.stderr


def test_a_negative_trust_anchor_of_the_config_file_stays(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    with DNSIspd(tmp_path / "nta", dns_hierarchy, dnssec={"negative_trust_anchors": ["expired.test"]}) as ispd:
        ispd.start()
        assert ispd.dig("www.expired.test", "A", "+dnssec").status == "NOERROR"
        for command in (("add", "expired.test", "--for", "1m"), ("delete", "expired.test")):
            refused = ispd.cli("dns", "nta", *command, check=False)
            assert refused.returncode != 0 and "of the config file" in refused.stderr, refused.stderr
        listed = json.loads(ispd.cli("dns", "nta", "list", "--json").stdout)
        assert listed == [{"name": "expired.test.", "seconds_left": None, "source": "config"}]


def test_validation_off_answers_bogus_data_without_ad(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    with DNSIspd(tmp_path / "off", dns_hierarchy, dnssec={"validation": False}) as ispd:
        ispd.start()
        result: DigResult = ispd.dig("www.expired.test", "A", "+dnssec")
        assert result.status == "NOERROR" and rdatas(result) == {"198.18.5.7"} and "ad" not in result.flags
        assert not any(r.type == "RRSIG" for r in result.answer), "a non-validating ispd does not ask with DO"


def test_the_root_key_is_tracked_in_the_store_and_survives_a_restart(dns_hierarchy: DNSHierarchy,
                                                                     tmp_path: Path) -> None:
    """RFC 5011: at start ispd refreshes the root's DNSKEY set, trusts the KSK the configured DS
    names, and keeps it in the store; a changed anchor file starts the tracking afresh."""
    workdir = tmp_path / "anchors"
    ksk_tags = {int(line.split()[line.split().index("DS") + 1])
                for line in dns_hierarchy.trust_anchor().splitlines() if "DS" in line.split()}

    def tracked(ispd: DNSIspd) -> list[dict[str, object]]:
        return list(json.loads(ispd.cli("dns", "anchors", "--json").stdout))

    with DNSIspd(workdir, dns_hierarchy) as ispd:
        ispd.start()
        time.sleep(0.5)
        assert tracked(ispd) == [], "an idle resolver asks nobody anything, the root included"
        assert ispd.dig("www.secure.test", "A", "+dnssec").flags >= {"ad"}
        eventually(lambda: tracked(ispd), timeout=10)
        hits = ispd.metric("ispd_dns_cache_hits_total")
        assert ispd.dig("www.secure.test", "A", "+dnssec").flags >= {"ad"}
        assert ispd.metric("ispd_dns_cache_hits_total") == hits + 1, "tracking the same key flushed the cache"
        keys = tracked(ispd)
        assert {k["key_tag"] for k in keys} == ksk_tags and {k["state"] for k in keys} == {"valid"}, keys
        since = keys[0]["since"]
    with DNSIspd(workdir, dns_hierarchy) as ispd:  # the same store: the state is read back, not relearnt
        ispd.start()
        assert ispd.dig("www.secure.test", "A", "+dnssec").flags >= {"ad"}
        assert [k["since"] for k in tracked(ispd)] == [since]
        text = ispd.cli("dns", "anchors").stdout
        assert re.search(r"^\.\tkey \d+\talgorithm 13\tvalid\tsince ", text, re.M), text


def test_the_admin_api_manages_negative_trust_anchors_and_shows_the_anchor_keys(validating: DNSIspd) -> None:
    def call(method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, object]:
        command = ["curl", "-sS", "-X", method, "-w", "\\n%{http_code}", "--unix-socket",
                   str(validating.workdir / "admin.sock"), f"http://ispd{path}"]
        if body is not None:
            command += ["-H", "content-type: application/json", "-d", json.dumps(body)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        text, _, status = result.stdout.rpartition("\n")
        return int(status), json.loads(text) if text else None

    status, added = call("POST", "/v1/dns/negative-trust-anchors", {"name": "badds.test", "seconds": 600})
    assert status == 201 and added == {"name": "badds.test.", "seconds_left": 600, "source": "runtime"}, added
    result = validating.dig("www.badds.test", "A", "+dnssec")
    assert result.status == "NOERROR" and "ad" not in result.flags, result.text
    status, listed = call("GET", "/v1/dns/negative-trust-anchors")
    assert status == 200 and [a["name"] for a in listed] == ["badds.test."]  # type: ignore[union-attr,index]
    assert call("POST", "/v1/dns/negative-trust-anchors", {"name": "x.test", "seconds": 30 * 86400})[0] == 422
    assert call("DELETE", "/v1/dns/negative-trust-anchors/badds.test")[0] == 200
    # As every other DELETE: one no longer there is a 404, a malformed name a 400 (as POST's),
    # and a conflict (409) is for one the API cannot delete: the config file's.
    status, body = call("DELETE", "/v1/dns/negative-trust-anchors/badds.test")
    assert status == 404 and "is not a negative trust anchor" in body["detail"], body  # type: ignore[index]
    assert call("DELETE", "/v1/dns/negative-trust-anchors/bad..name")[0] == 400
    assert validating.dig("www.badds.test", "A", "+dnssec").status == "SERVFAIL"
    status, keys = call("GET", "/v1/dns/trust-anchors")
    assert status == 200 and {k["state"] for k in keys} == {"valid"}, keys  # type: ignore[union-attr,index]


def test_validated_answers_over_dot_and_doh(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    """The same verdicts over DNS over TLS and DNS over HTTPS (kdig), where replies are padded:
    AD on a secure answer, SERVFAIL with the Extended DNS Error beside the padding option."""
    if shutil.which("kdig") is None:
        pytest.skip("kdig not installed (tools/setup --test installs knot-dnsutils)")
    certs = issue(tmp_path / "tls", "dns.lab.test")
    dot, doh = free_tcp_port(), free_tcp_port()
    files = {"certificate": str(certs.certificate), "private_key": str(certs.private_key)}
    with DNSIspd(tmp_path / "encrypted", dns_hierarchy, dot={"listen": [f"127.0.0.1:{dot}"], **files},
                 doh={"listen": [f"127.0.0.1:{doh}"], **files}) as ispd:
        ispd.start()
        for port, transport in ((dot, "+tls"), (doh, "+https")):
            def ask(name: str, port: int = port, transport: str = transport) -> str:
                command = ["kdig", "@127.0.0.1", "-p", str(port), transport, f"+tls-ca={certs.ca}",
                           "+tls-hostname=dns.lab.test", "+dnssec", "+time=5", "+retry=0", name, "A"]
                result = subprocess.run(command, capture_output=True, text=True, timeout=20)
                return result.stdout + result.stderr

            secure = ask("www.secure.test")
            assert "status: NOERROR" in secure and re.search(r";; Flags: .*\bad\b", secure), secure
            assert "RRSIG" in secure and "PADDING" in secure, secure
            bogus = ask("www.expired.test")
            assert "status: SERVFAIL" in bogus and "EDE: 7" in bogus and "PADDING" in bogus, bogus
