"""IPv6 networks as integers SQLite can index, for ``who`` asked about an IPv6 address or prefix.

A session's Framed-IPv6-Prefix, Delegated-IPv6-Prefix and Framed-IPv6-Address (a /128) are kept
as the NAS or an importer wrote them; containment is not a question SQL answers on those texts.
Each is therefore also kept (table ``radius_session_ipv6``, migration 0012) as its network: the
length and the 128 network bits in two 64-bit halves. SQLite's INTEGER is signed, so a half is
stored offset by 2**63 (``unsigned - 2**63``), which keeps the order of the unsigned value: a
range of networks is a range of integers. Bits past the length are dropped, so a stored network
of length L is aligned to L. A DHCPv6 binding's prefix is kept the same way, in the columns of
its history rows (``dhcp6_lease_history``, migration 0015), and answers by the same ranges.

A stored network of length L overlaps a question of length Q iff both agree on their first
m = min(L, Q) bits: its bits lie in [the question's bits masked to m, those | the host mask of m].
For each L that is one index range on (length, net_hi, net_lo): below 64 common bits a range of
net_hi, and from 64 one net_hi and a range of net_lo. For L <= Q the range holds one aligned
network (the one containing the question); for L > Q exactly the networks inside it. One seek
per length from SHORTEST to 128 reads the matching rows and no other.

A network shorter than SHORTEST holds nothing for ``who``: a /32 is a whole ISP's allocation (the
least a registry gives), so a subscriber's prefix is never shorter, and one a NAS got wrong
(::/0 is two zero octets away) would otherwise name its session for every address asked about.
It is kept and indexed all the same (as the NAS sent it), only not matched.
"""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv6Network
from socket import AF_INET6, inet_pton

SHORTEST = 32
_OFFSET = 1 << 63
_LOW_64 = (1 << 64) - 1
_ALL_128 = (1 << 128) - 1

# Where the networks of one stored length that overlap a question lie: (length, net_hi min,
# net_hi max), net_lo being any; or (length, net_hi, net_lo min, net_lo max).
HighRange = tuple[int, int, int]
LowRange = tuple[int, int, int, int]


@lru_cache(maxsize=4096)  # a backfill asks several times per text (see ``network_part``)
def stored_network(text: str) -> tuple[int, int, int] | None:
    """A stored prefix or address text as (length, net_hi, net_lo), whatever form it was written
    in (compressed or not, either case, bits set past the length); None for a text that is not
    one (it answers nothing, as before it was indexed). The forms and the answers are the
    ipaddress module's; the C library's parser reads the address (a dual-stack Start pays for
    two or three texts, and a backfill for millions: it is ~8 times faster), and ipaddress
    decides what that one refuses (a zone index)."""
    stripped = text.strip()
    address, slash, length_text = stripped.partition("/")
    try:
        bits = int.from_bytes(inet_pton(AF_INET6, address), "big")
    except (OSError, ValueError):
        return _read_slowly(stripped)
    if not slash:
        length = 128
    elif length_text.isascii() and length_text.isdigit() and int(length_text) <= 128:
        length = int(length_text)
    else:
        return None
    bits &= ~(_ALL_128 >> length)
    return length, (bits >> 64) - _OFFSET, (bits & _LOW_64) - _OFFSET


def _read_slowly(text: str) -> tuple[int, int, int] | None:
    try:
        network = IPv6Network(text, strict=False)
    except ValueError:
        return None
    bits = int(network.network_address)
    return network.prefixlen, (bits >> 64) - _OFFSET, (bits & _LOW_64) - _OFFSET


def network_text(length: int, net_hi: int, net_lo: int) -> str:
    """The compressed lower-case text of a stored network; a /128's without its length."""
    network = IPv6Network((((net_hi + _OFFSET) << 64) | (net_lo + _OFFSET), length))
    return str(network.network_address) if length == 128 else str(network)


def overlap_ranges(question: IPv6Network) -> tuple[list[HighRange], list[LowRange]]:
    """For each stored length SHORTEST..128, where the networks that overlap ``question``
    (contain it, are it, or lie inside it) lie: below 64 common bits a range of net_hi (the host
    mask takes all of net_lo), at 64 or more one net_hi and a range of net_lo."""
    bits, asked = int(question.network_address), question.prefixlen
    high_ranges, low_ranges = [], []
    for length in range(SHORTEST, 129):
        common = min(length, asked)
        host = _ALL_128 >> common
        lowest = bits & ~host & _ALL_128
        highest = lowest | host
        if common < 64:
            high_ranges.append((length, (lowest >> 64) - _OFFSET, (highest >> 64) - _OFFSET))
        else:
            low_ranges.append((length, (lowest >> 64) - _OFFSET, (lowest & _LOW_64) - _OFFSET,
                               (highest & _LOW_64) - _OFFSET))
    return high_ranges, low_ranges


def network_part(text: str | None, part: str) -> int | None:
    """SQL function ``ispd_ipv6_network(text, part)``, part 'length', 'net_hi' or 'net_lo': how
    migration 0012 fills ``radius_session_ipv6`` from the sessions already kept."""
    network = stored_network(text) if text is not None else None
    if network is None:
        return None
    return network[("length", "net_hi", "net_lo").index(part)]
