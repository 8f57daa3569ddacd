"""Discovery of Designated Resolvers (DDR, RFC 9462): the SVCB records that tell a client which
learnt only this resolver's plain address (from DHCP or RA) where its encrypted transports are.

A client asks its resolver for ``_dns.resolver.arpa. SVCB`` (RFC 9462 §4); the answer names the
designated resolver (``[dns.ddr] name``, the name in the listeners' certificates) with, per
endpoint, RFC 9461's SvcParams: ``alpn`` (dot, h2 and h3, doq), ``port`` (left out when it is the
protocol's own: 853, 443), ``ipv4hint``/``ipv6hint`` (the endpoint's listen addresses but
wildcards) and, for DoH, ``dohpath`` (``[dns.doh] path`` with ``{?dns}``). The records are made
from the config, one per protocol and port (h2 and h3 share one when they listen on the same
addresses and port), with priorities in the order DoH, DoT, DoQ (a client skips the protocols it
does not speak; Windows 11 speaks DoH only, and DoQ clients are few). The same
records answer ``_dns.<name>`` (RFC 9462 §5: a client that knows the name asks there).

They are local data (``LocalData``): ``resolver.arpa.`` is a local zone whether DDR is on or not
(a name no one can own, whose answers from elsewhere could only name someone else's resolver:
RFC 9462 §4 says a forwarder SHOULD NOT send it upstream), so nothing under it is ever resolved;
the answers go only to clients ``allow`` lets ask, and cost the cache-hit path nothing (they are
cached as every local answer is).

Verified discovery (RFC 9462 §4.2) succeeds only when the designated resolver's certificate
covers the plain address the client asked (an IP address SubjectAltName):
``certificate_warnings`` says, for ``ispd check-config``, which listener's certificate covers
neither the name nor the plain listen addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import TYPE_CHECKING

from ispd.dns.wire import CLASS_IN, RR, RRType, name_from_text

if TYPE_CHECKING:
    from ispd.configtypes import SocketAddress
    from ispd.dns.config import DNSConfig

RESOLVER_ARPA = name_from_text("resolver.arpa.")
DDR_OWNER = name_from_text("_dns.resolver.arpa.")

# SvcParamKeys (RFC 9460 §14.3.2, RFC 9461 §5): written in this (ascending) order.
KEY_ALPN = 1
KEY_PORT = 3
KEY_IPV4HINT = 4
KEY_IPV6HINT = 6
KEY_DOHPATH = 7

# The port each ALPN's clients assume when the record gives none (RFC 7858, 8484, 9250).
DEFAULT_PORTS = {"dot": 853, "doq": 853, "h2": 443, "h3": 443}


@dataclass(frozen=True)
class Endpoint:
    """One advertised endpoint: its protocols (ALPN ids), port, listen hosts and DoH path."""

    alpn: tuple[str, ...]
    port: int
    hosts: tuple[str, ...]
    dohpath: str | None = None


def _by_port(addresses: list[SocketAddress]) -> dict[int, tuple[str, ...]]:
    ports: dict[int, list[str]] = {}
    for address in addresses:
        hosts = ports.setdefault(address.port, [])
        if address.host not in hosts:
            hosts.append(address.host)
    return {port: tuple(hosts) for port, hosts in ports.items()}


def endpoints(config: DNSConfig) -> list[Endpoint]:
    """The encrypted endpoints ``config`` listens on, in the order they are advertised."""
    found: list[Endpoint] = []
    path = config.doh.path + "{?dns}"
    http2 = _by_port(config.doh.listen)
    http3 = _by_port(config.doh.listen_http3)
    for port, hosts in http2.items():
        both = http3.get(port) == hosts  # one endpoint speaks both: one record
        found.append(Endpoint(("h2", "h3") if both else ("h2",), port, hosts, path))
        if both:
            del http3[port]
    found += [Endpoint(("h3",), port, hosts, path) for port, hosts in http3.items()]
    found += [Endpoint(("dot",), port, hosts) for port, hosts in _by_port(config.dot.listen).items()]
    found += [Endpoint(("doq",), port, hosts) for port, hosts in _by_port(config.doq.listen).items()]
    return found


def _hints(hosts: tuple[str, ...], version: int) -> bytes:
    """The packed addresses of ``hosts`` of one IP version that a client can connect to: not
    the wildcard (its real address is the target name's), not a link-local one (no scope)."""
    packed = b""
    for host in hosts:
        ip = ip_address(host.split("%", 1)[0])
        if ip.version == version and not ip.is_unspecified and not ip.is_link_local:
            packed += ip.packed
    return packed


def svcb_rdata(priority: int, target: bytes, endpoint: Endpoint) -> bytes:
    """The SVCB rdata (RFC 9460 §2.2) of ``endpoint``, its SvcParams in ascending key order."""
    params: list[tuple[int, bytes]] = [
        (KEY_ALPN, b"".join(bytes([len(a)]) + a.encode("ascii") for a in endpoint.alpn))]
    if endpoint.port != DEFAULT_PORTS[endpoint.alpn[0]]:
        params.append((KEY_PORT, struct.pack("!H", endpoint.port)))
    for key, version in ((KEY_IPV4HINT, 4), (KEY_IPV6HINT, 6)):
        if hints := _hints(endpoint.hosts, version):
            params.append((key, hints))
    if endpoint.dohpath is not None:
        params.append((KEY_DOHPATH, endpoint.dohpath.encode("utf-8")))
    return struct.pack("!H", priority) + target + b"".join(
        struct.pack("!HH", key, len(value)) + value for key, value in params)


def designated_records(config: DNSConfig) -> list[RR]:
    """The SVCB records ``config`` has the resolver answer (none while DDR is off), at
    ``_dns.resolver.arpa.`` and ``_dns.<name>``."""
    if config.ddr.name is None:
        return []
    target = name_from_text(config.ddr.name)
    rdatas = [svcb_rdata(priority, target, endpoint)
              for priority, endpoint in enumerate(endpoints(config), start=1)]
    owners = (DDR_OWNER, b"\x04_dns" + target)
    return [RR(owner, RRType.SVCB, CLASS_IN, config.ddr.ttl, rdata) for owner in owners for rdata in rdatas]


def _certificate_names(path: Path) -> tuple[list[str], list[IPv4Address | IPv6Address]] | None:
    """The DNS names and IP addresses the server certificate in ``path`` (its first) is for;
    None when it cannot be read (loading it says why)."""
    from cryptography import x509

    try:
        certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, IndexError):
        return None
    except x509.ExtensionNotFound:
        return [], []  # clients match the SubjectAltName only (RFC 6125 §6.4.4: not the CN)
    addresses = [a for a in names.get_values_for_type(x509.IPAddress) if isinstance(a, IPv4Address | IPv6Address)]
    return [str(n).lower().rstrip(".") for n in names.get_values_for_type(x509.DNSName)], addresses


def _name_covered(name: str, patterns: list[str]) -> bool:
    """Whether a certificate for ``patterns`` covers ``name`` (RFC 6125 §6.4.3: a "*" matches
    one whole leftmost label)."""
    for pattern in patterns:
        if pattern == name:
            return True
        if pattern.startswith("*.") and "." in name and name.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def certificate_warnings(config: DNSConfig) -> list[str]:
    """For ``ispd check-config``: each advertised listener whose certificate does not cover the
    designated resolver's name (no client can connect to it by that name) or a plain listen
    address (RFC 9462 §4.2: a client that asked there finds the designation unverified and
    does not use it). A wildcard listen address is not checked: which address clients ask
    is not known."""
    if config.ddr.name is None:
        return []
    name = config.ddr.name.rstrip(".")
    plain = [ip for address in config.listen
             if not (ip := ip_address(address.host.split("%", 1)[0])).is_unspecified]
    warnings = []
    for key, listener in (("dot", config.dot), ("doh", config.doh), ("doq", config.doq)):
        if not listener.enabled or listener.certificate is None:
            continue
        covered = _certificate_names(listener.certificate)
        if covered is None:
            continue
        names, addresses = covered
        if not _name_covered(name, names):
            warnings.append(f"ddr.name {name}: not in the certificate of [dns.{key}] ({listener.certificate}, "
                            f"for {', '.join(names + [str(a) for a in addresses]) or 'no SubjectAltName'}): "
                            "clients will not accept the designated resolver")
        missing = [str(ip) for ip in plain if ip not in addresses]
        if missing:
            warnings.append(f"ddr: the certificate of [dns.{key}] ({listener.certificate}) has no IP address "
                            f"SubjectAltName for {', '.join(missing)} (listen): clients asking there cannot "
                            "verify the designation (RFC 9462 §4.2) and stay on unencrypted DNS")
    return warnings
