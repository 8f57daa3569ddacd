"""What the RADIUS engine knows of subscribers, held in memory: who may log in, with what.

Theory of operation. A NAS asks at rates a store round trip per request could not serve, so
the service loads every subscriber's status, plan, password forms and RADIUS-relevant
reservations once (``Directory.load``) and then follows the store's events, re-reading one
subscriber when an event names it (``Directory.replace``/``remove``). A login name is the
subscriber's username or the key of one of its ``username`` reservations (a PPP login of its
own, usually with a fixed address and prefix). A login that a reservation names has a ``Fixed``
(empty when the reservation fixes nothing) that knows that reservation's id; a username no
reservation names has none. A plan's prefix pool reserves a prefix for a login whose reservation
fixes none: into that reservation, or a new one of the username. The store keeps
the two apart (a reservation cannot take a subscriber's username, nor a new subscriber a reserved
login); should a store from before that rule hold both, the username wins, so that nobody logs in
as another subscriber.

Passwords: PAP gets the password itself, checked by ``ispd.credentials.PasswordChecker``
against the cheapest form the store keeps (the mail service's AUTH checks the same way).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv6Network

from ispd.reservedspace import ReservedSpace
from ispd.store.models import Plan, Reservation, ReservationKind, StoredCredentials, Subscriber

_LINE_KINDS = frozenset({ReservationKind.MAC, ReservationKind.CIRCUIT_ID, ReservationKind.REMOTE_ID})


@dataclass(frozen=True, slots=True)
class Fixed:
    """What one reservation fixes for a login or a line: an IPv4 address (Framed-IP-Address), an
    IPv6 address (Framed-IPv6-Address) and a prefix to delegate (Delegated-IPv6-Prefix), canonical
    texts. The store keeps them in one IPAM with DHCP's pools, which never give them to anyone else."""

    address: str | None = None
    address6: str | None = None
    prefix6: str | None = None
    # The login's reservation (or the line's) that fixes these: where a pool's prefix is
    # reserved for a login that has none. Not part of what goes out, so not of equality either.
    # The reservation, not only its number: the prefix must go into this one (its subscriber,
    # kind and key, as the store checks) or none, whatever the store holds by then.
    reservation: Reservation | None = field(default=None, compare=False)

    @staticmethod
    def of(reservation: Reservation) -> Fixed | None:
        if reservation.address is None and reservation.address6 is None and reservation.prefix6 is None:
            return None
        return Fixed(reservation.address, reservation.address6, reservation.prefix6, reservation)

    @property
    def reservation_id(self) -> int | None:
        return self.reservation.id if self.reservation is not None else None

    @property
    def complete(self) -> bool:
        return self.address is not None and self.address6 is not None and self.prefix6 is not None

    def over(self, other: Fixed | None) -> Fixed:
        """This one's, and what ``other`` fixes that this one leaves open: a login's reservation
        with only a prefix still gets its line's IPv4 address, and one with only an address its
        line's prefix."""
        if other is None or self.complete:
            return self
        return Fixed(self.address or other.address, self.address6 or other.address6, self.prefix6 or other.prefix6,
                     self.reservation)


@dataclass(slots=True)
class AuthSubject:
    subscriber: Subscriber
    plan: Plan | None
    credentials: StoredCredentials
    # Line reservations with a fixed address or prefix, by (kind, canonical key).
    addressed: dict[tuple[str, str], Fixed] = field(default_factory=dict)
    # Its lines: the (kind, key) of its MAC, circuit-id and remote-id reservations (line_lock).
    lines: set[tuple[str, str]] = field(default_factory=set)
    # Encoded reply attributes by (NAS kind, walled garden, what a reservation fixes): built once per subject.
    reply_cache: dict[tuple[str, bool, Fixed | None], bytes] = field(default_factory=dict)
    # Past its plan's monthly quota this month (the RADIUS service keeps it; it resets with the month).
    over_quota: bool = False
    # Its reservations with a fixed IPv6 address or prefix, by id: what it holds in reserved_space.
    reserved_ipv6: list[int] = field(default_factory=list)

    @property
    def id(self) -> int:
        return self.subscriber.id


class Directory:
    def __init__(self) -> None:
        self.subjects: dict[int, AuthSubject] = {}
        # login → (subject, what a reservation fixes for that login): the subscribers' usernames
        # (and what is reserved for one's own username), then the other reserved logins.
        self.usernames: dict[str, tuple[AuthSubject, Fixed | None]] = {}
        self.reserved_logins: dict[str, tuple[AuthSubject, Fixed | None]] = {}
        self.plans: dict[int, Plan] = {}
        self.reserved: dict[str, int] = {}  # fixed address → its subscriber (never given from a pool)
        # Every reservation's fixed IPv6 address and prefix, as DHCPv6's pools keep them: a
        # prefix pool skips a candidate that is, holds or lies in one without asking the store.
        self.reserved_space = ReservedSpace((), ())

    def load(self, subscribers: Iterable[Subscriber], plans: Iterable[Plan],
             credentials: dict[int, StoredCredentials], reservations: Iterable[Reservation]) -> None:
        self.plans = {plan.id: plan for plan in plans}
        by_subscriber: dict[int, list[Reservation]] = {}
        for reservation in reservations:
            by_subscriber.setdefault(reservation.subscriber_id, []).append(reservation)
        self.subjects.clear()
        self.usernames.clear()
        self.reserved_logins.clear()
        self.reserved.clear()
        self.reserved_space = ReservedSpace(self.reserved_space.lengths, ())  # (the lengths asked about stay)
        for subscriber in subscribers:
            self._add(subscriber, credentials.get(subscriber.id, StoredCredentials()),
                      by_subscriber.get(subscriber.id, []))

    def replace(self, subscriber: Subscriber, credentials: StoredCredentials,
                reservations: Iterable[Reservation], plan: Plan | None) -> None:
        """A subscriber as the store has it now (after any change to it)."""
        if plan is not None:
            self.plans[plan.id] = plan
        self.remove(subscriber.id)
        self._add(subscriber, credentials, list(reservations))

    def remove(self, subscriber_id: int) -> None:
        subject = self.subjects.pop(subscriber_id, None)
        if subject is None:
            return
        fixed: list[Fixed | None] = list(subject.addressed.values())
        own = self.usernames.get(subject.subscriber.username)
        if own is not None and own[0] is subject:
            del self.usernames[subject.subscriber.username]
            fixed.append(own[1])
        for login, (holder, reserved) in list(self.reserved_logins.items()):
            if holder is subject:
                del self.reserved_logins[login]
                fixed.append(reserved)
        for address in {f.address for f in fixed if f is not None and f.address is not None}:
            if self.reserved.get(address) == subscriber_id:
                del self.reserved[address]
        for reservation_id in subject.reserved_ipv6:
            self.reserved_space.remove(reservation_id)

    def _add(self, subscriber: Subscriber, credentials: StoredCredentials, reservations: list[Reservation]) -> None:
        plan = self.plans.get(subscriber.plan_id) if subscriber.plan_id is not None else None
        subject = AuthSubject(subscriber, plan, credentials)
        self.subjects[subscriber.id] = subject
        self.usernames[subscriber.username] = (subject, None)
        for reservation in reservations:
            if reservation.address is not None:
                self.reserved[reservation.address] = subscriber.id
            if reservation.prefix6 is not None or reservation.address6 is not None:
                self.reserved_space.add(reservation)
                subject.reserved_ipv6.append(reservation.id)
            fixed = Fixed.of(reservation)
            if reservation.kind == ReservationKind.USERNAME:
                logins = self.usernames if reservation.key == subscriber.username else self.reserved_logins
                logins[reservation.key] = (subject, fixed or Fixed(reservation=reservation))
            else:
                if reservation.kind in _LINE_KINDS:  # (a DHCP client-id is no line a NAS reports)
                    subject.lines.add((str(reservation.kind), reservation.key))
                if fixed is not None:
                    subject.addressed[(str(reservation.kind), reservation.key)] = fixed

    def find(self, login: str) -> tuple[AuthSubject, Fixed | None] | None:
        """Who logs in with ``login``, and what a reservation fixes for that login."""
        return self.usernames.get(login) or self.reserved_logins.get(login)

    def by_id(self, subscriber_id: int) -> AuthSubject | None:
        return self.subjects.get(subscriber_id)

    def last_reserved_prefix(self, first: int, last: int) -> int | None:
        """The highest reserved network that starts within ``first``..``last``."""
        return self.reserved_space.last_within(first, last)

    def prefix_reserved(self, network: int, length: int) -> bool:
        """Whether a reservation's fixed prefix or address overlaps this prefix (``network``/
        ``length``, as integers): is it, holds it (a shorter one reserved by hand) or lies inside
        it (the store checks again)."""
        if length not in self.reserved_space.lengths:  # (a pool's length: indexed once, then lookups)
            self.reserved_space.ask_about(length)
        return self.reserved_space.taken_bits(network, length, None)

    def reserved_for_another(self, network: IPv6Network, subscriber_id: int | None) -> bool:
        """Whether a network a NAS reports for ``subscriber_id``'s session overlaps another
        subscriber's fixed prefix or address. Its length indexed once, as a pool's: a NAS's /64
        Framed-IPv6-Prefix, of no length a pool or a reservation has, walked every reservation
        (12 ms a Start with 20,000 reserved prefixes, on the event loop)."""
        if network.prefixlen not in self.reserved_space.lengths:
            self.reserved_space.ask_about(network.prefixlen)
        return self.reserved_space.taken(network, None, subscriber_id)


