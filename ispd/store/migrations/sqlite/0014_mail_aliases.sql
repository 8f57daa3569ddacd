-- Mail aliases (Postfix's virtual aliases): mail to `address` goes to each of `targets` (a JSON
-- array), our mailboxes or addresses elsewhere (forwarding). Owned by a subscriber, whose
-- deletion takes them along; an alias's address is no mailbox's.
CREATE TABLE mail_aliases (
    id            INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    address       TEXT NOT NULL UNIQUE,
    targets       TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE INDEX mail_aliases_subscriber ON mail_aliases(subscriber_id);
