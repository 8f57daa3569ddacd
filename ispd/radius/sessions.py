"""The open RADIUS sessions, in memory: Simultaneous-Use counts, CoA targets, stale sessions.

The store is the record (``radius_sessions``); this is the service's view of the open ones,
loaded at start and kept current from each accounting write's outcome, so that an
Access-Request can count a subscriber's sessions without a store round trip. A session is
keyed by (NAS address, Acct-Session-Id). ``last_seen`` is when its NAS's last report on it
arrived — the arrival, not the event time the NAS gives (a report that waited in the NAS's
buffer is news all the same) — kept here without re-reading the row, on the monotonic clock:
a step of the wall clock (NTP correcting a box that booted with a wrong one) must not make
every session look silent, closed as stale and its address given to someone else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ispd.store.models import RadiusSession

SessionKey = tuple[str, str]


def fills_in(session: RadiusSession, *, subscriber_id: int | None, framed_ip: str | None,
             framed_ipv6_prefix: str | None, delegated_ipv6_prefix: str | None,
             framed_ipv6_address: str | None, interim_interval: int | None) -> bool:
    """Whether these values of an accounting record would set something ``session`` lacks: the
    store's fill-in sets only those (a value once set is never changed)."""
    return ((subscriber_id is not None and session.subscriber_id is None)
            or (framed_ip is not None and session.framed_ip is None)
            or (framed_ipv6_prefix is not None and session.framed_ipv6_prefix is None)
            or (delegated_ipv6_prefix is not None and session.delegated_ipv6_prefix is None)
            or (framed_ipv6_address is not None and session.framed_ipv6_address is None)
            or (interim_interval is not None and session.interim_interval is None))


# RFC 2869 §5.16: an Acct-Interim-Interval "MUST NOT be smaller than 60".
MIN_INTERIM_SECONDS = 60


class OpenSessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.by_key: dict[SessionKey, RadiusSession] = {}
        self.by_subscriber: dict[int, set[SessionKey]] = {}
        self.last_seen: dict[SessionKey, float] = {}

    def load(self, sessions: Iterable[RadiusSession]) -> None:
        """The open sessions at start, each seen now: a daemon that was down longer than the
        stale limit must not close them all before their NAS reports."""
        self.by_key.clear()
        self.by_subscriber.clear()
        self.last_seen.clear()
        for session in sessions:
            if session.is_open:
                self.put(session)

    def get(self, key: SessionKey) -> RadiusSession | None:
        return self.by_key.get(key)

    def put(self, session: RadiusSession) -> RadiusSession | None:
        """Add an open session, its NAS heard from now; returns the one it replaces under the
        same key, if any."""
        key = (session.nas_address, session.acct_session_id)
        old = self.pop(key)
        self.by_key[key] = session
        self.last_seen[key] = self.clock()
        if session.subscriber_id is not None:
            self.by_subscriber.setdefault(session.subscriber_id, set()).add(key)
        return old

    def seen(self, key: SessionKey) -> None:
        if key in self.by_key:
            self.last_seen[key] = self.clock()

    def pop(self, key: SessionKey) -> RadiusSession | None:
        session = self.by_key.pop(key, None)
        if session is None:
            return None
        self.last_seen.pop(key, None)
        if session.subscriber_id is not None:
            keys = self.by_subscriber.get(session.subscriber_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_subscriber[session.subscriber_id]
        return session

    def closed(self, sessions: Iterable[RadiusSession]) -> None:
        for session in sessions:
            current = self.by_key.get((session.nas_address, session.acct_session_id))
            if current is not None and current.id == session.id:
                self.pop((session.nas_address, session.acct_session_id))

    def count(self, subscriber_id: int) -> int:
        keys = self.by_subscriber.get(subscriber_id)
        return len(keys) if keys else 0

    def of_subscriber(self, subscriber_id: int) -> list[RadiusSession]:
        return [self.by_key[key] for key in self.by_subscriber.get(subscriber_id, ())]

    def stale(self, default_interval: int, intervals: int) -> list[RadiusSession]:
        """Open sessions the NAS has not reported on for ``intervals`` interim intervals (their
        own, else ``default_interval``); none when there is no interval to go by."""
        now = self.clock()
        found = []
        for key, session in self.by_key.items():
            interval = session.interim_interval or default_interval
            # A NAS reports no more often than the RFC allows, whatever it was told (pppd's radius
            # plugin raises a smaller Acct-Interim-Interval to 60): judged by the shorter one, its
            # live sessions were closed and their addresses given to others.
            if interval and now - self.last_seen[key] > max(interval, MIN_INTERIM_SECONDS) * intervals:
                found.append(session)
        return found

    def __len__(self) -> int:
        return len(self.by_key)
