from __future__ import annotations

import pytest

from ispd.mail.dmarc import DNSTemporaryError, evaluate, organisational_domain, parse_record

RECORDS = {
    "_dmarc.my-isp.example": ["v=DMARC1; p=reject; rua=mailto:d@my-isp.example"],
    "_dmarc.strict.example": ["v=DMARC1; p=quarantine; adkim=s; aspf=s"],
    "_dmarc.org.example": ["v=DMARC1; p=reject; sp=quarantine"],
    "_dmarc.two.example": ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
    "_dmarc.sub.strict.example": ["v=DMARC1; p=none", "v=DMARC1; p=none"],
    "_dmarc.nop.example": ["v=DMARC1; rua=mailto:x@nop.example"],
    "_dmarc.other.example": ["some other TXT", "v=DMARC1; p=reject"],
    "_dmarc.trying.example": ["v=DMARC1; p=reject; pct=0"],
    "_dmarc.trying-q.example": ["v=DMARC1; p=quarantine; pct=0"],
    "_dmarc.testing.example": ["v=DMARC1; p=reject; t=y"],
    "_dmarc.all.example": ["v=DMARC1; p=reject; pct=100"],
    "_dmarc.badpct.example": ["v=DMARC1; p=reject; pct=x"],
}


def lookup(name: str) -> list[str]:
    if name == "_dmarc.flaky.example":
        raise DNSTemporaryError("timeout")
    return RECORDS.get(name, [])


def result(from_domains: list[str], spf: str = "fail", spf_domain: str = "", dkim: list[str] | None = None) -> tuple[str, str]:
    outcome = evaluate(from_domains, spf_result=spf, spf_domain=spf_domain, dkim_domains=dkim or [], lookup=lookup)
    return outcome.result, outcome.policy


def test_hyphenated_domains_are_evaluated_as_they_are() -> None:
    assert result(["my-isp.example"]) == ("fail", "reject")
    assert result(["my-isp.example"], spf="pass", spf_domain="bounces.my-isp.example") == ("pass", "reject")
    assert result(["my-isp.example"], dkim=["my-isp.example"]) == ("pass", "reject")
    assert result(["my-isp.example"], dkim=["my-isp.example.evil"]) == ("fail", "reject")


def test_strict_alignment_wants_the_exact_domain() -> None:
    assert result(["strict.example"], dkim=["mail.strict.example"]) == ("fail", "quarantine")
    assert result(["strict.example"], dkim=["strict.example"]) == ("pass", "quarantine")
    assert result(["strict.example"], spf="pass", spf_domain="mail.strict.example") == ("fail", "quarantine")


def test_a_subdomain_falls_back_to_the_organisational_domain_and_its_sp() -> None:
    assert result(["news.org.example"]) == ("fail", "quarantine")
    assert result(["org.example"]) == ("fail", "reject")


def test_a_policy_being_tried_out_applies_the_next_milder_one() -> None:
    # RFC 7489 §6.6.4: pct=0 asks for no failure to get the policy, so reject becomes
    # quarantine and quarantine none (DMARCbis's t=y the same); pct=100 is the policy itself.
    assert result(["trying.example"]) == ("fail", "quarantine")
    assert result(["trying-q.example"]) == ("fail", "none")
    assert result(["testing.example"]) == ("fail", "quarantine")
    assert result(["all.example"]) == ("fail", "reject")
    assert result(["badpct.example"]) == ("fail", "reject")


def test_spf_must_pass_to_count() -> None:
    assert result(["my-isp.example"], spf="softfail", spf_domain="my-isp.example") == ("fail", "reject")


@pytest.mark.parametrize(("domain", "expected"), [
    ("unknown.example", ("none", "")),
    ("two.example", ("none", "")),  # two records: as if none (RFC 7489 §6.6.3)
    ("sub.strict.example", ("none", "")),  # ...and discovery ends there, not at the organisational domain
    ("nop.example", ("fail", "none")),  # no valid p=: p=none
    ("other.example", ("fail", "reject")),  # other TXT records are not DMARC records
    ("flaky.example", ("temperror", "")),
])
def test_policy_discovery(domain: str, expected: tuple[str, str]) -> None:
    assert result([domain]) == expected


def test_with_several_from_domains_the_worst_counts() -> None:
    assert result(["unknown.example", "my-isp.example"], dkim=["unknown.example"]) == ("fail", "reject")
    assert result([]) == ("permerror", "")


@pytest.mark.parametrize(("text", "tags"), [
    ("v=DMARC1; p=reject", {"v": "DMARC1", "p": "reject"}),
    ("v=DMARC1;p=none;", {"v": "DMARC1", "p": "none"}),
    ("p=reject; v=DMARC1", None),
    ("v=spf1 -all", None),
    ("", None),
])
def test_records_are_parsed_as_the_rfc_says(text: str, tags: dict[str, str] | None) -> None:
    assert parse_record(text) == tags


def test_organisational_domains_come_from_the_public_suffix_list() -> None:
    assert organisational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organisational_domain("relay.example-a.test") == "example-a.test"
    assert organisational_domain("Mail.ISP.Example.") == "isp.example"
