/* eo_processing--0.1.0--0.2.0.sql: transactional outbox and relay */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.2.0'" to load this file. \quit

----------------------------------------------------------------------
-- Tables
----------------------------------------------------------------------

-- Messages published and not yet routed by the relay: a queue, kept small.
-- eo.publish() inserts here in the caller's transaction; the relay moves
-- each message to eo.message_log in the transaction that routes it.
CREATE TABLE eo.outbox (
    id           uuid NOT NULL,
    published_at timestamptz NOT NULL,
    topic        text COLLATE "C" NOT NULL,
    key          text COLLATE "C",
    headers      jsonb,
    payload      jsonb,
    payload_text text,
    CONSTRAINT outbox_pkey PRIMARY KEY (id)
);
COMMENT ON TABLE eo.outbox IS
    'Published messages not yet routed by the relay (eo.publish)';

-- Every routed message, kept eo.outbox_retention after routing for audit
-- and replay (longer while a delivery of it is unfinished).
-- destinations = number of subscriptions it matched; 0 = unrouted.
CREATE TABLE eo.message_log (
    id           uuid NOT NULL,
    published_at timestamptz NOT NULL,
    topic        text COLLATE "C" NOT NULL,
    key          text COLLATE "C",
    headers      jsonb,
    payload      jsonb,
    payload_text text,
    routed_at    timestamptz NOT NULL,
    destinations integer NOT NULL,
    CONSTRAINT message_log_pkey PRIMARY KEY (id)
);
CREATE INDEX message_log_routed_at ON eo.message_log (routed_at);
COMMENT ON TABLE eo.message_log IS
    'Routed messages, kept eo.outbox_retention for audit and replay';

-- One row per message key ever published (purged when idle): publishers
-- of the same key lock it, so the order of ids within a key is the order
-- in which the publishing transactions commit.
CREATE TABLE eo.outbox_key (
    last_id     uuid NOT NULL,
    last_used   timestamptz NOT NULL,
    key         text COLLATE "C" NOT NULL,
    CONSTRAINT outbox_key_pkey PRIMARY KEY (key)
) WITH (fillfactor = 50);

CREATE TABLE eo.destination (
    id         integer GENERATED ALWAYS AS IDENTITY,
    name       text COLLATE "C" NOT NULL,
    kind       text NOT NULL,
    options    jsonb NOT NULL,
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT destination_pkey PRIMARY KEY (id),
    CONSTRAINT destination_name_key UNIQUE (name),
    CONSTRAINT destination_kind_check CHECK (kind OPERATOR(pg_catalog.=) 'notify')
);

-- topic is an exact topic, or a prefix followed by '*' ('orders.*', '*').
CREATE TABLE eo.subscription (
    topic          text COLLATE "C" NOT NULL,
    destination_id integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT subscription_pkey PRIMARY KEY (topic, destination_id)
);
CREATE INDEX subscription_destination ON eo.subscription (destination_id);

-- Deliveries that did not succeed at the first attempt: held behind an
-- earlier message of the same key (pending), failed and waiting for the
-- next attempt (retrying), or given up (dead).  A delivery that succeeds
-- leaves no row; it is counted in eo.destination_stats.
CREATE TABLE eo.delivery (
    destination_id  integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    message_id      uuid NOT NULL,
    key             text COLLATE "C",
    state           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    created_at      timestamptz NOT NULL,
    last_attempt_at timestamptz,
    last_error      text,
    CONSTRAINT delivery_pkey PRIMARY KEY (destination_id, message_id),
    CONSTRAINT delivery_state_check
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'in_flight', 'retrying', 'dead']))
);
CREATE INDEX delivery_due ON eo.delivery (next_attempt_at)
    WHERE state OPERATOR(pg_catalog.<>) 'dead';
CREATE INDEX delivery_key ON eo.delivery (destination_id, key, message_id)
    WHERE key IS NOT NULL;

CREATE TABLE eo.destination_stats (
    destination_id  integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    delivered_total bigint NOT NULL DEFAULT 0,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    CONSTRAINT destination_stats_pkey PRIMARY KEY (destination_id)
);

-- pg_dump keeps destinations, subscriptions, pending messages, the message
-- log and unfinished deliveries, and the sequence of destination ids.
SELECT pg_catalog.pg_extension_config_dump('eo.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('eo.message_log', '');
SELECT pg_catalog.pg_extension_config_dump('eo.outbox_key', '');
SELECT pg_catalog.pg_extension_config_dump('eo.destination', '');
SELECT pg_catalog.pg_extension_config_dump('eo.subscription', '');
SELECT pg_catalog.pg_extension_config_dump('eo.delivery', '');
SELECT pg_catalog.pg_extension_config_dump('eo.destination_stats', '');
SELECT pg_catalog.pg_extension_config_dump('eo.destination_id_seq', '');

----------------------------------------------------------------------
-- Publishing (application functions)
----------------------------------------------------------------------
CREATE FUNCTION eo.publish(topic text, payload jsonb, key text DEFAULT NULL,
                           headers jsonb DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'eo_publish_jsonb'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.publish(text, jsonb, text, jsonb) IS
    'writes a message to the outbox in the caller''s transaction; returns its id (UUIDv7)';

CREATE FUNCTION eo.publish(topic text, payload text, key text DEFAULT NULL,
                           headers jsonb DEFAULT NULL)
RETURNS uuid
AS 'MODULE_PATHNAME', 'eo_publish_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.publish(text, text, text, jsonb) IS
    'eo.publish with a text payload';

-- The full message, as the NOTIFY envelope but never truncated.
CREATE FUNCTION eo.message(id uuid)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'eo_message'
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION eo.message(uuid) IS
    'the full message with this id (also when its notification was truncated)';

----------------------------------------------------------------------
-- Destinations and subscriptions (administration)
----------------------------------------------------------------------

-- Validates the options of a destination kind; returns them normalised.
CREATE FUNCTION eo.check_destination_options(kind text, options jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'eo_check_destination_options'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION eo.check_destination_options(text, jsonb) IS
    'validates destination options for a kind; raises an error naming the bad option';

CREATE FUNCTION eo.create_destination(name text, kind text, options jsonb DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id integer;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'destination name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF name = '' THEN
        RAISE EXCEPTION 'destination name must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(name) > 256 THEN
        RAISE EXCEPTION 'destination name is too long'
            USING ERRCODE = 'string_data_right_truncation',
                  DETAIL = format('It is %s bytes long; the limit is 256 bytes.', octet_length(name));
    END IF;
    IF EXISTS (SELECT 1 FROM eo.destination d WHERE d.name = create_destination.name) THEN
        RAISE EXCEPTION 'destination "%" already exists', name
            USING ERRCODE = 'duplicate_object';
    END IF;
    INSERT INTO eo.destination (name, kind, options)
    VALUES (name, kind, eo.check_destination_options(kind, coalesce(options, '{}')))
    RETURNING id INTO new_id;
    INSERT INTO eo.destination_stats (destination_id) VALUES (new_id);
END $$;
COMMENT ON FUNCTION eo.create_destination(text, text, jsonb) IS
    'creates a destination the relay delivers to (kind ''notify'')';

-- The destination called "name", locked against concurrent changes until
-- the end of the transaction; a clear error when there is none.
CREATE FUNCTION eo.find_destination(name text)
RETURNS eo.destination
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
BEGIN
    IF name IS NULL THEN
        RAISE EXCEPTION 'destination name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO d FROM eo.destination x WHERE x.name = find_destination.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'destination "%" does not exist', name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN d;
END $$;

COMMENT ON FUNCTION eo.find_destination(text) IS
    'the destination with this name, locked until the end of the transaction';

CREATE FUNCTION eo.alter_destination(name text, options jsonb)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
BEGIN
    d := eo.find_destination(name);
    UPDATE eo.destination x
       SET options = eo.check_destination_options(d.kind, coalesce(alter_destination.options, '{}')),
           enabled = true
     WHERE x.id = d.id;
END $$;
COMMENT ON FUNCTION eo.alter_destination(text, jsonb) IS
    'replaces the options of a destination (and re-enables it)';

CREATE FUNCTION eo.drop_destination(name text, force boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
    unfinished bigint;
BEGIN
    d := eo.find_destination(name);
    SELECT count(*) INTO unfinished FROM eo.delivery
     WHERE destination_id = d.id AND state <> 'dead';
    IF unfinished > 0 AND NOT coalesce(force, false) THEN
        RAISE EXCEPTION 'destination "%" has % undelivered messages', name, unfinished
            USING ERRCODE = 'object_in_use',
                  HINT = 'Unsubscribe it and let the relay drain it, or call eo.drop_destination(name, force => true) to discard them.';
    END IF;
    DELETE FROM eo.destination x WHERE x.id = d.id;
END $$;
COMMENT ON FUNCTION eo.drop_destination(text, boolean) IS
    'drops a destination, its subscriptions and (with force) its undelivered deliveries';

CREATE FUNCTION eo.subscribe(topic text, destination text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dest_id integer;
BEGIN
    PERFORM eo.check_topic_pattern(topic);
    dest_id := (eo.find_destination(destination)).id;
    INSERT INTO eo.subscription (topic, destination_id) VALUES (topic, dest_id)
    ON CONFLICT DO NOTHING;
END $$;
COMMENT ON FUNCTION eo.subscribe(text, text) IS
    'routes messages whose topic matches (exact, or prefix ending in *) to a destination';

CREATE FUNCTION eo.unsubscribe(topic text, destination text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF topic IS NULL THEN
        RAISE EXCEPTION 'topic must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF destination IS NULL THEN
        RAISE EXCEPTION 'destination name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM eo.subscription s
     USING eo.destination d
     WHERE d.id = s.destination_id
       AND d.name = unsubscribe.destination
       AND s.topic = unsubscribe.topic;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no subscription of "%" to topic "%"', destination, topic
            USING ERRCODE = 'undefined_object';
    END IF;
END $$;
COMMENT ON FUNCTION eo.unsubscribe(text, text) IS
    'removes a subscription';

CREATE FUNCTION eo.check_topic_pattern(topic text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF topic IS NULL THEN
        RAISE EXCEPTION 'topic must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF topic = '' THEN
        RAISE EXCEPTION 'topic must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(topic) > 256 THEN
        RAISE EXCEPTION 'topic is too long' USING ERRCODE = 'string_data_right_truncation',
            DETAIL = format('It is %s bytes long; the limit is 256 bytes.', octet_length(topic));
    END IF;
    IF strpos(left(topic, -1), '*') > 0 THEN
        RAISE EXCEPTION 'invalid topic pattern "%"', topic
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A pattern is an exact topic, or a prefix followed by a single * at the end.';
    END IF;
END $$;

CREATE FUNCTION eo.redrive(destination text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dest_id integer;
    n bigint;
BEGIN
    dest_id := (eo.find_destination(destination)).id;
    UPDATE eo.delivery
       SET state = 'pending', attempts = 0, next_attempt_at = now()
     WHERE destination_id = dest_id AND state = 'dead';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM eo.wake_relay();
    END IF;
    RETURN n;
END $$;
COMMENT ON FUNCTION eo.redrive(text) IS
    'puts the dead deliveries of a destination back to pending; returns how many';

----------------------------------------------------------------------
-- Relay
----------------------------------------------------------------------

-- Asks the relay of this database to run (at commit).  Called when the
-- extension is created or updated, and by eo.redrive().
CREATE FUNCTION eo.wake_relay()
RETURNS void
AS 'MODULE_PATHNAME', 'eo_wake_relay'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION eo.relay_status(
    OUT datname name, OUT pid integer, OUT state text,
    OUT started_at timestamptz, OUT last_wakeup timestamptz,
    OUT delivered_since_start bigint, OUT last_error text,
    OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'eo_relay_status'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- One routing and one retry step of the relay, in the caller's transaction
-- (where no relay worker runs, and for tests).  Returns messages routed.
CREATE FUNCTION eo.relay_run(max_messages integer DEFAULT 1000)
RETURNS integer
AS 'MODULE_PATHNAME', 'eo_relay_run'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.relay_run(integer) IS
    'routes and delivers up to max_messages messages in the caller''s transaction';

-- The relay keeps destinations and subscriptions in memory; any change to
-- them (through the functions above or directly) tells it to reload.
CREATE FUNCTION eo.config_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'eo_config_changed'
LANGUAGE C;
CREATE TRIGGER destination_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eo.destination
    FOR EACH STATEMENT EXECUTE FUNCTION eo.config_changed();
CREATE TRIGGER subscription_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eo.subscription
    FOR EACH STATEMENT EXECUTE FUNCTION eo.config_changed();

CREATE VIEW eo.relay_status AS
    SELECT * FROM eo.relay_status();
COMMENT ON VIEW eo.relay_status IS
    'the relay worker of each database: pid, state, last wake-up, deliveries, last error';

CREATE VIEW eo.stats AS
    SELECT d.name AS destination,
           d.kind,
           d.enabled,
           coalesce(q.pending, 0) AS pending,
           coalesce(q.in_flight, 0) AS in_flight,
           coalesce(q.retrying, 0) AS retrying,
           coalesce(q.dead, 0) AS dead,
           s.delivered_total,
           pg_catalog.now() OPERATOR(pg_catalog.-) q.oldest_pending AS oldest_pending_age,
           s.last_error,
           s.last_error_at,
           s.last_success_at
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
      ) q ON true;
COMMENT ON VIEW eo.stats IS
    'per destination: deliveries pending, in flight, retrying and dead, delivered total, oldest pending age, last error and success';

-- Messages that matched no subscription when routed (kept, not dropped).
CREATE VIEW eo.unrouted AS
    SELECT id, topic, key, published_at, routed_at
      FROM eo.message_log
     WHERE destinations OPERATOR(pg_catalog.=) 0;
COMMENT ON VIEW eo.unrouted IS
    'routed messages that matched no subscription';

-- Deletes routed messages older than eo.outbox_retention that have no
-- unfinished delivery (at most max_rows, all when NULL), and key rows idle
-- for as long; returns how many messages it deleted.  The relay calls it
-- as housekeeping; operators may too.
CREATE FUNCTION eo.purge_delivered(max_rows bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH horizon AS (
        SELECT pg_catalog.now() OPERATOR(pg_catalog.-)
                   pg_catalog.current_setting('eo.outbox_retention')::pg_catalog.interval AS before
    ), doomed AS (
        SELECT m.ctid AS tid
          FROM eo.message_log AS m, horizon AS h
         WHERE m.routed_at OPERATOR(pg_catalog.<) h.before
           AND NOT EXISTS (SELECT 1 FROM eo.delivery AS d
                            WHERE d.message_id OPERATOR(pg_catalog.=) m.id)
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
    )
    SELECT pg_catalog.count(*) FROM deleted
$$;
COMMENT ON FUNCTION eo.purge_delivered(bigint) IS
    'deletes routed messages older than eo.outbox_retention (at most max_rows) and idle key rows';

----------------------------------------------------------------------
-- Privileges
----------------------------------------------------------------------
REVOKE ALL ON TABLE eo.outbox, eo.message_log, eo.outbox_key, eo.destination,
    eo.subscription, eo.delivery, eo.destination_stats FROM PUBLIC;
REVOKE ALL ON TABLE eo.relay_status, eo.stats, eo.unrouted FROM PUBLIC;
REVOKE ALL ON FUNCTION
    eo.publish(text, jsonb, text, jsonb),
    eo.publish(text, text, text, jsonb),
    eo.message(uuid),
    eo.check_destination_options(text, jsonb),
    eo.create_destination(text, text, jsonb),
    eo.find_destination(text),
    eo.alter_destination(text, jsonb),
    eo.drop_destination(text, boolean),
    eo.subscribe(text, text),
    eo.unsubscribe(text, text),
    eo.check_topic_pattern(text),
    eo.redrive(text),
    eo.wake_relay(),
    eo.config_changed(),
    eo.relay_run(integer),
    eo.relay_status(),
    eo.purge_delivered(bigint)
FROM PUBLIC;

-- Start (or wake) this database's relay once this transaction commits.
SELECT eo.wake_relay();
