"""Who the walled garden holds, and which changes move anyone in or out of it."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

from ispd.dns.config import WalledGardenConfig
from ispd.dns.walledgarden import WalledGarden
from ispd.dns.wire import RCode, RRType, name_from_text

PORTAL = WalledGardenConfig(portal_ipv4=IPv4Address("198.18.0.10"), allow=["portal.isp.test"])


def test_only_changes_that_move_an_address_report_a_change() -> None:
    garden = WalledGarden(PORTAL)
    assert garden.lease_granted("198.18.0.5", 7) is False  # subscriber 7 is active
    assert garden.lease_granted("198.18.0.6", None) is False
    assert garden.set_suspended(7, True) is True
    assert garden.walled_addresses() == {"198.18.0.5"}
    assert garden.set_suspended(7, True) is False  # already suspended
    assert garden.set_suspended(8, True) is False  # holds no address
    assert garden.lease_granted("198.18.0.5", 7) is False  # a renewal
    assert garden.lease_granted("198.18.0.9", 8) is True  # a suspended subscriber's new lease
    assert garden.lease_ended("198.18.0.9") is True
    assert garden.lease_ended("198.18.0.6") is False
    assert garden.lease_granted("198.18.0.5", 9) is True  # the address went to someone else
    assert garden.walled_addresses() == frozenset()
    assert garden.set_suspended(7, False) is False


def test_a_sessions_ipv6_networks_hold_every_address_in_them_the_longest_prefix_first() -> None:
    garden = WalledGarden(PORTAL)
    assert garden.network_granted("2001:db8:100::/56", 7) is False  # 7 is active
    assert garden.network_granted("2001:DB8:100:5::/64", 8) is False  # a longer prefix inside it
    assert garden.network_granted("not a network", 7) is False and garden.network_granted("198.18.0.0/24", 7) is False
    assert [garden.holder(a) for a in ("2001:db8:100:7::1", "2001:db8:100:5::1", "2001:db8:101::1", "198.18.0.1",
                                       "junk")] == [7, 8, None, None, None]
    assert garden.set_suspended(8, True) is True
    assert garden.walled_networks() == (IPv6Network("2001:db8:100:5::/64"),)
    assert garden.is_walled("2001:db8:100:5::1") and not garden.is_walled("2001:db8:100:7::1")
    assert garden.is_walled("2001:db8:100:5::/64")  # (the network itself, as subscriber show asks)
    assert garden.addresses_of(8) == ["2001:db8:100:5::/64"]
    assert garden.network_ended("2001:db8:100:5::/64") is True
    assert garden.network_ended("2001:db8:100:5::/64") is False  # (once)
    assert garden.holder("2001:db8:100:5::1") == 7 and garden.walled_networks() == ()


def test_a_network_shorter_than_a_32_walls_no_one() -> None:
    """A NAS that reports Delegated-IPv6-Prefix ::/0 (or 2000::/3) for a suspended subscriber
    must not send every other IPv6 client to the portal: such a prefix holds nobody, as for
    ``ispd who``."""
    garden = WalledGarden(PORTAL)
    garden.set_suspended(7, True)
    for network in ("::/0", "2000::/3", "2001:d00::/24"):
        assert garden.network_granted(network, 7, session_id=1) is False
    assert garden.network_granted("2001:db8::/32", 8) is False  # a /32 still holds (8 is active)
    assert [garden.holder(a) for a in ("::1", "2001:db9::5", "2001:db8:1::5")] == [None, None, 8]
    assert not garden.is_walled("::1") and not garden.is_walled("2001:db9::5")
    assert garden.walled_networks() == ()
    assert garden.network_ended("::/0", 1) is False


def test_without_a_portal_nobody_is_walled() -> None:
    garden = WalledGarden(WalledGardenConfig())
    garden.set_suspended(7, True)
    assert garden.lease_granted("198.18.0.5", 7) is False
    assert garden.walled_addresses() == frozenset()
    assert garden.lookup(name_from_text("example.test"), RRType.A) is None


def test_walled_answers_and_the_allow_list() -> None:
    garden = WalledGarden(PORTAL)
    answer = garden.lookup(name_from_text("www.example.test"), RRType.A)
    assert answer is not None and answer.rcode == RCode.NOERROR
    assert [rr.rdata for rr in answer.answer] == [IPv4Address("198.18.0.10").packed]
    nodata = garden.lookup(name_from_text("www.example.test"), RRType.AAAA)
    assert nodata is not None and nodata.answer == []
    assert garden.lookup(name_from_text("pay.portal.isp.test"), RRType.A) is None


def test_a_sessions_end_leaves_its_network_to_the_session_that_holds_it_now() -> None:
    """A subscriber who reconnects gets the same Delegated-IPv6-Prefix in a new session; the old
    session's Stop (late, or ispd closing it as stale) took the prefix from the new one, and a
    suspended subscriber's devices asked over IPv6 round the walled garden from then on."""
    garden = WalledGarden(PORTAL)
    garden.set_suspended(7, True)
    assert garden.network_granted("2001:db8:100::/56", 7, session_id=1) is True
    assert garden.network_granted("2001:db8:100::/56", 7, session_id=2) is False  # the reconnect
    assert garden.network_ended("2001:db8:100::/56", session_id=1) is False
    assert garden.is_walled("2001:db8:100::5") and garden.walled_networks() == (IPv6Network("2001:db8:100::/56"),)
    assert garden.network_granted("2001:db8:100::/56", 8, session_id=3) is True  # given to another
    assert garden.network_ended("2001:db8:100::/56", session_id=2) is False and garden.holder("2001:db8:100::5") == 8
    assert garden.network_ended("2001:db8:100::/56", session_id=3) is False  # (8 is not suspended)
    assert garden.holder("2001:db8:100::5") is None


def test_a_sessions_end_leaves_its_address_to_the_session_that_holds_it_now() -> None:
    """The same for a session's Framed-IP-Address (a static address, the same at each reconnect);
    a DHCP lease's end takes nothing from a session (there was no lease)."""
    garden = WalledGarden(PORTAL)
    garden.set_suspended(7, True)
    assert garden.lease_granted("198.18.0.62", 7, session_id=1) is True
    assert garden.lease_granted("198.18.0.62", 7, session_id=2) is False  # the reconnect
    assert garden.lease_ended("198.18.0.62", session_id=1) is False  # the old session closed late
    assert garden.walled_addresses() == {"198.18.0.62"}
    assert garden.lease_ended("198.18.0.62", session_id=2) is True
    assert garden.lease_granted("198.18.0.62", 7, session_id=3) is True
    assert garden.lease_ended("198.18.0.62") is False and garden.walled_addresses() == {"198.18.0.62"}


def test_an_address_held_by_a_dhcp_lease_and_a_session_stays_held_until_both_end() -> None:
    """A subscriber's static address in its DHCP lease (IPoE) and in its RADIUS session (the BNG
    accounts for it): the end of one left the address to no one, and a suspended subscriber's
    devices went round the walled garden for the rest of the other."""
    garden = WalledGarden(PORTAL)
    garden.set_suspended(7, True)
    assert garden.lease_granted("198.18.0.63", 7, session_id=1) is True
    assert garden.lease_granted("198.18.0.63", 7) is False  # DHCP: the lease
    assert garden.lease_ended("198.18.0.63") is False  # the lease released; the session goes on
    assert garden.walled_addresses() == {"198.18.0.63"}
    assert garden.lease_granted("198.18.0.63", 7) is False
    assert garden.lease_ended("198.18.0.63", session_id=1) is False  # the session ends; the lease goes on
    assert garden.walled_addresses() == {"198.18.0.63"}
    assert garden.lease_ended("198.18.0.63") is True and garden.walled_addresses() == set()
    # Held by two subscribers (a stale record): the latest grant says who; its end hands back.
    garden.lease_granted("198.18.0.64", 8, session_id=2)
    garden.lease_granted("198.18.0.64", 7)
    assert garden.walled_addresses() == {"198.18.0.64"}
    assert garden.lease_ended("198.18.0.64") is True and garden.holder("198.18.0.64") == 8


def test_a_radius_pool_s_hold_goes_with_the_session_that_has_the_address() -> None:
    """The pool's grant at the Access-Accept, then the session: the session's end (the pool's
    hold is released with it) leaves nothing behind; a renewal of the hold keeps the session's."""
    garden = WalledGarden(PORTAL)
    garden.set_suspended(7, True)
    assert garden.lease_granted("192.168.1.40", 7, radius_pool=True) is True
    assert garden.lease_granted("192.168.1.40", 7, session_id=1) is False
    assert garden.lease_granted("192.168.1.40", 7, radius_pool=True) is False  # a renewal of the hold
    assert garden.lease_ended("192.168.1.40", session_id=1) is True
    assert garden.lease_ended("192.168.1.40", radius_pool=True) is False  # (released: nothing left)
    assert garden.walled_addresses() == set()


def test_a_dhcp_lease_ends_a_pool_s_hold_that_lapsed_unannounced() -> None:
    """A pool shared by DHCP and RADIUS: a login's hold whose session never started lapses in
    the store without an event, and DHCP gives the address to another. The store keeps one
    lease per address, so the DHCP lease ended the hold: the lease's end gave the address back
    to the suspended subscriber of the lapsed hold (and the other way round)."""
    garden = WalledGarden(PORTAL)
    garden.set_suspended(7, True)
    assert garden.lease_granted("192.168.1.50", 7, radius_pool=True) is True
    assert garden.lease_granted("192.168.1.50", 8) is True  # DHCP, once the hold lapsed
    assert garden.lease_ended("192.168.1.50") is False
    assert garden.holder("192.168.1.50") is None and garden.walled_addresses() == set()
    garden.lease_granted("192.168.1.51", 7)  # the other way: a DHCP lease lapsed, the pool gives it
    garden.lease_granted("192.168.1.51", 8, radius_pool=True)
    assert garden.lease_ended("192.168.1.51", radius_pool=True) is False
    assert garden.holder("192.168.1.51") is None


def test_a_no_subscriber_sessions_prefix_inside_a_suspended_subscribers_is_not_walled() -> None:
    """A login that is no subscriber (a roaming partner's user) holds its networks too (c6fb2b0),
    as a subscriber's longer prefix inside another's does; but a network held by nobody counted
    as no network at all, so its devices went to the suspended holder of a prefix around it."""
    garden = WalledGarden(PORTAL)
    garden.set_suspended(7, True)
    garden.network_granted("2001:db8:100::/48", 7, 1)  # (its session not closed yet: stale)
    garden.network_granted("2001:db8:100:5::/64", 8, 2)
    garden.network_granted("2001:db8:100:6::/64", None, 3)
    assert garden.in_walled_network(IPv6Address("2001:db8:100:7::1"))
    assert not garden.in_walled_network(IPv6Address("2001:db8:100:5::1"))  # (an active subscriber's)
    assert not garden.in_walled_network(IPv6Address("2001:db8:100:6::1"))
    assert garden.holder("2001:db8:100:6::1") is None and garden.network_holder("2001:db8:100:6::/64") is None
    garden.network_ended("2001:db8:100:6::/64", 3)
    assert garden.in_walled_network(IPv6Address("2001:db8:100:6::1"))


def test_the_end_of_a_no_subscriber_session_leaves_the_dhcpv6_bindings_prefix_it_did_not_take() -> None:
    """A session of no subscriber is refused a prefix a DHCPv6 binding holds (c6fb2b0: the
    binding's subscriber keeps it, as a DHCP lease's address); but its end took the prefix from
    the binding all the same: a suspended subscriber's home left the walled garden."""
    garden = WalledGarden(PORTAL)
    garden.set_suspended(7, True)
    garden.network_granted("2001:db8:100::/56", 7)  # its DHCPv6 binding (IA_PD)
    assert not garden.network_granted("2001:db8:100::/56", None, 3)
    assert garden.in_walled_network(IPv6Address("2001:db8:100:7::1"))
    assert not garden.network_ended("2001:db8:100::/56", 3)
    assert garden.network_holder("2001:db8:100::/56") == 7
    assert garden.in_walled_network(IPv6Address("2001:db8:100:7::1"))
