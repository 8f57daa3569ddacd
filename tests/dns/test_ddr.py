"""Discovery of Designated Resolvers (RFC 9462): the SVCB records, their wire form as dnspython
reads it, where they are answered, and check-config's certificate warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from pydantic import ValidationError

from ispd.dns.config import DNSConfig
from ispd.dns.ddr import DDR_OWNER, certificate_warnings, designated_records
from ispd.dns.localdata import LocalData
from ispd.dns.wire import RCode, RRType, name_from_text, name_to_text
from ispd.dns.zone import AnswerKind
from tests.lab.certs import issue

CERT = "/nonexistent/cert.pem"


def config(**dns: Any) -> DNSConfig:
    settings: dict[str, Any] = {"enabled": True, "listen": ["198.18.0.53:53"], "ddr": {"name": "dns.isp.example"}}
    settings.update(dns)
    return DNSConfig.model_validate(settings)


def listener(*listen: str, **more: Any) -> dict[str, Any]:
    return {"listen": list(listen), "certificate": CERT, "private_key": CERT, **more}


def presented(rr_rdata: bytes) -> str:
    """The rdata as dnspython reads it from the wire and writes it."""
    return dns.rdata.from_wire(dns.rdataclass.IN, dns.rdatatype.SVCB, rr_rdata, 0, len(rr_rdata)).to_text()


def test_every_listener_is_advertised_in_order_with_its_parameters() -> None:
    c = config(dot=listener("198.18.0.53:853"),
               doh=listener("198.18.0.53:443", "[2001:db8::53]:443", listen_http3=["198.18.0.53:443",
                                                                                   "[2001:db8::53]:443"]),
               doq=listener("0.0.0.0:8853"))
    records = designated_records(c)
    at_arpa = [rr for rr in records if rr.name == DDR_OWNER]
    assert {rr.rtype for rr in records} == {RRType.SVCB} and {rr.ttl for rr in records} == {300}
    assert [presented(rr.rdata) for rr in at_arpa] == [
        '1 dns.isp.example. alpn="h2,h3" ipv4hint="198.18.0.53" ipv6hint="2001:db8::53" dohpath="/dns-query{?dns}"',
        '2 dns.isp.example. alpn="dot" ipv4hint="198.18.0.53"',
        '3 dns.isp.example. alpn="doq" port="8853"',  # a wildcard gives no hint
    ]
    # RFC 9462 §5: the same at _dns.<name>
    assert [rr.rdata for rr in records if rr.name == name_from_text("_dns.dns.isp.example.")] == \
        [rr.rdata for rr in at_arpa]


def test_http3_elsewhere_is_a_record_of_its_own_and_the_path_is_the_configured_one() -> None:
    c = config(doh=listener("198.18.0.53:8443", listen_http3=["198.18.0.53:443"], path="/q"))
    assert [presented(rr.rdata) for rr in designated_records(c) if rr.name == DDR_OWNER] == [
        '1 dns.isp.example. alpn="h2" port="8443" ipv4hint="198.18.0.53" dohpath="/q{?dns}"',
        '2 dns.isp.example. alpn="h3" ipv4hint="198.18.0.53" dohpath="/q{?dns}"',
    ]


def test_off_without_a_name() -> None:
    c = DNSConfig.model_validate({"enabled": True, "dot": listener("198.18.0.53:853")})
    assert designated_records(c) == []


@pytest.mark.parametrize(("settings", "error"), [
    ({}, "no encrypted listener"),
    ({"dot": listener("198.18.0.53:0")}, "port 0"),
    ({"dot": listener("198.18.0.53:853"), "ddr": {"name": "*.isp.example"}}, "host name"),
])
def test_a_designation_of_nothing_is_refused(settings: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        config(**settings)


def test_answered_locally_and_nothing_else_under_resolver_arpa_is_resolved() -> None:
    c = config(dot=listener("198.18.0.53:853"))
    local = LocalData(designated=designated_records(c))
    answer = local.answer(DDR_OWNER, RRType.SVCB)
    assert answer is not None and answer.rcode == RCode.NOERROR and len(answer.answer) == 1
    nodata = local.answer(DDR_OWNER, RRType.A)
    assert nodata is not None and nodata.kind == AnswerKind.NODATA
    other = local.answer(name_from_text("_other.resolver.arpa."), RRType.SVCB)
    assert other is not None and other.rcode == RCode.NOERROR and other.kind == AnswerKind.NODATA
    named = local.answer(name_from_text("_dns.dns.isp.example."), RRType.SVCB)
    assert named is not None and len(named.answer) == 1
    # the designated name itself, and the rest of its zone, are still resolved
    assert local.answer(name_from_text("dns.isp.example."), RRType.A) is None
    # with DDR off too: never resolved elsewhere (RFC 9462 §4), NXDOMAIN
    off = LocalData().answer(DDR_OWNER, RRType.SVCB)
    assert off is not None and off.rcode == RCode.NXDOMAIN and name_to_text(off.authority[0].name) == "resolver.arpa."


def test_check_config_warns_of_a_certificate_that_does_not_cover_the_name_or_the_address(tmp_path: Path) -> None:
    good = issue(tmp_path, "dns.isp.example", name="good", addresses=("198.18.0.53",))
    wrong = issue(tmp_path, "other.example", name="wrong", addresses=("198.18.0.54",))

    def with_certificate(path: Path) -> DNSConfig:
        return config(dot={"listen": ["198.18.0.53:853"], "certificate": str(path),
                           "private_key": str(good.private_key)})

    assert certificate_warnings(with_certificate(good.certificate)) == []
    warnings = certificate_warnings(with_certificate(wrong.certificate))
    assert len(warnings) == 2
    assert "ddr.name dns.isp.example: not in the certificate of [dns.dot]" in warnings[0]
    assert "no IP address SubjectAltName for 198.18.0.53 (listen)" in warnings[1]
    wildcard = issue(tmp_path, "*.isp.example", name="wildcard", addresses=("198.18.0.53",))
    assert certificate_warnings(with_certificate(wildcard.certificate)) == []


@pytest.mark.parametrize("name", ["_other.resolver.arpa.", "resolver.arpa.", "x._dns.resolver.arpa.", "a.b.resolver.arpa."])
def test_with_ddr_on_every_other_name_under_resolver_arpa_is_nodata(name: str) -> None:
    """RFC 9462 §6.4: a resolver that answers _dns.resolver.arpa. SHOULD answer NODATA for any
    name under resolver.arpa. (as AdGuard DNS does), not NXDOMAIN; with its SOA for the
    negative TTL."""
    local = LocalData(designated=designated_records(config(dot=listener("198.18.0.53:853"))))
    answer = local.answer(name_from_text(name), RRType.A)
    assert answer is not None and answer.rcode == RCode.NOERROR and answer.kind == AnswerKind.NODATA
    assert answer.answer == [] and [rr.rtype for rr in answer.authority] == [RRType.SOA] and answer.authoritative
