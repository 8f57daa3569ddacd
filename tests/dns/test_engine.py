"""Answering clients: DNSEngine over a Resolver on the fake network, with a fake clock."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest
from structlog.testing import capture_logs

from ispd.dns.cache import AnswerCache, CacheLimits, RRsetCache
from ispd.dns.config import WalledGardenConfig
from ispd.dns.dns64 import DNS64
from ispd.dns.engine import FAILURE_CACHE_SECONDS, STALE_RECHECK_SECONDS, DNSEngine, RateLimiter
from ispd.dns.localdata import LocalData
from ispd.dns.policy import Policy, PolicyAction, compile_policy_zone
from ispd.dns.resolver import OUT_OF_SOCKETS, ForwardZone, Resolution, Resolver, ResolverSettings, UpstreamError
from ispd.dns.walledgarden import WalledGarden
from ispd.dns.wire import (
    CLASS_CH,
    CLASS_IN,
    EDNS_DO,
    FLAG_AA,
    FLAG_AD,
    FLAG_CD,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    HEADER,
    RR,
    Message,
    Question,
    RCode,
    RRType,
    decode_message,
    encode_query,
    key_of,
    name_from_labels,
    name_from_text,
)
from ispd.dns.zone import load_zone_text
from tests.dns.fakenet import (
    EXAMPLE_TEST_1,
    EXAMPLE_TEST_2,
    HINTS,
    OTHER,
    TEST_1,
    TEST_2,
    FakeClock,
    FakeNet,
    Reply,
    settings,
    standard_net,
)

N = name_from_text
CLIENT = "192.168.1.10"
OTHER_CLIENT = "192.168.1.11"
OUTSIDER = "203.0.113.5"


@dataclass
class Env:
    clock: FakeClock
    net: FakeNet
    resolver: Resolver
    answers: AnswerCache
    engine: DNSEngine

    async def ask(self, data: bytes, client: str = CLIENT, *, tcp: bool = False) -> bytes | None:
        return await self.engine.answer(data, client, tcp=tcp)

    async def ask_message(self, data: bytes, client: str = CLIENT, *, tcp: bool = False) -> Message:
        reply = await self.ask(data, client, tcp=tcp)
        assert reply is not None
        return decode_message(reply)

    def fast(self, data: bytes, client: str = CLIENT, *, tcp: bool = False) -> bytes | None:
        return self.engine.answer_from_cache(data, client, tcp)


def make_env(*, rate_limit_qps: int = 0, stale_seconds: int = 86400, prefetch: bool = True,
             limits: CacheLimits | None = None, resolver_settings: ResolverSettings | None = None,
             forward_zones: list[ForwardZone] | None = None) -> Env:
    clock = FakeClock()
    net = standard_net(clock)
    limits = limits or CacheLimits(stale_seconds=stale_seconds)
    resolver = Resolver(RRsetCache(limits), net, HINTS, clock, resolver_settings or settings(), forward_zones)
    answers = AnswerCache(limits, prefetch=prefetch)
    engine = DNSEngine(resolver, answers, clock, allow=[ip_network("192.168.0.0/16"), ip_network("::1/128")],
                       rate_limit_qps=rate_limit_qps)
    return Env(clock, net, resolver, answers, engine)


@pytest.fixture
def env() -> Env:
    return make_env()


def cased(text: str) -> bytes:
    """A wire name keeping the case written (``name_from_text`` lowercases)."""
    return name_from_labels([label.encode() for label in text.rstrip(".").split(".") if label])


def query(name: str, qtype: int = RRType.A, *, msg_id: int = 0x1234, edns: int | None = None, do: bool = False,
          rd: bool = True, cd: bool = False, qclass: int = CLASS_IN) -> bytes:
    return encode_query(msg_id, cased(name), qtype, qclass, rd=rd, cd=cd, udp_size=edns, do=do)


def addresses(message: Message) -> list[str]:
    return [str(IPv4Address(rr.rdata)) for rr in message.answer if rr.rtype == RRType.A]


def without_ttls(message: Message) -> Message:
    """A copy of ``message`` with every TTL 0, to compare replies of different ages."""
    return replace(message, answer=[replace(rr, ttl=0) for rr in message.answer],
                   authority=[replace(rr, ttl=0) for rr in message.authority])


async def test_answers_keep_to_the_caches_ttl_limits() -> None:
    """From two reviews: max_ttl, min_ttl and max_negative_ttl held for the RRset cache only;
    clients got (and the answer cache kept) the upstream TTLs - 2^31 - 1 s, for a record that
    changed."""
    env = make_env(limits=CacheLimits(min_ttl=60, max_ttl=1000, max_negative_ttl=25, stale_seconds=0))
    www = await env.ask_message(query("www.example.test."))
    assert [rr.ttl for rr in www.answer] == [1000]  # 3600 upstream
    nx = await env.ask_message(query("nothere.example.test."))
    assert nx.rcode == RCode.NXDOMAIN and [rr.ttl for rr in nx.authority] == [25]  # MINIMUM 300 upstream
    env.net.zone("example.test.").add(_record("short.example.test.", RRType.A, bytes([192, 0, 2, 5]), ttl=5))
    assert [rr.ttl for rr in (await env.ask_message(query("short.example.test."))).answer] == [60]
    env.net.clear_log()
    env.clock.advance(26)
    await env.ask_message(query("nothere.example.test."))
    assert ("nothere.example.test.", "A") in env.net.names_sent()  # not kept past max_negative_ttl
    env.clock.advance(1000)
    await env.ask_message(query("www.example.test."))
    assert ("www.example.test.", "A") in env.net.names_sent()


# --- refusals and errors ----------------------------------------------------------------------------

async def test_refused_for_a_client_outside_allow(env: Env) -> None:
    reply = await env.ask_message(query("www.example.test."), OUTSIDER)
    assert reply.rcode == RCode.REFUSED
    assert reply.flags & FLAG_QR and reply.id == 0x1234
    assert env.net.log == []
    assert env.engine.stats.refused_clients == 1
    assert env.fast(query("www.example.test."), OUTSIDER) is None
    assert reply.edns is None
    # A query with an OPT gets one back (RFC 6891 §7), still without parsing more of it.
    with_edns = await env.ask_message(query("www.example.test.", edns=4096, do=True), OUTSIDER)
    assert with_edns.rcode == RCode.REFUSED and with_edns.edns is not None and with_edns.edns.udp_size == 1232


async def test_ipv4_mapped_and_scoped_client_addresses(env: Env) -> None:
    assert (await env.ask_message(query("www.example.test."), "::ffff:192.168.1.10")).rcode == RCode.NOERROR
    assert (await env.ask_message(query("www.example.test."), "::1%lo")).rcode == RCode.NOERROR
    assert (await env.ask_message(query("www.example.test."), "not an address")).rcode == RCode.REFUSED


async def test_formerr_for_garbage_with_a_header(env: Env) -> None:
    garbage = HEADER.pack(0x4321, FLAG_RD, 1, 0, 0, 0) + b"\x03www\xff\xff"
    reply = await env.ask_message(garbage)
    assert reply.id == 0x4321
    assert reply.rcode == RCode.FORMERR
    assert reply.flags & FLAG_QR and reply.flags & FLAG_RD
    assert env.engine.stats.malformed == 1
    assert await env.ask(b"\x12\x34\x00") is None  # not even a header: nothing to answer


async def test_no_reply_to_a_response(env: Env) -> None:
    response = bytearray(query("www.example.test."))
    response[2] |= FLAG_QR >> 8
    assert await env.ask(bytes(response)) is None
    assert await env.ask(bytes(response[:14])) is None  # a broken response neither
    assert await env.ask(bytes(response), OUTSIDER) is None
    assert env.fast(bytes(response)) is None
    assert env.net.log == []


@pytest.mark.parametrize("opcode", [1, 2, 4, 5])
async def test_notimp_for_opcodes_other_than_query(env: Env, opcode: int) -> None:
    data = bytearray(query("www.example.test."))
    data[2] |= opcode << 3
    reply = await env.ask_message(bytes(data))
    assert reply.rcode == RCode.NOTIMP
    assert reply.opcode == opcode
    assert env.net.log == []


async def test_badvers_for_edns_version_1(env: Env) -> None:
    base = query("www.example.test.")
    opt = b"\x00" + struct.pack("!HHIH", RRType.OPT, 1232, (1 << 16) | EDNS_DO, 0)
    data = base[:11] + b"\x01" + base[12:] + opt
    assert env.fast(data) is None
    reply = await env.ask_message(data)
    assert reply.rcode == RCode.BADVERS  # 16: the upper bits in the OPT
    assert reply.flags & 0xF == 0
    assert reply.edns is not None and reply.edns.version == 0 and reply.edns.do
    assert env.net.log == []
    # Counted as what it is (ispd_dns_answers_total{rcode="other"}), not as a NOERROR.
    assert env.engine.rcodes[RCode.BADVERS] == 1
    assert env.engine.rcodes[RCode.NOERROR] == 0


@pytest.mark.parametrize(
    ("qtype", "qclass"),
    [(RRType.TXT, CLASS_CH), (RRType.A, 255), (RRType.AXFR, CLASS_IN), (RRType.IXFR, CLASS_IN),
     (RRType.TSIG, CLASS_IN), (RRType.TKEY, CLASS_IN)],
)
async def test_refused_for_other_classes_and_zone_transfers(env: Env, qtype: int, qclass: int) -> None:
    reply = await env.ask_message(query("version.bind.", qtype, qclass=qclass))
    assert reply.rcode == RCode.REFUSED
    assert env.net.log == []


async def test_formerr_for_a_query_without_a_question(env: Env) -> None:
    reply = await env.ask_message(HEADER.pack(9, 0, 0, 0, 0, 0))
    assert reply.rcode == RCode.FORMERR


async def test_every_query_that_parsed_is_counted_by_type_however_it_is_answered(env: Env) -> None:
    """ispd_dns_queries_total (Unbound's num.query.type.*) counts the queries answered REFUSED for
    their class or type, NOTIMP or BADVERS too: they are answered (ispd_dns_answers_total) and
    not dropped, so they were counted nowhere else; the malformed and those of clients outside
    allow are ispd_dns_dropped_total's."""
    notify = bytearray(query("www.example.test."))
    notify[2] |= 4 << 3
    base = query("www.example.test.", RRType.MX)
    badvers = base[:11] + b"\x01" + base[12:] + b"\x00" + struct.pack("!HHIH", RRType.OPT, 1232, 1 << 16, 0)
    for data in (query("version.bind.", RRType.TXT, qclass=CLASS_CH), query("example.test.", RRType.AXFR),
                 bytes(notify), badvers):
        assert (await env.ask_message(data)).rcode != RCode.NOERROR
    assert env.engine.qtypes == {RRType.TXT: 1, RRType.AXFR: 1, RRType.A: 1, RRType.MX: 1}
    await env.ask_message(query("www.example.test."), OUTSIDER)
    await env.ask_message(HEADER.pack(0x4321, FLAG_RD, 1, 0, 0, 0) + b"\x03www\xff\xff")
    assert sum(env.engine.qtypes.values()) == 4
    assert env.engine.stats.refused_clients == 1 and env.engine.stats.malformed == 1


# --- the cache-hit fast path ----------------------------------------------------------------------

async def test_miss_then_hit_on_the_fast_path(env: Env) -> None:
    first = query("WwW.ExAmPlE.test.", msg_id=0x7777)
    assert env.fast(first) is None  # the client's class is not known before the slow path
    slow = await env.ask_message(first)
    assert slow.id == 0x7777
    assert slow.rcode == RCode.NOERROR
    assert slow.flags & (FLAG_QR | FLAG_RA | FLAG_RD) == FLAG_QR | FLAG_RA | FLAG_RD
    assert slow.question is not None and slow.question.name == cased("WwW.ExAmPlE.test.")
    assert addresses(slow) == ["192.0.2.80"]
    assert env.engine.stats.cache_misses == 1

    env.net.clear_log()
    second = query("wWw.eXaMpLe.TEST.", msg_id=0x8888, cd=True)
    raw = env.fast(second)
    assert raw is not None
    fast = decode_message(raw)
    assert fast.id == 0x8888
    assert fast.question is not None and fast.question.name == cased("wWw.eXaMpLe.TEST.")  # echoed as asked
    assert fast.flags & FLAG_CD
    assert env.net.log == []
    assert env.engine.stats.cache_hits == 1
    slow_again = await env.ask_message(second)
    assert raw == await env.ask(second)  # the slow path's hit builds the same bytes
    assert without_ttls(fast) == without_ttls(slow_again)
    assert fast.answer == slow.answer  # no time passed: the same TTLs as the miss


async def test_fast_path_ttls_count_down_with_the_clock(env: Env) -> None:
    await env.ask(query("www.example.test."))
    for advance, ttl in ((0, 3600), (10, 3590), (0.5, 3590), (0.5, 3589), (1000, 2589)):
        env.clock.advance(advance)
        raw = env.fast(query("www.example.test."))
        assert raw is not None
        assert [rr.ttl for rr in decode_message(raw).answer] == [ttl]
    env.clock.advance(2589)  # expired: the fast path declines
    assert env.fast(query("www.example.test.")) is None


async def test_negative_answers_are_cached_with_their_soa(env: Env) -> None:
    reply = await env.ask_message(query("nothere.example.test."))
    assert reply.rcode == RCode.NXDOMAIN
    assert [rr.rtype for rr in reply.authority] == [RRType.SOA] and reply.authority[0].ttl == 300
    env.clock.advance(100)
    raw = env.fast(query("nothere.example.test."))
    assert raw is not None
    fast = decode_message(raw)
    assert fast.rcode == RCode.NXDOMAIN and fast.authority[0].ttl == 200


async def test_tc_when_the_answer_exceeds_512_without_edns(env: Env) -> None:
    big = query("big.example.test.", RRType.TXT)
    slow = await env.ask_message(big)
    assert slow.flags & FLAG_TC
    assert slow.answer == [] and slow.edns is None
    assert slow.question is not None and slow.question.name == cased("big.example.test.")
    raw = env.fast(big)
    assert raw is not None
    fast = decode_message(raw)
    assert fast.flags & FLAG_TC and fast.answer == [] and len(raw) <= 512
    over_tcp = await env.ask_message(big, tcp=True)
    assert not over_tcp.flags & FLAG_TC and len(over_tcp.answer) == 4
    fast_tcp = env.fast(big, tcp=True)
    assert fast_tcp is not None and len(decode_message(fast_tcp).answer) == 4


async def test_tc_and_no_tc_with_edns_sizes(env: Env) -> None:
    await env.ask(query("big.example.test.", RRType.TXT), tcp=True)
    small = env.fast(query("big.example.test.", RRType.TXT, edns=1232, do=True))
    assert small is not None
    truncated = decode_message(small)
    assert truncated.flags & FLAG_TC and truncated.answer == []
    assert truncated.edns is not None and truncated.edns.do  # the OPT stays, DO echoed
    # A client offering 4096 still gets at most our 1232 over UDP (no fragments, DNS flag day 2020).
    large = env.fast(query("big.example.test.", RRType.TXT, edns=4096))
    assert large is not None and decode_message(large).flags & FLAG_TC
    over_tcp = env.fast(query("big.example.test.", RRType.TXT, edns=4096), tcp=True)
    assert over_tcp is not None and len(decode_message(over_tcp).answer) == 4


@pytest.mark.parametrize("do", [False, True])
async def test_edns_opt_echoed_with_do(env: Env, do: bool) -> None:
    data = query("www.example.test.", edns=4096, do=do)
    slow = await env.ask_message(data)
    assert slow.edns is not None
    assert slow.edns.do is do
    assert slow.edns.udp_size == 1232 and slow.edns.version == 0
    raw = env.fast(data)
    assert raw is not None
    fast = decode_message(raw)
    assert fast.edns is not None and fast.edns.do is do
    assert without_ttls(fast) == without_ttls(slow)
    plain = await env.ask_message(query("www.example.test."))
    assert plain.edns is None


async def test_edns_options_are_skipped_on_both_paths(env: Env) -> None:
    """A client cookie (RFC 7873) is ignored, as by a server without cookies: the answer comes
    from the fast path as for a query without options, and the reply carries no cookie."""
    await env.ask(query("www.example.test."))
    cookie = query("www.example.test.", edns=1232)[:-11]
    opt = b"\x00" + struct.pack("!HHIH", RRType.OPT, 1232, 0, 12) + b"\x00\x0a\x00\x08" + b"\x01" * 8
    data = cookie[:11] + b"\x01" + cookie[12:] + opt
    fast = env.fast(data)
    assert fast is not None
    reply = decode_message(fast)
    assert addresses(reply) == ["192.0.2.80"] and reply.edns is not None and b"\x00\x0a" not in fast[-15:]
    slow = await env.ask_message(data)
    assert addresses(slow) == ["192.0.2.80"] and slow.edns is not None
    cut = cookie[:11] + b"\x01" + cookie[12:] + b"\x00" + struct.pack("!HHIH", RRType.OPT, 1232, 0, 3) + b"\x00\x0a\x00"
    assert env.fast(cut) is None  # an option cut short: left to the full decode, which answers as before
    assert addresses(await env.ask_message(cut)) == ["192.0.2.80"]


# --- resolution -------------------------------------------------------------------------------------

async def test_concurrent_queries_share_one_resolution(env: Env) -> None:
    replies = await asyncio.gather(env.ask_message(query("www.example.test.", msg_id=1)),
                                   env.ask_message(query("WWW.example.test.", msg_id=2), OTHER_CLIENT))
    assert [r.id for r in replies] == [1, 2]
    assert all(addresses(r) == ["192.0.2.80"] for r in replies)
    assert env.net.names_sent().count(("www.example.test.", "A")) == 1
    assert env.engine.stats.cache_misses == 2


async def test_serve_stale_when_the_upstreams_fail(env: Env) -> None:
    await env.ask(query("www.example.test."))
    env.clock.advance(3700)  # past the answer's and the RRsets' expiry
    for address in env.net.servers:
        env.net.misbehave(address, timeout=True)
    env.net.clear_log()
    reply = await env.ask_message(query("www.example.test."))
    assert reply.rcode == RCode.NOERROR
    assert addresses(reply) == ["192.0.2.80"]
    assert [rr.ttl for rr in reply.answer] == [30]  # RFC 8767 §4
    assert env.net.log != []  # it did try
    assert env.engine.stats.stale_answers == 1
    # For the next 30 s the stale answer is served without asking again (§4's recheck timer).
    env.net.clear_log()
    env.clock.advance(STALE_RECHECK_SECONDS - 5)
    again = await env.ask_message(query("www.example.test."))
    assert addresses(again) == ["192.0.2.80"] and again.answer[0].ttl == 30
    assert env.net.log == []
    # When the servers are back, the next try after the recheck timer refreshes the answer.
    env.net.behaviour.clear()
    env.clock.advance(10)
    fresh = await env.ask_message(query("www.example.test."))
    assert fresh.answer[0].ttl == 3600


async def test_serve_stale_from_the_rrsets_when_the_answer_cache_has_no_reply(env: Env) -> None:
    """From a bug hunt: serve-stale worked only from the answer cache's expired reply to the very
    question, so a reload during an upstream outage (it empties the answer cache), or a client
    asking without the DNSSEC bits that dig's AD gave the cached reply, got SERVFAIL while the
    RRset cache still held the records (its stale lookups were never used)."""
    await env.ask(query("chain.example.test."))  # three CNAMEs, then the A
    await env.ask(query("nothere.example.test."))
    env.clock.advance(3700)  # past every expiry
    for address in env.net.servers:
        env.net.misbehave(address, timeout=True)
    env.answers.clear()  # what a reload does
    reply = await env.ask_message(query("chain.example.test."))
    assert reply.rcode == RCode.NOERROR
    assert [rr.rtype for rr in reply.answer] == [RRType.CNAME, RRType.CNAME, RRType.CNAME, RRType.A]
    assert addresses(reply) == ["192.0.2.80"]
    assert {rr.ttl for rr in reply.answer} == {30}  # RFC 8767 §4
    negative = await env.ask_message(query("nothere.example.test."))
    assert negative.rcode == RCode.NXDOMAIN
    assert [(rr.rtype, rr.ttl) for rr in negative.authority] == [(RRType.SOA, 30)]
    assert env.engine.stats.stale_answers == 2
    # Kept for the stale answer TTL (the recheck timer): not asked again meanwhile. (The fake
    # clock has moved on by the timeouts of the dead servers in the asking above: 15 s and more.)
    env.net.clear_log()
    env.clock.advance(5)
    again = env.fast(query("chain.example.test."))
    assert again is not None and addresses(decode_message(again)) == ["192.0.2.80"]
    assert env.net.log == []
    # A name the cache never had still fails.
    assert (await env.ask_message(query("never.example.test."))).rcode == RCode.SERVFAIL


async def _stale_with_ten_seconds_of_its_window_left() -> Env:
    """www.example.test. resolved, then expired with 10 s left of its stale window (600 s), every
    server down and the answer cache emptied (what a reload does): only the RRsets are left."""
    env = make_env(stale_seconds=600)
    await env.ask(query("www.example.test."))
    env.clock.advance(3600 + 590)
    for address in env.net.servers:
        env.net.misbehave(address, timeout=True)
    env.answers.clear()
    return env


async def test_a_stale_answer_from_the_rrsets_is_not_served_past_the_stale_window() -> None:
    """RFC 8767 §4: the maximum stale timer bounds how long past its expiry a record is served.
    The answer made from stale RRsets is kept for the stale answer TTL (the recheck timer), and
    was then itself served stale for another whole ``stale_seconds``: records that expired at
    T were still answered at T + 2 x stale_seconds."""
    env = await _stale_with_ten_seconds_of_its_window_left()
    assert addresses(await env.ask_message(query("www.example.test."))) == ["192.0.2.80"]
    env.clock.advance(600)  # the records' stale window is long over
    assert (await env.ask_message(query("www.example.test."))).rcode == RCode.SERVFAIL


async def test_a_stale_answer_from_the_rrsets_is_kept_no_longer_than_the_stale_window() -> None:
    """From a bug hunt: the answer made from stale RRsets was kept (and served from the answer
    cache) for the whole stale answer TTL even when the records' stale window ended sooner:
    with 10 s of the window left, the name was still answered 25 s later, where Unbound's
    serve-expired-ttl gives SERVFAIL. Its TTL is now the window's rest when that is shorter."""
    env = await _stale_with_ten_seconds_of_its_window_left()
    reply = await env.ask_message(query("www.example.test."))
    assert addresses(reply) == ["192.0.2.80"]
    assert 0 < reply.answer[0].ttl <= 10  # (less the time the failed tries took)
    env.clock.advance(25)  # the stale answer TTL (30 s) is not over, the window is
    assert (await env.ask_message(query("www.example.test."))).rcode == RCode.SERVFAIL


async def test_a_flood_under_a_zone_over_its_rate_limit_is_answered_before_any_resolving() -> None:
    """New names under example.test, limited to 3 queries a second: the questions past it get
    SERVFAIL from the engine's screen (the resolver is not asked, nothing is cached), while
    cached answers, local data under the zone and a stale answer still come; the next second
    the zone gets its 3 again."""
    env = make_env(resolver_settings=settings(qname_minimisation="off", zone_rate_limit_factor=0,
                                              zone_rate_limits={N("example.test."): 3}))
    with_local(env)  # corp.example.test, a local zone below the limited one
    await env.ask(query("www.example.test."))
    await env.ask(query("old.wild.example.test."))
    env.clock.advance(3700 - env.clock() % 1)  # every answer expired (served stale below)
    env.net.clear_log()
    replies = [await env.ask_message(query(f"r{i}.wild.example.test.", msg_id=i)) for i in range(10)]
    assert [r.rcode for r in replies] == [RCode.NOERROR] * 3 + [RCode.SERVFAIL] * 7
    assert [r.id for r in replies] == list(range(10))
    assert [q.text for q in env.net.log if q.address in (EXAMPLE_TEST_1, EXAMPLE_TEST_2)] == [
        f"r{i}.wild.example.test." for i in range(3)]
    assert env.resolver.zone_limiter.limited == 7
    stopped = key_of(Question(N("r9.wild.example.test."), RRType.A, CLASS_IN))
    assert env.answers.table(stopped).get(stopped) is None
    edns = await env.ask_message(query("r10.wild.example.test.", edns=1232))
    assert edns.rcode == RCode.SERVFAIL and edns.edns is not None and edns.question is not None
    assert addresses(await env.ask_message(query("www.corp.example.test."))) == ["192.168.0.80"]
    stale = await env.ask_message(query("old.wild.example.test."))
    assert addresses(stale) == ["192.0.2.99"] and stale.answer[0].ttl == 30
    env.clock.advance(1)
    assert addresses(await env.ask_message(query("r11.wild.example.test."))) == ["192.0.2.99"]


def with_dns64(env: Env, **kwargs: object) -> None:
    zone = env.net.zone("example.test.")
    for line in ("v4only 3600 A 192.0.2.7", "v4only 3600 A 192.0.2.8", "v4alias 3600 CNAME v4only",
                 "mapped 3600 AAAA ::ffff:192.0.2.9", "mapped 3600 A 192.0.2.9"):
        for rr in load_zone_text(f"$ORIGIN example.test.\n@ SOA ns hm 1 1 1 1 1\n{line}\n", "example.test.").rrsets(
                N(line.split()[0] + ".example.test.")).values():
            for record in rr:
                zone.add(record)
    env.engine.dns64 = DNS64(IPv6Network("2001:db8:64::/96"), **kwargs)  # type: ignore[arg-type]


def aaaa_values(message: Message) -> list[str]:
    return sorted(str(IPv6Address(rr.rdata)) for rr in message.answer if rr.rtype == RRType.AAAA)


async def test_dns64_makes_aaaa_records_for_names_with_only_a_records(env: Env) -> None:
    with_dns64(env)
    reply = await env.ask_message(query("v4only.example.test.", RRType.AAAA))
    assert reply.rcode == RCode.NOERROR and not reply.flags & FLAG_AD
    assert aaaa_values(reply) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]
    assert {rr.ttl for rr in reply.answer} == {300}  # the AAAA question's negative TTL (the SOA's 300)
    assert env.engine.stats.dns64_answers == 1
    # Through a CNAME: the chain, then the records made for its end.
    chained = await env.ask_message(query("v4alias.example.test.", RRType.AAAA))
    assert [RRType(rr.rtype).name for rr in chained.answer] == ["CNAME", "AAAA", "AAAA"]
    assert chained.answer[1].name == N("v4only.example.test.")
    # A name with AAAA records keeps them; an IPv4-mapped one counts as none; NXDOMAIN stays.
    assert aaaa_values(await env.ask_message(query("www.example.test.", RRType.AAAA))) == ["2001:db8::80"]
    assert aaaa_values(await env.ask_message(query("mapped.example.test.", RRType.AAAA))) == [
        "2001:db8:64::c000:209"]
    assert (await env.ask_message(query("nothere.example.test.", RRType.AAAA))).rcode == RCode.NXDOMAIN
    # A questions are untouched; the made answer comes from the cache's fast path the next time.
    assert addresses(await env.ask_message(query("v4only.example.test."))) == ["192.0.2.7", "192.0.2.8"]
    again = env.fast(query("v4only.example.test.", RRType.AAAA))
    assert again is not None and aaaa_values(decode_message(again)) == aaaa_values(reply)


async def test_dns64_serves_stale_made_records_not_a_stale_no_aaaa(env: Env) -> None:
    """RFC 6147 §5.1.2 with RFC 8767: during an outage, an IPv6-only client's AAAA question for
    an IPv4-only name is answered stale from the RRsets (a reload emptied the answer cache):
    the records made from the stale A records, not the AAAA question's stale "no AAAA", which
    left it with no address for the name."""
    with_dns64(env)
    made = await env.ask_message(query("v4only.example.test.", RRType.AAAA))
    assert aaaa_values(made) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]
    env.clock.advance(3700)
    for address in env.net.servers:
        env.net.misbehave(address, timeout=True)
    env.answers.clear()  # what a reload does
    stale = await env.ask_message(query("v4only.example.test.", RRType.AAAA))
    assert stale.rcode == RCode.NOERROR and aaaa_values(stale) == aaaa_values(made)


async def test_dns64_for_some_client_networks_only(env: Env) -> None:
    """[dns.dns64] clients: the IPv6-only subscribers behind the NAT64 get the made AAAA records,
    the dual-stack ones the real "no AAAA", both from the cache's fast path afterwards; reverse
    mapping likewise; A questions are one answer for all."""
    with_dns64(env)
    env.engine.set_dns64(env.engine.dns64, [IPv4Network("192.168.64.0/24")])
    nat64, dual = "192.168.64.9", CLIENT
    made = await env.ask_message(query("v4only.example.test.", RRType.AAAA), nat64)
    assert aaaa_values(made) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]
    plain = await env.ask_message(query("v4only.example.test.", RRType.AAAA), dual)
    assert plain.rcode == RCode.NOERROR and aaaa_values(plain) == []
    for client, expected in ((nat64, aaaa_values(made)), (dual, [])):
        again = env.fast(query("v4only.example.test.", RRType.AAAA), client)
        assert again is not None and aaaa_values(decode_message(again)) == expected, client
    await env.ask(query("v4only.example.test."), nat64)
    a_answer = env.fast(query("v4only.example.test."), nat64)  # the A answer stored once, shared
    assert a_answer is not None and env.fast(query("v4only.example.test."), dual) == a_answer
    ptr = IPv6Address("2001:db8:64::c000:207").reverse_pointer + "."
    mapped = await env.ask_message(query(ptr, RRType.PTR), nat64)
    assert mapped.answer and mapped.answer[0].rtype == RRType.CNAME
    assert not (await env.ask_message(query(ptr, RRType.PTR), dual)).answer
    env.engine.set_dns64(env.engine.dns64, None)  # every client again: a reload, which empties the answers
    env.answers.clear()
    assert aaaa_values(await env.ask_message(query("v4only.example.test.", RRType.AAAA), dual)) == aaaa_values(made)


async def test_dns64_for_walled_clients_of_the_dns64_networks(env: Env) -> None:
    """From a review: a suspended IPv6-only subscriber is walled, and walled clients were never
    [dns.dns64] clients: the names the walled garden lets resolve (the payment provider) had no
    made AAAA records, so the subscriber could not reach an IPv4-only one to pay."""
    with_dns64(env)
    env.engine.set_dns64(env.engine.dns64, [IPv4Network("192.168.64.0/24")])
    garden = WalledGarden(WalledGardenConfig(portal_ipv4=IPv4Address("192.0.2.250"), allow=["example.test."]))
    env.engine.walled_lookup = garden.lookup
    nat64, dual = "192.168.64.9", CLIENT
    env.engine.set_walled(frozenset({nat64, dual}))
    made = await env.ask_message(query("v4only.example.test.", RRType.AAAA), nat64)
    assert aaaa_values(made) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]
    assert aaaa_values(await env.ask_message(query("v4only.example.test.", RRType.AAAA), dual)) == []
    ptr = IPv6Address("2001:db8:64::c000:207").reverse_pointer + "."
    garden.configure(WalledGardenConfig(portal_ipv4=IPv4Address("192.0.2.250"), allow=["arpa."]))
    assert (await env.ask_message(query(ptr, RRType.PTR), nat64)).answer[0].rtype == RRType.CNAME
    assert env.fast(query("v4only.example.test.", RRType.AAAA), nat64) is None  # still never the fast path


async def test_an_ipv6_only_walled_client_reaches_the_ipv4_portal_through_dns64(env: Env) -> None:
    """A suspended IPv6-only subscriber, with a garden that has only an IPv4 portal: its AAAA
    questions got "no AAAA" for every name outside the garden (captive.apple.com too), so the
    device had no address to open the portal at and showed "no internet". It gets the portal's
    address under the NAT64 prefix, as DNS64 gives any IPv4-only host; a dual-stack walled
    client outside [dns.dns64] clients keeps "no AAAA" and asks for A."""
    with_dns64(env)
    env.engine.set_dns64(env.engine.dns64, [IPv4Network("192.168.64.0/24")])
    garden = WalledGarden(WalledGardenConfig(portal_ipv4=IPv4Address("192.0.2.250"), allow=["example.test."], ttl=30))
    env.engine.walled_lookup = garden.lookup
    nat64, dual = "192.168.64.9", CLIENT
    env.engine.set_walled(frozenset({nat64, dual}))
    portal = await env.ask_message(query("captive.apple.com.", RRType.AAAA), nat64)
    assert portal.rcode == RCode.NOERROR and aaaa_values(portal) == ["2001:db8:64::c000:2fa"]
    assert portal.answer[0].ttl == 30
    assert aaaa_values(await env.ask_message(query("captive.apple.com.", RRType.AAAA), dual)) == []
    assert addresses(await env.ask_message(query("captive.apple.com."), nat64)) == ["192.0.2.250"]
    garden.configure(WalledGardenConfig(portal_ipv4=IPv4Address("192.0.2.250"), portal_ipv6=IPv6Address("2001:db8::250")))
    assert aaaa_values(await env.ask_message(query("captive.apple.com.", RRType.AAAA), nat64)) == ["2001:db8::250"]


async def test_a_reload_of_dns64_clients_during_a_made_answer_keeps_no_answer_of_the_old_kind(env: Env) -> None:
    """From a review: an AAAA answer made for every client while a reload limited DNS64 to the
    IPv6-only network (its A question still out) was stored after the reload had emptied the
    answer cache: dual-stack clients then got made AAAA records, from the fast path, for as
    long as they lived."""
    with_dns64(env)
    env.engine.set_dns64(env.engine.dns64, None)
    resolve, asked, release = env.resolver.resolve, asyncio.Event(), asyncio.Event()

    async def held(name: bytes, qtype: int, **kwargs: bool) -> Resolution:
        if qtype == RRType.A:
            asked.set()
            await release.wait()
        return await resolve(name, qtype, **kwargs)

    env.resolver.resolve = held  # type: ignore[method-assign]
    before = asyncio.create_task(env.ask_message(query("v4only.example.test.", RRType.AAAA)))
    await asked.wait()
    env.engine.set_dns64(env.engine.dns64, [IPv4Network("192.168.64.0/24")])  # the reload...
    env.answers.clear()  # ...which empties the answer cache
    release.set()
    assert aaaa_values(await before) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]  # (asked before)
    assert env.fast(query("v4only.example.test.", RRType.AAAA)) is None
    assert aaaa_values(await env.ask_message(query("v4only.example.test.", RRType.AAAA))) == []


async def test_a_prefetch_of_a_made_answer_renews_its_a_records_too(env: Env) -> None:
    """From a review: the prefetch asked the AAAA question again but took the A records from the
    cache with what was left of their TTL, so the renewed answer lived only that long."""
    with_dns64(env)
    await env.ask_message(query("v4only.example.test.", RRType.AAAA))  # TTL 300 (the SOA's negative TTL)
    env.clock.advance(280)  # the last tenth: the next hit prefetches
    env.net.clear_log()
    assert env.fast(query("v4only.example.test.", RRType.AAAA)) is not None
    await env.engine.drain()
    assert ("v4only.example.test.", "A") in env.net.names_sent()


async def test_dns64_never_hands_out_excluded_aaaa_records_even_when_it_can_make_none(env: Env) -> None:
    """RFC 6147 §5.1.4: AAAA records only in the excluded ranges are treated as an empty answer.
    From a review: when no record could be made instead (no A records, or none the prefix may
    embed: the well-known prefix and a non-global address), the IPv4-mapped records went to the
    IPv6-only client as they were, directly and at a CNAME's end."""
    with_dns64(env)
    zone = env.net.zone("example.test.")
    for line in ("mappedonly 3600 AAAA ::ffff:192.0.2.10", "toexcluded 3600 CNAME mappedonly",
                 "private 3600 AAAA ::ffff:10.0.0.1", "private 3600 A 10.0.0.1"):
        for rrset in load_zone_text(f"$ORIGIN example.test.\n@ SOA ns hm 1 1 1 1 1\n{line}\n",
                                    "example.test.").rrsets(N(line.split()[0] + ".example.test.")).values():
            for record in rrset:
                zone.add(record)
    alone = await env.ask_message(query("mappedonly.example.test.", RRType.AAAA))
    assert alone.rcode == RCode.NOERROR and aaaa_values(alone) == []
    chained = await env.ask_message(query("toexcluded.example.test.", RRType.AAAA))
    assert chained.rcode == RCode.NOERROR and aaaa_values(chained) == []
    assert [RRType(rr.rtype).name for rr in chained.answer] == ["CNAME"]
    env.engine.dns64 = DNS64(IPv6Network("64:ff9b::/96"))  # embeds no 10.0.0.1
    private = await env.ask_message(query("private.example.test.", RRType.AAAA))
    assert private.rcode == RCode.NOERROR and aaaa_values(private) == []


async def test_dns64_synthesize_all_replaces_real_aaaa_records(env: Env) -> None:
    with_dns64(env, synthesize_all=True)
    assert aaaa_values(await env.ask_message(query("www.example.test.", RRType.AAAA))) == ["2001:db8:64::c000:250"]


async def test_the_rate_limit_screen_lets_through_names_whose_servers_are_not_the_limited_zones() -> None:
    """From a review: the screen judged a miss by the deepest zone it had counted above the name,
    so with test. flooded past its limit it stopped (factor 0: for as long as the flood lasted)
    the names of a forward zone below it, which are never counted (forwarded questions are not
    limited), and, after a reload had cleared the counts, new names of example.test, whose
    delegation the cache holds: neither would have sent test.'s servers a query."""
    limited = settings(qname_minimisation="off", zone_rate_limit_factor=0, zone_rate_limits={N("test."): 3})

    async def flood(env: Env) -> list[int]:
        env.clock.advance(1 - env.clock() % 1)  # the start of a second
        return [(await env.ask_message(query(f"r{i}.test.", msg_id=i))).rcode for i in range(6)]

    forwarding = make_env(resolver_settings=limited,
                          forward_zones=[ForwardZone(N("example.test."), (EXAMPLE_TEST_1,), recursive=True)])
    assert await flood(forwarding) == [RCode.NXDOMAIN] * 3 + [RCode.SERVFAIL] * 3
    assert addresses(await forwarding.ask_message(query("a1.wild.example.test."))) == ["192.0.2.99"]
    assert addresses(await forwarding.ask_message(query("a2.wild.example.test."))) == ["192.0.2.99"]

    reloaded = make_env(resolver_settings=limited)
    assert addresses(await reloaded.ask_message(query("www.example.test."))) == ["192.0.2.80"]
    reloaded.resolver.configure(limited, HINTS, [])  # a reload: the counts start afresh,
    reloaded.answers.clear()  # and the answer cache (DNSService.reload)
    assert await flood(reloaded) == [RCode.NXDOMAIN] * 3 + [RCode.SERVFAIL] * 3
    reloaded.net.clear_log()
    assert addresses(await reloaded.ask_message(query("a1.wild.example.test."))) == ["192.0.2.99"]
    assert {q.address for q in reloaded.net.log} <= {EXAMPLE_TEST_1, EXAMPLE_TEST_2}  # not test.'s
    # The flooded zone's own new names are still stopped.
    assert (await reloaded.ask_message(query("r99.test."))).rcode == RCode.SERVFAIL

    # Nor a name of the flooded zone that the RRset cache answers, without a query.
    cached = make_env(resolver_settings=settings(qname_minimisation="off", zone_rate_limit_factor=0,
                                                 zone_rate_limits={N("example.test."): 3}))
    assert addresses(await cached.ask_message(query("www.example.test."))) == ["192.0.2.80"]
    cached.resolver.configure(cached.resolver.settings, HINTS, [])
    cached.answers.clear()
    cached.clock.advance(1 - cached.clock() % 1)
    flooded = [(await cached.ask_message(query(f"r{i}.wild.example.test."))).rcode for i in range(5)]
    assert flooded == [RCode.NOERROR] * 3 + [RCode.SERVFAIL] * 2
    cached.net.clear_log()
    assert addresses(await cached.ask_message(query("www.example.test."))) == ["192.0.2.80"]
    assert addresses(await cached.ask_message(query("www.example.test.", edns=1232, do=True))) == ["192.0.2.80"]
    assert cached.net.log == []
    # A DS is asked of the parent's servers (test.), not of the flooded zone's.
    ds = await cached.ask_message(query("example.test.", RRType.DS))
    assert ds.rcode == RCode.NOERROR and {q.address for q in cached.net.log} <= {TEST_1, TEST_2}


async def test_dns64_keeps_no_aaaa_only_briefly_when_the_a_question_fails(env: Env) -> None:
    """From a review: the A question DNS64 asks timed out, and the AAAA question's NODATA went
    into the answer cache for its negative TTL (300 s here): IPv6-only clients had no address
    for the name for that long after the servers were back."""
    with_dns64(env)
    await env.ask_message(query("v4only.example.test.", RRType.AAAA, msg_id=1))  # (an A lookup, cached)
    env.clock.advance(3700)  # every answer and RRset expired
    env.answers.clear()

    def refuse_a(message: Message, reply: Reply) -> Reply | None:
        assert message.question is not None
        return None if message.question.qtype == RRType.A else reply

    for address in (EXAMPLE_TEST_1, EXAMPLE_TEST_2):
        env.net.misbehave(address, handler=refuse_a)
    failed = await env.ask_message(query("v4only.example.test.", RRType.AAAA, msg_id=2))
    assert failed.rcode == RCode.NOERROR and aaaa_values(failed) == []
    assert all(rr.ttl <= FAILURE_CACHE_SECONDS for rr in failed.authority)
    env.net.behaviour.clear()
    env.clock.advance(FAILURE_CACHE_SECONDS + 1)
    assert env.fast(query("v4only.example.test.", RRType.AAAA, msg_id=3)) is None  # not kept
    again = await env.ask_message(query("v4only.example.test.", RRType.AAAA, msg_id=4))
    assert aaaa_values(again) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]


async def test_dns64_a_question_goes_through_with_the_question_the_rate_limit_let_through() -> None:
    """The zone rate limit's screen let a AAAA question through (one in factor); the A question
    DNS64 then asked for it was held to the limit again, and the name got no address."""
    env = make_env(resolver_settings=settings(qname_minimisation="off", zone_rate_limit_factor=10,
                                              zone_rate_limits={N("example.test."): 1}))
    with_dns64(env)
    draws = iter([0.0])  # the screen's draw lets the question through; any other would not
    env.resolver.zone_limiter._draw = lambda: next(draws, 0.99)
    await env.ask_message(query("www.example.test."))  # this second's one query to example.test
    reply = await env.ask_message(query("v4only.example.test.", RRType.AAAA))
    assert aaaa_values(reply) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]


async def test_dns64_for_a_chain_that_leaves_local_data(env: Env) -> None:
    """From a review: a local name CNAMEd to a public IPv4-only name got no AAAA (the rest of
    the chain was resolved without DNS64), whereas the public name asked directly did."""
    with_dns64(env)
    env.engine.local_lookup = LocalData(static_records=["portal.home.test. 300 CNAME v4alias.example.test."]).answer
    reply = await env.ask_message(query("portal.home.test.", RRType.AAAA))
    assert [RRType(rr.rtype).name for rr in reply.answer] == ["CNAME", "CNAME", "AAAA", "AAAA"]
    assert aaaa_values(reply) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]


class _SlowNet:
    """The fake network, each exchange taking a turn of the event loop (clients interleave)."""

    def __init__(self, net: FakeNet) -> None:
        self.net = net
        self.asked_aaaa = False
        self.a_after_aaaa = asyncio.Event()  # an A question under way after a AAAA one

    async def exchange(self, address: str, query: bytes, *, tcp: bool, wait: float, exact_case: bool,
                       zone: bytes = b"") -> bytes:
        question = decode_message(query).question
        assert question is not None
        self.asked_aaaa |= question.qtype == RRType.AAAA
        if self.asked_aaaa and question.qtype == RRType.A:
            self.a_after_aaaa.set()
        await asyncio.sleep(0.01)
        return await self.net.exchange(address, query, tcp=tcp, wait=wait, exact_case=exact_case)


async def test_dns64_clients_asking_during_the_a_question_wait_for_it(env: Env) -> None:
    """From a review: the AAAA question left the in-flight table before DNS64's A question, so
    each client asking meanwhile (a popular name at its expiry) sent the A question again."""
    with_dns64(env)
    env.resolver.upstream = slow = _SlowNet(env.net)
    first = asyncio.ensure_future(env.ask_message(query("v4only.example.test.", RRType.AAAA, msg_id=1)))
    await slow.a_after_aaaa.wait()
    second = await env.ask_message(query("v4only.example.test.", RRType.AAAA, msg_id=2))
    assert aaaa_values(second) == aaaa_values(await first) == ["2001:db8:64::c000:207", "2001:db8:64::c000:208"]
    assert env.net.names_sent().count(("v4only.example.test.", "A")) == 1


async def test_no_stale_answer_past_the_stale_window() -> None:
    env = make_env(stale_seconds=60)
    await env.ask(query("www.example.test."))
    env.clock.advance(3600 + 61)
    for address in env.net.servers:
        env.net.misbehave(address, timeout=True)
    reply = await env.ask_message(query("www.example.test."))
    assert reply.rcode == RCode.SERVFAIL


async def test_servfail_is_cached_for_five_seconds(env: Env) -> None:
    reply = await env.ask_message(query("www.alldead.test."))
    assert reply.rcode == RCode.SERVFAIL
    assert reply.flags & FLAG_RA
    env.net.clear_log()
    env.clock.advance(4)
    assert (await env.ask_message(query("www.alldead.test."))).rcode == RCode.SERVFAIL
    raw = env.fast(query("www.alldead.test."))
    assert raw is not None and decode_message(raw).rcode == RCode.SERVFAIL
    assert env.net.log == []
    env.clock.advance(2)
    assert (await env.ask_message(query("www.alldead.test."))).rcode == RCode.SERVFAIL
    assert env.net.log != []  # asked again


async def test_servfail_for_want_of_sockets_is_not_cached_and_says_so(env: Env,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors (EMFILE under a flood of slow new names, `ulimit -n 1024`), a
    resolution fails at socket() with no server asked. Before the fix the SERVFAIL was kept
    5 s like a failure of the servers (a popular name failed for every client after sockets
    came free), every server was tried in turn, each failing alike, and `log_servfail` said
    "no server of the zone answered", sending the operator looking for a network fault."""
    await env.ask(query("www.example.test."))  # delegations cached
    exchange = env.net.exchange

    async def out_of_sockets(address: str, query: bytes, **kwargs: object) -> bytes:
        raise UpstreamError("socket", "[Errno 24] Too many open files")

    monkeypatch.setattr(env.net, "exchange", out_of_sockets)
    env.engine.servfail_log.enabled = True
    with capture_logs() as logs:
        assert (await env.ask_message(query("popular.example.test."))).rcode == RCode.SERVFAIL
    assert env.resolver.upstream_failures == {"socket": 1}  # the other servers not tried in vain
    assert [entry["reason"] for entry in logs if entry["event"] == "dns.servfail"] == [OUT_OF_SOCKETS]
    monkeypatch.setattr(env.net, "exchange", exchange)  # sockets free again
    assert env.fast(query("popular.example.test.")) is None
    assert (await env.ask_message(query("popular.example.test."))).rcode == RCode.NXDOMAIN


async def test_log_servfail_says_which_name_failed_and_why_ten_a_second(env: Env) -> None:
    with capture_logs() as logs:
        await env.ask(query("www.alldead.test."))  # off: nothing
        env.engine.servfail_log.enabled = True
        env.clock.advance(6)
        await env.ask(query("www.alldead.test."))
        await env.ask(query("loop1.example.test."))
        for n in range(12):  # 10 a second at most: the rest are counted
            await env.ask(query(f"n{n}.alldead.test."))
        env.clock.advance(1)
        await env.ask(query("last.alldead.test."))
    lines = [entry for entry in logs if entry["event"] == "dns.servfail"]
    assert [(e["name"], e["qtype"]) for e in lines[:2]] == [("www.alldead.test.", "A"), ("loop1.example.test.", "A")]
    assert "every server of the zone is down" in lines[0]["reason"] or "no server" in lines[0]["reason"]
    assert lines[1]["reason"] == "CNAME loop" and lines[1]["answered_stale"] is False
    assert len(lines) == 11 and lines[-1]["name"] == "last.alldead.test." and lines[-1]["left_out_before"] == 4


async def test_servfail_is_never_served_as_a_stale_answer(env: Env) -> None:
    """A failure cached 5 s must not become a "stale answer" after it expires: before the fix
    the second failure turned the expired SERVFAIL into a stale entry served for 30 s without
    asking, and counted as a stale answer."""
    await env.ask(query("www.alldead.test."))
    env.clock.advance(6)
    assert (await env.ask_message(query("www.alldead.test."))).rcode == RCode.SERVFAIL
    assert env.engine.stats.stale_answers == 0
    env.net.clear_log()
    env.clock.advance(6)
    assert (await env.ask_message(query("www.alldead.test."))).rcode == RCode.SERVFAIL
    assert env.net.log != []  # 6 s after the last failure: asked again


async def test_servfail_with_a_partial_chain_is_cached_for_five_seconds_only(env: Env) -> None:
    reply = await env.ask_message(query("loop1.example.test."))
    assert reply.rcode == RCode.SERVFAIL
    entry = env.answers.entries[key_of(reply.question)]  # type: ignore[arg-type]
    assert entry.expires_at - env.clock() <= 5


async def test_resolution_that_raises_is_servfail_not_a_crash(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(env.resolver, "resolve", broken)
    reply = await env.ask_message(query("www.example.test."))
    assert reply.rcode == RCode.SERVFAIL


async def test_prefetch_refreshes_from_upstream(env: Env) -> None:
    await env.ask(query("www.example.test."))
    env.clock.advance(3300)  # the last tenth of the TTL
    raw = env.fast(query("www.example.test."))
    assert raw is not None
    assert env.engine.stats.prefetches == 1
    await env.engine.drain()
    assert ("www.example.test.", "A") in env.net.names_sent()[-1:]
    entry = env.answers.entries[key_of(decode_message(raw).question)]  # type: ignore[arg-type]
    assert entry.expires_at > env.clock() + 3000


async def test_prefetch_happens_once_in_the_last_tenth(env: Env) -> None:
    await env.ask(query("www.example.test."))
    env.clock.advance(3000)
    assert env.fast(query("www.example.test.")) is not None
    assert env.engine.stats.prefetches == 0
    env.clock.advance(300)
    assert env.fast(query("www.example.test.")) is not None
    assert env.fast(query("www.example.test.")) is not None
    assert env.engine.stats.prefetches == 1
    await env.engine.drain()


# --- local data, policy, walled garden -----------------------------------------------------------

def _record(name: str, rtype: int, rdata: bytes, ttl: int = 3600) -> RR:
    return RR(N(name), rtype, CLASS_IN, ttl, rdata)


def with_local(env: Env) -> LocalData:
    shadow = load_zone_text("$TTL 60\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A 192.168.0.53\nwww A 192.168.0.80\n"
                            "out CNAME www.other.example.\n", "corp.example.test.")
    local = LocalData(static_records=["printer.home.test. 300 A 192.168.1.5"], zones=[shadow])
    env.engine.local_lookup = local.answer
    return local


async def test_local_data_answers_before_recursion(env: Env) -> None:
    with_local(env)
    reply = await env.ask_message(query("Printer.Home.test."))
    assert addresses(reply) == ["192.168.1.5"]
    assert reply.flags & FLAG_AA
    assert reply.question is not None and reply.question.name == cased("Printer.Home.test.")
    zone = await env.ask_message(query("www.corp.example.test."))
    assert addresses(zone) == ["192.168.0.80"] and zone.flags & FLAG_AA
    nx = await env.ask_message(query("nothere.corp.example.test."))
    assert nx.rcode == RCode.NXDOMAIN and nx.authority[0].rtype == RRType.SOA
    assert env.net.log == []
    assert env.engine.stats.local_answers == 3


async def test_without_recursion_desired_only_local_data_answers(env: Env) -> None:
    """RD=0: no iteration (RFC 1034 §4.3.1), and no answer from the cache either (it would tell
    anyone what the other clients asked: cache snooping), on either path; local data answers."""
    with_local(env)
    assert addresses(await env.ask_message(query("www.example.test."))) == ["192.0.2.80"]  # cached now
    env.net.clear_log()
    for name in ("www.example.test.", "new.example.test."):
        assert env.fast(query(name, rd=False)) is None
        refused = await env.ask_message(query(name, rd=False, edns=1232))
        assert refused.rcode == RCode.REFUSED and not refused.answer and not refused.flags & FLAG_RD
        assert refused.edns is not None and b"\x00\x14" in refused.edns.options  # EDE 20, Not Authoritative
    assert env.net.log == []
    local = await env.ask_message(query("printer.home.test.", rd=False))
    assert addresses(local) == ["192.168.1.5"] and local.flags & FLAG_AA
    assert env.engine.stats.not_recursive == 2


async def test_local_answers_take_the_fast_path_until_local_data_changes(env: Env) -> None:
    with_local(env)
    assert env.fast(query("printer.home.test.")) is None  # not asked yet
    await env.ask_message(query("printer.home.test."))
    await env.ask_message(query("nothere.corp.example.test."))
    assert env.fast(query("printer.home.test.")) is None  # kept from the second time a name is asked
    await env.ask_message(query("printer.home.test."))
    await env.ask_message(query("nothere.corp.example.test."))
    raw = env.fast(query("PRINTER.home.test.", edns=1232))
    assert raw is not None
    reply = decode_message(raw)
    assert addresses(reply) == ["192.168.1.5"] and reply.flags & FLAG_AA and not reply.flags & FLAG_AD
    assert reply.question is not None and reply.question.name == cased("PRINTER.home.test.")
    assert reply.edns is not None
    negative = env.fast(query("nothere.corp.example.test."))
    assert negative is not None and decode_message(negative).rcode == RCode.NXDOMAIN
    assert env.engine.stats.local_answers == 6 and env.engine.stats.cache_hits == 0
    assert env.fast(query("printer.home.test."), OUTSIDER) is None  # refused: never from a kept answer
    env.engine.set_walled(frozenset({CLIENT}))
    assert env.fast(query("printer.home.test.")) is None  # walled: the walled garden's answer, slow path
    env.engine.set_walled(frozenset())
    await env.ask_message(query("printer.home.test."))  # the client's class is learnt again
    assert env.fast(query("printer.home.test.")) is not None
    env.engine.forget_local_answers()  # what the service does when local data changes
    assert env.fast(query("printer.home.test.")) is None


async def test_local_answers_too_large_for_a_message_are_not_kept(env: Env) -> None:
    big = "".join(f"big TXT {'x' * 200}{i}\n" for i in range(400))
    zone = load_zone_text("$TTL 60\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A 192.168.0.53\n" + big, "big.test.")
    env.engine.local_lookup = LocalData(zones=[zone]).answer
    for _ in range(2):
        over_tcp = decode_message(await env.ask(query("big.big.test.", RRType.TXT), tcp=True) or b"")
        assert over_tcp.flags & FLAG_TC and not over_tcp.answer
    assert env.fast(query("big.big.test.", RRType.TXT)) is None  # no empty answer kept in its place


async def test_a_kept_answer_that_fits_64k_only_without_an_opt_is_tc_over_tcp(env: Env) -> None:
    """From a code read: answers are kept encoded to fit 65,535 bytes without the OPT record a
    query with EDNS adds (11 bytes). The slow path checked the whole reply, the fast path only
    over UDP: over TCP it handed out 65,542 bytes, which no two-byte length prefix can carry
    (the stream's connection died, the client got nothing, and the query counted as answered)."""
    # 244 records of 268 bytes and one of 108 after a 31-byte header and question: 65,531 bytes.
    big = "".join(f'huge TXT "{i:04d}{"h" * 251}"\n' for i in range(244)) + f'huge TXT "9999{"k" * 91}"\n'
    zone = load_zone_text("$TTL 60\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A 192.168.0.53\n" + big, "big.test.")
    env.engine.local_lookup = LocalData(zones=[zone]).answer
    whole = await env.ask(query("huge.big.test.", RRType.TXT), tcp=True)  # without EDNS it fits
    assert whole is not None and len(whole) == 65531 and not decode_message(whole).flags & FLAG_TC
    await env.ask(query("huge.big.test.", RRType.TXT), tcp=True)  # kept from the second time
    raw = env.fast(query("huge.big.test.", RRType.TXT, edns=1232), tcp=True)
    assert raw is not None and len(raw) <= 65535
    reply = decode_message(raw)
    assert reply.flags & FLAG_TC and reply.flags & FLAG_AA and reply.answer == [] and reply.edns is not None
    assert len(env.fast(query("huge.big.test.", RRType.TXT), tcp=True) or b"") == 65531  # without EDNS: whole


async def test_a_resolved_answer_too_large_for_a_message_is_tc_not_an_empty_noerror(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """From a bug hunt: a CNAME chain across two zones whose answer passed 65,535 bytes (each
    zone's reply fitting in its own) was cached and sent as NOERROR with no records and no TC -
    a NODATA no server gave - over UDP and TCP alike, where local data gets TC."""
    name = N("big.example.test.")
    chain = [RR(N("alias.example.test."), RRType.CNAME, CLASS_IN, 300, name)]
    chain += [RR(name, RRType.TXT, CLASS_IN, 300, bytes([250]) + b"%03d" % i + b"x" * 247) for i in range(256)]

    async def big(*args: object, **kwargs: object) -> Resolution:
        return Resolution(RCode.NOERROR, chain)

    monkeypatch.setattr(env.resolver, "resolve", big)
    for tcp in (True, False, True):
        reply = await env.ask_message(query("alias.example.test.", RRType.TXT, edns=1232), tcp=tcp)
        assert reply.flags & FLAG_TC and reply.answer == [] and reply.edns is not None
    assert env.fast(query("alias.example.test.", RRType.TXT, edns=1232)) is None  # nothing empty kept
    assert env.answers.get_stale(key_of(Question(N("alias.example.test."), RRType.TXT)), env.clock()) is None


async def test_a_truncated_local_answer_is_authoritative_every_time(env: Env) -> None:
    """TC replies carry the answer's flags (AA here) the first time (built whole), the second
    (from the kept entry, slow path: a query without EDNS) and on the fast path alike."""
    big = "".join(f"big TXT {'x' * 100}{i}\n" for i in range(8))
    zone = load_zone_text("$TTL 60\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A 192.168.0.53\n" + big, "big.test.")
    env.engine.local_lookup = LocalData(zones=[zone]).answer
    replies = [decode_message(await env.ask(query("big.big.test.", RRType.TXT)) or b"") for _ in range(3)]
    replies.append(decode_message(env.fast(query("big.big.test.", RRType.TXT)) or b""))
    assert [(bool(r.flags & FLAG_TC), bool(r.flags & FLAG_AA), r.rcode) for r in replies] == [(True, True, 0)] * 4


def with_delegating_zone(env: Env) -> None:
    """The operator's own "test." zone (as the service loads one): its own names, a delegation
    with glue, and one to a server named outside it."""
    zone = load_zone_text(f"""$TTL 60
@ SOA ns hm 1 1 1 1 60
@ NS ns
ns A 192.168.0.53
portal A 198.18.0.7
example NS ns2.example
ns2.example A {EXAMPLE_TEST_2}
oob NS ns-oob.other.example.
""", "test.")
    local = LocalData(zones=[zone])
    env.engine.local_lookup = local.answer
    env.resolver.delegate([ForwardZone(cut.name, cut.addresses, recursive=False, ns_names=cut.ns_names)
                           for cut in local.delegations()])


async def test_names_below_a_local_zones_delegation_are_resolved_from_its_servers(env: Env) -> None:
    """From a bug hunt: a delegation in a [[dns.local_zone]] file answered RD=1 clients with a
    bare referral (no address for a stub resolver). The delegated names are resolved from the
    servers the zone names, as BIND and Unbound's auth-zone do; RD=0 still gets the referral."""
    with_delegating_zone(env)
    for _ in range(3):  # (the third from the caches: the referral is never kept for the fast path)
        www = await env.ask_message(query("www.example.test."))
        assert www.rcode == RCode.NOERROR and addresses(www) == ["192.0.2.80"] and not www.flags & FLAG_AA
        referral = await env.ask_message(query("www.example.test.", rd=False))
        assert not referral.answer and {rr.rtype for rr in referral.authority} == {RRType.NS}
    assert {q.address for q in env.net.log} == {EXAMPLE_TEST_2}  # never the public test. servers
    oob = await env.ask_message(query("www.oob.test."))  # its server's address found by resolution
    assert addresses(oob) == ["192.0.2.20"]
    assert addresses(await env.ask_message(query("portal.test."))) == ["198.18.0.7"]
    assert {q.address for q in env.net.log} & {TEST_1, TEST_2} == set()
    # A CNAME out of local data into the delegation is followed there too.
    env.engine.local_lookup = LocalData(zones=[load_zone_text(
        "$TTL 60\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A 192.168.0.53\nexample NS ns2.example\n"
        f"ns2.example A {EXAMPLE_TEST_2}\nalias CNAME www.example\n", "test.")]).answer
    alias = await env.ask_message(query("alias.test."))
    assert addresses(alias) == ["192.0.2.80"] and alias.answer[0].rtype == RRType.CNAME


async def test_a_local_zones_referral_carries_its_glue(env: Env) -> None:
    """From a code read: the referral RD=0 gets (RFC 1034 §4.3.2 step 3b) left out the glue the
    zone has for its servers, and a server named below the cut (ns2.example.test.) cannot be
    asked about otherwise: its own name is below the cut, answered with the same referral. The
    glue all fits, or the reply is TC (RFC 9471 §3), as from NSD."""
    with_delegating_zone(env)
    for name in ("www.example.test.", "ns2.example.test."):
        referral = await env.ask_message(query(name, rd=False))
        assert {rr.rtype for rr in referral.authority} == {RRType.NS} and not referral.flags & FLAG_TC
        assert [(rr.name, rr.rdata) for rr in referral.additional] == [
            (N("ns2.example.test."), IPv4Address(EXAMPLE_TEST_2).packed)]
    servers = "".join(f"sub NS ns{i}-{'x' * 40}.sub\nns{i}-{'x' * 40}.sub A 192.0.2.{i}\n" for i in range(8))
    env.engine.local_lookup = LocalData(zones=[load_zone_text(
        "$TTL 60\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A 192.168.0.53\n" + servers, "test.")]).answer
    over_udp = await env.ask_message(query("www.sub.test.", rd=False))  # 512 bytes: not all the glue
    assert over_udp.flags & FLAG_TC and not over_udp.authority and not over_udp.additional
    whole = await env.ask_message(query("www.sub.test.", rd=False, edns=1232))
    assert not whole.flags & FLAG_TC and len(whole.authority) == len(whole.additional) == 8


def test_a_local_zones_delegations_are_its_topmost_cuts() -> None:
    zone = load_zone_text("""$TTL 60
@ SOA ns hm 1 1 1 1 60
@ NS ns
ns A 192.168.0.53
a NS ns.a
ns.a A 198.18.0.1
ns.a AAAA 2001:db8::1
b.a NS ns.b.a
b NS ns.example.
""", "test.")
    found = {cut.name: (cut.ns_names, cut.addresses) for cut in LocalData(zones=[zone]).delegations()}
    assert found == {N("a.test."): ((N("ns.a.test."),), ("198.18.0.1", "2001:db8::1")),
                     N("b.test."): ((N("ns.example."),), ())}


async def test_local_answers_that_leave_local_data_stay_on_the_slow_path(env: Env) -> None:
    with_local(env)
    for _ in range(2):
        await env.ask_message(query("out.corp.example.test."))  # a CNAME to a resolved name
    assert env.fast(query("out.corp.example.test.")) is None


async def test_local_answers_keep_their_ttl_and_expire_with_it(env: Env) -> None:
    with_local(env)
    for _ in range(2):
        await env.ask_message(query("www.corp.example.test."))  # TTL 60
    env.clock.advance(30)
    raw = env.fast(query("www.corp.example.test."))
    assert raw is not None and decode_message(raw).answer[0].ttl == 60  # as written: no countdown
    env.clock.advance(31)
    assert env.fast(query("www.corp.example.test.")) is None


async def test_local_cname_leaving_local_data_is_resolved(env: Env) -> None:
    with_local(env)
    reply = await env.ask_message(query("out.corp.example.test."))
    assert [rr.rtype for rr in reply.answer] == [RRType.CNAME, RRType.A]
    assert addresses(reply) == ["192.0.2.10"]
    assert not reply.flags & FLAG_AA


async def test_a_local_cname_to_other_local_data_is_answered_from_it(env: Env) -> None:
    """From a review: a CNAME from one piece of local data to another (another static name,
    another zone, a lease name) was resolved on the Internet - an NXDOMAIN from the public
    tree, and the local name leaked upstream."""
    shadow = load_zone_text("$TTL 60\n@ SOA ns hm 1 1 1 1 60\n@ NS ns\nns A 192.168.0.53\n"
                            "portal CNAME portal.isp.test.\n", "corp.example.test.")
    local = LocalData(static_records=["portal.isp.test. 300 A 198.51.100.10",
                                      "www.isp.test. 300 CNAME portal.isp.test."], zones=[shadow])
    env.engine.local_lookup = local.answer
    for name in ("www.isp.test.", "portal.corp.example.test."):
        reply = await env.ask_message(query(name))
        assert reply.rcode == RCode.NOERROR and [rr.rtype for rr in reply.answer] == [RRType.CNAME, RRType.A]
        assert addresses(reply) == ["198.51.100.10"]
    assert env.net.log == []


async def test_a_local_cname_to_a_policed_name_gets_the_policys_answer(env: Env) -> None:
    """From a review: a CNAME out of local data to a blocked name handed out the blocked
    address; the policy applies to the names a local chain leads to as to a client's own."""
    env.engine.policy_lookup = Policy([compile_policy_zone(POLICY, "rpz.local.")]).match
    local = LocalData(static_records=["blk.home.test. 300 CNAME nx.example.test.",
                                      "redir.home.test. 300 CNAME anything.example.test."])
    env.engine.local_lookup = local.answer
    blocked = await env.ask_message(query("blk.home.test."))
    assert blocked.rcode == RCode.NXDOMAIN and [rr.rtype for rr in blocked.answer] == [RRType.CNAME]
    redirected = await env.ask_message(query("redir.home.test."))
    assert addresses(redirected) == ["10.10.10.10"]
    assert env.net.log == []


async def test_without_recursion_desired_a_local_chain_stops_where_local_data_ends(env: Env) -> None:
    with_local(env)
    reply = await env.ask_message(query("out.corp.example.test.", rd=False))
    assert reply.rcode == RCode.NOERROR and [rr.rtype for rr in reply.answer] == [RRType.CNAME]
    assert env.net.log == []


async def test_a_policy_rewrite_to_a_name_inside_a_chain_is_followed(env: Env) -> None:
    """From a review: chain → chain2 rewritten by the policy to www.other.example. ended with
    the CNAME, no address (and was cached so)."""
    rewrite = "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n" \
              "chain2.example.test CNAME www.other.example.\n"
    env.engine.policy_lookup = Policy([compile_policy_zone(rewrite, "rpz.local.")]).match
    for _ in range(2):  # resolved, then from the answer cache
        reply = await env.ask_message(query("chain.example.test.", do=True, edns=1232))
        assert [(rr.name, rr.rtype) for rr in reply.answer] == [
            (N("chain.example.test."), RRType.CNAME), (N("chain2.example.test."), RRType.CNAME),
            (N("www.other.example."), RRType.A)]
        assert addresses(reply) == ["192.0.2.10"] and not reply.flags & FLAG_AD


POLICY = """$TTL 300
@ SOA localhost. root.localhost. 1 3600 600 86400 60
@ NS localhost.
nx.example.test           CNAME .
nodata.example.test       CNAME *.
drop.example.test         CNAME rpz-drop.
www.example.test          CNAME rpz-passthru.
*.example.test            A 10.10.10.10
redirect.example.test     CNAME www.other.example.
tcp.example.test          CNAME rpz-tcp-only.
"""


@pytest.fixture
def policed(env: Env) -> Env:
    env.engine.policy_lookup = Policy([compile_policy_zone(POLICY, "rpz.local.")]).match
    return env


async def test_policy_nxdomain(policed: Env) -> None:
    reply = await policed.ask_message(query("nx.example.test."))
    assert reply.rcode == RCode.NXDOMAIN
    assert [rr.rtype for rr in reply.authority] == [RRType.SOA]
    assert policed.net.log == []


async def test_policy_nodata(policed: Env) -> None:
    reply = await policed.ask_message(query("nodata.example.test."))
    assert reply.rcode == RCode.NOERROR and reply.answer == []
    assert policed.net.log == []


async def test_policy_drop(policed: Env) -> None:
    assert await policed.ask(query("drop.example.test.")) is None
    assert sum(policed.engine.policy_hits.values()) == 1
    assert policed.net.log == []
    assert await policed.ask(query("drop.example.test.")) is None
    assert policed.fast(query("drop.example.test.")) is None  # never kept: the policy says nothing to send


async def test_policy_local_data(policed: Env) -> None:
    reply = await policed.ask_message(query("anything.example.test."))  # the wildcard trigger
    assert addresses(reply) == ["10.10.10.10"]
    assert reply.answer[0].name == N("anything.example.test.")
    aaaa = await policed.ask_message(query("anything.example.test.", RRType.AAAA))
    assert aaaa.rcode == RCode.NOERROR and aaaa.answer == []
    assert policed.net.log == []
    # The policy's answer is kept for the fast path (once asked twice), and a hit there counts
    # as a policy hit.
    assert policed.fast(query("anything.example.test.")) is None
    await policed.ask_message(query("anything.example.test."))
    hits = sum(policed.engine.policy_hits.values())
    fast = policed.fast(query("anything.example.test."))
    assert fast is not None and addresses(decode_message(fast)) == ["10.10.10.10"]
    assert sum(policed.engine.policy_hits.values()) == hits + 1
    policed.engine.forget_local_answers()  # the policy changed
    assert policed.fast(query("anything.example.test.")) is None


async def test_policy_applies_to_the_targets_of_a_chain(policed: Env) -> None:
    policed.net.zone("other.example.").add(
        _record("to-test.other.example.", RRType.CNAME, N("alias.example.test.")))
    reply = await policed.ask_message(query("to-test.other.example."))
    assert [(rr.name, rr.rtype) for rr in reply.answer] == [(N("to-test.other.example."), RRType.CNAME),
                                                          (N("alias.example.test."), RRType.A)]
    assert addresses(reply) == ["10.10.10.10"]


async def test_a_policed_target_of_a_chain_is_never_asked_of_its_servers(policed: Env) -> None:
    """From a bug hunt: the chain was resolved to its end and cut afterwards, so the servers of
    a blocked name (a malware domain's, a tracker's behind CNAME cloaking) still heard each
    subscriber who reached it through a CNAME - the query name itself never is asked - and
    when they did not answer, the client waited for their timeouts: past the request timeout,
    SERVFAIL, the policy's answer lost with the chain. Unbound stops at such a target."""
    policed.net.zone("other.example.").add(
        _record("to-test.other.example.", RRType.CNAME, N("alias.example.test.")))
    policed.net.zone("other.example.").add(
        _record("to-nx.other.example.", RRType.CNAME, N("nx.example.test.")))
    reply = await policed.ask_message(query("to-test.other.example."))
    assert addresses(reply) == ["10.10.10.10"]
    nx = await policed.ask_message(query("to-nx.other.example."))
    assert nx.rcode == RCode.NXDOMAIN and [rr.rtype for rr in nx.answer] == [RRType.CNAME]
    with_dns64(policed)  # nor the A question DNS64 asks for the chain's end
    aaaa = await policed.ask_message(query("to-nx.other.example.", RRType.AAAA))
    assert aaaa.rcode == RCode.NXDOMAIN
    sent = [name for name, _ in policed.net.names_sent()]
    assert "alias.example.test." not in sent and "nx.example.test." not in sent
    assert not any(name.endswith("example.test.") for name in sent)
    # The servers of the blocked names' zone do not answer: the policy's answer all the same.
    for address in (EXAMPLE_TEST_1, EXAMPLE_TEST_2):
        policed.net.misbehave(address, handler=lambda message, reply: None)
    policed.net.zone("other.example.").add(
        _record("to-drop.other.example.", RRType.CNAME, N("gone.example.test.")))
    dropped = await policed.ask_message(query("to-drop.other.example."))
    assert dropped.rcode == RCode.NOERROR and addresses(dropped) == ["10.10.10.10"]


async def test_a_chain_cut_by_the_policy_counts_as_a_hit_for_each_query_from_the_cache_too(policed: Env) -> None:
    """From a bug hunt: a CNAME chain into a blocked name counted one policy hit when it was
    resolved, none for the queries the answer cache answered after it (a name asked directly
    counts every time): a family filter that mostly blocks CNAME-cloaked trackers looked idle."""
    policed.net.zone("other.example.").add(
        _record("to-nx.other.example.", RRType.CNAME, N("nx.example.test.")))
    policed.net.zone("other.example.").add(
        _record("to-www.other.example.", RRType.CNAME, N("www.other.example.")))
    for asked in range(1, 4):  # resolved, then from the cache over TCP (the slow path)
        reply = await policed.ask_message(query("to-nx.other.example."), tcp=asked > 1)
        assert reply.rcode == RCode.NXDOMAIN and [rr.rtype for rr in reply.answer] == [RRType.CNAME]
        assert policed.engine.policy_hits[PolicyAction.NXDOMAIN] == asked
    assert policed.fast(query("to-nx.other.example.")) is not None
    assert policed.engine.policy_hits[PolicyAction.NXDOMAIN] == 4
    for _ in range(2):  # a chain no trigger cuts is no policy hit, from the cache neither
        assert addresses(await policed.ask_message(query("to-www.other.example."))) == ["192.0.2.10"]
    assert sum(policed.engine.policy_hits.values()) == 4


async def test_policy_cname_to_elsewhere_is_followed(policed: Env) -> None:
    reply = await policed.ask_message(query("redirect.example.test."))
    assert [rr.rtype for rr in reply.answer] == [RRType.CNAME, RRType.A]
    assert addresses(reply) == ["192.0.2.10"]


async def test_policy_passthru(policed: Env) -> None:
    reply = await policed.ask_message(query("www.example.test."))
    assert addresses(reply) == ["192.0.2.80"]  # resolved for real: not the wildcard's 10.10.10.10
    assert ("www.example.test.", "A") in policed.net.names_sent()
    # Each query the trigger let through counts, the cache's answers too (as Unbound's
    # num.rpz.action.rpz-passthru): an operator's exception is seen to work.
    assert policed.engine.policy_hits[PolicyAction.PASSTHRU] == 1
    await policed.ask_message(query("www.example.test."))
    assert policed.engine.policy_hits[PolicyAction.PASSTHRU] == 2
    assert policed.fast(query("www.example.test.")) is not None
    assert policed.engine.policy_hits[PolicyAction.PASSTHRU] == 3
    for _ in range(2):  # a name no trigger matched, from the cache too, is no policy hit
        await policed.ask_message(query("www.other.example."))
    assert policed.fast(query("www.other.example.")) is not None
    assert policed.engine.policy_hits[PolicyAction.PASSTHRU] == 3


async def test_policy_tcp_only(policed: Env) -> None:
    udp = await policed.ask_message(query("tcp.example.test."))
    assert udp.flags & FLAG_TC and udp.answer == []
    # Counted as a reply like any other (a bug hunt found the TC reply missing from
    # ispd_dns_answers_total, so the replies by rcode added up to fewer than the queries).
    assert policed.engine.rcodes[RCode.NOERROR] == 1
    tcp = await policed.ask_message(query("tcp.example.test."), tcp=True)
    assert tcp.rcode == RCode.NXDOMAIN  # resolved for real over TCP
    for _ in range(2):
        await policed.ask(query("tcp.example.test."))
        await policed.ask(query("tcp.example.test."), tcp=True)
    assert policed.fast(query("tcp.example.test.")) is None  # never kept: UDP must keep getting TC


async def test_policy_tcp_only_is_served_stale_when_the_upstreams_fail(env: Env) -> None:
    """RFC 8767 for a name the policy answers only over TCP: those answers are never kept in the
    answer cache, so the stale answer is the one the RRset cache still makes."""
    tcp_only = "$TTL 300\n@ SOA localhost. root.localhost. 1 3600 600 86400 60\n@ NS localhost.\n" \
               "www.example.test CNAME rpz-tcp-only.\n"
    env.engine.policy_lookup = Policy([compile_policy_zone(tcp_only, "rpz.local.")]).match
    assert addresses(await env.ask_message(query("www.example.test."), tcp=True)) == ["192.0.2.80"]
    env.clock.advance(3700)  # past every expiry
    for address in env.net.servers:
        env.net.misbehave(address, timeout=True)
    reply = await env.ask_message(query("www.example.test."), tcp=True)
    assert reply.rcode == RCode.NOERROR and addresses(reply) == ["192.0.2.80"]
    assert [rr.ttl for rr in reply.answer] == [30]
    assert env.engine.stats.stale_answers == 1
    udp = await env.ask_message(query("www.example.test."))
    assert udp.flags & FLAG_TC and udp.answer == []  # still TCP only


async def test_walled_client_gets_the_walled_answer(env: Env) -> None:
    garden = WalledGarden(WalledGardenConfig(portal_ipv4=IPv4Address("192.0.2.250"), allow=["other.example."], ttl=30))
    env.engine.walled_lookup = garden.lookup
    await env.ask(query("www.example.test."))  # cached for everyone
    env.engine.set_walled(frozenset({CLIENT}))
    assert env.fast(query("www.example.test.")) is None  # walled clients never take the fast path
    reply = await env.ask_message(query("www.example.test."))
    assert addresses(reply) == ["192.0.2.250"]
    assert reply.answer[0].ttl == 30
    aaaa = await env.ask_message(query("www.example.test.", RRType.AAAA))
    assert aaaa.rcode == RCode.NOERROR and aaaa.answer == []
    allowed = await env.ask_message(query("www.other.example."))
    assert addresses(allowed) == ["192.0.2.10"]
    assert env.engine.stats.walled_answers == 2
    other = await env.ask_message(query("www.example.test."), OTHER_CLIENT)
    assert addresses(other) == ["192.0.2.80"]
    env.engine.set_walled(frozenset())
    assert addresses(await env.ask_message(query("www.example.test."))) == ["192.0.2.80"]


# --- rate limiting ----------------------------------------------------------------------------------

async def test_rate_limiting_drops_beyond_the_burst() -> None:
    env = make_env(rate_limit_qps=2)  # burst of 4
    replies = [await env.ask(query("www.example.test.", msg_id=i)) for i in range(6)]
    assert [r is not None for r in replies] == [True, True, True, True, False, False]
    assert env.engine.stats.rate_limited == 2
    assert env.fast(query("www.example.test.")) is None  # the fast path does not answer either
    assert await env.ask(query("www.example.test."), OTHER_CLIENT) is not None  # per client
    env.clock.advance(1)  # two more tokens
    assert env.fast(query("www.example.test.")) is not None
    assert await env.ask(query("www.example.test.")) is not None
    assert await env.ask(query("www.example.test.")) is None


def test_a_flood_from_many_sources_does_not_give_a_limited_client_a_new_burst() -> None:
    limiter = RateLimiter(2)  # burst of 4
    for _ in range(4):
        assert limiter.allow(CLIENT, 0.0)
    assert not limiter.allow(CLIENT, 0.0)
    for i in range(RateLimiter.MAX_CLIENTS + 10):  # one query each: more clients than the table holds
        limiter.allow(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 0.1 + i * 1e-6)
        if i % 20_000 == 0:
            limiter.allow(CLIENT, 0.1 + i * 1e-6)  # still asking, still limited
    assert len(limiter.buckets) <= RateLimiter.MAX_CLIENTS
    assert not limiter.allow(CLIENT, 0.3)
    assert limiter.allow(CLIENT, 1.0)  # its tokens come back at its rate, no faster


def test_an_ipv6_client_is_rate_limited_by_its_64() -> None:
    limiter = RateLimiter(2)  # burst of 4
    assert [limiter.allow(f"2001:db8:7::{i}", 0.0) for i in range(2, 7)] == [True] * 4 + [False]
    assert limiter.allow("2001:db8:8::2", 0.0)


async def test_rate_limited_queries_over_a_connection_are_refused_not_dropped() -> None:
    """A connection's source is no forgery, and its client waits for each reply."""
    env = make_env(rate_limit_qps=1)  # burst of 2
    for _ in range(2):
        assert (await env.ask_message(query("www.example.test."), tcp=True)).rcode == RCode.NOERROR
    refused = await env.ask_message(query("www.example.test.", edns=1232), tcp=True)
    assert refused.rcode == RCode.REFUSED and refused.edns is not None
    for _ in range(2):  # (UDP's queries are counted apart)
        assert await env.ask(query("www.example.test.")) is not None
    assert await env.ask(query("www.example.test.")) is None  # over UDP: silence


async def test_udp_queries_forged_from_a_clients_address_do_not_get_its_connections_refused() -> None:
    """From a bug hunt: UDP and the connections shared one bucket per client, so UDP queries
    forged from a subscriber's address (200 a second against a limit of 20) got 8 of its 10 DoT
    queries refused. A connection's source is proven by its handshake: its queries have a bucket
    of their own, which a forger cannot reach."""
    env = make_env(rate_limit_qps=1)  # burst of 2
    await env.ask(query("www.example.test."))  # (in the cache: the fast path too)
    for _ in range(50):  # the forger's flood
        env.fast(query("www.example.test."))
        await env.ask(query("www.example.test."))
    assert await env.ask(query("www.example.test.")) is None  # UDP from that address is limited
    assert env.fast(query("www.example.test."), tcp=True) is not None
    assert (await env.ask_message(query("www.example.test."), tcp=True)).rcode == RCode.NOERROR
    refused = await env.ask_message(query("www.example.test."), tcp=True)  # and its own limit holds
    assert refused.rcode == RCode.REFUSED


async def test_limits_change_with_set_limits() -> None:
    env = make_env()
    assert all([await env.ask(query("www.example.test.", msg_id=i)) for i in range(10)])
    env.engine.set_limits(rate_limit_qps=1, request_timeout=8, stale_answer_ttl=30, stale_client_timeout=1.8)
    replies = [await env.ask(query("www.example.test.", msg_id=i)) for i in range(4)]
    assert [r is not None for r in replies] == [True, True, False, False]
    env.engine.set_limits(rate_limit_qps=0, request_timeout=8, stale_answer_ttl=30, stale_client_timeout=1.8)
    assert await env.ask(query("www.example.test.")) is not None


async def test_refused_clients_are_not_rate_limited_into_silence_but_answered_refused() -> None:
    env = make_env(rate_limit_qps=1)
    for _ in range(5):
        reply = await env.ask_message(query("www.example.test."), OUTSIDER)
        assert reply.rcode == RCode.REFUSED


async def test_records_with_ttl_0_are_never_served_stale() -> None:
    """From a code read of the caches: an answer with TTL 0 (RFC 1035 §3.2.1: for the
    transaction in progress only, not cached) was kept in both caches as expired at once, and
    served as a stale answer (TTL 30) for the whole ``stale_seconds`` when the servers failed:
    data that was never fresh, handed out for a day. A negative answer whose SOA has TTL or
    MINIMUM 0 likewise."""
    env = make_env(stale_seconds=86400)
    env.net.zone("example.test.").add(RR(N("zero.example.test."), RRType.A, CLASS_IN, 0, bytes([192, 0, 2, 200])))
    env.net.servers[OTHER] = [load_zone_text("""
$ORIGIN other.example.
$TTL 3600
@    0 SOA ns1 hostmaster 1 7200 900 1209600 0
@      NS  ns1
ns1    A   10.4.0.1
""", "other.example.")]
    first = await env.ask_message(query("zero.example.test."))
    assert addresses(first) == ["192.0.2.200"] and first.answer[0].ttl == 0
    denied = await env.ask_message(query("nx.other.example."))
    assert denied.rcode == RCode.NXDOMAIN and [rr.ttl for rr in denied.authority] == [0]
    env.clock.advance(1)
    for address in env.net.servers:
        env.net.misbehave(address, timeout=True)
    assert (await env.ask_message(query("zero.example.test."))).rcode == RCode.SERVFAIL
    assert (await env.ask_message(query("nx.other.example."))).rcode == RCode.SERVFAIL
    assert env.engine.stats.stale_answers == 0


@pytest.mark.parametrize("prefix", ["fd00:64::/96", "2001:db8:64::/96"])
async def test_dns64_reverse_mapping_under_a_locally_served_zone(env: Env, prefix: str) -> None:
    """A network-specific DNS64 prefix in ULA space (fd00::/8) or the documentation prefix lies
    in a locally served zone (d.f.ip6.arpa., 8.b.d.0.1.0.0.2.ip6.arpa.): the PTR of an address
    made under it is still mapped to the IPv4 address's (RFC 6147 §5.3.1), not NXDOMAIN from the
    default zone; the rest of the zone stays local."""
    from ispd.dns.defaultzones import DefaultZones

    with_dns64(env)
    env.engine.dns64 = DNS64(IPv6Network(prefix))
    env.engine.default_lookup = DefaultZones("all").answer
    ptr = IPv6Address(IPv6Network(prefix).network_address + 0xC0000207).reverse_pointer + "."
    mapped = await env.ask_message(query(ptr, RRType.PTR))
    assert mapped.answer and mapped.answer[0].rtype == RRType.CNAME, mapped
    again = await env.ask_message(query(ptr, RRType.PTR))  # (and the second time, once kept)
    assert again.answer and again.answer[0].rtype == RRType.CNAME
    other = IPv6Address(IPv6Network(prefix).network_address + (1 << 40)).reverse_pointer + "."
    assert (await env.ask_message(query(other, RRType.PTR))).rcode == RCode.NXDOMAIN
