"""Building blocks for the config sections: the strict base model and value types.

Each service keeps its section model beside its code (``ispd/store/config.py``, ...); they all
build on these so that every section rejects unknown keys and reports errors the same way.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, Any, NamedTuple

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer


class ConfigWarning(NamedTuple):
    """A setting that does not do what it says, in a config that runs: said by check-config and
    logged at every start and reload (``Config.warnings``), never a refusal when it ran before
    the check that finds it existed (docs/DESIGN.md: a config that ran must still start after an
    upgrade)."""

    event: str  # the log line's event, its section first: "dhcp.pool.timers_ignored"
    detail: str

    @property
    def section(self) -> str:
        return self.event.partition(".")[0]


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def warnings(self) -> list[ConfigWarning]:
        """What this section's settings do not do as written (``ConfigWarning``)."""
        return []


@dataclass(frozen=True, slots=True)
class SocketAddress:
    """An IP address and port to listen on; port 0 asks the kernel for a free one."""

    host: str
    port: int

    @property
    def family_is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family_is_ipv6 else f"{self.host}:{self.port}"


_ADDRESS_HELP = "expected HOST:PORT with an IP address, e.g. 127.0.0.1:9520 or [::1]:9520"


def parse_socket_address(value: Any) -> SocketAddress:
    if isinstance(value, SocketAddress):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not an address: {_ADDRESS_HELP}")
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
    if not sep or not host or ":" in port_text:
        raise ValueError(f"{value!r} is not an address: {_ADDRESS_HELP}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not an address: {host!r} is not an IP address") from None
    if ip.version == 6 and not text.startswith("["):
        raise ValueError(f"{value!r} is not an address: write IPv6 addresses in brackets, e.g. [::1]:9520")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} is not an address: port must be a number from 0 to 65535")
    return SocketAddress(str(ip), int(port_text))


ListenAddress = Annotated[SocketAddress, BeforeValidator(parse_socket_address), PlainSerializer(str)]


def _address(value: object) -> object:
    # One clear message instead of one per member of the IPv4 | IPv6 union.
    if isinstance(value, str):
        try:
            return ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (e.g. 198.18.0.53 or 2001:db8::53)") from None
    return value


def _network(value: object) -> object:
    if isinstance(value, str):
        try:
            return ip_network(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network (e.g. 198.18.0.0/15 or 2001:db8::/32): {exc}") from None
    return value


IPNetwork = Annotated[IPv4Network | IPv6Network, BeforeValidator(_network)]
IPAddress = Annotated[IPv4Address | IPv6Address, BeforeValidator(_address)]

_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")


def _client_network(value: object) -> object:
    # A client asking over IPv4 is matched by its IPv4 address (every IPv6 socket is IPV6_V6ONLY,
    # and an IPv4-mapped peer is taken as its IPv4 address), so a network of IPv4-mapped
    # addresses would match no client at all: say what to write instead.
    return not_ipv4_mapped(_network(value), value)


def not_ipv4_mapped(network: object, value: object) -> object:
    """``network`` (as written: ``value``), refused when it is IPv4-mapped IPv6."""
    if isinstance(network, IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        ipv4 = IPv4Network((int(network.network_address) & 0xFFFF_FFFF, network.prefixlen - 96))
        written = value if isinstance(value, str) else str(network)
        raise ValueError(f"{written!r} is IPv4-mapped IPv6, which no client is matched as: IPv4 clients "
                         f"are matched by their IPv4 address (write {str(ipv4)!r})")
    return network


# Networks of clients (who may ask, who gets what): as ``IPNetwork``, but not IPv4-mapped.
ClientNetwork = Annotated[IPv4Network | IPv6Network, BeforeValidator(_client_network)]


def parse_range(text: str) -> tuple[IPv4Address, IPv4Address]:
    parts = [p.strip() for p in text.split("-")]
    if len(parts) != 2:
        raise ValueError(f"range {text!r}: write it as 'first - last', e.g. '198.18.0.100 - 198.18.0.199'")
    try:
        return IPv4Address(parts[0]), IPv4Address(parts[1])
    except ValueError as exc:
        raise ValueError(f"range {text!r}: {exc}") from None


def checked_range(text: str) -> str:
    first, last = parse_range(text)
    if int(last) < int(first):
        raise ValueError(f"range {text!r}: the first address is after the last")
    return text


# "first - last" of IPv4 addresses, e.g. "198.18.0.100 - 198.18.0.199".
IPv4RangeText = Annotated[str, AfterValidator(checked_range)]
