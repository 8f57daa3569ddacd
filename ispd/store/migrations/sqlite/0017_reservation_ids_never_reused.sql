-- A reservation's number is never given to another. reservations.id is a plain INTEGER PRIMARY
-- KEY, for which SQLite takes MAX(id) + 1: deleting the newest reservation freed its number, and
-- the next one added (maybe another subscriber's) took it. Whoever still held the number acted
-- on the wrong reservation: `ispd reservation set|delete N` from a script or the admin API, and
-- RADIUS filling a reserved login's reservation with its pool prefix. As for subscribers
-- (migration 10), the highest number ever given is kept, and a new reservation gets the next.
CREATE TABLE reservation_ids (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    highest   INTEGER NOT NULL
);

-- Seeded from the reservations there and from every one the audit log names, so that a store
-- from before this migration, whose newest reservation may already be deleted, does not hand
-- its number out again.
INSERT INTO reservation_ids (singleton, highest)
    SELECT 1, COALESCE(MAX(id), 0) FROM (
        SELECT MAX(id) AS id FROM reservations
        UNION ALL SELECT MAX(CAST(json_extract(details, '$.reservation_id') AS INTEGER)) FROM audit_log
            WHERE action LIKE 'reservation.%' AND json_valid(details)
    );

-- Whoever inserts: a number at or below the highest given, or none, is refused rather than reused.
CREATE TRIGGER reservations_id_never_reused BEFORE INSERT ON reservations
WHEN NEW.id IS NULL OR NEW.id <= (SELECT highest FROM reservation_ids)
BEGIN SELECT RAISE(ABORT, 'reservation ids are never reused: insert with the id after reservation_ids.highest'); END;

CREATE TRIGGER reservations_id_highest AFTER INSERT ON reservations
BEGIN UPDATE reservation_ids SET highest = MAX(highest, NEW.id); END;
