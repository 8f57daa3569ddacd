"""The ``[dhcp]`` section: where to listen, the subnets and their pools, and lease policy.

Validation checks what an operator can get wrong without noticing until a client fails: pools
outside their subnet, overlapping pools or subnets, routers outside the subnet, T1 ≥ T2, two
pools with one name (the name is a metric label and is stored with each lease), an option given
twice or one that ispd writes itself, a pool limited to a client class that does not exist.
"""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, ClassVar, Literal, cast

from pydantic import Field, field_validator, model_validator

from ispd.configtypes import ConfigWarning, Section, parse_range
from ispd.dhcp.identifiers import opaque_bytes
from ispd.dhcp.options import OptionValueError, encode_domain_names, encode_ips

# Options ispd writes itself, from the protocol or from other settings: an `option` entry may
# not set them. What each is, and what sets it if anything.
_SET_BY_ISPD = {
    1: "the subnet mask, from the subnet's network", 12: "the host name, the client's own",
    28: "the broadcast address, from the subnet's network", 50: "the requested address",
    51: "the lease time: set lease_seconds", 52: "option overload", 53: "the message type",
    54: "the server identifier: set server_id", 55: "the parameter request list", 56: "the message",
    57: "the maximum message size", 58: "the renewal time: set renew_seconds",
    59: "the rebinding time: set rebind_seconds", 61: "the client identifier",
    80: "rapid commit: set rapid_commit", 81: "the client FQDN",
    82: "the relay agent information", 118: "the subnet selection",
}
# Options that a setting of their own writes too: one place sets one or the other.
SETTING_OF_OPTION = {3: "routers", 6: "dns_servers", 15: "domain_name", 26: "mtu", 42: "ntp_servers",
                     108: "ipv6_only_preferred_seconds", 114: "captive_portal", 121: "static_routes"}
# RFC 8925 §3.4: clients wait at least this long (MIN_V6ONLY_WAIT), whatever option 108 says.
MIN_V6ONLY_WAIT = 300


# Options that hold a list of IPv4 addresses (RFC 2132 and vendors'), by what they are: given in
# another form (the text "198.18.0.1", as Kea's `data` reads), clients would get its characters.
ADDRESS_LIST_OPTIONS = {
    3: "routers", 4: "time servers", 5: "name servers", 6: "DNS servers", 7: "log servers",
    9: "LPR servers", 41: "NIS servers", 42: "NTP servers", 44: "NetBIOS name servers",
    45: "NetBIOS datagram distribution servers", 48: "X Window font servers", 49: "X display managers",
    65: "NIS+ servers", 69: "SMTP servers", 70: "POP3 servers", 72: "WWW servers",
    138: "CAPWAP access controllers", 150: "TFTP server addresses",
}


class OptionValue(Section):
    """An option's code and its value, in exactly one of the forms below (what the option's
    definition in its RFC or the vendor's manual says it holds)."""

    code: int = Field(ge=1, le=254)
    text: str | None = Field(default=None, min_length=1)  # sent as UTF-8, no NUL at the end
    hex: str | None = None  # raw bytes: "01:04:c0:00:02:01", "0104c0000201"; "" for an empty option
    addresses: list[IPv4Address] | None = Field(default=None, min_length=1)
    # Strict: `uint8 = true` or `int32 = "3600"` is a mistake to point out, not a value to convert.
    uint8: int | None = Field(default=None, ge=0, le=0xFF, strict=True)
    uint16: int | None = Field(default=None, ge=0, le=0xFFFF, strict=True)
    uint32: int | None = Field(default=None, ge=0, le=0xFFFFFFFF, strict=True)
    int32: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1, strict=True)
    boolean: bool | None = Field(default=None, strict=True)
    domains: list[str] | None = Field(default=None, min_length=1)  # RFC 1035 wire form, as option 119

    VALUE_FORMS: ClassVar[tuple[str, ...]] = (
        "text", "hex", "addresses", "uint8", "uint16", "uint32", "int32", "boolean", "domains")
    # Longest value: a sub-option holds at most 255 bytes; a longer option is split into several
    # (RFC 3396), which not every client joins again.
    MAX_LENGTH: ClassVar[int] = 255

    @model_validator(mode="after")
    def _one_value(self) -> OptionValue:
        given = [form for form in self.VALUE_FORMS if getattr(self, form) is not None]
        if len(given) != 1:
            forms = ", ".join(self.VALUE_FORMS)
            found = f"got {' and '.join(given)}" if given else "got none"
            raise ValueError(f"option {self.code}: give its value in exactly one of {forms} ({found})")
        length = len(self.encoded())
        if length > self.MAX_LENGTH:
            raise ValueError(f"option {self.code}: its value is {length} bytes, longer than {self.MAX_LENGTH}")
        return self

    def encoded(self) -> bytes:
        """The value as it goes on the wire."""
        if self.text is not None:
            return self.text.encode()
        if self.hex is not None:
            try:
                return bytes.fromhex(self.hex.removeprefix("0x").replace(":", " "))
            except ValueError:
                raise ValueError(f"option {self.code}: hex {self.hex!r} is not pairs of hex digits, "
                                 "e.g. \"01:04:c0:00:02:01\"") from None
        if self.addresses is not None:
            return encode_ips(self.addresses)
        for form, size in (("uint8", 1), ("uint16", 2), ("uint32", 4)):
            number = getattr(self, form)
            if number is not None:
                return int(number).to_bytes(size, "big")
        if self.int32 is not None:
            return self.int32.to_bytes(4, "big", signed=True)
        if self.boolean is not None:
            return b"\x01" if self.boolean else b"\x00"
        if self.domains is not None:
            try:
                return encode_domain_names(self.domains)
            except (OptionValueError, UnicodeEncodeError) as error:
                raise ValueError(f"option {self.code}: domains: {error}") from None
        return self._encoded_suboptions()

    def _encoded_suboptions(self) -> bytes:
        return b""


class SubOption(OptionValue):
    """One sub-option of an option that holds them (vendor-specific information, option 43)."""


class DHCPOption(OptionValue):
    """An option ispd sends as given: a TFTP server for IP phones (66, 150), an ACS URL for
    TR-069 routers (43), a domain search list (119), a time offset (2), a vendor's own."""

    # Sub-options, each its code, length and value: the usual form of option 43.
    suboptions: list[SubOption] | None = Field(default=None, min_length=1)
    # Send it to clients that did not ask for it (option 55), as Kea's always-send: some
    # devices use an option they never ask for. Otherwise it goes to those who ask.
    always_send: bool = False

    VALUE_FORMS: ClassVar[tuple[str, ...]] = (*OptionValue.VALUE_FORMS, "suboptions")
    MAX_LENGTH: ClassVar[int] = 1024

    @field_validator("code")
    @classmethod
    def _not_ispds(cls, code: int) -> int:
        what = _SET_BY_ISPD.get(code)
        if what is not None:
            raise ValueError(f"option {code} is {what}, which ispd writes itself")
        return code

    def ipv6_only_warning(self) -> str | None:
        """Option 108 given by code (as Kea's option-data v6-only-preferred) is served as
        ipv6_only_preferred_seconds is, when it is what RFC 8925 says: 4 bytes (§2), and only to
        clients that ask for it (§3.3). Otherwise a warning, not a refusal (such an option was
        sent as given before the feature, docs/DESIGN.md): one of another length is no
        IPv6-only answer, and always_send is not heeded for it."""
        if self.code != 108:
            return None
        if len(self.encoded()) != 4:
            return ("option 108 (IPv6-only preferred) is 4 bytes, the seconds to wait: this one gives no "
                    "IPv6-only answer; set ipv6_only_preferred_seconds instead")
        if self.always_send:
            return ("option 108 (IPv6-only preferred) goes only to clients that ask for it (RFC 8925 §3.3): "
                    "always_send is not heeded for it; remove it")
        return None

    @model_validator(mode="after")
    def _addresses_as_addresses(self) -> DHCPOption:
        what = ADDRESS_LIST_OPTIONS.get(self.code)
        if what is not None and self.addresses is None and (self.hex is None or len(self.encoded()) % 4):
            raise ValueError(f"option {self.code} holds IPv4 addresses ({what}): give them as "
                             f"addresses = [\"198.51.100.1\", ...]")
        return self

    def _encoded_suboptions(self) -> bytes:
        codes = [sub.code for sub in self.suboptions or ()]
        repeated = sorted({c for c in codes if codes.count(c) > 1})
        if repeated:
            raise ValueError(f"option {self.code}: sub-option {repeated[0]} is given twice")
        return b"".join(bytes((sub.code, len(value))) + value
                        for sub in self.suboptions or () for value in (sub.encoded(),))


def check_options(options: list[DHCPOption], where: str = "", settings: ClientOptions | None = None) -> None:
    """Each code once at one place, and not both as an option and as the setting that writes it."""
    seen: set[int] = set()
    for option in options:
        if option.code in seen:
            raise ValueError(f"{where}option {option.code} is given twice")
        seen.add(option.code)
        setting = SETTING_OF_OPTION.get(option.code)
        if settings is not None and setting is not None and getattr(settings, setting) is not None:
            raise ValueError(f"{where}option {option.code} and {setting} are the same option: set one of them")


def routers_option(options: list[DHCPOption]) -> list[IPv4Address] | None:
    """The addresses in option 3 among ``options``; None if it is not there."""
    for option in options:
        if option.code == 3:
            value = option.encoded()
            return [IPv4Address(value[i : i + 4]) for i in range(0, len(value) - len(value) % 4, 4)]
    return None


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
    # Option 108 (RFC 8925), for IPv6-only networks behind NAT64 ([dns.dns64]): a client that asks
    # for it (iOS, macOS, Android, Windows 11, recent Linux) is offered no IPv4 address (yiaddr
    # 0.0.0.0, nothing leased) and told to leave DHCPv4 for this many seconds; clients that do not
    # ask get their address as before. At least 300 (MIN_V6ONLY_WAIT: clients wait that long anyway);
    # 0 turns it off where the subnet sets it (a pool for devices that must have IPv4).
    ipv6_only_preferred_seconds: int | None = Field(default=None, ge=0, le=0xFFFFFFFF)
    # Any other option, by code: `[[dhcp.subnet.option]]`, `[[dhcp.subnet.pool.option]]`.
    option: list[DHCPOption] = []

    @field_validator("ipv6_only_preferred_seconds")
    @classmethod
    def _a_wait_clients_keep(cls, seconds: int | None) -> int | None:
        if seconds is not None and 0 < seconds < MIN_V6ONLY_WAIT:
            raise ValueError(f"{seconds}: clients wait at least {MIN_V6ONLY_WAIT} seconds (RFC 8925 "
                             f"MIN_V6ONLY_WAIT): give {MIN_V6ONLY_WAIT} or more, or 0 to turn it off here")
        return seconds

    @model_validator(mode="after")
    def _options_once(self) -> ClientOptions:
        check_options(self.option, settings=self)
        return self

    def sent_routers(self) -> list[IPv4Address] | None:
        """The routers this level sends: its `routers`, or its option 3 given by code (as Kea's
        option-data writes them), which the checks on routers must see too; None: neither."""
        return self.routers if self.routers is not None else routers_option(self.option)

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
    # Only clients of one of these classes ([[dhcp.client_class]]) get addresses here; unset:
    # any client. (Set-top boxes in a pool of their own, say.)
    client_classes: list[str] = []

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
    # Rapid commit (RFC 4039) here; unset: [dhcp] rapid_commit.
    rapid_commit: bool | None = None
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
        for router in self.sent_routers() or []:
            if router not in self.network:
                raise ValueError(f"router {router} is not inside {self.network}")
        return self


class ClientClassConfig(Section):
    """Devices told apart by what they send: a class's options go to its members (over the
    pool's and the subnet's), and pools may be kept for members (`client_classes`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Members send a vendor class identifier (option 60) that begins with one of these, e.g.
    # "dslforum.org" (TR-069 routers), "PXEClient", "MSFT 5.0".
    vendor_class: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    # Members have a MAC address that begins with one of these, e.g. "00:1a:2b" (a vendor's OUI).
    # Of the criteria given, a member matches every one.
    mac_prefix: list[str] | None = Field(default=None, min_length=1)
    # Members come through a relay whose option 82 circuit-id (or remote-id) begins with one of
    # these, written as reservations take them: its text ("olt1 eth 1/1/"), or 0x and hex bytes
    # ("0x0004"). The bytes are compared, so a text prefix also matches an id with binary
    # bytes after it (a NUL at its end), which reservations and logs show as 0x and hex.
    # (A DSLAM's or an OLT's lines; a renewal past the relay keeps its lease's line.)
    circuit_id: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    remote_id: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    # Members send a user class (option 77) that begins with one of these, e.g. "iPXE": iPXE
    # sends the same vendor class as the PXE ROM that loaded it, so only this tells it apart
    # (to give it the boot script, not the loader again). Compared with the whole option as
    # sent (iPXE's bare text) and with each class of an RFC 3004 list.
    user_class: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    option: list[DHCPOption] = []

    @field_validator("mac_prefix")
    @classmethod
    def _mac_prefixes(cls, prefixes: list[str] | None) -> list[str] | None:
        for prefix in prefixes or ():
            if not 1 <= len(mac_prefix_bytes(prefix)) <= 16:
                raise ValueError(f"mac_prefix {prefix!r}: give 1 to 16 bytes in hex, e.g. \"00:1a:2b\"")
        return prefixes

    @field_validator("circuit_id", "remote_id")
    @classmethod
    def _line_prefixes(cls, prefixes: list[str] | None) -> list[str] | None:
        for prefix in prefixes or ():
            if not opaque_bytes(prefix):
                raise ValueError(f"{prefix!r}: give at least one byte after 0x")
        return prefixes

    @model_validator(mode="after")
    def _consistent(self) -> ClientClassConfig:
        if self.vendor_class is None and self.mac_prefix is None and self.circuit_id is None \
                and self.remote_id is None and self.user_class is None:
            raise ValueError(f"client class {self.name!r}: say who is in it: vendor_class, user_class, "
                             "mac_prefix, circuit_id or remote_id")
        check_options(self.option, f"client class {self.name!r}: ")
        return self


def _pick(pool: ClientOptions | None, subnet: ClientOptions, name: str) -> int | None:
    """The pool's setting if it has one, else its subnet's."""
    value = getattr(pool, name) if pool is not None else None
    return cast(int | None, value if value is not None else getattr(subnet, name))


def mac_prefix_bytes(prefix: str) -> bytes:
    """ "00:1a:2b", "00-1a-2b" or "001a2b" as bytes; empty if it is not hex pairs."""
    try:
        return bytes.fromhex(prefix.replace(":", "").replace("-", ""))
    except ValueError:
        return b""


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
    # Rapid commit (RFC 4039): a DISCOVER with option 80 gets the ACK at once, two messages
    # instead of four. Only where ispd is the one DHCP server of the link: each server that
    # answers one commits a lease.
    rapid_commit: bool = False
    # Relay agents (a BNG, a CMTS) that may ask of leases by DHCPLEASEQUERY (RFC 4388), by the
    # address they put in giaddr: addresses or networks. Empty (the default): leasequery is off.
    leasequery_requesters: list[IPv4Network] = []
    # How often expired leases are reclaimed (marked expired in the store, announced).
    reclaim_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    subnet: list[SubnetConfig] = []
    # Options for every subnet (`[[dhcp.option]]`); a subnet's, pool's or class's own win.
    option: list[DHCPOption] = []
    # The first class a client matches that sets an option gives it; see ClientClassConfig.
    client_class: list[ClientClassConfig] = []

    @model_validator(mode="after")
    def _consistent(self) -> DHCPConfig:
        check_options(self.option, "[[dhcp.option]]: ")
        classes = [c.name for c in self.client_class]
        for name in classes:
            if classes.count(name) > 1:
                raise ValueError(f"client class {name!r} is defined twice")
        for pool in (p for s in self.subnet for p in s.pool):
            for name in pool.client_classes:
                if name not in classes:
                    raise ValueError(f"pool {pool.name!r}: client class {name!r} is not defined "
                                     "(add a [[dhcp.client_class]] with that name)")
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
            for router in self.routers_of(subnet):
                if router not in subnet.network:
                    raise ValueError(f"[[dhcp.option]] 3: router {router} is not inside {subnet.network}, "
                                     "which sends it (give the subnet its own routers)")
            # A pool would lease the router's (or this server's) own address to a client: the
            # client and the gateway then fight over it with ARP and the link loses its way out.
            for pool in subnet.pool:
                for address, what in self.held_by_the_link(subnet):
                    if pool.first <= address <= pool.last:
                        raise ValueError(f"subnet {subnet.network}: pool {pool.name!r} ({pool.range}) includes "
                                         f"{address}, {what} of the subnet; leave it out of the range")
            for pool in subnet.pool:
                if pool.name in names:
                    raise ValueError(f"pool name {pool.name!r} is used twice")
                names.add(pool.name)
        # A relay's clients go to the subnet that holds its giaddr, then to the first listing it:
        # an entry that can never apply would leave the operator wondering why its clients land
        # in another subnet's pools.
        listed_by: dict[IPv4Address, IPv4Network] = {}
        for subnet in self.subnet:
            for relay in subnet.relay_addresses:
                # (inside its own subnet it is only redundant: that subnet serves the relay anyway)
                holder = next((s.network for s in self.subnet if s is not subnet and relay in s.network), None)
                if holder is not None:
                    raise ValueError(f"subnet {subnet.network}: relay address {relay} is inside subnet {holder}, "
                                     f"which serves that relay's clients; use link selection (RFC 3527) at "
                                     f"the relay, or remove it from relay_addresses")
                if relay in listed_by:
                    raise ValueError(f"relay address {relay} is listed by subnets {listed_by[relay]} and "
                                     f"{subnet.network}; a relay's clients are served from one subnet")
                listed_by[relay] = subnet.network
        return self

    def held_by_the_link(self, subnet: SubnetConfig) -> list[tuple[IPv4Address, str]]:
        """The addresses of the subnet that belong to its routers and this server, with what
        each is: no client may have one, from a pool or from a reservation."""
        held = [(router, "a router") for router in self.every_router_of(subnet)]
        if subnet.server_id is not None:
            held.append((subnet.server_id, "the server_id"))
        return held

    def never_leased(self, subnet: SubnetConfig) -> dict[IPv4Address, str]:
        """The addresses of the subnet no client is given, with what each is: its routers and
        this server (``held_by_the_link``), and its network and broadcast addresses (RFC 3021: a
        /31 has neither)."""
        never = dict(self.held_by_the_link(subnet))
        if subnet.network.prefixlen < 31:
            never |= {subnet.network.network_address: "the network address",
                      subnet.network.broadcast_address: "the broadcast address"}
        return never

    def every_router_of(self, subnet: SubnetConfig) -> list[IPv4Address]:
        """The routers the subnet and each of its pools send (``routers_of`` is the subnet's
        alone): addresses no client may have."""
        routers = list(self.routers_of(subnet))
        for pool in subnet.pool:
            routers += [router for router in pool.sent_routers() or [] if router not in routers]
        return routers

    def shared_interface_warnings(self) -> list[str]:
        """Subnets naming an interface another named first: its direct clients are all served from
        the first (there are no shared networks), so the others' pools never serve one there, while
        the first's may run out. A warning, not an error: such a subnet still serves its relays'
        clients, and a config that ran before an upgrade must still start."""
        direct: dict[str, IPv4Network] = {}
        warnings = []
        for subnet in self.subnet:
            if subnet.interface is None:
                continue
            if subnet.interface in direct:
                warnings.append(f"interface {subnet.interface!r} is named by subnets {direct[subnet.interface]} and "
                                f"{subnet.network}; its direct clients are served from the first only: remove "
                                "interface from the other (a relayed subnet needs none)")
            else:
                direct[subnet.interface] = subnet.network
        return warnings

    def lease_times(self, subnet: SubnetConfig, pool: PoolConfig | None) -> tuple[int, int, int, bool]:
        """(lease, T1, T2) that ``pool``'s clients get (None: the subnet's own, for addresses in
        no pool), and whether the T1 and T2 configured are those: given at one level and a lease
        time at another, they may not fit it (T1 < T2 < lease, RFC 2131 §4.4.5), and then
        clients get the defaults, 1/2 and 7/8 of the lease."""
        if pool is not None and pool.walled_garden:
            # A garden pool's times are its own or the short garden default, never the subnet's: a
            # subnet's day-long lease kept a resumed subscriber in the garden for a day, where the
            # short lease is what brings it back within minutes.
            lease = pool.lease_seconds or self.walled_garden_lease_seconds
            renew_given, rebind_given = pool.renew_seconds, pool.rebind_seconds
        else:
            lease = _pick(pool, subnet, "lease_seconds") or self.lease_seconds
            renew_given, rebind_given = _pick(pool, subnet, "renew_seconds"), _pick(pool, subnet, "rebind_seconds")
        renew, rebind = renew_given or lease // 2, rebind_given or lease * 7 // 8
        if renew < rebind < lease:
            return lease, renew, rebind, True
        return lease, lease // 2, lease * 7 // 8, False

    def warnings(self) -> list[ConfigWarning]:
        return [*(ConfigWarning("dhcp.subnet.interface_shared", w) for w in self.shared_interface_warnings()),
                *(ConfigWarning("dhcp.pool.timers_ignored", w) for w in self.timer_warnings()),
                *(ConfigWarning("dhcp.pool.router_off_link", w) for w in self.pool_router_warnings()),
                *(ConfigWarning("dhcp.subnet.no_garden", w) for w in self.garden_warnings()),
                *(ConfigWarning("dhcp.subnet.routes_without_default", w) for w in self.static_route_warnings()),
                *(ConfigWarning("dhcp.option.ipv6_only_preferred", w) for w in self.ipv6_only_option_warnings())]

    def ipv6_only_option_warnings(self) -> list[str]:
        """``DHCPOption.ipv6_only_warning`` of every option 108 given by code, with its place."""
        levels: list[tuple[str, list[DHCPOption]]] = [("option", self.option)]
        levels += [(f"client_class {c.name!r}", c.option) for c in self.client_class]
        for subnet in self.subnet:
            levels.append((f"subnet {subnet.network}", subnet.option))
            levels += [(f"subnet {subnet.network}: pool {p.name!r}", p.option) for p in subnet.pool]
        return [f"{where}: {warning}" for where, options in levels for option in options
                if (warning := option.ipv6_only_warning()) is not None]

    def static_route_warnings(self) -> list[str]:
        """Subnets and pools that send routers and static_routes with no 0.0.0.0/0 among them. A
        client that takes option 121 MUST ignore option 3 (RFC 3442): dhcpcd, systemd-networkd
        and dhclient's script install the routes and no default route, so the clients cannot
        reach beyond them. A warning: such a config ran before (and the routes may be all there
        is to reach on purpose)."""
        warnings = []
        for subnet in self.subnet:
            for pool in [None, *subnet.pool]:
                routes = pool.static_routes if pool is not None and pool.static_routes is not None \
                    else subnet.static_routes
                routers = pool.sent_routers() if pool is not None else None
                if routers is None:
                    routers = self.routers_of(subnet)
                if pool is not None and routes is subnet.static_routes and routers == self.routers_of(subnet):
                    continue  # as its subnet's: said once, for the subnet
                if routes and routers and not any(route.destination.prefixlen == 0 for route in routes):
                    where = f"pool {pool.name!r}" if pool is not None else "static_routes"
                    warnings.append(f"subnet {subnet.network}: {where}: routers {', '.join(map(str, routers))} "
                                    f"are sent with static routes that have no 0.0.0.0/0: clients that take "
                                    f"the routes (option 121, RFC 3442) ignore the routers and get no default "
                                    f"route; add {{ destination = \"0.0.0.0/0\", router = \"{routers[0]}\" }}")
        return warnings

    def pool_router_warnings(self) -> list[str]:
        """Routers a pool sends that are not inside its subnet: a client cannot reach a gateway off
        its link (dhclient's and udhcpc's default route through it fails), so the pool's clients
        have no way out. The subnet's own and the global routers are refused so; a pool's were not
        checked, and a config that ran must still start: a warning."""
        warnings = []
        for subnet in self.subnet:
            for pool in subnet.pool:
                for router in pool.sent_routers() or []:
                    if router not in subnet.network:
                        warnings.append(f"subnet {subnet.network}: pool {pool.name!r}: router {router} is not inside "
                                        f"{subnet.network}: its clients cannot reach it; give a router of the subnet")
        return warnings

    def garden_warnings(self) -> list[str]:
        """Subnets with no walled-garden pool while unknown_clients = "walled-garden": their
        unknown clients get no address at all (dropped as no_pool), which the setting did not ask
        for. A warning: such a config ran before, and the subnet may serve relays' clients that
        all have reservations."""
        if self.unknown_clients != "walled-garden":
            return []
        return [f"subnet {subnet.network}: unknown_clients = \"walled-garden\", but it has no pool with "
                f"walled_garden = true: its clients with no reservation get no address at all; add one"
                for subnet in self.subnet if not any(pool.walled_garden for pool in subnet.pool)]

    def timer_warnings(self) -> list[str]:
        """Pools (and a subnet's addresses in no pool) whose renew_seconds or rebind_seconds do
        not fit the lease time they get from elsewhere (a subnet's T1 over the section's
        lease_seconds, a pool's lease_seconds under its subnet's T2): their clients get 1/2 and
        7/8 of the lease instead. A warning, not an error: such a config ran before, and must
        still start."""
        warnings = []
        for subnet in self.subnet:
            warned = set()
            # The pools, then the subnet's own times: those of its addresses in no pool (the fixed
            # addresses of reservations outside the pools), unless a pool said the same already.
            for pool in [*subnet.pool, None]:
                lease, renew, rebind, as_given = times = self.lease_times(subnet, pool)
                if as_given or (pool is None and times in warned):
                    continue
                warned.add(times)
                given = [f"{name} = {value}" for name in ("renew_seconds", "rebind_seconds")
                         if (value := getattr(pool, name) if pool is not None and pool.walled_garden
                             else _pick(pool, subnet, name)) is not None]
                which = f"pool {pool.name!r}" if pool is not None else "its addresses in no pool (reservations)"
                warnings.append(f"subnet {subnet.network}: {which}: {' and '.join(given)} do not fit its "
                                f"lease time of {lease} s (T1 < T2 < lease): its clients get T1 {renew} s and "
                                f"T2 {rebind} s instead; set lease_seconds beside them, or times that fit")
        return warnings

    def routers_of(self, subnet: SubnetConfig) -> list[IPv4Address]:
        """The routers ``subnet`` sends: its own, else the global option 3's."""
        own = subnet.sent_routers()
        return own if own is not None else routers_option(self.option) or []
