"""The DNS service's part in policy zones limited to some plans: who holds which address and on
which plan, from the bus, told to the engine (``DNSService._client_view``) without the service
started (no sockets: an engine of ``tests.dns.test_engine`` takes the place of its own)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from ipaddress import ip_network
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ispd.config import Config
from ispd.dns.cache import VARIANT_SCOPES
from ispd.dns.engine import ClientClass
from ispd.dns.localdata import LocalData
from ispd.dns.scopes import PolicyScopes
from ispd.dns.service import DNSService
from ispd.dns.wire import RRType, name_from_text
from ispd.events import (
    Binding6Ended,
    Binding6Granted,
    EventBus,
    LeaseEnded,
    LeaseGranted,
    SessionStarted,
    SessionStopped,
    SubscriberPlanChanged,
    SubscriberResumed,
    SubscriberSuspended,
)
from ispd.service import ServiceContext
from ispd.store.models import (
    Lease,
    Lease6,
    Lease6Kind,
    LeaseService,
    LeaseState,
    Plan,
    RadiusSession,
    Subscriber,
    SubscriberStatus,
)
from tests.dns.test_engine import make_env

FAMILY = VARIANT_SCOPES[0]
ANN, BOB = 10, 11  # on the family plan, on the basic plan
OTHERS = ["192.168.1.20", "192.168.1.21", "::ffff:192.168.1.22"]  # plain clients, asking all along


async def _healthy() -> tuple[bool, dict[str, Any]]:
    return True, {}


@pytest.fixture
async def service() -> AsyncIterator[DNSService]:
    config = Config.model_validate({"dns": {"enabled": True, "listen": ["127.61.0.1:0"], "policy_zone": [
        {"name": "family.rpz", "file": "/etc/ispd/family.rpz", "plans": ["family"]}],
        "walled_garden": {"portal_ipv4": "198.18.0.10"}}})
    service = DNSService(config, ServiceContext(None, EventBus(), CollectorRegistry(), _healthy))  # type: ignore[arg-type]
    service.engine = make_env().engine
    service.engine.client_view = service._client_view
    service.scopes = PolicyScopes(config.dns.policy_zone)
    service.plans.load([Plan(1, "basic"), Plan(2, "family")],
                       [Subscriber(ANN, "ann", SubscriberStatus.ACTIVE, plan_id=2),
                        Subscriber(BOB, "bob", SubscriberStatus.ACTIVE, plan_id=1)])
    async with AsyncExitStack() as stack:
        service._subscribe(stack)
        yield service


def known(service: DNSService) -> list[str]:
    """The clients among OTHERS whose class the engine still knows (the fast path serves them)."""
    assert service.engine is not None
    return [client for client in OTHERS if client in service.engine._classes]


def view(service: DNSService, client: str) -> int:
    assert service.engine is not None
    service.engine.client_class(client)
    return service.engine.view_of(client)


async def test_a_change_of_one_address_s_plan_makes_the_engine_find_that_address_again_only(
        service: DNSService) -> None:
    """Every new DHCP lease, lease end and PPPoE session of a subscriber on a plan with limited
    zones changes that address's view: forgetting every client's class for it sent all clients
    to the slow path, again and again under a busy access network's churn."""
    bus = service.context.bus
    for client in OTHERS:
        assert view(service, client) == 0
    ann_address, bob_address = "192.168.1.30", "192.168.1.31"
    for address in (ann_address, "::ffff:" + ann_address, bob_address):
        assert view(service, address) == 0  # nobody's yet

    bus.publish(LeaseGranted(1.0, ann_address, 4000.0, subscriber_id=ANN))
    bus.publish(SessionStarted(1.0, 1, "198.18.0.2", "s1", "bob", subscriber_id=BOB, framed_ip=bob_address))
    assert known(service) == OTHERS
    assert view(service, ann_address) == view(service, "::ffff:" + ann_address) == FAMILY
    assert view(service, bob_address) == 0

    bus.publish(SubscriberPlanChanged(2.0, BOB, "bob", plan_id=2))
    assert known(service) == OTHERS
    assert view(service, bob_address) == FAMILY

    bus.publish(LeaseEnded(3.0, ann_address, "released", subscriber_id=ANN))
    assert known(service) == OTHERS
    assert view(service, ann_address) == view(service, "::ffff:" + ann_address) == 0


async def test_a_sessions_ipv6_prefixes_bring_its_homes_devices_under_the_plan_and_the_walled_garden(
        service: DNSService) -> None:
    """A dual-stack home's devices take their IPv6 addresses in its Delegated-IPv6-Prefix, which
    no event names one by one: they were neither filtered by their subscriber's plan nor walled
    while the subscriber was suspended (asking over IPv6 went round the walled garden)."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32")])
    bus = service.context.bus
    ann_device, bob_device, stranger = "2001:db8:100:7:a::5", "2001:db8:200::9", "2001:db8:101::5"
    bus.publish(SessionStarted(1.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN,
                               ipv6_networks="2001:db8:1::/64,2001:db8:100::/56"))
    bus.publish(SessionStarted(1.0, 2, "198.18.0.2", "s2", "bob", subscriber_id=BOB,
                               ipv6_networks="2001:db8:200::/56,2001:db8:2::7/128"))
    assert view(service, ann_device) == view(service, "2001:db8:1::1") == FAMILY
    assert view(service, stranger) == view(service, bob_device) == 0
    bus.publish(SubscriberSuspended(2.0, BOB, "bob"))
    assert service.engine.client_class(bob_device) == service.engine.client_class("2001:db8:2::7") == ClientClass.WALLED
    assert service.engine.client_class(ann_device) == ClientClass.ALLOWED
    shown = await service._command_walled_show({"subscriber_id": BOB})
    assert shown["addresses"] == shown["walled"] == ["2001:db8:200::/56", "2001:db8:2::7/128"]
    assert (await service._command_walled_show({"subscriber_id": ANN}))["policy_zones"] == {
        "2001:db8:1::/64": ["family.rpz."], "2001:db8:100::/56": ["family.rpz."]}
    bus.publish(SessionStopped(3.0, 2, "198.18.0.2", "s2", "bob", subscriber_id=BOB,
                               ipv6_networks="2001:db8:200::/56,2001:db8:2::7/128"))
    bus.publish(SessionStopped(3.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN,
                               ipv6_networks="2001:db8:1::/64,2001:db8:100::/56"))
    assert service.engine.client_class(bob_device) == ClientClass.ALLOWED
    assert view(service, ann_device) == 0


async def test_a_stale_sessions_end_leaves_the_prefix_to_the_session_that_has_it_now(service: DNSService) -> None:
    """ann reconnects and her new session gets the same prefix; the old one, closed later (its
    Stop late, or ispd closing it as stale), took the prefix with it: her devices went round the
    walled garden over IPv6, though suspended."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32")])
    bus, device = service.context.bus, "2001:db8:100:7:a::5"
    bus.publish(SubscriberSuspended(1.0, ANN, "ann"))
    bus.publish(SessionStarted(1.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, ipv6_networks="2001:db8:100::/56"))
    bus.publish(SessionStarted(2.0, 2, "198.18.0.2", "s2", "ann", subscriber_id=ANN, ipv6_networks="2001:db8:100::/56"))
    bus.publish(SessionStopped(3.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN,
                               ipv6_networks="2001:db8:100::/56", cause="Stale-Session"))
    assert service.engine.client_class(device) == ClientClass.WALLED
    bus.publish(SessionStopped(4.0, 2, "198.18.0.2", "s2", "ann", subscriber_id=ANN, ipv6_networks="2001:db8:100::/56"))
    assert service.engine.client_class(device) == ClientClass.ALLOWED


async def test_a_longer_prefix_of_an_active_subscriber_inside_a_suspended_ones_is_not_walled(
        service: DNSService) -> None:
    """The holder of an address in two sessions' prefixes is the longer prefix's (as the plan
    view has it); the walled garden took any suspended subscriber's prefix that contained it."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32")])
    bus = service.context.bus
    bus.publish(SessionStarted(1.0, 1, "198.18.0.2", "s1", "bob", subscriber_id=BOB, ipv6_networks="2001:db8:100::/48"))
    bus.publish(SessionStarted(1.0, 2, "198.18.0.2", "s2", "ann", subscriber_id=ANN, ipv6_networks="2001:db8:100:5::/64"))
    bus.publish(SubscriberSuspended(2.0, BOB, "bob"))
    assert service.engine.client_class("2001:db8:100:7::1") == ClientClass.WALLED
    assert service.engine.client_class("2001:db8:100:5::1") == ClientClass.ALLOWED
    assert view(service, "2001:db8:100:5::1") == FAMILY


async def test_a_prefix_that_comes_or_goes_inside_anothers_moves_its_clients(service: DNSService) -> None:
    """A prefix granted inside a suspended subscriber's (or ended there, or inside a family
    plan's) changes its clients' holder: the change looked at the prefix alone and left the
    engine's classes and views of those clients as they were."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32")])
    bus, device = service.context.bus, "2001:db8:100:5::1"
    bus.publish(SessionStarted(1.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, ipv6_networks="2001:db8:100::/48"))
    bus.publish(SubscriberSuspended(1.0, ANN, "ann"))
    assert service.engine.client_class(device) == ClientClass.WALLED and view(service, device) == FAMILY
    bus.publish(SessionStarted(2.0, 2, "198.18.0.2", "s2", "bob", subscriber_id=BOB, ipv6_networks="2001:db8:100:5::/64"))
    assert service.engine.client_class(device) == ClientClass.ALLOWED and view(service, device) == 0
    bus.publish(SessionStopped(3.0, 2, "198.18.0.2", "s2", "bob", subscriber_id=BOB, ipv6_networks="2001:db8:100:5::/64"))
    assert service.engine.client_class(device) == ClientClass.WALLED and view(service, device) == FAMILY


async def test_a_radius_pools_renewal_leaves_the_address_to_the_session_in_it(service: DNSService) -> None:
    """A pool's address comes with a LeaseGranted of the RADIUS service at the Access-Accept and
    at each renewal of its hold: it forgot the session the address was in, and the stale
    session's end (ann reconnected and got the same address) took it from the new one."""
    assert service.engine is not None
    bus, address = service.context.bus, "192.168.1.40"
    bus.publish(SubscriberSuspended(1.0, ANN, "ann"))
    bus.publish(SessionStarted(1.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, framed_ip=address))
    bus.publish(LeaseGranted(2.0, address, 4000.0, subscriber_id=ANN, service=LeaseService.RADIUS, renewal=True))
    bus.publish(SessionStarted(2.0, 2, "198.18.0.2", "s2", "ann", subscriber_id=ANN, framed_ip=address))
    bus.publish(LeaseGranted(3.0, address, 5000.0, subscriber_id=ANN, service=LeaseService.RADIUS, renewal=True))
    bus.publish(SessionStopped(4.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, framed_ip=address,
                               cause="Stale-Session"))
    assert service.engine.client_class(address) == ClientClass.WALLED
    bus.publish(SessionStopped(5.0, 2, "198.18.0.2", "s2", "ann", subscriber_id=ANN, framed_ip=address))
    assert service.engine.client_class(address) == ClientClass.ALLOWED


async def test_a_dhcp_lease_s_end_leaves_the_address_to_the_session_that_has_it_too(service: DNSService) -> None:
    """IPoE with RADIUS accounting: the subscriber's address is in its DHCP lease and in its
    session. The lease's release took it out of the walled garden for the rest of the session."""
    assert service.engine is not None
    bus, address = service.context.bus, "192.168.1.77"
    bus.publish(SubscriberSuspended(1.0, ANN, "ann"))
    bus.publish(LeaseGranted(1.0, address, 4000.0, subscriber_id=ANN))
    bus.publish(SessionStarted(1.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, framed_ip=address))
    bus.publish(LeaseEnded(2.0, address, "released", subscriber_id=ANN))
    assert service.engine.client_class(address) == ClientClass.WALLED
    bus.publish(SessionStopped(3.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, framed_ip=address))
    assert service.engine.client_class(address) == ClientClass.ALLOWED


async def test_a_session_of_a_login_that_is_no_subscriber_takes_the_address_from_the_previous_holder(
        service: DNSService) -> None:
    """The NAS gave ann's address and prefix to a roaming partner's user (proxied: no subscriber
    here) before ann's session was closed as stale: the guest got ann's family filter, and her
    walled garden while she was suspended, until then."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32"), ip_network("192.168.1.0/24")])
    bus, address, device, prefix = service.context.bus, "192.168.1.45", "2001:db8:100:7::5", "2001:db8:100::/56"
    bus.publish(SessionStarted(1.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, framed_ip=address,
                               ipv6_networks=prefix))
    assert view(service, address) == view(service, device) == FAMILY
    bus.publish(SubscriberSuspended(2.0, ANN, "ann"))
    assert service.engine.client_class(address) == service.engine.client_class(device) == ClientClass.WALLED
    bus.publish(SessionStarted(3.0, 2, "198.18.0.2", "g1", "guest@partner.example", framed_ip=address,
                               ipv6_networks=prefix))
    assert service.engine.client_class(address) == service.engine.client_class(device) == ClientClass.ALLOWED
    assert view(service, address) == view(service, device) == 0
    # ann's stale session closed late: the guest's session keeps them.
    bus.publish(SessionStopped(4.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, framed_ip=address,
                               ipv6_networks=prefix, cause="Stale-Session"))
    assert service.engine.client_class(address) == service.engine.client_class(device) == ClientClass.ALLOWED
    bus.publish(SessionStopped(5.0, 2, "198.18.0.2", "g1", "guest@partner.example", framed_ip=address,
                               ipv6_networks=prefix))
    assert service.walled.holder(address) is None and not service.walled.network_holders
    assert not service.walled._networks and view(service, device) == 0


async def test_a_session_of_no_subscriber_leaves_a_lease_s_address_to_the_lease_s_subscriber(
        service: DNSService) -> None:
    """IPoE: the BNG accounts the device ispd leased an address (and a prefix) to under a login
    that is no subscriber here (its MAC, say): the lease names the subscriber, who keeps them."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32"), ip_network("192.168.1.0/24")])
    bus, address, device, prefix = service.context.bus, "192.168.1.47", "2001:db8:100:7::5", "2001:db8:100::/56"
    bus.publish(LeaseGranted(1.0, address, 4000.0, subscriber_id=ANN))
    bus.publish(Binding6Granted(1.0, prefix, "pd", 4000.0, subscriber_id=ANN))
    bus.publish(SessionStarted(2.0, 1, "198.18.0.2", "s1", "02:00:5e:00:00:01", framed_ip=address,
                               ipv6_networks=prefix))
    assert view(service, address) == view(service, device) == FAMILY
    bus.publish(LeaseGranted(3.0, address, 5000.0, subscriber_id=ANN, renewal=True))
    assert view(service, address) == FAMILY


async def test_at_start_a_session_of_no_subscriber_holds_its_address_as_while_running(service: DNSService) -> None:
    """(The same read from the store at a start or reload.)"""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32"), ip_network("192.168.1.0/24")])
    address, device = "192.168.1.46", "2001:db8:100:7::5"
    sessions = [RadiusSession(1, "198.18.0.2", "s1", "ann", 1.0, 1.0, subscriber_id=ANN, framed_ip=address,
                              delegated_ipv6_prefix="2001:db8:100::/56"),
                RadiusSession(2, "198.18.0.2", "g1", "guest@partner.example", 2.0, 2.0, framed_ip=address,
                              delegated_ipv6_prefix="2001:db8:100::/56")]
    service.context.store = _Store(sessions)  # type: ignore[assignment]
    await service._load_subscribers()  # (ann is suspended in that store)
    assert service.engine.client_class(address) == service.engine.client_class(device) == ClientClass.ALLOWED
    assert view(service, address) == view(service, device) == 0


class _Store:
    """What ``DNSService._load_subscribers`` reads, as the SQLite store gives it (sessions newest first)."""

    def __init__(self, sessions: list[RadiusSession]) -> None:
        self.sessions = sessions

    async def list_leases(self) -> list[Any]:
        return []

    async def list_leases6(self) -> list[Any]:
        return []

    async def list_subscribers(self, status: SubscriberStatus | None = None) -> list[Subscriber]:
        ann = Subscriber(ANN, "ann", SubscriberStatus.SUSPENDED, plan_id=2)
        return [ann] if status in (None, SubscriberStatus.SUSPENDED) else []

    async def list_plans(self) -> list[Plan]:
        return [Plan(1, "basic"), Plan(2, "family")]

    async def list_sessions(self, **_: Any) -> list[RadiusSession]:
        return sorted(self.sessions, key=lambda s: s.id, reverse=True)


async def test_at_start_the_newest_open_session_holds_an_address_two_sessions_name(service: DNSService) -> None:
    """ann reconnected with the same address and prefix, and ispd (re)started before her old
    session was closed as stale: the store lists sessions newest first, so the oldest was
    loaded last and held them, and its close took them from the session that has them."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32"), ip_network("192.168.1.0/24")])
    address, device = "192.168.1.41", "2001:db8:100:7::5"
    sessions = [RadiusSession(session_id, "198.18.0.2", f"s{session_id}", "ann", float(session_id),
                              float(session_id), subscriber_id=ANN, framed_ip=address,
                              delegated_ipv6_prefix="2001:db8:100::/56") for session_id in (1, 2)]
    service.context.store = _Store(sessions)  # type: ignore[assignment]
    await service._load_subscribers()
    assert service.engine.client_class(address) == service.engine.client_class(device) == ClientClass.WALLED
    service.context.bus.publish(SessionStopped(3.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, framed_ip=address,
                                               ipv6_networks="2001:db8:100::/56", cause="Stale-Session"))
    assert service.engine.client_class(address) == service.engine.client_class(device) == ClientClass.WALLED


class _LeasesStore(_Store):
    """The same, with current leases."""

    def __init__(self, sessions: list[RadiusSession], leases: list[Lease]) -> None:
        super().__init__(sessions)
        self.leases = leases

    async def list_leases(self) -> list[Any]:
        return self.leases


async def test_a_reload_reads_the_holds_again_rather_than_on_top_of_what_was_held(service: DNSService) -> None:
    """A reload re-applied the store's leases and sessions over what the garden held: a hold
    whose end was never heard (a DNS process that missed it) outlived a store that no longer
    had it, walled a free address, and took an address back from its holder at that holder's
    end."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("192.168.1.0/24")])
    bus, free, shared = service.context.bus, "192.168.1.43", "192.168.1.44"
    bus.publish(SubscriberSuspended(1.0, ANN, "ann"))
    bus.publish(LeaseGranted(1.0, free, 4000.0, subscriber_id=ANN))  # its end goes unheard
    bus.publish(SessionStarted(1.0, 5, "198.18.0.2", "s5", "ann", subscriber_id=ANN, framed_ip=shared))  # (so)
    service.context.store = _LeasesStore([], [Lease(shared, LeaseState.BOUND, 2.0, time.time() + 3600,
                                                    subscriber_id=BOB)])  # type: ignore[assignment]
    await service._load_subscribers()
    assert service.walled.holder(free) is None and service.walled.holder(shared) == BOB
    assert service.engine.client_class(free) == service.engine.client_class(shared) == ClientClass.ALLOWED
    bus.publish(LeaseEnded(3.0, shared, "released", subscriber_id=BOB))
    assert service.walled.holder(shared) is None and service.engine.client_class(shared) == ClientClass.ALLOWED


class _SlowStore(_Store):
    """A store read that waits for the test: events come while it is read."""

    def __init__(self, sessions: list[RadiusSession]) -> None:
        super().__init__(sessions)
        self.reading, self.go_on = asyncio.Event(), asyncio.Event()

    async def list_sessions(self, **kwargs: Any) -> list[RadiusSession]:
        self.reading.set()
        await self.go_on.wait()
        return await super().list_sessions(**kwargs)


async def test_what_the_bus_brings_while_the_store_is_read_stands_over_what_was_read(service: DNSService) -> None:
    """A reload reads the store with awaits between: a resume, a session's end or a plan change
    heard meanwhile was overwritten by the older snapshot (ann walled until her next change of
    status, an ended session's address held for good, bob's plan as it was)."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("192.168.1.0/24")])
    address = "192.168.1.42"
    store = _SlowStore([RadiusSession(1, "198.18.0.2", "s1", "ann", 1.0, 1.0, subscriber_id=ANN, framed_ip=address)])
    service.context.store = store  # type: ignore[assignment]
    loading = asyncio.ensure_future(service._load_subscribers())
    await store.reading.wait()
    bus = service.context.bus
    bus.publish(SubscriberResumed(2.0, ANN, "ann"))  # (the store said suspended, read before)
    bus.publish(SessionStopped(2.0, 1, "198.18.0.2", "s1", "ann", subscriber_id=ANN, framed_ip=address))
    bus.publish(SubscriberPlanChanged(2.0, BOB, "bob", plan_id=2))
    store.go_on.set()
    await loading
    assert service.walled.suspended == set() and service.walled.holder(address) is None
    assert service.plans.plan_of(BOB) == "family"
    assert service.engine.client_class(address) == ClientClass.ALLOWED


class _BindingsStore(_Store):
    def __init__(self, bindings: list[Lease6]) -> None:
        super().__init__([])
        self.bindings = bindings

    async def list_leases6(self) -> list[Any]:
        return self.bindings


async def test_a_dhcpv6_prefix_names_its_subscriber_for_the_home_s_devices(service: DNSService) -> None:
    """A prefix delegated by ispd's DHCPv6 to ann's router holds the addresses her devices ask
    from, as a RADIUS session's Delegated-IPv6-Prefix does: her walled garden and plan apply to
    them, from the store at start and from the bus after; its end lets them go."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32")])
    device, prefix = "2001:db8:100:7::5", "2001:db8:100::/56"
    binding = Lease6(prefix, Lease6Kind.PREFIX, LeaseState.BOUND, "00:03:00:01:02:00:5e:00:00:01", 2, 1.0, 1800.0,
                     time.time() + 3600, subscriber_id=ANN)
    service.context.store = _BindingsStore([binding])  # type: ignore[assignment]
    await service._load_subscribers()  # ann is suspended in this store
    assert service.walled.holder(device) == ANN and service.engine.client_class(device) == ClientClass.WALLED
    bus = service.context.bus
    bus.publish(Binding6Ended(2.0, prefix, "pd", "released", subscriber_id=ANN))
    assert service.walled.holder(device) is None and service.engine.client_class(device) == ClientClass.ALLOWED
    bus.publish(Binding6Granted(3.0, prefix, "pd", time.time() + 3600, subscriber_id=BOB))
    assert service.walled.holder(device) == BOB
    bus.publish(Binding6Ended(4.0, prefix, "pd", "expired", subscriber_id=ANN))  # not ann's any more
    assert service.walled.holder(device) == BOB


async def test_a_dhcpv6_prefix_granted_without_a_subscriber_is_no_longer_its_former_holder_s(
        service: DNSService) -> None:
    """Ann's reservation was deleted while her router held the prefix: its renewal names no
    subscriber, and the prefix (later another's, unregistered) must not stay hers, walled with her."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32")])
    device, prefix = "2001:db8:100:7::5", "2001:db8:100::/56"
    binding = Lease6(prefix, Lease6Kind.PREFIX, LeaseState.BOUND, "00:03:00:01:02:00:5e:00:00:01", 2, 1.0, 1800.0,
                     time.time() + 3600, subscriber_id=ANN)
    service.context.store = _BindingsStore([binding])  # type: ignore[assignment]
    await service._load_subscribers()  # ann is suspended in this store
    assert service.engine.client_class(device) == ClientClass.WALLED
    service.context.bus.publish(Binding6Granted(2.0, prefix, "pd", time.time() + 3600, renewal=True))
    assert service.walled.holder(device) is None and service.engine.client_class(device) == ClientClass.ALLOWED
    # A RADIUS session's hold on it is the session's to end.
    service.walled.network_granted(prefix, ANN, 77)
    service.context.bus.publish(Binding6Granted(3.0, prefix, "pd", time.time() + 3600, renewal=True))
    assert service.walled.holder(device) == ANN


async def test_a_renewal_without_the_name_its_lease_had_takes_the_name_out_of_dns() -> None:
    """DHCP keeps a lease's name at a renewal that brings none only while it is the client's (a
    name a reservation gave, cleared since, or one reserved for another device now, goes): the
    renewal without it took nothing out of DNS, so the name answered for the address until the
    lease ended, which for a device that renews is never."""
    config = Config.model_validate({"dns": {"enabled": True, "listen": ["127.62.0.1:0"],
                                            "lease_names": {"domain": "dyn.isp.example"}}})
    service = DNSService(config, ServiceContext(None, EventBus(), CollectorRegistry(), _healthy))  # type: ignore[arg-type]
    service.local = LocalData(lease_domain="dyn.isp.example.", reverse_networks=["198.18.0.0/15"])
    bus, address = service.context.bus, "198.18.0.100"
    async with AsyncExitStack() as stack:
        service._subscribe(stack)
        bus.publish(LeaseGranted(1.0, address, 4000.0, hostname="gw"))
        assert service.local.lease_names() == {address: "gw.dyn.isp.example."}
        bus.publish(LeaseGranted(2.0, address, 5000.0, hostname="gw", renewal=True))
        assert service.local.lease_names() == {address: "gw.dyn.isp.example."}
        bus.publish(LeaseGranted(3.0, address, 6000.0, renewal=True))
        assert service.local.lease_names() == {}


async def test_listening_addresses_are_named_with_ipv6_in_brackets(service: DNSService) -> None:
    """The status line (systemd's STATUS=, dns.started) said "dns on :::53" for [::]:53."""
    service.bound = [("::", 53), ("2001:db8:53::4", 5353), ("127.0.0.1", 53)]
    assert service.describe().startswith("dns on [::]:53, [2001:db8:53::4]:5353, 127.0.0.1:53")


class _NoDelegations:
    def delegate(self, zones: list[Any]) -> list[bytes]:
        return []


async def test_a_reload_answers_the_lease_names_before_the_store_is_read_again() -> None:
    """A reload put local data without lease names in place and read the store's leases into
    it afterwards, with awaits between: meanwhile every lease name was NXDOMAIN (1.7 s of them
    with 60 000 leases in SQLite here), which resolvers and stubs cache for the negative TTL."""
    config = Config.model_validate({"dns": {"enabled": True, "listen": ["127.61.0.1:0"], "lease_names": {
        "domain": "customers.isp.example", "reverse_networks": ["198.18.0.0/24"]}}})
    service = DNSService(config, ServiceContext(None, EventBus(), CollectorRegistry(), _healthy))  # type: ignore[arg-type]
    service.engine = make_env().engine
    service.resolver = _NoDelegations()  # type: ignore[assignment]

    def data() -> LocalData:
        return LocalData(lease_domain="customers.isp.example", reverse_networks=["198.18.0.0/24"])

    service._apply_data(data(), [], config.dns)
    async with AsyncExitStack() as stack:
        service._subscribe(stack)
        service.context.bus.publish(LeaseGranted(1.0, "198.18.0.100", time.time() + 3600, hostname="Laptop"))
        assert service.local is not None
        before = service.local.lease_names()
        assert before == {"198.18.0.100": "laptop.customers.isp.example."}
        service._apply_data(data(), [], config.dns)  # (the store is read after this)
        assert service.local.lease_names() == before
        assert service.engine.local_lookup == service.local.answer
        answer = service.local.answer(name_from_text("laptop.customers.isp.example"), RRType.A)
        assert answer is not None and [rr.rdata for rr in answer.answer] == [bytes([198, 18, 0, 100])]
        assert [rr.ttl for rr in answer.answer] == [config.dns.lease_names.ttl]


class _Ticker:
    """Counts the event loop's turns: a run of calls that see the same count held the loop."""

    def __init__(self) -> None:
        self.ticks = 0
        self.seen: list[int] = []
        self.meanwhile: tuple[int, Callable[[], None]] | None = None  # at so many calls, do that

    async def run(self) -> None:
        while True:
            self.ticks += 1
            if self.meanwhile is not None and len(self.seen) >= self.meanwhile[0]:
                self.meanwhile[1]()
                self.meanwhile = None
            await asyncio.sleep(0)

    def longest_hold(self) -> int:
        longest = run = 0
        for index, tick in enumerate(self.seen):
            run = run + 1 if index and tick == self.seen[index - 1] else 1
            longest = max(longest, run)
        return longest


def _lease_names_service(monkeypatch: pytest.MonkeyPatch, ticker: _Ticker) -> tuple[DNSService, Config]:
    config = Config.model_validate({"dns": {"enabled": True, "listen": ["127.61.0.1:0"], "lease_names": {
        "domain": "customers.isp.example", "reverse_networks": ["10.0.0.0/16"]}}})
    service = DNSService(config, ServiceContext(None, EventBus(), CollectorRegistry(), _healthy))  # type: ignore[arg-type]
    service.engine = make_env().engine
    service.resolver = _NoDelegations()  # type: ignore[assignment]
    add = LocalData.add_lease_name

    def counted(local: LocalData, hostname: str, address: str, ttl: int) -> bool:
        ticker.seen.append(ticker.ticks)
        return add(local, hostname, address, ttl)

    monkeypatch.setattr(LocalData, "add_lease_name", counted)
    return service, config


def _data() -> LocalData:
    return LocalData(lease_domain="customers.isp.example", reverse_networks=["10.0.0.0/16"])


LEASES = 3000  # (60 000 held every query 2-4 s at a reload, 33 µs each)


async def test_reading_the_stores_lease_names_lets_queries_be_answered_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A start or reload published every lease's name (tens of thousands at an ISP) without
    returning to the event loop: with 60 000 leases the reload's re-read held every query 1.8 s."""
    ticker = _Ticker()
    service, config = _lease_names_service(monkeypatch, ticker)
    service._apply_data(_data(), [], config.dns)
    now = time.time()
    service.context.store = _LeasesStore([], [  # type: ignore[assignment]
        Lease(f"10.0.{i >> 8}.{i & 255}", LeaseState.BOUND, now, now + 3600, hostname=f"host{i}")
        for i in range(LEASES)])
    task = asyncio.ensure_future(ticker.run())
    try:
        await service._load_subscribers()
    finally:
        task.cancel()
    assert service.local is not None and len(service.local.lease_names()) == LEASES
    assert ticker.longest_hold() < LEASES / 2, ticker.longest_hold()


async def test_a_reload_takes_the_lease_names_a_part_at_a_time_and_keeps_what_it_hears_meanwhile(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload copied every lease name into the new data in one go on the event loop (3 s for
    60 000 names). A part at a time, a lease granted or ended meanwhile reaches the new data."""
    ticker = _Ticker()
    service, config = _lease_names_service(monkeypatch, ticker)
    service._apply_data(_data(), [], config.dns)
    assert service.local is not None
    for i in range(LEASES):
        service.local.add_lease_name(f"host{i}", f"10.0.{i >> 8}.{i & 255}", 300)
    ticker.seen.clear()
    bus = service.context.bus
    async with AsyncExitStack() as stack:
        service._subscribe(stack)

        def meanwhile() -> None:  # (the copy is under way)
            bus.publish(LeaseEnded(2.0, "10.0.0.1", "released"))  # copied already
            bus.publish(LeaseGranted(2.0, "10.0.250.1", time.time() + 3600, hostname="late"))

        ticker.meanwhile = (LEASES // 2, meanwhile)
        task = asyncio.ensure_future(ticker.run())
        try:
            new = _data()
            heard = await service._take_lease_names(new)
            service._apply_data(new, [], config.dns, names_taken=True)
            for handle in heard:
                handle()
        finally:
            task.cancel()
        names = service.local.lease_names()
        assert service.local is new and len(names) == LEASES
        assert "10.0.0.1" not in names and names["10.0.250.1"] == "late.customers.isp.example."
        assert ticker.longest_hold() < LEASES / 2, ticker.longest_hold()


async def test_a_suspended_subscribers_devices_stay_walled_while_a_reload_reads_the_store(
        service: DNSService) -> None:
    """The store's leases are published a part at a time (the event loop answering between
    parts), but the garden's holds were forgotten before the first part: until the last lease
    and then the sessions were read again, a suspended subscriber's addresses and prefixes were
    nobody's, and the devices asking meanwhile went round the walled garden (and their plan)."""
    assert service.engine is not None
    service.engine.set_allow([ip_network("2001:db8::/32"), ip_network("10.0.0.0/8"), ip_network("192.168.1.0/24")])
    address = "192.168.1.47"
    sessions = [RadiusSession(1, "198.18.0.2", "s1", "ann", 1.0, 1.0, subscriber_id=ANN, framed_ip=address,
                              delegated_ipv6_prefix="2001:db8:100::/56")]
    now = time.time()
    service.context.store = _LeasesStore(sessions, [  # type: ignore[assignment]
        Lease(f"10.0.{i >> 8}.{i & 255}", LeaseState.BOUND, now, now + 3600, subscriber_id=BOB) for i in range(3000)])
    await service._load_subscribers()
    assert service.engine.client_class("2001:db8:100:7::1") == ClientClass.WALLED
    assert service.engine.client_class(address) == ClientClass.WALLED
    seen: list[tuple[ClientClass, ClientClass]] = []

    async def probe() -> None:  # a new device of ann's asks at each turn of the loop
        while True:
            service.engine.forget_clients()  # (as any walled change does)
            seen.append((service.engine.client_class(f"2001:db8:100:7::{len(seen) + 2:x}"),
                         service.engine.client_class(address)))
            await asyncio.sleep(0)

    task = asyncio.ensure_future(probe())
    try:
        await service._load_subscribers()  # (a reload's)
    finally:
        task.cancel()
    assert len(seen) > 1 and set(seen) == {(ClientClass.WALLED, ClientClass.WALLED)}, set(seen)
