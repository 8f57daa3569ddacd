"""RFC 5011 automated updates of DNSSEC trust anchors, as a pure state machine.

Theory of operation. For a zone with a trust anchor (the root, usually) ispd tracks each key
that may sign the zone's DNSKEY set (SEP keys) through the states of RFC 5011 §4.1:

    (new) --seen, validated set--> ADDPEND --hold-down passed, still there--> VALID
    ADDPEND --gone--> (forgotten)                        VALID --gone--> MISSING --back--> VALID
    VALID, MISSING, ADDPEND --revoked and self-signed--> REVOKED --remove hold-down--> (forgotten)

``refresh`` applies one look at the zone's DNSKEY set, which the caller has already validated
with a key trusted now (VALID or MISSING: RFC 5011 §4 keeps a missing key trusted); a key with
the REVOKE bit counts only when it signs the set itself (§2.1), which the caller checks. A key
is known by its DNSKEY rdata with the REVOKE bit cleared, so its revoked form is the same key.
The add hold-down is 30 days or the DNSKEY set's original TTL if longer (§2.4.1); a revoked key
is forgotten after 30 days (§4.2's remove hold-down). ``refresh_interval`` is §2.3's active
refresh: half the original TTL or half the signatures' remaining life, between an hour and 15
days.

``bootstrap`` turns the configured anchors into the first VALID keys; ``source`` fingerprints
those anchors, so that an operator who edits the anchor file starts the tracking afresh rather
than fighting state learnt from the old one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from ispd.dns import dnssec
from ispd.dns.dnssec import DNSKEY, TrustAnchor

ADD_HOLD_DOWN = 30 * 86400
REMOVE_HOLD_DOWN = 30 * 86400
MIN_REFRESH = 3600
MAX_REFRESH = 15 * 86400


class KeyState(StrEnum):
    ADDPEND = "addpend"
    VALID = "valid"
    MISSING = "missing"
    REVOKED = "revoked"


TRUSTED_STATES = frozenset({KeyState.VALID, KeyState.MISSING})


@dataclass(frozen=True, slots=True)
class TrackedKey:
    zone: bytes
    key: bytes  # DNSKEY rdata, REVOKE bit clear
    state: KeyState
    since: float  # when it entered its state
    hold_down_until: float = 0.0  # ADDPEND: when it may become VALID; REVOKED: when it is forgotten
    source: str = ""  # fingerprint of the configured anchors the tracking started from


def identity(rdata: bytes) -> bytes:
    """A DNSKEY's rdata with the REVOKE bit cleared (RFC 5011 §3: revoking changes the flags)."""
    flags = (rdata[0] << 8 | rdata[1]) & ~dnssec.DNSKEY_REVOKE
    return bytes((flags >> 8, flags & 0xFF)) + rdata[2:]


def source_of(anchor: TrustAnchor) -> str:
    """A fingerprint of a configured anchor."""
    parts = sorted([f"DS {d.key_tag} {d.algorithm} {d.digest_type} {d.digest.hex()}" for d in anchor.ds]
                   + [f"DNSKEY {k.rdata.hex()}" for k in anchor.keys])
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def bootstrap(anchor: TrustAnchor, dnskeys: Iterable[DNSKEY], now: float) -> list[TrackedKey]:
    """The first tracked keys: the SEP keys of the zone's DNSKEY set that the configured anchor
    trusts (the caller has validated the set with them)."""
    source = source_of(anchor)
    return [TrackedKey(anchor.zone, identity(k.rdata), KeyState.VALID, now, source=source)
            for k in dnskeys if k.usable and k.flags & dnssec.DNSKEY_SEP and anchor.trusts(k)]


def trusted_keys(tracked: Iterable[TrackedKey]) -> list[DNSKEY]:
    return [dnssec.parse_dnskey(t.key) for t in tracked if t.state in TRUSTED_STATES]


def refresh(tracked: Sequence[TrackedKey], dnskeys: Iterable[DNSKEY], self_signed_revoked: set[bytes],
            now: float, original_ttl: int) -> list[TrackedKey]:
    """The tracked keys after one look at a validated DNSKEY set. ``self_signed_revoked``: the
    identities of the revoked keys in the set that signed it."""
    if not tracked:
        return []
    zone, source = tracked[0].zone, tracked[0].source
    seen: dict[bytes, bool] = {}  # identity -> revoked (and self-signed)
    for key in dnskeys:
        if not key.flags & dnssec.DNSKEY_SEP or not key.flags & dnssec.DNSKEY_ZONE:
            continue
        ident = identity(key.rdata)
        revoked = bool(key.flags & dnssec.DNSKEY_REVOKE)
        if revoked and ident not in self_signed_revoked:
            continue  # a revocation nobody can vouch for is ignored (§2.1)
        seen[ident] = seen.get(ident, False) or revoked
    hold_down = max(ADD_HOLD_DOWN, original_ttl)
    known = {t.key: t for t in tracked}
    result = [after for t in tracked if (after := _next(t, seen.get(t.key), now)) is not None]
    for ident, revoked in seen.items():
        if ident not in known and not revoked:
            result.append(TrackedKey(zone, ident, KeyState.ADDPEND, now, now + hold_down, source))
    return result


def _next(t: TrackedKey, revoked: bool | None, now: float) -> TrackedKey | None:
    """One key's state after a look at the set: ``revoked`` True (revoked and self-signed), False
    (present), None (absent); None when the key is forgotten."""
    if revoked:
        if t.state == KeyState.REVOKED:
            return t
        return replace(t, state=KeyState.REVOKED, since=now, hold_down_until=now + REMOVE_HOLD_DOWN)
    if revoked is None:
        if t.state == KeyState.VALID:
            return replace(t, state=KeyState.MISSING, since=now)
        if t.state == KeyState.MISSING or (t.state == KeyState.REVOKED and now < t.hold_down_until):
            return t
        return None  # ADDPEND gone: back to "Start" (§4.1); REVOKED past its hold-down: removed
    if t.state == KeyState.ADDPEND:
        return replace(t, state=KeyState.VALID, since=now, hold_down_until=0.0) if now >= t.hold_down_until else t
    if t.state == KeyState.MISSING:
        return replace(t, state=KeyState.VALID, since=now)
    return t  # VALID stays; a REVOKED key does not come back (§4.1)


def refresh_interval(original_ttl: int, seconds_to_expiry: float) -> float:
    """RFC 5011 §2.3's active refresh."""
    return max(MIN_REFRESH, min(MAX_REFRESH, original_ttl / 2, seconds_to_expiry / 2))
