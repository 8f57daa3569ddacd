-- A session's records by time: the checks a Start makes against the recent history of its NAS
-- and Acct-Session-Id (a retransmission after a restart, a Start overtaken by its Stop) read a
-- few minutes of it, not every record the id ever had (NASes reuse ids for years).
DROP INDEX accounting_records_session;
CREATE INDEX accounting_records_session ON accounting_records(nas_address, acct_session_id, at);

-- When each NAS last announced a reboot (Accounting-On or -Off, at the time it gives): a Start
-- after it is of a new boot, whatever an old Start it repeats.
CREATE TABLE radius_nas_restarts (
    nas_address TEXT PRIMARY KEY,
    at          REAL NOT NULL
);
INSERT INTO radius_nas_restarts (nas_address, at)
    SELECT nas_address, MAX(at) FROM accounting_records
    WHERE status_type IN ('accounting-on', 'accounting-off') GROUP BY nas_address;
