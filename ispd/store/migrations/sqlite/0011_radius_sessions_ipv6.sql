-- IPv6 attribution. A session keeps Framed-IPv6-Address (RFC 6911: the one address a NAS gives
-- the subscriber's side of the link, DHCPv6 IA_NA) beside its two prefixes; before, it was only
-- in the request bytes of the accounting history.
ALTER TABLE radius_sessions ADD COLUMN framed_ipv6_address TEXT;
-- Sessions with IPv6 by start: ``who`` asked about an IPv6 address reads those of the span
-- (containment is then decided in Python, see sqlite_attribution) instead of every session.
-- Partial: an IPv4-only session costs nothing, and no column of it is one an interim or a Stop
-- sets, so the accounting hot path never rewrites it.
CREATE INDEX radius_sessions_ipv6 ON radius_sessions(started_at)
    WHERE framed_ipv6_prefix IS NOT NULL OR delegated_ipv6_prefix IS NOT NULL OR framed_ipv6_address IS NOT NULL;
