-- As SQLite's 0019: retention, a month's billing and the quota flags read usage_daily by day.
CREATE INDEX usage_daily_day ON usage_daily(day);
