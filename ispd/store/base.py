"""The store's one interface; every backend (SQLite now, PostgreSQL later) implements it.

Nothing here may assume a backend: no SQL, no connection objects, no rowids. Subscribers are
referred to by ``SubscriberRef``: the username, or the numeric id.

Durability contract: when a write method returns, the change is durable (committed and synced).
Backends get there by group commit: concurrent writes share one transaction and one sync, so a
service awaiting many small writes at once pays for one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence

from ispd.store.models import (
    UNCHANGED,
    AccountingRecord,
    AccountingResult,
    AddressClaim,
    AliasStillNaming,
    AuditEntry,
    ClaimResult,
    CoARecord,
    CredentialPolicy,
    DailyUsage,
    Holding,
    Lease,
    Lease6,
    Lease6HistoryEntry,
    LeaseHistoryEntry,
    MailAlias,
    Mailbox,
    MailRecipient,
    OverQuota,
    Plan,
    QueuedMail,
    QueuedRecipientState,
    QuotaCrossing,
    RadiusSession,
    Reservation,
    ReservationKind,
    StoredCredentials,
    Subscriber,
    SubscriberOverview,
    SubscriberStatus,
    SuspendedMail,
    TrustAnchorKey,
    Unchanged,
    Usage,
)

SubscriberRef = int | str


class Store(ABC):
    @abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release the backend."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless a read round trip works (used by /healthz)."""

    @abstractmethod
    async def check_schema(self) -> None:
        """Raise ``SchemaTooNew`` when a newer ispd migrated the store since it was opened."""

    @abstractmethod
    def writer_alive(self) -> bool:
        """False once the write path is broken beyond repair (the watchdog stops petting)."""

    @abstractmethod
    def commits_failing(self) -> str | None:
        """Why the last commit failed (a full disk, say), until one succeeds again; else None."""

    @abstractmethod
    async def check_writes(self) -> None:
        """An empty write transaction, as the writer commits the others': after it,
        ``commits_failing`` says what holds now, not at the last client's write (used by /healthz)."""

    # --- plans
    @abstractmethod
    async def add_plan(
        self,
        name: str,
        *,
        actor: str,
        download_kbps: int | None = None,
        upload_kbps: int | None = None,
        session_timeout_seconds: int | None = None,
        idle_timeout_seconds: int | None = None,
        max_sessions: int | None = None,
        mail_quota_bytes: int | None = None,
        credential_policy: CredentialPolicy = CredentialPolicy.VERIFIER,
        suspended_mail: SuspendedMail = SuspendedMail.READ,
        monthly_quota_bytes: int | None = None,
        over_quota: OverQuota = OverQuota.THROTTLE,
        over_quota_download_kbps: int | None = None,
        over_quota_upload_kbps: int | None = None,
    ) -> Plan: ...

    @abstractmethod
    async def get_plan(self, ref: int | str) -> Plan: ...

    @abstractmethod
    async def list_plans(self) -> list[Plan]: ...

    # --- subscribers
    @abstractmethod
    async def add_subscriber(
        self,
        username: str,
        *,
        actor: str,
        plan: int | str | None = None,
        full_name: str | None = None,
        account_ref: str | None = None,
        credential_policy: CredentialPolicy | None = None,
        credentials: StoredCredentials | None = None,
    ) -> Subscriber:
        """Add a subscriber, with its password forms when given, in one durable write."""

    @abstractmethod
    async def get_subscriber(self, ref: SubscriberRef, *, login: bool = False) -> Subscriber:
        """``login``: ``ref`` is a name a subscriber logs in with (mail's AUTH), found as its
        username alone: never an id (``#ID``, or digits no subscriber has as its username)."""

    @abstractmethod
    async def list_subscribers(self, status: SubscriberStatus | None = None, *, after: str | None = None,
                               limit: int | None = None) -> list[Subscriber]:
        """Subscribers by username; a page of them: the first ``limit`` after the username ``after``."""

    @abstractmethod
    async def set_subscriber_status(
        self, ref: SubscriberRef, status: SubscriberStatus, *, actor: str, reason: str | None = None
    ) -> Subscriber: ...

    @abstractmethod
    async def delete_subscriber(self, ref: SubscriberRef, *, actor: str) -> Subscriber: ...

    @abstractmethod
    async def set_credentials(self, ref: SubscriberRef, credentials: StoredCredentials, *, actor: str) -> None:
        """Replace the stored password forms (derive them with ``ispd.credentials``)."""

    @abstractmethod
    async def get_credentials(self, ref: SubscriberRef) -> StoredCredentials: ...

    @abstractmethod
    async def list_credentials(self) -> dict[int, StoredCredentials]:
        """Every subscriber's stored password forms, by subscriber id: for a service that
        authenticates from memory (RADIUS), which then follows changes through events."""

    @abstractmethod
    async def set_radius_reply(self, ref: SubscriberRef, attributes: Sequence[str], *, actor: str,
                               hidden: Collection[str] = ()) -> Subscriber:
        """Replace a subscriber's own RADIUS reply attributes (each "Attribute = value", checked
        by the caller against the dictionaries); audited as "subscriber.radius_reply_set", the
        values of the attributes named in ``hidden`` (the dictionaries' secret ones: a
        Tunnel-Password) left out of the audit, which keeps them for good."""

    @abstractmethod
    async def set_subscriber_plan(self, ref: SubscriberRef, plan: int | str | None, *, actor: str) -> Subscriber:
        """Move a subscriber to another plan (None: no plan); audited as "subscriber.plan_changed"."""

    @abstractmethod
    async def subscriber_overview(self, ref: SubscriberRef, *, audit_limit: int = 20) -> SubscriberOverview: ...

    # --- DHCP reservations
    @abstractmethod
    async def add_reservation(
        self,
        subscriber: SubscriberRef,
        kind: ReservationKind,
        key: str,
        *,
        actor: str,
        address: str | None = None,
        hostname: str | None = None,
        address6: str | None = None,
        prefix6: str | None = None,
    ) -> Reservation:
        """Tie a client (by MAC, client identifier, DHCPv6 DUID, the relay's circuit-id or
        remote-id, or a RADIUS login) to a subscriber, with fixed addresses and a host name when
        given (else the pools decide): ``address`` IPv4, ``address6`` an IPv6 address (IA_NA) and
        ``prefix6`` a delegated prefix (IA_PD). The IPv6 ones only for the kinds a DHCPv6 server
        matches (duid, circuit-id, remote-id) and a RADIUS login (username: Framed-IPv6-Address and
        Delegated-IPv6-Prefix); a duid reservation has no IPv4 address, and needs
        neither IPv6 one (alone, it names the client's subscriber).

        ``key``, the addresses and ``hostname`` are checked and kept in their canonical forms
        (``ispd.store.validation``); a bad one, or one the kind cannot hold, raises
        ``InvalidValue``. A key or address reserved already, a prefix overlapping one reserved, or
        an IPv6 address inside another subscriber's prefix raises ``Conflict`` naming its holder.
        Audited as "reservation.added".
        """

    @abstractmethod
    async def get_reservation(self, reservation_id: int) -> Reservation:
        """``NotFound`` if there is none."""

    @abstractmethod
    async def update_reservation(
        self,
        reservation_id: int,
        *,
        actor: str,
        address: str | Unchanged | None = UNCHANGED,
        hostname: str | Unchanged | None = UNCHANGED,
        address6: str | Unchanged | None = UNCHANGED,
        prefix6: str | Unchanged | None = UNCHANGED,
        fill_only: bool = False,
        expected: Reservation | None = None,
    ) -> Reservation:
        """Change what a reservation fixes: each of ``address``, ``hostname``, ``address6`` and
        ``prefix6`` is given a value, cleared (None) or left as it is. Its kind, key and subscriber
        stay (another client is another reservation). The new values are checked as
        ``add_reservation`` checks them, against every other reservation and lease.
        ``fill_only``: only fields empty now may be set, else ``Conflict``, for a writer that must
        not overwrite what an operator set meanwhile (RADIUS reserving a pool's prefix).
        ``expected``: the reservation as the caller read it; unless the one by that number is still
        its subscriber's, of its kind and key, ``NotFound`` as if deleted (numbers are never given
        again, but a caller's view may be of another store: one restored from a backup since).
        ``NotFound`` if there is no such reservation. Audited as "reservation.changed" (the
        reservation as it is now, and under ``previous`` the old values of the fields changed);
        a change that changes nothing is not audited."""

    @abstractmethod
    async def list_reservations(self, *, subscriber: SubscriberRef | None = None) -> list[Reservation]:
        """Every reservation (or one subscriber's), ordered by id."""

    @abstractmethod
    async def delete_reservation(self, reservation_id: int, *, actor: str) -> Reservation:
        """Remove a reservation (``NotFound`` if there is none); audited as "reservation.deleted"."""

    # --- mailboxes (the files live in the mail service's Maildir root; the store knows who owns what)

    @abstractmethod
    async def add_mailbox(self, subscriber: SubscriberRef, address: str, *, actor: str,
                          quota_bytes: int | None = None) -> Mailbox:
        """A mailbox for the subscriber; ``Conflict`` if the address is taken."""

    @abstractmethod
    async def list_mailboxes(self, *, subscriber: SubscriberRef | None = None) -> list[Mailbox]: ...

    @abstractmethod
    async def delete_mailbox(self, address: str, *, actor: str) -> Mailbox: ...

    @abstractmethod
    async def set_mailbox_quota(self, address: str, quota_bytes: int | None, *, actor: str) -> Mailbox:
        """None: the plan's quota applies again."""

    @abstractmethod
    async def add_mail_alias(self, subscriber: SubscriberRef, address: str, targets: Sequence[str], *,
                             local_domains: Collection[str], actor: str) -> MailAlias:
        """An alias owned by the subscriber: mail to ``address`` goes to each target (1 to
        ``MAX_ALIAS_TARGETS``). Conflict if ``address`` is a mailbox or an alias already;
        NotFound if a target at one of ``local_domains`` is no mailbox. Audited."""

    @abstractmethod
    async def list_mail_aliases(self, *, subscriber: SubscriberRef | None = None) -> list[MailAlias]: ...

    @abstractmethod
    async def delete_mail_alias(self, address: str, *, actor: str) -> MailAlias: ...

    async def aliases_still_naming(self, deleted: Collection[str]) -> list[AliasStillNaming]:
        """The aliases (any subscriber's) whose targets include the mailboxes ``deleted``, with
        what their mail does now: said when the mailboxes go (CLI and admin API alike), rather
        than found in the log after mail went missing. Built on ``list_mail_aliases``, so every
        backend has it."""
        gone = set(deleted)
        naming = []
        for alias in await self.list_mail_aliases():
            if any(target in gone for target in alias.targets):
                naming.append(AliasStillNaming(
                    address=alias.address, subscriber_id=alias.subscriber_id,
                    gone_targets=tuple(t for t in alias.targets if t in gone),
                    remaining_targets=tuple(t for t in alias.targets if t not in gone)))
        return naming

    @abstractmethod
    async def mail_alias(self, address: str) -> tuple[MailAlias, SubscriberStatus] | None:
        """The alias at ``address`` and its owner's status, for delivery; None if there is none."""

    @abstractmethod
    async def mail_recipient(self, address: str) -> MailRecipient | None:
        """The mailbox at exactly this (canonical, lowercase) address, or None."""

    # --- the outbound mail queue (message bytes are spool files the mail service keeps)

    @abstractmethod
    async def enqueue_mail(self, mail: QueuedMail) -> None:
        """Durable on return: the 250 for the message may then be sent."""

    @abstractmethod
    async def due_mail(self, now: float, *, limit: int = 100, after: float | None = None) -> list[QueuedMail]:
        """Entries whose next attempt is due, soonest first; with ``after``, then those set for
        later than it (further ahead than any retry is set: the wall clock was stepped back)."""

    @abstractmethod
    async def list_mail_queue(self) -> list[QueuedMail]: ...

    @abstractmethod
    async def get_queued_mail(self, queue_id: str) -> QueuedMail | None:
        """The entry as it is now; None once it has left the queue."""

    @abstractmethod
    async def mail_queue_summary(self) -> tuple[int, float | None]:
        """(messages in the queue, the oldest one's created_at), cheaply, for the gauges."""

    @abstractmethod
    async def record_mail_attempt(self, queue_id: str, outcomes: dict[str, tuple[QueuedRecipientState, str | None]],
                                  *, next_attempt_at: float, error: str | None) -> QueuedMail | None:
        """Records what became of each recipient tried (delivered, bounced; a recipient not in
        ``outcomes`` stays pending) and when to try again. Returns the entry as it now is (with
        no pending recipient it has left the queue), or None if it was deleted meanwhile."""

    @abstractmethod
    async def record_mail_delivered(self, queue_id: str, delivered: dict[str, str]) -> None:
        """Marks these pending recipients delivered (address → the other server's reply) the
        moment it took them, before the attempt's other domains are done; the entry leaves the
        queue when none is pending. The attempt's count and schedule are the attempt's record's."""

    @abstractmethod
    async def delete_queued_mail(self, queue_id: str, *, actor: str) -> QueuedMail: ...

    @abstractmethod
    async def reschedule_mail(self, queue_id: str | None, at: float) -> int:
        """Moves the next attempt of one entry (None: all) to ``at``; how many moved."""

    # --- leases
    @abstractmethod
    async def record_lease(self, lease: Lease, *, event: str) -> None:
        """Make ``lease`` the current state of its address and append it to the lease history;
        ``Conflict`` if a RADIUS session holds the address (see ``record_leases``)."""

    @abstractmethod
    async def record_leases(self, changes: Sequence[tuple[Lease, str]]) -> dict[str, float]:
        """``record_lease`` for many leases in one durable write: a DHCP server commits every ACK
        of one receive batch together. A DHCP lease on an address a RADIUS session holds is not
        written: those addresses come back, each with the time the session's hold ends."""

    @abstractmethod
    async def claim_address(self, claim: AddressClaim) -> ClaimResult:
        """Give a RADIUS session the first of ``claim.candidates`` that nobody else holds (or that
        ``claim.holder`` holds already: its expiry moves), durably, with a history entry."""

    @abstractmethod
    async def renew_claims(self, holds: Sequence[tuple[str, str]], expires_at: float) -> list[str]:
        """Hold each (address, holder) of RADIUS until at least ``expires_at``; returns the addresses
        the holder no longer has (released, or taken by another since)."""

    @abstractmethod
    async def release_claims(self, holds: Sequence[tuple[str, str]]) -> list[Lease]:
        """End each (address, holder) of RADIUS that still holds its address; the ended leases."""

    @abstractmethod
    async def list_leases(
        self, *, subscriber: SubscriberRef | None = None, include_ended: bool = False, after: str | None = None,
        limit: int | None = None
    ) -> list[Lease]:
        """Leases in the order of their address text (current ones: bound, or declined and in
        quarantine, and not expired; ``include_ended``: every row); a page of them: the first
        ``limit`` after the address ``after``."""

    @abstractmethod
    async def get_lease(self, address: str) -> Lease:
        """The current state of ``address`` (bound or ended); ``NotFound`` if it was never leased
        or its row has been purged."""

    @abstractmethod
    async def who(self, address: str, *, since: float, until: float) -> list[Holding]:
        """Who held ``address`` at some time in [since, until] (since == until: at a moment),
        from the lease history and the RADIUS sessions, with the rows that show it. An IPv6
        address or prefix is held by the sessions whose framed or delegated prefix overlaps it,
        and by the DHCPv6 bindings (source "dhcp6", from their history, spans as DHCPv4 leases')
        whose address or delegated prefix overlaps it (``Holding.prefix`` and ``prefix_kind``
        say which); a stored prefix shorter than ``ipv6_networks.SHORTEST`` holds nothing."""

    @abstractmethod
    async def lease_history(self, address: str, *, limit: int = 50) -> list[LeaseHistoryEntry]:
        """The newest ``limit`` history entries of ``address``, newest first; empty if none."""

    # --- DHCPv6 bindings (IA_NA addresses and IA_PD prefixes)
    @abstractmethod
    async def record_leases6(self, changes: Sequence[tuple[Lease6, str]]) -> None:
        """Make each binding the current state of its prefix and append it, with its event
        (granted, renewed, released, expired, declined), to the DHCPv6 history, all in one
        durable write: the DHCPv6 server commits every binding change of one receive batch
        together, before its Replies. As for DHCPv4, an ended binding's ``expires_at`` is when it
        ended. A prefix is kept in its canonical text (``validation.dhcp6_prefix_text``); one
        that is not an IPv6 network (bits set past its length) raises ``InvalidValue`` and
        nothing is written. A subscriber deleted meanwhile is written as none."""

    @abstractmethod
    async def list_leases6(
        self, *, subscriber: SubscriberRef | None = None, include_ended: bool = False
    ) -> list[Lease6]:
        """The DHCPv6 bindings (current ones: bound, or declined and in quarantine, and not
        expired; ``include_ended``: every
        row, as the server loads them at start), of one subscriber or of all: addresses (IA_NA)
        first, then delegated prefixes (IA_PD), each in address order."""

    @abstractmethod
    async def get_lease6(self, prefix: str) -> Lease6:
        """The binding of ``prefix`` (an address is its /128), bound or ended; ``NotFound`` if it
        was never leased or its row has been purged."""

    @abstractmethod
    async def lease6_history(self, prefix: str, *, limit: int = 50) -> list[Lease6HistoryEntry]:
        """The newest ``limit`` history entries of ``prefix``, newest first; empty if none."""

    # --- RADIUS sessions and accounting
    @abstractmethod
    async def record_accounting(self, records: Sequence[AccountingRecord]) -> list[AccountingResult]:
        """Apply Accounting-Requests in order, in one durable write (one result per record): open,
        update and close sessions, count usage once, append every request to the accounting
        history. Idempotent per request: a retransmission changes nothing twice. A record with a
        login and no subscriber is attributed to the subscriber of that login (its username, else
        a ``username`` reservation's key) as the store has it at the write."""

    @abstractmethod
    async def list_sessions(self, *, open_only: bool = False, subscriber: SubscriberRef | None = None,
                            nas_address: str | None = None, limit: int = 1000) -> list[RadiusSession]:
        """Sessions, newest first."""

    @abstractmethod
    async def get_session(self, session_id: int) -> RadiusSession:
        """``NotFound`` if there is none."""

    @abstractmethod
    async def close_sessions(self, session_ids: Sequence[int], *, at: float, cause: str,
                             actor: str | None = None) -> list[RadiusSession]:
        """Close the sessions still open among ``session_ids`` (a NAS that stopped reporting them,
        or an operator's ``ispd session close``: ``actor``, written to the audit log); returns
        those closed."""

    @abstractmethod
    async def record_coa(self, *, kind: str, nas_address: str, result: str, attempts: int, at: float,
                         completed_at: float, session_id: int | None = None, subscriber_id: int | None = None,
                         reason: str | None = None, error_cause: int | None = None) -> CoARecord:
        """Keep the outcome of a Disconnect-Request or CoA-Request sent to a NAS."""

    @abstractmethod
    async def list_coa(self, *, session_id: int | None = None, subscriber: SubscriberRef | None = None,
                       limit: int = 50) -> list[CoARecord]:
        """CoA and Disconnect outcomes, newest first."""

    @abstractmethod
    async def usage(self, subscriber: SubscriberRef, *, since: float, until: float) -> Usage:
        """What the subscriber used on the UTC days from ``since`` to ``until``, both included,
        unless ``until`` is a later midnight: then the days before it (a period from 2026-11-01
        to 2026-12-01 is November's, as the next one, from 2026-12-01, starts with that day)."""

    @abstractmethod
    async def usage_totals(self, *, since: float, until: float) -> dict[int, Usage]:
        """``usage`` of every subscriber that used anything on those days, by subscriber id."""

    # --- retention
    @abstractmethod
    async def usage_by_day(self, subscriber: SubscriberRef | None, *, since: float, until: float,
                           after: tuple[int, str] | None = None, limit: int | None = None) -> list[DailyUsage]:
        """Usage per UTC day from the day of ``since`` to that of ``until`` (as ``usage``: a
        ``until`` at a later midnight ends with the day before), of one subscriber
        (None: of every subscriber), days without any left out, by subscriber id then day; a page
        of them: the first ``limit`` after (subscriber id, YYYY-MM-DD) ``after``."""

    @abstractmethod
    async def record_quota_crossing(self, crossing: QuotaCrossing) -> bool:
        """Note that a subscriber went over its plan's quota in a month (audited); False when
        that month's crossing was noted already."""

    @abstractmethod
    async def quota_crossings(self, subscriber: SubscriberRef) -> list[QuotaCrossing]:
        """A subscriber's quota crossings, newest month first."""

    # --- DNSSEC trust anchors (RFC 5011)
    @abstractmethod
    async def trust_anchor_keys(self, zone: str) -> list[TrustAnchorKey]:
        """The keys tracked for ``zone``'s trust anchor (none before the first refresh)."""

    @abstractmethod
    async def save_trust_anchor_keys(self, zone: str, keys: Sequence[TrustAnchorKey]) -> None:
        """Replace the keys tracked for ``zone``, in one transaction."""

    @abstractmethod
    async def purge_history(self, before: float) -> dict[str, int]:
        """Delete history older than ``before`` (DHCP and DHCPv6 lease history, accounting
        records, closed RADIUS sessions, ended leases and DHCPv6 bindings, audit entries);
        returns the rows deleted per kind. Works in small batches so that other writers are never
        held up for long."""

    # --- audit log: append-only; also how changes made elsewhere reach a running daemon
    @abstractmethod
    async def audit_since(self, after_id: int, *, limit: int = 1000) -> list[AuditEntry]: ...

    @abstractmethod
    async def last_audit_id(self) -> int: ...
