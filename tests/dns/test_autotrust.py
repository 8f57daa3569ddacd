"""RFC 5011's states, walked through with made-up keys and a clock in days."""

from __future__ import annotations

import struct

from ispd.dns import autotrust, dnssec
from ispd.dns.autotrust import ADD_HOLD_DOWN, REMOVE_HOLD_DOWN, KeyState, TrackedKey
from ispd.dns.wire import ROOT

DAY = 86400.0


def key(n: int, *, revoked: bool = False, sep: bool = True) -> dnssec.DNSKEY:
    flags = 0x0100 | (dnssec.DNSKEY_SEP if sep else 0) | (dnssec.DNSKEY_REVOKE if revoked else 0)
    return dnssec.parse_dnskey(struct.pack("!HBB", flags, 3, 13) + bytes([n]) * 64)


def states(tracked: list[TrackedKey]) -> dict[bytes, KeyState]:
    return {t.key[4:5]: t.state for t in tracked}


def test_bootstrap_takes_the_sep_keys_the_anchor_trusts() -> None:
    anchor = dnssec.TrustAnchor(ROOT, keys=(key(1),))
    tracked = autotrust.bootstrap(anchor, [key(1), key(2), key(3, sep=False)], now=0)
    assert states(tracked) == {b"\x01": KeyState.VALID}
    assert tracked[0].source == autotrust.source_of(anchor) != autotrust.source_of(dnssec.TrustAnchor(ROOT))
    assert autotrust.trusted_keys(tracked) == [key(1)]


def test_a_new_key_waits_out_the_add_hold_down_and_a_vanishing_one_is_forgotten() -> None:
    tracked = autotrust.bootstrap(dnssec.TrustAnchor(ROOT, keys=(key(1),)), [key(1)], now=0)
    tracked = autotrust.refresh(tracked, [key(1), key(2)], set(), now=1 * DAY, original_ttl=172800)
    assert states(tracked) == {b"\x01": KeyState.VALID, b"\x02": KeyState.ADDPEND}
    assert autotrust.trusted_keys(tracked) == [key(1)]  # not yet
    tracked = autotrust.refresh(tracked, [key(1), key(2)], set(), now=30 * DAY, original_ttl=172800)
    assert states(tracked)[b"\x02"] == KeyState.ADDPEND
    tracked = autotrust.refresh(tracked, [key(1), key(2)], set(), now=1 * DAY + ADD_HOLD_DOWN, original_ttl=172800)
    assert states(tracked) == {b"\x01": KeyState.VALID, b"\x02": KeyState.VALID}
    # A pending key that disappears before its hold-down is forgotten.
    tracked = autotrust.refresh(tracked, [key(1), key(2), key(3)], set(), now=40 * DAY, original_ttl=172800)
    tracked = autotrust.refresh(tracked, [key(1), key(2)], set(), now=41 * DAY, original_ttl=172800)
    assert b"\x03" not in states(tracked)


def test_missing_keys_stay_trusted_and_come_back() -> None:
    tracked = autotrust.bootstrap(dnssec.TrustAnchor(ROOT, keys=(key(1), key(2))), [key(1), key(2)], now=0)
    tracked = autotrust.refresh(tracked, [key(1)], set(), now=DAY, original_ttl=3600)
    assert states(tracked) == {b"\x01": KeyState.VALID, b"\x02": KeyState.MISSING}
    assert key(2) in autotrust.trusted_keys(tracked)
    tracked = autotrust.refresh(tracked, [key(1), key(2)], set(), now=2 * DAY, original_ttl=3600)
    assert states(tracked)[b"\x02"] == KeyState.VALID


def test_a_revoked_key_counts_only_when_it_signed_the_set_and_is_removed_later() -> None:
    tracked = autotrust.bootstrap(dnssec.TrustAnchor(ROOT, keys=(key(1), key(2))), [key(1), key(2)], now=0)
    # Revoked, but no signature by it: ignored (anyone could publish the flag).
    same = autotrust.refresh(tracked, [key(1), key(2, revoked=True)], set(), now=DAY, original_ttl=3600)
    assert states(same)[b"\x02"] == KeyState.MISSING
    ident = autotrust.identity(key(2, revoked=True).rdata)
    assert ident == key(2).rdata
    revoked = autotrust.refresh(tracked, [key(1), key(2, revoked=True)], {ident}, now=DAY, original_ttl=3600)
    assert states(revoked)[b"\x02"] == KeyState.REVOKED
    assert autotrust.trusted_keys(revoked) == [key(1)]
    # It does not come back, and is forgotten after the remove hold-down.
    later = autotrust.refresh(revoked, [key(1), key(2)], set(), now=2 * DAY, original_ttl=3600)
    assert states(later)[b"\x02"] == KeyState.REVOKED
    gone = autotrust.refresh(later, [key(1)], set(), now=DAY + REMOVE_HOLD_DOWN, original_ttl=3600)
    assert states(gone) == {b"\x01": KeyState.VALID}


def test_refresh_interval_is_bounded() -> None:
    assert autotrust.refresh_interval(172800, 30 * DAY) == 86400
    assert autotrust.refresh_interval(60, 30 * DAY) == autotrust.MIN_REFRESH
    assert autotrust.refresh_interval(10**9, 10**9) == autotrust.MAX_REFRESH
