-- eo_processing 0.5.0 -> 0.6.0.
--
-- Each change below has a section of its own, headed by the issue it
-- belongs to.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.6.0'" to load this file. \quit

----------------------------------------------------------------------
-- Issue #13: the log rotates over three slots, emptied by TRUNCATE.
----------------------------------------------------------------------
-- eo.message_log becomes a table partitioned by slot.  The log as it is
-- becomes slot 0 (eo.message_log_0: its rows, position index and grants
-- stay; nothing is copied); slots 1 and 2 are new and empty.  The index
-- on routed_at goes: the purge no longer looks for old rows one by one.

ALTER TABLE eo.message_log RENAME TO message_log_0;
ALTER TABLE eo.message_log_0 RENAME CONSTRAINT message_log_pkey TO message_log_0_pkey;
ALTER INDEX eo.message_log_seq RENAME TO message_log_0_seq_idx;
DROP INDEX eo.message_log_routed_at;
-- A constant default fills the old rows without rewriting the table.
ALTER TABLE eo.message_log_0 ADD COLUMN slot smallint NOT NULL DEFAULT 0;
ALTER TABLE eo.message_log_0 ALTER COLUMN slot DROP DEFAULT;
COMMENT ON TABLE eo.message_log_0 IS NULL;
COMMENT ON COLUMN eo.message_log_0.published_by IS NULL;
COMMENT ON COLUMN eo.message_log_0.seq IS NULL;
COMMENT ON COLUMN eo.message_log_0.routes IS NULL;

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
ALTER TABLE eo.message_log ATTACH PARTITION eo.message_log_0 FOR VALUES IN (0);
CREATE TABLE eo.message_log_1 PARTITION OF eo.message_log
    (CONSTRAINT message_log_1_pkey PRIMARY KEY (id)) FOR VALUES IN (1);
CREATE TABLE eo.message_log_2 PARTITION OF eo.message_log
    (CONSTRAINT message_log_2_pkey PRIMARY KEY (id)) FOR VALUES IN (2);
-- Takes message_log_0_seq_idx as slot 0's part.
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

SELECT pg_catalog.pg_extension_config_dump('eo.message_log_1', '');
SELECT pg_catalog.pg_extension_config_dump('eo.message_log_2', '');
SELECT pg_catalog.pg_extension_config_dump('eo.message_log_rotation', '');
REVOKE ALL ON TABLE eo.message_log, eo.message_log_1, eo.message_log_2,
    eo.message_log_rotation FROM PUBLIC;

-- Roles that could read the log (eo.grant_operator) read it through the
-- new parent.  These grants are the users', not the extension's:
-- pg_init_privs is put back as the REVOKE above left it, so that pg_dump
-- keeps dumping them.
DO $$
DECLARE
    g record;
    init pg_catalog.aclitem[];
BEGIN
    SELECT i.initprivs INTO init
      FROM pg_catalog.pg_init_privs i
     WHERE i.objoid = 'eo.message_log'::pg_catalog.regclass
       AND i.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND i.objsubid = 0;
    FOR g IN
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                    ELSE a.grantee::pg_catalog.regrole::text END AS grantee,
               a.privilege_type, a.is_grantable
          FROM pg_catalog.pg_class c, LATERAL pg_catalog.aclexplode(c.relacl) a
         WHERE c.oid = 'eo.message_log_0'::pg_catalog.regclass
           AND a.grantee <> c.relowner
    LOOP
        EXECUTE pg_catalog.format('GRANT %s ON eo.message_log TO %s%s', g.privilege_type, g.grantee,
                                  CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        EXECUTE pg_catalog.format('REVOKE %s ON eo.message_log_0 FROM %s CASCADE',
                                  g.privilege_type, g.grantee);
    END LOOP;
    UPDATE pg_catalog.pg_init_privs i SET initprivs = init
     WHERE i.objoid = 'eo.message_log'::pg_catalog.regclass
       AND i.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND i.objsubid = 0;
END $$;

-- Views are bound to the table they were made on (now slot 0): bind them
-- to the parent again.
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

CREATE OR REPLACE VIEW eo.unrouted AS
    SELECT id, topic, key, published_at, routed_at
      FROM eo.message_log
     WHERE destinations OPERATOR(pg_catalog.=) 0;

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
CREATE OR REPLACE FUNCTION eo.purge_delivered(max_rows bigint DEFAULT NULL)
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
-- Issue #14: queue destinations.
----------------------------------------------------------------------
--
-- Destinations of kind 'queue': the relay enqueues routed messages in
-- eo.queue_message; consumers lease them with eo.read() and finish them
-- with eo.ack() or give them back with eo.nack().  eo.redrive() also makes
-- a queue's dead messages ready again, eo.drop_destination() counts its
-- unacknowledged messages, eo.stats gains the queue columns, and
-- eo.grant_consumer() grants the three functions (roles granted before
-- this version need it again).

-- The relay enqueues each message routed to a queue destination here, in
-- its routing transaction; consumers lease messages with eo.read() and
-- finish them with eo.ack() (which deletes the row) or give them back with
-- eo.nack().  A row is ready (dead_at IS NULL, visible_at <= now), leased
-- (lease set, visible_at in the future), retrying (no lease, visible_at in
-- the future) or dead (dead_at set).  attempt counts the hand-outs.  Every
-- hand-out changes indexed columns (lease, visible_at), so each index costs
-- a write per read: qseq (the order of the queue) has none of its own, and
-- eo.read() updates rows by ctid.
CREATE TABLE eo.queue_message (
    qseq           bigint GENERATED ALWAYS AS IDENTITY,
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
);
-- eo.read(): the alive messages of a queue, oldest visible first.
CREATE INDEX queue_message_ready ON eo.queue_message (destination_id, visible_at, qseq)
    WHERE dead_at IS NULL;
-- eo.read(): is an earlier message of the same key still alive?
CREATE INDEX queue_message_key ON eo.queue_message (destination_id, key, qseq)
    WHERE key IS NOT NULL AND dead_at IS NULL;
-- eo.ack(), eo.nack(): the row of a lease.
CREATE INDEX queue_message_lease ON eo.queue_message (lease)
    WHERE lease IS NOT NULL;
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

-- Leases: a new one for every hand-out, larger than all before it (also
-- after a restore), so that a stale one is never current again.
CREATE SEQUENCE eo.queue_lease_seq AS bigint;
COMMENT ON SEQUENCE eo.queue_lease_seq IS
    'leases handed out by eo.read()';

-- pg_dump keeps what is queued (with its leases and attempts), the counts
-- and both sequences.
SELECT pg_catalog.pg_extension_config_dump('eo.queue_message', '');
SELECT pg_catalog.pg_extension_config_dump('eo.queue_message_qseq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eo.queue_ack', '');
SELECT pg_catalog.pg_extension_config_dump('eo.queue_lease_seq', '');

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

REVOKE ALL ON TABLE eo.queue_message, eo.queue_ack FROM PUBLIC;
REVOKE ALL ON SEQUENCE eo.queue_lease_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION
    eo.read(text, integer, interval),
    eo.ack(text, bigint[]),
    eo.nack(text, bigint[], interval)
FROM PUBLIC;

CREATE OR REPLACE FUNCTION eo.redrive(destination text)
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
    -- Dead messages of a queue are ready again, with their attempts reset,
    -- and the queue's listeners are woken.
    UPDATE eo.queue_message
       SET dead_at = NULL, attempt = 0, lease = NULL, visible_at = now()
     WHERE destination_id = d.id AND dead_at IS NOT NULL;
    GET DIAGNOSTICS q = ROW_COUNT;
    IF q > 0 AND d.options ? 'channel' THEN
        PERFORM pg_notify(d.options ->> 'channel', d.name);
    END IF;
    RETURN n + q;
END $$;
COMMENT ON FUNCTION eo.redrive(text) IS
    'puts the dead deliveries of a destination back to pending, and the dead messages of a queue back to ready; returns how many';

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

CREATE OR REPLACE VIEW eo.stats AS
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

CREATE OR REPLACE FUNCTION eo.grant_consumer(role regrole)
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
COMMENT ON FUNCTION eo.create_destination(text, text, jsonb) IS
    'creates a destination the relay delivers to (kind ''notify'', ''http'', ''nats'' or ''queue'')';

----------------------------------------------------------------------
-- Issue #11: nats destinations.
----------------------------------------------------------------------
--
-- A new kind of destination, 'nats' (the library's sink; the option checker
-- already accepts every kind it has).  eo.destinations hides its secrets:
-- the options credentials, token and password.
CREATE OR REPLACE VIEW eo.destinations AS
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
           ELSE d.options END AS options,
           d.created_at
      FROM eo.destination d;
COMMENT ON VIEW eo.destinations IS
    'destinations and their options, with signing secrets, header values, credentials, tokens and passwords hidden';

-- Start (or wake) this database's relay once this transaction commits.
SELECT eo.wake_relay();
