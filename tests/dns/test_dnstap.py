"""dnstap messages and Frame Streams control frames (ispd/dns/dnstap.py), read back by an
independent decoder: dnstap-pb, the schema compiled by protobuf."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import dnstap_pb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ispd.dns.dnstap import (
    CONTENT_TYPE,
    ControlType,
    Encoder,
    FrameStreamError,
    HttpProtocol,
    MessageType,
    SocketProtocol,
    control_frame,
    parse_control,
)


def decoded(frame: bytes) -> dnstap_pb.Dnstap:
    (length,) = struct.unpack_from("!I", frame)
    assert length == len(frame) - 4 > 0
    tap = dnstap_pb.Dnstap()
    tap.ParseFromString(frame[4:])
    return tap


def test_a_client_query_as_dnstap_pb_reads_it() -> None:
    query = bytes.fromhex("abcd01000001000000000000") + b"\x03www\x07example\x00\x00\x01\x00\x01"
    frame = Encoder(b"resolver-1", b"ispd 0.1.0").frame(
        MessageType.CLIENT_QUERY, SocketProtocol.UDP, v6=False, query_address=bytes([198, 18, 0, 7]),
        query_port=40000, query_time=1_700_000_000.25, query_message=query)
    tap = decoded(frame)
    assert (tap.identity, tap.version, tap.type) == (b"resolver-1", b"ispd 0.1.0", dnstap_pb.Dnstap.MESSAGE)
    m = tap.message
    assert m.type == dnstap_pb.Message.CLIENT_QUERY
    assert (m.socket_family, m.socket_protocol) == (dnstap_pb.INET, dnstap_pb.UDP)
    assert (m.query_address, m.query_port) == (bytes([198, 18, 0, 7]), 40000)
    assert (m.query_time_sec, m.query_time_nsec) == (1_700_000_000, 250_000_000)
    assert m.query_message == query
    for absent in ("response_address", "response_port", "response_message", "query_zone", "response_time_sec"):
        assert not m.HasField(absent), absent


def test_identity_and_version_are_left_out_when_empty() -> None:
    tap = decoded(Encoder().frame(MessageType.CLIENT_RESPONSE, SocketProtocol.TCP, v6=True,
                                  response_message=b"x" * 12))
    assert not tap.HasField("identity") and not tap.HasField("version")
    assert tap.message.socket_family == dnstap_pb.INET6


def test_a_client_port_or_address_not_known_is_left_out_not_sent_as_zero() -> None:
    """TCP, DoT, DoH and DoQ do not pass the client's port down to dnstap (port 0), and a QUIC
    connection may not know its client's address: neither field is sent then."""
    encoder = Encoder()
    for port, address in ((0, bytes([198, 18, 0, 7])), (0, b""), (53000, b"")):
        common = encoder.client_common(address, port, 1_700_000_000.5)
        for frame in (encoder.client_query_frame(SocketProtocol.TCP, False, common, b"q" * 12),
                      encoder.client_response_frame(SocketProtocol.DOT, False, common, 1_700_000_001.0, b"r" * 12)):
            m = decoded(frame).message
            assert m.HasField("query_port") == bool(port) and m.HasField("query_address") == bool(address)
            assert (m.query_port, m.query_address, m.query_time_sec) == (port, address, 1_700_000_000)


def test_doh_carries_its_http_version_after_the_fields_older_readers_know() -> None:
    frame = Encoder().frame(MessageType.CLIENT_QUERY, SocketProtocol.DOH, v6=False, query_message=b"q" * 12,
                            http=HttpProtocol.HTTP3)
    tap = decoded(frame)  # (dnstap-pb's schema predates http_protocol: kept as an unknown field)
    assert tap.message.socket_protocol == dnstap_pb.DOH
    assert b"\x80\x01\x03" in frame  # field 16, varint: HTTP3


addresses_v4 = st.ip_addresses(v=4).map(lambda a: a.packed)
addresses_v6 = st.ip_addresses(v=6).map(lambda a: a.packed)


@given(kind=st.sampled_from(list(MessageType)), protocol=st.sampled_from(list(SocketProtocol)), v6=st.booleans(),
       data=st.data(), ports=st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
       times=st.tuples(st.none() | st.floats(0, 2**40, allow_nan=False), st.none() | st.floats(0, 2**40, allow_nan=False)),
       query=st.binary(max_size=300), reply=st.binary(max_size=70_000), zone=st.binary(max_size=255),
       identity=st.binary(max_size=255))
def test_every_field_reads_back(kind: MessageType, protocol: SocketProtocol, v6: bool, data: st.DataObject,
                                ports: tuple[int, int], times: tuple[float | None, float | None], query: bytes,
                                reply: bytes, zone: bytes, identity: bytes) -> None:
    addresses = addresses_v6 if v6 else addresses_v4
    client, server = data.draw(addresses), data.draw(addresses)
    frame = Encoder(identity, b"v").frame(
        kind, protocol, v6=v6, query_address=client, query_port=ports[0], response_address=server,
        response_port=ports[1], query_time=times[0], query_message=query, query_zone=zone,
        response_time=times[1], response_message=reply)
    tap = decoded(frame)
    m = tap.message
    assert tap.identity == identity
    assert (m.type, m.socket_protocol, m.socket_family) == (kind, protocol, 2 if v6 else 1)
    assert (m.query_address, m.response_address) == (client, server)
    assert (m.query_port, m.response_port) == ports
    assert (m.query_message, m.response_message, m.query_zone) == (query, reply, zone)
    for (field, at) in (("query_time", times[0]), ("response_time", times[1])):
        if at is None:
            assert not m.HasField(f"{field}_sec")
        else:
            assert getattr(m, f"{field}_sec") == int(at)
            assert 0 <= getattr(m, f"{field}_nsec") <= 999_999_999
            assert abs(getattr(m, f"{field}_sec") + getattr(m, f"{field}_nsec") / 1e9 - at) < 1e-3


def test_an_ipv6_address_is_sixteen_octets() -> None:
    address = ipaddress.ip_address("2001:db8::53").packed
    tap = decoded(Encoder().frame(MessageType.RESOLVER_QUERY, SocketProtocol.UDP, v6=True, response_address=address,
                                  response_port=53, query_zone=b"\x07example\x00"))
    assert tap.message.response_address == address and len(address) == 16


def test_control_frames_as_fstrm_writes_them() -> None:
    ready = control_frame(ControlType.READY)
    # escape, length, READY, CONTENT_TYPE field of 22 bytes
    assert ready == struct.pack("!IIIII", 0, 4 + 8 + 22, 4, 1, 22) + CONTENT_TYPE
    assert control_frame(ControlType.STOP, None) == struct.pack("!III", 0, 4, 3)
    assert parse_control(ready[8:]) == (ControlType.READY, [CONTENT_TYPE])
    two = struct.pack("!III", 1, 1, 3) + b"abc" + struct.pack("!II", 1, 0)
    assert parse_control(two) == (ControlType.ACCEPT, [b"abc", b""])
    assert parse_control(struct.pack("!IIIx", 5, 9, 1)) == (ControlType.FINISH, [])  # an unknown field: skipped


@pytest.mark.parametrize("body", [
    b"", b"\0\0\0", struct.pack("!I", 9), struct.pack("!I", 0),  # short, unknown types
    struct.pack("!II", 1, 1), struct.pack("!III", 1, 1, 5) + b"abc",  # a field cut short
    struct.pack("!III", 1, 1, 2**32 - 1),
])
def test_a_broken_control_frame_is_an_error_not_a_crash(body: bytes) -> None:
    with pytest.raises(FrameStreamError):
        parse_control(body)


@given(st.binary(max_size=600))
def test_any_control_frame_body_parses_or_is_refused(body: bytes) -> None:
    with contextlib.suppress(FrameStreamError):
        parse_control(body)
