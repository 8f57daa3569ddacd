"""The ``[dhcp6]`` section: where to listen, the links (subnets), their address and prefix
pools, and lifetimes.

Validation checks what an operator can get wrong without noticing until a home router fails:
pools outside their link, overlapping pools or links, a delegated length shorter than its
pool's prefix, timers out of order (T1 ≤ T2 ≤ preferred ≤ valid, RFC 8415 §21.4), two pools
with one name (the name is a metric label and is stored with each binding), a subnet's
interface that is not served, two subnets on one interface (only one would ever be used).
"""

from __future__ import annotations

import itertools
from ipaddress import IPv6Address, IPv6Network
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ispd.configtypes import ConfigWarning, Section

_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
_DOMAIN = r"^[A-Za-z0-9.-]{1,253}$"


def parse_range6(text: str) -> tuple[IPv6Address, IPv6Address]:
    parts = [p.strip() for p in text.split("-")]
    if len(parts) != 2:
        raise ValueError(f"range {text!r}: write it as 'first - last', e.g. '2001:db8:1::100 - 2001:db8:1::1ff'")
    try:
        first, last = IPv6Address(parts[0]), IPv6Address(parts[1])
    except ValueError as exc:
        raise ValueError(f"range {text!r}: {exc}") from None
    if int(last) < int(first):
        raise ValueError(f"range {text!r}: the first address is after the last")
    return first, last


class Lifetimes(Section):
    """Lifetimes and timers; a subnet's values replace the section's (unset: the section's)."""

    # How long an address or prefix is preferred, then valid (RFC 8415 §7.7: seconds).
    preferred_lifetime_seconds: int | None = Field(default=None, ge=60, le=366 * 86400)
    valid_lifetime_seconds: int | None = Field(default=None, ge=60, le=366 * 86400)
    # T1 and T2 (RFC 8415 §21.4); unset: 1/2 and 4/5 of the preferred lifetime.
    renew_seconds: int | None = Field(default=None, ge=1)
    rebind_seconds: int | None = Field(default=None, ge=1)
    # DNS recursive name servers (option 23) and the domain search list (option 24).
    dns_servers: list[IPv6Address] | None = None
    domain_search: list[str] | None = None

    @field_validator("domain_search")
    @classmethod
    def _domains(cls, names: list[str] | None) -> list[str] | None:
        for name in names or ():
            labels = name.rstrip(".").split(".")
            if not name.rstrip(".") or any(not 1 <= len(label) <= 63 for label in labels) or len(name) > 253 \
                    or not all(c.isalnum() or c in "-." for c in name) or not name.isascii():
                raise ValueError(f"domain_search: {name!r} is not a domain name")
        return names


class AddressPool6(Section):
    # A name for this pool: a metric label, and stored with every binding it hands out.
    name: str = Field(pattern=_NAME)
    # "first - last" inside the subnet's prefix, e.g. "2001:db8:1::1000 - 2001:db8:1::1fff".
    range: str

    @field_validator("range")
    @classmethod
    def _a_range(cls, text: str) -> str:
        parse_range6(text)
        return text

    @property
    def first(self) -> IPv6Address:
        return parse_range6(self.range)[0]

    @property
    def last(self) -> IPv6Address:
        return parse_range6(self.range)[1]


class PrefixPool6(Section):
    """Prefixes delegated to subscribers' routers (IA_PD, RFC 8415 §6.3): ``prefix`` cut into
    networks of ``delegated_length`` bits, one per router (a /56 or a /48 each, as RIPE-690
    recommends for homes and businesses)."""

    name: str = Field(pattern=_NAME)
    prefix: IPv6Network
    delegated_length: int = Field(ge=1, le=128)

    @model_validator(mode="after")
    def _fits(self) -> PrefixPool6:
        if self.delegated_length < self.prefix.prefixlen:
            raise ValueError(f"prefix pool {self.name!r}: delegated_length {self.delegated_length} is shorter than "
                             f"its prefix {self.prefix}; give /{self.prefix.prefixlen} or longer")
        return self

    @property
    def size(self) -> int:
        return 1 << (self.delegated_length - self.prefix.prefixlen)


class Subnet6(Lifetimes):
    """One link: its prefix, and the pools whose addresses and prefixes its clients get."""

    name: str = Field(pattern=_NAME)
    # The link's on-link prefix. A relay's link-address inside it places the relay's clients
    # here; a CONFIRM tells clients whether their addresses are still on this link.
    prefix: IPv6Network
    # Direct (unrelayed) clients on this interface are served from this subnet.
    interface: str | None = Field(default=None, min_length=1, max_length=15)
    # Relays whose clients belong here although their link-address is not in `prefix`: the
    # link-address given, or, from relays that leave it :: (as PPPoE BNGs may), the address
    # the relay sends from (a BNG relaying from its loopback, say).
    relay_addresses: list[IPv6Address] = []
    # Rapid commit (RFC 8415 §18.3.1) here; unset: [dhcp6] rapid_commit.
    rapid_commit: bool | None = None
    pool: list[AddressPool6] = []
    prefix_pool: list[PrefixPool6] = []

    @model_validator(mode="after")
    def _consistent(self) -> Subnet6:
        for pool in self.pool:
            if pool.first not in self.prefix or pool.last not in self.prefix:
                raise ValueError(f"subnet {self.name!r}: pool {pool.name!r} ({pool.range}) is not inside {self.prefix}")
        spans = sorted((int(p.first), int(p.last), p.name) for p in self.pool)
        for (_, last, name), (first, _, other) in itertools.pairwise(spans):
            if first <= last:
                raise ValueError(f"subnet {self.name!r}: pools {name!r} and {other!r} overlap")
        if not self.pool and not self.prefix_pool:
            raise ValueError(f"subnet {self.name!r}: give it a [[dhcp6.subnet.pool]] of addresses, a "
                             "[[dhcp6.subnet.prefix_pool]] of prefixes to delegate, or both")
        return self

    def handed_out(self) -> list[tuple[str, int, int]]:
        """What DHCPv6 hands to whoever asks on this link, as (what, first, last) addresses: its
        pools of addresses and of prefixes (a RADIUS prefix, pooled or a subscriber's own, must
        not lie in them)."""
        return [*((f"[[dhcp6.subnet.pool]] {p.name!r} ({p.range})", int(p.first), int(p.last)) for p in self.pool),
                *((f"[[dhcp6.subnet.prefix_pool]] {p.name!r} ({p.prefix})", int(p.prefix.network_address),
                   int(p.prefix.broadcast_address)) for p in self.prefix_pool)]


class DHCP6Config(Lifetimes):
    enabled: bool = False
    # Interfaces to serve on (by name): ff02::1:2 is joined on each. Direct clients are matched
    # to a subnet by interface, relayed ones by the relay's link-address; both arrive on one
    # of these.
    interfaces: list[str] = []
    # UDP port to listen on; 547 except in tests and benchmarks.
    port: int = Field(default=547, ge=0, le=65535)
    # The server's DUID (RFC 8415 §11) in hex, e.g. "00:02:00:00:ab:11:..."; unset: a DUID-UUID
    # (RFC 6355) made from /etc/machine-id, the same at every start on this machine.
    server_duid: str | None = None
    # The Preference option (7) in Advertise, 0-255; 255 tells clients to take this server's
    # offer at once instead of waiting a second for others. Unset: not sent (0).
    preference: int | None = Field(default=None, ge=0, le=255)
    # Clients whose line (or DUID) no reservation names: "serve" them from the pools, or
    # "ignore" them (an ISP that serves registered lines only).
    unknown_clients: Literal["serve", "ignore"] = "serve"
    # Relay-forward messages arriving on an interface that a subnet serves direct clients on:
    # "ignore" them (any subscriber device there could write one, and claim another line's
    # Interface-ID and its reservation), or "use" them where the access switches of that link
    # run a lightweight relay (LDRA, RFC 6221). Relays on other interfaces are always heard.
    relays_on_client_links: Literal["ignore", "use"] = "ignore"
    # Rapid commit (RFC 8415 §18.3.1): a Solicit with the Rapid Commit option gets the Reply
    # at once. Only where ispd is the one DHCPv6 server of the link.
    rapid_commit: bool = False
    # An advertised address or prefix is held for the client this long before another may get it.
    offer_hold_seconds: int = Field(default=30, ge=1, le=600)
    # A declined address (the client found it in use, RFC 8415 §18.2.8) stays out of use this long.
    decline_quarantine_seconds: int = Field(default=86400, ge=0, le=30 * 86400)
    # Relay agents (BNGs) that may ask about bindings with LEASEQUERY (RFC 5007), by the source
    # address of their query: addresses or networks. Empty (the default): leasequery is off.
    leasequery_requesters: list[IPv6Network] = []
    # How often expired bindings are reclaimed (marked expired in the store).
    reclaim_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    # An ended binding (released, expired) is remembered this long: a client back within it
    # gets its address or prefix again if nobody took it; after it, a new one. (The store keeps
    # the history for store.history_retention_days whatever this says.)
    remember_ended_seconds: int = Field(default=7 * 86400, ge=0, le=366 * 86400)
    subnet: list[Subnet6] = []

    @field_validator("server_duid")
    @classmethod
    def _duid(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                raw = bytes.fromhex(text.replace(":", "").replace("-", ""))
            except ValueError:
                raise ValueError(f"server_duid {text!r}: write it as hex bytes, "
                                 "e.g. \"00:02:00:00:d8:8c:01\"") from None
            if not 3 <= len(raw) <= 130:
                raise ValueError(f"server_duid: {len(raw)} bytes; a DUID has 3 to 130 (RFC 8415 §11.1)")
        return text

    @model_validator(mode="after")
    def _consistent(self) -> DHCP6Config:
        for subnet in self.subnet:
            self.lifetimes(subnet)  # timers in order wherever they are set
        if not self.enabled:
            return self
        if not self.interfaces:
            raise ValueError("interfaces: name at least one interface to serve on, e.g. interfaces = [\"eth1\"]")
        if not self.subnet:
            raise ValueError("subnet: configure at least one [[dhcp6.subnet]] with a pool or a prefix_pool")
        names: set[str] = set()
        spans: list[tuple[IPv6Network, str]] = []
        on_interface: dict[str, str] = {}
        for subnet in self.subnet:
            if subnet.interface is not None and subnet.interface not in self.interfaces:
                raise ValueError(f"subnet {subnet.name!r}: interface {subnet.interface!r} is not in interfaces")
            # A direct client's link is the one subnet of its interface (there are no shared
            # networks): of two, one would never serve anybody, and its clients would lose their
            # addresses at their next renewal.
            if subnet.interface is not None and (taken := on_interface.get(subnet.interface)) is not None:
                raise ValueError(f"subnet {subnet.name!r}: interface {subnet.interface!r} already serves subnet "
                                 f"{taken!r} (one subnet per interface: add the pools to that one)")
            if subnet.interface is not None:
                on_interface[subnet.interface] = subnet.name
            if subnet.name in names:
                raise ValueError(f"subnet name {subnet.name!r} is used twice")
            names.add(subnet.name)
            for network, what in [(subnet.prefix, f"subnet {subnet.name!r}"),
                                  *((p.prefix, f"prefix pool {p.name!r}") for p in subnet.prefix_pool)]:
                for other, other_what in spans:
                    if network.overlaps(other):
                        raise ValueError(f"{what} ({network}) overlaps {other_what} ({other})")
                spans.append((network, what))
            for pool_name in [*(p.name for p in subnet.pool), *(p.name for p in subnet.prefix_pool)]:
                if pool_name in names:
                    raise ValueError(f"pool name {pool_name!r} is used twice "
                                     "(pools and subnets need names of their own)")
                names.add(pool_name)
        return self

    def warnings(self) -> list[ConfigWarning]:
        return [ConfigWarning("dhcp6.subnet.relay_address_ambiguous", w) for w in self.relay_address_warnings()]

    def relay_address_warnings(self) -> list[str]:
        """``relay_addresses`` entries that another subnet claims too (inside its prefix, or in its
        list): a relayed message goes to the first subnet, in the file's order, that holds the
        relay's link-address in its prefix or lists it, so that relay's clients are that
        subnet's whatever the other says, and moving a subnet in the file moves them. A warning,
        not a refusal: such a config ran before (docs/DESIGN.md); it names the subnet that serves."""
        warnings = []
        said: set[IPv6Address] = set()
        for subnet in self.subnet:
            for address in subnet.relay_addresses:
                claimants = [s.name for s in self.subnet if address in s.prefix or address in s.relay_addresses]
                if len(claimants) < 2 or address in said:
                    continue  # (inside its own prefix only: redundant, not ambiguous)
                said.add(address)
                warnings.append(f"relay address {address} is claimed by subnets {', '.join(map(repr, claimants))} "
                                f"(a prefix that holds it, or relay_addresses): its relay's clients are served from "
                                f"{claimants[0]!r}, the first in the file; keep it in one subnet only")
        return warnings

    def lifetimes(self, subnet: Subnet6) -> tuple[int, int, int, int]:
        """(preferred, valid, T1, T2) for ``subnet``; ValueError if they are out of order."""
        preferred = subnet.preferred_lifetime_seconds or self.preferred_lifetime_seconds or 3600
        valid = subnet.valid_lifetime_seconds or self.valid_lifetime_seconds or 2 * preferred
        renew = subnet.renew_seconds or self.renew_seconds or preferred // 2
        rebind = subnet.rebind_seconds or self.rebind_seconds or preferred * 4 // 5
        where = f"subnet {subnet.name!r}: "
        if preferred > valid:
            raise ValueError(f"{where}the preferred lifetime ({preferred} s) is longer than the valid one ({valid} s)")
        if renew > rebind:
            raise ValueError(f"{where}renew_seconds ({renew}) is after rebind_seconds ({rebind})")
        if rebind > preferred:
            raise ValueError(f"{where}rebind_seconds ({rebind}) is after the preferred lifetime ({preferred} s)")
        return preferred, valid, renew, rebind

    def dns_servers_of(self, subnet: Subnet6 | None) -> list[IPv6Address]:
        """``subnet``'s DNS servers, else the section's (None: the section's)."""
        return subnet.dns_servers if subnet is not None and subnet.dns_servers is not None else self.dns_servers or []

    def domain_search_of(self, subnet: Subnet6 | None) -> list[str]:
        return subnet.domain_search if subnet is not None and subnet.domain_search is not None \
            else self.domain_search or []
