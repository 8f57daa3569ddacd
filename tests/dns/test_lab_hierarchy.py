"""The lab's DNS hierarchy is what the resolver tests think it is: referrals, glue (and its
absence), lame and dead servers as described, and every case of ``EXPECTATIONS`` answered that
way by Unbound iterating from the lab's root hints (the reference resolver).
"""

from __future__ import annotations

import socket
import tempfile
import time
from pathlib import Path

import dnslib
import pytest

from tests.lab.dnshier import (
    BIG_TXT_STRINGS,
    SERVERS,
    Delay,
    DNSHierarchy,
    Expectation,
    RogueServer,
    Send,
    Unbound,
    dig,
    expectations,
    make_reply,
)

CASES = expectations()  # the base only changes the address of ns1.nic.test: ids and names hold for any


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
