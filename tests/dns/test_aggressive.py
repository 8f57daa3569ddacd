"""RFC 8198: what cached NSEC records of a zone signed by dnssec-signzone prove, and what not."""

from __future__ import annotations

from pathlib import Path

import pytest

from ispd.dns.aggressive import NsecIndex
from ispd.dns.wire import RRType, name_from_text
from tests.dns.test_dnssec import Signed, _sign

N = name_from_text


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    return _sign(tmp_path_factory.mktemp("aggressive"), "ECDSAP256SHA256")


def index_of(zone: Signed, ttl: float = 300) -> NsecIndex:
    index = NsecIndex()
    soa = [rr for rr in zone.records if rr.rtype == RRType.SOA]
    proof = zone.of_type(RRType.NSEC) + [rr for rr in zone.records if rr.rtype == RRType.RRSIG]
    index.learn(zone.origin, soa, proof, ttl, now=0.0)
    return index


def test_nxdomain_needs_the_name_and_the_wildcard_denied(zone: Signed) -> None:
    index = index_of(zone)
    found = index.answer(zone.origin, N("nope.example.test"), RRType.A, 1.0)
    assert found is not None and found.nxdomain
    assert {rr.rtype for rr in found.soa} == {RRType.SOA, RRType.RRSIG}
    assert {rr.rtype for rr in found.proof} == {RRType.NSEC, RRType.RRSIG} and found.ttl == 299
    # Under *.wild a name matches the wildcard: nothing to deny.
    assert index.answer(zone.origin, N("x.wild.example.test"), RRType.A, 1.0) is None
    # Names that exist, and names below a delegation, are not this index's to deny.
    assert index.answer(zone.origin, N("www.example.test"), RRType.A, 1.0) is None
    assert index.answer(zone.origin, N("host.child.example.test"), RRType.A, 1.0) is None


def test_nodata_from_the_nsec_at_the_name(zone: Signed) -> None:
    index = index_of(zone)
    found = index.answer(zone.origin, N("www.example.test"), RRType.TXT, 1.0)
    assert found is not None and not found.nxdomain
    assert index.answer(zone.origin, N("alias.example.test"), RRType.A, 1.0) is None  # a CNAME is there
    assert index.answer(zone.origin, N("child.example.test"), RRType.A, 1.0) is None  # a delegation
    ds = index.answer(zone.origin, N("child.example.test"), RRType.DS, 1.0)
    assert ds is not None and not ds.nxdomain  # but its DS is the parent's to deny
    # The apex's NSEC lists no DS, yet the zone's DS set is in its parent: not this zone's to deny.
    assert index.answer(zone.origin, zone.origin, RRType.DS, 1.0) is None


def test_empty_non_terminals_and_any_are_not_denied(zone: Signed) -> None:
    """An empty non-terminal exists (the NSEC before it names something below it), and no
    bitmap lists ANY: neither gets a synthesised NXDOMAIN or NODATA."""
    index = index_of(zone)
    for ent in ("sub.example.test", "ent.sub.example.test", "wild.example.test"):
        assert index.answer(zone.origin, N(ent), RRType.TXT, 1.0) is None, ent
    assert index.answer(zone.origin, N("www.example.test"), RRType.ANY, 1.0) is None
    nxdomain = index.answer(zone.origin, N("nope.sub.example.test"), RRType.ANY, 1.0)
    assert nxdomain is not None and nxdomain.nxdomain  # below the empty non-terminal: nothing


def test_entries_expire_and_the_zone_is_found_by_name(zone: Signed, tmp_path: Path) -> None:
    index = index_of(zone, ttl=10)
    assert index.zone_of(N("a.b.example.test")) == zone.origin
    assert index.zone_of(N("example.org")) is None
    assert index.answer(zone.origin, N("nope.example.test"), RRType.A, 11.0) is None


@pytest.mark.parametrize("opt_out", [False, True])
def test_nsec3_closest_encloser_and_nodata(opt_out: bool, tmp_path_factory: pytest.TempPathFactory) -> None:
    zone = _sign(tmp_path_factory.mktemp(f"nsec3-{opt_out}"), "ECDSAP256SHA256", nsec3=True, opt_out=opt_out)
    index = NsecIndex()
    soa = [rr for rr in zone.records if rr.rtype == RRType.SOA]
    proof = zone.of_type(RRType.NSEC3) + [rr for rr in zone.records if rr.rtype == RRType.RRSIG]
    index.learn(zone.origin, soa, proof, 300, now=0.0)
    nxdomain = index.answer(zone.origin, N("nope.example.test"), RRType.A, 1.0)
    nodata = index.answer(zone.origin, N("www.example.test"), RRType.TXT, 1.0)
    assert nodata is not None and not nodata.nxdomain  # a matching NSEC3 proves it, opt-out or not
    assert {rr.rtype for rr in nodata.proof} == {RRType.NSEC3, RRType.RRSIG}
    if opt_out:
        assert nxdomain is None  # an opt-out span may hide an unsigned delegation: no proof
    else:
        assert nxdomain is not None and nxdomain.nxdomain
        assert 2 <= sum(rr.rtype == RRType.NSEC3 for rr in nxdomain.proof) <= 3
    assert index.answer(zone.origin, N("www.example.test"), RRType.A, 1.0) is None
    assert index.answer(zone.origin, N("www.example.test"), RRType.ANY, 1.0) is None
    assert index.answer(zone.origin, N("x.wild.example.test"), RRType.A, 1.0) is None  # the wildcard matches


def test_nsec3_synthesis_makes_a_bounded_number_of_hash_calculations() -> None:
    """CVE-2023-50868 through RFC 8198: every made-up name of 100 labels under a chain of 150
    iterations and a long salt was hashed at each ancestor before the cached NSEC3 records
    answered it. Past the budget nothing is synthesised (the servers' proof is held to it too)."""
    from ispd.dns import dnssec
    from ispd.dns.wire import RR
    from tests.dns.test_dnssec import _nsec3_chain

    zone = name_from_text("n3.test")
    soa = [RR(zone, RRType.SOA, 1, 300, b"\x00\x00" + bytes(20))]
    index = NsecIndex()
    index.learn(zone, soa, _nsec3_chain("n3.test.", ["n3.test", "www.n3.test"], 150, b"\xab" * 255), 300, now=0.0)
    deep = name_from_text("a." * 100 + "x.n3.test")
    with pytest.raises(dnssec.Nsec3Exhausted):
        index.answer(zone, deep, RRType.A, 1.0, dnssec.Nsec3Budget(8))
    found = index.answer(zone, name_from_text("b.x.n3.test"), RRType.A, 1.0, dnssec.Nsec3Budget(8))
    assert found is not None and found.nxdomain
