-- eo_processing 0.5.0 -> 0.6.0.
--
-- Each change below has a section of its own, headed by the issue it
-- belongs to.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.6.0'" to load this file. \quit

-- Issue #14: queue destinations.
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
    'creates a destination the relay delivers to (kind ''notify'', ''http'' or ''queue'')';

-- Start (or wake) this database's relay once this transaction commits.
SELECT eo.wake_relay();
