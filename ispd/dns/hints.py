"""Where resolution starts: root hints and DNSSEC trust anchors, shipped defaults or files.

Root hints are the root servers' names and addresses in the format IANA publishes (named.root).
Only NS records at the root and A/AAAA records of the names they list matter; comments, other
records and TTLs are ignored. Trust anchors are DS or DNSKEY records in zone-file form
(``dnssec.parse_trust_anchors``). Copies of IANA's hints and root anchors ship with ispd as the
defaults; operators of private roots (and the tests' hierarchy on loopback) give their own.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from ipaddress import ip_address
from pathlib import Path

from ispd.dns.dnssec import TrustAnchor, parse_trust_anchors
from ispd.dns.resolver import Hints
from ispd.dns.wire import ROOT, name_from_text


class HintsError(ValueError):
    pass


def default_hints_text() -> str:
    return resources.files("ispd.dns").joinpath("data/named.root").read_text()


Read = Callable[[Path], bytes]  # how a file's bytes are had (a DNS worker: those handed to it)


def load_root_hints(path: Path | None, read: Read = Path.read_bytes) -> Hints:
    """The (name, addresses) of each root server; raises ``HintsError`` naming file and line."""
    if path is None:
        return parse_root_hints(default_hints_text(), "the shipped IANA root hints")
    return parse_root_hints(_read(path, "the root hints", read), str(path))


def _read(path: Path, what: str, read: Read) -> str:
    try:
        return read(path).decode()
    except OSError as exc:
        raise HintsError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HintsError(f"{path}: not a text file") from None


def load_trust_anchors(path: Path | None, read: Read = Path.read_bytes) -> list[TrustAnchor]:
    """The trust anchors in ``path`` (the shipped IANA root anchors when None); raises
    ``HintsError`` naming the file and line."""
    if path is None:
        source, text = "the shipped IANA root anchors", resources.files("ispd.dns").joinpath(
            "data/root-anchors.txt").read_text()
    else:
        source, text = str(path), _read(path, "the trust anchors", read)
    try:
        anchors = parse_trust_anchors(text)
    except ValueError as exc:
        raise HintsError(f"{source}: {exc}") from None
    if not anchors:
        raise HintsError(f"{source}: no DS or DNSKEY record")
    return anchors


def parse_root_hints(text: str, source: str) -> Hints:
    servers: list[bytes] = []
    addresses: dict[bytes, list[str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].split()
        if not line:
            continue
        # NAME [TTL] [CLASS] TYPE RDATA, in any of the orders zone files allow for TTL and class.
        fields = [f for f in line[1:] if not f.isdigit() and f.upper() != "IN"]
        if len(fields) != 2:
            raise HintsError(f"{source}:{number}: expected 'NAME [TTL] [IN] TYPE DATA', got {raw.strip()!r}")
        rtype, value = fields[0].upper(), fields[1]
        try:
            owner = name_from_text(line[0])
            if rtype == "NS":
                if owner != ROOT:
                    raise HintsError(f"{source}:{number}: NS records in root hints belong to '.'")
                servers.append(name_from_text(value))
            elif rtype in ("A", "AAAA"):
                address = ip_address(value)
                if (address.version == 4) != (rtype == "A"):
                    raise HintsError(f"{source}:{number}: {value} is not an {rtype} address")
                addresses.setdefault(owner, []).append(str(address))
        except ValueError as exc:
            if isinstance(exc, HintsError):
                raise
            raise HintsError(f"{source}:{number}: {exc}") from None
    hints = [(name, addresses.get(name, [])) for name in dict.fromkeys(servers)]
    if not any(found for _, found in hints):
        raise HintsError(f"{source}: no root server with an address (need '. NS name' and 'name A address' lines)")
    return hints
