"""DNSSEC's pure parts: records, canonical form, signatures, digests and proofs of nonexistence.

Theory of operation. Nothing here asks the network or reads the clock: the validator
(``ispd.dns.validator``) fetches DNSKEY and DS RRsets, decides which keys it trusts, and calls
these functions with the records and ``now``.

- ``parse_dnskey``, ``parse_ds``, ``parse_rrsig``: rdata to frozen records (``DNSSECError`` when
  malformed). ``key_tag`` is RFC 4034 Appendix B, ``ds_matches`` RFC 4034 §5.1.4.
- ``verify_rrset``: RFC 4035 §5.3. The signed data is the RRSIG rdata without its signature
  followed by the RRset in canonical form (RFC 4034 §6: owner lowercased — or the wildcard
  ``*.`` plus the RRSIG's Labels rightmost labels —, the original TTL, rdata with names
  lowercased, sorted, duplicates removed). Keys whose tag collides are each tried (RFC 4035
  §5.3.1). The validity window is compared in serial arithmetic (RFC 4034 §3.1.5) with
  ``CLOCK_SKEW`` either side. At most ``max_checks`` signature checks are made per RRset
  (KeyTrap, CVE-2023-50387: many keys sharing a tag times many RRSIGs, each failing, would
  otherwise cost their product in public-key operations on the event loop); past it the RRset
  is bogus, as Unbound's limit makes it. The result says which RRSIG verified (its expiration and original
  TTL cap the RRset's TTL, RFC 4035 §5.3.3) or the most telling failure, as an Extended DNS Error
  code (RFC 8914).
- Algorithms through ``cryptography``: 8 RSASHA256, 10 RSASHA512, 13 ECDSAP256SHA256, 14
  ECDSAP384SHA384, 15 Ed25519, 16 Ed448. The SHA-1 algorithms (5, 7) are deliberately not
  supported any more (RFC 9905 deprecates them; Debian's and RHEL's OpenSSL policies refuse
  them): a zone signed only with them is treated as insecure (RFC 4035 §5.2), never as bogus.
  DS digests 1 (SHA-1), 2 (SHA-256) and 4 (SHA-384); where a DS set has SHA-256 or better, its
  SHA-1 records are ignored (RFC 4509 §3).
- Denial of existence from records already verified: NSEC (RFC 4035 §5.4, RFC 4592 for
  wildcards, empty non-terminals) and NSEC3 (RFC 5155 §8: closest encloser proof, opt-out). An
  NSEC3 chain with more than ``MAX_NSEC3_ITERATIONS`` iterations is treated as insecure
  (RFC 9276 §3.2). A proof may do as much hashing as its ``Nsec3Budget`` allows (CVE-2023-50868:
  a question of 120 labels under a chain of 150 iterations and a 255-byte salt would otherwise
  cost 120 hashes of 151 rounds, 10 ms of the event loop, per query); past it ``Nsec3Exhausted``
  is raised and the proof is bogus. The budget is counted in hashes at the most iterations a
  chain may have (150): Unbound's ``MAX_NSEC3_CALCULATIONS`` of 8 such hashes is 1,208 rounds, so
  8 names under a chain of 150 iterations, 110 under one of 10, and every ancestor of any name
  (at most 127) under the 0 extra iterations RFC 9276 §3.1 asks for: Unbound, which suspends a
  proof past its 8 and resumes it later, lets deep names (ip6.arpa) through too.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ispd.dns.wire import (
    CLASS_IN,
    RR,
    RRType,
    ancestor_with_labels,
    canonical_rdata,
    is_subdomain,
    label_count,
    name_from_text,
    name_labels,
    parent_name,
    read_name,
)

CLOCK_SKEW = 300  # seconds either side of an RRSIG's validity window
MAX_RSA_BITS = 4096  # RFC 3110 §2 and RFC 5702 §2.1: DNSSEC RSA keys are 512 to 4096 bits
MAX_SIGNATURE_CHECKS = 8  # per RRset, as Unbound (KeyTrap, CVE-2023-50387)
MAX_NSEC3_ITERATIONS = 150  # RFC 9276 §3.2: above this, answers are treated as insecure
MAX_NSEC3_CALCULATIONS = 8  # per proof, in hashes of 150 iterations, as Unbound (CVE-2023-50868)
DNSKEY_ZONE = 0x0100
DNSKEY_REVOKE = 0x0080
DNSKEY_SEP = 0x0001
NSEC3_OPT_OUT = 0x01


class Algorithm(IntEnum):
    RSASHA256 = 8
    RSASHA512 = 10
    ECDSAP256SHA256 = 13
    ECDSAP384SHA384 = 14
    ED25519 = 15
    ED448 = 16


SUPPORTED_ALGORITHMS = frozenset(int(a) for a in Algorithm)
DIGESTS = {1: hashlib.sha1, 2: hashlib.sha256, 4: hashlib.sha384}


class EDE(IntEnum):
    """Extended DNS Error codes (RFC 8914 §4) a validator gives."""

    OTHER = 0
    UNSUPPORTED_DNSKEY_ALGORITHM = 1
    UNSUPPORTED_DS_DIGEST = 2
    DNSSEC_INDETERMINATE = 5
    DNSSEC_BOGUS = 6
    SIGNATURE_EXPIRED = 7
    SIGNATURE_NOT_YET_VALID = 8
    DNSKEY_MISSING = 9
    RRSIGS_MISSING = 10
    NO_ZONE_KEY_BIT = 11
    NSEC_MISSING = 12
    UNSUPPORTED_NSEC3_ITERATIONS = 27


class DNSSECError(ValueError):
    """A DNSSEC record that does not parse."""


class Nsec3Exhausted(Exception):
    """A proof needed more NSEC3 hash calculations than its ``Nsec3Budget`` allows."""


class Nsec3Budget:
    """The NSEC3 hashing one proof may still do (CVE-2023-50868): ``calculations`` hashes of the
    most iterations a chain may have, in rounds of the hash function."""

    __slots__ = ("left",)

    def __init__(self, calculations: int) -> None:
        self.left = calculations * (MAX_NSEC3_ITERATIONS + 1)

    def spend(self, iterations: int) -> None:
        """One hash of ``iterations`` extra iterations; ``Nsec3Exhausted`` if over the budget."""
        if iterations + 1 > self.left:
            raise Nsec3Exhausted
        self.left -= iterations + 1


@dataclass(frozen=True, slots=True)
class DNSKEY:
    flags: int
    protocol: int
    algorithm: int
    public_key: bytes
    key_tag: int
    rdata: bytes

    @property
    def usable(self) -> bool:
        """A zone key, not revoked, protocol 3 (RFC 4034 §2.1.1, RFC 5011 §2.1)."""
        return bool(self.flags & DNSKEY_ZONE) and not self.flags & DNSKEY_REVOKE and self.protocol == 3


@dataclass(frozen=True, slots=True)
class DS:
    key_tag: int
    algorithm: int
    digest_type: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class RRSIG:
    type_covered: int
    algorithm: int
    labels: int
    original_ttl: int
    expiration: int
    inception: int
    key_tag: int
    signer: bytes  # lowercased
    signature: bytes
    signed_head: bytes  # the rdata up to the signature, signer lowercased (RFC 4034 §3.1.8.1)


@dataclass(frozen=True, slots=True)
class NSEC3:
    owner_hash: bytes
    zone: bytes
    hash_algorithm: int
    flags: int
    iterations: int
    salt: bytes
    next_hash: bytes
    bitmap: bytes

    @property
    def opt_out(self) -> bool:
        return bool(self.flags & NSEC3_OPT_OUT)


def key_tag(rdata: bytes) -> int:
    """RFC 4034 Appendix B."""
    total = 0
    for i, byte in enumerate(rdata):
        total += byte if i & 1 else byte << 8
    total += (total >> 16) & 0xFFFF
    return total & 0xFFFF


def parse_dnskey(rdata: bytes) -> DNSKEY:
    if len(rdata) < 5:
        raise DNSSECError("DNSKEY shorter than 5 bytes")
    flags, protocol, algorithm = struct.unpack_from("!HBB", rdata)
    return DNSKEY(flags, protocol, algorithm, rdata[4:], key_tag(rdata), rdata)


def parse_ds(rdata: bytes) -> DS:
    if len(rdata) < 5:
        raise DNSSECError("DS shorter than 5 bytes")
    tag, algorithm, digest_type = struct.unpack_from("!HBB", rdata)
    return DS(tag, algorithm, digest_type, rdata[4:])


def parse_rrsig(rdata: bytes) -> RRSIG:
    if len(rdata) < 19:
        raise DNSSECError("RRSIG shorter than 19 bytes")
    covered, algorithm, labels, original_ttl, expiration, inception, tag = struct.unpack_from("!HBBIIIH", rdata)
    try:
        signer, end = read_name(rdata, 18)
    except ValueError as exc:
        raise DNSSECError(f"RRSIG signer name: {exc}") from None
    signer = signer.lower()
    return RRSIG(covered, algorithm, labels, original_ttl, expiration, inception, tag, signer,
                 rdata[end:], rdata[:18] + signer)


def parse_nsec(rdata: bytes) -> tuple[bytes, bytes]:
    """(next owner name lowercased, type bitmap)."""
    try:
        next_name, end = read_name(rdata, 0)
    except ValueError as exc:
        raise DNSSECError(f"NSEC next name: {exc}") from None
    return next_name.lower(), rdata[end:]


def parse_nsec3(owner: bytes, rdata: bytes) -> NSEC3:
    try:
        algorithm, flags, iterations, salt_length = struct.unpack_from("!BBHB", rdata)
        salt = rdata[5:5 + salt_length]
        hash_length = rdata[5 + salt_length]
        start = 6 + salt_length
        next_hash = rdata[start:start + hash_length]
        owner_hash = base64.b32hexdecode(owner[1:1 + owner[0]].upper())
    except (struct.error, IndexError, ValueError) as exc:
        raise DNSSECError(f"NSEC3: {exc}") from None
    if len(next_hash) != hash_length or len(salt) != salt_length:
        raise DNSSECError("NSEC3 runs past its rdata")
    return NSEC3(owner_hash, parent_name(owner), algorithm, flags, iterations, salt, next_hash,
                 rdata[start + hash_length:])


def parse_dnskeys(rdatas: Iterable[bytes]) -> list[DNSKEY]:
    """The keys of a DNSKEY set; a malformed one is left out (it can verify nothing)."""
    keys = []
    for rdata in rdatas:
        try:
            keys.append(parse_dnskey(rdata))
        except DNSSECError:
            continue
    return keys


def sigs_over(records: Iterable[RR], name: bytes, rtype: int) -> list[RRSIG]:
    """The RRSIGs among ``records`` over the RRset (``name``, ``rtype``); malformed ones left out."""
    found = []
    for rr in records:
        if rr.rtype == RRType.RRSIG and rr.name == name and len(rr.rdata) >= 2 \
                and (rr.rdata[0] << 8 | rr.rdata[1]) == rtype:
            try:
                found.append(parse_rrsig(rr.rdata))
            except DNSSECError:
                continue
    return found


def bitmap_has(bitmap: bytes, rtype: int) -> bool:
    """Whether an NSEC/NSEC3 type bitmap (RFC 4034 §4.1.2) lists ``rtype``."""
    window, bit = rtype >> 8, rtype & 0xFF
    i = 0
    while i + 2 <= len(bitmap):
        number, length = bitmap[i], bitmap[i + 1]
        if number == window:
            index = i + 2 + (bit >> 3)
            return index < i + 2 + length and index < len(bitmap) and bool(bitmap[index] & (0x80 >> (bit & 7)))
        i += 2 + length
    return False


# --- digests and signatures ----------------------------------------------------------------

def parent_side(bitmap: bytes) -> bool:
    """An NSEC/NSEC3 at a delegation, on the parent's side of the cut: NS without SOA."""
    return bitmap_has(bitmap, RRType.NS) and not bitmap_has(bitmap, RRType.SOA)


def cut_below(bitmap: bytes) -> bool:
    """Names below this owner are another zone's (a delegation) or redirected (a DNAME): its
    NSEC/NSEC3 says nothing of them (RFC 6840 §4.1)."""
    return bitmap_has(bitmap, RRType.DNAME) or parent_side(bitmap)


def ds_matches(owner: bytes, ds: DS, key: DNSKEY) -> bool:
    """Whether ``ds`` is the digest of ``key`` at ``owner`` (RFC 4034 §5.1.4)."""
    digest = DIGESTS.get(ds.digest_type)
    if digest is None or ds.key_tag != key.key_tag or ds.algorithm != key.algorithm:
        return False
    return digest(owner.lower() + key.rdata).digest() == ds.digest


def usable_ds(records: Iterable[DS]) -> list[DS]:
    """The DS records a validator can use: supported algorithm and digest; SHA-1 only where
    nothing stronger is offered (RFC 4509 §3)."""
    known = [ds for ds in records if ds.algorithm in SUPPORTED_ALGORITHMS and ds.digest_type in DIGESTS]
    strong = [ds for ds in known if ds.digest_type != 1]
    return strong or known


def _serial_le(a: int, b: int) -> bool:
    """a <= b in RFC 1982 serial arithmetic on 32 bits."""
    return (b - a) % (1 << 32) < (1 << 31)


def signed_labels(owner: bytes) -> int:
    """The labels of ``owner`` an RRSIG's Labels field counts: a leading ``*`` is not one (RFC
    4034 §3.1.3)."""
    count = label_count(owner)
    return count - 1 if owner[:2] == b"\x01*" else count


def is_expansion(owner: bytes, sig: RRSIG) -> bool:
    """Whether ``sig`` shows its RRset synthesised from a wildcard (RFC 4035 §5.3.2), rather
    than held at ``owner`` — which may itself be a wildcard's own name, asked as such."""
    return sig.labels < signed_labels(owner)


def signed_data(sig: RRSIG, owner: bytes, rtype: int, rdatas: Iterable[bytes]) -> bytes:
    """RFC 4034 §3.1.8.1 and §6.2."""
    if is_expansion(owner, sig):
        owner = b"\x01*" + ancestor_with_labels(owner, sig.labels)
    prefix = owner.lower() + struct.pack("!HHI", rtype, CLASS_IN, sig.original_ttl)
    canonical = sorted({canonical_rdata(rtype, rdata) for rdata in rdatas})
    return sig.signed_head + b"".join(prefix + struct.pack("!H", len(r)) + r for r in canonical)


@functools.lru_cache(maxsize=4096)
def _public_key(algorithm: int, key: bytes) -> object:
    if algorithm in (Algorithm.RSASHA256, Algorithm.RSASHA512):
        if key[0]:
            exponent_length, start = key[0], 1
        else:
            exponent_length, start = int.from_bytes(key[1:3], "big"), 3
        exponent = int.from_bytes(key[start:start + exponent_length], "big")
        modulus = int.from_bytes(key[start + exponent_length:], "big")
        if modulus.bit_length() > MAX_RSA_BITS:  # a huge key would make each check a denial of service
            raise DNSSECError(f"RSA key of {modulus.bit_length()} bits")
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    if algorithm == Algorithm.ECDSAP256SHA256:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + key)
    if algorithm == Algorithm.ECDSAP384SHA384:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), b"\x04" + key)
    if algorithm == Algorithm.ED25519:
        return ed25519.Ed25519PublicKey.from_public_bytes(key)
    if algorithm == Algorithm.ED448:
        return ed448.Ed448PublicKey.from_public_bytes(key)
    raise DNSSECError(f"algorithm {algorithm} not supported")


def verify_signature(key: DNSKEY, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` over ``data`` verifies with ``key``; False for a key or signature
    that is malformed or of an unsupported algorithm."""
    try:
        public = _public_key(key.algorithm, key.public_key)
        algorithm = key.algorithm
        if isinstance(public, rsa.RSAPublicKey):
            digest = hashes.SHA256() if algorithm == Algorithm.RSASHA256 else hashes.SHA512()
            public.verify(signature, data, padding.PKCS1v15(), digest)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            half = len(signature) // 2
            if half not in (32, 48) or len(signature) != 2 * half:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            curve_hash = hashes.SHA256() if algorithm == Algorithm.ECDSAP256SHA256 else hashes.SHA384()
            public.verify(der, data, ec.ECDSA(curve_hash))
        elif isinstance(public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public.verify(signature, data)
        else:
            return False
    except (InvalidSignature, DNSSECError, ValueError, IndexError, TypeError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Verified:
    """The outcome of ``verify_rrset``: ``ok`` with the RRSIG that verified, or the failure."""

    ok: bool
    failure: EDE = EDE.OTHER
    sig: RRSIG | None = None
    exhausted: bool = False  # given up after ``max_checks`` signature checks

    def ttl_cap(self, now: int) -> int:
        """RFC 4035 §5.3.3: no longer than the original TTL or the signature's life (none left
        for one past its expiry, accepted within the clock skew)."""
        if self.sig is None:
            return 0
        return min(self.sig.original_ttl, seconds_left(self.sig.expiration, now))


def seconds_left(expiration: int, now: int) -> int:
    """Until a signature's expiration (RFC 1982 serial time): 0 once it has passed."""
    left = (expiration - now) % (1 << 32)
    return 0 if left >= 1 << 31 else left


_FAILURE_RANK = {EDE.OTHER: 0, EDE.RRSIGS_MISSING: 1, EDE.DNSKEY_MISSING: 2, EDE.SIGNATURE_NOT_YET_VALID: 3,
                 EDE.SIGNATURE_EXPIRED: 4, EDE.DNSSEC_BOGUS: 5}


def verify_rrset(owner: bytes, rtype: int, rdatas: Sequence[bytes], sigs: Iterable[RRSIG],
                 keys: Sequence[DNSKEY], signer: bytes, now: int, max_checks: int = MAX_SIGNATURE_CHECKS) -> Verified:
    """RFC 4035 §5.3: one RRSIG of ``signer`` over the RRset that verifies with one of ``keys``,
    within ``max_checks`` signature checks."""
    failure = EDE.RRSIGS_MISSING
    checks = 0
    owner_labels = signed_labels(owner)
    for sig in sigs:
        if sig.type_covered != rtype or sig.signer != signer or sig.labels > owner_labels:
            continue
        if not is_subdomain(owner, signer):
            continue
        if not _serial_le(sig.inception, (now + CLOCK_SKEW) % (1 << 32)):
            failure = max(failure, EDE.SIGNATURE_NOT_YET_VALID, key=_FAILURE_RANK.__getitem__)
            continue
        if not _serial_le((now - CLOCK_SKEW) % (1 << 32), sig.expiration):
            failure = max(failure, EDE.SIGNATURE_EXPIRED, key=_FAILURE_RANK.__getitem__)
            continue
        candidates = [k for k in keys if k.key_tag == sig.key_tag and k.algorithm == sig.algorithm and k.usable]
        if not candidates:
            failure = max(failure, EDE.DNSKEY_MISSING, key=_FAILURE_RANK.__getitem__)
            continue
        data = signed_data(sig, owner, rtype, rdatas)
        for key in candidates:  # RFC 4035 §5.3.1: key tags collide; try each
            if checks >= max_checks:
                return Verified(False, EDE.DNSSEC_BOGUS, exhausted=True)
            checks += 1
            if verify_signature(key, sig.signature, data):
                return Verified(True, sig=sig)
        failure = max(failure, EDE.DNSSEC_BOGUS, key=_FAILURE_RANK.__getitem__)
    return Verified(False, failure)


# --- denial of existence ------------------------------------------------------------------

_Ordered = TypeVar("_Ordered", tuple[bytes, ...], bytes)


def canonical_key(name: bytes) -> tuple[bytes, ...]:
    """A sort key in RFC 4034 §6.1 canonical order."""
    return tuple(reversed(name_labels(name.lower())))


def covers(owner_key: _Ordered, next_key: _Ordered, key: _Ordered) -> bool:
    """``key`` lies strictly between the owner and the next name, the last link wrapping."""
    if owner_key < next_key:
        return owner_key < key < next_key
    return key > owner_key or key < next_key  # the last NSEC of the chain points back at the apex


def common_ancestor(a: bytes, b: bytes) -> bytes:
    la, lb = name_labels(a.lower()), name_labels(b.lower())
    shared = 0
    while shared < min(len(la), len(lb)) and la[-1 - shared] == lb[-1 - shared]:
        shared += 1
    return ancestor_with_labels(a.lower(), shared)


class Denial(IntEnum):
    BOGUS = 0  # no proof
    INSECURE = 1  # opt-out, or more NSEC3 iterations than allowed: nothing proved either way
    SECURE = 2


@dataclass(frozen=True, slots=True)
class _Nsec:
    owner: bytes
    next_name: bytes
    bitmap: bytes

    def covers(self, name: bytes) -> bool:
        return covers(canonical_key(self.owner), canonical_key(self.next_name), canonical_key(name))

    def cut_above(self, name: bytes) -> bool:
        """This NSEC is at a zone cut (NS without SOA: the parent's side) or a DNAME above
        ``name``: it says nothing about names below it (RFC 6840 §4.1), which are another
        zone's or redirected, however it sorts."""
        return self.owner != name and is_subdomain(name, self.owner) and cut_below(self.bitmap)

    def denies(self, name: bytes) -> bool:
        return self.covers(name) and not self.cut_above(name)

    def closest_encloser(self, name: bytes) -> bytes:
        """The closest encloser of ``name`` that this (covering) NSEC proves."""
        return max(common_ancestor(name, self.owner), common_ancestor(name, self.next_name), key=label_count)


def _nsecs(records: Iterable[RR]) -> list[_Nsec]:
    found = []
    for rr in records:
        if rr.rtype == RRType.NSEC:
            try:
                next_name, bitmap = parse_nsec(rr.rdata)
            except DNSSECError:
                continue  # a malformed record proves nothing
            found.append(_Nsec(rr.name, next_name, bitmap))
    return found


def _nodata_at(bitmap: bytes, qname: bytes, qtype: int) -> Denial:
    """A NODATA from the NSEC or NSEC3 that matches ``qname``, by its type bitmap."""
    if bitmap_has(bitmap, qtype) or bitmap_has(bitmap, RRType.CNAME):
        return Denial.BOGUS
    if qtype != RRType.DS and parent_side(bitmap):
        return Denial.BOGUS  # the parent's record at a delegation says nothing of the child (RFC 6840 §4.1)
    if qtype == RRType.DS and bitmap_has(bitmap, RRType.SOA) and qname != b"\x00":
        return Denial.BOGUS  # the child's apex record cannot deny the parent's DS
    return Denial.SECURE


def nsec_denial(qname: bytes, qtype: int, nxdomain: bool, records: Iterable[RR]) -> Denial:
    """NSEC proof (RFC 4035 §5.4) that ``qname`` does not exist (``nxdomain``) or has no
    ``qtype`` — also through an empty non-terminal or a wildcard (RFC 4592 §4)."""
    nsecs = _nsecs(records)
    for nsec in nsecs:
        if nsec.owner == qname:
            return Denial.BOGUS if nxdomain else _nodata_at(nsec.bitmap, qname, qtype)
        if nsec.denies(qname) and is_subdomain(nsec.next_name, qname):
            # An empty non-terminal (RFC 4035 §3.1.3.2): the name exists, so no NXDOMAIN (which
            # RFC 8020 would make deny every name below it), only a NODATA.
            return Denial.BOGUS if nxdomain else Denial.SECURE
    covering = next((n for n in nsecs if n.denies(qname)), None)
    if covering is None:
        return Denial.BOGUS
    wildcard = b"\x01*" + covering.closest_encloser(qname)
    for nsec in nsecs:
        if nxdomain and nsec.denies(wildcard):
            return Denial.SECURE
        if not nxdomain and nsec.owner == wildcard:
            has_type = bitmap_has(nsec.bitmap, qtype) or bitmap_has(nsec.bitmap, RRType.CNAME)
            return Denial.BOGUS if has_type else Denial.SECURE
    return Denial.BOGUS


def nsec_wildcard_expansion(qname: bytes, sig_labels: int, records: Iterable[RR]) -> bool:
    """RFC 4035 §5.3.4 with RFC 4592: a wildcard answer needs an NSEC saying that ``qname``
    does not exist and that the wildcard's parent (``sig_labels`` labels of it, from the RRSIG)
    is its closest encloser: no name between the two, where the wildcard would not apply."""
    source_parent = ancestor_with_labels(qname, sig_labels)
    return any(nsec.denies(qname) and nsec.closest_encloser(qname) == source_parent for nsec in _nsecs(records))


def nsec3_hash(name: bytes, salt: bytes, iterations: int) -> bytes:
    """RFC 5155 §5, SHA-1."""
    digest = hashlib.sha1(name.lower() + salt).digest()
    for _ in range(iterations):
        digest = hashlib.sha1(digest + salt).digest()
    return digest


class _Nsec3Set:
    def __init__(self, records: Iterable[RR], budget: Nsec3Budget | None = None) -> None:
        self.items = []
        for rr in records:
            if rr.rtype == RRType.NSEC3:
                try:
                    self.items.append(parse_nsec3(rr.name, rr.rdata))
                except DNSSECError:
                    continue  # a malformed record proves nothing
        self.items = [n for n in self.items if n.hash_algorithm == 1]
        first = self.items[0] if self.items else None
        self.params = (first.salt, first.iterations) if first else (b"", 0)
        self.zone = first.zone if first else b"\x00"
        self.items = [n for n in self.items if (n.salt, n.iterations) == self.params and n.zone == self.zone]
        self._hashes: dict[bytes, bytes] = {}
        self.budget = budget

    def hash(self, name: bytes) -> bytes:
        found = self._hashes.get(name)
        if found is None:
            if self.budget is not None:
                self.budget.spend(self.params[1])
            found = self._hashes[name] = nsec3_hash(name, *self.params)
        return found

    def matching(self, name: bytes) -> NSEC3 | None:
        digest = self.hash(name)
        return next((n for n in self.items if n.owner_hash == digest), None)

    def covering(self, name: bytes) -> NSEC3 | None:
        digest = self.hash(name)
        return next((n for n in self.items if covers(n.owner_hash, n.next_hash, digest)), None)

    def closest_encloser(self, qname: bytes) -> tuple[bytes, bytes] | None:
        """RFC 5155 §8.3: (closest encloser, next closer name), the encloser proved by a
        matching NSEC3 that is not the parent side of a delegation, the next closer name by a
        covering one (checked by the caller)."""
        name = qname
        while is_subdomain(name, self.zone):
            match = self.matching(name)
            if match is not None:
                if name == qname:
                    return None  # the name exists: not a closest encloser proof
                if cut_below(match.bitmap):
                    return None
                return name, ancestor_with_labels(qname, label_count(name) + 1)
            if name == self.zone:
                break
            name = parent_name(name)
        return None


def nsec3_denial(qname: bytes, qtype: int, nxdomain: bool, records: Iterable[RR],
                 budget: Nsec3Budget | None = None) -> Denial:
    """NSEC3 proof (RFC 5155 §8.4 to §8.7) that ``qname`` does not exist or has no ``qtype``."""
    chain = _Nsec3Set(records, budget)
    if not chain.items:
        return Denial.BOGUS
    if chain.params[1] > MAX_NSEC3_ITERATIONS:
        return Denial.INSECURE
    if not nxdomain:
        match = chain.matching(qname)
        if match is not None:  # §8.5, and §8.6 for DS at a delegation
            return _nodata_at(match.bitmap, qname, qtype)
    proof = chain.closest_encloser(qname)
    if proof is None:
        return Denial.BOGUS
    closest, next_closer = proof
    covering = chain.covering(next_closer)
    if covering is None:
        return Denial.BOGUS
    if not nxdomain and qtype == RRType.DS:
        # §8.6: no NSEC3 at the name; opt-out covering its next closer name means an unsigned
        # delegation may be there.
        return Denial.INSECURE if covering.opt_out else Denial.BOGUS
    wildcard = b"\x01*" + closest
    if nxdomain:
        if chain.covering(wildcard) is None:
            return Denial.BOGUS
        return Denial.INSECURE if covering.opt_out else Denial.SECURE
    match = chain.matching(wildcard)  # §8.7: no data at the wildcard that would have matched
    if match is None:
        return Denial.INSECURE if covering.opt_out else Denial.BOGUS
    if bitmap_has(match.bitmap, qtype) or bitmap_has(match.bitmap, RRType.CNAME):
        return Denial.BOGUS
    return Denial.SECURE


def nsec3_iterations_unsupported(records: Iterable[RR]) -> bool:
    """Whether the NSEC3 chain among ``records`` has more iterations than ``MAX_NSEC3_ITERATIONS``,
    which makes what it proves insecure (RFC 9276 §3.2)."""
    chain = _Nsec3Set(records)
    return bool(chain.items) and chain.params[1] > MAX_NSEC3_ITERATIONS


def shows_delegation(name: bytes, records: Iterable[RR],
                     budget: Nsec3Budget | None = None) -> bool:
    """Whether verified denial records put a zone cut at ``name``: an NSEC or NSEC3 there with NS
    and without SOA (a delegation, RFC 4035 §5.2), or an opt-out NSEC3 span that may hide one
    (RFC 5155 §8.6). Otherwise a name whose DS is denied is no zone of its own, only a name in
    its parent's zone."""
    records = list(records)
    for nsec in _nsecs(records):
        if nsec.owner == name:
            return parent_side(nsec.bitmap)
    chain = _Nsec3Set(records, budget)
    if not chain.items:
        return False
    match = chain.matching(name)
    if match is not None:
        return parent_side(match.bitmap)
    proof = chain.closest_encloser(name)
    if proof is None:
        return False
    covering = chain.covering(proof[1])
    return covering is not None and covering.opt_out


def nsec3_wildcard_expansion(qname: bytes, sig_labels: int, records: Iterable[RR],
                             budget: Nsec3Budget | None = None) -> Denial:
    """RFC 5155 §8.8: the next closer name of a wildcard answer is covered."""
    chain = _Nsec3Set(records, budget)
    if not chain.items:
        return Denial.BOGUS
    if chain.params[1] > MAX_NSEC3_ITERATIONS:
        return Denial.INSECURE
    next_closer = ancestor_with_labels(qname, sig_labels + 1)
    covering = chain.covering(next_closer)
    if covering is None:
        return Denial.BOGUS
    # Under opt-out an unsigned delegation may be where the wildcard seemed to match (Unbound's
    # reading of RFC 5155 §9.2): insecure, not secure.
    return Denial.INSECURE if covering.opt_out else Denial.SECURE


def denial(qname: bytes, qtype: int, nxdomain: bool, records: Sequence[RR],
           budget: Nsec3Budget | None = None) -> Denial:
    """The proof from whichever kind the zone uses."""
    if any(rr.rtype == RRType.NSEC3 for rr in records):
        return nsec3_denial(qname, qtype, nxdomain, records, budget)
    return nsec_denial(qname, qtype, nxdomain, records)


def wildcard_expansion(qname: bytes, sig_labels: int, records: Sequence[RR],
                       budget: Nsec3Budget | None = None) -> Denial:
    if any(rr.rtype == RRType.NSEC3 for rr in records):
        return nsec3_wildcard_expansion(qname, sig_labels, records, budget)
    return Denial.SECURE if nsec_wildcard_expansion(qname, sig_labels, records) else Denial.BOGUS


# --- trust anchors ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TrustAnchor:
    zone: bytes
    ds: tuple[DS, ...] = ()
    keys: tuple[DNSKEY, ...] = ()

    def trusts(self, key: DNSKEY) -> bool:
        if any(k.rdata == key.rdata for k in self.keys):
            return True
        return any(ds_matches(self.zone, ds, key) for ds in usable_ds(self.ds))

    @property
    def usable(self) -> bool:
        """Whether any anchor can be used at all; an anchor of only unsupported algorithms makes
        the zone insecure (RFC 4035 §5.2)."""
        return bool(usable_ds(self.ds)) or any(k.algorithm in SUPPORTED_ALGORITHMS for k in self.keys)


def parse_trust_anchors(text: str) -> list[TrustAnchor]:
    """Trust anchors in zone-file presentation form, one DS or DNSKEY record per line (the
    form of Unbound's ``root.key`` and of IANA's root-anchors as DS); ``;`` starts a comment,
    parentheses may continue a record over lines. Raises ``ValueError`` naming the line."""
    ds: dict[bytes, list[DS]] = {}
    keys: dict[bytes, list[DNSKEY]] = {}
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0]
        pending += " " + line
        if pending.count("(") > pending.count(")"):
            continue
        fields = pending.replace("(", " ").replace(")", " ").split()
        pending = ""
        if not fields:
            continue
        try:
            owner = name_from_text(fields[0])
            rest = fields[1:]
            while rest and (rest[0].isdigit() or rest[0].upper() in ("IN", "CLASS1")):
                rest = rest[1:]
            kind = rest[0].upper() if rest else ""
            if kind == "DS":
                tag, algorithm, digest_type = int(rest[1]), int(rest[2]), int(rest[3])
                ds.setdefault(owner, []).append(DS(tag, algorithm, digest_type, bytes.fromhex("".join(rest[4:]))))
            elif kind == "DNSKEY":
                flags, protocol, algorithm = int(rest[1]), int(rest[2]), int(rest[3])
                rdata = struct.pack("!HBB", flags, protocol, algorithm) + base64.b64decode("".join(rest[4:]),
                                                                                           validate=True)
                keys.setdefault(owner, []).append(parse_dnskey(rdata))
            else:
                raise ValueError("expected a DS or DNSKEY record")
        except (ValueError, IndexError, struct.error) as exc:
            raise ValueError(f"line {number}: {exc}: {raw.strip()!r}") from None
    if pending.strip():
        raise ValueError("unbalanced parentheses at the end")
    return [TrustAnchor(zone, tuple(ds.get(zone, ())), tuple(keys.get(zone, ()))) for zone in {**ds, **keys}]
