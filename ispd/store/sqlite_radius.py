"""The SQLite backend's RADIUS tables: sessions, accounting, usage and CoA outcomes.

Theory of operation. ``apply_accounting`` turns one Accounting-Request into rows, inside the
writer's transaction (the caller batches a receive burst into one job, so a burst shares one
commit and one fsync). A session is found by (NAS address, Acct-Session-Id), newest first:

- Start opens a session, unless that session is already known and started within
  ``SAME_START_SECONDS`` of this one (a retransmission, or a copy that arrives after its Stop);
  an open session with the same id that started long before is closed as superseded (a NAS
  that reuses ids after a reboot without Accounting-On).
- Interim-Update raises an open session's counters; with no session it opens one (the Start
  was lost), and it changes nothing once the session is stopped (a late copy).
- Stop closes an open session with its final counters, or records a closed one when the Start
  and every interim were lost; a second Stop changes nothing.
- Accounting-On/Off closes every open session of that NAS (it restarted: they are gone).

Counters only ever grow: a retransmitted or reordered request with smaller totals changes
nothing, and what a subscriber used (``usage_daily``) grows by the difference between the new
and the stored totals, so no octet is counted twice whatever the NAS resends. Every request is
also appended to ``accounting_records`` with its outcome, duplicates included.
"""

from __future__ import annotations

import calendar
import sqlite3
import time
from collections.abc import Sequence

from ispd.store.models import (
    AccountingOutcome,
    AccountingRecord,
    AccountingResult,
    AccountingStatus,
    CoARecord,
    RadiusSession,
    Usage,
)

SAME_START_SECONDS = 300.0
SUPERSEDED_CAUSE = "Superseded"
NAS_RESTART_CAUSE = "NAS-Reboot"


def session_from_row(row: sqlite3.Row) -> RadiusSession:
    return RadiusSession(
        id=row["id"], nas_address=row["nas_address"], acct_session_id=row["acct_session_id"],
        username=row["username"], started_at=row["started_at"], updated_at=row["updated_at"],
        subscriber_id=row["subscriber_id"], nas_identifier=row["nas_identifier"], framed_ip=row["framed_ip"],
        framed_ipv6_prefix=row["framed_ipv6_prefix"], delegated_ipv6_prefix=row["delegated_ipv6_prefix"],
        calling_station_id=row["calling_station_id"], called_station_id=row["called_station_id"],
        nas_port_id=row["nas_port_id"], stopped_at=row["stopped_at"], terminate_cause=row["terminate_cause"],
        interim_interval=row["interim_interval"], input_octets=row["input_octets"],
        output_octets=row["output_octets"], input_packets=row["input_packets"],
        output_packets=row["output_packets"], session_time_seconds=row["session_time_seconds"],
    )


def coa_from_row(row: sqlite3.Row) -> CoARecord:
    return CoARecord(
        id=row["id"], at=row["at"], kind=row["kind"], nas_address=row["nas_address"], result=row["result"],
        attempts=row["attempts"], completed_at=row["completed_at"], session_id=row["session_id"],
        subscriber_id=row["subscriber_id"], reason=row["reason"], error_cause=row["error_cause"],
    )


def utc_day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _session(conn: sqlite3.Connection, session_id: int) -> RadiusSession:
    return session_from_row(conn.execute("SELECT * FROM radius_sessions WHERE id = ?", (session_id,)).fetchone())


def _append_record(conn: sqlite3.Connection, record: AccountingRecord, session_id: int | None,
                   outcome: AccountingOutcome) -> None:
    conn.execute(
        "INSERT INTO accounting_records (at, session_id, nas_address, status_type, acct_session_id, username,"
        " subscriber_id, framed_ip, input_octets, output_octets, session_time_seconds, outcome, attributes)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record.at, session_id, record.nas_address, str(record.status), record.acct_session_id, record.username,
         record.subscriber_id, record.framed_ip, record.input_octets, record.output_octets,
         record.session_time_seconds, str(outcome), record.attributes),
    )


def _open_session(conn: sqlite3.Connection, record: AccountingRecord, *, stopped: bool) -> int:
    started_at = record.at - (record.session_time_seconds or 0)
    cursor = conn.execute(
        "INSERT INTO radius_sessions (nas_address, nas_identifier, acct_session_id, username, subscriber_id,"
        " framed_ip, framed_ipv6_prefix, delegated_ipv6_prefix, calling_station_id, called_station_id, nas_port_id,"
        " started_at, updated_at, stopped_at, terminate_cause, interim_interval, input_octets, output_octets,"
        " input_packets, output_packets, session_time_seconds)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record.nas_address, record.nas_identifier, record.acct_session_id, record.username or "",
         record.subscriber_id, record.framed_ip, record.framed_ipv6_prefix, record.delegated_ipv6_prefix,
         record.calling_station_id, record.called_station_id, record.nas_port_id, started_at, record.at,
         record.at if stopped else None, record.terminate_cause if stopped else None, record.interim_interval,
         record.input_octets or 0, record.output_octets or 0, record.input_packets or 0, record.output_packets or 0,
         record.session_time_seconds or 0),
    )
    session_id = int(cursor.lastrowid or 0)
    _add_usage(conn, record.subscriber_id, record.at, record.input_octets or 0, record.output_octets or 0,
               record.session_time_seconds or 0)
    return session_id


def _add_usage(conn: sqlite3.Connection, subscriber_id: int | None, at: float, input_octets: int,
               output_octets: int, seconds: int) -> None:
    if subscriber_id is None or not (input_octets or output_octets or seconds):
        return
    conn.execute(
        "INSERT INTO usage_daily (subscriber_id, day, input_octets, output_octets, session_seconds)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (subscriber_id, day) DO UPDATE SET"
        " input_octets = input_octets + excluded.input_octets,"
        " output_octets = output_octets + excluded.output_octets,"
        " session_seconds = session_seconds + excluded.session_seconds",
        (subscriber_id, utc_day(at), input_octets, output_octets, seconds),
    )


def _advance(conn: sqlite3.Connection, row: sqlite3.Row, record: AccountingRecord, *, stop: bool) -> None:
    """Raise an open session's counters to the record's (never lower them) and count the growth."""
    def grown(column: str, value: int | None) -> int:
        old = int(row[column])
        return max(old, value) if value is not None else old

    totals = {column: grown(column, getattr(record, column)) for column in
              ("input_octets", "output_octets", "input_packets", "output_packets", "session_time_seconds")}
    subscriber_id = row["subscriber_id"] if row["subscriber_id"] is not None else record.subscriber_id
    conn.execute(
        "UPDATE radius_sessions SET input_octets = ?, output_octets = ?, input_packets = ?, output_packets = ?,"
        " session_time_seconds = ?, updated_at = MAX(updated_at, ?), subscriber_id = ?,"
        " framed_ip = COALESCE(?, framed_ip), framed_ipv6_prefix = COALESCE(?, framed_ipv6_prefix),"
        " delegated_ipv6_prefix = COALESCE(?, delegated_ipv6_prefix),"
        " interim_interval = COALESCE(?, interim_interval),"
        " stopped_at = CASE WHEN ? THEN ? ELSE stopped_at END,"
        " terminate_cause = CASE WHEN ? THEN ? ELSE terminate_cause END WHERE id = ?",
        (totals["input_octets"], totals["output_octets"], totals["input_packets"], totals["output_packets"],
         totals["session_time_seconds"], record.at, subscriber_id, record.framed_ip, record.framed_ipv6_prefix,
         record.delegated_ipv6_prefix, record.interim_interval, stop, record.at, stop, record.terminate_cause,
         row["id"]),
    )
    _add_usage(conn, subscriber_id, record.at, totals["input_octets"] - row["input_octets"],
               totals["output_octets"] - row["output_octets"],
               totals["session_time_seconds"] - row["session_time_seconds"])


def apply_accounting(conn: sqlite3.Connection, record: AccountingRecord) -> AccountingResult:
    status = record.status
    if status in (AccountingStatus.ACCOUNTING_ON, AccountingStatus.ACCOUNTING_OFF):
        return _nas_restarted(conn, record)
    if not record.acct_session_id:
        _append_record(conn, record, None, AccountingOutcome.IGNORED)
        return AccountingResult(AccountingOutcome.IGNORED)
    row = conn.execute(
        "SELECT * FROM radius_sessions WHERE nas_address = ? AND acct_session_id = ? ORDER BY id DESC LIMIT 1",
        (record.nas_address, record.acct_session_id),
    ).fetchone()
    outcome: AccountingOutcome
    if status == AccountingStatus.START:
        started_at = record.at - (record.session_time_seconds or 0)
        if row is not None and abs(row["started_at"] - started_at) < SAME_START_SECONDS:
            session_id, outcome = int(row["id"]), AccountingOutcome.DUPLICATE
        else:
            if row is not None and row["stopped_at"] is None:
                conn.execute("UPDATE radius_sessions SET stopped_at = ?, terminate_cause = ? WHERE id = ?",
                             (record.at, SUPERSEDED_CAUSE, row["id"]))
            session_id, outcome = _open_session(conn, record, stopped=False), AccountingOutcome.STARTED
    elif row is None:  # the Start (and every interim) was lost: the session as far as it is known
        stopped = status == AccountingStatus.STOP
        session_id = _open_session(conn, record, stopped=stopped)
        outcome = AccountingOutcome.STOPPED if stopped else AccountingOutcome.STARTED
    elif row["stopped_at"] is not None:
        session_id, outcome = int(row["id"]), AccountingOutcome.DUPLICATE
    else:
        stop = status == AccountingStatus.STOP
        _advance(conn, row, record, stop=stop)
        session_id = int(row["id"])
        outcome = AccountingOutcome.STOPPED if stop else AccountingOutcome.UPDATED
    _append_record(conn, record, session_id, outcome)
    return AccountingResult(outcome, _session(conn, session_id))


def _nas_restarted(conn: sqlite3.Connection, record: AccountingRecord) -> AccountingResult:
    rows = conn.execute("SELECT id FROM radius_sessions WHERE nas_address = ? AND stopped_at IS NULL",
                        (record.nas_address,)).fetchall()
    conn.execute(
        "UPDATE radius_sessions SET stopped_at = ?, terminate_cause = ?, updated_at = MAX(updated_at, ?)"
        " WHERE nas_address = ? AND stopped_at IS NULL",
        (record.at, NAS_RESTART_CAUSE, record.at, record.nas_address),
    )
    _append_record(conn, record, None, AccountingOutcome.NAS_RESTARTED)
    closed = tuple(_session(conn, int(r["id"])) for r in rows)
    return AccountingResult(AccountingOutcome.NAS_RESTARTED, closed=closed)


def close_sessions(conn: sqlite3.Connection, session_ids: Sequence[int], at: float, cause: str) -> list[RadiusSession]:
    closed = []
    for session_id in session_ids:
        cursor = conn.execute(
            "UPDATE radius_sessions SET stopped_at = ?, terminate_cause = ? WHERE id = ? AND stopped_at IS NULL",
            (at, cause, session_id),
        )
        if cursor.rowcount:
            closed.append(_session(conn, session_id))
    return closed


def usage_between(conn: sqlite3.Connection, subscriber_id: int, since: float, until: float) -> Usage:
    """Usage on the UTC days from the one of ``since`` to the one of ``until``, both included."""
    row = conn.execute(
        "SELECT COALESCE(SUM(input_octets), 0), COALESCE(SUM(output_octets), 0), COALESCE(SUM(session_seconds), 0)"
        " FROM usage_daily WHERE subscriber_id = ? AND day >= ? AND day <= ?",
        (subscriber_id, utc_day(since), utc_day(until)),
    ).fetchone()
    return Usage(int(row[0]), int(row[1]), int(row[2]))


def month_start(at: float) -> float:
    """The first instant (UTC) of the month ``at`` falls in."""
    t = time.gmtime(at)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))
