"""The DNS codec: vectors both ways, limits, hostile input, and the fast path's agreement with
the full decode."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ispd.dns.wire import (
    CLASS_IN,
    EDNS_DO,
    FLAG_AA,
    FLAG_CD,
    FLAG_QR,
    FLAG_RA,
    FLAG_RD,
    FLAG_TC,
    HEADER,
    ROOT,
    RR,
    DropReason,
    Question,
    RCode,
    RRType,
    WireError,
    a_rdata,
    aaaa_rdata,
    ancestor_with_labels,
    decode_message,
    encode_message,
    encode_query,
    error_reply,
    is_subdomain,
    key_of,
    label_count,
    mx_exchange,
    name_from_labels,
    name_from_text,
    name_labels,
    name_to_text,
    opt_record,
    parent_name,
    quick_question,
    read_name,
    soa_minimum,
)

N = name_from_text


def header(msg_id: int = 0x1234, flags: int = 0, qd: int = 0, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return HEADER.pack(msg_id, flags, qd, an, ns, ar)


def rr_bytes(owner: bytes, rtype: int, rdata: bytes, ttl: int = 300, rclass: int = CLASS_IN) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def question_bytes(name: bytes, qtype: int = RRType.A, qclass: int = CLASS_IN) -> bytes:
    return name + struct.pack("!HH", qtype, qclass)


def pointer(offset: int) -> bytes:
    return struct.pack("!H", 0xC000 | offset)


def reason_of(data: bytes) -> DropReason:
    with pytest.raises(WireError) as info:
        decode_message(data)
    return info.value.reason


# --- names -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "wire"),
    [
        (".", b"\x00"),
        ("", b"\x00"),
        ("com", b"\x03com\x00"),
        ("www.example.com.", b"\x03www\x07example\x03com\x00"),
        ("WWW.Example.COM", b"\x03www\x07example\x03com\x00"),  # lowercased
        ("a\\.b.c.", b"\x03a.b\x01c\x00"),  # an escaped dot is part of the label
        ("\\065bc.", b"\x03abc\x00"),  # \DDD, then lowercased
        ("a\\032b.", b"\x03a b\x00"),
        ("\\000.", b"\x01\x00\x00"),
        ("_sip._tcp.example.", b"\x04_sip\x04_tcp\x07example\x00"),
        ("*.example.", b"\x01*\x07example\x00"),
        ("xn--bcher-kva.example.", b"\x0dxn--bcher-kva\x07example\x00"),
    ],
)
def test_name_from_text(text: str, wire: bytes) -> None:
    assert name_from_text(text) == wire


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (b"\x00", "."),
        (b"\x03www\x07example\x03com\x00", "www.example.com."),
        (b"\x03a.b\x01c\x00", "a\\046b.c."),
        (b"\x03a b\x00", "a\\032b."),
        (b"\x02\x00\xff\x00", "\\000\\255."),
        (b"\x01*\x07example\x00", "*.example."),
        (b"\x03WwW\x00", "WwW."),  # presentation keeps case
    ],
)
def test_name_to_text(wire: bytes, text: str) -> None:
    assert name_to_text(wire) == text


@pytest.mark.parametrize(
    "text",
    ["a..b", ".a", "a.b..", "é.example", "a\\256.", "abc\\", "a" * 64 + ".", ".".join(["a" * 63] * 4) + "."],
)
def test_name_from_text_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        name_from_text(text)


def test_name_limits_63_and_255_bytes() -> None:
    label63 = "a" * 63
    assert len(N(label63)) == 65
    longest = ".".join(["a" * 63] * 3 + ["a" * 61])  # 3*64 + 62 + 1 = 255 bytes on the wire
    assert len(N(longest)) == 255
    with pytest.raises(ValueError):
        N(".".join(["a" * 63] * 3 + ["a" * 62]))  # 256
    with pytest.raises(ValueError):
        name_from_labels([b"a" * 64])
    with pytest.raises(ValueError):
        name_from_labels([b""])


labels = st.lists(st.binary(min_size=1, max_size=63), min_size=0, max_size=8)


@st.composite
def wire_names(draw: st.DrawFn, lower: bool = True) -> bytes:
    parts = draw(labels)
    name = bytearray()
    for part in parts:
        if len(name) + len(part) + 2 > 255:
            break
        name.append(len(part))
        name += part.lower() if lower else part
    name.append(0)
    return bytes(name)


@given(wire_names())
def test_name_text_round_trip(name: bytes) -> None:
    assert name_from_text(name_to_text(name)) == name.lower()
    assert name_from_labels(name_labels(name)) == name


@pytest.mark.parametrize(
    ("name", "zone", "inside"),
    [
        ("www.example.com.", "example.com.", True),
        ("example.com.", "example.com.", True),
        ("www.example.com.", ".", True),
        ("wwwexample.com.", "example.com.", False),  # a suffix inside a label is not a subdomain
        ("example.com.", "www.example.com.", False),
        ("xexample.com.", "example.com.", False),
        ("a.b.c.", "b.c.", True),
    ],
)
def test_is_subdomain(name: str, zone: str, inside: bool) -> None:
    assert is_subdomain(N(name), N(zone)) is inside


def test_name_helpers() -> None:
    name = N("a.b.example.com.")
    assert label_count(name) == 4
    assert label_count(ROOT) == 0
    assert parent_name(name) == N("b.example.com.")
    assert parent_name(ROOT) == ROOT
    assert ancestor_with_labels(name, 2) == N("example.com.")
    assert ancestor_with_labels(name, 4) == name
    assert ancestor_with_labels(name, 0) == ROOT


def test_key_of_lowercases_the_name_and_keeps_type_and_class() -> None:
    question = Question(b"\x03WwW\x07ExAmPlE\x00", RRType.AAAA, CLASS_IN)
    assert key_of(question) == b"\x03www\x07example\x00\x00\x1c\x00\x01"
    assert question.key_name == b"\x03www\x07example\x00"


# --- decoding: pointers and truncation ----------------------------------------------------------

QNAME = b"\x03www\x07example\x03com\x00"  # at offset 12 in a message with one question


def test_backward_pointer_decodes() -> None:
    data = header(flags=FLAG_QR, qd=1, an=1) + question_bytes(QNAME) + rr_bytes(pointer(12), RRType.A, b"\x01\x02\x03\x04")
    message = decode_message(data)
    assert message.answer == [RR(QNAME, RRType.A, CLASS_IN, 300, b"\x01\x02\x03\x04")]


def test_pointer_to_a_suffix_after_a_prefix() -> None:
    owner = b"\x04mail" + pointer(16)  # mail + example.com (offset 12 + len("\x03www") = 16)
    data = header(qd=1, an=1) + question_bytes(QNAME) + rr_bytes(owner, RRType.A, b"\x01\x02\x03\x04")
    assert decode_message(data).answer[0].name == N("mail.example.com.")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # A pointer in the question pointing forward, into the record after it.
        (header(qd=1) + pointer(14) + b"\x00\x01\x00\x01", DropReason.BAD_POINTER),
        # A pointer to itself (a loop).
        (header(qd=1) + pointer(12) + b"\x00\x01\x00\x01", DropReason.BAD_POINTER),
        # Two pointers pointing at each other: the second goes forward.
        (header(qd=1, an=1) + question_bytes(QNAME) + rr_bytes(pointer(35), RRType.A, b"\x01\x02\x03\x04")
         + pointer(33), DropReason.BAD_POINTER),
        # A pointer past the end of the message.
        (header(qd=1) + pointer(0x3FFF) + b"\x00\x01\x00\x01", DropReason.BAD_POINTER),
        # A pointer cut in half.
        (header(qd=1) + b"\x03www\xc0", DropReason.TRUNCATED),
        # A label running past the end.
        (header(qd=1) + b"\x07exa", DropReason.TRUNCATED),
        # Label types 01 and 10 (extended labels): not supported.
        (header(qd=1) + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01", DropReason.BAD_NAME),
        (header(qd=1) + b"\x80\x00\x00\x01\x00\x01", DropReason.BAD_NAME),
    ],
)
def test_bad_pointers_and_name_parts(data: bytes, reason: DropReason) -> None:
    assert reason_of(data) == reason


def test_pointer_chain_loop_through_two_names_rejected() -> None:
    # Owner name at 33 is "a" + pointer to 33 (itself, through its own label): not backwards of the name.
    data = header(qd=1, an=1) + question_bytes(QNAME) + b"\x01a" + pointer(33) + b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"
    assert reason_of(data) == DropReason.BAD_POINTER


def test_decoded_name_longer_than_255_through_pointers_rejected() -> None:
    long_label = b"\x3f" + b"a" * 63
    first = long_label * 3 + b"\x00"  # 193 bytes
    # Question: 193-byte name. Answer owner: two more 63-byte labels, then a pointer to it: 321.
    data = header(qd=1, an=1) + question_bytes(first) + rr_bytes(long_label * 2 + pointer(12), RRType.A, b"1234")
    assert reason_of(data) == DropReason.BAD_NAME


def test_name_of_exactly_255_bytes_decodes() -> None:
    name = N(".".join(["a" * 63] * 3 + ["a" * 61]))
    assert len(name) == 255
    message = decode_message(header(qd=1) + question_bytes(name))
    assert message.question is not None and message.question.name == name
    assert read_name(header() + name, 12) == (name, 12 + 255)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", DropReason.TRUNCATED),
        (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00", DropReason.TRUNCATED),  # 11 bytes
        (header(qd=1), DropReason.TRUNCATED),  # a question announced, none there
        (header(qd=1) + QNAME + b"\x00\x01\x00", DropReason.TRUNCATED),  # question cut short
        (header(qd=2) + question_bytes(QNAME) * 2, DropReason.BAD_COUNTS),
        (header(qd=1, an=1) + question_bytes(QNAME), DropReason.TRUNCATED),  # a record announced, none there
        (header(an=1) + b"\x00" + b"\x00\x01\x00\x01\x00\x00", DropReason.TRUNCATED),  # record header cut
        (header(an=1) + b"\x00" + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02", DropReason.TRUNCATED),  # rdata cut
        (header(qd=1) + question_bytes(QNAME) + b"\x00", DropReason.TRAILING),
        (header(an=1) + rr_bytes(b"\x00", RRType.A, b"\x01\x02\x03\x04\x05"), DropReason.BAD_RDATA),
        (header(an=1) + rr_bytes(b"\x00", RRType.A, b"\x01\x02\x03"), DropReason.BAD_RDATA),
        (header(an=1) + rr_bytes(b"\x00", RRType.AAAA, b"\x00" * 4), DropReason.BAD_RDATA),
        (header(an=1) + rr_bytes(b"\x00", RRType.AAAA, b"\x00" * 17), DropReason.BAD_RDATA),
        # An MX whose rdlength leaves no room for the exchange's name.
        (header(an=1) + rr_bytes(b"\x00", RRType.MX, b"\x00\x0a"), DropReason.TRUNCATED),
        # An NS whose name runs on past its rdlength into the next record.
        (header(an=2) + rr_bytes(b"\x00", RRType.NS, b"\x03abc") + b"\x00" + rr_bytes(b"\x00", RRType.A, b"1234"),
         DropReason.BAD_RDATA),
        # An NS with bytes after its name.
        (header(an=1) + rr_bytes(b"\x00", RRType.NS, b"\x03abc\x00\xff"), DropReason.BAD_RDATA),
        # An SOA without its 20 bytes of numbers.
        (header(an=1) + rr_bytes(b"\x00", RRType.SOA, b"\x00\x00" + b"\x00" * 19), DropReason.BAD_RDATA),
    ],
)
def test_malformed_messages(data: bytes, reason: DropReason) -> None:
    assert reason_of(data) == reason


# --- decoding: rdata ------------------------------------------------------------------------------

def test_mx_soa_ns_rdata_decompressed() -> None:
    q = question_bytes(QNAME, RRType.MX)
    example = pointer(16)  # "example.com." inside the question
    mx = rr_bytes(pointer(12), RRType.MX, b"\x00\x0a\x04mail" + example)
    soa_rdata = b"\x03ns1" + example + b"\x0ahostmaster" + example + struct.pack("!IIIII", 7, 3600, 600, 86400, 300)
    soa = rr_bytes(example, RRType.SOA, soa_rdata)
    ns = rr_bytes(example, RRType.NS, b"\x03ns2" + example)
    cname = rr_bytes(b"\x05alias" + example, RRType.CNAME, pointer(12))
    data = header(flags=FLAG_QR | FLAG_AA, qd=1, an=2, ns=2) + q + mx + cname + soa + ns
    message = decode_message(data)
    assert message.answer[0].rdata == b"\x00\x0a" + N("mail.example.com.")
    assert mx_exchange(message.answer[0].rdata) == N("mail.example.com.")
    assert message.answer[1].rdata == QNAME
    soa_rr = message.authority[0]
    assert soa_rr.rdata == N("ns1.example.com.") + N("hostmaster.example.com.") + struct.pack("!IIIII", 7, 3600, 600, 86400, 300)
    assert soa_minimum(soa_rr.rdata) == 300
    assert message.authority[1].rdata == N("ns2.example.com.")


def test_rdata_names_keep_their_case_and_owners_are_lowercased() -> None:
    data = header(an=1) + rr_bytes(b"\x03WWW\x00", RRType.CNAME, b"\x04MaIl\x00")
    [rr] = decode_message(data).answer
    assert rr.name == b"\x03www\x00"
    assert rr.rdata == b"\x04MaIl\x00"


def test_unknown_and_opaque_rdata_is_kept_as_is() -> None:
    # TXT may look like a compression pointer: it is never decompressed.
    data = header(an=2) + rr_bytes(b"\x00", RRType.TXT, b"\x02\xc0\x0c") + rr_bytes(b"\x00", 65280, b"\xc0\x0c")
    message = decode_message(data)
    assert [rr.rdata for rr in message.answer] == [b"\x02\xc0\x0c", b"\xc0\x0c"]


def test_ttl_with_the_top_bit_set_is_zero() -> None:
    data = header(an=1) + rr_bytes(b"\x00", RRType.A, b"1234", ttl=0x80000001)
    assert decode_message(data).answer[0].ttl == 0  # RFC 2181 §8


# --- EDNS -------------------------------------------------------------------------------------------

def test_opt_is_lifted_out_of_the_additional_section() -> None:
    opt = opt_record(4096, EDNS_DO, options=b"\x00\x0a\x00\x08" + b"\x01" * 8)
    data = header(qd=1, ar=2) + question_bytes(QNAME) + rr_bytes(N("ns.example."), RRType.A, b"1234") + opt
    message = decode_message(data)
    assert message.edns is not None
    assert message.edns.udp_size == 4096
    assert message.edns.do
    assert message.edns.version == 0
    assert message.edns.options == b"\x00\x0a\x00\x08" + b"\x01" * 8
    assert [rr.rtype for rr in message.additional] == [RRType.A]


def test_opt_small_payload_counts_as_512() -> None:
    data = header(qd=1, ar=1) + question_bytes(QNAME) + opt_record(100)
    message = decode_message(data)
    assert message.edns is not None and message.edns.udp_size == 512


def test_opt_extended_rcode_and_version() -> None:
    opt = b"\x00" + struct.pack("!HHIH", RRType.OPT, 1232, (1 << 24) | (1 << 16) | EDNS_DO, 0)
    message = decode_message(header(flags=FLAG_QR, ar=1) + opt)
    assert message.edns is not None
    assert message.edns.ext_rcode == 1 and message.edns.version == 1 and message.edns.do
    assert message.rcode == RCode.BADVERS


def test_opt_extended_rcode_with_the_top_bit_keeps_version_and_flags() -> None:
    """The OPT's TTL field is not a TTL: RFC 2181's top-bit rule must not zero it (before the fix,
    an extended rcode of 128 or more lost the version and the DO bit)."""
    opt = b"\x00" + struct.pack("!HHIH", RRType.OPT, 1232, (0x80 << 24) | EDNS_DO, 0)
    message = decode_message(header(flags=FLAG_QR, ar=1) + opt)
    assert message.edns is not None
    assert message.edns.ext_rcode == 0x80
    assert message.edns.do
    assert message.rcode == 0x800


@pytest.mark.parametrize(
    "additional",
    [
        opt_record(1232) + opt_record(1232),  # two OPTs
        b"\x03foo\x00" + opt_record(1232)[1:],  # an OPT not at the root
    ],
)
def test_bad_opt_rejected(additional: bytes) -> None:
    count = 2 if additional.count(b"\x00\x29") == 2 else 1
    data = header(qd=1, ar=count) + question_bytes(QNAME) + additional
    assert reason_of(data) == DropReason.BAD_OPT


@pytest.mark.parametrize("section", ["answer", "authority"])
def test_an_opt_outside_the_additional_section_is_rejected(section: str) -> None:
    """RFC 6891 §6.1.1: OPT goes in the additional section only (Unbound: FORMERR)."""
    counts = {"an": 1} if section == "answer" else {"ns": 1}
    data = header(qd=1, **counts) + question_bytes(QNAME) + opt_record(1232)
    assert reason_of(data) == DropReason.BAD_OPT


# --- encoding -----------------------------------------------------------------------------------

SOA_RDATA = N("ns1.example.com.") + N("hostmaster.example.com.") + struct.pack("!IIIII", 1, 2, 3, 4, 60)


def test_encode_compresses_owners_and_rdata_names() -> None:
    question = Question(N("www.example.com."), RRType.A)
    answer = [RR(N("www.example.com."), RRType.CNAME, CLASS_IN, 60, N("web.example.com.")),
              RR(N("web.example.com."), RRType.A, CLASS_IN, 60, a_rdata("192.0.2.1"))]
    authority = [RR(N("example.com."), RRType.SOA, CLASS_IN, 60, SOA_RDATA)]
    encoded = encode_message(7, FLAG_QR, question, answer, authority, [])
    data = encoded.data
    # The answer's owner is a pointer to the question name; the SOA's names point into earlier names.
    assert data[12 + len(question.name) + 4:][:2] == pointer(12)
    uncompressed = 12 + len(question.name) + 4 + sum(len(rr.name) + 10 + len(rr.rdata) for rr in answer + authority)
    assert len(data) < uncompressed - 30
    message = decode_message(data)
    assert message.answer == answer
    assert message.authority == authority
    assert message.question == question
    assert encoded.counts == (2, 1, 0)
    assert not encoded.truncated


def test_encode_does_not_compress_rdata_of_types_after_rfc_1035() -> None:
    # SRV (RFC 2782) rdata names must not be compressed (RFC 3597 §4).
    target = N("sip.example.com.")
    srv = RR(N("_sip._udp.example.com."), RRType.SRV, CLASS_IN, 60, struct.pack("!HHH", 1, 2, 5060) + target)
    data = encode_message(1, FLAG_QR, Question(N("sip.example.com."), RRType.SRV), [srv], [], []).data
    assert data.endswith(target)
    assert decode_message(data).answer == [srv]


def test_ttl_offsets_point_at_each_records_ttl() -> None:
    answer = [RR(N("a.example."), RRType.A, CLASS_IN, 1111, a_rdata("192.0.2.1")),
              RR(N("a.example."), RRType.AAAA, CLASS_IN, 2222, aaaa_rdata("2001:db8::1"))]
    additional = [RR(N("b.example."), RRType.A, CLASS_IN, 3333, a_rdata("192.0.2.2"))]
    encoded = encode_message(1, FLAG_QR, Question(N("a.example."), RRType.ANY), answer, [], additional,
                             opt=opt_record(1232))
    ttls = [struct.unpack_from("!I", encoded.data, offset)[0] for offset in encoded.ttl_offsets]
    assert ttls == [1111, 2222, 3333]
    assert HEADER.unpack_from(encoded.data)[5] == 2  # the additional record and the OPT


def _many_a(count: int) -> list[RR]:
    return [RR(N(f"h{i}.example."), RRType.A, CLASS_IN, 60, a_rdata(f"192.0.2.{i % 250 + 1}")) for i in range(count)]


def test_answer_that_does_not_fit_is_truncated_empty() -> None:
    question = Question(N("h.example."), RRType.A)
    opt = opt_record(1232)
    encoded = encode_message(9, FLAG_QR | FLAG_RD, question, _many_a(60), [], [], opt=opt, max_size=512)
    assert encoded.truncated
    assert len(encoded.data) <= 512
    message = decode_message(encoded.data)
    assert message.flags & FLAG_TC
    assert message.flags & FLAG_RD
    assert message.question == question
    assert message.answer == message.authority == message.additional == []
    assert message.edns is not None  # the OPT stays
    assert encoded.counts == (0, 0, 0)
    assert encoded.ttl_offsets == ()


def test_authority_that_does_not_fit_is_truncated_too() -> None:
    question = Question(N("h.example."), RRType.A)
    authority = [RR(N("example."), RRType.NS, CLASS_IN, 60, N(f"ns{i}.example.")) for i in range(60)]
    encoded = encode_message(9, FLAG_QR, question, _many_a(1), authority, [], max_size=512)
    assert encoded.truncated and encoded.counts == (0, 0, 0)


def test_additional_that_does_not_fit_is_dropped_without_tc() -> None:
    question = Question(N("h.example."), RRType.A)
    answer = _many_a(2)
    encoded = encode_message(9, FLAG_QR, question, answer, [], _many_a(60), opt=opt_record(1232), max_size=512)
    assert not encoded.truncated
    assert len(encoded.data) <= 512
    message = decode_message(encoded.data)
    assert not message.flags & FLAG_TC
    assert message.answer == answer
    assert 0 < len(message.additional) < 60
    assert message.additional == _many_a(60)[:len(message.additional)]
    assert message.edns is not None
    assert encoded.counts == (2, 0, len(message.additional))


def test_dropped_additional_does_not_leave_dangling_pointers() -> None:
    # The record that did not fit registered names for compression; later records must not point at them.
    question = Question(N("q.example."), RRType.A)
    additional = [RR(N("x" * 60 + ".example."), RRType.A, CLASS_IN, 60, a_rdata("192.0.2.1"))] * 1 + \
                 [RR(N("x" * 60 + ".example."), RRType.AAAA, CLASS_IN, 60, aaaa_rdata("2001:db8::1"))]
    size = len(encode_message(1, FLAG_QR, question, [], [], additional[:1]).data) + 5
    encoded = encode_message(1, FLAG_QR, question, [], [], additional, max_size=size)
    assert decode_message(encoded.data).additional == additional[:1]


rrtypes = st.sampled_from([RRType.A, RRType.AAAA, RRType.NS, RRType.CNAME, RRType.MX, RRType.TXT, RRType.SOA,
                           RRType.PTR, RRType.SRV, RRType.DNAME, 65280])


@st.composite
def records(draw: st.DrawFn) -> RR:
    rtype = draw(rrtypes)
    name = draw(wire_names())
    if rtype == RRType.A:
        rdata = draw(st.binary(min_size=4, max_size=4))
    elif rtype == RRType.AAAA:
        rdata = draw(st.binary(min_size=16, max_size=16))
    elif rtype in (RRType.NS, RRType.CNAME, RRType.PTR, RRType.DNAME):
        rdata = draw(wire_names())
    elif rtype == RRType.MX:
        rdata = draw(st.binary(min_size=2, max_size=2)) + draw(wire_names())
    elif rtype == RRType.SRV:
        rdata = draw(st.binary(min_size=6, max_size=6)) + draw(wire_names())
    elif rtype == RRType.SOA:
        rdata = draw(wire_names()) + draw(wire_names()) + draw(st.binary(min_size=20, max_size=20))
    else:
        rdata = draw(st.binary(max_size=40))
    return RR(name, rtype, CLASS_IN, draw(st.integers(0, 0x7FFFFFFF)), rdata)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 0xFFFF), st.one_of(st.none(), st.builds(Question, wire_names(), st.integers(0, 0xFFFF))),
       st.lists(records(), max_size=6), st.lists(records(), max_size=4), st.lists(records(), max_size=4))
def test_encode_then_decode_is_the_identity(msg_id: int, question: Question | None, answer: list[RR],
                                            authority: list[RR], additional: list[RR]) -> None:
    encoded = encode_message(msg_id, FLAG_QR | FLAG_RA, question, answer, authority, additional)
    message = decode_message(encoded.data)
    assert message.id == msg_id
    assert message.question == question
    assert message.answer == answer
    assert message.authority == authority
    assert message.additional == additional
    assert encoded.counts == (len(answer), len(authority), len(additional))


@settings(max_examples=200)
@given(st.lists(records(), max_size=20), st.integers(100, 1500))
def test_encoding_never_exceeds_max_size(answer: list[RR], max_size: int) -> None:
    question = Question(N("q.example."), RRType.A)
    encoded = encode_message(1, FLAG_QR, question, answer, [], answer, opt=opt_record(1232), max_size=max_size)
    assert len(encoded.data) <= max_size
    message = decode_message(encoded.data)
    if encoded.truncated:
        assert message.flags & FLAG_TC and message.answer == []
    else:
        assert message.answer == answer


# --- queries: encode_query and quick_question ----------------------------------------------------

def test_encode_query_vectors() -> None:
    plain = encode_query(0xBEEF, N("example.com."), RRType.A, udp_size=None)
    assert plain == b"\xbe\xef\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00" + N("example.com.") + b"\x00\x01\x00\x01"
    with_opt = encode_query(1, N("example.com."), RRType.MX, rd=True, cd=True, udp_size=1232, do=True)
    message = decode_message(with_opt)
    assert message.flags == FLAG_RD | FLAG_CD
    assert message.edns is not None and message.edns.udp_size == 1232 and message.edns.do
    assert message.question == Question(N("example.com."), RRType.MX)


def test_quick_question_vectors() -> None:
    query = encode_query(1, b"\x03WwW\x07ExAmPlE\x00", RRType.A, udp_size=None)
    assert quick_question(query) == (b"\x03www\x07example\x00\x00\x01\x00\x01", len(query), 0, 0)
    with_opt = encode_query(1, N("example."), RRType.AAAA, udp_size=4096, do=True)
    key, qend, size, flags = quick_question(with_opt) or (b"", 0, 0, 0)
    assert key == N("example.") + b"\x00\x1c\x00\x01"
    assert qend == 12 + len(N("example.")) + 4
    assert size == 4096 and flags == EDNS_DO
    small = encode_query(1, N("example."), RRType.A, udp_size=100)
    assert quick_question(small) == (N("example.") + b"\x00\x01\x00\x01", 12 + 9 + 4, 512, 0)
    # Options are skipped, as the full decode skips them: a client cookie, then padding.
    options = b"\x00\x0a\x00\x08" + bytes(range(8)) + b"\x00\x0c\x00\x03" + bytes(3)
    cookie = header(qd=1, ar=1) + question_bytes(QNAME) + opt_record(1232, EDNS_DO, options=options)
    assert quick_question(cookie) == (QNAME.lower() + b"\x00\x01\x00\x01", 12 + len(QNAME) + 4, 1232, EDNS_DO)


@pytest.mark.parametrize(
    "query",
    [
        header(flags=FLAG_QR, qd=1) + question_bytes(QNAME),  # a response
        header(flags=0x2800, qd=1) + question_bytes(QNAME),  # opcode UPDATE
        header(qd=0),  # no question
        header(qd=1, an=1) + question_bytes(QNAME) + rr_bytes(b"\x00", RRType.A, b"1234"),
        header(qd=1, ar=1) + question_bytes(QNAME) + rr_bytes(b"\x00", RRType.A, b"1234"),  # not an OPT
        header(qd=1, ar=1) + question_bytes(QNAME) + opt_record(1232, options=b"\x00\x0a\x00"),  # a cut option
        header(qd=1, ar=1) + question_bytes(QNAME) + opt_record(1232, options=b"\x00\x0a\x00\x09abcd"),  # overrun
        header(qd=1, ar=1) + question_bytes(QNAME) + opt_record(1232)[:-2] + b"\x00\x08\x00\x0a\x00\x00",
        header(qd=1, ar=1) + question_bytes(QNAME)
        + b"\x00" + struct.pack("!HHIH", RRType.OPT, 1232, 1 << 16, 0),  # EDNS version 1
        header(qd=1, ar=2) + question_bytes(QNAME) + opt_record(1232) * 2,
        header(qd=1) + pointer(12) + b"\x00\x01\x00\x01",  # compression in the question
        header(qd=1) + question_bytes(QNAME) + b"\x00",  # trailing byte
        header(qd=1) + QNAME[:-3],  # cut
    ],
)
def test_quick_question_declines_the_unusual(query: bytes) -> None:
    assert quick_question(query) is None


query_names = wire_names(lower=False)


@settings(max_examples=500)
@given(st.integers(0, 0xFFFF), query_names, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.booleans(),
       st.booleans(), st.one_of(st.none(), st.integers(0, 0xFFFF)), st.booleans())
def test_quick_question_agrees_with_the_full_decode(msg_id: int, name: bytes, qtype: int, qclass: int, rd: bool,
                                                   cd: bool, udp_size: int | None, do: bool) -> None:
    query = encode_query(msg_id, name, qtype, qclass, rd=rd, cd=cd, udp_size=udp_size, do=do)
    quick = quick_question(query)
    message = decode_message(query)
    assert message.question is not None
    assert quick is not None
    key, qend, size, flags = quick
    assert key == key_of(message.question)
    assert query[12:qend] == message.question.name + struct.pack("!HH", qtype, qclass)
    if message.edns is None:
        assert (size, flags) == (0, 0)
    else:
        assert size == message.edns.udp_size
        assert flags == message.edns.flags


# --- error replies --------------------------------------------------------------------------------

def test_error_reply_echoes_id_question_and_flags() -> None:
    query = encode_query(0x4242, b"\x03WwW\x07example\x00", RRType.A, rd=True, cd=True, udp_size=1232)
    reply = error_reply(query, RCode.FORMERR)
    assert reply is not None
    message = decode_message(reply)
    assert message.id == 0x4242
    assert message.flags & FLAG_QR and message.flags & FLAG_RD and message.flags & FLAG_CD and message.flags & FLAG_RA
    assert message.rcode == RCode.FORMERR
    assert message.question == Question(b"\x03WwW\x07example\x00", RRType.A)  # case kept
    assert message.answer == message.authority == message.additional == []
    no_ra = error_reply(query, RCode.REFUSED, ra=False)
    assert no_ra is not None and not decode_message(no_ra).flags & FLAG_RA


@pytest.mark.parametrize(
    "query",
    [
        b"",
        b"\x00" * 11,
        header(flags=FLAG_QR, qd=1) + question_bytes(QNAME),  # a response: never answered
        header(flags=FLAG_QR | 5) + b"garbage",
    ],
)
def test_error_reply_refuses_to_answer(query: bytes) -> None:
    assert error_reply(query, RCode.FORMERR) is None


@pytest.mark.parametrize(
    "query",
    [
        header(qd=1) + b"\x03www\xff\xff",  # a broken name: header only
        header(qd=1) + pointer(40) + b"\x00\x01",  # a forward pointer
        header(qd=5) + question_bytes(QNAME),  # several questions: none echoed
        header() + b"junk",
        header(flags=0x2800),  # another opcode is kept
    ],
)
def test_error_reply_to_garbage_with_a_header(query: bytes) -> None:
    reply = error_reply(query, RCode.FORMERR)
    assert reply is not None
    message = decode_message(reply)
    assert message.id == 0x1234
    assert message.flags & FLAG_QR
    assert message.rcode == RCode.FORMERR
    assert message.question is None
    assert message.opcode == (query[2] >> 3) & 0xF


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_error_reply_never_raises_and_never_answers_a_response(data: bytes) -> None:
    reply = error_reply(data, RCode.FORMERR)
    if len(data) < 12 or data[2] & 0x80:
        assert reply is None
        return
    assert reply is not None
    message = decode_message(reply)  # always a well-formed message
    assert message.flags & FLAG_QR and message.id == int.from_bytes(data[:2], "big")
    assert len(reply) <= len(data) + 4


# --- fuzz -----------------------------------------------------------------------------------------

@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_decode_random_bytes_raises_only_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_message(data)
    quick_question(data)  # never raises


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    question = Question(draw(wire_names()), draw(rrtypes))
    answer = draw(st.lists(records(), max_size=4))
    base = bytearray(encode_message(1, FLAG_QR, question, answer, answer[:2], answer[:1], opt=opt_record(1232)).data)
    for _ in range(draw(st.integers(1, 6))):
        if not base:
            break
        index = draw(st.integers(0, len(base) - 1))
        base[index] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del base[draw(st.integers(0, len(base))):]
    return bytes(base)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_decode_mutated_messages_raises_only_wire_error(data: bytes) -> None:
    try:
        message = decode_message(data)
    except WireError:
        return
    # Whatever decodes encodes again and decodes to the same records (names in rdata may change case).
    encoded = encode_message(message.id, message.flags, message.question, message.answer, message.authority,
                             message.additional)
    again = decode_message(encoded.data)
    assert [(rr.name, rr.rtype, rr.ttl, rr.rdata.lower()) for rr in again.answer] == \
        [(rr.name, rr.rtype, rr.ttl, rr.rdata.lower()) for rr in message.answer]


@settings(max_examples=500)
@given(st.binary(max_size=40), st.integers(0, 48), st.integers(0, 0xFFFF))
def test_quick_question_reads_only_what_the_full_decode_reads(options: bytes, declared: int, udp_size: int) -> None:
    """Whatever the OPT's options area holds, and whatever length its RDLENGTH declares: when the
    quick read takes the query, the full decode takes it too and finds the same question."""
    opt = b"\x00" + struct.pack("!HHIH", RRType.OPT, udp_size, 0, declared) + options
    query = header(qd=1, ar=1) + question_bytes(QNAME) + opt
    quick = quick_question(query)
    try:
        message = decode_message(query)
    except WireError:
        assert quick is None
        return
    if quick is not None:
        assert message.question is not None and quick[0] == key_of(message.question)


@pytest.mark.parametrize("do", [True, False])
def test_error_reply_with_edns_copies_the_do_bit(do: bool) -> None:
    """RFC 3225 §3: the DO bit of the query is copied into the response - also into the REFUSED
    a client outside ``allow`` gets, which is made from the raw query (from a bug hunt: never)."""
    query = encode_query(0x4242, b"\x03www\x07example\x00", RRType.A, rd=True, udp_size=1232, do=do)
    reply = error_reply(query, RCode.REFUSED, edns=True)
    assert reply is not None
    message = decode_message(reply)
    assert message.edns is not None and message.edns.do == do


def test_a_pointer_into_the_header_is_no_name() -> None:
    """From a code read: a pointer had only to go backwards, and the question's can only go into
    the header, so a query whose question was a pointer got the name its ID and flags spell
    (0x0161 0x0100: ``a.\\000.``) resolved, NXDOMAIN from the root, where Unbound says FORMERR
    (no compression in a query's question)."""
    query = bytes([0x01, 0x61, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]) + b"\xc0\x00" + b"\x00\x10\x00\x01"
    with pytest.raises(WireError) as caught:
        decode_message(query)
    assert caught.value.reason == DropReason.BAD_POINTER
    reply = error_reply(query, RCode.FORMERR)  # the FORMERR without a question it cannot read
    assert reply is not None and reply[4:6] == b"\x00\x00" and reply[3] & 0xF == RCode.FORMERR
    # Records of a response point back to its question, as ever.
    response = encode_message(7, FLAG_QR, Question(name_from_text("www.example.test."), RRType.A),
                              [RR(name_from_text("www.example.test."), RRType.A, 1, 60, bytes(4))], [], []).data
    assert decode_message(response).answer[0].name == name_from_text("www.example.test.")
