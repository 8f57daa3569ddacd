-- Usage by day across subscribers: retention deletes the days before its cut (hourly, on the
-- store's writer) and the quota flags loaded at RADIUS start read one month of every
-- subscriber. Without this index each of those scans the whole table (a row per subscriber and
-- day: millions after a year): the hourly purge held the writer half a second with nothing to
-- delete.
CREATE INDEX usage_daily_day ON usage_daily(day);
