"""The DHCPv4 server's decisions: (received message, lease table, now) → reply, writes, events.

Theory of operation
-------------------
The engine owns the in-memory lease table (``pool.LeaseTable``), the subnets and pools built from
``[dhcp]``, the reservations and each reserved subscriber's status. ``handle`` is synchronous and
never touches a socket, the store or the clock: the transport passes ``now``, sends the reply the
engine returns, and before sending it makes the returned lease records durable (every ACK is in
the store before the client hears of it).

Per message (RFC 2131 §4.3):
  DISCOVER  choose an address (reservation, then the client's previous address, then the
            requested one, then a fresh one) and hold it for ``offer_hold_seconds``; OFFER.
  REQUEST   SELECTING (server id present): ACK if it names us and the address is still fine,
            silence if it names another server (our offer is withdrawn), NAK otherwise.
            INIT-REBOOT (requested address, no ciaddr), RENEWING / REBINDING (ciaddr): ACK if
            the address is on the client's subnet, in a pool of the client's class and held by
            nobody else, else NAK. We are authoritative for our subnets: an address that is free
            is confirmed even without a record (so clients keep their address if the store was
            lost), where RFC 2131 §4.3.2 lets a non-authoritative server stay silent.
  DECLINE   the address is quarantined for ``decline_quarantine_seconds`` and never offered
            to that client again.
  RELEASE   the lease ends now; the address goes to the back of its pool's queue.
  INFORM    ACK with the configuration options only (RFC 2131 §3.4).
  IPv6-only (RFC 8925): a DISCOVER, or a REQUEST without ciaddr, from a client that asks for
            option 108 where its pool serves it: OFFER or ACK with yiaddr 0.0.0.0 and option
            108, nothing allocated or written (``_ipv6_only_pool``).

The client is identified by option 61 when present, else by chaddr (RFC 2131 §4.2; its hlen
bytes, not the htype, which the store does not keep: ``_mac_key``), and dropped with neither
(hlen 0 and no option 61); a lease taken with no option 61 is also the client's that sends one
from that chaddr (as Kea's belongsToClient: dhclient then dhcpcd on one host keeps its address).
Its class decides the pools it may use: a reservation (by client-id, MAC, circuit-id, remote-id
— in that order) names a subscriber; an active subscriber gets the normal pools (and its
reserved address), a suspended one the walled-garden pools; a client with no reservation, or a
closed subscriber's, follows ``unknown_clients``. A class change is applied at the next REQUEST
by a NAK, which sends the client back to DISCOVER and into the right pool. Besides, the
operator's client classes (``[[dhcp.client_class]]``: by vendor class identifier, MAC prefix,
the relay's circuit-id or remote-id) add options and open the pools kept for them.

Options: the subnet mask and broadcast address from the subnet; then the global options, the
subnet's, the pool's and the client's classes', each replacing what the one before set for a code
— except in a walled-garden pool, whose options the classes' only add to (never replace: the
garden's DNS servers and routers are what keeps a suspended subscriber in it).

Replies go where RFC 2131 §4.1 says: the ACK to an INFORM to its ciaddr (§4.3.5, relayed or
not); to the relay (giaddr) when relayed; NAK broadcast, except to a renewal unicast from
ciaddr: back to ciaddr (the client may be behind a relay); to ciaddr when the client has an
address; broadcast when it asks; otherwise unicast to yiaddr at the link layer (the transport
writes the frame itself).

A relay's server identifier override (RFC 5107, option 82 sub-option 11) names the server in
the replies it relays: the relay's address, so that the client's renewals go to the relay (a BNG
that keeps its subscribers' state from what it relays) and come to us relayed.

With rapid commit on (RFC 4039), a DISCOVER that carries option 80 is answered as a REQUEST for
the address it would have been offered: ACK with option 80, the lease durable first.

LEASEQUERY (RFC 4388), from the relays in ``leasequery_requesters`` only: by address, MAC or
client-id, answered from the lease table (``_leasequery``).

Not done here: BOOTP clients (no option 53), RFC 4361 DUID client ids beyond their raw bytes,
bulk and active leasequery (RFC 6926, 7724: over TCP).
"""

from __future__ import annotations

import contextlib
import itertools
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ispd.dhcp.codec import BOOTREPLY, BOOTREQUEST, FLAG_BROADCAST, UNSPECIFIED, DHCPPacket
from ispd.dhcp.config import (
    ClientClassConfig,
    ClientOptions,
    DHCPConfig,
    DHCPOption,
    PoolConfig,
    SubnetConfig,
    mac_prefix_bytes,
)
from ispd.dhcp.identifiers import mac_text, opaque_bytes, opaque_text
from ispd.dhcp.options import (
    DHCPMessageType,
    Option,
    OptionValueError,
    RelayAgentInfo,
    decode_client_fqdn,
    decode_relay_agent_info,
    encode_classless_routes,
    encode_ips,
    encode_u16,
    encode_u32,
)
from ispd.dhcp.pool import AddressPool, Binding, BindingState, LeaseTable
from ispd.events import Event, LeaseEnded, LeaseGranted
from ispd.store.models import Lease, LeaseService, LeaseState, Reservation, SubscriberStatus
from ispd.store.validation import hostname_text

BROADCAST_ADDRESS = IPv4Address("255.255.255.255")
RELAY_CACHE_SIZE = 4096


class Ignored(StrEnum):
    """Why a well-formed message got no reply (a metric label: keep it closed)."""

    NOT_A_REQUEST = "not_a_request"
    NO_MESSAGE_TYPE = "no_message_type"
    NO_SUBNET = "no_subnet"
    NO_SERVER_ADDRESS = "no_server_address"
    CLIENT_IGNORED = "client_ignored"
    NO_ADDRESS = "pool_exhausted"
    NO_POOL = "no_pool"  # the subnet has no pool for the client's class (a suspended one: no walled garden)
    OTHER_SERVER = "other_server"
    UNKNOWN_LEASE = "unknown_lease"
    BAD_REQUEST = "bad_request"
    BAD_RELAY_INFO = "bad_relay_info"
    HELD_ELSEWHERE = "held_by_radius"  # the store refused the lease: a RADIUS session has the address
    LEASEQUERY_REFUSED = "leasequery_not_allowed"  # giaddr not in leasequery_requesters (or none)
    BAD_LEASEQUERY = "bad_leasequery"  # none of ciaddr, chaddr and client-id to ask by
    NO_CLIENT_IDENTITY = "no_client_identity"  # no hardware address (hlen 0) and no client-id


class ClientClass(Enum):
    NORMAL = "normal"
    WALLED_GARDEN = "walled-garden"
    IGNORED = "ignored"


class Destination(Enum):
    RELAY = "relay"          # to giaddr, server port
    UNICAST = "unicast"      # to ciaddr, client port
    BROADCAST = "broadcast"  # 255.255.255.255 on the receiving interface
    LINK = "link"            # to yiaddr at chaddr, by a frame the transport writes


@dataclass(frozen=True, slots=True)
class Received:
    packet: DHCPPacket
    interface: str
    interface_address: IPv4Address | None
    # The IP destination the datagram was sent to (IP_PKTINFO); None when not known. A broadcast
    # came from the receiving link itself, whatever its ciaddr says (RFC 2131 §4.3.2).
    destination: IPv4Address | None = None
    # The IP source it came from; None when not known.
    source: IPv4Address | None = None
    # Its UDP source port; None when not known.
    source_port: int | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    packet: DHCPPacket
    destination: Destination
    address: IPv4Address
    server_address: IPv4Address
    # The destination port when not the usual one (RFC 8357: a relay listening on its own port).
    port: int | None = None


@dataclass(slots=True)
class Outcome:
    reply: Reply | None = None
    # Durable before the reply is sent.
    writes: list[tuple[Lease, str]] = field(default_factory=list)
    # Published once the writes are durable.
    events: list[Event] = field(default_factory=list)
    ignored: Ignored | None = None
    declined: bool = False
    untrusted_option82: bool = False  # the request's option 82 came from no relay, and was not used
    exhausted_pools: tuple[str, ...] = ()  # NO_ADDRESS: the pools that had no address for the client
    unserved: tuple[str, str] | None = None  # NO_POOL: (the subnet, the client's class)
    ipv6_only: int | None = None  # an IPv6-only answer (RFC 8925): the seconds option 108 told the client


@dataclass(slots=True)
class ServedPool:
    allocator: AddressPool
    options: dict[int, bytes]
    lease_seconds: int
    renew_seconds: int
    rebind_seconds: int
    # Codes sent whether asked for or not (always_send), in the order they are sent.
    always: tuple[int, ...] = ()
    # Names of the client classes it is kept for; empty: anyone's.
    classes: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.allocator.name


@dataclass(slots=True)
class Subnet:
    network: IPv4Network
    first: int
    last: int
    interface: str | None
    relay_addresses: frozenset[int]
    server_id: IPv4Address | None
    rapid_commit: bool
    pools: list[ServedPool]
    # Addresses no client may have, whatever a reservation says: the network and broadcast
    # addresses, the routers and the server identifier. Reservations live in the store, not the
    # config, so check-config cannot catch one of these; a client given one would be cut off
    # (the broadcast address) or cut off its link (the router's).
    unleasable: frozenset[int]
    # For addresses outside every pool (reserved ones): the subnet's own options and times.
    plain: ServedPool
    # The pools open to anyone, (normal ones, walled-garden ones): all that a client in no
    # class may use, found without a look at each pool per DISCOVER.
    open_pools: tuple[list[ServedPool], list[ServedPool]]
    # Whether option 108 (IPv6-only preferred, RFC 8925) is served anywhere here (a pool, the
    # subnet, a client class): if not, a DISCOVER is not looked at for it.
    ipv6_only: bool = False

    def contains(self, address: int) -> bool:
        return self.first <= address <= self.last

    def pools_for(self, client: Client) -> list[ServedPool]:
        """The pools a new address may come from, in order: those kept for the client's classes
        first (else a set-top box would land in the open pool listed before its own), then the
        ones open to anyone."""
        garden = client.client_class is ClientClass.WALLED_GARDEN
        if not client.classes:
            return self.open_pools[garden]
        usable = [p for p in self.pools if p.allocator.walled_garden == garden and client.may_use(p)]
        return sorted(usable, key=lambda p: not p.classes)

    def pool_of(self, address: int) -> ServedPool | None:
        for pool in self.pools:
            if address in pool.allocator:
                return pool
        return None


@dataclass(frozen=True, slots=True)
class ClassRule:
    """A ``[[dhcp.client_class]]``, ready to match requests."""

    name: str
    vendor_prefixes: tuple[bytes, ...] | None
    mac_prefixes: tuple[bytes, ...] | None
    options: dict[int, bytes]
    always: frozenset[int]
    # The relay's circuit-id and remote-id, as bytes: the canonical text of a whole id is
    # "0x" and hex as soon as one byte is not printable, so text prefixes would miss
    # "olt1 biz/1/3" followed by a NUL, and a hex prefix of printable bytes would miss all.
    circuit_prefixes: tuple[bytes, ...] | None = None
    remote_prefixes: tuple[bytes, ...] | None = None
    user_prefixes: tuple[bytes, ...] | None = None

    @classmethod
    def of(cls, config: ClientClassConfig) -> ClassRule:
        options, always = _options_of(config.option)
        vendors = None if config.vendor_class is None else tuple(v.encode() for v in config.vendor_class)
        macs = None if config.mac_prefix is None else tuple(mac_prefix_bytes(m) for m in config.mac_prefix)
        circuits = None if config.circuit_id is None else tuple(opaque_bytes(c) for c in config.circuit_id)
        remotes = None if config.remote_id is None else tuple(opaque_bytes(r) for r in config.remote_id)
        users = None if config.user_class is None else tuple(u.encode() for u in config.user_class)
        return cls(config.name, vendors, macs, options, frozenset(always), circuits, remotes, users)

    def matches(self, vendor_class: bytes | None, hw_address: bytes, circuit_id: str | None,
                remote_id: str | None, user_class: bytes | None = None) -> bool:
        """Whether a client matches every criterion the class gives (each a list of prefixes);
        ``circuit_id`` and ``remote_id`` in their canonical text (``opaque_text``)."""
        return (_begins(vendor_class, self.vendor_prefixes) and _begins(hw_address, self.mac_prefixes)
                and _begins_opaque(circuit_id, self.circuit_prefixes)
                and _begins_opaque(remote_id, self.remote_prefixes)
                and (self.user_prefixes is None
                     or any(_begins(c, self.user_prefixes) for c in _user_classes(user_class))))


def _user_classes(value: bytes | None) -> list[bytes]:
    """Option 77 as sent (iPXE's bare "iPXE") and, when it parses as one, each class of an RFC
    3004 list (a length before each)."""
    if value is None:
        return []
    classes, i = [value], 0
    while i < len(value):
        end = i + 1 + value[i]
        if value[i] == 0 or end > len(value):
            return classes[:1]
        classes.append(value[i + 1 : end])
        i = end
    return classes


def _begins(value: Any, prefixes: tuple[Any, ...] | None) -> bool:
    """No criterion, or ``value`` (bytes or text) begins with one of ``prefixes``."""
    return prefixes is None or (value is not None and value.startswith(prefixes))


def _begins_opaque(text: str | None, prefixes: tuple[bytes, ...] | None) -> bool:
    if prefixes is None:
        return True
    if text is None:
        return False
    try:
        return opaque_bytes(text).startswith(prefixes)
    except ValueError:  # no canonical text (a lease row written by hand): no line to match
        return False


@dataclass(frozen=True, slots=True)
class Client:
    """Who sent a message: its lease key, identities, class and reservation."""

    key: bytes
    hw_address: str
    client_id: str | None
    circuit_id: str | None
    remote_id: str | None
    relay_info: bytes | None
    client_class: ClientClass
    reservation: Reservation | None
    # The operator's classes it is in, in their config order.
    classes: tuple[ClassRule, ...] = ()
    # For a client that sends a client-id: the key its hardware address gives, by which a lease
    # it took before it sent one is held (dhclient then dhcpcd on one host, a firmware update).
    # That lease has no client-id to tell its owner by, so its MAC does (Kea's belongsToClient
    # too): the client keeps its address, where it got a second one and its first stayed bound,
    # out of the pool, to the end of its lease.
    mac_key: bytes | None = None

    def may_use(self, pool: ServedPool) -> bool:
        return not pool.classes or any(rule.name in pool.classes for rule in self.classes)

    def holds(self, binding: Binding, now: float) -> bool:
        """Whether ``binding`` (an offer or a lease in force) is this client's."""
        return binding.held_by(self.key, now) or (self.mac_key is not None and binding.held_by(self.mac_key, now))

    def is_keyed(self, binding: Binding) -> bool:
        return binding.client_key is not None and binding.client_key in (self.key, self.mac_key)


def _echoed(packet: DHCPPacket, client: Client) -> list[tuple[int, bytes]]:
    """What a reply repeats of the request: the client identifier (RFC 6842: a client that
    shares its hardware address with others tells its replies by it), the subnet selection
    (RFC 3011 §3: a server that supports it returns an identical copy, asked for or not, and
    the client discards an OFFER or ACK without it) and the relay agent information, which goes
    last (RFC 3046 §2.2)."""
    echoed: list[tuple[int, bytes]] = []
    client_id = packet.option(Option.CLIENT_ID)
    if client_id:  # an empty one identifies nobody (_identify falls back to chaddr): not echoed
        echoed.append((Option.CLIENT_ID, client_id))
    selection = packet.option(Option.SUBNET_SELECTION)
    if selection is not None and len(selection) == 4:  # the form _select_subnet reads; else unused
        echoed.append((Option.SUBNET_SELECTION, selection))
    if client.relay_info is not None:
        echoed.append((Option.RELAY_AGENT_INFO, client.relay_info))
    return echoed


def clean_hostname(raw: str) -> str | None:
    """A client-supplied name fit for DNS (the store's rule, ``hostname_text``); None if it is
    not. Trailing NULs go first: some clients count one in the option (Kea trims them too)."""
    try:
        return hostname_text(raw.rstrip("\x00").strip().rstrip("."))
    except ValueError:
        return None


def _first_label(hostname: str) -> str:
    return hostname.split(".", 1)[0].lower()


def _u8(value: int) -> bytes:
    return bytes((value,))


def _options_of(options: Iterable[DHCPOption]) -> tuple[dict[int, bytes], set[int]]:
    """Values by code, and the codes to send unasked."""
    # (never option 108 unasked, RFC 8925 §3.3, whatever always_send says: DHCPOption.ipv6_only_warning)
    return ({o.code: o.encoded() for o in options},
            {o.code for o in options if o.always_send and o.code != Option.IPV6_ONLY_PREFERRED})


def _settings_options(level: ClientOptions) -> dict[int, bytes | None]:
    """What the named settings of one level write (None: set empty, so none is sent)."""
    written: dict[int, bytes | None] = {}
    for code, name in ((Option.ROUTERS, "routers"), (Option.DNS_SERVERS, "dns_servers"),
                       (Option.NTP_SERVERS, "ntp_servers")):
        addresses = getattr(level, name)
        if addresses is not None:
            written[code] = encode_ips(addresses) if addresses else None
    if level.domain_name is not None:
        written[Option.DOMAIN_NAME] = level.domain_name.encode("ascii")
    if level.mtu is not None:
        written[Option.INTERFACE_MTU] = encode_u16(level.mtu)
    if level.captive_portal is not None:
        written[Option.CAPTIVE_PORTAL] = level.captive_portal.encode("ascii")
    if level.ipv6_only_preferred_seconds is not None:  # (0: off here)
        written[Option.IPV6_ONLY_PREFERRED] = encode_u32(level.ipv6_only_preferred_seconds) \
            if level.ipv6_only_preferred_seconds else None
    if level.static_routes is not None:
        written[Option.CLASSLESS_STATIC_ROUTES] = encode_classless_routes(
            (r.destination, r.router) for r in level.static_routes) or None
    return written


def _served_pool(allocator: AddressPool, subnet: SubnetConfig, pool: PoolConfig | None, dhcp: DHCPConfig) -> ServedPool:
    options: dict[int, bytes] = {
        Option.SUBNET_MASK: subnet.network.netmask.packed,
        Option.BROADCAST_ADDRESS: subnet.network.broadcast_address.packed,
    }
    global_options, always = _options_of(dhcp.option)
    options.update(global_options)
    for level in (subnet, pool):  # the pool's settings and options replace the subnet's
        if level is None:
            continue
        for code, value in _settings_options(level).items():
            always.discard(code)
            if value is None:
                options.pop(code, None)
            else:
                options[code] = value
        level_options, level_always = _options_of(level.option)
        options.update(level_options)
        always = (always - level_options.keys()) | level_always
    # (T1 and T2 that do not fit the lease fall back to 1/2 and 7/8: check-config warns of them)
    lease, renew, rebind, _ = dhcp.lease_times(subnet, pool)
    return ServedPool(allocator, options, lease, renew, rebind, tuple(sorted(always)),
                      frozenset(pool.client_classes) if pool is not None else frozenset())


def build_subnets(config: DHCPConfig) -> list[Subnet]:
    subnets = []
    by_classes = any(o.code == Option.IPV6_ONLY_PREFERRED for c in config.client_class for o in c.option)
    for sc in config.subnet:
        pools = [
            _served_pool(AddressPool(p.name, int(p.first), int(p.last), walled_garden=p.walled_garden), sc, p, config)
            for p in sc.pool
        ]
        plain = _served_pool(AddressPool("", 1, 0), sc, None, config)
        open_pools = [p for p in pools if not p.classes]
        unleasable = {int(address) for address in config.never_leased(sc)}
        subnets.append(Subnet(
            network=sc.network, first=int(sc.network.network_address), last=int(sc.network.broadcast_address),
            interface=sc.interface, relay_addresses=frozenset(int(a) for a in sc.relay_addresses),
            server_id=sc.server_id, rapid_commit=config.rapid_commit if sc.rapid_commit is None else sc.rapid_commit,
            pools=pools, unleasable=frozenset(unleasable), plain=plain,
            open_pools=([p for p in open_pools if not p.allocator.walled_garden],
                        [p for p in open_pools if p.allocator.walled_garden]),
            ipv6_only=by_classes or any(Option.IPV6_ONLY_PREFERRED in p.options for p in (*pools, plain)),
        ))
    return subnets


def _relay_port(received: Received) -> int | None:
    """RFC 8357 §5.1: a relay that sends from a port other than 67 (several relay instances on
    one BNG, an unprivileged relay) says so by sub-option 19, and listens there for the reply."""
    info = received.packet.option(Option.RELAY_AGENT_INFO)
    if info is None or not received.source_port:
        return None
    try:
        return received.source_port if decode_relay_agent_info(info).relay_source_port else None
    except OptionValueError:
        return None


def _relay_agent_info(binding: Binding) -> bytes:
    """Option 82 as the relay sent it at the lease's grant, from the circuit-id and remote-id kept."""
    value = b""
    for code, text in ((1, binding.circuit_id), (2, binding.remote_id)):
        if text:
            with contextlib.suppress(ValueError):
                raw = opaque_bytes(text)[:255]
                value += bytes((code, len(raw))) + raw
    return value


def _mac_key(hw_address: bytes) -> bytes:
    """The lease key of a client known by its hardware address: the address alone, not its htype,
    which the store does not keep. With the htype in the key (and Ethernet's assumed for a stored
    lease), a client of another hardware type (IEEE 802, htype 6) lost its lease at every restart:
    its renewal was NAKed as someone else's address, which stayed bound until it expired. (A MAC
    reservation and a leasequery by MAC take the address alone too.)"""
    return b"h" + hw_address


def _stored_client_key(lease: Lease) -> bytes | None:
    """The lease key of a stored lease's client (``_mac_key``: the store has no htype, nor needs one)."""
    try:
        if lease.client_id:
            return b"c" + bytes.fromhex(lease.client_id)
        if lease.hw_address:
            return _mac_key(bytes.fromhex(lease.hw_address.replace(":", "")))
    except ValueError:
        return None
    return None


_STATE_OF = {
    LeaseState.BOUND: BindingState.BOUND,
    LeaseState.RELEASED: BindingState.RELEASED,
    LeaseState.EXPIRED: BindingState.EXPIRED,
    LeaseState.DECLINED: BindingState.DECLINED,
}
_LEASE_STATE_OF = {v: k for k, v in _STATE_OF.items()}


class DHCPEngine:
    def __init__(self, config: DHCPConfig, *, publishes_names: bool = True) -> None:
        self.config = config
        # Whether a lease's host name is published in DNS ([dns.lease_names] has a domain): the
        # client FQDN echo's S bit says so (RFC 4702 §2.1), and a client told S=1 leaves its
        # own updates to us.
        self.publishes_names = publishes_names
        self.subnets = build_subnets(config)
        self.class_rules = [ClassRule.of(c) for c in config.client_class]
        self.table = LeaseTable()
        self.reservations: dict[tuple[str, str], Reservation] = {}
        self._reservation_keys: dict[int, tuple[str, str]] = {}  # reservation id -> its key above
        self.reserved_addresses: dict[int, Reservation] = {}
        # Host names reservations give (their first label, lowercase): no other client may take
        # one for its lease, and with it the name in DNS (as dnsmasq keeps configured names). Each
        # with every reservation that gives it: one subscriber's may share one (a router's MAC and
        # its DUID), and the name stays reserved until the last of them is gone.
        self.reserved_hostnames: dict[str, list[Reservation]] = {}
        self.subscriber_status: dict[int, SubscriberStatus] = {}
        self._by_relay: dict[int, Subnet | None] = {}

    # --- state from the store and the bus

    def load(self, leases: Iterable[Lease], reservations: Iterable[Reservation],
             statuses: dict[int, SubscriberStatus]) -> None:
        self.subscriber_status = dict(statuses)
        for reservation in reservations:
            self.add_reservation(reservation)
        for lease in sorted(leases, key=lambda le: le.expires_at):
            try:
                address = int(IPv4Address(lease.address))
            except ValueError:
                continue
            foreign = lease.service != LeaseService.DHCP
            self.table.put(Binding(
                address=address, state=_STATE_OF[lease.state], expires_at=lease.expires_at,
                client_key=None if lease.state is LeaseState.DECLINED or foreign else _stored_client_key(lease),
                starts_at=lease.starts_at, hw_address=lease.hw_address, client_id=lease.client_id,
                hostname=lease.hostname, subscriber_id=lease.subscriber_id, circuit_id=lease.circuit_id,
                remote_id=lease.remote_id, pool=lease.pool, foreign=foreign,
            ))
        self._requeue_all()

    def reconfigure(self, config: DHCPConfig) -> None:
        """New subnets and pools; the lease table (what clients hold) is kept."""
        self.config = config
        self.subnets = build_subnets(config)
        self.class_rules = [ClassRule.of(c) for c in config.client_class]
        self._by_relay.clear()
        self._requeue_all()

    def _requeue_all(self) -> None:
        # Ended leases, oldest first, so that the ones ended longest ago are reused first.
        for binding in sorted(self.table.by_address.values(), key=lambda b: b.expires_at):
            if binding.state is not BindingState.BOUND:
                pool = self._pool_of(binding.address)
                if pool is not None:
                    pool.allocator.returned(binding.address)

    def held_elsewhere(self, address: str, expires_at: float, subscriber_id: int | None = None, *,
                       refused: bool = False, now: float = 0.0) -> None:
        """Another service holds ``address`` until ``expires_at``: what we had there (an offer, or
        the lease the store just ``refused``) is gone. Not so for an announcement (not
        ``refused``) that finds a lease of ours live at ``now``: the store, which refuses what
        another holds, gave it to our client after that announcement was made."""
        try:
            value = int(IPv4Address(address))
        except ValueError:
            return
        current = self.table.get(value)
        if not refused and current is not None and not current.foreign \
                and current.state is BindingState.BOUND and current.expires_at > now:
            return
        # Out of the allocator's queue while held (its queue entry, if any, is dropped when
        # reached); back in it when the hold ends (reclaim) or the other service lets go.
        self.table.put(Binding(value, BindingState.BOUND, expires_at, None, subscriber_id=subscriber_id,
                               foreign=True))

    def freed_elsewhere(self, address: str) -> None:
        """The other service let ``address`` go."""
        try:
            value = int(IPv4Address(address))
        except ValueError:
            return
        binding = self.table.get(value)
        if binding is not None and binding.foreign and binding.state is BindingState.BOUND:
            binding.state = BindingState.RELEASED
            self._requeue(value)

    def _requeue(self, address: int) -> None:
        pool = self._pool_of(address)
        if pool is not None:
            pool.allocator.returned(address)

    def add_reservation(self, reservation: Reservation) -> None:
        ident = (str(reservation.kind), reservation.key)
        replaced = self.reservations.get(ident)
        if replaced is not None:  # (announced twice, or its key given anew: one claim on a name)
            self._unreserve_hostname(replaced)
        self.reservations[ident] = reservation
        self._reservation_keys[reservation.id] = ident
        if reservation.hostname:
            self.reserved_hostnames.setdefault(_first_label(reservation.hostname), []).append(reservation)
        if reservation.address:
            with contextlib.suppress(ValueError):
                self.reserved_addresses[int(IPv4Address(reservation.address))] = reservation

    def remove_reservation(self, reservation_id: int) -> None:
        # By id, not by a walk of them all: a RADIUS prefix pool filling reserved logins' reservations
        # sends a change (a removal and an add) per login, on the loop DHCP serves from.
        ident = self._reservation_keys.pop(reservation_id, None)
        reservation = self.reservations.get(ident) if ident is not None else None
        if ident is None or reservation is None or reservation.id != reservation_id:  # (its key another's since)
            return
        del self.reservations[ident]
        self._unreserve_hostname(reservation)
        if reservation.address:
            address = int(IPv4Address(reservation.address))
            if self.reserved_addresses.get(address) is reservation:
                del self.reserved_addresses[address]
                pool = self._pool_of(address)
                if pool is not None:
                    pool.allocator.returned(address)

    def _unreserve_hostname(self, reservation: Reservation) -> None:
        """The host name ``reservation`` gives is no longer reserved by it (by another one that
        gives it too, it still is)."""
        if not reservation.hostname:
            return
        name = _first_label(reservation.hostname)
        holders = [r for r in self.reserved_hostnames.get(name, ()) if r.id != reservation.id]
        if holders:
            self.reserved_hostnames[name] = holders
        else:
            self.reserved_hostnames.pop(name, None)

    def remove_subscriber(self, subscriber_id: int) -> None:
        for reservation in list(self.reservations.values()):
            if reservation.subscriber_id == subscriber_id:
                self.remove_reservation(reservation.id)
        self.subscriber_status.pop(subscriber_id, None)

    def set_subscriber_status(self, subscriber_id: int, status: SubscriberStatus) -> None:
        self.subscriber_status[subscriber_id] = status

    # --- the protocol

    def handle(self, received: Received, now: float) -> Outcome:
        packet = received.packet
        if packet.op != BOOTREQUEST:
            return Outcome(ignored=Ignored.NOT_A_REQUEST)
        message_type = packet.message_type
        if message_type is None:
            return Outcome(ignored=Ignored.NO_MESSAGE_TYPE)
        if message_type is DHCPMessageType.LEASEQUERY:
            return self._leasequery(received, now)
        if not packet.hlen and not packet.option(Option.CLIENT_ID):
            # Nothing tells this client from another (RFC 2131 §4.2: client-id or chaddr, with the
            # address, is the binding's key; RFC 4390: an InfiniBand client has hlen 0 and MUST send
            # a client-id): all such clients would share one key, and so one address, each
            # "renewing" the last one's lease. Kea drops them too ("Missing or useless client-id
            # and no HW address").
            return Outcome(ignored=Ignored.NO_CLIENT_IDENTITY)
        relay_info = packet.option(Option.RELAY_AGENT_INFO)
        # Option 82 no relay forwarded: the client's own, or a forgery; neither names its line
        # (RFC 3046 §2.1). Not used to identify the client or choose the subnet; still echoed.
        untrusted = (relay_info is not None and packet.giaddr == UNSPECIFIED
                     and self.config.option82_without_relay == "ignore")
        try:
            relay = decode_relay_agent_info(b"" if untrusted else relay_info or b"")
        except OptionValueError:
            return Outcome(ignored=Ignored.BAD_RELAY_INFO)
        outcome = self._answer(received, message_type, relay, relay_info, now)
        outcome.untrusted_option82 = untrusted
        return outcome

    def _answer(self, received: Received, message_type: DHCPMessageType, relay: RelayAgentInfo,
                relay_info: bytes | None, now: float) -> Outcome:
        packet = received.packet
        subnet = self._select_subnet(received, relay, message_type)
        if subnet is None:
            return Outcome(ignored=Ignored.NO_SUBNET)
        server_id = subnet.server_id or received.interface_address
        override = relay.server_id_override
        if override is not None and UNSPECIFIED not in (packet.giaddr, override):
            server_id = override  # RFC 5107 §4; a relay is one that sets giaddr (and names an address)
        if server_id is None:
            return Outcome(ignored=Ignored.NO_SERVER_ADDRESS)
        client = self._identify(packet, relay, relay_info)
        if client.client_class is ClientClass.IGNORED and message_type is not DHCPMessageType.RELEASE:
            return Outcome(ignored=Ignored.CLIENT_IGNORED)
        match message_type:
            case DHCPMessageType.DISCOVER:
                return self._discover(received, subnet, server_id, client, now)
            case DHCPMessageType.REQUEST:
                return self._request(received, subnet, server_id, client, now)
            case DHCPMessageType.DECLINE:
                return self._decline(packet, client, now)
            case DHCPMessageType.RELEASE:
                return self._release(packet, client, now)
            case DHCPMessageType.INFORM:
                return self._inform(received, subnet, server_id, client)
            case _:
                return Outcome(ignored=Ignored.NOT_A_REQUEST)

    def _select_subnet(self, received: Received, relay: RelayAgentInfo,
                       message_type: DHCPMessageType) -> Subnet | None:
        packet = received.packet
        # RFC 3527 link selection (from the relay) and RFC 3011 subnet selection (from the client)
        # name the client's link when giaddr cannot (a relay on a multinetted interface).
        selection = relay.link_selection
        if selection is None:
            value = packet.option(Option.SUBNET_SELECTION)
            if value is not None and len(value) == 4:
                selection = IPv4Address(value)
        if selection is not None:
            return self._subnet_containing(int(selection))
        if packet.giaddr != UNSPECIFIED:
            giaddr = int(packet.giaddr)
            if giaddr not in self._by_relay:
                if len(self._by_relay) >= RELAY_CACHE_SIZE:
                    self._by_relay.clear()  # forged giaddrs must not grow it without bound
                found = self._subnet_containing(giaddr)
                if found is None:
                    found = next((s for s in self.subnets if giaddr in s.relay_addresses), None)
                self._by_relay[giaddr] = found
            return self._by_relay[giaddr]
        # A client with an address (renewing, releasing, informing) may be behind a relay yet
        # unicast to us directly: its address says where it is. Not so for a broadcast (a
        # REBINDING request, an INFORM): with giaddr 0 it came from a client on the receiving
        # link, and its ciaddr is a claim to check, not a subnet to serve it from (taken as the
        # subnet, any client on a direct link could lease a free address of any relayed subnet).
        # RFC 2131 §4.3.2 REBINDING: the server SHOULD check ciaddr for correctness; §3.2 (4): a
        # client whose request is invalid, e.g. moved to a new subnet, SHOULD get a DHCPNAK.
        # So the link's subnet is used and _request NAKs a ciaddr outside it. Kea too takes the
        # subnet from ciaddr for unicast packets only. And only from a client that sends from
        # ciaddr (RFC 2131 §4.4.5: a RENEWING client unicasts from its address): one on a direct
        # link writing another subnet's address into ciaddr must not "renew" it into a lease.
        if packet.ciaddr != UNSPECIFIED and message_type is not DHCPMessageType.DISCOVER \
                and not self._broadcast(received) and received.source in (None, packet.ciaddr):
            found = self._subnet_containing(int(packet.ciaddr))
            if found is not None:
                return found
        for subnet in self.subnets:
            if subnet.interface == received.interface:
                return subnet
        return None

    def _broadcast(self, received: Received) -> bool:
        """Whether the datagram went to the limited broadcast address or a subnet's directed one."""
        destination = received.destination
        if destination is None:
            return False
        if destination == BROADCAST_ADDRESS:
            return True
        value = int(destination)
        return any(value == subnet.last and subnet.network.prefixlen < 31 for subnet in self.subnets)

    def _subnet_containing(self, address: int) -> Subnet | None:
        for subnet in self.subnets:
            if subnet.contains(address):
                return subnet
        return None

    def _pool_of(self, address: int) -> ServedPool | None:
        subnet = self._subnet_containing(address)
        return subnet.pool_of(address) if subnet is not None else None

    def _identify(self, packet: DHCPPacket, relay: RelayAgentInfo, relay_info: bytes | None) -> Client:
        raw_client_id = packet.option(Option.CLIENT_ID)
        mac_key = _mac_key(packet.hw_address)
        client_key = b"c" + raw_client_id if raw_client_id else mac_key
        hw_address = mac_text(packet.hw_address)
        client_id = raw_client_id.hex() if raw_client_id else None
        circuit = relay.circuit_id
        remote = relay.remote_id
        circuit_id = opaque_text(circuit) if circuit else None
        remote_id = opaque_text(remote) if remote else None
        if circuit_id is None and remote_id is None and packet.ciaddr != UNSPECIFIED:
            # A renewal unicast past the relay carries no option 82: the client is on the line its
            # lease was granted on (ISC's stash-agent-options, Kea's stored relay info). Without
            # this a suspended line's renewal went through as an unknown client's, and a fixed
            # address reserved for the line was NAKed as someone else's.
            binding = self.table.get(int(packet.ciaddr))
            if binding is not None and binding.client_key in (client_key, mac_key) \
                    and binding.state is BindingState.BOUND:
                circuit_id, remote_id = binding.circuit_id, binding.remote_id
        reservation = None
        if self.reservations:
            for kind, key in (("client-id", client_id), ("mac", hw_address), ("circuit-id", circuit_id),
                              ("remote-id", remote_id)):
                if key is not None:
                    reservation = self.reservations.get((kind, key))
                    if reservation is not None:
                        break
        client_class = self._unknown_class()
        if reservation is not None:
            status = self.subscriber_status.get(reservation.subscriber_id)
            if status is SubscriberStatus.ACTIVE:
                client_class = ClientClass.NORMAL
            elif status is SubscriberStatus.SUSPENDED:
                client_class = ClientClass.WALLED_GARDEN
            else:
                reservation = None  # closed or gone: no longer theirs to claim
        classes: tuple[ClassRule, ...] = ()
        if self.class_rules:
            vendor_class, chaddr = packet.option(Option.VENDOR_CLASS_ID), packet.hw_address
            user_class = packet.option(Option.USER_CLASS)
            classes = tuple(rule for rule in self.class_rules
                            if rule.matches(vendor_class, chaddr, circuit_id, remote_id, user_class))
        return Client(
            key=client_key, hw_address=hw_address, client_id=client_id, circuit_id=circuit_id, remote_id=remote_id,
            relay_info=relay_info, client_class=client_class, reservation=reservation, classes=classes,
            mac_key=mac_key if raw_client_id and packet.hlen else None,
        )

    def _unknown_class(self) -> ClientClass:
        match self.config.unknown_clients:
            case "serve":
                return ClientClass.NORMAL
            case "walled-garden":
                return ClientClass.WALLED_GARDEN
            case _:
                return ClientClass.IGNORED

    # --- address choice

    def _reserved_address(self, client: Client, subnet: Subnet) -> int | None:
        reservation = client.reservation
        if client.client_class is not ClientClass.NORMAL or reservation is None or not reservation.address:
            return None
        address = int(IPv4Address(reservation.address))
        return address if subnet.contains(address) and address not in subnet.unleasable else None

    def _usable(self, address: int, client: Client, now: float) -> bool:
        """Free for this client: held by nobody else, reserved for nobody else."""
        reserved = self.reserved_addresses.get(address)
        if reserved is not None and reserved is not client.reservation:
            return False
        binding = self.table.get(address)
        return binding is None or not binding.held(now) or client.is_keyed(binding)

    def _allowed_pool(self, address: int, subnet: Subnet, client: Client) -> ServedPool | None:
        """The pool (or, for the client's reserved address, the subnet) ``address`` is served from,
        if this client may have it at all."""
        if address == self._reserved_address(client, subnet):
            return subnet.pool_of(address) or subnet.plain
        pool = subnet.pool_of(address)
        if pool is None or pool.allocator.walled_garden != (client.client_class is ClientClass.WALLED_GARDEN) \
                or (pool.classes and not client.may_use(pool)):
            return None
        return pool

    def _choose(self, subnet: Subnet, client: Client, requested: IPv4Address | None,
                now: float) -> tuple[int, ServedPool] | None:
        reserved = self._reserved_address(client, subnet)
        if reserved is not None and self._usable(reserved, client, now):
            return reserved, subnet.pool_of(reserved) or subnet.plain
        candidates: list[int | None] = list(self.table.previous_addresses(client.key))
        if client.mac_key is not None:
            candidates += self.table.previous_addresses(client.mac_key)
        if requested is not None:
            candidates.append(int(requested))
        for address in candidates:
            if address is not None and subnet.contains(address) and self._usable(address, client, now):
                pool = self._allowed_pool(address, subnet, client)
                if pool is not None:
                    return address, pool

        table, reserved_addresses = self.table.by_address, self.reserved_addresses

        def is_fresh(address: int) -> bool:
            return address not in table and address not in reserved_addresses

        def is_free(address: int) -> bool:
            if address in reserved_addresses:
                return False
            binding = table.get(address)
            return binding is None or not binding.held(now)

        def recheck(address: int) -> bool:
            binding = table.get(address)
            return binding is not None and binding.state in (BindingState.OFFERED, BindingState.DECLINED)

        for pool in subnet.pools_for(client):
            address = pool.allocator.allocate(is_free, is_fresh, recheck)
            if address is not None:
                return address, pool
        return None

    # --- messages

    def _discover(self, received: Received, subnet: Subnet, server_id: IPv4Address, client: Client,
                  now: float) -> Outcome:
        packet = received.packet
        if subnet.ipv6_only:
            v6only = self._ipv6_only_pool(packet, subnet, client)
            if v6only is not None:
                # (before rapid commit: RFC 8925 §3.3, the client is offered nothing to commit)
                return self._ipv6_only_answer(received, DHCPMessageType.OFFER, server_id, v6only, client)
        requested = _requested_address(packet)
        chosen = self._choose(subnet, client, requested, now)
        if chosen is None:
            pools = subnet.pools_for(client)
            if not pools:
                # Not a full pool: none to take from (a suspended subscriber's device, or an unknown
                # client under unknown_clients = "walled-garden", where the subnet has no garden).
                return Outcome(ignored=Ignored.NO_POOL,
                               unserved=(str(subnet.network), client.client_class.value))
            return Outcome(ignored=Ignored.NO_ADDRESS, exhausted_pools=tuple(pool.name for pool in pools))
        address, pool = chosen
        if subnet.rapid_commit and packet.option(Option.RAPID_COMMIT) is not None:
            return self._ack(received, subnet, server_id, address, pool, client, now)  # RFC 4039 §4
        binding = self.table.get(address)
        ended = Outcome()
        if not (binding is not None and binding.state is BindingState.BOUND and client.holds(binding, now)):
            if binding is not None:
                ended = self._end_lapsed(binding, now)
            self.table.put(Binding(address, BindingState.OFFERED, now + self.config.offer_hold_seconds, client.key,
                                   pool=pool.name or None))
            if pool.allocator.size:
                pool.allocator.returned(address)  # comes back into play if the offer lapses
        reply = self._reply(received, DHCPMessageType.OFFER, server_id, IPv4Address(address), pool, client)
        return Outcome(reply=reply, writes=ended.writes, events=ended.events)

    def _request(self, received: Received, subnet: Subnet, server_id: IPv4Address, client: Client,
                 now: float) -> Outcome:
        packet = received.packet
        requested = _requested_address(packet)
        named_server = packet.option(Option.SERVER_ID)
        if named_server is not None:
            # RFC 2131 §4.3.2 SELECTING: the client answers one OFFER among several.
            if named_server != server_id.packed and (received.interface_address is None
                                                     or named_server != received.interface_address.packed):
                self._withdraw_offer(client, now)
                return Outcome(ignored=Ignored.OTHER_SERVER)
            address = requested
        elif requested is not None and packet.ciaddr == UNSPECIFIED:
            address = requested  # INIT-REBOOT
        elif packet.ciaddr != UNSPECIFIED:
            address = packet.ciaddr  # RENEWING (unicast) or REBINDING (broadcast)
        else:
            address = None
        if address is None:
            return Outcome(ignored=Ignored.BAD_REQUEST)
        if subnet.ipv6_only and packet.ciaddr == UNSPECIFIED:
            # SELECTING or INIT-REBOOT (a device back on a network that is IPv6-mostly now): RFC
            # 8925 §3.2 has the client stop DHCPv4 on an ACK with option 108, so nothing is leased.
            # A RENEWING or REBINDING client keeps its address (§3.2: it ignores the option there).
            v6only = self._ipv6_only_pool(packet, subnet, client)
            if v6only is not None:
                return self._ipv6_only_answer(received, DHCPMessageType.ACK, server_id, v6only, client)
        pool = self._confirmable(int(address), subnet, client, now)
        if pool is None:
            return Outcome(reply=self._nak(received, server_id, client))
        return self._ack(received, subnet, server_id, int(address), pool, client, now)

    def _ipv6_only_pool(self, packet: DHCPPacket, subnet: Subnet, client: Client) -> tuple[ServedPool, int] | None:
        """The pool whose option 108 answers this client, and the seconds it says, if it asked for option 108 (RFC 8925
        §3.3: never to one that did not) and that pool serves it; None: serve it as any other.
        The pool is the one its address would come from, found without taking one: the first of
        the pools open to it (its class's, then anyone's). A client with a reserved address gets
        it, asked or not: the operator fixed that IPv4 address for it (a business line's router
        with its static address), which an IPv6-only answer would take away."""
        requested = packet.option(Option.PARAMETER_REQUEST_LIST)
        if requested is None or Option.IPV6_ONLY_PREFERRED not in requested:
            return None
        if client.reservation is not None and client.reservation.address is not None:
            return None  # (nor does _reply send it option 108)
        pools = subnet.pools_for(client)
        if not pools:
            return None
        pool = pools[0]
        served = pool.options
        if client.classes:
            served, _ = _with_classes(served, (), client.classes, under_pool=pool.allocator.walled_garden)
        value = served.get(Option.IPV6_ONLY_PREFERRED)
        return (pool, int.from_bytes(value, "big")) if value is not None and len(value) == 4 else None

    def _ipv6_only_answer(self, received: Received, message_type: DHCPMessageType, server_id: IPv4Address,
                          v6only: tuple[ServedPool, int], client: Client) -> Outcome:
        """RFC 8925 §3.3: yiaddr 0.0.0.0 and option 108 (the client asked for it), no lease times;
        nothing is allocated, held or written, so the pool and the store are as they were."""
        pool, wait = v6only
        reply = self._reply(received, message_type, server_id, UNSPECIFIED, pool, client, with_lease=False)
        return Outcome(reply=reply, ipv6_only=wait)

    def _confirmable(self, address: int, subnet: Subnet, client: Client, now: float) -> ServedPool | None:
        if not subnet.contains(address) or not self._usable(address, client, now):
            return None
        reserved = self._reserved_address(client, subnet)
        if reserved is not None and reserved != address and self._usable(reserved, client, now):
            return None  # move the client to its reserved address
        return self._allowed_pool(address, subnet, client)

    def _withdraw_offer(self, client: Client, now: float) -> None:
        for address in self.table.previous_addresses(client.key):
            binding = self.table.by_address[address]
            if binding.state is BindingState.OFFERED:
                binding.expires_at = now

    def _ack(self, received: Received, subnet: Subnet, server_id: IPv4Address, address: int, pool: ServedPool,
             client: Client, now: float) -> Outcome:
        packet = received.packet
        previous = self.table.get(address)
        renewal = previous is not None and previous.state is BindingState.BOUND and client.holds(previous, now)
        reservation = client.reservation
        hostname = self._hostname(packet, client)
        hostname_reserved = hostname is not None and reservation is not None and hostname == reservation.hostname
        if hostname is None and renewal and previous is not None and previous.hostname is not None \
                and not previous.hostname_reserved and _first_label(previous.hostname) not in self.reserved_hostnames:
            # The name the client gave before (it need not repeat it); not one its reservation gave
            # (cleared since), nor one a reservation gives another device now.
            hostname = previous.hostname
        binding = Binding(
            address=address, state=BindingState.BOUND, expires_at=now + pool.lease_seconds, client_key=client.key,
            starts_at=previous.starts_at if renewal and previous is not None else now,
            hw_address=client.hw_address, client_id=client.client_id, hostname=hostname,
            subscriber_id=reservation.subscriber_id if reservation is not None else None,
            circuit_id=client.circuit_id, remote_id=client.remote_id, pool=pool.name or None,
            hostname_reserved=hostname_reserved, renewed_at=now,
        )
        # A lease that lapsed here and was not reclaimed yet ends before another begins.
        superseded = self._end_lapsed(previous, now) if previous is not None and not renewal else Outcome()
        # One lease per client and subnet: one it held elsewhere in the subnet (before it moved to
        # or from the walled garden, or to its reserved address) ends now.
        # (By its own key only: a lease its MAC holds with no client-id is taken over when it is
        # the one granted, never ended for another; the device without one may be another, a
        # BMC sharing the host's NIC, which would lose an address it still uses.)
        for other in self.table.previous_addresses(client.key):
            held = self.table.by_address[other]
            if other != address and held.state is BindingState.BOUND and held.held_by(client.key, now) \
                    and subnet.contains(other):
                ended = self._end(held, BindingState.RELEASED, now)
                superseded.writes += ended.writes
                superseded.events += ended.events
        self.table.put(binding)
        reply = self._reply(received, DHCPMessageType.ACK, server_id, IPv4Address(address), pool, client)
        lease = _lease_of(binding)
        return Outcome(
            reply=reply, writes=[*superseded.writes, (lease, "renewed" if renewal else "granted")],
            events=[*superseded.events,
                    LeaseGranted(at=now, address=lease.address, expires_at=binding.expires_at, hostname=hostname,
                                 subscriber_id=binding.subscriber_id, hw_address=binding.hw_address,
                                 pool=binding.pool, renewal=renewal, starts_at=lease.starts_at)],
        )

    def _hostname(self, packet: DHCPPacket, client: Client) -> str | None:
        if client.reservation is not None and client.reservation.hostname:
            return client.reservation.hostname
        name = self._client_hostname(packet)
        if name is not None and _first_label(name) in self.reserved_hostnames:
            return None  # another device's reserved name: it keeps it (in DNS too)
        return name

    def _client_hostname(self, packet: DHCPPacket) -> str | None:
        fqdn = packet.option(Option.CLIENT_FQDN)
        if fqdn is not None:
            try:
                name = clean_hostname(decode_client_fqdn(fqdn).name)
            except OptionValueError:
                name = None
            if name:
                return name
        host = packet.option(Option.HOSTNAME)
        if host:
            return clean_hostname(host.decode("ascii", "replace"))
        return None

    def _decline(self, packet: DHCPPacket, client: Client, now: float) -> Outcome:
        requested = _requested_address(packet)
        binding = self.table.get(int(requested)) if requested is not None else None
        if binding is None or not client.holds(binding, now):
            return Outcome(ignored=Ignored.UNKNOWN_LEASE)
        # RFC 2131 §4.3.3: the address is in use by something else; keep it out of use.
        binding.state = BindingState.DECLINED
        binding.expires_at = now + self.config.decline_quarantine_seconds
        self.table.forget_client(binding)
        pool = self._pool_of(binding.address)
        if pool is not None:
            pool.allocator.returned(binding.address)
        lease = _lease_of(binding)
        return Outcome(writes=[(lease, "declined")], declined=True,
                       events=[LeaseEnded(at=now, address=lease.address, reason="declined",
                                          hostname=binding.hostname, subscriber_id=binding.subscriber_id,
                                          starts_at=lease.starts_at, hw_address=lease.hw_address,
                                          held_until=binding.expires_at)])

    def _release(self, packet: DHCPPacket, client: Client, now: float) -> Outcome:
        binding = self.table.get(int(packet.ciaddr))
        if binding is None or binding.state is not BindingState.BOUND or not client.holds(binding, now):
            return Outcome(ignored=Ignored.UNKNOWN_LEASE)
        return self._end(binding, BindingState.RELEASED, now)

    def _end_lapsed(self, binding: Binding, now: float) -> Outcome:
        """A lease past its expiry that the next reclaim would have ended: ended now, before its
        address is offered or granted again (else its end was never recorded nor announced, and
        `who` had the old client hold the address on)."""
        if binding.state is BindingState.BOUND and not binding.foreign and binding.expires_at <= now:
            return self._end(binding, BindingState.EXPIRED, now)
        return Outcome()

    def _end(self, binding: Binding, state: BindingState, now: float) -> Outcome:
        binding.state = state
        binding.expires_at = min(binding.expires_at, now)
        pool = self._pool_of(binding.address)
        if pool is not None:
            pool.allocator.returned(binding.address)
        lease = _lease_of(binding)
        return Outcome(writes=[(lease, state.value)],
                       events=[LeaseEnded(at=now, address=lease.address, reason=state.value,
                                          hostname=binding.hostname, subscriber_id=binding.subscriber_id,
                                          starts_at=lease.starts_at, hw_address=lease.hw_address,
                                          ended_at=lease.expires_at)])

    def _inform(self, received: Received, subnet: Subnet, server_id: IPv4Address, client: Client) -> Outcome:
        ciaddr = received.packet.ciaddr
        if ciaddr != UNSPECIFIED and self._subnet_containing(int(ciaddr)) is None:
            # The ACK goes to ciaddr (§4.3.5): from an address on none of our subnets it would go
            # wherever the sender pointed it, anywhere on the Internet, in our name. ISC dhcpd
            # drops such an INFORM too ("unknown subnet").
            return Outcome(ignored=Ignored.NO_SUBNET)
        pool = subnet.pool_of(int(ciaddr)) or subnet.plain
        return Outcome(reply=self._reply(received, DHCPMessageType.ACK, server_id, UNSPECIFIED, pool, client,
                                         with_lease=False))

    def reclaim(self, now: float) -> Outcome:
        """End the leases that expired; one outcome with every write and event."""
        outcome = Outcome()
        for binding in self.table.expired(now):
            if binding.foreign:  # the other service's to record; free for us from now on
                binding.state = BindingState.EXPIRED
                self._requeue(binding.address)
                continue
            ended = self._end(binding, BindingState.EXPIRED, now)
            outcome.writes += ended.writes
            outcome.events += ended.events
        return outcome

    # --- replies

    def _reply(self, received: Received, message_type: DHCPMessageType, server_id: IPv4Address,
               yiaddr: IPv4Address, pool: ServedPool, client: Client, *, with_lease: bool = True) -> Reply:
        packet = received.packet
        options: list[tuple[int, bytes]] = [(Option.MESSAGE_TYPE, _u8(message_type)),
                                            (Option.SERVER_ID, server_id.packed)]
        if with_lease:
            options += [(Option.LEASE_TIME, encode_u32(pool.lease_seconds)),
                        (Option.RENEWAL_TIME, encode_u32(pool.renew_seconds)),
                        (Option.REBINDING_TIME, encode_u32(pool.rebind_seconds))]
        requested = packet.option(Option.PARAMETER_REQUEST_LIST)
        served, unasked = pool.options, pool.always
        if client.classes:
            served, unasked = _with_classes(served, unasked, client.classes,
                                            under_pool=pool.allocator.walled_garden)
        reservation = client.reservation
        if reservation is not None and reservation.address is not None and Option.IPV6_ONLY_PREFERRED in served:
            # Its reserved IPv4 address is what the operator fixed for it: no option 108, which
            # would have it leave DHCPv4 (RFC 8925 §3.2) and its address with it.
            served = {code: value for code, value in served.items() if code != Option.IPV6_ONLY_PREFERRED}
        if reservation is not None and reservation.hostname:
            # The name its reservation gives it, for the device to take (RFC 2132 §3.14), as Kea
            # sends a reservation's hostname: to a client that asks for option 12 or sends its own.
            served = {**served, Option.HOSTNAME: reservation.hostname.encode("ascii")}
            if packet.option(Option.HOSTNAME) is not None:
                unasked = (*unasked, Option.HOSTNAME)
        # The mask and routers always (RFC 2132 §3.3 asks the mask first); the rest as asked,
        # in the client's order, then those sent unasked, or everything we have when it asked
        # for nothing in particular.
        for always in (Option.SUBNET_MASK, Option.ROUTERS):
            if always in served:
                options.append((always, served[always]))
        if requested is None:
            # (never option 108 unasked, RFC 8925 §3.3: a client that did not ask may need its IPv4)
            options += [(c, v) for c, v in served.items()
                        if c not in (Option.SUBNET_MASK, Option.ROUTERS, Option.IPV6_ONLY_PREFERRED)]
        else:
            seen: set[int] = {Option.SUBNET_MASK, Option.ROUTERS}
            for code in itertools.chain(requested, unasked):
                if code in served and code not in seen:
                    seen.add(code)
                    options.append((code, served[code]))
        if message_type is DHCPMessageType.ACK and packet.message_type is DHCPMessageType.DISCOVER:
            options.append((Option.RAPID_COMMIT, b""))
        fqdn = packet.option(Option.CLIENT_FQDN)
        if fqdn is not None and with_lease and _usable_fqdn(fqdn):
            # The name the lease takes (so DNS publishes), which is not always the client's: its
            # reservation's, or none when another device's reservation holds the one it asked for.
            name = self._hostname(packet, client)
            if name is not None:
                options.append((Option.CLIENT_FQDN, _fqdn_reply(fqdn, name, published=self.publishes_names)))
        options += _echoed(packet, client)
        options = _fitted(options, _max_options_size(packet))
        reply = DHCPPacket(
            op=BOOTREPLY, xid=packet.xid, htype=packet.htype, hlen=packet.hlen, chaddr=packet.chaddr,
            flags=packet.flags, ciaddr=packet.ciaddr if message_type is not DHCPMessageType.OFFER else UNSPECIFIED,
            yiaddr=yiaddr, giaddr=packet.giaddr, options=tuple(options),
        )
        return self._addressed(received, reply, server_id)

    def _nak(self, received: Received, server_id: IPv4Address, client: Client) -> Reply:
        packet = received.packet
        options: list[tuple[int, bytes]] = [(Option.MESSAGE_TYPE, _u8(DHCPMessageType.NAK)),
                                            (Option.SERVER_ID, server_id.packed),
                                            (Option.MESSAGE, b"address not available")]
        options += _echoed(packet, client)
        relayed = packet.giaddr != UNSPECIFIED
        reply = DHCPPacket(
            op=BOOTREPLY, xid=packet.xid, htype=packet.htype, hlen=packet.hlen, chaddr=packet.chaddr,
            # RFC 2131 §4.1: a NAK through a relay asks it to broadcast.
            flags=packet.flags | FLAG_BROADCAST if relayed else packet.flags,
            giaddr=packet.giaddr, options=tuple(options),
        )
        if not relayed and packet.ciaddr != UNSPECIFIED and received.source == packet.ciaddr \
                and received.destination is not None and not self._broadcast(received):
            # A renewal unicast from the client's own address: back to it, as the ACK would go (and
            # as Kea sends it). The client may be behind a relay it unicast past; broadcast on our
            # link, the NAK never reached it, and a suspended subscriber's line kept its address
            # until it rebound at T2, through the relay.
            return Reply(reply, Destination.UNICAST, packet.ciaddr, received.interface_address or server_id)
        return self._addressed(received, reply, server_id)

    # --- leasequery (RFC 4388)

    def _leasequery(self, received: Received, now: float) -> Outcome:
        """What we know of one address (ciaddr) or one client (chaddr, or option 61), for a relay
        agent that lost its table (a BNG after a restart) and asks before it forwards a
        subscriber's traffic again. Answered to giaddr, which must be one of
        ``leasequery_requesters`` (Kea's hook checks the same): LEASEACTIVE with the newest active
        lease, LEASEUNASSIGNED for an address of ours with none, LEASEUNKNOWN otherwise. A query
        that names more than one thing is asked by the first of ciaddr, client-id and chaddr (as
        ISC dhcpd does: a requester that fills chaddr in a query by address is answered)."""
        packet = received.packet
        requester = packet.giaddr
        # hops: a subscriber's own DHCPLEASEQUERY relayed by a BNG that is a requester carries the
        # BNG's giaddr too; the answer, sent there, could be forwarded to the subscriber.
        if requester == UNSPECIFIED or packet.hops or not any(requester in n for n in
                                                              self.config.leasequery_requesters):
            return Outcome(ignored=Ignored.LEASEQUERY_REFUSED)
        client_id = packet.option(Option.CLIENT_ID)
        hw_address = packet.hw_address if packet.hlen and any(packet.hw_address) else None
        if packet.ciaddr == UNSPECIFIED and client_id is None and hw_address is None:
            return Outcome(ignored=Ignored.BAD_LEASEQUERY)
        active: list[Binding]
        if packet.ciaddr != UNSPECIFIED:
            address = int(packet.ciaddr)
            binding = self.table.get(address)
            active = [binding] if binding is not None and self._leased(binding, now) else []
            ours = self._subnet_containing(address) is not None
        else:
            if client_id is not None:
                addresses, wanted = self.table.by_client.get(b"c" + client_id, []), client_id.hex()
            else:
                assert hw_address is not None
                addresses, wanted = self.table.by_hw_address.get(mac_text(hw_address), []), None
            found = (self.table.by_address[a] for a in addresses)
            active = sorted((b for b in found if (wanted is None or b.client_id == wanted) and self._leased(b, now)),
                            key=lambda b: self._last_transaction(b, now), reverse=True)
            ours = False
        server_id = received.interface_address
        subnet = self._subnet_containing(active[0].address if active else int(packet.ciaddr))
        if subnet is not None and subnet.server_id is not None:
            server_id = subnet.server_id
        if server_id is None:
            return Outcome(ignored=Ignored.NO_SERVER_ADDRESS)
        kind = (DHCPMessageType.LEASEACTIVE if active else
                DHCPMessageType.LEASEUNASSIGNED if ours else DHCPMessageType.LEASEUNKNOWN)
        options: list[tuple[int, bytes]] = [(Option.MESSAGE_TYPE, _u8(kind)), (Option.SERVER_ID, server_id.packed)]
        if not active:  # the question echoed, and nothing else (RFC 4388 §6.4.3)
            if client_id is not None:
                options.append((Option.CLIENT_ID, client_id))
            reply = DHCPPacket(op=BOOTREPLY, xid=packet.xid, htype=packet.htype, hlen=packet.hlen,
                               chaddr=packet.chaddr, ciaddr=packet.ciaddr, giaddr=requester, options=tuple(options))
            return Outcome(reply=self._addressed(received, reply, server_id))  # (to giaddr, the server port)
        newest = active[0]
        last = self._last_transaction(newest, now)
        remaining = max(0, int(newest.expires_at - now))
        options.append((Option.LEASE_TIME, encode_u32(remaining)))
        pool = (subnet.pool_of(newest.address) or subnet.plain) if subnet is not None else None
        if pool is not None:
            # RFC 4388 §6.4: T1 and T2 with the lease time, as the time left until each (0: the
            # client is past it), counted from its last renewal as the lease time is.
            for code, seconds in ((Option.RENEWAL_TIME, pool.renew_seconds),
                                  (Option.REBINDING_TIME, pool.rebind_seconds)):
                options.append((code, encode_u32(min(remaining, max(0, int(last + seconds - now))))))
        options.append((Option.CLIENT_LAST_TRANSACTION_TIME, encode_u32(max(0, int(now - last)))))
        if newest.client_id:
            options.append((Option.CLIENT_ID, bytes.fromhex(newest.client_id)))
        agent = _relay_agent_info(newest)
        if agent:
            options.append((Option.RELAY_AGENT_INFO, agent))
        if len(active) > 1:  # the client's other addresses (as Kea's and ISC's list them)
            options.append((Option.ASSOCIATED_IP, encode_ips(IPv4Address(b.address) for b in active[1:])))
        requested = packet.option(Option.PARAMETER_REQUEST_LIST)
        if requested and pool is not None:
            # RFC 4388 §6.4: the options the requester lists, with the values the client was given
            # (its pool's: a walled garden's DNS servers, say), in its order. (Not its classes':
            # a leasequery does not tell them.)
            sent = {code for code, _ in options}
            for asked in requested:
                if asked in pool.options and asked not in sent:
                    sent.add(asked)
                    options.append((asked, pool.options[asked]))
            options = _fitted(options, _max_options_size(packet))
        chaddr = bytes.fromhex(newest.hw_address.replace(":", "")) if newest.hw_address else b""
        reply = DHCPPacket(op=BOOTREPLY, xid=packet.xid, htype=1 if chaddr else 0, hlen=len(chaddr),
                           chaddr=chaddr.ljust(16, b"\0"), ciaddr=IPv4Address(newest.address), giaddr=requester,
                           options=tuple(options))
        return Outcome(reply=self._addressed(received, reply, server_id))

    @staticmethod
    def _leased(binding: Binding, now: float) -> bool:
        """A DHCP lease in force (a RADIUS session's hold is not ours to tell of)."""
        return binding.state is BindingState.BOUND and binding.expires_at > now and not binding.foreign

    def _last_transaction(self, binding: Binding, now: float) -> float:
        """When the client last renewed: the time of the ACK, or, for a lease loaded from the
        store (which keeps no such time), its end less its pool's lease time (a renewal keeps
        ``starts_at``), within the lease's start and now. A reserved address outside every pool
        has its subnet's lease time (as ``_allowed_pool`` serves it). Not the pool's lease time
        alone: a reload that changes it left every lease granted before saying that its client
        renewed a moment ago (a lease time lowered) or when it first got its address (raised)."""
        if binding.renewed_at is not None:
            return min(binding.renewed_at, now)
        subnet = self._subnet_containing(binding.address)
        pool = (subnet.pool_of(binding.address) or subnet.plain) if subnet is not None else None
        renewed = binding.expires_at - pool.lease_seconds if pool is not None else binding.starts_at
        return min(max(renewed, binding.starts_at), now)

    @staticmethod
    def _addressed(received: Received, reply: DHCPPacket, server_id: IPv4Address) -> Reply:
        """RFC 2131 §4.1: where a reply goes."""
        request = received.packet
        source = received.interface_address or server_id
        if request.message_type is DHCPMessageType.INFORM and request.ciaddr != UNSPECIFIED:
            # RFC 2131 §4.3.5: the ACK to an INFORM goes straight to ciaddr, relayed or not. Sent
            # to the relay, it carries yiaddr 0 and the relay has nowhere to forward it (Kea too
            # answers ciaddr). The client has its address, so the kernel can route and ARP for it.
            return Reply(reply, Destination.UNICAST, request.ciaddr, source)
        if request.giaddr != UNSPECIFIED:
            return Reply(reply, Destination.RELAY, request.giaddr, source, _relay_port(received))
        if reply.message_type is DHCPMessageType.NAK:
            return Reply(reply, Destination.BROADCAST, BROADCAST_ADDRESS, source)
        if request.ciaddr != UNSPECIFIED:
            return Reply(reply, Destination.UNICAST, request.ciaddr, source)
        if request.broadcast or reply.yiaddr == UNSPECIFIED or request.htype != 1 or request.hlen != 6:
            return Reply(reply, Destination.BROADCAST, BROADCAST_ADDRESS, source)
        return Reply(reply, Destination.LINK, reply.yiaddr, source)

    # --- for metrics

    def pool_usage(self, now: float) -> list[tuple[str, int, int, int]]:
        """(pool, total, assigned, declined) for every pool, in one pass over the lease table."""
        pools = sorted((p.allocator for s in self.subnets for p in s.pools), key=lambda a: a.first)
        firsts = [p.first for p in pools]
        assigned, declined = [0] * len(pools), [0] * len(pools)
        for address, binding in self.table.by_address.items():
            if binding.expires_at <= now or binding.state not in (BindingState.BOUND, BindingState.DECLINED):
                continue
            index = bisect_right(firsts, address) - 1
            if index < 0 or address not in pools[index]:
                continue
            if binding.state is BindingState.BOUND:
                assigned[index] += 1
            else:
                declined[index] += 1
        return [(p.name, p.size, assigned[i], declined[i]) for i, p in enumerate(pools)]


def _with_classes(served: dict[int, bytes], always: tuple[int, ...], classes: tuple[ClassRule, ...], *,
                  under_pool: bool = False) -> tuple[dict[int, bytes], tuple[int, ...]]:
    """The pool's options with the client's classes': of two classes that set one code, the
    first (in config order) gives it. The classes' replace the pool's, except ``under_pool`` (a
    walled-garden pool), where they only add codes the pool does not send: a class's DNS
    servers, routers or routes must not lead a suspended subscriber out of the garden."""
    by_classes: dict[int, bytes] = {}
    by_classes_unasked: set[int] = set()
    for rule in classes:
        for code, value in rule.options.items():
            if code not in by_classes:
                by_classes[code] = value
                if code in rule.always:
                    by_classes_unasked.add(code)
    if under_pool:
        added = by_classes.keys() - served.keys()
        return ({**served, **{c: by_classes[c] for c in added}},
                tuple(sorted({*always, *(by_classes_unasked & added)})))
    return {**served, **by_classes}, tuple(sorted({*always} - by_classes.keys() | by_classes_unasked))


def _requested_address(packet: DHCPPacket) -> IPv4Address | None:
    value = packet.option(Option.REQUESTED_ADDRESS)
    if value is None or len(value) != 4:
        return None
    return IPv4Address(value)


# RFC 2132 §9.10: option 57 counts the whole IP datagram, and no client may ask for less than
# 576 bytes (RFC 2131 §2: every client takes that much). Left for options: the IP and UDP
# headers (28), the fixed BOOTP fields (236), the magic cookie (4) and the END option (1).
MIN_MAX_MESSAGE_SIZE = 576
# And no reply is larger than an Ethernet frame's payload, whatever option 57 says or if it is
# not there: a reply written to the link itself (Destination.LINK) cannot be (the send fails,
# and the client never hears of its offer), and a relayed one would go in fragments, which
# relays and clients often drop. Options by code, up to 1 KiB each, can add up to more.
MAX_REPLY_SIZE = 1500
_NOT_OPTIONS_SIZE = 28 + 236 + 4 + 1
# What a reply cannot lose and still be the reply it is (message type, server id, lease times,
# mask, routers) or that the client discards a reply without (61, 118, 80) or the relay needs (82).
_ESSENTIAL_OPTIONS = frozenset((Option.MESSAGE_TYPE, Option.SERVER_ID, Option.LEASE_TIME, Option.RENEWAL_TIME,
                                Option.REBINDING_TIME, Option.SUBNET_MASK, Option.ROUTERS, Option.MESSAGE,
                                Option.CLIENT_ID, Option.SUBNET_SELECTION, Option.RELAY_AGENT_INFO,
                                Option.RAPID_COMMIT))


def _max_options_size(packet: DHCPPacket) -> int:
    """Room for options in a reply: what option 57 allows (at least 576), at most MAX_REPLY_SIZE."""
    value = packet.option(Option.MAX_MESSAGE_SIZE)
    if value is None or len(value) != 2:
        return MAX_REPLY_SIZE - _NOT_OPTIONS_SIZE
    return min(max(int.from_bytes(value, "big"), MIN_MAX_MESSAGE_SIZE), MAX_REPLY_SIZE) - _NOT_OPTIONS_SIZE


def _encoded_size(value: bytes) -> int:
    return len(value) + 2 * max(1, -(-len(value) // 255))  # long options split (RFC 3396)


def _fitted(options: list[tuple[int, bytes]], room: int) -> list[tuple[int, bytes]]:
    """``options`` trimmed to ``room`` bytes: the optional ones go from the end first, which is
    the least wanted (the client's parameter request list ranks them in that order; RFC 2131
    §4.3.1 lets a server leave out what does not fit). Essential options always stay."""
    # At most this (splitting a value adds a header per 255 bytes): the cheap test, per reply.
    values_size = sum([len(v) for _, v in options])
    if values_size + 2 * len(options) + 2 * (values_size // 255) <= room:
        return options
    if sum(_encoded_size(v) for _, v in options) <= room:
        return options
    kept = list(options)
    for index in range(len(kept) - 1, -1, -1):
        if kept[index][0] not in _ESSENTIAL_OPTIONS:
            del kept[index]
            if sum(_encoded_size(v) for _, v in kept) <= room:
                break
    return kept


def _usable_fqdn(value: bytes) -> bool:
    """Whether a client FQDN option names a host we take (and so publish, which the echo's S bit
    says). One that does not (too short, a label running past its end, no usable name left once
    cleaned) is left out of the reply rather than echoed back as if it were the name we took.
    The request is still served."""
    try:
        return clean_hostname(decode_client_fqdn(value).name) is not None
    except OptionValueError:
        return False


def _fqdn_reply(request: bytes, name: str, *, published: bool = True) -> bytes:
    """RFC 4702 §4: we publish the name in our own DNS (S=1); O tells a client that did not ask
    us to (S=0, or N: no updates at all) that we overrode it, since the lease's name is
    published all the same (N=1 in the reply said none was). Without lease names (``published``
    false) nobody publishes it: S=0, and O=1 to a client that asked us to (§2.1), which may then
    update DNS itself (S=1 told it we had, and the name went nowhere); N=1, as a server "SHALL
    NOT perform DNS updates" says it (§2.1: N=0 would promise at least the PTR; Kea's
    ``ddns-send-updates = false`` answers so). RCODEs are 255. The name
    is the one we take (§4: the server's notion of the client's name), in the client's encoding:
    its own bytes when that is the name it sent."""
    flags = request[0]
    encoding = flags & 0x04
    if published:
        reply_flags = 0x01 | encoding | (0x02 if not flags & 0x01 or flags & 0x08 else 0)
    else:
        reply_flags = 0x08 | encoding | (0x02 if flags & 0x01 and not flags & 0x08 else 0)
    if clean_hostname(decode_client_fqdn(request).name) == name:
        return bytes((reply_flags, 255, 255)) + request[3:]
    # Another name (a reservation's): a partial name, as stored (no root label in wire form).
    written = b"".join(bytes((len(label),)) + label.encode("ascii") for label in name.split(".")) if encoding \
        else name.encode("ascii")
    return bytes((reply_flags, 255, 255)) + written


def _lease_of(binding: Binding) -> Lease:
    return Lease(
        address=str(IPv4Address(binding.address)), state=_LEASE_STATE_OF[binding.state],
        starts_at=binding.starts_at, expires_at=binding.expires_at, hw_address=binding.hw_address,
        client_id=binding.client_id, hostname=binding.hostname, subscriber_id=binding.subscriber_id,
        circuit_id=binding.circuit_id, remote_id=binding.remote_id, pool=binding.pool,
    )
