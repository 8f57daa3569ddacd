"""The open RADIUS sessions, in memory: Simultaneous-Use counts, CoA targets, stale sessions.

The store is the record (``radius_sessions``); this is the service's view of the open ones,
loaded at start and kept current from the results of each accounting write, so that an
Access-Request can count a subscriber's sessions without a store round trip. A session is
keyed by (NAS address, Acct-Session-Id).
"""

from __future__ import annotations

from collections.abc import Iterable

from ispd.store.models import AccountingResult, RadiusSession

SessionKey = tuple[str, str]


class OpenSessions:
    def __init__(self) -> None:
        self.by_key: dict[SessionKey, RadiusSession] = {}
        self.by_subscriber: dict[int, set[SessionKey]] = {}

    def load(self, sessions: Iterable[RadiusSession]) -> None:
        self.by_key.clear()
        self.by_subscriber.clear()
        for session in sessions:
            if session.is_open:
                self._put(session)

    def _put(self, session: RadiusSession) -> None:
        key = (session.nas_address, session.acct_session_id)
        old = self.by_key.get(key)
        if old is not None:
            self._drop(old)
        self.by_key[key] = session
        if session.subscriber_id is not None:
            self.by_subscriber.setdefault(session.subscriber_id, set()).add(key)

    def _drop(self, session: RadiusSession) -> None:
        key = (session.nas_address, session.acct_session_id)
        current = self.by_key.get(key)
        if current is None or current.id != session.id:
            return
        del self.by_key[key]
        if session.subscriber_id is not None:
            keys = self.by_subscriber.get(session.subscriber_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.by_subscriber[session.subscriber_id]

    def apply(self, result: AccountingResult) -> None:
        """Follow what one accounting write did."""
        for closed in result.closed:
            self._drop(closed)
        session = result.session
        if session is None:
            return
        if session.is_open:
            self._put(session)
        else:
            self._drop(session)

    def closed(self, sessions: Iterable[RadiusSession]) -> None:
        for session in sessions:
            self._drop(session)

    def count(self, subscriber_id: int) -> int:
        keys = self.by_subscriber.get(subscriber_id)
        return len(keys) if keys else 0

    def of_subscriber(self, subscriber_id: int) -> list[RadiusSession]:
        return [self.by_key[key] for key in self.by_subscriber.get(subscriber_id, ())]

    def stale(self, now: float, default_interval: int, intervals: int) -> list[RadiusSession]:
        """Open sessions the NAS has not reported on for ``intervals`` interim intervals (their
        own, else ``default_interval``); none when there is no interval to go by."""
        found = []
        for session in self.by_key.values():
            interval = session.interim_interval or default_interval
            if interval and now - session.updated_at > interval * intervals:
                found.append(session)
        return found

    def __len__(self) -> int:
        return len(self.by_key)
