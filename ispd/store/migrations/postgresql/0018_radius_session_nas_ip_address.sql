-- As SQLite's 0018: what a NAS reports itself as, when sessions are kept under its packets' source.
ALTER TABLE radius_sessions ADD COLUMN nas_ip_address TEXT COLLATE "C";
