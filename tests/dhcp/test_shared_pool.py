"""A DHCP pool shared with RADIUS: an address a RADIUS session holds is never DHCP's to give.

The store arbitrates; the engine only has to stop offering and confirming an address it has
been told another service holds, and to take it back once that hold ends.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

from prometheus_client import CollectorRegistry

from ispd.dhcp.engine import Ignored
from ispd.dhcp.options import DHCPMessageType
from ispd.events import LeaseEnded
from ispd.store.models import Lease, LeaseService, LeaseState
from tests.dhcp.test_engine import MAC_A, MAC_B, MAC_C, SERVER, T0, Lab, config, message

# The default test config's "lan" pool is 198.18.0.100 - 198.18.0.102.
SHARED = "198.18.0.101"
UNTIL = T0 + 600


def others_take_the_rest(lab: Lab) -> None:
    """Lease the other two addresses of "lan", so that SHARED is the only one a DISCOVER could get."""
    assert {lab.dora(MAC_A), lab.dora(MAC_B)} == {IPv4Address("198.18.0.100"), IPv4Address("198.18.0.102")}


def offered(lab: Lab, mac: bytes = MAC_C) -> IPv4Address | None:
    outcome = lab.send(message(DHCPMessageType.DISCOVER, mac))
    if outcome.reply is None:
        assert outcome.ignored is Ignored.NO_ADDRESS
        return None
    return outcome.reply.packet.yiaddr


def radius_lease(address: str = SHARED, expires_at: float = UNTIL) -> Lease:
    return Lease(address, LeaseState.BOUND, T0, expires_at, client_id="alice 02:00:5e:10:00:99", subscriber_id=7,
                 pool="lan", service=LeaseService.RADIUS)


def test_an_address_held_elsewhere_is_not_offered() -> None:
    lab = Lab()
    lab.engine.held_elsewhere(SHARED, UNTIL, subscriber_id=7)
    others_take_the_rest(lab)
    assert offered(lab) is None


def test_a_request_for_an_address_held_elsewhere_is_naked() -> None:
    # The usual way it happens: we offered the address, then the store refused the lease because
    # a RADIUS session got it first. The client's REQUEST (SELECTING, or INIT-REBOOT later) must
    # not be ACKed, or two subscribers would have one address.
    lab = Lab()
    assert lab.dora(MAC_A) == IPv4Address("198.18.0.100")
    assert offered(lab) == IPv4Address(SHARED)
    lab.engine.held_elsewhere(SHARED, UNTIL)
    for request in (message(DHCPMessageType.REQUEST, MAC_C, requested=SHARED, server_id=str(SERVER)),
                    message(DHCPMessageType.REQUEST, MAC_C, requested=SHARED)):
        outcome = lab.send(request)
        assert outcome.reply is not None and outcome.reply.packet.message_type is DHCPMessageType.NAK
        assert outcome.writes == [] and outcome.events == []


def test_an_address_freed_elsewhere_is_offered_again() -> None:
    lab = Lab()
    lab.engine.held_elsewhere(SHARED, UNTIL)
    others_take_the_rest(lab)
    assert offered(lab) is None  # also moves it round the queue once: it must stay in it
    lab.engine.freed_elsewhere(SHARED)
    assert offered(lab) == IPv4Address(SHARED)


def test_an_address_held_elsewhere_is_offered_again_once_the_hold_lapses() -> None:
    # The session's node may die without telling anyone: the hold's expiry frees it all the same.
    lab = Lab()
    lab.engine.held_elsewhere(SHARED, UNTIL)
    others_take_the_rest(lab)
    assert offered(lab) is None
    lab.now = UNTIL + 1
    assert lab.engine.reclaim(lab.now).writes == []  # the periodic pass that frees ended holds
    assert offered(lab) == IPv4Address(SHARED)


def test_freed_elsewhere_does_not_free_a_lease_of_ours() -> None:
    # A RADIUS Stop naming an address a DHCP client holds (a stale session) must not free it.
    lab = Lab()
    address = lab.dora(MAC_A)
    lab.engine.freed_elsewhere(str(address))
    lab.dora(MAC_B)
    lab.dora(MAC_C)
    assert offered(lab, bytes.fromhex("02005e100004")) is None


def test_a_radius_lease_loaded_from_the_store_is_not_offered_while_it_lasts() -> None:
    lab = Lab()
    lab.engine.load([radius_lease()], [], {})
    others_take_the_rest(lab)
    assert offered(lab) is None
    outcome = lab.send(message(DHCPMessageType.REQUEST, MAC_C, requested=SHARED))
    assert outcome.reply is not None and outcome.reply.packet.message_type is DHCPMessageType.NAK


def test_reclaim_writes_nothing_for_a_radius_lease_that_expired() -> None:
    # Its expiry is the RADIUS side's to record; a DHCP "expired" row would overwrite its lease.
    lab = Lab()
    ours = Lease("198.18.0.100", LeaseState.BOUND, T0, UNTIL, hw_address="02:00:5e:10:00:01", pool="lan")
    lab.engine.load([ours, radius_lease()], [], {})
    outcome = lab.engine.reclaim(UNTIL + 1)
    assert [(lease.address, event) for lease, event in outcome.writes] == [("198.18.0.100", "expired")]
    [ended] = outcome.events
    assert isinstance(ended, LeaseEnded) and ended.address == "198.18.0.100"


def test_a_loaded_radius_lease_is_offered_again_after_it_expires() -> None:
    lab = Lab()
    lab.engine.load([radius_lease()], [], {})
    others_take_the_rest(lab)
    lab.now = UNTIL + 1
    assert lab.engine.reclaim(lab.now).writes == []
    assert offered(lab) == IPv4Address(SHARED)


def test_a_loaded_radius_lease_is_offered_again_when_freed_elsewhere() -> None:
    lab = Lab()
    lab.engine.load([radius_lease()], [], {})
    others_take_the_rest(lab)
    lab.engine.freed_elsewhere(SHARED)
    assert offered(lab) == IPv4Address(SHARED)


def test_a_late_announcement_does_not_take_a_live_lease_from_its_client() -> None:
    # A session's grant, announced after the session let the address go and the store gave it
    # to our client (a delayed bridge from a worker): the client keeps it. A refusal by the
    # store, on the other hand, always wins.
    lab = Lab()
    assert lab.dora(MAC_A) == IPv4Address("198.18.0.100")
    lab.engine.held_elsewhere("198.18.0.100", UNTIL, now=lab.now)
    binding = lab.engine.table.get(int(IPv4Address("198.18.0.100")))
    assert binding is not None and not binding.foreign
    lab.engine.held_elsewhere("198.18.0.100", UNTIL, refused=True)
    binding = lab.engine.table.get(int(IPv4Address("198.18.0.100")))
    assert binding is not None and binding.foreign


async def test_the_service_withholds_an_ack_the_store_refuses(tmp_path: Path) -> None:
    # The store, not the engine's memory, has the last word: a lease on an address a RADIUS
    # session took meanwhile is not written, its ACK not sent and its event not published,
    # while the rest of the batch goes out as usual.
    from ispd.config import Config
    from ispd.dhcp.service import DHCPService
    from ispd.events import Event, EventBus, LeaseGranted
    from ispd.service import ServiceContext
    from ispd.store import StoreConfig, open_store
    from ispd.store.models import AddressClaim

    store = await open_store(StoreConfig(path=tmp_path / "ispd.db"), clock=lambda: T0)
    try:
        bus = EventBus()
        published: list[Event] = []
        bus.subscribe(Event, published.append)
        service = DHCPService(Config(dhcp=config()), ServiceContext(store, bus, CollectorRegistry(), _healthy,
                                                                      clock=lambda: T0))
        sent: list[str] = []
        service._send = lambda reply, *_: sent.append(str(reply.packet.yiaddr))  # type: ignore[method-assign]
        lab = Lab()
        lab.engine = service.engine
        lab.dora(MAC_A)  # .100, in memory only: the commit below is what writes it
        first = lab.send(message(DHCPMessageType.REQUEST, MAC_A, requested="198.18.0.100", server_id=str(SERVER)))
        offer = lab.send(message(DHCPMessageType.DISCOVER, MAC_B))
        assert offer.reply is not None and offer.reply.packet.yiaddr == IPv4Address(SHARED)
        second = lab.send(message(DHCPMessageType.REQUEST, MAC_B, requested=SHARED, server_id=str(SERVER)))
        await store.claim_address(AddressClaim("lan", (SHARED,), "alice", UNTIL))  # a session, first
        await service._commit([(first, 0.0, "request", 1), (second, 0.0, "request", 1)])
        assert sent == ["198.18.0.100"]
        assert [e.address for e in published if isinstance(e, LeaseGranted)] == ["198.18.0.100"]
        assert (await store.get_lease(SHARED)).service == LeaseService.RADIUS
        binding = service.engine.table.get(int(IPv4Address(SHARED)))
        assert binding is not None and binding.foreign and binding.expires_at == UNTIL
        assert offered(lab, MAC_B) != IPv4Address(SHARED)
    finally:
        await store.close()


async def _healthy() -> tuple[bool, dict[str, object]]:
    return True, {}
