"""The RADIUS codec: RFC 2865 §7 vectors, hidden attributes, authenticators, malformed input."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispd.radius.codec import (
    Attr,
    Code,
    DropReason,
    RadiusDecodeError,
    check_message_authenticator,
    check_request_authenticator,
    check_response_authenticator,
    decode,
    encode_attributes,
    encode_request,
    encode_response,
    hide_password,
    hide_salted,
    reveal_password,
    reveal_salted,
    split_vendor_specific,
    vendor_specific,
)

SECRET = b"xyzzy5461"
# RFC 2865 §7.1: "nemo" logs in with the password "arctangent", secret "xyzzy5461".
RFC_REQUEST = bytes.fromhex("010000380f403f9473978057bd83d5cb98f4227a01066e656d6f02120dbe708d93d413ce3196e43f782a0aee"
                            "0406c0a80110050600000003")
RFC_ACCEPT = bytes.fromhex("0200002686fe220e7624ba2a1005f6bf9b55e0b20606000000010f06000000000e06c0a80103")


def test_rfc_2865_access_request_decodes_and_reveals_the_password() -> None:
    packet = decode(RFC_REQUEST)
    assert (packet.code, packet.identifier) == (Code.ACCESS_REQUEST, 0)
    assert packet.get(Attr.USER_NAME) == b"nemo"
    assert packet.integer(Attr.NAS_PORT) == 3
    assert reveal_password(packet.get(Attr.USER_PASSWORD) or b"", SECRET, packet.authenticator) == b"arctangent"
    assert hide_password(b"arctangent", SECRET, packet.authenticator) == packet.get(Attr.USER_PASSWORD)


def test_rfc_2865_access_accept_is_encoded_byte_for_byte() -> None:
    request = decode(RFC_REQUEST)
    reply = encode_response(Code.ACCESS_ACCEPT, 0, request.authenticator, RFC_ACCEPT[20:], SECRET,
                            message_authenticator=False)
    assert reply == RFC_ACCEPT
    assert check_response_authenticator(decode(reply), request.authenticator, SECRET)
    assert not check_response_authenticator(decode(reply), bytes(16), SECRET)


@given(st.binary(max_size=128), st.binary(min_size=1, max_size=64), st.binary(min_size=16, max_size=16))
def test_user_password_round_trip(password: bytes, secret: bytes, authenticator: bytes) -> None:
    hidden = hide_password(password, secret, authenticator)
    assert len(hidden) % 16 == 0 and 16 <= len(hidden) <= 128
    assert reveal_password(hidden, secret, authenticator) == password.rstrip(b"\x00")


@pytest.mark.parametrize("hidden", [b"", b"x" * 15, b"x" * 17, b"x" * 144])
def test_user_password_of_a_wrong_size_is_refused(hidden: bytes) -> None:
    assert reveal_password(hidden, SECRET, bytes(16)) is None


@given(st.binary(max_size=239), st.binary(min_size=16, max_size=16))
def test_salted_hiding_round_trip(value: bytes, authenticator: bytes) -> None:
    hidden = hide_salted(value, SECRET, authenticator)
    assert hidden[0] & 0x80  # RFC 2868 §3.5: the salt's high bit is set
    assert (len(hidden) - 2) % 16 == 0
    assert reveal_salted(hidden, SECRET, authenticator) == value


def test_salted_hiding_follows_rfc_2868_step_by_step() -> None:
    authenticator, salt = bytes(range(16)), b"\x80\x01"
    hidden = hide_salted(b"tunnel-secret", SECRET, authenticator, salt)
    plain = bytes((13,)) + b"tunnel-secret" + bytes(2)  # length octet, value, padding to 16
    key = hashlib.md5(SECRET + authenticator + salt).digest()
    assert hidden == salt + bytes(a ^ b for a, b in zip(plain, key, strict=True))


def test_access_request_message_authenticator_signs_the_whole_packet() -> None:
    attributes = encode_attributes([(Attr.USER_NAME, b"alice")])
    data = encode_request(Code.ACCESS_REQUEST, 7, attributes, SECRET)
    packet = decode(data)
    assert packet.attributes[0][0] == Attr.MESSAGE_AUTHENTICATOR  # first, as BlastRADIUS advice says
    assert check_message_authenticator(packet, SECRET)
    assert not check_message_authenticator(packet, b"other secret")
    # By hand (RFC 3579 §3.2): HMAC-MD5 over the packet with the value zeroed.
    zeroed = data[:22] + bytes(16) + data[38:]
    assert hmac.digest(SECRET, zeroed, "md5") == data[22:38]
    tampered = bytearray(data)
    tampered[-1] ^= 1
    assert not check_message_authenticator(decode(bytes(tampered)), SECRET)


def test_accounting_request_authenticator_and_message_authenticator() -> None:
    data = encode_request(Code.ACCOUNTING_REQUEST, 1, encode_attributes([(Attr.ACCT_STATUS_TYPE, b"\0\0\0\1")]),
                          SECRET)
    packet = decode(data)
    assert check_request_authenticator(packet, SECRET)
    assert check_message_authenticator(packet, SECRET)  # computed over a zeroed authenticator
    assert hashlib.md5(data[:4] + bytes(16) + data[20:] + SECRET).digest() == data[4:20]
    assert not check_request_authenticator(packet, b"wrong")


def test_response_message_authenticator_uses_the_request_authenticator() -> None:
    request_authenticator = bytes(range(16))
    reply = decode(encode_response(Code.ACCESS_ACCEPT, 3, request_authenticator, b"", SECRET))
    assert check_message_authenticator(reply, SECRET, request_authenticator)
    assert check_response_authenticator(reply, request_authenticator, SECRET)
    accounting = decode(encode_response(Code.ACCOUNTING_RESPONSE, 3, request_authenticator, b"", SECRET,
                                        signed_with_zeros=True))
    assert check_message_authenticator(accounting, SECRET, bytes(16))
    assert check_response_authenticator(accounting, request_authenticator, SECRET)


def test_missing_or_duplicated_message_authenticator() -> None:
    plain = decode(encode_request(Code.ACCESS_REQUEST, 1, b"", SECRET, message_authenticator=False))
    with pytest.raises(RadiusDecodeError) as missing:
        check_message_authenticator(plain, SECRET)
    assert missing.value.reason == DropReason.MISSING_MESSAGE_AUTHENTICATOR
    twice = encode_request(Code.ACCESS_REQUEST, 1, encode_attributes([(Attr.MESSAGE_AUTHENTICATOR, bytes(16))]),
                           SECRET)
    with pytest.raises(RadiusDecodeError) as duplicated:
        check_message_authenticator(decode(twice), SECRET)
    assert duplicated.value.reason == DropReason.DUPLICATE_MESSAGE_AUTHENTICATOR
    short = encode_request(Code.ACCESS_REQUEST, 1, encode_attributes([(Attr.MESSAGE_AUTHENTICATOR, bytes(4))]),
                           SECRET, message_authenticator=False)
    with pytest.raises(RadiusDecodeError) as malformed:
        check_message_authenticator(decode(short), SECRET)
    assert malformed.value.reason == DropReason.BAD_MESSAGE_AUTHENTICATOR


HEADER = bytes((1, 1)) + (26).to_bytes(2, "big") + bytes(16)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", DropReason.TRUNCATED),
    (HEADER[:19], DropReason.TRUNCATED),
    (bytes((1, 1, 0, 19)) + bytes(16), DropReason.BAD_LENGTH),
    (bytes((1, 1, 0x10, 0x01)) + bytes(4096), DropReason.BAD_LENGTH),  # 4097
    (HEADER + b"\x01\x06abc", DropReason.TRUNCATED),  # Length says 26, the datagram has 25
    (HEADER + b"\x01\x00abcd", DropReason.ATTRIBUTE_OVERRUN),  # length 0
    (HEADER + b"\x01\x01abcd", DropReason.ATTRIBUTE_OVERRUN),  # length 1
    (HEADER + b"\x01\x07abcd", DropReason.ATTRIBUTE_OVERRUN),  # runs past the end
    (bytes((1, 1, 0, 21)) + bytes(16) + b"\x01", DropReason.ATTRIBUTE_OVERRUN),  # one octet left
    # One octet left within Length, the attribute's length octet in the padding after it.
    (bytes((1, 1, 0, 21)) + bytes(16) + b"\x01\x06abcd", DropReason.ATTRIBUTE_OVERRUN),
    (HEADER + b"\x01\x07abcd" + b"\xff" * 10, DropReason.ATTRIBUTE_OVERRUN),  # runs into the padding
])
def test_malformed_packets_are_refused_with_a_reason(data: bytes, reason: DropReason) -> None:
    with pytest.raises(RadiusDecodeError) as refused:
        decode(data)
    assert refused.value.reason == reason


def test_octets_beyond_the_length_field_are_padding() -> None:
    packet = decode(HEADER + b"\x01\x06abcd" + b"\xff" * 10)  # RFC 2865 §3: ignored
    assert packet.attributes == [(1, b"abcd")] and len(packet.raw) == 26


@settings(max_examples=2000)
@given(st.binary(max_size=300))
def test_any_datagram_decodes_or_is_refused(data: bytes) -> None:
    try:
        packet = decode(data)
    except RadiusDecodeError:
        return
    assert len(packet.raw) <= len(data)


@given(st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=253)), max_size=10))
def test_attributes_round_trip(attributes: list[tuple[int, bytes]]) -> None:
    body = encode_attributes(attributes)
    data = bytes((1, 0)) + (20 + len(body)).to_bytes(2, "big") + bytes(16) + body
    if len(data) <= 4096:
        assert list(decode(data).attributes) == attributes


def test_vendor_specific_splits_and_rejects_what_does_not_add_up() -> None:
    code, value = vendor_specific(14988, 8, b"10M/20M")
    assert code == Attr.VENDOR_SPECIFIC
    assert split_vendor_specific(value) == [(8, b"10M/20M")]
    assert split_vendor_specific(value[:4] + b"\x08\x01") is None  # length below its own header
    assert split_vendor_specific(value[:4] + b"\x08\x09ab") is None  # runs past the end
    # Two-octet types and lengths (format=2,2), as some vendors declare.
    assert split_vendor_specific(value[:4] + b"\x01\x00\x00\x06ab", 2, 2) == [(256, b"ab")]
