"""ispd's recursive resolver as a real process over the lab's DNS hierarchy (NSD servers from the
root down on 127.x.y.z:53), asked by real clients: dig, kdig, dnspython and raw sockets.

One ispd serves the module (its cache carries over from test to test, as a resolver's does);
the tests that need a cold cache or another ``allow`` start one of their own.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import dnslib
import pytest

from tests.lab.dnshier import (
    BIG_TXT_STRINGS,
    Action,
    Blackhole,
    Delay,
    DigResult,
    DNSHierarchy,
    Expectation,
    Handler,
    RogueServer,
    Send,
    expectations,
    make_reply,
)
from tests.lab.dnsispd import DNSIspd, rdatas
from tests.lab.process import eventually

CASES = expectations()  # ids and names; the base-specific expectation comes from the hierarchy
HITS = "ispd_dns_cache_hits_total"
MISMATCHED = "ispd_dns_upstream_mismatched_replies_total"


@pytest.fixture(scope="module")
def resolver(dns_hierarchy: DNSHierarchy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DNSIspd]:
    with DNSIspd(tmp_path_factory.mktemp("ispd-resolver"), dns_hierarchy, log_servfail=True) as ispd:
        ispd.start()
        yield ispd
        ispd.assert_healthy()


@pytest.fixture
def fresh_resolver(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> Iterator[DNSIspd]:
    """An ispd with an empty cache, for one test."""
    with DNSIspd(tmp_path / "fresh", dns_hierarchy) as ispd:
        ispd.start()
        yield ispd


def ttls(result: DigResult) -> dict[tuple[str, str, str], int]:
    return {(r.owner, r.type, r.rdata): r.ttl for r in result.answer}


# --- every case of the lab, twice ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.case for c in CASES])
def test_every_case_resolves_as_expected_and_again_from_the_cache(
        dns_hierarchy: DNSHierarchy, resolver: DNSIspd, case: Expectation) -> None:
    expected = dns_hierarchy.expect(case.qname, case.qtype)

    def ask() -> DigResult:
        if expected.tcp:
            udp = resolver.dig(expected.qname, expected.qtype, "+ignore")
            assert udp.status == "NOERROR" and "tc" in udp.flags, udp.text
            assert len(udp.answer) < BIG_TXT_STRINGS, udp.text
            return resolver.dig(expected.qname, expected.qtype, "+tcp")
        return resolver.dig(expected.qname, expected.qtype, timeout=10)

    first = ask()
    assert expected.problems(first) == [], first.text
    hits = resolver.metric(HITS)
    again = ask()
    assert expected.problems(again) == [], again.text
    assert resolver.metric(HITS) > hits, "the second answer did not come from the cache"
    before = ttls(first)
    for key, ttl in ttls(again).items():
        assert key in before, f"{key} appeared only in the cached answer\n{again.text}"
        assert ttl <= before[key], f"{key}: TTL {ttl} from the cache, {before[key]} the first time"


def test_a_short_ttl_counts_down_and_the_name_is_fetched_again(resolver: DNSIspd) -> None:
    name = "ttl2.example-a.test"
    # Start from a fresh answer (an earlier test may have left one that is about to expire).
    deadline = time.monotonic() + 5
    while (first := resolver.dig(name)).answer[0].ttl != 2:
        assert time.monotonic() < deadline, first.text
        time.sleep(0.2)
    fetched_at = time.monotonic()
    assert rdatas(first) == {"198.18.1.2"}
    time.sleep(1.1)
    older = resolver.dig(name)
    assert rdatas(older) == {"198.18.1.2"}
    assert older.answer[0].ttl <= 1, older.text
    time.sleep(max(0.0, fetched_at + 2.3 - time.monotonic()))
    renewed = resolver.dig(name)
    assert rdatas(renewed) == {"198.18.1.2"}
    assert 0 < renewed.answer[0].ttl <= 2, renewed.text


# --- other clients --------------------------------------------------------------------------------


def kdig(resolver: DNSIspd, qname: str, qtype: str = "A", *options: str) -> tuple[str, set[str], list[str], str]:
    """(status, flags, answer lines "owner type rdata", full text) from kdig."""
    if shutil.which("kdig") is None:
        pytest.skip("kdig not installed (tools/setup --test installs it)")
    result = subprocess.run(["kdig", "@127.0.0.1", "-p", str(resolver.port), qname, qtype, "+timeout=5",
                             "+retry=0", *options], capture_output=True, text=True, timeout=20)
    text = result.stdout + result.stderr
    status = re.search(r"status: ([A-Z]+)", text)
    flags = re.search(r";; Flags: ([a-z ]*);", text)
    answer, in_answer = [], False
    for line in result.stdout.splitlines():
        if line.startswith(";; ANSWER SECTION:"):
            in_answer = True
        elif not line.strip() or line.startswith(";;"):
            in_answer = False
        elif in_answer:
            owner, _ttl, _class, rtype, rdata = line.split(None, 4)
            answer.append(f"{owner} {rtype} {rdata}")
    return (status.group(1) if status else "TIMEOUT", set(flags.group(1).split()) if flags else set(), answer,
            text)


def test_kdig_over_udp_and_tcp(resolver: DNSIspd) -> None:
    for options in ((), ("+tcp",)):
        status, _, answer, text = kdig(resolver, "cross.example-a.test", "A", *options)
        assert status == "NOERROR", text
        assert answer == ["cross.example-a.test. CNAME www.example-b.example.",
                          "www.example-b.example. A 198.18.3.1"], text
        status, _, answer, text = kdig(resolver, "nope.example-a.test", "A", *options)
        assert (status, answer) == ("NXDOMAIN", []), text
        status, _, answer, text = kdig(resolver, "1.1.18.198.in-addr.arpa", "PTR", *options)
        assert answer == ["1.1.18.198.in-addr.arpa. PTR www.example-a.test."], text
    # Without EDNS a UDP answer holds 512 bytes: kdig sees TC and asks again over TCP itself.
    status, _, answer, text = kdig(resolver, "big.example-a.test", "TXT", "+noedns")
    assert "truncated reply" in text and "retrying over TCP" in text, text
    assert status == "NOERROR" and len(answer) == BIG_TXT_STRINGS, text


def test_dnspython_as_a_stub_resolver_and_with_single_queries(resolver: DNSIspd) -> None:
    stub = dns.resolver.Resolver(configure=False)
    stub.nameservers = ["127.0.0.1"]
    stub.port = resolver.port
    stub.lifetime = 10
    answer = stub.resolve("www.dname.example-a.test", "A")
    assert answer.canonical_name.to_text() == "www.example-b.example."
    assert {r.to_text() for r in answer} == {"198.18.3.1"}
    assert {r.to_text() for r in stub.resolve("example-a.test", "MX")} == {"10 mail.example-a.test."}
    with pytest.raises(dns.resolver.NXDOMAIN):
        stub.resolve("nope.dname.example-a.test", "A")
    with pytest.raises(dns.resolver.NoAnswer):
        stub.resolve("v4only.example-a.test", "AAAA")
    # The stub follows TC to TCP by itself.
    assert len(stub.resolve("big.example-a.test", "TXT")) == BIG_TXT_STRINGS

    for use_edns in (-1, 0):
        query = dns.message.make_query("big.example-a.test", "TXT", use_edns=use_edns)
        with pytest.raises(dns.message.Truncated):
            dns.query.udp(query, "127.0.0.1", port=resolver.port, timeout=5, raise_on_truncation=True)
        whole = dns.query.tcp(query, "127.0.0.1", port=resolver.port, timeout=5)
        assert whole.rcode() == dns.rcode.NOERROR and len(whole.answer[0]) == BIG_TXT_STRINGS
        assert whole.id == query.id
        servfail = dns.query.udp(dns.message.make_query("loop1.example-a.test", "A", use_edns=use_edns),
                                 "127.0.0.1", port=resolver.port, timeout=10)
        assert servfail.rcode() == dns.rcode.SERVFAIL
    # RD and CD are echoed, the reply carries RA, and an EDNS query gets an OPT back.
    query = dns.message.make_query("www.example-a.test", "A", use_edns=0, want_dnssec=True)
    query.flags |= dns.flags.CD
    reply = dns.query.udp(query, "127.0.0.1", port=resolver.port, timeout=5)
    assert reply.flags & dns.flags.RD and reply.flags & dns.flags.CD and reply.flags & dns.flags.RA
    assert reply.edns == 0 and reply.ednsflags & dns.flags.DO


# --- TCP: several queries on one connection ----------------------------------------------------


def read_frame(conn: socket.socket) -> bytes:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = conn.recv(size - len(data))
            if not chunk:
                raise EOFError(f"connection closed after {len(data)} of {size} bytes")
            data += chunk
        return data

    return exactly(struct.unpack("!H", exactly(2))[0])


def test_tcp_pipelined_queries_are_all_answered_with_their_ids(resolver: DNSIspd) -> None:
    wanted = {
        "www.example-a.test.": "198.18.1.1",  # very likely cached: answered at once
        "pipe-1.bench.test.": "198.18.127.1",  # the wildcard: resolved now
        "pipe-2.bench.test.": "198.18.127.1",
        "h7.bench.test.": "198.18.128.7",
        "h8.bench.test.": "198.18.128.8",
        "www.sub.example-a.test.": "198.18.2.1",
        "www.oob.test.": "198.18.4.1",
        "x.y.example-a.test.": "198.18.1.50",
    }
    queries = {}
    for i, name in enumerate(wanted):
        query = dnslib.DNSRecord.question(name, "A")
        query.header.id = 0x4000 + i
        queries[query.header.id] = (name, query.pack())
    with socket.create_connection(("127.0.0.1", resolver.port), timeout=10) as conn:
        conn.sendall(b"".join(struct.pack("!H", len(q)) + q for _, q in queries.values()))
        replies = [dnslib.DNSRecord.parse(read_frame(conn)) for _ in queries]
    got = {r.header.id: r for r in replies}
    assert sorted(got) == sorted(queries), f"ids answered: {sorted(got)}"
    for qid, reply in got.items():
        name = queries[qid][0]
        assert str(reply.q.qname) == name
        assert {str(rr.rdata) for rr in reply.rr if rr.rtype == dnslib.QTYPE.A} == {wanted[name]}, reply


def test_concurrent_queries_for_one_name_share_one_resolution(resolver: DNSIspd) -> None:
    assert rdatas(resolver.dig("warm.bench.test")) == {"198.18.127.1"}  # bench.test's servers known
    before = resolver.metric("ispd_dns_upstream_queries_total")
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(30)]
    try:
        for i, sock in enumerate(sockets):
            query = dnslib.DNSRecord.question("shared.bench.test", "A")
            query.header.id = 0x2000 + i
            sock.settimeout(5)
            sock.sendto(query.pack(), ("127.0.0.1", resolver.port))
        for i, sock in enumerate(sockets):
            reply = dnslib.DNSRecord.parse(sock.recv(65535))
            assert reply.header.id == 0x2000 + i
            assert [str(rr.rdata) for rr in reply.rr] == ["198.18.127.1"]
    finally:
        for sock in sockets:
            sock.close()
    assert resolver.metric("ispd_dns_upstream_queries_total") - before <= 2


FLOOD = 200


def test_a_random_subdomain_flood_stops_at_the_zone_rate_limit(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    """200 new names under bench.test as fast as one socket sends them, with a limit of 20 queries
    a second to its servers: most get SERVFAIL without a query (counted, and logged by zone), the
    rest their answers, and another zone resolves meanwhile. (200: the replies wait in the
    client's receive buffer meanwhile, which holds about 256 of them.)"""
    limits = {"zone_rate_limit_qps": 20, "zone_rate_limit_factor": 0}
    with DNSIspd(tmp_path, dns_hierarchy, resolver=limits) as ispd:
        ispd.start()
        assert rdatas(ispd.dig("warm.bench.test")) == {"198.18.127.1"}  # bench.test's servers known
        upstream = ispd.metric("ispd_dns_upstream_queries_total")
        rcodes: dict[int, int] = {}
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for i in range(FLOOD):
                query = dnslib.DNSRecord.question(f"flood{i}-{random.getrandbits(32)}.bench.test", "A")
                query.header.id = i
                sock.sendto(query.pack(), ("127.0.0.1", ispd.port))
            assert rdatas(ispd.dig("www.secure.test")) == {"198.18.5.1"}  # another zone, mid-flood
            for _ in range(FLOOD):
                reply = dnslib.DNSRecord.parse(sock.recv(65535))
                rcodes[reply.header.rcode] = rcodes.get(reply.header.rcode, 0) + 1
        seconds = time.monotonic() - started
        answered, limited = rcodes.get(dnslib.RCODE.NOERROR, 0), rcodes.get(dnslib.RCODE.SERVFAIL, 0)
        assert answered + limited == FLOOD, rcodes
        assert 19 <= answered <= 20 * (int(seconds) + 2), (rcodes, seconds)  # (19: warm.bench.test may count)
        assert ispd.metric("ispd_dns_zone_rate_limited_total") == limited
        assert ispd.metric("ispd_dns_upstream_queries_total") - upstream <= answered + 5  # + www.secure.test
        logged = eventually(lambda: ispd.log_events("dns.zone_rate_limited"), timeout=15)
        assert logged[0]["zones"] == {"bench.test.": 20}


def test_private_addresses_are_kept_from_public_names(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    """DNS rebinding protection: bench.test's wildcard points into 198.18.127.0/24, made private
    here. Its names get no address (NOERROR), those under private_domains get theirs, other zones
    are untouched, and a signed answer that loses its address fails validation rather than
    coming through; the records dropped are counted."""
    private = {"private_addresses": ["198.18.127.0/24"], "private_domains": ["ok.bench.test"]}
    with DNSIspd(tmp_path, dns_hierarchy, resolver=private) as ispd:
        ispd.start()
        dropped = ispd.dig("x.bench.test")
        assert dropped.status == "NOERROR" and dropped.answer == ()
        assert rdatas(ispd.dig("a.ok.bench.test")) == {"198.18.127.1"}
        assert rdatas(ispd.dig("www.secure.test")) == {"198.18.5.1"}
        assert ispd.dig("x.sbench.test").status == "SERVFAIL"
        assert ispd.metric("ispd_dns_private_addresses_removed_total") >= 2


def test_dns64_gives_ipv6_only_clients_addresses_through_the_nat64(dns_hierarchy: DNSHierarchy,
                                                                   tmp_path: Path) -> None:
    """bench.test's wildcard has an A record (198.18.127.1) and no AAAA: with [dns.dns64] a dig
    for AAAA gets it embedded in the NAT64 prefix, counted; A answers are as before."""
    with DNSIspd(tmp_path, dns_hierarchy, dns64={"prefix": "2001:db8:64::/96"}) as ispd:
        ispd.start()
        made = ispd.dig("v6only.bench.test", "AAAA")
        assert made.status == "NOERROR" and rdatas(made, "AAAA") == {"2001:db8:64::c612:7f01"}, made.text
        assert "ad" not in ispd.dig("v6only.bench.test", "AAAA", "+dnssec").flags
        assert rdatas(ispd.dig("v6only.bench.test")) == {"198.18.127.1"}
        assert ispd.metric("ispd_dns_dns64_answers_total") >= 1
        # Reverse: the ip6.arpa name of an address under the prefix is the IPv4 address's, by a CNAME.
        reverse = ispd.dig(ipaddress.IPv6Address("2001:db8:64::c612:101").reverse_pointer, "PTR")
        assert reverse.status == "NOERROR", reverse.text
        assert rdatas(reverse, "CNAME") == {"1.1.18.198.in-addr.arpa."}
        assert rdatas(reverse, "PTR") == {"www.example-a.test."}


def test_dns64_for_the_ipv6_only_network_only(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    """[dns.dns64] clients: dig from 127.0.0.2 (the NAT64's network here) gets the made AAAA
    records; from 127.0.0.1 (a dual-stack subscriber) the real "no AAAA", asked twice (the
    second time from the answer cache's fast path)."""
    with DNSIspd(tmp_path, dns_hierarchy, dns64={"prefix": "2001:db8:64::/96", "clients": ["127.0.0.2/32"]}) as ispd:
        ispd.start()
        for _ in range(2):
            made = ispd.dig("mixed.bench.test", "AAAA", "-b", "127.0.0.2")
            assert rdatas(made, "AAAA") == {"2001:db8:64::c612:7f01"}, made.text
            plain = ispd.dig("mixed.bench.test", "AAAA")
            assert plain.status == "NOERROR" and plain.answer == (), plain.text
        reverse = ipaddress.IPv6Address("2001:db8:64::c612:101").reverse_pointer
        assert rdatas(ispd.dig(reverse, "PTR", "-b", "127.0.0.2"), "CNAME") == {"1.1.18.198.in-addr.arpa."}
        assert not rdatas(ispd.dig(reverse, "PTR"), "CNAME")


def test_a_stop_with_idle_tcp_clients_is_clean(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    """SIGTERM with DNS-over-TCP clients connected: each sees its connection end, and nothing is
    logged as an error (Python 3.11's start_server logged the loop's final cancel of the handler)."""
    with DNSIspd(tmp_path, dns_hierarchy) as ispd:
        ispd.start()
        clients = [socket.create_connection(("127.0.0.1", ispd.port), timeout=10) for _ in range(3)]
        try:
            time.sleep(0.2)  # accepted, and idle
            assert ispd.terminate() == 0
            assert [client.recv(10) for client in clients] == [b"", b"", b""]
        finally:
            for client in clients:
                client.close()
        text = ispd.log_text()
        assert '"level": "error"' not in text and "Traceback" not in text, text[-2000:]


def test_tcp_connections_are_capped_per_client_and_unread_replies_cut_off(dns_hierarchy: DNSHierarchy,
                                                                          tmp_path: Path) -> None:
    """One client, even one outside ``allow``, holds at most its share of the connections; one
    that asks and never reads its replies is cut off after the idle time, as a silent one is."""
    with DNSIspd(tmp_path, dns_hierarchy, allow=["127.0.0.1/32"], tcp_idle_seconds=2,
                 tcp_max_connections_per_client=3) as ispd:
        ispd.start()
        stranger = [socket.create_connection(("127.0.0.1", ispd.port), timeout=5, source_address=("127.0.0.2", 0))
                    for _ in range(4)]
        try:
            assert stranger[3].recv(10) == b""  # the fourth: closed at once
            query = dnslib.DNSRecord.question("www.example-a.test", "A").pack()
            stranger[0].sendall(struct.pack("!H", len(query)) + query)
            assert dnslib.DNSRecord.parse(read_frame(stranger[0])).header.rcode == dnslib.RCODE.REFUSED
            with socket.create_connection(("127.0.0.1", ispd.port), timeout=5) as allowed:  # another client
                allowed.sendall(struct.pack("!H", len(query)) + query)
                assert dnslib.DNSRecord.parse(read_frame(allowed)).header.rcode == dnslib.RCODE.NOERROR
        finally:
            for conn in stranger:
                conn.close()
        assert ispd.metric("ispd_dns_transport_refused_connections_total", {"transport": "tcp"}) >= 1

        big = dnslib.DNSRecord.question("big.example-a.test", "TXT").pack()
        greedy = socket.socket()
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.settimeout(5)
        try:
            greedy.connect(("127.0.0.1", ispd.port))
            greedy.sendall((struct.pack("!H", len(big)) + big) * 6000)  # 13 MB of replies, none read
            time.sleep(2 + 3)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := greedy.recv(65536):  # what the buffers held, then the end
                    received += len(chunk)
            assert received < 6000 * 2000, received  # (left open, all of it would come: 2,178 bytes each)
        finally:
            greedy.close()
        ispd.assert_healthy()
        assert ispd.terminate() == 0
        assert '"level": "error"' not in ispd.log_text()


def test_a_reload_applies_the_rate_limit(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    """SIGHUP with a new rate_limit_qps: UDP queries past it go unanswered, queries over TCP
    get REFUSED; and the limit comes off again the same way."""
    with DNSIspd(tmp_path, dns_hierarchy) as ispd:
        ispd.start()
        assert rdatas(ispd.dig("www.example-a.test")) == {"198.18.1.1"}

        def burst() -> list[str]:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(1)
                for i in range(20):
                    query = dnslib.DNSRecord.question("www.example-a.test", "A")
                    query.header.id = i
                    sock.sendto(query.pack(), ("127.0.0.1", ispd.port))
                answered = []
                with contextlib.suppress(TimeoutError):
                    while True:
                        answered.append(dnslib.RCODE[dnslib.DNSRecord.parse(sock.recv(4096)).header.rcode])
            return answered

        assert len(burst()) == 20
        ispd.config["dns"]["rate_limit_qps"] = 2
        ispd.write_config()
        ispd.reload()
        assert len(burst()) <= 5  # a burst of twice the rate, and what trickles in meanwhile
        assert ispd.metric("ispd_dns_dropped_total", {"reason": "rate_limited"}) >= 15
        with socket.create_connection(("127.0.0.1", ispd.port), timeout=5) as conn:
            query = dnslib.DNSRecord.question("www.example-a.test", "A").pack()
            conn.sendall((struct.pack("!H", len(query)) + query) * 10)
            over_tcp = [dnslib.RCODE[dnslib.DNSRecord.parse(read_frame(conn)).header.rcode] for _ in range(10)]
        assert over_tcp.count("REFUSED") >= 5, over_tcp  # each told, none left waiting
        ispd.config["dns"]["rate_limit_qps"] = 0
        ispd.write_config()
        ispd.reload()
        assert len(burst()) == 20
        ispd.assert_healthy()


def test_queries_without_recursion_are_refused(resolver: DNSIspd) -> None:
    """dig +norec: never iterated, and not answered from the cache (snooping on what others ask)."""
    assert rdatas(resolver.dig("www.example-a.test")) == {"198.18.1.1"}
    for name in ("www.example-a.test", "never-asked.bench.test"):
        result = resolver.dig(name, "A", "+norec")
        assert result.status == "REFUSED" and not result.answer, result.text
        assert "NOTAUTH" in result.text or "20 (Not Authoritative)" in result.text, result.text
    assert resolver.metric("ispd_dns_dropped_total", {"reason": "not_recursive"}) == 2


# --- who may ask ------------------------------------------------------------------------------------


def test_clients_outside_allow_are_refused(dns_hierarchy: DNSHierarchy, tmp_path: Path) -> None:
    with DNSIspd(tmp_path, dns_hierarchy, allow=["127.0.0.1/32"]) as ispd:
        ispd.start()
        allowed = ispd.dig("www.example-a.test")
        assert rdatas(allowed) == {"198.18.1.1"}, allowed.text
        for options in (("-b", "127.0.0.2"), ("-b", "127.0.0.2", "+tcp"), ("-b", "127.0.0.3", "+noedns")):
            refused = ispd.dig("www.example-a.test", "A", *options)  # cached now: still not for them
            assert refused.status == "REFUSED" and not refused.answer, refused.text
        never_resolved = ispd.dig("www.example-b.example", "A", "-b", "127.0.0.2")
        assert never_resolved.status == "REFUSED", never_resolved.text
        assert ispd.metric("ispd_dns_dropped_total", {"reason": "refused_client"}) >= 4
        assert ispd.metric("ispd_dns_answers_total", {"rcode": "REFUSED"}) >= 4
        # Only the allowed client's question went upstream.
        assert ispd.metric("ispd_dns_cache_entries", {"cache": "answer"}) == 1


# --- garbage ---------------------------------------------------------------------------------------


A_IN = b"\x00\x01\x00\x01"


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def www_query(qid: int = 0x1234, *, edns: bool = True) -> bytes:
    """www.example-a.test A, with an OPT record (EDNS 0, 1232 bytes) or without."""
    question = b"\x03www\x09example-a\x04test\x00" + A_IN
    if not edns:
        return header(qid) + question
    return header(qid, ar=1) + question + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


HAND_MADE = [
    b"",
    b"\x00",
    header()[:11],
    header(),  # a question announced, none there
    header() + b"\x03www",  # the question's name runs out
    header() + b"\xc0\x0c" + A_IN,  # a pointer to itself
    header() + b"\x01a\xc0\x0e" + A_IN,  # a label, then a pointer to that pointer
    header() + b"\xc0\x0e\xc0\x0c" + A_IN,  # two pointers pointing at each other
    header() + b"\x01a\xc0\xff" + A_IN,  # a pointer past the end
    header() + b"\x40" + b"a" * 64 + b"\x00" + A_IN,  # a 64-byte label
    header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00" + A_IN,  # a 320-byte name
    header(qd=2) + b"\x00" + A_IN + b"\x00" + A_IN,  # two questions
    header(an=1) + b"\x00" + A_IN + b"\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc6",  # a short rdata
    header(ar=1) + b"\x00" + A_IN + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x40abc",  # OPT rdlen past the end
    header(ar=2) + b"\x00" + A_IN + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" * 2,  # two OPTs
    header() + b"\x00" + A_IN + b"trailing",
    header(ar=1) + b"\x00" + A_IN + b"\x01a\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",  # OPT not at the root
    header(flags=0x8180, an=1) + b"\x03www\x09example-a\x04test\x00" + A_IN
    + b"\xc0\x0c" + A_IN + b"\x00\x00\x0e\x10\x00\x04\xc6\x12\x42\x42",  # a response, not a query
    www_query()[:-1],
    www_query(edns=False)[:-3],
]


def garbage(rng: random.Random, count: int) -> list[bytes]:
    """Hand-made malformations, truncated queries and random bytes; every one fails to decode
    or is a response (QR set)."""
    out = list(HAND_MADE)
    good = [www_query(), www_query(edns=False), dnslib.DNSRecord.question("big.example-a.test", "TXT").pack()]
    while len(out) < count:
        kind = rng.randrange(3)
        if kind == 0:
            query = rng.choice(good)
            out.append(query[:rng.randrange(len(query))])
        elif kind == 1:
            data = bytearray(rng.randbytes(rng.randrange(12, 600)))
            data[4] |= 0x01  # at least 256 questions: never one that parses
            out.append(bytes(data))
        else:
            out.append(rng.randbytes(rng.randrange(0, 12)))
    return out


def ask_udp(port: int, query: bytes, timeout: float = 5.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        sock.send(query)
        while True:
            reply = sock.recv(65535)
            if reply[:2] == query[:2]:
                return reply


def test_a_flood_of_malformed_datagrams_and_frames_is_counted_and_survived(resolver: DNSIspd) -> None:
    rng = random.Random(5452)
    sentinel = www_query(0x7777)
    assert dnslib.DNSRecord.parse(ask_udp(resolver.port, sentinel)).rr
    dropped_before = resolver.metric("ispd_dns_dropped_total", {"reason": "malformed"})

    datagrams = garbage(rng, 3000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as noise:
        noise.setblocking(False)
        for start in range(0, len(datagrams), 50):
            for datagram in datagrams[start:start + 50]:
                noise.sendto(datagram, ("127.0.0.1", resolver.port))
            # A round trip after each batch: ispd has read the batch (nothing dropped by a full
            # socket buffer) and still answers.
            reply = dnslib.DNSRecord.parse(ask_udp(resolver.port, sentinel))
            assert [str(rr.rdata) for rr in reply.rr] == ["198.18.1.1"]

    frames = [*garbage(rng, 1000)]
    with socket.create_connection(("127.0.0.1", resolver.port), timeout=10) as conn:
        conn.sendall(b"".join(struct.pack("!H", len(f)) + f for f in frames)
                     + struct.pack("!H", len(sentinel)) + sentinel)
        while True:  # FORMERR for those with a header, nothing for the rest, then the answer
            reply = dnslib.DNSRecord.parse(read_frame(conn))
            if reply.header.id == 0x7777 and reply.rr:
                break
    # A length prefix promising more than comes, then the client goes away; and one that stops
    # in the middle of the prefix.
    for tail in (struct.pack("!H", 500) + b"\x12\x34\x01\x00", b"\x00"):
        with socket.create_connection(("127.0.0.1", resolver.port), timeout=5) as conn:
            conn.sendall(tail)

    expected = len(datagrams) + len(frames)
    eventually(lambda: resolver.metric("ispd_dns_dropped_total", {"reason": "malformed"}) - dropped_before
               >= expected, timeout=5)
    counted = resolver.metric("ispd_dns_dropped_total", {"reason": "malformed"}) - dropped_before
    assert counted == expected
    # Still answering: from the cache, and by resolving, over UDP and TCP.
    assert rdatas(resolver.dig("h21.bench.test")) == {"198.18.128.21"}
    assert rdatas(resolver.dig("h22.bench.test", "A", "+tcp")) == {"198.18.128.22"}
    resolver.assert_healthy()


# --- forgeries (RFC 5452) ------------------------------------------------------------------------


ROGUE_SOA = "rogue.test. 300 IN SOA ns1.rogue.test. hostmaster.rogue.test. 1 3600 900 604800 300"
TRUE = "198.18.66.1"
FORGED = "198.18.66.66"


def rogue_handler(before: Sequence[str], spare: str, *, answer: bool = True) -> Handler:
    """The rogue.test server: to an A question for a name in rogue.test, first the forgeries
    named in ``before`` ("id": a wrong ID, "question": another question, "source": sent from
    ``spare``), each carrying ``FORGED``, then (if ``answer``) the true answer ``TRUE``.
    Anything else: NXDOMAIN."""

    def handle(query: bytes, peer: tuple[str, int]) -> list[Action]:
        request = dnslib.DNSRecord.parse(query)
        name = str(request.q.qname).lower()
        if not name.endswith("rogue.test.") or request.q.qtype != dnslib.QTYPE.A or name.count(".") < 3:
            return [Send(make_reply(query, rcode=dnslib.RCODE.NXDOMAIN, authority=[ROGUE_SOA]))]
        poisoned = f"{name} 300 IN A {FORGED}"
        actions: list[Action] = []
        for kind in before:
            if kind == "id":
                actions.append(Send(make_reply(query, poisoned, id=request.header.id ^ 0x5A5A)))
            elif kind == "question":
                actions.append(Send(make_reply(query, f"forged.rogue.test. 300 IN A {FORGED}",
                                               qname="forged.rogue.test.")))
            elif kind == "source":
                actions.append(Send(make_reply(query, poisoned), source=(spare, 53)))
        if answer:
            actions += [Delay(0.05), Send(make_reply(query, f"{name} 300 IN A {TRUE}"))]
        return actions

    return handle


@pytest.mark.parametrize(("forgery", "counted"), [("id", True), ("question", True), ("source", False)])
def test_forged_replies_are_ignored_and_the_true_one_taken(
        dns_hierarchy: DNSHierarchy, resolver: DNSIspd, forgery: str, counted: bool) -> None:
    handler = rogue_handler([forgery], dns_hierarchy.rogue_spare_address)
    name = f"{forgery}.rogue.test"
    mismatched = resolver.metric(MISMATCHED)
    with RogueServer(dns_hierarchy.rogue_address, handler) as rogue:
        result = resolver.dig(name)
        assert result.status == "NOERROR" and rdatas(result) == {TRUE}, result.text
        assert any(str(dnslib.DNSRecord.parse(q).q.qname).lower() == name + "." for q, _, _ in rogue.queries)
        assert not rogue.errors
    if counted:  # a wrong ID or question on the query's own socket: seen and counted
        assert resolver.metric(MISMATCHED) > mismatched
    else:  # from another address: the connected socket never even delivers it
        assert resolver.metric(MISMATCHED) == mismatched
    assert rdatas(resolver.dig(name)) == {TRUE}  # and that is what was cached


def test_only_forgeries_means_servfail(dns_hierarchy: DNSHierarchy, resolver: DNSIspd) -> None:
    handler = rogue_handler(["id", "question", "source"], dns_hierarchy.rogue_spare_address, answer=False)
    mismatched = resolver.metric(MISMATCHED)
    with RogueServer(dns_hierarchy.rogue_address, handler) as rogue:
        result = resolver.dig("only-forged.rogue.test", timeout=10)
        assert result.status == "SERVFAIL" and not result.answer, result.text
        asked = [q for q, _, _ in rogue.queries if b"only-forged" in q]
    # Each query ispd sent got one forged ID and one forged question back.
    assert resolver.metric(MISMATCHED) - mismatched >= 2 * len(asked) >= 2


def test_out_of_bailiwick_records_from_a_server_are_not_used(dns_hierarchy: DNSHierarchy,
                                                            fresh_resolver: DNSIspd) -> None:
    rogue_address = dns_hierarchy.rogue_address

    def handler(query: bytes, peer: tuple[str, int]) -> list[Action]:
        request = dnslib.DNSRecord.parse(query)
        name = str(request.q.qname).lower()
        if name == "www.rogue.test." and request.q.qtype == dnslib.QTYPE.A:
            return [Send(make_reply(
                query, f"www.rogue.test. 300 IN A {TRUE}", f"www.example-a.test. 300 IN A {FORGED}",
                authority=["example-a.test. 300 IN NS ns1.rogue.test.", "test. 300 IN NS ns1.rogue.test."],
                additional=[f"www.example-a.test. 300 IN A {FORGED}", f"ns1.example-a.test. 300 IN A {rogue_address}",
                            f"ns1.nic.test. 300 IN A {rogue_address}", f"ns1.rogue.test. 300 IN A {rogue_address}"]))]
        if name == "alias.rogue.test.":
            return [Send(make_reply(query, "alias.rogue.test. 300 IN CNAME www.example-b.example.",
                                    f"www.example-b.example. 300 IN A {FORGED}"))]
        # Whatever else it is asked (it should be asked nothing else): a forged address.
        if request.q.qtype == dnslib.QTYPE.A:
            return [Send(make_reply(query, f"{name} 300 IN A {FORGED}"))]
        return [Send(make_reply(query, rcode=dnslib.RCODE.NXDOMAIN, authority=[ROGUE_SOA]))]

    with RogueServer(rogue_address, handler) as rogue:
        www = fresh_resolver.dig("www.rogue.test")
        assert www.status == "NOERROR", www.text
        assert {(r.owner, r.rdata) for r in www.answer} == {("www.rogue.test.", TRUE)}, www.text
        alias = fresh_resolver.dig("alias.rogue.test")
        assert [(r.owner, r.type, r.rdata) for r in alias.answer] == [
            ("alias.rogue.test.", "CNAME", "www.example-b.example."),
            ("www.example-b.example.", "A", "198.18.3.1")], alias.text
        for name, address in (("www.example-a.test", "198.18.1.1"), ("ns1.example-a.test", None),
                              ("mail.example-a.test", "198.18.1.25"), ("www.sub.example-a.test", "198.18.2.1")):
            result = fresh_resolver.dig(name)
            want = {address or dns_hierarchy.address("ns1.example-a.test")}
            assert result.status == "NOERROR" and rdatas(result) == want, result.text
        asked = sorted({str(dnslib.DNSRecord.parse(q).q.qname).lower() for q, _, _ in rogue.queries})
        assert asked == ["alias.rogue.test.", "www.rogue.test."], asked
    fresh_resolver.assert_healthy()


# --- serve-stale (RFC 8767) ------------------------------------------------------------------------


def test_an_expired_answer_is_served_stale_while_the_zone_is_down(dns_hierarchy: DNSHierarchy,
                                                                  resolver: DNSIspd) -> None:
    fresh = resolver.dig("www.stale.test")
    assert rdatas(fresh) == {"198.18.7.1"} and fresh.answer[0].ttl <= 2, fresh.text
    stale_before = resolver.metric("ispd_dns_stale_answers_total")
    with dns_hierarchy.outage(dns_hierarchy.address("ns1.stale.test")):
        time.sleep(2.2)  # the answer's TTL has passed
        stale = resolver.dig("www.stale.test", timeout=5)
        assert stale.status == "NOERROR" and rdatas(stale) == {"198.18.7.1"}, stale.text
        assert stale.answer[0].ttl == 30, stale.text
        assert resolver.metric("ispd_dns_stale_answers_total") > stale_before
        # A name of the zone that was never cached has nothing to fall back on.
        never = resolver.dig("ttl30.stale.test", timeout=10)
        assert never.status == "SERVFAIL", never.text


def test_a_silent_zone_also_gets_the_stale_answer_soon(dns_hierarchy: DNSHierarchy,
                                                      fresh_resolver: DNSIspd) -> None:
    assert rdatas(fresh_resolver.dig("www.stale.test")) == {"198.18.7.1"}
    address = dns_hierarchy.address("ns1.stale.test")
    # The server's address swallows queries instead of refusing them: ispd has to time out.
    with dns_hierarchy.outage(address), Blackhole(address):
        time.sleep(2.2)
        started = time.monotonic()
        stale = fresh_resolver.dig("www.stale.test", timeout=5)
        waited = time.monotonic() - started
        assert stale.status == "NOERROR" and rdatas(stale) == {"198.18.7.1"}, stale.text
        assert stale.answer[0].ttl == 30, stale.text
        # At most the client response timer (stale_client_timeout_seconds, 1.8 s) and a margin.
        assert waited < 2.5, f"the stale answer took {waited:.2f} s"
        assert fresh_resolver.metric("ispd_dns_stale_answers_total") >= 1


# --- ispd dns lookup --------------------------------------------------------------------------------


def test_dns_lookup_prints_the_trace_and_the_answer(dns_hierarchy: DNSHierarchy, resolver: DNSIspd) -> None:
    result = resolver.cli("dns", "lookup", "www.oob.test")
    out = result.stdout
    assert result.returncode == 0
    trace = [line for line in out.splitlines() if line.startswith(";; ")]
    assert any(dns_hierarchy.address("a.root-servers.test") in line or dns_hierarchy.address("b.root-servers.test")
               in line for line in trace), out
    assert any("ns-oob.example-b.example" in line for line in trace), out  # the NS name resolved on its own
    assert any(dns_hierarchy.address("oob") in line for line in trace), out
    assert re.search(r"^www\.oob\.test\.\s+\d+\s+IN\s+A\s+198\.18\.4\.1$", out, re.MULTILINE), out
    assert "status: NOERROR" in out, out


def test_new_names_of_a_dead_zone_fail_fast_once_its_servers_are_down(resolver: DNSIspd) -> None:
    """alldead.test: one server swallows queries, the other's port is closed. The first names
    wait out the timeouts; once both servers are down, a new name is SERVFAIL at once."""
    took = []
    for i in range(6):
        started = time.monotonic()
        result = resolver.dig(f"fast-fail-{i}.alldead.test", "A", timeout=15)
        took.append(time.monotonic() - started)
        assert result.status == "SERVFAIL", result.text
    assert max(took[-2:]) < 0.5, took  # (each took 4 s before)
    logged = {e["name"]: e["reason"] for e in resolver.log_events("dns.servfail")}  # (log_servfail is on)
    assert {f"fast-fail-{i}.alldead.test." for i in range(6)} <= set(logged), logged
    assert "every server of the zone is down" in logged["fast-fail-5.alldead.test."], logged


def test_dns_lookup_of_a_dead_zone_fails_with_a_message(resolver: DNSIspd) -> None:
    result = resolver.cli("dns", "lookup", "www.alldead.test", check=False)
    assert result.returncode != 0
    assert "www.alldead.test" in result.stderr and "resolution failed" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("qtype", ["AXFR", "ixfr", "OPT", "TYPE252"])
def test_dns_lookup_refuses_what_the_resolver_refuses(resolver: DNSIspd, qtype: str) -> None:
    result = resolver.cli("dns", "lookup", "example-a.test", qtype, check=False)
    assert result.returncode == 2 and "the resolver refuses that type" in result.stderr, result
    assert "upstream queries" not in result.stdout
