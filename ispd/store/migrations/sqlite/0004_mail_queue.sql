-- The outbound mail queue: messages accepted by submission (or bounces ispd generated) that go
-- to other domains. The message itself is a file in [mail] queue_directory named by the id; a
-- row exists only once that file is durable, and goes when no recipient is pending any more.
CREATE TABLE mail_queue (
    id              TEXT PRIMARY KEY,
    created_at      REAL NOT NULL,
    sender          TEXT NOT NULL,        -- '' for a bounce (the null reverse-path)
    subscriber_id   INTEGER,              -- who submitted it; NULL for a bounce
    size            INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE INDEX mail_queue_due ON mail_queue(next_attempt_at);

CREATE TABLE mail_queue_recipients (
    queue_id   TEXT NOT NULL REFERENCES mail_queue(id) ON DELETE CASCADE,
    address    TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'bounced')),
    last_error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (queue_id, address)
);
