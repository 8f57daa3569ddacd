"""Option 108, IPv6-only preferred (RFC 8925): a client that asks for it, on a subnet or pool
that sets ipv6_only_preferred_seconds, is offered no IPv4 address and nothing is allocated;
everyone else is served as before."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from pydantic import ValidationError

from ispd.dhcp.config import DHCPConfig
from ispd.dhcp.engine import Destination
from ispd.dhcp.metrics import DHCPMetrics
from ispd.dhcp.options import DHCPMessageType, Option, decode_u32
from ispd.store.models import ReservationKind, SubscriberStatus
from tests.dhcp.test_engine import MAC_A, MAC_B, SERVER, T0, Lab, config, message, reservation

ASKS_108 = ((Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 6, 15, 108))),)
ASKS_NOT = ((Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 6, 15))),)


def v6only_config(*, subnet: dict[str, Any] | None = None, pool: dict[str, Any] | None = None,
                  **overrides: Any) -> DHCPConfig:
    subnets = config().model_dump(exclude_none=True, exclude_defaults=True)["subnet"]
    subnets[0].update(subnet or {})
    subnets[0]["pool"][0].update(pool or {})
    return config(subnet=subnets, **overrides)


def test_a_client_that_asks_is_offered_no_address_and_nothing_is_allocated() -> None:
    lab = Lab(v6only_config(subnet={"ipv6_only_preferred_seconds": 1800}))
    outcome = lab.send(message(DHCPMessageType.DISCOVER, extra=ASKS_108))
    assert outcome.reply is not None and outcome.ignored is None
    packet = outcome.reply.packet
    assert packet.message_type is DHCPMessageType.OFFER
    assert packet.yiaddr == IPv4Address("0.0.0.0")
    assert packet.option(Option.IPV6_ONLY_PREFERRED) == (1800).to_bytes(4, "big")
    assert packet.option(Option.SERVER_ID) == SERVER.packed
    assert packet.option(Option.LEASE_TIME) is None  # nothing is leased
    assert outcome.reply.destination is Destination.BROADCAST  # no address to send it to
    assert outcome.ipv6_only == 1800
    assert not outcome.writes and not outcome.events
    assert not lab.engine.table.by_address  # no offer held: the pool is as it was
    # The next client, which does not ask, gets the pool's first address as if nothing happened.
    other = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, extra=ASKS_NOT))
    assert other.reply is not None and other.reply.packet.yiaddr == IPv4Address("198.18.0.100")
    assert other.reply.packet.option(Option.IPV6_ONLY_PREFERRED) is None and other.ipv6_only is None


def test_clients_that_do_not_ask_are_served_as_before() -> None:
    lab = Lab(v6only_config(subnet={"ipv6_only_preferred_seconds": 1800}))
    for extra in (ASKS_NOT, ()):  # a list without 108, or no list at all (everything is sent)
        offer = lab.send(message(DHCPMessageType.DISCOVER, extra=extra))
        assert offer.reply is not None and offer.reply.packet.yiaddr == IPv4Address("198.18.0.100")
        assert offer.reply.packet.option(Option.IPV6_ONLY_PREFERRED) is None  # RFC 8925 §3.3 MUST NOT
        assert decode_u32(offer.reply.packet.option(Option.LEASE_TIME) or b"") == 3600
    assert lab.dora(extra=ASKS_NOT) == IPv4Address("198.18.0.100")


def test_the_pool_s_setting_replaces_the_subnet_s_and_other_subnets_are_untouched() -> None:
    lab = Lab(v6only_config(subnet={"ipv6_only_preferred_seconds": 1800}, pool={"ipv6_only_preferred_seconds": 600}))
    offer = lab.send(message(DHCPMessageType.DISCOVER, extra=ASKS_108)).reply
    assert offer is not None and offer.packet.option(Option.IPV6_ONLY_PREFERRED) == (600).to_bytes(4, "big")
    relayed = lab.send(message(DHCPMessageType.DISCOVER, giaddr="198.18.1.1", extra=ASKS_108)).reply
    assert relayed is not None and relayed.packet.yiaddr == IPv4Address("198.18.1.100")
    assert relayed.packet.option(Option.IPV6_ONLY_PREFERRED) is None
    # 0 on the pool turns the subnet's off there.
    lab = Lab(v6only_config(subnet={"ipv6_only_preferred_seconds": 1800}, pool={"ipv6_only_preferred_seconds": 0}))
    offer = lab.send(message(DHCPMessageType.DISCOVER, extra=ASKS_108)).reply
    assert offer is not None and offer.packet.yiaddr == IPv4Address("198.18.0.100")
    assert offer.packet.option(Option.IPV6_ONLY_PREFERRED) is None
    # Set on the pool alone: its clients that ask get it.
    lab = Lab(v6only_config(pool={"ipv6_only_preferred_seconds": 300}))
    offer = lab.send(message(DHCPMessageType.DISCOVER, extra=ASKS_108)).reply
    assert offer is not None and offer.packet.yiaddr == IPv4Address("0.0.0.0")


def test_a_client_with_a_reserved_address_gets_it_even_when_it_asks() -> None:
    """From a review: a business line's router with its static IPv4 reserved, asking for option
    108 as any recent router does, was offered no address and lost its IPv4; the reservation is
    what the operator fixed for it."""
    lab = Lab(v6only_config(subnet={"ipv6_only_preferred_seconds": 1800}))
    lab.engine.load([], [reservation(ReservationKind.MAC, "02:00:5e:10:00:01", address="198.18.0.150")],
                    {7: SubscriberStatus.ACTIVE})
    offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_A, extra=ASKS_108))
    assert offer.reply is not None and offer.reply.packet.yiaddr == IPv4Address("198.18.0.150"), offer
    assert offer.ipv6_only is None and offer.reply.packet.option(Option.IPV6_ONLY_PREFERRED) is None
    other = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, extra=ASKS_108))  # no reservation
    assert other.reply is not None and other.reply.packet.yiaddr == IPv4Address("0.0.0.0")


def test_rapid_commit_is_not_honoured_for_an_ipv6_only_client() -> None:
    """RFC 8925 §3.3: an OFFER with option 108, not an ACK that commits a lease."""
    lab = Lab(v6only_config(subnet={"ipv6_only_preferred_seconds": 1800}, rapid_commit=True))
    outcome = lab.send(message(DHCPMessageType.DISCOVER, extra=((Option.RAPID_COMMIT, b""), *ASKS_108)))
    assert outcome.reply is not None and outcome.reply.packet.message_type is DHCPMessageType.OFFER
    assert outcome.reply.packet.option(Option.RAPID_COMMIT) is None
    assert outcome.reply.packet.yiaddr == IPv4Address("0.0.0.0") and not outcome.writes


def test_an_init_reboot_request_gets_an_ack_without_a_lease_and_a_renewal_keeps_its_address() -> None:
    lab = Lab(config())
    address = lab.dora(extra=ASKS_108)  # granted before the subnet became IPv6-mostly
    lab.engine.reconfigure(v6only_config(subnet={"ipv6_only_preferred_seconds": 1800}))
    # INIT-REBOOT (RFC 8925 §3.2: the client stops DHCPv4 on an ACK with option 108): nothing leased.
    reboot = lab.send(message(DHCPMessageType.REQUEST, requested=str(address), extra=ASKS_108))
    assert reboot.reply is not None and reboot.reply.packet.message_type is DHCPMessageType.ACK
    assert reboot.reply.packet.yiaddr == IPv4Address("0.0.0.0")
    assert reboot.reply.packet.option(Option.IPV6_ONLY_PREFERRED) == (1800).to_bytes(4, "big")
    assert reboot.reply.packet.option(Option.LEASE_TIME) is None and not reboot.writes
    # RENEWING (§3.2: the client ignores the option and keeps its address): renewed, option sent.
    lab.now = T0 + 1800
    renew = lab.send(message(DHCPMessageType.REQUEST, ciaddr=str(address), extra=ASKS_108), source=address,
                     destination=SERVER)
    assert renew.reply is not None and renew.reply.packet.yiaddr == address
    assert renew.reply.packet.option(Option.IPV6_ONLY_PREFERRED) == (1800).to_bytes(4, "big")
    [(lease, event)] = renew.writes
    assert (lease.address, event) == (str(address), "renewed")
    # A client that does not ask reboots into its address as before.
    other = Lab(v6only_config(subnet={"ipv6_only_preferred_seconds": 1800}))
    ack = other.send(message(DHCPMessageType.REQUEST, MAC_B, requested="198.18.0.101", extra=ASKS_NOT)).reply
    assert ack is not None and ack.packet.yiaddr == IPv4Address("198.18.0.101")


def test_option_108_by_code_is_served_the_same_way_and_a_client_class_may_set_it() -> None:
    raw = {"option": [{"code": 108, "uint32": 900}]}
    lab = Lab(v6only_config(pool=raw))
    offer = lab.send(message(DHCPMessageType.DISCOVER, extra=ASKS_108))
    assert offer.reply is not None and offer.reply.packet.yiaddr == IPv4Address("0.0.0.0") and offer.ipv6_only == 900
    assert lab.send(message(DHCPMessageType.DISCOVER, MAC_B, extra=ASKS_NOT)).reply.packet.yiaddr \
        == IPv4Address("198.18.0.100")
    classes = [{"name": "phones", "mac_prefix": ["02:00:5e:10:00:01"], "option": [{"code": 108, "uint32": 1200}]}]
    lab = Lab(config(client_class=classes))
    offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_A, extra=ASKS_108))
    assert offer.reply is not None and offer.reply.packet.yiaddr == IPv4Address("0.0.0.0") and offer.ipv6_only == 1200
    other = lab.send(message(DHCPMessageType.DISCOVER, MAC_B, extra=ASKS_108))  # not a member
    assert other.reply is not None and other.reply.packet.yiaddr == IPv4Address("198.18.0.100")


@pytest.mark.parametrize(("where", "value", "expected"), [
    ("subnet", {"ipv6_only_preferred_seconds": 299}, "at least 300 seconds"),
    ("pool", {"ipv6_only_preferred_seconds": 1}, "or 0 to turn it off here"),
    ("pool", {"ipv6_only_preferred_seconds": -1}, "greater than or equal to 0"),
    ("pool", {"ipv6_only_preferred_seconds": 2**32}, "less than or equal to 4294967295"),
    ("pool", {"ipv6_only_preferred_seconds": 600, "option": [{"code": 108, "uint32": 600}]}, "same option"),
])
def test_check_config_refuses_what_clients_would_not_take(where: str, value: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        v6only_config(**{where: value})


@pytest.mark.parametrize(("option", "expected"), [
    ({"code": 108, "uint16": 600}, "is 4 bytes"),
    ({"code": 108, "uint32": 600, "always_send": True}, "always_send is not heeded"),
])
def test_an_option_108_by_code_that_ran_before_is_warned_of_not_refused(option: dict[str, Any], expected: str) -> None:
    """Option 108 given by code was sent as given before ispd knew it: a config that ran must
    still start (docs/DESIGN.md), with the harm taken out: no IPv6-only answer from a wrong
    length, and never sent unasked whatever always_send says (RFC 8925 §3.3)."""
    config = v6only_config(subnet={"option": [option]})
    [warning] = [w for w in config.warnings() if w.event == "dhcp.option.ipv6_only_preferred"]
    assert expected in warning.detail, warning
    lab = Lab(config)
    unasked = lab.send(message(DHCPMessageType.DISCOVER, MAC_A, extra=ASKS_NOT))
    assert unasked.reply is not None and unasked.reply.packet.option(Option.IPV6_ONLY_PREFERRED) is None
    assert unasked.reply.packet.yiaddr == IPv4Address("198.18.0.100")


def test_the_metric_is_there_from_the_start() -> None:
    metrics = DHCPMetrics()
    assert metrics.ipv6_only.get("offer") == 0 and metrics.ipv6_only.get("ack") == 0
