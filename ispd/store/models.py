"""What the store holds, as the services and the CLI see it: plain frozen dataclasses.

Times are POSIX seconds (float, UTC) in every backend, so no backend's date type leaks out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Final


class SubscriberStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class CredentialPolicy(StrEnum):
    """Which forms of a password are kept; each step keeps more, to serve more auth methods.

    verifier   salted scrypt verifier only: PAP, EAP-TTLS/PAP, SMTP/IMAP logins. Nothing
               recoverable is stored.
    nt-hash    also the NT hash (MD4 of UTF-16LE): MS-CHAPv2, PEAP-MSCHAPv2. The NT hash is a
               password equivalent for those protocols.
    cleartext  also the password itself: CHAP and EAP-MD5 need it to compute the response.
    """

    VERIFIER = "verifier"
    NT_HASH = "nt-hash"
    CLEARTEXT = "cleartext"


class SuspendedMail(StrEnum):
    """What a suspended subscriber of a plan may still do with mail. Either way mail is
    delivered to them and submission is refused.

    read  IMAP stays open, so the billing notices can be read (the default)
    none  IMAP logins are refused too
    """

    READ = "read"
    NONE = "none"


class OverQuota(StrEnum):
    """What happens to a subscriber past its plan's monthly quota, until the month ends."""

    THROTTLE = "throttle"  # the plan's over_quota_* rates instead of its own
    WALLED_GARDEN = "walled-garden"


@dataclass(frozen=True, slots=True)
class QuotaCrossing:
    subscriber_id: int
    month: str  # YYYY-MM (UTC)
    crossed_at: float
    used_octets: int
    quota_bytes: int


@dataclass(frozen=True, slots=True)
class TrustAnchorKey:
    """A key the DNS resolver tracks for a trust anchor (RFC 5011)."""

    zone: str  # presentation form
    key: bytes  # DNSKEY rdata, REVOKE bit clear
    state: str  # addpend | valid | missing | revoked
    since: float
    hold_down_until: float
    source: str


@dataclass(frozen=True, slots=True)
class Plan:
    id: int
    name: str
    download_kbps: int | None = None
    upload_kbps: int | None = None
    session_timeout_seconds: int | None = None
    idle_timeout_seconds: int | None = None
    max_sessions: int | None = None
    mail_quota_bytes: int | None = None
    credential_policy: CredentialPolicy = CredentialPolicy.VERIFIER
    suspended_mail: SuspendedMail = SuspendedMail.READ
    # Fair use: octets (both ways) per calendar month, UTC; None: no quota.
    monthly_quota_bytes: int | None = None
    over_quota: OverQuota = OverQuota.THROTTLE
    over_quota_download_kbps: int | None = None
    over_quota_upload_kbps: int | None = None
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Subscriber:
    id: int
    username: str
    status: SubscriberStatus
    plan_id: int | None = None
    full_name: str | None = None
    account_ref: str | None = None
    status_reason: str | None = None
    # Overrides the plan's policy for this subscriber (None: the plan decides).
    credential_policy: CredentialPolicy | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    # Its own RADIUS reply attributes ("Framed-Route = ..."), after and over its plan's.
    radius_reply: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredCredentials:
    """The forms of a subscriber's password held by the store; absent forms are None."""

    verifier: str | None = None
    nt_hash: bytes | None = None
    cleartext: str | None = None
    updated_at: float = 0.0

    @property
    def forms(self) -> list[str]:
        present = [("verifier", self.verifier), ("nt-hash", self.nt_hash), ("cleartext", self.cleartext)]
        return [name for name, value in present if value is not None]


class ReservationKind(StrEnum):
    MAC = "mac"
    CLIENT_ID = "client-id"
    CIRCUIT_ID = "circuit-id"
    REMOTE_ID = "remote-id"
    # A RADIUS User-Name: its address goes out as Framed-IP-Address, its IPv6 address and prefix
    # as Framed-IPv6-Address and Delegated-IPv6-Prefix.
    USERNAME = "username"
    DUID = "duid"  # a DHCPv6 client's DUID: IPv6 only (address6, prefix6), no IPv4 address


# The kinds that may hold a fixed IPv6 address or prefix: those a DHCPv6 server can match (the
# relay's Interface-ID and Remote-ID, the client's DUID), and a RADIUS login (a PPPoE session's
# IPv6, which the NAS gives). DHCPv6's pools skip them all.
IPV6_RESERVATION_KINDS = frozenset({ReservationKind.CIRCUIT_ID, ReservationKind.REMOTE_ID, ReservationKind.DUID,
                                    ReservationKind.USERNAME})


@dataclass(frozen=True, slots=True)
class Reservation:
    id: int
    subscriber_id: int
    kind: ReservationKind
    key: str
    address: str | None = None
    hostname: str | None = None
    created_at: float = 0.0
    # For DHCPv6: a fixed address (IA_NA) and a fixed delegated prefix (IA_PD), canonical text
    # (2001:db8:1::10, 2001:db8:200::/48).
    address6: str | None = None
    prefix6: str | None = None


class Unchanged(Enum):
    """A field that an update leaves as it is (``None`` clears it)."""

    UNCHANGED = "unchanged"


UNCHANGED: Final = Unchanged.UNCHANGED


class LeaseState(StrEnum):
    BOUND = "bound"
    RELEASED = "released"
    EXPIRED = "expired"
    DECLINED = "declined"


class LeaseService(StrEnum):
    """Who holds a leased address: a DHCP client, or a RADIUS session (Framed-IP-Address from a
    pool it shares with DHCP)."""

    DHCP = "dhcp"
    RADIUS = "radius"


@dataclass(frozen=True, slots=True)
class Lease:
    """The current lease of one address (one row per address ever leased)."""

    address: str
    state: LeaseState
    starts_at: float
    expires_at: float
    hw_address: str | None = None
    client_id: str | None = None
    hostname: str | None = None
    subscriber_id: int | None = None
    circuit_id: str | None = None
    remote_id: str | None = None
    pool: str | None = None
    service: LeaseService = LeaseService.DHCP

    def held(self, now: float) -> bool:
        """Whether nobody else may have the address now (a live lease, or a quarantine)."""
        return self.state in (LeaseState.BOUND, LeaseState.DECLINED) and self.expires_at > now


class Lease6Kind(StrEnum):
    """What a DHCPv6 binding gives: one address of the link (IA_NA), or a prefix delegated to the
    client's router for its own networks (IA_PD)."""

    ADDRESS = "na"
    PREFIX = "pd"


@dataclass(frozen=True, slots=True)
class Lease6:
    """The current DHCPv6 binding of one address or delegated prefix (one row per prefix ever
    leased). ``prefix`` is the canonical network text: ``2001:db8:1::10/128`` for an address,
    ``2001:db8:100:ff00::/56`` for a delegated prefix. A client's binding is identified by its
    DUID, the IA's IAID and the kind (RFC 8415 §12)."""

    prefix: str
    kind: Lease6Kind
    state: LeaseState
    duid: str  # the client's DUID, lower-case hex in colon-separated octets
    iaid: int
    starts_at: float
    preferred_until: float
    expires_at: float  # the end of the valid lifetime
    subscriber_id: int | None = None
    hostname: str | None = None
    link: str | None = None  # the [[dhcp6.subnet]]'s name
    pool: str | None = None
    remote_id: str | None = None  # the relay's Remote-ID (RFC 4649) without its enterprise number
    interface_id: str | None = None  # the relay's Interface-ID (RFC 8415 §21.18): the line

    def held(self, now: float) -> bool:
        """Whether nobody else may have the prefix now (a live binding, or a quarantine)."""
        return self.state in (LeaseState.BOUND, LeaseState.DECLINED) and self.expires_at > now


@dataclass(frozen=True, slots=True)
class AddressClaim:
    """A RADIUS session's request for an address of a pool (one shared with DHCP, maybe):
    the first of ``candidates`` that nobody else holds, or that ``holder`` holds already."""

    pool: str
    candidates: tuple[str, ...]
    holder: str  # who the address is for (stored as the lease's client_id)
    expires_at: float
    subscriber_id: int | None = None
    hw_address: str | None = None
    circuit_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimResult:
    lease: Lease | None  # None: every candidate is held by someone else
    taken: tuple[tuple[str, float], ...] = ()  # candidates found held by others, and until when


@dataclass(frozen=True, slots=True)
class LeaseHistoryEntry:
    """One event in the append-only history of an address: who had it, from when, until when.

    ``username`` is the subscriber's name when the event was recorded; it outlives the account,
    and ``subscriber_id`` may name a subscriber deleted since.
    """

    id: int
    at: float
    event: str
    address: str
    starts_at: float
    expires_at: float
    hw_address: str | None = None
    client_id: str | None = None
    hostname: str | None = None
    subscriber_id: int | None = None
    username: str | None = None
    circuit_id: str | None = None
    remote_id: str | None = None
    pool: str | None = None
    service: LeaseService = LeaseService.DHCP


@dataclass(frozen=True, slots=True)
class Lease6HistoryEntry:
    """One event in the append-only history of a DHCPv6 binding's prefix (see ``Lease6``), with
    the subscriber's name when the event was recorded (as ``LeaseHistoryEntry``)."""

    id: int
    at: float
    event: str  # granted, renewed, released, expired, declined
    prefix: str
    kind: Lease6Kind
    state: LeaseState
    duid: str
    iaid: int
    starts_at: float
    preferred_until: float
    expires_at: float
    subscriber_id: int | None = None
    username: str | None = None
    hostname: str | None = None
    link: str | None = None
    pool: str | None = None
    remote_id: str | None = None
    interface_id: str | None = None


@dataclass(frozen=True, slots=True)
class Evidence:
    """A stored row an attribution rests on: its table, id, time and what it records."""

    table: str  # lease_history | dhcp6_lease_history | radius_sessions | accounting_records
    id: int
    at: float
    event: str  # granted, renewed, released, expired; session; start, interim (a count), stop...


@dataclass(frozen=True, slots=True)
class Holding:
    """Who held an address over a span of time, and how we know: a DHCP lease, an address a
    RADIUS session took from ispd's pools (``radius-pool``), a session whose NAS reported the
    address (``radius-session``), or a DHCPv6 binding (``dhcp6``). ``ends_at`` is when the
    holding ended or ends (a lease's expiry); None for a session still open. For an IPv6
    question ``address`` is the address or prefix asked about, and ``prefix`` the session's or
    binding's prefix that held it: the one on the subscriber's link (``prefix_kind`` framed:
    Framed-IPv6-Prefix), the one delegated to its router (delegated: Delegated-IPv6-Prefix, or
    a DHCPv6 IA_PD), the one address its NAS gave it on the link (framed-address:
    Framed-IPv6-Address), or the one address ispd's DHCPv6 server gave it (address: an IA_NA).
    A DHCPv6 holding's ``client_id`` is the client's DUID, its ``circuit_id`` the relay's
    Interface-ID (the line) and its ``remote_id`` the relay's Remote-ID."""

    address: str
    source: str  # dhcp | radius-pool | radius-session | dhcp6
    starts_at: float
    ends_at: float | None
    subscriber_id: int | None = None
    username: str | None = None
    hw_address: str | None = None  # DHCP chaddr, or Calling-Station-Id for a session
    client_id: str | None = None
    hostname: str | None = None
    circuit_id: str | None = None
    remote_id: str | None = None
    pool: str | None = None
    nas_address: str | None = None
    nas_identifier: str | None = None
    nas_port_id: str | None = None
    acct_session_id: str | None = None
    terminate_cause: str | None = None
    evidence: tuple[Evidence, ...] = ()
    prefix: str | None = None  # IPv6 only, in the compressed lower-case form
    # framed | delegated | framed-address (Framed-IPv6-Address: no length) | address (IA_NA: no length)
    prefix_kind: str | None = None


@dataclass(frozen=True, slots=True)
class RadiusSession:
    """One session a NAS accounts for; counters are the NAS's last totals (octets with their
    Gigawords folded in)."""

    id: int
    nas_address: str
    acct_session_id: str
    username: str
    started_at: float
    updated_at: float
    subscriber_id: int | None = None
    nas_identifier: str | None = None
    nas_client: str | None = None  # the [[radius.client]] whose packets carried it (CoA goes by its secret)
    framed_ip: str | None = None
    framed_ipv6_prefix: str | None = None
    delegated_ipv6_prefix: str | None = None
    framed_ipv6_address: str | None = None  # RFC 6911: the subscriber's address on the link (DHCPv6 IA_NA)
    calling_station_id: str | None = None
    called_station_id: str | None = None
    nas_port_id: str | None = None
    stopped_at: float | None = None
    terminate_cause: str | None = None
    interim_interval: int | None = None
    input_octets: int = 0
    output_octets: int = 0
    input_packets: int = 0
    output_packets: int = 0
    session_time_seconds: int = 0
    # What the NAS reports itself as (NAS-IP-Address, NAS-IPv6-Address) when that is not
    # nas_address, the source its packets come from (outside the client's network: not believed
    # for keeping sessions). A Disconnect or CoA names the NAS so (RFC 5176 §3): accel-ppp NAKs
    # one whose NAS-IP-Address is not its own.
    nas_ip_address: str | None = None

    def ipv6_networks(self) -> list[str]:
        """Its IPv6 networks, each once: its prefixes, and its address as a /128."""
        found = [self.framed_ipv6_prefix, self.delegated_ipv6_prefix,
                 f"{self.framed_ipv6_address}/128" if self.framed_ipv6_address else None]
        return list(dict.fromkeys(n for n in found if n))

    @property
    def is_open(self) -> bool:
        return self.stopped_at is None


class AccountingStatus(StrEnum):
    """Acct-Status-Type (RFC 2866 §5.1) values the store acts on."""

    START = "start"
    STOP = "stop"
    INTERIM_UPDATE = "interim-update"
    ACCOUNTING_ON = "accounting-on"
    ACCOUNTING_OFF = "accounting-off"
    OTHER = "other"  # Tunnel-*, Failed, ...: kept in the history, no session changes


@dataclass(frozen=True, slots=True)
class AccountingRecord:
    """One Accounting-Request, as the store is asked to record it. ``at`` is when the event
    happened (arrival minus Acct-Delay-Time); counters are None when the request had none."""

    at: float
    status: AccountingStatus
    nas_address: str
    acct_session_id: str | None = None
    username: str | None = None
    subscriber_id: int | None = None
    nas_identifier: str | None = None
    nas_client: str | None = None
    framed_ip: str | None = None
    framed_ipv6_prefix: str | None = None
    delegated_ipv6_prefix: str | None = None
    framed_ipv6_address: str | None = None
    calling_station_id: str | None = None
    called_station_id: str | None = None
    nas_port_id: str | None = None
    input_octets: int | None = None
    output_octets: int | None = None
    input_packets: int | None = None
    output_packets: int | None = None
    session_time_seconds: int | None = None
    terminate_cause: str | None = None
    interim_interval: int | None = None
    packet: bytes | None = None  # the request as received, for the append-only record
    # Fill in what an open session lacks (subscriber, addresses, interval) from this record; a
    # caller that knows the session already has them clears it and saves the store a statement.
    fill_in: bool = True
    nas_ip_address: str | None = None  # as RadiusSession's: the NAS's own word, when not nas_address


class AccountingOutcome(StrEnum):
    STARTED = "started"  # a new open session
    UPDATED = "updated"  # an open session's counters
    STOPPED = "stopped"
    DUPLICATE = "duplicate"  # nothing new: a retransmission, or a late copy of what is known
    REOPENED = "reopened"  # reports on a session closed as stale: it was not gone after all
    NAS_RESTARTED = "nas-restarted"  # Accounting-On/Off: the NAS's open sessions were closed
    IGNORED = "ignored"  # a record the store keeps but cannot tie to a session (no Acct-Session-Id)


@dataclass(frozen=True, slots=True)
class AccountingResult:
    outcome: AccountingOutcome
    # The session the record opened (STARTED, or STOPPED when no Start came before); for an
    # update or stop of an open session, None: its holder knows it, and re-reading it would cost
    # more than the update.
    session: RadiusSession | None = None
    closed: tuple[RadiusSession, ...] = ()  # sessions Accounting-On/Off closed
    # The subscriber the store found by the record's login when the record named none (the
    # caller's view of the subscribers lags the store); None otherwise.
    subscriber_id: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """What a subscriber used over a period (from session counters, each octet counted once).
    Input and output as the NAS counts them: input from the subscriber (upload), output to
    them (download)."""

    input_octets: int = 0
    output_octets: int = 0
    session_seconds: int = 0


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """One subscriber's usage on one UTC day."""

    subscriber_id: int
    username: str | None
    day: str  # YYYY-MM-DD
    input_octets: int = 0
    output_octets: int = 0
    session_seconds: int = 0


@dataclass(frozen=True, slots=True)
class CoARecord:
    """A Disconnect-Request or CoA-Request sent to a NAS, and its outcome."""

    id: int
    at: float
    kind: str  # disconnect | coa
    nas_address: str
    result: str  # ack | nak | timeout | error
    attempts: int
    completed_at: float
    session_id: int | None = None
    subscriber_id: int | None = None
    reason: str | None = None
    error_cause: int | None = None


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    subscriber_id: int
    address: str
    quota_bytes: int | None = None
    created_at: float = 0.0


MAX_ALIAS_TARGETS = 50


@dataclass(frozen=True, slots=True)
class MailAlias:
    """Mail to ``address`` goes to each of ``targets``: mailboxes of ours, or addresses elsewhere."""

    id: int
    subscriber_id: int
    address: str
    targets: tuple[str, ...]
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class AliasStillNaming:
    """An alias whose targets include mailboxes just deleted: its mail now reaches
    ``remaining_targets`` only (delivery skips a target that is no mailbox), and is refused when
    none remain. The alias itself stays until someone deletes or redoes it."""

    address: str
    subscriber_id: int  # the alias's owner (any subscriber, not only the mailboxes')
    gone_targets: tuple[str, ...]
    remaining_targets: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MailRecipient:
    """What mail delivery needs to know about one mailbox, read in one query."""

    mailbox: Mailbox
    username: str
    status: SubscriberStatus
    # The mailbox's own quota, else its subscriber's plan's; None: no limit.
    quota_bytes: int | None


class QueuedRecipientState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    address: str
    state: QueuedRecipientState = QueuedRecipientState.PENDING
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class QueuedMail:
    """A message in the outbound queue; its bytes are the spool file named by ``id``."""

    id: str
    created_at: float
    sender: str  # "" for a bounce
    size: int
    next_attempt_at: float
    recipients: tuple[QueuedRecipient, ...]
    subscriber_id: int | None = None
    attempts: int = 0
    last_error: str | None = None

    @property
    def pending(self) -> list[str]:
        return [r.address for r in self.recipients if r.state is QueuedRecipientState.PENDING]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin change, in the append-only audit log (also how other processes learn of it)."""

    id: int
    at: float
    actor: str
    action: str
    subject_kind: str
    subject_id: int | None
    subject_name: str | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SubscriberOverview:
    """The helpdesk view: everything the store knows about one subscriber."""

    subscriber: Subscriber
    plan: Plan | None
    credentials: StoredCredentials
    reservations: list[Reservation]
    leases: list[Lease]
    sessions: list[RadiusSession]
    mailboxes: list[Mailbox]
    audit: list[AuditEntry]
    usage_this_month: Usage = field(default_factory=Usage)
    coa: list[CoARecord] = field(default_factory=list)
    # When the subscriber entered its status (from the audit log); None when retention has
    # removed the entry that says.
    status_since: float | None = None
    aliases: list[MailAlias] = field(default_factory=list)
    # Its DHCPv6 bindings: addresses and delegated prefixes, the latest first.
    bindings6: list[Lease6] = field(default_factory=list)
