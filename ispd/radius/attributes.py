"""Attribute values by dictionary type: text ⇄ wire, and reply attributes ready to encode.

The engines read the few attributes they act on by number (``codec.Attr``); this module is for
everything named by an operator (reply attributes in the config, ``Name = value`` as FreeRADIUS
writes them) and for showing a request's attributes to people (logs, the accounting history).

A ``ReplyAttribute`` is checked and converted once, when the config is loaded; encoding it into
a reply is then a matter of joining bytes, except for the hidden ones (``encrypt=1|2``: the
Tunnel-Password and MPPE-key kind), which need the request's authenticator and the secret.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ispd.radius.codec import MAX_ATTRIBUTE_VALUE, Attr, hide_password, hide_salted, split_vendor_specific
from ispd.radius.config import parse_assignment
from ispd.radius.dictionary import Attribute, DataType, Dictionary, Encryption

_U32 = struct.Struct("!I")
_S32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")
_U16 = struct.Struct("!H")
# Never shown in logs or the accounting history.
HIDDEN_NAMES = frozenset({"user-password", "chap-password", "tunnel-password", "ms-chap-mppe-keys",
                          "ms-mppe-send-key", "ms-mppe-recv-key", "ms-chap2-response", "ms-chap-response",
                          "eap-message", "message-authenticator", "state"})


class AttributeValueError(ValueError):
    """A value that does not fit its attribute's type; str() says what to write instead."""


def encode_value(attribute: Attribute, text: str, tag: int | None = None) -> bytes:
    """The wire value of ``text`` for ``attribute`` (before any hiding)."""
    kind = attribute.type
    try:
        if kind == DataType.STRING:
            value = text.encode("utf-8")
        elif kind == DataType.OCTETS:
            value = bytes.fromhex(text[2:]) if text[:2].lower() == "0x" else text.encode("utf-8")
            if attribute.length and len(value) != attribute.length:  # octets[N]
                raise AttributeValueError(f"{attribute.name}: the value has {len(value)} octets; this attribute "
                                          f"has exactly {attribute.length}")
        elif kind == DataType.ABINARY:
            # An Ascend filter is a binary structure FreeRADIUS compiles from its filter language
            # ("ip in drop dstip 10.0.0.1/32"); sent as text, the NAS reads garbage rules.
            if text[:2].lower() != "0x":
                raise AttributeValueError(f"{attribute.name}: ispd does not compile Ascend filter text; "
                                          "give the compiled filter in 0x hex")
            value = bytes.fromhex(text[2:])
        elif kind in (DataType.INTEGER, DataType.DATE, DataType.BYTE, DataType.SHORT, DataType.INTEGER64,
                      DataType.SIGNED):
            value = _encode_number(attribute, text)
        elif kind == DataType.IPADDR:
            value = ipaddress.IPv4Address(text).packed
        elif kind == DataType.IPV6ADDR:
            value = ipaddress.IPv6Address(text).packed
        elif kind == DataType.COMBO_IP:
            value = ipaddress.ip_address(text).packed
        elif kind == DataType.IPV6PREFIX:
            value = ipv6_prefix_value(ipaddress.IPv6Network(text, strict=False))
        elif kind == DataType.IPV4PREFIX:
            network4 = ipaddress.IPv4Network(text, strict=False)
            value = bytes((0, network4.prefixlen)) + network4.network_address.packed
        elif kind == DataType.IFID:
            groups = text.split(":")
            if len(groups) != 4:
                raise ValueError("an interface id is four groups of hex digits, e.g. 0000:0000:0000:0001")
            value = b"".join(int(g, 16).to_bytes(2, "big") for g in groups)
        elif kind == DataType.ETHER:
            digits = text.replace(":", "").replace("-", "").replace(".", "")
            value = bytes.fromhex(digits)
            if len(value) != 6:
                raise ValueError("a MAC address has six bytes")
        else:
            raise AttributeValueError(f"{attribute.name}: values of type {kind} cannot be written in the config")
    except (ValueError, OverflowError, struct.error) as exc:
        if isinstance(exc, AttributeValueError):
            raise
        raise AttributeValueError(f"{attribute.name}: {text!r} is not a valid {kind}: {exc}") from None
    if attribute.has_tag and tag is not None:
        if kind == DataType.INTEGER:
            value = bytes((tag,)) + value[1:]  # RFC 2868 §3.1: the tag takes the first octet
        elif attribute.encrypt == Encryption.NONE:
            value = bytes((tag,)) + value
    if len(value) > MAX_ATTRIBUTE_VALUE:  # (a vendor's header takes more: see ReplyAttribute.encode)
        raise AttributeValueError(f"{attribute.name}: the value is longer than an attribute can carry")
    return value


def ipv6_prefix_value(network: ipaddress.IPv6Network) -> bytes:
    """An ipv6prefix value (RFC 3162 §2.3, RFC 4818): a reserved octet, the length, and the
    prefix's significant octets only."""
    return bytes((0, network.prefixlen)) + network.network_address.packed[:(network.prefixlen + 7) // 8]


_NUMBER_RANGES = {DataType.SIGNED: (-(2**31), 2**31 - 1), DataType.INTEGER64: (0, 2**64 - 1),
                  DataType.SHORT: (0, 2**16 - 1), DataType.BYTE: (0, 255)}


def _encode_number(attribute: Attribute, text: str) -> bytes:
    named = attribute.value_number(text)
    number = named if named is not None else int(text, 0)
    kind = attribute.type
    low, high = _NUMBER_RANGES.get(kind, (0, 2**32 - 1))
    if attribute.has_tag and kind == DataType.INTEGER:
        high = 2**24 - 1  # RFC 2868 §3.1: the tag takes the first octet, the value has three
    if not low <= number <= high:
        raise ValueError(f"out of range: {low} to {high}")
    if kind == DataType.SIGNED:
        return _S32.pack(number)
    if kind == DataType.INTEGER64:
        return _U64.pack(number)
    if kind == DataType.SHORT:
        return _U16.pack(number)
    if kind == DataType.BYTE:
        return bytes((number,))
    return _U32.pack(number)


def decode_value(attribute: Attribute, value: bytes) -> str | int:
    """A wire value in presentation form (VALUE names for enumerated integers); undecodable
    values come back as 0x-hex."""
    kind = attribute.type
    try:
        if attribute.has_tag and value and value[0] <= 0x1F and kind == DataType.STRING:
            value = value[1:]
        if kind == DataType.STRING:
            return value.decode("utf-8")
        if kind in (DataType.INTEGER, DataType.DATE) and len(value) == 4:
            number = _U32.unpack(value)[0] & (0xFFFFFF if attribute.has_tag else 0xFFFFFFFF)
            return attribute.value_name(number) or number
        if kind == DataType.INTEGER64 and len(value) == 8:
            return int(_U64.unpack(value)[0])
        if kind == DataType.SIGNED and len(value) == 4:
            return int(_S32.unpack(value)[0])
        if kind == DataType.SHORT and len(value) == 2:
            return int(_U16.unpack(value)[0])
        if kind == DataType.BYTE and len(value) == 1:
            return value[0]
        if kind == DataType.IPADDR and len(value) == 4:
            return str(ipaddress.IPv4Address(value))
        if kind == DataType.IPV6ADDR and len(value) == 16:
            return str(ipaddress.IPv6Address(value))
        if kind == DataType.COMBO_IP and len(value) in (4, 16):
            return str(ipaddress.ip_address(value))
        if kind == DataType.IPV6PREFIX and 2 <= len(value) <= 18 and value[1] <= 128:
            address = ipaddress.IPv6Address(value[2:].ljust(16, b"\x00"))
            return f"{address}/{value[1]}"
        if kind == DataType.ETHER and len(value) == 6:
            return value.hex(":")
    except (UnicodeDecodeError, ValueError):
        pass
    return "0x" + value.hex()


@dataclass(frozen=True, slots=True)
class ReplyAttribute:
    """An attribute to put into replies, its value already in wire form."""

    name: str
    code: int  # the attribute's number in the standard space, or the vendor's type
    value: bytes
    vendor: int = 0
    vendor_type_size: int = 1
    vendor_length_size: int = 1
    encrypt: Encryption = Encryption.NONE
    tag: int | None = None
    vendor_continuation: bool = False  # format=1,1,c (WiMAX): a flags octet after the length

    @property
    def hidden(self) -> bool:
        return self.encrypt != Encryption.NONE

    def encode(self, secret: bytes = b"", request_authenticator: bytes = b"") -> bytes:
        value = self.value
        if self.encrypt == Encryption.TUNNEL_PASSWORD:
            value = hide_salted(value, secret, request_authenticator)
            if self.tag is not None:
                value = bytes((self.tag,)) + value
        elif self.encrypt == Encryption.USER_PASSWORD:
            value = hide_password(value, secret, request_authenticator)
        if self.vendor == 0:
            if len(value) > MAX_ATTRIBUTE_VALUE:
                raise ValueError(f"{len(value)} octets is more than the {MAX_ATTRIBUTE_VALUE} an attribute carries")
            return bytes((self.code, len(value) + 2)) + value
        # The continuation octet (its "more follows" bit clear: the value is whole here) counts in
        # the length, as the value does.
        flags = b"\x00" if self.vendor_continuation else b""
        sub = (self.code.to_bytes(self.vendor_type_size, "big")
               + ((len(value) + self.vendor_type_size + self.vendor_length_size + len(flags))
                  .to_bytes(self.vendor_length_size, "big") if self.vendor_length_size else b"")
               + flags + value)
        if len(sub) > MAX_ATTRIBUTE_VALUE - 4:
            room = MAX_ATTRIBUTE_VALUE - 4 - (len(sub) - len(value))
            raise ValueError(f"{len(value)} octets is more than the {room} a Vendor-Specific of vendor {self.vendor} "
                             "carries")
        return bytes((Attr.VENDOR_SPECIFIC, len(sub) + 6)) + _U32.pack(self.vendor) + sub


# Attributes a reply gets from ispd itself or never carries: one from the config would make a
# second Message-Authenticator (RFC 3579 §3.2: the NAS discards the reply) or a broken EAP exchange.
_NEVER_CONFIGURED: dict[int, str] = {
    Attr.USER_PASSWORD: "belongs to requests",
    Attr.CHAP_PASSWORD: "belongs to requests",
    Attr.PROXY_STATE: "is copied from the request by ispd",
    Attr.EAP_MESSAGE: "is written by ispd's EAP methods",
    Attr.MESSAGE_AUTHENTICATOR: "is written by ispd into every reply",
}


def reply_attribute(dictionary: Dictionary, text: str) -> ReplyAttribute:
    """``Name = value`` (or ``Name:tag = value``) checked against the dictionary."""
    try:
        name, tag, value_text = parse_assignment(text)
    except ValueError as exc:  # (an operator's typo on the command line, as any other mistake here)
        raise AttributeValueError(str(exc)) from None
    attribute = dictionary.get(name)
    if attribute is None:
        raise AttributeValueError(f"{name}: no such attribute in the dictionaries")
    if len(attribute.oid) != 1:
        raise AttributeValueError(f"{name}: extended and TLV attributes cannot be sent yet")
    if not attribute.vendor and attribute.code > 255:
        raise AttributeValueError(f"{name}: attribute {attribute.code} is one of FreeRADIUS's server-internal "
                                  "attributes, which never travel in a packet")
    if attribute.encrypt == Encryption.ASCEND_SECRET:
        raise AttributeValueError(f"{name}: Ascend-style hidden attributes are not supported")
    if not attribute.vendor and attribute.oid[0] in _NEVER_CONFIGURED:
        raise AttributeValueError(f"{name}: {_NEVER_CONFIGURED[attribute.oid[0]]}")
    if tag is not None and not attribute.has_tag:
        raise AttributeValueError(f"{name} takes no tag")
    reply = make_reply_attribute(dictionary, attribute, encode_value(attribute, value_text, tag), tag)
    try:  # hidden values have their own limits (a salted one at most 239 octets): found now, not at a login
        reply.encode(b"secret", bytes(16))
    except ValueError as exc:
        raise AttributeValueError(f"{name}: {exc}") from None
    return reply


# What a subscriber's own attributes may not give, besides what no reply attribute may; by number,
# since the dictionaries may give one several names (FreeRADIUS's tree: Framed-Address for 8).
_NOT_A_SUBSCRIBERS: dict[int, str] = {
    Attr.FRAMED_IP_ADDRESS: "reserve the address instead (ispd reservation add NAME --username LOGIN --address A): "
                            "one record of who has which address",
    Attr.CLASS: "ispd's own: it names the subscriber in the accounting",
}


def subscriber_reply_attribute(dictionary: Dictionary, text: str) -> ReplyAttribute:
    """One of a subscriber's own reply attributes (``ispd subscriber radius-reply``)."""
    reply = reply_attribute(dictionary, text)
    if not reply.vendor and reply.code in _NOT_A_SUBSCRIBERS:
        raise AttributeValueError(f"{reply.name}: {_NOT_A_SUBSCRIBERS[reply.code]}")
    return reply


def make_reply_attribute(dictionary: Dictionary, attribute: Attribute, value: bytes,
                         tag: int | None = None) -> ReplyAttribute:
    if tag is None and attribute.has_tag and attribute.encrypt == Encryption.TUNNEL_PASSWORD:
        # RFC 2868 §3.5: Tunnel-Password's Tag octet is always there (0 when unused); a NAS
        # takes the first octet for it and would decrypt from the wrong place.
        tag = 0
    type_size, length_size, continuation = 1, 1, False
    if attribute.vendor:
        vendor = dictionary.vendor(attribute.vendor)
        if vendor is not None:
            type_size, length_size, continuation = vendor.type_size, vendor.length_size, vendor.continuation
    return ReplyAttribute(attribute.name, attribute.code, value, attribute.vendor, type_size, length_size,
                          attribute.encrypt, tag, continuation)


def named_reply_attribute(dictionary: Dictionary, name: str, value: bytes) -> ReplyAttribute:
    """A reply attribute the engine itself writes, by dictionary name (the value in wire form)."""
    return make_reply_attribute(dictionary, dictionary.attribute(name), value)


def encode_reply(attributes: Iterable[ReplyAttribute], secret: bytes, request_authenticator: bytes) -> bytes:
    return b"".join(a.encode(secret, request_authenticator) for a in attributes)


def describe(attributes: Iterable[tuple[int, bytes]], dictionary: Dictionary) -> dict[str, list[str | int]]:
    """A request's attributes by name, for people: hidden ones left out, unknown ones by number."""
    out: dict[str, list[str | int]] = {}
    for code, value in attributes:
        if code == Attr.VENDOR_SPECIFIC and len(value) > 4:
            vendor_id = _U32.unpack_from(value)[0]
            vendor = dictionary.vendor(vendor_id)
            subs = split_vendor_specific(value, vendor.type_size, vendor.length_size) if vendor else \
                split_vendor_specific(value)
            for vendor_type, sub in subs or ():
                _describe_one(out, dictionary.by_code(vendor_type, vendor_id), f"{vendor_id}:{vendor_type}", sub)
            continue
        _describe_one(out, dictionary.by_code(code), str(code), value)
    return out


def _describe_one(out: dict[str, list[str | int]], attribute: Attribute | None, number: str, value: bytes) -> None:
    if attribute is None:
        out.setdefault(f"Attr-{number}", []).append("0x" + value.hex())
    elif attribute.name.lower() not in HIDDEN_NAMES and attribute.encrypt == Encryption.NONE:
        out.setdefault(attribute.name, []).append(decode_value(attribute, value))
