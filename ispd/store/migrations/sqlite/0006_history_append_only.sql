-- The history tables are append-only: a row, once written, is never changed. Attribution
-- ("who had this address then") and billing disputes rest on that, so the database itself
-- refuses an UPDATE, whoever issues it. Rows leave only by retention (purge_history), which
-- deletes whole rows older than history_retention_days.
CREATE TRIGGER lease_history_append_only BEFORE UPDATE ON lease_history
BEGIN SELECT RAISE(ABORT, 'lease_history is append-only'); END;
CREATE TRIGGER accounting_records_append_only BEFORE UPDATE ON accounting_records
BEGIN SELECT RAISE(ABORT, 'accounting_records is append-only'); END;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
