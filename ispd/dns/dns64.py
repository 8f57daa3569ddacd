"""DNS64 (RFC 6147): AAAA records made from A records, for IPv6-only subscribers behind a NAT64.

An IPv6-only network reaches IPv4-only hosts through a NAT64 that translates addresses under a
prefix (the well-known 64:ff9b::/96, or one of the operator's own). Its clients only ask for
AAAA records, so the resolver answers a name that has A records and no AAAA with AAAA records
that embed those IPv4 addresses in the prefix (RFC 6052 §2.2), and the NAT64 does the rest.

A PTR question for an address under the prefix is answered with a CNAME to the in-addr.arpa
name of the IPv4 address it embeds, followed (§5.3.1), so that reverse lookups by IPv6-only
clients find the IPv4 host's name.

The answer is the AAAA question's own when it has AAAA records (``synthesize_all`` makes one
from the A records anyway); AAAA records inside ``exclude`` count as none (RFC 6147 §5.1.4:
IPv4-mapped addresses by default). NXDOMAIN stays NXDOMAIN; any other failure of the AAAA
question is treated as no AAAA (§5.1.2). Under the well-known prefix only global IPv4 addresses
are embedded (RFC 6052 §3.1), and ipv4only.arpa's two (RFC 7050 §2.2, RFC 8880): IPv6-only hosts
(Android's and Apple's 464XLAT, Windows' CLAT) learn the NAT64 prefix from them. The made records
live no longer than the A records, nor than the AAAA question's negative TTL (§5.1.7), are not
signed, and so never get AD; a client that sets DO and CD validates for itself and gets the
records as they are (§5.5).

Pure: the engine resolves, this module decides and makes the records.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from ispd.dns.wire import name_from_labels, name_labels

WELL_KNOWN_PREFIX = IPv6Network("64:ff9b::/96")
# ipv4only.arpa's addresses (RFC 7050 §2.2): not global, but made into AAAA records all the same,
# since the AAAA answer for ipv4only.arpa is how IPv6-only hosts find the prefix (RFC 7050 §3).
WELL_KNOWN_IPV4 = frozenset({IPv4Address("192.0.0.170").packed, IPv4Address("192.0.0.171").packed})
# What the well-known prefix never embeds (RFC 6052 §3.1: "non-global IPv4 addresses, such as
# those defined in RFC 1918 or listed in Section 3 of RFC 5735"): IANA's special-purpose
# registry's not globally reachable entries (RFC 6890, 240.0.0.0/4 holding the limited
# broadcast address), and multicast, which no NAT64 translates (RFC 6146 is for unicast). Written out rather than taken
# from IPv4Address.is_global, whose table changes with the Python release: 3.11.7's lets
# 192.0.0.8 and every multicast address through.
_NOT_GLOBAL = tuple(IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"))
# In 192.0.0.0/24 but globally reachable (RFC 7723's PCP anycast, RFC 8155's TURN anycast).
_GLOBAL_IN_IETF_BLOCK = frozenset({IPv4Address("192.0.0.9").packed, IPv4Address("192.0.0.10").packed})
PREFIX_LENGTHS = (32, 40, 48, 56, 64, 96)  # RFC 6052 §2.2
_U_OCTET = 8  # byte 8 (bits 64-71) of the address is reserved and stays zero


def check_prefix(prefix: IPv6Network) -> None:
    """Raises ValueError unless ``prefix`` can embed IPv4 addresses (RFC 6052 §2.2)."""
    if prefix.prefixlen not in PREFIX_LENGTHS:
        raise ValueError(f"{prefix}: a DNS64 prefix is a /32, /40, /48, /56, /64 or /96 (RFC 6052)")
    if prefix.prefixlen > 64 and prefix.network_address.packed[_U_OCTET]:
        raise ValueError(f"{prefix}: bits 64 to 71 of a DNS64 prefix must be zero (RFC 6052 §2.2)")


class DNS64:
    __slots__ = ("_positions", "_prefix_bytes", "exclude", "prefix", "synthesize_all")

    def __init__(self, prefix: IPv6Network, exclude: Iterable[IPv6Network] = (IPv6Network("::ffff:0:0/96"),),
                 synthesize_all: bool = False) -> None:
        check_prefix(prefix)
        self.prefix = prefix
        self.exclude = tuple(exclude)
        self.synthesize_all = synthesize_all
        self._prefix_bytes = prefix.network_address.packed
        start = prefix.prefixlen // 8
        # Where the IPv4 address's four bytes go: after the prefix, around the u-octet.
        self._positions = [i for i in range(start, 16) if i != _U_OCTET][:4]

    def embed(self, ipv4: bytes) -> bytes:
        """The IPv6 address (16 bytes) for the IPv4 address ``ipv4`` (4 bytes) under the prefix."""
        address = bytearray(self._prefix_bytes)
        for position, byte in zip(self._positions, ipv4, strict=True):
            address[position] = byte
        return bytes(address)

    def extract(self, ipv6: bytes) -> bytes | None:
        """The IPv4 address an address under the prefix embeds (for reverse lookups), or None."""
        if IPv6Address(ipv6) not in self.prefix:
            return None
        return bytes(ipv6[i] for i in self._positions)

    def reverse_target(self, name: bytes) -> bytes | None:
        """RFC 6147 §5.3.1: for the ip6.arpa name of an address under the prefix (lower case,
        wire form), the in-addr.arpa name of the IPv4 address it embeds; else None."""
        labels = name_labels(name)
        if len(labels) != 34 or labels[32:] != [b"ip6", b"arpa"]:
            return None
        try:
            address = bytes.fromhex("".join(label.decode("ascii") for label in reversed(labels[:32])))
        except (UnicodeDecodeError, ValueError):
            return None
        if len(address) != 16 or any(len(label) != 1 for label in labels[:32]):
            return None
        ipv4 = self.extract(address)
        if ipv4 is None:
            return None
        return name_from_labels([str(byte).encode() for byte in reversed(ipv4)] + [b"in-addr", b"arpa"])

    def counts(self, aaaa: bytes) -> bool:
        """Whether an AAAA record's address counts as one (not in ``exclude``)."""
        address = IPv6Address(aaaa)
        return not any(address in network for network in self.exclude)

    def may_embed(self, ipv4: bytes) -> bool:
        return self.prefix != WELL_KNOWN_PREFIX or ipv4 in WELL_KNOWN_IPV4 or is_global(ipv4)


def is_global(ipv4: bytes) -> bool:
    """Whether the IPv4 address ``ipv4`` (4 bytes) may be embedded in the well-known prefix."""
    if ipv4 in _GLOBAL_IN_IETF_BLOCK:
        return True
    address = IPv4Address(ipv4)
    return not any(address in network for network in _NOT_GLOBAL)
