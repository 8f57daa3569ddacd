"""What a validating resolver's clients see: AD, RRSIGs only with DO, CD, bogus as SERVFAIL with
an Extended DNS Error, and one answer-cache entry per combination of those bits."""

from __future__ import annotations

import struct
from ipaddress import IPv6Address, IPv6Network, ip_network
from typing import Any

import pytest

from ispd.dns.cache import VARIANT_VIEW, AnswerCache, CacheLimits, Security
from ispd.dns.dns64 import DNS64
from ispd.dns.engine import DNSEngine
from ispd.dns.resolver import Resolution
from ispd.dns.wire import (
    FLAG_AD,
    FLAG_CD,
    OPTION_EDE,
    RR,
    Message,
    RCode,
    RRType,
    decode_message,
    encode_query,
    name_from_text,
)
from ispd.dns.zonelimit import ZoneRateLimiter
from tests.dns.fakenet import FakeClock

N = name_from_text
CLIENT = "192.168.1.10"
A_RDATA = b"\xc6\x12\x05\x01"
SOA_RDATA = N("ns.secure.test") + N("hostmaster.secure.test") + struct.pack("!5I", 1, 7200, 900, 1209600, 300)
SIG = RR(N("www.secure.test"), RRType.RRSIG, 1, 300, b"\x00\x01" + bytes(40))


class ScriptedResolver:
    """Answers every question with the resolution set for it, counting the questions."""

    def __init__(self) -> None:
        self.validator: Any = object()  # only its presence matters to the engine
        self.resolutions: dict[bytes, Resolution] = {}
        self.asked = 0
        self.zone_limiter = ZoneRateLimiter(0, 10)

    async def resolve(self, name: bytes, qtype: int, **_: Any) -> Resolution:
        self.asked += 1
        return self.resolutions[name]


def make(security: Security, ede: int = -1) -> tuple[DNSEngine, ScriptedResolver]:
    resolver = ScriptedResolver()
    resolver.resolutions[N("www.secure.test")] = Resolution(
        RCode.NOERROR, [RR(N("www.secure.test"), RRType.A, 1, 300, A_RDATA), SIG], security=security, ede=ede)
    engine = DNSEngine(resolver, AnswerCache(CacheLimits()), FakeClock(),  # type: ignore[arg-type]
                       allow=[ip_network("192.168.0.0/16")])
    return engine, resolver


def query(*, do: bool = False, ad: bool = False, cd: bool = False, edns: bool = True) -> bytes:
    data = bytearray(encode_query(0x1234, N("www.secure.test"), RRType.A, rd=True, cd=cd, do=do,
                                  udp_size=1232 if edns else None))
    if ad:
        data[3] |= FLAG_AD
    return bytes(data)


async def ask(engine: DNSEngine, data: bytes) -> Message:
    engine.client_class(CLIENT)
    fast = engine.answer_from_cache(data, CLIENT, False)
    reply = fast if fast is not None else await engine.answer(data, CLIENT, tcp=False)
    assert reply is not None
    return decode_message(reply)


@pytest.mark.parametrize("bits", [{}, {"do": True}, {"ad": True}, {"cd": True}, {"do": True, "cd": True}])
async def test_secure_answer_has_ad_only_when_asked_and_sigs_only_with_do(bits: dict[str, bool]) -> None:
    engine, _ = make(Security.SECURE)
    for _ in range(2):  # the slow path, then the answer cache's fast path
        reply = await ask(engine, query(**bits))
        assert reply.rcode == RCode.NOERROR
        assert bool(reply.flags & FLAG_AD) == bool(bits.get("do") or bits.get("ad"))
        assert [rr.rtype for rr in reply.answer] == ([RRType.A, RRType.RRSIG] if bits.get("do") else [RRType.A])
        assert bool(reply.flags & FLAG_CD) == bool(bits.get("cd"))


async def test_a_question_for_rrsigs_gets_no_ad() -> None:
    """RRSIGs are not an RRset a validator checks (RFC 4035 §3.2.3): no AD, as from Unbound."""
    engine, _ = make(Security.SECURE)
    for _ in range(2):
        data = encode_query(0x1234, N("www.secure.test"), RRType.RRSIG, rd=True, do=True, udp_size=1232)
        reply = await ask(engine, data)
        assert reply.rcode == RCode.NOERROR and reply.answer and not reply.flags & FLAG_AD


async def test_insecure_answer_never_has_ad() -> None:
    engine, _ = make(Security.INSECURE)
    for _ in range(2):
        reply = await ask(engine, query(do=True, ad=True))
        assert reply.rcode == RCode.NOERROR and not reply.flags & FLAG_AD


async def test_bogus_is_servfail_with_ede_and_not_cached_but_cd_gets_the_data() -> None:
    engine, resolver = make(Security.BOGUS, ede=7)
    for _ in range(2):
        reply = await ask(engine, query(do=True))
        assert reply.rcode == RCode.SERVFAIL and not reply.answer
        assert reply.edns is not None
        code, length, info = struct.unpack_from("!HHH", reply.edns.options)
        assert (code, length, info) == (OPTION_EDE, 2, 7)
    assert resolver.asked == 2  # never from the answer cache: the RRset cache keeps the verdict
    reply = await ask(engine, query(cd=True))
    assert reply.rcode == RCode.NOERROR and [rr.rtype for rr in reply.answer] == [RRType.A]
    assert not reply.flags & FLAG_AD
    # Without EDNS there is nowhere to put the code: a plain SERVFAIL.
    reply = await ask(engine, query(edns=False))
    assert reply.rcode == RCode.SERVFAIL and reply.edns is None


async def test_insecure_for_nsec3_iterations_says_so_every_time() -> None:
    """From a bug hunt: an answer insecure because its zone's NSEC3 chain has more iterations than
    validators work with carried no EDE 27 (RFC 9276 §3.2), and once it did, the answer cache's
    fast path dropped it from the second reply on."""
    engine, resolver = make(Security.INSECURE, ede=27)
    for _ in range(2):
        reply = await ask(engine, query(do=True))
        assert reply.rcode == RCode.NOERROR and reply.answer and not reply.flags & FLAG_AD
        assert reply.edns is not None
        assert struct.unpack_from("!HHH", reply.edns.options) == (OPTION_EDE, 2, 27)
    assert resolver.asked == 2  # the RRset cache keeps the code; the answer cache could not send it
    # Other reasons to be insecure (an unsupported algorithm's EDE 1) stay as they were: no EDE.
    engine, _ = make(Security.INSECURE, ede=1)
    reply = await ask(engine, query(do=True))
    assert reply.edns is not None and not reply.edns.options


async def test_variants_are_cached_apart_and_flushed_together() -> None:
    engine, resolver = make(Security.SECURE)
    for bits in ({}, {"do": True}, {"ad": True}, {}, {"do": True}, {"ad": True}):
        await ask(engine, query(**bits))
    assert resolver.asked == 3
    assert len(engine.answers) == 3
    assert engine.answers.flush(N("www.secure.test")) == 3
    assert len(engine.answers) == 0


@pytest.mark.parametrize("view", [0, VARIANT_VIEW])
@pytest.mark.parametrize("do", [False, True])
async def test_dns64_clients_questions_with_ad_and_cd_are_answered(do: bool, view: int) -> None:
    """From a review: a [dns.dns64] client's AAAA question with AD and CD set made a key variant
    (0x32, 0x33 with DO) past the table of variant suffixes: IndexError on both paths, no
    answer. With DO and CD the client validates for itself: no records made (RFC 6147 §5.5)."""
    engine, resolver = make(Security.INSECURE)
    name = N("www.secure.test")
    by_type = {RRType.A: Resolution(RCode.NOERROR, [RR(name, RRType.A, 1, 300, A_RDATA)], security=Security.INSECURE),
               RRType.AAAA: Resolution(RCode.NOERROR, [], [RR(N("secure.test"), RRType.SOA, 1, 300, SOA_RDATA)],
                                       security=Security.INSECURE)}  # (a NODATA without SOA is not cached)

    async def resolve(asked: bytes, qtype: int, **_: Any) -> Resolution:
        return by_type[RRType(qtype)]

    resolver.resolve = resolve  # type: ignore[method-assign]
    engine.set_dns64(DNS64(IPv6Network("2001:db8:64::/96")), [ip_network("192.168.1.0/24")])
    engine.client_view = lambda address: view  # (with every scope's bit: the highest variant there is)
    data = bytearray(encode_query(0x1234, name, RRType.AAAA, rd=True, cd=True, do=do, udp_size=1232))
    data[3] |= FLAG_AD
    for _ in range(2):  # the slow path, then the fast path
        reply = await ask(engine, bytes(data))
        assert reply.rcode == RCode.NOERROR
        assert [rr.rdata for rr in reply.answer if rr.rtype == RRType.AAAA] == \
            ([] if do else [IPv6Address("2001:db8:64::c612:501").packed])
    assert len(engine.answers.variants) == 1
    engine.answers.discard(name + struct.pack("!HH", RRType.AAAA, 1))  # a plain key takes its variants along
    assert len(engine.answers) == 0
