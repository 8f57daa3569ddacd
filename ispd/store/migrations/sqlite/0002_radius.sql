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
-- (octets with their Gigawords folded in); they only ever grow. A history table: no foreign key,
-- so a deleted subscriber's sessions keep its id (who had this address, last March).
CREATE TABLE radius_sessions (
    id                   INTEGER PRIMARY KEY,
    nas_address          TEXT NOT NULL,
    nas_identifier       TEXT,
    acct_session_id      TEXT NOT NULL,
    username             TEXT NOT NULL,
    subscriber_id        INTEGER,
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
CREATE INDEX radius_sessions_open ON radius_sessions(subscriber_id) WHERE stopped_at IS NULL;
CREATE INDEX radius_sessions_subscriber ON radius_sessions(subscriber_id, started_at);
CREATE INDEX radius_sessions_ip ON radius_sessions(framed_ip, started_at);

DROP TABLE accounting_records;
-- Append-only: every Accounting-Request as received, duplicates included (marked), with the
-- request itself (``packet``: its bytes, for reading with the dictionaries when a dispute needs it).
-- A session's records are those of its NAS and Acct-Session-Id from its start on.
CREATE TABLE accounting_records (
    id              INTEGER PRIMARY KEY,
    at              REAL NOT NULL,
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
    packet          BLOB
);
CREATE INDEX accounting_records_at ON accounting_records(at);
CREATE INDEX accounting_records_session ON accounting_records(nas_address, acct_session_id);

-- What each subscriber used, per UTC day: the growth of session counters, counted once. The
-- triggers keep it: a session's counters only grow (the store writes MAX(old, new)), and each
-- growth is added to the day of the report that brought it (the session's updated_at). ``day``
-- counts days since 1970-01-01 UTC (an integer: cheaper in the triggers than a date string).
CREATE TABLE usage_daily (
    subscriber_id INTEGER NOT NULL,
    day           INTEGER NOT NULL,
    input_octets  INTEGER NOT NULL DEFAULT 0,
    output_octets INTEGER NOT NULL DEFAULT 0,
    session_seconds INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subscriber_id, day)
);

CREATE TRIGGER radius_sessions_usage_insert AFTER INSERT ON radius_sessions
WHEN NEW.subscriber_id IS NOT NULL
     AND (NEW.input_octets > 0 OR NEW.output_octets > 0 OR NEW.session_time_seconds > 0)
BEGIN
    INSERT INTO usage_daily (subscriber_id, day, input_octets, output_octets, session_seconds)
    VALUES (NEW.subscriber_id, CAST(NEW.updated_at / 86400 AS INTEGER), NEW.input_octets,
            NEW.output_octets, NEW.session_time_seconds)
    ON CONFLICT (subscriber_id, day) DO UPDATE SET input_octets = input_octets + excluded.input_octets,
        output_octets = output_octets + excluded.output_octets,
        session_seconds = session_seconds + excluded.session_seconds;
END;

CREATE TRIGGER radius_sessions_usage_update
AFTER UPDATE OF input_octets, output_octets, session_time_seconds ON radius_sessions
WHEN NEW.subscriber_id IS NOT NULL
     AND (NEW.input_octets > OLD.input_octets OR NEW.output_octets > OLD.output_octets
          OR NEW.session_time_seconds > OLD.session_time_seconds)
BEGIN
    INSERT INTO usage_daily (subscriber_id, day, input_octets, output_octets, session_seconds)
    VALUES (NEW.subscriber_id, CAST(NEW.updated_at / 86400 AS INTEGER),
            NEW.input_octets - OLD.input_octets, NEW.output_octets - OLD.output_octets,
            NEW.session_time_seconds - OLD.session_time_seconds)
    ON CONFLICT (subscriber_id, day) DO UPDATE SET input_octets = input_octets + excluded.input_octets,
        output_octets = output_octets + excluded.output_octets,
        session_seconds = session_seconds + excluded.session_seconds;
END;

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
