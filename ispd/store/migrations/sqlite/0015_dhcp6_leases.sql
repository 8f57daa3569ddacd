-- DHCPv6 bindings (RFC 8415): an address of the link (IA_NA, kind 'na', a /128) or a prefix
-- delegated to the client's router (IA_PD, kind 'pd'), kept like DHCPv4's leases: the current
-- state of every prefix ever leased, and an append-only history of every change.
-- ``prefix`` is the canonical network text (2001:db8:1::10/128, 2001:db8:100:ff00::/56).
CREATE TABLE dhcp6_leases (
    prefix          TEXT PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('na', 'pd')),
    state           TEXT NOT NULL CHECK (state IN ('bound', 'released', 'expired', 'declined')),
    duid            TEXT NOT NULL,
    iaid            INTEGER NOT NULL CHECK (iaid BETWEEN 0 AND 4294967295),
    starts_at       REAL NOT NULL,
    preferred_until REAL NOT NULL,
    expires_at      REAL NOT NULL,
    subscriber_id   INTEGER REFERENCES subscribers(id) ON DELETE SET NULL,
    hostname        TEXT,
    link            TEXT,
    pool            TEXT,
    remote_id       TEXT,
    interface_id    TEXT
);
CREATE INDEX dhcp6_leases_subscriber ON dhcp6_leases(subscriber_id);
CREATE INDEX dhcp6_leases_expiry ON dhcp6_leases(state, expires_at);

-- Append-only (as lease_history, 0006): every grant, renewal, release, expiry and decline, with
-- the subscriber's username at the time; no foreign keys, so that it outlives the account.
-- The prefix is also kept as its network in integers (length, net_hi, net_lo: see
-- ispd/store/ipv6_networks.py), so that ``who`` asked about an address or a prefix finds the
-- bindings that overlap it by a few index ranges, as it does for RADIUS sessions (0012).
CREATE TABLE dhcp6_lease_history (
    id              INTEGER PRIMARY KEY,
    at              REAL NOT NULL,
    event           TEXT NOT NULL,
    prefix          TEXT NOT NULL,
    kind            TEXT NOT NULL,
    state           TEXT NOT NULL,
    duid            TEXT NOT NULL,
    iaid            INTEGER NOT NULL,
    starts_at       REAL NOT NULL,
    preferred_until REAL NOT NULL,
    expires_at      REAL NOT NULL,
    subscriber_id   INTEGER,
    username        TEXT,
    hostname        TEXT,
    link            TEXT,
    pool            TEXT,
    remote_id       TEXT,
    interface_id    TEXT,
    length          INTEGER NOT NULL,
    net_hi          INTEGER NOT NULL,
    net_lo          INTEGER NOT NULL
);
CREATE INDEX dhcp6_lease_history_prefix ON dhcp6_lease_history(prefix, id);
CREATE INDEX dhcp6_lease_history_network ON dhcp6_lease_history(length, net_hi, net_lo);
CREATE INDEX dhcp6_lease_history_at ON dhcp6_lease_history(at);
CREATE TRIGGER dhcp6_lease_history_append_only BEFORE UPDATE ON dhcp6_lease_history
BEGIN SELECT RAISE(ABORT, 'dhcp6_lease_history is append-only'); END;
