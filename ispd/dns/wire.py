"""DNS messages on the wire: names, resource records and messages, bytes ⇄ typed objects.

ispd's own codec, because the resolver's speed is decided here: a cache miss parses a client's
query, encodes an upstream query, parses the answer and encodes the reply, and dnslib (kept for
zone files, policy zones and presentation format) costs tens of microseconds for each of those.

Representation:
- A domain name is its uncompressed wire form, ``b"\\x03www\\x07example\\x03com\\x00"``. Names that
  key a cache or a zone are lowercased (``bytes.lower()`` touches only ASCII letters, which is
  exactly DNS's case-insensitivity, RFC 4343); a question keeps the case it arrived in, so a
  reply echoes it and 0x20 checks can compare it.
- ``RR`` holds one record with its rdata in uncompressed wire form: names inside the rdata of the
  RFC 1035 types (and the few later types RFC 3597 §4 says receivers should decompress) are
  expanded on decode, so a record can be cached and written into any other message.
- ``Message`` is a decoded message; the OPT pseudo-record (RFC 6891) is lifted out into ``EDNS``.

Decoding validates lengths, pointers (only backwards, so no loops: RFC 1035 §4.1.4; never into the
header, which holds no name), label and name lengths (63 and 255) and rdata that must have a fixed
size, and raises ``WireError`` with a reason from a closed set. Encoding compresses owner names
and the names in the rdata of the types RFC 3597 §4 allows, and never grows past ``max_size``: a
reply whose answer or authority does not fit is sent empty with TC (RFC 2181 §9: the client
retries over TCP); additional records that do not fit are left out without TC.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from ipaddress import IPv4Address, IPv6Address


class RRType(IntEnum):
    A = 1
    NS = 2
    MD = 3
    MF = 4
    CNAME = 5
    SOA = 6
    MB = 7
    MG = 8
    MR = 9
    NULL = 10
    WKS = 11
    PTR = 12
    HINFO = 13
    MINFO = 14
    MX = 15
    TXT = 16
    RP = 17
    AFSDB = 18
    RT = 21
    SIG = 24
    KEY = 25
    PX = 26
    AAAA = 28
    LOC = 29
    SRV = 33
    NAPTR = 35
    KX = 36
    CERT = 37
    DNAME = 39
    OPT = 41
    APL = 42
    DS = 43
    SSHFP = 44
    IPSECKEY = 45
    RRSIG = 46
    NSEC = 47
    DNSKEY = 48
    DHCID = 49
    NSEC3 = 50
    NSEC3PARAM = 51
    TLSA = 52
    SMIMEA = 53
    HIP = 55
    CDS = 59
    CDNSKEY = 60
    OPENPGPKEY = 61
    CSYNC = 62
    ZONEMD = 63
    SVCB = 64
    HTTPS = 65
    SPF = 99
    TKEY = 249
    TSIG = 250
    IXFR = 251
    AXFR = 252
    MAILB = 253
    MAILA = 254
    ANY = 255
    URI = 256
    CAA = 257


def type_text(rtype: int) -> str:
    """A type's mnemonic, or the RFC 3597 form (TYPE65280) for types without one."""
    try:
        return RRType(rtype).name
    except ValueError:
        return f"TYPE{rtype}"


class RCode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    YXDOMAIN = 6
    YXRRSET = 7
    NXRRSET = 8
    NOTAUTH = 9
    NOTZONE = 10
    BADVERS = 16


class Opcode(IntEnum):
    QUERY = 0
    IQUERY = 1
    STATUS = 2
    NOTIFY = 4
    UPDATE = 5


CLASS_IN = 1
CLASS_CH = 3
CLASS_ANY = 255

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
FLAG_AD = 0x0020
FLAG_CD = 0x0010
OPCODE_MASK = 0x7800
EDNS_DO = 0x8000

HEADER = struct.Struct("!HHHHHH")
RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
QUESTION_FIXED = struct.Struct("!HH")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")
MAX_NAME_LENGTH = 255
MAX_LABEL_LENGTH = 63
MAX_UDP_SIZE = 65535
ROOT = b"\x00"


class DropReason(StrEnum):
    """Why bytes were not a DNS message (a metric label: keep it closed)."""

    TRUNCATED = "truncated"
    BAD_NAME = "bad_name"
    BAD_POINTER = "bad_pointer"
    BAD_RDATA = "bad_rdata"
    BAD_COUNTS = "bad_counts"
    BAD_OPT = "bad_opt"
    TRAILING = "trailing_bytes"


class WireError(ValueError):
    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# --- names ---------------------------------------------------------------------------------

def name_from_text(text: str) -> bytes:
    """Presentation form (``www.example.com``, trailing dot optional, ``\\.`` and ``\\DDD``
    escapes) to lowercased wire form. Raises ``ValueError`` for what cannot be a name."""
    text = text.strip()
    if text in ("", "."):
        return ROOT
    labels: list[bytes] = []
    current = bytearray()
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            digits = text[i + 1:i + 4]
            if len(digits) == 3 and digits.isdigit():
                value = int(digits)
                if value > 255:
                    raise ValueError(f"bad escape in {text!r}")
                current.append(value)
                i += 4
                continue
            if i + 1 >= n:
                raise ValueError(f"dangling backslash in {text!r}")
            current.extend(text[i + 1].encode())
            i += 2
            continue
        if char == ".":
            if not current:
                raise ValueError(f"empty label in {text!r}")
            labels.append(bytes(current))
            current = bytearray()
            i += 1
            continue
        try:
            current.extend(char.encode("ascii"))
        except UnicodeEncodeError:
            raise ValueError(f"{text!r} is not ASCII (write internationalised names as xn--)") from None
        i += 1
    if current:
        labels.append(bytes(current))
    return name_from_labels(labels).lower()


def name_from_labels(labels: list[bytes]) -> bytes:
    out = bytearray()
    for label in labels:
        if not label or len(label) > MAX_LABEL_LENGTH:
            raise ValueError(f"label of {len(label)} bytes")
        out.append(len(label))
        out += label
    out.append(0)
    if len(out) > MAX_NAME_LENGTH:
        raise ValueError(f"name of {len(out)} bytes")
    return bytes(out)


def name_labels(name: bytes) -> list[bytes]:
    labels = []
    i = 0
    while name[i]:
        length = name[i]
        labels.append(name[i + 1:i + 1 + length])
        i += length + 1
    return labels


_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*/")


def name_to_text(name: bytes) -> str:
    """Wire form to presentation form with a trailing dot; odd bytes escaped as ``\\DDD``."""
    if name == ROOT:
        return "."
    parts = []
    for label in name_labels(name):
        if all(b in _SAFE for b in label):
            parts.append(label.decode("ascii"))
        else:
            parts.append("".join(chr(b) if b in _SAFE else f"\\{b:03d}" for b in label))
    return ".".join(parts) + "."


def label_count(name: bytes) -> int:
    count = 0
    i = 0
    while name[i]:
        i += name[i] + 1
        count += 1
    return count


def parent_name(name: bytes) -> bytes:
    """The name one label up; the root's parent is the root."""
    return name[name[0] + 1:] if name[0] else ROOT


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """``name`` equals ``zone`` or lies below it (both lowercased wire names)."""
    if not name.endswith(zone):
        return False
    cut = len(name) - len(zone)
    i = 0
    while i < cut:  # the suffix must start on a label boundary, not inside a label
        i += name[i] + 1
    return i == cut


def ancestor_with_labels(name: bytes, count: int) -> bytes:
    """The ancestor of ``name`` (or ``name``) that has ``count`` labels."""
    extra = label_count(name) - count
    i = 0
    for _ in range(extra):
        i += name[i] + 1
    return name[i:]


def reverse_name(address: IPv4Address | IPv6Address) -> bytes:
    return name_from_text(address.reverse_pointer)


# --- records and messages -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RR:
    name: bytes  # lowercased wire form
    rtype: int
    rclass: int
    ttl: int
    rdata: bytes  # uncompressed wire form


@dataclass(frozen=True, slots=True)
class Question:
    name: bytes  # as received (case preserved)
    qtype: int
    qclass: int = CLASS_IN

    @property
    def key_name(self) -> bytes:
        return self.name.lower()


@dataclass(slots=True)
class EDNS:
    udp_size: int = 1232
    ext_rcode: int = 0  # the upper 8 bits of the 12-bit rcode
    version: int = 0
    flags: int = 0  # DO is 0x8000
    options: bytes = b""

    @property
    def do(self) -> bool:
        return bool(self.flags & EDNS_DO)


@dataclass(slots=True)
class Message:
    id: int
    flags: int
    question: Question | None = None
    answer: list[RR] = field(default_factory=list)
    authority: list[RR] = field(default_factory=list)
    additional: list[RR] = field(default_factory=list)
    edns: EDNS | None = None

    @property
    def rcode(self) -> int:
        return (self.flags & 0xF) | ((self.edns.ext_rcode << 4) if self.edns else 0)

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11


# How names sit inside rdata: "n" a name, a digit string a fixed number of bytes. Names of these
# types are decompressed on decode (RFC 3597 §4); COMPRESSIBLE ones are compressed on encode.
_RDATA_NAMES: dict[int, tuple[str | int, ...]] = {
    RRType.NS: ("n",), RRType.MD: ("n",), RRType.MF: ("n",), RRType.CNAME: ("n",),
    RRType.MB: ("n",), RRType.MG: ("n",), RRType.MR: ("n",), RRType.PTR: ("n",),
    RRType.DNAME: ("n",), RRType.SOA: ("n", "n", 20), RRType.MINFO: ("n", "n"),
    RRType.MX: (2, "n"), RRType.RP: ("n", "n"), RRType.AFSDB: (2, "n"), RRType.RT: (2, "n"),
    RRType.PX: (2, "n", "n"), RRType.SRV: (6, "n"), RRType.KX: (2, "n"),
}
COMPRESSIBLE = frozenset({RRType.NS, RRType.MD, RRType.MF, RRType.CNAME, RRType.SOA, RRType.MB,
                          RRType.MG, RRType.MR, RRType.PTR, RRType.MINFO, RRType.MX})
_FIXED_RDATA_SIZE: dict[int, int] = {RRType.A: 4, RRType.AAAA: 16}


def read_name(data: bytes, offset: int) -> tuple[bytes, int]:
    """The (case-preserved, uncompressed) name at ``offset`` and the offset after it there."""
    out = bytearray()
    end = -1
    limit = len(data)
    lowest = offset  # a pointer must go strictly backwards from the name that holds it
    while True:
        if offset >= limit:
            raise WireError(DropReason.TRUNCATED, "name runs past the end")
        length = data[offset]
        if length == 0:
            out.append(0)
            if end < 0:
                end = offset + 1
            break
        if length & 0xC0 == 0xC0:
            if offset + 1 >= limit:
                raise WireError(DropReason.TRUNCATED, "pointer runs past the end")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if target >= lowest:
                raise WireError(DropReason.BAD_POINTER, "pointer does not point backwards")
            if target < HEADER.size:  # the header holds no name (a question's pointer can only go there)
                raise WireError(DropReason.BAD_POINTER, "pointer into the header")
            if end < 0:
                end = offset + 2
            lowest = target
            offset = target
            continue
        if length > MAX_LABEL_LENGTH:
            raise WireError(DropReason.BAD_NAME, "label type not supported")
        if offset + 1 + length > limit:
            raise WireError(DropReason.TRUNCATED, "label runs past the end")
        out += data[offset:offset + 1 + length]
        if len(out) >= MAX_NAME_LENGTH:
            raise WireError(DropReason.BAD_NAME, "name longer than 255 bytes")
        offset += 1 + length
    return bytes(out), end


def _read_rdata(data: bytes, offset: int, rdlength: int, rtype: int) -> bytes:
    end = offset + rdlength
    layout = _RDATA_NAMES.get(rtype)
    if layout is None:
        size = _FIXED_RDATA_SIZE.get(rtype)
        if size is not None and rdlength != size:
            raise WireError(DropReason.BAD_RDATA, f"type {rtype} rdata of {rdlength} bytes")
        return data[offset:end]
    out = bytearray()
    for part in layout:
        if part == "n":
            name, offset = read_name(data, offset)
            out += name
        else:
            assert isinstance(part, int)
            out += data[offset:offset + part]
            offset += part
        if offset > end:
            raise WireError(DropReason.BAD_RDATA, f"type {rtype} rdata overruns its length")
    if offset != end:
        raise WireError(DropReason.BAD_RDATA, f"type {rtype} rdata has {end - offset} extra bytes")
    return bytes(out)


def _read_records(data: bytes, offset: int, count: int, out: list[RR]) -> int:
    limit = len(data)
    for _ in range(count):
        name, offset = read_name(data, offset)
        if offset + 10 > limit:
            raise WireError(DropReason.TRUNCATED, "record header runs past the end")
        rtype, rclass, ttl, rdlength = RR_FIXED.unpack_from(data, offset)
        offset += 10
        if offset + rdlength > limit:
            raise WireError(DropReason.TRUNCATED, "rdata runs past the end")
        rdata = _read_rdata(data, offset, rdlength, rtype)
        offset += rdlength
        # RFC 2181 §8: a TTL with the top bit set is treated as zero. Not the OPT's: its "TTL" holds
        # the extended rcode, version and flags (RFC 6891 §6.1.3).
        if ttl >= 0x80000000 and rtype != RRType.OPT:
            ttl = 0
        out.append(RR(name.lower(), rtype, rclass, ttl, rdata))
    return offset


def decode_message(data: bytes) -> Message:
    if len(data) < 12:
        raise WireError(DropReason.TRUNCATED, f"{len(data)} bytes is shorter than a header")
    msg_id, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if qdcount > 1:
        raise WireError(DropReason.BAD_COUNTS, f"{qdcount} questions")
    msg = Message(msg_id, flags)
    offset = 12
    if qdcount:
        qname, offset = read_name(data, offset)
        if offset + 4 > len(data):
            raise WireError(DropReason.TRUNCATED, "question runs past the end")
        qtype, qclass = QUESTION_FIXED.unpack_from(data, offset)
        offset += 4
        msg.question = Question(qname, qtype, qclass)
    offset = _read_records(data, offset, ancount, msg.answer)
    offset = _read_records(data, offset, nscount, msg.authority)
    if any(rr.rtype == RRType.OPT for rr in msg.answer) or any(rr.rtype == RRType.OPT for rr in msg.authority):
        raise WireError(DropReason.BAD_OPT, "an OPT outside the additional section (RFC 6891 §6.1.1)")
    additional: list[RR] = []
    offset = _read_records(data, offset, arcount, additional)
    for rr in additional:
        if rr.rtype == RRType.OPT:
            if msg.edns is not None or rr.name != ROOT:
                raise WireError(DropReason.BAD_OPT, "more than one OPT or OPT not at the root")
            msg.edns = EDNS(udp_size=max(rr.rclass, 512), ext_rcode=rr.ttl >> 24,
                            version=(rr.ttl >> 16) & 0xFF, flags=rr.ttl & 0xFFFF, options=rr.rdata)
        else:
            msg.additional.append(rr)
    if offset != len(data):
        raise WireError(DropReason.TRAILING, f"{len(data) - offset} bytes after the last record")
    return msg


# --- the client query fast path ------------------------------------------------------------

def quick_question(data: bytes) -> tuple[bytes, int, int, int] | None:
    """For the common client query, what the cache-hit path needs without a full decode:
    (cache key, offset after the question, the client's UDP payload size or 0 without EDNS, the
    EDNS flags). The key is the lowercased question name plus type and class as on the wire.
    ``None`` for anything unusual (not a plain QUERY with one question, compression in the
    question, an OPT that is not alone or not version 0, or whose options do not add up); the
    full decode handles those as it always did. EDNS options are skipped, as the slow path skips
    them: a client cookie, the padding DoT and DoH clients add (RFC 8467), a client subnet."""
    n = len(data)
    # QR=0, opcode QUERY, QDCOUNT=1, ANCOUNT=NSCOUNT=0, ARCOUNT 0 or 1.
    if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00" or data[10]:
        return None
    i = 12
    length = data[12]
    while length:
        if length > 63:
            return None
        i += length + 1
        if i >= n:
            return None
        length = data[i]
    qend = i + 5
    if data[11] == 0:
        if qend != n:
            return None
        return data[12:i].lower() + data[i:qend], qend, 0, 0
    # One OPT: root name, type 41, class = payload size, TTL = ext-rcode/version/flags, options.
    if data[11] != 1 or n < qend + 11 or data[qend:qend + 3] != b"\x00\x00\x29":
        return None
    if data[qend + 5:qend + 7] != b"\x00\x00":  # extended rcode and version 0
        return None
    at = qend + 11
    if n != at + ((data[qend + 9] << 8) | data[qend + 10]):
        return None
    while at < n:  # each option's code and length, and the lengths must fill RDATA exactly
        if at + 4 > n:
            return None
        at += 4 + ((data[at + 2] << 8) | data[at + 3])
    if at != n:
        return None
    size = (data[qend + 3] << 8) | data[qend + 4]
    return data[12:i].lower() + data[i:qend], qend, size if size > 512 else 512, (data[qend + 7] << 8) | data[qend + 8]


def key_of(question: Question) -> bytes:
    """The cache key ``quick_question`` computes, from a decoded question."""
    return question.name.lower() + QUESTION_FIXED.pack(question.qtype, question.qclass)


# --- encoding -----------------------------------------------------------------------------

def opt_record(udp_size: int, flags: int = 0, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """An OPT pseudo-record (RFC 6891 §6.1.2), version 0."""
    return b"\x00" + RR_FIXED.pack(RRType.OPT, udp_size, (ext_rcode << 24) | flags, len(options)) + options


class _Writer:
    __slots__ = ("buf", "names", "ttl_offsets")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.names: dict[bytes, int] = {}
        self.ttl_offsets: list[int] = []

    def name(self, name: bytes, compress: bool = True) -> None:
        buf = self.buf
        names = self.names
        i = 0
        while name[i]:
            suffix = name[i:].lower()
            if compress:
                pointer = names.get(suffix)
                if pointer is not None:
                    buf += U16.pack(0xC000 | pointer)
                    return
            if len(buf) < 0x4000 and suffix not in names:
                names[suffix] = len(buf)
            length = name[i]
            buf += name[i:i + length + 1]
            i += length + 1
        buf.append(0)

    def record(self, rr: RR) -> None:
        buf = self.buf
        self.name(rr.name)
        buf += U16.pack(rr.rtype) + U16.pack(rr.rclass)
        self.ttl_offsets.append(len(buf))
        buf += U32.pack(rr.ttl)
        layout = _RDATA_NAMES.get(rr.rtype)
        if layout is None or rr.rtype not in COMPRESSIBLE:
            buf += U16.pack(len(rr.rdata)) + rr.rdata
            return
        length_at = len(buf)
        buf += b"\x00\x00"
        for is_name, piece in _rdata_pieces(layout, rr.rdata):
            if is_name:
                self.name(piece)
            else:
                buf += piece
        U16.pack_into(buf, length_at, len(buf) - length_at - 2)


def _rdata_pieces(layout: tuple[str | int, ...], rdata: bytes) -> Iterator[tuple[bool, bytes]]:
    """The rdata of a type with names (uncompressed, as ours are) cut along its layout:
    (True, a name) or (False, fixed bytes); bytes past the layout are not included."""
    offset = 0
    for part in layout:
        if part == "n":
            end = offset
            while rdata[end]:
                end += rdata[end] + 1
            yield True, rdata[offset:end + 1]
            offset = end + 1
        else:
            assert isinstance(part, int)
            yield False, rdata[offset:offset + part]
            offset += part


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    truncated: bool
    ttl_offsets: tuple[int, ...]  # where each written record's TTL sits, in section order
    counts: tuple[int, int, int]  # answer, authority, additional records written (no OPT)


def encode_message(msg_id: int, flags: int, question: Question | None, answer: list[RR],
                   authority: list[RR], additional: list[RR], *, opt: bytes | None = None,
                   max_size: int = MAX_UDP_SIZE) -> Encoded:
    """Encode a message no larger than ``max_size`` (see the module comment for truncation).
    ``opt`` is a prebuilt OPT record (``opt_record``) placed last."""
    writer = _Writer()
    buf = writer.buf
    buf += bytes(12)
    if question is not None:
        writer.name(question.name)
        buf += QUESTION_FIXED.pack(question.qtype, question.qclass)
    reserve = len(opt) if opt else 0
    truncated = False
    counts = [0, 0, 0]
    for section, records in enumerate((answer, authority, additional)):
        for rr in records:
            mark = len(buf)
            names_before = len(writer.names)
            writer.record(rr)
            if len(buf) + reserve > max_size:
                del buf[mark:]
                writer.ttl_offsets.pop()
                if len(writer.names) != names_before:  # forget offsets that now point past the end
                    writer.names = {k: v for k, v in writer.names.items() if v < mark}
                if section < 2:
                    truncated = True
                break
            counts[section] += 1
        else:
            continue
        break
    if truncated:  # RFC 2181 §9: an incomplete answer is no answer; the client retries over TCP
        del buf[12 + (len(_question_bytes(question)) if question else 0):]
        counts = [0, 0, 0]
        writer.ttl_offsets.clear()
        flags |= FLAG_TC
    if opt:
        buf += opt
    HEADER.pack_into(buf, 0, msg_id, flags, 1 if question else 0, counts[0], counts[1],
                     counts[2] + (1 if opt else 0))
    return Encoded(bytes(buf), truncated, tuple(writer.ttl_offsets), (counts[0], counts[1], counts[2]))


def _question_bytes(question: Question) -> bytes:
    return question.name + QUESTION_FIXED.pack(question.qtype, question.qclass)


def encode_query(msg_id: int, qname: bytes, qtype: int, qclass: int = CLASS_IN, *, rd: bool = False,
                 cd: bool = False, udp_size: int | None = 1232, do: bool = False) -> bytes:
    """An upstream query: one question, and an OPT when ``udp_size`` is given."""
    flags = (FLAG_RD if rd else 0) | (FLAG_CD if cd else 0)
    has_opt = udp_size is not None
    head = HEADER.pack(msg_id, flags, 1, 0, 0, 1 if has_opt else 0)
    tail = opt_record(udp_size, EDNS_DO if do else 0) if udp_size is not None else b""
    return head + qname + QUESTION_FIXED.pack(qtype, qclass) + tail


# Question types a resolver does not answer: zone transfers are for secondaries; OPT, TSIG and
# TKEY are records of a message, never of a zone (RFC 6891 §6.1.1, RFC 8945 §4.2, RFC 2930 §2),
# so asking for them upstream only spends a server's time.
REFUSED_QTYPES = frozenset({RRType.AXFR, RRType.IXFR, RRType.OPT, RRType.TSIG, RRType.TKEY})
SERVER_UDP_SIZE = 1232  # what ispd offers in its OPT records (the DNS flag day 2020 figure)
_OPT_AFTER_QUESTION = b"\x00\x00\x29"  # the root name, then type OPT


def error_reply(query: bytes, rcode: int, *, ra: bool = True, edns: bool = False) -> bytes | None:
    """A reply carrying only ``rcode``, built from whatever of the query is readable: the header
    and, when it parses, the question. ``None`` when not even a header is there, or the bytes are
    a response (never answer a response: that is how reflection loops start). ``edns``: when the
    question is followed by an OPT (and nothing else), the reply has one too (RFC 6891 §7)."""
    if len(query) < 12 or query[2] & 0x80:
        return None
    msg_id, flags = HEADER.unpack_from(query)[:2]
    out_flags = FLAG_QR | (flags & (OPCODE_MASK | FLAG_RD | FLAG_CD)) | (FLAG_RA if ra else 0) | (rcode & 0xF)
    question = opt = b""
    if query[5] == 1 and query[4] == 0:
        try:
            name, offset = read_name(query, 12)
            if offset + 4 <= len(query):
                question = name + query[offset:offset + 4]
                if edns and query[10:12] == b"\x00\x01" and query[offset + 4:offset + 7] == _OPT_AFTER_QUESTION:
                    # RFC 3225 §3: the DO bit is copied into the reply (the OPT's flags: its TTL's low half)
                    do = EDNS_DO if len(query) >= offset + 15 and query[offset + 11] & 0x80 else 0
                    opt = opt_record(SERVER_UDP_SIZE, do)
        except WireError:
            question = b""
    return HEADER.pack(msg_id, out_flags, 1 if question else 0, 0, 0, 1 if opt else 0) + question + opt


# --- EDNS padding for encrypted transports -----------------------------------------------

OPTION_PADDING = 12  # RFC 7830
OPTION_EDE = 15  # RFC 8914


def ede_option(code: int, text: str = "") -> bytes:
    """An Extended DNS Error option for an OPT record's rdata (RFC 8914 §2)."""
    extra = text.encode()
    return U16.pack(OPTION_EDE) + U16.pack(2 + len(extra)) + U16.pack(code) + extra

RESPONSE_PADDING_BLOCK = 468  # RFC 8467 §4.1: the recommended block size for responses


def _skip_name(data: bytes, offset: int) -> int:
    while True:
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += length + 1


def pad_reply(reply: bytes, block: int = RESPONSE_PADDING_BLOCK) -> bytes:
    """``reply`` with an RFC 7830 Padding option in its OPT record, making its length a multiple
    of ``block`` (RFC 8467 block-length padding). Unchanged when it has no OPT (the query had no
    EDNS, so padding cannot be signalled), already carries padding, or would pass 65,535 bytes.
    Only for encrypted transports: padding in clear text helps nobody (RFC 7830 §6)."""
    try:
        qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHH", reply, 4)
        offset = 12
        for _ in range(qdcount):
            offset = _skip_name(reply, offset) + 4
        for index in range(ancount + nscount + arcount):
            offset = _skip_name(reply, offset)
            rtype, _, _, rdlength = RR_FIXED.unpack_from(reply, offset)
            rdata_at = offset + 10
            end = rdata_at + rdlength
            if rtype == RRType.OPT and index >= ancount + nscount:
                if _has_option(reply[rdata_at:end], OPTION_PADDING):
                    return reply
                pad = -(len(reply) + 4) % block
                if len(reply) + 4 + pad > MAX_UDP_SIZE or rdlength + 4 + pad > 0xFFFF:
                    return reply
                return b"".join((reply[:offset + 8], U16.pack(rdlength + 4 + pad), reply[rdata_at:end],
                                 U16.pack(OPTION_PADDING), U16.pack(pad), bytes(pad), reply[end:]))
            offset = end
    except (IndexError, struct.error):
        pass
    return reply


def _has_option(options: bytes, code: int) -> bool:
    offset = 0
    while offset + 4 <= len(options):
        option, length = struct.unpack_from("!HH", options, offset)
        if option == code:
            return True
        offset += 4 + length
    return False


# --- rdata helpers the resolver needs ------------------------------------------------------

def rdata_name(rdata: bytes, offset: int = 0) -> bytes:
    """The (lowercased) name at ``offset`` of an uncompressed rdata."""
    end = offset
    while rdata[end]:
        end += rdata[end] + 1
    return rdata[offset:end + 1].lower()


def soa_minimum(rdata: bytes) -> int:
    """The SOA's MINIMUM field (the negative-caching TTL, RFC 2308 §5)."""
    return int(U32.unpack_from(rdata, len(rdata) - 4)[0])


def mx_exchange(rdata: bytes) -> bytes:
    return rdata_name(rdata, 2)


def a_rdata(address: str) -> bytes:
    return IPv4Address(address).packed


def aaaa_rdata(address: str) -> bytes:
    return IPv6Address(address).packed


def canonical_rdata(rtype: int, rdata: bytes) -> bytes:
    """``rdata`` in DNSSEC canonical form (RFC 4034 §6.2 as amended by RFC 6840 §5.1): the
    names inside the rdata of the RFC 1035-era types lowercased. Our rdata already holds those
    names uncompressed."""
    layout = _RDATA_NAMES.get(rtype)
    if layout is None:
        return rdata
    out = bytearray()
    for is_name, piece in _rdata_pieces(layout, rdata):
        out += piece.lower() if is_name else piece
    out += rdata[len(out):]
    return bytes(out)
