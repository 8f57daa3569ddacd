"""The ``[dhcp]`` section: where to listen, the subnets and their pools, and lease policy.

Validation checks what an operator can get wrong without noticing until a client fails: pools
outside their subnet, overlapping pools or subnets, routers outside the subnet, T1 ≥ T2, two
pools with one name (the name is a metric label and is stored with each lease).
"""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ispd.configtypes import Section, parse_range


class StaticRoute(Section):
    destination: IPv4Network
    router: IPv4Address


class ClientOptions(Section):
    """Options sent to clients; a pool's values replace its subnet's (unset: the subnet's)."""

    routers: list[IPv4Address] | None = None
    dns_servers: list[IPv4Address] | None = None
    domain_name: str | None = Field(default=None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.-]+$")
    ntp_servers: list[IPv4Address] | None = None
    mtu: int | None = Field(default=None, ge=68, le=65535)
    # RFC 3442 option 121. A client that takes it ignores `routers`: include a 0.0.0.0/0 route.
    static_routes: list[StaticRoute] | None = None
    lease_seconds: int | None = Field(default=None, ge=60, le=366 * 86400)
    # T1 and T2 (RFC 2131 §4.4.5); unset: 1/2 and 7/8 of the lease time.
    renew_seconds: int | None = Field(default=None, ge=1)
    rebind_seconds: int | None = Field(default=None, ge=1)
    # Option 114 (RFC 8910): the captive portal's API URI, which tells the client's OS to open
    # the portal (set it on walled-garden pools). An https URI that fits a DHCP option.
    captive_portal: str | None = Field(default=None, max_length=255, pattern=r"^https://[!-~]+$")

    @model_validator(mode="after")
    def _timers_in_order(self) -> ClientOptions:
        """T1 < T2 < lease (RFC 2131 §4.4.5) among the values given here; what a pool inherits
        and does not fit its own lease falls back to 1/2 and 7/8. (A walled-garden pool inherits
        no times from its subnet: its lease is its own or the short garden default.)"""
        renew, rebind, lease = self.renew_seconds, self.rebind_seconds, self.lease_seconds
        if renew is not None and rebind is not None and renew >= rebind:
            raise ValueError(f"renew_seconds ({renew}) must be less than rebind_seconds ({rebind})")
        for name, value in (("renew_seconds", renew), ("rebind_seconds", rebind)):
            if value is not None and lease is not None and value >= lease:
                raise ValueError(f"{name} ({value}) must be less than lease_seconds ({lease})")
        return self


class PoolConfig(ClientOptions):
    # A name for this pool: a metric label and stored with every lease it hands out.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # "first - last", both inside the subnet, e.g. "198.18.0.100 - 198.18.0.199".
    range: str
    # Addresses for suspended subscribers (and for unknown clients when unknown_clients =
    # "walled-garden"): give it a short lease and DNS servers that lead to the captive portal.
    walled_garden: bool = False

    @field_validator("range")
    @classmethod
    def _a_range(cls, text: str) -> str:
        first, last = parse_range(text)
        if int(last) < int(first):
            raise ValueError(f"range {text!r}: the first address is after the last")
        return text

    @property
    def first(self) -> IPv4Address:
        return parse_range(self.range)[0]

    @property
    def last(self) -> IPv4Address:
        return parse_range(self.range)[1]


class SubnetConfig(ClientOptions):
    network: IPv4Network
    # Direct (unrelayed) clients on this interface are served from this subnet.
    interface: str | None = Field(default=None, min_length=1, max_length=15)
    # Relay agents (giaddr) whose clients belong here although the relay's own address is not in
    # `network` (a BNG relaying from its loopback, say). A giaddr inside `network` needs no entry.
    relay_addresses: list[IPv4Address] = []
    # The server identifier (option 54) for this subnet; unset: the receiving interface's address.
    server_id: IPv4Address | None = None
    pool: list[PoolConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> SubnetConfig:
        for pool in self.pool:
            if pool.first not in self.network or pool.last not in self.network:
                raise ValueError(f"pool {pool.name!r}: range {pool.range} is not inside {self.network}")
            if self.network.prefixlen < 31 and (
                pool.first == self.network.network_address or pool.last == self.network.broadcast_address
            ):
                raise ValueError(f"pool {pool.name!r}: range {pool.range} includes the network or broadcast address")
        spans = sorted((int(p.first), int(p.last), p.name) for p in self.pool)
        for (_, last, name), (first, _, other) in itertools.pairwise(spans):
            if first <= last:
                raise ValueError(f"pools {name!r} and {other!r} overlap")
        for router in self.routers or []:
            if router not in self.network:
                raise ValueError(f"router {router} is not inside {self.network}")
        return self


class DHCPConfig(Section):
    enabled: bool = False
    # Interfaces to serve on (by name). Direct clients are matched to a subnet by interface,
    # relayed ones by the relay's address; both arrive on one of these.
    interfaces: list[str] = []
    # UDP port to listen on; 67 except in tests and benchmarks.
    port: int = Field(default=67, ge=0, le=65535)
    # Defaults for every subnet that does not set its own; walled-garden pools take
    # walled_garden_lease_seconds unless the pool itself sets lease_seconds (a subnet's does not apply).
    lease_seconds: int = Field(default=3600, ge=60, le=366 * 86400)
    walled_garden_lease_seconds: int = Field(default=300, ge=60, le=86400)
    # An offered address is held for the client this long before it may go to another.
    offer_hold_seconds: int = Field(default=30, ge=1, le=600)
    # A declined address (RFC 2131 §3.1.5: the client found it in use) stays out of use this long.
    decline_quarantine_seconds: int = Field(default=86400, ge=0, le=30 * 86400)
    # Clients that match no reservation: "serve" them from the normal pools, put them in the
    # "walled-garden" pools (a registration portal), or "ignore" them.
    unknown_clients: Literal["serve", "walled-garden", "ignore"] = "serve"
    # Option 82 in a packet no relay forwarded (giaddr 0): "ignore" it, as anyone on the link can
    # write one (and claim another line's reservation), or "use" it where the access switches
    # insert it themselves (DHCP snooping, an L2 relay agent) and drop what subscribers send.
    option82_without_relay: Literal["ignore", "use"] = "ignore"
    # How often expired leases are reclaimed (marked expired in the store, announced).
    reclaim_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    subnet: list[SubnetConfig] = []

    @model_validator(mode="after")
    def _consistent(self) -> DHCPConfig:
        if not self.enabled:
            return self
        if not self.interfaces:
            raise ValueError("interfaces: name at least one interface to serve on, e.g. interfaces = [\"eth1\"]")
        if not self.subnet:
            raise ValueError("subnet: configure at least one [[dhcp.subnet]] with a [[dhcp.subnet.pool]]")
        names: set[str] = set()
        networks: list[IPv4Network] = []
        for subnet in self.subnet:
            for net in networks:
                if subnet.network.overlaps(net):
                    raise ValueError(f"subnets {net} and {subnet.network} overlap")
            networks.append(subnet.network)
            if subnet.interface is not None and subnet.interface not in self.interfaces:
                raise ValueError(f"subnet {subnet.network}: interface {subnet.interface!r} is not in interfaces")
            for pool in subnet.pool:
                if pool.name in names:
                    raise ValueError(f"pool name {pool.name!r} is used twice")
                names.add(pool.name)
        return self
