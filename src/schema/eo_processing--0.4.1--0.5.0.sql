-- eo_processing 0.4.1 -> 0.5.0: relay v2 (issue #13).
--
-- * The relay delivers through sinks, one file per kind of destination;
--   eo.destination no longer lists the kinds in a constraint
--   (eo.check_destination_options() knows them).
-- * The message log is numbered (eo.message_log.seq, from the sequence
--   eo.message_seq) and remembers where each message was routed (routes);
--   each destination has a cursor in it (eo.destination_stats.delivered_seq,
--   and sending_seq for the window an http destination is sending).  A
--   delivery that succeeds at its first attempt no longer has a row in
--   eo.delivery; eo.stats counts the log after the cursor as pending.
-- * Deliveries of 0.4.1 (pending, in flight, retrying, dead) stay in
--   eo.delivery, where the new relay finds them; in-flight ones are sent
--   again as interrupted, as after any stop of the relay.  Messages still
--   in eo.outbox are routed by the new relay.  Nothing is lost and nothing
--   routed before is routed again: every cursor starts at 0, after which
--   the log holds only messages routed from now on.
-- * eo.topic_matches(pattern, topic): the relay's topic matcher in SQL.
-- * http destinations take the option log_attempts ('failures', the
--   default: only failed attempts go to eo.http_attempt; or 'all').

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.5.0'" to load this file. \quit

-- The log: positions and routes of each routed message.
ALTER TABLE eo.message_log ADD COLUMN seq bigint, ADD COLUMN routes integer[];
CREATE INDEX message_log_seq ON eo.message_log (seq);
COMMENT ON COLUMN eo.message_log.seq IS
    'position in the log: routing transactions take positions in the order they commit';
COMMENT ON COLUMN eo.message_log.routes IS
    'the ids of the destinations the message was routed to';
CREATE SEQUENCE eo.message_seq AS bigint;
COMMENT ON SEQUENCE eo.message_seq IS
    'positions in eo.message_log (the relay locks it while it routes)';
SELECT pg_catalog.pg_extension_config_dump('eo.message_seq', '');
REVOKE ALL ON SEQUENCE eo.message_seq FROM PUBLIC;

-- Kinds are the library's sinks, checked by eo.check_destination_options().
ALTER TABLE eo.destination DROP CONSTRAINT destination_kind_check;

-- Each destination's cursor in the log.  Deliveries routed before 0.5.0
-- stay in eo.delivery, where the relay finds them as before; the log
-- starts with the messages routed from now on.
ALTER TABLE eo.destination_stats
    ADD COLUMN delivered_seq bigint NOT NULL DEFAULT 0,
    ADD COLUMN sending_seq bigint;
COMMENT ON COLUMN eo.destination_stats.delivered_seq IS
    'the cursor: every message routed to the destination up to this position of eo.message_log is delivered or in eo.delivery';
COMMENT ON COLUMN eo.destination_stats.sending_seq IS
    'the end of the window of the log the relay is sending (asynchronous sinks); NULL when none';

-- The one topic matcher, shared with the relay (C): does a subscription
-- with this pattern get messages of this topic?
CREATE FUNCTION eo.topic_matches(pattern text, topic text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_topic_matches_sql'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION eo.topic_matches(text, text) IS
    'whether a subscription pattern (a topic, or a prefix ending in *) matches a topic';

REVOKE ALL ON FUNCTION eo.topic_matches(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION eo.route_unrouted(destination text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dest_id integer;
    n bigint;
BEGIN
    IF destination IS NOT NULL THEN
        dest_id := (eo.find_destination(destination)).id;
    END IF;
    -- The unrouted messages that a subscription (of this destination, or of
    -- any when NULL) matches now, locked against the purge and a concurrent
    -- call; each gets a pending delivery per matching destination.
    WITH matching AS (
        SELECT m.id, m.key, m.topic
          FROM eo.message_log m
         WHERE m.destinations = 0
           AND EXISTS (SELECT 1 FROM eo.subscription s
                        WHERE (dest_id IS NULL OR s.destination_id = dest_id)
                          AND eo.topic_matches(s.topic, m.topic))
         FOR UPDATE OF m
    ), routes AS (
        SELECT DISTINCT x.id, x.key, s.destination_id
          FROM matching x
          JOIN eo.subscription s
            ON (dest_id IS NULL OR s.destination_id = dest_id)
           AND eo.topic_matches(s.topic, x.topic)
    ), counted AS (
        UPDATE eo.message_log m SET destinations = r.n
          FROM (SELECT id, count(*)::integer AS n FROM routes GROUP BY id) AS r
         WHERE m.id = r.id
    )
    INSERT INTO eo.delivery (destination_id, message_id, key, state, attempts,
                             next_attempt_at, created_at)
    SELECT r.destination_id, r.id, r.key, 'pending', 0, now(), now()
      FROM routes r;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM eo.wake_relay();
    END IF;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION eo.drop_destination(name text, force boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
    unfinished bigint;
    dead bigint;
BEGIN
    d := eo.find_destination(name);
    SELECT count(*), count(*) FILTER (WHERE x.state = 'dead')
      INTO unfinished, dead
      FROM eo.delivery x
     WHERE x.destination_id = d.id;
    -- Messages of the log its cursor has not passed yet.
    unfinished := unfinished + (
        SELECT count(*)
          FROM eo.destination_stats s
          JOIN eo.message_log m ON m.seq > s.delivered_seq AND d.id = ANY (m.routes)
         WHERE s.destination_id = d.id
           AND NOT EXISTS (SELECT 1 FROM eo.delivery x
                            WHERE x.destination_id = d.id AND x.message_id = m.id));
    IF unfinished > 0 AND NOT coalesce(force, false) THEN
        RAISE EXCEPTION 'destination "%" has % undelivered messages', name, unfinished
            USING ERRCODE = 'object_in_use',
                  DETAIL = format('%s of them are dead deliveries, which eo.redrive() can send again.', dead),
                  HINT = 'Unsubscribe it and let the relay drain it (eo.redrive() for dead deliveries), or call eo.drop_destination(name, force => true) to discard them.';
    END IF;
    DELETE FROM eo.destination x WHERE x.id = d.id;
END $$;

CREATE OR REPLACE FUNCTION eo.purge_delivered(max_rows bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF max_rows OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'max_rows must not be negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH horizon AS (
        SELECT pg_catalog.now() OPERATOR(pg_catalog.-)
                   pg_catalog.current_setting('eo.outbox_retention')::pg_catalog.interval AS before
    ), doomed AS (
        SELECT m.ctid AS tid
          FROM eo.message_log AS m, horizon AS h
         WHERE m.routed_at OPERATOR(pg_catalog.<) h.before
           AND NOT EXISTS (SELECT 1 FROM eo.delivery AS d
                            WHERE d.message_id OPERATOR(pg_catalog.=) m.id)
           AND NOT EXISTS (SELECT 1 FROM eo.destination_stats AS s
                            WHERE s.destination_id OPERATOR(pg_catalog.=) ANY (m.routes)
                              AND s.delivered_seq OPERATOR(pg_catalog.<) m.seq)
         ORDER BY m.routed_at
         LIMIT max_rows
    ), deleted AS (
        DELETE FROM eo.message_log AS m
         USING doomed
         WHERE m.ctid OPERATOR(pg_catalog.=) doomed.tid
        RETURNING 1
    ), keys AS (
        DELETE FROM eo.outbox_key AS k
         USING horizon AS h
         WHERE k.last_used OPERATOR(pg_catalog.<) h.before
           AND NOT EXISTS (SELECT 1 FROM eo.outbox AS o
                            WHERE o.key OPERATOR(pg_catalog.=) k.key)
        RETURNING 1
    ), old_attempts AS (
        SELECT a.ctid AS tid
          FROM eo.http_attempt AS a, horizon AS h
         WHERE a.attempted_at OPERATOR(pg_catalog.<) h.before
         ORDER BY a.attempted_at
         LIMIT max_rows
    ), attempts AS (
        DELETE FROM eo.http_attempt AS a
         USING old_attempts
         WHERE a.ctid OPERATOR(pg_catalog.=) old_attempts.tid
        RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO n FROM deleted;
    RETURN n;
END $$;

CREATE OR REPLACE VIEW eo.stats AS
    SELECT d.name AS destination,
           d.kind,
           d.enabled,
           coalesce(q.pending, 0) OPERATOR(pg_catalog.+) coalesce(b.waiting, 0) AS pending,
           coalesce(q.in_flight, 0) OPERATOR(pg_catalog.+) coalesce(b.sending, 0) AS in_flight,
           coalesce(q.retrying, 0) AS retrying,
           coalesce(q.dead, 0) AS dead,
           s.delivered_total,
           pg_catalog.now() OPERATOR(pg_catalog.-) LEAST(q.oldest_pending, b.oldest) AS oldest_pending_age,
           s.last_error,
           s.last_error_at,
           s.last_success_at,
           d.disabled_reason
      FROM eo.destination d
      JOIN eo.destination_stats s ON s.destination_id OPERATOR(pg_catalog.=) d.id
      LEFT JOIN LATERAL (
          SELECT pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'pending') AS pending,
                 pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'in_flight') AS in_flight,
                 pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'retrying') AS retrying,
                 pg_catalog.count(*) FILTER (WHERE x.state OPERATOR(pg_catalog.=) 'dead') AS dead,
                 pg_catalog.min(x.created_at) FILTER (WHERE x.state OPERATOR(pg_catalog.<>) 'dead') AS oldest_pending
            FROM eo.delivery x
           WHERE x.destination_id OPERATOR(pg_catalog.=) d.id
      ) q ON true
      -- Messages of the log after the cursor: in the window being sent, or
      -- waiting for the next one (those set aside are counted above).
      LEFT JOIN LATERAL (
          SELECT pg_catalog.count(*) FILTER (
                     WHERE m.seq OPERATOR(pg_catalog.>) coalesce(s.sending_seq, s.delivered_seq)) AS waiting,
                 pg_catalog.count(*) FILTER (
                     WHERE m.seq OPERATOR(pg_catalog.<=) s.sending_seq) AS sending,
                 pg_catalog.min(m.routed_at) AS oldest
            FROM eo.message_log m
           WHERE m.seq OPERATOR(pg_catalog.>) s.delivered_seq
             AND d.id OPERATOR(pg_catalog.=) ANY (m.routes)
             AND NOT EXISTS (SELECT 1 FROM eo.delivery y
                              WHERE y.destination_id OPERATOR(pg_catalog.=) d.id
                                AND y.message_id OPERATOR(pg_catalog.=) m.id)
      ) b ON true;

-- Start (or wake) this database's relay once this transaction commits.
SELECT eo.wake_relay();
