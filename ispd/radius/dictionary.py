"""RADIUS attribute dictionaries: names, numbers, data types, vendors, VALUE names and flags.

Operators know FreeRADIUS's dictionary format, so ispd reads that format (the 3.x syntax): its own
shipped files in ``dictionaries/`` (``BUILTIN_DIRECTORY``), then whatever files the config names,
often FreeRADIUS's own tree (Debian: ``/usr/share/freeradius/dictionary``).

Theory of operation. ``parse_dictionary_files`` runs one ``_Loader`` over the files in order; each
file is read line by line with a little per-file state:

- outside any block, numbers are in the standard space (vendor 0);
- ``BEGIN-VENDOR v`` … ``END-VENDOR v`` puts numbers in vendor v's space (they travel inside
  Vendor-Specific, 26); with ``format=Extended-Vendor-Specific-N`` they travel inside the RFC 6929
  Extended-Vendor-Specific attribute (240+N).26 instead;
- ``BEGIN-TLV t`` … ``END-TLV t`` makes each number a child of the TLV attribute t;
- ``BEGIN-PROTOCOL p`` … ``END-PROTOCOL p`` (FreeRADIUS 4): RADIUS is read as usual, any other
  protocol's block is skipped whole, because its numbers are not RADIUS numbers.

Blocks never span files: a file that ends inside one is an error, and an ``$INCLUDE``d file starts
outside any block, as in FreeRADIUS. ``$INCLUDE`` paths are relative to the including file;
``$INCLUDE-`` ignores a missing file. Loops, deep nesting, huge files and long lines are errors.

Numbers. An attribute's ``oid`` is its path of type numbers as it travels, without the 26 and
vendor id of a Vendor-Specific: ``(1,)`` User-Name, ``(241, 1)`` an RFC 6929 extended attribute,
``(1, 3, 2)`` a WiMAX TLV grandchild with vendor 24757. An Extended-Vendor-Specific attribute keeps
the parent's path, ``(245, 26, 1)`` with its vendor id in ``vendor`` (the id sits between 26 and
the last number on the wire). Numbers are decimal or ``0x`` hex; dotted ones ("241.1", "1.3.2")
need their parents defined first, and "26.9.1" means vendor 9's attribute 1. Standard-space
numbers above 255 are FreeRADIUS's server-internal attributes: they load, but never travel.

Names. Lookups are case-insensitive. As in FreeRADIUS, several names may share a number (old
names from ``dictionary.compat``, say): each resolves, and ``by_oid`` answers the latest one
defined, so newer files name what is decoded. A name may be defined again with the same number
and type (flags may change: the later wins); the same name with another number or type is an
error naming both places, because silently renumbering an attribute would corrupt packets.

VALUEs belong to the attribute name they were given for. (FreeRADIUS keys them by number, which
hangs an old name's VALUEs on whatever attribute later takes its number: Debian's tree puts
dictionary.ascend.illegal's on Mobility-Domain-Id, for one.) A VALUE for a name not yet defined
waits until every file is read (FreeRADIUS's ``dictionary.compat`` relies on that) and then comes
after the VALUEs given directly, so ``value_name`` prefers the names written next to the
attribute; the first name given to a number is the one printed.

Types are FreeRADIUS 3.2's, matched case-insensitively, with its other spellings (uint8, uint16,
uint32, uint64, int, cidr) read as the canonical ``DataType``. ``octets[N]`` is octets with a fixed
``length``. VALUEs are allowed on the integer types (and on octets, as FreeRADIUS allows).

Deliberately not done: FreeRADIUS 4's richer syntax (``STRUCT``, ``MEMBER``, ``ENUM``, ``DEFINE``,
``FLAGS``, ``PROTOCOL``) is skipped and listed in ``Dictionary.skipped``; ``ALIAS`` is honoured
when its target is a name or a number already known. An unknown keyword, type or flag is an
error rather than a guess.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum, StrEnum
from pathlib import Path
from types import MappingProxyType

BUILTIN_DIRECTORY: Path = Path(__file__).parent / "dictionaries"

MAX_FILE_BYTES = 8 * 1024 * 1024  # Debian's whole tree is under 2 MiB
MAX_LINE_CHARS = 4096
MAX_INCLUDE_DEPTH = 16
MAX_FILES = 4096
MAX_NAME_CHARS = 128  # FreeRADIUS's DICT_ATTR_MAX_NAME_LEN
MAX_INTERNAL_NUMBER = 65535  # server-internal attributes (FreeRADIUS's reach about 2200)
MAX_TLV_DEPTH = 8

VENDOR_SPECIFIC = 26
EXTENDED_VENDOR_SPECIFIC = 26  # the child number of an RFC 6929 extended attribute that carries vendors
FIRST_EXTENDED = 241
LAST_EXTENDED = 246


class DataType(StrEnum):
    """Attribute data types as spelled in dictionary files (FreeRADIUS 3.2's set)."""

    STRING = "string"
    OCTETS = "octets"
    IPADDR = "ipaddr"
    IPV4PREFIX = "ipv4prefix"
    INTEGER = "integer"
    DATE = "date"
    IPV6ADDR = "ipv6addr"
    IPV6PREFIX = "ipv6prefix"
    IFID = "ifid"
    INTEGER64 = "integer64"
    BYTE = "byte"
    SHORT = "short"
    SIGNED = "signed"
    ETHER = "ether"
    TLV = "tlv"
    ABINARY = "abinary"
    COMBO_IP = "combo-ip"
    VSA = "vsa"
    EXTENDED = "extended"
    LONG_EXTENDED = "long-extended"
    EVS = "evs"


# Other spellings FreeRADIUS 3.2 accepts for the same encodings (its dict_attr_types table); types
# are matched case-insensitively there too (Debian's dictionary.juniper writes "String").
_TYPE_ALIASES: Mapping[str, DataType] = {
    "uint8": DataType.BYTE,
    "uint16": DataType.SHORT,
    "uint32": DataType.INTEGER,
    "int": DataType.INTEGER,
    "uint64": DataType.INTEGER64,
    "cidr": DataType.IPV4PREFIX,
}

# The types a VALUE can name numbers of, with the range their encoding holds. FreeRADIUS also takes
# VALUEs for octets (dictionary.cablelabs names the leading number of an event message): kept, so
# its files load, though no codec turns them into names.
_VALUE_RANGES: Mapping[DataType, tuple[int, int]] = {
    DataType.OCTETS: (0, 0xFFFF_FFFF),
    DataType.BYTE: (0, 0xFF),
    DataType.SHORT: (0, 0xFFFF),
    DataType.INTEGER: (0, 0xFFFF_FFFF),
    DataType.INTEGER64: (0, 0xFFFF_FFFF_FFFF_FFFF),
    DataType.SIGNED: (-(2**31), 2**31 - 1),
}

# Types whose numbered children may be defined (dotted numbers or BEGIN-TLV).
_PARENT_TYPES = frozenset({DataType.TLV, DataType.EXTENDED, DataType.LONG_EXTENDED})


class Encryption(IntEnum):
    """The ``encrypt=`` flag: how a value is hidden on the wire."""

    NONE = 0
    USER_PASSWORD = 1  # RFC 2865 §5.2
    TUNNEL_PASSWORD = 2  # RFC 2868 §3.5 (also MS-MPPE keys, RFC 2548 §2.4.2)
    ASCEND_SECRET = 3


@dataclass(frozen=True, slots=True)
class Vendor:
    id: int
    name: str
    type_size: int = 1  # VENDOR ... format=t,l : bytes of the vendor attribute's type field (1, 2 or 4)
    length_size: int = 1  # bytes of its length field (0, 1 or 2)
    continuation: bool = False  # format=1,1,c (WiMAX)


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str  # as written in the file (lookups are case-insensitive)
    oid: tuple[int, ...]  # the number path without 26 and vendor id; see the module docstring
    type: DataType
    vendor: int = 0  # 0: the standard space; else the vendor id
    encrypt: Encryption = Encryption.NONE
    has_tag: bool = False
    array: bool = False
    concat: bool = False
    # VALUE name -> number, in file order (kept as a read-only copy).
    values: Mapping[str, int] = field(default_factory=dict, hash=False)
    length: int = 0  # octets[N]: the value's fixed size; 0 when it varies
    secret: bool = False  # the "secret" flag or any encryption: never log the value
    virtual: bool = False  # computed by the server, never on the wire
    _by_folded_name: Mapping[str, int] = field(init=False, repr=False, compare=False, hash=False)
    _by_number: Mapping[int, str] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        values = MappingProxyType(dict(self.values))
        by_number: dict[int, str] = {}
        for name, number in values.items():
            by_number.setdefault(number, name)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "_by_folded_name", {name.casefold(): number for name, number in values.items()})
        object.__setattr__(self, "_by_number", by_number)

    def __reduce__(self) -> tuple[Callable[..., Attribute], tuple[object, ...]]:
        # A mappingproxy does not pickle; rebuild from a plain dict (worker processes get copies).
        return Attribute, (self.name, self.oid, self.type, self.vendor, self.encrypt, self.has_tag, self.array,
                           self.concat, dict(self.values), self.length, self.secret, self.virtual)

    @property
    def code(self) -> int:
        return self.oid[0]

    def value_name(self, number: int) -> str | None:
        """The first name given to ``number``, or None."""
        return self._by_number.get(number)

    def value_number(self, name: str) -> int | None:
        """The number a VALUE name stands for (case-insensitive), or None."""
        return self._by_folded_name.get(name.casefold())


@dataclass(frozen=True, slots=True)
class SkippedDirective:
    """A line ispd understood well enough to know it does not need it."""

    where: str  # FILE:LINE
    text: str


class DictionaryError(ValueError):
    """A dictionary file that cannot be used; str() is 'FILE:LINE: what is wrong'."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message

    def __reduce__(self) -> tuple[type[DictionaryError], tuple[str, str]]:
        return DictionaryError, (self.where, self.message)


@dataclass(slots=True)
class _State:
    """Everything a Dictionary knows; copied (shallowly, per table) before a load adds to it."""

    attributes: dict[str, Attribute] = field(default_factory=dict)  # folded name -> definition (no values)
    origins: dict[str, str] = field(default_factory=dict)  # folded name -> FILE:LINE
    # folded attribute name -> folded VALUE name -> (number, FILE:LINE), and -> the VALUE name as written
    values: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    value_names: dict[str, dict[str, str]] = field(default_factory=dict)
    by_oid: dict[tuple[int, tuple[int, ...]], str] = field(default_factory=dict)  # (vendor, oid) -> folded name
    aliases: dict[str, str] = field(default_factory=dict)  # folded alias -> folded attribute name
    vendors: dict[int, Vendor] = field(default_factory=dict)
    vendor_names: dict[str, int] = field(default_factory=dict)  # folded name -> id
    vendor_origins: dict[int, str] = field(default_factory=dict)
    skipped: list[SkippedDirective] = field(default_factory=list)

    def copy(self) -> _State:
        return _State(
            attributes=dict(self.attributes),
            origins=dict(self.origins),
            values={k: dict(v) for k, v in self.values.items()},
            value_names={k: dict(v) for k, v in self.value_names.items()},
            by_oid=dict(self.by_oid),
            aliases=dict(self.aliases),
            vendors=dict(self.vendors),
            vendor_names=dict(self.vendor_names),
            vendor_origins=dict(self.vendor_origins),
            skipped=list(self.skipped),
        )


class Dictionary:
    """A loaded, immutable set of attribute definitions. Build one with ``parse_dictionary_files``."""

    __slots__ = ("_attributes", "_state")

    def __init__(self) -> None:
        self._state = _State()
        self._attributes: dict[str, Attribute] = {}

    @classmethod
    def _from_state(cls, state: _State) -> Dictionary:
        dictionary = cls()
        dictionary._state = state
        attributes: dict[str, Attribute] = {}
        for key, definition in state.attributes.items():
            values = state.values.get(key)
            if values:
                names = state.value_names[key]
                attributes[key] = replace(definition, values={names[v]: number for v, (number, _) in values.items()})
            else:
                attributes[key] = definition
        dictionary._attributes = attributes
        return dictionary

    def get(self, name: str) -> Attribute | None:
        key = name.casefold()
        found = self._attributes.get(key)
        if found is None and key in self._state.aliases:
            found = self._attributes.get(self._state.aliases[key])
        return found

    def attribute(self, name: str) -> Attribute:
        found = self.get(name)
        if found is not None:
            return found
        names = {attribute.name.casefold(): attribute.name for attribute in self._attributes.values()}
        close = difflib.get_close_matches(name.casefold(), list(names), n=3)
        hint = f"; did you mean {' or '.join(repr(names[c]) for c in close)}?" if close else ""
        raise KeyError(f"no RADIUS attribute named {name!r} in the dictionary{hint}")

    def by_code(self, code: int, vendor: int = 0) -> Attribute | None:
        return self.by_oid((code,), vendor)

    def by_oid(self, oid: tuple[int, ...], vendor: int = 0) -> Attribute | None:
        key = self._state.by_oid.get((vendor, oid))
        return None if key is None else self._attributes[key]

    def vendor(self, ref: int | str) -> Vendor | None:
        if isinstance(ref, str):
            vendor_id = self._state.vendor_names.get(ref.casefold())
            return None if vendor_id is None else self._state.vendors.get(vendor_id)
        return self._state.vendors.get(ref)

    def vendors(self) -> tuple[Vendor, ...]:
        return tuple(self._state.vendors.values())

    def where(self, name: str) -> str | None:
        """FILE:LINE of an attribute's definition (for messages), or None when it is unknown."""
        found = self.get(name)
        return None if found is None else self._state.origins.get(found.name.casefold())

    @property
    def skipped(self) -> tuple[SkippedDirective, ...]:
        """Directives read but not used (FreeRADIUS 4 syntax, other protocols' blocks)."""
        return tuple(self._state.skipped)

    def __iter__(self) -> Iterator[Attribute]:
        return iter(self._attributes.values())

    def __len__(self) -> int:
        return len(self._attributes)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"<Dictionary: {len(self)} attributes, {len(self._state.vendors)} vendors>"


# --- the loader --------------------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9._/-]+")
_NUMBER = re.compile(r"(?:0[xX][0-9A-Fa-f]+|[0-9]+)")
_VALUE_NUMBER = re.compile(r"-?(?:0[xX][0-9A-Fa-f]+|[0-9]+)")
_DOTTED = re.compile(r"(?:0[xX][0-9A-Fa-f]+|[0-9]+)(?:\.(?:0[xX][0-9A-Fa-f]+|[0-9]+))*")
_FORMAT = re.compile(r"format=([124]),([012])(,c)?")
_EVS_FORMAT = re.compile(r"format=Extended-Vendor-Specific-([1-6])")
# FreeRADIUS 4 directives that define nothing ispd could number, or only change how FreeRADIUS
# itself treats attributes: skipped, and listed in Dictionary.skipped.
_SKIPPED_KEYWORDS = frozenset({"PROTOCOL", "FLAGS", "ENUM", "DEFINE", "MEMBER", "STRUCT"})


@dataclass(slots=True)
class _Block:
    keyword: str  # BEGIN-VENDOR, BEGIN-TLV, BEGIN-PROTOCOL
    name: str
    where: str
    vendor: Vendor | None = None
    evs_parent: int | None = None  # 241..246 for format=Extended-Vendor-Specific-N
    tlv: Attribute | None = None
    skipping: bool = False  # a BEGIN-PROTOCOL block for another protocol


@dataclass(slots=True)
class _PendingValue:
    attribute: str
    name: str
    number: int
    where: str


class _Loader:
    def __init__(self, state: _State) -> None:
        self.state = state
        self.pending: list[_PendingValue] = []
        self.files_read = 0

    # -- files ------------------------------------------------------------------------------------------------

    def load(self, path: Path, stack: tuple[Path, ...], where: str | None, optional: bool = False) -> None:
        at = where or str(path)
        subject = f" {path}" if where else ""  # a top-level file's name is already in 'at'
        if len(stack) >= MAX_INCLUDE_DEPTH:
            raise DictionaryError(at, f"$INCLUDE nested more than {MAX_INCLUDE_DEPTH} deep")
        self.files_read += 1
        if self.files_read > MAX_FILES:
            raise DictionaryError(at, f"more than {MAX_FILES} dictionary files")
        try:
            resolved = path.resolve()
            if resolved in stack:
                chain = " -> ".join(p.name for p in (*stack[stack.index(resolved):], resolved))
                raise DictionaryError(at, f"$INCLUDE loop: {chain}")
            if optional and not path.exists():
                return
            # Only regular files: a FIFO or a device named by mistake would block or never end.
            if path.exists() and not path.is_file():
                raise DictionaryError(at, f"cannot read{subject}: not a regular file")
            with path.open("rb") as stream:
                raw = stream.read(MAX_FILE_BYTES + 1)
        except (OSError, RuntimeError, ValueError) as exc:  # ValueError: a NUL in the name
            if isinstance(exc, DictionaryError):
                raise
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise DictionaryError(at, f"cannot read{subject}: {reason}") from exc
        if len(raw) > MAX_FILE_BYTES:
            raise DictionaryError(at, f"{path} is larger than {MAX_FILE_BYTES} bytes")
        # Comments may hold any bytes (author names in Latin-1); names themselves are checked as ASCII.
        text = raw.decode("utf-8", errors="replace")
        self.read_lines(path, text, (*stack, resolved))

    def read_lines(self, path: Path, text: str, stack: tuple[Path, ...]) -> None:
        blocks: list[_Block] = []
        # Lines end at newlines only (not at the other characters str.splitlines() knows), so line
        # numbers are the ones an editor shows.
        for number, line in enumerate(text.split("\n"), start=1):
            where = f"{path}:{number}"
            if len(line) > MAX_LINE_CHARS:
                raise DictionaryError(where, f"line longer than {MAX_LINE_CHARS} characters")
            # As in FreeRADIUS, '#' starts a comment anywhere on a line.
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            keyword = words[0].upper()
            if blocks and blocks[-1].skipping:
                if keyword == "END-PROTOCOL" and len(words) == 2 and words[1].casefold() == blocks[-1].name.casefold():
                    blocks.pop()
                continue
            self.directive(path, where, keyword, words, blocks, stack)
        if blocks:
            block = blocks[-1]
            raise DictionaryError(block.where, f"{block.keyword} {block.name} has no matching END-{block.keyword[6:]}")

    def directive(
        self, path: Path, where: str, keyword: str, words: list[str], blocks: list[_Block], stack: tuple[Path, ...]
    ) -> None:
        if keyword == "ATTRIBUTE":
            self.attribute(where, words, blocks)
        elif keyword == "VALUE":
            self.value(where, words)
        elif keyword == "VENDOR":
            self.vendor(where, words)
        elif keyword in {"$INCLUDE", "$INCLUDE-"}:
            if len(words) != 2:
                raise DictionaryError(where, f"{words[0]} needs exactly one file name")
            target = Path(words[1])
            if not target.is_absolute():
                target = path.parent / target
            self.load(target, stack, where, optional=keyword == "$INCLUDE-")
        elif keyword == "BEGIN-VENDOR":
            blocks.append(self.begin_vendor(where, words, blocks))
        elif keyword == "BEGIN-TLV":
            blocks.append(self.begin_tlv(where, words, blocks))
        elif keyword == "BEGIN-PROTOCOL":
            if len(words) != 2:
                raise DictionaryError(where, "BEGIN-PROTOCOL needs a protocol name")
            skipping = words[1].casefold() != "radius"
            if skipping:
                self.state.skipped.append(SkippedDirective(where, " ".join(words)))
            blocks.append(_Block("BEGIN-PROTOCOL", words[1], where, skipping=skipping))
        elif keyword in {"END-VENDOR", "END-TLV", "END-PROTOCOL"}:
            if len(words) != 2:
                raise DictionaryError(where, f"{words[0]} needs the name its BEGIN gave")
            if not blocks:
                raise DictionaryError(where, f"{words[0]} {words[1]} without a BEGIN-{keyword[4:]}")
            block = blocks[-1]
            if block.keyword != "BEGIN-" + keyword[4:] or block.name.casefold() != words[1].casefold():
                raise DictionaryError(where, f"{words[0]} {words[1]} does not close {block.keyword} {block.name} "
                                             f"(opened at {block.where})")
            blocks.pop()
        elif keyword == "ALIAS":
            self.alias(where, words, blocks)
        elif keyword in _SKIPPED_KEYWORDS:
            self.state.skipped.append(SkippedDirective(where, " ".join(words)))
        else:
            raise DictionaryError(where, f"unknown keyword {words[0]!r}")

    # -- VENDOR and blocks -----------------------------------------------------------------------------------

    def vendor(self, where: str, words: list[str]) -> None:
        if len(words) not in {3, 4}:
            raise DictionaryError(where, "VENDOR needs a name and a number, and may have format=t,l[,c]")
        name = _check_name(where, words[1], "vendor")
        number = _parse_number(where, words[2], "vendor number")
        if not 0 < number < 2**24:
            # The vendor id is 4 octets on the wire, but RFC 2865 §5.26 makes the high octet 0.
            raise DictionaryError(where, f"vendor number {number} is outside 1..16777215")
        type_size, length_size, continuation = 1, 1, False
        if len(words) == 4:
            match = _FORMAT.fullmatch(words[3])
            if not match:
                raise DictionaryError(where, f"bad vendor format {words[3]!r} (expected format=T,L with T 1, 2 or 4 "
                                             "and L 0, 1 or 2, or format=1,1,c)")
            type_size, length_size, continuation = int(match[1]), int(match[2]), match[3] is not None
            if continuation and (type_size, length_size) != (1, 1):
                raise DictionaryError(where, "only format=1,1 vendors can have continuations (,c)")
        vendor = Vendor(number, name, type_size, length_size, continuation)
        state = self.state
        known_id = state.vendor_names.get(name.casefold())
        if known_id is not None and known_id != number:
            raise DictionaryError(where, f"vendor {name} is already number {known_id} "
                                         f"(at {state.vendor_origins[known_id]})")
        previous = state.vendors.get(number)
        if previous is not None and (previous.type_size, previous.length_size, previous.continuation) != (
            type_size, length_size, continuation
        ):
            # Attributes already read for this vendor would be encoded with the other format.
            raise DictionaryError(where, f"vendor {number} ({previous.name}) was given another format "
                                         f"at {state.vendor_origins[number]}")
        state.vendor_names[name.casefold()] = number
        # A second name for a known number prints as the newer one, as in FreeRADIUS.
        state.vendors[number] = vendor
        state.vendor_origins.setdefault(number, where)

    def begin_vendor(self, where: str, words: list[str], blocks: list[_Block]) -> _Block:
        if len(words) not in {2, 3}:
            raise DictionaryError(where, "BEGIN-VENDOR needs a vendor name, and may have "
                                         "format=Extended-Vendor-Specific-N")
        if any(block.keyword != "BEGIN-PROTOCOL" for block in blocks):
            raise DictionaryError(where, f"BEGIN-VENDOR inside {blocks[-1].keyword} {blocks[-1].name}")
        vendor = self.find_vendor(where, words[1])
        evs_parent: int | None = None
        if len(words) == 3:
            match = _EVS_FORMAT.fullmatch(words[2])
            if not match:
                raise DictionaryError(where, f"bad BEGIN-VENDOR option {words[2]!r} "
                                             "(expected format=Extended-Vendor-Specific-N, N 1..6)")
            evs_parent = FIRST_EXTENDED - 1 + int(match[1])
            carrier = self.state.by_oid.get((0, (evs_parent, EXTENDED_VENDOR_SPECIFIC)))
            if carrier is None or self.state.attributes[carrier].type != DataType.EVS:
                raise DictionaryError(where, f"no evs attribute {evs_parent}.26 (Extended-Vendor-Specific-"
                                             f"{match[1]}) is defined yet")
        return _Block("BEGIN-VENDOR", words[1], where, vendor=vendor, evs_parent=evs_parent)

    def begin_tlv(self, where: str, words: list[str], blocks: list[_Block]) -> _Block:
        if len(words) != 2:
            raise DictionaryError(where, "BEGIN-TLV needs the name of a tlv attribute")
        parent = self.find_attribute(words[1])
        if parent is None:
            raise DictionaryError(where, f"BEGIN-TLV {words[1]}: no such attribute")
        if parent.type != DataType.TLV:
            raise DictionaryError(where, f"BEGIN-TLV {words[1]}: it is {parent.type}, not tlv")
        vendor_block = _innermost(blocks, "BEGIN-VENDOR")
        tlv_block = _innermost(blocks, "BEGIN-TLV")
        expected_vendor = vendor_block.vendor.id if vendor_block and vendor_block.vendor else 0
        if parent.vendor != expected_vendor:
            raise DictionaryError(where, f"BEGIN-TLV {words[1]}: that attribute belongs to another vendor")
        if tlv_block and tlv_block.tlv and parent.oid[: len(tlv_block.tlv.oid)] != tlv_block.tlv.oid:
            raise DictionaryError(where, f"BEGIN-TLV {words[1]} is not a child of {tlv_block.name}")
        return _Block("BEGIN-TLV", words[1], where, tlv=parent)

    # -- ATTRIBUTE --------------------------------------------------------------------------------------------

    def attribute(self, where: str, words: list[str], blocks: list[_Block]) -> None:
        if len(words) not in {4, 5}:
            raise DictionaryError(where, "ATTRIBUTE needs a name, a number and a type, and may have flags")
        name = _check_name(where, words[1], "attribute")
        components = _parse_oid(where, words[2])
        data_type, length = _parse_type(where, words[3])
        flags = [flag for flag in words[4].split(",") if flag] if len(words) == 5 else []
        vendor_block = _innermost(blocks, "BEGIN-VENDOR")
        tlv_block = _innermost(blocks, "BEGIN-TLV")

        old_style_vendor: Vendor | None = None
        if len(flags) == 1 and not _is_flag(flags[0]) and "=" not in flags[0]:
            # FreeRADIUS 1.x style: a lone fourth field naming a vendor.
            old_style_vendor = self.state_vendor(flags[0])
            if old_style_vendor is None:
                raise DictionaryError(where, f"unknown flag or vendor {flags[0]!r}")
            if vendor_block or tlv_block:
                raise DictionaryError(where, "a vendor name after the type is not allowed inside BEGIN-VENDOR "
                                             "or BEGIN-TLV")
            if len(components) != 1:
                raise DictionaryError(where, "a dotted number cannot be combined with a vendor name")
            flags = []

        fixed = 0  # how many leading numbers of the oid are already known to exist
        if tlv_block is not None and tlv_block.tlv is not None:
            if len(components) != 1:
                raise DictionaryError(where, f"inside BEGIN-TLV {tlv_block.name} a number is a single child number")
            vendor_id = tlv_block.tlv.vendor
            oid = (*tlv_block.tlv.oid, components[0])
            fixed = len(tlv_block.tlv.oid)
        elif vendor_block is not None and vendor_block.vendor is not None:
            vendor = vendor_block.vendor
            vendor_id = vendor.id
            if vendor_block.evs_parent is not None:
                # The EVS type is one octet (RFC 6929 §2.4).
                _check_range(where, components[0], 0, 0xFF, "Extended-Vendor-Specific attribute number")
                oid = (vendor_block.evs_parent, EXTENDED_VENDOR_SPECIFIC, *components)
                fixed = 3
            else:
                _check_range(where, components[0], 0, 256**vendor.type_size - 1,
                             f"attribute number for vendor {vendor.name} (format={vendor.type_size},"
                             f"{vendor.length_size})")
                oid = components
                fixed = 1
        elif old_style_vendor is not None:
            vendor_id = old_style_vendor.id
            _check_range(where, components[0], 0, 256**old_style_vendor.type_size - 1,
                         f"attribute number for vendor {old_style_vendor.name}")
            oid = components
            fixed = 1
        elif components[0] == VENDOR_SPECIFIC and len(components) > 1:
            # "26.VENDOR.ATTR": a vendor's attribute written as its full path.
            if len(components) < 3:
                raise DictionaryError(where, f"{words[2]}: 26.VENDOR needs an attribute number after the vendor")
            known = self.state.vendors.get(components[1])
            if known is None:
                raise DictionaryError(where, f"{words[2]}: vendor {components[1]} is not defined (VENDOR first)")
            vendor_id = known.id
            oid = components[2:]
            _check_range(where, oid[0], 0, 256**known.type_size - 1, f"attribute number for vendor {known.name}")
            fixed = 1
        else:
            vendor_id = 0
            oid = components
            # Above 255: FreeRADIUS's server-internal attributes, which never travel.
            _check_range(where, oid[0], 1, MAX_INTERNAL_NUMBER, "attribute number")
            fixed = 1
        if len(oid) > MAX_TLV_DEPTH + 3:
            raise DictionaryError(where, f"{words[2]}: attributes nest at most {MAX_TLV_DEPTH} deep")
        self.check_parents(where, name, vendor_id, oid, fixed)
        self.check_type(where, name, data_type, vendor_id, oid)

        parsed = _parse_flags(where, flags, data_type, vendor_id, oid)
        definition = Attribute(
            name=name, oid=oid, type=data_type, vendor=vendor_id, encrypt=parsed.encrypt, has_tag=parsed.has_tag,
            array=parsed.array, concat=parsed.concat, length=length,
            secret=parsed.secret or parsed.encrypt != Encryption.NONE, virtual=parsed.virtual,
        )
        self.define(where, definition)

    def check_parents(self, where: str, name: str, vendor_id: int, oid: tuple[int, ...], fixed: int) -> None:
        for depth in range(max(fixed, 1), len(oid)):
            prefix = oid[:depth]
            key = self.state.by_oid.get((vendor_id, prefix))
            if key is None:
                raise DictionaryError(where, f"{name}: its parent {_describe_number(vendor_id, prefix)} "
                                             "is not defined (yet)")
            parent = self.state.attributes[key]
            if parent.type not in _PARENT_TYPES:
                raise DictionaryError(where, f"{name}: its parent {parent.name} is {parent.type}; only tlv, "
                                             "extended and long-extended attributes have children")
            _check_range(where, oid[depth], 1, 0xFF, f"child number under {parent.name}")

    def check_type(self, where: str, name: str, data_type: DataType, vendor_id: int, oid: tuple[int, ...]) -> None:
        # These types decide how everything under them is numbered, so they are pinned to their places.
        if (vendor_id, oid) == (0, (VENDOR_SPECIFIC,)) and data_type != DataType.VSA:
            raise DictionaryError(where, f"{name}: attribute 26 is Vendor-Specific, its type must be vsa")
        if data_type == DataType.VSA and (vendor_id, oid) != (0, (VENDOR_SPECIFIC,)):
            raise DictionaryError(where, f"{name}: only attribute 26 can be of type vsa")
        if data_type in {DataType.EXTENDED, DataType.LONG_EXTENDED} and not (
            vendor_id == 0 and len(oid) == 1 and FIRST_EXTENDED <= oid[0] <= LAST_EXTENDED
        ):
            raise DictionaryError(where, f"{name}: only attributes 241..246 can be of type {data_type}")
        is_evs_place = vendor_id == 0 and len(oid) == 2 and oid[1] == EXTENDED_VENDOR_SPECIFIC and (
            FIRST_EXTENDED <= oid[0] <= LAST_EXTENDED
        )
        if (data_type == DataType.EVS) != is_evs_place:
            raise DictionaryError(where, f"{name}: type evs belongs exactly to 241.26 .. 246.26")

    def define(self, where: str, definition: Attribute) -> None:
        state = self.state
        key = definition.name.casefold()
        if key in state.aliases:
            raise DictionaryError(where, f"{definition.name} is already an ALIAS")
        old = state.attributes.get(key)
        if old is not None and (old.vendor, old.oid, old.type) != (definition.vendor, definition.oid, definition.type):
            raise DictionaryError(where, f"{definition.name} is already {_describe(old)} (at {state.origins[key]}); "
                                         f"here it would be {_describe(definition)}")
        # Same name, number and type: the later flags win, as in FreeRADIUS.
        state.attributes[key] = definition
        state.origins[key] = where
        # The latest name given to a number names it when decoding (old names stay readable).
        state.by_oid[(definition.vendor, definition.oid)] = key

    # -- VALUE and ALIAS ---------------------------------------------------------------------------------------

    def value(self, where: str, words: list[str]) -> None:
        if len(words) != 4:
            raise DictionaryError(where, "VALUE needs an attribute name, a value name and a number")
        value_name = words[2]
        if len(value_name) > MAX_NAME_CHARS or not all("!" <= c <= "~" for c in value_name):
            raise DictionaryError(where, f"bad VALUE name {value_name!r}: printable ASCII, at most "
                                         f"{MAX_NAME_CHARS} characters")
        if not _VALUE_NUMBER.fullmatch(words[3]):
            raise DictionaryError(where, f"VALUE {value_name}: {words[3]!r} is not a decimal or 0x hex number")
        number = _to_int(words[3])
        target = self.find_attribute(words[1])
        if target is None:
            # FreeRADIUS lets a VALUE come before its ATTRIBUTE (dictionary.compat does): wait for the end.
            _check_name(where, words[1], "attribute")
            self.pending.append(_PendingValue(words[1], value_name, number, where))
            return
        self.add_value(where, target, value_name, number)

    def add_value(self, where: str, target: Attribute, value_name: str, number: int) -> None:
        limits = _VALUE_RANGES.get(target.type)
        if limits is None:
            raise DictionaryError(where, f"VALUE {value_name}: {target.name} is {target.type}, which has no VALUEs")
        if not limits[0] <= number <= limits[1]:
            raise DictionaryError(where, f"VALUE {value_name}: {number} does not fit {target.name} ({target.type})")
        key = target.name.casefold()
        values = self.state.values.setdefault(key, {})
        folded = value_name.casefold()
        known = values.get(folded)
        if known is not None:
            if known[0] == number:
                return
            raise DictionaryError(where, f"VALUE {target.name} {value_name} is already {known[0]} (at {known[1]})")
        values[folded] = (number, where)
        self.state.value_names.setdefault(key, {})[folded] = value_name

    def alias(self, where: str, words: list[str], blocks: list[_Block]) -> None:
        if len(words) != 3:
            raise DictionaryError(where, "ALIAS needs a new name and the attribute it stands for")
        name = _check_name(where, words[1], "alias")
        target = self.find_attribute(words[2])
        if target is None and _DOTTED.fullmatch(words[2]):
            vendor_block = _innermost(blocks, "BEGIN-VENDOR")
            tlv_block = _innermost(blocks, "BEGIN-TLV")
            components = _parse_oid(where, words[2])
            if tlv_block is not None and tlv_block.tlv is not None:
                vendor_id, oid = tlv_block.tlv.vendor, (*tlv_block.tlv.oid, *components)
            elif vendor_block is not None and vendor_block.vendor is not None:
                vendor_id, oid = vendor_block.vendor.id, components
                if vendor_block.evs_parent is not None:
                    oid = (vendor_block.evs_parent, EXTENDED_VENDOR_SPECIFIC, *components)
            else:
                vendor_id, oid = 0, components
            key = self.state.by_oid.get((vendor_id, oid))
            target = None if key is None else self.state.attributes[key]
        if target is None:
            # FreeRADIUS 4 paths ("Vendor-Specific.Cisco.AVPair") and names ispd does not have.
            self.state.skipped.append(SkippedDirective(where, " ".join(words)))
            return
        key = name.casefold()
        existing = self.find_attribute(name)
        if existing is not None:
            if existing is target:
                return
            raise DictionaryError(where, f"ALIAS {name}: that name is already {existing.name}")
        self.state.aliases[key] = target.name.casefold()

    # -- lookups and the end -----------------------------------------------------------------------------------

    def find_attribute(self, name: str) -> Attribute | None:
        key = name.casefold()
        key = self.state.aliases.get(key, key)
        return self.state.attributes.get(key)

    def state_vendor(self, name: str) -> Vendor | None:
        vendor_id = self.state.vendor_names.get(name.casefold())
        return None if vendor_id is None else self.state.vendors.get(vendor_id)

    def find_vendor(self, where: str, name: str) -> Vendor:
        vendor = self.state_vendor(name)
        if vendor is None:
            raise DictionaryError(where, f"unknown vendor {name!r} (define it with VENDOR first)")
        return vendor

    def finish(self) -> None:
        for pending in self.pending:
            target = self.find_attribute(pending.attribute)
            if target is None:
                raise DictionaryError(pending.where, f"VALUE {pending.name}: no ATTRIBUTE {pending.attribute} "
                                                     "is defined")
            self.add_value(pending.where, target, pending.name, pending.number)
        self.pending.clear()


def _innermost(blocks: list[_Block], keyword: str) -> _Block | None:
    for block in reversed(blocks):
        if block.keyword == keyword:
            return block
    return None


def _check_name(where: str, text: str, what: str) -> str:
    if len(text) > MAX_NAME_CHARS or not _NAME.fullmatch(text):
        raise DictionaryError(where, f"bad {what} name {text!r}: use letters, digits, '-', '_', '.' and '/', "
                                     f"at most {MAX_NAME_CHARS}")
    return text


def _to_int(text: str) -> int:
    negative = text.startswith("-")
    digits = text[1:] if negative else text
    number = int(digits[2:], 16) if digits[:2].lower() == "0x" else int(digits, 10)
    return -number if negative else number


def _parse_number(where: str, text: str, what: str) -> int:
    if len(text) > 20 or not _NUMBER.fullmatch(text):
        raise DictionaryError(where, f"{what} {text!r} is not a decimal or 0x hex number")
    return _to_int(text)


def _parse_oid(where: str, text: str) -> tuple[int, ...]:
    parts = text.split(".")
    if len(parts) > MAX_TLV_DEPTH + 3:
        raise DictionaryError(where, f"attribute number {text!r} has too many parts")
    return tuple(_parse_number(where, part, "attribute number") for part in parts)


def _check_range(where: str, number: int, low: int, high: int, what: str) -> None:
    if not low <= number <= high:
        raise DictionaryError(where, f"{what} {number} is outside {low}..{high}")


def _parse_type(where: str, text: str) -> tuple[DataType, int]:
    spelled = text.lower()
    match = re.fullmatch(r"octets\[([0-9]{1,3})\]", spelled)
    if match:
        length = int(match[1])
        _check_range(where, length, 1, 253, "fixed length")
        return DataType.OCTETS, length
    if spelled in _TYPE_ALIASES:
        return _TYPE_ALIASES[spelled], 0
    try:
        return DataType(spelled), 0
    except ValueError:
        raise DictionaryError(where, f"unknown type {text!r}") from None


_FLAG = re.compile(r"has_tag(?:=1)?|encrypt=[0-9]+|array|concat|virtual|secret")


def _is_flag(text: str) -> bool:
    return _FLAG.fullmatch(text) is not None


# FreeRADIUS 3.2's rules, so a file it refuses is refused here too, with the same reason.
_ARRAY_TYPES = frozenset({
    DataType.IPADDR, DataType.IPV6ADDR, DataType.BYTE, DataType.SHORT, DataType.INTEGER, DataType.DATE,
    DataType.STRING, DataType.OCTETS, DataType.INTEGER64, DataType.SIGNED, DataType.IFID, DataType.ETHER,
    DataType.IPV4PREFIX, DataType.IPV6PREFIX,
})
_TAG_TYPES = frozenset({DataType.INTEGER, DataType.STRING, DataType.OCTETS})


@dataclass(slots=True)
class _Flags:
    encrypt: Encryption = Encryption.NONE
    has_tag: bool = False
    array: bool = False
    concat: bool = False
    secret: bool = False
    virtual: bool = False


def _parse_flags(
    where: str, flags: list[str], data_type: DataType, vendor_id: int, oid: tuple[int, ...]
) -> _Flags:
    parsed = _Flags()
    for flag in flags:
        if flag in {"has_tag", "has_tag=1"}:
            if data_type not in _TAG_TYPES:
                raise DictionaryError(where, f"has_tag: only integer, string and octets attributes have tags, "
                                             f"not {data_type}")
            parsed.has_tag = True
        elif flag.startswith("encrypt="):
            try:
                parsed.encrypt = Encryption(int(flag[8:])) if flag[8:].isdigit() else Encryption(-1)
            except ValueError:
                raise DictionaryError(where, f"{flag}: encrypt is 0, 1, 2 or 3") from None
            if parsed.encrypt == Encryption.ASCEND_SECRET and data_type != DataType.STRING:
                raise DictionaryError(where, "encrypt=3 is only for string attributes")
        elif flag == "array":
            if data_type not in _ARRAY_TYPES:
                raise DictionaryError(where, f"array: {data_type} attributes cannot be arrays")
            parsed.array = True
        elif flag == "concat":
            if data_type != DataType.OCTETS:
                raise DictionaryError(where, "concat is only for octets attributes")
            parsed.concat = True
        elif flag == "virtual":
            if vendor_id != 0 or oid[0] < 256:
                raise DictionaryError(where, "virtual is only for server-internal attributes (standard, above 255)")
            parsed.virtual = True
        elif flag == "secret":
            parsed.secret = True
        else:
            raise DictionaryError(where, f"unknown flag {flag!r}")
    return parsed


def _describe_number(vendor_id: int, oid: tuple[int, ...]) -> str:
    dotted = ".".join(map(str, oid))
    return f"vendor {vendor_id} attribute {dotted}" if vendor_id else f"attribute {dotted}"


def _describe(attribute: Attribute) -> str:
    return f"{_describe_number(attribute.vendor, attribute.oid)} ({attribute.type})"


# --- entry points ------------------------------------------------------------------------------------------

def parse_dictionary_files(paths: Iterable[Path], base: Dictionary | None = None) -> Dictionary:
    """Load dictionary files in order on top of ``base`` (which is left as it was).

    Raises DictionaryError, whose text is 'FILE:LINE: what is wrong'."""
    state = base._state.copy() if base is not None else _State()
    loader = _Loader(state)
    for path in paths:
        loader.load(Path(path), (), None)
    loader.finish()
    return Dictionary._from_state(state)


@functools.cache
def builtin_dictionary() -> Dictionary:
    """The dictionaries shipped with ispd (loaded once)."""
    return parse_dictionary_files([BUILTIN_DIRECTORY / "dictionary"])


def load_dictionary(extra_files: Sequence[Path] = ()) -> Dictionary:
    """The shipped dictionaries, then the operator's files on top."""
    if not extra_files:
        return builtin_dictionary()
    return parse_dictionary_files(extra_files, base=builtin_dictionary())
