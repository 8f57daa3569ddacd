"""How client and line identifiers are written as text: in the store, the CLI and the logs.

One canonical form per kind, so a reservation typed by an operator matches what a client sends:

mac         lowercase, colon-separated: ``02:00:5e:10:00:01`` (input may use '-', '.', or none)
client-id   lowercase hex of option 61 as sent, type byte first: ``0102005e100001``
circuit-id  option 82 sub-options 1 and 2: the text itself when it is printable ASCII
remote-id   (``eth0/1/2:100``, the usual for access switches and BNGs), else ``0x`` and hex
username    a RADIUS User-Name as the NAS sends it (``alice``, ``alice@isp.example``), case kept
duid        a DHCPv6 client's DUID (option 1, RFC 8415 §11), type first, as the DHCPv6 server writes it
            (``bytes.hex(":")``): lowercase, colon-separated, ``00:03:00:01:02:00:5e:10:00:01``
            (input may use '-' or none, or start with 0x)
"""

from __future__ import annotations

import re
import string

_PRINTABLE = frozenset(string.printable.encode()) - frozenset(b"\t\n\r\x0b\x0c")
_HEX = re.compile(r"^[0-9a-f]*$")
_OCTET = re.compile(r"^[0-9a-f]{2}$")
# RFC 8415 §11.1: a 2-octet type and at most 128 octets after it; no type defines an empty body.
DUID_SHORTEST, DUID_LONGEST = 3, 130


def mac_text(hw_address: bytes) -> str:
    return hw_address.hex(":")


def opaque_text(value: bytes) -> str:
    """A circuit-id or remote-id as text (see the module comment)."""
    if value and all(b in _PRINTABLE for b in value) and not value.startswith(b"0x"):
        return value.decode("ascii")
    return "0x" + value.hex()


def opaque_bytes(text: str) -> bytes:
    """The bytes a circuit-id or remote-id in its text form (``opaque_text``, or an operator's
    prefix of one) stands for: ``0x`` and hex, or the text itself; ValueError if neither."""
    if text.startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise ValueError(f"{text!r}: after 0x, write whole bytes in hex (two digits each)") from None
    raw = text.encode("ascii", "replace")
    if not text.isascii() or not all(b in _PRINTABLE for b in raw):
        raise ValueError(f"{text!r}: write it as printable ASCII, or as 0x and hex bytes")
    return raw


def normalize_key(kind: str, key: str) -> str:
    """The canonical form of a reservation key typed by an operator; ValueError says what is wrong."""
    key = key.strip()
    if kind == "mac":
        digits = re.sub(r"[:.\-]", "", key.lower())
        if len(digits) != 12 or not _HEX.match(digits):
            raise ValueError(f"{key!r} is not a MAC address (write it like 02:00:5e:10:00:01)")
        return ":".join(digits[i : i + 2] for i in range(0, 12, 2))
    if kind == "client-id":
        digits = re.sub(r"[:.\-]", "", key.lower()).removeprefix("0x")
        if len(digits) < 4 or len(digits) % 2 or not _HEX.match(digits):
            raise ValueError(f"{key!r} is not a client identifier (hex bytes, type first, e.g. 01:02:00:5e:10:00:01)")
        return digits
    if kind in ("circuit-id", "remote-id"):
        if not key:
            raise ValueError(f"the {kind} is empty")
        if key.startswith("0x"):
            try:
                raw = bytes.fromhex(key[2:])
            except ValueError:
                raise ValueError(f"{key!r}: after 0x, write the bytes in hex") from None
            # As the text form is checked: a bare "0x" is as empty as "" (refused above), and a
            # sub-option's length is one byte; such a key would be a reservation nothing matches.
            if not 1 <= len(raw) <= 255:
                raise ValueError(f"{key!r}: a {kind} has 1 to 255 bytes, not {len(raw)}")
            return opaque_text(raw)
        raw = key.encode("ascii", "replace")
        if len(raw) > 255 or not all(b in _PRINTABLE for b in raw):
            raise ValueError(f"{key!r}: write a {kind} as printable ASCII, or as 0x and hex bytes")
        return key
    if kind == "username":
        if not key:
            raise ValueError("the username is empty")
        if len(key.encode("utf-8", "replace")) > 253 or any(ord(ch) < 0x20 or ch == "\x7f" for ch in key):
            raise ValueError(f"{key!r}: a RADIUS username has at most 253 bytes and no control characters")
        # (Written composed, Unicode NFC, unless its subscriber's own username predates that
        # rule: the store checks it, knowing the subscriber.)
        return key
    if kind == "duid":
        return duid_text(key)
    raise ValueError(f"unknown reservation kind {kind!r} (mac, client-id, circuit-id, remote-id, username, duid)")


def duid_text(text: str) -> str:
    """A DUID typed as hex bytes, colon- or hyphen-separated or not, in its canonical form."""
    wrong = (f"{text!r} is not a DUID (hex bytes, type first, {DUID_SHORTEST} to {DUID_LONGEST} of them, "
             "e.g. 00:03:00:01:02:00:5e:10:00:01)")
    digits = text.strip().lower().removeprefix("0x")
    groups = re.split(r"[:\-]", digits)
    if len(groups) > 1:
        # Separated, each group is one byte: "0:3:0:1" would otherwise be read as 0x03 0x01.
        if not all(_OCTET.match(group) for group in groups):
            raise ValueError(wrong)
        digits = "".join(groups)
    if len(digits) % 2 or not _HEX.match(digits):
        raise ValueError(wrong)
    if not DUID_SHORTEST <= len(digits) // 2 <= DUID_LONGEST:
        raise ValueError(f"{wrong}: it has {len(digits) // 2}")
    return bytes.fromhex(digits).hex(":")
