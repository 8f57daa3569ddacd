-- IPv6 attribution by index. Each IPv6 prefix or address a session keeps is also kept here as its
-- network in integers (see ispd/store/ipv6_networks.py: the length, and the 128 network bits in
-- two halves offset by 2**63 so that their order is the unsigned one), so that ``who`` asked about
-- an address or a prefix reads the sessions that overlap it, one index range per stored length,
-- instead of every IPv6 session of the span. kind: framed | delegated | framed-address, as a
-- holding names it. A text that is not an IPv6 prefix has no row (it answers nothing).
-- ispd writes a row when it writes the session's text (a Start, or a later request filling in
-- what the session lacked; a text once set is never changed), so an interim writes nothing here.
CREATE TABLE radius_session_ipv6 (
    session_id INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    length     INTEGER NOT NULL,
    net_hi     INTEGER NOT NULL,
    net_lo     INTEGER NOT NULL,
    PRIMARY KEY (session_id, kind)
) WITHOUT ROWID;
CREATE INDEX radius_session_ipv6_network ON radius_session_ipv6(length, net_hi, net_lo);
-- A session leaves (retention) with its networks.
CREATE TRIGGER radius_session_ipv6_purge AFTER DELETE ON radius_sessions
WHEN OLD.framed_ipv6_prefix IS NOT NULL OR OLD.delegated_ipv6_prefix IS NOT NULL
     OR OLD.framed_ipv6_address IS NOT NULL
BEGIN
    DELETE FROM radius_session_ipv6 WHERE session_id = OLD.id;
END;
-- The sessions kept so far. ispd_ipv6_network(text, part) is ispd's own (ipv6_networks.network_part,
-- given to the connection by the migration runner): NULL for a text that is not an IPv6 prefix.
INSERT INTO radius_session_ipv6 (session_id, kind, length, net_hi, net_lo)
SELECT id, kind, ispd_ipv6_network(text, 'length'), ispd_ipv6_network(text, 'net_hi'),
       ispd_ipv6_network(text, 'net_lo')
FROM (SELECT id, 'framed' AS kind, framed_ipv6_prefix AS text FROM radius_sessions
      WHERE framed_ipv6_prefix IS NOT NULL
      UNION ALL
      SELECT id, 'delegated', delegated_ipv6_prefix FROM radius_sessions WHERE delegated_ipv6_prefix IS NOT NULL
      UNION ALL
      SELECT id, 'framed-address', framed_ipv6_address FROM radius_sessions WHERE framed_ipv6_address IS NOT NULL)
WHERE ispd_ipv6_network(text, 'length') IS NOT NULL;
-- The span-only index 0011 gave ``who`` is read no more; dropping it spares each IPv6 Start a write.
DROP INDEX radius_sessions_ipv6;
