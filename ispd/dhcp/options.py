"""DHCPv4 option codes (RFC 2132 and later) and the codecs of the values ispd reads or writes.

Options are kept on the wire as raw bytes in the packet (so unknown ones are carried through
untouched); these helpers turn the ones the engine uses into typed values and back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network


class DHCPMessageType(IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8
    # RFC 4388 Leasequery: a relay agent's question, and the three answers.
    LEASEQUERY = 10
    LEASEUNASSIGNED = 11
    LEASEUNKNOWN = 12
    LEASEACTIVE = 13


class Option(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTERS = 3
    DNS_SERVERS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    INTERFACE_MTU = 26
    BROADCAST_ADDRESS = 28
    NTP_SERVERS = 42
    VENDOR_SPECIFIC = 43
    REQUESTED_ADDRESS = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS_ID = 60
    CLIENT_ID = 61
    USER_CLASS = 77
    RAPID_COMMIT = 80
    CLIENT_FQDN = 81
    RELAY_AGENT_INFO = 82
    CLIENT_LAST_TRANSACTION_TIME = 91  # RFC 4388
    ASSOCIATED_IP = 92  # RFC 4388
    IPV6_ONLY_PREFERRED = 108  # RFC 8925
    SUBNET_SELECTION = 118
    CLASSLESS_STATIC_ROUTES = 121
    CAPTIVE_PORTAL = 114
    END = 255


class RelaySubOption(IntEnum):
    """RFC 3046 §2.0 sub-options, plus link selection (RFC 3527) used by relays on multinetted links."""

    CIRCUIT_ID = 1
    REMOTE_ID = 2
    LINK_SELECTION = 5
    SERVER_ID_OVERRIDE = 11
    RELAY_SOURCE_PORT = 19  # RFC 8357: the relay listens on the port it sent from, not 67


class OptionValueError(ValueError):
    """An option whose value does not have the shape its code requires."""


def encode_ip(address: IPv4Address) -> bytes:
    return address.packed


def decode_ip(value: bytes) -> IPv4Address:
    if len(value) != 4:
        raise OptionValueError(f"an address option must be 4 bytes, got {len(value)}")
    return IPv4Address(value)


def encode_ips(addresses: Iterable[IPv4Address]) -> bytes:
    return b"".join(a.packed for a in addresses)


def decode_ips(value: bytes) -> tuple[IPv4Address, ...]:
    if not value or len(value) % 4:
        raise OptionValueError(f"an address list must be a non-empty multiple of 4 bytes, got {len(value)}")
    return tuple(IPv4Address(value[i : i + 4]) for i in range(0, len(value), 4))


def encode_u32(number: int) -> bytes:
    return number.to_bytes(4, "big")


def decode_u32(value: bytes) -> int:
    if len(value) != 4:
        raise OptionValueError(f"a 32-bit option must be 4 bytes, got {len(value)}")
    return int.from_bytes(value, "big")


def encode_u16(number: int) -> bytes:
    return number.to_bytes(2, "big")


def decode_u16(value: bytes) -> int:
    if len(value) != 2:
        raise OptionValueError(f"a 16-bit option must be 2 bytes, got {len(value)}")
    return int.from_bytes(value, "big")


def encode_classless_routes(routes: Iterable[tuple[IPv4Network, IPv4Address]]) -> bytes:
    """RFC 3442: each route is the prefix length, the significant octets of the destination, then
    the router."""
    out = bytearray()
    for network, router in routes:
        significant = (network.prefixlen + 7) // 8
        out.append(network.prefixlen)
        out += network.network_address.packed[:significant]
        out += router.packed
    return bytes(out)


def decode_classless_routes(value: bytes) -> tuple[tuple[IPv4Network, IPv4Address], ...]:
    routes = []
    i = 0
    while i < len(value):
        prefixlen = value[i]
        if prefixlen > 32:
            raise OptionValueError(f"a classless route has prefix length {prefixlen}")
        significant = (prefixlen + 7) // 8
        end = i + 1 + significant + 4
        if end > len(value):
            raise OptionValueError("a classless route runs past the end of the option")
        destination = value[i + 1 : i + 1 + significant] + bytes(4 - significant)
        network = ipaddress.ip_network((IPv4Address(destination), prefixlen), strict=False)
        routes.append((IPv4Network(network), IPv4Address(value[end - 4 : end])))
        i = end
    return tuple(routes)


def encode_domain_names(names: Iterable[str]) -> bytes:
    """Names in RFC 1035 wire form, one after another and uncompressed: the form of the domain
    search list (option 119, RFC 3397, which allows compression but does not need it) and of
    SIP servers by name (option 120, RFC 3361, after its encoding byte)."""
    out = bytearray()
    for name in names:
        start = len(out)
        for label in name.rstrip(".").split(".") if name.strip(".") else []:
            raw = label.encode("ascii")
            if not 1 <= len(raw) <= 63:
                raise OptionValueError(f"{name!r}: a label must be 1 to 63 characters")
            out.append(len(raw))
            out += raw
        out.append(0)
        if len(out) - start > 255:
            raise OptionValueError(f"{name!r}: a name is at most 255 bytes in wire form (RFC 1035 §2.3.4)")
    return bytes(out)


@dataclass(frozen=True, slots=True)
class RelayAgentInfo:
    """Option 82 as the relay sent it: the sub-options in order, raw."""

    suboptions: tuple[tuple[int, bytes], ...]

    def get(self, code: int) -> bytes | None:
        for sub_code, value in self.suboptions:
            if sub_code == code:
                return value
        return None

    @property
    def circuit_id(self) -> bytes | None:
        return self.get(RelaySubOption.CIRCUIT_ID)

    @property
    def remote_id(self) -> bytes | None:
        return self.get(RelaySubOption.REMOTE_ID)

    @property
    def link_selection(self) -> IPv4Address | None:
        value = self.get(RelaySubOption.LINK_SELECTION)
        return IPv4Address(value) if value is not None and len(value) == 4 else None

    @property
    def server_id_override(self) -> IPv4Address | None:
        """RFC 5107: the relay's own address, which replies name as the server identifier so that
        renewals come to the relay (which relays them) rather than straight to us."""
        value = self.get(RelaySubOption.SERVER_ID_OVERRIDE)
        return IPv4Address(value) if value is not None and len(value) == 4 else None

    @property
    def relay_source_port(self) -> bool:
        """RFC 8357 §5.1: replies go to the UDP port the request came from (the sub-option is empty)."""
        return self.get(RelaySubOption.RELAY_SOURCE_PORT) is not None

    def encode(self) -> bytes:
        return encode_suboptions(self.suboptions)


def encode_suboptions(suboptions: Iterable[tuple[int, bytes]]) -> bytes:
    out = bytearray()
    for code, value in suboptions:
        if len(value) > 255:
            raise OptionValueError(f"sub-option {code} is longer than 255 bytes")
        out += bytes((code, len(value))) + value
    return bytes(out)


def decode_relay_agent_info(value: bytes) -> RelayAgentInfo:
    suboptions = []
    i = 0
    while i < len(value):
        if i + 2 > len(value):
            raise OptionValueError("a relay agent sub-option header runs past the end")
        code, length = value[i], value[i + 1]
        if i + 2 + length > len(value):
            raise OptionValueError(f"relay agent sub-option {code} runs past the end")
        suboptions.append((code, value[i + 2 : i + 2 + length]))
        i += 2 + length
    return RelayAgentInfo(tuple(suboptions))


@dataclass(frozen=True, slots=True)
class ClientFQDN:
    """RFC 4702 option 81: flags (S, O, E, N), and the name (wire or ASCII encoded)."""

    flags: int
    name: str

    FLAG_S = 0x01  # the server should update the A record
    FLAG_O = 0x02  # the server overrode the client's S
    FLAG_E = 0x04  # the name is in canonical wire format
    FLAG_N = 0x08  # the server should do no updates


def decode_client_fqdn(value: bytes) -> ClientFQDN:
    if len(value) < 3:
        raise OptionValueError(f"client FQDN must be at least 3 bytes, got {len(value)}")
    flags, name_bytes = value[0], value[3:]
    if flags & ClientFQDN.FLAG_E:
        labels, i = [], 0
        while i < len(name_bytes):
            length = name_bytes[i]
            if length == 0:
                break
            if length > 63 or i + 1 + length > len(name_bytes):
                raise OptionValueError("client FQDN has a malformed label")
            labels.append(name_bytes[i + 1 : i + 1 + length].decode("ascii", "replace"))
            i += 1 + length
        name = ".".join(labels)
    else:
        name = name_bytes.decode("ascii", "replace").rstrip(".\x00")
    return ClientFQDN(flags, name)
