"""Mailboxes in the SQLite backend: who owns which address, and what delivery needs to know."""

from __future__ import annotations

import json
import sqlite3

from ispd.store.errors import Conflict, NotFound
from ispd.store.models import (
    MailAlias,
    Mailbox,
    MailRecipient,
    QueuedMail,
    QueuedRecipient,
    QueuedRecipientState,
    SubscriberStatus,
)


def mailbox_from_row(row: sqlite3.Row) -> Mailbox:
    return Mailbox(id=row["id"], subscriber_id=row["subscriber_id"], address=row["address"],
                   quota_bytes=row["quota_bytes"], created_at=row["created_at"])


def find_mailbox(conn: sqlite3.Connection, address: str) -> sqlite3.Row:
    row: sqlite3.Row | None = conn.execute(
        "SELECT m.*, s.username FROM mailboxes m JOIN subscribers s ON s.id = m.subscriber_id WHERE m.address = ?",
        (address,)).fetchone()
    if row is None:
        raise NotFound(f"no mailbox {address}")
    return row


def insert_mailbox(conn: sqlite3.Connection, subscriber_id: int, address: str, quota_bytes: int | None,
                   now: float) -> Mailbox:
    taken = conn.execute("SELECT s.username FROM mailboxes m JOIN subscribers s ON s.id = m.subscriber_id"
                         " WHERE m.address = ?", (address,)).fetchone()
    if taken is not None:
        raise Conflict(f"the mailbox {address} already exists (it is {taken['username']}'s)")
    _not_an_alias(conn, address)
    mailbox_id = conn.execute("INSERT INTO mailboxes (subscriber_id, address, quota_bytes, created_at)"
                              " VALUES (?, ?, ?, ?) RETURNING id",
                              (subscriber_id, address, quota_bytes, now)).fetchone()[0]
    return Mailbox(id=mailbox_id, subscriber_id=subscriber_id, address=address, quota_bytes=quota_bytes,
                   created_at=now)


def mail_recipient(conn: sqlite3.Connection, address: str) -> MailRecipient | None:
    row = conn.execute(
        "SELECT m.*, s.username, s.status, p.mail_quota_bytes AS plan_quota FROM mailboxes m"
        " JOIN subscribers s ON s.id = m.subscriber_id LEFT JOIN plans p ON p.id = s.plan_id"
        " WHERE m.address = ?", (address,)).fetchone()
    if row is None:
        return None
    quota = row["quota_bytes"] if row["quota_bytes"] is not None else row["plan_quota"]
    return MailRecipient(mailbox=mailbox_from_row(row), username=row["username"],
                         status=SubscriberStatus(row["status"]), quota_bytes=quota)


# --- aliases


def alias_from_row(row: sqlite3.Row) -> MailAlias:
    try:
        targets = json.loads(row["targets"])
    except ValueError:
        targets = []
    return MailAlias(id=row["id"], subscriber_id=row["subscriber_id"], address=row["address"],
                     targets=tuple(t for t in targets if isinstance(t, str)) if isinstance(targets, list) else (),
                     created_at=row["created_at"])


def _not_an_alias(conn: sqlite3.Connection, address: str) -> None:
    taken = conn.execute("SELECT s.username FROM mail_aliases a JOIN subscribers s ON s.id = a.subscriber_id"
                         " WHERE a.address = ?", (address,)).fetchone()
    if taken is not None:
        raise Conflict(f"{address} is an alias (it is {taken['username']}'s)")


def insert_alias(conn: sqlite3.Connection, subscriber_id: int, address: str, targets: list[str],
                 local_domains: frozenset[str], now: float) -> MailAlias:
    """An alias at a free address; its targets at ``local_domains`` must be mailboxes now."""
    if conn.execute("SELECT 1 FROM mailboxes WHERE address = ?", (address,)).fetchone() is not None:
        raise Conflict(f"{address} is a mailbox: an alias takes an address no mailbox has")
    _not_an_alias(conn, address)
    for target in targets:
        if target.rpartition("@")[2] in local_domains and \
                conn.execute("SELECT 1 FROM mailboxes WHERE address = ?", (target,)).fetchone() is None:
            raise NotFound(f"no mailbox {target}: an alias's targets here are mailboxes")
    alias_id = conn.execute("INSERT INTO mail_aliases (subscriber_id, address, targets, created_at)"
                            " VALUES (?, ?, ?, ?) RETURNING id", (subscriber_id, address, json.dumps(targets), now)
                            ).fetchone()[0]
    return MailAlias(alias_id, subscriber_id, address, tuple(targets), now)


def find_alias(conn: sqlite3.Connection, address: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT a.*, s.username, s.status FROM mail_aliases a JOIN subscribers s ON s.id = a.subscriber_id"
        " WHERE a.address = ?", (address,)).fetchone()
    return row


# --- the outbound queue


def _queued(conn: sqlite3.Connection, row: sqlite3.Row) -> QueuedMail:
    recipients = tuple(
        QueuedRecipient(r["address"], QueuedRecipientState(r["state"]), r["last_error"])
        for r in conn.execute("SELECT * FROM mail_queue_recipients WHERE queue_id = ? ORDER BY address",
                              (row["id"],)))
    return QueuedMail(id=row["id"], created_at=row["created_at"], sender=row["sender"], size=row["size"],
                      next_attempt_at=row["next_attempt_at"], recipients=recipients,
                      subscriber_id=row["subscriber_id"], attempts=row["attempts"], last_error=row["last_error"])


def enqueue(conn: sqlite3.Connection, mail: QueuedMail, now: float) -> None:
    conn.execute("INSERT INTO mail_queue (id, created_at, sender, subscriber_id, size, next_attempt_at, attempts,"
                 " last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (mail.id, mail.created_at, mail.sender, mail.subscriber_id, mail.size, mail.next_attempt_at,
                  mail.attempts, mail.last_error))
    conn.executemany("INSERT INTO mail_queue_recipients (queue_id, address, state, last_error, updated_at)"
                     " VALUES (?, ?, ?, ?, ?)",
                     [(mail.id, r.address, r.state.value, r.last_error, now) for r in mail.recipients])


def queued_mail(conn: sqlite3.Connection, where: str = "", params: tuple[object, ...] = (),
                limit: int | None = None) -> list[QueuedMail]:
    bounded = "" if limit is None else f" LIMIT {int(limit)}"
    rows = conn.execute(f"SELECT * FROM mail_queue {where} ORDER BY next_attempt_at, id{bounded}", params)
    return [_queued(conn, row) for row in rows.fetchall()]


def find_queued(conn: sqlite3.Connection, queue_id: str) -> QueuedMail:
    found = queued_mail(conn, "WHERE id = ?", (queue_id,))
    if not found:
        raise NotFound(f"no queued message {queue_id}")
    return found[0]


def record_delivered(conn: sqlite3.Connection, queue_id: str, delivered: dict[str, str], now: float) -> None:
    conn.executemany(
        "UPDATE mail_queue_recipients SET state = 'delivered', last_error = ?, updated_at = ?"
        " WHERE queue_id = ? AND address = ? AND state = 'pending'",
        [(reply, now, queue_id, address) for address, reply in delivered.items()])
    if conn.execute("SELECT 1 FROM mail_queue_recipients WHERE queue_id = ? AND state = 'pending' LIMIT 1",
                    (queue_id,)).fetchone() is None:
        conn.execute("DELETE FROM mail_queue WHERE id = ?", (queue_id,))


def record_attempt(conn: sqlite3.Connection, queue_id: str,
                   outcomes: dict[str, tuple[QueuedRecipientState, str | None]], next_attempt_at: float,
                   error: str | None, now: float) -> QueuedMail | None:
    """Applies one delivery attempt's outcomes; the entry goes when nothing is pending."""
    if conn.execute("SELECT 1 FROM mail_queue WHERE id = ?", (queue_id,)).fetchone() is None:
        return None  # deleted by an operator meanwhile
    conn.executemany(
        "UPDATE mail_queue_recipients SET state = ?, last_error = ?, updated_at = ?"
        " WHERE queue_id = ? AND address = ? AND state = 'pending'",
        [(state.value, text, now, queue_id, address) for address, (state, text) in outcomes.items()])
    conn.execute("UPDATE mail_queue SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? WHERE id = ?",
                 (next_attempt_at, error, queue_id))
    mail = find_queued(conn, queue_id)
    if not mail.pending:
        conn.execute("DELETE FROM mail_queue WHERE id = ?", (queue_id,))
    return mail
