"""The RRset cache (trust, TTLs, negative entries, stale, flush, memory) and the wire answer cache."""

from __future__ import annotations

import gc
import os
import random
import struct
import tracemalloc
from collections.abc import Callable

import pytest

from ispd.dns.cache import (
    VARIANT_AD,
    VARIANT_DO,
    VARIANT_SCOPES,
    AnswerCache,
    CachedAnswer,
    CacheLimits,
    NegativeEntry,
    NegativeKind,
    RRsetCache,
    RRsetEntry,
    Trust,
)
from ispd.dns.wire import (
    CLASS_IN,
    FLAG_QR,
    FLAG_RA,
    RR,
    Question,
    RRType,
    a_rdata,
    decode_message,
    encode_message,
    key_of,
    name_from_text,
)

N = name_from_text
NOW = 1000.0
A1, A2 = a_rdata("192.0.2.1"), a_rdata("192.0.2.2")
SOA = RR(N("example."), RRType.SOA, CLASS_IN, 300,
         N("ns.example.") + N("hm.example.") + struct.pack("!IIIII", 1, 2, 3, 4, 60))


def cache(**limits: int) -> RRsetCache:
    return RRsetCache(CacheLimits(**limits))


# --- RRsets ---------------------------------------------------------------------------------------

def test_put_and_get_with_ttl_counting_down() -> None:
    c = cache()
    entry = c.put(N("www.example."), RRType.A, 300, (A1, A2), Trust.ANSWER, NOW)
    assert entry is not None
    got = c.get(N("www.example."), RRType.A, NOW + 100)
    assert got is entry
    assert got.ttl_left(NOW + 100) == 200
    assert [(rr.ttl, rr.rdata) for rr in got.records(NOW + 100.7)] == [(199, A1), (199, A2)]
    assert c.get(N("www.example."), RRType.AAAA, NOW) is None
    assert c.get(N("www.example."), RRType.A, NOW + 300) is None  # expired at exactly its TTL
    assert len(c) == 1


@pytest.mark.parametrize(
    ("old", "new", "replaced"),
    [
        (Trust.ANSWER, Trust.GLUE, False),
        (Trust.ANSWER, Trust.REFERRAL, False),
        (Trust.AUTHORITY, Trust.REFERRAL, False),
        (Trust.LOCAL, Trust.ANSWER, False),
        (Trust.GLUE, Trust.ANSWER, True),
        (Trust.REFERRAL, Trust.AUTHORITY, True),
        (Trust.GLUE, Trust.GLUE, True),  # the same credibility: the newer data
        (Trust.ANSWER, Trust.ANSWER, True),
    ],
)
def test_trust_ranking_while_fresh(old: Trust, new: Trust, replaced: bool) -> None:
    c = cache()
    c.put(N("ns.example."), RRType.A, 300, (A1,), old, NOW)
    result = c.put(N("ns.example."), RRType.A, 300, (A2,), new, NOW + 10)
    entry = c.get(N("ns.example."), RRType.A, NOW + 10)
    assert entry is not None
    assert (result is not None) is replaced
    assert entry.rdatas == ((A2,) if replaced else (A1,))
    assert entry.trust == (new if replaced else old)


def test_less_trusted_data_replaces_an_expired_entry() -> None:
    c = cache()
    c.put(N("ns.example."), RRType.A, 60, (A1,), Trust.ANSWER, NOW)
    assert c.put(N("ns.example."), RRType.A, 300, (A2,), Trust.GLUE, NOW + 60) is not None
    entry = c.get(N("ns.example."), RRType.A, NOW + 60)
    assert entry is not None and entry.rdatas == (A2,) and entry.trust == Trust.GLUE


@pytest.mark.parametrize(("ttl", "expected"), [(0, 30), (10, 30), (30, 30), (500, 500), (86400, 3600), (2**31 - 1, 3600)])
def test_ttl_clamped(ttl: int, expected: int) -> None:
    c = cache(min_ttl=30, max_ttl=3600)
    entry = c.put(N("a.example."), RRType.A, ttl, (A1,), Trust.ANSWER, NOW)
    assert entry is not None and entry.ttl == expected and entry.expires_at == NOW + expected


# --- negative entries -----------------------------------------------------------------------------

def test_nxdomain_covers_every_type_of_the_name() -> None:
    c = cache()
    entry = c.put_negative(N("nx.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, NOW)
    assert entry.expires_at == NOW + 300
    for rtype in (RRType.A, RRType.AAAA, RRType.MX):
        got = c.get_negative(N("nx.example."), rtype, NOW + 10)
        assert got is entry and got.kind == NegativeKind.NXDOMAIN
    assert c.get_negative(N("other.example."), RRType.A, NOW) is None
    assert c.get(N("nx.example."), RRType.A, NOW) is None  # a negative entry is not an RRset
    [soa] = entry.soa_record(NOW + 100)
    assert soa.ttl == 200 and soa.rdata == SOA.rdata and soa.name == SOA.name


def test_nodata_is_per_type() -> None:
    c = cache()
    c.put_negative(N("www.example."), RRType.MX, NegativeKind.NODATA, SOA, NOW)
    got = c.get_negative(N("www.example."), RRType.MX, NOW)
    assert got is not None and got.kind == NegativeKind.NODATA
    assert c.get_negative(N("www.example."), RRType.A, NOW) is None


@pytest.mark.parametrize(
    ("soa_ttl", "limits", "expected"),
    [
        (300, {}, 300),
        (7200, {}, 3600),  # max_negative_ttl
        (7200, {"max_negative_ttl": 900}, 900),
        (0, {"min_ttl": 20}, 20),  # the floor applies to negative answers too
        (10, {"min_ttl": 20, "max_negative_ttl": 15}, 15),  # but never past the negative maximum
        (None, {}, 5),  # no SOA: cached briefly
    ],
)
def test_negative_ttl(soa_ttl: int | None, limits: dict[str, int], expected: int) -> None:
    c = cache(**limits)
    soa = None if soa_ttl is None else RR(SOA.name, SOA.rtype, SOA.rclass, soa_ttl, SOA.rdata)
    entry = c.put_negative(N("nx.example."), RRType.A, NegativeKind.NXDOMAIN, soa, NOW)
    assert entry.expires_at == NOW + expected
    if soa is not None:
        assert entry.soa is not None and entry.soa.ttl == expected
    else:
        assert entry.soa_record(NOW) == []


def test_negative_entry_expires() -> None:
    c = cache()
    c.put_negative(N("nx.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, NOW)
    assert c.get_negative(N("nx.example."), RRType.A, NOW + 299.9) is not None
    assert c.get_negative(N("nx.example."), RRType.A, NOW + 300) is None


def test_positive_data_ends_an_nxdomain_and_a_nodata() -> None:
    c = cache()
    c.put_negative(N("x.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, NOW)
    c.put_negative(N("y.example."), RRType.A, NegativeKind.NODATA, SOA, NOW)
    c.put(N("x.example."), RRType.AAAA, 300, (b"\x00" * 16,), Trust.ANSWER, NOW)
    c.put(N("y.example."), RRType.A, 300, (A1,), Trust.ANSWER, NOW)
    assert c.get_negative(N("x.example."), RRType.A, NOW) is None
    assert c.get_negative(N("y.example."), RRType.A, NOW) is None
    assert c.get(N("y.example."), RRType.A, NOW) is not None


def test_a_cname_does_not_end_the_nxdomain_of_its_owner() -> None:
    # The resolver keys an NXDOMAIN at the end of a chain to the target; a CNAME at a name says
    # nothing about that, so the entry is left (this is what the cache does, documented here).
    c = cache()
    c.put_negative(N("x.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, NOW)
    c.put(N("x.example."), RRType.CNAME, 300, (N("y.example."),), Trust.ANSWER, NOW)
    assert c.get_negative(N("x.example."), RRType.A, NOW) is not None


def test_forget_nxdomain() -> None:
    c = cache()
    c.put_negative(N("x.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, NOW)
    c.put_negative(N("x.example."), RRType.MX, NegativeKind.NODATA, SOA, NOW)
    size = c.size_bytes
    c.forget_nxdomain(N("x.example."))
    c.forget_nxdomain(N("never.example."))
    assert c.get_negative(N("x.example."), RRType.A, NOW) is None
    assert c.get_negative(N("x.example."), RRType.MX, NOW) is not None
    assert c.size_bytes < size


def test_lower_ttl_limits_shorten_what_is_cached_already() -> None:
    """A reload that lowers max_ttl and max_negative_ttl: entries cached under the old limits
    expire within the new ones (the answer cache, which the reload empties, is rebuilt from
    these; keeping an hour-long RRset would repeat it for an hour under a max_ttl of 60)."""
    c = cache()
    c.put(N("www.example."), RRType.A, 3600, (A1,), Trust.ANSWER, NOW)
    c.put(N("short.example."), RRType.A, 30, (A1,), Trust.ANSWER, NOW)
    c.put_negative(N("nx.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, NOW)
    c.set_limits(CacheLimits(max_ttl=60, max_negative_ttl=20), now=NOW + 10)
    www = c.get(N("www.example."), RRType.A, NOW + 10)
    assert www is not None and www.ttl_left(NOW + 10) == 60 and www.ttl == 60
    assert c.get(N("www.example."), RRType.A, NOW + 70) is None
    short = c.get(N("short.example."), RRType.A, NOW + 10)
    assert short is not None and short.ttl_left(NOW + 10) == 20  # within the new limit: as it was
    assert c.get_negative(N("nx.example."), RRType.A, NOW + 29) is not None
    assert c.get_negative(N("nx.example."), RRType.A, NOW + 30) is None


# --- stale ------------------------------------------------------------------------------------------

def test_stale_window() -> None:
    c = cache(stale_seconds=600)
    c.put(N("www.example."), RRType.A, 60, (A1,), Trust.ANSWER, NOW)
    c.put_negative(N("nx.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, NOW)
    later = NOW + 60 + 300
    assert c.get(N("www.example."), RRType.A, later) is None
    stale = c.get_stale(N("www.example."), RRType.A, later)
    assert stale is not None
    assert [rr.ttl for rr in stale.records(later, stale_ttl=30)] == [30]
    assert c.get_negative(N("nx.example."), RRType.A, NOW + 300 + 100) is None
    negative = c.get_negative(N("nx.example."), RRType.A, NOW + 300 + 100, stale=True)
    assert negative is not None and negative.soa_record(NOW + 400, stale_ttl=30)[0].ttl == 30
    assert c.get_stale(N("www.example."), RRType.A, NOW + 60 + 600) is None  # past the window
    assert c.get_negative(N("nx.example."), RRType.A, NOW + 300 + 600, stale=True) is None


def test_no_stale_by_default() -> None:
    c = cache()
    c.put(N("www.example."), RRType.A, 60, (A1,), Trust.ANSWER, NOW)
    assert c.get_stale(N("www.example."), RRType.A, NOW + 59) is not None  # still fresh
    assert c.get_stale(N("www.example."), RRType.A, NOW + 60) is None


# --- flush and clear --------------------------------------------------------------------------------

def _filled() -> RRsetCache:
    c = cache()
    for name in ("example.", "www.example.", "a.b.example.", "wwwexample.", "other."):
        c.put(N(name), RRType.A, 300, (A1,), Trust.ANSWER, NOW)
        c.put(N(name), RRType.AAAA, 300, (b"\x00" * 16,), Trust.ANSWER, NOW)
    c.put_negative(N("nx.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, NOW)
    return c


def test_flush_one_name_every_type() -> None:
    c = _filled()
    before = c.size_bytes
    assert c.flush(N("www.example.")) == 2
    assert c.get(N("www.example."), RRType.A, NOW) is None
    assert c.get(N("example."), RRType.A, NOW) is not None
    assert c.get(N("a.b.example."), RRType.A, NOW) is not None
    assert c.size_bytes < before


def test_flush_subtree() -> None:
    c = _filled()
    assert c.flush(N("example."), subtree=True) == 7  # example, www, a.b (2 each) and the NXDOMAIN
    remaining = sorted({e.name for e in c.entries()})
    assert remaining == sorted([N("wwwexample."), N("other.")])  # a label boundary, not a suffix


def test_clear() -> None:
    c = _filled()
    c.clear()
    assert len(c) == 0 and c.size_bytes == 0


def test_entries_iterates_over_a_snapshot() -> None:
    c = _filled()
    for entry in c.entries():
        c.flush(entry.name)
    assert len(c) == 0
    assert all(isinstance(e, RRsetEntry | NegativeEntry) for e in _filled().entries())


# --- memory -------------------------------------------------------------------------------------------

def test_memory_is_bounded_and_hot_entries_survive_more_often() -> None:
    limits = CacheLimits(max_bytes=200_000)
    c = RRsetCache(limits)
    rng = random.Random(7)
    hot = [N(f"hot{i}.example.") for i in range(50)]
    for name in hot:
        c.put(name, RRType.A, 86400, (A1,), Trust.ANSWER, NOW)
    cold = []
    for i in range(20_000):
        name = N(f"cold{i}.example.")
        cold.append(name)
        c.put(name, RRType.A, 86400, (A1,), Trust.ANSWER, NOW)
        assert c.size_bytes <= limits.max_bytes
        if i % 10 == 0:  # a working set the clients keep asking for
            for name in rng.sample(hot, 25):
                c.get(name, RRType.A, NOW)
    assert c.evictions > 10_000
    assert c.size_bytes == sum(e.size for e in c.entries())
    hot_alive = sum(c.get(n, RRType.A, NOW) is not None for n in hot) / len(hot)
    early_cold = cold[:5000]
    cold_alive = sum(c._entries.get((n, RRType.A)) is not None for n in early_cold) / len(early_cold)
    assert hot_alive > 0.9
    assert cold_alive < 0.05


def test_expired_entries_are_not_spared_by_their_hits() -> None:
    limits = CacheLimits(max_bytes=20_000)
    c = RRsetCache(limits)
    c.put(N("short.example."), RRType.A, 10, (A1,), Trust.ANSWER, NOW)
    c.get(N("short.example."), RRType.A, NOW)
    for i in range(500):
        c.put(N(f"n{i}.example."), RRType.A, 300, (A1,), Trust.ANSWER, NOW + 20)
    assert c.get_stale(N("short.example."), RRType.A, NOW + 5) is None  # evicted, hits or not


def _fresh(value: int) -> int:
    return int(str(value))  # an int object of its own, as a decoded TTL is


def _fresh_name(i: int, extra: int = 0) -> bytes:
    return N(f"n{i:06d}{'x' * extra}.example.test.")


def _rrsets(rdatas: int, rdata_length: int, *, sigs: int = 0, proof: int = 0, extra: int = 0) -> Callable[[], int]:
    def fill() -> int:
        c = cache(max_bytes=1 << 40)
        for i in range(_MEMORY_ENTRIES):
            c.put(_fresh_name(i, extra), RRType.A, _fresh(300), tuple(os.urandom(rdata_length) for _ in range(rdatas)),
                  Trust.ANSWER, NOW, sigs=tuple(os.urandom(100) for _ in range(sigs)),
                  proof=tuple(RR(_fresh_name(i), RRType.NSEC, CLASS_IN, _fresh(300), os.urandom(40))
                              for _ in range(proof)))
        kept.append(c)
        return c.size_bytes
    return fill


def _negatives(proof: int) -> Callable[[], int]:
    def fill() -> int:
        c = cache(max_bytes=1 << 40)
        for i in range(_MEMORY_ENTRIES):
            soa = RR(N("example.test."), RRType.SOA, CLASS_IN, _fresh(300), os.urandom(50))
            c.put_negative(_fresh_name(i), RRType.A, NegativeKind.NXDOMAIN, soa, NOW,
                           proof=tuple(RR(_fresh_name(i), RRType.NSEC, CLASS_IN, _fresh(300), os.urandom(40))
                                       for _ in range(proof)))
        kept.append(c)
        return c.size_bytes
    return fill


def _answers(template_length: int, records: int) -> Callable[[], int]:
    def fill() -> int:
        c = AnswerCache(CacheLimits(max_bytes=1 << 40))
        for i in range(_MEMORY_ENTRIES):
            key = _fresh_name(i) + b"\x00\x01\x00\x01"
            entry = c.store(key, FLAG_QR | FLAG_RA, (1, records, 0), os.urandom(template_length),
                            tuple(range(records)), tuple(_fresh(300 + r) for r in range(records)), NOW)
            entry.render(NOW + 5)  # the body a hit makes, kept with the entry
        kept.append(c)
        return c.size_bytes
    return fill


_MEMORY_ENTRIES = 3000
kept: list[object] = []


@pytest.mark.parametrize("fill", [
    _rrsets(1, 4), _rrsets(4, 16), _rrsets(1, 200), _rrsets(1, 4, extra=40), _rrsets(1, 4, sigs=2),
    _rrsets(1, 4, sigs=1, proof=2), _negatives(0), _negatives(4), _answers(16, 1), _answers(100, 4),
    _answers(600, 10),
], ids=["A", "4 AAAA", "TXT 200", "long name", "signed", "wildcard with proof", "NXDOMAIN",
        "NXDOMAIN with proof", "answer of one record", "answer of four", "answer of ten"])
def test_the_byte_estimate_is_what_python_allocates(fill: Callable[[], int]) -> None:
    # cache.max_bytes is the operator's memory budget: entries counted at a fraction of their
    # real cost would let the cache take several times that.
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        estimate = fill()
        gc.collect()
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        kept.clear()
    assert 0.85 < allocated / estimate < 1.2, (allocated // _MEMORY_ENTRIES, estimate // _MEMORY_ENTRIES)


# --- the answer cache ---------------------------------------------------------------------------------

QUESTION = Question(N("www.example."), RRType.A)
KEY = key_of(QUESTION)


def store(answers: AnswerCache, ttls: tuple[int, ...], now: float = NOW, key: bytes = KEY, *,
          ttl_floor: int | None = None) -> CachedAnswer:
    """Store what the engine would: the reply body after the question, and the TTL offsets in it."""
    records = [RR(QUESTION.name, RRType.A, CLASS_IN, ttl, a_rdata(f"192.0.2.{i + 1}")) for i, ttl in enumerate(ttls)]
    encoded = encode_message(0, FLAG_QR | FLAG_RA, QUESTION, records, [], [])
    start = 12 + len(QUESTION.name) + 4
    return answers.store(key, FLAG_QR | FLAG_RA, encoded.counts, encoded.data[start:],
                         tuple(o - start for o in encoded.ttl_offsets), ttls, now, ttl_floor=ttl_floor)


def ttls_of(entry: CachedAnswer, body: bytes) -> list[int]:
    head = b"\x00\x00" + struct.pack("!H", entry.rcode_flags) + entry.counts
    message = decode_message(head + QUESTION.name + struct.pack("!HH", QUESTION.qtype, QUESTION.qclass) + body)
    return [rr.ttl for rr in message.answer]


def test_render_counts_down_per_second_of_age_never_below_zero() -> None:
    answers = AnswerCache(CacheLimits())
    entry = store(answers, (300, 5))
    assert entry.expires_at == NOW + 5  # the least TTL
    assert ttls_of(entry, entry.render(NOW)) == [300, 5]
    assert ttls_of(entry, entry.render(NOW + 0.9)) == [300, 5]  # whole seconds only
    assert ttls_of(entry, entry.render(NOW + 1)) == [299, 4]
    assert ttls_of(entry, entry.render(NOW + 7.5)) == [293, 0]
    assert ttls_of(entry, entry.render(NOW + 400)) == [0, 0]
    body = entry.render(NOW + 2)
    assert entry.render(NOW + 2.5) is body  # rendered once per second of age
    assert entry.template == store(AnswerCache(CacheLimits()), (300, 5)).template  # the template is untouched


def test_render_stale() -> None:
    answers = AnswerCache(CacheLimits())
    entry = store(answers, (300, 60))
    assert ttls_of(entry, entry.render_stale(30)) == [30, 30]


def test_store_lifetime_and_prefetch() -> None:
    answers = AnswerCache(CacheLimits())
    entry = store(answers, (100, 200))
    assert entry.expires_at == NOW + 100
    assert entry.prefetch_at == pytest.approx(NOW + 90)
    short = store(answers, (9,))
    assert short.prefetch_at > short.expires_at  # too short to prefetch
    no_prefetch = AnswerCache(CacheLimits(), prefetch=False)
    assert store(no_prefetch, (100,)).prefetch_at > NOW + 100


def test_store_without_records_lives_the_floor() -> None:
    answers = AnswerCache(CacheLimits())
    assert store(answers, (), ttl_floor=5).expires_at == NOW + 5
    assert store(answers, ()).expires_at == NOW  # no floor: not served again


def test_store_replaces_and_counts_bytes() -> None:
    answers = AnswerCache(CacheLimits())
    store(answers, (300,))
    first = answers.size_bytes
    store(answers, (300,))
    assert answers.size_bytes == first and len(answers) == 1
    answers.discard(KEY)
    answers.discard(KEY)
    assert answers.size_bytes == 0 and len(answers) == 0


def test_answer_cache_stale_window() -> None:
    answers = AnswerCache(CacheLimits(stale_seconds=100))
    store(answers, (60,))
    assert answers.get_stale(KEY, NOW + 150) is not None
    assert answers.get_stale(KEY, NOW + 160) is None


def test_answer_cache_flush() -> None:
    answers = AnswerCache(CacheLimits())
    names = ["example.", "www.example.", "a.b.example.", "wwwexample."]
    for name in names:
        for rtype in (RRType.A, RRType.AAAA):
            store(answers, (60,), key=key_of(Question(N(name), rtype)))
    assert answers.flush(N("www.example.")) == 2
    assert answers.flush(N("example."), subtree=True) == 4
    assert [k[:-4] for k in answers.entries] == [N("wwwexample.")] * 2
    answers.clear()
    assert len(answers) == 0 and answers.size_bytes == 0


def test_answer_cache_flush_looks_up_what_it_drops_not_every_variant_of_it() -> None:
    """A key variant byte of 7 bits (the DNSSEC bits, DNS64 and three policy scopes) has 127
    suffixes: flushing a zone by dropping each plain key with every variant it might have took
    127 lookups a key, seconds of a blocked loop for ``ispd dns nta add`` or ``cache flush
    --zone`` under a large zone. The variants are among the keys flushed already."""

    class CountingPops(dict[bytes, CachedAnswer]):
        pops = 0

        def pop(self, *args: object) -> object:  # type: ignore[override]
            CountingPops.pops += 1
            return super().pop(*args)

    answers = AnswerCache(CacheLimits())
    answers.variants = CountingPops()
    for i in range(50):
        key = key_of(Question(N(f"n{i}.example."), RRType.A))
        store(answers, (60,), key=key)
        store(answers, (60,), key=key + bytes((VARIANT_DO | VARIANT_SCOPES[2],)))
    store(answers, (60,), key=key_of(Question(N("other."), RRType.A)) + bytes((VARIANT_DO,)))
    CountingPops.pops = 0
    assert answers.flush(N("example."), subtree=True) == 100
    assert CountingPops.pops <= 50  # (one for each variant flushed)
    assert len(answers) == 1 and answers.size_bytes == answers.variants[next(iter(answers.variants))].size


def test_answer_cache_evicts_from_both_tables_sparing_hot_entries_in_either() -> None:
    """From a bug hunt: the plain and the variant tables share one byte budget, but an
    insertion evicted only from the table it went into. With the cache full of plain answers
    never asked again, queries with DNSSEC bits (dig's AD, a validating router's DO) emptied
    their own table at each eviction, their hot entries with it, while the cold plain answers
    all stayed (and the other way round)."""
    limits = CacheLimits(max_bytes=100_000)
    answers = AnswerCache(limits)
    cold = [key_of(Question(N(f"cold{i}.example."), RRType.A)) for i in range(150)]
    for key in cold:
        store(answers, (300,), key=key)
    hot = key_of(Question(N("hot.example."), RRType.A)) + bytes((VARIANT_AD,))
    store(answers, (300,), key=hot)
    for i in range(40):
        answers.variants[hot].hits += 1  # asked between each insertion
        store(answers, (300,), key=key_of(Question(N(f"new{i}.example."), RRType.A)) + bytes((VARIANT_AD,)))
        assert answers.size_bytes <= limits.max_bytes
    assert answers.evictions > 0
    assert hot in answers.variants
    assert len(answers.variants) == 41  # every new variant kept: the cold plain answers went
    assert sum(key in answers.entries for key in cold) < len(cold)
    assert answers.size_bytes == sum(e.size for t in (answers.entries, answers.variants) for e in t.values())


def test_answer_cache_memory_bound() -> None:
    limits = CacheLimits(max_bytes=100_000)
    answers = AnswerCache(limits)
    for i in range(5000):
        store(answers, (300,), key=key_of(Question(N(f"n{i}.example."), RRType.A)))
        assert answers.size_bytes <= limits.max_bytes
    assert answers.evictions > 0
    assert answers.size_bytes == sum(e.size for e in answers.entries.values())


def test_answer_cache_eviction_does_not_favour_the_variant_table() -> None:
    """From a review: 3f0e34e ran each pass over the plain table first, the variants only once
    the plain table had no unasked entry left: with the cache full of variant answers never
    asked again (a validating router's DO queries of yesterday), each eviction took the plain
    answers stored since the last one, not yet asked twice, while the cold variants all stayed -
    the bug that commit fixed, the other way round. The oldest unasked entries go first,
    whichever table holds them."""
    limits = CacheLimits(max_bytes=100_000)
    answers = AnswerCache(limits)
    cold = [key_of(Question(N(f"cold{i}.example."), RRType.A)) + bytes((VARIANT_DO,)) for i in range(150)]
    for key in cold:
        store(answers, (300,), key=key)
    hot = key_of(Question(N("hot.example."), RRType.A))
    store(answers, (300,), key=hot)
    for i in range(40):
        answers.entries[hot].hits += 1
        store(answers, (300,), key=key_of(Question(N(f"new{i}.example."), RRType.A)))
        assert answers.size_bytes <= limits.max_bytes
    assert answers.evictions > 0
    assert hot in answers.entries
    assert len(answers.entries) == 41  # every new plain answer kept: the cold variants went
    assert sum(key in answers.variants for key in cold) < len(cold)
    assert answers.size_bytes == sum(e.size for t in (answers.entries, answers.variants) for e in t.values())
