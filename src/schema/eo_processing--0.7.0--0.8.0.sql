-- eo_processing 0.7.0 -> 0.8.0.
--
-- Each change below has a section of its own, headed by the issue it
-- belongs to.

\echo Use "ALTER EXTENSION eo_processing UPDATE TO '0.8.0'" to load this file. \quit

----------------------------------------------------------------------
-- #14 Queue destinations: a hand-out without index writes
----------------------------------------------------------------------

-- eo.read() used to move every message it handed out in two indexes (its
-- visibility time and its lease) and add one: three index entries per
-- message read, and an index probe per message for its key.  Now no
-- indexed column changes (see eo.queue_message in eo_processing.sql): the
-- alive messages are indexed in queue order only, the lease is derived
-- from qseq and the attempt, and pages keep room for the new row
-- versions.
ALTER TABLE eo.queue_message SET (fillfactor = 50);
ALTER TABLE eo.queue_message ALTER COLUMN qseq SET MAXVALUE 140737488355327;
DROP INDEX eo.queue_message_ready;
DROP INDEX eo.queue_message_lease;
-- eo.read() no longer probes a key's earlier messages: its scan meets
-- them on its way (queue_scan.c).
DROP INDEX eo.queue_message_key;
CREATE INDEX queue_message_alive ON eo.queue_message (destination_id, qseq)
    WHERE dead_at IS NULL;

-- A message leased now gets a lease of the new form that no consumer
-- holds: the leases handed out before this update are no longer current
-- (eo.ack() and eo.nack() raise QL001 for them, so the work done under
-- them rolls back) and the messages are handed out again when their
-- visibility ends.
UPDATE eo.queue_message
   SET lease = (qseq << 16) + least(greatest(attempt, 1), 65535)
 WHERE lease IS NOT NULL;

-- Leases no longer come from a sequence.  Taken out of the extension
-- first, so that it also leaves the extension's configuration tables
-- (pg_extension.extconfig), which a plain DROP would not update.
ALTER EXTENSION eo_processing DROP SEQUENCE eo.queue_lease_seq;
DROP SEQUENCE eo.queue_lease_seq;

-- eo.read() scans a queue from a floor below which no message can be
-- alive any more (queue_scan.c): a message becomes alive only when it is
-- inserted with a new qseq.  So eo.redrive() enqueues dead messages again
-- (at the back of the queue) instead of reviving them in place.
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
