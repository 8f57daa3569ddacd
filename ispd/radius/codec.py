"""RADIUS packets: bytes ⇄ ``Packet``, the authenticators and the hidden attributes.

No sockets, no store, no clock: the transport hands datagrams in, the engines hand packets out.

Decoding (RFC 2865 §3, §5) checks the shape only: a header of 20 octets, a Length field between
20 and 4096 that the datagram covers (octets beyond it are padding and ignored, §3), attributes
of length ≥ 2 that end exactly at the packet's end. What fails raises ``RadiusDecodeError`` with
a reason from a closed set, for the transport to count and drop silently (§3: "silently
discarded"). Attributes stay raw — ``(type, value)`` in wire order — because a server reads a
handful of them per request; typed values come from ``ispd.radius.attributes`` when needed.

Authenticators (whose checks need the shared secret, which only the caller knows):
- Access-Request: a random Request Authenticator, checked indirectly through the hidden
  User-Password and the Message-Authenticator.
- Accounting-Request, CoA-Request, Disconnect-Request: the Request Authenticator is
  MD5(Code+ID+Length+16 zero octets+Attributes+Secret) (RFC 2866 §3, RFC 5176 §2.3).
- Responses: MD5(Code+ID+Length+Request Authenticator+Attributes+Secret) (RFC 2865 §3).
- Message-Authenticator (RFC 3579 §3.2, RFC 5176 §3.5, RFC 5997): HMAC-MD5 over the packet with
  its own value zeroed; the header carries the Request Authenticator for Access-Request,
  Status-Server and every response, and zeros for Accounting-, CoA- and Disconnect-Requests. A
  response gets its Message-Authenticator first, then its Response Authenticator over it. ispd
  puts it first among a response's attributes (the BlastRADIUS mitigation, CVE-2024-3596).

Hidden attributes: User-Password (RFC 2865 §5.2), Tunnel-Password (RFC 2868 §3.5) and the
Microsoft MPPE keys (RFC 2548 §2.4.2, same salted scheme as Tunnel-Password without the tag).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

HEADER = struct.Struct("!BBH16s")
HEADER_SIZE = 20
MAX_PACKET_SIZE = 4096  # RFC 2865 §3
MAX_ATTRIBUTE_VALUE = 253
ZERO_AUTHENTICATOR = bytes(16)
_U32 = struct.Struct("!I")


class Code(IntEnum):
    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12
    STATUS_CLIENT = 13
    DISCONNECT_REQUEST = 40
    DISCONNECT_ACK = 41
    DISCONNECT_NAK = 42
    COA_REQUEST = 43
    COA_ACK = 44
    COA_NAK = 45


class Attr(IntEnum):
    """The standard attributes the engines read or write by number (RFC 2865/2866/2869/3162/
    4372/4818/5176/6911); everything else is looked up by name in the dictionary."""

    USER_NAME = 1
    USER_PASSWORD = 2
    CHAP_PASSWORD = 3
    NAS_IP_ADDRESS = 4
    NAS_PORT = 5
    SERVICE_TYPE = 6
    FRAMED_PROTOCOL = 7
    FRAMED_IP_ADDRESS = 8
    FRAMED_IP_NETMASK = 9
    FILTER_ID = 11
    FRAMED_MTU = 12
    REPLY_MESSAGE = 18
    STATE = 24
    CLASS = 25
    VENDOR_SPECIFIC = 26
    SESSION_TIMEOUT = 27
    IDLE_TIMEOUT = 28
    TERMINATION_ACTION = 29
    CALLED_STATION_ID = 30
    CALLING_STATION_ID = 31
    NAS_IDENTIFIER = 32
    PROXY_STATE = 33
    ACCT_STATUS_TYPE = 40
    ACCT_DELAY_TIME = 41
    ACCT_INPUT_OCTETS = 42
    ACCT_OUTPUT_OCTETS = 43
    ACCT_SESSION_ID = 44
    ACCT_AUTHENTIC = 45
    ACCT_SESSION_TIME = 46
    ACCT_INPUT_PACKETS = 47
    ACCT_OUTPUT_PACKETS = 48
    ACCT_TERMINATE_CAUSE = 49
    ACCT_MULTI_SESSION_ID = 50
    ACCT_LINK_COUNT = 51
    ACCT_INPUT_GIGAWORDS = 52
    ACCT_OUTPUT_GIGAWORDS = 53
    EVENT_TIMESTAMP = 55
    CHAP_CHALLENGE = 60
    NAS_PORT_TYPE = 61
    PORT_LIMIT = 62
    TUNNEL_PASSWORD = 69
    EAP_MESSAGE = 79
    MESSAGE_AUTHENTICATOR = 80
    ACCT_INTERIM_INTERVAL = 85
    NAS_PORT_ID = 87
    FRAMED_POOL = 88
    CHARGEABLE_USER_IDENTITY = 89
    NAS_IPV6_ADDRESS = 95
    FRAMED_INTERFACE_ID = 96
    FRAMED_IPV6_PREFIX = 97
    ERROR_CAUSE = 101
    DELEGATED_IPV6_PREFIX = 123
    FRAMED_IPV6_ADDRESS = 168


_MESSAGE_AUTHENTICATOR = int(Attr.MESSAGE_AUTHENTICATOR)  # plain ints for the hot paths
_PROXY_STATE = int(Attr.PROXY_STATE)


class Vendor(IntEnum):
    MICROSOFT = 311
    MIKROTIK = 14988
    CISCO = 9
    DSL_FORUM = 3561
    JUNIPER = 2636
    ERX = 4874


class DropReason(StrEnum):
    """Why a datagram was not treated as a RADIUS packet (a metric label: keep it closed)."""

    TRUNCATED = "truncated"  # shorter than a header, or than its own Length field
    BAD_LENGTH = "bad_length"  # Length field below 20 or above 4096
    ATTRIBUTE_OVERRUN = "attribute_overrun"  # an attribute of length 0/1 or running past the end
    BAD_MESSAGE_AUTHENTICATOR = "bad_message_authenticator"
    MISSING_MESSAGE_AUTHENTICATOR = "missing_message_authenticator"
    DUPLICATE_MESSAGE_AUTHENTICATOR = "duplicate_message_authenticator"


class RadiusDecodeError(ValueError):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(slots=True, eq=False)
class Packet:
    """A decoded packet. ``first`` holds each attribute's first value (what the engines read,
    one dict lookup each); the full list in wire order, repeats included, is ``attributes``,
    read again from ``raw`` when asked for (EAP-Message, Class, Vendor-Specific). Not frozen,
    though nothing changes it: a frozen dataclass's ``__init__`` costs three times as much, on
    every request. Treat it as read-only."""

    code: int
    identifier: int
    authenticator: bytes
    raw: bytes  # the packet as received (Length octets), for authenticator checks
    first: dict[int, bytes] = field(default_factory=dict)
    # Where the Message-Authenticator's value is in ``raw`` (0: none, -1: more than one).
    signature_at: int = 0

    @property
    def attributes(self) -> list[tuple[int, bytes]]:
        raw, offset, end, out = self.raw, HEADER_SIZE, len(self.raw), []
        while offset < end:  # checked by decode: every length fits
            size = raw[offset + 1]
            out.append((raw[offset], raw[offset + 2:offset + size]))
            offset += size
        return out

    def get(self, attribute: int) -> bytes | None:
        return self.first.get(attribute)

    def get_all(self, attribute: int) -> list[bytes]:
        return [value for code, value in self.attributes if code == attribute]

    def has(self, attribute: int) -> bool:
        return attribute in self.first

    def text(self, attribute: int) -> str | None:
        """A string attribute as text (invalid UTF-8 replaced: NAS firmware sends what it likes)."""
        value = self.first.get(attribute)
        return value.decode("utf-8", "replace") if value is not None else None

    def integer(self, attribute: int) -> int | None:
        value = self.first.get(attribute)
        return _U32.unpack(value)[0] if value is not None and len(value) == 4 else None

    def vendor_attributes(self, vendor: int) -> list[tuple[int, bytes]]:
        """The (type, value) sub-attributes of every Vendor-Specific of ``vendor`` in the usual
        one-octet type and length format (RFC 2865 §5.26); a malformed one yields nothing."""
        found: list[tuple[int, bytes]] = []
        if Attr.VENDOR_SPECIFIC not in self.first:
            return found
        for code, value in self.attributes:
            if code == Attr.VENDOR_SPECIFIC and len(value) > 4 and _U32.unpack_from(value)[0] == vendor:
                found.extend(split_vendor_specific(value) or ())
        return found

    def vendor_attribute(self, vendor: int, vendor_type: int) -> bytes | None:
        for code, value in self.vendor_attributes(vendor):
            if code == vendor_type:
                return value
        return None


def decode(data: bytes) -> Packet:
    """A packet from a datagram; raises ``RadiusDecodeError``."""
    size = len(data)
    if size < HEADER_SIZE:
        raise RadiusDecodeError(DropReason.TRUNCATED, f"{size} octets, less than a header")
    code, identifier, length, authenticator = HEADER.unpack_from(data)
    if length < HEADER_SIZE or length > MAX_PACKET_SIZE:
        raise RadiusDecodeError(DropReason.BAD_LENGTH, f"Length field {length}")
    if length != size:
        if length > size:
            raise RadiusDecodeError(DropReason.TRUNCATED, f"Length field {length}, datagram {size} octets")
        data = data[:length]  # octets past Length are padding (RFC 2865 §3)
    first: dict[int, bytes] = {}
    signature_at = 0
    offset = HEADER_SIZE
    try:  # the hot loop of every request: one octet left at the end shows as an IndexError
        while offset < length:
            kind = data[offset]
            end = offset + data[offset + 1]
            if end > length or end < offset + 2:
                raise RadiusDecodeError(DropReason.ATTRIBUTE_OVERRUN,
                                        f"attribute {kind} of length {end - offset} at {offset}")
            if kind in first:
                if kind == _MESSAGE_AUTHENTICATOR:
                    signature_at = -1
            else:
                first[kind] = data[offset + 2:end]
                if kind == _MESSAGE_AUTHENTICATOR:
                    signature_at = offset + 2
            offset = end
    except IndexError:
        raise RadiusDecodeError(DropReason.ATTRIBUTE_OVERRUN, f"one octet left at {offset}") from None
    return Packet(code, identifier, authenticator, data, first, signature_at)


def split_vendor_specific(value: bytes, type_size: int = 1, length_size: int = 1) -> list[tuple[int, bytes]] | None:
    """The sub-attributes of a Vendor-Specific value (vendor id first), or None when they do not
    add up. ``type_size``/``length_size`` follow the dictionary's ``format=`` (most vendors: 1,1)."""
    out: list[tuple[int, bytes]] = []
    offset, end = 4, len(value)
    header = type_size + length_size
    while offset < end:
        if offset + header > end:
            return None
        vtype = int.from_bytes(value[offset:offset + type_size], "big")
        if length_size:
            length = int.from_bytes(value[offset + type_size:offset + header], "big")
            if length < header or offset + length > end:
                return None
        else:
            length = end - offset
        out.append((vtype, value[offset + header:offset + length]))
        offset += length
    return out


def vendor_specific(vendor: int, vendor_type: int, value: bytes) -> tuple[int, bytes]:
    """One Vendor-Specific attribute carrying one sub-attribute (one-octet type and length)."""
    if len(value) > MAX_ATTRIBUTE_VALUE - 6:
        raise ValueError(f"vendor attribute {vendor}/{vendor_type}: {len(value)} octets is too long")
    return Attr.VENDOR_SPECIFIC, _U32.pack(vendor) + bytes((vendor_type, len(value) + 2)) + value


def proxy_states(packet: Packet) -> bytes:
    """The request's Proxy-State attributes, encoded in their order: RFC 2865 §5.33 says a
    reply carries them back unchanged (a proxy in front of us finds its request by them)."""
    if _PROXY_STATE not in packet.first:
        return b""
    return b"".join(bytes((_PROXY_STATE, len(value) + 2)) + value
                    for code, value in packet.attributes if code == _PROXY_STATE)


def encode_attributes(attributes: Iterable[tuple[int, bytes]]) -> bytes:
    parts = []
    for code, value in attributes:
        if len(value) > MAX_ATTRIBUTE_VALUE:
            raise ValueError(f"attribute {code}: {len(value)} octets is more than {MAX_ATTRIBUTE_VALUE}")
        parts.append(bytes((code, len(value) + 2)))
        parts.append(value)
    return b"".join(parts)


# --- authenticators ---------------------------------------------------------------------------


_new_md5 = hashlib.md5


def _md5(*parts: bytes) -> bytes:
    return _new_md5(b"".join(parts)).digest()


@functools.lru_cache(maxsize=1024)
def _hmac_states(secret: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """MD5 states that have taken in the inner and outer pads of ``secret``."""
    key = secret if len(secret) <= 64 else _md5(secret)  # RFC 2104 §2
    key = key.ljust(64, b"\x00")
    return _new_md5(bytes(b ^ 0x36 for b in key)), _new_md5(bytes(b ^ 0x5C for b in key))


def hmac_md5(secret: bytes, data: bytes) -> bytes:
    """HMAC-MD5 (RFC 2104) from copies of MD5 states that have taken in each secret's pads:
    less than half of what ``hmac.digest`` costs per call under OpenSSL 3 (its per-call setup
    dominates), and less than hashing the pads again."""
    inner, outer = _hmac_states(secret)
    inner, outer = inner.copy(), outer.copy()
    inner.update(data)
    outer.update(inner.digest())
    return outer.digest()


def check_message_authenticator(packet: Packet, secret: bytes, request_authenticator: bytes | None = None) -> bool:
    """Whether ``packet`` carries a valid Message-Authenticator. Requests: pass nothing (the
    header's own field, zeroed for Accounting/CoA/Disconnect); responses: the request's
    authenticator (zeros for an Accounting-Response, see ``encode_response``). Raises
    ``RadiusDecodeError`` when it is absent, malformed or duplicated."""
    offset = packet.signature_at
    if offset == 0:
        raise RadiusDecodeError(DropReason.MISSING_MESSAGE_AUTHENTICATOR, "no Message-Authenticator")
    if offset < 0:
        raise RadiusDecodeError(DropReason.DUPLICATE_MESSAGE_AUTHENTICATOR, "more than one")
    raw = packet.raw
    if raw[offset - 1] != 18:
        raise RadiusDecodeError(DropReason.BAD_MESSAGE_AUTHENTICATOR, "Message-Authenticator is not 16 octets")
    if request_authenticator is None:
        request_authenticator = (ZERO_AUTHENTICATOR if packet.code in _ZERO_AUTHENTICATOR_REQUESTS
                                 else packet.authenticator)
    signed = raw[:4] + request_authenticator + raw[HEADER_SIZE:offset] + ZERO_AUTHENTICATOR + raw[offset + 16:]
    return hmac.compare_digest(hmac_md5(secret, signed), raw[offset:offset + 16])


_ZERO_AUTHENTICATOR_REQUESTS = frozenset({int(Code.ACCOUNTING_REQUEST), int(Code.COA_REQUEST),
                                          int(Code.DISCONNECT_REQUEST)})


def check_request_authenticator(packet: Packet, secret: bytes) -> bool:
    """RFC 2866 §3 / RFC 5176 §2.3: an Accounting-, CoA- or Disconnect-Request's authenticator."""
    raw = packet.raw
    return hmac.compare_digest(_md5(raw[:4], ZERO_AUTHENTICATOR, raw[HEADER_SIZE:], secret), packet.authenticator)


def check_response_authenticator(response: Packet, request_authenticator: bytes, secret: bytes) -> bool:
    raw = response.raw
    return hmac.compare_digest(_md5(raw[:4], request_authenticator, raw[HEADER_SIZE:], secret),
                               response.authenticator)


_MA_HEAD = bytes((Attr.MESSAGE_AUTHENTICATOR, 18))
_MA_PLACEHOLDER = _MA_HEAD + ZERO_AUTHENTICATOR


def encode_response(code: int, identifier: int, request_authenticator: bytes, attributes: bytes, secret: bytes,
                    *, message_authenticator: bool = True, signed_with_zeros: bool = False) -> bytes:
    """A response: Message-Authenticator first (when asked), then ``attributes`` (already
    encoded), signed with the request's authenticator. ``signed_with_zeros``: the
    Message-Authenticator of an Accounting-Response to an Accounting-Request is computed over a
    zeroed authenticator field, as FreeRADIUS computes and checks it (RFC 3579 covers only the
    Access-* packets; a Status-Server's Accounting-Response uses the request's, RFC 5997 §3)."""
    body = _MA_PLACEHOLDER + attributes if message_authenticator else attributes
    length = HEADER_SIZE + len(body)
    if length > MAX_PACKET_SIZE:
        raise ValueError(f"a response of {length} octets is larger than RADIUS allows")
    head = bytes((code, identifier)) + length.to_bytes(2, "big")
    if message_authenticator:
        vector = ZERO_AUTHENTICATOR if signed_with_zeros else request_authenticator
        body = _MA_HEAD + hmac_md5(secret, head + vector + body) + attributes
    return head + _new_md5(head + request_authenticator + body + secret).digest() + body


def encode_request(code: int, identifier: int, attributes: bytes, secret: bytes, *,
                   authenticator: bytes | None = None, message_authenticator: bool = True) -> bytes:
    """A request: Access-Request and Status-Server with a random authenticator (or the one
    given); Accounting-, CoA- and Disconnect-Requests with the computed one."""
    body = _MA_PLACEHOLDER + attributes if message_authenticator else attributes
    length = HEADER_SIZE + len(body)
    if length > MAX_PACKET_SIZE:
        raise ValueError(f"a request of {length} octets is larger than RADIUS allows")
    head = bytes((code, identifier)) + length.to_bytes(2, "big")
    computed = code in _ZERO_AUTHENTICATOR_REQUESTS
    signing = ZERO_AUTHENTICATOR if computed else (authenticator or os.urandom(16))
    if message_authenticator:
        mac = hmac_md5(secret, b"".join((head, signing, body)))
        body = _MA_PLACEHOLDER[:2] + mac + attributes
    final = _md5(head, ZERO_AUTHENTICATOR, body, secret) if computed else signing
    return b"".join((head, final, body))


# --- hidden attributes ------------------------------------------------------------------------


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 §5.2: the User-Password value for ``password`` (at most 128 octets)."""
    if len(password) > 128:
        raise ValueError("a User-Password has at most 128 octets")
    padded = password + bytes(-len(password) % 16 if password else 16)
    out = bytearray()
    previous = authenticator
    for i in range(0, len(padded), 16):
        key = _md5(secret, previous)
        # (XOR of two 128-bit integers: a proxy hides every password it forwards)
        block = (int.from_bytes(padded[i:i + 16], "big") ^ int.from_bytes(key, "big")).to_bytes(16, "big")
        out += block
        previous = block
    return bytes(out)


def reveal_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes | None:
    """RFC 2865 §5.2 in reverse: the password (trailing NULs removed), or None when the value is
    not a multiple of 16 octets between 16 and 128."""
    if len(hidden) == 16:  # the common case, a password of at most 16 octets: one block
        key = _new_md5(secret + authenticator).digest()
        return (int.from_bytes(hidden, "big") ^ int.from_bytes(key, "big")).to_bytes(16, "big").rstrip(b"\x00")
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        return None
    out = bytearray()
    previous = authenticator
    for i in range(0, len(hidden), 16):
        block = hidden[i:i + 16]
        key = _md5(secret, previous)
        out += (int.from_bytes(block, "big") ^ int.from_bytes(key, "big")).to_bytes(16, "big")
        previous = block
    return bytes(out).rstrip(b"\x00")


def _salted_xor(plain: bytes, secret: bytes, authenticator: bytes, salt: bytes) -> bytes:
    out = bytearray()
    previous = authenticator + salt
    for i in range(0, len(plain), 16):
        key = _md5(secret, previous)
        block = bytes(a ^ b for a, b in zip(plain[i:i + 16], key, strict=True))
        out += block
        previous = block
    return bytes(out)


def _unsalted_xor(cipher: bytes, secret: bytes, authenticator: bytes, salt: bytes) -> bytes:
    out = bytearray()
    previous = authenticator + salt
    for i in range(0, len(cipher), 16):
        block = cipher[i:i + 16]
        key = _md5(secret, previous)
        out += bytes(a ^ b for a, b in zip(block, key, strict=True))
        previous = block
    return bytes(out)


_salt_counter = itertools.count()


def new_salt() -> bytes:
    """Two octets with the high bit set (RFC 2868 §3.5, RFC 2548 §2.4.2), whose next four bits
    count (the other eleven are random): the salts of one reply MUST differ, and two random ones
    were alike once in 32 768 replies with two hidden attributes (two tagged Tunnel-Passwords, a
    plan's and MS-CHAPv2's MPPE keys), which then share their keystream. (FreeRADIUS's scheme;
    ``mschap`` salts from here too.)"""
    counter = next(_salt_counter) & 0x0F
    return (0x8000 | counter << 11 | int.from_bytes(os.urandom(2), "big") & 0x07FF).to_bytes(2, "big")


def hide_salted(secret_value: bytes, secret: bytes, authenticator: bytes, salt: bytes | None = None) -> bytes:
    """RFC 2868 §3.5 / RFC 2548 §2.4.2: salt, then the length octet, value and zero padding to a
    multiple of 16, encrypted. (Tunnel-Password puts its tag octet in front of this.)"""
    if len(secret_value) > 239:
        raise ValueError("a salted value has at most 239 octets")
    salt = salt if salt is not None else new_salt()
    plain = bytes((len(secret_value),)) + secret_value
    plain += bytes(-len(plain) % 16)
    return salt + _salted_xor(plain, secret, authenticator, salt)


def reveal_salted(value: bytes, secret: bytes, authenticator: bytes) -> bytes | None:
    """The inverse of ``hide_salted``; None when the value is malformed."""
    if len(value) < 18 or (len(value) - 2) % 16:
        return None
    plain = _unsalted_xor(value[2:], secret, authenticator, value[:2])
    length = plain[0]
    if length > len(plain) - 1:
        return None
    return plain[1:1 + length]


# --- CHAP -------------------------------------------------------------------------------------


def chap_response(ident: int, password: bytes, challenge: bytes) -> bytes:
    """RFC 1994 §4.1 / RFC 2865 §2.2: MD5(ident + password + challenge)."""
    return _md5(bytes((ident,)), password, challenge)


def u32(value: int) -> bytes:
    return _U32.pack(value & 0xFFFFFFFF)
