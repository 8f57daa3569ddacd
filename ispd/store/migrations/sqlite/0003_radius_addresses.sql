-- The NAS client a RADIUS session came through (CoA and Disconnect go back to it), and one
-- address ledger for DHCP and RADIUS: a lease row says which service holds the address, so that
-- a pool shared by both never gives one address twice (the store refuses a DHCP lease on an
-- address a RADIUS session holds, and a RADIUS claim on one a DHCP client holds).
ALTER TABLE radius_sessions ADD COLUMN nas_client TEXT;
ALTER TABLE leases ADD COLUMN service TEXT NOT NULL DEFAULT 'dhcp' CHECK (service IN ('dhcp', 'radius'));
ALTER TABLE lease_history ADD COLUMN service TEXT NOT NULL DEFAULT 'dhcp';
