-- As SQLite's 0020: a day's usage stays at the most a BIGINT holds (2^63 - 1), where the growth
-- of a subscriber whose NAS sent bogus Gigawords (held at that most by radius.engine) added to it
-- was refused, bigint out of range: that record, and every later one of the subscriber that day,
-- never answered. The sum is taken in numeric, then held at the most.
CREATE OR REPLACE FUNCTION radius_sessions_usage_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_daily AS u (subscriber_id, day, input_octets, output_octets, session_seconds)
    VALUES (NEW.subscriber_id, trunc(NEW.updated_at / 86400)::BIGINT, NEW.input_octets,
            NEW.output_octets, NEW.session_time_seconds)
    ON CONFLICT (subscriber_id, day) DO UPDATE SET
        input_octets = LEAST(u.input_octets::NUMERIC + excluded.input_octets, 9223372036854775807)::BIGINT,
        output_octets = LEAST(u.output_octets::NUMERIC + excluded.output_octets, 9223372036854775807)::BIGINT,
        session_seconds = LEAST(u.session_seconds::NUMERIC + excluded.session_seconds, 9223372036854775807)::BIGINT;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION radius_sessions_usage_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_daily AS u (subscriber_id, day, input_octets, output_octets, session_seconds)
    VALUES (NEW.subscriber_id, trunc(NEW.updated_at / 86400)::BIGINT,
            NEW.input_octets - OLD.input_octets, NEW.output_octets - OLD.output_octets,
            NEW.session_time_seconds - OLD.session_time_seconds)
    ON CONFLICT (subscriber_id, day) DO UPDATE SET
        input_octets = LEAST(u.input_octets::NUMERIC + excluded.input_octets, 9223372036854775807)::BIGINT,
        output_octets = LEAST(u.output_octets::NUMERIC + excluded.output_octets, 9223372036854775807)::BIGINT,
        session_seconds = LEAST(u.session_seconds::NUMERIC + excluded.session_seconds, 9223372036854775807)::BIGINT;
    RETURN NULL;
END;
$$;
