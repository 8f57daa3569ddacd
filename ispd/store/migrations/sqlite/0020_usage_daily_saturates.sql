-- A day's usage stays at the most an INTEGER holds. A NAS's bogus Gigawords (2^31 and more: no
-- real counter) reach the store held at 2^63 - 1 (radius.engine), and the subscriber's other
-- sessions that day grow on: their growth added to it overflowed, which SQLite turned into a
-- REAL (2^63, no longer an integer) and PostgreSQL refused (bigint out of range: the record, and
-- every later one of the subscriber that day, never answered). MIN() of the overflowed sum and
-- the most is that most, an INTEGER again (SQLite compares the REAL with it exactly).
DROP TRIGGER radius_sessions_usage_insert;
CREATE TRIGGER radius_sessions_usage_insert AFTER INSERT ON radius_sessions
WHEN NEW.subscriber_id IS NOT NULL
     AND (NEW.input_octets > 0 OR NEW.output_octets > 0 OR NEW.session_time_seconds > 0)
BEGIN
    INSERT INTO usage_daily (subscriber_id, day, input_octets, output_octets, session_seconds)
    VALUES (NEW.subscriber_id, CAST(NEW.updated_at / 86400 AS INTEGER), NEW.input_octets,
            NEW.output_octets, NEW.session_time_seconds)
    ON CONFLICT (subscriber_id, day) DO UPDATE SET
        input_octets = MIN(input_octets + excluded.input_octets, 9223372036854775807),
        output_octets = MIN(output_octets + excluded.output_octets, 9223372036854775807),
        session_seconds = MIN(session_seconds + excluded.session_seconds, 9223372036854775807);
END;

DROP TRIGGER radius_sessions_usage_update;
CREATE TRIGGER radius_sessions_usage_update
AFTER UPDATE OF input_octets, output_octets, session_time_seconds ON radius_sessions
WHEN NEW.subscriber_id IS NOT NULL
     AND (NEW.input_octets > OLD.input_octets OR NEW.output_octets > OLD.output_octets
          OR NEW.session_time_seconds > OLD.session_time_seconds)
BEGIN
    INSERT INTO usage_daily (subscriber_id, day, input_octets, output_octets, session_seconds)
    VALUES (NEW.subscriber_id, CAST(NEW.updated_at / 86400 AS INTEGER),
            NEW.input_octets - OLD.input_octets, NEW.output_octets - OLD.output_octets,
            NEW.session_time_seconds - OLD.session_time_seconds)
    ON CONFLICT (subscriber_id, day) DO UPDATE SET
        input_octets = MIN(input_octets + excluded.input_octets, 9223372036854775807),
        output_octets = MIN(output_octets + excluded.output_octets, 9223372036854775807),
        session_seconds = MIN(session_seconds + excluded.session_seconds, 9223372036854775807);
END;

-- A day already past it (a REAL left by the overflow) is that most again.
UPDATE usage_daily SET input_octets = 9223372036854775807 WHERE input_octets > 9223372036854775807;
UPDATE usage_daily SET output_octets = 9223372036854775807 WHERE output_octets > 9223372036854775807;
UPDATE usage_daily SET session_seconds = 9223372036854775807 WHERE session_seconds > 9223372036854775807;
