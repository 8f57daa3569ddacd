"""Attribution: which subscriber held an address at a moment (or over a span), from the
append-only history, with the rows that show it.

Two independent records answer it. The lease history holds every grant, renewal and end of a
DHCP lease or of an address a RADIUS session took from ispd's pools: one holding is the rows
of one lease (same address, start and client) from its grant to its last row, whose expiry is
when it ended (a release or an expiry writes the end as the expiry). The RADIUS sessions hold
what each NAS accounted: an address from a session's start to its stop (open: until now).
Both are listed when both exist; agreeing rows from two sources are the strongest answer.

An IPv6 address or prefix is held by the sessions whose Framed-IPv6-Prefix (the subscriber's
link) or Delegated-IPv6-Prefix (its router's networks) overlaps it: contains the address, or
contains or lies inside the prefix asked about (an abuse report's /64 inside a delegated /56; a
/48 asked about that holds several subscribers' /56s); and by those whose Framed-IPv6-Address
is the address, or lies inside the prefix. ispd's pools hand out no IPv6, so there
is no lease history to read. Containment is not a question SQL answers on prefix texts, and the
texts are as the NAS or an importer wrote them (compressed or not, either case, bits set past the
length), so SQL narrows the sessions to those with a prefix that overlap the span and each text
is read once with the ipaddress module and compared as integers.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from ipaddress import IPv6Network

from ispd.store.models import Evidence, Holding

_NOT_HOLDING = ("declined",)  # a client that declined an address never held it
_SESSION_EVIDENCE_LIMIT = 20  # accounting records named per session; the rest are counted
_IDS_PER_SELECT = 500  # well under SQLite's limit on bound parameters


def who(conn: sqlite3.Connection, address: str, since: float, until: float) -> list[Holding]:
    """The holdings of ``address`` (an IPv4 address, or an IPv6 address or prefix; canonical, as
    ``validation.attributable_text`` gives it) that overlap [since, until], oldest first."""
    if ":" in address:
        holdings = _ipv6_session_holdings(conn, address, since, until)
    else:
        holdings = _lease_holdings(conn, address, since, until) + _session_holdings(conn, address, since, until)
    holdings.sort(key=lambda h: (h.starts_at, h.source))
    return holdings


def _lease_holdings(conn: sqlite3.Connection, address: str, since: float, until: float) -> list[Holding]:
    rows = conn.execute(
        "SELECT * FROM lease_history WHERE address = ? AND starts_at <= ? ORDER BY id", (address, until)).fetchall()
    groups: dict[tuple[object, ...], list[sqlite3.Row]] = {}
    for row in rows:
        key = (row["service"], row["starts_at"], row["hw_address"], row["client_id"])
        groups.setdefault(key, []).append(row)
    holdings = []
    for group in groups.values():
        if all(r["event"] in _NOT_HOLDING for r in group):
            continue  # declined when offered: never held
        last = group[-1]
        # A grant the client then declined (the address was in use): it held nothing from then
        # on, whatever the grant's expiry said.
        declined = next((r for r in group if r["event"] in _NOT_HOLDING), None)
        ends_at = declined["at"] if declined is not None else last["expires_at"]
        if ends_at < since:
            continue
        named = next((r for r in reversed(group) if r["username"] is not None), last)
        holdings.append(Holding(
            address=address, source="dhcp" if last["service"] == "dhcp" else "radius-pool",
            starts_at=group[0]["starts_at"], ends_at=ends_at, subscriber_id=named["subscriber_id"],
            username=named["username"], hw_address=last["hw_address"], client_id=last["client_id"],
            hostname=_last(group, "hostname"), circuit_id=_last(group, "circuit_id"),
            remote_id=_last(group, "remote_id"), pool=last["pool"],
            evidence=tuple(Evidence("lease_history", r["id"], r["at"], r["event"]) for r in group)))
    return holdings


def _session_holdings(conn: sqlite3.Connection, address: str, since: float, until: float) -> list[Holding]:
    rows = conn.execute(
        "SELECT * FROM radius_sessions WHERE framed_ip = ? AND started_at <= ?"
        " AND (stopped_at IS NULL OR stopped_at >= ?) ORDER BY started_at, id", (address, until, since)).fetchall()
    holdings = []
    for row in rows:
        evidence = [Evidence("radius_sessions", row["id"], row["started_at"], "session")]
        evidence += _accounting_evidence(conn, row)
        holdings.append(Holding(
            address=address, source="radius-session", starts_at=row["started_at"], ends_at=row["stopped_at"],
            subscriber_id=row["subscriber_id"], username=row["username"], hw_address=row["calling_station_id"],
            nas_address=row["nas_address"], nas_identifier=row["nas_identifier"], nas_port_id=row["nas_port_id"],
            acct_session_id=row["acct_session_id"], terminate_cause=row["terminate_cause"],
            evidence=tuple(evidence)))
    return holdings


# The span's sessions with an IPv6 prefix, by the partial index radius_sessions_ipv6 (the OR term
# must be written as the index's WHERE is for SQLite to use it).
_IPV6_CANDIDATES = (
    "SELECT id, framed_ipv6_prefix, delegated_ipv6_prefix, framed_ipv6_address FROM radius_sessions"
    " WHERE (framed_ipv6_prefix IS NOT NULL OR delegated_ipv6_prefix IS NOT NULL OR framed_ipv6_address IS NOT NULL)"
    " AND started_at <= ? AND (stopped_at IS NULL OR stopped_at >= ?)")


def _ipv6_session_holdings(conn: sqlite3.Connection, question: str, since: float,
                           until: float) -> list[Holding]:
    asked = IPv6Network(question)
    asked_bits, asked_length = int(asked.network_address), asked.prefixlen
    read: dict[str, tuple[int, int, str] | None] = {}  # stored text -> as _read_prefix; the same few recur

    def overlapping(text: str | None) -> str | None:
        """The canonical text of a stored prefix that overlaps the question."""
        if text is None:
            return None
        if text not in read:
            read[text] = _read_prefix(text)
        prefix = read[text]
        if prefix is None:
            return None
        bits, length, canonical = prefix
        shift = 128 - min(length, asked_length)  # aligned prefixes overlap iff the shorter holds the longer
        return canonical if bits >> shift == asked_bits >> shift else None

    # A session whose prefixes both overlap (a wide prefix asked about) holds it twice over: one
    # holding each, so that each says which prefix it was. (An address is a prefix of 128 bits.)
    matched: dict[int, list[tuple[str, str]]] = {}
    for session_id, framed, delegated, address in conn.execute(_IPV6_CANDIDATES, (until, since)):
        for prefix, kind in ((overlapping(framed), "framed"), (overlapping(delegated), "delegated"),
                             (overlapping(address), "framed-address")):
            if prefix is not None:
                matched.setdefault(session_id, []).append((prefix, kind))
    ids, rows = list(matched), []
    for first in range(0, len(ids), _IDS_PER_SELECT):
        chosen = ids[first:first + _IDS_PER_SELECT]
        rows += conn.execute(f"SELECT * FROM radius_sessions WHERE id IN ({', '.join('?' * len(chosen))})",
                             chosen).fetchall()
    rows.sort(key=lambda r: (r["started_at"], r["id"]))
    holdings = []
    for row in rows:
        evidence = [Evidence("radius_sessions", row["id"], row["started_at"], "session")]
        evidence += _accounting_evidence(conn, row)
        for prefix, kind in matched[row["id"]]:
            holdings.append(Holding(
                address=question, source="radius-session", starts_at=row["started_at"], ends_at=row["stopped_at"],
                subscriber_id=row["subscriber_id"], username=row["username"], hw_address=row["calling_station_id"],
                nas_address=row["nas_address"], nas_identifier=row["nas_identifier"],
                nas_port_id=row["nas_port_id"], acct_session_id=row["acct_session_id"],
                terminate_cause=row["terminate_cause"], evidence=tuple(evidence), prefix=prefix, prefix_kind=kind))
    return holdings


def _read_prefix(text: str) -> tuple[int, int, str] | None:
    """A stored IPv6 prefix or address as (network bits, length, compressed lower-case text; an
    address's without a length), whatever form it was written in; None for a text that is not
    one (it answers nothing)."""
    try:
        prefix = IPv6Network(text.strip(), strict=False)
    except ValueError:
        return None
    canonical = str(prefix.network_address) if prefix.prefixlen == 128 else str(prefix)
    return int(prefix.network_address), prefix.prefixlen, canonical


def _accounting_evidence(conn: sqlite3.Connection, session: sqlite3.Row) -> list[Evidence]:
    """The session's Accounting-Requests as recorded: Start and Stop by id, interims counted (a
    month of five-minute interims would drown the answer)."""
    end = session["stopped_at"] if session["stopped_at"] is not None else math.inf
    rows = conn.execute(
        "SELECT id, at, status_type FROM accounting_records WHERE nas_address = ? AND acct_session_id = ?"
        " AND at >= ? AND at <= ? ORDER BY id", (session["nas_address"], session["acct_session_id"],
                                                  session["started_at"] - 1, end + 1)).fetchall()
    named = [r for r in rows if r["status_type"] != "interim-update"][:_SESSION_EVIDENCE_LIMIT]
    evidence = [Evidence("accounting_records", r["id"], r["at"], r["status_type"]) for r in named]
    interims = [r for r in rows if r["status_type"] == "interim-update"]
    if interims:
        evidence.append(Evidence("accounting_records", interims[-1]["id"], interims[-1]["at"],
                                 f"interim-update x{len(interims)}"))
    return evidence


def _last(rows: Iterable[sqlite3.Row], column: str) -> str | None:
    value = None
    for row in rows:
        if row[column] is not None:
            value = row[column]
    return value
