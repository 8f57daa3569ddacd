"""Root hints: the root servers' names and addresses in the format IANA publishes (named.root).

Only NS records at the root and A/AAAA records of the names they list matter; comments, other
records and TTLs are ignored. A shipped copy of IANA's file is the default; operators of private
roots (and the tests' hierarchy on loopback) give their own.
"""

from __future__ import annotations

from importlib import resources
from ipaddress import ip_address
from pathlib import Path

from ispd.dns.resolver import Hints
from ispd.dns.wire import ROOT, name_from_text


class HintsError(ValueError):
    pass


def default_hints_text() -> str:
    return resources.files("ispd.dns").joinpath("data/named.root").read_text()


def load_root_hints(path: Path | None) -> Hints:
    """The (name, addresses) of each root server; raises ``HintsError`` naming file and line."""
    if path is None:
        return parse_root_hints(default_hints_text(), "the shipped IANA root hints")
    try:
        text = path.read_text()
    except OSError as exc:
        raise HintsError(f"{path}: cannot read the root hints: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HintsError(f"{path}: not a text file") from None
    return parse_root_hints(text, str(path))


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
