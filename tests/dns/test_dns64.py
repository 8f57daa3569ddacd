"""DNS64's address embedding (RFC 6052 §2.4's examples) and what counts as an AAAA record."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest

from ispd.dns.dns64 import DNS64, check_prefix
from ispd.dns.wire import name_from_text

V4 = IPv4Address("192.0.2.33").packed


@pytest.mark.parametrize(("prefix", "embedded"), [  # RFC 6052 §2.4, Table 2
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
])
def test_each_prefix_length_embeds_as_rfc_6052_shows(prefix: str, embedded: str) -> None:
    dns64 = DNS64(IPv6Network(prefix))
    assert IPv6Address(dns64.embed(V4)) == IPv6Address(embedded)
    assert dns64.extract(IPv6Address(embedded).packed) == V4
    assert dns64.extract(IPv6Address("2001:db9::1").packed) is None


def test_the_well_known_prefix_embeds_global_addresses_only() -> None:
    well_known = DNS64(IPv6Network("64:ff9b::/96"))
    assert IPv6Address(well_known.embed(IPv4Address("93.184.215.14").packed)) == IPv6Address("64:ff9b::5db8:d70e")
    assert well_known.may_embed(IPv4Address("93.184.215.14").packed)
    for private in ("10.1.2.3", "192.168.0.1", "198.18.0.10", "127.0.0.1", "100.64.0.1"):
        assert not well_known.may_embed(IPv4Address(private).packed), private
    assert DNS64(IPv6Network("2001:db8:64::/96")).may_embed(IPv4Address("10.1.2.3").packed)
    # ipv4only.arpa's addresses are not global, but IPv6-only hosts find the prefix in their
    # AAAA records (RFC 7050 §3): they are made under the well-known prefix too.
    for well_known_ipv4 in ("192.0.0.170", "192.0.0.171"):
        assert well_known.may_embed(IPv4Address(well_known_ipv4).packed), well_known_ipv4


def test_the_well_known_prefix_does_not_lean_on_the_pythons_idea_of_global() -> None:
    """From a bug hunt: a name with A records 192.0.0.8 and 224.0.0.1 got AAAA records
    64:ff9b::c000:8 and 64:ff9b::e000:1 (dig, ispd run under Python 3.11.7, whose
    IPv4Address.is_global calls both global). RFC 6052 §3.1 forbids non-global addresses under
    the well-known prefix: IANA's whole 192.0.0.0/24 but for two anycast addresses, and
    multicast, which no NAT64 translates."""
    well_known = DNS64(IPv6Network("64:ff9b::/96"))
    for not_global in ("192.0.0.8", "192.0.0.100", "224.0.0.1", "239.255.255.250", "233.252.0.1",
                       "255.255.255.255", "0.0.0.1"):
        assert not well_known.may_embed(IPv4Address(not_global).packed), not_global
    for global_ in ("192.0.0.9", "192.0.0.10", "192.0.1.1", "1.1.1.1", "223.255.255.255"):
        assert well_known.may_embed(IPv4Address(global_).packed), global_
    # A network-specific prefix is the operator's: every address goes.
    assert DNS64(IPv6Network("2001:db8:64::/96")).may_embed(IPv4Address("224.0.0.1").packed)


def test_excluded_aaaa_records_do_not_count() -> None:
    dns64 = DNS64(IPv6Network("64:ff9b::/96"))
    assert dns64.counts(IPv6Address("2001:db8::1").packed)
    assert not dns64.counts(IPv6Address("::ffff:192.0.2.1").packed)
    assert DNS64(IPv6Network("64:ff9b::/96"), exclude=()).counts(IPv6Address("::ffff:192.0.2.1").packed)


@pytest.mark.parametrize(("prefix", "error"), [
    ("2001:db8::/33", "a /32, /40, /48, /56, /64 or /96"),
    ("2001:db8:0:0:ff00::/96", "bits 64 to 71"),
])
def test_prefixes_that_cannot_embed_are_refused(prefix: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_prefix(IPv6Network(prefix))


def test_a_reverse_name_under_the_prefix_maps_to_the_ipv4_addresses_name() -> None:
    dns64 = DNS64(IPv6Network("2001:db8:64::/96"))
    under = name_from_text(IPv6Address("2001:db8:64::c612:7f01").reverse_pointer)
    assert dns64.reverse_target(under) == name_from_text("1.127.18.198.in-addr.arpa.")
    for other in (IPv6Address("2001:db8:65::c612:7f01").reverse_pointer, "1.0.0.2.ip6.arpa",
                  "c612:7f01.example.", IPv6Address("2001:db8:64::1").reverse_pointer.replace(".1.", ".x.", 1)):
        assert dns64.reverse_target(name_from_text(other)) is None, other
