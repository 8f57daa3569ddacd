"""The SQLite backend's RADIUS tables: sessions, accounting, usage and CoA outcomes.

Theory of operation. ``record_accounting`` turns Accounting-Requests into rows, inside the
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
- An Interim-Update or Stop whose Acct-Session-Time puts its beginning ``SAME_START_SECONDS`` or
  more after the end of the last session under its id is not a late copy of that one: it makes
  up a session of its own (the id reused after a NAS restarted without Accounting-On, that
  session's Start lost), as a Start begun then would open one.
- Accounting-On/Off closes every open session of that NAS (it restarted: they are gone); one
  whose interims then show it alive after that time is reopened, as a stale one is.

A record that names no subscriber but a login (the RADIUS service's view of the subscribers
follows the store a poll behind) is the subscriber's whose username, else reserved login, it is,
found in the same transaction.

Counters only ever grow: a retransmitted or reordered request with smaller totals changes
nothing, and what a subscriber used (``usage_daily``) grows by the difference between the new
and the stored totals (triggers in the schema count it, inside SQLite), so no octet is counted
twice whatever the NAS resends. Every request is also appended to ``accounting_records`` with
its outcome and its bytes, duplicates included.
"""

from __future__ import annotations

import calendar
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import fields, replace
from typing import Any

from ispd.store.ipv6_networks import stored_network
from ispd.store.models import (
    AccountingOutcome,
    AccountingRecord,
    AccountingResult,
    AccountingStatus,
    CoARecord,
    DailyUsage,
    RadiusSession,
    Usage,
)

SAME_START_SECONDS = 300.0
SUPERSEDED_CAUSE = "Superseded"
NAS_RESTART_CAUSE = "NAS-Reboot"
STALE_CAUSE = "Stale-Session"  # closed by ispd, the NAS silent: reopened if it reports again
ADMIN_CLOSE_CAUSE = "Closed-By-Admin"  # ispd session close: as a stale one, reopened if its NAS reports again
# A Disconnect or CoA the NAS answered with a NAK, Error-Cause 503 (RFC 5176 §3.5: the session
# it names does not exist there): as a stale one, reopened if its NAS reports again.
NOT_ON_NAS_CAUSE = "Session-Context-Not-Found"
# Its NAS's client reported it from another of its addresses (BNGs of one client network moved
# it: a redundant pair's failover keeps its Acct-Session-Id): as a stale one, reopened if the
# old NAS reports it again.
MOVED_CAUSE = "Session-Moved"
# Closed by ispd alone: the NAS may still have it.
CLOSED_WITHOUT_NAS = (STALE_CAUSE, ADMIN_CLOSE_CAUSE, NOT_ON_NAS_CAUSE, MOVED_CAUSE)


# The session columns in the order of RadiusSession's fields: a row selected with them becomes a
# RadiusSession by position, without a lookup by name per column (the accounting hot path).
SESSION_COLUMNS = ", ".join(f.name for f in fields(RadiusSession))


def session_from_row(row: Sequence[Any]) -> RadiusSession:
    """A RadiusSession from a row of ``SESSION_COLUMNS``."""
    return RadiusSession(*row)


def coa_from_row(row: sqlite3.Row) -> CoARecord:
    return CoARecord(
        id=row["id"], at=row["at"], kind=row["kind"], nas_address=row["nas_address"], result=row["result"],
        attempts=row["attempts"], completed_at=row["completed_at"], session_id=row["session_id"],
        subscriber_id=row["subscriber_id"], reason=row["reason"], error_cause=row["error_cause"],
    )


def utc_day(at: float) -> int:
    """The day ``at`` falls in, as ``usage_daily`` counts them: days since 1970-01-01 UTC."""
    return int(at // 86400)


def usage_days(since: float, until: float) -> tuple[int, int]:
    """The first and last UTC day (``utc_day``) whose usage a span counts: the days it touches,
    but not the one it ends at the first instant of (after its start). A billing period written
    as from 2026-11-01 to 2026-12-01 is November's: counted with the day of December 1 too, that
    day would be billed again in December's period, which starts with it."""
    last = utc_day(until)
    if until > since and until == last * 86400:
        last -= 1
    return utc_day(since), last


_HISTORY_INSERT = (
    "INSERT INTO accounting_records (at, nas_address, status_type, acct_session_id, username,"
    " subscriber_id, framed_ip, input_octets, output_octets, session_time_seconds, outcome, packet)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# Columns in RadiusSession's field order after id (see _open_session).
_SESSION_INSERT = (
    f"INSERT INTO radius_sessions ({SESSION_COLUMNS.removeprefix('id, ')})"
    f" VALUES ({', '.join('?' * (len(fields(RadiusSession)) - 1))})")
# The open session's counters rise to the record's (never fall: MAX), and the usage triggers count
# the growth; one statement does the common case (an interim or stop for an open session). It
# sets no indexed column but stopped_at: SQLite rewrites the index entries of every column a SET
# names, changed or not. It returns nothing: a RETURNING clause costs more than the update (the
# service knows its open sessions).
_SESSION_ADVANCE = (
    "UPDATE radius_sessions SET input_octets = MAX(input_octets, COALESCE(?1, 0)),"
    " output_octets = MAX(output_octets, COALESCE(?2, 0)), input_packets = MAX(input_packets, COALESCE(?3, 0)),"
    " output_packets = MAX(output_packets, COALESCE(?4, 0)),"
    " session_time_seconds = MAX(session_time_seconds, COALESCE(?5, 0)), updated_at = MAX(updated_at, ?6),"
    " stopped_at = CASE WHEN ?7 != 0 THEN ?6 ELSE stopped_at END,"
    " terminate_cause = CASE WHEN ?7 != 0 THEN ?8 ELSE terminate_cause END"
    " WHERE nas_address = ?9 AND acct_session_id = ?10 AND stopped_at IS NULL"
    # Not another user's (the Stop of the session this one superseded under a reused id).
    " AND (?11 = '' OR username = '' OR username = ?11)")
# What a record may add to a session after its Start (an address learnt late, the subscriber):
# only when the record carries it and the session lacks it, so that the common case touches no
# indexed column.
_SESSION_FILL_IN = (
    "UPDATE radius_sessions SET subscriber_id = COALESCE(subscriber_id, ?1), framed_ip = COALESCE(framed_ip, ?2),"
    " framed_ipv6_prefix = COALESCE(framed_ipv6_prefix, ?3),"
    " delegated_ipv6_prefix = COALESCE(delegated_ipv6_prefix, ?4), interim_interval = COALESCE(interim_interval, ?5),"
    " framed_ipv6_address = COALESCE(framed_ipv6_address, ?8)"
    " WHERE id = (SELECT MAX(id) FROM radius_sessions WHERE nas_address = ?6 AND acct_session_id = ?7)"
    # Not another user's, as in _SESSION_ADVANCE: its growth would count against this one.
    " AND (?9 = '' OR username = '' OR username = ?9)"
    # (COALESCE(column, ?N) where ?N alone would do: a NULL parameter alone has no type for PostgreSQL.)
    " AND ((subscriber_id IS NULL AND COALESCE(subscriber_id, ?1) IS NOT NULL)"
    " OR (framed_ip IS NULL AND COALESCE(framed_ip, ?2) IS NOT NULL)"
    " OR (framed_ipv6_prefix IS NULL AND COALESCE(framed_ipv6_prefix, ?3) IS NOT NULL)"
    " OR (delegated_ipv6_prefix IS NULL AND COALESCE(delegated_ipv6_prefix, ?4) IS NOT NULL)"
    " OR (interim_interval IS NULL AND COALESCE(interim_interval, ?5) IS NOT NULL)"
    " OR (framed_ipv6_address IS NULL AND COALESCE(framed_ipv6_address, ?8) IS NOT NULL))")
# After a fill-in that changed the session, for a record that carries an IPv6 prefix or address:
# the texts the session now keeps (its own, if it had them: a text once set is never changed), to
# index those newly set. (Not a RETURNING on the fill-in: that costs every dual-stack interim,
# which carries its prefixes each time and changes nothing, ~3 µs.)
_SESSION_IPV6_TEXTS = (
    "SELECT id, framed_ipv6_prefix, delegated_ipv6_prefix, framed_ipv6_address FROM radius_sessions"
    " WHERE id = (SELECT MAX(id) FROM radius_sessions WHERE nas_address = ? AND acct_session_id = ?)")
# A session's IPv6 texts as networks in integers, for ``who`` (migration 0012, ipv6_networks).
# DO NOTHING: the network of a text the session already had is there already.
_NETWORK_INSERT = ("INSERT INTO radius_session_ipv6 (session_id, kind, length, net_hi, net_lo)"
                   " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
_SESSION_LATEST = ("SELECT id, nas_address, acct_session_id, username, started_at, updated_at, stopped_at,"
                   " terminate_cause, input_octets, output_octets, session_time_seconds FROM radius_sessions"
                   " WHERE nas_address = ? AND acct_session_id = ? ORDER BY id DESC LIMIT 1")
# A session closed as stale that its NAS reports on again: open again (an interim) or stopped by
# the NAS (a stop), its counters rising as usual.
_SESSION_REOPEN = (
    "UPDATE radius_sessions SET input_octets = MAX(input_octets, COALESCE(?1, 0)),"
    " output_octets = MAX(output_octets, COALESCE(?2, 0)), input_packets = MAX(input_packets, COALESCE(?3, 0)),"
    " output_packets = MAX(output_packets, COALESCE(?4, 0)),"
    " session_time_seconds = MAX(session_time_seconds, COALESCE(?5, 0)), updated_at = MAX(updated_at, ?6),"
    " stopped_at = CASE WHEN ?7 != 0 THEN ?6 ELSE NULL END,"
    " terminate_cause = CASE WHEN ?7 != 0 THEN COALESCE(?8, terminate_cause) ELSE NULL END"
    f" WHERE id = ?9 RETURNING {SESSION_COLUMNS}")


def _open_session(conn: sqlite3.Connection, record: AccountingRecord, *, stopped: bool) -> RadiusSession:
    # The row's values in RadiusSession's field order (id first), built once for the INSERT and
    # the object: the accounting hot path (no dataclasses.replace, ~5 µs a Start).
    values = (
        record.nas_address, record.acct_session_id or "", record.username or "",
        record.at - (record.session_time_seconds or 0), record.at, record.subscriber_id, record.nas_identifier,
        record.nas_client, record.framed_ip, record.framed_ipv6_prefix, record.delegated_ipv6_prefix,
        record.framed_ipv6_address, record.calling_station_id, record.called_station_id, record.nas_port_id,
        record.at if stopped else None, record.terminate_cause if stopped else None, record.interim_interval,
        record.input_octets or 0,
        record.output_octets or 0, record.input_packets or 0, record.output_packets or 0,
        record.session_time_seconds or 0, record.nas_ip_address)
    if isinstance(conn, sqlite3.Connection):  # lastrowid is free; a RETURNING costs each Start 2-3 us
        session_id = int(conn.execute(_SESSION_INSERT, values).lastrowid or 0)
    else:  # PostgreSQL: the id comes back with the insert, not in a round trip of its own
        session_id = int(conn.execute(_SESSION_INSERT + " RETURNING id", values).fetchone()[0])
    if _carries_ipv6(record):
        _index_networks(conn, session_id, record.framed_ipv6_prefix, record.delegated_ipv6_prefix,
                        record.framed_ipv6_address)
    return RadiusSession(session_id, *values)


def _carries_ipv6(record: AccountingRecord) -> bool:
    return (record.framed_ipv6_prefix is not None or record.delegated_ipv6_prefix is not None
            or record.framed_ipv6_address is not None)


def _index_networks(conn: sqlite3.Connection, session_id: int, framed: str | None, delegated: str | None,
                    address: str | None) -> None:
    rows = []
    for text, kind in ((framed, "framed"), (delegated, "delegated"), (address, "framed-address")):
        network = stored_network(text) if text is not None else None
        if network is not None:
            rows.append((session_id, kind, *network))
    conn.executemany(_NETWORK_INSERT, rows)


def _advance(conn: sqlite3.Connection, record: AccountingRecord, *, stop: bool) -> bool:
    """Whether an open session took the record."""
    if record.fill_in and (record.subscriber_id is not None or record.framed_ip is not None
                           or record.interim_interval is not None or _carries_ipv6(record)):
        # First: the usage triggers must see the subscriber of the growth the advance brings.
        filled = conn.execute(_SESSION_FILL_IN, (
            record.subscriber_id, record.framed_ip, record.framed_ipv6_prefix, record.delegated_ipv6_prefix,
            record.interim_interval, record.nas_address, record.acct_session_id, record.framed_ipv6_address,
            record.username or ""))
        # An interim that repeats what its session has changes no row, and indexes nothing.
        if filled.rowcount and _carries_ipv6(record):
            _index_networks(conn, *conn.execute(_SESSION_IPV6_TEXTS, (record.nas_address,
                                                                      record.acct_session_id)).fetchone())
    cursor = conn.execute(_SESSION_ADVANCE, (
        record.input_octets, record.output_octets, record.input_packets, record.output_packets,
        record.session_time_seconds, record.at, stop, record.terminate_cause, record.nas_address,
        record.acct_session_id, record.username or ""))
    return bool(cursor.rowcount)


# The subscriber a login names, as the RADIUS directory finds it (ispd.radius.directory): its
# username first, then a ``username`` reservation's key.
_LOGIN_SUBSCRIBER = (
    "SELECT COALESCE((SELECT id FROM subscribers WHERE username = ?1),"
    " (SELECT subscriber_id FROM reservations WHERE kind = 'username' AND key = ?1))")


def record_accounting(conn: sqlite3.Connection, records: Sequence[AccountingRecord]) -> list[AccountingResult]:
    """Apply ``records`` in order; the history rows go in with one statement at the end."""
    results, history = [], []
    for asked in records:
        record, resolved = asked, None
        if asked.subscriber_id is None and asked.username:
            # The caller's view of the subscribers follows the store a poll behind (a subscriber
            # the CLI added a moment ago): the login names them here, in this transaction, so
            # that the session, its usage and the history are theirs from the first record.
            resolved = conn.execute(_LOGIN_SUBSCRIBER, (asked.username,)).fetchone()[0]
            if resolved is not None:
                record = replace(asked, subscriber_id=resolved, fill_in=True)
        result = _apply(conn, record)
        if resolved is not None:
            result = replace(result, subscriber_id=resolved)
        results.append(result)
        history.append((record.at, record.nas_address, str(record.status), record.acct_session_id, record.username,
                        record.subscriber_id, record.framed_ip, record.input_octets, record.output_octets,
                        record.session_time_seconds, str(result.outcome), record.packet))
    conn.executemany(_HISTORY_INSERT, history)
    return results


def _apply(conn: sqlite3.Connection, record: AccountingRecord) -> AccountingResult:
    status = record.status
    if status in (AccountingStatus.ACCOUNTING_ON, AccountingStatus.ACCOUNTING_OFF):
        return _nas_restarted(conn, record)
    if not record.acct_session_id or status == AccountingStatus.OTHER:
        return AccountingResult(AccountingOutcome.IGNORED)
    if status != AccountingStatus.START:
        stop = status == AccountingStatus.STOP
        if _advance(conn, record, stop=stop):
            return AccountingResult(AccountingOutcome.STOPPED if stop else AccountingOutcome.UPDATED)
    latest = conn.execute(_SESSION_LATEST, (record.nas_address, record.acct_session_id)).fetchone()
    if status == AccountingStatus.START:
        started_at = record.at - (record.session_time_seconds or 0)
        if latest is not None and _a_copy_of(conn, latest, record, started_at):
            return AccountingResult(AccountingOutcome.DUPLICATE)
        if latest is not None and latest["stopped_at"] is None:
            conn.execute("UPDATE radius_sessions SET stopped_at = ?, terminate_cause = ? WHERE id = ?",
                         (record.at, SUPERSEDED_CAUSE, latest["id"]))
        return AccountingResult(AccountingOutcome.STARTED, _open_session(conn, record, stopped=False))
    if latest is not None and latest["terminate_cause"] in CLOSED_WITHOUT_NAS:
        if _begun_after(record, latest):
            # The same user's next session under the id (a NAS that went silent, then reused its
            # ids), its Start lost: a session of its own, not the closed one come back.
            return _made_up(conn, record)
        if not _another_user(record, latest):  # it was not gone after all
            return _reopen(conn, record, latest["id"])
        # Another user's under a reused id: not that session back (its usage counted to the
        # closed session's user, and the subscriber it is shown without a session); below.
    if latest is not None and latest["terminate_cause"] == NAS_RESTART_CAUSE \
            and record.session_time_seconds is not None:
        if record.at - record.session_time_seconds >= latest["stopped_at"]:
            # Begun after its NAS restarted: a session of the new boot under a reused id, its
            # Start lost - not a late copy of the one the restart closed (nor its Stop's).
            return _made_up(conn, record)
        if status == AccountingStatus.INTERIM_UPDATE and _outlived_the_restart(record, latest):
            return _reopen(conn, record, latest["id"])
    if status == AccountingStatus.STOP:
        closed = _closed_by_ispd(conn, record)
        if closed is not None:
            return _reopen(conn, record, closed)
    if latest is not None and _another_user(record, latest) and not _has_session_of_user(conn, record):
        # The id reused for another user (a NAS restarted without Accounting-On: Cisco's ids count
        # from 1 again), this session's Start lost: a session of its own, as its Start would have
        # made it, superseding the one still open under the id - not a late copy of that one.
        if latest["stopped_at"] is None:
            began = record.at - (record.session_time_seconds or 0)
            conn.execute("UPDATE radius_sessions SET stopped_at = ?, terminate_cause = ? WHERE id = ?",
                         (min(record.at, max(began, float(latest["updated_at"]))), SUPERSEDED_CAUSE, latest["id"]))
        return _made_up(conn, record)
    if latest is not None and latest["stopped_at"] is not None and record.session_time_seconds is not None \
            and record.at - record.session_time_seconds - latest["stopped_at"] >= SAME_START_SECONDS \
            and not _repeats_its_end(record, latest):
        # Begun well after the last session under its id ended (as a Start is judged in
        # _a_copy_of): the same user's next session under a reused id (a NAS restarted without
        # Accounting-On), its Start lost - not a late copy of that one, whose usage it would lose.
        return _made_up(conn, record)
    if latest is not None:  # stopped already: a late copy
        return AccountingResult(AccountingOutcome.DUPLICATE)
    return _made_up(conn, record)


def _begun_after(record: AccountingRecord, session: sqlite3.Row) -> bool:
    """Whether ``record``, of the same user as ``session``, is of a session begun (by its
    Acct-Session-Time) SAME_START_SECONDS or more after ``session`` began, and after its last
    report: not that one's (a report of it that waited in its NAS without an Acct-Delay-Time to
    say so looks begun late, but not after what it had reported before)."""
    if record.session_time_seconds is None or _another_user(record, session):
        return False
    began = record.at - record.session_time_seconds
    return began - float(session["started_at"]) >= SAME_START_SECONDS and began > float(session["updated_at"])


def _repeats_its_end(record: AccountingRecord, session: sqlite3.Row) -> bool:
    """Whether ``record`` reports the ended ``session``'s final counters to the byte: a copy of
    its Stop (or of its last interim) sent again minutes later with no Acct-Delay-Time to say
    so - dated by its arrival, a short session's copy looks begun after that session ended."""
    return bool(record.session_time_seconds == session["session_time_seconds"]
                and (record.input_octets or 0) == session["input_octets"]
                and (record.output_octets or 0) == session["output_octets"])


def _has_session_of_user(conn: sqlite3.Connection, record: AccountingRecord) -> bool:
    """Whether the record's user has had a session under its NAS and Acct-Session-Id (a record
    of it, come late, is a copy: its session is known)."""
    return conn.execute("SELECT 1 FROM radius_sessions WHERE nas_address = ? AND acct_session_id = ? AND username = ?"
                        " LIMIT 1", (record.nas_address, record.acct_session_id, record.username or "")).fetchone() \
        is not None


def _made_up(conn: sqlite3.Connection, record: AccountingRecord) -> AccountingResult:
    """The session of an interim or a Stop whose Start (and every interim before) was lost, as
    far as it is known."""
    stopped = record.status == AccountingStatus.STOP
    session = _open_session(conn, record, stopped=stopped)
    return AccountingResult(AccountingOutcome.STOPPED if stopped else AccountingOutcome.STARTED, session)


def _reopen(conn: sqlite3.Connection, record: AccountingRecord, session_id: int) -> AccountingResult:
    row = conn.execute(_SESSION_REOPEN, (
        record.input_octets, record.output_octets, record.input_packets, record.output_packets,
        record.session_time_seconds, record.at, record.status == AccountingStatus.STOP, record.terminate_cause,
        session_id)).fetchone()
    return AccountingResult(AccountingOutcome.REOPENED, session_from_row(row))


def _outlived_the_restart(record: AccountingRecord, session: sqlite3.Row) -> bool:
    """Whether an interim shows that a session closed by its NAS's Accounting-On/Off went on
    after the time that closed it: the NAS did not reboot for it (a repeated Accounting-On,
    whose time is later than the first's, closed sessions begun just before it; a NAS that
    announces a restart of one line card). The same user, begun when it began (by the
    interim's Acct-Session-Time: a new boot's session under a reused id begins later), and
    alive past the close; an interim from before the restart, come late, proves nothing and
    reopens nothing (its counters, below the final ones a Stop brings, are not lost)."""
    if _another_user(record, session) or record.session_time_seconds is None:
        return False
    started_at, stopped_at = float(session["started_at"]), float(session["stopped_at"])
    began = record.at - record.session_time_seconds
    # Begun before the close, too: a session begun after the reboot is a new one under a reused
    # id (its Start lost), not this one going on (from a review: merged into it, its usage lost;
    # ``_apply`` makes such a session up before asking here).
    return abs(began - started_at) <= SAME_START_SECONDS and began < stopped_at and record.at > stopped_at \
        and started_at + record.session_time_seconds > stopped_at


def _closed_by_ispd(conn: sqlite3.Connection, record: AccountingRecord) -> int | None:
    """The session a Stop ends that ispd had closed first, at Accounting-On/Off or when a
    Start superseded it (the NAS sends its Stops with the Off, or retransmits them after it):
    its final counters, which only grow, are still to be counted. The same user, begun when it
    began, and more than is known (a copy of a Stop already taken, as after a NAS's own
    NAS-Reboot Stop, changes nothing)."""
    row = conn.execute(
        "SELECT id, username, started_at, input_octets, output_octets, session_time_seconds FROM radius_sessions"
        " WHERE nas_address = ? AND acct_session_id = ? AND stopped_at IS NOT NULL AND terminate_cause IN (?, ?)"
        " ORDER BY id DESC LIMIT 1",
        (record.nas_address, record.acct_session_id, NAS_RESTART_CAUSE, SUPERSEDED_CAUSE)).fetchone()
    if row is None or _another_user(record, row):
        return None
    if record.session_time_seconds is not None and \
            abs(record.at - record.session_time_seconds - row["started_at"]) > SAME_START_SECONDS:
        return None
    grows = ((record.input_octets or 0) > row["input_octets"] or (record.output_octets or 0) > row["output_octets"]
             or (record.session_time_seconds or 0) > row["session_time_seconds"])
    return int(row["id"]) if grows else None


def _another_user(record: AccountingRecord, session: sqlite3.Row) -> bool:
    """Whether a record is another user's than a session's (when both name one): the session
    under a reused Acct-Session-Id that the record does not belong to."""
    return bool(record.username and session["username"] and record.username != session["username"])


def _a_copy_of(conn: sqlite3.Connection, latest: sqlite3.Row, record: AccountingRecord, started_at: float) -> bool:
    """Whether a Start repeats the last session under its NAS and Acct-Session-Id (a
    retransmission, or a Start that comes after its interims or Stop made the session up) rather
    than begins a new one: NASes reuse ids, their counters restarting at boot."""
    if _another_user(record, latest):
        return False
    if latest["stopped_at"] is not None and started_at > latest["stopped_at"]:
        # Begun after that one ended: a new session under a reused id, unless it is that
        # session's own Start, come late with an Acct-Delay-Time that does not say so - sent
        # again after ispd took it but could not answer (a crash, a restart: the duplicate cache
        # is gone), or overtaken by its Stop. That happens within minutes (a NAS gives up
        # retransmitting), and never across a reboot of the NAS (announced, or the session gone
        # silent), after which its Starts may repeat the old ones to the byte.
        if latest["terminate_cause"] in (NAS_RESTART_CAUSE, *CLOSED_WITHOUT_NAS) \
                or started_at - latest["stopped_at"] >= SAME_START_SECONDS \
                or _nas_restarted_since(conn, record.nas_address, latest["started_at"]):
            return False
        if _recorded_since(conn, record, latest["started_at"] - SAME_START_SECONDS):  # that session's records
            return True
        return not _had_start(conn, latest)
    if abs(latest["started_at"] - started_at) < SAME_START_SECONDS or started_at <= latest["updated_at"]:
        return True
    # An open session that an interim made up (its Start lost, or overtaken): a Start within
    # minutes of its last report is that session's own, come late without an Acct-Delay-Time
    # to say so - dated by its arrival, it looks begun after the session's reported start.
    return latest["stopped_at"] is None and started_at - latest["updated_at"] < SAME_START_SECONDS \
        and not _had_start(conn, latest) and not _nas_restarted_since(conn, record.nas_address, latest["started_at"])


def _had_start(conn: sqlite3.Connection, session: sqlite3.Row) -> bool:
    """Whether a Start of ``session`` was recorded (or it was made up from an interim or Stop)."""
    return conn.execute(
        "SELECT 1 FROM accounting_records WHERE nas_address = ? AND acct_session_id = ? AND at >= ?"
        " AND status_type = ? LIMIT 1",
        (session["nas_address"], session["acct_session_id"], session["started_at"] - SAME_START_SECONDS,
         str(AccountingStatus.START))).fetchone() is not None


def _recorded_since(conn: sqlite3.Connection, record: AccountingRecord, since: float) -> bool:
    """Whether the history holds this request already, since ``since``, under its NAS and
    Acct-Session-Id: the same attributes to the byte (a retransmission may come with another
    Identifier, and so another Request Authenticator)."""
    if not record.packet:
        return False
    return conn.execute(
        "SELECT 1 FROM accounting_records WHERE nas_address = ? AND acct_session_id = ? AND at >= ?"
        " AND status_type = ? AND substr(packet, 21) = ? LIMIT 1",
        (record.nas_address, record.acct_session_id, since, str(record.status), record.packet[20:])).fetchone() \
        is not None


def _nas_restarted_since(conn: sqlite3.Connection, nas_address: str, since: float) -> bool:
    """Whether the NAS announced a reboot (Accounting-On or -Off) after ``since``."""
    row = conn.execute("SELECT at FROM radius_nas_restarts WHERE nas_address = ?", (nas_address,)).fetchone()
    return row is not None and row[0] > since


def _nas_restarted(conn: sqlite3.Connection, record: AccountingRecord) -> AccountingResult:
    conn.execute("INSERT INTO radius_nas_restarts (nas_address, at) VALUES (?, ?)"
                 " ON CONFLICT (nas_address) DO UPDATE SET at = MAX(radius_nas_restarts.at, excluded.at)",
                 (record.nas_address, record.at))
    # The sessions open when the NAS went down or up (the request's time less its
    # Acct-Delay-Time): one begun after that is from after the reboot, whatever came late.
    rows = conn.execute(
        "UPDATE radius_sessions SET stopped_at = ?, terminate_cause = ?, updated_at = MAX(updated_at, ?)"
        f" WHERE nas_address = ? AND stopped_at IS NULL AND started_at <= ? RETURNING {SESSION_COLUMNS}",
        (record.at, NAS_RESTART_CAUSE, record.at, record.nas_address, record.at),
    ).fetchall()
    return AccountingResult(AccountingOutcome.NAS_RESTARTED, closed=tuple(session_from_row(r) for r in rows))


def close_sessions(conn: sqlite3.Connection, session_ids: Sequence[int], at: float, cause: str) -> list[RadiusSession]:
    closed = []
    for session_id in session_ids:
        row = conn.execute(
            "UPDATE radius_sessions SET stopped_at = ?, terminate_cause = ? WHERE id = ? AND stopped_at IS NULL"
            f" RETURNING {SESSION_COLUMNS}", (at, cause, session_id)).fetchone()
        if row is not None:
            closed.append(session_from_row(row))
    return closed


# A day's octets are at most 2^63 - 1 (migration 0020), and days of them add up past what SQLite's
# SUM() holds (it fails: "integer overflow"; PostgreSQL's is a numeric): each is summed in two
# halves that cannot overflow, the 2^32s and the rest, and put together here, as exact on both.
_OCTET_SUMS = ("SUM(input_octets / 4294967296), SUM(input_octets % 4294967296),"
               " SUM(output_octets / 4294967296), SUM(output_octets % 4294967296), SUM(session_seconds)")


def _usage(sums: Sequence[Any]) -> Usage:
    if sums[0] is None:  # no day of usage
        return Usage(0, 0, 0)
    return Usage((int(sums[0]) << 32) + int(sums[1]), (int(sums[2]) << 32) + int(sums[3]), int(sums[4]))


def usage_between(conn: sqlite3.Connection, subscriber_id: int, since: float, until: float) -> Usage:
    """Usage on the UTC days ``usage_days`` gives: from the one of ``since`` to the one of
    ``until``, both included, unless ``until`` is a later midnight."""
    return _usage(conn.execute(f"SELECT {_OCTET_SUMS} FROM usage_daily WHERE subscriber_id = ? AND day >= ?"
                               " AND day <= ?", (subscriber_id, *usage_days(since, until))).fetchone())


def usage_totals(conn: sqlite3.Connection, since: float, until: float) -> dict[int, Usage]:
    """``usage_between`` for every subscriber with any, in one query."""
    rows = conn.execute(
        f"SELECT subscriber_id, {_OCTET_SUMS} FROM usage_daily"
        " WHERE day >= ? AND day <= ? GROUP BY subscriber_id", usage_days(since, until)).fetchall()
    return {r[0]: _usage(r[1:]) for r in rows}


def usage_by_day(conn: sqlite3.Connection, subscriber_id: int | None, since: float, until: float, *,
                 after: tuple[int, str] | None = None, limit: int | None = None) -> list[DailyUsage]:
    """Each day's usage on the days ``usage_days`` gives (days with none left out), of one
    subscriber or of all, by subscriber then day; the first ``limit`` after
    (subscriber id, YYYY-MM-DD) ``after``."""
    condition, params = ("AND u.subscriber_id = ?", [subscriber_id]) if subscriber_id is not None else ("", [])
    if after is not None:
        after_day = utc_day(calendar.timegm(time.strptime(after[1], "%Y-%m-%d")))
        condition += " AND (u.subscriber_id > ? OR (u.subscriber_id = ? AND u.day > ?))"
        params += [after[0], after[0], after_day]
    page = f" LIMIT {int(limit)}" if limit is not None else ""
    rows = conn.execute(
        "SELECT u.subscriber_id, s.username, u.day, u.input_octets, u.output_octets, u.session_seconds"
        " FROM usage_daily u LEFT JOIN subscribers s ON s.id = u.subscriber_id"
        f" WHERE u.day >= ? AND u.day <= ? {condition} ORDER BY u.subscriber_id, u.day{page}",
        (*usage_days(since, until), *params)).fetchall()
    return [DailyUsage(r[0], r[1], time.strftime("%Y-%m-%d", time.gmtime(r[2] * 86400)), r[3], r[4], r[5])
            for r in rows]


def month_start(at: float) -> float:
    """The first instant (UTC) of the month ``at`` falls in."""
    t = time.gmtime(at)
    return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))
