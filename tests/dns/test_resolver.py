"""The iterative resolver over a fake network: answers, what is cached, and what is sent upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any, TypeVar

import pytest

import ispd.dns.resolver as resolver_module
from ispd.dns.cache import CacheLimits, NegativeKind, RRsetCache, Trust
from ispd.dns.dnssec import parse_trust_anchors
from ispd.dns.resolver import (
    LOCALHOST_NETWORKS,
    NO_EDNS_SECONDS,
    PROBE_INTERVAL,
    AskableAddresses,
    ForwardZone,
    Resolution,
    Resolver,
    ResolverSettings,
    UpstreamError,
)
from ispd.dns.validator import Validator
from ispd.dns.wire import (
    CLASS_IN,
    ROOT,
    RR,
    Message,
    RCode,
    RRType,
    a_rdata,
    decode_message,
    name_from_text,
    name_to_text,
    rdata_name,
    soa_minimum,
)
from ispd.dns.zone import load_zone_text
from tests.dns.fakenet import (
    ALLDEAD_1,
    ALLDEAD_2,
    DEAD_1,
    DEAD_2,
    EXAMPLE_TEST_1,
    EXAMPLE_TEST_2,
    HINTS,
    LAME_1,
    LAME_2,
    OOB,
    OOB_ZONE,
    OTHER,
    ROOT_A,
    ROOT_B,
    TEST_1,
    TEST_2,
    FakeClock,
    FakeNet,
    Reply,
    SentQuery,
    settings,
    standard_net,
)

N = name_from_text
T = TypeVar("T")
EXAMPLE_TEST = (EXAMPLE_TEST_1, EXAMPLE_TEST_2)
TEST = (TEST_1, TEST_2)
ROOTS = (ROOT_A, ROOT_B)


class _FirstChoice:
    """Stands in for the ``random`` module in the resolver: the first server of the best band,
    so "the first NS" of a test is the one asked first."""

    @staticmethod
    def choice(seq: Sequence[T]) -> T:
        return seq[0]


@pytest.fixture
def first_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolver_module, "random", _FirstChoice())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def net(clock: FakeClock) -> FakeNet:
    return standard_net(clock)


def make_resolver(net: FakeNet, clock: FakeClock, **kwargs: object) -> Resolver:
    limits = kwargs.pop("limits", None)
    assert limits is None or isinstance(limits, CacheLimits)
    return Resolver(RRsetCache(limits or CacheLimits()), net, HINTS, clock, settings(**kwargs))


@pytest.fixture
def resolver(net: FakeNet, clock: FakeClock) -> Resolver:
    return make_resolver(net, clock)


async def ask(resolver: Resolver, name: str, qtype: int = RRType.A) -> Resolution:
    return await resolver.resolve(N(name), qtype)


def values(result: Resolution, rtype: int = RRType.A) -> list[str]:
    """The answer's data of ``rtype`` in presentation form (addresses, names, TXT bytes)."""
    out = []
    for rr in result.answer:
        if rr.rtype != rtype:
            continue
        if rtype == RRType.A:
            out.append(str(IPv4Address(rr.rdata)))
        elif rtype == RRType.AAAA:
            out.append(str(IPv6Address(rr.rdata)))
        elif rtype in (RRType.CNAME, RRType.DNAME, RRType.NS):
            out.append(name_to_text(rdata_name(rr.rdata)))
        else:
            out.append(rr.rdata.hex())
    return out


def chain(result: Resolution) -> list[tuple[str, str]]:
    return [(name_to_text(rr.name), RRType(rr.rtype).name) for rr in result.answer]


def add(net: FakeNet, origin: str, text: str) -> None:
    """Add records (zone-file lines relative to ``origin``) to the zone object ``origin``."""
    zone = net.zone(origin)
    for rr in _records(origin, text):
        zone.add(rr)


def _records(origin: str, text: str) -> list[RR]:
    head = f"$ORIGIN {origin}\n$TTL 3600\n@ SOA ns hostmaster 1 1 1 1 1\n"
    parsed = load_zone_text(head + text, origin)
    return [rr for name in parsed.names() for rrs in parsed.rrsets(name).values() for rr in rrs
            if rr.rtype != RRType.SOA]


# --- referrals, glue, the cache ----------------------------------------------------------------

async def test_first_query_primes_then_follows_referrals_with_glue(net: FakeNet, resolver: Resolver,
                                                                  first_choice: None) -> None:
    result = await ask(resolver, "www.example.test.")
    assert result.rcode == RCode.NOERROR
    assert values(result) == ["192.0.2.80"]
    assert net.sent() == [
        (ROOT_A, ".", "NS"),  # RFC 8109 priming
        (ROOT_A, "test.", "A"),  # minimised: one label more than the root
        (TEST_1, "example.test.", "A"),  # the glue of ns1.nic.test from the root's referral
        (EXAMPLE_TEST_1, "www.example.test.", "A"),
    ]
    now = resolver.clock()
    root_ns = resolver.cache.get(N("."), RRType.NS, now)
    assert root_ns is not None and root_ns.trust == Trust.ANSWER
    test_ns = resolver.cache.get(N("test."), RRType.NS, now)
    assert test_ns is not None and test_ns.trust == Trust.REFERRAL
    assert sorted(map(rdata_name, test_ns.rdatas)) == [N("ns1.nic.test."), N("ns2.nic.test.")]
    glue = resolver.cache.get(N("ns1.example.test."), RRType.A, now)
    assert glue is not None and glue.trust == Trust.GLUE and glue.rdatas == (a_rdata(EXAMPLE_TEST_1),)
    www = resolver.cache.get(N("www.example.test."), RRType.A, now)
    assert www is not None and www.trust == Trust.ANSWER


async def test_second_time_from_the_cache_without_queries(net: FakeNet, resolver: Resolver, clock: FakeClock) -> None:
    first = await ask(resolver, "www.example.test.")
    net.clear_log()
    clock.advance(100)
    second = await ask(resolver, "www.example.test.")
    assert net.log == []
    assert values(second) == values(first)
    assert second.answer[0].ttl == 3600 - 100  # the TTL left


async def test_answers_from_one_zone_share_its_name(net: FakeNet, resolver: Resolver) -> None:
    # Each cached RRset names its zone: one object for the zone, not a copy per name cached.
    await ask(resolver, "www.example.test.")
    await ask(resolver, "a.b.ent.example.test.")
    www = resolver.cache.get(N("www.example.test."), RRType.A, resolver.clock())
    deep = resolver.cache.get(N("a.b.ent.example.test."), RRType.A, resolver.clock())
    assert www is not None and deep is not None
    assert www.zone == N("example.test.") and deep.zone is www.zone


async def test_expired_answer_asks_only_the_zone_whose_servers_are_cached(net: FakeNet, resolver: Resolver,
                                                                           clock: FakeClock) -> None:
    await ask(resolver, "www.example.test.")
    net.clear_log()
    clock.advance(3601)  # www expired, and example.test's NS (3600 in test.); test.'s NS (172800) not
    result = await ask(resolver, "www.example.test.")
    assert values(result) == ["192.0.2.80"]
    # The walk restarts at test., whose servers are still known: the root is not asked.
    assert [address for address, _, _ in net.sent()][-1] in EXAMPLE_TEST
    assert all(address not in ROOTS for address, _, _ in net.sent())


async def test_out_of_bailiwick_ns_name_is_resolved_on_its_own(net: FakeNet, resolver: Resolver) -> None:
    result = await ask(resolver, "www.oob.test.")
    assert values(result) == ["192.0.2.20"]
    sent = net.sent()
    ns_query = sent.index(next(s for s in sent if s[1] == "ns-oob.other.example."))
    final = sent.index((OOB, "www.oob.test.", "A"))
    assert ns_query < final
    assert sent[ns_query][0] == OTHER  # asked of other.example's server, found through the root
    assert all(address != OOB for address, _, _ in sent[:final])


async def test_out_of_bailiwick_ns_name_with_ipv6_asks_both_families(net: FakeNet, clock: FakeClock) -> None:
    resolver = make_resolver(net, clock, do_ipv6=True)
    result = await ask(resolver, "www.oob.test.")
    assert values(result) == ["192.0.2.20"]
    asked = {(name, qtype) for _, name, qtype in net.sent()}
    assert {("ns-oob.other.example.", "A"), ("ns-oob.other.example.", "AAAA")} <= asked


async def test_in_zone_ns_name_without_glue_is_skipped(net: FakeNet, resolver: Resolver) -> None:
    add(net, "test.", "noglue NS ns.noglue.test.\nnoglue NS ns-oob.other.example.\n")
    net.serve(OOB, load_zone_text("@ SOA ns hm 1 1 1 1 1\n@ NS ns-oob.other.example.\nwww A 192.0.2.21\n",
                                  "noglue.test."))
    result = await ask(resolver, "www.noglue.test.")
    assert values(result) == ["192.0.2.21"]
    assert all(name != "ns.noglue.test." for _, name, _ in net.sent())


# --- chains -------------------------------------------------------------------------------------

async def test_cname_chain_inside_a_zone_is_one_query(net: FakeNet, resolver: Resolver) -> None:
    await ask(resolver, "www.example.test.")  # the delegations are known
    net.clear_log()
    result = await ask(resolver, "chain.example.test.")
    assert chain(result) == [("chain.example.test.", "CNAME"), ("chain2.example.test.", "CNAME"),
                             ("alias.example.test.", "CNAME"), ("www.example.test.", "A")]
    assert len(net.log) == 1
    net.clear_log()
    again = await ask(resolver, "chain.example.test.")
    assert net.log == []
    assert chain(again) == chain(result)


async def test_cname_across_zones(net: FakeNet, resolver: Resolver) -> None:
    result = await ask(resolver, "cross.example.test.")
    assert result.rcode == RCode.NOERROR
    assert chain(result) == [("cross.example.test.", "CNAME"), ("www.other.example.", "A")]
    assert values(result) == ["192.0.2.10"]
    assert (OTHER, "www.other.example.", "A") in net.sent()
    net.clear_log()
    assert chain(await ask(resolver, "cross.example.test.")) == chain(result)
    assert net.log == []


async def test_any_takes_a_cname_as_it_is(net: FakeNet, resolver: Resolver) -> None:
    """RFC 1034 §4.3.2 step 3a: ANY matches the CNAME itself; the chain is not followed, whether
    the CNAME comes from the zone or from the cache."""
    assert chain(await ask(resolver, "cross.example.test.")) == [("cross.example.test.", "CNAME"),
                                                                 ("www.other.example.", "A")]
    for _ in range(2):
        assert chain(await ask(resolver, "cross.example.test.", RRType.ANY)) == [("cross.example.test.", "CNAME")]


async def test_dname_is_followed_and_the_cname_synthesised(net: FakeNet, resolver: Resolver) -> None:
    result = await ask(resolver, "a.dname.example.test.")
    assert chain(result) == [("dname.example.test.", "DNAME"), ("a.dname.example.test.", "CNAME"),
                             ("a.other.example.", "A")]
    dname, cname = result.answer[0], result.answer[1]
    assert rdata_name(cname.rdata) == N("a.other.example.")
    assert cname.ttl == dname.ttl  # RFC 6672 §3.2
    assert values(result) == ["192.0.2.11"]
    # From the cache, for another type of the name and for another name below the DNAME: the
    # DNAME comes along (RFC 6672 §3.1), and example.test's servers are not asked again.
    net.clear_log()
    again = await ask(resolver, "a.dname.example.test.", RRType.TXT)
    assert chain(again)[:2] == [("dname.example.test.", "DNAME"), ("a.dname.example.test.", "CNAME")]
    other = await ask(resolver, "www.dname.example.test.")
    assert chain(other) == [("dname.example.test.", "DNAME"), ("www.dname.example.test.", "CNAME"),
                            ("www.other.example.", "A")]
    assert all(name.endswith("other.example.") for _, name, _ in net.sent()), net.sent()


async def test_a_cname_question_below_a_dname_is_answered_with_both(net: FakeNet, resolver: Resolver) -> None:
    """The synthesised CNAME is the answer, with its DNAME; and it is not cached alone, so the
    next question for the name gets the DNAME too (from a review)."""
    for qtype in (RRType.CNAME, RRType.CNAME, RRType.A):  # from the zone, then from the cache
        result = await ask(resolver, "b.dname.example.test.", qtype)
        assert chain(result)[:2] == [("dname.example.test.", "DNAME"), ("b.dname.example.test.", "CNAME")], qtype
        if qtype == RRType.CNAME:
            assert len(result.answer) == 2 and result.rcode == RCode.NOERROR


async def test_wildcard_answer(resolver: Resolver) -> None:
    result = await ask(resolver, "anything.wild.example.test.")
    assert chain(result) == [("anything.wild.example.test.", "A")]
    assert values(result) == ["192.0.2.99"]


async def test_a_cname_into_a_child_zone_of_the_same_server_is_followed(net: FakeNet, resolver: Resolver) -> None:
    """The server answers with AA, the CNAME and the child's referral, no SOA: an unfinished
    chain, not NODATA for its end (from two reviews: an empty NOERROR, cached for the CNAME's
    TTL, and a NODATA for the target that a direct question then got)."""
    child = "10.9.0.1"
    add(net, "example.test.", f"tochild CNAME www.child\ntonx CNAME nothere.child\nchild NS ns.child\n"
                              f"ns.child A {child}\n")
    net.serve(child, load_zone_text(f"$TTL 300\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A {child}\n"
                                    "www A 192.0.2.44\n", "child.example.test."))
    result = await ask(resolver, "tochild.example.test.")
    assert chain(result) == [("tochild.example.test.", "CNAME"), ("www.child.example.test.", "A")]
    assert values(result) == ["192.0.2.44"]
    assert values(await ask(resolver, "www.child.example.test.")) == ["192.0.2.44"]
    nx = await ask(resolver, "tonx.example.test.")
    assert nx.rcode == RCode.NXDOMAIN and chain(nx) == [("tonx.example.test.", "CNAME")]


async def test_a_referral_whose_glue_has_ttl_0_is_followed(net: FakeNet, resolver: Resolver) -> None:
    """TTL 0: not cached, but used for the resolution in progress (RFC 1035 §3.2.1); from a
    review, such a delegation was SERVFAIL ("no server of the zone answered")."""
    child = "10.9.0.2"
    add(net, "test.", f"zero 0 NS ns.zero\nns.zero 0 A {child}\n")
    net.serve(child, load_zone_text(f"$TTL 300\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A {child}\n"
                                    "www A 192.0.2.45\n", "zero.test."))
    for name in ("www.zero.test.", "www.zero.test.", "ns.zero.test."):  # the delegation is asked for anew
        result = await ask(resolver, name)
        assert result.rcode == RCode.NOERROR and values(result), result
    assert values(await ask(resolver, "www.zero.test.")) == ["192.0.2.45"]


async def test_a_server_name_whose_address_has_ttl_0_is_asked(net: FakeNet, resolver: Resolver) -> None:
    """An NS name outside the zone whose A record has TTL 0: not cached, but used for the
    resolution in progress (RFC 1035 §3.2.1), as glue with TTL 0 is. From a code read: the
    address was looked up, found, and dropped ("no server of the zone has an address to ask")."""
    add(net, "test.", "zeroaddr NS ns-zero.other.example.\n")
    add(net, "other.example.", f"ns-zero 0 A {OOB}\n")
    net.serve(OOB, load_zone_text("@ SOA ns hm 1 1 1 1 1\n@ NS ns-zero.other.example.\nwww A 192.0.2.23\n",
                                  "zeroaddr.test."))
    for _ in range(2):  # and again, the address looked up anew
        assert values(await ask(resolver, "www.zeroaddr.test.")) == ["192.0.2.23"]
        resolver.cache.flush(N("www.zeroaddr.test."))


async def test_a_zone_whose_servers_have_only_addresses_of_a_family_turned_off_says_so(
        net: FakeNet, clock: FakeClock) -> None:
    """From a bug hunt: with do_ipv6 = false, a zone served over IPv6 only (AAAA glue, AAAA-only
    NS names) failed as "no server of the zone answered", with no query sent at all."""
    add(net, "test.", "v6only NS ns.v6only\nns.v6only AAAA 2001:db8:99::1\n"
                      "v6names NS ns.v6only.example.test.\n")
    add(net, "example.test.", "ns.v6only AAAA 2001:db8:99::1\n")
    resolver = make_resolver(net, clock, do_ipv6=False)
    for name in ("www.v6only.test.", "www.v6names.test."):
        result = await ask(resolver, name)
        assert result.rcode == RCode.SERVFAIL
        assert result.failure == "no server of the zone has an address to ask (none found, or only of a family turned off: do_ipv4, do_ipv6)", result.failure
    # The root itself, its hints having IPv4 addresses only.
    result = await ask(make_resolver(net, clock, do_ipv4=False), "www.example.test.")
    assert result.failure == "no server of the zone has an address to ask (none found, or only of a family turned off: do_ipv4, do_ipv6)", result.failure


async def test_cname_loop_is_servfail(resolver: Resolver) -> None:
    result = await ask(resolver, "loop1.example.test.")
    assert result.rcode == RCode.SERVFAIL
    assert result.failure == "CNAME loop"


async def test_cname_loop_across_zones_is_servfail(net: FakeNet, resolver: Resolver) -> None:
    add(net, "example.test.", "xloop CNAME xloop.other.example.\n")
    add(net, "other.example.", "xloop CNAME xloop.example.test.\n")
    result = await ask(resolver, "xloop.example.test.")
    assert result.rcode == RCode.SERVFAIL
    assert result.failure == "CNAME loop"


async def test_cname_chain_longer_than_the_maximum_is_servfail(net: FakeNet, clock: FakeClock) -> None:
    add(net, "example.test.", "c1 CNAME c2\nc2 CNAME c3\nc3 CNAME c4\nc4 CNAME c5\nc5 A 192.0.2.5\n")
    resolver = make_resolver(net, clock, max_cname_chain=3)
    ok = await ask(resolver, "c2.example.test.")  # three CNAMEs: allowed
    assert values(ok) == ["192.0.2.5"]
    too_long = await ask(resolver, "c1.example.test.")  # four
    assert too_long.rcode == RCode.SERVFAIL
    assert too_long.failure == "CNAME chain too long"


async def test_cname_chain_longer_than_the_maximum_in_one_reply_is_not_nodata(net: FakeNet,
                                                                               resolver: Resolver) -> None:
    """A chain of 13 CNAMEs that one server answers whole (default maximum 12): before the fix
    the resolver stopped following after 13 hops without looking at the last name and called it
    NODATA — caching a false NODATA for a name that has an address."""
    lines = "".join(f"h{i} CNAME h{i + 1}\n" for i in range(13)) + "h13 A 192.0.2.13\n"
    add(net, "example.test.", lines)
    result = await ask(resolver, "h0.example.test.")
    assert result.rcode == RCode.SERVFAIL
    assert result.failure == "CNAME chain too long"
    direct = await ask(resolver, "h13.example.test.")
    assert values(direct) == ["192.0.2.13"]
    assert resolver.cache.get_negative(N("h13.example.test."), RRType.A, resolver.clock()) is None


async def test_cname_chain_across_zones_counts_every_hop(net: FakeNet, clock: FakeClock) -> None:
    add(net, "example.test.", "p1 CNAME p1.other.example.\np2 CNAME p2.other.example.\n")
    add(net, "other.example.", "p1 CNAME p2.example.test.\np2 CNAME www.example.test.\n")
    resolver = make_resolver(net, clock, max_cname_chain=3)
    assert (await ask(resolver, "p2.example.test.")).rcode == RCode.NOERROR  # two hops
    assert (await ask(resolver, "p1.other.example.")).rcode == RCode.NOERROR  # three
    result = await ask(resolver, "p1.example.test.")  # four
    assert result.rcode == RCode.SERVFAIL
    assert result.failure == "CNAME chain too long"


# --- negative answers ---------------------------------------------------------------------------

async def test_nxdomain_cached_for_min_of_soa_ttl_and_minimum(net: FakeNet, resolver: Resolver,
                                                              clock: FakeClock) -> None:
    result = await ask(resolver, "nothere.example.test.")
    assert result.rcode == RCode.NXDOMAIN
    assert result.answer == []
    [soa] = result.authority
    assert soa.rtype == RRType.SOA and soa.name == N("example.test.")
    assert soa.ttl == 300 == min(3600, soa_minimum(soa.rdata))
    entry = resolver.cache.get_negative(N("nothere.example.test."), RRType.A, clock())
    assert entry is not None and entry.kind == NegativeKind.NXDOMAIN
    assert entry.expires_at == clock() + 300

    net.clear_log()
    clock.advance(299)
    cached = await ask(resolver, "nothere.example.test.", RRType.TXT)  # NXDOMAIN is for every type
    assert cached.rcode == RCode.NXDOMAIN
    assert cached.authority[0].ttl == 1
    assert net.log == []

    clock.advance(2)
    assert (await ask(resolver, "nothere.example.test.")).rcode == RCode.NXDOMAIN
    assert (EXAMPLE_TEST_1, "nothere.example.test.", "A") in net.sent() or \
        (EXAMPLE_TEST_2, "nothere.example.test.", "A") in net.sent()


async def test_negative_ttl_is_the_soa_ttl_when_lower_than_minimum(resolver: Resolver, clock: FakeClock) -> None:
    result = await ask(resolver, "nothere.other.example.")  # SOA TTL 120, MINIMUM 600
    assert result.rcode == RCode.NXDOMAIN
    assert result.authority[0].ttl == 120
    entry = resolver.cache.get_negative(N("nothere.other.example."), RRType.A, clock())
    assert entry is not None and entry.expires_at == clock() + 120


async def test_nodata_cached_per_type(net: FakeNet, resolver: Resolver, clock: FakeClock) -> None:
    result = await ask(resolver, "www.example.test.", RRType.MX)
    assert result.rcode == RCode.NOERROR
    assert result.answer == []
    assert [rr.rtype for rr in result.authority] == [RRType.SOA]
    assert result.authority[0].ttl == 300
    entry = resolver.cache.get_negative(N("www.example.test."), RRType.MX, clock())
    assert entry is not None and entry.kind == NegativeKind.NODATA
    net.clear_log()
    clock.advance(200)
    again = await ask(resolver, "www.example.test.", RRType.MX)
    assert again.rcode == RCode.NOERROR and again.answer == [] and again.authority[0].ttl == 100
    assert net.log == []
    # Another type of the same name is not NODATA.
    assert values(await ask(resolver, "www.example.test.", RRType.AAAA), RRType.AAAA) == ["2001:db8::80"]


async def test_cname_to_a_name_that_does_not_exist(resolver: Resolver, clock: FakeClock) -> None:
    result = await ask(resolver, "gone.example.test.")
    assert result.rcode == RCode.NXDOMAIN  # RFC 6604: the rcode of the last name of the chain
    assert chain(result) == [("gone.example.test.", "CNAME")]
    # The NXDOMAIN belongs to the target, not to the alias.
    assert resolver.cache.get_negative(N("nothere.example.test."), RRType.A, clock()) is not None
    assert resolver.cache.get(N("gone.example.test."), RRType.CNAME, clock()) is not None
    again = await ask(resolver, "gone.example.test.")
    assert again.rcode == RCode.NXDOMAIN and chain(again) == chain(result)


async def test_an_unvalidated_nxdomain_at_a_parent_does_not_answer_below_it(net: FakeNet, resolver: Resolver) -> None:
    """RFC 8020 only for a validated NXDOMAIN, as Unbound's harden-below-nxdomain: servers
    answer NXDOMAIN for empty non-terminals, and from a review one client's question for such
    a name made the existing names below it NXDOMAIN for everyone for the negative TTL."""
    await ask(resolver, "nothere.example.test.")
    net.clear_log()
    result = await ask(resolver, "a.b.nothere.example.test.", RRType.AAAA)
    assert result.rcode == RCode.NXDOMAIN and result.authority and result.authority[0].rtype == RRType.SOA
    assert ("a.b.nothere.example.test.", "AAAA") in net.names_sent()

    def empty_non_terminals_do_not_exist(query: Message, reply: Reply) -> Reply:
        assert query.question is not None
        if query.question.key_name in (N("ent.example.test."), N("b.ent.example.test.")):
            return Reply(RCode.NXDOMAIN, True, authority=reply.authority)
        return reply

    for address in (EXAMPLE_TEST_1, EXAMPLE_TEST_2):
        net.misbehave(address, handler=empty_non_terminals_do_not_exist)
    assert (await ask(resolver, "b.ent.example.test.")).rcode == RCode.NXDOMAIN
    assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]


async def test_nodata_at_a_parent_does_not_answer_a_child(net: FakeNet, resolver: Resolver) -> None:
    await ask(resolver, "ent.example.test.")  # an empty non-terminal: NODATA
    result = await ask(resolver, "a.b.ent.example.test.")
    assert values(result) == ["192.0.2.7"]


# --- transport trouble --------------------------------------------------------------------------

async def test_truncated_reply_is_asked_again_over_tcp(net: FakeNet, resolver: Resolver) -> None:
    result = await ask(resolver, "big.example.test.", RRType.TXT)
    assert result.rcode == RCode.NOERROR
    assert len(values(result, RRType.TXT)) == 4
    last_two = net.log[-2:]
    assert [(q.text, q.tcp) for q in last_two] == [("big.example.test.", False), ("big.example.test.", True)]
    assert last_two[0].address == last_two[1].address


async def test_tcp_retry_waits_longer_than_the_udp_round_trip(net: FakeNet, resolver: Resolver) -> None:
    """From the hostile-server lab: a server a few ms away whose TCP answer took 300 ms was
    SERVFAIL (the TCP wait was twice the UDP RTO, 100 ms) where Unbound answered."""
    waits: list[tuple[bool, float]] = []
    exchange = net.exchange

    async def recording(address: str, query: bytes, *, tcp: bool, wait: float, **kwargs: object) -> bytes:
        waits.append((tcp, wait))
        return await exchange(address, query, tcp=tcp, wait=wait, **kwargs)  # type: ignore[arg-type]

    net.exchange = recording  # type: ignore[method-assign]
    await ask(resolver, "www.example.test.")  # the servers' RTTs are known, and tiny
    for address in EXAMPLE_TEST:
        net.misbehave(address, always_tc=True)
    waits.clear()
    await ask(resolver, "alias.example.test.")
    tcp_waits = [wait for tcp, wait in waits if tcp]
    assert tcp_waits and min(tcp_waits) >= 1.0, waits


async def test_server_that_always_truncates_over_udp(net: FakeNet, resolver: Resolver) -> None:
    for address in EXAMPLE_TEST:
        net.misbehave(address, always_tc=True)
    result = await ask(resolver, "www.example.test.")
    assert values(result) == ["192.0.2.80"]
    to_zone = [q for q in net.log if q.address in EXAMPLE_TEST]
    assert [(q.text, q.tcp) for q in to_zone] == [("www.example.test.", False), ("www.example.test.", True)]


async def test_formerr_with_edns_is_asked_again_without_and_remembered(net: FakeNet, resolver: Resolver,
                                                                       first_choice: None) -> None:
    net.misbehave(EXAMPLE_TEST_1, formerr_edns=True)
    result = await ask(resolver, "www.example.test.")
    assert values(result) == ["192.0.2.80"]
    assert [(q.text, q.edns) for q in net.to(EXAMPLE_TEST_1)] == [("www.example.test.", True),
                                                                 ("www.example.test.", False)]
    net.clear_log()
    await ask(resolver, "alias.example.test.")
    assert [(q.text, q.edns) for q in net.to(EXAMPLE_TEST_1)] == [("alias.example.test.", False)]
    assert all(q.edns for q in net.log if q.address != EXAMPLE_TEST_1)


async def test_formerr_with_edns_to_one_type_leaves_edns_on_for_the_others_and_for_a_while(
        net: FakeNet, resolver: Resolver, clock: FakeClock, first_choice: None) -> None:
    """A server (or a middlebox before it) that rejects EDNS on a type it does not know, as
    HTTPS, still speaks EDNS for the rest. Before the fix one such client question made the
    resolver ask the server everything without EDNS, for good: no DO, so its signed zones
    went bogus (RRSIGs missing) until a restart."""
    def notimp_to_https_with_edns(query: Message, reply: Reply) -> Reply:
        assert query.question is not None
        if query.question.qtype == RRType.HTTPS and query.edns is not None:
            return Reply(RCode.NOTIMP, False)
        return reply
    net.misbehave(EXAMPLE_TEST_1, handler=notimp_to_https_with_edns)
    await ask(resolver, "www.example.test.", RRType.HTTPS)
    assert [(q.text, q.qtype, q.edns) for q in net.to(EXAMPLE_TEST_1)] == [
        ("www.example.test.", RRType.HTTPS, True), ("www.example.test.", RRType.HTTPS, False)]
    net.clear_log()
    result = await ask(resolver, "www.example.test.")
    assert values(result) == ["192.0.2.80"]
    assert [(q.text, q.qtype, q.edns) for q in net.to(EXAMPLE_TEST_1)] == [("www.example.test.", RRType.A, True)]
    net.clear_log()
    await ask(resolver, "alias.example.test.", RRType.HTTPS)  # remembered for HTTPS...
    assert [(q.qtype, q.edns) for q in net.to(EXAMPLE_TEST_1)] == [(RRType.HTTPS, False)]
    clock.advance(NO_EDNS_SECONDS + 1)  # ... for a while: the server may have been upgraded
    net.clear_log()
    await ask(resolver, "other.example.test.", RRType.HTTPS)
    assert net.to(EXAMPLE_TEST_1)[0].edns


@pytest.mark.parametrize("mode", ["strict", "relaxed"])
async def test_formerr_with_edns_to_a_minimised_name_is_asked_again_without(net: FakeNet, clock: FakeClock,
                                                                            mode: str, first_choice: None) -> None:
    """From a code read: the error to a minimised name was taken before the retry without
    EDNS, so a zone whose servers reject EDNS was SERVFAIL in the strict mode ("rcode FORMERR
    to a minimised name") and sent full names in the relaxed one."""
    for address in EXAMPLE_TEST:
        net.misbehave(address, formerr_edns=True)
    resolver = make_resolver(net, clock, qname_minimisation=mode)
    assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]
    to_zone = [(q.text, q.edns) for q in net.log if q.address in EXAMPLE_TEST]
    assert to_zone == [("ent.example.test.", True), ("ent.example.test.", False), ("b.ent.example.test.", False),
                       ("a.b.ent.example.test.", False)]


async def test_an_error_to_a_minimised_name_with_and_without_edns_leaves_edns_on(net: FakeNet,
                                                                                resolver: Resolver) -> None:
    """A server that errs on empty non-terminals whatever the EDNS: not one that rejects EDNS
    (a mark on type A would strip DO from all its A queries)."""
    _erring_at_empty_non_terminals(net, RCode.FORMERR)
    assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]
    net.clear_log()
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert all(q.edns for q in net.log)


async def test_lame_server_is_skipped_and_remembered(net: FakeNet, resolver: Resolver, clock: FakeClock,
                                                     first_choice: None) -> None:
    result = await ask(resolver, "www.lame.test.")
    assert values(result) == ["192.0.2.30"]
    assert [q.text for q in net.to(LAME_1)] == ["www.lame.test."]  # REFUSED
    assert [q.text for q in net.to(LAME_2)] == ["www.lame.test."]
    assert resolver.infra.is_lame(N("lame.test."), LAME_1, clock(), RRType.A)
    assert not resolver.infra.is_lame(N("lame.test."), LAME_2, clock(), RRType.A)
    net.clear_log()
    result = await ask(resolver, "nx.lame.test.")
    assert result.rcode == RCode.NXDOMAIN
    assert net.to(LAME_1) == []


async def test_dead_server_is_skipped_after_a_timeout(net: FakeNet, resolver: Resolver, clock: FakeClock,
                                                      first_choice: None) -> None:
    before = clock()
    result = await ask(resolver, "www.dead.test.")
    assert values(result) == ["192.0.2.40"]
    assert [q.text for q in net.to(DEAD_1)] == ["www.dead.test."]
    assert [q.text for q in net.to(DEAD_2)] == ["www.dead.test."]
    assert resolver.infra.state(DEAD_1).timeouts == 1
    assert clock() - before == pytest.approx(ResolverSettings().initial_timeout)  # one wait spent
    assert resolver.upstream_failures == {"timeout": 1}


async def test_a_server_that_timed_out_is_not_picked_again_while_another_answers(net: FakeNet, resolver: Resolver,
                                                                                clock: FakeClock,
                                                                                first_choice: None) -> None:
    """A dead address beside a live one (a name server's unreachable AAAA beside its A): its
    backed-off timeout is what it is expected to take, outside the live one's band, so new names
    do not wait for it again - not the next ones, nor each time its down time ends (it was as
    likely a pick as the live one: 0.4, 0.8, 1.6 s waits, then 2 s every server_down_seconds)."""
    await ask(resolver, "www.dead.test.")  # DEAD_1 times out, DEAD_2 answers
    net.clear_log()
    for i in range(6):
        clock.advance(resolver.settings.server_down_seconds / 2)
        before = clock()
        result = await ask(resolver, f"n{i}.dead.test.")
        assert result.rcode == RCode.NXDOMAIN
        assert clock() - before < ResolverSettings().initial_timeout
    assert net.to(DEAD_1) == []
    # Forgotten after a while, as Unbound's infra cache entries are: asked again if picked.
    clock.advance(resolver_module.FAILURE_MEMORY_SECONDS)
    assert resolver.infra.choose([DEAD_1, DEAD_2], clock()) == DEAD_1


@pytest.mark.parametrize("ttl", ["", "0 "])
async def test_the_other_family_of_a_server_name_is_looked_up_when_the_known_one_fails(net: FakeNet,
                                                                                       clock: FakeClock,
                                                                                       ttl: str) -> None:
    """From an IPv6 lab: a name server's A was cached (a client asked for it) and its AAAA never
    looked up; with its IPv4 address dead, every zone it serves failed (SERVFAIL) although its
    IPv6 address answered. Unbound looks up the missing family of a server name it has one of.
    An AAAA with TTL 0 serves the resolution in progress too."""
    v6 = "2001:db8::53"
    add(net, "other.example.", f"ns-oob {ttl}AAAA {v6}")
    net.serve(v6, load_zone_text(OOB_ZONE, "oob.test."))
    net.misbehave(OOB, timeout=True)
    resolver = make_resolver(net, clock, do_ipv6=True)
    assert values(await ask(resolver, "ns-oob.other.example.")) == [OOB]  # its A cached, not its AAAA
    net.clear_log()
    assert values(await ask(resolver, "www.oob.test.")) == ["192.0.2.20"]
    assert ("ns-oob.other.example.", "AAAA") in net.names_sent()
    assert [q.text for q in net.to(v6)] == ["www.oob.test."]


async def test_running_out_of_sockets_does_not_mark_the_servers_down(net: FakeNet, resolver: Resolver,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     clock: FakeClock) -> None:
    """A flood of new names under a slow zone holds a socket per upstream query; past the
    descriptor limit every query fails at socket() (EMFILE), to every server. Before the fix
    each such failure counted as the server's timeout: the busiest zones' servers were marked
    down, their names answered SERVFAIL "every server of the zone is down (timed out lately)"
    without a query tried when sockets came free, and the log sent the operator looking for a
    network fault."""
    exchange = net.exchange

    async def out_of_sockets(address: str, query: bytes, **kwargs: Any) -> bytes:
        raise UpstreamError("socket", "[Errno 24] Too many open files")

    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]  # delegations cached
    monkeypatch.setattr(net, "exchange", out_of_sockets)
    for i in range(4):
        result = await ask(resolver, f"n{i}.example.test.")
        assert result.rcode == RCode.SERVFAIL
        assert result.failure != "every server of the zone is down (timed out lately)"
    assert resolver.upstream_failures["socket"] == 4  # one each: no other server tried in vain
    assert all(resolver.infra.is_up(address, RRType.A, clock()) for address in EXAMPLE_TEST)
    monkeypatch.setattr(net, "exchange", exchange)
    assert (await ask(resolver, "later.example.test.")).rcode == RCode.NXDOMAIN  # asked, answered


async def test_unreachable_server_is_skipped(net: FakeNet, resolver: Resolver, first_choice: None) -> None:
    net.misbehave(EXAMPLE_TEST_1, unreachable=True)
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert resolver.upstream_failures == {"unreachable": 1}
    assert [q.text for q in net.to(EXAMPLE_TEST_2)] == ["www.example.test."]


async def test_all_servers_dead_is_servfail_within_the_budget(net: FakeNet, resolver: Resolver) -> None:
    result = await ask(resolver, "www.alldead.test.")
    assert result.rcode == RCode.SERVFAIL
    assert result.failure
    for address in (ALLDEAD_1, ALLDEAD_2):
        assert 1 <= len(net.to(address)) <= 2  # each server at most twice
    assert len(net.log) <= ResolverSettings().max_queries_per_request


async def test_a_zone_whose_servers_are_all_down_fails_at_once_but_for_a_probe(net: FakeNet, resolver: Resolver,
                                                                              clock: FakeClock) -> None:
    """Once every server of a zone has timed out again and again, a new name there is SERVFAIL
    without a wait (Unbound answers in a millisecond; before, each name cost 4 s of timeouts);
    every PROBE_INTERVAL a server is tried once, and one that answers brings the zone back."""
    names = iter(f"n{i}.alldead.test." for i in range(100))
    while not all(resolver.infra.state(a).down_until > clock() for a in (ALLDEAD_1, ALLDEAD_2)):
        assert (await ask(resolver, next(names))).rcode == RCode.SERVFAIL
    net.clear_log()
    before = clock()
    result = await ask(resolver, next(names))
    assert result.rcode == RCode.SERVFAIL and "down" in (result.failure or "")
    assert net.log == [] and clock() == before
    clock.advance(PROBE_INTERVAL)
    assert (await ask(resolver, next(names))).rcode == RCode.SERVFAIL
    assert sorted(q.address for q in net.log) == sorted([ALLDEAD_1, ALLDEAD_2])  # one probe each
    net.clear_log()
    assert (await ask(resolver, next(names))).rcode == RCode.SERVFAIL and net.log == []
    net.misbehave(ALLDEAD_2, timeout=False)  # back
    clock.advance(PROBE_INTERVAL)
    assert values(await ask(resolver, "www.alldead.test.")) == ["192.0.2.50"]


async def test_a_wait_the_request_timeout_ends_counts_as_a_timeout(net: FakeNet, resolver: Resolver,
                                                                   clock: FakeClock) -> None:
    """From a bug hunt: with request_timeout_seconds under the backed-off upstream wait, the
    client's timeout cancelled each wait for a dead server before it was counted, so the server
    was never marked down: every new name of its zone waited the whole request timeout (live:
    n1..n9.alldead.test, 1.04 s each with request_timeout_seconds = 1) and got SERVFAIL. A wait
    past the server's RTO is a timeout, whoever ends it."""
    exchange, never = net.exchange, asyncio.Event()

    async def hanging(address: str, query: bytes, **kwargs: Any) -> bytes:
        if address in (ALLDEAD_1, ALLDEAD_2):
            clock.advance(0.45)  # past the RTO (0.4 s), short of the backed-off wait (0.8 s)
            await never.wait()
        return await exchange(address, query, **kwargs)

    net.exchange = hanging  # type: ignore[method-assign]
    cut_short = 0
    for i in range(12):
        try:
            async with asyncio.timeout(0.05):  # the client's request timeout
                result = await ask(resolver, f"n{i}.alldead.test.")
        except TimeoutError:
            cut_short += 1
            continue
        assert result.rcode == RCode.SERVFAIL and "down" in (result.failure or "")
        break
    else:
        raise AssertionError("every name waited for the dead servers until the request timeout")
    assert cut_short <= 8  # three each, then down (and a probe of each, due at once)


async def test_servers_that_drop_one_kind_of_question_stay_up_for_the_others(net: FakeNet, resolver: Resolver,
                                                                             clock: FakeClock) -> None:
    """A server that drops TXT (RFC 8906's unknown-type troubles, a rate limit) is down for TXT
    alone: A and AAAA questions to its zones go on (from a review of the fast failure)."""
    def drop_txt(query: Any, reply: Any) -> Any:
        return None if query.question.qtype == RRType.TXT else reply
    for address in (EXAMPLE_TEST_1, EXAMPLE_TEST_2):
        net.misbehave(address, handler=drop_txt)
    for i in range(4):
        assert (await ask(resolver, f"t{i}.example.test.", RRType.TXT)).rcode == RCode.SERVFAIL
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert (await ask(resolver, "nothing.example.test.")).rcode == RCode.NXDOMAIN
    assert (await ask(resolver, "www.example.test.", RRType.AAAA)).rcode == RCode.NOERROR


async def test_a_malformed_reply_is_no_use_but_its_server_stays_in_service(
        net: FakeNet, resolver: Resolver, clock: FakeClock, first_choice: None) -> None:
    """The next server answers; the one that sent it is neither lame nor down (from reviews:
    one malformed reply to one odd name took the zone down for 15 minutes; a burst of them,
    counted as timeouts, for every name of the type)."""
    net.misbehave(EXAMPLE_TEST_1, handler=lambda query, reply: b"\x00\x01garbage")
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert [q.text for q in net.to(EXAMPLE_TEST_2)] == ["www.example.test."]

    def odd_name_breaks(query: Message, reply: Reply) -> Reply | bytes:
        assert query.question is not None
        return b"\x00\x01garbage" if query.question.key_name.startswith(b"\x03odd") else reply

    for address in (EXAMPLE_TEST_1, EXAMPLE_TEST_2):
        net.misbehave(address, handler=odd_name_breaks)
    for _ in range(8):
        assert (await ask(resolver, "odd.example.test.")).rcode == RCode.SERVFAIL
        clock.advance(6)  # past the 5 s a failure is cached
    for address in (EXAMPLE_TEST_1, EXAMPLE_TEST_2):
        assert not resolver.infra.is_lame(N("example.test."), address, clock(), RRType.A)
        assert resolver.infra.is_up(address, RRType.A, clock())
    assert values(await ask(resolver, "alias.example.test.")) == ["192.0.2.80"]


async def test_a_server_refusing_one_type_is_lame_for_that_type_only(net: FakeNet, resolver: Resolver,
                                                                    clock: FakeClock) -> None:
    """From a review: one client's TYPE65000 question, REFUSED by a zone's only server, made
    every name of the zone SERVFAIL for everyone for 15 minutes."""
    def picky(query: Message, reply: Reply) -> Reply:
        assert query.question is not None
        return Reply(RCode.REFUSED, False) if query.question.qtype == 65000 else reply

    net.misbehave(OTHER, handler=picky)
    assert (await ask(resolver, "www.other.example.", 65000)).rcode == RCode.SERVFAIL
    assert resolver.infra.is_lame(N("other.example."), OTHER, clock(), 65000)
    assert values(await ask(resolver, "a.other.example.")) == ["192.0.2.11"]


async def test_upward_referral_is_lame(net: FakeNet, resolver: Resolver, clock: FakeClock,
                                       first_choice: None) -> None:
    root_ns = [RR(N("."), RRType.NS, CLASS_IN, 3600, N("a.root-servers.net."))]

    def upward(query: Message, reply: Reply) -> Reply:
        return Reply(RCode.NOERROR, False, authority=root_ns)

    net.misbehave(EXAMPLE_TEST_1, handler=upward)
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert resolver.infra.is_lame(N("example.test."), EXAMPLE_TEST_1, clock(), RRType.A)


async def test_upward_referral_with_aa_is_lame_not_nodata(net: FakeNet, resolver: Resolver, clock: FakeClock,
                                                          first_choice: None) -> None:
    """RFC 2308 §2.2: NS records without an SOA make a referral, AA or not; one to a zone above
    is a lame server's (Unbound: SERVFAIL from it, the next server asked). Before the fix the
    parent's NS set was dropped as out of bailiwick and what remained, AA and nothing else, was
    cached as NODATA: with one such server of two, half the names of a zone had no address."""
    parent_ns = [RR(N("test."), RRType.NS, CLASS_IN, 3600, N("ns1.test."))]

    def upward(query: Message, reply: Reply) -> Reply:
        return Reply(RCode.NOERROR, True, authority=parent_ns)

    net.misbehave(EXAMPLE_TEST_1, handler=upward)
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert [q.text for q in net.to(EXAMPLE_TEST_2)] == ["www.example.test."]
    assert resolver.infra.is_lame(N("example.test."), EXAMPLE_TEST_1, clock(), RRType.A)


async def test_a_reply_of_thousands_of_records_is_not_decoded(net: FakeNet, resolver: Resolver,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               first_choice: None) -> None:
    """A zone anyone can register may answer 3000 A records (48 kB over UDP, whatever the EDNS
    size asked). Decoding, caching and rendering them took some 45 ms of the event loop each:
    a few dozen new names a second under such a zone stalled every client's answers, cached ones
    too. Such a reply is given up from its header, undecoded, and the zone's other servers are
    not asked for it."""
    def many(count: int) -> Callable[[Message, Reply], Reply]:
        def handler(query: Message, reply: Reply) -> Reply:
            assert query.question is not None
            return Reply(RCode.NOERROR, True, answer=[
                RR(query.question.name, RRType.A, CLASS_IN, 300, bytes([198, 18, i // 250, i % 250 + 1]))
                for i in range(count)])
        return handler

    net.misbehave(EXAMPLE_TEST_1, handler=many(100))
    assert len(values(await ask(resolver, "www.example.test."))) == 100  # a big RRset still is
    net.misbehave(EXAMPLE_TEST_1, handler=many(3000))
    decoded: list[int] = []
    decode = resolver_module.decode_message
    monkeypatch.setattr(resolver_module, "decode_message", lambda data: decoded.append(len(data)) or decode(data))
    net.clear_log()
    result = await ask(resolver, "other.example.test.")
    assert result.rcode == RCode.SERVFAIL
    assert result.failure == f"a reply of 3001 records (at most {resolver_module.MAX_REPLY_RECORDS})"  # and an OPT
    assert max(decoded) < 1232  # the UDP reply truncated to fit, not the 48 kB over TCP
    assert net.to(EXAMPLE_TEST_2) == []


async def test_sideways_referral_is_lame(net: FakeNet, resolver: Resolver, clock: FakeClock,
                                         first_choice: None) -> None:
    sideways = [RR(N("lame.test."), RRType.NS, CLASS_IN, 3600, N("ns1.lame.test."))]
    net.misbehave(TEST_1, handler=lambda query, reply: Reply(RCode.NOERROR, False, authority=sideways))
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert resolver.infra.is_lame(N("test."), TEST_1, clock(), RRType.A)
    assert resolver.cache.get(N("lame.test."), RRType.NS, clock()) is None


# --- QNAME minimisation (RFC 9156) --------------------------------------------------------------

async def test_minimisation_sends_one_more_name_part_at_a_time_with_type_a(net: FakeNet, resolver: Resolver) -> None:
    result = await ask(resolver, "a.b.ent.example.test.", RRType.AAAA)
    assert result.rcode == RCode.NOERROR and result.answer == []  # a.b.ent has only an A
    assert net.names_sent() == [
        (".", "NS"),
        ("test.", "A"),
        ("example.test.", "A"),
        ("ent.example.test.", "A"),
        ("b.ent.example.test.", "A"),
        ("a.b.ent.example.test.", "AAAA"),
    ]


async def test_minimisation_off_sends_the_full_name(net: FakeNet, clock: FakeClock) -> None:
    resolver = make_resolver(net, clock, qname_minimisation="off")
    assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]
    assert net.names_sent() == [(".", "NS")] + [("a.b.ent.example.test.", "A")] * 3


def _erring_at_empty_non_terminals(net: FakeNet, rcode: int) -> None:
    """example.test's servers as some broken ones are: ``rcode`` for an empty non-terminal
    (NXDOMAIN as an authoritative denial with the zone's SOA, any other as an error)."""
    zone = net.zone("example.test.")

    def broken(query: Message, reply: Reply) -> Reply:
        assert query.question is not None
        name = query.question.key_name
        if zone.exists(name) and not zone.rrsets(name):
            if rcode == RCode.NXDOMAIN:
                return Reply(RCode.NXDOMAIN, True, authority=zone.negative_soa())
            return Reply(rcode, False)
        return reply

    for address in EXAMPLE_TEST:
        net.misbehave(address, handler=broken)


async def test_relaxed_minimisation_falls_back_to_the_full_name_on_nxdomain(net: FakeNet, resolver: Resolver) -> None:
    _erring_at_empty_non_terminals(net, RCode.NXDOMAIN)
    result = await ask(resolver, "a.b.ent.example.test.")
    assert values(result) == ["192.0.2.7"]
    assert net.names_sent()[-2:] == [("ent.example.test.", "A"), ("a.b.ent.example.test.", "A")]


async def test_relaxed_fallback_does_not_leave_the_broken_nxdomain_in_the_cache(net: FakeNet,
                                                                                 resolver: Resolver) -> None:
    """Before the fix the broken server's NXDOMAIN for the minimised ``ent.example.test`` stayed in
    the cache, and RFC 8020 then answered NXDOMAIN for every name below it — the very name just
    answered, for any other type."""
    _erring_at_empty_non_terminals(net, RCode.NXDOMAIN)
    assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]
    other_type = await ask(resolver, "a.b.ent.example.test.", RRType.AAAA)
    assert other_type.rcode == RCode.NOERROR


async def test_strict_minimisation_takes_the_nxdomain(net: FakeNet, clock: FakeClock) -> None:
    _erring_at_empty_non_terminals(net, RCode.NXDOMAIN)
    resolver = make_resolver(net, clock, qname_minimisation="strict")
    result = await ask(resolver, "a.b.ent.example.test.")
    assert result.rcode == RCode.NXDOMAIN
    assert all(name != "a.b.ent.example.test." for name, _ in net.names_sent())


async def test_relaxed_minimisation_falls_back_on_an_error_for_a_minimised_name(net: FakeNet,
                                                                                 resolver: Resolver) -> None:
    _erring_at_empty_non_terminals(net, RCode.SERVFAIL)
    assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]



@pytest.mark.parametrize("mode", ["strict", "relaxed"])
async def test_a_lame_server_refusing_a_minimised_name_leaves_the_others_to_answer_it(
        net: FakeNet, clock: FakeClock, mode: str, first_choice: None) -> None:
    """From a code read: the REFUSED of one lame server of example.test to a minimised name was
    taken for the zone's at once - the strict mode SERVFAIL ("rcode REFUSED to a minimised
    name") and the relaxed one sent the full name - though its other server answered."""
    net.misbehave(EXAMPLE_TEST_1, handler=lambda query, reply: Reply(RCode.REFUSED, False))
    resolver = make_resolver(net, clock, qname_minimisation=mode)
    assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]
    assert [q.text for q in net.to(EXAMPLE_TEST_2)] == ["ent.example.test.", "b.ent.example.test.",
                                                         "a.b.ent.example.test."]


def _drop_empty_non_terminals(net: FakeNet) -> None:
    """example.test's servers drop the queries for its empty non-terminals (RFC 9156 §2.3)."""
    zone = net.zone("example.test.")

    def drops(query: Message, reply: Reply) -> Reply | None:
        assert query.question is not None
        name = query.question.key_name
        return None if zone.exists(name) and not zone.rrsets(name) else reply

    for address in EXAMPLE_TEST:
        net.misbehave(address, handler=drops)

async def test_relaxed_minimisation_falls_back_when_a_minimised_name_gets_no_reply(net: FakeNet,
                                                                                    resolver: Resolver) -> None:
    """Servers (and middleboxes before them) that drop queries for empty non-terminals: Unbound's
    relaxed mode then sends the full name. Before the fix the timeouts were the answer: SERVFAIL
    for the name, and a client that asked again took every server of the zone down for that
    type — every name of the zone SERVFAIL until a probe."""
    _drop_empty_non_terminals(net)
    for _ in range(2):
        resolver.cache.flush(name_from_text("ent.example.test."), subtree=True)
        assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]


async def test_minimisation_does_not_ask_again_for_names_known_to_exist(net: FakeNet, resolver: Resolver) -> None:
    """Before the fix each new name under an empty non-terminal asked the zone's servers for
    every minimised name again, though the cache held their NODATA (Unbound asks once)."""
    assert values(await ask(resolver, "a.b.ent.example.test.")) == ["192.0.2.7"]
    net.clear_log()
    assert (await ask(resolver, "z.b.ent.example.test.")).rcode == RCode.NXDOMAIN
    assert net.names_sent() == [("z.b.ent.example.test.", "A")]


async def test_minimisation_stops_after_max_steps(net: FakeNet, clock: FakeClock) -> None:
    add(net, "example.test.", "a.b.c.d.e.deep A 192.0.2.66\n")
    resolver = make_resolver(net, clock, max_minimise_steps=2)
    await ask(resolver, "www.example.test.")
    net.clear_log()
    assert values(await ask(resolver, "a.b.c.d.e.deep.example.test.")) == ["192.0.2.66"]
    assert net.names_sent() == [("deep.example.test.", "A"), ("e.deep.example.test.", "A"),
                                ("a.b.c.d.e.deep.example.test.", "A")]


# --- limits ---------------------------------------------------------------------------------------

async def test_query_budget_caps_an_ns_set_of_unresolvable_names(net: FakeNet, resolver: Resolver) -> None:
    """NXNSAttack: a delegation to many out-of-bailiwick names whose zones do not answer."""
    ns = "".join(f"nxns NS ns.sink{i}.example.\n" for i in range(40))
    add(net, "test.", ns)
    sinks = "".join(f"sink{i} NS ns.sink{i}\nns.sink{i} A 10.66.0.{i + 1}\n" for i in range(40))
    add(net, "example.", sinks)  # every sink's server is an address where nothing answers
    result = await ask(resolver, "www.nxns.test.")
    assert result.rcode == RCode.SERVFAIL
    assert len(net.log) <= ResolverSettings().max_queries_per_request
    assert len(net.log) >= ResolverSettings().max_queries_per_request - 3  # it did try, up to the cap


async def test_server_lookups_answered_from_the_cache_are_capped_too(net: FakeNet, resolver: Resolver) -> None:
    """From a review: once the names of a delegation to hundreds of unresolvable server names
    were cached (NXDOMAIN), every new name below it looked them all up again from the cache -
    no upstream query, so no budget spent - and held the event loop for seconds."""
    add(net, "test.", "".join(f"amp NS ns{i}.nowhere.example.\n" for i in range(150)))
    for name in ("a.amp.test.", "b.amp.test.", "c.amp.test."):
        trace: list[str] = []
        result = await resolver.resolve(N(name), RRType.A, trace=trace.append)
        assert result.rcode == RCode.SERVFAIL
        lookups = sum(1 for line in trace if "address of" in line)
        assert 0 < lookups <= resolver_module.MAX_SERVER_LOOKUPS, (name, lookups)


async def test_server_names_that_do_not_exist_end_the_lookups_early(net: FakeNet, resolver: Resolver) -> None:
    """NXNSAttack (Unbound's MAX_TARGET_NX): a delegation to many names that do not exist in a
    victim's zone. Seen from the hostile-server lab: one client query made ispd ask the victim's
    server 62 times (the budget's 64), Unbound 11. After a few such names the rest is given up."""
    add(net, "test.", "".join(f"nxns NS n{i}.victim.other.example.\n" for i in range(100)))
    result = await ask(resolver, "www.nxns.test.")
    assert result.rcode == RCode.SERVFAIL
    asked = len(net.to(OTHER))
    assert 0 < asked <= 2 * resolver_module.MAX_NONEXISTENT_SERVERS, net.sent()


async def test_query_budget_setting_is_honoured(net: FakeNet, clock: FakeClock) -> None:
    add(net, "test.", "".join(f"nxns NS ns.sink{i}.example.\n" for i in range(40)))
    add(net, "example.", "".join(f"sink{i} NS ns.sink{i}\nns.sink{i} A 10.66.0.{i + 1}\n" for i in range(40)))
    resolver = make_resolver(net, clock, max_queries_per_request=10)
    assert (await ask(resolver, "www.nxns.test.")).rcode == RCode.SERVFAIL
    assert len(net.log) <= 10


def _deep_delegations(net: FakeNet) -> None:
    """deep.test → d1.deep.test → d2.d1.deep.test → d3.d2.d1.deep.test, each on its own server."""
    add(net, "test.", "deep NS ns.deep\nns.deep A 10.8.0.1\n")
    names = ["deep.test.", "d1.deep.test.", "d2.d1.deep.test.", "d3.d2.d1.deep.test."]
    for i, origin in enumerate(names):
        text = f"$TTL 3600\n@ SOA ns hm 1 1 1 1 1\n@ NS ns\nns A 10.8.0.{i + 1}\n"
        if i + 1 < len(names):
            child = names[i + 1].split(".")[0]
            text += f"{child} NS ns.{child}\nns.{child} A 10.8.0.{i + 2}\n"
        else:
            text += "www A 192.0.2.88\n"
        net.serve(f"10.8.0.{i + 1}", load_zone_text(text, origin))


async def test_max_referrals(net: FakeNet, clock: FakeClock) -> None:
    _deep_delegations(net)
    name = "www.d3.d2.d1.deep.test."
    assert values(await ask(make_resolver(net, clock, qname_minimisation="off"), name)) == ["192.0.2.88"]
    limited = make_resolver(net, clock, qname_minimisation="off", max_referrals=4)
    result = await ask(limited, name)
    assert result.rcode == RCode.SERVFAIL
    assert result.failure == "too many referrals"


async def test_max_referrals_counts_referrals_not_minimised_queries(net: FakeNet, clock: FakeClock) -> None:
    """From a code read: every turn of the iteration counted as a referral, a minimised query
    too, so a name with more labels than max_referrals under a zone two referrals down was
    SERVFAIL "too many referrals" (an ip6.arpa name with max_referrals = 10)."""
    add(net, "example.test.", "a.b.c.d.e A 192.0.2.66\n")
    resolver = make_resolver(net, clock, max_referrals=3)  # root → test. → example.test.: 2
    assert values(await ask(resolver, "a.b.c.d.e.example.test.")) == ["192.0.2.66"]
    assert ("d.e.example.test.", "A") in net.names_sent()  # minimised all the way


async def test_ns_depth_limit(net: FakeNet, clock: FakeClock) -> None:
    """oob.test's server name lives in other.example: with no NS-name nesting allowed it
    cannot be found."""
    resolver = make_resolver(net, clock, max_ns_depth=0)
    assert (await ask(resolver, "www.oob.test.")).rcode == RCode.SERVFAIL
    assert all(name != "ns-oob.other.example." for name, _ in net.names_sent())


# --- anti-spoofing ------------------------------------------------------------------------------

INJECTED = RR(N("www.other.example."), RRType.A, CLASS_IN, 86400, a_rdata("6.6.6.6"))


async def test_records_outside_the_bailiwick_are_not_cached(net: FakeNet, resolver: Resolver, clock: FakeClock) -> None:
    def inject(query: Message, reply: Reply) -> Reply:
        reply.answer.append(INJECTED)
        reply.additional.append(INJECTED)
        reply.authority.append(RR(N("other.example."), RRType.NS, CLASS_IN, 86400, N("ns.evil.test.")))
        return reply

    for address in TEST:
        net.misbehave(address, handler=inject)
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert resolver.cache.get(N("www.other.example."), RRType.A, clock()) is None
    assert resolver.cache.get(N("other.example."), RRType.NS, clock()) is None
    net.clear_log()
    result = await ask(resolver, "www.other.example.")
    assert values(result) == ["192.0.2.10"]
    assert (OTHER, "www.other.example.", "A") in net.sent()


async def test_glue_outside_the_delegating_zone_is_ignored(net: FakeNet, resolver: Resolver, clock: FakeClock) -> None:
    def forged_glue(query: Message, reply: Reply) -> Reply:
        reply.additional.append(RR(N("ns-oob.other.example."), RRType.A, CLASS_IN, 86400, a_rdata("10.66.6.6")))
        return reply

    for address in TEST:
        net.misbehave(address, handler=forged_glue)
    net.serve("10.66.6.6", load_zone_text("@ SOA ns hm 1 1 1 1 1\n@ NS ns\nns A 10.66.6.6\nwww A 6.6.6.6\n",
                                          "oob.test."))
    assert values(await ask(resolver, "www.oob.test.")) == ["192.0.2.20"]
    assert net.to("10.66.6.6") == []
    ns = resolver.cache.get(N("ns-oob.other.example."), RRType.A, clock())
    assert ns is not None and ns.rdatas == (a_rdata(OOB),)


async def test_answer_records_off_the_chain_are_not_cached(net: FakeNet, resolver: Resolver, clock: FakeClock) -> None:
    """The parent's servers are in bailiwick for the child's names, but records in an answer that
    are not part of the answer to the question asked are dropped (Unbound's scrubber): before the
    fix, test.'s servers could plant www.example.test with the trust of an authoritative answer."""
    planted = RR(N("www.example.test."), RRType.A, CLASS_IN, 86400, a_rdata("6.6.6.6"))

    def plant(query: Message, reply: Reply) -> Reply:
        reply.answer.append(planted)
        return reply

    for address in TEST:
        net.misbehave(address, handler=plant)
    assert values(await ask(resolver, "ns1.nic.test.")) == [TEST_1]
    assert resolver.cache.get(N("www.example.test."), RRType.A, clock()) is None
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]


async def test_zero_x20_sends_mixed_case_and_asks_for_exact_matches(net: FakeNet, clock: FakeClock) -> None:
    resolver = make_resolver(net, clock, use_0x20=True)
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert all(q.exact_case for q in net.log)
    assert any(q.name != q.name.lower() for q in net.log)
    assert net.names_sent() == [(".", "NS"), ("test.", "A"), ("example.test.", "A"), ("www.example.test.", "A")]
    cached = resolver.cache.get(N("www.example.test."), RRType.A, clock())
    assert cached is not None and cached.name == N("www.example.test.")  # cached under the lowercased name


async def test_without_zero_x20_names_are_sent_lowercased(net: FakeNet, resolver: Resolver) -> None:
    await ask(resolver, "WWW.Example.TEST.")
    assert all(not q.exact_case and q.name == q.name.lower() for q in net.log)


class _Slow:
    """The fake network with a round trip that lets other resolutions run meanwhile."""

    def __init__(self, net: FakeNet) -> None:
        self.net = net

    async def exchange(self, address: str, query: bytes, **kwargs: Any) -> bytes:
        await asyncio.sleep(0.01)
        return await self.net.exchange(address, query, **kwargs)


async def test_identical_queries_in_flight_to_a_server_are_sent_once(net: FakeNet, clock: FakeClock) -> None:
    """RFC 5452 §5 (the birthday attack): each identical query outstanding is one more port and
    ID a forged reply may hit. Before the fix, 20 clients asking 20 names below www.example.test
    at once sent 20 identical minimised queries for it (and for test. and example.test), each
    with its own port and ID; a lab run had 40 outstanding at once, where Unbound had one."""
    resolver = make_resolver(net, clock, use_0x20=True)
    resolver.upstream = _Slow(net)
    results = await asyncio.gather(*(ask(resolver, f"n{i}.www.example.test.") for i in range(20)))
    assert {r.rcode for r in results} == {RCode.NXDOMAIN}
    sent = net.sent()
    for name in ("test.", "example.test.", "www.example.test."):  # once to any one server
        asked = [address for address, sent_name, _ in sent if sent_name == name]
        assert 1 <= len(asked) == len(set(asked)), sent
    assert resolver.upstream_queries == len(net.log)  # a query shared is not counted as sent


async def test_a_shared_timeout_counts_once_against_the_server(net: FakeNet, clock: FakeClock) -> None:
    resolver = make_resolver(net, clock)
    resolver.upstream = _Slow(net)
    await ask(resolver, "www.example.test.")
    for address in (EXAMPLE_TEST_1, EXAMPLE_TEST_2):
        net.misbehave(address, timeout=True)
    net.clear_log()
    results = await asyncio.gather(*(ask(resolver, "alias.example.test.", qtype) for qtype in
                                     (RRType.A, RRType.A, RRType.A)))
    assert {r.rcode for r in results} == {RCode.SERVFAIL}
    assert resolver.upstream_failures == {"timeout": len(net.log)}  # each query sent, once


async def test_glue_does_not_overwrite_a_fresh_authoritative_answer(net: FakeNet, resolver: Resolver,
                                                                    clock: FakeClock) -> None:
    add(net, "example.test.", "ns1 A 10.2.0.11\n")  # the child says two addresses, the parent's glue one
    result = await ask(resolver, "ns1.example.test.")
    assert sorted(values(result)) == [EXAMPLE_TEST_1, "10.2.0.11"]
    entry = resolver.cache.get(N("ns1.example.test."), RRType.A, clock())
    assert entry is not None and entry.trust == Trust.ANSWER
    resolver.cache.flush(N("example.test."))  # forget the delegation: the next name is referred again
    net.clear_log()
    assert values(await ask(resolver, "alias.example.test.")) == ["192.0.2.80"]
    assert any(address in TEST for address, _, _ in net.sent())  # the referral with its glue came again
    entry = resolver.cache.get(N("ns1.example.test."), RRType.A, clock())
    assert entry is not None and entry.trust == Trust.ANSWER and len(entry.rdatas) == 2


async def test_glue_is_not_handed_out_as_an_answer(net: FakeNet, resolver: Resolver, clock: FakeClock) -> None:
    """RFC 2181 §5.4.1: data from the additional section (glue) and a referral's NS set must not
    be returned as answers; a question for them goes to the zone's own servers. Before the fix the
    cache handed out the parent's glue (one address) instead of the child's answer (two)."""
    add(net, "example.test.", "ns1 A 10.2.0.11\n")
    await ask(resolver, "www.example.test.")  # caches test.'s glue for ns1.example.test
    net.clear_log()
    result = await ask(resolver, "ns1.example.test.")
    assert sorted(values(result)) == [EXAMPLE_TEST_1, "10.2.0.11"]
    assert len(net.log) == 1
    ns = await ask(resolver, "example.test.", RRType.NS)  # the child's NS set, not the referral's
    assert sorted(values(ns, RRType.NS)) == ["ns1.example.test.", "ns2.example.test."]
    entry = resolver.cache.get(N("example.test."), RRType.NS, clock())
    assert entry is not None and entry.trust == Trust.ANSWER


async def test_expired_glue_under_a_fresh_ns_set_asks_the_parent_again(net: FakeNet, resolver: Resolver,
                                                                       clock: FakeClock) -> None:
    """The glue of example.test's in-zone servers lives shorter than its NS set. Before the fix,
    once the glue had expired the NS set still led to example.test, whose servers could then not
    be found (their names are inside the zone): SERVFAIL until the NS set expired too."""
    test_zone = net.zone("test.")
    for name, address in (("ns1.example.test.", EXAMPLE_TEST_1), ("ns2.example.test.", EXAMPLE_TEST_2)):
        test_zone.replace_rrset(N(name), RRType.A, [RR(N(name), RRType.A, CLASS_IN, 60, a_rdata(address))])
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    clock.advance(120)
    assert resolver.cache.get(N("example.test."), RRType.NS, clock()) is not None
    assert resolver.cache.get(N("ns1.example.test."), RRType.A, clock()) is None
    result = await ask(resolver, "alias.example.test.")
    assert result.rcode == RCode.NOERROR, result.failure
    assert values(result) == ["192.0.2.80"]


# --- priming --------------------------------------------------------------------------------------

async def test_priming_happens_once_and_is_shared(net: FakeNet, resolver: Resolver) -> None:
    results = await asyncio.gather(*(ask(resolver, name) for name in
                                     ("www.example.test.", "www.other.example.", "www.lame.test.")))
    assert all(r.rcode == RCode.NOERROR for r in results)
    assert net.names_sent().count((".", "NS")) == 1
    assert net.names_sent()[0] == (".", "NS")
    net.clear_log()
    await ask(resolver, "www.dead.test.")
    assert (".", "NS") not in net.names_sent()


async def test_priming_failure_falls_back_to_the_hints(net: FakeNet, resolver: Resolver, clock: FakeClock) -> None:
    def no_ns(query: Message, reply: Reply) -> Reply | None:
        assert query.question is not None
        return None if query.question.qtype == RRType.NS else reply  # priming times out

    for address in ROOTS:
        net.misbehave(address, handler=no_ns)
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert resolver.cache.get(N("."), RRType.NS, clock()) is None
    net.clear_log()
    await ask(resolver, "www.other.example.")
    assert (".", "NS") not in net.names_sent()  # not again for a while


# --- addresses not to query ------------------------------------------------------------------------

EVIL_DELEGATION = """evil NS ns1.evil.test.
evil NS ns2.evil.test.
evil NS ns3.evil.test.
ns1.evil.test. A 127.0.0.1
ns2.evil.test. A 0.0.0.0
ns3.evil.test. AAAA ::ffff:127.0.0.1
"""


def serve_evil(net: FakeNet) -> None:
    """A zone anyone could register, naming this host as its servers three ways (all answer)."""
    add(net, "test.", EVIL_DELEGATION)
    zone = load_zone_text("@ SOA ns hm 1 1 1 1 1\n@ NS ns1\nwww A 192.0.2.66\n", "evil.test.")
    for address in ("127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1"):
        net.serve(address, zone)


async def test_a_delegation_to_this_host_is_not_followed(net: FakeNet, clock: FakeClock) -> None:
    serve_evil(net)
    trusting = make_resolver(net, clock, do_ipv6=True)
    assert values(await ask(trusting, "www.evil.test.")) == ["192.0.2.66"]  # what the zone wants
    resolver = make_resolver(net, clock, do_ipv6=True, do_not_query=LOCALHOST_NETWORKS)
    net.clear_log()
    lines: list[str] = []
    result = await resolver.resolve(N("www.evil.test."), RRType.A, trace=lines.append)
    assert result.rcode == RCode.SERVFAIL
    assert result.failure is not None and "do_not_query" in result.failure
    assert {address for address, _, _ in net.sent()}.isdisjoint({"127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1"})
    for address in ("127.0.0.1", "0.0.0.0", "::ffff:127.0.0.1"):
        assert f"not asking {address}: it is in do_not_query" in lines


async def test_addresses_the_operator_gave_are_asked_inside_do_not_query(net: FakeNet, clock: FakeClock) -> None:
    """The fake net is in 10.0.0.0/8: with that network not to be queried, the root hints and a
    forward zone's server (given by the operator) are asked, the servers the root refers to are not."""
    forwarder = "10.9.0.1"
    net.serve(forwarder, net.zone("other.example."))
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock,
                        settings(do_not_query=(IPv4Network("10.0.0.0/8"),)),
                        [ForwardZone(N("other.example."), (forwarder,), recursive=True)])
    assert values(await ask(resolver, "www.other.example.")) == ["192.0.2.10"]
    result = await ask(resolver, "www.example.test.")
    assert result.rcode == RCode.SERVFAIL
    assert {address for address, _, _ in net.sent()} <= {forwarder, ROOT_A, ROOT_B}
    assert net.to(ROOT_A) + net.to(ROOT_B)  # asked, and their referral to TEST_1/TEST_2 refused
    # A reload that no longer forbids 10/8 lets the referral through.
    resolver.configure(settings(), HINTS, [])
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]


def test_askable_addresses_cover_every_form_of_this_host() -> None:
    forbidden = (*LOCALHOST_NETWORKS, IPv4Network("10.0.0.0/8"))
    askable = AskableAddresses(ResolverSettings(do_ipv6=True, do_not_query=forbidden), ["127.0.0.53"])
    for address in ("192.0.2.1", "2001:db8::1", "127.0.0.53"):
        assert askable(address) and not askable.refused(address)
    for address in ("127.0.0.1", "127.1.2.3", "0.0.0.0", "0.1.2.3", "::1", "::", "::ffff:127.0.0.1",
                    "::ffff:192.0.2.1", "10.1.2.3"):
        assert not askable(address) and askable.refused(address), address
    # An operator's IPv4 network covers its IPv4-mapped IPv6 form too.
    only_inner = AskableAddresses(ResolverSettings(do_ipv6=True, do_not_query=(IPv4Network("10.0.0.0/8"),)), [])
    assert not only_inner("::ffff:10.1.2.3") and only_inner("::ffff:192.0.2.1") and only_inner("127.0.0.1")
    # A family not in use is no server, but not refused by do_not_query either.
    ipv4_only = AskableAddresses(ResolverSettings(do_ipv6=False, do_not_query=forbidden), [])
    assert not ipv4_only("2001:db8::1") and not ipv4_only.refused("2001:db8::1")


async def test_a_flood_of_new_names_under_one_zone_stops_at_its_rate_limit(net: FakeNet, clock: FakeClock) -> None:
    """Random-subdomain names under example.test: past 3 queries a second to its servers, the
    questions fail without a query; other zones are still resolved, and the next second
    example.test gets its 3 again. Its forwarded twin is not limited."""
    resolver = make_resolver(net, clock, qname_minimisation="off", zone_rate_limit_qps=3, zone_rate_limit_factor=0)
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]  # 1 query to example.test
    clock.advance(1 - clock() % 1)  # the start of a second
    net.clear_log()
    lines: list[str] = []
    results = [await resolver.resolve(N(f"r{i}.wild.example.test."), RRType.A, trace=lines.append) for i in range(10)]
    assert [r.rcode for r in results] == [RCode.NOERROR] * 3 + [RCode.SERVFAIL] * 7
    assert len(net.to(EXAMPLE_TEST_1) + net.to(EXAMPLE_TEST_2)) == 3
    assert results[-1].failure is not None and "rate limit" in results[-1].failure
    assert "not asking the servers of example.test.: over its rate limit" in lines
    assert resolver.zone_limiter.limited == 7
    assert resolver.zone_limiter.take_newly_limited() == {N("example.test."): 3}
    assert values(await ask(resolver, "www.other.example.")) == ["192.0.2.10"]
    clock.advance(1)
    assert values(await ask(resolver, "r99.wild.example.test.")) == ["192.0.2.99"]

    forwarding = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock,
                          settings(zone_rate_limit_qps=1, zone_rate_limit_factor=0),
                          [ForwardZone(N("example.test."), (EXAMPLE_TEST_1,), recursive=True)])
    forwarded = [await ask(forwarding, f"f{i}.wild.example.test.") for i in range(5)]
    assert [values(r) for r in forwarded] == [["192.0.2.99"]] * 5


# --- rebinding protection ---------------------------------------------------------------------------

REBINDING_RECORDS = """rebind A 192.168.1.1
mixed A 192.168.1.1
mixed A 192.0.2.5
mapped AAAA ::ffff:192.168.3.3
lan A 172.16.0.7
"""
PRIVATE = (IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))  # (the fake net is in 10/8)


async def test_private_addresses_are_dropped_from_public_answers(net: FakeNet, clock: FakeClock) -> None:
    add(net, "example.test.", REBINDING_RECORDS)
    resolver = make_resolver(net, clock, do_ipv6=True, private_addresses=PRIVATE)
    rebind = await ask(resolver, "rebind.example.test.")
    assert rebind.rcode == RCode.NOERROR and rebind.answer == []  # no address, no failure
    assert values(await ask(resolver, "mixed.example.test.")) == ["192.0.2.5"]  # the public one stays
    assert values(await ask(resolver, "mapped.example.test.", RRType.AAAA), RRType.AAAA) == []
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert resolver.guard.removed == 3
    assert resolver.cache.get(N("rebind.example.test."), RRType.A, clock()) is None  # never cached
    lines: list[str] = []
    await resolver.resolve(N("lan.example.test."), RRType.A, trace=lines.append)
    assert any("1 private address(es) dropped (private_addresses)" in line for line in lines), lines


async def test_private_domains_and_forward_zones_keep_their_private_addresses(net: FakeNet, clock: FakeClock) -> None:
    add(net, "example.test.", REBINDING_RECORDS)
    add(net, "other.example.", "intranet A 172.16.9.9\n")
    forwarder = "10.9.0.1"
    net.serve(forwarder, net.zone("other.example."))
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock,
                        settings(private_addresses=PRIVATE, private_domains=(N("mixed.example.test."),)),
                        [ForwardZone(N("other.example."), (forwarder,), recursive=True)])
    assert sorted(values(await ask(resolver, "mixed.example.test."))) == ["192.0.2.5", "192.168.1.1"]
    assert values(await ask(resolver, "intranet.other.example.")) == ["172.16.9.9"]
    assert values(await ask(resolver, "rebind.example.test.")) == []
    # A reload that drops the setting lets the next answers through (the count goes on).
    resolver.configure(settings(), HINTS, [])
    resolver.cache.flush(N("example.test."), subtree=True)
    assert values(await ask(resolver, "rebind.example.test.")) == ["192.168.1.1"]
    assert resolver.guard.removed == 1


async def test_forwarding_everything_does_not_exempt_every_name(net: FakeNet, clock: FakeClock) -> None:
    """A forward zone "." (all questions to an ISP's upstream or a public resolver) is the
    public tree, as for NSEC synthesis: its names get no private addresses, while a forward
    zone below it keeps its own; and a reload that turns the protection on (or narrows
    private_domains) does not leave what the cache learnt without it to be answered."""
    add(net, "example.test.", REBINDING_RECORDS)
    forwarder, internal = "10.9.0.1", "10.9.0.2"
    net.serve(forwarder, net.zone("example.test."))
    add(net, "other.example.", "intranet A 172.16.9.9\n")
    net.serve(internal, net.zone("other.example."))
    zones = [ForwardZone(ROOT, (forwarder,), recursive=True), ForwardZone(N("other.example."), (internal,),
                                                                          recursive=True)]
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock, settings(), zones)
    assert values(await ask(resolver, "rebind.example.test.")) == ["192.168.1.1"]  # (no protection yet)
    resolver.configure(settings(private_addresses=PRIVATE), HINTS, zones)
    assert values(await ask(resolver, "rebind.example.test.")) == []
    assert values(await ask(resolver, "mixed.example.test.")) == ["192.0.2.5"]
    assert values(await ask(resolver, "intranet.other.example.")) == ["172.16.9.9"]
    assert resolver.guard.removed == 2


async def test_an_upstream_aaaa_under_the_dns64_prefix_is_judged_by_its_ipv4_address(net: FakeNet,
                                                                                   clock: FakeClock) -> None:
    add(net, "example.test.", "nat AAAA 2001:db8:64::ac10:1\nnat AAAA 2001:db8:64::c000:201\n")
    resolver = make_resolver(net, clock, do_ipv6=True, private_addresses=PRIVATE,
                             nat64_prefix=IPv6Network("2001:db8:64::/96"))
    assert values(await ask(resolver, "nat.example.test.", RRType.AAAA), RRType.AAAA) == ["2001:db8:64::c000:201"]


async def test_glue_with_private_addresses_is_dropped(net: FakeNet, clock: FakeClock) -> None:
    """The fake net's servers are in 10.0.0.0/8: with that network private, the root's referral
    glue is dropped and test. cannot be reached (its servers are named inside it)."""
    resolver = make_resolver(net, clock, private_addresses=(IPv4Network("10.0.0.0/8"),))
    result = await ask(resolver, "www.example.test.")
    assert result.rcode == RCode.SERVFAIL
    assert net.to(TEST_1) == net.to(TEST_2) == []
    assert resolver.guard.removed > 0


# --- forward zones ----------------------------------------------------------------------------------

async def test_forward_zone_asks_its_forwarder_with_rd(net: FakeNet, clock: FakeClock) -> None:
    forwarder = "10.9.0.1"
    net.serve(forwarder, net.zone("example.test."))
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock, settings(),
                        [ForwardZone(N("example.test."), (forwarder,), recursive=True)])
    result = await ask(resolver, "www.example.test.")
    assert values(result) == ["192.0.2.80"]
    assert [(q.address, q.text, q.rd) for q in net.log] == [(forwarder, "www.example.test.", True)]
    entry = resolver.cache.get(N("www.example.test."), RRType.A, clock())
    assert entry is not None and entry.trust == Trust.ANSWER - 1  # FORWARDED


@pytest.mark.parametrize("failure", ["timeout", "unreachable"])
async def test_forward_first_iterates_when_the_forwarders_fail_and_then_skips_them(
        net: FakeNet, clock: FakeClock, failure: str) -> None:
    """Unbound's forward-first: a forward zone ("." here) whose forwarders do not answer is
    resolved from the root; forwarders that timed out again and again are skipped for a while
    (a probe now and then), not waited for by every new name."""
    forwarder = "10.9.0.1"
    net.misbehave(forwarder, **{failure: True})
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock, settings(),
                        [ForwardZone(ROOT, (forwarder,), recursive=True, first=True)])
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert net.to(forwarder) and any(q.address != forwarder for q in net.log)
    for name in ("www.other.example.", "a.b.ent.example.test.", "x.wild.example.test."):
        assert values(await ask(resolver, name))  # (once each: down after 3 timeouts, then probed once)
    assert len(net.to(forwarder)) == 4
    asked_before = len(net.to(forwarder))
    for name in ("a.other.example.", "alias.example.test."):
        assert values(await ask(resolver, name))
    assert len(net.to(forwarder)) == asked_before  # down: not asked until a probe is due
    clock.advance(PROBE_INTERVAL + 1)  # (still within server_down_seconds)
    assert values(await ask(resolver, "chain.example.test."))
    assert len(net.to(forwarder)) == asked_before + 1  # the probe
    # Without first: the forwarder's failure is the answer.
    plain = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock, settings(),
                     [ForwardZone(ROOT, (forwarder,), recursive=True)])
    assert (await ask(plain, "www.example.test.")).rcode == RCode.SERVFAIL


async def test_a_forwarder_slow_on_a_name_it_must_resolve_is_waited_for(net: FakeNet, clock: FakeClock) -> None:
    """A recursive server answers the names it has cached in a millisecond and takes 300 ms on
    one it must resolve itself. Before the fix ispd waited 50 ms twice (the RTO of a 1 ms
    server, its doubling lost under the 50 ms floor) and gave SERVFAIL, the name failing for
    every client while Unbound answered it in 300 ms."""
    forwarder = "10.9.0.1"
    net.serve(forwarder, net.zone("example.test."))
    net.misbehave(forwarder, latency=0.001)

    class SlowOnNewNames:
        async def exchange(self, address: str, query: bytes, *, tcp: bool, wait: float, exact_case: bool,
                           zone: bytes = b"") -> bytes:
            question = decode_message(query).question
            if address == forwarder and question is not None and question.key_name.startswith(b"\x04slow"):
                if wait < 0.3:
                    net.log.append(SentQuery(address, question.name, question.qtype, tcp, True, exact_case, True))
                    clock.advance(wait)
                    raise UpstreamError("timeout", f"{address}: no reply in {wait:.2f} s")
                clock.advance(0.3)
            return await net.exchange(address, query, tcp=tcp, wait=wait, exact_case=exact_case, zone=zone)

    resolver = Resolver(RRsetCache(CacheLimits()), SlowOnNewNames(), HINTS, clock, settings(),
                        [ForwardZone(N("example.test."), (forwarder,), recursive=True)])
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]  # measured at 1 ms
    started = clock()
    result = await ask(resolver, "slow.example.test.")
    assert result.rcode == RCode.NXDOMAIN, result
    assert clock() - started < 1.0
    assert [q.text for q in net.to(forwarder)].count("slow.example.test.") == 4  # 50, 100, 200 ms, then 400


async def test_forward_first_takes_a_forwarders_answer_as_it_is(net: FakeNet, clock: FakeClock) -> None:
    forwarder = "10.9.0.1"
    net.serve(forwarder, net.zone("example.test."))
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock, settings(),
                        [ForwardZone(N("example.test."), (forwarder,), recursive=True, first=True)])
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert (await ask(resolver, "nothere.example.test.")).rcode == RCode.NXDOMAIN  # an answer: not iterated
    assert {q.address for q in net.log} == {forwarder}


async def test_a_forwarders_refusal_of_one_name_does_not_fail_the_others(net: FakeNet, clock: FakeClock) -> None:
    """A recursive server refuses names its own policy blocks (dnsdist, DNS filters): that is
    about the one question. Before the fix the forwarder was marked lame for the forward zone
    (here ".") and every other name of the type got SERVFAIL, unasked, for 15 minutes."""
    forwarder = "10.9.0.1"
    net.serve(forwarder, net.zone("example.test."))

    def refuse_blocked(query: Message, reply: Reply) -> Reply:
        assert query.question is not None
        return Reply(RCode.REFUSED, False) if query.question.key_name == N("blocked.example.test.") else reply
    net.misbehave(forwarder, handler=refuse_blocked)
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock, settings(),
                        [ForwardZone(ROOT, (forwarder,), recursive=True)])
    assert (await ask(resolver, "blocked.example.test.")).rcode == RCode.SERVFAIL
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert net.to(forwarder)[-1].text == "www.example.test."


async def test_stub_zone_iterates_from_its_servers(net: FakeNet, clock: FakeClock) -> None:
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock, settings(),
                        [ForwardZone(N("example.test."), (EXAMPLE_TEST_2,), recursive=False)])
    result = await ask(resolver, "www.example.test.")
    assert values(result) == ["192.0.2.80"]
    assert [(q.address, q.text, q.rd) for q in net.log] == [(EXAMPLE_TEST_2, "www.example.test.", False)]


async def test_priming_learns_the_root_servers_addresses(net: FakeNet, clock: FakeClock, first_choice: None) -> None:
    """RFC 8109: priming is there to learn the root servers' current addresses. Here the hints
    know b.root-servers.net by an old address; the root's priming answer gives the new one
    (ROOT_B) in its additional section. Once a.root stops answering, only that learned address
    reaches the root. Before the fix the priming answer's additional section was dropped and the
    hints' addresses were used for ever."""
    old_hints = [(N("a.root-servers.net."), [ROOT_A]), (N("b.root-servers.net."), ["10.0.0.98"])]
    resolver = Resolver(RRsetCache(CacheLimits()), net, old_hints, clock, settings())
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]
    assert net.sent()[0] == (ROOT_A, ".", "NS")
    b_root = resolver.cache.get(N("b.root-servers.net."), RRType.A, clock())
    assert b_root is not None and b_root.rdatas == (a_rdata(ROOT_B),) and b_root.trust == Trust.GLUE
    net.misbehave(ROOT_A, timeout=True)
    net.clear_log()
    assert values(await ask(resolver, "www.other.example.")) == ["192.0.2.10"]
    assert net.to("10.0.0.98") == []
    assert [q.text for q in net.to(ROOT_B)] == ["example."]


async def test_ns_answer_caches_the_servers_addresses_only_inside_the_bailiwick(net: FakeNet, resolver: Resolver,
                                                                               clock: FakeClock) -> None:
    forged = RR(N("www.other.example."), RRType.A, CLASS_IN, 86400, a_rdata("6.6.6.6"))

    def extra(query: Message, reply: Reply) -> Reply:
        reply.additional.append(forged)
        reply.additional.append(RR(N("ns1.example.test."), RRType.A, CLASS_IN, 3600, a_rdata(EXAMPLE_TEST_1)))
        return reply

    for address in EXAMPLE_TEST:
        net.misbehave(address, handler=extra)
    ns = await ask(resolver, "example.test.", RRType.NS)
    assert sorted(values(ns, RRType.NS)) == ["ns1.example.test.", "ns2.example.test."]
    assert resolver.cache.get(N("www.other.example."), RRType.A, clock()) is None


async def test_retries_over_tcp_spend_the_query_budget(net: FakeNet, clock: FakeClock) -> None:
    """A retry over TCP (or without EDNS) is an upstream query too: before the fix the budget
    counted only the first of each server's up to three exchanges."""
    for address in list(net.servers):
        net.misbehave(address, always_tc=True)
    resolver = make_resolver(net, clock, max_queries_per_request=4)
    result = await ask(resolver, "www.example.test.")
    assert result.rcode == RCode.SERVFAIL
    assert len(net.log) <= 4
    assert values(await ask(make_resolver(net, clock), "www.example.test.")) == ["192.0.2.80"]  # enough budget


async def test_a_passing_servfail_does_not_write_the_servers_off(net: FakeNet, resolver: Resolver) -> None:
    """SERVFAIL is often transient (a reload, the server's own upstream): the next query asks the
    same servers again instead of treating them as lame for the zone."""
    failing = {"on": True}

    def servfail_while_on(query: Message, reply: Reply) -> Reply:
        return Reply(RCode.SERVFAIL, False) if failing["on"] else reply

    for address in EXAMPLE_TEST:
        net.misbehave(address, handler=servfail_while_on)
    assert (await ask(resolver, "www.example.test.")).rcode == RCode.SERVFAIL
    failing["on"] = False
    assert values(await ask(resolver, "alias.example.test.")) == values(await ask(resolver, "www.example.test."))
    assert values(await ask(resolver, "www.example.test.")) != []


async def test_forward_first_the_validators_questions_do_not_wait_for_failed_forwarders_again(
        net: FakeNet, clock: FakeClock) -> None:
    """Once the forwarders failed a client question, the DS and DNSKEY questions the validator
    asks for it (each with a budget of its own) went to them again, a timeout each: the first
    questions after a forwarder died did not fit in the request timeout."""
    forwarder = "10.9.0.1"
    net.misbehave(forwarder, timeout=True)
    resolver = Resolver(RRsetCache(CacheLimits()), net, HINTS, clock, settings(),
                        [ForwardZone(ROOT, (forwarder,), recursive=True, first=True)])

    async def fetch(name: bytes, rtype: int) -> Resolution:
        return await resolver.resolve(name, rtype, validate=False, past_limit=True)

    root_ds = ". IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D\n"
    resolver.validator = Validator(parse_trust_anchors(root_ds), fetch, resolver.cache, clock)
    await ask(resolver, "www.example.test.")  # (bogus here: the test hierarchy is not signed)
    assert len(net.to(forwarder)) == 1
    assert any(q.qtype == RRType.DNSKEY for q in net.log)  # the validator did ask, from the root down


async def test_relaxed_minimisation_falls_back_when_its_timeouts_took_the_servers_down(net: FakeNet,
                                                                                      resolver: Resolver) -> None:
    """From a review: the minimised queries' timeouts counted against the servers for type A (the
    type a minimised name is asked with). Questions of another type, whose own answers clear
    nothing of A's, took every server of the zone down for A after two: the next minimised
    query found none up and no probe due, and that (no minimised error) was the answer,
    SERVFAIL where the full name is answered; and every A question of the zone SERVFAILed too
    until a probe came through, as the relaxed fallback was meant to end."""
    _drop_empty_non_terminals(net)
    for _ in range(4):
        resolver.cache.flush(name_from_text("ent.example.test."), subtree=True)
        result = await ask(resolver, "a.b.ent.example.test.", RRType.AAAA)
        assert result.rcode == RCode.NOERROR and result.answer == []  # a.b.ent has only an A
    assert values(await ask(resolver, "www.example.test.")) == ["192.0.2.80"]


async def test_relaxed_minimisation_still_sets_a_dead_parent_server_aside(clock: FakeClock, first_choice: None) -> None:
    """From a second review: since a minimised name's timeout counted for nothing in the relaxed
    mode, a dead server of a parent zone (a TLD's, the root's), which is asked minimised names
    only (the full name goes to the child's servers), was never set aside: each new child zone
    cost a wait for it, name after name (before, three timeouts set it aside for
    server_down_seconds). The timeouts count for the server again, only not against the type of
    question, whose being down stopped the full name's fallback."""
    from tests.dns.fakenet import ROOT_ZONE

    net = FakeNet(clock)
    root = load_zone_text(ROOT_ZONE, ".")
    net.serve(ROOT_A, root)
    net.serve(ROOT_B, root)
    children = [f"c{i}" for i in range(8)]
    delegations = "\n".join(f"{c} NS ns.{c}.test.\nns.{c} A 10.8.0.{i + 1}" for i, c in enumerate(children))
    tld = load_zone_text(f"""
$ORIGIN test.
$TTL 3600
@        SOA ns1.nic.test. hostmaster.nic.test. 1 7200 900 1209600 900
@        NS  ns1.nic.test.
@        NS  ns2.nic.test.
ns1.nic  A   {TEST_1}
ns2.nic  A   {TEST_2}
{delegations}
""", "test.")
    net.serve(TEST_1, tld)
    net.serve(TEST_2, tld)
    net.misbehave(TEST_1, timeout=True)
    for i, child in enumerate(children):
        net.serve(f"10.8.0.{i + 1}", load_zone_text(f"""
$ORIGIN {child}.test.
$TTL 3600
@    SOA ns hostmaster 1 7200 900 1209600 300
@    NS  ns
ns   A   10.8.0.{i + 1}
www  A   192.0.2.{i + 1}
""", f"{child}.test."))
    resolver = make_resolver(net, clock)
    assert resolver.settings.qname_minimisation == "relaxed"
    for i, child in enumerate(children):
        assert values(await ask(resolver, f"www.{child}.test.")) == [f"192.0.2.{i + 1}"]
    assert {q.text for q in net.to(TEST_1)} <= {f"{c}.test." for c in children}  # (minimised names only)
    # Out of the band after its first timeout, while TEST_2 answers (ServerState.failed_at).
    assert len(net.to(TEST_1)) == 1


def test_a_stale_answer_is_not_cut_to_ttl_0_by_an_entry_past_its_window_it_was_not_made_of() -> None:
    """From a review: the stale window's rest was taken over every expired entry under the
    chain's names, those past their window too, which lie in the cache until evicted and were
    not used: an NXDOMAIN held for www before it became a CNAME made the stale answer TTL 0."""
    clock = FakeClock()
    cache = RRsetCache(CacheLimits(stale_seconds=600))
    resolver = Resolver(cache, standard_net(clock), HINTS, clock, settings())
    www, target = N("www.example.test."), N("target.example.test.")
    cache.put_negative(www, RRType.A, NegativeKind.NXDOMAIN, None, clock())  # 5 s
    clock.advance(700)  # past its window: never served again
    cache.put(www, RRType.CNAME, 60, (target,), Trust.ANSWER, clock())
    cache.put(target, RRType.A, 60, (bytes([192, 0, 2, 80]),), Trust.ANSWER, clock())
    clock.advance(100)  # both expired, 560 s left of their window
    stale = resolver.stale_resolution(www, RRType.A, 30)
    assert stale is not None and [rr.ttl for rr in stale.answer] == [30, 30]


def test_a_stale_answer_through_a_dname_is_kept_no_longer_than_the_dnames_window() -> None:
    """From a review: the DNAME above the name, whose stale window ends first, was not counted."""
    clock = FakeClock()
    cache = RRsetCache(CacheLimits(stale_seconds=600))
    resolver = Resolver(cache, standard_net(clock), HINTS, clock, settings())
    old, new = N("old.example.test."), N("new.example.test.")
    cache.put(old, RRType.DNAME, 10, (new,), Trust.ANSWER, clock())
    clock.advance(500)
    cache.put(N("www.new.example.test."), RRType.A, 60, (bytes([192, 0, 2, 80]),), Trust.ANSWER, clock())
    clock.advance(100)  # the DNAME has 10 s left of its window, the A record 560 s
    stale = resolver.stale_resolution(N("www.old.example.test."), RRType.A, 30)
    assert stale is not None and stale.answer and all(rr.ttl <= 10 for rr in stale.answer)


async def test_an_exchange_no_other_resolution_shares_runs_in_the_resolution_s_task(
        net: FakeNet, clock: FakeClock) -> None:
    """From a review: sharing identical queries made every upstream exchange a task of its own
    behind a shield, on every cache miss, for the rare case that another resolution joins it
    (the engine runs the common miss in the client's task for that very cost)."""
    resolver = make_resolver(net, clock)
    await ask(resolver, "www.example.test.")  # primed (the priming query has a task of its own)
    tasks: set[asyncio.Task[Any] | None] = set()

    class Recording:
        async def exchange(self, address: str, query: bytes, **kwargs: Any) -> bytes:
            tasks.add(asyncio.current_task())
            return await net.exchange(address, query, **kwargs)

    resolver.upstream = Recording()
    task = asyncio.ensure_future(ask(resolver, "alias.example.test."))
    assert (await task).rcode == RCode.NOERROR
    assert tasks == {task}


async def test_a_shared_exchange_given_up_by_its_sender_is_sent_again_by_who_waits(
        net: FakeNet, clock: FakeClock) -> None:
    """The sender's resolution is cancelled (its request timeout): its exchange goes with it
    (no socket kept for nobody), and a resolution that joined it sends the query itself."""
    resolver = make_resolver(net, clock)
    await ask(resolver, "www.example.test.")  # the delegations cached
    cancelled = []

    class Slow:
        async def exchange(self, address: str, query: bytes, **kwargs: Any) -> bytes:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                cancelled.append(address)
                raise
            return await net.exchange(address, query, **kwargs)

    resolver.upstream = Slow()
    first = asyncio.ensure_future(ask(resolver, "alias.example.test."))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(ask(resolver, "alias.example.test."))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0)
    assert len(cancelled) == 1  # the sender's exchange went with it
    assert (await second).rcode == RCode.NOERROR
