"""Keeping the trust anchors current: RFC 5011 refreshes over the store, for the running resolver.

Theory of operation. One ``AnchorTracker`` per configured anchor. At start it loads the keys
the store tracks for the zone — unless they were learnt from other configured anchors (the
fingerprint differs: the operator changed the file, so the file wins and tracking starts again).
Then, every ``autotrust.refresh_interval`` (an hour to 15 days; an hour after a failure), it
asks for the zone's DNSKEY set through the resolver, checks that a key trusted now signed it
(the configured anchor's, before the first refresh), applies ``autotrust.refresh`` (or
``bootstrap``), writes the result to the store when it changed, and hands the trusted keys to
the validator as the zone's anchor. A failed refresh changes nothing. The service starts the
refreshes once the validator first needs the anchor, so an idle resolver asks nobody anything.

Each refresh starts from the keys the store holds, not from the tracker's own copy: with several
DNS processes (``[dns] processes``) every one tracks the anchors, and one that last looked days
ago must carry on from what another has learnt since — a key's add hold-down counted from the
first sighting — rather than write its older view back over it (a worker whose first refresh
comes after the main process's learnt a new key would otherwise bootstrap and forget it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ispd.dns import autotrust, dnssec
from ispd.dns.autotrust import KeyState, TrackedKey
from ispd.dns.dnssec import DNSKEY, TrustAnchor
from ispd.dns.resolver import Resolution
from ispd.dns.wire import RRType, name_to_text
from ispd.logs import get_logger
from ispd.store.base import Store
from ispd.store.errors import StoreError
from ispd.store.models import TrustAnchorKey

log = get_logger("ispd.dns.rollover")

Fetch = Callable[[bytes, int], Awaitable[Resolution]]
RETRY_SECONDS = 3600  # RFC 5011 §2.3: after a failed refresh, an hour at least


class AnchorTracker:
    def __init__(self, anchor: TrustAnchor, store: Store, fetch: Fetch, apply: Callable[[TrustAnchor], None],
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.configured = anchor
        self.zone = anchor.zone
        self.store = store
        self.fetch = fetch
        self.apply = apply  # gives the validator the anchor to use now
        self.wall_clock = wall_clock
        self.source = autotrust.source_of(anchor)
        self.tracked: list[TrackedKey] = []

    def current(self) -> TrustAnchor:
        """The anchor to validate with: the tracked trusted keys, or the configured anchor
        before the first refresh."""
        if not self.tracked:
            return self.configured
        return TrustAnchor(self.zone, keys=tuple(autotrust.trusted_keys(self.tracked)))

    async def load(self) -> None:
        """Take the keys the store tracks (if learnt from the configured anchors)."""
        rows = await self.store.trust_anchor_keys(name_to_text(self.zone))
        if rows and all(row.source == self.source for row in rows):
            self._adopt([TrackedKey(self.zone, row.key, KeyState(row.state), row.since, row.hold_down_until,
                                    row.source) for row in rows])

    def _adopt(self, tracked: list[TrackedKey]) -> None:
        trusted_before = autotrust.trusted_keys(self.tracked) if self.tracked else None
        self.tracked = tracked
        if autotrust.trusted_keys(tracked) != trusted_before:
            self.apply(self.current())

    async def run(self) -> None:
        while True:
            interval = await self.refresh()
            await asyncio.sleep(interval)

    async def refresh(self) -> float:
        """One refresh; the seconds until the next."""
        try:
            await self.load()  # what another process may have learnt since
        except StoreError as exc:  # then from what this one knows
            log.warning("dns.dnssec.anchor_state_unreadable", zone=name_to_text(self.zone), error=str(exc))
        answer = await self.fetch(self.zone, RRType.DNSKEY)
        rdatas = [rr.rdata for rr in answer.answer if rr.name == self.zone and rr.rtype == RRType.DNSKEY]
        sigs = dnssec.sigs_over(answer.answer, self.zone, RRType.DNSKEY)
        keys = dnssec.parse_dnskeys(rdatas)
        now = self.wall_clock()
        anchor = self.current()
        entry_points = [k for k in keys if k.usable and anchor.trusts(k)]
        checked = dnssec.verify_rrset(self.zone, RRType.DNSKEY, rdatas, sigs, entry_points, self.zone, int(now))
        if not checked.ok or checked.sig is None:
            log.warning("dns.dnssec.anchor_refresh_failed", zone=name_to_text(self.zone),
                        why=answer.failure or checked.failure.name.lower())
            return RETRY_SECONDS
        if not self.tracked:
            tracked = autotrust.bootstrap(self.configured, keys, now)
        else:
            revoked = [k for k in keys if k.flags & dnssec.DNSKEY_REVOKE and k.flags & dnssec.DNSKEY_SEP]
            self_signed = {autotrust.identity(k.rdata) for k in revoked
                           if dnssec.verify_rrset(self.zone, RRType.DNSKEY, rdatas, sigs, [_unrevoked_view(k)],
                                                  self.zone, int(now)).ok}
            tracked = autotrust.refresh(self.tracked, keys, self_signed, now, checked.sig.original_ttl)
        if tracked != self.tracked:
            before = {(t.key, t.state) for t in self.tracked}
            for t in tracked:
                if (t.key, t.state) not in before:
                    log.info("dns.dnssec.anchor_key", zone=name_to_text(self.zone), state=t.state.value,
                             key_tag=dnssec.key_tag(t.key))
            await self.store.save_trust_anchor_keys(name_to_text(self.zone), [
                TrustAnchorKey(name_to_text(self.zone), t.key, t.state.value, t.since, t.hold_down_until, t.source)
                for t in tracked])
            self._adopt(tracked)
        left = dnssec.seconds_left(checked.sig.expiration, int(now))
        return autotrust.refresh_interval(checked.sig.original_ttl, left)


def _unrevoked_view(key: DNSKEY) -> DNSKEY:
    """A revoked key as ``verify_rrset`` will use it: it skips revoked keys, but a revoked key's
    own signature over the set is exactly what RFC 5011 §2.1 asks for. The key tag is the revoked
    form's, which is what its RRSIG names."""
    flags = key.flags & ~dnssec.DNSKEY_REVOKE
    return DNSKEY(flags, key.protocol, key.algorithm, key.public_key, key.key_tag, key.rdata)
