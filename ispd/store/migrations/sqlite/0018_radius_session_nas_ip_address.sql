-- What a NAS reports itself as (NAS-IP-Address, NAS-IPv6-Address) when a session is kept under
-- the source address of its packets instead (the reported one lies outside the client's
-- network): Disconnect and CoA requests name the NAS by it (RFC 5176 §3).
ALTER TABLE radius_sessions ADD COLUMN nas_ip_address TEXT;
