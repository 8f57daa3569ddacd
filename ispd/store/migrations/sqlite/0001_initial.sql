-- The shared schema: subscribers and what every service keeps about them.
-- Times are POSIX seconds (REAL, UTC). History tables carry no foreign keys on purpose: they must
-- outlive the rows they describe (who had this address last March, after the account was deleted).

CREATE TABLE plans (
    id                      INTEGER PRIMARY KEY,
    name                    TEXT NOT NULL UNIQUE,
    download_kbps           INTEGER CHECK (download_kbps > 0),
    upload_kbps             INTEGER CHECK (upload_kbps > 0),
    session_timeout_seconds INTEGER CHECK (session_timeout_seconds > 0),
    idle_timeout_seconds    INTEGER CHECK (idle_timeout_seconds > 0),
    max_sessions            INTEGER CHECK (max_sessions > 0),
    mail_quota_bytes        INTEGER CHECK (mail_quota_bytes >= 0),
    credential_policy       TEXT NOT NULL DEFAULT 'verifier'
                            CHECK (credential_policy IN ('verifier', 'nt-hash', 'cleartext')),
    created_at              REAL NOT NULL
);

CREATE TABLE subscribers (
    id                INTEGER PRIMARY KEY,
    username          TEXT NOT NULL UNIQUE,
    full_name         TEXT,
    account_ref       TEXT,
    plan_id           INTEGER REFERENCES plans(id) ON DELETE RESTRICT,
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'closed')),
    status_reason     TEXT,
    credential_policy TEXT CHECK (credential_policy IN ('verifier', 'nt-hash', 'cleartext')),
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL
);
CREATE INDEX subscribers_plan ON subscribers(plan_id);

-- Kept apart from subscribers so that no listing query can carry a secret out by accident.
CREATE TABLE credentials (
    subscriber_id INTEGER PRIMARY KEY REFERENCES subscribers(id) ON DELETE CASCADE,
    verifier      TEXT,
    nt_hash       BLOB,
    cleartext     TEXT,
    updated_at    REAL NOT NULL
);

CREATE TABLE reservations (
    id            INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('mac', 'client-id', 'circuit-id', 'remote-id')),
    key           TEXT NOT NULL,
    address       TEXT UNIQUE,
    hostname      TEXT,
    created_at    REAL NOT NULL,
    UNIQUE (kind, key)
);
CREATE INDEX reservations_subscriber ON reservations(subscriber_id);

-- The current state of every address ever leased.
CREATE TABLE leases (
    address       TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('bound', 'released', 'expired', 'declined')),
    starts_at     REAL NOT NULL,
    expires_at    REAL NOT NULL,
    hw_address    TEXT,
    client_id     TEXT,
    hostname      TEXT,
    subscriber_id INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
    circuit_id    TEXT,
    remote_id     TEXT,
    pool          TEXT
);
CREATE INDEX leases_subscriber ON leases(subscriber_id);
CREATE INDEX leases_expiry ON leases(state, expires_at);

-- Append-only: every grant, renewal, release, expiry and decline.
CREATE TABLE lease_history (
    id            INTEGER PRIMARY KEY,
    at            REAL NOT NULL,
    event         TEXT NOT NULL,
    address       TEXT NOT NULL,
    starts_at     REAL NOT NULL,
    expires_at    REAL NOT NULL,
    hw_address    TEXT,
    client_id     TEXT,
    hostname      TEXT,
    subscriber_id INTEGER,
    username      TEXT,
    circuit_id    TEXT,
    remote_id     TEXT,
    pool          TEXT
);
CREATE INDEX lease_history_address ON lease_history(address, starts_at);
CREATE INDEX lease_history_at ON lease_history(at);

CREATE TABLE radius_sessions (
    id                 INTEGER PRIMARY KEY,
    nas_address        TEXT NOT NULL,
    acct_session_id    TEXT NOT NULL,
    username           TEXT NOT NULL,
    subscriber_id      INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
    framed_ip          TEXT,
    calling_station_id TEXT,
    started_at         REAL NOT NULL,
    updated_at         REAL NOT NULL,
    stopped_at         REAL,
    terminate_cause    TEXT,
    input_octets       INTEGER NOT NULL DEFAULT 0,
    output_octets      INTEGER NOT NULL DEFAULT 0,
    input_packets      INTEGER NOT NULL DEFAULT 0,
    output_packets     INTEGER NOT NULL DEFAULT 0,
    session_time_seconds INTEGER NOT NULL DEFAULT 0,
    UNIQUE (nas_address, acct_session_id, started_at)
);
CREATE INDEX radius_sessions_open ON radius_sessions(subscriber_id, stopped_at);
CREATE INDEX radius_sessions_ip ON radius_sessions(framed_ip, started_at);

-- Append-only: every accounting request as received (Start, Interim-Update, Stop, On, Off).
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
    attributes      TEXT
);
CREATE INDEX accounting_records_at ON accounting_records(at);
CREATE INDEX accounting_records_session ON accounting_records(session_id);

CREATE TABLE mailboxes (
    id            INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    address       TEXT NOT NULL UNIQUE,
    quota_bytes   INTEGER CHECK (quota_bytes >= 0),
    created_at    REAL NOT NULL
);
CREATE INDEX mailboxes_subscriber ON mailboxes(subscriber_id);

-- Append-only record of admin changes; running daemons tail it to learn of changes made by the
-- CLI or by other nodes.
CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           REAL NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject_kind TEXT NOT NULL,
    subject_id   INTEGER,
    subject_name TEXT,
    details      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_subject ON audit_log(subject_kind, subject_id);
