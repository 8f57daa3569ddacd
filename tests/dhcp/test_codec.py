from __future__ import annotations

import contextlib
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ispd.dhcp.codec import (
    BOOTREPLY,
    BOOTREQUEST,
    HEADER_SIZE,
    MAGIC_COOKIE,
    DHCPDecodeError,
    DHCPPacket,
    DropReason,
    decode,
    encode,
)
from ispd.dhcp.options import (
    ClientFQDN,
    DHCPMessageType,
    Option,
    OptionValueError,
    decode_classless_routes,
    decode_client_fqdn,
    decode_ips,
    decode_relay_agent_info,
    encode_classless_routes,
)

# The DISCOVER of Wireshark's sample capture dhcp.pcap (client 00:0b:82:01:fc:42, xid 0x3d1d),
# header fields and options as the capture shows them.
DISCOVER = bytes.fromhex(
    "0101060000003d1d0000000000000000000000000000000000000000000b8201fc4200000000000000000000"
    + "00" * 192
    + "63825363"
    + "350101"  # message type DISCOVER
    + "3d0701000b8201fc42"  # client identifier: htype 1 + MAC
    + "320400000000"  # requested address 0.0.0.0
    + "370401032a06"  # parameter request list: 1, 3, 42, 6
    + "ff"
    + "00" * 7
)


def test_a_real_discover_decodes() -> None:
    packet = decode(DISCOVER)
    assert packet.op == BOOTREQUEST and packet.xid == 0x3D1D
    assert packet.hw_address == bytes.fromhex("000b8201fc42")
    assert packet.message_type is DHCPMessageType.DISCOVER
    assert packet.option(Option.CLIENT_ID) == bytes.fromhex("01000b8201fc42")
    assert packet.option(Option.PARAMETER_REQUEST_LIST) == bytes((1, 3, 42, 6))
    assert [code for code, _ in packet.options] == [53, 61, 50, 55]
    assert not packet.broadcast


def test_encode_then_decode_is_identity() -> None:
    reply = DHCPPacket(
        op=BOOTREPLY, xid=0xDEADBEEF, chaddr=bytes.fromhex("020000000001"), flags=0x8000,
        yiaddr=IPv4Address("198.18.0.10"), siaddr=IPv4Address("198.18.0.1"), giaddr=IPv4Address("198.18.1.1"),
        options=((Option.MESSAGE_TYPE, bytes((DHCPMessageType.OFFER,))), (Option.SERVER_ID, bytes((198, 18, 0, 1))),
                 (Option.LEASE_TIME, (3600).to_bytes(4, "big")), (224, b"unknown private option")),
    )
    wire = encode(reply)
    assert len(wire) >= 300 and wire[HEADER_SIZE : HEADER_SIZE + 4] == MAGIC_COOKIE
    back = decode(wire)
    assert back.options == reply.options
    assert back == DHCPPacket(**{**{f: getattr(reply, f) for f in reply.__dataclass_fields__},
                                 "chaddr": reply.chaddr.ljust(16, b"\x00")})
    assert back.broadcast and back.message_type is DHCPMessageType.OFFER
    assert decode(DISCOVER) == decode(encode(decode(DISCOVER)))


def test_long_values_are_split_and_joined_again() -> None:
    long_value = bytes(range(256)) * 2  # 512 bytes: three instances on the wire
    wire = encode(DHCPPacket(op=BOOTREPLY, xid=1, options=((Option.VENDOR_SPECIFIC, long_value),)))
    assert wire.count(bytes((Option.VENDOR_SPECIFIC, 255))) == 2
    assert decode(wire).option(Option.VENDOR_SPECIFIC) == long_value


def header(options: bytes, *, sname: bytes = bytes(64), file: bytes = bytes(128)) -> bytes:
    base = bytearray(DISCOVER[:HEADER_SIZE])
    base[44:108] = sname
    base[108:236] = file
    return bytes(base) + MAGIC_COOKIE + options


def test_overload_reads_file_then_sname() -> None:
    file = (bytes((Option.HOSTNAME, 3)) + b"cpe" + b"\xff").ljust(128, b"\x00")
    sname = (bytes((Option.DOMAIN_NAME, 4)) + b"home" + b"\xff").ljust(64, b"\x00")
    packet = decode(header(b"\x35\x01\x03\x34\x01\x03\xff", sname=sname, file=file))
    assert packet.message_type is DHCPMessageType.REQUEST
    assert packet.option(Option.HOSTNAME) == b"cpe" and packet.option(Option.DOMAIN_NAME) == b"home"
    assert packet.file == bytes(128) and packet.sname == bytes(64)  # they held options, not names


def test_without_overload_file_and_sname_are_plain_fields() -> None:
    file = b"boot/pxelinux.0".ljust(128, b"\x00")
    packet = decode(header(b"\x35\x01\x01\xff", file=file))
    assert packet.file == file and packet.option(Option.HOSTNAME) is None


def test_repeated_options_concatenate() -> None:
    packet = decode(header(b"\x0c\x02ab\x35\x01\x01\x0c\x02cd\xff"))
    assert packet.option(Option.HOSTNAME) == b"abcd"


def test_missing_end_is_tolerated() -> None:
    assert decode(header(b"\x35\x01\x01")).message_type is DHCPMessageType.DISCOVER


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", DropReason.TRUNCATED),
        (DISCOVER[:239], DropReason.TRUNCATED),
        (DISCOVER[:236] + b"\x63\x82\x53\x64" + DISCOVER[240:], DropReason.BAD_COOKIE),
        (b"\x03" + DISCOVER[1:], DropReason.BAD_OP),
        (DISCOVER[:2] + b"\xff" + DISCOVER[3:], DropReason.BAD_HLEN),
        (header(b"\x35\x05\x01"), DropReason.OPTION_OVERRUN),
        (header(b"\x35"), DropReason.OPTION_OVERRUN),
        (header(b"\x35\x01\x01\x34\x01\x07\xff"), DropReason.BAD_OVERLOAD),
        (header(b"\x34\x01\x01\xff", file=b"\x0c\x7fcpe".ljust(128, b"\x00")), DropReason.OPTION_OVERRUN),
    ],
)
def test_malformed_messages_name_their_reason(data: bytes, reason: DropReason) -> None:
    with pytest.raises(DHCPDecodeError) as caught:
        decode(data)
    assert caught.value.reason is reason


def test_unknown_message_type_is_none_not_an_error() -> None:
    assert decode(header(b"\x35\x01\x63\xff")).message_type is None
    assert decode(header(b"\x35\x02\x01\x01\xff")).message_type is None


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_decode_or_raise_the_codec_error(data: bytes) -> None:
    with contextlib.suppress(DHCPDecodeError):
        decode(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_any_options_after_a_valid_header_decode_or_raise_the_codec_error(options: bytes) -> None:
    try:
        packet = decode(header(options))
    except DHCPDecodeError:
        return
    assert decode(encode(packet)).options == packet.options


def test_classless_routes_rfc_3442_example() -> None:
    # RFC 3442 §3: 10.17.0.0/16 via 10.0.0.1 is encoded 16.10.17.10.0.0.1; default route uses width 0.
    routes = ((IPv4Network("10.17.0.0/16"), IPv4Address("10.0.0.1")),
              (IPv4Network("0.0.0.0/0"), IPv4Address("198.18.0.1")),
              (IPv4Network("198.18.5.128/25"), IPv4Address("198.18.0.2")))
    wire = encode_classless_routes(routes)
    assert wire[:7] == bytes((16, 10, 17, 10, 0, 0, 1))
    assert wire[7:12] == bytes((0, 198, 18, 0, 1))
    assert decode_classless_routes(wire) == routes
    with pytest.raises(OptionValueError):
        decode_classless_routes(bytes((33, 1, 2, 3, 4, 5, 6, 7, 8)))
    with pytest.raises(OptionValueError):
        decode_classless_routes(bytes((24, 10, 0)))


def test_relay_agent_information() -> None:
    info = decode_relay_agent_info(b"\x01\x08eth0/1/3\x02\x06\x00\x11\x22\x33\x44\x55\x05\x04\xc6\x12\x01\x00")
    assert info.circuit_id == b"eth0/1/3" and info.remote_id == bytes.fromhex("001122334455")
    assert info.link_selection == IPv4Address("198.18.1.0")
    assert decode_relay_agent_info(info.encode()) == info
    with pytest.raises(OptionValueError):
        decode_relay_agent_info(b"\x01\x09short")
    with pytest.raises(OptionValueError):
        decode_relay_agent_info(b"\x01")


def test_client_fqdn_both_encodings() -> None:
    assert decode_client_fqdn(b"\x05\x00\x00\x03cpe\x04home\x00") == ClientFQDN(5, "cpe.home")
    assert decode_client_fqdn(b"\x01\x00\x00cpe.home.") == ClientFQDN(1, "cpe.home")
    with pytest.raises(OptionValueError):
        decode_client_fqdn(b"\x04\x00\x00\x09cpe")
    with pytest.raises(OptionValueError):
        decode_client_fqdn(b"\x00")


def test_address_lists() -> None:
    assert decode_ips(bytes((198, 18, 0, 1, 198, 18, 0, 2))) == (IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2"))
    with pytest.raises(OptionValueError):
        decode_ips(b"\x01\x02\x03")
