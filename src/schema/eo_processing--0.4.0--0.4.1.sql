-- eo_processing 0.4.0 -> 0.4.1: fixes found by a new user (issue #10) and
-- grants people can remember (issue #12).
--
-- * eo.process(msg_id, retain => 'infinity') reaches the text overload: the
--   text overload gets the defaults, the interval overload loses them, and
--   eo.process(msg_id, retain interval) serves retain => interval '...'.
-- * Messages remember the role that published them; eo.message() shows a
--   message only to that role, its members and readers of eo.message_log.
-- * eo.drop_destination counts dead deliveries as unfinished business.
-- * eo.route_unrouted(destination) delivers kept unrouted messages.
-- * eo.alter_destination(name, options, replace => false) merges options;
--   eo.enable_destination / eo.disable_destination.
-- * eo.grant_application / eo.grant_consumer / eo.grant_operator.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.4.1'" to load this file. \quit

----------------------------------------------------------------------
-- eo.process overloads
----------------------------------------------------------------------

-- With defaults on both overloads eo.process('id') would be ambiguous, so
-- the interval overload gives its defaults up.  Dropping and re-creating it
-- would lose the grants made on it; its two defaults are removed in place
-- (the function keeps its oid, privileges and dependencies).
UPDATE pg_catalog.pg_proc
   SET pronargdefaults = 0, proargdefaults = NULL
 WHERE oid = 'eo.process(text,text,interval)'::pg_catalog.regprocedure;

CREATE OR REPLACE FUNCTION eo.process(msg_id text,
                                      consumer text DEFAULT 'default',
                                      retain text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process_retain_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process(text, text, text) IS
    'true the first time (consumer, msg_id) is processed; records it in the caller''s transaction; retain as text (''infinity'' or an interval)';
COMMENT ON FUNCTION eo.process(text, text, interval) IS
    'eo.process with the retention as an interval';

CREATE FUNCTION eo.process(msg_id text, retain interval)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process_retain_interval'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process(text, interval) IS
    'eo.process for the default consumer with the retention as an interval (retain => interval ''...'')';
REVOKE ALL ON FUNCTION eo.process(text, interval) FROM PUBLIC;

-- Calls that used the interval overload (eo.process('id'), say) now reach
-- the text overload or the new one: every role that could call the
-- interval overload may call both.  These grants are the users', not the
-- extension's: pg_init_privs is put back as it was, so that pg_dump keeps
-- dumping them.
DO $$
DECLARE
    target pg_catalog.regprocedure;
    init pg_catalog.aclitem[];
    grantee text;
BEGIN
    FOREACH target IN ARRAY ARRAY['eo.process(text,text,text)',
                                  'eo.process(text,interval)']::pg_catalog.regprocedure[]
    LOOP
        SELECT i.initprivs INTO init
          FROM pg_catalog.pg_init_privs i
         WHERE i.objoid = target AND i.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND i.objsubid = 0;
        FOR grantee IN
            SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                        ELSE a.grantee::pg_catalog.regrole::text END
              FROM pg_catalog.pg_proc p,
                   LATERAL pg_catalog.aclexplode(p.proacl) a
             WHERE p.oid = 'eo.process(text,text,interval)'::pg_catalog.regprocedure
               AND a.privilege_type = 'EXECUTE'
               AND a.grantee <> p.proowner
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s', target, grantee);
        END LOOP;
        UPDATE pg_catalog.pg_init_privs i SET initprivs = init
         WHERE i.objoid = target AND i.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass
           AND i.objsubid = 0;
    END LOOP;
END $$;

----------------------------------------------------------------------
-- Who published a message
----------------------------------------------------------------------

-- NULL for messages published before 0.4.1: readable as before.
ALTER TABLE eo.outbox ADD COLUMN published_by regrole;
ALTER TABLE eo.message_log ADD COLUMN published_by regrole;
COMMENT ON COLUMN eo.outbox.published_by IS
    'the role that published the message (current_user of eo.publish)';
COMMENT ON COLUMN eo.message_log.published_by IS
    'the role that published the message (current_user of eo.publish)';
COMMENT ON FUNCTION eo.message(uuid) IS
    'the full message with this id, for its publisher''s role and members and readers of eo.message_log';

----------------------------------------------------------------------
-- Destinations
----------------------------------------------------------------------

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
    IF unfinished > 0 AND NOT coalesce(force, false) THEN
        RAISE EXCEPTION 'destination "%" has % undelivered messages', name, unfinished
            USING ERRCODE = 'object_in_use',
                  DETAIL = format('%s of them are dead deliveries, which eo.redrive() can send again.', dead),
                  HINT = 'Unsubscribe it and let the relay drain it (eo.redrive() for dead deliveries), or call eo.drop_destination(name, force => true) to discard them.';
    END IF;
    DELETE FROM eo.destination x WHERE x.id = d.id;
END $$;
COMMENT ON FUNCTION eo.drop_destination(text, boolean) IS
    'drops a destination, its subscriptions and (only with force) its unfinished and dead deliveries';

-- The merge form.  It calls the two-argument form (which replaces), so a
-- role needs EXECUTE on both, as on eo.find_destination.
CREATE FUNCTION eo.alter_destination(name text, options jsonb, replace boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
    merged jsonb;
BEGIN
    IF replace IS NULL THEN
        RAISE EXCEPTION 'replace must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF options IS NOT NULL AND jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'destination options must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF replace THEN
        merged := options;
    ELSE
        d := eo.find_destination(name);
        -- Keys of "options" replace the stored ones; a JSON null removes one.
        SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}')
          INTO merged
          FROM jsonb_each(d.options || coalesce(options, '{}')) AS e
         WHERE jsonb_typeof(e.value) <> 'null';
    END IF;
    PERFORM eo.alter_destination(name, merged);
END $$;
COMMENT ON FUNCTION eo.alter_destination(text, jsonb, boolean) IS
    'replaces (replace => true) or merges into (replace => false; a null value removes a key) the options of a destination, and re-enables it';

CREATE FUNCTION eo.enable_destination(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
BEGIN
    d := eo.find_destination(name);
    UPDATE eo.destination x SET enabled = true, disabled_reason = NULL
     WHERE x.id = d.id AND NOT x.enabled;
    PERFORM eo.wake_relay();
END $$;
COMMENT ON FUNCTION eo.enable_destination(text) IS
    'lets the relay deliver to a destination again (after eo.disable_destination or a 410 Gone), keeping its options';

CREATE FUNCTION eo.disable_destination(name text, reason text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
BEGIN
    d := eo.find_destination(name);
    UPDATE eo.destination x
       SET enabled = false,
           disabled_reason = coalesce(reason, 'disabled by ' || session_user)
     WHERE x.id = d.id;
END $$;
COMMENT ON FUNCTION eo.disable_destination(text, text) IS
    'stops deliveries to a destination (they wait) until eo.enable_destination or eo.alter_destination';

CREATE FUNCTION eo.route_unrouted(destination text DEFAULT NULL)
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
                          AND (s.topic = m.topic
                               OR (right(s.topic, 1) = '*'
                                   AND starts_with(m.topic, left(s.topic, -1)))))
         FOR UPDATE OF m
    ), routes AS (
        SELECT DISTINCT x.id, x.key, s.destination_id
          FROM matching x
          JOIN eo.subscription s
            ON (dest_id IS NULL OR s.destination_id = dest_id)
           AND (s.topic = x.topic
                OR (right(s.topic, 1) = '*' AND starts_with(x.topic, left(s.topic, -1))))
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
COMMENT ON FUNCTION eo.route_unrouted(text) IS
    'gives the kept unrouted messages a pending delivery to each destination (this one, or all when NULL) whose subscriptions match them now; returns the number of deliveries';

COMMENT ON VIEW eo.unrouted IS
    'routed messages that matched no subscription (eo.route_unrouted delivers them, until eo.outbox_retention purges them)';

----------------------------------------------------------------------
-- Grants people can remember
----------------------------------------------------------------------

-- The functions of an application that processes messages (the inbox).
CREATE FUNCTION eo.grant_consumer(role regrole)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA eo TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION'
                   ' eo.process(text, text, interval), eo.process(text, text, text),'
                   ' eo.process(text, interval), eo.process_seq(text, bigint, text),'
                   ' eo.set_result(text, jsonb, text), eo.result(text, text) TO %s', role);
END $$;
COMMENT ON FUNCTION eo.grant_consumer(regrole) IS
    'lets a role deduplicate messages (eo.process, eo.process_seq) and store and read its results';

-- A consumer that also publishes and uses idempotency keys.
CREATE FUNCTION eo.grant_application(role regrole)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM eo.grant_consumer(role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION'
                   ' eo.publish(text, jsonb, text, jsonb), eo.publish(text, text, text, jsonb),'
                   ' eo.message(uuid),'
                   ' eo.key_begin(text, jsonb, text, interval), eo.key_checkpoint(text, text, text, bigint),'
                   ' eo.key_complete(text, jsonb, text, bigint), eo.key_release(text, text, bigint) TO %s',
                   role);
END $$;
COMMENT ON FUNCTION eo.grant_application(regrole) IS
    'lets a role process messages, publish them and use idempotency keys (eo.grant_consumer and more)';

-- Monitoring, the purges, forgetting records and reading every message.
CREATE FUNCTION eo.grant_operator(role regrole)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA eo TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION'
                   ' eo.forget(text, text), eo.purge_expired(bigint), eo.purge_delivered(bigint),'
                   ' eo.purge_keys(bigint), eo.relay_status(), eo.message(uuid) TO %s', role);
    EXECUTE format('GRANT SELECT ON eo.stats, eo.relay_status, eo.unrouted, eo.destinations,'
                   ' eo.http_attempt, eo.message_log TO %s', role);
END $$;
COMMENT ON FUNCTION eo.grant_operator(regrole) IS
    'lets a role watch the relay (views, eo.http_attempt), read every message, purge and forget';

REVOKE ALL ON FUNCTION
    eo.alter_destination(text, jsonb, boolean),
    eo.enable_destination(text),
    eo.disable_destination(text, text),
    eo.route_unrouted(text),
    eo.grant_consumer(regrole),
    eo.grant_application(regrole),
    eo.grant_operator(regrole)
FROM PUBLIC;
