"""``dns.cache.dump`` and ``dns.cache.flush`` (ispd/dns/admin.py) over real caches, and rdata in
presentation format."""

from __future__ import annotations

import asyncio
import json
import struct
import tracemalloc
from typing import Any

import pytest

from ispd.control import CommandError, ControlCommands
from ispd.dns.admin import DUMP_BATCH, FLUSH_BATCH, DNSCacheAdmin, parse_name_argument, rdata_text
from ispd.dns.cache import VARIANT_DO, VARIANT_SCOPES, AnswerCache, CacheLimits, NegativeKind, RRsetCache, Trust
from ispd.dns.wire import (
    CLASS_IN,
    FLAG_QR,
    FLAG_RA,
    RR,
    Question,
    RCode,
    RRType,
    a_rdata,
    is_subdomain,
    key_of,
    name_from_text,
)
from ispd.dns.zone import parse_zone_text
from tests.dns.test_aggressive import index_of
from tests.dns.test_dnssec import Signed, _sign

N = name_from_text
SOA_RDATA = N("ns.example.") + N("hostmaster.example.") + struct.pack("!IIIII", 2024010101, 7200, 900, 1209600, 300)
SOA = RR(N("example."), RRType.SOA, CLASS_IN, 300, SOA_RDATA)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def admin(clock: Clock) -> DNSCacheAdmin:
    return admin_fixture(clock)


def admin_fixture(clock: Clock) -> DNSCacheAdmin:
    rrsets = RRsetCache(CacheLimits())
    answers = AnswerCache(CacheLimits())
    now = clock.now
    rrsets.put(N("www.example."), RRType.A, 300, (a_rdata("192.0.2.1"), a_rdata("192.0.2.2")), Trust.ANSWER, now)
    rrsets.put(N("www.example."), RRType.AAAA, 600, (bytes.fromhex("20010db8000000000000000000000001"),),
               Trust.ANSWER, now)
    rrsets.put(N("a.www.example."), RRType.A, 300, (a_rdata("192.0.2.3"),), Trust.ANSWER, now)
    rrsets.put(N("example."), RRType.NS, 3600, (N("ns.example."),), Trust.REFERRAL, now)
    rrsets.put(N("other.test."), RRType.A, 300, (a_rdata("198.51.100.1"),), Trust.ANSWER, now)
    rrsets.put_negative(N("nx.example."), RRType.A, NegativeKind.NXDOMAIN, SOA, now)
    rrsets.put_negative(N("www.example."), RRType.MX, NegativeKind.NODATA, SOA, now)
    for name, rtype, rcode in (("www.example.", RRType.A, RCode.NOERROR), ("www.example.", RRType.AAAA, RCode.NOERROR),
                               ("nx.example.", RRType.A, RCode.NXDOMAIN), ("other.test.", RRType.A, RCode.NOERROR)):
        answers.store(key_of(Question(N(name), rtype)), FLAG_QR | FLAG_RA | rcode, (1, 0, 0), b"\x00" * 20, (), (250,),
                      now)
    return DNSCacheAdmin(rrsets, answers, clock)


def dump(admin: DNSCacheAdmin, **kwargs: Any) -> list[str]:
    return [line for batch in admin.dump(**kwargs) for line in batch]


# --- rdata in presentation format


@pytest.mark.parametrize(("rtype", "rdata", "text"), [
    (RRType.A, a_rdata("192.0.2.1"), "192.0.2.1"),
    (RRType.AAAA, bytes.fromhex("20010db8000000000000000000000001"), "2001:db8::1"),
    (RRType.NS, N("ns1.Example."), "ns1.example."),
    (RRType.CNAME, b"\x03WwW\x07example\x00", "WwW.example."),
    (RRType.PTR, N("host.example."), "host.example."),
    (RRType.DNAME, N("example.net."), "example.net."),
    (RRType.MX, b"\x00\x0a" + N("mail.example."), "10 mail.example."),
    (RRType.SOA, SOA_RDATA, "ns.example. hostmaster.example. 2024010101 7200 900 1209600 300"),
    (RRType.SRV, struct.pack("!HHH", 10, 60, 5060) + N("sip.example."), "10 60 5060 sip.example."),
    (RRType.TXT, b"\x05hello\x0bsay \"hi\" \\!", '"hello" "say \\"hi\\" \\\\!"'),
    (RRType.TXT, b"\x02\x00\xff", '"\\000\\255"'),
    (RRType.TXT, b"\x00", '""'),
    (RRType.CAA, b"\x00\x05issue" + b"letsencrypt.org", '0 issue "letsencrypt.org"'),
    (RRType.DS, struct.pack("!HBB", 12345, 13, 2) + bytes(range(32)),
     "12345 13 2 " + bytes(range(32)).hex().upper()),
    (65280, b"\x01\x02", "\\# 2 0102"),
    (RRType.NULL, b"", "\\# 0"),
    # Malformed rdata (a cache holds only what the codec accepted, but never crash on it).
    (RRType.A, b"\x01\x02", "\\# 2 0102"),
    (RRType.MX, b"\x00", "\\# 1 00"),
    (RRType.TXT, b"\x09abc", "\\# 4 09616263"),
    (RRType.NS, N("a.example.") + b"\x01", "\\# 12 " + (N("a.example.") + b"\x01").hex()),
])
def test_rdata_text(rtype: int, rdata: bytes, text: str) -> None:
    assert rdata_text(rtype, rdata) == text


def test_a_dump_reads_back_as_a_zone_file_with_the_same_rdata(clock: Clock) -> None:
    records = [
        (RRType.A, a_rdata("192.0.2.1")), (RRType.AAAA, bytes.fromhex("20010db8000000000000000000000001")),
        (RRType.NS, N("ns.example.")), (RRType.MX, b"\x00\x0a" + N("mail.example.")), (RRType.SOA, SOA_RDATA),
        (RRType.SRV, struct.pack("!HHH", 1, 2, 3) + N("t.example.")),
        (RRType.TXT, b"\x05hello\x0bsay \"hi\" \\!\x03\x00\x7f\xff"),
        (RRType.CAA, b"\x00\x05issue" + b"ca.example"), (RRType.DS, struct.pack("!HBB", 1, 8, 2) + bytes(32)),
        (65280, b"\x01\x02\x03"),
    ]
    rrsets = RRsetCache(CacheLimits())
    for i, (rtype, rdata) in enumerate(records):
        rrsets.put(N(f"r{i}.example."), rtype, 300, (rdata,), Trust.ANSWER, clock.now)
    text = "\n".join(dump(DNSCacheAdmin(rrsets, AnswerCache(CacheLimits()), clock)))
    parsed, problems = parse_zone_text(text, ".")
    assert problems == []
    assert [(rr.name, rr.rtype, rr.ttl, rr.rdata) for _, rr in parsed] == [
        (N(f"r{i}.example."), rtype, 300, rdata) for i, (rtype, rdata) in enumerate(records)]


# --- dump


def test_dump_text(admin: DNSCacheAdmin, clock: Clock) -> None:
    clock.now += 100
    assert dump(admin) == [
        "; ispd DNS cache dump",
        "; RRsets and negative answers (RRset cache)",
        "www.example. 200 IN A 192.0.2.1",
        "www.example. 200 IN A 192.0.2.2",
        "www.example. 500 IN AAAA 2001:db8::1",
        "a.www.example. 200 IN A 192.0.2.3",
        "example. 3500 IN NS ns.example.",
        "other.test. 200 IN A 198.51.100.1",
        "; NXDOMAIN nx.example. 200",
        "; NODATA www.example. MX 200",
        "; answers (the answer cache: replies served as they are)",
        "; answer www.example. IN A NOERROR 150",
        "; answer www.example. IN AAAA NOERROR 150",
        "; answer nx.example. IN A NXDOMAIN 150",
        "; answer other.test. IN A NOERROR 150",
        "; 5 RRsets (6 records), 2 negative entries, 4 answers",
    ]


def test_dump_of_a_subtree_and_without_expired_entries(admin: DNSCacheAdmin, clock: Clock) -> None:
    clock.now += 300  # the 300 s entries and every answer have expired (kept for serve-stale)
    assert dump(admin, zone=N("WWW.example")) == [
        "; ispd DNS cache dump of www.example. and below",
        "; RRsets and negative answers (RRset cache)",
        "www.example. 300 IN AAAA 2001:db8::1",
        "; answers (the answer cache: replies served as they are)",
        "; 1 RRsets (1 records), 0 negative entries, 0 answers; 5 expired entries (kept for serve-stale) not shown",
    ]


def test_dump_json(admin: DNSCacheAdmin) -> None:
    objects = [json.loads(line) for line in dump(admin, zone=N("example."), as_json=True)]
    assert objects == [
        {"kind": "rrset", "name": "www.example.", "type": "A", "ttl": 300, "trust": "answer",
         "rdata": ["192.0.2.1", "192.0.2.2"]},
        {"kind": "rrset", "name": "www.example.", "type": "AAAA", "ttl": 600, "trust": "answer",
         "rdata": ["2001:db8::1"]},
        {"kind": "rrset", "name": "a.www.example.", "type": "A", "ttl": 300, "trust": "answer",
         "rdata": ["192.0.2.3"]},
        {"kind": "rrset", "name": "example.", "type": "NS", "ttl": 3600, "trust": "referral",
         "rdata": ["ns.example."]},
        {"kind": "nxdomain", "name": "nx.example.", "ttl": 300},
        {"kind": "nodata", "name": "www.example.", "type": "MX", "ttl": 300},
        {"kind": "answer", "name": "www.example.", "class": "IN", "type": "A", "rcode": "NOERROR", "ttl": 250},
        {"kind": "answer", "name": "www.example.", "class": "IN", "type": "AAAA", "rcode": "NOERROR", "ttl": 250},
        {"kind": "answer", "name": "nx.example.", "class": "IN", "type": "A", "rcode": "NXDOMAIN", "ttl": 250},
    ]


def test_dump_goes_in_batches_and_survives_changes_between_them(clock: Clock) -> None:
    rrsets, answers = RRsetCache(CacheLimits()), AnswerCache(CacheLimits())
    total = DUMP_BATCH * 3 + 5
    for i in range(total):
        rrsets.put(N(f"h{i}.example."), RRType.A, 300, (a_rdata("192.0.2.1"),), Trust.ANSWER, clock.now)
    admin = DNSCacheAdmin(rrsets, answers, clock)
    batches = admin.dump(zone=N("nothing.matches."))
    sizes = []
    for batch in batches:  # the scan yields every DUMP_BATCH keys, even when nothing matched
        sizes.append(len(batch))
    assert len(sizes) >= 4 and sum(sizes) == 4  # header (2 lines), answers heading, count

    lines = []
    for n, batch in enumerate(admin.dump()):
        lines.extend(batch)
        if n == 1:  # between batches the resolver goes on: entries come and go
            rrsets.flush(N(f"h{total - 1}.example."))
            rrsets.put(N("new.example."), RRType.A, 300, (a_rdata("192.0.2.9"),), Trust.ANSWER, clock.now)
            rrsets.clear()
            rrsets.put(N(f"h{total - 2}.example."), RRType.A, 300, (a_rdata("192.0.2.7"),), Trust.ANSWER, clock.now)
    records = [line for line in lines if not line.startswith(";")]
    assert len(records) == DUMP_BATCH + 1  # the first batch, then the one entry still there
    assert records[-1] == f"h{total - 2}.example. 300 IN A 192.0.2.7"


def test_the_dump_reaches_the_answer_cache_without_a_copy_of_each_key(clock: Clock) -> None:
    """The step that began the answer cache's part made a (key, variant) pair of every key in
    one go: 140 ms with 300,000 answers here, every query held meanwhile (the RRset part, a
    list of the keys, takes a few). Its cost is shown by what it allocates: a list of
    references (8 bytes a key), not an object per key."""
    answers = AnswerCache(CacheLimits())
    count = 100_000
    stored = answers.entries  # (straight into the table: the dump reads only its keys)
    for i in range(count):
        stored[N(f"h{i}.example.") + b"\x00\x01\x00\x01"] = None  # type: ignore[assignment]
    batches = DNSCacheAdmin(RRsetCache(CacheLimits()), answers, clock).dump(zone=N("nothing.matches."))
    next(batches), next(batches)  # the heading, the RRset cache's (empty) part
    tracemalloc.start()
    try:
        next(batches)  # the answers' first batch
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < count * 8 * 2, peak
    assert sum(map(len, batches)) == 1  # (the count: nothing matched)


def test_dump_command_checks_its_arguments(admin: DNSCacheAdmin) -> None:
    with pytest.raises(CommandError, match="is not a domain name"):
        admin.dump_command({"name": "a..b"})
    with pytest.raises(CommandError, match="must be text"):
        admin.dump_command({"name": 5})
    assert len(list(admin.dump_command({}))) >= 2


@pytest.mark.parametrize("text", ["", " "])
def test_an_empty_name_is_refused_not_read_as_the_root(text: str) -> None:
    # A negative trust anchor of "" was one of the root: DNSSEC validation off for every name.
    with pytest.raises(CommandError, match="the name is empty"):
        parse_name_argument(text)
    assert parse_name_argument(".") == b"\x00"


# --- flush


def remaining(admin: DNSCacheAdmin) -> list[str]:
    return [line for line in dump(admin) if not line.startswith("; ispd") and not line.startswith("; RRsets")
            and not line.startswith("; answers") and not line[2:3].isdigit()]


def test_dump_tells_answers_kept_apart_for_a_view_of_the_policy_from_the_plain_ones(admin: DNSCacheAdmin,
                                                                                      clock: Clock) -> None:
    """Clients that policy zones limited to some plans or networks apply to have answers of
    their own (a key variant per view): without its scopes, such an answer read as a second
    copy of the plain one."""
    question = key_of(Question(N("www.example."), RRType.A))
    for variant in (VARIANT_SCOPES[0], VARIANT_DO | VARIANT_SCOPES[0] | VARIANT_SCOPES[2]):
        admin.answers.store(question + bytes((variant,)), FLAG_QR | FLAG_RA, (1, 0, 0), b"\x00" * 20, (), (250,),
                            clock.now)
    assert [line for line in dump(admin, zone=N("www.example.")) if line.startswith("; answer www.example. IN A ")] == [
        "; answer www.example. IN A NOERROR 250",
        "; answer www.example. IN A NOERROR 250 +scope1",
        "; answer www.example. IN A NOERROR 250 +do +scope1 +scope3",
    ]
    answers = [json.loads(line) for line in dump(admin, zone=N("www.example."), as_json=True)]
    bits = [a.get("query_bits") for a in answers if a["kind"] == "answer" and a["type"] == "A"]
    assert bits == [None, ["scope1"], ["do", "scope1", "scope3"]]


async def test_flush_a_name(admin: DNSCacheAdmin) -> None:
    assert await admin.flush_command({"name": "www.example"}) == {"rrsets": 3, "answers": 2}
    assert remaining(admin) == [
        "a.www.example. 300 IN A 192.0.2.3",
        "example. 3600 IN NS ns.example.",
        "other.test. 300 IN A 198.51.100.1",
        "; NXDOMAIN nx.example. 300",
        "; answer nx.example. IN A NXDOMAIN 250",
        "; answer other.test. IN A NOERROR 250",
    ]
    assert await admin.flush_command({"name": "nx.example."}) == {"rrsets": 1, "answers": 1}


async def test_flush_a_zone(admin: DNSCacheAdmin) -> None:
    assert await admin.flush_command({"name": "example", "zone": True}) == {"rrsets": 6, "answers": 3}
    assert remaining(admin) == ["other.test. 300 IN A 198.51.100.1", "; answer other.test. IN A NOERROR 250"]


async def test_flush_a_type(admin: DNSCacheAdmin) -> None:
    assert await admin.flush_command({"name": "www.example", "type": "aaaa"}) == {"rrsets": 1, "answers": 1}
    assert await admin.flush_command({"name": "www.example", "type": "MX"}) == {"rrsets": 1, "answers": 0}
    assert await admin.flush_command({"name": "www.example", "type": "MX"}) == {"rrsets": 0, "answers": 0}
    # Type A at and below example.: two RRsets, and the answers to A questions (the NXDOMAIN too).
    assert await admin.flush_command({"name": "example", "type": "A", "zone": True}) == {"rrsets": 2, "answers": 2}
    assert remaining(admin) == [
        "example. 3600 IN NS ns.example.",
        "other.test. 300 IN A 198.51.100.1",
        "; NXDOMAIN nx.example. 300",  # a type flush leaves a name's NXDOMAIN, as Unbound's flush_type does
        "; answer other.test. IN A NOERROR 250",
    ]


async def test_flush_all(admin: DNSCacheAdmin) -> None:
    assert await admin.flush_command({"all": True}) == {"rrsets": 7, "answers": 4}
    assert remaining(admin) == []
    assert await admin.flush_command({"all": True}) == {"rrsets": 0, "answers": 0}


@pytest.mark.parametrize(("args", "error"), [
    ({}, "which name?"),
    ({"all": True, "name": "x.example"}, "either a name or all"),
    ({"name": "bad..name"}, "is not a domain name"),
    ({"name": "", "zone": True}, "the name is empty"),  # (not the root: every name below it)
    ({"name": "www.example", "type": "BOGUS"}, "is not a record type"),
])
async def test_flush_command_checks_its_arguments(admin: DNSCacheAdmin, args: dict[str, Any], error: str) -> None:
    with pytest.raises(CommandError, match=error):
        await admin.flush_command(args)


def test_register_and_take_back() -> None:
    registry = ControlCommands()
    unregister = DNSCacheAdmin(RRsetCache(CacheLimits()), AnswerCache(CacheLimits()), Clock()).register(registry)
    assert registry.names() == ["dns.cache.dump", "dns.cache.flush"]
    unregister()
    assert registry.names() == []


# --- a flush reaches the NSEC records kept for aggressive negative answers (RFC 8198)


@pytest.fixture(scope="module")
def signed_zone(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    return _sign(tmp_path_factory.mktemp("flush-nsec"), "ECDSAP256SHA256")


@pytest.mark.parametrize("flush", ["name", "zone", "type", "all"])
async def test_a_flush_drops_the_nsec_records_that_would_deny_the_name(flush: str, signed_zone: Signed,
                                                                       clock: Clock) -> None:
    """The validator answers NXDOMAIN for any name its cached NSEC records deny, without asking:
    a flush that left them would still deny the flushed name (a record just added upstream)
    until they expire, though the dump shows nothing of them."""
    index = index_of(signed_zone)
    other = index_of(signed_zone)  # the same records learnt as another zone's, which stays
    index.zones[N("elsewhere.example.")] = other.zones[signed_zone.origin]
    index.records *= 2
    admin = DNSCacheAdmin(RRsetCache(CacheLimits()), AnswerCache(CacheLimits()), clock, nsec_index=lambda: index)
    name = N("nope.example.test")
    assert index.answer(signed_zone.origin, name, RRType.A, 1.0) is not None
    if flush == "all":
        admin.flush_all()
    elif flush == "type":
        admin.flush(name, rtype=RRType.A)
    else:
        await admin.flush_stepwise(name if flush == "name" else signed_zone.origin, subtree=flush == "zone")
    assert index.answer(signed_zone.origin, name, RRType.A, 1.0) is None
    assert (N("elsewhere.example.") in index.zones) == (flush != "all")
    assert index.records == (len(other.zones[signed_zone.origin].spans) if flush != "all" else 0)


# --- a flush that scans the caches lets queries be served meanwhile


def big_admin(clock: Clock, count: int) -> DNSCacheAdmin:
    rrsets, answers = RRsetCache(CacheLimits()), AnswerCache(CacheLimits())
    for i in range(count):
        name = N(f"h{i}.bench.example.")
        rrsets.put(name, RRType.A, 300, (a_rdata("192.0.2.1"),), Trust.ANSWER, clock.now)
        for bits in (b"", bytes([VARIANT_DO])):
            answers.store(key_of(Question(name, RRType.A)) + bits, FLAG_QR | FLAG_RA, (1, 0, 0), b"\x00" * 20, (),
                          (250,), clock.now)
    rrsets.put(N("other.test."), RRType.A, 300, (a_rdata("198.51.100.1"),), Trust.ANSWER, clock.now)
    return DNSCacheAdmin(rrsets, answers, clock)


@pytest.mark.parametrize("args", [{"name": "bench.example", "zone": True},
                                  {"name": "bench.example", "zone": True, "type": "A"},
                                  {"name": "h7.bench.example"}])
async def test_a_flush_of_a_large_cache_takes_turns_with_the_queries(args: dict[str, Any], clock: Clock) -> None:
    """A flush that must look at every key does it a batch at a time: done in one go, a zone's
    flush held every query for 0.8 s with 240,000 entries."""
    count = 3 * FLUSH_BATCH
    admin = big_admin(clock, count)
    turns = 0

    async def query_loop() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(query_loop())
    try:
        result = await admin.flush_command(args)
    finally:
        other.cancel()
    assert turns >= 3
    expected = count if args.get("zone") else 1
    assert result == {"rrsets": expected, "answers": 2 * expected}
    assert len(admin.rrsets) == count + 1 - expected and len(admin.answers) == 2 * (count - expected)


@pytest.mark.parametrize(("name", "subtree", "rtype"), [
    ("example.", True, None), ("www.example.", False, None), ("www.example.", True, RRType.A),
    ("example.", True, RRType.MX), ("nx.example.", False, None), ("absent.example.", True, None),
])
async def test_the_stepwise_flush_drops_what_the_flush_in_one_go_drops(name: str, subtree: bool, rtype: int | None,
                                                                       clock: Clock) -> None:
    at_once, stepwise = admin_fixture(clock), admin_fixture(clock)
    assert (await stepwise.flush_stepwise(N(name), subtree=subtree, rtype=rtype)
            == flushed_in_one_go(at_once, N(name), subtree=subtree, rtype=rtype))
    assert dump(stepwise) == dump(at_once)


def flushed_in_one_go(admin: DNSCacheAdmin, name: bytes, *, subtree: bool, rtype: int | None) -> dict[str, int]:
    """What a flush drops, by the caches' own flush or a scan of every key in one go (the
    stepwise flush's reference)."""
    if rtype is None:
        return {"rrsets": admin.rrsets.flush(name, subtree=subtree),
                "answers": admin.answers.flush(name, subtree=subtree)}
    qtype = struct.pack("!H", rtype)

    def wanted(owner: bytes) -> bool:
        return owner == name or (subtree and is_subdomain(owner, name))

    rrset_keys = [k for k in admin.rrsets.snapshot_keys() if k[1] == rtype and wanted(k[0])]
    answer_keys = [k for k in admin.answers.entries if k[-4:-2] == qtype and wanted(k[:-4])]
    answer_keys += [k for k in admin.answers.variants if k[-5:-3] == qtype and wanted(k[:-5])]
    return {"rrsets": sum(admin.rrsets.discard(key) for key in rrset_keys), "answers": admin.answers.drop(answer_keys)}


async def test_a_flush_of_one_type_of_one_name_looks_its_answers_up_not_through_every_variant(clock: Clock) -> None:
    """`flush NAME --type A` was left to the flush in one go as "its keys are known: no scan of
    the caches" (440eff1), but it walked every DNSSEC/DNS64/view variant key of the answer cache
    to find the name's: with most clients sending DO, the whole cache, on the event loop."""

    class Walked(dict):  # type: ignore[type-arg]
        walks = 0

        def __iter__(self) -> Any:
            Walked.walks += 1
            return super().__iter__()

    admin = big_admin(clock, 2 * FLUSH_BATCH)
    admin.answers.variants = Walked(admin.answers.variants)
    result = await admin.flush_command({"name": "h7.bench.example", "type": "A"})
    assert result == {"rrsets": 1, "answers": 2}
    assert len(admin.answers) == 2 * (2 * FLUSH_BATCH - 1)
    assert Walked.walks == 0
