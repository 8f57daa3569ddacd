"""The ``[dns]`` section: listeners and who may use them, the cache, iteration, local data, policy.

Defaults are those of a careful ISP resolver: only loopback may query until ``allow`` names the
subscriber networks (never an open resolver), the IANA root hints and DNSSEC validation with the
IANA root trust anchors, QNAME minimisation in relaxed mode, a 1232-byte EDNS buffer (DNS flag
day 2020), serve-stale for a day, prefetch on.
Validation checks names and addresses here, so a typo fails ``ispd check-config`` rather than a
query at 3 a.m.; files (root hints, zones, policy zones) are read when the service starts and
reloads, with errors naming the file and line.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, collapse_addresses, ip_address, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from ispd.configtypes import (
    ClientNetwork,
    ConfigWarning,
    IPNetwork,
    ListenAddress,
    Section,
    SocketAddress,
    parse_socket_address,
)
from ispd.dns.defaultzones import DEFAULT_ZONE_NAMES
from ispd.dns.dns64 import check_prefix
from ispd.dns.wire import name_from_text

# Policy zones limited to some clients: how many different limits (each takes a bit of the answer
# cache's key, ``ispd.dns.cache.VARIANT_SCOPES``).
MAX_POLICY_SCOPES = 3


def domain_name(value: str) -> str:
    if not value.strip():
        # name_from_text reads "" as the root: a negative trust anchor of "" turned validation
        # off for every name, a private domain of "" took rebinding protection off every name.
        raise ValueError(f'{value!r} is not a domain name: it is empty (the root is ".")')
    try:
        name_from_text(value)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a domain name: {exc}") from None
    return value.rstrip(".").lower() + "."


DomainName = Annotated[str, AfterValidator(domain_name)]


class CacheConfig(Section):
    # Memory for cached answers and RRsets together: what their Python objects take, per entry
    # (resident memory grows by about 1.3 times this once the cache is full).
    max_bytes: int = Field(default=128 * 1024 * 1024, ge=1024 * 1024)
    # TTLs are clamped to [min_ttl, max_ttl] when cached; negative answers to max_negative_ttl.
    min_ttl: int = Field(default=0, ge=0, le=86400)
    max_ttl: int = Field(default=86400, ge=1, le=7 * 86400)
    max_negative_ttl: int = Field(default=3600, ge=0, le=86400)
    # RFC 8767: when every upstream fails, answer from expired data up to this long past expiry,
    # with this TTL; 0 turns serve-stale off.
    stale_seconds: int = Field(default=86400, ge=0, le=7 * 86400)
    stale_answer_ttl: int = Field(default=30, ge=1, le=3600)
    # RFC 8767 §5 "client response timer": a client waiting this long for an expired name gets
    # the stale answer while the refresh goes on.
    stale_client_timeout_seconds: float = Field(default=1.8, gt=0, le=30)
    # Refresh an answer that is asked for in the last tenth of its TTL, before it expires.
    prefetch: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> CacheConfig:
        if self.min_ttl > self.max_ttl:
            raise ValueError(f"min_ttl ({self.min_ttl}) is larger than max_ttl ({self.max_ttl})")
        return self


class ZoneRateLimitConfig(Section):
    # Queries per second to the servers of this domain and of every zone below it (the deepest
    # domain listed wins); 0: no limit there.
    name: DomainName
    qps: int = Field(ge=0, le=1_000_000)


class ResolverConfig(Section):
    # RFC 9156: "relaxed" falls back to the full name when a server mishandles a minimised one.
    qname_minimisation: Literal["off", "relaxed", "strict"] = "relaxed"
    # Random letter case in upstream queries, checked in replies (draft-vixie-dnsext-dns0x20).
    # Servers that do not echo the case look dead to a resolver that insists: off by default.
    use_0x20: bool = False
    edns_buffer_size: int = Field(default=1232, ge=512, le=4096)
    do_ipv4: bool = True
    do_ipv6: bool = True
    # Source addresses for upstream queries (unset: the kernel's choice).
    outgoing_ipv4: IPv4Address | None = None
    outgoing_ipv6: IPv6Address | None = None
    # Server addresses never asked, whatever a delegation names (Unbound's do-not-query-*): a zone
    # anyone can register may give this host or the operator's inner networks as its servers.
    # Addresses given here (root hints, forward and stub zones) are asked all the same.
    # do_not_query_localhost: 127.0.0.0/8, ::1, and 0.0.0.0/8, :: and IPv4-mapped IPv6, which
    # Linux sends to this host too. A private root on loopback (a lab) needs it off.
    do_not_query_localhost: bool = True
    do_not_query_addresses: list[IPNetwork] = []
    # Queries per second sent to one zone's servers (Unbound's ratelimit), against random-subdomain
    # ("water torture") floods from infected devices: past it a question for that zone gets
    # SERVFAIL, or a stale answer, without a query leaving, except one in zone_rate_limit_factor
    # (0: none). 0: no limit. zone_rate_limit_for sets other limits for given domains. Forward
    # zones are not limited. Counted per process: with `processes = N`, N times this in all.
    zone_rate_limit_qps: int = Field(default=0, ge=0, le=1_000_000)
    zone_rate_limit_factor: int = Field(default=10, ge=0, le=1000)
    zone_rate_limit_for: list[ZoneRateLimitConfig] = []
    # DNS rebinding protection (Unbound's private-address): A and AAAA records for these
    # networks are dropped from what upstream servers answer, so that no public name leads a
    # subscriber's browser to their own router or your inner networks. Names under
    # private_domains, and in forward and stub zones (not a forward zone ".": the public tree),
    # keep them; local data is not touched. A reload that changes these empties the RRset cache.
    private_addresses: list[IPNetwork] = []
    private_domains: list[DomainName] = []
    # Limits against loops and work amplification, per client query.
    max_referrals: int = Field(default=30, ge=1, le=100)
    max_cname_chain: int = Field(default=12, ge=1, le=64)
    max_queries_per_request: int = Field(default=64, ge=4, le=1000)
    max_ns_depth: int = Field(default=4, ge=1, le=16)
    # Per-server timeouts adapt to the measured RTT between these bounds.
    upstream_timeout_min_seconds: float = Field(default=0.05, gt=0, le=5)
    upstream_timeout_max_seconds: float = Field(default=2.0, gt=0, le=30)
    upstream_timeout_initial_seconds: float = Field(default=0.4, gt=0, le=30)
    # A client query is answered SERVFAIL (or stale) after this long at most.
    request_timeout_seconds: float = Field(default=8.0, gt=0, le=60)

    @model_validator(mode="after")
    def _a_family(self) -> ResolverConfig:
        # Both off left no server askable, forwarders included: every name SERVFAIL, with
        # check-config "ok" (unbound-checkconf: "ip4 and ip6 are both disabled, pointless").
        if not self.do_ipv4 and not self.do_ipv6:
            raise ValueError("do_ipv4 and do_ipv6 are both false: no upstream server could be asked")
        return self


def _server_address(value: object) -> object:
    """A server to forward to: an IP address, with a port other than 53 as Unbound writes it
    ("127.0.0.1@5300") or as a socket address ("127.0.0.1:5300", "[2001:db8::53]:5300"); kept as
    the address, or "address@port" (what the resolver and its upstream transport take)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    host, at, port_text = text.partition("@")
    if not at and (text.startswith("[") or text.count(":") == 1):
        try:
            socket_address = parse_socket_address(text)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a server address: {exc}") from None
        host, port_text = socket_address.host, str(socket_address.port)
    try:
        ip = ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not a server address: {host!r} is not an IP address "
                         "(e.g. 198.18.0.53, 198.18.0.53@5300 or [2001:db8::53]:5300)") from None
    if not port_text:
        return str(ip)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not a server address: the port must be a number from 1 to 65535")
    return str(ip) if int(port_text) == 53 else f"{ip}@{int(port_text)}"


# An upstream server: its address, with "@port" when the port is not 53.
ServerAddress = Annotated[str, BeforeValidator(_server_address)]


class ForwardZoneConfig(Section):
    # Queries for this domain (and below) go to `servers`: with RD to resolvers (forward zone,
    # like Unbound's forward-zone) or, when `stub` is true, without RD to authoritative servers
    # (stub zone). name = "." forwards everything. A server on another port than 53:
    # "127.0.0.1@5300" (as Unbound) or "127.0.0.1:5300", "[2001:db8::53]:5300".
    name: DomainName
    servers: list[ServerAddress] = Field(min_length=1)
    stub: bool = False
    # When no forwarder answers, resolve by iterating from the root (Unbound's forward-first):
    # for a public domain (or ".") forwarded to resolvers that may fail. Forwarders that keep
    # timing out are then skipped for a while, so that names do not wait for them each time.
    first: bool = False

    @model_validator(mode="after")
    def _first_forwards(self) -> ForwardZoneConfig:
        if self.first and self.stub:
            raise ValueError("first = true is for forward zones (stub = false): a stub zone's servers are "
                             "where iteration goes already")
        return self


class LocalZoneConfig(Section):
    # An authoritative zone ispd answers from a zone file, e.g. the ISP's internal names.
    name: DomainName
    file: Path


class PolicyZoneConfig(Section):
    # A Response Policy Zone file (QNAME triggers). The first zone that matches a name wins.
    name: DomainName
    file: Path
    # Force every trigger of this zone to one action ("given": as written in the zone).
    action: Literal["given", "nxdomain", "nodata", "passthru", "drop"] = "given"
    # Only for some clients (a family filter sold as a plan option, a school's network): those
    # whose address is leased to (or in a RADIUS session of) a subscriber on one of `plans`, and
    # those in `clients`. Both empty: every client. Zones limited alike form one scope; at most
    # MAX_POLICY_SCOPES scopes.
    plans: list[Annotated[str, Field(min_length=1)]] = []
    clients: list[ClientNetwork] = []

    def scope(self) -> tuple[frozenset[str], frozenset[IPv4Network | IPv6Network]] | None:
        """Whom the zone is for: None for every client."""
        if not self.plans and not self.clients:
            return None
        return frozenset(self.plans), frozenset(self.clients)


class LeaseNamesConfig(Section):
    # DHCP lease host names appear as <hostname>.<domain> (A) and in the reverse zones of
    # `reverse_networks` (PTR) the moment the lease is granted. Unset domain: off.
    domain: DomainName | None = None
    reverse_networks: list[IPNetwork] = []
    ttl: int = Field(default=300, ge=0, le=86400)

    @property
    def served_reverse_networks(self) -> list[IPNetwork]:
        """The reverse networks local data answers: none without a domain. No lease has a name
        then, and each was answered NXDOMAIN for every address in it, the PTRs the real reverse
        zone holds never asked for (``DNSConfig.ignored_settings`` warns of it)."""
        return self.reverse_networks if self.domain is not None else []


class WalledGardenConfig(Section):
    # Queries from suspended subscribers (by their DHCP leases and RADIUS sessions) are answered
    # with the portal's address for every name except those in `allow` (and below them).
    portal_ipv4: IPv4Address | None = None
    portal_ipv6: IPv6Address | None = None
    allow: list[DomainName] = []
    ttl: int = Field(default=30, ge=0, le=3600)


class EncryptedListenerConfig(Section):
    """What DoT, DoH and DoQ share: a certificate, and limits so that no client can hold more
    than its share. An empty ``listen`` leaves the transport off."""

    listen: list[ListenAddress] = []
    # PEM files: the certificate chain (leaf first) and its private key. Re-read on SIGHUP
    # (new connections get the new certificate; established ones keep theirs).
    certificate: Path | None = None
    private_key: Path | None = None
    # Connections at once, in total and from one client address.
    max_connections: int = Field(default=10_000, ge=1, le=1_000_000)
    max_connections_per_client: int = Field(default=20, ge=1, le=100_000)
    # Queries (DoT) or streams (DoH, DoQ) in flight on one connection.
    max_streams_per_connection: int = Field(default=100, ge=1, le=10_000)
    # A connection with nothing in flight is closed after this long; a TLS or QUIC handshake
    # must finish within handshake_timeout_seconds.
    idle_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    handshake_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # The largest query accepted (DNS message bytes); larger ones get HTTP 413 (DoH) or close
    # the connection (DoT) or stream (DoQ).
    max_query_bytes: int = Field(default=4096, ge=512, le=65535)

    @property
    def enabled(self) -> bool:
        return bool(self.listen)

    @model_validator(mode="after")
    def _certificate_given(self) -> EncryptedListenerConfig:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("listening needs `certificate` and `private_key` (PEM file paths)")
        return self


class DoTConfig(EncryptedListenerConfig):
    """DNS over TLS (RFC 7858), usually on TCP port 853."""


QuicRetry = Literal["auto", "always", "never"]


class DoHConfig(EncryptedListenerConfig):
    """DNS over HTTPS (RFC 8484): HTTP/2 over TLS on ``listen`` (usually TCP 443) and HTTP/3 over
    QUIC on ``listen_http3`` (usually UDP 443), at ``path``."""

    listen_http3: list[ListenAddress] = []
    path: str = Field(default="/dns-query", pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$")
    # When a new HTTP/3 client must first prove its address with a QUIC Retry (as [dns.doq]).
    retry: QuicRetry = "auto"

    @property
    def enabled(self) -> bool:
        return bool(self.listen) or bool(self.listen_http3)


class DoQConfig(EncryptedListenerConfig):
    """DNS over QUIC (RFC 9250), usually on UDP port 853."""

    # RFC 9250 §4.5: 0-RTT data can be replayed; only safe for queries, still off unless asked.
    allow_0rtt: bool = False
    # When a new client must first prove its address with a Retry (RFC 9000 §8.1), before any
    # TLS work: "auto" while the listener has many handshakes under way (a flood of Initials
    # from forged sources), "always", or "never".
    retry: QuicRetry = "auto"


def _ipv6_network(value: IPv4Network | IPv6Network) -> IPv4Network | IPv6Network:
    if not isinstance(value, IPv6Network):
        raise ValueError(f"{value} is not an IPv6 network (AAAA records hold IPv6 addresses)")
    return value


def _dns64_prefix(value: IPv4Network | IPv6Network | None) -> IPv6Network | None:
    if value is None:
        return None
    if not isinstance(value, IPv6Network):
        raise ValueError(f"{value} is not an IPv6 prefix (e.g. 64:ff9b::/96)")
    check_prefix(value)
    return value


class DNS64Config(Section):
    # DNS64 (RFC 6147) for IPv6-only subscriber networks behind a NAT64: a name with A records
    # but no AAAA gets AAAA records embedding its IPv4 addresses in `prefix` (RFC 6052: a /32,
    # /40, /48, /56, /64 or /96; the well-known 64:ff9b::/96 embeds global IPv4 addresses only).
    # For every client of this resolver (as Unbound's dns64 module). Unset: off.
    prefix: Annotated[IPNetwork | None, AfterValidator(_dns64_prefix)] = None
    # AAAA records in these networks count as none (RFC 6147 §5.1.4): IPv4-mapped ones by default.
    exclude: list[Annotated[IPNetwork, AfterValidator(_ipv6_network)]] = Field(
        default_factory=lambda: [ip_network("::ffff:0:0/96")])
    # Make AAAA records from the A records even for names that have AAAA records of their own.
    synthesize_all: bool = False
    # Only for clients in these networks (the IPv6-only ones behind the NAT64), as Unbound with
    # views: the others (dual-stack subscribers) keep the real "no AAAA". Empty: every client.
    clients: list[ClientNetwork] = []

    @model_validator(mode="after")
    def _prefix_given(self) -> DNS64Config:
        # Without a prefix DNS64 is off: the IPv6-only clients an operator listed would get the
        # real "no AAAA" for every IPv4-only name, and `check-config` said ok. (The defaults, as
        # the annotated config writes them out, say nothing.)
        given = [key for key, value in (("clients", self.clients), ("synthesize_all", self.synthesize_all),
                                        ("exclude", self.exclude != [ip_network("::ffff:0:0/96")])) if value]
        if self.prefix is None and given:
            raise ValueError(f"{', '.join(given)} given without prefix, and DNS64 is off without one: "
                             "set prefix (64:ff9b::/96, or the NAT64's own)")
        return self


def _no_path_when_empty(value: object) -> object:
    """socket_path = "" is dnstap off, as an empty socket path is elsewhere in the config (not
    the config file's directory, which a relative "" would be)."""
    return None if isinstance(value, str) and not value.strip() else value


class DnstapConfig(Section):
    # dnstap (dnstap.info): a copy of the DNS traffic, as protobuf messages over Frame Streams, to
    # a collector (fstrm_capture, golang-dnstap, go-dnscollector, Vector). Give the collector's
    # Unix socket or its TCP address; neither: off. DNS never waits for the collector: messages
    # wait in a buffer of buffer_bytes while it is away or slow, past that they are dropped and
    # counted. With several processes each connects on its own.
    socket_path: Annotated[Path | None, BeforeValidator(_no_path_when_empty)] = None
    address: ListenAddress | None = None
    # Sent in every message; identity unset: the host name; version: "ispd <version>".
    identity: str | None = Field(default=None, max_length=255)
    send_identity: bool = True
    send_version: bool = True
    # Which messages: the clients' queries and the replies they get; the queries this resolver
    # sends to authoritative servers and forwarders, and their replies.
    client_queries: bool = True
    client_responses: bool = True
    resolver_queries: bool = False
    resolver_responses: bool = False
    buffer_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024, le=1024 * 1024 * 1024)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None or self.address is not None

    @model_validator(mode="after")
    def _one_collector(self) -> DnstapConfig:
        if self.socket_path is not None and self.address is not None:
            raise ValueError("give socket_path or address (one collector), not both")
        if self.address is not None and self.address.port == 0:
            raise ValueError(f"address: {self.address}: give the collector's port")
        return self


class DNSSECConfig(Section):
    # Validate answers (RFC 4033-4035): AD on secure answers for clients that ask (DO or AD),
    # SERVFAIL with an Extended DNS Error (RFC 8914) on bogus ones; a client that sets CD gets
    # the data unvalidated.
    validation: bool = True
    # Trust anchors: DS or DNSKEY records in zone-file form (Unbound's root.key works as it is).
    # Unset: the IANA root anchors that ship with ispd. A private root (root_hints) needs its own.
    trust_anchor_file: Path | None = None
    # Negative trust anchors (RFC 7646): domains whose signatures are broken and are resolved
    # without validation until they are fixed. `ispd dns nta add` adds more at run time.
    negative_trust_anchors: list[DomainName] = []
    # How long a bogus verdict is remembered before the servers are asked again.
    bogus_ttl_seconds: int = Field(default=60, ge=1, le=3600)
    # RFC 8198: answer NXDOMAIN and NODATA from cached, validated NSEC/NSEC3 records without asking.
    aggressive_nsec: bool = True
    # Signature checks (public-key operations) per RRset before it is bogus: a zone with many keys
    # sharing a tag and many failing RRSIGs (KeyTrap, CVE-2023-50387) must not hold the event loop
    # for seconds. 8, as Unbound; a real zone needs one or two.
    max_signature_checks: int = Field(default=8, ge=1, le=64)
    # NSEC3 hashing per proof before it is bogus, in hashes of the most iterations a chain may
    # have (150; a hash of fewer counts for less): a long question under a chain of many iterations
    # and a long salt (CVE-2023-50868) would cost a hash of up to 151 rounds per label, 10 ms of
    # the event loop per query. 8, as Unbound: 8 names under 150 iterations, 110 under 10, any
    # name under the 0 extra iterations of RFC 9276.
    max_nsec3_calculations: int = Field(default=8, ge=1, le=256)
    # RFC 5011: follow the anchored zones' key rollovers (new keys trusted after a 30-day
    # hold-down, revoked ones dropped), with the state in the store. Editing the anchor file
    # starts the tracking afresh from it.
    auto_update_anchors: bool = True


class DDRConfig(Section):
    # Discovery of Designated Resolvers (RFC 9462): answer `_dns.resolver.arpa. SVCB` (and
    # `_dns.<name> SVCB`) with the encrypted listeners ([dns.dot], [dns.doh], [dns.doq]), so that
    # Windows 11, iOS/macOS and Android move to them on their own. `name`: the designated
    # resolver's name, which every listener's certificate must hold (and, for clients to verify
    # the designation, IP address SubjectAltNames for `listen`: check-config says when one does
    # not). Unset: off (moving subscribers to TLS costs CPU, and is the operator's to decide).
    name: DomainName | None = None
    ttl: int = Field(default=300, ge=0, le=86400)

    @model_validator(mode="after")
    def _a_name(self) -> DDRConfig:
        if self.name is not None:
            if len(name_from_text(self.name)) + 5 > 255:
                raise ValueError(f"name {self.name!r} is too long for _dns.{self.name}")
            if "*" in self.name or self.name == ".":
                raise ValueError(f"name {self.name!r}: give the name the certificates are for (a host name)")
        return self


class DNSConfig(Section):
    enabled: bool = False
    # UDP and TCP on each address.
    listen: list[ListenAddress] = Field(default_factory=lambda: [SocketAddress("127.0.0.1", 53)])
    # Processes answering DNS: one event loop uses one core, so a resolver busier than that runs
    # more. The main process is the first; the others are workers sharing its listeners
    # (SO_REUSEPORT: the kernel spreads clients over them; DoQ and HTTP/3 stay in the first).
    # Each has a cache of its own.
    processes: int = Field(default=1, ge=1, le=64)
    # Clients allowed to query (the subscriber networks); everyone else gets REFUSED.
    allow: list[ClientNetwork] = Field(default_factory=lambda: [ip_network("127.0.0.0/8"), ip_network("::1/128")])
    # Root hints in named.root format; unset: the IANA root servers (a copy ships with ispd).
    root_hints: Path | None = None
    # Queries per second per client address, with a burst of twice that; 0: no limit. Over UDP
    # the queries past it are dropped; over TCP and the encrypted transports they get REFUSED.
    # UDP and the connections are counted apart (a UDP source may be forged).
    rate_limit_qps: int = Field(default=0, ge=0, le=1_000_000)
    # A log line (dns.servfail) for each resolution that ends in SERVFAIL, saying why, as
    # Unbound's log-servfail: at most 10 a second per process, the rest counted in the next line.
    log_servfail: bool = False
    # TCP: a connection idle this long (no query, or replies the client does not read) is
    # closed; queries in flight per connection; connections in all and per client address.
    tcp_idle_seconds: float = Field(default=10.0, gt=0, le=600)
    tcp_max_pipelined: int = Field(default=100, ge=1, le=10_000)
    tcp_max_connections: int = Field(default=1000, ge=1, le=100_000)
    tcp_max_connections_per_client: int = Field(default=20, ge=1, le=100_000)
    # Local data: records in zone-file syntax ("portal.isp.example. 300 A 198.18.0.10").
    local_records: list[str] = []
    local_zone: list[LocalZoneConfig] = []
    # Names answered here by default, never sent to the Internet (Unbound's default local zones):
    # localhost. (A 127.0.0.1, AAAA ::1) and its reverse names; NXDOMAIN with an SOA for onion.,
    # test., invalid., home.arpa. and the reverse zones of private, shared (100.64.0.0/10),
    # link-local, documentation and other special addresses (RFC 6303, 6598, 6761, 7686, 8375).
    # Local data, lease names, policy and forward or stub zones at or below one of them win.
    # "auto": all of them while names are resolved from the IANA root; only the localhost ones
    # under a forward zone above them (such as ".") or with root_hints of your own, whose
    # servers may hold answers of their own. "all": all of them whatever (as Unbound);
    # "localhost": only the localhost ones; "none": nothing.
    locally_served_zones: Literal["auto", "all", "localhost", "none"] = "auto"
    # Default zones not served, e.g. ["10.in-addr.arpa."] (Unbound's local-zone nodefault).
    locally_served_zones_exclude: list[DomainName] = []
    forward_zone: list[ForwardZoneConfig] = []
    policy_zone: list[PolicyZoneConfig] = []
    lease_names: LeaseNamesConfig = LeaseNamesConfig()
    walled_garden: WalledGardenConfig = WalledGardenConfig()
    cache: CacheConfig = CacheConfig()
    resolver: ResolverConfig = ResolverConfig()
    dnssec: DNSSECConfig = DNSSECConfig()
    dns64: DNS64Config = DNS64Config()
    dnstap: DnstapConfig = DnstapConfig()
    # Encrypted DNS for subscribers; each is off until it has listen addresses.
    dot: DoTConfig = DoTConfig()
    doh: DoHConfig = DoHConfig()
    doq: DoQConfig = DoQConfig()
    ddr: DDRConfig = DDRConfig()

    @model_validator(mode="after")
    def _consistent(self) -> DNSConfig:
        if not self.enabled:
            return self
        if not self.listen:
            raise ValueError('listen: give at least one address, e.g. listen = ["198.18.0.1:53"]')
        if self.processes > 1:
            for key, addresses in (("listen", self.listen), ("dot.listen", self.dot.listen),
                                   ("doh.listen", self.doh.listen), ("doh.listen_http3", self.doh.listen_http3),
                                   ("doq.listen", self.doq.listen)):
                if any(address.port == 0 for address in addresses):
                    raise ValueError(f"{key}: port 0 (any free port) cannot be shared by {self.processes} "
                                     "processes: give the port")
        if self.ddr.name is not None:
            encrypted = (("dot.listen", self.dot.listen), ("doh.listen", self.doh.listen),
                         ("doh.listen_http3", self.doh.listen_http3), ("doq.listen", self.doq.listen))
            if not any(addresses for _, addresses in encrypted):
                raise ValueError("ddr.name is set, but no encrypted listener ([dns.dot], [dns.doh], [dns.doq]) "
                                 "listens: there is nothing to designate")
            for key, addresses in encrypted:
                if any(address.port == 0 for address in addresses):
                    raise ValueError(f"{key}: port 0 (any free port) cannot be advertised by ddr: give the port")
        seen: set[str] = set()
        for name in self.locally_served_zones_exclude:
            if name_from_text(name) not in DEFAULT_ZONE_NAMES:
                raise ValueError(f"locally_served_zones_exclude: {name} is not a locally served zone (such as "
                                 f"localhost., onion., 10.in-addr.arpa., 64.100.in-addr.arpa.; README lists them)")
        for zone in self.forward_zone:
            if zone.name in seen:
                raise ValueError(f"forward_zone {zone.name!r} is configured twice")
            seen.add(zone.name)
        names = [z.name for z in self.policy_zone]
        if len(names) != len(set(names)):
            raise ValueError("policy_zone: two zones have one name")
        scopes = {scope for z in self.policy_zone if (scope := z.scope()) is not None}
        if len(scopes) > MAX_POLICY_SCOPES:
            raise ValueError(f"policy_zone: {len(scopes)} different sets of plans and clients limit policy zones; "
                             f"at most {MAX_POLICY_SCOPES} (zones limited to the same plans and clients count once)")
        limited = [limit.name for limit in self.resolver.zone_rate_limit_for]
        if len(limited) != len(set(limited)):
            raise ValueError("resolver.zone_rate_limit_for: a domain is given twice")
        if self.resolver.upstream_timeout_min_seconds > self.resolver.upstream_timeout_max_seconds:
            raise ValueError("resolver: upstream_timeout_min_seconds is larger than upstream_timeout_max_seconds")
        return self

    def warnings(self) -> list[ConfigWarning]:
        found = [ConfigWarning("dns.config.ignored", w) for w in self.ignored_settings()]
        if (warning := open_resolver_warning(self)) is not None:
            found.append(ConfigWarning("dns.open_resolver", warning))
        if (warning := outgoing_address_warning(self)) is not None:
            found.append(ConfigWarning("dns.outgoing_address_unusable", warning))
        return found

    def ignored_settings(self) -> list[str]:
        """Settings that do nothing as written, for check-config and the log to warn of. Warned of,
        not refused: a config that ran before an upgrade must still start."""
        ignored = []
        if self.lease_names.domain is None and self.lease_names.reverse_networks:
            ignored.append("lease_names.reverse_networks is ignored without lease_names.domain (lease names are "
                           "off, no address has one): set domain, or remove reverse_networks")
        r = self.resolver
        if not r.upstream_timeout_min_seconds <= r.upstream_timeout_initial_seconds <= r.upstream_timeout_max_seconds:
            # (ServerState.timeout clamps every server's timeout to [min, max])
            ignored.append(f"resolver.upstream_timeout_initial_seconds ({r.upstream_timeout_initial_seconds}) lies "
                           f"outside upstream_timeout_min_seconds ({r.upstream_timeout_min_seconds}) and "
                           f"upstream_timeout_max_seconds ({r.upstream_timeout_max_seconds}), which every timeout "
                           "is held between: a server not measured yet is waited the nearer of the two")
        return ignored


_GLOBAL_UNICAST = IPv6Network("2000::/3")  # the whole IPv6 Internet


def open_resolver_warning(config: DNSConfig) -> str | None:
    """``allow`` letting the whole IPv4 or IPv6 Internet ask (0.0.0.0/0, ::/0, or networks that
    add up to it): an open resolver, what reflection floods are made with (RFC 5358)."""
    open_to = []
    if any(n.prefixlen == 0 for n in collapse_addresses(n for n in config.allow if isinstance(n, IPv4Network))):
        open_to.append("every IPv4 address")
    if any(_GLOBAL_UNICAST.subnet_of(n)
           for n in collapse_addresses(n for n in config.allow if isinstance(n, IPv6Network))):
        open_to.append("every IPv6 address")
    if not open_to:
        return None
    return (f"allow lets {' and '.join(open_to)} ask: ispd is an open resolver, which anyone can use to "
            "reflect and amplify floods at others (RFC 5358); allow only the subscriber networks")


def outgoing_address_warning(config: DNSConfig) -> str | None:
    """A warning for resolver.outgoing_ipv4/ipv6 that this host cannot send from (not one of its
    addresses): every upstream query of that family fails at bind() and its servers are counted
    unreachable and set aside, while the log said nothing (Unbound does not start)."""
    unusable = []
    for key, address in zip(("outgoing_ipv4", "outgoing_ipv6"), outgoing_addresses(config), strict=True):
        if address is None:
            continue
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.bind((address, 0))
        except OSError as exc:
            unusable.append(f"resolver.{key} = {address}: {exc.strerror or exc}")
    if not unusable:
        return None
    return (f"{'; '.join(unusable)}: upstream queries of that family cannot leave from it, and every server "
            "of it will be counted unreachable (give an address of this host, or leave it unset)")


def outgoing_addresses(config: DNSConfig) -> tuple[str | None, str | None]:
    """The source addresses of upstream queries (None: the kernel's choice)."""
    v4, v6 = config.resolver.outgoing_ipv4, config.resolver.outgoing_ipv6
    return (str(v4) if v4 else None), (str(v6) if v6 else None)
