-- As SQLite's 0021: retention finds closed sessions, audit entries and CoA outcomes by time.
CREATE INDEX radius_sessions_stopped ON radius_sessions(stopped_at) WHERE stopped_at IS NOT NULL;
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX coa_requests_at ON coa_requests(at);
