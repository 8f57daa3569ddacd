"""DNSSEC for the lab's zones: keys and signatures made with BIND's tools (Debian's bind9-utils:
``dnssec-keygen``, ``dnssec-signzone``), DS records computed here, all fresh at every start of a
hierarchy, in its working directory.

``sign_zones(texts, plan, workdir)`` signs the zones that ``plan`` names, children before parents:
each signed zone's DS records go into its parent's text (when the parent is one of ``texts``)
before the parent is signed, so the chain of trust runs from the root's KSK down. A zone left out
of the plan stays unsigned; under a signed parent that is an insecure delegation, which the
parent's NSEC (or NSEC3) proves by showing no DS.

A ``Signing`` says how: the algorithm (by dnssec-keygen's name), one key (a CSK: SEP flag set,
signs everything) or a KSK and a ZSK, NSEC or NSEC3 (always 0 extra iterations, RFC 9276; a salt
and opt-out when asked), a validity window (default: dnssec-signzone's, from an hour ago to 30
days on) and, for a zone that must fail validation, a DS in the parent made from a key the zone
does not publish. Not here: key rollovers, CDS/CDNSKEY, online signing (NSD serves what it is
given).
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

KEYGEN = shutil.which("dnssec-keygen") or "/usr/bin/dnssec-keygen"
SIGNZONE = shutil.which("dnssec-signzone") or "/usr/bin/dnssec-signzone"


@dataclass(frozen=True, slots=True)
class Signing:
    """How one zone is signed. ``algorithm``: dnssec-keygen's name (ECDSAP256SHA256, RSASHA256,
    ED25519, ...), ``bits`` for RSA. ``split``: a KSK and a ZSK (else one key signs all).
    ``nsec3_salt``: NSEC3 with this salt in hex ("" for none; None: NSEC), ``opt_out`` with it.
    ``validity``: dnssec-signzone's ``-s`` and ``-e`` (YYYYMMDDHHMMSS). ``wrong_ds``: the parent
    gets the DS of a key that the zone does not publish."""

    algorithm: str
    bits: int | None = None
    split: bool = False
    nsec3_salt: str | None = None
    opt_out: bool = False
    validity: tuple[str, str] | None = None
    wrong_ds: bool = False


@dataclass(frozen=True, slots=True)
class SignedZone:
    """A zone after signing: ``text`` to serve, the ``ds`` records (presentation form, one a line,
    with the zone's TTL) its parent publishes, and its KSK's ``dnskey`` record (the root's: a
    trust anchor)."""

    origin: str
    text: str
    ds: str
    dnskey: str


def _run(command: list[str], cwd: Path) -> str:
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError as exc:
        raise RuntimeError(f"{command[0]} not found: the signed zones need bind9-utils "
                           "(tools/setup --test installs it)") from exc
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def _filename(origin: str) -> str:
    return "root" if origin == "." else origin.rstrip(".")


def _zone_ttl(text: str) -> int:
    found = re.search(r"^\$TTL\s+(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else 3600


def make_key(keydir: Path, origin: str, signing: Signing, *, ksk: bool, ttl: int) -> Path:
    """A new key pair for ``origin`` in ``keydir``; returns the path of its ``.key`` file."""
    keydir.mkdir(parents=True, exist_ok=True)
    command = [KEYGEN, "-q", "-K", str(keydir), "-a", signing.algorithm, "-L", str(ttl)]
    if signing.bits is not None:
        command += ["-b", str(signing.bits)]
    if ksk:
        command += ["-f", "KSK"]
    name = _run([*command, origin], keydir).strip()
    return keydir / f"{name}.key"


def key_records(keyfile: Path) -> str:
    """The DNSKEY record of a ``.key`` file, without dnssec-keygen's comments."""
    return "".join(line + "\n" for line in keyfile.read_text().splitlines() if line and not line.startswith(";"))


def ds_records(keyfile: Path, ttl: int) -> str:
    """The DS record (digest type 2, SHA-256) of a key, as dnssec-dsfromkey -2 -T ``ttl`` gives it,
    computed here to spare a process per zone (RFC 4034 §5.1.4: the digest of the owner name in
    canonical wire form followed by the DNSKEY RDATA)."""
    lines = []
    for record in key_records(keyfile).splitlines():
        fields = record.split()  # owner [TTL] [IN] DNSKEY flags protocol algorithm key...
        owner, (flags, protocol, algorithm, *key) = fields[0], fields[fields.index("DNSKEY") + 1:]
        rdata = struct.pack("!HBB", int(flags), int(protocol), int(algorithm)) + base64.b64decode("".join(key))
        tag = sum(b << 8 if i % 2 == 0 else b for i, b in enumerate(rdata))  # RFC 4034 Appendix B
        tag = (tag + (tag >> 16)) & 0xFFFF
        digest = hashlib.sha256(_wire(owner) + rdata).hexdigest().upper()
        lines.append(f"{owner} {ttl} IN DS {tag} {algorithm} 2 {digest}\n")
    return "".join(lines)


def _wire(name: str) -> bytes:
    labels = [label.lower().encode() for label in name.rstrip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


@dataclass(frozen=True, slots=True)
class ZoneKeys:
    """A zone's keys (``.key`` files; the KSK first) and the DS records its parent publishes."""

    keys: tuple[Path, ...]
    ds: str


def make_keys(origin: str, signing: Signing, workdir: Path, ttl: int) -> ZoneKeys:
    """The keys ``signing`` asks for, in ``workdir``, and the DS for the parent (with ``ttl``)."""
    ksk = make_key(workdir, origin, signing, ksk=True, ttl=ttl)
    keys = (ksk, make_key(workdir, origin, signing, ksk=False, ttl=ttl)) if signing.split else (ksk,)
    # the DS of a key made for nothing else: it matches no DNSKEY of the zone
    ds_key = make_key(workdir / "unpublished", origin, signing, ksk=True, ttl=ttl) if signing.wrong_ds else ksk
    return ZoneKeys(keys, ds_records(ds_key, ttl))


def sign_zone(origin: str, text: str, signing: Signing, workdir: Path, keys: ZoneKeys | None = None) -> SignedZone:
    """``origin``'s zone signed, in ``workdir`` (made if missing), with ``keys`` (default: new ones)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if keys is None:
        keys = make_keys(origin, signing, workdir, _zone_ttl(text))
    unsigned = workdir / f"{_filename(origin)}.zone"
    signed = workdir / f"{_filename(origin)}.signed"
    unsigned.write_text(text + "".join(key_records(k) for k in keys.keys))
    command = [SIGNZONE, "-q", "-K", str(workdir), "-o", origin, "-f", str(signed)]
    if not signing.split:
        command.append("-z")  # the one key, a KSK by its flags, signs every RRset
    if signing.nsec3_salt is not None:
        command += ["-3", signing.nsec3_salt or "-", "-H", "0", *(["-A"] if signing.opt_out else [])]
    if signing.validity is not None:
        # dnssec-signzone's own check would reject signatures that have already expired
        command += ["-P", "-s", signing.validity[0], "-e", signing.validity[1]]
    _run([*command, str(unsigned), *(str(k.with_suffix("")) for k in keys.keys)], workdir)
    return SignedZone(origin, signed.read_text(), keys.ds, key_records(keys.keys[0]))


def parent_of(origin: str, origins: set[str]) -> str | None:
    """The closest enclosing zone of ``origin`` among ``origins`` (None for the root)."""
    name = origin
    while name != ".":
        name = name.split(".", 1)[1] or "."
        if name in origins:
            return name
    return None


def _depth(origin: str) -> int:
    return 0 if origin == "." else len(origin.rstrip(".").split("."))


def sign_zones(texts: dict[str, str], plan: dict[str, Signing], workdir: Path) -> dict[str, SignedZone]:
    """Sign the zones of ``plan`` (origins in ``texts``), each child's DS added to its parent's
    text first. Returns the signed zones by origin; ``texts`` is left as it was. Every key is made
    at once, then the zones are signed a level at a time from the deepest up, each level's zones
    at once: most of the time is process start-up and RSA key generation, which overlap."""
    unknown = set(plan) - set(texts)
    if unknown:
        raise ValueError(f"no zone text for {', '.join(sorted(unknown))}")
    dirs = {origin: workdir / _filename(origin) for origin in plan}
    pending = dict(texts)
    signed: dict[str, SignedZone] = {}
    with ThreadPoolExecutor(max_workers=len(plan) or 1) as pool:
        keys = dict(zip(plan, pool.map(lambda o: make_keys(o, plan[o], dirs[o], _zone_ttl(texts[o])), plan),
                        strict=True))
        for origin in plan:
            parent = parent_of(origin, set(texts))
            if parent is not None:
                pending[parent] = pending[parent].rstrip("\n") + "\n" + keys[origin].ds
        for depth in sorted({_depth(o) for o in plan}, reverse=True):
            level = [o for o in plan if _depth(o) == depth]
            for zone in pool.map(lambda o: sign_zone(o, pending[o], plan[o], dirs[o], keys[o]), level):
                signed[zone.origin] = zone
    return signed
