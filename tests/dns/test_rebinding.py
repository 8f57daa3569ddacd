"""The rebinding guard on its own: which A and AAAA records it drops."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ispd.dns.dns64 import DNS64
from ispd.dns.rebinding import RebindingGuard
from ispd.dns.wire import CLASS_IN, RR, RRType, name_from_labels, name_from_text

N = name_from_text


def a(name: bytes, address: str) -> RR:
    return RR(name, RRType.A, CLASS_IN, 60, IPv4Address(address).packed)


def aaaa(name: bytes, address: str) -> RR:
    return RR(name, RRType.AAAA, CLASS_IN, 60, IPv6Address(address).packed)


def test_only_private_addresses_of_names_outside_the_allowed_domains_go() -> None:
    guard = RebindingGuard((IPv4Network("192.168.0.0/16"), IPv6Network("fd00::/8")), [N("corp.example.")])
    assert guard.enabled and not RebindingGuard().enabled
    public, evil = N("www.example."), N("evil.example.")
    upper = name_from_labels([b"Host", b"CORP", b"Example"])  # a name as a server may spell it
    records = [
        a(public, "192.0.2.1"), a(evil, "192.168.1.1"), aaaa(evil, "fd12::1"), aaaa(evil, "::ffff:192.168.0.9"),
        aaaa(public, "2001:db8::1"), a(upper, "192.168.5.5"), a(N("corp.example."), "192.168.5.6"),
        RR(evil, RRType.TXT, CLASS_IN, 60, b"\x0b192.168.1.1"), RR(evil, RRType.A, CLASS_IN, 60, b"\xc0\xa8"),
    ]
    kept = guard.scrub(records)
    assert kept == [records[0], records[4], records[5], records[6], records[7], records[8]]
    assert guard.removed == 3


def test_an_ipv6_network_of_mapped_addresses_covers_them_too() -> None:
    guard = RebindingGuard((IPv6Network("::ffff:0:0/96"),))
    evil = N("evil.example.")
    assert guard.scrub([aaaa(evil, "::ffff:198.51.100.1"), a(evil, "198.51.100.1")]) == [a(evil, "198.51.100.1")]


def test_an_aaaa_under_the_nat64_prefix_is_judged_by_the_ipv4_address_it_embeds() -> None:
    """Through the NAT64, 2001:db8:64::c0a8:101 is 192.168.1.1."""
    guard = RebindingGuard((IPv4Network("192.168.0.0/16"),), nat64=DNS64(IPv6Network("2001:db8:64::/96")))
    evil = N("evil.example.")
    inside, outside = aaaa(evil, "2001:db8:64::c0a8:101"), aaaa(evil, "2001:db8:64::c000:201")
    assert guard.scrub([inside, outside, aaaa(evil, "2001:db8:65::c0a8:101")]) == [
        outside, aaaa(evil, "2001:db8:65::c0a8:101")]
    assert RebindingGuard((IPv4Network("192.168.0.0/16"),)).scrub([inside]) == [inside]
