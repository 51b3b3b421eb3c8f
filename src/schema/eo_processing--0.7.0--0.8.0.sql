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
-- message read.  Now no indexed column changes (see eo.queue_message in
-- eo_processing.sql): the alive messages are indexed in queue order only,
-- the lease is derived from qseq and the hand-out's number (handouts,
-- which eo.redrive() does not reset), and pages keep room for the new row
-- versions.
ALTER TABLE eo.queue_message ADD COLUMN handouts integer NOT NULL DEFAULT 0;
ALTER TABLE eo.queue_message SET (fillfactor = 50);
ALTER TABLE eo.queue_message ALTER COLUMN qseq SET MAXVALUE 140737488355327;
DROP INDEX eo.queue_message_ready;
DROP INDEX eo.queue_message_lease;
CREATE INDEX queue_message_alive ON eo.queue_message (destination_id, qseq)
    WHERE dead_at IS NULL;

-- The hand-outs so far: attempt counted them (since enqueue or the last
-- redrive).  A message leased now gets a lease of the new form that no
-- consumer holds: the leases handed out before this update are no longer
-- current (eo.ack() and eo.nack() raise QL001 for them, so the work done
-- under them rolls back) and the messages are handed out again when their
-- visibility ends.
UPDATE eo.queue_message
   SET handouts = greatest(least(attempt, 65535), (lease IS NOT NULL)::integer),
       lease = (qseq << 16) + greatest(least(attempt, 65535), 1)
 WHERE lease IS NOT NULL;
UPDATE eo.queue_message
   SET handouts = least(attempt, 65535)
 WHERE lease IS NULL AND attempt > 0;

-- Leases no longer come from a sequence.  Taken out of the extension
-- first, so that it also leaves the extension's configuration tables
-- (pg_extension.extconfig), which a plain DROP would not update.
ALTER EXTENSION eo_processing DROP SEQUENCE eo.queue_lease_seq;
DROP SEQUENCE eo.queue_lease_seq;

COMMENT ON TABLE eo.queue_message IS
    'Messages of queue destinations not yet acknowledged (eo.read, eo.ack, eo.nack)';
