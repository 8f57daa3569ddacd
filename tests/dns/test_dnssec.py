"""DNSSEC primitives against zones signed by BIND's dnssec-signzone (an independent signer)."""

from __future__ import annotations

import contextlib
import random
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.zone
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispd.dns import dnssec
from ispd.dns.dnssec import EDE, Denial
from ispd.dns.wire import RR, RCode, RRType, name_from_text

ZONE = """$ORIGIN example.test.
$TTL 3600
@ IN SOA ns1 hostmaster 1 3600 900 604800 300
@ IN NS ns1
ns1 IN A 198.18.0.53
www IN A 198.18.0.1
www IN A 198.18.0.2
Mixed IN MX 10 Mail.Example.Test.
alias IN CNAME www
*.wild IN A 198.18.0.3
deep.ent.sub IN TXT "below an empty non-terminal"
child IN NS ns.child
ns.child IN A 198.18.0.54
"""


@dataclass
class Signed:
    origin: bytes
    records: list[RR]
    keys: list[dnssec.DNSKEY]
    ds_text: str

    def rrset(self, name: str, rtype: int) -> tuple[list[bytes], list[dnssec.RRSIG]]:
        owner = name_from_text(name)
        rdatas = [rr.rdata for rr in self.records if rr.name == owner and rr.rtype == rtype]
        sigs = [dnssec.parse_rrsig(rr.rdata) for rr in self.records if rr.name == owner
                and rr.rtype == RRType.RRSIG and dnssec.parse_rrsig(rr.rdata).type_covered == rtype]
        return rdatas, sigs

    def of_type(self, rtype: int) -> list[RR]:
        return [rr for rr in self.records if rr.rtype == rtype]


def _sign(tmp: Path, algorithm: str, *, nsec3: bool = False, opt_out: bool = False, window: tuple[str, str] | None = None,
          iterations: int = 0) -> Signed:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "zone").write_text(ZONE)
    key = subprocess.run(["dnssec-keygen", "-q", "-K", str(tmp), "-a", algorithm, "-f", "KSK", "example.test"],
                         check=True, capture_output=True, text=True).stdout.strip()
    zsk = subprocess.run(["dnssec-keygen", "-q", "-K", str(tmp), "-a", algorithm, "example.test"],
                         check=True, capture_output=True, text=True).stdout.strip()
    with (tmp / "zone").open("a") as zone:
        for name in (key, zsk):
            zone.write((tmp / f"{name}.key").read_text())
    args = ["dnssec-signzone", "-q", "-K", str(tmp), "-o", "example.test", "-d", str(tmp), "-f", str(tmp / "signed")]
    if nsec3:
        args += ["-3", "aabbccdd", "-H", str(iterations)] + (["-A"] if opt_out else [])
    if window:
        args += ["-s", window[0], "-e", window[1]]
    subprocess.run([*args, str(tmp / "zone")], check=True, capture_output=True)
    zone = dns.zone.from_file(str(tmp / "signed"), origin="example.test.", relativize=False)
    records = []
    for name, rdataset in zone.iterate_rdatasets():
        for rdata in rdataset:
            wire = rdata.to_digestable(dns.name.root) if rdata.rdtype != dns.rdatatype.RRSIG else \
                rdata.to_wire(origin=dns.name.root)
            records.append(RR(name.to_wire().lower(), rdata.rdtype, 1, rdataset.ttl, wire))
    keys = [dnssec.parse_dnskey(rr.rdata) for rr in records if rr.rtype == RRType.DNSKEY]
    ds_text = (tmp / "dsset-example.test.").read_text()
    return Signed(name_from_text("example.test"), records, keys, ds_text)


NOW = int(time.time())
N = name_from_text


@pytest.fixture(scope="module", params=["ECDSAP256SHA256", "RSASHA256", "ED25519", "ECDSAP384SHA384",
                                        "RSASHA512", "ED448"])
def signed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Signed:
    return _sign(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module", params=["nsec", "nsec3", "nsec3-opt-out"])
def denying(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Signed]:
    variant = request.param
    return variant, _sign(tmp_path_factory.mktemp(variant), "ECDSAP256SHA256", nsec3=variant != "nsec",
                          opt_out=variant == "nsec3-opt-out")


def test_every_rrset_verifies(signed: Signed) -> None:
    owners_types = {(rr.name, rr.rtype) for rr in signed.records if rr.rtype != RRType.RRSIG}
    checked = 0
    for owner, rtype in owners_types:
        rdatas, sigs = signed.rrset(_text(owner), rtype)
        if not sigs:  # delegation NS and glue are not signed
            continue
        result = dnssec.verify_rrset(owner, rtype, rdatas, sigs, signed.keys, signed.origin, NOW)
        assert result.ok, (owner, rtype, result.failure)
        checked += 1
    assert checked >= 8


def test_canonical_form_ignores_case_and_order(signed: Signed) -> None:
    rdatas, sigs = signed.rrset("mixed.example.test", RRType.MX)
    upper = [r.upper() for r in rdatas]  # the MX target's case does not matter (RFC 4034 §6.2)
    assert dnssec.verify_rrset(name_from_text("mixed.example.test"), RRType.MX, upper, sigs, signed.keys,
                               signed.origin, NOW).ok
    rdatas, sigs = signed.rrset("www.example.test", RRType.A)
    assert dnssec.verify_rrset(name_from_text("www.example.test"), RRType.A, list(reversed(rdatas)) * 2, sigs,
                               signed.keys, signed.origin, NOW).ok


def test_tampered_data_and_wrong_keys_fail(signed: Signed) -> None:
    owner = name_from_text("www.example.test")
    rdatas, sigs = signed.rrset("www.example.test", RRType.A)
    forged = [b"\xc6\x12\x00\x63", *rdatas[1:]]
    result = dnssec.verify_rrset(owner, RRType.A, forged, sigs, signed.keys, signed.origin, NOW)
    assert not result.ok and result.failure == EDE.DNSSEC_BOGUS
    result = dnssec.verify_rrset(owner, RRType.A, rdatas, sigs, [], signed.origin, NOW)
    assert not result.ok and result.failure == EDE.DNSKEY_MISSING
    result = dnssec.verify_rrset(owner, RRType.A, rdatas, [], signed.keys, signed.origin, NOW)
    assert not result.ok and result.failure == EDE.RRSIGS_MISSING
    # Another name's signature does not cover this one.
    other, other_sigs = signed.rrset("ns1.example.test", RRType.A)
    assert not dnssec.verify_rrset(owner, RRType.A, other, other_sigs, signed.keys, signed.origin, NOW).ok


def test_validity_window(signed: Signed) -> None:
    owner = name_from_text("www.example.test")
    rdatas, sigs = signed.rrset("www.example.test", RRType.A)
    sig = sigs[0]
    late = sig.expiration + dnssec.CLOCK_SKEW + 10
    assert dnssec.verify_rrset(owner, RRType.A, rdatas, sigs, signed.keys, signed.origin, late).failure \
        == EDE.SIGNATURE_EXPIRED
    early = sig.inception - dnssec.CLOCK_SKEW - 10
    assert dnssec.verify_rrset(owner, RRType.A, rdatas, sigs, signed.keys, signed.origin, early).failure \
        == EDE.SIGNATURE_NOT_YET_VALID
    assert dnssec.verify_rrset(owner, RRType.A, rdatas, sigs, signed.keys, signed.origin,
                               sig.expiration + dnssec.CLOCK_SKEW - 10).ok


def test_wildcard_expansion_verifies_under_the_expanded_name(signed: Signed) -> None:
    rdatas, sigs = signed.rrset("*.wild.example.test", RRType.A)
    expanded = name_from_text("a.b.wild.example.test")
    result = dnssec.verify_rrset(expanded, RRType.A, rdatas, sigs, signed.keys, signed.origin, NOW)
    assert result.ok and result.sig is not None and result.sig.labels == 3
    nsecs = _proof(signed)
    assert dnssec.wildcard_expansion(expanded, result.sig.labels, nsecs) == Denial.SECURE
    # www exists: an NSEC cannot say it does not (a forged expansion over a real name).
    assert dnssec.wildcard_expansion(name_from_text("www.example.test"), 2, nsecs) == Denial.BOGUS


def test_key_tags_and_ds_match_bind(signed: Signed) -> None:
    anchors = dnssec.parse_trust_anchors(signed.ds_text)
    assert len(anchors) == 1 and anchors[0].zone == signed.origin
    ksk = [k for k in signed.keys if k.flags & dnssec.DNSKEY_SEP]
    assert ksk and all(anchors[0].trusts(k) for k in ksk)
    assert not any(anchors[0].trusts(k) for k in signed.keys if not k.flags & dnssec.DNSKEY_SEP)
    # DNSKEY form of the same anchor.
    dnskey_text = "\n".join(f"example.test. 3600 IN DNSKEY {k.flags} 3 {k.algorithm} "
                            f"{__import__('base64').b64encode(k.public_key).decode()}" for k in ksk)
    assert dnssec.parse_trust_anchors(dnskey_text)[0].trusts(ksk[0])


def _proof(signed: Signed) -> list[RR]:
    return signed.of_type(RRType.NSEC) + signed.of_type(RRType.NSEC3)


def test_denials(denying: tuple[str, Signed]) -> None:
    variant, zone = denying
    proof = _proof(zone)
    n = name_from_text
    # Unbound's rule: an NXDOMAIN whose next closer name lies in an opt-out span proves nothing
    # (an unsigned delegation could be there), so it is insecure.
    nxdomain = Denial.INSECURE if variant == "nsec3-opt-out" else Denial.SECURE
    assert dnssec.denial(n("nope.example.test"), RRType.A, True, proof) == nxdomain
    assert dnssec.denial(n("www.example.test"), RRType.AAAA, False, proof) == Denial.SECURE
    assert dnssec.denial(n("www.example.test"), RRType.A, False, proof) == Denial.BOGUS  # it has A
    assert dnssec.denial(n("alias.example.test"), RRType.A, False, proof) == Denial.BOGUS  # a CNAME
    assert dnssec.denial(n("www.example.test"), RRType.A, True, proof) == Denial.BOGUS  # www exists
    assert dnssec.denial(n("ent.sub.example.test"), RRType.A, False, proof) == Denial.SECURE  # empty non-terminal
    # It exists, though: an NXDOMAIN for it (or for its parent, another one) is a lie a replayed
    # NSEC must not prove, else RFC 8020 would deny deep.ent.sub below it too.
    for ent in ("ent.sub.example.test", "sub.example.test"):
        assert dnssec.denial(n(ent), RRType.A, True, proof) == Denial.BOGUS, ent
    assert dnssec.denial(n("x.wild.example.test"), RRType.TXT, False, proof) == Denial.SECURE  # wildcard NODATA
    # Under the wildcard a name exists (it matches), so an NXDOMAIN proof must fail.
    assert dnssec.denial(n("x.wild.example.test"), RRType.A, True, proof) == Denial.BOGUS
    assert dnssec.wildcard_expansion(n("a.b.wild.example.test"), 3, proof) == nxdomain
    assert dnssec.wildcard_expansion(n("www.example.test"), 2, proof) == Denial.BOGUS
    no_ds = dnssec.denial(n("child.example.test"), RRType.DS, False, proof)
    if variant == "nsec3-opt-out":
        assert no_ds == Denial.INSECURE  # the unsigned delegation has no NSEC3 of its own
    else:
        assert no_ds == Denial.SECURE  # an NSEC(3) at the delegation: NS, no DS
    assert dnssec.denial(n("nope.example.test"), RRType.A, True, []) == Denial.BOGUS


def _nsec(owner: str, text: str) -> RR:
    import dns.rdata

    return RR(name_from_text(owner), RRType.NSEC, 1, 300, dns.rdata.from_text("IN", "NSEC", text).to_wire())


def test_an_nsec_at_a_zone_cut_or_dname_denies_nothing_below_it() -> None:
    """RFC 6840 §4.1: genuine, signed records an attacker replays. The parent's NSEC at a
    delegation covers, in canonical order, every name of the child zone; a DNAME's, every name
    it redirects. Neither may prove an NXDOMAIN there (before: a secure NXDOMAIN, with AD)."""
    apex = _nsec("strip.test.", "a.strip.test. NS SOA RRSIG NSEC DNSKEY")
    delegation = _nsec("sc.strip.test.", "to-unsigned.strip.test. NS DS RRSIG NSEC")
    dname = _nsec("dn.strip.test.", "m.strip.test. DNAME RRSIG NSEC")
    n = name_from_text
    assert dnssec.denial(n("www.sc.strip.test"), RRType.A, True, [delegation, apex]) == Denial.BOGUS
    assert dnssec.denial(n("x.dn.strip.test"), RRType.A, True, [dname, apex]) == Denial.BOGUS
    assert dnssec.denial(n("a.sc.strip.test"), RRType.A, False, [delegation, apex]) == Denial.BOGUS  # not an ENT
    # Names beside them, which those records do deny, still are (apex: no wildcard).
    assert dnssec.denial(n("sd.strip.test"), RRType.A, True, [delegation, apex]) == Denial.SECURE


def test_the_parents_nsec3_at_a_delegation_denies_only_the_ds() -> None:
    """RFC 6840 §4.1, as for NSEC: the parent's NSEC3 at kid (NS, no SOA) replayed as a NODATA
    for the child's apex A was a secure NODATA."""
    import dns.dnssec
    import dns.name
    import dns.rdata

    kid = dns.name.from_text("kid.example.")
    digest = dns.dnssec.nsec3_hash(kid, salt=None, iterations=0, algorithm=1).lower()
    rdata = dns.rdata.from_text("IN", "NSEC3", "1 0 0 - 00000000000000000000000000000000 NS").to_digestable()
    proof = [RR(dns.name.from_text(digest + ".example.").to_wire(), RRType.NSEC3, 1, 300, rdata)]
    assert dnssec.nsec3_denial(kid.to_wire(), RRType.A, False, proof) == Denial.BOGUS
    assert dnssec.nsec3_denial(kid.to_wire(), RRType.MX, False, proof) == Denial.BOGUS
    assert dnssec.nsec3_denial(kid.to_wire(), RRType.DS, False, proof) == Denial.SECURE  # an insecure delegation


def test_a_wildcard_answer_needs_its_parent_to_be_the_closest_encloser() -> None:
    """RFC 4035 §5.3.4, RFC 4592: b.w2 exists, so *.w2 does not apply to a.b.w2; an NSEC that
    covers a.b.w2 (after b.w2) shows b.w2 is the closest encloser, not w2."""
    n = name_from_text
    after_b = _nsec("b.w2.strip.test.", "wrongsigner.strip.test. TXT RRSIG NSEC")
    assert dnssec.wildcard_expansion(n("a.b.w2.strip.test"), 3, [after_b]) == Denial.BOGUS
    before_b = _nsec("*.w2.strip.test.", "b.w2.strip.test. A RRSIG NSEC")
    assert dnssec.wildcard_expansion(n("a.w2.strip.test"), 3, [before_b]) == Denial.SECURE


def test_a_signature_past_its_expiry_caps_the_ttl_at_nothing() -> None:
    """Accepted within the clock skew, an expired signature leaves no time to cache (before:
    the serial difference wrapped, and the original TTL stood)."""
    def expiring(at: int) -> dnssec.Verified:
        return dnssec.Verified(True, sig=dnssec.RRSIG(RRType.A, 13, 2, 3600, at, NOW - 86400, 1,
                                                      name_from_text("example.test"), b"", b""))

    assert expiring(NOW - 90).ttl_cap(NOW) == 0
    assert expiring(NOW + 60).ttl_cap(NOW) == 60 and expiring(NOW + 86400).ttl_cap(NOW) == 3600


def test_nsec3_hash_matches_rfc5155_appendix_a() -> None:
    # RFC 5155 Appendix A: H(example) with salt aabbccdd, 12 iterations.
    digest = dnssec.nsec3_hash(name_from_text("example"), bytes.fromhex("aabbccdd"), 12)
    assert __import__("base64").b32hexencode(digest).decode().lower() == "0p9mhaveqvm6t7vbl5lop2u3t2rp3tom"


def test_key_tag_matches_rfc4034_appendix_c() -> None:
    # RFC 4034 §5.4's example DS: key tag 60485 of dskey.example.com's key.
    key = __import__("base64").b64decode(
        "AQOeiiR0GOMYkDshWoSKz9XzfwJr1AYtsmx3TGkJaNXVbfi/2pHm822aJ5iI9BMzNXxeYCmZ"
        "DRD99WYwYqUSdjMmmAphXdvxegXd/M5+X7OrzKBaMbCVdFLUUh6DhweJBjEVv5f2wwjM9Xzc"
        "nOf+EPbtG9DMBmADjFDc2w/rljwvFw==")
    rdata = bytes.fromhex("0100") + bytes([3, 5]) + key
    assert dnssec.key_tag(rdata) == 60485
    ds = dnssec.DS(60485, 5, 1, bytes.fromhex("2BB183AF5F22588179A53B0A98631FAD1A292118"))
    assert dnssec.ds_matches(name_from_text("dskey.example.com"), ds, dnssec.parse_dnskey(rdata))


def _colliding_rsa_keys(count: int) -> tuple[object, list[dnssec.DNSKEY]]:
    """A real RSA zone key and ``count`` others with the same key tag: the modulus with one byte
    raised and another, at an even offset too, lowered (what a KeyTrap zone publishes)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    modulus = private.public_key().public_numbers().n.to_bytes(128, "big")
    rdata = bytes.fromhex("0100") + bytes([3, 8, 3]) + (65537).to_bytes(3, "big") + modulus
    keys, offset = [], 8  # an even offset into the rdata, inside the modulus
    while len(keys) < count:
        forged = bytearray(rdata)
        up, down = offset, offset + 60
        offset += 2
        if forged[up] == 255 or forged[down] == 0:
            continue
        forged[up] += 1
        forged[down] -= 1
        keys.append(dnssec.parse_dnskey(bytes(forged)))
    real = dnssec.parse_dnskey(rdata)
    assert {k.key_tag for k in keys} == {real.key_tag}
    return private, [*keys, real]


def test_colliding_keys_and_failing_signatures_cost_a_bounded_number_of_checks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyTrap (CVE-2023-50387): 30 keys sharing a tag times 30 RRSIGs that all fail was 900
    public-key operations for one RRset (a second of the event loop per 20 000 in the lab); at
    most ``max_checks`` are made, then the RRset is bogus. A good signature within the budget,
    after colliding keys, still verifies."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    private, keys = _colliding_rsa_keys(30)
    zone, owner = name_from_text("keytrap.test"), name_from_text("www.keytrap.test")
    rdatas = [b"\xc6\x12\x00\x01"]

    def rrsig(signature: bytes) -> dnssec.RRSIG:
        head = struct.pack("!HBBIIIH", RRType.A, 8, 2, 3600, NOW + 86400, NOW - 3600, keys[0].key_tag) + zone
        return dnssec.parse_rrsig(head + signature)

    forged = [rrsig(bytes([i]) * 128) for i in range(30)]
    checks = []
    real_verify = dnssec.verify_signature
    monkeypatch.setattr(dnssec, "verify_signature", lambda *a: checks.append(1) or real_verify(*a))
    result = dnssec.verify_rrset(owner, RRType.A, rdatas, forged, keys, zone, NOW)
    assert not result.ok and result.exhausted and result.failure == EDE.DNSSEC_BOGUS
    assert len(checks) == dnssec.MAX_SIGNATURE_CHECKS
    checks.clear()
    assert not dnssec.verify_rrset(owner, RRType.A, rdatas, forged, keys, zone, NOW, max_checks=3).ok
    assert len(checks) == 3

    good = rrsig(b"")
    good = rrsig(private.sign(dnssec.signed_data(good, owner, RRType.A, rdatas), padding.PKCS1v15(),
                              hashes.SHA256()))
    few = keys[:4] + keys[-1:]  # the real key after four impostors: five checks
    assert dnssec.verify_rrset(owner, RRType.A, rdatas, [good], few, zone, NOW).ok
    assert not dnssec.verify_rrset(owner, RRType.A, rdatas, [good], keys, zone, NOW).ok


def test_malformed_records_raise_dnssec_error() -> None:
    for parse in (dnssec.parse_dnskey, dnssec.parse_ds, dnssec.parse_rrsig):
        with pytest.raises(dnssec.DNSSECError):
            parse(b"\x00\x01")
    with pytest.raises(dnssec.DNSSECError):
        dnssec.parse_rrsig(bytes(18) + b"\x05ab")
    with pytest.raises(dnssec.DNSSECError):
        dnssec.parse_nsec3(b"\x02zz\x00", b"\x01\x00\x00\x00\x04ab")
    # A malformed key never verifies, never raises.
    bad = dnssec.DNSKEY(257, 3, 13, b"\x01\x02", 0, b"")
    assert not dnssec.verify_signature(bad, b"x" * 64, b"data")


def test_trust_anchor_file_errors_name_the_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        dnssec.parse_trust_anchors(". IN DS 1 8 2 AB\n. IN DS x 8 2 AB\n")
    with pytest.raises(ValueError, match="DS or DNSKEY"):
        dnssec.parse_trust_anchors(". IN A 1.2.3.4\n")
    anchors = dnssec.parse_trust_anchors("; the root\n. 86400 IN DS 20326 8 2 (\n E06D44B8 0B8F1D39 )\n")
    assert anchors[0].ds[0].key_tag == 20326 and anchors[0].ds[0].digest == bytes.fromhex("E06D44B80B8F1D39")


def test_check_config_warns_of_an_anchor_nothing_can_use(tmp_path: Path) -> None:
    """From a bug hunt: a trust anchor file of only SHA-1 algorithms (or an unknown digest) made
    every answer insecure - validation off - while check-config said ok and the log nothing."""
    from ispd.dns.config import DNSConfig
    from ispd.dns.service import check_files

    path = tmp_path / "anchors.ds"
    usable = ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n"
    for text, warned in ((". IN DS 20326 5 2 E06D44B8\n", True), (". IN DS 20326 8 9 E06D44B8\n", True),
                         (usable, False), (usable + ". IN DS 20326 5 2 E06D44B8\n", False)):
        path.write_text(text)
        config = DNSConfig.model_validate({"enabled": True, "dnssec": {"trust_anchor_file": str(path)}})
        problems, warnings = check_files(config)
        assert problems == []
        assert any("no supported algorithm or digest" in w for w in warnings) == warned, (text, warnings)


def _text(name: bytes) -> str:
    from ispd.dns.wire import name_to_text
    return name_to_text(name)


# --- malformed and hostile input ----------------------------------------------------------------

@settings(max_examples=1500)
@given(st.binary(max_size=80))
def test_parsers_raise_only_dnssec_error(data: bytes) -> None:
    for parse in (dnssec.parse_dnskey, dnssec.parse_ds, dnssec.parse_rrsig, dnssec.parse_nsec):
        with contextlib.suppress(dnssec.DNSSECError):
            parse(data)
    with contextlib.suppress(dnssec.DNSSECError):
        dnssec.parse_nsec3(b"\x20" + bytes(32) + b"\x00", data)
    assert not dnssec.verify_signature(dnssec.DNSKEY(257, 3, data[0] if data else 8, data, 0, data), data, data)
    dnssec.bitmap_has(data, 1)


_OWNERS = st.sampled_from([N("example.test"), N("a.example.test"), N("*.example.test"), N("z.b.example.test"),
                           N("0p9mhaveqvm6t7vbl5lop2u3t2rp3tom.example.test"), b"\x00"])


@settings(max_examples=800)
@given(st.lists(st.tuples(_OWNERS, st.sampled_from([RRType.NSEC, RRType.NSEC3, RRType.RRSIG]),
                          st.binary(max_size=60)), max_size=6),
       _OWNERS, st.booleans())
def test_proofs_from_garbage_never_raise(items: list[tuple[bytes, int, bytes]], qname: bytes, nxdomain: bool) -> None:
    records = [RR(owner, rtype, 1, 300, rdata) for owner, rtype, rdata in items]
    dnssec.denial(qname, RRType.A, nxdomain, records)
    dnssec.denial(qname, RRType.DS, False, records)
    dnssec.wildcard_expansion(qname, 1, records)
    dnssec.shows_delegation(qname, records)


async def test_a_changed_byte_in_signed_data_is_never_secure(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Flip one byte of any rdata of a signed answer or denial: the verdict is never secure,
    and nothing raises."""
    from ispd.dns.cache import CacheLimits, RRsetCache, Security
    from ispd.dns.resolver import Outcome, Resolution, Step
    from ispd.dns.validator import Validator
    from tests.dns.fakenet import FakeClock

    zone = _sign(tmp_path_factory.mktemp("flip"), "ECDSAP256SHA256")
    keys = [rr for rr in zone.records if rr.name == zone.origin and (rr.rtype == RRType.DNSKEY or (
        rr.rtype == RRType.RRSIG and dnssec.parse_rrsig(rr.rdata).type_covered == RRType.DNSKEY))]

    async def fetch(name: bytes, rtype: int) -> Resolution:
        return Resolution(RCode.NOERROR, keys, zone=zone.origin)

    def validator() -> Validator:
        return Validator(dnssec.parse_trust_anchors(zone.ds_text), fetch, RRsetCache(CacheLimits()), FakeClock(),
                         wall_clock=lambda: float(NOW))

    www = [rr for rr in zone.records if rr.name == N("www.example.test") and (rr.rtype == RRType.A or (
        rr.rtype == RRType.RRSIG and dnssec.parse_rrsig(rr.rdata).type_covered == RRType.A))]
    soa = [rr for rr in zone.records if rr.rtype == RRType.SOA]
    proof = [rr for rr in zone.records if rr.rtype == RRType.NSEC or (
        rr.rtype == RRType.RRSIG and dnssec.parse_rrsig(rr.rdata).type_covered in (RRType.NSEC, RRType.SOA))]
    rng = random.Random(5011)
    checked = 0
    for _ in range(300):
        answer = rng.random() < 0.5
        records = list(www if answer else proof)
        index = rng.randrange(len(records))
        victim = records[index]
        rdata = bytearray(victim.rdata)
        position = rng.randrange(len(rdata))
        before = rdata[position]
        rdata[position] ^= 1 << rng.randrange(8)
        if bytes([before]).lower() == bytes([rdata[position]]).lower():
            continue  # a letter's case in a name: the signature covers the lowercased name, rightly
        records[index] = RR(victim.name, victim.rtype, victim.rclass, victim.ttl, bytes(rdata))
        if answer:
            outcome = Outcome(Step.ANSWER, records, zone=zone.origin)
            await validator().check(outcome, N("www.example.test"), RRType.A)
        else:
            outcome = Outcome(Step.NXDOMAIN, soa=soa, proof=records, zone=zone.origin)
            await validator().check(outcome, N("nope.example.test"), RRType.A)
        assert outcome.security != Security.SECURE, (victim, position)
        checked += 1
    assert checked > 250


def _nsec3_chain(zone: str, names: list[str], iterations: int, salt: bytes) -> list[RR]:
    """The NSEC3 records of a zone holding ``names``, each linked to the next hash."""
    import base64

    hashes = sorted(dnssec.nsec3_hash(name_from_text(n), salt, iterations) for n in names)
    head = struct.pack("!BBHB", 1, 0, iterations, len(salt)) + salt
    return [RR(name_from_text(base64.b32hexencode(h).decode().lower() + "." + zone), RRType.NSEC3, 1, 300,
               head + bytes([20]) + hashes[(i + 1) % len(hashes)] + b"\x00\x01\x40")
            for i, h in enumerate(hashes)]


def test_an_nsec3_proof_makes_a_bounded_number_of_hash_calculations(monkeypatch: pytest.MonkeyPatch) -> None:
    """CVE-2023-50868: the closest encloser proof for a name of 100 labels under a chain of 150
    iterations and a 255-byte salt hashed every one of its ancestors, 151 rounds each: 10 ms of
    the event loop per query, for names the attacker makes up. At most the budget's calculations
    are made, then the proof is given up; proofs of real names fit, and a hash of fewer iterations
    counts for less (a chain of 0 extra iterations, RFC 9276: one SHA-1 per name)."""
    deep = name_from_text("a." * 100 + "x.n3.test")
    costly = _nsec3_chain("n3.test.", ["n3.test", "www.n3.test"], 150, b"\xab" * 255)
    hashes = []
    real_hash = dnssec.nsec3_hash
    monkeypatch.setattr(dnssec, "nsec3_hash", lambda *a: hashes.append(1) or real_hash(*a))
    with pytest.raises(dnssec.Nsec3Exhausted):
        dnssec.denial(deep, RRType.A, True, costly, dnssec.Nsec3Budget(dnssec.MAX_NSEC3_CALCULATIONS))
    assert len(hashes) == dnssec.MAX_NSEC3_CALCULATIONS
    with pytest.raises(dnssec.Nsec3Exhausted):
        dnssec.wildcard_expansion(deep, 2, costly, dnssec.Nsec3Budget(0))
    with pytest.raises(dnssec.Nsec3Exhausted):
        dnssec.shows_delegation(deep, costly, dnssec.Nsec3Budget(8))
    shallow = name_from_text("b.x.n3.test")
    assert dnssec.denial(shallow, RRType.A, True, costly, dnssec.Nsec3Budget(8)) == Denial.SECURE
    assert dnssec.denial(deep, RRType.A, True, costly) == Denial.SECURE  # no budget given: no limit
    free = _nsec3_chain("n3.test.", ["n3.test", "www.n3.test"], 0, b"\xab" * 255)
    assert dnssec.denial(deep, RRType.A, True, free, dnssec.Nsec3Budget(8)) == Denial.SECURE
    # The budget is hashing, not hashes: a real reverse name 32 nibbles below its zone, under a
    # chain of 10 iterations, costs 34 hashes of 11 rounds and is proved (Unbound, suspending and
    # resuming, proves it too); 8 hashes of 150 iterations are the same work.
    nibbles = name_from_text("1." * 32 + "8.b.d.0.1.0.0.2.ip6.arpa")
    reverse = _nsec3_chain("8.b.d.0.1.0.0.2.ip6.arpa.", ["8.b.d.0.1.0.0.2.ip6.arpa"], 10, b"\x01\x02")
    hashes.clear()
    assert dnssec.denial(nibbles, RRType.PTR, True, reverse, dnssec.Nsec3Budget(8)) == Denial.SECURE
    assert len(hashes) > 30
