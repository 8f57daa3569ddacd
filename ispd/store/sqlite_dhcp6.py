"""The SQLite backend's DHCPv6 bindings: one row per prefix ever leased in ``dhcp6_leases``, every
change appended to ``dhcp6_lease_history`` (migration 0015), as DHCPv4's leases are kept.

The DHCPv6 server decides who gets what from its own view (it loads every row at start), so unlike
the DHCPv4 ledger (``sqlite_addresses``) nothing here arbitrates: a write makes each binding its
prefix's row and appends it to the history, with the prefix also as its network in integers
(``ipv6_networks``) for ``who`` (``sqlite_attribution``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import lru_cache

from ispd.store.errors import InvalidValue
from ispd.store.ipv6_networks import stored_network
from ispd.store.models import Lease6, Lease6HistoryEntry, Lease6Kind, LeaseState
from ispd.store.sqlite_addresses import username_of
from ispd.store.validation import dhcp6_prefix_text

_UPSERT = (
    "INSERT INTO dhcp6_leases (prefix, kind, state, duid, iaid, starts_at, preferred_until, expires_at,"
    " subscriber_id, hostname, link, pool, remote_id, interface_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (prefix) DO UPDATE SET kind = excluded.kind, state = excluded.state, duid = excluded.duid,"
    " iaid = excluded.iaid, starts_at = excluded.starts_at, preferred_until = excluded.preferred_until,"
    " expires_at = excluded.expires_at, subscriber_id = excluded.subscriber_id, hostname = excluded.hostname,"
    " link = excluded.link, pool = excluded.pool, remote_id = excluded.remote_id,"
    " interface_id = excluded.interface_id")
_HISTORY_INSERT = (
    "INSERT INTO dhcp6_lease_history (at, event, prefix, kind, state, duid, iaid, starts_at, preferred_until,"
    " expires_at, subscriber_id, hostname, link, pool, remote_id, interface_id, username, length, net_hi, net_lo)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def lease6_from_row(row: sqlite3.Row) -> Lease6:
    return Lease6(
        prefix=row["prefix"], kind=Lease6Kind(row["kind"]), state=LeaseState(row["state"]), duid=row["duid"],
        iaid=row["iaid"], starts_at=row["starts_at"], preferred_until=row["preferred_until"],
        expires_at=row["expires_at"], subscriber_id=row["subscriber_id"], hostname=row["hostname"],
        link=row["link"], pool=row["pool"], remote_id=row["remote_id"], interface_id=row["interface_id"])


def history_entry_from_row(row: sqlite3.Row) -> Lease6HistoryEntry:
    return Lease6HistoryEntry(
        id=row["id"], at=row["at"], event=row["event"], prefix=row["prefix"], kind=Lease6Kind(row["kind"]),
        state=LeaseState(row["state"]), duid=row["duid"], iaid=row["iaid"], starts_at=row["starts_at"],
        preferred_until=row["preferred_until"], expires_at=row["expires_at"], subscriber_id=row["subscriber_id"],
        username=row["username"], hostname=row["hostname"], link=row["link"], pool=row["pool"],
        remote_id=row["remote_id"], interface_id=row["interface_id"])


def listing_order(lease: Lease6) -> tuple[str, int, int, int]:
    """Addresses (IA_NA) before delegated prefixes (IA_PD), each in address order (the text's
    order puts 2001:db8:100:: before 2001:db8:1::)."""
    network = stored_network(lease.prefix)
    length, net_hi, net_lo = network if network is not None else (0, 0, 0)
    return str(lease.kind), net_hi, net_lo, length


# A renewal writes the prefix its grant wrote: most checks are a dictionary lookup. (In the
# writer's thread, not on the event loop: the first check of a text costs ~13 us.)
@lru_cache(maxsize=65536)
def _canonical_prefix(text: str) -> tuple[str, tuple[int, int, int]]:
    try:
        prefix = dhcp6_prefix_text(text, strict=True)
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None
    network = stored_network(prefix)
    assert network is not None  # a canonical prefix is one
    return prefix, network


def record_leases6(conn: sqlite3.Connection, changes: Sequence[tuple[Lease6, str]], now: float) -> None:
    """Make each binding its prefix's row and append it to the history (``event``), with the
    subscriber's name as it is now; a subscriber since deleted is written as neither id nor name
    (as DHCPv4's ``record_leases``: the binding stands, the foreign key would refuse the id).
    Each prefix is kept in its canonical text; one that is no IPv6 network raises
    ``InvalidValue`` before anything is written."""
    usernames: dict[int, str | None] = {}
    current, history = [], []
    for lease, event in changes:
        prefix, network = _canonical_prefix(lease.prefix)
        sid = lease.subscriber_id
        if sid is not None and sid not in usernames:
            usernames[sid] = username_of(conn, sid)
        username = usernames.get(sid) if sid is not None else None
        values = (prefix, str(lease.kind), str(lease.state), lease.duid, lease.iaid, lease.starts_at,
                  lease.preferred_until, lease.expires_at, sid if username else None, lease.hostname, lease.link,
                  lease.pool, lease.remote_id, lease.interface_id)
        current.append(values)
        history.append((now, event, *values, username, *network))
    conn.executemany(_UPSERT, current)
    conn.executemany(_HISTORY_INSERT, history)
