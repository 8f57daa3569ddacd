"""Mailboxes in the SQLite backend: who owns which address, and what delivery needs to know."""

from __future__ import annotations

import sqlite3

from ispd.store.errors import Conflict, NotFound
from ispd.store.models import Mailbox, MailRecipient, SubscriberStatus


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
    cursor = conn.execute("INSERT INTO mailboxes (subscriber_id, address, quota_bytes, created_at) VALUES (?, ?, ?, ?)",
                          (subscriber_id, address, quota_bytes, now))
    return Mailbox(id=cursor.lastrowid or 0, subscriber_id=subscriber_id, address=address, quota_bytes=quota_bytes,
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
