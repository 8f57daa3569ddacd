"""The locally served zones: Unbound's default list and answers, and what the operator's
configuration takes out of them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ispd.dns.config import DNSConfig
from ispd.dns.defaultzones import DEFAULT_ZONE_NAMES, DefaultZones
from ispd.dns.wire import RCode, RRType, name_from_text, name_to_text

N = name_from_text


def test_the_list_is_unbounds_102_zones() -> None:
    names = {name_to_text(n) for n in DEFAULT_ZONE_NAMES}
    assert len(names) == len(DEFAULT_ZONE_NAMES) == 102
    for name in ("localhost.", "127.in-addr.arpa.", "onion.", "test.", "invalid.", "home.arpa.", "10.in-addr.arpa.",
                 "16.172.in-addr.arpa.", "31.172.in-addr.arpa.", "168.192.in-addr.arpa.", "64.100.in-addr.arpa.",
                 "127.100.in-addr.arpa.", "d.f.ip6.arpa.", "8.e.f.ip6.arpa.", "b.e.f.ip6.arpa.",
                 "8.b.d.0.1.0.0.2.ip6.arpa.", "1." + "0." * 31 + "ip6.arpa.", "0." * 32 + "ip6.arpa."):
        assert name in names
    assert "63.100.in-addr.arpa." not in names and "128.100.in-addr.arpa." not in names
    assert "18.198.in-addr.arpa." not in names  # 198.18/15 (benchmarking) is not RFC 6303's


def test_localhost_answers_loopback_and_its_reverse_names_localhost() -> None:
    zones = DefaultZones("all")
    for name in ("localhost.", "anything.below.localhost."):
        a = zones.answer(N(name), RRType.A)
        assert a is not None and a.authoritative and a.rcode == RCode.NOERROR
        assert [rr.rdata for rr in a.answer] == [bytes([127, 0, 0, 1])]
        aaaa = zones.answer(N(name), RRType.AAAA)
        assert aaaa is not None and [rr.rdata for rr in aaaa.answer] == [bytes(15) + b"\x01"]
    mx = zones.answer(N("localhost."), RRType.MX)
    assert mx is not None and mx.answer == [] and [rr.rtype for rr in mx.authority] == [RRType.SOA]
    for name in ("1.0.0.127.in-addr.arpa.", "1." + "0." * 31 + "ip6.arpa."):
        ptr = zones.answer(N(name), RRType.PTR)
        assert ptr is not None and [rr.rdata for rr in ptr.answer] == [N("localhost.")]


@pytest.mark.parametrize(("name", "zone"), [
    ("9.9.9.10.in-addr.arpa.", "10.in-addr.arpa."),
    ("1.0.64.100.in-addr.arpa.", "64.100.in-addr.arpa."),
    ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "d.f.ip6.arpa."),
    ("hidden.onion.", "onion."),
    ("router.home.arpa.", "home.arpa."),
    ("2.0.0.127.in-addr.arpa.", "127.in-addr.arpa."),
])
def test_the_others_are_nxdomain_with_their_soa_as_unbound_answers(name: str, zone: str) -> None:
    answer = DefaultZones("all").answer(N(name), RRType.PTR)
    assert answer is not None and answer.rcode == RCode.NXDOMAIN and answer.authoritative
    [soa] = answer.authority
    assert (soa.name, soa.rtype, soa.ttl) == (N(zone), RRType.SOA, 10800)
    assert soa.rdata.endswith((10800).to_bytes(4, "big"))
    ns = DefaultZones("all").answer(N(zone), RRType.NS)
    assert ns is not None and [rr.rdata for rr in ns.answer] == [N("localhost.")]


def test_names_outside_are_not_answered() -> None:
    zones = DefaultZones("all")
    for name in ("www.example.", "1.0.63.100.in-addr.arpa.", "1.0.18.198.in-addr.arpa.", "arpa.", "in-addr.arpa.",
                 "100.in-addr.arpa.", "notlocalhost."):
        assert zones.answer(N(name), RRType.A) is None, name


def test_a_forward_or_stub_zone_at_or_below_a_default_zone_takes_its_names() -> None:
    zones = DefaultZones("all", forwarded=[N("168.192.in-addr.arpa."), N("1.10.in-addr.arpa.")])
    assert zones.answer(N("5.1.168.192.in-addr.arpa."), RRType.PTR) is None
    assert zones.answer(N("5.1.1.10.in-addr.arpa."), RRType.PTR) is None
    assert zones.answer(N("1.10.in-addr.arpa."), RRType.NS) is None
    other = zones.answer(N("5.1.2.10.in-addr.arpa."), RRType.PTR)  # the rest of 10/8 stays local
    assert other is not None and other.rcode == RCode.NXDOMAIN


def test_auto_keeps_only_localhost_where_names_go_to_servers_of_the_operators() -> None:
    everything = {name_to_text(n) for n in DEFAULT_ZONE_NAMES}
    assert set(DefaultZones("auto").origins()) == everything
    localhost = {"localhost.", "127.in-addr.arpa.", "1." + "0." * 31 + "ip6.arpa."}
    assert set(DefaultZones("auto", private_root=True).origins()) == localhost  # (the lab's root serves test.)
    assert set(DefaultZones("auto", forwarded=[N(".")]).origins()) == localhost
    under_arpa = set(DefaultZones("auto", forwarded=[N("in-addr.arpa.")]).origins())
    assert "10.in-addr.arpa." not in under_arpa and "onion." in under_arpa and "127.in-addr.arpa." in under_arpa
    assert set(DefaultZones("all", forwarded=[N(".")]).origins()) == everything  # as Unbound
    assert set(DefaultZones("localhost").origins()) == localhost
    assert DefaultZones("none").origins() == []
    assert DefaultZones("none").answer(N("localhost."), RRType.A) is None


def test_excluded_zones_are_not_served() -> None:
    zones = DefaultZones("all", exclude=["10.in-addr.arpa.", "onion."])
    assert zones.answer(N("1.2.3.10.in-addr.arpa."), RRType.PTR) is None
    assert zones.answer(N("x.onion."), RRType.A) is None
    assert zones.answer(N("1.2.168.192.in-addr.arpa."), RRType.PTR) is not None


def test_config_takes_the_mode_and_refuses_an_exclusion_that_is_no_default_zone() -> None:
    config = DNSConfig(enabled=True, locally_served_zones="all", locally_served_zones_exclude=["10.IN-ADDR.ARPA"])
    assert config.locally_served_zones_exclude == ["10.in-addr.arpa."]
    assert DNSConfig().locally_served_zones == "auto"
    with pytest.raises(ValidationError, match=r"11\.in-addr\.arpa\. is not a locally served zone"):
        DNSConfig(enabled=True, locally_served_zones_exclude=["11.in-addr.arpa."])
    with pytest.raises(ValidationError):
        DNSConfig(enabled=True, locally_served_zones="yes")


@pytest.mark.parametrize("zone", ["10.in-addr.arpa.", "home.arpa.", "d.f.ip6.arpa.", "onion.", "localhost."])
def test_the_ds_at_a_zone_s_apex_is_left_to_its_parent(zone: str) -> None:
    """RFC 4035 §3.1.4.1, and Unbound: DS 10.in-addr.arpa. is the signed in-addr.arpa.'s to answer
    (its NSEC proves the delegation insecure); answered NODATA here, unsigned, a validating stub
    behind ispd cannot prove that and finds every answer under the zone bogus."""
    zones = DefaultZones("all")
    assert zones.answer(N(zone), RRType.DS) is None
    below = zones.answer(N("x." + zone), RRType.DS)  # below the apex: the zone's own answer
    assert below is not None and below.authoritative
    assert zones.answer(N(zone), RRType.SOA) is not None
