-- DHCPv6 reservations: a DHCPv6 client's DUID as a reservation kind, and a fixed IPv6 address
-- (IA_NA, ``address6``) and delegated prefix (IA_PD, ``prefix6``) a reservation may hold, in their
-- canonical texts (2001:db8:1::10, 2001:db8:200::/48).
-- A CHECK cannot be altered, so the table is rebuilt (as 0002 did), every row and id kept. Nothing
-- references reservations (no foreign key into it, no trigger or view on it); its own foreign key
-- to subscribers is declared again as it was.
-- Two reservations never hold overlapping prefixes, nor an address inside another subscriber's
-- prefix: the store checks that before a write, by index ranges on each one's network in
-- integers (as radius_session_ipv6, 0012; see ispd/store/ipv6_networks.py), which the texts
-- cannot answer. The integers are NULL exactly when their text is.
CREATE TABLE reservations_new (
    id            INTEGER PRIMARY KEY,
    subscriber_id INTEGER NOT NULL REFERENCES subscribers(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('mac', 'client-id', 'circuit-id', 'remote-id', 'username', 'duid')),
    key           TEXT NOT NULL,
    address       TEXT UNIQUE,
    hostname      TEXT,
    created_at    REAL NOT NULL,
    address6      TEXT UNIQUE,
    prefix6       TEXT UNIQUE,
    address6_net_hi INTEGER,
    address6_net_lo INTEGER,
    prefix6_length  INTEGER,
    prefix6_net_hi  INTEGER,
    prefix6_net_lo  INTEGER,
    UNIQUE (kind, key)
);
INSERT INTO reservations_new (id, subscriber_id, kind, key, address, hostname, created_at)
    SELECT id, subscriber_id, kind, key, address, hostname, created_at FROM reservations;
DROP TABLE reservations;
ALTER TABLE reservations_new RENAME TO reservations;
CREATE INDEX reservations_subscriber ON reservations(subscriber_id);
CREATE INDEX reservations_address6_network ON reservations(address6_net_hi, address6_net_lo)
    WHERE address6 IS NOT NULL;
CREATE INDEX reservations_prefix6_network ON reservations(prefix6_length, prefix6_net_hi, prefix6_net_lo)
    WHERE prefix6 IS NOT NULL;
