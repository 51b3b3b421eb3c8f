/* eo_processing.sql: the schema of the current version of eo_processing */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION eo_processing" to load this file. \quit

-- This file is the whole schema as it is now, written from scratch; the
-- build installs it as eo_processing--<default_version>.sql (the version in
-- eo_processing.control), which CREATE EXTENSION runs.  A database created
-- with an older version gets the same objects through the upgrade scripts
-- next to this file (eo_processing--X--Y.sql, unchanged once shipped):
-- every change here needs its upgrade script, and test/t/070_upgrade_catalog.pl
-- checks that both paths give the same catalog.
--
-- The schema "eo" is created here, so that it is a member of the extension
-- (DROP EXTENSION removes it) and CREATE EXTENSION fails cleanly if a schema
-- of that name already exists.  Every name below is schema-qualified, and
-- so is every operator in views and in function bodies that could run
-- without a pinned search_path.  Functions that work on the tables for an
-- application or an operator role run as SECURITY DEFINER with a pinned
-- search_path; the C functions access the extension's tables directly.
-- Application roles therefore need EXECUTE on functions and no privilege
-- on any table (see "Privileges" at the end).
--
-- Reading order: the schema; the inbox; the outbox; destinations and
-- subscriptions; deliveries; the relay; idempotency keys; reconciliation;
-- privileges.

CREATE SCHEMA eo;
COMMENT ON SCHEMA eo IS 'eo_processing: exactly-once processing';

----------------------------------------------------------------------
-- Inbox: one record per (consumer, msg_id) processed.
----------------------------------------------------------------------
-- Column order is chosen for a compact row (fixed-width first) and is
-- checked by the library at every call; do not reorder.  The key starts
-- with msg_id: it is nearly unique, so index comparisons usually end at the
-- first column, which also sits at a fixed offset in every index tuple.
CREATE TABLE eo.inbox (
    expires_at   timestamptz NOT NULL,
    processed_at timestamptz NOT NULL,
    consumer     text COLLATE "C" NOT NULL,
    msg_id       text COLLATE "C" NOT NULL,
    result       jsonb,
    -- The role that stored the result (eo.set_result): only it, its members
    -- and superusers read or replace it.  regrole, so that pg_dump writes
    -- the role's name and a restore maps it to the right role.  NULL for a
    -- result stored before 0.3.0, which stays readable as before.
    result_owner regrole,
    CONSTRAINT inbox_pkey PRIMARY KEY (msg_id, consumer)
);
COMMENT ON TABLE eo.inbox IS
    'Messages processed by each consumer (eo.process); expired rows are removed by eo.purge_expired()';

----------------------------------------------------------------------
-- Producer sequence marks: one row per (consumer, producer).
----------------------------------------------------------------------
-- Updated in place on every new message of a producer, so leave room
-- on each page for HOT updates.
CREATE TABLE eo.producer_seq (
    last_seq   bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    consumer   text COLLATE "C" NOT NULL,
    producer   text COLLATE "C" NOT NULL,
    CONSTRAINT producer_seq_pkey PRIMARY KEY (producer, consumer)
) WITH (fillfactor = 50);
COMMENT ON TABLE eo.producer_seq IS
    'Highest committed sequence number per producer and consumer (eo.process_seq)';

-- Both tables hold users' data: pg_dump must dump their rows.
SELECT pg_catalog.pg_extension_config_dump('eo.inbox', '');
SELECT pg_catalog.pg_extension_config_dump('eo.producer_seq', '');

----------------------------------------------------------------------
-- Inbox: application functions
----------------------------------------------------------------------
-- The text overload has the defaults: a literal retention (also
-- retain => 'infinity', which is no interval before PostgreSQL 17) goes to
-- it, text being the preferred type of unknown literals.  A typed interval
-- goes to one of the other two.
CREATE FUNCTION eo.process(msg_id text,
                           consumer text DEFAULT 'default',
                           retain text DEFAULT NULL)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process_retain_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process(text, text, text) IS
    'true the first time (consumer, msg_id) is processed; records it in the caller''s transaction; retain as text (''infinity'' or an interval)';

CREATE FUNCTION eo.process(msg_id text, consumer text, retain interval)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process(text, text, interval) IS
    'eo.process with the retention as an interval';

CREATE FUNCTION eo.process(msg_id text, retain interval)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process_retain_interval'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process(text, interval) IS
    'eo.process for the default consumer with the retention as an interval (retain => interval ''...'')';

CREATE FUNCTION eo.process_seq(producer text, seq bigint,
                               consumer text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_process_seq'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.process_seq(text, bigint, text) IS
    'true when seq is above the highest committed sequence of (consumer, producer)';

CREATE FUNCTION eo.set_result(msg_id text, result jsonb,
                              consumer text DEFAULT 'default')
RETURNS void
AS 'MODULE_PATHNAME', 'eo_set_result'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.set_result(text, jsonb, text) IS
    'stores the result of processing a message, for eo.result()';

CREATE FUNCTION eo.result(msg_id text, consumer text DEFAULT 'default')
RETURNS jsonb
AS 'MODULE_PATHNAME', 'eo_result'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION eo.result(text, text) IS
    'the result stored for a processed message, or NULL';

----------------------------------------------------------------------
-- Inbox: operator functions
----------------------------------------------------------------------
CREATE FUNCTION eo.forget(msg_id text, consumer text DEFAULT 'default')
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_forget'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.forget(text, text) IS
    'deletes the record of a processed message so that it is processed again';

-- Deletes expired inbox records, at most max_rows of them (all when NULL),
-- and returns how many it deleted; a negative max_rows is refused.
-- SECURITY DEFINER so that an operator role granted EXECUTE needs no
-- privilege on eo.inbox.
CREATE FUNCTION eo.purge_expired(max_rows bigint DEFAULT NULL)
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
    WITH doomed AS (
        SELECT i.ctid AS tid
          FROM eo.inbox AS i
         WHERE i.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
         LIMIT max_rows
    ), deleted AS (
        DELETE FROM eo.inbox AS i
         USING doomed
         WHERE i.ctid OPERATOR(pg_catalog.=) doomed.tid
           AND i.expires_at OPERATOR(pg_catalog.<=) pg_catalog.now()
        RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO n FROM deleted;
    RETURN n;
END $$;
COMMENT ON FUNCTION eo.purge_expired(bigint) IS
    'deletes expired inbox records (at most max_rows) and returns how many';

----------------------------------------------------------------------
-- Outbox: messages published, and the log of routed messages
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
    published_by regrole,             -- NULL: published before 0.4.1
    CONSTRAINT outbox_pkey PRIMARY KEY (id)
);
COMMENT ON TABLE eo.outbox IS
    'Published messages not yet routed by the relay (eo.publish)';
COMMENT ON COLUMN eo.outbox.published_by IS
    'the role that published the message (current_user of eo.publish)';

-- Every routed message, kept eo.outbox_retention after routing for audit
-- and replay (longer while a delivery of it is unfinished).
-- destinations = number of subscriptions it matched; 0 = unrouted.
--
-- The log rotates over three tables (its partitions, one per slot):
-- routing writes into the current slot, and the housekeeping
-- (eo.purge_delivered) empties the next slot with TRUNCATE once everything
-- in it is older than the retention and every cursor has passed it, then
-- makes it current.  No row is deleted one by one; rows that a delivery
-- still needs (retrying, held, dead) are copied to the current slot first.
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
    published_by regrole,             -- NULL: published before 0.4.1
    seq          bigint,              -- position in the log; NULL: routed before 0.5.0
    routes       integer[],           -- destinations it was routed to (ids)
    slot         smallint NOT NULL    -- the table it is in
) PARTITION BY LIST (slot);
CREATE TABLE eo.message_log_0 PARTITION OF eo.message_log
    (CONSTRAINT message_log_0_pkey PRIMARY KEY (id)) FOR VALUES IN (0);
CREATE TABLE eo.message_log_1 PARTITION OF eo.message_log
    (CONSTRAINT message_log_1_pkey PRIMARY KEY (id)) FOR VALUES IN (1);
CREATE TABLE eo.message_log_2 PARTITION OF eo.message_log
    (CONSTRAINT message_log_2_pkey PRIMARY KEY (id)) FOR VALUES IN (2);
CREATE INDEX message_log_seq ON eo.message_log (seq);
COMMENT ON TABLE eo.message_log IS
    'Routed messages, kept eo.outbox_retention for audit and replay (rotating over three partitions)';
COMMENT ON COLUMN eo.message_log.published_by IS
    'the role that published the message (current_user of eo.publish)';
COMMENT ON COLUMN eo.message_log.seq IS
    'position in the log: routing transactions take positions in the order they commit';
COMMENT ON COLUMN eo.message_log.routes IS
    'the ids of the destinations the message was routed to';
COMMENT ON COLUMN eo.message_log.slot IS
    'the partition the message is in (eo.message_log_rotation.current_slot when routed)';

-- Where the log rotates: one row, made by the first eo.purge_delivered()
-- (until then routing writes into slot 0).  Dumped by pg_dump, so that a
-- restored log goes on rotating where it was.
CREATE TABLE eo.message_log_rotation (
    current_slot smallint NOT NULL,
    switched_at  timestamptz NOT NULL,
    one_row      boolean NOT NULL DEFAULT true,
    CONSTRAINT message_log_rotation_pkey PRIMARY KEY (one_row),
    CONSTRAINT message_log_rotation_one_row CHECK (one_row),
    CONSTRAINT message_log_rotation_slot CHECK (current_slot BETWEEN 0 AND 2)
);
COMMENT ON TABLE eo.message_log_rotation IS
    'the slot of eo.message_log that routing writes into, and since when';

-- Positions in the log.  The relay's routing transactions are serialised
-- (a lock on this sequence), so positions follow commit order and each
-- destination keeps one cursor (eo.destination_stats.delivered_seq).
CREATE SEQUENCE eo.message_seq AS bigint;
COMMENT ON SEQUENCE eo.message_seq IS
    'positions in eo.message_log (the relay locks it while it routes)';

-- One row per message key ever published (purged when idle): publishers
-- of the same key lock it, so the order of ids within a key is the order
-- in which the publishing transactions commit.
CREATE TABLE eo.outbox_key (
    last_id     uuid NOT NULL,
    last_used   timestamptz NOT NULL,
    key         text COLLATE "C" NOT NULL,
    CONSTRAINT outbox_key_pkey PRIMARY KEY (key)
) WITH (fillfactor = 50);

-- pg_dump keeps pending messages, the message log and the key rows.
SELECT pg_catalog.pg_extension_config_dump('eo.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('eo.message_log_0', '');
SELECT pg_catalog.pg_extension_config_dump('eo.message_log_1', '');
SELECT pg_catalog.pg_extension_config_dump('eo.message_log_2', '');
SELECT pg_catalog.pg_extension_config_dump('eo.message_log_rotation', '');
SELECT pg_catalog.pg_extension_config_dump('eo.message_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eo.outbox_key', '');

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

-- The full message, as the NOTIFY envelope but never truncated; for the
-- role that published it, that role's members, and readers of
-- eo.message_log.
CREATE FUNCTION eo.message(id uuid)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'eo_message'
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION eo.message(uuid) IS
    'the full message with this id, for its publisher''s role and members and readers of eo.message_log';

----------------------------------------------------------------------
-- Destinations and subscriptions (administration)
----------------------------------------------------------------------

-- Where the relay delivers: kind 'notify' (NOTIFY on a channel), 'http'
-- (signed webhooks, sent with libcurl outside any transaction), 'nats'
-- (JetStream publishes with libnats, outside any transaction), 'queue'
-- (kept in eo.queue_message for eo.read() / eo.ack()) or 'kafka' (records
-- produced with librdkafka, outside any transaction).  The kinds
-- are the library's sinks; eo.check_destination_options() (through the
-- destination_check trigger) refuses any other.
CREATE TABLE eo.destination (
    id         integer GENERATED ALWAYS AS IDENTITY,
    name       text COLLATE "C" NOT NULL,
    kind       text NOT NULL,
    options    jsonb NOT NULL,
    enabled    boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Why the relay disabled a destination by itself (HTTP 410 Gone);
    -- cleared by eo.alter_destination().
    disabled_reason text,
    CONSTRAINT destination_pkey PRIMARY KEY (id),
    CONSTRAINT destination_name_key UNIQUE (name)
);

-- topic is an exact topic, or a prefix followed by '*' ('orders.*', '*').
CREATE TABLE eo.subscription (
    topic          text COLLATE "C" NOT NULL,
    destination_id integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT subscription_pkey PRIMARY KEY (topic, destination_id)
);
CREATE INDEX subscription_destination ON eo.subscription (destination_id);

CREATE TABLE eo.destination_stats (
    destination_id  integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    delivered_total bigint NOT NULL DEFAULT 0,
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    delivered_seq   bigint NOT NULL DEFAULT 0,
    sending_seq     bigint,
    CONSTRAINT destination_stats_pkey PRIMARY KEY (destination_id)
);
COMMENT ON COLUMN eo.destination_stats.delivered_seq IS
    'the cursor: every message routed to the destination up to this position of eo.message_log is delivered or in eo.delivery';
COMMENT ON COLUMN eo.destination_stats.sending_seq IS
    'the end of the window of the log the relay is sending (asynchronous sinks); NULL when none';

-- pg_dump keeps destinations (and the sequence of their ids),
-- subscriptions and statistics.
SELECT pg_catalog.pg_extension_config_dump('eo.destination', '');
SELECT pg_catalog.pg_extension_config_dump('eo.destination_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eo.subscription', '');
SELECT pg_catalog.pg_extension_config_dump('eo.destination_stats', '');

-- Validates the options of a destination kind; returns them normalised.
-- STABLE: the rules depend on the caller (http destinations are for the
-- extension owner and superusers) and on eo.http_allowed_hosts.
CREATE FUNCTION eo.check_destination_options(kind text, options jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'eo_check_destination_options'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION eo.check_destination_options(text, jsonb) IS
    'validates destination options for a kind; raises an error naming the bad option';

-- Options are checked (and the http privilege rule applied) also when
-- eo.destination is written directly, by a role the owner gave rights on it.
CREATE FUNCTION eo.destination_check()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.kind IS DISTINCT FROM OLD.kind
       OR NEW.options IS DISTINCT FROM OLD.options THEN
        PERFORM eo.check_destination_options(NEW.kind, NEW.options);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER destination_check
    BEFORE INSERT OR UPDATE ON eo.destination
    FOR EACH ROW EXECUTE FUNCTION eo.destination_check();

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
    'creates a destination the relay delivers to (kind ''notify'', ''http'', ''nats'', ''queue'' or ''kafka'')';

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
           enabled = true,
           disabled_reason = NULL
     WHERE x.id = d.id;
    PERFORM eo.wake_relay();
END $$;
COMMENT ON FUNCTION eo.alter_destination(text, jsonb) IS
    'replaces the options of a destination (and re-enables it)';

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
COMMENT ON FUNCTION eo.route_unrouted(text) IS
    'gives the kept unrouted messages a pending delivery to each destination (this one, or all when NULL) whose subscriptions match them now; returns the number of deliveries';

CREATE FUNCTION eo.drop_destination(name text, force boolean DEFAULT false)
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
      FROM (SELECT y.state FROM eo.delivery y WHERE y.destination_id = d.id UNION ALL
            SELECT CASE WHEN q.dead_at IS NULL THEN 'queued' ELSE 'dead' END FROM eo.queue_message q WHERE q.destination_id = d.id) x;
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
COMMENT ON FUNCTION eo.drop_destination(text, boolean) IS
    'drops a destination, its subscriptions and (only with force) its unfinished and dead deliveries';

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

-- The one topic matcher, shared with the relay (C): does a subscription
-- with this pattern get messages of this topic?
CREATE FUNCTION eo.topic_matches(pattern text, topic text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'eo_topic_matches_sql'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION eo.topic_matches(text, text) IS
    'whether a subscription pattern (a topic, or a prefix ending in *) matches a topic';

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

-- Destinations with their options, secrets hidden (http: signing secrets
-- and header values; nats: credentials, tokens and passwords; kafka: the
-- properties holding passwords, secrets or private keys): what operators
-- may see.
CREATE VIEW eo.destinations AS
    SELECT d.name, d.kind, d.enabled, d.disabled_reason,
           CASE WHEN d.kind OPERATOR(pg_catalog.=) 'http' THEN
               (d.options OPERATOR(pg_catalog.-) ARRAY['signing_secret', 'headers'])
               OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                   'signing_secret', CASE WHEN d.options OPERATOR(pg_catalog.?) 'signing_secret'
                                          THEN '(hidden)' END,
                   'headers', (SELECT pg_catalog.jsonb_object_agg(h.key, '(hidden)')
                                 FROM pg_catalog.jsonb_each(d.options OPERATOR(pg_catalog.->) 'headers') AS h)))
                WHEN d.kind OPERATOR(pg_catalog.=) 'nats' THEN
               (d.options OPERATOR(pg_catalog.-) ARRAY['credentials', 'token', 'password'])
               OPERATOR(pg_catalog.||) (SELECT pg_catalog.jsonb_object_agg(s.key, '(hidden)')
                                          FROM pg_catalog.jsonb_each(d.options) AS s
                                         WHERE s.key OPERATOR(pg_catalog.=) ANY (ARRAY['credentials', 'token', 'password']))
                WHEN d.kind OPERATOR(pg_catalog.=) 'kafka'
                     AND pg_catalog.jsonb_typeof(d.options OPERATOR(pg_catalog.->) 'properties') OPERATOR(pg_catalog.=) 'object' THEN
               d.options OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('properties', coalesce(
                   (SELECT pg_catalog.jsonb_object_agg(p.key,
                               CASE WHEN pg_catalog.strpos(p.key, 'password') OPERATOR(pg_catalog.>) 0
                                         OR pg_catalog.strpos(p.key, 'secret') OPERATOR(pg_catalog.>) 0
                                         OR p.key OPERATOR(pg_catalog.=) ANY (ARRAY['ssl.key.pem', 'ssl_key', 'sasl.oauthbearer.config'])
                                    THEN '"(hidden)"'::jsonb ELSE p.value END)
                      FROM pg_catalog.jsonb_each(d.options OPERATOR(pg_catalog.->) 'properties') AS p),
                   '{}'::jsonb))
           ELSE d.options END AS options,
           d.created_at
      FROM eo.destination d;
COMMENT ON VIEW eo.destinations IS
    'destinations and their options, with signing secrets, header values, credentials, tokens, passwords and secret Kafka properties hidden';

----------------------------------------------------------------------
-- Deliveries
----------------------------------------------------------------------

-- The exceptional deliveries: held behind an earlier message of the same
-- key or waiting for their destination (pending), failed and waiting for
-- the next attempt (retrying), a retry on the wire (in_flight), or given up
-- (dead).  A delivery that succeeds at its first attempt leaves no row: its
-- destination's cursor (eo.destination_stats.delivered_seq) passes it.
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
-- The relay claims an http destination's due deliveries in this order, and
-- stops reading at the first one not yet due.
CREATE INDEX delivery_claim ON eo.delivery (destination_id, next_attempt_at, message_id)
    WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'retrying']);

-- When is the next retry due?  (The relay asks after every retry step; the
-- older delivery_due index also holds every pending http delivery.)
CREATE INDEX delivery_retrying ON eo.delivery (next_attempt_at)
    WHERE state OPERATOR(pg_catalog.=) 'retrying';

-- Every HTTP request the relay made, kept for eo.outbox_retention.
CREATE TABLE eo.http_attempt (
    attempted_at   timestamptz NOT NULL,
    destination_id integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    message_id     uuid NOT NULL,
    attempt        integer NOT NULL,
    status_code    integer,             -- NULL: no HTTP answer (see error)
    error          text,                -- NULL: a 2xx answer
    latency_ms     double precision NOT NULL,
    response_body  text                 -- the first bytes, printable ASCII
);
CREATE INDEX http_attempt_message ON eo.http_attempt (destination_id, message_id);
CREATE INDEX http_attempt_time ON eo.http_attempt (attempted_at);
COMMENT ON TABLE eo.http_attempt IS
    'every HTTP request of the relay: when, status code or error, latency, start of the response body';

-- pg_dump keeps unfinished deliveries, and the HTTP attempts (an audit
-- trail, like eo.message_log).
SELECT pg_catalog.pg_extension_config_dump('eo.delivery', '');
SELECT pg_catalog.pg_extension_config_dump('eo.http_attempt', '');

CREATE FUNCTION eo.redrive(destination text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d eo.destination;
    n bigint; q bigint;
BEGIN
    d := eo.find_destination(destination);
    UPDATE eo.delivery
       SET state = 'pending', attempts = 0, next_attempt_at = now()
     WHERE destination_id = d.id AND state = 'dead';
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM eo.wake_relay();
    END IF;
    -- Dead messages of a queue are enqueued again, at the back of the
    -- queue (a new qseq, in their old order) with their attempts reset,
    -- and the queue's listeners are woken.  Never in place: eo.read()'s
    -- scan relies on a message becoming alive only with a new qseq (see
    -- queue_scan.c).  The DELETE runs first, so the transaction has an id
    -- before it draws one.
    WITH gone AS (
        DELETE FROM eo.queue_message
         WHERE destination_id = d.id AND dead_at IS NOT NULL
        RETURNING *)
    INSERT INTO eo.queue_message (destination_id, visible_at, enqueued_at, published_at,
                                  id, topic, key, headers, payload, payload_text)
    SELECT g.destination_id, now(), g.enqueued_at, g.published_at,
           g.id, g.topic, g.key, g.headers, g.payload, g.payload_text
      FROM gone AS g ORDER BY g.qseq;
    GET DIAGNOSTICS q = ROW_COUNT;
    IF q > 0 AND d.options ? 'channel' THEN
        PERFORM pg_notify(d.options ->> 'channel', d.name);
    END IF;
    RETURN n + q;
END $$;
COMMENT ON FUNCTION eo.redrive(text) IS
    'puts the dead deliveries of a destination back to pending, and the dead messages of a queue back to ready; returns how many';

----------------------------------------------------------------------
-- Queues: destinations of kind 'queue' (sink_queue.c)
----------------------------------------------------------------------
-- The relay enqueues each message routed to a queue destination here, in
-- its routing transaction; consumers lease messages with eo.read() and
-- finish them with eo.ack() (which deletes the row) or give them back with
-- eo.nack().  A row is ready (dead_at IS NULL, visible_at <= now), leased
-- (lease set, visible_at in the future), retrying (no lease, visible_at in
-- the future) or dead (dead_at set).  attempt counts the hand-outs; it is
-- never reset (eo.redrive() enqueues a dead message again as a new row).
--
-- A hand-out changes no indexed column (lease, attempt and visible_at are
-- not indexed), and every page keeps half of its space free (fillfactor
-- 50), so that eo.read() updates a row on its own page without a new
-- index entry (a HOT update); only a message that dies leaves the index.
-- The lease is the message's qseq times 65,536 plus the attempt (1 to
-- 65,535): eo.ack() and eo.nack() find the row by qseq and compare the
-- whole lease.  So a later hand-out of a message always has a lease of
-- its own, and no lease index is needed.
CREATE TABLE eo.queue_message (
    qseq           bigint GENERATED ALWAYS AS IDENTITY (MAXVALUE 140737488355327),
    destination_id integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    attempt        integer NOT NULL DEFAULT 0,
    lease          bigint,
    visible_at     timestamptz NOT NULL,
    enqueued_at    timestamptz NOT NULL,
    dead_at        timestamptz,
    published_at   timestamptz NOT NULL,
    id             uuid NOT NULL,
    topic          text COLLATE "C" NOT NULL,
    key            text COLLATE "C",
    headers        jsonb,
    payload        jsonb,
    payload_text   text
) WITH (fillfactor = 50);
-- eo.read(): the alive messages of a queue in queue order, scanned from
-- the start (or from below the first alive one), so that the scan meets
-- the earlier messages of every key first (queue_scan.c); eo.ack(),
-- eo.nack(): the row of a lease.  The only index.
CREATE INDEX queue_message_alive ON eo.queue_message (destination_id, qseq)
    WHERE dead_at IS NULL;
COMMENT ON TABLE eo.queue_message IS
    'Messages of queue destinations not yet acknowledged (eo.read, eo.ack, eo.nack)';

-- Acknowledged messages, counted: eo.ack() appends a row per call (no row
-- that concurrent consumers would update in turn); the relay's
-- housekeeping folds them into one row per destination.
CREATE TABLE eo.queue_ack (
    destination_id integer NOT NULL REFERENCES eo.destination (id) ON DELETE CASCADE,
    acked          bigint NOT NULL
);
CREATE INDEX queue_ack_destination ON eo.queue_ack (destination_id);
COMMENT ON TABLE eo.queue_ack IS
    'Numbers of messages acknowledged per queue destination (summed by eo.stats)';

-- pg_dump keeps what is queued (with its leases and attempts), the counts
-- and the queue's sequence.
SELECT pg_catalog.pg_extension_config_dump('eo.queue_message', '');
SELECT pg_catalog.pg_extension_config_dump('eo.queue_message_qseq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eo.queue_ack', '');

-- The consumer functions check the calling role against the queue's
-- "consumers" option and then work as the extension's owner: not SECURITY
-- DEFINER.  SQLSTATE QL001: the lease is no longer current.
CREATE FUNCTION eo.read(destination text, max_messages integer DEFAULT 100,
                        visibility interval DEFAULT NULL)
RETURNS TABLE (id uuid, lease bigint, topic text, key text, headers jsonb,
               payload jsonb, payload_text text, published_at timestamptz,
               attempt integer)
AS 'MODULE_PATHNAME', 'eo_read'
LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100;
COMMENT ON FUNCTION eo.read(text, integer, interval) IS
    'leases up to max_messages ready messages of a queue for visibility (default: its visibility_timeout)';

CREATE FUNCTION eo.ack(destination text, leases bigint[])
RETURNS bigint
AS 'MODULE_PATHNAME', 'eo_ack'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.ack(text, bigint[]) IS
    'finishes leased messages of a queue in the caller''s transaction; a lease no longer current raises QL001';

CREATE FUNCTION eo.nack(destination text, leases bigint[], delay interval DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'eo_nack'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION eo.nack(text, bigint[], interval) IS
    'gives leased messages of a queue back, readable after delay (default: its retry_delays, 0)';

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
-- (READ COMMITTED; where no relay worker runs, and for tests).  Delivers
-- to notify destinations at commit; messages for http destinations wait in
-- the log for the relay worker, woken at commit.  Returns messages routed.
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
           coalesce(q.pending, 0) OPERATOR(pg_catalog.+) coalesce(b.waiting, 0) AS pending,
           coalesce(q.in_flight, 0) OPERATOR(pg_catalog.+) coalesce(b.sending, 0) AS in_flight,
           coalesce(q.retrying, 0) OPERATOR(pg_catalog.+) coalesce(u.retrying, 0) AS retrying,
           coalesce(q.dead, 0) OPERATOR(pg_catalog.+) coalesce(u.dead, 0) AS dead,
           s.delivered_total,
           pg_catalog.now() OPERATOR(pg_catalog.-) LEAST(q.oldest_pending, b.oldest) AS oldest_pending_age,
           s.last_error,
           s.last_error_at,
           s.last_success_at,
           d.disabled_reason,
           -- Queues only (NULL for other kinds): messages ready to read
           -- (with expired leases), leased, acknowledged in all, and the
           -- age of the oldest ready one.
           u.ready,
           u.leased,
           u.acked_total,
           pg_catalog.now() OPERATOR(pg_catalog.-) u.oldest_ready AS oldest_ready_age
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
      ) b ON true
      -- A queue's messages by state (see eo.queue_message).
      LEFT JOIN LATERAL (
          SELECT pg_catalog.count(*) FILTER (
                     WHERE x.dead_at IS NULL
                       AND x.visible_at OPERATOR(pg_catalog.<=) pg_catalog.now()) AS ready,
                 pg_catalog.count(*) FILTER (
                     WHERE x.dead_at IS NULL AND x.lease IS NOT NULL
                       AND x.visible_at OPERATOR(pg_catalog.>) pg_catalog.now()) AS leased,
                 pg_catalog.count(*) FILTER (
                     WHERE x.dead_at IS NULL AND x.lease IS NULL
                       AND x.visible_at OPERATOR(pg_catalog.>) pg_catalog.now()) AS retrying,
                 pg_catalog.count(*) FILTER (WHERE x.dead_at IS NOT NULL) AS dead,
                 pg_catalog.min(x.enqueued_at) FILTER (
                     WHERE x.dead_at IS NULL
                       AND x.visible_at OPERATOR(pg_catalog.<=) pg_catalog.now()) AS oldest_ready,
                 (SELECT coalesce(pg_catalog.sum(a.acked), 0)::bigint FROM eo.queue_ack a
                   WHERE a.destination_id OPERATOR(pg_catalog.=) d.id) AS acked_total
            FROM eo.queue_message x
           WHERE x.destination_id OPERATOR(pg_catalog.=) d.id
             AND d.kind OPERATOR(pg_catalog.=) 'queue'
          HAVING d.kind OPERATOR(pg_catalog.=) 'queue'
      ) u ON true;
COMMENT ON VIEW eo.stats IS
    'per destination: deliveries pending, in flight, retrying and dead, delivered total, oldest pending age, last error and success; for queues also messages ready and leased, acknowledged total and oldest ready age';

-- Messages that matched no subscription when routed (kept, not dropped).
CREATE VIEW eo.unrouted AS
    SELECT id, topic, key, published_at, routed_at
      FROM eo.message_log
     WHERE destinations OPERATOR(pg_catalog.=) 0;
COMMENT ON VIEW eo.unrouted IS
    'routed messages that matched no subscription (eo.route_unrouted delivers them, until eo.outbox_retention purges them)';

-- The housekeeping of the relay's tables; the relay calls it, operators
-- may too.  Returns how many messages left the log.
--
-- The log (eo.message_log) loses whole slots: the next slot after the
-- current one is emptied with TRUNCATE and becomes current when
--   - the current slot has been current for half of eo.outbox_retention,
--   - the last message routed into the next slot is older than
--     eo.outbox_retention (so every message is kept at least that long),
--   - every destination's cursor has passed every message routed to it
--     there (a lagging or disabled destination holds the rotation back;
--     the current slot grows meanwhile), and
--   - no other session has the slot open (LOCK ... NOWAIT; else the next
--     call tries again).
-- Messages a delivery still needs (retrying, held behind a key, dead)
-- are copied to the current slot first.  With a retention of 0 one call
-- may turn all three slots.
--
-- HTTP attempts older than eo.outbox_retention and key rows idle for as
-- long are deleted row by row (at most max_rows attempts; all when NULL):
-- both are small (attempts are logged for failures unless log_attempts is
-- 'all').  A negative max_rows is refused.
CREATE FUNCTION eo.purge_delivered(max_rows bigint DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    retention interval := pg_catalog.current_setting('eo.outbox_retention')::pg_catalog.interval;
    horizon timestamptz := pg_catalog.now() OPERATOR(pg_catalog.-) retention;
    removed bigint := 0;
    rot record;
    next_slot smallint;
    part text;
    newest timestamptz;
    pinned boolean;
    kept bigint;
    total bigint;
BEGIN
    IF max_rows OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'max_rows must not be negative' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    INSERT INTO eo.message_log_rotation (current_slot, switched_at)
    VALUES (0, pg_catalog.now()) ON CONFLICT DO NOTHING;
    FOR turn IN 1..3 LOOP
        -- One rotation at a time (the relay and operators may both call).
        SELECT current_slot, switched_at INTO rot
          FROM eo.message_log_rotation FOR UPDATE;
        EXIT WHEN NOT FOUND;
        EXIT WHEN rot.switched_at OPERATOR(pg_catalog.>)
                  (pg_catalog.now() OPERATOR(pg_catalog.-) (retention OPERATOR(pg_catalog./) 2));
        next_slot := (rot.current_slot OPERATOR(pg_catalog.+) 1) OPERATOR(pg_catalog.%) 3;
        part := pg_catalog.format('eo.message_log_%s', next_slot);
        -- The last message routed into it (positions follow routing; rows
        -- routed before 0.5.0 have none).
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.max(t.routed_at) FROM ('
            '  (SELECT routed_at FROM %s ORDER BY seq DESC NULLS LAST LIMIT 1)'
            '  UNION ALL (SELECT routed_at FROM %s WHERE seq IS NULL)) AS t', part, part)
          INTO newest;
        EXIT WHEN newest OPERATOR(pg_catalog.>) horizon;
        EXECUTE pg_catalog.format(
            'SELECT EXISTS (SELECT 1 FROM eo.destination_stats AS s'
            '                WHERE EXISTS (SELECT 1 FROM %s AS m'
            '                               WHERE m.seq OPERATOR(pg_catalog.>) s.delivered_seq'
            '                                 AND s.destination_id OPERATOR(pg_catalog.=) ANY (m.routes)))',
            part)
          INTO pinned;
        EXIT WHEN pinned;
        BEGIN
            EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', part);
        EXCEPTION WHEN lock_not_available THEN
            EXIT;
        END;
        EXECUTE pg_catalog.format(
            'INSERT INTO eo.message_log (id, published_at, topic, key, headers, payload,'
            '                            payload_text, routed_at, destinations, published_by,'
            '                            seq, routes, slot)'
            ' SELECT m.id, m.published_at, m.topic, m.key, m.headers, m.payload,'
            '        m.payload_text, m.routed_at, m.destinations, m.published_by,'
            '        m.seq, m.routes, $1'
            '   FROM %s AS m'
            '  WHERE m.id IN (SELECT d.message_id FROM eo.delivery AS d)', part)
          USING rot.current_slot;
        GET DIAGNOSTICS kept = ROW_COUNT;
        EXECUTE pg_catalog.format('SELECT pg_catalog.count(*) FROM %s', part) INTO total;
        EXECUTE pg_catalog.format('TRUNCATE %s', part);
        UPDATE eo.message_log_rotation
           SET current_slot = next_slot, switched_at = pg_catalog.now();
        removed := removed OPERATOR(pg_catalog.+) total OPERATOR(pg_catalog.-) kept;
    END LOOP;

    DELETE FROM eo.outbox_key AS k
     WHERE k.last_used OPERATOR(pg_catalog.<) horizon
       AND NOT EXISTS (SELECT 1 FROM eo.outbox AS o
                        WHERE o.key OPERATOR(pg_catalog.=) k.key);
    WITH old_attempts AS (
        SELECT a.ctid AS tid
          FROM eo.http_attempt AS a
         WHERE a.attempted_at OPERATOR(pg_catalog.<) horizon
         ORDER BY a.attempted_at
         LIMIT max_rows
    )
    DELETE FROM eo.http_attempt AS a
     USING old_attempts
     WHERE a.ctid OPERATOR(pg_catalog.=) old_attempts.tid;
    RETURN removed;
END $$;
COMMENT ON FUNCTION eo.purge_delivered(bigint) IS
    'empties the oldest slot of eo.message_log when everything in it is older than eo.outbox_retention and delivered (TRUNCATE), and deletes older HTTP attempts (at most max_rows) and idle key rows; returns how many messages left the log';

----------------------------------------------------------------------
-- Idempotency keys
----------------------------------------------------------------------
-- An HTTP API that accepts an Idempotency-Key header does its work in
-- several transactions around an external call (a payment provider, a
-- mail server): the key remembers how far the first attempt got (its
-- recovery point) and, once it is done, the response to send again to
-- every retry.  While a caller works on a key it holds a lease on it; a
-- caller whose lease has expired is presumed dead and the next retry takes
-- the key over and resumes from the recovery point.  Each holder gets a
-- fencing token, larger than the previous holder's: a holder that comes
-- back after being taken over is refused, whichever pooled connection it
-- uses.
--
-- The functions below run with the extension owner's rights (the
-- application needs EXECUTE only, no right on the table), with a pinned
-- search_path and every name and operator schema-qualified.
--
-- SQLSTATEs of the errors an application maps to HTTP answers (class IK,
-- in the range the SQL standard leaves to implementations):
--   IK001  the key was used with a different request            422
--   IK002  lease lost: the fence is no longer current           409
--   IK003  no such key in this scope                             404
--   IK004  the key is already completed                          409

-- Fencing tokens: one sequence for all keys, so that a new holder's fence
-- is larger than every fence handed out before (also after a key was
-- released and begun again).
CREATE SEQUENCE eo.idempotency_fence_seq AS bigint;
COMMENT ON SEQUENCE eo.idempotency_fence_seq IS
    'fencing tokens of idempotency key leases (eo.key_begin)';

-- One row per (key, scope) in use or remembered.  Column order is chosen
-- for a compact row (fixed-width first).  As in eo.inbox the primary key
-- starts with the nearly unique column, so that index comparisons usually
-- end at the first column.  Checkpoints update a row in place: leave room
-- for HOT updates.
CREATE TABLE eo.idempotency_key (
    fence            bigint NOT NULL,
    lease_expires_at timestamptz,            -- NULL once completed
    lease            interval NOT NULL,      -- renewed by each checkpoint
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    request_hash     bytea NOT NULL,         -- sha256 of request::text
    key              text COLLATE "C" NOT NULL,
    scope            text COLLATE "C" NOT NULL,
    state            text COLLATE "C" NOT NULL,
    recovery_point   text COLLATE "C" NOT NULL,
    response         jsonb,
    CONSTRAINT idempotency_key_pkey PRIMARY KEY (key, scope),
    CONSTRAINT idempotency_key_state_check
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['in_progress', 'completed'])),
    CONSTRAINT idempotency_key_completed_check
        CHECK ((state OPERATOR(pg_catalog.=) 'completed') OPERATOR(pg_catalog.=) (completed_at IS NOT NULL)
               AND (state OPERATOR(pg_catalog.=) 'completed') OPERATOR(pg_catalog.=) (lease_expires_at IS NULL))
) WITH (fillfactor = 70);
-- eo.purge_keys() deletes the oldest completed keys first.
CREATE INDEX idempotency_key_completed ON eo.idempotency_key (completed_at)
    WHERE completed_at IS NOT NULL;
COMMENT ON TABLE eo.idempotency_key IS
    'Idempotency keys: lease, fence and recovery point while in progress, stored response once completed';

-- pg_dump keeps the keys (a restored database must still answer retries
-- with the stored responses) and the fence sequence (so that a restored
-- key's old fence is never handed out again).
SELECT pg_catalog.pg_extension_config_dump('eo.idempotency_key', '');
SELECT pg_catalog.pg_extension_config_dump('eo.idempotency_fence_seq', '');

-- Validates a key and its scope: not NULL, not empty, a key of at most
-- 255 characters, a scope of at most 256 bytes.
CREATE FUNCTION eo.check_key(key text, scope text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF key IS NULL THEN
        RAISE EXCEPTION 'idempotency key must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF key OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'idempotency key must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.char_length(key) OPERATOR(pg_catalog.>) 255 THEN
        RAISE EXCEPTION 'idempotency key is too long'
            USING ERRCODE = 'string_data_right_truncation',
                  DETAIL = pg_catalog.format('It is %s characters long; the limit is 255 characters.',
                                             pg_catalog.char_length(key));
    END IF;
    IF scope IS NULL THEN
        RAISE EXCEPTION 'idempotency key scope must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF scope OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'idempotency key scope must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.octet_length(scope) OPERATOR(pg_catalog.>) 256 THEN
        RAISE EXCEPTION 'idempotency key scope is too long'
            USING ERRCODE = 'string_data_right_truncation',
                  DETAIL = pg_catalog.format('It is %s bytes long; the limit is 256 bytes.',
                                             pg_catalog.octet_length(scope));
    END IF;
END $$;
COMMENT ON FUNCTION eo.check_key(text, text) IS
    'validates an idempotency key and its scope; raises an error naming the problem';

-- The row of (key, scope), locked until the end of the transaction, for a
-- holder's call (checkpoint, complete, release); raises "not found"
-- (IK003), "lease lost" (IK002, fence given and not current) or "already
-- completed" (IK004), in that order.  Under REPEATABLE READ or
-- SERIALIZABLE a row changed by a transaction the snapshot cannot see
-- raises a serialization failure (40001).
CREATE FUNCTION eo.lock_key(key text, scope text, fence bigint)
RETURNS eo.idempotency_key
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k eo.idempotency_key;
BEGIN
    PERFORM eo.check_key(lock_key.key, lock_key.scope);
    SELECT * INTO k
      FROM eo.idempotency_key AS x
     WHERE x.key OPERATOR(pg_catalog.=) lock_key.key
       AND x.scope OPERATOR(pg_catalog.=) lock_key.scope
       FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'idempotency key "%" does not exist', lock_key.key
            USING ERRCODE = 'IK003',
                  DETAIL = pg_catalog.format('No key of that name is in progress or remembered in scope "%s".',
                                             lock_key.scope),
                  HINT = 'Call eo.key_begin() first.  A released key, or a completed key older than eo.key_retention, is forgotten.';
    END IF;
    IF lock_key.fence IS NOT NULL AND k.fence OPERATOR(pg_catalog.<>) lock_key.fence THEN
        RAISE EXCEPTION 'lease on idempotency key "%" was lost', lock_key.key
            USING ERRCODE = 'IK002',
                  DETAIL = pg_catalog.format('Fence %s is no longer current: another caller took the key over after the lease expired, or the key was released.',
                                             lock_key.fence),
                  HINT = 'Stop working on this request and roll back; the current holder finishes it.';
    END IF;
    IF k.state OPERATOR(pg_catalog.=) 'completed' THEN
        RAISE EXCEPTION 'idempotency key "%" is already completed', lock_key.key
            USING ERRCODE = 'IK004',
                  DETAIL = pg_catalog.format('Its response is stored (scope "%s").', lock_key.scope),
                  HINT = 'Answer with the stored response, which eo.key_begin() returns.';
    END IF;
    RETURN k;
END $$;
COMMENT ON FUNCTION eo.lock_key(text, text, bigint) IS
    'locks the in-progress idempotency key of a holder; raises IK003, IK002 or IK004';

CREATE FUNCTION eo.key_begin(key text, request jsonb,
                             scope text DEFAULT 'default',
                             lease interval DEFAULT '5 minutes',
                             OUT state text, OUT recovery_point text,
                             OUT response jsonb, OUT fence bigint)
RETURNS record
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hash bytea;
    k eo.idempotency_key;
    ts timestamptz;
    attempt integer := 0;
BEGIN
    PERFORM eo.check_key(key_begin.key, key_begin.scope);
    IF key_begin.request IS NULL THEN
        RAISE EXCEPTION 'request must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass the parameters of the request as jsonb; ''{}'' when it has none.';
    END IF;
    IF key_begin.lease IS NULL THEN
        RAISE EXCEPTION 'lease must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF key_begin.lease OPERATOR(pg_catalog.<=) '0'::pg_catalog.interval THEN
        RAISE EXCEPTION 'lease must be positive'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('The lease given is %s.', key_begin.lease);
    END IF;
    IF key_begin.lease OPERATOR(pg_catalog.>) '1 day'::pg_catalog.interval THEN
        RAISE EXCEPTION 'lease is too long'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = pg_catalog.format('The lease given is %s; the limit is 1 day.', key_begin.lease),
                  HINT = 'Renew a short lease with eo.key_checkpoint() while the work goes on.';
    END IF;
    -- A lease is a length of time, counted as the checks above count it
    -- (interval comparison: a month is 30 days, a day 24 hours), so that
    -- the lease kept is the lease checked whatever the calendar says:
    -- '1 year -359 days' is one day, not six or seven, and '1 day' is 24
    -- hours also across a change of daylight saving time.
    key_begin.lease := pg_catalog.make_interval(secs =>
        ((((pg_catalog.date_part('year', key_begin.lease) OPERATOR(pg_catalog.*) 12)
           OPERATOR(pg_catalog.+) pg_catalog.date_part('month', key_begin.lease)) OPERATOR(pg_catalog.*) 30
          OPERATOR(pg_catalog.+) pg_catalog.date_part('day', key_begin.lease)) OPERATOR(pg_catalog.*) 86400)
        OPERATOR(pg_catalog.+) (pg_catalog.date_part('hour', key_begin.lease) OPERATOR(pg_catalog.*) 3600)
        OPERATOR(pg_catalog.+) (pg_catalog.date_part('minute', key_begin.lease) OPERATOR(pg_catalog.*) 60)
        OPERATOR(pg_catalog.+) pg_catalog.date_part('second', key_begin.lease));
    -- jsonb's text form is canonical (keys sorted, no insignificant
    -- white space), so equal requests have equal fingerprints.
    hash := pg_catalog.sha256(pg_catalog.convert_to(key_begin.request::pg_catalog.text, 'UTF8'));

    LOOP
        attempt := attempt OPERATOR(pg_catalog.+) 1;
        ts := pg_catalog.clock_timestamp();
        -- The key as last committed: reading it never waits, so a retry
        -- that arrives while the holder's transaction is open is answered
        -- at once.
        SELECT * INTO k
          FROM eo.idempotency_key AS x
         WHERE x.key OPERATOR(pg_catalog.=) key_begin.key
           AND x.scope OPERATOR(pg_catalog.=) key_begin.scope;
        IF NOT FOUND THEN
            -- A new key.  A concurrent transaction that inserted the same
            -- key and has not ended makes this wait: for nothing if it
            -- commits (the key is then read again), for the key if it
            -- rolls back.  Under REPEATABLE READ and SERIALIZABLE a key
            -- committed by a transaction this snapshot cannot see raises
            -- a serialization failure here.
            INSERT INTO eo.idempotency_key AS x
                   (fence, lease_expires_at, lease, created_at, updated_at, completed_at,
                    request_hash, key, scope, state, recovery_point, response)
            VALUES (pg_catalog.nextval('eo.idempotency_fence_seq'::pg_catalog.regclass),
                    ts OPERATOR(pg_catalog.+) key_begin.lease, key_begin.lease,
                    pg_catalog.now(), pg_catalog.now(), NULL,
                    hash, key_begin.key, key_begin.scope, 'in_progress', 'started', NULL)
            ON CONFLICT DO NOTHING
            RETURNING x.fence INTO key_begin.fence;
            IF FOUND THEN
                key_begin.state := 'started';
                key_begin.recovery_point := 'started';
                RETURN;
            END IF;
        ELSE
            IF k.request_hash OPERATOR(pg_catalog.<>) hash THEN
                RAISE EXCEPTION 'idempotency key "%" was already used with a different request', key_begin.key
                    USING ERRCODE = 'IK001',
                          DETAIL = pg_catalog.format('Scope "%s": the request differs from the one the key was first used with.',
                                                     key_begin.scope),
                          HINT = 'Use a new idempotency key for a different request.';
            END IF;
            IF k.state OPERATOR(pg_catalog.=) 'completed' THEN
                key_begin.state := 'completed';
                key_begin.recovery_point := k.recovery_point;
                key_begin.response := k.response;
                RETURN;
            END IF;
            IF k.lease_expires_at OPERATOR(pg_catalog.>) ts THEN
                -- Another caller holds the lease: nothing changes, and its
                -- fence is not given away.
                key_begin.state := 'in_progress';
                RETURN;
            END IF;
            -- The lease expired: take the key over, unless its holder (or
            -- another caller) changed it first.
            UPDATE eo.idempotency_key AS x
               SET fence = pg_catalog.int8larger(
                               pg_catalog.nextval('eo.idempotency_fence_seq'::pg_catalog.regclass),
                               k.fence OPERATOR(pg_catalog.+) 1),
                   lease_expires_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) key_begin.lease,
                   lease = key_begin.lease,
                   updated_at = pg_catalog.now()
             WHERE x.key OPERATOR(pg_catalog.=) key_begin.key
               AND x.scope OPERATOR(pg_catalog.=) key_begin.scope
               AND x.fence OPERATOR(pg_catalog.=) k.fence
               AND x.state OPERATOR(pg_catalog.=) 'in_progress'
               AND x.lease_expires_at OPERATOR(pg_catalog.<=) ts
            RETURNING x.fence, x.recovery_point INTO key_begin.fence, key_begin.recovery_point;
            IF FOUND THEN
                key_begin.state := 'resumed';
                RETURN;
            END IF;
        END IF;

        -- The key was released, purged, renewed or taken over meanwhile:
        -- look again (READ COMMITTED sees the new state at once).
        IF attempt OPERATOR(pg_catalog.>=) 10
           OR pg_catalog.current_setting('transaction_isolation') OPERATOR(pg_catalog.<>) 'read committed' THEN
            RAISE EXCEPTION 'could not serialize access to idempotency key "%"', key_begin.key
                USING ERRCODE = 'serialization_failure',
                      DETAIL = 'The key was changed by a concurrent transaction.',
                      HINT = 'Retry the transaction.';
        END IF;
    END LOOP;
END $$;
COMMENT ON FUNCTION eo.key_begin(text, jsonb, text, interval) IS
    'starts, resumes or answers a request with an idempotency key: state started, resumed, in_progress or completed';

CREATE FUNCTION eo.key_checkpoint(key text, recovery_point text,
                                  scope text DEFAULT 'default',
                                  fence bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k eo.idempotency_key;
BEGIN
    IF key_checkpoint.recovery_point IS NULL THEN
        RAISE EXCEPTION 'recovery point must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF key_checkpoint.recovery_point OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'recovery point must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF pg_catalog.octet_length(key_checkpoint.recovery_point) OPERATOR(pg_catalog.>) 256 THEN
        RAISE EXCEPTION 'recovery point is too long'
            USING ERRCODE = 'string_data_right_truncation',
                  DETAIL = pg_catalog.format('It is %s bytes long; the limit is 256 bytes.',
                                             pg_catalog.octet_length(key_checkpoint.recovery_point));
    END IF;
    k := eo.lock_key(key_checkpoint.key, key_checkpoint.scope, key_checkpoint.fence);
    UPDATE eo.idempotency_key AS x
       SET recovery_point = key_checkpoint.recovery_point,
           lease_expires_at = pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) k.lease,
           updated_at = pg_catalog.now()
     WHERE x.key OPERATOR(pg_catalog.=) k.key
       AND x.scope OPERATOR(pg_catalog.=) k.scope;
END $$;
COMMENT ON FUNCTION eo.key_checkpoint(text, text, text, bigint) IS
    'records the recovery point of an idempotency key in the caller''s transaction and renews its lease';

CREATE FUNCTION eo.key_complete(key text, response jsonb,
                                scope text DEFAULT 'default',
                                fence bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k eo.idempotency_key;
BEGIN
    IF key_complete.response IS NULL THEN
        RAISE EXCEPTION 'response must not be null'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Store the JSON value null (''null''::jsonb) for an empty response.';
    END IF;
    k := eo.lock_key(key_complete.key, key_complete.scope, key_complete.fence);
    UPDATE eo.idempotency_key AS x
       SET state = 'completed',
           recovery_point = 'finished',
           response = key_complete.response,
           lease_expires_at = NULL,
           completed_at = pg_catalog.now(),
           updated_at = pg_catalog.now()
     WHERE x.key OPERATOR(pg_catalog.=) k.key
       AND x.scope OPERATOR(pg_catalog.=) k.scope;
END $$;
COMMENT ON FUNCTION eo.key_complete(text, jsonb, text, bigint) IS
    'stores the final response of an idempotency key and ends its lease, in the caller''s transaction';

CREATE FUNCTION eo.key_release(key text, scope text DEFAULT 'default',
                               fence bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k eo.idempotency_key;
BEGIN
    k := eo.lock_key(key_release.key, key_release.scope, key_release.fence);
    DELETE FROM eo.idempotency_key AS x
     WHERE x.key OPERATOR(pg_catalog.=) k.key
       AND x.scope OPERATOR(pg_catalog.=) k.scope;
END $$;
COMMENT ON FUNCTION eo.key_release(text, text, bigint) IS
    'forgets an in-progress idempotency key (after a failure without side effects), so that a retry starts afresh';

-- Deletes completed keys older than eo.key_retention (default 24 hours;
-- a negative retention keeps them forever), the oldest first and at most
-- max_rows of them (all when NULL); returns how many it deleted.  A
-- negative max_rows is refused, as by the other purges.  Keys still in
-- progress are never deleted.  SECURITY DEFINER so that an operator role
-- granted EXECUTE needs no privilege on the table.
CREATE FUNCTION eo.purge_keys(max_rows bigint DEFAULT NULL)
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
    WITH retention AS (
        SELECT coalesce(nullif(pg_catalog.current_setting('eo.key_retention', true), ''),
                        '24 hours')::pg_catalog.interval AS keep
    ), horizon AS (
        SELECT pg_catalog.now() OPERATOR(pg_catalog.-) r.keep AS before
          FROM retention AS r
         WHERE r.keep OPERATOR(pg_catalog.>=) '0'::pg_catalog.interval
    ), doomed AS (
        SELECT k.ctid AS tid
          FROM eo.idempotency_key AS k, horizon AS h
         WHERE k.completed_at OPERATOR(pg_catalog.<) h.before
         ORDER BY k.completed_at
         LIMIT max_rows
    ), deleted AS (
        DELETE FROM eo.idempotency_key AS k
         USING doomed, horizon AS h
         WHERE k.ctid OPERATOR(pg_catalog.=) doomed.tid
           AND k.completed_at OPERATOR(pg_catalog.<) h.before
        RETURNING 1
    )
    SELECT pg_catalog.count(*) INTO n FROM deleted;
    RETURN n;
END $$;
COMMENT ON FUNCTION eo.purge_keys(bigint) IS
    'deletes completed idempotency keys older than eo.key_retention (at most max_rows) and returns how many';

----------------------------------------------------------------------
-- Reconciliation
----------------------------------------------------------------------
-- eo.reconcile() compares two relations row by row on a key column: what
-- a payment provider's settlement report holds against the payments of
-- this database, say.  It runs with the caller's rights (the caller needs
-- SELECT on both relations) and reads both with one query: one scan and a
-- window count of the key per relation, one hash full join on the key.
-- Duplicated keys never match, so that each row of a duplicated key comes
-- out of the join once; the few rows that come out (missing, mismatched,
-- duplicated) are then grouped by key.  A relation with a unique index on
-- the key column alone cannot hold duplicates: its window count is left
-- out.
--
-- Values are compared with the equality operator of their types: the one
-- in the schema of the (base) type when it has its own there (citext,
-- say), else the one PostgreSQL resolves in pg_catalog (integer against
-- bigint, say).  Where there is none (json, or integer against text), the
-- text forms are compared, byte by byte.  A NULL key matches nothing.

CREATE TYPE eo.reconcile_problem AS (
    key     text,       -- the key, as text
    problem text,       -- missing_local, missing_remote, mismatch,
                        -- duplicate_local or duplicate_remote
    local   jsonb,      -- the local row (to_jsonb), or for duplicates an
                        -- array of all rows of that key (NULL: none)
    remote  jsonb       -- the same for the remote relation
);
COMMENT ON TYPE eo.reconcile_problem IS
    'a row of eo.reconcile(): a key, what is wrong with it, and the rows of each side';

CREATE FUNCTION eo.reconcile(local regclass, remote regclass, key_column text,
                             compare_columns text[] DEFAULT NULL)
RETURNS SETOF eo.reconcile_problem
LANGUAGE plpgsql STABLE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
-- The planner cannot know how few rows come out of the join, so the
-- query's estimated cost is that of sorting all of them: enough for JIT
-- to inline and optimise, which took longer than it saved (0.4-0.5 s of
-- 2.3 s on a million rows per side, test/bench/reconcile_bench.sh).
SET jit = off
AS $$
DECLARE
    rels regclass[];
    side text[] := ARRAY['local', 'remote'];
    kind "char";
    typename text;
    rowtype text[] := ARRAY[NULL, NULL];
    cols text[];            -- column names of one relation, in order
    typs oid[];
    l_cols text[];
    r_cols text[];
    l_types oid[];          -- their base types
    r_types oid[];
    unique_key boolean[] := ARRAY[false, false];
    cmp text[] := '{}';     -- columns to compare
    col text;
    i integer;
    li integer;
    ri integer;
    l_key integer;
    r_key integer;
    eq text;
    key_eq text;            -- the join condition on the keys
    key_as_text boolean := false;
    distinct_exprs text[] := '{}';
    distinct_sql text;
    side_sql text[] := ARRAY[NULL, NULL];
    q text;
BEGIN
    rels := ARRAY[$1, $2];
    IF $1 IS NULL OR $2 IS NULL THEN
        RAISE EXCEPTION '% relation must not be null', CASE WHEN $1 IS NULL THEN 'local' ELSE 'remote' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF key_column IS NULL THEN
        RAISE EXCEPTION 'key column must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF array_position(compare_columns, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'compare columns must not contain null' USING ERRCODE = 'null_value_not_allowed';
    END IF;

    -- Both relations: their kind, row type and columns.
    FOR s IN 1..2 LOOP
        SELECT c.relkind, format_type(c.reltype, NULL) INTO kind, typename
          FROM pg_class c WHERE c.oid = rels[s];
        IF NOT FOUND THEN
            RAISE EXCEPTION '% relation with OID % does not exist', side[s], rels[s]::oid
                USING ERRCODE = 'undefined_table';
        END IF;
        IF kind <> ALL (ARRAY['r', 'p', 'v', 'm', 'f']::"char"[]) THEN
            RAISE EXCEPTION '% is not a table, view, materialized view or foreign table', rels[s]
                USING ERRCODE = 'wrong_object_type';
        END IF;
        rowtype[s] := typename;
        -- Column names in order, and the base type of each (domains
        -- resolved).
        WITH RECURSIVE att AS (
            SELECT a.attnum, a.attname::text AS name, a.atttypid AS typ
              FROM pg_attribute a
             WHERE a.attrelid = rels[s] AND a.attnum > 0 AND NOT a.attisdropped
        ), bt AS (
            SELECT att.attnum, att.typ, t.typtype, t.typbasetype
              FROM att JOIN pg_type t ON t.oid = att.typ
            UNION ALL
            SELECT bt.attnum, t.oid, t.typtype, t.typbasetype
              FROM bt JOIN pg_type t ON t.oid = bt.typbasetype
             WHERE bt.typtype = 'd'
        )
        SELECT array_agg(att.name ORDER BY att.attnum), array_agg(bt.typ ORDER BY att.attnum)
          INTO cols, typs
          FROM att JOIN bt ON bt.attnum = att.attnum AND bt.typtype <> 'd';
        IF array_position(cols, key_column) IS NULL THEN
            RAISE EXCEPTION 'column "%" of relation % does not exist', key_column, rels[s]
                USING ERRCODE = 'undefined_column',
                      DETAIL = format('"%s" is the key column; it must exist in both relations.', key_column);
        END IF;
        IF s = 1 THEN
            l_cols := cols;
            l_types := typs;
        ELSE
            r_cols := cols;
            r_types := typs;
        END IF;
    END LOOP;
    l_key := array_position(l_cols, key_column);
    r_key := array_position(r_cols, key_column);

    -- The columns to compare: those given, each present in both
    -- relations, or by default every column of both but the key.
    IF compare_columns IS NULL THEN
        SELECT coalesce(array_agg(c ORDER BY n), '{}') INTO cmp
          FROM unnest(l_cols) WITH ORDINALITY AS u(c, n)
         WHERE c = ANY (r_cols) AND c <> key_column;
    ELSE
        FOREACH col IN ARRAY compare_columns LOOP
            FOR s IN 1..2 LOOP
                IF array_position(CASE s WHEN 1 THEN l_cols ELSE r_cols END, col) IS NULL THEN
                    RAISE EXCEPTION 'column "%" of relation % does not exist', col, rels[s]
                        USING ERRCODE = 'undefined_column',
                              DETAIL = format('"%s" is in compare_columns; it must exist in both relations.', col);
                END IF;
            END LOOP;
            IF col <> key_column AND array_position(cmp, col) IS NULL THEN
                cmp := cmp || col;
            END IF;
        END LOOP;
    END IF;

    -- A relation with a valid unique index on the key column alone (not
    -- partial, checked immediately) holds no duplicate key.
    FOR s IN 1..2 LOOP
        unique_key[s] := EXISTS (
            SELECT 1 FROM pg_index x
             WHERE x.indrelid = rels[s] AND x.indisunique AND x.indisvalid AND x.indimmediate
               AND x.indnkeyatts = 1 AND x.indpred IS NULL AND x.indexprs IS NULL
               AND x.indkey[0] = (SELECT a.attnum FROM pg_attribute a
                                   WHERE a.attrelid = rels[s] AND a.attname = key_column));
    END LOOP;

    -- The equality of two columns (base types lt and rt): an operator "="
    -- of exactly these types in the schema of one of them (outside
    -- pg_catalog), as OPERATOR(schema.=); NULL for the one PostgreSQL
    -- resolves in pg_catalog.
    -- Keys: try that first; if the query cannot be planned with it (no
    -- such operator, not hashable, a collation conflict), use text forms.
    SELECT format('OPERATOR(%I.=)', n.nspname) INTO eq
      FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
     WHERE o.oprname = '=' AND o.oprleft = l_types[l_key] AND o.oprright = r_types[r_key]
       AND o.oprresult = 'bool'::regtype AND n.nspname <> 'pg_catalog'
       AND o.oprnamespace IN (SELECT t.typnamespace FROM pg_type t
                               WHERE t.oid IN (l_types[l_key], r_types[r_key]))
     ORDER BY o.oprnamespace = (SELECT t.typnamespace FROM pg_type t WHERE t.oid = l_types[l_key]) DESC
     LIMIT 1;
    FOR attempt IN 1..2 LOOP
        -- Keys that are duplicated on a side never match.
        key_eq := format('a.k %s b.k', coalesce(eq, '='))
                  || CASE WHEN unique_key[1] AND NOT key_as_text THEN '' ELSE ' AND a.n = 1' END
                  || CASE WHEN unique_key[2] AND NOT key_as_text THEN '' ELSE ' AND b.n = 1' END;
        FOR s IN 1..2 LOOP
            cols := CASE s WHEN 1 THEN l_cols ELSE r_cols END;
            i := CASE s WHEN 1 THEN l_key ELSE r_key END;
            side_sql[s] := format('SELECT true AS p, %s AS k, %s AS n',
                CASE WHEN key_as_text THEN format('(t.%I)::text COLLATE "C"', cols[i])
                     ELSE format('t.%I', cols[i]) END,
                CASE WHEN unique_key[s] AND NOT key_as_text THEN '1::bigint'
                     WHEN key_as_text THEN format('count(*) OVER (PARTITION BY (t.%I)::text COLLATE "C")', cols[i])
                     ELSE format('count(*) OVER (PARTITION BY t.%I)', cols[i]) END);
            FOR j IN 1..array_length(cols, 1) LOOP
                side_sql[s] := side_sql[s] || format(', t.%I AS c%s', cols[j], j);
            END LOOP;
            side_sql[s] := side_sql[s] || format(' FROM %s AS t', rels[s]);
        END LOOP;
        EXIT WHEN attempt = 2;
        BEGIN
            EXECUTE format('SELECT coalesce(a.k, b.k) FROM (%s) AS a FULL JOIN (%s) AS b ON %s LIMIT 0',
                           side_sql[1], side_sql[2], key_eq);
            EXIT;
        EXCEPTION WHEN undefined_function OR datatype_mismatch OR feature_not_supported
                       OR collation_mismatch OR indeterminate_collation THEN
            key_as_text := true;
            eq := NULL;
        END;
    END LOOP;

    -- Compared columns: the same rule, column by column.
    FOREACH col IN ARRAY cmp LOOP
        li := array_position(l_cols, col);
        ri := array_position(r_cols, col);
        eq := NULL;
        SELECT format('OPERATOR(%I.=)', n.nspname) INTO eq
          FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
         WHERE o.oprname = '=' AND o.oprleft = l_types[li] AND o.oprright = r_types[ri]
           AND o.oprresult = 'bool'::regtype AND n.nspname <> 'pg_catalog'
           AND o.oprnamespace IN (SELECT t.typnamespace FROM pg_type t
                                   WHERE t.oid IN (l_types[li], r_types[ri]))
         ORDER BY o.oprnamespace = (SELECT t.typnamespace FROM pg_type t WHERE t.oid = l_types[li]) DESC
         LIMIT 1;
        IF eq IS NOT NULL THEN
            -- IS DISTINCT FROM, spelt out for an explicit operator.
            distinct_exprs := distinct_exprs || format(
                '((a.c%1$s IS NULL) <> (b.c%2$s IS NULL) OR (a.c%1$s %3$s b.c%2$s) IS FALSE)', li, ri, eq);
        ELSE
            BEGIN
                EXECUTE format('SELECT a.%1$I IS DISTINCT FROM b.%1$I FROM %2$s AS a, %3$s AS b LIMIT 0',
                               col, rels[1], rels[2]);
                distinct_exprs := distinct_exprs || format('(a.c%s IS DISTINCT FROM b.c%s)', li, ri);
            EXCEPTION WHEN undefined_function OR datatype_mismatch
                           OR collation_mismatch OR indeterminate_collation THEN
                distinct_exprs := distinct_exprs || format(
                    '((a.c%s)::text COLLATE "C" IS DISTINCT FROM (b.c%s)::text COLLATE "C")', li, ri);
            END;
        END IF;
    END LOOP;
    distinct_sql := coalesce(array_to_string(distinct_exprs, ' OR '), '');
    IF distinct_sql = '' THEN
        distinct_sql := 'false';
    END IF;

    -- The query.  c: the rows out of the join that show a problem; w:
    -- with the largest count of their key on each side (0 for a NULL
    -- key, which matches nothing and is reported row by row); d: the
    -- duplicated keys, with all their rows.
    q := format($q$
        WITH c AS (
            SELECT coalesce(a.k, b.k) AS k,
                   a.p IS NOT NULL AS lp, b.p IS NOT NULL AS rp,
                   coalesce(a.n, 0) AS ln, coalesce(b.n, 0) AS rn,
                   CASE WHEN a.p THEN to_jsonb(ROW(%1$s)::%2$s) END AS lrow,
                   CASE WHEN b.p THEN to_jsonb(ROW(%3$s)::%4$s) END AS rrow
              FROM (%5$s) AS a
              FULL JOIN (%6$s) AS b ON %7$s
             WHERE a.p IS NULL OR b.p IS NULL OR %8$s
        ), w AS (
            SELECT c.*,
                   CASE WHEN c.k IS NULL THEN 0 ELSE max(c.ln) OVER (PARTITION BY c.k) END AS kl,
                   CASE WHEN c.k IS NULL THEN 0 ELSE max(c.rn) OVER (PARTITION BY c.k) END AS kr
              FROM c
        ), d AS (
            SELECT w.k, max(w.kl) AS kl, max(w.kr) AS kr,
                   jsonb_agg(w.lrow ORDER BY w.lrow) FILTER (WHERE w.lp) AS lrows,
                   jsonb_agg(w.rrow ORDER BY w.rrow) FILTER (WHERE w.rp) AS rrows
              FROM w
             WHERE w.kl > 1 OR w.kr > 1
             GROUP BY w.k
        )
        SELECT x.key, x.problem, x.l, x.r FROM (
            SELECT w.k::text AS key,
                   CASE WHEN w.lp AND w.rp THEN 'mismatch'
                        WHEN w.lp THEN 'missing_remote'
                        ELSE 'missing_local' END AS problem,
                   w.lrow AS l, w.rrow AS r
              FROM w
             WHERE w.kl <= 1 AND w.kr <= 1
            UNION ALL
            SELECT d.k::text, 'duplicate_local', d.lrows, d.rrows FROM d WHERE d.kl > 1
            UNION ALL
            SELECT d.k::text, 'duplicate_remote', d.lrows, d.rrows FROM d WHERE d.kr > 1
        ) AS x
        ORDER BY x.key COLLATE "C", x.problem, x.l, x.r
        $q$,
        (SELECT string_agg('a.c' || n, ', ' ORDER BY n) FROM generate_series(1, array_length(l_cols, 1)) AS n),
        rowtype[1],
        (SELECT string_agg('b.c' || n, ', ' ORDER BY n) FROM generate_series(1, array_length(r_cols, 1)) AS n),
        rowtype[2],
        side_sql[1], side_sql[2], key_eq, distinct_sql);
    RETURN QUERY EXECUTE q;
END $$;
COMMENT ON FUNCTION eo.reconcile(regclass, regclass, text, text[]) IS
    'compares two relations on a key column: keys missing on either side, mismatched rows, duplicated keys';

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
                   ' eo.set_result(text, jsonb, text), eo.result(text, text),'
                   ' eo.read(text, integer, interval), eo.ack(text, bigint[]),'
                   ' eo.nack(text, bigint[], interval) TO %s', role);
END $$;
COMMENT ON FUNCTION eo.grant_consumer(regrole) IS
    'lets a role deduplicate messages (eo.process, eo.process_seq), store and read its results, and call eo.read, eo.ack and eo.nack (on queues that name it among their consumers)';

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

----------------------------------------------------------------------
-- Privileges: nothing is usable by PUBLIC.  The owner grants roles what
-- they need with the helpers above (see README, Privileges).
----------------------------------------------------------------------
REVOKE ALL ON SCHEMA eo FROM PUBLIC;
REVOKE ALL ON TABLE
    eo.inbox, eo.producer_seq,
    eo.outbox, eo.message_log, eo.outbox_key,
    eo.message_log_0, eo.message_log_1, eo.message_log_2, eo.message_log_rotation,
    eo.destination, eo.subscription, eo.destination_stats,
    eo.delivery, eo.http_attempt,
    eo.queue_message, eo.queue_ack,
    eo.idempotency_key
FROM PUBLIC;
REVOKE ALL ON TABLE eo.destinations, eo.relay_status, eo.stats, eo.unrouted FROM PUBLIC;
REVOKE ALL ON SEQUENCE eo.idempotency_fence_seq, eo.message_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION
    -- inbox
    eo.process(text, text, interval),
    eo.process(text, text, text),
    eo.process(text, interval),
    eo.process_seq(text, bigint, text),
    eo.set_result(text, jsonb, text),
    eo.result(text, text),
    eo.forget(text, text),
    eo.purge_expired(bigint),
    -- outbox
    eo.publish(text, jsonb, text, jsonb),
    eo.publish(text, text, text, jsonb),
    eo.message(uuid),
    -- destinations and subscriptions
    eo.check_destination_options(text, jsonb),
    eo.destination_check(),
    eo.create_destination(text, text, jsonb),
    eo.find_destination(text),
    eo.alter_destination(text, jsonb),
    eo.alter_destination(text, jsonb, boolean),
    eo.enable_destination(text),
    eo.disable_destination(text, text),
    eo.drop_destination(text, boolean),
    eo.subscribe(text, text),
    eo.unsubscribe(text, text),
    eo.check_topic_pattern(text),
    eo.topic_matches(text, text),
    -- deliveries and relay
    eo.redrive(text),
    eo.wake_relay(),
    eo.config_changed(),
    eo.relay_run(integer),
    eo.relay_status(),
    eo.purge_delivered(bigint),
    eo.route_unrouted(text),
    -- queues
    eo.read(text, integer, interval),
    eo.ack(text, bigint[]),
    eo.nack(text, bigint[], interval),
    -- idempotency keys
    eo.check_key(text, text),
    eo.lock_key(text, text, bigint),
    eo.key_begin(text, jsonb, text, interval),
    eo.key_checkpoint(text, text, text, bigint),
    eo.key_complete(text, jsonb, text, bigint),
    eo.key_release(text, text, bigint),
    eo.purge_keys(bigint),
    -- reconciliation
    eo.reconcile(regclass, regclass, text, text[]),
    -- grant helpers
    eo.grant_consumer(regrole),
    eo.grant_application(regrole),
    eo.grant_operator(regrole)
FROM PUBLIC;

-- Start (or wake) this database's relay once this transaction commits.
SELECT eo.wake_relay();
