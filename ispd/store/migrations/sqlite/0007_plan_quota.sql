-- A plan's fair-use quota: octets (from and to the subscriber) per calendar month (UTC). Past
-- it, open sessions are moved by CoA to a slower rate ('throttle', with the over_quota_* rates)
-- or into the walled garden, and new sessions start there, until the month ends.
ALTER TABLE plans ADD COLUMN monthly_quota_bytes INTEGER;
ALTER TABLE plans ADD COLUMN over_quota TEXT NOT NULL DEFAULT 'throttle'
    CHECK (over_quota IN ('throttle', 'walled-garden'));
ALTER TABLE plans ADD COLUMN over_quota_download_kbps INTEGER;
ALTER TABLE plans ADD COLUMN over_quota_upload_kbps INTEGER;

-- When a subscriber went over its plan's quota in a month (once per month; kept as history).
CREATE TABLE quota_crossings (
    subscriber_id INTEGER NOT NULL,
    month         TEXT NOT NULL,      -- YYYY-MM, UTC
    crossed_at    REAL NOT NULL,
    used_octets   INTEGER NOT NULL,
    quota_bytes   INTEGER NOT NULL,
    PRIMARY KEY (subscriber_id, month)
);
