"""The lab's DNS hierarchy is what the resolver tests think it is: referrals, glue (and its
absence), lame and dead servers as described, signed zones as described, and every case of
``expectations()`` answered that way by Unbound iterating from the lab's root hints (the reference
resolver); every case of ``dnssec_expectations()`` so by Unbound validating from the lab's trust
anchor, and judged the same by BIND's delv.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dnslib
import pytest

from tests.lab.dnshier import (
    BIG_TXT_STRINGS,
    SERVERS,
    SIGNED,
    Delay,
    DNSHierarchy,
    Expectation,
    RogueServer,
    Send,
    Unbound,
    dig,
    dnssec_expectations,
    expectations,
    make_reply,
)

CASES = expectations()  # the base only changes the address of ns1.nic.test: ids and names hold for any
DNSSEC_CASES = dnssec_expectations()
ALGORITHMS = {"RSASHA256": 8, "RSASHA512": 10, "ECDSAP256SHA256": 13, "ECDSAP384SHA384": 14, "ED25519": 15}


@pytest.fixture(scope="module")
def validating_unbound(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    """Unbound validating from the lab's trust anchor (the root's DS records)."""
    if shutil.which("unbound") is None:
        pytest.skip("unbound not installed (tools/setup --test installs it)")
    with Unbound(dns_hierarchy.root_hints_path, Path(tmp_path_factory.mktemp("unbound-validating")),
                 trust_anchor=dns_hierarchy.trust_anchor_path) as server:
        yield server


def names(records: tuple[object, ...], rtype: str) -> set[tuple[str, str]]:
    return {(r.owner, r.rdata) for r in records if r.type == rtype}  # type: ignore[attr-defined]


# --- the servers themselves (no recursion)


def test_root_hints_name_both_root_servers(dns_hierarchy: DNSHierarchy) -> None:
    lines = [line.split() for line in dns_hierarchy.root_hints_path.read_text().splitlines()
             if line and not line.startswith(";")]
    base = dns_hierarchy.base
    assert sorted((f[0], f[2], f[3]) for f in lines) == [
        (".", "NS", "A.ROOT-SERVERS.TEST."), (".", "NS", "B.ROOT-SERVERS.TEST."),
        ("A.ROOT-SERVERS.TEST.", "A", f"{base}.0.1"), ("B.ROOT-SERVERS.TEST.", "A", f"{base}.0.2")]


@pytest.mark.parametrize("spec", [s for s in SERVERS if s.kind == "nsd" and s.zones], ids=lambda s: s.key)
def test_every_server_is_authoritative_for_its_zones(dns_hierarchy: DNSHierarchy, spec: object) -> None:
    address = dns_hierarchy.address(spec.key)  # type: ignore[attr-defined]
    for zone in spec.zones:  # type: ignore[attr-defined]
        result = dig(address, zone, "SOA", "+norec")
        assert result.status == "NOERROR" and "aa" in result.flags, result.text
        assert [r.type for r in result.answer] == ["SOA"]
        assert result.answer[0].rdata.split()[-1] == "300"  # negative TTL


def test_root_refers_to_test_with_glue(dns_hierarchy: DNSHierarchy) -> None:
    result = dig(dns_hierarchy.address("b.root-servers.test"), "www.example-a.test", "A", "+norec")
    assert result.status == "NOERROR" and "aa" not in result.flags and not result.answer
    assert names(result.authority, "NS") == {("test.", "ns1.nic.test."), ("test.", "ns2.nic.test.")}
    assert names(result.additional, "A") == {("ns1.nic.test.", dns_hierarchy.address("test-1")),
                                             ("ns2.nic.test.", dns_hierarchy.address("test-2"))}


def test_root_refers_to_arpa_without_glue(dns_hierarchy: DNSHierarchy) -> None:
    result = dig(dns_hierarchy.address("a.root-servers.test"), "1.1.18.198.in-addr.arpa", "PTR", "+norec")
    assert names(result.authority, "NS") == {("arpa.", "ns.arpa-servers.test.")}
    assert not names(result.additional, "A")


def test_oob_test_is_delegated_to_a_name_in_another_tld(dns_hierarchy: DNSHierarchy) -> None:
    result = dig(dns_hierarchy.address("ns1.nic.test"), "www.oob.test", "A", "+norec")
    assert names(result.authority, "NS") == {("oob.test.", "ns-oob.example-b.example.")}
    assert not names(result.additional, "A")
    ns_address = dig(dns_hierarchy.address("ns1.example-b.example"), "ns-oob.example-b.example", "A", "+norec")
    assert names(ns_address.answer, "A") == {("ns-oob.example-b.example.", dns_hierarchy.address("oob"))}


def test_in_zone_delegation_of_sub_has_glue(dns_hierarchy: DNSHierarchy) -> None:
    result = dig(dns_hierarchy.address("ns2.example-a.test"), "www.sub.example-a.test", "A", "+norec")
    assert names(result.authority, "NS") == {("sub.example-a.test.", "ns.sub.example-a.test.")}
    assert names(result.additional, "A") == {("ns.sub.example-a.test.", dns_hierarchy.address("sub"))}


def test_first_lame_server_refuses_and_second_answers(dns_hierarchy: DNSHierarchy) -> None:
    assert dig(dns_hierarchy.address("ns1.lame.test"), "www.lame.test", "A", "+norec").status == "REFUSED"
    good = dig(dns_hierarchy.address("ns2.lame.test"), "www.lame.test", "A", "+norec")
    assert good.status == "NOERROR" and "aa" in good.flags


def test_dead_servers_do_not_answer(dns_hierarchy: DNSHierarchy) -> None:
    for host in ("ns1.dead.test", "ns2.dead.test", "ns1.alldead.test", "ns2.alldead.test"):
        assert dig(dns_hierarchy.address(host), "www.dead.test", "A", "+norec", timeout=1).status == "TIMEOUT"
    # the Blackhole completes TCP connections (the kernel's backlog) but never answers on them
    with socket.create_connection((dns_hierarchy.address("ns1.dead.test"), 53), timeout=2) as conn:
        query = dnslib.DNSRecord.question("www.dead.test").pack()
        conn.sendall(len(query).to_bytes(2, "big") + query)
        conn.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn.recv(2)
    # nothing listens on ns2: the kernel says so at once
    with pytest.raises(ConnectionRefusedError), socket.create_connection((dns_hierarchy.address("ns2.dead.test"), 53),
                                                                         timeout=2):
        pass
    assert dig(dns_hierarchy.address("ns3.dead.test"), "www.dead.test", "A", "+norec").status == "NOERROR"


def test_big_txt_is_truncated_over_udp_and_whole_over_tcp(dns_hierarchy: DNSHierarchy) -> None:
    server = dns_hierarchy.address("ns1.example-a.test")
    udp = dig(server, "big.example-a.test", "TXT", "+norec", "+ignore")
    assert "tc" in udp.flags and len(udp.answer) < BIG_TXT_STRINGS
    tcp = dig(server, "big.example-a.test", "TXT", "+norec", "+tcp")
    assert "tc" not in tcp.flags and len(tcp.answer) == BIG_TXT_STRINGS
    assert sum(len(r.rdata) for r in tcp.answer) > 1232


def test_empty_non_terminal_is_nodata_at_the_server(dns_hierarchy: DNSHierarchy) -> None:
    result = dig(dns_hierarchy.address("ns1.example-a.test"), "y.example-a.test", "A", "+norec")
    assert result.status == "NOERROR" and not result.answer
    assert [r.type for r in result.authority] == ["SOA"]


def test_bench_zone_has_its_names_and_a_wildcard(dns_hierarchy: DNSHierarchy) -> None:
    server = dns_hierarchy.address("ns1.bench.test")
    assert names(dig(server, "h499.bench.test", "A", "+norec").answer, "A") == {("h499.bench.test.", "198.18.129.243")}
    assert names(dig(server, "u12345.bench.test", "A", "+norec").answer, "A") == {("u12345.bench.test.", "198.18.127.1")}


def test_outage_stops_a_server_and_brings_it_back(dns_hierarchy: DNSHierarchy) -> None:
    address = dns_hierarchy.address("ns1.stale.test")
    with dns_hierarchy.outage(address):
        assert dig(address, "www.stale.test", "A", "+norec", timeout=1).status == "TIMEOUT"
    assert dig(address, "www.stale.test", "A", "+norec").status == "NOERROR"


def test_a_second_hierarchy_runs_beside_the_first(dns_hierarchy: DNSHierarchy) -> None:
    base = "127.54" if dns_hierarchy.base != "127.54" else "127.59"
    with DNSHierarchy(base) as other:
        assert other.address("ns1.nic.test") == f"{base}.1.1"
        assert f"{base}.0.1" in other.root_hints_path.read_text()
        result = dig(other.address("a.root-servers.test"), "www.example-a.test", "A", "+norec")
        assert names(result.additional, "A") == {("ns1.nic.test.", f"{base}.1.1"), ("ns2.nic.test.", f"{base}.1.2")}
    assert dig(f"{base}.0.1", "test", "SOA", "+norec", timeout=1).status == "TIMEOUT"
    assert dig(dns_hierarchy.address("a.root-servers.test"), ".", "SOA", "+norec").status == "NOERROR"


# --- the signed zones (no recursion)


def test_trust_anchor_is_the_root_ksk(dns_hierarchy: DNSHierarchy) -> None:
    ds = [line.split() for line in dns_hierarchy.trust_anchor_path.read_text().splitlines()]
    assert dns_hierarchy.trust_anchor_path.read_text() == dns_hierarchy.trust_anchor()
    assert [(f[0], f[1], f[2], f[3], f[5], f[6]) for f in ds] == [(".", "86400", "IN", "DS", "13", "2")]
    assert re.fullmatch(r"[0-9A-F]{64}", ds[0][7])
    dnskey = [line.split() for line in dns_hierarchy.trust_anchor_dnskey_path.read_text().splitlines()]
    assert dns_hierarchy.trust_anchor_dnskey_path.read_text() == dns_hierarchy.trust_anchor_dnskey()
    assert [(f[0], f[3], f[4], f[6]) for f in dnskey] == [(".", "DNSKEY", "257", "13")]
    served = dig(dns_hierarchy.address("a.root-servers.test"), ".", "DNSKEY", "+norec", "+nosplit")
    keys = {tuple(r.rdata.split()[:3]): r.rdata.split()[3] for r in served.answer if r.type == "DNSKEY"}
    assert sorted(keys) == [("256", "3", "13"), ("257", "3", "13")], served.text  # a ZSK and the KSK
    assert keys[("257", "3", "13")] == "".join(dnskey[0][7:])


@pytest.mark.parametrize("zone", sorted(SIGNED), ids=lambda z: z)
def test_signed_zones_are_signed_and_their_parents_hold_their_ds(dns_hierarchy: DNSHierarchy, zone: str) -> None:
    signing = SIGNED[zone]
    server = dns_hierarchy.addresses(zone)[0]
    soa = dig(server, zone, "SOA", "+norec", "+dnssec")
    assert [r.rdata.split()[:2] for r in soa.answer if r.type == "RRSIG"] == [["SOA", str(ALGORITHMS[signing.algorithm])]]
    keys = dig(server, zone, "DNSKEY", "+norec", "+dnssec")
    tags = {int(r.rdata.split()[6]) for r in keys.answer if r.type == "RRSIG"}
    assert len([r for r in keys.answer if r.type == "DNSKEY"]) == (2 if signing.split else 1), keys.text
    params = dig(server, zone, "NSEC3PARAM", "+norec").answer
    assert [r.rdata.split()[1:3] for r in params] == ([] if signing.nsec3_salt is None else [["0", "0"]]), params
    if zone == ".":
        return
    parent = zone.split(".", 1)[1] or "."
    ds = dig(dns_hierarchy.addresses(parent)[0], zone, "DS", "+norec", "+dnssec")
    ds_tags = {int(r.rdata.split()[0]) for r in ds.answer if r.type == "DS"}
    assert ds_tags and any(r.type == "RRSIG" for r in ds.answer), ds.text
    # badds.test: its DS names a key the zone does not have
    assert (ds_tags & tags == set()) == signing.wrong_ds, (ds_tags, tags)


def test_unsigned_zone_under_a_signed_one_has_nsec_but_no_ds(dns_hierarchy: DNSHierarchy) -> None:
    referral = dig(dns_hierarchy.address("ns1.secure.test"), "www.unsigned.secure.test", "A", "+norec", "+dnssec")
    assert names(referral.authority, "NS") == {("unsigned.secure.test.", "ns.unsigned.secure.test.")}
    nsec = [r for r in referral.authority if r.type == "NSEC"]
    assert [r.owner for r in nsec] == ["unsigned.secure.test."] and "DS" not in nsec[0].rdata.split()


def test_opt_out_delegation_has_no_nsec3_of_its_own(dns_hierarchy: DNSHierarchy) -> None:
    referral = dig(dns_hierarchy.address("ns1.nsec3.test"), "www.optout.nsec3.test", "A", "+norec", "+dnssec")
    assert names(referral.authority, "NS") == {("optout.nsec3.test.", "ns.optout.nsec3.test.")}
    nsec3 = [r.rdata.split() for r in referral.authority if r.type == "NSEC3"]
    # the closest encloser's (nsec3.test) and the one covering optout.nsec3.test (the same record
    # when that hash follows the apex's), opt-out flag set
    assert 1 <= len(nsec3) <= 2 and all(fields[1] == "1" for fields in nsec3), referral.text
    assert not [r for r in referral.authority if r.type == "DS"]


# --- the reference resolver over the hierarchy


@pytest.mark.parametrize("case", CASES, ids=[c.case for c in CASES])
def test_unbound_resolves_every_case(dns_hierarchy: DNSHierarchy, unbound: Unbound, case: Expectation) -> None:
    expected = dns_hierarchy.expect(case.qname, case.qtype)
    if expected.tcp:
        udp = unbound.dig(expected.qname, expected.qtype, "+ignore")
        assert "tc" in udp.flags, udp.text
        result = unbound.dig(expected.qname, expected.qtype, "+tcp")
    else:
        result = unbound.dig(expected.qname, expected.qtype, timeout=15)
    assert expected.problems(result) == [], result.text


@pytest.mark.parametrize("case", DNSSEC_CASES, ids=[c.case for c in DNSSEC_CASES])
def test_validating_unbound_resolves_every_dnssec_case(
        dns_hierarchy: DNSHierarchy, validating_unbound: Unbound, case: Expectation) -> None:
    expected = dns_hierarchy.expect(case.qname, case.qtype, validating=True)
    result = validating_unbound.dig(expected.qname, expected.qtype, "+dnssec", timeout=15)
    assert expected.problems(result) == [], result.text + validating_unbound.log_tail(5)
    # checking disabled (CD): the data as published, bogus or not, and AD clear where not secure
    unchecked = validating_unbound.dig(expected.qname, expected.qtype, "+dnssec", "+cd", timeout=15)
    assert expected.unvalidated().problems(unchecked) == [], unchecked.text
    if expected.security != "secure":
        assert "ad" not in unchecked.flags, unchecked.text


@pytest.mark.parametrize("case", CASES, ids=[c.case for c in CASES])
def test_validating_unbound_gives_the_same_answers(
        dns_hierarchy: DNSHierarchy, validating_unbound: Unbound, case: Expectation) -> None:
    """The signed root and test. change no answer of ``expectations()`` for a validating resolver."""
    expected = dns_hierarchy.expect(case.qname, case.qtype)
    result = validating_unbound.dig(expected.qname, expected.qtype, "+dnssec", *(["+tcp"] if expected.tcp else []),
                                    timeout=15)
    assert expected.problems(result) == [], result.text + validating_unbound.log_tail(5)


# delv (BIND's validator) validates on its own what it asks Unbound with CD set. It differs from
# Unbound on one case: an NXDOMAIN proved by an opt-out NSEC3 is secure to BIND.
DELV_DIFFERS = {"nsec3: NXDOMAIN under opt-out": "secure"}
_DELV_VERDICT = re.compile(r"^; (fully validated|unsigned answer|negative response, fully validated|"
                           r"negative response, unsigned answer)$", re.MULTILINE)


@pytest.fixture(scope="module")
def delv_anchor(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trust anchor as delv -a takes it: a named.conf trust-anchors clause."""
    if shutil.which("delv") is None:
        pytest.skip("delv not installed (tools/setup --test installs bind9-dnsutils)")
    lines = []
    for record in dns_hierarchy.trust_anchor().splitlines():
        owner, _ttl, _class, _type, tag, algorithm, digest_type, digest = record.split()
        lines.append(f'  "{owner}" static-ds {tag} {algorithm} {digest_type} "{digest}";\n')
    path = tmp_path_factory.mktemp("delv") / "trust-anchors.conf"
    path.write_text("trust-anchors {\n" + "".join(lines) + "};\n")
    return path


@pytest.mark.parametrize("case", DNSSEC_CASES, ids=[c.case for c in DNSSEC_CASES])
def test_delv_agrees_on_every_dnssec_case(validating_unbound: Unbound, delv_anchor: Path, case: Expectation) -> None:
    result = subprocess.run(["delv", f"@{validating_unbound.address}", "-p", str(validating_unbound.port),
                             "-a", str(delv_anchor), case.qname, case.qtype], capture_output=True, text=True,
                            timeout=30, check=False)
    verdicts = _DELV_VERDICT.findall(result.stdout)
    # the last word is the answer's: a secure CNAME into an unsigned zone is "fully validated",
    # then "unsigned answer"; a bogus answer gets no verdict, only "resolution failed"
    verdict = ("bogus" if not verdicts else "insecure" if "unsigned" in verdicts[-1] else "secure")
    assert verdict == DELV_DIFFERS.get(case.case, case.security), result.stdout + result.stderr


def test_unbound_counts_the_short_ttl_down(dns_hierarchy: DNSHierarchy, unbound: Unbound) -> None:
    first = unbound.dig("ttl2.example-a.test")
    assert first.answer[0].ttl <= 2
    time.sleep(2.2)
    again = unbound.dig("ttl2.example-a.test")  # expired by now: fetched anew
    assert names(again.answer, "A") == {("ttl2.example-a.test.", "198.18.1.2")}
    assert again.answer[0].ttl <= 2


# --- the rogue server


def _ask(address: str, query: bytes, timeout: float = 2.0) -> tuple[bytes, tuple[str, int]]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, (address, 53))
        data, peer = sock.recvfrom(65535)
        return data, peer


def test_rogue_server_sends_what_the_handler_says(dns_hierarchy: DNSHierarchy) -> None:
    spare = dns_hierarchy.rogue_spare_address

    def handler(query: bytes, peer: tuple[str, int]) -> list[Send | Delay]:
        qid = dnslib.DNSRecord.parse(query).header.id
        return [Delay(0.2),
                Send(make_reply(query, "www.rogue.test. 300 IN A 198.18.66.1", id=qid + 1), source=(spare, 53))]

    with RogueServer(dns_hierarchy.rogue_address, handler) as rogue:
        query = dnslib.DNSRecord.question("www.rogue.test")
        started = time.monotonic()
        data, peer = _ask(dns_hierarchy.rogue_address, query.pack())
        assert time.monotonic() - started >= 0.2
        reply = dnslib.DNSRecord.parse(data)
        assert peer == (spare, 53)
        assert reply.header.id == (query.header.id + 1) & 0xFFFF
        assert str(reply.rr[0].rdata) == "198.18.66.1"
        assert len(rogue.queries) == 1 and rogue.queries[0][2] == "udp"
        assert not rogue.errors


def test_rogue_server_forges_questions_and_answers_over_tcp(dns_hierarchy: DNSHierarchy) -> None:
    def handler(query: bytes, peer: tuple[str, int]) -> list[Send | Delay]:
        return [Send(make_reply(query, "www.example-a.test. 300 IN A 198.18.66.6", qname="www.example-a.test.",
                                additional=["ns1.nic.test. 300 IN A 198.18.66.7"]))]

    with RogueServer(dns_hierarchy.rogue_address, handler) as rogue, \
            socket.create_connection((dns_hierarchy.rogue_address, 53), timeout=2) as conn:
        query = dnslib.DNSRecord.question("www.rogue.test").pack()
        conn.sendall(len(query).to_bytes(2, "big") + query)
        size = int.from_bytes(conn.recv(2), "big")
        data = b""
        while len(data) < size:
            data += conn.recv(size - len(data))
        reply = dnslib.DNSRecord.parse(data)
        assert str(reply.q.qname) == "www.example-a.test."
        assert str(reply.ar[0].rdata) == "198.18.66.7"
        assert rogue.queries[0][0] == query and rogue.queries[0][2] == "tcp"


def test_unbound_uses_the_rogue_delegation_and_drops_out_of_bailiwick_records(dns_hierarchy: DNSHierarchy) -> None:
    def handler(query: bytes, peer: tuple[str, int]) -> list[Send | Delay]:
        name = str(dnslib.DNSRecord.parse(query).q.qname).lower()
        if name != "www.rogue.test.":
            return [Send(make_reply(query, rcode=dnslib.RCODE.NXDOMAIN,
                                    authority=["rogue.test. 300 IN SOA ns1.rogue.test. h.rogue.test. 1 2 3 4 300"]))]
        return [Send(make_reply(query, "www.rogue.test. 300 IN A 198.18.66.1",
                                additional=["www.example-b.example. 300 IN A 198.18.66.6"]))]

    with tempfile.TemporaryDirectory() as workdir, \
            Unbound(dns_hierarchy.root_hints_path, Path(workdir)) as resolver, \
            RogueServer(dns_hierarchy.rogue_address, handler) as rogue:
        assert names(resolver.dig("www.rogue.test").answer, "A") == {("www.rogue.test.", "198.18.66.1")}
        assert rogue.queries
        assert names(resolver.dig("www.example-b.example").answer, "A") == {("www.example-b.example.", "198.18.3.1")}
