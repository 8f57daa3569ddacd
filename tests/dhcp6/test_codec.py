"""DHCPv6 codec: messages and relay messages both ways, and what it refuses."""

from __future__ import annotations

import contextlib
import struct
from ipaddress import IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispd.dhcp6.codec import (
    IA,
    DHCP6DecodeError,
    DropReason,
    IAAddress,
    IAPrefix,
    Message,
    MessageType,
    OptionCode,
    RelayForward,
    decode,
    decode_ia,
    encode,
    encode_domain_list,
    encode_ia,
    encode_relay_reply,
    option,
)

CLIENT_DUID = bytes.fromhex("000100012a3b4c5d02005e100001")


def _opt(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


def solicit_bytes() -> bytes:
    ia_na = struct.pack("!III", 1, 0, 0)
    ia_pd = struct.pack("!III", 2, 0, 0) + _opt(26, struct.pack("!IIB16s", 0, 0, 56, bytes(16)))
    fqdn = b"\x01" + b"\x06router\x04home\x00"
    return (bytes([1]) + b"\xab\xcd\xef" + _opt(1, CLIENT_DUID) + _opt(6, struct.pack("!HH", 23, 24))
            + _opt(8, b"\x00\x00") + _opt(3, ia_na) + _opt(25, ia_pd) + _opt(14, b"") + _opt(39, fqdn))


def test_a_solicit_is_read_into_its_fields() -> None:
    message = decode(solicit_bytes())
    assert isinstance(message, Message)
    assert message.type == MessageType.SOLICIT and message.transaction_id == 0xABCDEF
    assert message.client_id == CLIENT_DUID and message.server_id is None
    assert message.requested_options == (23, 24)
    assert message.rapid_commit and message.hostname == "router.home"
    na, pd = message.ias
    assert (na.code, na.iaid, na.leases) == (OptionCode.IA_NA, 1, ())
    assert pd.code == OptionCode.IA_PD and pd.leases == (IAPrefix(IPv6Network("::/56"), 0, 0),)
    assert encode(message) == solicit_bytes()  # the options as they came, in order


def test_ias_round_trip() -> None:
    na = IA(OptionCode.IA_NA, 7, 1800, 2880, (IAAddress(IPv6Address("2001:db8:1::10"), 3600, 7200),))
    pd = IA(OptionCode.IA_PD, 8, 1800, 2880, (IAPrefix(IPv6Network("2001:db8:100:ff00::/56"), 3600, 7200),),
            (0, "ok"))
    for ia in (na, pd):
        encoded = encode_ia(ia)
        assert decode_ia(encoded.code, encoded.data) == ia


def test_relay_forward_nests_and_the_reply_wraps_back() -> None:
    inner = solicit_bytes()
    first = (bytes([12, 0]) + IPv6Address("2001:db8:1::1").packed + IPv6Address("fe80::1").packed
             + _opt(18, b"olt1 1/1/3") + _opt(37, b"\x00\x00\x0d\xe9line-7") + _opt(9, inner))
    second = bytes([12, 1]) + bytes(16) + IPv6Address("2001:db8:ff::2").packed + _opt(9, first)
    outer = decode(second)
    assert isinstance(outer, RelayForward)
    relays, message = outer.chain()
    assert [r.hop_count for r in relays] == [1, 0]
    assert relays[1].interface_id == b"olt1 1/1/3" and relays[1].remote_id == b"\x00\x00\x0d\xe9line-7"
    assert isinstance(message, Message) and message.client_id == CLIENT_DUID
    reply = encode_relay_reply(relays[1], b"\x07\xab\xcd\xef")
    assert reply[0] == MessageType.RELAY_REPL and reply[2:18] == IPv6Address("2001:db8:1::1").packed
    assert reply[34:] == _opt(18, b"olt1 1/1/3") + _opt(9, b"\x07\xab\xcd\xef")


def test_domain_list_is_wire_form() -> None:
    assert encode_domain_list(["isp.example", "lab."]).data == b"\x03isp\x07example\x00\x03lab\x00"


def test_a_bad_fqdn_is_not_kept() -> None:
    data = bytes([1]) + b"\x00\x00\x01" + _opt(1, CLIENT_DUID) + _opt(39, b"\x01\x05ro ut\x00")
    message = decode(data)
    assert isinstance(message, Message) and message.hostname is None


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x01\x00", DropReason.TRUNCATED),
    (b"\x01\x00\x00\x01\x00\x01\x00\x10abc", DropReason.OPTION_OVERRUN),
    (b"\x01\x00\x00\x01\x00", DropReason.OPTION_OVERRUN),
    (b"\x01\x00\x00\x01" + _opt(3, b"\x00\x00\x00\x01"), DropReason.BAD_OPTION),  # IA without T1/T2
    (b"\x01\x00\x00\x01" + _opt(1, b"\x00"), DropReason.BAD_OPTION),  # a DUID of one byte
    (b"\x01\x00\x00\x01" + _opt(6, b"\x00\x17\x00"), DropReason.BAD_OPTION),
    (b"\x01\x00\x00\x01" + _opt(25, struct.pack("!III", 1, 0, 0) + _opt(26, b"\x00" * 8)), DropReason.BAD_OPTION),
    (b"\x01\x00\x00\x01" + _opt(25, struct.pack("!III", 1, 0, 0) + _opt(26, struct.pack("!IIB16s", 0, 0, 129,
                                                                                        bytes(16)))),
     DropReason.BAD_OPTION),
    (bytes([12, 0]) + bytes(20), DropReason.TRUNCATED),
    (bytes([12, 0]) + bytes(32) + _opt(18, b"x"), DropReason.NO_RELAYED_MESSAGE),
    (bytes([13, 0]) + bytes(32) + _opt(9, b"\x07\x00\x00\x01"), DropReason.NO_RELAYED_MESSAGE),
])
def test_malformed_messages_are_refused_with_a_reason(data: bytes, reason: DropReason) -> None:
    with pytest.raises(DHCP6DecodeError) as caught:
        decode(data)
    assert caught.value.reason is reason


def test_relays_nested_past_the_hop_limit_are_refused() -> None:
    data = solicit_bytes()
    for hop in range(33):
        data = bytes([12, hop]) + bytes(32) + _opt(9, data)
    with pytest.raises(DHCP6DecodeError) as caught:
        decode(data)
    assert caught.value.reason is DropReason.HOP_LIMIT


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_the_codecs_error(data: bytes) -> None:
    with contextlib.suppress(DHCP6DecodeError):
        decode(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_solicits_decode_or_raise_the_codecs_error(data: st.DataObject) -> None:
    raw = bytearray(solicit_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        decoded = decode(bytes(raw[:cut]))
    except DHCP6DecodeError:
        return
    if isinstance(decoded, Message):
        encode(decoded)


def test_option_builder() -> None:
    assert option(OptionCode.RAPID_COMMIT).data == b""
