"""DHCPv4 messages: bytes ⇄ ``DHCPPacket``, with no sockets, store or clock.

Decoding follows RFC 2131 §2 (the BOOTP header), §3 (the magic cookie), RFC 2132 §9.3 (option
overload: options continue in ``file``, then ``sname``) and RFC 3396 (an option that appears
more than once is one option, its values concatenated in order). Whatever does not have the
shape of a DHCP message raises ``DHCPDecodeError`` with a reason from a closed set, for the
transport to count and drop; unknown options are kept and can be carried into replies.

Encoding writes options in the order given, splits values longer than 255 bytes into several
instances (RFC 3396) and pads the message to the 300 bytes of a BOOTP message, which some
clients and relays still insist on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv4Address

from ispd.dhcp.options import DHCPMessageType, Option

MAGIC_COOKIE = b"\x63\x82\x53\x63"
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_SIZE = HEADER.size  # 236
MIN_MESSAGE_SIZE = 300
BOOTREQUEST, BOOTREPLY = 1, 2
FLAG_BROADCAST = 0x8000
UNSPECIFIED = IPv4Address(0)


class DropReason(StrEnum):
    """Why a datagram was not treated as a DHCP message (a metric label: keep it closed)."""

    TRUNCATED = "truncated"
    BAD_COOKIE = "bad_cookie"
    BAD_OP = "bad_op"
    BAD_HLEN = "bad_hlen"
    OPTION_OVERRUN = "option_overrun"
    BAD_OVERLOAD = "bad_overload"


class DHCPDecodeError(ValueError):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DHCPPacket:
    op: int
    xid: int
    chaddr: bytes = bytes(16)
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = UNSPECIFIED
    yiaddr: IPv4Address = UNSPECIFIED
    siaddr: IPv4Address = UNSPECIFIED
    giaddr: IPv4Address = UNSPECIFIED
    sname: bytes = bytes(64)
    file: bytes = bytes(128)
    # (code, value) in first-appearance order, repeated codes already concatenated (RFC 3396).
    options: tuple[tuple[int, bytes], ...] = field(default=())

    def option(self, code: int) -> bytes | None:
        for option_code, value in self.options:
            if option_code == code:
                return value
        return None

    @property
    def message_type(self) -> DHCPMessageType | None:
        value = self.option(Option.MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        try:
            return DHCPMessageType(value[0])
        except ValueError:
            return None

    @property
    def hw_address(self) -> bytes:
        return self.chaddr[: self.hlen]

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)

    def with_options(self, options: Iterable[tuple[int, bytes]]) -> DHCPPacket:
        return replace(self, options=tuple(options))


def _parse_options(data: bytes, where: str, into: dict[int, bytearray], order: list[int]) -> int | None:
    """Read the options in ``data``; returns the overload value when option 52 was among them."""
    overload = None
    i, end = 0, len(data)
    while i < end:
        code = data[i]
        if code == Option.PAD:
            i += 1
            continue
        if code == Option.END:
            return overload
        if i + 1 >= end:
            raise DHCPDecodeError(DropReason.OPTION_OVERRUN, f"option {code} in {where} has no length")
        length = data[i + 1]
        if i + 2 + length > end:
            raise DHCPDecodeError(DropReason.OPTION_OVERRUN, f"option {code} in {where} runs past the end")
        value = data[i + 2 : i + 2 + length]
        if code == Option.OVERLOAD:
            if length != 1 or value[0] not in (1, 2, 3):
                raise DHCPDecodeError(DropReason.BAD_OVERLOAD, f"option overload value {value.hex()}")
            overload = value[0]
        elif code in into:
            into[code] += value
        else:
            into[code] = bytearray(value)
            order.append(code)
        i += 2 + length
    return overload  # RFC 2131 wants an END, but clients that omit it are common and harmless


def decode(data: bytes) -> DHCPPacket:
    if len(data) < HEADER_SIZE + len(MAGIC_COOKIE):
        raise DHCPDecodeError(DropReason.TRUNCATED, f"{len(data)} bytes is shorter than a DHCP header")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname,
     file) = HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DHCPDecodeError(DropReason.BAD_OP, f"op {op}")
    if hlen > 16:
        raise DHCPDecodeError(DropReason.BAD_HLEN, f"hardware address length {hlen}")
    if data[HEADER_SIZE : HEADER_SIZE + 4] != MAGIC_COOKIE:
        raise DHCPDecodeError(DropReason.BAD_COOKIE, data[HEADER_SIZE : HEADER_SIZE + 4].hex())
    values: dict[int, bytearray] = {}
    order: list[int] = []
    overload = _parse_options(data[HEADER_SIZE + 4 :], "options", values, order)
    # RFC 2131 §4.1: with overload, options continue in 'file' first, then in 'sname'.
    if overload in (1, 3):
        _parse_options(file, "file", values, order)
    if overload in (2, 3):
        _parse_options(sname, "sname", values, order)
    if overload is not None:
        values[Option.OVERLOAD] = bytearray((overload,))
        order.append(Option.OVERLOAD)
    return DHCPPacket(
        op=op, htype=htype, hlen=hlen, hops=hops, xid=xid, secs=secs, flags=flags,
        ciaddr=IPv4Address(ciaddr), yiaddr=IPv4Address(yiaddr), siaddr=IPv4Address(siaddr),
        giaddr=IPv4Address(giaddr), chaddr=chaddr,
        sname=bytes(64) if overload in (2, 3) else sname, file=bytes(128) if overload in (1, 3) else file,
        options=tuple((code, bytes(values[code])) for code in order),
    )


def encode_options(options: Iterable[tuple[int, bytes]]) -> bytes:
    parts = []
    for code, value in options:
        if code in _FRAMING:
            continue  # written by the encoder itself (we never overload replies)
        length = len(value)
        if length <= 255:
            parts.append(_OPTION_HEADER(code, length))
            parts.append(value)
        else:
            for start in range(0, length, 255):
                chunk = value[start : start + 255]
                parts.append(_OPTION_HEADER(code, len(chunk)))
                parts.append(chunk)
    parts.append(_END)
    return b"".join(parts)


_FRAMING = frozenset((Option.PAD, Option.END, Option.OVERLOAD))
_OPTION_HEADER = struct.Struct("!BB").pack
_END = bytes((Option.END,))


def encode(packet: DHCPPacket) -> bytes:
    chaddr = packet.chaddr.ljust(16, b"\x00")[:16]
    message = HEADER.pack(
        packet.op, packet.htype, packet.hlen, packet.hops, packet.xid, packet.secs, packet.flags,
        packet.ciaddr.packed, packet.yiaddr.packed, packet.siaddr.packed, packet.giaddr.packed, chaddr,
        packet.sname.ljust(64, b"\x00")[:64], packet.file.ljust(128, b"\x00")[:128],
    ) + MAGIC_COOKIE + encode_options(packet.options)
    return message.ljust(MIN_MESSAGE_SIZE, b"\x00")
