"""DNS blocklists: the names asked, which answers are listings, the refusal's words, and a list
that fails listing no one (asked against a small DNS server of the test's own)."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import dns.message
import dns.rcode
import dns.rrset
import pytest
import structlog.testing

from ispd.configtypes import SocketAddress
from ispd.mail.config import BlocklistConfig
from ispd.mail.dnsbl import Blocklists, Listing, listed_by, query_name


def test_the_name_asked_is_the_address_reversed_under_the_zone() -> None:
    assert query_name(IPv4Address("192.0.2.1"), "zen.example.") == "1.2.0.192.zen.example"
    v6 = query_name(IPv6Address("2001:db8::1"), "bl.example")
    assert v6 == "1." + "0." * 23 + "8.b.d.0.1.0.0.2.bl.example"  # RFC 5782 §2.4: 32 nibbles


def test_which_answers_list_a_client() -> None:
    assert listed_by(["127.0.0.2"], None) == "127.0.0.2"
    assert listed_by(["127.255.255.254"], None) is None  # the list refused the query: no listing
    assert listed_by(["192.0.2.1"], None) is None  # not a blocklist answer at all
    assert listed_by(["127.255.255.254", "127.0.0.4"], None) == "127.0.0.4"
    only_sbl = [IPv4Network("127.0.0.2/32")]
    assert listed_by(["127.0.0.4"], only_sbl) is None and listed_by(["127.0.0.2"], only_sbl) == "127.0.0.2"
    assert listed_by(["not an address"], None) is None


def test_the_refusal_says_what_postfix_says_and_nothing_unprintable() -> None:
    assert Listing("zen.example", "127.0.0.2", None).reply_text("192.0.2.1") == \
        "Service unavailable; Client host [192.0.2.1] blocked using zen.example"
    text = Listing("zen.example", "127.0.0.2", "see https://zen.example/q?ip=192.0.2.1\r\nx").reply_text("192.0.2.1")
    assert text.endswith("; see https://zen.example/q?ip=192.0.2.1??x") and "\r" not in text


class _Server(asyncio.DatagramProtocol):
    """Answers A and TXT for 2.0.0.127.<zone>; SERVFAIL for the zone "broken.example."; silence for
    "dead.example."; 127.255.255.255 (over the quota) to any A query under "quota.example."."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text()
        if name.endswith("dead.example."):
            return
        reply = dns.message.make_response(query)
        if name.endswith("broken.example."):
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif name.endswith("quota.example.") and question.rdtype == 1:
            reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "127.255.255.255"))
        elif name.startswith("2.0.0.127."):
            kind = "A" if question.rdtype == 1 else "TXT"
            value = "127.0.0.2" if kind == "A" else '"listed: see https://bl.example"'
            reply.answer.append(dns.rrset.from_text(name, 60, "IN", kind, value))
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(reply.to_wire(), addr)  # type: ignore[attr-defined]


async def _check(zones: list[str], client: str, counted: list[tuple[str, str]]) -> Listing | None:
    [listing] = await _checks(zones, [client], counted)
    return listing


async def _checks(zones: list[str], clients: list[str], counted: list[tuple[str, str]]) -> list[Listing | None]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Server, local_addr=("127.0.0.1", 0), family=socket.AF_INET)
    try:
        port = transport.get_extra_info("sockname")[1]
        lists = Blocklists([BlocklistConfig(zone=z) for z in zones], [IPv4Network("10.0.0.0/8")],
                           SocketAddress("127.0.0.1", port), lambda zone, result: counted.append((zone, result)),
                           timeout=0.5)
        assert not lists.applies_to("10.1.2.3") and all(lists.applies_to(client) for client in clients)
        return [await lists.check(client) for client in clients]
    finally:
        transport.close()


def test_a_listed_client_is_found_with_the_list_s_reason_and_a_failing_list_lists_no_one() -> None:
    counted: list[tuple[str, str]] = []
    listing = asyncio.run(_check(["dead.example", "broken.example.", "bl.example."], "127.0.0.2", counted))
    assert listing == Listing("bl.example", "127.0.0.2", "listed: see https://bl.example")
    assert sorted(counted) == [("bl.example", "listed"), ("broken.example", "failed"), ("dead.example", "failed")]
    counted.clear()
    assert asyncio.run(_check(["bl.example"], "::ffff:127.0.0.3", counted)) is None
    assert counted == [("bl.example", "clean")]


@pytest.mark.parametrize("zone", ["", "no_dot", "a..b", "bad zone.example"])
def test_a_zone_that_is_no_domain_name_is_refused(zone: str) -> None:
    with pytest.raises(ValueError, match="zone"):
        BlocklistConfig(zone=zone)


def test_a_link_local_client_with_its_zone_is_looked_up_without_it_and_a_mapped_one_is_exempt_as_ipv4() -> None:
    """A peer name "fe80::1%eth0" made the lookup task raise (the zone has no reversed name):
    every RCPT of the session got 451. An IPv4-mapped client was looked up as IPv4 but checked
    against the IPv4 exemptions as IPv6, so it was never exempt."""
    counted: list[tuple[str, str]] = []
    assert asyncio.run(_check(["bl.example"], "fe80::1%eth0", counted)) is None
    assert counted == [("bl.example", "clean")]
    lists = Blocklists([BlocklistConfig(zone="bl.example")], [IPv4Network("10.0.0.0/8")], None, lambda *_: None)
    assert not lists.applies_to("::ffff:10.1.2.3") and lists.applies_to("::ffff:192.0.2.1")
    assert not lists.applies_to("")


def test_a_list_that_refuses_the_query_is_counted_and_said_so_not_counted_clean() -> None:
    """Spamhaus answers 127.255.255.254/.255 to a query through a public resolver or over its
    quota: no listing, but no verdict either. Counted clean, the list seemed to work while it
    listed no one (every query of an MX whose resolver is 8.8.8.8)."""
    counted: list[tuple[str, str]] = []
    with structlog.testing.capture_logs() as events:
        assert asyncio.run(_checks(["quota.example"], ["192.0.2.1", "192.0.2.2"], counted)) == [None, None]
    assert counted == [("quota.example", "refused")] * 2
    assert [e["event"] for e in events] == ["mail.dnsbl.query_refused"]  # once per list, not per client


def test_without_lists_the_system_resolver_configuration_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload rebuilds the lists: without any (and without `resolver`), a missing
    /etc/resolv.conf must not refuse it; with some, it is an error the service reports."""
    import dns.resolver

    def unreadable(self: object, *args: object, **kwargs: object) -> None:
        raise dns.resolver.NoResolverConfiguration("no /etc/resolv.conf")

    monkeypatch.setattr(dns.resolver.BaseResolver, "read_resolv_conf", unreadable)
    assert not Blocklists([], [], None, lambda zone, result: None).applies_to("192.0.2.1")
    with pytest.raises(dns.resolver.NoResolverConfiguration):
        Blocklists([BlocklistConfig(zone="bl.example")], [], None, lambda zone, result: None)
