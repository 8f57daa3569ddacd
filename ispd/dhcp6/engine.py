"""The DHCPv6 server's decisions: (message, where it came from, now) → reply and binding writes.

Theory of operation
-------------------
A binding belongs to one IA of one client: (DUID, IAID, kind), the kind being an address of
the link (IA_NA) or a prefix delegated to the client's router (IA_PD). Each IA gets one
address or one prefix. The engine keeps every binding ever made in memory, by prefix, loaded
from the store at start; the transport writes what ``handle`` returns, durably, before the
Reply that promises it goes out.

The link a message belongs to (RFC 8415 §13.1) is the subnet of the interface it arrived on,
for a direct client; for a relayed one, the subnet whose prefix holds the link-address of the
relay closest to the client, or which lists that address in ``relay_addresses``.

Messages (RFC 8415 §18.3; §16 says which are dropped):

- Solicit → Advertise with an address or prefix for each IA, held for the client for
  ``offer_hold_seconds``; with Rapid Commit (when the client asks and the config allows), a
  Reply with the bindings committed instead.
- Request, Renew, Rebind → Reply with the IA's binding (made, kept or extended). The client's
  previous binding comes first, then its hint if free, then the pools in order. Addresses the
  client lists that it does not get back are returned with lifetimes 0, so that it stops
  using them (a client that moved links, say).
- Release → the bindings end (NoBinding for an IA that has none); Decline → the addresses go
  into quarantine for ``decline_quarantine_seconds``.
- Confirm → Success when every address is on the link's prefix, NotOnLink otherwise; no reply
  when there are no addresses or no link (§18.3.3).
- Information-request → the configuration options alone (the section's, from a link no
  subnet names: stateless service needs no link, §18.3.6).

Solicit, Confirm and Rebind carrying a Server Identifier are dropped, as are Request, Renew,
Release and Decline naming another server, and an Information-request with an IA (§16).
Options sent: Server and Client Identifier, the IAs, Status Code where the RFC asks for one,
DNS servers (23) and domain search (24) when the client asks for them (Option Request, §21.7),
Preference when configured.

A subscriber owns a binding when a reservation matches: the client's DUID, else its line (the
Interface-ID of the relay closest to the client as a circuit-id, the Remote-ID, RFC 4649,
without its enterprise number, as a remote-id); a fixed address or prefix the DUID's reservation
lacks comes from the line's, the same subscriber's. A reservation's fixed address (address6) and
prefix (prefix6) go to its client whether they lie in a pool or not, and to no one else: a
pool's walk skips them and any prefix that holds one (also a RADIUS login's, which its NAS gives
by Framed-IPv6-Address and Delegated-IPv6-Prefix); a client that had one, or a part of one,
before it was reserved gets another at its next renewal (the old with lifetimes 0), and until
then the reserved client gets one from the pools. Suspended and closed
subscribers get no IPv6: their IAs get NoAddrsAvail/NoPrefixAvail and bindings they hold
come back with lifetimes 0, so their devices fall back to IPv4, where the walled garden is.
The pools also skip what an open RADIUS session has in them (``session_opened``: the prefix its
deleted reservation gave, which it keeps until it logs in again; a NAS's own), until its Stop,
but for a binding's own prefix (a BNG relaying DHCPv6 reports its client's in its accounting).

An IA of a kind past the first MAX_IAS_PER_KIND of its message gets nothing (NoAddrsAvail or
NoPrefixAvail).

LEASEQUERY (RFC 5007) from ``leasequery_requesters``, by address (the client holding it, or the
delegated prefix holding it, with all it holds on that link) or by client DUID: ``_leasequery``.

Not done: temporary addresses (IA_TA: NoAddrsAvail), reconfiguration (Reconfigure, option 19;
Reconfigure Accept is ignored), Server Unicast (clients always multicast), more than one
binding per IA, bulk leasequery (RFC 5460, over TCP), the relay data of a binding
(OPTION_LQ_RELAY_DATA: the relay's message is not kept, only its Interface-ID and Remote-ID).
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from ipaddress import IPv6Address, IPv6Network

from ispd.dhcp.identifiers import opaque_text
from ispd.dhcp6.codec import (
    IA,
    DHCP6DecodeError,
    IAAddress,
    IAPrefix,
    Message,
    MessageType,
    Option,
    OptionCode,
    RelayForward,
    StatusCode,
    decode_ia_address,
    decode_lq_query,
    encode_addresses,
    encode_domain_list,
    encode_ia,
    encode_lease,
    encode_options,
    encode_status,
    option,
    uint32,
)
from ispd.dhcp6.config import DHCP6Config, Subnet6
from ispd.reservedspace import ReservedSpace
from ispd.store.models import (
    IPV6_RESERVATION_KINDS,
    Lease6,
    Lease6Kind,
    LeaseState,
    Reservation,
    ReservationKind,
    SubscriberStatus,
)

# How many candidates one allocation looks at in a pool before calling it full: a /64 range is
# never scanned whole; a pool that is full for this many in a row is as good as full.
SCAN_LIMIT = 4096

# A prefix looked at for another IA's binding inside it, of a longer length than its own, one
# lookup per prefix of that length up to this many; past it, a walk of the bindings.
INSIDE_LOOKUPS = 256

# How many IAs of each kind one message gets addresses or prefixes for; those after are answered
# NoAddrsAvail/NoPrefixAvail. A home router asks for one or two of each: without a bound, one
# datagram of thousands of IAs could take a whole pool (and thousands of store rows).
MAX_IAS_PER_KIND = 8

IAKey = tuple[str, int, Lease6Kind]  # (DUID in hex, IAID, kind)


class Ignored6(StrEnum):
    """Why a message got no reply (a metric label: keep it closed)."""

    NO_SUBNET = "no_subnet"
    NO_CLIENT_ID = "no_client_id"
    NOT_FOR_US = "not_for_us"  # a Server Identifier that is not ours
    SERVER_ID_PRESENT = "server_id_present"  # §16: Solicit, Confirm, Rebind must not have one
    NOT_A_REQUEST = "not_a_request"  # a server's message, or one we do not know
    NOTHING_TO_CONFIRM = "nothing_to_confirm"
    UNICAST = "unicast"  # a direct client's message sent to our address, not to ff02::1:2
    IA_IN_INFORMATION_REQUEST = "ia_in_information_request"  # §16: an Information-request asks for no IA
    RELAY_ON_CLIENT_LINK = "relay_on_client_link"  # a Relay-forward from a link of direct clients
    UNKNOWN_CLIENT = "unknown_client"  # no reservation names its subscriber (unknown_clients = "ignore")
    LEASEQUERY_REFUSED = "leasequery_not_allowed"  # from no address in leasequery_requesters


@dataclass(frozen=True, slots=True)
class Received6:
    message: Message
    interface: str
    relays: tuple[RelayForward, ...] = ()  # from the server's side to the client's; empty: direct
    multicast: bool = True  # a direct client's message came to ff02::1:2 (not to one of our addresses)
    source: IPv6Address | None = None  # who sent the datagram: the client, or the relay next to us


@dataclass(slots=True)
class Outcome6:
    reply: Message | None = None
    writes: list[tuple[Lease6, str]] = field(default_factory=list)
    ignored: Ignored6 | None = None
    declined: int = 0


@dataclass(frozen=True, slots=True)
class _Pool:
    """A pool as the engine walks it: candidate i is ``base + (i << shift)`` of length ``length``."""

    name: str
    kind: Lease6Kind
    base: int
    size: int
    length: int

    @property
    def shift(self) -> int:
        return 128 - self.length

    def candidate(self, index: int) -> str:
        network = IPv6Network((self.base + (index << self.shift), self.length))
        text = f"{network.network_address}/{self.length}"
        _remember_network(text, network)  # (read back at once: no parse of the text just made)
        return text

    def index_of(self, network: IPv6Network) -> int | None:
        if network.prefixlen != self.length:
            return None
        offset = int(network.network_address) - self.base
        index = offset >> self.shift
        return index if offset >= 0 and index < self.size and offset & ((1 << self.shift) - 1) == 0 else None


_NETWORKS: dict[str, IPv6Network] = {}
_NETWORKS_KEPT = 1 << 16


def _network(prefix: str) -> IPv6Network:
    """A binding's prefix text as a network. The same texts are read again and again (a
    Solicit, its Request, each Renew), and parsing IPv6 text was the costliest step of an
    exchange: the recent ones are kept, and a pool's new candidates go in as they are made."""
    network = _NETWORKS.get(prefix)
    if network is None:
        network = _remember_network(prefix, IPv6Network(prefix))
    return network


def _remember_network(prefix: str, network: IPv6Network) -> IPv6Network:
    if len(_NETWORKS) >= _NETWORKS_KEPT:
        _NETWORKS.clear()  # (cheaper than an LRU's bookkeeping on every read; refilled at once)
    _NETWORKS[prefix] = network
    return network


def _address_network(address: IPv6Address) -> IPv6Network:
    """An address as its /128 (from its int: given the address, ipaddress would format it and
    parse the text again)."""
    return IPv6Network((int(address), 128))


def _pools(subnet: Subnet6) -> list[_Pool]:
    pools = [_Pool(p.name, Lease6Kind.ADDRESS, int(p.first), int(p.last) - int(p.first) + 1, 128)
             for p in subnet.pool]
    pools += [_Pool(p.name, Lease6Kind.PREFIX, int(p.prefix.network_address), p.size, p.delegated_length)
              for p in subnet.prefix_pool]
    return pools


class DHCP6Engine:
    def __init__(self, config: DHCP6Config, server_duid: bytes, *, publishes_names: bool = True) -> None:
        self.server_duid = server_duid
        # Whether an address's host name is published in DNS ([dns.lease_names] has a domain):
        # the Client FQDN option's S and N bits in our replies say so (RFC 4704 §4).
        self.publishes_names = publishes_names
        self.leases: dict[str, Lease6] = {}
        # When each binding's client last renewed it (the Reply): its leasequery OPTION_CLT_TIME.
        # None for one loaded from the store, which keeps no such time.
        self.renewed_at: dict[str, float] = {}
        self.by_ia: dict[IAKey, list[str]] = {}  # every prefix an IA has had, latest last
        # Each client's IAs (those in by_ia), by DUID: what a leasequery asks of one client, without
        # a walk of every IA on the loop that answers Solicits.
        self.ias_of: dict[str, set[IAKey]] = {}
        self.offers: dict[str, tuple[IAKey, float]] = {}
        self._timeline: list[tuple[float, str]] = []  # (when to look at a prefix again, prefix): a heap
        self._due: dict[str, float] = {}  # each prefix's entry in the timeline that counts
        self.offered_to: dict[IAKey, str] = {}  # the latest offer to each IA
        self.reservations: dict[tuple[str, str], Reservation] = {}
        # Open RADIUS sessions' IPv6 networks, by session id, and of those, the ones inside a
        # pool: one IPAM with RADIUS (a session keeps the prefix its deleted reservation gave it
        # until it logs in again; a NAS's own), as DHCP skips an address a session has.
        self.sessions: dict[int, tuple[IPv6Network, ...]] = {}
        self.in_sessions: dict[int, tuple[IPv6Network, ...]] = {}
        self._reservation_keys: dict[int, tuple[str, str]] = {}  # reservation id -> its key above
        self.subscriber_status: dict[int, SubscriberStatus] = {}
        self.pools: dict[str, list[_Pool]] = {}
        self.cursors: dict[str, int] = {}
        # Every length a binding has had: a leasequery looks for the binding holding an address
        # at each (a prefix whose reservation is gone, or whose pool was cut another way, is
        # held until its client's next renewal all the same).
        self.binding_lengths: set[int] = set()
        # The lengths of delegated prefixes bound that are no prefix of a pool as cut now (made
        # before the pool was cut another way, a reservation's): a pool's prefix may lie inside
        # one or around one. Pools never overlap, so with none of these, nothing more is looked at.
        self.stray_lengths: set[int] = set()
        self.reconfigure(config)

    def reconfigure(self, config: DHCP6Config) -> None:
        self.config = config
        self._reschedule()  # (remember_ended_seconds may have changed: every ended binding's due time with it)
        self.by_interface = {s.interface: s for s in config.subnet if s.interface is not None}
        self.by_name = {s.name: s for s in config.subnet}
        old = {pool.name: pool for pools in self.pools.values() for pool in pools}
        self.pools = {s.name: _pools(s) for s in config.subnet}
        self.reserved = ReservedSpace((pool.length for pools in self.pools.values() for pool in pools),
                                       self.reservations.values())
        # A pool that is as it was keeps its cursor; one new or changed is placed afresh.
        kept = {pool.name for pools in self.pools.values() for pool in pools if old.get(pool.name) == pool}
        self.cursors = {name: index for name, index in self.cursors.items() if name in kept}
        self._place_cursors(lambda name: name not in kept)
        self.in_sessions = {}
        for session_id, networks in self.sessions.items():
            self._index_session(session_id, networks)
        self.stray_lengths = {_network(lease.prefix).prefixlen for lease in self.leases.values()
                              if lease.kind is Lease6Kind.PREFIX and not self._a_pool_s(lease.prefix)}

    def load(self, leases: Iterable[Lease6], reservations: Iterable[Reservation],
             statuses: dict[int, SubscriberStatus]) -> None:
        self.subscriber_status = dict(statuses)
        for reservation in reservations:
            self.add_reservation(reservation)
        for lease in sorted(leases, key=lambda le: le.starts_at):
            self._remember(lease)
        self._place_cursors(lambda name: True)

    def _place_cursors(self, placing: Callable[[str], bool]) -> None:
        """Each pool's cursor just past the furthest prefix it has ever handed out, so that after a
        restart or a reload the walk goes on where it was: from the pool's start, a run of
        SCAN_LIMIT bindings there would read as a full pool."""
        furthest: dict[str, int] = {}
        by_name = {pool.name: pool for pools in self.pools.values() for pool in pools if placing(pool.name)}
        for lease in self.leases.values():
            pool = by_name.get(lease.pool) if lease.pool is not None else None
            index = pool.index_of(_network(lease.prefix)) if pool is not None else None
            if pool is not None and index is not None and index >= furthest.get(pool.name, -1):
                furthest[pool.name] = index
        self.cursors.update({name: (index + 1) % by_name[name].size for name, index in furthest.items()})

    def add_reservation(self, reservation: Reservation) -> None:
        if reservation.kind in IPV6_RESERVATION_KINDS:
            self.remove_reservation(reservation.id)
            ident = (str(reservation.kind), reservation.key)
            self.reservations[ident] = reservation
            self._reservation_keys[reservation.id] = ident
            self.reserved.add(reservation)

    def remove_reservation(self, reservation_id: int) -> None:
        # By id, not by a walk of them all: each of an ISP's thousands at start comes through here.
        ident = self._reservation_keys.pop(reservation_id, None)
        if ident is not None and (held := self.reservations.get(ident)) is not None and held.id == reservation_id:
            del self.reservations[ident]
        self.reserved.remove(reservation_id)

    def remove_subscriber(self, subscriber_id: int) -> None:
        for reservation in list(self.reservations.values()):
            if reservation.subscriber_id == subscriber_id:
                self.remove_reservation(reservation.id)
        self.subscriber_status.pop(subscriber_id, None)

    def set_subscriber_status(self, subscriber_id: int, status: SubscriberStatus) -> None:
        self.subscriber_status[subscriber_id] = status

    def session_opened(self, session_id: int, networks: Iterable[str]) -> None:
        """An open RADIUS session's IPv6 networks (its prefixes, its address as a /128)."""
        self.session_closed(session_id)
        held = tuple(IPv6Network(network) for network in networks)
        if held:
            self.sessions[session_id] = held
            self._index_session(session_id, held)

    def session_closed(self, session_id: int) -> None:
        self.sessions.pop(session_id, None)
        self.in_sessions.pop(session_id, None)

    def _index_session(self, session_id: int, networks: tuple[IPv6Network, ...]) -> None:
        # Only those in a pool: with RADIUS's prefixes apart from DHCPv6's (as check-config has
        # them), none, and allocation looks at nothing more.
        inside = tuple(network for network in networks if any(
            pool.base < int(network.broadcast_address) + 1 and int(network.network_address) < pool.base
            + (pool.size << pool.shift) for pools in self.pools.values() for pool in pools))
        if inside:
            self.in_sessions[session_id] = inside

    def _in_a_session(self, prefix: str, now: float) -> bool:
        """Whether an open session's network overlaps ``prefix``, not being a binding of DHCPv6's own
        (a BNG that relays DHCPv6 reports the prefix its client got in its accounting): one in force,
        not one ended that DHCPv6 only remembers (the session has that prefix now, not its client)."""
        network = _network(prefix)
        return any(held.overlaps(network) and not self._bound_now(str(held), now)
                   for networks in self.in_sessions.values() for held in networks)

    def _bound_now(self, prefix: str, now: float) -> bool:
        lease = self.leases.get(prefix)
        return lease is not None and lease.held(now)

    def _remember(self, lease: Lease6) -> None:
        key = (lease.duid, lease.iaid, lease.kind)
        previous = self.leases.get(lease.prefix)
        if previous is not None and (previous.duid, previous.iaid, previous.kind) != key:
            # The prefix is another IA's now: only the history of its latest holder lists it, so
            # that forgetting it (which clears that one's) leaves no IA naming it for good.
            self._drop_from_history((previous.duid, previous.iaid, previous.kind), lease.prefix)
        self._set(lease)
        length = int(lease.prefix.rpartition("/")[2])
        self.binding_lengths.add(length)
        if lease.kind is Lease6Kind.PREFIX and length not in self.stray_lengths and not self._a_pool_s(lease.prefix):
            self.stray_lengths.add(length)
        history = self.by_ia.setdefault(key, [])
        with contextlib.suppress(ValueError):
            history.remove(lease.prefix)
        history.append(lease.prefix)
        self.ias_of.setdefault(lease.duid, set()).add(key)

    # --- the protocol

    def handle(self, received: Received6, now: float) -> Outcome6:
        message = received.message
        kind = message.type
        if kind == MessageType.LEASEQUERY:
            return self._leasequery(received, now)
        if kind not in _HANDLED:
            return Outcome6(ignored=Ignored6.NOT_A_REQUEST)
        if kind in (MessageType.SOLICIT, MessageType.CONFIRM, MessageType.REBIND) and message.server_id is not None:
            return Outcome6(ignored=Ignored6.SERVER_ID_PRESENT)
        if message.server_id is not None and message.server_id != self.server_duid:
            return Outcome6(ignored=Ignored6.NOT_FOR_US)
        if kind in _NEED_SERVER_ID and message.server_id is None:
            return Outcome6(ignored=Ignored6.NOT_FOR_US)
        if message.client_id is None and kind != MessageType.INFORMATION_REQUEST:
            return Outcome6(ignored=Ignored6.NO_CLIENT_ID)
        if kind == MessageType.INFORMATION_REQUEST and (message.ias or message.has(OptionCode.IA_TA)):
            return Outcome6(ignored=Ignored6.IA_IN_INFORMATION_REQUEST)
        if not received.multicast and not received.relays:
            # RFC 8415 §16, §18.3: no Server Unicast option is ever sent, so a client's unicast is
            # dropped, or told to multicast where the RFC says so.
            if kind not in _NEED_SERVER_ID:
                return Outcome6(ignored=Ignored6.UNICAST)
            assert message.client_id is not None
            options = (option(OptionCode.SERVERID, self.server_duid), option(OptionCode.CLIENTID, message.client_id),
                       encode_status(StatusCode.USE_MULTICAST, "send to ff02::1:2"))
            return Outcome6(reply=Message(MessageType.REPLY, message.transaction_id, options), ignored=Ignored6.UNICAST)
        if received.relays and received.interface in self.by_interface \
                and self.config.relays_on_client_links == "ignore":
            # Anyone on a subscribers' link can write a Relay-forward: trusted, it would put its
            # sender on any link and under any line's reservation (subscriber, static prefix).
            return Outcome6(ignored=Ignored6.RELAY_ON_CLIENT_LINK)
        subnet = self.subnet_for(received)
        if subnet is None and kind == MessageType.INFORMATION_REQUEST and self.config.unknown_clients == "serve":
            # §18.3.6: stateless configuration needs no link, and [dhcp6]'s own DNS servers and
            # search list are everyone's (a SLAAC link no subnet names: Kea answers it too).
            return self._stateless_reply(message)
        if subnet is None:
            return Outcome6(ignored=Ignored6.NO_SUBNET)
        request = _Request(self, received, subnet, now)
        if request.subscriber_id is None and self.config.unknown_clients == "ignore":
            return Outcome6(ignored=Ignored6.UNKNOWN_CLIENT)
        return request.answer()

    def _stateless_reply(self, message: Message) -> Outcome6:
        """An Information-request from a link no subnet names: the section's options alone."""
        options = [option(OptionCode.SERVERID, self.server_duid)]
        if message.client_id is not None:
            options.append(option(OptionCode.CLIENTID, message.client_id))
        options += _config_options(self.config, None, message)
        return Outcome6(reply=Message(MessageType.REPLY, message.transaction_id, tuple(options)))

    # --- leasequery (RFC 5007)

    def _leasequery(self, received: Received6, now: float) -> Outcome6:
        """Who has an address (or the prefix holding it), or what one client (by DUID) holds:
        for a relay agent that lost its table (a BNG after a restart: the routes to its
        subscribers' delegated prefixes). Sent straight to us by one of ``leasequery_requesters``
        (a relayed one, or one from elsewhere, is dropped, as Kea does); answered to where it
        came from, with the lease's client data or a status saying why not."""
        message, source = received.message, received.source
        if received.relays or source is None or not any(source in n for n in self.config.leasequery_requesters):
            return Outcome6(ignored=Ignored6.LEASEQUERY_REFUSED)
        if message.client_id is None:
            return Outcome6(ignored=Ignored6.NO_CLIENT_ID)
        if message.server_id is not None and message.server_id != self.server_duid:
            return Outcome6(ignored=Ignored6.NOT_FOR_US)

        def reply(*options: Option) -> Outcome6:
            assert message.client_id is not None
            return Outcome6(reply=Message(MessageType.LEASEQUERY_REPLY, message.transaction_id, (
                option(OptionCode.SERVERID, self.server_duid), option(OptionCode.CLIENTID, message.client_id),
                *options)))

        raw = next((o.data for o in message.options if o.code == OptionCode.LQ_QUERY), None)
        try:
            question = decode_lq_query(raw) if raw is not None else None
            asked_address = (decode_ia_address(question.first(OptionCode.IAADDR) or b"").address
                             if question is not None and question.query_type == _QUERY_BY_ADDRESS else None)
        except DHCP6DecodeError as exc:
            return reply(encode_status(StatusCode.MALFORMED_QUERY, str(exc)))
        if question is None:
            return reply(encode_status(StatusCode.MALFORMED_QUERY, "no query option (44)"))
        link: Subnet6 | None = None
        if not question.link_address.is_unspecified:
            link = self.subnet_of_link(question.link_address)  # (as a Relay-forward's link-address)
            if link is None:
                return reply(encode_status(StatusCode.NOT_CONFIGURED, "not a configured link"))
        if asked_address is not None:
            held = self._holding(asked_address, now)
            if held is not None and (link is None or held.link == link.name):
                # With all else the client holds on that link (RFC 5007 §4.1.2.2): asked of a
                # subscriber's address, a BNG learns the prefix delegated to it too.
                on_link = [held, *(lease for lease in self._bound_to(held.duid, now)
                                   if lease.link == held.link and lease.prefix != held.prefix)]
                return reply(self._client_data(sorted(on_link, key=_by_kind), now),
                             encode_status(StatusCode.SUCCESS, "active lease found"))
            if not any(asked_address in s.prefix or self._pool_holding(asked_address, s) for s in self.config.subnet):
                return reply(encode_status(StatusCode.NOT_CONFIGURED, "address not in a configured link or pool"))
            return reply(encode_status(StatusCode.SUCCESS, "no active lease"))
        if question.query_type != _QUERY_BY_CLIENT_ID:
            return reply(encode_status(StatusCode.UNKNOWN_QUERY_TYPE, "unknown query-type"))
        duid = question.first(OptionCode.CLIENTID)
        if not duid:
            return reply(encode_status(StatusCode.MALFORMED_QUERY, "no client identifier (1) to ask by"))
        wanted = duid.hex(":")
        held_by = sorted((lease for lease in self._bound_to(wanted, now) if link is None or lease.link == link.name),
                         key=_by_kind)
        if not held_by:
            return reply(encode_status(StatusCode.SUCCESS, "no active leases"))
        links = sorted({lease.link for lease in held_by if lease.link is not None})
        if link is None and len(links) > 1:  # RFC 5007 §4.3.3: which links; ask again on one
            return reply(encode_addresses(OptionCode.LQ_CLIENT_LINK,
                                          [self.by_name[n].prefix.network_address for n in links if n in self.by_name]),
                         encode_status(StatusCode.SUCCESS, "active leases on more than one link"))
        return reply(self._client_data(held_by, now), encode_status(StatusCode.SUCCESS, "active leases found"))

    def _bound_to(self, duid: str, now: float) -> list[Lease6]:
        """The client's live bindings, each once."""
        found: dict[str, Lease6] = {}
        for key in self.ias_of.get(duid, ()):
            for prefix in self.by_ia.get(key, ()):
                lease = self.leases.get(prefix)
                if lease is not None and lease.duid == duid and _bound(lease, now):
                    found[prefix] = lease
        return list(found.values())

    def _holding(self, address: IPv6Address, now: float) -> Lease6 | None:
        """The live binding of ``address``, or of the delegated prefix that holds it."""
        value = int(address)
        # Every length a binding may have: the pools' and the reserved prefixes' (ReservedSpace
        # indexes both), an address's, and those of the bindings made before the config or the
        # reservations changed.
        lengths = {128} | self.reserved.lengths | self.binding_lengths
        for length in sorted(lengths, reverse=True):
            shift = 128 - length
            lease = self.leases.get(f"{IPv6Address(value >> shift << shift)}/{length}")
            if lease is not None and _bound(lease, now):
                return lease
        return None

    def _pool_holding(self, address: IPv6Address, subnet: Subnet6) -> bool:
        value = int(address)
        return any(pool.base <= value < pool.base + (pool.size << pool.shift)
                   for pool in self.pools.get(subnet.name, ()))

    def _client_data(self, leases: list[Lease6], now: float) -> Option:
        """OPTION_CLIENT_DATA: the client's DUID, each binding with its lifetimes left, and the
        seconds since the client was last heard of (its latest renewal)."""
        last = 0.0
        parts = [option(OptionCode.CLIENTID, bytes.fromhex(leases[0].duid.replace(":", "")))]
        for lease in leases:
            preferred, valid = max(0, int(lease.preferred_until - now)), max(0, int(lease.expires_at - now))
            network = _network(lease.prefix)
            parts.append(encode_lease(IAAddress(network.network_address, preferred, valid)
                                      if lease.kind is Lease6Kind.ADDRESS else IAPrefix(network, preferred, valid)))
            renewed = self.renewed_at.get(lease.prefix)
            if renewed is None:  # (loaded from the store: counted back from its end)
                subnet = self.by_name.get(lease.link) if lease.link is not None else None
                renewed = lease.expires_at - self.config.lifetimes(subnet)[1] if subnet is not None else lease.starts_at
            last = max(last, min(max(renewed, lease.starts_at), now))
        parts.append(uint32(OptionCode.CLT_TIME, max(0, int(now - last))))
        return option(OptionCode.CLIENT_DATA, encode_options(parts))

    def subnet_for(self, received: Received6) -> Subnet6 | None:
        if not received.relays:
            return self.by_interface.get(received.interface)
        # The link-address of the relay closest to the client (RFC 8415 §13.1); a relay that left
        # it :: (a PPPoE BNG, whose clients have no link of addresses) defers to the next one out.
        link = next((relay.link_address for relay in reversed(received.relays)
                     if not (relay.link_address.is_unspecified or relay.link_address.is_link_local)), None)
        if link is not None:
            return self.subnet_of_link(link)
        if received.source is not None:  # none said: the relay that sent it
            for subnet in self.config.subnet:
                if received.source in subnet.relay_addresses:
                    return subnet
        # A lightweight relay (RFC 6221 §5.3.1) always leaves the link-address ::, and sends from
        # the client's own link to ff02::1:2: the client is on the link it arrived on (heard at
        # all only with relays_on_client_links = "use"), as Kea takes it.
        return self.by_interface.get(received.interface)

    def subnet_of_link(self, link: IPv6Address) -> Subnet6 | None:
        """The subnet a link-address names: by its prefix, or as one of the relay addresses a
        BNG's link-address may be."""
        return next((s for s in self.config.subnet if link in s.prefix or link in s.relay_addresses), None)

    # --- expiry

    def _set(self, lease: Lease6) -> None:
        """``lease`` is the prefix's state now; look at it again when it expires (bound) or when it
        is to be forgotten (ended)."""
        self.leases[lease.prefix] = lease
        self._schedule(lease.prefix, self._due_time(lease))

    def _due_time(self, lease: Lease6) -> float:
        return lease.expires_at if lease.state is LeaseState.BOUND \
            else lease.expires_at + self.config.remember_ended_seconds

    def _schedule(self, prefix: str, due: float) -> None:
        """Look at ``prefix`` again at ``due``. One entry per prefix counts, the earliest: a
        renewal (a later due time) pushes nothing, and reclaim, finding the entry early, looks
        again at the due time then. Pushing at every renewal would grow the heap by one entry per
        Renew for a whole valid lifetime: a client renewing every second, thousands."""
        scheduled = self._due.get(prefix)
        if scheduled is not None and scheduled <= due:
            return
        self._due[prefix] = due
        heapq.heappush(self._timeline, (due, prefix))
        if len(self._timeline) > 2 * len(self._due) + 1024:  # entries superseded by earlier ones
            self._timeline = [(when, text) for text, when in self._due.items()]
            heapq.heapify(self._timeline)

    def _reschedule(self) -> None:
        self._timeline, self._due = [], {}
        for lease in self.leases.values():
            self._schedule(lease.prefix, self._due_time(lease))

    def reclaim(self, now: float) -> Outcome6:
        """Bindings whose valid lifetime is over: expired, to be written. Ended bindings older than
        ``remember_ended_seconds`` are forgotten (a client returning after that gets a new one):
        on a /64 pool the walk hands out new addresses for years, and memory must not grow with
        every client that ever came by. Each due binding costs a heap pop, not a walk of all."""
        outcome = Outcome6()
        timeline = self._timeline
        while timeline and timeline[0][0] <= now:
            due, prefix = heapq.heappop(timeline)
            if self._due.get(prefix) != due:
                continue  # an entry superseded by an earlier one, which was looked at then
            del self._due[prefix]
            lease = self.leases.get(prefix)
            if lease is None:
                continue
            if lease.state is LeaseState.BOUND and lease.expires_at <= now:
                ended = replace(lease, state=LeaseState.EXPIRED)
                self._set(ended)
                outcome.writes.append((ended, "expired"))
            elif lease.state is not LeaseState.BOUND and self._due_time(lease) <= now:
                self._forget(lease)
            else:  # renewed since it was scheduled
                self._schedule(prefix, self._due_time(lease))
            timeline = self._timeline  # (compacted, maybe)
        for prefix, (_key, until) in list(self.offers.items()):
            if self._lapsed(until, now):
                self.withdraw_offer(prefix)
        return outcome

    def withdraw_offer(self, prefix: str) -> None:
        """``prefix`` is offered to nobody now, nor the offer its IA remembers. An offer that lapsed
        and went to another IA before reclaim looked at it (a small pool, Solicits from clients
        that never Request) would otherwise leave the first IA's ``offered_to`` entry for good:
        one more with each such client, for the life of the daemon."""
        offer = self.offers.pop(prefix, None)
        if offer is not None and self.offered_to.get(offer[0]) == prefix:
            del self.offered_to[offer[0]]

    def _forget(self, lease: Lease6) -> None:
        del self.leases[lease.prefix]
        self.renewed_at.pop(lease.prefix, None)
        self._drop_from_history((lease.duid, lease.iaid, lease.kind), lease.prefix)

    def _drop_from_history(self, key: IAKey, prefix: str) -> None:
        history = self.by_ia.get(key)
        if history is not None:
            with contextlib.suppress(ValueError):
                history.remove(prefix)
            if not history:
                del self.by_ia[key]
                ias = self.ias_of.get(key[0])
                if ias is not None:
                    ias.discard(key)
                    if not ias:
                        del self.ias_of[key[0]]

    def pool_usage(self, now: float) -> list[tuple[str, str, int, int, int]]:
        """(pool, kind, size, bound now, declined now) for each pool."""
        counts: dict[str, list[int]] = {}
        for lease in self.leases.values():
            if lease.pool is not None and lease.held(now):
                row = counts.setdefault(lease.pool, [0, 0])
                row[0 if lease.state is LeaseState.BOUND else 1] += 1
        usage = []
        for pools in self.pools.values():
            for pool in pools:
                bound, declined = counts.get(pool.name, (0, 0))
                usage.append((pool.name, str(pool.kind), pool.size, bound, declined))
        return usage

    # --- allocation

    def free_for(self, prefix: str, key: IAKey, now: float, reservation: int | None = None,
                 subscriber: int | None = None) -> bool:
        """Whether the IA ``key`` may have ``prefix``: its client's reservation is ``reservation``,
        and ``subscriber``'s other reservations are its own too (a reservation's fixed prefix and
        another's fixed address in it)."""
        if self.reserved.networks and self.reserved.taken(_network(prefix), reservation, subscriber):
            return False
        if self.in_sessions and self._in_a_session(prefix, now):
            return False
        if not self._unheld_for(prefix, key, now):
            return False
        return not self.stray_lengths or prefix.endswith("/128") \
            or not self._overlaps_another_length(prefix, key, now, subscriber)

    def _a_pool_s(self, prefix: str) -> bool:
        """Whether ``prefix`` is one of a pool's prefixes as the pools are cut now."""
        network = _network(prefix)
        return any(pool.index_of(network) is not None for pools in self.pools.values() for pool in pools)

    def _overlaps_another_length(self, prefix: str, key: IAKey, now: float, subscriber: int | None) -> bool:
        """Whether another IA holds a delegated prefix of another length around ``prefix`` or inside
        it: a /56 bound before its pool was cut into /60s, held until its router's next renewal,
        must not have its first /60 go to another home (the same addresses routed to two). Only
        the lengths of such bindings are looked at (``stray_lengths``)."""
        network = _network(prefix)
        length, value = network.prefixlen, int(network.network_address)
        for other in self.stray_lengths:
            if other == length:
                continue  # (the prefix itself: _unheld_for)
            if other < length:
                shift = 128 - other
                if self._held_by_another(f"{IPv6Address(value >> shift << shift)}/{other}", key, now, subscriber):
                    return True
            elif 1 << (other - length) <= INSIDE_LOOKUPS:
                step = 1 << (128 - other)
                if any(self._held_by_another(f"{IPv6Address(value + index * step)}/{other}", key, now, subscriber)
                       for index in range(1 << (other - length))):
                    return True
            elif any(lease.kind is Lease6Kind.PREFIX and self._held_by_another(lease.prefix, key, now, subscriber)
                     and _network(lease.prefix).prefixlen == other and _network(lease.prefix).subnet_of(network)
                     for lease in list(self.leases.values())):
                return True
        return False

    def overlaps_another_s(self, prefix: str, key: IAKey, now: float, subscriber: int | None = None) -> bool:
        """Whether another IA holds a pool's prefix inside ``prefix`` or around it: a reserved /48
        whose /56s went to clients before it was reserved, say. Until they renew (and lose them)
        it is not given: the same addresses would be routed to two homes. A binding already
        ``key``'s needs no look: nobody gets a part of a reserved prefix after it is reserved.
        ``subscriber``'s own bindings do not count (its fixed address in its fixed prefix)."""
        current = self.leases.get(prefix)
        if current is not None and current.state is LeaseState.BOUND and current.expires_at > now \
                and (current.duid, current.iaid, current.kind) == key:
            return False
        network = _network(prefix)
        value, end = int(network.network_address), int(network.broadcast_address) + 1
        for pool in (pool for pools in self.pools.values() for pool in pools):
            pool_end = pool.base + (pool.size << pool.shift)
            if end <= pool.base or pool_end <= value:
                continue
            first = (max(value, pool.base) - pool.base) >> pool.shift
            last = (min(end, pool_end) - 1 - pool.base) >> pool.shift
            if last - first >= SCAN_LIMIT:  # (a /48 reserved over a pool of /64s): the bindings, not the pool
                return any(self._held_by_another(lease.prefix, key, now, subscriber)
                           and _network(lease.prefix).overlaps(network)
                           for lease in list(self.leases.values()) if lease.pool == pool.name)
            if any(self._held_by_another(pool.candidate(index), key, now, subscriber)
                   for index in range(first, last + 1)):
                return True
        return False

    def _held_by_another(self, prefix: str, key: IAKey, now: float, subscriber: int | None) -> bool:
        lease = self.leases.get(prefix)
        return lease is not None and lease.held(now) and (lease.duid, lease.iaid, lease.kind) != key \
            and (subscriber is None or lease.subscriber_id != subscriber)

    def _unheld_for(self, prefix: str, key: IAKey, now: float) -> bool:
        lease = self.leases.get(prefix)
        if lease is not None and lease.held(now) and (
                lease.state is LeaseState.DECLINED or (lease.duid, lease.iaid, lease.kind) != key):
            return False
        offer = self.offers.get(prefix)
        return offer is None or offer[0] == key or self._lapsed(offer[1], now)

    def _lapsed(self, until: float, now: float) -> bool:
        """Whether an offer held ``until`` is over ``now``: also one ending further off than an
        offer is ever held, made before the clock stepped back (NTP's first sync on a box that
        booted with a clock ahead): it would hold the address from everyone for the whole step."""
        return until <= now or until - now > self.config.offer_hold_seconds

    def allocate(self, pool: _Pool, key: IAKey, now: float, reservation: int | None = None) -> str | None:
        start = self.cursors.get(pool.name, 0)
        scanned = min(pool.size, SCAN_LIMIT)
        for step in range(scanned):
            index = (start + step) % pool.size
            candidate = pool.candidate(index)
            if self.free_for(candidate, key, now, reservation):
                self.cursors[pool.name] = (index + 1) % pool.size
                return candidate
        # The next allocation looks further on: a pool larger than one scan is not full because
        # one stretch of it is.
        self.cursors[pool.name] = (start + scanned) % pool.size
        return None


_HANDLED = frozenset({MessageType.SOLICIT, MessageType.REQUEST, MessageType.CONFIRM, MessageType.RENEW,
                      MessageType.REBIND, MessageType.RELEASE, MessageType.DECLINE, MessageType.INFORMATION_REQUEST})
_QUERY_BY_ADDRESS, _QUERY_BY_CLIENT_ID = 1, 2  # RFC 5007 §4.1.2.1


def _bound(lease: Lease6, now: float) -> bool:
    return lease.state is LeaseState.BOUND and lease.expires_at > now


def _by_kind(lease: Lease6) -> tuple[bool, int, str]:
    """Addresses first, then prefixes, each in IAID order (the order of a client's own reply)."""
    return lease.kind is not Lease6Kind.ADDRESS, lease.iaid, lease.prefix


_NEED_SERVER_ID = frozenset({MessageType.REQUEST, MessageType.RENEW, MessageType.RELEASE, MessageType.DECLINE})
_KIND_OF = {OptionCode.IA_NA: Lease6Kind.ADDRESS, OptionCode.IA_PD: Lease6Kind.PREFIX}
_NONE_AVAILABLE = {Lease6Kind.ADDRESS: (StatusCode.NO_ADDRS_AVAIL, "no addresses available"),
                   Lease6Kind.PREFIX: (StatusCode.NO_PREFIX_AVAIL, "no prefixes available")}


_FQDN_S, _FQDN_O, _FQDN_N = 0x01, 0x02, 0x04  # RFC 4704 §4.1: the Client FQDN option's flags


class _Request:
    """One message's handling: what it asks of which link, for whom."""

    def __init__(self, engine: DHCP6Engine, received: Received6, subnet: Subnet6, now: float) -> None:
        self.engine, self.received, self.subnet, self.now = engine, received, subnet, now
        self.message = received.message
        self.duid = (self.message.client_id or b"").hex(":")
        self.preferred, self.valid, self.t1, self.t2 = engine.config.lifetimes(subnet)
        closest = received.relays[-1] if received.relays else None
        interface_id = closest.interface_id if closest is not None else None
        remote_id = closest.remote_id if closest is not None else None
        self.interface_id = opaque_text(interface_id) if interface_id else None
        self.remote_id = opaque_text(remote_id[4:]) if remote_id is not None and len(remote_id) > 4 else None
        self.reservations = self._reservations()
        self.subscriber_id = self.reservations[0].subscriber_id if self.reservations else None
        self.outcome = Outcome6()
        self.ias_answered = {Lease6Kind.ADDRESS: 0, Lease6Kind.PREFIX: 0}
        self.addresses_given = 0  # IA_NA addresses in the reply (advertised or bound): a name goes with them

    def _reservations(self) -> list[Reservation]:
        """The client's reservations, the first naming its subscriber: its DUID's (a device), then
        its line's (Interface-ID, then Remote-ID of the relay closest to it)."""
        found = []
        for kind, key in ((ReservationKind.DUID, self.duid or None), (ReservationKind.CIRCUIT_ID, self.interface_id),
                          (ReservationKind.REMOTE_ID, self.remote_id)):
            if key is not None:
                reservation = self.engine.reservations.get((str(kind), key))
                if reservation is not None:
                    found.append(reservation)
        return found

    def _reserved(self, kind: Lease6Kind) -> tuple[str, Reservation] | None:
        """The fixed address or prefix of this kind of the first of the client's reservations
        that has one, the subscriber's own: a device reserved by its DUID for its host name
        still gets its line's /48."""
        for reservation in self.reservations:
            if reservation.subscriber_id != self.subscriber_id:
                continue
            if kind is Lease6Kind.ADDRESS and reservation.address6 and self._on_another_link(reservation.address6):
                # RFC 8415 §18.3.2: an address of another of our links is not for this one (a
                # device reserved by its DUID, plugged in elsewhere): routed to that link, it
                # would not reach the client, and a Confirm here would say NotOnLink of it. (One
                # of no link, inside the subscriber's own prefix say, is the operator's routing.)
                continue
            fixed = reservation.prefix6 if kind is Lease6Kind.PREFIX else (
                f"{reservation.address6}/128" if reservation.address6 else None)
            if fixed is not None:
                return fixed, reservation
        return None

    def _given_here(self, address: IPv6Address) -> bool:
        """Whether ``address``, outside the link's prefix, is one this client has here all the
        same: its reservation's fixed address of no link (inside its own prefix, say). Told
        NotOnLink of it, the client would drop it at every link-up, and get it back at once."""
        reserved = self._reserved(Lease6Kind.ADDRESS)
        return reserved is not None and _network(reserved[0]) == _address_network(address)

    def _on_another_link(self, address: str) -> bool:
        value = IPv6Address(address)
        return value not in self.subnet.prefix and any(value in s.prefix for s in self.engine.config.subnet)

    @property
    def served(self) -> bool:
        if self.subscriber_id is None:
            return True
        status = self.engine.subscriber_status.get(self.subscriber_id, SubscriberStatus.ACTIVE)
        return status is SubscriberStatus.ACTIVE

    def answer(self) -> Outcome6:
        kind = self.message.type
        if kind == MessageType.SOLICIT:
            commit = self.message.rapid_commit and (
                self.subnet.rapid_commit if self.subnet.rapid_commit is not None else self.engine.config.rapid_commit)
            options = [self._ia_reply(ia, commit=commit, drop_others=False) for ia in self.message.ias]
            options += self._client_fqdn()
            if commit:
                self._reply(MessageType.REPLY, [option(OptionCode.RAPID_COMMIT), *options])
            else:
                preference = self.engine.config.preference
                extra = [option(OptionCode.PREFERENCE, bytes([preference]))] if preference is not None else []
                self._reply(MessageType.ADVERTISE, [*options, *extra])
        elif kind in (MessageType.REQUEST, MessageType.RENEW, MessageType.REBIND):
            options = [self._ia_reply(ia, commit=True, drop_others=True) for ia in self.message.ias]
            self._reply(MessageType.REPLY, [*options, *self._client_fqdn()])
        elif kind == MessageType.RELEASE:
            self._reply(MessageType.REPLY, self._end_bindings(LeaseState.RELEASED, "released"))
        elif kind == MessageType.DECLINE:
            self._reply(MessageType.REPLY, self._end_bindings(LeaseState.DECLINED, "declined"))
        elif kind == MessageType.CONFIRM:
            addresses = [lease.address for ia in self.message.ias if ia.code == OptionCode.IA_NA
                         for lease in ia.leases if isinstance(lease, IAAddress)]
            if not addresses:
                self.outcome.ignored = Ignored6.NOTHING_TO_CONFIRM
                return self.outcome
            on_link = all(address in self.subnet.prefix or self._given_here(address) for address in addresses)
            status = encode_status(StatusCode.SUCCESS, "all addresses still on-link") if on_link \
                else encode_status(StatusCode.NOT_ON_LINK, "some addresses are not on this link")
            self._reply(MessageType.REPLY, [status], with_config=False)
        else:  # Information-request
            self._reply(MessageType.REPLY, [])
        return self.outcome

    def _reply(self, kind: int, body: list[Option], *, with_config: bool = True) -> None:
        options = [option(OptionCode.SERVERID, self.engine.server_duid)]
        if self.message.client_id is not None:
            options.append(option(OptionCode.CLIENTID, self.message.client_id))
        options += body
        options += self._ia_ta_refusals()
        if with_config:
            options += self._config_options()
        self.outcome.reply = Message(kind, self.message.transaction_id, tuple(options))

    def _ia_ta_refusals(self) -> list[Option]:
        if self.message.type not in (MessageType.SOLICIT, MessageType.REQUEST):
            return []
        refusals = []
        for raw in self.message.options:
            if raw.code == OptionCode.IA_TA and len(raw.data) >= 4:
                status = encode_status(StatusCode.NO_ADDRS_AVAIL, "no temporary addresses here")
                body = raw.data[:4] + status.code.to_bytes(2, "big") + len(status.data).to_bytes(2, "big") + status.data
                refusals.append(option(OptionCode.IA_TA, body))
        return refusals

    def _config_options(self) -> list[Option]:
        return _config_options(self.engine.config, self.subnet, self.message)

    # --- IAs

    def _ia_reply(self, ia: IA, *, commit: bool, drop_others: bool) -> Option:
        kind = _KIND_OF[OptionCode(ia.code)]
        key: IAKey = (self.duid, ia.iaid, kind)
        self.ias_answered[kind] += 1
        prefix = self._choose(ia, key, kind) if self.served and self.ias_answered[kind] <= MAX_IAS_PER_KIND else None
        given: list[IAAddress | IAPrefix] = []
        if prefix is not None:
            network = _network(prefix)
            self.engine.withdraw_offer(prefix)
            if commit:
                self._bind(prefix, key, kind)
                self.engine.offered_to.pop(key, None)
            else:
                self.engine.offers[prefix] = (key, self.now + self.engine.config.offer_hold_seconds)
                self.engine.offered_to[key] = prefix
            given.append(_lease_option(kind, network, self.preferred, self.valid))
            if kind is Lease6Kind.ADDRESS:
                self.addresses_given += 1
        if drop_others:  # RFC 8415 §18.3.4, §18.3.5: what the client may no longer use
            kept = {lease.prefix if isinstance(lease, IAPrefix) else _address_network(lease.address)
                    for lease in given}
            for lease in ia.leases:
                network = _address_network(lease.address) if isinstance(lease, IAAddress) else lease.prefix
                if network not in kept and not (network.network_address.is_unspecified
                                                and isinstance(lease, IAPrefix)):
                    given.append(_lease_option(kind, network, 0, 0))
                    self._end_if_ours(str(network), key)
        if prefix is None:
            return encode_ia(IA(ia.code, ia.iaid, 0, 0, tuple(given), _NONE_AVAILABLE[kind]))
        return encode_ia(IA(ia.code, ia.iaid, self.t1, self.t2, tuple(given)))

    def _client_fqdn(self) -> list[Option]:
        """RFC 4704 §6: the Client FQDN option back to a client that sent one, in an Advertise or
        Reply to its Solicit, Request, Renew or Rebind, its flags saying what we do with the name.
        Its address's name is published in our own DNS (AAAA and PTR, ``[dns.lease_names]``):
        S=1, and O=1 to a client that did not ask us to (S=0, or N=1: no updates at all). With no
        lease names, or no address in this reply (a delegated prefix has no name), nobody
        publishes it: N=1 (no updates by us; §4.1: S=0 with it), and O=1 to a client that asked
        us to (S=1), which may then update DNS itself. The name is the client's, as it sent it:
        the one its address takes. A name we do not take (not a host name's labels) is left out,
        as DHCPv4 leaves out option 81 then."""
        sent = next((o.data for o in self.message.options if o.code == OptionCode.CLIENT_FQDN), None)
        if not sent or self.message.hostname is None:
            return []
        flags = sent[0]
        if self.engine.publishes_names and self.addresses_given:
            reply_flags = _FQDN_S | (_FQDN_O if not flags & _FQDN_S or flags & _FQDN_N else 0)
        else:
            reply_flags = _FQDN_N | (_FQDN_O if flags & _FQDN_S and not flags & _FQDN_N else 0)
        return [option(OptionCode.CLIENT_FQDN, bytes((reply_flags,)) + sent[1:])]

    def _choose(self, ia: IA, key: IAKey, kind: Lease6Kind) -> str | None:
        engine, now = self.engine, self.now
        reserved = self._reserved(kind)
        if reserved is not None:  # the reserved address or prefix, in a pool or not (Kea's too)
            fixed, reservation = reserved
            if engine.free_for(fixed, key, now, reservation.id, reservation.subscriber_id) \
                    and not engine.overlaps_another_s(fixed, key, now, reservation.subscriber_id):
                return fixed
            # (held, or a part of it or a prefix around it, by a client that had it before the
            # reservation: until that one's next renewal, which takes it back, this client gets
            # one from the pools)
        pools = [pool for pool in engine.pools[self.subnet.name] if pool.kind is kind]
        if not pools:
            return None
        # From here on, no reserved space, the client's own reservation's either: it gets that
        # whole (above), and a part of it from a pool, kept at renewals, would hold it back.
        mine = None
        for previous in reversed(engine.by_ia.get(key, [])):  # the client's own, latest first
            if self._in_pools(previous, pools) and engine.free_for(previous, key, now, mine):
                return previous
        offered = engine.offered_to.get(key)  # what the Advertise said (the client may not repeat it)
        if offered is not None and self._in_pools(offered, pools) and engine.free_for(offered, key, now, mine):
            return offered
        for hint in ia.leases:  # RFC 8415 §18.3.1: the client's hint, if it can have it
            network = _address_network(hint.address) if isinstance(hint, IAAddress) else hint.prefix
            if not network.network_address.is_unspecified:
                text = str(network)
                if self._in_pools(text, pools) and engine.free_for(text, key, now, mine):
                    return text
        lengths = [hint.prefix.prefixlen for hint in ia.leases if isinstance(hint, IAPrefix)]
        ordered = sorted(pools, key=lambda pool: pool.length not in lengths)  # a pool of the hinted length first
        for pool in ordered:
            chosen = engine.allocate(pool, key, now, mine)
            if chosen is not None:
                return chosen
        return None

    @staticmethod
    def _in_pools(prefix: str, pools: list[_Pool]) -> bool:
        network = _network(prefix)
        return any(pool.index_of(network) is not None for pool in pools)

    def _pool_of(self, prefix: str) -> str | None:
        network = _network(prefix)
        return next((pool.name for pool in self.engine.pools[self.subnet.name] if pool.index_of(network) is not None),
                    None)

    def _bind(self, prefix: str, key: IAKey, kind: Lease6Kind) -> None:
        previous = self.engine.leases.get(prefix)
        ours = previous is not None and previous.state is LeaseState.BOUND and previous.expires_at > self.now \
            and (previous.duid, previous.iaid, previous.kind) == key
        lease = Lease6(
            prefix=prefix, kind=kind, state=LeaseState.BOUND, duid=key[0], iaid=key[1],
            starts_at=previous.starts_at if ours and previous is not None else self.now,
            preferred_until=self.now + self.preferred, expires_at=self.now + self.valid,
            subscriber_id=self.subscriber_id,
            hostname=self.message.hostname or (previous.hostname if ours and previous else None),
            link=self.subnet.name, pool=self._pool_of(prefix), remote_id=self.remote_id,
            interface_id=self.interface_id)
        self.engine._remember(lease)
        self.engine.renewed_at[prefix] = self.now
        self.outcome.writes.append((lease, "renewed" if ours else "granted"))

    def _end_if_ours(self, prefix: str, key: IAKey, state: LeaseState = LeaseState.RELEASED,
                     event: str = "released") -> bool:
        lease = self.engine.leases.get(prefix)
        if lease is None or (lease.duid, lease.iaid, lease.kind) != key or lease.state is not LeaseState.BOUND \
                or lease.expires_at <= self.now:
            return False
        until = self.now + self.engine.config.decline_quarantine_seconds if state is LeaseState.DECLINED else self.now
        ended = replace(lease, state=state, expires_at=until, preferred_until=min(lease.preferred_until, until))
        self.engine._set(ended)
        self.outcome.writes.append((ended, event))
        return True

    def _end_bindings(self, state: LeaseState, event: str) -> list[Option]:
        """Release or Decline (RFC 8415 §18.3.7, §18.3.8): the listed bindings of this client end."""
        refused: list[Option] = []
        for ia in self.message.ias:
            if state is LeaseState.DECLINED and ia.code == OptionCode.IA_PD:
                # §18.2.8: a client declines addresses it found in use on its link; a delegated
                # prefix is no address of the link, and quarantining it would let one router
                # take a prefix a day out of the pool with each Decline. It is left as it is.
                continue
            kind = _KIND_OF[OptionCode(ia.code)]
            key: IAKey = (self.duid, ia.iaid, kind)
            ended = 0
            for lease in ia.leases:
                network = _address_network(lease.address) if isinstance(lease, IAAddress) else lease.prefix
                if self._end_if_ours(str(network), key, state, event):
                    ended += 1
                    if state is LeaseState.DECLINED:
                        self.outcome.declined += 1
            if not ended:
                no_binding = (StatusCode.NO_BINDING, "no binding for this IA")
                refused.append(encode_ia(IA(ia.code, ia.iaid, 0, 0, (), no_binding)))
        done = "released" if state is LeaseState.RELEASED else "declined"
        return [encode_status(StatusCode.SUCCESS, f"addresses {done}"), *refused]


def _config_options(config: DHCP6Config, subnet: Subnet6 | None, message: Message) -> list[Option]:
    """DNS servers (23) and the search list (24) of ``subnet`` (None: the section's), those asked for."""
    wanted = set(message.requested_options)
    options = []
    dns = config.dns_servers_of(subnet)
    if dns and OptionCode.DNS_SERVERS in wanted:
        options.append(encode_addresses(OptionCode.DNS_SERVERS, dns))
    search = config.domain_search_of(subnet)
    if search and OptionCode.DOMAIN_LIST in wanted:
        options.append(encode_domain_list(search))
    return options


def _lease_option(kind: Lease6Kind, network: IPv6Network, preferred: int, valid: int) -> IAAddress | IAPrefix:
    if kind is Lease6Kind.ADDRESS:
        return IAAddress(network.network_address, preferred, valid)
    return IAPrefix(network, preferred, valid)
