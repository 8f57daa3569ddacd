"""The SQLite backend's checks on a reservation's fixed IPv6 address and prefix (migration 0016).

A DHCPv6 server delegates a reserved prefix to one client and routes it there: two reservations
whose prefixes overlap (a /48 and a /56 inside it) would each claim part of the other's, and a
fixed address inside another subscriber's prefix would be routed to that subscriber. Equal texts
the UNIQUE constraints refuse; overlap the texts cannot answer, so each reservation also keeps its
address and prefix as networks in integers (``ipv6_networks``), and the checks are index ranges
on those, one per stored prefix length, as ``who`` asks them.

Refused: an address6 already reserved; a prefix6 overlapping any reservation's prefix6 (the
subscriber's own too: it would be delegated twice); an address6 inside another subscriber's
prefix6, and a prefix6 holding another subscriber's address6. A subscriber's own address inside
its own prefix is its business. Also refused, as for IPv4 (``sqlite._refuse_an_address_in_use``):
an address6 or prefix6 that overlaps what DHCPv6 has given another client right now, the
subscriber's own included. RADIUS hands a reserved address or prefix out as it is
(Framed-IPv6-Address, Delegated-IPv6-Prefix) while the DHCPv6 client keeps its binding until its
next renewal, so both would have it. The bindings of the device or line being reserved are not
another client's. So is one an open RADIUS session has (its reservation deleted, it keeps its
prefix until it logs in again), but for the login's or line's own sessions.
"""

from __future__ import annotations

import sqlite3
import time
from ipaddress import IPv6Network

from ispd.store.errors import Conflict
from ispd.store.ipv6_networks import overlap_ranges, stored_network
from ispd.store.models import Lease6Kind, ReservationKind
from ispd.store.sqlite_addresses import session_of_the_reserved, username_of
from ispd.store.sqlite_attribution import dhcp6_live_overlapping_query, ipv6_overlapping_query

_HOLDER = "SELECT r.*, s.username FROM reservations r JOIN subscribers s ON s.id = r.subscriber_id WHERE "


def network_columns(address6: str | None, prefix6: str | None) -> tuple[int | None, ...]:
    """address6_net_hi, address6_net_lo, prefix6_length, prefix6_net_hi, prefix6_net_lo of a
    reservation (NULL where it has no address or prefix)."""
    address = stored_network(address6) if address6 is not None else None
    prefix = stored_network(prefix6) if prefix6 is not None else None
    return (*(address[1:] if address else (None, None)), *(prefix if prefix else (None, None, None)))


def _holder(row: sqlite3.Row) -> str:
    return f"{row['username']} ({row['kind']} {row['key']}, reservation #{row['id']})"


def _prefixes_overlapping(conn: sqlite3.Connection, question: IPv6Network) -> sqlite3.Row | None:
    """A reservation whose prefix6 overlaps ``question`` (contains it, is it or lies inside it)."""
    high_ranges, low_ranges = overlap_ranges(question)
    for length, lowest, highest in high_ranges:
        row: sqlite3.Row | None = conn.execute(
            _HOLDER + "r.prefix6 IS NOT NULL AND r.prefix6_length = ? AND r.prefix6_net_hi BETWEEN ? AND ?"
            " ORDER BY r.id LIMIT 1", (length, lowest, highest)).fetchone()
        if row is not None:
            return row
    for length, net_hi, lowest, highest in low_ranges:
        row = conn.execute(
            _HOLDER + "r.prefix6 IS NOT NULL AND r.prefix6_length = ? AND r.prefix6_net_hi = ?"
            " AND r.prefix6_net_lo BETWEEN ? AND ? ORDER BY r.id LIMIT 1", (length, net_hi, lowest, highest)).fetchone()
        if row is not None:
            return row
    return None


def _address_inside(conn: sqlite3.Connection, prefix: IPv6Network, subscriber_id: int) -> sqlite3.Row | None:
    """Another subscriber's reservation whose address6 lies inside ``prefix``."""
    high_ranges, low_ranges = overlap_ranges(prefix)
    condition = "r.address6_net_hi BETWEEN ? AND ?"
    parameters: list[int]
    if prefix.prefixlen < 64:  # (addresses are /128s: the ranges of that length)
        [(_, *parameters)] = [r for r in high_ranges if r[0] == 128]
    else:
        [(_, *parameters)] = [r for r in low_ranges if r[0] == 128]
        condition = "r.address6_net_hi = ? AND r.address6_net_lo BETWEEN ? AND ?"
    row: sqlite3.Row | None = conn.execute(
        _HOLDER + f"r.address6 IS NOT NULL AND {condition} AND r.subscriber_id != ? ORDER BY r.id LIMIT 1",
        (*parameters, subscriber_id)).fetchone()
    return row


def refuse_ipv6_conflicts(conn: sqlite3.Connection, subscriber_id: int, address6: str | None,
                          prefix6: str | None, *, now: float, kind: ReservationKind, key: str) -> None:
    """Raise ``Conflict`` naming the holder if ``address6`` or ``prefix6`` (canonical texts) of
    the reservation of ``kind`` and ``key`` clash with a reservation kept, or with a binding
    someone else has now (see the module comment)."""
    if address6 is not None:
        taken = conn.execute(_HOLDER + "r.address6 = ?", (address6,)).fetchone()
        if taken is not None:
            raise Conflict(f"IPv6 address {address6} is already reserved for {_holder(taken)}")
        taken = _prefixes_overlapping(conn, IPv6Network(address6))
        if taken is not None and taken["subscriber_id"] != subscriber_id:
            raise Conflict(f"IPv6 address {address6} lies inside prefix {taken['prefix6']}, reserved for "
                           f"{_holder(taken)}")
    if prefix6 is not None:
        network = IPv6Network(prefix6)
        taken = _prefixes_overlapping(conn, network)
        if taken is not None:
            relation = ("is already reserved" if taken["prefix6"] == prefix6
                        else f"overlaps {taken['prefix6']}, reserved")
            raise Conflict(f"prefix {prefix6} {relation} for {_holder(taken)}")
        taken = _address_inside(conn, network, subscriber_id)
        if taken is not None:
            raise Conflict(f"prefix {prefix6} holds IPv6 address {taken['address6']}, reserved for {_holder(taken)}")
    for what, value in ((f"IPv6 address {address6}", address6), (f"prefix {prefix6}", prefix6)):
        if value is not None:
            _refuse_a_binding_in_use(conn, what, IPv6Network(value), now, kind, key)
            _refuse_a_session_s(conn, what, IPv6Network(value), now, subscriber_id, kind, key)


# The binding column that holds each kind of device or line key, as DHCPv6 writes it.
_DEVICE_COLUMNS = {ReservationKind.DUID: "duid", ReservationKind.CIRCUIT_ID: "interface_id",
                   ReservationKind.REMOTE_ID: "remote_id"}


def _refuse_a_binding_in_use(conn: sqlite3.Connection, what: str, question: IPv6Network, now: float,
                             kind: ReservationKind, key: str) -> None:
    sql, parameters = dhcp6_live_overlapping_query(question, now)
    column = _DEVICE_COLUMNS.get(kind)
    for row in conn.execute(sql, parameters):
        if column is not None and row[column] == key:
            continue
        given = row["prefix"].removesuffix("/128") if row["kind"] == Lease6Kind.ADDRESS else row["prefix"]
        holder = username_of(conn, row["subscriber_id"]) or f"DUID {row['duid']}"
        until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(row["expires_at"]))
        raise Conflict(f"{what} is in use: DHCPv6 gave {given} to {holder} until {until}; reserve it once that "
                       "ends, or choose another")


def _refuse_a_session_s(conn: sqlite3.Connection, what: str, question: IPv6Network, now: float, subscriber_id: int,
                        kind: ReservationKind, key: str) -> None:
    """As for an IPv4 address (``sqlite._refuse_an_address_in_use``): an open RADIUS session's
    prefix or address (one its reservation no longer fixes, kept until it logs in again; a NAS's
    own) is in use, the subscriber's own other lines' included. Reserved now, RADIUS would hand it
    out beside that session (a prefix pool's next login, or this reservation's), and DHCPv6 skip
    it no more than RADIUS does."""
    sql, parameters = ipv6_overlapping_query(question, now, now)
    ids = sorted({row["id"] for row in conn.execute(sql, parameters) if row["stopped_at"] is None})
    if not ids:
        return
    sessions = conn.execute(
        "SELECT s.id, s.username AS login, s.subscriber_id, s.calling_station_id, s.nas_port_id, s.nas_address,"
        " u.username FROM radius_sessions s LEFT JOIN subscribers u ON u.id = s.subscriber_id"
        f" WHERE s.id IN ({', '.join('?' * len(ids))}) ORDER BY s.id", ids).fetchall()
    # (Sessions of the login or line being reserved may have it: it makes its own prefix fixed.)
    if any(row["subscriber_id"] != subscriber_id for row in sessions) or not any(
            session_of_the_reserved(row, kind, key) for row in sessions):
        session = next((row for row in sessions if row["subscriber_id"] != subscriber_id), sessions[0])
        raise Conflict(f"{what} is in use: RADIUS session #{session['id']} of "
                       f"{session['username'] or session['login']} on {session['nas_address']} has it; "
                       f"reserve it once that ends (`ispd session disconnect {session['id']}` ends it now), "
                       "or choose another")
