-- RADIUS: sessions and accounting as the RADIUS service keeps them, usage per subscriber and day,
-- the outcome of every CoA and Disconnect, and reservations by RADIUS username (a PPP
-- subscriber's fixed address, handed out as Framed-IP-Address).
-- No RADIUS service wrote to the tables of 0001 before this, so they are recreated as they are
-- needed rather than altered.

CREATE TABLE reservations_new (
    id            INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('mac', 'client-id', 'circuit-id', 'remote-id', 'username')),
    key           TEXT NOT NULL,
    address       TEXT UNIQUE,
    hostname      TEXT,
    created_at    REAL NOT NULL,
    UNIQUE (kind, key)
);
INSERT INTO reservations_new (id, subscriber_id, kind, key, address, hostname, created_at)
    SELECT id, subscriber_id, kind, key, address, hostname, created_at FROM reservations;
DROP TABLE reservations;
ALTER TABLE reservations_new RENAME TO reservations;
CREATE INDEX reservations_subscriber ON reservations(subscriber_id);

DROP TABLE radius_sessions;
-- One row per session a NAS accounts for. Counters are totals as the NAS last reported them
-- (octets with their Gigawords folded in); they only ever grow.
CREATE TABLE radius_sessions (
    id                   INTEGER PRIMARY KEY,
    nas_address          TEXT NOT NULL,
    nas_identifier       TEXT,
    acct_session_id      TEXT NOT NULL,
    username             TEXT NOT NULL,
    subscriber_id        INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
    framed_ip            TEXT,
    framed_ipv6_prefix   TEXT,
    delegated_ipv6_prefix TEXT,
    calling_station_id   TEXT,
    called_station_id    TEXT,
    nas_port_id          TEXT,
    started_at           REAL NOT NULL,
    updated_at           REAL NOT NULL,
    stopped_at           REAL,
    terminate_cause      TEXT,
    interim_interval     INTEGER,
    input_octets         INTEGER NOT NULL DEFAULT 0,
    output_octets        INTEGER NOT NULL DEFAULT 0,
    input_packets        INTEGER NOT NULL DEFAULT 0,
    output_packets       INTEGER NOT NULL DEFAULT 0,
    session_time_seconds INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX radius_sessions_nas ON radius_sessions(nas_address, acct_session_id);
CREATE INDEX radius_sessions_open ON radius_sessions(stopped_at, subscriber_id);
CREATE INDEX radius_sessions_subscriber ON radius_sessions(subscriber_id, started_at);
CREATE INDEX radius_sessions_ip ON radius_sessions(framed_ip, started_at);

DROP TABLE accounting_records;
-- Append-only: every Accounting-Request as received, duplicates included (marked).
CREATE TABLE accounting_records (
    id              INTEGER PRIMARY KEY,
    at              REAL NOT NULL,
    session_id      INTEGER,
    nas_address     TEXT NOT NULL,
    status_type     TEXT NOT NULL,
    acct_session_id TEXT,
    username        TEXT,
    subscriber_id   INTEGER,
    framed_ip       TEXT,
    input_octets    INTEGER,
    output_octets   INTEGER,
    session_time_seconds INTEGER,
    outcome         TEXT NOT NULL,
    attributes      TEXT
);
CREATE INDEX accounting_records_at ON accounting_records(at);
CREATE INDEX accounting_records_session ON accounting_records(session_id);

-- What each subscriber used, per UTC day: the growth of session counters, counted once.
CREATE TABLE usage_daily (
    subscriber_id INTEGER NOT NULL,
    day           TEXT NOT NULL,
    input_octets  INTEGER NOT NULL DEFAULT 0,
    output_octets INTEGER NOT NULL DEFAULT 0,
    session_seconds INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscriber_id, day)
);

-- Disconnect-Requests and CoA-Requests sent to NASes, and what came of them.
CREATE TABLE coa_requests (
    id           INTEGER PRIMARY KEY,
    at           REAL NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('disconnect', 'coa')),
    session_id   INTEGER,
    subscriber_id INTEGER,
    nas_address  TEXT NOT NULL,
    reason       TEXT,
    result       TEXT NOT NULL CHECK (result IN ('ack', 'nak', 'timeout', 'error')),
    error_cause  INTEGER,
    attempts     INTEGER NOT NULL,
    completed_at REAL NOT NULL
);
CREATE INDEX coa_requests_session ON coa_requests(session_id);
CREATE INDEX coa_requests_subscriber ON coa_requests(subscriber_id, at);
