"""The SQLite backend's address ledger: one row per address in ``leases``, whichever service holds it.

Theory of operation. DHCP and RADIUS may hand out addresses from one pool; the store, not either
service's memory, decides who gets an address, inside the writer's transaction (so the decision
and the write are one step, also across processes sharing the file):

- ``refused_dhcp_writes``: a DHCP lease on an address that a RADIUS session holds (a live
  ``radius`` row) is refused; the DHCP server withholds its ACK and the client is NAKed or offered
  another address.
- ``claim_address``: a RADIUS session takes the first candidate nobody else holds (or that the
  same holder has already) and that is no other subscriber's reserved address; candidates found
  held are reported with their expiry, so the service's view of the pool catches up. (The
  service leaves reserved addresses out of its candidates, but learns of a reservation only at
  its next poll of the store: one made just before a login must not go to that login.)
- ``renew_claims`` moves the expiry of addresses still in use (their sessions are open);
  ``release_claims`` ends them (their sessions stopped). Both touch only the holder's own rows.

Every grant and release goes into ``lease_history`` with its service, like DHCP's, so "who had
this address at that time" has one answer for both.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import replace

from ispd.dhcp.identifiers import normalize_key
from ispd.store.models import AddressClaim, ClaimResult, Lease, LeaseService, LeaseState, ReservationKind

_HELD_ROW = "SELECT state, expires_at, service, client_id, starts_at FROM leases WHERE address = ?"
_RESERVED_FOR = "SELECT subscriber_id FROM reservations WHERE address = ?"
_UPSERT = (  # the columns of record_leases' rows, in order
    "INSERT INTO leases (address, state, starts_at, expires_at, hw_address, client_id, hostname,"
    " subscriber_id, circuit_id, remote_id, pool, service) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (address) DO UPDATE SET state = excluded.state, starts_at = excluded.starts_at,"
    " expires_at = excluded.expires_at, hw_address = excluded.hw_address, client_id = excluded.client_id,"
    " hostname = excluded.hostname, subscriber_id = excluded.subscriber_id, circuit_id = excluded.circuit_id,"
    " remote_id = excluded.remote_id, pool = excluded.pool, service = excluded.service")
_HISTORY_INSERT = (
    "INSERT INTO lease_history (at, event, address, starts_at, expires_at, hw_address, client_id, hostname,"
    " subscriber_id, circuit_id, remote_id, pool, service, username) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def lease_from_row(row: sqlite3.Row) -> Lease:
    return Lease(
        address=row["address"], state=LeaseState(row["state"]), starts_at=row["starts_at"],
        expires_at=row["expires_at"], hw_address=row["hw_address"], client_id=row["client_id"],
        hostname=row["hostname"], subscriber_id=row["subscriber_id"], circuit_id=row["circuit_id"],
        remote_id=row["remote_id"], pool=row["pool"], service=LeaseService(row["service"]),
    )


def _is_held(state: str, expires_at: float, now: float) -> bool:
    return state in (LeaseState.BOUND, LeaseState.DECLINED) and expires_at > now


def refused_dhcp_writes(conn: sqlite3.Connection, addresses: Sequence[str], now: float) -> dict[str, float]:
    """The addresses among ``addresses`` that a RADIUS session holds, and until when."""
    refused: dict[str, float] = {}
    for start in range(0, len(addresses), 500):  # SQLite's limit on bound parameters
        chunk = addresses[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for address, expires_at in conn.execute(
                f"SELECT address, expires_at FROM leases WHERE address IN ({marks}) AND service = 'radius'"
                " AND state = 'bound' AND expires_at > ?", (*chunk, now)):
            refused[address] = expires_at
    return refused


def username_of(conn: sqlite3.Connection, subscriber_id: int | None) -> str | None:
    if subscriber_id is None:
        return None
    row = conn.execute("SELECT username FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
    return row[0] if row else None


def record_leases(conn: sqlite3.Connection, changes: Sequence[tuple[Lease, str]], now: float) -> None:
    """Make each lease its address's row and append it to the history (``event``), with the
    subscriber's name as it is now (a subscriber since deleted: neither id nor name)."""
    usernames: dict[int, str | None] = {}
    current, history = [], []
    for lease, event in changes:
        sid = lease.subscriber_id
        if sid is not None and sid not in usernames:
            usernames[sid] = username_of(conn, sid)
        username = usernames.get(sid) if sid is not None else None
        values = (lease.address, str(lease.state), lease.starts_at, lease.expires_at, lease.hw_address,
                  lease.client_id, lease.hostname, sid if username else None, lease.circuit_id, lease.remote_id,
                  lease.pool, str(lease.service))
        current.append(values)
        history.append((now, event, values[0], *values[2:], username))
    conn.executemany(_UPSERT, current)
    conn.executemany(_HISTORY_INSERT, history)


def claim_address(conn: sqlite3.Connection, claim: AddressClaim, now: float) -> ClaimResult:
    taken: list[tuple[str, float]] = []
    for address in claim.candidates:
        reserved = conn.execute(_RESERVED_FOR, (address,)).fetchone()
        if reserved is not None and reserved[0] != claim.subscriber_id:
            continue  # another subscriber's fixed address (a NAS reporting it: a conflict, logged)
        row = conn.execute(_HELD_ROW, (address,)).fetchone()
        held = row is not None and _is_held(row[0], row[1], now)
        renewal = held and row[2] == LeaseService.RADIUS and row[3] == claim.holder and row[0] == LeaseState.BOUND
        if held and not renewal:
            taken.append((address, row[1]))
            continue
        lease = Lease(address, LeaseState.BOUND, row[4] if renewal else now,
                      max(claim.expires_at, row[1]) if renewal else claim.expires_at,
                      hw_address=claim.hw_address, client_id=claim.holder, subscriber_id=claim.subscriber_id,
                      circuit_id=claim.circuit_id, pool=claim.pool, service=LeaseService.RADIUS)
        record_leases(conn, [(lease, "renewed" if renewal else "granted")], now)
        return ClaimResult(lease, tuple(taken))
    return ClaimResult(None, tuple(taken))


def renew_claims(conn: sqlite3.Connection, holds: Sequence[tuple[str, str]], expires_at: float) -> list[str]:
    """Move the expiry of each (address, holder); the addresses that holder no longer has."""
    lost = []
    for address, holder in holds:
        cursor = conn.execute(
            "UPDATE leases SET expires_at = MAX(expires_at, ?) WHERE address = ? AND service = 'radius'"
            " AND client_id = ? AND state = 'bound'", (expires_at, address, holder))
        if not cursor.rowcount:
            lost.append(address)
    return lost


def release_claims(conn: sqlite3.Connection, holds: Sequence[tuple[str, str]], now: float) -> list[Lease]:
    """End each (address, holder) that still holds its address; the leases as they ended."""
    released = []
    for address, holder in holds:
        row = conn.execute("SELECT * FROM leases WHERE address = ? AND service = 'radius' AND client_id = ?"
                           " AND state = 'bound'", (address, holder)).fetchone()
        if row is not None:
            lease = lease_from_row(row)
            released.append(replace(lease, state=LeaseState.RELEASED, expires_at=min(lease.expires_at, now)))
    record_leases(conn, [(lease, "released") for lease in released], now)
    return released


def session_of_the_reserved(session: sqlite3.Row, kind: ReservationKind, key: str) -> bool:
    """Whether an open session of the reservation's subscriber is under the login, or on the
    line, that the reservation of ``kind`` and ``key`` names (making the address it has fixed)."""
    if kind == ReservationKind.USERNAME:
        return bool(session["login"] == key)
    lines = {session["nas_port_id"], session["calling_station_id"]}
    with contextlib.suppress(ValueError, TypeError):
        lines.add(normalize_key("mac", session["calling_station_id"]))
    return kind in (ReservationKind.MAC, ReservationKind.CIRCUIT_ID, ReservationKind.REMOTE_ID) and key in lines
