-- A subscriber's id is never given to another. Sessions, usage, CoA outcomes, quota crossings and
-- the history outlive a deleted subscriber under its id (by design: billing and attribution answer
-- from them), and subscribers.id is a plain INTEGER PRIMARY KEY, for which SQLite takes MAX(id) + 1:
-- deleting the newest subscriber freed its id, and the next one inherited its usage, its quota and
-- its open sessions (Simultaneous-Use). Rebuilding the table with AUTOINCREMENT is not an option:
-- dropping it would cascade through its foreign keys (credentials, reservations, mailboxes).
-- So the highest id ever given is kept here, and a new subscriber gets the one after it.
CREATE TABLE subscriber_ids (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    highest   INTEGER NOT NULL
);

-- Seeded from every id a row has ever referenced, so that a store from before this migration,
-- where the newest subscriber may already be gone, does not hand its id out again.
INSERT INTO subscriber_ids (singleton, highest)
    SELECT 1, COALESCE(MAX(id), 0) FROM (
        SELECT MAX(id) AS id FROM subscribers
        UNION ALL SELECT MAX(subscriber_id) FROM radius_sessions
        UNION ALL SELECT MAX(subscriber_id) FROM accounting_records
        UNION ALL SELECT MAX(subscriber_id) FROM usage_daily
        UNION ALL SELECT MAX(subscriber_id) FROM coa_requests
        UNION ALL SELECT MAX(subscriber_id) FROM quota_crossings
        UNION ALL SELECT MAX(subscriber_id) FROM leases
        UNION ALL SELECT MAX(subscriber_id) FROM lease_history
        UNION ALL SELECT MAX(subscriber_id) FROM mail_queue
        UNION ALL SELECT MAX(subject_id) FROM audit_log WHERE subject_kind = 'subscriber'
    );

-- Whoever inserts (not only the store's add_subscriber): an id at or below the highest given, or
-- none (SQLite's MAX(id) + 1 would reuse a freed one), is refused rather than reused.
CREATE TRIGGER subscribers_id_never_reused BEFORE INSERT ON subscribers
WHEN NEW.id IS NULL OR NEW.id <= (SELECT highest FROM subscriber_ids)
BEGIN SELECT RAISE(ABORT, 'subscriber ids are never reused: insert with the id after subscriber_ids.highest'); END;

CREATE TRIGGER subscribers_id_highest AFTER INSERT ON subscribers
BEGIN UPDATE subscriber_ids SET highest = MAX(highest, NEW.id); END;
