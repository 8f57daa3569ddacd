"""dnstap messages and their Frame Streams framing: bytes only, no sockets, no clock.

dnstap (dnstap.info; the schema is dnstap.proto) is how resolvers hand a copy of their DNS
traffic to a collector: Unbound, Knot Resolver, BIND and PowerDNS write it, and collectors
(fstrm_capture with dnstap-ldns, golang-dnstap, go-dnscollector, Vector) read it. Each message
is a protobuf ``Dnstap`` carrying one ``Message``: its type (CLIENT_QUERY, CLIENT_RESPONSE,
RESOLVER_QUERY, RESOLVER_RESPONSE, FORWARDER_QUERY, FORWARDER_RESPONSE are the ones a recursive
resolver writes), the transport, the addresses and ports, the times, and the DNS message
verbatim. The schema is small and fixed, so it is encoded here by hand: a few byte joins per
message, cheaper than building protobuf objects on the path of every query.

Frame Streams (fstrm) carries the messages: a data frame is a 32-bit big-endian length and that
many bytes; a control frame is a zero length (the escape), its own length, a 32-bit type and
fields (only CONTENT_TYPE is defined). On a connection the writer sends READY naming the content
type, the reader answers ACCEPT naming it, the writer sends START and data frames, and at the
end STOP, which the reader answers with FINISH (the bidirectional mode of fstrm's sockets).
"""

from __future__ import annotations

import struct
from enum import IntEnum

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"
MAX_CONTROL_FRAME = 512  # fstrm's FSTRM_CONTROL_FRAME_LENGTH_MAX: longer is a broken peer

_U32 = struct.Struct("!I")
_NSEC = struct.Struct("<I")  # protobuf fixed32 is little-endian


class MessageType(IntEnum):
    """dnstap.Message.Type values a recursive resolver writes."""

    RESOLVER_QUERY = 3
    RESOLVER_RESPONSE = 4
    CLIENT_QUERY = 5
    CLIENT_RESPONSE = 6
    FORWARDER_QUERY = 7
    FORWARDER_RESPONSE = 8


class SocketProtocol(IntEnum):
    UDP = 1
    TCP = 2
    DOT = 3
    DOH = 4
    DOQ = 7


class HttpProtocol(IntEnum):
    HTTP2 = 2
    HTTP3 = 3


class ControlType(IntEnum):
    ACCEPT = 1
    START = 2
    STOP = 3
    READY = 4
    FINISH = 5


_FIELD_CONTENT_TYPE = 1


class FrameStreamError(Exception):
    """The peer broke the Frame Streams protocol (an unknown or oversized control frame)."""


_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field(key: bytes, value: bytes) -> bytes:
    return key + _varint(len(value)) + value


# Keys (field number << 3 | wire type) of dnstap.Message's fields, and of Dnstap's.
_TYPE, _FAMILY, _PROTOCOL = b"\x08", b"\x10", b"\x18"
_QUERY_ADDRESS, _RESPONSE_ADDRESS, _QUERY_PORT, _RESPONSE_PORT = b"\x22", b"\x2a", b"\x30", b"\x38"
_QUERY_SEC, _QUERY_NSEC, _QUERY_MESSAGE, _QUERY_ZONE = b"\x40", b"\x4d", b"\x52", b"\x5a"
_RESPONSE_SEC, _RESPONSE_NSEC, _RESPONSE_MESSAGE, _HTTP_PROTOCOL = b"\x60", b"\x6d", b"\x72", b"\x80\x01"
_IDENTITY, _VERSION, _MESSAGE = b"\x0a", b"\x12", b"\x72"
_DNSTAP_TYPE_MESSAGE = b"\x78\x01"  # Dnstap.type = MESSAGE


class Encoder:
    """Makes data frames of one server's dnstap messages. ``identity`` and ``version`` (empty:
    not sent) go into every message, as the schema has them."""

    __slots__ = ("_head", "_kinds", "_second", "identity", "version")

    def __init__(self, identity: bytes = b"", version: bytes = b"") -> None:
        self.identity, self.version = identity, version
        self._head = ((_bytes_field(_IDENTITY, identity) if identity else b"")
                      + (_bytes_field(_VERSION, version) if version else b""))
        # type, family and protocol, the same for every message of one kind on one transport
        self._kinds: dict[tuple[int, int, bool], bytes] = {}
        self._second = (-1, b"")  # the last whole second and its varint: one per second, not per message

    def _seconds(self, seconds: int) -> bytes:
        if self._second[0] != seconds:
            self._second = (seconds, _varint(seconds))
        return self._second[1]

    def frame(self, kind: MessageType, protocol: SocketProtocol, *, v6: bool, query_address: bytes = b"",
              query_port: int = 0, response_address: bytes = b"", response_port: int = 0,
              query_time: float | None = None, query_message: bytes = b"", query_zone: bytes = b"",
              response_time: float | None = None, response_message: bytes = b"",
              http: HttpProtocol | None = None) -> bytes:
        """One data frame: the Dnstap message after its length. Addresses are packed (4 or 16
        octets); empty values and zero ports are left out, as optional fields."""
        parts = [self._kinds.get((kind, protocol, v6)) or self._kind(kind, protocol, v6)]
        if query_address:
            parts += (_QUERY_ADDRESS, _varint(len(query_address)), query_address)
        if response_address:
            parts += (_RESPONSE_ADDRESS, _varint(len(response_address)), response_address)
        if query_port:
            parts += (_QUERY_PORT, _varint(query_port))
        if response_port:
            parts += (_RESPONSE_PORT, _varint(response_port))
        if query_time is not None:
            seconds = int(query_time)
            parts += (_QUERY_SEC, self._seconds(seconds), _QUERY_NSEC,
                      _NSEC.pack(min(999_999_999, int((query_time - seconds) * 1e9))))
        if query_message:
            parts += (_QUERY_MESSAGE, _varint(len(query_message)), query_message)
        if query_zone:
            parts += (_QUERY_ZONE, _varint(len(query_zone)), query_zone)
        if response_time is not None:
            seconds = int(response_time)
            parts += (_RESPONSE_SEC, self._seconds(seconds), _RESPONSE_NSEC,
                      _NSEC.pack(min(999_999_999, int((response_time - seconds) * 1e9))))
        if response_message:
            parts += (_RESPONSE_MESSAGE, _varint(len(response_message)), response_message)
        if http is not None:
            parts += (_HTTP_PROTOCOL, _varint(http))
        return self._framed(b"".join(parts))

    # A client's query and the reply it got, the two messages of every query, cost per query:
    # what they share (the client, the query's time) is encoded once.

    def client_common(self, address: bytes, port: int, query_time: float) -> bytes:
        """The client and the query's time. Port 0 (not known: the stream transports do not pass
        it down) and an empty address are left out, not sent as a port 0 or an address of no octets."""
        seconds = int(query_time)
        return b"".join((_QUERY_ADDRESS + _varint(len(address)) + address if address else b"",
                         _QUERY_PORT + _varint(port) if port else b"", _QUERY_SEC, self._seconds(seconds),
                         _QUERY_NSEC, _NSEC.pack(min(999_999_999, int((query_time - seconds) * 1e9)))))

    def client_query_frame(self, protocol: SocketProtocol, v6: bool, common: bytes, query: bytes,
                           http: HttpProtocol | None = None) -> bytes:
        head = self._kinds.get((MessageType.CLIENT_QUERY, protocol, v6)) or self._kind(
            MessageType.CLIENT_QUERY, protocol, v6)
        tail = _HTTP_PROTOCOL + _varint(http) if http is not None else b""
        return self._framed(b"".join((head, common, _QUERY_MESSAGE, _varint(len(query)), query, tail)))

    def client_response_frame(self, protocol: SocketProtocol, v6: bool, common: bytes, response_time: float,
                              reply: bytes, http: HttpProtocol | None = None) -> bytes:
        head = self._kinds.get((MessageType.CLIENT_RESPONSE, protocol, v6)) or self._kind(
            MessageType.CLIENT_RESPONSE, protocol, v6)
        seconds = int(response_time)
        tail = _HTTP_PROTOCOL + _varint(http) if http is not None else b""
        return self._framed(b"".join((head, common, _RESPONSE_SEC, self._seconds(seconds), _RESPONSE_NSEC,
                                      _NSEC.pack(min(999_999_999, int((response_time - seconds) * 1e9))),
                                      _RESPONSE_MESSAGE, _varint(len(reply)), reply, tail)))

    def _kind(self, kind: MessageType, protocol: SocketProtocol, v6: bool) -> bytes:
        head = self._kinds[kind, protocol, v6] = (_TYPE + _varint(kind) + _FAMILY + (b"\x02" if v6 else b"\x01")
                                                  + _PROTOCOL + _varint(protocol))
        return head

    def _framed(self, message: bytes) -> bytes:
        length = _varint(len(message))
        return b"".join((_U32.pack(len(self._head) + 1 + len(length) + len(message) + 2), self._head, _MESSAGE,
                         length, message, _DNSTAP_TYPE_MESSAGE))


def control_frame(kind: ControlType, content_type: bytes | None = CONTENT_TYPE) -> bytes:
    """A control frame with its escape; READY, ACCEPT and START name the content type."""
    body = _U32.pack(kind)
    if content_type is not None:
        body += _U32.pack(_FIELD_CONTENT_TYPE) + _U32.pack(len(content_type)) + content_type
    return _U32.pack(0) + _U32.pack(len(body)) + body


def parse_control(body: bytes) -> tuple[ControlType, list[bytes]]:
    """A control frame's body (after the escape and its length): its type and content types."""
    if len(body) < 4:
        raise FrameStreamError("control frame shorter than its type")
    (kind,) = _U32.unpack_from(body, 0)
    try:
        control = ControlType(kind)
    except ValueError:
        raise FrameStreamError(f"unknown control frame type {kind}") from None
    content_types: list[bytes] = []
    at = 4
    while at < len(body):
        if at + 8 > len(body):
            raise FrameStreamError("control frame field runs past its end")
        field, length = _U32.unpack_from(body, at)[0], _U32.unpack_from(body, at + 4)[0]
        at += 8
        if at + length > len(body):
            raise FrameStreamError("control frame field runs past its end")
        if field == _FIELD_CONTENT_TYPE:
            content_types.append(body[at:at + length])
        at += length
    return control, content_types
