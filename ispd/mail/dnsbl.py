"""DNS blocklists for the MX, as Postfix's ``reject_rbl_client``: is a connecting client listed?

A list publishes its listings as A records under its zone, the client's address reversed: for
192.0.2.1 in zen.spamhaus.org, 1.2.0.192.zen.spamhaus.org; for an IPv6 client its 32 nibbles
reversed (RFC 5782 §2.4). Which answers count as a listing is the list's (``answers``); its TXT
record, when it has one, says why, and goes into the reply as Postfix puts it there.

Every list is asked at once when the client connects, so the verdict is there by its first RCPT.
A list that does not answer in time, or fails, lists no one: a blocklist outage must not stop
the mail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import dns.asyncresolver
import dns.exception
import dns.resolver

from ispd.configtypes import SocketAddress
from ispd.logs import LogThrottle, get_logger
from ispd.mail.config import BlocklistConfig

log = get_logger("ispd.mail")

LOOKUP_SECONDS = 5.0
# A list that refuses our queries is said once in this many seconds, per list.
REFUSED_LOG_SECONDS = 600.0
# What a list answers to list a client, unless its `answers` say otherwise (RFC 5782 §2.3).
_LISTING_ANSWERS = IPv4Network("127.0.0.0/8")
# What lists answer when they refuse a query rather than list a client (Spamhaus: 127.255.255.252
# typo in the zone, .254 a public resolver, .255 over the free quota).
_REFUSED_QUERY = IPv4Network("127.255.255.0/24")


@dataclass(frozen=True, slots=True)
class Listing:
    zone: str
    answer: str
    reason: str | None  # the list's TXT record

    def reply_text(self, client: str) -> str:
        """The refusal, in Postfix's words (operators and senders search for them)."""
        text = f"Service unavailable; Client host [{client}] blocked using {self.zone}"
        return f"{text}; {_printable(self.reason)}" if self.reason else text


def query_name(client: IPv4Address | IPv6Address, zone: str) -> str:
    """The name a list answers at for ``client`` (RFC 5782 §2.1, §2.4)."""
    if isinstance(client, IPv4Address):
        labels = reversed(str(client).split("."))
    else:
        labels = reversed(client.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.rstrip(".")


def client_address(client: str) -> IPv4Address | IPv6Address | None:
    """The address a list knows ``client`` (a peer name) by: an IPv4-mapped one as IPv4 (Postfix
    does so too), a link-local one without its zone ("fe80::1%eth0", which has no reversed name
    and raised from the lookup task: every RCPT of the session got 451); None if no address."""
    try:
        address = ip_address(client)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return IPv6Address(int(address))
    return address


def listed_by(addresses: Iterable[str], accepted: Iterable[IPv4Network | IPv6Network] | None) -> str | None:
    """The first answer that is a listing; None if none is."""
    for text in addresses:
        try:
            answer = ip_address(text)
        except ValueError:
            continue
        if accepted is None:
            if answer in _LISTING_ANSWERS and answer not in _REFUSED_QUERY:
                return text
        elif any(answer in network for network in accepted):
            return text
    return None


def refused_query(addresses: Iterable[str]) -> str | None:
    """The answer by which a list refuses the query itself (127.255.255.0/24), if it gave one."""
    for text in addresses:
        try:
            if ip_address(text) in _REFUSED_QUERY:
                return text
        except ValueError:
            continue
    return None


def _printable(text: str | None) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text or "")[:200]


class Blocklists:
    """The configured lists, asked through one DNS server (or /etc/resolv.conf)."""

    def __init__(self, lists: list[BlocklistConfig], exempt: Iterable[IPv4Network | IPv6Network],
                 server: SocketAddress | None, count: Callable[[str, str], None],
                 timeout: float = LOOKUP_SECONDS) -> None:
        self.lists = lists
        self.exempt = tuple(exempt)
        # (/etc/resolv.conf is read only when there are lists to ask: a reload without any
        # must not fail on it)
        self.resolver = dns.asyncresolver.Resolver(configure=server is None and bool(lists))
        if server is not None:
            self.resolver.nameservers = [server.host]
            self.resolver.port = server.port
        self.resolver.lifetime = timeout
        self._count = count  # (zone, result: listed, clean, refused or failed)
        self._refused_logged = LogThrottle(REFUSED_LOG_SECONDS)

    def applies_to(self, client: str) -> bool:
        if not self.lists:
            return False
        address = client_address(client)
        return address is not None and not any(address in network for network in self.exempt)

    async def check(self, client: str) -> Listing | None:
        """The first list (in config order) that lists ``client``; None if none does."""
        address = client_address(client)
        if address is None:
            return None
        found = await asyncio.gather(*(self._ask(address, entry) for entry in self.lists))
        return next((listing for listing in found if listing is not None), None)

    async def _ask(self, client: IPv4Address | IPv6Address, entry: BlocklistConfig) -> Listing | None:
        zone = entry.zone.rstrip(".").lower()
        try:
            name = query_name(client, zone)
            answer = await self.resolver.resolve(name, "A")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._count(zone, "clean")
            return None
        except (dns.exception.DNSException, OSError, ValueError):  # (ValueError: a name no list has)
            self._count(zone, "failed")
            return None
        addresses = [r.to_text() for r in answer]
        hit = listed_by(addresses, entry.answers)
        if hit is None:
            refusal = refused_query(addresses)
            if refusal is None:
                self._count(zone, "clean")
                return None
            # Not a verdict on the client: the list would not answer us (through a public resolver,
            # over its quota). Counted as clean, the list looked at work while it listed no one.
            self._count(zone, "refused")
            if self._refused_logged.due(zone, time.monotonic()):
                log.warning("mail.dnsbl.query_refused", zone=zone, answer=refusal,
                            hint="the list refuses queries from this resolver (a public one, or over its "
                                 "free quota): set mail.resolver to a resolver of your own, e.g. ispd's DNS")
            return None
        self._count(zone, "listed")
        return Listing(zone, hit, await self._reason(name))

    async def _reason(self, name: str) -> str | None:
        try:
            answer = await self.resolver.resolve(name, "TXT")
        except (dns.exception.DNSException, OSError):
            return None
        for record in answer:
            return b"".join(record.strings).decode("utf-8", errors="replace")
        return None
