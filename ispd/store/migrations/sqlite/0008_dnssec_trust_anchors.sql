-- RFC 5011: the keys the DNS resolver tracks for each zone with a trust anchor (the root, as a
-- rule), so that a rollover learnt over the 30-day hold-down survives restarts. One row per key
-- (its DNSKEY rdata with the REVOKE bit clear); the rows of a zone are rewritten together.
CREATE TABLE dnssec_trust_anchor_keys (
    zone            TEXT NOT NULL,     -- presentation form, trailing dot
    key             BLOB NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('addpend', 'valid', 'missing', 'revoked')),
    since           REAL NOT NULL,
    hold_down_until REAL NOT NULL,
    source          TEXT NOT NULL,     -- fingerprint of the configured anchors it started from
    PRIMARY KEY (zone, key)
);
