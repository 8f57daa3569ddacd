"""EDNS padding of replies on encrypted transports (RFC 7830, block-length padding of RFC 8467
§4.1): ``ispd.dns.wire.pad_reply``, checked against dnspython's reading of the result."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rrset
import pytest

from ispd.dns.wire import OPTION_PADDING, RESPONSE_PADDING_BLOCK, decode_message, pad_reply

BLOCK = RESPONSE_PADDING_BLOCK
assert BLOCK == 468


def response(qname: str = "portal.isp.test", *, edns: bool = True, answer: tuple[str, ...] = (),
             authority: tuple[str, ...] = (), additional: tuple[str, ...] = (), rcode: int = dns.rcode.NOERROR,
             options: list[dns.edns.Option] | None = None, do: bool = False) -> bytes:
    query = dns.message.make_query(qname, "A", use_edns=0 if edns else False, want_dnssec=do)
    reply = dns.message.make_response(query)
    if edns:
        reply.use_edns(0, dns.flags.DO if do else 0, 1232, options=options or [])
    reply.set_rcode(rcode)
    for section, texts in ((reply.answer, answer), (reply.authority, authority), (reply.additional, additional)):
        for text in texts:
            owner, ttl, rtype, rdata = text.split(None, 3)
            section.append(dns.rrset.from_text(owner, int(ttl), dns.rdataclass.IN, rtype, rdata))
    return reply.to_wire()


def sized(total: int) -> bytes:
    """A reply of exactly ``total`` bytes with EDNS: one TXT record sized to fit."""
    question = b"\x06portal\x03isp\x04test\x00" + struct.pack("!HH", 1, 1)
    opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
    rdlength = total - 12 - len(question) - 12 - len(opt)
    rdata = bytearray()
    while len(rdata) < rdlength:
        chunk = min(255, rdlength - len(rdata) - 1)
        rdata += bytes([chunk]) + b"x" * chunk
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 300, len(rdata)) + rdata
    wire = struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 1) + question + answer + opt
    assert len(wire) == total
    return wire


def opt_before_other_additional() -> bytes:
    """OPT first in the additional section, an A record after it (RFC 6891 allows any position)."""
    wire = response(answer=("portal.isp.test. 300 A 198.18.0.10",))
    opt = wire[-11:]
    glue = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([198, 18, 0, 11])
    header = bytearray(wire[:12])
    struct.pack_into("!H", header, 10, 2)
    return bytes(header) + wire[12:-11] + opt + glue


def padding_options(message: dns.message.Message) -> list[dns.edns.Option]:
    return [o for o in message.options if o.otype == dns.edns.OptionType.PADDING]


PADDED = [
    ("a bare NOERROR", response()),
    ("an answer", response(answer=("portal.isp.test. 300 A 198.18.0.10",))),
    ("every section, with compression", response(
        answer=("portal.isp.test. 300 CNAME www.isp.test.", "www.isp.test. 300 A 198.18.0.11"),
        authority=("isp.test. 300 NS ns1.isp.test.", "isp.test. 300 NS ns2.isp.test."),
        additional=("ns1.isp.test. 300 A 198.18.0.1", "ns2.isp.test. 300 AAAA 2001:db8::1"))),
    ("NXDOMAIN with a SOA", response(rcode=dns.rcode.NXDOMAIN, authority=(
        "isp.test. 60 SOA ns1.isp.test. hostmaster.isp.test. 1 3600 600 86400 60",))),
    ("the DO bit", response(answer=("portal.isp.test. 300 A 198.18.0.10",), do=True)),
    ("an extended rcode (BADVERS)", response(rcode=dns.rcode.BADVERS)),
    ("another option (a cookie)", response(options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE,
                                                                           bytes(range(24)))])),
    ("OPT before another additional record", opt_before_other_additional()),
    ("larger than one block", response(answer=tuple(f"portal.isp.test. 300 TXT \"{'y' * 200}{i}\""
                                                    for i in range(3)))),
    ("464 bytes: a padding option of length 0 fills the block", sized(BLOCK - 4)),
    ("465 bytes: into the second block", sized(BLOCK - 3)),
    ("468 bytes: a whole block already, still padded to the next", sized(BLOCK)),
    ("the largest that can be padded (65,516 bytes to 65,520)", sized(65516)),
]


@pytest.mark.parametrize("wire", [w for _, w in PADDED], ids=[name for name, _ in PADDED])
def test_padded(wire: bytes) -> None:
    padded = pad_reply(wire)
    assert len(padded) % BLOCK == 0 and len(padded) > len(wire)
    assert len(padded) - len(wire) < BLOCK + 4
    before = dns.message.from_wire(wire)
    after = dns.message.from_wire(padded)
    # Everything but the padding is as it was.
    assert (after.id, after.flags, after.rcode(), after.ednsflags, after.payload) == \
           (before.id, before.flags, before.rcode(), before.ednsflags, before.payload)
    assert (after.question, after.answer, after.authority, after.additional) == \
           (before.question, before.answer, before.authority, before.additional)
    [padding] = padding_options(after)
    assert [o for o in after.options if o not in padding_options(after)] == list(before.options)
    assert padding.to_wire() == bytes(len(padding.to_wire()))  # RFC 7830 §3: zeros
    # ispd's own decoder reads it too, and padding it again changes nothing.
    decoded = decode_message(padded)
    assert decoded.edns is not None
    assert pad_reply(padded) == padded


def test_another_block_size() -> None:
    wire = response(answer=("portal.isp.test. 300 A 198.18.0.10",))
    assert len(pad_reply(wire, block=128)) == 128


UNCHANGED = [
    ("no OPT (the query had no EDNS)", response(edns=False)),
    ("no OPT, with answers", response(edns=False, answer=("portal.isp.test. 300 A 198.18.0.10",))),
    ("already padded", response(options=[dns.edns.GenericOption(dns.edns.OptionType.PADDING, bytes(20))])),
    ("already padded, after another option", response(options=[
        dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(8)),
        dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"")])),
    ("padding would pass 65,535 bytes (65,517)", sized(65517)),
    ("padding would pass 65,535 bytes (65,535)", sized(65535)),
    ("a header only", bytes(12)),
    ("fewer than 12 bytes", b"\x12\x34\x81\x80"),
    ("empty", b""),
    ("the OPT record cut short", response()[:-3]),
    ("a record count larger than the records", b"\x12\x34\x81\x80\x00\x00\x00\x05\x00\x00\x00\x01"),
]


@pytest.mark.parametrize("wire", [w for _, w in UNCHANGED], ids=[name for name, _ in UNCHANGED])
def test_unchanged(wire: bytes) -> None:
    assert pad_reply(wire) == wire


def test_the_option_code_is_rfc_7830s() -> None:
    assert OPTION_PADDING == dns.edns.OptionType.PADDING == 12
