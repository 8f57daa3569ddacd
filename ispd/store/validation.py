"""Canonical forms of the values an operator types, shared by every backend and the CLI.

Each function returns the one form the store keeps, or raises ValueError with a message fit for
an operator; the store turns that into ``InvalidValue``, the CLI into a usage error. Checking
here, not in SQL, keeps the rules and their messages the same in every backend.
"""

from __future__ import annotations

import re
import unicodedata
from ipaddress import AddressValueError, IPv4Address, IPv6Address, IPv6Network, NetmaskValueError

from ispd.dhcp.identifiers import normalize_key
from ispd.store.ipv6_networks import SHORTEST
from ispd.store.models import ReservationKind

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# Control, format (bidi overrides, zero-width), surrogate, private-use and unassigned characters, and
# line separators: they hide or disguise what a helpdesk screen shows, or break a log or CSV line.
_UNSHOWABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
_JOINERS = {"\u200c", "\u200d"}  # ZWNJ and ZWJ (format characters): Persian and Indic names, emoji sequences


def usable_text(text: str) -> str:
    """A name or short text an operator types and reads back (a username, a plan's name, a
    reason): 1 to 253 characters, no spaces at the ends, nothing unprintable."""
    if (not text or text != text.strip() or len(text) > 253
            or any(unicodedata.category(c) in _UNSHOWABLE and c not in _JOINERS for c in text)):
        raise ValueError(f"{text!r} is not usable here (1 to 253 characters, no spaces at the ends, no control "
                         "or invisible characters)")
    return text


def username_text(text: str) -> str:
    """A subscriber's username, as ``usable_text``, and written composed (Unicode NFC): "josé"
    typed with a combining accent (NFD, as some systems' file names and clipboards hold it) is
    another string that shows the same, and would make a second subscriber that the helpdesk
    cannot tell from the first, each answering RADIUS and mail only to its own spelling."""
    usable_text(text)
    if not unicodedata.is_normalized("NFC", text):
        raise ValueError(f"{text!r} is written decomposed (a letter and a combining mark apart): write it "
                         f"composed, as {unicodedata.normalize('NFC', text)!r} (Unicode NFC)")
    return text


def showable(text: str) -> str:
    """``text`` with what ``usable_text`` refuses written as Python escapes (``\\x1b``), for
    what comes from the wire rather than an operator (a NAS's User-Name, Acct-Session-Id,
    NAS-Identifier): stored as sent, so that a Disconnect names the session as its NAS knows it,
    but never printed raw, where an escape sequence would rewrite the helpdesk's screen."""
    if text.isprintable():
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) in _UNSHOWABLE and c not in _JOINERS else c
                   for c in text)


def ipv4_text(text: str) -> str:
    """An IPv4 address in dotted-quad form (``198.18.0.10``); no leading zeros, no CIDR suffix."""
    try:
        return str(IPv4Address(text.strip()))
    except (AddressValueError, ValueError):
        raise ValueError(f"{text!r} is not an IPv4 address (write it like 198.18.0.10)") from None


def attributable_text(text: str) -> str:
    """What ``who`` is asked about: an IPv4 address (as ``ipv4_text``), an IPv6 address
    (``2001:db8:1:2::5``) or an IPv6 prefix (``2001:db8:1:2::/64``, as an abuse report gives
    one), in the compressed lower-case form. A prefix's bits past its length are dropped (an
    address with a length names the prefix it is in); a /128 is the address."""
    stripped = text.strip()
    wrong = ValueError(f"{text!r} is not an IPv4 or IPv6 address or an IPv6 prefix "
                       "(write it like 198.18.0.10, 2001:db8:1:2::5 or 2001:db8:1:2::/64)")
    if ":" not in stripped:
        if "/" in stripped:  # leases and sessions hold addresses: there is no range to search
            raise ValueError(f"{text!r}: give one IPv4 address, not a prefix (write it like 198.18.0.10)")
        try:
            return ipv4_text(stripped)
        except ValueError:
            raise wrong from None
    if "%" in stripped:  # a zone index names a link of this host, not a subscriber's address
        raise wrong
    try:
        if "/" not in stripped:
            address = IPv6Address(stripped)
            # An IPv4 client as a dual-stack server logs it (::ffff:198.18.0.10) is that IPv4 address.
            return str(address.ipv4_mapped or address)
        prefix = IPv6Network(stripped, strict=False)
    except (AddressValueError, NetmaskValueError, ValueError):
        raise wrong from None
    return str(prefix.network_address) if prefix.prefixlen == 128 else str(prefix)


def dhcp6_prefix_text(text: str, *, strict: bool = False) -> str:
    """A DHCPv6 binding's prefix as the store keys it: the compressed lower-case network text,
    an address as its /128 (``2001:db8:1::10/128``, ``2001:db8:100:ff00::/56``). Bits past the
    length are dropped, or with ``strict`` refused (a binding written so is a server's bug)."""
    stripped = text.strip()
    wrong = ValueError(f"{text!r} is not an IPv6 address or prefix "
                       "(write it like 2001:db8:1::10 or 2001:db8:100:ff00::/56)")
    if ":" not in stripped or "%" in stripped:
        raise wrong
    try:
        return str(IPv6Network(stripped, strict=strict))
    except (AddressValueError, NetmaskValueError, ValueError):
        if strict and "/" in stripped:
            try:
                IPv6Network(stripped, strict=False)
            except (AddressValueError, NetmaskValueError, ValueError):
                raise wrong from None
            raise ValueError(f"{text!r} has bits set past its length: not a prefix's network") from None
        raise wrong from None


def reservable_address(text: str) -> str:
    """An address a DHCP server could hand to a client: not 0.0.0.0, loopback, link-local,
    multicast or the reserved block 240/4 (which holds 255.255.255.255)."""
    address = IPv4Address(ipv4_text(text))
    for unusable, what in (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address (RFC 3927)"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved or broadcast address"),
    ):
        if unusable:
            raise ValueError(f"{address} is {what}: it cannot be given to a DHCP client")
    return str(address)


def _unusable6(network: IPv6Network) -> str | None:
    """What makes an IPv6 address or prefix unfit to give a subscriber, or None."""
    for unusable, what in (
        (network.network_address.is_unspecified and network.prefixlen == 128, "the unspecified address"),
        (network.is_loopback, "the loopback address"),
        (network.is_link_local, "link-local (fe80::/10, every link has its own)"),
        (network.is_multicast, "multicast (ff00::/8)"),
        (network.subnet_of(_IPV4_MAPPED), "an IPv4-mapped address (::ffff:0:0/96)"),
    ):
        if unusable:
            return what
    return None


_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")


def reservable_address6(text: str) -> str:
    """A fixed IPv6 address for a DHCPv6 client (IA_NA), in the compressed lower-case form:
    not ::, ::1, link-local, multicast or IPv4-mapped."""
    stripped = text.strip()
    if "/" in stripped:
        raise ValueError(f"{text!r}: give one IPv6 address here; a delegated prefix is reserved as prefix6")
    try:
        if "%" in stripped:
            raise ValueError
        address = IPv6Address(stripped)
    except (AddressValueError, ValueError):
        raise ValueError(f"{text!r} is not an IPv6 address (write it like 2001:db8:1::10)") from None
    unusable = _unusable6(IPv6Network(address))
    if unusable is not None:
        raise ValueError(f"{address} is {unusable}: it cannot be given to a DHCPv6 client")
    return str(address)


def reservable_prefix6(text: str) -> str:
    """A fixed prefix to delegate (IA_PD), as its compressed lower-case network text
    (``2001:db8:200::/48``): written with its length, no bits set past it, and no shorter than
    ``ipv6_networks.SHORTEST`` (a /32 is a whole ISP's allocation; ``who`` does not attribute a
    shorter one)."""
    stripped = text.strip()
    wrong = ValueError(f"{text!r} is not an IPv6 prefix (write it like 2001:db8:200::/48)")
    address, slash, length = stripped.partition("/")
    if not slash or ":" not in address or "%" in stripped:
        raise wrong
    if not (length.isascii() and length.isdigit() and 1 <= int(length) <= 128):
        raise ValueError(f"{text!r}: a prefix length is 1 to 128")
    if int(length) < SHORTEST:
        raise ValueError(f"{text!r}: a subscriber's prefix is no shorter than /{SHORTEST} (a whole ISP's "
                         f"allocation); check the length")
    try:
        network = IPv6Network(stripped, strict=False)
    except (AddressValueError, NetmaskValueError, ValueError):
        raise wrong from None
    if network.network_address != IPv6Address(address):
        raise ValueError(f"{text!r} has bits set past its length: the network is {network}")
    unusable = _unusable6(network)
    if unusable is not None:
        raise ValueError(f"{network} is {unusable}: it cannot be delegated to a DHCPv6 client")
    return str(network)


def hostname_text(text: str) -> str:
    """A host name as DNS will publish it (RFC 1123): letters, digits and hyphens in labels of at
    most 63 characters, separated by dots; kept in lowercase."""
    name = text.strip().lower().removesuffix(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{text!r} is not a host name (letters, digits and hyphens, e.g. cpe-alice)")
    return name


_MAILBOX_LOCAL_PART = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")


def mail_address(text: str) -> str:
    """A mailbox's address, kept in lowercase: ``local@domain``. The local part takes letters,
    digits, ``_``, ``-`` and inner dots: it names the Maildir on disk, and ``+`` is left free for
    subaddresses (``alice+lists@``, delivered to alice)."""
    address = text.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise ValueError(f"{text!r} is not a mail address (write it like alice@isp.example)")
    if len(local) > 64 or not _MAILBOX_LOCAL_PART.match(local):
        raise ValueError(f"{text!r}: a mailbox's name (before @) takes letters, digits, '_', '-' and inner dots, "
                         f"at most 64 of them")
    return f"{local}@{_mail_domain(text, domain)}"


def _mail_domain(text: str, domain: str) -> str:
    try:
        checked_domain = hostname_text(domain)
    except ValueError:
        raise ValueError(f"{text!r}: {domain!r} is not a domain name") from None
    if "." not in checked_domain:
        raise ValueError(f"{text!r}: {domain!r} is not a domain name (it has no dot)")
    return checked_domain


_FORWARD_LOCAL_PART = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")


def forward_address(text: str) -> str:
    """An address at another domain mail is forwarded to: any dot-atom local part (``john+isp``,
    as RFC 5321 allows; case kept, the other server decides what it means) at a domain name."""
    local, at, domain = text.strip().rpartition("@")
    if not at or not _FORWARD_LOCAL_PART.match(local) or local.startswith(".") or local.endswith(".") \
            or ".." in local:
        raise ValueError(f"{text!r} is not a mail address (write it like someone@example.net)")
    return f"{local}@{_mail_domain(text, domain)}"


def reservation_key(kind: str, key: str) -> tuple[ReservationKind, str]:
    """The kind and the canonical key (see ``ispd.dhcp.identifiers``)."""
    try:
        checked = ReservationKind(kind)
    except ValueError:
        kinds = ", ".join(k.value for k in ReservationKind)
        raise ValueError(f"unknown reservation kind {kind!r} ({kinds})") from None
    return checked, normalize_key(checked.value, key)
