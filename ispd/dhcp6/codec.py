"""DHCPv6 messages: bytes ⇄ typed messages, with no sockets, store or clock.

RFC 8415 §8 (client/server messages: type, 24-bit transaction id, options), §9 (relay
messages: type, hop count, link and peer addresses, options, the relayed message inside option
9), §21 (options). A message's options are kept in order, unknown ones included; those the
server acts on are also read into typed fields at decode time, so the engine never sees a
malformed one: whatever does not have the shape of a DHCPv6 message raises ``DHCP6DecodeError``
with a reason from a closed set, for the transport to count and drop.

Relay-forward messages nest (one per relay on the way, RFC 8415 §19.1) up to 32 deep; ``decode``
returns the outermost ``RelayForward`` with the next one (or the client's message) inside.

Not read: authentication (option 11; reconfiguration is not offered), IA_TA (temporary
addresses: the engine answers NoAddrsAvail, as most servers do).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from ipaddress import IPv6Address, IPv6Network

HOP_COUNT_LIMIT = 32  # RFC 8415 §7.6
MAX_DATAGRAM = 65535
_OPTION = struct.Struct("!HH")
_IA = struct.Struct("!III")
_IAADDR = struct.Struct("!16sII")
_IAPREFIX = struct.Struct("!IIB16s")
_RELAY_HEADER = struct.Struct("!BB16s16s")
INFINITY = 0xFFFFFFFF


class MessageType(IntEnum):
    SOLICIT = 1
    ADVERTISE = 2
    REQUEST = 3
    CONFIRM = 4
    RENEW = 5
    REBIND = 6
    REPLY = 7
    RELEASE = 8
    DECLINE = 9
    RECONFIGURE = 10
    INFORMATION_REQUEST = 11
    RELAY_FORW = 12
    RELAY_REPL = 13
    LEASEQUERY = 14  # RFC 5007
    LEASEQUERY_REPLY = 15


class OptionCode(IntEnum):
    CLIENTID = 1
    SERVERID = 2
    IA_NA = 3
    IA_TA = 4
    IAADDR = 5
    ORO = 6
    PREFERENCE = 7
    ELAPSED_TIME = 8
    RELAY_MSG = 9
    AUTH = 11
    UNICAST = 12
    STATUS_CODE = 13
    RAPID_COMMIT = 14
    USER_CLASS = 15
    VENDOR_CLASS = 16
    VENDOR_OPTS = 17
    INTERFACE_ID = 18
    RECONF_MSG = 19
    RECONF_ACCEPT = 20
    DNS_SERVERS = 23  # RFC 3646
    DOMAIN_LIST = 24  # RFC 3646
    IA_PD = 25
    IAPREFIX = 26
    INFORMATION_REFRESH_TIME = 32  # RFC 8415 §21.23
    REMOTE_ID = 37  # RFC 4649
    CLIENT_FQDN = 39  # RFC 4704
    LQ_QUERY = 44  # RFC 5007
    CLIENT_DATA = 45
    CLT_TIME = 46
    LQ_CLIENT_LINK = 48
    NTP_SERVER = 56  # RFC 5908
    SOL_MAX_RT = 82
    INF_MAX_RT = 83


class StatusCode(IntEnum):
    SUCCESS = 0
    UNSPEC_FAIL = 1
    NO_ADDRS_AVAIL = 2
    NO_BINDING = 3
    NOT_ON_LINK = 4
    USE_MULTICAST = 5
    NO_PREFIX_AVAIL = 6
    UNKNOWN_QUERY_TYPE = 7  # RFC 5007
    MALFORMED_QUERY = 8
    NOT_CONFIGURED = 9
    NOT_ALLOWED = 10


class DropReason(StrEnum):
    """Why a datagram was not treated as a DHCPv6 message (a metric label: keep it closed)."""

    TRUNCATED = "truncated"
    OPTION_OVERRUN = "option_overrun"
    BAD_OPTION = "bad_option"
    HOP_LIMIT = "hop_limit"
    NO_RELAYED_MESSAGE = "no_relayed_message"


class DHCP6DecodeError(ValueError):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Option:
    code: int
    data: bytes


@dataclass(frozen=True, slots=True)
class IAAddress:
    """An address in an IA_NA (RFC 8415 §21.6); lifetimes in seconds, 0xffffffff is infinity."""

    address: IPv6Address
    preferred: int
    valid: int


@dataclass(frozen=True, slots=True)
class IAPrefix:
    """A prefix in an IA_PD (RFC 8415 §21.22). In a client's message it is a hint, which may be
    a length alone (``::/56``)."""

    prefix: IPv6Network
    preferred: int
    valid: int


@dataclass(frozen=True, slots=True)
class IA:
    """An identity association: IA_NA (addresses) or IA_PD (delegated prefixes), RFC 8415 §21.4
    and §21.21. In a reply, ``status`` is the IA's own Status Code option, if any."""

    code: int  # OptionCode.IA_NA or IA_PD
    iaid: int
    t1: int
    t2: int
    leases: tuple[IAAddress | IAPrefix, ...] = ()
    status: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A client's or a server's message (RFC 8415 §8). The typed fields are views of ``options``
    read at decode time; encoding writes ``options`` alone."""

    type: int
    transaction_id: int
    options: tuple[Option, ...] = ()
    client_id: bytes | None = None
    server_id: bytes | None = None
    ias: tuple[IA, ...] = ()  # IA_NA and IA_PD, in the order sent (IA_TA left in options)
    requested_options: tuple[int, ...] = ()
    rapid_commit: bool = False
    hostname: str | None = None  # from the Client FQDN option, when it is a valid name

    def has(self, code: int) -> bool:
        return any(option.code == code for option in self.options)


@dataclass(frozen=True, slots=True)
class RelayForward:
    """A relay agent's Relay-forward (RFC 8415 §9), with what it relays: the client's message or
    the next relay's Relay-forward."""

    hop_count: int
    link_address: IPv6Address
    peer_address: IPv6Address
    options: tuple[Option, ...]
    relayed: Message | RelayForward

    @property
    def interface_id(self) -> bytes | None:
        return next((o.data for o in self.options if o.code == OptionCode.INTERFACE_ID), None)

    @property
    def remote_id(self) -> bytes | None:
        return next((o.data for o in self.options if o.code == OptionCode.REMOTE_ID), None)

    def chain(self) -> tuple[list[RelayForward], Message]:
        """The relays from the server's side (this one) to the client's, and the client's message."""
        relays: list[RelayForward] = []
        current: Message | RelayForward = self
        while isinstance(current, RelayForward):
            relays.append(current)
            current = current.relayed
        return relays, current


# --- decoding ------------------------------------------------------------------------------------


def decode(data: bytes) -> Message | RelayForward:
    return _decode(data, 0)


def _decode(data: bytes, depth: int) -> Message | RelayForward:
    if len(data) < 4:
        raise DHCP6DecodeError(DropReason.TRUNCATED, f"{len(data)} bytes")
    if data[0] in (MessageType.RELAY_FORW, MessageType.RELAY_REPL):
        if len(data) < _RELAY_HEADER.size:
            raise DHCP6DecodeError(DropReason.TRUNCATED, f"relay message of {len(data)} bytes")
        if depth >= HOP_COUNT_LIMIT:
            raise DHCP6DecodeError(DropReason.HOP_LIMIT, f"relay messages nested over {HOP_COUNT_LIMIT} deep")
        kind, hop_count, link, peer = _RELAY_HEADER.unpack_from(data)
        options = _decode_options(data, _RELAY_HEADER.size)
        inner = next((o.data for o in options if o.code == OptionCode.RELAY_MSG), None)
        if kind == MessageType.RELAY_REPL or inner is None:
            raise DHCP6DecodeError(DropReason.NO_RELAYED_MESSAGE, "a relay message with nothing relayed")
        return RelayForward(hop_count, IPv6Address(link), IPv6Address(peer), options, _decode(inner, depth + 1))
    options = _decode_options(data, 4)
    return _message(data[0], int.from_bytes(data[1:4], "big"), options)


def _decode_options(data: bytes, offset: int) -> tuple[Option, ...]:
    options = []
    end = len(data)
    while offset < end:
        if offset + 4 > end:
            raise DHCP6DecodeError(DropReason.OPTION_OVERRUN, f"an option header cut at byte {offset}")
        code, length = _OPTION.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise DHCP6DecodeError(DropReason.OPTION_OVERRUN, f"option {code} of {length} bytes runs past the end")
        options.append(Option(code, data[offset : offset + length]))
        offset += length
    return tuple(options)


def _message(kind: int, transaction_id: int, options: tuple[Option, ...]) -> Message:
    client_id = server_id = hostname = None
    ias: list[IA] = []
    requested: tuple[int, ...] = ()
    rapid_commit = False
    for option in options:
        code, value = option.code, option.data
        if code == OptionCode.CLIENTID:
            client_id = _duid(value, "client")
        elif code == OptionCode.SERVERID:
            server_id = _duid(value, "server")
        elif code in (OptionCode.IA_NA, OptionCode.IA_PD):
            ias.append(decode_ia(code, value))
        elif code == OptionCode.ORO:
            if len(value) % 2:
                raise DHCP6DecodeError(DropReason.BAD_OPTION, "an option request of an odd length")
            requested = struct.unpack(f"!{len(value) // 2}H", value)
        elif code == OptionCode.RAPID_COMMIT:
            rapid_commit = True
        elif code == OptionCode.CLIENT_FQDN:
            hostname = _fqdn_hostname(value)
    return Message(kind, transaction_id, options, client_id, server_id, tuple(ias), requested, rapid_commit, hostname)


def _duid(value: bytes, whose: str) -> bytes:
    # RFC 8415 §11.1: a DUID is 2 to 130 octets (a type and at least a little of an identifier).
    if not 3 <= len(value) <= 130:
        raise DHCP6DecodeError(DropReason.BAD_OPTION, f"a {whose} DUID of {len(value)} bytes")
    return value


def decode_ia(code: int, value: bytes) -> IA:
    if len(value) < _IA.size:
        raise DHCP6DecodeError(DropReason.BAD_OPTION, f"an IA of {len(value)} bytes")
    iaid, t1, t2 = _IA.unpack_from(value)
    leases: list[IAAddress | IAPrefix] = []
    status = None
    for option in _decode_options(value, _IA.size):
        if code == OptionCode.IA_NA and option.code == OptionCode.IAADDR:
            leases.append(decode_ia_address(option.data))
        elif code == OptionCode.IA_PD and option.code == OptionCode.IAPREFIX:
            if len(option.data) < _IAPREFIX.size:
                raise DHCP6DecodeError(DropReason.BAD_OPTION, f"an IA prefix of {len(option.data)} bytes")
            preferred, valid, length, prefix = _IAPREFIX.unpack_from(option.data)
            if length > 128:
                raise DHCP6DecodeError(DropReason.BAD_OPTION, f"a prefix length of {length}")
            # strict=False: a hint's bits past its length are the client's business, not an error.
            # (From an int: given an IPv6Address, ipaddress formats it and parses the text again.)
            network = IPv6Network((int.from_bytes(prefix, "big"), length), strict=False)
            leases.append(IAPrefix(network, preferred, valid))
        elif option.code == OptionCode.STATUS_CODE and len(option.data) >= 2:
            status = (int.from_bytes(option.data[:2], "big"), option.data[2:].decode("utf-8", "replace"))
    return IA(code, iaid, t1, t2, tuple(leases), status)


@dataclass(frozen=True, slots=True)
class LeaseQuestion:
    """A LEASEQUERY's OPTION_LQ_QUERY (RFC 5007 §4.1.2.1): what is asked about, on which link
    (:: for any), and the options that say it (an IA Address, a Client Identifier)."""

    query_type: int
    link_address: IPv6Address
    options: tuple[Option, ...]

    def first(self, code: int) -> bytes | None:
        return next((o.data for o in self.options if o.code == code), None)


def decode_lq_query(value: bytes) -> LeaseQuestion:
    if len(value) < 17:
        raise DHCP6DecodeError(DropReason.BAD_OPTION, f"a query option of {len(value)} bytes")
    return LeaseQuestion(value[0], IPv6Address(value[1:17]), _decode_options(value, 17))


def decode_ia_address(value: bytes) -> IAAddress:
    if len(value) < _IAADDR.size:
        raise DHCP6DecodeError(DropReason.BAD_OPTION, f"an IA address of {len(value)} bytes")
    address, preferred, valid = _IAADDR.unpack_from(value)
    return IAAddress(IPv6Address(address), preferred, valid)


def _fqdn_hostname(value: bytes) -> str | None:
    """The name in a Client FQDN option (RFC 4704 §4: flags, then a name in DNS wire form, maybe
    partial), when every label is a host name's; otherwise None (the name is not kept)."""
    labels, offset = [], 1
    while offset < len(value):
        length = value[offset]
        offset += 1
        if length == 0:
            break
        label = value[offset : offset + length]
        if len(label) != length or length > 63 or not _is_host_label(label):
            return None
        labels.append(label.decode("ascii").lower())
        offset += length
    name = ".".join(labels)
    return name if labels and len(name) <= 253 else None


def _is_host_label(label: bytes) -> bool:
    return (label.replace(b"-", b"").isalnum() and label.isascii() and not label.startswith(b"-")
            and not label.endswith(b"-"))


# --- encoding ------------------------------------------------------------------------------------


def option(code: int, data: bytes = b"") -> Option:
    return Option(code, data)


def encode(message: Message) -> bytes:
    return bytes([message.type]) + message.transaction_id.to_bytes(3, "big") + encode_options(message.options)


def encode_options(options: tuple[Option, ...] | list[Option]) -> bytes:
    return b"".join(_OPTION.pack(o.code, len(o.data)) + o.data for o in options)


def encode_relay_reply(relay: RelayForward, inner: bytes) -> bytes:
    """The Relay-reply that carries ``inner`` back through ``relay`` (RFC 8415 §19.3): its hop
    count and addresses, its Interface-ID echoed, the message in option 9."""
    options = [option(OptionCode.RELAY_MSG, inner)]
    interface_id = relay.interface_id
    if interface_id is not None:
        options.insert(0, option(OptionCode.INTERFACE_ID, interface_id))
    header = _RELAY_HEADER.pack(MessageType.RELAY_REPL, relay.hop_count, relay.link_address.packed,
                                relay.peer_address.packed)
    return header + encode_options(options)


def encode_ia(ia: IA) -> Option:
    parts = [_IA.pack(ia.iaid, ia.t1, ia.t2)]
    for lease in ia.leases:
        encoded = encode_lease(lease)
        parts.append(_OPTION.pack(encoded.code, len(encoded.data)) + encoded.data)
    if ia.status is not None:
        status = encode_status(*ia.status)
        parts.append(_OPTION.pack(status.code, len(status.data)) + status.data)
    return Option(ia.code, b"".join(parts))


def encode_lease(lease: IAAddress | IAPrefix) -> Option:
    """An IA Address or IA Prefix option on its own (in a leasequery's client data)."""
    if isinstance(lease, IAAddress):
        return Option(OptionCode.IAADDR, _IAADDR.pack(lease.address.packed, lease.preferred, lease.valid))
    return Option(OptionCode.IAPREFIX, _IAPREFIX.pack(lease.preferred, lease.valid, lease.prefix.prefixlen,
                                                      lease.prefix.network_address.packed))


def encode_status(code: int, text: str = "") -> Option:
    return Option(OptionCode.STATUS_CODE, code.to_bytes(2, "big") + text.encode("utf-8"))


def encode_addresses(code: int, addresses: list[IPv6Address] | tuple[IPv6Address, ...]) -> Option:
    return Option(code, b"".join(a.packed for a in addresses))


def encode_domain_list(names: list[str] | tuple[str, ...]) -> Option:
    """RFC 3646 §4: the names in DNS wire form, uncompressed (RFC 8415 §10)."""
    data = bytearray()
    for name in names:
        for label in name.rstrip(".").split("."):
            raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
            data += bytes([len(raw)]) + raw
        data += b"\x00"
    return Option(OptionCode.DOMAIN_LIST, bytes(data))


def uint32(code: int, value: int) -> Option:
    return Option(code, value.to_bytes(4, "big"))
