"""Option 108, IPv6-only preferred (RFC 8925), with real clients: dhcpcd told to ask for it
(`option ipv6_only_preferred`, dhcpcd 9+) is offered no address and nothing is leased; udhcpc,
which does not ask, gets its address from the untouched pool beside it. An INIT-REBOOT that
asks (made by hand: a device back on a network that turned IPv6-mostly) gets an ACK with no
address. The lab is test_dhcp_clients.py's."""

from __future__ import annotations

import time
from collections.abc import Callable

from ispd.dhcp.options import DHCPMessageType, Option
from tests.integration.test_dhcp_clients import Lan, make_lan, message, replies, requested  # noqa: F401
from tests.integration.test_dhcp_relay import RelayedLan, make_relayed  # noqa: F401
from tests.lab.dhcpclients import Dhcpcd, DHCPIspd, Udhcpc, interface_addresses, set_mac

WAIT = 1800
ASKS_108 = (Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 6, 108)))


def v6only_lan(make_lan: Callable[..., Lan]) -> Lan:  # noqa: F811
    lan = make_lan()
    config = lan.ispd.config
    config["dhcp"]["subnet"][0]["ipv6_only_preferred_seconds"] = WAIT
    lan.ispd.kill()
    lan.ispd.start()
    return lan


def test_dhcpcd_asking_for_108_gets_no_address_and_udhcpc_beside_it_gets_the_first(
        make_lan: Callable[..., Lan]) -> None:  # noqa: F811
    lan = v6only_lan(make_lan)
    with Dhcpcd(lan.lab, lan.client_ns, lan.client_if, lan.workdir, extra_conf="option ipv6_only_preferred\n",
                timeout=6) as dhcpcd:
        event = dhcpcd.obtain(timeout=12)
        assert event is None or not event.bound, f"dhcpcd bound an address\n{lan.explain(dhcpcd)}"
        # dhcpcd 9 reads the option (and goes on asking rather than waiting: the OFFER has no 116).
        assert f"IPv6-Only Preferred received ({WAIT} seconds)" in dhcpcd.output(), lan.explain(dhcpcd)
        assert interface_addresses(lan.client_ns, lan.client_if) == []
    offers = lan.ispd.metric_in_netns("ispd_dhcp_ipv6_only_replies_total", {"type": "offer"})
    assert offers is not None and offers >= 1, lan.explain()
    assert lan.ispd.leases(include_ended=True) == [], "an IPv6-only offer left a lease behind"
    assert '"event": "dhcp.ipv6_only"' in lan.ispd.log_text()
    # The pool was not touched: the next client, which does not ask, gets its first address.
    set_mac(lan.client_ns, lan.client_if, "02:00:5e:12:00:02")
    with Udhcpc(lan.lab, lan.client_ns, lan.client_if, lan.workdir) as udhcpc:
        event = udhcpc.obtain()
        assert event is not None and event.bound and event.address == "198.18.0.100", lan.explain(udhcpc)
        assert event.lease_seconds == 3600
    lease = lan.ispd.lease_of("198.18.0.100")
    assert lease is not None and lease["state"] == "bound" and lease["hw_address"] == "02:00:5e:12:00:02"
    assert lan.ispd.metric_in_netns("ispd_dhcp_ipv6_only_replies_total", {"type": "offer"}) == offers


def test_an_init_reboot_that_asks_is_acked_without_an_address(make_lan: Callable[..., Lan]) -> None:  # noqa: F811
    lan = v6only_lan(make_lan)
    [ack] = replies(lan, message(DHCPMessageType.REQUEST, 0x108, requested("198.18.0.150"), ASKS_108), xid=0x108)
    assert ack.message_type is DHCPMessageType.ACK and str(ack.yiaddr) == "0.0.0.0"
    assert ack.option(Option.IPV6_ONLY_PREFERRED) == WAIT.to_bytes(4, "big")
    assert ack.option(Option.LEASE_TIME) is None
    time.sleep(0.2)
    assert lan.ispd.leases(include_ended=True) == []
    assert lan.ispd.metric_in_netns("ispd_dhcp_ipv6_only_replies_total", {"type": "ack"}) == 1
    # Without 108 in its list, the same request is confirmed as before.
    [ack] = replies(lan, message(DHCPMessageType.REQUEST, 0x109, requested("198.18.0.150"),
                                 (Option.PARAMETER_REQUEST_LIST, bytes((1, 3, 6)))), xid=0x109)
    assert str(ack.yiaddr) == "198.18.0.150" and ack.option(Option.IPV6_ONLY_PREFERRED) is None


def test_a_relayed_client_that_asks_hears_the_offer_through_the_relay(
        make_relayed: Callable[..., RelayedLan]) -> None:  # noqa: F811
    """The OFFER has no address to unicast to: through ISC dhcrelay it must still reach dhcpcd."""
    def v6only(ispd: DHCPIspd, _relay_if: str) -> None:
        ispd.config["dhcp"]["subnet"][1]["ipv6_only_preferred_seconds"] = WAIT

    lan = make_relayed(v6only)
    with Dhcpcd(lan.lab, lan.client_ns, lan.client_if, lan.workdir, extra_conf="option ipv6_only_preferred\n",
                timeout=6) as dhcpcd:
        event = dhcpcd.obtain(timeout=12)
        assert event is None or not event.bound, lan.explain(dhcpcd)
        assert f"IPv6-Only Preferred received ({WAIT} seconds)" in dhcpcd.output(), lan.explain(dhcpcd)
    assert lan.ispd.leases(include_ended=True) == []
