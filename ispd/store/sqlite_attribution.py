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
/48 asked about that holds several subscribers' /56s); and by those whose Framed-IPv6-Address is
the address, or lies inside the prefix. ispd's DHCPv6 server keeps its own history
(``dhcp6_lease_history``): a binding holds it from its grant to its last row, as a DHCP lease
does, when its address (IA_NA) or delegated prefix (IA_PD) overlaps it the same way. Containment
is not a question SQL answers on prefix texts (as the NAS or an importer wrote them: compressed
or not, either case, bits set past the length), so each is also kept as its network in integers
(``ipv6_networks``), and the question is a few index ranges on those: its cost grows with the
sessions (and bindings) that hold the address, not with all that are kept.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv6Network

from ispd.store.ipv6_networks import network_text, overlap_ranges
from ispd.store.models import Evidence, Holding

_NOT_HOLDING = ("declined",)  # a client that declined an address never held it
_SESSION_EVIDENCE_LIMIT = 20  # accounting records named per session; the rest are counted


def who(conn: sqlite3.Connection, address: str, since: float, until: float) -> list[Holding]:
    """The holdings of ``address`` (an IPv4 address, or an IPv6 address or prefix; canonical, as
    ``validation.attributable_text`` gives it) that overlap [since, until], oldest first."""
    if ":" in address:
        holdings = _ipv6_session_holdings(conn, address, since, until) + _dhcp6_holdings(conn, address, since, until)
    else:
        holdings = _lease_holdings(conn, address, since, until) + _session_holdings(conn, address, since, until)
    holdings.sort(key=lambda h: (h.starts_at, h.source))
    return holdings


def _held_spans(rows: Iterable[sqlite3.Row], key: Callable[[sqlite3.Row], tuple[object, ...]],
                since: float) -> list[tuple[list[sqlite3.Row], float, sqlite3.Row]]:
    """The rows of each lease (by ``key``; rows in the order written) that held its address at
    some time from ``since`` on: (its rows, when it ended or ends, the row that names its
    subscriber). Shared by DHCP's and DHCPv6's history, so both read the same way."""
    groups: dict[tuple[object, ...], list[sqlite3.Row]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    spans = []
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
        spans.append((group, ends_at, next((r for r in reversed(group) if r["username"] is not None), last)))
    return spans


def _lease_holdings(conn: sqlite3.Connection, address: str, since: float, until: float) -> list[Holding]:
    rows = conn.execute(
        "SELECT * FROM lease_history WHERE address = ? AND starts_at <= ? ORDER BY id", (address, until)).fetchall()
    holdings = []
    for group, ends_at, named in _held_spans(
            rows, lambda r: (r["service"], r["starts_at"], r["hw_address"], r["client_id"]), since):
        last = group[-1]
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


# The rows of a networks table (radius_session_ipv6, dhcp6_lease_history) that overlap the
# question, by one seek in its (length, net_hi, net_lo) index per stored length (see
# ipv6_networks); for sessions, then those of the span, each read by its id. CROSS JOIN keeps that
# order in SQLite: the few ranges outside, the index inside. (The join's condition is in WHERE:
# PostgreSQL's CROSS JOIN takes no ON.)
_BY_HIGH = ("high(length, hi_min, hi_max) AS (VALUES {ranges})",
            "SELECT n.* FROM high CROSS JOIN {table} n"
            " WHERE n.length = high.length AND n.net_hi BETWEEN high.hi_min AND high.hi_max")
_BY_LOW = ("low(length, hi, lo_min, lo_max) AS (VALUES {ranges})",
           "SELECT n.* FROM low CROSS JOIN {table} n"
           " WHERE n.length = low.length AND n.net_hi = low.hi AND n.net_lo BETWEEN low.lo_min AND low.lo_max")
_IPV6_OVERLAPPING = (
    "WITH {ranges} SELECT s.*, m.kind AS network_kind, m.length AS network_length, m.net_hi, m.net_lo"
    " FROM ({matching}) AS m CROSS JOIN radius_sessions s"
    " WHERE s.id = m.session_id AND s.started_at <= ? AND (s.stopped_at IS NULL OR s.stopped_at >= ?)")
_DHCP6_OVERLAPPING = "WITH {ranges} SELECT * FROM ({matching}) AS m WHERE starts_at <= ? ORDER BY id"
_KIND_ORDER = {"framed": 0, "delegated": 1, "framed-address": 2}
_DHCP6_PREFIX_KINDS = {"na": "address", "pd": "delegated"}


def _overlapping(question: IPv6Network, table: str) -> tuple[str, str, list[int]]:
    """The WITH clause of the ranges, the SELECT of ``table``'s rows in them, and its parameters."""
    high_ranges, low_ranges = overlap_ranges(question)
    tables, selects, parameters = [], [], []
    by_either: list[tuple[tuple[str, str], Sequence[tuple[int, ...]]]] = [
        (_BY_HIGH, high_ranges), (_BY_LOW, low_ranges)]
    for (ranges_table, select), ranges in by_either:
        if ranges:  # (a question shorter than /64 shares 64 bits with no network: no low ranges)
            row = f"({', '.join('?' * len(ranges[0]))})"
            tables.append(ranges_table.format(ranges=", ".join([row] * len(ranges))))
            selects.append(select.format(table=table))
            parameters += [value for one in ranges for value in one]
    return ", ".join(tables), " UNION ALL ".join(selects), parameters


def ipv6_overlapping_query(question: IPv6Network, since: float, until: float) -> tuple[str, list[float]]:
    """The statement and parameters that select the span's sessions holding ``question``."""
    ranges, matching, parameters = _overlapping(question, "radius_session_ipv6")
    return _IPV6_OVERLAPPING.format(ranges=ranges, matching=matching), [*parameters, until, since]


def dhcp6_overlapping_query(question: IPv6Network, until: float) -> tuple[str, list[float]]:
    """The statement and parameters that select the DHCPv6 history rows of the bindings whose
    prefix overlaps ``question`` and that started by ``until``, in the order written."""
    ranges, matching, parameters = _overlapping(question, "dhcp6_lease_history")
    return _DHCP6_OVERLAPPING.format(ranges=ranges, matching=matching), [*parameters, until]


# The bindings live at a moment whose prefix overlaps a question: found through their history's
# networks (a binding's own row keeps only its text), then read by prefix.
_DHCP6_LIVE_OVERLAPPING = (
    "WITH {ranges} SELECT l.* FROM dhcp6_leases l WHERE l.prefix IN (SELECT m.prefix FROM ({matching}) AS m)"
    " AND l.state = 'bound' AND l.expires_at > ? ORDER BY l.prefix")


def dhcp6_live_overlapping_query(question: IPv6Network, now: float) -> tuple[str, list[float]]:
    """The statement and parameters that select the DHCPv6 bindings live at ``now`` (rows of
    ``dhcp6_leases``) whose address or prefix overlaps ``question``."""
    ranges, matching, parameters = _overlapping(question, "dhcp6_lease_history")
    return _DHCP6_LIVE_OVERLAPPING.format(ranges=ranges, matching=matching), [*parameters, now]


def _dhcp6_holdings(conn: sqlite3.Connection, question: str, since: float, until: float) -> list[Holding]:
    # One holding per binding (prefix, kind, start and client's IA): a wide question may overlap
    # several prefixes, each its own.
    sql, parameters = dhcp6_overlapping_query(IPv6Network(question), until)
    rows = conn.execute(sql, parameters).fetchall()
    holdings = []
    for group, ends_at, named in _held_spans(
            rows, lambda r: (r["prefix"], r["kind"], r["starts_at"], r["duid"], r["iaid"]), since):
        last = group[-1]
        holdings.append(Holding(
            address=question, source="dhcp6", starts_at=group[0]["starts_at"], ends_at=ends_at,
            subscriber_id=named["subscriber_id"], username=named["username"], client_id=last["duid"],
            hostname=_last(group, "hostname"), circuit_id=_last(group, "interface_id"),
            remote_id=_last(group, "remote_id"), pool=last["pool"],
            evidence=tuple(Evidence("dhcp6_lease_history", r["id"], r["at"], r["event"]) for r in group),
            prefix=network_text(last["length"], last["net_hi"], last["net_lo"]),
            prefix_kind=_DHCP6_PREFIX_KINDS[last["kind"]]))
    return holdings


def _ipv6_session_holdings(conn: sqlite3.Connection, question: str, since: float,
                           until: float) -> list[Holding]:
    # A session whose prefixes both overlap (a wide prefix asked about) holds it twice over: one
    # holding each, so that each says which prefix it was. (An address is a prefix of 128 bits.)
    sql, parameters = ipv6_overlapping_query(IPv6Network(question), since, until)
    rows = sorted(conn.execute(sql, parameters),
                  key=lambda r: (r["started_at"], r["id"], _KIND_ORDER[r["network_kind"]]))
    holdings = []
    evidence: tuple[Evidence, ...] = ()
    for index, row in enumerate(rows):
        if index == 0 or rows[index - 1]["id"] != row["id"]:
            evidence = (Evidence("radius_sessions", row["id"], row["started_at"], "session"),
                        *_accounting_evidence(conn, row))
        holdings.append(Holding(
            address=question, source="radius-session", starts_at=row["started_at"], ends_at=row["stopped_at"],
            subscriber_id=row["subscriber_id"], username=row["username"], hw_address=row["calling_station_id"],
            nas_address=row["nas_address"], nas_identifier=row["nas_identifier"],
            nas_port_id=row["nas_port_id"], acct_session_id=row["acct_session_id"],
            terminate_cause=row["terminate_cause"], evidence=evidence,
            prefix=network_text(row["network_length"], row["net_hi"], row["net_lo"]),
            prefix_kind=row["network_kind"]))
    return holdings


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
